//! Signed batches over HTTP: one signature, each member decided as if it came alone.

mod support;

use allot_client::wire::BatchCommand;
use allot_domain::{Action, IdempotencyToken, PoolId, Role};
use support::{Harness, declare, reserve};

fn member(pool: &str, action: Action, token: &str) -> BatchCommand {
    BatchCommand {
        pool: PoolId::new(pool),
        action,
        token: IdempotencyToken::new(token),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_member_in_order() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    h.admin_raw
        .send("hall", &declare(2), "hall-declare")
        .await
        .expect_ok(201);
    let commands = vec![
        member("hall", reserve("r1", 60_000), "t1"),
        member("hall", reserve("r2", 60_000), "t2"),
        member("hall", reserve("r3", 60_000), "t3"),
        member("hall", Action::ClosePool, "t4"),
    ];
    let answer = shop.send_batch("b1", &commands).await;
    answer.expect_ok(200);
    let results = answer.body["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 4, "{}", answer.body);
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["reservation_id"], "hall:1");
    assert_eq!(results[1]["reservation_id"], "hall:2");
    assert_eq!(results[2]["code"], "pool-capacity-exceeded");
    assert_eq!(results[3]["code"], "forbidden");
    // The same batch again converges: every member's recorded outcome is replayed.
    let again = shop.send_batch("b1", &commands).await;
    let results = again.body["results"].as_array().expect("results").clone();
    assert_eq!(results[0]["replayed"], true, "{}", again.body);
    assert_eq!(results[0]["reservation_id"], "hall:1");
    assert_eq!(results[2]["replayed"], true);
}

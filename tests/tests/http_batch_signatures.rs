//! Signatures of concurrent requests are verified together, in batches: a forged request that
//! shares a batch with good ones must fail alone, and must change nothing; good ones must pass.

mod support;

use std::time::{Duration, Instant};

use allot_domain::{Role, Timestamp};
use ed25519_dalek::SigningKey;
use futures::future::join_all;
use serde_json::json;
use support::{Harness, declare, now, request_parts, reserve};

/// How a request of the burst is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    /// Signed over one requester, sent with another.
    OtherRequester,
    /// Signed over one hold duration, sent with a longer one.
    OtherDuration,
    /// Signed by a key that is not the actor's.
    OtherKey,
}

impl Kind {
    fn of(n: usize) -> Kind {
        match n % 5 {
            1 => Kind::OtherRequester,
            2 => Kind::OtherDuration,
            4 => Kind::OtherKey,
            _ => Kind::Good,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_in_a_concurrent_burst_fail_alone_and_change_nothing() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 61).await;
    let forger = h.actor("shop", SigningKey::from_bytes(&[99; 32]));
    h.admin_raw
        .send("b1", &declare(1_000), "declare-b1")
        .await
        .expect_ok(201);
    let events_before = h.event_count().await;

    let mut good = 0u64;
    for round in 0..3 {
        let requests = (0..64).map(|i| {
            let n = round * 64 + i;
            let kind = Kind::of(n);
            let requester = format!("req-{n}");
            let token = format!("burst-{n}");
            let action = reserve(&requester, 600_000);
            let (path, mut body) = request_parts("b1", &action);
            let signer = if kind == Kind::OtherKey {
                &forger
            } else {
                &shop
            };
            let headers = signer.headers("b1", &action, &token, now());
            match kind {
                Kind::OtherRequester => body["requester"] = json!(format!("mallory-{n}")),
                Kind::OtherDuration => body["duration_ms"] = json!(2_000_000),
                Kind::Good | Kind::OtherKey => {}
            }
            let shop = &shop;
            async move {
                let answer = shop.post_raw(&path, &headers, body.to_string()).await;
                (n, kind, answer)
            }
        });
        for (n, kind, answer) in join_all(requests).await {
            if kind == Kind::Good {
                good += 1;
                answer.expect_ok(201);
                assert_eq!(
                    answer.body["reservation_id"]
                        .as_str()
                        .map(|id| id.starts_with("b1:")),
                    Some(true),
                    "request {n}: {answer:?}"
                );
            } else {
                answer.expect_problem(401, "invalid-request");
                let detail = answer.body["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("does not verify"),
                    "request {n} ({kind:?}): {answer:?}"
                );
            }
        }
    }

    // Every signature went through the batch verifier, and some were verified together.
    let verified = h.metric("allot_signature_batch_signatures_sum").await;
    let batches = h.metric("allot_signature_batch_signatures_count").await;
    assert!(verified >= 192.0, "{verified} signatures verified");
    assert!(
        batches < verified,
        "{verified} signatures in {batches} batches: none shared a batch"
    );

    // Exactly one event per good request; the forged ones left no trace.
    assert_eq!(h.event_count().await, events_before + good as usize);
    let pool = h.pool("b1").await;
    pool.expect_ok(200);
    assert_eq!(pool.body["allocated"].as_u64(), Some(good));
    assert_eq!(pool.body["reservations"].as_u64(), Some(good));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_signed_request_is_answered_at_once() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 61).await;
    h.admin_raw
        .send("l1", &declare(5), "declare-l1")
        .await
        .expect_ok(201);
    for n in 0..3 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            shop.send(
                "l1",
                &reserve(&format!("solo-{n}"), 600_000),
                &format!("solo-{n}"),
            ),
        )
        .await
        .expect("a lone request must not wait for a batch to fill");
        answer.expect_ok(201);
        // Nothing waits for company: even a busy machine answers one request well within this.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // A stale signature is still refused before any verification.
    let stale = Timestamp(now().0 - 10 * 60 * 1_000);
    shop.send_at("l1", &reserve("late", 600_000), "solo-late", stale)
        .await
        .expect_problem(401, "invalid-request");
    h.shutdown().await;
}

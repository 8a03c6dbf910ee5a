//! End to end over real HTTP on loopback: the seed's walkthrough, idempotent retries, refusals
//! that change nothing, a hot one-seat pool, restart, revocation and the service endpoints.

mod support;

use std::sync::Arc;
use std::time::Duration;

use allot_domain::streams::pool_stream;
use allot_domain::{Action, ActorId, Change, PoolId, ReservationId, Role};
use allot_server::clock::{Clock, ManualClock};
use allot_server::server::FIRST_SWEEPER;
use allot_server::service::replay_tail::decode_pool;
use serde_json::{Value, json};
use support::{Harness, cancel, confirm, declare, expire, now, reserve};

/// The last event of `pool`'s stream, decoded.
async fn last_event(h: &Harness, pool: &str) -> allot_domain::Event {
    let store = h.service().service.store();
    let events = store
        .read_stream(&pool_stream(&pool.into()), 0, 100_000)
        .await
        .expect("read pool stream");
    decode_pool(events.last().expect("pool stream is empty")).expect("decode event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough_over_http() {
    let h = Harness::start().await;
    let checkout = h.register("checkout_svc", Role::Client, 7).await;

    let declared = h
        .admin_raw
        .send("pool_vip", &declare(2), "vip-declare")
        .await;
    declared.expect_ok(201);
    assert_eq!(declared.body["pool_id"], "pool_vip");

    // Buyer A and buyer B each get a hold.
    let a1 = checkout
        .send("pool_vip", &reserve("buyer_a", 600_000), "tok_a1")
        .await;
    a1.expect_ok(201);
    assert!(!a1.replayed);
    let rsv_a = a1.reservation();
    assert_eq!(h.allocated("pool_vip").await, 1);

    let b1 = checkout
        .send("pool_vip", &reserve("buyer_b", 2_000), "tok_b1")
        .await;
    b1.expect_ok(201);
    let rsv_b = b1.reservation();
    assert_ne!(rsv_a, rsv_b);
    let b_expires_at = b1.body["expires_at"].as_u64().expect("expires_at");
    // The steps up to A's confirm assume B's hold is live; say so plainly if the host was too
    // slow for that rather than failing on a count.
    let b_still_held = |step: &str| {
        assert!(
            now().0 < b_expires_at,
            "host too slow: B's 2 s hold lapsed before {step}"
        );
    };
    assert_eq!(h.state_of(&rsv_b).await, "held");
    let allocated = h.allocated("pool_vip").await;
    b_still_held("the pool was read");
    assert_eq!(allocated, 2);

    // Buyer C: the capacity gate fires, no hold is placed.
    let c1 = checkout
        .send("pool_vip", &reserve("buyer_c", 600_000), "tok_c1")
        .await;
    let allocated = h.allocated("pool_vip").await;
    b_still_held("C's first reserve was checked");
    c1.expect_problem(409, "pool-capacity-exceeded");
    assert!(!c1.replayed);
    assert_eq!(allocated, 2);

    // Buyer A's reserve is retried after a network drop: same answer, nothing new.
    let events_before_retry = h.event_count().await;
    let a1_again = checkout
        .send("pool_vip", &reserve("buyer_a", 600_000), "tok_a1")
        .await;
    let (allocated, events) = (h.allocated("pool_vip").await, h.event_count().await);
    b_still_held("A's retry was checked");
    a1_again.expect_ok(201);
    assert!(a1_again.replayed, "retry not marked replayed: {a1_again:?}");
    assert_eq!(a1_again.body, a1.body);
    assert_eq!(allocated, 2);
    assert_eq!(events, events_before_retry);

    // Buyer A confirms; the slot is kept.
    let a2 = checkout.send("pool_vip", &confirm(&rsv_a), "tok_a2").await;
    a2.expect_ok(200);
    assert_eq!(a2.body["outcome"], "confirmed");
    assert_eq!(h.state_of(&rsv_a).await, "confirmed");
    let allocated = h.allocated("pool_vip").await;
    b_still_held("A's confirm was checked");
    assert_eq!(allocated, 2);

    // Buyer B lets the hold lapse; the sweeper (not this test) expires it.
    let observed_at = h
        .wait_for_state(&rsv_b, "expired", Duration::from_secs(5))
        .await;
    assert!(
        observed_at.0 >= b_expires_at,
        "expired before expires_at: observed {observed_at:?}, expires_at {b_expires_at}"
    );
    assert!(
        observed_at.0 <= b_expires_at + 1_000,
        "sweeper late: observed {} ms after expires_at",
        observed_at.0 - b_expires_at
    );
    let expiry = last_event(&h, "pool_vip").await;
    assert_eq!(expiry.actor, ActorId::new(FIRST_SWEEPER));
    assert!(
        matches!(expiry.change, Change::Expired { .. }),
        "{expiry:?}"
    );
    assert_eq!((expiry.allocated_before, expiry.allocated_after), (2, 1));
    assert_eq!(h.allocated("pool_vip").await, 1);
    let b_view = h.reservation(&rsv_b).await;
    assert_eq!(b_view.body["slot_held"], false);
    // A late confirm of the expired hold cannot take the returned slot back.
    checkout
        .send("pool_vip", &confirm(&rsv_b), "tok_b2")
        .await
        .expect_problem(409, "not-held");
    assert_eq!(h.allocated("pool_vip").await, 1);

    // Buyer C retries with a fresh token and gets the slot B let lapse.
    let c2 = checkout
        .send("pool_vip", &reserve("buyer_c", 600_000), "tok_c2")
        .await;
    c2.expect_ok(201);
    let rsv_c = c2.reservation();
    assert_eq!(h.state_of(&rsv_c).await, "held");

    let pool = h.pool("pool_vip").await;
    pool.expect_ok(200);
    assert_eq!(pool.body["allocated"], 2);
    assert_eq!(pool.body["capacity"], 2);
    assert_eq!(pool.body["confirmed"], 1);
    assert_eq!(pool.body["expired"], 1);
    assert!(h.metric("allot_sweeper_expired_total").await >= 1.0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_recorded_outcomes_and_change_nothing() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 11).await;
    let other = h.register("other_shop", Role::Client, 12).await;
    h.admin_raw
        .send("p1", &declare(1), "declare-p1")
        .await
        .expect_ok(201);

    let first = shop.send("p1", &reserve("x", 600_000), "t-x").await;
    first.expect_ok(201);
    let rsv = first.reservation();
    let before = h.observe(&["p1"], &[&rsv]).await;
    for _ in 0..3 {
        let again = shop.send("p1", &reserve("x", 600_000), "t-x").await;
        again.expect_ok(201);
        assert!(again.replayed);
        assert_eq!(again.body, first.body);
    }
    assert_eq!(h.observe(&["p1"], &[&rsv]).await, before);

    // Confirm, then retry the confirm.
    let confirmed = shop.send("p1", &confirm(&rsv), "t-confirm").await;
    confirmed.expect_ok(200);
    let after_confirm = h.observe(&["p1"], &[&rsv]).await;
    let again = shop.send("p1", &confirm(&rsv), "t-confirm").await;
    again.expect_ok(200);
    assert!(again.replayed);
    assert_eq!(again.body, confirmed.body);
    assert_eq!(h.observe(&["p1"], &[&rsv]).await, after_confirm);

    // A rejection is recorded too (one event), and its retry replays it, marked as such.
    let rejected = shop.send("p1", &reserve("y", 600_000), "t-y").await;
    rejected.expect_problem(409, "pool-capacity-exceeded");
    assert!(!rejected.replayed);
    let after_rejection = h.observe(&["p1"], &[&rsv]).await;
    assert_eq!(after_rejection.events, after_confirm.events + 1);
    assert_eq!(h.allocated("p1").await, 1);
    // Even once there is room, the retry answers what was recorded rather than deciding again.
    h.admin_raw
        .send(
            "p1",
            &allot_domain::Action::AdjustCapacity { capacity: 2 },
            "grow-p1",
        )
        .await
        .expect_ok(200);
    let grown = h.observe(&["p1"], &[&rsv]).await;
    let again = shop.send("p1", &reserve("y", 600_000), "t-y").await;
    again.expect_problem(409, "pool-capacity-exceeded");
    assert!(again.replayed, "replayed rejection not marked: {again:?}");
    assert_eq!(again.body, rejected.body);
    assert_eq!(h.observe(&["p1"], &[&rsv]).await, grown);

    // Tokens are scoped to their actor: another caller's identical token and payload is a new
    // decision, never the first caller's recorded outcome.
    let foreign = other.send("p1", &reserve("x", 600_000), "t-x").await;
    foreign.expect_ok(201);
    assert!(!foreign.replayed);
    assert_ne!(foreign.reservation(), rsv);
    assert_eq!(h.allocated("p1").await, 2);
    h.shutdown().await;
}

/// Every refusal below must be a problem document and leave store and projections untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problems_and_change_nothing() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 21).await;
    let stranger = h.actor("stranger", ed25519_dalek::SigningKey::from_bytes(&[22; 32]));
    h.admin_raw
        .send("p2", &declare(2), "declare-p2")
        .await
        .expect_ok(201);
    let held = shop.send("p2", &reserve("a", 600_000), "t-1").await;
    held.expect_ok(201);
    let rsv = held.reservation();
    let before = h.observe(&["p2", "never-declared"], &[&rsv]).await;

    let path = "/v1/pools/p2/reservations";
    let good = reserve("b", 600_000);
    let (_, good_body) = support::request_parts("p2", &good);
    let mut checks = Vec::new();

    // 400: no Idempotency-Key.
    let headers: Vec<_> = shop
        .headers("p2", &good, "t-2", now())
        .into_iter()
        .filter(|(name, _)| *name != support::IDEMPOTENCY_KEY_NAME)
        .collect();
    checks.push((
        "missing key",
        shop.post_raw(path, &headers, good_body.to_string()).await,
        400,
        "invalid-request",
    ));
    // 400: malformed JSON, unknown field.
    let headers = shop.headers("p2", &good, "t-3", now());
    checks.push((
        "malformed JSON",
        shop.post_raw(path, &headers, "{\"resource\": \"b\",").await,
        400,
        "invalid-request",
    ));
    let mut unknown = good_body.clone();
    unknown["colour"] = json!("red");
    checks.push((
        "unknown field",
        shop.post_raw(path, &headers, unknown.to_string()).await,
        400,
        "invalid-request",
    ));
    // 400: absurd numbers, correctly signed.
    checks.push((
        "capacity 2^64-1",
        h.admin_raw.send("p3", &declare(u64::MAX), "d-max").await,
        400,
        "invalid-request",
    ));
    checks.push((
        "duration 0",
        shop.send("p2", &reserve("b", 0), "t-4").await,
        400,
        "invalid-request",
    ));
    checks.push((
        "duration of centuries",
        shop.send("p2", &reserve("b", 200 * 365 * 86_400_000), "t-5")
            .await,
        400,
        "invalid-request",
    ));
    // 422: the token of the recorded reserve with another payload.
    checks.push((
        "token reuse with other payload",
        shop.send("p2", &reserve("someone-else", 600_000), "t-1")
            .await,
        422,
        "token-collision",
    ));
    checks.push((
        "token reuse for another action",
        shop.send("p2", &confirm(&rsv), "t-1").await,
        422,
        "token-collision",
    ));
    // 404: a pool nobody declared.
    checks.push((
        "undeclared pool",
        shop.send("never-declared", &good, "t-11").await,
        404,
        "not-known",
    ));
    // 401: bad signature, stale signed_at, unregistered actor.
    let mut headers = shop.headers("p2", &good, "t-6", now());
    for (name, value) in &mut headers {
        if *name == support::SIGNATURE_NAME {
            let mut bytes = hex::decode(&*value).expect("hex");
            bytes[10] ^= 0x01;
            *value = hex::encode(bytes);
        }
    }
    checks.push((
        "bad signature",
        shop.post_raw(path, &headers, good_body.to_string()).await,
        401,
        "invalid-request",
    ));
    let stale = allot_domain::Timestamp(now().0 - 10 * 60_000);
    checks.push((
        "stale signed_at",
        shop.send_at("p2", &good, "t-7", stale).await,
        401,
        "invalid-request",
    ));
    checks.push((
        "unregistered actor",
        stranger.send("p2", &good, "t-8").await,
        401,
        "invalid-request",
    ));
    // 403: a client declaring a pool, a client expiring a hold.
    checks.push((
        "client declares",
        shop.send("never-declared", &declare(5), "t-9").await,
        403,
        "forbidden",
    ));
    checks.push((
        "client expires",
        shop.send("p2", &expire(&rsv), "t-10").await,
        403,
        "forbidden",
    ));

    let mut failures = Vec::new();
    for (name, answer, status, code) in &checks {
        let ok = answer.status == *status
            && answer.content_type == "application/problem+json"
            && answer.code() == Some(code)
            && !answer.replayed;
        if !ok {
            failures.push(format!("{name}: wanted {status} {code}, got {answer:?}"));
        }
        // Full shape check (type, title, detail, status).
        if ok {
            answer.expect_problem(*status, code);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(h.observe(&["p2", "never-declared"], &[&rsv]).await, before);
    assert_eq!(h.state_of(&rsv).await, "held");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_reserves_on_one_seat() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 31).await;
    h.admin_raw
        .send("hot", &declare(1), "declare-hot")
        .await
        .expect_ok(201);

    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let shop = shop.clone();
            tokio::spawn(async move {
                shop.send(
                    "hot",
                    &reserve(&format!("buyer-{i}"), 600_000),
                    &format!("hot-{i}"),
                )
                .await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    let mut other = Vec::new();
    for task in tasks {
        let answer = task.await.expect("task");
        match (answer.status, answer.code()) {
            (201, _) => created.push(answer.reservation()),
            (409, Some("pool-capacity-exceeded")) => refused += 1,
            _ => other.push(answer),
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!(created.len(), 1, "winners: {created:?}");
    assert_eq!(refused, 499);
    let pool = h.pool("hot").await;
    assert_eq!(pool.body["allocated"], 1);
    assert_eq!(pool.body["reservations"], 1);
    assert_eq!(h.state_of(&created[0]).await, "held");
    h.shutdown().await;
}

/// Many copies of one request in flight at once (a client retrying impatiently) act once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_token_act_once() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 35).await;
    h.admin_raw
        .send("retry", &declare(10), "declare-retry")
        .await
        .expect_ok(201);
    let events = h.event_count().await;
    let action = reserve("impatient", 600_000);
    let (path, body) = support::request_parts("retry", &action);
    let headers = shop.headers("retry", &action, "same-token", now());
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (shop, path, headers) = (shop.clone(), path.clone(), headers.clone());
            let body = body.to_string();
            tokio::spawn(async move { shop.post_raw(&path, &headers, body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    for answer in &answers {
        answer.expect_ok(201);
        assert_eq!(answer.body, answers[0].body);
    }
    let fresh = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(fresh, 1, "decided more than once");
    assert_eq!(h.allocated("retry").await, 1);
    assert_eq!(h.event_count().await, events + 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_answers_the_same_and_replays_recorded_tokens() {
    let mut h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 41).await;
    h.admin_raw
        .send("r1", &declare(2), "declare-r1")
        .await
        .expect_ok(201);
    let a = shop.send("r1", &reserve("a", 600_000), "r-a").await;
    a.expect_ok(201);
    let b = shop.send("r1", &reserve("b", 600_000), "r-b").await;
    b.expect_ok(201);
    let (rsv_a, rsv_b) = (a.reservation(), b.reservation());
    shop.send("r1", &confirm(&rsv_a), "r-confirm-a")
        .await
        .expect_ok(200);
    shop.send("r1", &cancel(&rsv_b), "r-cancel-b")
        .await
        .expect_ok(200);
    let c = shop.send("r1", &reserve("c", 600_000), "r-c").await;
    c.expect_ok(201);
    let rsv_c = c.reservation();
    let d = shop.send("r1", &reserve("d", 600_000), "r-d").await;
    d.expect_problem(409, "pool-capacity-exceeded");

    let ids = [&rsv_a, &rsv_b, &rsv_c];
    let before = h.observe(&["r1"], &ids).await;
    let old_snapshot = h.restart().await;
    let shop = shop.at(&h.base);
    let after = h.observe(&["r1"], &ids).await;
    assert_eq!(after.http, before.http, "HTTP answers differ after restart");
    assert_eq!(after.events, before.events);
    assert_eq!(old_snapshot, before.projections);
    assert_eq!(
        after.projections, old_snapshot,
        "rebuilt projections differ"
    );
    let states: Vec<Value> = after.http[1..].iter().map(|r| r["state"].clone()).collect();
    assert_eq!(
        states,
        [json!("confirmed"), json!("released"), json!("held")]
    );

    // Tokens recorded before the restart replay after it.
    let c_again = shop.send("r1", &reserve("c", 600_000), "r-c").await;
    c_again.expect_ok(201);
    assert!(c_again.replayed);
    assert_eq!(c_again.body, c.body);
    let d_again = shop.send("r1", &reserve("d", 600_000), "r-d").await;
    d_again.expect_problem(409, "pool-capacity-exceeded");
    assert!(d_again.replayed);
    let confirm_again = shop.send("r1", &confirm(&rsv_a), "r-confirm-a").await;
    confirm_again.expect_ok(200);
    assert!(confirm_again.replayed);
    assert_eq!(h.observe(&["r1"], &ids).await, after);

    // And the restarted service still decides new commands on top of the old log.
    shop.send("r1", &cancel(&rsv_c), "r-cancel-c")
        .await
        .expect_ok(200);
    assert_eq!(h.allocated("r1").await, 1);
    h.shutdown().await;
}

/// Shutdown while requests are in flight: every acknowledged reserve survives the restart, and
/// retrying every token afterwards never places a second hold for one token. Holds whatever the
/// interleaving of requests and shutdown turns out to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_nothing_and_doubles_nothing() {
    const N: usize = 120;
    let mut h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 45).await;
    h.admin_raw
        .send("drain", &declare(1_000), "declare-drain")
        .await
        .expect_ok(201);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let shop = shop.clone();
            tokio::spawn(async move {
                let action = reserve(&format!("r{i}"), 600_000);
                let (path, body) = support::request_parts("drain", &action);
                let headers = shop.headers("drain", &action, &format!("drain-{i}"), now());
                shop.try_post_raw(&path, &headers, body.to_string()).await
            })
        })
        .collect();
    // Once a quarter are recorded, shut down while the rest are in flight.
    let started = std::time::Instant::now();
    let drain = allot_domain::PoolId::new("drain");
    loop {
        let counts = h.service().service.projections().counts.get(&drain);
        if counts.is_some_and(|c| c.reservations >= (N / 4) as u64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "load never arrived"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let snapshot = h.restart().await;
    let mut acknowledged = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(answer) if answer.status == 201 => acknowledged.push((i, answer)),
            Ok(answer) => assert!(
                answer.status == 503,
                "unexpected answer during shutdown: {answer:?}"
            ),
            Err(_) => {} // never reached the service, or the connection was closed
        }
    }
    let recorded = snapshot.counts["drain"].reservations;
    assert_eq!(
        recorded,
        acknowledged.len() as u64,
        "acknowledged reserves differ from recorded ones"
    );
    let shop = shop.at(&h.base);
    for (i, answer) in &acknowledged {
        let view = h.reservation(&answer.reservation()).await;
        assert_eq!(view.body["requester"], format!("r{i}"), "{view:?}");
    }
    // Every client retries every token after the restart.
    let mut replays = 0;
    for i in 0..N {
        let again = shop
            .send(
                "drain",
                &reserve(&format!("r{i}"), 600_000),
                &format!("drain-{i}"),
            )
            .await;
        again.expect_ok(201);
        if let Some((_, first)) = acknowledged.iter().find(|(j, _)| *j == i) {
            assert!(
                again.replayed,
                "acknowledged token decided again: {again:?}"
            );
            assert_eq!(again.body, first.body);
            replays += 1;
        }
    }
    assert_eq!(replays, acknowledged.len());
    let pool = h.pool("drain").await;
    assert_eq!(pool.body["reservations"], N as u64, "{pool:?}");
    assert_eq!(pool.body["allocated"], N as u64);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_is_refused_but_its_reservations_remain() {
    let h = Harness::start().await;
    let shop = h.register("leaving_shop", Role::Client, 51).await;
    h.admin_raw
        .send("rv", &declare(3), "declare-rv")
        .await
        .expect_ok(201);
    let made = shop.send("rv", &reserve("a", 600_000), "rv-a").await;
    made.expect_ok(201);
    let rsv = made.reservation();

    let revoked = h
        .admin
        .revoke_actor(&ActorId::new("leaving_shop"), "revoke-leaving")
        .await
        .expect("revoke");
    assert_eq!(revoked.status, 200, "{revoked:?}");

    let before = h.observe(&["rv"], &[&rsv]).await;
    shop.send("rv", &reserve("b", 600_000), "rv-b")
        .await
        .expect_problem(401, "invalid-request");
    // Not even a replay of its own recorded token is served to a revoked key.
    shop.send("rv", &reserve("a", 600_000), "rv-a")
        .await
        .expect_problem(401, "invalid-request");
    shop.send("rv", &cancel(&rsv), "rv-cancel")
        .await
        .expect_problem(401, "invalid-request");
    assert_eq!(h.observe(&["rv"], &[&rsv]).await, before);

    let view = h.reservation(&rsv).await;
    view.expect_ok(200);
    assert_eq!(view.body["state"], "held");
    assert_eq!(view.body["requester"], "a");
    // Revoking again: the actor has no key in force.
    let again = h
        .admin
        .revoke_actor(&ActorId::new("leaving_shop"), "revoke-leaving-2")
        .await
        .expect("revoke");
    assert_eq!(again.status, 404, "{again:?}");

    // Re-registering under a new key (rotation): the old key stays refused, the new one works
    // and may act on the hold made under the old key.
    let rotated = h.register("leaving_shop", Role::Client, 52).await;
    shop.send("rv", &reserve("c", 600_000), "rv-c")
        .await
        .expect_problem(401, "invalid-request");
    rotated
        .send("rv", &confirm(&rsv), "rv-confirm")
        .await
        .expect_ok(200);
    assert_eq!(h.state_of(&rsv).await, "confirmed");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_openapi_and_metrics() {
    let h = Harness::start().await;
    let health = h.get("/healthz").await;
    health.expect_ok(200);
    assert_eq!(health.body["status"], "ok");

    let openapi = h.get("/openapi.json").await;
    openapi.expect_ok(200);
    let paths = openapi.body["paths"].as_object().expect("paths object");
    for path in [
        "/v1/pools/{pool}/reservations",
        "/v1/reservations/{reservation}",
        "/v1/reservations/{reservation}/confirm",
    ] {
        assert!(paths.contains_key(path), "openapi lacks {path}");
    }

    let metrics = h.get_metrics().await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.contains("text"), "{metrics:?}");
    assert_eq!(h.metric("allot_sweeper_expired_total").await, 0.0);

    // Unknown pool and reservation: 404 not-known problems.
    h.pool("nothing-here")
        .await
        .expect_problem(404, "not-known");
    let missing = ReservationId::parse("nothing-here:1").expect("id");
    h.reservation(&missing)
        .await
        .expect_problem(404, "not-known");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_administration_counts_and_units_over_http() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 91).await;
    let admin = &h.admin_raw;
    let pair = |requester: &str| allot_domain::Action::Reserve {
        resource: "tier".into(),
        requester: requester.into(),
        duration_ms: 600_000,
        count: 2,
    };
    admin
        .send("adm", &declare(3), "adm-declare")
        .await
        .expect_ok(201);
    admin
        .send("adm", &declare(3), "adm-declare-again")
        .await
        .expect_problem(409, "pool-already-declared");
    let first = shop.send("adm", &pair("a"), "adm-a").await;
    first.expect_ok(201);
    let rsv_a = first.reservation();
    assert_eq!(h.allocated("adm").await, 2);
    shop.send("adm", &pair("b"), "adm-b")
        .await
        .expect_problem(409, "pool-capacity-exceeded");
    admin
        .send(
            "adm",
            &allot_domain::Action::AdjustCapacity { capacity: 1 },
            "adm-shrink",
        )
        .await
        .expect_problem(409, "capacity-below-allocated");
    admin
        .send(
            "adm",
            &allot_domain::Action::AdjustCapacity { capacity: 4 },
            "adm-grow",
        )
        .await
        .expect_ok(200);
    let second = shop.send("adm", &pair("c"), "adm-c").await;
    second.expect_ok(201);
    let rsv_c = second.reservation();
    assert_eq!(h.allocated("adm").await, 4);
    shop.send("adm", &cancel(&rsv_a), "adm-cancel-a")
        .await
        .expect_ok(200);
    assert_eq!(h.allocated("adm").await, 2);
    shop.send("adm", &cancel(&rsv_a), "adm-cancel-a-again")
        .await
        .expect_problem(409, "not-held");
    assert_eq!(h.allocated("adm").await, 2, "a slot was released twice");
    admin
        .send("adm", &allot_domain::Action::ClosePool, "adm-close")
        .await
        .expect_ok(200);
    shop.send("adm", &reserve("d", 600_000), "adm-d")
        .await
        .expect_problem(409, "pool-closed");
    // Closing stops new holds only: the live one can still be confirmed.
    shop.send("adm", &confirm(&rsv_c), "adm-confirm-c")
        .await
        .expect_ok(200);
    let pool = h.pool("adm").await;
    assert_eq!(pool.body["closed"], true);
    assert_eq!(pool.body["capacity"], 4);
    assert_eq!(pool.body["allocated"], 2);
    assert_eq!(pool.body["released"], 1);
    assert_eq!(pool.body["confirmed"], 1);

    // Named units: a unit is held by one live reservation at a time.
    let seat = |unit: &str, who: &str| allot_domain::Action::Reserve {
        resource: unit.into(),
        requester: who.into(),
        duration_ms: 600_000,
        count: 1,
    };
    let seat_map = allot_domain::Action::DeclarePool {
        capacity: 2,
        closes_at: None,
        units: vec!["A1".into(), "A2".into()],
        idempotency_window_ms: 300_000,
    };
    admin
        .send("seats", &seat_map, "seats-declare")
        .await
        .expect_ok(201);
    let a1 = shop.send("seats", &seat("A1", "x"), "seat-1").await;
    a1.expect_ok(201);
    shop.send("seats", &seat("A1", "y"), "seat-2")
        .await
        .expect_problem(409, "resource-unavailable");
    shop.send("seats", &seat("Z9", "y"), "seat-3")
        .await
        .expect_problem(400, "invalid-request");
    shop.send("seats", &cancel(&a1.reservation()), "seat-cancel")
        .await
        .expect_ok(200);
    shop.send("seats", &seat("A1", "y"), "seat-4")
        .await
        .expect_ok(201);
    assert_eq!(h.allocated("seats").await, 1);
    h.shutdown().await;
}

/// The hold window's edges and the idempotency window, on a clock the test moves (sweeper off,
/// so every transition here is the test's own request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_edges_over_http_on_a_manual_clock() {
    let clock = Arc::new(ManualClock::new(now()));
    let h = Harness::start_with(clock.clone(), false).await;
    let shop = h.register("shop", Role::Client, 92).await;
    let admin = &h.admin_raw;
    let at = || clock.now();
    let start = at();
    let window = allot_domain::Action::DeclarePool {
        capacity: 3,
        closes_at: Some(start.plus_ms(60_000)),
        units: vec![],
        idempotency_window_ms: 240_000,
    };
    admin
        .send_at("edge", &window, "edge-declare", at())
        .await
        .expect_ok(201);
    let a = shop
        .send_at("edge", &reserve("a", 10_000), "e-a", at())
        .await;
    a.expect_ok(201);
    let b = shop
        .send_at("edge", &reserve("b", 10_000), "e-b", at())
        .await;
    b.expect_ok(201);
    let (rsv_a, rsv_b) = (a.reservation(), b.reservation());
    let expires_at = a.body["expires_at"].as_u64().expect("expires_at");
    assert_eq!(expires_at, start.0 + 10_000);

    // One millisecond before expires_at: confirm works, expire is premature.
    clock.set(allot_domain::Timestamp(expires_at - 1));
    shop.send_at("edge", &confirm(&rsv_a), "e-confirm-a", at())
        .await
        .expect_ok(200);
    admin
        .send_at("edge", &expire(&rsv_b), "e-expire-b-early", at())
        .await
        .expect_problem(409, "window-not-elapsed");
    // At expires_at: confirm is too late, expire works and returns the slot.
    clock.set(allot_domain::Timestamp(expires_at));
    shop.send_at("edge", &confirm(&rsv_b), "e-confirm-b", at())
        .await
        .expect_problem(409, "window-elapsed");
    assert_eq!(h.state_of(&rsv_b).await, "held");
    admin
        .send_at("edge", &expire(&rsv_b), "e-expire-b", at())
        .await
        .expect_ok(200);
    assert_eq!(h.state_of(&rsv_b).await, "expired");
    assert_eq!(h.allocated("edge").await, 1);

    // Inside the idempotency window a retry replays; the retry of a premature expire replays
    // its rejection even though expiring would now succeed.
    let early_again = admin
        .send_at("edge", &expire(&rsv_b), "e-expire-b-early", at())
        .await;
    early_again.expect_problem(409, "window-not-elapsed");
    assert!(early_again.replayed);

    // closes_at: reserve at the cutoff is pool-closed.
    clock.set(start.plus_ms(60_000));
    shop.send_at("edge", &reserve("c", 10_000), "e-c", at())
        .await
        .expect_problem(409, "pool-closed");

    // Past the idempotency window the token is forgotten and the request decided afresh
    // (here: the pool has closed since, so the answer differs from the recorded 201).
    clock.set(start.plus_ms(240_000));
    let late = shop
        .send_at("edge", &reserve("a", 10_000), "e-a", at())
        .await;
    late.expect_problem(409, "pool-closed");
    assert!(!late.replayed);
    // Just inside the window (relative to its own record) the other token still replays.
    let c_again = shop
        .send_at("edge", &reserve("c", 10_000), "e-c", at())
        .await;
    c_again.expect_problem(409, "pool-closed");
    assert!(c_again.replayed);
    h.shutdown().await;
}

/// Many holds lapse together: the sweeper expires each exactly once, leaves confirmed ones
/// alone, and the pool ends empty of holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_expires_every_lapsed_hold_exactly_once() {
    const HOLDS: usize = 30;
    const CONFIRMED: usize = 10;
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 95).await;
    h.admin_raw
        .send("lapse", &declare(100), "declare-lapse")
        .await
        .expect_ok(201);
    let mut ids = Vec::new();
    for i in 0..HOLDS {
        // The ones to be confirmed get a long hold, so confirming them races nothing.
        let duration_ms = if i < CONFIRMED { 600_000 } else { 1_500 };
        let answer = shop
            .send(
                "lapse",
                &reserve(&format!("r{i}"), duration_ms),
                &format!("l-{i}"),
            )
            .await;
        answer.expect_ok(201);
        ids.push(answer.reservation());
    }
    for (i, id) in ids.iter().take(CONFIRMED).enumerate() {
        shop.send("lapse", &confirm(id), &format!("l-confirm-{i}"))
            .await
            .expect_ok(200);
    }
    let started = std::time::Instant::now();
    while h.allocated("lapse").await != CONFIRMED as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "holds not expired: {:?}",
            h.pool("lapse").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let want = if i < CONFIRMED {
            "confirmed"
        } else {
            "expired"
        };
        assert_eq!(h.state_of(id).await, want, "{id}");
    }
    let pool = h.pool("lapse").await;
    assert_eq!(pool.body["expired"], (HOLDS - CONFIRMED) as u64);
    assert_eq!(pool.body["allocated"], CONFIRMED as u64);
    // One expiry event per lapsed hold, all by the sweeper, and no sweeper rejections.
    let store = h.service().service.store();
    let events = store
        .read_stream(&pool_stream(&"lapse".into()), 0, 100_000)
        .await
        .expect("read");
    let by_sweeper: Vec<_> = events
        .iter()
        .map(|recorded| decode_pool(recorded).expect("decode"))
        .filter(|event| event.actor == ActorId::new(FIRST_SWEEPER))
        .collect();
    assert_eq!(by_sweeper.len(), HOLDS - CONFIRMED, "{by_sweeper:?}");
    assert!(
        by_sweeper
            .iter()
            .all(|event| matches!(event.change, Change::Expired { .. }))
    );
    assert_eq!(
        h.metric("allot_sweeper_expired_total").await,
        (HOLDS - CONFIRMED) as f64
    );
    h.shutdown().await;
}

/// A hold that lapses while the service is down is expired by the restarted service's sweeper
/// (the expiry index is rebuilt from the log). The clock is the test's, so "while down" is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_after_restart_expires_holds_that_lapsed_while_down() {
    let clock = Arc::new(ManualClock::new(now()));
    let mut h = Harness::start_with(clock.clone(), true).await;
    let shop = h.register("shop", Role::Client, 96).await;
    h.admin_raw
        .send_at("down", &declare(1), "declare-down", clock.now())
        .await
        .expect_ok(201);
    let held = shop
        .send_at("down", &reserve("a", 10_000), "down-a", clock.now())
        .await;
    held.expect_ok(201);
    let rsv = held.reservation();
    let snapshot = h.stop().await;
    assert_eq!(snapshot.binding[&rsv.to_string()].state.as_str(), "held");
    clock.advance_ms(10_000);
    h.resume().await;
    let shop = shop.at(&h.base);
    h.wait_for_state(&rsv, "expired", Duration::from_secs(5))
        .await;
    let expiry = last_event(&h, "down").await;
    assert_eq!(expiry.actor, ActorId::new(FIRST_SWEEPER));
    assert!(matches!(expiry.change, Change::Expired { .. }));
    shop.send_at("down", &reserve("b", 600_000), "down-b", clock.now())
        .await
        .expect_ok(201);
    assert_eq!(h.allocated("down").await, 1);
    h.shutdown().await;
}

/// Errors are RFC 9457 problems everywhere, including routes and methods the API lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_problems() {
    let h = Harness::start().await;
    let answer = h.get("/v1/nothing").await;
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{answer:?}"
    );
    let answer = h.get("/v1/pools/p/reservations").await;
    assert_eq!(answer.status, 405);
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{answer:?}"
    );
    h.shutdown().await;
}

/// The crate's own signing client (`allot_client::Client`, used by the CLI and the demo)
/// speaks the same API the raw requests above do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_client_round_trip() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 97).await;
    let client = h.admin.with_identity(shop.id.clone(), shop.key.clone());
    let pool = PoolId::new("cli");
    let declare = Action::DeclarePool {
        capacity: 2,
        closes_at: Some(now().plus_ms(3_600_000)),
        units: vec!["S1".into(), "S2".into()],
        idempotency_window_ms: 600_000,
    };
    let declared = h
        .admin
        .send(&pool, &declare, "cli-declare")
        .await
        .expect("send");
    assert_eq!(declared.status, 201, "{declared:?}");
    let seat = Action::Reserve {
        resource: "S2".into(),
        requester: "dana".into(),
        duration_ms: 600_000,
        count: 1,
    };
    let reserved = client
        .send(&pool, &seat, "cli-reserve")
        .await
        .expect("send");
    assert_eq!(reserved.status, 201, "{reserved:?}");
    let retried = client
        .send(&pool, &seat, "cli-reserve")
        .await
        .expect("send");
    assert!(retried.replayed);
    assert_eq!(retried.body, reserved.body);
    let id = ReservationId::parse(reserved.body["reservation_id"].as_str().expect("id"))
        .expect("reservation id");
    let confirmed = client
        .send(&pool, &confirm(&id), "cli-confirm")
        .await
        .expect("send");
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    let view = client.reservation(&id).await.expect("get");
    assert_eq!(view.body["state"], "confirmed");
    assert_eq!(view.body["resource"], "S2");
    let stale = client
        .send_signed_at(&pool, &cancel(&id), "cli-stale", now().plus_ms(600_000))
        .await
        .expect("send");
    assert_eq!((stale.status, stale.code()), (401, Some("invalid-request")));
    let counts = client.pool(&pool).await.expect("get");
    assert_eq!(counts.body["allocated"], 1);
    assert_eq!(counts.body["confirmed"], 1);
    h.shutdown().await;
}

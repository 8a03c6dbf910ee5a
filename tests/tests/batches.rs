//! Signed batches over HTTP: one signature, each member decided as if it came alone. Batches
//! and single commands get the same outcomes and leave the same state (a property); what is
//! refused at the door records nothing; a log of batches audits clean with every event's
//! attribution verified; a store failure in the middle of a batch leaves each member recorded
//! or not, and the batch sent again converges.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use allot_client::wire::{BATCH_PATH, BatchCommand};
use allot_domain::batch::BATCH_COMMANDS_MAX;
use allot_domain::signing::SIGNED_AT_SKEW_MS;
use allot_domain::{Action, IdempotencyToken, PoolId, Role, Timestamp};
use allot_replay::{AuditReport, Recorded};
use allot_server::clock::{Clock, ManualClock};
use allot_server::store::memory::MemoryStore;
use allot_server::store::{
    AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
    Subscription,
};
use allot_tools::inspect::{AuditRequest, audit, progress_bar};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use support::{
    ACTOR_NAME, Actor, Harness, IDEMPOTENCY_KEY_NAME, Resp, SIGNATURE_NAME, SIGNED_AT_NAME,
    declare, now, request_parts, reserve,
};

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

// ---- Batches and single commands agree -------------------------------------------------------

/// One command's answer as the single route gives it: status, whether it was replayed, and the
/// body without what differs by route (the status member a batch result adds, receipts).
type Answer = (u16, bool, Value);

fn normalized(status: u16, replayed: bool, body: &Value) -> Answer {
    let mut body = body.clone();
    if let Some(members) = body.as_object_mut() {
        for name in ["status", "replayed", "receipt"] {
            members.remove(name);
        }
    }
    (status, replayed, body)
}

fn single_answer(resp: &Resp) -> Answer {
    normalized(resp.status, resp.replayed, &resp.body)
}

/// Each member's answer of a batch answered 200.
fn batch_answers(resp: &Resp) -> Vec<Answer> {
    resp.expect_ok(200);
    resp.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {resp:?}"))
        .iter()
        .map(|result| {
            let status = result["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or_else(|| panic!("no status in {result}"));
            normalized(status, result["replayed"] == true, result)
        })
        .collect()
}

const POOLS: [(&str, u64); 3] = [("p0", 2), ("p1", 3), ("p2", 1)];

fn bad_pool() -> String {
    "x".repeat(65)
}

/// What a client does, before it is written as a command.
#[derive(Debug, Clone)]
enum Op {
    /// `pool` is an index into [`POOLS`], or past it for an id the pool rule refuses; a count
    /// of 0 is malformed.
    Reserve {
        pool: usize,
        requester: u8,
        count: u32,
    },
    Confirm {
        pool: usize,
        seq: u64,
    },
    Cancel {
        pool: usize,
        seq: u64,
    },
    /// An earlier command again, token and parameters: a replay.
    Again {
        earlier: usize,
    },
    /// An earlier command's token with other parameters: a collision.
    Collide {
        earlier: usize,
    },
    /// A pool administration a client may not do.
    Close {
        pool: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=POOLS.len(), 0..3u8, 0..3u32)
            .prop_map(|(pool, requester, count)| Op::Reserve { pool, requester, count }),
        2 => (0..POOLS.len(), 1..5u64).prop_map(|(pool, seq)| Op::Confirm { pool, seq }),
        1 => (0..POOLS.len(), 1..5u64).prop_map(|(pool, seq)| Op::Cancel { pool, seq }),
        2 => any::<prop::sample::Index>().prop_map(|i| Op::Again { earlier: i.index(1 << 16) }),
        1 => any::<prop::sample::Index>().prop_map(|i| Op::Collide { earlier: i.index(1 << 16) }),
        1 => (0..POOLS.len()).prop_map(|pool| Op::Close { pool }),
    ]
}

fn pool_name(pool: usize) -> String {
    POOLS
        .get(pool)
        .map_or_else(bad_pool, |(name, _)| (*name).to_owned())
}

/// The commands `ops` stand for, in order; command `i` has token `t{i}` unless it repeats one.
fn commands_of(ops: &[Op]) -> Vec<BatchCommand> {
    let mut commands: Vec<BatchCommand> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let token = format!("t{i}");
        let command = match op {
            Op::Reserve {
                pool,
                requester,
                count,
            } => member(
                &pool_name(*pool),
                Action::Reserve {
                    resource: "ga".into(),
                    requester: format!("r{requester}"),
                    duration_ms: 600_000,
                    count: *count,
                },
                &token,
            ),
            Op::Confirm { pool, seq } => member(
                &pool_name(*pool),
                Action::ConfirmReservation { reservation: *seq },
                &token,
            ),
            Op::Cancel { pool, seq } => member(
                &pool_name(*pool),
                Action::CancelReservation { reservation: *seq },
                &token,
            ),
            Op::Close { pool } => member(&pool_name(*pool), Action::ClosePool, &token),
            Op::Again { earlier } if !commands.is_empty() => {
                commands[earlier % commands.len()].clone()
            }
            Op::Collide { earlier } if !commands.is_empty() => {
                let earlier = &commands[earlier % commands.len()];
                let requester = match &earlier.action {
                    Action::Reserve { requester, .. } => format!("{requester}-other"),
                    _ => "collider".to_owned(),
                };
                BatchCommand {
                    action: reserve(&requester, 600_000),
                    ..earlier.clone()
                }
            }
            Op::Again { .. } | Op::Collide { .. } => {
                member(&pool_name(0), reserve("first", 600_000), &token)
            }
        };
        commands.push(command);
    }
    commands
}

/// A service on `clock` (sweeper off) with the pools of [`POOLS`] declared and the client
/// `shop` registered; `shop` as a raw actor.
async fn service_with_pools(clock: &Arc<ManualClock>) -> (Harness, Actor) {
    with_pools(Harness::start_with(clock.clone(), false).await, clock).await
}

/// `h` with the pools of [`POOLS`] declared and the client `shop` registered.
async fn with_pools(h: Harness, clock: &Arc<ManualClock>) -> (Harness, Actor) {
    let shop = h.register("shop", Role::Client, 7).await;
    for (pool, capacity) in POOLS {
        h.admin_raw
            .send_at(
                pool,
                &declare(capacity),
                &format!("declare-{pool}"),
                clock.now(),
            )
            .await
            .expect_ok(201);
    }
    (h, shop)
}

/// The projections with what depends on how the log interleaves pools left out (the last
/// global position).
fn comparable(h: &Harness) -> allot_projections::ProjectionContents {
    let mut contents = h.service().service.projections().contents();
    contents.last_position = None;
    contents
}

/// Every pool as the admin reads it.
async fn pool_views(h: &Harness) -> Vec<Value> {
    let mut views = Vec::new();
    for (pool, _) in POOLS {
        views.push(h.pool(pool).await.body);
    }
    views
}

/// Sends `commands` in batches of `sizes` (cycled) to one service and one by one to another;
/// both must answer each command alike and end in the same state.
async fn batches_match_singles(commands: Vec<BatchCommand>, sizes: Vec<usize>) {
    let clock = Arc::new(ManualClock::new(now()));
    let (batched, batch_shop) = service_with_pools(&clock).await;
    let (single, single_shop) = service_with_pools(&clock).await;

    let mut by_batch = Vec::new();
    let mut rest = commands.as_slice();
    for (n, size) in sizes.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at((*size).clamp(1, rest.len()));
        rest = after;
        let answer = batch_shop
            .send_batch_at(&format!("batch-{n}"), chunk, clock.now())
            .await;
        let answers = batch_answers(&answer);
        assert_eq!(answers.len(), chunk.len(), "{answer:?}");
        by_batch.extend(answers);
    }
    let mut one_by_one = Vec::new();
    for command in &commands {
        let answer = single_shop
            .send_at(
                command.pool.as_str(),
                &command.action,
                command.token.as_str(),
                clock.now(),
            )
            .await;
        one_by_one.push(single_answer(&answer));
    }
    for (i, (got, want)) in by_batch.iter().zip(&one_by_one).enumerate() {
        assert_eq!(
            got, want,
            "command {i} ({:?}) answered differently in a batch",
            commands[i]
        );
    }
    assert_eq!(comparable(&batched), comparable(&single));
    assert_eq!(pool_views(&batched).await, pool_views(&single).await);
    assert_eq!(batched.event_count().await, single.event_count().await);
    batched.shutdown().await;
    single.shutdown().await;
}

#[test]
fn batches_and_single_commands_get_the_same_outcomes_and_state() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: 12,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(op(), 1..28),
        prop::collection::vec(1..7usize, 1..5),
    );
    runner
        .run(&strategy, |(ops, sizes)| {
            runtime.block_on(batches_match_singles(commands_of(&ops), sizes));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pool_id_is_refused_in_the_single_routes_words() {
    let clock = Arc::new(ManualClock::new(now()));
    let (h, shop) = service_with_pools(&clock).await;
    let bad = member(&bad_pool(), reserve("r", 600_000), "t1");
    let in_batch = batch_answers(
        &shop
            .send_batch_at("b1", std::slice::from_ref(&bad), clock.now())
            .await,
    );
    let alone = shop
        .send_at(bad.pool.as_str(), &bad.action, "t2", clock.now())
        .await;
    assert_eq!(in_batch[0], single_answer(&alone));
    h.shutdown().await;
}

// ---- Refused at the door ---------------------------------------------------------------------

/// The headers of `commands` as batch `key`, signed by `signer` over its own batch bytes but
/// sent as `actor`.
fn batch_headers(
    signer: &Actor,
    actor: &str,
    key: &str,
    commands: &[BatchCommand],
    signed_at: Timestamp,
) -> Vec<(&'static str, String)> {
    let attestation = allot_client::wire::sign_batch(
        &signer.key,
        &signer.id,
        &IdempotencyToken::new(key),
        commands,
        signed_at,
    )
    .expect("a batch has commands");
    vec![
        (IDEMPOTENCY_KEY_NAME, key.to_owned()),
        (ACTOR_NAME, actor.to_owned()),
        (SIGNED_AT_NAME, signed_at.0.to_string()),
        (SIGNATURE_NAME, hex::encode(&attestation.signature)),
    ]
}

fn batch_body(commands: &[BatchCommand]) -> Vec<u8> {
    let mut body = Vec::new();
    allot_client::wire::write_batch_body(commands, &mut body).expect("batch body");
    body
}

/// Events and projections: what a refused batch must leave as it was.
async fn recorded(h: &Harness) -> (usize, allot_projections::ProjectionContents) {
    (
        h.event_count().await,
        h.service().service.projections().contents(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_signed_by_another_actor_is_refused_as_a_bad_signature() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    let other = h.register("other", Role::Client, 8).await;
    h.admin_raw
        .send("hall", &declare(5), "hall-declare")
        .await
        .expect_ok(201);
    let commands = vec![
        member("hall", reserve("r1", 60_000), "t1"),
        member("hall", reserve("r2", 60_000), "t2"),
    ];
    let before = recorded(&h).await;
    let signed_at = now();
    let headers = batch_headers(&other, "shop", "b1", &commands, signed_at);
    let answer = shop
        .post_raw(BATCH_PATH, &headers, batch_body(&commands))
        .await;
    // As the single route answers a signature made with another actor's key.
    let single = shop
        .post_raw(
            "/v1/pools/hall/reservations",
            &[
                (IDEMPOTENCY_KEY_NAME, "t1".to_owned()),
                (ACTOR_NAME, "shop".to_owned()),
                (SIGNED_AT_NAME, signed_at.0.to_string()),
                (
                    SIGNATURE_NAME,
                    other.sign("hall", &reserve("r1", 60_000), "t1", signed_at),
                ),
            ],
            request_parts("hall", &reserve("r1", 60_000)).1.to_string(),
        )
        .await;
    single.expect_problem(401, "invalid-request");
    answer.expect_problem(401, "invalid-request");
    assert_eq!(
        recorded(&h).await,
        before,
        "a refused batch records nothing"
    );
    // The same root signed by shop is accepted.
    shop.send_batch_at("b1", &commands, signed_at)
        .await
        .expect_ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_after_its_signature_window_is_stale() {
    let clock = Arc::new(ManualClock::new(now()));
    let (h, shop) = service_with_pools(&clock).await;
    let signed_at = clock.now();
    let commands = vec![member("p1", reserve("r1", 600_000), "t1")];
    let first = shop.send_batch_at("b1", &commands, signed_at).await;
    assert_eq!(batch_answers(&first)[0].0, 201);
    let single = member("p1", reserve("r2", 600_000), "s1");
    shop.send_at("p1", &single.action, "s1", signed_at)
        .await
        .expect_ok(201);
    clock.advance_ms(SIGNED_AT_SKEW_MS + 1);
    let before = recorded(&h).await;
    let again = shop.send_batch_at("b1", &commands, signed_at).await;
    let single_again = shop.send_at("p1", &single.action, "s1", signed_at).await;
    single_again.expect_problem(401, "invalid-request");
    again.expect_problem(401, "invalid-request");
    assert_eq!(again.body["detail"], single_again.body["detail"]);
    assert_eq!(recorded(&h).await, before);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_member_limit_is_too_large() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    let commands: Vec<BatchCommand> = (0..=BATCH_COMMANDS_MAX)
        .map(|i| {
            member(
                "h",
                Action::ConfirmReservation { reservation: 1 },
                &format!("{i}"),
            )
        })
        .collect();
    let before = recorded(&h).await;
    let answer = shop.send_batch("big", &commands).await;
    answer.expect_problem(413, "invalid-request");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&BATCH_COMMANDS_MAX.to_string())),
        "{answer:?}"
    );
    assert_eq!(recorded(&h).await, before);
    // At the limit the batch is read and decided.
    let answer = shop
        .send_batch("full", &commands[..BATCH_COMMANDS_MAX])
        .await;
    assert_eq!(batch_answers(&answer).len(), BATCH_COMMANDS_MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_member_refuses_the_batch_naming_it() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    h.admin_raw
        .send("hall", &declare(5), "hall-declare")
        .await
        .expect_ok(201);
    let good = json!({"action": "reserve", "token": "t0", "pool_id": "hall",
                      "resource": "ga", "requester": "r", "duration_ms": 60_000});
    let unknown_action = json!({"action": "teleport", "token": "t1", "pool_id": "hall"});
    let missing_field = json!({"action": "reserve", "token": "t2", "pool_id": "hall",
                               "resource": "ga", "duration_ms": 60_000});
    let before = recorded(&h).await;
    for (body, index) in [
        (json!({"commands": [good, unknown_action]}), 1),
        (json!({"commands": [good, good, missing_field]}), 2),
    ] {
        // Any signature: the members are read before it is checked.
        let signed = [member("hall", reserve("r", 60_000), "t0")];
        let headers = batch_headers(&shop, "shop", "b1", &signed, now());
        let answer = shop.post_raw(BATCH_PATH, &headers, body.to_string()).await;
        answer.expect_problem(400, "invalid-request");
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&format!("commands[{index}]")), "{answer:?}");
    }
    assert_eq!(recorded(&h).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_member_is_refused_alone() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    h.admin_raw
        .send("hall", &declare(5), "hall-declare")
        .await
        .expect_ok(201);
    let zero = Action::Reserve {
        resource: "ga".into(),
        requester: "z".into(),
        duration_ms: 60_000,
        count: 0,
    };
    let commands = vec![
        member("hall", reserve("r1", 60_000), "t1"),
        member("hall", zero.clone(), "t2"),
        member("hall", reserve("r3", 60_000), "t3"),
    ];
    let answer = shop.send_batch("b1", &commands).await;
    let answers = batch_answers(&answer);
    assert_eq!(answers[0].0, 201, "{answer:?}");
    assert_eq!(answers[2].0, 201, "{answer:?}");
    assert_eq!(answers[0].2["reservation_id"], "hall:1");
    assert_eq!(answers[2].2["reservation_id"], "hall:2");
    // The single route's answer to the same member.
    let single = shop.send("hall", &zero, "s2").await;
    single.expect_problem(400, "invalid-request");
    assert_eq!(answers[1], single_answer(&single));
}

// ---- The audit of a log with batches ---------------------------------------------------------

/// Every pool event of the service's log, decoded.
async fn pool_events(h: &Harness) -> Vec<allot_domain::Event> {
    let store = h.service().service.store();
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 1024).await.expect("read_all");
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        for record in &page {
            if let Ok(Recorded::Pool(pool)) = Recorded::decode(
                &record.stream,
                record.version,
                record.position,
                &record.payload,
            ) {
                events.push(pool.event);
            }
        }
    }
    events
}

async fn audit_of(h: &Harness) -> AuditReport {
    let request = AuditRequest {
        verify_signatures: true,
        as_of: None,
        stranded: false,
        dispute: None,
        contention: None,
        html_title: None,
    };
    let bar = progress_bar(None, "auditing");
    audit(h.service().service.store().as_ref(), &request, &bar)
        .await
        .expect("audit runs")
        .report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_batches_audits_clean_with_every_signature_verified() {
    let clock = Arc::new(ManualClock::new(now()));
    let (h, shop) = service_with_pools(&clock).await;
    let mut batched = 0;
    for n in 0..6u64 {
        let pool = POOLS[(n % 3) as usize].0;
        let commands = vec![
            member(pool, reserve(&format!("a{n}"), 600_000), &format!("a{n}")),
            member("p1", reserve(&format!("b{n}"), 600_000), &format!("b{n}")),
            member(
                pool,
                Action::ConfirmReservation { reservation: 1 },
                &format!("c{n}"),
            ),
            member(pool, Action::ClosePool, &format!("x{n}")),
        ];
        let answers = batch_answers(
            &shop
                .send_batch_at(&format!("b{n}"), &commands, clock.now())
                .await,
        );
        // The close is forbidden (not recorded); every other member records an event.
        assert_eq!(answers[3].0, 403);
        batched += 3;
        clock.advance_ms(1_000);
    }
    shop.send_at("p2", &reserve("alone", 600_000), "alone", clock.now())
        .await;
    let events = pool_events(&h).await;
    let with_membership = events.iter().filter(|e| e.batch.is_some()).count();
    assert_eq!(with_membership, batched);
    for event in events.iter().filter(|e| e.batch.is_some()) {
        let membership = event.batch.as_deref().expect("batched");
        assert_eq!(membership.count, 4);
        assert!(membership.index < 3, "{membership:?}");
    }
    let report = audit_of(&h).await;
    assert!(report.is_clean(), "{report}");
    assert!(report.options.verify_signatures);
    assert_eq!(report.signatures_verified, report.events, "{report}");
    assert_eq!(report.batched_events, batched as u64, "{report}");
    assert_eq!(report.batch_signatures_verified, 6, "{report}");
    h.shutdown().await;
}

// ---- A store failure in the middle of a batch ------------------------------------------------

/// How appends to the failing stream fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing is written.
    BeforeDurable,
    /// Written, but the caller is told it failed.
    AckLost,
}

/// The memory store, with appends to one stream failing while a failure is set.
#[derive(Debug, Default)]
struct StreamFailures {
    inner: MemoryStore,
    failing: std::sync::Mutex<Option<(String, Failure)>>,
}

impl StreamFailures {
    fn fail(&self, failing: Option<(String, Failure)>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = failing;
    }

    fn failure_of(&self, stream: &str) -> Option<Failure> {
        match &*self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((failing, failure)) if failing == stream => Some(*failure),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl EventStore for StreamFailures {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let failure = self.failure_of(stream);
        if failure == Some(Failure::BeforeDurable) {
            return Err(StoreError::Unavailable {
                reason: "injected: failed before durable".into(),
                maybe_written: false,
            });
        }
        let outcome = self.inner.append(stream, expected, events).await?;
        if failure == Some(Failure::AckLost) {
            return Err(StoreError::Unavailable {
                reason: "injected: acknowledgement lost".into(),
                maybe_written: true,
            });
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, max_count).await
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        self.inner.subscribe_all(after).await
    }
}

/// The events of `tokens` in the log, by token (pool events only).
async fn recorded_tokens(h: &Harness) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for event in pool_events(h).await {
        *seen.entry(event.token.as_str().to_owned()).or_insert(0) += 1;
    }
    seen
}

async fn a_store_failure_mid_batch(failure: Failure) {
    let clock = Arc::new(ManualClock::new(now()));
    let store = Arc::new(StreamFailures::default());
    let (h, shop) = with_pools(
        Harness::start_over(store.clone(), clock.clone(), false).await,
        &clock,
    )
    .await;
    let commands = vec![
        member("p0", reserve("a", 600_000), "t0"),
        member("p1", reserve("b", 600_000), "t1"),
        member("p2", reserve("c", 600_000), "t2"),
        member("p1", reserve("d", 600_000), "t3"),
        member("p0", Action::ConfirmReservation { reservation: 1 }, "t4"),
    ];
    let p1 = allot_domain::streams::pool_stream(&allot_domain::PoolId::new("p1"));
    store.fail(Some((p1, failure)));
    let answers = batch_answers(&shop.send_batch_at("b1", &commands, clock.now()).await);
    store.fail(None);
    let tokens = recorded_tokens(&h).await;
    for (command, answer) in commands.iter().zip(&answers) {
        let token = command.token.as_str();
        let times = tokens.get(token).copied().unwrap_or(0);
        // Each command is recorded once or not at all; an answered outcome was recorded.
        assert!(times <= 1, "{token} recorded {times} times");
        if answer.0 < 300 {
            assert_eq!(times, 1, "{token} answered {answer:?} but not recorded");
        }
        if command.pool.as_str() == "p1" {
            assert_eq!(answer.0, 503, "{token}: {answer:?}");
            assert_eq!(answer.2["code"], "recording-failure", "{answer:?}");
            let expected = usize::from(failure == Failure::AckLost);
            assert_eq!(times, expected, "{token} under {failure:?}");
        } else {
            assert!(
                answer.0 < 300,
                "{token} unaffected by p1's store: {answer:?}"
            );
        }
    }

    // The same batch again converges to what the commands get one by one on a healthy store.
    let again = batch_answers(&shop.send_batch_at("b1", &commands, clock.now()).await);
    let (single, single_shop) = service_with_pools(&clock).await;
    for (i, command) in commands.iter().enumerate() {
        let alone = single_answer(
            &single_shop
                .send_at(
                    command.pool.as_str(),
                    &command.action,
                    command.token.as_str(),
                    clock.now(),
                )
                .await,
        );
        let (status, _, body) = &again[i];
        assert_eq!(
            (status, body),
            (&alone.0, &alone.2),
            "command {i} after the retry"
        );
        // Recorded before the retry: replayed now.
        let recorded_before = tokens.contains_key(command.token.as_str());
        assert_eq!(again[i].1, recorded_before, "command {i}: {:?}", again[i]);
    }
    assert_eq!(comparable(&h), comparable(&single));
    assert_eq!(recorded_tokens(&h).await, recorded_tokens(&single).await);
    let report = audit_of(&h).await;
    assert!(report.is_clean(), "{report}");
    h.shutdown().await;
    single.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_before_durable_mid_batch_records_each_member_or_not_and_a_retry_converges()
{
    a_store_failure_mid_batch(Failure::BeforeDurable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_mid_batch_records_each_member_or_not_and_a_retry_converges() {
    a_store_failure_mid_batch(Failure::AckLost).await;
}

/// Writes a data directory whose pool events all come from signed batches, for measuring
/// `allot audit` on it: `ALLOT_BATCHED_LOG_DIR` (required), `ALLOT_BATCHED_EVENTS` (200,000)
/// commands in batches of `ALLOT_BATCH_SIZE` (500) over 50 pools, reserves then their confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a data directory for a measurement"]
async fn write_a_batched_log() {
    let Some(dir) = std::env::var_os("ALLOT_BATCHED_LOG_DIR") else {
        panic!("set ALLOT_BATCHED_LOG_DIR");
    };
    let setting = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let events = setting("ALLOT_BATCHED_EVENTS", 200_000);
    let size = setting("ALLOT_BATCH_SIZE", 500);
    let store = allot_server::store::embedded::EmbeddedStore::open(std::path::Path::new(&dir))
        .await
        .expect("open the data directory");
    let h = Harness::start_over(
        Arc::new(store),
        Arc::new(allot_server::clock::SystemClock),
        false,
    )
    .await;
    let shop = h.register("shop", Role::Client, 7).await;
    const POOLS: usize = 50;
    for pool in 0..POOLS {
        h.admin_raw
            .send(
                &format!("p{pool}"),
                &declare(10_000_000),
                &format!("d{pool}"),
            )
            .await
            .expect_ok(201);
    }
    let reservations = events / 2;
    let commands: Vec<BatchCommand> = (0..events)
        .map(|i| {
            let r = i % reservations;
            let pool = format!("p{}", r % POOLS);
            if i < reservations {
                member(
                    &pool,
                    reserve(&format!("fan{r}"), 3_600_000),
                    &format!("r{r}"),
                )
            } else {
                let seq = (r / POOLS + 1) as u64;
                member(
                    &pool,
                    Action::ConfirmReservation { reservation: seq },
                    &format!("c{r}"),
                )
            }
        })
        .collect();
    for (n, chunk) in commands.chunks(size).enumerate() {
        let answers = batch_answers(&shop.send_batch(&format!("b{n}"), chunk).await);
        assert!(answers.iter().all(|a| a.0 < 300), "batch {n}");
    }
    h.shutdown().await;
}

/// A batch asking for receipts is the same route: its body may be as large as any batch's, past
/// a single command's 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_asking_for_receipts_takes_a_batch_body() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    h.admin_raw
        .send("hall", &declare(10_000), "hall-declare")
        .await
        .expect_ok(201);
    let long = "r".repeat(120);
    let commands: Vec<BatchCommand> = (0..600)
        .map(|i| {
            member(
                "hall",
                reserve(&format!("{long}{i}"), 600_000),
                &format!("t{i}"),
            )
        })
        .collect();
    let mut body = Vec::new();
    allot_client::wire::write_batch_body(&commands, &mut body).expect("body");
    assert!(
        body.len() > allot_server::http::BODY_BYTES_MAX,
        "{}",
        body.len()
    );
    let answer = shop
        .send_batch_to(&format!("{BATCH_PATH}?receipts=true"), "b1", &commands)
        .await;
    answer.expect_ok(200);
    assert_eq!(answer.body["results"].as_array().map(Vec::len), Some(600));
    h.shutdown().await;
}

/// A member's token follows the rule of a single route's `Idempotency-Key` (visible ASCII), so
/// any member can be sent again alone; a member that breaks it is refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_token_that_no_header_could_carry_is_refused_alone() {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    h.admin_raw
        .send("hall", &declare(10), "hall-declare")
        .await
        .expect_ok(201);
    let commands = vec![
        member("hall", reserve("r1", 600_000), "line\nbreak"),
        member("hall", reserve("r2", 600_000), "t2"),
    ];
    let answer = shop.send_batch("b1", &commands).await;
    answer.expect_ok(200);
    let results = &answer.body["results"];
    assert_eq!(results[0]["status"], 400, "{}", answer.body);
    assert_eq!(results[0]["code"], "invalid-request");
    assert_eq!(results[1]["status"], 201);
    h.shutdown().await;
}

/// `null` where a single route's body refuses it (here `count`) makes the member unreadable,
/// named by its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_is_read_as_the_single_routes_read_it() {
    use allot_domain::IdempotencyToken;
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 7).await;
    let commands = vec![member("hall", reserve("r1", 600_000), "t1")];
    let signed_at = support::now();
    let attestation = allot_client::wire::sign_batch(
        &shop.key,
        &shop.id,
        &IdempotencyToken::new("b1"),
        &commands,
        signed_at,
    )
    .expect("members");
    let headers = vec![
        ("idempotency-key", "b1".to_owned()),
        ("allot-actor", shop.id.to_string()),
        ("allot-signed-at", signed_at.0.to_string()),
        ("allot-signature", hex::encode(&attestation.signature)),
    ];
    let body = json!({"commands": [{"action": "reserve", "token": "t1", "pool_id": "hall",
        "resource": "seat", "requester": "r1", "duration_ms": 600000, "count": null}]});
    let answer = shop.post_raw(BATCH_PATH, &headers, body.to_string()).await;
    answer.expect_problem(400, "invalid-request");
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("commands[0].count"), "{detail}");
    h.shutdown().await;
}

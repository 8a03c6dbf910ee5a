//! The command path over the in-memory store: per-pool serialization, batching, replays.

use std::sync::Arc;

use allot_domain::signing::params_digest;
use allot_domain::{
    Action, ActorId, Attestation, Command, IdempotencyToken, Outcome, PoolId, RejectionCode,
    Timestamp,
};
use allot_projections::Projections;
use allot_server::clock::ManualClock;
use allot_server::metrics::Metrics;
use allot_server::service::{Service, SubmitError};
use allot_server::store::memory::MemoryStore;

const T0: u64 = 1_767_225_600_000;

fn command(pool: &str, actor: &str, token: &str, action: Action) -> Command {
    Command {
        pool: PoolId::new(pool),
        actor: ActorId::new(actor),
        role: match actor {
            "admin" => allot_domain::Role::Admin,
            "sweeper" => allot_domain::Role::Sweeper,
            _ => allot_domain::Role::Client,
        },
        attestation: Attestation::default(),
        token: IdempotencyToken::new(token),
        digest: params_digest(&action),
        action,
        batch: None,
    }
}

async fn service(store: MemoryStore, clock: Arc<ManualClock>) -> Service {
    Service::open(
        Arc::new(store),
        clock,
        Arc::new(Projections::new()),
        Arc::new(Metrics::new()),
    )
    .await
    .expect("open")
}

fn declare(capacity: u64) -> Action {
    Action::DeclarePool {
        capacity,
        closes_at: None,
        units: vec![],
        idempotency_window_ms: 3_600_000,
    }
}

fn reserve(requester: &str) -> Action {
    Action::Reserve {
        resource: "seat".into(),
        requester: requester.into(),
        duration_ms: 600_000,
        count: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_reserves_on_one_seat_yield_exactly_one_hold() {
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let store = MemoryStore::new();
    let service = service(store.clone(), clock).await;
    service
        .submit(command("one-seat", "admin", "d1", declare(1)))
        .await
        .expect("declared");

    let mut tasks = Vec::new();
    for i in 0..500 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            service
                .submit(command(
                    "one-seat",
                    "checkout",
                    &format!("r{i}"),
                    reserve(&format!("student{i}")),
                ))
                .await
        }));
    }
    let mut held = 0;
    let mut full = 0;
    for task in tasks {
        match task.await.expect("task").expect("recorded").outcome {
            Outcome::Reserved { .. } => held += 1,
            Outcome::Rejected(r) if r.code() == RejectionCode::PoolCapacityExceeded => full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((held, full), (1, 499));
    let counts = service
        .projections()
        .counts
        .get(&PoolId::new("one-seat"))
        .expect("pool counted");
    assert_eq!(counts.allocated, 1);
    assert_eq!(store.len(), 501, "one event per command");
}

#[tokio::test]
async fn a_retry_replays_the_recorded_outcome_and_survives_a_restart() {
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let store = MemoryStore::new();
    let first = service(store.clone(), Arc::clone(&clock)).await;
    first
        .submit(command("vip", "admin", "d1", declare(2)))
        .await
        .expect("declared");
    let reserved = first
        .submit(command("vip", "checkout", "tok_a1", reserve("buyer_a")))
        .await
        .expect("reserved");
    assert!(!reserved.replayed);
    let retried = first
        .submit(command("vip", "checkout", "tok_a1", reserve("buyer_a")))
        .await
        .expect("replayed");
    assert!(retried.replayed);
    assert_eq!(retried.outcome, reserved.outcome);
    assert_eq!(store.len(), 2);

    // A fresh service over the same store answers the same token the same way.
    let second = service(store.clone(), Arc::clone(&clock)).await;
    let after_restart = second
        .submit(command("vip", "checkout", "tok_a1", reserve("buyer_a")))
        .await
        .expect("replayed after restart");
    assert!(after_restart.replayed);
    assert_eq!(after_restart.outcome, reserved.outcome);
    assert_eq!(
        first.projections().contents().binding,
        second.projections().contents().binding
    );

    // The same token with other parameters collides and records nothing.
    let collision = second
        .submit(command("vip", "checkout", "tok_a1", reserve("buyer_z")))
        .await;
    assert!(matches!(
        collision,
        Err(SubmitError::Rejected(r)) if r.code() == RejectionCode::TokenCollision
    ));
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn commands_for_an_unknown_pool_are_not_known_and_leave_no_trace() {
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let store = MemoryStore::new();
    let service = service(store.clone(), clock).await;
    for i in 0..3 {
        let result = service
            .submit(command("ghost", "checkout", &format!("t{i}"), reserve("x")))
            .await;
        assert!(matches!(
            result,
            Err(SubmitError::Rejected(r)) if r.code() == RejectionCode::NotKnown
        ));
    }
    assert!(store.is_empty());
    // The pool can still be declared afterwards.
    service
        .submit(command("ghost", "admin", "d1", declare(1)))
        .await
        .expect("declared");
    assert_eq!(store.len(), 1);
}

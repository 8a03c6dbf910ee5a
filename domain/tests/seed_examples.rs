//! The seed's walkthrough and its three other examples, outcome by outcome.

use allot_domain::{
    Action, ActorId, Attestation, Change, Command, Decision, Event, IdempotencyToken, Outcome,
    ParamsDigest, Pool, PoolId, Rejection, RejectionCode, ReservationId, ReservationState,
    Timestamp, decide, evolve,
};

const MINUTE: u64 = 60_000;
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A pool under test with the digest the edge would compute (here: a hash of the debug form is
/// enough, the domain only compares digests).
struct Venue {
    pool: Pool,
    log: Vec<Event>,
}

fn digest_of(action: &Action) -> ParamsDigest {
    let text = format!("{action:?}");
    let mut digest = [0u8; 32];
    for (i, byte) in text.bytes().enumerate() {
        digest[i % 32] = digest[i % 32].wrapping_mul(31).wrapping_add(byte);
    }
    ParamsDigest(digest)
}

impl Venue {
    fn new() -> Self {
        Venue {
            pool: Pool::default(),
            log: Vec::new(),
        }
    }

    fn command(actor: &str, token: &str, action: Action) -> Command {
        Command {
            pool: PoolId::new("pool_vip"),
            actor: ActorId::new(actor),
            role: match actor {
                "admin" => allot_domain::Role::Admin,
                "sweeper" => allot_domain::Role::Sweeper,
                _ => allot_domain::Role::Client,
            },
            attestation: Attestation::default(),
            token: IdempotencyToken::new(token),
            digest: digest_of(&action),
            action,
            batch: None,
        }
    }

    /// Runs one command at `minutes` after T0; appends what decide produced.
    fn run(&mut self, minutes: u64, actor: &str, token: &str, action: Action) -> Outcome {
        let command = Self::command(actor, token, action);
        match decide(&self.pool, &command, Timestamp(T0 + minutes * MINUTE)) {
            Ok(Decision::Append(event)) => {
                evolve(&mut self.pool, &event).expect("decided events apply");
                let outcome = event.outcome();
                self.log.push(event);
                outcome
            }
            Ok(Decision::Replay(outcome)) => outcome,
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn reserve(&mut self, minutes: u64, requester: &str, token: &str) -> Outcome {
        self.run(
            minutes,
            "checkout_svc",
            token,
            Action::Reserve {
                resource: "vip-tier".into(),
                requester: requester.into(),
                duration_ms: 10 * MINUTE,
                count: 1,
            },
        )
    }

    fn declare(&mut self, capacity: u64) {
        let outcome = self.run(
            0,
            "venue_admin",
            "declare-vip",
            Action::DeclarePool {
                capacity,
                closes_at: None,
                units: vec![],
                idempotency_window_ms: 5 * MINUTE,
            },
        );
        assert_eq!(
            outcome,
            Outcome::PoolDeclared {
                pool: PoolId::new("pool_vip")
            }
        );
    }

    fn allocated(&self) -> u64 {
        self.pool.allocated()
    }

    fn state(&self, seq: u64) -> ReservationState {
        self.pool.query(seq).expect("known reservation").state
    }
}

fn rsv(seq: u64) -> ReservationId {
    ReservationId {
        pool: PoolId::new("pool_vip"),
        seq,
    }
}

fn reserved_seq(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Reserved { reservation, .. } => reservation.seq,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn code(outcome: &Outcome) -> Option<RejectionCode> {
    match outcome {
        Outcome::Rejected(rejection) => Some(rejection.code()),
        _ => None,
    }
}

#[test]
fn walkthrough_two_seat_vip_pool_buyers_a_b_c() {
    let mut venue = Venue::new();
    venue.declare(2);

    // 1. Buyer A reserves: allocated 0 → 1.
    let a = venue.reserve(0, "buyer_a", "tok_a1");
    assert_eq!(
        a,
        Outcome::Reserved {
            reservation: rsv(1),
            expires_at: Timestamp(T0 + 10 * MINUTE)
        }
    );
    assert_eq!(venue.allocated(), 1);
    assert_eq!(
        venue
            .log
            .last()
            .map(|e| (e.allocated_before, e.allocated_after)),
        Some((0, 1))
    );

    // 2. Buyer B reserves: allocated 1 → 2; the pool is full.
    let b = venue.reserve(0, "buyer_b", "tok_b1");
    assert_eq!(reserved_seq(&b), 2);
    assert_eq!(venue.allocated(), 2);

    // 3. Buyer C: the capacity gate fires; no hold, allocated stays 2.
    let events_before = venue.log.len();
    let c = venue.reserve(0, "buyer_c", "tok_c1");
    assert_eq!(code(&c), Some(RejectionCode::PoolCapacityExceeded));
    assert_eq!(venue.allocated(), 2);
    assert_eq!(venue.pool.reservations_made(), 2, "no hold placed");
    // The rejection is journaled (cached against tok_c1) without touching the arithmetic.
    assert_eq!(venue.log.len(), events_before + 1);
    let rejected = venue.log.last().expect("journaled");
    assert!(matches!(
        rejected.change,
        Change::Rejected(Rejection::PoolCapacityExceeded { .. })
    ));
    assert_eq!(
        (rejected.allocated_before, rejected.allocated_after),
        (2, 2)
    );

    // 4. Buyer A's reserve is retried after a network drop: the same rsv_001, nothing appended.
    let events_before = venue.log.len();
    let retry = venue.reserve(1, "buyer_a", "tok_a1");
    assert_eq!(retry, a);
    assert_eq!(venue.log.len(), events_before, "a replay appends nothing");
    assert_eq!(venue.allocated(), 2);

    // 5. Buyer A confirms within the window: Confirmed keeps the slot.
    let confirm = venue.run(
        2,
        "checkout_svc",
        "tok_a2",
        Action::ConfirmReservation { reservation: 1 },
    );
    assert_eq!(
        confirm,
        Outcome::Confirmed {
            reservation: rsv(1)
        }
    );
    assert_eq!(venue.state(1), ReservationState::Confirmed);
    assert_eq!(venue.allocated(), 2);

    // 6. Ten minutes pass; the sweeper expires buyer B's hold: allocated 2 → 1.
    let expire = venue.run(
        10,
        "sweeper",
        "tok_sweep_b",
        Action::ExpireReservation { reservation: 2 },
    );
    assert_eq!(
        expire,
        Outcome::Expired {
            reservation: rsv(2)
        }
    );
    assert_eq!(venue.state(2), ReservationState::Expired);
    assert_eq!(venue.allocated(), 1);
    let expired = venue.log.last().expect("journaled");
    assert_eq!((expired.allocated_before, expired.allocated_after), (2, 1));
    assert_eq!(
        (expired.prior_state, expired.new_state),
        (
            Some(ReservationState::Held),
            Some(ReservationState::Expired)
        )
    );
    // The slot is returned exactly once: expiring again is not-held and changes nothing.
    let again = venue.run(
        11,
        "sweeper",
        "tok_sweep_b_again",
        Action::ExpireReservation { reservation: 2 },
    );
    assert_eq!(code(&again), Some(RejectionCode::NotHeld));
    assert_eq!(venue.allocated(), 1);

    // 7. Buyer C retries with a fresh token and gets the slot B let lapse: allocated 1 → 2.
    let c2 = venue.reserve(11, "buyer_c", "tok_c2");
    assert_eq!(reserved_seq(&c2), 3);
    assert_eq!(venue.state(3), ReservationState::Held);
    assert_eq!(venue.allocated(), 2);

    // Buyer C's first token still answers with its recorded rejection inside the window.
    let c_retry = venue.reserve(11, "buyer_c", "tok_c1");
    assert_eq!(code(&c_retry), Some(RejectionCode::PoolCapacityExceeded));

    // The log alone reproduces the pool exactly.
    let mut replayed = Pool::default();
    for event in &venue.log {
        evolve(&mut replayed, event).expect("replay");
    }
    assert_eq!(replayed, venue.pool);
}

#[test]
fn cancellation_returns_the_slot() {
    let mut venue = Venue::new();
    venue.declare(2);
    assert_eq!(reserved_seq(&venue.reserve(0, "buyer_a", "tok_a1")), 1);
    assert_eq!(reserved_seq(&venue.reserve(0, "buyer_b", "tok_b1")), 2);
    assert_eq!(venue.allocated(), 2);

    let cancel = venue.run(
        1,
        "checkout_svc",
        "tok_cancel_a",
        Action::CancelReservation { reservation: 1 },
    );
    assert_eq!(
        cancel,
        Outcome::Released {
            reservation: rsv(1)
        }
    );
    assert_eq!(venue.state(1), ReservationState::Released);
    let status = venue.pool.query(1).expect("known");
    assert!(!status.slot_held);
    assert_eq!(venue.allocated(), 1);
    let event = venue.log.last().expect("journaled");
    assert_eq!((event.allocated_before, event.allocated_after), (2, 1));

    // A retried cancel replays ok; a second cancel with a new token is not-held. Neither
    // releases again.
    let retried = venue.run(
        2,
        "checkout_svc",
        "tok_cancel_a",
        Action::CancelReservation { reservation: 1 },
    );
    assert_eq!(retried, cancel);
    let second = venue.run(
        2,
        "checkout_svc",
        "tok_cancel_a2",
        Action::CancelReservation { reservation: 1 },
    );
    assert_eq!(code(&second), Some(RejectionCode::NotHeld));
    assert_eq!(venue.allocated(), 1);

    // The returned slot can be taken again.
    assert_eq!(reserved_seq(&venue.reserve(3, "buyer_c", "tok_c1")), 3);
    assert_eq!(venue.allocated(), 2);
}

#[test]
fn partial_reserve_resource_unavailable_leaves_allocated_unchanged() {
    // A pool with named units: the capacity gate passes but the specific unit is taken.
    let mut venue = Venue::new();
    let declared = venue.run(
        0,
        "venue_admin",
        "declare-vip",
        Action::DeclarePool {
            capacity: 2,
            closes_at: None,
            units: vec!["vip-1".into(), "vip-2".into()],
            idempotency_window_ms: 5 * MINUTE,
        },
    );
    assert!(matches!(declared, Outcome::PoolDeclared { .. }));
    let reserve_unit = |venue: &mut Venue, requester: &str, token: &str| {
        venue.run(
            0,
            "checkout_svc",
            token,
            Action::Reserve {
                resource: "vip-1".into(),
                requester: requester.into(),
                duration_ms: 10 * MINUTE,
                count: 1,
            },
        )
    };
    assert_eq!(
        reserved_seq(&reserve_unit(&mut venue, "buyer_a", "tok_a1")),
        1
    );
    assert_eq!(venue.allocated(), 1);

    let taken = reserve_unit(&mut venue, "buyer_b", "tok_b1");
    assert_eq!(
        taken,
        Outcome::Rejected(Rejection::ResourceUnavailable {
            resource: "vip-1".into(),
            held_by: rsv(1)
        })
    );
    assert_eq!(
        venue.allocated(),
        1,
        "the slot the failed reserve would take is not leaked"
    );
    assert_eq!(venue.pool.reservations_made(), 1);
    let event = venue.log.last().expect("journaled");
    assert_eq!((event.allocated_before, event.allocated_after), (1, 1));
    // Cached: the retry answers the same rejection.
    assert_eq!(reserve_unit(&mut venue, "buyer_b", "tok_b1"), taken);
}

#[test]
fn confirming_a_lapsed_hold_is_window_elapsed() {
    let mut venue = Venue::new();
    venue.declare(2);
    venue.reserve(0, "buyer_a", "tok_a1");
    assert_eq!(reserved_seq(&venue.reserve(0, "buyer_b", "tok_b1")), 2);

    // The checkout stalls past the 10-minute window; the sweeper has not run yet.
    let late = venue.run(
        10,
        "checkout_svc",
        "tok_b2",
        Action::ConfirmReservation { reservation: 2 },
    );
    assert_eq!(
        late,
        Outcome::Rejected(Rejection::WindowElapsed {
            expires_at: Timestamp(T0 + 10 * MINUTE)
        })
    );
    assert_eq!(venue.state(2), ReservationState::Held, "not confirmed");
    assert_eq!(venue.allocated(), 2, "the slot is the sweeper's to return");

    // The sweeper returns it; the buyer must reserve afresh.
    let expired = venue.run(
        11,
        "sweeper",
        "tok_sweep_b",
        Action::ExpireReservation { reservation: 2 },
    );
    assert_eq!(
        expired,
        Outcome::Expired {
            reservation: rsv(2)
        }
    );
    assert_eq!(venue.allocated(), 1);
}

//! The packed form checkpoints store restores projections equal to the ones it was taken
//! from, and they go on folding the same way.

use allot_domain::{
    Action, ActorId, Attestation, Change, Event, IdempotencyToken, ParamsDigest, PoolId, Rejection,
    ReservationId, ReservationState, Timestamp,
};
use allot_projections::{ProjectionContents, Projections};

/// A pool's log, built event by event with the arithmetic the domain would record.
struct Log {
    pool: PoolId,
    allocated: u64,
    events: Vec<Event>,
    next_seq: u64,
}

impl Log {
    fn new(pool: &str) -> Log {
        let mut log = Log {
            pool: PoolId::new(pool),
            allocated: 0,
            events: Vec::new(),
            next_seq: 1,
        };
        log.push(
            Action::DeclarePool {
                capacity: 1_000_000,
                closes_at: None,
                units: vec![],
                idempotency_window_ms: 60_000,
            },
            Change::PoolDeclared,
            0,
            (None, None),
        );
        log
    }

    fn push(
        &mut self,
        action: Action,
        change: Change,
        delta: i64,
        states: (Option<ReservationState>, Option<ReservationState>),
    ) {
        let before = self.allocated;
        self.allocated = before.saturating_add_signed(delta);
        let at = Timestamp(1_000 + self.events.len() as u64);
        self.events.push(Event {
            pool: self.pool.clone(),
            at,
            actor: ActorId::new("client"),
            attestation: Attestation::default(),
            token: IdempotencyToken::new(format!("t{}", self.events.len())),
            digest: ParamsDigest::default(),
            action,
            allocated_before: before,
            allocated_after: self.allocated,
            prior_state: states.0,
            new_state: states.1,
            change,
            on_behalf_of: allot_domain::OnBehalfOf::Nobody,
            batch: None,
        });
    }

    fn reserve(&mut self, count: u32, duration_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = 1_000 + self.events.len() as u64;
        self.push(
            Action::Reserve {
                resource: format!("r{seq}"),
                requester: format!("q{seq}"),
                duration_ms,
                count,
            },
            Change::Reserved {
                reservation: seq,
                expires_at: Timestamp(at + duration_ms),
            },
            i64::from(count),
            (None, Some(ReservationState::Held)),
        );
        seq
    }

    fn end(&mut self, seq: u64, count: u32, terminal: ReservationState) {
        let (action, change, delta) = match terminal {
            ReservationState::Confirmed => (
                Action::ConfirmReservation { reservation: seq },
                Change::Confirmed { reservation: seq },
                0,
            ),
            ReservationState::Released => (
                Action::CancelReservation { reservation: seq },
                Change::Released { reservation: seq },
                -i64::from(count),
            ),
            _ => (
                Action::ExpireReservation { reservation: seq },
                Change::Expired {
                    reservation: seq,
                    lateness_ms: 0,
                },
                -i64::from(count),
            ),
        };
        self.push(
            action,
            change,
            delta,
            (Some(ReservationState::Held), Some(terminal)),
        );
    }
}

fn fold(projections: &Projections, logs: &[&Log], from: &[usize]) {
    for (log, from) in logs.iter().zip(from) {
        for (version, event) in log.events.iter().enumerate().skip(*from) {
            projections.apply(version as u64, 0, event);
        }
    }
}

fn comparable(projections: &Projections) -> ProjectionContents {
    let mut contents = projections.contents();
    contents.last_position = None;
    contents
}

#[test]
fn packed_projections_restore_equal_projections_that_fold_on_alike() {
    let mut hall = Log::new("hall");
    let a = hall.reserve(1, 60_000);
    let b = hall.reserve(3, 60_000);
    let c = hall.reserve(2, 5_000);
    // A count too large for a packed word is kept aside, and still found.
    let d = hall.reserve(20_000, 60_000);
    let e = hall.reserve(1, 60_000);
    hall.end(a, 1, ReservationState::Confirmed);
    hall.end(b, 3, ReservationState::Released);
    hall.end(c, 2, ReservationState::Expired);
    hall.push(
        Action::ConfirmReservation { reservation: 99 },
        Change::Rejected(Rejection::NotKnown {
            what: "reservation".to_owned(),
            id: "hall:99".to_owned(),
        }),
        0,
        (None, None),
    );
    let mut side = Log::new("side");
    let f = side.reserve(1, 60_000);

    let live = Projections::new();
    fold(&live, &[&hall, &side], &[0, 0]);
    let packed = live.packed();
    assert_eq!(packed.binding.len(), 6);
    let restored = Projections::from_packed(&packed);
    assert_eq!(comparable(&restored), comparable(&live));
    assert_eq!(restored.binding.len(), 6);
    assert_eq!(restored.expiry.len(), 3);
    let wide = ReservationId {
        pool: PoolId::new("hall"),
        seq: d,
    };
    let entry = restored.binding.get(&wide).expect("kept aside");
    assert_eq!((entry.count, entry.reserved_version), (20_000, 4));
    assert_eq!(restored.expiry.due(Timestamp(u64::MAX), 10).len(), 3);

    // Both go on with the same tail.
    let (hall_done, side_done) = (hall.events.len(), side.events.len());
    hall.end(d, 20_000, ReservationState::Released);
    hall.end(e, 1, ReservationState::Confirmed);
    side.end(f, 1, ReservationState::Expired);
    let g = side.reserve(2, 60_000);
    for projections in [&live, &restored] {
        fold(projections, &[&hall, &side], &[hall_done, side_done]);
    }
    assert_eq!(comparable(&restored), comparable(&live));
    let entry = restored
        .binding
        .get(&ReservationId {
            pool: PoolId::new("side"),
            seq: g,
        })
        .expect("reserved after packing");
    assert_eq!(
        (entry.state, entry.count, entry.reserved_version),
        (ReservationState::Held, 2, 3)
    );
    assert_eq!(restored.expiry.len(), 1);
}

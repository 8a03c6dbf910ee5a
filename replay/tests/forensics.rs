//! Forensics over the walkthrough: ownership as of an instant, stranded slots, the dispute view
//! and the contention window at the add/drop cutoff.

mod common;

use allot_domain::{PoolId, RejectionCode, ReservationState};
use allot_replay::{
    ForensicsError, Recorded, Verdict, as_of, contention_window, disputed_double_booking,
    stranded_slots,
};
use common::{History, MINUTE, SECOND, at, walkthrough};

fn pool<'a>(view: &'a allot_replay::AsOf, id: &str) -> &'a allot_replay::PoolAsOf {
    view.pools
        .iter()
        .find(|p| p.pool.as_str() == id)
        .expect("pool in view")
}

#[test]
fn as_of_shows_a_hold_before_its_confirm_and_a_confirmed_reservation_after() {
    let history = walkthrough();
    let before = as_of(&history.records, at(4 * MINUTE - 1));
    let vip = pool(&before, "pool_vip");
    assert_eq!(vip.allocated, 2);
    assert_eq!(vip.live.len(), 2);
    assert_eq!(vip.live[0].requester, "buyer_a");
    assert_eq!(vip.live[0].state, ReservationState::Held);

    let after = as_of(&history.records, at(4 * MINUTE));
    let vip = pool(&after, "pool_vip");
    assert_eq!(vip.live[0].state, ReservationState::Confirmed);
    assert_eq!(vip.live[1].requester, "buyer_b");
    assert_eq!(vip.live[1].state, ReservationState::Held);
}

#[test]
fn as_of_shows_a_lapsed_hold_until_the_sweeper_expires_it() {
    let history = walkthrough();
    // B's window closed at 12 min; the sweeper expired it at 12 min 2 s.
    let lapsed = as_of(&history.records, at(12 * MINUTE + SECOND));
    let vip = pool(&lapsed, "pool_vip");
    let b = vip
        .live
        .iter()
        .find(|l| l.requester == "buyer_b")
        .expect("B still holds");
    assert!(b.window_elapsed);
    assert_eq!(vip.allocated, 2);

    let expired = as_of(&history.records, at(12 * MINUTE + 2 * SECOND));
    let vip = pool(&expired, "pool_vip");
    assert!(vip.live.iter().all(|l| l.requester != "buyer_b"));
    assert_eq!(vip.allocated, 1);

    // Seats: who holds which seat after the drop.
    let seats = pool(&expired, "course_cs101");
    let owners: Vec<(&str, &str)> = seats
        .live
        .iter()
        .map(|l| (l.resource.as_str(), l.requester.as_str()))
        .collect();
    assert_eq!(owners, vec![("seat-1", "student_1")]);
    assert_eq!(seats.closes_at, Some(at(30 * MINUTE)));
}

#[test]
fn stranded_slots_name_the_reservation_whose_release_returned_nothing() {
    let history = walkthrough();
    assert!(stranded_slots(&history.records).is_empty());

    let mut history = History::new();
    history.declare(0, "p", 2, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.reserve(2 * SECOND, "p", "b", "r", "t2");
    history.expire(SECOND + 10 * MINUTE, "p", 1, "sweep-1");
    let index = history.index_of("p", 3);
    let expiry = history.pool_event_mut(index);
    expiry.event.allocated_after = expiry.event.allocated_before;
    let position = expiry.position;
    let stranded = stranded_slots(&history.records);
    assert_eq!(stranded.len(), 1);
    assert_eq!(stranded[0].reservation.to_string(), "p:1");
    assert_eq!(stranded[0].position, position);
    assert!(stranded[0].detail.contains("expired"), "{:?}", stranded[0]);
}

#[test]
fn a_double_booking_after_a_capacity_raise_is_an_overbooking_choice() {
    let history = walkthrough();
    let view = disputed_double_booking(&history.records, &PoolId::new("pool_ga"));
    assert_eq!(view.declared_capacity, Some(1));
    assert_eq!(view.capacity_history.len(), 2);
    assert_eq!(view.confirmations.len(), 2);
    assert_eq!(view.moments.len(), 1);
    match &view.moments[0].verdict {
        Verdict::CapacityRaised {
            actor, capacity, ..
        } => {
            assert_eq!(actor.as_str(), "admin");
            assert_eq!(*capacity, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(view.explained_by_capacity_raises());
    let json = serde_json::to_string(&view).expect("serializes");
    assert!(json.contains("capacity-raised"), "{json}");

    let vip = disputed_double_booking(&history.records, &PoolId::new("pool_vip"));
    assert!(vip.moments.is_empty());
    assert_eq!(vip.confirmations.len(), 1);
}

#[test]
fn a_double_booking_without_a_raise_is_a_coherence_violation() {
    let mut history = History::new();
    history.declare(0, "p", 1, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.confirm(2 * SECOND, "p", 1, "t2");
    history.reserve(3 * SECOND, "p", "b", "r", "t3"); // refused: capacity
    // Tamper the refusal into a second hold, then confirm it: two confirmed on a 1-pool.
    let refused = history.index_of("p", 3);
    let mut forged = history.pool_event_mut(refused).clone();
    forged.event.change = allot_domain::Change::Reserved {
        reservation: 2,
        expires_at: at(3 * SECOND + 10 * MINUTE),
    };
    forged.event.allocated_after = 2;
    forged.event.new_state = Some(ReservationState::Held);
    *history.pool_event_mut(refused) = forged.clone();
    let mut confirm = forged.clone();
    confirm.version += 1;
    confirm.position += 1;
    confirm.event.action = allot_domain::Action::ConfirmReservation { reservation: 2 };
    confirm.event.change = allot_domain::Change::Confirmed { reservation: 2 };
    confirm.event.allocated_before = 2;
    history.records.push(Recorded::Pool(confirm));
    let view = disputed_double_booking(&history.records, &PoolId::new("p"));
    assert!(!view.explained_by_capacity_raises());
    assert!(
        view.moments
            .iter()
            .all(|m| matches!(m.verdict, Verdict::CoherenceViolated { .. }))
    );
    assert!(!view.moments.is_empty());
}

#[test]
fn the_contention_window_counts_attempts_around_the_cutoff() {
    let history = walkthrough();
    let cutoff = at(30 * MINUTE);
    let window = contention_window(&history.records, &PoolId::new("course_cs101"), cutoff, 2)
        .expect("window");
    assert_eq!(window.closes_at, Some(cutoff));
    assert_eq!(window.seconds.len(), 4);
    let offsets: Vec<i64> = window.seconds.iter().map(|s| s.offset_seconds).collect();
    assert_eq!(offsets, vec![-2, -1, 0, 1]);
    // 29:59: one success and one seat already taken.
    let last_second = &window.seconds[1];
    assert_eq!((last_second.attempts, last_second.successes), (2, 1));
    assert_eq!(
        last_second
            .rejections
            .get(&RejectionCode::ResourceUnavailable),
        Some(&1)
    );
    // 30:00: two refused as closed; 30:01: one more.
    assert_eq!(window.seconds[2].attempts, 2);
    assert_eq!(
        window.seconds[2].rejections.get(&RejectionCode::PoolClosed),
        Some(&2)
    );
    assert_eq!(
        window.seconds[3].rejections.get(&RejectionCode::PoolClosed),
        Some(&1)
    );
    assert_eq!((window.attempts, window.successes), (5, 1));
    assert_eq!(window.rejections.values().sum::<u64>(), 4);

    assert_eq!(
        contention_window(&history.records, &PoolId::new("course_cs101"), cutoff, 0),
        Err(ForensicsError::WindowEmpty)
    );
    assert!(matches!(
        contention_window(
            &history.records,
            &PoolId::new("course_cs101"),
            cutoff,
            1_000_000
        ),
        Err(ForensicsError::WindowTooWide { .. })
    ));
}

#[test]
fn two_students_holding_one_seat_is_a_coherence_violation() {
    let mut history = History::new();
    history.declare(0, "seats", 2, None, &["s1", "s2"]);
    history.reserve(SECOND, "seats", "student_a", "s1", "a");
    history.reserve(2 * SECOND, "seats", "student_b", "s2", "b");
    history.confirm(3 * SECOND, "seats", 1, "ac");
    history.confirm(4 * SECOND, "seats", 2, "bc");
    assert!(
        disputed_double_booking(&history.records, &PoolId::new("seats"))
            .moments
            .is_empty()
    );

    // The record says student_b took s1 too.
    let index = history.index_of("seats", 2);
    let forged = history.pool_event_mut(index);
    if let allot_domain::Action::Reserve { resource, .. } = &mut forged.event.action {
        *resource = "s1".to_owned();
    }
    let position = forged.position;
    let view = disputed_double_booking(&history.records, &PoolId::new("seats"));
    assert_eq!(view.moments.len(), 1, "{view:?}");
    assert_eq!(view.moments[0].position, position);
    match &view.moments[0].verdict {
        Verdict::CoherenceViolated { detail } => assert!(detail.contains("unit s1"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

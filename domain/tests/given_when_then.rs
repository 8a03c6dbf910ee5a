//! Given / when / then over `decide` and `evolve`: every rejection code of every action, the
//! token cache, the clock, `query_reservation` and reservation ids.
//!
//! A scenario is a `History`: `given` applies commands through decide + evolve at stated times
//! (milliseconds after `T0`), `when` runs one more command, and `Then` says what must have
//! happened — an appended change, a cached rejection (appended as `Rejected`, arithmetic
//! unchanged), an uncached refusal (nothing appended, pool unchanged) or a replay. Every `then`
//! also replays the whole log into a fresh pool and compares it with the live one.

use allot_domain::command::{
    CAPACITY_MAX, COUNT_MAX, HOLD_DURATION_MS_MAX, HOLD_DURATION_MS_MIN, IDEMPOTENCY_WINDOW_MS_MAX,
    IDEMPOTENCY_WINDOW_MS_MIN, POOL_ID_BYTES_MAX, TIMESTAMP_MS_MAX, TOKEN_BYTES_MAX,
};
use allot_domain::signing::params_bytes;
use allot_domain::{
    Action, ActorId, Attestation, Change, Command, Decision, Event, IdempotencyToken, OnBehalfOf,
    Outcome, ParamsDigest, Pool, PoolId, PoolStatus, Rejection, RejectionCode, ReservationId,
    ReservationState, Role, Timestamp, decide, evolve,
};

const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
/// The idempotency window of every pool declared here.
const WINDOW: u64 = 5 * MINUTE;
/// The hold duration of every reserve unless stated.
const HOLD: u64 = 10 * MINUTE;
const POOL: &str = "pool_vip";

fn at(offset_ms: u64) -> Timestamp {
    Timestamp(T0 + offset_ms)
}

/// The digest the edge would compute; the domain only compares digests, so any injective-enough
/// function of the whole action (reservation included) will do here.
fn digest_of(action: &Action) -> ParamsDigest {
    let text = format!("{action:?}");
    let mut digest = [0u8; 32];
    for (i, byte) in text.bytes().enumerate() {
        digest[i % 32] = digest[i % 32].wrapping_mul(31).wrapping_add(byte);
    }
    digest[31] ^= text.len() as u8;
    ParamsDigest(digest)
}

/// A command before the scenario gives it a token (unless it names one).
#[derive(Debug, Clone)]
struct Cmd {
    pool: String,
    actor: String,
    token: Option<String>,
    action: Action,
}

impl Cmd {
    fn new(action: Action) -> Cmd {
        Cmd {
            pool: POOL.to_owned(),
            actor: "checkout_svc".to_owned(),
            token: None,
            action,
        }
    }
    fn by(mut self, actor: &str) -> Cmd {
        self.actor = actor.to_owned();
        self
    }
    fn token(mut self, token: &str) -> Cmd {
        self.token = Some(token.to_owned());
        self
    }
    fn on(mut self, pool: &str) -> Cmd {
        self.pool = pool.to_owned();
        self
    }
}

fn declare_with(capacity: u64, closes_at: Option<Timestamp>, units: &[&str], window: u64) -> Cmd {
    Cmd::new(Action::DeclarePool {
        capacity,
        closes_at,
        units: units.iter().map(|unit| (*unit).to_owned()).collect(),
        idempotency_window_ms: window,
    })
    .by("venue_admin")
}
fn declare(capacity: u64) -> Cmd {
    declare_with(capacity, None, &[], WINDOW)
}
fn declare_units(units: &[&str]) -> Cmd {
    declare_with(units.len() as u64, None, units, WINDOW)
}
fn declare_closing(capacity: u64, closes_at_ms: u64) -> Cmd {
    declare_with(capacity, Some(at(closes_at_ms)), &[], WINDOW)
}
fn adjust(capacity: u64) -> Cmd {
    Cmd::new(Action::AdjustCapacity { capacity }).by("venue_admin")
}
fn close() -> Cmd {
    Cmd::new(Action::ClosePool).by("venue_admin")
}
fn reserve_full(resource: &str, requester: &str, duration_ms: u64, count: u32) -> Cmd {
    Cmd::new(Action::Reserve {
        resource: resource.to_owned(),
        requester: requester.to_owned(),
        duration_ms,
        count,
    })
}
fn reserve(resource: &str) -> Cmd {
    reserve_full(resource, "buyer_a", HOLD, 1)
}
fn reserve_n(count: u32) -> Cmd {
    reserve_full("vip-tier", "buyer_a", HOLD, count)
}
fn confirm(seq: u64) -> Cmd {
    Cmd::new(Action::ConfirmReservation { reservation: seq })
}
fn cancel(seq: u64) -> Cmd {
    Cmd::new(Action::CancelReservation { reservation: seq })
}
fn expire(seq: u64) -> Cmd {
    Cmd::new(Action::ExpireReservation { reservation: seq }).by("sweeper")
}

fn rsv(seq: u64) -> ReservationId {
    ReservationId {
        pool: PoolId::new(POOL),
        seq,
    }
}

/// A pool's stream: the live pool and everything appended to it.
struct History {
    pool: Pool,
    log: Vec<Event>,
    tokens_issued: u32,
}

fn given(steps: impl IntoIterator<Item = (u64, Cmd)>) -> History {
    let mut history = History {
        pool: Pool::default(),
        log: Vec::new(),
        tokens_issued: 0,
    };
    for (offset_ms, cmd) in steps {
        let description = format!("{cmd:?}");
        let command = history.command(cmd);
        match decide(&history.pool, &command, at(offset_ms)) {
            Ok(Decision::Append(event)) => {
                assert!(
                    event.rejection().is_none(),
                    "given step {description} was rejected: {:?}",
                    event.change
                );
                evolve(&mut history.pool, &event).expect("a decided event applies");
                history.log.push(event);
            }
            other => panic!("given step {description} did not append: {other:?}"),
        }
    }
    history
}

impl History {
    fn command(&mut self, cmd: Cmd) -> Command {
        let token = cmd.token.unwrap_or_else(|| {
            self.tokens_issued += 1;
            format!("tok-{}", self.tokens_issued)
        });
        // The actors of these scenarios hold the roles their names say.
        let role = match cmd.actor.as_str() {
            "admin" | "registrar" => Role::Admin,
            "sweeper" => Role::Sweeper,
            _ => Role::Client,
        };
        Command {
            pool: PoolId::new(cmd.pool),
            actor: ActorId::new(cmd.actor),
            role,
            attestation: Attestation::default(),
            token: IdempotencyToken::new(token),
            digest: digest_of(&cmd.action),
            action: cmd.action,
            batch: None,
        }
    }

    fn when(&mut self, offset_ms: u64, cmd: Cmd) -> Then<'_> {
        let command = self.command(cmd);
        let before = self.pool.clone();
        let log_len = self.log.len();
        let result = decide(&self.pool, &command, at(offset_ms));
        if let Ok(Decision::Append(event)) = &result {
            evolve(&mut self.pool, event).expect("a decided event applies");
            self.log.push(event.clone());
        }
        Then {
            history: self,
            before,
            log_len,
            result,
        }
    }

    fn state(&self, seq: u64) -> ReservationState {
        self.pool.query(seq).expect("known reservation").state
    }
}

/// What `when` did, to be asserted.
struct Then<'a> {
    history: &'a mut History,
    before: Pool,
    log_len: usize,
    result: Result<Decision, Rejection>,
}

impl Then<'_> {
    fn replay_agrees(&self) {
        let mut fresh = Pool::default();
        for event in &self.history.log {
            evolve(&mut fresh, event).expect("the log replays");
        }
        assert_eq!(
            fresh, self.history.pool,
            "replayed pool differs from the live pool"
        );
    }

    fn appended(&self) -> Event {
        match &self.result {
            Ok(Decision::Append(event)) => {
                assert_eq!(self.history.log.len(), self.log_len + 1);
                event.clone()
            }
            other => panic!("expected an appended event, got {other:?}"),
        }
    }

    /// A success: returns the event, whose change is not a rejection.
    fn then_event(self) -> Event {
        self.replay_agrees();
        let event = self.appended();
        assert!(event.rejection().is_none(), "rejected: {:?}", event.change);
        assert_eq!(
            self.history.pool.events_applied(),
            self.before.events_applied() + 1
        );
        event
    }

    fn then_change(self, expected: Change) -> Event {
        let event = self.then_event();
        assert_eq!(event.change, expected);
        event
    }

    /// A cached rejection: appended as `Rejected`, nothing but the token cache moved.
    fn then_rejected(self, code: RejectionCode) -> Rejection {
        self.replay_agrees();
        let event = self.appended();
        let rejection = event
            .rejection()
            .unwrap_or_else(|| panic!("expected {code}, got {:?}", event.change))
            .clone();
        assert_eq!(rejection.code(), code, "{rejection}");
        assert_eq!(event.allocated_before, event.allocated_after);
        assert_eq!(event.prior_state, event.new_state);
        let (before, after) = (&self.before, &self.history.pool);
        assert_eq!(after.allocated(), before.allocated());
        assert_eq!(after.capacity(), before.capacity());
        assert_eq!(after.status(), before.status());
        assert_eq!(after.reservations_made(), before.reservations_made());
        assert_eq!(after.live_count(), before.live_count());
        let live = |pool: &Pool| {
            let mut live: Vec<_> = pool.live().map(|(seq, hold)| (seq, hold.clone())).collect();
            live.sort_by_key(|(seq, _)| *seq);
            live
        };
        assert_eq!(live(after), live(before));
        assert_eq!(event.outcome(), Outcome::Rejected(rejection.clone()));
        let record = after.tokens().get(&event.actor, &event.token);
        assert_eq!(record.map(|record| record.outcome), Some(event.outcome()));
        rejection
    }

    /// An uncached refusal: `decide` answered `Err`, nothing appended, the pool untouched.
    fn then_refused(self, code: RejectionCode) -> Rejection {
        self.replay_agrees();
        assert_eq!(
            self.history.log.len(),
            self.log_len,
            "something was appended"
        );
        assert_eq!(self.history.pool, self.before, "the pool changed");
        match self.result {
            Err(rejection) => {
                assert_eq!(rejection.code(), code, "{rejection}");
                rejection
            }
            other => panic!("expected an uncached {code}, got {other:?}"),
        }
    }

    fn then_invalid(self, field: &str) {
        match self.then_refused(RejectionCode::InvalidRequest) {
            Rejection::InvalidRequest { field: got, .. } => assert_eq!(got, field),
            other => panic!("expected invalid-request, got {other:?}"),
        }
    }

    /// A retry: the recorded outcome again, nothing appended.
    fn then_replays(self, expected: &Outcome) {
        self.replay_agrees();
        assert_eq!(self.history.log.len(), self.log_len, "a retry appended");
        assert_eq!(self.history.pool, self.before, "a retry changed the pool");
        match &self.result {
            Ok(Decision::Replay(outcome)) => assert_eq!(outcome, expected),
            other => panic!("expected a replay of {expected:?}, got {other:?}"),
        }
    }
}

fn reserved_seq(event: &Event) -> u64 {
    match event.change {
        Change::Reserved { reservation, .. } => reservation,
        ref other => panic!("not a reservation: {other:?}"),
    }
}

mod declare_pool {
    use super::*;

    #[test]
    fn a_new_pool_is_declared_with_its_capacity_cutoff_units_and_window() {
        let mut history = given([]);
        let event = history
            .when(0, declare_with(2, Some(at(HOLD)), &["A1", "A2"], WINDOW))
            .then_change(Change::PoolDeclared);
        assert_eq!(event.at, at(0));
        assert_eq!((event.allocated_before, event.allocated_after), (0, 0));
        assert_eq!((event.prior_state, event.new_state), (None, None));
        assert_eq!(
            event.outcome(),
            Outcome::PoolDeclared {
                pool: PoolId::new(POOL)
            }
        );
        let pool = &history.pool;
        assert_eq!(pool.id(), Some(&PoolId::new(POOL)));
        assert_eq!(pool.capacity(), 2);
        assert_eq!(pool.allocated(), 0);
        assert_eq!(pool.status(), PoolStatus::Open);
        assert_eq!(pool.closes_at(), Some(at(HOLD)));
        assert_eq!(pool.idempotency_window_ms(), WINDOW);
        assert_eq!(pool.units().len(), 2);
    }

    #[test]
    fn declaring_a_declared_pool_again_is_rejected_pool_already_declared_and_cached() {
        let mut history = given([(0, declare(2))]);
        let rejection = history
            .when(SECOND, declare(5).token("again"))
            .then_rejected(RejectionCode::PoolAlreadyDeclared);
        assert_eq!(
            rejection,
            Rejection::PoolAlreadyDeclared {
                pool: POOL.to_owned()
            }
        );
        assert_eq!(history.pool.capacity(), 2);
        history
            .when(2 * SECOND, declare(5).token("again"))
            .then_replays(&Outcome::Rejected(rejection));
    }

    #[test]
    fn a_pool_id_with_characters_outside_the_alphabet_is_an_invalid_request() {
        for pool in ["pool vip", "pool:vip", "pool/vip", "pööl", ""] {
            given([])
                .when(0, declare(1).on(pool))
                .then_invalid("pool_id");
        }
    }

    #[test]
    fn a_pool_id_longer_than_64_bytes_is_an_invalid_request_and_64_is_fine() {
        let longest = "p".repeat(POOL_ID_BYTES_MAX);
        given([]).when(0, declare(1).on(&longest)).then_event();
        let too_long = "p".repeat(POOL_ID_BYTES_MAX + 1);
        given([])
            .when(0, declare(1).on(&too_long))
            .then_invalid("pool_id");
    }

    #[test]
    fn an_empty_or_too_long_token_is_an_invalid_request_and_255_bytes_is_fine() {
        given([])
            .when(0, declare(1).token(""))
            .then_invalid("idempotency_token");
        let too_long = "t".repeat(TOKEN_BYTES_MAX + 1);
        given([])
            .when(0, declare(1).token(&too_long))
            .then_invalid("idempotency_token");
        let longest = "t".repeat(TOKEN_BYTES_MAX);
        given([]).when(0, declare(1).token(&longest)).then_event();
    }

    #[test]
    fn an_actor_of_only_whitespace_is_an_invalid_request() {
        for actor in ["", " ", "\t \n"] {
            given([])
                .when(0, declare(1).by(actor))
                .then_invalid("actor");
        }
    }

    #[test]
    fn a_capacity_above_capacity_max_is_an_invalid_request_and_the_max_is_fine() {
        given([])
            .when(0, declare(CAPACITY_MAX + 1))
            .then_invalid("capacity");
        given([])
            .when(0, declare(u64::MAX))
            .then_invalid("capacity");
        given([]).when(0, declare(CAPACITY_MAX)).then_event();
    }

    #[test]
    fn an_absurd_closes_at_is_an_invalid_request() {
        let absurd = Some(Timestamp(TIMESTAMP_MS_MAX + 1));
        given([])
            .when(0, declare_with(1, absurd, &[], WINDOW))
            .then_invalid("closes_at");
        let latest = Some(Timestamp(TIMESTAMP_MS_MAX));
        given([])
            .when(0, declare_with(1, latest, &[], WINDOW))
            .then_event();
    }

    #[test]
    fn an_idempotency_window_out_of_range_is_an_invalid_request() {
        for window in [
            0,
            IDEMPOTENCY_WINDOW_MS_MIN - 1,
            IDEMPOTENCY_WINDOW_MS_MAX + 1,
        ] {
            given([])
                .when(0, declare_with(1, None, &[], window))
                .then_invalid("idempotency_window_ms");
        }
        for window in [IDEMPOTENCY_WINDOW_MS_MIN, IDEMPOTENCY_WINDOW_MS_MAX] {
            given([])
                .when(0, declare_with(1, None, &[], window))
                .then_event();
        }
    }

    #[test]
    fn duplicate_or_blank_units_are_an_invalid_request() {
        given([])
            .when(0, declare_with(2, None, &["A1", "A1"], WINDOW))
            .then_invalid("units");
        given([])
            .when(0, declare_with(2, None, &["A1", " "], WINDOW))
            .then_invalid("units");
    }

    #[test]
    fn an_invalid_request_on_a_declared_pool_is_not_cached_so_its_token_stays_free() {
        let mut history = given([(0, declare(2))]);
        history
            .when(SECOND, adjust(CAPACITY_MAX + 1).token("t"))
            .then_invalid("capacity");
        history
            .when(2 * SECOND, adjust(3).token("t"))
            .then_change(Change::CapacityAdjusted { capacity_before: 2 });
    }

    #[test]
    fn a_command_routed_to_another_pools_stream_is_an_invalid_request() {
        // The scenario's stream is pool_vip; a command naming pool_b must not be folded into it.
        let mut history = given([(0, declare(2))]);
        history
            .when(SECOND, reserve("x").on("pool_b"))
            .then_invalid("pool_id");
    }
}

mod adjust_capacity {
    use super::*;

    #[test]
    fn capacity_can_be_raised_and_lowered_down_to_what_is_allocated() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("x"))]);
        history
            .when(2 * SECOND, adjust(5))
            .then_change(Change::CapacityAdjusted { capacity_before: 2 });
        let event = history
            .when(3 * SECOND, adjust(1))
            .then_change(Change::CapacityAdjusted { capacity_before: 5 });
        assert_eq!(event.outcome(), Outcome::CapacityAdjusted { capacity: 1 });
        assert_eq!(history.pool.capacity(), 1);
    }

    #[test]
    fn lowering_capacity_below_allocated_is_rejected_capacity_below_allocated() {
        let mut history = given([(0, declare(3)), (SECOND, reserve_n(2))]);
        let rejection = history
            .when(2 * SECOND, adjust(1))
            .then_rejected(RejectionCode::CapacityBelowAllocated);
        assert_eq!(
            rejection,
            Rejection::CapacityBelowAllocated {
                capacity: 1,
                allocated: 2
            }
        );
        assert_eq!(history.pool.capacity(), 3);
    }

    #[test]
    fn a_capacity_above_capacity_max_is_an_invalid_request() {
        let mut history = given([(0, declare(3))]);
        history
            .when(SECOND, adjust(CAPACITY_MAX + 1))
            .then_invalid("capacity");
    }

    #[test]
    fn adjusting_an_undeclared_pool_is_not_known_and_not_cached() {
        given([])
            .when(0, adjust(3))
            .then_refused(RejectionCode::NotKnown);
    }
}

mod close_pool {
    use super::*;

    #[test]
    fn closing_an_open_pool_closes_it() {
        let mut history = given([(0, declare(2))]);
        let event = history
            .when(SECOND, close())
            .then_change(Change::PoolClosed);
        assert_eq!(
            event.outcome(),
            Outcome::PoolClosed {
                pool: PoolId::new(POOL)
            }
        );
        assert_eq!(history.pool.status(), PoolStatus::Closed);
    }

    #[test]
    fn closing_a_closed_pool_is_rejected_pool_closed() {
        let mut history = given([(0, declare(2)), (SECOND, close())]);
        history
            .when(2 * SECOND, close())
            .then_rejected(RejectionCode::PoolClosed);
    }

    #[test]
    fn closing_an_undeclared_pool_is_not_known_and_not_cached() {
        given([])
            .when(0, close())
            .then_refused(RejectionCode::NotKnown);
    }

    #[test]
    fn a_closed_pool_still_returns_slots_on_cancel_and_expire_and_still_confirms() {
        let mut history = given([
            (0, declare(3)),
            (SECOND, reserve("x")),
            (SECOND, reserve("y")),
            (SECOND, reserve("z")),
            (2 * SECOND, close()),
        ]);
        history.when(3 * SECOND, cancel(1)).then_event();
        history.when(4 * SECOND, confirm(2)).then_event();
        history.when(SECOND + HOLD, expire(3)).then_event();
        assert_eq!(history.pool.allocated(), 1);
    }
}

mod reserve {
    use super::*;

    #[test]
    fn a_reserve_takes_its_units_and_opens_a_hold_until_now_plus_duration() {
        let mut history = given([(0, declare(5))]);
        let event = history
            .when(SECOND, reserve_n(3))
            .then_change(Change::Reserved {
                reservation: 1,
                expires_at: at(SECOND + HOLD),
            });
        assert_eq!((event.allocated_before, event.allocated_after), (0, 3));
        assert_eq!(
            (event.prior_state, event.new_state),
            (None, Some(ReservationState::Held))
        );
        assert_eq!(
            event.outcome(),
            Outcome::Reserved {
                reservation: rsv(1),
                expires_at: at(SECOND + HOLD)
            }
        );
        let second = history.when(2 * SECOND, reserve("x")).then_event();
        assert_eq!(reserved_seq(&second), 2);
        assert_eq!(history.pool.allocated(), 4);
    }

    #[test]
    fn a_blank_or_too_long_resource_or_requester_is_an_invalid_request() {
        let mut history = given([(0, declare(5))]);
        history
            .when(SECOND, reserve_full(" ", "b", HOLD, 1))
            .then_invalid("resource");
        let long = "r".repeat(129);
        history
            .when(SECOND, reserve_full(&long, "b", HOLD, 1))
            .then_invalid("resource");
        history
            .when(SECOND, reserve_full("x", "", HOLD, 1))
            .then_invalid("requester");
        history
            .when(SECOND, reserve_full("x", &long, HOLD, 1))
            .then_invalid("requester");
    }

    #[test]
    fn a_duration_of_zero_below_the_minimum_or_above_the_maximum_is_an_invalid_request() {
        let mut history = given([(0, declare(5))]);
        for duration in [
            0,
            HOLD_DURATION_MS_MIN - 1,
            HOLD_DURATION_MS_MAX + 1,
            u64::MAX,
        ] {
            history
                .when(SECOND, reserve_full("x", "b", duration, 1))
                .then_invalid("duration_ms");
        }
        for duration in [HOLD_DURATION_MS_MIN, HOLD_DURATION_MS_MAX] {
            history
                .when(SECOND, reserve_full("x", "b", duration, 1))
                .then_event();
        }
    }

    #[test]
    fn a_count_of_zero_or_above_count_max_is_an_invalid_request() {
        let mut history = given([(0, declare(CAPACITY_MAX))]);
        history.when(SECOND, reserve_n(0)).then_invalid("count");
        history
            .when(SECOND, reserve_n(COUNT_MAX + 1))
            .then_invalid("count");
        history.when(SECOND, reserve_n(COUNT_MAX)).then_event();
    }

    #[test]
    fn reserving_in_an_undeclared_pool_is_not_known_and_not_cached() {
        let mut history = given([]);
        history
            .when(0, reserve("x").token("t"))
            .then_refused(RejectionCode::NotKnown);
        // Nothing was cached: the token then declares the pool.
        history.when(SECOND, declare(1).token("t")).then_event();
    }

    #[test]
    fn reserving_in_a_closed_pool_is_rejected_pool_closed() {
        let mut history = given([(0, declare(2)), (SECOND, close())]);
        history
            .when(2 * SECOND, reserve("x"))
            .then_rejected(RejectionCode::PoolClosed);
    }

    #[test]
    fn at_exactly_closes_at_the_pool_is_closed_and_one_ms_before_it_is_open() {
        let cutoff = 10 * MINUTE;
        let mut history = given([(0, declare_closing(3, cutoff))]);
        history.when(cutoff - 1, reserve("x")).then_event();
        history
            .when(cutoff, reserve("y"))
            .then_rejected(RejectionCode::PoolClosed);
        history
            .when(cutoff + HOLD, reserve("z"))
            .then_rejected(RejectionCode::PoolClosed);
    }

    #[test]
    fn pool_closed_takes_precedence_over_capacity_exceeded() {
        let mut history = given([(0, declare(1)), (SECOND, reserve("x")), (SECOND, close())]);
        history
            .when(2 * SECOND, reserve("y"))
            .then_rejected(RejectionCode::PoolClosed);
    }

    #[test]
    fn reserving_in_a_full_pool_is_rejected_pool_capacity_exceeded() {
        let mut history = given([
            (0, declare(2)),
            (SECOND, reserve("x")),
            (SECOND, reserve("y")),
        ]);
        let rejection = history
            .when(2 * SECOND, reserve("z"))
            .then_rejected(RejectionCode::PoolCapacityExceeded);
        assert_eq!(
            rejection,
            Rejection::PoolCapacityExceeded {
                capacity: 2,
                allocated: 2,
                requested: 1
            }
        );
    }

    #[test]
    fn a_multi_unit_count_that_crosses_capacity_is_rejected_but_one_that_fills_it_is_not() {
        let mut history = given([(0, declare(5)), (SECOND, reserve_n(3))]);
        history
            .when(2 * SECOND, reserve_n(3))
            .then_rejected(RejectionCode::PoolCapacityExceeded);
        history.when(3 * SECOND, reserve_n(2)).then_event();
        assert_eq!(history.pool.allocated(), 5);
    }

    #[test]
    fn a_resource_that_is_not_a_unit_of_a_named_unit_pool_is_a_cached_invalid_request() {
        let mut history = given([(0, declare_units(&["A1", "A2"]))]);
        let rejection = history
            .when(SECOND, reserve("B7"))
            .then_rejected(RejectionCode::InvalidRequest);
        assert!(
            matches!(rejection, Rejection::InvalidRequest { ref field, .. } if field == "resource")
        );
    }

    #[test]
    fn a_count_other_than_one_in_a_named_unit_pool_is_a_cached_invalid_request() {
        let mut history = given([(0, declare_units(&["A1", "A2", "A3"]))]);
        let rejection = history
            .when(SECOND, reserve_full("A1", "b", HOLD, 2))
            .then_rejected(RejectionCode::InvalidRequest);
        assert!(
            matches!(rejection, Rejection::InvalidRequest { ref field, .. } if field == "count")
        );
    }

    #[test]
    fn a_named_unit_held_by_a_live_reservation_is_resource_unavailable() {
        let mut history = given([(0, declare_units(&["A1", "A2"])), (SECOND, reserve("A1"))]);
        let rejection = history
            .when(2 * SECOND, reserve("A1"))
            .then_rejected(RejectionCode::ResourceUnavailable);
        assert_eq!(
            rejection,
            Rejection::ResourceUnavailable {
                resource: "A1".to_owned(),
                held_by: rsv(1)
            }
        );
        history.when(3 * SECOND, reserve("A2")).then_event();
    }

    #[test]
    fn a_confirmed_unit_stays_unavailable() {
        let mut history = given([
            (0, declare_units(&["A1", "A2"])),
            (SECOND, reserve("A1")),
            (2 * SECOND, confirm(1)),
        ]);
        history
            .when(3 * SECOND, reserve("A1"))
            .then_rejected(RejectionCode::ResourceUnavailable);
    }

    #[test]
    fn a_unit_is_free_again_after_its_hold_is_cancelled() {
        let mut history = given([
            (0, declare_units(&["A1", "A2"])),
            (SECOND, reserve("A1")),
            (2 * SECOND, cancel(1)),
        ]);
        let event = history.when(3 * SECOND, reserve("A1")).then_event();
        assert_eq!(reserved_seq(&event), 2);
    }

    #[test]
    fn a_unit_is_free_again_after_its_hold_expires() {
        let mut history = given([
            (0, declare_units(&["A1"])),
            (SECOND, reserve("A1")),
            (SECOND + HOLD, expire(1)),
        ]);
        history.when(SECOND + HOLD, reserve("A1")).then_event();
    }

    #[test]
    fn a_lapsed_but_unexpired_hold_still_holds_its_unit() {
        let mut history = given([(0, declare_units(&["A1"])), (SECOND, reserve("A1"))]);
        history
            .when(2 * HOLD, reserve("A1"))
            .then_rejected(RejectionCode::PoolCapacityExceeded);
        history.when(2 * HOLD, adjust(2)).then_event();
        history
            .when(2 * HOLD, reserve("A1"))
            .then_rejected(RejectionCode::ResourceUnavailable);
    }
}

/// The reservation-targeted actions share their not-known / not-held / invalid cases.
mod reservation_actions {
    use super::*;

    fn all(seq: u64) -> [Cmd; 3] {
        [confirm(seq), cancel(seq), expire(seq)]
    }

    #[test]
    fn reservation_sequence_zero_is_an_invalid_request_for_confirm_cancel_and_expire() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("x"))]);
        for cmd in all(0) {
            history.when(2 * SECOND, cmd).then_invalid("reservation_id");
        }
    }

    #[test]
    fn confirm_cancel_and_expire_in_an_undeclared_pool_are_not_known_and_not_cached() {
        for cmd in all(1) {
            let rejection = given([])
                .when(HOLD, cmd)
                .then_refused(RejectionCode::NotKnown);
            assert!(matches!(rejection, Rejection::NotKnown { ref what, .. } if what == "pool"));
        }
    }

    #[test]
    fn confirm_cancel_and_expire_of_an_unknown_reservation_are_cached_not_known() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("x"))]);
        for cmd in all(2) {
            let rejection = history
                .when(2 * HOLD, cmd)
                .then_rejected(RejectionCode::NotKnown);
            assert_eq!(
                rejection,
                Rejection::NotKnown {
                    what: "reservation".to_owned(),
                    id: "pool_vip:2".to_owned()
                }
            );
        }
        let event = history.log.last().expect("appended");
        assert_eq!((event.prior_state, event.new_state), (None, None));
    }

    /// A pool with reservation 1 Confirmed, 2 Released and 3 Expired.
    fn settled() -> History {
        given([
            (0, declare(3)),
            (SECOND, reserve("x")),
            (SECOND, reserve("y")),
            (SECOND, reserve("z")),
            (2 * SECOND, confirm(1)),
            (3 * SECOND, cancel(2)),
            (SECOND + HOLD, expire(3)),
        ])
    }

    #[test]
    fn confirm_cancel_and_expire_of_a_settled_reservation_are_rejected_not_held() {
        let mut history = settled();
        let states = [
            (1, ReservationState::Confirmed),
            (2, ReservationState::Released),
            (3, ReservationState::Expired),
        ];
        for (seq, state) in states {
            for cmd in all(seq) {
                // Late enough for every window check to pass: only not-held can refuse.
                let rejection = history
                    .when(3 * HOLD, cmd)
                    .then_rejected(RejectionCode::NotHeld);
                assert_eq!(rejection, Rejection::NotHeld { state });
                let event = history.log.last().expect("appended");
                assert_eq!(
                    (event.prior_state, event.new_state),
                    (Some(state), Some(state))
                );
            }
        }
        assert_eq!(history.pool.allocated(), 1);
    }

    #[test]
    fn not_held_takes_precedence_over_the_window_checks() {
        let mut history = given([
            (0, declare(2)),
            (0, reserve("x")),
            (0, reserve("y")),
            (SECOND, cancel(1)),
            (HOLD, expire(2)),
        ]);
        // Expire of a Released hold whose window had not elapsed: not-held, not window-not-elapsed.
        let mut early = given([(0, declare(1)), (0, reserve("x")), (SECOND, cancel(1))]);
        early
            .when(2 * SECOND, expire(1))
            .then_rejected(RejectionCode::NotHeld);
        // Confirm of an Expired hold after its window: not-held, not window-elapsed.
        history
            .when(2 * HOLD, confirm(2))
            .then_rejected(RejectionCode::NotHeld);
    }
}

mod confirm_reservation {
    use super::*;

    #[test]
    fn confirming_a_held_reservation_keeps_its_slot() {
        let mut history = given([(0, declare(2)), (SECOND, reserve_n(2))]);
        let event = history
            .when(2 * SECOND, confirm(1))
            .then_change(Change::Confirmed { reservation: 1 });
        assert_eq!((event.allocated_before, event.allocated_after), (2, 2));
        assert_eq!(
            (event.prior_state, event.new_state),
            (
                Some(ReservationState::Held),
                Some(ReservationState::Confirmed)
            )
        );
        assert_eq!(
            event.outcome(),
            Outcome::Confirmed {
                reservation: rsv(1)
            }
        );
        assert_eq!(history.state(1), ReservationState::Confirmed);
    }

    #[test]
    fn confirming_one_ms_before_expires_at_succeeds() {
        let mut history = given([(0, declare(1)), (0, reserve("x"))]);
        history.when(HOLD - 1, confirm(1)).then_event();
    }

    #[test]
    fn confirming_at_exactly_expires_at_is_rejected_window_elapsed() {
        let mut history = given([(0, declare(1)), (0, reserve("x"))]);
        let rejection = history
            .when(HOLD, confirm(1))
            .then_rejected(RejectionCode::WindowElapsed);
        assert_eq!(
            rejection,
            Rejection::WindowElapsed {
                expires_at: at(HOLD)
            }
        );
        assert_eq!(history.state(1), ReservationState::Held);
    }

    #[test]
    fn confirming_after_expires_at_is_rejected_window_elapsed_and_the_hold_can_then_expire() {
        let mut history = given([(0, declare(1)), (0, reserve("x"))]);
        history
            .when(HOLD + MINUTE, confirm(1))
            .then_rejected(RejectionCode::WindowElapsed);
        history.when(HOLD + MINUTE, expire(1)).then_event();
        assert_eq!(history.pool.allocated(), 0);
    }
}

mod cancel_reservation {
    use super::*;

    #[test]
    fn cancelling_a_held_reservation_returns_all_its_units() {
        let mut history = given([
            (0, declare(5)),
            (SECOND, reserve_n(3)),
            (SECOND, reserve("y")),
        ]);
        let event = history
            .when(2 * SECOND, cancel(1))
            .then_change(Change::Released { reservation: 1 });
        assert_eq!((event.allocated_before, event.allocated_after), (4, 1));
        assert_eq!(
            (event.prior_state, event.new_state),
            (
                Some(ReservationState::Held),
                Some(ReservationState::Released)
            )
        );
        assert_eq!(
            event.outcome(),
            Outcome::Released {
                reservation: rsv(1)
            }
        );
    }

    #[test]
    fn cancelling_after_expires_at_still_works_while_the_hold_is_held() {
        let mut history = given([(0, declare(1)), (0, reserve("x"))]);
        history.when(2 * HOLD, cancel(1)).then_event();
        assert_eq!(history.pool.allocated(), 0);
    }
}

mod ownership {
    use super::*;

    #[test]
    fn another_client_confirming_or_cancelling_a_hold_is_refused_not_owner_and_nothing_is_recorded()
    {
        let mut history = given([(0, declare(2)), (SECOND, reserve("vip-tier"))]);
        let rejection = history
            .when(2 * SECOND, confirm(1).by("kiosk_svc"))
            .then_refused(RejectionCode::NotOwner);
        assert_eq!(
            rejection,
            Rejection::NotOwner {
                reservation: rsv(1)
            }
        );
        history
            .when(2 * SECOND, cancel(1).by("kiosk_svc"))
            .then_refused(RejectionCode::NotOwner);
        // The owner still may.
        let event = history
            .when(3 * SECOND, confirm(1))
            .then_change(Change::Confirmed { reservation: 1 });
        assert_eq!(event.on_behalf_of, OnBehalfOf::Nobody);
    }

    #[test]
    fn an_admin_cancels_on_behalf_of_the_owner_and_the_event_names_both() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("vip-tier"))]);
        let event = history
            .when(2 * SECOND, cancel(1).by("admin"))
            .then_change(Change::Released { reservation: 1 });
        assert_eq!(event.actor, ActorId::new("admin"));
        assert_eq!(
            event.on_behalf_of,
            OnBehalfOf::Owner(ActorId::new("checkout_svc"))
        );
        assert_eq!(history.pool.allocated(), 0);
    }

    #[test]
    fn ownership_is_checked_after_the_token_and_before_the_reservation_state() {
        // A terminal reservation: there is no live owner to act for, so not-held (cached).
        let mut history = given([
            (0, declare(2)),
            (SECOND, reserve("vip-tier")),
            (2 * SECOND, cancel(1)),
        ]);
        history
            .when(3 * SECOND, confirm(1).by("kiosk_svc"))
            .then_rejected(RejectionCode::NotHeld);
        // An unknown reservation: not-known, as for anyone.
        history
            .when(4 * SECOND, confirm(9).by("kiosk_svc"))
            .then_rejected(RejectionCode::NotKnown);
    }

    #[test]
    fn evolve_refuses_an_owner_named_where_none_was_acted_for_and_a_recorded_not_owner() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("vip-tier"))]);
        let pool = history.pool.clone();
        let decided = |history: &mut History, cmd: Cmd| {
            let command = history.command(cmd);
            match decide(&pool, &command, at(2 * SECOND)) {
                Ok(Decision::Append(event)) => event,
                other => panic!("expected an event, got {other:?}"),
            }
        };
        let owner = OnBehalfOf::Owner(ActorId::new("checkout_svc"));
        // A reserve does not act for anyone.
        let mut reserved = decided(&mut history, reserve("vip-tier").token("second"));
        reserved.on_behalf_of = owner.clone();
        assert!(evolve(&mut pool.clone(), &reserved).is_err());
        // The owner's own confirm does not act for itself.
        let mut confirmed = decided(&mut history, confirm(1));
        assert!(evolve(&mut pool.clone(), &confirmed).is_ok());
        confirmed.on_behalf_of = owner;
        assert!(evolve(&mut pool.clone(), &confirmed).is_err());
        // An admin's cancel must name the owner.
        let mut cancelled = decided(&mut history, cancel(1).by("admin"));
        assert!(evolve(&mut pool.clone(), &cancelled).is_ok());
        cancelled.on_behalf_of = OnBehalfOf::Nobody;
        assert!(evolve(&mut pool.clone(), &cancelled).is_err());
        // `not-owner` is refused, never recorded.
        let mut refused = decided(&mut history, confirm(1).token("refused"));
        refused.change = Change::Rejected(Rejection::NotOwner {
            reservation: rsv(1),
        });
        refused.new_state = refused.prior_state;
        refused.allocated_after = refused.allocated_before;
        assert!(evolve(&mut pool.clone(), &refused).is_err());
    }

    #[test]
    fn the_sweeper_expires_any_lapsed_hold_without_acting_for_its_owner() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("vip-tier"))]);
        let event = history
            .when(SECOND + HOLD, expire(1))
            .then_change(Change::Expired {
                reservation: 1,
                lateness_ms: 0,
            });
        assert_eq!(event.on_behalf_of, OnBehalfOf::Nobody);
    }
}

mod expire_reservation {
    use super::*;

    #[test]
    fn expiring_at_exactly_expires_at_returns_the_units_with_zero_lateness() {
        let mut history = given([(0, declare(3)), (0, reserve_n(2))]);
        let event = history.when(HOLD, expire(1)).then_change(Change::Expired {
            reservation: 1,
            lateness_ms: 0,
        });
        assert_eq!((event.allocated_before, event.allocated_after), (2, 0));
        assert_eq!(
            (event.prior_state, event.new_state),
            (
                Some(ReservationState::Held),
                Some(ReservationState::Expired)
            )
        );
        assert_eq!(
            event.outcome(),
            Outcome::Expired {
                reservation: rsv(1)
            }
        );
    }

    #[test]
    fn a_late_expiry_records_how_late_it_fired() {
        let mut history = given([(0, declare(1)), (SECOND, reserve("x"))]);
        history
            .when(SECOND + HOLD + 4_321, expire(1))
            .then_change(Change::Expired {
                reservation: 1,
                lateness_ms: 4_321,
            });
    }

    #[test]
    fn expiring_one_ms_before_expires_at_is_rejected_window_not_elapsed() {
        let mut history = given([(0, declare(1)), (0, reserve("x"))]);
        let rejection = history
            .when(HOLD - 1, expire(1))
            .then_rejected(RejectionCode::WindowNotElapsed);
        assert_eq!(
            rejection,
            Rejection::WindowNotElapsed {
                expires_at: at(HOLD)
            }
        );
        assert_eq!(history.pool.allocated(), 1);
    }
}

mod tokens {
    use super::*;

    #[test]
    fn a_retried_reserve_replays_its_reservation_and_takes_no_second_slot() {
        let mut history = given([(0, declare(2))]);
        let event = history.when(SECOND, reserve("x").token("a1")).then_event();
        history
            .when(2 * SECOND, reserve("x").token("a1"))
            .then_replays(&event.outcome());
        assert_eq!(history.pool.allocated(), 1);
    }

    #[test]
    fn a_retried_confirm_cancel_or_expire_replays_its_outcome() {
        let mut history = given([
            (0, declare(3)),
            (0, reserve("x")),
            (0, reserve("y")),
            (0, reserve_full("z", "b", HOLD_DURATION_MS_MIN, 1)),
        ]);
        let confirmed = history.when(SECOND, confirm(1).token("c")).then_event();
        let cancelled = history.when(SECOND, cancel(2).token("k")).then_event();
        let expired = history.when(SECOND, expire(3).token("e")).then_event();
        history
            .when(MINUTE, confirm(1).token("c"))
            .then_replays(&confirmed.outcome());
        history
            .when(MINUTE, cancel(2).token("k"))
            .then_replays(&cancelled.outcome());
        history
            .when(MINUTE, expire(3).token("e"))
            .then_replays(&expired.outcome());
        assert_eq!(history.pool.allocated(), 1);
    }

    #[test]
    fn a_retried_cached_rejection_replays_the_same_rejection_even_after_the_state_changed() {
        let mut history = given([(0, declare(1)), (SECOND, reserve("x"))]);
        let rejection = history
            .when(2 * SECOND, reserve("y").token("b1"))
            .then_rejected(RejectionCode::PoolCapacityExceeded);
        // The slot frees up, yet the retry is told what the first attempt was told.
        history.when(3 * SECOND, cancel(1)).then_event();
        history
            .when(4 * SECOND, reserve("y").token("b1"))
            .then_replays(&Outcome::Rejected(rejection));
        assert_eq!(history.pool.allocated(), 0);
    }

    #[test]
    fn the_same_token_for_a_different_action_is_a_token_collision_and_not_cached() {
        let mut history = given([(0, declare(2))]);
        let event = history.when(SECOND, reserve("x").token("t")).then_event();
        let rejection = history
            .when(2 * SECOND, confirm(1).token("t"))
            .then_refused(RejectionCode::TokenCollision);
        assert_eq!(
            rejection,
            Rejection::TokenCollision {
                recorded_action: "reserve".to_owned()
            }
        );
        assert_eq!(history.state(1), ReservationState::Held);
        // The original outcome is still what the token answers.
        history
            .when(3 * SECOND, reserve("x").token("t"))
            .then_replays(&event.outcome());
    }

    #[test]
    fn the_same_token_for_the_same_action_with_other_parameters_is_a_token_collision() {
        let mut history = given([(0, declare(2))]);
        history.when(SECOND, reserve("x").token("t")).then_event();
        history
            .when(2 * SECOND, reserve("y").token("t"))
            .then_refused(RejectionCode::TokenCollision);
        history
            .when(2 * SECOND, reserve_n(2).token("t"))
            .then_refused(RejectionCode::TokenCollision);
        assert_eq!(history.pool.allocated(), 1);
    }

    #[test]
    fn a_cached_rejection_also_binds_its_token() {
        let mut history = given([(0, declare(1)), (SECOND, close())]);
        history
            .when(2 * SECOND, reserve("x").token("t"))
            .then_rejected(RejectionCode::PoolClosed);
        history
            .when(3 * SECOND, reserve("y").token("t"))
            .then_refused(RejectionCode::TokenCollision);
    }

    #[test]
    fn another_actor_using_the_same_token_string_is_not_a_collision() {
        let mut history = given([(0, declare(2))]);
        history.when(SECOND, reserve("x").token("t")).then_event();
        let event = history
            .when(2 * SECOND, reserve("y").by("other_svc").token("t"))
            .then_event();
        assert_eq!(reserved_seq(&event), 2);
        assert_eq!(history.pool.allocated(), 2);
    }

    #[test]
    fn a_token_is_still_replayed_one_ms_before_the_window_ends_and_forgotten_at_its_end() {
        let mut history = given([(0, declare(3))]);
        let first = history.when(SECOND, reserve("x").token("t")).then_event();
        let recorded_at = SECOND;
        history
            .when(recorded_at + WINDOW - 1, reserve("x").token("t"))
            .then_replays(&first.outcome());
        history
            .when(recorded_at + WINDOW - 1, cancel(1).token("t"))
            .then_refused(RejectionCode::TokenCollision);
        // At recorded_at + window the token is free: a new action under it runs.
        history
            .when(recorded_at + WINDOW, cancel(1).token("t"))
            .then_change(Change::Released { reservation: 1 });
        assert_eq!(history.pool.allocated(), 0);
    }

    #[test]
    fn the_same_reserve_after_the_window_is_a_new_reservation() {
        let mut history = given([(0, declare(3))]);
        history.when(0, reserve("x").token("t")).then_event();
        let again = history.when(WINDOW, reserve("x").token("t")).then_event();
        assert_eq!(reserved_seq(&again), 2);
        assert_eq!(history.pool.allocated(), 2);
    }

    #[test]
    fn a_token_collision_on_an_undeclared_pool_cannot_happen_because_not_known_comes_first() {
        given([])
            .when(0, reserve("x").token("t"))
            .then_refused(RejectionCode::NotKnown);
    }

    #[test]
    fn an_invalid_request_wins_over_a_token_collision() {
        let mut history = given([(0, declare(2)), (SECOND, reserve("x").token("t"))]);
        history
            .when(2 * SECOND, reserve_n(0).token("t"))
            .then_invalid("count");
    }

    #[test]
    fn the_digest_input_of_a_reservation_action_names_its_reservation() {
        for make in [confirm, cancel, expire] {
            assert_ne!(params_bytes(&make(1).action), params_bytes(&make(2).action));
        }
    }

    #[test]
    fn a_confirm_token_reused_for_another_reservation_is_a_collision_with_the_edges_digest() {
        let mut history = given([(0, declare(2)), (0, reserve("x")), (0, reserve("y"))]);
        let edge_digest = |action: &Action| {
            let bytes = params_bytes(action);
            let mut digest = [0u8; 32];
            for (i, byte) in bytes.iter().enumerate() {
                digest[i % 32] = digest[i % 32].wrapping_mul(31).wrapping_add(*byte);
            }
            ParamsDigest(digest)
        };
        let mut first = history.command(confirm(1).token("c"));
        first.digest = edge_digest(&first.action);
        let Ok(Decision::Append(event)) = decide(&history.pool, &first, at(SECOND)) else {
            panic!("the first confirm is decided");
        };
        evolve(&mut history.pool, &event).expect("applies");
        let mut second = history.command(confirm(2).token("c"));
        second.digest = edge_digest(&second.action);
        let answer = decide(&history.pool, &second, at(2 * SECOND));
        assert_eq!(
            answer.map_err(|rejection| rejection.code()),
            Err(RejectionCode::TokenCollision),
            "confirm of reservation 2 was answered with reservation 1's outcome"
        );
        assert_eq!(history.state(2), ReservationState::Held);
    }
}

mod clock {
    use super::*;

    #[test]
    fn a_clock_going_backwards_is_clamped_so_event_times_never_decrease() {
        let mut history = given([(0, declare(3)), (5 * MINUTE, reserve("x"))]);
        let event = history.when(MINUTE, reserve("y")).then_event();
        assert_eq!(event.at, at(5 * MINUTE));
        assert_eq!(
            event.change,
            Change::Reserved {
                reservation: 2,
                expires_at: at(5 * MINUTE + HOLD)
            }
        );
        assert_eq!(history.pool.last_at(), at(5 * MINUTE));
    }

    #[test]
    fn a_clamped_time_is_the_time_the_window_checks_use() {
        // Reserve at 0 (expires at HOLD); something happens at HOLD + 2 min; an expiry arriving
        // with a stale clock at 3 min is judged at HOLD + 2 min: elapsed, 2 min late.
        let mut history = given([
            (0, declare(3)),
            (0, reserve("x")),
            (HOLD + 2 * MINUTE, reserve("y")),
        ]);
        history
            .when(3 * MINUTE, expire(1))
            .then_change(Change::Expired {
                reservation: 1,
                lateness_ms: 2 * MINUTE,
            });
        // And a confirm with a stale clock cannot sneak into the elapsed window.
        let mut history = given([(0, declare(3)), (0, reserve("x")), (HOLD, reserve("y"))]);
        history
            .when(MINUTE, confirm(1))
            .then_rejected(RejectionCode::WindowElapsed);
    }

    #[test]
    fn a_stale_clock_does_not_revive_a_forgotten_token() {
        let mut history = given([(0, declare(3)), (0, reserve("x").token("t"))]);
        history.when(WINDOW, reserve("y")).then_event();
        // Judged at WINDOW: the first "t" is forgotten, so this is a new reservation.
        let event = history.when(SECOND, reserve("z").token("t")).then_event();
        assert_eq!(reserved_seq(&event), 3);
    }
}

mod query_reservation {
    use super::*;

    #[test]
    fn query_reports_state_and_whether_the_slot_is_held() {
        let history = given([
            (0, declare(5)),
            (0, reserve("w")),
            (0, reserve_n(2)),
            (0, reserve("y")),
            (0, reserve("z")),
            (SECOND, confirm(2)),
            (SECOND, cancel(3)),
            (HOLD, expire(4)),
        ]);
        let expected = [
            (1, ReservationState::Held, true),
            (2, ReservationState::Confirmed, true),
            (3, ReservationState::Released, false),
            (4, ReservationState::Expired, false),
        ];
        for (seq, state, slot_held) in expected {
            let status = history.pool.query(seq).expect("known reservation");
            assert_eq!(status.reservation, rsv(seq));
            assert_eq!(
                (status.state, status.slot_held),
                (state, slot_held),
                "seq {seq}"
            );
            assert_eq!(status.hold.is_some(), slot_held, "seq {seq}");
        }
        let confirmed = history.pool.query(2).and_then(|status| status.hold);
        let confirmed = confirmed.expect("live");
        assert_eq!(confirmed.count, 2);
        assert_eq!(confirmed.state, ReservationState::Confirmed);
        assert_eq!(confirmed.expires_at, at(HOLD));
        assert_eq!(history.pool.allocated(), 3);
    }

    #[test]
    fn query_of_an_unknown_reservation_or_an_undeclared_pool_is_not_known() {
        let history = given([(0, declare(1)), (0, reserve("x"))]);
        assert!(history.pool.query(0).is_none());
        assert!(history.pool.query(2).is_none());
        assert!(history.pool.query(u64::MAX).is_none());
        assert!(Pool::default().query(1).is_none());
    }

    #[test]
    fn query_appends_nothing() {
        let history = given([(0, declare(1)), (0, reserve("x"))]);
        let before = history.pool.clone();
        let _ = history.pool.query(1);
        assert_eq!(history.pool, before);
        assert_eq!(history.pool.events_applied(), 2);
    }
}

mod reservation_ids {
    use super::*;

    #[test]
    fn a_reservation_id_prints_as_pool_colon_seq_and_parses_back() {
        for (pool, seq) in [("pool_vip", 1), ("a.b-C_9", 42), ("p", u64::MAX)] {
            let id = ReservationId {
                pool: PoolId::new(pool),
                seq,
            };
            let text = id.to_string();
            assert_eq!(text, format!("{pool}:{seq}"));
            assert_eq!(ReservationId::parse(&text), Some(id));
        }
    }

    #[test]
    fn malformed_reservation_ids_do_not_parse() {
        let too_long_pool = format!("{}:1", "p".repeat(POOL_ID_BYTES_MAX + 1));
        let bad = [
            "",
            "pool_vip",
            "pool_vip:",
            ":1",
            "pool_vip:0",
            "pool_vip:01",
            "pool_vip:-1",
            "pool_vip:+1",
            "pool_vip:1a",
            "pool_vip: 1",
            "pool vip:1",
            "pool:vip:1",
            "pool_vip:18446744073709551616",
            too_long_pool.as_str(),
        ];
        for text in bad {
            assert_eq!(ReservationId::parse(text), None, "{text:?} parsed");
        }
    }

    #[test]
    fn an_event_names_the_reservation_it_concerns() {
        let mut history = given([(0, declare(2))]);
        let reserved = history.when(0, reserve("x")).then_event();
        assert_eq!(reserved.reservation(), Some(rsv(1)));
        let rejected = history
            .when(0, confirm(7))
            .then_rejected(RejectionCode::NotKnown);
        assert_eq!(rejected.code(), RejectionCode::NotKnown);
        assert_eq!(
            history.log.last().and_then(Event::reservation),
            Some(rsv(7))
        );
        assert_eq!(history.log[0].reservation(), None);
    }
}

mod without_token_cache {
    use super::*;

    /// The audit's fold: the same pool as the live one in every count and state, with no token
    /// kept, and a token recorded twice within its window is not refused (the audit's own
    /// `idempotency` check names it).
    #[test]
    fn folds_the_same_pool_keeping_no_token() {
        let mut history = given([(0, declare(3)), (10, reserve("a")), (20, reserve("b"))]);
        history.when(30, confirm(1)).then_event();
        history.when(40, cancel(2)).then_event();
        let mut audited = Pool::without_token_cache();
        for event in &history.log {
            evolve(&mut audited, event).expect("the log folds");
        }
        assert!(audited.tokens().is_empty());
        assert_eq!(history.pool.tokens().len(), history.log.len());
        assert_eq!(audited.allocated(), history.pool.allocated());
        assert_eq!(
            audited.reservations_made(),
            history.pool.reservations_made()
        );
        for seq in 1..=2 {
            assert_eq!(audited.query(seq), history.pool.query(seq));
        }
        // The same token again, within its window.
        let mut reused = history.log[1].clone();
        reused.at = at(50);
        reused.action = Action::ConfirmReservation { reservation: 1 };
        reused.change = Change::Rejected(Rejection::NotHeld {
            state: ReservationState::Confirmed,
        });
        reused.allocated_before = history.pool.allocated();
        reused.allocated_after = history.pool.allocated();
        reused.prior_state = None;
        reused.new_state = None;
        let refused = evolve(&mut history.pool.clone(), &reused).unwrap_err();
        assert!(refused.reason.contains("token"), "{refused}");
        evolve(&mut audited, &reused).expect("tokens are not this pool's to check");
    }
}

//! The pool aggregate against a reference model: random interleavings of every action on 1–3
//! pools from 2–3 actors — retries, reused tokens, big clock jumps and a clock that sometimes
//! goes backwards — driven through `decide` + `evolve`, checking the seed's Invariants 1–5 after
//! every step and that replaying the produced events rebuilds the live pools exactly.
//!
//! The reference model is deliberately small and separate from `allot_domain::pool`: a vector of
//! reservations (state, count, expires_at, unit) and a token map per pool. It predicts every
//! outcome (the success and its value, or the rejection code, or a replay), and owns the
//! arithmetic the invariants are checked against.
//!
//! Vacuity guard: the same property, with a deliberate bug switched on
//! (`fault::Fault::CancelForgetsRelease` / `ExpireForgetsRelease`), must fail.
//!
//! Case count: `PROPTEST_CASES` (default 256).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use allot_domain::fault::{self, Fault};
use allot_domain::{
    Action, ActionKind, ActorId, Attestation, Change, Command, Decision, Event, IdempotencyToken,
    Outcome, ParamsDigest, Permission, Pool, PoolId, RejectionCode, ReservationId,
    ReservationState, Role, Timestamp, decide, evolve,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const T0: u64 = 1_767_225_600_000;
const POOLS_MAX: usize = 3;
const ACTORS: [&str; 3] = ["checkout_svc", "kiosk_svc", "sweeper"];

/// The role of each of [`ACTORS`]: a client, a back office that may act for others, the sweeper.
fn role_of(actor: &ActorId) -> Role {
    match actor.as_str() {
        "kiosk_svc" => Role::Admin,
        "sweeper" => Role::Sweeper,
        _ => Role::Client,
    }
}
const UNITS: [&str; 3] = ["u0", "u1", "u2"];
const DURATIONS_MS: [u64; 5] = [1_000, 5_000, 30_000, 120_000, 600_000];
const WINDOWS_MS: [u64; 4] = [240_000, 300_000, 600_000, 900_000];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

fn pool_id(index: usize) -> PoolId {
    PoolId::new(format!("pool-{index}"))
}

/// The edge's digest stand-in: the domain only compares digests.
fn digest_of(action: &Action) -> ParamsDigest {
    let text = format!("{action:?}");
    let mut digest = [0u8; 32];
    for (i, byte) in text.bytes().enumerate() {
        digest[i % 32] = digest[i % 32].wrapping_mul(31).wrapping_add(byte);
    }
    digest[31] ^= text.len() as u8;
    ParamsDigest(digest)
}

// ---------------------------------------------------------------------------------------------
// What the strategies generate.

#[derive(Debug, Clone)]
enum Op {
    Declare {
        capacity: u64,
        named_units: bool,
        /// Cutoff relative to the time the command is issued.
        cutoff_in_ms: Option<u64>,
        window_ms: u64,
    },
    Adjust {
        capacity: u64,
    },
    Close,
    Reserve {
        /// `u3` is not a unit of a named-unit pool.
        unit: usize,
        count: u32,
        duration_ms: u64,
    },
    Confirm(Target),
    Cancel(Target),
    Expire(Target),
}

/// Which reservation a confirm/cancel/expire names: mostly a Held one (if any), otherwise any
/// reservation made so far or the next, unknown, sequence.
#[derive(Debug, Clone)]
struct Target {
    prefer_held: bool,
    pick: Index,
}

#[derive(Debug, Clone)]
enum TokenChoice {
    Fresh,
    /// An earlier command's token, by the same actor (a collision or a replay) or by this step's
    /// actor (often another one: not a collision).
    Reuse {
        pick: Index,
        keep_actor: bool,
    },
}

#[derive(Debug, Clone)]
enum What {
    New {
        pool: usize,
        actor: usize,
        token: TokenChoice,
        op: Op,
    },
    /// Exactly an earlier command again: same pool, actor, token and parameters.
    Retry(Index),
}

#[derive(Debug, Clone)]
struct Step {
    /// Clock movement before the step; negative is a clock going backwards.
    dt_ms: i64,
    what: What,
}

#[derive(Debug, Clone)]
struct Case {
    pools: usize,
    /// Declarations issued first (None leaves the pool undeclared for a while).
    initial: Vec<Option<Op>>,
    steps: Vec<Step>,
}

fn declare_op() -> impl Strategy<Value = Op> {
    (
        0u64..=8,
        any::<bool>(),
        prop::option::weighted(0.15, 0u64..3_600_000),
        prop::sample::select(WINDOWS_MS.to_vec()),
    )
        .prop_map(
            |(capacity, named_units, cutoff_in_ms, window_ms)| Op::Declare {
                capacity,
                named_units,
                cutoff_in_ms,
                window_ms,
            },
        )
}

fn target() -> impl Strategy<Value = Target> {
    (prop::bool::weighted(0.7), any::<Index>())
        .prop_map(|(prefer_held, pick)| Target { prefer_held, pick })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => declare_op(),
        6 => (0u64..=10).prop_map(|capacity| Op::Adjust { capacity }),
        1 => Just(Op::Close),
        60 => (0usize..4, prop_oneof![3 => Just(1u32), 1 => 2u32..=3], prop::sample::select(DURATIONS_MS.to_vec()))
            .prop_map(|(unit, count, duration_ms)| Op::Reserve { unit, count, duration_ms }),
        20 => target().prop_map(Op::Confirm),
        16 => target().prop_map(Op::Cancel),
        16 => target().prop_map(Op::Expire),
    ]
}

fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => Just(0i64),
        4 => 1i64..1_000,
        3 => 1_000i64..60_000,
        1 => 60_000i64..3_600_000,
        1 => -120_000i64..0,
    ]
}

fn token_choice() -> impl Strategy<Value = TokenChoice> {
    prop_oneof![
        6 => Just(TokenChoice::Fresh),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(pick, keep_actor)| TokenChoice::Reuse { pick, keep_actor }),
    ]
}

fn step(actors: usize) -> impl Strategy<Value = Step> {
    let what = prop_oneof![
        8 => (0..POOLS_MAX, 0..actors, token_choice(), op())
            .prop_map(|(pool, actor, token, op)| What::New { pool, actor, token, op }),
        2 => any::<Index>().prop_map(What::Retry),
    ];
    (dt(), what).prop_map(|(dt_ms, what)| Step { dt_ms, what })
}

fn case() -> impl Strategy<Value = Case> {
    (1..=POOLS_MAX, 2..=ACTORS.len()).prop_flat_map(|(pools, actors)| {
        (
            Just(pools),
            prop::collection::vec(prop::option::weighted(0.85, declare_op()), POOLS_MAX),
            prop::collection::vec(step(actors), 1..120),
        )
            .prop_map(|(pools, initial, steps)| Case {
                pools,
                initial,
                steps,
            })
    })
}

// ---------------------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefState {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl RefState {
    fn live(self) -> bool {
        matches!(self, RefState::Held | RefState::Confirmed)
    }
    fn same_as(self, state: ReservationState) -> bool {
        matches!(
            (self, state),
            (RefState::Held, ReservationState::Held)
                | (RefState::Confirmed, ReservationState::Confirmed)
                | (RefState::Released, ReservationState::Released)
                | (RefState::Expired, ReservationState::Expired)
        )
    }
}

#[derive(Debug, Clone)]
struct RefReservation {
    state: RefState,
    count: u32,
    expires_at: u64,
    unit: String,
    /// The actor that reserved it: only it (or an admin, on its behalf) confirms or cancels.
    owner: String,
    /// Release events (Released or Expired) seen for it: Invariant 2 says at most one.
    releases: u32,
}

#[derive(Debug, Clone)]
struct RefToken {
    kind: ActionKind,
    digest: ParamsDigest,
    outcome: Outcome,
    recorded_at: u64,
}

#[derive(Debug, Clone, Default)]
struct RefPool {
    declared: bool,
    capacity: u64,
    closed: bool,
    closes_at: Option<u64>,
    window_ms: u64,
    units: Vec<String>,
    /// Reservation `seq` at index `seq - 1`.
    reservations: Vec<RefReservation>,
    tokens: HashMap<(String, String), RefToken>,
    last_at: u64,
}

/// What the model says `decide` must answer.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// `Err(code)`: nothing recorded.
    Uncached(RejectionCode),
    /// The recorded outcome again, nothing appended.
    Replay(Outcome),
    /// A successful event with exactly this outcome.
    Success(Outcome),
    /// A `Rejected` event with this code.
    Rejected(RejectionCode),
}

impl RefPool {
    fn allocated(&self) -> u64 {
        self.reservations
            .iter()
            .filter(|r| r.state.live())
            .map(|r| u64::from(r.count))
            .sum()
    }

    fn confirmed(&self) -> u64 {
        self.reservations
            .iter()
            .filter(|r| r.state == RefState::Confirmed)
            .map(|r| u64::from(r.count))
            .sum()
    }

    fn reservation(&self, seq: u64) -> Option<&RefReservation> {
        self.reservations
            .get(usize::try_from(seq).ok()?.checked_sub(1)?)
    }

    fn predict(&self, command: &Command, now: u64) -> Expect {
        let pool = command.pool.clone();
        let rid = |seq: u64| ReservationId {
            pool: pool.clone(),
            seq,
        };
        if !self.declared {
            return match command.action {
                Action::DeclarePool { .. } => Expect::Success(Outcome::PoolDeclared { pool }),
                _ => Expect::Uncached(RejectionCode::NotKnown),
            };
        }
        let key = (command.actor.0.clone(), command.token.0.clone());
        if let Some(token) = self.tokens.get(&key)
            && now < token.recorded_at + self.window_ms
        {
            if token.kind == command.action.kind() && token.digest == command.digest {
                return Expect::Replay(token.outcome.clone());
            }
            return Expect::Uncached(RejectionCode::TokenCollision);
        }
        if let Action::ConfirmReservation { reservation }
        | Action::CancelReservation { reservation } = &command.action
            && let Some(held) = self.reservation(*reservation)
            && held.state.live()
            && held.owner != command.actor.0
            && !command.role.allows(Permission::ActForOthers)
        {
            return Expect::Uncached(RejectionCode::NotOwner);
        }
        let rejected = Expect::Rejected;
        match &command.action {
            Action::DeclarePool { .. } => rejected(RejectionCode::PoolAlreadyDeclared),
            Action::AdjustCapacity { capacity } => {
                if *capacity < self.allocated() {
                    rejected(RejectionCode::CapacityBelowAllocated)
                } else {
                    Expect::Success(Outcome::CapacityAdjusted {
                        capacity: *capacity,
                    })
                }
            }
            Action::ClosePool => {
                if self.closed {
                    rejected(RejectionCode::PoolClosed)
                } else {
                    Expect::Success(Outcome::PoolClosed { pool })
                }
            }
            Action::Reserve {
                resource,
                duration_ms,
                count,
                ..
            } => {
                if self.closed || self.closes_at.is_some_and(|cutoff| now >= cutoff) {
                    return rejected(RejectionCode::PoolClosed);
                }
                if self.allocated() + u64::from(*count) > self.capacity {
                    return rejected(RejectionCode::PoolCapacityExceeded);
                }
                if !self.units.is_empty() {
                    if !self.units.contains(resource) || *count != 1 {
                        return rejected(RejectionCode::InvalidRequest);
                    }
                    let taken = self
                        .reservations
                        .iter()
                        .any(|r| r.state.live() && r.unit == *resource);
                    if taken {
                        return rejected(RejectionCode::ResourceUnavailable);
                    }
                }
                Expect::Success(Outcome::Reserved {
                    reservation: rid(self.reservations.len() as u64 + 1),
                    expires_at: Timestamp(now + duration_ms),
                })
            }
            Action::ConfirmReservation { reservation }
            | Action::CancelReservation { reservation }
            | Action::ExpireReservation { reservation } => {
                let seq = *reservation;
                let Some(found) = self.reservation(seq) else {
                    return rejected(RejectionCode::NotKnown);
                };
                if found.state != RefState::Held {
                    return rejected(RejectionCode::NotHeld);
                }
                match command.action {
                    Action::ConfirmReservation { .. } if now >= found.expires_at => {
                        rejected(RejectionCode::WindowElapsed)
                    }
                    Action::ConfirmReservation { .. } => Expect::Success(Outcome::Confirmed {
                        reservation: rid(seq),
                    }),
                    Action::CancelReservation { .. } => Expect::Success(Outcome::Released {
                        reservation: rid(seq),
                    }),
                    _ if now < found.expires_at => rejected(RejectionCode::WindowNotElapsed),
                    _ => Expect::Success(Outcome::Expired {
                        reservation: rid(seq),
                    }),
                }
            }
        }
    }

    /// Applies what the model predicted succeeded (its own arithmetic, not the event's).
    fn apply_success(&mut self, command: &Command, now: u64) {
        match &command.action {
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            } => {
                self.declared = true;
                self.capacity = *capacity;
                self.closes_at = closes_at.map(|at| at.0);
                self.window_ms = *idempotency_window_ms;
                self.units = units.clone();
            }
            Action::AdjustCapacity { capacity } => self.capacity = *capacity,
            Action::ClosePool => self.closed = true,
            Action::Reserve {
                resource,
                duration_ms,
                count,
                ..
            } => self.reservations.push(RefReservation {
                state: RefState::Held,
                count: *count,
                expires_at: now + duration_ms,
                unit: resource.clone(),
                owner: command.actor.0.clone(),
                releases: 0,
            }),
            Action::ConfirmReservation { reservation } => {
                self.reservations[(*reservation - 1) as usize].state = RefState::Confirmed;
            }
            Action::CancelReservation { reservation } => {
                self.reservations[(*reservation - 1) as usize].state = RefState::Released;
            }
            Action::ExpireReservation { reservation } => {
                self.reservations[(*reservation - 1) as usize].state = RefState::Expired;
            }
        }
    }

    fn record_token(&mut self, command: &Command, outcome: Outcome, now: u64) {
        self.tokens.insert(
            (command.actor.0.clone(), command.token.0.clone()),
            RefToken {
                kind: command.action.kind(),
                digest: command.digest,
                outcome,
                recorded_at: now,
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Driving a case.

struct Stream {
    pool: Pool,
    model: RefPool,
    events: Vec<Event>,
}

fn build_action(op: &Op, model: &RefPool, now: u64) -> Action {
    let seq = |target: &Target| {
        let held: Vec<u64> = (1..)
            .zip(&model.reservations)
            .filter(|(_, reservation)| reservation.state == RefState::Held)
            .map(|(seq, _)| seq)
            .collect();
        if target.prefer_held && !held.is_empty() {
            held[target.pick.index(held.len())]
        } else {
            target.pick.index(model.reservations.len() + 1) as u64 + 1
        }
    };
    match op {
        Op::Declare {
            capacity,
            named_units,
            cutoff_in_ms,
            window_ms,
        } => Action::DeclarePool {
            capacity: *capacity,
            closes_at: cutoff_in_ms.map(|cutoff| Timestamp(now + cutoff)),
            units: if *named_units {
                UNITS.iter().map(|unit| (*unit).to_owned()).collect()
            } else {
                Vec::new()
            },
            idempotency_window_ms: *window_ms,
        },
        Op::Adjust { capacity } => Action::AdjustCapacity {
            capacity: *capacity,
        },
        Op::Close => Action::ClosePool,
        Op::Reserve {
            unit,
            count,
            duration_ms,
        } => Action::Reserve {
            resource: format!("u{unit}"),
            requester: "buyer".to_owned(),
            duration_ms: *duration_ms,
            count: *count,
        },
        Op::Confirm(pick) => Action::ConfirmReservation {
            reservation: seq(pick),
        },
        Op::Cancel(pick) => Action::CancelReservation {
            reservation: seq(pick),
        },
        Op::Expire(pick) => Action::ExpireReservation {
            reservation: seq(pick),
        },
    }
}

/// Runs one case; `Err` names the first broken invariant or mispredicted outcome.
fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let mut streams: Vec<Stream> = (0..case.pools)
        .map(|_| Stream {
            pool: Pool::default(),
            model: RefPool::default(),
            events: Vec::new(),
        })
        .collect();
    let mut history: Vec<(usize, Command)> = Vec::new();
    let mut clock = T0;
    let mut fresh_tokens = 0u32;
    let mut fresh_token = || {
        fresh_tokens += 1;
        IdempotencyToken::new(format!("t{fresh_tokens}"))
    };

    let mut commands: Vec<(i64, usize, Option<Command>, Option<&Step>)> = Vec::new();
    for (index, declare) in case.initial.iter().take(case.pools).enumerate() {
        if let Some(op) = declare {
            let action = build_action(op, &streams[index].model, clock);
            let command = Command {
                pool: pool_id(index),
                actor: ActorId::new(ACTORS[0]),
                role: role_of(&ActorId::new(ACTORS[0])),
                attestation: Attestation::default(),
                token: fresh_token(),
                digest: digest_of(&action),
                action,
                batch: None,
            };
            commands.push((0, index, Some(command), None));
        }
    }
    for step in &case.steps {
        commands.push((step.dt_ms, 0, None, Some(step)));
    }

    for (dt_ms, initial_pool, initial_command, step) in commands {
        clock = clock.saturating_add_signed(dt_ms).max(T0);
        let (index, command) = match (initial_command, step) {
            (Some(command), _) => (initial_pool, command),
            (None, Some(step)) => match &step.what {
                What::Retry(pick) => {
                    if history.is_empty() {
                        continue;
                    }
                    history[pick.index(history.len())].clone()
                }
                What::New {
                    pool,
                    actor,
                    token,
                    op,
                } => {
                    let index = pool % case.pools;
                    let now = clock.max(streams[index].model.last_at);
                    let action = build_action(op, &streams[index].model, now);
                    let (actor, token) = match token {
                        TokenChoice::Reuse { pick, keep_actor } if !history.is_empty() => {
                            let (_, earlier) = &history[pick.index(history.len())];
                            let actor = if *keep_actor {
                                earlier.actor.clone()
                            } else {
                                ActorId::new(ACTORS[*actor])
                            };
                            (actor, earlier.token.clone())
                        }
                        _ => (ActorId::new(ACTORS[*actor]), fresh_token()),
                    };
                    let command = Command {
                        pool: pool_id(index),
                        role: role_of(&actor),
                        actor,
                        attestation: Attestation::default(),
                        token,
                        digest: digest_of(&action),
                        action,
                        batch: None,
                    };
                    (index, command)
                }
            },
            (None, None) => continue,
        };
        history.push((index, command.clone()));
        step_once(&mut streams[index], &command, clock)?;
    }

    // Replay: every stream's events folded into a fresh pool give the live pool exactly.
    for stream in &streams {
        let mut fresh = Pool::default();
        for event in &stream.events {
            prop_assert!(
                evolve(&mut fresh, event).is_ok(),
                "replay refused {event:?}"
            );
        }
        prop_assert_eq!(&fresh, &stream.pool, "replay differs from the live pool");
    }
    Ok(())
}

thread_local! {
    /// How often each kind of expected answer came up on this thread (see the coverage test).
    static SEEN: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
}

fn tally(expected: &Expect) {
    let name = match expected {
        Expect::Uncached(code) => format!("uncached {code}"),
        Expect::Replay(_) => "replay".to_owned(),
        Expect::Success(outcome) => format!("{outcome:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned(),
        Expect::Rejected(code) => format!("rejected {code}"),
    };
    SEEN.with(|seen| *seen.borrow_mut().entry(name).or_default() += 1);
}

/// One command through decide (+ evolve), checked against the model and the invariants.
fn step_once(stream: &mut Stream, command: &Command, clock: u64) -> Result<(), TestCaseError> {
    let now = clock.max(stream.model.last_at);
    let expected = stream.model.predict(command, now);
    tally(&expected);
    let before = stream.pool.clone();
    let decision = decide(&stream.pool, command, Timestamp(clock));
    prop_assert_eq!(&stream.pool, &before, "decide mutated the pool");

    let event = match (&expected, decision) {
        (Expect::Uncached(code), Err(rejection)) => {
            prop_assert_eq!(rejection.code(), *code, "{:?}", command);
            return Ok(());
        }
        // Invariant 5: a retry within the window answers the recorded outcome, appends nothing.
        (Expect::Replay(recorded), Ok(Decision::Replay(outcome))) => {
            prop_assert_eq!(&outcome, recorded, "{:?}", command);
            return Ok(());
        }
        (Expect::Success(outcome), Ok(Decision::Append(event))) => {
            prop_assert_eq!(&event.outcome(), outcome, "{:?}", command);
            event
        }
        (Expect::Rejected(code), Ok(Decision::Append(event))) => {
            let got = event.rejection().map(|rejection| rejection.code());
            prop_assert_eq!(got, Some(*code), "{:?} → {:?}", command, event.change);
            prop_assert_eq!(event.allocated_before, event.allocated_after);
            event
        }
        (expected, got) => {
            return Err(TestCaseError::fail(format!(
                "{command:?} at {now}: model expected {expected:?}, decide answered {got:?}"
            )));
        }
    };

    // The clock is clamped: event times never go backwards.
    prop_assert_eq!(event.at, Timestamp(now));
    prop_assert!(event.at.0 >= stream.model.last_at);
    prop_assert_eq!(event.allocated_before, stream.model.allocated());

    if let Err(error) = evolve(&mut stream.pool, &event) {
        return Err(TestCaseError::fail(format!(
            "evolve refused a decided event: {error}"
        )));
    }
    if matches!(expected, Expect::Success(_)) {
        stream.model.apply_success(command, now);
    }
    stream.model.record_token(command, event.outcome(), now);
    stream.model.last_at = now;
    stream.events.push(event.clone());
    check_invariants(stream, &event)
}

fn check_invariants(stream: &mut Stream, event: &Event) -> Result<(), TestCaseError> {
    let pool = &stream.pool;
    let model = &mut stream.model;

    // Invariant 1: allocated equals the units of the Held and Confirmed reservations — as the
    // model counts them, and as the pool's own live set counts them.
    prop_assert_eq!(
        pool.allocated(),
        model.allocated(),
        "allocated vs live reservations"
    );
    let live_units: u64 = pool.live().map(|(_, hold)| u64::from(hold.count)).sum();
    prop_assert_eq!(
        pool.allocated(),
        live_units,
        "allocated vs the pool's live set"
    );
    prop_assert_eq!(event.allocated_after, pool.allocated());
    prop_assert_eq!(pool.reservations_made(), model.reservations.len() as u64);
    for (seq0, reservation) in model.reservations.iter().enumerate() {
        let seq = seq0 as u64 + 1;
        let Some(status) = pool.query(seq) else {
            return Err(TestCaseError::fail(format!(
                "reservation {seq} unknown to the pool"
            )));
        };
        prop_assert!(reservation.state.same_as(status.state), "state of {}", seq);
        prop_assert_eq!(status.slot_held, reservation.state.live());
        if let Some(hold) = status.hold {
            prop_assert_eq!(hold.count, reservation.count);
            prop_assert_eq!(hold.expires_at, Timestamp(reservation.expires_at));
        }
    }

    // Invariant 2: a reservation's slot is returned at most once, and by exactly its units.
    if let Change::Released { reservation } | Change::Expired { reservation, .. } = event.change {
        let Some(released) = model.reservations.get_mut((reservation - 1) as usize) else {
            return Err(TestCaseError::fail("release of an unknown reservation"));
        };
        released.releases += 1;
        prop_assert!(
            released.releases <= 1,
            "reservation {} released twice",
            reservation
        );
        prop_assert_eq!(
            event.allocated_before - event.allocated_after,
            u64::from(released.count),
            "the slot returned is not the hold's"
        );
    }
    for reservation in &model.reservations {
        prop_assert_eq!(reservation.releases, u32::from(!reservation.state.live()));
    }

    // Invariant 3: no oversell.
    prop_assert!(
        model.confirmed() <= pool.capacity(),
        "confirmed above capacity"
    );
    prop_assert!(
        pool.allocated() <= pool.capacity(),
        "allocated above capacity"
    );

    // Invariant 4: no confirmation at or after the hold's expires_at.
    if let Change::Confirmed { reservation } = event.change {
        let expires_at = model.reservations[(reservation - 1) as usize].expires_at;
        prop_assert!(event.at.0 < expires_at, "confirmed a lapsed hold");
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: cases(), ..Config::default() })]

    #[test]
    fn allocation_stays_coherent_under_random_interleavings(case in case()) {
        run_case(&case)?;
    }
}

/// Turns a fault on for this thread and off again however the test ends.
struct FaultOn;

impl FaultOn {
    fn new(which: Fault) -> FaultOn {
        fault::set(Some(which));
        FaultOn
    }
}

impl Drop for FaultOn {
    fn drop(&mut self) {
        fault::set(None);
    }
}

fn property_fails_with(which: Fault) -> bool {
    let _fault = FaultOn::new(which);
    // The runner stops at the first failing case, so a generous count costs nothing when the
    // guard works; it is never lowered by PROPTEST_CASES, which would make the guard flaky.
    let mut runner = TestRunner::new(Config {
        cases: cases().max(256),
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    runner.run(&case(), |case| run_case(&case)).is_err()
}

#[test]
fn the_property_catches_a_cancel_that_forgets_to_return_the_slot() {
    assert!(property_fails_with(Fault::CancelForgetsRelease));
}

#[test]
fn the_property_catches_an_expiry_that_forgets_to_return_the_slot() {
    assert!(property_fails_with(Fault::ExpireForgetsRelease));
}

#[test]
fn the_property_passes_again_once_the_fault_is_off() {
    assert!(property_fails_with(Fault::CancelForgetsRelease));
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    assert!(runner.run(&case(), |case| run_case(&case)).is_ok());
}

#[test]
fn the_generated_cases_reach_every_outcome() {
    SEEN.with(|seen| seen.borrow_mut().clear());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    assert!(runner.run(&case(), |case| run_case(&case)).is_ok());
    let seen = SEEN.with(|seen| seen.borrow().clone());
    let expected = [
        "PoolDeclared",
        "CapacityAdjusted",
        "PoolClosed",
        "Reserved",
        "Confirmed",
        "Released",
        "Expired",
        "replay",
        "uncached not-known",
        "uncached token-collision",
        "rejected invalid-request",
        "rejected not-known",
        "rejected pool-closed",
        "rejected pool-capacity-exceeded",
        "rejected resource-unavailable",
        "rejected not-held",
        "rejected window-elapsed",
        "rejected window-not-elapsed",
        "rejected pool-already-declared",
        "rejected capacity-below-allocated",
    ];
    eprintln!("outcomes over 64 cases: {seen:?}");
    for name in expected {
        assert!(
            seen.contains_key(name),
            "never generated: {name}; seen {seen:?}"
        );
    }
}

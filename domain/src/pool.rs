//! The pool aggregate: `decide` (pure, never mutates) and `evolve` (applies a recorded event).
//!
//! Precedence of rejections, first match wins:
//! 1. `invalid-request` — malformed fields ([`Command::validate`]); not cached.
//! 2. `not-known` for an undeclared pool; not cached (there is no stream to journal it in).
//! 3. The token: same actor, same token within the window → same action and digest replays the
//!    recorded outcome, otherwise `token-collision`; not cached.
//! 4. Ownership: confirm or cancel of a live reservation another actor made, by a role the role
//!    table does not let act for others: `not-owner`; not cached. A role that may (admin) acts
//!    on behalf of the owner, and the event names the owner.
//! 5. The action's own checks, each cached against the token as a `Rejected` event:
//!    - declare_pool: `pool-already-declared`.
//!    - adjust_capacity: `capacity-below-allocated`.
//!    - close_pool: `pool-closed` (already closed).
//!    - reserve: `pool-closed` (closed, or `now >= closes_at`) → `pool-capacity-exceeded` →
//!      `invalid-request` (resource is not a unit of a pool with named units, or count ≠ 1 there)
//!      → `resource-unavailable` (the unit is held by a live reservation).
//!    - confirm_reservation: `not-known` → `not-held` → `window-elapsed` (`now >= expires_at`).
//!    - cancel_reservation: `not-known` → `not-held`.
//!    - expire_reservation: `not-known` → `not-held` → `window-not-elapsed` (`now < expires_at`).
//!
//! `recording-failure` is never decided here: it is what the edge answers when the store fails.

use foldhash::{HashMap, HashSet};

use crate::token_index::TokenIndex;

use crate::command::{Action, ActionKind, Command};
use crate::event::{Change, Event, OnBehalfOf, Outcome, ReservationState};
use crate::ids::{
    ActorId, IdempotencyToken, ParamsDigest, PoolId, RESERVATION_ID_SEPARATOR, ReservationId,
    Timestamp,
};
use crate::rejection::Rejection;
use crate::roles::Permission;

/// Open for new reservations, or closed by an administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolStatus {
    #[default]
    Open,
    Closed,
}

/// A live reservation (Held or Confirmed) as [`Pool::live`] and [`Pool::query`] show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The named unit held, in pools with named units.
    pub unit: Option<Box<str>>,
    pub count: u32,
    pub state: ReservationState,
    pub reserved_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What the aggregate keeps of a live reservation: only what decisions need (the state is in
/// `Pool::states`, the unit is an index into the pool's sorted unit names, the owner is kept
/// inline). Terminal reservations keep only their state byte; labels such as the requester
/// live in the events.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveHold {
    reserved_at: Timestamp,
    expires_at: Timestamp,
    count: u32,
    unit: u32,
    owner: Owner,
}

/// Longest actor id kept inline in a hold; longer ones (up to the 128-byte limit) are boxed.
const OWNER_INLINE_BYTES_MAX: usize = 22;

/// The actor that made a live hold. Actor ids are short ASCII, so a hold keeps its owner in
/// place: no allocation and no table shared by the pool's holds, whose lookups and growth cost a
/// pool that many actors reserve in (every hold of a pool is usually another actor's).
#[derive(Clone, PartialEq, Eq)]
enum Owner {
    Inline {
        len: u8,
        bytes: [u8; OWNER_INLINE_BYTES_MAX],
    },
    Boxed(Box<str>),
}

impl Owner {
    fn new(actor: &ActorId) -> Owner {
        let text = actor.as_str();
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= OWNER_INLINE_BYTES_MAX => {
                let mut bytes = [0; OWNER_INLINE_BYTES_MAX];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Owner::Inline { len, bytes }
            }
            _ => Owner::Boxed(text.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Owner::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Owner::Boxed(text) => text.as_bytes(),
        }
    }

    fn is(&self, actor: &ActorId) -> bool {
        self.as_bytes() == actor.as_str().as_bytes()
    }

    fn to_actor(&self) -> ActorId {
        ActorId::new(String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// `LiveHold::unit` of a hold in a pool without named units.
const NO_UNIT: u32 = u32::MAX;

/// What `query_reservation` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationStatus {
    pub reservation: ReservationId,
    pub state: ReservationState,
    pub slot_held: bool,
    /// Present while the reservation is live.
    pub hold: Option<Hold>,
}

/// A token's recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub action: ActionKind,
    pub digest: ParamsDigest,
    pub outcome: Outcome,
    pub recorded_at: Timestamp,
}

/// A cached outcome without the pool id every outcome of a pool repeats: the common outcomes are
/// numbers; any other rejection is kept whole.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CachedOutcome {
    PoolDeclared,
    CapacityAdjusted(u64),
    PoolClosed,
    Reserved {
        seq: u64,
        expires_at: Timestamp,
    },
    Confirmed(u64),
    Released(u64),
    Expired(u64),
    /// `not-known` for reservation `seq` of this pool.
    NotKnownReservation(u64),
    NotHeld(ReservationState),
    WindowElapsed(Timestamp),
    WindowNotElapsed(Timestamp),
    Rejected(Box<Rejection>),
}

/// Whether `id` is exactly the text of reservation `seq` of `pool` (`pool:seq`, no leading zero).
fn names_reservation(id: &str, pool: &PoolId, seq: u64) -> bool {
    let Some(digits) = id
        .strip_prefix(pool.as_str())
        .and_then(|rest| rest.strip_prefix(RESERVATION_ID_SEPARATOR))
    else {
        return false;
    };
    !digits.starts_with('0')
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && digits.parse::<u64>() == Ok(seq)
}

impl CachedOutcome {
    /// `event.outcome()`, compacted. `outcome(pool)` gives back exactly `event.outcome()`.
    fn of(event: &Event) -> CachedOutcome {
        match &event.change {
            Change::PoolDeclared => CachedOutcome::PoolDeclared,
            Change::CapacityAdjusted { .. } => {
                CachedOutcome::CapacityAdjusted(match event.action {
                    Action::AdjustCapacity { capacity } => capacity,
                    _ => 0,
                })
            }
            Change::PoolClosed => CachedOutcome::PoolClosed,
            Change::Reserved {
                reservation,
                expires_at,
            } => CachedOutcome::Reserved {
                seq: *reservation,
                expires_at: *expires_at,
            },
            Change::Confirmed { reservation } => CachedOutcome::Confirmed(*reservation),
            Change::Released { reservation } => CachedOutcome::Released(*reservation),
            Change::Expired { reservation, .. } => CachedOutcome::Expired(*reservation),
            Change::Rejected(rejection) => match (rejection, event.action.reservation()) {
                (Rejection::NotKnown { what, id }, Some(seq))
                    if what == "reservation" && names_reservation(id, &event.pool, seq) =>
                {
                    CachedOutcome::NotKnownReservation(seq)
                }
                (Rejection::NotHeld { state }, _) => CachedOutcome::NotHeld(*state),
                (Rejection::WindowElapsed { expires_at }, _) => {
                    CachedOutcome::WindowElapsed(*expires_at)
                }
                (Rejection::WindowNotElapsed { expires_at }, _) => {
                    CachedOutcome::WindowNotElapsed(*expires_at)
                }
                (other, _) => CachedOutcome::Rejected(Box::new(other.clone())),
            },
        }
    }

    fn outcome(&self, pool: &PoolId) -> Outcome {
        let reservation = |seq: u64| ReservationId {
            pool: pool.clone(),
            seq,
        };
        match self {
            CachedOutcome::PoolDeclared => Outcome::PoolDeclared { pool: pool.clone() },
            CachedOutcome::CapacityAdjusted(capacity) => Outcome::CapacityAdjusted {
                capacity: *capacity,
            },
            CachedOutcome::PoolClosed => Outcome::PoolClosed { pool: pool.clone() },
            CachedOutcome::Reserved { seq, expires_at } => Outcome::Reserved {
                reservation: reservation(*seq),
                expires_at: *expires_at,
            },
            CachedOutcome::Confirmed(seq) => Outcome::Confirmed {
                reservation: reservation(*seq),
            },
            CachedOutcome::Released(seq) => Outcome::Released {
                reservation: reservation(*seq),
            },
            CachedOutcome::Expired(seq) => Outcome::Expired {
                reservation: reservation(*seq),
            },
            CachedOutcome::NotKnownReservation(seq) => Outcome::Rejected(Rejection::NotKnown {
                what: "reservation".to_owned(),
                id: reservation(*seq).to_string(),
            }),
            CachedOutcome::NotHeld(state) => {
                Outcome::Rejected(Rejection::NotHeld { state: *state })
            }
            CachedOutcome::WindowElapsed(expires_at) => {
                Outcome::Rejected(Rejection::WindowElapsed {
                    expires_at: *expires_at,
                })
            }
            CachedOutcome::WindowNotElapsed(expires_at) => {
                Outcome::Rejected(Rejection::WindowNotElapsed {
                    expires_at: *expires_at,
                })
            }
            CachedOutcome::Rejected(rejection) => Outcome::Rejected((**rejection).clone()),
        }
    }
}

/// A token's record as the cache keeps it (its time is the index's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CachedToken {
    digest: ParamsDigest,
    outcome: CachedOutcome,
    action: ActionKind,
}

/// Token outcomes of one pool, keyed by (actor, token) in recording order. A token is answered
/// only within `window` of its recording (`lookup` checks the time); every event forgets the
/// oldest records past it, so memory follows the window, at the same events in live service and
/// replay. See [`TokenIndex`] for why it is not a plain map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenCache {
    /// The pool's id, which every outcome names (kept once, not per record).
    pool: PoolId,
    records: TokenIndex<CachedToken>,
    /// Nothing is recorded, looked up or forgotten: the pool of a fold whose caller checks
    /// tokens itself ([`Pool::without_token_cache`]).
    untracked: bool,
}

impl TokenCache {
    fn lookup(
        &self,
        actor: &ActorId,
        token: &IdempotencyToken,
        now: Timestamp,
        window_ms: u64,
    ) -> Option<&CachedToken> {
        if self.untracked {
            return None;
        }
        let (recorded_at, record) = self.records.get(actor.as_str(), token.as_str())?;
        (now < recorded_at.plus_ms(window_ms)).then_some(record)
    }

    fn forget_before(&mut self, now: Timestamp, window_ms: u64) {
        if !self.untracked {
            self.records.forget_expired(now, window_ms);
        }
    }

    fn record(&mut self, event: &Event) {
        if self.untracked {
            return;
        }
        let record = CachedToken {
            digest: event.digest,
            outcome: CachedOutcome::of(event),
            action: event.action.kind(),
        };
        self.records
            .record(event.actor.as_str(), event.token.as_str(), event.at, record);
    }

    fn view(&self, recorded_at: Timestamp, record: &CachedToken) -> TokenRecord {
        TokenRecord {
            action: record.action,
            digest: record.digest,
            outcome: record.outcome.outcome(&self.pool),
            recorded_at,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, actor: &ActorId, token: &IdempotencyToken) -> Option<TokenRecord> {
        let (recorded_at, record) = self.records.get(actor.as_str(), token.as_str())?;
        Some(self.view(recorded_at, record))
    }

    /// Every remembered (actor, token) and its record, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, TokenRecord)> {
        self.records
            .iter()
            .map(move |(actor, token, at, record)| (actor, token, self.view(at, record)))
    }
}

/// What `decide` concluded.
#[allow(clippy::large_enum_variant)] // moved once into the append batch; boxing buys nothing
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new fact to append (a success, or a rejection that is cached against the token).
    Append(Event),
    /// The token was seen within its window with the same action and digest: answer this again.
    Replay(Outcome),
}

/// A recorded event that cannot follow the pool's current state: the log is not one this domain
/// wrote, or it is damaged. Replay stops and reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event cannot apply to pool {pool}: {reason}")]
pub struct EvolveError {
    pub pool: String,
    pub reason: String,
}

/// One pool: its arithmetic, its reservations and its token outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    id: Option<PoolId>,
    capacity: u64,
    allocated: u64,
    status: PoolStatus,
    closes_at: Option<Timestamp>,
    idempotency_window_ms: u64,
    units: HashSet<String>,
    /// The named units, sorted: a live hold names its unit by index here.
    unit_names: Vec<Box<str>>,
    /// Named unit → the live reservation holding it.
    unit_holders: HashMap<String, u64>,
    /// State of reservation `seq` at index `seq - 1`: one byte per reservation ever made.
    states: Vec<ReservationState>,
    /// Held and Confirmed reservations.
    live: HashMap<u64, LiveHold>,
    tokens: TokenCache,
    last_at: Timestamp,
    events_applied: u64,
}

impl Pool {
    /// A pool that keeps no token outcomes, for a fold whose caller checks tokens itself (the
    /// audit keeps its own index of the same window, and a second one of every token doubled
    /// its memory and most of its time on a large log). `evolve` then does not refuse a token
    /// recorded twice within its window, and `decide` replays nothing: never for the command
    /// path.
    pub fn without_token_cache() -> Pool {
        let mut pool = Pool::default();
        pool.tokens.untracked = true;
        pool
    }

    pub fn id(&self) -> Option<&PoolId> {
        self.id.as_ref()
    }
    pub fn is_declared(&self) -> bool {
        self.id.is_some()
    }
    /// The actor that made live reservation `seq`, if it is live and that actor is not `actor`.
    fn other_owner(&self, seq: u64, actor: &ActorId) -> Option<ActorId> {
        self.live
            .get(&seq)
            .filter(|hold| !hold.owner.is(actor))
            .map(|hold| hold.owner.to_actor())
    }
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
    pub fn status(&self) -> PoolStatus {
        self.status
    }
    pub fn closes_at(&self) -> Option<Timestamp> {
        self.closes_at
    }
    pub fn idempotency_window_ms(&self) -> u64 {
        self.idempotency_window_ms
    }
    pub fn units(&self) -> &HashSet<String> {
        &self.units
    }
    /// Time of the last applied event; `decide` never goes earlier.
    pub fn last_at(&self) -> Timestamp {
        self.last_at
    }
    /// Number of events applied: the stream's next version.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }
    /// Reservations ever made in this pool.
    pub fn reservations_made(&self) -> u64 {
        self.states.len() as u64
    }
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }
    /// Live reservations (Held and Confirmed), in no order.
    pub fn live(&self) -> impl Iterator<Item = (u64, Hold)> + '_ {
        self.live
            .iter()
            .map(|(seq, hold)| (*seq, self.hold_view(*seq, hold)))
    }
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    fn hold_view(&self, seq: u64, hold: &LiveHold) -> Hold {
        Hold {
            unit: usize::try_from(hold.unit)
                .ok()
                .and_then(|index| self.unit_names.get(index))
                .cloned(),
            count: hold.count,
            state: self.state_of(seq).unwrap_or(ReservationState::Held),
            reserved_at: hold.reserved_at,
            expires_at: hold.expires_at,
        }
    }

    /// `query_reservation`: read-only, no event.
    pub fn query(&self, seq: u64) -> Option<ReservationStatus> {
        let id = self.id.as_ref()?;
        let state = self.state_of(seq)?;
        Some(ReservationStatus {
            reservation: ReservationId {
                pool: id.clone(),
                seq,
            },
            state,
            slot_held: state.holds_slot(),
            hold: self.live.get(&seq).map(|hold| self.hold_view(seq, hold)),
        })
    }

    fn state_of(&self, seq: u64) -> Option<ReservationState> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.states.get(index).copied()
    }

    fn live_hold(&self, seq: u64) -> Result<&LiveHold, Rejection> {
        let pool = self.id.as_ref().map(PoolId::as_str).unwrap_or_default();
        let state = self.state_of(seq).ok_or_else(|| Rejection::NotKnown {
            what: "reservation".to_owned(),
            id: format!("{pool}:{seq}"),
        })?;
        match self.live.get(&seq) {
            Some(hold) if state == ReservationState::Held => Ok(hold),
            _ => Err(Rejection::NotHeld { state }),
        }
    }
}

/// The result of an action's own checks: the change and the pool/reservation arithmetic.
struct Effect {
    change: Change,
    allocated_after: u64,
    prior_state: Option<ReservationState>,
    new_state: Option<ReservationState>,
}

/// Decides `command` against `pool` at `now`. Pure: the same inputs give the same answer.
pub fn decide(pool: &Pool, command: &Command, now: Timestamp) -> Result<Decision, Rejection> {
    command.validate()?;
    let now = now.max(pool.last_at);
    let event = |effect: Effect, allocated_before: u64| Event {
        pool: command.pool.clone(),
        at: now,
        actor: command.actor.clone(),
        attestation: command.attestation.clone(),
        token: command.token.clone(),
        digest: command.digest,
        action: command.action.clone(),
        allocated_before,
        allocated_after: effect.allocated_after,
        prior_state: effect.prior_state,
        new_state: effect.new_state,
        change: effect.change,
        on_behalf_of: OnBehalfOf::Nobody,
        batch: command.batch.clone(),
    };

    let Some(id) = pool.id.as_ref() else {
        if let Action::DeclarePool { .. } = command.action {
            let effect = Effect {
                change: Change::PoolDeclared,
                allocated_after: 0,
                prior_state: None,
                new_state: None,
            };
            return Ok(Decision::Append(event(effect, 0)));
        }
        return Err(Rejection::NotKnown {
            what: "pool".to_owned(),
            id: command.pool.to_string(),
        });
    };
    if *id != command.pool {
        return Err(Rejection::invalid(
            "pool_id",
            "command routed to another pool",
        ));
    }

    if let Some(record) = pool.tokens.lookup(
        &command.actor,
        &command.token,
        now,
        pool.idempotency_window_ms,
    ) {
        if record.action == command.action.kind() && record.digest == command.digest {
            return Ok(Decision::Replay(record.outcome.outcome(id)));
        }
        return Err(Rejection::TokenCollision {
            recorded_action: record.action.as_str().to_owned(),
        });
    }

    // Confirm and cancel act on a reservation its owner made, or on behalf of the owner by a
    // role that may act for others (the event then names the owner).
    let on_behalf_of = match &command.action {
        Action::ConfirmReservation { reservation } | Action::CancelReservation { reservation } => {
            match pool.other_owner(*reservation, &command.actor) {
                Some(_) if !command.role.allows(Permission::ActForOthers) => {
                    return Err(Rejection::NotOwner {
                        reservation: ReservationId {
                            pool: id.clone(),
                            seq: *reservation,
                        },
                    });
                }
                Some(owner) => OnBehalfOf::Owner(owner),
                None => OnBehalfOf::Nobody,
            }
        }
        _ => OnBehalfOf::Nobody,
    };

    let effect = match decide_action(pool, &command.action, now) {
        Ok(effect) => effect,
        Err(rejection) => {
            let state = command
                .action
                .reservation()
                .and_then(|seq| pool.state_of(seq));
            Effect {
                change: Change::Rejected(rejection),
                allocated_after: pool.allocated,
                prior_state: state,
                new_state: state,
            }
        }
    };
    let mut event = event(effect, pool.allocated);
    event.on_behalf_of = on_behalf_of;
    Ok(Decision::Append(event))
}

fn decide_action(pool: &Pool, action: &Action, now: Timestamp) -> Result<Effect, Rejection> {
    let unchanged = |change: Change| Effect {
        change,
        allocated_after: pool.allocated,
        prior_state: None,
        new_state: None,
    };
    match action {
        Action::DeclarePool { .. } => Err(Rejection::PoolAlreadyDeclared {
            pool: pool.id.as_ref().map(PoolId::to_string).unwrap_or_default(),
        }),
        Action::AdjustCapacity { capacity } => {
            if *capacity < pool.allocated {
                return Err(Rejection::CapacityBelowAllocated {
                    capacity: *capacity,
                    allocated: pool.allocated,
                });
            }
            Ok(unchanged(Change::CapacityAdjusted {
                capacity_before: pool.capacity,
            }))
        }
        Action::ClosePool => {
            if pool.status == PoolStatus::Closed {
                return Err(Rejection::PoolClosed {
                    reason: "already closed".to_owned(),
                });
            }
            Ok(unchanged(Change::PoolClosed))
        }
        Action::Reserve {
            resource,
            duration_ms,
            count,
            ..
        } => {
            if pool.status == PoolStatus::Closed {
                return Err(Rejection::PoolClosed {
                    reason: "closed to new reservations".to_owned(),
                });
            }
            if let Some(closes_at) = pool.closes_at
                && now >= closes_at
            {
                return Err(Rejection::PoolClosed {
                    reason: format!("cutoff {closes_at} has passed"),
                });
            }
            let requested = u64::from(*count);
            if pool.allocated + requested > pool.capacity {
                return Err(Rejection::PoolCapacityExceeded {
                    capacity: pool.capacity,
                    allocated: pool.allocated,
                    requested,
                });
            }
            if !pool.units.is_empty() {
                if !pool.units.contains(resource) {
                    return Err(Rejection::invalid("resource", "not a unit of this pool"));
                }
                if *count != 1 {
                    return Err(Rejection::invalid(
                        "count",
                        "a named unit is reserved one at a time",
                    ));
                }
                if let Some(holder) = pool.unit_holders.get(resource) {
                    return Err(Rejection::ResourceUnavailable {
                        resource: resource.clone(),
                        held_by: ReservationId {
                            pool: pool.id.clone().unwrap_or_default(),
                            seq: *holder,
                        },
                    });
                }
            }
            Ok(Effect {
                change: Change::Reserved {
                    reservation: pool.reservations_made() + 1,
                    expires_at: now.plus_ms(*duration_ms),
                },
                allocated_after: pool.allocated + requested,
                prior_state: None,
                new_state: Some(ReservationState::Held),
            })
        }
        Action::ConfirmReservation { reservation } => {
            let hold = pool.live_hold(*reservation)?;
            if now >= hold.expires_at {
                return Err(Rejection::WindowElapsed {
                    expires_at: hold.expires_at,
                });
            }
            Ok(Effect {
                change: Change::Confirmed {
                    reservation: *reservation,
                },
                allocated_after: pool.allocated,
                prior_state: Some(ReservationState::Held),
                new_state: Some(ReservationState::Confirmed),
            })
        }
        Action::CancelReservation { reservation } => {
            let hold = pool.live_hold(*reservation)?;
            Ok(Effect {
                change: Change::Released {
                    reservation: *reservation,
                },
                allocated_after: pool.allocated - released_units(hold, ReservationState::Released),
                prior_state: Some(ReservationState::Held),
                new_state: Some(ReservationState::Released),
            })
        }
        Action::ExpireReservation { reservation } => {
            let hold = pool.live_hold(*reservation)?;
            if now < hold.expires_at {
                return Err(Rejection::WindowNotElapsed {
                    expires_at: hold.expires_at,
                });
            }
            Ok(Effect {
                change: Change::Expired {
                    reservation: *reservation,
                    lateness_ms: now.0 - hold.expires_at.0,
                },
                allocated_after: pool.allocated - released_units(hold, ReservationState::Expired),
                prior_state: Some(ReservationState::Held),
                new_state: Some(ReservationState::Expired),
            })
        }
    }
}

/// Applies a recorded event. Checks that it can follow the current state (so a damaged or
/// foreign log is reported, not folded into a wrong state).
pub fn evolve(pool: &mut Pool, event: &Event) -> Result<(), EvolveError> {
    let fail = |reason: String| EvolveError {
        pool: event.pool.to_string(),
        reason,
    };
    match (&pool.id, &event.change) {
        (None, Change::PoolDeclared) => {}
        (None, _) => return Err(fail("event before the pool was declared".to_owned())),
        (Some(id), _) if *id != event.pool => {
            return Err(fail(format!(
                "event of pool {} in stream of {id}",
                event.pool
            )));
        }
        (Some(_), _) => {}
    }
    if event.at < pool.last_at {
        return Err(fail(format!(
            "time goes backwards: {} after {}",
            event.at, pool.last_at
        )));
    }
    if event.allocated_before != pool.allocated {
        return Err(fail(format!(
            "allocated_before {} but pool has {}",
            event.allocated_before, pool.allocated
        )));
    }
    // Only a confirm or cancel acts on someone's behalf, and `not-owner` is never recorded.
    match (&event.action, &event.change) {
        (_, Change::Rejected(Rejection::NotOwner { .. })) => {
            return Err(fail("not-owner is refused, never recorded".to_owned()));
        }
        (
            Action::ConfirmReservation { reservation } | Action::CancelReservation { reservation },
            _,
        ) => check_on_behalf_of(pool, *reservation, event).map_err(fail)?,
        (_, _) if matches!(event.on_behalf_of, OnBehalfOf::Owner(_)) => {
            return Err(fail(format!(
                "{} names an owner it acted for",
                event.action.kind()
            )));
        }
        _ => {}
    }
    pool.tokens
        .forget_before(event.at, pool.idempotency_window_ms);
    if pool.is_declared()
        && pool
            .tokens
            .lookup(
                &event.actor,
                &event.token,
                event.at,
                pool.idempotency_window_ms,
            )
            .is_some()
    {
        return Err(fail(format!(
            "token {} of {} recorded twice within its window",
            event.token, event.actor
        )));
    }

    match (&event.change, &event.action) {
        (
            Change::PoolDeclared,
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            },
        ) => {
            if pool.is_declared() {
                return Err(fail("pool declared twice".to_owned()));
            }
            pool.id = Some(event.pool.clone());
            pool.tokens.pool = event.pool.clone();
            pool.capacity = *capacity;
            pool.closes_at = *closes_at;
            pool.idempotency_window_ms = *idempotency_window_ms;
            pool.units = units.iter().cloned().collect();
            let mut names: Vec<Box<str>> =
                pool.units.iter().map(|unit| unit.as_str().into()).collect();
            names.sort_unstable();
            pool.unit_names = names;
        }
        (Change::CapacityAdjusted { .. }, Action::AdjustCapacity { capacity }) => {
            if *capacity < pool.allocated {
                return Err(fail(format!(
                    "capacity {capacity} below allocated {}",
                    pool.allocated
                )));
            }
            pool.capacity = *capacity;
        }
        (Change::PoolClosed, Action::ClosePool) => pool.status = PoolStatus::Closed,
        (
            Change::Reserved {
                reservation,
                expires_at,
            },
            Action::Reserve {
                resource, count, ..
            },
        ) => {
            if *reservation != pool.reservations_made() + 1 {
                return Err(fail(format!(
                    "reservation {reservation} out of sequence (next is {})",
                    pool.reservations_made() + 1
                )));
            }
            let allocated = pool.allocated + u64::from(*count);
            if allocated > pool.capacity {
                return Err(fail(format!(
                    "allocated {allocated} would exceed capacity {}",
                    pool.capacity
                )));
            }
            let unit = if pool.units.is_empty() {
                NO_UNIT
            } else {
                if pool.unit_holders.contains_key(resource) {
                    return Err(fail(format!("unit {resource} held twice")));
                }
                let unit = pool
                    .unit_names
                    .binary_search_by(|name| (**name).cmp(resource.as_str()))
                    .ok()
                    .and_then(|index| u32::try_from(index).ok())
                    .ok_or_else(|| fail(format!("{resource} is not a unit of this pool")))?;
                pool.unit_holders.insert(resource.clone(), *reservation);
                unit
            };
            pool.allocated = allocated;
            pool.states.push(ReservationState::Held);
            let owner = Owner::new(&event.actor);
            pool.live.insert(
                *reservation,
                LiveHold {
                    reserved_at: event.at,
                    expires_at: *expires_at,
                    count: *count,
                    unit,
                    owner,
                },
            );
        }
        (Change::Confirmed { reservation }, Action::ConfirmReservation { .. }) => {
            let hold = held(pool, *reservation).map_err(fail)?;
            if event.at >= hold.expires_at {
                return Err(fail(format!(
                    "reservation {reservation} confirmed after its window"
                )));
            }
            pool.states[(*reservation - 1) as usize] = ReservationState::Confirmed;
        }
        (Change::Released { reservation }, Action::CancelReservation { .. }) => {
            release(pool, *reservation, ReservationState::Released).map_err(fail)?;
        }
        (Change::Expired { reservation, .. }, Action::ExpireReservation { .. }) => {
            let expires_at = held(pool, *reservation).map_err(fail)?.expires_at;
            if event.at < expires_at {
                return Err(fail(format!(
                    "reservation {reservation} expired before its window"
                )));
            }
            release(pool, *reservation, ReservationState::Expired).map_err(fail)?;
        }
        (Change::Rejected(_), _) => {}
        (change, action) => {
            return Err(fail(format!(
                "change {change:?} does not follow from action {}",
                action.kind()
            )));
        }
    }
    if event.allocated_after != pool.allocated {
        return Err(fail(format!(
            "allocated_after {} but pool has {}",
            event.allocated_after, pool.allocated
        )));
    }
    pool.tokens.record(event);
    pool.last_at = event.at;
    pool.events_applied += 1;
    Ok(())
}

/// A confirm or cancel names the owner it acted for exactly when its actor is not the owner
/// (events of schema 1 recorded neither, and pass).
fn check_on_behalf_of(pool: &Pool, seq: u64, event: &Event) -> Result<(), String> {
    let Some(hold) = pool.live.get(&seq) else {
        return Ok(());
    };
    let owner = &hold.owner;
    match &event.on_behalf_of {
        OnBehalfOf::Unrecorded => Ok(()),
        OnBehalfOf::Nobody if owner.is(&event.actor) => Ok(()),
        OnBehalfOf::Owner(named) if owner.is(named) && !owner.is(&event.actor) => Ok(()),
        other => Err(format!(
            "reservation {seq} of {owner:?} acted on by {} recorded as on behalf of {other:?}",
            event.actor
        )),
    }
}

/// The live hold of `seq`, if it is Held.
fn held(pool: &Pool, seq: u64) -> Result<&LiveHold, String> {
    match (pool.live.get(&seq), pool.state_of(seq)) {
        (Some(hold), Some(ReservationState::Held)) => Ok(hold),
        (Some(_), Some(state)) => Err(format!("reservation {seq} is {state}, not held")),
        _ => Err(format!("reservation {seq} is not live")),
    }
}

fn release(pool: &mut Pool, seq: u64, terminal: ReservationState) -> Result<(), String> {
    held(pool, seq)?;
    let Some(hold) = pool.live.remove(&seq) else {
        return Err(format!("reservation {seq} is not live"));
    };
    if let Some(unit) = usize::try_from(hold.unit)
        .ok()
        .and_then(|index| pool.unit_names.get(index))
    {
        pool.unit_holders.remove(unit.as_ref());
    }
    pool.allocated = pool
        .allocated
        .checked_sub(released_units(&hold, terminal))
        .ok_or_else(|| format!("releasing reservation {seq} drives allocated below zero"))?;
    pool.states[(seq - 1) as usize] = terminal;
    Ok(())
}

/// Units a terminal transition returns to the pool: all of the hold's, unless a test-only bug
/// switch says otherwise.
fn released_units(hold: &LiveHold, terminal: ReservationState) -> u64 {
    #[cfg(feature = "fault-injection")]
    {
        use crate::fault::{Fault, is_on};
        if (terminal == ReservationState::Released && is_on(Fault::CancelForgetsRelease))
            || (terminal == ReservationState::Expired && is_on(Fault::ExpireForgetsRelease))
        {
            return 0;
        }
    }
    let _ = terminal;
    u64::from(hold.count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Attestation;

    fn event(action: Action, change: Change) -> Event {
        Event {
            pool: PoolId::new("hall"),
            at: Timestamp(5),
            actor: ActorId::new("a"),
            attestation: Attestation::default(),
            token: IdempotencyToken::new("t"),
            digest: ParamsDigest::default(),
            action,
            allocated_before: 0,
            allocated_after: 0,
            prior_state: None,
            new_state: None,
            change,
            on_behalf_of: crate::event::OnBehalfOf::Nobody,
            batch: None,
        }
    }

    #[test]
    fn cached_outcomes_give_back_exactly_the_recorded_outcome() {
        let confirm = Action::ConfirmReservation { reservation: 7 };
        let not_known = |id: &str| {
            Change::Rejected(Rejection::NotKnown {
                what: "reservation".to_owned(),
                id: id.to_owned(),
            })
        };
        let cases = [
            (Action::ClosePool, Change::PoolClosed),
            (
                Action::AdjustCapacity { capacity: 9 },
                Change::CapacityAdjusted { capacity_before: 3 },
            ),
            (
                Action::Reserve {
                    resource: "r".to_owned(),
                    requester: "q".to_owned(),
                    duration_ms: 1_000,
                    count: 1,
                },
                Change::Reserved {
                    reservation: 7,
                    expires_at: Timestamp(1_005),
                },
            ),
            (confirm.clone(), Change::Confirmed { reservation: 7 }),
            (confirm.clone(), not_known("hall:7")),
            // Not the canonical text of reservation 7 of this pool: kept whole.
            (confirm.clone(), not_known("hall:07")),
            (confirm.clone(), not_known("hall:8")),
            (confirm.clone(), not_known("hallway:7")),
            (confirm.clone(), not_known("hall:+7")),
            (
                confirm.clone(),
                Change::Rejected(Rejection::NotKnown {
                    what: "pool".to_owned(),
                    id: "hall:7".to_owned(),
                }),
            ),
            (
                confirm.clone(),
                Change::Rejected(Rejection::NotHeld {
                    state: ReservationState::Released,
                }),
            ),
            (
                confirm.clone(),
                Change::Rejected(Rejection::WindowElapsed {
                    expires_at: Timestamp(4),
                }),
            ),
            (
                Action::ExpireReservation { reservation: 7 },
                Change::Rejected(Rejection::WindowNotElapsed {
                    expires_at: Timestamp(6),
                }),
            ),
            (
                Action::ClosePool,
                Change::Rejected(Rejection::PoolClosed {
                    reason: "already closed".to_owned(),
                }),
            ),
        ];
        let pool = PoolId::new("hall");
        for (action, change) in cases {
            let event = event(action, change);
            let cached = CachedOutcome::of(&event);
            assert_eq!(cached.outcome(&pool), event.outcome(), "{cached:?}");
        }
        assert!(matches!(
            CachedOutcome::of(&event(confirm.clone(), not_known("hall:7"))),
            CachedOutcome::NotKnownReservation(7)
        ));
        assert!(matches!(
            CachedOutcome::of(&event(confirm, not_known("hall:07"))),
            CachedOutcome::Rejected(_)
        ));
    }
}

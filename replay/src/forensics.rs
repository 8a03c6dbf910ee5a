//! Forensics: the investigator's questions, as pure folds over recorded events.
//!
//! - [`as_of`]: who held what, per pool, at an instant (the registrar's "ownership at a
//!   timestamp").
//! - [`stranded_slots`]: terminal reservations whose slot the pool arithmetic never got back.
//! - [`disputed_double_booking`]: a pool's confirmations against its capacity history, saying
//!   for each moment above the declared capacity whether an `adjust_capacity` raised it (an
//!   overbooking choice) or coherence was violated, and naming a named unit (a seat) taken
//!   while another reservation held it.
//! - [`contention_window`]: per second around a deadline, reserve attempts, successes and
//!   rejections by code.
//!
//! Each is a push-based query (`new`, `observe` each record in position order, `finish`) with a
//! function that runs it over an iterator. Each keeps only live state while folding (live
//! reservations, per-second buckets) and caps what it lists with a named limit.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use foldhash::HashMap;

use allot_domain::{
    Action, ActorId, Change, PoolId, RejectionCode, ReservationId, ReservationState, Timestamp,
};
use allot_projections::PoolCount;
use serde::Serialize;

use crate::audit::{Audit, AuditOptions, Check};
use crate::record::{Recorded, fold_records};

/// Widest contention window, in seconds each side of the instant.
pub const CONTENTION_SECONDS_MAX: u64 = 3_600;
/// Most items any forensic list holds (confirmations, moments, history); beyond it, counted.
pub const FORENSIC_ITEMS_MAX: usize = 10_000;

/// Why a forensic query could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForensicsError {
    #[error("contention window of {seconds} s exceeds {CONTENTION_SECONDS_MAX} s")]
    WindowTooWide { seconds: u64 },
    #[error("contention window must be at least one second")]
    WindowEmpty,
}

/// A reservation holding units at the instant asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveReservation {
    pub reservation: ReservationId,
    pub requester: String,
    pub resource: String,
    pub count: u32,
    pub state: ReservationState,
    pub reserved_at: Timestamp,
    pub expires_at: Timestamp,
    /// Held past `expires_at` and not yet expired by the sweeper (it still holds its slot, and
    /// can no longer be confirmed).
    pub window_elapsed: bool,
}

/// One pool at the instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolAsOf {
    pub pool: PoolId,
    pub capacity: u64,
    /// As recorded by the pool's last event at or before the instant.
    pub allocated: u64,
    pub closed: bool,
    pub closes_at: Option<Timestamp>,
    /// Live reservations by sequence (at most [`FORENSIC_ITEMS_MAX`]).
    pub live: Vec<LiveReservation>,
    pub live_omitted: u64,
}

/// Every declared pool at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOf {
    pub at: Timestamp,
    pub pools: Vec<PoolAsOf>,
}

#[derive(Default)]
struct PoolFold {
    declared: bool,
    /// Capacity in force, allocated, closed: the projection's fold.
    counts: PoolCount,
    live: BTreeMap<u64, LiveReservation>,
}

/// Who held what in every pool at an instant, folded one record at a time.
#[derive(Default)]
pub struct AsOfQuery {
    at: Timestamp,
    pools: BTreeMap<PoolId, PoolFold>,
}

impl AsOfQuery {
    pub fn new(at: Timestamp) -> AsOfQuery {
        AsOfQuery {
            at,
            pools: BTreeMap::new(),
        }
    }

    /// Folds one record (events with `at` later than the instant are ignored).
    pub fn observe(&mut self, record: &Recorded) {
        let Recorded::Pool(recorded) = record else {
            return;
        };
        let event = &recorded.event;
        if event.at > self.at {
            return;
        }
        let pools = &mut self.pools;
        let fold = pools.entry(event.pool.clone()).or_default();
        fold.counts.apply(event);
        match (&event.change, &event.action) {
            (Change::PoolDeclared, Action::DeclarePool { .. }) => fold.declared = true,
            (
                Change::Reserved {
                    reservation,
                    expires_at,
                },
                Action::Reserve {
                    resource,
                    requester,
                    count,
                    ..
                },
            ) => {
                fold.live.insert(
                    *reservation,
                    LiveReservation {
                        reservation: ReservationId {
                            pool: event.pool.clone(),
                            seq: *reservation,
                        },
                        requester: requester.clone(),
                        resource: resource.clone(),
                        count: *count,
                        state: ReservationState::Held,
                        reserved_at: event.at,
                        expires_at: *expires_at,
                        window_elapsed: false,
                    },
                );
            }
            (Change::Confirmed { reservation }, _) => {
                if let Some(live) = fold.live.get_mut(reservation) {
                    live.state = ReservationState::Confirmed;
                }
            }
            (Change::Released { reservation } | Change::Expired { reservation, .. }, _) => {
                fold.live.remove(reservation);
            }
            _ => {}
        }
    }

    pub fn finish(self) -> AsOf {
        let at = self.at;
        let pools = self.pools;
        AsOf {
            at,
            pools: pools
                .into_iter()
                .filter(|(_, fold)| fold.declared)
                .map(|(pool, fold)| {
                    let total = fold.live.len();
                    let live: Vec<LiveReservation> = fold
                        .live
                        .into_values()
                        .take(FORENSIC_ITEMS_MAX)
                        .map(|mut live| {
                            live.window_elapsed =
                                live.state == ReservationState::Held && at >= live.expires_at;
                            live
                        })
                        .collect();
                    PoolAsOf {
                        pool,
                        capacity: fold.counts.capacity,
                        allocated: fold.counts.allocated,
                        closed: fold.counts.closed,
                        closes_at: fold.counts.closes_at,
                        live_omitted: (total - live.len()) as u64,
                        live,
                    }
                })
                .collect(),
        }
    }
}

/// Who held what in every pool at `at` (events with `at` later than it are ignored).
pub fn as_of<I, R>(records: I, at: Timestamp) -> AsOf
where
    I: IntoIterator<Item = R>,
    R: Borrow<Recorded>,
{
    fold_records!(records, AsOfQuery::new(at))
}

/// A reservation in a terminal state whose slot never came back to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrandedSlot {
    pub reservation: ReservationId,
    /// Where its terminal event was recorded.
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub detail: String,
}

/// The stranded-slot finder, folded one record at a time (the audit's reconstruction, keeping
/// only its `stranded-slot` findings).
pub struct StrandedSlotsQuery {
    audit: Audit,
}

impl Default for StrandedSlotsQuery {
    fn default() -> Self {
        StrandedSlotsQuery::new()
    }
}

impl StrandedSlotsQuery {
    pub fn new() -> StrandedSlotsQuery {
        let options = AuditOptions {
            violations_max: FORENSIC_ITEMS_MAX,
            ..AuditOptions::records_only()
        };
        StrandedSlotsQuery {
            audit: Audit::keeping_only(options, Check::StrandedSlot),
        }
    }

    pub fn observe(&mut self, record: &Recorded) {
        self.audit.observe(record);
    }

    /// Every stranded slot (at most [`FORENSIC_ITEMS_MAX`]), in position order.
    pub fn finish(self) -> Vec<StrandedSlot> {
        self.audit
            .finish()
            .violations
            .into_iter()
            .filter(|violation| violation.check == Check::StrandedSlot)
            .filter_map(|violation| {
                Some(StrandedSlot {
                    reservation: violation.reservation?,
                    stream: violation.stream,
                    version: violation.version,
                    position: violation.position,
                    detail: violation.detail,
                })
            })
            .collect()
    }
}

/// Every stranded slot of the log (at most [`FORENSIC_ITEMS_MAX`]), in position order.
pub fn stranded_slots<I, R>(records: I) -> Vec<StrandedSlot>
where
    I: IntoIterator<Item = R>,
    R: Borrow<Recorded>,
{
    fold_records!(records, StrandedSlotsQuery::new())
}

/// A change of a pool's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapacityChange {
    pub at: Timestamp,
    pub version: u64,
    pub position: u64,
    pub actor: ActorId,
    /// `None` for the declaration.
    pub capacity_before: Option<u64>,
    pub capacity: u64,
}

/// A confirmation, against the capacity in force when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmation {
    pub reservation: ReservationId,
    pub requester: String,
    pub resource: String,
    pub count: u32,
    pub at: Timestamp,
    pub version: u64,
    pub position: u64,
    pub capacity: u64,
    /// Confirmed units in the pool after this confirmation.
    pub confirmed_units: u64,
}

/// Why the pool held more confirmed units than it was declared with, or than its capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// An `adjust_capacity` raised the capacity: an overbooking choice on record.
    CapacityRaised {
        adjusted_at: Timestamp,
        position: u64,
        actor: ActorId,
        capacity: u64,
    },
    /// The records contradict the pool arithmetic: a genuine finding.
    CoherenceViolated { detail: String },
}

/// A moment at which the pool held more confirmed units than first declared, or more than it
/// could.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoubleBookingMoment {
    pub at: Timestamp,
    pub version: u64,
    pub position: u64,
    pub reservation: Option<ReservationId>,
    pub confirmed_units: u64,
    pub declared_capacity: u64,
    pub capacity: u64,
    pub verdict: Verdict,
}

/// The same requester holding the same resource twice under different tokens: a client whose
/// retry used a fresh token (token discipline), not an oversell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepeatRequest {
    pub requester: String,
    pub resource: String,
    pub first: ReservationId,
    pub second: ReservationId,
    pub position: u64,
}

/// The dispute view of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoubleBookingView {
    pub pool: PoolId,
    pub declared_capacity: Option<u64>,
    pub capacity_history: Vec<CapacityChange>,
    pub confirmations: Vec<Confirmation>,
    pub moments: Vec<DoubleBookingMoment>,
    pub repeat_requests: Vec<RepeatRequest>,
    /// Items not listed because a list reached [`FORENSIC_ITEMS_MAX`].
    pub omitted: u64,
}

impl DoubleBookingView {
    /// Whether every moment above the declared capacity is explained by a recorded raise.
    pub fn explained_by_capacity_raises(&self) -> bool {
        self.moments
            .iter()
            .all(|moment| matches!(moment.verdict, Verdict::CapacityRaised { .. }))
    }
}

fn push_capped<T>(list: &mut Vec<T>, item: T, omitted: &mut u64) {
    if list.len() < FORENSIC_ITEMS_MAX {
        list.push(item);
    } else {
        *omitted += 1;
    }
}

struct DisputeLive {
    requester: String,
    resource: String,
    count: u32,
    state: ReservationState,
}

/// The dispute view of one pool, folded one record at a time.
pub struct DisputeQuery {
    pool: PoolId,
    view: DoubleBookingView,
    /// Capacity in force: the projection's fold.
    counts: PoolCount,
    last_raise: Option<CapacityChange>,
    live: HashMap<u64, DisputeLive>,
    live_units: u64,
    confirmed_units: u64,
    /// (requester, resource) → the live reservation holding it.
    holder_of: HashMap<(String, String), u64>,
    /// Whether the pool declared named units (a seat map).
    named_units: bool,
    /// Named unit → the live reservation holding it.
    unit_holders: HashMap<String, u64>,
}

impl DisputeQuery {
    pub fn new(pool: &PoolId) -> DisputeQuery {
        DisputeQuery {
            pool: pool.clone(),
            view: DoubleBookingView {
                pool: pool.clone(),
                declared_capacity: None,
                capacity_history: Vec::new(),
                confirmations: Vec::new(),
                moments: Vec::new(),
                repeat_requests: Vec::new(),
                omitted: 0,
            },
            counts: PoolCount::default(),
            last_raise: None,
            live: HashMap::default(),
            live_units: 0,
            confirmed_units: 0,
            holder_of: HashMap::default(),
            named_units: false,
            unit_holders: HashMap::default(),
        }
    }

    pub fn observe(&mut self, record: &Recorded) {
        let pool = &self.pool;
        let view = &mut self.view;
        let last_raise = &mut self.last_raise;
        let live = &mut self.live;
        let holder_of = &mut self.holder_of;
        let unit_holders = &mut self.unit_holders;
        let mut live_units = self.live_units;
        let mut confirmed_units = self.confirmed_units;
        let Recorded::Pool(recorded) = record else {
            return;
        };
        let event = &recorded.event;
        if event.pool != *pool {
            return;
        }
        let capacity_before = self.counts.capacity;
        self.counts.apply(event);
        let capacity = self.counts.capacity;
        let id = |seq: u64| ReservationId {
            pool: pool.clone(),
            seq,
        };
        let mut finding: Option<String> = None;
        match (&event.change, &event.action) {
            (Change::PoolDeclared, Action::DeclarePool { units, .. }) => {
                self.named_units = !units.is_empty();
                view.declared_capacity = Some(capacity);
                let change = CapacityChange {
                    at: event.at,
                    version: recorded.version,
                    position: recorded.position,
                    actor: event.actor.clone(),
                    capacity_before: None,
                    capacity,
                };
                push_capped(&mut view.capacity_history, change, &mut view.omitted);
            }
            (Change::CapacityAdjusted { .. }, Action::AdjustCapacity { .. }) => {
                let change = CapacityChange {
                    at: event.at,
                    version: recorded.version,
                    position: recorded.position,
                    actor: event.actor.clone(),
                    capacity_before: Some(capacity_before),
                    capacity,
                };
                if capacity > capacity_before {
                    *last_raise = Some(change.clone());
                }
                push_capped(&mut view.capacity_history, change, &mut view.omitted);
            }
            (
                Change::Reserved { reservation, .. },
                Action::Reserve {
                    resource,
                    requester,
                    count,
                    ..
                },
            ) => {
                let key = (requester.clone(), resource.clone());
                if let Some(first) = holder_of.get(&key) {
                    let repeat = RepeatRequest {
                        requester: requester.clone(),
                        resource: resource.clone(),
                        first: id(*first),
                        second: id(*reservation),
                        position: recorded.position,
                    };
                    push_capped(&mut view.repeat_requests, repeat, &mut view.omitted);
                }
                holder_of.insert(key, *reservation);
                if self.named_units {
                    if let Some(holder) = unit_holders.get(resource)
                        && live.contains_key(holder)
                    {
                        finding = Some(format!(
                            "unit {resource} taken by reservation {reservation} while reservation {holder} holds it"
                        ));
                    }
                    unit_holders.insert(resource.clone(), *reservation);
                }
                live_units += u64::from(*count);
                live.insert(
                    *reservation,
                    DisputeLive {
                        requester: requester.clone(),
                        resource: resource.clone(),
                        count: *count,
                        state: ReservationState::Held,
                    },
                );
            }
            (Change::Confirmed { reservation }, _) => match live.get_mut(reservation) {
                Some(hold) if hold.state == ReservationState::Held => {
                    hold.state = ReservationState::Confirmed;
                    confirmed_units += u64::from(hold.count);
                    let confirmation = Confirmation {
                        reservation: id(*reservation),
                        requester: hold.requester.clone(),
                        resource: hold.resource.clone(),
                        count: hold.count,
                        at: event.at,
                        version: recorded.version,
                        position: recorded.position,
                        capacity,
                        confirmed_units,
                    };
                    push_capped(&mut view.confirmations, confirmation, &mut view.omitted);
                }
                Some(_) => finding = Some("confirm of a reservation already confirmed".into()),
                None => {
                    finding = Some(format!(
                        "confirm of reservation {reservation}, which holds no slot"
                    ));
                }
            },
            (Change::Released { reservation } | Change::Expired { reservation, .. }, _) => {
                match live.remove(reservation) {
                    Some(hold) => {
                        live_units = live_units.saturating_sub(u64::from(hold.count));
                        if hold.state == ReservationState::Confirmed {
                            confirmed_units = confirmed_units.saturating_sub(u64::from(hold.count));
                        }
                        if unit_holders.get(&hold.resource) == Some(reservation) {
                            unit_holders.remove(&hold.resource);
                        }
                        let key = (hold.requester, hold.resource);
                        if holder_of.get(&key) == Some(reservation) {
                            holder_of.remove(&key);
                        }
                    }
                    None => {
                        finding = Some(format!(
                            "release of reservation {reservation}, which held no slot"
                        ));
                    }
                }
            }
            _ => {}
        }
        if finding.is_none() && event.allocated_after != live_units {
            finding = Some(format!(
                "allocated_after {} but live reservations hold {live_units}",
                event.allocated_after
            ));
        }
        if finding.is_none() && confirmed_units > capacity {
            finding = Some(format!(
                "{confirmed_units} confirmed units exceed capacity {capacity}"
            ));
        }
        let declared = view.declared_capacity.unwrap_or(0);
        let above_declared =
            confirmed_units > declared && matches!(event.change, Change::Confirmed { .. });
        let verdict = match (finding, above_declared, last_raise.as_ref()) {
            (Some(detail), _, _) => Some(Verdict::CoherenceViolated { detail }),
            (None, true, Some(raise)) => Some(Verdict::CapacityRaised {
                adjusted_at: raise.at,
                position: raise.position,
                actor: raise.actor.clone(),
                capacity: raise.capacity,
            }),
            (None, true, None) => Some(Verdict::CoherenceViolated {
                detail: format!(
                    "{confirmed_units} confirmed units exceed the declared {declared} with no recorded raise"
                ),
            }),
            (None, false, _) => None,
        };
        if let Some(verdict) = verdict {
            let moment = DoubleBookingMoment {
                at: event.at,
                version: recorded.version,
                position: recorded.position,
                reservation: event.reservation(),
                confirmed_units,
                declared_capacity: declared,
                capacity,
                verdict,
            };
            push_capped(&mut view.moments, moment, &mut view.omitted);
        }

        self.live_units = live_units;
        self.confirmed_units = confirmed_units;
    }

    pub fn finish(self) -> DoubleBookingView {
        self.view
    }
}

/// Confirmed reservations of `pool` against its capacity history.
pub fn disputed_double_booking<I, R>(records: I, pool: &PoolId) -> DoubleBookingView
where
    I: IntoIterator<Item = R>,
    R: Borrow<Recorded>,
{
    fold_records!(records, DisputeQuery::new(pool))
}

/// One second of a contention window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentionSecond {
    pub second_start: Timestamp,
    /// Seconds from the instant asked about (negative before it).
    pub offset_seconds: i64,
    /// Reserve events, accepted or rejected.
    pub attempts: u64,
    pub successes: u64,
    pub rejections: BTreeMap<RejectionCode, u64>,
    /// Slots returned (cancellations and expiries) in this second.
    pub releases: u64,
}

/// Reserve traffic of one pool, per second, around an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentionWindow {
    pub pool: PoolId,
    pub around: Timestamp,
    pub closes_at: Option<Timestamp>,
    pub seconds: Vec<ContentionSecond>,
    pub attempts: u64,
    pub successes: u64,
    pub rejections: BTreeMap<RejectionCode, u64>,
}

/// Milliseconds per bucket of a contention window.
const MS_PER_SECOND: u64 = 1_000;

/// A contention window, folded one record at a time.
pub struct ContentionQuery {
    start: u64,
    end: u64,
    window: ContentionWindow,
}

impl ContentionQuery {
    /// Per second in `[around - seconds, around + seconds)`, for `pool`.
    pub fn new(
        pool: &PoolId,
        around: Timestamp,
        seconds: u64,
    ) -> Result<ContentionQuery, ForensicsError> {
        if seconds == 0 {
            return Err(ForensicsError::WindowEmpty);
        }
        if seconds > CONTENTION_SECONDS_MAX {
            return Err(ForensicsError::WindowTooWide { seconds });
        }
        let start = around.0.saturating_sub(seconds * MS_PER_SECOND);
        let end = around.0.saturating_add(seconds * MS_PER_SECOND);
        let buckets = (end - start).div_ceil(MS_PER_SECOND);
        let before = ((around.0 - start) / MS_PER_SECOND) as i64;
        Ok(ContentionQuery {
            start,
            end,
            window: ContentionWindow {
                pool: pool.clone(),
                around,
                closes_at: None,
                seconds: (0..buckets)
                    .map(|i| ContentionSecond {
                        second_start: Timestamp(start + i * MS_PER_SECOND),
                        offset_seconds: i as i64 - before,
                        attempts: 0,
                        successes: 0,
                        rejections: BTreeMap::new(),
                        releases: 0,
                    })
                    .collect(),
                attempts: 0,
                successes: 0,
                rejections: BTreeMap::new(),
            },
        })
    }

    pub fn observe(&mut self, record: &Recorded) {
        let Recorded::Pool(recorded) = record else {
            return;
        };
        let event = &recorded.event;
        let window = &mut self.window;
        if event.pool != window.pool {
            return;
        }
        if let Action::DeclarePool { closes_at, .. } = &event.action
            && matches!(event.change, Change::PoolDeclared)
        {
            window.closes_at = *closes_at;
        }
        if event.at.0 < self.start || event.at.0 >= self.end {
            return;
        }
        let index = ((event.at.0 - self.start) / MS_PER_SECOND) as usize;
        let Some(second) = window.seconds.get_mut(index) else {
            return;
        };
        match (&event.change, &event.action) {
            (Change::Reserved { .. }, _) => {
                second.attempts += 1;
                second.successes += 1;
                window.attempts += 1;
                window.successes += 1;
            }
            (Change::Rejected(rejection), Action::Reserve { .. }) => {
                second.attempts += 1;
                window.attempts += 1;
                *second.rejections.entry(rejection.code()).or_default() += 1;
                *window.rejections.entry(rejection.code()).or_default() += 1;
            }
            (Change::Released { .. } | Change::Expired { .. }, _) => second.releases += 1,
            _ => {}
        }
    }

    pub fn finish(self) -> ContentionWindow {
        self.window
    }
}

/// Per second in `[around - seconds, around + seconds)`: reserve attempts, successes,
/// rejections by code, and releases, for `pool`.
pub fn contention_window<I, R>(
    records: I,
    pool: &PoolId,
    around: Timestamp,
    seconds: u64,
) -> Result<ContentionWindow, ForensicsError>
where
    I: IntoIterator<Item = R>,
    R: Borrow<Recorded>,
{
    Ok(fold_records!(
        records,
        ContentionQuery::new(pool, around, seconds)?
    ))
}

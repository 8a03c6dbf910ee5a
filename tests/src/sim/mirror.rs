//! The log mirror: folds the recorded log as it grows, three ways, and checks the seven
//! invariants on the result.
//!
//! 1. The domain's `evolve` into fresh `Pool`s (what `Service::load_pool` computes).
//! 2. The projections' `apply` into fresh `Projections` (what `Service::open` rebuilds).
//! 3. Its own arithmetic, trusting neither: units per reservation, allocated, capacity, states,
//!    so a bug shared by `decide` and `evolve` (a test-only fault switch, say) still shows.
//!
//! It reads the inner memory store directly, never through the fault injector.

use std::collections::{BTreeMap, HashMap};

use allot_domain::streams::{ACTORS_STREAM, stream_pool};
use allot_domain::{
    Action, ActorId, Change, Event, IdempotencyToken, Outcome, Pool, PoolId, ReservationState,
    Timestamp, codec, evolve,
};
use allot_projections::{ProjectionContents, Projections};
use allot_replay::{Audit, AuditOptions, Recorded, RecordedActorEvent, RecordedPoolEvent};
use allot_server::store::memory::MemoryStore;
use allot_server::store::{EventStore, RecordedEvent};

/// Events read per page from the inner store.
const PAGE_EVENTS: usize = 4096;

/// A reservation as the mirror's own arithmetic sees it.
#[derive(Debug, Clone, Copy)]
struct Unit {
    count: u32,
    expires_at: Timestamp,
    state: ReservationState,
    /// Terminal events seen (Released or Expired); more than one is a double release.
    terminals: u32,
}

/// A pool as the mirror's own arithmetic sees it.
#[derive(Debug, Default)]
struct Arithmetic {
    capacity: u64,
    allocated: u64,
    reservations: BTreeMap<u64, Unit>,
}

impl Arithmetic {
    fn units_in(&self, state: ReservationState) -> u64 {
        self.reservations
            .values()
            .filter(|unit| unit.state == state)
            .map(|unit| u64::from(unit.count))
            .sum()
    }
}

/// One recorded use of a token: when, and the outcome it recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    pub at: Timestamp,
    pub outcome: Outcome,
}

type TokenKey = (PoolId, ActorId, IdempotencyToken);

/// The mirror of the log.
#[derive(Debug, Default)]
pub struct Mirror {
    after: Option<u64>,
    pools: BTreeMap<PoolId, Pool>,
    arithmetic: BTreeMap<PoolId, Arithmetic>,
    projections: Projections,
    tokens: HashMap<TokenKey, Vec<TokenUse>>,
    records: Vec<Recorded>,
    /// Each pool's events in stream order, to fold a prefix of the log.
    history: BTreeMap<PoolId, Vec<(u64, Event)>>,
    /// Per service instance, the fold of each pool's log up to where its projections are.
    lagging: BTreeMap<usize, Projections>,
}

impl Mirror {
    /// Folds every record appended since the last call.
    pub async fn catch_up(&mut self, store: &MemoryStore) -> Result<(), String> {
        loop {
            let page = store
                .read_all(self.after, PAGE_EVENTS)
                .await
                .map_err(|error| format!("mirror cannot read the log: {error}"))?;
            for recorded in &page {
                self.after = Some(recorded.position);
                self.fold(recorded)?;
            }
            if page.len() < PAGE_EVENTS {
                return Ok(());
            }
        }
    }

    fn fold(&mut self, recorded: &RecordedEvent) -> Result<(), String> {
        let at = format!("{}@{}", recorded.stream, recorded.version);
        if recorded.stream == ACTORS_STREAM {
            let event = codec::decode_actor_event(&recorded.payload)
                .map_err(|error| format!("{at}: actor event does not decode: {error}"))?;
            self.records.push(Recorded::Actor(RecordedActorEvent {
                version: recorded.version,
                position: recorded.position,
                event,
            }));
            return Ok(());
        }
        let Some(pool_id) = stream_pool(&recorded.stream) else {
            return Err(format!("{at}: a stream that is neither a pool nor actors"));
        };
        let event = codec::decode_event(&recorded.payload)
            .map_err(|error| format!("{at}: pool event does not decode: {error}"))?;
        if event.pool != pool_id {
            return Err(format!("{at}: event of pool {} in this stream", event.pool));
        }
        self.check_arithmetic(&at, &event)?;
        let pool = self.pools.entry(pool_id.clone()).or_default();
        if pool.events_applied() != recorded.version {
            return Err(format!(
                "{at}: stream version {} but {} events applied",
                recorded.version,
                pool.events_applied()
            ));
        }
        evolve(pool, &event).map_err(|error| format!("{at}: evolve refuses the log: {error}"))?;
        let applied = self
            .projections
            .apply(recorded.version, recorded.position, &event);
        if applied != allot_projections::Applied::Applied {
            return Err(format!("{at}: projections did not apply it: {applied:?}"));
        }
        self.history
            .entry(pool_id.clone())
            .or_default()
            .push((recorded.position, event.clone()));
        self.tokens
            .entry((pool_id, event.actor.clone(), event.token.clone()))
            .or_default()
            .push(TokenUse {
                at: event.at,
                outcome: event.outcome(),
            });
        self.records.push(Recorded::Pool(RecordedPoolEvent {
            stream: recorded.stream.clone(),
            version: recorded.version,
            position: recorded.position,
            event,
        }));
        Ok(())
    }

    /// The mirror's own arithmetic over one event: invariants 1 to 4 per event.
    fn check_arithmetic(&mut self, at: &str, event: &Event) -> Result<(), String> {
        let pool = self.arithmetic.entry(event.pool.clone()).or_default();
        if event.allocated_before != pool.allocated {
            return Err(format!(
                "{at}: allocated_before {} but the log so far allocates {} (invariant 1)",
                event.allocated_before, pool.allocated
            ));
        }
        match (&event.change, &event.action) {
            (Change::PoolDeclared, Action::DeclarePool { capacity, .. })
            | (Change::CapacityAdjusted { .. }, Action::AdjustCapacity { capacity }) => {
                pool.capacity = *capacity;
            }
            (
                Change::Reserved {
                    reservation,
                    expires_at,
                },
                Action::Reserve { count, .. },
            ) => {
                pool.allocated += u64::from(*count);
                let unit = Unit {
                    count: *count,
                    expires_at: *expires_at,
                    state: ReservationState::Held,
                    terminals: 0,
                };
                if pool.reservations.insert(*reservation, unit).is_some() {
                    return Err(format!("{at}: reservation {reservation} placed twice"));
                }
            }
            (Change::Confirmed { reservation }, _) => {
                let unit = pool
                    .reservations
                    .get_mut(reservation)
                    .ok_or_else(|| format!("{at}: confirms unknown reservation {reservation}"))?;
                if unit.state != ReservationState::Held {
                    return Err(format!(
                        "{at}: confirms reservation {reservation} which is {}",
                        unit.state
                    ));
                }
                if event.at >= unit.expires_at {
                    return Err(format!(
                        "{at}: reservation {reservation} confirmed at {} at/after expires_at {} (invariant 4)",
                        event.at, unit.expires_at
                    ));
                }
                unit.state = ReservationState::Confirmed;
            }
            (Change::Released { reservation }, _) | (Change::Expired { reservation, .. }, _) => {
                let terminal = match event.change {
                    Change::Released { .. } => ReservationState::Released,
                    _ => ReservationState::Expired,
                };
                let unit = pool
                    .reservations
                    .get_mut(reservation)
                    .ok_or_else(|| format!("{at}: releases unknown reservation {reservation}"))?;
                unit.terminals += 1;
                if unit.terminals > 1 {
                    return Err(format!(
                        "{at}: reservation {reservation} released twice (invariant 2)"
                    ));
                }
                if unit.state != ReservationState::Held {
                    return Err(format!(
                        "{at}: {terminal} of reservation {reservation} which is {}",
                        unit.state
                    ));
                }
                if terminal == ReservationState::Expired && event.at < unit.expires_at {
                    return Err(format!(
                        "{at}: reservation {reservation} expired at {} before expires_at {}",
                        event.at, unit.expires_at
                    ));
                }
                unit.state = terminal;
                pool.allocated -= u64::from(unit.count);
            }
            _ => {}
        }
        if event.allocated_after != pool.allocated {
            return Err(format!(
                "{at}: {} event says allocated_after {} but its live reservations hold {} (invariant 1)",
                event.kind_name(),
                event.allocated_after,
                pool.allocated
            ));
        }
        let confirmed = pool.units_in(ReservationState::Confirmed);
        if pool.allocated > pool.capacity || confirmed > pool.capacity {
            return Err(format!(
                "{at}: allocated {} / confirmed {} over capacity {} (invariant 3)",
                pool.allocated, confirmed, pool.capacity
            ));
        }
        Ok(())
    }

    /// Invariants 1 and 3 on the folded aggregates, and agreement with the mirror's arithmetic.
    pub fn check_pools(&self) -> Result<(), String> {
        for (id, pool) in &self.pools {
            let live: u64 = pool.live().map(|(_, hold)| u64::from(hold.count)).sum();
            let confirmed: u64 = pool
                .live()
                .filter(|(_, hold)| hold.state == ReservationState::Confirmed)
                .map(|(_, hold)| u64::from(hold.count))
                .sum();
            if pool.allocated() != live {
                return Err(format!(
                    "pool {id}: allocated {} but live reservations hold {live} (invariant 1)",
                    pool.allocated()
                ));
            }
            if pool.allocated() > pool.capacity() || confirmed > pool.capacity() {
                return Err(format!(
                    "pool {id}: allocated {} / confirmed {confirmed} over capacity {} (invariant 3)",
                    pool.allocated(),
                    pool.capacity()
                ));
            }
            let own = self
                .arithmetic
                .get(id)
                .map_or(0, |arithmetic| arithmetic.allocated);
            if own != pool.allocated() {
                return Err(format!(
                    "pool {id}: the aggregate allocates {} but the log's own arithmetic {own}",
                    pool.allocated()
                ));
            }
        }
        Ok(())
    }

    /// The live projections are the fold of a prefix of each pool's log: never ahead of it,
    /// never different from it, and they hold invariants 1 and 2. They may lag behind events
    /// whose append was not acknowledged (see [`Mirror::check_projections_current`]).
    pub fn check_projections(&mut self, instance: usize, live: &Projections) -> Result<(), String> {
        let lagging = self.lagging.entry(instance).or_default();
        for (pool, events) in &self.history {
            let target = live.next_version(pool);
            let done = lagging.next_version(pool);
            if target as usize > events.len() {
                return Err(format!(
                    "pool {pool}: live projections of instance {instance} at version {target}, the log has {} events",
                    events.len()
                ));
            }
            if target < done {
                return Err(format!(
                    "pool {pool}: live projections of instance {instance} went back from version {done} to {target}"
                ));
            }
            for (version, (position, event)) in events
                .iter()
                .enumerate()
                .take(target as usize)
                .skip(done as usize)
            {
                lagging.apply(version as u64, *position, event);
            }
        }
        let mut live = live.contents();
        // A pool whose first event was skipped as a gap reads as version 0, as if unseen.
        live.next_version.retain(|_, version| *version > 0);
        let mut folded = lagging.contents();
        folded.last_position = live.last_position;
        folded.applied = live.applied;
        if let Some(difference) = contents_difference(&live, &folded) {
            return Err(format!(
                "live projections of instance {instance} differ from the fold of the log up to their versions: {difference}"
            ));
        }
        check_binding(&live)
    }

    /// The live projections are the fold of the whole log (after the store is healthy again and
    /// every pool has taken a command).
    pub fn check_projections_current(
        &self,
        instance: usize,
        live: &Projections,
    ) -> Result<(), String> {
        let live = live.contents();
        if let Some(difference) = contents_difference(&live, &self.projections.contents()) {
            return Err(format!(
                "live projections of instance {instance} differ from the fold of the whole log: {difference}"
            ));
        }
        for (id, pool) in &self.pools {
            let count = live.counts.get(id.as_str()).cloned().unwrap_or_default();
            if count.allocated != pool.allocated() || count.capacity != pool.capacity() {
                return Err(format!(
                    "pool {id}: projected allocated/capacity {}/{} but the aggregate has {}/{}",
                    count.allocated,
                    count.capacity,
                    pool.allocated(),
                    pool.capacity()
                ));
            }
        }
        Ok(())
    }

    pub fn pools(&self) -> &BTreeMap<PoolId, Pool> {
        &self.pools
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Every recorded use of `token` by `actor` in `pool`, in log order.
    pub fn token_uses(
        &self,
        pool: &PoolId,
        actor: &ActorId,
        token: &IdempotencyToken,
    ) -> &[TokenUse] {
        self.tokens
            .get(&(pool.clone(), actor.clone(), token.clone()))
            .map_or(&[], Vec::as_slice)
    }

    pub fn records(&self) -> &[Recorded] {
        &self.records
    }

    /// Recorded events folded so far.
    pub fn events(&self) -> usize {
        self.records.len()
    }
}

/// Invariants 1 and 2 on a projection contents: no slot released twice, and each pool's
/// allocated equals the units of its reservations still holding slots.
pub fn check_binding(contents: &ProjectionContents) -> Result<(), String> {
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, entry) in &contents.binding {
        if entry.released_twice {
            return Err(format!(
                "reservation {id}: slot released twice (invariant 2)"
            ));
        }
        if entry.slot_released == entry.state.holds_slot() {
            return Err(format!(
                "reservation {id}: state {} but slot_released {}",
                entry.state, entry.slot_released
            ));
        }
        let pool = id.rsplit_once(':').map_or(id.as_str(), |(pool, _)| pool);
        if entry.slot_held() {
            *held.entry(pool).or_default() += u64::from(entry.count);
        }
    }
    for (pool, count) in &contents.counts {
        let bound = held.get(pool.as_str()).copied().unwrap_or(0);
        if count.allocated != bound {
            return Err(format!(
                "pool {pool}: projected allocated {} but the binding holds {bound} (invariant 1)",
                count.allocated
            ));
        }
    }
    Ok(())
}

/// The first difference between two projection contents, described.
pub fn contents_difference(
    live: &ProjectionContents,
    folded: &ProjectionContents,
) -> Option<String> {
    fn first_difference<V: PartialEq + std::fmt::Debug>(
        what: &str,
        live: &BTreeMap<String, V>,
        folded: &BTreeMap<String, V>,
    ) -> Option<String> {
        for (key, value) in live {
            match folded.get(key) {
                None => {
                    return Some(format!(
                        "{what} {key}: live has {value:?}, the log has none"
                    ));
                }
                Some(other) if other != value => {
                    return Some(format!(
                        "{what} {key}: live has {value:?}, the log has {other:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        folded
            .iter()
            .find(|(key, _)| !live.contains_key(*key))
            .map(|(key, value)| format!("{what} {key}: live has none, the log has {value:?}"))
    }
    first_difference("binding", &live.binding, &folded.binding)
        .or_else(|| first_difference("counts", &live.counts, &folded.counts))
        .or_else(|| first_difference("next_version", &live.next_version, &folded.next_version))
        .or_else(|| {
            (live.expiry != folded.expiry).then(|| {
                format!(
                    "expiry index: live has {} entries, the log {} (first live {:?}, first folded {:?})",
                    live.expiry.len(),
                    folded.expiry.len(),
                    live.expiry.first(),
                    folded.expiry.first()
                )
            })
        })
        .or_else(|| {
            (live.last_position != folded.last_position || live.applied != folded.applied).then(
                || {
                    format!(
                        "checkpoint: live at position {:?} after {} events, the log at {:?} after {}",
                        live.last_position, live.applied, folded.last_position, folded.applied
                    )
                },
            )
        })
}

/// Replays the whole log from nothing: fresh pools by `evolve`, fresh projections by `apply`.
pub async fn replay_from_scratch(
    store: &MemoryStore,
) -> Result<(BTreeMap<PoolId, Pool>, Projections), String> {
    let mut fresh = Mirror::default();
    fresh.catch_up(store).await?;
    Ok((fresh.pools, fresh.projections))
}

/// The `allot-replay` audit over the recorded log (arithmetic, states, tokens, roles, the
/// domain's fold; signatures are not checked, the simulator does not sign client commands).
pub fn audit_passes(records: &[Recorded]) -> Result<(), String> {
    let options = AuditOptions {
        verify_signatures: false,
        ..AuditOptions::default()
    };
    let report = Audit::run(options, records);
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("the audit found violations:\n{report}"))
    }
}

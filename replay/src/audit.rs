//! The audit: every record-clearable check of the seed's "Generation acceptance", over recorded
//! events pushed one at a time in global position order.
//!
//! The audit rebuilds each pool on its own from the events' changes (the reservation set, its
//! Held and Confirmed units, the capacity history, the tokens within their window) and compares
//! every event's claims (allocated_before/after, prior/new state) with that reconstruction. It
//! never stops at a fault: each is a [`Violation`] naming its [`Check`], and the audit carries on
//! with the event applied as recorded.
//!
//! What each check verifies:
//! - `allocation-coherence`: after every pool event, `allocated_after` equals the units of the
//!   pool's Held and Confirmed reservations as reconstructed here (Invariant 1).
//! - `allocated-chain`: `allocated_before` equals the previous event's `allocated_after` in the
//!   stream, 0 for the first.
//! - `no-oversell`: `allocated_after` and the Confirmed units are at most the capacity in force
//!   (declared, then adjusted) after every event (Invariant 3).
//! - `slot-released-once`: at most one terminal (release) event per reservation (Invariant 2).
//! - `stranded-slot`: at the end, no reservation is terminal without a release event that
//!   returned its units in the pool arithmetic (`allocated_before - allocated_after = count`).
//! - `state-transition`: each event's prior/new state match the reconstruction, the change
//!   follows from the action, transitions are legal (confirm and cancel from Held, expire from
//!   Held at or after `expires_at`, reserve sequences 1, 2, 3...), the stream's events all name
//!   one pool, no other stream records that pool, its times never go backwards, it is
//!   declared once before anything else, and a capacity adjustment's `capacity_before` is the
//!   capacity in force.
//! - `no-lapsed-confirmation`: every Confirmed event's `at` is before the hold's `expires_at`
//!   (Invariant 4).
//! - `idempotency`: no (actor, token) is recorded twice within the pool's idempotency window,
//!   which also means no two reservations share a token within it (Invariant 5). Outside the
//!   window a token is forgotten, as the service forgets it.
//! - `attribution`: each pool event's actor had a key valid at `signed_at` (or, for a client
//!   whose clock ran behind its registration, at the event's `at`), still valid at the event's
//!   `at` (a revoked key stops working at once, whatever `signed_at` it claims), whose role may
//!   perform the action; with [`AuditOptions::verify_signatures`], its parameters digest is
//!   blake3 of the canonical parameters and its ed25519 signature verifies over
//!   `signing::signing_bytes` under that key. An event recorded from a signed batch
//!   (`Event::batch`) is signed through its batch instead: its inclusion proof must lead from
//!   its own member bytes (`batch::member_bytes`, the same signing bytes) to a root, and the
//!   signature must verify over `batch::batch_signing_bytes` of that root, the batch's count and
//!   token, the actor and `signed_at`, under that key; each distinct batch signature is verified
//!   once, each proof once per event. Actor events are signed (over
//!   `signing::actor_event_signing_bytes`) by `by`, who must hold an admin key valid as above.
//!   The one exception is bootstrap: until the first actor event made by someone else
//!   (`by != actor`), an admin or sweeper may register itself (`by == actor`, no earlier key),
//!   signing with the key it registers (Invariant 6).
//! - `ownership`: from schema 2 on, a confirm or cancel of a live reservation is made by the
//!   actor that reserved it (the event names no owner), or by a role the role table lets act
//!   for others, and then the event names that owner (`on_behalf_of`); no other action names
//!   an owner. Events of schema 1 did not record it and are not checked.
//! - `contiguous-versions`: every stream's versions are 0, 1, 2, ... and positions strictly
//!   increase across all streams.
//! - `fold`: with [`AuditOptions::check_fold`], the domain's own `evolve` accepts every event of
//!   the pool (reported once per pool; that pool's fold stops at its first error). The fold
//!   keeps no token cache (`Pool::without_token_cache`): tokens are `idempotency`'s, checked
//!   once, against the audit's own index.
//!
//! Memory: per pool, one small record per reservation ever made (like the aggregate's state
//! vector), the tokens within the window (once), and with `check_fold` the aggregate itself.

use std::fmt;

use allot_domain::codec;
use allot_domain::streams::ACTORS_STREAM;
use allot_domain::{
    Action, ActorChange, ActorId, ActorKey, ActorRegistry, Change, Event, OnBehalfOf, Permission,
    Pool, PoolId, ReservationId, ReservationState, Role, Timestamp, TokenIndex, evolve, signing,
};
use serde::Serialize;

use crate::crypto::{CheckedBatch, Location, SignatureCheck, Verifier, Work};
use crate::record::{Recorded, RecordedActorEvent, RecordedPoolEvent};

/// Violations kept in a report by default; beyond it they are only counted.
pub const VIOLATIONS_MAX: usize = 1_000;
/// Reservations whose sequence number is out of order that are still tracked per pool; beyond it
/// they are only reported (a log no writer produced must not grow the audit without bound).
pub const OUT_OF_SEQUENCE_RESERVATIONS_MAX: usize = 65_536;

/// The seed's record-clearable checks, each with a stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    AllocationCoherence,
    AllocatedChain,
    NoOversell,
    SlotReleasedOnce,
    StrandedSlot,
    StateTransition,
    NoLapsedConfirmation,
    Idempotency,
    Attribution,
    Ownership,
    ContiguousVersions,
    Fold,
}

impl Check {
    pub const ALL: [Check; 12] = [
        Check::AllocationCoherence,
        Check::AllocatedChain,
        Check::NoOversell,
        Check::SlotReleasedOnce,
        Check::StrandedSlot,
        Check::StateTransition,
        Check::NoLapsedConfirmation,
        Check::Idempotency,
        Check::Attribution,
        Check::Ownership,
        Check::ContiguousVersions,
        Check::Fold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::AllocationCoherence => "allocation-coherence",
            Check::AllocatedChain => "allocated-chain",
            Check::NoOversell => "no-oversell",
            Check::SlotReleasedOnce => "slot-released-once",
            Check::StrandedSlot => "stranded-slot",
            Check::StateTransition => "state-transition",
            Check::NoLapsedConfirmation => "no-lapsed-confirmation",
            Check::Idempotency => "idempotency",
            Check::Attribution => "attribution",
            Check::Ownership => "ownership",
            Check::ContiguousVersions => "contiguous-versions",
            Check::Fold => "fold",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counterexample: which check, where in the log, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub check: Check,
    /// The pool concerned (none for actor events).
    pub pool: Option<PoolId>,
    pub reservation: Option<ReservationId>,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}@{} (position {})",
            self.check, self.stream, self.version, self.position
        )?;
        if let Some(reservation) = &self.reservation {
            write!(f, " reservation {reservation}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What the audit does beyond the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditOptions {
    /// Verify digests and ed25519 signatures (batched, on worker threads).
    pub verify_signatures: bool,
    /// Also fold each pool with the domain's `evolve` and report its refusals (`fold`).
    pub check_fold: bool,
    /// Violations kept in the report; the rest are counted.
    pub violations_max: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            verify_signatures: true,
            check_fold: true,
            violations_max: VIOLATIONS_MAX,
        }
    }
}

impl AuditOptions {
    /// Arithmetic, state, token, role and version checks only: no cryptography, no `evolve`.
    pub fn records_only() -> Self {
        AuditOptions {
            verify_signatures: false,
            check_fold: false,
            violations_max: VIOLATIONS_MAX,
        }
    }
}

/// Violations found by one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckCount {
    pub check: Check,
    pub violations: u64,
}

/// The audit's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub options: AuditOptions,
    /// Records observed (pool and actor events).
    pub events: u64,
    pub pool_events: u64,
    pub actor_events: u64,
    pub pools: u64,
    /// Reservations placed (Reserved events).
    pub reservations: u64,
    /// Events whose signature verified (a batched event's: its proof and its batch's signature).
    pub signatures_verified: u64,
    /// Pool events recorded from a signed batch (they carry a batch membership).
    pub batched_events: u64,
    /// Distinct batch signatures verified (each once, whatever its members).
    pub batch_signatures_verified: u64,
    /// Every check, with its violation count (zero included).
    pub checks: Vec<CheckCount>,
    /// The first [`AuditOptions::violations_max`] violations found, in position order.
    pub violations: Vec<Violation>,
    /// Violations counted but not kept.
    pub violations_omitted: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.checks.iter().all(|count| count.violations == 0)
    }

    pub fn violations_total(&self) -> u64 {
        self.checks.iter().map(|count| count.violations).sum()
    }

    /// Violations of `check`.
    pub fn count(&self, check: Check) -> u64 {
        self.checks
            .iter()
            .find(|count| count.check == check)
            .map_or(0, |count| count.violations)
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audit: {} events ({} pool, {} actor), {} pools, {} reservations, {} signatures verified",
            self.events,
            self.pool_events,
            self.actor_events,
            self.pools,
            self.reservations,
            self.signatures_verified
        )?;
        if self.batched_events > 0 {
            writeln!(
                f,
                "batches: {} pool events recorded from signed batches, {} batch signatures verified",
                self.batched_events, self.batch_signatures_verified
            )?;
        }
        if !self.options.verify_signatures {
            writeln!(f, "signatures and digests: not checked")?;
        }
        for count in &self.checks {
            if count.check == Check::Fold && !self.options.check_fold {
                writeln!(f, "  {:<24} not checked", count.check.as_str())?;
                continue;
            }
            let verdict = if count.violations == 0 {
                "ok".to_owned()
            } else {
                format!("{} violation(s)", count.violations)
            };
            writeln!(f, "  {:<24} {verdict}", count.check.as_str())?;
        }
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        if self.violations_omitted > 0 {
            writeln!(f, "... and {} more", self.violations_omitted)?;
        }
        if self.is_clean() {
            write!(f, "CLEAN")
        } else {
            write!(f, "VIOLATIONS: {}", self.violations_total())
        }
    }
}

/// A reservation as the audit reconstructs it.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    state: ReservationState,
    count: u32,
    /// Terminal (release) events seen.
    releases: u8,
    /// The terminal event returned the units in the pool arithmetic.
    slot_released: bool,
    expires_at: Timestamp,
    /// Where the (first) terminal event was recorded.
    terminal_version: u64,
    terminal_position: u64,
    /// The actor that reserved it: an index into `PoolAudit::owners`.
    owner: u32,
}

/// A pool stream as the audit reconstructs it.
#[derive(Debug)]
struct PoolAudit {
    stream: String,
    /// Ordinal of the stream's first record in the whole log (orders pools across partitions).
    first_ordinal: u64,
    pool: PoolId,
    next_version: u64,
    last_allocated_after: u64,
    last_at: Timestamp,
    declared: bool,
    capacity: u64,
    window_ms: u64,
    held_units: u64,
    confirmed_units: u64,
    /// Reservation `seq` at index `seq - 1`.
    reservations: Vec<Reservation>,
    out_of_sequence: FastMap<u64, Reservation>,
    /// Tokens within the window: the reservation each made (0: none), by (actor, token).
    tokens: TokenIndex<u64>,
    /// The domain's aggregate, while `evolve` accepts this pool's events.
    fold: Option<Pool>,
    /// The actors that reserved in this pool, each once; `Reservation::owner` indexes it.
    owners: Vec<ActorId>,
    owner_index: FastMap<ActorId, u32>,
}

impl PoolAudit {
    /// The index of `actor` in `owners`, added if new.
    fn owner_index(&mut self, actor: &ActorId) -> u32 {
        if let Some(index) = self.owner_index.get(actor) {
            return *index;
        }
        let index = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
        self.owners.push(actor.clone());
        self.owner_index.insert(actor.clone(), index);
        index
    }

    /// The actor that reserved `seq`, if it is known.
    fn owner_of(&self, seq: u64) -> Option<&ActorId> {
        let owner = self.reservation(seq)?.owner;
        self.owners.get(usize::try_from(owner).ok()?)
    }

    fn reservation(&self, seq: u64) -> Option<&Reservation> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.reservations
            .get(index)
            .or_else(|| self.out_of_sequence.get(&seq))
    }

    fn reservation_mut(&mut self, seq: u64) -> Option<&mut Reservation> {
        let index = seq.checked_sub(1).and_then(|i| usize::try_from(i).ok());
        match index {
            Some(index) if index < self.reservations.len() => self.reservations.get_mut(index),
            _ => self.out_of_sequence.get_mut(&seq),
        }
    }

    fn live_units(&self) -> u64 {
        self.held_units + self.confirmed_units
    }

    fn remove_units(&mut self, state: ReservationState, count: u32) {
        match state {
            ReservationState::Held => {
                self.held_units = self.held_units.saturating_sub(count.into())
            }
            ReservationState::Confirmed => {
                self.confirmed_units = self.confirmed_units.saturating_sub(count.into());
            }
            ReservationState::Released | ReservationState::Expired => {}
        }
    }

    fn add_units(&mut self, state: ReservationState, count: u32) {
        match state {
            ReservationState::Held => self.held_units += u64::from(count),
            ReservationState::Confirmed => self.confirmed_units += u64::from(count),
            ReservationState::Released | ReservationState::Expired => {}
        }
    }

    fn forget_tokens_before(&mut self, now: Timestamp) {
        self.tokens.forget_expired(now, self.window_ms);
    }
}

/// Findings of one event, at most one per check (the first problem found is the one named).
#[derive(Default)]
struct Findings {
    items: Vec<(Check, String)>,
}

impl Findings {
    fn add(&mut self, check: Check, detail: impl Into<String>) {
        if !self.items.iter().any(|(c, _)| *c == check) {
            self.items.push((check, detail.into()));
        }
    }

    fn has(&self, check: Check) -> bool {
        self.items.iter().any(|(c, _)| *c == check)
    }
}

/// The push-based audit: `observe` every record in position order, then `finish`.
pub struct Audit {
    options: AuditOptions,
    streams: FastMap<String, usize>,
    /// Pool id → the first stream that recorded it.
    pool_streams: FastMap<PoolId, usize>,
    pools: Vec<PoolAudit>,
    /// The stream of the last pool event (index in `pools`).
    last_stream: Option<usize>,
    actors: ActorRegistry,
    actors_next_version: u64,
    /// Until an actor event made by someone else, admins and sweepers may register themselves.
    bootstrap: bool,
    last_position: Option<u64>,
    events: u64,
    pool_events: u64,
    actor_events: u64,
    reservations: u64,
    signatures_verified: u64,
    batched_events: u64,
    batch_signatures_verified: u64,
    counts: [u64; Check::ALL.len()],
    violations: Vec<Violation>,
    verifier: Option<Verifier>,
    ready: Vec<CheckedBatch>,
    /// The last pool event's actor key lookup: (actor, key), reused while the actor repeats and
    /// its key is valid (cleared by every actor event).
    last_key: Option<(ActorId, Option<ActorKey>)>,
    /// Keep only violations of this check (forensics reuse the audit's reconstruction).
    keep_only: Option<Check>,
    /// Ordinal (0-based, in the whole log) of the record being observed.
    ordinal: u64,
    /// The ordinal of each kept violation's record, so partitions merge in log order.
    violation_ordinals: Vec<u64>,
    /// Whether this audit sees the whole log or one partition of it.
    scope: Scope,
}

/// What part of the log an [`Audit`] observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Whole,
    /// Some pool streams and every actor event; the primary partition checks and counts the
    /// actor events, the others only follow the actor registry.
    Partition {
        primary: bool,
    },
}

impl Default for Audit {
    fn default() -> Self {
        Audit::new(AuditOptions::default())
    }
}

impl Audit {
    pub fn new(options: AuditOptions) -> Audit {
        Audit {
            options,
            streams: FastMap::default(),
            pool_streams: FastMap::default(),
            pools: Vec::new(),
            last_stream: None,
            actors: ActorRegistry::default(),
            actors_next_version: 0,
            bootstrap: true,
            last_position: None,
            events: 0,
            pool_events: 0,
            actor_events: 0,
            reservations: 0,
            signatures_verified: 0,
            batched_events: 0,
            batch_signatures_verified: 0,
            counts: [0; Check::ALL.len()],
            violations: Vec::new(),
            verifier: options.verify_signatures.then(Verifier::start),
            ready: Vec::new(),
            last_key: None,
            keep_only: None,
            ordinal: 0,
            violation_ordinals: Vec::new(),
            scope: Scope::Whole,
        }
    }

    /// An audit that keeps (up to `violations_max`) only the violations of `check`.
    pub(crate) fn keeping_only(options: AuditOptions, check: Check) -> Audit {
        Audit {
            keep_only: Some(check),
            ..Audit::new(options)
        }
    }

    /// Audits every record of `records` and returns the report.
    pub fn run<I, R>(options: AuditOptions, records: I) -> AuditReport
    where
        I: IntoIterator<Item = R>,
        R: std::borrow::Borrow<Recorded>,
    {
        let mut audit = Audit::new(options);
        for record in records {
            audit.observe(record.borrow());
        }
        audit.finish()
    }

    /// Records observed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn observe(&mut self, recorded: &Recorded) {
        self.ordinal = self.events;
        match recorded {
            Recorded::Pool(pool) => {
                let mut findings = Findings::default();
                if let Some(problem) = self.check_position(pool.position) {
                    findings.add(Check::ContiguousVersions, problem);
                }
                self.observe_pool(pool, findings);
            }
            Recorded::Actor(actor) => {
                let mut findings = Findings::default();
                if let Some(problem) = self.check_position(actor.position) {
                    findings.add(Check::ContiguousVersions, problem);
                }
                self.observe_actor(actor, findings);
            }
        }
        self.collect_ready();
    }

    fn report(&mut self, violation: Violation) {
        self.counts[violation.check.index()] += 1;
        if self.keep_only.is_none_or(|check| check == violation.check)
            && self.violations.len() < self.options.violations_max
        {
            self.violations.push(violation);
            self.violation_ordinals.push(self.ordinal);
        }
    }

    fn collect_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        for batch in ready {
            self.signatures_verified += batch.signatures_verified;
            self.batch_signatures_verified += batch.batch_signatures_verified;
            for violation in batch.violations {
                self.report(violation);
            }
        }
    }

    fn check_position(&mut self, position: u64) -> Option<String> {
        position_problem(&mut self.last_position, position)
    }

    /// Observes a pool event; `findings` already holds what was found about its position.
    fn observe_pool(&mut self, recorded: &RecordedPoolEvent, mut findings: Findings) {
        let index = match self.known_stream(&recorded.stream) {
            Some(index) => index,
            None => {
                if self.scope == Scope::Whole {
                    let first = self
                        .pool_streams
                        .get(&recorded.event.pool)
                        .and_then(|other| self.pools.get(*other))
                        .map(|other| other.stream.as_str());
                    match first {
                        Some(other) => findings.add(
                            Check::StateTransition,
                            pool_claimed(recorded.event.pool.as_str(), other),
                        ),
                        None => {
                            self.pool_streams
                                .insert(recorded.event.pool.clone(), self.pools.len());
                        }
                    }
                }
                self.add_stream(recorded)
            }
        };
        self.observe_pool_at(index, recorded, findings);
    }

    /// The index of `stream` in `pools`, if it was seen. Pool events come in runs of one
    /// stream: try the last one before hashing the name.
    fn known_stream(&self, stream: &str) -> Option<usize> {
        self.last_stream
            .filter(|last| {
                self.pools
                    .get(*last)
                    .is_some_and(|pool| pool.stream == stream)
            })
            .or_else(|| self.streams.get(stream).copied())
    }

    fn add_stream(&mut self, recorded: &RecordedPoolEvent) -> usize {
        self.streams
            .insert(recorded.stream.clone(), self.pools.len());
        self.pools.push(PoolAudit {
            stream: recorded.stream.clone(),
            first_ordinal: self.ordinal,
            pool: recorded.event.pool.clone(),
            next_version: 0,
            last_allocated_after: 0,
            last_at: Timestamp(0),
            declared: false,
            capacity: 0,
            window_ms: 0,
            held_units: 0,
            confirmed_units: 0,
            reservations: Vec::new(),
            out_of_sequence: FastMap::default(),
            tokens: TokenIndex::default(),
            // The audit's own `tokens` checks the window; the fold need not keep a second copy.
            fold: self.options.check_fold.then(Pool::without_token_cache),
            owners: Vec::new(),
            owner_index: FastMap::default(),
        });
        self.pools.len() - 1
    }

    fn observe_pool_at(
        &mut self,
        index: usize,
        recorded: &RecordedPoolEvent,
        mut findings: Findings,
    ) {
        self.events += 1;
        self.pool_events += 1;
        let event = &recorded.event;
        self.last_stream = Some(index);
        let role = self.check_attribution(recorded, &mut findings);

        let Some(pool) = self.pools.get_mut(index) else {
            return;
        };
        if recorded.version != pool.next_version {
            findings.add(
                Check::ContiguousVersions,
                format!(
                    "version {} where {} was expected",
                    recorded.version, pool.next_version
                ),
            );
        }
        pool.next_version = recorded.version.saturating_add(1);
        if event.pool != pool.pool {
            findings.add(
                Check::StateTransition,
                format!(
                    "event of pool {} in the stream of {}",
                    event.pool, pool.pool
                ),
            );
        }
        if event.at < pool.last_at {
            findings.add(
                Check::StateTransition,
                format!(
                    "time goes backwards in the stream: {} after {}",
                    event.at, pool.last_at
                ),
            );
        }
        pool.last_at = pool.last_at.max(event.at);
        if event.allocated_before != pool.last_allocated_after {
            findings.add(
                Check::AllocatedChain,
                format!(
                    "allocated_before {} but the previous event left {}",
                    event.allocated_before, pool.last_allocated_after
                ),
            );
        }

        // Tokens: forget what left the window, then look this one up, as the service does.
        pool.forget_tokens_before(event.at);
        let earlier = if pool.declared {
            pool.tokens
                .get(event.actor.as_str(), event.token.as_str())
                .filter(|(at, _)| event.at < at.plus_ms(pool.window_ms))
                .map(|(at, made)| (at, *made))
        } else {
            None
        };

        check_ownership(pool, event, role, &mut findings);
        let seq = apply_change(pool, event, recorded, &mut findings);
        if matches!(event.change, Change::Reserved { .. }) {
            self.reservations += 1;
        }

        if let Some((earlier_at, earlier_made)) = earlier {
            let detail = match (earlier_made, seq) {
                (first, Some(second))
                    if first != 0 && matches!(event.change, Change::Reserved { .. }) =>
                {
                    format!(
                        "token {} of {} made reservation {second} after reservation {first} within the window",
                        event.token, event.actor
                    )
                }
                _ => format!(
                    "token {} of {} recorded again {} ms after its previous use, within the {} ms window",
                    event.token,
                    event.actor,
                    event.at.0.saturating_sub(earlier_at.0),
                    pool.window_ms
                ),
            };
            findings.add(Check::Idempotency, detail);
        }
        let made = match event.change {
            Change::Reserved { reservation, .. } => reservation,
            _ => 0,
        };
        pool.tokens
            .record(event.actor.as_str(), event.token.as_str(), event.at, made);

        if event.allocated_after != pool.live_units() {
            findings.add(
                Check::AllocationCoherence,
                format!(
                    "allocated_after {} but Held and Confirmed reservations hold {} (held {}, confirmed {})",
                    event.allocated_after,
                    pool.live_units(),
                    pool.held_units,
                    pool.confirmed_units
                ),
            );
        }
        if event.allocated_after > pool.capacity {
            findings.add(
                Check::NoOversell,
                format!(
                    "allocated {} exceeds capacity {}",
                    event.allocated_after, pool.capacity
                ),
            );
        } else if pool.confirmed_units > pool.capacity {
            findings.add(
                Check::NoOversell,
                format!(
                    "confirmed units {} exceed capacity {}",
                    pool.confirmed_units, pool.capacity
                ),
            );
        }
        pool.last_allocated_after = event.allocated_after;

        if let Some(aggregate) = pool.fold.as_mut()
            && let Err(error) = evolve(aggregate, event)
        {
            findings.add(
                Check::Fold,
                format!(
                    "evolve refused the event (fold of this pool stops): {}",
                    error.reason
                ),
            );
            pool.fold = None;
        }

        if findings.items.is_empty() {
            return;
        }
        let pool_id = Some(event.pool.clone());
        let reservation = event.reservation();
        for (check, detail) in findings.items {
            self.report(Violation {
                check,
                pool: pool_id.clone(),
                reservation: reservation.clone(),
                stream: recorded.stream.clone(),
                version: recorded.version,
                position: recorded.position,
                detail,
            });
        }
    }

    /// The key `actor` held at `at`, through a one-entry cache (pool events of one actor tend to
    /// come in runs).
    fn key_at(&mut self, actor: &ActorId, at: Timestamp) -> Option<ActorKey> {
        if let Some((cached_actor, Some(key))) = &self.last_key
            && cached_actor == actor
            && key.valid_at(at)
        {
            return Some(key.clone());
        }
        let key = self.actors.key_at(actor, at).cloned();
        self.last_key = Some((actor.clone(), key.clone()));
        key
    }

    /// Key, role and (queued) signature and digest checks of a pool event. Returns the role of
    /// the actor's key, if it had one.
    fn check_attribution(
        &mut self,
        recorded: &RecordedPoolEvent,
        findings: &mut Findings,
    ) -> Option<Role> {
        let event = &recorded.event;
        if event.batch.is_some() {
            self.batched_events += 1;
        }
        let signed_at = event.attestation.signed_at;
        // The key valid when the actor signed; failing that (a client clock behind its
        // registration), the key valid when the service recorded the event.
        let key = self
            .key_at(&event.actor, signed_at)
            .or_else(|| self.key_at(&event.actor, event.at));
        match &key {
            None => findings.add(
                Check::Attribution,
                format!(
                    "actor {} had no key valid at signed_at {signed_at} nor at {}",
                    event.actor, event.at
                ),
            ),
            Some(key) if !key.role.may(event.action.kind()) => findings.add(
                Check::Attribution,
                format!(
                    "actor {} has role {}, which may not {}",
                    event.actor,
                    key.role,
                    event.action.kind()
                ),
            ),
            Some(key) if !key.valid_at(event.at) => findings.add(
                Check::Attribution,
                format!(
                    "actor {}'s key was no longer valid when the event was recorded at {} (signed_at {signed_at})",
                    event.actor, event.at
                ),
            ),
            Some(_) => {}
        }
        let public_key = key.as_ref().map(|key| key.public_key);
        if let Some(verifier) = self.verifier.as_mut() {
            verifier.submit(
                SignatureCheck {
                    location: Location {
                        stream: recorded.stream.clone(),
                        version: recorded.version,
                        position: recorded.position,
                        pool: Some(event.pool.clone()),
                        reservation: event.reservation(),
                    },
                    key: public_key,
                    work: Work::Pool(Box::new(event.clone())),
                },
                &mut self.ready,
            );
        }
        key.map(|key| key.role)
    }

    fn observe_actor(&mut self, recorded: &RecordedActorEvent, mut findings: Findings) {
        self.events += 1;
        self.actor_events += 1;
        let event = &recorded.event;
        if recorded.version != self.actors_next_version {
            findings.add(
                Check::ContiguousVersions,
                format!(
                    "version {} where {} was expected",
                    recorded.version, self.actors_next_version
                ),
            );
        }
        self.actors_next_version = recorded.version.saturating_add(1);

        let signed_at = event.attestation.signed_at;
        let self_registration = event.by == event.actor;
        let signer_key = if self_registration {
            match &event.change {
                ActorChange::Registered { role, public_key }
                    if self.bootstrap
                        && matches!(role, Role::Admin | Role::Sweeper)
                        && self.actors.current(&event.actor).is_none() =>
                {
                    Some(*public_key)
                }
                _ => {
                    findings.add(
                        Check::Attribution,
                        format!(
                            "{} changed its own registration outside bootstrap (only a first admin or sweeper may register itself)",
                            event.actor
                        ),
                    );
                    None
                }
            }
        } else {
            self.bootstrap = false;
            let key = self
                .key_at(&event.by, signed_at)
                .or_else(|| self.key_at(&event.by, event.at));
            match key {
                Some(key) if !key.valid_at(event.at) => {
                    findings.add(
                        Check::Attribution,
                        format!(
                            "{}'s key was no longer valid when the change was recorded at {}",
                            event.by, event.at
                        ),
                    );
                    Some(key.public_key)
                }
                Some(key) if key.role.allows(Permission::ManageActors) => Some(key.public_key),
                Some(key) => {
                    findings.add(
                        Check::Attribution,
                        format!(
                            "{} has role {}, which may not manage actors",
                            event.by, key.role
                        ),
                    );
                    None
                }
                None => {
                    findings.add(
                        Check::Attribution,
                        format!(
                            "{} had no key valid at signed_at {signed_at} nor at {}",
                            event.by, event.at
                        ),
                    );
                    None
                }
            }
        };
        if let (Some(verifier), Some(key)) = (self.verifier.as_mut(), signer_key) {
            verifier.submit(
                SignatureCheck {
                    location: Location {
                        stream: ACTORS_STREAM.to_owned(),
                        version: recorded.version,
                        position: recorded.position,
                        pool: None,
                        reservation: None,
                    },
                    key: Some(key),
                    work: Work::Actor {
                        message: signing::actor_event_signing_bytes(event),
                        signature: event.attestation.signature.clone(),
                    },
                },
                &mut self.ready,
            );
        }
        self.actors.apply(event);
        self.last_key = None;
        for (check, detail) in findings.items {
            self.report(Violation {
                check,
                pool: None,
                reservation: None,
                stream: ACTORS_STREAM.to_owned(),
                version: recorded.version,
                position: recorded.position,
                detail,
            });
        }
    }

    /// Ends the audit: flushes signature batches, looks for stranded slots, builds the report.
    pub fn finish(mut self) -> AuditReport {
        if let Some(verifier) = self.verifier.take() {
            self.ready.extend(verifier.finish());
            self.collect_ready();
        }
        for (_, violation) in self.stranded_slots() {
            self.report(violation);
        }
        let totals = Totals::of(&self);
        totals.report(self.options, self.counts, self.violations)
    }

    /// Every stranded slot, with the ordinal of its pool stream's first record, in the order
    /// pools were first seen.
    fn stranded_slots(&self) -> Vec<(u64, Violation)> {
        let mut stranded = Vec::new();
        for pool in &self.pools {
            // By sequence: the report is cut at `violations_max`, so which ones are kept must
            // not depend on a map's order.
            let mut out_of_sequence: Vec<(u64, &Reservation)> = pool
                .out_of_sequence
                .iter()
                .map(|(seq, r)| (*seq, r))
                .collect();
            out_of_sequence.sort_unstable_by_key(|(seq, _)| *seq);
            let all = pool
                .reservations
                .iter()
                .enumerate()
                .map(|(index, r)| (index as u64 + 1, r))
                .chain(out_of_sequence);
            for (seq, reservation) in all {
                if !reservation.state.holds_slot() && !reservation.slot_released {
                    stranded.push((
                        pool.first_ordinal,
                        Violation {
                            check: Check::StrandedSlot,
                            pool: Some(pool.pool.clone()),
                            reservation: Some(ReservationId {
                                pool: pool.pool.clone(),
                                seq,
                            }),
                            stream: pool.stream.clone(),
                            version: reservation.terminal_version,
                            position: reservation.terminal_position,
                            detail: format!(
                                "{} without a release of its {} unit(s) in the pool arithmetic",
                                reservation.state, reservation.count
                            ),
                        },
                    ));
                }
            }
        }
        stranded
    }

    /// An audit split into `count` partitions of the log's pool streams, for a caller that
    /// folds them on several threads. Route every record with one [`AuditRouter`] of as many
    /// partitions, feed each partition, in log order, the records routed to it
    /// ([`Routed::is_for`]) with [`Audit::observe_routed`], then merge them with
    /// [`Audit::finish_partitions`]: the report is the one a single [`Audit`] makes of the log.
    ///
    /// Signatures are not verified (`verify_signatures` is ignored): the verifier's results
    /// arrive out of log order, and it already spreads its work over the cores.
    pub fn partitions(options: AuditOptions, count: usize) -> Vec<Audit> {
        let options = AuditOptions {
            verify_signatures: false,
            ..options
        };
        (0..count.max(1))
            .map(|index| Audit {
                scope: Scope::Partition {
                    primary: index == 0,
                },
                ..Audit::new(options)
            })
            .collect()
    }

    /// Observes a record routed to this partition (see [`Audit::partitions`]).
    pub fn observe_routed(&mut self, recorded: &Recorded, routed: &Routed) {
        self.ordinal = routed.ordinal;
        let mut findings = Findings::default();
        if let Some(problem) = &routed.position_problem {
            findings.add(Check::ContiguousVersions, problem.clone());
        }
        match recorded {
            Recorded::Pool(pool) => {
                if let Some(claimed) = &routed.pool_claimed {
                    findings.add(Check::StateTransition, claimed.clone());
                }
                self.observe_pool(pool, findings);
            }
            // Every partition follows the actor registry (attribution needs it as of each pool
            // event); only the primary one checks and counts actor events.
            Recorded::Actor(actor) => match self.scope {
                Scope::Partition { primary: false } => {
                    self.actors.apply(&actor.event);
                    self.last_key = None;
                }
                Scope::Whole | Scope::Partition { primary: true } => {
                    self.observe_actor(actor, findings);
                }
            },
        }
        self.collect_ready();
    }

    /// Merges the partitions of [`Audit::partitions`] into the report one audit of the whole
    /// log makes: the same counts, and the same violations kept, in the same order.
    pub fn finish_partitions(partitions: Vec<Audit>) -> AuditReport {
        Audit::merge_partitions(partitions.into_iter().map(Audit::end_partition).collect())
    }

    /// Ends one partition: what [`Audit::merge_partitions`] needs of it, without its state
    /// (so each worker frees its own state, in parallel).
    pub fn end_partition(mut self) -> PartitionEnd {
        if let Some(verifier) = self.verifier.take() {
            self.ready.extend(verifier.finish());
            self.collect_ready();
        }
        PartitionEnd {
            options: self.options,
            totals: Totals::of(&self),
            counts: self.counts,
            stranded: self.stranded_slots(),
            found: std::mem::take(&mut self.violation_ordinals)
                .into_iter()
                .zip(std::mem::take(&mut self.violations))
                .collect(),
        }
    }

    /// The report of the ended partitions of [`Audit::partitions`], in partition order: the
    /// report one audit of the whole log makes.
    pub fn merge_partitions(partitions: Vec<PartitionEnd>) -> AuditReport {
        let options = partitions
            .first()
            .map_or_else(AuditOptions::records_only, |first| first.options);
        let mut totals = Totals::default();
        let mut counts = [0u64; Check::ALL.len()];
        // (ordinal, partition, index in partition): the order one audit would have found them.
        let mut found = Vec::new();
        let mut stranded = Vec::new();
        for (index, partition) in partitions.into_iter().enumerate() {
            stranded.extend(
                partition
                    .stranded
                    .into_iter()
                    .enumerate()
                    .map(|(order, (ordinal, violation))| ((ordinal, order), violation)),
            );
            totals.add(&partition.totals);
            for (count, more) in counts.iter_mut().zip(partition.counts) {
                *count += more;
            }
            found.extend(
                partition
                    .found
                    .into_iter()
                    .enumerate()
                    .map(|(order, (ordinal, violation))| ((ordinal, index, order), violation)),
            );
        }
        found.sort_by_key(|(key, _)| *key);
        let mut violations: Vec<Violation> = found
            .into_iter()
            .take(options.violations_max)
            .map(|(_, violation)| violation)
            .collect();
        stranded.sort_by_key(|(key, _)| *key);
        for (_, violation) in stranded {
            counts[Check::StrandedSlot.index()] += 1;
            if violations.len() < options.violations_max {
                violations.push(violation);
            }
        }
        totals.report(options, counts, violations)
    }
}

/// What an ended partition of an audit contributes to the report.
#[derive(Debug)]
pub struct PartitionEnd {
    options: AuditOptions,
    totals: Totals,
    counts: [u64; Check::ALL.len()],
    /// Stranded slots, with the ordinal of their pool stream's first record.
    stranded: Vec<(u64, Violation)>,
    /// Kept violations, with the ordinal of their record.
    found: Vec<(u64, Violation)>,
}

/// An audit's tallies besides violations.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    events: u64,
    pool_events: u64,
    actor_events: u64,
    pools: u64,
    reservations: u64,
    signatures_verified: u64,
    batched_events: u64,
    batch_signatures_verified: u64,
}

impl Totals {
    fn of(audit: &Audit) -> Totals {
        Totals {
            events: audit.events,
            pool_events: audit.pool_events,
            actor_events: audit.actor_events,
            pools: audit.pools.len() as u64,
            reservations: audit.reservations,
            signatures_verified: audit.signatures_verified,
            batched_events: audit.batched_events,
            batch_signatures_verified: audit.batch_signatures_verified,
        }
    }

    fn add(&mut self, other: &Totals) {
        self.events += other.events;
        self.pool_events += other.pool_events;
        self.actor_events += other.actor_events;
        self.pools += other.pools;
        self.reservations += other.reservations;
        self.signatures_verified += other.signatures_verified;
        self.batched_events += other.batched_events;
        self.batch_signatures_verified += other.batch_signatures_verified;
    }

    /// The report of these totals and `violations` (the kept ones, in the order found).
    fn report(
        self,
        options: AuditOptions,
        counts: [u64; Check::ALL.len()],
        mut violations: Vec<Violation>,
    ) -> AuditReport {
        violations.sort_by_key(|v| (v.position, v.check));
        let kept = violations.len() as u64;
        let checks: Vec<CheckCount> = Check::ALL
            .iter()
            .map(|check| CheckCount {
                check: *check,
                violations: counts[check.index()],
            })
            .collect();
        let total: u64 = checks.iter().map(|c| c.violations).sum();
        AuditReport {
            options,
            events: self.events,
            pool_events: self.pool_events,
            actor_events: self.actor_events,
            pools: self.pools,
            reservations: self.reservations,
            signatures_verified: self.signatures_verified,
            batched_events: self.batched_events,
            batch_signatures_verified: self.batch_signatures_verified,
            checks,
            violations,
            violations_omitted: total.saturating_sub(kept),
        }
    }
}

/// Where a partitioned audit sends one record, and what the router found about it that a
/// partition cannot see: the log's position order and the streams of other partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// The record's ordinal in the log (0-based).
    pub ordinal: u64,
    /// The partition of a pool event; `None` for an actor event, which every partition observes.
    pub partition: Option<usize>,
    position_problem: Option<String>,
    pool_claimed: Option<String>,
}

impl Routed {
    /// Whether `partition` observes this record.
    pub fn is_for(&self, partition: usize) -> bool {
        self.partition.is_none_or(|own| own == partition)
    }
}

/// Routes the records of a log, in order, to the partitions of [`Audit::partitions`]: each pool
/// stream to one partition (streams are dealt out in the order they first appear), actor
/// events to all. It also does the audit's checks that span partitions.
#[derive(Debug)]
pub struct AuditRouter {
    partitions: usize,
    next_ordinal: u64,
    next_partition: usize,
    last_position: Option<u64>,
    streams: FastMap<String, usize>,
    /// The last pool event's stream and partition (pool events come in runs of one stream).
    last_stream: Option<(String, usize)>,
    /// Pool id → the first stream that recorded it.
    pool_streams: FastMap<String, String>,
}

impl AuditRouter {
    pub fn new(partitions: usize) -> AuditRouter {
        AuditRouter {
            partitions: partitions.max(1),
            next_ordinal: 0,
            next_partition: 0,
            last_position: None,
            streams: FastMap::default(),
            last_stream: None,
            pool_streams: FastMap::default(),
        }
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Routes the log's next record; `payload` (its stored bytes) is read only for the pool id
    /// of a stream's first event.
    pub fn route(&mut self, stream: &str, position: u64, payload: &[u8]) -> Routed {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let position_problem = position_problem(&mut self.last_position, position);
        if stream == ACTORS_STREAM {
            return Routed {
                ordinal,
                partition: None,
                position_problem,
                pool_claimed: None,
            };
        }
        if let Some((last, partition)) = &self.last_stream
            && last == stream
        {
            return Routed {
                ordinal,
                partition: Some(*partition),
                position_problem,
                pool_claimed: None,
            };
        }
        let (partition, pool_claimed) = match self.streams.get(stream) {
            Some(partition) => (*partition, None),
            None => {
                let partition = self.next_partition;
                self.next_partition = (partition + 1) % self.partitions;
                self.streams.insert(stream.to_owned(), partition);
                // A payload whose pool cannot be read does not decode either, which ends the
                // audit before this record is observed.
                let claimed = match codec::peek_pool(payload) {
                    Ok(pool) => match self.pool_streams.get(pool) {
                        Some(first) => Some(pool_claimed(pool, first)),
                        None => {
                            self.pool_streams.insert(pool.to_owned(), stream.to_owned());
                            None
                        }
                    },
                    Err(_) => None,
                };
                (partition, claimed)
            }
        };
        match &mut self.last_stream {
            Some((last, last_partition)) => {
                last.clear();
                last.push_str(stream);
                *last_partition = partition;
            }
            None => self.last_stream = Some((stream.to_owned(), partition)),
        }
        Routed {
            ordinal,
            partition: Some(partition),
            position_problem,
            pool_claimed,
        }
    }
}

/// Notes `position` after `last`; says what is wrong if it does not increase.
fn position_problem(last: &mut Option<u64>, position: u64) -> Option<String> {
    let problem = match *last {
        Some(previous) if position <= previous => Some(format!(
            "position {position} does not increase (previous {previous})"
        )),
        _ => None,
    };
    *last = Some(last.map_or(position, |previous| previous.max(position)));
    problem
}

/// A new stream's pool that an earlier stream already records.
fn pool_claimed(pool: &str, first_stream: &str) -> String {
    format!("pool {pool} already has its events in stream {first_stream}")
}

/// The audit's hot maps (stream names), hashed with foldhash rather than SipHash.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// The ownership rule (see the module doc) for a confirm or cancel of a live reservation.
fn check_ownership(pool: &PoolAudit, event: &Event, role: Option<Role>, findings: &mut Findings) {
    let (Action::ConfirmReservation { reservation } | Action::CancelReservation { reservation }) =
        &event.action
    else {
        if let OnBehalfOf::Owner(named) = &event.on_behalf_of {
            findings.add(
                Check::Ownership,
                format!(
                    "{} names {named} as the owner it acted for, but only a confirm or cancel acts for an owner",
                    event.action.kind()
                ),
            );
        }
        return;
    };
    let live = pool
        .reservation(*reservation)
        .is_some_and(|r| r.state.holds_slot());
    let Some(owner) = pool.owner_of(*reservation).filter(|_| live) else {
        return;
    };
    let acts_for_others = role.is_some_and(|role| role.allows(Permission::ActForOthers));
    let problem = match &event.on_behalf_of {
        OnBehalfOf::Unrecorded => None,
        OnBehalfOf::Nobody if *owner == event.actor => None,
        OnBehalfOf::Nobody => Some(format!(
            "{} acted on reservation {reservation} of {owner} without naming its owner",
            event.actor
        )),
        OnBehalfOf::Owner(named) if named != owner || *owner == event.actor => Some(format!(
            "{} acted on reservation {reservation} of {owner} naming {named} as its owner",
            event.actor
        )),
        OnBehalfOf::Owner(_) if !acts_for_others => Some(format!(
            "{} acted on reservation {reservation} of {owner}, a role that may not act for others",
            event.actor
        )),
        OnBehalfOf::Owner(_) => None,
    };
    if let Some(detail) = problem {
        findings.add(Check::Ownership, detail);
    }
}

/// Applies the event's change to the reconstruction, noting what does not follow. Returns the
/// sequence of a reservation the event placed.
fn apply_change(
    pool: &mut PoolAudit,
    event: &Event,
    recorded: &RecordedPoolEvent,
    findings: &mut Findings,
) -> Option<u64> {
    let target = match &event.change {
        Change::Reserved { reservation, .. }
        | Change::Confirmed { reservation }
        | Change::Released { reservation }
        | Change::Expired { reservation, .. } => Some(*reservation),
        _ => event.action.reservation(),
    };
    let state_before = match (&event.change, target) {
        (Change::Reserved { .. }, _) => None,
        (_, Some(seq)) => pool.reservation(seq).map(|r| r.state),
        (_, None) => None,
    };
    if !pool.declared && !matches!(event.change, Change::PoolDeclared) {
        findings.add(Check::StateTransition, "event before the pool was declared");
    }
    let mut placed = None;
    match (&event.change, &event.action) {
        (
            Change::PoolDeclared,
            Action::DeclarePool {
                capacity,
                idempotency_window_ms,
                ..
            },
        ) => {
            if pool.declared {
                findings.add(Check::StateTransition, "pool declared twice");
            }
            pool.declared = true;
            pool.capacity = *capacity;
            pool.window_ms = *idempotency_window_ms;
        }
        (Change::CapacityAdjusted { capacity_before }, Action::AdjustCapacity { capacity }) => {
            if *capacity_before != pool.capacity {
                findings.add(
                    Check::StateTransition,
                    format!(
                        "capacity_before {capacity_before} but capacity was {}",
                        pool.capacity
                    ),
                );
            }
            pool.capacity = *capacity;
        }
        (Change::PoolClosed, Action::ClosePool) => {}
        (
            Change::Reserved {
                reservation,
                expires_at,
            },
            Action::Reserve { count, .. },
        ) => {
            let record = Reservation {
                state: ReservationState::Held,
                count: *count,
                releases: 0,
                slot_released: false,
                expires_at: *expires_at,
                terminal_version: 0,
                terminal_position: 0,
                owner: pool.owner_index(&event.actor),
            };
            let next = pool.reservations.len() as u64 + 1;
            if *reservation == next {
                pool.reservations.push(record);
            } else {
                findings.add(
                    Check::StateTransition,
                    format!("reservation {reservation} out of sequence (next is {next})"),
                );
                if let Some(old) = pool.reservation(*reservation).copied() {
                    pool.remove_units(old.state, old.count);
                }
                if let Some(existing) = pool.reservation_mut(*reservation) {
                    *existing = record;
                } else if pool.out_of_sequence.len() < OUT_OF_SEQUENCE_RESERVATIONS_MAX {
                    pool.out_of_sequence.insert(*reservation, record);
                } else {
                    findings.add(
                        Check::StateTransition,
                        "too many out-of-sequence reservations to track",
                    );
                }
            }
            if pool.reservation(*reservation).is_some() {
                pool.add_units(ReservationState::Held, *count);
            }
            placed = Some(*reservation);
        }
        (Change::Confirmed { reservation }, Action::ConfirmReservation { .. }) => {
            confirm(pool, *reservation, event, findings);
        }
        (Change::Released { reservation }, Action::CancelReservation { .. }) => {
            terminate(
                pool,
                *reservation,
                ReservationState::Released,
                event,
                recorded,
                findings,
            );
        }
        (Change::Expired { reservation, .. }, Action::ExpireReservation { .. }) => {
            terminate(
                pool,
                *reservation,
                ReservationState::Expired,
                event,
                recorded,
                findings,
            );
        }
        (Change::Rejected(_), _) => {}
        (change, action) => {
            findings.add(
                Check::StateTransition,
                format!(
                    "change {} does not follow from action {}",
                    event.kind_name(),
                    action.kind()
                ),
            );
            let _ = change;
        }
    }
    if let (Some(from_change), Some(from_action)) = (target, event.action.reservation())
        && from_change != from_action
    {
        findings.add(
            Check::StateTransition,
            format!("change names reservation {from_change} but the action {from_action}"),
        );
    }
    let state_after = target.and_then(|seq| pool.reservation(seq).map(|r| r.state));
    let state_after = match event.change {
        Change::Rejected(_) => state_before,
        _ => state_after,
    };
    if !findings.has(Check::SlotReleasedOnce)
        && (event.prior_state != state_before || event.new_state != state_after)
    {
        findings.add(
            Check::StateTransition,
            format!(
                "event says {} → {} but the reservation was {} → {}",
                state_name(event.prior_state),
                state_name(event.new_state),
                state_name(state_before),
                state_name(state_after)
            ),
        );
    }
    placed
}

fn state_name(state: Option<ReservationState>) -> &'static str {
    state.map_or("none", ReservationState::as_str)
}

fn confirm(pool: &mut PoolAudit, seq: u64, event: &Event, findings: &mut Findings) {
    let Some(record) = pool.reservation(seq).copied() else {
        findings.add(
            Check::StateTransition,
            format!("confirm of unknown reservation {seq}"),
        );
        return;
    };
    if event.at >= record.expires_at {
        findings.add(
            Check::NoLapsedConfirmation,
            format!(
                "confirmed at {} but the hold expired at {}",
                event.at, record.expires_at
            ),
        );
    }
    match record.state {
        ReservationState::Held => {}
        ReservationState::Confirmed => {
            findings.add(Check::StateTransition, "confirm of a confirmed reservation");
            return;
        }
        state @ (ReservationState::Released | ReservationState::Expired) => {
            // The log says it is confirmed again: count it, so the arithmetic shows the slot.
            findings.add(
                Check::StateTransition,
                format!("confirm of a reservation already {state} (its slot was returned)"),
            );
        }
    }
    pool.remove_units(record.state, record.count);
    pool.add_units(ReservationState::Confirmed, record.count);
    if let Some(record) = pool.reservation_mut(seq) {
        record.state = ReservationState::Confirmed;
    }
}

fn terminate(
    pool: &mut PoolAudit,
    seq: u64,
    terminal: ReservationState,
    event: &Event,
    recorded: &RecordedPoolEvent,
    findings: &mut Findings,
) {
    let Some(record) = pool.reservation(seq).copied() else {
        findings.add(
            Check::StateTransition,
            format!("{terminal} of unknown reservation {seq}"),
        );
        return;
    };
    let returned =
        event.allocated_before.checked_sub(event.allocated_after) == Some(u64::from(record.count));
    if record.releases > 0 {
        findings.add(
            Check::SlotReleasedOnce,
            format!(
                "second release ({terminal}) of a reservation already {} at position {}",
                record.state, record.terminal_position
            ),
        );
        if let Some(record) = pool.reservation_mut(seq) {
            record.releases = record.releases.saturating_add(1);
        }
        return;
    }
    match (record.state, terminal) {
        (ReservationState::Held, ReservationState::Expired) if event.at < record.expires_at => {
            findings.add(
                Check::StateTransition,
                format!(
                    "expired at {} before its window closed at {}",
                    event.at, record.expires_at
                ),
            );
        }
        (ReservationState::Held, _) => {}
        (state, _) => findings.add(
            Check::StateTransition,
            format!("{terminal} of a reservation that is {state}, not held"),
        ),
    }
    pool.remove_units(record.state, record.count);
    if let Some(record) = pool.reservation_mut(seq) {
        record.state = terminal;
        record.releases = 1;
        record.slot_released = returned;
        record.terminal_version = recorded.version;
        record.terminal_position = recorded.position;
    }
}

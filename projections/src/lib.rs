//! Read models folded from pool events.
//!
//! Owns: the binding (reservation → pool, state, slot_released), the pool counts, the expiry
//! index of Held reservations, and the [`Projections`] set that applies one recorded event to all
//! of them. The live service and replay call the same [`Projections::apply`], so a rebuilt
//! projection equals the live one; the token cache lives in the pool aggregate
//! (`allot_domain::Pool::tokens`), rebuilt by the same replay.
//!
//! Two plain forms of the whole set: [`PackedProjections`], what a checkpoint stores (packed
//! binding words, Held reservations as numbers), and [`ProjectionContents`], a comparable copy
//! for checking one set against another.
//!
//! Must not: read clocks, perform I/O, or decide commands (that is `allot-domain`).
//!
//! Applying is idempotent per pool stream: each pool's next expected stream version is tracked,
//! and an event at an earlier version is skipped. Events of one pool must arrive in stream order;
//! different pools may interleave in any order (the live service applies each pool's events as
//! its appends land).

pub mod binding;
pub mod counts;
pub mod expiry;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use allot_domain::{Event, PoolId};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

pub use binding::{
    Binding, BindingEntry, PackedBinding, PackedEntries, PackedPoolBinding, PoolBinding,
};
pub use counts::{PoolCount, PoolCounts};
pub use expiry::{ExpiryIndex, PackedExpiry};

/// A map keyed by a pool's reservation sequence.
pub(crate) type SeqMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// A concurrent map keyed by pool id (read by the HTTP handlers, written by the ledger's shard
/// tasks).
pub(crate) type PoolMap<V> = DashMap<PoolId, V, PoolHasher>;

/// The hasher of every [`PoolMap`] of one [`Projections`]: one seed for all of them, so a pool
/// is in the same shard of each.
pub(crate) type PoolHasher = foldhash::fast::RandomState;

/// Shards of each pool map (a power of two). Enough that workers folding different pools
/// rarely meet on one shard's lock.
pub(crate) const POOL_SHARDS: usize = 64;

/// What happened when an event was offered to the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already applied (version below the pool's next expected version).
    Skipped,
    /// A version was skipped: events of this pool arrived out of order or one is missing.
    Gap {
        expected: u64,
    },
}

/// All live read models, fed by the same apply code in the service and in replay.
#[derive(Debug)]
pub struct Projections {
    pub binding: Binding,
    pub counts: PoolCounts,
    pub expiry: ExpiryIndex,
    next_version: PoolMap<u64>,
    /// Highest global position applied so far (a checkpoint is valid only when every event at or
    /// below it has been applied, which holds for replay in position order).
    last_position: AtomicU64,
    applied: AtomicU64,
}

/// A plain, comparable copy of every projection's contents, for comparing projections (a
/// rebuild against the live ones); checkpoints store the [`PackedProjections`] instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionContents {
    pub binding: BTreeMap<String, BindingEntry>,
    pub counts: BTreeMap<String, PoolCount>,
    pub expiry: Vec<(u64, String)>,
    pub next_version: BTreeMap<String, u64>,
    pub last_position: Option<u64>,
    pub applied: u64,
}

/// The projections in the compact form checkpoints store: the binding as its packed words,
/// Held reservations as numbers. Loading one copies blocks; it parses no reservation ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedProjections {
    pub binding: PackedBinding,
    pub counts: BTreeMap<String, PoolCount>,
    pub expiry: PackedExpiry,
    pub next_version: BTreeMap<String, u64>,
    pub last_position: Option<u64>,
    pub applied: u64,
}

impl Default for Projections {
    fn default() -> Self {
        let hasher = PoolHasher::default();
        Projections {
            binding: Binding::with_hasher(hasher.clone()),
            counts: PoolCounts::with_hasher(hasher.clone()),
            expiry: ExpiryIndex::default(),
            next_version: PoolMap::with_hasher_and_shard_amount(hasher, POOL_SHARDS),
            last_position: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }
}

impl Projections {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shard `pool` falls in, the same in every pool map of these projections. Workers
    /// applying events side by side that split pools by shard never touch one shard's lock
    /// from two threads.
    pub fn pool_shard(&self, pool: &str) -> usize {
        self.next_version.determine_map(pool)
    }

    /// Applies the event recorded at `version` of its pool stream and global `position`.
    pub fn apply(&self, version: u64, position: u64, event: &Event) -> Applied {
        let applied = self.apply_uncounted(version, event);
        if applied == Applied::Applied {
            self.account(1, position);
        }
        applied
    }

    /// [`Projections::apply`] without adding to the totals (events applied, last position):
    /// workers applying partitions of one log side by side add theirs once in a while with
    /// [`Projections::account`], instead of all writing the same two counters every event.
    pub fn apply_uncounted(&self, version: u64, event: &Event) -> Applied {
        // Looked up by `&str`: the pool id is copied only the first time a pool is seen.
        let mut next = match self.next_version.get_mut(event.pool.as_str()) {
            Some(next) => next,
            None => self.next_version.entry(event.pool.clone()).or_insert(0),
        };
        if version < *next {
            return Applied::Skipped;
        }
        if version > *next {
            return Applied::Gap { expected: *next };
        }
        *next = version + 1;
        drop(next);
        self.binding.apply(version, event);
        self.counts.apply(event);
        self.expiry
            .apply(self.pool_shard(event.pool.as_str()), event);
        Applied::Applied
    }

    /// Adds `applied` events to the total, the last of them at `last_position` or earlier.
    pub fn account(&self, applied: u64, last_position: u64) {
        if applied == 0 {
            return;
        }
        self.last_position
            .fetch_max(last_position.saturating_add(1), Ordering::AcqRel);
        self.applied.fetch_add(applied, Ordering::AcqRel);
    }

    /// Highest global position applied, if any.
    pub fn last_position(&self) -> Option<u64> {
        self.last_position.load(Ordering::Acquire).checked_sub(1)
    }

    /// Number of events applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The next stream version expected for `pool` (0 if none seen).
    pub fn next_version(&self, pool: &PoolId) -> u64 {
        self.next_version.get(pool).map(|v| *v).unwrap_or(0)
    }

    pub fn contents(&self) -> ProjectionContents {
        ProjectionContents {
            binding: self.binding.contents(),
            counts: self.counts.contents(),
            expiry: self.expiry.contents(),
            next_version: self
                .next_version
                .iter()
                .map(|entry| (entry.key().to_string(), *entry.value()))
                .collect(),
            last_position: self.last_position(),
            applied: self.applied(),
        }
    }

    /// The packed form a checkpoint stores.
    pub fn packed(&self) -> PackedProjections {
        PackedProjections {
            binding: self.binding.packed(),
            counts: self.counts.contents(),
            expiry: self.expiry.packed(),
            next_version: self
                .next_version
                .iter()
                .map(|entry| (entry.key().to_string(), *entry.value()))
                .collect(),
            last_position: self.last_position(),
            applied: self.applied(),
        }
    }

    /// Rebuilds live projections from their packed form (a checkpoint's `projections`).
    pub fn from_packed(packed: &PackedProjections) -> Self {
        let projections = Projections::new();
        projections.binding.restore(&packed.binding);
        projections.counts.restore(&packed.counts);
        projections
            .expiry
            .restore(&packed.expiry, |pool| projections.pool_shard(pool));
        for (pool, version) in &packed.next_version {
            projections
                .next_version
                .insert(PoolId::new(pool.clone()), *version);
        }
        projections.last_position.store(
            packed.last_position.map_or(0, |p| p.saturating_add(1)),
            Ordering::Release,
        );
        projections.applied.store(packed.applied, Ordering::Release);
        projections
    }
}

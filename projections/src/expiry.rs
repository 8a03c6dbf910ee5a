//! The expiry index: Held reservations ordered by `expires_at`, for the sweeper.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::sync::Mutex;

use allot_domain::{Change, Event, PoolId, ReservationId, Timestamp};

use crate::{POOL_SHARDS, SeqMap};

/// Held reservations by time and by id. A pool is a small handle (its index in `pools`), so an
/// entry is three words and indexing or removing one copies no string.
#[derive(Debug, Default)]
struct Index {
    by_time: BTreeSet<(Timestamp, usize, u64)>,
    pools: Vec<PoolHeld>,
    handles: HashMap<PoolId, usize>,
    len: usize,
}

#[derive(Debug)]
struct PoolHeld {
    pool: PoolId,
    by_seq: SeqMap<Timestamp>,
}

impl Index {
    fn handle(&mut self, pool: &str) -> usize {
        if let Some(handle) = self.handles.get(pool) {
            return *handle;
        }
        let handle = self.pools.len();
        self.pools.push(PoolHeld {
            pool: PoolId::new(pool),
            by_seq: SeqMap::default(),
        });
        self.handles.insert(PoolId::new(pool), handle);
        handle
    }

    fn insert(&mut self, pool: &str, seq: u64, expires_at: Timestamp) {
        let handle = self.handle(pool);
        match self.pools[handle].by_seq.insert(seq, expires_at) {
            Some(previous) => {
                self.by_time.remove(&(previous, handle, seq));
            }
            None => self.len += 1,
        }
        self.by_time.insert((expires_at, handle, seq));
    }

    fn remove(&mut self, pool: &str, seq: u64) {
        if let Some(handle) = self.handles.get(pool).copied()
            && let Some(expires_at) = self.pools[handle].by_seq.remove(&seq)
        {
            self.len -= 1;
            self.by_time.remove(&(expires_at, handle, seq));
        }
    }

    fn reservation(&self, handle: usize, seq: u64) -> ReservationId {
        ReservationId {
            pool: self.pools[handle].pool.clone(),
            seq,
        }
    }
}

/// Held reservations in shards by pool: the shard of a pool is the one it has in the other
/// projections' maps ([`crate::Projections::pool_shard`]), so writers of different shards never
/// take one lock, and the sweeper's questions ask every shard.
#[derive(Debug)]
pub struct ExpiryIndex {
    shards: Box<[Mutex<Index>]>,
}

impl Default for ExpiryIndex {
    fn default() -> Self {
        ExpiryIndex {
            shards: (0..POOL_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// Held reservations of every pool, as (sequence, `expires_at`) by sequence: what checkpoints
/// store.
pub type PackedExpiry = BTreeMap<String, Vec<(u64, u64)>>;

impl ExpiryIndex {
    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding this lock leaves a consistent index (each operation is a pair of
        // inserts or removes), so a poisoned lock is still usable.
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn each_shard(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, Index>> {
        (0..self.shards.len()).map(|shard| self.lock(shard))
    }

    /// Applies `event` of a pool in `shard`.
    pub fn apply(&self, shard: usize, event: &Event) {
        match &event.change {
            Change::Reserved {
                reservation,
                expires_at,
            } => {
                self.lock(shard)
                    .insert(event.pool.as_str(), *reservation, *expires_at);
            }
            Change::Confirmed { reservation }
            | Change::Released { reservation }
            | Change::Expired { reservation, .. } => {
                self.lock(shard).remove(event.pool.as_str(), *reservation);
            }
            _ => {}
        }
    }

    /// The earliest `expires_at` among Held reservations.
    pub fn earliest(&self) -> Option<Timestamp> {
        self.each_shard()
            .filter_map(|index| index.by_time.first().map(|(at, _, _)| *at))
            .min()
    }

    /// Up to `limit` Held reservations whose window has elapsed at `now`, earliest first. Which
    /// of several due at the same instant come first (when more than `limit` are due) is not
    /// specified: the sweeper takes the rest on its next pass.
    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<(Timestamp, ReservationId)> {
        let mut due: Vec<(Timestamp, ReservationId)> = Vec::new();
        for index in self.each_shard() {
            due.extend(
                index
                    .by_time
                    .iter()
                    .take_while(|(at, _, _)| *at <= now)
                    .take(limit)
                    .map(|(at, handle, seq)| (*at, index.reservation(*handle, *seq))),
            );
        }
        due.sort_unstable_by(|(a, x), (b, y)| {
            (a, x.pool.as_str(), x.seq).cmp(&(b, y.pool.as_str(), y.seq))
        });
        due.truncate(limit);
        due
    }

    pub fn len(&self) -> usize {
        self.each_shard().map(|index| index.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every Held reservation as (`expires_at`, id), ordered by time, then pool id, then
    /// sequence (pool handles depend on arrival order; this order does not).
    pub fn contents(&self) -> Vec<(u64, String)> {
        let mut held: Vec<(Timestamp, PoolId, u64)> = Vec::new();
        for index in self.each_shard() {
            held.extend(
                index
                    .by_time
                    .iter()
                    .map(|(at, handle, seq)| (*at, index.pools[*handle].pool.clone(), *seq)),
            );
        }
        held.sort_unstable_by(|(a, p, s), (b, q, t)| (a, p.as_str(), s).cmp(&(b, q.as_str(), t)));
        held.into_iter()
            .map(|(at, pool, seq)| (at.0, ReservationId { pool, seq }.to_string()))
            .collect()
    }

    pub fn packed(&self) -> PackedExpiry {
        let mut packed = PackedExpiry::new();
        for index in self.each_shard() {
            for held in index.pools.iter().filter(|held| !held.by_seq.is_empty()) {
                let mut entries: Vec<(u64, u64)> =
                    held.by_seq.iter().map(|(seq, at)| (*seq, at.0)).collect();
                entries.sort_unstable();
                packed.insert(held.pool.to_string(), entries);
            }
        }
        packed
    }

    /// Loads `packed`, each pool into the shard `shard_of` names.
    pub fn restore(&self, packed: &PackedExpiry, shard_of: impl Fn(&str) -> usize) {
        for (pool, entries) in packed {
            let mut index = self.lock(shard_of(pool));
            for (seq, at) in entries {
                index.insert(pool, *seq, Timestamp(*at));
            }
        }
    }
}

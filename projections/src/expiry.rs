//! The expiry index: Held reservations ordered by `expires_at`, for the sweeper.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::sync::Mutex;

use allot_domain::{Change, Event, PoolId, ReservationId, Timestamp};

use crate::SeqMap;

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

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    index: Mutex<Index>,
}

/// Held reservations of every pool, as (sequence, `expires_at`) by sequence: what checkpoints
/// store.
pub type ExpiryImage = BTreeMap<String, Vec<(u64, u64)>>;

impl ExpiryIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding this lock leaves a consistent index (each operation is a pair of
        // inserts or removes), so a poisoned lock is still usable.
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn apply(&self, event: &Event) {
        match &event.change {
            Change::Reserved {
                reservation,
                expires_at,
            } => {
                self.lock()
                    .insert(event.pool.as_str(), *reservation, *expires_at);
            }
            Change::Confirmed { reservation }
            | Change::Released { reservation }
            | Change::Expired { reservation, .. } => {
                self.lock().remove(event.pool.as_str(), *reservation);
            }
            _ => {}
        }
    }

    /// The earliest `expires_at` among Held reservations.
    pub fn earliest(&self) -> Option<Timestamp> {
        self.lock().by_time.first().map(|(at, _, _)| *at)
    }

    /// Up to `limit` Held reservations whose window has elapsed at `now`, earliest first.
    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<(Timestamp, ReservationId)> {
        let index = self.lock();
        index
            .by_time
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .map(|(at, handle, seq)| (*at, index.reservation(*handle, *seq)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every Held reservation as (`expires_at`, id), ordered by time, then pool id, then
    /// sequence (pool handles depend on arrival order; this order does not).
    pub fn snapshot(&self) -> Vec<(u64, String)> {
        let index = self.lock();
        let mut held: Vec<(Timestamp, &str, u64)> = index
            .by_time
            .iter()
            .map(|(at, handle, seq)| (*at, index.pools[*handle].pool.as_str(), *seq))
            .collect();
        held.sort_unstable();
        held.into_iter()
            .map(|(at, pool, seq)| {
                let id = ReservationId {
                    pool: PoolId::new(pool),
                    seq,
                };
                (at.0, id.to_string())
            })
            .collect()
    }

    pub fn image(&self) -> ExpiryImage {
        let index = self.lock();
        index
            .pools
            .iter()
            .filter(|held| !held.by_seq.is_empty())
            .map(|held| {
                let mut entries: Vec<(u64, u64)> =
                    held.by_seq.iter().map(|(seq, at)| (*seq, at.0)).collect();
                entries.sort_unstable();
                (held.pool.to_string(), entries)
            })
            .collect()
    }

    pub fn restore(&self, image: &ExpiryImage) {
        let mut index = self.lock();
        for (pool, entries) in image {
            for (seq, at) in entries {
                index.insert(pool, *seq, Timestamp(*at));
            }
        }
    }
}

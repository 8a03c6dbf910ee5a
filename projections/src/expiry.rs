//! The expiry index: Held reservations ordered by `expires_at`, for the sweeper.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use allot_domain::{Change, Event, PoolId, ReservationId, Timestamp};

use crate::SeqMap;

/// Held reservations by time and by id. A pool's id is stored once (shared `Arc<str>`), so
/// indexing or removing a reservation copies no string; `(Timestamp, pool, seq)` orders exactly
/// as `(Timestamp, ReservationId)` does.
#[derive(Debug, Default)]
struct Index {
    by_time: BTreeSet<(Timestamp, Arc<str>, u64)>,
    by_pool: HashMap<Arc<str>, PoolHeld>,
    len: usize,
}

#[derive(Debug)]
struct PoolHeld {
    name: Arc<str>,
    by_seq: SeqMap<Timestamp>,
}

impl Index {
    fn insert(&mut self, pool: &str, seq: u64, expires_at: Timestamp) {
        let held = match self.by_pool.get_mut(pool) {
            Some(held) => held,
            None => {
                let name: Arc<str> = Arc::from(pool);
                self.by_pool
                    .entry(Arc::clone(&name))
                    .or_insert_with(|| PoolHeld {
                        name,
                        by_seq: SeqMap::default(),
                    })
            }
        };
        let name = Arc::clone(&held.name);
        match held.by_seq.insert(seq, expires_at) {
            Some(previous) => {
                self.by_time.remove(&(previous, Arc::clone(&name), seq));
            }
            None => self.len += 1,
        }
        self.by_time.insert((expires_at, name, seq));
    }

    fn remove(&mut self, pool: &str, seq: u64) {
        if let Some(held) = self.by_pool.get_mut(pool)
            && let Some(expires_at) = held.by_seq.remove(&seq)
        {
            self.len -= 1;
            self.by_time
                .remove(&(expires_at, Arc::clone(&held.name), seq));
        }
    }
}

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    index: Mutex<Index>,
}

fn reservation_id(pool: &str, seq: u64) -> ReservationId {
    ReservationId {
        pool: PoolId::new(pool),
        seq,
    }
}

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
        self.lock()
            .by_time
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .map(|(at, pool, seq)| (*at, reservation_id(pool, *seq)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<(u64, String)> {
        self.lock()
            .by_time
            .iter()
            .map(|(at, pool, seq)| (at.0, reservation_id(pool, *seq).to_string()))
            .collect()
    }

    pub fn restore(&self, snapshot: &[(u64, String)]) {
        let mut index = self.lock();
        for (at, id) in snapshot {
            if let Some(id) = ReservationId::parse(id) {
                index.insert(id.pool.as_str(), id.seq, Timestamp(*at));
            }
        }
    }
}

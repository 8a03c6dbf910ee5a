//! The expiry index: Held reservations ordered by `expires_at`, for the sweeper.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use allot_domain::{Change, Event, ReservationId, Timestamp};

#[derive(Debug, Default)]
struct Index {
    by_time: BTreeSet<(Timestamp, ReservationId)>,
    by_id: HashMap<ReservationId, Timestamp>,
}

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    index: Mutex<Index>,
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
        let id = |seq: u64| ReservationId {
            pool: event.pool.clone(),
            seq,
        };
        match &event.change {
            Change::Reserved {
                reservation,
                expires_at,
            } => {
                let mut index = self.lock();
                index.by_time.insert((*expires_at, id(*reservation)));
                index.by_id.insert(id(*reservation), *expires_at);
            }
            Change::Confirmed { reservation }
            | Change::Released { reservation }
            | Change::Expired { reservation, .. } => {
                let mut index = self.lock();
                let key = id(*reservation);
                if let Some(expires_at) = index.by_id.remove(&key) {
                    index.by_time.remove(&(expires_at, key));
                }
            }
            _ => {}
        }
    }

    /// The earliest `expires_at` among Held reservations.
    pub fn earliest(&self) -> Option<Timestamp> {
        self.lock().by_time.first().map(|(at, _)| *at)
    }

    /// Up to `limit` Held reservations whose window has elapsed at `now`, earliest first.
    pub fn due(&self, now: Timestamp, limit: usize) -> Vec<(Timestamp, ReservationId)> {
        self.lock()
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<(u64, String)> {
        self.lock()
            .by_time
            .iter()
            .map(|(at, id)| (at.0, id.to_string()))
            .collect()
    }

    pub fn restore(&self, snapshot: &[(u64, String)]) {
        let mut index = self.lock();
        for (at, id) in snapshot {
            if let Some(id) = ReservationId::parse(id) {
                index.by_time.insert((Timestamp(*at), id.clone()));
                index.by_id.insert(id, Timestamp(*at));
            }
        }
    }
}

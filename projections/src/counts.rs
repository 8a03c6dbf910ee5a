//! Pool counts: capacity, allocated and the live reservation tally of every pool.

use std::collections::BTreeMap;

use crate::{POOL_SHARDS, PoolHasher, PoolMap};
use allot_domain::{Action, Change, Event, PoolId, RejectionCode, Timestamp};
use serde::{Deserialize, Serialize};

/// One pool's counts. Stored in checkpoints: fields are serialized in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCount {
    pub capacity: u64,
    /// As recorded by the last event (`allocated_after`).
    pub allocated: u64,
    pub closed: bool,
    pub closes_at: Option<Timestamp>,
    pub reservations: u64,
    pub confirmed: u64,
    pub released: u64,
    pub expired: u64,
    /// Rejections journaled, by code.
    pub rejections: BTreeMap<RejectionCode, u64>,
    pub last_at: Timestamp,
}

impl PoolCount {
    /// Folds one of the pool's events. The one fold of capacity in force, allocated and closed:
    /// the live projection, replay's forensics and its report all apply events with this.
    pub fn apply(&mut self, event: &Event) {
        self.allocated = event.allocated_after;
        self.last_at = event.at;
        match (&event.change, &event.action) {
            (
                Change::PoolDeclared,
                Action::DeclarePool {
                    capacity,
                    closes_at,
                    ..
                },
            ) => {
                self.capacity = *capacity;
                self.closes_at = *closes_at;
            }
            (Change::CapacityAdjusted { .. }, Action::AdjustCapacity { capacity }) => {
                self.capacity = *capacity;
            }
            (Change::PoolClosed, _) => self.closed = true,
            (Change::Reserved { .. }, _) => self.reservations += 1,
            (Change::Confirmed { .. }, _) => self.confirmed += 1,
            (Change::Released { .. }, _) => self.released += 1,
            (Change::Expired { .. }, _) => self.expired += 1,
            (Change::Rejected(rejection), _) => {
                *self.rejections.entry(rejection.code()).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Reservations still holding slots (Held or Confirmed).
    pub fn live(&self) -> u64 {
        self.reservations - self.released - self.expired
    }
}

#[derive(Debug, Default)]
pub struct PoolCounts {
    pools: PoolMap<PoolCount>,
}

impl PoolCounts {
    /// Empty counts whose pool map hashes with `hasher` (see [`crate::Projections::pool_shard`]).
    pub(crate) fn with_hasher(hasher: PoolHasher) -> PoolCounts {
        PoolCounts {
            pools: PoolMap::with_hasher_and_shard_amount(hasher, POOL_SHARDS),
        }
    }

    pub fn apply(&self, event: &Event) {
        let mut count = match self.pools.get_mut(event.pool.as_str()) {
            Some(count) => count,
            None => self.pools.entry(event.pool.clone()).or_default(),
        };
        count.apply(event);
    }

    pub fn get(&self, pool: &PoolId) -> Option<PoolCount> {
        self.pools.get(pool).map(|count| count.clone())
    }

    pub fn pools(&self) -> Vec<PoolId> {
        self.pools.iter().map(|entry| entry.key().clone()).collect()
    }

    pub fn contents(&self) -> BTreeMap<String, PoolCount> {
        self.pools
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().clone()))
            .collect()
    }

    pub fn restore(&self, contents: &BTreeMap<String, PoolCount>) {
        for (pool, count) in contents {
            self.pools.insert(PoolId::new(pool.clone()), count.clone());
        }
    }
}

//! The binding: every reservation → its pool, state, units and whether its slot was returned.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use allot_domain::{Action, Change, Event, PoolId, ReservationId, ReservationState, Timestamp};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::SeqMap;

/// One reservation as the binding knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEntry {
    pub state: ReservationState,
    pub count: u32,
    pub resource: String,
    pub requester: String,
    pub reserved_at: Timestamp,
    pub expires_at: Timestamp,
    /// Set when the terminal transition returned the slot; at most once.
    pub slot_released: bool,
    /// Set when a terminal transition arrived for an entry already released (a log no correct
    /// writer produces); kept so the audit can point at it.
    pub released_twice: bool,
}

impl BindingEntry {
    pub fn slot_held(&self) -> bool {
        self.state.holds_slot() && !self.slot_released
    }
}

/// Reservations grouped by pool, so applying an event finds its entry by the event's pool id
/// (`&str`) and sequence without building a `ReservationId` (no pool id copy per event).
#[derive(Debug, Default)]
pub struct Binding {
    pools: DashMap<PoolId, SeqMap<BindingEntry>>,
    entries: AtomicUsize,
}

impl Binding {
    pub fn apply(&self, event: &Event) {
        match (&event.change, &event.action) {
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
                let entry = BindingEntry {
                    state: ReservationState::Held,
                    count: *count,
                    resource: resource.clone(),
                    requester: requester.clone(),
                    reserved_at: event.at,
                    expires_at: *expires_at,
                    slot_released: false,
                    released_twice: false,
                };
                self.insert(&event.pool, *reservation, entry);
            }
            (Change::Confirmed { reservation }, _) => {
                self.update(event, *reservation, |entry| {
                    entry.state = ReservationState::Confirmed;
                });
            }
            (Change::Released { reservation }, _) => {
                self.update(event, *reservation, |entry| {
                    entry.released_twice |= entry.slot_released;
                    entry.state = ReservationState::Released;
                    entry.slot_released = true;
                });
            }
            (Change::Expired { reservation, .. }, _) => {
                self.update(event, *reservation, |entry| {
                    entry.released_twice |= entry.slot_released;
                    entry.state = ReservationState::Expired;
                    entry.slot_released = true;
                });
            }
            _ => {}
        }
    }

    fn insert(&self, pool: &PoolId, seq: u64, entry: BindingEntry) {
        let replaced = match self.pools.get_mut(pool.as_str()) {
            Some(mut entries) => entries.insert(seq, entry).is_some(),
            None => self
                .pools
                .entry(pool.clone())
                .or_default()
                .insert(seq, entry)
                .is_some(),
        };
        if !replaced {
            self.entries.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn update(&self, event: &Event, seq: u64, change: impl FnOnce(&mut BindingEntry)) {
        if let Some(mut entries) = self.pools.get_mut(event.pool.as_str())
            && let Some(entry) = entries.get_mut(&seq)
        {
            change(entry);
        }
    }

    pub fn get(&self, reservation: &ReservationId) -> Option<BindingEntry> {
        self.pools
            .get(reservation.pool.as_str())
            .and_then(|entries| entries.get(&reservation.seq).cloned())
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` for every reservation (no order).
    pub fn for_each(&self, mut visit: impl FnMut(&ReservationId, &BindingEntry)) {
        for pool in self.pools.iter() {
            for (seq, entry) in pool.value() {
                let id = ReservationId {
                    pool: pool.key().clone(),
                    seq: *seq,
                };
                visit(&id, entry);
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, BindingEntry> {
        let mut snapshot = BTreeMap::new();
        self.for_each(|id, entry| {
            snapshot.insert(id.to_string(), entry.clone());
        });
        snapshot
    }

    pub fn restore(&self, snapshot: &BTreeMap<String, BindingEntry>) {
        for (id, entry) in snapshot {
            if let Some(id) = ReservationId::parse(id) {
                self.insert(&id.pool, id.seq, entry.clone());
            }
        }
    }
}

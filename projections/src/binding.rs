//! The binding: every reservation → its pool, state, units and whether its slot was returned.

use std::collections::BTreeMap;

use allot_domain::{Action, Change, Event, ReservationId, ReservationState, Timestamp};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Default)]
pub struct Binding {
    entries: DashMap<ReservationId, BindingEntry>,
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
                self.entries.insert(
                    ReservationId {
                        pool: event.pool.clone(),
                        seq: *reservation,
                    },
                    BindingEntry {
                        state: ReservationState::Held,
                        count: *count,
                        resource: resource.clone(),
                        requester: requester.clone(),
                        reserved_at: event.at,
                        expires_at: *expires_at,
                        slot_released: false,
                        released_twice: false,
                    },
                );
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

    fn update(&self, event: &Event, seq: u64, change: impl FnOnce(&mut BindingEntry)) {
        let id = ReservationId {
            pool: event.pool.clone(),
            seq,
        };
        if let Some(mut entry) = self.entries.get_mut(&id) {
            change(&mut entry);
        }
    }

    pub fn get(&self, reservation: &ReservationId) -> Option<BindingEntry> {
        self.entries.get(reservation).map(|entry| entry.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Calls `visit` for every reservation (no order).
    pub fn for_each(&self, mut visit: impl FnMut(&ReservationId, &BindingEntry)) {
        for entry in self.entries.iter() {
            visit(entry.key(), entry.value());
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, BindingEntry> {
        self.entries
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().clone()))
            .collect()
    }

    pub fn restore(&self, snapshot: &BTreeMap<String, BindingEntry>) {
        for (id, entry) in snapshot {
            if let Some(id) = ReservationId::parse(id) {
                self.entries.insert(id, entry.clone());
            }
        }
    }
}

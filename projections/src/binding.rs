//! The binding: every reservation → its pool, state, units and whether its slot was returned.
//!
//! One word per reservation ever made, in a vector indexed by its sequence: the binding is the
//! projection that grows with every reservation (terminal ones are kept, as the seed's audit
//! join), so it keeps only what the arithmetic and the slot checks need, plus the stream version
//! of the reservation's `Reserved` event. Labels (resource, requester) and the window are read
//! back from that event when someone asks for them; they are never held in memory.

use std::collections::BTreeMap;

use crate::{POOL_SHARDS, PoolHasher, PoolMap};
use allot_domain::{Change, Event, PoolId, ReservationId, ReservationState};
use serde::{Deserialize, Serialize};

/// One reservation as the binding knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEntry {
    pub state: ReservationState,
    pub count: u32,
    /// Version, in its pool's stream, of the `Reserved` event that placed the hold: where the
    /// resource, requester and window are read back.
    pub reserved_version: u64,
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

// The packed word: state (2 bits), present, slot_released, released_twice, count (14 bits),
// reserved_version (45 bits). A zero word is a vacancy.
const STATE_MASK: u64 = 0b11;
const PRESENT: u64 = 1 << 2;
const SLOT_RELEASED: u64 = 1 << 3;
const RELEASED_TWICE: u64 = 1 << 4;
const COUNT_SHIFT: u32 = 5;
const COUNT_BITS: u32 = 14;
const VERSION_SHIFT: u32 = COUNT_SHIFT + COUNT_BITS;
const VERSION_BITS: u32 = 64 - VERSION_SHIFT;

fn state_bits(state: ReservationState) -> u64 {
    match state {
        ReservationState::Held => 0,
        ReservationState::Confirmed => 1,
        ReservationState::Released => 2,
        ReservationState::Expired => 3,
    }
}

fn state_of_bits(bits: u64) -> ReservationState {
    match bits & STATE_MASK {
        0 => ReservationState::Held,
        1 => ReservationState::Confirmed,
        2 => ReservationState::Released,
        _ => ReservationState::Expired,
    }
}

/// The entry as one word, or `None` if its count or version does not fit (such entries are kept
/// whole, aside).
fn pack(entry: &BindingEntry) -> Option<u64> {
    let count = u64::from(entry.count);
    if count >> COUNT_BITS != 0 || entry.reserved_version >> VERSION_BITS != 0 {
        return None;
    }
    let mut word = state_bits(entry.state) | PRESENT;
    if entry.slot_released {
        word |= SLOT_RELEASED;
    }
    if entry.released_twice {
        word |= RELEASED_TWICE;
    }
    Some(word | count << COUNT_SHIFT | entry.reserved_version << VERSION_SHIFT)
}

fn unpack(word: u64) -> Option<BindingEntry> {
    if word & PRESENT == 0 {
        return None;
    }
    Some(BindingEntry {
        state: state_of_bits(word),
        count: ((word >> COUNT_SHIFT) & ((1 << COUNT_BITS) - 1)) as u32,
        reserved_version: word >> VERSION_SHIFT,
        slot_released: word & SLOT_RELEASED != 0,
        released_twice: word & RELEASED_TWICE != 0,
    })
}

/// One pool's reservations. Sequences are handed out one after the other, so reservation `seq`
/// lives at index `seq - 1`; an entry that does not pack (or arrives out of sequence, which no
/// correct log has) is kept whole in `wide`, with a vacancy in `dense` if its index exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolBinding {
    dense: Vec<u64>,
    wide: BTreeMap<u64, BindingEntry>,
}

impl PoolBinding {
    fn index(&self, seq: u64) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        (index < self.dense.len()).then_some(index)
    }

    pub fn get(&self, seq: u64) -> Option<BindingEntry> {
        match self.index(seq).and_then(|index| unpack(self.dense[index])) {
            Some(entry) => Some(entry),
            None => self.wide.get(&seq).copied(),
        }
    }

    /// Inserts or replaces; returns whether an entry was replaced. An entry kept in `wide`
    /// always has a vacancy (or no word) in `dense`, so the two never hold the same sequence.
    fn insert(&mut self, seq: u64, entry: BindingEntry) -> bool {
        let packed = pack(&entry);
        let index = match self.index(seq) {
            Some(index) => index,
            None if seq == self.dense.len() as u64 + 1 => {
                self.dense.push(0);
                self.dense.len() - 1
            }
            None => return self.wide.insert(seq, entry).is_some(),
        };
        let replaced = self.dense[index] & PRESENT != 0;
        match packed {
            Some(word) => {
                self.dense[index] = word;
                self.wide.remove(&seq).is_some() || replaced
            }
            None => {
                self.dense[index] = 0;
                self.wide.insert(seq, entry).is_some() || replaced
            }
        }
    }

    fn update(&mut self, seq: u64, change: impl FnOnce(&mut BindingEntry)) {
        if let Some(mut entry) = self.get(seq) {
            change(&mut entry);
            self.insert(seq, entry);
        }
    }

    /// Every entry: the packed ones by sequence, then those kept aside.
    pub fn iter(&self) -> impl Iterator<Item = (u64, BindingEntry)> + '_ {
        self.dense
            .iter()
            .enumerate()
            .filter_map(|(index, word)| Some((index as u64 + 1, unpack(*word)?)))
            .chain(self.wide.iter().map(|(seq, entry)| (*seq, *entry)))
    }

    pub fn len(&self) -> usize {
        present(&self.dense) + self.wide.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checkpoint form: the packed words as they are, and the entries kept aside.
    pub fn packed(&self) -> PackedPoolBinding {
        PackedPoolBinding {
            words: PackedEntries(self.dense.clone()),
            wide: self
                .wide
                .iter()
                .map(|(seq, entry)| (*seq, *entry))
                .collect(),
        }
    }

    pub fn from_packed(packed: &PackedPoolBinding) -> PoolBinding {
        PoolBinding {
            dense: packed.words.0.clone(),
            wide: packed.wide.iter().copied().collect(),
        }
    }
}

/// A pool's binding in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedPoolBinding {
    pub words: PackedEntries,
    pub wide: Vec<(u64, BindingEntry)>,
}

impl PackedPoolBinding {
    /// Reservations in the packed form.
    pub fn len(&self) -> usize {
        present(&self.words.0) + self.wide.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A pool's binding entries packed one word per reservation sequence (see `pack`; a zero word
/// is a vacancy), serialized as one block of little-endian bytes (a memory copy to load,
/// where a sequence would decode word by word).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedEntries(pub Vec<u64>);

impl Serialize for PackedEntries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for word in &self.0 {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for PackedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PackedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a block of 8-byte binding words")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<PackedEntries, E> {
                if !bytes.len().is_multiple_of(8) {
                    return Err(E::invalid_length(bytes.len(), &self));
                }
                Ok(PackedEntries(
                    bytes
                        .chunks_exact(8)
                        .map(|chunk| {
                            let mut word = [0u8; 8];
                            word.copy_from_slice(chunk);
                            u64::from_le_bytes(word)
                        })
                        .collect(),
                ))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PackedEntries, A::Error> {
                let mut bytes = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                self.visit_bytes(&bytes)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Every pool's binding in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBinding(pub BTreeMap<String, PackedPoolBinding>);

impl PackedBinding {
    /// Reservations in the packed form.
    pub fn len(&self) -> usize {
        self.0.values().map(PackedPoolBinding::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reservations grouped by pool, so applying an event finds its entry by the event's pool id
/// (`&str`) and sequence without building a `ReservationId` (no pool id copy per event).
#[derive(Debug, Default)]
pub struct Binding {
    pools: PoolMap<PoolBinding>,
}

impl Binding {
    /// An empty binding whose pool map hashes with `hasher` (shared with the other projections,
    /// so a pool falls in the same shard of each).
    pub(crate) fn with_hasher(hasher: PoolHasher) -> Binding {
        Binding {
            pools: PoolMap::with_hasher_and_shard_amount(hasher, POOL_SHARDS),
        }
    }

    /// Applies the event recorded at `version` of its pool's stream.
    pub fn apply(&self, version: u64, event: &Event) {
        match &event.change {
            Change::Reserved { reservation, .. } => {
                let count = match &event.action {
                    allot_domain::Action::Reserve { count, .. } => *count,
                    _ => return,
                };
                let entry = BindingEntry {
                    state: ReservationState::Held,
                    count,
                    reserved_version: version,
                    slot_released: false,
                    released_twice: false,
                };
                self.insert(&event.pool, *reservation, entry);
            }
            Change::Confirmed { reservation } => {
                self.update(event, *reservation, |entry| {
                    entry.state = ReservationState::Confirmed;
                });
            }
            Change::Released { reservation } => {
                self.update(event, *reservation, |entry| {
                    entry.released_twice |= entry.slot_released;
                    entry.state = ReservationState::Released;
                    entry.slot_released = true;
                });
            }
            Change::Expired { reservation, .. } => {
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
        match self.pools.get_mut(pool.as_str()) {
            Some(mut entries) => entries.insert(seq, entry),
            None => self
                .pools
                .entry(pool.clone())
                .or_default()
                .insert(seq, entry),
        };
    }

    fn update(&self, event: &Event, seq: u64, change: impl FnOnce(&mut BindingEntry)) {
        if let Some(mut entries) = self.pools.get_mut(event.pool.as_str()) {
            entries.update(seq, change);
        }
    }

    pub fn get(&self, reservation: &ReservationId) -> Option<BindingEntry> {
        self.pools
            .get(reservation.pool.as_str())
            .and_then(|entries| entries.get(reservation.seq))
    }

    /// Reservations bound, over every pool (counts each pool's words: for reports and tests).
    pub fn len(&self) -> usize {
        self.pools.iter().map(|entries| entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` for every reservation (no order).
    pub fn for_each(&self, mut visit: impl FnMut(&ReservationId, &BindingEntry)) {
        for pool in self.pools.iter() {
            for (seq, entry) in pool.value().iter() {
                let id = ReservationId {
                    pool: pool.key().clone(),
                    seq,
                };
                visit(&id, &entry);
            }
        }
    }

    pub fn contents(&self) -> BTreeMap<String, BindingEntry> {
        let mut contents = BTreeMap::new();
        self.for_each(|id, entry| {
            contents.insert(id.to_string(), *entry);
        });
        contents
    }

    pub fn packed(&self) -> PackedBinding {
        PackedBinding(
            self.pools
                .iter()
                .map(|pool| (pool.key().to_string(), pool.value().packed()))
                .collect(),
        )
    }

    pub fn restore(&self, packed: &PackedBinding) {
        for (pool, entries) in &packed.0 {
            let entries = PoolBinding::from_packed(entries);
            self.pools.insert(PoolId::new(pool.clone()), entries);
        }
    }
}

/// Reservations among packed words (a word may be an unused slot).
fn present(words: &[u64]) -> usize {
    words.iter().filter(|word| *word & PRESENT != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: ReservationState, count: u32, version: u64) -> BindingEntry {
        BindingEntry {
            state,
            count,
            reserved_version: version,
            slot_released: !state.holds_slot(),
            released_twice: false,
        }
    }

    #[test]
    fn entries_pack_into_one_word_and_back() {
        for state in [
            ReservationState::Held,
            ReservationState::Confirmed,
            ReservationState::Released,
            ReservationState::Expired,
        ] {
            for (count, version) in [(1, 0), (16_383, (1 << VERSION_BITS) - 1), (7, 123_456)] {
                let mut original = entry(state, count, version);
                original.released_twice = version == 0;
                let word = pack(&original).expect("fits");
                assert_eq!(unpack(word), Some(original));
            }
        }
        assert_eq!(pack(&entry(ReservationState::Held, 16_384, 1)), None);
        assert_eq!(
            pack(&entry(ReservationState::Held, 1, 1 << VERSION_BITS)),
            None
        );
    }

    #[test]
    fn entries_that_do_not_pack_or_arrive_out_of_sequence_are_kept_aside() {
        let mut pool = PoolBinding::default();
        let wide = entry(ReservationState::Held, 70_000, 9);
        assert!(!pool.insert(1, entry(ReservationState::Held, 1, 1)));
        assert!(!pool.insert(2, wide));
        assert!(!pool.insert(5, entry(ReservationState::Held, 1, 40)));
        assert_eq!(pool.get(2), Some(wide));
        assert_eq!(pool.get(3), None);
        assert_eq!(pool.get(5).map(|e| e.reserved_version), Some(40));
        assert_eq!(pool.len(), 3);
        // A wide entry that later packs moves back into its word.
        assert!(pool.insert(2, entry(ReservationState::Confirmed, 3, 9)));
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.get(2).map(|e| e.count), Some(3));
        let seqs: Vec<u64> = pool.iter().map(|(seq, _)| seq).collect();
        assert_eq!(seqs, [1, 2, 5]);
        assert_eq!(PoolBinding::from_packed(&pool.packed()), pool);
    }
}

//! One pool's idempotency tokens, keyed by (actor, token), in the order they were recorded.
//!
//! Two costs of a plain hash map showed as latency spikes on a hot pool and in replay:
//! - Growth: doubling a table of millions of tokens rehashed (and dereferenced) every key in
//!   one call, stalling the pool's serial stage for tens of milliseconds. Here the table grows
//!   incrementally: a full table is set aside and a twice-as-large one takes new entries, and
//!   each insert moves the entries of the next few buckets of the old table across (a
//!   sequential walk, so only the new table's writes miss the cache). A table left mostly empty
//!   by forgetting is replaced by a smaller one the same way.
//! - Forgetting: a sweep over every token dropped those past the window. Here tokens are kept
//!   in recording order (event time never goes back within a pool), so each event forgets the
//!   few oldest that left the window, and memory follows the window without a sweep.
//!
//! Records live in chunks of [`SLOTS_PER_CHUNK`] that are never reallocated; the tables hold
//! only a (hash, slot) pair each, so moving or rehashing an entry touches no key. A chunk keeps
//! its records' keys back to back in one buffer, freed with the chunk: recording a token
//! allocates nothing of its own (the allocation per key was ~18 % of recording a new token in
//! a profile of three million; `cargo bench -p allot-domain --bench token_index`).

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use crate::ids::Timestamp;

/// Records per chunk of the recording-order log.
pub const SLOTS_PER_CHUNK: usize = 1024;
// Key offsets within a chunk are u32: a chunk's keys, each at most an event's size, fit.
const _: () = assert!(SLOTS_PER_CHUNK * (crate::codec::DECODE_BYTES_MAX + 8) <= u32::MAX as usize);
/// Least number of buckets of the set-aside table walked per insert while it drains. More are
/// walked when the new table has little room for what is left (see `set_aside`): the walk ends
/// before the new table fills, so no insert pays for a whole table.
pub const BUCKETS_PER_INSERT_MIN: usize = 4;
/// Capacity of the first table (hashbrown rounds it up).
const TABLE_CAPACITY_MIN: usize = 8;
/// Tables smaller than this grow in place (a rehash of at most this many entries, tens of
/// microseconds); larger ones are set aside and drained over the following inserts.
const INCREMENTAL_CAPACITY_MIN: usize = 8192;
/// A table with more than eight times the room its live entries need is replaced by a smaller
/// one, if it is at least this large.
const TABLE_SHRINK_CAPACITY_MIN: usize = 1024;

/// A recorded token: where its key (`actor length | actor | token`) is in its chunk's key
/// buffer, its time and value. `value` is `None` once the record was forgotten or replaced by a
/// later record of the same key.
#[derive(Clone)]
struct Slot<V> {
    hash: u64,
    at: Timestamp,
    key_start: u32,
    key_len: u32,
    value: Option<V>,
}

/// [`SLOTS_PER_CHUNK`] records (the last chunk: up to) and their keys.
#[derive(Clone)]
struct Chunk<V> {
    slots: Vec<Slot<V>>,
    keys: Vec<u8>,
}

impl<V> Chunk<V> {
    fn key(&self, slot: &Slot<V>) -> &[u8] {
        let start = slot.key_start as usize;
        self.keys
            .get(start..start + slot.key_len as usize)
            .unwrap_or_default()
    }
}

/// A table entry: the key's hash (so moving and rehashing never read the key) and the slot.
#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    slot: u64,
}

/// Tokens of one pool, keyed by (actor, token), in recording order. See the module doc.
#[derive(Clone)]
pub struct TokenIndex<V> {
    hasher: foldhash::fast::RandomState,
    /// The recording-order log: every chunk but the last holds [`SLOTS_PER_CHUNK`] slots.
    chunks: VecDeque<Chunk<V>>,
    /// Slot number of `chunks[0][0]`.
    first: u64,
    /// The oldest slot not yet forgotten.
    front: u64,
    /// When the record in `front` was recorded (while `front < next`): checked per event
    /// without touching the slot.
    front_at: Timestamp,
    /// The slot the next record takes.
    next: u64,
    /// Indexes every live slot not still in `draining`.
    table: HashTable<Entry>,
    /// The table set aside at the last resize, emptied from bucket `draining_bucket` on,
    /// `walk` buckets per insert.
    draining: HashTable<Entry>,
    draining_bucket: usize,
    walk: usize,
    live: usize,
}

impl<V> Default for TokenIndex<V> {
    fn default() -> Self {
        TokenIndex {
            hasher: foldhash::fast::RandomState::default(),
            chunks: VecDeque::new(),
            first: 0,
            front: 0,
            front_at: Timestamp(0),
            next: 0,
            table: HashTable::new(),
            draining: HashTable::new(),
            draining_bucket: 0,
            walk: BUCKETS_PER_INSERT_MIN,
            live: 0,
        }
    }
}

/// The live records, oldest first (what equality compares).
impl<V: fmt::Debug> fmt::Debug for TokenIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Equal when the same tokens are remembered, with the same times and values, recorded in the
/// same order; forgotten and replaced records do not count.
impl<V: PartialEq> PartialEq for TokenIndex<V> {
    fn eq(&self, other: &TokenIndex<V>) -> bool {
        self.live == other.live && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for TokenIndex<V> {}

impl<V> TokenIndex<V> {
    /// Tokens remembered.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn hash(&self, actor: &str, token: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write_usize(actor.len());
        hasher.write(actor.as_bytes());
        hasher.write(token.as_bytes());
        hasher.finish()
    }

    /// Slot number `slot` and the chunk holding it (for its key).
    fn slot(&self, slot: u64) -> Option<(&Slot<V>, &Chunk<V>)> {
        let offset = usize::try_from(slot.checked_sub(self.first)?).ok()?;
        let chunk = self.chunks.get(offset / SLOTS_PER_CHUNK)?;
        Some((chunk.slots.get(offset % SLOTS_PER_CHUNK)?, chunk))
    }

    fn slot_mut(&mut self, slot: u64) -> Option<&mut Slot<V>> {
        let offset = usize::try_from(slot.checked_sub(self.first)?).ok()?;
        self.chunks
            .get_mut(offset / SLOTS_PER_CHUNK)?
            .slots
            .get_mut(offset % SLOTS_PER_CHUNK)
    }

    /// The live entry of (actor, token), in either table.
    fn find(&self, hash: u64, actor: &str, token: &str) -> Option<Entry> {
        let matches = |entry: &Entry| {
            entry.hash == hash
                && self
                    .slot(entry.slot)
                    .is_some_and(|(slot, chunk)| key_is(chunk.key(slot), actor, token))
        };
        self.table
            .find(hash, matches)
            .or_else(|| self.draining.find(hash, matches))
            .copied()
    }

    /// The record of (actor, token) and when it was recorded, if remembered.
    pub fn get(&self, actor: &str, token: &str) -> Option<(Timestamp, &V)> {
        let entry = self.find(self.hash(actor, token), actor, token)?;
        let (slot, _) = self.slot(entry.slot)?;
        Some((slot.at, slot.value.as_ref()?))
    }

    /// Records (actor, token) at `at`, replacing any earlier record of it. `at` must not be
    /// earlier than the previous record's (within a pool, event time never goes back); an
    /// earlier one only delays forgetting, never loses a record.
    pub fn record(&mut self, actor: &str, token: &str, at: Timestamp, value: V) {
        let hash = self.hash(actor, token);
        if let Some(entry) = self.find(hash, actor, token) {
            self.unindex(entry);
            if let Some(slot) = self.slot_mut(entry.slot) {
                slot.value = None;
            }
            self.live -= 1;
        }
        if self.table.len() >= self.table.capacity() {
            if self.table.capacity() < INCREMENTAL_CAPACITY_MIN && self.draining.is_empty() {
                // Small: growing in place costs less than moving entries over several inserts.
                self.table
                    .reserve(self.table.capacity().max(TABLE_CAPACITY_MIN), |entry| {
                        entry.hash
                    });
            } else {
                self.grow();
            }
        }
        let slot = self.next;
        if self.front == self.next {
            self.front_at = at;
        }
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.slots.len() == SLOTS_PER_CHUNK)
        {
            // Slots grow to SLOTS_PER_CHUNK as records arrive (a pool with few tokens keeps a
            // small chunk); the keys get the room the previous chunk's took, in one allocation.
            let keys = self.chunks.back().map_or(0, |full| full.keys.len());
            self.chunks.push_back(Chunk {
                slots: Vec::new(),
                keys: Vec::with_capacity(keys),
            });
        }
        if let Some(chunk) = self.chunks.back_mut() {
            let key_start = chunk.keys.len();
            push_key(&mut chunk.keys, actor, token);
            chunk.slots.push(Slot {
                hash,
                at,
                // Below 4 GiB: a key is at most an event's size (`codec::DECODE_BYTES_MAX`,
                // 1 MiB; commands allow far less), and a chunk holds 1,024 keys.
                key_start: key_start as u32,
                key_len: (chunk.keys.len() - key_start) as u32,
                value: Some(value),
            });
        }
        self.next += 1;
        self.table
            .insert_unique(hash, Entry { hash, slot }, |entry| entry.hash);
        self.live += 1;
        self.move_some(self.walk);
    }

    /// Forgets, oldest first, the records `now` is no longer within `window_ms` of. Stops at the
    /// first record still within it.
    pub fn forget_expired(&mut self, now: Timestamp, window_ms: u64) {
        if self.front == self.next || now < self.front_at.plus_ms(window_ms) {
            return;
        }
        while self.front < self.next {
            let Some((slot, _)) = self.slot(self.front) else {
                break;
            };
            // Stop at the first record still within the window, even a replaced one: where time
            // went back (a damaged log, in the audit) a later record may be older than it.
            if now < slot.at.plus_ms(window_ms) {
                break;
            }
            let live = slot.value.is_some();
            if live {
                let entry = Entry {
                    hash: slot.hash,
                    slot: self.front,
                };
                self.unindex(entry);
                self.live -= 1;
            }
            // Drop the value now; the key goes with its chunk.
            let front = self.front;
            if let Some(slot) = self.slot_mut(front) {
                slot.value = None;
            }
            self.front += 1;
            if self.front - self.first == SLOTS_PER_CHUNK as u64 {
                self.chunks.pop_front();
                self.first = self.front;
            }
            if let Some((slot, _)) = self.slot(self.front) {
                self.front_at = slot.at;
            }
        }
        if self.front == self.next && self.live == 0 {
            // Nothing left: start over, small.
            self.chunks.clear();
            self.first = self.front;
            self.table = HashTable::new();
            self.draining = HashTable::new();
            self.draining_bucket = 0;
        } else if self.draining.is_empty()
            && self.table.capacity() >= TABLE_SHRINK_CAPACITY_MIN
            && self.live.saturating_mul(8) < self.table.capacity()
        {
            self.set_aside((self.live * 2).max(TABLE_CAPACITY_MIN));
        }
    }

    /// Live records, oldest first: (actor, token, recorded at, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Timestamp, &V)> + '_ {
        let skip = usize::try_from(self.front - self.first).unwrap_or(usize::MAX);
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.slots.iter().map(move |slot| (slot, chunk)))
            .skip(skip)
            .filter_map(|(slot, chunk)| {
                let value = slot.value.as_ref()?;
                let (actor, token) = split_key(chunk.key(slot))?;
                Some((actor, token, slot.at, value))
            })
    }

    /// Removes the entry of `entry.slot` from whichever table holds it.
    fn unindex(&mut self, entry: Entry) {
        match self.table.find_entry(entry.hash, |e| e.slot == entry.slot) {
            Ok(found) => {
                found.remove();
            }
            Err(_) => {
                if let Ok(found) = self
                    .draining
                    .find_entry(entry.hash, |e| e.slot == entry.slot)
                {
                    found.remove();
                }
            }
        }
    }

    /// The table is full: set it aside and index new records in one with room for twice the
    /// live records (a table full of deleted entries comes back to size the same way).
    fn grow(&mut self) {
        self.set_aside(self.live.saturating_mul(2).max(TABLE_CAPACITY_MIN));
    }

    /// Sets the table aside (after finishing any earlier one) and indexes new records in a table
    /// of `capacity`; inserts then move the old entries across.
    fn set_aside(&mut self, capacity: usize) {
        if !self.draining.is_empty() {
            self.move_some(usize::MAX);
        }
        let old = std::mem::replace(&mut self.table, HashTable::with_capacity(capacity));
        if old.is_empty() {
            self.draining = HashTable::new();
            return;
        }
        // Inserts the new table takes before it is full, once every old entry has moved in;
        // walk the old buckets fast enough to be done by then.
        let room = self.table.capacity().saturating_sub(old.len()).max(1);
        self.walk = old.num_buckets().div_ceil(room).max(BUCKETS_PER_INSERT_MIN);
        self.draining = old;
        self.draining_bucket = 0;
    }

    /// Walks up to `buckets` buckets of `draining`, moving their entries to `table`; frees it
    /// once walked through.
    fn move_some(&mut self, buckets: usize) {
        if self.draining.num_buckets() == 0 {
            return;
        }
        let end = self
            .draining_bucket
            .saturating_add(buckets)
            .min(self.draining.num_buckets());
        for bucket in self.draining_bucket..end {
            if let Ok(found) = self.draining.get_bucket_entry(bucket) {
                let (entry, _) = found.remove();
                self.table
                    .insert_unique(entry.hash, entry, |entry| entry.hash);
            }
        }
        self.draining_bucket = end;
        if end == self.draining.num_buckets() || self.draining.is_empty() {
            self.draining = HashTable::new();
            self.draining_bucket = 0;
        }
    }
}

/// `actor length (8 bytes, little-endian) | actor | token`: unambiguous for any two strings.
fn push_key(keys: &mut Vec<u8>, actor: &str, token: &str) {
    keys.extend_from_slice(&(actor.len() as u64).to_le_bytes());
    keys.extend_from_slice(actor.as_bytes());
    keys.extend_from_slice(token.as_bytes());
}

fn key_is(key: &[u8], actor: &str, token: &str) -> bool {
    key.len() == 8 + actor.len() + token.len()
        && key.get(..8) == Some(&(actor.len() as u64).to_le_bytes()[..])
        && key.get(8..8 + actor.len()) == Some(actor.as_bytes())
        && key.get(8 + actor.len()..) == Some(token.as_bytes())
}

fn split_key(key: &[u8]) -> Option<(&str, &str)> {
    let length: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let actor_end = 8usize.checked_add(usize::try_from(u64::from_le_bytes(length)).ok()?)?;
    let actor = std::str::from_utf8(key.get(8..actor_end)?).ok()?;
    let token = std::str::from_utf8(key.get(actor_end..)?).ok()?;
    Some((actor, token))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// What the index must answer: every live (actor, token) with its time, value and order.
    #[derive(Default)]
    struct Model {
        records: HashMap<(String, String), (Timestamp, u64, u64)>,
        order: u64,
    }

    impl Model {
        fn record(&mut self, actor: &str, token: &str, at: Timestamp, value: u64) {
            self.order += 1;
            self.records.insert(
                (actor.to_owned(), token.to_owned()),
                (at, value, self.order),
            );
        }

        fn forget_expired(&mut self, now: Timestamp, window_ms: u64) {
            self.records
                .retain(|_, (at, _, _)| now < at.plus_ms(window_ms));
        }

        fn in_order(&self) -> Vec<(String, String, Timestamp, u64)> {
            let mut live: Vec<_> = self.records.iter().collect();
            live.sort_by_key(|(_, (_, _, order))| *order);
            live.into_iter()
                .map(|((actor, token), (at, value, _))| (actor.clone(), token.clone(), *at, *value))
                .collect()
        }
    }

    /// Every live record is indexed exactly once, in one of the two tables.
    fn assert_indexed_once(index: &TokenIndex<u64>) {
        assert_eq!(index.table.len() + index.draining.len(), index.len());
        for slot in index.front..index.next {
            let Some(record) = index
                .slot(slot)
                .map(|(record, _)| record)
                .filter(|record| record.value.is_some())
            else {
                continue;
            };
            let in_table = index.table.find(record.hash, |e| e.slot == slot).is_some();
            let in_draining = index
                .draining
                .find(record.hash, |e| e.slot == slot)
                .is_some();
            assert!(
                in_table != in_draining,
                "slot {slot}: {in_table} {in_draining}"
            );
        }
    }

    fn assert_same(index: &TokenIndex<u64>, model: &Model) {
        assert_indexed_once(index);
        assert_eq!(index.len(), model.records.len());
        for ((actor, token), (at, value, _)) in &model.records {
            assert_eq!(
                index.get(actor, token),
                Some((*at, value)),
                "{actor}/{token}"
            );
        }
        let listed: Vec<_> = index
            .iter()
            .map(|(actor, token, at, value)| (actor.to_owned(), token.to_owned(), at, *value))
            .collect();
        assert_eq!(listed, model.in_order());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Record (actor, token) after `advance` ms.
        Record {
            actor: u8,
            token: u16,
            advance: u64,
        },
        /// Forget what is past a window of `window_ms` at the current time.
        Forget {
            window_ms: u64,
        },
        Get {
            actor: u8,
            token: u16,
        },
        /// Set the table aside now, even while another drains (white-box).
        Grow,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..4, 0u16..600, 0u64..3).prop_map(|(actor, token, advance)| Op::Record { actor, token, advance }),
            1 => (0u64..400).prop_map(|window_ms| Op::Forget { window_ms }),
            2 => (0u8..4, 0u16..600).prop_map(|(actor, token)| Op::Get { actor, token }),
            1 => Just(Op::Grow),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through growth (while a set-aside table drains), replaced records and forgetting, the
        /// index answers what a plain map of the live records answers, in recording order.
        #[test]
        fn answers_as_a_map_of_live_records(ops in proptest::collection::vec(op(), 1..3000)) {
            let mut index = TokenIndex::default();
            let mut model = Model::default();
            let mut now = Timestamp(1_000);
            for (step, op) in ops.iter().enumerate() {
                match *op {
                    Op::Record { actor, token, advance } => {
                        now = now.plus_ms(advance);
                        let (actor, token) = (format!("a{actor}"), format!("t{token}"));
                        index.record(&actor, &token, now, step as u64);
                        model.record(&actor, &token, now, step as u64);
                    }
                    Op::Forget { window_ms } => {
                        index.forget_expired(now, window_ms);
                        model.forget_expired(now, window_ms);
                    }
                    Op::Grow => index.grow(),
                    Op::Get { actor, token } => {
                        let (actor, token) = (format!("a{actor}"), format!("t{token}"));
                        let expected = model.records.get(&(actor.clone(), token.clone()));
                        prop_assert_eq!(
                            index.get(&actor, &token),
                            expected.map(|(at, value, _)| (*at, value))
                        );
                    }
                }
                if step % 16 == 0 {
                    assert_indexed_once(&index);
                }
            }
            assert_same(&index, &model);
        }
    }

    #[test]
    fn growth_moves_a_few_entries_per_insert_and_then_frees_the_old_table() {
        let mut index = TokenIndex::default();
        let mut inserted = 0u64;
        let mut record_next = |index: &mut TokenIndex<u64>| {
            index.record(
                "actor",
                &inserted.to_string(),
                Timestamp(inserted),
                inserted,
            );
            inserted += 1;
            inserted
        };
        record_next(&mut index);
        // Fill the table past the size that grows in place, then one more insert sets it aside.
        while index.table.len() < index.table.capacity()
            || index.table.capacity() < INCREMENTAL_CAPACITY_MIN
        {
            record_next(&mut index);
        }
        let full = index.table.len();
        let mut count = record_next(&mut index);
        let moved = full - index.draining.len();
        assert!(moved <= index.walk, "moved {moved}");
        assert_eq!(index.table.len(), 1 + moved);
        assert!(index.table.capacity() >= 2 * full);
        // Still answered while split between the tables.
        for token in 0..count {
            assert_eq!(
                index.get("actor", &token.to_string()).map(|(_, v)| *v),
                Some(token)
            );
        }
        while !index.draining.is_empty() {
            count = record_next(&mut index);
        }
        assert_eq!(index.draining.capacity(), 0, "the set-aside table is freed");
        assert_eq!(index.table.len(), count as usize);
        assert_eq!(index.len(), count as usize);
    }

    #[test]
    fn forgetting_drops_whole_chunks_and_an_emptied_index_starts_over() {
        let mut index = TokenIndex::default();
        let count = 3 * SLOTS_PER_CHUNK as u64 + 7;
        for n in 0..count {
            index.record("a", &n.to_string(), Timestamp(n), n);
        }
        assert_eq!(index.chunks.len(), 4);
        // A window of 10 ms at `count + 5`: only records after `count - 5` are within it.
        index.forget_expired(Timestamp(count + 5), 10);
        assert_eq!(index.len(), 4);
        assert_eq!(index.chunks.len(), 1);
        assert_eq!(index.get("a", "0"), None);
        assert!(index.get("a", &(count - 1).to_string()).is_some());
        index.forget_expired(Timestamp(count + 100), 10);
        assert!(index.is_empty());
        assert_eq!(index.chunks.len(), 0);
        index.record("a", "again", Timestamp(count + 100), 1);
        assert_eq!(index.get("a", "again"), Some((Timestamp(count + 100), &1)));
    }

    #[test]
    fn keys_do_not_run_actor_into_token() {
        let mut index = TokenIndex::default();
        index.record("ab", "c", Timestamp(1), 1);
        index.record("a", "bc", Timestamp(1), 2);
        assert_eq!(index.get("ab", "c").map(|(_, v)| *v), Some(1));
        assert_eq!(index.get("a", "bc").map(|(_, v)| *v), Some(2));
        assert_eq!(index.get("abc", ""), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn a_replaced_record_keeps_one_entry_and_takes_the_new_place_in_order() {
        let mut index = TokenIndex::default();
        index.record("a", "x", Timestamp(1), 1);
        index.record("a", "y", Timestamp(2), 2);
        index.record("a", "x", Timestamp(3), 3);
        assert_eq!(index.len(), 2);
        let order: Vec<_> = index
            .iter()
            .map(|(_, token, _, _)| token.to_owned())
            .collect();
        assert_eq!(order, ["y", "x"]);
        // y leaves the window at 12; x (recorded again at 3) stays until 13.
        index.forget_expired(Timestamp(12), 10);
        assert_eq!(index.get("a", "y"), None);
        assert_eq!(index.get("a", "x"), Some((Timestamp(3), &3)));
    }

    #[test]
    fn a_record_still_within_the_window_is_kept_where_time_went_back() {
        // A damaged log (the audit reads those): X at 2000, R at 1000, X again at 2050, Y at
        // 2060. At 2060 with a 100 ms window R is past it, but X's replaced record at the
        // front is not: forgetting stops there, and R (older) is kept, never a newer one lost.
        let mut index = TokenIndex::default();
        index.record("a", "X", Timestamp(2000), 1);
        index.record("a", "R", Timestamp(1000), 2);
        index.record("a", "X", Timestamp(2050), 3);
        index.record("a", "Y", Timestamp(2060), 4);
        index.forget_expired(Timestamp(2060), 100);
        assert_eq!(index.get("a", "R"), Some((Timestamp(1000), &2)));
        assert_eq!(index.len(), 3);
        index.forget_expired(Timestamp(2200), 100);
        assert!(index.is_empty());
    }

    #[test]
    fn a_chunks_keys_take_one_allocation_sized_from_the_previous_chunk() {
        let mut index = TokenIndex::default();
        for n in 0..3 * SLOTS_PER_CHUNK as u64 {
            index.record("actor", &format!("{n:08}"), Timestamp(n), n);
        }
        assert_eq!(index.chunks.len(), 3);
        let key_bytes = 8 + "actor".len() + 8;
        for pair in index.chunks.make_contiguous().windows(2) {
            assert_eq!(pair[0].keys.len(), SLOTS_PER_CHUNK * key_bytes);
            assert_eq!(pair[1].keys.capacity(), pair[0].keys.len(), "regrown");
        }
        assert_eq!(index.get("actor", "00002047").map(|(_, v)| *v), Some(2047));
    }

    #[test]
    fn a_pool_with_one_token_stays_small() {
        let mut index = TokenIndex::default();
        index.record("actor", "token", Timestamp(1), 1u64);
        assert!(index.chunks.iter().all(|chunk| chunk.slots.capacity() < 16));
        assert!(index.chunks.iter().all(|chunk| chunk.keys.capacity() < 64));
        assert!(index.table.capacity() < 16);
    }

    #[test]
    fn a_table_left_mostly_empty_is_replaced_by_a_smaller_one() {
        let mut index = TokenIndex::default();
        let mut model = Model::default();
        for n in 0..20_000u64 {
            index.record("a", &n.to_string(), Timestamp(n), n);
            model.record("a", &n.to_string(), Timestamp(n), n);
        }
        let large = index.table.capacity() + index.draining.capacity();
        // Keep the last 100 only.
        index.forget_expired(Timestamp(20_000), 100);
        model.forget_expired(Timestamp(20_000), 100);
        assert_same(&index, &model);
        for n in 20_000..20_200u64 {
            index.record("a", &n.to_string(), Timestamp(n), n);
            model.record("a", &n.to_string(), Timestamp(n), n);
            index.forget_expired(Timestamp(n), 100);
            model.forget_expired(Timestamp(n), 100);
            assert_indexed_once(&index);
        }
        assert_same(&index, &model);
        assert!(index.draining.capacity() == 0);
        assert!(
            index.table.capacity() * 8 < large,
            "{} of {large}",
            index.table.capacity()
        );
    }
}

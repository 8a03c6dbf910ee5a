//! The in-memory index of the embedded log: where each durable event lives in the file, and
//! the positions of each stream's events. Built by recovery (or loaded from the index snapshot),
//! extended by the writer after each fdatasync, read by everyone else. It holds only durable
//! events.
//!
//! Compact on purpose (16 bytes per event; a 10-million-event log fits in ~160 MB):
//! - per event 12 bytes ([`Entry`]): the record's offset as a `u32` delta from the offset of the
//!   first event of its block of [`OFFSET_BLOCK_EVENTS`], its length and its stream id;
//! - per block one `u64` base offset;
//! - per stream the positions of its events, as `u32` while positions fit (4 bytes per event),
//!   widened to `u64` for that stream once one does not;
//! - an event's version is its rank in its stream's positions (a binary search), not stored.
//!
//! Entries and positions are [`ChunkedVec`]s: growing never copies what is already indexed, so
//! publishing a batch under the write lock takes as long at 100 million events as at 1,000.

use foldhash::HashMap;
use std::sync::Arc;

use allot_domain::integrity::Seal;

use super::chunked::ChunkedVec;
use super::format::{BATCH_HEADER_BYTES_MAX, FRAME_BYTES_MAX};

/// Events per offset block. Two consecutive events are at most two frames and a batch header
/// apart, so a whole block's offsets fit in `u32` deltas from its base (checked below).
pub(crate) const OFFSET_BLOCK_EVENTS: usize = 128;
const _: () = assert!(
    (OFFSET_BLOCK_EVENTS as u64) * (2 * FRAME_BYTES_MAX + BATCH_HEADER_BYTES_MAX as u64)
        <= u32::MAX as u64
);

/// Where one event's record lies in the log file, and what the frame said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventLoc {
    pub offset: u64,
    pub len: u32,
    pub stream: u32,
    pub version: u64,
}

/// One event as stored: 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Offset minus the base offset of the event's block.
    pub delta: u32,
    pub len: u32,
    pub stream: u32,
}

/// A stream's positions in version order: narrow while every position fits in `u32`.
#[derive(Debug)]
enum Positions {
    Narrow(ChunkedVec<u32>),
    Wide(ChunkedVec<u64>),
}

impl Positions {
    fn with_capacity(n: usize) -> Self {
        Positions::Narrow(ChunkedVec::with_capacity(n))
    }

    fn len(&self) -> usize {
        match self {
            Positions::Narrow(v) => v.len(),
            Positions::Wide(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> Option<u64> {
        match self {
            Positions::Narrow(v) => v.get(i).map(u64::from),
            Positions::Wide(v) => v.get(i),
        }
    }

    fn push(&mut self, position: u64) {
        match self {
            Positions::Narrow(v) => match u32::try_from(position) {
                Ok(p) => v.push(p),
                Err(_) => {
                    // Once per stream, at position 2^32.
                    let mut wide: ChunkedVec<u64> = v.iter().map(u64::from).collect();
                    wide.push(position);
                    *self = Positions::Wide(wide);
                }
            },
            Positions::Wide(v) => v.push(position),
        }
    }

    /// Rank of `position` among the stream's positions, if it is one of them.
    fn rank(&self, position: u64) -> Option<usize> {
        match self {
            Positions::Narrow(v) => {
                let p = u32::try_from(position).ok()?;
                v.binary_search(&p)
            }
            Positions::Wide(v) => v.binary_search(&position),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Positions::Narrow(v) => v.heap_bytes(),
            Positions::Wide(v) => v.heap_bytes(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Index {
    /// Indexed by position: positions are the global sequence number, 0-based.
    entries: ChunkedVec<Entry>,
    /// Base offset of each block of [`OFFSET_BLOCK_EVENTS`] events.
    bases: Vec<u64>,
    stream_ids: HashMap<Arc<str>, u32>,
    stream_names: Vec<Arc<str>>,
    /// Indexed by stream id, then by version.
    stream_positions: Vec<Positions>,
    /// Offset of the last batch the index covers (0 while it covers none).
    last_batch_offset: u64,
    /// End of the last batch the index covers: where the next batch goes.
    end: u64,
    /// The seal of the last batch the index covers (format 2), with its sequence number.
    head: Option<ChainHead>,
}

/// Where the chain stands after the last covered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: u64,
    pub seal: Seal,
}

impl Index {
    /// An empty index of a log whose first batch would go at `end`.
    pub fn new(end: u64) -> Self {
        Self {
            entries: ChunkedVec::default(),
            bases: Vec::new(),
            stream_ids: HashMap::default(),
            stream_names: Vec::new(),
            stream_positions: Vec::new(),
            last_batch_offset: 0,
            end,
            head: None,
        }
    }

    /// Rebuilds an index from its stored parts (the snapshot). `entries` and `bases` are
    /// checked for shape; stream ids must be below `names.len()`.
    pub fn from_parts(
        names: Vec<Arc<str>>,
        bases: Vec<u64>,
        entries: ChunkedVec<Entry>,
        last_batch_offset: u64,
        end: u64,
        head: Option<ChainHead>,
    ) -> Result<Self, &'static str> {
        if bases.len() != entries.len().div_ceil(OFFSET_BLOCK_EVENTS) {
            return Err("block count does not match event count");
        }
        let mut stream_ids = HashMap::with_capacity_and_hasher(names.len(), Default::default());
        for (id, name) in names.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| "too many streams")?;
            if stream_ids.insert(name.clone(), id).is_some() {
                return Err("stream name listed twice");
            }
        }
        // Count first so every stream's positions are allocated once, exactly.
        let mut counts = vec![0usize; names.len()];
        for (position, entry) in entries.iter().enumerate() {
            let count = counts
                .get_mut(entry.stream as usize)
                .ok_or("stream id out of range")?;
            *count += 1;
            let base = bases[position / OFFSET_BLOCK_EVENTS];
            let record_end = base + u64::from(entry.delta) + u64::from(entry.len);
            if entry.len == 0 || record_end > end {
                return Err("event record outside the covered log");
            }
        }
        let mut stream_positions: Vec<Positions> =
            counts.into_iter().map(Positions::with_capacity).collect();
        for (position, entry) in entries.iter().enumerate() {
            stream_positions[entry.stream as usize].push(position as u64);
        }
        Ok(Self {
            entries,
            bases,
            stream_ids,
            stream_names: names,
            stream_positions,
            last_batch_offset,
            end,
            head,
        })
    }

    /// Number of durable events, which is also the next position.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Number of events in `stream` (its next version).
    pub fn stream_len(&self, stream: &str) -> Option<u64> {
        let id = self.stream_ids.get(stream)?;
        Some(self.stream_positions[*id as usize].len() as u64)
    }

    pub fn stream_name(&self, id: u32) -> &Arc<str> {
        &self.stream_names[id as usize]
    }

    pub fn stream_names(&self) -> &[Arc<str>] {
        &self.stream_names
    }

    /// Entries of positions `from..to`, in position order.
    pub fn entries(&self, from: usize, to: usize) -> impl Iterator<Item = Entry> + '_ {
        self.entries.range(from, to)
    }

    pub fn bases(&self) -> &[u64] {
        &self.bases
    }

    /// Offset of the last covered batch and the end of the covered log.
    pub fn covered(&self) -> (u64, u64) {
        (self.last_batch_offset, self.end)
    }

    /// Records that the batch at `offset` ending at `end`, sealed by `head` in format 2, is now
    /// covered (after its events).
    pub fn set_covered(&mut self, offset: u64, end: u64, head: Option<ChainHead>) {
        self.last_batch_offset = offset;
        self.end = end;
        self.head = head;
    }

    /// The seal of the last covered batch (format 2).
    pub fn head(&self) -> Option<ChainHead> {
        self.head
    }

    /// Adds the next event; the caller guarantees its version continues the stream and that
    /// `offset` is past every earlier event's.
    pub fn push(&mut self, stream: &str, offset: u64, len: u32) {
        let id = match self.stream_ids.get(stream) {
            Some(id) => *id,
            None => {
                let id = self.stream_names.len() as u32;
                let name: Arc<str> = Arc::from(stream);
                self.stream_ids.insert(name.clone(), id);
                self.stream_names.push(name);
                self.stream_positions.push(Positions::with_capacity(0));
                id
            }
        };
        let position = self.entries.len();
        if position.is_multiple_of(OFFSET_BLOCK_EVENTS) {
            self.bases.push(offset);
        }
        let base = self.bases[position / OFFSET_BLOCK_EVENTS];
        // Within a block by the assertion on OFFSET_BLOCK_EVENTS.
        let delta = (offset - base) as u32;
        self.stream_positions[id as usize].push(position as u64);
        self.entries.push(Entry {
            delta,
            len,
            stream: id,
        });
    }

    /// The location of the event at `position`, by one search of its stream's positions: what
    /// [`Index::range`] must give, event by event (the tests hold it to that).
    #[cfg(test)]
    pub fn loc(&self, position: u64) -> Option<EventLoc> {
        let p = usize::try_from(position).ok()?;
        let entry = self.entries.get(p)?;
        let version = self.stream_positions[entry.stream as usize].rank(position)?;
        Some(self.event_loc(p, entry, version))
    }

    /// The location of `entry`, the event at position `p`, whose version is `version`.
    fn event_loc(&self, p: usize, entry: Entry, version: usize) -> EventLoc {
        EventLoc {
            offset: self.bases[p / OFFSET_BLOCK_EVENTS] + u64::from(entry.delta),
            len: entry.len,
            stream: entry.stream,
            version: version as u64,
        }
    }

    /// Locations of events with positions in `[from, from + max)`.
    pub fn range(&self, from: u64, max: usize) -> Vec<(u64, EventLoc)> {
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        let end = start.saturating_add(max).min(self.entries.len());
        // A stream's events in one page are usually several: the first one's version is a
        // binary search, each later one's the next version when that is its position (a
        // search per event was a tenth of a whole-log audit). The stream of the run at hand is
        // kept apart from the map of streams the page left (appends write runs of one stream,
        // so most events need no map operation).
        let mut next_versions: HashMap<u32, usize> = HashMap::default();
        let mut run: Option<(u32, usize)> = None;
        let mut out = Vec::with_capacity(end - start);
        for (p, entry) in (start..end).zip(self.entries.range(start, end)) {
            let position = p as u64;
            let positions = &self.stream_positions[entry.stream as usize];
            let next = match run {
                Some((stream, next)) if stream == entry.stream => next,
                _ => {
                    if let Some((stream, next)) = run {
                        next_versions.insert(stream, next);
                    }
                    next_versions
                        .get(&entry.stream)
                        .copied()
                        .unwrap_or(usize::MAX)
                }
            };
            let version = if positions.get(next) == Some(position) {
                next
            } else {
                match positions.rank(position) {
                    Some(version) => version,
                    None => continue,
                }
            };
            run = Some((entry.stream, version + 1));
            out.push((position, self.event_loc(p, entry, version)));
        }
        out
    }

    /// Locations of `stream`'s events with versions in `[from_version, from_version + max)`.
    pub fn stream_range(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Vec<(u64, EventLoc)> {
        let Some(id) = self.stream_ids.get(stream) else {
            return Vec::new();
        };
        let positions = &self.stream_positions[*id as usize];
        let start = usize::try_from(from_version)
            .unwrap_or(usize::MAX)
            .min(positions.len());
        let end = start.saturating_add(max).min(positions.len());
        (start..end)
            .filter_map(|v| {
                let p = positions.get(v)?;
                let at = usize::try_from(p).ok()?;
                let entry = self.entries.get(at)?;
                Some((p, self.event_loc(at, entry, v)))
            })
            .collect()
    }

    /// Heap bytes held by the index (capacity, not just length), stream names included.
    pub fn heap_bytes(&self) -> usize {
        let names: usize = self.stream_names.iter().map(|n| n.len() + 16).sum();
        self.entries.heap_bytes()
            + self.bases.capacity() * 8
            + self
                .stream_positions
                .iter()
                .map(|p| p.heap_bytes() + std::mem::size_of::<Positions>())
                .sum::<usize>()
            + self.stream_names.capacity() * std::mem::size_of::<Arc<str>>()
            // The map holds another pointer per name plus its hash table slot.
            + self.stream_ids.capacity() * (std::mem::size_of::<Arc<str>>() + 8)
            + names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_versions_and_widened_positions_round_trip() {
        let mut index = Index::new(16);
        let mut offset = 16u64;
        for p in 0..1000u64 {
            let stream = if p % 3 == 0 { "a" } else { "b" };
            index.push(stream, offset, 10 + (p % 7) as u32);
            offset += 10 + p % 7 + 50;
        }
        assert_eq!(index.stream_len("a"), Some(334));
        let loc = index.loc(999).unwrap();
        assert_eq!((loc.stream, loc.version), (0, 333));
        let stream = index.stream_range("b", 10, 3);
        assert_eq!(stream[0].1, index.loc(stream[0].0).unwrap());
        // Pages (versions carried from event to event) agree with one lookup per event.
        for (from, max) in [(0, 1000), (1, 7), (500, 499), (998, 5)] {
            let page = index.range(from, max);
            assert_eq!(page.len(), max.min(1000 - from as usize));
            for (p, loc) in page {
                assert_eq!(Some(loc), index.loc(p), "position {p}");
            }
        }
        let mut widened = Positions::with_capacity(1);
        widened.push(7);
        widened.push(u64::from(u32::MAX) + 1);
        assert_eq!(widened.rank(u64::from(u32::MAX) + 1), Some(1));
        assert_eq!((widened.get(0), widened.len()), (Some(7), 2));
    }

    #[test]
    fn locations_hold_across_chunks_and_through_from_parts() {
        use super::super::chunked::CHUNK_ITEMS;
        let events = 2 * CHUNK_ITEMS + 10;
        let mut index = Index::new(16);
        let mut offsets = Vec::with_capacity(events);
        let mut offset = 16u64;
        for p in 0..events {
            index.push(if p % 2 == 0 { "even" } else { "odd" }, offset, 40);
            offsets.push(offset);
            offset += 40 + (p % 3) as u64;
        }
        let entries: ChunkedVec<Entry> = index.entries(0, events).collect();
        let (last_batch, end) = (offsets[events - 1], offset);
        let loaded = Index::from_parts(
            index.stream_names().to_vec(),
            index.bases().to_vec(),
            entries,
            last_batch,
            end,
            None,
        )
        .unwrap();
        for built in [&index, &loaded] {
            for p in [0, CHUNK_ITEMS - 1, CHUNK_ITEMS, 2 * CHUNK_ITEMS, events - 1] {
                let loc = built.loc(p as u64).unwrap();
                assert_eq!(loc.offset, offsets[p], "position {p}");
                assert_eq!((loc.stream, loc.version), ((p % 2) as u32, (p / 2) as u64));
            }
            assert_eq!(built.loc(events as u64), None);
            // Versions CHUNK_ITEMS - 1 and CHUNK_ITEMS of "odd" straddle its positions' chunks.
            let odd = built.stream_range("odd", CHUNK_ITEMS as u64 - 1, 2);
            let positions: Vec<u64> = odd.iter().map(|(p, _)| *p).collect();
            assert_eq!(
                positions,
                [2 * CHUNK_ITEMS as u64 - 1, 2 * CHUNK_ITEMS as u64 + 1]
            );
            assert_eq!(built.stream_len("even"), Some(events.div_ceil(2) as u64));
        }
    }
}

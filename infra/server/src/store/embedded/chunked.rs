//! A growable sequence kept in chunks that never move once full, for the index of the embedded
//! log. A `Vec` that doubles copies everything it holds at each doubling; the index grows under
//! its write lock, so at 2^21 events that copy (and the page faults of the new allocation) held
//! every append for ~10–25 ms, and the stall doubles with the log. Here a push copies at most
//! one chunk that is not yet full (a small first chunk growing, or the exactly sized last chunk
//! of a loaded snapshot), never more than [`CHUNK_ITEMS`] items.
//!
//! Item `i` is at `chunks[i / CHUNK_ITEMS][i % CHUNK_ITEMS]`: a chunk is filled to
//! [`CHUNK_ITEMS`] before the next one is pushed to (chunks allocated ahead by `with_capacity`
//! may be empty).

/// Items per full chunk.
pub(crate) const CHUNK_ITEMS: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy> ChunkedVec<T> {
    /// Room for exactly `n` items, allocated up front (loading a snapshot knows its counts).
    pub fn with_capacity(n: usize) -> Self {
        let mut chunks = Vec::with_capacity(n.div_ceil(CHUNK_ITEMS));
        let mut left = n;
        while left > 0 {
            let size = left.min(CHUNK_ITEMS);
            chunks.push(Vec::with_capacity(size));
            left -= size;
        }
        Self { chunks, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> Option<T> {
        self.chunks
            .get(i / CHUNK_ITEMS)?
            .get(i % CHUNK_ITEMS)
            .copied()
    }

    pub fn push(&mut self, item: T) {
        // The chunk that item `len` belongs in: allocated ahead by `with_capacity`, or new.
        let at = self.len / CHUNK_ITEMS;
        if self.chunks.is_empty() {
            // Most streams never pass one chunk: no room for four chunk headers each.
            self.chunks.reserve_exact(1);
        }
        if at == self.chunks.len() {
            let capacity = if at == 0 { 4 } else { CHUNK_ITEMS };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        let chunk = &mut self.chunks[at];
        if chunk.len() == chunk.capacity() {
            // Only a first chunk that is still small grows (doubling, up to a full chunk).
            let want = (chunk.len() * 2).clamp(4, CHUNK_ITEMS);
            chunk.reserve_exact(want - chunk.len());
        }
        chunk.push(item);
        self.len += 1;
    }

    /// Every item, in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.range(0, self.len)
    }

    /// Items `from..to` (clamped to the length), in order.
    pub fn range(&self, from: usize, to: usize) -> impl Iterator<Item = T> + '_ {
        let to = to.min(self.len);
        let from = from.min(to);
        self.chunks
            .iter()
            .enumerate()
            .skip(from / CHUNK_ITEMS)
            .flat_map(move |(c, chunk)| {
                let first = c * CHUNK_ITEMS;
                let start = from.saturating_sub(first).min(chunk.len());
                let end = to.saturating_sub(first).min(chunk.len());
                chunk[start..end].iter().copied()
            })
            .take(to - from)
    }

    /// Heap bytes held (capacity, not just length).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
            + self
                .chunks
                .iter()
                .map(|chunk| chunk.capacity() * std::mem::size_of::<T>())
                .sum::<usize>()
    }
}

impl<T: Copy + Ord> ChunkedVec<T> {
    /// Index of `item` in a sequence sorted ascending, if present.
    pub fn binary_search(&self, item: &T) -> Option<usize> {
        // The first chunk whose last item is not below `item` is the only one that can hold it.
        let c = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last < item));
        let chunk = self.chunks.get(c)?;
        chunk.binary_search(item).ok().map(|i| c * CHUNK_ITEMS + i)
    }
}

impl<T: Copy> Extend<T> for ChunkedVec<T> {
    /// A chunk at a time: `push` opens (or grows) the chunk, the rest of its room is filled by
    /// `Vec::extend` (loading a snapshot's 10 million entries one `push` at a time was a loop
    /// of divisions and branches).
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        let mut items = items.into_iter();
        while let Some(first) = items.next() {
            self.push(first);
            let chunk = &mut self.chunks[(self.len - 1) / CHUNK_ITEMS];
            let before = chunk.len();
            let room = chunk.capacity().min(CHUNK_ITEMS) - before;
            chunk.extend(items.by_ref().take(room));
            self.len += chunk.len() - before;
        }
    }
}

impl<T: Copy> FromIterator<T> for ChunkedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut out = ChunkedVec::default();
        out.extend(items);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_chunks_are_never_reallocated() {
        let mut items = ChunkedVec::default();
        for i in 0..CHUNK_ITEMS as u32 {
            items.push(i);
        }
        let first = items.chunks[0].as_ptr();
        for i in 0..(3 * CHUNK_ITEMS) as u32 {
            items.push(i);
        }
        assert_eq!(items.chunks[0].as_ptr(), first, "a full chunk moved");
        assert!(
            items
                .chunks
                .iter()
                .all(|chunk| chunk.capacity() == CHUNK_ITEMS),
            "chunks past the first are allocated whole, the first grows to one chunk exactly"
        );
        assert_eq!(items.len(), 4 * CHUNK_ITEMS);
    }

    #[test]
    fn with_capacity_allocates_exactly_and_pushes_fill_it() {
        let n = 2 * CHUNK_ITEMS + 5;
        let mut items = ChunkedVec::with_capacity(n);
        let bytes = items.heap_bytes();
        for i in 0..n as u64 {
            items.push(i);
        }
        assert_eq!(
            items.heap_bytes(),
            bytes,
            "pushing into reserved room allocated"
        );
        assert_eq!(bytes, 3 * 24 + n * 8);
        assert_eq!(items.get(n - 1), Some(n as u64 - 1));
        assert_eq!(items.get(n), None);
    }

    proptest! {
        // Each case pushes up to three chunks: a few dozen cases cover the boundaries.
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn behaves_as_a_vec(
            len in 0usize..(3 * CHUNK_ITEMS),
            reserve in prop::option::of(0usize..(3 * CHUNK_ITEMS)),
            probes in prop::collection::vec(0usize..(3 * CHUNK_ITEMS + 2), 8),
        ) {
            // Sorted with gaps, so searches also miss.
            let model: Vec<u32> = (0..len as u32).map(|i| i * 3).collect();
            let mut items = reserve.map_or_else(ChunkedVec::default, ChunkedVec::with_capacity);
            // Pushed one by one, then the rest in one extend.
            let (pushed, extended) = model.split_at(model.len() / 3);
            for item in pushed {
                items.push(*item);
            }
            items.extend(extended.iter().copied());
            prop_assert_eq!(items.len(), model.len());
            prop_assert_eq!(items.get(len.wrapping_sub(1)), model.last().copied());
            // Random probes, and every index next to a chunk boundary.
            let edges = (1..=3).flat_map(|c| [c * CHUNK_ITEMS - 1, c * CHUNK_ITEMS]);
            for p in probes.iter().copied().chain(edges) {
                prop_assert_eq!(items.get(p), model.get(p).copied());
                let to = p.saturating_add(probes[0]);
                let expected: Vec<u32> =
                    model[p.min(model.len())..to.min(model.len())].to_vec();
                prop_assert_eq!(items.range(p, to).collect::<Vec<_>>(), expected);
                let needles = [p as u32, p as u32 * 3, model.get(p).map_or(0, |item| item + 1)];
                for needle in needles {
                    prop_assert_eq!(items.binary_search(&needle), model.binary_search(&needle).ok());
                }
            }
        }
    }
}

//! Live heap bytes, counted by a wrapper around the binary's global allocator.
//!
//! The memory scenario needs the bytes its structures hold, whatever allocator the binary uses
//! (mimalloc keeps freed pages, so RSS overstates; glibc's counters miss mimalloc entirely).
//! Counting is off until [`start_counting`]: outside the memory scenario each allocation pays
//! one relaxed load, not a contended atomic add.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// A global allocator that counts live bytes (while counting is on) and defers to `A`.
#[derive(Debug)]
pub struct CountingAllocator<A>(pub A);

fn count(bytes: usize, sign: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        // Sizes of live allocations fit in i64.
        LIVE_BYTES.fetch_add(sign * bytes as i64, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to `A` unchanged; only counters are updated beside it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the inner allocator's.
        let block = unsafe { self.0.alloc(layout) };
        if !block.is_null() {
            count(layout.size(), 1);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let block = unsafe { self.0.alloc_zeroed(layout) };
        if !block.is_null() {
            count(layout.size(), 1);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from this allocator with `layout`, as the caller guarantees.
        unsafe { self.0.dealloc(block, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is valid for `layout`'s alignment.
        let moved = unsafe { self.0.realloc(block, layout, new_size) };
        if !moved.is_null() {
            count(new_size, 1);
            count(layout.size(), -1);
        }
        moved
    }
}

/// Turns counting on; live bytes are counted from here (frees of older blocks subtract, so
/// only differences between two readings mean anything).
pub fn start_counting() {
    COUNTING.store(true, Ordering::SeqCst);
}

/// Bytes allocated minus bytes freed since counting started, if the running binary's global
/// allocator is a [`CountingAllocator`] and counting is on.
pub fn live_bytes() -> Option<i64> {
    if !COUNTING.load(Ordering::SeqCst) {
        return None;
    }
    // A probe far bigger than what another thread frees in the meantime (a 4 KiB one was
    // sometimes hidden by a concurrent free, and the figure fell back to RSS).
    const PROBE_BYTES: usize = 1 << 20;
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    let probe = std::hint::black_box(vec![0u8; PROBE_BYTES]);
    let during = LIVE_BYTES.load(Ordering::SeqCst);
    drop(probe);
    // Without the wrapper installed nothing moves: say so rather than report zero growth.
    (during - before >= PROBE_BYTES as i64 / 2).then(|| LIVE_BYTES.load(Ordering::SeqCst))
}

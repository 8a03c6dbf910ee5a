//! A tiny deterministic generator (splitmix64) for tests that must replay their choices from a
//! printed seed: kill moments, load choices, damage offsets.

/// splitmix64 state; `Rng(seed)` starts a sequence.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // an infinite sequence, not an iterator of items
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `n` (n > 0) for test choices.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

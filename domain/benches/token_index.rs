//! Time to look up and record a new idempotency token in one pool's `TokenIndex`, the way a hot
//! pool's shard does: 1,000 actors taking turns, every token new, millions of them remembered
//! (a 10-minute window keeps every token of a bench run).
//!
//! `cargo bench -p allot-domain --bench token_index [-- TOKENS]` (default 3,000,000). Prints
//! ns per token for three rounds. Uses the system allocator (the `allot` binary uses mimalloc).

use std::hint::black_box;
use std::time::Instant;

use allot_domain::ids::Timestamp;
use allot_domain::token_index::TokenIndex;

/// Actors taking turns, as the hot-pool scenario's clients do.
const ACTORS: usize = 1_000;
/// Roughly what a pool's cached outcome weighs.
type Value = [u8; 48];

fn main() {
    let tokens: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(3_000_000);
    let actors: Vec<String> = (0..ACTORS).map(|i| format!("client{i}")).collect();
    let names: Vec<String> = (0..tokens).map(|i| (i / ACTORS + 1).to_string()).collect();
    for round in 0..3 {
        let mut index: TokenIndex<Value> = TokenIndex::default();
        let started = Instant::now();
        let mut replays = 0u64;
        for (i, token) in names.iter().enumerate() {
            let actor = &actors[i % ACTORS];
            if index.get(actor, token).is_some() {
                replays += 1;
            }
            index.record(actor, token, Timestamp((i / ACTORS) as u64), [i as u8; 48]);
        }
        let elapsed = started.elapsed();
        black_box(&index);
        println!(
            "round {round}: {:.0} ns per new token ({tokens} tokens, {} remembered, {replays} replays)",
            elapsed.as_nanos() as f64 / tokens as f64,
            index.len()
        );
    }
}

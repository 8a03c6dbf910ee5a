//! The fuzz targets' properties (`fuzz/src/checks.rs`) on the stable toolchain: each seed, then
//! seeded random mutations of the seeds. Not coverage-guided, so no substitute for `cargo fuzz`
//! (see `RELIABILITY.md`); it keeps the properties compiled and exercised in the default suite
//! (the unit tests below) and runs longer by hand:
//!
//! ```text
//! cargo run --release -p allot-tests --bin fuzz_smoke -- [SECONDS_PER_TARGET] [SEED]
//! cargo run -p allot-tests --bin fuzz_smoke -- seeds fuzz/corpus   # cargo fuzz's seed corpora
//! ```

// Part of the file is for the unit tests and for `fuzz/src/bin/write_seeds.rs` only.
#[allow(dead_code)]
#[path = "../../../fuzz/src/checks.rs"]
mod checks;

use std::time::{Duration, Instant};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// A few random edits of `seed`: flipped bits, set bytes, insertions, deletions, a truncation.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            _ => {
                let keep = rng.below(out.len() + 1);
                out.truncate(keep);
            }
        }
    }
    out
}

type Check = fn(&[u8]);

fn targets() -> Vec<(&'static str, Check, Vec<Vec<u8>>)> {
    let log = checks::seed_log();
    let torn = log[..log.len().saturating_sub(5)].to_vec();
    vec![
        (
            "log_recovery",
            checks::log_recovery as Check,
            vec![log, torn],
        ),
        (
            "event_decode",
            checks::event_decode as Check,
            checks::seed_events(),
        ),
        (
            "http_request",
            checks::http_request as Check,
            checks::seed_requests(),
        ),
    ]
}

/// Runs `check` on every seed, then on mutations until `budget` or `runs_max` runs.
fn exercise(check: Check, seeds: &[Vec<u8>], seed: u64, budget: Duration, runs_max: u64) -> u64 {
    let mut rng = Rng(seed);
    for input in seeds {
        check(input);
    }
    let started = Instant::now();
    let mut runs = 0;
    while runs < runs_max && started.elapsed() < budget {
        let base = &seeds[rng.below(seeds.len())];
        check(&mutate(base, &mut rng));
        runs += 1;
    }
    runs
}

/// Writes each target's seeds to `dir/TARGET/seed-NNN` (cargo fuzz's corpus layout).
fn write_seeds(dir: &std::path::Path) -> std::io::Result<()> {
    for (name, _, seeds) in targets() {
        let target_dir = dir.join(name);
        std::fs::create_dir_all(&target_dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i:03}")), seed)?;
        }
        println!("{}: {} seeds", target_dir.display(), seeds.len());
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("seeds") {
        let dir = args.nth(1).unwrap_or_else(|| "fuzz/corpus".to_owned());
        return write_seeds(std::path::Path::new(&dir));
    }
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(7);
    for (name, check, seeds) in targets() {
        let started = Instant::now();
        let runs = exercise(check, &seeds, seed, Duration::from_secs(seconds), u64::MAX);
        println!(
            "{name}: {runs} mutated inputs in {:.1} s, no property broken",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNS: u64 = 150;

    fn run(name: &str) {
        let (_, check, seeds) = targets()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .expect("target");
        assert!(!seeds.is_empty());
        exercise(check, &seeds, 0x5eed, Duration::from_secs(30), RUNS);
    }

    #[test]
    fn log_recovery_survives_mutated_logs() {
        run("log_recovery");
    }

    #[test]
    fn event_decode_survives_mutated_events() {
        run("event_decode");
    }

    #[test]
    fn http_request_survives_mutated_requests() {
        run("http_request");
    }

    /// The seeds' signed commands are valid: they record events, so the signature oracle sees
    /// real state changes (2 actors, the fuzz pool, and at least reserve, confirm and adjust).
    #[test]
    fn signed_seeds_change_state() {
        let events = checks::seed_events();
        // One per recorded event, plus the folded sequence.
        assert!(
            events.len() > 6,
            "only {} events recorded",
            events.len() - 1
        );
    }

    /// The oracle can fail: a forged event in the store is caught.
    #[test]
    #[should_panic(expected = "without a valid signature")]
    fn http_oracle_catches_an_unsigned_event() {
        checks::check_forged_event_is_caught();
    }
}

//! The deterministic simulator (`allot_tests::sim`) over many seeds.
//!
//! CI runs the default seed budget in debug:
//!
//! ```text
//! cargo test -p allot-tests --test simulation
//! ```
//!
//! Many thousands of seeds (the long mode):
//!
//! ```text
//! SIM_SEEDS=20000 cargo test --release -p allot-tests --test simulation
//! ```
//!
//! Environment:
//! - `SIM_SEED=n` runs exactly seed `n` (the line a failure prints), with its trace.
//! - `SIM_SEEDS=n` runs seeds `SIM_SEED_BASE .. SIM_SEED_BASE + n` (default 0 and 200).
//! - `SIM_STEPS=n` steps per seed (default 120).
//! - `SIM_TRACE_LINES=n` keeps the last `n` steps of trace in a failure report (default 40).
//! - `SIM_LOST_ACKS=0` never loses the acknowledgement of a written append (the other faults
//!   stay on); `SIM_STORE_FAULTS=0` injects no store fault at all; `SIM_CRASHES=0` never
//!   crashes; `SIM_INSTANCES=1` never runs a second service instance. Each narrows what a seed
//!   does (and so changes the run a seed number names): for bisecting a failure.
//! - `SIM_FAULT=expire-forgets-release` (or `cancel-forgets-release`) switches a test-only domain
//!   bug on for `SIM_SEED`, to reproduce a vacuity-guard failure.
//!
//! Seeds run on a few OS threads, each seed on its own current-thread runtime, so every seed's
//! run is a function of the seed alone whatever thread it lands on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use allot_domain::fault::Fault;
use allot_tests::sim::{self, Failure, Options, Summary, parse_fault};

/// Seeds CI runs by default.
const CI_SEEDS: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(parsed) => Some(parsed),
        Err(_) => panic!("{name}={value} is not a number"),
    }
}

fn options(domain_fault: Option<Fault>) -> Options {
    let mut options = Options {
        domain_fault,
        ..Options::default()
    };
    if env_u64("SIM_LOST_ACKS") == Some(0) {
        options.lost_acks = false;
    }
    if env_u64("SIM_STORE_FAULTS") == Some(0) {
        options.store_faults = false;
    }
    if env_u64("SIM_CRASHES") == Some(0) {
        options.crashes = false;
    }
    if env_u64("SIM_INSTANCES") == Some(1) {
        options.instances = false;
    }
    if let Some(lines) = env_u64("SIM_TRACE_LINES") {
        options.trace_lines = usize::try_from(lines).unwrap_or(usize::MAX);
    }
    if let Some(steps) = env_u64("SIM_STEPS") {
        options.steps = u32::try_from(steps).unwrap_or(u32::MAX);
    }
    options
}

/// Runs `seeds` on worker threads; returns the summaries and the failure of the lowest failing
/// seed (workers stop taking new seeds once one failed above it).
fn run_seeds(seeds: std::ops::Range<u64>, options: Options) -> (Vec<Summary>, Option<Failure>) {
    let next = AtomicU64::new(seeds.start);
    let lowest_failed = AtomicU64::new(u64::MAX);
    let summaries = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds.end || seed > lowest_failed.load(Ordering::SeqCst) {
                        return;
                    }
                    match sim::run(seed, &options) {
                        Ok(summary) => summaries.lock().unwrap().push(summary),
                        Err(failure) => {
                            lowest_failed.fetch_min(seed, Ordering::SeqCst);
                            failures.lock().unwrap().push(failure);
                        }
                    }
                }
            });
        }
    });
    let mut summaries = summaries.into_inner().unwrap();
    summaries.sort_by_key(|summary| summary.seed);
    let failure = failures
        .into_inner()
        .unwrap()
        .into_iter()
        .min_by_key(|failure| failure.seed);
    (summaries, failure)
}

fn report(summaries: &[Summary], started: Instant) {
    let sum = |f: fn(&Summary) -> u64| summaries.iter().map(f).sum::<u64>();
    println!(
        "simulated {} seeds in {:.1?}: {} attempts, {} acknowledged, {} events, {} crashes, {} sweeps, \
         appends failed before durable {}, acks lost {}, reads failed {}",
        summaries.len(),
        started.elapsed(),
        sum(|s| s.attempts),
        sum(|s| s.acknowledged),
        sum(|s| s.events as u64),
        sum(|s| u64::from(s.crashes)),
        sum(|s| u64::from(s.sweeps)),
        sum(|s| s.faults.appends_failed_before_durable),
        sum(|s| s.faults.appends_ack_lost),
        sum(|s| s.faults.reads_failed),
    );
}

/// The seven invariants hold on every seed of the budget (or the one `SIM_SEED` names).
#[test]
fn simulated_seeds_keep_the_invariants() {
    let started = Instant::now();
    if let Some(seed) = env_u64("SIM_SEED") {
        let fault = std::env::var("SIM_FAULT").ok().map(|name| {
            parse_fault(&name).unwrap_or_else(|| panic!("SIM_FAULT={name} names no fault"))
        });
        match sim::run(seed, &options(fault)) {
            Ok(summary) => println!(
                "seed {seed} passed in {:.1?}: {summary:?}",
                started.elapsed()
            ),
            Err(failure) => panic!("{failure}"),
        }
        return;
    }
    let base = env_u64("SIM_SEED_BASE").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS);
    let (summaries, failure) = run_seeds(base..base + count, options(None));
    report(&summaries, started);
    if let Some(failure) = failure {
        panic!("{failure}");
    }
    assert_eq!(summaries.len() as u64, count, "every seed ran");
    if std::env::var_os("SIM_STORE_FAULTS").is_some()
        || std::env::var_os("SIM_CRASHES").is_some()
        || std::env::var_os("SIM_LOST_ACKS").is_some()
    {
        return;
    }
    // The budget exercised what it claims to.
    assert!(summaries.iter().any(|s| s.crashes > 0), "no seed crashed");
    assert!(
        summaries.iter().any(|s| s.faults.appends_ack_lost > 0),
        "no ack was lost"
    );
    assert!(
        summaries
            .iter()
            .any(|s| s.faults.appends_failed_before_durable > 0),
        "no append failed"
    );
    assert!(
        summaries.iter().any(|s| s.faults.reads_failed > 0),
        "no read failed"
    );
}

/// The vacuity guard: with a domain bug switched on, the simulator fails within the CI budget
/// with an allocation coherence violation, and the failing seed fails the same way again.
fn caught(fault: Fault) {
    if std::env::var("SIM_SEED").is_ok() {
        return;
    }
    let (_, failure) = run_seeds(0..CI_SEEDS, options(Some(fault)));
    let failure = failure.unwrap_or_else(|| panic!("the simulator missed {fault:?}"));
    println!("caught as expected:\n{failure}");
    assert!(
        failure.violation.contains("invariant 1"),
        "caught, but not as an allocation coherence violation: {}",
        failure.violation
    );
    let reproduce = failure.reproduce();
    assert!(
        reproduce.contains(&format!("SIM_SEED={} ", failure.seed)),
        "{reproduce}"
    );
    assert!(
        reproduce.contains(&format!("SIM_FAULT={} ", sim::fault_name(fault))),
        "{reproduce}"
    );
    let again = sim::run(failure.seed, &options(Some(fault)))
        .expect_err("the failing seed passed when run again");
    assert_eq!(again, failure, "the same seed failed differently");
}

#[test]
fn simulator_catches_an_expiry_that_forgets_its_slot() {
    caught(Fault::ExpireForgetsRelease);
}

#[test]
fn simulator_catches_a_cancel_that_forgets_its_slot() {
    caught(Fault::CancelForgetsRelease);
}

/// One seed is one run: the same seed gives the same log, step for step.
#[test]
fn a_seed_reproduces_its_run_exactly() {
    if std::env::var("SIM_SEED").is_ok() {
        return;
    }
    for seed in [1, 7, 42] {
        let first = sim::run(seed, &options(None));
        let second = sim::run(seed, &options(None));
        assert_eq!(first, second, "seed {seed} ran differently twice");
        if let Ok(summary) = first {
            assert!(summary.events > 0, "seed {seed} recorded nothing");
        }
    }
}

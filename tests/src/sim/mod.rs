//! The deterministic simulator: one `u64` seed drives clients, an administrator, the sweeper,
//! the clock, store faults and crashes against the real command path (`Service`) over a
//! fault-injecting memory store, and the seven invariants are checked after every step.
//!
//! How it works (TigerBeetle's VOPR is the model):
//! - Everything runs on one current-thread tokio runtime, so the interleaving of concurrent
//!   submissions (batched per pool by the service) is a function of the seed alone, and so is the
//!   order in which the store draws its faults.
//! - Each seed picks its own "swarm" parameters: pools (capacity, named units, cutoff, token
//!   window), clients, fault rates, crash rate, sweep rate, concurrency, and one or two service
//!   instances over the one store (the second's clock possibly skewed by 1.5 s), each command
//!   and sweep going to an instance the dice pick (version conflicts, stale instances).
//! - Each step moves a [`ManualClock`](allot_server::clock::ManualClock) (small advances, jumps
//!   past holds, exactly onto an `expires_at` or a cutoff, occasionally backwards), then runs a
//!   round: several commands submitted at once in seeded order (`join_all`), sometimes with
//!   `sweep_once` among them, with deliberate races (cancel against expire, confirm against the
//!   sweeper, the same token twice at once). Some rounds crash: the round is abandoned part-way,
//!   the service is closed and a new one opened over the same store (projections rebuilt from the
//!   log). Clients retry unanswered commands with the same token, reuse acknowledged tokens and
//!   collide with them on purpose.
//! - [`model`] judges every answer against what the clients know; [`mirror`] folds the log three
//!   ways (the domain's `evolve`, the projections' `apply`, its own arithmetic) and compares the
//!   result with `Service::load_pool` and with each instance's live projections (which must be
//!   the fold of a prefix of each pool's log: never ahead, never different; they may lag behind
//!   an append whose acknowledgement was lost or another instance's writes until that instance
//!   next appends to the pool, after which they must be current).
//! - At the end: faults off, every unanswered command retried until answered, the log replayed
//!   from nothing and compared with the live state, a restart compared with the state before it,
//!   and the `allot-replay` audit run over the whole log.
//!
//! A failure names the seed, the step, the violation, the last steps, and the command that
//! reproduces it.
//!
//! Layout:
//! - `store`: [`FaultyStore`], the fault-injecting store.
//! - `model`: the reference model of acknowledged outcomes.
//! - `mirror`: the log folds and the invariant checks, the replay and the audit.
//! - `driver`: the world, its steps and its finish.

mod driver;
pub mod mirror;
pub mod model;
pub mod store;

use std::fmt;

use allot_domain::fault::Fault;

pub use store::{FaultRates, FaultStats, FaultyStore};

/// Lines of step trace a failure report keeps by default.
pub const TRACE_LINES: usize = 40;

/// What a run does besides following its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Steps before the finish.
    pub steps: u32,
    /// Inject store faults (at rates the seed picks).
    pub store_faults: bool,
    /// Among the store faults, lose acknowledgements of appends that were written.
    pub lost_acks: bool,
    /// Crash and reopen the service (at a rate the seed picks).
    pub crashes: bool,
    /// Let the seed run a second service instance over the same store, its clock possibly
    /// skewed, writing the same pools (version conflicts, stale instances).
    pub instances: bool,
    /// A test-only domain bug to switch on for this run (the vacuity guard).
    pub domain_fault: Option<Fault>,
    /// Lines of step trace a failure report keeps (the last ones).
    pub trace_lines: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 120,
            store_faults: true,
            lost_acks: true,
            crashes: true,
            instances: true,
            domain_fault: None,
            trace_lines: TRACE_LINES,
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub seed: u64,
    pub steps: u32,
    pub attempts: u64,
    pub acknowledged: u64,
    pub reservations: usize,
    pub events: usize,
    pub crashes: u32,
    pub sweeps: u32,
    pub faults: FaultStats,
    /// A hash of every recorded payload, in log order: equal for equal seeds.
    pub log_digest: u64,
}

/// A broken invariant, with what it takes to reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub step: u32,
    pub violation: String,
    pub trace: Vec<String>,
    /// The options of the run (part of what reproduces it).
    pub options: Options,
}

impl Failure {
    /// The one-line command that runs this seed again.
    pub fn reproduce(&self) -> String {
        reproduce_command(self.seed, &self.options)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.violation
        )?;
        writeln!(f, "last steps:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(f, "reproduce: {}", self.reproduce())
    }
}

/// The name `SIM_FAULT` takes for a domain fault.
pub fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::CancelForgetsRelease => "cancel-forgets-release",
        Fault::ExpireForgetsRelease => "expire-forgets-release",
    }
}

/// The domain fault named `name`, if any.
pub fn parse_fault(name: &str) -> Option<Fault> {
    [Fault::CancelForgetsRelease, Fault::ExpireForgetsRelease]
        .into_iter()
        .find(|fault| fault_name(*fault) == name)
}

/// The command that reruns `seed` with `options` (the environment `tests/simulation.rs` reads).
pub fn reproduce_command(seed: u64, options: &Options) -> String {
    let defaults = Options::default();
    let mut env = format!("SIM_SEED={seed} ");
    if let Some(fault) = options.domain_fault {
        env.push_str(&format!("SIM_FAULT={} ", fault_name(fault)));
    }
    if options.steps != defaults.steps {
        env.push_str(&format!("SIM_STEPS={} ", options.steps));
    }
    if !options.store_faults {
        env.push_str("SIM_STORE_FAULTS=0 ");
    }
    if !options.lost_acks {
        env.push_str("SIM_LOST_ACKS=0 ");
    }
    if !options.crashes {
        env.push_str("SIM_CRASHES=0 ");
    }
    if !options.instances {
        env.push_str("SIM_INSTANCES=1 ");
    }
    format!("{env}cargo test -p allot-tests --test simulation -- --nocapture")
}

/// Runs one seed to the end on a fresh current-thread runtime on this thread.
pub fn run(seed: u64, options: &Options) -> Result<Summary, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|error| Failure {
            seed,
            step: 0,
            violation: format!("cannot build a runtime: {error}"),
            trace: Vec::new(),
            options: *options,
        })?;
    allot_domain::fault::set(options.domain_fault);
    let result = runtime.block_on(driver::run(seed, *options));
    allot_domain::fault::set(None);
    result
}

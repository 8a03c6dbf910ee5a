//! A fault-injecting [`EventStore`] over [`MemoryStore`], driven by its own seeded RNG.
//!
//! Faults, each drawn per call from [`FaultRates`] (per mille):
//! - append fails before it is durable: nothing is written, the caller gets
//!   `Unavailable { maybe_written: false }`;
//! - append is written but the acknowledgement is lost: the events are in the log, the caller
//!   gets `Unavailable { maybe_written: true }`;
//! - a read (`read_stream`, `read_all`) fails with `Unavailable`.
//!
//! With the memory store everything acknowledged is durable, so a crash is the simulator's to
//! stage (drop the `Service`, keep this store, open a new one). Faults can be paused, so the
//! simulator's own checks read the log without disturbing it; the draws happen in the order
//! the store is called, which the current-thread runtime makes a function of the seed.

use std::sync::Mutex;

use allot_server::store::memory::MemoryStore;
use allot_server::store::{
    AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
    Subscription,
};
use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How often each fault fires, per mille of calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    pub append_fails_before_durable: u32,
    pub append_ack_lost: u32,
    pub read_fails: u32,
}

/// What the store did, for the summary and the trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub appends: u64,
    pub appends_failed_before_durable: u64,
    pub appends_ack_lost: u64,
    pub reads: u64,
    pub reads_failed: u64,
}

#[derive(Debug)]
struct FaultState {
    rng: StdRng,
    rates: FaultRates,
    paused: bool,
    stats: FaultStats,
}

/// The memory store with injected faults.
#[derive(Debug)]
pub struct FaultyStore {
    inner: MemoryStore,
    state: Mutex<FaultState>,
}

/// What to do with one append.
enum AppendFate {
    Write,
    FailBeforeDurable,
    LoseAck,
}

impl FaultyStore {
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        FaultyStore {
            inner: MemoryStore::new(),
            state: Mutex::new(FaultState {
                rng: StdRng::seed_from_u64(seed),
                rates,
                paused: false,
                stats: FaultStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The log without faults: what the simulator's checks read.
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    /// Stops (true) or resumes (false) injecting faults.
    pub fn pause(&self, paused: bool) {
        self.lock().paused = paused;
    }

    pub fn set_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    fn append_fate(&self) -> AppendFate {
        let mut state = self.lock();
        state.stats.appends += 1;
        if state.paused {
            return AppendFate::Write;
        }
        let draw = state.rng.gen_range(0..1000u32);
        let rates = state.rates;
        if draw < rates.append_fails_before_durable {
            state.stats.appends_failed_before_durable += 1;
            AppendFate::FailBeforeDurable
        } else if draw < rates.append_fails_before_durable + rates.append_ack_lost {
            state.stats.appends_ack_lost += 1;
            AppendFate::LoseAck
        } else {
            AppendFate::Write
        }
    }

    fn read_fails(&self) -> bool {
        let mut state = self.lock();
        state.stats.reads += 1;
        if state.paused {
            return false;
        }
        let rate = state.rates.read_fails;
        let fails = state.rng.gen_range(0..1000u32) < rate;
        if fails {
            state.stats.reads_failed += 1;
        }
        fails
    }
}

fn unavailable(reason: &str, maybe_written: bool) -> StoreError {
    StoreError::Unavailable {
        reason: format!("injected fault: {reason}"),
        maybe_written,
    }
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        match self.append_fate() {
            AppendFate::FailBeforeDurable => {
                Err(unavailable("append failed before it was durable", false))
            }
            AppendFate::LoseAck => {
                self.inner.append(stream, expected, events).await?;
                Err(unavailable("append written, acknowledgement lost", true))
            }
            AppendFate::Write => self.inner.append(stream, expected, events).await,
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.read_fails() {
            return Err(unavailable("read_stream failed", false));
        }
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.read_fails() {
            return Err(unavailable("read_all failed", false));
        }
        self.inner.read_all(after, max_count).await
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        self.inner.subscribe_all(after).await
    }
}

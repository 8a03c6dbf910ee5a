//! `allot bench`: named, reproducible performance scenarios. Each prints one human line and one
//! JSON line; figures and the commands that produced them live in `BENCHMARKS.md`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_domain::{
    Action, ActorId, Attestation, Command, IdempotencyToken, Outcome, PoolId, Timestamp,
};
use allot_projections::Projections;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::clock::{Clock, SystemClock};
use crate::identity::params_digest;
use crate::ledger::{Ledger, SubmitError};
use crate::metrics::Metrics;
use crate::store::EventStore;

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub scenario: String,
    pub commands: u64,
    pub seconds: f64,
    pub commands_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
    pub oversold: u64,
    pub notes: String,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:.0} commands/s ({} in {:.1} s), p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, errors {}, oversold {}{}",
            self.scenario,
            self.commands_per_sec,
            self.commands,
            self.seconds,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors,
            self.oversold,
            if self.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.notes)
            }
        )
    }
}

/// Per-client latency samples, merged at the end.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)])
}

fn result(
    scenario: &str,
    samples: Vec<Samples>,
    elapsed: Duration,
    oversold: u64,
    notes: String,
) -> BenchResult {
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    for sample in samples {
        all.extend(sample.latencies_us);
        errors += sample.errors;
    }
    all.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    BenchResult {
        scenario: scenario.to_owned(),
        commands: all.len() as u64,
        seconds,
        commands_per_sec: all.len() as f64 / seconds,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        p999_us: percentile(&all, 0.999),
        errors,
        oversold,
        notes,
    }
}

/// A command as the in-process path receives it: authenticated already (the HTTP scenario
/// covers signatures), with a signature-sized attestation so events have their real size.
fn command(
    pool: &PoolId,
    actor: &ActorId,
    token: String,
    action: Action,
    now: Timestamp,
) -> Command {
    Command {
        pool: pool.clone(),
        actor: actor.clone(),
        attestation: Attestation {
            signed_at: now,
            signature: vec![0x5a; 64],
        },
        token: IdempotencyToken::new(token),
        digest: params_digest(&action),
        action,
    }
}

async fn open(store: Arc<dyn EventStore>) -> Result<Ledger, String> {
    Ledger::open(
        store,
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        Arc::new(Metrics::new()),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn declare(
    ledger: &Ledger,
    pool: &PoolId,
    capacity: u64,
    closes_at: Option<Timestamp>,
) -> Result<(), String> {
    let admin = ActorId::new("admin");
    let action = Action::DeclarePool {
        capacity,
        closes_at,
        units: vec![],
        idempotency_window_ms: 600_000,
    };
    let now = SystemClock.now();
    match ledger
        .submit(command(
            pool,
            &admin,
            format!("declare-{pool}"),
            action,
            now,
        ))
        .await
    {
        Ok(reply) if matches!(reply.outcome, Outcome::PoolDeclared { .. }) => Ok(()),
        other => Err(format!("declare {pool}: {other:?}")),
    }
}

async fn timed(ledger: &Ledger, command: Command, samples: &mut Samples) -> Option<Outcome> {
    let started = Instant::now();
    let reply = ledger.submit(command).await;
    samples
        .latencies_us
        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    match reply {
        Ok(reply) => Some(reply.outcome),
        Err(SubmitError::Rejected(rejection)) => Some(Outcome::Rejected(rejection)),
        Err(_) => {
            samples.errors += 1;
            None
        }
    }
}

/// (a) `uniform`: many pools, each client reserves in a random pool then confirms or cancels.
pub async fn uniform(
    store: Arc<dyn EventStore>,
    pools: usize,
    clients: usize,
    duration: Duration,
    seed: u64,
) -> Result<BenchResult, String> {
    let ledger = open(store).await?;
    let pool_ids: Vec<PoolId> = (0..pools).map(|i| PoolId::new(format!("u{i}"))).collect();
    for pool in &pool_ids {
        declare(&ledger, pool, 1_000_000_000, None).await?;
    }
    let pool_ids = Arc::new(pool_ids);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let ledger = ledger.clone();
        let pool_ids = Arc::clone(&pool_ids);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
            let actor = ActorId::new(format!("client{client}"));
            let mut samples = Samples::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pool = &pool_ids[rng.gen_range(0..pool_ids.len())];
                let now = SystemClock.now();
                let reserve = Action::Reserve {
                    resource: "unit".into(),
                    requester: format!("r{client}"),
                    duration_ms: 600_000,
                    count: 1,
                };
                n += 1;
                let outcome = timed(
                    &ledger,
                    command(pool, &actor, format!("{n}"), reserve, now),
                    &mut samples,
                )
                .await;
                let Some(Outcome::Reserved { reservation, .. }) = outcome else {
                    continue;
                };
                let follow = if rng.gen_bool(0.5) {
                    Action::ConfirmReservation {
                        reservation: reservation.seq,
                    }
                } else {
                    Action::CancelReservation {
                        reservation: reservation.seq,
                    }
                };
                n += 1;
                timed(
                    &ledger,
                    command(pool, &actor, format!("{n}"), follow, now),
                    &mut samples,
                )
                .await;
            }
            samples
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.push(task.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    let (_, oversold) = crate::demo::coherence(ledger.projections());
    ledger.close().await;
    Ok(result(
        "uniform",
        samples,
        elapsed,
        oversold,
        format!("{pools} pools, {clients} clients, durable, in-process"),
    ))
}

/// (b) `hot-pool`: one pool, many clients: a reserve storm until the cutoff, then each holder
/// confirms or cancels and reserves again.
pub async fn hot_pool(
    store: Arc<dyn EventStore>,
    seats: u64,
    clients: usize,
    duration: Duration,
    seed: u64,
) -> Result<BenchResult, String> {
    let ledger = open(store).await?;
    let pool = PoolId::new("hot");
    let cutoff = Timestamp(SystemClock.now().0 + duration.as_millis() as u64);
    declare(&ledger, &pool, seats, Some(cutoff)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let ledger = ledger.clone();
        let pool = pool.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
            let actor = ActorId::new(format!("client{client}"));
            let mut samples = Samples::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = SystemClock.now();
                let reserve = Action::Reserve {
                    resource: "seat".into(),
                    requester: format!("student{client}"),
                    duration_ms: 600_000,
                    count: 1,
                };
                n += 1;
                let outcome = timed(
                    &ledger,
                    command(&pool, &actor, format!("{n}"), reserve, now),
                    &mut samples,
                )
                .await;
                let Some(Outcome::Reserved { reservation, .. }) = outcome else {
                    continue;
                };
                let follow = if rng.gen_bool(0.5) {
                    Action::ConfirmReservation {
                        reservation: reservation.seq,
                    }
                } else {
                    Action::CancelReservation {
                        reservation: reservation.seq,
                    }
                };
                n += 1;
                timed(
                    &ledger,
                    command(&pool, &actor, format!("{n}"), follow, now),
                    &mut samples,
                )
                .await;
            }
            samples
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.push(task.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    let (incoherent, oversold) = crate::demo::coherence(ledger.projections());
    let count = ledger.projections().counts.get(&pool).unwrap_or_default();
    ledger.close().await;
    Ok(result(
        "hot-pool",
        samples,
        elapsed,
        oversold + incoherent,
        format!(
            "{seats} seats, {clients} clients, durable; confirmed {}, capacity {}, allocated {}",
            count.confirmed, count.capacity, count.allocated
        ),
    ))
}

/// Opens a fresh embedded store in `dir`, or the in-memory store.
pub async fn store(dir: &Path, in_memory: bool) -> Result<Arc<dyn EventStore>, String> {
    if in_memory {
        return Ok(Arc::new(crate::store::memory::MemoryStore::new()));
    }
    crate::store::embedded::EmbeddedStore::open(dir)
        .await
        .map(|store| Arc::new(store) as Arc<dyn EventStore>)
        .map_err(|e| e.to_string())
}

//! `client`: signed commands through the batching client library ([`allot_client::Batcher`])
//! over loopback HTTP from a separate load process, beside the single-command `http` load
//! against the same server.
//!
//! The load: `clients` closed-loop logical clients, each reserving in a random pool and then
//! confirming (3 of 4) or cancelling (1 of 4), every command through one batcher with its
//! default linger and batch size. Latency is what the caller sees: from `submit` to its result.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_client::{Batcher, BatcherConfig, Outcome};
use allot_domain::{Action, ActorId, PoolId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{BenchResult, percentile, serve_for_load, stop_served};

/// What the client load process measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientLoadResult {
    pub commands: u64,
    pub seconds: f64,
    pub commands_per_sec: f64,
    /// Reserves followed by their confirm or cancel, both answered.
    pub reservations_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Commands that got an error or an unexpected rejection.
    pub errors: u64,
    /// Requests the batcher sent, and the commands per request.
    pub batches: u64,
    pub batch_mean: f64,
    pub batch_median: u64,
    pub resent_batches: u64,
    pub resent_members: u64,
}

/// The `client` scenario's result: the batching load, and the single-command load beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientResult {
    pub scenario: String,
    pub commands: u64,
    pub seconds: f64,
    pub commands_per_sec: f64,
    pub reservations_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
    pub oversold: u64,
    pub batches: u64,
    pub batch_mean: f64,
    pub batch_median: u64,
    pub resent_batches: u64,
    pub resent_members: u64,
    /// The single-command signed `http` load against the same server, after the batching one.
    pub http_commands_per_sec: f64,
    pub http_p50_us: f64,
    pub http_p99_us: f64,
    pub http_errors: u64,
    pub notes: String,
}

impl std::fmt::Display for ClientResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:.0} commands/s ({} in {:.1} s), {:.0} reservations/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, \
             batch mean {:.1} median {}, errors {}, oversold {}; single-command http: {:.0} commands/s, p50 {:.0} us, \
             p99 {:.0} us, errors {} ({})",
            self.scenario,
            self.commands_per_sec,
            self.commands,
            self.seconds,
            self.reservations_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.batch_mean,
            self.batch_median,
            self.errors,
            self.oversold,
            self.http_commands_per_sec,
            self.http_p50_us,
            self.http_p99_us,
            self.http_errors,
            self.notes
        )
    }
}

/// The service side: one server (embedded store in `dir`, `pools` pools), the batching load
/// (`client_load`) and then the single-command one (`http_load`), each in its own process.
pub async fn client(
    dir: &Path,
    pools: usize,
    clients: usize,
    config: &BatcherConfig,
    client_load: impl AsyncFnOnce(String, PathBuf) -> Result<ClientLoadResult, String>,
    http_load: impl AsyncFnOnce(String, PathBuf) -> Result<BenchResult, String>,
) -> Result<ClientResult, String> {
    let (server, base, key) = serve_for_load(dir, pools).await?;
    let batched = client_load(base.clone(), key.clone()).await;
    let single = match &batched {
        Ok(_) => http_load(base, key).await,
        Err(_) => Err("not run".to_owned()),
    };
    let (oversold, batching) = stop_served(server).await?;
    let batched = batched?;
    let single = single?;
    Ok(ClientResult {
        scenario: "client".to_owned(),
        commands: batched.commands,
        seconds: batched.seconds,
        commands_per_sec: batched.commands_per_sec,
        reservations_per_sec: batched.reservations_per_sec,
        p50_us: batched.p50_us,
        p99_us: batched.p99_us,
        p999_us: batched.p999_us,
        errors: batched.errors,
        oversold,
        batches: batched.batches,
        batch_mean: batched.batch_mean,
        batch_median: batched.batch_median,
        resent_batches: batched.resent_batches,
        resent_members: batched.resent_members,
        http_commands_per_sec: single.commands_per_sec,
        http_p50_us: single.p50_us,
        http_p99_us: single.p99_us,
        http_errors: single.errors,
        notes: format!(
            "{pools} pools, {clients} logical clients through one batcher (linger {:?}, max batch {}, {} connections), \
             signed per batch, separate load process; http: {}; server: {batching}",
            config.linger, config.max_batch, config.connections, single.notes
        ),
    })
}

/// What one logical client measured.
#[derive(Default)]
struct ClientSamples {
    latencies_us: Vec<u32>,
    pairs: u64,
    errors: u64,
}

/// The load side: `clients` logical clients through one batcher (`config`) to `server`, over
/// `pools` pools, for `duration`.
pub async fn client_load(
    server: &str,
    actor: ActorId,
    key: ed25519_dalek::SigningKey,
    config: BatcherConfig,
    (pools, clients): (usize, usize),
    duration: Duration,
    seed: u64,
) -> Result<ClientLoadResult, String> {
    let batcher = Batcher::new(server, actor, key, config).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        tasks.push(tokio::spawn(run_client(
            batcher.clone(),
            client,
            pools,
            seed,
            Arc::clone(&stop),
        )));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut pairs, mut errors) = (0, 0);
    for task in tasks {
        let samples = task.await.map_err(|e| e.to_string())?;
        all.extend(samples.latencies_us);
        pairs += samples.pairs;
        errors += samples.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let stats = batcher.stats();
    Ok(ClientLoadResult {
        commands: all.len() as u64,
        seconds,
        commands_per_sec: all.len() as f64 / seconds,
        reservations_per_sec: pairs as f64 / seconds,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        p999_us: percentile(&all, 0.999),
        errors,
        batches: stats.requests,
        batch_mean: stats.mean_batch(),
        batch_median: stats.median_batch(),
        resent_batches: stats.resent_batches,
        resent_members: stats.resent_members,
    })
}

/// One logical client: reserve in a random pool, then confirm (3 of 4) or cancel, until `stop`.
async fn run_client(
    batcher: Batcher,
    client: usize,
    pools: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> ClientSamples {
    let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
    let mut samples = ClientSamples::default();
    let requester = format!("r{client}");
    while !stop.load(Ordering::Relaxed) {
        let pool = PoolId::new(format!("h{}", rng.gen_range(0..pools.max(1))));
        let reserve = Action::Reserve {
            resource: "seat".into(),
            requester: requester.clone(),
            duration_ms: 600_000,
            count: 1,
        };
        let Some(Outcome::Reserved { reservation, .. }) =
            timed(&batcher, pool, reserve, &mut samples).await
        else {
            samples.errors += 1;
            continue;
        };
        let follow = if rng.gen_range(0..4) < 3 {
            Action::ConfirmReservation {
                reservation: reservation.seq,
            }
        } else {
            Action::CancelReservation {
                reservation: reservation.seq,
            }
        };
        match timed(&batcher, reservation.pool, follow, &mut samples).await {
            Some(Outcome::Confirmed { .. } | Outcome::Released { .. }) => samples.pairs += 1,
            _ => samples.errors += 1,
        }
    }
    samples
}

/// Submits one command, timing it from the call to its result.
async fn timed(
    batcher: &Batcher,
    pool: PoolId,
    action: Action,
    samples: &mut ClientSamples,
) -> Option<Outcome> {
    let started = Instant::now();
    let answer = batcher.submit(pool, action).await;
    samples
        .latencies_us
        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    answer.ok().map(|answer| answer.outcome)
}

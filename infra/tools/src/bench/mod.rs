//! `allot bench`: named, reproducible performance scenarios. Each prints one human line and one
//! JSON line; figures and the commands that produced them live in `BENCHMARKS.md`.
//! Must not: be imported by the service; it drives the service as a client would.

pub mod client;
pub mod heap_bytes;
pub mod runs;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_domain::{
    Action, ActorId, Attestation, Command, IdempotencyToken, Outcome, PoolId, ReservationId, Role,
    Timestamp,
};
use allot_projections::Projections;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use allot_client::wire;
use allot_client::{Read, sign_command, sign_read};
use allot_domain::signing::params_digest;
use allot_server::clock::{Clock, SystemClock};
use allot_server::http::{ACTOR_HEADER, IDEMPOTENCY_KEY, SIGNATURE_HEADER, SIGNED_AT_HEADER};
use allot_server::metrics::Metrics;
use allot_server::service::checkpoint::{CHECKPOINT_FILE, read_checkpoint, write_atomically};
use allot_server::service::{Service, SubmitError};
use allot_server::store::EventStore;

/// One scenario's result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// Reads the load made beside its commands (not counted in the command figures).
    #[serde(default)]
    pub reads: u64,
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
    /// When each command was submitted, in microseconds from the start of the run (for
    /// `--trace`: whether slow commands bunch in time or spread over clients).
    started_us: Vec<u32>,
    errors: u64,
    /// Commands answered with a rejection (in the latencies; `hold-release` says how many).
    rejected: u64,
    /// Reads answered (the `http` load reads once per four commands); not in the latencies.
    reads: u64,
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Writes `client,started_us,latency_us`, one line per command, to `path`.
fn write_trace(path: &Path, samples: &[Samples]) -> Result<(), String> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut write = || -> std::io::Result<()> {
        writeln!(out, "client,started_us,latency_us")?;
        for (client, sample) in samples.iter().enumerate() {
            for (started, latency) in sample.started_us.iter().zip(&sample.latencies_us) {
                writeln!(out, "{client},{started},{latency}")?;
            }
        }
        out.flush()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn percentile(sorted: &[u32], q: f64) -> f64 {
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
    let mut reads = 0;
    for sample in samples {
        all.extend(sample.latencies_us);
        errors += sample.errors;
        reads += sample.reads;
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
        reads,
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
        role: Role::Client,
        attestation: Attestation {
            signed_at: now,
            signature: vec![0x5a; 64],
        },
        token: IdempotencyToken::new(token),
        digest: params_digest(&action),
        action,
        batch: None,
    }
}

async fn open(store: Arc<dyn EventStore>) -> Result<Service, String> {
    Service::open(
        store,
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        Arc::new(Metrics::new()),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn declare(
    service: &Service,
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
    match service
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

async fn timed(
    service: &Service,
    command: Command,
    run_started: Instant,
    samples: &mut Samples,
) -> Option<Outcome> {
    let started = Instant::now();
    let reply = service.submit(command).await;
    samples.latencies_us.push(micros(started.elapsed()));
    samples
        .started_us
        .push(micros(started.duration_since(run_started)));
    let outcome = match reply {
        Ok(reply) => reply.outcome,
        Err(SubmitError::Rejected(rejection)) => Outcome::Rejected(rejection),
        Err(_) => {
            samples.errors += 1;
            return None;
        }
    };
    if matches!(outcome, Outcome::Rejected(_)) {
        samples.rejected += 1;
    }
    Some(outcome)
}

/// `clients` tasks, each looping for `duration`: reserve in a random pool of `pools`, then
/// confirm (with probability `confirm_share`) or cancel what it got. Returns every client's
/// samples and the time taken.
async fn run_clients(
    service: &Service,
    pools: Vec<PoolId>,
    clients: usize,
    duration: Duration,
    seed: u64,
    confirm_share: f64,
) -> Result<(Vec<Samples>, Duration), String> {
    let pools = Arc::new(pools);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let service = service.clone();
        let pools = Arc::clone(&pools);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
            let actor = ActorId::new(format!("client{client}"));
            let mut samples = Samples::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pool = &pools[rng.gen_range(0..pools.len())];
                let now = SystemClock.now();
                let reserve = Action::Reserve {
                    resource: "seat".into(),
                    requester: format!("requester{client}"),
                    duration_ms: 600_000,
                    count: 1,
                };
                n += 1;
                let outcome = timed(
                    &service,
                    command(pool, &actor, format!("{n}"), reserve, now),
                    started,
                    &mut samples,
                )
                .await;
                let Some(Outcome::Reserved { reservation, .. }) = outcome else {
                    continue;
                };
                let follow = if rng.gen_bool(confirm_share) {
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
                    &service,
                    command(pool, &actor, format!("{n}"), follow, now),
                    started,
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
    Ok((samples, started.elapsed()))
}

/// (a) `uniform`: many pools, each client reserves in a random pool then confirms or cancels.
pub async fn uniform(
    store: BenchStore,
    pools: usize,
    clients: usize,
    duration: Duration,
    seed: u64,
    trace: Option<&Path>,
) -> Result<BenchResult, String> {
    let service = open(store.store.clone()).await?;
    let pool_ids: Vec<PoolId> = (0..pools).map(|i| PoolId::new(format!("u{i}"))).collect();
    for pool in &pool_ids {
        declare(&service, pool, 1_000_000_000, None).await?;
    }
    let (samples, elapsed) = run_clients(&service, pool_ids, clients, duration, seed, 0.5).await?;
    if let Some(path) = trace {
        write_trace(path, &samples)?;
    }
    let (_, oversold) = crate::demo::coherence(service.projections());
    service.close().await;
    Ok(result(
        "uniform",
        samples,
        elapsed,
        oversold,
        format!(
            "{pools} pools, {clients} clients, {}, in-process",
            store.durability()
        ),
    ))
}

/// (b) `hot-pool`: one pool, many clients: a reserve storm until the cutoff, then each holder
/// confirms or cancels and reserves again.
pub async fn hot_pool(
    store: BenchStore,
    seats: u64,
    clients: usize,
    duration: Duration,
    seed: u64,
    trace: Option<&Path>,
) -> Result<BenchResult, String> {
    let service = open(store.store.clone()).await?;
    let pool = PoolId::new("hot");
    let cutoff = Timestamp(SystemClock.now().0 + duration.as_millis() as u64);
    declare(&service, &pool, seats, Some(cutoff)).await?;
    let (samples, elapsed) =
        run_clients(&service, vec![pool.clone()], clients, duration, seed, 0.5).await?;
    if let Some(path) = trace {
        write_trace(path, &samples)?;
    }
    let (incoherent, oversold) = crate::demo::coherence(service.projections());
    let count = service.projections().counts.get(&pool).unwrap_or_default();
    service.close().await;
    Ok(result(
        "hot-pool",
        samples,
        elapsed,
        oversold + incoherent,
        format!(
            "{seats} seats, {clients} clients, {}; confirmed {}, capacity {}, allocated {}",
            store.durability(),
            count.confirmed,
            count.capacity,
            count.allocated
        ),
    ))
}

/// (b2) `hold-release`: one pool whose commands succeed: each client places a hold and releases
/// it (cancel), over and over, on a pool with a seat per client, so no reserve is refused. The
/// work of two-phase transfers that are voided, on one contended aggregate.
pub async fn hold_release(
    store: BenchStore,
    clients: usize,
    duration: Duration,
    seed: u64,
    trace: Option<&Path>,
) -> Result<BenchResult, String> {
    let service = open(store.store.clone()).await?;
    let pool = PoolId::new("hot");
    let seats = clients as u64;
    declare(&service, &pool, seats, None).await?;
    let (samples, elapsed) =
        run_clients(&service, vec![pool.clone()], clients, duration, seed, 0.0).await?;
    if let Some(path) = trace {
        write_trace(path, &samples)?;
    }
    let rejected: u64 = samples.iter().map(|s| s.rejected).sum();
    let (incoherent, oversold) = crate::demo::coherence(service.projections());
    let count = service.projections().counts.get(&pool).unwrap_or_default();
    service.close().await;
    Ok(result(
        "hold-release",
        samples,
        elapsed,
        oversold + incoherent,
        format!(
            "{seats} seats, {clients} clients, {}, in-process; rejected {rejected}, allocated at the end {}",
            store.durability(),
            count.allocated
        ),
    ))
}

/// The store a scenario runs on, and whether it is durable (results say which).
pub struct BenchStore {
    pub store: Arc<dyn EventStore>,
    pub durable: bool,
}

impl BenchStore {
    /// How a result's notes name the store.
    fn durability(&self) -> &'static str {
        if self.durable { "durable" } else { "in memory" }
    }
}

/// Opens a fresh embedded store in `dir`, or the in-memory store.
pub async fn store(dir: &Path, in_memory: bool) -> Result<BenchStore, String> {
    let store: Arc<dyn EventStore> = if in_memory {
        Arc::new(allot_server::store::memory::MemoryStore::new())
    } else {
        allot_server::store::embedded::EmbeddedStore::open(dir)
            .await
            .map(Arc::new)
            .map_err(|e| e.to_string())?
    };
    Ok(BenchStore {
        store,
        durable: !in_memory,
    })
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Live heap bytes, if the binary counts them (`heap_bytes`).
pub fn allocated_bytes() -> Option<u64> {
    crate::bench::heap_bytes::live_bytes().map(|bytes| bytes.max(0).unsigned_abs())
}

/// Memory figures of the live service.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub scenario: String,
    /// What the per-item figures are: `allocator` (live heap bytes counted by `heap_bytes`) or `rss`.
    pub method: String,
    pub live_reservations: u64,
    pub bytes_per_live_reservation: f64,
    pub cached_tokens: u64,
    pub bytes_per_cached_token: f64,
    /// The same waves measured by resident set growth, for comparison with earlier figures.
    pub rss_bytes_per_live_reservation: f64,
    pub rss_bytes_per_cached_token: f64,
}

impl std::fmt::Display for MemoryResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory ({}): {:.0} bytes per live reservation (aggregate + projections, {} holds), {:.0} bytes per cached token ({} tokens); by RSS growth {:.0} and {:.0}",
            self.method,
            self.bytes_per_live_reservation,
            self.live_reservations,
            self.bytes_per_cached_token,
            self.cached_tokens,
            self.rss_bytes_per_live_reservation,
            self.rss_bytes_per_cached_token,
        )
    }
}

/// Per-item growth over two waves: (per live reservation, per cached token). A hold's wave also
/// caches its token (and appends one event), so the token wave's figure is taken out of it.
fn per_item(
    before: u64,
    after_holds: u64,
    after_tokens: u64,
    holds: u64,
    tokens: u64,
) -> (f64, f64) {
    let per_token = after_tokens.saturating_sub(after_holds) as f64 / tokens as f64;
    let per_hold_with_token = after_holds.saturating_sub(before) as f64 / holds as f64;
    ((per_hold_with_token - per_token).max(0.0), per_token)
}

/// (f) memory per live reservation and per cached token: growth of the live service's
/// allocated bytes (and RSS) while `count` holds are placed (each also caches its token), then
/// while `count` rejected commands cache only their tokens. Both figures include the embedded
/// store's index entry of their event (~16 bytes).
pub async fn memory(store: Arc<dyn EventStore>, count: u64) -> Result<MemoryResult, String> {
    crate::bench::heap_bytes::start_counting();
    let service = open(store).await?;
    let pool = PoolId::new("memory");
    declare(&service, &pool, 1_000_000_000, None).await?;
    let actor = ActorId::new("checkout");
    // Warm the allocator and the pool's shard so the first measurement is not start-up noise.
    let wave = |from: u64, to: u64, reserve: bool| {
        let service = service.clone();
        let pool = pool.clone();
        let actor = actor.clone();
        async move {
            let mut pending = Vec::with_capacity(1024);
            for i in from..to {
                let now = SystemClock.now();
                let action = if reserve {
                    Action::Reserve {
                        resource: "seat".into(),
                        requester: format!("student-{i:08}"),
                        duration_ms: 3_600_000,
                        count: 1,
                    }
                } else {
                    // A confirm of a reservation that does not exist: a cached rejection.
                    Action::ConfirmReservation {
                        reservation: 4_000_000_000 + i,
                    }
                };
                let token = format!("t{}-{i:08}", u8::from(reserve));
                pending.push(service.submit(command(&pool, &actor, token, action, now)));
                if pending.len() == 1024 {
                    futures::future::join_all(pending.drain(..)).await;
                }
            }
            futures::future::join_all(pending.drain(..)).await;
        }
    };
    let measure = || (allocated_bytes(), rss_bytes());
    wave(0, count / 10, true).await;
    let before = measure();
    wave(count / 10, count, true).await;
    let after_holds = measure();
    wave(0, count, false).await;
    let after_tokens = measure();
    let holds = count - count / 10;
    let (rss_per_hold, rss_per_token) =
        per_item(before.1, after_holds.1, after_tokens.1, holds, count);
    let allocator = match (before.0, after_holds.0, after_tokens.0) {
        (Some(before), Some(after_holds), Some(after_tokens)) => {
            Some(per_item(before, after_holds, after_tokens, holds, count))
        }
        _ => None,
    };
    service.close().await;
    let (method, (per_hold, per_token)) = match allocator {
        Some(figures) => ("allocator", figures),
        None => ("rss", (rss_per_hold, rss_per_token)),
    };
    Ok(MemoryResult {
        scenario: "memory".to_owned(),
        method: method.to_owned(),
        live_reservations: holds,
        bytes_per_live_reservation: per_hold,
        cached_tokens: count,
        bytes_per_cached_token: per_token,
        rss_bytes_per_live_reservation: rss_per_hold,
        rss_bytes_per_cached_token: rss_per_token,
    })
}

/// Figures of the replay scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub scenario: String,
    pub events: u64,
    pub generate_seconds: Option<f64>,
    pub rebuild_events_per_sec: f64,
    pub audit_events_per_sec: f64,
    pub audit_signatures_events_per_sec: f64,
    pub startup_seconds_without_checkpoint: f64,
    pub startup_seconds_with_checkpoint: f64,
    pub audit_clean: bool,
}

impl std::fmt::Display for ReplayResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replay: {} events; rebuild {:.0} events/s; audit {:.0} events/s without signatures (read-only open verifying the chain included), {:.0} events/s with every signature verified ({}); startup {:.2} s without checkpoint, {:.2} s with",
            self.events,
            self.rebuild_events_per_sec,
            self.audit_events_per_sec,
            self.audit_signatures_events_per_sec,
            if self.audit_clean {
                "clean"
            } else {
                "VIOLATIONS"
            },
            self.startup_seconds_without_checkpoint,
            self.startup_seconds_with_checkpoint
        )
    }
}

/// Pools the replay log spreads its events over.
const REPLAY_POOLS: u64 = 1_000;
/// Events generated per pool append.
const REPLAY_APPEND_EVENTS: usize = 2_048;

/// Writes a valid, signed log of about `events` events into `store`: actors, pools, and a
/// reserve → confirm/cancel mix, decided by the domain and signed like real requests.
pub async fn generate_log(
    store: &allot_server::store::embedded::EmbeddedStore,
    events: u64,
) -> Result<(), String> {
    use allot_domain::{
        ActorChange, ActorEvent, Decision, Event, Pool, Role, codec, decide, evolve, signing,
    };
    use ed25519_dalek::{Signer, SigningKey};

    use allot_server::store::{ExpectedVersion, ProposedEvent};

    let start = Timestamp(1_767_225_600_000);
    let admin_key = SigningKey::from_bytes(&[1; 32]);
    let client_key = SigningKey::from_bytes(&[2; 32]);
    let admin = ActorId::new("admin");
    let client = ActorId::new("checkout");
    let mut actor_events = Vec::new();
    for (actor, key, role) in [
        (&admin, &admin_key, Role::Admin),
        (&client, &client_key, Role::Client),
    ] {
        let change = ActorChange::Registered {
            role,
            public_key: key.verifying_key().to_bytes(),
        };
        let (action, params) = allot_domain::signing::actor_change_params(&change);
        let token = IdempotencyToken::new(format!("register-{actor}"));
        let by = if role == Role::Admin { actor } else { &admin };
        let bytes = signing::actor_signing_bytes(action, actor, &params, &token, by, start);
        let signer = if role == Role::Admin { key } else { &admin_key };
        actor_events.push(ProposedEvent {
            id: [0; 16],
            kind: "Actor".into(),
            payload: codec::encode_actor_event(&ActorEvent {
                actor: actor.clone(),
                change,
                by: by.clone(),
                token,
                attestation: Attestation {
                    signed_at: start,
                    signature: signer.sign(&bytes).to_bytes().to_vec(),
                },
                at: start,
            }),
        });
    }
    let mut ids = 0u64;
    let mut next_id = move || {
        ids += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&ids.to_le_bytes());
        id
    };
    for event in &mut actor_events {
        event.id = next_id();
    }
    store
        .append(
            allot_domain::streams::ACTORS_STREAM,
            ExpectedVersion::NoStream,
            actor_events,
        )
        .await
        .map_err(|e| e.to_string())?;

    // Two generator threads, each owning half the pools, feed appends through a bounded channel.
    let per_pool = events.div_ceil(REPLAY_POOLS);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(PoolId, u64, Vec<Event>)>(64);
    let mut threads = Vec::new();
    for half in 0..2u64 {
        let tx = tx.clone();
        let admin_key = admin_key.clone();
        let client_key = client_key.clone();
        let admin = admin.clone();
        let client = client.clone();
        threads.push(std::thread::spawn(move || {
            let sign = |key: &SigningKey,
                        actor: &ActorId,
                        pool: &PoolId,
                        action: Action,
                        token: String,
                        at: Timestamp| {
                let token = IdempotencyToken::new(token);
                Command {
                    pool: pool.clone(),
                    actor: actor.clone(),
                    // Generated logs hold what decide makes of each command; only ownership
                    // reads the role, and every actor acts on its own reservations.
                    role: Role::Client,
                    attestation: allot_client::sign_command(key, actor, pool, &action, &token, at),
                    token,
                    digest: params_digest(&action),
                    action,
                    batch: None,
                }
            };
            for p in (half..REPLAY_POOLS).step_by(2) {
                let pool_id = PoolId::new(format!("r{p}"));
                let mut pool = Pool::default();
                let mut batch = Vec::with_capacity(REPLAY_APPEND_EVENTS);
                let mut version = 0u64;
                let mut at = start;
                let mut n = 0u64;
                let decide_one =
                    |pool: &mut Pool, command: Command, at: Timestamp, batch: &mut Vec<Event>| {
                        if let Ok(Decision::Append(event)) = decide(pool, &command, at)
                            && evolve(pool, &event).is_ok()
                        {
                            batch.push(event);
                        }
                    };
                let declare = Action::DeclarePool {
                    capacity: 1_000_000_000,
                    closes_at: None,
                    units: vec![],
                    idempotency_window_ms: 600_000,
                };
                decide_one(
                    &mut pool,
                    sign(
                        &admin_key,
                        &admin,
                        &pool_id,
                        declare,
                        format!("declare-{p}"),
                        at,
                    ),
                    at,
                    &mut batch,
                );
                while (pool.events_applied()) < per_pool {
                    at = at.plus_ms(1);
                    n += 1;
                    let reserve = Action::Reserve {
                        resource: "seat".into(),
                        requester: format!("student-{n}"),
                        duration_ms: 600_000,
                        count: 1,
                    };
                    decide_one(
                        &mut pool,
                        sign(&client_key, &client, &pool_id, reserve, format!("r{n}"), at),
                        at,
                        &mut batch,
                    );
                    let seq = pool.reservations_made();
                    let follow = if n.is_multiple_of(2) {
                        Action::ConfirmReservation { reservation: seq }
                    } else {
                        Action::CancelReservation { reservation: seq }
                    };
                    decide_one(
                        &mut pool,
                        sign(&client_key, &client, &pool_id, follow, format!("f{n}"), at),
                        at,
                        &mut batch,
                    );
                    if batch.len() >= REPLAY_APPEND_EVENTS {
                        let events = std::mem::take(&mut batch);
                        let count = events.len() as u64;
                        if tx
                            .blocking_send((pool_id.clone(), version, events))
                            .is_err()
                        {
                            return;
                        }
                        version += count;
                    }
                }
                if !batch.is_empty() && tx.blocking_send((pool_id.clone(), version, batch)).is_err()
                {
                    return;
                }
            }
        }));
    }
    drop(tx);
    while let Some((pool, version, events)) = rx.recv().await {
        let expected = ExpectedVersion::from_next(version);
        let proposed = events
            .iter()
            .map(|event| ProposedEvent {
                id: next_id(),
                kind: event.kind_name().to_owned(),
                payload: codec::encode_event(event),
            })
            .collect();
        store
            .append(
                &allot_domain::streams::pool_stream(&pool),
                expected,
                proposed,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| "generator thread panicked".to_owned())?;
    }
    Ok(())
}

/// (d, e) replay and start-up on a large log in `dir` (generated first if the directory has no
/// log): rebuild and audit throughput, with and without signature verification, and the time
/// to open the service with and without a checkpoint.
pub async fn replay(dir: &Path, events: u64) -> Result<ReplayResult, String> {
    use crate::inspect;
    use allot_server::store::embedded::EmbeddedStore;

    let hidden = || {
        let bar = inspect::progress_bar(None, "");
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        bar
    };
    let fresh = !dir.join("events.log").exists();
    let mut generate_seconds = None;
    if fresh {
        let store = EmbeddedStore::open(dir).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        generate_log(&store, events).await?;
        generate_seconds = Some(started.elapsed().as_secs_f64());
        store.close().await.map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(dir.join(CHECKPOINT_FILE));

    // Start-up without a checkpoint: open the log, fold every event into the projections.
    let (startup_without, applied) = restart(dir, false).await?;
    let total = applied + 2;

    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir).await.map_err(|e| e.to_string())?);
    let rebuild_rate = write_checkpoint(store.as_ref(), dir).await?;
    drop(store);

    // As `allot audit` does: a read-only open that verifies every batch and the chain from the
    // first, then the audit reading (and checking the leaf of) every event.
    let started = Instant::now();
    let store: Arc<dyn EventStore> = Arc::new(
        EmbeddedStore::open_read_only(dir)
            .await
            .map_err(|e| e.to_string())?,
    );
    let plain = inspect::audit(store.as_ref(), &inspect::AuditRequest::default(), &hidden())
        .await
        .map_err(|e| e.to_string())?;
    let audit_rate = plain.report.events as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let signed = inspect::audit(
        store.as_ref(),
        &inspect::AuditRequest {
            verify_signatures: true,
            ..Default::default()
        },
        &hidden(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let signed_rate = signed.report.events as f64 / started.elapsed().as_secs_f64();
    drop(store);

    // Start-up with the checkpoint: open the log, restore projections, fold only the tail.
    let (startup_with, _) = restart(dir, true).await?;

    Ok(ReplayResult {
        scenario: "replay".to_owned(),
        events: total,
        generate_seconds,
        rebuild_events_per_sec: rebuild_rate,
        audit_events_per_sec: audit_rate,
        audit_signatures_events_per_sec: signed_rate,
        startup_seconds_without_checkpoint: startup_without,
        startup_seconds_with_checkpoint: startup_with,
        audit_clean: plain.report.is_clean() && signed.report.is_clean(),
    })
}

/// Opens the embedded store in `dir` and a service over it, from the projections checkpoint
/// there or by folding the whole log; returns the seconds until it could decide, and the events
/// its projections hold.
async fn restart(dir: &Path, from_checkpoint: bool) -> Result<(f64, u64), String> {
    use allot_server::store::embedded::EmbeddedStore;

    let started = Instant::now();
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir).await.map_err(|e| e.to_string())?);
    let projections = if from_checkpoint {
        allot_server::service::checkpoint::projections_at_start(
            &dir.join(CHECKPOINT_FILE),
            store.as_ref(),
        )
        .await
    } else {
        Projections::new()
    };
    let service = Service::open(
        store,
        Arc::new(SystemClock),
        Arc::new(projections),
        Arc::new(Metrics::new()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let applied = service.projections().applied();
    service.close().await;
    Ok((seconds, applied))
}

/// Rebuilds the projections of `store` and writes their checkpoint into `dir`; returns the
/// rebuild's events per second.
async fn write_checkpoint(store: &dyn EventStore, dir: &Path) -> Result<f64, String> {
    let bar = crate::inspect::progress_bar(None, "");
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let started = Instant::now();
    let rebuild = crate::inspect::rebuild(store, None, &bar)
        .await
        .map_err(|e| e.to_string())?;
    let rate = rebuild.events_done() as f64 / started.elapsed().as_secs_f64();
    let mut checkpoint = rebuild.checkpoint();
    allot_server::service::checkpoint::record_chain(&mut checkpoint, store)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = checkpoint.to_bytes().map_err(|e| e.to_string())?;
    write_atomically(&dir.join(CHECKPOINT_FILE), &bytes).map_err(|e| e.to_string())?;
    Ok(rate)
}

/// Figures of the start-up scenario: medians over `runs` restarts of each kind.
#[derive(Debug, Clone, Serialize)]
pub struct StartupResult {
    pub scenario: String,
    pub events: u64,
    pub runs: usize,
    pub seconds_without_checkpoint: f64,
    pub seconds_with_checkpoint: f64,
    pub checkpoint_bytes: u64,
}

impl std::fmt::Display for StartupResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "startup: {} events; ready to serve in {:.2} s without a checkpoint, {:.2} s with one ({} bytes); medians of {} restarts",
            self.events,
            self.seconds_without_checkpoint,
            self.seconds_with_checkpoint,
            self.checkpoint_bytes,
            self.runs
        )
    }
}

/// (e) start-up on the log in `dir` (generated with `events` events if it has none): the time
/// from opening the store to a service ready to decide, replaying the whole log, and starting
/// from a checkpoint (written by a rebuild first if the directory has none) plus the tail.
pub async fn startup(dir: &Path, events: u64, runs: usize) -> Result<StartupResult, String> {
    use allot_server::store::embedded::EmbeddedStore;

    if !dir.join("events.log").exists() {
        let store = EmbeddedStore::open(dir).await.map_err(|e| e.to_string())?;
        generate_log(&store, events).await?;
        store.close().await.map_err(|e| e.to_string())?;
    }
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let current = matches!(read_checkpoint(&checkpoint_path), Ok(Some(_)));
    if !current {
        let store = EmbeddedStore::open(dir).await.map_err(|e| e.to_string())?;
        write_checkpoint(&store, dir).await?;
        store.close().await.map_err(|e| e.to_string())?;
    }
    let checkpoint_bytes = std::fs::metadata(&checkpoint_path)
        .map_err(|e| format!("{}: {e}", checkpoint_path.display()))?
        .len();

    let runs = runs.max(1);
    let (mut without, mut with) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut total = 0;
    for _ in 0..runs {
        for from_checkpoint in [false, true] {
            let (seconds, applied) = restart(dir, from_checkpoint).await?;
            total = applied;
            if from_checkpoint {
                with.push(seconds);
            } else {
                without.push(seconds);
            }
        }
    }
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    Ok(StartupResult {
        scenario: "startup".to_owned(),
        events: total,
        runs,
        seconds_without_checkpoint: median(without),
        seconds_with_checkpoint: median(with),
        checkpoint_bytes,
    })
}

/// One keep-alive HTTP/1.1 connection of the load process, on hyper's connection-level client:
/// a pooled general client (reqwest) cost the load process as much CPU as the server spent
/// answering, on the same two cores.
struct LoadConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Vec<u8>,
}

/// The one member of an outcome the load process reads.
#[derive(serde::Deserialize)]
struct ReserveOutcome {
    reservation_id: Option<String>,
}

/// What the load process needs of an answer.
struct LoadAnswer {
    status: u16,
    /// The sequence of the reservation a reserve made, if it made one.
    reservation: Option<u64>,
}

impl LoadConnection {
    async fn connect(addr: &str) -> std::io::Result<LoadConnection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "load connection ended");
            }
        });
        Ok(LoadConnection {
            sender,
            body: Vec::with_capacity(256),
        })
    }

    /// Signs `action` on `pool` now, as `actor`, with `token`; sends it and reads the answer.
    async fn send(
        &mut self,
        identity: &LoadIdentity,
        pool: &PoolId,
        action: &Action,
        token: &str,
    ) -> std::io::Result<LoadAnswer> {
        let signed_at = SystemClock.now();
        let token_id = IdempotencyToken::new(token);
        let attestation = sign_command(
            &identity.key,
            &identity.actor,
            pool,
            action,
            &token_id,
            signed_at,
        );
        let signature = attestation.signature;
        self.body.clear();
        wire::write_command_body(action, &mut self.body)?;
        let path = wire::command_path(pool, action);
        let mut request = hyper::Request::new(Full::new(Bytes::copy_from_slice(&self.body)));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = hyper::Uri::try_from(path).map_err(std::io::Error::other)?;
        let headers = request.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            IDEMPOTENCY_KEY,
            hyper::header::HeaderValue::from_str(token).map_err(std::io::Error::other)?,
        );
        identity.sign_headers(headers, signed_at, &signature)?;
        let (status, body) = self.exchange(request).await?;
        let reservation = serde_json::from_slice::<ReserveOutcome>(&body)
            .ok()
            .and_then(|outcome| outcome.reservation_id)
            .and_then(|id| allot_domain::ReservationId::parse(&id))
            .map(|id| id.seq);
        Ok(LoadAnswer {
            status,
            reservation,
        })
    }
}

impl LoadConnection {
    /// Sends `request` once the connection is ready; returns the status and the whole body.
    async fn exchange(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> std::io::Result<(u16, Bytes)> {
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, body))
    }

    /// Reads `reservation`, signed now as the load's actor; returns the status.
    async fn read(
        &mut self,
        identity: &LoadIdentity,
        reservation: &ReservationId,
    ) -> std::io::Result<u16> {
        let target = reservation.to_string();
        let signed_at = SystemClock.now();
        let attestation = sign_read(
            &identity.key,
            &identity.actor,
            Read::Reservation,
            &target,
            signed_at,
        );
        let mut request = hyper::Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = hyper::Uri::try_from(wire::reservation_path(reservation))
            .map_err(std::io::Error::other)?;
        identity.sign_headers(request.headers_mut(), signed_at, &attestation.signature)?;
        let (status, _) = self.exchange(request).await?;
        Ok(status)
    }
}

impl LoadIdentity {
    /// The headers every request of the load carries: the host, and the signature of `signature`
    /// made at `signed_at` (the service's header names, parsed once).
    fn sign_headers(
        &self,
        headers: &mut hyper::HeaderMap,
        signed_at: Timestamp,
        signature: &[u8],
    ) -> std::io::Result<()> {
        let mut signature_hex = [0u8; 128];
        hex::encode_to_slice(signature, &mut signature_hex).map_err(std::io::Error::other)?;
        // The headers that are the same on every request are built once, in `LoadIdentity`.
        headers.insert(hyper::header::HOST, self.host_header.clone());
        headers.insert(ACTOR_HEADER, self.actor_header.clone());
        headers.insert(
            SIGNED_AT_HEADER,
            hyper::header::HeaderValue::from(signed_at.0),
        );
        headers.insert(
            SIGNATURE_HEADER,
            hyper::header::HeaderValue::from_bytes(&signature_hex)
                .map_err(std::io::Error::other)?,
        );
        Ok(())
    }
}

/// Who the load process signs as, and the server it talks to.
struct LoadIdentity {
    actor: ActorId,
    key: ed25519_dalek::SigningKey,
    host: String,
    /// `host` and `actor` as header values, built once rather than parsed per request.
    host_header: hyper::header::HeaderValue,
    actor_header: hyper::header::HeaderValue,
}

/// (c) `http`, the load side: `clients` connections each reserve in a random pool then confirm
/// or cancel, every request signed when it is sent, against `server`, for `duration`.
///
/// One single-threaded runtime per core drives its share of the connections, so the load
/// process spends nothing on work stealing or on waking tasks across threads.
pub async fn http_load(
    server: &str,
    actor: ActorId,
    key: ed25519_dalek::SigningKey,
    pools: usize,
    clients: usize,
    duration: Duration,
    seed: u64,
) -> Result<BenchResult, String> {
    let host = server
        .strip_prefix("http://")
        .ok_or_else(|| format!("server {server} is not an http:// address"))?
        .trim_end_matches('/')
        .to_owned();
    let host_header = hyper::header::HeaderValue::from_str(&host)
        .map_err(|e| format!("server {server} is not a header value: {e}"))?;
    let actor_header = hyper::header::HeaderValue::from_str(actor.as_str())
        .map_err(|e| format!("actor {actor} is not a header value: {e}"))?;
    let identity = Arc::new(LoadIdentity {
        actor,
        key,
        host,
        host_header,
        actor_header,
    });
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, clients.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let (go, go_signal) = tokio::sync::watch::channel(false);
    let mut connected = Vec::with_capacity(threads);
    let mut drivers = Vec::with_capacity(threads);
    for thread in 0..threads {
        let share = LoadShare {
            identity: Arc::clone(&identity),
            clients: (thread..clients).step_by(threads).collect(),
            pools,
            seed,
            stop: Arc::clone(&stop),
            go: go_signal.clone(),
        };
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        connected.push(is_ready);
        let driver = std::thread::Builder::new()
            .name(format!("allot-load-{thread}"))
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("load runtime: {e}"))
                    .and_then(|runtime| runtime.block_on(share.drive(ready)))
            });
        match driver {
            Ok(driver) => drivers.push(driver),
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                let _ = go.send(true);
                return Err(format!("cannot start a load thread: {error}"));
            }
        }
    }
    let mut failure = None;
    for is_ready in connected {
        match is_ready.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = Some(error),
            Err(_) => failure = Some("a load thread stopped before connecting".to_owned()),
        }
    }
    if failure.is_some() {
        stop.store(true, Ordering::Relaxed);
    }
    let started = Instant::now();
    let _ = go.send(true);
    if failure.is_none() {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut samples = Vec::new();
    for driver in drivers {
        let finished = tokio::task::spawn_blocking(move || driver.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "a load thread panicked".to_owned())?;
        samples.extend(finished?);
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    Ok(result(
        "http",
        samples,
        started.elapsed(),
        0,
        format!(
            "{pools} pools, {clients} connections, signed when sent, one signed read per four commands, separate load process"
        ),
    ))
}

/// The connections one load thread drives.
struct LoadShare {
    identity: Arc<LoadIdentity>,
    clients: Vec<usize>,
    pools: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    go: tokio::sync::watch::Receiver<bool>,
}

impl LoadShare {
    /// Connects every client, says so on `ready`, waits for the start, runs until stopped.
    async fn drive(
        mut self,
        ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) -> Result<Vec<Samples>, String> {
        let mut connections = Vec::with_capacity(self.clients.len());
        for &client in &self.clients {
            match LoadConnection::connect(&self.identity.host).await {
                Ok(connection) => connections.push((client, connection)),
                Err(error) => {
                    let error = format!("connect to {}: {error}", self.identity.host);
                    let _ = ready.send(Err(error.clone()));
                    return Err(error);
                }
            }
        }
        let _ = ready.send(Ok(()));
        // The sender only goes away once the run is over; either way, start (or stop) now.
        let _ = self.go.wait_for(|go| *go).await;
        let mut tasks = Vec::with_capacity(connections.len());
        for (client, connection) in connections {
            tasks.push(tokio::spawn(run_client(
                connection,
                Arc::clone(&self.identity),
                client,
                self.pools,
                self.seed,
                Arc::clone(&self.stop),
            )));
        }
        let mut samples = Vec::with_capacity(tasks.len());
        for task in tasks {
            samples.push(task.await.map_err(|e| e.to_string())?);
        }
        Ok(samples)
    }
}

/// One client: reserve in a random pool, then confirm or cancel, until `stop`.
async fn run_client(
    mut connection: LoadConnection,
    identity: Arc<LoadIdentity>,
    client: usize,
    pools: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Samples {
    let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
    let mut samples = Samples::default();
    let mut token = String::with_capacity(32);
    let mut n = 0u64;
    let requester = format!("r{client}");
    while !stop.load(Ordering::Relaxed) {
        let pool = PoolId::new(format!("h{}", rng.gen_range(0..pools)));
        let reserve = Action::Reserve {
            resource: "seat".into(),
            requester: requester.clone(),
            duration_ms: 600_000,
            count: 1,
        };
        n += 1;
        let Some(seq) = load_command(
            &mut connection,
            &identity,
            &pool,
            &reserve,
            &mut token,
            (client, n),
            &mut samples,
        )
        .await
        .and_then(|answer| answer.reservation) else {
            continue;
        };
        let follow = if rng.gen_bool(0.5) {
            Action::ConfirmReservation { reservation: seq }
        } else {
            Action::CancelReservation { reservation: seq }
        };
        n += 1;
        load_command(
            &mut connection,
            &identity,
            &pool,
            &follow,
            &mut token,
            (client, n),
            &mut samples,
        )
        .await;
        if n.is_multiple_of(4) {
            let reservation = ReservationId { pool, seq };
            match connection.read(&identity, &reservation).await {
                Ok(200) => samples.reads += 1,
                _ => samples.errors += 1,
            }
        }
    }
    samples
}

/// Sends one command, timing it from signing to the last byte of the answer.
async fn load_command(
    connection: &mut LoadConnection,
    identity: &LoadIdentity,
    pool: &PoolId,
    action: &Action,
    token: &mut String,
    (client, n): (usize, u64),
    samples: &mut Samples,
) -> Option<LoadAnswer> {
    use std::fmt::Write as _;

    token.clear();
    // Writing into a String cannot fail.
    let _ = write!(token, "c{client}-{n}");
    let started = Instant::now();
    let answer = connection.send(identity, pool, action, token).await;
    samples
        .latencies_us
        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    match answer {
        Ok(answer) if answer.status < 500 => Some(answer),
        _ => {
            samples.errors += 1;
            None
        }
    }
}

/// (c) `http`, the service side: an in-process service on loopback over the embedded store, a
/// registered client, `pools` pools; then the load runs in a separate process (`load`), whose
/// result line is returned.
pub async fn http(
    dir: &Path,
    pools: usize,
    load: impl AsyncFnOnce(String, std::path::PathBuf) -> Result<BenchResult, String>,
) -> Result<BenchResult, String> {
    let (server, base, load_path) = serve_for_load(dir, pools).await?;
    let result = load(base, load_path).await;
    let (oversold, batching) = stop_served(server).await?;
    result.map(|result| BenchResult {
        oversold,
        notes: format!("{}; {batching}", result.notes),
        ..result
    })
}

/// The service side of the loopback scenarios: a server over the embedded store in `dir`, the
/// client actor `load` registered (its key file written beside the server's keys) and pools
/// `h0`.. declared. Returns the server, its base URL and the load's key file.
pub(crate) async fn serve_for_load(
    dir: &Path,
    pools: usize,
) -> Result<(allot_server::server::Server, String, std::path::PathBuf), String> {
    use allot_server::identity::KeyFile;
    use allot_server::server::{FIRST_ADMIN, ServeOptions, Server, key_path};

    let store = store(dir, false).await?.store;
    let keys = dir.join("keys");
    let server = Server::start(
        Arc::clone(&store),
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        ServeOptions {
            listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            metrics_listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            keys_dir: keys.clone(),
            server_key: None,
            sweeper: true,
            edge: Default::default(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let base = format!("http://{}", server.addr);
    let (admin_file, admin_key) =
        KeyFile::read(&key_path(&keys, FIRST_ADMIN)).map_err(|e| e.to_string())?;
    let admin = allot_client::Client::new(&base, ActorId::new(admin_file.actor), admin_key);
    let (load_file, load_key) = KeyFile::generate("load", allot_domain::Role::Client);
    let load_path = keys.join("load.key");
    load_file.write_new(&load_path).map_err(|e| e.to_string())?;
    let registered = admin
        .register_actor(
            &ActorId::new("load"),
            allot_domain::Role::Client,
            load_key.verifying_key().to_bytes(),
            "register-load",
        )
        .await
        .map_err(|e| e.to_string())?;
    if !registered.is_success() {
        return Err(format!("register load actor: {}", registered.body));
    }
    for p in 0..pools {
        let action = Action::DeclarePool {
            capacity: 1_000_000_000,
            closes_at: None,
            units: vec![],
            idempotency_window_ms: 600_000,
        };
        let answer = admin
            .send(
                &PoolId::new(format!("h{p}")),
                &action,
                &format!("declare-h{p}"),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !answer.is_success() {
            return Err(format!("declare h{p}: {}", answer.body));
        }
    }
    Ok((server, base, load_path))
}

/// Stops a server of [`serve_for_load`]: what it oversold, and how its verifier batched.
pub(crate) async fn stop_served(
    server: allot_server::server::Server,
) -> Result<(u64, String), String> {
    let (_, oversold) = crate::demo::coherence(server.service.projections());
    let batching = signature_batching(&server.service.metrics().render());
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok((oversold, batching))
}

/// How the server's signature verifier batched, from its metrics text.
fn signature_batching(metrics: &str) -> String {
    let sample = |name: &str| {
        metrics.lines().find_map(|line| {
            let (sample, value) = line.split_once(' ')?;
            (sample == name).then(|| value.trim().parse::<f64>().ok())?
        })
    };
    match (
        sample("allot_signature_batch_signatures_sum"),
        sample("allot_signature_batch_signatures_count"),
    ) {
        (Some(signatures), Some(batches)) if batches > 0.0 => format!(
            "{signatures:.0} signatures verified in {batches:.0} batches, {:.1} per batch",
            signatures / batches
        ),
        _ => "no signature batches recorded".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load process's requests (headers built once per identity, signature hex on the
    /// stack) are accepted as signed: a reserve makes a reservation, its confirm confirms it,
    /// and a request whose signature does not match is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_connection_requests_pass_authentication() {
        let dir = tempfile::tempdir().expect("temp dir");
        let result = http(dir.path(), 1, async |server, key_path| {
            let (file, key) =
                allot_server::identity::KeyFile::read(&key_path).map_err(|e| e.to_string())?;
            let host = server.trim_start_matches("http://").to_owned();
            let actor = ActorId::new(file.actor);
            let identity = LoadIdentity {
                host_header: hyper::header::HeaderValue::from_str(&host)
                    .map_err(|e| e.to_string())?,
                actor_header: hyper::header::HeaderValue::from_str(actor.as_str())
                    .map_err(|e| e.to_string())?,
                actor,
                key,
                host,
            };
            let mut connection = LoadConnection::connect(&identity.host)
                .await
                .map_err(|e| e.to_string())?;
            let pool = PoolId::new("h0");
            let reserve = Action::Reserve {
                resource: "seat".into(),
                requester: "r0".into(),
                duration_ms: 600_000,
                count: 1,
            };
            let reserved = connection
                .send(&identity, &pool, &reserve, "t-1")
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(reserved.status, 201);
            let seq = reserved.reservation.ok_or("no reservation id")?;
            let confirm = Action::ConfirmReservation { reservation: seq };
            let confirmed = connection
                .send(&identity, &pool, &confirm, "t-2")
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(confirmed.status, 200);
            // Signed by another key under the same actor name: the server must refuse it.
            let impostor = LoadIdentity {
                key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
                host_header: identity.host_header.clone(),
                actor_header: identity.actor_header.clone(),
                actor: identity.actor.clone(),
                host: identity.host.clone(),
            };
            let forged = connection
                .send(&impostor, &pool, &reserve, "t-3")
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(forged.status, 401);
            Ok(result(
                "http",
                Vec::new(),
                Duration::from_secs(1),
                0,
                String::new(),
            ))
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
    }
}

//! Soak: `allot serve` under steady mixed load for N minutes; resident memory and per-minute
//! latency percentiles, with two verdicts.
//!
//! ```text
//! cargo build --release -p allot-infra --bin allot
//! cargo run --release -p allot-tests --bin soak -- --minutes 10 [--rate 200] [--pools 8]
//! ```
//!
//! The load, at `--rate` commands per second from one client actor, over `--pools` pools declared
//! with the shortest idempotency window HTTP accepts (240 s): reserves (half of them holds of
//! 1–5 s that lapse and are expired by the sweeper), confirms and cancels of held reservations,
//! retries of recent tokens (each must replay its recorded outcome) and reads. Every second the
//! server's `VmRSS` is sampled.
//!
//! Verdicts (exit 1 if either fails):
//! - latency: every minute's p99 is at most 2x the first minute's;
//! - memory: after the warm-up (1.5 idempotency windows plus one minute: token records are
//!   swept every half window, so up to 1.5 windows of them are kept), RSS grows by at most
//!   [`GROWTH_BYTES_PER_EVENT_MAX`] per recorded event: what the store index and the
//!   per-reservation read model keep by design, far below a token record or a hold kept forever.

mod allot_process;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_client::{Answer, Client};
use allot_domain::{Action, ActorId, PoolId, ReservationId, Role};
use allot_server::identity::KeyFile;
use serde_json::Value;
use tokio::sync::Semaphore;

use allot_process::{Server, locate_allot};
use allot_tests::seeded::Rng;

/// The shortest window the HTTP API accepts (twice the signature skew).
const WINDOW_MS: u64 = 240_000;
/// Commands in flight from the load generator; a tick finding none free is counted as shed.
const IN_FLIGHT_MAX: usize = 256;
/// Held reservations remembered for confirms and cancels.
const HELD_KEPT_MAX: usize = 20_000;
/// Recent acknowledged commands remembered for retries.
const RECENT_KEPT_MAX: usize = 2_000;
/// Memory verdict: RSS growth after warm-up per recorded event.
const GROWTH_BYTES_PER_EVENT_MAX: f64 = 400.0;
/// Latency verdict: each minute's p99 over the first minute's.
const P99_RATIO_MAX: f64 = 2.0;

struct Options {
    minutes: u64,
    rate: u64,
    pools: usize,
    data: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        minutes: 10,
        rate: 200,
        pools: 8,
        data: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => options.minutes = value()?.parse().map_err(|e| format!("{e}"))?,
            "--rate" => options.rate = value()?.parse().map_err(|e| format!("{e}"))?,
            "--pools" => options.pools = value()?.parse().map_err(|e| format!("{e}"))?,
            "--data" => options.data = Some(PathBuf::from(value()?)),
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: soak [--minutes N] [--rate PER_SECOND] \
                     [--pools N] [--data DIR]"
                ));
            }
        }
    }
    if options.minutes == 0 || options.rate == 0 || options.pools == 0 {
        return Err("--minutes, --rate and --pools must be positive".to_owned());
    }
    Ok(options)
}

/// A command that was answered, kept to be retried.
#[derive(Clone)]
struct Sent {
    pool: PoolId,
    action: Action,
    token: String,
    answer: Answer,
}

/// What one minute saw.
#[derive(Default)]
struct Minute {
    latencies_us: Vec<u64>,
    errors: u64,
    replay_mismatches: u64,
    shed: u64,
    rss_last: u64,
    rss_max: u64,
    /// The machine's 1-minute load average at the minute's last sample (other work skews p99).
    load_average: f64,
}

struct Load {
    client: Client,
    pools: Vec<PoolId>,
    held: Mutex<VecDeque<ReservationId>>,
    recent: Mutex<VecDeque<Sent>>,
    minutes: Mutex<Vec<Minute>>,
    started: Instant,
    next_token: AtomicU64,
}

impl Load {
    fn minute_index(&self) -> usize {
        (self.started.elapsed().as_secs() / 60) as usize
    }

    fn with_minute(&self, f: impl FnOnce(&mut Minute)) {
        let index = self.minute_index();
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        while minutes.len() <= index {
            minutes.push(Minute::default());
        }
        f(&mut minutes[index]);
    }

    fn token(&self) -> String {
        format!("soak-{}", self.next_token.fetch_add(1, Ordering::Relaxed))
    }

    /// One command of the mix, chosen by `roll` (0..100).
    async fn one(&self, roll: u64, pick: u64) {
        let pool = self.pools[(pick % self.pools.len() as u64) as usize].clone();
        let take_held = || {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
        };
        let (pool, action) = match roll {
            0..45 => {
                let duration_ms = if pick.is_multiple_of(2) {
                    1_000 + pick % 4_000
                } else {
                    60_000 + pick % 60_000
                };
                let action = Action::Reserve {
                    resource: format!("seat-{}", pick % 100_000),
                    requester: "soak".to_owned(),
                    duration_ms,
                    count: 1,
                };
                (pool, action)
            }
            45..85 => match take_held() {
                Some(id) => {
                    let action = if roll < 65 {
                        Action::ConfirmReservation {
                            reservation: id.seq,
                        }
                    } else {
                        Action::CancelReservation {
                            reservation: id.seq,
                        }
                    };
                    (id.pool, action)
                }
                None => return,
            },
            85..95 => {
                let sent = {
                    let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                    if recent.is_empty() {
                        return;
                    }
                    recent[(pick % recent.len() as u64) as usize].clone()
                };
                let started = Instant::now();
                let answer = self
                    .client
                    .send(&sent.pool, &sent.action, &sent.token)
                    .await;
                let elapsed = started.elapsed();
                self.with_minute(|minute| {
                    minute.latencies_us.push(elapsed.as_micros() as u64);
                    match &answer {
                        Ok(answer)
                            if answer.replayed
                                && answer.status == sent.answer.status
                                && answer.body == sent.answer.body => {}
                        Ok(_) => minute.replay_mismatches += 1,
                        Err(_) => minute.errors += 1,
                    }
                });
                return;
            }
            _ => {
                let id = {
                    let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                    held.back().cloned()
                };
                let Some(id) = id else { return };
                let started = Instant::now();
                let answer = self.client.reservation(&id).await;
                let elapsed = started.elapsed();
                self.with_minute(|minute| {
                    minute.latencies_us.push(elapsed.as_micros() as u64);
                    if !matches!(answer, Ok(ref a) if a.status == 200) {
                        minute.errors += 1;
                    }
                });
                return;
            }
        };
        let token = self.token();
        let started = Instant::now();
        let answer = self.client.send(&pool, &action, &token).await;
        let elapsed = started.elapsed();
        let answer = match answer {
            Ok(answer) => answer,
            Err(_) => {
                self.with_minute(|minute| minute.errors += 1);
                return;
            }
        };
        self.with_minute(|minute| {
            minute.latencies_us.push(elapsed.as_micros() as u64);
            if answer.status >= 500 {
                minute.errors += 1;
            }
        });
        if answer.status >= 500 {
            return;
        }
        if let Some(id) = answer
            .body
            .get("reservation_id")
            .and_then(Value::as_str)
            .and_then(ReservationId::parse)
            && matches!(action, Action::Reserve { .. })
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.push_back(id);
            if held.len() > HELD_KEPT_MAX {
                held.pop_front();
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.push_back(Sent {
            pool,
            action,
            token,
            answer,
        });
        if recent.len() > RECENT_KEPT_MAX {
            recent.pop_front();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn setup(server: &Server, pools: usize) -> Result<(Client, Vec<PoolId>), String> {
    let admin = server.admin().map_err(|e| e.to_string())?;
    let (file, key) = KeyFile::generate("soak", Role::Client);
    let answer = admin
        .register_actor(
            &ActorId::new(file.actor.clone()),
            Role::Client,
            key.verifying_key().to_bytes(),
            "soak-register",
        )
        .await
        .map_err(|e| e.to_string())?;
    if !answer.is_success() {
        return Err(format!("register soak actor: {:?}", answer.body));
    }
    let client = admin.with_identity(ActorId::new(file.actor), key);
    let mut ids = Vec::new();
    for i in 0..pools {
        let pool = PoolId::new(format!("soak-{i}"));
        let action = Action::DeclarePool {
            capacity: 1_000_000,
            closes_at: None,
            units: Vec::new(),
            idempotency_window_ms: WINDOW_MS,
        };
        let answer = admin
            .send(&pool, &action, &format!("soak-declare-{i}"))
            .await
            .map_err(|e| e.to_string())?;
        if !answer.is_success() {
            return Err(format!("declare {pool}: {:?}", answer.body));
        }
        ids.push(pool);
    }
    Ok((client, ids))
}

async fn soak(options: Options) -> Result<bool, String> {
    let allot = locate_allot().map_err(|e| e.to_string())?;
    let temp;
    let data = match &options.data {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            temp.path().join("data")
        }
    };
    let log = data.with_extension("stderr.log");
    let server = Server::start(&allot, &data, &log)
        .await
        .map_err(|e| e.to_string())?;
    let (client, pools) = setup(&server, options.pools).await?;
    eprintln!(
        "soak: {} minutes at {} commands/s over {} pools, window {} s; server pid {}, data {}; \
         {} CPUs",
        options.minutes,
        options.rate,
        options.pools,
        WINDOW_MS / 1000,
        server.pid(),
        data.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let load = Arc::new(Load {
        client,
        pools,
        held: Mutex::new(VecDeque::new()),
        recent: Mutex::new(VecDeque::new()),
        minutes: Mutex::new(Vec::new()),
        started: Instant::now(),
        next_token: AtomicU64::new(0),
    });
    let total = Duration::from_secs(options.minutes * 60);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / options.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    let mut rng = Rng(0x50a6_2026);
    let mut reported = 0;
    // Token records are swept every half window, so up to 1.5 windows of them are kept: memory
    // reaches its plateau after that, plus a minute for the lapsed holds to be expired.
    let warm_up = ((WINDOW_MS * 3 / 2).div_ceil(60_000) + 1) as usize;
    // (RSS, recorded events) when the warm-up ends.
    let mut at_warm_up: Option<(u64, u64)> = None;
    while load.started.elapsed() < total {
        tokio::select! {
            _ = ticker.tick() => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    load.with_minute(|minute| minute.shed += 1);
                    continue;
                };
                let (roll, pick) = (rng.below(100), rng.next() >> 1);
                let load = load.clone();
                tokio::spawn(async move {
                    load.one(roll, pick).await;
                    drop(permit);
                });
            }
            _ = sampler.tick() => {
                let load_average = load_average();
                if let Some(rss) = server.rss_bytes() {
                    load.with_minute(|minute| {
                        minute.rss_last = rss;
                        minute.rss_max = minute.rss_max.max(rss);
                        minute.load_average = load_average;
                    });
                }
                let index = load.minute_index();
                if index > reported {
                    reported = index;
                    eprintln!("soak: minute {index} done");
                    if index == warm_up
                        && let (Some(rss), Some(events)) =
                            (server.rss_bytes(), count_events(&server).await)
                    {
                        at_warm_up = Some((rss, events));
                    }
                }
            }
        }
    }
    // Let the last commands finish before the figures are taken.
    let _ = permits.acquire_many(IN_FLIGHT_MAX as u32).await;
    let events = count_events(&server).await;
    let rss_end = server.rss_bytes().unwrap_or(0);
    server.kill().map_err(|e| e.to_string())?;

    let minutes = std::mem::take(&mut *load.minutes.lock().unwrap_or_else(|p| p.into_inner()));
    let minutes: Vec<Minute> = minutes.into_iter().take(options.minutes as usize).collect();
    println!(
        "| minute | commands | errors | replay mismatches | shed | p50 ms | p99 ms | max ms | RSS MiB (end) | RSS MiB (max) | load avg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut p99s = Vec::new();
    let mut ok = true;
    for (i, minute) in minutes.iter().enumerate() {
        let mut sorted = minute.latencies_us.clone();
        sorted.sort_unstable();
        let p99 = percentile(&sorted, 0.99);
        p99s.push(p99);
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
            i + 1,
            sorted.len(),
            minute.errors,
            minute.replay_mismatches,
            minute.shed,
            percentile(&sorted, 0.50) as f64 / 1000.0,
            p99 as f64 / 1000.0,
            sorted.last().copied().unwrap_or(0) as f64 / 1000.0,
            mib(minute.rss_last),
            mib(minute.rss_max),
            minute.load_average,
        );
        if minute.replay_mismatches > 0 {
            ok = false;
        }
    }
    let first = p99s.first().copied().unwrap_or(0).max(1);
    let worst_ratio = p99s
        .iter()
        .map(|p| *p as f64 / first as f64)
        .fold(0.0, f64::max);
    let latency_ok = worst_ratio <= P99_RATIO_MAX;
    println!(
        "latency: worst minute p99 / first minute p99 = {worst_ratio:.2} (limit {P99_RATIO_MAX}): {}",
        verdict(latency_ok)
    );
    let memory_ok = match (at_warm_up, events) {
        (Some((rss_warm, events_warm)), Some(events_end)) => {
            let grown = rss_end.saturating_sub(rss_warm);
            let recorded_after = events_end.saturating_sub(events_warm);
            let per_event = grown as f64 / recorded_after.max(1) as f64;
            let ok = per_event <= GROWTH_BYTES_PER_EVENT_MAX;
            println!(
                "memory: RSS {:.1} MiB after the warm-up (minute {warm_up}), {:.1} MiB at the end: \
                 +{:.1} MiB over {recorded_after} events recorded since = {per_event:.0} B/event \
                 (limit {GROWTH_BYTES_PER_EVENT_MAX}): {}",
                mib(rss_warm),
                mib(rss_end),
                mib(grown),
                verdict(ok)
            );
            ok
        }
        _ => {
            println!("memory: the run did not outlast the warm-up ({warm_up} minutes); no verdict");
            true
        }
    };
    if !ok {
        println!("replays: a retried token did not replay its recorded outcome: FAIL");
    }
    Ok(ok && latency_ok && memory_ok)
}

/// Events recorded, from the pools' counters (reservations, terminal transitions, journaled
/// rejections and the declaration).
async fn count_events(server: &Server) -> Option<u64> {
    // Reads are signed: count as the admin, who may read every pool.
    let reader = server.admin().ok()?;
    let mut total = 0;
    for i in 0.. {
        let Ok(answer) = reader.pool(&PoolId::new(format!("soak-{i}"))).await else {
            return None;
        };
        if answer.status != 200 {
            break;
        }
        let field = |name: &str| answer.body.get(name).and_then(Value::as_u64).unwrap_or(0);
        let rejections: u64 = answer
            .body
            .get("rejections")
            .and_then(Value::as_object)
            .map(|codes| codes.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        total += 1
            + field("reservations")
            + field("confirmed")
            + field("released")
            + field("expired")
            + rejections;
    }
    Some(total)
}

/// The 1-minute load average of the machine (`/proc/loadavg`), 0 if unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match soak(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("soak failed: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&sorted, 0.50), 50);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.99), 0);
    }
}

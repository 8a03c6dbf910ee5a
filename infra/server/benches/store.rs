//! Embedded event store benchmark: durable appends under 1, 16 and 256 concurrent appenders,
//! then `read_all` over the written log and reopening it (with the index snapshot written at
//! close, and with a full scan: verify + index), plus an fdatasync baseline of the same disk.
//!
//! `cargo bench -p allot-infra --bench store`. The data directory is a temporary directory under
//! `ALLOT_BENCH_DIR` (default: the system temporary directory); it must be on a real disk, since
//! on tmpfs fdatasync costs nothing and group commit has nothing to amortize.
//! Prints one line per result, then one JSON line with every figure.
//!
//! With `ALLOT_BENCH_OPEN_EVENTS=N` it runs only the start-up scenario instead: it writes a log
//! of N events (~250-byte payloads, 1,000 streams) to `$ALLOT_BENCH_DIR/allot-open-N` (kept, and
//! reused by later runs), then times `open` with the index snapshot and with a full scan,
//! `OPEN_RUNS` times each, and prints the medians, the index's memory and the snapshot's size.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use allot_server::store::embedded::{EmbeddedStore, LOG_FILE_NAME, SNAPSHOT_FILE_NAME};
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent, StoreError};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long each appender configuration runs.
const APPEND_PHASE: Duration = Duration::from_secs(3);
/// How long the fdatasync baseline runs.
const SYNC_PHASE: Duration = Duration::from_secs(2);
const APPENDERS: [usize; 3] = [1, 16, 256];
const PAYLOAD_BYTES: usize = 100;
const READ_PAGE_EVENTS: usize = 1024;
/// Start-up scenario: streams of the generated log, events per append, payload size, timed
/// opens per variant.
const OPEN_STREAMS: usize = 1000;
const OPEN_EVENTS_PER_APPEND: usize = 1000;
const OPEN_PAYLOAD_BYTES: usize = 230;
const OPEN_APPENDERS: usize = 8;
const OPEN_RUNS: usize = 3;

fn bench_root() -> PathBuf {
    std::env::var_os("ALLOT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One 100-byte write at the end of a file, then fdatasync, in a loop.
fn fdatasync_baseline(dir: &Path) -> BenchResult<(f64, Duration, Duration)> {
    let path = dir.join("fdatasync-baseline");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let record = [0x5au8; PAYLOAD_BYTES];
    let mut latencies = Vec::new();
    let mut offset = 0u64;
    let start = Instant::now();
    while start.elapsed() < SYNC_PHASE {
        let t = Instant::now();
        file.write_all_at(&record, offset)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
        offset += PAYLOAD_BYTES as u64;
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok((
        rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    ))
}

struct AppendResult {
    appenders: usize,
    /// Appends per fdatasync: how well group commit batched.
    per_sync: f64,
    appends: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn durable_appends(store: Arc<EmbeddedStore>, appenders: usize) -> BenchResult<AppendResult> {
    let counters = store.counters();
    let batches_before = counters.batches.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + APPEND_PHASE;
    let mut tasks = Vec::with_capacity(appenders);
    for a in 0..appenders {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{appenders}-{a}");
            let mut latencies = Vec::new();
            let mut expected = ExpectedVersion::NoStream;
            while Instant::now() < deadline {
                let event = ProposedEvent {
                    id: [a as u8; 16],
                    kind: "Bench".to_owned(),
                    payload: vec![0x42; PAYLOAD_BYTES],
                };
                let t = Instant::now();
                let outcome = store.append(&stream, expected, vec![event]).await?;
                latencies.push(t.elapsed());
                expected = ExpectedVersion::Exact(outcome.last_version);
            }
            Ok::<_, StoreError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let batches = store.counters().batches.load(Ordering::Relaxed) - batches_before;
    latencies.sort();
    Ok(AppendResult {
        appenders,
        per_sync: latencies.len() as f64 / batches.max(1) as f64,
        appends: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

async fn read_everything(store: &EmbeddedStore) -> BenchResult<(usize, f64)> {
    let start = Instant::now();
    let mut after = None;
    let mut events = 0;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        events += page.len();
    }
    Ok((events, events as f64 / start.elapsed().as_secs_f64()))
}

/// Writes `events` events to the store in `dir` with a few concurrent appenders.
async fn generate(store: Arc<EmbeddedStore>, events: u64) -> BenchResult<()> {
    let appends = events.div_ceil(OPEN_EVENTS_PER_APPEND as u64);
    let mut tasks = Vec::new();
    for a in 0..OPEN_APPENDERS as u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = a;
            while i < appends {
                let count =
                    (events - i * OPEN_EVENTS_PER_APPEND as u64).min(OPEN_EVENTS_PER_APPEND as u64);
                let batch = (0..count)
                    .map(|e| {
                        let mut payload = vec![0x61u8; OPEN_PAYLOAD_BYTES];
                        payload[..8].copy_from_slice(&(i * 10_000 + e).to_le_bytes());
                        ProposedEvent {
                            id: [(e % 251) as u8; 16],
                            kind: "Generated".to_owned(),
                            payload,
                        }
                    })
                    .collect();
                let stream = format!("pool-{}", i % OPEN_STREAMS as u64);
                store.append(&stream, ExpectedVersion::Any, batch).await?;
                i += OPEN_APPENDERS as u64;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Opens `dir` and returns (milliseconds, events, index bytes).
fn timed_open(runtime: &tokio::runtime::Runtime, dir: &Path) -> BenchResult<(f64, u64, usize)> {
    let start = Instant::now();
    let store = runtime.block_on(EmbeddedStore::open(dir))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let events = store.next_position();
    let index_bytes = store.index_bytes();
    runtime.block_on(store.close())?;
    Ok((ms, events, index_bytes))
}

/// The start-up scenario (see the module comment).
fn open_scenario(runtime: &tokio::runtime::Runtime, events: u64) -> BenchResult<()> {
    let dir = bench_root().join(format!("allot-open-{events}"));
    let snapshot = dir.join(SNAPSHOT_FILE_NAME);
    if !dir.join(LOG_FILE_NAME).exists() {
        let store = Arc::new(runtime.block_on(EmbeddedStore::open(&dir))?);
        let start = Instant::now();
        runtime.block_on(generate(store.clone(), events))?;
        // Close writes the final snapshot.
        runtime.block_on(store.close())?;
        println!(
            "generated {events} events in {:.1} s ({} periodic + closing snapshots)",
            start.elapsed().as_secs_f64(),
            store.counters().snapshots.load(Ordering::Relaxed)
        );
    }
    let log_bytes = std::fs::metadata(dir.join(LOG_FILE_NAME))?.len();
    let aside = dir.join("index.snapshot.bench-aside");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut opened_events, mut index_bytes, mut snapshot_bytes) = (0, 0, 0);
    for _ in 0..OPEN_RUNS {
        if !snapshot.exists() {
            // A full-scan open closed without a new snapshot: write one.
            let store = runtime.block_on(EmbeddedStore::open(&dir))?;
            runtime.block_on(store.write_index_snapshot())?;
            runtime.block_on(store.close())?;
        }
        snapshot_bytes = std::fs::metadata(&snapshot)?.len();
        let (ms, n, bytes) = timed_open(runtime, &dir)?;
        with.push(ms);
        (opened_events, index_bytes) = (n, bytes);
        std::fs::rename(&snapshot, &aside)?;
        let (ms, n, _) = timed_open(runtime, &dir)?;
        assert_eq!(n, opened_events, "full scan and snapshot disagree");
        without.push(ms);
        // The full-scan open closed with a snapshot of its own; use the earlier one again.
        std::fs::rename(&aside, &snapshot)?;
    }
    let (with_ms, without_ms) = (median(with.clone()), median(without.clone()));
    let per_event = index_bytes as f64 / opened_events.max(1) as f64;
    println!(
        "open with snapshot: {with_ms:.0} ms (runs {with:.0?}); full scan: {without_ms:.0} ms (runs {without:.0?}); {opened_events} events, {:.2} GiB log",
        log_bytes as f64 / (1024.0 * 1024.0 * 1024.0)
    );
    println!(
        "index: {:.0} MiB in memory ({per_event:.1} bytes/event); snapshot file {:.0} MiB",
        index_bytes as f64 / (1024.0 * 1024.0),
        snapshot_bytes as f64 / (1024.0 * 1024.0)
    );
    let json = serde_json::json!({
        "bench": "store-open",
        "events": opened_events,
        "log_bytes": log_bytes,
        "open_with_snapshot_ms": with_ms.round(),
        "open_full_scan_ms": without_ms.round(),
        "index_bytes": index_bytes,
        "index_bytes_per_event": (per_event * 10.0).round() / 10.0,
        "snapshot_bytes": snapshot_bytes,
    });
    println!("{json}");
    Ok(())
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(events) = std::env::var_os("ALLOT_BENCH_OPEN_EVENTS") {
        let events: u64 = events
            .to_str()
            .and_then(|e| e.parse().ok())
            .ok_or("ALLOT_BENCH_OPEN_EVENTS must be a number of events")?;
        return open_scenario(&runtime, events);
    }
    let root = tempfile::tempdir_in(bench_root())?;
    println!("data directory: {}", root.path().display());

    let (sync_rate, sync_p50, sync_p99) = fdatasync_baseline(root.path())?;
    println!(
        "fdatasync baseline: {sync_rate:.0} syncs/s, p50 {:.0} us, p99 {:.0} us (100-byte write + fdatasync)",
        micros(sync_p50),
        micros(sync_p99)
    );

    let store = Arc::new(runtime.block_on(EmbeddedStore::open(&root.path().join("store")))?);
    let mut results = Vec::new();
    for appenders in APPENDERS {
        let result = runtime.block_on(durable_appends(store.clone(), appenders))?;
        println!(
            "durable appends, {:>3} appenders: {:.0} appends/s, p50 {:.0} us, p99 {:.0} us ({} appends, {:.1} per fdatasync)",
            result.appenders,
            result.per_sec,
            micros(result.p50),
            micros(result.p99),
            result.appends,
            result.per_sync
        );
        results.push(result);
    }
    let speedup = results[2].per_sec / results[0].per_sec;
    println!("group commit: 256 appenders reach {speedup:.1}x the single-appender rate");

    let (events, read_rate) = runtime.block_on(read_everything(&store))?;
    println!("read_all: {read_rate:.0} events/s over {events} events");

    runtime.block_on(store.close())?;
    drop(store);
    let store_dir = root.path().join("store");
    let log_bytes = std::fs::metadata(store_dir.join(LOG_FILE_NAME))?.len();
    // Close wrote an index snapshot (the tail was over SNAPSHOT_CLOSE_TAIL_BYTES_MIN): time the
    // open with it, then without it (the full scan, comparable with runs before snapshots).
    let had_snapshot = store_dir.join(SNAPSHOT_FILE_NAME).exists();
    let (snapshot_ms, _, _) = timed_open(&runtime, &store_dir)?;
    let _ = std::fs::remove_file(store_dir.join(SNAPSHOT_FILE_NAME));
    let start = Instant::now();
    let reopened = runtime.block_on(EmbeddedStore::open(&store_dir))?;
    let open_time = start.elapsed();
    let open_rate = reopened.next_position() as f64 / open_time.as_secs_f64();
    println!(
        "open (full scan: verify + index): {:.0} ms for {} events, {:.1} MiB ({open_rate:.0} events/s); with the index snapshot{}: {snapshot_ms:.0} ms",
        open_time.as_secs_f64() * 1e3,
        reopened.next_position(),
        log_bytes as f64 / (1024.0 * 1024.0),
        if had_snapshot { "" } else { " (none written)" },
    );
    runtime.block_on(reopened.close())?;

    let json = serde_json::json!({
        "bench": "store",
        "fdatasync_baseline": {
            "per_sec": sync_rate.round(),
            "p50_us": micros(sync_p50).round(),
            "p99_us": micros(sync_p99).round(),
        },
        "durable_appends": results.iter().map(|r| serde_json::json!({
            "appenders": r.appenders,
            "appends": r.appends,
            "appends_per_fdatasync": (r.per_sync * 10.0).round() / 10.0,
            "per_sec": r.per_sec.round(),
            "p50_us": micros(r.p50).round(),
            "p99_us": micros(r.p99).round(),
        })).collect::<Vec<_>>(),
        "speedup_256_vs_1": (speedup * 10.0).round() / 10.0,
        "read_all": { "events": events, "per_sec": read_rate.round() },
        "open": { "events": events, "log_bytes": log_bytes, "ms": (open_time.as_secs_f64() * 1e3).round(), "with_snapshot_ms": snapshot_ms.round() },
    });
    println!("{json}");
    Ok(())
}

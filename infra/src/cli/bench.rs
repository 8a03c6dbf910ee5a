//! `allot bench`: the performance scenarios. With `--runs N` each run is its own process (a
//! fresh heap, store and runtime) and every figure is printed as median and range.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use allot_domain::ActorId;
use allot_server::identity::KeyFile;
use allot_server::out;
use allot_tools::bench::{self, runs};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run the scenario this many times, each in its own process, and print the median and
    /// range (min–max) of every figure, with the command that reproduces them.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    #[command(subcommand)]
    scenario: BenchScenario,
}

/// What every in-process scenario takes: how long, where, which seed, which store, the trace.
#[derive(Debug, clap::Args)]
pub struct InProcessRun {
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Data directory (default: a temporary directory on the same disk as /tmp).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the in-memory store (not durable): isolates the command path from the disk.
    #[arg(long)]
    in_memory: bool,
    /// Write every command's start (µs from the start of the run) and latency to this CSV.
    #[arg(long)]
    trace: Option<PathBuf>,
}

impl InProcessRun {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// A fresh store in `--data` (or `temp`), or in memory.
    async fn store(&self, temp: &std::path::Path) -> Result<bench::BenchStore, String> {
        bench::store(self.data.as_deref().unwrap_or(temp), self.in_memory).await
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchScenario {
    /// Many pools, random reserve then confirm/cancel, durable, in-process command path.
    Uniform {
        #[arg(long, default_value_t = 1_000)]
        pools: usize,
        /// Concurrent clients. The default saturates 2 cores: with 1,024 a durable run leaves a
        /// quarter of the CPU idle, every client waiting on a sync (BENCHMARKS.md, uniform).
        #[arg(long, default_value_t = 4_096)]
        clients: usize,
        #[command(flatten)]
        run: InProcessRun,
    },
    /// One pool with a cutoff under a reserve storm, durable, in-process command path.
    HotPool {
        #[arg(long, default_value_t = 500)]
        seats: u64,
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[command(flatten)]
        run: InProcessRun,
    },
    /// One pool whose commands succeed: each client holds a seat and releases it (cancel),
    /// over and over (a seat per client, so no reserve is refused), durable, in-process.
    HoldRelease {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[command(flatten)]
        run: InProcessRun,
    },
    /// Signed commands over loopback HTTP from a separate load process.
    Http {
        #[arg(long, default_value_t = 100)]
        pools: usize,
        #[arg(long, default_value_t = 256)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// The load side of `http` (run by it as a child process).
    #[command(hide = true)]
    HttpLoad {
        #[arg(long)]
        server: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        pools: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        seconds: u64,
    },
    /// Signed commands through the batching client library from a separate load process, and the
    /// single-command `http` load against the same server beside it.
    Client {
        #[arg(long, default_value_t = 100)]
        pools: usize,
        /// Closed-loop logical clients, all through one batcher.
        #[arg(long, default_value_t = 1_024)]
        clients: usize,
        /// Connections of the single-command load run beside it.
        #[arg(long, default_value_t = 256)]
        http_clients: usize,
        /// Seconds of each of the two loads.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        batcher: BatcherArgs,
    },
    /// The load side of `client` (run by it as a child process).
    #[command(hide = true)]
    ClientLoad {
        #[arg(long)]
        server: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        pools: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        seconds: u64,
        #[command(flatten)]
        batcher: BatcherArgs,
    },
    /// Rebuild, audit (with and without signatures) and start-up on a large log.
    Replay {
        /// Events in the generated log.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Where the log lives; generated there if it has none (keep it to re-run quickly).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Time to be ready to serve after a restart on a large log, with and without a checkpoint.
    Startup {
        /// Events in the generated log (when the directory has none).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Where the log lives (`bench replay` leaves one there).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Restarts of each kind within one run; the median is reported.
        #[arg(long, default_value_t = 3)]
        restarts: usize,
    },
    /// Memory per live reservation and per cached token.
    Memory {
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// The batcher's settings for `bench client`; each defaults to the library's default.
#[derive(Debug, Clone, clap::Args)]
pub struct BatcherArgs {
    /// Most commands per batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Microseconds the first command of a batch waits for others.
    #[arg(long)]
    linger_us: Option<u64>,
    /// Batches in flight at once.
    #[arg(long)]
    connections: Option<usize>,
}

impl BatcherArgs {
    fn config(&self) -> allot_client::BatcherConfig {
        let default = allot_client::BatcherConfig::default();
        allot_client::BatcherConfig {
            max_batch: self.max_batch.unwrap_or(default.max_batch),
            linger: self.linger_us.map_or(default.linger, Duration::from_micros),
            connections: self.connections.unwrap_or(default.connections),
            ..default
        }
    }

    /// The same settings as arguments of the load process.
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                args.extend([name.to_owned(), value]);
            }
        };
        push("--max-batch", self.max_batch.map(|n| n.to_string()));
        push("--linger-us", self.linger_us.map(|n| n.to_string()));
        push("--connections", self.connections.map(|n| n.to_string()));
        args
    }
}

/// A benchmark's result: its one-line summary, then its JSON record.
fn print_result(result: &(impl std::fmt::Display + serde::Serialize)) {
    out!("{result}");
    out!("{}", serde_json::to_string(result).unwrap_or_default());
}

pub async fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.runs > 1
        && !matches!(
            args.scenario,
            BenchScenario::HttpLoad { .. } | BenchScenario::ClientLoad { .. }
        )
    {
        return repeat(args.runs).await;
    }
    let scenario = args.scenario;
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir_or_temp = |data: Option<PathBuf>| data.unwrap_or_else(|| temp.path().to_owned());
    let result = match scenario {
        BenchScenario::Uniform {
            pools,
            clients,
            run,
        } => {
            let store = run.store(temp.path()).await?;
            bench::uniform(
                store,
                pools,
                clients,
                run.duration(),
                run.seed,
                run.trace.as_deref(),
            )
            .await?
        }
        BenchScenario::HotPool {
            seats,
            clients,
            run,
        } => {
            let store = run.store(temp.path()).await?;
            bench::hot_pool(
                store,
                seats,
                clients,
                run.duration(),
                run.seed,
                run.trace.as_deref(),
            )
            .await?
        }
        BenchScenario::HoldRelease { clients, run } => {
            let store = run.store(temp.path()).await?;
            bench::hold_release(
                store,
                clients,
                run.duration(),
                run.seed,
                run.trace.as_deref(),
            )
            .await?
        }
        BenchScenario::Http {
            pools,
            clients,
            seconds,
            data,
        } => {
            let dir = dir_or_temp(data);
            bench::http(&dir, pools, async |server, key: PathBuf| {
                load_process("http-load", &server, &key, (pools, clients, seconds), &[]).await
            })
            .await?
        }
        BenchScenario::Client {
            pools,
            clients,
            http_clients,
            seconds,
            data,
            batcher,
        } => {
            let dir = dir_or_temp(data);
            let config = batcher.config();
            let result = bench::client::client(
                &dir,
                pools,
                clients,
                &config,
                async |server, key: PathBuf| {
                    let extra = batcher.args();
                    load_process(
                        "client-load",
                        &server,
                        &key,
                        (pools, clients, seconds),
                        &extra,
                    )
                    .await
                },
                async |server, key: PathBuf| {
                    load_process(
                        "http-load",
                        &server,
                        &key,
                        (pools, http_clients, seconds),
                        &[],
                    )
                    .await
                },
            )
            .await?;
            print_result(&result);
            return Ok(ExitCode::SUCCESS);
        }
        BenchScenario::ClientLoad {
            server,
            key,
            pools,
            clients,
            seconds,
            batcher,
        } => {
            let (file, signing_key) = KeyFile::read(&key).map_err(|e| e.to_string())?;
            let result = bench::client::client_load(
                &server,
                ActorId::new(file.actor),
                signing_key,
                batcher.config(),
                (pools, clients),
                Duration::from_secs(seconds),
                1,
            )
            .await?;
            out!("{}", serde_json::to_string(&result).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        BenchScenario::HttpLoad {
            server,
            key,
            pools,
            clients,
            seconds,
        } => {
            let (file, signing_key) = KeyFile::read(&key).map_err(|e| e.to_string())?;
            let result = bench::http_load(
                &server,
                ActorId::new(file.actor),
                signing_key,
                pools,
                clients,
                Duration::from_secs(seconds),
                1,
            )
            .await?;
            out!("{}", serde_json::to_string(&result).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        BenchScenario::Replay { events, data } => {
            let dir = dir_or_temp(data);
            let result = bench::replay(&dir, events).await?;
            print_result(&result);
            return Ok(ExitCode::SUCCESS);
        }
        BenchScenario::Startup {
            events,
            data,
            restarts,
        } => {
            let dir = dir_or_temp(data);
            let result = bench::startup(&dir, events, restarts).await?;
            print_result(&result);
            return Ok(ExitCode::SUCCESS);
        }
        BenchScenario::Memory { count, data } => {
            let dir = dir_or_temp(data);
            let store = bench::store(&dir, false).await?;
            let result = bench::memory(store.store, count).await?;
            print_result(&result);
            return Ok(ExitCode::SUCCESS);
        }
    };
    print_result(&result);
    Ok(ExitCode::SUCCESS)
}

/// Runs the load side `subcommand` as a child process against `server`, signing with the key in
/// `key`; returns the result its last line of output carries.
async fn load_process<T: serde::de::DeserializeOwned>(
    subcommand: &str,
    server: &str,
    key: &std::path::Path,
    (pools, clients, seconds): (usize, usize, u64),
    extra: &[String],
) -> Result<T, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new(exe)
        .args(["bench", subcommand, "--server", server])
        .arg("--key")
        .arg(key)
        .args(["--pools", &pools.to_string()])
        .args(["--clients", &clients.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(extra)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{subcommand} process said {stdout:?}: {e}"))
}

/// Runs this process's own command line again `count` times without `--runs`, each in its own
/// process, and prints every run, then the median and range of each figure.
async fn repeat(count: usize) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args = runs::without_runs(std::env::args().skip(1));
    let command = format!("allot {} --runs {count}", args.join(" "));
    let mut results = Vec::with_capacity(count);
    for run in 1..=count {
        let output = tokio::process::Command::new(&exe)
            .args(&args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "run {run} of `{command}` failed ({}): {stdout}",
                output.status
            ));
        }
        let line = stdout.lines().last().unwrap_or_default();
        let result: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("run {run} printed {stdout:?}: {e}"))?;
        // The human line is the one before the JSON record (a server's start may print first).
        if let Some(summary) = stdout.lines().rev().nth(1) {
            out!("run {run}: {summary}");
        }
        results.push(result);
    }
    let summary = runs::summarize(&command, &results);
    out!("{summary}");
    out!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

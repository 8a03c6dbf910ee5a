//! The `allot` binary: the service, its client, the demo, and the auditor's tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use allot_domain::{Action, ActorId, PoolId, ReservationId, Role, Timestamp};
use allot_infra::client::{Answer, Client};
use allot_infra::clock::{Clock, SystemClock};
use allot_infra::demo::{self, DemoOptions};
use allot_infra::identity::KeyFile;
use allot_infra::inspect;
use allot_infra::server::{ServeOptions, Service};
use allot_infra::store::{self, EventStore};
use allot_infra::{bench, out, output};
use allot_projections::Projections;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the command path allocates and frees small objects across
/// threads, where glibc's free-list consolidation cost a fifth of the CPU (see BENCHMARKS.md).
/// Wrapped to count live bytes for `allot bench memory` (off otherwise).
#[global_allocator]
static ALLOCATOR: allot_infra::allocation::CountingAllocator<mimalloc::MiMalloc> =
    allot_infra::allocation::CountingAllocator(mimalloc::MiMalloc);

/// allot: a reservation ledger that never oversells and never loses a slot.
#[derive(Debug, Parser)]
#[command(name = "allot", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The service's base URL.
    #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The signing key file of the acting actor (created by `allot serve` or `allot actor keygen`).
    #[arg(long, env = "ALLOT_KEY")]
    key: PathBuf,
    /// Idempotency key; a fresh random one if omitted. Reuse it to retry safely.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (embedded store by default).
    Serve {
        /// Data directory of the embedded store (and of the first keys).
        #[arg(long, env = "ALLOT_DATA", default_value = "allot-data")]
        data: PathBuf,
        /// An EventStoreDB/KurrentDB connection string instead of the embedded store.
        #[arg(long, env = "ALLOT_STORE")]
        store: Option<String>,
        #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Where the first admin and sweeper keys are written (default: DATA/keys).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Do not run the expiry sweeper in this instance.
        #[arg(long)]
        no_sweeper: bool,
    },
    /// The course-registration add/drop rush, end to end, on the embedded store.
    Demo {
        /// Keep the log here (default: a temporary directory) so it can be audited afterwards.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 2_000)]
        students: usize,
        #[arg(long, default_value_t = 30)]
        seats: u64,
        /// Milliseconds from the start to the add/drop cutoff.
        #[arg(long, default_value_t = 4_000)]
        cutoff_ms: u64,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Pool administration (admin key).
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// Reserve units of a pool.
    Reserve {
        pool: String,
        #[arg(long)]
        resource: String,
        #[arg(long)]
        requester: String,
        /// Hold duration in milliseconds.
        #[arg(long, default_value_t = 600_000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Confirm a held reservation.
    Confirm {
        reservation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a held reservation, returning its slot.
    Cancel {
        reservation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Expire a lapsed hold (sweeper or admin key).
    Expire {
        reservation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a reservation (`pool:seq`) or a pool.
    Show {
        id: String,
        #[arg(long, env = "ALLOT_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
    },
    /// Verify the seed's guarantees from the log alone; exits non-zero on any violation.
    Audit {
        /// An embedded data directory or a connection string. Run it on a copy, or while the
        /// service is stopped: it takes the directory's lock.
        source: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Skip ed25519 and digest verification (faster; arithmetic and state checks only).
        #[arg(long)]
        no_signatures: bool,
        /// Write a visual report (allocated and capacity over time per pool) to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Who held what at this instant (ms since the epoch, or RFC 3339 UTC).
        #[arg(long)]
        as_of: Option<String>,
        /// List stranded slots (terminal reservations whose slot was never returned).
        #[arg(long)]
        stranded: bool,
        /// The disputed-double-booking view of this pool.
        #[arg(long)]
        dispute: Option<String>,
        /// The contention window of this pool around --around (default: its cutoff).
        #[arg(long)]
        contention: Option<String>,
        #[arg(long)]
        around: Option<String>,
        /// Half-width of the contention window, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Rebuild every projection from the log and write a checkpoint the service starts from.
    Rebuild {
        /// An embedded data directory or a connection string.
        source: String,
        /// Checkpoint file (default: DATA/projections.checkpoint for a data directory).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Start over instead of resuming from the existing checkpoint.
        #[arg(long)]
        full: bool,
    },
    /// Performance scenarios (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Actor keys and registrations.
    Actor {
        #[command(subcommand)]
        command: ActorCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchScenario {
    /// Many pools, random reserve then confirm/cancel, durable, in-process command path.
    Uniform {
        #[arg(long, default_value_t = 1_000)]
        pools: usize,
        /// Concurrent clients. The default saturates 2 cores: with 1,024 a durable run leaves a
        /// quarter of the CPU idle, every client waiting on a sync (BENCHMARKS.md, stop 15).
        #[arg(long, default_value_t = 4_096)]
        clients: usize,
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
    },
    /// One pool with a cutoff under a reserve storm, durable, in-process command path.
    HotPool {
        #[arg(long, default_value_t = 500)]
        seats: u64,
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
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
        /// Restarts of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Memory per live reservation and per cached token.
    Memory {
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Declare a pool; its id is generated unless given.
    Declare {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        capacity: u64,
        /// Cutoff, in milliseconds since the epoch.
        #[arg(long, conflicts_with = "closes_in_ms")]
        closes_at: Option<u64>,
        /// Cutoff, in milliseconds from now.
        #[arg(long)]
        closes_in_ms: Option<u64>,
        /// Named units (a seat map), comma-separated.
        #[arg(long, value_delimiter = ',')]
        units: Vec<String>,
        #[arg(long, default_value_t = allot_infra::http::IDEMPOTENCY_WINDOW_MS_DEFAULT)]
        idempotency_window_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Adjust {
        pool: String,
        #[arg(long)]
        capacity: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Close {
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ActorCommand {
    /// Generate a key file (mode 0600) for a new actor; prints its public key.
    Keygen {
        actor: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Register an actor's public key with a role (admin key).
    Register {
        actor: String,
        #[arg(long)]
        role: String,
        /// Hex public key, or read it from the actor's key file with --key-file.
        #[arg(long, required_unless_present = "key_file")]
        public_key: Option<String>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an actor's key at once (admin key).
    Revoke {
        actor: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Opens the store named by a connection string, or the embedded store in `data`.
async fn open_store(data: &Path, url: Option<&str>) -> Result<Arc<dyn EventStore>, String> {
    match url {
        Some(url) if store::esdb::is_esdb_url(url) => store::esdb::open_esdb(url)
            .await
            .map(|store| Arc::new(store) as Arc<dyn EventStore>)
            .map_err(|error| error.to_string()),
        Some(url) => Err(format!(
            "{url}: a store is an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// connection string"
        )),
        None => store::embedded::EmbeddedStore::open(data)
            .await
            .map(|store| Arc::new(store) as Arc<dyn EventStore>)
            .map_err(|error| error.to_string()),
    }
}

fn is_connection_string(source: &str) -> bool {
    source.contains("://")
}

/// Opens an audit or rebuild source: a connection string or an embedded data directory, which
/// must already exist (auditing a mistyped path must not create an empty store).
async fn open_source(source: &str) -> Result<Arc<dyn EventStore>, String> {
    if is_connection_string(source) {
        return open_store(Path::new("."), Some(source)).await;
    }
    let dir = Path::new(source);
    if !dir.is_dir() {
        return Err(format!("{source}: no such data directory"));
    }
    open_store(dir, None).await
}

fn client(args: &ClientArgs) -> Result<(Client, String), String> {
    let (file, key) = KeyFile::read(&args.key).map_err(|e| e.to_string())?;
    let token = args.token.clone().unwrap_or_else(random_token);
    Ok((
        Client::new(args.server.clone(), ActorId::new(file.actor), key),
        token,
    ))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A benchmark's result: its one-line summary, then its JSON record.
fn print_result(result: &(impl std::fmt::Display + serde::Serialize)) {
    out!("{result}");
    out!("{}", serde_json::to_string(result).unwrap_or_default());
}

fn print_answer(answer: &Answer) -> ExitCode {
    let text = serde_json::to_string_pretty(&answer.body).unwrap_or_default();
    if answer.replayed {
        eprintln!("(replayed: this token's recorded outcome)");
    }
    out!("{text}");
    if answer.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

async fn send(args: &ClientArgs, pool: &PoolId, action: Action) -> Result<ExitCode, String> {
    let (client, token) = client(args)?;
    let answer = client
        .send(pool, &action, &token)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("idempotency key: {token}");
    Ok(print_answer(&answer))
}

fn parse_reservation(text: &str) -> Result<ReservationId, String> {
    ReservationId::parse(text).ok_or_else(|| format!("{text}: a reservation id is `pool:seq`"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text}: role is admin, client, sweeper or auditor"))
}

async fn wait_for_shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve {
            data,
            store,
            listen,
            keys,
            no_sweeper,
        } => {
            let keys_dir = keys.unwrap_or_else(|| data.join("keys"));
            let event_store = open_store(&data, store.as_deref()).await?;
            // Start from the checkpoint `allot rebuild` wrote, replaying only the tail.
            let projections = match store {
                Some(_) => Projections::new(),
                None => {
                    allot_infra::server::projections_at_start(&data.join(inspect::CHECKPOINT_FILE))
                }
            };
            let service = Service::start(
                event_store,
                Arc::new(SystemClock),
                Arc::new(projections),
                ServeOptions {
                    listen,
                    keys_dir,
                    sweeper: !no_sweeper,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            // The service goes on even if nobody reads this line.
            out!("allot serving on http://{}", service.addr);
            wait_for_shutdown_signal().await;
            eprintln!("shutting down: draining in-flight commands");
            service.shutdown().await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            data,
            students,
            seats,
            cutoff_ms,
            seed,
        } => {
            let temp;
            let kept = data.is_some();
            let dir = match data {
                Some(dir) => dir,
                None => {
                    temp = tempfile::tempdir().map_err(|e| e.to_string())?;
                    temp.path().to_owned()
                }
            };
            let event_store = open_store(&dir, None).await?;
            let report = demo::run(
                event_store,
                &dir.join("keys"),
                DemoOptions {
                    students,
                    seats,
                    cutoff_ms,
                    seed,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            out!("{report}");
            if kept {
                out!("log: {}", dir.display());
            } else {
                out!(
                    "log: {} (removed on exit; `--data DIR` keeps it for `allot audit`)",
                    dir.display()
                );
            }
            if report.oversold == 0 && report.incoherent_pools == 0 && report.audit_violations == 0
            {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Pool { command } => match command {
            PoolCommand::Declare {
                pool,
                capacity,
                closes_at,
                closes_in_ms,
                units,
                idempotency_window_ms,
                client,
            } => {
                let pool =
                    PoolId::new(pool.unwrap_or_else(|| format!("pool-{}", &random_token()[..12])));
                let closes_at = closes_at
                    .or_else(|| closes_in_ms.map(|ms| SystemClock.now().0 + ms))
                    .map(Timestamp);
                let action = Action::DeclarePool {
                    capacity,
                    closes_at,
                    units,
                    idempotency_window_ms,
                };
                send(&client, &pool, action).await
            }
            PoolCommand::Adjust {
                pool,
                capacity,
                client,
            } => {
                send(
                    &client,
                    &PoolId::new(pool),
                    Action::AdjustCapacity { capacity },
                )
                .await
            }
            PoolCommand::Close { pool, client } => {
                send(&client, &PoolId::new(pool), Action::ClosePool).await
            }
        },
        Command::Reserve {
            pool,
            resource,
            requester,
            duration_ms,
            count,
            client,
        } => {
            let action = Action::Reserve {
                resource,
                requester,
                duration_ms,
                count,
            };
            send(&client, &PoolId::new(pool), action).await
        }
        Command::Confirm {
            reservation,
            client,
        } => {
            let id = parse_reservation(&reservation)?;
            send(
                &client,
                &id.pool,
                Action::ConfirmReservation {
                    reservation: id.seq,
                },
            )
            .await
        }
        Command::Cancel {
            reservation,
            client,
        } => {
            let id = parse_reservation(&reservation)?;
            send(
                &client,
                &id.pool,
                Action::CancelReservation {
                    reservation: id.seq,
                },
            )
            .await
        }
        Command::Expire {
            reservation,
            client,
        } => {
            let id = parse_reservation(&reservation)?;
            send(
                &client,
                &id.pool,
                Action::ExpireReservation {
                    reservation: id.seq,
                },
            )
            .await
        }
        Command::Show { id, server } => {
            // Reads need no key; an all-zero key is never used to sign here.
            let reader = Client::new(
                server,
                ActorId::new("reader"),
                ed25519_dalek::SigningKey::from_bytes(&[0; 32]),
            );
            let answer = match ReservationId::parse(&id) {
                Some(reservation) => reader.reservation(&reservation).await,
                None => reader.pool(&PoolId::new(id)).await,
            }
            .map_err(|e| e.to_string())?;
            Ok(print_answer(&answer))
        }
        Command::Audit {
            source,
            json,
            no_signatures,
            html,
            as_of,
            stranded,
            dispute,
            contention,
            around,
            seconds,
        } => {
            let time = |text: &str| {
                inspect::parse_time(text)
                    .ok_or_else(|| format!("{text}: give milliseconds or RFC 3339 UTC"))
            };
            let contention = match contention {
                Some(pool) => {
                    let around = match around {
                        Some(text) => time(&text)?,
                        None => return Err("--contention needs --around TIME".to_owned()),
                    };
                    Some((PoolId::new(pool), around, seconds))
                }
                None => None,
            };
            let request = inspect::AuditRequest {
                verify_signatures: !no_signatures,
                as_of: as_of.as_deref().map(time).transpose()?,
                stranded,
                dispute: dispute.map(PoolId::new),
                contention,
                html_title: html.as_ref().map(|_| format!("allot audit of {source}")),
            };
            let event_store = if is_connection_string(&source) {
                open_source(&source).await?
            } else {
                // Re-checksum every byte of the log first: opening trusts the part an index
                // snapshot covers, an audit must not.
                let dir = Path::new(&source);
                if !dir.is_dir() {
                    return Err(format!("{source}: no such data directory"));
                }
                let embedded = store::embedded::EmbeddedStore::open(dir)
                    .await
                    .map_err(|e| e.to_string())?;
                embedded
                    .verify()
                    .await
                    .map_err(|e| format!("log verification failed: {e}"))?;
                Arc::new(embedded) as Arc<dyn EventStore>
            };
            let bar = inspect::progress_bar(None, "auditing");
            let findings = inspect::audit(event_store.as_ref(), &request, &bar)
                .await
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            if let (Some(path), Some(page)) = (&html, &findings.html) {
                inspect::write_atomically(path, page.as_bytes()).map_err(|e| e.to_string())?;
                eprintln!("report: {}", path.display());
            }
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&findings).map_err(|e| e.to_string())?
                );
            } else {
                out!("{}", findings.report);
                for (name, value) in [
                    ("as of", findings.as_of.as_ref().map(serde_json::to_value)),
                    (
                        "stranded slots",
                        findings.stranded_slots.as_ref().map(serde_json::to_value),
                    ),
                    (
                        "dispute",
                        findings.dispute.as_ref().map(serde_json::to_value),
                    ),
                    (
                        "contention window",
                        findings.contention.as_ref().map(serde_json::to_value),
                    ),
                ] {
                    if let Some(Ok(value)) = value {
                        out!(
                            "\n{name}:\n{}",
                            serde_json::to_string_pretty(&value).unwrap_or_default()
                        );
                    }
                }
            }
            Ok(if findings.report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Rebuild {
            source,
            checkpoint,
            full,
        } => {
            let path = match checkpoint {
                Some(path) => path,
                None if is_connection_string(&source) => {
                    return Err("give --checkpoint FILE for a connection string".to_owned());
                }
                None => Path::new(&source).join(inspect::CHECKPOINT_FILE),
            };
            let existing = if full {
                None
            } else {
                inspect::read_checkpoint(&path).map_err(|e| e.to_string())?
            };
            let event_store = open_source(&source).await?;
            let started = std::time::Instant::now();
            let bar = inspect::progress_bar(None, "rebuilding");
            let rebuild = inspect::rebuild(event_store.as_ref(), existing.as_ref(), &bar)
                .await
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            let checkpoint = rebuild.checkpoint();
            let bytes = checkpoint.to_bytes().map_err(|e| e.to_string())?;
            inspect::write_atomically(&path, &bytes).map_err(|e| e.to_string())?;
            out!(
                "rebuilt {} events in {:.2} s{}; checkpoint at position {:?} written to {}",
                rebuild.events_done(),
                started.elapsed().as_secs_f64(),
                if existing.is_some() {
                    " (after the previous checkpoint)"
                } else {
                    ""
                },
                checkpoint.position,
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { scenario } => {
            let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            let dir_or_temp =
                |data: Option<PathBuf>| data.unwrap_or_else(|| temp.path().to_owned());
            let result = match scenario {
                BenchScenario::Uniform {
                    pools,
                    clients,
                    seconds,
                    data,
                    seed,
                    in_memory,
                    trace,
                } => {
                    let dir = dir_or_temp(data);
                    let store = bench::store(&dir, in_memory).await?;
                    let duration = Duration::from_secs(seconds);
                    bench::uniform(store, pools, clients, duration, seed, trace.as_deref()).await?
                }
                BenchScenario::HotPool {
                    seats,
                    clients,
                    seconds,
                    data,
                    seed,
                    in_memory,
                    trace,
                } => {
                    let dir = dir_or_temp(data);
                    let store = bench::store(&dir, in_memory).await?;
                    let duration = Duration::from_secs(seconds);
                    bench::hot_pool(store, seats, clients, duration, seed, trace.as_deref()).await?
                }
                BenchScenario::Http {
                    pools,
                    clients,
                    seconds,
                    data,
                } => {
                    let dir = dir_or_temp(data);
                    bench::http(&dir, pools, async |server, key: PathBuf| {
                        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                        let output = tokio::process::Command::new(exe)
                            .args(["bench", "http-load", "--server", &server])
                            .arg("--key")
                            .arg(&key)
                            .args(["--pools", &pools.to_string()])
                            .args(["--clients", &clients.to_string()])
                            .args(["--seconds", &seconds.to_string()])
                            .output()
                            .await
                            .map_err(|e| e.to_string())?;
                        let stdout = String::from_utf8_lossy(&output.stdout);
                        let line = stdout.lines().last().unwrap_or_default();
                        serde_json::from_str(line)
                            .map_err(|e| format!("load process said {stdout:?}: {e}"))
                    })
                    .await?
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
                BenchScenario::Startup { events, data, runs } => {
                    let dir = dir_or_temp(data);
                    let result = bench::startup(&dir, events, runs).await?;
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
        Command::Actor { command } => match command {
            ActorCommand::Keygen { actor, role, out } => {
                let (file, key) = KeyFile::generate(&actor, parse_role(&role)?);
                file.write_new(&out).map_err(|e| e.to_string())?;
                out!("{}", hex::encode(key.verifying_key().to_bytes()));
                eprintln!("wrote {} (mode 0600)", out.display());
                Ok(ExitCode::SUCCESS)
            }
            ActorCommand::Register {
                actor,
                role,
                public_key,
                key_file,
                client: args,
            } => {
                let public_key = match (public_key, key_file) {
                    (Some(hex_key), _) => hex::decode(hex_key)
                        .ok()
                        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                        .ok_or("public key must be 32 bytes of hex")?,
                    (None, Some(path)) => {
                        let (_, key) = KeyFile::read(&path).map_err(|e| e.to_string())?;
                        key.verifying_key().to_bytes()
                    }
                    (None, None) => return Err("give --public-key or --key-file".to_owned()),
                };
                let (admin, token) = client(&args)?;
                let answer = admin
                    .register_actor(&ActorId::new(actor), parse_role(&role)?, public_key, &token)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(print_answer(&answer))
            }
            ActorCommand::Revoke {
                actor,
                client: args,
            } => {
                let (admin, token) = client(&args)?;
                let answer = admin
                    .revoke_actor(&ActorId::new(actor), &token)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(print_answer(&answer))
            }
        },
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ALLOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Cli::parse())) {
        // Output that could not be written (other than to a reader that left) is a failure.
        Ok(_) if output::failed() => ExitCode::FAILURE,
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

//! `allot serve`: the HTTP service until SIGINT or SIGTERM, then a drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use allot_projections::Projections;
use allot_server::clock::SystemClock;
use allot_server::http::edge::{
    BODY_TIMEOUT_MS, CONNECTIONS_MAX, EdgeLimits, HEAD_BYTES_LIMIT, HEAD_BYTES_MAX,
    HEAD_TIMEOUT_MS, IDLE_TIMEOUT_MS, SEND_TIMEOUT_MS,
};
use allot_server::http::{BATCH_BODY_BYTES_MAX, BODY_BYTES_MAX};
use allot_server::out;
use allot_server::server::{METRICS_LISTEN, ServeOptions, Server};
use allot_server::service::checkpoint::{CHECKPOINT_FILE, projections_at_start};
use clap::builder::TypedValueParser;

use super::source::open_store;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory of the embedded store (and of the first keys).
    #[arg(long, env = "ALLOT_DATA", default_value = "allot-data")]
    data: PathBuf,
    /// An EventStoreDB/KurrentDB connection string instead of the embedded store.
    #[arg(long, env = "ALLOT_STORE")]
    store: Option<String>,
    /// Where the API listens.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Where `/metrics` listens (Prometheus text); the API's address does not serve it.
    #[arg(long, env = "ALLOT_METRICS_LISTEN", default_value = METRICS_LISTEN)]
    metrics_listen: SocketAddr,
    /// Open connections per listener; past it a new connection gets 503 `overloaded` and is
    /// closed. At start the soft open-files limit is raised (up to the hard one) to fit twice
    /// this, plus 256; below that, start-up says so.
    #[arg(long, default_value_t = CONNECTIONS_MAX,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    connections_max: usize,
    /// Bytes of a request head (request line and headers); past it: 400 `invalid-request`.
    #[arg(long, default_value_t = HEAD_BYTES_MAX,
          value_parser = clap::value_parser!(u32).range(1024..=HEAD_BYTES_LIMIT as i64).map(|n| n as usize))]
    head_bytes_max: usize,
    /// Bytes of a request body, checked from Content-Length before reading: past it, 413.
    #[arg(long, default_value_t = BODY_BYTES_MAX,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    body_bytes_max: usize,
    /// Bytes of a batch's body (`POST /v1/batches`), checked from Content-Length before
    /// reading: past it, 413.
    #[arg(long, default_value_t = BATCH_BODY_BYTES_MAX,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    batch_body_bytes_max: usize,
    /// Milliseconds for a request head to arrive whole; then the connection is closed.
    #[arg(long, default_value_t = HEAD_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    head_timeout_ms: u64,
    /// Milliseconds for a request body to arrive whole after its head; then the connection is
    /// closed.
    #[arg(long, default_value_t = BODY_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may wait for its next request; then it is closed.
    #[arg(long, default_value_t = IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// Milliseconds an answer may wait for the client to read it; then the connection is
    /// closed.
    #[arg(long, default_value_t = SEND_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    send_timeout_ms: u64,
    /// Where the first admin and sweeper keys are written (default: DATA/keys).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// This instance's server key, made at its first start (default: KEYS/server.key).
    /// Instances that share a keys directory each need their own.
    #[arg(long)]
    server_key: Option<PathBuf>,
    /// Do not run the expiry sweeper in this instance.
    #[arg(long)]
    no_sweeper: bool,
}

/// Files the process keeps open besides its connections: the log, the snapshot, keys, the
/// runtime's own descriptors, and the tools' reads beside a running service.
const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// Raises the soft open-files limit (toward the hard one) to fit both listeners' connections, so
/// a default `ulimit -n` of 1,024 does not refuse connections well below `--connections-max`.
/// Says so when the hard limit is lower: accepts past it fail and back off.
fn fit_open_files(connections_max: usize) {
    let wanted = (connections_max as u64)
        .saturating_mul(2)
        .saturating_add(FILES_BESIDE_CONNECTIONS);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(soft) if soft >= wanted => {}
        Ok(soft) => out!(
            "open-files limit {soft} is below the {wanted} that --connections-max {connections_max} \
             on two listeners needs; raise the hard limit (ulimit -Hn) or lower --connections-max"
        ),
        Err(error) => {
            tracing::warn!(%error, wanted, "cannot raise the open-files limit");
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    fit_open_files(args.connections_max);
    let keys_dir = args.keys.unwrap_or_else(|| args.data.join("keys"));
    let event_store = open_store(&args.data, args.store.as_deref()).await?;
    // Start from the checkpoint `allot rebuild` wrote, replaying only the tail.
    let projections = match args.store {
        Some(_) => Projections::new(),
        None => projections_at_start(&args.data.join(CHECKPOINT_FILE), event_store.as_ref()).await,
    };
    let server = Server::start(
        event_store,
        Arc::new(SystemClock),
        Arc::new(projections),
        ServeOptions {
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            keys_dir,
            server_key: args.server_key,
            sweeper: !args.no_sweeper,
            edge: EdgeLimits {
                connections_max: args.connections_max,
                head_bytes_max: args.head_bytes_max,
                body_bytes_max: args.body_bytes_max,
                batch_body_bytes_max: args.batch_body_bytes_max,
                head_timeout: Duration::from_millis(args.head_timeout_ms),
                body_timeout: Duration::from_millis(args.body_timeout_ms),
                idle_timeout: Duration::from_millis(args.idle_timeout_ms),
                send_timeout: Duration::from_millis(args.send_timeout_ms),
            },
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    // The service goes on even if nobody reads these lines. The serving line comes last: a
    // reader that waits for it has seen the others.
    if let Some(signer) = &server.seal_signer {
        if server.seal_signer_made {
            out!("made this instance's server key ({})", signer.actor());
        }
        out!(
            "allot server {} key {}",
            signer.actor(),
            hex::encode(signer.public_key())
        );
    }
    out!("allot metrics on http://{}/metrics", server.metrics_addr);
    out!("allot serving on http://{}", server.addr);
    wait_for_shutdown_signal().await;
    eprintln!("shutting down: draining in-flight commands");
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
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

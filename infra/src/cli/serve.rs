//! `allot serve`: the HTTP service until SIGINT or SIGTERM, then a drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use allot_projections::Projections;
use allot_server::clock::SystemClock;
use allot_server::out;
use allot_server::server::{ServeOptions, Server};
use allot_server::service::checkpoint::{CHECKPOINT_FILE, projections_at_start};

use super::source::open_store;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
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
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let keys_dir = args.keys.unwrap_or_else(|| args.data.join("keys"));
    let event_store = open_store(&args.data, args.store.as_deref()).await?;
    // Start from the checkpoint `allot rebuild` wrote, replaying only the tail.
    let projections = match args.store {
        Some(_) => Projections::new(),
        None => projections_at_start(&args.data.join(CHECKPOINT_FILE)),
    };
    let server = Server::start(
        event_store,
        Arc::new(SystemClock),
        Arc::new(projections),
        ServeOptions {
            listen: args.listen,
            keys_dir,
            sweeper: !args.no_sweeper,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    // The service goes on even if nobody reads this line.
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

//! `allot rebuild`: every projection from the log, saved as a checkpoint `allot serve` starts
//! from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allot_server::out;
use allot_server::service::checkpoint::{
    CHECKPOINT_FILE, read_checkpoint, record_chain, write_atomically,
};
use allot_tools::inspect;

use super::source::{is_connection_string, open_source};

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// An embedded data directory or a connection string.
    source: String,
    /// Checkpoint file (default: DATA/projections.checkpoint for a data directory).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Start over instead of resuming from the existing checkpoint.
    #[arg(long)]
    full: bool,
}

pub async fn run(args: RebuildArgs) -> Result<ExitCode, String> {
    let source = &args.source;
    let path = match args.checkpoint {
        Some(path) => path,
        None if is_connection_string(source) => {
            return Err("give --checkpoint FILE for a connection string".to_owned());
        }
        None => Path::new(source).join(CHECKPOINT_FILE),
    };
    let existing = if args.full {
        None
    } else {
        read_checkpoint(&path).map_err(|e| e.to_string())?
    };
    let event_store = open_source(source).await?;
    let started = std::time::Instant::now();
    let bar = inspect::progress_bar(None, "rebuilding");
    let rebuild = inspect::rebuild(event_store.as_ref(), existing.as_ref(), &bar)
        .await
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let mut checkpoint = rebuild.checkpoint();
    record_chain(&mut checkpoint, event_store.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let bytes = checkpoint.to_bytes().map_err(|e| e.to_string())?;
    write_atomically(&path, &bytes).map_err(|e| e.to_string())?;
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

//! `allot repair`: removes what a serving open would remove, explicitly and after saying so.
//!
//! Only a proven torn write of never-acknowledged data is removed (its bytes are kept beside
//! the log as `events.log.torn-<offset>`), and a damaged index snapshot (derived data, rebuilt).
//! Missing or damaged acknowledged data cannot be repaired here: the command says so, and the
//! remedy is a backup or another replica.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_server::out;
use allot_server::store::StoreError;
use allot_server::store::embedded::{EmbeddedStore, SNAPSHOT_FILE_NAME};

use super::audit::EXIT_DAMAGED;

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The embedded data directory (the service must be stopped: repairing takes its lock).
    data: PathBuf,
    /// Do it; without this flag only what would be removed is printed.
    #[arg(long)]
    yes: bool,
}

pub async fn run(args: RepairArgs) -> Result<ExitCode, String> {
    let store = match EmbeddedStore::open_read_only(&args.data).await {
        Ok(store) => store,
        Err(StoreError::Damaged(damage)) => {
            out!("cannot repair: {damage}");
            return Ok(ExitCode::from(EXIT_DAMAGED));
        }
        Err(e) => return Err(e.to_string()),
    };
    let report = store.opened().clone();
    drop(store);
    if report.writer_live {
        return Err(format!(
            "{}: a running allot serve holds this directory; stop it first",
            args.data.display()
        ));
    }
    let mut actions = Vec::new();
    if let Some(torn) = &report.torn_write {
        actions.push(format!(
            "remove {} bytes at offset {} of events.log, a torn write of never-acknowledged data \
             ({}); they are kept in events.log.torn-{}",
            torn.bytes, torn.offset, torn.reason, torn.offset
        ));
    }
    if let Some(reason) = &report.damaged_snapshot {
        actions.push(format!(
            "remove {SNAPSHOT_FILE_NAME} ({reason}); it is rebuilt from the log"
        ));
    }
    if report.format == 1 {
        actions.push(
            "migrate events.log from format 1 to format 2 (the original is kept as events.log.v1)"
                .to_owned(),
        );
    }
    if actions.is_empty() {
        out!(
            "nothing to repair: {} events, every batch verified",
            report.events
        );
        return Ok(ExitCode::SUCCESS);
    }
    for action in &actions {
        out!("{}: {action}", if args.yes { "doing" } else { "would" });
    }
    if !args.yes {
        out!("run again with --yes to do it");
        return Ok(ExitCode::SUCCESS);
    }
    if report.damaged_snapshot.is_some() {
        let path = args.data.join(SNAPSHOT_FILE_NAME);
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // A serving open does the rest: it cuts only a proven torn write, and migrates format 1.
    let store = EmbeddedStore::open(&args.data)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await.map_err(|e| e.to_string())?;
    out!("repaired: {} events", report.events);
    Ok(ExitCode::SUCCESS)
}

//! `allot demo`: the add/drop rush on a fresh embedded store, then its audit.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_server::out;
use allot_tools::demo::{self, DemoOptions};

use super::source::open_store;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
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
}

pub async fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let temp;
    let kept = args.data.is_some();
    let dir = match args.data {
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
            students: args.students,
            seats: args.seats,
            cutoff_ms: args.cutoff_ms,
            seed: args.seed,
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
    if report.oversold == 0 && report.incoherent_pools == 0 && report.audit_violations == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

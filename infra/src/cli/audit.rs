//! `allot audit`: the seed's guarantees checked from the log alone, and the forensics views.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use allot_domain::PoolId;
use allot_server::out;
use allot_server::service::checkpoint::write_atomically;
use allot_server::store::EventStore;
use allot_tools::inspect;

use super::source::{existing_dir, is_connection_string, open_embedded, open_source};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
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
}

pub async fn run(args: AuditArgs) -> Result<ExitCode, String> {
    let time = |text: &str| {
        inspect::parse_time(text)
            .ok_or_else(|| format!("{text}: give milliseconds or RFC 3339 UTC"))
    };
    let contention = match args.contention {
        Some(pool) => {
            let around = match &args.around {
                Some(text) => time(text)?,
                None => return Err("--contention needs --around TIME".to_owned()),
            };
            Some((PoolId::new(pool), around, args.seconds))
        }
        None => None,
    };
    let source = &args.source;
    let request = inspect::AuditRequest {
        verify_signatures: !args.no_signatures,
        as_of: args.as_of.as_deref().map(time).transpose()?,
        stranded: args.stranded,
        dispute: args.dispute.map(PoolId::new),
        contention,
        html_title: args
            .html
            .as_ref()
            .map(|_| format!("allot audit of {source}")),
    };
    let event_store = if is_connection_string(source) {
        open_source(source).await?
    } else {
        // Re-checksum every byte of the log first: opening trusts the part an index snapshot
        // covers, an audit must not.
        let embedded = open_embedded(existing_dir(source)?).await?;
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
    if let (Some(path), Some(page)) = (&args.html, &findings.html) {
        write_atomically(path, page.as_bytes()).map_err(|e| e.to_string())?;
        eprintln!("report: {}", path.display());
    }
    if args.json {
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

//! `allot audit`: the seed's guarantees checked from the log alone, and the forensics views.
//!
//! An embedded directory is opened read-only: the audit takes no lock and changes no byte, so
//! it runs beside a live `allot serve`, up to the durable head it finds. Exit status: 0 clean
//! (a torn write of never-acknowledged data is reported, and is not a failure), 1 a violation
//! of the seed's guarantees, 3 FAIL: acknowledged data missing or damaged, or the log does not
//! extend `--expect-head`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use allot_domain::{PoolId, Timestamp};
use allot_server::out;
use allot_server::service::checkpoint::write_atomically;
use allot_server::service::replay_tail::load_pool;
use allot_server::store::embedded::{EmbeddedStore, OpenReport};
use allot_server::store::{EventStore, StoreError};
use allot_tools::inspect;

use super::source::{existing_dir, is_connection_string, open_source};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// An embedded data directory or a connection string. A directory is read, never written:
    /// no lock is taken, so the audit can run beside a live `allot serve` on it.
    source: String,
    /// Fail unless the log extends this chain head, published earlier (`POSITION:CHAIN`, as
    /// printed by `allot audit` or served by `GET /v1/head`): rollback detection.
    #[arg(long, value_name = "POSITION:CHAIN")]
    expect_head: Option<String>,
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
    /// Centre of the contention window (ms since the epoch, or RFC 3339 UTC); default: the
    /// pool's cutoff (a pool declared without one needs it).
    #[arg(long)]
    around: Option<String>,
    /// Half-width of the contention window, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Instead of the guarantees, check the receipts in this file (one JSON receipt per line)
    /// against the data directory, read-only: lists every receipt whose event the log does not
    /// hold, and every receipt that does not verify.
    #[arg(long)]
    receipts: Option<PathBuf>,
}

/// The cutoff `pool` was declared with: the default centre of its contention window.
async fn pool_cutoff(store: &dyn EventStore, pool: &PoolId) -> Result<Timestamp, String> {
    let aggregate = load_pool(store, pool)
        .await
        .map_err(|e| format!("pool {pool}: {e}"))?;
    if !aggregate.is_declared() {
        return Err(format!("pool {pool} was never declared"));
    }
    aggregate
        .closes_at()
        .ok_or_else(|| format!("pool {pool} was declared without a cutoff: give --around TIME"))
}

pub async fn run(args: AuditArgs) -> Result<ExitCode, String> {
    if let Some(file) = &args.receipts {
        return super::receipts::audit(&args.source, file, args.json).await;
    }
    let time = |text: &str| {
        inspect::parse_time(text)
            .ok_or_else(|| format!("{text}: give milliseconds or RFC 3339 UTC"))
    };
    // Without --around, the window is centred on the pool's cutoff, read once the log is open.
    let contention = match args.contention {
        Some(pool) => Some((
            PoolId::new(pool),
            args.around.as_deref().map(time).transpose()?,
            args.seconds,
        )),
        None => None,
    };
    let source = &args.source;
    let mut request = inspect::AuditRequest {
        verify_signatures: !args.no_signatures,
        as_of: args.as_of.as_deref().map(time).transpose()?,
        stranded: args.stranded,
        dispute: args.dispute.map(PoolId::new),
        contention: None,
        html_title: args
            .html
            .as_ref()
            .map(|_| format!("allot audit of {source}")),
    };
    let expect_head = args.expect_head.as_deref().map(parse_head).transpose()?;
    let mut opened = None;
    let event_store = if is_connection_string(source) {
        if expect_head.is_some() {
            return Err("--expect-head needs an embedded data directory".to_owned());
        }
        open_source(source).await?
    } else {
        // Read-only, and every batch verified from the first (sums, leaves, roots, chain).
        let embedded = match EmbeddedStore::open_read_only(existing_dir(source)?).await {
            Ok(store) => store,
            Err(StoreError::Damaged(damage)) => return Ok(fail(args.json, &damage.to_string())),
            Err(e) => return Err(e.to_string()),
        };
        let report = embedded.opened().clone();
        print_log_report(&report, args.json);
        if let Some(reason) = log_failure(&report) {
            return Ok(fail(args.json, &reason));
        }
        if let Some((position, chain)) = expect_head {
            if let Some(reason) = extends(&embedded, &report, position, &chain).await? {
                return Ok(fail(args.json, &reason));
            }
            if !args.json {
                out!(
                    "extends the expected head: position {position}, chain {}",
                    hex::encode(chain)
                );
            }
        }
        opened = Some(report);
        Arc::new(embedded) as Arc<dyn EventStore>
    };
    request.contention = match contention {
        Some((pool, Some(around), seconds)) => Some((pool, around, seconds)),
        Some((pool, None, seconds)) => {
            let around = pool_cutoff(event_store.as_ref(), &pool).await?;
            Some((pool, around, seconds))
        }
        None => None,
    };
    let bar = inspect::progress_bar(None, "auditing");
    let findings = match inspect::audit(event_store.as_ref(), &request, &bar).await {
        Ok(findings) => findings,
        // A record that fails its leaf when read is damaged acknowledged data.
        Err(e) if opened.is_some() => {
            bar.finish_and_clear();
            return Ok(fail(args.json, &e.to_string()));
        }
        Err(e) => return Err(e.to_string()),
    };
    bar.finish_and_clear();
    if let (Some(path), Some(page)) = (&args.html, &findings.html) {
        write_atomically(path, page.as_bytes()).map_err(|e| e.to_string())?;
        eprintln!("report: {}", path.display());
    }
    if args.json {
        let mut value = serde_json::to_value(&findings).map_err(|e| e.to_string())?;
        if let (Some(object), Some(report)) = (value.as_object_mut(), &opened) {
            object.insert(
                "log".to_owned(),
                serde_json::to_value(report).map_err(|e| e.to_string())?,
            );
        }
        out!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
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

/// Exit status of `allot audit` when acknowledged data is missing or damaged.
pub const EXIT_DAMAGED: u8 = 3;

/// Prints FAIL and gives the damaged-log exit status.
fn fail(json: bool, reason: &str) -> ExitCode {
    if json {
        out!(
            "{}",
            serde_json::json!({ "result": "FAIL", "damaged": reason })
        );
    } else {
        out!("FAIL: {reason}");
    }
    ExitCode::from(EXIT_DAMAGED)
}

/// `POSITION:CHAIN` (decimal, 64 hex digits).
fn parse_head(text: &str) -> Result<(u64, [u8; 32]), String> {
    let usage = || format!("--expect-head {text}: give POSITION:CHAIN (decimal, 64 hex digits)");
    let (position, chain) = text.split_once(':').ok_or_else(usage)?;
    let position = position.parse().map_err(|_| usage())?;
    let chain = hex::decode(chain)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(usage)?;
    Ok((position, chain))
}

/// What the open found, before the guarantees are checked.
fn print_log_report(report: &OpenReport, json: bool) {
    if json {
        return;
    }
    out!(
        "log: format {}, {} events, {} bytes; every leaf, root and chain value verified from the first batch{}",
        report.format,
        report.events,
        report.log_bytes,
        report
            .log_id
            .as_ref()
            .map(|id| format!(", log id {id}"))
            .unwrap_or_default()
    );
    match &report.head {
        Some(head) => out!(
            "head: {}:{} (after batch {})",
            head.position,
            head.chain,
            head.sequence
        ),
        None if report.format == 1 => {
            out!("head: none (format 1 has no chain; `allot serve` migrates it to format 2)")
        }
        None => out!("head: none (no batch yet)"),
    }
    if report.writer_live {
        out!(
            "a live writer holds the directory: audited up to the head above{}",
            match report.in_flight_bytes {
                0 => String::new(),
                bytes => format!(" ({bytes} bytes of a batch being written were not read)"),
            }
        );
    }
    if let Some(torn) = &report.torn_write {
        out!(
            "finding: a torn write of never-acknowledged data at offset {} ({} bytes: {}); \
             `allot serve` or `allot repair` removes it",
            torn.offset,
            torn.bytes,
            torn.reason
        );
    }
    if let Some(reason) = &report.damaged_snapshot {
        out!("finding: index.snapshot is damaged ({reason}); it is derived and rebuilt");
    }
}

/// Damage the open found that is not a reason to refuse reading, but is a FAIL.
fn log_failure(report: &OpenReport) -> Option<String> {
    if report.damaged_head_slots.is_empty() || report.writer_live {
        return None;
    }
    Some(format!(
        "head slots {:?} of events.log are damaged (the durable record of the log's length)",
        report.damaged_head_slots
    ))
}

/// Why the log does not extend the head `position:chain`, if it does not.
async fn extends(
    store: &EmbeddedStore,
    report: &OpenReport,
    position: u64,
    chain: &[u8; 32],
) -> Result<Option<String>, String> {
    if position > report.events {
        return Ok(Some(format!(
            "the log holds {} events, fewer than the expected head's {position}: it was rolled \
             back or cut",
            report.events
        )));
    }
    let found = store.chain_at(position).await.map_err(|e| e.to_string())?;
    Ok(match found {
        Some(found) if &found == chain => None,
        Some(found) => Some(format!(
            "the log's chain value at position {position} is {}, not the expected {}: its \
             history differs from the one published",
            hex::encode(found),
            hex::encode(chain)
        )),
        None => Some(format!(
            "no batch of the log ends at position {position}: its history differs from the one \
             published"
        )),
    })
}

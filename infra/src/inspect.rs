//! The auditor's and operator's tools over a store: `allot audit` (checks, forensics, the HTML
//! report) and `allot rebuild` (projections and a checkpoint). Reads the log page by page in
//! position order and feeds the `allot-replay` folds; memory stays bounded by state.

use std::io::Write;
use std::path::{Path, PathBuf};

use allot_domain::{PoolId, Timestamp, codec};
use allot_replay::{
    ACTORS_STREAM, AsOf, AsOfQuery, Audit, AuditOptions, AuditReport, Checkpoint, ContentionQuery,
    ContentionWindow, DisputeQuery, DoubleBookingView, HtmlReport, Rebuild, RebuildError,
    RebuildOptions, Recorded, RecordedPoolEvent, StrandedSlot, StrandedSlotsQuery,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::store::{EventStore, RecordedEvent, StoreError};

/// Events read per page.
pub const INSPECT_PAGE_EVENTS: usize = 8_192;
/// The checkpoint file's name in an embedded data directory.
pub const CHECKPOINT_FILE: &str = "projections.checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot decode {stream}@{version} (position {position}): {reason}")]
    Decode {
        stream: String,
        version: u64,
        position: u64,
        reason: String,
    },
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Query(String),
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})"
    } else {
        "{msg} {spinner} {pos} events ({per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// Feeds every record after `after` to `visit`, in position order, with progress.
///
/// A three-stage pipeline keeps both cores busy: while `visit` folds page `n` on this task, page
/// `n + 1` is decoded on a blocking thread and page `n + 2` is read by the store. At most three
/// pages are in flight, so memory stays bounded by the page size, not the log.
pub async fn for_each_record(
    store: &dyn EventStore,
    after: Option<u64>,
    bar: &ProgressBar,
    mut visit: impl FnMut(&Recorded) -> Result<(), InspectError>,
) -> Result<u64, InspectError> {
    let offload = tokio::runtime::Handle::try_current().is_ok();
    let mut seen = 0u64;
    let mut read = Some(start_read(store, after).await);
    let mut decoding: Option<Decoding> = None;
    // The page folded last, dropped by the next decoding task rather than on this thread (freeing
    // a page's strings costs about as much as folding it).
    let mut folded: Vec<Recorded> = Vec::new();
    loop {
        let next = match read.take() {
            Some(pending) => {
                let page = pending.finish().await?;
                // A short page is the last one: nothing more to read after it.
                if page.len() == INSPECT_PAGE_EVENTS
                    && let Some(last) = page.last()
                {
                    read = Some(start_read(store, Some(last.position)).await);
                }
                Some(if offload {
                    let garbage = std::mem::take(&mut folded);
                    Decoding::Spawned(tokio::task::spawn_blocking(move || {
                        drop(garbage);
                        decode_page(page)
                    }))
                } else {
                    Decoding::Done(decode_page(page))
                })
            }
            None => None,
        };
        if let Some(previous) = decoding.take() {
            let (records, failure) = previous.finish().await?;
            for recorded in &records {
                visit(recorded)?;
            }
            seen += records.len() as u64;
            bar.inc(records.len() as u64);
            if let Some(failure) = failure {
                return Err(failure);
            }
            folded = records;
        }
        match next {
            Some(next) => decoding = Some(next),
            None => return Ok(seen),
        }
    }
}

type ReadFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send + 'a>,
>;

/// A page read under way (polled once, so the store has started it) or already finished.
enum PendingRead<'a> {
    Running(ReadFuture<'a>),
    Finished(Result<Vec<RecordedEvent>, StoreError>),
}

impl PendingRead<'_> {
    async fn finish(self) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            PendingRead::Running(future) => future.await,
            PendingRead::Finished(result) => result,
        }
    }
}

async fn start_read(store: &dyn EventStore, after: Option<u64>) -> PendingRead<'_> {
    let mut future = store.read_all(after, INSPECT_PAGE_EVENTS);
    match futures::poll!(&mut future) {
        std::task::Poll::Ready(result) => PendingRead::Finished(result),
        std::task::Poll::Pending => PendingRead::Running(future),
    }
}

/// A page's records, decoded in order, and the decoding failure that ended the page early.
type DecodedPage = (Vec<Recorded>, Option<InspectError>);

enum Decoding {
    Spawned(tokio::task::JoinHandle<DecodedPage>),
    Done(DecodedPage),
}

impl Decoding {
    async fn finish(self) -> Result<DecodedPage, InspectError> {
        match self {
            Decoding::Spawned(handle) => handle.await.map_err(|error| InspectError::Decode {
                stream: String::new(),
                version: 0,
                position: 0,
                reason: format!("decoding task failed: {error}"),
            }),
            Decoding::Done(page) => Ok(page),
        }
    }
}

/// Decodes a page as [`Recorded::decode`] does, taking each record's stream name rather than
/// copying it; stops at the first record that does not decode.
fn decode_page(page: Vec<RecordedEvent>) -> DecodedPage {
    let mut records = Vec::with_capacity(page.len());
    for stored in page {
        let RecordedEvent {
            stream,
            version,
            position,
            payload,
            ..
        } = stored;
        // A pool event keeps the store's stream name (moved, not copied).
        let decoded = if stream == ACTORS_STREAM {
            Recorded::decode(&stream, version, position, &payload).map_err(|error| (stream, error))
        } else {
            match codec::decode_event(&payload) {
                Ok(event) => Ok(Recorded::Pool(RecordedPoolEvent {
                    stream,
                    version,
                    position,
                    event,
                })),
                Err(error) => Err((stream, error)),
            }
        };
        match decoded {
            Ok(recorded) => records.push(recorded),
            Err((stream, error)) => {
                let failure = InspectError::Decode {
                    stream,
                    version,
                    position,
                    reason: error.to_string(),
                };
                return (records, Some(failure));
            }
        }
    }
    (records, None)
}

/// What `allot audit` is asked for besides the checks.
#[derive(Debug, Default, Clone)]
pub struct AuditRequest {
    pub verify_signatures: bool,
    pub as_of: Option<Timestamp>,
    pub stranded: bool,
    pub dispute: Option<PoolId>,
    pub contention: Option<(PoolId, Timestamp, u64)>,
    pub html_title: Option<String>,
}

/// Everything one audit pass found.
#[derive(Debug, Serialize)]
pub struct AuditFindings {
    pub report: AuditReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stranded_slots: Option<Vec<StrandedSlot>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispute: Option<DoubleBookingView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contention: Option<ContentionWindow>,
    #[serde(skip)]
    pub html: Option<String>,
}

/// One pass over the store: the audit and every requested forensic view.
pub async fn audit(
    store: &dyn EventStore,
    request: &AuditRequest,
    bar: &ProgressBar,
) -> Result<AuditFindings, InspectError> {
    let options = AuditOptions {
        verify_signatures: request.verify_signatures,
        ..AuditOptions::default()
    };
    let mut audit = Audit::new(options);
    let mut as_of = request.as_of.map(AsOfQuery::new);
    let mut stranded = request.stranded.then(StrandedSlotsQuery::new);
    let mut dispute = request.dispute.as_ref().map(DisputeQuery::new);
    let mut contention = match &request.contention {
        Some((pool, around, seconds)) => Some(
            ContentionQuery::new(pool, *around, *seconds)
                .map_err(|error| InspectError::Query(error.to_string()))?,
        ),
        None => None,
    };
    let mut html = request.html_title.as_deref().map(HtmlReport::new);
    for_each_record(store, None, bar, |recorded| {
        audit.observe(recorded);
        if let Some(query) = as_of.as_mut() {
            query.observe(recorded);
        }
        if let Some(query) = stranded.as_mut() {
            query.observe(recorded);
        }
        if let Some(query) = dispute.as_mut() {
            query.observe(recorded);
        }
        if let Some(query) = contention.as_mut() {
            query.observe(recorded);
        }
        if let Some(report) = html.as_mut() {
            report.observe(recorded);
        }
        Ok(())
    })
    .await?;
    let report = audit.finish();
    Ok(AuditFindings {
        html: html.map(|page| page.with_audit(&report).finish()),
        as_of: as_of.map(AsOfQuery::finish),
        stranded_slots: stranded.map(StrandedSlotsQuery::finish),
        dispute: dispute.map(DisputeQuery::finish),
        contention: contention.map(ContentionQuery::finish),
        report,
    })
}

/// Rebuilds the projections (and pool aggregates) from the log, resuming after `checkpoint`
/// if given.
pub async fn rebuild(
    store: &dyn EventStore,
    checkpoint: Option<&Checkpoint>,
    bar: &ProgressBar,
) -> Result<Rebuild, InspectError> {
    let options = RebuildOptions { fold_pools: false };
    let (mut rebuild, after) = match checkpoint {
        Some(checkpoint) => {
            let rebuild = Rebuild::from_checkpoint(checkpoint, options)?;
            let after = rebuild.resume_after();
            (rebuild, after)
        }
        None => (Rebuild::new(options), None),
    };
    for_each_record(store, after, bar, |recorded| {
        rebuild.apply(recorded).map_err(InspectError::from)
    })
    .await?;
    Ok(rebuild)
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), InspectError> {
    let io = |source| InspectError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Reads a checkpoint file, if it exists.
pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, InspectError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Checkpoint::from_bytes(&bytes)?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InspectError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a time given as milliseconds since the epoch or as RFC 3339 UTC
/// (`2026-09-01T09:00:00Z`, optional fractional seconds).
pub fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(Timestamp(ms));
    }
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let (time, fraction) = match time.split_once('.') {
        Some((time, fraction)) => (time, fraction),
        None => (time, ""),
    };
    let mut time_parts = time.splitn(3, ':');
    let hour: u64 = time_parts.next()?.parse().ok()?;
    let minute: u64 = time_parts.next()?.parse().ok()?;
    let second: u64 = time_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis: u64 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(3).collect();
        format!("{digits:0<3}").parse().ok()?
    };
    // Days from the civil date (proleptic Gregorian), after H. Hinnant's well-known algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(Timestamp(seconds * 1_000 + millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_milliseconds_or_rfc3339() {
        assert_eq!(
            parse_time("1767225600000"),
            Some(Timestamp(1_767_225_600_000))
        );
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z"),
            Some(Timestamp(1_767_225_600_000))
        );
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(Timestamp(1_500)));
        assert_eq!(
            parse_time("2024-02-29T12:00:00Z"),
            Some(Timestamp(1_709_208_000_000))
        );
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}

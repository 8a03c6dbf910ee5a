//! The auditor's and operator's tools over a store: `allot audit` (checks, forensics, the HTML
//! report) and `allot rebuild` (projections and a checkpoint). Reads the log page by page in
//! position order and feeds the `allot-replay` folds; memory stays bounded by state.

use std::path::PathBuf;
use std::sync::Arc;

use allot_domain::streams::ACTORS_STREAM;
use allot_domain::{PoolId, Timestamp, codec};
use allot_projections::Projections;
use allot_replay::{
    AsOf, AsOfQuery, Audit, AuditOptions, AuditReport, AuditRouter, Checkpoint, ContentionQuery,
    ContentionWindow, DisputeQuery, DoubleBookingView, HtmlReport, PartitionEnd, Rebuild,
    RebuildError, RebuildOptions, Recorded, RecordedActorEvent, RecordedPoolEvent, Routed,
    StrandedSlot, StrandedSlotsQuery,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use allot_server::store::{EventStore, LogPage, LogRecord, RecordedEvent, StoreError};

/// Events read per page.
pub const INSPECT_PAGE_EVENTS: usize = 8_192;
/// Most workers of a partitioned audit or rebuild (one per core, up to this).
pub const PARTITIONS_MAX: usize = 4;
/// Pages queued per worker before the reader waits (memory stays bounded by pages).
const PARTITION_QUEUE_PAGES: usize = 2;
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

type ReadFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A page read under way (polled once, so the store has started it) or already finished.
enum PendingRead<'a, T> {
    Running(ReadFuture<'a, T>),
    Finished(Result<T, StoreError>),
}

impl<'a, T> PendingRead<'a, T> {
    async fn start(mut future: ReadFuture<'a, T>) -> PendingRead<'a, T> {
        match futures::poll!(&mut future) {
            std::task::Poll::Ready(result) => PendingRead::Finished(result),
            std::task::Poll::Pending => PendingRead::Running(future),
        }
    }

    async fn finish(self) -> Result<T, StoreError> {
        match self {
            PendingRead::Running(future) => future.await,
            PendingRead::Finished(result) => result,
        }
    }
}

async fn start_read(
    store: &dyn EventStore,
    after: Option<u64>,
) -> PendingRead<'_, Vec<RecordedEvent>> {
    PendingRead::start(store.read_all(after, INSPECT_PAGE_EVENTS)).await
}

async fn start_page_read(store: &dyn EventStore, after: Option<u64>) -> PendingRead<'_, LogPage> {
    PendingRead::start(store.read_all_page(after, INSPECT_PAGE_EVENTS)).await
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
    let forensics = as_of.is_some()
        || stranded.is_some()
        || dispute.is_some()
        || contention.is_some()
        || html.is_some();
    // Signatures keep the one-thread audit (its verifier already fills the cores), and so do
    // forensic views (they follow the whole log in order).
    if !options.verify_signatures && !forensics {
        return Ok(AuditFindings {
            report: audit_partitioned(store, options, bar).await?,
            as_of: None,
            stranded_slots: None,
            dispute: None,
            contention: None,
            html: None,
        });
    }
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
    if let Some(projections) = rebuild.shared_projections() {
        rebuild_partitioned(store, &mut rebuild, projections, after, bar).await?;
        return Ok(rebuild);
    }
    for_each_record(store, after, bar, |recorded| {
        rebuild.apply(recorded).map_err(InspectError::from)
    })
    .await?;
    Ok(rebuild)
}

/// Workers to split a fold over: one per core, at most [`PARTITIONS_MAX`].
fn partition_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, PARTITIONS_MAX)
}

/// One worker of a partitioned fold: it visits, in log order, the records routed to it.
trait PartitionWorker: Send + 'static {
    type Route: Send + Sync + 'static;
    /// What the worker hands back at the end (its state is dropped on its own thread).
    type Output: Send + 'static;
    fn wants(&self, route: &Self::Route) -> bool;
    fn visit(&mut self, stored: LogRecord<'_>, route: &Self::Route) -> Result<(), InspectError>;
    /// Called after each page (a place to publish what was batched over it).
    fn end_page(&mut self) {}
    fn finish(self) -> Self::Output;
}

/// A page as read, with each record's route; `first_ordinal` is its first record's ordinal in
/// the log.
struct RoutedPage<R> {
    records: LogPage,
    routes: Vec<R>,
    first_ordinal: u64,
}

/// A worker's output after the log, and the first record it failed on (with its ordinal).
type WorkerEnd<W> = (<W as PartitionWorker>::Output, Option<(u64, InspectError)>);

/// Feeds every record after `after` to `workers` on their own threads: this task reads page
/// `n + 1` while the workers fold page `n`, and `route` (called here, in log order) says which
/// workers get each record. Returns the workers' outputs once all have folded everything; on
/// failure, the error of the first record (in log order) that failed to route or to fold.
async fn for_each_partitioned<W: PartitionWorker>(
    store: &dyn EventStore,
    after: Option<u64>,
    bar: &ProgressBar,
    workers: Vec<W>,
    mut route: impl FnMut(LogRecord<'_>) -> Result<W::Route, InspectError>,
) -> Result<Vec<W::Output>, InspectError> {
    let mut senders = Vec::with_capacity(workers.len());
    let mut handles = Vec::with_capacity(workers.len());
    for (index, worker) in workers.into_iter().enumerate() {
        let (sender, pages) = tokio::sync::mpsc::channel(PARTITION_QUEUE_PAGES);
        let handle = std::thread::Builder::new()
            .name(format!("replay-part-{index}"))
            .spawn(move || fold_partition(worker, pages))
            .map_err(|source| InspectError::Io {
                path: PathBuf::from("replay worker thread"),
                source,
            })?;
        senders.push(sender);
        handles.push(handle);
    }
    let mut ordinal = 0u64;
    let mut failure: Option<(u64, InspectError)> = None;
    let mut read = Some(start_page_read(store, after).await);
    while let Some(pending) = read.take() {
        let mut records = pending.finish().await?;
        // A short page is the last one: nothing more to read after it.
        if records.len() == INSPECT_PAGE_EVENTS
            && let Some(last) = records.last()
        {
            read = Some(start_page_read(store, Some(last.position)).await);
        }
        let mut routes = Vec::with_capacity(records.len());
        for stored in records.iter() {
            match route(stored) {
                Ok(routed) => routes.push(routed),
                Err(error) => {
                    failure = Some((ordinal + routes.len() as u64, error));
                    break;
                }
            }
        }
        records.truncate(routes.len());
        let count = routes.len() as u64;
        let page = Arc::new(RoutedPage {
            records,
            routes,
            first_ordinal: ordinal,
        });
        for sender in &senders {
            // A worker gone early panicked; its join below reports it.
            let _ = sender.send(Arc::clone(&page)).await;
        }
        ordinal += count;
        bar.inc(count);
        if failure.is_some() {
            break;
        }
    }
    drop(senders);
    let mut done = Vec::with_capacity(handles.len());
    for handle in handles {
        let joined = tokio::task::spawn_blocking(move || handle.join())
            .await
            .ok()
            .and_then(|joined| joined.ok());
        let Some((worker, failed)) = joined else {
            return Err(InspectError::Decode {
                stream: String::new(),
                version: 0,
                position: 0,
                reason: "a replay worker thread failed".to_owned(),
            });
        };
        if let Some((at, error)) = failed
            && failure.as_ref().is_none_or(|(first, _)| at < *first)
        {
            failure = Some((at, error));
        }
        done.push(worker);
    }
    match failure {
        Some((_, error)) => Err(error),
        None => Ok(done),
    }
}

/// A worker thread's loop: fold its records of every page until the reader is done, stopping
/// (but still draining) at its first failure.
fn fold_partition<W: PartitionWorker>(
    mut worker: W,
    mut pages: tokio::sync::mpsc::Receiver<Arc<RoutedPage<W::Route>>>,
) -> WorkerEnd<W> {
    let mut failure = None;
    while let Some(page) = pages.blocking_recv() {
        if failure.is_some() {
            continue;
        }
        for (offset, route) in page.routes.iter().enumerate() {
            if !worker.wants(route) {
                continue;
            }
            let Some(stored) = page.records.get(offset) else {
                break;
            };
            if let Err(error) = worker.visit(stored, route) {
                failure = Some((page.first_ordinal + offset as u64, error));
                break;
            }
        }
        worker.end_page();
    }
    (worker.finish(), failure)
}

fn decode_failure(stored: LogRecord<'_>, error: codec::CodecError) -> InspectError {
    InspectError::Decode {
        stream: stored.stream.to_owned(),
        version: stored.version,
        position: stored.position,
        reason: error.to_string(),
    }
}

/// One partition of a records-only audit.
struct AuditWorker {
    audit: Audit,
    partition: usize,
    /// The pool event being observed, decoded into the same value every time.
    scratch: Option<Recorded>,
}

impl PartitionWorker for AuditWorker {
    type Route = Routed;
    type Output = PartitionEnd;

    fn wants(&self, route: &Routed) -> bool {
        route.is_for(self.partition)
    }

    fn visit(&mut self, stored: LogRecord<'_>, route: &Routed) -> Result<(), InspectError> {
        if stored.stream == ACTORS_STREAM {
            let recorded = Recorded::decode(
                stored.stream,
                stored.version,
                stored.position,
                stored.payload,
            )
            .map_err(|error| decode_failure(stored, error))?;
            self.audit.observe_routed(&recorded, route);
            return Ok(());
        }
        let recorded = decode_pool_event(&mut self.scratch, stored, Decode::Whole)?;
        self.audit.observe_routed(recorded, route);
        Ok(())
    }

    fn finish(self) -> PartitionEnd {
        self.audit.end_partition()
    }
}

/// How much of a pool event a fold reads.
#[derive(Clone, Copy)]
enum Decode {
    Whole,
    /// What projections read ([`codec::decode_event_for_projections`]).
    ForProjections,
}

/// Decodes a stored pool event into `scratch`, reusing its buffers (no allocation per event).
fn decode_pool_event<'a>(
    scratch: &'a mut Option<Recorded>,
    stored: LogRecord<'_>,
    decode: Decode,
) -> Result<&'a Recorded, InspectError> {
    if let Some(Recorded::Pool(recorded)) = scratch.as_mut() {
        match decode {
            Decode::Whole => codec::decode_event_into(stored.payload, &mut recorded.event),
            Decode::ForProjections => {
                codec::decode_event_for_projections(stored.payload, &mut recorded.event)
            }
        }
        .map_err(|error| decode_failure(stored, error))?;
        recorded.stream.clear();
        recorded.stream.push_str(stored.stream);
        recorded.version = stored.version;
        recorded.position = stored.position;
    } else {
        let event =
            codec::decode_event(stored.payload).map_err(|error| decode_failure(stored, error))?;
        *scratch = Some(Recorded::Pool(RecordedPoolEvent {
            stream: stored.stream.to_owned(),
            version: stored.version,
            position: stored.position,
            event,
        }));
    }
    scratch
        .as_ref()
        .ok_or_else(|| decode_failure(stored, codec::CodecError::Empty))
}

/// The records-only audit with its pool streams split over the cores; the report is the one
/// [`Audit`] makes on one thread.
async fn audit_partitioned(
    store: &dyn EventStore,
    options: AuditOptions,
    bar: &ProgressBar,
) -> Result<AuditReport, InspectError> {
    let count = partition_count();
    let workers = Audit::partitions(options, count)
        .into_iter()
        .enumerate()
        .map(|(partition, audit)| AuditWorker {
            audit,
            partition,
            scratch: None,
        })
        .collect();
    let mut router = AuditRouter::new(count);
    let ends = for_each_partitioned(store, None, bar, workers, |stored| {
        Ok(router.route(stored.stream, stored.position, stored.payload))
    })
    .await?;
    Ok(Audit::merge_partitions(ends))
}

/// One partition of a rebuild: the pools whose projection shard maps to it.
struct RebuildWorker {
    projections: Arc<Projections>,
    partition: usize,
    /// The pool event being applied, decoded into the same value every time.
    scratch: Option<Recorded>,
    /// Events applied since the last page, and the position of the last of them: added to the
    /// projections' totals once per page.
    applied: u64,
    last_position: u64,
}

impl PartitionWorker for RebuildWorker {
    /// The partition of a pool event still to project; `None` for a record folded by the reader.
    type Route = Option<usize>;
    type Output = ();

    fn wants(&self, route: &Option<usize>) -> bool {
        *route == Some(self.partition)
    }

    fn visit(&mut self, stored: LogRecord<'_>, _: &Option<usize>) -> Result<(), InspectError> {
        if let Recorded::Pool(recorded) =
            decode_pool_event(&mut self.scratch, stored, Decode::ForProjections)?
            && Rebuild::project_uncounted(&self.projections, recorded)?
        {
            self.applied += 1;
            self.last_position = recorded.position;
        }
        Ok(())
    }

    fn end_page(&mut self) {
        self.projections.account(self.applied, self.last_position);
        self.applied = 0;
    }

    fn finish(mut self) {
        self.end_page();
    }
}

/// The rebuild with pools split over the cores by pool id (each pool's events stay in order on
/// one worker); order checks and actor events stay on this task, in log order.
async fn rebuild_partitioned(
    store: &dyn EventStore,
    rebuild: &mut Rebuild,
    projections: Arc<Projections>,
    after: Option<u64>,
    bar: &ProgressBar,
) -> Result<(), InspectError> {
    let count = partition_count();
    let workers = (0..count)
        .map(|partition| RebuildWorker {
            projections: Arc::clone(&projections),
            partition,
            scratch: None,
            applied: 0,
            last_position: 0,
        })
        .collect();
    for_each_partitioned(store, after, bar, workers, |stored| {
        let project = rebuild.admit(stored.position)?;
        if stored.stream == ACTORS_STREAM {
            let event = codec::decode_actor_event(stored.payload)
                .map_err(|error| decode_failure(stored, error))?;
            rebuild.apply_actor(&RecordedActorEvent {
                version: stored.version,
                position: stored.position,
                event,
            });
            return Ok(None);
        }
        if !project {
            return Ok(None);
        }
        match codec::peek_pool(stored.payload) {
            // Whole shards per worker: two workers never write one shard's lock.
            Ok(pool) => Ok(Some(projections.pool_shard(pool) % count)),
            // Not an event: report what decoding it says, as the one-thread rebuild would.
            Err(peek) => Err(decode_failure(
                stored,
                codec::decode_event(stored.payload).err().unwrap_or(peek),
            )),
        }
    })
    .await?;
    Ok(())
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
    use allot_server::store::embedded::EmbeddedStore;
    use allot_server::store::{ExpectedVersion, ProposedEvent};

    /// Every record of `store`, decoded, in log order.
    async fn records(store: &dyn EventStore) -> Vec<Recorded> {
        let bar = progress_bar(None, "");
        bar.set_draw_target(ProgressDrawTarget::hidden());
        let mut all = Vec::new();
        for_each_record(store, None, &bar, |recorded| {
            all.push(recorded.clone());
            Ok(())
        })
        .await
        .expect("reads");
        all
    }

    async fn append_copy(store: &EmbeddedStore, stream: &str, event: &allot_domain::Event) {
        store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![ProposedEvent {
                    id: [9; 16],
                    kind: event.kind_name().to_owned(),
                    payload: codec::encode_event(event),
                }],
            )
            .await
            .expect("appends");
    }

    /// On a real store, with worker threads: the partitioned audit and rebuild give what the
    /// one-thread audit and rebuild give, on a log damaged in several ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitioned_audit_and_rebuild_equal_the_one_thread_ones() {
        let dir = std::env::temp_dir().join(format!("allot-inspect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = EmbeddedStore::open(&dir).await.expect("opens");
        crate::bench::generate_log(&store, 20_000)
            .await
            .expect("generates");
        let clean = records(&store).await;
        let pool_events: Vec<&RecordedPoolEvent> =
            clean.iter().filter_map(Recorded::pool_event).collect();
        // A miscounted event at the end of a stream, a pool recorded in a second stream, and a
        // repeated token.
        let mut miscounted = pool_events[40].event.clone();
        miscounted.allocated_after += 5;
        append_copy(&store, &pool_events[40].stream, &miscounted).await;
        append_copy(&store, "pool-elsewhere", &pool_events[7].event).await;
        let last = pool_events[pool_events.len() - 1];
        append_copy(&store, &last.stream, &last.event).await;
        let all = records(&store).await;

        let bar = progress_bar(None, "");
        bar.set_draw_target(ProgressDrawTarget::hidden());
        let found = audit(&store, &AuditRequest::default(), &bar)
            .await
            .expect("audits");
        let options = AuditOptions {
            verify_signatures: false,
            ..AuditOptions::default()
        };
        let expected = Audit::run(options, &all);
        assert!(expected.violations_total() >= 3, "{expected}");
        assert_eq!(found.report, expected);

        let rebuilt = rebuild(&store, None, &bar).await;
        let mut one_thread = Rebuild::new(RebuildOptions { fold_pools: false });
        let expected = one_thread.run(&all, |_| {}).map(|_| ());
        match (rebuilt, expected) {
            (Ok(rebuilt), Ok(())) => {
                assert_eq!(rebuilt.checkpoint(), one_thread.checkpoint());
            }
            (Err(found), Err(expected)) => {
                assert_eq!(found.to_string(), InspectError::from(expected).to_string());
            }
            (found, expected) => panic!("{:?} but {expected:?}", found.map(|_| ())),
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

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

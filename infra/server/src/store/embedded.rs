//! The embedded backend: a durable append-only log in a data directory.
//!
//! Layout of the directory: `events.log` (the log; format in `format.rs` and `docs/store.md`),
//! `store.id` (which log belongs here, `files.rs`), `index.snapshot`, and `LOCK` (held with an
//! exclusive `flock` by the owning process while the store is open for writing; a read-only
//! open takes no lock and writes nothing).
//!
//! How it works:
//! - `writer`: one thread owns the file for writing and group-commits the bounded queue of
//!   requests ([`APPEND_QUEUE_MAX`]; an append, or a wave of appends to distinct streams): one
//!   write and one fdatasync per batch; an append resolves only after its bytes are durable.
//! - `index`: in memory, position → file offset and stream → positions, holding durable events
//!   only; `read_stream` costs what the stream's events cost, not the log.
//! - `recovery`: open verifies every batch it relies on (header sums, leaves, roots, the chain),
//!   cuts a proven torn write of never-acknowledged data, and refuses missing or damaged
//!   acknowledged data as [`StoreError::Damaged`].
//! - `files`: `store.id`, creating a log whole, migrating a format-1 log.
//! - `snapshot`: `index.snapshot` holds the index up to a batch boundary; when it matches the
//!   log, open loads it and verifies only the tail after it. [`EmbeddedStore::verify`] checks
//!   the whole log (every checksum) against the live index.
//! - Reads use their own file handle and positional reads on the blocking pool, so they never
//!   wait for the writer's fdatasync; they hold the index lock only to copy locations. Every
//!   record read is checked against its sum (CRC-32) before it is returned: no byte is served that was
//!   not verified after it was read.
//! - Positions are the global sequence number of events, 0-based and contiguous.

mod chunked;
#[cfg(test)]
mod crash_tests;
mod files;
mod format;
mod index;
mod recovery;
mod snapshot;
mod writer;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

pub use files::{LOG_TEMP_FILE_NAME, LOG_V1_FILE_NAME, STORE_ID_FILE_NAME};
pub use format::{
    BATCH_BODY_BYTES_MAX, FRAME_BYTES_MAX, HEAD_SLOTS, HeadSlot, LogFormat, SECTOR_BYTES,
};
pub use index::ChainHead;
use index::{EventLoc, Index};
use recovery::Access;
pub use recovery::TornWrite;
pub use snapshot::{SNAPSHOT_FILE_NAME, SNAPSHOT_TEMP_FILE_NAME, SnapshotInfo};
use writer::{AppendRequest, LogDevice, Request, RequestQueue, Writer};
pub use writer::{
    BATCH_APPENDS_MAX, SNAPSHOT_CLOSE_TAIL_BYTES_MIN, SNAPSHOT_TAIL_BYTES_MIN, WriterCounters,
};

use super::{
    AppendOutcome, EventStore, ExpectedVersion, LogPage, PageRecord, ProposedEvent, RecordedEvent,
    StoreError, Subscription, WaveAppend, validate_append,
};

/// Appends waiting for the writer; callers beyond it wait for room (backpressure).
pub const APPEND_QUEUE_MAX: usize = 4096;
/// Events a subscription reads and buffers at a time.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 512;
/// Gap between two event records below which one positional read covers both.
const READ_GAP_BYTES_MAX: u64 = 4096;
/// Largest single positional read.
const READ_RUN_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Events compared per hold of the index read lock in [`EmbeddedStore::verify`].
const VERIFY_CHUNK_EVENTS: u64 = 64 * 1024;

/// Name of the log file inside the data directory.
pub const LOG_FILE_NAME: &str = "events.log";
/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The batch header size of the format the writer writes (format 2 only).
pub const BATCH_HEADER_BYTES: usize = LogFormat::V2.batch_header_bytes();
/// Where the first batch of a new log goes (after the file header and the head slots).
pub const FILE_HEADER_BYTES: u64 = LogFormat::V2.data_start();

/// What readers share with the writer.
struct EmbeddedState {
    log_path: PathBuf,
    format: LogFormat,
    log_id: Option<[u8; 16]>,
    /// Read-only handle for positional reads.
    reader: File,
    index: Arc<RwLock<Index>>,
}

/// The embedded event store. Cheap to share behind an `Arc`; dropping it stops the writer after
/// it has finished the queued appends and releases the directory.
pub struct EmbeddedStore {
    shared: Arc<EmbeddedState>,
    opened: OpenReport,
    requests: Option<mpsc::Sender<Request>>,
    head: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<WriterCounters>,
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The first position a read after `after` starts at; `None` past the last possible one.
fn first_position_after(after: Option<u64>) -> Option<u64> {
    match after {
        None => Some(0),
        Some(after) => after.checked_add(1),
    }
}

/// The offset and bytes of the log's last batch, if it has one.
fn read_last_batch(
    file: &File,
    path: &Path,
    (last_batch, end): (u64, u64),
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    if end <= last_batch || last_batch < LogFormat::V2.data_start() {
        return Ok(None);
    }
    let mut bytes = vec![0u8; (end - last_batch) as usize];
    file.read_exact_at(&mut bytes, last_batch)
        .map_err(|e| io_error(path, e))?;
    Ok(Some((last_batch, bytes)))
}

/// Writes the log's last batch again, as it reads back, and syncs it before anything is
/// served. After a failed fdatasync the kernel may keep that batch in the page cache, marked
/// clean, while the disk never got it: recovery in the same boot would read it back as valid
/// and the service would decide on bytes a power loss can still take. Rewriting makes them
/// durable, or fails the open. Only the last batch can be in that state (the writer stops at
/// its first failed write or sync); the bytes are identical, so a crash mid-rewrite leaves the
/// batch as it was.
fn resync_last_batch(
    device: &mut dyn LogDevice,
    path: &Path,
    offset: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    device
        .write_all_at(bytes, offset)
        .and_then(|()| device.sync_data())
        .map_err(|e| io_error(path, e))
}

/// Opens (creating if needed) the store in `dir`, recovering the log.
pub async fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(dir).await
}

/// Runs store file I/O on tokio's blocking pool; a task that panicked or was cancelled is
/// `Unavailable` (nothing was written by a read, an open or a verify).
async fn on_blocking_pool<T: Send + 'static>(
    what: &str,
    io: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(io)
        .await
        .map_err(|e| StoreError::Unavailable {
            reason: format!("{what} task failed: {e}"),
            maybe_written: false,
        })?
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, recovering the log. Fails with
    /// [`StoreError::Locked`] if another open store (in any process) owns `dir`.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        on_blocking_pool("open", move || {
            Self::open_blocking(&dir, |file| Box::new(file))
        })
        .await
    }

    /// `device` wraps the log file for the writer; tests wrap it to inject failures.
    fn open_blocking(
        dir: &Path,
        device: impl FnOnce(File) -> Box<dyn LogDevice>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        // `File::try_lock` is stable since 1.89, one release past the workspace's stated MSRV;
        // the toolchain in use is newer.
        #[allow(clippy::incompatible_msrv)]
        let locked = lock.try_lock();
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.display().to_string()));
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&lock_path, e)),
        }

        let log_path = dir.join(LOG_FILE_NAME);
        if !log_path.exists() {
            files::refuse_missing_log(dir, &log_path)?;
            files::create_log(dir, &log_path)?;
        }
        let open_log = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&log_path)
                .map_err(|e| io_error(&log_path, e))
        };
        let mut log = open_log()?;
        let mut file_len = log.metadata().map_err(|e| io_error(&log_path, e))?.len();
        let mut header = recovery::read_file_header(&log, &log_path, file_len)?;
        if header.format == LogFormat::V1 {
            files::migrate_v1(dir, &log, &log_path)?;
            log = open_log()?;
            file_len = log.metadata().map_err(|e| io_error(&log_path, e))?.len();
            header = recovery::read_file_header(&log, &log_path, file_len)?;
        }
        let log_id = header.log_id.unwrap_or_default();
        files::check_store_id(
            dir,
            &log_path,
            log_id,
            file_len > LogFormat::V2.data_start(),
            true,
        )?;
        let mut damaged_snapshot = false;
        let loaded = match snapshot::load(dir, &log, &log_path) {
            Ok(index) => Some(index),
            Err(snapshot::SnapshotError::Missing) => None,
            Err(snapshot::SnapshotError::Mismatch { offset, reason }) => {
                return Err(recovery::locate_mismatch(
                    &log, &log_path, file_len, offset, reason,
                ));
            }
            Err(e) => {
                tracing::warn!(
                    file = %dir.join(SNAPSHOT_FILE_NAME).display(),
                    reason = %e,
                    "index snapshot not used; scanning the whole log"
                );
                damaged_snapshot = matches!(e, snapshot::SnapshotError::Invalid(_));
                None
            }
        };
        let snapshot_end = loaded.as_ref().map_or(0, |index| index.covered().1);
        let recovered = recovery::recover(&log, &log_path, file_len, loaded, Access::Repair)?;
        // Only an open that serves changes what is beside the log: a refused one left it all.
        // Temporary files are what a crash left mid-write (never complete, never used); a
        // damaged snapshot is derived data, written again.
        snapshot::remove(dir, SNAPSHOT_TEMP_FILE_NAME);
        snapshot::remove(dir, LOG_TEMP_FILE_NAME);
        if damaged_snapshot {
            snapshot::remove(dir, SNAPSHOT_FILE_NAME);
        }
        let opened = OpenReport::new(&recovered, false, None);
        let reader = File::open(&log_path).map_err(|e| io_error(&log_path, e))?;
        let next_position = recovered.index.len();
        tracing::info!(
            file = %log_path.display(),
            events = next_position,
            bytes = recovered.end,
            snapshot_bytes = snapshot_end,
            scanned_bytes = recovered.end - snapshot_end.max(FILE_HEADER_BYTES).min(recovered.end),
            chain_head = %recovered.index.head().map(|h| hex::encode(h.seal.chain)).unwrap_or_default(),
            index_bytes = recovered.index.heap_bytes(),
            "event log opened"
        );

        let last_batch = read_last_batch(&log, &log_path, recovered.index.covered())?;
        let index = Arc::new(RwLock::new(recovered.index));
        let (head_tx, head_rx) = watch::channel(next_position);
        let (requests_tx, requests_rx) = mpsc::channel(APPEND_QUEUE_MAX);
        let counters = Arc::new(WriterCounters::default());
        let mut log = device(log);
        if let Some((offset, bytes)) = last_batch {
            resync_last_batch(log.as_mut(), &log_path, offset, &bytes)?;
        }
        let writer = Writer {
            log,
            dir: dir.to_path_buf(),
            log_path: log_path.clone(),
            lock,
            end: recovered.end,
            genesis: allot_domain::integrity::genesis(&log_id),
            index: index.clone(),
            head: head_tx,
            requests: RequestQueue(requests_rx),
            counters: counters.clone(),
            snapshot_end,
            snapshotting: None,
        };
        let handle = std::thread::Builder::new()
            .name("allot-log-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| io_error(&log_path, e))?;
        Ok(Self {
            shared: Arc::new(EmbeddedState {
                log_path,
                format: LogFormat::V2,
                log_id: Some(log_id),
                reader,
                index,
            }),
            opened,
            requests: Some(requests_tx),
            head: head_rx,
            counters,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Opens the store in `dir` to read it, changing nothing: no lock is taken, no torn write
    /// cut, no file created, migrated or removed. It can run beside a serving process on the same
    /// directory: then it reads up to the durable head it finds. Verifies the whole log from
    /// its first batch (header sums, each event's leaf and sum, roots, the chain); each record
    /// read later is checked against its sum. Refuses missing or damaged acknowledged data as
    /// [`StoreError::Damaged`]; what it found otherwise is in [`EmbeddedStore::opened`].
    pub async fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        on_blocking_pool("open", move || Self::open_read_only_blocking(&dir)).await
    }

    fn open_read_only_blocking(dir: &Path) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        if !dir.is_dir() {
            return Err(io_error(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
            ));
        }
        let writer_live = lock_is_held(dir)?;
        let log_path = dir.join(LOG_FILE_NAME);
        if !log_path.exists() {
            files::refuse_missing_log(dir, &log_path)?;
            return Err(io_error(
                &log_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no event log here"),
            ));
        }
        let log = File::open(&log_path).map_err(|e| io_error(&log_path, e))?;
        let file_len = log.metadata().map_err(|e| io_error(&log_path, e))?.len();
        let header = recovery::read_file_header(&log, &log_path, file_len)?;
        if let Some(log_id) = header.log_id {
            files::check_store_id(
                dir,
                &log_path,
                log_id,
                file_len > header.format.data_start(),
                false,
            )?;
        }
        let snapshot_damaged = match snapshot::check(dir, &log, &log_path) {
            Ok(damaged) => damaged,
            Err(snapshot::SnapshotError::Mismatch { offset, reason }) => {
                return Err(recovery::locate_mismatch(
                    &log, &log_path, file_len, offset, reason,
                ));
            }
            Err(e) => Some(e.to_string()),
        };
        let recovered = recovery::recover(
            &log,
            &log_path,
            file_len,
            None,
            Access::ReadOnly { writer_live },
        )?;
        let opened = OpenReport::new(&recovered, writer_live, snapshot_damaged);
        tracing::info!(
            file = %log_path.display(),
            events = opened.events,
            bytes = opened.log_bytes,
            writer_live,
            seconds = started.elapsed().as_secs_f64(),
            "event log opened read-only and verified"
        );
        let (_head_tx, head) = watch::channel(recovered.index.len());
        Ok(Self {
            shared: Arc::new(EmbeddedState {
                log_path,
                format: recovered.format,
                log_id: recovered.log_id,
                reader: log,
                index: Arc::new(RwLock::new(recovered.index)),
            }),
            opened,
            requests: None,
            head,
            counters: Arc::new(WriterCounters::default()),
            writer: Mutex::new(None),
        })
    }

    /// What the open found: the log's format and id, its verified length and chain head, and
    /// any torn write, in-flight batch or damaged derived data beside it.
    pub fn opened(&self) -> &OpenReport {
        &self.opened
    }

    /// The chain head now: the seal of the newest durable batch (format 2).
    pub fn chain_head(&self) -> Option<ChainHead> {
        self.shared.index().head()
    }

    /// The log id (format 2).
    pub fn log_id(&self) -> Option<[u8; 16]> {
        self.shared.log_id
    }

    /// The stored leaf of the event at `position`, read and checked against the record's bytes;
    /// `Ok(None)` past the durable head (or in a format-1 log, which has none).
    pub async fn event_leaf(
        &self,
        position: u64,
    ) -> Result<Option<allot_domain::integrity::Digest>, StoreError> {
        let locs = self.shared.index().range(position, 1);
        if locs.first().is_none_or(|(p, _)| *p != position) {
            return Ok(None);
        }
        let shared = self.shared.clone();
        on_blocking_pool("read", move || shared.read_leaf(&locs)).await
    }

    /// Number of durable events, which is also the position the next event will get.
    pub fn next_position(&self) -> u64 {
        *self.head.borrow()
    }

    /// Batches synced and appends acknowledged since open.
    pub fn counters(&self) -> &WriterCounters {
        &self.counters
    }

    /// Heap bytes of the in-memory index (locations and stream table).
    pub fn index_bytes(&self) -> usize {
        self.shared.index().heap_bytes()
    }

    /// Writes `index.snapshot` now, covering every append queued before this call, so the next
    /// open reads only what is appended after it. Runs on a helper thread while appends go on.
    /// `Ok(None)` when the log holds no event yet. The writer also does this by itself as the
    /// log grows and on a clean close (see `docs/store.md`).
    pub async fn write_index_snapshot(&self) -> Result<Option<SnapshotInfo>, StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        let (reply, written) = oneshot::channel();
        requests
            .send(Request::Snapshot(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        written.await.map_err(|_| StoreError::Closed)?
    }

    /// Reads the whole durable log and verifies it as a full-scan open would (file header, every
    /// batch header and frame checksum, positions and versions), and checks that the in-memory
    /// index (loaded from a snapshot or not) agrees with it event by event. Read-only; appends go
    /// on meanwhile. Costs a full read of the log and a second index in memory while it runs.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let shared = self.shared.clone();
        on_blocking_pool("verify", move || shared.verify()).await
    }

    /// Finishes the queued appends, stops the writer and releases the directory. Later appends
    /// fail with [`StoreError::Closed`]; reads keep working.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(requests) = &self.requests {
            let (reply, done) = oneshot::channel();
            // Err: the writer is already gone.
            if requests.send(Request::Close(reply)).await.is_ok() {
                let _ = done.await;
            }
        }
        let handle = match self.writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .ok()
                .and_then(|joined| joined.ok())
                .ok_or_else(|| StoreError::Unavailable {
                    reason: "event log writer panicked".to_owned(),
                    maybe_written: true,
                })?;
        }
        Ok(())
    }

    async fn read_locs(
        &self,
        locs: Vec<(u64, EventLoc)>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if locs.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        on_blocking_pool("read", move || shared.read_events(&locs)).await
    }
}

/// What opening the log found (see [`EmbeddedStore::opened`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenReport {
    /// Log format number (2 is written; 1 is read).
    pub format: u32,
    /// The log id, lowercase hex (format 2).
    pub log_id: Option<String>,
    /// Events verified: positions `0..events`.
    pub events: u64,
    /// Bytes of the log verified.
    pub log_bytes: u64,
    /// The chain head after the verified log (format 2).
    pub head: Option<HeadReport>,
    /// A torn write of never-acknowledged data after the verified log: cut by a serving open,
    /// left in place (and reported) by a read-only one.
    pub torn_write: Option<TornReport>,
    /// Read-only beside a live writer: bytes of a batch still being written, not read.
    pub in_flight_bytes: u64,
    /// Whether another process held the directory's lock (a read-only open).
    pub writer_live: bool,
    /// The newest valid head slot's batch number: every batch before it was acknowledged.
    pub newest_head_slot: Option<u64>,
    /// Head slots that fail their checksum (slot numbers); the others bound the log.
    pub damaged_head_slots: Vec<u64>,
    /// Why the index snapshot is not usable, when it is damaged (derived data: rebuilt).
    pub damaged_snapshot: Option<String>,
}

/// A chain head as reported: `position` events are covered by `chain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeadReport {
    pub position: u64,
    /// Lowercase hex.
    pub chain: String,
    /// The number of the batch it is the head after.
    pub sequence: u64,
}

impl From<ChainHead> for HeadReport {
    fn from(head: ChainHead) -> Self {
        HeadReport {
            position: head.seal.head_position(),
            chain: hex::encode(head.seal.chain),
            sequence: head.sequence,
        }
    }
}

/// A torn write as reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TornReport {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

impl OpenReport {
    fn new(
        recovered: &recovery::Recovered,
        writer_live: bool,
        damaged_snapshot: Option<String>,
    ) -> Self {
        OpenReport {
            format: recovered.format.number(),
            log_id: recovered.log_id.map(hex::encode),
            events: recovered.index.len(),
            log_bytes: recovered.end,
            head: recovered.index.head().map(HeadReport::from),
            torn_write: recovered.torn.as_ref().map(|t| TornReport {
                offset: t.offset,
                bytes: t.bytes,
                reason: t.reason.clone(),
            }),
            in_flight_bytes: recovered.in_flight_bytes,
            writer_live,
            newest_head_slot: recovered.newest_slot.map(|slot| slot.sequence),
            damaged_head_slots: recovered.damaged_slots.clone(),
            damaged_snapshot,
        }
    }
}

/// Whether another process holds the directory's lock (probed with a shared lock, released at
/// once; a missing lock file means nobody ever opened the directory to write).
fn lock_is_held(dir: &Path) -> Result<bool, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let lock = match File::open(&path) {
        Ok(lock) => lock,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(&path, e)),
    };
    #[allow(clippy::incompatible_msrv)]
    let probed = lock.try_lock_shared();
    match probed {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(io_error(&path, e)),
    }
}

/// What [`EmbeddedStore::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub log_bytes: u64,
}

impl EmbeddedState {
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let (_, end) = self.index().covered();
        let file = File::open(&self.log_path).map_err(|e| io_error(&self.log_path, e))?;
        let header = recovery::read_file_header(&file, &self.log_path, end)?;
        let mut fresh = Index::new(header.format.data_start());
        // Everything up to `end` was durable when this started: any stop is damage.
        if let Some(stop) = recovery::scan(
            &file,
            &self.log_path,
            header.format,
            header.log_id.as_ref(),
            &mut fresh,
            end,
        )? {
            return Err(recovery::damage(
                &self.log_path,
                stop.at,
                Some(fresh.len()),
                Some(self.index().len() - fresh.len()),
                stop.reason,
            ));
        }
        let events = fresh.len();
        let mut from = 0;
        while from < events {
            let to = (from + VERIFY_CHUNK_EVENTS).min(events);
            let count = (to - from) as usize;
            // Pages, not one lookup per event: a page carries versions along each stream.
            let wanted = fresh.range(from, count);
            let live = self.index();
            let had = live.range(from, count);
            let at = |page: &[(u64, EventLoc)], i: usize, position: u64| {
                page.get(i)
                    .filter(|(p, _)| *p == position)
                    .map(|(_, loc)| *loc)
            };
            for (i, position) in (from..to).enumerate() {
                let want = at(&wanted, i, position);
                let have = at(&had, i, position);
                let same_stream = match (want, have) {
                    (Some(w), Some(h)) => fresh.stream_name(w.stream) == live.stream_name(h.stream),
                    _ => false,
                };
                if want != have || !same_stream {
                    return Err(StoreError::Corrupt {
                        file: self.log_path.display().to_string(),
                        offset: want.map_or(end, |w| w.offset),
                        reason: format!(
                            "in-memory index disagrees with the log at position {position}"
                        ),
                    });
                }
            }
            from = to;
        }
        Ok(VerifyReport {
            events,
            log_bytes: end,
        })
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        match self.index.read() {
            Ok(index) => index,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The chain value once the log held `events` events: the head's, or else the previous
    /// chain value recorded by the batch that starts right after event `events - 1` (one read).
    fn chain_after(&self, events: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let (head, next_offset) = {
            let index = self.index();
            if let Some(head) = index.head()
                && head.seal.head_position() == events
            {
                return Ok(Some(head.seal.chain));
            }
            let last = events.checked_sub(1).map(|p| index.range(p, 1));
            let next_offset = last
                .as_ref()
                .and_then(|locs| locs.first())
                .filter(|(p, _)| Some(*p + 1) == Some(events))
                .map(|(_, loc)| loc.offset + u64::from(loc.len));
            (index.covered().1, next_offset)
        };
        let Some(offset) = next_offset else {
            return Ok(None);
        };
        let header_len = self.format.batch_header_bytes();
        if offset + header_len as u64 > head {
            return Ok(None);
        }
        let mut bytes = vec![0u8; header_len];
        self.reader
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| io_error(&self.log_path, e))?;
        Ok(format::decode_batch_header(self.format, &bytes)
            .ok()
            .filter(|header| header.first_position == events)
            .and_then(|header| header.seal)
            .map(|seal| seal.prev_chain))
    }

    /// The checked stored leaf of the one record at `locs`.
    fn read_leaf(
        &self,
        locs: &[(u64, EventLoc)],
    ) -> Result<Option<allot_domain::integrity::Digest>, StoreError> {
        let Some(&(position, loc)) = locs.first() else {
            return Ok(None);
        };
        let stream = self.index().stream_name(loc.stream).clone();
        let mut bytes = vec![0u8; loc.len as usize];
        self.reader
            .read_exact_at(&mut bytes, loc.offset)
            .map_err(|e| io_error(&self.log_path, e))?;
        let corrupt = |reason: String| StoreError::Corrupt {
            file: self.log_path.display().to_string(),
            offset: loc.offset,
            reason,
        };
        let record = format::decode_event(self.format, &bytes)
            .map_err(|reason| corrupt(format!("event at position {position}: {reason}")))?;
        record
            .check_sum(position)
            .and_then(|()| record.check_leaf(position, loc.version, &stream))
            .map_err(corrupt)?;
        Ok(record.stored_leaf())
    }

    /// Reads the records at `locs`, coalescing nearby ones into one positional read.
    fn read_events(&self, locs: &[(u64, EventLoc)]) -> Result<Vec<RecordedEvent>, StoreError> {
        let page = self.read_page(locs)?;
        Ok(page.iter().map(|record| record.to_recorded()).collect())
    }

    /// Reads the events at `locs` into one page: each run of nearby events is one `pread`
    /// straight into the page's buffer, and the records point into it.
    fn read_page(&self, locs: &[(u64, EventLoc)]) -> Result<LogPage, StoreError> {
        let names: Vec<Arc<str>> = {
            let index = self.index();
            locs.iter()
                .map(|(_, loc)| index.stream_name(loc.stream).clone())
                .collect()
        };
        // Room for the runs read: from the first record to the last when they lie together (a
        // page of the log: frame headers between them), about their own size when scattered.
        let records: u64 = locs.iter().map(|(_, loc)| u64::from(loc.len)).sum();
        let span = match (locs.first(), locs.last()) {
            (Some((_, first)), Some((_, last))) => {
                (last.offset + u64::from(last.len)).saturating_sub(first.offset)
            }
            _ => 0,
        };
        let bytes = span.min(2 * records + READ_GAP_BYTES_MAX) as usize;
        let mut page = LogPage::with_capacity(locs.len(), bytes);
        let mut run_start = 0;
        while run_start < locs.len() {
            let first = locs[run_start].1.offset;
            let mut run_end = run_start + 1;
            let mut end = first + u64::from(locs[run_start].1.len);
            while run_end < locs.len() {
                let loc = locs[run_end].1;
                let next_end = loc.offset + u64::from(loc.len);
                if loc.offset < end
                    || loc.offset - end > READ_GAP_BYTES_MAX
                    || next_end - first > READ_RUN_BYTES_MAX
                {
                    break;
                }
                end = next_end;
                run_end += 1;
            }
            let base = page
                .read_into((end - first) as usize, |buf| {
                    self.reader.read_exact_at(buf, first)
                })
                .map_err(|e| io_error(&self.log_path, e))?;
            for (i, &(position, loc)) in locs.iter().enumerate().take(run_end).skip(run_start) {
                let at = base + (loc.offset - first) as usize;
                let record_end = at + loc.len as usize;
                let corrupt = |reason: String| StoreError::Corrupt {
                    file: self.log_path.display().to_string(),
                    offset: loc.offset,
                    reason,
                };
                let record = format::decode_event(self.format, &page.bytes()[at..record_end])
                    .map_err(|reason| corrupt(format!("event at position {position}: {reason}")))?;
                // The sum, not the leaf: a read is checked for damage; the leaf is the scans'.
                record.check_sum(position).map_err(corrupt)?;
                let (id, kind_len, payload_len) =
                    (record.id, record.kind.len(), record.payload.len());
                // A record ends with its kind, then its payload (checked by `decode_event`).
                let payload = record_end - payload_len..record_end;
                let kind = payload.start - kind_len..payload.start;
                page.push_in_place(PageRecord {
                    stream: names[i].clone(),
                    version: loc.version,
                    position,
                    id,
                    kind,
                    payload,
                });
            }
            run_start = run_end;
        }
        Ok(page)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and exit; joining makes the directory free
        // again when drop returns (at most one batch's fdatasync).
        self.requests.take();
        let handle = match self.writer.lock() {
            Ok(mut writer) => writer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(file = %self.shared.log_path.display(), "event log writer panicked");
        }
    }
}

/// The encoded size of an append's frame, once the append keeps every limit.
fn checked_frame_len(stream: &str, events: &[ProposedEvent]) -> Result<u64, StoreError> {
    validate_append(stream, events)?;
    let frame_len = format::frame_len(stream, events);
    if frame_len > FRAME_BYTES_MAX {
        return Err(StoreError::InvalidAppend(format!(
            "append of {frame_len} encoded bytes exceeds {FRAME_BYTES_MAX}"
        )));
    }
    Ok(frame_len)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    fn seals_group_commits(&self) -> bool {
        true
    }

    fn sealed_head(&self) -> Option<allot_domain::integrity::Seal> {
        self.chain_head().map(|head| head.seal)
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let frame_len = checked_frame_len(stream, &events)?;
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        // The first poll of this future reaches `send`; tokio's bounded channel completes sends
        // in the order they were first polled, even while the queue is full.
        requests
            .send(Request::Append(AppendRequest {
                stream: stream.to_owned(),
                expected,
                events,
                frame_len,
                reply: writer::AppendReply::One(reply),
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before this append was decided.
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    async fn append_wave(
        &self,
        appends: Vec<WaveAppend>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        let count = appends.len();
        let all_closed = || (0..count).map(|_| Err(StoreError::Closed)).collect();
        let Some(requests) = self.requests.as_ref() else {
            return all_closed();
        };
        let (reply, answers) = oneshot::channel();
        let wave = writer::WaveReply::new(count, reply);
        let mut parts = Vec::with_capacity(count);
        for (slot, append) in appends.into_iter().enumerate() {
            let part = writer::AppendReply::Part(wave.clone(), slot);
            // An append that breaks a limit is answered in its slot; the others go ahead.
            match checked_frame_len(&append.stream, &append.events) {
                Ok(frame_len) => parts.push(AppendRequest {
                    stream: append.stream,
                    expected: append.expected,
                    events: append.events,
                    frame_len,
                    reply: part,
                }),
                Err(error) => part.send(Err(error)),
            }
        }
        // The parts hold the wave now: it is answered when the last of them is. A refused send
        // drops them unanswered, and the wave answers `Closed`.
        drop(wave);
        if !parts.is_empty() {
            let _ = requests.send(Request::Wave(parts)).await;
        }
        answers.await.unwrap_or_else(|_| all_closed())
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let locs = self
            .shared
            .index()
            .stream_range(stream, from_version, max_count);
        self.read_locs(locs).await
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(from) = first_position_after(after) else {
            return Ok(Vec::new());
        };
        let locs = self.shared.index().range(from, max_count);
        self.read_locs(locs).await
    }

    async fn read_all_page(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<LogPage, StoreError> {
        let Some(from) = first_position_after(after) else {
            return Ok(LogPage::default());
        };
        let locs = self.shared.index().range(from, max_count);
        if locs.is_empty() {
            return Ok(LogPage::default());
        }
        let shared = self.shared.clone();
        on_blocking_pool("read", move || shared.read_page(&locs)).await
    }

    async fn chain_at(&self, events: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let shared = self.shared.clone();
        on_blocking_pool("read", move || shared.chain_after(events)).await
    }

    async fn verify_log(&self) -> Result<Option<u64>, StoreError> {
        self.verify().await.map(|report| Some(report.events))
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        // Past the last possible position: a subscription that never yields.
        let next = after.map_or(0, |after| after.saturating_add(1));
        let state = SubscriptionState {
            shared: self.shared.clone(),
            head: self.head.clone(),
            next,
            buffer: VecDeque::new(),
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }
}

/// A subscription reads by position up to the durable head, then waits for the head to move.
/// Catch-up and live are the same loop, so the switch has no gap and no duplicate.
struct SubscriptionState {
    shared: Arc<EmbeddedState>,
    head: watch::Receiver<u64>,
    /// Position of the next event to hand out.
    next: u64,
    /// At most [`SUBSCRIPTION_PAGE_EVENTS`] events read ahead.
    buffer: VecDeque<RecordedEvent>,
    finished: bool,
}

async fn next_event(
    mut state: SubscriptionState,
) -> Option<(Result<RecordedEvent, StoreError>, SubscriptionState)> {
    loop {
        if let Some(event) = state.buffer.pop_front() {
            return Some((Ok(event), state));
        }
        if state.finished {
            return None;
        }
        let head = *state.head.borrow_and_update();
        if state.next < head {
            let count = (head - state.next).min(SUBSCRIPTION_PAGE_EVENTS as u64) as usize;
            let locs = state.shared.index().range(state.next, count);
            let shared = state.shared.clone();
            let read = tokio::task::spawn_blocking(move || shared.read_events(&locs)).await;
            match read {
                Ok(Ok(events)) => {
                    state.next += events.len() as u64;
                    state.buffer.extend(events);
                }
                Ok(Err(e)) => {
                    state.finished = true;
                    return Some((Err(e), state));
                }
                Err(e) => {
                    state.finished = true;
                    let error = StoreError::Unavailable {
                        reason: format!("read task failed: {e}"),
                        maybe_written: false,
                    };
                    return Some((Err(error), state));
                }
            }
            continue;
        }
        if state.head.changed().await.is_err() {
            // The writer is gone: everything durable has been handed out.
            if *state.head.borrow() <= state.next {
                state.finished = true;
                return Some((Err(StoreError::Closed), state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        /// The write fails before any byte lands.
        WriteNothing,
        /// Half the batch lands, then the write fails.
        WriteHalf,
        /// The write lands, the fdatasync fails.
        Sync,
    }

    /// The log file, failing on its `writes_ok + 1`-th batch.
    struct FaultyLog {
        file: File,
        writes_ok: usize,
        fault: Fault,
    }

    impl LogDevice for FaultyLog {
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            // Head slots are written with every batch; the faults are the batches'.
            if offset < FILE_HEADER_BYTES {
                return FileExt::write_all_at(&self.file, buf, offset);
            }
            if self.writes_ok > 0 {
                self.writes_ok -= 1;
                return FileExt::write_all_at(&self.file, buf, offset);
            }
            match self.fault {
                Fault::WriteNothing => Err(std::io::Error::other("injected write failure")),
                Fault::WriteHalf => {
                    FileExt::write_all_at(&self.file, &buf[..buf.len() / 2], offset)?;
                    Err(std::io::Error::other("injected short write"))
                }
                Fault::Sync => FileExt::write_all_at(&self.file, buf, offset),
            }
        }

        fn sync_data(&mut self) -> std::io::Result<()> {
            if self.writes_ok == 0 && self.fault == Fault::Sync {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
            self.file.sync_data()
        }
    }

    fn event(payload: &str) -> ProposedEvent {
        ProposedEvent {
            id: [3; 16],
            kind: "T".to_owned(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    async fn failing_write_closes_the_store(fault: Fault) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let store = tokio::task::spawn_blocking(move || {
            EmbeddedStore::open_blocking(&path, move |file| {
                Box::new(FaultyLog {
                    file,
                    // Sync fails on the same batch as the write would.
                    writes_ok: if fault == Fault::Sync { 4 } else { 3 },
                    fault,
                })
            })
        })
        .await
        .unwrap()
        .unwrap();
        for v in 0..3u64 {
            let expected = match v {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v - 1),
            };
            store
                .append("s", expected, vec![event("ok")])
                .await
                .unwrap();
        }
        let failed = store
            .append("s", ExpectedVersion::Exact(2), vec![event("a"), event("b")])
            .await;
        assert!(
            matches!(
                failed,
                Err(StoreError::Unavailable {
                    maybe_written: true,
                    ..
                })
            ),
            "{fault:?}: {failed:?}"
        );
        let later = store
            .append("t", ExpectedVersion::Any, vec![event("x")])
            .await;
        assert!(matches!(later, Err(StoreError::Closed)), "{later:?}");

        // Reads and subscriptions see the durable events only, then learn the store closed.
        assert_eq!(store.read_all(None, 100).await.unwrap().len(), 3);
        let mut subscription = store.subscribe_all(None).await.unwrap();
        for _ in 0..3 {
            subscription.next().await.unwrap().unwrap();
        }
        assert!(matches!(
            subscription.next().await,
            Some(Err(StoreError::Closed))
        ));
        assert!(subscription.next().await.is_none());
        drop(store);

        // The failed append is whole or absent after reopening, and the log takes appends again.
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let events = store.read_all(None, 100).await.unwrap();
        let expected_len = if fault == Fault::Sync { 5 } else { 3 };
        assert_eq!(events.len(), expected_len, "{fault:?}");
        store
            .append(
                "s",
                ExpectedVersion::Exact(expected_len as u64 - 1),
                vec![event("again")],
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_write_closes_the_store_and_writes_nothing() {
        failing_write_closes_the_store(Fault::WriteNothing).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_write_closes_the_store_and_is_cut_on_reopen() {
        failing_write_closes_the_store(Fault::WriteHalf).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_sync_closes_the_store_and_the_append_may_survive_whole() {
        failing_write_closes_the_store(Fault::Sync).await;
    }

    /// Each device call in order: a write (offset, bytes) or a sync (`None` bytes).
    type DeviceCalls = Arc<Mutex<Vec<(u64, Option<Vec<u8>>)>>>;

    /// Passes everything to the file and records each write and sync.
    struct RecordingLog {
        file: File,
        record: DeviceCalls,
        fail_sync: bool,
    }

    impl LogDevice for RecordingLog {
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.record
                .lock()
                .unwrap()
                .push((offset, Some(buf.to_vec())));
            FileExt::write_all_at(&self.file, buf, offset)
        }

        fn sync_data(&mut self) -> std::io::Result<()> {
            self.record.lock().unwrap().push((0, None));
            if self.fail_sync {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
            self.file.sync_data()
        }
    }

    fn open_recording(
        dir: &Path,
        fail_sync: bool,
    ) -> (Result<EmbeddedStore, StoreError>, DeviceCalls) {
        let record = Arc::new(Mutex::new(Vec::new()));
        let seen = record.clone();
        let opened = EmbeddedStore::open_blocking(dir, move |file| {
            Box::new(RecordingLog {
                file,
                record,
                fail_sync,
            })
        });
        (opened, seen)
    }

    /// A batch whose fdatasync failed can read back valid from the page cache in the same boot;
    /// so on open the last batch is written again, as read, and synced before the store serves
    /// anything, and an open whose sync fails does not serve at all. An empty log writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_rewrites_and_syncs_the_last_batch_before_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (store, record) = tokio::task::spawn_blocking(move || open_recording(&path, false))
            .await
            .unwrap();
        let store = store.unwrap();
        assert!(
            record.lock().unwrap().is_empty(),
            "an empty log rewrites nothing"
        );
        store
            .append("s", ExpectedVersion::NoStream, vec![event("first")])
            .await
            .unwrap();
        store
            .append("s", ExpectedVersion::Exact(0), vec![event("second")])
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);

        let log = std::fs::read(dir.path().join(LOG_FILE_NAME)).unwrap();
        let path = dir.path().to_path_buf();
        let (store, record) = tokio::task::spawn_blocking(move || open_recording(&path, false))
            .await
            .unwrap();
        let store = store.unwrap();
        {
            let record = record.lock().unwrap();
            assert_eq!(record.len(), 2, "one write, then one sync: {record:?}");
            let (offset, Some(bytes)) = &record[0] else {
                panic!("the first call is a write");
            };
            assert!(record[1].1.is_none(), "the write is synced");
            // The last batch exactly: a batch header, up to the end of the log, as it reads.
            assert_eq!(*offset as usize + bytes.len(), log.len());
            assert_eq!(&bytes[..4], format::BATCH_MAGIC_V2.as_slice());
            assert_eq!(bytes.as_slice(), &log[*offset as usize..]);
            let text = String::from_utf8_lossy(bytes);
            assert!(text.contains("second") && !text.contains("first"));
        }
        assert_eq!(store.read_all(None, 10).await.unwrap().len(), 2);
        drop(store);

        let path = dir.path().to_path_buf();
        let (failed, _) = tokio::task::spawn_blocking(move || open_recording(&path, true))
            .await
            .unwrap();
        assert!(
            matches!(failed, Err(StoreError::Io { .. })),
            "{:?}",
            failed.err()
        );
        assert_eq!(std::fs::read(dir.path().join(LOG_FILE_NAME)).unwrap(), log);
    }

    /// A wave with more appends than a batch takes is split: one batch up to the limit, the
    /// rest in the next; every append lands and is answered in its slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wave_past_a_batchs_limit_is_split_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let count = BATCH_APPENDS_MAX + 10;
        let appends = (0..count)
            .map(|i| WaveAppend {
                stream: format!("s{i}"),
                expected: ExpectedVersion::NoStream,
                events: vec![event(&format!("e{i}"))],
            })
            .collect();
        let answers = store.append_wave(appends).await;
        assert_eq!(answers.len(), count);
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.as_ref().unwrap().last_position, i as u64);
        }
        let counters = store.counters();
        assert_eq!(
            counters.batches.load(std::sync::atomic::Ordering::SeqCst),
            2
        );
        assert_eq!(store.next_position(), count as u64);
    }

    #[tokio::test]
    async fn a_format_one_log_is_read_as_is_and_migrated_by_a_serving_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = format::v1::file_header().to_vec();
        for (i, payload) in ["a", "b", "c"].iter().enumerate() {
            let mut body = Vec::new();
            format::v1::encode_frame(&mut body, i as u64, i as u64, "s", &[event(payload)]);
            let header = format::v1::encode_batch_header(&format::BatchHeader {
                body_len: body.len() as u32,
                first_position: i as u64,
                frame_count: 1,
                event_count: 1,
                seal: None,
            });
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&body);
        }
        let log = dir.path().join(LOG_FILE_NAME);
        std::fs::write(&log, &bytes).unwrap();
        let payloads =
            |events: Vec<RecordedEvent>| events.into_iter().map(|e| e.payload).collect::<Vec<_>>();
        let wanted = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];

        let read_only = EmbeddedStore::open_read_only(dir.path()).await.unwrap();
        assert_eq!(read_only.opened().format, 1);
        assert_eq!(
            payloads(read_only.read_all(None, 10).await.unwrap()),
            wanted
        );
        drop(read_only);
        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(dir.path()), vec![LOG_FILE_NAME.to_owned()]);
        assert_eq!(
            std::fs::read(&log).unwrap(),
            bytes,
            "a read-only open wrote"
        );

        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        assert_eq!(payloads(store.read_all(None, 10).await.unwrap()), wanted);
        let head = store.chain_head().unwrap();
        assert_eq!((head.sequence, head.seal.head_position()), (2, 3));
        store
            .append("s", ExpectedVersion::Exact(2), vec![event("d")])
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        assert_eq!(
            std::fs::read(dir.path().join(LOG_V1_FILE_NAME)).unwrap(),
            bytes
        );
        let reopened = EmbeddedStore::open_read_only(dir.path()).await.unwrap();
        assert_eq!(reopened.opened().format, 2);
        assert_eq!(reopened.opened().events, 4);
        assert_eq!(reopened.opened().head.as_ref().map(|h| h.sequence), Some(3));
    }
}

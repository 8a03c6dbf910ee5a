//! The single writer thread: group commit.
//!
//! It blocks for one request, drains whatever else is queued (up to [`BATCH_APPENDS_MAX`] appends
//! and [`super::format::BATCH_BODY_BYTES_MAX`] bytes), checks each append's expected version in
//! queue order against the stream heads (durable heads plus this batch's accepted appends),
//! encodes the accepted ones into one buffer, writes it with one `pwrite` and one `fdatasync`,
//! then publishes the events to the index and the head watch and answers every caller. Each batch
//! is sealed (the Merkle root of its events' leaves, chained to the previous batch) and its head
//! slot is rewritten before the same fdatasync, so the slot is durable exactly when the batch is. A rejected
//! append writes nothing and does not affect the others. Answers wait for the sync, rejections
//! included, so no caller learns of a version that might not survive a crash.
//!
//! Index snapshots (`snapshot.rs`) are written by a helper thread the writer starts when the log
//! has grown by [`SNAPSHOT_TAIL_BYTES_MIN`] and by a quarter since the last one, or when asked
//! ([`Request::Snapshot`]); the helper copies the index a chunk at a time under the read lock, so
//! appends go on meanwhile. On a clean stop the writer waits for the helper, then writes a last
//! snapshot itself if [`SNAPSHOT_CLOSE_TAIL_BYTES_MIN`] or more were appended since the last one,
//! and only then releases the directory.
//!
//! After a failed write or sync the writer stops for good: what reached the disk is unknown (and
//! a failed fdatasync may have dropped dirty pages), so the store closes and the next open
//! decides from the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use allot_domain::integrity::{self, Digest, MerkleTree, Seal};

use super::BATCH_HEADER_BYTES;
use super::format::{self, BATCH_BODY_BYTES_MAX, BatchHeader, BatchSeal, EncodedEvent, HeadSlot};
use super::index::{ChainHead, Index};
use super::snapshot::{self, SnapshotInfo};
use crate::store::{
    ActualVersion, AppendOutcome, ExpectedVersion, ProposedEvent, SealedBatch, StoreError,
};

/// Most appends one batch (one write, one fdatasync) carries.
pub const BATCH_APPENDS_MAX: usize = 4096;
/// Times the writer yields its CPU, waiting for more appends, before it syncs a batch less than
/// half the size of the previous one (callers it just answered are on their way back). No
/// timer: a lone appender (previous batch of one) never waits.
const LINGER_YIELDS_MAX: u32 = 4;
/// Log growth since the last index snapshot after which the writer starts a new one in the
/// background (also at least a quarter of the log, so snapshot writes stay a bounded fraction
/// of log writes however large the log grows). Bounds the tail a restart after a crash reads.
pub const SNAPSHOT_TAIL_BYTES_MIN: u64 = 256 * 1024 * 1024;
/// The periodic snapshot also waits for the log to grow by `1 / SNAPSHOT_TAIL_FRACTION`.
const SNAPSHOT_TAIL_FRACTION: u64 = 4;
/// A clean stop writes a snapshot only if at least this much was appended since the last one:
/// a smaller tail is scanned at the next open in a few milliseconds.
pub const SNAPSHOT_CLOSE_TAIL_BYTES_MIN: u64 = 1024 * 1024;

type SnapshotReply = oneshot::Sender<Result<Option<SnapshotInfo>, StoreError>>;

pub(crate) struct AppendRequest {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<ProposedEvent>,
    pub frame_len: u64,
    pub reply: AppendReply,
}

/// The answers of a wave ([`Request::Wave`]): each append's result lands in its slot, and the
/// wave is answered once, when the last part lets go of it (so after its last append is
/// answered). A part dropped unanswered (the writer stopped) reads `Closed`.
pub(crate) struct WaveReply {
    slots: Mutex<Vec<Option<Result<AppendOutcome, StoreError>>>>,
    reply: Option<oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>>,
}

impl WaveReply {
    pub fn new(
        len: usize,
        reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>,
    ) -> Arc<WaveReply> {
        Arc::new(WaveReply {
            slots: Mutex::new((0..len).map(|_| None).collect()),
            reply: Some(reply),
        })
    }
}

impl Drop for WaveReply {
    fn drop(&mut self) {
        let slots = std::mem::take(
            self.slots
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(
                slots
                    .into_iter()
                    .map(|slot| slot.unwrap_or(Err(StoreError::Closed)))
                    .collect(),
            );
        }
    }
}

/// Where an append's answer goes: its own caller, or its slot in a wave.
pub(crate) enum AppendReply {
    One(oneshot::Sender<Result<AppendOutcome, StoreError>>),
    /// The wave is answered when the last part lets go of it.
    Part(Arc<WaveReply>, usize),
}

impl AppendReply {
    pub fn send(self, result: Result<AppendOutcome, StoreError>) {
        match self {
            AppendReply::One(reply) => {
                let _ = reply.send(result);
            }
            AppendReply::Part(wave, slot) => {
                if let Some(place) = wave
                    .slots
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get_mut(slot)
                {
                    *place = Some(result);
                }
            }
        }
    }
}

pub(crate) enum Request {
    Append(AppendRequest),
    /// Appends to distinct streams handed over together (each decided on its own) and answered
    /// together, so a caller with many streams pays one queue operation and one wake.
    Wave(Vec<AppendRequest>),
    /// Finish what is queued before this, then stop and release the data directory.
    Close(oneshot::Sender<()>),
    /// Write an index snapshot (in the background) and answer when it is durable.
    Snapshot(SnapshotReply),
}

/// Where the writer's bytes go: the log file, or a test double that fails on cue.
pub(crate) trait LogDevice: Send + 'static {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    fn sync_data(&mut self) -> std::io::Result<()>;
}

impl LogDevice for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

pub(crate) struct Writer {
    pub log: Box<dyn LogDevice>,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    /// Locked; closing it when the writer ends releases the directory.
    #[allow(dead_code)]
    pub lock: File,
    pub end: u64,
    /// Chain value before the log's first batch.
    pub genesis: Digest,
    pub index: Arc<RwLock<Index>>,
    pub head: watch::Sender<u64>,
    pub requests: RequestQueue,
    pub counters: Arc<WriterCounters>,
    /// Log bytes covered by the newest index snapshot (loaded or written).
    pub snapshot_end: u64,
    /// The background snapshot, if one is being written.
    pub snapshotting: Option<BackgroundSnapshot>,
}

/// A snapshot being written on its helper thread.
pub(crate) struct BackgroundSnapshot {
    /// Returns what the snapshot covered, on success.
    handle: JoinHandle<Option<u64>>,
    /// Set to have it finish without its pauses (the writer waits for it).
    hurry: Arc<AtomicBool>,
}

/// The writer's request queue. Dropped when the writer stops for any reason (close, a failed
/// write or sync, the store dropped, a panic), it closes the queue and answers what is still in
/// flight with [`StoreError::Closed`]: tokio lets a sender that took a permit before the
/// receiver dropped push its message afterwards, where nobody would answer it and its caller
/// would wait forever (seen as a hang of the power-loss test under load). After `close`,
/// receiving ends only once every permit has come back, so such a message is received here.
pub(crate) struct RequestQueue(pub mpsc::Receiver<Request>);

impl std::ops::Deref for RequestQueue {
    type Target = mpsc::Receiver<Request>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for RequestQueue {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for RequestQueue {
    fn drop(&mut self) {
        self.0.close();
        while let Some(request) = self.0.blocking_recv() {
            match request {
                Request::Append(append) => {
                    append.reply.send(Err(StoreError::Closed));
                }
                Request::Wave(appends) => {
                    for append in appends {
                        append.reply.send(Err(StoreError::Closed));
                    }
                }
                Request::Close(reply) => {
                    let _ = reply.send(());
                }
                Request::Snapshot(reply) => {
                    let _ = reply.send(Err(StoreError::Closed));
                }
            }
        }
    }
}

/// Running totals of the writer, for metrics and the benchmark.
#[derive(Debug, Default)]
pub struct WriterCounters {
    /// Batches written and synced (one fdatasync each).
    pub batches: AtomicU64,
    /// Appends acknowledged as durable.
    pub appends: AtomicU64,
    /// Index snapshots written.
    pub snapshots: AtomicU64,
}

/// One append of the current batch, accepted or already answered with its rejection.
struct Pending {
    reply: AppendReply,
    stream: String,
    result: Result<Accepted, StoreError>,
}

struct Accepted {
    first_version: u64,
    /// Index into the batch's encoded events.
    events: std::ops::Range<usize>,
    outcome: AppendOutcome,
}

impl Writer {
    pub fn run(mut self) {
        let (clean, close) = self.serve();
        self.finish(clean);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// Serves requests until closed, dropped or broken. Returns whether the log is healthy, and
    /// the close request to answer once the writer has finished.
    fn serve(&mut self) -> (bool, Option<oneshot::Sender<()>>) {
        let mut buf: Vec<u8> = Vec::new();
        let mut encoded: Vec<EncodedEvent> = Vec::new();
        let mut batch: Vec<AppendRequest> = Vec::new();
        let mut previous_batch = 0usize;
        while let Some(first) = self.requests.blocking_recv() {
            let mut bytes = 0u64;
            let mut yields = 0;
            let Ok(mut close) = self.take(first, &mut batch, &mut bytes, &mut buf, &mut encoded)
            else {
                return (false, None);
            };
            while close.is_none() && batch.len() < BATCH_APPENDS_MAX {
                // Peek by receiving; an append that would overflow the batch opens the next one.
                match self.requests.try_recv() {
                    Ok(request) => {
                        match self.take(request, &mut batch, &mut bytes, &mut buf, &mut encoded) {
                            Ok(closing) => close = closing,
                            Err(()) => return (false, None),
                        }
                    }
                    // Callers answered by the last batch are still coming back: a few yields
                    // spent waiting for them can save a whole fdatasync.
                    Err(mpsc::error::TryRecvError::Empty)
                        if batch.len() < previous_batch / 2 && yields < LINGER_YIELDS_MAX =>
                    {
                        yields += 1;
                        std::thread::yield_now();
                    }
                    Err(_) => break,
                }
            }
            previous_batch = batch.len();
            let healthy = self.commit(&mut batch, &mut buf, &mut encoded);
            if let Some(reply) = close {
                tracing::debug!(file = %self.log_path.display(), "event log writer closing");
                return (healthy, Some(reply));
            }
            if !healthy {
                return (false, None);
            }
            if self.snapshot_due() {
                self.start_snapshot(None);
            }
        }
        tracing::debug!(file = %self.log_path.display(), "event log writer stopped: store dropped");
        (true, None)
    }

    /// Takes one request: appends join the batch, a snapshot request is started once the batch
    /// before it is in the index, a close request is returned (the batch is committed, then the
    /// writer stops). `Err` once the log is broken.
    fn take(
        &mut self,
        request: Request,
        batch: &mut Vec<AppendRequest>,
        bytes: &mut u64,
        buf: &mut Vec<u8>,
        encoded: &mut Vec<EncodedEvent>,
    ) -> Result<Option<oneshot::Sender<()>>, ()> {
        let healthy = match request {
            Request::Append(req) => self.admit(req, batch, bytes, buf, encoded),
            Request::Wave(reqs) => reqs
                .into_iter()
                .all(|req| self.admit(req, batch, bytes, buf, encoded)),
            Request::Close(reply) => return Ok(Some(reply)),
            Request::Snapshot(reply) => {
                let healthy = self.commit(batch, buf, encoded);
                if healthy {
                    *bytes = 0;
                    self.start_snapshot(Some(reply));
                }
                healthy
            }
        };
        if healthy { Ok(None) } else { Err(()) }
    }

    /// Adds an append to the batch; one that would take the batch past its limits (appends or
    /// bytes) first commits the batch and opens the next. Returns whether the log is healthy.
    fn admit(
        &mut self,
        req: AppendRequest,
        batch: &mut Vec<AppendRequest>,
        bytes: &mut u64,
        buf: &mut Vec<u8>,
        encoded: &mut Vec<EncodedEvent>,
    ) -> bool {
        if batch.len() >= BATCH_APPENDS_MAX || *bytes + req.frame_len > BATCH_BODY_BYTES_MAX {
            if !self.commit(batch, buf, encoded) {
                return false;
            }
            *bytes = 0;
        }
        *bytes += req.frame_len;
        batch.push(req);
        true
    }

    /// Whether the log has grown enough since the last snapshot for a periodic one.
    fn snapshot_due(&mut self) -> bool {
        self.reap_snapshot(false);
        let tail = self.end.saturating_sub(self.snapshot_end);
        self.snapshotting.is_none()
            && tail >= SNAPSHOT_TAIL_BYTES_MIN.max(self.snapshot_end / SNAPSHOT_TAIL_FRACTION)
    }

    /// Collects the background snapshot if it finished (or, with `wait`, once it finishes).
    fn reap_snapshot(&mut self, wait: bool) {
        let finished = self
            .snapshotting
            .as_ref()
            .is_some_and(|s| s.handle.is_finished());
        if !(wait || finished) {
            return;
        }
        if let Some(snapshot) = self.snapshotting.take() {
            // Waiting for it: the disk is the snapshot's to finish with.
            snapshot.hurry.store(true, Ordering::Relaxed);
            match snapshot.handle.join() {
                Ok(Some(end)) => self.snapshot_end = self.snapshot_end.max(end),
                Ok(None) => {}
                Err(_) => tracing::error!(
                    file = %self.log_path.display(),
                    "index snapshot thread panicked"
                ),
            }
        }
    }

    /// Starts a snapshot of the index as it is now on a helper thread (after the previous one).
    fn start_snapshot(&mut self, reply: Option<SnapshotReply>) {
        self.reap_snapshot(true);
        let dir = self.dir.clone();
        let log_path = self.log_path.clone();
        let index = self.index.clone();
        let counters = self.counters.clone();
        let hurry = Arc::new(AtomicBool::new(false));
        let pace = snapshot::Pace::Background {
            hurry: hurry.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("allot-index-snapshot".to_owned())
            .spawn(move || {
                let written = snapshot::write(&dir, &log_path, &index, pace);
                let end = match &written {
                    Ok(Some(info)) => {
                        counters.snapshots.fetch_add(1, Ordering::Relaxed);
                        Some(info.log_bytes)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(file = %log_path.display(), error = %e, "index snapshot failed");
                        None
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(written);
                }
                end
            });
        match spawned {
            Ok(handle) => self.snapshotting = Some(BackgroundSnapshot { handle, hurry }),
            Err(e) => tracing::warn!(
                file = %self.log_path.display(),
                error = %e,
                "cannot start the index snapshot thread"
            ),
        }
    }

    /// Before the directory is released: wait for a background snapshot, and on a clean stop
    /// write a last one if enough was appended since.
    fn finish(&mut self, clean: bool) {
        self.reap_snapshot(true);
        // After a failed write or fdatasync the page cache may hold bytes the disk lost: no
        // snapshot may be taken over them.
        if !clean || self.end.saturating_sub(self.snapshot_end) < SNAPSHOT_CLOSE_TAIL_BYTES_MIN {
            return;
        }
        match snapshot::write(
            &self.dir,
            &self.log_path,
            &self.index,
            snapshot::Pace::AtOnce,
        ) {
            Ok(Some(info)) => {
                self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                self.snapshot_end = info.log_bytes;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = %self.log_path.display(), error = %e, "index snapshot failed")
            }
        }
    }

    /// Decides, writes and syncs one batch, then answers its callers. Returns false when the log
    /// can no longer be written.
    fn commit(
        &mut self,
        batch: &mut Vec<AppendRequest>,
        buf: &mut Vec<u8>,
        encoded: &mut Vec<EncodedEvent>,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        buf.clear();
        buf.resize(BATCH_HEADER_BYTES, 0);
        encoded.clear();
        let mut pending = Vec::with_capacity(batch.len());
        let first_position;
        let mut next_position;
        let mut frame_count = 0u32;
        let mut leaves: Vec<Digest> = Vec::new();
        let previous;
        {
            let index = match self.index.read() {
                Ok(index) => index,
                Err(poisoned) => poisoned.into_inner(),
            };
            previous = index.head();
            first_position = index.len();
            next_position = first_position;
            let mut batch_heads: HashMap<&str, u64, foldhash::fast::RandomState> =
                HashMap::with_capacity_and_hasher(batch.len(), Default::default());
            for req in batch.iter() {
                let head = match batch_heads.get(req.stream.as_str()) {
                    Some(head) => *head,
                    None => index.stream_len(&req.stream).unwrap_or(0),
                };
                let actual = match head {
                    0 => ActualVersion::NoStream,
                    n => ActualVersion::Exact(n - 1),
                };
                let matches = match req.expected {
                    ExpectedVersion::Any => true,
                    ExpectedVersion::NoStream => actual == ActualVersion::NoStream,
                    ExpectedVersion::Exact(v) => actual == ActualVersion::Exact(v),
                };
                if !matches {
                    pending.push(Err(StoreError::WrongExpectedVersion {
                        stream: req.stream.clone(),
                        expected: req.expected,
                        actual,
                    }));
                    continue;
                }
                let start = encoded.len();
                format::encode_frame(
                    buf,
                    next_position,
                    head,
                    &req.stream,
                    &req.events,
                    encoded,
                    &mut leaves,
                );
                let count = req.events.len() as u64;
                pending.push(Ok(Accepted {
                    first_version: head,
                    events: start..encoded.len(),
                    outcome: AppendOutcome {
                        last_version: head + count - 1,
                        last_position: next_position + count - 1,
                        sealed: None,
                    },
                }));
                batch_heads.insert(req.stream.as_str(), head + count);
                next_position += count;
                frame_count += 1;
            }
        }
        let mut pending: Vec<Pending> = batch
            .drain(..)
            .zip(pending)
            .map(|(req, result)| Pending {
                reply: req.reply,
                stream: req.stream,
                result,
            })
            .collect();

        let mut healthy = true;
        if let Some(tree) = MerkleTree::new(leaves) {
            let event_count = (next_position - first_position) as u32;
            let (sequence, prev_chain) = match previous {
                Some(head) => (head.sequence + 1, head.seal.chain),
                None => (0, self.genesis),
            };
            let root = tree.root();
            let seal = Seal {
                first_position,
                event_count,
                root,
                prev_chain,
                chain: integrity::chain(&prev_chain, first_position, event_count, &root),
            };
            let header = format::encode_batch_header(
                &BatchHeader {
                    body_len: (buf.len() - BATCH_HEADER_BYTES) as u32,
                    first_position,
                    frame_count,
                    event_count,
                    seal: None,
                },
                &BatchSeal {
                    sequence,
                    root,
                    prev_chain,
                    chain: seal.chain,
                },
            );
            buf[..BATCH_HEADER_BYTES].copy_from_slice(&header);
            let slot = HeadSlot {
                sequence,
                batch_offset: self.end,
                batch_end: self.end + buf.len() as u64,
                first_position,
                event_count,
                chain: seal.chain,
            };
            // The batch and its head slot, then one fdatasync for both.
            let written = self
                .log
                .write_all_at(buf, self.end)
                .and_then(|()| {
                    self.log
                        .write_all_at(&format::encode_slot(&slot), slot.file_offset())
                })
                .and_then(|()| self.log.sync_data());
            match written {
                Ok(()) => {
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .appends
                        .fetch_add(u64::from(frame_count), Ordering::Relaxed);
                    let sealed = Arc::new(SealedBatch {
                        seal,
                        tree,
                        signature: Default::default(),
                    });
                    for accepted in pending.iter_mut().filter_map(|p| p.result.as_mut().ok()) {
                        accepted.outcome.sealed = Some(sealed.clone());
                    }
                    let head = ChainHead { sequence, seal };
                    self.publish(&pending, encoded, next_position, buf.len() as u64, head);
                    self.end += buf.len() as u64;
                }
                Err(source) => {
                    tracing::error!(
                        file = %self.log_path.display(),
                        offset = self.end,
                        error = %source,
                        "event log write failed; closing the store"
                    );
                    healthy = false;
                    for p in &mut pending {
                        if p.result.is_ok() {
                            p.result = Err(StoreError::Unavailable {
                                reason: format!(
                                    "write to {} failed: {source}",
                                    self.log_path.display()
                                ),
                                maybe_written: true,
                            });
                        }
                    }
                }
            }
        }
        for p in pending {
            p.reply.send(p.result.map(|a| a.outcome));
        }
        healthy
    }

    /// Makes a synced batch visible: index first, then the head watch, so a reader woken by the
    /// watch always finds the events.
    fn publish(
        &self,
        pending: &[Pending],
        encoded: &[EncodedEvent],
        next_position: u64,
        batch_len: u64,
        head: ChainHead,
    ) {
        {
            let mut index = match self.index.write() {
                Ok(index) => index,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (stream, accepted) in pending
                .iter()
                .filter_map(|p| Some((&p.stream, p.result.as_ref().ok()?)))
            {
                for (i, event) in encoded[accepted.events.clone()].iter().enumerate() {
                    debug_assert_eq!(
                        index.stream_len(stream).unwrap_or(0),
                        accepted.first_version + i as u64
                    );
                    index.push(stream, self.end + event.offset as u64, event.len);
                }
            }
            index.set_covered(self.end, self.end + batch_len, Some(head));
        }
        self.head.send_replace(next_position);
    }
}

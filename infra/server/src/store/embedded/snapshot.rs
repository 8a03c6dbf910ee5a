//! The index snapshot, `index.snapshot` beside `events.log`: the in-memory index up to a batch
//! boundary of the log, so `open` reads and verifies only the log's tail after it.
//!
//! ```text
//! snapshot := header names bases entries trailer
//!
//! header (64 bytes)
//!    0   8  magic              b"ALLOTIDX"
//!    8   4  format_version     u32, = 1
//!   12   4  block_events       u32, = OFFSET_BLOCK_EVENTS of the index that wrote it
//!   16   8  log_end            u64, the snapshot covers events.log[0..log_end), a batch end
//!   24   8  last_batch_offset  u64, offset of the batch that ends at log_end
//!   32   8  event_count        u64, events in the covered log (positions 0..event_count)
//!   40   4  stream_count       u32
//!   44   4  reserved           u32, = 0
//!   48  16  log_digest         blake3(file header ‖ first batch ‖ last batch), first 16 bytes
//!
//! names   := { name_len u16, name UTF-8 }{stream_count}       stream id = index in this list
//! bases   := u64{ceil(event_count / block_events)}           offset of each block's first event
//! entries := { delta u32, len u32, stream u32 }{event_count} by position
//! trailer := blake3(everything before), first 16 bytes
//! ```
//!
//! A snapshot is derived data: one whose own checksum fails is ignored (and removed by a serving
//! open) and `open` scans the whole log. An intact snapshot is also durable evidence of the log:
//! the log must still hold, at the recorded offsets, the very batches the digest was taken over
//! (the file header's identity part, the first and the last covered batch, whose headers must
//! also agree on the position count). A log shorter than an intact snapshot, or different from
//! it, has lost acknowledged data or was replaced: the open is refused
//! ([`SnapshotError::Mismatch`]). It is written to a temporary file, fsynced, renamed over the
//! old one and the directory fsynced, so a crash leaves the old snapshot or the new one, each a
//! true description of a durable prefix of the log.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::chunked::ChunkedVec;
use super::format::{self, BATCH_BODY_BYTES_MAX, LogFormat, le_u32, le_u64};
use super::index::{ChainHead, Entry, Index, OFFSET_BLOCK_EVENTS};
use crate::store::StoreError;

/// Name of the index snapshot inside the data directory.
pub const SNAPSHOT_FILE_NAME: &str = "index.snapshot";
/// The snapshot being written; renamed to [`SNAPSHOT_FILE_NAME`] once complete and synced.
pub const SNAPSHOT_TEMP_FILE_NAME: &str = "index.snapshot.tmp";

const SNAPSHOT_MAGIC: &[u8; 8] = b"ALLOTIDX";
/// The part of a log's file header the digest covers: magic, version and (format 2) log id and
/// header sum; never the head slots, which every batch rewrites.
const FILE_HEADER_IDENTITY_BYTES: usize = 40;
const SNAPSHOT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const SUM_BYTES: usize = 16;
const ENTRY_BYTES: usize = 12;
/// Entries encoded or decoded per step; also how many the writer copies per hold of the index
/// read lock, so a snapshot delays the writer's publish by at most one chunk's copy.
const CHUNK_EVENTS: usize = 64 * 1024;
/// I/O buffer of the snapshot file.
const IO_BUFFER_BYTES: usize = 1024 * 1024;
/// A snapshot written while the log serves goes to disk in pieces of this size, each flushed
/// (fdatasync of the snapshot file) and followed by [`PACED_PAUSE`]. One fsync of the whole
/// file (30 MB at 1.8 M events, ~100 ms of a 300 MB/s disk) put every fdatasync of the log
/// behind it, and a hot pool's slowest commands bunched there. A piece costs the disk under a
/// millisecond, and the pauses leave it to the log most of the time.
const PACED_PIECE_BYTES: usize = 256 * 1024;
/// Pause after each flushed piece of a background snapshot (at most ~50 MB/s of snapshot).
const PACED_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// How a snapshot shares the disk.
#[derive(Debug, Clone)]
pub(crate) enum Pace {
    /// While appends go on: flushed piece by piece, with pauses, until `hurry` is set (the
    /// writer waits for this snapshot: it is closing, or starting the next one).
    Background { hurry: Arc<AtomicBool> },
    /// Nothing else is waiting on the disk (the store is closing): written at once.
    AtOnce,
}

impl Pace {
    fn paced(&self) -> bool {
        match self {
            Pace::Background { hurry } => !hurry.load(Ordering::Relaxed),
            Pace::AtOnce => false,
        }
    }
}

/// The snapshot file, flushed every [`PACED_PIECE_BYTES`] when paced.
struct PacedFile {
    file: File,
    pace: Pace,
    unflushed: usize,
}

impl Write for PacedFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let paced = self.pace.paced();
        let bytes = if paced {
            // A write bigger than the piece (the buffer passes those through) is cut at it.
            // Paced, `unflushed` is below a piece: it is reset whenever it reaches one.
            &bytes[..bytes.len().min(PACED_PIECE_BYTES - self.unflushed)]
        } else {
            bytes
        };
        let written = self.file.write(bytes)?;
        self.unflushed += written;
        if paced && self.unflushed >= PACED_PIECE_BYTES {
            self.file.sync_data()?;
            self.unflushed = 0;
            std::thread::sleep(PACED_PAUSE);
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("no snapshot")]
    Missing,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Damaged or from another format: derived data to rebuild.
    #[error("{0}")]
    Invalid(String),
    /// Intact, but the log no longer holds what it describes: `offset` is where they part.
    #[error("{reason}")]
    Mismatch { offset: u64, reason: String },
}

fn mismatch(offset: u64, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Mismatch {
        offset,
        reason: reason.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn invalid(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(reason.into())
}

/// What a written snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Events covered (positions `0..events`).
    pub events: u64,
    /// Bytes of `events.log` covered.
    pub log_bytes: u64,
    /// Size of the snapshot file.
    pub snapshot_bytes: u64,
}

struct Header {
    log_end: u64,
    last_batch_offset: u64,
    event_count: u64,
    stream_count: u32,
    log_digest: [u8; SUM_BYTES],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(SNAPSHOT_MAGIC);
        b[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(OFFSET_BLOCK_EVENTS as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.log_end.to_le_bytes());
        b[24..32].copy_from_slice(&self.last_batch_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.event_count.to_le_bytes());
        b[40..44].copy_from_slice(&self.stream_count.to_le_bytes());
        b[48..64].copy_from_slice(&self.log_digest);
        b
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> Result<Self, SnapshotError> {
        if &b[0..8] != SNAPSHOT_MAGIC {
            return Err(invalid("bad snapshot magic"));
        }
        if le_u32(&b[8..12]) != SNAPSHOT_VERSION {
            return Err(invalid("unknown snapshot format version"));
        }
        if le_u32(&b[12..16]) as usize != OFFSET_BLOCK_EVENTS {
            return Err(invalid("snapshot from an index with another block size"));
        }
        let mut log_digest = [0u8; SUM_BYTES];
        log_digest.copy_from_slice(&b[48..64]);
        Ok(Self {
            log_end: le_u64(&b[16..24]),
            last_batch_offset: le_u64(&b[24..32]),
            event_count: le_u64(&b[32..40]),
            stream_count: le_u32(&b[40..44]),
            log_digest,
        })
    }
}

/// Digest of the log's file header (its identity part), its first batch and the batch at
/// `last_batch_offset`, after checking that the last one ends at `log_end` and completes
/// `event_count` positions; with the chain head that last batch records (format 2). Reads at most
/// two batches, whatever the log's size.
fn log_digest(
    log: &File,
    log_path: &Path,
    last_batch_offset: u64,
    log_end: u64,
    event_count: u64,
) -> Result<([u8; SUM_BYTES], Option<ChainHead>), SnapshotError> {
    let read = |buf: &mut [u8], at: u64| {
        log.read_exact_at(buf, at).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                mismatch(at, "the log is shorter than the snapshot covers")
            }
            _ => SnapshotError::Io {
                path: log_path.display().to_string(),
                source: e,
            },
        })
    };
    let log_len = log
        .metadata()
        .map_err(|e| SnapshotError::Io {
            path: log_path.display().to_string(),
            source: e,
        })?
        .len();
    if log_len < log_end {
        return Err(mismatch(
            log_len,
            format!(
                "the log is {log_len} bytes, but the intact index snapshot covers {log_end} bytes \
                 and {event_count} events of it"
            ),
        ));
    }
    let mut hasher = blake3::Hasher::new();
    let mut start = [0u8; FILE_HEADER_IDENTITY_BYTES];
    let identity = (log_len as usize).min(FILE_HEADER_IDENTITY_BYTES);
    read(&mut start[..identity], 0)?;
    let log_format = format::decode_file_header(&start[..identity])
        .map_err(|reason| mismatch(0, format!("the log's file header: {reason}")))?
        .format;
    let identity = match log_format {
        LogFormat::V1 => 16,
        LogFormat::V2 => FILE_HEADER_IDENTITY_BYTES,
    };
    hasher.update(&start[..identity]);
    let header_len = log_format.batch_header_bytes();
    let mut batch = Vec::new();
    let mut head = None;
    for (which, at) in [
        ("first", log_format.data_start()),
        ("last", last_batch_offset),
    ] {
        let mut header_bytes = vec![0u8; header_len];
        read(&mut header_bytes, at)?;
        let header = format::decode_batch_header(log_format, &header_bytes)
            .map_err(|reason| mismatch(at, format!("{which} covered batch at {at}: {reason}")))?;
        let end = at + header_len as u64 + u64::from(header.body_len);
        if which == "first" && (header.first_position != 0 || end > log_end) {
            return Err(mismatch(at, "the first batch of the log does not match"));
        }
        if which == "last" {
            if end != log_end
                || header.first_position + u64::from(header.event_count) != event_count
            {
                return Err(mismatch(
                    at,
                    format!(
                        "batch at {at} does not end the covered log at {log_end} with {event_count} events"
                    ),
                ));
            }
            head = header
                .sealed()
                .map(|(sequence, seal)| ChainHead { sequence, seal });
        }
        debug_assert!(u64::from(header.body_len) <= BATCH_BODY_BYTES_MAX);
        batch.resize(header_len + header.body_len as usize, 0);
        read(&mut batch, at)?;
        hasher.update(&batch);
    }
    let mut digest = [0u8; SUM_BYTES];
    digest.copy_from_slice(&hasher.finalize().as_bytes()[..SUM_BYTES]);
    Ok((digest, head))
}

fn read_index(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    match index.read() {
        Ok(index) => index,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes a snapshot of `index` as it is now. Returns `None` when the index covers no event.
/// Holds the index read lock only to copy one chunk of entries at a time.
pub(crate) fn write(
    dir: &Path,
    log_path: &Path,
    index: &RwLock<Index>,
    pace: Pace,
) -> Result<Option<SnapshotInfo>, StoreError> {
    // Everything below `count` is immutable once published, so chunked copies are consistent.
    let (count, (last_batch_offset, log_end), names, bases) = {
        let index = read_index(index);
        (
            index.len(),
            index.covered(),
            index.stream_names().to_vec(),
            index.bases().to_vec(),
        )
    };
    if count == 0 {
        return Ok(None);
    }
    let log = File::open(log_path).map_err(|e| io_error(log_path, e))?;
    let (log_digest, _) =
        log_digest(&log, log_path, last_batch_offset, log_end, count).map_err(|e| match e {
            SnapshotError::Io { path, source } => StoreError::Io { path, source },
            other => StoreError::Corrupt {
                file: log_path.display().to_string(),
                offset: last_batch_offset,
                reason: format!("cannot snapshot the index: {other}"),
            },
        })?;
    let header = Header {
        log_end,
        last_batch_offset,
        event_count: count,
        stream_count: u32::try_from(names.len()).map_err(|_| StoreError::Unavailable {
            reason: "too many streams for an index snapshot".to_owned(),
            maybe_written: false,
        })?,
        log_digest,
    };

    let temp = dir.join(SNAPSHOT_TEMP_FILE_NAME);
    let file = File::create(&temp).map_err(|e| io_error(&temp, e))?;
    let buffer = match pace {
        Pace::Background { .. } => PACED_PIECE_BYTES,
        Pace::AtOnce => IO_BUFFER_BYTES,
    };
    let file = PacedFile {
        file,
        pace,
        unflushed: 0,
    };
    let mut out = BufWriter::with_capacity(buffer, file);
    let mut hasher = blake3::Hasher::new();
    put(&mut out, &mut hasher, &temp, &header.encode())?;
    let mut buf = Vec::with_capacity(CHUNK_EVENTS * ENTRY_BYTES);
    for name in &names {
        // Stream names are at most STREAM_NAME_BYTES_MAX, far below u16::MAX.
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
    }
    for base in bases
        .iter()
        .take((count as usize).div_ceil(OFFSET_BLOCK_EVENTS))
    {
        buf.extend_from_slice(&base.to_le_bytes());
    }
    put(&mut out, &mut hasher, &temp, &buf)?;
    let mut from = 0usize;
    while (from as u64) < count {
        let to = (from + CHUNK_EVENTS).min(count as usize);
        buf.clear();
        {
            let index = read_index(index);
            for entry in index.entries(from, to) {
                buf.extend_from_slice(&entry.delta.to_le_bytes());
                buf.extend_from_slice(&entry.len.to_le_bytes());
                buf.extend_from_slice(&entry.stream.to_le_bytes());
            }
        }
        put(&mut out, &mut hasher, &temp, &buf)?;
        from = to;
    }
    let sum = hasher.finalize();
    out.write_all(&sum.as_bytes()[..SUM_BYTES])
        .map_err(|e| io_error(&temp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| io_error(&temp, e.into_error()))?
        .file;
    file.sync_all().map_err(|e| io_error(&temp, e))?;
    let snapshot_bytes = file.metadata().map_err(|e| io_error(&temp, e))?.len();
    drop(file);
    let path = dir.join(SNAPSHOT_FILE_NAME);
    std::fs::rename(&temp, &path).map_err(|e| io_error(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))?;
    tracing::info!(
        file = %path.display(),
        events = count,
        log_bytes = log_end,
        snapshot_bytes,
        "index snapshot written"
    );
    Ok(Some(SnapshotInfo {
        events: count,
        log_bytes: log_end,
        snapshot_bytes,
    }))
}

/// Writes `bytes` to the snapshot and its checksum.
fn put(
    out: &mut BufWriter<PacedFile>,
    hasher: &mut blake3::Hasher,
    path: &Path,
    bytes: &[u8],
) -> Result<(), StoreError> {
    hasher.update(bytes);
    out.write_all(bytes).map_err(|e| io_error(path, e))
}

/// Reads that also feed the checksum.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    path: PathBuf,
}

impl<R: Read> Hashing<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid("snapshot shorter than its header says"),
            _ => SnapshotError::Io {
                path: self.path.display().to_string(),
                source: e,
            },
        })?;
        self.hasher.update(buf);
        Ok(())
    }
}

/// Loads the snapshot in `dir` if it is intact and describes `log` (checked as the module
/// comment says). The index it returns covers the log up to its `covered()` end.
pub(crate) fn load(dir: &Path, log: &File, log_path: &Path) -> Result<Index, SnapshotError> {
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let file_len = file
        .metadata()
        .map_err(|source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let mut reader = Hashing {
        inner: BufReader::with_capacity(IO_BUFFER_BYTES, file),
        hasher: blake3::Hasher::new(),
        path: path.clone(),
    };
    let mut header_bytes = [0u8; HEADER_BYTES];
    reader.fill(&mut header_bytes)?;
    let header = Header::decode(&header_bytes)?;
    // The sizes the header implies must fit the file before anything is allocated for them.
    let count = usize::try_from(header.event_count).map_err(|_| invalid("event count"))?;
    let blocks = count.div_ceil(OFFSET_BLOCK_EVENTS);
    let fixed = (HEADER_BYTES + SUM_BYTES) as u64
        + (blocks as u64) * 8
        + (count as u64) * ENTRY_BYTES as u64
        + u64::from(header.stream_count) * 2;
    if count == 0 || fixed > file_len {
        return Err(invalid("snapshot size does not match its header"));
    }
    let mut names = Vec::with_capacity(header.stream_count as usize);
    let mut name = Vec::new();
    for _ in 0..header.stream_count {
        let mut len = [0u8; 2];
        reader.fill(&mut len)?;
        name.resize(usize::from(u16::from_le_bytes(len)), 0);
        reader.fill(&mut name)?;
        let text = std::str::from_utf8(&name).map_err(|_| invalid("stream name not UTF-8"))?;
        names.push(Arc::<str>::from(text));
    }
    let mut bases = Vec::with_capacity(blocks);
    let mut buf = vec![0u8; CHUNK_EVENTS * ENTRY_BYTES];
    let mut left = blocks;
    while left > 0 {
        let n = left.min(buf.len() / 8);
        reader.fill(&mut buf[..n * 8])?;
        bases.extend(buf[..n * 8].chunks_exact(8).map(le_u64));
        left -= n;
    }
    let mut entries = ChunkedVec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK_EVENTS);
        reader.fill(&mut buf[..n * ENTRY_BYTES])?;
        entries.extend(
            buf[..n * ENTRY_BYTES]
                .chunks_exact(ENTRY_BYTES)
                .map(|e| Entry {
                    delta: le_u32(&e[0..4]),
                    len: le_u32(&e[4..8]),
                    stream: le_u32(&e[8..12]),
                }),
        );
        left -= n;
    }
    let expected = reader.hasher.finalize();
    let mut trailer = [0u8; SUM_BYTES];
    reader
        .inner
        .read_exact(&mut trailer)
        .map_err(|_| invalid("snapshot trailer missing"))?;
    if trailer != expected.as_bytes()[..SUM_BYTES] {
        return Err(invalid("snapshot checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if reader
        .inner
        .read(&mut rest)
        .map_err(|source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        })?
        != 0
    {
        return Err(invalid("bytes after the snapshot trailer"));
    }
    // The snapshot is intact: now it is evidence.
    let head = describes(log, log_path, &header)?;
    Index::from_parts(
        names,
        bases,
        entries,
        header.last_batch_offset,
        header.log_end,
        head,
    )
    .map_err(invalid)
}

/// Whether the log still holds the batches the intact snapshot with `header` was taken over;
/// if so, the chain head its last covered batch records.
fn describes(
    log: &File,
    log_path: &Path,
    header: &Header,
) -> Result<Option<ChainHead>, SnapshotError> {
    let (digest, head) = log_digest(
        log,
        log_path,
        header.last_batch_offset,
        header.log_end,
        header.event_count,
    )?;
    if digest != header.log_digest {
        return Err(mismatch(
            0,
            format!(
                "the intact index snapshot describes another log: its first or last covered \
                 batch (at {}) or the log's identity differ",
                header.last_batch_offset
            ),
        ));
    }
    Ok(head)
}

/// Removes a snapshot that must not be used again, and a temporary file left by a crash.
pub(crate) fn remove(dir: &Path, which: &str) {
    let path = dir.join(which);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!(file = %path.display(), "removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove"),
    }
}

/// Checks, without building an index, that the snapshot in `dir` (if any, and intact) describes
/// `log`: how a read-only open that scans the whole log anyway uses the snapshot as evidence.
/// `Ok(None)` when there is no snapshot; `Ok(Some(reason))` when it is damaged (not evidence).
pub(crate) fn check(
    dir: &Path,
    log: &File,
    log_path: &Path,
) -> Result<Option<String>, SnapshotError> {
    let path = dir.join(SNAPSHOT_FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    if bytes.len() < HEADER_BYTES + SUM_BYTES {
        return Ok(Some("snapshot shorter than its header".to_owned()));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - SUM_BYTES);
    if blake3::hash(body).as_bytes()[..SUM_BYTES] != *trailer {
        return Ok(Some("snapshot checksum mismatch".to_owned()));
    }
    let mut header_bytes = [0u8; HEADER_BYTES];
    header_bytes.copy_from_slice(&bytes[..HEADER_BYTES]);
    let header = match Header::decode(&header_bytes) {
        Ok(header) => header,
        Err(e) => return Ok(Some(e.to_string())),
    };
    describes(log, log_path, &header)?;
    Ok(None)
}

//! Reading a log back: verify every batch, rebuild the index, and tell a torn last write from
//! acknowledged data that is missing or damaged.
//!
//! The rule: the writer syncs each batch, and its head slot, before it writes the next, so only
//! the one batch in flight when the process died can be torn. The newest valid head slot (format
//! 2) names that batch: every batch before it was acknowledged. So, after the verified prefix:
//! - nothing left, and the prefix reaches the newest slot's batch: a whole log;
//! - damage that starts at or after the newest slot's batch, within one batch's size of the
//!   end, with no valid batch after it: a **torn write** of data never acknowledged. Opening to
//!   serve cuts it (keeping the cut bytes in `events.log.torn-<offset>`); a read-only open
//!   reports it and leaves it;
//! - anything else — damage before that batch, a log shorter than the slot says, a damaged
//!   batch followed by a valid one — is **acknowledged data missing or damaged**:
//!   [`StoreError::Damaged`], naming the file, the offset, the first position affected and how
//!   many acknowledged events at least.
//!
//! A format-1 log has no head slots: there the bound is the start of the log, so damage with no
//! valid batch after it reads as a torn write, as it always did for that format.
//!
//! Beside a live writer (a read-only open while another process holds the lock) an incomplete
//! batch after the newest slot's is the write in flight: the reader stops before it and says so.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::collections::HashMap;

use allot_domain::integrity;

use super::format::{
    self, BATCH_BODY_BYTES_MAX, BATCH_HEADER_BYTES_MAX, FrameError, HEAD_SLOTS, HeadSlot,
    LogFormat, SECTOR_BYTES, SlotRead,
};
use super::index::{ChainHead, Index};
use crate::store::{Damage, StoreError};

/// Bytes read at a time when searching for a batch header after a damaged one.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How the log is being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// To serve: a proven torn write is cut, anything else refused.
    Repair,
    /// To read (audit, inspection): nothing is written; `writer_live` when another process
    /// holds the directory's lock, so the last batch may still be in flight.
    ReadOnly { writer_live: bool },
}

/// Where a scan stopped: the batch that did not verify, the offset of the first bad byte range
/// found in it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    pub batch: u64,
    pub at: u64,
    pub reason: String,
}

impl Stop {
    fn new(batch: u64, reason: impl Into<String>) -> Stop {
        Stop {
            batch,
            at: batch,
            reason: reason.into(),
        }
    }
}

/// A torn last write: the bytes from `offset` to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornWrite {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// What reading the log found.
pub(crate) struct Recovered {
    pub format: LogFormat,
    pub log_id: Option<[u8; 16]>,
    pub index: Index,
    /// End of the verified log: where the next batch goes (after a repair).
    pub end: u64,
    /// A torn write after `end`: removed when repairing, still there when read-only.
    pub torn: Option<TornWrite>,
    /// Read-only beside a live writer: bytes after `end` are a batch still being written.
    pub in_flight_bytes: u64,
    pub newest_slot: Option<HeadSlot>,
    /// Head slots that fail their checksum (by slot number).
    pub damaged_slots: Vec<u64>,
}

/// Reads and checks the file header.
pub(crate) fn read_file_header(
    file: &File,
    path: &Path,
    file_len: u64,
) -> Result<format::FileHeader, StoreError> {
    let mut bytes = vec![0u8; file_len.min(SECTOR_BYTES) as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io_error(path, e))?;
    let header = format::decode_file_header(&bytes).map_err(|reason| {
        damage(
            path,
            0,
            Some(0),
            None,
            format!("{reason} (the file is {file_len} bytes)"),
        )
    })?;
    if file_len < header.format.data_start() {
        return Err(damage(
            path,
            file_len,
            Some(0),
            None,
            format!(
                "the log ends at {file_len} bytes, inside its {}-byte header",
                header.format.data_start()
            ),
        ));
    }
    Ok(header)
}

/// Reads the head slots of a format-2 log.
pub(crate) fn read_slots(
    file: &File,
    path: &Path,
) -> Result<(Option<HeadSlot>, Vec<u64>), StoreError> {
    let mut bytes = vec![0u8; (SECTOR_BYTES * HEAD_SLOTS) as usize];
    file.read_exact_at(&mut bytes, format::slot_offset(0))
        .map_err(|e| io_error(path, e))?;
    let mut newest: Option<HeadSlot> = None;
    let mut damaged = Vec::new();
    for i in 0..HEAD_SLOTS {
        let at = (i * SECTOR_BYTES) as usize;
        match format::decode_slot(&bytes[at..at + SECTOR_BYTES as usize]) {
            SlotRead::Empty => {}
            SlotRead::Damaged(_) => damaged.push(i),
            SlotRead::Valid(slot) if slot.sequence % HEAD_SLOTS != i => damaged.push(i),
            SlotRead::Valid(slot) => {
                if newest.is_none_or(|n| slot.sequence > n.sequence) {
                    newest = Some(slot);
                }
            }
        }
    }
    Ok((newest, damaged))
}

/// A refusal: acknowledged data missing or damaged.
pub(crate) fn damage(
    path: &Path,
    offset: u64,
    first_position: Option<u64>,
    events: Option<u64>,
    reason: String,
) -> StoreError {
    StoreError::Damaged(Box::new(Damage {
        file: path.display().to_string(),
        offset,
        first_position,
        events_at_least: events,
        reason,
    }))
}

/// Reads the log in `file` (`file_len` bytes) and returns its verified index. With `start` (an
/// index loaded from a snapshot the caller checked against this log) only the bytes after it
/// are scanned.
pub(crate) fn recover(
    file: &File,
    path: &Path,
    file_len: u64,
    start: Option<Index>,
    access: Access,
) -> Result<Recovered, StoreError> {
    let header = read_file_header(file, path, file_len)?;
    let format = header.format;
    let (newest_slot, mut damaged_slots) = match format {
        LogFormat::V1 => (None, Vec::new()),
        LogFormat::V2 => read_slots(file, path)?,
    };
    // Beside a live writer, the log grows: its length is read after the slots, so every batch a
    // slot names is inside it (the writer writes a batch before its slot).
    let file_len = match access {
        ReadOnly { writer_live: true } => file.metadata().map_err(|e| io_error(path, e))?.len(),
        _ => file_len,
    };
    // The slot of the batch after the newest may be torn with that batch's write: not damage.
    let in_flight_slot = newest_slot.map_or(0, |slot| (slot.sequence + 1) % HEAD_SLOTS);
    damaged_slots.retain(|slot| *slot != in_flight_slot);
    for slot in &damaged_slots {
        tracing::warn!(
            file = %path.display(),
            offset = format::slot_offset(*slot),
            slot,
            "head slot damaged; the others bound the log"
        );
    }
    let mut index = start.unwrap_or_else(|| Index::new(format.data_start()));
    // Every batch before the newest slot's was acknowledged.
    let acknowledged_end = newest_slot.map_or(format.data_start(), |slot| slot.batch_offset);
    let stop = scan(
        file,
        path,
        format,
        header.log_id.as_ref(),
        &mut index,
        file_len,
    )?;
    let (_, end) = index.covered();
    let verified = index.len();
    let lost = |offset: u64, reason: String| {
        let events = newest_slot
            .map(|slot| slot.first_position.saturating_sub(verified))
            .filter(|n| *n > 0);
        damage(path, offset, Some(verified), events, reason)
    };
    if let (Some(slot), Some(head)) = (newest_slot, index.head())
        && head.sequence == slot.sequence
        && (head.seal.chain != slot.chain || end != slot.batch_end)
    {
        return Err(lost(
            slot.batch_offset,
            format!(
                "batch {} differs from the head slot that recorded it (another log, or rewritten)",
                slot.sequence
            ),
        ));
    }
    let mut recovered = Recovered {
        format,
        log_id: header.log_id,
        index,
        end,
        torn: None,
        in_flight_bytes: 0,
        newest_slot,
        damaged_slots,
    };
    let Some(Stop {
        batch: offset,
        at,
        reason,
    }) = stop
    else {
        if end < acknowledged_end {
            return Err(lost(
                end,
                format!(
                    "the log ends at offset {end}, but its head slot records batch {} written at \
                     offset {acknowledged_end}: acknowledged batches are missing",
                    newest_slot.map_or(0, |s| s.sequence)
                ),
            ));
        }
        return Ok(recovered);
    };
    if offset < acknowledged_end {
        return Err(lost(
            at,
            format!(
                "{reason}; the head slot records batches written up to offset {acknowledged_end}, \
                 so this was acknowledged"
            ),
        ));
    }
    if let ReadOnly { writer_live: true } = access {
        // The batch being written right now: not a finding, not a reason to stop reading.
        recovered.in_flight_bytes = file_len - offset;
        return Ok(recovered);
    }
    if file_len - offset > (BATCH_HEADER_BYTES_MAX as u64) + BATCH_BODY_BYTES_MAX {
        return Err(lost(
            offset,
            format!(
                "{reason}; {} bytes follow, more than one write can hold",
                file_len - offset
            ),
        ));
    }
    if let Some(next) = find_batch_header(file, path, format, offset + 1, file_len)? {
        return Err(lost(
            offset,
            format!("{reason}; a valid batch follows at offset {next}"),
        ));
    }
    let torn = TornWrite {
        offset,
        bytes: file_len - offset,
        reason,
    };
    if access == Access::Repair {
        cut_torn_write(file, path, &torn)?;
    }
    recovered.torn = Some(torn);
    Ok(recovered)
}

use Access::ReadOnly;

/// Batches are read into memory up to this many bytes, checked in parallel, then linked.
const SCAN_CHUNK_BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Threads that check a chunk's batches (each batch on its own: frames, leaves, root, chain).
const SCAN_THREADS_MAX: usize = 4;

/// One batch as read, waiting to be checked.
struct ReadBatch {
    offset: u64,
    header: format::BatchHeader,
    body: Vec<u8>,
}

/// Verifies and indexes the batches from where `index` ends, up to `file_len`. Returns where
/// and why it stopped early, if it did.
///
/// What each batch holds on its own (frame structure, leaves, sums, its root, its chain value
/// from the previous one it records) is checked on several threads, a chunk of batches at a
/// time, on a reading thread that runs a chunk ahead; what links batches (positions, stream
/// versions, sequence, the previous chain value) is checked here, in order, as they join the
/// index.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    format: LogFormat,
    log_id: Option<&[u8; 16]>,
    index: &mut Index,
    file_len: u64,
) -> Result<Option<Stop>, StoreError> {
    let (_, offset) = index.covered();
    let first_position = index.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, SCAN_THREADS_MAX);
    std::thread::scope(|scope| {
        // One chunk in hand, one being read and checked: the reader blocks on the rest.
        let (chunks, checked_chunks) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            read_chunks(
                file,
                path,
                format,
                (offset, first_position),
                file_len,
                threads,
                chunks,
            )
        });
        // Returning drops the receiver, which stops the reader at its next chunk.
        for chunk in checked_chunks {
            let chunk: CheckedChunk = chunk?;
            for (batch, checked) in chunk.batches.iter().zip(chunk.checked) {
                let checked = match checked {
                    Ok(checked) => checked,
                    Err((at, FrameError::Damaged(reason))) => {
                        return Ok(Some(Stop {
                            batch: batch.offset,
                            at,
                            reason,
                        }));
                    }
                    Err((at, FrameError::Malformed(reason))) => {
                        return Err(StoreError::Corrupt {
                            file: path.display().to_string(),
                            offset: at,
                            reason,
                        });
                    }
                };
                if let Some(stop) = link_batch(path, format, log_id, index, batch, checked)? {
                    return Ok(Some(stop));
                }
            }
            if chunk.stop.is_some() {
                return Ok(chunk.stop);
            }
        }
        Ok(None)
    })
}

/// A chunk of batches as read and checked on their own; `stop` is why reading ended after it.
struct CheckedChunk {
    batches: Vec<ReadBatch>,
    checked: Vec<Result<CheckedBatch, (u64, FrameError)>>,
    stop: Option<Stop>,
}

/// Reads the log from `(offset, position)` a chunk at a time, checks each chunk's batches on
/// their own, and hands the chunks over in order until the end, a stop, or a receiver that
/// left.
fn read_chunks(
    file: &File,
    path: &Path,
    format: LogFormat,
    (mut offset, mut next_position): (u64, u64),
    file_len: u64,
    threads: usize,
    chunks: std::sync::mpsc::SyncSender<Result<CheckedChunk, StoreError>>,
) {
    let header_len = format.batch_header_bytes();
    let mut header_bytes = vec![0u8; header_len];
    loop {
        let mut batches: Vec<ReadBatch> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut stop = None;
        while chunk_bytes < SCAN_CHUNK_BATCH_BYTES {
            if offset == file_len {
                break;
            }
            if offset > file_len {
                stop = Some(Stop::new(
                    file_len,
                    format!("the log ends at {file_len}, inside the batch its index covers"),
                ));
                break;
            }
            // An incomplete batch is missing its bytes from the end of the file on.
            if file_len - offset < header_len as u64 {
                stop = Some(Stop {
                    batch: offset,
                    at: file_len,
                    reason: "incomplete batch header".to_owned(),
                });
                break;
            }
            if let Err(e) = file.read_exact_at(&mut header_bytes, offset) {
                let _ = chunks.send(Err(io_error(path, e)));
                return;
            }
            let header = match format::decode_batch_header(format, &header_bytes) {
                Ok(header) => header,
                Err(reason) => {
                    stop = Some(Stop::new(offset, reason));
                    break;
                }
            };
            if header.first_position != next_position {
                stop = Some(Stop::new(
                    offset,
                    format!(
                        "batch starts at position {}, expected {next_position}",
                        header.first_position
                    ),
                ));
                break;
            }
            let body_offset = offset + header_len as u64;
            let batch_end = body_offset + u64::from(header.body_len);
            if batch_end > file_len {
                stop = Some(Stop {
                    batch: offset,
                    at: file_len,
                    reason: "incomplete batch".to_owned(),
                });
                break;
            }
            let mut body = vec![0u8; header.body_len as usize];
            if let Err(e) = file.read_exact_at(&mut body, body_offset) {
                let _ = chunks.send(Err(io_error(path, e)));
                return;
            }
            batches.push(ReadBatch {
                offset,
                header,
                body,
            });
            chunk_bytes += batch_end - offset;
            next_position += u64::from(header.event_count);
            offset = batch_end;
        }
        if batches.is_empty() && stop.is_none() {
            return;
        }
        let checked = check_batches(format, &batches, threads);
        let last = stop.is_some();
        if chunks
            .send(Ok(CheckedChunk {
                batches,
                checked,
                stop,
            }))
            .is_err()
            || last
        {
            return;
        }
    }
}

/// Checks each batch of `chunk` on its own, on up to `threads` threads; results in order.
fn check_batches(
    format: LogFormat,
    chunk: &[ReadBatch],
    threads: usize,
) -> Vec<Result<CheckedBatch, (u64, FrameError)>> {
    let check = |batch: &ReadBatch| check_batch(format, batch);
    let threads = threads.min(chunk.len());
    if threads <= 1 {
        return chunk.iter().map(check).collect();
    }
    let per_thread = chunk.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunk
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

struct CheckedFrame {
    stream: String,
    first_version: u64,
    /// Offset of the frame in the file (where a linking error is reported).
    offset: u64,
    /// File offset and length of each event record.
    events: Vec<(u64, u32)>,
}

struct CheckedBatch {
    frames: Vec<CheckedFrame>,
    /// The batch's chain head (format 2), its own links checked.
    head: Option<ChainHead>,
}

/// Checks what one batch holds on its own: its frames and their positions, its events' leaves
/// (recomputed from their bytes) and sums, its root and its chain value from the previous value
/// it records.
fn check_batch(format: LogFormat, batch: &ReadBatch) -> Result<CheckedBatch, (u64, FrameError)> {
    let header = batch.header;
    let body = &batch.body;
    let body_offset = batch.offset + format.batch_header_bytes() as u64;
    let mut frames_out: Vec<CheckedFrame> = Vec::with_capacity(header.frame_count as usize);
    let mut leaves = Vec::new();
    let mut event_total = 0u64;
    let mut at = 0usize;
    let mut frames = 0u32;
    let mut next_position = header.first_position;
    let damaged = |offset: u64, reason: String| (offset, FrameError::Damaged(reason));
    while at < body.len() {
        let frame_offset = body_offset + at as u64;
        let frame = format::decode_frame(format, &body[at..]).map_err(|e| (frame_offset, e))?;
        if frame.first_position != next_position {
            let reason = format!(
                "frame starts at position {}, expected {next_position}",
                frame.first_position
            );
            return Err(match format {
                LogFormat::V1 => (frame_offset, FrameError::Malformed(reason)),
                LogFormat::V2 => (frame_offset, FrameError::Damaged(reason)),
            });
        }
        if format == LogFormat::V2 {
            for (i, e) in frame.events.iter().enumerate() {
                let record_offset = frame_offset + e.offset as u64;
                let bytes = &body[at + e.offset..at + e.offset + e.len as usize];
                let position = frame.first_position + i as u64;
                let record = format::decode_event(format, bytes)
                    .map_err(|reason| damaged(record_offset, reason.to_owned()))?;
                record
                    .check_leaf(position, frame.first_version + i as u64, frame.stream)
                    .and_then(|()| record.check_sum(position))
                    .map_err(|reason| damaged(record_offset, reason))?;
                leaves.push(record.stored_leaf().unwrap_or_default());
            }
        }
        let count = frame.events.len() as u64;
        frames_out.push(CheckedFrame {
            stream: frame.stream.to_owned(),
            first_version: frame.first_version,
            offset: frame_offset,
            events: frame
                .events
                .iter()
                .map(|e| (frame_offset + e.offset as u64, e.len))
                .collect(),
        });
        event_total += count;
        next_position += count;
        frames += 1;
        at += frame.len as usize;
    }
    if frames != header.frame_count || event_total != u64::from(header.event_count) {
        let reason = format!(
            "batch holds {frames} frames and {event_total} events, header says {} and {}",
            header.frame_count, header.event_count
        );
        return Err(match format {
            LogFormat::V1 => (batch.offset, FrameError::Malformed(reason)),
            LogFormat::V2 => (batch.offset, FrameError::Damaged(reason)),
        });
    }
    // The root and chain value the events give must be those the header records.
    let head = header
        .sealed()
        .map(|(sequence, seal)| ChainHead { sequence, seal });
    if let Some(head) = &head {
        let seal = &head.seal;
        if integrity::root(&leaves) != Some(seal.root) || !seal.chain_holds() {
            return Err(damaged(
                batch.offset,
                "batch root or chain value does not match its events".to_owned(),
            ));
        }
    }
    Ok(CheckedBatch {
        frames: frames_out,
        head,
    })
}

/// Joins a checked batch to the index if it continues it: the chain (sequence and previous
/// value) and every stream's versions. `Ok(Some(stop))` if it does not.
fn link_batch(
    path: &Path,
    format: LogFormat,
    log_id: Option<&[u8; 16]>,
    index: &mut Index,
    batch: &ReadBatch,
    checked: CheckedBatch,
) -> Result<Option<Stop>, StoreError> {
    if let Some(head) = &checked.head {
        let (expected_sequence, prev) = match index.head() {
            Some(previous) => (previous.sequence + 1, previous.seal.chain),
            None => (0, integrity::genesis(log_id.unwrap_or(&[0; 16]))),
        };
        if head.sequence != expected_sequence || head.seal.prev_chain != prev {
            return Ok(Some(Stop::new(
                batch.offset,
                format!(
                    "batch {} does not continue the chain of batch {}",
                    head.sequence,
                    expected_sequence.wrapping_sub(1)
                ),
            )));
        }
    }
    // Versions: each frame continues its stream (counting this batch's earlier frames).
    let mut batch_heads: HashMap<&str, u64> = HashMap::new();
    for frame in &checked.frames {
        let head = match batch_heads.get(frame.stream.as_str()) {
            Some(head) => *head,
            None => index.stream_len(&frame.stream).unwrap_or(0),
        };
        if frame.first_version != head {
            let reason = format!(
                "stream {} continues at version {}, expected {head}",
                frame.stream, frame.first_version
            );
            return match format {
                LogFormat::V1 => Err(StoreError::Corrupt {
                    file: path.display().to_string(),
                    offset: frame.offset,
                    reason,
                }),
                LogFormat::V2 => Ok(Some(Stop {
                    batch: batch.offset,
                    at: frame.offset,
                    reason,
                })),
            };
        }
        batch_heads.insert(&frame.stream, head + frame.events.len() as u64);
    }
    for frame in &checked.frames {
        for &(event_offset, len) in &frame.events {
            index.push(&frame.stream, event_offset, len);
        }
    }
    let end = batch.offset + format.batch_header_bytes() as u64 + u64::from(batch.header.body_len);
    index.set_covered(batch.offset, end, checked.head);
    Ok(None)
}

/// Offset of the first valid batch header of `format` at or after `from`, if any.
fn find_batch_header(
    file: &File,
    path: &Path,
    format: LogFormat,
    from: u64,
    file_len: u64,
) -> Result<Option<u64>, StoreError> {
    let header_len = format.batch_header_bytes();
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES + header_len];
    let mut start = from;
    while start + header_len as u64 <= file_len {
        let n = ((file_len - start) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], start)
            .map_err(|e| io_error(path, e))?;
        for i in 0..=(n - header_len) {
            if format::has_batch_magic(format, &chunk[i..])
                && format::decode_batch_header(format, &chunk[i..i + header_len]).is_ok()
            {
                return Ok(Some(start + i as u64));
            }
        }
        // Overlap by a header so one straddling two chunks is still seen.
        start += (n - header_len + 1) as u64;
    }
    Ok(None)
}

/// Cuts a proven torn write, keeping its bytes beside the log for whoever wants to look.
fn cut_torn_write(file: &File, path: &Path, torn: &TornWrite) -> Result<(), StoreError> {
    let mut bytes = vec![0u8; torn.bytes as usize];
    file.read_exact_at(&mut bytes, torn.offset)
        .map_err(|e| io_error(path, e))?;
    let kept = path.with_file_name(format!(
        "{}.torn-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        torn.offset
    ));
    std::fs::write(&kept, &bytes)
        .and_then(|()| File::open(&kept)?.sync_all())
        .map_err(|e| io_error(&kept, e))?;
    tracing::warn!(
        file = %path.display(),
        offset = torn.offset,
        dropped_bytes = torn.bytes,
        kept = %kept.display(),
        reason = %torn.reason,
        "cutting a torn write of data never acknowledged"
    );
    file.set_len(torn.offset).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok(())
}

/// The refusal for an intact index snapshot that the log does not match: a scan of the log
/// from its first batch names the first damaged byte range and position if the log's own checks
/// find one (the snapshot only saw that something differs); otherwise the log is whole but not
/// the one the snapshot describes (replaced, or cut at a batch boundary), reported as the
/// snapshot saw it.
pub(crate) fn locate_mismatch(
    file: &File,
    path: &Path,
    file_len: u64,
    offset: u64,
    reason: String,
) -> StoreError {
    let located = read_file_header(file, path, file_len).and_then(|header| {
        let mut index = Index::new(header.format.data_start());
        let stop = scan(
            file,
            path,
            header.format,
            header.log_id.as_ref(),
            &mut index,
            file_len,
        )?;
        Ok(stop.map(|stop| (stop, index.len())))
    });
    match located {
        Ok(Some((stop, position))) => damage(
            path,
            stop.at,
            Some(position),
            None,
            format!(
                "{}; the intact index snapshot shows the log held more: {reason}",
                stop.reason
            ),
        ),
        Ok(None) => damage(path, offset, None, None, reason),
        Err(error) => error,
    }
}

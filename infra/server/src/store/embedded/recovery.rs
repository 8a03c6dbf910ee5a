//! Opening the log: verify every batch and frame, rebuild the index, cut a torn tail.
//!
//! Only the last batch can be torn: the writer fdatasyncs each batch before it writes the next.
//! So damage is a torn tail (truncated, with a warning) when it is confined to the last batch:
//! - fewer bytes left than a batch header, or a valid header whose batch runs past the end;
//! - a valid header whose batch ends exactly at the end of the file (or is followed only by
//!   zeros) but one of its frames fails its checksum; the whole batch goes, so no append is
//!   ever half visible;
//! - a damaged header after which no valid batch header appears.
//!
//! Anything else is [`StoreError::Corrupt`] with the offset of the damaged batch header or frame.
//!
//! With a valid index snapshot (`snapshot.rs`) the scan starts where the snapshot ends, with its
//! index preloaded: the same rules apply to the tail.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::collections::HashMap;

use super::format::{self, BATCH_HEADER_BYTES, FILE_HEADER_BYTES, FrameError};
use super::index::Index;
use crate::store::StoreError;

/// Bytes read at a time when searching for a batch header after a damaged one.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) struct Recovered {
    pub index: Index,
    /// Offset where the next batch goes (the file's length after any truncation).
    pub end: u64,
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

/// How damage is handled by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Opening: a torn tail is truncated, anything else is [`StoreError::Corrupt`].
    Open,
    /// Verifying a durable range read-only: any damage is [`StoreError::Corrupt`].
    Verify,
}

/// Verifies the log in `file` (opened read-write) and returns its index. With `start` (an index
/// loaded from the snapshot and the log offset it covers), only the bytes after that offset are
/// read and verified; the caller has checked that the snapshot belongs to this log.
pub(crate) fn recover(
    file: &File,
    path: &Path,
    start: Option<Index>,
) -> Result<Recovered, StoreError> {
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if file_len < FILE_HEADER_BYTES {
        return init_header(file, path, file_len);
    }
    check_file_header(file, path)?;
    let index = start.unwrap_or_else(|| Index::new(FILE_HEADER_BYTES));
    let index = scan(file, path, index, file_len, Mode::Open)?;
    let (_, end) = index.covered();
    Ok(Recovered { index, end })
}

pub(crate) fn check_file_header(file: &File, path: &Path) -> Result<(), StoreError> {
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| io_error(path, e))?;
    if header != format::file_header() {
        return Err(corrupt(path, 0, "not an allot log (bad file header)"));
    }
    Ok(())
}

/// Verifies and indexes the batches from where `index` ends up to `file_len`. In
/// [`Mode::Open`] a torn tail is truncated (the file shrinks to the returned index's end).
pub(crate) fn scan(
    file: &File,
    path: &Path,
    mut index: Index,
    file_len: u64,
    mode: Mode,
) -> Result<Index, StoreError> {
    let (_, mut offset) = index.covered();
    let mut body = Vec::new();
    // In Verify mode every byte up to `file_len` is durable: what looks torn is damage.
    let cut = |file: &File, offset: u64, reason: &str, index: Index| match mode {
        Mode::Open => truncate_tail(file, path, offset, file_len, reason, index),
        Mode::Verify => Err(corrupt(path, offset, reason.to_owned())),
    };
    loop {
        if offset == file_len {
            return Ok(index);
        }
        if offset > file_len {
            return Err(corrupt(path, file_len, "log shorter than its index"));
        }
        let remaining = file_len - offset;
        if remaining < BATCH_HEADER_BYTES as u64 {
            return cut(file, offset, "incomplete batch header", index);
        }
        let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
        file.read_exact_at(&mut header_bytes, offset)
            .map_err(|e| io_error(path, e))?;
        let header = match format::decode_batch_header(&header_bytes) {
            Ok(header) => header,
            Err(reason) => {
                if let Some(next) =
                    find_batch_header(file, path, offset + 1, file_len, index.len())?
                {
                    return Err(corrupt(
                        path,
                        offset,
                        format!("{reason}; a valid batch follows at offset {next}"),
                    ));
                }
                return cut(file, offset, reason, index);
            }
        };
        if header.first_position != index.len() {
            return Err(corrupt(
                path,
                offset,
                format!(
                    "batch starts at position {}, expected {}",
                    header.first_position,
                    index.len()
                ),
            ));
        }
        let body_offset = offset + BATCH_HEADER_BYTES as u64;
        let batch_end = body_offset + u64::from(header.body_len);
        if batch_end > file_len {
            return cut(file, offset, "incomplete batch", index);
        }
        body.resize(header.body_len as usize, 0);
        file.read_exact_at(&mut body, body_offset)
            .map_err(|e| io_error(path, e))?;
        match verify_batch(&body, body_offset, header, &index) {
            Ok(frames) => {
                for frame in frames {
                    for (event_offset, len) in frame.events {
                        index.push(&frame.stream, event_offset, len);
                    }
                }
                index.set_covered(offset, batch_end);
                offset = batch_end;
            }
            Err((at, FrameError::Damaged(reason))) => {
                if mode == Mode::Open
                    && (batch_end == file_len || only_zeros_after(file, path, batch_end, file_len)?)
                {
                    return cut(file, offset, &reason, index);
                }
                return Err(corrupt(path, at, reason));
            }
            Err((at, FrameError::Malformed(reason))) => return Err(corrupt(path, at, reason)),
        }
    }
}

struct VerifiedFrame {
    stream: String,
    /// File offset and length of each event record.
    events: Vec<(u64, u32)>,
}

/// Checks every frame of one batch, or returns the file offset of the first bad one.
fn verify_batch(
    body: &[u8],
    body_offset: u64,
    header: format::BatchHeader,
    index: &Index,
) -> Result<Vec<VerifiedFrame>, (u64, FrameError)> {
    let mut frames_out: Vec<VerifiedFrame> = Vec::with_capacity(header.frame_count as usize);
    let mut batch_heads: HashMap<String, u64> = HashMap::new();
    let mut event_total = 0u64;
    let mut at = 0usize;
    let mut frames = 0u32;
    let mut next_position = header.first_position;
    while at < body.len() {
        let frame_offset = body_offset + at as u64;
        let frame = format::decode_frame(&body[at..]).map_err(|e| (frame_offset, e))?;
        let malformed = |reason: String| (frame_offset, FrameError::Malformed(reason));
        if frame.first_position != next_position {
            return Err(malformed(format!(
                "frame starts at position {}, expected {next_position}",
                frame.first_position
            )));
        }
        // The stream's head counts this batch's earlier frames too.
        let head = match batch_heads.get(frame.stream) {
            Some(head) => *head,
            None => index.stream_len(frame.stream).unwrap_or(0),
        };
        if frame.first_version != head {
            return Err(malformed(format!(
                "stream {} continues at version {}, expected {head}",
                frame.stream, frame.first_version
            )));
        }
        let count = frame.events.len() as u64;
        batch_heads.insert(frame.stream.to_owned(), head + count);
        frames_out.push(VerifiedFrame {
            stream: frame.stream.to_owned(),
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
        return Err((
            body_offset - BATCH_HEADER_BYTES as u64,
            FrameError::Malformed(format!(
                "batch holds {frames} frames and {event_total} events, header says {} and {}",
                header.frame_count, header.event_count
            )),
        ));
    }
    Ok(frames_out)
}

/// Offset of the first valid batch header at or after `from` whose first position is at least
/// `min_position`, if any.
fn find_batch_header(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    min_position: u64,
) -> Result<Option<u64>, StoreError> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES + BATCH_HEADER_BYTES];
    let mut start = from;
    while start + BATCH_HEADER_BYTES as u64 <= file_len {
        let n = ((file_len - start) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], start)
            .map_err(|e| io_error(path, e))?;
        for i in 0..=(n - BATCH_HEADER_BYTES) {
            if chunk[i..i + 4] != *format::BATCH_MAGIC {
                continue;
            }
            if let Ok(header) = format::decode_batch_header(&chunk[i..i + BATCH_HEADER_BYTES])
                && header.first_position >= min_position
            {
                return Ok(Some(start + i as u64));
            }
        }
        // Overlap by a header so one straddling two chunks is still seen.
        start += (n - BATCH_HEADER_BYTES + 1) as u64;
    }
    Ok(None)
}

fn only_zeros_after(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
) -> Result<bool, StoreError> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let mut at = from;
    while at < file_len {
        let n = ((file_len - at) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], at)
            .map_err(|e| io_error(path, e))?;
        if chunk[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn truncate_tail(
    file: &File,
    path: &Path,
    offset: u64,
    file_len: u64,
    reason: &str,
    index: Index,
) -> Result<Index, StoreError> {
    tracing::warn!(
        file = %path.display(),
        offset,
        dropped_bytes = file_len - offset,
        reason,
        "truncating torn tail of the event log"
    );
    file.set_len(offset).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok(index)
}

/// A file shorter than its header was torn while being created: start it again.
fn init_header(file: &File, path: &Path, file_len: u64) -> Result<Recovered, StoreError> {
    if file_len > 0 {
        let mut existing = vec![0u8; file_len as usize];
        file.read_exact_at(&mut existing, 0)
            .map_err(|e| io_error(path, e))?;
        let header = format::file_header();
        let is_prefix = existing.iter().zip(header.iter()).all(|(a, b)| a == b);
        if !is_prefix && existing.iter().any(|b| *b != 0) {
            return Err(corrupt(path, 0, "not an allot log (bad file header)"));
        }
        tracing::warn!(file = %path.display(), file_len, "rewriting a torn file header");
    }
    file.set_len(0).map_err(|e| io_error(path, e))?;
    file.write_all_at(&format::file_header(), 0)
        .map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok(Recovered {
        index: Index::new(FILE_HEADER_BYTES),
        end: FILE_HEADER_BYTES,
    })
}

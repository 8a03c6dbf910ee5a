//! The data directory's files around the log: `store.id` (which log belongs here), creating a
//! new log whole, and migrating a format-1 log to format 2.
//!
//! Rules, each checked on every open:
//! - `events.log` missing while `store.id` or `index.snapshot` is there: the log was lost, not
//!   never made. Refused.
//! - `store.id` names the log id in the log's file header; another id means the log came from
//!   another data directory. Refused.
//! - `store.id` missing beside a format-2 log that holds batches: refused (a log without
//!   batches is a creation that stopped before writing it, and gets it).
//!
//! A new log is written whole to `events.log.tmp`, synced and renamed, so `events.log` never
//! exists half-created; `store.id` follows it the same way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use allot_domain::integrity::{self, MerkleTree};

use super::format::{
    self, BatchHeader, BatchSeal, EncodedEvent, HEAD_SLOTS, HeadSlot, LogFormat, SECTOR_BYTES,
};
use super::recovery::{self, Access, damage};
use super::snapshot::{self, SNAPSHOT_FILE_NAME};
use crate::store::{ProposedEvent, StoreError};

/// The log id of the log that belongs in the directory.
pub const STORE_ID_FILE_NAME: &str = "store.id";
/// A format-1 log, as it was before its migration to format 2.
pub const LOG_V1_FILE_NAME: &str = "events.log.v1";
/// A new or migrated log being written; never read.
pub const LOG_TEMP_FILE_NAME: &str = "events.log.tmp";
const STORE_ID_PREFIX: &str = "allot-store-id-v1 ";

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// The log id `store.id` records; `Err` (damage) if the file is there but unreadable as one.
pub(crate) fn read_store_id(dir: &Path) -> Result<Option<[u8; 16]>, StoreError> {
    let path = dir.join(STORE_ID_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, e)),
    };
    let parsed = text
        .strip_prefix(STORE_ID_PREFIX)
        .map(str::trim_end)
        .and_then(|hex_id| hex::decode(hex_id).ok())
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
    match parsed {
        Some(id) => Ok(Some(id)),
        None => Err(damage(
            &path,
            0,
            None,
            None,
            format!("not a store id file (expected `{STORE_ID_PREFIX}<32 hex digits>`)"),
        )),
    }
}

/// Writes `store.id` whole (temporary file, sync, rename, directory sync).
pub(crate) fn write_store_id(dir: &Path, log_id: &[u8; 16]) -> Result<(), StoreError> {
    let path = dir.join(STORE_ID_FILE_NAME);
    let temp = dir.join(format!("{STORE_ID_FILE_NAME}.tmp"));
    std::fs::write(&temp, format!("{STORE_ID_PREFIX}{}\n", hex::encode(log_id)))
        .and_then(|()| File::open(&temp)?.sync_all())
        .map_err(|e| io_error(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| io_error(&path, e))?;
    sync_dir(dir)
}

/// Refuses a directory whose log is gone: anything that only a log leaves behind is there.
pub(crate) fn refuse_missing_log(dir: &Path, log_path: &Path) -> Result<(), StoreError> {
    let witnesses: Vec<&str> = [STORE_ID_FILE_NAME, SNAPSHOT_FILE_NAME, LOG_V1_FILE_NAME]
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect();
    if witnesses.is_empty() {
        return Ok(());
    }
    Err(damage(
        log_path,
        0,
        Some(0),
        None,
        format!(
            "the log file is missing, but {} show this directory held one",
            witnesses.join(" and ")
        ),
    ))
}

/// Checks the log's id against `store.id` (format 2). `write_missing`: a serving open gives a
/// log without batches its `store.id`.
pub(crate) fn check_store_id(
    dir: &Path,
    log_path: &Path,
    log_id: [u8; 16],
    has_batches: bool,
    write_missing: bool,
) -> Result<(), StoreError> {
    match read_store_id(dir)? {
        Some(id) if id == log_id => Ok(()),
        Some(id) => Err(damage(
            log_path,
            16,
            Some(0),
            None,
            format!(
                "the log belongs to another data directory: its log id is {}, {} here says {}",
                hex::encode(log_id),
                STORE_ID_FILE_NAME,
                hex::encode(id)
            ),
        )),
        None if has_batches => Err(damage(
            &dir.join(STORE_ID_FILE_NAME),
            0,
            Some(0),
            None,
            format!(
                "{STORE_ID_FILE_NAME} is missing beside a log that holds events; restore it \
                 (its line is `{STORE_ID_PREFIX}{}`) if this log belongs here",
                hex::encode(log_id)
            ),
        )),
        None if write_missing => write_store_id(dir, &log_id),
        None => Ok(()),
    }
}

/// Creates an empty format-2 log with a fresh id, then `store.id`.
pub(crate) fn create_log(dir: &Path, log_path: &Path) -> Result<[u8; 16], StoreError> {
    let log_id: [u8; 16] = rand::random();
    let temp = dir.join(LOG_TEMP_FILE_NAME);
    let mut bytes = vec![0u8; LogFormat::V2.data_start() as usize];
    bytes[..SECTOR_BYTES as usize].copy_from_slice(&format::file_header_v2(&log_id));
    std::fs::write(&temp, &bytes)
        .and_then(|()| File::open(&temp)?.sync_all())
        .map_err(|e| io_error(&temp, e))?;
    std::fs::rename(&temp, log_path).map_err(|e| io_error(log_path, e))?;
    sync_dir(dir)?;
    write_store_id(dir, &log_id)?;
    tracing::info!(file = %log_path.display(), log_id = %hex::encode(log_id), "event log created");
    Ok(log_id)
}

/// Rewrites the format-1 log at `log_path` as format 2: the same events, batch for batch,
/// sealed and chained from a fresh log id (the one in `store.id` if a migration was cut short).
/// The original stays as `events.log.v1`; the index snapshot, whose offsets no longer hold, is
/// removed. A crash at any point leaves either the format-1 log in place (and the migration runs
/// again) or the finished format-2 log.
pub(crate) fn migrate_v1(dir: &Path, log: &File, log_path: &Path) -> Result<(), StoreError> {
    let file_len = log.metadata().map_err(|e| io_error(log_path, e))?.len();
    let recovered = recovery::recover(log, log_path, file_len, None, Access::Repair)?;
    let log_id = match read_store_id(dir)? {
        Some(id) => id,
        None => {
            let id: [u8; 16] = rand::random();
            write_store_id(dir, &id)?;
            id
        }
    };
    let temp = dir.join(LOG_TEMP_FILE_NAME);
    let out = File::create(&temp).map_err(|e| io_error(&temp, e))?;
    let mut writer = BufWriter::with_capacity(1 << 20, &out);
    let mut header_zone = vec![0u8; LogFormat::V2.data_start() as usize];
    header_zone[..SECTOR_BYTES as usize].copy_from_slice(&format::file_header_v2(&log_id));
    writer
        .write_all(&header_zone)
        .map_err(|e| io_error(&temp, e))?;

    let v1 = LogFormat::V1;
    let v1_header = v1.batch_header_bytes();
    let v2_header = LogFormat::V2.batch_header_bytes();
    let mut offset = v1.data_start();
    let mut out_offset = LogFormat::V2.data_start();
    let mut prev_chain = integrity::genesis(&log_id);
    let mut sequence = 0u64;
    let mut last_slot = None;
    let mut body = Vec::new();
    let mut buf = Vec::new();
    let end = recovered.end;
    while offset < end {
        let mut header_bytes = vec![0u8; v1_header];
        log.read_exact_at(&mut header_bytes, offset)
            .map_err(|e| io_error(log_path, e))?;
        let header = format::decode_batch_header(v1, &header_bytes)
            .map_err(|reason| damage(log_path, offset, None, None, reason.to_owned()))?;
        body.resize(header.body_len as usize, 0);
        log.read_exact_at(&mut body, offset + v1_header as u64)
            .map_err(|e| io_error(log_path, e))?;
        buf.clear();
        buf.resize(v2_header, 0);
        let mut leaves = Vec::new();
        let mut encoded: Vec<EncodedEvent> = Vec::new();
        let mut at = 0usize;
        while at < body.len() {
            let frame = format::decode_frame(v1, &body[at..])
                .map_err(|e| damage(log_path, offset, None, None, format!("{e:?}")))?;
            let events = frame
                .events
                .iter()
                .map(|e| {
                    let record = &body[at + e.offset..at + e.offset + e.len as usize];
                    format::decode_event(v1, record)
                        .map(|r| ProposedEvent {
                            id: r.id,
                            kind: r.kind.to_owned(),
                            payload: r.payload.to_vec(),
                        })
                        .map_err(|reason| damage(log_path, offset, None, None, reason.to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            format::encode_frame(
                &mut buf,
                frame.first_position,
                frame.first_version,
                frame.stream,
                &events,
                &mut encoded,
                &mut leaves,
            );
            at += frame.len as usize;
        }
        let tree = MerkleTree::new(leaves).ok_or_else(|| {
            damage(
                log_path,
                offset,
                None,
                None,
                "batch without events".to_owned(),
            )
        })?;
        let root = tree.root();
        let chain = integrity::chain(
            &prev_chain,
            header.first_position,
            header.event_count,
            &root,
        );
        let bytes = format::encode_batch_header(
            &BatchHeader {
                body_len: (buf.len() - v2_header) as u32,
                ..header
            },
            &BatchSeal {
                sequence,
                root,
                prev_chain,
                chain,
            },
        );
        buf[..v2_header].copy_from_slice(&bytes);
        writer.write_all(&buf).map_err(|e| io_error(&temp, e))?;
        last_slot = Some(HeadSlot {
            sequence,
            batch_offset: out_offset,
            batch_end: out_offset + buf.len() as u64,
            first_position: header.first_position,
            event_count: header.event_count,
            chain,
        });
        out_offset += buf.len() as u64;
        offset += (v1_header + header.body_len as usize) as u64;
        prev_chain = chain;
        sequence += 1;
    }
    writer.flush().map_err(|e| io_error(&temp, e))?;
    drop(writer);
    if let Some(slot) = last_slot {
        out.write_all_at(&format::encode_slot(&slot), slot.file_offset())
            .map_err(|e| io_error(&temp, e))?;
    }
    out.sync_all().map_err(|e| io_error(&temp, e))?;
    debug_assert!(sequence <= u64::MAX - HEAD_SLOTS);

    snapshot::remove(dir, SNAPSHOT_FILE_NAME);
    let kept = dir.join(LOG_V1_FILE_NAME);
    if !kept.exists() {
        std::fs::hard_link(log_path, &kept).map_err(|e| io_error(&kept, e))?;
    }
    std::fs::rename(&temp, log_path).map_err(|e| io_error(log_path, e))?;
    sync_dir(dir)?;
    tracing::warn!(
        file = %log_path.display(),
        events = recovered.index.len(),
        batches = sequence,
        kept = %kept.display(),
        log_id = %hex::encode(log_id),
        "event log migrated from format 1 to format 2; the original is kept"
    );
    Ok(())
}

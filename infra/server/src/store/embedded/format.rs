//! On-disk layout of the embedded log: `events.log` in the data directory, beside `store.id`.
//!
//! All integers are little-endian with the widths shown; offsets are in bytes. Two versions
//! exist. Format 2 is written; format 1 (no chain, no head record) is read (by the audit, and
//! by the open that migrates it to format 2, keeping the original as `events.log.v1`).
//!
//! ```text
//! format 2
//! file := file_header head_slot{7} batch*
//!
//! file_header (sector 0, 512 bytes)
//!    0   8  magic            b"ALLOTLOG"
//!    8   4  format_version   u32, = 2
//!   12   4  reserved         u32, = 0
//!   16  16  log_id           random, drawn when the log was created; also in `store.id`
//!   32   8  header_sum       blake3(file_header[0..32]), first 8 bytes
//!   40 472  zero
//!
//! head_slot i (sector 1 + i, 512 bytes; the slot of batch s is s mod 7), rewritten with every
//! batch, in the same fdatasync as the batch
//!    0   4  magic            b"ALHD"
//!    4   4  event_count      u32, events of batch s
//!    8   8  sequence         u64, s: the batch's number in this log, 0-based
//!   16   8  batch_offset     u64, where batch s starts (= where batch s-1 ends)
//!   24   8  batch_end        u64
//!   32   8  first_position   u64
//!   40  32  chain            chain value after batch s
//!   72   8  slot_sum         blake3(slot[0..72]), first 8 bytes
//!   80 432  zero
//!
//! batch := batch_header frame{frame_count}    one write and one fdatasync of the writer
//!
//! batch_header (144 bytes)
//!    0   4  magic            b"ALB2"
//!    4   4  body_len         u32, bytes of frames after this header
//!    8   8  first_position   u64, position of the batch's first event
//!   16   4  frame_count      u32, >= 1
//!   20   4  event_count      u32, >= frame_count
//!   24   8  sequence         u64
//!   32  32  root             Merkle root of the batch's event leaves (domain `integrity`)
//!   64  32  prev_chain       the chain value after the previous batch; genesis(log_id) for
//!                            batch 0
//!   96  32  chain            chain(prev_chain, first_position, event_count, root)
//!  128   8  reserved         = 0
//!  136   8  header_sum       blake3(batch_header[0..136]), first 8 bytes
//!
//! frame := one append, all of its events (26 + stream_len + events bytes)
//!    0   4  frame_len        u32, whole frame including this field
//!    4   8  first_position   u64
//!   12   8  first_version    u64
//!   20   4  event_count      u32, >= 1
//!   24   2  stream_len       u16
//!   26   .  stream           UTF-8
//!    .   .  event{event_count}
//!
//! event (58 + kind_len + payload_len bytes)
//!    0  32  leaf             leaf(position, version, stream, id, kind, payload): checked by
//!                            every scan (open, the background verifier, the audit)
//!   32   4  record_sum       CRC-32 (IEEE) of the record without this field: checked on every
//!                            read, so no damaged byte is served wherever it is read from
//!   36  16  id
//!   52   2  kind_len         u16
//!   54   4  payload_len      u32
//!   58   .  kind             UTF-8
//!    .   .  payload
//! ```
//!
//! Format 1: a 16-byte file header (magic, version 1, reserved), no head slots; batch header of
//! 32 bytes (magic b"ALB1", body_len, first_position, frame_count, event_count, header_sum at
//! 24); frames with a 16-byte `frame_sum` (blake3(frame[20..]) at 4) and their fields 16 bytes
//! later (fixed part 42 bytes); events without a leaf (fixed part 22 bytes).
//!
//! The event at index `i` of a frame has position `first_position + i` and version
//! `first_version + i`. Invariants a reader checks: every header sum; positions contiguous from
//! 0 across batches and frames; versions contiguous per stream; a batch's frames hold exactly its
//! counts; in format 2 the stored leaves give the header's root, the root and the previous chain
//! value give the header's chain, sequences count up from 0, and each stored leaf equals the leaf
//! of the record's bytes.

use allot_domain::integrity::{Digest, EventEntry, Seal};

use crate::store::ProposedEvent;

pub(crate) const FILE_MAGIC: &[u8; 8] = b"ALLOTLOG";
pub(crate) const BATCH_MAGIC_V1: &[u8; 4] = b"ALB1";
pub(crate) const BATCH_MAGIC_V2: &[u8; 4] = b"ALB2";
const SLOT_MAGIC: &[u8; 4] = b"ALHD";

/// Sector size the head slots are spread over, so a torn write of one slot leaves the others.
pub const SECTOR_BYTES: u64 = 512;
/// Head slots after the file header.
pub const HEAD_SLOTS: u64 = 7;
const FILE_HEADER_V1_BYTES: u64 = 16;
const FILE_HEADER_SUM_OFFSET: usize = 32;
const SLOT_BYTES: usize = 80;
const SLOT_SUM_OFFSET: usize = 72;

const BATCH_HEADER_V1_BYTES: usize = 32;
const BATCH_HEADER_V2_BYTES: usize = 144;
/// The largest batch header of any version.
pub const BATCH_HEADER_BYTES_MAX: usize = BATCH_HEADER_V2_BYTES;

const FRAME_V1_FIXED_BYTES: usize = 42;
const FRAME_V1_SUM_END: usize = 20;
const FRAME_V2_FIXED_BYTES: usize = 26;
const EVENT_V1_FIXED_BYTES: usize = 22;
const EVENT_V2_FIXED_BYTES: usize = 58;
const LEAF_BYTES: usize = 32;
const RECORD_SUM_END: usize = LEAF_BYTES + 4;

/// Largest encoded append (frame); a larger append is rejected before it is queued.
pub const FRAME_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Largest batch body; the writer stops draining its queue before a batch would exceed it. Twice
/// the largest frame, so any single frame fits.
pub const BATCH_BODY_BYTES_MAX: u64 = 2 * FRAME_BYTES_MAX;

/// Which layout a log file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    V1,
    V2,
}

impl LogFormat {
    pub fn number(self) -> u32 {
        match self {
            LogFormat::V1 => 1,
            LogFormat::V2 => 2,
        }
    }

    /// Offset of the first batch.
    pub const fn data_start(self) -> u64 {
        match self {
            LogFormat::V1 => FILE_HEADER_V1_BYTES,
            LogFormat::V2 => SECTOR_BYTES * (1 + HEAD_SLOTS),
        }
    }

    pub const fn batch_header_bytes(self) -> usize {
        match self {
            LogFormat::V1 => BATCH_HEADER_V1_BYTES,
            LogFormat::V2 => BATCH_HEADER_V2_BYTES,
        }
    }

    fn batch_magic(self) -> &'static [u8; 4] {
        match self {
            LogFormat::V1 => BATCH_MAGIC_V1,
            LogFormat::V2 => BATCH_MAGIC_V2,
        }
    }

    fn frame_fixed_bytes(self) -> usize {
        match self {
            LogFormat::V1 => FRAME_V1_FIXED_BYTES,
            LogFormat::V2 => FRAME_V2_FIXED_BYTES,
        }
    }

    fn event_fixed_bytes(self) -> usize {
        match self {
            LogFormat::V1 => EVENT_V1_FIXED_BYTES,
            LogFormat::V2 => EVENT_V2_FIXED_BYTES,
        }
    }
}

/// The file header of a new format-2 log.
pub(crate) fn file_header_v2(log_id: &[u8; 16]) -> [u8; SECTOR_BYTES as usize] {
    let mut header = [0u8; SECTOR_BYTES as usize];
    header[0..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&LogFormat::V2.number().to_le_bytes());
    header[16..32].copy_from_slice(log_id);
    let sum = blake3::hash(&header[..FILE_HEADER_SUM_OFFSET]);
    header[FILE_HEADER_SUM_OFFSET..FILE_HEADER_SUM_OFFSET + 8]
        .copy_from_slice(&sum.as_bytes()[..8]);
    header
}

/// A file header as read back: the format, and the log id (format 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    pub format: LogFormat,
    pub log_id: Option<[u8; 16]>,
}

/// Decodes the first bytes of a log (at least 16; 40 for format 2).
pub(crate) fn decode_file_header(bytes: &[u8]) -> Result<FileHeader, &'static str> {
    if bytes.len() < FILE_HEADER_V1_BYTES as usize || &bytes[0..8] != FILE_MAGIC {
        return Err("not an allot log (bad file header magic)");
    }
    match le_u32(&bytes[8..12]) {
        1 if bytes[12..16] == [0; 4] => Ok(FileHeader {
            format: LogFormat::V1,
            log_id: None,
        }),
        2 => {
            let header = bytes
                .get(..FILE_HEADER_SUM_OFFSET + 8)
                .ok_or("file header shorter than format 2 needs")?;
            let sum = blake3::hash(&header[..FILE_HEADER_SUM_OFFSET]);
            if header[FILE_HEADER_SUM_OFFSET..] != sum.as_bytes()[..8] {
                return Err("file header checksum mismatch");
            }
            let mut log_id = [0u8; 16];
            log_id.copy_from_slice(&header[16..32]);
            Ok(FileHeader {
                format: LogFormat::V2,
                log_id: Some(log_id),
            })
        }
        _ => Err("unknown log format version"),
    }
}

/// One head slot: the durable record, written with batch `sequence`, that the batch was
/// written and so that every batch before it was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSlot {
    pub sequence: u64,
    pub batch_offset: u64,
    pub batch_end: u64,
    pub first_position: u64,
    pub event_count: u32,
    pub chain: Digest,
}

impl HeadSlot {
    /// Offset of this slot's sector in the file.
    pub fn file_offset(&self) -> u64 {
        slot_offset(self.sequence % HEAD_SLOTS)
    }
}

/// Offset of head slot `i`.
pub fn slot_offset(i: u64) -> u64 {
    SECTOR_BYTES * (1 + i)
}

pub(crate) fn encode_slot(slot: &HeadSlot) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(SLOT_MAGIC);
    b[4..8].copy_from_slice(&slot.event_count.to_le_bytes());
    b[8..16].copy_from_slice(&slot.sequence.to_le_bytes());
    b[16..24].copy_from_slice(&slot.batch_offset.to_le_bytes());
    b[24..32].copy_from_slice(&slot.batch_end.to_le_bytes());
    b[32..40].copy_from_slice(&slot.first_position.to_le_bytes());
    b[40..72].copy_from_slice(&slot.chain);
    let sum = blake3::hash(&b[..SLOT_SUM_OFFSET]);
    b[SLOT_SUM_OFFSET..].copy_from_slice(&sum.as_bytes()[..8]);
    b
}

/// A head slot as read: never written (all zeros), valid, or damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRead {
    Empty,
    Valid(HeadSlot),
    Damaged(&'static str),
}

pub(crate) fn decode_slot(bytes: &[u8]) -> SlotRead {
    let Some(b) = bytes.get(..SLOT_BYTES) else {
        return SlotRead::Damaged("short head slot");
    };
    if b.iter().all(|x| *x == 0) {
        return SlotRead::Empty;
    }
    if &b[0..4] != SLOT_MAGIC {
        return SlotRead::Damaged("bad head slot magic");
    }
    let sum = blake3::hash(&b[..SLOT_SUM_OFFSET]);
    if b[SLOT_SUM_OFFSET..] != sum.as_bytes()[..8] {
        return SlotRead::Damaged("head slot checksum mismatch");
    }
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&b[40..72]);
    SlotRead::Valid(HeadSlot {
        event_count: le_u32(&b[4..8]),
        sequence: le_u64(&b[8..16]),
        batch_offset: le_u64(&b[16..24]),
        batch_end: le_u64(&b[24..32]),
        first_position: le_u64(&b[32..40]),
        chain,
    })
}

/// Encoded size of one append in format 2.
pub(crate) fn frame_len(stream: &str, events: &[ProposedEvent]) -> u64 {
    let events_bytes: u64 = events
        .iter()
        .map(|e| (EVENT_V2_FIXED_BYTES + e.kind.len() + e.payload.len()) as u64)
        .sum();
    FRAME_V2_FIXED_BYTES as u64 + stream.len() as u64 + events_bytes
}

/// Where one event's record sits, relative to the start of the buffer it was encoded into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodedEvent {
    pub offset: usize,
    pub len: u32,
}

/// Appends one format-2 frame to `buf`, and each event's leaf to `leaves`. The caller has
/// validated the limits (lengths fit their fields).
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    first_position: u64,
    first_version: u64,
    stream: &str,
    events: &[ProposedEvent],
    out: &mut Vec<EncodedEvent>,
    leaves: &mut Vec<Digest>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&first_position.to_le_bytes());
    buf.extend_from_slice(&first_version.to_le_bytes());
    buf.extend_from_slice(&(events.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    buf.extend_from_slice(stream.as_bytes());
    for (i, event) in events.iter().enumerate() {
        let offset = buf.len();
        let leaf = EventEntry {
            position: first_position + i as u64,
            version: first_version + i as u64,
            stream,
            id: event.id,
            kind: &event.kind,
            payload: &event.payload,
        }
        .leaf();
        leaves.push(leaf);
        buf.extend_from_slice(&leaf);
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(&event.id);
        buf.extend_from_slice(&(event.kind.len() as u16).to_le_bytes());
        buf.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(event.kind.as_bytes());
        buf.extend_from_slice(&event.payload);
        let sum = record_sum(&buf[offset..]);
        buf[offset + LEAF_BYTES..offset + RECORD_SUM_END].copy_from_slice(&sum.to_le_bytes());
        out.push(EncodedEvent {
            offset,
            len: (buf.len() - offset) as u32,
        });
    }
    let frame_len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&frame_len.to_le_bytes());
}

/// What a format-2 batch header adds: its place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSeal {
    pub sequence: u64,
    pub root: Digest,
    pub prev_chain: Digest,
    pub chain: Digest,
}

/// A batch header as read back (`seal` is `Some` exactly in format 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub body_len: u32,
    pub first_position: u64,
    pub frame_count: u32,
    pub event_count: u32,
    pub seal: Option<BatchSeal>,
}

impl BatchHeader {
    /// What a format-2 header records of its place in the chain: its sequence and seal.
    pub(crate) fn sealed(&self) -> Option<(u64, Seal)> {
        self.seal.map(|seal| {
            (
                seal.sequence,
                Seal {
                    first_position: self.first_position,
                    event_count: self.event_count,
                    root: seal.root,
                    prev_chain: seal.prev_chain,
                    chain: seal.chain,
                },
            )
        })
    }
}

/// Encodes a format-2 batch header (the one the writer writes).
pub(crate) fn encode_batch_header(
    header: &BatchHeader,
    seal: &BatchSeal,
) -> [u8; BATCH_HEADER_V2_BYTES] {
    let mut bytes = [0u8; BATCH_HEADER_V2_BYTES];
    bytes[0..4].copy_from_slice(BATCH_MAGIC_V2);
    bytes[4..8].copy_from_slice(&header.body_len.to_le_bytes());
    bytes[8..16].copy_from_slice(&header.first_position.to_le_bytes());
    bytes[16..20].copy_from_slice(&header.frame_count.to_le_bytes());
    bytes[20..24].copy_from_slice(&header.event_count.to_le_bytes());
    bytes[24..32].copy_from_slice(&seal.sequence.to_le_bytes());
    bytes[32..64].copy_from_slice(&seal.root);
    bytes[64..96].copy_from_slice(&seal.prev_chain);
    bytes[96..128].copy_from_slice(&seal.chain);
    let sum = blake3::hash(&bytes[..136]);
    bytes[136..].copy_from_slice(&sum.as_bytes()[..8]);
    bytes
}

/// Decodes a batch header of `format`; `Err` says why it is not one (damaged or never fully
/// written).
pub(crate) fn decode_batch_header(
    format: LogFormat,
    bytes: &[u8],
) -> Result<BatchHeader, &'static str> {
    let size = format.batch_header_bytes();
    if bytes.len() < size {
        return Err("short batch header");
    }
    if &bytes[0..4] != format.batch_magic() {
        return Err("bad batch magic");
    }
    let sum_at = size - 8;
    let sum = blake3::hash(&bytes[..sum_at]);
    if bytes[sum_at..size] != sum.as_bytes()[..8] {
        return Err("batch header checksum mismatch");
    }
    let seal = match format {
        LogFormat::V1 => None,
        LogFormat::V2 => {
            let digest = |range: std::ops::Range<usize>| {
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes[range]);
                d
            };
            Some(BatchSeal {
                sequence: le_u64(&bytes[24..32]),
                root: digest(32..64),
                prev_chain: digest(64..96),
                chain: digest(96..128),
            })
        }
    };
    let header = BatchHeader {
        body_len: le_u32(&bytes[4..8]),
        first_position: le_u64(&bytes[8..16]),
        frame_count: le_u32(&bytes[16..20]),
        event_count: le_u32(&bytes[20..24]),
        seal,
    };
    if header.frame_count == 0 || header.event_count < header.frame_count {
        return Err("batch header counts out of range");
    }
    if u64::from(header.body_len) > BATCH_BODY_BYTES_MAX
        || (header.body_len as usize) < format.frame_fixed_bytes() * header.frame_count as usize
    {
        return Err("batch body length out of range");
    }
    Ok(header)
}

/// Whether `bytes` starts with the magic of a batch header of `format` (a cheap pre-check
/// before [`decode_batch_header`] when searching for one).
pub(crate) fn has_batch_magic(format: LogFormat, bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(format.batch_magic().as_slice())
}

/// One decoded frame; `events` are `(offset within the frame, record length)`.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub len: u32,
    pub first_position: u64,
    pub first_version: u64,
    pub stream: &'a str,
    pub events: Vec<EncodedEvent>,
}

/// A frame that failed verification, with the reason.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// Length, checksum or leaf wrong: the bytes are not what the writer wrote.
    Damaged(String),
    /// Checksum right but the content is not a valid frame: a writer bug, never a torn write
    /// (format 1; format 2 has no frame checksum, so its structural faults are damage).
    Malformed(String),
}

/// Decodes the frame at the start of `bytes` (format 1: also verifies its checksum; format 2:
/// structure only, the leaves are checked by the caller).
pub(crate) fn decode_frame(format: LogFormat, bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let fixed_len = format.frame_fixed_bytes();
    if bytes.len() < fixed_len {
        return Err(FrameError::Damaged(format!(
            "{} bytes left, too few for a frame",
            bytes.len()
        )));
    }
    let len = le_u32(&bytes[0..4]);
    if (len as usize) < fixed_len || len as usize > bytes.len() || u64::from(len) > FRAME_BYTES_MAX
    {
        return Err(FrameError::Damaged(format!(
            "frame length {len} out of range"
        )));
    }
    let frame = &bytes[..len as usize];
    // Where the fields start: format 1 has its checksum first.
    let fields = match format {
        LogFormat::V1 => {
            let sum = blake3::hash(&frame[FRAME_V1_SUM_END..]);
            if frame[4..FRAME_V1_SUM_END] != sum.as_bytes()[..16] {
                return Err(FrameError::Damaged("frame checksum mismatch".to_owned()));
            }
            FRAME_V1_SUM_END
        }
        LogFormat::V2 => 4,
    };
    let malformed = |reason: &str| match format {
        LogFormat::V1 => FrameError::Malformed(reason.to_owned()),
        LogFormat::V2 => FrameError::Damaged(reason.to_owned()),
    };
    let first_position = le_u64(&frame[fields..fields + 8]);
    let first_version = le_u64(&frame[fields + 8..fields + 16]);
    let event_count = le_u32(&frame[fields + 16..fields + 20]);
    let stream_len = usize::from(le_u16(&frame[fields + 20..fields + 22]));
    if event_count == 0 {
        return Err(malformed("frame without events"));
    }
    let stream_end = fixed_len + stream_len;
    let stream = frame
        .get(fixed_len..stream_end)
        .ok_or_else(|| malformed("stream name past frame end"))?;
    let stream = std::str::from_utf8(stream).map_err(|_| malformed("stream name not UTF-8"))?;
    if stream.is_empty() {
        return Err(malformed("empty stream name"));
    }
    let event_fixed = format.event_fixed_bytes();
    // Bounded by what the frame can hold, whatever the count field says.
    let mut events = Vec::with_capacity((event_count as usize).min(frame.len() / event_fixed));
    let mut at = stream_end;
    for _ in 0..event_count {
        let record = frame
            .get(at..)
            .and_then(|rest| event_record_len(format, rest).map(|len| (rest, len)))
            .and_then(|(rest, len)| rest.get(..len))
            .ok_or_else(|| malformed("event past frame end"))?;
        let kind_len = usize::from(le_u16(&record[event_fixed - 6..event_fixed - 4]));
        std::str::from_utf8(&record[event_fixed..event_fixed + kind_len])
            .map_err(|_| malformed("event kind not UTF-8"))?;
        events.push(EncodedEvent {
            offset: at,
            len: record.len() as u32,
        });
        at += record.len();
    }
    if at != frame.len() {
        return Err(malformed("bytes after the last event of the frame"));
    }
    Ok(Frame {
        len,
        first_position,
        first_version,
        stream,
        events,
    })
}

/// The length of the event record at the start of `bytes`, from its fixed part.
fn event_record_len(format: LogFormat, bytes: &[u8]) -> Option<usize> {
    let fixed = format.event_fixed_bytes();
    let head = bytes.get(..fixed)?;
    let kind_len = usize::from(le_u16(&head[fixed - 6..fixed - 4]));
    let payload_len = le_u32(&head[fixed - 4..fixed]) as usize;
    Some(fixed + kind_len + payload_len)
}

/// One event record's fields, borrowed from its bytes.
pub(crate) struct EventRecord<'a> {
    /// The stored leaf (format 2).
    pub leaf: Option<&'a [u8]>,
    /// Whether the record's sum holds (format 2; format 1 records carry none).
    sum_holds: bool,
    pub id: [u8; 16],
    pub kind: &'a str,
    pub payload: &'a [u8],
}

impl EventRecord<'_> {
    /// Checks the record's sum: what every read does before a byte of it is served.
    pub fn check_sum(&self, position: u64) -> Result<(), String> {
        if self.sum_holds {
            Ok(())
        } else {
            Err(format!(
                "event at position {position}: record checksum mismatch"
            ))
        }
    }

    /// Checks the stored leaf against the record's bytes and where the index says it is
    /// (format 2; format 1 records carry none and pass).
    pub fn check_leaf(&self, position: u64, version: u64, stream: &str) -> Result<(), String> {
        let Some(stored) = self.leaf else {
            return Ok(());
        };
        let leaf = EventEntry {
            position,
            version,
            stream,
            id: self.id,
            kind: self.kind,
            payload: self.payload,
        }
        .leaf();
        if stored == leaf {
            Ok(())
        } else {
            Err(format!(
                "event at position {position} (stream {stream}, version {version}) does not match its leaf"
            ))
        }
    }

    /// The stored leaf as a digest, if any.
    pub fn stored_leaf(&self) -> Option<Digest> {
        let mut leaf = [0u8; 32];
        leaf.copy_from_slice(self.leaf?);
        Some(leaf)
    }
}

/// Decodes an event record of `format` (lengths, and whether its sum holds;
/// [`EventRecord::check_sum`] and [`EventRecord::check_leaf`] verify).
pub(crate) fn decode_event(
    format: LogFormat,
    record: &[u8],
) -> Result<EventRecord<'_>, &'static str> {
    let fixed = format.event_fixed_bytes();
    let head = record.get(..fixed).ok_or("short event record")?;
    let (leaf, id_at) = match format {
        LogFormat::V1 => (None, 0),
        LogFormat::V2 => (Some(&head[..LEAF_BYTES]), RECORD_SUM_END),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&head[id_at..id_at + 16]);
    let kind_len = usize::from(le_u16(&head[fixed - 6..fixed - 4]));
    let payload_len = le_u32(&head[fixed - 4..fixed]) as usize;
    let kind_end = fixed + kind_len;
    if record.len() != kind_end + payload_len {
        return Err("event record length mismatch");
    }
    let kind = std::str::from_utf8(&record[fixed..kind_end]).map_err(|_| "event kind not UTF-8")?;
    Ok(EventRecord {
        leaf,
        sum_holds: match format {
            LogFormat::V1 => true,
            LogFormat::V2 => record_sum(record) == le_u32(&record[LEAF_BYTES..RECORD_SUM_END]),
        },
        id,
        kind,
        payload: &record[kind_end..],
    })
}

/// CRC-32 of a format-2 record without its sum field.
fn record_sum(record: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record[..LEAF_BYTES]);
    crc.update(&record[RECORD_SUM_END..]);
    crc.finalize()
}

pub(super) fn le_u16(bytes: &[u8]) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[..2]);
    u16::from_le_bytes(b)
}

pub(super) fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

pub(super) fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// Format 1 encoders, kept for tests that build format-1 logs (the reader's other input).
#[cfg(test)]
pub(crate) mod v1 {
    use super::*;

    pub fn file_header() -> [u8; FILE_HEADER_V1_BYTES as usize] {
        let mut header = [0u8; FILE_HEADER_V1_BYTES as usize];
        header[0..8].copy_from_slice(FILE_MAGIC);
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        header
    }

    pub fn encode_frame(
        buf: &mut Vec<u8>,
        first_position: u64,
        first_version: u64,
        stream: &str,
        events: &[ProposedEvent],
    ) {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; FRAME_V1_SUM_END]);
        buf.extend_from_slice(&first_position.to_le_bytes());
        buf.extend_from_slice(&first_version.to_le_bytes());
        buf.extend_from_slice(&(events.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(stream.len() as u16).to_le_bytes());
        buf.extend_from_slice(stream.as_bytes());
        for event in events {
            buf.extend_from_slice(&event.id);
            buf.extend_from_slice(&(event.kind.len() as u16).to_le_bytes());
            buf.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(event.kind.as_bytes());
            buf.extend_from_slice(&event.payload);
        }
        let frame_len = (buf.len() - start) as u32;
        let sum = blake3::hash(&buf[start + FRAME_V1_SUM_END..]);
        buf[start..start + 4].copy_from_slice(&frame_len.to_le_bytes());
        buf[start + 4..start + FRAME_V1_SUM_END].copy_from_slice(&sum.as_bytes()[..16]);
    }

    pub fn encode_batch_header(header: &BatchHeader) -> [u8; BATCH_HEADER_V1_BYTES] {
        let mut bytes = [0u8; BATCH_HEADER_V1_BYTES];
        bytes[0..4].copy_from_slice(BATCH_MAGIC_V1);
        bytes[4..8].copy_from_slice(&header.body_len.to_le_bytes());
        bytes[8..16].copy_from_slice(&header.first_position.to_le_bytes());
        bytes[16..20].copy_from_slice(&header.frame_count.to_le_bytes());
        bytes[20..24].copy_from_slice(&header.event_count.to_le_bytes());
        let sum = blake3::hash(&bytes[..24]);
        bytes[24..].copy_from_slice(&sum.as_bytes()[..8]);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &[u8]) -> ProposedEvent {
        ProposedEvent {
            id: [7; 16],
            kind: kind.to_owned(),
            payload: payload.to_vec(),
        }
    }

    /// Decodes a format-2 frame and checks each record's leaf, as a reader does.
    fn read_v2(buf: &[u8]) -> Result<(), String> {
        let frame = decode_frame(LogFormat::V2, buf).map_err(|e| format!("{e:?}"))?;
        for (i, e) in frame.events.iter().enumerate() {
            let record = decode_event(LogFormat::V2, &buf[e.offset..e.offset + e.len as usize])?;
            record.check_sum(frame.first_position + i as u64)?;
            record.check_leaf(
                frame.first_position + i as u64,
                frame.first_version + i as u64,
                frame.stream,
            )?;
        }
        Ok(())
    }

    #[test]
    fn frame_round_trips_and_any_flipped_byte_is_detected() {
        let events = [event("Reserved", b"abc"), event("Confirmed", b"")];
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut leaves = Vec::new();
        encode_frame(&mut buf, 10, 3, "pool-a", &events, &mut out, &mut leaves);
        assert_eq!(buf.len() as u64, frame_len("pool-a", &events));
        let frame = decode_frame(LogFormat::V2, &buf).unwrap();
        assert_eq!(
            (frame.first_position, frame.first_version, frame.stream),
            (10, 3, "pool-a")
        );
        let second = &buf[out[1].offset..out[1].offset + out[1].len as usize];
        let record = decode_event(LogFormat::V2, second).unwrap();
        assert_eq!((record.kind, record.payload), ("Confirmed", &b""[..]));
        assert_eq!(record.stored_leaf(), Some(leaves[1]));
        read_v2(&buf).unwrap();
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x01;
            assert!(read_v2(&damaged).is_err(), "flip at {i} not detected");
        }
        // A read checks only the record's sum: alone, it catches any flip of the record.
        for e in &out {
            for i in e.offset..e.offset + e.len as usize {
                let mut damaged = buf.clone();
                damaged[i] ^= 0x01;
                let record = &damaged[e.offset..e.offset + e.len as usize];
                let caught = decode_event(LogFormat::V2, record)
                    .map_err(str::to_owned)
                    .and_then(|r| r.check_sum(0));
                assert!(caught.is_err(), "flip at {i} passes a read");
            }
        }
    }

    #[test]
    fn format_one_frames_still_verify() {
        let events = [event("Reserved", b"abc")];
        let mut buf = Vec::new();
        v1::encode_frame(&mut buf, 4, 0, "pool-a", &events);
        let frame = decode_frame(LogFormat::V1, &buf).unwrap();
        assert_eq!((frame.first_position, frame.stream), (4, "pool-a"));
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x01;
            assert!(
                decode_frame(LogFormat::V1, &damaged).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn headers_and_slots_detect_any_flipped_byte() {
        let header = BatchHeader {
            body_len: 100,
            first_position: 5,
            frame_count: 2,
            event_count: 3,
            seal: None,
        };
        let seal = BatchSeal {
            sequence: 9,
            root: [1; 32],
            prev_chain: [4; 32],
            chain: [2; 32],
        };
        let bytes = encode_batch_header(&header, &seal);
        assert_eq!(
            decode_batch_header(LogFormat::V2, &bytes),
            Ok(BatchHeader {
                seal: Some(seal),
                ..header
            })
        );
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 0x80;
            assert!(
                decode_batch_header(LogFormat::V2, &damaged).is_err(),
                "flip at {i}"
            );
        }
        let v1 = v1::encode_batch_header(&header);
        assert_eq!(decode_batch_header(LogFormat::V1, &v1), Ok(header));
        let slot = HeadSlot {
            sequence: 8,
            batch_offset: 4096,
            batch_end: 5000,
            first_position: 40,
            event_count: 3,
            chain: [3; 32],
        };
        let encoded = encode_slot(&slot);
        assert_eq!(decode_slot(&encoded), SlotRead::Valid(slot));
        assert_eq!(decode_slot(&[0u8; SLOT_BYTES]), SlotRead::Empty);
        for i in 0..encoded.len() {
            let mut damaged = encoded;
            damaged[i] ^= 0x04;
            assert!(
                matches!(decode_slot(&damaged), SlotRead::Damaged(_)),
                "flip at {i}"
            );
        }
        let file = file_header_v2(&[5; 16]);
        assert_eq!(
            decode_file_header(&file),
            Ok(FileHeader {
                format: LogFormat::V2,
                log_id: Some([5; 16])
            })
        );
        for i in 0..40 {
            let mut damaged = file;
            damaged[i] ^= 0x10;
            assert!(decode_file_header(&damaged).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn docs_store_md_draws_this_layout() {
        let source = include_str!("format.rs");
        let doc = include_str!("../../../../../docs/store.md");
        let drawing = |text: &str| -> Option<String> {
            let start = text.find("```text")?;
            let end = start + 7 + text[start + 7..].find("```")?;
            Some(text[start..end].to_owned())
        };
        let from_source: String = source
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .map(|line| {
                line.strip_prefix("//! ")
                    .unwrap_or(line.trim_start_matches("//!"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            drawing(doc),
            drawing(&from_source),
            "docs/store.md's record format differs from format.rs"
        );
    }
}

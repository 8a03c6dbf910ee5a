//! The embedded log's layout as `docs/store.md` and the store's format module document it, read
//! here on its own so tests can aim damage at one field of one batch, frame or record and say
//! where the store must report it. Only for logs the store wrote whole: it panics on anything
//! else.

use allot_server::store::embedded::{
    BATCH_HEADER_BYTES, FILE_HEADER_BYTES, HEAD_SLOTS, SECTOR_BYTES,
};

/// Bytes of a frame before its stream name.
pub const FRAME_FIXED_BYTES: u64 = 26;
/// Bytes of an event record before its kind.
pub const EVENT_FIXED_BYTES: u64 = 58;

/// A field: its offset inside the structure it belongs to and its width.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub at: u64,
    pub len: u64,
}

const fn field(name: &'static str, at: u64, len: u64) -> Field {
    Field { name, at, len }
}

/// The file header's checked part (magic, version, reserved, log id, checksum).
pub const FILE_HEADER_FIELDS: [Field; 5] = [
    field("file magic", 0, 8),
    field("file format version", 8, 4),
    field("file reserved", 12, 4),
    field("log id", 16, 16),
    field("file header checksum", 32, 8),
];

/// A head slot's fields, from the start of its sector.
pub const SLOT_FIELDS: [Field; 8] = [
    field("slot magic", 0, 4),
    field("slot event count", 4, 4),
    field("slot sequence", 8, 8),
    field("slot batch offset", 16, 8),
    field("slot batch end", 24, 8),
    field("slot first position", 32, 8),
    field("slot chain", 40, 32),
    field("slot checksum", 72, 8),
];

/// A batch header's fields.
pub const BATCH_FIELDS: [Field; 11] = [
    field("batch magic", 0, 4),
    field("batch body length", 4, 4),
    field("batch first position", 8, 8),
    field("batch frame count", 16, 4),
    field("batch event count", 20, 4),
    field("batch sequence", 24, 8),
    field("batch root", 32, 32),
    field("batch previous chain value", 64, 32),
    field("batch chain value", 96, 32),
    field("batch reserved", 128, 8),
    field("batch header checksum", 136, 8),
];

/// A frame's fixed fields (the stream name follows them).
pub const FRAME_FIELDS: [Field; 5] = [
    field("frame length", 0, 4),
    field("frame first position", 4, 8),
    field("frame first version", 12, 8),
    field("frame event count", 20, 4),
    field("frame stream length", 24, 2),
];

/// An event record's fixed fields (kind and payload follow them).
pub const EVENT_FIELDS: [Field; 5] = [
    field("event leaf", 0, 32),
    field("event record sum", 32, 4),
    field("event id", 36, 16),
    field("event kind length", 52, 2),
    field("event payload length", 54, 4),
];

/// One event record.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: u64,
    pub len: u64,
    pub position: u64,
    pub kind_len: u64,
    pub payload_len: u64,
}

impl Record {
    /// Where the kind starts.
    pub fn kind_at(&self) -> u64 {
        self.offset + EVENT_FIXED_BYTES
    }

    /// Where the payload starts.
    pub fn payload_at(&self) -> u64 {
        self.kind_at() + self.kind_len
    }
}

/// One frame (one append).
#[derive(Debug, Clone)]
pub struct Frame {
    pub offset: u64,
    pub len: u64,
    pub first_position: u64,
    pub first_version: u64,
    pub stream: String,
    pub stream_len: u64,
    pub records: Vec<Record>,
}

/// One batch (one write and fdatasync of the writer).
#[derive(Debug, Clone)]
pub struct Batch {
    pub offset: u64,
    pub end: u64,
    pub sequence: u64,
    pub first_position: u64,
    pub event_count: u64,
    pub frames: Vec<Frame>,
}

impl Batch {
    /// Positions of its events.
    pub fn positions(&self) -> std::ops::Range<u64> {
        self.first_position..self.first_position + self.event_count
    }
}

fn le(bytes: &[u8], at: u64, len: u64) -> u64 {
    let mut value = [0u8; 8];
    value[..len as usize].copy_from_slice(&bytes[at as usize..(at + len) as usize]);
    u64::from_le_bytes(value)
}

/// Offset of head slot `i`.
pub fn slot_offset(i: u64) -> u64 {
    assert!(i < HEAD_SLOTS);
    SECTOR_BYTES * (1 + i)
}

/// The batches of a whole format-2 log, in order.
pub fn batches(log: &[u8]) -> Vec<Batch> {
    assert_eq!(&log[..8], b"ALLOTLOG", "not an allot log");
    assert_eq!(le(log, 8, 4), 2, "not a format-2 log");
    let mut out = Vec::new();
    let mut offset = FILE_HEADER_BYTES;
    let mut position = 0;
    while offset < log.len() as u64 {
        assert_eq!(
            &log[offset as usize..offset as usize + 4],
            b"ALB2",
            "batch at {offset}"
        );
        let body_len = le(log, offset + 4, 4);
        let first_position = le(log, offset + 8, 8);
        let frame_count = le(log, offset + 16, 4);
        let event_count = le(log, offset + 20, 4);
        let sequence = le(log, offset + 24, 8);
        assert_eq!(first_position, position, "batch at {offset}");
        let end = offset + BATCH_HEADER_BYTES as u64 + body_len;
        let mut frames = Vec::new();
        let mut at = offset + BATCH_HEADER_BYTES as u64;
        while at < end {
            let len = le(log, at, 4);
            let frame_position = le(log, at + 4, 8);
            let first_version = le(log, at + 12, 8);
            let count = le(log, at + 20, 4);
            let stream_len = le(log, at + 24, 2);
            let stream_at = (at + FRAME_FIXED_BYTES) as usize;
            let stream =
                String::from_utf8(log[stream_at..stream_at + stream_len as usize].to_vec())
                    .expect("stream name");
            let mut records = Vec::new();
            let mut record = at + FRAME_FIXED_BYTES + stream_len;
            for i in 0..count {
                let kind_len = le(log, record + 52, 2);
                let payload_len = le(log, record + 54, 4);
                let len = EVENT_FIXED_BYTES + kind_len + payload_len;
                records.push(Record {
                    offset: record,
                    len,
                    position: frame_position + i,
                    kind_len,
                    payload_len,
                });
                record += len;
            }
            assert_eq!(record, at + len, "frame at {at}");
            frames.push(Frame {
                offset: at,
                len,
                first_position: frame_position,
                first_version,
                stream,
                stream_len,
                records,
            });
            at += len;
        }
        assert_eq!(at, end, "batch at {offset}");
        assert_eq!(frames.len() as u64, frame_count, "batch at {offset}");
        position += event_count;
        out.push(Batch {
            offset,
            end,
            sequence,
            first_position,
            event_count,
            frames,
        });
        offset = end;
    }
    out
}

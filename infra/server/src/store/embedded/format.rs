//! On-disk layout of the embedded log: one file, `events.log`, in the data directory.
//!
//! All integers are little-endian with the widths shown; offsets are in bytes.
//!
//! ```text
//! file := file_header batch*
//!
//! file_header (16 bytes)
//!    0   8  magic            b"ALLOTLOG"
//!    8   4  format_version   u32, = 1
//!   12   4  reserved         u32, = 0
//!
//! batch := batch_header frame{frame_count}    one write and one fdatasync of the writer
//!
//! batch_header (32 bytes)
//!    0   4  magic            b"ALB1"
//!    4   4  body_len         u32, bytes of frames after this header
//!    8   8  first_position   u64, position of the batch's first event
//!   16   4  frame_count      u32, >= 1
//!   20   4  event_count      u32, >= frame_count
//!   24   8  header_sum       blake3(batch_header[0..24]), first 8 bytes
//!
//! frame := one append, all of its events (42 + stream_len + events bytes)
//!    0   4  frame_len        u32, whole frame including this field
//!    4  16  frame_sum        blake3(frame[20..frame_len]), first 16 bytes
//!   20   8  first_position   u64
//!   28   8  first_version    u64
//!   36   4  event_count      u32, >= 1
//!   40   2  stream_len       u16
//!   42   .  stream           UTF-8
//!    .   .  event{event_count}
//!
//! event (22 + kind_len + payload_len bytes)
//!    0  16  id
//!   16   2  kind_len         u16
//!   18   4  payload_len      u32
//!   22   .  kind             UTF-8
//!    .   .  payload
//! ```
//!
//! The event at index `i` of a frame has position `first_position + i` and version
//! `first_version + i`. Checksums are truncated blake3: 64 bits guard the header (so a damaged
//! length is never trusted), 128 bits guard each append.

use crate::store::ProposedEvent;

pub(crate) const FILE_MAGIC: &[u8; 8] = b"ALLOTLOG";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub const FILE_HEADER_BYTES: u64 = 16;

pub(crate) const BATCH_MAGIC: &[u8; 4] = b"ALB1";
pub const BATCH_HEADER_BYTES: usize = 32;
const HEADER_SUM_OFFSET: usize = 24;

pub(crate) const FRAME_FIXED_BYTES: usize = 42;
const FRAME_SUM_END: usize = 20;
pub(crate) const EVENT_FIXED_BYTES: usize = 22;

/// Largest encoded append (frame); a larger append is rejected before it is queued.
pub const FRAME_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Largest batch body; the writer stops draining its queue before a batch would exceed it. Twice
/// the largest frame, so any single frame fits.
pub const BATCH_BODY_BYTES_MAX: u64 = 2 * FRAME_BYTES_MAX;

pub(crate) fn file_header() -> [u8; FILE_HEADER_BYTES as usize] {
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Encoded size of one append.
pub(crate) fn frame_len(stream: &str, events: &[ProposedEvent]) -> u64 {
    let events_bytes: u64 = events
        .iter()
        .map(|e| (EVENT_FIXED_BYTES + e.kind.len() + e.payload.len()) as u64)
        .sum();
    FRAME_FIXED_BYTES as u64 + stream.len() as u64 + events_bytes
}

/// Where one event's record sits, relative to the start of the buffer it was encoded into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodedEvent {
    pub offset: usize,
    pub len: u32,
}

/// Appends one frame to `buf`. The caller has validated the limits (lengths fit their fields).
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    first_position: u64,
    first_version: u64,
    stream: &str,
    events: &[ProposedEvent],
    out: &mut Vec<EncodedEvent>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_SUM_END]);
    buf.extend_from_slice(&first_position.to_le_bytes());
    buf.extend_from_slice(&first_version.to_le_bytes());
    buf.extend_from_slice(&(events.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    buf.extend_from_slice(stream.as_bytes());
    for event in events {
        let offset = buf.len();
        buf.extend_from_slice(&event.id);
        buf.extend_from_slice(&(event.kind.len() as u16).to_le_bytes());
        buf.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(event.kind.as_bytes());
        buf.extend_from_slice(&event.payload);
        out.push(EncodedEvent {
            offset,
            len: (buf.len() - offset) as u32,
        });
    }
    let frame_len = (buf.len() - start) as u32;
    let sum = blake3::hash(&buf[start + FRAME_SUM_END..]);
    buf[start..start + 4].copy_from_slice(&frame_len.to_le_bytes());
    buf[start + 4..start + FRAME_SUM_END].copy_from_slice(&sum.as_bytes()[..16]);
}

/// A batch header as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub body_len: u32,
    pub first_position: u64,
    pub frame_count: u32,
    pub event_count: u32,
}

pub(crate) fn encode_batch_header(header: &BatchHeader) -> [u8; BATCH_HEADER_BYTES] {
    let mut bytes = [0u8; BATCH_HEADER_BYTES];
    bytes[0..4].copy_from_slice(BATCH_MAGIC);
    bytes[4..8].copy_from_slice(&header.body_len.to_le_bytes());
    bytes[8..16].copy_from_slice(&header.first_position.to_le_bytes());
    bytes[16..20].copy_from_slice(&header.frame_count.to_le_bytes());
    bytes[20..24].copy_from_slice(&header.event_count.to_le_bytes());
    let sum = blake3::hash(&bytes[..HEADER_SUM_OFFSET]);
    bytes[HEADER_SUM_OFFSET..].copy_from_slice(&sum.as_bytes()[..8]);
    bytes
}

/// Decodes a batch header; `Err` says why it is not one (damaged or never fully written).
pub(crate) fn decode_batch_header(bytes: &[u8]) -> Result<BatchHeader, &'static str> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err("short batch header");
    }
    if &bytes[0..4] != BATCH_MAGIC {
        return Err("bad batch magic");
    }
    let sum = blake3::hash(&bytes[..HEADER_SUM_OFFSET]);
    if bytes[HEADER_SUM_OFFSET..BATCH_HEADER_BYTES] != sum.as_bytes()[..8] {
        return Err("batch header checksum mismatch");
    }
    let header = BatchHeader {
        body_len: le_u32(&bytes[4..8]),
        first_position: le_u64(&bytes[8..16]),
        frame_count: le_u32(&bytes[16..20]),
        event_count: le_u32(&bytes[20..24]),
    };
    if header.frame_count == 0 || header.event_count < header.frame_count {
        return Err("batch header counts out of range");
    }
    if u64::from(header.body_len) > BATCH_BODY_BYTES_MAX
        || (header.body_len as usize) < FRAME_FIXED_BYTES * header.frame_count as usize
    {
        return Err("batch body length out of range");
    }
    Ok(header)
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
    /// Length or checksum wrong: the bytes are not what the writer wrote.
    Damaged(String),
    /// Checksum right but the content is not a valid frame: a writer bug, never a torn write.
    Malformed(String),
}

/// Decodes and verifies the frame at the start of `bytes`.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < FRAME_FIXED_BYTES {
        return Err(FrameError::Damaged(format!(
            "{} bytes left, too few for a frame",
            bytes.len()
        )));
    }
    let len = le_u32(&bytes[0..4]);
    if (len as usize) < FRAME_FIXED_BYTES
        || len as usize > bytes.len()
        || u64::from(len) > FRAME_BYTES_MAX
    {
        return Err(FrameError::Damaged(format!(
            "frame length {len} out of range"
        )));
    }
    let frame = &bytes[..len as usize];
    let sum = blake3::hash(&frame[FRAME_SUM_END..]);
    if frame[4..FRAME_SUM_END] != sum.as_bytes()[..16] {
        return Err(FrameError::Damaged("frame checksum mismatch".to_owned()));
    }
    let malformed = |reason: &str| FrameError::Malformed(reason.to_owned());
    let first_position = le_u64(&frame[20..28]);
    let first_version = le_u64(&frame[28..36]);
    let event_count = le_u32(&frame[36..40]);
    let stream_len = usize::from(le_u16(&frame[40..42]));
    if event_count == 0 {
        return Err(malformed("frame without events"));
    }
    let stream_end = FRAME_FIXED_BYTES + stream_len;
    let stream = frame
        .get(FRAME_FIXED_BYTES..stream_end)
        .ok_or_else(|| malformed("stream name past frame end"))?;
    let stream = std::str::from_utf8(stream).map_err(|_| malformed("stream name not UTF-8"))?;
    if stream.is_empty() {
        return Err(malformed("empty stream name"));
    }
    // Bounded by what the frame can hold, whatever the count field says.
    let mut events =
        Vec::with_capacity((event_count as usize).min(frame.len() / EVENT_FIXED_BYTES));
    let mut at = stream_end;
    for _ in 0..event_count {
        let fixed = frame
            .get(at..at + EVENT_FIXED_BYTES)
            .ok_or_else(|| malformed("event header past frame end"))?;
        let kind_len = usize::from(le_u16(&fixed[16..18]));
        let payload_len = le_u32(&fixed[18..22]) as usize;
        let record_len = EVENT_FIXED_BYTES + kind_len + payload_len;
        let record = frame
            .get(at..at + record_len)
            .ok_or_else(|| malformed("event past frame end"))?;
        std::str::from_utf8(&record[EVENT_FIXED_BYTES..EVENT_FIXED_BYTES + kind_len])
            .map_err(|_| malformed("event kind not UTF-8"))?;
        events.push(EncodedEvent {
            offset: at,
            len: record_len as u32,
        });
        at += record_len;
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

/// One event record's fields, borrowed from its bytes.
pub(crate) struct EventRecord<'a> {
    pub id: [u8; 16],
    pub kind: &'a str,
    pub payload: &'a [u8],
}

/// Decodes an event record that was verified when the log was opened or written.
pub(crate) fn decode_event(record: &[u8]) -> Result<EventRecord<'_>, &'static str> {
    let fixed = record
        .get(..EVENT_FIXED_BYTES)
        .ok_or("short event record")?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&fixed[..16]);
    let kind_len = usize::from(le_u16(&fixed[16..18]));
    let payload_len = le_u32(&fixed[18..22]) as usize;
    let kind_end = EVENT_FIXED_BYTES + kind_len;
    if record.len() != kind_end + payload_len {
        return Err("event record length mismatch");
    }
    let kind = std::str::from_utf8(&record[EVENT_FIXED_BYTES..kind_end])
        .map_err(|_| "event kind not UTF-8")?;
    Ok(EventRecord {
        id,
        kind,
        payload: &record[kind_end..],
    })
}

fn le_u16(bytes: &[u8]) -> u16 {
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

    #[test]
    fn frame_round_trips_and_detects_any_flipped_byte() {
        let events = [event("Reserved", b"abc"), event("Confirmed", b"")];
        let mut buf = Vec::new();
        let mut out = Vec::new();
        encode_frame(&mut buf, 10, 3, "pool-a", &events, &mut out);
        assert_eq!(buf.len() as u64, frame_len("pool-a", &events));
        let frame = decode_frame(&buf).unwrap();
        assert_eq!(
            (frame.first_position, frame.first_version, frame.stream),
            (10, 3, "pool-a")
        );
        let second = &buf[out[1].offset..out[1].offset + out[1].len as usize];
        let record = decode_event(second).unwrap();
        assert_eq!((record.kind, record.payload), ("Confirmed", &b""[..]));
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x01;
            assert!(decode_frame(&damaged).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn batch_header_detects_any_flipped_byte() {
        let header = BatchHeader {
            body_len: 100,
            first_position: 5,
            frame_count: 2,
            event_count: 3,
        };
        let bytes = encode_batch_header(&header);
        assert_eq!(decode_batch_header(&bytes), Ok(header));
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 0x80;
            assert!(decode_batch_header(&damaged).is_err(), "flip at {i}");
        }
    }
}

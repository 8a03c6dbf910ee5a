//! The stored encoding of events: one schema-version byte, then bincode 2 (standard config).
//!
//! This is the only module that knows the byte format, so the log can move to a wire-compatible
//! successor of bincode by changing this file alone. Golden-bytes tests (in `tests/codec.rs`)
//! hold the encoding of every released schema: if the in-memory types change, freeze the old
//! shape here as `v1` types, bump [`SCHEMA_VERSION`] and upcast on decode.

use crate::actor::ActorEvent;
use crate::event::Event;

/// Schema of newly written pool and actor events.
pub const SCHEMA_VERSION: u8 = 1;
/// Largest encoded event any valid command produces is below this (the store accepts 64 KiB);
/// `tests/codec.rs` checks the largest valid `declare_pool` against it.
pub const ENCODED_EVENT_BYTES_MAX: usize = 60 * 1024;
/// Decoding refuses payloads claiming more than this many bytes for any field (fuzzed input
/// must not make the decoder allocate without bound).
pub const DECODE_BYTES_MAX: usize = 1 << 20;

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("empty payload")]
    Empty,
    #[error("unknown schema version {0}")]
    UnknownSchema(u8),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the event")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

fn encode<T: bincode::Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(SCHEMA_VERSION);
    // Encoding into a Vec cannot fail for these types except by exceeding the limit, which no
    // validated command can reach; an empty-after-version payload then fails loudly on decode.
    if let Err(error) = bincode::encode_into_std_write(value, &mut out, config()) {
        debug_assert!(false, "encoding failed: {error}");
    }
    out
}

fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != SCHEMA_VERSION {
        return Err(CodecError::UnknownSchema(version));
    }
    let (value, read) = bincode::decode_from_slice(body, config())
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    encode(event)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    decode(bytes)
}

pub fn encode_actor_event(event: &ActorEvent) -> Vec<u8> {
    encode(event)
}

pub fn decode_actor_event(bytes: &[u8]) -> Result<ActorEvent, CodecError> {
    decode(bytes)
}

//! The stored encoding of events: one schema-version byte, then bincode 2 (standard config).
//!
//! This is the only module that knows the byte format, so the log can move to a wire-compatible
//! successor of bincode by changing this file alone. Golden-bytes tests (in `tests/codec.rs`)
//! hold the encoding of every released schema: if the in-memory types change, freeze the old
//! shape here as `v1` types, bump [`SCHEMA_VERSION`] and upcast on decode.
//!
//! Schemas:
//! - 1: pool events without `on_behalf_of` (read as [`OnBehalfOf::Unrecorded`]).
//! - 2: pool events end with `on_behalf_of`. Actor events are the same in all schemas.
//! - 3: pool events end with `on_behalf_of` then `batch` (a command of a signed batch).
//!
//! An event is written with the oldest schema that holds it: schema 3 only for events from a
//! batch, so the bytes of every other event are what schema 2 wrote.

use crate::actor::ActorEvent;
use crate::command::Action;
use crate::event::{Event, OnBehalfOf};
use crate::{ParamsDigest, Timestamp};

/// The newest schema: what this code writes for a pool event from a signed batch. Other pool
/// events and actor events are written with schema 2 ([`SCHEMA_VERSION_UNBATCHED`]).
pub const SCHEMA_VERSION: u8 = 3;
/// Schema of pool events that did not come in a batch, and of actor events.
pub const SCHEMA_VERSION_UNBATCHED: u8 = 2;
/// The oldest schema still read (upcast on decode).
pub const SCHEMA_VERSION_MIN: u8 = 1;
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

fn encode_as<T: bincode::Encode>(schema: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(schema);
    // Encoding into a Vec cannot fail for these types except by exceeding the limit, which no
    // validated command can reach; an empty-after-version payload then fails loudly on decode.
    if let Err(error) = bincode::encode_into_std_write(value, &mut out, config()) {
        debug_assert!(false, "encoding failed: {error}");
    }
    out
}

/// The schema version of a stored payload, if this code reads it.
pub fn schema_of(bytes: &[u8]) -> Result<u8, CodecError> {
    let &version = bytes.first().ok_or(CodecError::Empty)?;
    if !(SCHEMA_VERSION_MIN..=SCHEMA_VERSION).contains(&version) {
        return Err(CodecError::UnknownSchema(version));
    }
    Ok(version)
}

/// The body of a payload after its (readable) schema byte.
fn body_of(bytes: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    let version = schema_of(bytes)?;
    Ok((version, &bytes[1..]))
}

fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (_, body) = body_of(bytes)?;
    decode_body(body)
}

fn decode_body<T: bincode::Decode<()>>(body: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::decode_from_slice(body, config())
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

/// The stored form of `event`: schema 3 for an event from a batch, schema 2 otherwise, or
/// schema 1 for an event read from schema 1 (whose `on_behalf_of` is `Unrecorded`), so an
/// upcast event re-encodes to the bytes it came from.
pub fn encode_event(event: &Event) -> Vec<u8> {
    if event.on_behalf_of == OnBehalfOf::Unrecorded {
        return encode_as(1, &v1::Event::from(event));
    }
    if event.batch.is_none() {
        return encode_as(SCHEMA_VERSION_UNBATCHED, &v2::EventRef::from(event));
    }
    encode_as(SCHEMA_VERSION, event)
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, CodecError> {
    match body_of(bytes)? {
        (1, body) => decode_body::<v1::Event>(body).map(Event::from),
        (2, body) => decode_body::<v2::Event>(body).map(Event::from),
        (_, body) => {
            let event: Event = decode_body(body)?;
            if event.batch.is_none() {
                // One encoding per event: an event of no batch is written as schema 2.
                return Err(CodecError::Malformed(
                    "schema 3 without a batch membership".to_owned(),
                ));
            }
            Ok(event)
        }
    }
}

/// Shape of schema 2, frozen: `crate::event::Event` without `batch`.
mod v2 {
    use bincode::{Decode, Encode};

    use crate::command::Action;
    use crate::event::{Change, OnBehalfOf, ReservationState};
    use crate::ids::{ActorId, Attestation, IdempotencyToken, ParamsDigest, PoolId, Timestamp};

    #[derive(Decode)]
    pub(super) struct Event {
        pool: PoolId,
        at: Timestamp,
        actor: ActorId,
        attestation: Attestation,
        token: IdempotencyToken,
        digest: ParamsDigest,
        action: Action,
        allocated_before: u64,
        allocated_after: u64,
        prior_state: Option<ReservationState>,
        new_state: Option<ReservationState>,
        change: Change,
        on_behalf_of: OnBehalfOf,
    }

    /// Schema 2 written from a borrowed event (nothing cloned on the write path).
    #[derive(Encode)]
    pub(super) struct EventRef<'a> {
        pool: &'a PoolId,
        at: Timestamp,
        actor: &'a ActorId,
        attestation: &'a Attestation,
        token: &'a IdempotencyToken,
        digest: crate::ids::ParamsDigest,
        action: &'a Action,
        allocated_before: u64,
        allocated_after: u64,
        prior_state: Option<ReservationState>,
        new_state: Option<ReservationState>,
        change: &'a Change,
        on_behalf_of: &'a OnBehalfOf,
    }

    impl<'a> From<&'a crate::event::Event> for EventRef<'a> {
        fn from(event: &'a crate::event::Event) -> Self {
            EventRef {
                pool: &event.pool,
                at: event.at,
                actor: &event.actor,
                attestation: &event.attestation,
                token: &event.token,
                digest: event.digest,
                action: &event.action,
                allocated_before: event.allocated_before,
                allocated_after: event.allocated_after,
                prior_state: event.prior_state,
                new_state: event.new_state,
                change: &event.change,
                on_behalf_of: &event.on_behalf_of,
            }
        }
    }

    impl From<Event> for crate::event::Event {
        fn from(old: Event) -> Self {
            crate::event::Event {
                pool: old.pool,
                at: old.at,
                actor: old.actor,
                attestation: old.attestation,
                token: old.token,
                digest: old.digest,
                action: old.action,
                allocated_before: old.allocated_before,
                allocated_after: old.allocated_after,
                prior_state: old.prior_state,
                new_state: old.new_state,
                change: old.change,
                on_behalf_of: old.on_behalf_of,
                batch: None,
            }
        }
    }
}

/// Shapes of schema 1, frozen, and their upcast to the current types.
mod v1 {
    use bincode::{Decode, Encode};

    use crate::command::Action;
    use crate::event::{Change, OnBehalfOf, ReservationState};
    use crate::ids::{ActorId, Attestation, IdempotencyToken, ParamsDigest, PoolId, Timestamp};

    /// A pool event of schema 1: `crate::event::Event` without `on_behalf_of`.
    #[derive(Encode, Decode)]
    pub(super) struct Event {
        pool: PoolId,
        at: Timestamp,
        actor: ActorId,
        attestation: Attestation,
        token: IdempotencyToken,
        digest: ParamsDigest,
        action: Action,
        allocated_before: u64,
        allocated_after: u64,
        prior_state: Option<ReservationState>,
        new_state: Option<ReservationState>,
        change: Change,
    }

    impl From<&crate::event::Event> for Event {
        fn from(event: &crate::event::Event) -> Self {
            Event {
                pool: event.pool.clone(),
                at: event.at,
                actor: event.actor.clone(),
                attestation: event.attestation.clone(),
                token: event.token.clone(),
                digest: event.digest,
                action: event.action.clone(),
                allocated_before: event.allocated_before,
                allocated_after: event.allocated_after,
                prior_state: event.prior_state,
                new_state: event.new_state,
                change: event.change.clone(),
            }
        }
    }

    impl From<Event> for crate::event::Event {
        fn from(old: Event) -> Self {
            crate::event::Event {
                pool: old.pool,
                at: old.at,
                actor: old.actor,
                attestation: old.attestation,
                token: old.token,
                digest: old.digest,
                action: old.action,
                allocated_before: old.allocated_before,
                allocated_after: old.allocated_after,
                prior_state: old.prior_state,
                new_state: old.new_state,
                change: old.change,
                on_behalf_of: OnBehalfOf::Unrecorded,
                batch: None,
            }
        }
    }
}

pub fn encode_actor_event(event: &ActorEvent) -> Vec<u8> {
    encode_as(SCHEMA_VERSION_UNBATCHED, event)
}

pub fn decode_actor_event(bytes: &[u8]) -> Result<ActorEvent, CodecError> {
    decode(bytes)
}

/// The pool id of an encoded pool event, read without decoding the rest (it is the event's
/// first field). Replay uses it to route events to workers before decoding them; a payload whose
/// pool cannot be read also fails [`decode_event`].
pub fn peek_pool(bytes: &[u8]) -> Result<&str, CodecError> {
    let (_, body) = body_of(bytes)?;
    let (pool, _): (&str, usize) = bincode::borrow_decode_from_slice(body, config())
        .map_err(|error| CodecError::Malformed(error.to_string()))?;
    Ok(pool)
}

/// Decodes a pool event into `event`, reusing the buffers of its strings and signature: a
/// replay decoding millions of events into one value allocates nothing per event. The result
/// equals [`decode_event`]'s, error included (any payload this path does not take is decoded by
/// [`decode_event`]); on an error `event` holds some mix of old and new fields.
pub fn decode_event_into(bytes: &[u8], event: &mut Event) -> Result<(), CodecError> {
    if bytes.len() <= DECODE_BYTES_MAX && decode_in_place(bytes, event, Fields::All).is_some() {
        return Ok(());
    }
    *event = decode_event(bytes)?;
    Ok(())
}

/// Decodes into `event` what the read models (`allot-projections`) read: pool, time, action,
/// allocated counts, states and change. The actor, attestation, token, and a reserve's resource
/// and requester are checked as the whole decode checks them but not copied, and keep whatever
/// `event` held, so the result is for projecting only; audits and aggregates
/// decode whole events. A payload this path does not take is decoded whole by
/// [`decode_event_into`], so its errors are that function's.
pub fn decode_event_for_projections(bytes: &[u8], event: &mut Event) -> Result<(), CodecError> {
    if bytes.len() <= DECODE_BYTES_MAX && decode_in_place(bytes, event, Fields::Projected).is_some()
    {
        return Ok(());
    }
    decode_event_into(bytes, event)
}

/// Steps over a length-prefixed byte string.
fn skip_bytes(rest: &mut &[u8]) -> Option<()> {
    let _: &[u8] = borrowed(rest)?;
    Some(())
}

/// Steps over a string, checking it is UTF-8 as the whole decode does (so a payload either path
/// refuses, both refuse), without copying it.
fn skip_str(rest: &mut &[u8]) -> Option<()> {
    let _: &str = borrowed(rest)?;
    Some(())
}

/// Variant index of `Action::Reserve` in the encoding (bincode numbers variants in declaration
/// order; the golden bytes in `tests/codec.rs` freeze it).
const RESERVE_VARIANT: u32 = 3;

/// Which fields [`decode_in_place`] decodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fields {
    All,
    /// What read models read; the rest is stepped over ([`decode_event_for_projections`]).
    Projected,
}

/// The fields of `Event`, in declaration order (the derived encoding's order); `None` for
/// anything unexpected, which the callers leave to a whole decode.
fn decode_in_place(bytes: &[u8], event: &mut Event, fields: Fields) -> Option<()> {
    let (version, mut rest) = body_of(bytes).ok()?;
    copy_str(&mut rest, &mut event.pool.0)?;
    event.at = field(&mut rest)?;
    match fields {
        Fields::All => {
            copy_str(&mut rest, &mut event.actor.0)?;
            event.attestation.signed_at = field(&mut rest)?;
            let signature: &[u8] = borrowed(&mut rest)?;
            event.attestation.signature.clear();
            event.attestation.signature.extend_from_slice(signature);
            copy_str(&mut rest, &mut event.token.0)?;
            event.digest = field(&mut rest)?;
            decode_action(&mut rest, &mut event.action)?;
        }
        Fields::Projected => {
            skip_str(&mut rest)?; // actor
            let _signed_at: Timestamp = field(&mut rest)?;
            skip_bytes(&mut rest)?; // signature
            skip_str(&mut rest)?; // token
            let _digest: ParamsDigest = field(&mut rest)?;
            decode_action_counts(&mut rest, &mut event.action)?;
        }
    }
    event.allocated_before = field(&mut rest)?;
    event.allocated_after = field(&mut rest)?;
    event.prior_state = field(&mut rest)?;
    event.new_state = field(&mut rest)?;
    event.change = field(&mut rest)?;
    event.on_behalf_of = match version {
        1 => OnBehalfOf::Unrecorded,
        _ => field(&mut rest)?,
    };
    event.batch = match version {
        1 | 2 => None,
        // Schema 3 always has one (else the whole decode refuses the payload).
        _ => Some(field::<Option<Box<crate::batch::BatchMembership>>>(
            &mut rest,
        )??),
    };
    rest.is_empty().then_some(())
}

/// A reserve's duration and count (its resource and requester stepped over); other actions
/// decode whole.
fn decode_action_counts(rest: &mut &[u8], action: &mut Action) -> Option<()> {
    let (variant, read): (u32, usize) = bincode::decode_from_slice(rest, config()).ok()?;
    if variant != RESERVE_VARIANT {
        *action = field(rest)?;
        return Some(());
    }
    *rest = rest.get(read..)?;
    skip_str(rest)?; // resource
    skip_str(rest)?; // requester
    let reserve_duration_ms: u64 = field(rest)?;
    let reserve_count: u32 = field(rest)?;
    match action {
        Action::Reserve {
            duration_ms, count, ..
        } => {
            *duration_ms = reserve_duration_ms;
            *count = reserve_count;
        }
        other => {
            *other = Action::Reserve {
                resource: String::new(),
                requester: String::new(),
                duration_ms: reserve_duration_ms,
                count: reserve_count,
            }
        }
    }
    Some(())
}

/// Reserve (nearly every other event) reuses its two strings; other actions decode whole.
fn decode_action(rest: &mut &[u8], action: &mut Action) -> Option<()> {
    let (variant, read): (u32, usize) = bincode::decode_from_slice(rest, config()).ok()?;
    if let (
        RESERVE_VARIANT,
        Action::Reserve {
            resource,
            requester,
            duration_ms,
            count,
        },
    ) = (variant, &mut *action)
    {
        *rest = rest.get(read..)?;
        copy_str(rest, resource)?;
        copy_str(rest, requester)?;
        *duration_ms = field(rest)?;
        *count = field(rest)?;
    } else {
        *action = field(rest)?;
    }
    Some(())
}

fn field<T: bincode::Decode<()>>(rest: &mut &[u8]) -> Option<T> {
    let (value, read) = bincode::decode_from_slice(rest, config()).ok()?;
    *rest = rest.get(read..)?;
    Some(value)
}

fn borrowed<'a, T: bincode::BorrowDecode<'a, ()>>(rest: &mut &'a [u8]) -> Option<T> {
    let (value, read) = bincode::borrow_decode_from_slice(rest, config()).ok()?;
    *rest = rest.get(read..)?;
    Some(value)
}

fn copy_str(rest: &mut &[u8], into: &mut String) -> Option<()> {
    let text: &str = borrowed(rest)?;
    into.clear();
    into.push_str(text);
    Some(())
}

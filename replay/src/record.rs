//! The input model: decoded events with where the store recorded them.
//!
//! Callers read their store in global position order, decode each payload with
//! `allot_domain::codec` and feed the values here, one at a time. Nothing in this crate reads a
//! store.

use allot_domain::codec::{self, CodecError};
use allot_domain::streams::ACTORS_STREAM;
use allot_domain::{ActorEvent, Event};

/// A pool event as recorded: its stream, its 0-based version in that stream and its global
/// position (strictly increasing across all streams, not necessarily contiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPoolEvent {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub event: Event,
}

/// An event of the `actors` stream as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedActorEvent {
    pub version: u64,
    pub position: u64,
    pub event: ActorEvent,
}

/// One recorded event of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Pool(RecordedPoolEvent),
    Actor(RecordedActorEvent),
}

impl Recorded {
    /// Decodes a stored payload with `allot_domain::codec`: the [`ACTORS_STREAM`] holds actor
    /// events, every other stream pool events. The caller reports a failure with the record's
    /// stream, version and position.
    pub fn decode(
        stream: &str,
        version: u64,
        position: u64,
        payload: &[u8],
    ) -> Result<Recorded, CodecError> {
        if stream == ACTORS_STREAM {
            Ok(Recorded::Actor(RecordedActorEvent {
                version,
                position,
                event: codec::decode_actor_event(payload)?,
            }))
        } else {
            Ok(Recorded::Pool(RecordedPoolEvent {
                stream: stream.to_owned(),
                version,
                position,
                event: codec::decode_event(payload)?,
            }))
        }
    }

    pub fn position(&self) -> u64 {
        match self {
            Recorded::Pool(recorded) => recorded.position,
            Recorded::Actor(recorded) => recorded.position,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Recorded::Pool(recorded) => recorded.version,
            Recorded::Actor(recorded) => recorded.version,
        }
    }

    pub fn stream(&self) -> &str {
        match self {
            Recorded::Pool(recorded) => &recorded.stream,
            Recorded::Actor(_) => ACTORS_STREAM,
        }
    }

    /// The pool event, if this is one.
    pub fn pool_event(&self) -> Option<&RecordedPoolEvent> {
        match self {
            Recorded::Pool(recorded) => Some(recorded),
            Recorded::Actor(_) => None,
        }
    }
}

impl From<RecordedPoolEvent> for Recorded {
    fn from(recorded: RecordedPoolEvent) -> Self {
        Recorded::Pool(recorded)
    }
}

impl From<RecordedActorEvent> for Recorded {
    fn from(recorded: RecordedActorEvent) -> Self {
        Recorded::Actor(recorded)
    }
}

/// Runs a push-based query (a forensic query, the HTML report) over a whole log: `observe`s
/// each record in the order given, then `finish`es. A macro, so each query keeps its `observe`
/// and `finish` as inherent methods for callers that feed it page by page.
macro_rules! fold_records {
    ($records:expr, $query:expr) => {{
        let mut query = $query;
        for record in $records {
            query.observe(std::borrow::Borrow::<$crate::record::Recorded>::borrow(
                &record,
            ));
        }
        query.finish()
    }};
}
pub(crate) use fold_records;

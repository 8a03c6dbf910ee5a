//! Identifiers and scalar values shared by commands and events.
//!
//! These are thin newtypes: constructing one never fails, and `decide` validates every field of a
//! command before anything else (so the precedence of `invalid-request` is one place).

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Every time in the domain is one of these, passed in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Encode,
    Decode,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Encode, Decode, Serialize,
            Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Lookups by `&str` without building an owned key (String and str hash alike).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    };
}

string_id!(
    /// A pool's id: 1..=64 bytes of `[A-Za-z0-9_.-]`, so it never contains the reservation-id
    /// separator `:` and is safe in stream names and URL paths.
    PoolId
);
string_id!(
    /// The acting actor, as verified by the edge (signature checked before `decide`).
    ActorId
);
string_id!(
    /// An idempotency token: opaque, compared byte for byte, scoped to (pool stream, actor).
    IdempotencyToken
);

/// Separator between pool id and sequence in a reservation id; pool ids cannot contain it.
pub const RESERVATION_ID_SEPARATOR: char = ':';

/// A reservation: the pool it belongs to and its 1-based sequence in that pool. Routes to its
/// pool without a global lookup; never reused because sequences only grow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct ReservationId {
    pub pool: PoolId,
    pub seq: u64,
}

impl ReservationId {
    /// Parses `pool:seq`. Returns `None` for anything else (the caller maps it to
    /// `invalid-request`).
    pub fn parse(text: &str) -> Option<ReservationId> {
        let (pool, seq) = text.rsplit_once(RESERVATION_ID_SEPARATOR)?;
        if !crate::command::is_valid_pool_id(pool) {
            return None;
        }
        if seq.is_empty() || seq.starts_with('0') || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq = seq.parse().ok()?;
        Some(ReservationId {
            pool: PoolId::new(pool),
            seq,
        })
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.pool, RESERVATION_ID_SEPARATOR, self.seq)
    }
}

impl Serialize for ReservationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReservationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ReservationId::parse(&text)
            .ok_or_else(|| serde::de::Error::custom("reservation id must be `pool:seq`"))
    }
}

/// A collision-resistant digest of a command's non-token parameters, computed at the edge
/// (blake3 of the canonical parameter encoding) and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Encode, Decode)]
pub struct ParamsDigest(pub [u8; 32]);

impl fmt::Display for ParamsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The actor's signature material, verified at the edge and stored so auditors can verify it
/// again offline. The domain never inspects it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode)]
pub struct Attestation {
    /// When the actor signed, as stated in the signed bytes.
    pub signed_at: Timestamp,
    /// The ed25519 signature (64 bytes) over the canonical encoding, or empty for commands the
    /// service issues on its own behalf under a key it holds (it still signs them).
    pub signature: Vec<u8>,
}

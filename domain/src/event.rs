//! Events: one per state-changing command, carrying everything the seed's audit reads.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::batch::BatchMembership;
use crate::command::{Action, ActionKind};
use crate::ids::{
    ActorId, Attestation, IdempotencyToken, ParamsDigest, PoolId, ReservationId, Timestamp,
};
use crate::rejection::Rejection;

/// A reservation's lifecycle state. Held and Confirmed hold slots; the rest are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl ReservationState {
    /// Whether a reservation in this state holds its units of the pool.
    pub fn holds_slot(self) -> bool {
        matches!(self, ReservationState::Held | ReservationState::Confirmed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Confirmed => "confirmed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
        }
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the event did, beyond what its action and envelope already say.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    PoolDeclared,
    CapacityAdjusted {
        capacity_before: u64,
    },
    PoolClosed,
    /// A hold was placed: the reservation's sequence and when its window closes.
    Reserved {
        reservation: u64,
        expires_at: Timestamp,
    },
    Confirmed {
        reservation: u64,
    },
    /// Cancelled: Held → Released, the slot returned.
    Released {
        reservation: u64,
    },
    /// Held → Expired, the slot returned; `lateness_ms` is how long after `expires_at` it fired.
    Expired {
        reservation: u64,
        lateness_ms: u64,
    },
    /// The command was refused; journaled so the token's outcome is a projection like the rest.
    Rejected(Rejection),
}

/// Whose reservation a confirm or cancel acted on, when it was not the actor's own.
///
/// Stored (schema 2 on) as variant 0 (`Nobody`) or 1 (`Owner`, then the owner's id); a stored
/// variant 2 is malformed: `Unrecorded` is never written, only read from schema 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnBehalfOf {
    /// The actor acted on its own reservation, or the event concerns none.
    Nobody,
    /// The actor (a role that may act for others) confirmed or cancelled the reservation of
    /// this owner.
    Owner(ActorId),
    /// Recorded with schema 1, which did not record it (any client could then act on any
    /// reservation); the ownership rule does not apply.
    Unrecorded,
}

/// One recorded fact about a pool.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Event {
    pub pool: PoolId,
    /// The command's time, clamped so a stream's times never go backwards.
    pub at: Timestamp,
    pub actor: ActorId,
    pub attestation: Attestation,
    pub token: IdempotencyToken,
    pub digest: ParamsDigest,
    /// The command as asked (its parameters are what was signed and digested).
    pub action: Action,
    pub allocated_before: u64,
    pub allocated_after: u64,
    /// The reservation's state before and after (None before a reserve; both None for pool
    /// administration and for rejections of non-reservation actions).
    pub prior_state: Option<ReservationState>,
    pub new_state: Option<ReservationState>,
    pub change: Change,
    /// For a confirm or cancel of another actor's reservation: its owner (schema 2 on).
    pub on_behalf_of: OnBehalfOf,
    /// For a command that came in a signed batch: what proves its actor signed it (schema 3).
    pub batch: Option<Box<BatchMembership>>,
}

/// What the caller is told; cached against the token and replayed on retries.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Outcome {
    PoolDeclared {
        pool: PoolId,
    },
    CapacityAdjusted {
        capacity: u64,
    },
    PoolClosed {
        pool: PoolId,
    },
    Reserved {
        reservation: ReservationId,
        expires_at: Timestamp,
    },
    Confirmed {
        reservation: ReservationId,
    },
    Released {
        reservation: ReservationId,
    },
    Expired {
        reservation: ReservationId,
    },
    Rejected(Rejection),
}

impl Event {
    pub fn action_kind(&self) -> ActionKind {
        self.action.kind()
    }

    /// The reservation this event concerns, if any.
    pub fn reservation(&self) -> Option<ReservationId> {
        let seq = match &self.change {
            Change::Reserved { reservation, .. }
            | Change::Confirmed { reservation }
            | Change::Released { reservation }
            | Change::Expired { reservation, .. } => Some(*reservation),
            _ => self.action.reservation(),
        }?;
        Some(ReservationId {
            pool: self.pool.clone(),
            seq,
        })
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.change {
            Change::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }

    /// The name stores show for this event.
    pub fn kind_name(&self) -> &'static str {
        match &self.change {
            Change::PoolDeclared => "PoolDeclared",
            Change::CapacityAdjusted { .. } => "CapacityAdjusted",
            Change::PoolClosed => "PoolClosed",
            Change::Reserved { .. } => "Reserved",
            Change::Confirmed { .. } => "Confirmed",
            Change::Released { .. } => "Released",
            Change::Expired { .. } => "Expired",
            Change::Rejected(_) => "Rejected",
        }
    }

    /// What the caller was told.
    pub fn outcome(&self) -> Outcome {
        let reservation = |seq: u64| ReservationId {
            pool: self.pool.clone(),
            seq,
        };
        match &self.change {
            Change::PoolDeclared => Outcome::PoolDeclared {
                pool: self.pool.clone(),
            },
            Change::CapacityAdjusted { .. } => Outcome::CapacityAdjusted {
                capacity: match self.action {
                    Action::AdjustCapacity { capacity } => capacity,
                    _ => 0,
                },
            },
            Change::PoolClosed => Outcome::PoolClosed {
                pool: self.pool.clone(),
            },
            Change::Reserved {
                reservation: seq,
                expires_at,
            } => Outcome::Reserved {
                reservation: reservation(*seq),
                expires_at: *expires_at,
            },
            Change::Confirmed { reservation: seq } => Outcome::Confirmed {
                reservation: reservation(*seq),
            },
            Change::Released { reservation: seq } => Outcome::Released {
                reservation: reservation(*seq),
            },
            Change::Expired {
                reservation: seq, ..
            } => Outcome::Expired {
                reservation: reservation(*seq),
            },
            Change::Rejected(rejection) => Outcome::Rejected(rejection.clone()),
        }
    }
}

impl Encode for OnBehalfOf {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        match self {
            OnBehalfOf::Nobody => 0u32.encode(encoder),
            OnBehalfOf::Owner(owner) => {
                1u32.encode(encoder)?;
                owner.encode(encoder)
            }
            // The codec writes an event that did not record it as schema 1.
            OnBehalfOf::Unrecorded => Err(bincode::error::EncodeError::Other(
                "on_behalf_of of schema 1 has no schema 2 encoding",
            )),
        }
    }
}

impl<Context> Decode<Context> for OnBehalfOf {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        match u32::decode(decoder)? {
            0 => Ok(OnBehalfOf::Nobody),
            1 => Ok(OnBehalfOf::Owner(ActorId::decode(decoder)?)),
            found => Err(bincode::error::DecodeError::UnexpectedVariant {
                type_name: "OnBehalfOf",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
                found,
            }),
        }
    }
}

bincode::impl_borrow_decode!(OnBehalfOf);

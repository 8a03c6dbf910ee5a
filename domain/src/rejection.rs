//! Rejections: the seed's codes, plus clear codes for pool administration and ownership.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::event::ReservationState;
use crate::ids::{ReservationId, Timestamp};

/// The stable code of a rejection, as it appears in problem+json bodies and audit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectionCode {
    InvalidRequest,
    TokenCollision,
    NotKnown,
    PoolClosed,
    PoolCapacityExceeded,
    ResourceUnavailable,
    NotHeld,
    WindowElapsed,
    WindowNotElapsed,
    RecordingFailure,
    PoolAlreadyDeclared,
    CapacityBelowAllocated,
    NotOwner,
}

impl RejectionCode {
    pub const ALL: [RejectionCode; 13] = [
        RejectionCode::InvalidRequest,
        RejectionCode::TokenCollision,
        RejectionCode::NotKnown,
        RejectionCode::PoolClosed,
        RejectionCode::PoolCapacityExceeded,
        RejectionCode::ResourceUnavailable,
        RejectionCode::NotHeld,
        RejectionCode::WindowElapsed,
        RejectionCode::WindowNotElapsed,
        RejectionCode::RecordingFailure,
        RejectionCode::PoolAlreadyDeclared,
        RejectionCode::CapacityBelowAllocated,
        RejectionCode::NotOwner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionCode::InvalidRequest => "invalid-request",
            RejectionCode::TokenCollision => "token-collision",
            RejectionCode::NotKnown => "not-known",
            RejectionCode::PoolClosed => "pool-closed",
            RejectionCode::PoolCapacityExceeded => "pool-capacity-exceeded",
            RejectionCode::ResourceUnavailable => "resource-unavailable",
            RejectionCode::NotHeld => "not-held",
            RejectionCode::WindowElapsed => "window-elapsed",
            RejectionCode::WindowNotElapsed => "window-not-elapsed",
            RejectionCode::RecordingFailure => "recording-failure",
            RejectionCode::PoolAlreadyDeclared => "pool-already-declared",
            RejectionCode::CapacityBelowAllocated => "capacity-below-allocated",
            RejectionCode::NotOwner => "not-owner",
        }
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command was refused. Each variant carries what the caller needs to understand it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum Rejection {
    /// A field is malformed or out of range.
    #[error("invalid-request: {field}: {reason}")]
    InvalidRequest { field: String, reason: String },
    /// The token was already used within the window by this actor for a different action or
    /// different parameters.
    #[error("token-collision: token already recorded for {recorded_action} with other parameters")]
    TokenCollision { recorded_action: String },
    /// The pool or reservation does not exist.
    #[error("not-known: {what} {id}")]
    NotKnown { what: String, id: String },
    /// The pool is closed, or its `closes_at` cutoff has passed.
    #[error("pool-closed: {reason}")]
    PoolClosed { reason: String },
    /// Taking `requested` more units would exceed capacity.
    #[error(
        "pool-capacity-exceeded: allocated {allocated} + requested {requested} > capacity {capacity}"
    )]
    PoolCapacityExceeded {
        capacity: u64,
        allocated: u64,
        requested: u64,
    },
    /// The named unit is held by a live reservation.
    #[error("resource-unavailable: {resource} is held by {held_by}")]
    ResourceUnavailable {
        resource: String,
        held_by: ReservationId,
    },
    /// The reservation is not Held (it is Confirmed, Released or Expired).
    #[error("not-held: reservation is {state}")]
    NotHeld { state: ReservationState },
    /// Confirmation arrived at or after `expires_at`.
    #[error("window-elapsed: hold expired at {expires_at}")]
    WindowElapsed { expires_at: Timestamp },
    /// Expiry arrived before `expires_at`.
    #[error("window-not-elapsed: hold expires at {expires_at}")]
    WindowNotElapsed { expires_at: Timestamp },
    /// The outcome could not be recorded (the store refused or failed); nothing changed.
    #[error("recording-failure: {reason}")]
    RecordingFailure { reason: String },
    /// `declare_pool` for an id that already exists.
    #[error("pool-already-declared: {pool}")]
    PoolAlreadyDeclared { pool: String },
    /// `adjust_capacity` below what is allocated.
    #[error("capacity-below-allocated: capacity {capacity} < allocated {allocated}")]
    CapacityBelowAllocated { capacity: u64, allocated: u64 },
    /// Confirm or cancel of a reservation another actor made, by a role that may not act for
    /// others. Not cached: nothing is recorded.
    #[error("not-owner: reservation {reservation} was made by another actor")]
    NotOwner { reservation: ReservationId },
}

impl Rejection {
    pub fn code(&self) -> RejectionCode {
        match self {
            Rejection::InvalidRequest { .. } => RejectionCode::InvalidRequest,
            Rejection::TokenCollision { .. } => RejectionCode::TokenCollision,
            Rejection::NotKnown { .. } => RejectionCode::NotKnown,
            Rejection::PoolClosed { .. } => RejectionCode::PoolClosed,
            Rejection::PoolCapacityExceeded { .. } => RejectionCode::PoolCapacityExceeded,
            Rejection::ResourceUnavailable { .. } => RejectionCode::ResourceUnavailable,
            Rejection::NotHeld { .. } => RejectionCode::NotHeld,
            Rejection::WindowElapsed { .. } => RejectionCode::WindowElapsed,
            Rejection::WindowNotElapsed { .. } => RejectionCode::WindowNotElapsed,
            Rejection::RecordingFailure { .. } => RejectionCode::RecordingFailure,
            Rejection::PoolAlreadyDeclared { .. } => RejectionCode::PoolAlreadyDeclared,
            Rejection::CapacityBelowAllocated { .. } => RejectionCode::CapacityBelowAllocated,
            Rejection::NotOwner { .. } => RejectionCode::NotOwner,
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
        Rejection::InvalidRequest {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

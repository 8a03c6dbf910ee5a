//! Commands: what an actor asks of a pool, with its attestation and idempotency token.
//!
//! `decide` validates every command with [`Command::validate`] first; the limits below are the
//! whole list of what a well-formed command may carry.

use std::collections::HashSet;
use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::actor::Role;
use crate::batch::BatchMembership;
use crate::ids::{ActorId, Attestation, IdempotencyToken, ParamsDigest, PoolId, Timestamp};
use crate::rejection::Rejection;
use crate::signing::SIGNED_AT_SKEW_MS;

/// Longest pool id, in bytes.
pub const POOL_ID_BYTES_MAX: usize = 64;
/// Longest idempotency token, in bytes.
pub const TOKEN_BYTES_MAX: usize = 255;
/// Longest actor id, in bytes.
pub const ACTOR_BYTES_MAX: usize = 128;
/// Longest resource label, in bytes.
pub const RESOURCE_BYTES_MAX: usize = 128;
/// Longest named unit, in bytes. With [`UNITS_MAX`] it keeps the largest `declare_pool` event
/// (~50 KiB) under [`crate::codec::ENCODED_EVENT_BYTES_MAX`].
pub const UNIT_BYTES_MAX: usize = 48;
/// Longest requester label, in bytes.
pub const REQUESTER_BYTES_MAX: usize = 128;
/// Largest pool capacity. Far above any physical pool; refuses absurd values like 2^64-1.
pub const CAPACITY_MAX: u64 = 1_000_000_000;
/// Most named units a pool may declare.
pub const UNITS_MAX: usize = 1_024;
/// Most units one reservation may take.
pub const COUNT_MAX: u32 = 10_000;
/// Shortest hold: one second.
pub const HOLD_DURATION_MS_MIN: u64 = 1_000;
/// Longest hold: thirty days.
pub const HOLD_DURATION_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Idempotency window of a pool declared without one: one hour.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 3_600_000;
/// How many signature skews the shortest idempotency window spans.
pub const WINDOW_OVER_SKEW_MIN: u64 = 2;
/// Shortest idempotency window: twice the signature skew (four minutes). A request is accepted
/// while its `signed_at` is within the skew of the server's clock either way, so a captured copy
/// can arrive up to two skews after the original was recorded; the pool must still remember the
/// token then, or the copy would become a second action.
pub const IDEMPOTENCY_WINDOW_MS_MIN: u64 = WINDOW_OVER_SKEW_MIN * SIGNED_AT_SKEW_MS;
/// Longest idempotency window: seven days.
pub const IDEMPOTENCY_WINDOW_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Latest `closes_at` accepted: year 2200, to refuse absurd times.
pub const TIMESTAMP_MS_MAX: u64 = 7_258_118_400_000;

/// What is asked, with its parameters. The target (pool or reservation) is in [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    DeclarePool {
        capacity: u64,
        closes_at: Option<Timestamp>,
        /// Named units (a seat map); empty means units are fungible and `resource` is a label.
        units: Vec<String>,
        /// How long a token's outcome is remembered, recorded with the pool so replay forgets
        /// tokens exactly as the live service did.
        idempotency_window_ms: u64,
    },
    AdjustCapacity {
        capacity: u64,
    },
    ClosePool,
    Reserve {
        resource: String,
        requester: String,
        duration_ms: u64,
        count: u32,
    },
    ConfirmReservation {
        reservation: u64,
    },
    CancelReservation {
        reservation: u64,
    },
    ExpireReservation {
        reservation: u64,
    },
}

/// The action's name without parameters; what a token is bound to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    DeclarePool,
    AdjustCapacity,
    ClosePool,
    Reserve,
    ConfirmReservation,
    CancelReservation,
    ExpireReservation,
}

impl ActionKind {
    pub const ALL: [ActionKind; 7] = [
        ActionKind::DeclarePool,
        ActionKind::AdjustCapacity,
        ActionKind::ClosePool,
        ActionKind::Reserve,
        ActionKind::ConfirmReservation,
        ActionKind::CancelReservation,
        ActionKind::ExpireReservation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::DeclarePool => "declare_pool",
            ActionKind::AdjustCapacity => "adjust_capacity",
            ActionKind::ClosePool => "close_pool",
            ActionKind::Reserve => "reserve",
            ActionKind::ConfirmReservation => "confirm_reservation",
            ActionKind::CancelReservation => "cancel_reservation",
            ActionKind::ExpireReservation => "expire_reservation",
        }
    }

    pub fn parse(text: &str) -> Option<ActionKind> {
        ActionKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::DeclarePool { .. } => ActionKind::DeclarePool,
            Action::AdjustCapacity { .. } => ActionKind::AdjustCapacity,
            Action::ClosePool => ActionKind::ClosePool,
            Action::Reserve { .. } => ActionKind::Reserve,
            Action::ConfirmReservation { .. } => ActionKind::ConfirmReservation,
            Action::CancelReservation { .. } => ActionKind::CancelReservation,
            Action::ExpireReservation { .. } => ActionKind::ExpireReservation,
        }
    }

    /// The reservation sequence this action targets, if any.
    pub fn reservation(&self) -> Option<u64> {
        match self {
            Action::ConfirmReservation { reservation }
            | Action::CancelReservation { reservation }
            | Action::ExpireReservation { reservation } => Some(*reservation),
            _ => None,
        }
    }

    /// Visits the parameters as (name, value) in canonical order (ascending name): the input of
    /// the parameters digest and part of the signed bytes (see `signing`). A visitor, not a
    /// list: every command's digest is computed from these, and nothing here allocates.
    pub fn canonical_params(&self, mut visit: impl FnMut(&'static str, ParamValue<'_>)) {
        match self {
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            } => {
                visit("capacity", ParamValue::Number(*capacity));
                visit(
                    "closes_at",
                    ParamValue::OptionalNumber(closes_at.map(|at| at.0)),
                );
                visit(
                    "idempotency_window_ms",
                    ParamValue::Number(*idempotency_window_ms),
                );
                visit("units", ParamValue::Joined(units));
            }
            Action::AdjustCapacity { capacity } => {
                visit("capacity", ParamValue::Number(*capacity));
            }
            Action::ClosePool => {}
            Action::Reserve {
                resource,
                requester,
                duration_ms,
                count,
            } => {
                visit("count", ParamValue::Number(u64::from(*count)));
                visit("duration_ms", ParamValue::Number(*duration_ms));
                visit("requester", ParamValue::Text(requester));
                visit("resource", ParamValue::Text(resource));
            }
            // The reservation is a parameter: reusing a token for another reservation must be
            // a collision, not a replay of the first one's outcome.
            Action::ConfirmReservation { reservation }
            | Action::CancelReservation { reservation }
            | Action::ExpireReservation { reservation } => {
                visit("reservation", ParamValue::Number(*reservation));
            }
        }
    }
}

/// A parameter's value as it is signed (see `signing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue<'a> {
    Text(&'a str),
    /// Written in decimal.
    Number(u64),
    /// Written in decimal; absent is the empty text.
    OptionalNumber(Option<u64>),
    /// The texts joined by U+001F.
    Joined(&'a [String]),
}

/// A command as `decide` receives it: the verified actor, its attestation, the idempotency token
/// and the digest of the parameters, all computed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub pool: PoolId,
    pub actor: ActorId,
    /// The actor's role as the edge verified it (from its key in force): the role table
    /// decides with it whether the actor may act on another actor's reservation.
    pub role: Role,
    pub attestation: Attestation,
    pub token: IdempotencyToken,
    pub digest: ParamsDigest,
    pub action: Action,
    /// Set when the command came in a signed batch: the attestation's signature is then over
    /// the batch, and this proves the command was part of it.
    pub batch: Option<Box<BatchMembership>>,
}

/// An idempotency token (a command's, or a batch's key): 1..=`TOKEN_BYTES_MAX` bytes.
pub fn validate_token(token: &IdempotencyToken) -> Result<(), Rejection> {
    if token.as_str().is_empty() {
        return Err(Rejection::invalid("idempotency_token", "must not be empty"));
    }
    if token.as_str().len() > TOKEN_BYTES_MAX {
        return Err(Rejection::invalid(
            "idempotency_token",
            format!("longer than {TOKEN_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// The rule for pool ids, as errors and the docs state it.
pub const POOL_ID_RULE: &str =
    "must be 1..=64 bytes of letters, digits, '_', '.', '-', and not '.' or '..'";
/// The rule for actor ids, as errors and the docs state it.
pub const ACTOR_ID_RULE: &str =
    "must be 1..=128 bytes of letters, digits, '_', '.', '@', '-', and not '.' or '..'";

/// A pool id: 1..=64 bytes of `[A-Za-z0-9_.-]`, not `.` or `..` (a URL path could never
/// address those). One rule for declaration, path parameters and replay alike.
pub fn is_valid_pool_id(text: &str) -> bool {
    is_identifier(text, POOL_ID_BYTES_MAX, b"_.-")
}

/// An actor id: 1..=128 bytes of `[A-Za-z0-9_.@-]`, not `.` or `..`. It travels in a URL path
/// (registration) and in the ASCII `Allot-Actor` header, so nothing else could ever sign.
pub fn is_valid_actor_id(text: &str) -> bool {
    is_identifier(text, ACTOR_BYTES_MAX, b"_.@-")
}

fn is_identifier(text: &str, max: usize, punctuation: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

fn check_label(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.trim().is_empty() {
        return Err(Rejection::invalid(
            field,
            "must have a non-whitespace character",
        ));
    }
    if value.len() > max {
        return Err(Rejection::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl Command {
    /// Stateless checks, in this order: pool id, token, actor, then the action's parameters.
    /// Nothing here reads the pool, so these rejections are never cached.
    pub fn validate(&self) -> Result<(), Rejection> {
        if !is_valid_pool_id(self.pool.as_str()) {
            return Err(Rejection::invalid("pool_id", POOL_ID_RULE));
        }
        validate_token(&self.token)?;
        if !is_valid_actor_id(self.actor.as_str()) {
            return Err(Rejection::invalid("actor", ACTOR_ID_RULE));
        }
        match &self.action {
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            } => {
                check_capacity(*capacity)?;
                if let Some(at) = closes_at
                    && at.0 > TIMESTAMP_MS_MAX
                {
                    return Err(Rejection::invalid("closes_at", "after year 2200"));
                }
                check_idempotency_window(*idempotency_window_ms)?;
                if units.len() > UNITS_MAX {
                    return Err(Rejection::invalid(
                        "units",
                        format!("more than {UNITS_MAX} units"),
                    ));
                }
                let mut seen = HashSet::with_capacity(units.len());
                for unit in units {
                    check_label("units", unit, UNIT_BYTES_MAX)?;
                    if unit.contains('\u{1f}') || !seen.insert(unit.as_str()) {
                        return Err(Rejection::invalid(
                            "units",
                            format!("duplicate unit {unit}"),
                        ));
                    }
                }
            }
            Action::AdjustCapacity { capacity } => check_capacity(*capacity)?,
            Action::ClosePool => {}
            Action::Reserve {
                resource,
                requester,
                duration_ms,
                count,
            } => {
                check_label("resource", resource, RESOURCE_BYTES_MAX)?;
                check_label("requester", requester, REQUESTER_BYTES_MAX)?;
                if !(HOLD_DURATION_MS_MIN..=HOLD_DURATION_MS_MAX).contains(duration_ms) {
                    return Err(Rejection::invalid(
                        "duration_ms",
                        format!("must be within {HOLD_DURATION_MS_MIN}..={HOLD_DURATION_MS_MAX}"),
                    ));
                }
                if !(1..=COUNT_MAX).contains(count) {
                    return Err(Rejection::invalid(
                        "count",
                        format!("must be within 1..={COUNT_MAX}"),
                    ));
                }
            }
            Action::ConfirmReservation { reservation }
            | Action::CancelReservation { reservation }
            | Action::ExpireReservation { reservation } => {
                if *reservation == 0 {
                    return Err(Rejection::invalid("reservation_id", "sequence starts at 1"));
                }
            }
        }
        Ok(())
    }
}

/// A pool's idempotency window: within
/// [`IDEMPOTENCY_WINDOW_MS_MIN`]`..=`[`IDEMPOTENCY_WINDOW_MS_MAX`]. The one check of it:
/// `declare_pool` is validated with it, and the edge may call it to refuse early.
pub fn check_idempotency_window(window_ms: u64) -> Result<(), Rejection> {
    if !(IDEMPOTENCY_WINDOW_MS_MIN..=IDEMPOTENCY_WINDOW_MS_MAX).contains(&window_ms) {
        return Err(Rejection::invalid(
            "idempotency_window_ms",
            format!(
                "must be within {IDEMPOTENCY_WINDOW_MS_MIN}..={IDEMPOTENCY_WINDOW_MS_MAX} \
                 (at least {WINDOW_OVER_SKEW_MIN} times the signature skew)"
            ),
        ));
    }
    Ok(())
}

fn check_capacity(capacity: u64) -> Result<(), Rejection> {
    if capacity > CAPACITY_MAX {
        return Err(Rejection::invalid(
            "capacity",
            format!("must be at most {CAPACITY_MAX}"),
        ));
    }
    Ok(())
}

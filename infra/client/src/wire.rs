//! The API's wire contract, as a client speaks it: header names, the path and JSON body of each
//! command, and the signature of a command. The server reads the same header names from here,
//! so the two cannot drift; `docs/signing.md` and `/openapi.json` publish the same contract.

use allot_domain::signing::{self, Read, command_target};
use allot_domain::{
    Action, ActorChange, ActorId, Attestation, IdempotencyToken, PoolId, Timestamp,
};
use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use serde_json::Value;

/// The idempotency token of a state-changing request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `true` on an answer that replays the outcome recorded earlier for the token.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The acting actor's id.
pub const ACTOR_HEADER: &str = "allot-actor";
/// When the request was signed, in milliseconds since the epoch.
pub const SIGNED_AT_HEADER: &str = "allot-signed-at";
/// Hex of the ed25519 signature over the canonical bytes.
pub const SIGNATURE_HEADER: &str = "allot-signature";

/// The path a pool command is sent to.
pub fn command_path(pool: &PoolId, action: &Action) -> String {
    match action {
        Action::DeclarePool { .. } => format!("/v1/pools/{pool}"),
        Action::AdjustCapacity { .. } => format!("/v1/pools/{pool}/capacity"),
        Action::ClosePool => format!("/v1/pools/{pool}/close"),
        Action::Reserve { .. } => format!("/v1/pools/{pool}/reservations"),
        Action::ConfirmReservation { reservation } => {
            format!("/v1/reservations/{pool}:{reservation}/confirm")
        }
        Action::CancelReservation { reservation } => {
            format!("/v1/reservations/{pool}:{reservation}/cancel")
        }
        Action::ExpireReservation { reservation } => {
            format!("/v1/reservations/{pool}:{reservation}/expire")
        }
    }
}

/// The JSON body of a pool command, as the API documents it.
#[derive(Serialize)]
#[serde(untagged)]
enum CommandBody<'a> {
    Declare {
        capacity: u64,
        closes_at: Option<Timestamp>,
        units: &'a [String],
        idempotency_window_ms: u64,
    },
    Capacity {
        capacity: u64,
    },
    Reserve {
        resource: &'a str,
        requester: &'a str,
        duration_ms: u64,
        count: u32,
    },
    Empty {},
}

impl<'a> CommandBody<'a> {
    fn of(action: &'a Action) -> CommandBody<'a> {
        match action {
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            } => CommandBody::Declare {
                capacity: *capacity,
                closes_at: *closes_at,
                units,
                idempotency_window_ms: *idempotency_window_ms,
            },
            Action::AdjustCapacity { capacity } => CommandBody::Capacity {
                capacity: *capacity,
            },
            Action::Reserve {
                resource,
                requester,
                duration_ms,
                count,
            } => CommandBody::Reserve {
                resource,
                requester,
                duration_ms: *duration_ms,
                count: *count,
            },
            Action::ClosePool
            | Action::ConfirmReservation { .. }
            | Action::CancelReservation { .. }
            | Action::ExpireReservation { .. } => CommandBody::Empty {},
        }
    }
}

/// The JSON body of a pool command.
pub fn command_body(action: &Action) -> Value {
    serde_json::to_value(CommandBody::of(action)).unwrap_or_else(|_| serde_json::json!({}))
}

/// Writes the JSON body of a pool command to `out` (what a load generator sends, without an
/// intermediate value).
pub fn write_command_body(action: &Action, out: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(out, &CommandBody::of(action))
}

/// The path of the signed head's read (target empty).
pub const HEAD_PATH: &str = "/v1/head";

/// The path of a reservation's read.
pub fn reservation_path(id: &allot_domain::ReservationId) -> String {
    format!("/v1/reservations/{id}")
}

/// The path of a pool's read.
pub fn pool_path(pool: &PoolId) -> String {
    format!("/v1/pools/{pool}")
}

/// The path of an actor change.
pub fn actor_change_path(actor: &ActorId, change: &ActorChange) -> String {
    match change {
        ActorChange::Registered { .. } => format!("/v1/actors/{actor}"),
        ActorChange::Revoked => format!("/v1/actors/{actor}/revoke"),
    }
}

/// Signs a pool command as `actor`. Used by clients, the sweeper and the demo.
pub fn sign_command(
    key: &SigningKey,
    actor: &ActorId,
    pool: &PoolId,
    action: &Action,
    token: &IdempotencyToken,
    signed_at: Timestamp,
) -> Attestation {
    let bytes = signing::signing_bytes(
        action,
        &command_target(pool, action),
        token,
        actor,
        signed_at,
    );
    Attestation {
        signed_at,
        signature: key.sign(&bytes).to_bytes().to_vec(),
    }
}

/// Signs a read of `target` (a pool id, or a reservation id `pool:seq`) as `actor`.
pub fn sign_read(
    key: &SigningKey,
    actor: &ActorId,
    read: Read,
    target: &str,
    signed_at: Timestamp,
) -> Attestation {
    let bytes = signing::read_signing_bytes(read, target, actor, signed_at);
    Attestation {
        signed_at,
        signature: key.sign(&bytes).to_bytes().to_vec(),
    }
}

/// Signs a change of `target`'s registration as the admin `by`.
pub fn sign_actor_change(
    key: &SigningKey,
    by: &ActorId,
    target: &ActorId,
    change: &ActorChange,
    token: &IdempotencyToken,
    signed_at: Timestamp,
) -> Attestation {
    let (action, params) = allot_domain::signing::actor_change_params(change);
    let bytes = signing::actor_signing_bytes(action, target, &params, token, by, signed_at);
    Attestation {
        signed_at,
        signature: key.sign(&bytes).to_bytes().to_vec(),
    }
}

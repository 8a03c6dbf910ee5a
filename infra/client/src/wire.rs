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

/// The path a signed batch of pool commands is sent to.
pub const BATCH_PATH: &str = "/v1/batches";
/// The same, asking for each recorded command's receipt.
pub const BATCH_RECEIPTS_PATH: &str = "/v1/batches?receipts=true";

/// One command of a batch: where it goes, what it does and its own idempotency token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommand {
    pub pool: PoolId,
    pub action: Action,
    pub token: IdempotencyToken,
}

impl BatchCommand {
    fn member(&self) -> allot_domain::batch::Member<'_> {
        allot_domain::batch::Member {
            pool: &self.pool,
            action: &self.action,
            token: &self.token,
        }
    }
}

/// One member of a batch body, as the API documents it (`docs/http.md`, "Batches"): the action's
/// name, its token, the pool (or, for the actions on a reservation, the reservation id) and the
/// action's parameters, named as in the single-command bodies.
#[derive(Serialize)]
struct BatchMemberBody<'a> {
    action: &'static str,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<String>,
    #[serde(flatten)]
    params: CommandBody<'a>,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    commands: Vec<BatchMemberBody<'a>>,
}

/// Writes the JSON body of a batch to `out`.
pub fn write_batch_body(commands: &[BatchCommand], out: &mut Vec<u8>) -> serde_json::Result<()> {
    let members = commands
        .iter()
        .map(|command| {
            let (pool_id, reservation_id) = match command.action.reservation() {
                Some(seq) => (
                    None,
                    Some(format!(
                        "{}{}{seq}",
                        command.pool,
                        allot_domain::ids::RESERVATION_ID_SEPARATOR
                    )),
                ),
                None => (Some(command.pool.as_str()), None),
            };
            BatchMemberBody {
                action: command.action.kind().as_str(),
                token: command.token.as_str(),
                pool_id,
                reservation_id,
                params: CommandBody::of(&command.action),
            }
        })
        .collect();
    serde_json::to_writer(out, &BatchBody { commands: members })
}

/// Signs `commands` as one batch with key `token` as `actor`: the signature over the batch
/// bytes of `docs/signing.md` ("Batches"). `None` for no commands.
pub fn sign_batch(
    key: &SigningKey,
    actor: &ActorId,
    token: &IdempotencyToken,
    commands: &[BatchCommand],
    signed_at: Timestamp,
) -> Option<Attestation> {
    let batch = allot_domain::batch::SignedBatch::new(
        commands.iter().map(BatchCommand::member),
        actor,
        signed_at,
    )?;
    let bytes = allot_domain::batch::batch_signing_bytes(
        &batch.root(),
        batch.count(),
        token,
        actor,
        signed_at,
    );
    Some(Attestation {
        signed_at,
        signature: key.sign(&bytes).to_bytes().to_vec(),
    })
}

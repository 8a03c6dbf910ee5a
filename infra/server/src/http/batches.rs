//! Signed batches: `POST /v1/batches`, many pool commands under one signature.
//!
//! The order of checks, each refusing the whole batch (nothing is decided):
//! 1. the envelope: `Idempotency-Key` (the batch's key), actor, signed-at, signature headers;
//! 2. the body: JSON of the documented shape, 1..=[`BATCH_COMMANDS_MAX`] members (more: 413);
//! 3. every member readable as a command (action, target, parameters of the right types): a
//!    member that is not cannot be part of a signed root, so the batch is refused, naming it;
//!    then the batch key's rule (that of a token);
//! 4. the signature over the batch bytes (`docs/signing.md`, "Batches"), verified once;
//! 5. in flight: a permit per member, else 503 `overloaded`.
//!
//! Then each member alone, exactly as the single-command route would: refused if malformed
//! (its rule, e.g. a pool id or a count) or if the actor's role may not submit its action,
//! otherwise submitted with the batch's signature and its membership proof. Members are handed
//! to the shards in the batch's order, so two members of one pool are decided in that order.
//! The answer is 200 with one result per member, in order: the body the single route would
//! answer, with that route's `status` and, for a replayed outcome, `replayed: true`. Receipts
//! only with `?receipts=true`: a receipt carries its event whole, several times the size of
//! the outcome, and a batch's client usually checks the signed head instead.
//! Must not: decide anything, or answer a member differently from the single route.

use std::time::Instant;

use allot_client::wire::BatchCommand;
use allot_domain::batch::{BATCH_COMMANDS_MAX, Member, SignedBatch, batch_signing_bytes};
use allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT;
use allot_domain::signing::params_digest;
use allot_domain::{Action, ActionKind, Command, IdempotencyToken, Outcome, Role, Timestamp};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::reservation_id;
use super::{AppState, OutcomeBody, Problem, SignedHeaders, body, envelope, outcome_body};
use crate::identity::AuthError;
use crate::service::{Queued, SubmitError};

/// The body of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchBody {
    commands: Vec<MemberBody>,
}

/// One member as sent: the union of the single routes' bodies, plus what their paths carry.
/// A field may be absent; `null` only where the single route's body takes it (`closes_at`,
/// `idempotency_window_ms`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    action: String,
    token: String,
    #[serde(default, deserialize_with = "present")]
    pool_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    reservation_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    capacity: Option<u64>,
    #[serde(default)]
    closes_at: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    units: Option<Vec<String>>,
    #[serde(default)]
    idempotency_window_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    resource: Option<String>,
    #[serde(default, deserialize_with = "present")]
    requester: Option<String>,
    #[serde(default, deserialize_with = "present")]
    duration_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    count: Option<u32>,
}

/// A field that, when present, holds a value (`null` is refused, as the single routes do).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Why a member cannot be read as a command.
fn unreadable(index: usize, what: impl std::fmt::Display) -> Problem {
    Problem::invalid(format!("commands[{index}]: {what}"))
}

fn required<T>(value: Option<T>, index: usize, name: &str, action: &str) -> Result<T, Problem> {
    value.ok_or_else(|| unreadable(index, format!("{action} needs `{name}`")))
}

impl MemberBody {
    /// The command this member names. Rules beyond the shape (id syntax, limits) are checked
    /// per member after the signature, as the single route checks them.
    fn command(self, index: usize) -> Result<BatchCommand, Problem> {
        let kind = ActionKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == self.action)
            .ok_or_else(|| unreadable(index, format!("unknown action `{}`", self.action)))?;
        let on_reservation = matches!(
            kind,
            ActionKind::ConfirmReservation
                | ActionKind::CancelReservation
                | ActionKind::ExpireReservation
        );
        let action_name = kind.as_str();
        let stray = |name: &str, present: bool| {
            if present {
                Err(unreadable(
                    index,
                    format!("`{name}` is not a parameter of {action_name}"),
                ))
            } else {
                Ok(())
            }
        };
        let (pool, reservation) = if on_reservation {
            stray("pool_id", self.pool_id.is_some())?;
            let text = required(self.reservation_id, index, "reservation_id", action_name)?;
            let id = reservation_id(&text).map_err(|p| unreadable(index, p.detail))?;
            (id.pool, Some(id.seq))
        } else {
            stray("reservation_id", self.reservation_id.is_some())?;
            let text = required(self.pool_id, index, "pool_id", action_name)?;
            // The pool id's rule is checked per member (validate), as the single route's path.
            (allot_domain::PoolId::new(text), None)
        };
        let declare = kind == ActionKind::DeclarePool;
        let capacity_taken = declare || kind == ActionKind::AdjustCapacity;
        let reserve = kind == ActionKind::Reserve;
        stray("capacity", !capacity_taken && self.capacity.is_some())?;
        stray("closes_at", !declare && self.closes_at.is_some())?;
        stray("units", !declare && self.units.is_some())?;
        stray(
            "idempotency_window_ms",
            !declare && self.idempotency_window_ms.is_some(),
        )?;
        stray("resource", !reserve && self.resource.is_some())?;
        stray("requester", !reserve && self.requester.is_some())?;
        stray("duration_ms", !reserve && self.duration_ms.is_some())?;
        stray("count", !reserve && self.count.is_some())?;
        let action = match kind {
            ActionKind::DeclarePool => Action::DeclarePool {
                capacity: required(self.capacity, index, "capacity", action_name)?,
                closes_at: self.closes_at.map(Timestamp),
                units: self.units.unwrap_or_default(),
                idempotency_window_ms: self
                    .idempotency_window_ms
                    .unwrap_or(IDEMPOTENCY_WINDOW_MS_DEFAULT),
            },
            ActionKind::AdjustCapacity => Action::AdjustCapacity {
                capacity: required(self.capacity, index, "capacity", action_name)?,
            },
            ActionKind::ClosePool => Action::ClosePool,
            ActionKind::Reserve => Action::Reserve {
                resource: required(self.resource, index, "resource", action_name)?,
                requester: required(self.requester, index, "requester", action_name)?,
                duration_ms: required(self.duration_ms, index, "duration_ms", action_name)?,
                count: self.count.unwrap_or(1),
            },
            ActionKind::ConfirmReservation => Action::ConfirmReservation {
                reservation: reservation.unwrap_or_default(),
            },
            ActionKind::CancelReservation => Action::CancelReservation {
                reservation: reservation.unwrap_or_default(),
            },
            ActionKind::ExpireReservation => Action::ExpireReservation {
                reservation: reservation.unwrap_or_default(),
            },
        };
        Ok(BatchCommand {
            pool,
            action,
            token: IdempotencyToken::new(self.token),
        })
    }
}

/// One member's result: the single route's body, its status, and whether it was replayed.
#[derive(Serialize)]
#[serde(untagged)]
enum MemberResult<'a> {
    Outcome {
        status: u16,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
        #[serde(flatten)]
        body: Box<OutcomeBody<'a>>,
    },
    Problem {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
        #[serde(flatten)]
        problem: Problem,
    },
}

#[derive(Serialize)]
struct BatchAnswer<'a> {
    results: Vec<MemberResult<'a>>,
}

/// The query of a batch: `?receipts=true` asks for each recorded member's receipt.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchQuery {
    #[serde(default)]
    receipts: bool,
}

pub(super) async fn submit_batch(
    State(state): State<AppState>,
    query: Result<Query<BatchQuery>, QueryRejection>,
    headers: SignedHeaders,
    payload: Result<Json<BatchBody>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let receipts = match query {
        Ok(Query(query)) => query.receipts,
        Err(rejection) => return Problem::invalid(rejection.body_text()).into_response(),
    };
    match decide_batch(&state, &headers, payload, receipts).await {
        Ok(answer) => {
            let members = answer.len();
            let response = render(&state, answer, receipts);
            let metrics = state.service.metrics();
            metrics.observe_batch(members, started.elapsed().as_secs_f64());
            response
        }
        Err(problem) => {
            state
                .service
                .metrics()
                .count_command("batch", problem.code.as_str());
            problem.into_response()
        }
    }
}

/// What each member got: its kind and the single route's answer.
type Answered = Vec<(
    ActionKind,
    Result<(crate::service::Reply, StatusCode), Problem>,
)>;

async fn decide_batch(
    state: &AppState,
    headers: &SignedHeaders,
    payload: Result<Json<BatchBody>, JsonRejection>,
    receipts: bool,
) -> Result<Answered, Problem> {
    let envelope = envelope(headers)?;
    let batch = body(payload)?;
    let count = batch.commands.len();
    if count == 0 {
        return Err(Problem::invalid("a batch carries at least one command"));
    }
    if count > BATCH_COMMANDS_MAX {
        return Err(Problem::too_large(format!(
            "a batch of {count} commands; at most {BATCH_COMMANDS_MAX}"
        )));
    }
    let commands = batch
        .commands
        .into_iter()
        .enumerate()
        .map(|(index, member)| member.command(index))
        .collect::<Result<Vec<_>, Problem>>()?;
    if let Err(rejection) = allot_domain::command::validate_token(&envelope.token) {
        return Err(Problem::from(&rejection));
    }
    let signed_at = envelope.attestation.signed_at;
    let tree = SignedBatch::new(
        commands.iter().map(|command| Member {
            pool: &command.pool,
            action: &command.action,
            token: &command.token,
        }),
        &envelope.actor,
        signed_at,
    )
    .ok_or_else(|| Problem::invalid("a batch carries at least one command"))?;
    let bytes = batch_signing_bytes(
        &tree.root(),
        tree.count(),
        &envelope.token,
        &envelope.actor,
        signed_at,
    );
    let service = &state.service;
    let role = service
        .actors()
        .authenticate(
            &state.verifier,
            &envelope.actor,
            bytes,
            &envelope.attestation,
            service.clock().now(),
        )
        .await
        .map_err(|error| Problem::from(&error))?;
    // Taken once the batch is signed: an unsigned one never holds the commands' places.
    let permits = u32::try_from(count).unwrap_or(u32::MAX);
    let Ok(_permits) = state.in_flight.try_acquire_many(permits) else {
        return Err(Problem::overloaded("too many requests in flight; retry"));
    };
    // Each member is checked and queued on its shard here, in the batch's order, before any
    // answer is awaited: members of one pool are decided in the batch's order. Once a member
    // of a pool finds its shard's queue full, the pool's later members are refused alike, so
    // none is decided ahead of an earlier one that a client must send again.
    let mut overloaded: Vec<allot_domain::PoolId> = Vec::new();
    let queued: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(index, member)| {
            if overloaded.contains(&member.pool) {
                let problem = Problem::from(&SubmitError::Overloaded(member.pool.clone()));
                return (member.action.kind(), Err(problem));
            }
            let kind = member.action.kind();
            let command = Command {
                pool: member.pool,
                actor: envelope.actor.clone(),
                role,
                attestation: envelope.attestation.clone(),
                token: member.token,
                digest: params_digest(&member.action),
                action: member.action,
                batch: tree.membership(&envelope.token, index).map(Box::new),
            };
            let pool = command.pool.clone();
            let queued = queue_member(state, role, command, receipts);
            if let Err(problem) = &queued
                && problem.code == super::ProblemCode::Overloaded
            {
                overloaded.push(pool);
            }
            (kind, queued)
        })
        .collect();
    let answers = queued.into_iter().map(|(kind, queued)| async move {
        let answer = match queued {
            Ok((queued, status)) => queued
                .await
                .map(|reply| (reply, status))
                .map_err(|error| Problem::from(&error)),
            Err(problem) => Err(problem),
        };
        (kind, answer)
    });
    Ok(futures::future::join_all(answers).await)
}

/// One member, from its own checks on, as the single route takes a command after its
/// signature: queued on its shard, or refused.
fn queue_member(
    state: &AppState,
    role: Role,
    command: Command,
    receipts: bool,
) -> Result<(Queued, StatusCode), Problem> {
    // A single route's token is a header: visible ASCII (a member answered 503 can then be
    // sent again alone).
    if !command
        .token
        .as_str()
        .bytes()
        .all(|byte| (32..127).contains(&byte) || byte == b'\t')
    {
        return Err(Problem::invalid("token must be visible ASCII"));
    }
    // The single routes of pool actions check the pool id as a path, in their own words.
    if command.action.reservation().is_none() {
        super::pool_id(command.pool.as_str())?;
    }
    command
        .validate()
        .map_err(|rejection| Problem::from(&rejection))?;
    let kind = command.action.kind();
    if !role.may(kind) {
        return Err(Problem::from(&AuthError::Forbidden {
            role,
            action: kind.as_str().to_owned(),
        }));
    }
    let queued = state
        .service
        .enqueue(command, receipts)
        .map_err(|error| Problem::from(&error))?;
    Ok((queued, super::status_of(kind)))
}

fn render(state: &AppState, answered: Answered, receipts: bool) -> Response {
    let metrics = state.service.metrics();
    let signer = state.seal_signer.as_deref().filter(|_| receipts);
    let replies: Vec<_> = answered
        .into_iter()
        .map(|(kind, answer)| {
            let label = match &answer {
                Ok((reply, _)) => super::outcome_label(reply),
                Err(problem) => problem.code.as_str(),
            };
            metrics.count_command(kind.as_str(), label);
            answer
        })
        .collect();
    let results = replies
        .iter()
        .map(|answer| match answer {
            Ok((reply, status)) => {
                let receipt = super::receipt_of(reply, signer);
                match &reply.outcome {
                    Outcome::Rejected(rejection) => {
                        let mut problem = Problem::from(rejection);
                        problem.receipt = receipt.map(Box::new);
                        MemberResult::Problem {
                            replayed: reply.replayed,
                            problem,
                        }
                    }
                    outcome => MemberResult::Outcome {
                        status: status.as_u16(),
                        replayed: reply.replayed,
                        body: Box::new(OutcomeBody {
                            receipt,
                            ..outcome_body(outcome)
                        }),
                    },
                }
            }
            Err(problem) => MemberResult::Problem {
                replayed: false,
                problem: problem.clone(),
            },
        })
        .collect();
    (StatusCode::OK, Json(BatchAnswer { results })).into_response()
}

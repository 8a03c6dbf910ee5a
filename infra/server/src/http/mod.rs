//! The HTTP API: JSON commands in, outcomes or RFC 9457 problems out.
//!
//! Every state-changing request carries `Idempotency-Key` (missing → 400) and a signature in
//! `Allot-Actor`, `Allot-Signed-At` (ms since the epoch) and `Allot-Signature` (hex ed25519 over
//! the canonical bytes of `docs/signing.md`). A replayed outcome carries
//! `Idempotent-Replayed: true`. Every error becomes a problem in [`problem`], the one place the
//! mapping lives.
//! Must not: decide anything (the service does) or build a problem code outside [`problem`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use allot_domain::{
    Action, ActionKind, ActorChange, ActorEvent, ActorId, Attestation, Command, IdempotencyToken,
    Outcome, PoolId, RejectionCode, ReservationId, Role, Timestamp, command, signing,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use allot_client::wire;
use allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT;
use allot_domain::signing::{command_target, params_digest};
use allot_domain::streams::pool_stream;

use crate::identity::AuthError;
use crate::identity::verifier::{SignatureVerifier, VERIFY_WORKERS};
use crate::service::replay_tail::decode_pool;
use crate::service::{Reply, Service};

pub mod openapi;
pub mod problem;

pub use problem::{Problem, ProblemCode, status_for};

/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Requests decided at once; more are refused with 503 rather than queued without bound.
pub const IN_FLIGHT_MAX: usize = 8192;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static(wire::IDEMPOTENCY_KEY);
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static(wire::IDEMPOTENT_REPLAYED);
pub const ACTOR_HEADER: HeaderName = HeaderName::from_static(wire::ACTOR_HEADER);
pub const SIGNED_AT_HEADER: HeaderName = HeaderName::from_static(wire::SIGNED_AT_HEADER);
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(wire::SIGNATURE_HEADER);

#[derive(Clone)]
struct AppState {
    service: Service,
    in_flight: Arc<Semaphore>,
    verifier: SignatureVerifier,
}

/// The application router.
pub fn router(service: Service) -> Router {
    let verifier = SignatureVerifier::start(VERIFY_WORKERS, Arc::clone(service.metrics()));
    let state = AppState {
        service,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
        verifier,
    };
    Router::new()
        .route("/v1/pools/{pool}", post(declare_pool).get(show_pool))
        .route("/v1/pools/{pool}/capacity", post(adjust_capacity))
        .route("/v1/pools/{pool}/close", post(close_pool))
        .route("/v1/pools/{pool}/reservations", post(reserve))
        .route("/v1/reservations/{reservation}", get(show_reservation))
        .route("/v1/reservations/{reservation}/confirm", post(confirm))
        .route("/v1/reservations/{reservation}/cancel", post(cancel))
        .route("/v1/reservations/{reservation}/expire", post(expire))
        .route("/v1/actors/{actor}", post(register_actor))
        .route("/v1/actors/{actor}/revoke", post(revoke_actor))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// The signed envelope of a request: who, when, the signature and the idempotency token.
struct Envelope {
    actor: ActorId,
    token: IdempotencyToken,
    attestation: Attestation,
}

/// The headers of a signed request, moved out of the request rather than copied (the
/// `HeaderMap` extractor clones every header of every request). Missing ones are refused where
/// the envelope is read, so the order of checks stays that of the handler.
struct SignedHeaders {
    token: Option<HeaderValue>,
    actor: Option<HeaderValue>,
    signed_at: Option<HeaderValue>,
    signature: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for SignedHeaders {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        // `remove` yields the first value of a repeated header, as `get` does.
        Ok(SignedHeaders {
            token: parts.headers.remove(IDEMPOTENCY_KEY),
            actor: parts.headers.remove(ACTOR_HEADER),
            signed_at: parts.headers.remove(SIGNED_AT_HEADER),
            signature: parts.headers.remove(SIGNATURE_HEADER),
        })
    }
}

fn header_text<'a>(value: Option<&'a HeaderValue>, name: &HeaderName) -> Result<&'a str, Problem> {
    value
        .ok_or_else(|| Problem::invalid(format!("{name} header is required")))?
        .to_str()
        .map_err(|_| Problem::invalid(format!("{name} header must be visible ASCII")))
}

fn envelope(headers: &SignedHeaders) -> Result<Envelope, Problem> {
    let token = header_text(headers.token.as_ref(), &IDEMPOTENCY_KEY)?;
    let actor = header_text(headers.actor.as_ref(), &ACTOR_HEADER)?;
    let signed_at = header_text(headers.signed_at.as_ref(), &SIGNED_AT_HEADER)?
        .parse::<u64>()
        .map_err(|_| Problem::invalid("allot-signed-at must be milliseconds since the epoch"))?;
    let signature = hex::decode(header_text(headers.signature.as_ref(), &SIGNATURE_HEADER)?)
        .map_err(|_| Problem::invalid("allot-signature must be hex"))?;
    Ok(Envelope {
        actor: ActorId::new(actor),
        token: IdempotencyToken::new(token),
        attestation: Attestation {
            signed_at: Timestamp(signed_at),
            signature,
        },
    })
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| Problem::invalid(rejection.body_text()))
}

fn pool_id(text: &str) -> Result<PoolId, Problem> {
    if command::is_valid_pool_id(text) {
        Ok(PoolId::new(text))
    } else {
        Err(Problem::invalid(
            "pool_id must be 1..=64 bytes of letters, digits, '_', '.', '-'",
        ))
    }
}

fn reservation_id(text: &str) -> Result<ReservationId, Problem> {
    ReservationId::parse(text)
        .ok_or_else(|| Problem::invalid("reservation_id must be `pool:sequence`"))
}

/// Authenticates, authorizes and submits one pool command; renders the answer.
async fn run(state: &AppState, headers: &SignedHeaders, pool: PoolId, action: Action) -> Response {
    let started = Instant::now();
    let kind = action.kind();
    let response = match submit(state, headers, pool, action).await {
        Ok((reply, status)) => {
            let outcome_label = match &reply.outcome {
                Outcome::Rejected(r) => r.code().as_str(),
                _ if reply.replayed => "replayed",
                _ => "ok",
            };
            state
                .service
                .metrics()
                .count_command(kind.as_str(), outcome_label);
            render_reply(reply, status)
        }
        Err(problem) => {
            state
                .service
                .metrics()
                .count_command(kind.as_str(), problem.code.as_str());
            problem.into_response()
        }
    };
    state
        .service
        .metrics()
        .command_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn submit(
    state: &AppState,
    headers: &SignedHeaders,
    pool: PoolId,
    action: Action,
) -> Result<(Reply, StatusCode), Problem> {
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err(Problem::overloaded("too many requests in flight; retry"));
    };
    let envelope = envelope(headers)?;
    let command = Command {
        pool,
        actor: envelope.actor,
        attestation: envelope.attestation,
        token: envelope.token,
        digest: params_digest(&action),
        action,
    };
    // Malformed commands are refused before the signature is checked: both change nothing, and
    // the client learns what to fix first.
    command
        .validate()
        .map_err(|rejection| Problem::from(&rejection))?;
    let service = &state.service;
    let bytes = signing::signing_bytes(
        &command.action,
        &command_target(&command.pool, &command.action),
        &command.token,
        &command.actor,
        command.attestation.signed_at,
    );
    let role = service
        .actors()
        .authenticate(
            &state.verifier,
            &command.actor,
            bytes,
            &command.attestation,
            service.clock().now(),
        )
        .await
        .map_err(|error| Problem::from(&error))?;
    let kind = command.action.kind();
    if !role.may(kind) {
        return Err(Problem::from(&AuthError::Forbidden {
            role,
            action: kind.as_str().to_owned(),
        }));
    }
    let status = if kind == ActionKind::Reserve || kind == ActionKind::DeclarePool {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match service.submit(command).await {
        Ok(reply) => Ok((reply, status)),
        Err(error) => Err(Problem::from(&error)),
    }
}

/// The JSON body of an outcome, serialized straight from the outcome (no intermediate
/// `serde_json::Value`). Members are in alphabetical order, as they always were.
#[derive(Debug, Default, Serialize)]
pub struct OutcomeBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<RejectionCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_id: Option<&'a PoolId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<&'a ReservationId>,
}

/// The JSON body of an outcome.
pub fn outcome_body(outcome: &Outcome) -> OutcomeBody<'_> {
    match outcome {
        Outcome::PoolDeclared { pool } => OutcomeBody {
            outcome: "pool_declared",
            pool_id: Some(pool),
            ..OutcomeBody::default()
        },
        Outcome::CapacityAdjusted { capacity } => OutcomeBody {
            outcome: "capacity_adjusted",
            capacity: Some(*capacity),
            ..OutcomeBody::default()
        },
        Outcome::PoolClosed { pool } => OutcomeBody {
            outcome: "pool_closed",
            pool_id: Some(pool),
            ..OutcomeBody::default()
        },
        Outcome::Reserved {
            reservation,
            expires_at,
        } => OutcomeBody {
            outcome: "reserved",
            reservation_id: Some(reservation),
            pool_id: Some(&reservation.pool),
            expires_at: Some(*expires_at),
            ..OutcomeBody::default()
        },
        Outcome::Confirmed { reservation } => OutcomeBody {
            outcome: "confirmed",
            reservation_id: Some(reservation),
            ..OutcomeBody::default()
        },
        Outcome::Released { reservation } => OutcomeBody {
            outcome: "released",
            reservation_id: Some(reservation),
            ..OutcomeBody::default()
        },
        Outcome::Expired { reservation } => OutcomeBody {
            outcome: "expired",
            reservation_id: Some(reservation),
            ..OutcomeBody::default()
        },
        Outcome::Rejected(rejection) => OutcomeBody {
            outcome: "rejected",
            code: Some(rejection.code()),
            ..OutcomeBody::default()
        },
    }
}

fn render_reply(reply: Reply, status: StatusCode) -> Response {
    let mut response = match &reply.outcome {
        Outcome::Rejected(rejection) => {
            let mut problem = Problem::from(rejection);
            problem.replayed = reply.replayed;
            return problem.into_response();
        }
        outcome => (status, Json(outcome_body(outcome))).into_response(),
    };
    if reply.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    capacity: u64,
    #[serde(default)]
    closes_at: Option<u64>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    idempotency_window_ms: Option<u64>,
}

async fn declare_pool(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    headers: SignedHeaders,
    payload: Result<Json<DeclareBody>, JsonRejection>,
) -> Response {
    let parsed = pool_id(&pool).and_then(|pool| Ok((pool, body(payload)?)));
    let (pool, declare) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    let action = Action::DeclarePool {
        capacity: declare.capacity,
        closes_at: declare.closes_at.map(Timestamp),
        units: declare.units,
        idempotency_window_ms: declare
            .idempotency_window_ms
            .unwrap_or(IDEMPOTENCY_WINDOW_MS_DEFAULT),
    };
    run(&state, &headers, pool, action).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapacityBody {
    capacity: u64,
}

async fn adjust_capacity(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    headers: SignedHeaders,
    payload: Result<Json<CapacityBody>, JsonRejection>,
) -> Response {
    let parsed = pool_id(&pool).and_then(|pool| Ok((pool, body(payload)?)));
    match parsed {
        Ok((pool, adjust)) => {
            let action = Action::AdjustCapacity {
                capacity: adjust.capacity,
            };
            run(&state, &headers, pool, action).await
        }
        Err(problem) => problem.into_response(),
    }
}

async fn close_pool(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    headers: SignedHeaders,
) -> Response {
    match pool_id(&pool) {
        Ok(pool) => run(&state, &headers, pool, Action::ClosePool).await,
        Err(problem) => problem.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    resource: String,
    requester: String,
    duration_ms: u64,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

async fn reserve(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    headers: SignedHeaders,
    payload: Result<Json<ReserveBody>, JsonRejection>,
) -> Response {
    let parsed = pool_id(&pool).and_then(|pool| Ok((pool, body(payload)?)));
    match parsed {
        Ok((pool, reserve)) => {
            let action = Action::Reserve {
                resource: reserve.resource,
                requester: reserve.requester,
                duration_ms: reserve.duration_ms,
                count: reserve.count,
            };
            run(&state, &headers, pool, action).await
        }
        Err(problem) => problem.into_response(),
    }
}

async fn reservation_action(
    state: &AppState,
    headers: &SignedHeaders,
    reservation: &str,
    action: fn(u64) -> Action,
) -> Response {
    match reservation_id(reservation) {
        Ok(id) => run(state, headers, id.pool, action(id.seq)).await,
        Err(problem) => problem.into_response(),
    }
}

async fn confirm(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::ConfirmReservation { reservation }
    })
    .await
}

async fn cancel(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::CancelReservation { reservation }
    })
    .await
}

async fn expire(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::ExpireReservation { reservation }
    })
    .await
}

async fn show_reservation(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
) -> Response {
    let id = match reservation_id(&reservation) {
        Ok(id) => id,
        Err(problem) => return problem.into_response(),
    };
    let Some(entry) = state.service.projections().binding.get(&id) else {
        return Problem::not_known(format!("reservation {id} is not known")).into_response();
    };
    // The binding keeps state and slot; the labels and the window are read from the event.
    match reserved_event(&state.service, &id, entry.reserved_version).await {
        Ok(reserved) => Json(json!({
            "reservation_id": id,
            "pool_id": id.pool,
            "state": entry.state,
            "slot_held": entry.slot_held(),
            "resource": reserved.resource,
            "requester": reserved.requester,
            "count": entry.count,
            "reserved_at": reserved.at,
            "expires_at": reserved.expires_at,
        }))
        .into_response(),
        Err(reason) => {
            tracing::error!(reservation = %id, %reason, "cannot read the reservation's event");
            Problem::unavailable(reason).into_response()
        }
    }
}

/// What a reservation's `Reserved` event says that the binding does not keep.
struct Reserved {
    at: Timestamp,
    expires_at: Timestamp,
    resource: String,
    requester: String,
}

/// The `Reserved` event of `id`, at `version` of its pool's stream.
async fn reserved_event(
    service: &Service,
    id: &ReservationId,
    version: u64,
) -> Result<Reserved, String> {
    let stream = pool_stream(&id.pool);
    let page = service
        .store()
        .read_stream(&stream, version, 1)
        .await
        .map_err(|error| error.to_string())?;
    let recorded = page
        .first()
        .filter(|recorded| recorded.version == version)
        .ok_or_else(|| format!("{stream}@{version} is missing"))?;
    let event = decode_pool(recorded).map_err(|error| error.to_string())?;
    match (event.change, event.action) {
        (
            allot_domain::Change::Reserved {
                reservation,
                expires_at,
            },
            Action::Reserve {
                resource,
                requester,
                ..
            },
        ) if reservation == id.seq => Ok(Reserved {
            at: event.at,
            expires_at,
            resource,
            requester,
        }),
        _ => Err(format!("{stream}@{version} is not the hold of {id}")),
    }
}

async fn show_pool(State(state): State<AppState>, Path(pool): Path<String>) -> Response {
    let pool = match pool_id(&pool) {
        Ok(pool) => pool,
        Err(problem) => return problem.into_response(),
    };
    match state.service.projections().counts.get(&pool) {
        Some(count) => Json(json!({
            "pool_id": pool,
            "capacity": count.capacity,
            "allocated": count.allocated,
            "available": count.capacity.saturating_sub(count.allocated),
            "live_reservations": count.live(),
            "reservations": count.reservations,
            "confirmed": count.confirmed,
            "released": count.released,
            "expired": count.expired,
            "closed": count.closed,
            "closes_at": count.closes_at,
            "rejections": count.rejections,
        }))
        .into_response(),
        None => Problem::not_known(format!("pool {pool} is not known")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    role: String,
    /// Hex of the 32-byte ed25519 public key.
    public_key: String,
}

/// Admin-signed change to the actor registry.
async fn actor_change(
    state: &AppState,
    headers: &SignedHeaders,
    target: &str,
    change: ActorChange,
) -> Response {
    let started = Instant::now();
    let result = actor_change_inner(state, headers, target, change).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(problem) => problem.code.as_str(),
    };
    state.service.metrics().count_command("actor_change", label);
    state
        .service
        .metrics()
        .command_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn actor_change_inner(
    state: &AppState,
    headers: &SignedHeaders,
    target: &str,
    change: ActorChange,
) -> Result<Response, Problem> {
    let envelope = envelope(headers)?;
    let target_ok = !target.trim().is_empty()
        && target.len() <= command::ACTOR_BYTES_MAX
        && !target.chars().any(char::is_control);
    if !target_ok {
        return Err(Problem::invalid("actor id must be 1..=128 visible bytes"));
    }
    let target = ActorId::new(target);
    let (action, params) = allot_domain::signing::actor_change_params(&change);
    let bytes = signing::actor_signing_bytes(
        action,
        &target,
        &params,
        &envelope.token,
        &envelope.actor,
        envelope.attestation.signed_at,
    );
    let service = &state.service;
    let now = service.clock().now();
    let role = service
        .actors()
        .authenticate(
            &state.verifier,
            &envelope.actor,
            bytes,
            &envelope.attestation,
            now,
        )
        .await
        .map_err(|error| Problem::from(&error))?;
    if !role.may_manage_actors() {
        return Err(Problem::from(&AuthError::Forbidden {
            role,
            action: action.to_owned(),
        }));
    }
    let retry = service
        .actors()
        .token(&envelope.actor, &envelope.token, now)
        .is_some();
    if !retry
        && matches!(change, ActorChange::Revoked)
        && service.actors().current(&target).is_none()
    {
        return Err(Problem::not_known(format!(
            "actor {target} has no key in force"
        )));
    }
    let event = ActorEvent {
        actor: target.clone(),
        change,
        by: envelope.actor,
        token: envelope.token,
        attestation: envelope.attestation,
        at: now,
    };
    let replayed = service
        .record_actor_event(event)
        .await
        .map_err(|error| Problem::from(&error))?;
    let mut response = (
        StatusCode::OK,
        Json(json!({"outcome": action, "actor": target})),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn register_actor(
    State(state): State<AppState>,
    Path(actor): Path<String>,
    headers: SignedHeaders,
    payload: Result<Json<RegisterBody>, JsonRejection>,
) -> Response {
    let change = body(payload).and_then(|register| {
        let role = Role::parse(&register.role)
            .ok_or_else(|| Problem::invalid("role must be admin, client, sweeper or auditor"))?;
        let key: [u8; 32] = hex::decode(&register.public_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| Problem::invalid("public_key must be 32 bytes of hex"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| Problem::invalid("public_key is not an ed25519 point"))?;
        Ok(ActorChange::Registered {
            role,
            public_key: key,
        })
    });
    match change {
        Ok(change) => actor_change(&state, &headers, &actor, change).await,
        Err(problem) => problem.into_response(),
    }
}

async fn revoke_actor(
    State(state): State<AppState>,
    Path(actor): Path<String>,
    headers: SignedHeaders,
) -> Response {
    actor_change(&state, &headers, &actor, ActorChange::Revoked).await
}

async fn unknown_route() -> Problem {
    Problem::not_known("no such route; see /openapi.json")
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed("method not allowed on this route; see /openapi.json")
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> impl IntoResponse {
    Json(openapi::document())
}

//! The HTTP API: JSON commands in, outcomes or RFC 9457 problems out.
//!
//! Every state-changing request carries `Idempotency-Key` (missing → 400) and a signature in
//! `Allot-Actor`, `Allot-Signed-At` (ms since the epoch) and `Allot-Signature` (hex ed25519 over
//! the canonical bytes of `docs/signing.md`). A replayed outcome carries
//! `Idempotent-Replayed: true`. An outcome recorded now on a store that seals its group commits
//! carries a `receipt` (`docs/signing.md`, "Receipts"), signed by the instance's server key
//! once per batch. Every error becomes a problem in [`problem`], the one place the mapping
//! lives.
//! Must not: decide anything (the service does) or build a problem code outside [`problem`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use allot_domain::signing::Read;
use allot_domain::{
    Action, ActionKind, ActorId, Attestation, Command, IdempotencyToken, Outcome, PoolId,
    RejectionCode, ReservationId, Role, Timestamp, command, signing,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use allot_client::receipt::Receipt;
use allot_client::wire;
use allot_domain::signing::{command_target, params_digest};

use crate::identity::verifier::{SignatureVerifier, VERIFY_WORKERS};
use crate::identity::{AuthError, SealSigner};
use crate::metrics::Metrics;
use crate::service::{Reply, Service};

mod actors;
mod batches;
mod commands;
pub mod edge;
pub mod openapi;
pub mod problem;
mod reads;

pub use problem::{Problem, ProblemCode, status_for};

/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest body of a batch (`POST /v1/batches`), in bytes.
pub const BATCH_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Commands decided at once (a batch counts each of its commands); more are refused with 503
/// rather than queued without bound.
pub const IN_FLIGHT_MAX: usize = 8192;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static(wire::IDEMPOTENCY_KEY);
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static(wire::IDEMPOTENT_REPLAYED);
pub const ACTOR_HEADER: HeaderName = HeaderName::from_static(wire::ACTOR_HEADER);
pub const SIGNED_AT_HEADER: HeaderName = HeaderName::from_static(wire::SIGNED_AT_HEADER);
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(wire::SIGNATURE_HEADER);

#[derive(Clone)]
pub(crate) struct AppState {
    service: Service,
    in_flight: Arc<Semaphore>,
    verifier: SignatureVerifier,
    /// Signs receipts and the head; without it, answers carry no receipt and there is no head.
    seal_signer: Option<Arc<SealSigner>>,
}

/// The application router, with the default body limit and no server key (no receipts).
pub fn router(service: Service) -> Router {
    router_with_body_limit(service, BODY_BYTES_MAX, BATCH_BODY_BYTES_MAX, None)
}

/// The application router; request bodies of at most `body_bytes_max` bytes (a batch's at most
/// `batch_body_bytes_max`); receipts and the head signed by `seal_signer`.
pub fn router_with_body_limit(
    service: Service,
    body_bytes_max: usize,
    batch_body_bytes_max: usize,
    seal_signer: Option<Arc<SealSigner>>,
) -> Router {
    let verifier = SignatureVerifier::start(VERIFY_WORKERS, Arc::clone(service.metrics()));
    let state = AppState {
        service,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
        verifier,
        seal_signer,
    };
    Router::new()
        .route(
            "/v1/pools/{pool}",
            post(commands::declare_pool).get(reads::show_pool),
        )
        .route("/v1/pools/{pool}/capacity", post(commands::adjust_capacity))
        .route("/v1/pools/{pool}/close", post(commands::close_pool))
        .route("/v1/pools/{pool}/reservations", post(commands::reserve))
        .route(
            "/v1/reservations/{reservation}",
            get(reads::show_reservation),
        )
        .route(
            "/v1/reservations/{reservation}/confirm",
            post(commands::confirm),
        )
        .route(
            "/v1/reservations/{reservation}/cancel",
            post(commands::cancel),
        )
        .route(
            "/v1/reservations/{reservation}/expire",
            post(commands::expire),
        )
        .route(
            wire::BATCH_PATH,
            post(batches::submit_batch).layer(DefaultBodyLimit::max(batch_body_bytes_max)),
        )
        .route("/v1/actors/{actor}", post(actors::register_actor))
        .route("/v1/actors/{actor}/revoke", post(actors::revoke_actor))
        .route(wire::HEAD_PATH, get(reads::show_head))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

/// The router of the metrics listener: `/metrics` alone.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(metrics)
}

/// The signed envelope of a request: who, when, the signature and the idempotency token.
pub(crate) struct Envelope {
    actor: ActorId,
    token: IdempotencyToken,
    attestation: Attestation,
}

/// The headers of a signed request, moved out of the request rather than copied (the
/// `HeaderMap` extractor clones every header of every request). Missing ones are refused where
/// the envelope is read, so the order of checks stays that of the handler.
pub(crate) struct SignedHeaders {
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

pub(crate) fn header_text<'a>(
    value: Option<&'a HeaderValue>,
    name: &HeaderName,
) -> Result<&'a str, Problem> {
    value
        .ok_or_else(|| Problem::invalid(format!("{name} header is required")))?
        .to_str()
        .map_err(|_| Problem::invalid(format!("{name} header must be visible ASCII")))
}

pub(crate) fn envelope(headers: &SignedHeaders) -> Result<Envelope, Problem> {
    let token = header_text(headers.token.as_ref(), &IDEMPOTENCY_KEY)?;
    let (actor, attestation) = read_envelope(headers)?;
    Ok(Envelope {
        actor,
        token: IdempotencyToken::new(token),
        attestation,
    })
}

pub(crate) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| Problem::invalid(rejection.body_text()))
}

pub(crate) fn pool_id(text: &str) -> Result<PoolId, Problem> {
    if command::is_valid_pool_id(text) {
        Ok(PoolId::new(text))
    } else {
        Err(Problem::invalid(format!(
            "pool_id {}",
            command::POOL_ID_RULE
        )))
    }
}

pub(crate) fn reservation_id(text: &str) -> Result<ReservationId, Problem> {
    ReservationId::parse(text)
        .ok_or_else(|| Problem::invalid("reservation_id must be `pool:sequence`"))
}

/// The signature headers of a request: who and when (a read has no idempotency key; a command's
/// envelope adds it).
pub(crate) fn read_envelope(headers: &SignedHeaders) -> Result<(ActorId, Attestation), Problem> {
    let actor = header_text(headers.actor.as_ref(), &ACTOR_HEADER)?;
    let signed_at = header_text(headers.signed_at.as_ref(), &SIGNED_AT_HEADER)?
        .parse::<u64>()
        .map_err(|_| Problem::invalid("allot-signed-at must be milliseconds since the epoch"))?;
    let signature = hex::decode(header_text(headers.signature.as_ref(), &SIGNATURE_HEADER)?)
        .map_err(|_| Problem::invalid("allot-signature must be hex"))?;
    actor_id(actor)?;
    Ok((
        ActorId::new(actor),
        Attestation {
            signed_at: Timestamp(signed_at),
            signature,
        },
    ))
}

/// Authenticates a signed read of `target`: the actor and the role of its key in force.
pub(crate) async fn authenticate_read(
    state: &AppState,
    headers: &SignedHeaders,
    read: Read,
    target: &str,
) -> Result<(ActorId, Role), Problem> {
    let (actor, attestation) = read_envelope(headers)?;
    let service = &state.service;
    let bytes = signing::read_signing_bytes(read, target, &actor, attestation.signed_at);
    let role = service
        .actors()
        .authenticate(
            &state.verifier,
            &actor,
            bytes,
            &attestation,
            service.clock().now(),
        )
        .await
        .map_err(|error| Problem::from(&error))?;
    Ok((actor, role))
}

/// An actor id from a path or a header, by the one rule.
pub(crate) fn actor_id(text: &str) -> Result<ActorId, Problem> {
    if command::is_valid_actor_id(text) {
        Ok(ActorId::new(text))
    } else {
        Err(Problem::invalid(format!(
            "actor id {}",
            command::ACTOR_ID_RULE
        )))
    }
}

/// Authenticates, authorizes and submits one pool command; renders the answer.
pub(crate) async fn run(
    state: &AppState,
    headers: &SignedHeaders,
    pool: PoolId,
    action: Action,
) -> Response {
    let started = Instant::now();
    let kind = action.kind();
    let response = match submit(state, headers, pool, action).await {
        Ok((reply, status)) => {
            state
                .service
                .metrics()
                .count_command(kind.as_str(), outcome_label(&reply));
            render_reply(reply, status, state.seal_signer.as_deref())
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
    let mut command = Command {
        pool,
        actor: envelope.actor,
        // Set from the key in force once the signature is checked.
        role: Role::Client,
        attestation: envelope.attestation,
        token: envelope.token,
        digest: params_digest(&action),
        action,
        batch: None,
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
    command.role = role;
    let kind = command.action.kind();
    if !role.may(kind) {
        return Err(Problem::from(&AuthError::Forbidden {
            role,
            action: kind.as_str().to_owned(),
        }));
    }
    let status = status_of(kind);
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
    receipt: Option<Receipt>,
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

/// The status of a recorded outcome of `kind` (a rejection's is its code's).
pub(crate) fn status_of(kind: ActionKind) -> StatusCode {
    if kind == ActionKind::Reserve || kind == ActionKind::DeclarePool {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// The `outcome` label of the commands metric for a reply.
pub(crate) fn outcome_label(reply: &Reply) -> &'static str {
    match &reply.outcome {
        Outcome::Rejected(r) => r.code().as_str(),
        _ if reply.replayed => "replayed",
        _ => "ok",
    }
}

/// The receipt of a reply recorded now, when the server has a key to sign it.
pub(crate) fn receipt_of(reply: &Reply, seal_signer: Option<&SealSigner>) -> Option<Receipt> {
    match (seal_signer, &reply.recorded) {
        (Some(signer), Some(recorded)) => signer.receipt(recorded),
        _ => None,
    }
}

fn render_reply(reply: Reply, status: StatusCode, seal_signer: Option<&SealSigner>) -> Response {
    let receipt = receipt_of(&reply, seal_signer);
    let mut response = match &reply.outcome {
        Outcome::Rejected(rejection) => {
            let mut problem = Problem::from(rejection);
            problem.replayed = reply.replayed;
            problem.receipt = receipt.map(Box::new);
            return problem.into_response();
        }
        outcome => {
            let body = OutcomeBody {
                receipt,
                ..outcome_body(outcome)
            };
            (status, Json(body)).into_response()
        }
    };
    if reply.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

async fn unknown_route() -> Problem {
    Problem::not_known("no such route; see /openapi.json")
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed("method not allowed on this route; see /openapi.json")
}

/// Unhealthy (503) once the background verifier found damaged acknowledged data.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.service.metrics().log_damage() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(damage) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "log damaged", "damage": damage})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn openapi() -> impl IntoResponse {
    Json(openapi::document())
}

//! The reads: a reservation and a pool, from the projections (and the reservation's own event
//! for what the binding does not keep), and the log's signed head. Every read is signed; the
//! role table says who may see what. A reservation another client made reads as `not-known`,
//! as if it did not exist.

use allot_domain::signing::Read;
use allot_domain::streams::pool_stream;
use allot_domain::{Action, ActorId, Permission, ReservationId, Timestamp};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, Problem, SignedHeaders, authenticate_read, pool_id, reservation_id};
use crate::identity::AuthError;
use crate::service::Service;
use crate::service::replay_tail::decode_pool;

/// A `forbidden` problem for a role that may read nothing of the kind.
fn may_not_read(role: allot_domain::Role, read: Read) -> Problem {
    Problem::from(&AuthError::Forbidden {
        role,
        action: read.as_str().to_owned(),
    })
}

pub(super) async fn show_reservation(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    match reservation_answer(&state, &reservation, &headers).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn reservation_answer(
    state: &AppState,
    reservation: &str,
    headers: &SignedHeaders,
) -> Result<Response, Problem> {
    let id = reservation_id(reservation)?;
    let (actor, role) =
        authenticate_read(state, headers, Read::Reservation, &id.to_string()).await?;
    let any = role.allows(Permission::ReadAnyReservation);
    if !any && !role.allows(Permission::ReadOwnReservation) {
        return Err(may_not_read(role, Read::Reservation));
    }
    let not_known = || Problem::not_known(format!("reservation {id} is not known"));
    let entry = state
        .service
        .projections()
        .binding
        .get(&id)
        .ok_or_else(not_known)?;
    // The binding keeps state and slot; the owner, labels and window are read from the event.
    let reserved = reserved_event(&state.service, &id, entry.reserved_version)
        .await
        .map_err(|reason| {
            tracing::error!(reservation = %id, %reason, "cannot read the reservation's event");
            Problem::unavailable(reason)
        })?;
    if !any && reserved.owner != actor {
        return Err(not_known());
    }
    Ok(Json(json!({
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
    .into_response())
}

/// What a reservation's `Reserved` event says that the binding does not keep.
struct Reserved {
    owner: ActorId,
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
            owner: event.actor,
            at: event.at,
            expires_at,
            resource,
            requester,
        }),
        _ => Err(format!("{stream}@{version} is not the hold of {id}")),
    }
}

pub(super) async fn show_pool(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    headers: SignedHeaders,
) -> Response {
    match pool_answer(&state, &pool, &headers).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn pool_answer(
    state: &AppState,
    pool: &str,
    headers: &SignedHeaders,
) -> Result<Response, Problem> {
    let pool = pool_id(pool)?;
    let (_, role) = authenticate_read(state, headers, Read::Pool, pool.as_str()).await?;
    if !role.allows(Permission::ReadPool) {
        return Err(may_not_read(role, Read::Pool));
    }
    let count = state
        .service
        .projections()
        .counts
        .get(&pool)
        .ok_or_else(|| Problem::not_known(format!("pool {pool} is not known")))?;
    Ok(Json(json!({
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
    .into_response())
}

/// `GET /v1/head`: the newest batch's seal, signed by the instance's server key. Any role that
/// may read the head; 404 `not-known` on a store that seals nothing (KurrentDB).
pub(super) async fn show_head(State(state): State<AppState>, headers: SignedHeaders) -> Response {
    match head_answer(&state, &headers).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn head_answer(state: &AppState, headers: &SignedHeaders) -> Result<Response, Problem> {
    let (_, role) = authenticate_read(state, headers, Read::Head, "").await?;
    if !role.allows(Permission::ReadHead) {
        return Err(may_not_read(role, Read::Head));
    }
    let no_head = || Problem::not_known("this service's store seals no batches, so it has no head");
    let signer = state.seal_signer.as_ref().ok_or_else(no_head)?;
    let seal = state.service.store().sealed_head().ok_or_else(no_head)?;
    Ok(Json(signer.head(seal)).into_response())
}

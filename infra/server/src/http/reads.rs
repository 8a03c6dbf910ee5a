//! The reads: a reservation and a pool, from the projections (and the reservation's own event
//! for what the binding does not keep).

use allot_domain::streams::pool_stream;
use allot_domain::{Action, ReservationId, Timestamp};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, Problem, pool_id, reservation_id};
use crate::service::Service;
use crate::service::replay_tail::decode_pool;

pub(super) async fn show_reservation(
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

pub(super) async fn show_pool(State(state): State<AppState>, Path(pool): Path<String>) -> Response {
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

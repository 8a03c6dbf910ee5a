//! The pool commands: declare, adjust capacity, close, reserve, confirm, cancel, expire. Each
//! handler parses its path and body, then hands the action to [`super::run`].

use allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT;
use allot_domain::{Action, Timestamp};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, SignedHeaders, body, pool_id, reservation_id, run};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeclareBody {
    capacity: u64,
    #[serde(default)]
    closes_at: Option<u64>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    idempotency_window_ms: Option<u64>,
}

pub(super) async fn declare_pool(
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
pub(super) struct CapacityBody {
    capacity: u64,
}

pub(super) async fn adjust_capacity(
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

pub(super) async fn close_pool(
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
pub(super) struct ReserveBody {
    resource: String,
    requester: String,
    duration_ms: u64,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

pub(super) async fn reserve(
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

pub(super) async fn reservation_action(
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

pub(super) async fn confirm(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::ConfirmReservation { reservation }
    })
    .await
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::CancelReservation { reservation }
    })
    .await
}

pub(super) async fn expire(
    State(state): State<AppState>,
    Path(reservation): Path<String>,
    headers: SignedHeaders,
) -> Response {
    reservation_action(&state, &headers, &reservation, |reservation| {
        Action::ExpireReservation { reservation }
    })
    .await
}

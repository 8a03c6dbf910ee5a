//! Actor registration and revocation: admin-signed changes to the `actors` stream.

use std::time::Instant;

use allot_domain::{ActorChange, ActorEvent, ActorId, Permission, Role, signing};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, IDEMPOTENT_REPLAYED, Problem, SignedHeaders, actor_id, body, envelope};
use crate::identity::AuthError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
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
    let target = match actor_id(target) {
        Ok(target) => target,
        // An actor registered under an earlier, looser rule can still be revoked, so its key
        // does not stay in force for want of an id the rule accepts.
        Err(problem) => {
            let registered = ActorId::new(target);
            let revocable = matches!(change, ActorChange::Revoked)
                && target.len() <= allot_domain::command::ACTOR_BYTES_MAX
                && state.service.actors().current(&registered).is_some();
            if !revocable {
                return Err(problem);
            }
            registered
        }
    };
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
    if !role.allows(Permission::ManageActors) {
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

pub(super) async fn register_actor(
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

pub(super) async fn revoke_actor(
    State(state): State<AppState>,
    Path(actor): Path<String>,
    headers: SignedHeaders,
) -> Response {
    actor_change(&state, &headers, &actor, ActorChange::Revoked).await
}

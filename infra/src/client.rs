//! A signing HTTP client for the API: used by the CLI's client subcommands, `allot demo` and the
//! end-to-end tests.

use allot_domain::{
    Action, ActorChange, ActorId, IdempotencyToken, PoolId, ReservationId, Role, Timestamp, signing,
};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;

use crate::clock::{Clock, SystemClock};
use crate::http::{
    ACTOR_HEADER, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, SIGNATURE_HEADER, SIGNED_AT_HEADER,
    actor_change_params,
};
use crate::identity::command_target;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub replayed: bool,
    pub body: Value,
}

impl Answer {
    /// The problem `code`, for error answers.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// A client acting as one actor.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    actor: ActorId,
    key: SigningKey,
}

impl Client {
    pub fn new(base: impl Into<String>, actor: ActorId, key: SigningKey) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
            actor,
            key,
        }
    }

    /// Shares the connection pool of `other` under another identity.
    pub fn with_identity(&self, actor: ActorId, key: SigningKey) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            actor,
            key,
        }
    }

    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    fn path_for(pool: &PoolId, action: &Action) -> String {
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

    fn body_for(action: &Action) -> Value {
        match action {
            Action::DeclarePool {
                capacity,
                closes_at,
                units,
                idempotency_window_ms,
            } => serde_json::json!({
                "capacity": capacity,
                "closes_at": closes_at,
                "units": units,
                "idempotency_window_ms": idempotency_window_ms,
            }),
            Action::AdjustCapacity { capacity } => serde_json::json!({"capacity": capacity}),
            Action::Reserve {
                resource,
                requester,
                duration_ms,
                count,
            } => serde_json::json!({
                "resource": resource,
                "requester": requester,
                "duration_ms": duration_ms,
                "count": count,
            }),
            _ => serde_json::json!({}),
        }
    }

    /// Signs `action` on `pool` at the current time and sends it with `token`.
    pub async fn send(
        &self,
        pool: &PoolId,
        action: &Action,
        token: &str,
    ) -> Result<Answer, ClientError> {
        self.send_signed_at(pool, action, token, SystemClock.now())
            .await
    }

    /// As [`Client::send`] with an explicit `signed_at` (tests of stale signatures use it).
    pub async fn send_signed_at(
        &self,
        pool: &PoolId,
        action: &Action,
        token: &str,
        signed_at: Timestamp,
    ) -> Result<Answer, ClientError> {
        let token = IdempotencyToken::new(token);
        let bytes = signing::signing_bytes(
            action,
            &command_target(pool, action),
            &token,
            &self.actor,
            signed_at,
        );
        let signature = hex::encode(self.key.sign(&bytes).to_bytes());
        let path = Self::path_for(pool, action);
        self.post(
            &path,
            token.as_str(),
            signed_at,
            &signature,
            &Self::body_for(action),
        )
        .await
    }

    /// Sends a raw, already-signed request (tests use it to tamper with bodies).
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        signed_at: Timestamp,
        signature: &str,
        body: &Value,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .header(IDEMPOTENCY_KEY, token)
            .header(ACTOR_HEADER, self.actor.as_str())
            .header(SIGNED_AT_HEADER, signed_at.0.to_string())
            .header(SIGNATURE_HEADER, signature)
            .json(body)
            .send()
            .await
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        Self::answer(url, response).await
    }

    async fn answer(url: String, response: reqwest::Response) -> Result<Answer, ClientError> {
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true");
        let body = response
            .json::<Value>()
            .await
            .map_err(|source| ClientError::Http { url, source })?;
        Ok(Answer {
            status,
            replayed,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        Self::answer(url, response).await
    }

    pub async fn reservation(&self, id: &ReservationId) -> Result<Answer, ClientError> {
        self.get(&format!("/v1/reservations/{id}")).await
    }

    pub async fn pool(&self, pool: &PoolId) -> Result<Answer, ClientError> {
        self.get(&format!("/v1/pools/{pool}")).await
    }

    /// Registers (as this admin) `actor` with `role` and `public_key`.
    pub async fn register_actor(
        &self,
        actor: &ActorId,
        role: Role,
        public_key: [u8; 32],
        token: &str,
    ) -> Result<Answer, ClientError> {
        let change = ActorChange::Registered { role, public_key };
        let body =
            serde_json::json!({"role": role.as_str(), "public_key": hex::encode(public_key)});
        self.actor_change(actor, &change, token, &format!("/v1/actors/{actor}"), &body)
            .await
    }

    /// Revokes (as this admin) `actor`'s key.
    pub async fn revoke_actor(&self, actor: &ActorId, token: &str) -> Result<Answer, ClientError> {
        let path = format!("/v1/actors/{actor}/revoke");
        self.actor_change(
            actor,
            &ActorChange::Revoked,
            token,
            &path,
            &serde_json::json!({}),
        )
        .await
    }

    async fn actor_change(
        &self,
        actor: &ActorId,
        change: &ActorChange,
        token: &str,
        path: &str,
        body: &Value,
    ) -> Result<Answer, ClientError> {
        let signed_at = SystemClock.now();
        let (action, params) = actor_change_params(change);
        let bytes = signing::actor_signing_bytes(
            action,
            actor,
            &params,
            &IdempotencyToken::new(token),
            &self.actor,
            signed_at,
        );
        let signature = hex::encode(self.key.sign(&bytes).to_bytes());
        self.post(path, token, signed_at, &signature, body).await
    }
}

//! The signing HTTP client of allot's API: used by the CLI's client subcommands, `allot demo`,
//! the benchmark's load processes and the end-to-end tests.
//!
//! Owns: the wire contract as a client speaks it ([`wire`]: headers, paths, bodies, request
//! signing), receipts and the signed head with their offline verification ([`receipt`]), a
//! [`Client`] acting as one actor (one request per call), and a [`Batcher`]: one command per
//! call, concurrent calls sent together as signed batches, with retries and backpressure
//! (`docs/client.md`).
//! Must not: depend on the server, the store or any tool; it is what a client service links.
//!
//! Submitting through a [`Batcher`]:
//!
//! ```no_run
//! # async fn example(key: ed25519_dalek::SigningKey) -> Result<(), Box<dyn std::error::Error>> {
//! use allot_client::{Batcher, BatcherConfig, Outcome};
//! use allot_domain::{Action, ActorId, PoolId};
//!
//! let batcher = Batcher::new(
//!     "http://127.0.0.1:7878",
//!     ActorId::new("shop"),
//!     key,
//!     BatcherConfig::default(),
//! )?;
//! let reserve = Action::Reserve {
//!     resource: "seat".into(),
//!     requester: "r1".into(),
//!     duration_ms: 600_000,
//!     count: 1,
//! };
//! let answer = batcher.submit(PoolId::new("hall"), reserve).await?;
//! if let Outcome::Reserved { reservation, .. } = answer.outcome {
//!     let confirm = Action::ConfirmReservation { reservation: reservation.seq };
//!     batcher.submit(reservation.pool, confirm).await?;
//! }
//! # Ok(())
//! # }
//! ```

pub mod batcher;
mod http1;
pub mod receipt;
pub mod wire;

pub use batcher::{
    Batcher, BatcherConfig, BatcherError, BatcherStats, Outcome, SubmitError, Submitted,
};

use allot_domain::{
    Action, ActorChange, ActorId, IdempotencyToken, PoolId, ReservationId, Role, Timestamp,
};
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde_json::Value;

pub use allot_domain::signing::Read;
pub use receipt::{Receipt, ReceiptError, SignedHead, verify, verify_head};
use wire::{
    ACTOR_HEADER, HEAD_PATH, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, SIGNATURE_HEADER,
    SIGNED_AT_HEADER, actor_change_path, command_body, command_path, pool_path, reservation_path,
};
pub use wire::{sign_actor_change, sign_command, sign_read};

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

    /// The answer's `receipt` member, if it has one; `Err` if it is there but malformed.
    pub fn receipt(&self) -> Option<Result<Receipt, serde_json::Error>> {
        self.body.get("receipt").map(Receipt::deserialize)
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

    /// Signs `action` on `pool` at the current time and sends it with `token`.
    pub async fn send(
        &self,
        pool: &PoolId,
        action: &Action,
        token: &str,
    ) -> Result<Answer, ClientError> {
        self.send_signed_at(pool, action, token, now()).await
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
        let attestation = sign_command(&self.key, &self.actor, pool, action, &token, signed_at);
        self.post(
            &command_path(pool, action),
            token.as_str(),
            signed_at,
            &hex::encode(attestation.signature),
            &command_body(action),
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
        let request = self
            .signed(self.http.post(&url), signed_at, signature)
            .header(IDEMPOTENCY_KEY, token)
            .json(body);
        Self::exchange(url, request).await
    }

    /// `request` with this actor's signature headers.
    fn signed(
        &self,
        request: reqwest::RequestBuilder,
        signed_at: Timestamp,
        signature: &str,
    ) -> reqwest::RequestBuilder {
        request
            .header(ACTOR_HEADER, self.actor.as_str())
            .header(SIGNED_AT_HEADER, signed_at.0.to_string())
            .header(SIGNATURE_HEADER, signature)
    }

    /// Sends `request` to `url` and reads the answer.
    async fn exchange(
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ClientError> {
        let response = request.send().await.map_err(|source| ClientError::Http {
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

    /// An unsigned `GET` (the health check and the OpenAPI document need no signature).
    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self.http.get(&url);
        Self::exchange(url, request).await
    }

    /// Reads a reservation, signed as this actor.
    pub async fn reservation(&self, id: &ReservationId) -> Result<Answer, ClientError> {
        self.read(Read::Reservation, &id.to_string(), &reservation_path(id))
            .await
    }

    /// Reads a pool's counts, signed as this actor.
    pub async fn pool(&self, pool: &PoolId) -> Result<Answer, ClientError> {
        self.read(Read::Pool, pool.as_str(), &pool_path(pool)).await
    }

    /// Reads the log's signed head, signed as this actor.
    pub async fn head(&self) -> Result<Answer, ClientError> {
        self.read(Read::Head, "", HEAD_PATH).await
    }

    /// A signed `GET` of `path`, which reads `target`.
    pub async fn read(&self, read: Read, target: &str, path: &str) -> Result<Answer, ClientError> {
        let signed_at = now();
        let attestation = sign_read(&self.key, &self.actor, read, target, signed_at);
        let url = format!("{}{path}", self.base);
        let signature = hex::encode(attestation.signature);
        let request = self.signed(self.http.get(&url), signed_at, &signature);
        Self::exchange(url, request).await
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
        self.actor_change(actor, &change, token, &body).await
    }

    /// Revokes (as this admin) `actor`'s key.
    pub async fn revoke_actor(&self, actor: &ActorId, token: &str) -> Result<Answer, ClientError> {
        self.actor_change(actor, &ActorChange::Revoked, token, &serde_json::json!({}))
            .await
    }

    async fn actor_change(
        &self,
        actor: &ActorId,
        change: &ActorChange,
        token: &str,
        body: &Value,
    ) -> Result<Answer, ClientError> {
        let signed_at = now();
        let attestation = sign_actor_change(
            &self.key,
            &self.actor,
            actor,
            change,
            &IdempotencyToken::new(token),
            signed_at,
        );
        let signature = hex::encode(attestation.signature);
        self.post(
            &actor_change_path(actor, change),
            token,
            signed_at,
            &signature,
            body,
        )
        .await
    }
}

/// The wall clock, in milliseconds since the epoch: when a request is signed.
pub(crate) fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    Timestamp(ms)
}

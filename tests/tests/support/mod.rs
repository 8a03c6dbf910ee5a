//! Shared fixture of the HTTP end-to-end and security tests: a real `Server` on loopback over a
//! store opened by [`open_store`], the first admin's client, registered client actors, raw
//! signed requests, and "nothing changed" copies of the projections.
//!
//! Switching the backend is a one-line change in [`open_store`]; a restart reopens the store
//! with the same function, so the tests do not care which backend answers.

// Each test binary uses its own subset of the fixture.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use allot_client::Client;
use allot_client::wire::BatchCommand;
use allot_domain::signing::{Read, actor_change_params, command_target};
use allot_domain::{
    Action, ActorChange, ActorId, IdempotencyToken, PoolId, ReservationId, Role, Timestamp,
};
use allot_projections::{ProjectionContents, Projections};
use allot_server::clock::{Clock, SystemClock};
use allot_server::http::edge::EdgeLimits;
use allot_server::http::{
    ACTOR_HEADER, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, SIGNATURE_HEADER, SIGNED_AT_HEADER,
};
use allot_server::identity::KeyFile;
use allot_server::server::{FIRST_ADMIN, ServeOptions, Server, key_path};
use allot_server::store::EventStore;
use allot_server::store::memory::MemoryStore;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

/// Opens the event store kept in `dir`. Called again on restart with the same `dir`: a durable
/// backend reopens its files; the in-memory store hands back a clone of the store first opened
/// for `dir` (clones share one log), which is what a restart over the same data looks like.
///
/// To run the suite over the embedded backend, replace the body with
/// `Arc::new(allot_server::store::embedded::EmbeddedStore::open(dir).await.expect("open store"))`.
pub async fn open_store(dir: &Path) -> Arc<dyn EventStore> {
    Arc::new(memory_store(dir))
}

/// The in-memory store of `dir` (created on first use). Only meaningful while [`open_store`]
/// uses the in-memory backend.
fn memory_store(dir: &Path) -> MemoryStore {
    static STORES: OnceLock<Mutex<HashMap<PathBuf, MemoryStore>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores.entry(dir.to_owned()).or_default().clone()
}

/// The request headers of the signed envelope (lower case, as `allot_server::http` names them).
pub const IDEMPOTENCY_KEY_NAME: &str = "idempotency-key";
pub const ACTOR_NAME: &str = "allot-actor";
pub const SIGNED_AT_NAME: &str = "allot-signed-at";
pub const SIGNATURE_NAME: &str = "allot-signature";

/// The header names above are the service's.
#[test]
fn header_names_match_the_service() {
    assert_eq!(IDEMPOTENCY_KEY.as_str(), IDEMPOTENCY_KEY_NAME);
    assert_eq!(ACTOR_HEADER.as_str(), ACTOR_NAME);
    assert_eq!(SIGNED_AT_HEADER.as_str(), SIGNED_AT_NAME);
    assert_eq!(SIGNATURE_HEADER.as_str(), SIGNATURE_NAME);
}

/// What the server answered, with the headers the tests check.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub replayed: bool,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// The `reservation_id` of a reserve answer.
    pub fn reservation(&self) -> ReservationId {
        let text = self.body["reservation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no reservation_id in {self:?}"));
        ReservationId::parse(text).unwrap_or_else(|| panic!("bad reservation_id {text}"))
    }

    /// Asserts a 2xx JSON answer with `status`.
    #[track_caller]
    pub fn expect_ok(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "content type {:?} in {self:?}",
            self.content_type
        );
        self
    }

    /// Asserts an RFC 9457 problem with `status` and `code`.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "unexpected answer: {self:?}");
        assert_eq!(
            self.content_type, "application/problem+json",
            "not a problem document: {self:?}"
        );
        assert_eq!(self.code(), Some(code), "wrong problem code: {self:?}");
        assert_eq!(self.body["status"].as_u64(), Some(u64::from(status)));
        for member in ["type", "title", "detail"] {
            assert!(
                self.body[member].as_str().is_some_and(|s| !s.is_empty()),
                "problem lacks {member}: {self:?}"
            );
        }
        self
    }
}

async fn into_resp(response: reqwest::Response) -> Resp {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let replayed = header(IDEMPOTENT_REPLAYED.as_str()) == "true";
    let text = response.text().await.expect("read response body");
    let body = if content_type.contains("json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON {text:?}: {e}"))
    } else {
        Value::String(text)
    };
    Resp {
        status,
        content_type,
        replayed,
        body,
    }
}

/// Current wall-clock time, as the service's clock reads it.
pub fn now() -> Timestamp {
    SystemClock.now()
}

/// The URL path and JSON body of a pool command (as the API documents them).
pub fn request_parts(pool: &str, action: &Action) -> (String, Value) {
    match action {
        Action::DeclarePool {
            capacity,
            closes_at,
            units,
            idempotency_window_ms,
        } => (
            format!("/v1/pools/{pool}"),
            json!({"capacity": capacity, "closes_at": closes_at, "units": units,
                   "idempotency_window_ms": idempotency_window_ms}),
        ),
        Action::AdjustCapacity { capacity } => (
            format!("/v1/pools/{pool}/capacity"),
            json!({"capacity": capacity}),
        ),
        Action::ClosePool => (format!("/v1/pools/{pool}/close"), json!({})),
        Action::Reserve {
            resource,
            requester,
            duration_ms,
            count,
        } => (
            format!("/v1/pools/{pool}/reservations"),
            json!({"resource": resource, "requester": requester,
                   "duration_ms": duration_ms, "count": count}),
        ),
        Action::ConfirmReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/confirm"),
            json!({}),
        ),
        Action::CancelReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/cancel"),
            json!({}),
        ),
        Action::ExpireReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/expire"),
            json!({}),
        ),
    }
}

pub fn declare(capacity: u64) -> Action {
    Action::DeclarePool {
        capacity,
        closes_at: None,
        units: vec![],
        idempotency_window_ms: 300_000,
    }
}

pub fn reserve(requester: &str, duration_ms: u64) -> Action {
    Action::Reserve {
        resource: "vip-tier".to_owned(),
        requester: requester.to_owned(),
        duration_ms,
        count: 1,
    }
}

pub fn confirm(id: &ReservationId) -> Action {
    Action::ConfirmReservation {
        reservation: id.seq,
    }
}

pub fn cancel(id: &ReservationId) -> Action {
    Action::CancelReservation {
        reservation: id.seq,
    }
}

pub fn expire(id: &ReservationId) -> Action {
    Action::ExpireReservation {
        reservation: id.seq,
    }
}

/// An actor speaking raw HTTP: signs commands itself so tests can tamper with any part.
#[derive(Clone)]
pub struct Actor {
    pub id: ActorId,
    pub key: SigningKey,
    pub base: String,
    http: reqwest::Client,
}

impl Actor {
    /// The same actor talking to the service at `base` (after a restart).
    pub fn at(&self, base: &str) -> Actor {
        Actor {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    /// The hex signature of `action` on `pool` with `token` at `signed_at`.
    pub fn sign(&self, pool: &str, action: &Action, token: &str, signed_at: Timestamp) -> String {
        let pool = PoolId::new(pool);
        let bytes = allot_domain::signing::signing_bytes(
            action,
            &command_target(&pool, action),
            &IdempotencyToken::new(token),
            &self.id,
            signed_at,
        );
        hex::encode(self.key.sign(&bytes).to_bytes())
    }

    /// The headers of a correctly signed command.
    pub fn headers(
        &self,
        pool: &str,
        action: &Action,
        token: &str,
        signed_at: Timestamp,
    ) -> Vec<(&'static str, String)> {
        vec![
            (IDEMPOTENCY_KEY_NAME, token.to_owned()),
            (ACTOR_NAME, self.id.to_string()),
            (SIGNED_AT_NAME, signed_at.0.to_string()),
            (SIGNATURE_NAME, self.sign(pool, action, token, signed_at)),
        ]
    }

    /// A `GET` of `path` signed now as this actor's read of `target`.
    pub async fn read(&self, read: Read, target: &str, path: &str) -> Resp {
        let signed_at = now();
        let bytes = allot_domain::signing::read_signing_bytes(read, target, &self.id, signed_at);
        let signature = hex::encode(self.key.sign(&bytes).to_bytes());
        into_resp(
            self.http
                .get(format!("{}{path}", self.base))
                .header(ACTOR_NAME, self.id.as_str())
                .header(SIGNED_AT_NAME, signed_at.0.to_string())
                .header(SIGNATURE_NAME, signature)
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    /// Reads pool `pool` as this actor.
    pub async fn read_pool(&self, pool: &str) -> Resp {
        self.read(Read::Pool, pool, &format!("/v1/pools/{pool}"))
            .await
    }

    /// Reads reservation `id` as this actor.
    pub async fn read_reservation(&self, id: &ReservationId) -> Resp {
        self.read(
            Read::Reservation,
            &id.to_string(),
            &format!("/v1/reservations/{id}"),
        )
        .await
    }

    /// Signs `commands` now as one batch with key `key` and sends it to `POST /v1/batches`.
    pub async fn send_batch(&self, key: &str, commands: &[BatchCommand]) -> Resp {
        self.send_batch_at(key, commands, now()).await
    }

    /// As [`Actor::send_batch`], to `path` (the batch route with a query).
    pub async fn send_batch_to(&self, path: &str, key: &str, commands: &[BatchCommand]) -> Resp {
        self.send_batch_signed(path, key, commands, now()).await
    }

    /// As [`Actor::send_batch`], signed at `signed_at`.
    pub async fn send_batch_at(
        &self,
        key: &str,
        commands: &[BatchCommand],
        signed_at: Timestamp,
    ) -> Resp {
        self.send_batch_signed(allot_client::wire::BATCH_PATH, key, commands, signed_at)
            .await
    }

    async fn send_batch_signed(
        &self,
        path: &str,
        key: &str,
        commands: &[BatchCommand],
        signed_at: Timestamp,
    ) -> Resp {
        let token = IdempotencyToken::new(key);
        let attestation =
            allot_client::wire::sign_batch(&self.key, &self.id, &token, commands, signed_at)
                .expect("a batch has commands");
        let mut body = Vec::new();
        allot_client::wire::write_batch_body(commands, &mut body).expect("batch body");
        let headers = vec![
            (IDEMPOTENCY_KEY_NAME, key.to_owned()),
            (ACTOR_NAME, self.id.to_string()),
            (SIGNED_AT_NAME, signed_at.0.to_string()),
            (SIGNATURE_NAME, hex::encode(&attestation.signature)),
        ];
        self.post_raw(path, &headers, body).await
    }

    /// Signs `action` now and sends it.
    pub async fn send(&self, pool: &str, action: &Action, token: &str) -> Resp {
        self.send_at(pool, action, token, now()).await
    }

    /// Signs `action` at `signed_at` and sends it.
    pub async fn send_at(
        &self,
        pool: &str,
        action: &Action,
        token: &str,
        signed_at: Timestamp,
    ) -> Resp {
        let (path, body) = request_parts(pool, action);
        let headers = self.headers(pool, action, token, signed_at);
        self.post_raw(&path, &headers, body.to_string()).await
    }

    /// Signs (as this actor) and sends an actor-registry change: registering `target` with
    /// `role` and `public_key`, or revoking it when `change` is `None`.
    pub async fn actor_change(
        &self,
        target: &str,
        change: Option<(Role, [u8; 32])>,
        token: &str,
    ) -> Resp {
        let (path, headers, body) = self.actor_change_request(target, change, token);
        self.post_raw(&path, &headers, body).await
    }

    /// The path, headers and body of a signed actor-registry change (see
    /// [`Actor::actor_change`]), so tests can send it again verbatim.
    pub fn actor_change_request(
        &self,
        target: &str,
        change: Option<(Role, [u8; 32])>,
        token: &str,
    ) -> (String, Vec<(&'static str, String)>, String) {
        let (change, path, body) = match change {
            Some((role, public_key)) => (
                ActorChange::Registered { role, public_key },
                format!("/v1/actors/{target}"),
                json!({"role": role.as_str(), "public_key": hex::encode(public_key)}),
            ),
            None => (
                ActorChange::Revoked,
                format!("/v1/actors/{target}/revoke"),
                json!({}),
            ),
        };
        let signed_at = now();
        let (action, params) = actor_change_params(&change);
        let bytes = allot_domain::signing::actor_signing_bytes(
            action,
            &ActorId::new(target),
            &params,
            &IdempotencyToken::new(token),
            &self.id,
            signed_at,
        );
        let headers = vec![
            (IDEMPOTENCY_KEY_NAME, token.to_owned()),
            (ACTOR_NAME, self.id.to_string()),
            (SIGNED_AT_NAME, signed_at.0.to_string()),
            (
                SIGNATURE_NAME,
                hex::encode(self.key.sign(&bytes).to_bytes()),
            ),
        ];
        (path, headers, body.to_string())
    }

    /// POSTs `body` as JSON with exactly `headers` (plus content type).
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        self.try_post_raw(path, headers, body)
            .await
            .expect("send request")
    }

    /// As [`Actor::post_raw`], but a transport failure (refused or dropped connection) is an
    /// `Err` instead of a panic.
    pub async fn try_post_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> Result<Resp, reqwest::Error> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        Ok(into_resp(request.send().await?).await)
    }
}

/// A running service and everything the tests need to talk to it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: Arc<dyn Clock>,
    pub sweeper: bool,
    pub service: Option<Server>,
    pub base: String,
    pub http: reqwest::Client,
    /// The first admin, through the crate's signing client.
    pub admin: Client,
    /// The first admin, as a raw actor.
    pub admin_raw: Actor,
}

impl Harness {
    pub fn store_dir(dir: &Path) -> PathBuf {
        dir.join("store")
    }

    pub fn keys_dir(dir: &Path) -> PathBuf {
        dir.join("keys")
    }

    async fn start_service(dir: &Path, clock: Arc<dyn Clock>, sweeper: bool) -> Server {
        Self::start_service_with_edge(dir, clock, sweeper, EdgeLimits::default()).await
    }

    /// As [`Harness::start_service`], with the edge limits `edge` on both listeners.
    async fn start_service_with_edge(
        dir: &Path,
        clock: Arc<dyn Clock>,
        sweeper: bool,
        edge: EdgeLimits,
    ) -> Server {
        let store = open_store(&Self::store_dir(dir)).await;
        Self::start_service_over(dir, store, clock, sweeper, edge).await
    }

    /// A service over `store`, with its keys in `dir`.
    async fn start_service_over(
        dir: &Path,
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        sweeper: bool,
        edge: EdgeLimits,
    ) -> Server {
        Server::start(
            store,
            clock,
            Arc::new(Projections::new()),
            ServeOptions {
                listen: "127.0.0.1:0".parse().expect("loopback address"),
                metrics_listen: "127.0.0.1:0".parse().expect("loopback address"),
                keys_dir: Self::keys_dir(dir),
                server_key: None,
                sweeper,
                edge,
            },
        )
        .await
        .expect("start service")
    }

    /// Starts a service on the system clock, with its sweeper, over a fresh store and keys.
    pub async fn start() -> Harness {
        Self::start_with(Arc::new(SystemClock), true).await
    }

    /// Starts a service on `clock`, with or without its sweeper, over a fresh store and keys.
    pub async fn start_with(clock: Arc<dyn Clock>, sweeper: bool) -> Harness {
        Self::start_with_edge(clock, sweeper, EdgeLimits::default()).await
    }

    /// As [`Harness::start_with`], with the edge limits `edge`. A restart (see
    /// [`Harness::resume`]) uses the default limits.
    pub async fn start_with_edge(
        clock: Arc<dyn Clock>,
        sweeper: bool,
        edge: EdgeLimits,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&Self::store_dir(dir.path())).await;
        Self::start_in(dir, store, clock, sweeper, edge).await
    }

    /// A service on `clock` over `store` (a test's own backend or wrapper) with fresh keys. A
    /// restart reopens [`open_store`]'s store, not this one: do not restart it.
    pub async fn start_over(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        sweeper: bool,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, store, clock, sweeper, EdgeLimits::default()).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        sweeper: bool,
        edge: EdgeLimits,
    ) -> Harness {
        let service =
            Self::start_service_over(dir.path(), store, clock.clone(), sweeper, edge).await;
        let base = format!("http://{}", service.addr);
        let (file, key) =
            KeyFile::read(&key_path(&Self::keys_dir(dir.path()), FIRST_ADMIN)).expect("admin.key");
        assert_eq!(file.role, Role::Admin);
        let http = reqwest::Client::new();
        let admin_id = ActorId::new(file.actor);
        let admin = Client::new(base.clone(), admin_id.clone(), key.clone());
        let admin_raw = Actor {
            id: admin_id,
            key,
            base: base.clone(),
            http: http.clone(),
        };
        Harness {
            dir,
            clock,
            sweeper,
            service: Some(service),
            base,
            http,
            admin,
            admin_raw,
        }
    }

    pub fn service(&self) -> &Server {
        self.service.as_ref().expect("service running")
    }

    /// Drains and stops the service, then starts a new one over the same store and keys.
    /// Returns the projections contents of the stopped service.
    pub async fn restart(&mut self) -> ProjectionContents {
        let before = self.stop().await;
        self.resume().await;
        before
    }

    /// Drains and stops the service; returns its projections contents.
    pub async fn stop(&mut self) -> ProjectionContents {
        let server = self.service.take().expect("service running");
        let service = server.service.clone();
        server.shutdown().await.expect("graceful shutdown");
        service.projections().contents()
    }

    /// Starts a new service over the same store and keys (after [`Harness::stop`]).
    pub async fn resume(&mut self) {
        assert!(self.service.is_none(), "service still running");
        let service = Self::start_service(self.dir.path(), self.clock.clone(), self.sweeper).await;
        self.base = format!("http://{}", service.addr);
        self.admin = Client::new(
            self.base.clone(),
            self.admin.actor().clone(),
            self.admin_raw.key.clone(),
        );
        self.admin_raw.base = self.base.clone();
        self.service = Some(service);
    }

    /// A raw actor with `key` (registered or not).
    pub fn actor(&self, name: &str, key: SigningKey) -> Actor {
        Actor {
            id: ActorId::new(name),
            key,
            base: self.base.clone(),
            http: self.http.clone(),
        }
    }

    /// Registers `name` with `role` and the key derived from `seed`, through the crate's client.
    pub async fn register(&self, name: &str, role: Role, seed: u8) -> Actor {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let answer = self
            .admin
            .register_actor(
                &ActorId::new(name),
                role,
                key.verifying_key().to_bytes(),
                &format!("register-{name}-{seed}"),
            )
            .await
            .expect("register request");
        assert_eq!(answer.status, 200, "register {name}: {answer:?}");
        self.actor(name, key)
    }

    pub async fn get(&self, path: &str) -> Resp {
        into_resp(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    /// Reads pool `pool` as the first admin.
    pub async fn pool(&self, pool: &str) -> Resp {
        self.admin_raw.read_pool(pool).await
    }

    pub async fn allocated(&self, pool: &str) -> u64 {
        let pool = self.pool(pool).await;
        pool.expect_ok(200);
        pool.body["allocated"].as_u64().expect("allocated")
    }

    /// Reads reservation `id` as the first admin (who may read any).
    pub async fn reservation(&self, id: &ReservationId) -> Resp {
        self.admin_raw.read_reservation(id).await
    }

    pub async fn state_of(&self, id: &ReservationId) -> String {
        let answer = self.reservation(id).await;
        answer.expect_ok(200);
        answer.body["state"].as_str().expect("state").to_owned()
    }

    /// Number of events in the store (every stream), read through the port; for the in-memory
    /// backend cross-checked against `MemoryStore::len`.
    pub async fn event_count(&self) -> usize {
        let store = self.service().service.store();
        let mut count = 0;
        let mut after = None;
        loop {
            let page = store.read_all(after, 4096).await.expect("read_all");
            count += page.len();
            match page.last() {
                Some(last) if page.len() == 4096 => after = Some(last.position),
                _ => break,
            }
        }
        let memory = memory_store(&Self::store_dir(self.dir.path()));
        if !memory.is_empty() {
            assert_eq!(
                memory.len(),
                count,
                "MemoryStore::len disagrees with read_all"
            );
        }
        count
    }

    /// Everything a refused request must leave untouched: the store's length, every projection,
    /// and the HTTP views of `pools` and `reservations`.
    pub async fn observe(&self, pools: &[&str], reservations: &[&ReservationId]) -> Observed {
        let mut http = Vec::new();
        for pool in pools {
            http.push(self.pool(pool).await.body);
        }
        for id in reservations {
            http.push(self.reservation(id).await.body);
        }
        Observed {
            events: self.event_count().await,
            projections: self.service().service.projections().contents(),
            http,
        }
    }

    /// `GET /metrics` on the metrics listener.
    pub async fn get_metrics(&self) -> Resp {
        let url = format!("http://{}/metrics", self.service().metrics_addr);
        into_resp(self.http.get(url).send().await.expect("GET /metrics")).await
    }

    /// The value of the sample `name` (e.g. `allot_sweeper_expired_total`) in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = self.get_metrics().await;
        assert_eq!(metrics.status, 200);
        let text = metrics.body.as_str().expect("metrics text");
        text.lines()
            .find_map(|line| {
                let (sample, value) = line.split_once(' ')?;
                (sample == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
    }

    /// Polls `id` until its state is `state`, for at most `deadline`; returns the wall-clock
    /// time at which it was first observed so, or panics with the last answer.
    pub async fn wait_for_state(
        &self,
        id: &ReservationId,
        state: &str,
        deadline: Duration,
    ) -> Timestamp {
        let started = Instant::now();
        loop {
            let answer = self.reservation(id).await;
            let seen = now();
            if answer.body["state"] == state {
                return seen;
            }
            assert!(
                started.elapsed() < deadline,
                "{id} not {state} within {deadline:?}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown().await.expect("graceful shutdown");
        }
    }
}

/// See [`Harness::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub events: usize,
    pub projections: ProjectionContents,
    pub http: Vec<Value>,
}

/// Parses one HTTP/1.1 answer at the start of `bytes`; returns it and its length in bytes, or
/// `None` while it is incomplete.
fn parse_answer(bytes: &[u8]) -> Option<(Resp, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse::<u16>()
        .unwrap_or_else(|e| panic!("bad status line in {head:?}: {e}"));
    let mut headers = HashMap::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length = headers
        .get("content-length")
        .map_or(0, |value| value.parse::<usize>().expect("content-length"));
    if bytes.len() < head_end + length {
        return None;
    }
    let text = String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned();
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let body = if content_type.contains("json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON {text:?}: {e}"))
    } else {
        Value::String(text)
    };
    let replayed = headers
        .get(IDEMPOTENT_REPLAYED.as_str())
        .map(String::as_str)
        == Some("true");
    let resp = Resp {
        status,
        content_type,
        replayed,
        body,
    };
    Some((resp, head_end + length))
}

/// A client connection speaking raw bytes, for requests no HTTP client library would send.
pub struct RawConnection {
    stream: tokio::net::TcpStream,
    received: Vec<u8>,
    closed: bool,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        RawConnection {
            stream: tokio::net::TcpStream::connect(addr).await.expect("connect"),
            received: Vec::new(),
            closed: false,
        }
    }

    /// Writes `bytes`; an error means the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    /// Reads more within `deadline`; false when the server closed (end of stream or reset) or
    /// the deadline passed.
    async fn read_more(&mut self, deadline: tokio::time::Instant) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(read)) => {
                self.received.extend_from_slice(&chunk[..read]);
                true
            }
            Err(_) => false,
        }
    }

    /// The next answer, read within `within`; `None` if the server closed or the time passed
    /// first.
    pub async fn answer(&mut self, within: Duration) -> Option<Resp> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((answer, used)) = parse_answer(&self.received) {
                self.received.drain(..used);
                return Some(answer);
            }
            if self.closed || !self.read_more(deadline).await {
                return None;
            }
        }
    }

    /// Waits up to `within` for the server to close the connection (bytes that arrive first are
    /// kept for [`RawConnection::answer`]); true if it did.
    pub async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.closed {
            if !self.read_more(deadline).await && !self.closed {
                return false;
            }
        }
        true
    }
}

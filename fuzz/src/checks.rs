//! The properties the fuzz targets check, one function per target. Each takes arbitrary bytes
//! and panics only when the property is broken (a panic inside allot is a finding too).
//!
//! This file is shared: the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) call it through the
//! `allot_fuzz` crate, and the default test suite runs it on seeds and pseudo-random inputs
//! (`tests/src/bin/fuzz_smoke.rs`, through `#[path]`), so the properties stay compiled and
//! exercised without a nightly toolchain.
//!
//! - [`log_recovery`]: any bytes as `events.log` either open (and then every event reads back
//!   with contiguous positions, an append works, and the log reopens with that append) or fail
//!   with an error: never a panic.
//! - [`event_decode`]: any bytes through the pool and actor event decoders give an event or an
//!   error; a decoded event re-encodes to something that decodes to the same event; a sequence
//!   of decoded events folds through `evolve` and the actor registry without a panic.
//! - [`http_request`]: any method, path, headers and body sent to the router give a response;
//!   every event recorded because of a request carries a signature that verifies with the key
//!   of the actor it names (so nothing changes without a valid signature).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use allot_domain::signing::{actor_change_params, command_target, params_digest};
use allot_domain::{
    Action, ActorChange, ActorEvent, ActorId, ActorRegistry, Attestation, IdempotencyToken, Pool,
    PoolId, Role, Timestamp, codec, evolve, signing,
};
use allot_server::clock::ManualClock;
use allot_server::http;
use allot_server::identity::verify_signature;

use allot_domain::streams::ACTORS_STREAM;
use allot_projections::Projections;
use allot_server::metrics::Metrics;
use allot_server::service::Service;
use allot_server::service::replay_tail::{decode_actor, decode_pool};
use allot_server::store::embedded::{EmbeddedStore, LOG_FILE_NAME};
use allot_server::store::memory::MemoryStore;
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent, RecordedEvent};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use ed25519_dalek::{Signer, SigningKey};
use tower::ServiceExt;

/// The fixed time of the HTTP target's clock (2027-01-15), so seeds signed at it stay fresh.
pub const FUZZ_NOW: Timestamp = Timestamp(1_800_000_000_000);
/// Actors of the HTTP target, with fixed keys so seed requests carry valid signatures.
pub const FUZZ_ADMIN: &str = "fz-admin";
pub const FUZZ_CLIENT: &str = "fz-client";
/// The pool declared before any input.
pub const FUZZ_POOL: &str = "fz";
/// Request bodies are cut here (the service refuses more than 64 KiB anyway).
const FUZZ_BODY_BYTES_MAX: usize = 80 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// log recovery

/// Opens `bytes` as a log. See the module doc for the property.
pub fn log_recovery(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(LOG_FILE_NAME), bytes).expect("write log");
    runtime().block_on(recover(dir.path()));
}

async fn recover(dir: &Path) {
    let store = match EmbeddedStore::open(dir).await {
        Ok(store) => store,
        // Corrupt, I/O or the like: a clear error is the right answer to a damaged log.
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let events = store
        .read_all(None, usize::MAX)
        .await
        .expect("read opened log");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.position, i as u64,
            "positions of an opened log are contiguous"
        );
    }
    let appended = store
        .append(
            "fuzz-after-recovery",
            ExpectedVersion::Any,
            vec![ProposedEvent {
                id: [9; 16],
                kind: "FuzzProbe".to_owned(),
                payload: b"probe".to_vec(),
            }],
        )
        .await
        .expect("append after recovery");
    assert_eq!(appended.last_position, events.len() as u64);
    store.close().await.expect("close");
    drop(store);
    let reopened = EmbeddedStore::open(dir)
        .await
        .expect("a log this store wrote after recovery reopens");
    let again = reopened
        .read_all(None, usize::MAX)
        .await
        .expect("read reopened log");
    assert_eq!(
        again.len(),
        events.len() + 1,
        "recovered events and the probe"
    );
    assert_eq!(
        &again[..events.len()],
        &events[..],
        "reopen shows what open showed"
    );
}

/// A real log: a few appends of several streams, as bytes of `events.log`.
pub fn seed_log() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    runtime().block_on(async {
        let store = EmbeddedStore::open(dir.path()).await.expect("open");
        for i in 0..6u8 {
            let events = (0..=i % 3)
                .map(|j| ProposedEvent {
                    id: [i; 16],
                    kind: "Seed".to_owned(),
                    payload: vec![i, j, 0xa5],
                })
                .collect();
            let stream = format!("seed-{}", i % 2);
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
        store.close().await.expect("close");
    });
    std::fs::read(dir.path().join(LOG_FILE_NAME)).expect("read log")
}

// ---------------------------------------------------------------------------------------------
// event decoding

/// Decodes `bytes`; the first byte picks pool event, actor event, or a length-prefixed sequence
/// of pool events folded through `evolve`.
pub fn event_decode(bytes: &[u8]) {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(event) = codec::decode_event(rest) {
                let again = codec::decode_event(&codec::encode_event(&event));
                assert_eq!(again.as_ref(), Ok(&event), "pool event round trip");
            }
        }
        1 => {
            if let Ok(event) = codec::decode_actor_event(rest) {
                let again = codec::decode_actor_event(&codec::encode_actor_event(&event));
                assert_eq!(again.as_ref(), Ok(&event), "actor event round trip");
                ActorRegistry::default().apply(&event);
            }
        }
        _ => {
            // [u16 length][payload] repeated: a stream as the service would fold it.
            let mut pool = Pool::default();
            let mut registry = ActorRegistry::default();
            let mut rest = rest;
            while rest.len() >= 2 {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                let (payload, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                if let Ok(event) = codec::decode_event(payload) {
                    // A refused fold is an error value, as for a damaged log; it must not panic.
                    let _ = evolve(&mut pool, &event);
                } else if let Ok(event) = codec::decode_actor_event(payload) {
                    registry.apply(&event);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP requests and signatures

fn admin_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn client_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// The public key each fuzz actor is known by; anything else never signs.
fn known_public_key(actor: &ActorId) -> Option<[u8; 32]> {
    match actor.as_str() {
        FUZZ_ADMIN => Some(admin_key().verifying_key().to_bytes()),
        FUZZ_CLIENT => Some(client_key().verifying_key().to_bytes()),
        _ => None,
    }
}

struct HttpTarget {
    router: Router,
    store: MemoryStore,
}

fn http_target() -> &'static HttpTarget {
    static TARGET: OnceLock<HttpTarget> = OnceLock::new();
    TARGET.get_or_init(|| runtime().block_on(build_http_target()))
}

async fn build_http_target() -> HttpTarget {
    let store = MemoryStore::new();
    let service = Service::open(
        Arc::new(store.clone()),
        Arc::new(ManualClock::new(FUZZ_NOW)),
        Arc::new(Projections::new()),
        Arc::new(Metrics::new()),
    )
    .await
    .expect("open service");
    // The admin registers itself, as `allot serve` does at first start.
    let admin = ActorId::new(FUZZ_ADMIN);
    for (actor, role, key) in [
        (FUZZ_ADMIN, Role::Admin, admin_key()),
        (FUZZ_CLIENT, Role::Client, client_key()),
    ] {
        let actor = ActorId::new(actor);
        let change = ActorChange::Registered {
            role,
            public_key: key.verifying_key().to_bytes(),
        };
        let (action, params) = actor_change_params(&change);
        let token = IdempotencyToken::new(format!("setup:{actor}"));
        let bytes = signing::actor_signing_bytes(action, &actor, &params, &token, &admin, FUZZ_NOW);
        service
            .record_actor_event(ActorEvent {
                actor,
                change,
                by: admin.clone(),
                token,
                attestation: Attestation {
                    signed_at: FUZZ_NOW,
                    signature: admin_key().sign(&bytes).to_bytes().to_vec(),
                },
                at: FUZZ_NOW,
            })
            .await
            .expect("register");
    }
    let router = http::router(service);
    let declare = signed_request(
        FUZZ_ADMIN,
        &admin_key(),
        &PoolId::new(FUZZ_POOL),
        &Action::DeclarePool {
            capacity: 5,
            closes_at: None,
            units: Vec::new(),
            idempotency_window_ms: 3_600_000,
        },
        "setup:declare",
    );
    let response = send(&router, &declare).await;
    assert!(response < 300, "declare the fuzz pool: status {response}");
    HttpTarget { router, store }
}

/// A parsed fuzz request: method, path, headers, body.
struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Input format: `METHOD PATH\n`, then `name: value\n` lines up to an empty line, then the body.
fn parse_request(bytes: &[u8]) -> RawRequest {
    let text_end = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..text_end]);
    let body = bytes
        .get(text_end + 2..)
        .unwrap_or_default()
        .iter()
        .take(FUZZ_BODY_BYTES_MAX)
        .copied()
        .collect();
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or_default();
    let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    RawRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body,
    }
}

/// Serializes a request in the fuzz input format (for seeds).
fn unparse(request: &RawRequest) -> Vec<u8> {
    let mut out = format!("{} {}\n", request.method, request.path).into_bytes();
    for (name, value) in &request.headers {
        out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(&request.body);
    out
}

/// Sends `request` to the router; returns the status. A request the HTTP layer cannot even
/// build (bad method, URI or header bytes) is refused before the service, like a client's.
async fn send(router: &Router, request: &RawRequest) -> u16 {
    let mut builder = Request::builder()
        .method(request.method.as_str())
        .uri(request.path.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let Ok(built) = builder.body(Body::from(request.body.clone())) else {
        return 0;
    };
    let response = router
        .clone()
        .oneshot(built)
        .await
        .expect("router is infallible");
    let status = response.status().as_u16();
    // Read the body too: rendering it must not panic either.
    let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await;
    status
}

/// A request signed as `actor` with `key` at [`FUZZ_NOW`], as the client would send it.
fn signed_request(
    actor: &str,
    key: &SigningKey,
    pool: &PoolId,
    action: &Action,
    token: &str,
) -> RawRequest {
    let token_id = IdempotencyToken::new(token);
    let actor_id = ActorId::new(actor);
    let bytes = signing::signing_bytes(
        action,
        &command_target(pool, action),
        &token_id,
        &actor_id,
        FUZZ_NOW,
    );
    let signature = hex_encode(&key.sign(&bytes).to_bytes());
    let (path, body) = match action {
        Action::DeclarePool {
            capacity,
            idempotency_window_ms,
            ..
        } => (
            format!("/v1/pools/{pool}"),
            format!(r#"{{"capacity":{capacity},"idempotency_window_ms":{idempotency_window_ms}}}"#),
        ),
        Action::Reserve {
            resource,
            requester,
            duration_ms,
            count,
        } => (
            format!("/v1/pools/{pool}/reservations"),
            format!(
                r#"{{"resource":"{resource}","requester":"{requester}","duration_ms":{duration_ms},"count":{count}}}"#
            ),
        ),
        Action::AdjustCapacity { capacity } => (
            format!("/v1/pools/{pool}/capacity"),
            format!(r#"{{"capacity":{capacity}}}"#),
        ),
        Action::ClosePool => (format!("/v1/pools/{pool}/close"), "{}".to_owned()),
        Action::ConfirmReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/confirm"),
            "{}".to_owned(),
        ),
        Action::CancelReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/cancel"),
            "{}".to_owned(),
        ),
        Action::ExpireReservation { reservation } => (
            format!("/v1/reservations/{pool}:{reservation}/expire"),
            "{}".to_owned(),
        ),
    };
    RawRequest {
        method: "POST".to_owned(),
        path,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("idempotency-key".to_owned(), token.to_owned()),
            ("allot-actor".to_owned(), actor.to_owned()),
            ("allot-signed-at".to_owned(), FUZZ_NOW.0.to_string()),
            ("allot-signature".to_owned(), signature),
        ],
        body: body.into_bytes(),
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends the request `bytes` describe; checks every event it caused is validly signed.
pub fn http_request(bytes: &[u8]) {
    let target = http_target();
    let request = parse_request(bytes);
    runtime().block_on(async {
        let before = target.store.len();
        let status = send(&target.router, &request).await;
        assert!(status != 500, "internal error for {}", request.path);
        let after = target.store.len();
        if after == before {
            return;
        }
        let recorded = target
            .store
            .read_all(before.checked_sub(1).map(|p| p as u64), usize::MAX)
            .await
            .expect("read memory store");
        for event in &recorded {
            check_signed(event);
        }
    });
}

/// Panics unless `recorded` carries a signature by a known key over its own parameters.
fn check_signed(recorded: &RecordedEvent) {
    if recorded.stream == ACTORS_STREAM {
        let event = decode_actor(recorded).expect("decode actor event");
        let key = known_public_key(&event.by)
            .unwrap_or_else(|| panic!("actor change signed by unknown {}", event.by));
        let bytes = signing::actor_event_signing_bytes(&event);
        verify_signature(&key, &bytes, &event.attestation.signature, &event.by)
            .unwrap_or_else(|e| panic!("actor change recorded without a valid signature: {e}"));
        return;
    }
    let event = decode_pool(recorded).expect("decode pool event");
    let key = known_public_key(&event.actor)
        .unwrap_or_else(|| panic!("pool event signed by unknown {}", event.actor));
    assert_eq!(
        event.digest,
        params_digest(&event.action),
        "digest of the recorded action"
    );
    let bytes = signing::signing_bytes(
        &event.action,
        &command_target(&event.pool, &event.action),
        &event.token,
        &event.actor,
        event.attestation.signed_at,
    );
    verify_signature(&key, &bytes, &event.attestation.signature, &event.actor)
        .unwrap_or_else(|e| panic!("pool event recorded without a valid signature: {e}"));
}

/// Seed inputs for the HTTP target: valid signed commands of every kind, reads, and a few
/// malformed ones.
pub fn seed_requests() -> Vec<Vec<u8>> {
    let pool = PoolId::new(FUZZ_POOL);
    let client = client_key();
    let admin = admin_key();
    let mut seeds = vec![
        signed_request(
            FUZZ_CLIENT,
            &client,
            &pool,
            &Action::Reserve {
                resource: "seat-1".to_owned(),
                requester: "ada".to_owned(),
                duration_ms: 60_000,
                count: 1,
            },
            "seed-reserve",
        ),
        signed_request(
            FUZZ_CLIENT,
            &client,
            &pool,
            &Action::ConfirmReservation { reservation: 1 },
            "seed-confirm",
        ),
        signed_request(
            FUZZ_CLIENT,
            &client,
            &pool,
            &Action::CancelReservation { reservation: 1 },
            "seed-cancel",
        ),
        signed_request(
            FUZZ_ADMIN,
            &admin,
            &pool,
            &Action::ExpireReservation { reservation: 1 },
            "seed-expire",
        ),
        signed_request(
            FUZZ_ADMIN,
            &admin,
            &pool,
            &Action::AdjustCapacity { capacity: 9 },
            "seed-adjust",
        ),
        signed_request(
            FUZZ_ADMIN,
            &admin,
            &PoolId::new("fz-2"),
            &Action::DeclarePool {
                capacity: 2,
                closes_at: None,
                units: Vec::new(),
                idempotency_window_ms: 240_000,
            },
            "seed-declare",
        ),
        signed_request(FUZZ_ADMIN, &admin, &pool, &Action::ClosePool, "seed-close"),
    ];
    // A forged client signature: the right shape, the wrong bytes.
    let mut forged = seeds[0].headers.clone();
    if let Some(sig) = forged
        .iter_mut()
        .find(|(name, _)| name == "allot-signature")
    {
        sig.1 = "00".repeat(64);
    }
    seeds.push(RawRequest {
        method: "POST".to_owned(),
        path: seeds[0].path.clone(),
        headers: forged,
        body: seeds[0].body.clone(),
    });
    let register_body = format!(
        r#"{{"role":"admin","public_key":"{}"}}"#,
        hex_encode(&client.verifying_key().to_bytes())
    );
    seeds.push(RawRequest {
        method: "POST".to_owned(),
        path: "/v1/actors/mallory".to_owned(),
        headers: seeds[0].headers.clone(),
        body: register_body.into_bytes(),
    });
    for path in [
        "/v1/pools/fz",
        "/v1/reservations/fz:1",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        seeds.push(RawRequest {
            method: "GET".to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        });
    }
    seeds.iter().map(unparse).collect()
}

/// Seed inputs for the event target: the events the HTTP seeds record, encoded, under each mode.
pub fn seed_events() -> Vec<Vec<u8>> {
    let target = http_target();
    for seed in seed_requests() {
        http_request(&seed);
    }
    let recorded = runtime()
        .block_on(target.store.read_all(None, usize::MAX))
        .expect("read memory store");
    let mut seeds = Vec::new();
    let mut sequence = vec![2u8];
    for event in &recorded {
        let mode = if event.stream == ACTORS_STREAM { 1 } else { 0 };
        let mut seed = vec![mode];
        seed.extend_from_slice(&event.payload);
        seeds.push(seed);
        if mode == 0 {
            sequence.extend_from_slice(&(event.payload.len() as u16).to_le_bytes());
            sequence.extend_from_slice(&event.payload);
        }
    }
    seeds.push(sequence);
    seeds
}

/// The HTTP oracle can fail: the setup's pool declaration with its signature zeroed must be
/// refused by [`check_signed`] (panics with "without a valid signature").
pub fn check_forged_event_is_caught() {
    let target = http_target();
    let recorded = runtime()
        .block_on(target.store.read_all(None, usize::MAX))
        .expect("read memory store");
    let mut forged = recorded
        .into_iter()
        .find(|event| event.stream != ACTORS_STREAM)
        .expect("the setup declared a pool");
    let mut event = decode_pool(&forged).expect("decode");
    event.attestation.signature = vec![0; 64];
    forged.payload = codec::encode_event(&event);
    check_signed(&forged);
}

//! Who may do and see what, over real HTTP: reservation ownership, signed reads by role, the
//! requester hidden from other clients, and one rule per identifier at every entry point. Each
//! case names the request, the expected status and problem code, and proves nothing changed.

mod support;

use allot_domain::signing::Read;
use allot_domain::{ReservationId, Role};
use ed25519_dalek::SigningKey;
use serde_json::json;
use support::{Harness, Resp, cancel, confirm, declare, reserve};

/// Asserts `answer` is the problem `status` / `code`, naming the case on failure.
#[track_caller]
fn refused(case: &str, answer: &Resp, status: u16, code: &str) {
    assert!(
        answer.status == status
            && answer.content_type == "application/problem+json"
            && answer.code() == Some(code),
        "{case}: wanted {status} {code}, got {answer:?}"
    );
}

/// Sends `method path` as written (no URL normalization: `..` stays `..`) with `headers` and
/// `body` on a fresh connection, and reads the whole answer.
async fn raw(
    h: &Harness,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Resp {
        status,
        content_type,
        replayed: false,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

/// Headers of a signed-looking command (the identifier is refused before the signature).
fn envelope(token: &str, actor: &str) -> Vec<(&'static str, String)> {
    vec![
        ("idempotency-key", token.to_owned()),
        ("allot-actor", actor.to_owned()),
        ("allot-signed-at", "1".to_owned()),
        ("allot-signature", "00".to_owned()),
    ]
}

/// A service with pool `p`, two client services and a reservation made by the first.
async fn two_clients() -> (Harness, support::Actor, support::Actor, ReservationId) {
    let h = Harness::start().await;
    h.admin_raw
        .send("p", &declare(10), "declare-p")
        .await
        .expect_ok(201);
    let checkout = h.register("checkout", Role::Client, 11).await;
    let partner = h.register("partner", Role::Client, 12).await;
    let made = checkout
        .send("p", &reserve("student-17", 600_000), "r1")
        .await;
    made.expect_ok(201);
    let id = made.reservation();
    (h, checkout, partner, id)
}

#[tokio::test]
async fn another_client_cannot_confirm_or_cancel_a_reservation_and_nothing_changes() {
    let (h, checkout, partner, id) = two_clients().await;
    let before = h.observe(&["p"], &[&id]).await;
    refused(
        "partner confirms checkout's reservation",
        &partner.send("p", &confirm(&id), "c1").await,
        403,
        "not-owner",
    );
    refused(
        "partner cancels checkout's reservation",
        &partner.send("p", &cancel(&id), "x1").await,
        403,
        "not-owner",
    );
    assert_eq!(h.observe(&["p"], &[&id]).await, before);
    // The refusal recorded nothing: the partner's token is still unused.
    partner
        .send("p", &reserve("student-18", 600_000), "c1")
        .await
        .expect_ok(201);
    // The owner still may.
    checkout.send("p", &confirm(&id), "c1").await.expect_ok(200);
    h.shutdown().await;
}

#[tokio::test]
async fn an_admin_acts_for_the_owner_and_the_event_names_both() {
    let (h, _checkout, _partner, id) = two_clients().await;
    h.admin_raw
        .send("p", &cancel(&id), "back-office-cancel")
        .await
        .expect_ok(200);
    assert_eq!(h.state_of(&id).await, "released");
    let store = h.service().service.store().clone();
    let stream = allot_domain::streams::pool_stream(&id.pool);
    let events = store.read_stream(&stream, 0, 100).await.expect("read");
    let last = events.last().expect("events");
    let event = allot_domain::codec::decode_event(&last.payload).expect("decode");
    assert_eq!(event.actor.as_str(), "admin");
    assert_eq!(
        event.on_behalf_of,
        allot_domain::OnBehalfOf::Owner(allot_domain::ActorId::new("checkout"))
    );
    h.shutdown().await;
}

#[tokio::test]
async fn reads_are_signed_and_answered_by_role() {
    let (h, checkout, partner, id) = two_clients().await;
    let auditor = h.register("auditor1", Role::Auditor, 13).await;
    let sweeper_key = SigningKey::from_bytes(&[14; 32]);
    let answer = h
        .admin
        .register_actor(
            &allot_domain::ActorId::new("sweeper2"),
            Role::Sweeper,
            sweeper_key.verifying_key().to_bytes(),
            "register-sweeper2",
        )
        .await
        .expect("register");
    assert_eq!(answer.status, 200);
    let sweeper = h.actor("sweeper2", sweeper_key);
    let before = h.observe(&["p"], &[&id]).await;

    // Unsigned reads: the signature headers are required.
    refused(
        "unsigned pool read",
        &h.get("/v1/pools/p").await,
        400,
        "invalid-request",
    );
    refused(
        "unsigned reservation read",
        &h.get(&format!("/v1/reservations/{id}")).await,
        400,
        "invalid-request",
    );
    // A read signed over another target does not verify.
    refused(
        "read signed for another pool",
        &checkout.read(Read::Pool, "q", "/v1/pools/p").await,
        401,
        "invalid-request",
    );
    // A read signed as a command does not verify either: the action is part of the bytes.
    refused(
        "reservation read signed as a pool read",
        &checkout
            .read(
                Read::Pool,
                &id.to_string(),
                &format!("/v1/reservations/{id}"),
            )
            .await,
        401,
        "invalid-request",
    );

    // The owner sees its reservation with the requester.
    let own = checkout.read_reservation(&id).await;
    own.expect_ok(200);
    assert_eq!(own.body["requester"], json!("student-17"));
    // Another client: as if it did not exist.
    refused(
        "partner reads checkout's reservation",
        &partner.read_reservation(&id).await,
        404,
        "not-known",
    );
    let unknown = ReservationId {
        pool: id.pool.clone(),
        seq: 99,
    };
    let missing = partner.read_reservation(&unknown).await;
    refused(
        "partner reads a missing reservation",
        &missing,
        404,
        "not-known",
    );
    // The auditor and the admin see any reservation, requester included.
    for reader in [&auditor, &h.admin_raw] {
        let any = reader.read_reservation(&id).await;
        any.expect_ok(200);
        assert_eq!(any.body["requester"], json!("student-17"));
    }
    // Pools: clients, auditors and admins read counts; the sweeper reads nothing.
    for reader in [&checkout, &partner, &auditor] {
        reader.read_pool("p").await.expect_ok(200);
    }
    refused(
        "sweeper reads a pool",
        &sweeper.read_pool("p").await,
        403,
        "forbidden",
    );
    refused(
        "sweeper reads a reservation",
        &sweeper.read_reservation(&id).await,
        403,
        "forbidden",
    );
    // An unregistered key.
    let stranger = h.actor("stranger", SigningKey::from_bytes(&[15; 32]));
    refused(
        "unknown actor reads a pool",
        &stranger.read_pool("p").await,
        401,
        "invalid-request",
    );
    assert_eq!(h.observe(&["p"], &[&id]).await, before);
    h.shutdown().await;
}

#[tokio::test]
async fn identifiers_follow_one_rule_at_every_entry_point() {
    let (h, checkout, _partner, id) = two_clients().await;
    let before = h.observe(&["p"], &[&id]).await;
    // Pool ids at declaration and in read paths, sent as written.
    let long_pool = format!("/v1/pools/{}", "a".repeat(65));
    for (case, path) in [
        ("pool id .", "/v1/pools/."),
        ("pool id ..", "/v1/pools/.."),
        ("pool id with a space", "/v1/pools/a%20b"),
        ("pool id with a colon", "/v1/pools/a:b"),
        ("pool id of 65 bytes", long_pool.as_str()),
    ] {
        let body = json!({"capacity": 1}).to_string();
        let answer = raw(&h, "POST", path, &envelope("bad-pool", "admin"), &body).await;
        refused(case, &answer, 400, "invalid-request");
        let read = raw(&h, "GET", path, &envelope("", "checkout"), "").await;
        refused(&format!("read of {case}"), &read, 400, "invalid-request");
    }
    // Actor ids at registration: ones that could never sign (the header is ASCII) or be
    // addressed.
    let long_actor = "a".repeat(129);
    for (case, actor) in [
        ("actor id with a letter outside ASCII", "st%C3%BCdent"),
        ("actor id ..", ".."),
        ("actor id with a space", "a%20b"),
        ("actor id of 129 bytes", long_actor.as_str()),
    ] {
        let body = json!({"role": "client", "public_key": hex::encode([1u8; 32])}).to_string();
        let path = format!("/v1/actors/{actor}");
        let answer = raw(&h, "POST", &path, &envelope("bad-actor", "admin"), &body).await;
        refused(case, &answer, 400, "invalid-request");
    }
    // Actor ids in the signature header, on a command and on a read.
    let body = json!({"resource": "seat", "requester": "x", "duration_ms": 60000}).to_string();
    let answer = raw(
        &h,
        "POST",
        "/v1/pools/p/reservations",
        &envelope("bad-header", "a..b c"),
        &body,
    )
    .await;
    refused("actor header with a space", &answer, 400, "invalid-request");
    let read = raw(&h, "GET", "/v1/pools/p", &envelope("", ".."), "").await;
    refused("actor header ..", &read, 400, "invalid-request");
    let _ = checkout;
    assert_eq!(h.observe(&["p"], &[&id]).await, before);
    h.shutdown().await;
}

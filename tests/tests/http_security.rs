//! Security checks over real HTTP: forged and mismatched signatures, replayed signatures, stale
//! `signed_at`, unknown and revoked actors, role escalation, oversized bodies and absurd numbers.
//! Every refusal must be a clear RFC 9457 problem and must change nothing.

mod support;

use allot_domain::{Action, ActorId, ReservationId, Role, Timestamp};
use allot_server::identity::KeyFile;
use allot_server::server::{FIRST_SWEEPER, key_path};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use support::{
    Actor, Harness, Observed, Resp, SIGNATURE_NAME, SIGNED_AT_NAME, cancel, confirm, declare,
    expire, now, request_parts, reserve,
};

/// Collects refusals that did not look as expected, so one run reports all of them.
#[derive(Default)]
struct Refusals {
    failures: Vec<String>,
    checked: usize,
}

impl Refusals {
    /// `answer` must be a problem with one of `statuses` and `code`, not marked replayed.
    fn expect(&mut self, name: &str, answer: &Resp, statuses: &[u16], code: &str) {
        self.checked += 1;
        let detail_ok = answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty());
        let ok = statuses.contains(&answer.status)
            && answer.content_type == "application/problem+json"
            && answer.code() == Some(code)
            && answer.body["status"].as_u64() == Some(u64::from(answer.status))
            && answer.body["type"].as_str().is_some()
            && answer.body["title"].as_str().is_some()
            && detail_ok
            && !answer.replayed;
        if !ok {
            self.failures.push(format!(
                "{name}: wanted {statuses:?} {code}, got {} {:?} {}",
                answer.status, answer.content_type, answer.body
            ));
        }
    }

    /// Asserts every refusal was right and the service is exactly as `before`.
    async fn finish(self, h: &Harness, pools: &[&str], ids: &[&ReservationId], before: &Observed) {
        assert!(
            self.failures.is_empty(),
            "{} of {} refusals wrong:\n{}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
        let after = h.observe(pools, ids).await;
        assert_eq!(&after, before, "a refused request changed something");
    }
}

/// A service with a client `shop`, pool `s1` (capacity 5) holding one reservation, and pool `s2`.
async fn setup() -> (Harness, Actor, ReservationId) {
    let h = Harness::start().await;
    let shop = h.register("shop", Role::Client, 61).await;
    for pool in ["s1", "s2"] {
        h.admin_raw
            .send(pool, &declare(5), &format!("declare-{pool}"))
            .await
            .expect_ok(201);
    }
    let held = shop
        .send("s1", &reserve("alice", 600_000), "s1-alice")
        .await;
    held.expect_ok(201);
    let rsv = held.reservation();
    (h, shop, rsv)
}

/// `headers` with `name` replaced by `value`.
fn with_header(
    mut headers: Vec<(&'static str, String)>,
    name: &str,
    value: String,
) -> Vec<(&'static str, String)> {
    for (header, old) in &mut headers {
        if *header == name {
            *old = value.clone();
        }
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_mismatched_signatures_are_refused() {
    let (h, shop, rsv) = setup().await;
    let shop2 = h.register("shop2", Role::Client, 62).await;
    let second = shop.send("s1", &reserve("bob", 600_000), "s1-bob").await;
    second.expect_ok(201);
    let rsv2 = second.reservation();
    let ids = [&rsv, &rsv2];
    let before = h.observe(&["s1", "s2"], &ids).await;
    let mut refusals = Refusals::default();
    let path = "/v1/pools/s1/reservations";
    let action = reserve("carol", 600_000);
    let (_, body) = request_parts("s1", &action);
    let signed_at = now();
    let headers = shop.headers("s1", &action, "sec-1", signed_at);

    // Signed by a different key, claiming to be shop.
    let forger = h.actor("shop", SigningKey::from_bytes(&[99; 32]));
    refusals.expect(
        "forged key",
        &forger.send("s1", &action, "sec-2").await,
        &[401],
        "invalid-request",
    );
    // Signature over requester carol, body says mallory; or a longer hold.
    let mut tampered = body.clone();
    tampered["requester"] = json!("mallory");
    refusals.expect(
        "other requester",
        &shop.post_raw(path, &headers, tampered.to_string()).await,
        &[401],
        "invalid-request",
    );
    let mut tampered = body.clone();
    tampered["duration_ms"] = json!(2_000_000);
    refusals.expect(
        "other duration",
        &shop.post_raw(path, &headers, tampered.to_string()).await,
        &[401],
        "invalid-request",
    );
    // Signed for pool s1, sent to s2.
    refusals.expect(
        "other pool",
        &shop
            .post_raw("/v1/pools/s2/reservations", &headers, body.to_string())
            .await,
        &[401],
        "invalid-request",
    );
    // A valid signature with a new Idempotency-Key: the token is signed, so it is refused.
    let new_key = with_header(
        headers.clone(),
        support::IDEMPOTENCY_KEY_NAME,
        "sec-1-again".into(),
    );
    refusals.expect(
        "new idempotency key",
        &shop.post_raw(path, &new_key, body.to_string()).await,
        &[401],
        "invalid-request",
    );
    // signed_at header moved by one millisecond.
    let moved = with_header(
        headers.clone(),
        SIGNED_AT_NAME,
        (signed_at.0 + 1).to_string(),
    );
    refusals.expect(
        "other signed_at",
        &shop.post_raw(path, &moved, body.to_string()).await,
        &[401],
        "invalid-request",
    );
    // shop's signature presented as shop2 (a registered actor).
    let as_shop2 = with_header(headers.clone(), support::ACTOR_NAME, "shop2".into());
    refusals.expect(
        "other actor",
        &shop2.post_raw(path, &as_shop2, body.to_string()).await,
        &[401],
        "invalid-request",
    );
    // A confirm signature used to cancel, or to confirm another reservation.
    let confirm_headers = shop.headers("s1", &confirm(&rsv), "sec-3", now());
    refusals.expect(
        "confirm signature on cancel",
        &shop
            .post_raw(
                &format!("/v1/reservations/{rsv}/cancel"),
                &confirm_headers,
                "{}",
            )
            .await,
        &[401],
        "invalid-request",
    );
    refusals.expect(
        "confirm signature on another reservation",
        &shop
            .post_raw(
                &format!("/v1/reservations/{rsv2}/confirm"),
                &confirm_headers,
                "{}",
            )
            .await,
        &[401],
        "invalid-request",
    );
    // Malformed signatures.
    let not_hex = with_header(headers.clone(), SIGNATURE_NAME, "zz".repeat(64));
    refusals.expect(
        "signature not hex",
        &shop.post_raw(path, &not_hex, body.to_string()).await,
        &[400],
        "invalid-request",
    );
    let short = with_header(headers.clone(), SIGNATURE_NAME, "ab".repeat(63));
    refusals.expect(
        "signature too short",
        &shop.post_raw(path, &short, body.to_string()).await,
        &[401],
        "invalid-request",
    );
    let zero = with_header(headers.clone(), SIGNATURE_NAME, "00".repeat(64));
    refusals.expect(
        "all-zero signature",
        &shop.post_raw(path, &zero, body.to_string()).await,
        &[401],
        "invalid-request",
    );
    refusals.finish(&h, &["s1", "s2"], &ids, &before).await;

    // Control: the untampered request is accepted once; sent again verbatim (a captured request
    // replayed inside the skew) it only replays the recorded outcome.
    let accepted = shop.post_raw(path, &headers, body.to_string()).await;
    accepted.expect_ok(201);
    let after_one = h.observe(&["s1", "s2"], &ids).await;
    assert_eq!(after_one.events, before.events + 1);
    let replayed = shop.post_raw(path, &headers, body.to_string()).await;
    replayed.expect_ok(201);
    assert!(replayed.replayed);
    assert_eq!(replayed.body, accepted.body);
    assert_eq!(h.observe(&["s1", "s2"], &ids).await, after_one);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_signed_at_is_refused() {
    let (h, shop, rsv) = setup().await;
    let before = h.observe(&["s1"], &[&rsv]).await;
    let mut refusals = Refusals::default();
    let action = reserve("carol", 600_000);
    let minutes = |m: u64| m * 60_000;
    for (name, at) in [
        ("10 minutes stale", Timestamp(now().0 - minutes(10))),
        ("3 minutes stale", Timestamp(now().0 - minutes(3))),
        ("10 minutes ahead", Timestamp(now().0 + minutes(10))),
        ("epoch", Timestamp(0)),
        ("u64::MAX", Timestamp(u64::MAX)),
    ] {
        refusals.expect(
            name,
            &shop.send_at("s1", &action, name, at).await,
            &[401],
            "invalid-request",
        );
    }
    let headers = with_header(
        shop.headers("s1", &action, "sec-nan", now()),
        SIGNED_AT_NAME,
        "yesterday".into(),
    );
    let (path, body) = request_parts("s1", &action);
    refusals.expect(
        "signed_at not a number",
        &shop.post_raw(&path, &headers, body.to_string()).await,
        &[400],
        "invalid-request",
    );
    // A recorded token is not replayed to a stale signature either.
    refusals.expect(
        "recorded token, stale signature",
        &shop
            .send_at(
                "s1",
                &reserve("alice", 600_000),
                "s1-alice",
                Timestamp(now().0 - minutes(10)),
            )
            .await,
        &[401],
        "invalid-request",
    );
    refusals.finish(&h, &["s1"], &[&rsv], &before).await;

    // Control: a signature one minute old is within the skew.
    shop.send_at("s1", &action, "sec-fresh", Timestamp(now().0 - minutes(1)))
        .await
        .expect_ok(201);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_and_revoked_actors_are_refused() {
    let (h, shop, rsv) = setup().await;
    let gone = h.register("gone", Role::Client, 63).await;
    let revoked = h
        .admin
        .revoke_actor(&ActorId::new("gone"), "revoke-gone")
        .await
        .expect("revoke");
    assert_eq!(revoked.status, 200);
    let before = h.observe(&["s1"], &[&rsv]).await;
    let mut refusals = Refusals::default();
    let nobody = h.actor("nobody", SigningKey::from_bytes(&[64; 32]));
    let action = reserve("carol", 600_000);
    refusals.expect(
        "unregistered",
        &nobody.send("s1", &action, "sec-u").await,
        &[401],
        "invalid-request",
    );
    refusals.expect(
        "revoked",
        &gone.send("s1", &action, "sec-r").await,
        &[401],
        "invalid-request",
    );
    refusals.expect(
        "revoked cancels another's hold",
        &gone.send("s1", &cancel(&rsv), "sec-rc").await,
        &[401],
        "invalid-request",
    );
    // Someone using the revoked actor's name with the admin's key.
    let impostor = h.actor("gone", h.admin_raw.key.clone());
    refusals.expect(
        "revoked name, other key",
        &impostor.send("s1", &action, "sec-ri").await,
        &[401],
        "invalid-request",
    );
    // An unregistered actor trying to register itself as admin; a revoked one reinstating itself.
    let own_key = nobody.key.verifying_key().to_bytes();
    refusals.expect(
        "unregistered self-registration",
        &nobody
            .actor_change("nobody", Some((Role::Admin, own_key)), "self-register")
            .await,
        &[401],
        "invalid-request",
    );
    let own_key = gone.key.verifying_key().to_bytes();
    refusals.expect(
        "revoked self-reinstatement",
        &gone
            .actor_change("gone", Some((Role::Client, own_key)), "reinstate")
            .await,
        &[401],
        "invalid-request",
    );
    refusals.finish(&h, &["s1"], &[&rsv], &before).await;
    // The revoked actor's hold is still there and still its own.
    let view = h.reservation(&rsv).await;
    assert_eq!(view.body["state"], "held");
    drop(shop);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_admin_and_sweeper_actions() {
    let (h, shop, rsv) = setup().await;
    let auditor = h.register("auditor", Role::Auditor, 65).await;
    let (file, sweeper_key) =
        KeyFile::read(&key_path(&Harness::keys_dir(h.dir.path()), FIRST_SWEEPER))
            .expect("sweeper.key");
    assert_eq!(file.role, Role::Sweeper);
    let sweeper = h.actor(&file.actor, sweeper_key);
    let before = h.observe(&["s1", "new-pool"], &[&rsv]).await;
    let mut refusals = Refusals::default();

    let admin_actions: [(&str, Action); 3] = [
        ("declare_pool", declare(10)),
        ("adjust_capacity", Action::AdjustCapacity { capacity: 1 }),
        ("close_pool", Action::ClosePool),
    ];
    for (who, actor) in [
        ("client", &shop),
        ("sweeper", &sweeper),
        ("auditor", &auditor),
    ] {
        for (name, action) in &admin_actions {
            let pool = if *name == "declare_pool" {
                "new-pool"
            } else {
                "s1"
            };
            refusals.expect(
                &format!("{who} {name}"),
                &actor.send(pool, action, &format!("{who}-{name}")).await,
                &[403],
                "forbidden",
            );
        }
    }
    refusals.expect(
        "client expire",
        &shop.send("s1", &expire(&rsv), "client-expire").await,
        &[403],
        "forbidden",
    );
    refusals.expect(
        "auditor expire",
        &auditor.send("s1", &expire(&rsv), "auditor-expire").await,
        &[403],
        "forbidden",
    );
    for (name, action) in [
        ("reserve", reserve("sweeper-friend", 600_000)),
        ("confirm", confirm(&rsv)),
        ("cancel", cancel(&rsv)),
    ] {
        refusals.expect(
            &format!("sweeper {name}"),
            &sweeper
                .send("s1", &action, &format!("sweeper-{name}"))
                .await,
            &[403],
            "forbidden",
        );
        refusals.expect(
            &format!("auditor {name}"),
            &auditor
                .send("s1", &action, &format!("auditor-{name}"))
                .await,
            &[403],
            "forbidden",
        );
    }
    // Actor management is the admin's alone.
    let new_key = SigningKey::from_bytes(&[66; 32]).verifying_key().to_bytes();
    for (who, actor) in [
        ("client", &shop),
        ("sweeper", &sweeper),
        ("auditor", &auditor),
    ] {
        refusals.expect(
            &format!("{who} registers an admin"),
            &actor
                .actor_change(
                    "shop-admin",
                    Some((Role::Admin, new_key)),
                    &format!("{who}-promote"),
                )
                .await,
            &[403],
            "forbidden",
        );
        refusals.expect(
            &format!("{who} revokes the admin"),
            &actor
                .actor_change(h.admin.actor().as_str(), None, &format!("{who}-depose"))
                .await,
            &[403],
            "forbidden",
        );
    }
    refusals
        .finish(&h, &["s1", "new-pool"], &[&rsv], &before)
        .await;
    // The admin still can: the refusals above were about roles, not a broken key.
    h.admin_raw
        .send("new-pool", &declare(1), "admin-declare")
        .await
        .expect_ok(201);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let (h, shop, rsv) = setup().await;
    let before = h.observe(&["s1"], &[&rsv]).await;
    let mut refusals = Refusals::default();
    for (name, size) in [("65 KiB", 65 * 1024), ("1 MiB", 1024 * 1024)] {
        let action = Action::Reserve {
            resource: "r".repeat(size),
            requester: "carol".into(),
            duration_ms: 600_000,
            count: 1,
        };
        let answer = shop.send("s1", &action, &format!("big-{size}")).await;
        refusals.expect(name, &answer, &[400, 413], "invalid-request");
    }
    refusals.finish(&h, &["s1"], &[&rsv], &before).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_numbers_and_ids_are_refused() {
    let (h, shop, rsv) = setup().await;
    let before = h.observe(&["s1", "s9"], &[&rsv]).await;
    let mut refusals = Refusals::default();
    let admin = &h.admin_raw;
    let year_ms = 365 * 86_400_000;

    // Correctly signed, out of range.
    let signed: Vec<(&str, &Actor, &str, Action)> = vec![
        ("capacity 2^64-1", admin, "s9", declare(u64::MAX)),
        ("capacity 10^9+1", admin, "s9", declare(1_000_000_001)),
        (
            "adjust to 2^64-1",
            admin,
            "s1",
            Action::AdjustCapacity { capacity: u64::MAX },
        ),
        (
            "closes_at 2^64-1",
            admin,
            "s9",
            Action::DeclarePool {
                capacity: 1,
                closes_at: Some(Timestamp(u64::MAX)),
                units: vec![],
                idempotency_window_ms: 300_000,
            },
        ),
        (
            "idempotency window 0",
            admin,
            "s9",
            Action::DeclarePool {
                capacity: 1,
                closes_at: None,
                units: vec![],
                idempotency_window_ms: 0,
            },
        ),
        ("duration 0", &shop, "s1", reserve("carol", 0)),
        ("duration 999 ms", &shop, "s1", reserve("carol", 999)),
        (
            "duration 100 years",
            &shop,
            "s1",
            reserve("carol", 100 * year_ms),
        ),
        ("duration 2^64-1", &shop, "s1", reserve("carol", u64::MAX)),
        (
            "count 0",
            &shop,
            "s1",
            Action::Reserve {
                resource: "r".into(),
                requester: "carol".into(),
                duration_ms: 600_000,
                count: 0,
            },
        ),
        (
            "count 2^32-1",
            &shop,
            "s1",
            Action::Reserve {
                resource: "r".into(),
                requester: "carol".into(),
                duration_ms: 600_000,
                count: u32::MAX,
            },
        ),
        (
            "confirm reservation 0",
            &shop,
            "s1",
            Action::ConfirmReservation { reservation: 0 },
        ),
    ];
    for (name, actor, pool, action) in &signed {
        refusals.expect(
            name,
            &actor.send(pool, action, &format!("absurd-{name}")).await,
            &[400],
            "invalid-request",
        );
    }

    // Numbers JSON cannot map onto the API's types at all.
    let raw: [(&str, &Actor, &str, Value); 6] = [
        (
            "capacity -1",
            admin,
            "/v1/pools/s9",
            json!({"capacity": -1}),
        ),
        (
            "capacity 2^64",
            admin,
            "/v1/pools/s9",
            json!({"capacity": 18446744073709551616.0_f64}),
        ),
        (
            "capacity 1.5",
            admin,
            "/v1/pools/s9",
            json!({"capacity": 1.5}),
        ),
        (
            "capacity as text",
            admin,
            "/v1/pools/s9",
            json!({"capacity": "2"}),
        ),
        (
            "count 2^32",
            &shop,
            "/v1/pools/s1/reservations",
            json!({"resource": "r", "requester": "c", "duration_ms": 600_000, "count": 4_294_967_296_u64}),
        ),
        (
            "duration -1",
            &shop,
            "/v1/pools/s1/reservations",
            json!({"resource": "r", "requester": "c", "duration_ms": -1}),
        ),
    ];
    for (name, actor, path, body) in &raw {
        // Signed over something plausible; the body is refused before the signature matters.
        let headers = actor.headers("s1", &declare(1), &format!("raw-{name}"), now());
        refusals.expect(
            name,
            &actor.post_raw(path, &headers, body.to_string()).await,
            &[400],
            "invalid-request",
        );
    }

    // Ids and tokens out of shape.
    let long_pool = "p".repeat(65);
    let action = reserve("carol", 600_000);
    refusals.expect(
        "pool id of 65 bytes",
        &shop.send(&long_pool, &action, "long-pool").await,
        &[400],
        "invalid-request",
    );
    refusals.expect(
        "empty token",
        &shop.send("s1", &action, "").await,
        &[400],
        "invalid-request",
    );
    refusals.expect(
        "token of 256 bytes",
        &shop.send("s1", &action, &"t".repeat(256)).await,
        &[400],
        "invalid-request",
    );
    let headers = shop.headers("s1", &confirm(&rsv), "bad-id", now());
    for id in [
        "s1:abc",
        "s1:18446744073709551616",
        "s1",
        "s1:-1",
        "s1:01",
        "s1:0",
    ] {
        refusals.expect(
            &format!("reservation id {id}"),
            &shop
                .post_raw(&format!("/v1/reservations/{id}/confirm"), &headers, "{}")
                .await,
            &[400],
            "invalid-request",
        );
    }
    refusals.finish(&h, &["s1", "s9"], &[&rsv], &before).await;
    h.shutdown().await;
}

// Actor-registry changes (`POST /v1/actors/{actor}`, `/revoke`) carry an Idempotency-Key and a
// signature like pool commands; the admin's token is remembered for a day (folded from the
// `actors` stream), so a retry replays, another change under it collides, and a captured request
// cannot be replayed into a second change.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_registration_retry_replays() {
    let h = Harness::start().await;
    let key = SigningKey::from_bytes(&[71; 32]).verifying_key().to_bytes();
    let (path, headers, body) =
        h.admin_raw
            .actor_change_request("retried", Some((Role::Client, key)), "reg-retried");
    let first = h.admin_raw.post_raw(&path, &headers, body.clone()).await;
    first.expect_ok(200);
    let events = h.event_count().await;
    let again = h.admin_raw.post_raw(&path, &headers, body).await;
    again.expect_ok(200);
    assert!(again.replayed, "retry not marked replayed: {again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(h.event_count().await, events, "a retry appended an event");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_registration_token_reuse_with_other_key_is_a_collision() {
    let h = Harness::start().await;
    let key_a = SigningKey::from_bytes(&[72; 32]).verifying_key().to_bytes();
    let key_b = SigningKey::from_bytes(&[73; 32]).verifying_key().to_bytes();
    h.admin_raw
        .actor_change("twice", Some((Role::Client, key_a)), "reg-twice")
        .await
        .expect_ok(200);
    let events = h.event_count().await;
    h.admin_raw
        .actor_change("twice", Some((Role::Client, key_b)), "reg-twice")
        .await
        .expect_problem(422, "token-collision");
    assert_eq!(h.event_count().await, events);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_registration_cannot_reinstate_a_revoked_actor() {
    let h = Harness::start().await;
    h.admin_raw
        .send("cap", &declare(3), "declare-cap")
        .await
        .expect_ok(201);
    let key = SigningKey::from_bytes(&[74; 32]);
    let (path, headers, body) = h.admin_raw.actor_change_request(
        "fired",
        Some((Role::Client, key.verifying_key().to_bytes())),
        "reg-fired",
    );
    h.admin_raw
        .post_raw(&path, &headers, body.clone())
        .await
        .expect_ok(200);
    h.admin_raw
        .actor_change("fired", None, "revoke-fired")
        .await
        .expect_ok(200);
    let fired = h.actor("fired", key);
    fired
        .send("cap", &reserve("x", 600_000), "fired-1")
        .await
        .expect_problem(401, "invalid-request");

    // An eavesdropper re-sends the captured registration, byte for byte, a moment later.
    let replay = h.admin_raw.post_raw(&path, &headers, body).await;
    assert!(
        replay.status != 200 || replay.replayed,
        "captured registration applied again: {replay:?}"
    );
    fired
        .send("cap", &reserve("x", 600_000), "fired-2")
        .await
        .expect_problem(401, "invalid-request");
    assert_eq!(h.allocated("cap").await, 0);
    h.shutdown().await;
}

//! The signing test vectors published in `docs/signing.md` are what the code produces.

use allot_client::{Read, sign_command, sign_read};
use allot_domain::signing::{command_target, params_digest};
use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, Timestamp, signing};
use ed25519_dalek::{Signature, SigningKey};

struct Vector {
    name: &'static str,
    pool: &'static str,
    action: Action,
    token: &'static str,
    actor: &'static str,
    signed_at: u64,
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            name: "reserve",
            pool: "pool_vip",
            action: Action::Reserve {
                resource: "vip-tier".into(),
                requester: "buyer_a".into(),
                duration_ms: 600_000,
                count: 1,
            },
            token: "tok_a1",
            actor: "checkout_svc",
            signed_at: 1_767_225_600_000,
        },
        Vector {
            name: "confirm_reservation",
            pool: "pool_vip",
            action: Action::ConfirmReservation { reservation: 1 },
            token: "tok_a2",
            actor: "checkout_svc",
            signed_at: 1_767_225_720_000,
        },
        Vector {
            name: "declare_pool",
            pool: "CS101-01",
            action: Action::DeclarePool {
                capacity: 30,
                closes_at: Some(Timestamp(1_767_229_200_000)),
                units: vec![],
                idempotency_window_ms: 3_600_000,
            },
            token: "declare-cs101",
            actor: "admin",
            signed_at: 1_767_225_600_000,
        },
    ]
}

/// The published vectors, rendered as they appear in the doc.
fn rendered() -> String {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let mut out = format!(
        "secret key (hex): {}\npublic key (hex): {}\n",
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes())
    );
    for vector in vectors() {
        let pool = PoolId::new(vector.pool);
        let token = IdempotencyToken::new(vector.token);
        let actor = ActorId::new(vector.actor);
        let at = Timestamp(vector.signed_at);
        let bytes = signing::signing_bytes(
            &vector.action,
            &command_target(&pool, &vector.action),
            &token,
            &actor,
            at,
        );
        let attestation = sign_command(&key, &actor, &pool, &vector.action, &token, at);
        let signature = Signature::from_slice(&attestation.signature).expect("64 bytes");
        key.verifying_key()
            .verify_strict(&bytes, &signature)
            .expect("verifies");
        out.push_str(&format!(
            "\n### {}\ninput: pool {}, {:?}, token {}, actor {}, signed_at {}\nsigned bytes (hex): {}\nparams digest (hex): {}\nsignature (hex): {}\n",
            vector.name,
            vector.pool,
            vector.action,
            vector.token,
            vector.actor,
            vector.signed_at,
            hex::encode(&bytes),
            params_digest(&vector.action),
            hex::encode(&attestation.signature),
        ));
    }
    out
}

/// The published read vectors: (read, target, actor, signed_at).
fn read_vectors() -> Vec<(Read, &'static str, &'static str, u64)> {
    vec![
        (Read::Pool, "CS101-01", "registrar", 1_767_225_600_000),
        (
            Read::Reservation,
            "CS101-01:17",
            "registrar",
            1_767_225_660_000,
        ),
        (Read::Head, "", "registrar", 1_767_225_720_000),
    ]
}

/// The read vectors, rendered as they appear in the doc (same key as the command vectors).
fn rendered_reads() -> String {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let mut out = String::new();
    for (read, target, actor, signed_at) in read_vectors() {
        let actor = ActorId::new(actor);
        let at = Timestamp(signed_at);
        let bytes = signing::read_signing_bytes(read, target, &actor, at);
        let attestation = sign_read(&key, &actor, read, target, at);
        let signature = Signature::from_slice(&attestation.signature).expect("64 bytes");
        key.verifying_key()
            .verify_strict(&bytes, &signature)
            .expect("verifies");
        out.push_str(&format!(
            "\n### {}\ninput: target {target}, actor {actor}, signed_at {signed_at}\nsigned bytes (hex): {}\nsignature (hex): {}\n",
            read.as_str(),
            hex::encode(&bytes),
            hex::encode(&attestation.signature),
        ));
    }
    out
}

#[test]
fn the_published_read_vectors_match_the_code() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/signing.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/signing.md");
    let vectors = rendered_reads();
    for line in vectors
        .lines()
        .filter(|line| line.contains("(hex):") || line.starts_with("input:"))
    {
        assert!(
            doc.contains(line),
            "docs/signing.md lacks `{line}`; the read vectors are:\n{vectors}"
        );
    }
}

#[test]
fn the_published_vectors_match_the_code() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/signing.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/signing.md");
    let vectors = rendered();
    for line in vectors.lines().filter(|line| line.contains("(hex):")) {
        assert!(
            doc.contains(line),
            "docs/signing.md lacks `{line}`; the vectors are:\n{vectors}"
        );
    }
}

#[test]
fn print_vectors() {
    // `cargo test -p allot-client --test signing_vectors print_vectors -- --nocapture` prints the
    // blocks to paste into docs/signing.md when the format changes (it never should silently).
    println!("{}", rendered());
    println!("{}", rendered_reads());
}

//! The client's CPU per command on a batch's path, without a server: encoding a batch's body,
//! signing it (member bytes, leaves, Merkle root, one signature) and reading an answer of the
//! server's shape (a receipt per member).
//!
//! `cargo run --release -p allot-client --example batch_cost [MEMBERS]`

use std::time::Instant;

use allot_client::wire::{BatchCommand, sign_batch, write_batch_body};
use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, Timestamp};
use ed25519_dalek::SigningKey;

fn main() {
    let members: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let commands: Vec<BatchCommand> = (0..members)
        .map(|n| BatchCommand {
            pool: PoolId::new(format!("h{}", n % 100)),
            action: if n % 2 == 0 {
                Action::Reserve {
                    resource: "seat".into(),
                    requester: format!("r{n}"),
                    duration_ms: 600_000,
                    count: 1,
                }
            } else {
                Action::ConfirmReservation {
                    reservation: n as u64,
                }
            },
            token: IdempotencyToken::new(format!("0123456789abcdef-{n}")),
        })
        .collect();
    let key = SigningKey::from_bytes(&[3; 32]);
    let actor = ActorId::new("load");
    let token = IdempotencyToken::new("0123456789abcdef-b1");
    let receipt = format!(
        r#"{{"count":400,"event_digest":"{d}","event_id":"{i}","event_kind":"Reserved","event_payload":"{p}","format":1,"index":3,"position":3,"proof":["{d}","{d}","{d}","{d}","{d}","{d}","{d}","{d}","{d}"],"seal":{{"chain":"{d}","event_count":400,"first_position":3,"prev_chain":"{d}","root":"{d}"}},"server":"server-06902cc40a2e3cf0","server_key":"{d}","signature":"{d}{d}","stream":"pool-hall","version":7}}"#,
        d = "ab".repeat(32),
        i = "cd".repeat(16),
        p = "ef".repeat(400)
    );
    let result = format!(
        r#"{{"status":201,"expires_at":1796680172805,"outcome":"reserved","pool_id":"h7","receipt":{receipt},"reservation_id":"h7:12345"}}"#
    );
    let answer = format!(
        r#"{{"results":[{}]}}"#,
        vec![result.as_str(); members].join(",")
    );
    let rounds = 200;
    let per_command = |started: Instant| started.elapsed() / (rounds * members) as u32;

    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let mut body = Vec::new();
        write_batch_body(&commands, &mut body).expect("encodes");
        bytes += body.len();
    }
    println!(
        "body: {:?} per command ({} bytes per command)",
        per_command(started),
        bytes / rounds / members
    );

    let started = Instant::now();
    for _ in 0..rounds {
        sign_batch(
            &key,
            &actor,
            &token,
            &commands,
            Timestamp(1_700_000_000_000),
        )
        .expect("signs");
    }
    println!("sign: {:?} per command", per_command(started));

    let started = Instant::now();
    for _ in 0..rounds {
        let value: serde_json::Value = serde_json::from_str(&answer).expect("parses");
        std::hint::black_box(value);
    }
    println!(
        "answer as a JSON value: {:?} per command ({} bytes per member)",
        per_command(started),
        answer.len() / members
    );

    #[derive(serde::Deserialize)]
    struct Member<'a, R> {
        #[serde(borrow)]
        outcome: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        reservation_id: Option<std::borrow::Cow<'a, str>>,
        receipt: Option<R>,
    }
    impl<R> Member<'_, R> {
        fn read(&self) -> bool {
            self.outcome.is_some() && self.reservation_id.is_some() && self.receipt.is_some()
        }
    }
    #[derive(serde::Deserialize)]
    struct Answer<'a, R> {
        #[serde(borrow)]
        results: Vec<Member<'a, R>>,
    }
    let started = Instant::now();
    for _ in 0..rounds {
        let read: Answer<'_, Box<serde_json::value::RawValue>> =
            serde_json::from_str(&answer).expect("parses");
        std::hint::black_box(read.results.iter().filter(|m| m.read()).count());
    }
    println!(
        "answer read, receipts kept raw: {:?} per command",
        per_command(started)
    );
    let started = Instant::now();
    for _ in 0..rounds {
        let read: Answer<'_, serde::de::IgnoredAny> =
            serde_json::from_str(&answer).expect("parses");
        std::hint::black_box(read.results.iter().filter(|m| m.read()).count());
    }
    println!(
        "answer read, receipts skipped: {:?} per command",
        per_command(started)
    );
}

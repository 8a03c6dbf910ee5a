//! The batch test vectors published in `docs/signing.md` ("Batch test vectors") are what the
//! code produces: member bytes, leaves, the root, every member's proof, the batch bytes, the
//! signature and the request body.

use allot_client::wire::{BatchCommand, sign_batch, write_batch_body};
use allot_domain::batch::{
    BatchMembership, Member, SignedBatch, batch_signing_bytes, member_bytes, member_leaf,
    root_of_member,
};
use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, Timestamp};
use ed25519_dalek::{Signature, SigningKey, Verifier};

const ACTOR: &str = "checkout_svc";
const SIGNED_AT: Timestamp = Timestamp(1_767_225_600_000);
const BATCH_KEY: &str = "batch-0001";

fn commands() -> Vec<BatchCommand> {
    let reserve = |requester: &str, token: &str| BatchCommand {
        pool: PoolId::new("pool_vip"),
        action: Action::Reserve {
            resource: "vip-tier".into(),
            requester: requester.into(),
            duration_ms: 600_000,
            count: 1,
        },
        token: IdempotencyToken::new(token),
    };
    vec![
        reserve("buyer_a", "tok_a1"),
        reserve("buyer_b", "tok_b1"),
        BatchCommand {
            pool: PoolId::new("CS101-01"),
            action: Action::ConfirmReservation { reservation: 17 },
            token: IdempotencyToken::new("tok_c2"),
        },
    ]
}

fn member(command: &BatchCommand) -> Member<'_> {
    Member {
        pool: &command.pool,
        action: &command.action,
        token: &command.token,
    }
}

/// The published block, rendered as it appears in the doc.
fn rendered() -> String {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let actor = ActorId::new(ACTOR);
    let token = IdempotencyToken::new(BATCH_KEY);
    let commands = commands();
    let batch = SignedBatch::new(commands.iter().map(member), &actor, SIGNED_AT).expect("members");
    let mut out = format!(
        "secret key (hex): {}\nactor: {ACTOR}\nsigned_at: {}\nIdempotency-Key: {BATCH_KEY}\n",
        hex::encode(key.to_bytes()),
        SIGNED_AT.0
    );
    for (index, command) in commands.iter().enumerate() {
        let bytes = member_bytes(member(command), &actor, SIGNED_AT);
        let membership = batch.membership(&token, index).expect("in range");
        let proof: Vec<String> = membership.proof.iter().map(hex::encode).collect();
        out.push_str(&format!(
            "\n### member {index}\nmember bytes (hex): {}\nleaf (hex): {}\nproof (hex, bottom first): {}\n",
            hex::encode(&bytes),
            hex::encode(member_leaf(&bytes)),
            proof.join(" ")
        ));
    }
    let bytes = batch_signing_bytes(&batch.root(), batch.count(), &token, &actor, SIGNED_AT);
    let attestation = sign_batch(&key, &actor, &token, &commands, SIGNED_AT).expect("members");
    let mut body = Vec::new();
    write_batch_body(&commands, &mut body).expect("body");
    out.push_str(&format!(
        "\n### batch\nroot (hex): {}\nbatch bytes (hex): {}\nsignature (hex): {}\nbody: {}\n",
        hex::encode(batch.root()),
        hex::encode(&bytes),
        hex::encode(&attestation.signature),
        String::from_utf8(body).expect("JSON is UTF-8")
    ));
    out
}

#[test]
fn print_vectors() {
    println!("{}", rendered());
}

#[test]
fn the_published_batch_vectors_match_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/signing.md");
    let doc = std::fs::read_to_string(path).expect("docs/signing.md");
    let section = doc
        .split_once("## Batch test vectors")
        .expect("a Batch test vectors section")
        .1;
    let block = section
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a text block")
        .0;
    assert_eq!(
        block.trim_end(),
        rendered().trim_end(),
        "docs/signing.md's batch vectors; regenerate with \
         `cargo test -p allot-client --test batch_vectors print_vectors -- --nocapture`"
    );
}

/// The vectors verify the way an auditor checks one recorded member: its proof leads to the
/// signed root, and the signature holds over the batch bytes of that root.
#[test]
fn each_published_member_proves_the_signed_root() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let actor = ActorId::new(ACTOR);
    let token = IdempotencyToken::new(BATCH_KEY);
    let commands = commands();
    let batch = SignedBatch::new(commands.iter().map(member), &actor, SIGNED_AT).expect("members");
    let attestation = sign_batch(&key, &actor, &token, &commands, SIGNED_AT).expect("members");
    let signature = Signature::from_slice(&attestation.signature).expect("64 bytes");
    for (index, command) in commands.iter().enumerate() {
        let bytes = member_bytes(member(command), &actor, SIGNED_AT);
        let membership: BatchMembership = batch.membership(&token, index).expect("in range");
        let root = root_of_member(&bytes, &membership).expect("the proof fits");
        let signed = batch_signing_bytes(&root, membership.count, &token, &actor, SIGNED_AT);
        assert!(key.verifying_key().verify(&signed, &signature).is_ok());
    }
}

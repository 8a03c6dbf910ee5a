//! What today's code wrote, frozen under `tests/fixtures/` (see its README): every later change
//! to the log format, the codec, the canonical signing bytes or the HTTP contract must still
//! read, verify and reproduce it.
//!
//! - `data/v1/`: a data directory written by `allot demo`; it opens, verifies, audits clean
//!   (signatures included) with the exact counts recorded in the README, every record decodes,
//!   and `allot audit` on a copy exits 0.
//! - `data/v2/`: a data directory of log format 2 written by `allot demo`; it opens read-only
//!   with every leaf, root and chain value checked, its chain head is the recorded one, it
//!   audits clean (signatures included) with the recorded counts, and `allot audit
//!   --expect-head` with that head exits 0 on a copy.
//! - `openapi.json`: the OpenAPI document served at `/openapi.json`, byte for byte.
//! - `docs/signing.md`: its test vectors, parsed from the page (not from a table in code), are
//!   exactly the bytes, digest and signature the code produces.
//!
//! The golden encoded events (`events/v1/`) are checked by `domain/tests/golden_events.rs`.
//!
//! ```text
//! cargo test -p allot-tests --test fixtures
//! ```

// Every path into the infra crates this file uses, in one place so a module move changes only
// these.
use allot_client::sign_command;
use allot_domain::signing::{command_target, params_digest};
use allot_domain::streams::event_id;
use allot_server::http::openapi::document as openapi_document;
use allot_server::identity::verify_signature;
use allot_server::store::EventStore;
use allot_server::store::embedded::EmbeddedStore;
use allot_tools::inspect::{AuditFindings, AuditRequest, audit, progress_bar};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use allot_domain::codec::{decode_actor_event, decode_event};
use allot_domain::{Action, ActorId, IdempotencyToken, PoolId, Timestamp, signing};
use ed25519_dalek::{Signer, SigningKey};

/// What `tests/fixtures/data/v1/README.md` records about the directory.
const DATA_V1_EVENTS: u64 = 151;
const DATA_V1_POOL_EVENTS: u64 = 148;
const DATA_V1_ACTOR_EVENTS: u64 = 3;
const DATA_V1_POOLS: u64 = 1;
const DATA_V1_RESERVATIONS: u64 = 12;
/// The files of the data directory (no `LOCK`, no `keys/`: the store creates the lock, and
/// private keys are never committed).
const DATA_V1_FILES: [&str; 1] = ["events.log"];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A copy of `data/v1` in a fresh temporary directory (opening takes a lock and may repair a
/// torn tail: never on the committed files).
fn data_v1_copy() -> tempfile::TempDir {
    let source = fixtures_dir().join("data/v1");
    let copy = tempfile::tempdir().expect("tempdir");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&source)
        .expect("tests/fixtures/data/v1")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "README.md")
        .collect();
    assert_eq!(
        on_disk,
        DATA_V1_FILES.iter().map(|name| name.to_string()).collect(),
        "data/v1 holds exactly the store's files"
    );
    for name in DATA_V1_FILES {
        std::fs::copy(source.join(name), copy.path().join(name)).expect("copy fixture");
    }
    copy
}

#[test]
fn the_v1_log_starts_with_format_version_1() {
    let log = std::fs::read(fixtures_dir().join("data/v1/events.log")).expect("events.log");
    assert_eq!(&log[..8], b"ALLOTLOG");
    assert_eq!(&log[8..12], &1u32.to_le_bytes(), "format_version");
    assert!(log.len() < 300 * 1024, "the fixture stays small");
}

/// The format-1 log is read as it is (read-only: nothing changes), and a serving open migrates
/// it to format 2 with the very same events, keeping the original beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_log_is_read_as_is_and_migrated_to_format_2_with_the_same_events() {
    let dir = data_v1_copy();
    let original = std::fs::read(dir.path().join("events.log")).expect("log");
    let read_only = EmbeddedStore::open_read_only(dir.path())
        .await
        .expect("read-only open of data/v1");
    assert_eq!(read_only.opened().format, 1);
    let before = read_only.read_all(None, usize::MAX).await.expect("read");
    assert_eq!(before.len() as u64, DATA_V1_EVENTS);
    drop(read_only);
    assert_eq!(
        std::fs::read(dir.path().join("events.log")).expect("log"),
        original,
        "a read-only open changed the log"
    );

    let store = EmbeddedStore::open(dir.path())
        .await
        .expect("migrating open");
    assert_eq!(
        store.read_all(None, usize::MAX).await.expect("read"),
        before
    );
    let head = store.chain_head().expect("format 2 is chained");
    assert_eq!(head.seal.head_position(), DATA_V1_EVENTS);
    drop(store);
    assert_eq!(
        std::fs::read(dir.path().join("events.log.v1")).expect("kept original"),
        original
    );
    let migrated = EmbeddedStore::open_read_only(dir.path())
        .await
        .expect("read-only open of the migrated log");
    assert_eq!(migrated.opened().format, 2);
    assert_eq!(
        migrated.read_all(None, usize::MAX).await.expect("read"),
        before
    );
}

/// The audit as `allot audit DIR` runs it: signatures on, no forensic views.
async fn audit_as_the_cli_does(store: &dyn EventStore) -> AuditFindings {
    let request = AuditRequest {
        verify_signatures: true,
        as_of: None,
        stranded: false,
        dispute: None,
        contention: None,
        html_title: None,
    };
    let bar = progress_bar(None, "auditing");
    audit(store, &request, &bar).await.expect("audit runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_data_directory_verifies_and_audits_clean_with_signatures() {
    let dir = data_v1_copy();
    let store = EmbeddedStore::open(dir.path()).await.expect("open data/v1");
    let verified = store.verify().await.expect("every checksum holds");
    assert_eq!(verified.events, DATA_V1_EVENTS);

    let findings = audit_as_the_cli_does(&store).await;
    let report = &findings.report;
    assert!(report.is_clean(), "data/v1 audits clean:\n{report}");
    assert_eq!(report.events, DATA_V1_EVENTS, "{report}");
    assert_eq!(report.pool_events, DATA_V1_POOL_EVENTS, "{report}");
    assert_eq!(report.actor_events, DATA_V1_ACTOR_EVENTS, "{report}");
    assert_eq!(report.pools, DATA_V1_POOLS, "{report}");
    assert_eq!(report.reservations, DATA_V1_RESERVATIONS, "{report}");
    assert_eq!(report.signatures_verified, DATA_V1_EVENTS, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_the_v1_data_directory_decodes() {
    let dir = data_v1_copy();
    let store = EmbeddedStore::open(dir.path()).await.expect("open data/v1");
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 64).await.expect("read_all");
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        records.extend(page);
    }
    assert_eq!(records.len() as u64, DATA_V1_EVENTS);
    let mut next_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (ordinal, record) in records.iter().enumerate() {
        let at = format!("{}@{}", record.stream, record.version);
        assert_eq!(
            record.position, ordinal as u64,
            "{at}: positions are contiguous"
        );
        let version = next_version.entry(record.stream.clone()).or_default();
        assert_eq!(record.version, *version, "{at}: versions are contiguous");
        *version += 1;
        assert!(ids.insert(record.id), "{at}: event ids are unique");
        if record.stream == "actors" {
            decode_actor_event(&record.payload)
                .unwrap_or_else(|error| panic!("{at}: actor event: {error}"));
            assert_eq!(record.kind, "Actor", "{at}");
        } else {
            let event = decode_event(&record.payload)
                .unwrap_or_else(|error| panic!("{at}: pool event: {error}"));
            assert_eq!(record.stream, format!("pool-{}", event.pool), "{at}");
            assert_eq!(record.kind, event.kind_name(), "{at}");
            assert_eq!(record.id, event_id(&event), "{at}: the id derived today");
        }
        kinds.insert(record.kind.clone());
    }
    assert_eq!(
        next_version.get("actors").copied(),
        Some(DATA_V1_ACTOR_EVENTS)
    );
    // The demo neither adjusts nor closes its pool (its cutoff is `closes_at`); the golden
    // events cover those kinds.
    for kind in [
        "Actor",
        "PoolDeclared",
        "Reserved",
        "Confirmed",
        "Released",
        "Expired",
        "Rejected",
    ] {
        assert!(kinds.contains(kind), "data/v1 records a {kind}: {kinds:?}");
    }
}

/// The `allot` binary: `$ALLOT_BIN`, else beside the test executable or in its parent (as
/// `tests/src/bin/soak/allot_process.rs` finds it).
fn allot_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ALLOT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("allot"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the allot binary is not built: `cargo build -p allot-infra --bin allot`, \
                 or set ALLOT_BIN"
            )
        })
}

#[test]
fn allot_audit_of_the_v1_data_directory_exits_0() {
    let dir = data_v1_copy();
    let out = std::process::Command::new(allot_binary())
        .arg("audit")
        .arg(dir.path())
        .arg("--json")
        .output()
        .expect("run allot audit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "allot audit exited {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: serde_json::Value = serde_json::from_str(&stdout).expect("--json output");
    assert_eq!(
        findings["report"]["events"].as_u64(),
        Some(DATA_V1_EVENTS),
        "{stdout}"
    );
}

/// What `tests/fixtures/data/v2/README.md` records about the directory.
const DATA_V2_EVENTS: u64 = 153;
const DATA_V2_POOL_EVENTS: u64 = 149;
const DATA_V2_ACTOR_EVENTS: u64 = 4;
const DATA_V2_RESERVATIONS: u64 = 12;
const DATA_V2_HEAD: &str = "153:1f8cbdcf7f303db82d4590bcfd60081fbb2815fe6db0ef5eb971ea127c8a088c";
const DATA_V2_FILES: [&str; 2] = ["events.log", "store.id"];

/// A copy of `data/v2` in a fresh temporary directory.
fn data_v2_copy() -> tempfile::TempDir {
    let source = fixtures_dir().join("data/v2");
    let copy = tempfile::tempdir().expect("tempdir");
    for name in DATA_V2_FILES {
        std::fs::copy(source.join(name), copy.path().join(name)).expect("copy fixture");
    }
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_data_directory_verifies_its_chain_and_audits_clean_with_signatures() {
    let dir = data_v2_copy();
    let store = EmbeddedStore::open_read_only(dir.path())
        .await
        .expect("read-only open of data/v2");
    let opened = store.opened();
    assert_eq!(opened.format, 2);
    assert_eq!(opened.events, DATA_V2_EVENTS);
    let head = opened.head.as_ref().expect("a chain head");
    assert_eq!(format!("{}:{}", head.position, head.chain), DATA_V2_HEAD);
    assert!(opened.torn_write.is_none() && opened.damaged_head_slots.is_empty());
    let findings = audit_as_the_cli_does(&store).await;
    let report = &findings.report;
    assert!(report.is_clean(), "data/v2 audits clean:\n{report}");
    assert_eq!(report.events, DATA_V2_EVENTS, "{report}");
    assert_eq!(report.pool_events, DATA_V2_POOL_EVENTS, "{report}");
    assert_eq!(report.actor_events, DATA_V2_ACTOR_EVENTS, "{report}");
    assert_eq!(report.reservations, DATA_V2_RESERVATIONS, "{report}");
    assert_eq!(report.signatures_verified, DATA_V2_EVENTS, "{report}");
}

#[test]
fn allot_audit_of_the_v2_data_directory_extends_its_recorded_head() {
    let dir = data_v2_copy();
    let out = std::process::Command::new(allot_binary())
        .arg("audit")
        .arg(dir.path())
        .args(["--expect-head", DATA_V2_HEAD])
        .output()
        .expect("run allot audit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "allot audit exited {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("head: {DATA_V2_HEAD}")),
        "{stdout}"
    );
}

fn openapi_text() -> String {
    let mut text = serde_json::to_string_pretty(&openapi_document()).expect("serialize");
    text.push('\n');
    text
}

#[test]
fn the_openapi_document_is_the_pinned_one() {
    let path = fixtures_dir().join("openapi.json");
    let pinned = std::fs::read_to_string(&path).expect("tests/fixtures/openapi.json");
    assert!(
        openapi_text() == pinned,
        "the OpenAPI document changed; if on purpose, rewrite {} with \
         `cargo test -p allot-tests --test fixtures -- --ignored regenerate_openapi_fixture`",
        path.display()
    );
}

/// Rewrites `tests/fixtures/openapi.json` from today's document.
#[test]
#[ignore = "rewrites tests/fixtures/openapi.json; run only on purpose"]
fn regenerate_openapi_fixture() {
    std::fs::write(fixtures_dir().join("openapi.json"), openapi_text()).expect("write");
}

/// One vector of `docs/signing.md`, as published.
#[derive(Debug, Default)]
struct PublishedVector {
    name: String,
    signed_bytes: Vec<u8>,
    params_digest: String,
    signature: Vec<u8>,
}

/// The key and vectors of the page's "Test vectors" block.
fn published_vectors() -> ([u8; 32], [u8; 32], Vec<PublishedVector>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/signing.md");
    let doc = std::fs::read_to_string(path).expect("docs/signing.md");
    let section = doc
        .split_once("## Test vectors")
        .expect("a Test vectors section")
        .1;
    let block = section
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a text block")
        .0;
    let hex_value = |line: &str, label: &str| {
        line.strip_prefix(label)
            .map(|value| hex::decode(value).unwrap_or_else(|e| panic!("{line}: {e}")))
    };
    let key = |bytes: Vec<u8>| -> [u8; 32] { bytes.try_into().expect("32-byte key") };
    let (mut secret, mut public) = (None, None);
    let mut vectors: Vec<PublishedVector> = Vec::new();
    for line in block.lines() {
        if let Some(bytes) = hex_value(line, "secret key (hex): ") {
            secret = Some(key(bytes));
        } else if let Some(bytes) = hex_value(line, "public key (hex): ") {
            public = Some(key(bytes));
        } else if let Some(name) = line.strip_prefix("### ") {
            vectors.push(PublishedVector {
                name: name.to_owned(),
                ..PublishedVector::default()
            });
        } else if let Some(vector) = vectors.last_mut() {
            if let Some(bytes) = hex_value(line, "signed bytes (hex): ") {
                vector.signed_bytes = bytes;
            } else if let Some(digest) = line.strip_prefix("params digest (hex): ") {
                vector.params_digest = digest.to_owned();
            } else if let Some(bytes) = hex_value(line, "signature (hex): ") {
                vector.signature = bytes;
            }
        }
    }
    (
        secret.expect("a secret key line"),
        public.expect("a public key line"),
        vectors,
    )
}

/// The `name:len:value\n` fields after the `allot-sig-v1\n` prefix, in order.
fn canonical_fields(bytes: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(bytes).expect("canonical bytes are UTF-8");
    let mut rest = text
        .strip_prefix(signing::SIGNING_PREFIX)
        .expect("the allot-sig-v1 prefix");
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (name, after_name) = rest.split_once(':').expect("name:");
        let (len, after_len) = after_name.split_once(':').expect("len:");
        let len: usize = len.parse().expect("a decimal length");
        let value = &after_len[..len];
        rest = after_len[len..]
            .strip_prefix('\n')
            .expect("a field ends in \\n");
        fields.push((name.to_owned(), value.to_owned()));
    }
    fields
}

/// The command the canonical fields describe: (pool, action, token, actor, signed_at).
fn command_of(fields: &[(String, String)]) -> (PoolId, Action, IdempotencyToken, ActorId, u64) {
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    let params: BTreeMap<&str, &str> = fields
        .iter()
        .filter_map(|(name, value)| Some((name.strip_prefix("param.")?, value.as_str())))
        .collect();
    let param_names: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix("param."))
        .collect();
    assert!(
        param_names.windows(2).all(|pair| pair[0] < pair[1]),
        "parameters sorted by name: {names:?}"
    );
    let fixed: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !name.starts_with("param."))
        .collect();
    assert_eq!(
        fixed,
        ["action", "target", "token", "actor", "signed_at"],
        "field order"
    );
    let value = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .expect("field present")
    };
    let number = |name: &str| -> u64 { params[name].parse().expect("a decimal parameter") };
    let target = value("target");
    let reservation_pool = || {
        PoolId::new(
            target
                .rsplit_once(allot_domain::ids::RESERVATION_ID_SEPARATOR)
                .expect("pool:seq")
                .0,
        )
    };
    let (pool, action) = match value("action") {
        "declare_pool" => (
            PoolId::new(target),
            Action::DeclarePool {
                capacity: number("capacity"),
                closes_at: (!params["closes_at"].is_empty())
                    .then(|| Timestamp(number("closes_at"))),
                units: match params["units"] {
                    "" => Vec::new(),
                    units => units.split('\u{1f}').map(str::to_owned).collect(),
                },
                idempotency_window_ms: number("idempotency_window_ms"),
            },
        ),
        "adjust_capacity" => (
            PoolId::new(target),
            Action::AdjustCapacity {
                capacity: number("capacity"),
            },
        ),
        "close_pool" => (PoolId::new(target), Action::ClosePool),
        "reserve" => (
            PoolId::new(target),
            Action::Reserve {
                resource: params["resource"].to_owned(),
                requester: params["requester"].to_owned(),
                duration_ms: number("duration_ms"),
                count: number("count").try_into().expect("a u32 count"),
            },
        ),
        "confirm_reservation" => (
            reservation_pool(),
            Action::ConfirmReservation {
                reservation: number("reservation"),
            },
        ),
        "cancel_reservation" => (
            reservation_pool(),
            Action::CancelReservation {
                reservation: number("reservation"),
            },
        ),
        "expire_reservation" => (
            reservation_pool(),
            Action::ExpireReservation {
                reservation: number("reservation"),
            },
        ),
        other => panic!("unknown action {other}"),
    };
    (
        pool,
        action,
        IdempotencyToken::new(value("token")),
        ActorId::new(value("actor")),
        value("signed_at").parse().expect("decimal signed_at"),
    )
}

#[test]
fn the_signing_vectors_in_docs_are_exactly_what_the_code_signs() {
    let (secret, public, vectors) = published_vectors();
    let key = SigningKey::from_bytes(&secret);
    assert_eq!(key.verifying_key().to_bytes(), public, "public key");
    assert!(vectors.len() >= 3, "the page publishes its vectors");
    for vector in &vectors {
        let name = &vector.name;
        let fields = canonical_fields(&vector.signed_bytes);
        let (pool, action, token, actor, signed_at) = command_of(&fields);
        let signed_at = Timestamp(signed_at);
        let target = command_target(&pool, &action);
        let bytes = signing::signing_bytes(&action, &target, &token, &actor, signed_at);
        assert!(
            bytes == vector.signed_bytes,
            "{name}: signed bytes\n code: {}\n page: {}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&vector.signed_bytes)
        );
        assert_eq!(
            params_digest(&action).to_string(),
            vector.params_digest,
            "{name}: params digest"
        );
        // ed25519 is deterministic: the page's signature is the one the key makes over its bytes,
        // and the one the code's signer makes for the command.
        let published = hex::encode(&vector.signature);
        assert_eq!(
            hex::encode(key.sign(&vector.signed_bytes).to_bytes()),
            published,
            "{name}: the page's signature over the page's bytes"
        );
        let attestation = sign_command(&key, &actor, &pool, &action, &token, signed_at);
        assert_eq!(attestation.signed_at, signed_at, "{name}");
        assert_eq!(
            hex::encode(&attestation.signature),
            published,
            "{name}: signature"
        );
        verify_signature(&public, &vector.signed_bytes, &vector.signature, &actor)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
}

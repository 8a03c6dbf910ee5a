//! Receipts, end to end: every answer that records an event on the embedded store carries a
//! receipt that verifies offline; `allot audit --receipts` lists exactly the receipts whose
//! events a restored older copy of the data directory lost; a receipt with any byte of any
//! member changed fails verification; the vectors in `docs/signing.md` verify with
//! `allot verify-receipt`; the server signs once per group commit; `GET /v1/head` is the newest
//! seal, signed.
//!
//! The process tests drive the real `allot` binary (build it first:
//! `cargo build -p allot-infra --bin allot`, or set `ALLOT_BIN`).

#[path = "../src/bin/soak/allot_process.rs"]
mod allot_process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use allot_client::receipt::{Receipt, ReceiptError, SealJson, SignedHead, verify, verify_head};
use allot_client::{Answer, Client};
use allot_domain::{Action, ActorId, PoolId, Role};
use allot_process::{Server as Process, locate_allot};
use allot_projections::Projections;
use allot_server::clock::SystemClock;
use allot_server::identity::KeyFile;
use allot_server::server::{FIRST_ADMIN, SERVER_KEY_FILE, ServeOptions, Server, key_path};
use allot_server::store::embedded::EmbeddedStore;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::Value;

fn declare(capacity: u64) -> Action {
    Action::DeclarePool {
        capacity,
        closes_at: None,
        units: Vec::new(),
        idempotency_window_ms: allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT,
    }
}

fn reserve(requester: &str) -> Action {
    Action::Reserve {
        resource: format!("seat-{requester}"),
        requester: requester.to_owned(),
        duration_ms: 3_600_000,
        count: 1,
    }
}

/// The receipt of an answer that recorded an event; panics if it has none or it is malformed.
#[track_caller]
fn receipt_of(answer: &Answer) -> Receipt {
    match answer.receipt() {
        Some(Ok(receipt)) => receipt,
        Some(Err(error)) => panic!("malformed receipt ({error}): {answer:?}"),
        None => panic!("no receipt: {answer:?}"),
    }
}

/// The public half of the instance's server key in `keys`.
fn server_key(keys: &Path) -> (ActorId, VerifyingKey) {
    let (file, key) = KeyFile::read(&keys.join(SERVER_KEY_FILE)).expect("server.key");
    assert_eq!(file.role, Role::Server);
    (ActorId::new(file.actor), key.verifying_key())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn allot(allot: &Path, args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(allot)
        .args(args)
        .output()
        .expect("run allot")
}

/// `allot audit DIR --receipts FILE --json`: the exit status and the report.
fn audit_receipts(bin: &Path, data: &Path, receipts: &Path) -> (Option<i32>, Value) {
    let out = allot(
        bin,
        &[
            "audit".as_ref(),
            data.as_os_str(),
            "--receipts".as_ref(),
            receipts.as_os_str(),
            "--json".as_ref(),
        ],
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|error| {
        panic!(
            "audit --receipts printed no report ({error}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The receipts file lines (from 1) a report lists, with each finding's kind.
fn listed(report: &Value) -> BTreeMap<u64, String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|finding| {
            (
                finding["line"].as_u64().expect("line"),
                finding["finding"].as_str().expect("kind").to_owned(),
            )
        })
        .collect()
}

/// `count` reserves in pool `p`, tokens `{prefix}-{i}`, each acknowledged with a receipt that
/// verifies under `key`.
async fn reserve_all(
    client: &Client,
    prefix: &str,
    count: usize,
    key: &VerifyingKey,
) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    for i in 0..count {
        let token = format!("{prefix}-{i}");
        let answer = client
            .send(&PoolId::new("p"), &reserve(&token), &token)
            .await
            .expect("reserve");
        assert_eq!(answer.status, 201, "{answer:?}");
        let receipt = receipt_of(&answer);
        assert_eq!(verify(&receipt, Some(key)), Ok(()));
        assert_eq!(receipt.stream, "pool-p");
        receipts.push(receipt);
    }
    receipts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_receipts_lists_exactly_the_acknowledged_events_an_older_copy_lost() {
    let bin = locate_allot().unwrap_or_else(|e| panic!("{e}"));
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let older = temp.path().join("older");
    let log = temp.path().join("allot.stderr.log");
    let receipts_file = temp.path().join("receipts.jsonl");

    // First half: acknowledged, then the server is stopped and the directory copied.
    let server = Process::start(&bin, &data, &log).await.expect("start");
    let (server_id, key) = server_key(&data.join("keys"));
    let admin = server.admin().expect("admin key");
    let declared = admin
        .send(&PoolId::new("p"), &declare(1_000), "declare-p")
        .await
        .expect("declare");
    assert_eq!(declared.status, 201, "{declared:?}");
    let mut kept = vec![receipt_of(&declared)];
    assert_eq!(kept[0].server, server_id.as_str());
    kept.extend(reserve_all(&admin, "first", 6, &key).await);
    // A replay answers the recorded outcome without a receipt.
    let replay = admin
        .send(&PoolId::new("p"), &reserve("first-0"), "first-0")
        .await
        .expect("replay");
    assert!(replay.replayed && replay.receipt().is_none(), "{replay:?}");
    server.kill().expect("stop");
    copy_dir(&data, &older);
    let kept_before_copy = kept.len();

    // Second half, on the original directory only; the instance keeps its server key.
    let server = Process::start(&bin, &data, &log).await.expect("restart");
    assert_eq!(server_key(&data.join("keys")), (server_id.clone(), key));
    kept.extend(reserve_all(&server.admin().expect("admin"), "second", 6, &key).await);
    server.kill().expect("stop");

    let lines: Vec<String> = kept
        .iter()
        .map(|receipt| serde_json::to_string(receipt).expect("json"))
        .collect();
    std::fs::write(&receipts_file, lines.join("\n") + "\n").expect("write receipts");
    let lost: BTreeSet<u64> = (kept_before_copy as u64 + 1..=kept.len() as u64).collect();

    // The directory that acknowledged them all holds them all, and audits clean.
    let (code, report) = audit_receipts(&bin, &data, &receipts_file);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["receipts"], kept.len() as u64);
    let out = allot(&bin, &["audit".as_ref(), data.as_os_str()]);
    assert!(
        out.status.success(),
        "allot audit of a log with a server registration: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The older copy lacks exactly the second half: past its head.
    let (code, report) = audit_receipts(&bin, &older, &receipts_file);
    assert_eq!(code, Some(3), "{report:#}");
    let found = listed(&report);
    assert_eq!(found.keys().copied().collect::<BTreeSet<_>>(), lost);
    assert!(found.values().all(|kind| kind == "past-head"), "{found:?}");

    // Restored and written to again: the lost positions now hold other events.
    let server = Process::start(&bin, &older, &log)
        .await
        .expect("start the copy");
    let written_again = reserve_all(&server.admin().expect("admin"), "again", 3, &key).await;
    server.kill().expect("stop");
    let (code, report) = audit_receipts(&bin, &older, &receipts_file);
    assert_eq!(code, Some(3), "{report:#}");
    let found = listed(&report);
    assert_eq!(found.keys().copied().collect::<BTreeSet<_>>(), lost);
    let differs = found
        .values()
        .filter(|kind| *kind == "leaf-differs")
        .count();
    assert_eq!(differs, written_again.len(), "{found:?}");
    assert_eq!(report["missing"], lost.len() as u64);
    assert_eq!(report["invalid"], 0);
}

/// Every way of changing one byte of one member's value: each character of a string replaced
/// by another of its kind, each number moved by one, a proof step dropped or repeated. Each
/// change is named, with the receipt's JSON text after it.
fn one_byte_changes(receipt: &Receipt) -> Vec<(String, String)> {
    let value = serde_json::to_value(receipt).expect("json");
    let mut changed = Vec::new();
    let mut change = |what: String, replace: &dyn Fn(&mut Value)| {
        let mut copy = value.clone();
        replace(&mut copy);
        changed.push((what, copy.to_string()));
    };
    for (path, leaf) in leaves(&value, String::new()) {
        match leaf {
            Value::String(text) => {
                for (i, c) in text.char_indices() {
                    let other = match c {
                        '0'..='8' | 'a'..='e' => ((c as u8) + 1) as char,
                        '9' => 'a',
                        'f' => '0',
                        'x' => 'y',
                        _ => 'x',
                    };
                    let mut mutated = text.clone();
                    mutated.replace_range(i..i + c.len_utf8(), &other.to_string());
                    let at = path.clone();
                    change(format!("{path} byte {i}"), &move |v: &mut Value| {
                        set(v, &at, Value::String(mutated.clone()))
                    });
                }
            }
            Value::Number(number) => {
                let n = number.as_u64().expect("unsigned");
                for other in [n.checked_add(1), n.checked_sub(1)].into_iter().flatten() {
                    let at = path.clone();
                    change(format!("{path} = {other}"), &move |v: &mut Value| {
                        set(v, &at, Value::from(other))
                    });
                }
            }
            _ => {}
        }
    }
    for i in 0..receipt.proof.len() {
        change(format!("/proof without step {i}"), &move |v: &mut Value| {
            if let Some(steps) = v.pointer_mut("/proof").and_then(Value::as_array_mut) {
                steps.remove(i);
            }
        });
    }
    change(
        "/proof with a step repeated".to_owned(),
        &|v: &mut Value| {
            if let Some(steps) = v.pointer_mut("/proof").and_then(Value::as_array_mut) {
                let step = steps
                    .first()
                    .cloned()
                    .unwrap_or(Value::String("00".repeat(32)));
                steps.push(step);
            }
        },
    );
    changed
}

fn set(value: &mut Value, pointer: &str, to: Value) {
    *value
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no member at {pointer}")) = to;
}

/// Every string and number in `value`, with its JSON pointer.
fn leaves(value: &Value, path: String) -> Vec<(String, Value)> {
    match value {
        Value::Object(members) => members
            .iter()
            .flat_map(|(name, member)| leaves(member, format!("{path}/{name}")))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| leaves(item, format!("{path}/{i}")))
            .collect(),
        leaf => vec![(path, leaf.clone())],
    }
}

/// Asserts that `receipt` verifies and that no one-byte change of it does.
fn assert_every_change_fails(receipt: &Receipt, key: &VerifyingKey) {
    assert_eq!(verify(receipt, Some(key)), Ok(()));
    let changes = one_byte_changes(receipt);
    assert!(changes.len() > 500, "only {} changes", changes.len());
    for (what, text) in changes {
        // A change that no longer parses (a digest of odd length) fails too.
        if let Ok(changed) = serde_json::from_str::<Receipt>(&text) {
            assert_ne!(&changed, receipt, "{what} changed nothing");
            let unpinned = verify(&changed, None);
            assert!(unpinned.is_err(), "{what}: still verifies");
            assert!(
                verify(&changed, Some(key)).is_err(),
                "{what}: still verifies"
            );
        }
    }
}

/// The receipt published in `docs/signing.md`, its text and the published key.
fn published() -> (String, Receipt, VerifyingKey) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/signing.md");
    let doc = std::fs::read_to_string(path).expect("docs/signing.md");
    let start = doc
        .find("<!-- receipt vector: generated by receipt_vectors.rs -->\n```json\n")
        .expect("receipt vector");
    let text = &doc[start..];
    let text = &text[text.find('{').expect("json")..];
    let text = &text[..text.find("```").expect("end of block")];
    let receipt: Receipt = serde_json::from_str(text).expect("the published receipt parses");
    // The receipt vectors' key is the last one the page publishes (after the commands').
    let key_hex = doc
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("public key (hex): "))
        .expect("a public key line");
    let key_bytes: [u8; 32] = hex::decode(key_hex)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let key = VerifyingKey::from_bytes(&key_bytes).expect("key");
    (text.to_owned(), receipt, key)
}

#[test]
fn a_receipt_with_any_byte_of_any_member_changed_does_not_verify() {
    let (_, receipt, key) = published();
    assert_every_change_fails(&receipt, &key);
}

#[test]
fn the_documented_receipt_verifies_with_allot_verify_receipt() {
    let bin = locate_allot().unwrap_or_else(|e| panic!("{e}"));
    let temp = tempfile::tempdir().expect("temp dir");
    let (text, receipt, key) = published();
    let file = temp.path().join("receipt.json");
    std::fs::write(&file, &text).expect("write");
    let key_hex = hex::encode(key.to_bytes());
    let other_hex = hex::encode(SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes());
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["verify-receipt".as_ref(), file.as_os_str()];
        all.extend(args.iter().map(|arg| std::ffi::OsStr::new(*arg)));
        let out = allot(&bin, &all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, said) = run(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("valid: position 2"), "{said}");
    assert_eq!(run(&["--key", &key_hex]).0, Some(0));
    let (code, said) = run(&["--key", &other_hex]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("not the pinned key"), "{said}");
    // One byte of the signature changed.
    let mut tampered = receipt.clone();
    tampered.signature[10] ^= 0x40;
    std::fs::write(&file, serde_json::to_string(&tampered).expect("json")).expect("write");
    let (code, said) = run(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said.trim(),
        format!("invalid: {}", ReceiptError::BadSignature)
    );
}

/// An in-process service over the embedded store in `dir`.
async fn start_embedded(dir: &Path) -> Server {
    let store = EmbeddedStore::open(&dir.join("store"))
        .await
        .expect("store");
    Server::start(
        Arc::new(store),
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("loopback"),
            metrics_listen: "127.0.0.1:0".parse().expect("loopback"),
            keys_dir: dir.join("keys"),
            server_key: None,
            sweeper: false,
            edge: Default::default(),
        },
    )
    .await
    .expect("start service")
}

fn admin_of(server: &Server, dir: &Path) -> Client {
    let (file, key) = KeyFile::read(&key_path(&dir.join("keys"), FIRST_ADMIN)).expect("admin");
    Client::new(
        format!("http://{}", server.addr),
        ActorId::new(file.actor),
        key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_signs_each_group_commit_once_and_the_head_is_its_newest_seal() {
    const POOLS: usize = 64;
    let temp = tempfile::tempdir().expect("temp dir");
    let server = start_embedded(temp.path()).await;
    let admin = admin_of(&server, temp.path());
    let (server_id, key) = server_key(&temp.path().join("keys"));
    let signer = server.seal_signer.as_ref().expect("a server key");
    assert_eq!(signer.actor(), &server_id);
    for i in 0..POOLS {
        let pool = PoolId::new(format!("p{i}"));
        let answer = admin
            .send(&pool, &declare(10), &format!("declare-{i}"))
            .await
            .expect("declare");
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    let signatures = || server.service.metrics().seal_signatures.get();

    // Rounds of concurrent reserves, one per pool, until one group commit held several.
    let mut shared_batch = false;
    for round in 0..20 {
        let before = signatures();
        let answers = futures::future::join_all((0..POOLS).map(|i| {
            let admin = admin.clone();
            async move {
                let token = format!("r{round}-{i}");
                admin
                    .send(&PoolId::new(format!("p{i}")), &reserve(&token), &token)
                    .await
                    .expect("reserve")
            }
        }))
        .await;
        let mut by_seal: BTreeMap<[u8; 32], Vec<Receipt>> = BTreeMap::new();
        for answer in &answers {
            assert_eq!(answer.status, 201, "{answer:?}");
            let receipt = receipt_of(answer);
            assert_eq!(verify(&receipt, Some(&key)), Ok(()));
            by_seal.entry(receipt.seal.chain).or_default().push(receipt);
        }
        // One signature per batch: every receipt of a batch carries the same one, and the
        // server signed once for each batch.
        for receipts in by_seal.values() {
            let first = &receipts[0];
            assert!(receipts.iter().all(|r| r.signature == first.signature));
            assert!(receipts.iter().all(|r| r.seal == first.seal));
            assert!(receipts.len() as u32 <= first.count);
        }
        assert_eq!(signatures() - before, by_seal.len() as u64);
        if by_seal.values().any(|receipts| receipts.len() > 1) {
            shared_batch = true;
            break;
        }
    }
    assert!(
        shared_batch,
        "no group commit ever held two commands' events"
    );

    // The head is the newest seal, signed the same way.
    let before = signatures();
    let answer = admin.head().await.expect("head");
    assert_eq!(answer.status, 200, "{answer:?}");
    let head: SignedHead = serde_json::from_value(answer.body).expect("head");
    assert_eq!(verify_head(&head, Some(&key)), Ok(()));
    let newest = server.service.store().sealed_head().expect("a sealed head");
    assert_eq!(head.seal, SealJson::from(newest));
    assert_eq!(head.position, newest.head_position());
    assert_eq!(head.server, server_id.as_str());
    let again: SignedHead =
        serde_json::from_value(admin.head().await.expect("head").body).expect("head");
    assert_eq!(again, head);
    assert_eq!(signatures() - before, 1, "an unchanged head is signed once");

    // The server key may sign seals and nothing else.
    let (file, secret) =
        KeyFile::read(&temp.path().join("keys").join(SERVER_KEY_FILE)).expect("server.key");
    let as_server = admin.with_identity(ActorId::new(file.actor), secret);
    let refused = as_server
        .send(&PoolId::new("p0"), &reserve("server"), "server-1")
        .await
        .expect("reserve");
    assert_eq!((refused.status, refused.code()), (403, Some("forbidden")));
    let refused = as_server.head().await.expect("head");
    assert_eq!((refused.status, refused.code()), (403, Some("forbidden")));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_data_directory_gets_a_server_key_at_its_first_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let keys: PathBuf = temp.path().join("keys");
    let server = start_embedded(temp.path()).await;
    assert!(server.seal_signer_made);
    let first = server_key(&keys);
    server.shutdown().await.expect("shutdown");

    // A restart keeps the key.
    let server = start_embedded(temp.path()).await;
    assert!(!server.seal_signer_made);
    assert_eq!(server_key(&keys), first);
    server.shutdown().await.expect("shutdown");

    // A directory written before instances had keys (here: the key file removed, as if never
    // made) gets a new one, registered by the admin key, and receipts name it.
    std::fs::remove_file(keys.join(SERVER_KEY_FILE)).expect("remove server.key");
    let server = start_embedded(temp.path()).await;
    assert!(server.seal_signer_made);
    let (made, key) = server_key(&keys);
    assert_ne!(made, first.0);
    let registered = server.service.actors().current(&made).expect("registered");
    assert_eq!(
        (registered.role, registered.public_key),
        (Role::Server, key.to_bytes())
    );
    let admin = admin_of(&server, temp.path());
    let answer = admin
        .send(&PoolId::new("q"), &declare(1), "declare-q")
        .await
        .expect("declare");
    let receipt = receipt_of(&answer);
    assert_eq!(receipt.server, made.as_str());
    assert_eq!(verify(&receipt, Some(&key)), Ok(()));
    assert_every_change_fails(&receipt, &key);
    server.shutdown().await.expect("shutdown");

    // The key removed again, with no admin key to register a new one: start-up refuses and
    // says how to register it.
    std::fs::remove_file(keys.join(SERVER_KEY_FILE)).expect("remove server.key");
    std::fs::remove_file(key_path(&keys, FIRST_ADMIN)).expect("remove admin.key");
    let store = EmbeddedStore::open(&temp.path().join("store"))
        .await
        .expect("store");
    let refused = Server::start(
        Arc::new(store),
        Arc::new(SystemClock),
        Arc::new(Projections::new()),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("loopback"),
            metrics_listen: "127.0.0.1:0".parse().expect("loopback"),
            keys_dir: keys.clone(),
            server_key: None,
            sweeper: false,
            edge: Default::default(),
        },
    )
    .await;
    let error = match refused {
        Ok(_) => panic!("started without a registrable server key"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("is not registered") && error.contains("allot actor register"),
        "{error}"
    );
}

/// A batch's results carry receipts only when the batch asks (`?receipts=true`), and those
/// receipts verify like a single command's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carries_receipts_only_when_asked() {
    use allot_client::wire::{self, BatchCommand};
    use allot_domain::{IdempotencyToken, Timestamp};
    let temp = tempfile::tempdir().expect("temp dir");
    let server = start_embedded(temp.path()).await;
    let admin = admin_of(&server, temp.path());
    let (file, key) =
        KeyFile::read(&key_path(&temp.path().join("keys"), FIRST_ADMIN)).expect("admin");
    let actor = ActorId::new(file.actor);
    let pool = PoolId::new("hall");
    let declared = admin
        .send(&pool, &declare(10), "declare")
        .await
        .expect("declare");
    assert_eq!(declared.status, 201, "{declared:?}");
    let (server_id, server_key) = server_key(&temp.path().join("keys"));
    let http = reqwest::Client::new();
    let send = |query: &'static str, batch_key: &'static str| {
        let commands = vec![BatchCommand {
            pool: pool.clone(),
            action: reserve(batch_key),
            token: IdempotencyToken::new(batch_key),
        }];
        let signed_at = Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after the epoch")
                .as_millis() as u64,
        );
        let token = IdempotencyToken::new(batch_key);
        let attestation =
            wire::sign_batch(&key, &actor, &token, &commands, signed_at).expect("members");
        let mut body = Vec::new();
        wire::write_batch_body(&commands, &mut body).expect("body");
        let request = http
            .post(format!("http://{}{}{query}", server.addr, wire::BATCH_PATH))
            .header("content-type", "application/json")
            .header(wire::IDEMPOTENCY_KEY, batch_key)
            .header(wire::ACTOR_HEADER, actor.as_str())
            .header(wire::SIGNED_AT_HEADER, signed_at.0.to_string())
            .header(wire::SIGNATURE_HEADER, hex::encode(&attestation.signature))
            .body(body);
        async move {
            let answer = request.send().await.expect("send");
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.expect("JSON"))
        }
    };
    let (status, plain) = send("", "b1").await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain["results"][0].get("receipt").is_none(), "{plain}");
    let (status, asked) = send("?receipts=true", "b2").await;
    assert_eq!(status, 200, "{asked}");
    let receipt: Receipt =
        serde_json::from_value(asked["results"][0]["receipt"].clone()).expect("a receipt");
    assert_eq!(receipt.server, server_id.as_str());
    assert_eq!(verify(&receipt, Some(&server_key)), Ok(()));
    let (status, other) = send("?proofs=1", "b3").await;
    assert_eq!(status, 400, "{other}");
    server.shutdown().await.expect("shutdown");
}

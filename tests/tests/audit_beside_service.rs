//! `allot audit DIR` beside a live `allot serve` on the same directory. The audit takes no lock
//! and reads up to the durable head it finds, so while commands keep flowing each run is CLEAN
//! and prints a head between the events acknowledged before it started and those of commands
//! sent before it ended. A head printed then is extended by the log later (`--expect-head`
//! passes); a made-up one is a FAIL.
//!
//! Needs the `allot` binary: `cargo build -p allot-infra --bin allot` (or set `ALLOT_BIN`).

#[path = "../src/bin/soak/allot_process.rs"]
mod allot_process;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use allot_client::Client;
use allot_domain::{Action, ActorId, PoolId, Role};
use allot_process::{Server, locate_allot};
use allot_server::store::embedded::EmbeddedStore;
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent};
use ed25519_dalek::SigningKey;
use tokio::sync::watch;

const POOL: &str = "live";
/// Concurrent senders of the load (so batches carry several commands at times).
const WORKERS: u64 = 2;
/// Audits run while the load goes on.
const AUDITS: usize = 5;
/// Appends of 1000 events before the snapshot of the read-only open test (its size sets how
/// long the open's check of it takes).
const SNAPSHOT_BATCHES: u32 = 60;
/// Appenders and read-only opens of that test.
const WRITERS: u8 = 4;
const READ_ONLY_OPENS: usize = 12;
/// The exit status of `allot audit` on missing or damaged acknowledged data.
const AUDIT_FAIL: i32 = 3;

/// `allot audit` as it exited and printed.
struct Audit {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, out, err) = (self.code, &self.stdout, &self.stderr);
        write!(f, "allot audit exited {code}:\n{out}{err}")
    }
}

impl Audit {
    /// The printed head: position and chain value.
    fn head(&self) -> (u64, String) {
        let head = self
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix("head: "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no head line: {self}"));
        let (position, chain) = head.split_once(':').expect("POSITION:CHAIN");
        (position.parse().expect("a position"), chain.to_owned())
    }

    fn is_clean(&self) -> bool {
        self.code == 0 && self.stdout.lines().any(|line| line == "CLEAN")
    }
}

async fn audit(allot: &Path, dir: &Path, args: &[&str]) -> Audit {
    let out = tokio::process::Command::new(allot)
        .arg("audit")
        .arg(dir)
        .args(args)
        .output()
        .await
        .expect("run allot audit");
    Audit {
        code: out.status.code().expect("allot audit exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends reserve commands until `stop`, one at a time: `sent` counts each before it goes out,
/// `acked` each 201 (every reserve records one event), published on `progress` too.
async fn load(
    client: Client,
    worker: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    progress: watch::Sender<u64>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        sent.fetch_add(1, Ordering::SeqCst);
        let action = Action::Reserve {
            resource: format!("seat-{worker}-{n}"),
            requester: format!("student-{worker}-{n}"),
            duration_ms: 3_600_000,
            count: 1,
        };
        let token = format!("load-{worker}-{n}");
        let answer = client
            .send(&PoolId::new(POOL), &action, &token)
            .await
            .expect("reserve");
        assert_eq!(answer.status, 201, "{token}: {answer:?}");
        let total = acked.fetch_add(1, Ordering::SeqCst) + 1;
        progress.send_replace(total);
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_beside_a_live_service_are_clean_and_see_a_durable_head() {
    let allot = locate_allot().unwrap_or_else(|e| panic!("{e}"));
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let server = Server::start(&allot, &data, &temp.path().join("serve.stderr"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = server.admin().expect("admin key");
    let key = SigningKey::from_bytes(&[9; 32]);
    let actor = ActorId::new("live-client");
    let answer = admin
        .register_actor(&actor, Role::Client, key.verifying_key().to_bytes(), "reg")
        .await
        .expect("register");
    assert!(answer.is_success(), "{answer:?}");
    let declare = Action::DeclarePool {
        capacity: 1_000_000,
        closes_at: None,
        units: Vec::new(),
        idempotency_window_ms: allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT,
    };
    let answer = admin
        .send(&PoolId::new(POOL), &declare, "declare")
        .await
        .expect("declare");
    assert!(answer.is_success(), "{answer:?}");

    // Before the load: the head is every event so far.
    let quiet = audit(&allot, &data, &[]).await;
    assert!(quiet.is_clean(), "{quiet}");
    let (before_load, _) = quiet.head();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let (progress, mut progressed) = watch::channel(0);
    let client = Client::new(server.base.clone(), actor, key);
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            tokio::spawn(load(
                client.clone(),
                worker,
                stop.clone(),
                sent.clone(),
                acked.clone(),
                progress.clone(),
            ))
        })
        .collect();

    let mut heads = Vec::new();
    let mut during_load = 0;
    for run in 0..AUDITS {
        // Each audit starts once the load has acknowledged something since the last one.
        let seen = *progressed.borrow_and_update();
        progressed
            .wait_for(|acked| *acked > seen)
            .await
            .expect("the load goes on");
        let acked_before = acked.load(Ordering::SeqCst);
        let audit = audit(&allot, &data, &[]).await;
        let sent_after = sent.load(Ordering::SeqCst);
        if acked.load(Ordering::SeqCst) > acked_before {
            during_load += 1;
        }
        assert!(audit.is_clean(), "audit {run}: {audit}");
        assert!(
            audit.stdout.contains("a live writer holds the directory"),
            "audit {run}: {audit}"
        );
        let (position, chain) = audit.head();
        assert!(
            before_load + acked_before <= position && position <= before_load + sent_after,
            "audit {run}: head at {position}, but {acked_before} commands were acknowledged \
             before it started and {sent_after} sent before it ended, after {before_load} events"
        );
        heads.push((position, chain));
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("load worker");
    }
    assert!(
        during_load > 0,
        "no audit ran while commands were acknowledged"
    );
    let total = acked.load(Ordering::SeqCst);
    assert_eq!(
        total,
        sent.load(Ordering::SeqCst),
        "every command acknowledged"
    );
    eprintln!("{AUDITS} audits, {during_load} while commands were acknowledged; {total} commands");

    // Quiet again: the head is every event, and extends each head printed under load.
    let now = audit(&allot, &data, &[]).await;
    assert!(now.is_clean(), "{now}");
    assert_eq!(now.head().0, before_load + total, "{now}");
    for (position, chain) in &heads {
        let head = format!("{position}:{chain}");
        let audit = audit(&allot, &data, &["--expect-head", &head]).await;
        assert!(audit.is_clean(), "--expect-head {head}: {audit}");
        assert!(
            audit.stdout.contains("extends the expected head"),
            "{audit}"
        );
    }
    // A chain value the log never had, at a position it has; and a position it never reached.
    let (position, chain) = &heads[0];
    let made_up: String = chain
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    for head in [
        format!("{position}:{made_up}"),
        format!("{}:{chain}", before_load + total + 1),
    ] {
        let audit = audit(&allot, &data, &["--expect-head", &head]).await;
        assert_eq!(audit.code, AUDIT_FAIL, "--expect-head {head}: {audit}");
        assert!(
            audit.stdout.lines().any(|line| line.starts_with("FAIL: ")),
            "{audit}"
        );
    }
    server.kill().expect("kill");
}

/// The store's read-only open (the audit's) beside a writer that keeps appending: it must
/// never take the batches written while it reads for lost ones. An index snapshot makes the
/// open check it against the log before it reads the head slots, so many batches land between
/// the log's length it measured first and the newest slot it reads then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_open_beside_a_writer_never_finds_lost_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).await.expect("open"));
    for batch in 0..SNAPSHOT_BATCHES {
        let events = (0..1000u32)
            .map(|e| ProposedEvent {
                id: [1; 16],
                kind: "K".to_owned(),
                payload: format!("{batch}/{e}").into_bytes(),
            })
            .collect();
        store
            .append("bulk", ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    store.write_index_snapshot().await.expect("snapshot");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let event = ProposedEvent {
                        id: [2; 16],
                        kind: "K".to_owned(),
                        payload: vec![w; 16],
                    };
                    store
                        .append(&format!("w{w}"), ExpectedVersion::Any, vec![event])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..READ_ONLY_OPENS {
        let durable = store.next_position();
        match EmbeddedStore::open_read_only(dir.path()).await {
            Ok(reader) => {
                assert!(reader.opened().writer_live);
                assert!(reader.opened().events >= durable, "{:?}", reader.opened());
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(
        failures.is_empty(),
        "{} of {READ_ONLY_OPENS} read-only opens refused a growing log; the first: {}",
        failures.len(),
        failures[0]
    );
}

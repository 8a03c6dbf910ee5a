//! Damage to a data directory of the embedded log, class by class, against the recovery rules
//! (`store/embedded/recovery.rs` and `files.rs`): only the batch the newest head slot names may
//! be torn; anything else missing or damaged is acknowledged data, and is refused.
//!
//! The directory is one the real `allot serve` wrote over HTTP (commands acknowledged one at a
//! time, so one batch each). Each case damages a copy, then checks:
//! (a) `EmbeddedStore::open` refuses it as `Damaged`, naming the file, the offset where the
//!     damage is found (the batch for header damage, the frame or the record otherwise) and the
//!     first affected position, and leaves every file as it was; or, for damage inside the last
//!     batch only, cuts that batch as a torn write and keeps its bytes beside the log;
//! (b) `allot audit DIR` exits 3 with a `FAIL:` line naming the same file, an offset in the
//!     damaged batch and a position of it; or exits 0 with a torn-write finding;
//! (c) no read returns a byte other than the one written;
//! (d) after a permitted cut, every event before the cut batch reads back.
//!
//! Inside the range an index snapshot covers (but its first and last batch), the open trusts
//! the snapshot: it succeeds, every read of a damaged record fails, and `verify` and the audit
//! find the damage. Over HTTP the service never answers from a damaged record. Two property
//! tests apply random damage (flip, zeroed range, truncation) with and without a snapshot.
//!
//! Needs the `allot` binary: `cargo build -p allot-infra --bin allot` (or set `ALLOT_BIN`).
//! `PROPTEST_RNG_SEED` and `PROPTEST_CASES` vary the property tests (a fixed seed otherwise).

#[path = "../src/bin/soak/allot_process.rs"]
mod allot_process;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allot_client::Client;
use allot_domain::streams::pool_stream;
use allot_domain::{Action, ActorId, PoolId, ReservationId, Role};
use allot_process::{Server, locate_allot};
use allot_server::identity::KeyFile;
use allot_server::store::embedded::{
    BATCH_HEADER_BYTES, EmbeddedStore, FILE_HEADER_BYTES, HEAD_SLOTS, LOCK_FILE_NAME,
    LOG_FILE_NAME, SNAPSHOT_FILE_NAME, STORE_ID_FILE_NAME,
};
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError};
use allot_tests::data_dir;
use allot_tests::log_layout::{
    self, BATCH_FIELDS, Batch, EVENT_FIELDS, FILE_HEADER_FIELDS, FRAME_FIELDS, FRAME_FIXED_BYTES,
    SLOT_FIELDS,
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::Value;
use tokio::sync::OnceCell;

/// The pool the commands go to.
const POOL: &str = "damage";
/// Reserve commands before the service is restarted (the log as it was then is kept: an older
/// log for the rollback cases), and after.
const RESERVES_BEFORE_RESTART: usize = 8;
const RESERVES_AFTER_RESTART: usize = 10;
/// Reservations confirmed, then cancelled, after the reserves.
const CONFIRMS: usize = 3;
const CANCELS: usize = 2;
/// Random damages per property test, unless `PROPTEST_CASES` says otherwise.
const PROPERTY_CASES: u32 = 24;
/// Seed of the property tests, unless `PROPTEST_RNG_SEED` says otherwise.
const PROPERTY_SEED: u64 = 0xda_3a9e;
/// Longest zeroed range of the property tests.
const ZEROED_BYTES_MAX: u64 = 3_000;
/// The exit status of `allot audit` on missing or damaged acknowledged data.
const AUDIT_FAIL: i32 = 3;
/// The checked part of the file header (magic, version, reserved, log id, checksum).
const FILE_HEADER_CHECKED_BYTES: u64 = 40;
/// Bytes of a head slot that are read (the rest of its sector is padding).
const SLOT_BYTES: u64 = 80;
/// How long `allot serve` may take to give up on a damaged directory, or to report damage.
const SERVE_DEADLINE: Duration = Duration::from_secs(60);

/// A data directory `allot serve` wrote, the same with an index snapshot, and what they hold.
struct Base {
    allot: PathBuf,
    _root: tempfile::TempDir,
    /// Written by `allot serve`: the log, `store.id`, the keys and `LOCK`.
    dir: PathBuf,
    /// `dir` with an index snapshot covering every batch.
    snap: PathBuf,
    /// The files of another data directory (another log id).
    other: PathBuf,
    /// `events.log` as it was before the restart: an older log, with its own head slots.
    older_log: Vec<u8>,
    log: Vec<u8>,
    batches: Vec<Batch>,
    /// Every event, as written.
    events: Vec<RecordedEvent>,
    /// Every reservation as the service showed it.
    reservations: Vec<(ReservationId, Value)>,
}

impl Base {
    fn last(&self) -> &Batch {
        self.batches.last().expect("batches")
    }

    /// The events before batch `i`.
    fn before(&self, i: usize) -> &[RecordedEvent] {
        &self.events[..self.batches[i].first_position as usize]
    }

    fn log_path(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE_NAME)
    }
}

static BASE: OnceCell<Base> = OnceCell::const_new();

/// The base directories, written once for all tests of this file (each case damages a copy).
async fn base() -> &'static Base {
    BASE.get_or_init(build_base).await
}

async fn reserve(client: &Client, n: usize) -> ReservationId {
    let action = Action::Reserve {
        resource: format!("seat-{n}"),
        requester: format!("student-{n}"),
        duration_ms: 3_600_000,
        count: 1,
    };
    let answer = client
        .send(&PoolId::new(POOL), &action, &format!("reserve-{n}"))
        .await
        .expect("reserve");
    assert_eq!(answer.status, 201, "reserve {n}: {answer:?}");
    answer
        .body
        .get("reservation_id")
        .and_then(Value::as_str)
        .and_then(ReservationId::parse)
        .expect("reservation id")
}

async fn build_base() -> Base {
    let allot = locate_allot().unwrap_or_else(|e| panic!("{e}"));
    // Under the target's directory: the base lives as long as the test process (a static is
    // never dropped), and `cargo clean` removes it.
    let root = tempfile::Builder::new()
        .prefix("log_damage-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let dir = root.path().join("data");
    let serve_log = root.path().join("serve.stderr");
    let server = Server::start(&allot, &dir, &serve_log)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = server.admin().expect("admin key");
    let key = SigningKey::from_bytes(&[7; 32]);
    let actor = ActorId::new("damage-client");
    let answer = admin
        .register_actor(&actor, Role::Client, key.verifying_key().to_bytes(), "reg")
        .await
        .expect("register");
    assert!(answer.is_success(), "register: {answer:?}");
    let declare = Action::DeclarePool {
        capacity: 1_000,
        closes_at: None,
        units: Vec::new(),
        idempotency_window_ms: allot_domain::command::IDEMPOTENCY_WINDOW_MS_DEFAULT,
    };
    let answer = admin
        .send(&PoolId::new(POOL), &declare, "declare")
        .await
        .expect("declare");
    assert!(answer.is_success(), "declare: {answer:?}");
    let mut ids = Vec::new();
    let client = Client::new(server.base.clone(), actor.clone(), key.clone());
    for n in 0..RESERVES_BEFORE_RESTART {
        ids.push(reserve(&client, n).await);
    }
    server.kill().expect("kill");
    let older_log = std::fs::read(Base::log_path(&dir)).expect("log");

    let server = Server::start(&allot, &dir, &serve_log)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new(server.base.clone(), actor, key);
    for n in RESERVES_BEFORE_RESTART..RESERVES_BEFORE_RESTART + RESERVES_AFTER_RESTART {
        ids.push(reserve(&client, n).await);
    }
    for (i, id) in ids.iter().take(CONFIRMS + CANCELS).enumerate() {
        let action = if i < CONFIRMS {
            Action::ConfirmReservation {
                reservation: id.seq,
            }
        } else {
            Action::CancelReservation {
                reservation: id.seq,
            }
        };
        let answer = client
            .send(&id.pool, &action, &format!("end-{i}"))
            .await
            .expect("confirm or cancel");
        assert_eq!(answer.status, 200, "{action:?}: {answer:?}");
    }
    let admin = server.admin().expect("admin key");
    let mut reservations = Vec::new();
    for id in ids {
        let answer = admin.reservation(&id).await.expect("read reservation");
        assert_eq!(answer.status, 200, "{answer:?}");
        reservations.push((id, answer.body));
    }
    server.kill().expect("kill");

    let log = std::fs::read(Base::log_path(&dir)).expect("log");
    let batches = log_layout::batches(&log);
    let events = {
        let store = EmbeddedStore::open_read_only(&dir)
            .await
            .expect("base opens");
        store.read_all(None, usize::MAX).await.expect("base reads")
    };
    assert_eq!(
        events.len() as u64,
        batches.last().map_or(0, |b| b.positions().end)
    );

    let snap = root.path().join("snap");
    data_dir::copy(&dir, &snap);
    {
        let store = EmbeddedStore::open(&snap).await.expect("open copy");
        let info = store.write_index_snapshot().await.expect("snapshot");
        assert_eq!(info.map(|i| i.log_bytes), Some(log.len() as u64));
        store.close().await.expect("close");
    }
    assert_eq!(
        std::fs::read(Base::log_path(&snap)).expect("log"),
        log,
        "writing a snapshot changed the log"
    );

    let other = root.path().join("other");
    {
        let store = EmbeddedStore::open(&other).await.expect("open other");
        for i in 0..3u8 {
            let event = ProposedEvent {
                id: [i; 16],
                kind: "Other".to_owned(),
                payload: vec![i; 40],
            };
            store
                .append("other", ExpectedVersion::Any, vec![event])
                .await
                .expect("append");
        }
        store.close().await.expect("close");
    }
    Base {
        allot,
        _root: root,
        dir,
        snap,
        other,
        older_log,
        log,
        batches,
        events,
        reservations,
    }
}

/// What a damaged directory must do.
#[derive(Debug, Clone)]
enum Expect {
    /// Opens with every event.
    Intact,
    /// Batch `i` on is a torn write: cut (the bytes kept), the events before it read back.
    Torn(usize),
    /// The log ends where batch `i` starts, and that is allowed: opens with the events before.
    EndsBefore(usize),
    Refused(Refusal),
    /// Inside the range a snapshot covers: opens; `verify` and the audit find the damage.
    Covered(Covered),
}

#[derive(Debug, Clone)]
struct Refusal {
    /// The file named, in the data directory.
    file: &'static str,
    /// Where a serving open may report it; empty: anywhere.
    offsets: Vec<u64>,
    first_position: Option<u64>,
    /// The batches holding the damage, when it is in the log's batches. The audit trusts the
    /// stored leaves for a batch's root and checks each record's leaf when it reads it, so it
    /// may name a frame or a record of them, with its batch's first position or the record's
    /// position, where a serving open names the first one.
    batches: Vec<Batch>,
}

#[derive(Debug, Clone)]
struct Covered {
    /// The batches damaged; `verify` reports the first.
    batches: Vec<Batch>,
    /// Where `verify` may report it; empty: anywhere in the first damaged batch.
    offsets: Vec<u64>,
    /// Positions whose reads must fail; others of the damaged batches may.
    unreadable: Vec<u64>,
}

fn refused(file: &'static str, offsets: Vec<u64>, first_position: Option<u64>) -> Expect {
    Expect::Refused(Refusal {
        file,
        offsets,
        first_position,
        batches: Vec::new(),
    })
}

fn refused_in(batch: &Batch, offsets: Vec<u64>) -> Expect {
    Expect::Refused(Refusal {
        file: LOG_FILE_NAME,
        offsets,
        first_position: Some(batch.first_position),
        batches: vec![batch.clone()],
    })
}

/// Where a check of a batch may stop: the batch, each frame, each record.
fn starts(batch: &Batch) -> impl Iterator<Item = u64> + '_ {
    std::iter::once(batch.offset).chain(
        batch
            .frames
            .iter()
            .flat_map(|f| std::iter::once(f.offset).chain(f.records.iter().map(|r| r.offset))),
    )
}

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
    fn fail_line(&self) -> &str {
        self.stdout
            .lines()
            .find(|line| line.starts_with("FAIL: "))
            .unwrap_or_else(|| panic!("no FAIL line: {self}"))
    }

    /// `POSITION:CHAIN` of the printed head.
    fn head(&self) -> &str {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("head: "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no head line: {self}"))
    }
}

async fn run_audit(allot: &Path, dir: &Path, args: &[&str]) -> Audit {
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

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    let at = text.find(label)? + label.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn assert_unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path, who: &str, what: &str) {
    let changed = data_dir::differences(before, &data_dir::files(dir));
    assert!(changed.is_empty(), "{what}: {who} changed {changed:?}");
}

/// The audit's FAIL line names `file`, an offset where a check of `batches` may stop (or one
/// of `offsets`), and the first position of one of them or the position of one of their
/// records.
fn assert_fail_in(audit: &Audit, file: &Path, offsets: &[u64], batches: &[Batch], what: &str) {
    assert_eq!(audit.code, AUDIT_FAIL, "{what}: {audit}");
    let line = audit.fail_line();
    let file = file.display().to_string();
    assert!(line.contains(&file), "{what}: FAIL names no {file}: {line}");
    let offset = number_after(line, " at offset ");
    assert!(
        offset.is_some_and(
            |o| offsets.contains(&o) || batches.iter().any(|b| starts(b).any(|s| s == o))
        ),
        "{what}: offset {offset:?} is none of {offsets:?} nor a start in the damaged batches: {line}"
    );
    let first = number_after(line, "first affected position ");
    let record = number_after(line, "event at position ");
    assert!(
        batches.iter().any(|b| {
            first == Some(b.first_position) || record.is_some_and(|p| b.positions().contains(&p))
        }),
        "{what}: the FAIL line names no position of the damaged batches: {line}"
    );
}

/// The audit as the rules say it must end for `expect`.
fn check_audit(base: &Base, dir: &Path, expect: &Expect, audit: &Audit, what: &str) {
    let torn = "finding: a torn write of never-acknowledged data at offset";
    match expect {
        Expect::Intact | Expect::EndsBefore(_) => {
            assert_eq!(audit.code, 0, "{what}: {audit}");
            assert!(!audit.stdout.contains(torn), "{what}: {audit}");
        }
        Expect::Torn(i) => {
            assert_eq!(audit.code, 0, "{what}: {audit}");
            let finding = format!("{torn} {} ", base.batches[*i].offset);
            assert!(audit.stdout.contains(&finding), "{what}: {audit}");
        }
        Expect::Refused(refusal) if !refusal.batches.is_empty() => {
            let file = dir.join(refusal.file);
            assert_fail_in(audit, &file, &refusal.offsets, &refusal.batches, what);
        }
        Expect::Refused(refusal) => {
            assert_eq!(audit.code, AUDIT_FAIL, "{what}: {audit}");
            let line = audit.fail_line();
            let file = dir.join(refusal.file).display().to_string();
            assert!(line.contains(&file), "{what}: FAIL names no {file}: {line}");
            if !refusal.offsets.is_empty() {
                let offset = number_after(line, " at offset ");
                assert!(
                    offset.is_some_and(|o| refusal.offsets.contains(&o)),
                    "{what}: offset {offset:?}, wanted one of {:?}: {line}",
                    refusal.offsets
                );
            }
            let position = match refusal.first_position {
                Some(position) => format!("first affected position {position}"),
                None => "affected positions unknown".to_owned(),
            };
            assert!(
                line.contains(&position),
                "{what}: wanted {position}: {line}"
            );
        }
        Expect::Covered(covered) => {
            let file = Base::log_path(dir);
            assert_fail_in(audit, &file, &[], &covered.batches, what);
        }
    }
}

/// Every position read one at a time: each read returns the event as written or fails as
/// `Corrupt` naming its position, and only in `may_fail`. Returns the positions that failed.
async fn read_each(
    store: &EmbeddedStore,
    written: &[RecordedEvent],
    may_fail: Range<u64>,
    what: &str,
) -> Vec<u64> {
    let mut failed = Vec::new();
    for (position, event) in written.iter().enumerate() {
        let position = position as u64;
        match store.read_all(position.checked_sub(1), 1).await {
            Ok(read) => assert_eq!(read, vec![event.clone()], "{what}: position {position}"),
            Err(StoreError::Corrupt { reason, .. })
                if may_fail.contains(&position)
                    && reason.contains(&format!("position {position}")) =>
            {
                failed.push(position);
            }
            Err(other) => panic!("{what}: read of position {position}: {other}"),
        }
    }
    failed
}

async fn read_everything(store: &EmbeddedStore, what: &str) -> Vec<RecordedEvent> {
    store
        .read_all(None, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A serving open of the damaged copy `dir`, then its reads and `verify`, as `expect` says.
async fn check_open(base: &Base, dir: &Path, expect: &Expect, what: &str) {
    let before = data_dir::files(dir);
    let opened = EmbeddedStore::open(dir).await;
    let store = match (expect, opened) {
        (Expect::Refused(refusal), Err(StoreError::Damaged(damage))) => {
            assert_eq!(
                Path::new(&damage.file),
                dir.join(refusal.file),
                "{what}: {damage}"
            );
            if !refusal.offsets.is_empty() {
                assert!(
                    refusal.offsets.contains(&damage.offset),
                    "{what}: refused at {}, wanted one of {:?}: {damage}",
                    damage.offset,
                    refusal.offsets
                );
            }
            assert_eq!(
                damage.first_position, refusal.first_position,
                "{what}: {damage}"
            );
            assert_unchanged(&before, dir, "a refused open", what);
            return;
        }
        (Expect::Refused(_), Err(other)) => panic!("{what}: expected Damaged, got {other}"),
        (Expect::Refused(_), Ok(store)) => {
            let events = store.next_position();
            panic!("{what}: expected Damaged, opened with {events} events");
        }
        (_, Err(error)) => panic!("{what}: did not open: {error}"),
        (_, Ok(store)) => store,
    };
    let opened = store.opened().clone();
    match expect {
        Expect::Refused(_) => unreachable!("handled above"),
        Expect::Intact => {
            assert_eq!(opened.torn_write, None, "{what}");
            assert_eq!(read_everything(&store, what).await, base.events, "{what}");
            store
                .verify()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        Expect::EndsBefore(i) => {
            assert_eq!(opened.torn_write, None, "{what}");
            let read = read_everything(&store, what).await;
            assert_eq!(read, base.before(*i), "{what}");
            store
                .verify()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        Expect::Torn(i) => {
            let offset = base.batches[*i].offset;
            let torn = opened
                .torn_write
                .unwrap_or_else(|| panic!("{what}: no torn write"));
            assert_eq!(torn.offset, offset, "{what}");
            let read = read_everything(&store, what).await;
            assert_eq!(read, base.before(*i), "{what}");
            store
                .verify()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            // The cut bytes are kept, and the log ends where the torn batch started.
            let damaged = &before[Path::new(LOG_FILE_NAME)];
            let kept = std::fs::read(dir.join(format!("{LOG_FILE_NAME}.torn-{offset}")))
                .unwrap_or_else(|e| panic!("{what}: cut bytes not kept: {e}"));
            assert_eq!(kept, damaged[offset as usize..], "{what}");
            let log_len = std::fs::metadata(Base::log_path(dir)).expect("log").len();
            assert_eq!(log_len, offset, "{what}");
        }
        Expect::Covered(covered) => {
            assert_eq!(opened.torn_write, None, "{what}");
            let (first, last) = (&covered.batches[0], covered.batches.last().expect("batch"));
            let may_fail = first.first_position..last.positions().end;
            let failed = read_each(&store, &base.events, may_fail, what).await;
            for position in &covered.unreadable {
                assert!(failed.contains(position), "{what}: {position} was read");
            }
            match store.verify().await {
                Err(StoreError::Damaged(damage)) => {
                    let offset = damage.offset;
                    assert!(
                        (first.offset..first.end).contains(&offset)
                            && (covered.offsets.is_empty() || covered.offsets.contains(&offset)),
                        "{what}: verify found it at {offset}, wanted {:?} in the batch at {}",
                        covered.offsets,
                        first.offset
                    );
                    assert_eq!(
                        damage.first_position,
                        Some(first.first_position),
                        "{what}: {damage}"
                    );
                }
                other => panic!("{what}: verify missed it: {other:?}"),
            }
        }
    }
    store.close().await.expect("close");
}

/// Checks a damaged copy `dir` of a base directory against `expect`: the audit first (which
/// must change nothing), then a serving open, reads and `verify`.
async fn check(base: &Base, dir: &Path, expect: &Expect, what: &str) {
    let before = data_dir::files(dir);
    let audit = run_audit(&base.allot, dir, &[]).await;
    assert_unchanged(&before, dir, "allot audit", what);
    check_audit(base, dir, expect, &audit, what);
    check_open(base, dir, expect, what).await;
}

/// A copy of `from` in a new temporary directory.
fn copy_of(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("temp dir");
    data_dir::copy(from, copy.path());
    copy
}

fn rewrite_log(dir: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let path = Base::log_path(dir);
    let mut bytes = std::fs::read(&path).expect("log");
    change(&mut bytes);
    std::fs::write(&path, bytes).expect("write log");
}

fn flip(dir: &Path, at: u64, mask: u8) {
    rewrite_log(dir, |bytes| bytes[at as usize] ^= mask);
}

fn zero(dir: &Path, range: Range<u64>) {
    rewrite_log(dir, |bytes| {
        bytes[range.start as usize..range.end as usize].fill(0)
    });
}

fn truncate(dir: &Path, len: u64) {
    rewrite_log(dir, |bytes| bytes.truncate(len as usize));
}

/// A byte to flip in one region of a batch, where an open must report it, which records'
/// reads it breaks, and what kind of region it is.
struct Region {
    name: String,
    at: u64,
    offsets: Vec<u64>,
    unreadable: Vec<u64>,
    /// The stream name of a frame that starts its stream: renamed, it still starts one.
    new_stream_name: bool,
}

/// One byte of every field of the batch header, of its first frame and of its first and last
/// records, and of their kinds and payloads.
fn regions(batch: &Batch) -> Vec<Region> {
    let region = |name: String, at: u64, offsets: Vec<u64>| Region {
        name,
        at,
        offsets,
        unreadable: Vec::new(),
        new_stream_name: false,
    };
    let mut out = Vec::new();
    for field in BATCH_FIELDS {
        let at = batch.offset + field.at;
        out.push(region(field.name.to_owned(), at, vec![batch.offset]));
    }
    let frame = &batch.frames[0];
    // A changed stream name may still parse: then the records' leaves, which cover it, fail.
    let frame_or_record: Vec<u64> = std::iter::once(frame.offset)
        .chain(frame.records.iter().map(|r| r.offset))
        .collect();
    for field in FRAME_FIELDS {
        // The first record's leaf covers the frame's first version, and may be checked first.
        let offsets = match field.name {
            "frame stream length" => frame_or_record.clone(),
            "frame first version" => vec![frame.offset, frame.records[0].offset],
            _ => vec![frame.offset],
        };
        out.push(region(
            field.name.to_owned(),
            frame.offset + field.at,
            offsets,
        ));
    }
    out.push(Region {
        new_stream_name: frame.first_version == 0,
        ..region(
            "frame stream name".to_owned(),
            frame.offset + FRAME_FIXED_BYTES + frame.stream_len / 2,
            frame_or_record,
        )
    });
    let last_frame = batch.frames.last().expect("frames");
    let last = last_frame.records.last().expect("records");
    for (which, frame, record) in [
        ("first", frame, &frame.records[0]),
        ("last", last_frame, last),
    ] {
        let unreadable = vec![record.position];
        for field in EVENT_FIELDS {
            // A record's lengths are its frame's structure too.
            let length = field.name.ends_with("length");
            let offsets = if length {
                vec![frame.offset, record.offset]
            } else {
                vec![record.offset]
            };
            out.push(Region {
                unreadable: unreadable.clone(),
                ..region(
                    format!("{which} record's {}", field.name),
                    record.offset + field.at + field.len / 2,
                    offsets,
                )
            });
        }
        for (name, at) in [
            ("kind", record.kind_at() + record.kind_len / 2),
            ("first payload byte", record.payload_at()),
            ("last payload byte", record.offset + record.len - 1),
        ] {
            out.push(Region {
                unreadable: unreadable.clone(),
                ..region(format!("{which} record's {name}"), at, vec![record.offset])
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_anywhere_in_an_acknowledged_batch_is_refused_where_it_is() {
    let base = base().await;
    let n = base.batches.len();
    for (place, batch) in [
        ("first batch", &base.batches[0]),
        ("middle batch", &base.batches[n / 2]),
        ("last acknowledged batch", &base.batches[n - 2]),
    ] {
        for region in regions(batch) {
            let what = format!("{place}: {}", region.name);
            let case = copy_of(&base.dir);
            flip(case.path(), region.at, 0x01);
            let expect = refused_in(batch, region.offsets);
            if region.new_stream_name {
                // The audit's side of this one: `the_audit_names_the_first_damaged_batch`.
                check_open(base, case.path(), &expect, &what).await;
            } else {
                check(base, case.path(), &expect, &what).await;
            }
        }
    }
}

/// Damage anywhere in the last batch is a torn write to the serving open, to the audit, and to
/// `allot repair`, which offers to remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_last_batch_is_cut_as_a_torn_write() {
    let base = base().await;
    let last = base.batches.len() - 1;
    let (offset, end) = (base.last().offset, base.last().end);
    let offer = format!("would: remove {} bytes at offset {offset}", end - offset);
    for region in regions(base.last()) {
        let what = format!("last batch: {}", region.name);
        let case = copy_of(&base.dir);
        flip(case.path(), region.at, 0x01);
        let repair = tokio::process::Command::new(&base.allot)
            .arg("repair")
            .arg(case.path())
            .output()
            .await
            .expect("run allot repair");
        let said = String::from_utf8_lossy(&repair.stdout).into_owned();
        assert!(said.contains(&offer), "{what}: wanted {offer:?}: {said}");
        check(base, case.path(), &Expect::Torn(last), &what).await;
    }
}

/// The audit verifies each batch with its stored leaves (the root over them, the chain), and
/// each record against its leaf only as it reads it. Damage that leaves the stored leaves
/// intact (a record's id, kind or payload; a stream name that still parses) passes the batch
/// checks; when they then stop at a later batch (more damage there, or a batch that no longer
/// continues a renamed stream), the audit names that later batch as the first affected one,
/// where a serving open names the damaged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_names_the_first_damaged_batch() {
    let base = base().await;
    let n = base.batches.len();
    // The first batch's stream name, renamed to a new stream: the next batch of that stream no
    // longer continues it.
    let batch = &base.batches[0];
    let region = regions(batch)
        .into_iter()
        .find(|r| r.new_stream_name)
        .expect("the first batch starts a stream");
    let case = copy_of(&base.dir);
    flip(case.path(), region.at, 0x01);
    let what = "first batch's stream name";
    check(base, case.path(), &refused_in(batch, region.offsets), what).await;
    // Zeros from a middle batch's last payload bytes through the next batch's magic.
    let batch = &base.batches[n / 2];
    let record = batch
        .frames
        .last()
        .and_then(|f| f.records.last())
        .expect("a record");
    let from = (record.payload_at()..batch.end)
        .rev()
        .find(|at| base.log[*at as usize] != 0)
        .expect("a payload byte that is not zero");
    let case = copy_of(&base.dir);
    zero(case.path(), from..batch.end + 8);
    let what = "zeros over a batch's last payload bytes and the next batch's magic";
    check(
        base,
        case.path(),
        &refused_in(batch, vec![record.offset]),
        what,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_inside_the_snapshots_range_fails_reads_verify_and_the_audit() {
    let base = base().await;
    let batch = &base.batches[base.batches.len() / 2];
    for region in regions(batch) {
        let what = format!("covered batch: {}", region.name);
        let case = copy_of(&base.snap);
        flip(case.path(), region.at, 0x01);
        let expect = Expect::Covered(Covered {
            batches: vec![batch.clone()],
            offsets: region.offsets,
            unreadable: region.unreadable,
        });
        check(base, case.path(), &expect, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_tails_are_refused_unless_only_the_last_batch_is_zeroed() {
    let base = base().await;
    let n = base.batches.len();
    let end = base.log.len() as u64;
    for k in [1, 2, 3, n / 2, n] {
        let batch = &base.batches[n - k];
        // From the batch's start, and from inside its first frame, to the end of the log.
        let frame = &batch.frames[0];
        for (from, offsets) in [
            (batch.offset, vec![batch.offset]),
            (frame.offset + 8, vec![frame.offset]),
        ] {
            let what = format!("zeros from {from} over the last {k} batches");
            let case = copy_of(&base.dir);
            zero(case.path(), from..end);
            let expect = if k == 1 {
                Expect::Torn(n - 1)
            } else {
                refused_in(batch, offsets)
            };
            check(base, case.path(), &expect, &what).await;
        }
    }
    // One batch zeroed whole, valid ones after it.
    let batch = &base.batches[n / 2];
    let case = copy_of(&base.dir);
    zero(case.path(), batch.offset..batch.end);
    let what = "one middle batch zeroed";
    check(
        base,
        case.path(),
        &refused_in(batch, vec![batch.offset]),
        what,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_opens_only_inside_or_at_the_start_of_the_last_batch() {
    let base = base().await;
    let n = base.batches.len();
    for (i, batch) in base.batches.iter().enumerate() {
        let last = i == n - 1;
        let what = format!("cut at the start of batch {i} ({})", batch.offset);
        let case = copy_of(&base.dir);
        truncate(case.path(), batch.offset);
        let expect = if last {
            Expect::EndsBefore(i)
        } else {
            let first = Some(batch.first_position);
            refused(LOG_FILE_NAME, vec![batch.offset], first)
        };
        check(base, case.path(), &expect, &what).await;
        let header_end = batch.offset + BATCH_HEADER_BYTES as u64;
        let mut cuts = vec![batch.offset + 1, header_end, (header_end + batch.end) / 2];
        if last {
            cuts.extend([header_end - 1, batch.end - 1]);
        }
        for cut in cuts {
            let what = format!("cut at {cut}, inside batch {i}");
            let case = copy_of(&base.dir);
            truncate(case.path(), cut);
            let expect = if last {
                Expect::Torn(i)
            } else {
                // Named at the cut, where the missing bytes start.
                let first = Some(batch.first_position);
                refused(LOG_FILE_NAME, vec![cut], first)
            };
            check(base, case.path(), &expect, &what).await;
        }
    }
    // Inside the file header and the head slots.
    for cut in [0, 1, 16, 39, 40, 511, 512, 600, FILE_HEADER_BYTES - 1] {
        let what = format!("cut at {cut}, inside the file header or the head slots");
        let case = copy_of(&base.dir);
        truncate(case.path(), cut);
        let offset = if cut < FILE_HEADER_CHECKED_BYTES {
            0
        } else {
            cut
        };
        let expect = refused(LOG_FILE_NAME, vec![offset], Some(0));
        check(base, case.path(), &expect, &what).await;
    }
    let case = copy_of(&base.dir);
    check(base, case.path(), &Expect::Intact, "not cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_header_and_the_head_slots() {
    let base = base().await;
    for field in FILE_HEADER_FIELDS {
        let case = copy_of(&base.dir);
        flip(case.path(), field.at, 0x01);
        let expect = refused(LOG_FILE_NAME, vec![0], Some(0));
        check(base, case.path(), &expect, field.name).await;
    }
    // A damaged head slot loses nothing (the log is whole). The newest one's damage is what a
    // torn write of the next batch leaves: no finding. Any other is a FAIL of the audit: the
    // slots are the durable record of the log's length.
    let newest = (base.batches.len() as u64 - 1) % HEAD_SLOTS;
    for (slot, fails) in [
        (newest, false),
        ((newest + HEAD_SLOTS - 1) % HEAD_SLOTS, true),
    ] {
        for field in SLOT_FIELDS {
            let what = format!("slot {slot}: {}", field.name);
            let case = copy_of(&base.dir);
            flip(case.path(), log_layout::slot_offset(slot) + field.at, 0x01);
            let audit = run_audit(&base.allot, case.path(), &[]).await;
            if fails {
                assert_eq!(audit.code, AUDIT_FAIL, "{what}: {audit}");
                assert!(audit.fail_line().contains("head slots"), "{what}: {audit}");
            } else {
                assert_eq!(audit.code, 0, "{what}: {audit}");
            }
            check_open(base, case.path(), &Expect::Intact, &what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_emptied_swapped_and_foreign_files() {
    let base = base().await;
    let log = LOG_FILE_NAME;
    let id = STORE_ID_FILE_NAME;
    type Change = fn(&Path, &Path);
    let cases: Vec<(&str, bool, Change, Expect)> = vec![
        (
            "events.log deleted",
            false,
            |dir, _| std::fs::remove_file(dir.join(LOG_FILE_NAME)).unwrap(),
            refused(log, vec![0], Some(0)),
        ),
        (
            "events.log renamed",
            false,
            |dir, _| std::fs::rename(dir.join(LOG_FILE_NAME), dir.join("events.log.old")).unwrap(),
            refused(log, vec![0], Some(0)),
        ),
        (
            "events.log emptied",
            false,
            |dir, _| std::fs::write(dir.join(LOG_FILE_NAME), b"").unwrap(),
            refused(log, vec![0], Some(0)),
        ),
        (
            "events.log and store.id deleted beside a snapshot",
            true,
            |dir, _| {
                std::fs::remove_file(dir.join(LOG_FILE_NAME)).unwrap();
                std::fs::remove_file(dir.join(STORE_ID_FILE_NAME)).unwrap();
            },
            refused(log, vec![0], Some(0)),
        ),
        (
            "events.log and index.snapshot swapped",
            true,
            |dir, _| {
                let (a, b) = (dir.join(LOG_FILE_NAME), dir.join(SNAPSHOT_FILE_NAME));
                let swap = dir.join("swap");
                std::fs::rename(&a, &swap).unwrap();
                std::fs::rename(&b, &a).unwrap();
                std::fs::rename(&swap, &b).unwrap();
            },
            refused(log, vec![0], Some(0)),
        ),
        (
            "store.id deleted",
            false,
            |dir, _| std::fs::remove_file(dir.join(STORE_ID_FILE_NAME)).unwrap(),
            refused(id, vec![0], Some(0)),
        ),
        (
            "store.id emptied",
            false,
            |dir, _| std::fs::write(dir.join(STORE_ID_FILE_NAME), b"").unwrap(),
            refused(id, vec![0], None),
        ),
        (
            "store.id of another log",
            false,
            |dir, other| {
                std::fs::copy(other.join(STORE_ID_FILE_NAME), dir.join(STORE_ID_FILE_NAME))
                    .unwrap();
            },
            refused(log, vec![16], Some(0)),
        ),
        (
            "events.log of another directory",
            false,
            |dir, other| {
                std::fs::copy(other.join(LOG_FILE_NAME), dir.join(LOG_FILE_NAME)).unwrap();
            },
            refused(log, vec![16], Some(0)),
        ),
        (
            "events.log and store.id of another directory under this one's snapshot",
            true,
            |dir, other| {
                for name in [LOG_FILE_NAME, STORE_ID_FILE_NAME] {
                    std::fs::copy(other.join(name), dir.join(name)).unwrap();
                }
            },
            refused(log, Vec::new(), None),
        ),
        (
            "index.snapshot deleted",
            true,
            |dir, _| std::fs::remove_file(dir.join(SNAPSHOT_FILE_NAME)).unwrap(),
            Expect::Intact,
        ),
        (
            "index.snapshot emptied",
            true,
            |dir, _| std::fs::write(dir.join(SNAPSHOT_FILE_NAME), b"").unwrap(),
            Expect::Intact,
        ),
        (
            "LOCK deleted",
            false,
            |dir, _| std::fs::remove_file(dir.join(LOCK_FILE_NAME)).unwrap(),
            Expect::Intact,
        ),
    ];
    for (what, with_snapshot, change, expect) in cases {
        let case = copy_of(if with_snapshot { &base.snap } else { &base.dir });
        change(case.path(), &base.other);
        check(base, case.path(), &expect, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_log_restored_under_a_newer_snapshot_is_refused() {
    let base = base().await;
    let case = copy_of(&base.snap);
    std::fs::write(Base::log_path(case.path()), &base.older_log).unwrap();
    let older = base.older_log.len() as u64;
    let expect = refused(LOG_FILE_NAME, vec![older], None);
    check(
        base,
        case.path(),
        &expect,
        "older events.log, newer snapshot",
    )
    .await;

    // Without a snapshot an older log is a whole log: only a head published earlier tells.
    let case = copy_of(&base.dir);
    std::fs::write(Base::log_path(case.path()), &base.older_log).unwrap();
    let audit = run_audit(&base.allot, case.path(), &[]).await;
    assert_eq!(audit.code, 0, "{audit}");
    let published = run_audit(&base.allot, &base.dir, &[]).await;
    let head = published.head();
    let audit = run_audit(&base.allot, case.path(), &["--expect-head", head]).await;
    assert_eq!(audit.code, AUDIT_FAIL, "{audit}");
    assert!(audit.fail_line().contains("rolled back"), "{audit}");
}

/// `allot serve` on `dir`, until it exits by itself: its exit status and what it printed on
/// stderr. Fails the test if it still runs at the deadline (it is killed then).
async fn serve_until_exit(allot: &Path, dir: &Path) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(allot)
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn allot serve");
    let out = tokio::time::timeout(SERVE_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("allot serve kept serving {}", dir.display()))
        .expect("allot serve");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn log_of(dir: &Path) -> String {
    Base::log_path(dir).display().to_string()
}

/// `allot serve` on a directory, once it says where it serves (whether healthy or not).
struct Serving {
    child: tokio::process::Child,
    base: String,
}

async fn serve(allot: &Path, dir: &Path) -> Serving {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(allot)
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn allot serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let base = tokio::time::timeout(SERVE_DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("allot serving on ") {
                return url.trim().to_owned();
            }
        }
        panic!("allot serve exited before serving");
    })
    .await
    .expect("allot serve says where it serves");
    // Whatever it prints later is read, so it never writes to a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Serving { child, base }
}

/// A batch in the middle of the log holding an event of the pool's stream, and that record.
fn pool_record_in_the_middle(base: &Base) -> (&Batch, &log_layout::Record) {
    let stream = pool_stream(&PoolId::new(POOL));
    let n = base.batches.len();
    let candidates: Vec<&Batch> = base.batches[1..n - 1]
        .iter()
        .filter(|b| b.frames.iter().any(|f| f.stream == stream))
        .collect();
    let batch = candidates[candidates.len() / 2];
    let frame = batch
        .frames
        .iter()
        .find(|f| f.stream == stream)
        .expect("a frame of the pool");
    (batch, &frame.records[0])
}

/// Over HTTP: a service over a directory with a damaged record inside its snapshot's range (and
/// a projections checkpoint past it, so start-up reads nothing there) serves, but turns
/// `/healthz` unhealthy, answers every read as before or refuses it naming the damage (the
/// reservation whose event it is), refuses every command that needs the damaged pool's events,
/// and writes nothing. Without the checkpoint, or without the snapshot, `allot serve` does not
/// start, and says where the damage is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_never_answers_from_a_damaged_record() {
    let base = base().await;
    let (batch, record) = pool_record_in_the_middle(base);
    let at = record.payload_at() + record.payload_len / 2;

    // Damage found when the store opens: refused, at the record.
    let case = copy_of(&base.dir);
    flip(case.path(), at, 0x01);
    let (status, stderr) = serve_until_exit(&base.allot, case.path()).await;
    assert!(!status.success(), "{stderr}");
    let log = Base::log_path(case.path()).display().to_string();
    let refusal = format!(
        "acknowledged data missing or damaged in {log} at offset {} (first affected position {}",
        record.offset, batch.first_position
    );
    assert!(stderr.contains(&refusal), "wanted {refusal:?}: {stderr}");

    // Inside the snapshot's range, no checkpoint: start-up reads the record, and stops there.
    let case = copy_of(&base.snap);
    flip(case.path(), at, 0x01);
    let (status, stderr) = serve_until_exit(&base.allot, case.path()).await;
    assert!(!status.success(), "{stderr}");
    let log = Base::log_path(case.path()).display().to_string();
    let corrupt = format!("corrupt log {log} at offset {}", record.offset);
    assert!(stderr.contains(&corrupt), "wanted {corrupt:?}: {stderr}");
    let position = format!("position {}", record.position);
    assert!(stderr.contains(&position), "wanted {position:?}: {stderr}");

    // With a checkpoint past it the service starts without reading it.
    let case = copy_of(&base.snap);
    let rebuilt = tokio::process::Command::new(&base.allot)
        .arg("rebuild")
        .arg(case.path())
        .output()
        .await
        .expect("run allot rebuild");
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    flip(case.path(), at, 0x01);
    let damaged_log = std::fs::read(Base::log_path(case.path())).expect("log");
    let mut server = serve(&base.allot, case.path()).await;
    let probe = allot_process::reader(&server.base);
    let deadline = Instant::now() + SERVE_DEADLINE;
    let health = loop {
        let answer = probe.get("/healthz").await.expect("healthz");
        if answer.status != 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed healthy over a damaged log"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(health.status, 503, "{health:?}");
    let reason = health.body["damage"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("at offset {}", record.offset)),
        "{health:?}"
    );

    let (key_file, key) =
        KeyFile::read(&case.path().join("keys").join("admin.key")).expect("admin key");
    let admin = Client::new(server.base.clone(), ActorId::new(key_file.actor), key);
    // Answered as before, or refused naming the damage (the reservation whose event it is).
    let damage = format!(
        "corrupt log {} at offset {}",
        log_of(case.path()),
        record.offset
    );
    let mut refused_reads = 0;
    for (id, shown) in &base.reservations {
        let answer = admin.reservation(id).await.expect("read");
        if answer.is_success() {
            assert_eq!(&answer.body, shown, "{id}");
        } else {
            let detail = answer.body["detail"].as_str().unwrap_or_default();
            assert!(
                answer.status == 503 && detail.contains(&damage),
                "read of {id}: {answer:?}"
            );
            refused_reads += 1;
        }
    }
    assert!(refused_reads <= 1, "{refused_reads} reads refused");
    let client = Client::new(
        server.base.clone(),
        ActorId::new("damage-client"),
        SigningKey::from_bytes(&[7; 32]),
    );
    let open = &base.reservations[CONFIRMS + CANCELS].0;
    let confirm = Action::ConfirmReservation {
        reservation: open.seq,
    };
    let reserve = Action::Reserve {
        resource: "seat-after".to_owned(),
        requester: "student-after".to_owned(),
        duration_ms: 3_600_000,
        count: 1,
    };
    for (action, token) in [(&confirm, "confirm-after"), (&reserve, "reserve-after")] {
        for attempt in 0..2 {
            let answer = client
                .send(&open.pool, action, token)
                .await
                .expect("command");
            let detail = answer.body["detail"].as_str().unwrap_or_default();
            assert!(
                answer.status == 503 && detail.contains(&damage),
                "{token} (attempt {attempt}) over a damaged pool: {answer:?}"
            );
        }
    }
    server.child.kill().await.expect("kill allot serve");
    assert!(
        std::fs::read(Base::log_path(case.path())).expect("log") == damaged_log,
        "the service wrote to the damaged log"
    );
}

/// Random damage to the log: a flipped byte, a zeroed range or a cut.
#[derive(Debug, Clone)]
enum RandomDamage {
    Flip { at: u64, mask: u8 },
    Zero { at: u64, len: u64 },
    Truncate { len: u64 },
}

impl RandomDamage {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        match *self {
            RandomDamage::Flip { at, mask } => out[at as usize] ^= mask,
            RandomDamage::Zero { at, len } => {
                let end = (at + len).min(out.len() as u64);
                out[at as usize..end as usize].fill(0);
            }
            RandomDamage::Truncate { len } => out.truncate(len as usize),
        }
        out
    }
}

/// Damage of a file of `len` bytes; offsets from `dense_from` on are drawn more often.
fn random_damage(len: u64, dense_from: u64) -> impl Strategy<Value = RandomDamage> {
    let at = prop_oneof![1 => 0..len, 3 => dense_from..len];
    prop_oneof![
        (at.clone(), 1u8..=255).prop_map(|(at, mask)| RandomDamage::Flip { at, mask }),
        (at.clone(), 1..=ZEROED_BYTES_MAX).prop_map(|(at, len)| RandomDamage::Zero { at, len }),
        at.prop_map(|len| RandomDamage::Truncate { len }),
    ]
}

/// What the rules make of one damaged log (`damaged`, from the base log), with or without the
/// snapshot: the expectation, and whether the audit FAILs on a damaged head slot (when nothing
/// worse is found).
struct Judged {
    expect: Expect,
    slots_fail: bool,
}

fn judge(base: &Base, damaged: &[u8], snapshot: bool) -> Judged {
    let log = &base.log;
    let len = damaged.len() as u64;
    let cut = (len < log.len() as u64).then_some(len);
    let changed = |range: Range<u64>| {
        range
            .clone()
            .filter(|at| *at < len)
            .find(|at| damaged[*at as usize] != log[*at as usize])
    };
    // Head slots as a reader finds them: unchanged (valid), zeroed (empty) or damaged.
    let mut newest: Option<u64> = None;
    let mut damaged_slots = Vec::new();
    for slot in 0..HEAD_SLOTS {
        let at = log_layout::slot_offset(slot);
        let range = at as usize..(at + SLOT_BYTES) as usize;
        if len < range.end as u64 {
            continue;
        }
        if damaged[range.clone()] == log[range.clone()] {
            let sequence =
                u64::from_le_bytes(log[range.start + 8..range.start + 16].try_into().unwrap());
            newest = newest.max(Some(sequence));
        } else if damaged[range].iter().any(|b| *b != 0) {
            damaged_slots.push(slot);
        }
    }
    let in_flight = newest.map_or(0, |s| (s + 1) % HEAD_SLOTS);
    let slots_fail = damaged_slots.iter().any(|slot| *slot != in_flight);
    let judged = |expect| Judged { expect, slots_fail };

    if cut.is_some_and(|c| c < FILE_HEADER_CHECKED_BYTES)
        || changed(0..FILE_HEADER_CHECKED_BYTES).is_some()
    {
        return judged(refused(LOG_FILE_NAME, vec![0], Some(0)));
    }
    if let Some(cut) = cut.filter(|c| *c < FILE_HEADER_BYTES) {
        return judged(refused(LOG_FILE_NAME, vec![cut], Some(0)));
    }
    let first_changed = changed(FILE_HEADER_BYTES..log.len() as u64);
    let first_bad = match (first_changed, cut) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    let Some(at) = first_bad else {
        return judged(Expect::Intact);
    };
    let index_of = |at: u64| {
        base.batches
            .iter()
            .position(|b| (b.offset..b.end).contains(&at))
            .expect("inside a batch")
    };
    let i = index_of(at);
    let batch = &base.batches[i];
    // Every batch the damage reaches, from the first.
    let last_touched = match cut {
        Some(_) => base.batches.len() - 1,
        None => index_of(
            (at..log.len() as u64)
                .rev()
                .find(|x| damaged[*x as usize] != log[*x as usize])
                .expect("a changed byte"),
        ),
    };
    let touched = base.batches[i..=last_touched].to_vec();
    let n = base.batches.len();
    let refusal = |offsets: Vec<u64>| {
        Expect::Refused(Refusal {
            file: LOG_FILE_NAME,
            offsets,
            first_position: Some(batch.first_position),
            batches: touched.clone(),
        })
    };
    // Where the checks may stop: anything at or before the damage; a record after it in the
    // same frame (its leaf covers the frame's stream name and versions); the cut, where the
    // missing bytes start.
    let stops = || {
        let frame_records = batch
            .frames
            .iter()
            .filter(|f| (f.offset..f.offset + f.len).contains(&at))
            .flat_map(|f| f.records.iter().map(|r| r.offset));
        starts(batch)
            .filter(|s| *s <= at)
            .chain(frame_records)
            .chain(cut)
            .collect::<Vec<u64>>()
    };
    if snapshot {
        // The snapshot proves every batch it covers was acknowledged: the refusal names what a
        // scan of the log finds, or, for a log cut cleanly at a batch, where it ends.
        if let Some(cut) = cut
            && cut == batch.offset
        {
            return judged(refused(LOG_FILE_NAME, vec![cut], None));
        }
        if cut.is_some() || i == 0 || last_touched == n - 1 {
            return judged(refusal(stops()));
        }
        return judged(Expect::Covered(Covered {
            batches: touched,
            offsets: Vec::new(),
            unreadable: Vec::new(),
        }));
    }
    // Every batch before the newest valid slot's was acknowledged.
    let acknowledged_end = newest.map_or(FILE_HEADER_BYTES, |s| base.batches[s as usize].offset);
    if cut == Some(at) && at == batch.offset {
        return judged(if at < acknowledged_end {
            refused(LOG_FILE_NAME, vec![at], Some(batch.first_position))
        } else {
            Expect::EndsBefore(i)
        });
    }
    if batch.offset < acknowledged_end {
        return judged(refusal(stops()));
    }
    // At or after the batch that may have been in flight: a torn write, unless a whole batch
    // header follows.
    let header_intact = |b: &Batch| {
        b.offset + BATCH_HEADER_BYTES as u64 <= len
            && changed(b.offset..b.offset + BATCH_HEADER_BYTES as u64).is_none()
    };
    if base.batches[i + 1..].iter().any(header_intact) {
        return judged(refusal(vec![batch.offset]));
    }
    judged(Expect::Torn(i))
}

/// The audit's side of a random case: (b) as stated, with the latitude the audit's way of
/// checking acknowledged batches gives it (`the_audit_names_the_first_damaged_batch` holds it
/// to the strict rule): its FAIL may name any damaged batch, not only the first.
fn check_audit_property(base: &Base, dir: &Path, judged: &Judged, audit: &Audit, what: &str) {
    let slots =
        |audit: &Audit| audit.code == AUDIT_FAIL && audit.fail_line().contains("head slots");
    match &judged.expect {
        Expect::Intact | Expect::EndsBefore(_) if judged.slots_fail => {
            assert!(slots(audit), "{what}: {audit}")
        }
        Expect::Torn(i) => {
            let torn = format!(
                "finding: a torn write of never-acknowledged data at offset {} ",
                base.batches[*i].offset
            );
            assert!(audit.stdout.contains(&torn), "{what}: {audit}");
            if judged.slots_fail {
                assert!(slots(audit), "{what}: {audit}");
            } else {
                assert_eq!(audit.code, 0, "{what}: {audit}");
            }
        }
        expect => check_audit(base, dir, expect, audit, what),
    }
}

/// Which file of the snapshot directory a random damage goes to.
#[derive(Debug, Clone)]
enum Target {
    Log(RandomDamage),
    Snapshot(RandomDamage),
}

async fn check_random(base: &Base, target: &Target, snapshot: bool) {
    let case = copy_of(if snapshot { &base.snap } else { &base.dir });
    let what = format!("{target:?}");
    let judged = match target {
        Target::Log(damage) => {
            let damaged = damage.apply(&base.log);
            std::fs::write(Base::log_path(case.path()), &damaged).expect("write log");
            judge(base, &damaged, snapshot)
        }
        Target::Snapshot(damage) => {
            // Derived data: ignored (a serving open removes it), the log scanned whole.
            let path = case.path().join(SNAPSHOT_FILE_NAME);
            let bytes = std::fs::read(&path).expect("snapshot");
            std::fs::write(&path, damage.apply(&bytes)).expect("write snapshot");
            Judged {
                expect: Expect::Intact,
                slots_fail: false,
            }
        }
    };
    let before = data_dir::files(case.path());
    let audit = run_audit(&base.allot, case.path(), &[]).await;
    assert_unchanged(&before, case.path(), "allot audit", &what);
    check_audit_property(base, case.path(), &judged, &audit, &what);
    check_open(base, case.path(), &judged.expect, &what).await;
}

fn run_property(snapshot: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = runtime.block_on(base());
    let mut config = Config {
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = PROPERTY_CASES;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(PROPERTY_SEED);
    }
    let log_len = base.log.len() as u64;
    let snapshot_len = std::fs::metadata(base.snap.join(SNAPSHOT_FILE_NAME))
        .expect("snapshot")
        .len();
    let targets = if snapshot {
        prop_oneof![
            3 => random_damage(log_len, FILE_HEADER_BYTES).prop_map(Target::Log),
            1 => random_damage(snapshot_len, 0).prop_map(Target::Snapshot),
        ]
        .boxed()
    } else {
        random_damage(log_len, FILE_HEADER_BYTES)
            .prop_map(Target::Log)
            .boxed()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&targets, |target| {
        runtime.block_on(check_random(base, &target, snapshot));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn random_damage_to_the_log_is_refused_cut_as_torn_or_harmless() {
    run_property(false);
}

#[test]
fn random_damage_under_a_snapshot_is_refused_or_found_by_reads_verify_and_the_audit() {
    run_property(true);
}

/// `allot audit` takes no lock and writes nothing: every file of the directory (names, sizes,
/// bytes) is the same after it, and no file appears, not even `LOCK`, whatever it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_changes_no_byte_of_the_directory() {
    let base = base().await;
    let n = base.batches.len();
    let (middle, record) = pool_record_in_the_middle(base);
    let last = base.last();
    type Change = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, &Path, Change, i32)> = vec![
        ("clean", &base.dir, Box::new(|_: &Path| {}), 0),
        (
            "torn",
            &base.dir,
            Box::new(|dir: &Path| truncate(dir, (last.offset + last.end) / 2)),
            0,
        ),
        (
            "damaged",
            &base.dir,
            Box::new(|dir: &Path| flip(dir, middle.offset + 40, 0x01)),
            AUDIT_FAIL,
        ),
        (
            "clean, with a snapshot",
            &base.snap,
            Box::new(|_: &Path| {}),
            0,
        ),
        (
            "damaged snapshot",
            &base.snap,
            Box::new(|dir: &Path| {
                std::fs::write(dir.join(SNAPSHOT_FILE_NAME), b"not a snapshot").unwrap()
            }),
            0,
        ),
        (
            "damaged record inside the snapshot's range",
            &base.snap,
            Box::new(|dir: &Path| flip(dir, record.payload_at(), 0x01)),
            AUDIT_FAIL,
        ),
    ];
    let head = run_audit(&base.allot, &base.dir, &[])
        .await
        .head()
        .to_owned();
    let older = format!("{}:{}", base.batches[n / 2].first_position, "00".repeat(32));
    for (what, from, change, code) in cases {
        let case = copy_of(from);
        std::fs::remove_file(case.path().join(LOCK_FILE_NAME)).expect("no LOCK");
        change(case.path());
        let before = data_dir::files(case.path());
        for args in [
            vec![],
            vec!["--json"],
            vec!["--no-signatures"],
            vec!["--expect-head", &head],
            vec!["--expect-head", &older],
        ] {
            let audit = run_audit(&base.allot, case.path(), &args).await;
            let what = format!("{what}, audit {args:?}");
            assert_unchanged(&before, case.path(), "allot audit", &what);
            if args.is_empty() {
                assert_eq!(audit.code, code, "{what}: {audit}");
            }
        }
    }
}

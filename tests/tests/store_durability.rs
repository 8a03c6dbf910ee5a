//! Durability of the embedded store: kill -9 under load, torn tails, corruption, the lock.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use allot_server::store::embedded::{
    BATCH_HEADER_BYTES, EmbeddedStore, LOG_FILE_NAME, STORE_ID_FILE_NAME,
};
use allot_server::store::{EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError};
use allot_tests::seeded::Rng;

/// Kill/reopen rounds in the crash test, on one growing data directory.
const KILL_ROUNDS: u64 = 20;
/// Seed of the crash test's kill points; printed so a failure can be replayed.
const KILL_SEED: u64 = 0x5eed_a110;

/// Taken by every test here. A child spawned by the crash test holds copies of this process's
/// descriptors until its exec, the directory lock of another test's open store included, so a
/// reopen in that window would see `Locked`.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn event(payload: &str) -> ProposedEvent {
    ProposedEvent {
        id: [1; 16],
        kind: "T".to_owned(),
        payload: payload.as_bytes().to_vec(),
    }
}

async fn read_everything(store: &EmbeddedStore) -> Vec<RecordedEvent> {
    store.read_all(None, usize::MAX).await.unwrap()
}

/// An acknowledged append as the writer process printed it.
#[derive(Debug)]
struct Ack {
    stream: String,
    first_version: u64,
    count: usize,
    tag: String,
}

fn parse_ack(line: &str) -> Ack {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 5, "bad line {line:?}");
    assert_eq!(parts[0], "ack");
    Ack {
        stream: parts[1].to_owned(),
        first_version: parts[2].parse().unwrap(),
        count: parts[3].parse().unwrap(),
        tag: parts[4].to_owned(),
    }
}

/// Runs the writer process on `dir`, kills it with SIGKILL after it has acknowledged
/// `kill_after` appends, and returns every acknowledgement it printed.
fn run_writer_and_kill(dir: &Path, run: u64, kill_after: u64, jitter_ms: u64) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store_writer"))
        .arg(dir)
        .arg(run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut lines = 0;
    while lines < kill_after {
        let n = stdout.read_line(&mut text).unwrap();
        assert!(n > 0, "writer exited before it was killed");
        lines += 1;
    }
    if jitter_ms > 0 {
        // Varies where in a batch the kill lands; correctness must not depend on it.
        std::thread::sleep(Duration::from_millis(jitter_ms));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    stdout.read_to_string(&mut text).unwrap();
    // A line cut by the kill was not printed in full, so its append is not known as acked.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(parse_ack).collect()
}

/// Each payload is `TAG|INDEX|COUNT|padding`.
fn parse_payload(payload: &[u8]) -> (String, usize, usize) {
    let text = String::from_utf8_lossy(payload);
    let parts: Vec<&str> = text.splitn(4, '|').collect();
    (
        parts[0].to_owned(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    )
}

/// Every acked append present, every append whole, every stream contiguous.
fn check_after_crash(all: &[RecordedEvent], acked: &[Ack]) {
    // tag → (stream, versions, indexes, count)
    let mut appends: HashMap<String, (String, Vec<u64>, Vec<usize>, usize)> = HashMap::new();
    let mut streams: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64, "positions not contiguous");
        streams.entry(&e.stream).or_default().push(e.version);
        let (tag, index, count) = parse_payload(&e.payload);
        let entry = appends
            .entry(tag)
            .or_insert_with(|| (e.stream.clone(), Vec::new(), Vec::new(), count));
        assert_eq!(entry.0, e.stream);
        entry.1.push(e.version);
        entry.2.push(index);
    }
    for (stream, versions) in &streams {
        let expected: Vec<u64> = (0..versions.len() as u64).collect();
        assert_eq!(versions, &expected, "stream {stream} not contiguous");
    }
    for (tag, (stream, versions, indexes, count)) in &appends {
        let whole: Vec<usize> = (0..*count).collect();
        assert_eq!(indexes, &whole, "append {tag} on {stream} is partial");
        let run: Vec<u64> = (versions[0]..versions[0] + *count as u64).collect();
        assert_eq!(versions, &run, "append {tag} on {stream} is not contiguous");
    }
    for ack in acked {
        let Some((stream, versions, _, count)) = appends.get(&ack.tag) else {
            panic!("acknowledged append {ack:?} is lost");
        };
        assert_eq!(
            (stream, versions[0], *count),
            (&ack.stream, ack.first_version, ack.count),
            "acknowledged append {} landed elsewhere",
            ack.tag
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_append_and_tears_none() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(KILL_SEED);
    let mut acked = Vec::new();
    for run in 0..KILL_ROUNDS {
        let kill_after = rng.below(400);
        let jitter_ms = if kill_after == 0 {
            rng.below(40)
        } else {
            rng.below(4)
        };
        eprintln!("seed {KILL_SEED:#x} run {run}: kill after {kill_after} acks + {jitter_ms} ms");
        acked.extend(run_writer_and_kill(dir.path(), run, kill_after, jitter_ms));

        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let all = read_everything(&store).await;
        check_after_crash(&all, &acked);
        assert!(all.len() >= acked.len());
        store.close().await.unwrap();
    }
    assert!(
        acked.len() > 100,
        "the writer barely ran: {} acks",
        acked.len()
    );
}

/// Appends `payloads` one append at a time (each its own batch); returns the log length before
/// each append and after the last.
async fn write_appends(dir: &Path, appends: &[Vec<&str>]) -> Vec<u64> {
    let store = EmbeddedStore::open(dir).await.unwrap();
    let log = dir.join(LOG_FILE_NAME);
    let mut lengths = vec![std::fs::metadata(&log).unwrap().len()];
    for (i, payloads) in appends.iter().enumerate() {
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            i => ExpectedVersion::Exact(lengths_events(appends, i) - 1),
        };
        let events = payloads.iter().map(|p| event(p)).collect();
        store.append("pool-x", expected, events).await.unwrap();
        lengths.push(std::fs::metadata(&log).unwrap().len());
    }
    store.close().await.unwrap();
    lengths
}

fn lengths_events(appends: &[Vec<&str>], upto: usize) -> u64 {
    appends[..upto].iter().map(|a| a.len() as u64).sum()
}

fn sample_appends() -> Vec<Vec<&'static str>> {
    vec![
        vec!["first"],
        vec!["second-a", "second-b"],
        vec!["third"],
        vec!["fourth-a", "fourth-b", "fourth-c"],
        vec!["last-a", "last-b"],
    ]
}

/// Copies the first `len` bytes of the log into a new data directory `to`, with its `store.id`.
fn copy_prefix(log: &Path, len: u64, to: &Path) -> PathBuf {
    let bytes = std::fs::read(log).unwrap();
    std::fs::create_dir_all(to).unwrap();
    let id = log.with_file_name(STORE_ID_FILE_NAME);
    std::fs::copy(&id, to.join(STORE_ID_FILE_NAME)).unwrap();
    let copy = to.join(LOG_FILE_NAME);
    std::fs::write(&copy, &bytes[..len as usize]).unwrap();
    copy
}

/// Opens the damaged copy in `dir`, expects exactly `before`, then appends and reopens.
async fn expect_recovered_to(dir: &Path, before: &[RecordedEvent], what: &str) {
    let store = EmbeddedStore::open(dir).await.unwrap();
    assert_eq!(read_everything(&store).await, before, "{what}");
    let last = before.last().unwrap().version;
    store
        .append("pool-x", ExpectedVersion::Exact(last), vec![event("after")])
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir).await.unwrap();
    let all = read_everything(&store).await;
    assert_eq!(
        all.len(),
        before.len() + 1,
        "{what}: append after recovery lost"
    );
    assert_eq!(all.last().unwrap().payload, b"after");
}

/// The store of `sample_appends()`, the events of all appends but the last, and the byte range
/// of the last append's batch.
async fn sample_store(dir: &Path) -> (Vec<RecordedEvent>, u64, u64) {
    let appends = sample_appends();
    let lengths = write_appends(dir, &appends).await;
    let store = EmbeddedStore::open(dir).await.unwrap();
    let mut before = read_everything(&store).await;
    before.truncate(lengths_events(&appends, appends.len() - 1) as usize);
    let n = appends.len();
    (before, lengths[n - 1], lengths[n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_append_is_cut_at_every_offset() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (before, start, end) = sample_store(dir.path()).await;
    assert!(end - start > BATCH_HEADER_BYTES as u64);
    let log = dir.path().join(LOG_FILE_NAME);
    let scratch = tempfile::tempdir().unwrap();
    for cut in start..end {
        let case = scratch.path().join(format!("cut-{cut}"));
        copy_prefix(&log, cut, &case);
        expect_recovered_to(&case, &before, &format!("cut at {cut}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_last_append_is_dropped_whole_at_every_offset() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (before, start, end) = sample_store(dir.path()).await;
    let log = dir.path().join(LOG_FILE_NAME);
    let scratch = tempfile::tempdir().unwrap();
    for at in start..end {
        let case = scratch.path().join(format!("flip-{at}"));
        let copy = copy_prefix(&log, end, &case);
        flip_byte(&copy, at);
        expect_recovered_to(&case, &before, &format!("flip at {at}")).await;
    }
}

fn flip_byte(file: &Path, at: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at as usize] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
}

fn expect_damaged(
    result: Result<EmbeddedStore, StoreError>,
    log: &Path,
    offset: u64,
    first_position: u64,
) {
    match result {
        Err(StoreError::Damaged(damage)) => {
            assert_eq!(Path::new(&damage.file), log);
            assert_eq!(damage.offset, offset, "wrong offset ({})", damage.reason);
            assert_eq!(
                damage.first_position,
                Some(first_position),
                "{}",
                damage.reason
            );
        }
        Err(other) => panic!("expected Damaged at {offset}, got {other}"),
        Ok(_) => panic!("expected Damaged at {offset}, the store opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_tail_is_reported_with_file_and_offset() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let appends = sample_appends();
    let lengths = write_appends(dir.path(), &appends).await;
    let log = dir.path().join(LOG_FILE_NAME);
    let scratch = tempfile::tempdir().unwrap();

    // The second append's batch (positions 1 and 2): header, then its one frame, whose first
    // event record follows the frame's 26 fixed bytes and the stream name.
    let batch = lengths[1];
    let frame = batch + BATCH_HEADER_BYTES as u64;
    let record = frame + 26 + "pool-x".len() as u64;
    let payload_byte = lengths[2] - 3;
    // Record = 58 fixed bytes, the kind "T", the payload.
    let second_record = record + 58 + 1 + "second-a".len() as u64;
    let cases = [
        ("payload", payload_byte, second_record),
        ("event leaf", record + 3, record),
        ("event record sum", record + 33, record),
        ("event id", record + 40, record),
        ("frame length", frame, frame),
        ("frame position", frame + 4, frame),
        ("batch magic", batch, batch),
        ("batch body length", batch + 5, batch),
        ("batch root", batch + 40, batch),
        ("batch previous chain value", batch + 70, batch),
        ("batch chain value", batch + 100, batch),
        ("batch header checksum", batch + 140, batch),
    ];
    for (what, at, reported) in cases {
        let case = scratch.path().join(what.replace(' ', "-"));
        let copy = copy_prefix(&log, *lengths.last().unwrap(), &case);
        flip_byte(&copy, at);
        // A crash's leftover beside the log: a refused open leaves it too.
        let leftover = case.join("index.snapshot.tmp");
        std::fs::write(&leftover, b"half a snapshot").unwrap();
        expect_damaged(EmbeddedStore::open(&case).await, &copy, reported, 1);
        assert!(leftover.exists(), "{what}: a refused open removed a file");
        // Refusing to open must not have changed the file.
        assert_eq!(
            std::fs::metadata(&copy).unwrap().len(),
            *lengths.last().unwrap(),
            "{what}"
        );
    }

    // A damaged file header.
    let case = scratch.path().join("file-header");
    let copy = copy_prefix(&log, *lengths.last().unwrap(), &case);
    flip_byte(&copy, 2);
    expect_damaged(EmbeddedStore::open(&case).await, &copy, 0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_directory_is_locked() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).await.unwrap();
    match EmbeddedStore::open(dir.path()).await {
        Err(StoreError::Locked(path)) => assert_eq!(Path::new(&path), dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second store opened a locked directory"),
    }
    first
        .append("a", ExpectedVersion::NoStream, vec![event("x")])
        .await
        .unwrap();
    drop(first);
    let again = EmbeddedStore::open(dir.path()).await.unwrap();
    assert_eq!(read_everything(&again).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_queued_appends_and_refuses_later_ones() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &format!("s{i}"),
                    ExpectedVersion::NoStream,
                    vec![event("q")],
                )
                .await
        }));
    }
    store.close().await.unwrap();
    let mut landed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => landed += 1,
            Err(StoreError::Closed) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let later = store
        .append("late", ExpectedVersion::Any, vec![event("late")])
        .await;
    assert!(matches!(later, Err(StoreError::Closed)), "{later:?}");
    // Reads still work after close, and the directory is free.
    assert_eq!(read_everything(&store).await.len(), landed);
    let reopened = EmbeddedStore::open(dir.path()).await.unwrap();
    assert_eq!(read_everything(&reopened).await.len(), landed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_after_the_last_append_are_cut() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let lengths = write_appends(dir.path(), &sample_appends()).await;
    let log = dir.path().join(LOG_FILE_NAME);
    let all = {
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        read_everything(&store).await
    };
    let scratch = tempfile::tempdir().unwrap();
    // The file grew but the data never reached the disk: as after a crash mid-batch.
    for zeros in [1usize, BATCH_HEADER_BYTES - 1, BATCH_HEADER_BYTES, 5000] {
        let case = scratch.path().join(format!("zeros-{zeros}"));
        let copy = copy_prefix(&log, *lengths.last().unwrap(), &case);
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes.resize(bytes.len() + zeros, 0);
        std::fs::write(&copy, bytes).unwrap();
        expect_recovered_to(&case, &all, &format!("{zeros} zeros")).await;
    }
}

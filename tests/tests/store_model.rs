//! The embedded store against a reference model: seeded random sequences of appends (with right,
//! stale, future and absent expectations), stream reads, paged reads and reopens, each result
//! compared with what a plain in-memory map says it must be; reopens load an index snapshot
//! (fresh or stale) or scan the whole log. A failure prints its seed.

use std::collections::HashMap;

use allot_server::store::embedded::{EmbeddedStore, SNAPSHOT_FILE_NAME};
use allot_server::store::{
    ActualVersion, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
};
use allot_tests::seeded::Rng;

const SEEDS: u64 = 10;
const STEPS: usize = 150;
const STREAMS: [&str; 4] = ["pool-a", "pool-b", "pool-c", "actors"];

/// What the store must hold: every event in position order.
#[derive(Default)]
struct Model {
    all: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
}

impl Model {
    fn actual(&self, stream: &str) -> ActualVersion {
        match self.streams.get(stream).map_or(0, Vec::len) {
            0 => ActualVersion::NoStream,
            n => ActualVersion::Exact(n as u64 - 1),
        }
    }

    fn stream(&self, stream: &str) -> Vec<RecordedEvent> {
        self.streams
            .get(stream)
            .map(|ps| ps.iter().map(|p| self.all[*p].clone()).collect())
            .unwrap_or_default()
    }

    fn append(&mut self, stream: &str, events: &[ProposedEvent]) -> (u64, u64) {
        for event in events {
            let positions = self.streams.entry(stream.to_owned()).or_default();
            let recorded = RecordedEvent {
                stream: stream.to_owned(),
                version: positions.len() as u64,
                position: self.all.len() as u64,
                id: event.id,
                kind: event.kind.clone(),
                payload: event.payload.clone(),
            };
            positions.push(self.all.len());
            self.all.push(recorded);
        }
        let last = self.all.last().expect("just appended");
        (last.version, last.position)
    }
}

fn expectation(rng: &mut Rng, actual: ActualVersion) -> ExpectedVersion {
    match (rng.below(6), actual) {
        (0, _) => ExpectedVersion::Any,
        (1, _) => ExpectedVersion::NoStream,
        (2, ActualVersion::Exact(v)) if v > 0 => ExpectedVersion::Exact(v - 1 - rng.below(v)),
        (3, ActualVersion::Exact(v)) => ExpectedVersion::Exact(v + 1 + rng.below(3)),
        (_, ActualVersion::Exact(v)) => ExpectedVersion::Exact(v),
        (_, ActualVersion::NoStream) if rng.below(4) == 0 => ExpectedVersion::Exact(rng.below(3)),
        (_, ActualVersion::NoStream) => ExpectedVersion::NoStream,
    }
}

fn matches(expected: ExpectedVersion, actual: ActualVersion) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => actual == ActualVersion::NoStream,
        ExpectedVersion::Exact(v) => actual == ActualVersion::Exact(v),
    }
}

async fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path()).await.unwrap();
    let mut model = Model::default();
    let mut rng = Rng(seed);
    for step in 0..STEPS {
        let at = format!("seed {seed} step {step}");
        match rng.below(20) {
            0..=11 => {
                let stream = STREAMS[rng.below(STREAMS.len() as u64) as usize];
                let actual = model.actual(stream);
                let expected = expectation(&mut rng, actual);
                let events: Vec<ProposedEvent> = (0..1 + rng.below(3))
                    .map(|i| ProposedEvent {
                        id: [(step % 256) as u8; 16],
                        kind: format!("K{i}"),
                        payload: format!("{seed}/{step}/{i}")
                            .repeat(1 + rng.below(40) as usize)
                            .into_bytes(),
                    })
                    .collect();
                let result = store.append(stream, expected, events.clone()).await;
                if matches(expected, actual) {
                    let (version, position) = model.append(stream, &events);
                    let outcome = result.unwrap_or_else(|e| panic!("{at}: {e}"));
                    assert_eq!(
                        (outcome.last_version, outcome.last_position),
                        (version, position),
                        "{at}"
                    );
                } else {
                    match result {
                        Err(StoreError::WrongExpectedVersion { actual: got, .. }) => {
                            assert_eq!(got, actual, "{at}")
                        }
                        other => panic!("{at}: expected a conflict, got {other:?}"),
                    }
                }
            }
            12..=14 => {
                let stream = STREAMS[rng.below(STREAMS.len() as u64) as usize];
                let expected = model.stream(stream);
                let from = rng.below(expected.len() as u64 + 2);
                let max = 1 + rng.below(6) as usize;
                let got = store.read_stream(stream, from, max).await.unwrap();
                let want: Vec<_> = expected.into_iter().skip(from as usize).take(max).collect();
                assert_eq!(got, want, "{at}: read_stream({stream}, {from}, {max})");
            }
            15..=17 => {
                let after = match rng.below(model.all.len() as u64 + 2) {
                    0 => None,
                    n => Some(n - 1),
                };
                let max = 1 + rng.below(10) as usize;
                let got = store.read_all(after, max).await.unwrap();
                let from = after.map_or(0, |a| a as usize + 1);
                let want: Vec<_> = model.all.iter().skip(from).take(max).cloned().collect();
                assert_eq!(got, want, "{at}: read_all({after:?}, {max})");
            }
            _ => {
                // Half the reopens load an index snapshot (taken now or at an earlier reopen,
                // so also stale ones with a tail to scan), the others find none.
                if rng.below(2) == 0 {
                    store.write_index_snapshot().await.unwrap();
                } else if rng.below(2) == 0 {
                    let _ = std::fs::remove_file(dir.path().join(SNAPSHOT_FILE_NAME));
                }
                store.close().await.unwrap();
                drop(store);
                store = EmbeddedStore::open(dir.path()).await.unwrap();
                let got = store.read_all(None, usize::MAX).await.unwrap();
                assert_eq!(got, model.all, "{at}: after reopen");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_agrees_with_the_reference_model() {
    for seed in 0..SEEDS {
        run_seed(seed).await;
    }
}

//! The event store conformance suite: every backend of [`EventStore`] must pass every case.
//!
//! Each case is a `pub async fn` taking a fresh, empty store. [`run_all`] runs them in turn;
//! [`store_conformance_tests!`](crate::store_conformance_tests) turns each into its own
//! `#[tokio::test]` for a backend's factory, so failures name the case.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use allot_server::store::{
    APPEND_EVENTS_MAX, ActualVersion, EVENT_PAYLOAD_BYTES_MAX, EventStore, ExpectedVersion,
    ProposedEvent, RecordedEvent, StoreError, WaveAppend,
};
use futures::StreamExt;

/// Concurrent appenders racing for one stream.
pub const RACING_APPENDERS: usize = 50;
/// Guard against a hung case; generous, only reached when something is broken.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every case, by name, for [`run_all`] and the test macro: calls the exported macro
/// `$callback` with `$args; case, case, ...`.
#[doc(hidden)]
#[macro_export]
macro_rules! store_conformance_cases {
    ($callback:ident ($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            no_stream_expectation,
            exact_expectation,
            any_expectation,
            racing_appenders_win_one_version_each,
            positions_increase_across_streams,
            read_stream_from_a_middle_version,
            read_all_pages_without_gaps_or_duplicates,
            log_pages_hold_what_read_all_returns,
            subscription_from_the_start_then_live,
            subscription_mid_stream_under_concurrent_appends,
            empty_append_is_rejected_without_writing,
            oversize_append_is_rejected_without_writing,
            a_wave_decides_each_append_on_its_own
        );
    };
}

/// Defines one `#[tokio::test]` per conformance case. `$make` is an async function or closure
/// returning `(store, guard)`; the guard (e.g. a temporary directory) lives until the case ends.
/// The calling crate needs `tokio` with its `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_cases!(store_conformance_tests(@cases $make));
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, guard) = ($make)().await;
                $crate::store_conformance::$case(::std::sync::Arc::new(store)).await;
                drop(guard);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! store_conformance_run_cases {
    ($make:ident; $($case:ident),*) => {
        $(
            let (store, guard) = $make().await;
            $crate::store_conformance::$case(::std::sync::Arc::new(store)).await;
            drop(guard);
        )*
    };
}

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<S, G, F, Fut>(make: F)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, G)>,
{
    crate::store_conformance_cases!(store_conformance_run_cases(make));
}

/// An event whose payload is `payload` and whose id is derived from it.
pub fn event(kind: &str, payload: impl Into<Vec<u8>>) -> ProposedEvent {
    let payload = payload.into();
    let mut id = [0u8; 16];
    for (i, b) in payload.iter().enumerate() {
        id[i % 16] = id[i % 16].wrapping_mul(31).wrapping_add(*b);
    }
    ProposedEvent {
        id,
        kind: kind.to_owned(),
        payload,
    }
}

fn wrong_version(result: Result<impl std::fmt::Debug, StoreError>) -> ActualVersion {
    match result {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => actual,
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
}

async fn read_everything<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store.read_all(None, usize::MAX).await.unwrap()
}

pub async fn no_stream_expectation<S: EventStore>(store: Arc<S>) {
    let first = store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("A", "a0")])
        .await
        .unwrap();
    assert_eq!(first.last_version, 0);

    let again = store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("A", "a1")])
        .await;
    assert_eq!(wrong_version(again), ActualVersion::Exact(0));

    let stream = store.read_stream("pool-a", 0, 100).await.unwrap();
    assert_eq!(stream.len(), 1, "a rejected append wrote something");
    assert_eq!(stream[0].payload, b"a0");
}

pub async fn exact_expectation<S: EventStore>(store: Arc<S>) {
    let missing = store
        .append("pool-b", ExpectedVersion::Exact(0), vec![event("B", "x")])
        .await;
    assert_eq!(wrong_version(missing), ActualVersion::NoStream);
    assert!(store.read_stream("pool-b", 0, 10).await.unwrap().is_empty());

    let three = vec![event("B", "b0"), event("B", "b1"), event("B", "b2")];
    let outcome = store
        .append("pool-b", ExpectedVersion::NoStream, three)
        .await
        .unwrap();
    assert_eq!(outcome.last_version, 2);

    let stale = store
        .append(
            "pool-b",
            ExpectedVersion::Exact(1),
            vec![event("B", "stale")],
        )
        .await;
    assert_eq!(wrong_version(stale), ActualVersion::Exact(2));
    let ahead = store
        .append(
            "pool-b",
            ExpectedVersion::Exact(5),
            vec![event("B", "ahead")],
        )
        .await;
    assert_eq!(wrong_version(ahead), ActualVersion::Exact(2));

    let next = store
        .append("pool-b", ExpectedVersion::Exact(2), vec![event("B", "b3")])
        .await
        .unwrap();
    assert_eq!(next.last_version, 3);
    let payloads: Vec<_> = store
        .read_stream("pool-b", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, [b"b0", b"b1", b"b2", b"b3"]);
}

pub async fn any_expectation<S: EventStore>(store: Arc<S>) {
    let created = store
        .append("actors", ExpectedVersion::Any, vec![event("K", "k0")])
        .await
        .unwrap();
    assert_eq!(created.last_version, 0);
    let appended = store
        .append(
            "actors",
            ExpectedVersion::Any,
            vec![event("K", "k1"), event("K", "k2")],
        )
        .await
        .unwrap();
    assert_eq!(appended.last_version, 2);
    assert_eq!(store.read_stream("actors", 0, 10).await.unwrap().len(), 3);
}

/// Every task starts from NoStream and retries with the actual version it is told, until its one
/// event is in. Each version must be won by exactly one task.
pub async fn racing_appenders_win_one_version_each<S: EventStore>(store: Arc<S>) {
    let mut tasks = Vec::new();
    for task in 0..RACING_APPENDERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut expected = ExpectedVersion::NoStream;
            let mut conflicts = 0u32;
            loop {
                let payload = format!("task-{task}");
                match store
                    .append("hot", expected, vec![event("R", payload)])
                    .await
                {
                    Ok(outcome) => {
                        let next = match expected {
                            ExpectedVersion::NoStream => 0,
                            ExpectedVersion::Exact(v) => v + 1,
                            ExpectedVersion::Any => unreachable!("never sent"),
                        };
                        assert_eq!(
                            outcome.last_version, next,
                            "task {task} won a stale version"
                        );
                        return (task, outcome.last_version, conflicts);
                    }
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        conflicts += 1;
                        expected = match actual {
                            ActualVersion::NoStream => ExpectedVersion::NoStream,
                            ActualVersion::Exact(v) => ExpectedVersion::Exact(v),
                        };
                    }
                    Err(e) => panic!("task {task}: {e}"),
                }
            }
        }));
    }
    let mut won: HashMap<u64, usize> = HashMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (task, version, c) = tokio::time::timeout(CASE_TIMEOUT, task)
            .await
            .expect("racing appenders hung")
            .unwrap();
        conflicts += c;
        assert!(
            won.insert(version, task).is_none(),
            "version {version} won twice"
        );
    }
    assert!(
        conflicts > 0,
        "no task ever conflicted: the race was not exercised"
    );
    let stream = store.read_stream("hot", 0, usize::MAX).await.unwrap();
    assert_eq!(stream.len(), RACING_APPENDERS);
    for (i, recorded) in stream.iter().enumerate() {
        assert_eq!(recorded.version, i as u64);
        let winner = won[&recorded.version];
        assert_eq!(recorded.payload, format!("task-{winner}").into_bytes());
    }
}

pub async fn positions_increase_across_streams<S: EventStore>(store: Arc<S>) {
    let mut tasks = Vec::new();
    for s in 0..5 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("pool-{s}");
            let mut outcomes = Vec::new();
            let mut expected = ExpectedVersion::NoStream;
            for v in 0..8u64 {
                let outcome = store
                    .append(&stream, expected, vec![event("E", format!("{s}/{v}"))])
                    .await
                    .unwrap();
                assert_eq!(outcome.last_version, v);
                expected = ExpectedVersion::Exact(v);
                outcomes.push((stream.clone(), outcome));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    let all = read_everything(&*store).await;
    assert_eq!(all.len(), 40);
    for pair in all.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions not increasing"
        );
    }
    let by_position: HashMap<u64, &RecordedEvent> = all.iter().map(|e| (e.position, e)).collect();
    for (stream, outcome) in outcomes {
        let recorded = by_position[&outcome.last_position];
        assert_eq!(
            (&recorded.stream, recorded.version),
            (&stream, outcome.last_version)
        );
    }
    for s in 0..5 {
        let stream = store
            .read_stream(&format!("pool-{s}"), 0, 100)
            .await
            .unwrap();
        for recorded in stream {
            assert_eq!(by_position[&recorded.position], &recorded);
        }
    }
}

pub async fn read_stream_from_a_middle_version<S: EventStore>(store: Arc<S>) {
    for v in 0..10u64 {
        let expected = match v {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        store
            .append(
                "pool-m",
                expected,
                vec![event(&format!("K{v}"), format!("m{v}"))],
            )
            .await
            .unwrap();
        store
            .append(
                "other",
                ExpectedVersion::Any,
                vec![event("O", format!("o{v}"))],
            )
            .await
            .unwrap();
    }
    let middle = store.read_stream("pool-m", 4, 3).await.unwrap();
    let versions: Vec<u64> = middle.iter().map(|e| e.version).collect();
    assert_eq!(versions, [4, 5, 6]);
    let expected = event("K5", "m5");
    assert_eq!(
        (
            &middle[1].stream,
            middle[1].id,
            &middle[1].kind,
            &middle[1].payload
        ),
        (
            &"pool-m".to_owned(),
            expected.id,
            &expected.kind,
            &expected.payload
        )
    );
    let tail = store.read_stream("pool-m", 8, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [8, 9]);
    assert!(
        store
            .read_stream("pool-m", 10, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream("pool-m", u64::MAX, 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_stream("nope", 0, 100).await.unwrap().is_empty());
}

pub async fn read_all_pages_without_gaps_or_duplicates<S: EventStore>(store: Arc<S>) {
    for i in 0..25u64 {
        let events = (0..(i % 3 + 1))
            .map(|j| event("P", format!("{i}.{j}")))
            .collect();
        store
            .append(&format!("pool-{}", i % 4), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let all = read_everything(&*store).await;
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(
        store
            .read_all(Some(all.last().unwrap().position), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_all(Some(u64::MAX), 10).await.unwrap().is_empty());
}

/// `read_all_page` (the bulk readers' borrowed pages) gives exactly `read_all`'s records, field
/// by field, for any start and size: small and large payloads, several streams, several events
/// per append, and starts at, inside and past the end.
pub async fn log_pages_hold_what_read_all_returns<S: EventStore>(store: Arc<S>) {
    for i in 0..30u64 {
        let events = (0..(i % 3 + 1))
            .map(|j| {
                let mut event = event(if j == 0 { "Big" } else { "P" }, format!("{i}.{j}"));
                if i % 7 == 0 {
                    event.payload.resize(10_000 + i as usize, b'x');
                }
                event
            })
            .collect();
        store
            .append(&format!("pool-{}", i % 5), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let all = read_everything(&*store).await;
    let last = all.last().unwrap().position;
    let starts = [
        None,
        Some(0),
        Some(3),
        Some(last - 1),
        Some(last),
        Some(u64::MAX),
    ];
    for after in starts {
        for max in [1, 4, 17, 1000] {
            let records = store.read_all(after, max).await.unwrap();
            let page = store.read_all_page(after, max).await.unwrap();
            assert_eq!(page.len(), records.len(), "after {after:?}, max {max}");
            let from_page: Vec<_> = page.iter().map(|record| record.to_recorded()).collect();
            assert_eq!(from_page, records, "after {after:?}, max {max}");
        }
    }
}

pub async fn subscription_from_the_start_then_live<S: EventStore>(store: Arc<S>) {
    let mut subscription = store.subscribe_all(None).await.unwrap();
    store
        .append(
            "s",
            ExpectedVersion::NoStream,
            vec![event("S", "0"), event("S", "1")],
        )
        .await
        .unwrap();
    store
        .append("s", ExpectedVersion::Exact(1), vec![event("S", "2")])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(CASE_TIMEOUT, subscription.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .unwrap();
        seen.push(next);
    }
    assert_eq!(seen, read_everything(&*store).await);
}

/// A subscription from the middle of the log, opened while appends are going on, sees every later
/// event exactly once and in position order.
pub async fn subscription_mid_stream_under_concurrent_appends<S: EventStore>(store: Arc<S>) {
    const WRITERS: usize = 4;
    const APPENDS_PER_WRITER: usize = 60;
    for i in 0..20 {
        store
            .append(
                "before",
                ExpectedVersion::Any,
                vec![event("B", format!("{i}"))],
            )
            .await
            .unwrap();
    }
    let start = store.read_all(None, 10).await.unwrap()[9].position;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("live-{w}");
            for i in 0..APPENDS_PER_WRITER {
                let events = (0..(i % 2 + 1))
                    .map(|j| event("L", format!("{w}.{i}.{j}")))
                    .collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        }));
    }
    tokio::task::yield_now().await;
    let mut subscription = store.subscribe_all(Some(start)).await.unwrap();
    // 10 events of "before" after `start`, then each writer's appends of 1 or 2 events.
    let total = 10 + WRITERS * (0..APPENDS_PER_WRITER).map(|i| i % 2 + 1).sum::<usize>();
    let reader = tokio::spawn(async move {
        let mut seen: Vec<RecordedEvent> = Vec::with_capacity(total);
        let mut positions = BTreeSet::new();
        while seen.len() < total {
            let next = tokio::time::timeout(CASE_TIMEOUT, subscription.next())
                .await
                .expect("subscription stalled")
                .expect("subscription ended")
                .unwrap();
            assert!(
                positions.insert(next.position),
                "duplicate {}",
                next.position
            );
            seen.push(next);
        }
        seen
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = reader.await.unwrap();
    let expected: Vec<RecordedEvent> = store.read_all(Some(start), usize::MAX).await.unwrap();
    assert_eq!(expected.len(), total);
    assert_eq!(seen, expected);
}

pub async fn empty_append_is_rejected_without_writing<S: EventStore>(store: Arc<S>) {
    let empty = store.append("e", ExpectedVersion::Any, Vec::new()).await;
    assert!(
        matches!(empty, Err(StoreError::InvalidAppend(_))),
        "{empty:?}"
    );
    let nameless = store
        .append("", ExpectedVersion::Any, vec![event("E", "x")])
        .await;
    assert!(
        matches!(nameless, Err(StoreError::InvalidAppend(_))),
        "{nameless:?}"
    );
    assert!(read_everything(&*store).await.is_empty());
    // The stream still does not exist.
    store
        .append("e", ExpectedVersion::NoStream, vec![event("E", "first")])
        .await
        .unwrap();
}

pub async fn oversize_append_is_rejected_without_writing<S: EventStore>(store: Arc<S>) {
    store
        .append("o", ExpectedVersion::NoStream, vec![event("O", "ok")])
        .await
        .unwrap();
    let big = vec![0u8; EVENT_PAYLOAD_BYTES_MAX + 1];
    let oversize = store
        .append(
            "o",
            ExpectedVersion::Exact(0),
            vec![event("O", "fine"), event("O", big)],
        )
        .await;
    assert!(
        matches!(oversize, Err(StoreError::InvalidAppend(_))),
        "{oversize:?}"
    );
    let too_many = (0..=APPEND_EVENTS_MAX).map(|_| event("O", "x")).collect();
    let too_many = store.append("o", ExpectedVersion::Exact(0), too_many).await;
    assert!(
        matches!(too_many, Err(StoreError::InvalidAppend(_))),
        "{too_many:?}"
    );
    let at_limit = vec![0u8; EVENT_PAYLOAD_BYTES_MAX];
    store
        .append("o", ExpectedVersion::Exact(0), vec![event("O", at_limit)])
        .await
        .unwrap();
    assert_eq!(read_everything(&*store).await.len(), 2);
}

/// A wave's appends are decided one by one, as `append` would decide them: a refused one (wrong
/// version, no events) writes nothing and does not stop the others; answers come in order.
pub async fn a_wave_decides_each_append_on_its_own<S: EventStore>(store: Arc<S>) {
    store
        .append("pool-b", ExpectedVersion::NoStream, vec![event("B", "b0")])
        .await
        .unwrap();
    let wave = |stream: &str, expected, events| WaveAppend {
        stream: stream.to_owned(),
        expected,
        events,
    };
    let answers = store
        .append_wave(vec![
            wave(
                "pool-a",
                ExpectedVersion::NoStream,
                vec![event("A", "a0"), event("A", "a1")],
            ),
            wave("pool-b", ExpectedVersion::NoStream, vec![event("B", "b1")]),
            wave("pool-c", ExpectedVersion::NoStream, vec![]),
            wave("pool-d", ExpectedVersion::NoStream, vec![event("D", "d0")]),
            wave("pool-e", ExpectedVersion::Exact(0), vec![event("E", "e0")]),
        ])
        .await;
    assert_eq!(answers.len(), 5);
    assert_eq!(answers[0].as_ref().unwrap().last_version, 1);
    assert_eq!(wrong_version_of(&answers[1]), ActualVersion::Exact(0));
    assert!(
        matches!(answers[2], Err(StoreError::InvalidAppend(_))),
        "{:?}",
        answers[2]
    );
    assert_eq!(answers[3].as_ref().unwrap().last_version, 0);
    assert_eq!(wrong_version_of(&answers[4]), ActualVersion::NoStream);
    let a = store.read_stream("pool-a", 0, 10).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        vec![b"a0".to_vec(), b"a1".to_vec()]
    );
    assert_eq!(store.read_stream("pool-b", 0, 10).await.unwrap().len(), 1);
    assert!(store.read_stream("pool-c", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.read_stream("pool-d", 0, 10).await.unwrap().len(), 1);
    assert!(store.read_stream("pool-e", 0, 10).await.unwrap().is_empty());
    // Positions are those `append` would give, the last of each landed append.
    let everything = read_everything(&*store).await;
    assert_eq!(everything.len(), 4);
    for (answer, stream) in [(&answers[0], "pool-a"), (&answers[3], "pool-d")] {
        let last = everything.iter().rfind(|e| e.stream == stream).unwrap();
        assert_eq!(answer.as_ref().unwrap().last_position, last.position);
    }
}

fn wrong_version_of(
    result: &Result<allot_server::store::AppendOutcome, StoreError>,
) -> ActualVersion {
    match result {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => *actual,
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
}

//! Behaviour tests: one per server behaviour the EventStoreDB / KurrentDB adapter depends on,
//! written against the port (and, where the behaviour is the server's own answer, against the
//! raw client). They run against the in-test server, and unchanged against a real server when
//! `ALLOT_ESDB_URL` is set:
//!
//! ```text
//! ALLOT_ESDB_URL='esdb://localhost:2113?tls=false' cargo test -p allot-tests --test store_conformance_esdb esdb
//! ```
//!
//! Each test works in a fresh stream namespace, so a shared server is fine. Tests that need a
//! fault only the in-test server can inject (a follower's not-leader answer, a lost
//! acknowledgement, a server that does not deduplicate, short reads) say so and return early
//! on a real server.
//!
//! The behaviours, and where KurrentDB documents them:
//! - appends answer the last revision and its `$all` position; expected revisions refuse
//!   conflicts (client docs, "Appending events" / "Handling concurrency");
//! - an append of events already written (same ids, same place) succeeds without writing, with
//!   the position of the last of them; a partial duplicate is `WrongExpectedVersion`, whatever
//!   the expected revision ("Optimistic concurrency and idempotence");
//! - reads go forwards from a revision or a `$all` position (inclusive) and backwards; a `$all`
//!   position inside a record is `INVALID_ARGUMENT` ("Trying to read from an invalid position");
//! - filtered `$all` subscriptions send checkpoints every 32 × multiplier records considered,
//!   and positions given to subscriptions are exclusive (client docs, "Catch-up subscriptions");
//! - deadlines end a call with `DEADLINE_EXCEEDED`; a follower answers a write with not-leader
//!   and the leader's endpoint; an append over `MaxAppendSize` (1 MiB) is `INVALID_ARGUMENT`,
//!   so the adapter sends an append over its own limit as consecutive appends.

use std::time::Duration;

use allot_server::store::esdb::{EsdbOptions, EsdbStore};
use allot_server::store::{
    ActualVersion, EventStore, ExpectedVersion, ProposedEvent, StoreError, WaveAppend,
};
use allot_tests::esdb_server::{Deduplication, EsdbTestServer};
use allot_tests::store_conformance::event;
use futures::StreamExt;
use kurrentdb::{
    AppendToStreamOptions, Client, EventData, Position, ReadAllOptions, StreamPosition,
    StreamState, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter,
};

const ITEM_TIMEOUT: Duration = Duration::from_secs(20);

/// The server under test: the real one at `ALLOT_ESDB_URL`, else a fresh in-test server.
struct Target {
    url: String,
    server: Option<EsdbTestServer>,
    namespace: String,
}

impl Target {
    async fn new() -> Target {
        let namespace = format!("behaviour-{}-", uuid::Uuid::new_v4().simple());
        match std::env::var("ALLOT_ESDB_URL") {
            Ok(url) => Target {
                url,
                server: None,
                namespace,
            },
            Err(_) => {
                let server = EsdbTestServer::start().await;
                Target {
                    url: server.url(),
                    server: Some(server),
                    namespace,
                }
            }
        }
    }

    async fn store(&self) -> EsdbStore {
        self.store_with(EsdbOptions::default()).await
    }

    async fn store_with(&self, options: EsdbOptions) -> EsdbStore {
        EsdbStore::open(
            &self.url,
            EsdbOptions {
                namespace: Some(self.namespace.clone()),
                ..options
            },
        )
        .await
        .expect("open the store")
    }

    fn client(&self) -> Client {
        Client::new(self.url.parse().expect("connection string")).expect("client")
    }

    /// The server-side name of a stream.
    fn stream(&self, stream: &str) -> String {
        format!("{}{stream}", self.namespace)
    }

    /// The in-test server, for faults; `None` (and a note) on a real server.
    fn faults(&self, test: &str) -> Option<&EsdbTestServer> {
        if self.server.is_none() {
            eprintln!("{test}: skipped on a real server (needs an injected fault)");
        }
        self.server.as_ref()
    }
}

fn data(kind: &str, n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| {
            // An explicit id: the client draws a new one per send otherwise.
            EventData::binary(kind, format!("{kind}{i}").into_bytes().into())
                .id(uuid::Uuid::new_v4())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_answer_the_last_revision_and_its_position() {
    let target = Target::new().await;
    let store = target.store().await;
    let first = store
        .append(
            "pool-a",
            ExpectedVersion::NoStream,
            vec![event("E", "a0"), event("E", "a1"), event("E", "a2")],
        )
        .await
        .unwrap();
    let second = store
        .append("pool-b", ExpectedVersion::NoStream, vec![event("E", "b0")])
        .await
        .unwrap();
    assert_eq!((first.last_version, second.last_version), (2, 0));
    assert!(second.last_position > first.last_position);
    let a = store.read_stream("pool-a", 0, 10).await.unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[2].position, first.last_position);
    assert!(a[0].position < a[1].position && a[1].position < a[2].position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_revisions_refuse_conflicts() {
    let target = Target::new().await;
    let store = target.store().await;
    store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
        .await
        .unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(3)] {
        match store
            .append("pool-a", expected, vec![event("E", "other")])
            .await
        {
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                assert_eq!(actual, ActualVersion::Exact(0))
            }
            other => panic!("{expected:?}: expected a conflict, got {other:?}"),
        }
    }
    match store
        .append("pool-new", ExpectedVersion::Exact(0), vec![event("E", "x")])
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => {
            assert_eq!(actual, ActualVersion::NoStream)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let next = store
        .append("pool-a", ExpectedVersion::Exact(0), vec![event("E", "a1")])
        .await
        .unwrap();
    assert_eq!(next.last_version, 1);
}

/// The server's own answer to a retried append (raw client): success, the original revision
/// and the original position, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_answers_the_original_position() {
    let target = Target::new().await;
    let client = target.client();
    let stream = target.stream("retried");
    let events = data("E", 3);
    let options = AppendToStreamOptions::default().stream_state(StreamState::NoStream);
    let first = client
        .append_to_stream(stream.as_str(), &options, events.clone())
        .await
        .unwrap();
    let again = client
        .append_to_stream(stream.as_str(), &options, events)
        .await
        .unwrap();
    assert_eq!(again.next_expected_version, first.next_expected_version);
    assert_eq!(again.position, first.position, "not the original position");

    // Through the port: the same answer, one copy of each event.
    let store = target.store().await;
    let proposed = vec![event("E", "p0"), event("E", "p1")];
    let landed = store
        .append("pool-p", ExpectedVersion::NoStream, proposed.clone())
        .await
        .unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let retried = store
            .append("pool-p", expected, proposed.clone())
            .await
            .unwrap();
        assert_eq!(retried, landed, "{expected:?}");
    }
    assert_eq!(store.read_stream("pool-p", 0, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_duplicate_is_a_version_conflict() {
    let target = Target::new().await;
    let store = target.store().await;
    let written = vec![event("E", "w0"), event("E", "w1")];
    store
        .append("pool-d", ExpectedVersion::NoStream, written.clone())
        .await
        .unwrap();
    let partial = vec![written[1].clone(), event("E", "new")];
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(0)] {
        let answer = store.append("pool-d", expected, partial.clone()).await;
        assert!(
            matches!(answer, Err(StoreError::WrongExpectedVersion { .. })),
            "{expected:?}: {answer:?}"
        );
    }
    assert_eq!(store.read_stream("pool-d", 0, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_forwards_from_a_revision_and_backwards_from_the_end() {
    let target = Target::new().await;
    let store = target.store().await;
    for i in 0..5 {
        store
            .append(
                "pool-r",
                ExpectedVersion::from_next(i),
                vec![event("E", format!("r{i}"))],
            )
            .await
            .unwrap();
    }
    let from_2: Vec<u64> = store
        .read_stream("pool-r", 2, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(from_2, [2, 3]);
    let all = store.read_all(None, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(
        store.read_all(Some(all[1].position), 2).await.unwrap(),
        all[2..4]
    );

    // Backwards from the end, raw: what the adapter uses to find a record before a position.
    let filter = SubscriptionFilter::on_stream_name().add_prefix(&target.namespace);
    let options = ReadAllOptions::default()
        .position(StreamPosition::End)
        .backwards()
        .filter(filter)
        .max_count(2);
    let mut read = target.client().read_all(&options).await.unwrap();
    let mut backwards = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        backwards.push(event.get_original_event().position.commit);
    }
    assert_eq!(backwards, [all[4].position, all[3].position]);
}

/// A `$all` position inside a record is refused by the server; the port reads after it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_positions_inside_a_record_are_refused_and_the_port_reads_after_them() {
    let target = Target::new().await;
    let store = target.store().await;
    for i in 0..4 {
        store
            .append(
                "pool-x",
                ExpectedVersion::from_next(i),
                vec![event("E", format!("x{i}"))],
            )
            .await
            .unwrap();
    }
    let all = store.read_all(None, usize::MAX).await.unwrap();
    let inside = all[1].position + 1;
    let options = ReadAllOptions::default()
        .position(StreamPosition::Position(Position {
            commit: inside,
            prepare: inside,
        }))
        .max_count(1);
    let refused = async {
        let mut read = target.client().read_all(&options).await?;
        read.next().await
    }
    .await;
    assert!(
        matches!(
            refused,
            Err(kurrentdb::Error::Grpc {
                code: tonic::Code::InvalidArgument,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(store.read_all(Some(inside), 10).await.unwrap(), all[2..]);
    let mut feed = store.subscribe_all(Some(inside)).await.unwrap();
    for expected in &all[2..] {
        let next = tokio::time::timeout(ITEM_TIMEOUT, feed.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .unwrap();
        assert_eq!(&next, expected);
    }
}

/// A filtered `$all` subscription sends checkpoints while records that do not match go by, so
/// a follower of a quiet filter still learns how far the log has been read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscriptions_send_checkpoints_while_nothing_matches() {
    let target = Target::new().await;
    let client = target.client();
    let matching = target.stream("pool-c");
    let options = AppendToStreamOptions::default();
    client
        .append_to_stream(matching.as_str(), &options, data("E", 1))
        .await
        .unwrap();
    // Past one checkpoint interval (32 records) of records the filter leaves out.
    let other = format!("other-{}", target.namespace);
    for _ in 0..3 {
        client
            .append_to_stream(other.as_str(), &options, data("O", 30))
            .await
            .unwrap();
    }
    let filter = SubscriptionFilter::on_stream_name().add_prefix(&target.namespace);
    let mut subscription = client
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(filter))
        .await;
    let mut event_position = None;
    let checkpoint = loop {
        let next = tokio::time::timeout(ITEM_TIMEOUT, subscription.next_subscription_event())
            .await
            .expect("no checkpoint within the timeout")
            .unwrap();
        match next {
            SubscriptionEvent::EventAppeared(event) => {
                event_position = Some(event.get_original_event().position.commit)
            }
            SubscriptionEvent::Checkpoint(position)
                if event_position.is_some_and(|p| position.commit > p) =>
            {
                break position.commit;
            }
            _ => {}
        }
    };
    assert!(checkpoint > event_position.unwrap_or(0));
}

/// The follower keeps the checkpoint as its resume point: after a drop it resubscribes past the
/// records the server already passed over, not from its last delivered event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_follower_resumes_from_the_last_checkpoint() {
    let target = Target::new().await;
    let Some(server) = target.faults("a_dropped_follower_resumes_from_the_last_checkpoint") else {
        return;
    };
    let store = target.store().await;
    let delivered = store
        .append("pool-f", ExpectedVersion::NoStream, vec![event("E", "f0")])
        .await
        .unwrap();
    for i in 0..100 {
        server.append_raw("other-app", "Thing", format!("{i}").as_bytes());
    }
    let mut feed = store.subscribe_all(None).await.unwrap();
    let first = tokio::time::timeout(ITEM_TIMEOUT, feed.next())
        .await
        .expect("stalled")
        .expect("ended")
        .unwrap();
    assert_eq!(first.position, delivered.last_position);
    // The catch-up's end sends a checkpoint at the last record it considered.
    let last = server.last_position().expect("a log");
    tokio::time::timeout(ITEM_TIMEOUT, async {
        while server.checkpoints_sent() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no checkpoint sent");
    let opened = server.subscriptions_opened();
    server.drop_subscriptions();
    tokio::time::timeout(ITEM_TIMEOUT, async {
        while server.subscriptions_opened() == opened {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("never resubscribed");
    let starts = server.subscription_starts();
    let resumed_after = starts.last().copied().flatten().expect("a position");
    assert!(
        resumed_after >= last,
        "resumed after {resumed_after}, not after the checkpoint {last} (starts {starts:?})"
    );
    let next = store
        .append("pool-f", ExpectedVersion::Exact(0), vec![event("E", "f1")])
        .await
        .unwrap();
    let second = tokio::time::timeout(ITEM_TIMEOUT, feed.next())
        .await
        .expect("stalled")
        .expect("ended")
        .unwrap();
    assert_eq!(second.position, next.last_position);
}

/// A call out of time fails with an unknown outcome; a retry with the same event ids lands the
/// events exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_a_call_and_a_retry_lands_once() {
    let target = Target::new().await;
    let hurried = target
        .store_with(EsdbOptions {
            deadline: Some(Duration::from_micros(1)),
            ..EsdbOptions::default()
        })
        .await;
    let events = vec![event("E", "d0")];
    let answer = hurried
        .append("pool-t", ExpectedVersion::NoStream, events.clone())
        .await;
    match &answer {
        Err(StoreError::Unavailable { maybe_written, .. }) => assert!(maybe_written),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    let store = target.store().await;
    let landed = store
        .append("pool-t", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(landed.last_version, 0);
    assert_eq!(store.read_stream("pool-t", 0, 10).await.unwrap().len(), 1);
}

/// A follower's not-leader answer, and an acknowledgement lost in the move, are retried with
/// the same event ids until the leader answers: written once, answered with its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_answers_are_retried_until_the_leader_answers() {
    let target = Target::new().await;
    let Some(server) = target.faults("not_leader_answers_are_retried_until_the_leader_answers")
    else {
        return;
    };
    let store = target.store().await;
    server.fail_appends_after_write(1);
    let flip = async {
        // The lost acknowledgement first, then the not-leader window.
        while server.appends_served() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.set_not_leader(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.set_not_leader(false);
    };
    let (answer, ()) = tokio::join!(
        store.append("pool-l", ExpectedVersion::NoStream, vec![event("E", "l0")]),
        flip
    );
    let landed = answer.unwrap();
    let stream = store.read_stream("pool-l", 0, 10).await.unwrap();
    assert_eq!(stream.len(), 1, "written twice or not at all");
    assert_eq!(
        (landed.last_version, landed.last_position),
        (0, stream[0].position)
    );
    assert!(server.appends_served() >= 2);
}

/// Whatever the server does with a retried append (KurrentDB's answer, no position, or no
/// deduplication at all), a retry after a lost acknowledgement lands once and reports where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_lands_once_whether_or_not_the_server_deduplicates() {
    let target = Target::new().await;
    let Some(server) = target.faults("a_retry_lands_once_whether_or_not_the_server_deduplicates")
    else {
        return;
    };
    let store = target.store().await;
    let modes = [
        Deduplication::OriginalPosition,
        Deduplication::NoPosition,
        Deduplication::Off,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        server.set_deduplication(mode);
        server.fail_appends_after_write(1);
        let expected = ExpectedVersion::from_next(i as u64);
        let landed = store
            .append("pool-u", expected, vec![event("E", format!("u{i}"))])
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let stream = store.read_stream("pool-u", 0, 10).await.unwrap();
        assert_eq!(stream.len(), i + 1, "{mode:?}: written twice or lost");
        assert_eq!(
            (landed.last_version, landed.last_position),
            (i as u64, stream[i].position),
            "{mode:?}"
        );
    }
    // An `Any` append whose acknowledgement was lost is not retried when the server may not
    // deduplicate it: the caller hears the outcome is unknown.
    server.fail_appends_after_write(1);
    let any = store
        .append("pool-u", ExpectedVersion::Any, vec![event("E", "any")])
        .await;
    assert!(
        matches!(
            any,
            Err(StoreError::Unavailable {
                maybe_written: true,
                ..
            })
        ),
        "{any:?}"
    );
    assert_eq!(store.read_stream("pool-u", 0, 10).await.unwrap().len(), 4);
}

/// A server read may end early (by size); the port's reads still return everything asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_end_early_do_not_end_the_port_read() {
    let target = Target::new().await;
    let Some(server) = target.faults("reads_that_end_early_do_not_end_the_port_read") else {
        return;
    };
    let store = target.store().await;
    for i in 0..40u64 {
        let mut big = event("E", format!("s{i}"));
        big.payload.resize(1000, b'x');
        store
            .append("pool-s", ExpectedVersion::from_next(i), vec![big])
            .await
            .unwrap();
    }
    server.set_read_bytes_max(5_000);
    assert_eq!(store.read_stream("pool-s", 0, 100).await.unwrap().len(), 40);
    assert_eq!(store.read_stream("pool-s", 3, 30).await.unwrap().len(), 30);
    let all = store.read_all(None, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 40);
    assert_eq!(
        store.read_all(Some(all[4].position), 20).await.unwrap(),
        all[5..25]
    );
}

/// An append over the server's `MaxAppendSize` (1 MiB by default) is refused before anything
/// is written (the adapter's own limit set above it, so the request reaches the server whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_over_the_servers_size_limit_is_refused_unwritten() {
    let target = Target::new().await;
    let store = target
        .store_with(EsdbOptions {
            append_bytes_max: Some(4 * 1024 * 1024),
            ..EsdbOptions::default()
        })
        .await;
    let events: Vec<_> = (0..20)
        .map(|i| {
            let mut big = event("E", format!("b{i}"));
            big.payload.resize(64 * 1024, b'x');
            big
        })
        .collect();
    let answer = store
        .append("pool-big", ExpectedVersion::NoStream, events)
        .await;
    assert!(
        matches!(answer, Err(StoreError::InvalidAppend(_))),
        "{answer:?}"
    );
    assert!(
        store
            .read_stream("pool-big", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `n` events of about 1.3 KB each (a signed batch's events with long fields), distinct ids.
fn large_events(prefix: &str, n: usize) -> Vec<ProposedEvent> {
    (0..n)
        .map(|i| {
            let mut payload = format!("{prefix}{i}:").into_bytes();
            payload.resize(1300, b'x');
            ProposedEvent {
                id: uuid::Uuid::new_v4().into_bytes(),
                kind: "Reserved".to_owned(),
                payload,
            }
        })
        .collect()
}

/// A wave's append to one stream larger than `MaxAppendSize` is sent as consecutive appends
/// under the adapter's limit: it lands whole, in order, answered as one append would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_append_over_the_size_limit_lands_whole_in_parts() {
    let target = Target::new().await;
    let store = target.store().await;
    store
        .append("pool-w", ExpectedVersion::NoStream, vec![event("E", "w")])
        .await
        .unwrap();
    let events = large_events("w", 1024);
    let total: usize = events.iter().map(|e| e.payload.len()).sum();
    assert!(total > 1024 * 1024, "{total} bytes is not over 1 MiB");
    let served = target.server.as_ref().map(EsdbTestServer::appends_served);
    let mut answers = store
        .append_wave(vec![WaveAppend {
            stream: "pool-w".to_owned(),
            expected: ExpectedVersion::Exact(0),
            events: events.clone(),
        }])
        .await;
    let outcome = answers.remove(0).unwrap();
    let stream = store.read_stream("pool-w", 1, 2000).await.unwrap();
    assert_eq!(stream.len(), 1024);
    for (recorded, proposed) in stream.iter().zip(&events) {
        assert_eq!(
            (recorded.id, &recorded.payload),
            (proposed.id, &proposed.payload)
        );
    }
    let last = stream.last().unwrap();
    assert_eq!(
        (outcome.last_version, outcome.last_position),
        (1024, last.position)
    );
    if let (Some(server), Some(before)) = (target.server.as_ref(), served) {
        assert!(server.appends_served() >= before + 2, "sent as one request");
    }
}

/// A part refused after earlier parts landed: the caller hears the append may be written, the
/// stream holds exactly the earlier parts, and the same append retried later lands whole once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_failing_after_earlier_parts_landed_may_be_written() {
    let target = Target::new().await;
    let Some(server) = target.faults("a_part_failing_after_earlier_parts_landed_may_be_written")
    else {
        return;
    };
    let store = target.store().await;
    // 1,024 events of ~1.3 KB make two parts under the default limit; the second is refused.
    let events = large_events("p", 1024);
    server.refuse_appends_after(1);
    let answer = store
        .append("pool-p", ExpectedVersion::NoStream, events.clone())
        .await;
    assert!(
        matches!(
            answer,
            Err(StoreError::Unavailable {
                maybe_written: true,
                ..
            })
        ),
        "{answer:?}"
    );
    let stream = store.read_stream("pool-p", 0, 2000).await.unwrap();
    assert!(
        !stream.is_empty() && stream.len() < events.len(),
        "{} events landed",
        stream.len()
    );
    let first_part_bytes: usize = events[..stream.len()]
        .iter()
        .map(|e| e.payload.len() + e.kind.len())
        .sum();
    assert!(first_part_bytes <= allot_server::store::esdb::APPEND_BYTES_MAX);
    for (recorded, proposed) in stream.iter().zip(&events) {
        assert_eq!(recorded.id, proposed.id);
    }

    server.accept_appends();
    let outcome = store
        .append("pool-p", ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    let stream = store.read_stream("pool-p", 0, 2000).await.unwrap();
    assert_eq!(stream.len(), 1024, "lost or written twice");
    assert!(stream.iter().zip(&events).all(|(r, p)| r.id == p.id));
    assert_eq!(
        (outcome.last_version, outcome.last_position),
        (1023, stream[1023].position)
    );
}

/// One event larger than the adapter's limit cannot be split: refused, nothing written, not even
/// the events before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_adapters_limit_is_refused_unwritten() {
    let target = Target::new().await;
    let store = target
        .store_with(EsdbOptions {
            append_bytes_max: Some(2000),
            ..EsdbOptions::default()
        })
        .await;
    let mut events = large_events("e", 3);
    events[2].payload.resize(2001, b'x');
    let answer = store
        .append("pool-e", ExpectedVersion::NoStream, events)
        .await;
    assert!(
        matches!(answer, Err(StoreError::InvalidAppend(_))),
        "{answer:?}"
    );
    assert!(store.read_stream("pool-e", 0, 10).await.unwrap().is_empty());
}

//! The conformance suite on the EventStoreDB / KurrentDB backend, against the in-test gRPC server
//! (`allot_tests::esdb_server`), plus the backend's own failure cases: the `$all` filter, dropped
//! subscriptions, an unavailable or unreachable server, and a retried append of unknown outcome.
//!
//! `esdb_protocol` checks the in-test server itself against the raw client.
//!
//! `esdb` holds the behaviour tests of the server behaviours the adapter depends on.
//!
//! With `ALLOT_ESDB_URL` set (e.g. `esdb://localhost:2113?tls=false`), the suite and the
//! behaviour tests also run against that real server, each case in a fresh stream namespace:
//! `ALLOT_ESDB_URL=… cargo test -p allot-tests --test store_conformance_esdb esdb`.

use std::sync::Arc;
use std::time::Duration;

use allot_server::store::esdb::{EsdbOptions, EsdbStore, open_esdb};
use allot_server::store::{EventStore, ExpectedVersion, StoreError};
use allot_tests::esdb_server::EsdbTestServer;
use allot_tests::store_conformance::{self, event};
use futures::StreamExt;

mod esdb;
mod esdb_protocol;

/// Bound on waiting for one subscription item in these tests.
const ITEM_TIMEOUT: Duration = Duration::from_secs(20);

/// A store in its own namespace, so the suite's stream names (`hot`, `s`, …) pass the filter and
/// cases sharing a server do not see each other.
async fn namespaced(url: &str) -> EsdbStore {
    let namespace = format!("conformance-{}-", uuid::Uuid::new_v4().simple());
    EsdbStore::open(
        url,
        EsdbOptions {
            namespace: Some(namespace),
            ..EsdbOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn in_test_server() -> (EsdbStore, EsdbTestServer) {
    let server = EsdbTestServer::start().await;
    let store = namespaced(&server.url()).await;
    (store, server)
}

allot_tests::store_conformance_tests!(in_test_server);

/// Every case on one server, each in a fresh namespace: how the suite runs on a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_shared_server() {
    let server = EsdbTestServer::start().await;
    let url = server.url();
    store_conformance::run_all(|| async { (namespaced(&url).await, ()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esdb_conformance_on_the_real_server_when_configured() {
    let Ok(url) = std::env::var("ALLOT_ESDB_URL") else {
        eprintln!("skipped: ALLOT_ESDB_URL is not set (e.g. esdb://localhost:2113?tls=false)");
        return;
    };
    store_conformance::run_all(|| async { (namespaced(&url).await, ()) }).await;
}

async fn next_item(
    subscription: &mut allot_server::store::Subscription,
) -> Result<allot_server::store::RecordedEvent, StoreError> {
    tokio::time::timeout(ITEM_TIMEOUT, subscription.next())
        .await
        .expect("subscription stalled")
        .expect("subscription ended without an error")
}

/// Without a namespace, `$all` reads and subscriptions see the pool streams and `actors`, never
/// system streams or other applications' streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reads_see_only_allot_streams() {
    let server = EsdbTestServer::start().await;
    let store = open_esdb(&server.url()).await.unwrap();
    server.append_raw("other-app", "Thing", b"{}");
    store
        .append(
            "pool-1",
            ExpectedVersion::NoStream,
            vec![event("Declared", "p0")],
        )
        .await
        .unwrap();
    server.append_raw("$$pool-1", "$metadata", b"{}");
    store
        .append(
            "actors",
            ExpectedVersion::Any,
            vec![event("Registered", "k0")],
        )
        .await
        .unwrap();
    server.append_raw("$ce-pool", "$>", b"0@pool-1");
    store
        .append(
            "pool-1",
            ExpectedVersion::Exact(0),
            vec![event("Reserved", "p1")],
        )
        .await
        .unwrap();

    let all = store.read_all(None, usize::MAX).await.unwrap();
    let streams: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(streams, ["pool-1", "actors", "pool-1"]);
    assert_eq!(all[2].version, 1);
    assert_eq!(all[2].payload, b"p1");

    let after_first = store.read_all(Some(all[0].position), 1).await.unwrap();
    assert_eq!(after_first, all[1..2]);

    let mut subscription = store.subscribe_all(None).await.unwrap();
    for expected in &all {
        assert_eq!(&next_item(&mut subscription).await.unwrap(), expected);
    }
    server.append_raw("$stats-127.0.0.1:2113", "$statsCollected", b"{}");
    let live = store
        .append(
            "pool-2",
            ExpectedVersion::NoStream,
            vec![event("Declared", "q0")],
        )
        .await
        .unwrap();
    let next = next_item(&mut subscription).await.unwrap();
    assert_eq!(
        (next.stream.as_str(), next.position),
        ("pool-2", live.last_position)
    );
}

/// Subscriptions dropped by the server while appends go on resume after the last delivered
/// position: every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_subscription_resumes_without_gap_or_duplicate() {
    const APPENDS: usize = 120;
    const DROP_EVERY: usize = 15;
    let server = Arc::new(EsdbTestServer::start().await);
    let store = Arc::new(open_esdb(&server.url()).await.unwrap());
    for i in 0..10 {
        store
            .append(
                "pool-a",
                ExpectedVersion::Any,
                vec![event("E", format!("a{i}"))],
            )
            .await
            .unwrap();
    }
    let mut subscription = store.subscribe_all(None).await.unwrap();
    // Open on the server before the first drop, so that every drop ends a subscription (a drop
    // before it opened would end none, and the count at the end would be one short).
    tokio::time::timeout(ITEM_TIMEOUT, async {
        while server.subscriptions_opened() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the subscription never opened");
    let writer = {
        let (server, store) = (Arc::clone(&server), Arc::clone(&store));
        tokio::spawn(async move {
            for i in 0..APPENDS {
                store
                    .append(
                        "pool-b",
                        ExpectedVersion::Any,
                        vec![event("E", format!("b{i}"))],
                    )
                    .await
                    .unwrap();
                if i % DROP_EVERY == 0 {
                    // Drop, then wait for the resubscription, so every drop lands mid-stream.
                    let opened = server.subscriptions_opened();
                    server.drop_subscriptions();
                    tokio::time::timeout(ITEM_TIMEOUT, async {
                        while server.subscriptions_opened() == opened {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    })
                    .await
                    .expect("the subscription never came back");
                }
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 10 + APPENDS {
        seen.push(next_item(&mut subscription).await.unwrap());
    }
    writer.await.unwrap();
    let all = store.read_all(None, usize::MAX).await.unwrap();
    assert_eq!(
        seen, all,
        "gap, duplicate or reordering across resubscriptions"
    );
    let drops = APPENDS.div_ceil(DROP_EVERY) as u64;
    assert!(
        server.subscriptions_opened() > drops,
        "{} subscriptions opened for {drops} drops",
        server.subscriptions_opened()
    );
}

/// A server that goes away ends a subscription with a clear error after bounded retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_gives_up_with_a_clear_error_when_the_server_is_gone() {
    let mut server = EsdbTestServer::start().await;
    let store = open_esdb(&server.url()).await.unwrap();
    store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
        .await
        .unwrap();
    let mut subscription = store.subscribe_all(None).await.unwrap();
    next_item(&mut subscription).await.unwrap();
    server.stop();
    match next_item(&mut subscription).await {
        Err(StoreError::Unavailable { reason, .. }) => {
            assert!(reason.contains("subscription"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// While the server refuses service, appends and reads fail with `Unavailable` (an append whose
/// outcome is unknown says so); service comes back on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_server_gives_clear_errors_then_recovers() {
    let server = EsdbTestServer::start().await;
    let store = open_esdb(&server.url()).await.unwrap();
    server.set_unavailable(true);
    let append = store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
        .await;
    assert!(
        matches!(
            append,
            Err(StoreError::Unavailable {
                maybe_written: true,
                ..
            })
        ),
        "{append:?}"
    );
    let read = store.read_stream("pool-a", 0, 10).await;
    assert!(
        matches!(read, Err(StoreError::Unavailable { .. })),
        "{read:?}"
    );
    let read = store.read_all(None, 10).await;
    assert!(
        matches!(read, Err(StoreError::Unavailable { .. })),
        "{read:?}"
    );

    server.set_unavailable(false);
    let outcome = store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
        .await
        .unwrap();
    assert_eq!(outcome.last_version, 0);
    assert_eq!(store.read_stream("pool-a", 0, 10).await.unwrap().len(), 1);
}

/// Nothing listening: every operation is `Unavailable`, an append knows it was not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_clear_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url =
        format!("esdb://127.0.0.1:{port}?tls=false&discoveryInterval=1&maxDiscoverAttempts=2");
    let store = open_esdb(&url).await.unwrap();
    for _ in 0..2 {
        let append = store
            .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
            .await;
        assert!(
            matches!(append, Err(StoreError::Unavailable { .. })),
            "{append:?}"
        );
        let read = store.read_all(None, 10).await;
        assert!(
            matches!(read, Err(StoreError::Unavailable { .. })),
            "{read:?}"
        );
        let read = store.read_stream("pool-a", 0, 10).await;
        assert!(
            matches!(read, Err(StoreError::Unavailable { .. })),
            "{read:?}"
        );
    }
}

/// A subscription dropped during a short outage retries with backoff and carries on where it
/// was once the server serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_short_outage() {
    let server = EsdbTestServer::start().await;
    let store = open_esdb(&server.url()).await.unwrap();
    store
        .append("pool-a", ExpectedVersion::NoStream, vec![event("E", "a0")])
        .await
        .unwrap();
    let mut subscription = store.subscribe_all(None).await.unwrap();
    let first = next_item(&mut subscription).await.unwrap();

    server.set_unavailable(true);
    server.drop_subscriptions();
    let opened = server.subscriptions_opened();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_unavailable(false);
    store
        .append("pool-a", ExpectedVersion::Exact(0), vec![event("E", "a1")])
        .await
        .unwrap();
    let second = next_item(&mut subscription).await.unwrap();
    assert_eq!((second.version, second.payload.as_slice()), (1, &b"a1"[..]));
    assert!(second.position > first.position);
    assert!(server.subscriptions_opened() > opened, "never resubscribed");
}

/// The cluster form of the connection string (gossip discovery) reaches the same node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connection_string_discovers_the_leader_by_gossip() {
    let server = EsdbTestServer::start().await;
    let url = format!(
        "esdb+discover://127.0.0.1:{}?tls=false&discoveryInterval=1&maxDiscoverAttempts=3",
        server.addr().port()
    );
    let store = open_esdb(&url).await.unwrap();
    store
        .append("pool-c", ExpectedVersion::NoStream, vec![event("E", "c0")])
        .await
        .unwrap();
    let all = store.read_all(None, 10).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].stream, "pool-c");
    assert!(
        server.gossip_reads() > 0,
        "the client never asked for gossip"
    );
}

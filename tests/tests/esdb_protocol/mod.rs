//! The in-test EventStoreDB server speaks the protocol as the official client expects it: driven
//! here by the `kurrentdb` client directly, without the allot adapter, for the parts the adapter
//! does not use (backward reads, event-type filters, stream subscriptions, `StreamExists`).
//! A module of `store_conformance_esdb` rather than its own test target: one link, not two.

use std::time::Duration;

use allot_tests::esdb_server::EsdbTestServer;
use kurrentdb::{
    AppendToStreamOptions, Client, CurrentRevision, EventData, ReadAllOptions, ReadStreamOptions,
    StreamPosition, StreamState, SubscribeToStreamOptions, SubscriptionEvent, SubscriptionFilter,
};

const ITEM_TIMEOUT: Duration = Duration::from_secs(10);

async fn client(server: &EsdbTestServer) -> Client {
    Client::new(server.url().parse().unwrap()).unwrap()
}

fn events(kind: &str, n: usize) -> Vec<EventData> {
    (0..n)
        .map(|i| EventData::binary(kind, format!("{kind}{i}").into_bytes().into()))
        .collect()
}

async fn append(client: &Client, stream: &str, state: StreamState, data: Vec<EventData>) -> u64 {
    let options = AppendToStreamOptions::default().stream_state(state);
    client
        .append_to_stream(stream, &options, data)
        .await
        .unwrap()
        .next_expected_version
}

async fn read_stream(client: &Client, stream: &str, options: ReadStreamOptions) -> Vec<u64> {
    let mut read = client.read_stream(stream, &options).await.unwrap();
    let mut revisions = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        revisions.push(event.get_original_event().revision);
    }
    revisions
}

async fn read_all(client: &Client, options: ReadAllOptions) -> Vec<(String, String)> {
    let mut read = client.read_all(&options).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        let event = event.get_original_event();
        seen.push((event.stream_id().to_owned(), event.event_type.clone()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_features_announce_a_current_version() {
    let server = EsdbTestServer::start().await;
    let info = client(&server).await.server_info().await.unwrap();
    assert!(info.version() >= 24, "{}", info.version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_forwards_and_backwards_with_counts() {
    let server = EsdbTestServer::start().await;
    let client = client(&server).await;
    assert_eq!(
        append(&client, "s", StreamState::NoStream, events("E", 5)).await,
        4
    );

    let forwards = ReadStreamOptions::default().forwards();
    assert_eq!(
        read_stream(&client, "s", forwards.clone().max_count(3)).await,
        [0, 1, 2]
    );
    let from_3 = forwards.position(StreamPosition::Position(3));
    assert_eq!(read_stream(&client, "s", from_3).await, [3, 4]);
    let last_two = ReadStreamOptions::default()
        .position(StreamPosition::End)
        .max_count(2);
    assert_eq!(read_stream(&client, "s", last_two).await, [4, 3]);
    let back_from_2 = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::Position(2));
    assert_eq!(read_stream(&client, "s", back_from_2).await, [2, 1, 0]);

    let mut missing = client
        .read_stream("missing", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        missing.next().await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reads_forwards_backwards_and_filtered() {
    let server = EsdbTestServer::start().await;
    let client = client(&server).await;
    append(
        &client,
        "pool-1",
        StreamState::NoStream,
        events("Declared", 1),
    )
    .await;
    append(&client, "other", StreamState::Any, events("Thing", 1)).await;
    append(
        &client,
        "pool-2",
        StreamState::NoStream,
        events("Reserved", 2),
    )
    .await;

    let everything = read_all(&client, ReadAllOptions::default()).await;
    assert_eq!(everything.len(), 2 + 4, "system events are in $all");
    assert!(everything[0].0.starts_with('$'));

    let pools = SubscriptionFilter::on_stream_name().add_prefix("pool-");
    let forwards = read_all(&client, ReadAllOptions::default().filter(pools.clone())).await;
    let streams: Vec<&str> = forwards.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(streams, ["pool-1", "pool-2", "pool-2"]);

    let backwards = ReadAllOptions::default()
        .position(StreamPosition::End)
        .filter(pools)
        .max_count(2);
    let streams: Vec<String> = read_all(&client, backwards)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(streams, ["pool-2", "pool-2"]);

    let by_type = SubscriptionFilter::on_event_type()
        .add_prefix("Thing")
        .add_prefix("Decl");
    let kinds: Vec<String> = read_all(&client, ReadAllOptions::default().filter(by_type))
        .await
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(kinds, ["Declared", "Thing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expected_revision_case() {
    let server = EsdbTestServer::start().await;
    let client = client(&server).await;
    let refused = |state: StreamState| {
        let client = client.clone();
        async move {
            let options = AppendToStreamOptions::default().stream_state(state);
            match client.append_to_stream("s", &options, events("E", 1)).await {
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => current,
                other => panic!("expected a wrong-expected-version result, got {other:?}"),
            }
        }
    };
    assert_eq!(
        refused(StreamState::StreamExists).await,
        CurrentRevision::NoStream
    );
    assert_eq!(
        refused(StreamState::StreamRevision(0)).await,
        CurrentRevision::NoStream
    );
    assert_eq!(
        append(&client, "s", StreamState::NoStream, events("E", 2)).await,
        1
    );
    assert_eq!(
        refused(StreamState::NoStream).await,
        CurrentRevision::Current(1)
    );
    assert_eq!(
        refused(StreamState::StreamRevision(0)).await,
        CurrentRevision::Current(1)
    );
    assert_eq!(
        append(&client, "s", StreamState::StreamExists, events("F", 1)).await,
        2
    );
    assert_eq!(
        append(&client, "s", StreamState::StreamRevision(2), events("G", 1)).await,
        3
    );
    assert_eq!(
        append(&client, "s", StreamState::Any, events("H", 1)).await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_catches_up_then_goes_live() {
    let server = EsdbTestServer::start().await;
    let client = client(&server).await;
    append(&client, "s", StreamState::NoStream, events("E", 2)).await;
    let mut subscription = client
        .subscribe_to_stream(
            "s",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let mut next = async || {
        tokio::time::timeout(ITEM_TIMEOUT, subscription.next_subscription_event())
            .await
            .expect("subscription stalled")
            .unwrap()
    };
    assert!(matches!(next().await, SubscriptionEvent::Confirmed(_)));
    for revision in 0..2 {
        match next().await {
            SubscriptionEvent::EventAppeared(e) => {
                assert_eq!(e.get_original_event().revision, revision)
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(next().await, SubscriptionEvent::CaughtUp(_)));
    append(&client, "s", StreamState::StreamRevision(1), events("L", 1)).await;
    match next().await {
        SubscriptionEvent::EventAppeared(e) => {
            let event = e.get_original_event();
            assert_eq!((event.revision, event.event_type.as_str()), (2, "L"));
        }
        other => panic!("{other:?}"),
    }
}

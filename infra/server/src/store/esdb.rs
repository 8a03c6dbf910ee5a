//! The EventStoreDB / KurrentDB backend, on the official gRPC client (`kurrentdb`).
//!
//! Selected by a connection string (`esdb://`, `esdb+discover://`, `kurrentdb://`,
//! `kurrentdb+discover://`, see [`is_esdb_url`]); the string goes unchanged to the client's
//! settings parser, so TLS, credentials and cluster (gossip seed) forms work as the client
//! documents them.
//!
//! How the port maps onto the server:
//! - **Versions** are stream revisions. Every append passes an explicit expected state
//!   (`NoStream`, `StreamRevision(v)` or `Any`): the client's default is "any", which would turn
//!   the command path's optimistic check off.
//! - **Event ids** are the port's `ProposedEvent::id` (deterministic, derived from pool, actor
//!   and token), so a retried append of the same events is deduplicated by the server.
//! - **Positions** are the server's commit positions in the transaction log (byte offsets:
//!   strictly increasing, not contiguous). The server gives every event of an append its own
//!   commit position, so `AppendOutcome::last_position` is the write's commit position.
//! - **`read_all` and `subscribe_all`** read `$all` with a server-side stream-prefix filter: the
//!   allot streams (`pool-…` and `actors`), which leaves out every system stream (`$…`). With an
//!   [`EsdbOptions::namespace`] all stream names carry that prefix on the server and the filter is
//!   the namespace itself (several deployments, or test runs, sharing one server).
//! - **Subscriptions** are catch-up-then-live `$all` subscriptions. A dropped subscription is
//!   resumed after the last delivered position with a bounded backoff (see
//!   [`RESUBSCRIBE_ATTEMPTS_MAX`]); when that is exhausted the subscription yields
//!   `StoreError::Unavailable` and ends. Events at or before the last delivered position are
//!   skipped, so a resume never repeats one.
//! - **Unavailability** (transport errors, deadlines, a node going away) maps to
//!   `StoreError::Unavailable`; for an append that may have reached the server it says
//!   `maybe_written: true`.
//!
//! The client's connection task ends for good when it cannot reach a node while (re)connecting;
//! the store then builds a fresh client from the same settings on the next operation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_domain::streams::{ACTORS_STREAM, POOL_STREAM_PREFIX};
use async_trait::async_trait;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions,
    SubscriptionEvent, SubscriptionFilter,
};
use tracing::{debug, warn};

use super::{
    ActualVersion, AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent,
    StoreError, Subscription, validate_append,
};

/// Connection string schemes that select this backend.
pub const URL_SCHEMES: [&str; 4] = ["esdb", "esdb+discover", "kurrentdb", "kurrentdb+discover"];
/// Deadline of one append or read call (the client's own default, made explicit).
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(10);
/// Events buffered between the subscription task and its consumer.
pub const SUBSCRIPTION_BUFFER_EVENTS: usize = 256;
/// Consecutive failed attempts to (re)subscribe before the subscription gives up.
pub const RESUBSCRIBE_ATTEMPTS_MAX: u32 = 6;
/// First backoff before resubscribing; doubles per failed attempt up to
/// [`RESUBSCRIBE_BACKOFF_MAX`].
pub const RESUBSCRIBE_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// Longest backoff between two resubscribe attempts.
pub const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// True when `url` is a connection string for this backend.
pub fn is_esdb_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| URL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Opens the backend for `url` with default options; see [`EsdbStore::open`].
pub async fn open_esdb(url: &str) -> Result<EsdbStore, StoreError> {
    EsdbStore::open(url, EsdbOptions::default()).await
}

/// Options beyond the connection string.
#[derive(Debug, Clone, Default)]
pub struct EsdbOptions {
    /// Prefix put before every stream name on the server, and the `$all` filter instead of the
    /// allot stream prefixes. `None` (the default) stores `pool-…` and `actors` as they are.
    pub namespace: Option<String>,
}

/// The client and a generation number, so concurrent callers replace a broken client once.
struct Connection {
    generation: u64,
    client: Client,
}

struct Inner {
    settings: ClientSettings,
    connection: Mutex<Connection>,
    namespace: String,
    filter_prefixes: Vec<String>,
}

/// Cheap to clone: clones share one client.
#[derive(Clone)]
pub struct EsdbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EsdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsdbStore")
            .field("hosts", &self.inner.settings.hosts())
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

impl EsdbStore {
    /// Parses `url` and builds the client. Connecting is lazy (the first operation connects), so
    /// an unreachable server shows as `Unavailable` on the first append, read or subscription.
    /// Must be called inside a tokio runtime.
    pub async fn open(url: &str, options: EsdbOptions) -> Result<EsdbStore, StoreError> {
        if !is_esdb_url(url) {
            return Err(StoreError::Unavailable {
                reason: format!(
                    "not an EventStoreDB connection string (schemes: {})",
                    URL_SCHEMES.join(", ")
                ),
                maybe_written: false,
            });
        }
        let settings: ClientSettings = url.parse().map_err(|e| StoreError::Unavailable {
            reason: format!("invalid EventStoreDB connection string: {e}"),
            maybe_written: false,
        })?;
        let client = new_client(&settings)?;
        let namespace = options.namespace.unwrap_or_default();
        let filter_prefixes = if namespace.is_empty() {
            vec![POOL_STREAM_PREFIX.to_owned(), ACTORS_STREAM.to_owned()]
        } else {
            vec![namespace.clone()]
        };
        debug!(hosts = ?settings.hosts(), %namespace, "EventStoreDB store opened");
        Ok(EsdbStore {
            inner: Arc::new(Inner {
                settings,
                connection: Mutex::new(Connection {
                    generation: 0,
                    client,
                }),
                namespace,
                filter_prefixes,
            }),
        })
    }
}

impl Inner {
    fn client(&self) -> (u64, Client) {
        let connection = self.lock();
        (connection.generation, connection.client.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the client of `generation` if `error` says its connection task has ended.
    fn recover(&self, generation: u64, error: &kurrentdb::Error) {
        if !matches!(
            error,
            kurrentdb::Error::ConnectionClosed | kurrentdb::Error::GrpcConnectionError(_)
        ) {
            return;
        }
        let mut connection = self.lock();
        if connection.generation != generation {
            return;
        }
        match new_client(&self.settings) {
            Ok(client) => {
                warn!(%error, "EventStoreDB connection lost; a new client will reconnect");
                connection.client = client;
                connection.generation += 1;
            }
            Err(e) => warn!(error = %e, "cannot rebuild the EventStoreDB client"),
        }
    }

    fn server_stream(&self, stream: &str) -> String {
        format!("{}{stream}", self.namespace)
    }

    fn filter(&self) -> SubscriptionFilter {
        self.filter_prefixes
            .iter()
            .fold(SubscriptionFilter::on_stream_name(), |filter, prefix| {
                filter.add_prefix(prefix)
            })
    }

    fn recorded(&self, event: &kurrentdb::ResolvedEvent) -> Result<RecordedEvent, StoreError> {
        let event = event
            .event
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable {
                reason: "server sent a read result without an event".to_owned(),
                maybe_written: false,
            })?;
        let stream = event
            .stream_id()
            .strip_prefix(&self.namespace)
            .unwrap_or(event.stream_id());
        Ok(RecordedEvent {
            stream: stream.to_owned(),
            version: event.revision,
            position: event.position.commit,
            id: event.id.into_bytes(),
            kind: event.event_type.clone(),
            payload: event.data.to_vec(),
        })
    }
}

fn new_client(settings: &ClientSettings) -> Result<Client, StoreError> {
    Client::new(settings.clone()).map_err(|e| StoreError::Unavailable {
        reason: format!("cannot create the EventStoreDB client: {e}"),
        maybe_written: false,
    })
}

fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::NoStream => StreamState::NoStream,
        ExpectedVersion::Exact(version) => StreamState::StreamRevision(version),
        ExpectedVersion::Any => StreamState::Any,
    }
}

/// Whether a failed call may have reached the server (and so, for an append, landed).
fn may_have_reached_server(error: &kurrentdb::Error) -> bool {
    !matches!(
        error,
        kurrentdb::Error::ConnectionClosed
            | kurrentdb::Error::GrpcConnectionError(_)
            | kurrentdb::Error::InitializationError(_)
            | kurrentdb::Error::AccessDenied
            // A follower refused the write; the client reconnects to the leader it names.
            | kurrentdb::Error::NotLeaderException(_)
    )
}

fn unavailable(operation: &str, error: &kurrentdb::Error, maybe_written: bool) -> StoreError {
    StoreError::Unavailable {
        reason: format!("EventStoreDB {operation}: {error}"),
        maybe_written,
    }
}

/// A commit position as the client's `$all` position (commit and prepare are equal for the
/// events the server writes today).
fn all_position(commit: u64) -> Position {
    Position {
        commit,
        prepare: commit,
    }
}

impl EsdbStore {
    /// The position of `stream`'s event at `version`, which an append just reported written.
    async fn position_of(&self, stream: &str, version: u64) -> Result<u64, StoreError> {
        let landed_but = |reason: String| StoreError::Unavailable {
            reason: format!("EventStoreDB append landed, but {reason}"),
            maybe_written: true,
        };
        let events = self
            .read_stream(stream, version, 1)
            .await
            .map_err(|e| landed_but(format!("reading its position failed: {e}")))?;
        match events.first() {
            Some(event) if event.version == version => Ok(event.position),
            _ => Err(landed_but(format!(
                "event {version} of {stream} cannot be read back"
            ))),
        }
    }
}

#[async_trait]
impl EventStore for EsdbStore {
    fn shared_with_other_writers(&self) -> bool {
        true
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(stream, &events)?;
        let inner = &self.inner;
        let data: Vec<EventData> = events
            .into_iter()
            .map(|event| {
                EventData::binary(event.kind, event.payload.into())
                    .id(uuid::Uuid::from_bytes(event.id))
            })
            .collect();
        let options = AppendToStreamOptions::default()
            .stream_state(stream_state(expected))
            .deadline(OPERATION_DEADLINE);
        let (generation, client) = inner.client();
        match client
            .append_to_stream(inner.server_stream(stream), &options, data)
            .await
        {
            Ok(written) => {
                // The client reports the revision of the last event written.
                let last_version = written.next_expected_version;
                let last_position = if written.position == Position::start() {
                    // No position: the server recognised a retry of an append that had landed
                    // (by event id). Read the event back for its position.
                    self.position_of(stream, last_version).await?
                } else {
                    written.position.commit
                };
                Ok(AppendOutcome {
                    last_version,
                    last_position,
                    sealed: None,
                })
            }
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                Err(StoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual: match current {
                        CurrentRevision::Current(version) => ActualVersion::Exact(version),
                        CurrentRevision::NoStream => ActualVersion::NoStream,
                    },
                })
            }
            Err(error) => {
                inner.recover(generation, &error);
                let maybe_written = may_have_reached_server(&error);
                warn!(%stream, %error, maybe_written, "EventStoreDB append failed");
                Err(unavailable("append", &error, maybe_written))
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from_version))
            .max_count(max_count)
            .deadline(OPERATION_DEADLINE);
        let (generation, client) = inner.client();
        let failed = |error: kurrentdb::Error| {
            inner.recover(generation, &error);
            unavailable("read stream", &error, false)
        };
        let mut read = match client
            .read_stream(inner.server_stream(stream), &options)
            .await
        {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(error) => return Err(failed(error)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(event)) => events.push(inner.recorded(&event)?),
                Ok(None) => return Ok(events),
                // The server answers an unknown stream with "not found" inside the read.
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(error) => return Err(failed(error)),
            }
        }
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        // Reading `$all` from a position includes the event at it: ask for one more.
        let (start, count) = match after {
            Some(after) => (
                StreamPosition::Position(all_position(after)),
                max_count.saturating_add(1),
            ),
            None => (StreamPosition::Start, max_count),
        };
        let options = ReadAllOptions::default()
            .position(start)
            .forwards()
            .filter(inner.filter())
            .max_count(count)
            .deadline(OPERATION_DEADLINE);
        let (generation, client) = inner.client();
        let failed = |error: kurrentdb::Error| {
            inner.recover(generation, &error);
            unavailable("read $all", &error, false)
        };
        let mut read = client.read_all(&options).await.map_err(failed)?;
        let mut events = Vec::new();
        while events.len() < max_count {
            match read.next().await.map_err(failed)? {
                Some(event) => {
                    let event = inner.recorded(&event)?;
                    if after.is_none_or(|after| event.position > after) {
                        events.push(event);
                    }
                }
                None => break,
            }
        }
        Ok(events)
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
        tokio::spawn(follow_all(Arc::clone(&self.inner), after, tx));
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        Ok(Box::pin(events))
    }
}

type SubscriptionSender = tokio::sync::mpsc::Sender<Result<RecordedEvent, StoreError>>;

/// Feeds `tx` from `$all` after `after`, resubscribing after the last delivered position when
/// the server drops the subscription. Ends when the consumer goes away or retries run out.
async fn follow_all(inner: Arc<Inner>, after: Option<u64>, tx: SubscriptionSender) {
    let mut cursor = after;
    let mut failures: u32 = 0;
    loop {
        let position = cursor.map_or(StreamPosition::Start, |p| {
            StreamPosition::Position(all_position(p))
        });
        let options = SubscribeToAllOptions::default()
            .position(position)
            .filter(inner.filter());
        let (generation, client) = inner.client();
        let mut subscription = client.subscribe_to_all(&options).await;
        let error = loop {
            // Stop waiting on the server as soon as the consumer has gone.
            let next = tokio::select! {
                next = subscription.next_subscription_event() => next,
                () = tx.closed() => return,
            };
            match next {
                Ok(SubscriptionEvent::EventAppeared(event)) => {
                    failures = 0;
                    let event = match inner.recorded(&event) {
                        Ok(event) => event,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    // Resuming from a position must not repeat what was delivered.
                    if cursor.is_some_and(|c| event.position <= c) {
                        continue;
                    }
                    cursor = Some(event.position);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(SubscriptionEvent::Confirmed(_)) | Ok(SubscriptionEvent::CaughtUp(_)) => {
                    failures = 0;
                }
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        inner.recover(generation, &error);
        if tx.is_closed() {
            return;
        }
        failures += 1;
        if failures > RESUBSCRIBE_ATTEMPTS_MAX {
            warn!(%error, ?cursor, "EventStoreDB subscription gave up");
            let _ = tx
                .send(Err(StoreError::Unavailable {
                    reason: format!(
                        "EventStoreDB subscription dropped and {RESUBSCRIBE_ATTEMPTS_MAX} \
                         resubscribe attempts failed: {error}"
                    ),
                    maybe_written: false,
                }))
                .await;
            return;
        }
        let backoff = RESUBSCRIBE_BACKOFF_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(RESUBSCRIBE_BACKOFF_MAX);
        warn!(%error, ?cursor, attempt = failures, ?backoff, "EventStoreDB subscription dropped; resubscribing");
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_select_this_backend() {
        for url in [
            "esdb://localhost:2113?tls=false",
            "esdb+discover://a:2113,b:2113,c:2113",
            "kurrentdb://admin:changeit@localhost:2113",
            "KurrentDB+discover://cluster.example:2113?tls=true",
        ] {
            assert!(is_esdb_url(url), "{url}");
        }
        for url in [
            "/var/lib/allot",
            "file:///data",
            "http://localhost:2113",
            "",
        ] {
            assert!(!is_esdb_url(url), "{url}");
        }
    }

    #[test]
    fn expected_versions_are_always_explicit() {
        assert!(matches!(
            stream_state(ExpectedVersion::NoStream),
            StreamState::NoStream
        ));
        assert!(matches!(
            stream_state(ExpectedVersion::Exact(7)),
            StreamState::StreamRevision(7)
        ));
        assert!(matches!(
            stream_state(ExpectedVersion::Any),
            StreamState::Any
        ));
    }

    #[tokio::test]
    async fn a_bad_connection_string_is_a_clear_error() {
        let error = open_esdb("esdb://").await.unwrap_err();
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
        let error = open_esdb("/tmp/data").await.unwrap_err();
        assert!(error.to_string().contains("schemes"), "{error}");
    }
}

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
//!   and token). An append that fails in a way that may be transient (not leader, unavailable,
//!   connection lost, deadline) is retried with the same ids and expected version, a bounded
//!   number of times. KurrentDB answers a retry of events it already holds with success and the
//!   position of the last of them; the adapter uses that position, reads it back when a server
//!   sends none, and, when a retry is answered `WrongExpectedVersion` after an attempt that may
//!   have landed, reads the stream to see whether its own events are there (a server that does
//!   not deduplicate). An `Any` append that may have landed is not retried: the server's
//!   idempotence is not guaranteed for it.
//! - **Large appends**: an append over [`EsdbOptions::append_bytes_max`] (payload and kind
//!   bytes; [`APPEND_BYTES_MAX`] by default, under the server's `MaxAppendSize`) is sent as
//!   consecutive appends of the stream, in order, each expecting the revision the previous one
//!   left (the first the caller's) and each retried as above. All landing answer as one append
//!   would; a part failing after earlier ones landed is `Unavailable { maybe_written: true }`,
//!   the earlier parts stay, and the same append retried finds them as retries. An event over
//!   the limit alone is `InvalidAppend`, nothing sent.
//! - **Positions** are the server's commit positions in the transaction log (byte offsets:
//!   strictly increasing, not contiguous). The server gives every event of an append its own
//!   commit position, so `AppendOutcome::last_position` is the write's commit position.
//! - **Reads** never take a short answer for the end: a read continues from where the server
//!   stopped until it has the count asked for or the server sends nothing more, so a server that
//!   ends reads by size (or any other limit) loses nothing. A `$all` position that is not a
//!   record's (the port accepts any number) is answered `INVALID_ARGUMENT` by the server; the
//!   adapter then starts from the last allot record at or before it.
//! - **`read_all` and `subscribe_all`** read `$all` with a server-side stream-prefix filter: the
//!   allot streams (`pool-…` and `actors`), which leaves out every system stream (`$…`). With an
//!   [`EsdbOptions::namespace`] all stream names carry that prefix on the server and the filter is
//!   the namespace itself (several deployments, or test runs, sharing one server).
//! - **Subscriptions** are catch-up-then-live filtered `$all` subscriptions. The server sends a
//!   checkpoint every few dozen records it considered, matching or not; the follower keeps the
//!   later of the last delivered position and the last checkpoint, and a dropped subscription is
//!   resumed after it with a bounded backoff (see [`RESUBSCRIBE_ATTEMPTS_MAX`]), so a resume
//!   does not rescan records already passed over. When retries are exhausted the subscription
//!   yields `StoreError::Unavailable` and ends. Events at or before the last delivered position
//!   are skipped, so a resume never repeats one.
//! - **Unavailability** (transport errors, deadlines, a node going away) maps to
//!   `StoreError::Unavailable`; for an append that may have reached the server it says
//!   `maybe_written: true`.
//!
//! The client's connection task ends for good when it cannot reach a node while (re)connecting;
//! the store then builds a fresh client from the same settings on the next operation.

use std::future::Future;
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
/// Attempts of one append or read before a transient failure is returned.
pub const ATTEMPTS_MAX: u32 = 6;
/// First backoff before a retry; doubles per attempt up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// Longest backoff between two attempts.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bytes (payloads and kinds) of one append request, above which one stream's append is sent
/// as consecutive appends: 900 KiB, a margin under KurrentDB's default `MaxAppendSize` (1 MiB
/// of event data and metadata per request) for what the client adds per event.
pub const APPEND_BYTES_MAX: usize = 900 * 1024;
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
    /// Deadline of each append or read call; [`OPERATION_DEADLINE`] when `None`.
    pub deadline: Option<Duration>,
    /// Largest append request, in bytes of payloads and kinds; [`APPEND_BYTES_MAX`] when `None`.
    /// Keep it under the server's `MaxAppendSize`.
    pub append_bytes_max: Option<usize>,
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
    deadline: Duration,
    append_bytes_max: usize,
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
                deadline: options.deadline.unwrap_or(OPERATION_DEADLINE),
                append_bytes_max: options.append_bytes_max.unwrap_or(APPEND_BYTES_MAX),
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
            // KurrentDB validates a request before it writes anything.
            | kurrentdb::Error::Grpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
    )
}

/// Whether a failed call may succeed if tried again: the leader moved, the node is busy,
/// restarting or unreachable, or the call ran out of time.
fn transient(error: &kurrentdb::Error) -> bool {
    match error {
        kurrentdb::Error::NotLeaderException(_)
        | kurrentdb::Error::ServerError(_)
        | kurrentdb::Error::ConnectionClosed
        | kurrentdb::Error::GrpcConnectionError(_)
        | kurrentdb::Error::DeadlineExceeded => true,
        kurrentdb::Error::Grpc { code, .. } => {
            matches!(code, tonic::Code::Unavailable | tonic::Code::Aborted)
        }
        _ => false,
    }
}

/// KurrentDB's answer to a request it refuses before acting: a `$all` read or subscription from
/// a position that is not a record's, an append over its `MaxAppendSize`.
fn invalid_argument(error: &kurrentdb::Error) -> bool {
    matches!(
        error,
        kurrentdb::Error::Grpc {
            code: tonic::Code::InvalidArgument,
            ..
        }
    )
}

/// Bytes an event adds to an append request, as this adapter counts them.
fn event_bytes(event: &ProposedEvent) -> usize {
    event.payload.len().saturating_add(event.kind.len())
}

/// Splits `events`, in order, into the fewest consecutive parts of at most `bytes_max` bytes
/// each. An event larger than that alone is refused: nothing is sent.
fn split_append(
    events: Vec<ProposedEvent>,
    bytes_max: usize,
) -> Result<Vec<Vec<ProposedEvent>>, StoreError> {
    let mut parts: Vec<Vec<ProposedEvent>> = Vec::new();
    let mut current: Vec<ProposedEvent> = Vec::new();
    let mut current_bytes = 0usize;
    for (i, event) in events.into_iter().enumerate() {
        let bytes = event_bytes(&event);
        if bytes > bytes_max {
            return Err(StoreError::InvalidAppend(format!(
                "event {i}: {bytes} bytes exceed the append limit of {bytes_max}"
            )));
        }
        if !current.is_empty() && current_bytes.saturating_add(bytes) > bytes_max {
            parts.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes = current_bytes.saturating_add(bytes);
        current.push(event);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    Ok(parts)
}

/// The backoff before attempt `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX)
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

/// Where a `$all` read starts.
#[derive(Debug, Clone, Copy)]
enum AllStart {
    Beginning,
    /// At this position, inclusive (the server's rule for reads).
    At(u64),
}

impl Inner {
    /// Runs `call` with the current client until it succeeds, fails for good, or
    /// [`ATTEMPTS_MAX`] attempts failed transiently; replaces a client whose connection ended.
    async fn retrying<T, F, Fut>(&self, operation: &str, mut call: F) -> Result<T, kurrentdb::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, kurrentdb::Error>>,
    {
        let mut attempt = 1;
        loop {
            let (generation, client) = self.client();
            match call(client).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    self.recover(generation, &error);
                    if !transient(&error) || attempt >= ATTEMPTS_MAX {
                        return Err(error);
                    }
                    debug!(operation, %error, attempt, "EventStoreDB call failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One server read of `stream` from `from`, at most `count` events; an unknown stream is
    /// empty.
    async fn read_stream_once(
        &self,
        stream: &str,
        from: u64,
        count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from))
            .max_count(count)
            .deadline(self.deadline);
        let name = self.server_stream(stream);
        let read = self
            .retrying("read stream", |client| {
                let (options, name) = (&options, name.clone());
                async move {
                    let mut read = match client.read_stream(name, options).await {
                        Ok(read) => read,
                        Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                        Err(error) => return Err(error),
                    };
                    let mut events = Vec::new();
                    loop {
                        match read.next().await {
                            Ok(Some(event)) => events.push(event),
                            Ok(None) => return Ok(events),
                            // The server answers an unknown stream with "not found" in the read.
                            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                            Err(error) => return Err(error),
                        }
                    }
                }
            })
            .await
            .map_err(|error| unavailable("read stream", &error, false))?;
        read.iter().map(|event| self.recorded(event)).collect()
    }

    /// One server read of `$all` (allot streams only) from `start`, at most `count` events.
    async fn read_all_once(
        &self,
        start: AllStart,
        count: usize,
        backwards: bool,
    ) -> Result<Vec<RecordedEvent>, kurrentdb::Error> {
        let position = match start {
            AllStart::Beginning if backwards => StreamPosition::End,
            AllStart::Beginning => StreamPosition::Start,
            AllStart::At(position) => StreamPosition::Position(all_position(position)),
        };
        let options = ReadAllOptions::default()
            .position(position)
            .filter(self.filter())
            .max_count(count)
            .deadline(self.deadline);
        let options = if backwards {
            options.backwards()
        } else {
            options.forwards()
        };
        let read = self
            .retrying("read $all", |client| {
                let options = &options;
                async move {
                    let mut read = client.read_all(options).await?;
                    let mut events = Vec::new();
                    while let Some(event) = read.next().await? {
                        events.push(event);
                    }
                    Ok(events)
                }
            })
            .await?;
        read.iter()
            .map(|event| self.recorded(event))
            .collect::<Result<_, _>>()
            .map_err(|error| kurrentdb::Error::InternalParsingError(error.to_string()))
    }

    /// The position of the last allot record at or before `position` (`None`: there is none),
    /// read backwards from the end: where to start instead of a position that is not a
    /// record's.
    async fn record_at_or_before(&self, position: u64) -> Result<Option<u64>, StoreError> {
        let mut start = AllStart::Beginning;
        loop {
            let page = self
                .read_all_once(start, REWIND_PAGE_EVENTS, true)
                .await
                .map_err(|error| unavailable("read $all backwards", &error, false))?;
            if let Some(found) = page.iter().find(|event| event.position <= position) {
                return Ok(Some(found.position));
            }
            match page.last() {
                // Backwards from a position gives the records before it.
                Some(last) if page.len() == REWIND_PAGE_EVENTS => {
                    start = AllStart::At(last.position)
                }
                _ => return Ok(None),
            }
        }
    }
}

/// Events per backwards read when finding a record at or before a position.
const REWIND_PAGE_EVENTS: usize = 256;

impl EsdbStore {
    /// Where an append that the server accepted landed.
    async fn written(
        &self,
        stream: &str,
        written: &kurrentdb::WriteResult,
    ) -> Result<AppendOutcome, StoreError> {
        // The client reports the revision of the last event written.
        let last_version = written.next_expected_version;
        let last_position = if written.position == Position::start() {
            // No position: a server that recognised a retry without saying where it landed.
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

    /// The position of `stream`'s event at `version`, which an append just reported written.
    async fn position_of(&self, stream: &str, version: u64) -> Result<u64, StoreError> {
        let landed_but = |reason: String| StoreError::Unavailable {
            reason: format!("EventStoreDB append landed, but {reason}"),
            maybe_written: true,
        };
        let events = self
            .inner
            .read_stream_once(stream, version, 1)
            .await
            .map_err(|e| landed_but(format!("reading its position failed: {e}")))?;
        match events.first() {
            Some(event) if event.version == version => Ok(event.position),
            _ => Err(landed_but(format!(
                "event {version} of {stream} cannot be read back"
            ))),
        }
    }

    /// One append request of `events` to `stream` at `expected`, retried with the same ids
    /// while failures are transient.
    async fn append_part(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let inner = &self.inner;
        let ids: Vec<[u8; 16]> = events.iter().map(|event| event.id).collect();
        let data: Vec<EventData> = events
            .into_iter()
            .map(|event| {
                EventData::binary(event.kind, event.payload.into())
                    .id(uuid::Uuid::from_bytes(event.id))
            })
            .collect();
        let options = AppendToStreamOptions::default()
            .stream_state(stream_state(expected))
            .deadline(inner.deadline);
        let server_stream = inner.server_stream(stream);
        let mut maybe_written = false;
        let mut attempt = 1;
        loop {
            let (generation, client) = inner.client();
            let error = match client
                .append_to_stream(server_stream.as_str(), &options, data.clone())
                .await
            {
                Ok(written) => return self.written(stream, &written).await,
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                    if maybe_written
                        && let Some(landed) = self.landed_earlier(stream, expected, &ids).await?
                    {
                        debug!(%stream, attempt, "an earlier attempt of this append had landed");
                        return Ok(landed);
                    }
                    return Err(StoreError::WrongExpectedVersion {
                        stream: stream.to_owned(),
                        expected,
                        actual: match current {
                            CurrentRevision::Current(version) => ActualVersion::Exact(version),
                            CurrentRevision::NoStream => ActualVersion::NoStream,
                        },
                    });
                }
                Err(error) => error,
            };
            inner.recover(generation, &error);
            maybe_written |= may_have_reached_server(&error);
            if invalid_argument(&error) && !maybe_written {
                // KurrentDB refuses an append over its `MaxAppendSize` before writing.
                return Err(StoreError::InvalidAppend(format!(
                    "EventStoreDB refused the append: {error}"
                )));
            }
            // A retry of an `Any` append that may have landed could write it twice: the server
            // recognises retried ids for "any" only while they are in its cache.
            let retry = transient(&error)
                && attempt < ATTEMPTS_MAX
                && !(maybe_written && expected == ExpectedVersion::Any);
            if !retry {
                warn!(%stream, %error, maybe_written, attempt, "EventStoreDB append failed");
                return Err(unavailable("append", &error, maybe_written));
            }
            debug!(%stream, %error, maybe_written, attempt, "EventStoreDB append failed; retrying with the same event ids");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// After a retry was refused as a version conflict: whether an earlier attempt of this
    /// append landed (its events, by id, right after the expected version), and where.
    async fn landed_earlier(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        ids: &[[u8; 16]],
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let first = match expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(version) => version.saturating_add(1),
            ExpectedVersion::Any => return Ok(None),
        };
        let events = self
            .inner
            .read_stream_once(stream, first, ids.len())
            .await
            .map_err(|error| StoreError::Unavailable {
                reason: format!(
                    "EventStoreDB append may have landed; reading it back failed: {error}"
                ),
                maybe_written: true,
            })?;
        let ours =
            events.len() == ids.len() && events.iter().zip(ids).all(|(event, id)| event.id == *id);
        Ok(match events.last() {
            Some(last) if ours => Some(AppendOutcome {
                last_version: last.version,
                last_position: last.position,
                sealed: None,
            }),
            _ => None,
        })
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
        let parts = split_append(events, self.inner.append_bytes_max)?;
        let count = parts.len();
        let mut expected = expected;
        let mut landed: Option<AppendOutcome> = None;
        for (i, part) in parts.into_iter().enumerate() {
            match self.append_part(stream, expected, part).await {
                Ok(outcome) => {
                    // The next part goes right after this one, or not at all.
                    expected = ExpectedVersion::Exact(outcome.last_version);
                    landed = Some(outcome);
                }
                Err(error) if i == 0 => return Err(error),
                Err(error) => {
                    warn!(%stream, %error, part = i + 1, parts = count, "EventStoreDB append failed after earlier parts landed");
                    return Err(StoreError::Unavailable {
                        reason: format!(
                            "EventStoreDB append to {stream} sent in {count} parts: \
                             parts 1 to {i} landed, part {} failed: {error}",
                            i + 1
                        ),
                        maybe_written: true,
                    });
                }
            }
        }
        landed.ok_or_else(|| StoreError::InvalidAppend("no events".to_owned()))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut from = from_version;
        while events.len() < max_count {
            let chunk = self
                .inner
                .read_stream_once(stream, from, max_count - events.len())
                .await?;
            let Some(last) = chunk.last() else { break };
            from = last.version.saturating_add(1);
            events.extend(chunk);
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = &self.inner;
        let mut events: Vec<RecordedEvent> = Vec::new();
        // Everything at or before `bound` has been returned or was not asked for.
        let mut bound = after;
        let mut start = after.map_or(AllStart::Beginning, AllStart::At);
        let mut rewound = false;
        while events.len() < max_count {
            // Reading from a position includes the record at it: ask for one more.
            let count = match start {
                AllStart::At(_) => (max_count - events.len()).saturating_add(1),
                AllStart::Beginning => max_count - events.len(),
            };
            let chunk = match inner.read_all_once(start, count, false).await {
                Ok(chunk) => chunk,
                Err(error) if invalid_argument(&error) && !rewound => {
                    rewound = true;
                    let at = bound.unwrap_or(0);
                    start = inner
                        .record_at_or_before(at)
                        .await?
                        .map_or(AllStart::Beginning, AllStart::At);
                    debug!(
                        after = at,
                        ?start,
                        "not a record's position; starting at a record"
                    );
                    continue;
                }
                Err(error) => return Err(unavailable("read $all", &error, false)),
            };
            let before = events.len();
            for event in chunk {
                if events.len() == max_count {
                    break;
                }
                if bound.is_none_or(|bound| event.position > bound) {
                    bound = Some(event.position);
                    events.push(event);
                }
            }
            if events.len() == before {
                break;
            }
            start = bound.map_or(AllStart::Beginning, AllStart::At);
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

/// Feeds `tx` from `$all` after `after`, resubscribing when the server drops the subscription
/// after the later of the last delivered position and the last checkpoint. Ends when the
/// consumer goes away or retries run out.
async fn follow_all(inner: Arc<Inner>, after: Option<u64>, tx: SubscriptionSender) {
    // Everything at or before `delivered` was delivered (or not asked for).
    let mut delivered = after;
    // Where the next subscription starts (exclusive): every allot record at or before it has
    // been delivered.
    let mut resume = after;
    let mut rewound = false;
    let mut failures: u32 = 0;
    loop {
        let position = resume.map_or(StreamPosition::Start, |p| {
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
                    if delivered.is_some_and(|d| event.position <= d) {
                        continue;
                    }
                    delivered = Some(event.position);
                    resume = resume.max(delivered);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(SubscriptionEvent::Checkpoint(checkpoint)) => {
                    // The server considered every record up to here: nothing there is left
                    // to deliver, so a resume need not read them again.
                    failures = 0;
                    resume = resume.max(Some(checkpoint.commit));
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
        if invalid_argument(&error)
            && !rewound
            && let Some(at) = resume
        {
            // `after` was not a record's position: start at the record at or before it.
            rewound = true;
            match inner.record_at_or_before(at).await {
                Ok(found) => {
                    resume = found;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        failures += 1;
        if failures > RESUBSCRIBE_ATTEMPTS_MAX {
            warn!(%error, ?resume, "EventStoreDB subscription gave up");
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
        warn!(%error, ?resume, attempt = failures, ?backoff, "EventStoreDB subscription dropped; resubscribing");
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

    fn sized(payload: usize) -> ProposedEvent {
        ProposedEvent {
            id: [0; 16],
            kind: "E".to_owned(),
            payload: vec![b'x'; payload],
        }
    }

    #[test]
    fn appends_split_in_order_into_parts_under_the_limit() {
        // 1 + 9 = 10 bytes per event.
        let events: Vec<_> = (0..7).map(|_| sized(9)).collect();
        let parts = split_append(events.clone(), 30).unwrap();
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(parts.concat(), events);
        assert_eq!(split_append(events.clone(), 1000).unwrap(), [events]);
        let exact = split_append(vec![sized(29)], 30).unwrap();
        assert_eq!(exact.len(), 1);
        let over = split_append(vec![sized(1), sized(30)], 30);
        assert!(
            matches!(over, Err(StoreError::InvalidAppend(_))),
            "{over:?}"
        );
    }

    #[tokio::test]
    async fn a_bad_connection_string_is_a_clear_error() {
        let error = open_esdb("esdb://").await.unwrap_err();
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
        let error = open_esdb("/tmp/data").await.unwrap_err();
        assert!(error.to_string().contains("schemes"), "{error}");
    }
}

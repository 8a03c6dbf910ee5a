//! An in-test EventStoreDB / KurrentDB gRPC server: in memory, one node, never shipped.
//!
//! It implements what the `kurrentdb` client uses for the allot store backend, from the .proto
//! files that ship inside the client crate (compiled by `tests/build.rs`):
//! - `ServerFeatures.GetSupportedMethods` (so the client knows which protocol to speak; no
//!   batch append is announced, so appends use `Streams.Append`);
//! - `Gossip.Read`, answering with this one node as the alive leader, so the cluster forms of the
//!   connection string (`esdb+discover://…`) work too;
//! - `Streams.Append` with every expected-revision case (any, no stream, stream exists, exact),
//!   the `WrongExpectedVersion` result, and the server's idempotence rules by event id: an append
//!   whose events are all already written where it would put them succeeds without writing and
//!   answers the position of the last of them; an append whose events are partly written is a
//!   `WrongExpectedVersion`, whatever the expected revision (see [`Deduplication`]). An append
//!   larger than [`APPEND_BYTES_MAX`] (KurrentDB's `MaxAppendSize` default) is `INVALID_ARGUMENT`;
//! - `Streams.Read` of one stream and of `$all`, forwards and backwards, with counts (no count
//!   cap), stream-name and event-type prefix filters, `StreamNotFound` for an unknown stream, and
//!   subscriptions (confirmation, catch-up, `CaughtUp`, then live) to a stream or to `$all`. A
//!   `$all` read or subscription from a position inside a record is `INVALID_ARGUMENT`. A
//!   filtered `$all` subscription sends a checkpoint (the position of the last record it
//!   considered, matching or not) each time it has considered `window × multiplier` records (the
//!   window is 32 unless the request sets one), and one when catch-up reaches the end.
//!
//! Positions are byte-offset-like (each event advances the log by its size plus a record
//! header), so they are strictly increasing but not contiguous, as on the real server. A fresh
//! server holds a few system events (`$settings`, `$stats-…`), as a real node does, so filters
//! are exercised. Reading `$all` forwards from a position includes the event at it; subscribing
//! from a position starts after it; reading backwards from a position gives the events before
//! it (the real server's rules). A position at or past the end of the log reads nothing.
//!
//! Faults: [`EsdbTestServer::set_unavailable`] (every Streams call fails with `UNAVAILABLE`),
//! [`EsdbTestServer::set_not_leader`] (every Streams call is refused as by a follower, naming
//! this node as the leader), [`EsdbTestServer::drop_subscriptions`] (live subscriptions end with
//! `UNAVAILABLE`), [`EsdbTestServer::fail_appends_after_write`] (appends are written, then
//! answered with `UNAVAILABLE`: the outcome is unknown to the client),
//! [`EsdbTestServer::refuse_appends_after`] (after that many appends, appends are refused with
//! `PERMISSION_DENIED`, unwritten),
//! [`EsdbTestServer::set_read_bytes_max`] (reads end early after that many bytes),
//! [`EsdbTestServer::set_deduplication`] and [`EsdbTestServer::stop`].
//!
//! The client unwraps optional response fields, so every response fills them.

// tonic's service traits return `Status` by value; the helpers here feed them directly.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

/// Code generated from the client crate's protos.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    pub mod event_store {
        pub mod client {
            include!(concat!(env!("OUT_DIR"), "/event_store.client.rs"));
            pub mod streams {
                include!(concat!(env!("OUT_DIR"), "/event_store.client.streams.rs"));
            }
            pub mod gossip {
                include!(concat!(env!("OUT_DIR"), "/event_store.client.gossip.rs"));
            }
            pub mod server_features {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/event_store.client.server_features.rs"
                ));
            }
        }
    }
    pub mod google {
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
}

use proto::event_store::client::gossip::gossip_server::{Gossip, GossipServer};
use proto::event_store::client::gossip::{ClusterInfo, EndPoint, MemberInfo, member_info};
use proto::event_store::client::server_features::server_features_server::{
    ServerFeatures, ServerFeaturesServer,
};
use proto::event_store::client::server_features::{SupportedMethod, SupportedMethods};
use proto::event_store::client::streams::streams_server::{Streams, StreamsServer};
use proto::event_store::client::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, append_req, append_resp, read_req, read_resp,
};
use proto::event_store::client::{Empty, StreamIdentifier, uuid as proto_uuid};

/// The version announced to the client (a current KurrentDB).
pub const SERVER_VERSION: &str = "25.0.0";
/// Largest append, in bytes of event data and custom metadata: KurrentDB's `MaxAppendSize`
/// default (1 MiB).
pub const APPEND_BYTES_MAX: usize = 1024 * 1024;
/// Records a filtered `$all` subscription considers between checkpoints when the request names
/// no window (KurrentDB's read batch size).
pub const CHECKPOINT_WINDOW_DEFAULT: u64 = 32;
/// Events read under one lock while serving a read or a subscription.
const READ_PAGE_EVENTS: usize = 256;
/// Responses buffered per read or subscription before the sender waits for the client.
const RESPONSE_BUFFER: usize = 256;
/// Bytes of record header counted per event when advancing the log position.
const RECORD_HEADER_BYTES: u64 = 100;
/// The stream every `$all` read or subscription names.
const ALL_STREAM: &str = "$all";

#[derive(Debug, Clone)]
struct StoredEvent {
    stream: String,
    revision: u64,
    position: u64,
    id: ::uuid::Uuid,
    metadata: HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<StoredEvent>,
    streams: HashMap<String, Vec<usize>>,
    next_position: u64,
}

impl Log {
    fn head(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|s| (s.len() as u64).checked_sub(1))
    }

    fn push(&mut self, stream: &str, message: append_req::ProposedMessage) -> (u64, u64) {
        let revision = self.head(stream).map_or(0, |h| h + 1);
        let position = self.next_position;
        let mut metadata = message.metadata;
        metadata.insert("created".to_owned(), created_ticks().to_string());
        let size = message.data.len() + message.custom_metadata.len() + stream.len();
        self.next_position += RECORD_HEADER_BYTES + size as u64;
        let id = message
            .id
            .and_then(|id| uuid_from_proto(&id))
            .unwrap_or_else(::uuid::Uuid::new_v4);
        let index = self.events.len();
        self.events.push(StoredEvent {
            stream: stream.to_owned(),
            revision,
            position,
            id,
            metadata,
            custom_metadata: message.custom_metadata,
            data: message.data,
        });
        self.streams
            .entry(stream.to_owned())
            .or_default()
            .push(index);
        (revision, position)
    }

    /// Index of the first event with position >= `position`.
    fn first_at_or_after(&self, position: u64) -> usize {
        self.events.partition_point(|e| e.position < position)
    }
}

/// Ticks of 100 ns since the Unix epoch, as the server's `created` metadata.
fn created_ticks() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() / 100)
}

fn uuid_from_proto(id: &proto::event_store::client::Uuid) -> Option<::uuid::Uuid> {
    match id.value.as_ref()? {
        proto_uuid::Value::Structured(s) => {
            let high = (s.most_significant_bits as u64 as u128) << 64;
            let low = s.least_significant_bits as u64 as u128;
            Some(::uuid::Uuid::from_u128(high | low))
        }
        proto_uuid::Value::String(s) => s.parse().ok(),
    }
}

fn uuid_to_proto(id: ::uuid::Uuid, structured: bool) -> proto::event_store::client::Uuid {
    let value = if structured {
        let n = id.as_u128();
        proto_uuid::Value::Structured(proto_uuid::Structured {
            most_significant_bits: (n >> 64) as u64 as i64,
            least_significant_bits: n as u64 as i64,
        })
    } else {
        proto_uuid::Value::String(id.to_string())
    };
    proto::event_store::client::Uuid { value: Some(value) }
}

/// How the server answers an append of events it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deduplication {
    /// KurrentDB's rule: success without writing, with the position of the last event.
    OriginalPosition,
    /// Success without writing and without a position (as for a deleted stream).
    NoPosition,
    /// No idempotence check: expected revisions alone decide (a server that does not
    /// deduplicate, e.g. once the event ids have left its cache).
    Off,
}

impl Deduplication {
    fn from_u8(n: u8) -> Deduplication {
        match n {
            1 => Deduplication::NoPosition,
            2 => Deduplication::Off,
            _ => Deduplication::OriginalPosition,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Deduplication::OriginalPosition => 0,
            Deduplication::NoPosition => 1,
            Deduplication::Off => 2,
        }
    }
}

#[derive(Debug)]
struct State {
    addr: SocketAddr,
    log: Mutex<Log>,
    /// Number of events in the log; subscriptions wait on it.
    appended: watch::Sender<usize>,
    /// Bumped to drop every live subscription.
    drops: watch::Sender<u64>,
    unavailable: AtomicBool,
    not_leader: AtomicBool,
    fail_after_write: AtomicU32,
    /// Appends still served before every later one is refused unwritten; `u64::MAX`: never.
    refuse_after: AtomicU64,
    deduplication: AtomicU8,
    read_bytes_max: AtomicUsize,
    appends_served: AtomicU64,
    subscriptions_opened: AtomicU64,
    /// The `$all` position each `$all` subscription asked to start after (`None`: the start).
    subscription_starts: Mutex<Vec<Option<u64>>>,
    checkpoints_sent: AtomicU64,
    gossip_reads: AtomicU64,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append_raw(&self, stream: &str, event_type: &str, data: &[u8]) {
        let message = append_req::ProposedMessage {
            id: Some(uuid_to_proto(::uuid::Uuid::new_v4(), false)),
            metadata: HashMap::from([
                ("type".to_owned(), event_type.to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ]),
            custom_metadata: Vec::new(),
            data: data.to_vec(),
        };
        let count = {
            let mut log = self.lock();
            log.push(stream, message);
            log.events.len()
        };
        self.appended.send_replace(count);
    }

    fn check_available(&self) -> Result<(), Status> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("injected fault: server unavailable"));
        }
        if self.not_leader.load(Ordering::SeqCst) {
            return Err(not_leader(self.addr));
        }
        Ok(())
    }
}

/// A running in-test server bound to `127.0.0.1:0`. Stops when dropped.
pub struct EsdbTestServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl EsdbTestServer {
    /// Starts a server on a free local port, holding only a few system events.
    pub async fn start() -> EsdbTestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the in-test EventStoreDB server");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            addr,
            log: Mutex::new(Log::default()),
            appended: watch::channel(0).0,
            drops: watch::channel(0).0,
            unavailable: AtomicBool::new(false),
            not_leader: AtomicBool::new(false),
            fail_after_write: AtomicU32::new(0),
            refuse_after: AtomicU64::new(u64::MAX),
            deduplication: AtomicU8::new(Deduplication::OriginalPosition.to_u8()),
            read_bytes_max: AtomicUsize::new(usize::MAX),
            appends_served: AtomicU64::new(0),
            subscriptions_opened: AtomicU64::new(0),
            subscription_starts: Mutex::new(Vec::new()),
            checkpoints_sent: AtomicU64::new(0),
            gossip_reads: AtomicU64::new(0),
        });
        state.append_raw("$settings", "$settings", b"{}");
        state.append_raw("$stats-127.0.0.1:2113", "$statsCollected", b"{}");

        let (shutdown, stop) = oneshot::channel::<()>();
        let service = Service {
            state: Arc::clone(&state),
            addr,
            instance: ::uuid::Uuid::new_v4(),
        };
        tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(StreamsServer::new(service.clone()))
                .add_service(ServerFeaturesServer::new(service.clone()))
                .add_service(GossipServer::new(service))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop.await;
                    },
                )
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "in-test EventStoreDB server ended");
            }
        });
        EsdbTestServer {
            addr,
            state,
            shutdown: Some(shutdown),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for this server: plain text, and a short discovery interval (the
    /// client waits `discoveryInterval` before its first connection to a single node).
    pub fn url(&self) -> String {
        format!(
            "esdb://127.0.0.1:{}?tls=false&discoveryInterval=1&maxDiscoverAttempts=3",
            self.addr.port()
        )
    }

    /// While on, every Streams call fails with `UNAVAILABLE` (ServerFeatures still answers).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// While on, every Streams call is refused as a follower refuses it (`NOT_FOUND` with the
    /// `not-leader` exception and this node as the leader's endpoint): the leader moved.
    pub fn set_not_leader(&self, not_leader: bool) {
        self.state.not_leader.store(not_leader, Ordering::SeqCst);
    }

    /// How appends of events already written are answered (KurrentDB's rule by default).
    pub fn set_deduplication(&self, deduplication: Deduplication) {
        self.state
            .deduplication
            .store(deduplication.to_u8(), Ordering::SeqCst);
    }

    /// Reads end (successfully) once they have sent `bytes` of event data, so a read may return
    /// fewer events than asked for while more remain.
    pub fn set_read_bytes_max(&self, bytes: usize) {
        self.state.read_bytes_max.store(bytes, Ordering::SeqCst);
    }

    /// Ends every live subscription with `UNAVAILABLE`, as a node restart would.
    pub fn drop_subscriptions(&self) {
        self.state.drops.send_modify(|n| *n += 1);
    }

    /// The next `n` appends are written and then answered with `UNAVAILABLE`.
    pub fn fail_appends_after_write(&self, n: u32) {
        self.state.fail_after_write.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are served; every later one is refused with `PERMISSION_DENIED`
    /// before anything is written (as after an ACL change), until [`Self::accept_appends`].
    pub fn refuse_appends_after(&self, n: u32) {
        self.state
            .refuse_after
            .store(u64::from(n), Ordering::SeqCst);
    }

    /// Ends [`Self::refuse_appends_after`].
    pub fn accept_appends(&self) {
        self.state.refuse_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Stops serving: later calls fail to connect. Live calls end.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.drop_subscriptions();
    }

    /// Appends one event without any check, as another writer of the node would (system
    /// streams, streams of other applications).
    pub fn append_raw(&self, stream: &str, event_type: &str, data: &[u8]) {
        self.state.append_raw(stream, event_type, data);
    }

    /// Events stored, system events included.
    pub fn event_count(&self) -> usize {
        self.state.lock().events.len()
    }

    /// Events of one stream, by server-side name.
    pub fn stream_len(&self, stream: &str) -> usize {
        self.state.lock().streams.get(stream).map_or(0, Vec::len)
    }

    /// Append calls answered (successes, conflicts and injected failures).
    pub fn appends_served(&self) -> u64 {
        self.state.appends_served.load(Ordering::SeqCst)
    }

    /// Gossip reads answered (cluster discovery).
    pub fn gossip_reads(&self) -> u64 {
        self.state.gossip_reads.load(Ordering::SeqCst)
    }

    /// Subscriptions opened so far (resubscriptions included).
    pub fn subscriptions_opened(&self) -> u64 {
        self.state.subscriptions_opened.load(Ordering::SeqCst)
    }

    /// Where each `$all` subscription asked to start (after that position; `None`: the start),
    /// in the order they were opened.
    pub fn subscription_starts(&self) -> Vec<Option<u64>> {
        self.state
            .subscription_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checkpoints sent to subscriptions so far.
    pub fn checkpoints_sent(&self) -> u64 {
        self.state.checkpoints_sent.load(Ordering::SeqCst)
    }

    /// The position of the last event in the log (system events included).
    pub fn last_position(&self) -> Option<u64> {
        self.state.lock().events.last().map(|e| e.position)
    }
}

impl Drop for EsdbTestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone)]
struct Service {
    state: Arc<State>,
    addr: SocketAddr,
    instance: ::uuid::Uuid,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn response_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> ResponseStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[tonic::async_trait]
impl ServerFeatures for Service {
    async fn get_supported_methods(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let streams = "event_store.client.streams.streams";
        let method = |name: &str, features: &[&str]| SupportedMethod {
            method_name: name.to_owned(),
            service_name: streams.to_owned(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        };
        Ok(Response::new(SupportedMethods {
            methods: vec![
                method("read", &["position", "events"]),
                method("append", &[]),
            ],
            event_store_server_version: SERVER_VERSION.to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl Gossip for Service {
    async fn read(&self, _request: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        self.state.gossip_reads.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let leader = MemberInfo {
            instance_id: Some(uuid_to_proto(self.instance, true)),
            time_stamp: now.as_millis() as i64,
            state: member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(EndPoint {
                address: self.addr.ip().to_string(),
                port: u32::from(self.addr.port()),
            }),
        };
        Ok(Response::new(ClusterInfo {
            members: vec![leader],
        }))
    }
}

/// The expected revision of an append, as the request states it.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Any,
    NoStream,
    StreamExists,
    Revision(u64),
}

fn wrong_expected_version(expected: Expected, head: Option<u64>) -> AppendResp {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };
    let (current, current_20_6_0) = match head {
        Some(h) => (
            CurrentRevisionOption::CurrentRevision(h),
            CurrentRevisionOption2060::CurrentRevision2060(h),
        ),
        None => (
            CurrentRevisionOption::CurrentNoStream(Empty {}),
            CurrentRevisionOption2060::NoStream2060(Empty {}),
        ),
    };
    let (expected, expected_20_6_0) = match expected {
        Expected::Any => (
            ExpectedRevisionOption::ExpectedAny(Empty {}),
            ExpectedRevisionOption2060::Any2060(Empty {}),
        ),
        Expected::NoStream => (
            ExpectedRevisionOption::ExpectedNoStream(Empty {}),
            // The old field has no "no stream": the real server sends revision -1 here.
            ExpectedRevisionOption2060::ExpectedRevision2060(u64::MAX),
        ),
        Expected::StreamExists => (
            ExpectedRevisionOption::ExpectedStreamExists(Empty {}),
            ExpectedRevisionOption2060::StreamExists2060(Empty {}),
        ),
        Expected::Revision(r) => (
            ExpectedRevisionOption::ExpectedRevision(r),
            ExpectedRevisionOption2060::ExpectedRevision2060(r),
        ),
    };
    AppendResp {
        result: Some(append_resp::Result::WrongExpectedVersion(
            append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(current_20_6_0),
                expected_revision_option_20_6_0: Some(expected_20_6_0),
                current_revision_option: Some(current),
                expected_revision_option: Some(expected),
            },
        )),
    }
}

/// The caller's deadline (`grpc-timeout`), checked before the server acts, as KurrentDB cancels
/// a call whose deadline has passed.
struct Deadline {
    started: std::time::Instant,
    timeout: Option<std::time::Duration>,
}

impl Deadline {
    fn of<T>(request: &Request<T>) -> Deadline {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Deadline {
            started: std::time::Instant::now(),
            timeout,
        }
    }

    fn check(&self) -> Result<(), Status> {
        match self.timeout {
            Some(timeout) if self.started.elapsed() >= timeout => {
                Err(Status::deadline_exceeded("Deadline Exceeded"))
            }
            _ => Ok(()),
        }
    }
}

/// A `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let unit = value.chars().last()?;
    let amount: u64 = value.get(..value.len() - 1)?.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount.saturating_mul(3600)),
        'M' => Duration::from_secs(amount.saturating_mul(60)),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// What a follower answers a call that needs the leader (KurrentDB's `LeaderInfo` status): the
/// client reconnects to the endpoint it names.
fn not_leader(leader: SocketAddr) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("exception", MetadataValue::from_static("not-leader"));
    if let Ok(host) = leader.ip().to_string().parse() {
        metadata.insert("leader-endpoint-host", host);
    }
    metadata.insert("leader-endpoint-port", MetadataValue::from(leader.port()));
    Status::with_metadata(Code::NotFound, "Leader info available", metadata)
}

/// KurrentDB's answer to a `$all` read or subscription from a position that is not a record's.
fn invalid_position() -> Status {
    Status::invalid_argument("Trying to read from an invalid position.")
}

/// KurrentDB's answer to an append larger than its `MaxAppendSize`.
fn append_too_large() -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "exception",
        MetadataValue::from_static("maximum-append-size-exceeded"),
    );
    metadata.insert("maximum-append-size", MetadataValue::from(APPEND_BYTES_MAX));
    Status::with_metadata(
        Code::InvalidArgument,
        format!("Maximum Append Size of {APPEND_BYTES_MAX} Exceeded."),
        metadata,
    )
}

fn append_success(revision: u64, position: u64) -> AppendResp {
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    AppendResp {
        result: Some(append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(CurrentRevisionOption::CurrentRevision(revision)),
            position_option: Some(PositionOption::Position(append_resp::Position {
                commit_position: position,
                prepare_position: position,
            })),
        })),
    }
}

fn append_deduplicated(revision: u64) -> AppendResp {
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    AppendResp {
        result: Some(append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(CurrentRevisionOption::CurrentRevision(revision)),
            position_option: Some(PositionOption::NoPosition(Empty {})),
        })),
    }
}

/// How an append relates to what the stream already holds (KurrentDB's commit check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotence {
    /// None of its events is written: the expected revision decides.
    New,
    /// All of them are, where the request would put them: a retry. The last one's revision and
    /// position.
    Retry { revision: u64, position: u64 },
    /// Some are written and some are not: a bad request, answered `WrongExpectedVersion`.
    Partial,
}

/// KurrentDB's idempotence check. With an exact expected revision (or no stream) behind the
/// stream's head, the ids are compared with the events after the expected revision; with any
/// (or stream exists), each id is looked up in the stream. Either way: all found is a retry,
/// the first not found is a new append, a later one not found is a partial duplicate.
fn idempotence(log: &Log, stream: &str, expected: Expected, ids: &[::uuid::Uuid]) -> Idempotence {
    let Some(indexes) = log.streams.get(stream) else {
        return Idempotence::New;
    };
    let head = indexes.len() as u64 - 1;
    let revision_of = |i: usize, id: &::uuid::Uuid| -> Option<u64> {
        match expected {
            Expected::NoStream | Expected::Revision(_) => {
                let first = match expected {
                    Expected::Revision(r) => r.checked_add(1)?,
                    _ => 0,
                };
                let revision = first.checked_add(i as u64)?;
                let index = *indexes.get(usize::try_from(revision).ok()?)?;
                (log.events[index].id == *id).then_some(revision)
            }
            Expected::Any | Expected::StreamExists => indexes
                .iter()
                .find(|&&index| log.events[index].id == *id)
                .map(|&index| log.events[index].revision),
        }
    };
    if let Expected::Revision(r) = expected
        && r >= head
    {
        return Idempotence::New;
    }
    let mut last = None;
    for (i, id) in ids.iter().enumerate() {
        match revision_of(i, id) {
            Some(revision) => last = Some(revision),
            None if i == 0 => return Idempotence::New,
            None => return Idempotence::Partial,
        }
    }
    match last {
        Some(revision) => {
            let index = usize::try_from(revision).ok().and_then(|r| indexes.get(r));
            match index {
                Some(&index) => Idempotence::Retry {
                    revision,
                    position: log.events[index].position,
                },
                None => Idempotence::New,
            }
        }
        None => Idempotence::New,
    }
}

#[tonic::async_trait]
impl Streams for Service {
    type ReadStream = ResponseStream<ReadResp>;
    type BatchAppendStream = ResponseStream<BatchAppendResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        self.state.check_available()?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("read without options"))?;
        let read = ReadPlan::from_options(options)?;
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let state = Arc::clone(&self.state);
        if read.subscription {
            // Watching before the subscription counts as opened: a test that drops
            // subscriptions once it sees one open must end this one.
            let watches = (state.appended.subscribe(), state.drops.subscribe());
            if read.stream.is_none() {
                let start = match read.from {
                    ReadFrom::At(p) => Some(p),
                    ReadFrom::Start | ReadFrom::End => None,
                };
                state
                    .subscription_starts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(start);
            }
            state.subscriptions_opened.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_subscription(state, read, tx, watches));
        } else {
            tokio::spawn(serve_read(state, read, tx));
        }
        Ok(Response::new(response_stream(rx)))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        self.state.check_available()?;
        let deadline = Deadline::of(&request);
        let mut messages = request.into_inner();
        let options = match messages.message().await?.and_then(|m| m.content) {
            Some(append_req::Content::Options(options)) => options,
            _ => {
                return Err(Status::invalid_argument(
                    "append must start with its options",
                ));
            }
        };
        let stream = stream_name(options.stream_identifier)?;
        let expected = match options.expected_stream_revision {
            Some(append_req::options::ExpectedStreamRevision::Revision(r)) => Expected::Revision(r),
            Some(append_req::options::ExpectedStreamRevision::NoStream(_)) => Expected::NoStream,
            Some(append_req::options::ExpectedStreamRevision::Any(_)) => Expected::Any,
            Some(append_req::options::ExpectedStreamRevision::StreamExists(_)) => {
                Expected::StreamExists
            }
            None => {
                return Err(Status::invalid_argument(
                    "append without an expected revision",
                ));
            }
        };
        let mut proposed = Vec::new();
        let mut bytes = 0usize;
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(m)) => {
                    bytes = bytes.saturating_add(m.data.len() + m.custom_metadata.len());
                    proposed.push(m);
                }
                _ => return Err(Status::invalid_argument("options sent twice")),
            }
            if bytes > APPEND_BYTES_MAX {
                return Err(append_too_large());
            }
        }
        self.state.appends_served.fetch_add(1, Ordering::SeqCst);
        // An availability flip while the request streamed in still fails it.
        self.state.check_available()?;
        deadline.check()?;
        let refused = self
            .state
            .refuse_after
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                u64::MAX => None,
                0 => Some(0),
                n => Some(n - 1),
            })
            .is_ok_and(|n| n == 0);
        if refused {
            return Err(Status::permission_denied(
                "injected fault: append refused, nothing written",
            ));
        }

        let (response, count) = {
            let mut log = self.state.lock();
            let head = log.head(&stream);
            let ids: Vec<::uuid::Uuid> = proposed
                .iter()
                .filter_map(|m| m.id.as_ref().and_then(uuid_from_proto))
                .collect();
            let deduplication =
                Deduplication::from_u8(self.state.deduplication.load(Ordering::SeqCst));
            let checked = if deduplication == Deduplication::Off || ids.len() != proposed.len() {
                Idempotence::New
            } else {
                idempotence(&log, &stream, expected, &ids)
            };
            match checked {
                Idempotence::New => {}
                Idempotence::Retry { revision, position } => {
                    let response = match deduplication {
                        Deduplication::NoPosition => append_deduplicated(revision),
                        _ => append_success(revision, position),
                    };
                    return Ok(Response::new(response));
                }
                Idempotence::Partial => {
                    return Ok(Response::new(wrong_expected_version(expected, head)));
                }
            }
            let accepted = match expected {
                Expected::Any => true,
                Expected::NoStream => head.is_none(),
                Expected::StreamExists => head.is_some(),
                Expected::Revision(r) => head == Some(r),
            };
            if !accepted {
                return Ok(Response::new(wrong_expected_version(expected, head)));
            }
            if proposed.is_empty() {
                // The real server answers an empty append with the stream's head.
                let position = log.events.last().map_or(0, |e| e.position);
                let response = match head {
                    Some(h) => append_success(h, position),
                    None => AppendResp {
                        result: Some(append_resp::Result::Success(append_resp::Success {
                            current_revision_option: Some(
                                append_resp::success::CurrentRevisionOption::NoStream(Empty {}),
                            ),
                            position_option: Some(
                                append_resp::success::PositionOption::NoPosition(Empty {}),
                            ),
                        })),
                    },
                };
                return Ok(Response::new(response));
            }
            let mut last = (0, 0);
            for message in proposed {
                last = log.push(&stream, message);
            }
            (append_success(last.0, last.1), log.events.len())
        };
        self.state.appended.send_replace(count);
        let fail = self
            .state
            .fail_after_write
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(Status::unavailable(
                "injected fault: connection lost after the append was written",
            ));
        }
        Ok(Response::new(response))
    }

    async fn delete(&self, _request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(Status::unimplemented(
            "delete is not served by the in-test server",
        ))
    }

    async fn tombstone(
        &self,
        _request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        Err(Status::unimplemented(
            "tombstone is not served by the in-test server",
        ))
    }

    async fn batch_append(
        &self,
        _request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(Status::unimplemented(
            "batch append is not served by the in-test server",
        ))
    }
}

fn stream_name(identifier: Option<StreamIdentifier>) -> Result<String, Status> {
    let identifier = identifier.ok_or_else(|| Status::invalid_argument("no stream identifier"))?;
    String::from_utf8(identifier.stream_name)
        .map_err(|_| Status::invalid_argument("stream name is not UTF-8"))
}

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
enum ReadFrom {
    Start,
    End,
    /// A stream revision or an `$all` commit position.
    At(u64),
}

#[derive(Debug, Clone)]
enum Filter {
    None,
    StreamPrefixes(Vec<String>),
    TypePrefixes(Vec<String>),
}

impl Filter {
    fn matches(&self, event: &StoredEvent) -> bool {
        match self {
            Filter::None => true,
            Filter::StreamPrefixes(p) => p.iter().any(|p| event.stream.starts_with(p.as_str())),
            Filter::TypePrefixes(p) => {
                let kind = event.metadata.get("type").map_or("", String::as_str);
                p.iter().any(|p| kind.starts_with(p.as_str()))
            }
        }
    }
}

/// A parsed `ReadReq`.
#[derive(Debug, Clone)]
struct ReadPlan {
    /// `None` for `$all`.
    stream: Option<String>,
    from: ReadFrom,
    backwards: bool,
    count: u64,
    subscription: bool,
    filter: Filter,
    /// Records considered between two checkpoints of a filtered `$all` subscription.
    checkpoint_interval: Option<u64>,
    structured_ids: bool,
}

impl ReadPlan {
    fn from_options(options: read_req::Options) -> Result<ReadPlan, Status> {
        use read_req::options::{
            CountOption, FilterOption, StreamOption, all_options::AllOption, filter_options,
            stream_options::RevisionOption, uuid_option,
        };
        let (stream, from) = match options.stream_option {
            Some(StreamOption::Stream(s)) => {
                let from = match s.revision_option {
                    Some(RevisionOption::Revision(r)) => ReadFrom::At(r),
                    Some(RevisionOption::Start(_)) | None => ReadFrom::Start,
                    Some(RevisionOption::End(_)) => ReadFrom::End,
                };
                (Some(stream_name(s.stream_identifier)?), from)
            }
            Some(StreamOption::All(a)) => {
                let from = match a.all_option {
                    Some(AllOption::Position(p)) => ReadFrom::At(p.commit_position),
                    Some(AllOption::Start(_)) | None => ReadFrom::Start,
                    Some(AllOption::End(_)) => ReadFrom::End,
                };
                (None, from)
            }
            None => return Err(Status::invalid_argument("read without a stream option")),
        };
        let (count, subscription) = match options.count_option {
            Some(CountOption::Count(n)) => (n, false),
            Some(CountOption::Subscription(_)) => (u64::MAX, true),
            None => return Err(Status::invalid_argument("read without a count option")),
        };
        let mut checkpoint_interval = None;
        let filter = match options.filter_option {
            Some(FilterOption::Filter(f)) => {
                let window = match f.window {
                    Some(filter_options::Window::Max(n)) if n > 0 => u64::from(n),
                    _ => CHECKPOINT_WINDOW_DEFAULT,
                };
                let multiplier = u64::from(f.checkpoint_interval_multiplier.max(1));
                checkpoint_interval = Some(window.saturating_mul(multiplier));
                let (expression, on_stream) = match f.filter {
                    Some(filter_options::Filter::StreamIdentifier(e)) => (e, true),
                    Some(filter_options::Filter::EventType(e)) => (e, false),
                    None => return Err(Status::invalid_argument("filter without an expression")),
                };
                if !expression.regex.is_empty() {
                    return Err(Status::invalid_argument(
                        "regex filters are not served by the in-test server",
                    ));
                }
                if stream.is_some() {
                    return Err(Status::invalid_argument("filters apply to $all only"));
                }
                if on_stream {
                    Filter::StreamPrefixes(expression.prefix)
                } else {
                    Filter::TypePrefixes(expression.prefix)
                }
            }
            Some(FilterOption::NoFilter(_)) | None => Filter::None,
        };
        let structured_ids = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(uuid_option::Content::Structured(_))
        );
        Ok(ReadPlan {
            stream,
            from,
            backwards: options.read_direction == read_req::options::ReadDirection::Backwards as i32,
            count,
            subscription,
            filter,
            checkpoint_interval: checkpoint_interval.filter(|_| subscription),
            structured_ids,
        })
    }

    fn identifier(&self) -> StreamIdentifier {
        StreamIdentifier {
            stream_name: self
                .stream
                .as_deref()
                .unwrap_or(ALL_STREAM)
                .as_bytes()
                .to_vec(),
        }
    }

    fn response(&self, event: &StoredEvent) -> ReadResp {
        use read_resp::read_event::{Position, RecordedEvent};
        ReadResp {
            content: Some(read_resp::Content::Event(read_resp::ReadEvent {
                event: Some(RecordedEvent {
                    id: Some(uuid_to_proto(event.id, self.structured_ids)),
                    stream_identifier: Some(StreamIdentifier {
                        stream_name: event.stream.as_bytes().to_vec(),
                    }),
                    stream_revision: event.revision,
                    prepare_position: event.position,
                    commit_position: event.position,
                    metadata: event.metadata.clone(),
                    custom_metadata: event.custom_metadata.clone(),
                    data: event.data.clone(),
                }),
                link: None,
                position: Some(Position::CommitPosition(event.position)),
            })),
        }
    }

    /// Whether a `$all` read or subscription starts at a place records start: a record's own
    /// position, or the end of the log or past it.
    fn starts_at_a_record(&self, log: &Log) -> bool {
        match (&self.stream, self.from) {
            (None, ReadFrom::At(p)) => {
                p >= log.next_position || {
                    let i = log.first_at_or_after(p);
                    log.events.get(i).is_some_and(|e| e.position == p)
                }
            }
            _ => true,
        }
    }

    /// Log indexes this read covers, in read order, from `cursor` (the next index to look at
    /// when reading `$all` forwards, or the next revision of the stream), at most one page.
    fn page(&self, log: &Log, cursor: &mut Cursor) -> Vec<StoredEvent> {
        let mut page = Vec::new();
        match (&self.stream, self.backwards) {
            (Some(stream), false) => {
                let Some(indexes) = log.streams.get(stream) else {
                    return page;
                };
                while page.len() < READ_PAGE_EVENTS && cursor.next < indexes.len() {
                    page.push(log.events[indexes[cursor.next]].clone());
                    cursor.next += 1;
                }
            }
            (None, false) => {
                while page.len() < READ_PAGE_EVENTS && cursor.next < log.events.len() {
                    let event = &log.events[cursor.next];
                    cursor.next += 1;
                    if self.filter.matches(event) {
                        page.push(event.clone());
                    }
                }
            }
            (Some(stream), true) => {
                let Some(indexes) = log.streams.get(stream) else {
                    return page;
                };
                while page.len() < READ_PAGE_EVENTS && cursor.next > 0 {
                    cursor.next -= 1;
                    if let Some(&i) = indexes.get(cursor.next) {
                        page.push(log.events[i].clone());
                    }
                }
            }
            (None, true) => {
                while page.len() < READ_PAGE_EVENTS && cursor.next > 0 {
                    cursor.next -= 1;
                    let event = &log.events[cursor.next];
                    if self.filter.matches(event) {
                        page.push(event.clone());
                    }
                }
            }
        }
        page
    }

    /// The first cursor of a plain read (inclusive of `ReadFrom::At`, except backwards on `$all`).
    fn read_cursor(&self, log: &Log) -> Cursor {
        let stream_len = |s: &str| log.streams.get(s).map_or(0, Vec::len);
        let clamp = |r: u64| usize::try_from(r).unwrap_or(usize::MAX);
        let next = match (&self.stream, self.backwards, self.from) {
            (Some(_), false, ReadFrom::Start) | (None, false, ReadFrom::Start) => 0,
            (Some(s), false, ReadFrom::End) => stream_len(s),
            (None, false, ReadFrom::End) => log.events.len(),
            (Some(_), false, ReadFrom::At(r)) => clamp(r),
            (None, false, ReadFrom::At(p)) => log.first_at_or_after(p),
            (Some(_), true, ReadFrom::Start) | (None, true, ReadFrom::Start) => 0,
            (Some(s), true, ReadFrom::End) => stream_len(s),
            (None, true, ReadFrom::End) => log.events.len(),
            // Backwards from revision r includes r.
            (Some(s), true, ReadFrom::At(r)) => clamp(r).saturating_add(1).min(stream_len(s)),
            // Backwards from a position gives the events before it.
            (None, true, ReadFrom::At(p)) => log.first_at_or_after(p),
        };
        Cursor { next }
    }

    /// The first cursor of a subscription: after `ReadFrom::At`, at the end for `ReadFrom::End`.
    fn subscription_cursor(&self, log: &Log) -> Cursor {
        let next = match (&self.stream, self.from) {
            (_, ReadFrom::Start) => 0,
            (Some(s), ReadFrom::End) => log.streams.get(s).map_or(0, Vec::len),
            (None, ReadFrom::End) => log.events.len(),
            (Some(_), ReadFrom::At(r)) => {
                usize::try_from(r).unwrap_or(usize::MAX).saturating_add(1)
            }
            (None, ReadFrom::At(p)) => log.first_at_or_after(p.saturating_add(1)),
        };
        Cursor { next }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    next: usize,
}

type ReadSender = mpsc::Sender<Result<ReadResp, Status>>;

async fn serve_read(state: Arc<State>, read: ReadPlan, tx: ReadSender) {
    let cursor = {
        let log = state.lock();
        if !read.starts_at_a_record(&log) {
            Err(invalid_position())
        } else {
            Ok(match &read.stream {
                Some(stream) if !log.streams.contains_key(stream) => None,
                _ => Some(read.read_cursor(&log)),
            })
        }
    };
    let cursor = match cursor {
        Ok(cursor) => cursor,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let Some(mut cursor) = cursor else {
        let not_found = read_resp::StreamNotFound {
            stream_identifier: Some(read.identifier()),
        };
        let _ = tx
            .send(Ok(ReadResp {
                content: Some(read_resp::Content::StreamNotFound(not_found)),
            }))
            .await;
        return;
    };
    let bytes_max = state.read_bytes_max.load(Ordering::SeqCst);
    let mut sent = 0u64;
    let mut bytes = 0usize;
    while sent < read.count {
        let page = read.page(&state.lock(), &mut cursor);
        if page.is_empty() {
            return;
        }
        for event in &page {
            if sent == read.count || bytes >= bytes_max {
                return;
            }
            if tx.send(Ok(read.response(event))).await.is_err() {
                return;
            }
            sent += 1;
            bytes = bytes.saturating_add(event.data.len());
        }
    }
}

/// Serves one subscription. The watches of appends and drops were taken before it counted as
/// opened and before its first read, so nothing appended or dropped in between is missed.
async fn serve_subscription(
    state: Arc<State>,
    read: ReadPlan,
    tx: ReadSender,
    (mut appended, mut drops): (watch::Receiver<usize>, watch::Receiver<u64>),
) {
    let valid = read.starts_at_a_record(&state.lock());
    if !valid {
        let _ = tx.send(Err(invalid_position())).await;
        return;
    }
    let confirmation = read_resp::SubscriptionConfirmation {
        subscription_id: ::uuid::Uuid::new_v4().to_string(),
    };
    let confirmed = ReadResp {
        content: Some(read_resp::Content::Confirmation(confirmation)),
    };
    if tx.send(Ok(confirmed)).await.is_err() {
        return;
    }
    let mut cursor = read.subscription_cursor(&state.lock());
    let mut live = false;
    let mut dropped = false;
    // Records considered since the last checkpoint, and the last one considered.
    let mut considered = 0u64;
    let mut last_considered = None;
    loop {
        let page = {
            let log = state.lock();
            let before = cursor.next;
            let page = read.page(&log, &mut cursor);
            if read.stream.is_none() && cursor.next > before {
                considered += (cursor.next - before) as u64;
                last_considered = log.events.get(cursor.next - 1).map(|e| e.position);
            }
            page
        };
        if dropped || drops.has_changed().unwrap_or(true) {
            let _ = tx
                .send(Err(Status::unavailable(
                    "injected fault: subscription dropped",
                )))
                .await;
            return;
        }
        for event in &page {
            if tx.send(Ok(read.response(event))).await.is_err() {
                return;
            }
        }
        if let (Some(interval), Some(position)) = (read.checkpoint_interval, last_considered)
            && considered >= interval
        {
            considered %= interval;
            if tx.send(Ok(checkpoint(&state, position))).await.is_err() {
                return;
            }
        }
        if !page.is_empty() {
            continue;
        }
        if !live {
            live = true;
            // Catch-up reached the end: a checkpoint first, so one is sent within every
            // interval (as KurrentDB does when a filtered subscription goes live).
            if read.checkpoint_interval.is_some()
                && let Some(position) = last_considered
                && tx.send(Ok(checkpoint(&state, position))).await.is_err()
            {
                return;
            }
            if tx.send(Ok(caught_up(&state, &read))).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            _ = drops.changed() => dropped = true,
            () = tx.closed() => return,
        }
    }
}

fn checkpoint(state: &State, position: u64) -> ReadResp {
    state.checkpoints_sent.fetch_add(1, Ordering::SeqCst);
    ReadResp {
        content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: position,
            prepare_position: position,
            timestamp: Some(now_timestamp()),
        })),
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

fn caught_up(state: &State, read: &ReadPlan) -> ReadResp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let log = state.lock();
    let (stream_revision, position) = match &read.stream {
        Some(stream) => (log.head(stream).map(|h| h as i64), None),
        None => (
            None,
            log.events.last().map(|e| read_resp::Position {
                commit_position: e.position,
                prepare_position: e.position,
            }),
        ),
    };
    ReadResp {
        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            stream_revision,
            position,
        })),
    }
}

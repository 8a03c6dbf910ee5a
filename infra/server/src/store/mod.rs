//! The event store port: streams of opaque event payloads with optimistic versions.
//!
//! Every backend (embedded log, EventStoreDB) implements [`EventStore`] and passes the one
//! conformance suite in `tests/tests/store_conformance.rs`.
//!
//! Versions are per stream, 0-based, contiguous. Positions are global, strictly increasing across
//! all streams, not necessarily contiguous (EventStoreDB positions are byte offsets).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use allot_domain::integrity::{MerkleTree, Seal};
use async_trait::async_trait;
use futures::Stream;

pub mod embedded;
pub mod esdb;
pub mod memory;

/// Largest number of events one `append` may carry.
pub const APPEND_EVENTS_MAX: usize = 4096;
/// Largest payload of one event, in bytes.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Largest stream name, in bytes.
pub const STREAM_NAME_BYTES_MAX: usize = 256;
/// Largest event kind name, in bytes.
pub const EVENT_KIND_BYTES_MAX: usize = 128;

/// What the writer believes about the stream before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
    /// No check. The command path never uses it; the conformance suite and tests of a
    /// backend's behaviour do.
    Any,
}

impl ExpectedVersion {
    /// The expectation of an append whose first event gets version `next` (the stream's event
    /// count so far): the one place a stream's next version becomes an expected version.
    pub fn from_next(next: u64) -> ExpectedVersion {
        match next.checked_sub(1) {
            None => ExpectedVersion::NoStream,
            Some(last) => ExpectedVersion::Exact(last),
        }
    }
}

/// The stream's actual state, reported on a version conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActualVersion {
    NoStream,
    Exact(u64),
}

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedEvent {
    /// Deterministic id (the command path derives it from pool, actor and token) so a retried
    /// append can be recognised by backends that deduplicate by id.
    pub id: [u8; 16],
    /// Event type name, e.g. `Reserved`; informative for tools reading the store directly.
    pub kind: String,
    pub payload: Vec<u8>,
}

/// One append of a wave ([`EventStore::append_wave`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<ProposedEvent>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub id: [u8; 16],
    pub kind: String,
    pub payload: Vec<u8>,
}

/// A page of the log in one buffer: bulk readers (audit, rebuild) walk its records by borrowing
/// instead of owning a stream name, kind and payload per event.
#[derive(Debug, Default)]
pub struct LogPage {
    bytes: Vec<u8>,
    records: Vec<PageRecord>,
}

/// A record of a page: its kind and payload as ranges of the page's buffer.
#[derive(Debug)]
pub(crate) struct PageRecord {
    pub stream: Arc<str>,
    pub version: u64,
    pub position: u64,
    pub id: [u8; 16],
    pub kind: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
}

/// One record of a [`LogPage`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub stream: &'a str,
    pub version: u64,
    pub position: u64,
    pub id: [u8; 16],
    /// The kind's UTF-8 bytes (checked when the page was filled); [`LogRecord::kind`] reads them.
    kind: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> LogRecord<'a> {
    /// The event's type name. Bulk readers rarely need it, so it is only read on request.
    pub fn kind(&self) -> &'a str {
        std::str::from_utf8(self.kind).unwrap_or_default()
    }

    /// An owned copy.
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            stream: self.stream.to_owned(),
            version: self.version,
            position: self.position,
            id: self.id,
            kind: self.kind().to_owned(),
            payload: self.payload.to_vec(),
        }
    }
}

impl LogPage {
    pub fn with_capacity(records: usize, bytes: usize) -> LogPage {
        LogPage {
            bytes: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records),
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<LogRecord<'_>> {
        self.records.get(index).map(|record| self.view(record))
    }

    pub fn iter(&self) -> impl Iterator<Item = LogRecord<'_>> {
        self.records.iter().map(|record| self.view(record))
    }

    pub fn last(&self) -> Option<LogRecord<'_>> {
        self.records.last().map(|record| self.view(record))
    }

    /// Keeps the first `len` records.
    pub fn truncate(&mut self, len: usize) {
        self.records.truncate(len);
    }

    /// Adds a record, copying its kind and payload into the page.
    pub fn push(
        &mut self,
        stream: Arc<str>,
        version: u64,
        position: u64,
        id: [u8; 16],
        kind: &str,
        payload: &[u8],
    ) {
        let kind_start = self.bytes.len();
        self.bytes.extend_from_slice(kind.as_bytes());
        let payload_start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        let payload = payload_start..self.bytes.len();
        self.push_in_place(PageRecord {
            stream,
            version,
            position,
            id,
            kind: kind_start..payload_start,
            payload,
        });
    }

    /// Reads `len` bytes into the end of the page's buffer with `read` and returns where they
    /// start; [`LogPage::push_in_place`] then adds records that lie inside them.
    pub(crate) fn read_into<E>(
        &mut self,
        len: usize,
        read: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        read(&mut self.bytes[start..])?;
        Ok(start)
    }

    /// The page's buffer, for finding records read by [`LogPage::read_into`].
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Adds a record whose kind and payload are already in the buffer, at its ranges.
    pub(crate) fn push_in_place(&mut self, record: PageRecord) {
        debug_assert!(std::str::from_utf8(&self.bytes[record.kind.clone()]).is_ok());
        debug_assert!(record.payload.end <= self.bytes.len());
        self.records.push(record);
    }

    fn view<'a>(&'a self, record: &'a PageRecord) -> LogRecord<'a> {
        LogRecord {
            stream: &record.stream,
            version: record.version,
            position: record.position,
            id: record.id,
            kind: &self.bytes[record.kind.clone()],
            payload: &self.bytes[record.payload.clone()],
        }
    }
}

/// Where an append landed: the version and global position of its last event, and on a backend
/// that seals its group commits (embedded), the batch that made it durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub last_version: u64,
    pub last_position: u64,
    pub sealed: Option<Arc<SealedBatch>>,
}

/// One group commit as the log chained it: its seal and the Merkle tree of its events' leaves,
/// shared by every append of the batch. The server signs the seal once, for all of them.
#[derive(Debug)]
pub struct SealedBatch {
    pub seal: Seal,
    pub tree: MerkleTree,
    /// The server's signature over the seal, made by whichever receipt needs it first.
    pub signature: OnceLock<[u8; 64]>,
}

impl PartialEq for SealedBatch {
    fn eq(&self, other: &Self) -> bool {
        self.seal == other.seal
    }
}

impl Eq for SealedBatch {}

/// Acknowledged data missing or damaged: why the store refuses to open, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub file: String,
    /// Offset of the first damaged or missing byte range found.
    pub offset: u64,
    /// The first position not verified: events from here on are missing or untrusted (unknown
    /// when the evidence is a whole file rather than a place in the log).
    pub first_position: Option<u64>,
    /// Acknowledged events affected, at least, when the durable head record tells.
    pub events_at_least: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged data missing or damaged in {} at offset {} (",
            self.file, self.offset
        )?;
        match self.first_position {
            Some(position) => write!(f, "first affected position {position}")?,
            None => write!(f, "affected positions unknown")?,
        }
        if let Some(events) = self.events_at_least {
            write!(f, ", at least {events} acknowledged events")?;
        }
        write!(
            f,
            "): {}. Restore the data directory from a backup or another replica; `allot audit` \
             reports the whole finding without changing anything",
            self.reason
        )
    }
}

/// Failures of the store port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error("wrong expected version on stream {stream}: expected {expected:?}, actual {actual:?}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        actual: ActualVersion,
    },
    /// The request broke a limit or was malformed; nothing was written.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The log is damaged at a place that is not a torn tail.
    #[error("corrupt log {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// Acknowledged data is missing or damaged: the store refuses to open (see `docs/store.md`).
    #[error("{0}")]
    Damaged(Box<Damage>),
    /// Another process owns the data directory.
    #[error("data directory {0} is locked by another process")]
    Locked(String),
    /// The backend cannot be reached or refused service; the append may or may not have landed
    /// only if `maybe_written` is true.
    #[error("store unavailable: {reason}")]
    Unavailable { reason: String, maybe_written: bool },
    /// The store was closed (shutdown or an earlier fatal I/O error).
    #[error("store closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the failed request may have been written anyway (its acknowledgement was lost).
    pub fn maybe_written(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable {
                maybe_written: true,
                ..
            }
        )
    }
}

/// Checks the limits every backend enforces before it writes anything: a non-empty stream name of
/// at most [`STREAM_NAME_BYTES_MAX`] bytes, 1 to [`APPEND_EVENTS_MAX`] events, kinds of at most
/// [`EVENT_KIND_BYTES_MAX`] bytes and payloads of at most [`EVENT_PAYLOAD_BYTES_MAX`] bytes.
pub fn validate_append(stream: &str, events: &[ProposedEvent]) -> Result<(), StoreError> {
    let invalid = |reason: String| Err(StoreError::InvalidAppend(reason));
    if stream.is_empty() {
        return invalid("empty stream name".to_owned());
    }
    if stream.len() > STREAM_NAME_BYTES_MAX {
        return invalid(format!(
            "stream name of {} bytes exceeds {STREAM_NAME_BYTES_MAX}",
            stream.len()
        ));
    }
    if events.is_empty() {
        return invalid("no events".to_owned());
    }
    if events.len() > APPEND_EVENTS_MAX {
        return invalid(format!(
            "{} events exceed {APPEND_EVENTS_MAX}",
            events.len()
        ));
    }
    for (i, event) in events.iter().enumerate() {
        if event.kind.len() > EVENT_KIND_BYTES_MAX {
            return invalid(format!(
                "event {i}: kind of {} bytes exceeds {EVENT_KIND_BYTES_MAX}",
                event.kind.len()
            ));
        }
        if event.payload.len() > EVENT_PAYLOAD_BYTES_MAX {
            return invalid(format!(
                "event {i}: payload of {} bytes exceeds {EVENT_PAYLOAD_BYTES_MAX}",
                event.payload.len()
            ));
        }
    }
    Ok(())
}

/// A live, gap-free feed of recorded events in position order.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>;

/// The event store port.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`. Returns only once
    /// the events are durable.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Appends to distinct streams, each decided on its own exactly as [`EventStore::append`]
    /// would (one may be refused while the others land), answered together in the same order.
    /// A backend that can hand them over at once (the embedded log: one queue operation and one
    /// wake for all) overrides this; the default runs them concurrently.
    async fn append_wave(
        &self,
        appends: Vec<WaveAppend>,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        futures::future::join_all(appends.into_iter().map(|append| async move {
            self.append(&append.stream, append.expected, append.events)
                .await
        }))
        .await
    }

    /// Reads up to `max_count` events of `stream` with version >= `from_version`, in order.
    /// An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `max_count` events of all streams with position > `after` (all when `None`),
    /// in position order.
    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// [`EventStore::read_all`] as one [`LogPage`], for readers of the whole log. The default
    /// copies `read_all`'s records in; a backend that reads its log in bulk fills the page
    /// directly.
    async fn read_all_page(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<LogPage, StoreError> {
        let events = self.read_all(after, max_count).await?;
        let bytes = events.iter().map(|e| e.kind.len() + e.payload.len()).sum();
        let mut page = LogPage::with_capacity(events.len(), bytes);
        for event in &events {
            page.push(
                Arc::from(event.stream.as_str()),
                event.version,
                event.position,
                event.id,
                &event.kind,
                &event.payload,
            );
        }
        Ok(page)
    }

    /// Every event with position > `after`, then every event appended later, each exactly once,
    /// in position order.
    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError>;

    /// The log's chain value once it held `events` events (at a batch boundary), on a backend
    /// that chains its log (embedded); `None` elsewhere, or when no batch ends there.
    async fn chain_at(&self, events: u64) -> Result<Option<[u8; 32]>, StoreError> {
        let _ = events;
        Ok(None)
    }

    /// Verifies the whole durable log as it reads it (the background verifier): returns the
    /// events checked, or `None` for a backend that keeps its own checksums (KurrentDB, memory).
    async fn verify_log(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Whether other processes may append to this store (a shared server), so a service must
    /// follow the store to keep its projections and actor keys current.
    fn shared_with_other_writers(&self) -> bool {
        false
    }

    /// Whether the backend seals its group commits (embedded): its appends answer with
    /// [`AppendOutcome::sealed`], from which receipts are made.
    fn seals_group_commits(&self) -> bool {
        false
    }

    /// The seal of the newest durable batch, on a backend that seals its group commits;
    /// `None` on the others, and before the first batch.
    fn sealed_head(&self) -> Option<Seal> {
        None
    }
}

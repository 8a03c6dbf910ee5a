//! An in-memory store: the port's reference semantics, for tests and the simulator. Not durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    ActualVersion, AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent,
    StoreError, Subscription, validate_append,
};

/// Subscription wake-up channel depth; a lagging subscriber re-reads from the log.
const WAKE_BUFFER: usize = 64;
/// Events read per catch-up page.
const READ_PAGE: usize = 1024;

#[derive(Debug, Default)]
struct Log {
    events: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
}

#[derive(Debug)]
struct MemoryState {
    log: Mutex<Log>,
    wake: broadcast::Sender<()>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_after(&self, after: Option<u64>, max_count: usize) -> Vec<RecordedEvent> {
        let log = self.lock();
        // Past the last possible position reads nothing.
        let start = after.map_or(0, |p| {
            usize::try_from(p).map_or(usize::MAX, |p| p.saturating_add(1))
        });
        log.events
            .iter()
            .skip(start)
            .take(max_count)
            .cloned()
            .collect()
    }
}

/// Cheap to clone: clones share one log.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<MemoryState>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            shared: Arc::new(MemoryState {
                log: Mutex::new(Log::default()),
                wake: broadcast::channel(WAKE_BUFFER).0,
            }),
        }
    }

    /// Number of events stored.
    pub fn len(&self) -> usize {
        self.shared.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(stream, &events)?;
        let outcome = {
            let mut log = self.shared.lock();
            let head = log
                .streams
                .get(stream)
                .and_then(|v| (v.len() as u64).checked_sub(1));
            let actual = head.map_or(ActualVersion::NoStream, ActualVersion::Exact);
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => head.is_none(),
                ExpectedVersion::Exact(v) => head == Some(v),
            };
            if !ok {
                return Err(StoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                });
            }
            let mut version = head.map_or(0, |v| v + 1);
            let mut position = 0;
            for event in events {
                position = log.events.len() as u64;
                let index = log.events.len();
                log.events.push(RecordedEvent {
                    stream: stream.to_owned(),
                    version,
                    position,
                    id: event.id,
                    kind: event.kind,
                    payload: event.payload,
                });
                log.streams
                    .entry(stream.to_owned())
                    .or_default()
                    .push(index);
                version += 1;
            }
            AppendOutcome {
                last_version: version - 1,
                last_position: position,
                sealed: None,
            }
        };
        let _ = self.shared.wake.send(());
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.shared.lock();
        Ok(log
            .streams
            .get(stream)
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(usize::try_from(from_version).unwrap_or(usize::MAX))
                    .take(max_count)
                    .map(|&i| log.events[i].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.shared.read_after(after, max_count))
    }

    async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
        // Subscribe to wake-ups before the catch-up read, and re-read after the last delivered
        // position on every wake-up: nothing appended in between can be missed or repeated.
        let mut wake = self.shared.wake.subscribe();
        let shared = Arc::clone(&self.shared);
        let (tx, rx) = tokio::sync::mpsc::channel(WAKE_BUFFER);
        tokio::spawn(async move {
            let mut cursor = after;
            loop {
                for event in shared.read_after(cursor, READ_PAGE) {
                    cursor = Some(event.position);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if shared.read_after(cursor, 1).is_empty() {
                    match wake.recv().await {
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        Ok(Box::pin(events))
    }
}

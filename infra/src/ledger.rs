//! The command path: one task per pool serializes that pool's commands, decides a batch of them
//! back to back against the aggregate, and appends the batch (one event per command) with the
//! pool's expected version. Replies are sent only after the append is durable, so nothing is
//! acknowledged that could be lost. On a version conflict (another instance wrote) the task
//! reloads the stream and decides the batch again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use allot_domain::{
    ActorEvent, Command, Decision, Event, Outcome, Pool, PoolId, Rejection, codec, decide, evolve,
};
use allot_projections::Projections;
use dashmap::DashMap;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::identity::ActorDirectory;
use crate::metrics::Metrics;
use crate::store::{EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError};

/// Commands decided back to back into one append.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Commands queued per pool before new ones are refused as overloaded.
pub const POOL_QUEUE_MAX: usize = 8192;
/// Times a batch is decided again after version conflicts before giving up.
pub const CONFLICT_RETRIES_MAX: usize = 16;
/// Events read per page when loading a stream.
pub const READ_PAGE_EVENTS: usize = 4096;
/// Name of the stream holding actor registrations.
pub const ACTORS_STREAM: &str = "actors";

/// The store stream of a pool.
pub fn pool_stream(pool: &PoolId) -> String {
    format!("pool-{pool}")
}

/// The pool a stream belongs to, if it is a pool stream.
pub fn stream_pool(stream: &str) -> Option<PoolId> {
    stream.strip_prefix("pool-").map(PoolId::new)
}

/// What a submitted command got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    /// The outcome was recorded earlier for this token and is answered again.
    pub replayed: bool,
}

/// Why a command got no recorded outcome. Nothing changed in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A rejection that is not cached: malformed request, unknown pool, token collision.
    #[error(transparent)]
    Rejected(Rejection),
    /// The store failed; the command may be retried with the same token.
    #[error("recording-failure: {0}")]
    Recording(String),
    /// The pool's queue is full.
    #[error("pool {0} is overloaded; retry later")]
    Overloaded(String),
    /// The service is shutting down.
    #[error("service is shutting down")]
    ShuttingDown,
}

/// Failures loading state from the store.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot decode event at {stream} version {version}: {reason}")]
    Decode {
        stream: String,
        version: u64,
        reason: String,
    },
    #[error("cannot fold event at {stream} version {version}: {reason}")]
    Fold {
        stream: String,
        version: u64,
        reason: String,
    },
}

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Reply, SubmitError>>,
}

struct Shared {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    projections: Arc<Projections>,
    actors: Arc<ActorDirectory>,
    metrics: Arc<Metrics>,
    pools: DashMap<PoolId, mpsc::Sender<Job>>,
    /// Serializes appends to the `actors` stream (its version is the directory's).
    actor_appends: Mutex<()>,
    /// Woken after a hold is placed, so the sweeper can re-plan its next wake-up.
    holds_placed: Notify,
    accepting: AtomicBool,
    /// Pool tasks, awaited on close so every queued command is answered first.
    tasks: std::sync::Mutex<JoinSet<()>>,
    /// The task following a shared store, if any; aborted on close.
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The command path. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("pools", &self.shared.pools.len())
            .finish()
    }
}

/// A UUID (RFC 9562 version 8) from a domain tag, the parts and a time: the same decision always
/// gets the same id, so a retried append is recognised by backends that deduplicate by id.
fn derived_id(tag: &[u8], parts: [&str; 3], at: u64) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(tag);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(&at.to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// A pool event's id, from pool, actor, token and time.
pub fn event_id(event: &Event) -> [u8; 16] {
    derived_id(
        b"allot-event-id-v1\n",
        [
            event.pool.as_str(),
            event.actor.as_str(),
            event.token.as_str(),
        ],
        event.at.0,
    )
}

impl Ledger {
    /// Opens the command path over `store`: loads actors and folds every pool event into the
    /// projections (or only the tail after `projections`' checkpoint position).
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        projections: Arc<Projections>,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, LoadError> {
        let actors = Arc::new(ActorDirectory::default());
        let mut from = 0;
        loop {
            let page = store
                .read_stream(ACTORS_STREAM, from, READ_PAGE_EVENTS)
                .await?;
            for recorded in &page {
                let event = decode_actor(recorded)?;
                actors.apply(recorded.version, &event);
            }
            if page.len() < READ_PAGE_EVENTS {
                break;
            }
            from += page.len() as u64;
        }
        let mut after = projections.last_position();
        loop {
            let page = store.read_all(after, READ_PAGE_EVENTS).await?;
            for recorded in &page {
                after = Some(recorded.position);
                if stream_pool(&recorded.stream).is_none() {
                    continue;
                }
                let event = decode_pool(recorded)?;
                projections.apply(recorded.version, recorded.position, &event);
            }
            if page.len() < READ_PAGE_EVENTS {
                break;
            }
        }
        Ok(Ledger {
            shared: Arc::new(Shared {
                store,
                clock,
                projections,
                actors,
                metrics,
                pools: DashMap::new(),
                actor_appends: Mutex::new(()),
                holds_placed: Notify::new(),
                accepting: AtomicBool::new(true),
                tasks: std::sync::Mutex::new(JoinSet::new()),
                follower: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn projections(&self) -> &Arc<Projections> {
        &self.shared.projections
    }

    pub fn actors(&self) -> &Arc<ActorDirectory> {
        &self.shared.actors
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.shared.store
    }

    /// Resolves when a hold has been placed since the last call (for the sweeper).
    pub async fn hold_placed(&self) {
        self.shared.holds_placed.notified().await;
    }

    /// Stops accepting new commands; queued ones are still decided and answered.
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
    }

    /// Stops accepting commands, answers every queued one, and waits for the pool tasks to end
    /// (they hold the store; after this the store can be closed).
    pub async fn close(&self) {
        self.stop_accepting();
        let follower = self
            .shared
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(follower) = follower {
            follower.abort();
        }
        // Dropping the senders ends each pool task once its queue is empty.
        self.shared.pools.clear();
        let mut tasks = {
            let mut guard = self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *guard)
        };
        while tasks.join_next().await.is_some() {}
    }

    /// Decides and records `command` (already authenticated by the caller). Returns once the
    /// outcome is durable.
    pub async fn submit(&self, command: Command) -> Result<Reply, SubmitError> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        // Malformed commands never reach (or spawn) a pool task.
        command.validate().map_err(SubmitError::Rejected)?;
        let mut command = command;
        loop {
            let sender = self.pool_sender(&command.pool);
            let (reply, answer) = oneshot::channel();
            match sender.try_send(Job { command, reply }) {
                Ok(()) => {
                    return answer.await.unwrap_or(Err(SubmitError::ShuttingDown));
                }
                Err(mpsc::error::TrySendError::Full(job)) => {
                    return Err(SubmitError::Overloaded(job.command.pool.to_string()));
                }
                Err(mpsc::error::TrySendError::Closed(job)) => {
                    // The pool task retired (its pool was never declared); start a new one.
                    self.shared
                        .pools
                        .remove_if(&job.command.pool, |_, tx| tx.same_channel(&sender));
                    command = job.command;
                }
            }
        }
    }

    fn pool_sender(&self, pool: &PoolId) -> mpsc::Sender<Job> {
        if let Some(sender) = self.shared.pools.get(pool) {
            return sender.clone();
        }
        self.shared
            .pools
            .entry(pool.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(POOL_QUEUE_MAX);
                let ledger = self.clone();
                let pool = pool.clone();
                let mut tasks = self
                    .shared
                    .tasks
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // Reap retired tasks so their results do not pile up.
                while tasks.try_join_next().is_some() {}
                tasks.spawn(async move { ledger.run_pool(pool, rx).await });
                tx
            })
            .clone()
    }

    /// Follows the store from its current end so writes of other instances reach this one's
    /// projections and actor keys (a revocation anywhere holds everywhere at once). Only needed
    /// when the store is shared; ends when the subscription fails for good or on `close`.
    pub async fn follow_store(&self) -> Result<(), StoreError> {
        let after = self.shared.projections.last_position();
        let mut feed = self.shared.store.subscribe_all(after).await?;
        let ledger = self.clone();
        let follower = tokio::spawn(async move {
            use futures::StreamExt;
            while ledger.shared.accepting.load(Ordering::SeqCst) {
                let Some(next) = feed.next().await else { break };
                let recorded = match next {
                    Ok(recorded) => recorded,
                    Err(error) => {
                        tracing::error!(%error, "following the store stopped");
                        break;
                    }
                };
                if recorded.stream == ACTORS_STREAM {
                    match decode_actor(&recorded) {
                        Ok(event) => {
                            ledger.shared.actors.apply(recorded.version, &event);
                        }
                        Err(error) => tracing::error!(%error, "cannot decode actor event"),
                    }
                } else if let Some(pool) = stream_pool(&recorded.stream) {
                    match decode_pool(&recorded) {
                        Ok(event) => {
                            let applied = ledger.shared.projections.apply(
                                recorded.version,
                                recorded.position,
                                &event,
                            );
                            if matches!(applied, allot_projections::Applied::Gap { .. }) {
                                ledger.catch_up_projections(&pool).await;
                            }
                            if matches!(event.change, allot_domain::Change::Reserved { .. }) {
                                ledger.shared.holds_placed.notify_one();
                            }
                        }
                        Err(error) => tracing::error!(%error, "cannot decode pool event"),
                    }
                }
            }
        });
        let previous = self
            .shared
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(follower);
        if let Some(previous) = previous {
            previous.abort();
        }
        Ok(())
    }

    /// Loads a pool aggregate from its stream.
    pub async fn load_pool(&self, pool: &PoolId) -> Result<Pool, LoadError> {
        let stream = pool_stream(pool);
        let mut state = Pool::default();
        loop {
            let page = self
                .shared
                .store
                .read_stream(&stream, state.events_applied(), READ_PAGE_EVENTS)
                .await?;
            for recorded in &page {
                let event = decode_pool(recorded)?;
                evolve(&mut state, &event).map_err(|error| LoadError::Fold {
                    stream: stream.clone(),
                    version: recorded.version,
                    reason: error.to_string(),
                })?;
            }
            if page.len() < READ_PAGE_EVENTS {
                return Ok(state);
            }
        }
    }

    async fn run_pool(self, pool_id: PoolId, mut jobs: mpsc::Receiver<Job>) {
        let mut state: Option<Pool> = None;
        let mut retiring = false;
        while let Some(first) = jobs.recv().await {
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < BATCH_COMMANDS_MAX {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if state.is_none() {
                match self.load_pool(&pool_id).await {
                    Ok(pool) => state = Some(pool),
                    Err(error) => {
                        tracing::error!(pool = %pool_id, %error, "cannot load pool");
                        fail_all(batch, &SubmitError::Recording(error.to_string()));
                        continue;
                    }
                }
            }
            let Some(pool) = state.as_mut() else { continue };
            let keep = self.decide_batch(&pool_id, pool, batch).await;
            if !keep {
                state = None;
            }
            // A pool that was never declared keeps no task: retire, then answer what was queued.
            if !retiring && state.as_ref().is_some_and(|pool| !pool.is_declared()) {
                retiring = true;
                self.shared.pools.remove(&pool_id);
                jobs.close();
            }
        }
    }

    /// Decides and appends one batch. Returns false if the in-memory pool must be reloaded.
    async fn decide_batch(&self, pool_id: &PoolId, pool: &mut Pool, batch: Vec<Job>) -> bool {
        let stream = pool_stream(pool_id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = self.shared.clock.now();
            let base_version = pool.events_applied();
            let mut events = Vec::new();
            let mut replies = Vec::with_capacity(batch.len());
            for job in &batch {
                match decide(pool, &job.command, now) {
                    Ok(Decision::Append(event)) => {
                        if let Err(error) = evolve(pool, &event) {
                            // decide and evolve disagree: a domain bug. Refuse the batch.
                            tracing::error!(pool = %pool_id, %error, "decided event does not apply");
                            fail_all(batch, &SubmitError::Recording(error.to_string()));
                            return false;
                        }
                        replies.push(Ok(Reply {
                            outcome: event.outcome(),
                            replayed: false,
                        }));
                        events.push(event);
                    }
                    Ok(Decision::Replay(outcome)) => replies.push(Ok(Reply {
                        outcome,
                        replayed: true,
                    })),
                    Err(rejection) => replies.push(Err(SubmitError::Rejected(rejection))),
                }
            }
            if events.is_empty() {
                send_replies(batch, replies);
                return true;
            }
            let expected = match base_version.checked_sub(1) {
                None => ExpectedVersion::NoStream,
                Some(version) => ExpectedVersion::Exact(version),
            };
            let proposed = events
                .iter()
                .map(|event| ProposedEvent {
                    id: event_id(event),
                    kind: event.kind_name().to_owned(),
                    payload: codec::encode_event(event),
                })
                .collect();
            self.shared
                .metrics
                .append_batch_events
                .observe(events.len() as f64);
            match self.shared.store.append(&stream, expected, proposed).await {
                Ok(appended) => {
                    let placed_hold = events
                        .iter()
                        .any(|event| matches!(event.change, allot_domain::Change::Reserved { .. }));
                    if self.shared.projections.next_version(pool_id) == base_version {
                        for (i, event) in events.iter().enumerate() {
                            let version = base_version + i as u64;
                            let position = appended
                                .last_position
                                .saturating_sub((events.len() - 1 - i) as u64);
                            self.shared.projections.apply(version, position, event);
                        }
                    } else {
                        // The projections missed events before this batch (an append whose ack
                        // was lost, or another instance's writes after a reload): read them, and
                        // this batch, from the stream.
                        self.catch_up_projections(pool_id).await;
                    }
                    if placed_hold {
                        self.shared.holds_placed.notify_one();
                    }
                    send_replies(batch, replies);
                    return true;
                }
                Err(StoreError::WrongExpectedVersion { .. }) if attempt < CONFLICT_RETRIES_MAX => {
                    self.shared.metrics.version_conflicts.inc();
                    tracing::debug!(pool = %pool_id, attempt, "version conflict; reloading");
                    match self.load_pool(pool_id).await {
                        Ok(fresh) => *pool = fresh,
                        Err(error) => {
                            fail_all(batch, &SubmitError::Recording(error.to_string()));
                            return false;
                        }
                    }
                    // Events another writer appended must reach the projections too.
                    self.catch_up_projections(pool_id).await;
                }
                Err(error) => {
                    tracing::warn!(pool = %pool_id, %error, "append failed");
                    let maybe_written = matches!(
                        error,
                        StoreError::Unavailable {
                            maybe_written: true,
                            ..
                        }
                    );
                    fail_all(batch, &SubmitError::Recording(error.to_string()));
                    if maybe_written {
                        // Events that landed must reach the projections even though nobody was
                        // told; a retry of their tokens replays them.
                        self.catch_up_projections(pool_id).await;
                    }
                    return false;
                }
            }
        }
    }

    /// Applies events of `pool` that the projections have not seen (written by another instance).
    async fn catch_up_projections(&self, pool: &PoolId) {
        let stream = pool_stream(pool);
        loop {
            let from = self.shared.projections.next_version(pool);
            let page = match self
                .shared
                .store
                .read_stream(&stream, from, READ_PAGE_EVENTS)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(pool = %pool, %error, "cannot catch up projections");
                    return;
                }
            };
            for recorded in &page {
                match decode_pool(recorded) {
                    Ok(event) => {
                        self.shared
                            .projections
                            .apply(recorded.version, recorded.position, &event);
                    }
                    Err(error) => {
                        tracing::error!(pool = %pool, %error, "cannot decode event");
                        return;
                    }
                }
            }
            if page.len() < READ_PAGE_EVENTS {
                return;
            }
        }
    }

    /// Appends an actor registration or revocation and applies it to the directory, unless the
    /// admin's token was already used within its window: the same change replays (returns
    /// `Ok(true)`, nothing appended), another change is `token-collision`.
    pub async fn record_actor_event(&self, event: ActorEvent) -> Result<bool, SubmitError> {
        let _serialized = self.shared.actor_appends.lock().await;
        for _ in 0..CONFLICT_RETRIES_MAX {
            // Checked under the lock, after folding other instances' events, so two identical
            // requests cannot both append.
            if let Some(record) = self.shared.actors.token(&event.by, &event.token, event.at) {
                if record.actor == event.actor && record.change == event.change {
                    return Ok(true);
                }
                return Err(SubmitError::Rejected(Rejection::TokenCollision {
                    recorded_action: match record.change {
                        allot_domain::ActorChange::Registered { .. } => "register_actor",
                        allot_domain::ActorChange::Revoked => "revoke_actor",
                    }
                    .to_owned(),
                }));
            }
            // The directory's version is the truth: a follower may have applied another
            // instance's registration.
            let expected = match self.shared.actors.next_version().checked_sub(1) {
                None => ExpectedVersion::NoStream,
                Some(v) => ExpectedVersion::Exact(v),
            };
            let proposed = ProposedEvent {
                id: actor_event_id(&event),
                kind: "Actor".to_owned(),
                payload: codec::encode_actor_event(&event),
            };
            match self
                .shared
                .store
                .append(ACTORS_STREAM, expected, vec![proposed])
                .await
            {
                Ok(appended) => {
                    self.shared.actors.apply(appended.last_version, &event);
                    return Ok(false);
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Another instance registered an actor: fold what it wrote, then retry.
                    let from = self.shared.actors.next_version();
                    let page = self
                        .shared
                        .store
                        .read_stream(ACTORS_STREAM, from, READ_PAGE_EVENTS)
                        .await
                        .map_err(|e| SubmitError::Recording(e.to_string()))?;
                    for recorded in &page {
                        let other = decode_actor(recorded)
                            .map_err(|e| SubmitError::Recording(e.to_string()))?;
                        self.shared.actors.apply(recorded.version, &other);
                    }
                }
                Err(error) => return Err(SubmitError::Recording(error.to_string())),
            }
        }
        Err(SubmitError::Recording(
            "actors stream kept moving; try again".to_owned(),
        ))
    }
}

fn actor_event_id(event: &ActorEvent) -> [u8; 16] {
    derived_id(
        b"allot-actor-event-id-v1\n",
        [
            event.actor.as_str(),
            event.by.as_str(),
            event.token.as_str(),
        ],
        event.at.0,
    )
}

/// Decodes a pool event record.
pub fn decode_pool(recorded: &RecordedEvent) -> Result<Event, LoadError> {
    codec::decode_event(&recorded.payload).map_err(|error| LoadError::Decode {
        stream: recorded.stream.clone(),
        version: recorded.version,
        reason: error.to_string(),
    })
}

/// Decodes an actor event record.
pub fn decode_actor(recorded: &RecordedEvent) -> Result<ActorEvent, LoadError> {
    codec::decode_actor_event(&recorded.payload).map_err(|error| LoadError::Decode {
        stream: recorded.stream.clone(),
        version: recorded.version,
        reason: error.to_string(),
    })
}

fn fail_all(batch: Vec<Job>, error: &SubmitError) {
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}

fn send_replies(batch: Vec<Job>, replies: Vec<Result<Reply, SubmitError>>) {
    for (job, reply) in batch.into_iter().zip(replies) {
        // The caller may have gone away (timeout, disconnect); the outcome is recorded anyway.
        let _ = job.reply.send(reply);
    }
}

//! The command path: pools are spread over a few shard tasks; each shard serializes its pools'
//! commands in waves. A wave takes what is queued, decides each pool's commands back to back
//! against that pool's aggregate, and hands the wave's appends (one per pool with events, with
//! the pool's expected version) to the store together. Replies are sent only after the append
//! is durable, so nothing is acknowledged that could be lost. The next wave is decided only
//! once the last one settled, so a pool's state is always exactly what its stream holds.
//!
//! On a version conflict (another instance wrote) the pool is reloaded and its commands decided
//! again, one append at a time; on any other store failure the pool's commands fail and the
//! pool is reloaded before its next command (tokens whose events landed replay on retry).
//! Other pools of the wave are not affected by either.
//!
//! Why shards and not a task per pool: with many quiet pools (one command per pool per wave)
//! every command paid a pool task's wakes and its own store request and answer; a wave pays
//! them once for all its pools (BENCHMARKS.md, stop 15: +30 % commands per second on 1,000
//! pools). The cost: pools of one shard share its queue ([`SHARD_QUEUE_MAX`]) and wait for each
//! other's loads and conflict retries.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use allot_domain::{
    ActorEvent, Command, Decision, Event, Outcome, Pool, PoolId, Rejection, codec, decide, evolve,
};
use allot_projections::Projections;
use futures::FutureExt as _;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::identity::ActorDirectory;
use crate::metrics::Metrics;
use crate::store::{
    AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
    WaveAppend,
};

/// Commands one wave of a shard takes (so one pool's append carries at most this many events).
pub const WAVE_COMMANDS_MAX: usize = 1024;
/// Commands queued per shard before new ones are refused as overloaded.
pub const SHARD_QUEUE_MAX: usize = 16 * 1024;
/// Times a pool's commands are decided again after version conflicts before giving up.
pub const CONFLICT_RETRIES_MAX: usize = 16;
/// Events read per page when loading a stream.
pub const READ_PAGE_EVENTS: usize = 4096;
/// Name of the stream holding actor registrations.
pub const ACTORS_STREAM: &str = "actors";

/// Shard tasks: one per worker of the runtime (more only split waves into smaller ones). Taken
/// from the runtime, not the machine, so a single-threaded runtime (the simulator) has one
/// shard whatever machine it runs on, and its interleavings stay a function of its seed.
fn shard_count() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1)
}

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
    /// The queue of the pool's shard is full.
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
    /// Set on close: each shard takes no more commands, answers the queued ones, and ends.
    closing: watch::Sender<bool>,
    /// Serializes appends to the `actors` stream (its version is the directory's).
    actor_appends: Mutex<()>,
    /// Woken after a hold is placed, so the sweeper can re-plan its next wake-up.
    holds_placed: Notify,
    accepting: AtomicBool,
    /// Shard tasks, awaited on close so every queued command is answered first.
    tasks: std::sync::Mutex<JoinSet<()>>,
    /// The task following a shared store, if any; aborted on close.
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The shards' queues; a pool's shard is fixed by its id's hash.
struct ShardQueues {
    senders: Vec<mpsc::Sender<Job>>,
    shard_of: foldhash::fast::FixedState,
}

/// The command path. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    /// Held by `Ledger`s only (the shard tasks hold [`Shared`]): once the last one is dropped
    /// without `close`, the queues close and the shards end after answering what is in them,
    /// letting go of the store.
    queues: Arc<ShardQueues>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("shards", &self.queues.senders.len())
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
        let shard_count = shard_count();
        let mut queues = Vec::with_capacity(shard_count);
        let mut senders = Vec::with_capacity(shard_count);
        for _ in 0..shard_count {
            let (sender, queue) = mpsc::channel(SHARD_QUEUE_MAX);
            senders.push(sender);
            queues.push(queue);
        }
        let (closing, _) = watch::channel(false);
        let ledger = Ledger {
            shared: Arc::new(Shared {
                store,
                clock,
                projections,
                actors,
                metrics,
                closing,
                actor_appends: Mutex::new(()),
                holds_placed: Notify::new(),
                accepting: AtomicBool::new(true),
                tasks: std::sync::Mutex::new(JoinSet::new()),
                follower: std::sync::Mutex::new(None),
            }),
            queues: Arc::new(ShardQueues {
                senders,
                shard_of: foldhash::fast::FixedState::default(),
            }),
        };
        {
            let mut tasks = ledger
                .shared
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for queue in queues {
                let shard = ledger.shared.clone();
                let closing = ledger.shared.closing.subscribe();
                tasks.spawn(async move { shard.run_shard(queue, closing).await });
            }
        }
        Ok(ledger)
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

    /// Stops accepting commands, answers every queued one, and waits for the shard tasks to end
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
        // Each shard closes its queue, answers what is in it, and ends.
        self.shared.closing.send_replace(true);
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
        // Malformed commands never reach a shard.
        command.validate().map_err(SubmitError::Rejected)?;
        let shards = &self.queues.senders;
        let shard = self.queues.shard_of.hash_one(&command.pool) as usize % shards.len();
        let (reply, answer) = oneshot::channel();
        match shards[shard].try_send(Job { command, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                return Err(SubmitError::Overloaded(job.command.pool.to_string()));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SubmitError::ShuttingDown),
        }
        // Unanswered only if its wave panicked (a bug) or the runtime is shutting down: the
        // outcome may have been recorded, and a retry with the same token tells.
        answer.await.unwrap_or_else(|_| {
            Err(SubmitError::Recording(
                "the command's outcome is unknown (its shard failed); retry with the same token"
                    .to_owned(),
            ))
        })
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
                                ledger.shared.catch_up_projections(&pool).await;
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
        self.shared.load_pool(pool).await
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

impl Shared {
    /// Loads a pool aggregate from its stream.
    async fn load_pool(&self, pool: &PoolId) -> Result<Pool, LoadError> {
        let stream = pool_stream(pool);
        let mut state = Pool::default();
        loop {
            let page = self
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

    /// A shard: waves of its queue until close, then the rest of the queue.
    async fn run_shard(&self, mut queue: mpsc::Receiver<Job>, mut closing: watch::Receiver<bool>) {
        // The aggregates of the shard's pools, as their streams hold them. A pool is loaded
        // at its first command and dropped after a failed append (reloaded at its next).
        let mut pools: HashMap<PoolId, Pool, foldhash::fast::RandomState> = HashMap::default();
        let mut closed = false;
        loop {
            let first = tokio::select! {
                biased;
                job = queue.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                // A closed queue still hands out what is in it, then ends.
                _ = closing.wait_for(|closing| *closing), if !closed => {
                    queue.close();
                    closed = true;
                    continue;
                }
            };
            let mut wave = Vec::with_capacity(queue.len().min(WAVE_COMMANDS_MAX) + 1);
            wave.push(first);
            while wave.len() < WAVE_COMMANDS_MAX {
                match queue.try_recv() {
                    Ok(job) => wave.push(job),
                    Err(_) => break,
                }
            }
            let decided = AssertUnwindSafe(self.decide_wave(&mut pools, batches_by_pool(wave)))
                .catch_unwind()
                .await;
            if decided.is_err() {
                // A bug. The wave's commands not yet answered are dropped, and their
                // submitters hear that the outcome is unknown. Events of the wave may have
                // landed, for pools the shard holds (a pool is loaded before it is decided), so
                // the projections read those pools from their streams; every pool is reloaded
                // before its next command.
                tracing::error!(
                    pools = pools.len(),
                    "a wave panicked; reloading the shard's pools"
                );
                for pool in pools.keys() {
                    self.catch_up_projections(pool).await;
                }
                pools.clear();
                self.holds_placed.notify_one();
            }
        }
    }

    /// Decides a wave pool by pool, appends it, and answers it once durable.
    async fn decide_wave(
        &self,
        pools: &mut HashMap<PoolId, Pool, foldhash::fast::RandomState>,
        batches: Vec<(PoolId, Vec<Job>)>,
    ) {
        let now = self.clock.now();
        let mut decided = Vec::with_capacity(batches.len());
        let mut appends = Vec::with_capacity(batches.len());
        for (pool_id, batch) in batches {
            let pool = match pools.entry(pool_id.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match self.load_pool(&pool_id).await {
                    Ok(pool) => entry.insert(pool),
                    Err(error) => {
                        tracing::error!(pool = %pool_id, %error, "cannot load pool");
                        fail_all(batch, &SubmitError::Recording(error.to_string()));
                        continue;
                    }
                },
            };
            let Ok(batch) = decide_jobs(&pool_id, pool, batch, now) else {
                // Decide and evolve disagreed (a domain bug); the batch was failed.
                pools.remove(&pool_id);
                continue;
            };
            if !pool.is_declared() {
                // Commands to a pool nobody declared keep nothing in memory.
                pools.remove(&pool_id);
            }
            if batch.events.is_empty() {
                send_replies(batch.jobs, batch.replies);
                continue;
            }
            self.metrics
                .append_batch_events
                .observe(batch.events.len() as f64);
            appends.push(WaveAppend {
                stream: pool_stream(&pool_id),
                expected: expected_before(batch.base_version),
                events: propose(&batch.events),
            });
            decided.push((pool_id, batch));
        }
        if appends.is_empty() {
            return;
        }
        let mut results = self.store.append_wave(appends).await.into_iter();
        for (pool_id, batch) in decided {
            // A store that answers fewer appends than it was given broke the port; what it did
            // with the rest is unknown.
            let result = results.next().unwrap_or_else(|| {
                Err(StoreError::Unavailable {
                    reason: "the store gave no answer for this append".to_owned(),
                    maybe_written: true,
                })
            });
            match result {
                Ok(appended) => self.record_appended(&pool_id, batch, appended).await,
                Err(error) => {
                    // The pool's state took this batch: reload before its next command.
                    pools.remove(&pool_id);
                    self.append_failed(&pool_id, batch, error, pools).await;
                }
            }
        }
    }

    /// After a pool's append of a wave failed: on a version conflict (another instance wrote)
    /// reloads the pool and decides its commands again, appending them on their own, up to
    /// [`CONFLICT_RETRIES_MAX`] attempts in all; on any other failure fails them.
    async fn append_failed(
        &self,
        pool_id: &PoolId,
        batch: Decided,
        mut error: StoreError,
        pools: &mut HashMap<PoolId, Pool, foldhash::fast::RandomState>,
    ) {
        let mut jobs = batch.jobs;
        let mut attempt = 1;
        while matches!(error, StoreError::WrongExpectedVersion { .. })
            && attempt < CONFLICT_RETRIES_MAX
        {
            attempt += 1;
            self.metrics.version_conflicts.inc();
            tracing::debug!(pool = %pool_id, attempt, "version conflict; reloading");
            let mut pool = match self.load_pool(pool_id).await {
                Ok(pool) => pool,
                Err(error) => {
                    fail_all(jobs, &SubmitError::Recording(error.to_string()));
                    return;
                }
            };
            // Events another writer appended must reach the projections too.
            self.catch_up_projections(pool_id).await;
            let Ok(decided) = decide_jobs(pool_id, &mut pool, jobs, self.clock.now()) else {
                return;
            };
            let retried = if decided.events.is_empty() {
                send_replies(decided.jobs, decided.replies);
                Ok(())
            } else {
                let expected = expected_before(decided.base_version);
                let proposed = propose(&decided.events);
                self.metrics
                    .append_batch_events
                    .observe(decided.events.len() as f64);
                match self
                    .store
                    .append(&pool_stream(pool_id), expected, proposed)
                    .await
                {
                    Ok(appended) => {
                        self.record_appended(pool_id, decided, appended).await;
                        Ok(())
                    }
                    Err(next) => Err((next, decided.jobs)),
                }
            };
            match retried {
                Ok(()) => {
                    if pool.is_declared() {
                        pools.insert(pool_id.clone(), pool);
                    }
                    return;
                }
                Err((next, returned)) => {
                    error = next;
                    jobs = returned;
                }
            }
        }
        tracing::warn!(pool = %pool_id, %error, "append failed");
        let landed = matches!(
            error,
            StoreError::Unavailable {
                maybe_written: true,
                ..
            }
        );
        fail_all(jobs, &SubmitError::Recording(error.to_string()));
        if landed {
            // Events that landed must reach the projections even though nobody was told; a
            // retry of their tokens replays them.
            self.catch_up_projections(pool_id).await;
        }
    }

    /// A batch's append is durable: feed the projections, then answer its commands.
    async fn record_appended(&self, pool_id: &PoolId, decided: Decided, appended: AppendOutcome) {
        let Decided {
            jobs,
            replies,
            events,
            base_version,
        } = decided;
        let placed_hold = events
            .iter()
            .any(|event| matches!(event.change, allot_domain::Change::Reserved { .. }));
        if self.projections.next_version(pool_id) == base_version {
            for (i, event) in events.iter().enumerate() {
                let version = base_version + i as u64;
                let position = appended
                    .last_position
                    .saturating_sub((events.len() - 1 - i) as u64);
                self.projections.apply(version, position, event);
            }
        } else {
            // The projections missed events before this batch (an append whose ack was lost,
            // or another instance's writes after a reload): read them, and this batch, from the
            // stream.
            self.catch_up_projections(pool_id).await;
        }
        if placed_hold {
            self.holds_placed.notify_one();
        }
        send_replies(jobs, replies);
    }

    /// Applies events of `pool` that the projections have not seen (written by another instance).
    async fn catch_up_projections(&self, pool: &PoolId) {
        let stream = pool_stream(pool);
        loop {
            let from = self.projections.next_version(pool);
            let page = match self
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
                        self.projections
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

/// A batch decided against the pool's state, answered once its append (if any) is durable.
struct Decided {
    jobs: Vec<Job>,
    /// One per job, in order.
    replies: Vec<Result<Reply, SubmitError>>,
    events: Vec<Event>,
    /// Version of the batch's first event: the pool's event count before the batch.
    base_version: u64,
}

/// A wave's commands grouped by pool, each pool's in the order they came.
fn batches_by_pool(wave: Vec<Job>) -> Vec<(PoolId, Vec<Job>)> {
    let mut batches: Vec<(PoolId, Vec<Job>)> = Vec::new();
    let mut batch_of: HashMap<PoolId, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(wave.len(), Default::default());
    for job in wave {
        match batch_of.entry(job.command.pool.clone()) {
            Entry::Occupied(entry) => batches[*entry.get()].1.push(job),
            Entry::Vacant(entry) => {
                entry.insert(batches.len());
                batches.push((job.command.pool.clone(), vec![job]));
            }
        }
    }
    batches
}

/// Decides `batch` back to back against `pool`, evolving it. `Err` (every command answered
/// with a recording failure) if decide and evolve disagree: a domain bug; the pool must be
/// reloaded.
fn decide_jobs(
    pool_id: &PoolId,
    pool: &mut Pool,
    batch: Vec<Job>,
    now: allot_domain::Timestamp,
) -> Result<Decided, ()> {
    let base_version = pool.events_applied();
    let mut events = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for job in &batch {
        match decide(pool, &job.command, now) {
            Ok(Decision::Append(event)) => {
                if let Err(error) = evolve(pool, &event) {
                    tracing::error!(pool = %pool_id, %error, "decided event does not apply");
                    fail_all(batch, &SubmitError::Recording(error.to_string()));
                    return Err(());
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
    Ok(Decided {
        jobs: batch,
        replies,
        events,
        base_version,
    })
}

/// The expected version of an append whose first event gets `base_version`.
fn expected_before(base_version: u64) -> ExpectedVersion {
    match base_version.checked_sub(1) {
        None => ExpectedVersion::NoStream,
        Some(version) => ExpectedVersion::Exact(version),
    }
}

fn propose(events: &[Event]) -> Vec<ProposedEvent> {
    events
        .iter()
        .map(|event| ProposedEvent {
            id: event_id(event),
            kind: event.kind_name().to_owned(),
            payload: codec::encode_event(event),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use allot_domain::{Action, ActorId, Attestation, IdempotencyToken, Timestamp};
    use async_trait::async_trait;

    use super::*;
    use crate::clock::ManualClock;
    use crate::identity::params_digest;
    use crate::store::Subscription;
    use crate::store::memory::MemoryStore;

    /// How the held append ends once released.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        /// Nothing written; `Unavailable { maybe_written: false }`.
        NotWritten,
        /// Written, acknowledgement lost; `Unavailable { maybe_written: true }`.
        AckLost,
        /// Nothing written; refused as if another writer had moved the stream.
        Conflict,
        /// The append panics (a bug in a store, or in the task polling it).
        Panic,
    }

    struct Hold {
        fate: Fate,
        release: tokio::sync::oneshot::Receiver<()>,
    }

    /// An append the store has been handed and not yet answered: the versions its events would
    /// take (`None` for `ExpectedVersion::Any`).
    struct Flight {
        id: usize,
        stream: String,
        base: Option<u64>,
        next: Option<u64>,
    }

    /// The memory store, except that the next append after [`GatedStore::hold_next`] waits for
    /// a release and then ends as its [`Fate`] says; while the gate is closed
    /// ([`GatedStore::close_gate`]) every other append waits, in submission order, until
    /// [`GatedStore::open_gate`] and is then written as usual. Other calls pass straight
    /// through (a wave's appends run concurrently, the default `append_wave`).
    ///
    /// It also watches the appends in flight: per stream, how many at once at most, and whether
    /// an append arrived that does not continue the one in flight before it (two writers of one
    /// stream at once, as two tasks of one pool would be).
    struct GatedStore {
        inner: MemoryStore,
        hold: StdMutex<Option<Hold>>,
        appends: std::sync::atomic::AtomicUsize,
        line: StdMutex<Line>,
        flights: StdMutex<Vec<Flight>>,
        max_in_flight: StdMutex<std::collections::HashMap<String, usize>>,
        overlaps: StdMutex<Vec<String>>,
        /// Woken whenever the appends in flight change.
        changed: Notify,
    }

    /// The queue of appends (other than a [`GatedStore::hold_next`] one): each takes a ticket on
    /// arrival and is written only once every earlier ticket was (so in arrival order, however
    /// they are polled), and while the gate is closed only if it arrived before it closed.
    #[derive(Default)]
    struct Line {
        next: u64,
        /// Tickets below this may pass; `None` while the gate is open.
        released: Option<u64>,
        /// Every ticket below this is done.
        frontier: u64,
        done: std::collections::BTreeSet<u64>,
    }

    /// A place in the [`Line`]; done when written, or dropped unwritten.
    struct Ticket<'a> {
        store: &'a GatedStore,
        number: u64,
    }

    impl Drop for Ticket<'_> {
        fn drop(&mut self) {
            let mut line = self.store.line.lock().unwrap();
            line.done.insert(self.number);
            loop {
                let frontier = line.frontier;
                if !line.done.remove(&frontier) {
                    break;
                }
                line.frontier += 1;
            }
            drop(line);
            self.store.changed.notify_waiters();
        }
    }

    /// Takes an append off the in-flight list when it is answered (or dropped).
    struct Landing<'a> {
        store: &'a GatedStore,
        id: usize,
    }

    impl Drop for Landing<'_> {
        fn drop(&mut self) {
            self.store
                .flights
                .lock()
                .unwrap()
                .retain(|flight| flight.id != self.id);
            self.store.changed.notify_waiters();
        }
    }

    impl GatedStore {
        fn new() -> Self {
            GatedStore {
                inner: MemoryStore::new(),
                hold: StdMutex::new(None),
                appends: std::sync::atomic::AtomicUsize::new(0),
                line: StdMutex::new(Line::default()),
                flights: StdMutex::new(Vec::new()),
                max_in_flight: StdMutex::new(std::collections::HashMap::new()),
                overlaps: StdMutex::new(Vec::new()),
                changed: Notify::new(),
            }
        }

        fn hold_next(&self, fate: Fate) -> tokio::sync::oneshot::Sender<()> {
            let (release, wait) = tokio::sync::oneshot::channel();
            *self.hold.lock().unwrap() = Some(Hold {
                fate,
                release: wait,
            });
            release
        }

        /// Appends from now on wait (in submission order) until the gate opens.
        fn close_gate(&self) {
            let mut line = self.line.lock().unwrap();
            line.released = Some(line.next);
        }

        /// Lets every waiting append through, in submission order, and no longer holds any.
        fn open_gate(&self) {
            self.line.lock().unwrap().released = None;
            self.changed.notify_waiters();
        }

        /// A place in the line, taken on arrival.
        fn ticket(&self) -> Ticket<'_> {
            let mut line = self.line.lock().unwrap();
            let number = line.next;
            line.next += 1;
            Ticket {
                store: self,
                number,
            }
        }

        /// Waits until `ticket` may be written: the gate lets it through and every earlier one
        /// is done.
        async fn turn(&self, ticket: &Ticket<'_>) {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let line = self.line.lock().unwrap();
                    let released = line.released.is_none_or(|upto| ticket.number < upto);
                    if released && line.frontier == ticket.number {
                        return;
                    }
                }
                changed.await;
            }
        }

        fn appends(&self) -> usize {
            self.appends.load(Ordering::SeqCst)
        }

        /// Appends of `stream` handed to the store and not yet answered.
        fn in_flight(&self, stream: &str) -> usize {
            let flights = self.flights.lock().unwrap();
            flights.iter().filter(|f| f.stream == stream).count()
        }

        /// Waits until `done` holds of the appends in flight (re-checked whenever they change).
        /// Panics after a generous time: the condition is one the ledger must reach.
        async fn wait_until(&self, what: &str, done: impl Fn(&GatedStore) -> bool) {
            let wait = async {
                loop {
                    let changed = self.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if done(self) {
                        return;
                    }
                    changed.await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .unwrap_or_else(|_| panic!("never reached: {what}"));
        }

        /// The most appends of `stream` in flight at once.
        fn max_in_flight(&self, stream: &str) -> usize {
            let max = self.max_in_flight.lock().unwrap();
            max.get(stream).copied().unwrap_or(0)
        }

        /// Appends that arrived while another of their stream was in flight and do not continue
        /// it: two writers of one stream at once.
        fn overlaps(&self) -> Vec<String> {
            self.overlaps.lock().unwrap().clone()
        }

        fn take_off(&self, stream: &str, expected: ExpectedVersion, count: usize) -> Landing<'_> {
            let id = self.appends.fetch_add(1, Ordering::SeqCst);
            let base = match expected {
                ExpectedVersion::NoStream => Some(0),
                ExpectedVersion::Exact(version) => Some(version + 1),
                ExpectedVersion::Any => None,
            };
            let next = base.map(|base| base + count as u64);
            let mut flights = self.flights.lock().unwrap();
            let ahead = flights.iter().rev().find(|f| f.stream == stream);
            if let Some(ahead) = ahead
                && base.is_some()
                && ahead.next != base
            {
                self.overlaps.lock().unwrap().push(format!(
                    "append to {stream} expecting {expected:?} arrived while one for versions \
                     {:?}..{:?} was in flight",
                    ahead.base, ahead.next
                ));
            }
            flights.push(Flight {
                id,
                stream: stream.to_owned(),
                base,
                next,
            });
            let now = flights.iter().filter(|f| f.stream == stream).count();
            drop(flights);
            let mut max = self.max_in_flight.lock().unwrap();
            let max = max.entry(stream.to_owned()).or_default();
            *max = (*max).max(now);
            self.changed.notify_waiters();
            Landing { store: self, id }
        }
    }

    #[async_trait]
    impl EventStore for GatedStore {
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedVersion,
            events: Vec<ProposedEvent>,
        ) -> Result<AppendOutcome, StoreError> {
            let hold = self.hold.lock().unwrap().take();
            let Some(hold) = hold else {
                // In line before the append shows as in flight, so nothing a test does on
                // seeing it lets it pass ahead of the appends before it.
                let ticket = self.ticket();
                let _landing = self.take_off(stream, expected, events.len());
                self.turn(&ticket).await;
                return self.inner.append(stream, expected, events).await;
            };
            let _landing = self.take_off(stream, expected, events.len());
            // Decided now, in submission order; the answer waits for the release.
            if hold.fate == Fate::AckLost {
                self.inner.append(stream, expected, events).await?;
            }
            let _ = hold.release.await;
            match hold.fate {
                Fate::NotWritten => Err(StoreError::Unavailable {
                    reason: "injected: failed before durable".to_owned(),
                    maybe_written: false,
                }),
                Fate::AckLost => Err(StoreError::Unavailable {
                    reason: "injected: acknowledgement lost".to_owned(),
                    maybe_written: true,
                }),
                Fate::Conflict => Err(StoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual: crate::store::ActualVersion::Exact(0),
                }),
                Fate::Panic => panic!("injected: the append panicked"),
            }
        }

        async fn read_stream(
            &self,
            stream: &str,
            from_version: u64,
            max_count: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner
                .read_stream(stream, from_version, max_count)
                .await
        }

        async fn read_all(
            &self,
            after: Option<u64>,
            max_count: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_all(after, max_count).await
        }

        async fn subscribe_all(&self, after: Option<u64>) -> Result<Subscription, StoreError> {
            self.inner.subscribe_all(after).await
        }
    }

    const START: Timestamp = Timestamp(1_800_000_000_000);

    fn command(pool: &PoolId, actor: &str, token: &str, action: Action) -> Command {
        Command {
            pool: pool.clone(),
            actor: ActorId::new(actor),
            attestation: Attestation {
                signed_at: START,
                signature: vec![7; 64],
            },
            token: IdempotencyToken::new(token.to_owned()),
            digest: params_digest(&action),
            action,
        }
    }

    fn reserve(pool: &PoolId, token: &str) -> Command {
        let action = Action::Reserve {
            resource: "seat".into(),
            requester: format!("requester-{token}"),
            duration_ms: 60_000,
            count: 1,
        };
        command(pool, "client", token, action)
    }

    async fn ledger_with_pool(store: Arc<GatedStore>) -> (Ledger, PoolId) {
        let ledger = Ledger::open(
            store,
            Arc::new(ManualClock::new(START)),
            Arc::new(Projections::new()),
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap();
        let pool = PoolId::new("p1");
        let declare = Action::DeclarePool {
            capacity: 10,
            closes_at: None,
            units: vec![],
            idempotency_window_ms: 600_000,
        };
        let declared = ledger
            .submit(command(&pool, "admin", "declare", declare))
            .await
            .unwrap();
        assert!(matches!(declared.outcome, Outcome::PoolDeclared { .. }));
        (ledger, pool)
    }

    /// A ledger dropped without `close` lets go of its store: its shards end once their queues
    /// are empty (an open embedded store keeps its data directory locked until then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_ledger_lets_go_of_its_store() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        ledger.submit(reserve(&pool, "a")).await.unwrap();
        drop(ledger);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shards still hold the store"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A wave that panics (here: in the store) answers its commands with a recording failure
    /// (outcome unknown), and its shard goes on: the pool's next command is decided on the pool
    /// as the log holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wave_that_panics_answers_its_commands_and_the_shard_goes_on() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let release = store.hold_next(Fate::Panic);
        let before = store.appends();
        let submitted = {
            let ledger = ledger.clone();
            let command = reserve(&pool, "a");
            tokio::spawn(async move { ledger.submit(command).await })
        };
        store
            .wait_until("the held append is in flight", |s| s.appends() > before)
            .await;
        release.send(()).unwrap();
        let answer = submitted.await.unwrap();
        assert!(
            matches!(answer, Err(SubmitError::Recording(_))),
            "{answer:?}"
        );
        let retried = ledger.submit(reserve(&pool, "a")).await.unwrap();
        assert!(!retried.replayed, "the panicked append wrote nothing");
        assert!(matches!(retried.outcome, Outcome::Reserved { .. }));
        assert_eq!(store.inner.len(), 2);
        ledger.close().await;
    }

    /// One held append with `fate`, then the same token again.
    async fn held_then_retried(
        fate: Fate,
    ) -> (
        Arc<GatedStore>,
        Ledger,
        PoolId,
        Result<Reply, SubmitError>,
        Result<Reply, SubmitError>,
    ) {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let release = store.hold_next(fate);
        let before = store.appends();
        let first = tokio::spawn({
            let ledger = ledger.clone();
            let a = reserve(&pool, "a");
            async move { ledger.submit(a).await }
        });
        store
            .wait_until("the held append is in flight", |s| s.appends() > before)
            .await;
        release.send(()).unwrap();
        let first = first.await.unwrap();
        let retried = ledger.submit(reserve(&pool, "a")).await;
        (store, ledger, pool, first, retried)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_append_fails_its_commands_and_the_pool_is_reloaded() {
        let (store, ledger, pool, first, retried) = held_then_retried(Fate::NotWritten).await;
        assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
        assert!(!retried.as_ref().unwrap().replayed, "nothing had landed");
        assert_eq!(store.inner.len(), 2);
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, 1);
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_ack_fails_its_commands_and_a_retry_replays() {
        let (store, ledger, pool, first, retried) = held_then_retried(Fate::AckLost).await;
        assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
        let retried = retried.unwrap();
        assert!(retried.replayed, "the landed outcome is answered again");
        assert_eq!(store.inner.len(), 2);
        // The landed event reached the projections though nobody was told of it.
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, 1);
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_decides_the_commands_again_on_the_reloaded_pool() {
        let (store, ledger, pool, first, retried) = held_then_retried(Fate::Conflict).await;
        let first = first.unwrap();
        assert!(!first.replayed);
        assert!(retried.unwrap().replayed);
        assert_eq!(ledger.metrics().version_conflicts.get(), 1);
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, store.inner.len() as u64 - 1);
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_of_an_outcome_in_flight_waits_for_it_to_be_durable() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let release = store.hold_next(Fate::NotWritten);
        let first = tokio::spawn({
            let ledger = ledger.clone();
            let a = reserve(&pool, "a");
            async move { ledger.submit(a).await }
        });
        while store.appends() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The same token again: decided as a replay of the held outcome, so it has nothing to
        // append, yet it must not be answered before that outcome is durable.
        let retry = tokio::spawn({
            let ledger = ledger.clone();
            let a = reserve(&pool, "a");
            async move { ledger.submit(a).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !retry.is_finished(),
            "a replay was answered before its outcome was durable"
        );
        release.send(()).unwrap();
        let first = first.await.unwrap();
        let retry = retry.await.unwrap();
        assert!(matches!(first, Err(SubmitError::Recording(_))), "{first:?}");
        // Decided after the failed append settled, on the reloaded pool: a new reservation.
        assert!(!retry.unwrap().replayed);
        assert_eq!(store.inner.len(), 2);
        ledger.close().await;
    }

    type Submission =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, SubmitError>> + Send>>;

    /// Submits `command` and polls it once, so that when this returns the command is in its
    /// shard's queue (or already answered). The rest of the submission is the returned future.
    async fn enqueue(ledger: &Ledger, command: Command) -> Submission {
        let ledger = ledger.clone();
        let mut submission: Submission = Box::pin(async move { ledger.submit(command).await });
        match futures::poll!(submission.as_mut()) {
            std::task::Poll::Ready(answer) => Box::pin(std::future::ready(answer)),
            std::task::Poll::Pending => submission,
        }
    }

    /// Every submission's answer; panics if one never comes.
    async fn answers(
        submissions: Vec<tokio::task::JoinHandle<Result<Reply, SubmitError>>>,
    ) -> Vec<Result<Reply, SubmitError>> {
        tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join_all(submissions),
        )
        .await
        .expect("a submitter got no answer")
        .into_iter()
        .map(|joined| joined.unwrap())
        .collect()
    }

    /// Each answer against the pool's stream: an outcome answered (decided or replayed) is the
    /// outcome of the event its token recorded; a command refused before it was decided, or
    /// turned away at shutdown, recorded nothing. (A recording failure may or may not have
    /// landed; callers that know say so.)
    async fn assert_answers_match_stream(
        store: &GatedStore,
        pool: &PoolId,
        answered: &[(Command, Result<Reply, SubmitError>)],
    ) {
        let recorded = store
            .inner
            .read_stream(&pool_stream(pool), 0, usize::MAX)
            .await
            .unwrap();
        let mut outcomes = std::collections::HashMap::new();
        for recorded in &recorded {
            let event = decode_pool(recorded).unwrap();
            let key = (
                event.actor.as_str().to_owned(),
                event.token.as_str().to_owned(),
            );
            assert!(
                outcomes.insert(key, event.outcome()).is_none(),
                "a token recorded twice"
            );
        }
        for (command, answer) in answered {
            let key = (
                command.actor.as_str().to_owned(),
                command.token.as_str().to_owned(),
            );
            match answer {
                Ok(reply) => assert_eq!(
                    outcomes.get(&key),
                    Some(&reply.outcome),
                    "answered {reply:?} to {key:?}, which the stream does not hold"
                ),
                Err(SubmitError::Recording(_)) => {}
                Err(refused) => assert!(
                    !outcomes.contains_key(&key),
                    "{key:?} refused with {refused:?} but recorded"
                ),
            }
        }
    }

    /// A submission the test polls itself, keeping the answer if a peek found it.
    /// `close` while a wave's append is held (with `first_fate`) and two more commands are
    /// queued behind it: `close` is polled once (it stops accepting) before the append is
    /// released. A command submitted then is turned away; every other one is answered, and each
    /// outcome answered as decided is in the log.
    async fn close_with_a_wave_in_flight(first_fate: Option<Fate>) -> Arc<GatedStore> {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let stream = pool_stream(&pool);
        let release_first = first_fate.map(|fate| store.hold_next(fate));
        store.close_gate();
        let mut sent = Vec::new();
        let mut submissions = Vec::new();
        for i in 0..3 {
            let command = reserve(&pool, &format!("c{i}"));
            sent.push(command.clone());
            submissions.push(tokio::spawn(enqueue(&ledger, command).await));
            if i == 0 {
                store
                    .wait_until("the first wave's append is held", |s| {
                        s.in_flight(&stream) == 1
                    })
                    .await;
            }
        }
        let mut closing = Box::pin(ledger.close());
        assert!(futures::poll!(closing.as_mut()).is_pending());
        let late = reserve(&pool, "late");
        let late_answer = ledger.submit(late.clone()).await;
        assert_eq!(late_answer, Err(SubmitError::ShuttingDown));
        if let Some(release) = release_first {
            release.send(()).unwrap();
        }
        store.open_gate();
        tokio::time::timeout(Duration::from_secs(30), closing)
            .await
            .expect("close did not end");
        let mut answered: Vec<_> = sent.into_iter().zip(answers(submissions).await).collect();
        answered.push((late, late_answer));
        assert_answers_match_stream(&store, &pool, &answered).await;
        // A shard has one wave in flight: one append of a pool at a time, each on the last.
        assert_eq!(store.max_in_flight(&stream), 1);
        assert!(store.overlaps().is_empty(), "{:?}", store.overlaps());
        let appended = store.appends();
        assert!(ledger.submit(reserve(&pool, "later")).await == Err(SubmitError::ShuttingDown));
        assert_eq!(store.appends(), appended);
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_answers_every_command_with_what_the_log_holds() {
        // Everything lands: the held wave and the two commands queued behind it.
        let store = close_with_a_wave_in_flight(None).await;
        assert_eq!(store.inner.len(), 1 + 3);
        // The held append fails: the queued two are decided on the reloaded pool.
        let store = close_with_a_wave_in_flight(Some(Fate::NotWritten)).await;
        assert_eq!(store.inner.len(), 1 + 2);
        // The held append lands but its acknowledgement is lost: it is answered as a failure
        // (a retry replays), and the queued two are decided after it.
        let store = close_with_a_wave_in_flight(Some(Fate::AckLost)).await;
        assert_eq!(store.inner.len(), 1 + 3);
    }
}

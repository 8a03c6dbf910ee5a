//! The command path: one task per pool serializes that pool's commands, decides a batch of them
//! back to back against the aggregate, and appends the batch (one event per command) with the
//! pool's expected version. Replies are sent only after the append is durable, so nothing is
//! acknowledged that could be lost. On a version conflict (another instance wrote) the task
//! reloads the stream and decides the batch again.
//!
//! Where the store decides appends in submission order and nobody else writes, the task keeps
//! up to [`PIPELINE_BATCHES_MAX`] batches in flight: while one is being made durable it decides
//! the next on the already evolved state and submits it with the version after it. Batches are
//! answered in decision order, each only once its own append (and every earlier one) is
//! durable. If an append fails, no batch behind it is answered from its decision: the task
//! waits for their appends to settle, reloads the pool, then decides them again (conflict) or
//! fails them (store failure; tokens that landed replay on retry).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
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
use crate::store::{
    AppendOutcome, EventStore, ExpectedVersion, ProposedEvent, RecordedEvent, StoreError,
};

/// Commands decided back to back into one append.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Batches of one pool whose appends may be in flight at once, each decided on the state the
/// ones before it leave and answered in order once durable. Bounds what a failed append takes
/// with it.
pub const PIPELINE_BATCHES_MAX: usize = 4;
/// A pool task that just decided a batch of at least this many commands yields once before
/// collecting the next, if fewer than half as many are queued.
pub const LINGER_BATCH_MIN: usize = 8;
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
    reply: oneshot::Sender<Answer>,
}

/// Where a submitted job went (returned by value, as `try_send` does).
enum Enqueued {
    Queued,
    Full(Job),
    /// The queue's task retired; the sender identifies the queue to take out of the map.
    Closed(Job, mpsc::Sender<Job>),
    ShuttingDown,
}

/// A pool task's queue, closed and taken out of the ledger's map however the task ends (a panic
/// included). Closing drops the jobs still queued, so their submitters hear that nothing was
/// decided; and with the map's sender gone, a job pushed by a submitter that took its permit
/// just before the close is dropped as soon as that submitter lets go of its sender, instead of
/// waiting for the next command to the pool to find the queue closed.
struct PoolQueue {
    shared: Arc<Shared>,
    pool: PoolId,
    jobs: mpsc::Receiver<Job>,
}

impl PoolQueue {
    /// Takes no more commands and leaves the map, so the pool's next command starts a new task.
    fn close(&mut self) {
        self.jobs.close();
        // A successor task (started once this queue was out of the map) has an open queue.
        self.shared
            .pools
            .remove_if(&self.pool, |_, tx| tx.is_closed());
    }
}

impl Drop for PoolQueue {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a pool task tells a submitter.
enum Answer {
    Decided(Result<Reply, SubmitError>),
    /// The task retired (its pool was never declared) before deciding this command: submit it
    /// again, to a task that starts only once this one writes nothing more.
    Resubmit(Command),
}

struct Shared {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    projections: Arc<Projections>,
    actors: Arc<ActorDirectory>,
    metrics: Arc<Metrics>,
    pools: DashMap<PoolId, mpsc::Sender<Job>, foldhash::fast::RandomState>,
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
                pools: DashMap::default(),
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
            let (reply, answer) = oneshot::channel();
            match self.enqueue(Job { command, reply }) {
                Enqueued::Queued => match answer.await {
                    Ok(Answer::Decided(result)) => return result,
                    Ok(Answer::Resubmit(returned)) => command = returned,
                    Err(_) if !self.shared.accepting.load(Ordering::SeqCst) => {
                        return Err(SubmitError::ShuttingDown);
                    }
                    // Nothing was decided for it; the same token may be retried.
                    Err(_) => {
                        return Err(SubmitError::Recording(
                            "the pool's task stopped before deciding this command".to_owned(),
                        ));
                    }
                },
                Enqueued::ShuttingDown => return Err(SubmitError::ShuttingDown),
                Enqueued::Full(job) => {
                    return Err(SubmitError::Overloaded(job.command.pool.to_string()));
                }
                Enqueued::Closed(job, sender) => {
                    // The pool task retired (its pool was never declared); start a new one.
                    self.shared
                        .pools
                        .remove_if(&job.command.pool, |_, tx| tx.same_channel(&sender));
                    command = job.command;
                }
            }
        }
    }

    /// Queues `job` for its pool's task, starting one if the pool has none. The queue's sender
    /// is used where the map holds it, not cloned (two shared counters per command), and
    /// nothing of it is held afterwards: a job that reached a queue nobody drains any more is
    /// dropped with the channel once its last sender goes, and comes back to its submitter
    /// unanswered instead of waiting forever.
    fn enqueue(&self, job: Job) -> Enqueued {
        let send = |sender: &mpsc::Sender<Job>, job| match sender.try_send(job) {
            Ok(()) => Enqueued::Queued,
            Err(mpsc::error::TrySendError::Full(job)) => Enqueued::Full(job),
            Err(mpsc::error::TrySendError::Closed(job)) => Enqueued::Closed(job, sender.clone()),
        };
        if let Some(sender) = self.shared.pools.get(&job.command.pool) {
            return send(&sender, job);
        }
        match self.pool_sender(&job.command.pool) {
            Some(sender) => send(&sender, job),
            None => Enqueued::ShuttingDown,
        }
    }

    /// The queue of `pool`'s task, starting one if it has none; `None` once closing, so no task
    /// starts beside one that `close` is draining (two writers to one stream would let a
    /// pipelined append land on the other's events).
    fn pool_sender(&self, pool: &PoolId) -> Option<mpsc::Sender<Job>> {
        let entry = self.shared.pools.entry(pool.clone());
        // Checked under the map's lock: `close` stops accepting before it clears the map.
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return None;
        }
        let sender = entry
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
            .clone();
        Some(sender)
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

    async fn run_pool(self, pool_id: PoolId, jobs: mpsc::Receiver<Job>) {
        let mut queue = PoolQueue {
            shared: self.shared.clone(),
            pool: pool_id.clone(),
            jobs,
        };
        let jobs = &mut queue.jobs;
        let store = self.shared.store.clone();
        let stream = pool_stream(&pool_id);
        // Several appends of one pool may be in flight only where the store decides them in
        // submission order and no other process writes in between.
        let depth = if store.orders_appends_by_submission() && !store.shared_with_other_writers() {
            PIPELINE_BATCHES_MAX
        } else {
            1
        };
        // Evolved through every decided batch, durable or in flight. `None` (reload before
        // the next batch) only while nothing is in flight.
        let mut state: Option<Pool> = None;
        let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::with_capacity(depth);
        let mut open = true;
        let mut retiring = false;
        let mut previous_batch = 0usize;
        loop {
            let first = if in_flight.is_empty() {
                if !open {
                    break;
                }
                match jobs.recv().await {
                    Some(job) => job,
                    None => break,
                }
            } else {
                tokio::select! {
                    biased;
                    settled = std::future::poll_fn(|cx| poll_in_flight(&mut in_flight, cx)) => {
                        self.settle(&pool_id, &stream, settled, &mut in_flight, &mut state)
                            .await;
                        continue;
                    }
                    job = jobs.recv(), if open && in_flight.len() < depth => match job {
                        Some(job) => job,
                        None => {
                            open = false;
                            continue;
                        }
                    },
                }
            };
            // The callers the last big batch answered are on their way back; the first of them
            // wakes this task at once. One yield lets the others queue their commands too, so
            // they share a batch (and the next fdatasync) instead of waiting a whole cycle behind
            // a batch of one.
            if previous_batch >= LINGER_BATCH_MIN && jobs.len() < previous_batch / 2 {
                tokio::task::yield_now().await;
            }
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
            previous_batch = batch.len();
            let Some(pool) = state.as_mut() else { continue };
            let decided = match decide_jobs(&pool_id, pool, batch, self.shared.clock.now()) {
                Ok(decided) => decided,
                Err(()) => {
                    // The state took part of a refused batch: let the batches before it finish,
                    // then reload.
                    while !in_flight.is_empty() {
                        let settled =
                            std::future::poll_fn(|cx| poll_in_flight(&mut in_flight, cx)).await;
                        self.settle(&pool_id, &stream, settled, &mut in_flight, &mut state)
                            .await;
                    }
                    state = None;
                    continue;
                }
            };
            let append = if decided.events.is_empty() {
                Append::Nothing
            } else {
                let expected = expected_before(decided.base_version);
                let proposed = propose(&decided.events);
                self.shared
                    .metrics
                    .append_batch_events
                    .observe(decided.events.len() as f64);
                let mut future = store.append(&stream, expected, proposed);
                // Polled once now, so the store sees this pool's appends in the order they were
                // decided; later polls only wait for durability.
                match futures::poll!(future.as_mut()) {
                    std::task::Poll::Ready(result) => Append::Done(result),
                    std::task::Poll::Pending => Append::Pending(future),
                }
            };
            in_flight.push_back(InFlight { decided, append });
            // A pool that was never declared keeps no task: take no more commands, settle what
            // is in flight, then retire.
            if !retiring && state.as_ref().is_some_and(|pool| !pool.is_declared()) {
                retiring = true;
                open = false;
            }
        }
        if retiring {
            // Nothing of this task is in flight any more. Close the queue first, so the next
            // task for this pool starts only after this one has written its last event; commands
            // still queued go back to their submitters, who send them to that task.
            queue.close();
            // `recv` after `close` ends only once every permit has come back, so a job pushed
            // by a submitter that took its permit before the close is resubmitted too
            // (`try_recv` would stop at it).
            while let Some(job) = queue.jobs.recv().await {
                let _ = job.reply.send(Answer::Resubmit(job.command));
            }
        }
    }

    /// Answers the oldest batch once its append settled. A failed append takes every later
    /// batch of the pool with it, since they were decided on top of it.
    async fn settle<'a>(
        &self,
        pool_id: &PoolId,
        stream: &str,
        settled: Settled,
        in_flight: &mut VecDeque<InFlight<'a>>,
        state: &mut Option<Pool>,
    ) {
        match settled.result {
            None => send_replies(settled.decided.jobs, settled.decided.replies),
            Some(Ok(appended)) => {
                self.record_appended(pool_id, settled.decided, appended)
                    .await
            }
            Some(Err(error)) => {
                self.recover(pool_id, stream, settled.decided, error, in_flight, state)
                    .await
            }
        }
    }

    /// After the append of `failed` failed: waits for the appends in flight behind it (so the
    /// reload sees everything that landed), answers none of their decisions, and reloads. On a
    /// version conflict every batch is decided again on the reloaded pool, in order; on any
    /// other failure all of them fail (their tokens replay if something landed after all).
    async fn recover<'a>(
        &self,
        pool_id: &PoolId,
        stream: &str,
        failed: Decided,
        error: StoreError,
        in_flight: &mut VecDeque<InFlight<'a>>,
        state: &mut Option<Pool>,
    ) {
        let mut later = Vec::with_capacity(in_flight.len());
        let mut later_maybe_written = false;
        while let Some(next) = in_flight.pop_front() {
            let result = match next.append {
                Append::Nothing => None,
                Append::Pending(future) => Some(future.await),
                Append::Done(result) => Some(result),
            };
            later_maybe_written |= result.as_ref().is_some_and(maybe_written);
            later.push(next.decided.jobs);
        }
        *state = None;
        self.shared
            .metrics
            .pipeline_redone_batches
            .inc_by(later.len() as u64);
        if let StoreError::WrongExpectedVersion { .. } = error {
            self.shared.metrics.version_conflicts.inc();
            tracing::debug!(pool = %pool_id, "version conflict; reloading");
            let mut pool = match self.load_pool(pool_id).await {
                Ok(pool) => pool,
                Err(error) => {
                    let error = SubmitError::Recording(error.to_string());
                    fail_all(failed.jobs, &error);
                    for jobs in later {
                        fail_all(jobs, &error);
                    }
                    return;
                }
            };
            // Events another writer appended must reach the projections too.
            self.catch_up_projections(pool_id).await;
            let mut healthy = true;
            for jobs in std::iter::once(failed.jobs).chain(later) {
                if healthy {
                    healthy = self.decide_batch(pool_id, stream, &mut pool, jobs, 2).await;
                } else {
                    fail_all(
                        jobs,
                        &SubmitError::Recording(
                            "an earlier batch of this pool failed; retry".to_owned(),
                        ),
                    );
                }
            }
            if healthy {
                *state = Some(pool);
            }
            return;
        }
        tracing::warn!(pool = %pool_id, %error, "append failed");
        let failed_maybe_written = matches!(
            error,
            StoreError::Unavailable {
                maybe_written: true,
                ..
            }
        );
        let reply = SubmitError::Recording(error.to_string());
        fail_all(failed.jobs, &reply);
        for jobs in later {
            fail_all(jobs, &reply);
        }
        if failed_maybe_written || later_maybe_written {
            // Events that landed must reach the projections even though nobody was told; a
            // retry of their tokens replays them.
            self.catch_up_projections(pool_id).await;
        }
    }

    /// Decides and appends one batch, waiting for its append; on a version conflict reloads and
    /// decides it again. Returns false if the in-memory pool must be reloaded.
    async fn decide_batch(
        &self,
        pool_id: &PoolId,
        stream: &str,
        pool: &mut Pool,
        mut batch: Vec<Job>,
        first_attempt: usize,
    ) -> bool {
        let mut attempt = first_attempt;
        loop {
            let decided = match decide_jobs(pool_id, pool, batch, self.shared.clock.now()) {
                Ok(decided) => decided,
                Err(()) => return false,
            };
            if decided.events.is_empty() {
                send_replies(decided.jobs, decided.replies);
                return true;
            }
            let expected = expected_before(decided.base_version);
            let proposed = propose(&decided.events);
            self.shared
                .metrics
                .append_batch_events
                .observe(decided.events.len() as f64);
            match self.shared.store.append(stream, expected, proposed).await {
                Ok(appended) => {
                    self.record_appended(pool_id, decided, appended).await;
                    return true;
                }
                Err(StoreError::WrongExpectedVersion { .. }) if attempt < CONFLICT_RETRIES_MAX => {
                    attempt += 1;
                    self.shared.metrics.version_conflicts.inc();
                    tracing::debug!(pool = %pool_id, attempt, "version conflict; reloading");
                    match self.load_pool(pool_id).await {
                        Ok(fresh) => *pool = fresh,
                        Err(error) => {
                            fail_all(decided.jobs, &SubmitError::Recording(error.to_string()));
                            return false;
                        }
                    }
                    // Events another writer appended must reach the projections too.
                    self.catch_up_projections(pool_id).await;
                    batch = decided.jobs;
                }
                Err(error) => {
                    tracing::warn!(pool = %pool_id, %error, "append failed");
                    let landed = matches!(
                        error,
                        StoreError::Unavailable {
                            maybe_written: true,
                            ..
                        }
                    );
                    fail_all(decided.jobs, &SubmitError::Recording(error.to_string()));
                    if landed {
                        // Events that landed must reach the projections even though nobody was
                        // told; a retry of their tokens replays them.
                        self.catch_up_projections(pool_id).await;
                    }
                    return false;
                }
            }
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
        if self.shared.projections.next_version(pool_id) == base_version {
            for (i, event) in events.iter().enumerate() {
                let version = base_version + i as u64;
                let position = appended
                    .last_position
                    .saturating_sub((events.len() - 1 - i) as u64);
                self.shared.projections.apply(version, position, event);
            }
        } else {
            // The projections missed events before this batch (an append whose ack was lost,
            // or another instance's writes after a reload): read them, and this batch, from the
            // stream.
            self.catch_up_projections(pool_id).await;
        }
        if placed_hold {
            self.shared.holds_placed.notify_one();
        }
        send_replies(jobs, replies);
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

/// A batch decided against the pool's state, answered once its append (if any) is durable.
struct Decided {
    jobs: Vec<Job>,
    /// One per job, in order.
    replies: Vec<Result<Reply, SubmitError>>,
    events: Vec<Event>,
    /// Version of the batch's first event: the pool's event count before the batch.
    base_version: u64,
}

type AppendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AppendOutcome, StoreError>> + Send + 'a>>;

/// Where a decided batch's append stands.
enum Append<'a> {
    /// Nothing to write (replays, uncached rejections). Still answered in turn: a replay may
    /// name an outcome whose append is in flight.
    Nothing,
    Pending(AppendFuture<'a>),
    Done(Result<AppendOutcome, StoreError>),
}

/// A decided batch of one pool, in the order it was decided.
struct InFlight<'a> {
    decided: Decided,
    append: Append<'a>,
}

/// The oldest batch, taken off once its append settled (`result` is `None` when it had none).
struct Settled {
    decided: Decided,
    result: Option<Result<AppendOutcome, StoreError>>,
}

/// Polls every pending append, oldest first (so each keeps its place in the store's queue), and
/// yields the oldest batch once it settled.
fn poll_in_flight(
    in_flight: &mut VecDeque<InFlight<'_>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Settled> {
    for batch in in_flight.iter_mut() {
        if let Append::Pending(future) = &mut batch.append
            && let std::task::Poll::Ready(result) = future.as_mut().poll(cx)
        {
            batch.append = Append::Done(result);
        }
    }
    if in_flight
        .front()
        .is_some_and(|front| matches!(front.append, Append::Pending(_)))
    {
        return std::task::Poll::Pending;
    }
    match in_flight.pop_front() {
        Some(InFlight { decided, append }) => std::task::Poll::Ready(Settled {
            decided,
            result: match append {
                Append::Done(result) => Some(result),
                Append::Nothing | Append::Pending(_) => None,
            },
        }),
        None => std::task::Poll::Pending,
    }
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

/// Whether a settled append may have landed.
fn maybe_written(result: &Result<AppendOutcome, StoreError>) -> bool {
    match result {
        Ok(_) => true,
        Err(StoreError::Unavailable { maybe_written, .. }) => *maybe_written,
        Err(_) => false,
    }
}

fn fail_all(batch: Vec<Job>, error: &SubmitError) {
    for job in batch {
        let _ = job.reply.send(Answer::Decided(Err(error.clone())));
    }
}

fn send_replies(batch: Vec<Job>, replies: Vec<Result<Reply, SubmitError>>) {
    for (job, reply) in batch.into_iter().zip(replies) {
        // The caller may have gone away (timeout, disconnect); the outcome is recorded anyway.
        let _ = job.reply.send(Answer::Decided(reply));
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

    /// The next `read_stream` of one stream, held until released.
    struct ReadHold {
        stream: String,
        arrived: tokio::sync::oneshot::Sender<()>,
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

    /// Run once by the next append that passes the closed gate, before it is written.
    type PassHook = Box<dyn FnOnce() + Send>;

    /// The memory store, except that the next append after [`GatedStore::hold_next`] waits for
    /// a release and then ends as its [`Fate`] says; while the gate is closed
    /// ([`GatedStore::close_gate`]) every other append waits, in submission order, until
    /// [`GatedStore::open_gate`] and is then written as usual; and the next read of a stream
    /// named in [`GatedStore::hold_next_read`] waits for a release. Other calls pass straight
    /// through. Like the embedded store, it decides appends in submission order, so the ledger
    /// pipelines.
    ///
    /// It also watches the appends in flight: per stream, how many at once at most, and whether
    /// an append arrived that does not continue the one in flight before it (two writers of one
    /// stream at once, as two tasks of one pool would be).
    struct GatedStore {
        inner: MemoryStore,
        hold: StdMutex<Option<Hold>>,
        appends: std::sync::atomic::AtomicUsize,
        read_hold: StdMutex<Option<ReadHold>>,
        line: StdMutex<Line>,
        on_pass: StdMutex<Option<PassHook>>,
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
                read_hold: StdMutex::new(None),
                line: StdMutex::new(Line::default()),
                on_pass: StdMutex::new(None),
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

        /// Holds the next read of `stream`. Returns a receiver that resolves once that read
        /// arrived, and the release.
        fn hold_next_read(
            &self,
            stream: &str,
        ) -> (
            tokio::sync::oneshot::Receiver<()>,
            tokio::sync::oneshot::Sender<()>,
        ) {
            let (arrived, arrival) = tokio::sync::oneshot::channel();
            let (release, wait) = tokio::sync::oneshot::channel();
            *self.read_hold.lock().unwrap() = Some(ReadHold {
                stream: stream.to_owned(),
                arrived,
                release: wait,
            });
            (arrival, release)
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
        /// is done. Returns whether the gate held it.
        async fn turn(&self, ticket: &Ticket<'_>) -> bool {
            let mut held = false;
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let line = self.line.lock().unwrap();
                    let released = line.released.is_none_or(|upto| ticket.number < upto);
                    held |= !released;
                    if released && line.frontier == ticket.number {
                        return held;
                    }
                }
                changed.await;
            }
        }

        /// Runs `hook` when the next append passes the closed gate, before it is written.
        fn on_next_pass(&self, hook: impl FnOnce() + Send + 'static) {
            *self.on_pass.lock().unwrap() = Some(Box::new(hook));
        }

        fn appends(&self) -> usize {
            self.appends.load(Ordering::SeqCst)
        }

        /// Appends of `stream` handed to the store and not yet answered.
        fn in_flight(&self, stream: &str) -> usize {
            let flights = self.flights.lock().unwrap();
            flights.iter().filter(|f| f.stream == stream).count()
        }

        /// The most appends of `stream` that were in flight at once.
        fn max_in_flight(&self, stream: &str) -> usize {
            let max = self.max_in_flight.lock().unwrap();
            max.get(stream).copied().unwrap_or(0)
        }

        /// Appends that arrived while another writer's append of the same stream was in flight.
        fn overlaps(&self) -> Vec<String> {
            self.overlaps.lock().unwrap().clone()
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
                if self.turn(&ticket).await {
                    let hook = self.on_pass.lock().unwrap().take();
                    if let Some(hook) = hook {
                        hook();
                    }
                }
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
            let hold = {
                let mut hold = self.read_hold.lock().unwrap();
                if hold.as_ref().is_some_and(|hold| hold.stream == stream) {
                    hold.take()
                } else {
                    None
                }
            };
            if let Some(hold) = hold {
                let _ = hold.arrived.send(());
                let _ = hold.release.await;
            }
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

        fn orders_appends_by_submission(&self) -> bool {
            true
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

    /// Commands racing a pool's declaration: the task of the undeclared pool retires while
    /// declarations and reserves queue behind it. Exactly one declaration wins, and the stream
    /// stays one writer's (it loads, and allocated never passes the winner's capacity). A guard
    /// of the outcome, not a reproduction: the two-task interleaving it guards against needs a
    /// scheduling this test does not force (`a_retiring_pool_task_hands_queued_commands_to_one_next_task`
    /// forces one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_racing_a_declaration_meet_one_pool_task() {
        let store = Arc::new(MemoryStore::new());
        let ledger = Ledger::open(
            store,
            Arc::new(ManualClock::new(START)),
            Arc::new(Projections::new()),
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap();
        for round in 0..100 {
            let pool = PoolId::new(format!("race{round}"));
            let mut answers = Vec::new();
            for i in 0..24 {
                let command = match i {
                    6 | 12 => command(
                        &pool,
                        "admin",
                        &format!("declare-{i}"),
                        Action::DeclarePool {
                            capacity: if i == 6 { 1 } else { 10 },
                            closes_at: None,
                            units: vec![],
                            idempotency_window_ms: 600_000,
                        },
                    ),
                    _ => reserve(&pool, &format!("r{i}")),
                };
                let ledger = ledger.clone();
                answers.push(tokio::spawn(async move { ledger.submit(command).await }));
            }
            let mut declared = 0;
            for answer in answers {
                if let Ok(Reply {
                    outcome: Outcome::PoolDeclared { .. },
                    ..
                }) = answer.await.unwrap()
                {
                    declared += 1;
                }
            }
            assert_eq!(declared, 1, "round {round}");
            let loaded = ledger.load_pool(&pool).await.expect("the stream folds");
            assert!(loaded.allocated() <= loaded.capacity(), "round {round}");
        }
        ledger.close().await;
    }

    /// Submits `a`, whose append the store holds with `fate`, then `b`, which the pool decides
    /// on top of `a` and appends while `a` is still in flight; then releases `a`. Returns both
    /// answers.
    async fn two_pipelined(
        store: &Arc<GatedStore>,
        ledger: &Ledger,
        a: Command,
        b: Command,
        fate: Fate,
    ) -> (Result<Reply, SubmitError>, Result<Reply, SubmitError>) {
        let release = store.hold_next(fate);
        let before = store.appends();
        let first = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.submit(a).await }
        });
        let second = tokio::spawn({
            let ledger = ledger.clone();
            let store = store.clone();
            async move {
                while store.appends() < before + 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                ledger.submit(b).await
            }
        });
        // The second batch reaches the store while the first is held: the pool pipelines.
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.appends() < before + 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the second batch was not appended while the first was in flight");
        assert!(
            !second.is_finished(),
            "answered before the batch ahead settled"
        );
        release.send(()).unwrap();
        (first.await.unwrap(), second.await.unwrap())
    }

    fn reserved_seq(reply: &Result<Reply, SubmitError>) -> u64 {
        match reply {
            Ok(Reply {
                outcome: Outcome::Reserved { reservation, .. },
                ..
            }) => reservation.seq,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    /// A pool task that panics leaves no queue in the ledger's map (a job that reached it as it
    /// stopped would wait there for the next command to that pool); its command gets an answer,
    /// and the pool's next command is decided by a new task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_task_that_panics_leaves_no_queue_behind() {
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
        let mut tasks = {
            let mut guard = ledger.shared.tasks.lock().unwrap();
            std::mem::take(&mut *guard)
        };
        let ended = tasks.join_next().await.expect("the pool's task");
        assert!(ended.unwrap_err().is_panic());
        assert!(
            ledger.shared.pools.get(&pool).is_none(),
            "the stopped task's queue is still in the map"
        );
        let retried = ledger.submit(reserve(&pool, "a")).await.unwrap();
        assert!(!retried.replayed, "the panicked append wrote nothing");
        assert!(matches!(retried.outcome, Outcome::Reserved { .. }));
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_append_fails_the_batch_pipelined_behind_it() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let (a, b) = two_pipelined(
            &store,
            &ledger,
            reserve(&pool, "a"),
            reserve(&pool, "b"),
            Fate::NotWritten,
        )
        .await;
        assert!(matches!(a, Err(SubmitError::Recording(_))), "{a:?}");
        assert!(matches!(b, Err(SubmitError::Recording(_))), "{b:?}");
        // Only the declaration is in the log, and the pool was reloaded from it.
        assert_eq!(store.inner.len(), 1);
        assert_eq!(ledger.metrics().pipeline_redone_batches.get(), 1);
        let retried_b = ledger.submit(reserve(&pool, "b")).await;
        let retried_a = ledger.submit(reserve(&pool, "a")).await;
        assert!(!retried_b.as_ref().unwrap().replayed);
        assert!(!retried_a.as_ref().unwrap().replayed);
        assert_ne!(reserved_seq(&retried_a), reserved_seq(&retried_b));
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, 2);
        assert_eq!(store.inner.len(), 3);
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_ack_is_not_answered_for_the_batch_behind_it_and_retries_replay() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let (a, b) = two_pipelined(
            &store,
            &ledger,
            reserve(&pool, "a"),
            reserve(&pool, "b"),
            Fate::AckLost,
        )
        .await;
        assert!(matches!(a, Err(SubmitError::Recording(_))), "{a:?}");
        // Its append landed on top of the first, but it is answered only as the first is.
        assert!(matches!(b, Err(SubmitError::Recording(_))), "{b:?}");
        assert_eq!(store.inner.len(), 3);
        // Both landed: retries replay the recorded outcomes, nothing is applied twice, and the
        // projections caught up with events nobody was told about.
        let retried_a = ledger.submit(reserve(&pool, "a")).await.unwrap();
        let retried_b = ledger.submit(reserve(&pool, "b")).await.unwrap();
        assert!(retried_a.replayed && retried_b.replayed);
        assert_eq!(store.inner.len(), 3);
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, 2);
        // The reloaded pool appends after both.
        let c = ledger.submit(reserve(&pool, "c")).await.unwrap();
        assert!(!c.replayed);
        assert_eq!(store.inner.len(), 4);
        ledger.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_decides_the_pipelined_batches_again_in_order() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let (a, b) = two_pipelined(
            &store,
            &ledger,
            reserve(&pool, "a"),
            reserve(&pool, "b"),
            Fate::Conflict,
        )
        .await;
        let (a, b) = (reserved_seq(&a), reserved_seq(&b));
        assert!(a < b, "decided again in their original order: {a} then {b}");
        assert_eq!(store.inner.len(), 3);
        assert_eq!(ledger.metrics().version_conflicts.get(), 1);
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, 2);
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
        assert!(matches!(retry, Err(SubmitError::Recording(_))), "{retry:?}");
        assert_eq!(store.inner.len(), 1);
        ledger.close().await;
    }

    type Submission = Pin<Box<dyn Future<Output = Result<Reply, SubmitError>> + Send>>;

    /// Submits `command` and polls it once, so that when this returns the command is in its pool
    /// task's queue (or already answered). The rest of the submission is the returned future.
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

    async fn open_ledger(store: Arc<GatedStore>) -> Ledger {
        Ledger::open(
            store,
            Arc::new(ManualClock::new(START)),
            Arc::new(Projections::new()),
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap()
    }

    fn declare(pool: &PoolId, token: &str, capacity: u64) -> Command {
        let action = Action::DeclarePool {
            capacity,
            closes_at: None,
            units: vec![],
            idempotency_window_ms: 600_000,
        };
        command(pool, "admin", token, action)
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

    /// The deterministic form of the racing-declaration test. The read gate holds the first task
    /// of an undeclared pool in `load_pool`, after it took its first batch (one reserve) and
    /// before it knows the pool is undeclared; while it is held, declarations (capacity 1, then
    /// 10) and reserves queue behind it, and the append gate closes. Released, the task finds
    /// the pool undeclared and retires. Once some task's declaration is held at the store, a
    /// second wave (a declaration of capacity 5 and reserves) is submitted, and the test waits
    /// until a second append of the pool is in flight before opening the gate.
    ///
    /// What fails if a second task decides on the pool while the first still does: before the
    /// fix, the retiring task removed its map entry, then decided the queued commands itself
    /// (declaring with capacity 1, its append held here), so the second wave started another
    /// task, which loaded the still empty stream and appended its own declaration expecting no
    /// stream, beside the first task's: the store sees two appends of the stream in flight that
    /// are not one chain, and `overlaps` is not empty. (With appends decided in order, the first
    /// of them lands and the other conflicts, so in this interleaving the outcome assertions
    /// below still hold; they are what a second writer's pipelined batch landing on the other's
    /// events would break.) With the fix every command reaches one task at a time, so the
    /// appends in flight always continue each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retiring_pool_task_hands_queued_commands_to_one_next_task() {
        let store = Arc::new(GatedStore::new());
        let ledger = open_ledger(store.clone()).await;
        for round in 0..20 {
            let pool = PoolId::new(format!("race{round}"));
            let stream = pool_stream(&pool);
            let (arrived, release_read) = store.hold_next_read(&stream);
            let first = enqueue(&ledger, reserve(&pool, "r0")).await;
            arrived.await.unwrap();
            // The pool's task took [r0] and is loading the pool: these queue behind it.
            store.close_gate();
            let mut sent = Vec::new();
            let mut submissions = Vec::new();
            for command in [
                declare(&pool, "declare-1", 1),
                reserve(&pool, "q1"),
                reserve(&pool, "q2"),
                declare(&pool, "declare-10", 10),
                reserve(&pool, "q3"),
                reserve(&pool, "q4"),
            ] {
                sent.push(command.clone());
                submissions.push(tokio::spawn(enqueue(&ledger, command).await));
            }
            release_read.send(()).unwrap();
            let r0 = first.await;
            assert!(
                matches!(r0, Err(SubmitError::Rejected(Rejection::NotKnown { .. }))),
                "round {round}: {r0:?}"
            );
            store
                .wait_until("a declaration's append is held", |s| {
                    s.in_flight(&stream) >= 1
                })
                .await;
            for command in [
                declare(&pool, "declare-5", 5),
                reserve(&pool, "w1"),
                reserve(&pool, "w2"),
            ] {
                sent.push(command.clone());
                submissions.push(tokio::spawn(enqueue(&ledger, command).await));
            }
            store
                .wait_until("a second append is held", |s| s.in_flight(&stream) >= 2)
                .await;
            store.open_gate();
            let answered: Vec<_> = sent.into_iter().zip(answers(submissions).await).collect();
            assert_eq!(store.overlaps(), Vec::<String>::new(), "round {round}");
            let winners: Vec<u64> = answered
                .iter()
                .filter_map(|(command, answer)| match (&command.action, answer) {
                    (
                        Action::DeclarePool { capacity, .. },
                        Ok(Reply {
                            outcome: Outcome::PoolDeclared { .. },
                            ..
                        }),
                    ) => Some(*capacity),
                    _ => None,
                })
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {answered:?}");
            let loaded = ledger.load_pool(&pool).await.expect("the stream folds");
            assert_eq!(loaded.capacity(), winners[0], "round {round}");
            assert!(loaded.allocated() <= loaded.capacity(), "round {round}");
            let reserved = answered
                .iter()
                .filter(|(_, answer)| {
                    matches!(
                        answer,
                        Ok(Reply {
                            outcome: Outcome::Reserved { .. },
                            ..
                        })
                    )
                })
                .count() as u64;
            assert_eq!(reserved, loaded.allocated(), "round {round}");
            assert_answers_match_stream(&store, &pool, &answered).await;
        }
        ledger.close().await;
    }

    /// Appends `count` reserves of another writer straight to the pool's stream, on what it
    /// holds now.
    async fn write_foreign(store: &GatedStore, ledger: &Ledger, pool: &PoolId, count: usize) {
        let mut state = ledger.load_pool(pool).await.unwrap();
        let base = state.events_applied();
        let mut events = Vec::new();
        for i in 0..count {
            let command = reserve(pool, &format!("foreign-{i}"));
            let Ok(Decision::Append(event)) = decide(&state, &command, START) else {
                panic!("a foreign reserve was not decided");
            };
            evolve(&mut state, &event).unwrap();
            events.push(event);
        }
        store
            .inner
            .append(&pool_stream(pool), expected_before(base), propose(&events))
            .await
            .unwrap();
    }

    /// A submission the test polls itself, keeping the answer if a peek found it.
    struct Watched {
        submission: Submission,
        answer: Option<Result<Reply, SubmitError>>,
    }

    impl Watched {
        /// Whether the answer is there, without waiting for it.
        fn peek(&mut self) -> bool {
            if self.answer.is_none() {
                let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
                if let std::task::Poll::Ready(answer) = self.submission.as_mut().poll(&mut cx) {
                    self.answer = Some(answer);
                }
            }
            self.answer.is_some()
        }
    }

    /// Batch N (reserve `a`) is held with `fate`; batch N+1 (reserve `b`, decided on top of it)
    /// waits at the closed gate; `foreign` events of another writer land meanwhile. N is
    /// released and its append returns while N+1's is still pending, so `recover` must drain
    /// N+1 before it answers anything. Asserts that `b` was not answered while its append was
    /// pending (peeked once N's append returned, and again when N+1's passes the gate, before
    /// it is written), that the stream folds into what the projections hold, and that each
    /// answer is what the stream holds; returns the answers of `a` and `b`.
    async fn later_append_pending_in_recover(
        fate: Fate,
        foreign: usize,
    ) -> (
        Arc<GatedStore>,
        Ledger,
        PoolId,
        Vec<(Command, Result<Reply, SubmitError>)>,
    ) {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let stream = pool_stream(&pool);
        let release_a = store.hold_next(fate);
        store.close_gate();
        let (a, b) = (reserve(&pool, "a"), reserve(&pool, "b"));
        let first = tokio::spawn(enqueue(&ledger, a.clone()).await);
        store
            .wait_until("a's append is held", |s| s.in_flight(&stream) >= 1)
            .await;
        let second = Arc::new(StdMutex::new(Watched {
            submission: enqueue(&ledger, b.clone()).await,
            answer: None,
        }));
        store
            .wait_until("b's append is pipelined behind a's", |s| {
                s.in_flight(&stream) >= 2
            })
            .await;
        if foreign > 0 {
            write_foreign(&store, &ledger, &pool, foreign).await;
        }
        let answered_before_settled = Arc::new(AtomicBool::new(false));
        store.on_next_pass({
            let second = second.clone();
            let answered_before_settled = answered_before_settled.clone();
            move || {
                if second.lock().unwrap().peek() {
                    answered_before_settled.store(true, Ordering::SeqCst);
                }
            }
        });
        release_a.send(()).unwrap();
        store
            .wait_until("a's append returned", |s| s.in_flight(&stream) <= 1)
            .await;
        assert!(
            !second.lock().unwrap().peek(),
            "b answered while its append is still pending"
        );
        store.open_gate();
        let a_answer = first.await.unwrap();
        let b_answer = tokio::time::timeout(
            Duration::from_secs(30),
            std::future::poll_fn(|cx| {
                let mut second = second.lock().unwrap();
                match second.answer.take() {
                    Some(answer) => std::task::Poll::Ready(answer),
                    None => second.submission.as_mut().poll(cx),
                }
            }),
        )
        .await
        .expect("b got no answer");
        assert!(
            !answered_before_settled.load(Ordering::SeqCst),
            "b was answered before its append settled: {b_answer:?}"
        );
        let loaded = ledger.load_pool(&pool).await.expect("the stream folds");
        let count = ledger.projections().counts.get(&pool).unwrap();
        assert_eq!(count.allocated, loaded.allocated());
        drop(count);
        let answered = vec![(a, a_answer), (b, b_answer)];
        assert_answers_match_stream(&store, &pool, &answered).await;
        (store, ledger, pool, answered)
    }

    /// A failed append (nothing written) while the batch behind it is still pending: that batch
    /// is not answered from its decision (it would name a reservation that is not in the log)
    /// before its own append settled (here as a conflict), and both fail; the log holds only
    /// the declaration.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_append_drains_the_pending_batch_behind_it_before_answering() {
        let (store, ledger, _, answered) =
            later_append_pending_in_recover(Fate::NotWritten, 0).await;
        for (command, answer) in &answered {
            assert!(
                matches!(answer, Err(SubmitError::Recording(_))),
                "{}: {answer:?}",
                command.token.as_str()
            );
        }
        assert_eq!(store.inner.len(), 1);
        ledger.close().await;
    }

    /// A conflict on batch N while N+1 is pending, after another writer appended: with one
    /// foreign event N+1's append lands after all (on the other writer's event) and `b` is
    /// answered only then, as a replay of what landed, while `a` is decided again after it;
    /// with two, N+1 conflicts as well and both are decided again, in order. Either way each
    /// answer is what the log holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_drains_the_pending_batch_behind_it_before_deciding_again() {
        let (store, ledger, _, answered) = later_append_pending_in_recover(Fate::Conflict, 1).await;
        let [(_, a), (_, b)] = &answered[..] else {
            unreachable!()
        };
        assert!(!a.as_ref().unwrap().replayed, "{a:?}");
        assert!(b.as_ref().unwrap().replayed, "{b:?}");
        assert!(reserved_seq(b) < reserved_seq(a));
        // Declaration, the foreign reserve, b, and a decided again.
        assert_eq!(store.inner.len(), 4);
        ledger.close().await;

        let (store, ledger, _, answered) = later_append_pending_in_recover(Fate::Conflict, 2).await;
        let [(_, a), (_, b)] = &answered[..] else {
            unreachable!()
        };
        assert!(!a.as_ref().unwrap().replayed && !b.as_ref().unwrap().replayed);
        assert!(reserved_seq(a) < reserved_seq(b));
        assert_eq!(store.inner.len(), 5);
        ledger.close().await;
    }

    /// The pipeline depth: with every append held, one command is submitted and then more than
    /// three batches' worth, so the pool task could decide many batches. It keeps
    /// `PIPELINE_BATCHES_MAX` appends in flight (it does pipeline) and no more, leaving the rest
    /// queued; once the appends go through, every command is answered with what the log holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_pipeline_depth_of_appends_is_in_flight() {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let stream = pool_stream(&pool);
        store.close_gate();
        let mut sent = vec![reserve(&pool, "c0")];
        let mut submissions = vec![tokio::spawn(enqueue(&ledger, sent[0].clone()).await)];
        store
            .wait_until("the first append is held", |s| s.in_flight(&stream) >= 1)
            .await;
        let more = 3 * BATCH_COMMANDS_MAX + 8;
        for i in 1..=more {
            let command = reserve(&pool, &format!("c{i}"));
            sent.push(command.clone());
            submissions.push(tokio::spawn(enqueue(&ledger, command).await));
        }
        store
            .wait_until("the pipeline is full", |s| {
                s.in_flight(&stream) >= PIPELINE_BATCHES_MAX
            })
            .await;
        // At most 1 + 3 * BATCH_COMMANDS_MAX commands fit in the appends in flight.
        let queued = POOL_QUEUE_MAX - ledger.shared.pools.get(&pool).unwrap().capacity();
        assert!(queued >= 8, "only {queued} commands left queued");
        assert_eq!(store.max_in_flight(&stream), PIPELINE_BATCHES_MAX);
        store.open_gate();
        let answered: Vec<_> = sent.into_iter().zip(answers(submissions).await).collect();
        assert_eq!(store.max_in_flight(&stream), PIPELINE_BATCHES_MAX);
        for (command, answer) in &answered {
            assert!(answer.is_ok(), "{}: {answer:?}", command.token.as_str());
        }
        assert_eq!(store.inner.len(), 1 + answered.len());
        assert_answers_match_stream(&store, &pool, &answered).await;
        assert_eq!(store.overlaps(), Vec::<String>::new());
        ledger.close().await;
    }

    /// `close` while a full pipeline of appends is held (the first with `first_fate`) and two
    /// more commands are queued: `close` is polled once (it stops accepting and drops the
    /// pools' queues) before the appends are released. A command submitted then is turned away;
    /// every other one is answered, and each outcome answered as decided is in the log.
    async fn close_with_batches_in_flight(first_fate: Option<Fate>) -> Arc<GatedStore> {
        let store = Arc::new(GatedStore::new());
        let (ledger, pool) = ledger_with_pool(store.clone()).await;
        let stream = pool_stream(&pool);
        let release_first = first_fate.map(|fate| store.hold_next(fate));
        store.close_gate();
        let mut sent = Vec::new();
        let mut submissions = Vec::new();
        for i in 0..PIPELINE_BATCHES_MAX + 2 {
            let command = reserve(&pool, &format!("c{i}"));
            sent.push(command.clone());
            submissions.push(tokio::spawn(enqueue(&ledger, command).await));
            if i < PIPELINE_BATCHES_MAX {
                store
                    .wait_until("one more append is held", |s| s.in_flight(&stream) > i)
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
        let appended = store.appends();
        assert!(ledger.submit(reserve(&pool, "later")).await == Err(SubmitError::ShuttingDown));
        assert_eq!(store.appends(), appended);
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_answers_every_command_with_what_the_log_holds() {
        // Everything in flight lands: the four held batches and the two queued commands.
        let store = close_with_batches_in_flight(None).await;
        assert_eq!(store.inner.len(), 1 + PIPELINE_BATCHES_MAX + 2);
        // The first append fails: the three behind it fail with it, the queued two are decided
        // on the reloaded pool.
        let store = close_with_batches_in_flight(Some(Fate::NotWritten)).await;
        assert_eq!(store.inner.len(), 1 + 2);
        // The first append lands but its acknowledgement is lost: the three behind it land on
        // it and are still answered as failures (retries replay), nothing is answered as shut
        // down that landed, and the queued two are decided after them.
        let store = close_with_batches_in_flight(Some(Fate::AckLost)).await;
        assert_eq!(store.inner.len(), 1 + PIPELINE_BATCHES_MAX + 2);
    }
}

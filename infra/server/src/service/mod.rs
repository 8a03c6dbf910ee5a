//! The service: the command path and the state it keeps live.
//!
//! Owns: the shards that serialize each pool's commands in waves ([`shard`]), the start-up
//! replay, the store follower and projection catch-up through one paged reader
//! ([`replay_tail`]), appends to the actors stream ([`actors`]), the expiry sweeper
//! ([`sweeper`]) and the projections checkpoint file ([`checkpoint`]).
//! Must not: decide anything itself (every decision is `allot_domain::decide`), speak HTTP, or
//! import the tools or the CLI.
//!
//! Pools are spread over a few shard tasks; each shard serializes its pools' commands in waves.
//! A wave takes what is queued, decides each pool's commands back to back against that pool's
//! aggregate, and hands the wave's appends (one per pool with events, with the pool's expected
//! version) to the store together. Replies are sent only after the append is durable, so
//! nothing is acknowledged that could be lost. The next wave is decided only once the last one
//! settled, so a pool's state is always exactly what its stream holds.
//!
//! On a version conflict (another instance wrote) the pool is reloaded and its commands decided
//! again, one append at a time; on any other store failure the pool's commands fail and the
//! pool is reloaded before its next command (tokens whose events landed replay on retry).
//! Other pools of the wave are not affected by either.
//!
//! Why shards and not a task per pool: with many quiet pools (one command per pool per wave)
//! a task per pool paid its wakes and its own store request and answer per command; a wave pays
//! them once for all its pools (the `uniform` benchmark in BENCHMARKS.md). The cost: pools of
//! one shard share its queue ([`SHARD_QUEUE_MAX`]) and wait for each other's loads and
//! conflict retries.

pub mod actors;
pub mod checkpoint;
pub mod replay_tail;
mod shard;
pub mod sweeper;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use allot_domain::{Command, EvolveError, Outcome, Pool, PoolId, Rejection};
use allot_projections::Projections;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::identity::ActorDirectory;
use crate::metrics::Metrics;
use crate::store::{EventStore, SealedBatch, StoreError};

/// Commands one wave of a shard takes (so one pool's append carries at most this many events).
pub const WAVE_COMMANDS_MAX: usize = 1024;
/// Commands queued per shard before new ones are refused as overloaded.
pub const SHARD_QUEUE_MAX: usize = 16 * 1024;
/// Times a pool's commands are decided again after version conflicts before giving up.
pub const CONFLICT_RETRIES_MAX: usize = 16;

/// Shard tasks: one per worker of the runtime (more only split waves into smaller ones). Taken
/// from the runtime, not the machine, so a single-threaded runtime (the simulator) has one
/// shard whatever machine it runs on, and its interleavings stay a function of its seed.
fn shard_count() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1)
}

/// What a submitted command got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    /// The outcome was recorded earlier for this token and is answered again.
    pub replayed: bool,
    /// Where the command's event landed, when it was recorded now on a store that seals its
    /// group commits (what a receipt is made of); `None` for a replay, an unrecorded rejection,
    /// a store that seals nothing, or a service whose receipts are not enabled
    /// ([`Service::enable_receipts`]).
    pub recorded: Option<Box<RecordedAt>>,
}

/// A command's event as the store recorded it, and the sealed batch that made it durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAt {
    pub position: u64,
    pub stream: Arc<str>,
    pub version: u64,
    pub id: [u8; 16],
    pub kind: &'static str,
    pub payload: Vec<u8>,
    pub batch: Arc<SealedBatch>,
}

/// Why a command got no recorded outcome.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A rejection that is not cached: malformed request, unknown pool, token collision.
    /// Nothing changed.
    #[error(transparent)]
    Rejected(Rejection),
    /// The outcome could not be recorded; [`RecordingFailure::maybe_written`] says whether it
    /// may have been anyway. A retry with the same token is always safe.
    #[error("recording-failure: {0}")]
    Recording(RecordingFailure),
    /// The queue of the pool's shard is full. Nothing changed.
    #[error("pool {0} is overloaded; retry later")]
    Overloaded(PoolId),
    /// The service is shutting down. Nothing changed.
    #[error("service is shutting down")]
    ShuttingDown,
}

/// Why an outcome could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingFailure {
    /// The store failed the append, or a read the command needed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The pool's stream could not be loaded.
    #[error(transparent)]
    Load(Arc<LoadError>),
    /// The domain decided an event its own evolve refuses (a bug); nothing was written.
    #[error("decided event does not apply: {0}")]
    Inconsistent(EvolveError),
    /// The command's wave failed (a bug) or the runtime stopped before it was answered.
    #[error("the command's outcome is unknown (its shard failed); retry with the same token")]
    OutcomeUnknown,
    /// Other instances kept appending to the actors stream.
    #[error("the actors stream kept moving; try again")]
    ActorsContended,
}

impl RecordingFailure {
    /// Whether the outcome may have been recorded although nobody was told.
    pub fn maybe_written(&self) -> bool {
        match self {
            RecordingFailure::Store(error) => error.maybe_written(),
            RecordingFailure::OutcomeUnknown => true,
            RecordingFailure::Load(_)
            | RecordingFailure::Inconsistent(_)
            | RecordingFailure::ActorsContended => false,
        }
    }
}

impl From<StoreError> for RecordingFailure {
    fn from(error: StoreError) -> Self {
        RecordingFailure::Store(Arc::new(error))
    }
}

impl From<LoadError> for RecordingFailure {
    fn from(error: LoadError) -> Self {
        RecordingFailure::Load(Arc::new(error))
    }
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

/// The answer of a queued command ([`Service::enqueue`]): resolves once it is decided and, if it
/// recorded an event, durable.
#[derive(Debug)]
pub struct Queued {
    answer: oneshot::Receiver<Result<Reply, SubmitError>>,
}

impl std::future::Future for Queued {
    type Output = Result<Reply, SubmitError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Unanswered only if its wave panicked (a bug) or the runtime is shutting down: the
        // outcome may have been recorded, and a retry with the same token tells.
        std::pin::Pin::new(&mut self.answer).poll(cx).map(|answer| {
            answer.unwrap_or(Err(SubmitError::Recording(
                RecordingFailure::OutcomeUnknown,
            )))
        })
    }
}

/// A command waiting in its shard's queue, with where its answer goes.
struct PendingCommand {
    command: Command,
    /// Whether the reply should say where the event landed (for a receipt).
    wants_receipt: bool,
    reply: oneshot::Sender<Result<Reply, SubmitError>>,
}

/// What the shards, the follower and the handles share.
struct ServiceState {
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
    /// Whether replies carry where their event landed (what a receipt is made of): set by
    /// whoever presents receipts (the HTTP server, when it has a server key), so in-process
    /// callers that never do pay nothing for them.
    receipts: AtomicBool,
    /// Shard tasks, awaited on close so every queued command is answered first.
    tasks: std::sync::Mutex<JoinSet<()>>,
    /// The task following a shared store, if any; aborted on close.
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The shards' queues; a pool's shard is fixed by its id's hash.
struct ShardQueues {
    senders: Vec<mpsc::Sender<PendingCommand>>,
    shard_of: foldhash::fast::FixedState,
}

/// The command path over one store. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    state: Arc<ServiceState>,
    /// Held by `Service` handles only (the shard tasks hold [`ServiceState`]): once the last
    /// one is dropped without `close`, the queues close and the shards end after answering
    /// what is in them, letting go of the store.
    queues: Arc<ShardQueues>,
}

impl Service {
    /// Has each recorded reply carry where its event landed, for receipts (see
    /// [`Reply::recorded`]). Off by default.
    pub fn enable_receipts(&self) {
        self.state
            .receipts
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("shards", &self.queues.senders.len())
            .finish()
    }
}

impl Service {
    /// Opens the command path over `store`: loads actors and folds every pool event into the
    /// projections (or only the tail after `projections`' checkpoint position).
    pub async fn open(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        projections: Arc<Projections>,
        metrics: Arc<Metrics>,
    ) -> Result<Service, LoadError> {
        let actors = Arc::new(ActorDirectory::default());
        replay_tail::load_actors(store.as_ref(), &actors).await?;
        replay_tail::fold_pools(store.as_ref(), &projections).await?;
        let shard_count = shard_count();
        let mut queues = Vec::with_capacity(shard_count);
        let mut senders = Vec::with_capacity(shard_count);
        for _ in 0..shard_count {
            let (sender, queue) = mpsc::channel(SHARD_QUEUE_MAX);
            senders.push(sender);
            queues.push(queue);
        }
        let (closing, _) = watch::channel(false);
        let service = Service {
            state: Arc::new(ServiceState {
                store,
                clock,
                projections,
                actors,
                metrics,
                closing,
                actor_appends: Mutex::new(()),
                holds_placed: Notify::new(),
                accepting: AtomicBool::new(true),
                receipts: AtomicBool::new(false),
                tasks: std::sync::Mutex::new(JoinSet::new()),
                follower: std::sync::Mutex::new(None),
            }),
            queues: Arc::new(ShardQueues {
                senders,
                shard_of: foldhash::fast::FixedState::default(),
            }),
        };
        {
            let mut tasks = service
                .state
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for queue in queues {
                let shard = service.state.clone();
                let closing = service.state.closing.subscribe();
                tasks.spawn(async move { shard.run_shard(queue, closing).await });
            }
        }
        Ok(service)
    }

    pub fn projections(&self) -> &Arc<Projections> {
        &self.state.projections
    }

    pub fn actors(&self) -> &Arc<ActorDirectory> {
        &self.state.actors
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.state.clock
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.state.store
    }

    /// Resolves when a hold has been placed since the last call (for the sweeper).
    pub async fn hold_placed(&self) {
        self.state.holds_placed.notified().await;
    }

    /// Stops accepting new commands; queued ones are still decided and answered.
    pub fn stop_accepting(&self) {
        self.state.accepting.store(false, Ordering::SeqCst);
    }

    /// Stops accepting commands, answers every queued one, and waits for the shard tasks to end
    /// (they hold the store; after this the store can be closed).
    pub async fn close(&self) {
        self.stop_accepting();
        let follower = self
            .state
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(follower) = follower {
            follower.abort();
        }
        // Each shard closes its queue, answers what is in it, and ends.
        self.state.closing.send_replace(true);
        let mut tasks = {
            let mut guard = self
                .state
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
        self.submit_with(command, true).await
    }

    /// As [`Service::submit`]; the reply says where its event landed only if `wants_receipt`
    /// (and receipts are enabled).
    pub async fn submit_with(
        &self,
        command: Command,
        wants_receipt: bool,
    ) -> Result<Reply, SubmitError> {
        self.enqueue(command, wants_receipt)?.await
    }

    /// Queues `command` on its pool's shard now, in the caller's order (commands of one pool
    /// queued one after the other are decided in that order), and returns its answer to await.
    /// Refused at once if the service is closing, the command is malformed or the shard's
    /// queue is full.
    pub fn enqueue(&self, command: Command, wants_receipt: bool) -> Result<Queued, SubmitError> {
        if !self.state.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        // Malformed commands never reach a shard.
        command.validate().map_err(SubmitError::Rejected)?;
        let shards = &self.queues.senders;
        let shard = self.queues.shard_of.hash_one(&command.pool) as usize % shards.len();
        let (reply, answer) = oneshot::channel();
        match shards[shard].try_send(PendingCommand {
            command,
            wants_receipt,
            reply,
        }) {
            Ok(()) => Ok(Queued { answer }),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                Err(SubmitError::Overloaded(pending.command.pool))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    /// Loads a pool aggregate from its stream.
    pub async fn load_pool(&self, pool: &PoolId) -> Result<Pool, LoadError> {
        replay_tail::load_pool(self.state.store.as_ref(), pool).await
    }
}

#[cfg(test)]
mod tests;

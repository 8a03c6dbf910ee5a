//! A shard's waves: take what is queued, decide each pool's commands back to back against its
//! aggregate, append the wave's events in one store call, answer once durable (see the
//! [`super`] doc for why).
//! Must not: answer a command before its events are durable, or keep a pool's aggregate after
//! an append of it failed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use allot_domain::streams::{event_id, pool_stream};
use allot_domain::{
    Change, Decision, Event, EvolveError, Pool, PoolId, Timestamp, codec, decide, evolve,
};
use futures::FutureExt as _;
use tokio::sync::{mpsc, watch};

use super::replay_tail::load_pool;
use super::{
    CONFLICT_RETRIES_MAX, PendingCommand, RecordedAt, RecordingFailure, Reply, ServiceState,
    SubmitError, WAVE_COMMANDS_MAX,
};
use crate::store::{
    AppendOutcome, ExpectedVersion, ProposedEvent, SealedBatch, StoreError, WaveAppend,
};

type PoolMap = HashMap<PoolId, Pool, foldhash::fast::RandomState>;

impl ServiceState {
    /// A shard: waves of its queue until close, then the rest of the queue.
    pub(super) async fn run_shard(
        &self,
        mut queue: mpsc::Receiver<PendingCommand>,
        mut closing: watch::Receiver<bool>,
    ) {
        // The aggregates of the shard's pools, as their streams hold them. A pool is loaded
        // at its first command and dropped after a failed append (reloaded at its next).
        let mut pools: PoolMap = HashMap::default();
        let mut closed = false;
        loop {
            let first = tokio::select! {
                biased;
                pending = queue.recv() => match pending {
                    Some(pending) => pending,
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
                    Ok(pending) => wave.push(pending),
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
    async fn decide_wave(&self, pools: &mut PoolMap, batches: Vec<(PoolId, Vec<PendingCommand>)>) {
        let now = self.clock.now();
        let mut decided = Vec::with_capacity(batches.len());
        let mut appends = Vec::with_capacity(batches.len());
        for (pool_id, batch) in batches {
            let pool = match pools.entry(pool_id.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match load_pool(self.store.as_ref(), &pool_id).await {
                    Ok(pool) => entry.insert(pool),
                    Err(error) => {
                        tracing::error!(pool = %pool_id, %error, "cannot load pool");
                        fail_all(batch, &SubmitError::Recording(error.into()));
                        continue;
                    }
                },
            };
            let mut batch = match decide_commands(pool, batch, now) {
                Ok(batch) => batch,
                Err(inconsistent) => {
                    inconsistent.fail(&pool_id);
                    pools.remove(&pool_id);
                    continue;
                }
            };
            if !pool.is_declared() {
                // Commands to a pool nobody declared keep nothing in memory.
                pools.remove(&pool_id);
            }
            if batch.events.is_empty() {
                send_replies(batch.commands, batch.replies);
                continue;
            }
            self.metrics
                .append_batch_events
                .observe(batch.events.len() as f64);
            let proposed = propose(&batch.events);
            batch.for_receipts = self.kept_for_receipts(&batch.commands, &proposed);
            appends.push(WaveAppend {
                stream: pool_stream(&pool_id),
                expected: ExpectedVersion::from_next(batch.base_version),
                events: proposed,
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
        pools: &mut PoolMap,
    ) {
        let mut commands = batch.commands;
        let mut attempt = 1;
        while matches!(error, StoreError::WrongExpectedVersion { .. })
            && attempt < CONFLICT_RETRIES_MAX
        {
            attempt += 1;
            self.metrics.version_conflicts.inc();
            tracing::debug!(pool = %pool_id, attempt, "version conflict; reloading");
            let mut pool = match load_pool(self.store.as_ref(), pool_id).await {
                Ok(pool) => pool,
                Err(error) => {
                    fail_all(commands, &SubmitError::Recording(error.into()));
                    return;
                }
            };
            // Events another writer appended must reach the projections too.
            self.catch_up_projections(pool_id).await;
            let mut decided = match decide_commands(&mut pool, commands, self.clock.now()) {
                Ok(decided) => decided,
                Err(inconsistent) => return inconsistent.fail(pool_id),
            };
            let retried = if decided.events.is_empty() {
                send_replies(decided.commands, decided.replies);
                Ok(())
            } else {
                let expected = ExpectedVersion::from_next(decided.base_version);
                let proposed = propose(&decided.events);
                decided.for_receipts = self.kept_for_receipts(&decided.commands, &proposed);
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
                    Err(next) => Err((next, decided.commands)),
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
                    commands = returned;
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
        fail_all(commands, &SubmitError::Recording(error.into()));
        if landed {
            // Events that landed must reach the projections even though nobody was told; a
            // retry of their tokens replays them.
            self.catch_up_projections(pool_id).await;
        }
    }

    /// A batch's append is durable: feed the projections, then answer its commands.
    async fn record_appended(&self, pool_id: &PoolId, decided: Decided, appended: AppendOutcome) {
        let Decided {
            commands,
            mut replies,
            events,
            base_version,
            for_receipts,
        } = decided;
        if let Some(batch) = &appended.sealed {
            let recorded = Appended {
                pool_id,
                events: &events,
                base_version,
                last_position: appended.last_position,
                batch,
            };
            recorded.attach(&mut replies, for_receipts);
        }
        let placed_hold = events
            .iter()
            .any(|event| matches!(event.change, Change::Reserved { .. }));
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
        send_replies(commands, replies);
    }
}

/// A pool's append as a sealing store made it durable.
struct Appended<'a> {
    pool_id: &'a PoolId,
    events: &'a [Event],
    base_version: u64,
    last_position: u64,
    batch: &'a Arc<SealedBatch>,
}

impl Appended<'_> {
    /// Tells each reply whose command appended an event where that event landed. Replies that
    /// are neither replays nor refusals appended one event each, in order; the append's events
    /// are contiguous in position (a sealing store numbers them so), ending at `last_position`.
    /// `for_receipts` holds each event's id and stored bytes (empty: nothing to attach).
    fn attach(
        &self,
        replies: &mut [Result<Reply, SubmitError>],
        for_receipts: Vec<([u8; 16], Vec<u8>)>,
    ) {
        if for_receipts.len() != self.events.len() {
            return;
        }
        let first_position = self
            .last_position
            .saturating_sub(self.events.len().saturating_sub(1) as u64);
        let stream: Arc<str> = Arc::from(pool_stream(self.pool_id));
        let appending = replies
            .iter_mut()
            .filter_map(|reply| reply.as_mut().ok())
            .filter(|reply| !reply.replayed);
        let events = self.events.iter().zip(for_receipts).enumerate();
        for ((i, (event, (id, payload))), reply) in events.zip(appending) {
            reply.recorded = Some(Box::new(RecordedAt {
                position: first_position + i as u64,
                stream: Arc::clone(&stream),
                version: self.base_version + i as u64,
                id,
                kind: event.kind_name(),
                payload,
                batch: Arc::clone(self.batch),
            }));
        }
    }
}

/// A batch decided against the pool's state, answered once its append (if any) is durable.
struct Decided {
    commands: Vec<PendingCommand>,
    /// One per command, in order.
    replies: Vec<Result<Reply, SubmitError>>,
    events: Vec<Event>,
    /// Version of the batch's first event: the pool's event count before the batch.
    base_version: u64,
    /// Each event's id and stored bytes, kept for its receipt on a store that seals its group
    /// commits; empty on the others.
    for_receipts: Vec<([u8; 16], Vec<u8>)>,
}

/// A wave's commands grouped by pool, each pool's in the order they came.
fn batches_by_pool(wave: Vec<PendingCommand>) -> Vec<(PoolId, Vec<PendingCommand>)> {
    let mut batches: Vec<(PoolId, Vec<PendingCommand>)> = Vec::new();
    let mut batch_of: HashMap<PoolId, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(wave.len(), Default::default());
    for pending in wave {
        match batch_of.entry(pending.command.pool.clone()) {
            Entry::Occupied(entry) => batches[*entry.get()].1.push(pending),
            Entry::Vacant(entry) => {
                entry.insert(batches.len());
                batches.push((pending.command.pool.clone(), vec![pending]));
            }
        }
    }
    batches
}

/// A batch whose decided event its own evolve refused (a domain bug): its commands, to be
/// failed, and why. The pool's aggregate took part of the batch and must be reloaded.
struct Inconsistent {
    batch: Vec<PendingCommand>,
    error: EvolveError,
}

impl Inconsistent {
    fn fail(self, pool_id: &PoolId) {
        tracing::error!(pool = %pool_id, error = %self.error, "decided event does not apply");
        fail_all(
            self.batch,
            &SubmitError::Recording(RecordingFailure::Inconsistent(self.error)),
        );
    }
}

/// Decides `batch` back to back against `pool`, evolving it.
fn decide_commands(
    pool: &mut Pool,
    batch: Vec<PendingCommand>,
    now: Timestamp,
) -> Result<Decided, Inconsistent> {
    let base_version = pool.events_applied();
    let mut events = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for pending in &batch {
        match decide(pool, &pending.command, now) {
            Ok(Decision::Append(event)) => {
                if let Err(error) = evolve(pool, &event) {
                    return Err(Inconsistent { batch, error });
                }
                replies.push(Ok(Reply {
                    outcome: event.outcome(),
                    replayed: false,
                    recorded: None,
                }));
                events.push(event);
            }
            Ok(Decision::Replay(outcome)) => replies.push(Ok(Reply {
                outcome,
                replayed: true,
                recorded: None,
            })),
            Err(rejection) => replies.push(Err(SubmitError::Rejected(rejection))),
        }
    }
    Ok(Decided {
        commands: batch,
        replies,
        events,
        base_version,
        for_receipts: Vec::new(),
    })
}

impl ServiceState {
    /// What a receipt needs of each proposed event that the store does not give back: its id
    /// and stored bytes. Kept only on a store that seals its group commits, when a command of
    /// the append asked for a receipt.
    fn kept_for_receipts(
        &self,
        commands: &[PendingCommand],
        proposed: &[ProposedEvent],
    ) -> Vec<([u8; 16], Vec<u8>)> {
        if !self.store.seals_group_commits()
            || !self.receipts.load(std::sync::atomic::Ordering::Relaxed)
            || !commands.iter().any(|command| command.wants_receipt)
        {
            return Vec::new();
        }
        proposed
            .iter()
            .map(|event| (event.id, event.payload.clone()))
            .collect()
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

fn fail_all(batch: Vec<PendingCommand>, error: &SubmitError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

fn send_replies(batch: Vec<PendingCommand>, replies: Vec<Result<Reply, SubmitError>>) {
    for (pending, reply) in batch.into_iter().zip(replies) {
        // The caller may have gone away (timeout, disconnect); the outcome is recorded anyway.
        let _ = pending.reply.send(reply);
    }
}

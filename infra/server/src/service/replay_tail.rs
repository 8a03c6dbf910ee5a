//! The log's tail into live state: start-up, the follower of a shared store, and the catch-up
//! of a pool's projections all read through one paged reader ([`for_each_in_stream`],
//! [`for_each_after`]) and decode through [`decode_pool`] and [`decode_actor`].
//! Must not: decide or append anything.

use std::sync::atomic::Ordering;

use allot_domain::streams::{ACTORS_STREAM, pool_stream, stream_pool};
use allot_domain::{ActorEvent, Change, Event, Pool, PoolId, codec, evolve};
use allot_projections::{Applied, Projections};

use super::{LoadError, Service, ServiceState};
use crate::identity::ActorDirectory;
use crate::store::{EventStore, RecordedEvent, StoreError};

/// Events read per page.
pub const READ_PAGE_EVENTS: usize = 4096;

/// Calls `apply` with every event of `stream` from version `from` on, a page at a time.
pub async fn for_each_in_stream<E: From<StoreError>>(
    store: &dyn EventStore,
    stream: &str,
    mut from: u64,
    mut apply: impl FnMut(&RecordedEvent) -> Result<(), E>,
) -> Result<(), E> {
    loop {
        let page = store.read_stream(stream, from, READ_PAGE_EVENTS).await?;
        for recorded in &page {
            apply(recorded)?;
        }
        if page.len() < READ_PAGE_EVENTS {
            return Ok(());
        }
        from += page.len() as u64;
    }
}

/// Calls `apply` with every event of the log after global position `after`, a page at a time.
pub async fn for_each_after<E: From<StoreError>>(
    store: &dyn EventStore,
    mut after: Option<u64>,
    mut apply: impl FnMut(&RecordedEvent) -> Result<(), E>,
) -> Result<(), E> {
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS).await?;
        for recorded in &page {
            after = Some(recorded.position);
            apply(recorded)?;
        }
        if page.len() < READ_PAGE_EVENTS {
            return Ok(());
        }
    }
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

/// Folds the actors stream from the directory's next version on.
pub async fn load_actors(store: &dyn EventStore, actors: &ActorDirectory) -> Result<(), LoadError> {
    for_each_in_stream(store, ACTORS_STREAM, actors.next_version(), |recorded| {
        actors.apply(recorded.version, &decode_actor(recorded)?);
        Ok(())
    })
    .await
}

/// Folds every pool event after the projections' checkpoint position into them.
pub async fn fold_pools(
    store: &dyn EventStore,
    projections: &Projections,
) -> Result<(), LoadError> {
    for_each_after(store, projections.last_position(), |recorded| {
        if stream_pool(&recorded.stream).is_some() {
            let event = decode_pool(recorded)?;
            projections.apply(recorded.version, recorded.position, &event);
        }
        Ok(())
    })
    .await
}

/// Loads a pool aggregate from its stream.
pub async fn load_pool(store: &dyn EventStore, pool: &PoolId) -> Result<Pool, LoadError> {
    let stream = pool_stream(pool);
    let mut state = Pool::default();
    for_each_in_stream(store, &stream, 0, |recorded| {
        let event = decode_pool(recorded)?;
        evolve(&mut state, &event).map_err(|error| LoadError::Fold {
            stream: stream.clone(),
            version: recorded.version,
            reason: error.to_string(),
        })
    })
    .await?;
    Ok(state)
}

impl ServiceState {
    /// Applies events of `pool` that the projections have not seen (written by another
    /// instance, or by an append whose acknowledgement was lost).
    pub(super) async fn catch_up_projections(&self, pool: &PoolId) {
        let from = self.projections.next_version(pool);
        let caught_up =
            for_each_in_stream(self.store.as_ref(), &pool_stream(pool), from, |recorded| {
                let event = decode_pool(recorded)?;
                self.projections
                    .apply(recorded.version, recorded.position, &event);
                Ok::<(), LoadError>(())
            })
            .await;
        if let Err(error) = caught_up {
            tracing::warn!(pool = %pool, %error, "cannot catch up projections");
        }
    }
}

impl Service {
    /// Follows the store from its current end so writes of other instances reach this one's
    /// projections and actor keys (a revocation anywhere holds everywhere at once). Only needed
    /// when the store is shared; ends when the subscription fails for good or on `close`.
    pub async fn follow_store(&self) -> Result<(), StoreError> {
        let after = self.state.projections.last_position();
        let mut feed = self.state.store.subscribe_all(after).await?;
        let state = self.state.clone();
        let follower = tokio::spawn(async move {
            use futures::StreamExt;
            while state.accepting.load(Ordering::SeqCst) {
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
                            state.actors.apply(recorded.version, &event);
                        }
                        Err(error) => tracing::error!(%error, "cannot decode actor event"),
                    }
                } else if let Some(pool) = stream_pool(&recorded.stream) {
                    match decode_pool(&recorded) {
                        Ok(event) => {
                            let applied = state.projections.apply(
                                recorded.version,
                                recorded.position,
                                &event,
                            );
                            if matches!(applied, Applied::Gap { .. }) {
                                state.catch_up_projections(&pool).await;
                            }
                            if matches!(event.change, Change::Reserved { .. }) {
                                state.holds_placed.notify_one();
                            }
                        }
                        Err(error) => tracing::error!(%error, "cannot decode pool event"),
                    }
                }
            }
        });
        let previous = self
            .state
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(follower);
        if let Some(previous) = previous {
            previous.abort();
        }
        Ok(())
    }
}

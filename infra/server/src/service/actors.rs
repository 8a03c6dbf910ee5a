//! Appends to the actors stream: registrations and revocations, idempotent per admin token.
//! Must not: check credentials (the HTTP layer does) or touch pool streams.

use allot_domain::streams::{ACTORS_STREAM, actor_event_id};
use allot_domain::{ActorEvent, Rejection, codec};

use super::replay_tail::load_actors;
use super::{CONFLICT_RETRIES_MAX, RecordingFailure, Service, SubmitError};
use crate::store::{ExpectedVersion, ProposedEvent, StoreError};

impl Service {
    /// Appends an actor registration or revocation and applies it to the directory, unless the
    /// admin's token was already used within its window: the same change replays (returns
    /// `Ok(true)`, nothing appended), another change is `token-collision`.
    pub async fn record_actor_event(&self, event: ActorEvent) -> Result<bool, SubmitError> {
        let state = &self.state;
        let _serialized = state.actor_appends.lock().await;
        for _ in 0..CONFLICT_RETRIES_MAX {
            // Checked under the lock, after folding other instances' events, so two identical
            // requests cannot both append.
            if let Some(record) = state.actors.token(&event.by, &event.token, event.at) {
                if record.actor == event.actor && record.change == event.change {
                    return Ok(true);
                }
                return Err(SubmitError::Rejected(Rejection::TokenCollision {
                    recorded_action: record.change.action_name().to_owned(),
                }));
            }
            // The directory's version is the truth: a follower may have applied another
            // instance's registration.
            let expected = ExpectedVersion::from_next(state.actors.next_version());
            let proposed = ProposedEvent {
                id: actor_event_id(&event),
                kind: "Actor".to_owned(),
                payload: codec::encode_actor_event(&event),
            };
            match state
                .store
                .append(ACTORS_STREAM, expected, vec![proposed])
                .await
            {
                Ok(appended) => {
                    state.actors.apply(appended.last_version, &event);
                    return Ok(false);
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Another instance registered an actor: fold what it wrote, then retry.
                    load_actors(state.store.as_ref(), &state.actors)
                        .await
                        .map_err(|error| SubmitError::Recording(error.into()))?;
                }
                Err(error) => return Err(SubmitError::Recording(error.into())),
            }
        }
        Err(SubmitError::Recording(RecordingFailure::ActorsContended))
    }
}

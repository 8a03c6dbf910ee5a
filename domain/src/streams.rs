//! Where events are recorded: stream names and event ids.
//!
//! The live path appends under these names and ids, and replay and the audit read the log by
//! them, so both take them from here. Pool events go to one stream per pool
//! (`pool-<pool id>`), actor events to the one [`ACTORS_STREAM`].
//!
//! Event ids are deterministic: a UUID (RFC 9562 version 8) derived from a domain tag, the
//! event's pool or actor, its actor or admin, its idempotency token and its time. The same
//! decision always gets the same id, so a retried append is deduplicated by servers that
//! deduplicate by id. The tags and inputs are part of the stored log: changing them gives
//! recorded events new ids.

use crate::actor::ActorEvent;
use crate::event::Event;
use crate::ids::PoolId;

/// Name of the stream holding actor registrations and revocations.
pub const ACTORS_STREAM: &str = "actors";
/// What every pool stream's name starts with; the pool id follows.
pub const POOL_STREAM_PREFIX: &str = "pool-";

/// Domain tag of pool event ids.
const EVENT_ID_TAG: &[u8] = b"allot-event-id-v1\n";
/// Domain tag of actor event ids.
const ACTOR_EVENT_ID_TAG: &[u8] = b"allot-actor-event-id-v1\n";

/// The stream of a pool.
pub fn pool_stream(pool: &PoolId) -> String {
    format!("{POOL_STREAM_PREFIX}{pool}")
}

/// The pool a stream belongs to, if it is a pool stream.
pub fn stream_pool(stream: &str) -> Option<PoolId> {
    stream.strip_prefix(POOL_STREAM_PREFIX).map(PoolId::new)
}

/// A UUID (RFC 9562 version 8): blake3 over the tag, each part length-prefixed (u64 little
/// endian) so no two inputs share bytes, and the time (u64 little endian); the first 16 bytes
/// with the version and variant bits set.
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

/// A pool event's id, from its pool, actor, token and time.
pub fn event_id(event: &Event) -> [u8; 16] {
    let parts = [
        event.pool.as_str(),
        event.actor.as_str(),
        event.token.as_str(),
    ];
    derived_id(EVENT_ID_TAG, parts, event.at.0)
}

/// An actor event's id, from the actor changed, the admin who changed it, the token and time.
pub fn actor_event_id(event: &ActorEvent) -> [u8; 16] {
    let parts = [
        event.actor.as_str(),
        event.by.as_str(),
        event.token.as_str(),
    ];
    derived_id(ACTOR_EVENT_ID_TAG, parts, event.at.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::ActorChange;
    use crate::command::Action;
    use crate::event::Change;
    use crate::ids::{ActorId, Attestation, IdempotencyToken, ParamsDigest, Timestamp};

    fn attestation() -> Attestation {
        Attestation {
            signed_at: Timestamp(1),
            signature: vec![7; 64],
        }
    }

    fn pool_event() -> Event {
        Event {
            pool: PoolId::new("pool_vip"),
            at: Timestamp(1_767_225_600_000),
            actor: ActorId::new("shop"),
            attestation: attestation(),
            token: IdempotencyToken::new("t-1"),
            digest: ParamsDigest([0; 32]),
            action: Action::ClosePool,
            allocated_before: 0,
            allocated_after: 0,
            prior_state: None,
            new_state: None,
            change: Change::PoolClosed,
            on_behalf_of: crate::event::OnBehalfOf::Nobody,
            batch: None,
        }
    }

    fn actor_event() -> ActorEvent {
        ActorEvent {
            actor: ActorId::new("shop"),
            change: ActorChange::Revoked,
            by: ActorId::new("admin"),
            token: IdempotencyToken::new("t-1"),
            attestation: attestation(),
            at: Timestamp(1_767_225_600_000),
        }
    }

    #[test]
    fn a_pool_stream_names_its_pool() {
        let pool = PoolId::new("pool_vip");
        assert_eq!(pool_stream(&pool), "pool-pool_vip");
        assert_eq!(stream_pool(&pool_stream(&pool)), Some(pool));
        assert_eq!(stream_pool(ACTORS_STREAM), None);
    }

    /// Recorded events carry these ids: they must not change.
    #[test]
    fn event_ids_do_not_change() {
        assert_eq!(
            hex::encode(event_id(&pool_event())),
            "2a6b4fc384b08029bf297840f173f469"
        );
        assert_eq!(
            hex::encode(actor_event_id(&actor_event())),
            "60acf347702b8ce783da4fe92a6c3c5f"
        );
    }

    #[test]
    fn event_ids_depend_only_on_pool_actor_token_and_time() {
        let event = pool_event();
        let mut other = event.clone();
        other.allocated_after = 3;
        other.attestation.signed_at = Timestamp(9);
        assert_eq!(event_id(&event), event_id(&other));
        for change in [
            |e: &mut Event| e.pool = PoolId::new("pool_ga"),
            |e: &mut Event| e.actor = ActorId::new("admin"),
            |e: &mut Event| e.token = IdempotencyToken::new("t-2"),
            |e: &mut Event| e.at = Timestamp(e.at.0 + 1),
        ] {
            let mut changed = event.clone();
            change(&mut changed);
            assert_ne!(event_id(&event), event_id(&changed));
        }
        let actor = actor_event();
        let mut same_id = actor.clone();
        same_id.change = ActorChange::Registered {
            role: crate::actor::Role::Client,
            public_key: [1; 32],
        };
        assert_eq!(actor_event_id(&actor), actor_event_id(&same_id));
        assert_ne!(event_id(&event), actor_event_id(&actor));
    }
}

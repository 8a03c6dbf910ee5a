//! Actors: who may act, with which key and role, recorded as events in the `actors` stream.
//!
//! Keys are registered and revoked by admins; a revoked key stops working at once and stays on
//! record so auditors can verify what it signed before its revocation.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, Attestation, IdempotencyToken, Timestamp};

/// What an actor may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages pools and actors; may also act as a client, act on any reservation (a back
    /// office) and expire holds.
    Admin,
    /// Upstream services: reserve, and confirm or cancel their own reservations.
    Client,
    /// The expiry sweeper: expire only.
    Sweeper,
    /// Reads and audits; no state-changing action.
    Auditor,
    /// An `allot serve` instance's own key: signs the seals of its group commits (receipts,
    /// the head) and nothing else.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Sweeper => "sweeper",
            Role::Auditor => "auditor",
            Role::Server => "server",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to the actor registry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ActorChange {
    Registered { role: Role, public_key: [u8; 32] },
    Revoked,
}

impl ActorChange {
    /// The action's name, as signed (see `signing::actor_change_params`) and as a token
    /// collision names the action its token was first used for.
    pub fn action_name(&self) -> &'static str {
        match self {
            ActorChange::Registered { .. } => "register_actor",
            ActorChange::Revoked => "revoke_actor",
        }
    }
}

/// One event of the `actors` stream. `by` is the admin who made the change (the first admin and
/// sweeper are registered by the service itself at first start, `by` = themselves).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ActorEvent {
    pub actor: ActorId,
    pub change: ActorChange,
    pub by: ActorId,
    pub token: IdempotencyToken,
    pub attestation: Attestation,
    pub at: Timestamp,
}

/// An actor's key and role, and the interval in which the key was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorKey {
    pub role: Role,
    pub public_key: [u8; 32],
    pub registered_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl ActorKey {
    /// Whether a signature made at `at` was made while this key was valid.
    pub fn valid_at(&self, at: Timestamp) -> bool {
        at >= self.registered_at && self.revoked_at.is_none_or(|revoked| at < revoked)
    }
}

/// How long an actor change's token is remembered: a retry within it replays, a different
/// change under it is a collision. Far longer than the signature skew, so a captured request
/// can never be replayed into a second change.
pub const ACTOR_TOKEN_WINDOW_MS: u64 = 24 * 3_600_000;

/// The change an admin's token was recorded for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorTokenRecord {
    pub actor: ActorId,
    pub change: ActorChange,
    pub at: Timestamp,
}

/// The registry folded from the `actors` stream: every key each actor ever had, in order, and
/// the recent tokens of the admins who changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorRegistry {
    keys: HashMap<ActorId, Vec<ActorKey>>,
    tokens: HashMap<(ActorId, IdempotencyToken), ActorTokenRecord>,
    token_order: VecDeque<(Timestamp, ActorId, IdempotencyToken)>,
}

impl ActorRegistry {
    pub fn apply(&mut self, event: &ActorEvent) {
        self.forget_tokens_before(event.at);
        let key = (event.by.clone(), event.token.clone());
        self.token_order
            .push_back((event.at, key.0.clone(), key.1.clone()));
        self.tokens.insert(
            key,
            ActorTokenRecord {
                actor: event.actor.clone(),
                change: event.change.clone(),
                at: event.at,
            },
        );
        let keys = self.keys.entry(event.actor.clone()).or_default();
        match &event.change {
            ActorChange::Registered { role, public_key } => {
                // A new registration supersedes the previous key from this instant.
                if let Some(last) = keys.last_mut()
                    && last.revoked_at.is_none()
                {
                    last.revoked_at = Some(event.at);
                }
                keys.push(ActorKey {
                    role: *role,
                    public_key: *public_key,
                    registered_at: event.at,
                    revoked_at: None,
                });
            }
            ActorChange::Revoked => {
                if let Some(last) = keys.last_mut()
                    && last.revoked_at.is_none()
                {
                    last.revoked_at = Some(event.at);
                }
            }
        }
    }

    fn forget_tokens_before(&mut self, now: Timestamp) {
        while let Some((at, _, _)) = self.token_order.front() {
            if now < at.plus_ms(ACTOR_TOKEN_WINDOW_MS) {
                break;
            }
            let Some((at, by, token)) = self.token_order.pop_front() else {
                break;
            };
            let key = (by, token);
            if self.tokens.get(&key).is_some_and(|record| record.at == at) {
                self.tokens.remove(&key);
            }
        }
    }

    /// The change `by` recorded under `token` within the window before `now`, if any.
    pub fn token(
        &self,
        by: &ActorId,
        token: &IdempotencyToken,
        now: Timestamp,
    ) -> Option<&ActorTokenRecord> {
        self.tokens
            .get(&(by.clone(), token.clone()))
            .filter(|record| now < record.at.plus_ms(ACTOR_TOKEN_WINDOW_MS))
    }

    /// The key in force now (not revoked), if any.
    pub fn current(&self, actor: &ActorId) -> Option<&ActorKey> {
        self.keys
            .get(actor)?
            .last()
            .filter(|key| key.revoked_at.is_none())
    }

    /// The key that was valid at `at`, if any.
    pub fn key_at(&self, actor: &ActorId, at: Timestamp) -> Option<&ActorKey> {
        self.keys
            .get(actor)?
            .iter()
            .rev()
            .find(|key| key.valid_at(at))
    }

    pub fn actors(&self) -> impl Iterator<Item = (&ActorId, &[ActorKey])> {
        self.keys
            .iter()
            .map(|(actor, keys)| (actor, keys.as_slice()))
    }
}

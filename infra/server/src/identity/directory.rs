//! The live registry of actors, folded from the `actors` stream, and the credential checks
//! that use it.
//! Must not: append to the actors stream (the service does) or decide roles' permissions.

use std::sync::RwLock;

use allot_domain::signing::SIGNED_AT_SKEW_MS;
use allot_domain::{
    ActorEvent, ActorId, ActorKey, ActorRegistry, Attestation, IdempotencyToken, Role, Timestamp,
};
use ed25519_dalek::Signature;

use super::AuthError;
use super::verifier::SignatureVerifier;

/// The live registry of actors, folded from the `actors` stream.
#[derive(Debug, Default)]
pub struct ActorDirectory {
    registry: RwLock<(ActorRegistry, u64)>,
}

impl ActorDirectory {
    /// Applies the event at `version` of the `actors` stream, once: both the writer and a
    /// follower of the store may offer it. Returns false if it was already applied.
    pub fn apply(&self, version: u64, event: &ActorEvent) -> bool {
        let mut guard = self
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (registry, next) = &mut *guard;
        if version != *next {
            return false;
        }
        registry.apply(event);
        *next += 1;
        true
    }

    /// The next `actors` stream version this directory expects.
    pub fn next_version(&self) -> u64 {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
    }

    /// The change `by` recorded under `token` within the actor-token window, if any.
    pub fn token(
        &self,
        by: &ActorId,
        token: &IdempotencyToken,
        now: Timestamp,
    ) -> Option<allot_domain::actor::ActorTokenRecord> {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .token(by, token, now)
            .cloned()
    }

    pub fn current(&self, actor: &ActorId) -> Option<ActorKey> {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .current(actor)
            .cloned()
    }

    /// Whether `actor` was ever registered (revoked or not).
    pub fn ever_registered(&self, actor: &ActorId) -> bool {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .actors()
            .any(|(id, _)| id == actor)
    }

    pub fn is_empty(&self) -> bool {
        self.registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .actors()
            .next()
            .is_none()
    }

    /// Checks that `actor` is registered and not revoked and that `signed_at` is fresh. Returns
    /// the actor's key in force; the signature is the caller's to check.
    pub fn credential(
        &self,
        actor: &ActorId,
        attestation: &Attestation,
        now: Timestamp,
    ) -> Result<ActorKey, AuthError> {
        let key = match self.current(actor) {
            Some(key) => key,
            None => {
                return Err(if self.ever_registered(actor) {
                    AuthError::Revoked(actor.to_string())
                } else {
                    AuthError::UnknownActor(actor.to_string())
                });
            }
        };
        if attestation.signed_at.0.abs_diff(now.0) > SIGNED_AT_SKEW_MS {
            return Err(AuthError::StaleSignature {
                signed_at: attestation.signed_at,
                now,
            });
        }
        Ok(key)
    }

    /// Checks that `actor` is registered and not revoked, that `signed_at` is fresh, and that
    /// the signature verifies over `bytes` (checked by `verifier` in a signature-verification
    /// batch with other requests' signatures). Returns the actor's role.
    pub async fn authenticate(
        &self,
        verifier: &SignatureVerifier,
        actor: &ActorId,
        bytes: Vec<u8>,
        attestation: &Attestation,
        now: Timestamp,
    ) -> Result<Role, AuthError> {
        let key = self.credential(actor, attestation, now)?;
        let verifying_key = verifier
            .key(&key.public_key)
            .map_err(|error| AuthError::MalformedSignature(format!("public key: {error}")))?;
        let signature = Signature::from_slice(&attestation.signature)
            .map_err(|error| AuthError::MalformedSignature(error.to_string()))?;
        if verifier.verify(bytes, signature, verifying_key).await? {
            Ok(key.role)
        } else {
            Err(AuthError::BadSignature(actor.to_string()))
        }
    }
}

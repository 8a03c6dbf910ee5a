//! Actor identity: key files ([`keys`]), the live actor directory ([`directory`]), the
//! batched signature verifier ([`verifier`]) and the instance's seal signer ([`seal_signer`]).
//! Must not: decide commands, or know which role may do what beyond asking the role table.
//!
//! A request's credential is an ed25519 signature over `allot_domain::signing::signing_bytes`
//! (published with test vectors in `docs/signing.md`). The server checks the signature against
//! the actor's current key, that `signed_at` is within [`SIGNED_AT_SKEW_MS`] of its clock, and
//! that the actor's role may perform the action. `SIGNED_AT_SKEW_MS` is far shorter than any
//! pool's idempotency window, so a captured request replayed later either hits its recorded
//! outcome or is refused as stale: it cannot become a second action.

pub mod directory;
pub mod keys;
pub mod seal_signer;
pub mod verifier;

use allot_domain::signing::SIGNED_AT_SKEW_MS;
use allot_domain::{ActorId, Role, Timestamp};
use ed25519_dalek::{Signature, VerifyingKey};

pub use directory::ActorDirectory;
pub use keys::{KeyFile, KeyFileError};
pub use seal_signer::SealSigner;
pub use verifier::{SignatureVerifier, VerifierUnavailable};

/// Why a request's credential was refused (HTTP 401) or its role was (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("actor {0} is not registered")]
    UnknownActor(String),
    #[error("actor {0} has been revoked")]
    Revoked(String),
    #[error("signature is malformed: {0}")]
    MalformedSignature(String),
    #[error("signature does not verify for actor {0}")]
    BadSignature(String),
    #[error("signed_at {signed_at} is more than {SIGNED_AT_SKEW_MS} ms from server time {now}")]
    StaleSignature {
        signed_at: Timestamp,
        now: Timestamp,
    },
    #[error("role {role} may not {action}")]
    Forbidden { role: Role, action: String },
    #[error(transparent)]
    Unavailable(#[from] VerifierUnavailable),
}

impl AuthError {
    /// Whether this is a role failure (403) rather than a credential failure (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden { .. })
    }
}

/// Verifies `signature` over `bytes` with `public_key`.
pub fn verify_signature(
    public_key: &[u8; 32],
    bytes: &[u8],
    signature: &[u8],
    actor: &ActorId,
) -> Result<(), AuthError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|error| AuthError::MalformedSignature(format!("public key: {error}")))?;
    let signature = Signature::from_slice(signature)
        .map_err(|error| AuthError::MalformedSignature(error.to_string()))?;
    key.verify_strict(bytes, &signature)
        .map_err(|_| AuthError::BadSignature(actor.to_string()))
}

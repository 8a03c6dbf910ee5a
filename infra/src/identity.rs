//! Actor identity: ed25519 keys, key files, request signatures and the live actor directory.
//!
//! A request's credential is an ed25519 signature over `allot_domain::signing::signing_bytes`
//! (published with test vectors in `docs/signing.md`). The server checks the signature against
//! the actor's current key, that `signed_at` is within [`SIGNED_AT_SKEW_MS`] of its clock, and
//! that the actor's role may perform the action. `SIGNED_AT_SKEW_MS` is far shorter than any
//! pool's idempotency window, so a captured request replayed later either hits its recorded
//! outcome or is refused as stale: it cannot become a second action.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use allot_domain::{
    Action, ActorEvent, ActorId, ActorKey, ActorRegistry, Attestation, IdempotencyToken,
    ParamsDigest, Role, Timestamp, signing,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::verifier::{SignatureVerifier, VerifierUnavailable};

/// How far `signed_at` may be from the server's clock, either way.
pub const SIGNED_AT_SKEW_MS: u64 = 120_000;

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

/// The parameters digest: blake3 over the canonical parameter bytes.
pub fn params_digest(action: &Action) -> ParamsDigest {
    ParamsDigest(*blake3::hash(&signing::params_bytes(action)).as_bytes())
}

/// The target a pool command is signed over: the pool id, or the reservation id.
pub fn command_target(pool: &allot_domain::PoolId, action: &Action) -> String {
    match action.reservation() {
        Some(seq) => format!("{pool}{}{seq}", allot_domain::ids::RESERVATION_ID_SEPARATOR),
        None => pool.to_string(),
    }
}

/// Signs a pool command. Used by clients, the sweeper and the demo.
pub fn sign_command(
    key: &SigningKey,
    actor: &ActorId,
    pool: &allot_domain::PoolId,
    action: &Action,
    token: &IdempotencyToken,
    signed_at: Timestamp,
) -> Attestation {
    let bytes = signing::signing_bytes(
        action,
        &command_target(pool, action),
        token,
        actor,
        signed_at,
    );
    Attestation {
        signed_at,
        signature: key.sign(&bytes).to_bytes().to_vec(),
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
                let ever = self
                    .registry
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
                    .actors()
                    .any(|(id, _)| id == actor);
                return Err(if ever {
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
    /// the signature verifies over `bytes`. Returns the actor's role.
    pub fn authenticate(
        &self,
        actor: &ActorId,
        bytes: &[u8],
        attestation: &Attestation,
        now: Timestamp,
    ) -> Result<Role, AuthError> {
        let key = self.credential(actor, attestation, now)?;
        verify_signature(&key.public_key, bytes, &attestation.signature, actor)?;
        Ok(key.role)
    }

    /// As [`ActorDirectory::authenticate`], with the signature checked by `verifier` in a batch
    /// with other requests' signatures.
    pub async fn authenticate_batched(
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

/// A private key on disk: the actor it belongs to, its role, and the 32-byte secret (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub actor: String,
    pub role: Role,
    pub secret_key: String,
}

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

impl KeyFile {
    pub fn generate(actor: &str, role: Role) -> (KeyFile, SigningKey) {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let file = KeyFile {
            actor: actor.to_owned(),
            role,
            secret_key: hex::encode(key.to_bytes()),
        };
        (file, key)
    }

    /// Writes the key with mode 0600, refusing to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let write_error = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_error)?;
        let text = serde_json::to_string_pretty(self).map_err(|error| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)
    }

    pub fn read(path: &Path) -> Result<(KeyFile, SigningKey), KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let malformed = |reason: String| KeyFileError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        let bytes = hex::decode(&file.secret_key).map_err(|e| malformed(e.to_string()))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed("secret_key must be 32 bytes".to_owned()))?;
        Ok((file, SigningKey::from_bytes(&secret)))
    }
}

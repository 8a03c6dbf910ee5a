//! Key files: an actor's name, role and ed25519 secret on disk, mode 0600.
//! Must not: decide whether a key is valid (the actors stream does).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use allot_domain::Role;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

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

//! The projections checkpoint file: `allot rebuild` writes it, `allot serve` starts from it and
//! replays only the log after it. A checkpoint is derived data: one of another format or a
//! damaged one is never partly trusted, the whole log is replayed instead.
//! Must not: decide what a checkpoint holds (that is `allot_replay::Checkpoint`).

use std::io::Write;
use std::path::{Path, PathBuf};

use allot_projections::Projections;
use allot_replay::{Checkpoint, RebuildError};

use crate::store::EventStore;

/// The checkpoint file's name in an embedded data directory.
pub const CHECKPOINT_FILE: &str = "projections.checkpoint";

/// Why a checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: RebuildError,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Records in `checkpoint` the chain value of the log it was taken over (`store`, read up to the
/// checkpoint's position), so it is later used only over that history.
pub async fn record_chain(
    checkpoint: &mut Checkpoint,
    store: &dyn EventStore,
) -> Result<(), crate::store::StoreError> {
    let events = checkpoint.position.map_or(0, |position| position + 1);
    checkpoint.chain = store.chain_at(events).await?;
    Ok(())
}

/// Reads a checkpoint file, if it exists.
pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Checkpoint::from_bytes(&bytes)
                .map(Some)
                .map_err(|source| CheckpointError::Malformed {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The projections `allot serve` starts from: those of the checkpoint at `path` (the service
/// then replays only the log after it), or empty ones, i.e. a replay of the whole log, when
/// there is none or it cannot be used: unreadable, or taken over another history than `store`
/// holds (its chain value differs from the log's at its position, or the log is shorter).
pub async fn projections_at_start(path: &Path, store: &dyn EventStore) -> Projections {
    let checkpoint = match read_checkpoint(path) {
        Ok(Some(checkpoint)) => checkpoint,
        Ok(None) => return Projections::new(),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "ignoring checkpoint; replaying the whole log"
            );
            return Projections::new();
        }
    };
    let events = checkpoint.position.map_or(0, |position| position + 1);
    let chain = match store.chain_at(events).await {
        Ok(chain) => chain,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring checkpoint; replaying the whole log");
            return Projections::new();
        }
    };
    if events > 0 && chain != checkpoint.chain {
        tracing::warn!(
            path = %path.display(),
            position = ?checkpoint.position,
            "ignoring checkpoint: it was taken over another history than the log holds; replaying the whole log"
        );
        return Projections::new();
    }
    tracing::info!(
        path = %path.display(),
        position = ?checkpoint.position,
        reservations = checkpoint.projections.binding.len(),
        "starting from checkpoint"
    );
    Projections::from_packed(&checkpoint.projections)
}

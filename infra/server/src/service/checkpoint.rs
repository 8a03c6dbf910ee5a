//! The projections checkpoint file: `allot rebuild` writes it, `allot serve` starts from it and
//! replays only the log after it. A checkpoint is derived data: one of another format or a
//! damaged one is never partly trusted, the whole log is replayed instead.
//! Must not: decide what a checkpoint holds (that is `allot_replay::Checkpoint`).

use std::io::Write;
use std::path::{Path, PathBuf};

use allot_projections::Projections;
use allot_replay::{Checkpoint, RebuildError};

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
/// there is none or it cannot be used.
pub fn projections_at_start(path: &Path) -> Projections {
    match read_checkpoint(path) {
        Ok(Some(checkpoint)) => {
            tracing::info!(
                path = %path.display(),
                position = ?checkpoint.position,
                reservations = checkpoint.projections.binding.len(),
                "starting from checkpoint"
            );
            Projections::from_packed(&checkpoint.projections)
        }
        Ok(None) => Projections::new(),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "ignoring checkpoint; replaying the whole log"
            );
            Projections::new()
        }
    }
}

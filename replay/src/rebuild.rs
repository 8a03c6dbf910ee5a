//! Rebuild: folds recorded events into the projections and the pool aggregates, with
//! checkpoints so a later rebuild applies only the tail.
//!
//! Projections are folded with the same `Projections::apply` the live service calls, so a
//! rebuilt projection equals the live one. Pool aggregates are folded with the domain's
//! `evolve`; its first refusal stops the rebuild with the stream, version and position of the
//! event (the audit is the tool that carries on and reports every fault).
//!
//! A [`Checkpoint`] holds the projections' packed form and the last applied position. The pool
//! aggregates are not in it (the domain offers no serializable form of `Pool`): resuming with
//! [`RebuildOptions::fold_pools`] refolds them from the start of the log while the projections
//! skip everything at or before the checkpoint; without it, the caller may start reading after
//! the checkpoint's position.

use std::collections::HashMap;
use std::sync::Arc;

use allot_domain::{ActorRegistry, Pool, PoolId, evolve};
use allot_projections::{Applied, PackedProjections, Projections};
use serde::{Deserialize, Serialize};

use crate::record::{Recorded, RecordedActorEvent, RecordedPoolEvent};

/// The checkpoint format this build writes and reads. Format 1 (JSON, then bincode behind
/// `ALLOTCP1`) held every reservation's labels and no event versions; it is refused, and the
/// caller replays the whole log.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 3;
/// Largest checkpoint accepted by [`Checkpoint::from_bytes`].
pub const CHECKPOINT_BYTES_MAX: usize = 1 << 30;
/// The progress callback is called every this many events (and once at the end).
pub const PROGRESS_EVERY_EVENTS: u64 = 4_096;

/// Why a rebuild or a checkpoint failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// The domain refused an event: the log is damaged or not one this domain wrote.
    #[error("{stream}@{version} (position {position}): {reason}")]
    Evolve {
        stream: String,
        version: u64,
        position: u64,
        reason: String,
    },
    /// An event of a pool stream arrived before the version the projections expect.
    #[error("{stream}@{version} (position {position}): version gap, expected {expected}")]
    Gap {
        stream: String,
        version: u64,
        position: u64,
        expected: u64,
    },
    /// Positions must strictly increase.
    #[error("position {position} after {previous}: the log is not in position order")]
    OutOfOrder { position: u64, previous: u64 },
    #[error(
        "checkpoint format {found} is not {CHECKPOINT_FORMAT_VERSION}: replay the whole log, or \
         write a new checkpoint with `allot rebuild --full`"
    )]
    CheckpointFormat { found: u32 },
    #[error("checkpoint of {0} bytes exceeds {CHECKPOINT_BYTES_MAX}")]
    CheckpointTooLarge(usize),
    #[error("checkpoint is malformed: {0}")]
    CheckpointMalformed(String),
}

/// A serializable point to resume from: the projections after applying every event at or
/// before `position` (the last record the rebuild applied, pool or actor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format_version: u32,
    /// Last applied global position; `None` when nothing was applied.
    pub position: Option<u64>,
    /// The log's chain value once it held `position + 1` events, on a store that chains its log
    /// (embedded): a checkpoint is used only over a log whose chain agrees.
    pub chain: Option<[u8; 32]>,
    pub projections: PackedProjections,
}

/// First bytes of a checkpoint of this format.
const CHECKPOINT_MAGIC: &[u8; 8] = b"ALLOTCP3";
/// First bytes of a format 2 checkpoint (before it recorded the log's chain value).
const CHECKPOINT_MAGIC_V2: &[u8; 8] = b"ALLOTCP2";
/// First bytes of a format 1 binary checkpoint (format 1 was also written as JSON, `{...}`).
const CHECKPOINT_MAGIC_V1: &[u8; 8] = b"ALLOTCP1";

impl Checkpoint {
    /// The checkpoint as bytes (what the binary writes to its checkpoint file): a magic, then
    /// bincode 2 over the serde shape. The binding is one block of packed words per pool, so
    /// loading is mostly a memory copy.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RebuildError> {
        let mut out = CHECKPOINT_MAGIC.to_vec();
        bincode::serde::encode_into_std_write(self, &mut out, bincode::config::standard())
            .map_err(|error| RebuildError::CheckpointMalformed(error.to_string()))?;
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, RebuildError> {
        if bytes.len() > CHECKPOINT_BYTES_MAX {
            return Err(RebuildError::CheckpointTooLarge(bytes.len()));
        }
        let Some(body) = bytes.strip_prefix(CHECKPOINT_MAGIC) else {
            // Format 1 cannot be read into this binding: it has no event versions to find a
            // reservation's labels by.
            if bytes.starts_with(CHECKPOINT_MAGIC_V1) {
                return Err(RebuildError::CheckpointFormat { found: 1 });
            }
            if bytes.starts_with(CHECKPOINT_MAGIC_V2) {
                return Err(RebuildError::CheckpointFormat { found: 2 });
            }
            if bytes.trim_ascii_start().starts_with(b"{") {
                /// Only the format number of a JSON checkpoint is read; the rest is skipped.
                #[derive(Deserialize)]
                struct Format {
                    format_version: u32,
                }
                let format: Format = serde_json::from_slice(bytes)
                    .map_err(|error| RebuildError::CheckpointMalformed(error.to_string()))?;
                return Err(RebuildError::CheckpointFormat {
                    found: format.format_version,
                });
            }
            return Err(RebuildError::CheckpointMalformed(
                "not an allot checkpoint (unknown magic)".to_owned(),
            ));
        };
        let config = bincode::config::standard().with_limit::<CHECKPOINT_BYTES_MAX>();
        let (checkpoint, read): (Checkpoint, usize) =
            bincode::serde::decode_from_slice(body, config)
                .map_err(|error| RebuildError::CheckpointMalformed(error.to_string()))?;
        if read != body.len() {
            return Err(RebuildError::CheckpointMalformed(format!(
                "{} trailing bytes",
                body.len() - read
            )));
        }
        if checkpoint.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(RebuildError::CheckpointFormat {
                found: checkpoint.format_version,
            });
        }
        Ok(checkpoint)
    }
}

/// What a rebuild folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Fold pool aggregates with `evolve` (they always start from the beginning of the log).
    pub fold_pools: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions { fold_pools: true }
    }
}

/// A rebuild in progress: feed records in position order with [`Rebuild::apply`] or
/// [`Rebuild::run`].
#[derive(Debug)]
pub struct Rebuild {
    options: RebuildOptions,
    /// Shared with the workers of a partitioned rebuild ([`Rebuild::shared_projections`]).
    projections: Arc<Projections>,
    pools: HashMap<PoolId, Pool>,
    actors: ActorRegistry,
    /// Projections already hold every event at or before this position.
    resume_after: Option<u64>,
    last_position: Option<u64>,
    events_done: u64,
}

impl Default for Rebuild {
    fn default() -> Self {
        Rebuild::new(RebuildOptions::default())
    }
}

impl Rebuild {
    /// A rebuild from the start of the log.
    pub fn new(options: RebuildOptions) -> Rebuild {
        Rebuild {
            options,
            projections: Arc::new(Projections::new()),
            pools: HashMap::new(),
            actors: ActorRegistry::default(),
            resume_after: None,
            last_position: None,
            events_done: 0,
        }
    }

    /// A rebuild whose projections start from `checkpoint`: events at or before its position
    /// only fold the pool aggregates (if [`RebuildOptions::fold_pools`]) and the actor registry.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        options: RebuildOptions,
    ) -> Result<Rebuild, RebuildError> {
        if checkpoint.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(RebuildError::CheckpointFormat {
                found: checkpoint.format_version,
            });
        }
        Ok(Rebuild {
            projections: Arc::new(Projections::from_packed(&checkpoint.projections)),
            resume_after: checkpoint.position,
            ..Rebuild::new(options)
        })
    }

    /// Where a caller that does not fold pools may start reading: after this position.
    pub fn resume_after(&self) -> Option<u64> {
        self.resume_after
    }

    /// Applies one record.
    pub fn apply(&mut self, recorded: &Recorded) -> Result<(), RebuildError> {
        let position = recorded.position();
        if let Some(previous) = self.last_position
            && position <= previous
        {
            return Err(RebuildError::OutOfOrder { position, previous });
        }
        self.last_position = Some(position);
        let before_checkpoint = self.resume_after.is_some_and(|after| position <= after);
        match recorded {
            Recorded::Actor(actor) => self.actors.apply(&actor.event),
            Recorded::Pool(pool) => {
                if self.options.fold_pools {
                    self.fold_pool(pool)?;
                }
                if !before_checkpoint {
                    self.project(pool)?;
                }
            }
        }
        self.events_done += 1;
        Ok(())
    }

    fn fold_pool(&mut self, recorded: &RecordedPoolEvent) -> Result<(), RebuildError> {
        let pool = self.pools.entry(recorded.event.pool.clone()).or_default();
        evolve(pool, &recorded.event).map_err(|error| RebuildError::Evolve {
            stream: recorded.stream.clone(),
            version: recorded.version,
            position: recorded.position,
            reason: error.reason,
        })
    }

    fn project(&mut self, recorded: &RecordedPoolEvent) -> Result<(), RebuildError> {
        Rebuild::project_into(&self.projections, recorded)
    }

    /// The projections, for workers that apply pool events on other threads: a partitioned
    /// rebuild. `None` when this rebuild folds pool aggregates (those stay on one thread).
    ///
    /// Projections take each pool's events in stream order and pools in any interleaving, so
    /// the caller routes every event of one pool to one worker (e.g. by the pool id,
    /// `allot_domain::codec::peek_pool`), hands every record's position to [`Rebuild::admit`]
    /// and actor events to [`Rebuild::apply_actor`] in log order, and applies the pool events
    /// [`Rebuild::admit`] accepts with [`Rebuild::project_into`].
    pub fn shared_projections(&self) -> Option<Arc<Projections>> {
        (!self.options.fold_pools).then(|| Arc::clone(&self.projections))
    }

    /// Checks that the record at `position` follows the last one and counts it (a partitioned
    /// rebuild; see [`Rebuild::shared_projections`]). Returns whether a pool event there is
    /// still to be projected (it is not when the checkpoint already holds it).
    pub fn admit(&mut self, position: u64) -> Result<bool, RebuildError> {
        if let Some(previous) = self.last_position
            && position <= previous
        {
            return Err(RebuildError::OutOfOrder { position, previous });
        }
        self.last_position = Some(position);
        self.events_done += 1;
        Ok(self.resume_after.is_none_or(|after| position > after))
    }

    /// Folds an actor event already admitted with [`Rebuild::admit`].
    pub fn apply_actor(&mut self, recorded: &RecordedActorEvent) {
        self.actors.apply(&recorded.event);
    }

    /// Applies one pool event to `projections` (from [`Rebuild::shared_projections`]), as
    /// [`Rebuild::apply`] does.
    pub fn project_into(
        projections: &Projections,
        recorded: &RecordedPoolEvent,
    ) -> Result<(), RebuildError> {
        if Self::project_uncounted(projections, recorded)? {
            projections.account(1, recorded.position);
        }
        Ok(())
    }

    /// [`Rebuild::project_into`] without adding to the projections' totals; returns whether the
    /// event was applied, for the caller to [`Projections::account`] for later.
    pub fn project_uncounted(
        projections: &Projections,
        recorded: &RecordedPoolEvent,
    ) -> Result<bool, RebuildError> {
        match projections.apply_uncounted(recorded.version, &recorded.event) {
            Applied::Applied => Ok(true),
            Applied::Skipped => Ok(false),
            Applied::Gap { expected } => Err(RebuildError::Gap {
                stream: recorded.stream.clone(),
                version: recorded.version,
                position: recorded.position,
                expected,
            }),
        }
    }

    /// Applies every record, calling `progress(events_done)` every [`PROGRESS_EVERY_EVENTS`]
    /// and once at the end.
    pub fn run<I, R>(
        &mut self,
        records: I,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, RebuildError>
    where
        I: IntoIterator<Item = R>,
        R: std::borrow::Borrow<Recorded>,
    {
        for record in records {
            self.apply(record.borrow())?;
            if self.events_done.is_multiple_of(PROGRESS_EVERY_EVENTS) {
                progress(self.events_done);
            }
        }
        progress(self.events_done);
        Ok(self.events_done)
    }

    /// Records applied by this rebuild (including those only folded into pools).
    pub fn events_done(&self) -> u64 {
        self.events_done
    }

    /// A checkpoint of the projections as they stand.
    pub fn checkpoint(&self) -> Checkpoint {
        let projections = self.projections.packed();
        Checkpoint {
            format_version: CHECKPOINT_FORMAT_VERSION,
            position: self.last_position.max(self.resume_after),
            chain: None,
            projections,
        }
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    pub fn pools(&self) -> &HashMap<PoolId, Pool> {
        &self.pools
    }

    /// The actor registry (complete only when the log was fed from its start).
    pub fn actors(&self) -> &ActorRegistry {
        &self.actors
    }

    /// The rebuilt state: projections, pool aggregates and the actor registry.
    pub fn into_parts(self) -> (Projections, HashMap<PoolId, Pool>, ActorRegistry) {
        // Workers of a partitioned rebuild may still hold the projections: copy them then.
        let projections = Arc::try_unwrap(self.projections)
            .unwrap_or_else(|shared| Projections::from_packed(&shared.packed()));
        (projections, self.pools, self.actors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_read_back() {
        let checkpoint = Rebuild::default().checkpoint();
        let binary = checkpoint.to_bytes().expect("encode");
        assert!(binary.starts_with(CHECKPOINT_MAGIC));
        assert_eq!(Checkpoint::from_bytes(&binary), Ok(checkpoint.clone()));
        let mut damaged = binary.clone();
        damaged.truncate(damaged.len() - 1);
        assert!(matches!(
            Checkpoint::from_bytes(&damaged),
            Err(RebuildError::CheckpointMalformed(_))
        ));
        let mut longer = binary;
        longer.push(0);
        assert!(matches!(
            Checkpoint::from_bytes(&longer),
            Err(RebuildError::CheckpointMalformed(_))
        ));
    }

    #[test]
    fn format_1_checkpoints_are_refused_by_their_format() {
        // The first bytes of a real format 1 file, in both of its encodings.
        let mut bincode_v1 = CHECKPOINT_MAGIC_V1.to_vec();
        bincode_v1.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0, 0]);
        let json_v1 = br#" {"format_version":1,"position":7,"projections":{"binding":{}}}"#;
        for old in [&bincode_v1[..], &json_v1[..]] {
            let error = Checkpoint::from_bytes(old).expect_err("format 1");
            assert_eq!(error, RebuildError::CheckpointFormat { found: 1 });
            assert!(
                error.to_string().contains("replay the whole log"),
                "{error}"
            );
        }
        for garbage in [&b"not a checkpoint"[..], b"{not json"] {
            assert!(matches!(
                Checkpoint::from_bytes(garbage),
                Err(RebuildError::CheckpointMalformed(_))
            ));
        }
        // A future format behind this magic is refused by its number too.
        let mut future = Rebuild::default().checkpoint();
        future.format_version = CHECKPOINT_FORMAT_VERSION + 1;
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        bincode::serde::encode_into_std_write(&future, &mut bytes, bincode::config::standard())
            .expect("encode");
        assert_eq!(
            Checkpoint::from_bytes(&bytes),
            Err(RebuildError::CheckpointFormat {
                found: CHECKPOINT_FORMAT_VERSION + 1
            })
        );
    }
}

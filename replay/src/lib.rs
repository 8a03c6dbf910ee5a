//! Replay: folds recorded events into pool aggregates and projections, and runs the audit checks
//! and forensics over them.
//!
//! Owns: the fold from a sequence of recorded events (wherever they came from), the seed's
//! record-clearable checks (the audit), forensics queries (state as of a time, stranded slots,
//! the double-booking dispute view, the contention window around a deadline), projection
//! rebuilds with checkpoints, and a self-contained HTML report.
//!
//! Must not: know about storage backends, HTTP or the clock; events arrive as values, already
//! decoded (decoding failures are the caller's to report). It must not collect the log: every
//! fold here keeps memory bounded by state (live reservations; in the audit one small record per
//! reservation ever made, as the pool aggregate keeps one state byte; tokens within their
//! window; capped samples and lists), never by the number of events.
//!
//! The audit reconstructs pool state on its own, from the events' changes; it does not trust the
//! domain's `evolve` (which refuses a bad log at its first fault) and keeps going to report every
//! violation. `evolve` runs beside it, optionally, as one more check (`fold`).
//!
//! Layout:
//! - `record`: the input model, [`Recorded`] pool and actor events in global position order,
//!   and [`Recorded::decode`] from stored payloads.
//! - `audit`: [`Audit`] (push-based), [`Check`], [`Violation`], [`AuditReport`]; split over
//!   workers by pool stream with [`Audit::partitions`] and [`AuditRouter`] (same report).
//! - `crypto`: batch ed25519 verification and digest checks on worker threads.
//! - `forensics`: [`as_of`], [`stranded_slots`], [`disputed_double_booking`],
//!   [`contention_window`], each also a push-based query ([`AsOfQuery`],
//!   [`StrandedSlotsQuery`], [`DisputeQuery`], [`ContentionQuery`]) for paged reads.
//! - `rebuild`: [`Rebuild`] of projections and pool aggregates, [`Checkpoint`]; projections
//!   can be applied by workers per pool ([`Rebuild::shared_projections`]).
//! - `html`: [`html_report`], inline SVG per pool.

pub mod audit;
mod crypto;
pub mod forensics;
pub mod html;
pub mod rebuild;
pub mod record;

pub use audit::{
    Audit, AuditOptions, AuditReport, AuditRouter, Check, CheckCount, PartitionEnd, Routed,
    VIOLATIONS_MAX, Violation,
};
pub use forensics::{
    AsOf, AsOfQuery, CONTENTION_SECONDS_MAX, CapacityChange, Confirmation, ContentionQuery,
    ContentionSecond, ContentionWindow, DisputeQuery, DoubleBookingMoment, DoubleBookingView,
    FORENSIC_ITEMS_MAX, ForensicsError, LiveReservation, PoolAsOf, RepeatRequest, StrandedSlot,
    StrandedSlotsQuery, Verdict, as_of, contention_window, disputed_double_booking, stranded_slots,
};
pub use html::{HtmlReport, REPORT_POOLS_MAX, SERIES_POINTS_MAX, html_report, utc};
pub use rebuild::{
    CHECKPOINT_FORMAT_VERSION, Checkpoint, PROGRESS_EVERY_EVENTS, Rebuild, RebuildError,
    RebuildOptions,
};
pub use record::{Recorded, RecordedActorEvent, RecordedPoolEvent};

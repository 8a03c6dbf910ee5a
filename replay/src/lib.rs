//! Replay: folds recorded events into pool aggregates and projections, and runs the audit checks
//! and forensics over them.
//!
//! Owns: the fold from a sequence of recorded events (wherever they came from), the seed's
//! record-clearable checks, forensics queries and projection rebuilds with checkpoints.
//!
//! Must not: know about storage backends, HTTP or the clock; events arrive as values.

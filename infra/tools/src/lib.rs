//! The operator's and auditor's tools beside the service, and the benchmark driver.
//!
//! Owns: `inspect` (audit and rebuild of a store, with progress), `receipts` (clients' receipts
//! checked against a log), `demo` (the add/drop rush end to end) and `bench` (the performance
//! scenarios, the load process, heap-byte counting).
//! Must not: be imported by the service rooms (`allot-server` does not depend on this crate);
//! tools may use the service, never the other way round.
//!
//! # Layout
//! ```text
//! inspect/   audit and rebuild of any store: paged, partitioned folds; time parsing
//! receipts   `allot audit --receipts`: receipts whose event an embedded log does not hold
//! demo       the course-registration rush over HTTP, then its audit
//! bench/     scenarios (uniform, hot-pool, http, replay, startup, memory), the HTTP load
//!            process, heap_bytes (the counting allocator the binary installs)
//! ```

pub mod bench;
pub mod demo;
pub mod inspect;
pub mod receipts;

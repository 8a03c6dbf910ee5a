//! The service rooms of `allot serve`: everything that touches the world on the live path.
//!
//! Owns: the event store port and its backends, the command path (shards and waves), the HTTP
//! API, actor identity and signature checks, the expiry sweeper, the clock and the metrics.
//! Must not: decide commands itself (every decision is `allot_domain::decide`), or import the
//! tools (`allot-tools`) or the CLI (`allot-infra`): this crate does not depend on them, so the
//! compiler enforces it.
//!
//! # Layout
//! ```text
//! server      composition root: store + service + sweeper + HTTP, first keys, shutdown
//! service/    the command path (shards, waves), replay_tail (the one paged reader: start-up,
//!             follower, catch-up), actors (actors-stream appends), sweeper, checkpoint
//! http/       routes and request bodies, problem (the one error → status + code table), openapi
//! identity/   key files, the actor directory, the batched signature verifier
//! store/      the event store port; embedded log, EventStoreDB adapter, in-memory store
//! clock       time enters here, and only here
//! metrics     Prometheus counters and histograms
//! stdout      command output lines (a reader that leaves is not an error)
//! ```
//! Rooms depend downwards in that list: `server` on all, `http` on `service` and `identity`,
//! `service` on `identity` and `store`; `store` on none of them.

pub mod clock;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod server;
pub mod service;
pub mod stdout;
pub mod store;

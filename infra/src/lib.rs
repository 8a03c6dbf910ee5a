//! Infrastructure: everything that touches the world.
//!
//! Owns: the event store port and its backends, the command path (per-pool serialization, group
//! decide, append), the HTTP API, actor keys and signature checks, digests, the clock, the expiry
//! sweeper and the `allot` binary.
//!
//! Must not: decide commands itself; every decision goes through `allot_domain::decide`.

pub mod allocation;
pub mod bench;
pub mod client;
pub mod clock;
pub mod demo;
pub mod http;
pub mod identity;
pub mod inspect;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod output;
pub mod server;
pub mod store;
pub mod sweeper;
pub mod verifier;

//! Integration tests across crates: store conformance, HTTP end to end, crash and simulation.
//! The library part holds shared fixtures; the tests live under `tests/tests/`.
//!
//! Layout:
//! - [`store_conformance`]: the event store conformance suite, generic over the port.
//! - [`sim`]: the deterministic simulator (seeded clients, clock, store faults and crashes
//!   against the command path), run by `tests/simulation.rs`.
//! - `src/bin/store_writer.rs`: a process that appends and reports acknowledgements, killed
//!   mid-flight by `tests/store_durability.rs`.
//! - `tests/store_conformance.rs` (the suite on the embedded backend), `tests/store_model.rs`
//!   (against a reference model), `tests/store_durability.rs` (kill -9, torn tails, corruption).

pub mod sim;
pub mod store_conformance;

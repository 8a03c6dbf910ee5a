//! Integration tests across crates: store conformance, HTTP end to end, crash and simulation.
//! The library part holds shared fixtures; the tests live under `tests/tests/`.
//!
//! Layout:
//! - [`store_conformance`]: the event store conformance suite, generic over the port.
//! - `src/bin/store_writer.rs`: a process that appends and reports acknowledgements, killed
//!   mid-flight by `tests/store_durability.rs`.

pub mod store_conformance;

//! Integration tests across crates: store conformance, HTTP end to end, crash and simulation.
//! The library part holds shared fixtures; the tests live under `tests/tests/`.

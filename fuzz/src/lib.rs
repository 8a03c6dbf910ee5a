//! Fuzzing allot: the properties live in [`checks`]; `fuzz_targets/` hands them libFuzzer's
//! inputs. The seed corpora are written by `cargo run -p allot-tests --bin fuzz_smoke -- seeds
//! fuzz/corpus` (a stable-toolchain binary: anything linked here needs libFuzzer). See
//! `RELIABILITY.md` for how to run.

pub mod checks;

//! `allot audit --contention POOL` without `--around` centres the window on the pool's cutoff,
//! as `--help` says; a pool without a cutoff, or one never declared, is a clear error.

use std::path::Path;
use std::process::Command;

/// The pool of the format-2 fixture (`tests/fixtures/data/v2`) and its cutoff.
const POOL: &str = "CS101-1796676212209";
const CUTOFF_MS: u64 = 1_796_676_213_743;

/// A copy of the fixture data directory (the audit opens it read-only, but never the original).
fn fixture_copy() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/v2");
    let copy = tempfile::tempdir().expect("temp dir");
    for file in ["events.log", "store.id"] {
        std::fs::copy(source.join(file), copy.path().join(file)).expect("copy the fixture");
    }
    copy
}

fn audit(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_allot"))
        .arg("audit")
        .arg(dir)
        .args(args)
        .output()
        .expect("allot runs")
}

#[test]
fn the_contention_window_defaults_to_the_pools_cutoff() {
    let dir = fixture_copy();
    let output = audit(dir.path(), &["--contention", POOL, "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["contention"]["around"], CUTOFF_MS);
    assert_eq!(answer["contention"]["closes_at"], CUTOFF_MS);
    // Given, --around wins.
    let around = (CUTOFF_MS - 1_000).to_string();
    let output = audit(
        dir.path(),
        &["--contention", POOL, "--around", &around, "--json"],
    );
    assert!(output.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["contention"]["around"], CUTOFF_MS - 1_000);
}

#[test]
fn a_pool_never_declared_has_no_default_window() {
    let dir = fixture_copy();
    let output = audit(dir.path(), &["--contention", "no-such-pool"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pool no-such-pool was never declared"),
        "{stderr}"
    );
}

//! The `allot` binary's output when its reader goes away: `allot bench … | head -1` is how a
//! result line gets picked out. The command must finish as it would have (its temporary data
//! directory removed, its exit status kept), not panic with a backtrace. Output that cannot be
//! written for another reason fails the command.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// Runs `allot args` with its temporary files under `tmp` and stdout closed before the first
/// line; returns the exit status and stderr.
fn run_with_stdout_closed(tmp: &Path, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("allot starts");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("stderr readable");
    (child.wait().expect("allot ends"), stderr)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("readable")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Runs `allot args` with stdout closed and asserts it ended as it would have with a reader:
/// no panic, success, and its temporary data directory removed.
fn assert_finishes_cleanly(args: &[&str]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (status, stderr) = run_with_stdout_closed(tmp.path(), args);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "data left behind"
    );
}

#[test]
fn a_closed_stdout_lets_a_bench_finish_and_clean_up() {
    assert_finishes_cleanly(&[
        "bench",
        "uniform",
        "--seconds",
        "1",
        "--pools",
        "4",
        "--clients",
        "4",
    ]);
}

#[test]
fn a_closed_stdout_keeps_the_demos_exit_status() {
    assert_finishes_cleanly(&[
        "demo",
        "--students",
        "40",
        "--seats",
        "5",
        "--cutoff-ms",
        "300",
    ]);
}

#[test]
fn output_that_cannot_be_written_fails_the_command() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // No /dev/full here: nothing to check.
    };
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["bench", "uniform", "--in-memory", "--seconds", "1"])
        .args(["--pools", "4", "--clients", "4"])
        .stdout(full)
        .output()
        .expect("allot runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output"),
        "{stderr}"
    );
}

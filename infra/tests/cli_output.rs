//! The `allot` binary's output when its reader goes away: `allot bench … | head -1` is how a
//! result line gets picked out, and it must end quietly, not panic with a backtrace.

use std::io::Read;
use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "bench",
            "uniform",
            "--in-memory",
            "--seconds",
            "1",
            "--pools",
            "4",
        ])
        .args(["--clients", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("allot starts");
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("stderr readable");
    let status = child.wait().expect("allot ends");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
}

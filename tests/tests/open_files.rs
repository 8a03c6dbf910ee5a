//! `allot serve` started under a soft open-files limit of 1,024 raises it toward the hard limit
//! to fit both listeners' connections (twice `--connections-max`, plus 256), or says at start
//! that the hard limit is too low.

#[path = "../src/bin/soak/allot_process.rs"]
mod allot_process;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use allot_server::http::edge::CONNECTIONS_MAX;

/// The soft and hard "Max open files" of process `pid`.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn serve_raises_a_low_soft_open_files_limit() {
    let allot =
        allot_process::locate_allot().expect("the allot binary (cargo build -p allot-infra)");
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 1024 && exec \"$@\"")
        .arg("sh")
        .arg(&allot)
        .args(["serve", "--data"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn allot serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut said_low = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        said_low |= line.starts_with("open-files limit");
        if line.starts_with("allot serving on ") {
            break;
        }
    }
    let (soft, hard) = open_files(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let wanted = 2 * CONNECTIONS_MAX as u64 + 256;
    if hard >= wanted {
        assert!(
            soft >= wanted,
            "soft {soft} of hard {hard}; wanted {wanted}"
        );
        assert!(!said_low);
    } else {
        assert!(
            said_low,
            "a hard limit of {hard} below {wanted} is said at start"
        );
    }
}

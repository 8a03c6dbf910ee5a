//! The `allot` binary as a child process: find it, start `allot serve` on a data directory with
//! an OS-chosen port, wait until it answers, kill it with SIGKILL, read its resident memory.
//!
//! Used by the soak (`soak/main.rs`) and, through `#[path]`, by `tests/tests/crash_loop.rs`:
//! both drive the real binary, not an in-process service.

// The soak and the crash loop each use their own subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot_client::Client;
use allot_domain::ActorId;
use allot_server::identity::KeyFile;

/// How long a start may take until `/healthz` answers (it replays the whole log first).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What `allot serve` prints once it listens.
const SERVING_PREFIX: &str = "allot serving on ";

/// Why the service process could not be used.
#[derive(Debug)]
pub struct ProcessError(pub String);

impl std::fmt::Display for ProcessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProcessError {}

fn error(text: impl Into<String>) -> ProcessError {
    ProcessError(text.into())
}

/// The `allot` binary: `$ALLOT_BIN`, else `allot` in the directory of the running executable or
/// in its parent (test executables live in `target/<profile>/deps`).
pub fn locate_allot() -> Result<PathBuf, ProcessError> {
    if let Some(path) = std::env::var_os("ALLOT_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(error(format!("ALLOT_BIN={} is not a file", path.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|e| error(format!("current_exe: {e}")))?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("allot");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(error(format!(
        "the allot binary is not built (looked at {}); build it with \
         `cargo build -p allot-infra --bin allot` (add --release for a release test run), \
         or set ALLOT_BIN",
        tried.join(", ")
    )))
}

/// A running `allot serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub data: PathBuf,
}

impl Server {
    /// Starts `allot serve --data DATA --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0`, its
    /// stderr appended to `log`, and waits until `/healthz` answers.
    pub async fn start(allot: &Path, data: &Path, log: &Path) -> Result<Server, ProcessError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| error(format!("open {}: {e}", log.display())))?;
        let mut child = Command::new(allot)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| error(format!("spawn {}: {e}", allot.display())))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(error("child has no stdout"));
        };
        // The address line comes after the log is replayed; read it on a thread so a server
        // that never prints it is bounded by the deadline below, then keep draining.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix(SERVING_PREFIX) {
                    let _ = addr_tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        let base = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => base,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                return Err(error(format!(
                    "allot serve did not report its address within {START_TIMEOUT:?} \
                     (exit status {status:?}); see {}",
                    log.display()
                )));
            }
        };
        let mut server = Server {
            child,
            base,
            data: data.to_owned(),
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    async fn wait_healthy(&mut self) -> Result<(), ProcessError> {
        let reader = reader(&self.base);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(answer) = reader.get("/healthz").await
                && answer.status == 200
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(error(format!("allot serve exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(error("allot serve never became healthy"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap (so the data directory's lock is gone when this returns).
    pub fn kill(mut self) -> Result<(), ProcessError> {
        self.child
            .kill()
            .map_err(|e| error(format!("kill allot serve: {e}")))?;
        self.child
            .wait()
            .map_err(|e| error(format!("wait for allot serve: {e}")))?;
        Ok(())
    }

    /// The server's resident set size in bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The client of the first admin, whose key `allot serve` wrote at first start.
    pub fn admin(&self) -> Result<Client, ProcessError> {
        let path = self.data.join("keys").join("admin.key");
        let (file, key) = KeyFile::read(&path)
            .map_err(|e| error(format!("admin key {}: {e}", path.display())))?;
        Ok(Client::new(
            self.base.clone(),
            ActorId::new(file.actor),
            key,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server left behind by a failed run must not outlive it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client for unsigned reads (its key never signs anything).
pub fn reader(base: &str) -> Client {
    Client::new(
        base.to_owned(),
        ActorId::new("reader"),
        ed25519_dalek::SigningKey::from_bytes(&[0; 32]),
    )
}

/// Whether `allot --help` lists an `audit` subcommand.
pub fn has_audit(allot: &Path) -> bool {
    Command::new(allot)
        .arg("--help")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.trim_start().starts_with("audit"))
        })
        .unwrap_or(false)
}

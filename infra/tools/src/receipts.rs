//! Receipts kept by clients, checked against an embedded log (`allot audit --receipts`): a
//! receipt whose event the log does not hold is evidence of lost or rolled-back acknowledged
//! data, even when the log alone looks whole.
//!
//! Each receipt is first verified on its own (`allot_client::verify`), then looked up: its event
//! is in the log when the log's stored leaf at its position is its `event_digest`. A receipt
//! whose event is there must also be signed by a key the log's `actors` stream registered for
//! its server with role `server`.
//! Must not: change the directory (the store is opened read-only by the caller).

use std::collections::HashSet;
use std::fmt;
use std::io::BufRead;

use allot_client::receipt::{Receipt, verify};
use allot_domain::streams::ACTORS_STREAM;
use allot_domain::{ActorId, ActorRegistry, Role, codec};
use serde::Serialize;

use allot_server::store::embedded::EmbeddedStore;
use allot_server::store::{EventStore, StoreError};

/// Longest line of a receipts file, in bytes: a receipt of the largest event (64 KiB of
/// payload, in hex) and a proof of the largest batch fit well within it.
pub const RECEIPT_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Findings listed one by one; past it they are counted only.
pub const FINDINGS_LISTED_MAX: usize = 10_000;
/// Events of the `actors` stream read at a time.
const ACTOR_PAGE_EVENTS: usize = 4096;

/// Failures that stop the check (a finding about one receipt does not).
#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the receipts: {0}")]
    Read(#[from] std::io::Error),
    #[error("cannot decode actors@{version}: {reason}")]
    Actor { version: u64, reason: String },
}

/// What is wrong with one receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "kebab-case")]
pub enum Finding {
    /// The line is not a receipt.
    Unreadable { reason: String },
    /// The receipt does not verify on its own.
    Invalid { reason: String },
    /// The event's position is at or past the log's head: the log is shorter than it was.
    PastHead { head: u64 },
    /// The log holds another event at the position.
    LeafDiffers { stored: String },
    /// The event is in the log, but the key that signed the receipt was never registered for
    /// its server with role `server`.
    UnknownSigner,
}

impl Finding {
    /// Whether the finding is of an event the log does not hold.
    pub fn is_missing(&self) -> bool {
        matches!(self, Finding::PastHead { .. } | Finding::LeafDiffers { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unreadable { reason } => write!(f, "not a receipt: {reason}"),
            Finding::Invalid { reason } => write!(f, "does not verify: {reason}"),
            Finding::PastHead { head } => {
                write!(f, "not in the log: past its head ({head} events)")
            }
            Finding::LeafDiffers { stored } => write!(
                f,
                "not in the log: it holds another event there (leaf {stored})"
            ),
            Finding::UnknownSigner => write!(
                f,
                "signed by a key the log never registered for this server"
            ),
        }
    }
}

/// One receipt's finding, and where the receipt is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptFinding {
    /// The receipt's line in the file, from 1.
    pub line: u64,
    pub position: Option<u64>,
    pub stream: Option<String>,
    pub version: Option<u64>,
    #[serde(flatten)]
    pub finding: Finding,
}

impl fmt::Display for ReceiptFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.finding.is_missing() {
            "MISSING"
        } else {
            "INVALID"
        };
        write!(f, "{kind}: line {}", self.line)?;
        if let (Some(position), Some(stream), Some(version)) =
            (self.position, &self.stream, self.version)
        {
            write!(f, ", position {position} ({stream}@{version})")?;
        }
        write!(f, ": {}", self.finding)
    }
}

/// The result of checking a file of receipts against a log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiptsReport {
    /// Receipts (non-empty lines) read.
    pub receipts: u64,
    /// Events in the log: its head position.
    pub head: u64,
    /// Receipts whose event the log does not hold.
    pub missing: u64,
    /// Receipts that are unreadable, do not verify, or name an unregistered signer.
    pub invalid: u64,
    /// The first [`FINDINGS_LISTED_MAX`] findings, in file order.
    pub findings: Vec<ReceiptFinding>,
    pub findings_omitted: u64,
}

impl ReceiptsReport {
    /// Whether every receipt verified and its event is in the log.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.invalid == 0
    }

    fn add(&mut self, finding: ReceiptFinding) {
        if finding.finding.is_missing() {
            self.missing += 1;
        } else {
            self.invalid += 1;
        }
        if self.findings.len() < FINDINGS_LISTED_MAX {
            self.findings.push(finding);
        } else {
            self.findings_omitted += 1;
        }
    }
}

impl fmt::Display for ReceiptsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "receipts: {} checked against a log of {} events: {} missing, {} invalid",
            self.receipts, self.head, self.missing, self.invalid
        )?;
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        if self.findings_omitted > 0 {
            writeln!(f, "... and {} more", self.findings_omitted)?;
        }
        if self.is_clean() {
            write!(
                f,
                "CLEAN: every receipt verifies and its event is in the log"
            )
        } else if self.missing > 0 {
            write!(
                f,
                "FAIL: {} acknowledged events are not in the log",
                self.missing
            )
        } else {
            write!(f, "FAIL: {} receipts do not hold", self.invalid)
        }
    }
}

/// Every (server, key) the log's `actors` stream ever registered with role `server`.
async fn server_keys(store: &EmbeddedStore) -> Result<HashSet<(ActorId, [u8; 32])>, ReceiptsError> {
    let mut registry = ActorRegistry::default();
    let mut from = 0;
    loop {
        let page = store
            .read_stream(ACTORS_STREAM, from, ACTOR_PAGE_EVENTS)
            .await?;
        for recorded in &page {
            let event = codec::decode_actor_event(&recorded.payload).map_err(|error| {
                ReceiptsError::Actor {
                    version: recorded.version,
                    reason: error.to_string(),
                }
            })?;
            registry.apply(&event);
        }
        match page.last() {
            Some(last) if page.len() == ACTOR_PAGE_EVENTS => from = last.version + 1,
            _ => break,
        }
    }
    Ok(registry
        .actors()
        .flat_map(|(actor, keys)| {
            keys.iter()
                .filter(|key| key.role == Role::Server)
                .map(move |key| (actor.clone(), key.public_key))
        })
        .collect())
}

/// The next line of `reader` into `line` (without its end), at most
/// [`RECEIPT_LINE_BYTES_MAX`] bytes kept; `Ok(None)` at the end, `Ok(Some(false))` for a line
/// that was longer (the rest of it skipped).
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut whole = true;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (taken, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (end, true),
            None => (chunk.len(), false),
        };
        let room = RECEIPT_LINE_BYTES_MAX.saturating_sub(line.len());
        if taken > room {
            whole = false;
        }
        line.extend_from_slice(&chunk[..taken.min(room)]);
        reader.consume(if ended { taken + 1 } else { taken });
        if ended {
            return Ok(Some(whole));
        }
    }
}

/// Checks every receipt of `reader` (one JSON receipt per line; blank lines skipped) against
/// `store`.
pub async fn check(
    store: &EmbeddedStore,
    mut reader: impl BufRead,
) -> Result<ReceiptsReport, ReceiptsError> {
    let registered = server_keys(store).await?;
    let mut report = ReceiptsReport {
        head: store.next_position(),
        ..ReceiptsReport::default()
    };
    let mut line = Vec::new();
    let mut number = 0u64;
    while let Some(whole) = next_line(&mut reader, &mut line)? {
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.receipts += 1;
        let unreadable = |reason: String| ReceiptFinding {
            line: number,
            position: None,
            stream: None,
            version: None,
            finding: Finding::Unreadable { reason },
        };
        if !whole {
            report.add(unreadable(format!(
                "longer than {RECEIPT_LINE_BYTES_MAX} bytes"
            )));
            continue;
        }
        let receipt: Receipt = match serde_json::from_slice(&line) {
            Ok(receipt) => receipt,
            Err(error) => {
                report.add(unreadable(error.to_string()));
                continue;
            }
        };
        if let Some(finding) = finding(store, &registered, &receipt, report.head).await? {
            report.add(ReceiptFinding {
                line: number,
                position: Some(receipt.position),
                stream: Some(receipt.stream.clone()),
                version: Some(receipt.version),
                finding,
            });
        }
    }
    Ok(report)
}

/// What is wrong with `receipt` against the log, if anything.
async fn finding(
    store: &EmbeddedStore,
    registered: &HashSet<(ActorId, [u8; 32])>,
    receipt: &Receipt,
    head: u64,
) -> Result<Option<Finding>, ReceiptsError> {
    if let Err(error) = verify(receipt, None) {
        return Ok(Some(Finding::Invalid {
            reason: error.to_string(),
        }));
    }
    if receipt.position >= head {
        return Ok(Some(Finding::PastHead { head }));
    }
    match store.event_leaf(receipt.position).await? {
        None => return Ok(Some(Finding::PastHead { head })),
        Some(stored) if stored != receipt.event_digest => {
            return Ok(Some(Finding::LeafDiffers {
                stored: hex::encode(stored),
            }));
        }
        Some(_) => {}
    }
    let signer = (ActorId::new(receipt.server.as_str()), receipt.server_key);
    if !registered.contains(&signer) {
        return Ok(Some(Finding::UnknownSigner));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_longer_than_the_limit_are_cut_and_flagged() {
        let long = "x".repeat(RECEIPT_LINE_BYTES_MAX + 10);
        let text = format!("a\n{long}\n\nb");
        let mut reader = std::io::BufReader::with_capacity(64, text.as_bytes());
        let mut line = Vec::new();
        let mut seen = Vec::new();
        while let Some(whole) = next_line(&mut reader, &mut line).expect("read") {
            seen.push((line.len(), whole));
        }
        assert_eq!(
            seen,
            vec![
                (1, true),
                (RECEIPT_LINE_BYTES_MAX, false),
                (0, true),
                (1, true)
            ]
        );
    }
}

//! Signature and digest verification for the audit, in batches on worker threads.
//!
//! The audit loop hands each event needing cryptography to [`Verifier::submit`]; checks are grouped
//! in batches of [`SIGNATURE_BATCH`] and sent over a bounded queue ([`VERIFY_QUEUE_BATCHES`]
//! batches deep, so a slow verifier slows the reader instead of growing memory) to up to
//! [`VERIFY_WORKERS_MAX`] threads. A worker checks each pool event's parameters digest, then
//! verifies the batch with `ed25519_dalek::verify_batch`; only when a batch fails does it verify
//! its signatures one by one, to name the offending events.

use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use allot_domain::{Event, PoolId, ReservationId, signing};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use crate::audit::{Check, Violation};

/// Signatures verified together in one `verify_batch` call.
pub const SIGNATURE_BATCH: usize = 128;
/// Distinct signer keys remembered per batch.
const VERIFYING_KEYS_CACHED: usize = 16;
/// Batches queued for the workers before the audit loop waits.
pub const VERIFY_QUEUE_BATCHES: usize = 8;
/// Most verification threads (the audit loop itself is one more).
pub const VERIFY_WORKERS_MAX: usize = 4;

/// Where a verified record sits, for the violation it may produce.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub pool: Option<PoolId>,
    pub reservation: Option<ReservationId>,
}

impl Location {
    fn violation(&self, detail: String) -> Violation {
        Violation {
            check: Check::Attribution,
            pool: self.pool.clone(),
            reservation: self.reservation.clone(),
            stream: self.stream.clone(),
            version: self.version,
            position: self.position,
            detail,
        }
    }
}

/// What to verify.
#[derive(Debug)]
pub(crate) enum Work {
    /// A pool event: its digest, and its signature over `signing::signing_bytes`.
    Pool(Box<Event>),
    /// An actor event: the bytes its signer signed (computed by the caller) and the signature.
    Actor {
        message: Vec<u8>,
        signature: Vec<u8>,
    },
}

/// One recorded event's signature (and for a pool event, its parameters digest) to check.
#[derive(Debug)]
pub(crate) struct SignatureCheck {
    pub location: Location,
    /// The key the signer held at `signed_at`; `None` when none was valid (the audit loop
    /// reports that itself; the digest is still checked).
    pub key: Option<[u8; 32]>,
    pub work: Work,
}

/// What checking a batch found.
#[derive(Debug, Default)]
pub(crate) struct CheckedBatch {
    pub signatures_verified: u64,
    pub violations: Vec<Violation>,
}

type CheckQueue = Arc<Mutex<Receiver<Vec<SignatureCheck>>>>;

/// Batches checks and spreads them over worker threads.
pub(crate) struct Verifier {
    pending: Vec<SignatureCheck>,
    checks: Option<SyncSender<Vec<SignatureCheck>>>,
    checked: Receiver<CheckedBatch>,
    workers: Vec<JoinHandle<()>>,
}

impl Verifier {
    pub fn start() -> Verifier {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, VERIFY_WORKERS_MAX);
        let (checks, queue) = sync_channel::<Vec<SignatureCheck>>(VERIFY_QUEUE_BATCHES);
        let (checked_sender, checked) = channel::<CheckedBatch>();
        let queue: CheckQueue = Arc::new(Mutex::new(queue));
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let queue = Arc::clone(&queue);
            let checked_sender = checked_sender.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("audit-verify-{index}"))
                .spawn(move || {
                    loop {
                        let batch = {
                            let receiver = match queue.lock() {
                                Ok(receiver) => receiver,
                                Err(poisoned) => poisoned.into_inner(),
                            };
                            receiver.recv()
                        };
                        let Ok(batch) = batch else { break };
                        if checked_sender.send(verify_batch(batch)).is_err() {
                            break;
                        }
                    }
                });
            // A thread that cannot be spawned leaves fewer workers; with none, batches are
            // verified on the caller's thread (see `dispatch`).
            if let Ok(handle) = spawned {
                handles.push(handle);
            }
        }
        Verifier {
            pending: Vec::with_capacity(SIGNATURE_BATCH),
            checks: (!handles.is_empty()).then_some(checks),
            checked,
            workers: handles,
        }
    }

    /// Queues one check; returns whatever finished batches have reported meanwhile.
    pub fn submit(&mut self, check: SignatureCheck, ready: &mut Vec<CheckedBatch>) {
        self.pending.push(check);
        if self.pending.len() >= SIGNATURE_BATCH {
            let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(SIGNATURE_BATCH));
            self.dispatch(batch, ready);
        }
        while let Ok(batch_result) = self.checked.try_recv() {
            ready.push(batch_result);
        }
    }

    fn dispatch(&mut self, batch: Vec<SignatureCheck>, ready: &mut Vec<CheckedBatch>) {
        let batch = match &self.checks {
            Some(checks) => match checks.send(batch) {
                Ok(()) => return,
                Err(failed) => failed.0,
            },
            None => batch,
        };
        // No worker is listening: verify here.
        self.checks = None;
        ready.push(verify_batch(batch));
    }

    /// Flushes the last batch, waits for the workers and returns what they reported.
    pub fn finish(mut self) -> Vec<CheckedBatch> {
        let mut ready = Vec::new();
        let last = std::mem::take(&mut self.pending);
        if !last.is_empty() {
            self.dispatch(last, &mut ready);
        }
        // Closing the queue ends the workers once it is drained.
        self.checks = None;
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                ready.push(CheckedBatch {
                    signatures_verified: 0,
                    violations: vec![Violation {
                        check: Check::Attribution,
                        pool: None,
                        reservation: None,
                        stream: String::new(),
                        version: 0,
                        position: 0,
                        detail: "a verification worker panicked; some signatures are unchecked"
                            .to_owned(),
                    }],
                });
            }
        }
        while let Ok(batch_result) = self.checked.try_recv() {
            ready.push(batch_result);
        }
        ready
    }
}

/// The key for `bytes` (`None`: not a valid ed25519 key), decompressed once per batch.
fn verifying_key(
    keys: &mut Vec<([u8; 32], Option<VerifyingKey>)>,
    bytes: [u8; 32],
) -> Option<VerifyingKey> {
    if let Some((_, key)) = keys.iter().find(|(known, _)| *known == bytes) {
        return *key;
    }
    let key = VerifyingKey::from_bytes(&bytes).ok();
    if keys.len() < VERIFYING_KEYS_CACHED {
        keys.push((bytes, key));
    }
    key
}

struct Candidate {
    check: usize,
    message: Vec<u8>,
    signature: Signature,
    key: VerifyingKey,
}

fn verify_batch(checks: Vec<SignatureCheck>) -> CheckedBatch {
    let mut batch_result = CheckedBatch::default();
    let mut candidates = Vec::with_capacity(checks.len());
    // A batch's signers are few: decompress each key once, not once per signature (the
    // decompression costs about as much as a signature's share of the batch check).
    let mut keys: Vec<([u8; 32], Option<VerifyingKey>)> = Vec::new();
    for (index, check) in checks.iter().enumerate() {
        let (message, signature) = match &check.work {
            Work::Pool(event) => {
                if signing::params_digest(&event.action) != event.digest {
                    batch_result
                        .violations
                        .push(check.location.violation(format!(
                            "parameters digest {} is not blake3 of the recorded {} parameters",
                            event.digest,
                            event.action.kind()
                        )));
                }
                let message = signing::signing_bytes(
                    &event.action,
                    &signing::command_target(&event.pool, &event.action),
                    &event.token,
                    &event.actor,
                    event.attestation.signed_at,
                );
                (message, event.attestation.signature.as_slice())
            }
            Work::Actor { message, signature } => (message.clone(), signature.as_slice()),
        };
        let Some(key) = check.key else { continue };
        let signature = match Signature::from_slice(signature) {
            Ok(signature) => signature,
            Err(_) => {
                batch_result
                    .violations
                    .push(check.location.violation(format!(
                        "signature is {} bytes, not an ed25519 signature",
                        signature.len()
                    )));
                continue;
            }
        };
        let key = match verifying_key(&mut keys, key) {
            Some(key) => key,
            None => {
                batch_result.violations.push(
                    check
                        .location
                        .violation("the registered public key is not a valid ed25519 key".into()),
                );
                continue;
            }
        };
        candidates.push(Candidate {
            check: index,
            message,
            signature,
            key,
        });
    }
    let messages: Vec<&[u8]> = candidates.iter().map(|c| c.message.as_slice()).collect();
    let signatures: Vec<Signature> = candidates.iter().map(|c| c.signature).collect();
    let keys: Vec<VerifyingKey> = candidates.iter().map(|c| c.key).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        batch_result.signatures_verified += candidates.len() as u64;
    } else {
        for candidate in &candidates {
            if candidate
                .key
                .verify(&candidate.message, &candidate.signature)
                .is_ok()
            {
                batch_result.signatures_verified += 1;
            } else if let Some(check) = checks.get(candidate.check) {
                batch_result.violations.push(check.location.violation(
                    "signature does not verify under the key valid at signed_at".to_owned(),
                ));
            }
        }
    }
    batch_result
}

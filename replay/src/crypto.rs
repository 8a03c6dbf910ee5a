//! Signature and digest verification for the audit, in batches on worker threads.
//!
//! The audit loop hands each event needing cryptography to [`Verifier::submit`]; checks are grouped
//! in batches of [`SIGNATURE_BATCH`] and sent over a bounded queue ([`VERIFY_QUEUE_BATCHES`]
//! batches deep, so a slow verifier slows the reader instead of growing memory) to up to
//! [`VERIFY_WORKERS_MAX`] threads. A worker checks each pool event's parameters digest, then
//! verifies the batch with `ed25519_dalek::verify_batch`; only when a batch fails does it verify
//! its signatures one by one, to name the offending events.
//!
//! An event recorded from a signed submission batch (`Event::batch`) is checked in two parts:
//! its inclusion proof, per event, leads from its own member bytes to a root; the actor's
//! signature must hold over the batch bytes of that root. The signature is shared by every
//! member of the batch, so each distinct (key, batch bytes, signature) is verified once, by one
//! worker, and its verdict kept in [`BatchVerdicts`] for the others.

use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use allot_domain::batch::{self, BatchMembership};
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
/// Batch verdicts kept; beyond it the settled ones are dropped. A batch's members are recorded
/// close together, so a verdict is needed again soon or never (a dropped one is re-verified).
const BATCH_VERDICTS_MAX: usize = 16_384;

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
    /// Events whose signature holds (for a batched event: its proof and its batch's signature).
    pub signatures_verified: u64,
    /// Distinct batch signatures this check verified (each is verified by one check only).
    pub batch_signatures_verified: u64,
    pub violations: Vec<Violation>,
}

type CheckQueue = Arc<Mutex<Receiver<Vec<SignatureCheck>>>>;

/// Batches checks and spreads them over worker threads.
pub(crate) struct Verifier {
    pending: Vec<SignatureCheck>,
    checks: Option<SyncSender<Vec<SignatureCheck>>>,
    checked: Receiver<CheckedBatch>,
    workers: Vec<JoinHandle<()>>,
    verdicts: Arc<BatchVerdicts>,
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
        let verdicts = Arc::new(BatchVerdicts::default());
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let queue = Arc::clone(&queue);
            let checked_sender = checked_sender.clone();
            let verdicts = Arc::clone(&verdicts);
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
                        if checked_sender.send(verify_batch(batch, &verdicts)).is_err() {
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
            verdicts,
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
        ready.push(verify_batch(batch, &self.verdicts));
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
                    batch_signatures_verified: 0,
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

/// What a batched event's attribution rests on: the signer's key, the batch bytes of the root
/// its proof leads to, and the batch's signature. Every member of one batch has the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BatchKey {
    key: [u8; 32],
    signature: [u8; 64],
    message: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A worker claimed it and is verifying it.
    Pending,
    Valid,
    Invalid,
}

/// The verdicts on batch signatures, shared by the workers.
#[derive(Debug, Default)]
pub(crate) struct BatchVerdicts {
    verdicts: Mutex<FastMap<BatchKey, Verdict>>,
    /// Signalled whenever claimed verdicts are settled or given up.
    settled: Condvar,
}

type FastMap<K, V> = foldhash::HashMap<K, V>;

impl BatchVerdicts {
    fn lock(&self) -> MutexGuard<'_, FastMap<BatchKey, Verdict>> {
        // The map holds plain verdicts: one left by a panicking worker is still sound.
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The verdicts one check claimed: settled by [`Claims::settle`]; any left unsettled (a worker
/// that panicked) are given up on drop, so no other worker waits for them forever.
struct Claims<'a> {
    verdicts: &'a BatchVerdicts,
    keys: Vec<BatchKey>,
}

impl Claims<'_> {
    fn settle(&mut self, settled: impl Iterator<Item = (BatchKey, bool)>) {
        let mut map = self.verdicts.lock();
        for (key, valid) in settled {
            map.insert(
                key,
                if valid {
                    Verdict::Valid
                } else {
                    Verdict::Invalid
                },
            );
        }
        self.keys.clear();
        drop(map);
        self.verdicts.settled.notify_all();
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut map = self.verdicts.lock();
        for key in self.keys.drain(..) {
            if map.get(&key) == Some(&Verdict::Pending) {
                map.remove(&key);
            }
        }
        drop(map);
        self.verdicts.settled.notify_all();
    }
}

/// How one batch signature of a check is being settled.
enum GroupState {
    /// This check verifies it (the index of its candidate).
    Claimed(usize),
    /// Another check claimed it first: wait for its verdict.
    Elsewhere,
    Settled(bool),
}

/// The members of one batch in a check, with what their attribution rests on.
struct Group {
    key: BatchKey,
    verifying_key: VerifyingKey,
    signature: Signature,
    /// Indices of the checks (events) that rest on it.
    events: Vec<usize>,
    state: GroupState,
}

enum Origin {
    /// An event's (or actor event's) own signature: the index of its check.
    Own(usize),
    /// A batch signature (its group names the candidate).
    Batch,
}

struct Candidate {
    origin: Origin,
    message: Vec<u8>,
    signature: Signature,
    key: VerifyingKey,
}

/// What signs a check's event, once its digest and proof are checked.
enum Signed {
    Own(Vec<u8>),
    /// Batch bytes of the root the event's proof leads to.
    Batch(Vec<u8>),
}

/// The bytes `event`'s signature must hold over; `Err` names a proof that leads to no root.
fn signed_bytes(event: &Event) -> Result<Signed, String> {
    let member = signing::signing_bytes(
        &event.action,
        &signing::command_target(&event.pool, &event.action),
        &event.token,
        &event.actor,
        event.attestation.signed_at,
    );
    let Some(membership) = event.batch.as_deref() else {
        return Ok(Signed::Own(member));
    };
    match batch::root_of_member(&member, membership) {
        Some(root) => Ok(Signed::Batch(batch::batch_signing_bytes(
            &root,
            membership.count,
            &membership.token,
            &event.actor,
            event.attestation.signed_at,
        ))),
        None => Err(format!(
            "batch {}: the inclusion proof of member {} ({} digests) does not fit a batch of {} commands; it leads to no root",
            membership.token,
            membership.index,
            membership.proof.len(),
            membership.count
        )),
    }
}

/// A batched event whose proof leads to a root its actor's batch signature does not hold over.
fn unsigned_root(event: &Event, membership: &BatchMembership) -> String {
    format!(
        "batch {}: the inclusion proof of member {} of {} does not lead to a root {} signed (the batch signature does not verify over it under the key valid at signed_at)",
        membership.token, membership.index, membership.count, event.actor
    )
}

fn verify_batch(checks: Vec<SignatureCheck>, verdicts: &BatchVerdicts) -> CheckedBatch {
    let mut batch_result = CheckedBatch::default();
    let mut candidates = Vec::with_capacity(checks.len());
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: FastMap<BatchKey, usize> = FastMap::default();
    // A batch's signers are few: decompress each key once, not once per signature (the
    // decompression costs about as much as a signature's share of the batch check).
    let mut keys: Vec<([u8; 32], Option<VerifyingKey>)> = Vec::new();
    for (index, check) in checks.iter().enumerate() {
        let (signed, signature) = match &check.work {
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
                match signed_bytes(event) {
                    Ok(signed) => (signed, event.attestation.signature.as_slice()),
                    Err(detail) => {
                        batch_result
                            .violations
                            .push(check.location.violation(detail));
                        continue;
                    }
                }
            }
            Work::Actor { message, signature } => {
                (Signed::Own(message.clone()), signature.as_slice())
            }
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
        let Some(verifying_key) = verifying_key(&mut keys, key) else {
            batch_result.violations.push(
                check
                    .location
                    .violation("the registered public key is not a valid ed25519 key".into()),
            );
            continue;
        };
        match signed {
            Signed::Own(message) => candidates.push(Candidate {
                origin: Origin::Own(index),
                message,
                signature,
                key: verifying_key,
            }),
            Signed::Batch(message) => {
                let batch_key = BatchKey {
                    key,
                    signature: signature.to_bytes(),
                    message,
                };
                match group_of.get(&batch_key) {
                    Some(group) => {
                        if let Some(group) = groups.get_mut(*group) {
                            group.events.push(index);
                        }
                    }
                    None => {
                        group_of.insert(batch_key.clone(), groups.len());
                        groups.push(Group {
                            key: batch_key,
                            verifying_key,
                            signature,
                            events: vec![index],
                            state: GroupState::Elsewhere,
                        });
                    }
                }
            }
        }
    }
    drop(group_of);

    // Each batch signature: settled already, being verified by another check, or claimed here.
    let mut claims = Claims {
        verdicts,
        keys: Vec::new(),
    };
    if !groups.is_empty() {
        let mut map = verdicts.lock();
        for group in &mut groups {
            group.state = match map.get(&group.key) {
                Some(Verdict::Valid) => GroupState::Settled(true),
                Some(Verdict::Invalid) => GroupState::Settled(false),
                Some(Verdict::Pending) => GroupState::Elsewhere,
                None => {
                    if map.len() >= BATCH_VERDICTS_MAX {
                        map.retain(|_, verdict| *verdict == Verdict::Pending);
                    }
                    map.insert(group.key.clone(), Verdict::Pending);
                    claims.keys.push(group.key.clone());
                    candidates.push(Candidate {
                        origin: Origin::Batch,
                        message: group.key.message.clone(),
                        signature: group.signature,
                        key: group.verifying_key,
                    });
                    GroupState::Claimed(candidates.len() - 1)
                }
            };
        }
    }

    let valid = verify_candidates(&candidates);
    for (candidate, ok) in candidates.iter().zip(&valid) {
        match candidate.origin {
            Origin::Own(_) if *ok => batch_result.signatures_verified += 1,
            Origin::Own(check) => {
                if let Some(check) = checks.get(check) {
                    batch_result.violations.push(check.location.violation(
                        "signature does not verify under the key valid at signed_at".to_owned(),
                    ));
                }
            }
            Origin::Batch => {}
        }
    }
    let mut settled = Vec::with_capacity(claims.keys.len());
    for group in &mut groups {
        if let GroupState::Claimed(candidate) = group.state {
            let ok = valid.get(candidate).copied().unwrap_or(false);
            if ok {
                batch_result.batch_signatures_verified += 1;
            }
            settled.push((group.key.clone(), ok));
            group.state = GroupState::Settled(ok);
        }
    }
    if !settled.is_empty() {
        claims.settle(settled.into_iter());
    }
    await_verdicts(&mut groups, verdicts, &mut batch_result);

    for group in &groups {
        let GroupState::Settled(ok) = group.state else {
            continue;
        };
        for index in &group.events {
            if ok {
                batch_result.signatures_verified += 1;
                continue;
            }
            if let Some(check) = checks.get(*index)
                && let Work::Pool(event) = &check.work
                && let Some(membership) = event.batch.as_deref()
            {
                batch_result
                    .violations
                    .push(check.location.violation(unsigned_root(event, membership)));
            }
        }
    }
    batch_result
}

/// Whether each candidate's signature holds: all together, and one by one only if that fails.
fn verify_candidates(candidates: &[Candidate]) -> Vec<bool> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let messages: Vec<&[u8]> = candidates.iter().map(|c| c.message.as_slice()).collect();
    let signatures: Vec<Signature> = candidates.iter().map(|c| c.signature).collect();
    let keys: Vec<VerifyingKey> = candidates.iter().map(|c| c.key).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return vec![true; candidates.len()];
    }
    candidates
        .iter()
        .map(|c| c.key.verify(&c.message, &c.signature).is_ok())
        .collect()
}

/// Settles the groups another check claimed: waits for their verdicts; one given up (its worker
/// panicked) or already dropped from the map is verified here.
fn await_verdicts(groups: &mut [Group], verdicts: &BatchVerdicts, result: &mut CheckedBatch) {
    let mut map = verdicts.lock();
    loop {
        let mut waiting = false;
        for group in groups.iter_mut() {
            if !matches!(group.state, GroupState::Elsewhere) {
                continue;
            }
            match map.get(&group.key) {
                Some(Verdict::Valid) => group.state = GroupState::Settled(true),
                Some(Verdict::Invalid) => group.state = GroupState::Settled(false),
                Some(Verdict::Pending) => waiting = true,
                None => {
                    let ok = group
                        .verifying_key
                        .verify(&group.key.message, &group.signature)
                        .is_ok();
                    if ok {
                        result.batch_signatures_verified += 1;
                    }
                    group.state = GroupState::Settled(ok);
                }
            }
        }
        if !waiting {
            return;
        }
        map = verdicts
            .settled
            .wait(map)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

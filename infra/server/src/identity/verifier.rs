//! Batch verification of request signatures across concurrently arriving requests.
//!
//! Handlers hand each request's canonical bytes, signature and the actor's key to a
//! [`SignatureVerifier`] and await the answer. Worker threads (not tokio workers: a batch is
//! milliseconds of CPU) each take whatever is queued, up to [`SIGNATURE_BATCH`], and check it
//! with one `ed25519_dalek::verify_batch`, about 2.5 times cheaper per signature than checking
//! one by one. Nothing waits for a batch to fill: a lone request is a batch of one, checked at
//! once with `verify_strict`.
//!
//! When a batch fails, each of its signatures is checked alone with `verify_strict`, so a forged
//! request fails alone and never takes a good one with it. Signatures under a weak (small-order)
//! key never enter a batch: the batch equation would accept forgeries for such a key, and
//! `verify_strict` refuses them.
//!
//! What a passing batch proves: each signature was made with its key's secret (forging one is as
//! hard as for single verification). It differs from `verify_strict` in one corner only: a key's
//! holder can deliberately build a signature whose `R` carries a small-order component, which
//! `verify_strict` refuses and the batch equation may accept. No conforming signer produces one;
//! the replay audit checks signatures with the same batch equation.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::{Signature, SignatureError, VerifyingKey};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Most signatures checked in one `verify_batch` call. Past a few dozen the cost per signature
/// barely falls, while the last request of a batch waits for all of it.
pub const SIGNATURE_BATCH: usize = 64;
/// Worker threads checking batches. One saturates a core at ~50k signatures/s, far above what
/// the rest of the request path allows on two cores; a second keeps latency low while the first
/// is busy.
pub const VERIFY_WORKERS: usize = 2;
/// Decompressed keys kept; the directory holds few actors, so this only bounds memory.
const KEYS_CACHED_MAX: usize = 4_096;

/// A key ready for verification: decompressed once, its weakness known.
#[derive(Debug, Clone, Copy)]
pub struct ActorVerifyingKey {
    key: VerifyingKey,
    weak: bool,
}

impl ActorVerifyingKey {
    /// Decompresses `public_key`; fails if it is not a point on the curve.
    pub fn from_bytes(public_key: &[u8; 32]) -> Result<ActorVerifyingKey, SignatureError> {
        let key = VerifyingKey::from_bytes(public_key)?;
        Ok(ActorVerifyingKey {
            weak: key.is_weak(),
            key,
        })
    }

    fn verify_strict(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

/// One signature to check, and where its answer goes.
struct SignatureJob {
    message: Vec<u8>,
    signature: Signature,
    key: ActorVerifyingKey,
    answer: oneshot::Sender<bool>,
}

/// Hands signatures to the batch workers. Cheap to clone; the workers stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct SignatureVerifier {
    queue: Sender<SignatureJob>,
    keys: Arc<RwLock<HashMap<[u8; 32], ActorVerifyingKey>>>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignatureVerifier")
    }
}

impl SignatureVerifier {
    /// Starts `workers` verification threads, recording batch sizes in `metrics`.
    pub fn start(workers: usize, metrics: Arc<Metrics>) -> SignatureVerifier {
        let (queue, jobs) = channel::<SignatureJob>();
        let jobs = Arc::new(Mutex::new(jobs));
        for index in 0..workers.max(1) {
            let jobs = Arc::clone(&jobs);
            let metrics = Arc::clone(&metrics);
            let spawned = std::thread::Builder::new()
                .name(format!("allot-verify-{index}"))
                .spawn(move || run_worker(&jobs, &metrics));
            if let Err(error) = spawned {
                // With no worker at all, `verify` checks on tokio's blocking pool instead.
                tracing::error!(%error, "cannot start a signature verification thread");
            }
        }
        SignatureVerifier {
            queue,
            keys: Arc::default(),
        }
    }

    /// The decompressed key for `public_key`, from the cache when it has been seen.
    pub fn key(&self, public_key: &[u8; 32]) -> Result<ActorVerifyingKey, SignatureError> {
        let cached = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(public_key)
            .copied();
        if let Some(key) = cached {
            return Ok(key);
        }
        let key = ActorVerifyingKey::from_bytes(public_key)?;
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if keys.len() >= KEYS_CACHED_MAX {
            keys.clear();
        }
        keys.insert(*public_key, key);
        Ok(key)
    }

    /// Whether `signature` over `message` verifies under `key`, checked in a batch with whatever
    /// else is queued.
    pub async fn verify(
        &self,
        message: Vec<u8>,
        signature: Signature,
        key: ActorVerifyingKey,
    ) -> Result<bool, VerifierUnavailable> {
        let (answer, answered) = oneshot::channel();
        let job = SignatureJob {
            message,
            signature,
            key,
            answer,
        };
        match self.queue.send(job) {
            // A worker that dies holding the job drops its answer: nothing checked it.
            Ok(()) => answered.await.map_err(|_| VerifierUnavailable),
            Err(unsent) => {
                // No worker could be started: check this one on tokio's blocking pool.
                let job = unsent.0;
                tokio::task::spawn_blocking(move || {
                    job.key.verify_strict(&job.message, &job.signature)
                })
                .await
                .map_err(|_| VerifierUnavailable)
            }
        }
    }
}

/// The verification workers stopped before answering; the request was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature verification is unavailable")]
pub struct VerifierUnavailable;

/// A worker: takes what is queued (waiting only when nothing is), checks it, answers.
fn run_worker(jobs: &Mutex<Receiver<SignatureJob>>, metrics: &Metrics) {
    let mut batch = Vec::with_capacity(SIGNATURE_BATCH);
    loop {
        {
            let jobs = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match jobs.recv() {
                Ok(job) => batch.push(job),
                // Every sender is gone: the service is shutting down.
                Err(_) => return,
            }
            while batch.len() < SIGNATURE_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
        }
        metrics
            .signature_batch_signatures
            .observe(batch.len() as f64);
        let verdicts = verify_jobs(&batch);
        for (job, valid) in batch.drain(..).zip(verdicts) {
            // The request may have been abandoned by its client; nobody to tell then.
            let _ = job.answer.send(valid);
        }
    }
}

/// The verdict for each job, in order.
fn verify_jobs(jobs: &[SignatureJob]) -> Vec<bool> {
    let mut verdicts = vec![false; jobs.len()];
    let mut batched = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        if job.key.weak {
            // `verify_strict` refuses weak keys; the batch equation would not.
            continue;
        }
        batched.push(index);
    }
    // A batch of one gains nothing from the batch equation.
    let all_valid = batched.len() > 1 && {
        let messages: Vec<&[u8]> = batched
            .iter()
            .map(|&i| jobs[i].message.as_slice())
            .collect();
        let signatures: Vec<Signature> = batched.iter().map(|&i| jobs[i].signature).collect();
        let keys: Vec<VerifyingKey> = batched.iter().map(|&i| jobs[i].key.key).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    if all_valid {
        for &index in &batched {
            verdicts[index] = true;
        }
    } else {
        // A lone signature, or a batch with at least one bad signature: check each alone so
        // exactly the bad ones fail.
        for &index in &batched {
            verdicts[index] = jobs[index]
                .key
                .verify_strict(&jobs[index].message, &jobs[index].signature);
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn key_of(signing: &SigningKey) -> ActorVerifyingKey {
        ActorVerifyingKey::from_bytes(&signing.verifying_key().to_bytes()).expect("a curve point")
    }

    fn job(message: &[u8], signature: Signature, key: ActorVerifyingKey) -> SignatureJob {
        let (answer, _) = oneshot::channel();
        SignatureJob {
            message: message.to_vec(),
            signature,
            key,
            answer,
        }
    }

    /// A signature that verifies under the identity point (a weak key) for any message:
    /// R = s·B makes the batch equation hold whatever the message.
    fn weak_key_forgery() -> (ActorVerifyingKey, Signature) {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = ActorVerifyingKey::from_bytes(&identity).expect("the identity point");
        let donor = signing_key(77);
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&donor.verifying_key().to_bytes());
        bytes[32..].copy_from_slice(&donor.to_scalar().to_bytes());
        (weak, Signature::from_bytes(&bytes))
    }

    #[test]
    fn a_batch_with_forgeries_refuses_exactly_the_forgeries() {
        let alice = signing_key(1);
        let bob = signing_key(2);
        let mut jobs = Vec::new();
        let mut expected = Vec::new();
        for n in 0..40u32 {
            let message = format!("reserve pool-{n} token-{n}").into_bytes();
            let (signer, claimed, message_sent, valid) = match n % 5 {
                // Signed over other parameters than those sent.
                1 => (
                    &alice,
                    &alice,
                    format!("reserve pool-{n} token-x").into_bytes(),
                    false,
                ),
                // Signed by bob, claimed as alice.
                3 => (&bob, &alice, message.clone(), false),
                _ if n % 2 == 0 => (&alice, &alice, message.clone(), true),
                _ => (&bob, &bob, message.clone(), true),
            };
            jobs.push(job(&message_sent, signer.sign(&message), key_of(claimed)));
            expected.push(valid);
        }
        // The unchanged signature bytes of a good request, flipped in s.
        let message = b"reserve pool-x token-y".to_vec();
        let mut flipped = alice.sign(&message).to_bytes();
        flipped[40] ^= 1;
        jobs.push(job(
            &message,
            Signature::from_bytes(&flipped),
            key_of(&alice),
        ));
        expected.push(false);
        assert_eq!(verify_jobs(&jobs), expected);
    }

    #[test]
    fn an_all_good_batch_passes_and_a_lone_forgery_fails() {
        let alice = signing_key(1);
        let jobs: Vec<SignatureJob> = (0..SIGNATURE_BATCH)
            .map(|n| {
                let message = format!("confirm pool:{n}").into_bytes();
                job(&message, alice.sign(&message), key_of(&alice))
            })
            .collect();
        assert!(verify_jobs(&jobs).iter().all(|&valid| valid));
        let lone = job(b"other", alice.sign(b"signed"), key_of(&alice));
        assert_eq!(verify_jobs(&[lone]), vec![false]);
        assert_eq!(verify_jobs(&[]), Vec::<bool>::new());
    }

    #[test]
    fn a_weak_key_forgery_is_refused_even_though_the_batch_equation_holds() {
        let (weak, forged) = weak_key_forgery();
        let alice = signing_key(1);
        let message = b"close pool-1".to_vec();
        let good = alice.sign(&message);
        // The batch equation alone would accept the forgery: that is why weak keys stay out.
        assert!(
            ed25519_dalek::verify_batch(
                &[b"anything at all".as_slice(), message.as_slice()],
                &[forged, good],
                &[weak.key, key_of(&alice).key],
            )
            .is_ok()
        );
        let jobs = [
            job(b"anything at all", forged, weak),
            job(&message, good, key_of(&alice)),
        ];
        assert_eq!(verify_jobs(&jobs), vec![false, true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_get_exactly_their_own_verdicts() {
        let verifier = SignatureVerifier::start(VERIFY_WORKERS, Arc::new(Metrics::new()));
        let alice = signing_key(1);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..500u32 {
            let verifier = verifier.clone();
            let message = format!("cancel pool:{n}").into_bytes();
            let forged = n % 7 == 3;
            let signature = if forged {
                alice.sign(format!("cancel pool:{}", n + 1).as_bytes())
            } else {
                alice.sign(&message)
            };
            let key = verifier
                .key(&alice.verifying_key().to_bytes())
                .expect("a curve point");
            tasks.spawn(async move {
                let valid = verifier.verify(message, signature, key).await;
                (n, forged, valid)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (n, forged, valid) = joined.expect("task ran");
            assert_eq!(valid, Ok(!forged), "request {n}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_is_answered_without_waiting_for_a_batch() {
        let verifier = SignatureVerifier::start(VERIFY_WORKERS, Arc::new(Metrics::new()));
        let alice = signing_key(1);
        let key = verifier
            .key(&alice.verifying_key().to_bytes())
            .expect("a curve point");
        for n in 0..3u32 {
            let message = format!("reserve pool-{n}").into_bytes();
            let signature = alice.sign(&message);
            let started = std::time::Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                verifier.verify(message, signature, key),
            )
            .await;
            assert_eq!(answer, Ok(Ok(true)));
            // One signature takes well under a millisecond; allow a very busy machine.
            assert!(started.elapsed() < Duration::from_millis(500));
        }
    }

    #[test]
    fn an_invalid_public_key_is_refused_when_decompressed() {
        let verifier = SignatureVerifier::start(1, Arc::new(Metrics::new()));
        // y = 2 is not the y-coordinate of a curve point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(verifier.key(&not_a_point).is_err());
    }
}

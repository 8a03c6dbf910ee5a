//! The instance's own key at work: it signs the seals of the log's group commits, once per
//! batch, for the receipts of the batch's commands and for the signed head.
//! Must not: sign anything but `allot_domain::integrity::seal_signing_bytes` (the `server`
//! role may do nothing else), or sign one batch twice for its receipts.

use std::sync::{Arc, Mutex};

use allot_client::receipt::{HEAD_FORMAT, RECEIPT_FORMAT, Receipt, SignedHead};
use allot_domain::ActorId;
use allot_domain::integrity::{Seal, seal_signing_bytes};
use ed25519_dalek::{Signer, SigningKey};

use crate::metrics::Metrics;
use crate::service::RecordedAt;
use crate::store::SealedBatch;

/// Signs seals as one server instance (its actor id names it in every receipt).
pub struct SealSigner {
    actor: ActorId,
    key: SigningKey,
    public_key: [u8; 32],
    metrics: Arc<Metrics>,
    /// The last head signed: `GET /v1/head` between two batches signs nothing new.
    head: Mutex<Option<(Seal, [u8; 64])>>,
}

impl std::fmt::Debug for SealSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealSigner")
            .field("actor", &self.actor)
            .field("public_key", &hex::encode(self.public_key))
            .finish_non_exhaustive()
    }
}

impl SealSigner {
    pub fn new(actor: ActorId, key: SigningKey, metrics: Arc<Metrics>) -> SealSigner {
        let public_key = key.verifying_key().to_bytes();
        SealSigner {
            actor,
            key,
            public_key,
            metrics,
            head: Mutex::new(None),
        }
    }

    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn sign(&self, seal: &Seal) -> [u8; 64] {
        self.metrics.seal_signatures.inc();
        self.key
            .sign(&seal_signing_bytes(self.actor.as_str(), seal))
            .to_bytes()
    }

    /// The batch's signature, made by the first receipt of the batch that needs it.
    fn batch_signature(&self, batch: &SealedBatch) -> [u8; 64] {
        *batch.signature.get_or_init(|| self.sign(&batch.seal))
    }

    /// The receipt of the event at `recorded`; `None` if the position is not in its batch's
    /// tree (the store broke its word; logged).
    pub fn receipt(&self, recorded: &RecordedAt) -> Option<Receipt> {
        let batch = &recorded.batch;
        let seal = batch.seal;
        let index = recorded
            .position
            .checked_sub(seal.first_position)
            .and_then(|index| usize::try_from(index).ok());
        let (Some(index), Some(event_digest)) = (
            index,
            index.and_then(|index| batch.tree.leaves().get(index).copied()),
        ) else {
            tracing::error!(
                position = recorded.position,
                first_position = seal.first_position,
                event_count = seal.event_count,
                "an appended event is not in its sealed batch; no receipt"
            );
            return None;
        };
        Some(Receipt {
            format: RECEIPT_FORMAT,
            server: self.actor.to_string(),
            server_key: self.public_key,
            position: recorded.position,
            stream: recorded.stream.to_string(),
            version: recorded.version,
            event_id: recorded.id,
            event_kind: recorded.kind.to_owned(),
            event_payload: recorded.payload.clone(),
            event_digest,
            index: u32::try_from(index).ok()?,
            count: seal.event_count,
            proof: batch.tree.proof(index)?,
            seal: seal.into(),
            signature: self.batch_signature(batch),
        })
    }

    /// `seal` (the newest batch's) signed as the head.
    pub fn head(&self, seal: Seal) -> SignedHead {
        let mut last = self
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let signature = match *last {
            Some((signed, signature)) if signed == seal => signature,
            _ => {
                let signature = self.sign(&seal);
                *last = Some((seal, signature));
                signature
            }
        };
        SignedHead {
            format: HEAD_FORMAT,
            server: self.actor.to_string(),
            server_key: self.public_key,
            position: seal.head_position(),
            seal: seal.into(),
            signature,
        }
    }
}

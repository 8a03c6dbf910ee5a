//! Receipts and the signed head as a client keeps them, and their offline verification.
//!
//! A receipt is the `receipt` member of an acknowledged command's answer: the recorded event
//! (its position, stream, version, id, kind and payload), its leaf, where it sits in its group
//! commit (`index` of `count`) with the inclusion proof, the batch's seal and the server's
//! ed25519 signature over the seal's bytes (`allot_domain::integrity::seal_signing_bytes`). The
//! signed head (`GET /v1/head`) is the newest seal, signed the same way. Both are published in
//! `docs/signing.md` ("Receipts", with test vectors).
//!
//! [`verify`] checks, in this order, stopping at the first failure: the format, the server id,
//! the server key (and that it is the pinned one, if given), the event fields' lengths, the leaf
//! of the event fields against `event_digest`, `count` against the seal, the position inside
//! the batch and `index`, the proof against the root, the chain step, and last the signature.
//! Digests and signatures are lower-case hex; any other spelling is refused, so a receipt has
//! one text per content.
//! Must not: trust anything the receipt does not prove (it never asks the server).

use allot_domain::command::is_valid_actor_id;
use allot_domain::integrity::{self, Digest, EventEntry, Seal, seal_signing_bytes};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The receipt format this crate writes and checks.
pub const RECEIPT_FORMAT: u32 = 1;
/// The signed head format this crate writes and checks.
pub const HEAD_FORMAT: u32 = 1;

/// A batch's seal as receipts and the head carry it (digests in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealJson {
    pub first_position: u64,
    pub event_count: u32,
    #[serde(with = "hex_array")]
    pub root: Digest,
    #[serde(with = "hex_array")]
    pub prev_chain: Digest,
    #[serde(with = "hex_array")]
    pub chain: Digest,
}

impl From<Seal> for SealJson {
    fn from(seal: Seal) -> SealJson {
        SealJson {
            first_position: seal.first_position,
            event_count: seal.event_count,
            root: seal.root,
            prev_chain: seal.prev_chain,
            chain: seal.chain,
        }
    }
}

impl From<SealJson> for Seal {
    fn from(seal: SealJson) -> Seal {
        Seal {
            first_position: seal.first_position,
            event_count: seal.event_count,
            root: seal.root,
            prev_chain: seal.prev_chain,
            chain: seal.chain,
        }
    }
}

/// What a client keeps of an acknowledged command: proof that its event is in a sealed,
/// chained batch signed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`RECEIPT_FORMAT`].
    pub format: u32,
    /// The server instance's actor id (role `server`).
    pub server: String,
    #[serde(with = "hex_array")]
    pub server_key: [u8; 32],
    pub position: u64,
    pub stream: String,
    pub version: u64,
    #[serde(with = "hex_array")]
    pub event_id: [u8; 16],
    pub event_kind: String,
    #[serde(with = "hex_vec")]
    pub event_payload: Vec<u8>,
    /// The event's leaf: `H(0x00 ‖ entry)` over the fields above.
    #[serde(with = "hex_array")]
    pub event_digest: Digest,
    /// The event's place in its batch, 0-based.
    pub index: u32,
    /// Events in the batch.
    pub count: u32,
    /// Siblings from the leaf up to the root, bottom first.
    #[serde(with = "hex_digests")]
    pub proof: Vec<Digest>,
    pub seal: SealJson,
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

impl Receipt {
    /// The event as its leaf commits to it.
    pub fn entry(&self) -> EventEntry<'_> {
        EventEntry {
            position: self.position,
            version: self.version,
            stream: &self.stream,
            id: self.event_id,
            kind: &self.event_kind,
            payload: &self.event_payload,
        }
    }
}

/// The newest batch's seal, signed by the server: the log's head is `position` events long
/// and its chain value is `seal.chain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// [`HEAD_FORMAT`].
    pub format: u32,
    pub server: String,
    #[serde(with = "hex_array")]
    pub server_key: [u8; 32],
    /// `seal.first_position + seal.event_count`.
    pub position: u64,
    pub seal: SealJson,
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// Why a receipt or a signed head does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("format {format} is not known (this verifier reads format {known})")]
    UnknownFormat { format: u32, known: u32 },
    #[error("server id {0:?} is not an actor id")]
    MalformedServer(String),
    #[error("server_key is not an ed25519 public key")]
    MalformedKey,
    #[error("signed by key {found}, not the pinned key {pinned}")]
    NotPinnedKey { found: String, pinned: String },
    #[error("{field} is {bytes} bytes, more than the {max} a leaf can encode")]
    FieldTooLong {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("the event fields do not hash to event_digest")]
    DigestMismatch,
    #[error("count {count} is not the seal's event_count {event_count}")]
    CountMismatch { count: u32, event_count: u32 },
    #[error("position {position} is not in the sealed batch {first}..{end}")]
    PositionOutsideBatch { position: u64, first: u64, end: u64 },
    #[error("index {index} is not the position's place in the batch ({expected})")]
    IndexMismatch { index: u32, expected: u64 },
    #[error("the inclusion proof does not lead to the batch root")]
    ProofMismatch,
    #[error("the chain value does not follow from prev_chain and the batch")]
    ChainMismatch,
    #[error("head position {position} is not first_position + event_count ({expected})")]
    HeadPositionMismatch { position: u64, expected: u64 },
    #[error("the server's signature does not verify over the seal")]
    BadSignature,
}

fn check_format(format: u32, known: u32) -> Result<(), ReceiptError> {
    if format == known {
        Ok(())
    } else {
        Err(ReceiptError::UnknownFormat { format, known })
    }
}

/// The server id and key, checked against the pinned key if there is one.
fn check_signer(
    server: &str,
    server_key: &[u8; 32],
    pinned: Option<&VerifyingKey>,
) -> Result<VerifyingKey, ReceiptError> {
    if !is_valid_actor_id(server) {
        return Err(ReceiptError::MalformedServer(server.to_owned()));
    }
    let key = VerifyingKey::from_bytes(server_key).map_err(|_| ReceiptError::MalformedKey)?;
    if let Some(pinned) = pinned
        && pinned != &key
    {
        return Err(ReceiptError::NotPinnedKey {
            found: hex::encode(server_key),
            pinned: hex::encode(pinned.to_bytes()),
        });
    }
    Ok(key)
}

fn check_signature(
    key: &VerifyingKey,
    server: &str,
    seal: &Seal,
    signature: &[u8; 64],
) -> Result<(), ReceiptError> {
    key.verify_strict(
        &seal_signing_bytes(server, seal),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| ReceiptError::BadSignature)
}

fn check_len(field: &'static str, bytes: usize, max: usize) -> Result<(), ReceiptError> {
    if bytes > max {
        return Err(ReceiptError::FieldTooLong { field, bytes, max });
    }
    Ok(())
}

/// Checks a receipt offline: that its event fields hash to its digest, that the digest is
/// included in the sealed batch, that the seal's chain step holds, and that the server's key
/// signed the seal. With `pinned_key`, the receipt must name that key; without, the key the
/// receipt names is trusted as given (pin it, or check it against the `actors` stream, as
/// `allot audit --receipts` does).
pub fn verify(receipt: &Receipt, pinned_key: Option<&VerifyingKey>) -> Result<(), ReceiptError> {
    check_format(receipt.format, RECEIPT_FORMAT)?;
    let key = check_signer(&receipt.server, &receipt.server_key, pinned_key)?;
    // The leaf encodes these lengths as u16, u16 and u32.
    check_len("stream", receipt.stream.len(), usize::from(u16::MAX))?;
    check_len(
        "event_kind",
        receipt.event_kind.len(),
        usize::from(u16::MAX),
    )?;
    check_len(
        "event_payload",
        receipt.event_payload.len(),
        u32::MAX as usize,
    )?;
    if receipt.entry().leaf() != receipt.event_digest {
        return Err(ReceiptError::DigestMismatch);
    }
    let seal = Seal::from(receipt.seal);
    if receipt.count != seal.event_count {
        return Err(ReceiptError::CountMismatch {
            count: receipt.count,
            event_count: seal.event_count,
        });
    }
    let end = seal.head_position();
    if receipt.position < seal.first_position || receipt.position >= end {
        return Err(ReceiptError::PositionOutsideBatch {
            position: receipt.position,
            first: seal.first_position,
            end,
        });
    }
    let expected = receipt.position - seal.first_position;
    if u64::from(receipt.index) != expected {
        return Err(ReceiptError::IndexMismatch {
            index: receipt.index,
            expected,
        });
    }
    integrity::check_inclusion(
        &seal,
        receipt.position,
        &receipt.event_digest,
        &receipt.proof,
    )
    .map_err(|error| match error {
        integrity::ReceiptError::PositionOutsideBatch {
            position,
            first,
            end,
        } => ReceiptError::PositionOutsideBatch {
            position,
            first,
            end,
        },
        integrity::ReceiptError::ProofMismatch => ReceiptError::ProofMismatch,
        integrity::ReceiptError::ChainMismatch => ReceiptError::ChainMismatch,
    })?;
    check_signature(&key, &receipt.server, &seal, &receipt.signature)
}

/// Checks a signed head offline: format, server and key (pinned if given), that `position` is
/// the seal's end, the chain step, and the signature.
pub fn verify_head(
    head: &SignedHead,
    pinned_key: Option<&VerifyingKey>,
) -> Result<(), ReceiptError> {
    check_format(head.format, HEAD_FORMAT)?;
    let key = check_signer(&head.server, &head.server_key, pinned_key)?;
    let seal = Seal::from(head.seal);
    let expected = seal.head_position();
    if head.position != expected {
        return Err(ReceiptError::HeadPositionMismatch {
            position: head.position,
            expected,
        });
    }
    if !seal.chain_holds() {
        return Err(ReceiptError::ChainMismatch);
    }
    check_signature(&key, &head.server, &seal, &head.signature)
}

/// Lower-case hex only: one spelling per value.
fn decode_hex<E: serde::de::Error>(text: &str) -> Result<Vec<u8>, E> {
    if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(E::custom("expected lower-case hex"));
    }
    hex::decode(text).map_err(E::custom)
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = super::decode_hex::<D::Error>(&text)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex, got {len}")))
    }
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::decode_hex::<D::Error>(&text)
    }
}

mod hex_digests {
    use allot_domain::integrity::Digest;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(digests: &[Digest], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(digests.len()))?;
        for digest in digests {
            seq.serialize_element(&hex::encode(digest))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Digest>, D::Error> {
        let texts = <Vec<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let bytes = super::decode_hex::<D::Error>(text)?;
                let len = bytes.len();
                bytes.try_into().map_err(|_| {
                    serde::de::Error::custom(format!("expected 32 bytes of hex, got {len}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_domain::integrity::{MerkleTree, chain, genesis};
    use ed25519_dalek::{Signer, SigningKey};

    fn receipt(index: usize) -> Receipt {
        let key = SigningKey::from_bytes(&[3; 32]);
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3]).collect();
        let entry = |i: usize| EventEntry {
            position: 10 + i as u64,
            version: i as u64,
            stream: "pool-a",
            id: [i as u8; 16],
            kind: "Reserved",
            payload: &payloads[i],
        };
        let tree = MerkleTree::new((0..5).map(|i| entry(i).leaf()).collect()).expect("leaves");
        let prev = genesis(&[1; 16]);
        let seal = Seal {
            first_position: 10,
            event_count: 5,
            root: tree.root(),
            prev_chain: prev,
            chain: chain(&prev, 10, 5, &tree.root()),
        };
        Receipt {
            format: RECEIPT_FORMAT,
            server: "server-1".to_owned(),
            server_key: key.verifying_key().to_bytes(),
            position: 10 + index as u64,
            stream: "pool-a".to_owned(),
            version: index as u64,
            event_id: [index as u8; 16],
            event_kind: "Reserved".to_owned(),
            event_payload: payloads[index].clone(),
            event_digest: tree.leaves()[index],
            index: index as u32,
            count: 5,
            proof: tree.proof(index).expect("in range"),
            seal: seal.into(),
            signature: key.sign(&seal_signing_bytes("server-1", &seal)).to_bytes(),
        }
    }

    #[test]
    fn a_receipt_verifies_and_round_trips_through_json() {
        for index in 0..5 {
            let receipt = receipt(index);
            let key = VerifyingKey::from_bytes(&receipt.server_key).expect("key");
            assert_eq!(verify(&receipt, Some(&key)), Ok(()));
            let text = serde_json::to_string(&receipt).expect("json");
            let back: Receipt = serde_json::from_str(&text).expect("parse");
            assert_eq!(back, receipt);
        }
    }

    #[test]
    fn each_check_names_what_failed() {
        let good = receipt(3);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(matches!(
            verify(&good, Some(&other)),
            Err(ReceiptError::NotPinnedKey { .. })
        ));
        type Change = fn(&mut Receipt);
        let cases: [(Change, ReceiptError); 7] = [
            (
                |r| r.format = 2,
                ReceiptError::UnknownFormat {
                    format: 2,
                    known: 1,
                },
            ),
            (|r| r.version += 1, ReceiptError::DigestMismatch),
            (
                |r| r.count = 4,
                ReceiptError::CountMismatch {
                    count: 4,
                    event_count: 5,
                },
            ),
            (
                |r| r.index = 2,
                ReceiptError::IndexMismatch {
                    index: 2,
                    expected: 3,
                },
            ),
            (|r| r.proof[0][0] ^= 1, ReceiptError::ProofMismatch),
            (|r| r.seal.chain[0] ^= 1, ReceiptError::ChainMismatch),
            (|r| r.signature[0] ^= 1, ReceiptError::BadSignature),
        ];
        for (change, error) in cases {
            let mut bad = good.clone();
            change(&mut bad);
            assert_eq!(verify(&bad, None), Err(error));
        }
    }

    #[test]
    fn upper_case_hex_is_refused() {
        let text = serde_json::to_string(&receipt(0)).expect("json");
        let upper = text.replacen(
            &hex::encode(receipt(0).signature),
            &hex::encode_upper(receipt(0).signature),
            1,
        );
        assert!(serde_json::from_str::<Receipt>(&upper).is_err());
    }
}

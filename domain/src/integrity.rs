//! The log's integrity proofs as pure functions: event leaves, Merkle batch roots and inclusion
//! proofs, the hash chain, and the bytes a server signs over one group commit (a *seal*).
//!
//! Owns the definitions the store (writing, opening, verifying reads), the audit and any client
//! checking a receipt offline must agree on byte for byte. Must not: sign, read keys or do I/O;
//! signatures are made and checked at the edges over [`seal_signing_bytes`].
//!
//! Published format (`docs/signing.md`, "Receipts", with vectors). `H` is blake3 (32 bytes);
//! integers are little-endian.
//!
//! ```text
//! entry(e)        = position u64 ‖ version u64 ‖ stream_len u16 ‖ stream
//!                   ‖ id[16] ‖ kind_len u16 ‖ kind ‖ payload_len u32 ‖ payload
//! leaf(e)         = H(0x00 ‖ entry(e))                        the event's digest
//! node(l, r)      = H(0x01 ‖ l ‖ r)
//! root(leaves)    = RFC 6962 shape: pair neighbours level by level, an odd last node is
//!                   promoted unchanged to the next level; root of one leaf = that leaf
//! genesis(log_id) = H("allot-chain-genesis-v1" ‖ log_id[16])
//! chain(prev, b)  = H("allot-chain-v1" ‖ prev ‖ first_position u64 ‖ event_count u32 ‖ root)
//! seal bytes      = "allot-seal-v1" ‖ server_len u16 ‖ server ‖ first_position u64
//!                   ‖ event_count u32 ‖ root ‖ prev_chain ‖ chain
//! ```
//!
//! A batch here is the store's group commit: the events one write and one fdatasync made
//! durable, in position order. Any change, removal or reordering of an event changes its leaf,
//! its batch's root and every chain value from that batch on.

/// A blake3 digest.
pub type Digest = [u8; 32];

pub const LEAF_PREFIX: u8 = 0x00;
pub const NODE_PREFIX: u8 = 0x01;
pub const GENESIS_PREFIX: &[u8] = b"allot-chain-genesis-v1";
pub const CHAIN_PREFIX: &[u8] = b"allot-chain-v1";
pub const SEAL_PREFIX: &[u8] = b"allot-seal-v1";

/// One event as the leaf commits to it.
#[derive(Debug, Clone, Copy)]
pub struct EventEntry<'a> {
    pub position: u64,
    pub version: u64,
    pub stream: &'a str,
    pub id: [u8; 16],
    pub kind: &'a str,
    pub payload: &'a [u8],
}

impl EventEntry<'_> {
    /// `leaf(e)`: the event's digest. Streams, kinds and payloads are within the store's limits
    /// (u16 and u32 lengths), which the store checks before anything is written.
    pub fn leaf(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&[LEAF_PREFIX]);
        h.update(&self.position.to_le_bytes());
        h.update(&self.version.to_le_bytes());
        h.update(&(self.stream.len() as u16).to_le_bytes());
        h.update(self.stream.as_bytes());
        h.update(&self.id);
        h.update(&(self.kind.len() as u16).to_le_bytes());
        h.update(self.kind.as_bytes());
        h.update(&(self.payload.len() as u32).to_le_bytes());
        h.update(self.payload);
        *h.finalize().as_bytes()
    }
}

pub fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_PREFIX]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A batch's Merkle tree, every level kept so each leaf's proof is read off, not recomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[0]` are the leaves; the last level holds the root alone.
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    /// The tree over `leaves`; `None` for no leaves (a batch always has one).
    pub fn new(leaves: Vec<Digest>) -> Option<MerkleTree> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|level| level.len() > 1) {
            let next = next_level(top);
            levels.push(next);
        }
        Some(MerkleTree { levels })
    }

    pub fn root(&self) -> Digest {
        self.levels
            .last()
            .and_then(|top| top.first())
            .copied()
            .unwrap_or_default()
    }

    pub fn leaves(&self) -> &[Digest] {
        self.levels.first().map_or(&[], |leaves| leaves.as_slice())
    }

    /// The siblings from leaf `index` up to the root, bottom first; a level where the node is
    /// promoted contributes none. `None` if `index` is out of range.
    pub fn proof(&self, index: usize) -> Option<Vec<Digest>> {
        if index >= self.leaves().len() {
            return None;
        }
        let mut proof = Vec::with_capacity(self.levels.len());
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                proof.push(*sibling);
            }
            i /= 2;
        }
        Some(proof)
    }
}

/// The Merkle root of `leaves`; `None` for no leaves.
pub fn root(leaves: &[Digest]) -> Option<Digest> {
    let mut level: Vec<Digest> = leaves.to_vec();
    if level.is_empty() {
        return None;
    }
    while level.len() > 1 {
        level = next_level(&level);
    }
    Some(level[0])
}

fn next_level(level: &[Digest]) -> Vec<Digest> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => node(left, right),
            [odd] => *odd,
            _ => unreachable!("chunks(2) yields one or two"),
        })
        .collect()
}

/// The proof of leaf `index` of `leaves` (see [`MerkleTree::proof`]).
pub fn inclusion_proof(leaves: &[Digest], index: usize) -> Option<Vec<Digest>> {
    MerkleTree::new(leaves.to_vec())?.proof(index)
}

/// The root that `proof` leads to from `leaf` at `index` of `count` leaves; `None` if the proof
/// has the wrong number of steps for that shape.
pub fn root_from_proof(leaf: &Digest, index: u64, count: u64, proof: &[Digest]) -> Option<Digest> {
    if index >= count {
        return None;
    }
    let (mut hash, mut i, mut n) = (*leaf, index, count);
    let mut steps = proof.iter();
    while n > 1 {
        if i % 2 == 1 {
            hash = node(steps.next()?, &hash);
        } else if i + 1 < n {
            hash = node(&hash, steps.next()?);
        }
        i /= 2;
        n = n.div_ceil(2);
    }
    match steps.next() {
        None => Some(hash),
        Some(_) => None,
    }
}

/// The chain value before a log's first batch.
pub fn genesis(log_id: &[u8; 16]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(GENESIS_PREFIX);
    h.update(log_id);
    *h.finalize().as_bytes()
}

/// The chain value after a batch whose events start at `first_position`.
pub fn chain(prev: &Digest, first_position: u64, event_count: u32, root: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(CHAIN_PREFIX);
    h.update(prev);
    h.update(&first_position.to_le_bytes());
    h.update(&event_count.to_le_bytes());
    h.update(root);
    *h.finalize().as_bytes()
}

/// One sealed group commit: what a server signs once per batch, and what every receipt of the
/// batch (and the published head) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub first_position: u64,
    pub event_count: u32,
    pub root: Digest,
    pub prev_chain: Digest,
    pub chain: Digest,
}

impl Seal {
    /// The position after the batch: the number of events the chain value covers.
    pub fn head_position(&self) -> u64 {
        self.first_position + u64::from(self.event_count)
    }

    /// Whether `chain` follows from `prev_chain` and the batch fields.
    pub fn chain_holds(&self) -> bool {
        chain(
            &self.prev_chain,
            self.first_position,
            self.event_count,
            &self.root,
        ) == self.chain
    }
}

/// The bytes a server instance named `server` (its actor id) signs for one seal.
pub fn seal_signing_bytes(server: &str, seal: &Seal) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SEAL_PREFIX.len() + 2 + server.len() + 12 + 96);
    bytes.extend_from_slice(SEAL_PREFIX);
    bytes.extend_from_slice(&(server.len() as u16).to_le_bytes());
    bytes.extend_from_slice(server.as_bytes());
    bytes.extend_from_slice(&seal.first_position.to_le_bytes());
    bytes.extend_from_slice(&seal.event_count.to_le_bytes());
    bytes.extend_from_slice(&seal.root);
    bytes.extend_from_slice(&seal.prev_chain);
    bytes.extend_from_slice(&seal.chain);
    bytes
}

/// Why a receipt does not hold together (signature aside, which the edge checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("position {position} is not in the sealed batch {first}..{end}")]
    PositionOutsideBatch { position: u64, first: u64, end: u64 },
    #[error("the inclusion proof does not lead to the batch root")]
    ProofMismatch,
    #[error("the chain value does not follow from the previous one and the batch")]
    ChainMismatch,
}

/// Checks that `leaf` at `position` is included in `seal` by `proof`, and that the seal's chain
/// value follows from its previous one.
pub fn check_inclusion(
    seal: &Seal,
    position: u64,
    leaf: &Digest,
    proof: &[Digest],
) -> Result<(), ReceiptError> {
    let end = seal.head_position();
    if position < seal.first_position || position >= end {
        return Err(ReceiptError::PositionOutsideBatch {
            position,
            first: seal.first_position,
            end,
        });
    }
    let index = position - seal.first_position;
    if root_from_proof(leaf, index, u64::from(seal.event_count), proof) != Some(seal.root) {
        return Err(ReceiptError::ProofMismatch);
    }
    if !seal.chain_holds() {
        return Err(ReceiptError::ChainMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| {
                EventEntry {
                    position: i as u64,
                    version: 0,
                    stream: "pool-a",
                    id: [i as u8; 16],
                    kind: "Reserved",
                    payload: &[1, 2, 3],
                }
                .leaf()
            })
            .collect()
    }

    #[test]
    fn every_proof_of_every_shape_leads_to_the_root_and_only_there() {
        for n in 1..=17 {
            let leaves = leaves(n);
            let root = root(&leaves).unwrap();
            for (i, leaf) in leaves.iter().enumerate() {
                let proof = inclusion_proof(&leaves, i).unwrap();
                let tree = MerkleTree::new(leaves.clone()).unwrap();
                assert_eq!((tree.root(), tree.proof(i)), (root, Some(proof.clone())));
                assert_eq!(
                    root_from_proof(leaf, i as u64, n as u64, &proof),
                    Some(root)
                );
                // Another leaf, another index or a changed sibling leads elsewhere.
                let other = leaves[(i + 1) % n];
                if n > 1 {
                    assert_ne!(
                        root_from_proof(&other, i as u64, n as u64, &proof),
                        Some(root)
                    );
                }
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][0] ^= 1;
                    assert_ne!(root_from_proof(leaf, i as u64, n as u64, &bad), Some(root));
                }
            }
        }
    }

    #[test]
    fn a_root_of_one_leaf_is_the_leaf_and_odd_nodes_are_promoted() {
        let l = leaves(3);
        assert_eq!(root(&l[..1]), Some(l[0]));
        assert_eq!(root(&l), Some(node(&node(&l[0], &l[1]), &l[2])));
        assert_eq!(root(&[]), None);
    }

    #[test]
    fn the_leaf_binds_every_field() {
        let base = EventEntry {
            position: 5,
            version: 2,
            stream: "pool-a",
            id: [9; 16],
            kind: "Reserved",
            payload: b"xy",
        };
        let leaf = base.leaf();
        let changed = [
            EventEntry {
                position: 6,
                ..base
            },
            EventEntry { version: 3, ..base },
            EventEntry {
                stream: "pool-b",
                ..base
            },
            EventEntry {
                id: [8; 16],
                ..base
            },
            EventEntry {
                kind: "Confirmed",
                ..base
            },
            EventEntry {
                payload: b"xz",
                ..base
            },
        ];
        for entry in changed {
            assert_ne!(entry.leaf(), leaf, "{entry:?}");
        }
    }

    #[test]
    fn a_seal_checks_its_chain_and_inclusion() {
        let l = leaves(5);
        let root = root(&l).unwrap();
        let prev = genesis(&[7; 16]);
        let seal = Seal {
            first_position: 10,
            event_count: 5,
            root,
            prev_chain: prev,
            chain: chain(&prev, 10, 5, &root),
        };
        let proof = inclusion_proof(&l, 3).unwrap();
        assert_eq!(check_inclusion(&seal, 13, &l[3], &proof), Ok(()));
        assert_eq!(
            check_inclusion(&seal, 12, &l[3], &proof),
            Err(ReceiptError::ProofMismatch)
        );
        assert!(matches!(
            check_inclusion(&seal, 15, &l[3], &proof),
            Err(ReceiptError::PositionOutsideBatch { .. })
        ));
        let bad = Seal {
            chain: [0; 32],
            ..seal
        };
        assert_eq!(
            check_inclusion(&bad, 13, &l[3], &proof),
            Err(ReceiptError::ChainMismatch)
        );
    }
}

//! Signed submission batches: many pool commands, one signature.
//!
//! Owns the canonical form a client signs for a batch and what each recorded event keeps so the
//! offline audit can prove, event by event, that its actor signed that command. Must not: sign,
//! verify signatures or read keys (the edges do, over [`batch_signing_bytes`]).
//!
//! Published format (`docs/signing.md`, "Batches", with vectors). `H` is blake3; the tree is
//! the one of [`crate::integrity`] (RFC 6962 shape, an odd last node promoted).
//!
//! ```text
//! member(i)   = the allot-sig-v1 bytes of command i (crate::signing::signing_bytes), with the
//!               batch's actor and signed_at and the member's own token
//! leaf(i)     = H(0x00 ‖ member(i))
//! root        = Merkle root over leaf(0) .. leaf(count-1), in the batch's order
//! batch bytes = "allot-batch-v1\n"
//!               field("root", <64 lowercase hex digits>)
//!               field("count", <decimal>)
//!               field("token", <the batch's Idempotency-Key>)
//!               field("actor", <actor id>)
//!               field("signed_at", <milliseconds since the Unix epoch, decimal>)
//! ```
//!
//! `field` is `crate::signing`'s (`name ":" len ":" value "\n"`). The actor signs the batch
//! bytes with ed25519. Each event recorded from a batch keeps that signature (in its
//! attestation), and a [`BatchMembership`]: the batch's token, count, the member's index and its
//! inclusion proof. The root is not kept: it is what the proof leads to from the event's own
//! member bytes, and the signature holds only over the root that was signed. A forged proof or
//! a command moved into another batch leads to a root the signature does not hold over.

use bincode::{Decode, Encode};

use crate::command::Action;
use crate::command::ParamValue;
use crate::ids::{ActorId, IdempotencyToken, PoolId, Timestamp};
use crate::integrity::{self, Digest, LEAF_PREFIX};
use crate::signing;

/// Prefix of the bytes an actor signs for a batch.
pub const BATCH_SIGNING_PREFIX: &str = "allot-batch-v1\n";
/// Most commands one batch may carry. A proof is then at most 13 digests (416 bytes).
pub const BATCH_COMMANDS_MAX: usize = 8192;

/// What an event recorded from a batch keeps to prove its actor signed it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchMembership {
    /// The batch's idempotency key, as signed.
    pub token: IdempotencyToken,
    /// Commands in the batch.
    pub count: u32,
    /// This command's index in the batch, from 0.
    pub index: u32,
    /// Siblings from this command's leaf up to the root, bottom first
    /// ([`integrity::MerkleTree::proof`]).
    pub proof: Vec<Digest>,
}

/// One member of a batch as it is signed.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub pool: &'a PoolId,
    pub action: &'a Action,
    pub token: &'a IdempotencyToken,
}

/// `member(i)`: the canonical bytes of one command of a batch signed by `actor` at `signed_at`.
pub fn member_bytes(member: Member<'_>, actor: &ActorId, signed_at: Timestamp) -> Vec<u8> {
    signing::signing_bytes(
        member.action,
        &signing::command_target(member.pool, member.action),
        member.token,
        actor,
        signed_at,
    )
}

/// `leaf(i)` over a member's canonical bytes.
pub fn member_leaf(member_bytes: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF_PREFIX]);
    h.update(member_bytes);
    *h.finalize().as_bytes()
}

/// The bytes an actor signs for a batch of `count` commands whose Merkle root is `root`.
pub fn batch_signing_bytes(
    root: &Digest,
    count: u32,
    token: &IdempotencyToken,
    actor: &ActorId,
    signed_at: Timestamp,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(BATCH_SIGNING_PREFIX.as_bytes());
    signing::write_field(&mut out, "root", ParamValue::Text(&hex::encode(root)));
    signing::write_field(&mut out, "count", ParamValue::Number(u64::from(count)));
    signing::write_field(&mut out, "token", ParamValue::Text(token.as_str()));
    signing::write_field(&mut out, "actor", ParamValue::Text(actor.as_str()));
    signing::write_field(&mut out, "signed_at", ParamValue::Number(signed_at.0));
    out
}

/// A batch as the signer and the server both build it: every member's leaf and the tree.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    tree: integrity::MerkleTree,
}

impl SignedBatch {
    /// The tree over `members`, signed by `actor` at `signed_at`; `None` for no members.
    pub fn new<'a>(
        members: impl IntoIterator<Item = Member<'a>>,
        actor: &ActorId,
        signed_at: Timestamp,
    ) -> Option<SignedBatch> {
        let leaves = members
            .into_iter()
            .map(|member| member_leaf(&member_bytes(member, actor, signed_at)))
            .collect();
        integrity::MerkleTree::new(leaves).map(|tree| SignedBatch { tree })
    }

    pub fn root(&self) -> Digest {
        self.tree.root()
    }

    pub fn count(&self) -> u32 {
        // A batch has at most BATCH_COMMANDS_MAX members where it is checked; saturate beyond.
        u32::try_from(self.tree.leaves().len()).unwrap_or(u32::MAX)
    }

    /// The membership record of member `index`, for batch `token`.
    pub fn membership(&self, token: &IdempotencyToken, index: usize) -> Option<BatchMembership> {
        Some(BatchMembership {
            token: token.clone(),
            count: self.count(),
            index: u32::try_from(index).ok()?,
            proof: self.tree.proof(index)?,
        })
    }
}

/// The root a recorded member leads to: from its canonical bytes through its proof. `None` if
/// the proof does not fit the batch's shape.
pub fn root_of_member(member_bytes: &[u8], membership: &BatchMembership) -> Option<Digest> {
    integrity::root_from_proof(
        &member_leaf(member_bytes),
        u64::from(membership.index),
        u64::from(membership.count),
        &membership.proof,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(n: u64) -> Action {
        Action::Reserve {
            resource: "seat".into(),
            requester: format!("r{n}"),
            duration_ms: 600_000,
            count: 1,
        }
    }

    #[test]
    fn every_member_proves_the_root_and_no_other_position() {
        let pool = PoolId::new("p");
        let actor = ActorId::new("shop");
        let actions: Vec<Action> = (0..5).map(reserve).collect();
        let tokens: Vec<IdempotencyToken> = (0..5)
            .map(|i| IdempotencyToken::new(format!("t{i}")))
            .collect();
        let members = actions.iter().zip(&tokens).map(|(action, token)| Member {
            pool: &pool,
            action,
            token,
        });
        let batch = SignedBatch::new(members, &actor, Timestamp(7)).expect("members");
        let key = IdempotencyToken::new("b");
        for (i, (action, token)) in actions.iter().zip(&tokens).enumerate() {
            let bytes = member_bytes(
                Member {
                    pool: &pool,
                    action,
                    token,
                },
                &actor,
                Timestamp(7),
            );
            let membership = batch.membership(&key, i).expect("in range");
            assert_eq!(root_of_member(&bytes, &membership), Some(batch.root()));
            let moved = BatchMembership {
                index: (membership.index + 1) % 5,
                ..membership.clone()
            };
            assert_ne!(root_of_member(&bytes, &moved), Some(batch.root()));
            let other_time = member_bytes(
                Member {
                    pool: &pool,
                    action,
                    token,
                },
                &actor,
                Timestamp(8),
            );
            assert_ne!(root_of_member(&other_time, &membership), Some(batch.root()));
        }
    }

    #[test]
    fn the_batch_bytes_are_written_as_published() {
        let bytes = batch_signing_bytes(
            &[0xab; 32],
            3,
            &IdempotencyToken::new("b-1"),
            &ActorId::new("shop"),
            Timestamp(1_700_000_000_000),
        );
        let expected = format!(
            "allot-batch-v1\nroot:64:{}\ncount:1:3\ntoken:3:b-1\nactor:4:shop\n\
             signed_at:13:1700000000000\n",
            "ab".repeat(32)
        );
        assert_eq!(bytes, expected.as_bytes());
    }
}

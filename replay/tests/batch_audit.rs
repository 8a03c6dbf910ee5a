//! The audit of events recorded from signed batches: each event's attribution rests on its
//! inclusion proof and its batch's one signature; tampering with either is named per event.

mod common;

use allot_domain::batch::batch_signing_bytes;
use allot_domain::codec;
use allot_domain::integrity::Digest;
use allot_domain::signing::params_digest;
use allot_domain::{Action, ActorId, IdempotencyToken, Outcome, Timestamp};
use allot_replay::{Audit, AuditOptions, AuditReport, AuditRouter, Check, Recorded};
use common::{History, MINUTE, SECOND};
use ed25519_dalek::Signer;

fn reserve(requester: &str) -> Action {
    Action::Reserve {
        resource: "ga".into(),
        requester: requester.into(),
        duration_ms: 10 * MINUTE,
        count: 1,
    }
}

/// Three pools; two batches of `shop` (reserves across the pools, then confirms and cancels),
/// with single commands before, between and after. Returns the history and the record indices
/// of each batch's events.
fn batched_history() -> (History, Vec<usize>, Vec<usize>) {
    let mut history = History::new();
    for pool in ["a", "b", "c"] {
        history.declare(0, pool, 10, None, &[]);
    }
    history.reserve(SECOND, "a", "single", "ga", "s1");
    let first = history.records.len();
    let outcomes = history.run_batch(
        MINUTE,
        "shop",
        "batch-1",
        &[
            ("a", "r1", reserve("r1")),
            ("b", "r2", reserve("r2")),
            ("c", "r3", reserve("r3")),
            ("a", "r4", reserve("r4")),
            ("b", "r5", reserve("r5")),
        ],
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(Outcome::Reserved { .. }))),
        "{outcomes:?}"
    );
    let batch_1: Vec<usize> = (first..history.records.len()).collect();
    history.reserve(MINUTE + SECOND, "c", "single", "ga", "s2");
    let first = history.records.len();
    let outcomes = history.run_batch(
        2 * MINUTE,
        "shop",
        "batch-2",
        &[
            ("a", "c1", Action::ConfirmReservation { reservation: 1 }),
            ("a", "x2", Action::CancelReservation { reservation: 2 }),
            ("b", "c2", Action::ConfirmReservation { reservation: 1 }),
            ("c", "c3", Action::ConfirmReservation { reservation: 1 }),
        ],
    );
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let batch_2: Vec<usize> = (first..history.records.len()).collect();
    history.confirm(2 * MINUTE + SECOND, "b", 2, "s3");
    (history, batch_1, batch_2)
}

fn audit(history: &History) -> AuditReport {
    Audit::run(AuditOptions::default(), &history.records)
}

fn event_mut(history: &mut History, index: usize) -> &mut allot_domain::Event {
    &mut history.pool_event_mut(index).event
}

/// Asserts the report's only violations are `attribution` ones, exactly at `indices`, each
/// saying `says`.
fn assert_attribution_at(history: &History, report: &AuditReport, indices: &[usize], says: &str) {
    let mut named: Vec<u64> = report.violations.iter().map(|v| v.position).collect();
    named.sort_unstable();
    let mut expected: Vec<u64> = indices
        .iter()
        .map(|i| history.records[*i].position())
        .collect();
    expected.sort_unstable();
    assert_eq!(named, expected, "{report}");
    for violation in &report.violations {
        assert_eq!(violation.check, Check::Attribution, "{report}");
        assert!(violation.detail.contains(says), "{violation}");
    }
    assert_eq!(report.count(Check::Attribution), indices.len() as u64);
    assert_eq!(report.violations_total(), indices.len() as u64, "{report}");
}

#[test]
fn a_log_with_batches_audits_clean_and_each_batch_signature_is_verified_once() {
    let (history, batch_1, batch_2) = batched_history();
    for index in batch_1.iter().chain(&batch_2) {
        let membership = history.records[*index].clone();
        let Recorded::Pool(recorded) = membership else {
            panic!("a pool event");
        };
        assert!(
            recorded.event.batch.is_some(),
            "batched events carry their membership"
        );
    }
    let report = audit(&history);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.signatures_verified, report.events, "{report}");
    assert_eq!(report.batched_events, 9);
    assert_eq!(report.batch_signatures_verified, 2);
    let text = report.to_string();
    assert!(
        text.contains("9 pool events recorded from signed batches, 2 batch signatures verified"),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["batched_events"], 9);
    assert_eq!(json["batch_signatures_verified"], 2);
    // Without signatures the batches are still counted, not verified.
    let records_only = Audit::run(AuditOptions::records_only(), &history.records);
    assert!(records_only.is_clean(), "{records_only}");
    assert_eq!(records_only.batched_events, 9);
    assert_eq!(records_only.batch_signatures_verified, 0);
}

#[test]
fn many_batches_spread_over_verification_chunks_each_verify_once() {
    let mut history = History::new();
    for pool in 0..4 {
        history.declare(0, &format!("p{pool}"), 100_000, None, &[]);
    }
    // 40 batches of 50: a batch spans verification chunks, and chunks hold several batches.
    for batch in 0..40u64 {
        let members: Vec<(String, String, Action)> = (0..50u64)
            .map(|i| {
                (
                    format!("p{}", i % 4),
                    format!("t{batch}-{i}"),
                    reserve(&format!("r{batch}-{i}")),
                )
            })
            .collect();
        let members: Vec<(&str, &str, Action)> = members
            .iter()
            .map(|(pool, token, action)| (pool.as_str(), token.as_str(), action.clone()))
            .collect();
        let outcomes = history.run_batch(MINUTE + batch, "shop", &format!("b{batch}"), &members);
        assert!(outcomes.iter().all(Result::is_ok));
    }
    let report = audit(&history);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.batched_events, 2_000);
    assert_eq!(report.batch_signatures_verified, 40);
    assert_eq!(report.signatures_verified, report.events);
}

#[test]
fn a_forged_proof_is_named_at_its_event() {
    let (mut history, batch_1, _) = batched_history();
    let index = batch_1[2];
    let membership = event_mut(&mut history, index)
        .batch
        .as_mut()
        .expect("batched");
    membership.proof[0][0] ^= 1;
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &[index],
        "does not lead to a root shop signed",
    );
    // Only the forged event: its batch's other members still prove the signed root.
    assert_eq!(report.signatures_verified, report.events - 1);
}

#[test]
fn a_proof_that_does_not_fit_its_batch_is_named() {
    let (mut history, batch_1, batch_2) = batched_history();
    let short = batch_1[0];
    event_mut(&mut history, short)
        .batch
        .as_mut()
        .expect("batched")
        .proof
        .pop();
    let past_the_end = batch_2[1];
    event_mut(&mut history, past_the_end)
        .batch
        .as_mut()
        .expect("batched")
        .index = 4;
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &[short, past_the_end],
        "leads to no root",
    );
}

#[test]
fn a_command_moved_into_another_batch_is_named() {
    let (mut history, batch_1, batch_2) = batched_history();
    // batch-2's member 0 given batch-1's member 0 membership, signature and signed_at: the
    // proof is a real one of a signed root, but not from this command's bytes.
    let donor = history.records[batch_1[0]].clone();
    let Recorded::Pool(donor) = donor else {
        panic!("a pool event");
    };
    let moved = batch_2[0];
    let event = event_mut(&mut history, moved);
    event.batch = donor.event.batch.clone();
    event.attestation = donor.event.attestation.clone();
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &[moved],
        "does not lead to a root shop signed",
    );
}

#[test]
fn a_root_signed_by_another_actor_is_named_at_every_member() {
    let (mut history, _, batch_2) = batched_history();
    // The admin signs batch-2's root, count and token as itself; the events still say shop.
    let Recorded::Pool(first) = history.records[batch_2[0]].clone() else {
        panic!("a pool event");
    };
    let membership = first.event.batch.as_deref().expect("batched").clone();
    let member = allot_domain::batch::member_bytes(
        allot_domain::batch::Member {
            pool: &first.event.pool,
            action: &first.event.action,
            token: &first.event.token,
        },
        &first.event.actor,
        first.event.attestation.signed_at,
    );
    let root: Digest =
        allot_domain::batch::root_of_member(&member, &membership).expect("the proof fits");
    let signature = history
        .key("admin")
        .sign(&batch_signing_bytes(
            &root,
            membership.count,
            &membership.token,
            &ActorId::new("admin"),
            first.event.attestation.signed_at,
        ))
        .to_bytes()
        .to_vec();
    for index in &batch_2 {
        event_mut(&mut history, *index).attestation.signature = signature.clone();
    }
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &batch_2,
        "does not lead to a root shop signed",
    );
    assert_eq!(report.batch_signatures_verified, 1, "only batch-1 holds");
}

#[test]
fn a_changed_member_field_is_named() {
    let (mut history, batch_1, _) = batched_history();
    let index = batch_1[3];
    let event = event_mut(&mut history, index);
    if let Action::Reserve { requester, .. } = &mut event.action {
        *requester = "someone-else".into();
    }
    // A consistent digest, so the proof is what fails.
    event.digest = params_digest(&event.action);
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &[index],
        "does not lead to a root shop signed",
    );

    // A changed signed_at (the batch's time is in every member's bytes) and a changed token.
    let (mut history, batch_1, _) = batched_history();
    event_mut(&mut history, batch_1[1]).attestation.signed_at = Timestamp(common::T0 + MINUTE + 1);
    event_mut(&mut history, batch_1[4])
        .batch
        .as_mut()
        .expect("batched")
        .token = IdempotencyToken::new("batch-9");
    let report = audit(&history);
    assert_attribution_at(
        &history,
        &report,
        &[batch_1[1], batch_1[4]],
        "does not lead to a root shop signed",
    );
}

#[test]
fn a_batched_event_of_an_actor_whose_role_may_not_act_is_named() {
    let mut history = History::new();
    history.declare(0, "a", 10, None, &[]);
    // The auditor signs a batch with its own valid key: the proof and signature hold, the role
    // does not, as for a single command.
    let outcomes = history.run_batch(MINUTE, "reader", "rb", &[("a", "t", reserve("x"))]);
    assert!(outcomes.iter().all(Result::is_ok));
    let index = history.records.len() - 1;
    let report = audit(&history);
    assert_attribution_at(&history, &report, &[index], "auditor");
    assert_eq!(report.batch_signatures_verified, 1);
}

#[test]
fn a_partitioned_audit_counts_the_batched_events_as_one_audit_does() {
    let (history, _, _) = batched_history();
    let options = AuditOptions::records_only();
    let mut router = AuditRouter::new(2);
    let mut partitions = Audit::partitions(options, 2);
    for record in &history.records {
        let payload = match record {
            Recorded::Pool(pool) => codec::encode_event(&pool.event),
            Recorded::Actor(actor) => codec::encode_actor_event(&actor.event),
        };
        let routed = router.route(record.stream(), record.position(), &payload);
        for (index, partition) in partitions.iter_mut().enumerate() {
            if routed.is_for(index) {
                partition.observe_routed(record, &routed);
            }
        }
    }
    let merged = Audit::finish_partitions(partitions);
    assert_eq!(merged, Audit::run(options, &history.records));
    assert_eq!(merged.batched_events, 9);
}

//! The audit over a clean walkthrough, and over logs tampered to violate exactly one check.

mod common;

use std::collections::BTreeSet;

use allot_domain::{Change, ReservationState, Timestamp};
use allot_replay::{Audit, AuditOptions, AuditReport, Check, Recorded};
use common::{History, MINUTE, SECOND, stream_of, walkthrough};

fn audit(records: &[Recorded], options: AuditOptions) -> AuditReport {
    Audit::run(options, records)
}

fn checks_named(report: &AuditReport) -> BTreeSet<Check> {
    report.violations.iter().map(|v| v.check).collect()
}

/// Asserts the report names `check` at `position`, and nothing but `others` besides.
fn assert_names(report: &AuditReport, check: Check, position: u64, others: &[Check]) {
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == check && v.position == position),
        "expected {check} at position {position}, got:\n{report}"
    );
    let mut expected: BTreeSet<Check> = others.iter().copied().collect();
    expected.insert(check);
    assert_eq!(checks_named(report), expected, "{report}");
    assert!(!report.is_clean());
}

/// The records-only checks and the domain's fold (the signatures of edited records no longer
/// verify, and are not what these tests are about).
fn fold_without_signatures() -> AuditOptions {
    AuditOptions {
        verify_signatures: false,
        check_fold: true,
        ..AuditOptions::default()
    }
}

fn position_of(history: &History, index: usize) -> u64 {
    history.records[index].position()
}

#[test]
fn the_walkthrough_audits_clean_with_signatures_and_fold() {
    let history = walkthrough();
    let report = audit(&history.records, AuditOptions::default());
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.actor_events, 4);
    assert_eq!(report.pools, 3);
    assert_eq!(report.events, history.records.len() as u64);
    assert_eq!(report.signatures_verified, report.events);
    assert_eq!(report.reservations, 8);
    let text = report.to_string();
    assert!(text.contains("allocation-coherence"), "{text}");
    assert!(text.ends_with("CLEAN"), "{text}");
    let json = serde_json::to_string(&report).expect("serializes");
    assert!(json.contains("\"check\":\"no-oversell\""), "{json}");
}

#[test]
fn the_walkthrough_audits_clean_without_signatures() {
    let report = audit(&walkthrough().records, AuditOptions::records_only());
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.signatures_verified, 0);
}

#[test]
fn allocation_coherence_names_a_cancel_whose_arithmetic_kept_the_unit() {
    let mut history = walkthrough();
    // The last VIP event is C's cancel: it claims allocated stayed where it was.
    let index = history.index_of("pool_vip", history.last_version("pool_vip"));
    let recorded = history.pool_event_mut(index);
    assert!(matches!(recorded.event.change, Change::Released { .. }));
    recorded.event.allocated_after += 1;
    let report = audit(&history.records, AuditOptions::records_only());
    let position = position_of(&history, index);
    // The cancel did not return the slot in the arithmetic: also a stranded slot.
    assert_names(
        &report,
        Check::AllocationCoherence,
        position,
        &[Check::StrandedSlot],
    );
    assert_eq!(report.count(Check::AllocationCoherence), 1);
}

#[test]
fn allocation_coherence_alone_when_a_confirm_miscounts() {
    let mut history = History::new();
    history.declare(0, "p", 3, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.confirm(2 * SECOND, "p", 1, "t2");
    let index = history.index_of("p", 2);
    history.pool_event_mut(index).event.allocated_after = 2;
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::AllocationCoherence,
        position_of(&history, index),
        &[],
    );
}

#[test]
fn allocated_chain_names_an_allocated_before_that_breaks_the_chain() {
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 4);
    history.pool_event_mut(index).event.allocated_before += 1;
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::AllocatedChain,
        position_of(&history, index),
        &[],
    );
    assert_eq!(report.count(Check::AllocatedChain), 1);
}

#[test]
fn no_oversell_names_allocation_beyond_the_declared_capacity() {
    let mut history = walkthrough();
    // Declared capacity 1 instead of 2: the second hold oversells the pool.
    let declare = history.index_of("pool_vip", 0);
    match &mut history.pool_event_mut(declare).event.action {
        allot_domain::Action::DeclarePool { capacity, .. } => *capacity = 1,
        other => panic!("{other:?}"),
    }
    let report = audit(&history.records, AuditOptions::records_only());
    let second_hold = history.index_of("pool_vip", 2);
    assert_names(
        &report,
        Check::NoOversell,
        position_of(&history, second_hold),
        &[],
    );
}

#[test]
fn no_oversell_counts_confirmed_units_against_capacity() {
    let mut history = History::new();
    history.declare(0, "p", 2, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.reserve(2 * SECOND, "p", "b", "r", "t2");
    history.confirm(3 * SECOND, "p", 1, "t3");
    history.confirm(4 * SECOND, "p", 2, "t4");
    // A tampered adjust lowered capacity to 1 below what was confirmed... recorded as if fine.
    let declare = history.index_of("p", 0);
    match &mut history.pool_event_mut(declare).event.action {
        allot_domain::Action::DeclarePool { capacity, .. } => *capacity = 1,
        other => panic!("{other:?}"),
    }
    let report = audit(&history.records, AuditOptions::records_only());
    assert_eq!(report.count(Check::NoOversell), 3, "{report}");
    assert_eq!(checks_named(&report), BTreeSet::from([Check::NoOversell]));
}

#[test]
fn slot_released_once_names_a_second_release() {
    let mut history = walkthrough();
    let cancel = history.index_of("pool_vip", history.last_version("pool_vip"));
    let mut twice = history.pool_event_mut(cancel).clone();
    twice.version += 1;
    twice.position = history.records.last().map_or(0, Recorded::position) + 1;
    twice.event.token = allot_domain::IdempotencyToken::new("tok_cancel_c_again");
    twice.event.allocated_before = twice.event.allocated_after;
    history.records.push(Recorded::Pool(twice.clone()));
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(&report, Check::SlotReleasedOnce, twice.position, &[]);
    let violation = &report.violations[0];
    assert_eq!(violation.stream, stream_of("pool_vip"));
    assert_eq!(violation.reservation.as_ref().map(|r| r.seq), Some(3));
}

#[test]
fn slot_released_once_with_the_arithmetic_also_decremented_twice() {
    let mut history = walkthrough();
    let cancel = history.index_of("pool_vip", history.last_version("pool_vip"));
    let mut twice = history.pool_event_mut(cancel).clone();
    twice.version += 1;
    twice.position = history.records.last().map_or(0, Recorded::position) + 1;
    twice.event.token = allot_domain::IdempotencyToken::new("again");
    twice.event.allocated_before = twice.event.allocated_after;
    twice.event.allocated_after -= 1; // count driven below the live set
    history.records.push(Recorded::Pool(twice.clone()));
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::SlotReleasedOnce,
        twice.position,
        &[Check::AllocationCoherence],
    );
}

#[test]
fn stranded_slot_names_a_terminal_reservation_whose_release_returned_nothing() {
    // The seed's buggy twin: a cancel that releases the commitment without returning the slot.
    let mut history = History::new();
    history.declare(0, "p", 2, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.cancel(2 * SECOND, "p", 1, "t2");
    let index = history.index_of("p", 2);
    let cancel = history.pool_event_mut(index);
    cancel.event.allocated_after = cancel.event.allocated_before;
    let position = cancel.position;
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::StrandedSlot,
        position,
        &[Check::AllocationCoherence],
    );
    let stranded = report
        .violations
        .iter()
        .find(|v| v.check == Check::StrandedSlot)
        .expect("stranded");
    assert_eq!(
        stranded
            .reservation
            .as_ref()
            .map(|r| r.to_string())
            .as_deref(),
        Some("p:1")
    );
}

#[test]
fn state_transition_names_a_new_state_the_change_does_not_produce() {
    let mut history = walkthrough();
    let confirm = history.index_of("pool_vip", 4);
    let recorded = history.pool_event_mut(confirm);
    assert!(matches!(recorded.event.change, Change::Confirmed { .. }));
    recorded.event.new_state = Some(ReservationState::Released);
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::StateTransition,
        position_of(&history, confirm),
        &[],
    );
}

#[test]
fn no_lapsed_confirmation_names_a_confirm_at_or_after_expires_at() {
    let mut history = History::new();
    history.declare(0, "p", 2, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.confirm(2 * SECOND, "p", 1, "t2");
    let index = history.index_of("p", 2);
    history.pool_event_mut(index).event.at = common::at(SECOND + 10 * MINUTE);
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::NoLapsedConfirmation,
        position_of(&history, index),
        &[],
    );
}

#[test]
fn idempotency_names_a_token_that_made_two_reservations_within_its_window() {
    let mut history = walkthrough();
    // C's second reservation (13 min) reuses B's token from 2 min... outside the 5 min window;
    // the seat pool's second student reuses the first student's token 200 ms later: inside.
    let second = history.index_of("course_cs101", 3);
    let recorded = history.pool_event_mut(second);
    assert!(matches!(recorded.event.change, Change::Reserved { .. }));
    recorded.event.token = allot_domain::IdempotencyToken::new("s1");
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::Idempotency,
        position_of(&history, second),
        &[],
    );
    assert!(
        report.violations[0].detail.contains("reservation"),
        "{report}"
    );

    // Outside the window the token was forgotten, as the service forgets it.
    let mut history = walkthrough();
    let late = history.index_of("pool_vip", 7);
    let recorded = history.pool_event_mut(late);
    assert!(
        matches!(recorded.event.change, Change::Reserved { .. }),
        "{recorded:?}"
    );
    recorded.event.token = allot_domain::IdempotencyToken::new("tok_b1");
    assert!(audit(&history.records, AuditOptions::records_only()).is_clean());
}

/// With the fold on, a token used twice within its window is named once, by `idempotency`: the
/// fold keeps no token cache of its own (`Pool::without_token_cache`).
#[test]
fn a_reused_token_is_named_by_idempotency_alone_with_the_fold_on() {
    let mut history = walkthrough();
    let second = history.index_of("course_cs101", 3);
    history.pool_event_mut(second).event.token = allot_domain::IdempotencyToken::new("s1");
    let report = audit(&history.records, fold_without_signatures());
    assert_names(
        &report,
        Check::Idempotency,
        position_of(&history, second),
        &[],
    );
    assert_eq!(report.count(Check::Fold), 0, "{report}");
}

/// A damaged log whose times go back: a token used twice within its window is still named,
/// although a later record of another token was replaced and an earlier-timed one sits behind
/// it (forgetting stops at the first record still within the window, replaced or not).
#[test]
fn idempotency_still_names_a_reuse_where_times_go_back() {
    let mut history = History::new();
    history.declare(0, "p", 10, None, &[]);
    history.reserve(10 * MINUTE, "p", "a", "r", "X");
    history.reserve(10 * MINUTE + 1, "p", "a", "r", "R");
    history.reserve(10 * MINUTE + 50, "p", "a", "r", "X2");
    history.reserve(10 * MINUTE + 60, "p", "a", "r", "Y");
    history.reserve(10 * MINUTE + 70, "p", "a", "r", "R2");
    // R recorded at 1 min (time goes back), X used again, R used again at 1 min 50 ms: within
    // R's 5-minute window.
    let r = history.index_of("p", 2);
    history.pool_event_mut(r).event.at = common::at(MINUTE);
    let x_again = history.index_of("p", 3);
    history.pool_event_mut(x_again).event.token = allot_domain::IdempotencyToken::new("X");
    let r_again = history.index_of("p", 5);
    history.pool_event_mut(r_again).event.token = allot_domain::IdempotencyToken::new("R");
    history.pool_event_mut(r_again).event.at = common::at(MINUTE + 50);
    let report = audit(&history.records, AuditOptions::records_only());
    for index in [x_again, r_again] {
        assert!(
            report.violations.iter().any(
                |v| v.check == Check::Idempotency && v.position == position_of(&history, index)
            ),
            "no idempotency violation at record {index}:\n{report}"
        );
    }
}

#[test]
fn attribution_names_a_signature_that_does_not_verify() {
    let mut history = walkthrough();
    let index = history.index_of("course_cs101", 2);
    history.pool_event_mut(index).event.attestation.signature[0] ^= 1;
    let report = audit(&history.records, AuditOptions::default());
    assert_names(
        &report,
        Check::Attribution,
        position_of(&history, index),
        &[],
    );
    assert_eq!(report.count(Check::Attribution), 1);
    // Without signature checks the log is clean.
    assert!(audit(&history.records, AuditOptions::records_only()).is_clean());
}

#[test]
fn attribution_names_a_digest_that_does_not_match_the_parameters() {
    let mut history = walkthrough();
    let index = history.index_of("pool_ga", 0);
    history.pool_event_mut(index).event.digest.0[3] ^= 0xff;
    let report = audit(&history.records, AuditOptions::default());
    assert_names(
        &report,
        Check::Attribution,
        position_of(&history, index),
        &[],
    );
    assert!(report.violations[0].detail.contains("digest"), "{report}");
}

#[test]
fn attribution_names_a_role_that_may_not_act_and_an_unknown_actor() {
    let mut history = walkthrough();
    // The auditor signs a reserve with its own valid key: the signature verifies, the role not.
    history
        .run(
            20 * MINUTE,
            "reader",
            "pool_vip",
            "reader-reserve",
            allot_domain::Action::Reserve {
                resource: "vip-tier".into(),
                requester: "reader".into(),
                duration_ms: MINUTE,
                count: 1,
            },
        )
        .expect("decide does not check roles");
    let position = history.records.last().map(Recorded::position).expect("one");
    let report = audit(&history.records, AuditOptions::default());
    assert_names(&report, Check::Attribution, position, &[]);
    assert!(report.violations[0].detail.contains("auditor"), "{report}");

    // An actor the actors stream never registered.
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 1);
    history.pool_event_mut(index).event.actor = allot_domain::ActorId::new("mallory");
    let report = audit(&history.records, AuditOptions::records_only());
    // The reservation is now mallory's, so shop's later confirm of it breaks ownership too.
    assert_names(
        &report,
        Check::Attribution,
        position_of(&history, index),
        &[Check::Ownership],
    );
}

/// The index of the first event of `pool` whose change is a confirm or a cancel.
fn first_confirm_or_cancel(history: &History, pool: &str) -> usize {
    let stream = allot_domain::streams::pool_stream(&allot_domain::PoolId::new(pool));
    history
        .records
        .iter()
        .position(|record| {
            matches!(record, Recorded::Pool(p) if p.stream == stream && matches!(
                p.event.change,
                allot_domain::Change::Confirmed { .. } | allot_domain::Change::Released { .. }
            ))
        })
        .expect("a confirm or cancel")
}

#[test]
fn ownership_names_a_confirm_or_cancel_that_misstates_its_owner() {
    // The owner's own act, recorded as on behalf of itself.
    let mut history = walkthrough();
    let index = first_confirm_or_cancel(&history, "pool_vip");
    let owner = history.pool_event_mut(index).event.actor.clone();
    history.pool_event_mut(index).event.on_behalf_of = allot_domain::OnBehalfOf::Owner(owner);
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(&report, Check::Ownership, position_of(&history, index), &[]);

    // Another actor's act that names nobody: recorded as the auditor's.
    let mut history = walkthrough();
    let index = first_confirm_or_cancel(&history, "pool_vip");
    history.pool_event_mut(index).event.actor = allot_domain::ActorId::new("reader");
    let report = audit(&history.records, AuditOptions::records_only());
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check == Check::Ownership && v.position == position_of(&history, index)),
        "{report}"
    );

    // Only a confirm or cancel acts for an owner: a reserve naming one is reported.
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 1);
    let event = &mut history.pool_event_mut(index).event;
    event.on_behalf_of = allot_domain::OnBehalfOf::Owner(allot_domain::ActorId::new("shop"));
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(&report, Check::Ownership, position_of(&history, index), &[]);

    // Events of schema 1 did not record it: not checked.
    let mut history = walkthrough();
    let index = first_confirm_or_cancel(&history, "pool_vip");
    let event = &mut history.pool_event_mut(index).event;
    event.actor = allot_domain::ActorId::new("reader");
    event.on_behalf_of = allot_domain::OnBehalfOf::Unrecorded;
    let report = audit(&history.records, AuditOptions::records_only());
    assert!(
        !report
            .violations
            .iter()
            .any(|v| v.check == Check::Ownership),
        "{report}"
    );
}

#[test]
fn attribution_names_one_bad_signature_among_many_batches() {
    let mut history = History::new();
    history.declare(0, "big", 10_000, None, &[]);
    for i in 0..600u64 {
        history.reserve(SECOND + i, "big", "fan", "ga", &format!("t{i}"));
    }
    let index = history.index_of("big", 333);
    history.pool_event_mut(index).event.attestation.signature[10] ^= 0x40;
    let report = audit(&history.records, AuditOptions::default());
    assert_names(
        &report,
        Check::Attribution,
        position_of(&history, index),
        &[],
    );
    assert_eq!(report.count(Check::Attribution), 1);
    assert_eq!(report.signatures_verified, report.events - 1);
}

#[test]
fn attribution_names_an_actor_event_not_signed_by_an_admin() {
    let mut history = walkthrough();
    // The client registers another client: not an admin.
    history.register("shop2", allot_domain::Role::Client, 9, "shop");
    let position = history.records.last().map(Recorded::position).expect("one");
    let report = audit(&history.records, AuditOptions::default());
    assert_names(&report, Check::Attribution, position, &[]);
    assert_eq!(report.violations[0].stream, "actors");

    // A self-registration after bootstrap is refused too.
    let mut history = walkthrough();
    history.register("rogue", allot_domain::Role::Admin, 10, "rogue");
    let report = audit(&history.records, AuditOptions::default());
    assert_eq!(report.count(Check::Attribution), 1, "{report}");
}

#[test]
fn contiguous_versions_names_a_skipped_version_and_a_position_going_back() {
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 3);
    // Version 3 is recorded as 4 and the rest of the stream follows: one gap.
    let stream = stream_of("pool_vip");
    for record in history.records.iter_mut().skip(index) {
        if let Recorded::Pool(p) = record
            && p.stream == stream
        {
            p.version += 1;
        }
    }
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::ContiguousVersions,
        position_of(&history, index),
        &[],
    );
    assert_eq!(report.count(Check::ContiguousVersions), 1);

    let mut history = walkthrough();
    let index = history.index_of("pool_ga", 2);
    let previous = position_of(&history, index - 1);
    history.pool_event_mut(index).position = previous;
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(&report, Check::ContiguousVersions, previous, &[]);
}

#[test]
fn fold_reports_what_evolve_refuses() {
    let mut history = History::new();
    history.declare(0, "p", 3, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.confirm(2 * SECOND, "p", 1, "t2");
    let index = history.index_of("p", 2);
    history.pool_event_mut(index).event.allocated_after = 2;
    let report = audit(&history.records, fold_without_signatures());
    assert_names(
        &report,
        Check::AllocationCoherence,
        position_of(&history, index),
        &[Check::Fold],
    );
    assert_eq!(report.count(Check::Fold), 1);
}

#[test]
fn the_violation_list_is_capped_but_counting_goes_on() {
    let mut history = History::new();
    history.declare(0, "p", 100, None, &[]);
    for i in 0..20u64 {
        history.reserve(SECOND + i, "p", "a", "r", &format!("t{i}"));
    }
    for record in &mut history.records {
        if let Recorded::Pool(p) = record {
            p.event.at = Timestamp(p.event.at.0);
            p.event.allocated_after += 1000;
            p.event.allocated_before += 1000;
        }
    }
    let options = AuditOptions {
        violations_max: 5,
        ..AuditOptions::records_only()
    };
    let report = audit(&history.records, options);
    assert_eq!(report.violations.len(), 5);
    assert!(report.violations_omitted > 0);
    assert_eq!(
        report.violations_total(),
        report.violations.len() as u64 + report.violations_omitted
    );
}

#[test]
fn state_transition_names_a_pool_recorded_in_two_streams() {
    let mut history = walkthrough();
    let index = history.index_of("pool_ga", 0);
    let mut copy = history.pool_event_mut(index).clone();
    copy.stream = "pool-pool_ga-copy".to_owned();
    copy.version = 0;
    copy.position = history.records.last().map_or(0, Recorded::position) + 1;
    history.records.push(Recorded::Pool(copy.clone()));
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(&report, Check::StateTransition, copy.position, &[]);
}

#[test]
fn the_audit_and_rebuild_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Audit>();
    assert_send::<allot_replay::Rebuild>();
    assert_send::<allot_replay::HtmlReport>();
    assert_send::<allot_replay::AsOfQuery>();
    assert_send::<allot_replay::StrandedSlotsQuery>();
    assert_send::<allot_replay::DisputeQuery>();
    assert_send::<allot_replay::ContentionQuery>();
}

#[test]
fn the_json_report_carries_each_counterexample_location() {
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 4);
    history.pool_event_mut(index).event.allocated_before += 1;
    let report = audit(&history.records, AuditOptions::records_only());
    let json: serde_json::Value = serde_json::to_value(&report).expect("serializes");
    let violation = &json["violations"][0];
    assert_eq!(violation["check"], "allocated-chain");
    assert_eq!(violation["stream"], "pool-pool_vip");
    assert_eq!(violation["version"], 4);
    assert_eq!(violation["position"], position_of(&history, index));
    assert_eq!(violation["reservation"], "pool_vip:1");
    assert_eq!(json["checks"][1]["violations"], 1);
}

#[test]
fn attribution_names_a_revoked_key_that_backdates_its_signature() {
    let mut history = walkthrough();
    history.revoke(20 * MINUTE, "shop", "admin");
    history.reserve(
        21 * MINUTE,
        "pool_vip",
        "late",
        "vip-tier",
        "after-revocation",
    );
    let index = history.records.len() - 1;
    let mut event = history.pool_event_mut(index).event.clone();
    history.resign(&mut event, "shop", common::at(19 * MINUTE));
    history.pool_event_mut(index).event = event;
    let report = audit(&history.records, AuditOptions::default());
    assert_names(
        &report,
        Check::Attribution,
        position_of(&history, index),
        &[],
    );
    assert!(
        report.violations[0].detail.contains("no longer valid"),
        "{report}"
    );
}

#[test]
fn a_client_clock_behind_its_registration_is_not_a_violation() {
    let mut history = walkthrough();
    // Registered at T0 - 1 s; this client's clock said T0 - 5 s when it signed.
    let index = history.index_of("pool_vip", 1);
    let mut event = history.pool_event_mut(index).event.clone();
    history.resign(&mut event, "shop", Timestamp(common::T0 - 5 * SECOND));
    history.pool_event_mut(index).event = event;
    let report = audit(&history.records, AuditOptions::default());
    assert!(report.is_clean(), "{report}");
}

#[test]
fn state_transition_names_time_going_backwards_in_a_stream() {
    let mut history = walkthrough();
    let index = history.index_of("pool_ga", 2);
    let previous = history
        .pool_event_mut(history.index_of("pool_ga", 1))
        .event
        .at;
    history.pool_event_mut(index).event.at = Timestamp(previous.0 - 1);
    let report = audit(&history.records, AuditOptions::records_only());
    assert_names(
        &report,
        Check::StateTransition,
        position_of(&history, index),
        &[],
    );
    assert!(
        report.violations[0].detail.contains("backwards"),
        "{report}"
    );
}

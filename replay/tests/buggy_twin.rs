//! The seed's buggy twin, produced by the domain itself with its test-only fault switch: a
//! cancel (or expiry) that releases the commitment without returning the slot. The buggy
//! service's fold accepted that log; the audit names the fault from the records alone.

mod common;

use allot_domain::fault::{self, Fault};
use allot_replay::{Audit, AuditOptions, Check, stranded_slots};
use common::{History, MINUTE, SECOND};

fn twin(fault: Fault) -> (History, u64) {
    let mut history = History::new();
    history.declare(0, "p", 2, None, &[]);
    history.reserve(SECOND, "p", "a", "r", "t1");
    history.reserve(2 * SECOND, "p", "b", "r", "t2");
    fault::set(Some(fault));
    match fault {
        Fault::CancelForgetsRelease => history.cancel(3 * SECOND, "p", 1, "t3"),
        Fault::ExpireForgetsRelease => history.expire(SECOND + 10 * MINUTE, "p", 1, "t3"),
    };
    fault::set(None);
    let position = history
        .records
        .last()
        .map(allot_replay::Recorded::position)
        .unwrap_or(0);
    // Life goes on: B confirms.
    history.confirm(4 * SECOND, "p", 2, "t4");
    (history, position)
}

#[test]
fn a_cancel_that_keeps_its_slot_is_a_stranded_slot_and_a_coherence_violation() {
    for fault in [Fault::CancelForgetsRelease, Fault::ExpireForgetsRelease] {
        let (history, position) = twin(fault);
        // Every event is properly signed; the correct domain's fold refuses the bad release.
        let report = Audit::run(AuditOptions::default(), &history.records);
        assert_eq!(report.count(Check::Attribution), 0, "{report}");
        assert_eq!(report.count(Check::Fold), 1, "{report}");
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.check == Check::AllocationCoherence && v.position == position)
        );
        assert_eq!(report.count(Check::StrandedSlot), 1, "{report}");
        let stranded = stranded_slots(&history.records);
        assert_eq!(stranded.len(), 1);
        assert_eq!(stranded[0].reservation.to_string(), "p:1");
        assert_eq!(stranded[0].position, position);
    }
}

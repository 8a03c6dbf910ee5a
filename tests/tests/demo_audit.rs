//! `allot demo` on the embedded store audits clean, and a rebuild from a checkpoint plus the
//! tail equals a full rebuild.

use std::sync::Arc;

use allot_server::store::EventStore;
use allot_server::store::embedded::EmbeddedStore;
use allot_tools::demo::{self, DemoOptions};
use allot_tools::inspect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_add_drop_rush_audits_clean_and_rebuilds_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).await.expect("open"));
    let report = demo::run(
        Arc::clone(&store),
        &dir.path().join("keys"),
        DemoOptions {
            students: 200,
            seats: 10,
            cutoff_ms: 1_500,
            seed: 7,
        },
    )
    .await
    .expect("demo runs");
    assert_eq!(report.oversold, 0);
    assert_eq!(report.incoherent_pools, 0);
    assert_eq!(report.audit_violations, 0);
    assert!(
        report.holds >= report.seats,
        "the rush filled the course: {report}"
    );
    assert!(
        report.audit_events > report.attempts,
        "every attempt was journaled"
    );

    let bar = inspect::progress_bar(None, "rebuild");
    let full = inspect::rebuild(store.as_ref(), None, &bar)
        .await
        .expect("rebuild");
    let full_contents = full.projections().contents();
    assert_eq!(
        full_contents.applied + 4,
        report.audit_events,
        "four actor events: the first admin and sweeper, the server key, the demo's client"
    );

    // A checkpoint taken mid-log (by rebuilding a prefix), then the tail.
    let mut prefix = allot_replay::Rebuild::new(allot_replay::RebuildOptions { fold_pools: false });
    let half = report.audit_events / 2;
    let mut seen = 0;
    inspect::for_each_record(store.as_ref(), None, &bar, |recorded| {
        if seen < half {
            prefix
                .apply(recorded)
                .map_err(inspect::InspectError::from)?;
        }
        seen += 1;
        Ok(())
    })
    .await
    .expect("prefix");
    let checkpoint =
        allot_replay::Checkpoint::from_bytes(&prefix.checkpoint().to_bytes().expect("encode"))
            .expect("decode");
    let resumed = inspect::rebuild(store.as_ref(), Some(&checkpoint), &bar)
        .await
        .expect("resume");
    assert_eq!(resumed.projections().contents(), full_contents);
}

//! Rebuild: a full rebuild equals a checkpoint plus the tail, and equals the live projections.

mod common;

use allot_replay::{Checkpoint, Rebuild, RebuildError, RebuildOptions, Recorded};
use common::walkthrough;

#[test]
fn a_full_rebuild_equals_the_live_projections_and_aggregates() {
    let history = walkthrough();
    let mut rebuild = Rebuild::default();
    let mut reported = Vec::new();
    let done = rebuild
        .run(&history.records, |events| reported.push(events))
        .expect("clean log rebuilds");
    assert_eq!(done, history.records.len() as u64);
    assert_eq!(reported.last(), Some(&done));
    assert_eq!(rebuild.projections().contents(), history.live.contents());
    assert_eq!(rebuild.pools(), &history.pools);
    assert!(rebuild.actors().actors().count() >= 4);
}

#[test]
fn a_checkpoint_plus_the_tail_equals_a_full_rebuild() {
    let history = walkthrough();
    let mut full = Rebuild::default();
    full.run(&history.records, |_| {}).expect("rebuilds");

    for cut in [
        0,
        5,
        history.records.len() / 2,
        history.records.len() - 1,
        history.records.len(),
    ] {
        let mut head = Rebuild::default();
        head.run(&history.records[..cut], |_| {}).expect("rebuilds");
        let bytes = head.checkpoint().to_bytes().expect("serializes");
        let checkpoint = Checkpoint::from_bytes(&bytes).expect("reads back");
        assert_eq!(checkpoint, head.checkpoint());

        // Folding pools: the whole log is fed, projections take only the tail.
        let mut resumed =
            Rebuild::from_checkpoint(&checkpoint, RebuildOptions::default()).expect("format");
        resumed.run(&history.records, |_| {}).expect("rebuilds");
        assert_eq!(
            resumed.projections().contents(),
            full.projections().contents(),
            "cut {cut}"
        );
        assert_eq!(resumed.pools(), full.pools(), "cut {cut}");

        // Projections only: only the records after the checkpoint are fed.
        let mut tail_only =
            Rebuild::from_checkpoint(&checkpoint, RebuildOptions { fold_pools: false })
                .expect("format");
        let after = tail_only.resume_after();
        let tail: Vec<&Recorded> = history
            .records
            .iter()
            .filter(|r| after.is_none_or(|p| r.position() > p))
            .collect();
        tail_only.run(tail, |_| {}).expect("rebuilds");
        assert_eq!(
            tail_only.projections().contents(),
            full.projections().contents(),
            "cut {cut}"
        );
    }
}

#[test]
fn an_event_evolve_refuses_stops_the_rebuild_where_it_is() {
    let mut history = walkthrough();
    let index = history.index_of("pool_vip", 4);
    history.pool_event_mut(index).event.allocated_after += 1;
    let expected = history.records[index].position();
    let mut rebuild = Rebuild::default();
    match rebuild.run(&history.records, |_| {}) {
        Err(RebuildError::Evolve {
            stream,
            version,
            position,
            ..
        }) => {
            assert_eq!(
                (stream.as_str(), version, position),
                ("pool-pool_vip", 4, expected)
            );
        }
        other => panic!("expected an evolve error, got {other:?}"),
    }
}

#[test]
fn a_checkpoint_of_another_format_is_refused() {
    let history = walkthrough();
    let mut rebuild = Rebuild::default();
    rebuild.run(&history.records, |_| {}).expect("rebuilds");
    let mut checkpoint = rebuild.checkpoint();
    checkpoint.format_version = 99;
    let bytes = checkpoint.to_bytes().expect("serializes");
    assert!(matches!(
        Checkpoint::from_bytes(&bytes),
        Err(RebuildError::CheckpointFormat { found: 99 })
    ));
    assert!(matches!(
        Checkpoint::from_bytes(b"{not json"),
        Err(RebuildError::CheckpointMalformed(_))
    ));
}

#[test]
fn records_decode_from_stored_payloads() {
    use allot_domain::codec;
    let history = walkthrough();
    for record in &history.records {
        let (stream, payload) = match record {
            Recorded::Pool(p) => (p.stream.as_str(), codec::encode_event(&p.event)),
            Recorded::Actor(a) => ("actors", codec::encode_actor_event(&a.event)),
        };
        let decoded = Recorded::decode(stream, record.version(), record.position(), &payload)
            .expect("decodes");
        assert_eq!(&decoded, record);
    }
    assert!(Recorded::decode("pool-x", 0, 0, &[]).is_err());
}

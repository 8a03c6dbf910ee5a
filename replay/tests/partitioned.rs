//! The partitioned audit and rebuild (pool streams split over workers) give exactly what the
//! one-thread audit and rebuild give, on clean logs and on logs tampered in many ways at once.

mod common;

use allot_domain::codec;
use allot_replay::{
    Audit, AuditOptions, AuditReport, AuditRouter, Rebuild, RebuildError, RebuildOptions, Recorded,
};
use common::{History, MINUTE, SECOND, walkthrough};

fn payload(record: &Recorded) -> Vec<u8> {
    match record {
        Recorded::Pool(pool) => codec::encode_event(&pool.event),
        Recorded::Actor(actor) => codec::encode_actor_event(&actor.event),
    }
}

/// The partitioned audit, its partitions fed one after the other (threads change nothing: each
/// partition sees its own records in log order).
fn audit_partitioned(records: &[Recorded], options: AuditOptions, count: usize) -> AuditReport {
    let mut router = AuditRouter::new(count);
    let mut partitions = Audit::partitions(options, count);
    let routed: Vec<_> = records
        .iter()
        .map(|record| router.route(record.stream(), record.position(), &payload(record)))
        .collect();
    for (index, partition) in partitions.iter_mut().enumerate() {
        for (record, routed) in records.iter().zip(&routed) {
            if routed.is_for(index) {
                partition.observe_routed(record, routed);
            }
        }
    }
    Audit::finish_partitions(partitions)
}

/// The walkthrough, then four pools interleaved with holds, confirms, cancels and expiries.
fn varied() -> History {
    let mut history = walkthrough();
    let start = 40 * MINUTE;
    let pools = ["p0", "p1", "p2", "p3"];
    for (i, pool) in pools.iter().enumerate() {
        history.declare(start + i as u64, pool, 6, None, &[]);
    }
    let mut made = [0u64; 4];
    for n in 0..48u64 {
        let p = (n % 4) as usize;
        let ms = start + SECOND + n * 50;
        history.reserve(ms, pools[p], &format!("who-{n}"), "r", &format!("t{n}"));
        made[p] += 1;
        let seq = made[p];
        match n % 3 {
            0 => history.confirm(ms + 10, pools[p], seq, &format!("c{n}")),
            1 => history.cancel(ms + 10, pools[p], seq, &format!("x{n}")),
            _ => history.expire(ms + 11 * MINUTE, pools[p], seq, &format!("e{n}")),
        };
    }
    history
}

/// A small deterministic generator (no dependency on a crate's seeding).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Damages the log at a few places, each in one of the ways the audit checks.
fn tamper(records: &mut Vec<Recorded>, random: &mut Lcg) {
    for _ in 0..1 + random.below(4) {
        let index = random.below(records.len());
        let Recorded::Pool(event) = &mut records[index] else {
            // Move an actor event later (a key registered after its use).
            let moved = records.remove(index);
            let to = random.below(records.len());
            records.insert(to, moved);
            continue;
        };
        match random.below(10) {
            0 => event.event.allocated_after += 1,
            1 => event.event.allocated_before += 1,
            2 => event.version += 1,
            3 => event.position = event.position.saturating_sub(50),
            4 => event.event.new_state = None,
            5 => event.event.at = common::at(0),
            6 => event.event.pool = allot_domain::PoolId::new("p0"),
            7 => event.stream = "pool-elsewhere".to_owned(),
            8 => {
                let copy = records[index].clone();
                let to = random.below(records.len());
                records.insert(to, copy);
            }
            _ => {
                records.remove(index);
            }
        }
    }
}

fn assert_same_audit(records: &[Recorded], options: AuditOptions, what: &str) {
    let whole = Audit::run(options, records);
    for count in 1..=3 {
        let split = audit_partitioned(records, options, count);
        assert_eq!(split, whole, "{what}, {count} partitions");
    }
}

#[test]
fn the_partitioned_audit_reports_what_the_whole_audit_reports() {
    let clean = varied();
    let options = AuditOptions::records_only();
    assert!(Audit::run(options, &clean.records).is_clean());
    assert_same_audit(&clean.records, options, "clean");
    let mut found_violations = 0;
    for seed in 0..60u64 {
        let mut records = clean.records.clone();
        tamper(&mut records, &mut Lcg(seed));
        for options in [
            AuditOptions::records_only(),
            AuditOptions {
                check_fold: true,
                ..AuditOptions::records_only()
            },
            // Few kept: the same first violations must be kept.
            AuditOptions {
                violations_max: 3,
                ..AuditOptions::records_only()
            },
        ] {
            assert_same_audit(&records, options, &format!("seed {seed}"));
        }
        if !Audit::run(options, &records).is_clean() {
            found_violations += 1;
        }
    }
    assert!(found_violations > 40, "{found_violations}");
}

#[test]
fn partitions_do_not_verify_signatures() {
    let partitions = Audit::partitions(AuditOptions::default(), 2);
    let report = Audit::finish_partitions(partitions);
    assert!(!report.options.verify_signatures);
    assert!(report.options.check_fold);
}

#[test]
fn peek_pool_reads_the_pool_of_every_event_and_refuses_what_does_not_decode() {
    for record in &varied().records {
        if let Recorded::Pool(pool) = record {
            let bytes = codec::encode_event(&pool.event);
            assert_eq!(codec::peek_pool(&bytes), Ok(pool.event.pool.as_str()));
        }
    }
    assert!(codec::peek_pool(&[]).is_err());
    assert!(codec::peek_pool(&[codec::SCHEMA_VERSION + 1, 1, b'a']).is_err());
    assert!(codec::peek_pool(&[codec::SCHEMA_VERSION, 5, b'a']).is_err());
}

/// The partitioned rebuild as `allot rebuild` drives it: order and actors here, each pool's
/// events on the partition of its id.
fn rebuild_partitioned(records: &[Recorded], count: usize) -> Result<Rebuild, RebuildError> {
    let mut rebuild = Rebuild::new(RebuildOptions { fold_pools: false });
    let projections = rebuild.shared_projections().expect("projections only");
    let mut partitions: Vec<Vec<&Recorded>> = vec![Vec::new(); count];
    for record in records {
        let project = rebuild.admit(record.position())?;
        match record {
            Recorded::Actor(actor) => rebuild.apply_actor(actor),
            Recorded::Pool(pool) if project => {
                let bytes = payload(record);
                let id = codec::peek_pool(&bytes).expect("encoded");
                assert_eq!(id, pool.event.pool.as_str());
                partitions[id.len() % count].push(record);
            }
            Recorded::Pool(_) => {}
        }
    }
    for partition in partitions {
        for record in partition {
            if let Recorded::Pool(pool) = record {
                Rebuild::project_into(&projections, pool)?;
            }
        }
    }
    drop(projections);
    Ok(rebuild)
}

#[test]
fn the_partitioned_rebuild_equals_the_one_thread_rebuild() {
    let history = varied();
    let mut whole = Rebuild::new(RebuildOptions { fold_pools: false });
    whole.run(&history.records, |_| {}).expect("rebuilds");
    for count in 1..=3 {
        let split = rebuild_partitioned(&history.records, count).expect("rebuilds");
        assert_eq!(
            split.projections().contents(),
            whole.projections().contents()
        );
        assert_eq!(split.checkpoint(), whole.checkpoint());
        assert_eq!(split.events_done(), whole.events_done());
        assert_eq!(
            split.actors().actors().count(),
            whole.actors().actors().count()
        );
        let (projections, _, _) = split.into_parts();
        assert_eq!(projections.contents(), whole.projections().contents());
    }
    // Out of order: both stop with the same error.
    let mut records = history.records.clone();
    records.swap(10, 11);
    let mut whole = Rebuild::new(RebuildOptions { fold_pools: false });
    let expected = whole.run(&records, |_| {}).map(|_| ());
    assert!(expected.is_err());
    assert_eq!(rebuild_partitioned(&records, 2).map(|_| ()), expected);
}

//! A rough audit throughput probe (ignored by default; run in release):
//! `cargo test -p allot-replay --release --test throughput -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use allot_domain::Action;
use allot_replay::{Audit, AuditOptions, Rebuild};
use common::{History, MINUTE};

#[test]
#[ignore = "a measurement, not a check"]
fn audit_throughput() {
    let mut history = History::new();
    const POOLS: u64 = 50;
    const EVENTS_PER_POOL: u64 = 6_000;
    for p in 0..POOLS {
        history.declare(p, &format!("p{p}"), 1_000_000, None, &[]);
    }
    for i in 0..EVENTS_PER_POOL / 3 {
        for p in 0..POOLS {
            let pool = format!("p{p}");
            let ms = MINUTE + i * 1_000 + p;
            let seq = i + 1;
            history.reserve(ms, &pool, "fan", "ga", &format!("r{i}"));
            history.confirm(ms + 1, &pool, seq, &format!("c{i}"));
            if i % 2 == 0 {
                history
                    .run(
                        ms + 2,
                        "shop",
                        &pool,
                        &format!("x{i}"),
                        allot_domain::Action::ConfirmReservation { reservation: seq },
                    )
                    .expect("recorded");
            } else {
                history.reserve(ms + 2, &pool, "fan2", "ga", &format!("y{i}"));
            }
        }
    }
    let events = history.records.len() as f64;
    // ALLOT_AUDIT_REPEAT=n repeats the records-only audit (for a profiler).
    let repeat: u32 = std::env::var("ALLOT_AUDIT_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut best = f64::MAX;
    for _ in 0..repeat {
        let started = Instant::now();
        assert!(Audit::run(AuditOptions::records_only(), &history.records).is_clean());
        best = best.min(started.elapsed().as_secs_f64());
    }
    if repeat > 0 {
        println!(
            "audit records only, best of {repeat}: {:.0} events/s",
            events / best
        );
    }
    for (name, options) in [
        ("records only", AuditOptions::records_only()),
        (
            "with fold",
            AuditOptions {
                check_fold: true,
                ..AuditOptions::records_only()
            },
        ),
        (
            "with signatures",
            AuditOptions {
                check_fold: false,
                ..AuditOptions::default()
            },
        ),
    ] {
        let started = Instant::now();
        let report = Audit::run(options, &history.records);
        let elapsed = started.elapsed().as_secs_f64();
        assert!(report.is_clean(), "{report}");
        println!(
            "audit {name}: {events} events in {elapsed:.3} s = {:.0} events/s",
            events / elapsed
        );
    }
    let started = Instant::now();
    Rebuild::default()
        .run(&history.records, |_| {})
        .expect("rebuilds");
    let elapsed = started.elapsed().as_secs_f64();
    println!("rebuild: {:.0} events/s", events / elapsed);
}

/// The signed audit of a log whose pool events all come from signed batches (of
/// `ALLOT_AUDIT_BATCH` commands, 100 by default, spread over the pools): one batch signature
/// per batch, one proof per event.
#[test]
#[ignore = "a measurement, not a check"]
fn audit_throughput_batched() {
    let mut history = History::new();
    const POOLS: u64 = 50;
    const RESERVATIONS: u64 = 100_000;
    let batch: u64 = std::env::var("ALLOT_AUDIT_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    for p in 0..POOLS {
        history.declare(p, &format!("p{p}"), 1_000_000, None, &[]);
    }
    let reserve = |i: u64| Action::Reserve {
        resource: "ga".into(),
        requester: format!("fan{i}"),
        duration_ms: 10 * MINUTE,
        count: 1,
    };
    // Reserves in batches, then the same reservations confirmed in batches.
    let mut next = 0;
    let mut batches = 0;
    while next < 2 * RESERVATIONS {
        let members: Vec<(String, String, Action)> = (next..(next + batch).min(2 * RESERVATIONS))
            .map(|i| {
                let r = i % RESERVATIONS;
                let pool = format!("p{}", r % POOLS);
                if i < RESERVATIONS {
                    (pool, format!("r{r}"), reserve(r))
                } else {
                    let seq = r / POOLS + 1;
                    (
                        pool,
                        format!("c{r}"),
                        Action::ConfirmReservation { reservation: seq },
                    )
                }
            })
            .collect();
        let members: Vec<(&str, &str, Action)> = members
            .iter()
            .map(|(pool, token, action)| (pool.as_str(), token.as_str(), action.clone()))
            .collect();
        history.run_batch(MINUTE + batches, "shop", &format!("b{batches}"), &members);
        next += batch;
        batches += 1;
    }
    let events = history.records.len() as f64;
    let options = AuditOptions {
        check_fold: false,
        ..AuditOptions::default()
    };
    let started = Instant::now();
    let report = Audit::run(options, &history.records);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.batch_signatures_verified, batches);
    println!(
        "audit with signatures, batches of {batch}: {events} events in {elapsed:.3} s = {:.0} events/s",
        events / elapsed
    );
}

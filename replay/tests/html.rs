//! The HTML report: one chart per pool, the cutoff line, rejection marks, no script.

mod common;

use allot_replay::{Audit, AuditOptions, HtmlReport, html_report, utc};
use common::{History, SECOND, walkthrough};

#[test]
fn the_report_draws_every_pool_and_the_cutoff() {
    let history = walkthrough();
    let page = html_report(&history.records, "walkthrough <audit>");
    if let Ok(path) = std::env::var("ALLOT_HTML_OUT") {
        std::fs::write(path, &page).expect("writes the page");
    }
    assert_eq!(page.matches("<svg xmlns").count(), 3, "one chart per pool");
    assert_eq!(
        page.matches("<title>closes_at").count(),
        1,
        "one pool has closes_at"
    );
    assert!(page.contains("closes_at 2026-01-01 00:30:00.000Z"));
    assert!(
        page.contains("pool-closed at"),
        "rejections are marked by code"
    );
    assert!(page.contains("resource-unavailable"));
    assert!(page.contains("walkthrough &lt;audit&gt;"));
    assert!(!page.contains("<script"));
    // No external asset: the only URLs are the SVG namespace.
    assert_eq!(
        page.matches("http").count(),
        page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
    );
}

#[test]
fn the_report_can_carry_the_audit_summary() {
    let history = walkthrough();
    let audit = Audit::run(AuditOptions::records_only(), &history.records);
    let mut report = HtmlReport::new("with audit").with_audit(&audit);
    for record in &history.records {
        report.observe(record);
    }
    let page = report.finish();
    assert!(page.contains("CLEAN"));
}

#[test]
fn long_logs_are_thinned_to_a_bounded_page() {
    let mut history = History::new();
    history.declare(0, "big", 100_000, None, &[]);
    for i in 0..5_000u64 {
        history.reserve(SECOND + i * 10, "big", "fan", "ga", &format!("t{i}"));
    }
    let page = html_report(&history.records, "big");
    assert!(page.len() < 200_000, "{} bytes", page.len());
    assert!(page.contains("<svg xmlns"));
}

#[test]
fn utc_formats_epoch_milliseconds() {
    assert_eq!(utc(0), "1970-01-01 00:00:00.000Z");
    assert_eq!(utc(common::T0), "2026-01-01 00:00:00.000Z");
    assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123Z");
}

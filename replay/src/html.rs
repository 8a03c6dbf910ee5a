//! A self-contained HTML report: per pool, allocated and capacity over time as step lines, the
//! `closes_at` cutoff as a vertical line, rejections marked by code, and a summary table.
//!
//! Inline SVG and CSS only: no script, no external asset. Series are thinned as they grow
//! (every other point dropped when [`SERIES_POINTS_MAX`] is reached), so memory and page size
//! stay bounded whatever the log length; the last point of each series is always kept.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use allot_domain::{Change, PoolId, RejectionCode};
use allot_projections::PoolCount;

use crate::audit::AuditReport;
use crate::record::{Recorded, fold_records};

/// Pools drawn; further pools are counted in the summary only.
pub const REPORT_POOLS_MAX: usize = 100;
/// Points kept per series before thinning.
pub const SERIES_POINTS_MAX: usize = 2_000;
/// Chart size, in SVG user units.
const CHART_WIDTH: f64 = 760.0;
const CHART_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 50.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 40.0;
/// The strip above the plot where rejections are marked.
const MARKS_Y: f64 = 30.0;
const CUTOFF_LABEL_Y: f64 = 12.0;
const MARGIN_BOTTOM: f64 = 30.0;

/// A thinned time series.
#[derive(Debug, Default)]
struct Series<T> {
    points: Vec<(u64, T)>,
    /// Keep one point in `stride`.
    stride: u64,
    offered: u64,
    last: Option<(u64, T)>,
}

impl<T: Clone> Series<T> {
    fn new() -> Self {
        Series {
            points: Vec::new(),
            stride: 1,
            offered: 0,
            last: None,
        }
    }

    fn push(&mut self, at: u64, value: T) {
        self.offered += 1;
        self.last = Some((at, value.clone()));
        if !self.offered.is_multiple_of(self.stride) {
            return;
        }
        if self.points.len() >= SERIES_POINTS_MAX {
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride *= 2;
        }
        self.points.push((at, value));
    }

    /// The kept points, with the true last point.
    fn all(&self) -> Vec<(u64, T)> {
        let mut points = self.points.clone();
        if let Some(last) = &self.last
            && points.last().map(|p| p.0) != Some(last.0)
        {
            points.push(last.clone());
        }
        points
    }
}

#[derive(Debug)]
struct PoolReport {
    pool: PoolId,
    /// Capacity in force, allocated, closes_at and the tallies: the projection's fold.
    counts: PoolCount,
    first_at: u64,
    last_at: u64,
    capacity: Series<u64>,
    allocated: Series<u64>,
    rejections: Series<RejectionCode>,
    peak_allocated: u64,
    events: u64,
}

/// Collects what the report draws, one record at a time.
#[derive(Debug)]
pub struct HtmlReport {
    title: String,
    pools: Vec<PoolReport>,
    index: BTreeMap<PoolId, usize>,
    pools_omitted: BTreeMap<PoolId, ()>,
    events: u64,
    audit: Option<String>,
}

impl HtmlReport {
    pub fn new(title: &str) -> HtmlReport {
        HtmlReport {
            title: title.to_owned(),
            pools: Vec::new(),
            index: BTreeMap::new(),
            pools_omitted: BTreeMap::new(),
            events: 0,
            audit: None,
        }
    }

    /// Adds the audit's summary to the page.
    pub fn with_audit(mut self, report: &AuditReport) -> HtmlReport {
        self.audit = Some(report.to_string());
        self
    }

    pub fn observe(&mut self, recorded: &Recorded) {
        self.events += 1;
        let Recorded::Pool(recorded) = recorded else {
            return;
        };
        let event = &recorded.event;
        let index = match self.index.get(&event.pool) {
            Some(index) => *index,
            None if self.pools.len() < REPORT_POOLS_MAX => {
                self.index.insert(event.pool.clone(), self.pools.len());
                self.pools.push(PoolReport {
                    pool: event.pool.clone(),
                    counts: PoolCount::default(),
                    first_at: event.at.0,
                    last_at: event.at.0,
                    capacity: Series::new(),
                    allocated: Series::new(),
                    rejections: Series::new(),
                    peak_allocated: 0,
                    events: 0,
                });
                self.pools.len() - 1
            }
            None => {
                if self.pools_omitted.len() < REPORT_POOLS_MAX {
                    self.pools_omitted.insert(event.pool.clone(), ());
                }
                return;
            }
        };
        let Some(pool) = self.pools.get_mut(index) else {
            return;
        };
        let at = event.at.0;
        pool.events += 1;
        pool.first_at = pool.first_at.min(at);
        pool.last_at = pool.last_at.max(at);
        let allocated_before = pool.counts.allocated;
        pool.counts.apply(event);
        match &event.change {
            Change::PoolDeclared | Change::CapacityAdjusted { .. } => {
                pool.capacity.push(at, pool.counts.capacity);
            }
            Change::Rejected(rejection) => pool.rejections.push(at, rejection.code()),
            _ => {}
        }
        if event.allocated_after != allocated_before || pool.allocated.offered == 0 {
            pool.allocated.push(at, event.allocated_after);
        }
        pool.peak_allocated = pool.peak_allocated.max(event.allocated_after);
    }

    /// The page.
    pub fn finish(self) -> String {
        let mut page = String::with_capacity(16 * 1024);
        let title = escape(&self.title);
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n<p>{} events, {} pools drawn{}.</p>\n",
            self.events,
            self.pools.len(),
            if self.pools_omitted.is_empty() {
                String::new()
            } else {
                format!(", more not drawn (limit {REPORT_POOLS_MAX})")
            }
        );
        if let Some(audit) = &self.audit {
            let _ = write!(page, "<h2>Audit</h2>\n<pre>{}</pre>\n", escape(audit));
        }
        legend(&mut page);
        summary_table(&mut page, &self.pools);
        for pool in &self.pools {
            chart(&mut page, pool);
        }
        page.push_str("</body></html>\n");
        page
    }
}

/// The report for a whole log.
pub fn html_report<I, R>(records: I, title: &str) -> String
where
    I: IntoIterator<Item = R>,
    R: Borrow<Recorded>,
{
    fold_records!(records, HtmlReport::new(title))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th:first-child,td:first-child{text-align:left}svg{background:#fafafa;border:1px solid #ddd;margin:.5em 0 1.5em}\
.capacity{stroke:#888;stroke-width:2;fill:none}.allocated{stroke:#1f6fd1;stroke-width:2;fill:none}\
.cutoff{stroke:#c62828;stroke-width:1.5;stroke-dasharray:6 4}.axis{stroke:#999}\
text{font-size:11px;fill:#444}.legend span{display:inline-block;margin-right:1em}\
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.3em;vertical-align:middle}";

fn color(code: RejectionCode) -> &'static str {
    match code {
        RejectionCode::InvalidRequest => "#9e9e9e",
        RejectionCode::TokenCollision => "#6a1b9a",
        RejectionCode::NotKnown => "#795548",
        RejectionCode::PoolClosed => "#c62828",
        RejectionCode::PoolCapacityExceeded => "#ef6c00",
        RejectionCode::ResourceUnavailable => "#f9a825",
        RejectionCode::NotHeld => "#00897b",
        RejectionCode::WindowElapsed => "#ad1457",
        RejectionCode::WindowNotElapsed => "#5c6bc0",
        RejectionCode::RecordingFailure => "#000000",
        RejectionCode::PoolAlreadyDeclared => "#8d6e63",
        RejectionCode::CapacityBelowAllocated => "#2e7d32",
        RejectionCode::NotOwner => "#37474f",
    }
}

fn legend(page: &mut String) {
    page.push_str("<p class=\"legend\"><span><svg width=\"24\" height=\"10\" style=\"border:0;margin:0;background:none\"><line class=\"allocated\" x1=\"0\" y1=\"5\" x2=\"24\" y2=\"5\"/></svg> allocated</span><span><svg width=\"24\" height=\"10\" style=\"border:0;margin:0;background:none\"><line class=\"capacity\" x1=\"0\" y1=\"5\" x2=\"24\" y2=\"5\"/></svg> capacity</span><span><svg width=\"24\" height=\"10\" style=\"border:0;margin:0;background:none\"><line class=\"cutoff\" x1=\"0\" y1=\"5\" x2=\"24\" y2=\"5\"/></svg> closes_at</span>");
    for code in RejectionCode::ALL {
        let _ = write!(
            page,
            "<span><i class=\"swatch\" style=\"background:{}\"></i>{}</span>",
            color(code),
            code.as_str()
        );
    }
    page.push_str("</p>\n");
}

fn summary_table(page: &mut String, pools: &[PoolReport]) {
    page.push_str("<table><tr><th>pool</th><th>events</th><th>reservations</th><th>confirmed</th><th>released</th><th>expired</th><th>rejections</th><th>allocated</th><th>capacity</th><th>peak allocated</th><th>closes_at</th></tr>\n");
    for pool in pools {
        let counts = &pool.counts;
        let rejections: Vec<String> = counts
            .rejections
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let _ = writeln!(
            page,
            "<tr><td><a href=\"#pool-{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            pool.events,
            counts.reservations,
            counts.confirmed,
            counts.released,
            counts.expired,
            escape(&rejections.join(", ")),
            counts.allocated,
            counts.capacity,
            pool.peak_allocated,
            counts
                .closes_at
                .map_or_else(|| "-".to_owned(), |at| utc(at.0)),
            id = escape(pool.pool.as_str()),
        );
    }
    page.push_str("</table>\n");
}

fn chart(page: &mut String, pool: &PoolReport) {
    let mut t0 = pool.first_at;
    let mut t1 = pool.last_at;
    if let Some(cutoff) = pool.counts.closes_at {
        t0 = t0.min(cutoff.0);
        t1 = t1.max(cutoff.0);
    }
    // Leave a little room after the last event so the final step is visible.
    let span = (t1 - t0).max(1);
    let t1 = t1 + span / 20 + 1;
    let span = (t1 - t0) as f64;
    let capacity = pool.capacity.all();
    let allocated = pool.allocated.all();
    let v_max = capacity
        .iter()
        .chain(allocated.iter())
        .map(|p| p.1)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |t: u64| MARGIN_LEFT + (t.saturating_sub(t0) as f64) / span * plot_width;
    let y = |v: u64| CHART_HEIGHT - MARGIN_BOTTOM - (v as f64) / (v_max * 1.1) * plot_height;
    let id = escape(pool.pool.as_str());
    let _ = write!(
        page,
        "<h2 id=\"pool-{id}\">{id}</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" aria-label=\"allocated and capacity of {id}\">\n"
    );
    let base = CHART_HEIGHT - MARGIN_BOTTOM;
    let _ = writeln!(
        page,
        "<line class=\"axis\" x1=\"{MARGIN_LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/><line class=\"axis\" x1=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" x2=\"{MARGIN_LEFT}\" y2=\"{base}\"/>",
        CHART_WIDTH - MARGIN_RIGHT
    );
    let _ = writeln!(
        page,
        "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        MARGIN_LEFT - 4.0,
        y(v_max as u64) + 4.0,
        v_max as u64,
        MARGIN_LEFT - 4.0
    );
    let _ = writeln!(
        page,
        "<text x=\"{MARGIN_LEFT}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        CHART_HEIGHT - 10.0,
        utc(t0),
        CHART_WIDTH - MARGIN_RIGHT,
        CHART_HEIGHT - 10.0,
        utc(t1)
    );
    for (class, series) in [("capacity", &capacity), ("allocated", &allocated)] {
        if let Some(path) = step_path(series, &x, &y, x(t1)) {
            let _ = writeln!(page, "<path class=\"{class}\" d=\"{path}\"/>");
        }
    }
    if let Some(cutoff) = pool.counts.closes_at {
        let cx = x(cutoff.0);
        let _ = writeln!(
            page,
            "<line class=\"cutoff\" x1=\"{cx:.1}\" y1=\"{CUTOFF_LABEL_Y}\" x2=\"{cx:.1}\" y2=\"{base}\"><title>closes_at {}</title></line><text x=\"{:.1}\" y=\"{CUTOFF_LABEL_Y}\">closes_at</text>",
            utc(cutoff.0),
            cx + 3.0,
        );
    }
    for (at, code) in pool.rejections.all() {
        let _ = writeln!(
            page,
            "<circle cx=\"{:.1}\" cy=\"{MARKS_Y}\" r=\"3\" fill=\"{}\"><title>{} at {}</title></circle>",
            x(at),
            color(code),
            code.as_str(),
            utc(at)
        );
    }
    page.push_str("</svg>\n");
}

fn step_path(
    points: &[(u64, u64)],
    x: &impl Fn(u64) -> f64,
    y: &impl Fn(u64) -> f64,
    x_end: f64,
) -> Option<String> {
    let (first, rest) = points.split_first()?;
    let mut path = String::with_capacity(points.len() * 16);
    let _ = write!(path, "M{:.1} {:.1}", x(first.0), y(first.1));
    for (at, value) in rest {
        let _ = write!(path, " H{:.1} V{:.1}", x(*at), y(*value));
    }
    let _ = write!(path, " H{x_end:.1}");
    Some(path)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    const MS_PER_DAY: u64 = 86_400_000;
    let days = (ms / MS_PER_DAY) as i64;
    let in_day = ms % MS_PER_DAY;
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

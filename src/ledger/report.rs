//! The inspectors' report (`herald ledger report`): for a period, per route and per recipient,
//! how many notifications were made, how many were delivered within their deadline, how long
//! delivery took (median and 95th percentile), and every breach with its reason. Written as
//! JSON, CSV (one table: a spreadsheet opens it) or one self-contained HTML page (inline SVG,
//! no script, prints on A4).
//!
//! How a notification counts: `met` was delivered by its deadline; `breached` was delivered
//! after it, or is undelivered and its deadline has passed; `open` is undelivered with time
//! left. `short_notice` (the event left less time than the rule gives) and `late_on_arrival`
//! (the deadline had passed when the publisher published it) are the publisher's, not Herald's;
//! `untracked` has no deadline. Within deadline = met / (met + breached). Time to deliver runs
//! from when Herald made the notification to when the recipient took it.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::Status;
use super::read::{Counted, Found, Kind, LastAttempt};
#[cfg(test)]
use super::time;

/// The report of one period.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Breaches and open notifications are judged at this instant.
    pub generated_at: DateTime<Utc>,
    pub total: Line,
    pub routes: Vec<Line>,
    pub recipients: Vec<Line>,
    /// How long deliveries took, in bands, over the whole period.
    pub time_to_deliver: Vec<Band>,
    pub breaches: Vec<Breach>,
}

/// The figures for one route, one recipient, or the whole period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Line {
    pub name: String,
    pub notifications: u64,
    pub delivered: u64,
    pub met: u64,
    pub breached: u64,
    pub open: u64,
    pub short_notice: u64,
    pub late_on_arrival: u64,
    pub untracked: u64,
    /// met / (met + breached), as a percentage; none when neither happened.
    pub within_deadline_pct: Option<f64>,
    pub median_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// A band of the time-to-deliver chart.
#[derive(Debug, Clone, Serialize)]
pub struct Band {
    pub label: &'static str,
    pub count: u64,
}

/// A notification that missed its deadline, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Breach {
    pub key: String,
    pub route: String,
    pub recipient: String,
    pub channel: String,
    pub publisher: String,
    pub message_id: String,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub status: Status,
    pub attempts: i64,
    /// Why: how late, after how many attempts, the last failure and the parking reason.
    pub reason: String,
}

/// The bands' upper bounds in milliseconds, and their labels.
const BANDS: [(i64, &str); 7] = [
    (60_000, "under 1 min"),
    (300_000, "1-5 min"),
    (900_000, "5-15 min"),
    (3_600_000, "15-60 min"),
    (14_400_000, "1-4 h"),
    (86_400_000, "4-24 h"),
    (i64::MAX, "over 24 h"),
];

/// The counts of one line while rows are read.
#[derive(Default)]
struct Tally {
    line: Line,
    /// Milliseconds from made to delivered.
    took: Vec<i64>,
}

impl Tally {
    fn add(&mut self, kind: Kind, took: Option<i64>) {
        let l = &mut self.line;
        l.notifications += 1;
        match kind {
            Kind::Met => l.met += 1,
            Kind::Breached => l.breached += 1,
            Kind::Open => l.open += 1,
            Kind::ShortNotice => l.short_notice += 1,
            Kind::LateOnArrival => l.late_on_arrival += 1,
            Kind::Untracked => l.untracked += 1,
        }
        if let Some(t) = took {
            l.delivered += 1;
            self.took.push(t);
        }
    }

    fn finish(mut self, name: String) -> Line {
        self.took.sort_unstable();
        let mut line = self.line;
        line.name = name;
        let judged = line.met + line.breached;
        line.within_deadline_pct = (judged > 0).then(|| 100.0 * line.met as f64 / judged as f64);
        line.median_seconds = percentile(&self.took, 0.5);
        line.p95_seconds = percentile(&self.took, 0.95);
        line
    }
}

/// The nearest-rank percentile of sorted milliseconds, in seconds.
fn percentile(sorted: &[i64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}

/// Gathers a period's notifications into a report.
pub struct Builder {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    total: Tally,
    routes: HashMap<String, Tally>,
    recipients: HashMap<String, Tally>,
    bands: [u64; BANDS.len()],
}

impl Builder {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> Builder {
        Builder {
            from,
            to,
            now,
            total: Tally::default(),
            routes: HashMap::new(),
            recipients: HashMap::new(),
            bands: [0; BANDS.len()],
        }
    }

    /// Counts one notification.
    pub fn add(&mut self, n: Counted) {
        let (kind, took) = (n.kind, n.took);
        if let Some(t) = took {
            let band = BANDS.iter().position(|(max, _)| t < *max).unwrap_or(0);
            self.bands[band] += 1;
        }
        self.total.add(kind, took);
        self.routes.entry(n.route).or_default().add(kind, took);
        self.recipients
            .entry(n.recipient)
            .or_default()
            .add(kind, took);
    }

    /// The report, with the breaches (read separately: they are few) and their last failures.
    pub fn finish(self, breaches: Vec<Found>, last: &[LastAttempt]) -> Report {
        let lines = |groups: HashMap<String, Tally>| {
            let mut lines: Vec<Line> = groups.into_iter().map(|(k, t)| t.finish(k)).collect();
            lines.sort_by(|a, b| a.name.cmp(&b.name));
            lines
        };
        let last: HashMap<&str, &LastAttempt> = last.iter().map(|a| (a.key.as_str(), a)).collect();
        let now = self.now;
        Report {
            from: self.from,
            to: self.to,
            generated_at: now,
            total: self.total.finish("all".into()),
            routes: lines(self.routes),
            recipients: lines(self.recipients),
            time_to_deliver: BANDS
                .iter()
                .zip(self.bands)
                .map(|((_, label), count)| Band { label, count })
                .collect(),
            breaches: breaches
                .into_iter()
                .map(|f| {
                    let last = last.get(f.key.as_str()).copied();
                    let reason = why(&f, last, now);
                    let attempts = last.map_or(f.attempts, |a| a.made.max(f.attempts));
                    Breach {
                        key: f.key,
                        route: f.route,
                        recipient: f.recipient,
                        channel: f.channel,
                        publisher: f.publisher,
                        message_id: f.message_id,
                        event_type: f.event_type,
                        created_at: f.created_at,
                        deadline: f.deadline,
                        delivered_at: f.delivered_at,
                        status: f.status,
                        attempts,
                        reason,
                    }
                })
                .collect(),
        }
    }
}

/// Why a notification missed its deadline, in one sentence.
fn why(f: &Found, last: Option<&LastAttempt>, now: DateTime<Utc>) -> String {
    let late = |by: chrono::Duration| span(by.num_milliseconds());
    let mut parts = Vec::new();
    match (f.delivered_at, f.deadline) {
        (Some(at), Some(deadline)) => parts.push(format!(
            "delivered {} after the deadline",
            late(at - deadline)
        )),
        (None, Some(deadline)) => parts.push(format!(
            "not delivered ({}), {} past the deadline",
            f.status.as_str(),
            late(now - deadline)
        )),
        _ => parts.push("delivered after the deadline".into()),
    }
    let attempts = last.map_or(f.attempts, |a| a.made.max(f.attempts));
    parts.push(format!(
        "after {attempts} attempt{}",
        if attempts == 1 { "" } else { "s" }
    ));
    if let Some(a) = last {
        parts.push(match a.code {
            Some(code) => format!("last failure {} ({code})", a.outcome),
            None => format!("last failure {}", a.outcome),
        });
    }
    if let Some(reason) = f.reason.as_deref().filter(|r| !r.is_empty()) {
        parts.push(reason.to_owned());
    }
    parts.join("; ")
}

impl super::Store {
    /// The inspectors' report of the notifications made in `[from, to)`, as of `now`: what
    /// `herald ledger report` writes and the console serves.
    pub async fn report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Report, super::LedgerError> {
        let mut builder = Builder::new(from, to, now);
        self.counted(from, to, now, |n| builder.add(n)).await?;
        let breaches = self.breaches(from, to, now).await?;
        let keys: Vec<String> = breaches.iter().map(|b| b.key.clone()).collect();
        let last = self.last_failures(&keys).await?;
        Ok(builder.finish(breaches, &last))
    }
}

/// A span of milliseconds in the largest units that say it: `3 h 12 min`, `45.2 s`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{:.1} s", ms.max(0) as f64 / 1000.0),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Text a spreadsheet shows as text: a cell that begins like a formula (`=`, `+`, `-`, `@`, a
/// tab or a carriage return) gets a leading `'`, so a publisher's message_id cannot run as one.
fn inert(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn seconds(s: Option<f64>) -> String {
    s.map_or_else(String::new, |s| format!("{s:.3}"))
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(String::new, |p| format!("{p:.1}"))
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Csv(#[from] csv::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("the report's page: {0}")]
    Page(#[from] handlebars::RenderError),
}

impl Report {
    pub fn write_json(&self, out: impl std::io::Write) -> Result<(), WriteError> {
        serde_json::to_writer_pretty(out, self)?;
        Ok(())
    }

    /// One table: a row per route (`section` route), per recipient (`recipient`), the whole
    /// period (`total`), then one per breach (`breach`), each with the columns that apply.
    pub fn write_csv(&self, out: impl std::io::Write) -> Result<(), WriteError> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record([
            "section",
            "route",
            "recipient",
            "notifications",
            "delivered",
            "met",
            "breached",
            "open",
            "short_notice",
            "late_on_arrival",
            "untracked",
            "within_deadline_pct",
            "median_seconds",
            "p95_seconds",
            "key",
            "message_id",
            "event_type",
            "created_at",
            "deadline",
            "delivered_at",
            "status",
            "attempts",
            "reason",
        ])?;
        let line = |w: &mut csv::Writer<_>, section: &str, l: &Line| {
            let name = inert(&l.name);
            let (route, recipient) = match section {
                "route" => (name.as_str(), ""),
                "recipient" => ("", name.as_str()),
                _ => ("", ""),
            };
            let n = |v: u64| v.to_string();
            w.write_record([
                section.to_owned(),
                route.to_owned(),
                recipient.to_owned(),
                n(l.notifications),
                n(l.delivered),
                n(l.met),
                n(l.breached),
                n(l.open),
                n(l.short_notice),
                n(l.late_on_arrival),
                n(l.untracked),
                pct(l.within_deadline_pct),
                seconds(l.median_seconds),
                seconds(l.p95_seconds),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ])
        };
        for l in &self.routes {
            line(&mut w, "route", l)?;
        }
        for l in &self.recipients {
            line(&mut w, "recipient", l)?;
        }
        line(&mut w, "total", &self.total)?;
        for b in &self.breaches {
            let mut row = vec![String::new(); 23];
            row[0] = "breach".into();
            row[1] = inert(&b.route);
            row[2] = inert(&b.recipient);
            row[14] = inert(&b.key);
            row[15] = inert(&b.message_id);
            row[16] = inert(&b.event_type);
            row[17] = instant(b.created_at);
            row[18] = b.deadline.map(instant).unwrap_or_default();
            row[19] = b.delivered_at.map(instant).unwrap_or_default();
            row[20] = b.status.as_str().into();
            row[21] = b.attempts.to_string();
            row[22] = inert(&b.reason);
            w.write_record(&row)?;
        }
        w.flush()?;
        Ok(())
    }

    /// The page: one file, its style inline, its charts inline SVG, no script.
    pub fn write_html(&self, mut out: impl std::io::Write) -> Result<(), WriteError> {
        let mut hb = handlebars::Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::html_escape);
        let page = hb.render_template(PAGE, &self.page())?;
        out.write_all(page.as_bytes())?;
        Ok(())
    }

    /// What the page shows, with every number already written out.
    fn page(&self) -> serde_json::Value {
        use serde_json::json;
        let rows =
            |lines: &[Line]| -> Vec<serde_json::Value> { lines.iter().map(page_line).collect() };
        let most = self
            .time_to_deliver
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let bands: Vec<_> = self
            .time_to_deliver
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let height = 120.0 * b.count as f64 / most as f64;
                json!({
                    "label": b.label,
                    "count": b.count,
                    "x": 10 + i * 80,
                    "label_x": 45 + i * 80,
                    "y": format!("{:.1}", 140.0 - height),
                    "height": format!("{height:.1}"),
                })
            })
            .collect();
        let breaches: Vec<_> = self
            .breaches
            .iter()
            .map(|b| {
                json!({
                    "route": b.route,
                    "recipient": b.recipient,
                    "channel": b.channel,
                    "message_id": b.message_id,
                    "event_type": b.event_type,
                    "key": b.key,
                    "created_at": instant(b.created_at),
                    "deadline": b.deadline.map(instant).unwrap_or_default(),
                    "delivered_at": b.delivered_at.map(instant).unwrap_or_else(|| "-".into()),
                    "reason": b.reason,
                })
            })
            .collect();
        json!({
            "from": instant(self.from),
            "to": instant(self.to),
            "generated_at": instant(self.generated_at),
            "total": page_line(&self.total),
            "routes": rows(&self.routes),
            "recipients": rows(&self.recipients),
            "bands": bands,
            "breaches": breaches,
            "breach_count": self.breaches.len(),
        })
    }
}

/// A table row of the page: the figures, and the widths of its bar (met, breached, open).
fn page_line(l: &Line) -> serde_json::Value {
    let width = |n: u64| {
        if l.notifications == 0 {
            0.0
        } else {
            120.0 * n as f64 / l.notifications as f64
        }
    };
    let (met, breached, open) = (width(l.met), width(l.breached), width(l.open));
    serde_json::json!({
        "name": l.name,
        "notifications": l.notifications,
        "delivered": l.delivered,
        "met": l.met,
        "breached": l.breached,
        "open": l.open,
        "other": l.short_notice + l.late_on_arrival + l.untracked,
        "pct": l.within_deadline_pct.map_or_else(|| "-".into(), |p| format!("{p:.1} %")),
        "median": l.median_seconds.map_or_else(|| "-".into(), |s| span((s * 1000.0) as i64)),
        "p95": l.p95_seconds.map_or_else(|| "-".into(), |s| span((s * 1000.0) as i64)),
        "met_w": format!("{met:.1}"),
        "breached_x": format!("{met:.1}"),
        "breached_w": format!("{breached:.1}"),
        "open_x": format!("{:.1}", met + breached),
        "open_w": format!("{open:.1}"),
    })
}

const PAGE: &str = include_str!("report.html.hbs");

#[cfg(test)]
mod tests {
    use super::*;

    fn n(route: &str, recipient: &str, took: Option<i64>, kind: Kind) -> Counted {
        Counted {
            route: route.into(),
            recipient: recipient.into(),
            kind,
            took,
        }
    }

    #[test]
    fn lines_count_met_breached_and_open_and_take_percentiles() {
        let now = time(1_500_000);
        let mut b = Builder::new(time(0), time(3_000_000), now);
        for took in [1_000, 2_000, 3_000, 4_000] {
            b.add(n("r1", "police:A", Some(took), Kind::Met));
        }
        b.add(n("r1", "police:B", Some(1_200_000), Kind::Breached));
        b.add(n("r1", "police:B", None, Kind::Open));
        b.add(n("r2", "police:A", Some(500), Kind::ShortNotice));
        let r = b.finish(Vec::new(), &[]);
        let r1 = &r.routes[0];
        assert_eq!((r1.name.as_str(), r1.notifications), ("r1", 6));
        assert_eq!((r1.met, r1.breached, r1.open, r1.delivered), (4, 1, 1, 5));
        assert_eq!(r1.within_deadline_pct, Some(80.0));
        assert_eq!(r1.median_seconds, Some(3.0));
        assert_eq!(r1.p95_seconds, Some(1200.0));
        let a = r.recipients.iter().find(|l| l.name == "police:A").unwrap();
        assert_eq!((a.notifications, a.short_notice), (5, 1));
        assert_eq!(r.total.notifications, 7);
        assert_eq!(r.time_to_deliver[0].count, 5);
        assert_eq!(r.time_to_deliver[3].count, 1);
    }

    #[test]
    fn a_cell_that_looks_like_a_formula_stays_text() {
        assert_eq!(inert("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(inert("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(inert("evt-1"), "evt-1");
    }

    #[test]
    fn spans_read_in_the_largest_units() {
        assert_eq!(span(45_200), "45.2 s");
        assert_eq!(span(600_000), "10 min");
        assert_eq!(span(3_600_000 * 3 + 720_000), "3 h 12 min");
        assert_eq!(span(86_400_000 * 2 + 3_600_000), "2 d 1 h");
    }
}

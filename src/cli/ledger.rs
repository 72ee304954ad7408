//! `herald ledger show|search|report`: what the delivery ledger holds, for an operator asked
//! "did Leeds police get the warrant for A1234BC?" and for an inspector asking for the evidence.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};

use super::table::{printable, table};
use crate::ledger::read::{EventView, Filter, Found, NotificationView};
use crate::ledger::report::span;
use crate::ledger::{Status, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Csv,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// An event, each notification made of it and each attempt, on a time line: the event
    /// whose message_id is ID, or the one that made the notification whose idempotency key
    /// is ID.
    Show {
        id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Notifications, the most recent first, found by what they were about and where they
    /// went. Every filter given must hold.
    Search {
        /// A person identifier: NOMS:A1234BC, PNC:..., CRN:..., or the value alone.
        #[arg(long)]
        person: Option<String>,
        /// A recipient id, e.g. police:WYP-LEEDS.
        #[arg(long)]
        recipient: Option<String>,
        /// A route's name.
        #[arg(long)]
        route: Option<String>,
        /// pending, delivered, retrying, parked, expired or skipped.
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        /// Made at or after: an RFC 3339 instant, a date (midnight, London time), or a span
        /// back from now (2h, 7d).
        #[arg(long, value_parser = parse_instant)]
        since: Option<DateTime<Utc>>,
        /// Made before (the same forms as --since).
        #[arg(long, value_parser = parse_instant)]
        until: Option<DateTime<Utc>>,
        /// At most this many (at least 1).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// One JSON object per line and notification.
        #[arg(long)]
        json: bool,
    },
    /// The inspectors' report for a period: per route and per recipient, notifications made,
    /// delivered within the deadline (count and %), median and 95th percentile time to
    /// deliver, and every breach with its reason.
    Report {
        /// The first instant of the period: an RFC 3339 instant, or a date (midnight, London
        /// time), or a span back from now (30d).
        #[arg(long, value_parser = parse_instant)]
        from: DateTime<Utc>,
        /// The end of the period, not included (the same forms; default: now). A month is
        /// `--from 2026-11-01 --to 2026-12-01`.
        #[arg(long, value_parser = parse_instant)]
        to: Option<DateTime<Utc>>,
        /// html: one self-contained page that prints well; csv: one table for a
        /// spreadsheet; json.
        #[arg(long, value_enum, default_value_t = Format::Html)]
        format: Format,
        /// Write it to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub async fn run(url: String, action: Action) -> ExitCode {
    match ledger(url, action).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the ledger a command reads. A SQLite file that does not exist is not created: it
/// means the configuration names another ledger than the one the service writes.
pub async fn open(url: &str) -> Result<Store, String> {
    if let Some(file) = crate::ledger::sqlite_file(url)
        && !file.exists()
    {
        return Err(format!(
            "there is no ledger at {}: `herald serve` creates it there on its first start \
             ([ledger] path in routes.toml, or HERALD_LEDGER_URL, says where)",
            file.display()
        ));
    }
    Store::open_current(url).await.map_err(|e| e.to_string())
}

// String error: one line for the operator, printed before exit status 1.
async fn ledger(url: String, action: Action) -> Result<ExitCode, String> {
    let store = open(&url).await?;
    let code = match action {
        Action::Show { id, json } => {
            let events = store.find(&id).await.map_err(|e| e.to_string())?;
            if events.is_empty() {
                eprintln!(
                    "error: the ledger has no event with message_id {0} and no notification \
                     with key {0}",
                    printable(&id)
                );
                ExitCode::FAILURE
            } else {
                let text = if json {
                    let mut text =
                        serde_json::to_string_pretty(&events).map_err(|e| e.to_string())?;
                    text.push('\n');
                    text
                } else {
                    events.iter().map(timeline).collect::<Vec<_>>().join("\n")
                };
                emit(text.as_bytes())?;
                ExitCode::SUCCESS
            }
        }
        Action::Search {
            person,
            recipient,
            route,
            status,
            since,
            until,
            limit,
            json,
        } => {
            let filter = Filter {
                person,
                recipient,
                route,
                status,
                since,
                until,
                // One more than asked: whether the limit cut.
                limit: i64::from(limit) + 1,
            };
            let mut found = store.search(&filter).await.map_err(|e| e.to_string())?;
            let cut = found.len() > limit as usize;
            found.truncate(limit as usize);
            let mut text = String::new();
            if json {
                for f in &found {
                    text.push_str(&serde_json::to_string(f).map_err(|e| e.to_string())?);
                    text.push('\n');
                }
                if cut {
                    eprintln!("the first {limit} (--limit gives more)");
                }
            } else if found.is_empty() {
                text.push_str("no notification in the ledger matches\n");
            } else {
                text.push_str(&table(COLUMNS, found.iter().map(cells)));
                if cut {
                    text.push_str(&format!("the first {limit} (--limit gives more)\n"));
                }
            }
            emit(text.as_bytes())?;
            ExitCode::SUCCESS
        }
        Action::Report {
            from,
            to,
            format,
            output,
        } => {
            let now = Utc::now();
            let to = to.unwrap_or(now);
            if to <= from {
                eprintln!(
                    "error: the period is empty: --to {} is not after --from {}",
                    stamp(to),
                    stamp(from)
                );
                return Ok(ExitCode::from(2));
            }
            let report = store
                .report(from, to, now)
                .await
                .map_err(|e| e.to_string())?;
            let mut buffer = Vec::new();
            match format {
                Format::Html => report.write_html(&mut buffer),
                Format::Csv => report.write_csv(&mut buffer),
                Format::Json => report.write_json(&mut buffer),
            }
            .map_err(|e| e.to_string())?;
            match output {
                Some(path) => std::fs::write(&path, &buffer)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                None => emit(&buffer)?,
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

/// Writes to standard output; a reader that has gone (`| head`) is no error.
pub(super) fn emit(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

const COLUMNS: [&str; 10] = [
    "MADE",
    "STATUS",
    "SLA",
    "ROUTE",
    "RECIPIENT",
    "CHANNEL",
    "ATTEMPTS",
    "EVENT TYPE",
    "MESSAGE ID",
    "KEY",
];

fn cells(f: &Found) -> [String; 10] {
    [
        stamp(f.created_at),
        f.status.as_str().to_owned(),
        f.sla_outcome.clone().unwrap_or_else(|| "-".into()),
        f.route.clone(),
        f.recipient.clone(),
        f.channel.clone(),
        f.attempts.to_string(),
        f.event_type.clone(),
        f.message_id.clone(),
        f.key.clone(),
    ]
}

pub(super) fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An event and all it led to, each notification's story told in time order.
fn timeline(e: &EventView) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&printable(&text));
        out.push('\n');
    };
    let publisher = if e.publisher.is_empty() {
        "-"
    } else {
        &e.publisher
    };
    let version = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
    line(format!(
        "event {} from {publisher}: {}{version}, {}{}",
        e.message_id,
        e.event_type,
        e.outcome,
        e.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ));
    if let Some(at) = e.occurred_at {
        line(format!("  occurred  {}", stamp(at)));
    }
    line(format!("  received  {}", stamp(e.received_at)));
    if !e.persons.is_empty() {
        line(format!("  persons   {}", e.persons.join(", ")));
    }
    if e.notifications.is_empty() && e.outcome == "routed" {
        line("  no notification: no route matched".into());
    }
    for n in &e.notifications {
        line(String::new());
        for l in story(n, e.received_at) {
            line(format!("  {l}"));
        }
    }
    out
}

/// One notification: what it is, then each dated step with its time since the event arrived.
fn story(n: &NotificationView, start: DateTime<Utc>) -> Vec<String> {
    let mut lines = vec![format!("notification {}", n.key)];
    let deadline = match (n.deadline, &n.sla_rule) {
        (Some(d), Some(rule)) => format!("; deadline {} ({rule})", stamp(d)),
        (Some(d), None) => format!("; deadline {}", stamp(d)),
        (None, _) => "; no deadline".into(),
    };
    lines.push(format!(
        "  {} -> {} by {}{deadline}",
        n.route, n.recipient, n.channel
    ));
    let mut status = format!("  status {}", n.status.as_str());
    if let Some(sla) = &n.sla_outcome {
        status.push_str(&format!(", {sla}"));
    }
    if let Some(reason) = &n.reason {
        status.push_str(&format!(": {reason}"));
    }
    lines.push(status);
    if let Some(hash) = &n.sent_hash {
        lines.push(format!("  sent sha256 {hash}"));
    }
    let mut steps: Vec<(DateTime<Utc>, String)> = vec![(n.created_at, "made".into())];
    let mut tried = 0;
    for a in &n.attempts {
        let code = a.code.map(|c| format!(" {c}")).unwrap_or_default();
        let text = if a.outcome == "replayed" {
            "replayed by an operator".to_owned()
        } else {
            tried += 1;
            format!(
                "attempt {tried}: {}{code} in {} ms (breaker {})",
                a.outcome, a.duration_ms, a.breaker
            )
        };
        steps.push((a.at, text));
    }
    if let Some(at) = n.delivered_at {
        let against = match n.deadline {
            Some(d) if at <= d => format!(
                ", {} before the deadline",
                span((d - at).num_milliseconds())
            ),
            Some(d) => format!(", {} after the deadline", span((at - d).num_milliseconds())),
            None => String::new(),
        };
        steps.push((at, format!("delivered{against}")));
    }
    if let Some(d) = n.deadline {
        steps.push((d, "deadline".into()));
    }
    steps.sort_by_key(|(at, _)| *at);
    for (at, text) in steps {
        let since = (at - start).num_milliseconds();
        let sign = if since < 0 { "-" } else { "+" };
        lines.push(format!(
            "  {}  {sign}{:<10} {text}",
            stamp(at),
            span(since.abs())
        ));
    }
    lines
}

fn parse_status(text: &str) -> Result<Status, String> {
    text.parse()
}

/// An instant as a command line gives it: RFC 3339 (`2026-11-01T09:00:00Z`), a date
/// (midnight at its start in London, where the agencies' days are), or a span back from now
/// (`2h`, `7d`).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    instant_at(text, Utc::now())
}

use crate::ledger::read::instant_at;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn instants_read_as_rfc3339_london_dates_and_spans_back() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        assert_eq!(
            instant_at("2026-11-01T09:00:00+01:00", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap()
        );
        // British Summer Time: London's midnight is 23:00 UTC the day before.
        assert_eq!(
            instant_at("2026-07-01", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 6, 30, 23, 0, 0).unwrap()
        );
        assert_eq!(
            instant_at("2026-12-01", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            instant_at("2h", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap()
        );
        let e = instant_at("last tuesday", now).unwrap_err();
        assert!(e.contains("not an instant"), "{e}");
    }
}

//! `herald dlq list|show|replay|purge rejected|failed`: what is parked, and why; sending it
//! again once the cause is fixed. The work is done by [`crate::serve::dlq`], which the console
//! uses too; this prints it.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::table::{printable, table};
use crate::core::Core;
use crate::ledger::read::ParkedFilter;
use crate::serve::Settings;
use crate::serve::dlq::{Books, COLUMNS, Parking, Pick, Picked, Record, Shown, Step, Which, plain};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// One line per parked message, under a header row.
    List {
        which: Which,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line and message, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Parked messages in full: each whose id (as `list` shows it), message_id or event id
    /// is ID.
    Show {
        which: Which,
        id: String,
        /// One JSON object per message, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Send parked messages again: those named by id, message_id or event id, `--all`, or
    /// those the ledger finds by --since, --until, --route and --recipient. Each replay is
    /// recorded in the ledger.
    Replay {
        which: Which,
        ids: Vec<String>,
        /// Every message in the queue.
        #[arg(long, conflicts_with_all = ["ids", "since", "until", "route", "recipient"])]
        all: bool,
        /// Parked at or after (failed: when the ledger recorded it parked; rejected: when
        /// the event was received): an RFC 3339 instant, a date (midnight, London time), or
        /// a span back from now (2h).
        #[arg(long, value_parser = super::ledger::parse_instant, conflicts_with = "ids")]
        since: Option<DateTime<Utc>>,
        /// Parked before (the same forms as --since).
        #[arg(long, value_parser = super::ledger::parse_instant, conflicts_with = "ids")]
        until: Option<DateTime<Utc>>,
        /// Only notifications of this route (failed only).
        #[arg(long, conflicts_with = "ids")]
        route: Option<String>,
        /// Only notifications to this recipient, e.g. police:WYP-LEEDS (failed only).
        #[arg(long, conflicts_with = "ids")]
        recipient: Option<String>,
        /// Say what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete parked messages: those named, or every one; each is printed as it goes.
    Purge {
        which: Which,
        ids: Vec<String>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(core: Core, action: Action) -> ExitCode {
    match dlq(core, action).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// String error: one line for the operator, printed before exit status 1.
async fn dlq(core: Core, action: Action) -> Result<ExitCode, String> {
    let settings = Settings::new(&core.config, |k| std::env::var(k).ok());
    let parking = Parking::open(&settings).await?;
    let code = act(&core, &settings, &parking, action).await;
    parking.close().await;
    code
}

async fn act(
    core: &Core,
    settings: &Settings,
    parking: &Parking,
    action: Action,
) -> Result<ExitCode, String> {
    Ok(match action {
        Action::List { which, limit, json } => {
            let (records, total) = parking.list(which, limit).await?;
            let queue = parking.queue(which);
            let cut = records.len() < total as usize;
            if json {
                for r in &records {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                }
                if cut {
                    eprintln!("{} of {total} in {queue}", records.len());
                }
            } else if records.is_empty() {
                println!("{queue} is empty");
            } else {
                print!("{}", table(COLUMNS, records.iter().map(Record::cells)));
                if cut {
                    println!(
                        "{} of {total} in {queue} (--limit gives more)",
                        records.len()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Action::Show { which, id, json } => {
            let shown = parking.show(which, &id).await?;
            for s in &shown {
                if json {
                    println!("{}", full_json(s));
                } else {
                    print!("{}", full(s));
                }
            }
            if shown.is_empty() {
                eprintln!(
                    "error: {} has no message with id, message_id or event id {}",
                    parking.queue(which),
                    printable(&id)
                );
            }
            super::passed(!shown.is_empty())
        }
        Action::Replay {
            which,
            ids,
            all,
            since,
            until,
            route,
            recipient,
            dry_run,
        } => {
            let filtered =
                since.is_some() || until.is_some() || route.is_some() || recipient.is_some();
            if ids.is_empty() && !all && !filtered {
                eprintln!(
                    "error: name the messages to replay (their ids from `herald dlq list`), give \
                     --all, or pick them from the ledger with --since, --until, --route or \
                     --recipient"
                );
                return Ok(ExitCode::from(2));
            }
            if which == Which::Rejected && (route.is_some() || recipient.is_some()) {
                eprintln!(
                    "error: --route and --recipient pick notifications, in `failed`; a \
                     rejected event has neither (--since and --until pick rejected events)"
                );
                return Ok(ExitCode::from(2));
            }
            let store = super::ledger::open(&settings.ledger_url).await?;
            let queue = parking.queue(which).to_owned();
            let pick = if filtered {
                let picked = pick(&store, which, since, until, route, recipient)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "the ledger has {} parked in {queue} that match",
                    picked.count
                );
                Pick::Ledger(picked)
            } else if all {
                Pick::All
            } else {
                Pick::Ids(ids)
            };
            let books = Books::new(store, actor(), crate::metrics::Metrics::new());
            let done = parking.replay(core, &books, which, &pick, dry_run).await;
            books.store.close().await;
            let done = done?;
            for d in &done.steps {
                let id = &d.id;
                match &d.step {
                    Step::WouldReplay { summary } => println!("{id}  would replay: {summary}"),
                    Step::Replayed {
                        notifications,
                        notes,
                        warning,
                    } => {
                        for note in notes {
                            println!("{}", printable(note));
                        }
                        println!("{id}  replayed: {notifications} notification(s) queued");
                        if let Some(w) = warning {
                            println!("{id}  {}", printable(w));
                        }
                    }
                    Step::Removed { why } => println!("{id}  removed: {why}"),
                    Step::Kept { why } => println!("{id}  kept: {}", printable(why)),
                    Step::StillParked { why } => println!("{id}  still parked: {why}"),
                }
            }
            for id in &done.missing {
                println!("{}  not found in {queue}", printable(id));
            }
            if done.gone() > 0 {
                println!(
                    "{} of those are no longer in {queue} (replayed or purged since)",
                    done.gone()
                );
            }
            if dry_run {
                println!(
                    "dry run: {} message(s) would be replayed; nothing was sent",
                    done.steps.len()
                );
            }
            super::passed(done.passed(all))
        }
        Action::Purge { which, ids, yes } => {
            if !yes {
                eprintln!(
                    "error: purging deletes {} in {}; add --yes",
                    if ids.is_empty() {
                        "every message"
                    } else {
                        "the messages named"
                    },
                    parking.queue(which)
                );
                return Ok(ExitCode::from(2));
            }
            // Each deletion is in the ledger's audit trail before it is made.
            let store = super::ledger::open(&settings.ledger_url).await?;
            let books = Books::new(store, actor(), crate::metrics::Metrics::new());
            let pick = if ids.is_empty() {
                Pick::All
            } else {
                Pick::Ids(ids)
            };
            let done = parking.purge(which, &pick, &books).await;
            books.store.close().await;
            let (purged, missing) = done?;
            for id in &purged {
                println!("{id}  purged");
            }
            for id in &missing {
                println!("{}  not found in {}", printable(id), parking.queue(which));
            }
            println!(
                "purged {} message(s) from {}",
                purged.len(),
                parking.queue(which)
            );
            ExitCode::SUCCESS
        }
    })
}

/// The parked messages the ledger finds by time (and, for notifications, route and recipient).
pub async fn pick(
    store: &crate::ledger::Store,
    which: Which,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    route: Option<String>,
    recipient: Option<String>,
) -> Result<Picked, crate::ledger::LedgerError> {
    match which {
        Which::Failed => {
            Picked::parked(
                store,
                &ParkedFilter {
                    route,
                    recipient,
                    since,
                    until,
                },
            )
            .await
        }
        Which::Rejected => Picked::rejected(store, since, until).await,
    }
}

/// `show`: the record's fields, the properties, the headers as plain values, then the body.
fn full(s: &Shown) -> String {
    let mut out = String::new();
    let cells = s.record.cells();
    let labels = [
        "number",
        "parked at",
        "reason",
        "route",
        "recipient",
        "channel",
        "attempts",
        "event id",
        "event type",
        "publisher",
        "detail",
    ];
    for (label, cell) in labels.iter().zip(&cells).skip(1) {
        out.push_str(&format!("{label:<11} {}\n", printable(cell)));
    }
    out.push('\n');
    for (name, value) in &s.properties {
        out.push_str(&format!("{name}: {}\n", printable(&plain(value))));
    }
    if !s.headers.is_empty() {
        out.push_str("\nheaders\n");
        for (name, value) in &s.headers {
            out.push_str(&format!(
                "{}: {}\n",
                printable(name),
                printable(&plain(value))
            ));
        }
    }
    out.push('\n');
    match (&s.body, &s.body_text) {
        (Some(v), _) => out.push_str(&serde_json::to_string_pretty(v).unwrap_or_default()),
        (None, text) => out.push_str(&body_text(text.as_deref().unwrap_or_default())),
    }
    out.push('\n');
    out
}

/// `show --json`: the record's fields, with `properties`, `headers` and `body` (the body as
/// JSON when it is, otherwise `bodyText`).
fn full_json(s: &Shown) -> String {
    let mut doc = match serde_json::to_value(&s.record) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    let properties: Map<String, Value> = s
        .properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let headers: Map<String, Value> = s.headers.iter().cloned().collect();
    doc.insert("properties".into(), Value::Object(properties));
    doc.insert("headers".into(), Value::Object(headers));
    match (&s.body, &s.body_text) {
        (Some(v), _) => doc.insert("body".into(), v.clone()),
        (None, text) => doc.insert("bodyText".into(), json!(text.clone().unwrap_or_default())),
    };
    Value::Object(doc).to_string()
}

/// A body that is not JSON, for a terminal: lossy UTF-8, control characters other than
/// newlines and tabs escaped.
fn body_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Who runs the command, as the audit entry names them: `cli:` and the login of the process's
/// user id (not what the environment claims), with the login sudo was run from, if it was.
fn actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let name = uid.and_then(|uid| {
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| {
                passwd.lines().find_map(|line| {
                    let mut fields = line.split(':');
                    let (name, id) = (fields.next()?, fields.nth(1)?);
                    (id.parse() == Ok(uid)).then(|| name.to_owned())
                })
            })
    });
    let mut actor = match (name, uid) {
        (Some(name), _) => format!("cli:{name}"),
        (None, Some(uid)) => format!("cli:uid {uid}"),
        (None, None) => "cli:unknown".to_owned(),
    };
    if let Ok(from) = std::env::var("SUDO_USER") {
        actor.push_str(&format!(" (sudo from {from})"));
    }
    actor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::dlq::tests::{headers, read, text};
    use lapin::BasicProperties;

    #[test]
    fn control_characters_from_a_publisher_are_not_printed() {
        let p = BasicProperties::default()
            .with_message_id("evt\u{1b}[2J".into())
            .with_headers(headers(&[
                ("x-herald-reason", text("schema-violation")),
                ("x-herald-detail", text("a\nb")),
            ]));
        let table = table(COLUMNS, [read(Which::Rejected, p, b"{}").cells()]);
        assert!(
            !table.contains('\u{1b}') && table.lines().count() == 2,
            "{table}"
        );
    }
}

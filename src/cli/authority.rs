//! `herald authority list`: who is authorised to act for whom, from when to when, and which
//! event said so; `--at` shows the register as it stood then.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::ledger::{emit, open, stamp};
use super::table::{printable, table};
use crate::core::Core;
use crate::ledger::{AuthorityRow, Pair};
use crate::route::RecipientClass;
use crate::route::authority::ChangeKind;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// The register for a person, a representative, or both: each pair's standing and its
    /// history of grants and withdrawals, in the order they apply.
    List {
        /// A person: NOMS:A1234BC (the register is kept by NOMS number).
        #[arg(long, required_unless_present = "representative")]
        person: Option<String>,
        /// A legal representative: legal-rep:SMITH-AND-CO.
        #[arg(long)]
        representative: Option<String>,
        /// The register as it stood then: an RFC 3339 instant, a date (midnight, London
        /// time) or a span back from now (7d). Default: now.
        #[arg(long, value_parser = super::ledger::parse_instant)]
        at: Option<DateTime<Utc>>,
        /// One JSON object per line and pair.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(core: &Core, url: String, action: Action) -> ExitCode {
    match list(core, url, action).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// String error: one line for the operator, printed before exit status 1.
async fn list(core: &Core, url: String, action: Action) -> Result<ExitCode, String> {
    let Action::List {
        person,
        representative,
        at,
        json,
    } = action;
    if let Some(p) = &person
        && !p.starts_with("NOMS:")
    {
        eprintln!(
            "error: --person takes a NOMS number as NOMS:A1234BC; the register is kept by NOMS number"
        );
        return Ok(ExitCode::from(2));
    }
    if let Some(r) = &representative
        && core
            .engine
            .directory
            .get(r)
            .is_none_or(|r| r.class != RecipientClass::LegalRep)
    {
        eprintln!(
            "error: {} is not a legal representative in the directory (routes.toml)",
            printable(r)
        );
        return Ok(ExitCode::from(2));
    }
    let now = Utc::now();
    let at = at.unwrap_or(now);
    let store = open(&url).await?;
    let pairs = store
        .register(
            &core.engine.directory,
            person.as_deref(),
            representative.as_deref(),
            at,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    if json {
        for p in &pairs {
            text.push_str(&json_line(p, at));
            text.push('\n');
        }
    } else if pairs.is_empty() {
        text.push_str("the register holds nothing for this\n");
    } else {
        if at != now {
            text.push_str(&format!("as the register stood at {}\n", stamp(at)));
        }
        text.push_str(&table(
            [
                "PERSON",
                "REPRESENTATIVE",
                "STANDING",
                "FROM",
                "UNTIL",
                "EVENT",
            ],
            pairs.iter().map(|p| standing_cells(p, at)),
        ));
        let history: Vec<&AuthorityRow> = pairs.iter().flat_map(|p| &p.rows).collect();
        if !history.is_empty() {
            text.push_str("\nhistory, in the order it applies:\n");
            text.push_str(&table(
                [
                    "OCCURRED",
                    "PERSON",
                    "REPRESENTATIVE",
                    "CHANGE",
                    "EFFECTIVE FROM",
                    "VALID UNTIL",
                    "EVENT",
                    "RECEIVED",
                ],
                history.into_iter().map(history_cells),
            ));
        }
    }
    emit(printable_lines(&text).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn printable_lines(text: &str) -> String {
    text.lines().map(|l| printable(l) + "\n").collect()
}

fn standing_cells(p: &Pair, at: DateTime<Utc>) -> [String; 6] {
    let [word, from, until, event] = p.standing(at).described();
    [
        p.person.clone(),
        p.representative.clone(),
        word,
        from,
        until,
        event,
    ]
}

fn history_cells(r: &AuthorityRow) -> [String; 8] {
    let c = &r.change;
    let until = match c.kind {
        ChangeKind::Grant { until, .. } => until.map_or("-".into(), |u| u.to_string()),
        ChangeKind::Withdrawal { .. } => "-".into(),
    };
    [
        stamp(c.occurred_at),
        c.person.clone(),
        c.representative.clone(),
        c.kind.as_str().into(),
        c.kind.from().to_string(),
        until,
        c.event.clone(),
        stamp(r.received_at),
    ]
}

fn json_line(p: &Pair, at: DateTime<Utc>) -> String {
    let s = p.standing(at);
    let [word, from, until, event] = s.described();
    let opt = |v: String| if v == "-" { Value::Null } else { json!(v) };
    let history: Vec<Value> = p
        .rows
        .iter()
        .map(|r| {
            let [occurred, _, _, change, from, until, event, received] = history_cells(r);
            json!({
                "occurredAt": occurred,
                "change": change,
                "effectiveFrom": from,
                "validUntil": opt(until),
                "event": event,
                "publisher": r.publisher,
                "receivedAt": received,
            })
        })
        .collect();
    json!({
        "person": p.person,
        "representative": p.representative,
        "at": stamp(at),
        "authorised": s.authorised(),
        "standing": word,
        "from": opt(from),
        "until": opt(until),
        "event": opt(event),
        "seeded": p.seeded,
        "history": history,
    })
    .to_string()
}

//! `herald authority list`: who is authorised to act for whom, from when to when, and which
//! event said so; `--at` shows the register as it stood then.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::ledger::{emit, open, stamp};
use super::table::{printable, table};
use crate::core::Core;
use crate::ledger::AuthorityRow;
use crate::notification::Unauthorised;
use crate::route::RecipientClass;
use crate::route::authority::{ChangeKind, Standing, standing};

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

/// One pair: its standing at the instant asked and the rows that applied by then.
struct Pair {
    person: String,
    representative: String,
    seeded: bool,
    rows: Vec<AuthorityRow>,
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
    let rows = store
        .authority_rows(person.as_deref(), representative.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut pairs: BTreeMap<(String, String), Pair> = BTreeMap::new();
    fn pair<'p>(
        pairs: &'p mut BTreeMap<(String, String), Pair>,
        core: &Core,
        person: &str,
        representative: &str,
    ) -> &'p mut Pair {
        let key = (person.to_owned(), representative.to_owned());
        pairs.entry(key).or_insert_with(|| Pair {
            person: person.to_owned(),
            representative: representative.to_owned(),
            seeded: core.engine.directory.seeded(person, representative),
            rows: Vec::new(),
        })
    }
    // The pairs routes.toml's acts_for starts the register with.
    for r in core.engine.directory.of_class(RecipientClass::LegalRep) {
        if representative
            .as_deref()
            .is_some_and(|x| x != r.id.as_str())
        {
            continue;
        }
        for (kind, value) in &r.acts_for {
            let p = format!("{kind}:{value}");
            if person.as_deref().is_none_or(|x| x == p) {
                pair(&mut pairs, core, &p, r.id.as_str());
            }
        }
    }
    // What had happened by then: the register as it stood.
    for row in rows.into_iter().filter(|r| r.change.occurred_at <= at) {
        let (p, r) = (row.change.person.clone(), row.change.representative.clone());
        pair(&mut pairs, core, &p, &r).rows.push(row);
    }
    let mut text = String::new();
    if json {
        for p in pairs.values() {
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
            pairs.values().map(|p| standing_cells(p, at)),
        ));
        let history: Vec<&AuthorityRow> = pairs.values().flat_map(|p| &p.rows).collect();
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

fn standing_of(p: &Pair, at: DateTime<Utc>) -> Standing {
    standing(p.rows.iter().map(|r| &r.change), p.seeded, at)
}

/// The standing's word, from, until and event.
fn described(s: &Standing) -> [String; 4] {
    let dash = || "-".to_owned();
    match s {
        Standing::Authorised { from, until, event } => [
            "authorised".into(),
            from.to_string(),
            until.map_or_else(dash, |u| u.to_string()),
            event.clone(),
        ],
        Standing::Seeded => ["authorised (acts_for)".into(), dash(), dash(), dash()],
        Standing::Not(Unauthorised::NeverShown) => {
            ["not authorised".into(), dash(), dash(), dash()]
        }
        Standing::Not(Unauthorised::NotYet { from, event }) => {
            ["not yet".into(), from.to_string(), dash(), event.clone()]
        }
        Standing::Not(Unauthorised::Withdrawn { from, event }) => {
            ["withdrawn".into(), from.to_string(), dash(), event.clone()]
        }
        Standing::Not(Unauthorised::Expired { last_day, event }) => [
            "expired".into(),
            dash(),
            last_day.to_string(),
            event.clone(),
        ],
    }
}

fn standing_cells(p: &Pair, at: DateTime<Utc>) -> [String; 6] {
    let [word, from, until, event] = described(&standing_of(p, at));
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
    let s = standing_of(p, at);
    let [word, from, until, event] = described(&s);
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

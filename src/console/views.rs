//! What the pages show, worked out from the ledger's records and the configuration: times and
//! spans as operators read them, the per-minute chart, a notification's time line, and the
//! event's fields as each class of recipient sees them. No I/O here.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::directory::RecipientClass;
use crate::ledger::overview::Minute;
use crate::ledger::read::NotificationView;
use crate::ledger::report::span;
use crate::route::{ENVELOPE_DESCRIPTION, Redaction};

/// An instant as the pages show it: RFC 3339 to the second, UTC.
pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An optional instant, or `-`.
pub fn maybe(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".into(), instant)
}

/// The per-minute chart: events in and notifications delivered, as inline SVG (numbers only,
/// so nothing in it needs escaping).
pub fn chart(minutes: &[Minute]) -> String {
    let (w, h, pad) = (720.0_f64, 160.0_f64, 24.0_f64);
    let top = minutes
        .iter()
        .map(|m| m.events.max(m.delivered))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = minutes.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: i64| h - pad - (h - 2.0 * pad) * v as f64 / top;
    let line = |pick: fn(&Minute) -> i64| -> String {
        minutes
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{:.1},{:.1}", x(i), y(pick(m))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let total_in: i64 = minutes.iter().map(|m| m.events).sum();
    let total_out: i64 = minutes.iter().map(|m| m.delivered).sum();
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"events in and notifications delivered per minute, last hour\">\
         <line class=\"axis\" x1=\"{pad}\" y1=\"{base:.1}\" x2=\"{right:.1}\" y2=\"{base:.1}\"/>\
         <text class=\"label\" x=\"{pad}\" y=\"14\">{top} per minute</text>\
         <text class=\"label\" x=\"{pad}\" y=\"{h}\">an hour ago</text>\
         <text class=\"label end\" x=\"{right:.1}\" y=\"{h}\">now</text>\
         <polyline class=\"in\" points=\"{ins}\"/>\
         <polyline class=\"out\" points=\"{outs}\"/>\
         </svg>\
         <p class=\"legend\"><span class=\"in\">events in: {total_in}</span> \
         <span class=\"out\">notifications delivered: {total_out}</span></p>",
        base = h - pad,
        right = w - pad,
        top = top as i64,
        ins = line(|m| m.events),
        outs = line(|m| m.delivered),
    )
}

/// One step of a notification's story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: String,
    /// Time since the event was received.
    pub after: String,
    pub what: String,
    /// `made`, `ok`, `failed`, `replayed`, `deadline`, `late`.
    pub kind: &'static str,
}

/// A notification's story in time order: made, each attempt, delivered, the deadline.
pub fn timeline(n: &NotificationView, received: DateTime<Utc>) -> Vec<Step> {
    let after = |at: DateTime<Utc>| {
        let ms = (at - received).num_milliseconds();
        if ms < 0 {
            format!("-{}", span(-ms))
        } else {
            format!("+{}", span(ms))
        }
    };
    let mut steps: Vec<(DateTime<Utc>, Step)> = vec![(
        n.created_at,
        Step {
            at: instant(n.created_at),
            after: after(n.created_at),
            what: "made".into(),
            kind: "made",
        },
    )];
    let mut number = 0;
    for a in &n.attempts {
        let (what, kind) = if a.outcome == "replayed" {
            ("replayed by an operator".to_owned(), "replayed")
        } else {
            number += 1;
            let code = a.code.map(|c| format!(" {c}")).unwrap_or_default();
            (
                format!(
                    "attempt {number}: {}{code} in {} ms (breaker {})",
                    a.outcome, a.duration_ms, a.breaker
                ),
                if a.outcome == "delivered" {
                    "ok"
                } else {
                    "failed"
                },
            )
        };
        steps.push((
            a.at,
            Step {
                at: instant(a.at),
                after: after(a.at),
                what,
                kind,
            },
        ));
    }
    if let Some(d) = n.deadline {
        let (what, kind) = match n.delivered_at {
            Some(at) if at <= d => (
                format!(
                    "deadline: met, {} before it",
                    span((d - at).num_milliseconds())
                ),
                "deadline",
            ),
            Some(at) => (
                format!("deadline: missed by {}", span((at - d).num_milliseconds())),
                "late",
            ),
            None => ("deadline".to_owned(), "deadline"),
        };
        steps.push((
            d,
            Step {
                at: instant(d),
                after: after(d),
                what,
                kind,
            },
        ));
    }
    steps.sort_by_key(|(at, _)| *at);
    steps.into_iter().map(|(_, s)| s).collect()
}

/// The event's fields as each class of recipient sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassViews {
    /// One column per class.
    pub classes: Vec<&'static str>,
    /// One row per field.
    pub rows: Vec<FieldRow>,
    /// Whether the cells hold the event's values (else only shown or withheld).
    pub values: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRow {
    pub field: String,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub withheld: bool,
}

/// Without the event: which of the fields the `[[sensitive]]` rules and `[free_text]` name
/// each class is given.
pub fn class_rules(redaction: &Redaction) -> ClassViews {
    let classes = RecipientClass::ALL;
    let mut rows: Vec<FieldRow> = redaction
        .paths()
        .into_iter()
        .map(|path| FieldRow {
            field: path.to_string(),
            cells: classes
                .iter()
                .map(|c| shown_or_not(!redaction.hides(*c, path)))
                .collect(),
        })
        .collect();
    rows.push(FieldRow {
        field: ENVELOPE_DESCRIPTION.into(),
        cells: classes
            .iter()
            .map(|c| shown_or_not(redaction.shows_description(*c)))
            .collect(),
    });
    ClassViews {
        classes: classes.iter().map(|c| c.as_str()).collect(),
        rows,
        values: false,
    }
}

fn shown_or_not(shown: bool) -> Cell {
    Cell {
        text: if shown { "shown" } else { "withheld" }.into(),
        withheld: !shown,
    }
}

/// With the event (its envelope as JSON): every field of `additionalInformation`, and the
/// `description`, as each class is given it.
pub fn class_values(redaction: &Redaction, event: &Value) -> ClassViews {
    let info = &event["additionalInformation"];
    let description = event.get("description").filter(|d| !d.is_null());
    let classes = RecipientClass::ALL;
    let mut fields: Vec<(String, String)> = Vec::new();
    leaves(info, String::new(), &mut fields);
    let views: Vec<Vec<(String, String)>> = classes
        .iter()
        .map(|c| {
            let (view, _) = redaction.apply(*c, info, description);
            let mut seen = Vec::new();
            leaves(&view, String::new(), &mut seen);
            seen
        })
        .collect();
    let mut rows: Vec<FieldRow> = fields
        .iter()
        .map(|(field, _)| FieldRow {
            field: field.clone(),
            cells: views
                .iter()
                .map(|seen| match seen.iter().find(|(f, _)| f == field) {
                    Some((_, v)) => Cell {
                        text: v.clone(),
                        withheld: false,
                    },
                    None => Cell {
                        text: "withheld".into(),
                        withheld: true,
                    },
                })
                .collect(),
        })
        .collect();
    if let Some(d) = description {
        let text = d.as_str().map_or_else(|| d.to_string(), str::to_owned);
        rows.push(FieldRow {
            field: ENVELOPE_DESCRIPTION.into(),
            cells: classes
                .iter()
                .map(|c| {
                    if redaction.shows_description(*c) {
                        Cell {
                            text: text.clone(),
                            withheld: false,
                        }
                    } else {
                        Cell {
                            text: "withheld".into(),
                            withheld: true,
                        }
                    }
                })
                .collect(),
        });
    }
    ClassViews {
        classes: classes.iter().map(|c| c.as_str()).collect(),
        rows,
        values: true,
    }
}

/// Every leaf of a JSON value with its dotted path (`offences[0].description`).
fn leaves(v: &Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{path}[{i}]"), out);
            }
        }
        Value::String(s) => out.push((path, s.clone())),
        other => out.push((path, other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FreeText, SensitiveRule};
    use serde_json::json;

    fn redaction() -> Redaction {
        let rule = SensitiveRule {
            fields: vec!["curfewAddress".into()],
            only: Some(vec!["police".into(), "probation".into()]),
            never: None,
            why: None,
        };
        Redaction::build(&[rule], &FreeText::default()).0
    }

    #[test]
    fn the_judiciary_column_shows_what_the_judiciary_was_given() {
        let event = json!({
            "description": "free text",
            "additionalInformation": {
                "curfewAddress": {"postcode": "LS1 1AA"},
                "offender": {"nomsNumber": "A1234BC"}
            }
        });
        let v = class_values(&redaction(), &event);
        let judiciary = v.classes.iter().position(|c| *c == "judiciary").unwrap();
        let police = v.classes.iter().position(|c| *c == "police").unwrap();
        let row = |f: &str| v.rows.iter().find(|r| r.field == f).unwrap();
        assert_eq!(row("curfewAddress.postcode").cells[police].text, "LS1 1AA");
        assert!(row("curfewAddress.postcode").cells[judiciary].withheld);
        assert_eq!(row("offender.nomsNumber").cells[judiciary].text, "A1234BC");
        // A class from which fields are withheld does not get the free text either.
        assert!(row("envelope.description").cells[judiciary].withheld);
        assert!(!row("envelope.description").cells[police].withheld);
        let rules = class_rules(&redaction());
        assert!(rules.rows[0].cells[judiciary].withheld);
        assert!(!rules.rows[0].cells[police].withheld);
    }
}

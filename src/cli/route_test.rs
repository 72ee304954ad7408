//! `herald route-test FILE`: who would be told, on which channel, by when, with what
//! withheld, and (with `--render`) exactly what they would receive. Nothing is sent.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::core::Core;
use crate::event::{Event, EventId};
use crate::notification::{Content, Sla};
use crate::render::uk_datetime;
use crate::render::{Notification, Routing};

pub fn run(
    core: &Core,
    file: &Path,
    message_id: Option<String>,
    publisher: Option<String>,
    render: bool,
    as_json: bool,
) -> ExitCode {
    let body = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let id = match (message_id, publisher) {
        (Some(id), Some(login)) => EventId::published(login, id),
        (Some(id), None) => EventId::new(id),
        (None, Some(login)) => EventId::published(login, EventId::from_content(&body).as_str()),
        (None, None) => EventId::from_content(&body),
    };
    match core.process(&body, id) {
        Err(rejection) => {
            if as_json {
                println!(
                    "{}",
                    json!({"file": file.display().to_string(), "rejected": rejection})
                );
            } else {
                println!("REJECTED  {}  {}", file.display(), rejection.reason);
                println!("  {}", rejection.detail);
                for v in &rejection.violations {
                    println!("  {v}");
                }
            }
            ExitCode::FAILURE
        }
        Ok((event, routing)) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&as_value(&event, &routing, render))
                        .unwrap_or_default()
                );
            } else {
                print!("{}", human(&event, &routing, render));
            }
            // A problem here is what the service would park: say so in the exit status.
            super::passed(routing.problems.is_empty())
        }
    }
}

fn as_value(event: &Event, routing: &Routing, render: bool) -> Value {
    let notifications: Vec<Value> = routing
        .notifications
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            v["recipientName"] = json!(n.recipient.name);
            v["recipientClass"] = json!(n.recipient.class);
            if let Content::Webhook { body, .. } = &n.content {
                v["content"]["body"] = serde_json::from_str(body).unwrap_or_default();
            }
            if let Some(content) = v
                .get_mut("content")
                .and_then(Value::as_object_mut)
                .filter(|_| !render)
            {
                content.retain(|k, _| matches!(k.as_str(), "channel" | "to" | "url"));
            }
            v
        })
        .collect();
    json!({
        "event": {
            "id": event.id,
            "eventType": event.event_type,
            "version": event.version,
            "occurredAt": event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "publishedAt": event.published_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        "matchedRoutes": routing.matched_routes,
        "notifications": notifications,
        "problems": routing.problems,
        "skipped": routing.skipped,
    })
}

fn human(event: &Event, routing: &Routing, render: bool) -> String {
    let mut out = String::new();
    let when = |t: &chrono::DateTime<chrono::Utc>| uk_datetime(&t.to_rfc3339()).unwrap_or_default();
    let _ = writeln!(
        out,
        "event     {} v{}  id {}",
        event.event_type, event.version, event.id
    );
    let _ = writeln!(
        out,
        "occurred  {}   published {}",
        when(&event.occurred_at),
        when(&event.published_at)
    );
    if routing.unrouted() {
        let _ = writeln!(out, "no route matches: nobody is notified");
    }
    for route in &routing.matched_routes {
        let _ = writeln!(out, "\nroute {route}");
        let mine: Vec<&Notification> = routing
            .notifications
            .iter()
            .filter(|n| n.route == *route)
            .collect();
        let mut last_recipient = None;
        for n in &mine {
            if last_recipient != Some(&n.recipient.id) {
                last_recipient = Some(&n.recipient.id);
                let _ = writeln!(
                    out,
                    "  -> {}  {} [{}]",
                    n.recipient.id, n.recipient.name, n.recipient.class
                );
                let _ = writeln!(out, "     deadline  {}", deadline(&n.sla, &when));
                let _ = writeln!(
                    out,
                    "     priority  {}{}",
                    n.priority.as_str(),
                    marks(&n.marks)
                );
                if !n.withheld.is_empty() {
                    let _ = writeln!(out, "     withheld  {}", n.withheld.join(", "));
                }
            }
            match &n.content {
                Content::Email { to, .. } => {
                    let to: Vec<&str> = to.iter().map(AsRef::as_ref).collect();
                    let _ = writeln!(out, "     email     {}  to {}", n.key, to.join(", "));
                }
                Content::Webhook { url, .. } => {
                    let _ = writeln!(out, "     webhook   {}  to {url}", n.key);
                }
            }
            if render {
                let _ = writeln!(out, "{}", indent(&rendered(&n.content), 8));
            }
        }
        for p in routing.problems.iter().filter(|p| p.route() == &**route) {
            let _ = writeln!(out, "  !! {}: {p}", p.kind());
        }
        for s in routing.skipped.iter().filter(|s| s.route() == &**route) {
            let _ = writeln!(out, "  -- {}: {s}", s.kind());
        }
    }
    out
}

fn deadline(sla: &Sla, when: &dyn Fn(&chrono::DateTime<chrono::Utc>) -> String) -> String {
    match sla {
        Sla::Untracked => "none (untracked)".into(),
        Sla::Unknown { rule, reason } => format!("{rule}: cannot be computed: {reason}"),
        Sla::Due { rule, deadline } => format!(
            "{} ({}), {rule}{}",
            deadline
                .due
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            when(&deadline.due),
            if deadline.short_notice {
                ", SHORT NOTICE: the event came too late for the notice promised"
            } else {
                ""
            }
        ),
    }
}

fn marks(marks: &[String]) -> String {
    if marks.is_empty() {
        String::new()
    } else {
        format!(", marked {}", marks.join(", "))
    }
}

fn rendered(content: &Content) -> String {
    match content {
        Content::Email {
            subject,
            text,
            html,
            ..
        } => {
            format!(
                "Subject: {subject}\n--- text ---\n{}\n--- html ---\n{}",
                text.trim_end(),
                html.trim_end()
            )
        }
        Content::Webhook { body, .. } => serde_json::from_str::<Value>(body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| body.clone()),
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

//! Escalation before a deadline is missed: a route's `escalate` rule, when a notification
//! still undelivered is escalated (a share of the time its deadline allows, or a span before
//! the deadline), who is told, and what they may see of the event (the route's redaction for
//! their class, exactly as a notification to that class would show it).
//!
//! Pure: given the event, the deadline and the rule, no store and no clock.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{Authority, RecipientClass, Redaction, Route, RouteFacts, Selected, Selector};
use crate::config::EscalateConfig;
use crate::directory::{Directory, Recipient};
use crate::event::Event;
use crate::notification::{Channel, Sla};

/// When an undelivered notification is escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// This percentage of the time from the event to its deadline (1 to 99).
    Share(u8),
    /// This long before the deadline.
    Before(StdDuration),
}

/// The longest span before a deadline `at` takes: deadlines are days to weeks away.
const MAX_BEFORE: StdDuration = StdDuration::from_secs(366 * 86_400);

impl At {
    /// Reads `"75%"` or `"2h before"`.
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<At, String> {
        let trimmed = text.trim();
        if let Some(share) = trimmed.strip_suffix('%') {
            return match share.trim().parse::<u8>() {
                Ok(n @ 1..=99) => Ok(At::Share(n)),
                _ => Err(format!(
                    "at: \"{text}\" is not a share from 1% to 99% of the time the deadline allows"
                )),
            };
        }
        if let Some(span) = trimmed.strip_suffix("before") {
            let span = span.trim();
            return match humantime::parse_duration(span) {
                Ok(d) if d > MAX_BEFORE => Err(format!(
                    "at: \"{text}\": a span before the deadline is at most a year (\"365d before\")"
                )),
                Ok(d) if !d.is_zero() => Ok(At::Before(d)),
                Ok(_) => Err(format!(
                    "at: \"{text}\": a span before the deadline cannot be zero"
                )),
                Err(e) => Err(format!("at: \"{text}\": \"{span}\": {e}")),
            };
        }
        Err(format!(
            "at: cannot read \"{text}\"; the forms are a share of the time the deadline allows \
             (\"75%\") or a span before the deadline (\"2h before\")"
        ))
    }

    /// The instant a notification about an event that happened at `occurred_at`, due by
    /// `deadline`, is escalated if still undelivered: never before the event itself.
    pub fn instant(self, occurred_at: DateTime<Utc>, deadline: DateTime<Utc>) -> DateTime<Utc> {
        // Checked throughout: a span no calendar holds escalates at the event itself.
        let at = match self {
            At::Share(n) => {
                let allowed = (deadline - occurred_at).num_milliseconds();
                let part = i64::try_from(i128::from(allowed) * i128::from(n) / 100).ok();
                part.and_then(chrono::Duration::try_milliseconds)
                    .and_then(|d| occurred_at.checked_add_signed(d))
            }
            At::Before(span) => chrono::Duration::from_std(span)
                .ok()
                .and_then(|d| deadline.checked_sub_signed(d)),
        };
        at.map_or(occurred_at, |at| at.max(occurred_at))
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Share(n) => write!(f, "{n}%"),
            At::Before(span) => write!(f, "{} before", crate::sla::format_span(*span)),
        }
    }
}

/// A route's compiled `escalate`.
#[derive(Debug)]
pub struct Escalation {
    pub at: At,
    pub to: Vec<Selector>,
    pub channels: Vec<Channel>,
    pub template: String,
}

impl Escalation {
    /// Compiles a route's `escalate`; errors are plain messages the caller prefixes with the
    /// route's name. `has_sla`: whether the route has a deadline to escalate before.
    pub fn compile(
        config: &EscalateConfig,
        has_sla: bool,
        directory: &Directory,
    ) -> Result<Escalation, Vec<String>> {
        let mut errors = Vec::new();
        if !has_sla {
            errors.push(
                "escalate: the route has no sla, so there is no deadline to escalate before: \
                 give it one (sla = \"within 24h\") or remove escalate"
                    .to_owned(),
            );
        }
        let at = At::parse(&config.at)
            .map_err(|e| errors.push(format!("escalate.{e}")))
            .ok();
        let mut to = Vec::new();
        for text in &config.to {
            match Selector::parse(text, directory) {
                Ok(s) => to.push(s),
                Err(e) => errors.push(format!("escalate.to: {e}")),
            }
        }
        if config.to.is_empty() {
            errors.push("escalate.to: names no recipient".into());
        }
        let mut channels = Vec::new();
        for c in &config.channels {
            match Channel::parse(c) {
                Some(c) if !channels.contains(&c) => channels.push(c),
                Some(_) => {}
                None => errors.push(format!(
                    "escalate.channels: \"{c}\" is not email or webhook"
                )),
            }
        }
        if config.channels.is_empty() {
            errors.push("escalate.channels: lists no channel".into());
        }
        // An escalation is sent later than it is written, with the event as it was: a legal
        // representative's authority, which can end meanwhile, would have to be judged again
        // then. Escalations go to those who answer for the delivery, never to representatives.
        for selector in &to {
            if selector.class() == RecipientClass::LegalRep {
                errors.push(format!(
                    "escalate.to: \"{}\" is a legal representative; an escalation goes to whoever answers for the delivery (a control room, a duty officer), not to a representative, whose authority could end before it is sent",
                    selector.text()
                ));
            }
        }
        // Each escalation recipient must be reachable by one of the channels.
        for selector in &to {
            let reachable = match selector {
                Selector::Id(r) => channels.iter().any(|c| r.has_channel(*c)),
                other => directory
                    .of_class(other.class())
                    .any(|r| channels.iter().any(|c| r.has_channel(*c))),
            };
            if !reachable && !channels.is_empty() {
                let list: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
                errors.push(format!(
                    "escalate.to: \"{}\" has none of escalate.channels ({})",
                    selector.text(),
                    list.join(", ")
                ));
            }
        }
        match at {
            Some(at) if errors.is_empty() => Ok(Escalation {
                at,
                to,
                channels,
                template: config.template.clone(),
            }),
            _ => Err(errors),
        }
    }

    /// The rule as routes.toml writes `at`, for the ledger and the templates.
    pub fn rule(&self) -> String {
        self.at.to_string()
    }

    /// When a notification with this deadline is escalated, if it has one.
    pub fn due(&self, occurred_at: DateTime<Utc>, sla: &Sla) -> Option<DateTime<Utc>> {
        sla.deadline().map(|d| self.at.instant(occurred_at, d.due))
    }

    /// The recipients the escalation reaches for an event, each with the channels it has of
    /// the rule's, and what stopped any selector (a pattern filled with an id not in the
    /// directory, a recipient with none of the channels, one not entitled to hear of the
    /// person) in words for the log.
    pub fn recipients<'d>(
        &self,
        event: &Event,
        directory: &'d Directory,
        authority: &Authority,
    ) -> (Vec<Reached<'d>>, Vec<String>) {
        let mut found: Vec<Reached<'d>> = Vec::new();
        let mut missed = Vec::new();
        for selector in &self.to {
            let recipients = match selector.select(event.info(), event, directory, authority) {
                Selected::Recipients(r) => r,
                Selected::Unknown { reason } => {
                    missed.push(format!("{}: {reason}", selector.text()));
                    continue;
                }
            };
            for r in recipients {
                if found.iter().any(|f| f.recipient.id == r.id) {
                    continue;
                }
                if let Err(why) = authority.may_hear(r, event) {
                    missed.push(format!("{} {why}", r.id));
                    continue;
                }
                let channels: Vec<Channel> = self
                    .channels
                    .iter()
                    .copied()
                    .filter(|c| r.has_channel(*c))
                    .collect();
                if channels.is_empty() {
                    missed.push(format!("{} has none of the escalation's channels", r.id));
                    continue;
                }
                found.push(Reached {
                    recipient: r,
                    channels,
                });
            }
        }
        (found, missed)
    }
}

/// An escalation recipient an event reaches, with the channels it has of the rule's.
#[derive(Debug)]
pub struct Reached<'d> {
    pub recipient: &'d Arc<Recipient>,
    pub channels: Vec<Channel>,
}

/// The notification an escalation is about: who has not been told, by which channel.
#[derive(Debug, Clone, Copy)]
pub struct NotTold<'a> {
    /// The notification's ledger key.
    pub key: &'a str,
    pub recipient: &'a Recipient,
    pub channel: Channel,
}

/// What an escalation's template sees of the event, for one escalation recipient: the event
/// as that recipient's class may see it (the same redaction, free text included, as a
/// notification to that class), the route's facts, the recipient, and the notification not
/// delivered with the escalation's rule and time. The `why` is added when it is sent
/// ([`with_why`]).
#[allow(clippy::too_many_arguments)]
pub fn data(
    event: &Event,
    route: &Route,
    facts: &RouteFacts,
    escalation: &Escalation,
    due_at: DateTime<Utc>,
    redaction: &Redaction,
    recipient: &Recipient,
    not_told: NotTold<'_>,
) -> Value {
    let description = event.description();
    let (info, withheld) = redaction.apply(recipient.class, event.info(), description);
    let mut person = Map::new();
    let mut identifiers = String::new();
    for (kind, value) in event.identifiers() {
        if !identifiers.is_empty() {
            identifiers.push_str(", ");
        }
        identifiers.push_str(kind);
        identifiers.push(' ');
        identifiers.push_str(value);
        person.insert(kind.to_owned(), Value::String(value.to_owned()));
    }
    let sla = match &facts.sla {
        Sla::Due { rule, deadline } => json!({
            "rule": rule,
            "due": stamp(deadline.due),
            "shortNotice": deadline.short_notice,
        }),
        _ => Value::Null,
    };
    let mut data = json!({
        "eventId": event.id.as_str(),
        "eventType": event.event_type.as_str(),
        "occurredAt": event.body["occurredAt"],
        "publishedAt": event.body["publishedAt"],
        "identifiers": identifiers,
        "person": person,
        "personReference": event.body["personReference"],
        "route": &*route.name,
        "priority": facts.priority.as_str(),
        "marks": facts.marks,
        "sla": sla,
        "info": info,
        "withheld": withheld,
        "recipient": party(recipient),
        "escalation": {
            "at": escalation.rule(),
            "dueAt": stamp(due_at),
            "notification": not_told.key,
            "notTold": party(not_told.recipient),
            "channel": not_told.channel.as_str(),
        },
    });
    if let Some(d) = description.filter(|_| redaction.shows_description(recipient.class))
        && let Some(map) = data.as_object_mut()
    {
        map.insert("description".into(), d.clone());
    }
    data
}

/// Why an escalation is sent: the notification's state in the ledger when it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    /// The ledger's status of the notification (`retrying`, `parked`, ...).
    pub status: String,
    pub attempts: i64,
    /// The kind of its last failure (`http-retryable`), if it failed.
    pub failure: Option<String>,
    /// The last failure in words (`HTTP 503`), or why it was not made.
    pub reason: Option<String>,
    pub deadline: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Why {
    /// The time left before the deadline, in words: `25s`, or `overdue by 3m`.
    pub fn time_left(&self) -> String {
        let left = self.deadline - self.now;
        let span = |d: chrono::Duration| {
            let secs = d.num_seconds().unsigned_abs();
            crate::sla::format_span(StdDuration::from_secs(secs))
        };
        if left < chrono::Duration::zero() {
            format!("overdue by {}", span(-left))
        } else {
            span(left)
        }
    }

    /// What a status means, for a person reading the escalation.
    fn status_words(&self) -> &'static str {
        match self.status.as_str() {
            "retrying" => "failed and is being retried",
            "parked" => "failed for good and is parked for an operator",
            "expired" => "ran out of retries and is parked for an operator",
            "pending" => "is not yet delivered",
            _ => "is not delivered",
        }
    }
}

/// The escalation's data with its `why`.
pub fn with_why(mut data: Value, why: &Why) -> Value {
    if let Some(map) = data.as_object_mut() {
        map.insert(
            "why".into(),
            json!({
                "status": why.status,
                "statusWords": why.status_words(),
                "attempts": why.attempts,
                "failure": why.failure,
                "reason": why.reason,
                "deadline": stamp(why.deadline),
                "timeLeft": why.time_left(),
                "overdue": why.now > why.deadline,
            }),
        );
    }
    data
}

/// A recipient as a template sees it.
fn party(r: &Recipient) -> Value {
    json!({"id": r.id.as_str(), "name": r.name, "class": r.class.as_str()})
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn at_reads_a_share_or_a_span_before() {
        assert_eq!(At::parse("75%"), Ok(At::Share(75)));
        assert_eq!(At::parse(" 50 % "), Ok(At::Share(50)));
        assert_eq!(
            At::parse("2h before"),
            Ok(At::Before(StdDuration::from_secs(7200)))
        );
        assert_eq!(At::parse("2h before").unwrap().to_string(), "2h before");
        assert_eq!(At::parse("75%").unwrap().to_string(), "75%");
        for bad in [
            "0%",
            "100%",
            "150%",
            "7.5%",
            "x%",
            "0s before",
            "soon before",
            "2h",
            "",
            "400d before",
            "300000years before",
        ] {
            let e = At::parse(bad).unwrap_err();
            assert!(e.starts_with("at: "), "{bad}: {e}");
        }
    }

    #[test]
    fn the_instant_is_a_share_of_the_allowed_time_or_a_span_before_never_before_the_event() {
        let occurred = t("2026-11-12T12:00:00Z");
        let deadline = t("2026-11-13T12:00:00Z");
        assert_eq!(
            At::Share(75).instant(occurred, deadline),
            t("2026-11-13T06:00:00Z")
        );
        assert_eq!(
            At::Share(50).instant(occurred, occurred + chrono::Duration::seconds(20)),
            occurred + chrono::Duration::seconds(10)
        );
        assert_eq!(
            At::Before(StdDuration::from_secs(2 * 3600)).instant(occurred, deadline),
            t("2026-11-13T10:00:00Z")
        );
        // A span longer than the time allowed, or a deadline already past (short notice):
        // at once.
        assert_eq!(
            At::Before(StdDuration::from_secs(48 * 3600)).instant(occurred, deadline),
            occurred
        );
        assert_eq!(
            At::Share(50).instant(occurred, occurred - chrono::Duration::hours(1)),
            occurred
        );
        // A span no calendar holds (not one `at` reads, but the instant never panics).
        assert_eq!(
            At::Before(StdDuration::MAX).instant(occurred, deadline),
            occurred
        );
        assert!(
            At::Share(99).instant(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)
                > DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn time_left_says_how_long_or_how_late() {
        let deadline = t("2026-11-12T12:00:00Z");
        let why = |now: &str| Why {
            status: "retrying".into(),
            attempts: 2,
            failure: Some("http-retryable".into()),
            reason: Some("HTTP 503".into()),
            deadline,
            now: t(now),
        };
        assert_eq!(why("2026-11-12T11:59:35Z").time_left(), "25s");
        assert_eq!(why("2026-11-12T12:03:00Z").time_left(), "overdue by 3m");
        let data = with_why(json!({}), &why("2026-11-12T11:00:00Z"));
        assert_eq!(data["why"]["timeLeft"], "1h");
        assert_eq!(data["why"]["overdue"], false);
        assert_eq!(data["why"]["reason"], "HTTP 503");
    }
}

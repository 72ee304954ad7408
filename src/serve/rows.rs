//! The ledger's rows for an event and what routing made of it: the same whether the service
//! handles the event or an operator replays it (`herald dlq replay`).

use chrono::{DateTime, Utc};

use super::retry::Pending;
use crate::core::Core;
use crate::event::Event;
use crate::ledger::{EventOutcome, EventRecord, LedgerError, NotificationRecord, Status, Store};
use crate::notification::{Problem, Skip, Sla};
use crate::route::Authority;

/// How the ledger key of a notification that was not made begins.
pub const UNMADE: &str = "none_";

/// The rows of the notifications routing made (pending), skipped (skipped) and could not make
/// (pending until parked), and each routing problem with its ledger key.
pub fn of_routing<'r>(
    event: &Event,
    pending: &[Pending],
    skipped: &[Skip],
    problems: &'r [Problem],
) -> (Vec<NotificationRecord>, Vec<(String, &'r Problem)>) {
    let mut records: Vec<NotificationRecord> = pending.iter().map(notification_record).collect();
    records.extend(skipped.iter().map(|s| {
        let recipient = match s {
            Skip::NotAuthorised { recipient, .. } => recipient,
            Skip::NoAuthorisedRecipient { selector, .. } => selector,
        };
        // The reason says why, to the day and the register event that decided it.
        let why = s.to_string();
        let key = unmade_key(event, s.route(), &why);
        unmade_record(key, s.route(), recipient, Status::Skipped, &why)
    }));
    let problems: Vec<(String, &Problem)> = problems
        .iter()
        .map(|p| (unmade_key(event, p.route(), &p.to_string()), p))
        .collect();
    records.extend(problems.iter().map(|(key, p)| {
        let recipient = problem_recipient(p);
        unmade_record(key.clone(), p.route(), recipient, Status::Pending, p.kind())
    }));
    (records, problems)
}

/// The ledger's row of an event. Only a routed one carries the person's identifiers and its
/// custody register entry: a duplicate's are the first copy's.
pub fn event_record(
    event: &Event,
    outcome: EventOutcome,
    received_at: DateTime<Utc>,
) -> EventRecord {
    let routed = outcome == EventOutcome::Routed;
    EventRecord {
        publisher: event.id.publisher().unwrap_or_default().to_owned(),
        message_id: event.id.as_str().to_owned(),
        event_type: event.event_type.to_string(),
        version: i64::try_from(event.version).ok(),
        occurred_at: Some(event.occurred_at),
        received_at,
        persons: if routed {
            event
                .identifiers()
                .map(|(t, v)| format!("{t}:{v}"))
                .collect()
        } else {
            Vec::new()
        },
        outcome,
        reason: None,
        custody: routed
            .then(|| crate::route::custody::Entry::of(event))
            .flatten()
            .and_then(|e| serde_json::to_string(&e).ok()),
    }
}

pub fn notification_record(p: &Pending) -> NotificationRecord {
    let (sla_rule, deadline) = match &p.sla {
        Sla::Due { rule, deadline } => (Some(rule.clone()), Some(deadline.due)),
        Sla::Unknown { rule, .. } => (Some(rule.clone()), None),
        Sla::Untracked => (None, None),
    };
    NotificationRecord {
        key: p.key.clone(),
        route: p.route.clone(),
        recipient: p.recipient.clone(),
        channel: p.channel().as_str().to_owned(),
        sla_rule,
        deadline,
        status: Status::Pending,
        reason: None,
    }
}

/// The ledger key of a notification that was not made (skipped, or a routing problem): the
/// same for the same event, route and reason, so a redelivered event finds it again.
pub fn unmade_key(event: &Event, route: &str, what: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        event.id.publisher().unwrap_or_default(),
        event.id.as_str(),
        route,
        what,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("{UNMADE}{}", hex::encode(&h.finalize()[..16]))
}

/// The ledger's row for a notification that was not made: no channel, no deadline.
fn unmade_record(
    key: String,
    route: &str,
    recipient: &str,
    status: Status,
    reason: &str,
) -> NotificationRecord {
    NotificationRecord {
        key,
        route: route.to_owned(),
        recipient: recipient.to_owned(),
        channel: "none".into(),
        sla_rule: None,
        deadline: None,
        status,
        reason: Some(reason.to_owned()),
    }
}

/// Whom a routing problem was about: the recipient, or the pattern or selector that found none.
fn problem_recipient(p: &Problem) -> &str {
    match p {
        Problem::UnknownRecipient { pattern, .. } => pattern,
        Problem::NoRecipients { selector, .. } => selector,
        Problem::NoChannel { recipient, .. } | Problem::RenderFailed { recipient, .. } => recipient,
    }
}

/// The authority register as it bears on an event now: read from the ledger when a route the
/// event matches names a legal representative, else routes.toml's `acts_for` alone.
pub async fn authority(
    core: &Core,
    store: &Store,
    event: &Event,
) -> Result<Authority, LedgerError> {
    if !core.needs_authority(event) {
        return Ok(Authority::seed());
    }
    let persons: Vec<String> = event
        .identifiers()
        .map(|(t, v)| format!("{t}:{v}"))
        .collect();
    let changes = store.authority_for(&persons).await?;
    Ok(Authority::new(Utc::now(), changes))
}

//! Escalation before a deadline is missed. When an event's handling leaves a notification of
//! a route with `escalate` undelivered, the escalations are recorded with its rows
//! ([`records`]); this task then finds those due, claims each (exactly one instance wins),
//! renders it with why the notification is not delivered (read from the ledger now), delivers
//! it as any notification is (the same guard, breaker and signing), and records the outcome,
//! clearing the escalation's copy of the event. An escalation whose notification was
//! delivered first is marked not needed.
//!
//! A transient failure is tried again on the retry schedule while the deadline is ahead; at
//! the deadline (or on a permanent failure) the escalation is failed and logged. A ledger that
//! cannot be read or written loses nothing: an escalation not claimed stays waiting, one whose
//! outcome could not be written is written at a later tick, and one claimed by an instance
//! that stopped is taken back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Ctx;
use super::instances::GONE_AFTER;
use crate::core::Core;
use crate::deliver::Outgoing;
use crate::event::Event;
use crate::ledger::{
    AttemptRecord, DueEscalation, EscalationEnd, EscalationRecord, EscalationState, Status,
};
use crate::notification::{Channel, Content, EscalationOutcome, Sla};
use crate::render::payload::escalation_body;
use crate::route::Authority;
use crate::route::escalate::{self, NotTold, Why};

/// A claim older than this is taken back whatever its instance: longer than any attempt
/// takes (an answer waits for the webhook timeout at most, an SMTP exchange less).
pub const LEASE: TimeDelta = TimeDelta::minutes(10);

/// Most escalations taken at one tick; the rest wait for the next.
const MOST_PER_TICK: i64 = 200;

/// Escalations sent at once.
const AT_ONCE: usize = 16;

/// A notification of a route that escalates, watched while its event is handled.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    pub key: String,
    pub route: String,
    pub recipient: String,
    pub channel: Channel,
    pub sla: Sla,
}

/// Whether any route escalates: only then are notifications watched.
pub(super) fn any(core: &Core) -> bool {
    core.engine.routes.iter().any(|r| r.escalate.is_some())
}

/// Whether the notification's route escalates.
pub(super) fn escalates(core: &Core, route: &str) -> bool {
    core.engine
        .routes
        .iter()
        .any(|r| *r.name == *route && r.escalate.is_some())
}

/// The escalations of the notifications an event's handling left undelivered: one per
/// escalation recipient and channel, with the event as that recipient's class may see it.
/// Pure but for the log lines saying who could not be reached.
pub(super) fn records(
    core: &Core,
    event: &Event,
    authority: &Authority,
    undelivered: &[Watched],
) -> Vec<EscalationRecord> {
    let mut records = Vec::new();
    for w in undelivered {
        let Some(route) = core.engine.routes.iter().find(|r| *r.name == *w.route) else {
            continue;
        };
        let Some(escalation) = &route.escalate else {
            continue;
        };
        let Some(due_at) = escalation.due(event.occurred_at, &w.sla) else {
            debug!(event_id = %event.id, route = %w.route, key = %w.key, "no deadline for this event, so nothing to escalate before");
            continue;
        };
        let Some(not_told) = core.engine.directory.get(&w.recipient) else {
            continue;
        };
        let facts = core.engine.facts(route, event);
        let (reached, missed) = escalation.recipients(event, &core.engine.directory, authority);
        for why in &missed {
            warn!(event_id = %event.id, route = %w.route, key = %w.key, detail = %why, "an escalation recipient cannot be told");
        }
        for escalate::Reached {
            recipient,
            channels,
        } in reached
        {
            let data = escalate::data(
                event,
                route,
                &facts,
                escalation,
                due_at,
                &core.engine.redaction,
                recipient,
                NotTold {
                    key: &w.key,
                    recipient: not_told,
                    channel: w.channel,
                },
            )
            .to_string();
            for channel in channels {
                records.push(EscalationRecord {
                    key: key(&w.key, recipient.id.as_str(), channel),
                    notification_key: w.key.clone(),
                    route: w.route.clone(),
                    recipient: recipient.id.to_string(),
                    recipient_class: recipient.class.as_str().to_owned(),
                    channel: channel.as_str().to_owned(),
                    rule: escalation.rule(),
                    template: escalation.template.clone(),
                    due_at,
                    data: data.clone(),
                });
            }
        }
    }
    records
}

/// An escalation's key: the same for the same notification, recipient and channel, so a
/// notification handled again adds no second escalation; the recipient's `Message-ID` or
/// `webhook-id` to drop a duplicate by.
pub fn key(notification: &str, recipient: &str, channel: Channel) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [notification, recipient, channel.as_str()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("esc_{}", hex::encode(&h.finalize()[..16]))
}

/// The scanner: every `tick`, the escalations not needed any more are marked so, those held
/// by an instance gone are taken back, and those due are sent.
pub(crate) async fn scan(ctx: Arc<Ctx>, tick: Duration, stop: CancellationToken) {
    // Outcomes the ledger did not take when they happened: written first at each tick.
    let mut unwritten: Vec<EscalationEnd> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let store = ctx.ledger.store();
        let mut left = Vec::new();
        for end in unwritten.drain(..) {
            if let Err(e) = store.escalation_ended(&end).await {
                debug!(key = %end.key, error = %e, "an escalation's outcome still cannot be written");
                left.push(end);
            }
        }
        unwritten = left;
        let now = Utc::now();
        match store.escalations_not_needed(now).await {
            Ok(routes) => {
                for route in routes {
                    count(&ctx, &route, EscalationOutcome::NotNeeded);
                    debug!(route = %route, "escalation not needed: the notification was delivered");
                }
            }
            Err(e) => warn!(error = %e, "cannot look at the escalations now; trying again shortly"),
        }
        match store
            .escalations_taken_back(now - GONE_AFTER, now - LEASE, now)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(
                escalations = n,
                "escalations an instance stopped sending are taken back"
            ),
            Err(e) => debug!(error = %e, "cannot take back escalations now"),
        }
        let due = match store.escalations_due(now, MOST_PER_TICK).await {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "cannot read the escalations due; trying again shortly");
                continue;
            }
        };
        let ended: Vec<EscalationEnd> = futures_util::stream::iter(due)
            .map(|key| {
                let ctx = &ctx;
                async move { one(ctx, key).await }
            })
            .buffer_unordered(AT_ONCE)
            .filter_map(|end| async move { end })
            .collect()
            .await;
        unwritten.extend(ended);
    }
}

/// Claims, sends and records one escalation. Returns its outcome when the ledger did not take
/// it, to be written later.
async fn one(ctx: &Ctx, key: String) -> Option<EscalationEnd> {
    let store = ctx.ledger.store();
    let instance = ctx.settings.instance.as_str();
    match store.claim_escalation(&key, instance, Utc::now()).await {
        Ok(true) => {}
        // Taken by another instance, or no longer waiting.
        Ok(false) => return None,
        Err(e) => {
            debug!(key, error = %e, "cannot claim an escalation now; it waits for a later tick");
            return None;
        }
    }
    let row = match store.escalation(&key).await {
        Ok(Some(row)) => row,
        Ok(None) => return None,
        Err(e) => {
            warn!(key, error = %e, "cannot read a claimed escalation; it is tried again later");
            return write(ctx, put_back(&key, instance)).await;
        }
    };
    let end = attempt(ctx, &row).await;
    write(ctx, end).await
}

/// Writes an outcome, handing it back when the ledger does not take it now.
async fn write(ctx: &Ctx, end: EscalationEnd) -> Option<EscalationEnd> {
    match ctx.ledger.store().escalation_ended(&end).await {
        Ok(true) => None,
        Ok(false) => {
            warn!(key = %end.key, "an escalation's claim was taken back before its outcome was written");
            None
        }
        Err(e) => {
            error!(key = %end.key, error = %e, "cannot record an escalation's outcome; it is written at a later tick");
            Some(end)
        }
    }
}

/// A claimed escalation left waiting as it was, to be tried at a later tick.
fn put_back(key: &str, instance: &str) -> EscalationEnd {
    EscalationEnd {
        key: key.to_owned(),
        instance: instance.to_owned(),
        state: EscalationState::Waiting,
        next: None,
        attempts: None,
        reason: None,
        now: Utc::now(),
        sent: None,
    }
}

/// One try of a claimed escalation, and how it ended.
async fn attempt(ctx: &Ctx, row: &DueEscalation) -> EscalationEnd {
    let instance = ctx.settings.instance.as_str();
    let now = Utc::now();
    let ended = |state: EscalationState, reason: Option<String>| EscalationEnd {
        key: row.key.clone(),
        instance: instance.to_owned(),
        state,
        next: None,
        attempts: Some(row.attempts),
        reason,
        now,
        sent: None,
    };
    let fail = |why: String| {
        count(ctx, &row.route, EscalationOutcome::Failed);
        warn!(route = %row.route, recipient = %row.recipient, channel = %row.channel, key = %row.key, notification = %row.notification_key, reason = %why, outcome = EscalationOutcome::Failed.as_str(), "escalation not sent");
        ended(EscalationState::Failed, Some(why))
    };
    let status = match row.status {
        Some(Status::Delivered | Status::Skipped) => {
            count(ctx, &row.route, EscalationOutcome::NotNeeded);
            debug!(route = %row.route, key = %row.key, "escalation not needed: the notification was delivered");
            return ended(EscalationState::NotNeeded, None);
        }
        Some(status) => status,
        None => return fail("the notification is no longer in the ledger".into()),
    };
    let Some(data) = row
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
    else {
        return fail("the escalation's data is missing".into());
    };
    // The configuration in force now: a reload since the row was written may have removed
    // the route's escalation, or changed the recipient or the template.
    let core = ctx.live.current();
    let Some(escalation) = core
        .engine
        .routes
        .iter()
        .find(|r| *r.name == *row.route)
        .and_then(|r| r.escalate.as_ref())
    else {
        count(ctx, &row.route, EscalationOutcome::NotNeeded);
        info!(route = %row.route, key = %row.key, "escalation not sent: the route no longer escalates (the configuration was reloaded)");
        return ended(
            EscalationState::NotNeeded,
            Some("the route no longer escalates in the configuration in force".into()),
        );
    };
    let Some(recipient) = core.engine.directory.get(&row.recipient) else {
        return fail(format!("{} is no longer in the directory", row.recipient));
    };
    let deadline = row.deadline.unwrap_or(row.due_at);
    let why = Why {
        status: status.as_str().to_owned(),
        attempts: row.notification_attempts,
        failure: row
            .last_outcome
            .clone()
            .filter(|o| o != "delivered" && o != "replayed"),
        reason: row.reason.clone(),
        deadline,
        now,
    };
    let data = escalate::with_why(data, &why);
    let content = match Channel::parse(&row.channel) {
        Some(Channel::Email) => {
            let marks: Vec<String> = data["marks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect();
            match core.renderer.email_of(&escalation.template, &data, &marks) {
                Ok(parts) => Content::Email {
                    to: recipient.email.clone(),
                    subject: parts.subject,
                    text: parts.text,
                    html: parts.html,
                },
                Err(e) => return fail(format!("render-failed: {e}")),
            }
        }
        Some(Channel::Webhook) => match &recipient.webhook {
            Some(w) => Content::Webhook {
                url: w.url.clone(),
                body: escalation_body(
                    &row.key,
                    &data,
                    &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            },
            None => return fail(format!("{} no longer has a webhook", row.recipient)),
        },
        None => return fail(format!("\"{}\" is not a channel", row.channel)),
    };
    let started = Instant::now();
    let (result, state) = ctx
        .deliverer
        .deliver(
            Outgoing {
                key: &row.key,
                recipient: &row.recipient,
                content: &content,
                urgent: true,
            },
            false,
        )
        .await;
    let attempts = row.attempts + 1;
    let attempt = |outcome: &'static str, code: Option<u16>| AttemptRecord {
        at: now,
        duration: started.elapsed(),
        outcome,
        code,
        breaker: state.as_str(),
    };
    let (route, recipient, channel, key) = (&row.route, &row.recipient, &row.channel, &row.key);
    let notification = &row.notification_key;
    match result {
        Ok(()) => {
            count(ctx, route, EscalationOutcome::Sent);
            info!(route = %route, recipient = %recipient, channel = %channel, key = %key, notification = %notification, status = why.status, attempts, outcome = EscalationOutcome::Sent.as_str(), "escalation sent");
            EscalationEnd {
                attempts: Some(attempts),
                reason: Some(format!(
                    "escalation: {notification} to the route's recipient was {}",
                    why.status
                )),
                sent: Some((Status::Delivered, attempt("delivered", None))),
                ..ended(EscalationState::Sent, None)
            }
        }
        Err(failure) => {
            let wait = ctx
                .settings
                .retry_schedule
                .get(usize::try_from(attempts - 1).unwrap_or(usize::MAX))
                .or(ctx.settings.retry_schedule.last())
                .copied()
                .unwrap_or(Duration::from_secs(60));
            let next = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
            let reason = Some(format!("{}: {}", failure.kind.as_str(), failure.detail));
            let tried = Some(attempt(failure.kind.as_str(), failure.code));
            if failure.is_transient() && next <= deadline {
                warn!(route = %route, recipient = %recipient, channel = %channel, key = %key, attempts, failure = failure.kind.as_str(), detail = %failure.chain(), retry_in_secs = wait.as_secs(), "escalation not delivered; tried again before the deadline");
                EscalationEnd {
                    next: Some(next),
                    attempts: Some(attempts),
                    reason,
                    sent: tried.map(|a| (Status::Retrying, a)),
                    ..ended(EscalationState::Waiting, None)
                }
            } else {
                count(ctx, route, EscalationOutcome::Failed);
                let status = if failure.is_transient() {
                    Status::Expired
                } else {
                    Status::Parked
                };
                error!(route = %route, recipient = %recipient, channel = %channel, key = %key, notification = %notification, attempts, failure = failure.kind.as_str(), detail = %failure.chain(), outcome = EscalationOutcome::Failed.as_str(), "escalation failed: the escalation recipient could not be told");
                EscalationEnd {
                    attempts: Some(attempts),
                    reason,
                    sent: tried.map(|a| (status, a)),
                    ..ended(EscalationState::Failed, None)
                }
            }
        }
    }
}

fn count(ctx: &Ctx, route: &str, outcome: EscalationOutcome) {
    ctx.metrics
        .escalations
        .with_label_values(&[route, outcome.as_str()])
        .inc();
}

//! One event from the queue: check who sent it, validate, route, deliver every notification
//! concurrently, park what cannot be delivered, and only then acknowledge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::acks::Acks;
use super::contact::{self, Fallback, Sibling};
use super::dedup::Claim;
use super::escalate::{self, Watched};
use super::instances::{self, Held, RETRY_CLAIMS};
use super::retry::{self, Pending};
use super::{Ctx, park, rows};
use crate::core::Core;
use crate::deliver::Failure;
use crate::deliver::guard::State;
use crate::event::Event;
use crate::intake::{Message, Reason, Rejection, excerpt};
use crate::ledger::{
    AttemptRecord, EndpointRecord, EventOutcome, EventRecord, Seen, Status, Update,
};
use crate::notification::{Channel, Content, DeliveryOutcome, ParkReason, Skip};
use crate::route::Authority;
use crate::route::authority::{Change, ChangeKind, ChangeResult};

/// One handling's view of the service: the configuration in force when it began, which it
/// keeps to its end whatever a reload puts in force meanwhile, and the rest of the service.
pub(crate) struct Scope<'a> {
    ctx: &'a Ctx,
    core: Arc<Core>,
}

impl<'a> Scope<'a> {
    fn of(ctx: &'a Ctx) -> Scope<'a> {
        Scope {
            ctx,
            core: ctx.live.current(),
        }
    }
}

impl std::ops::Deref for Scope<'_> {
    type Target = Ctx;

    fn deref(&self) -> &Ctx {
        self.ctx
    }
}

/// How one notification ended in this handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Failed transiently; a retry is durably scheduled.
    Scheduled,
    /// Failed permanently, or retries are spent; parked.
    Parked,
    /// Could neither be scheduled nor parked: the message must come back.
    Retry,
    /// Not sent: the recipient is no longer entitled to it (a legal representative whose
    /// authority ended before this attempt).
    Skipped,
    /// Not sent by its webhook, which is down: the route's email to the recipient carries it
    /// (`contact::fallback`).
    ByEmail,
}

pub async fn handle(ctx: &Ctx, delivery: Delivery, acks: &Acks) {
    let scope = Scope::of(ctx);
    let ctx = &scope;
    let label = ctx
        .core
        .intake
        .schemas()
        .event_type(delivery.routing_key.as_str())
        .map_or("unknown", |t| t.as_str())
        .to_owned();
    // Every line about this event, down to each delivery attempt, carries these: one search of
    // the log for the message_id follows the event end to end. All three are bounded: the id
    // as an excerpt, the type and the publisher as known names or "unknown" / "other".
    let props = &delivery.properties;
    let span = event_span(
        &props
            .message_id()
            .as_ref()
            .map(|m| excerpt(m.as_str()))
            .unwrap_or_default(),
        &label,
        ctx.core
            .publishers
            .label(props.user_id().as_ref().map_or("", |u| u.as_str())),
    );
    let done = handle_event(ctx, &delivery, label).instrument(span).await;
    if done {
        acks.done(delivery.delivery_tag, &delivery.acker).await;
    } else {
        settle(&delivery, false).await;
        acks.forget(delivery.delivery_tag);
    }
}

/// Handles one event; true when it may be acknowledged, false when it must come back.
async fn handle_event(ctx: &Scope<'_>, delivery: &Delivery, label: String) -> bool {
    let received_at = Utc::now();
    match check(ctx, delivery) {
        Err(rejection) => {
            ctx.metrics
                .events_received
                .with_label_values(&[&label])
                .inc();
            // Both are the publisher's choice: logged as bounded excerpts.
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| excerpt(m.as_str()));
            warn!(
                message_id = message_id.as_deref().unwrap_or(""),
                routing_key = %excerpt(delivery.routing_key.as_str()),
                reason = rejection.reason.as_str(),
                detail = %rejection.detail,
                "event rejected"
            );
            match park::reject(
                &ctx.publisher(),
                &ctx.settings.rejected_queue,
                delivery,
                &rejection,
                ctx.core.max_header_bytes(),
            )
            .await
            {
                Ok(()) => {
                    ctx.metrics
                        .events_rejected
                        .with_label_values(&[rejection.reason.as_str(), &label])
                        .inc();
                    let props = &delivery.properties;
                    // In full (the broker bounds both to 255 bytes), so a replay picked from
                    // the ledger finds the parked message by them.
                    let record = EventRecord {
                        publisher: props
                            .user_id()
                            .as_ref()
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                        message_id: props
                            .message_id()
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                        event_type: label,
                        version: None,
                        occurred_at: None,
                        received_at,
                        persons: Vec::new(),
                        outcome: EventOutcome::Rejected,
                        reason: Some(rejection.reason.as_str().to_owned()),
                        custody: None,
                    };
                    if rejection.reason == Reason::UnknownRepresentative {
                        ctx.metrics
                            .authority_changes
                            .with_label_values(&[
                                change_label(&record.event_type),
                                ChangeResult::UnknownRepresentative.as_str(),
                            ])
                            .inc();
                    }
                    recorded(ctx.ledger.event(record, Vec::new()).await)
                }
                Err(e) => {
                    error!(error = %e, "cannot park a rejected event; it stays on the queue");
                    false
                }
            }
        }
        Ok(event) => {
            ctx.metrics
                .events_received
                .with_label_values(&[event.event_type.as_str()])
                .inc();
            // A copy of an event still being handled (the broker redelivers what a lost
            // connection held while its handler is still at work) waits for that handling.
            let wait = copy_wait(ctx);
            match ctx.recent.claim_waiting(&event.id, wait).await {
                Claim::Claimed => {}
                Claim::Handled => return duplicate(ctx, &event, received_at).await,
                Claim::InFlight => {
                    warn!(event_id = %event.id, event_type = %event.event_type, wait_secs = wait.as_secs(), "a copy of this event is still being handled after the wait; this one goes back to the queue");
                    return false;
                }
            }
            let id = event.id.clone();
            // Another instance may be handling a copy of it (the broker redelivers what a
            // lost connection held): wait for it as for a copy in this process.
            let publisher = event.id.publisher().unwrap_or_default().to_owned();
            if instances::exclusive(ctx, &publisher, id.as_str(), wait).await == Held::Elsewhere {
                warn!(event_id = %event.id, event_type = %event.event_type, wait_secs = wait.as_secs(), "another instance is still handling a copy of this event after the wait; this one goes back to the queue");
                ctx.recent.finish(id, false, Instant::now());
                return false;
            }
            let done = route_and_deliver(ctx, event, received_at).await;
            instances::release(ctx, &publisher, id.as_str()).await;
            ctx.recent.finish(id, done, Instant::now());
            done
        }
    }
}

/// How long a copy of an event (or of a retry) waits for the handling of another copy, here or
/// in another instance: what one handling can take, an attempt per notification, each waiting
/// at most the timeout for a slot and the timeout for an answer.
fn copy_wait(ctx: &Scope<'_>) -> Duration {
    ctx.settings.webhook_timeout * 2 + Duration::from_secs(5)
}

/// The message's own checks, through the same gate a replay passes: an id, a publisher the
/// broker vouched for who may send this type, JSON, a routing key that is the event's type,
/// and a valid event.
fn check(ctx: &Scope<'_>, delivery: &Delivery) -> Result<Event, Rejection> {
    let props = &delivery.properties;
    let message = Message {
        body: &delivery.data,
        routing_key: delivery.routing_key.as_str(),
        message_id: props.message_id().as_ref().map(|m| m.as_str()),
        user_id: props.user_id().as_ref().map(|u| u.as_str()),
        content_type: props.content_type().as_ref().map(|c| c.as_str()),
        header_bytes: props.headers().as_ref().map_or(0, park::header_bytes),
    };
    let event = ctx.core.admit(&message)?;
    if *props.delivery_mode() != Some(2) {
        // Accepted: the event is here now. But a broker restart would have lost it, so the
        // operator is told whose system publishes this way.
        let publisher = ctx
            .core
            .publishers
            .label(event.id.publisher().unwrap_or_default());
        ctx.metrics
            .events_non_persistent
            .with_label_values(&[publisher])
            .inc();
        warn!(event_id = %event.id, event_type = %event.event_type, publisher, "event published without persistent delivery mode; a broker restart would lose such events");
    }
    Ok(event)
}

/// Routes, records the event and its notifications in the ledger, and delivers; true when
/// everything is delivered, scheduled or parked.
async fn route_and_deliver(ctx: &Scope<'_>, event: Event, received_at: DateTime<Utc>) -> bool {
    let change = match Change::of(&event) {
        Ok(change) => change,
        Err(e) => {
            // The intake's checks make this unreachable; said, and the event routed as any.
            error!(event_id = %event.id, event_type = %event.event_type, error = %e, "a register event that cannot be applied; the register is not changed");
            None
        }
    };
    let store = ctx.ledger.store();
    // What the register held for the pair before: whether a withdrawal ends anything.
    let before = match &change {
        Some(c) if matches!(c.kind, ChangeKind::Withdrawal { .. }) => {
            match store.authority_for(std::slice::from_ref(&c.person)).await {
                Ok(before) => before,
                Err(e) => {
                    error!(event_id = %event.id, error = %e, "cannot read the authority register; the event goes back to the queue");
                    return false;
                }
            }
        }
        _ => Vec::new(),
    };
    let authority = match rows::authority(&ctx.core, store, &event).await {
        Ok(authority) => authority,
        Err(e) => {
            error!(event_id = %event.id, error = %e, "cannot read the authority register; the event goes back to the queue");
            return false;
        }
    };
    let routing = ctx.core.route(&event, &authority);
    let pending: Vec<Pending> = routing
        .notifications
        .into_iter()
        .map(|n| Pending::new(n, &event))
        .collect();
    let (records, problems) =
        rows::of_routing(&event, &pending, &routing.skipped, &routing.problems);
    let record = rows::event_record(&event, EventOutcome::Routed, received_at);
    // Asked before anything is sent; everything is written in one commit once each
    // notification's handling has ended, and the event is acknowledged after that commit.
    let seen = match ctx.ledger.seen(&record.publisher, &record.message_id).await {
        Ok(seen) => seen,
        Err(e) => {
            error!(event_id = %event.id, error = %e, "cannot read the ledger; the event goes back to the queue");
            return false;
        }
    };
    let settled = |key: &str| seen.settled(key);
    let first_time = seen == Seen::New;
    if !first_time {
        let open = pending.iter().filter(|p| !settled(&p.key)).count()
            + problems.iter().filter(|(k, _)| !settled(k)).count();
        if open == 0 {
            return duplicate(ctx, &event, received_at).await;
        }
        info!(event_id = %event.id, event_type = %event.event_type, unsettled = open, "event seen before; only the notifications the ledger shows unsettled are handled again");
    }
    // Each notification and each problem gets its own line below; only an event that makes
    // neither needs one of its own at info. (A line per event and per notification cost a
    // third of Herald's CPU: docs/performance.md.)
    if pending.is_empty() && problems.is_empty() && routing.skipped.is_empty() {
        info!(
            event_id = %event.id,
            event_type = %event.event_type,
            routes = routing.matched_routes.len(),
            "event routed to no one"
        );
    } else {
        debug!(
            event_id = %event.id,
            event_type = %event.event_type,
            routes = routing.matched_routes.len(),
            notifications = pending.len(),
            problems = problems.len(),
            "event routed"
        );
    }
    if first_time {
        for s in &routing.skipped {
            info!(event_id = %event.id, event_type = %event.event_type, route = s.route(), outcome = s.kind(), detail = %s, "notification not sent: the recipient is not entitled to it");
            ctx.metrics
                .notifications
                .with_label_values(&[s.route(), "none", s.kind()])
                .inc();
        }
    }
    let mut done = true;
    let mut updates = Vec::new();
    for (key, p) in problems.iter().filter(|(k, _)| !settled(k)) {
        warn!(event_id = %event.id, event_type = %event.event_type, route = p.route(), outcome = p.kind(), detail = %p, "notification not made");
        match park::problem(&ctx.publisher(), &ctx.settings.failed_queue, &event, p).await {
            Ok(()) => {
                ctx.metrics
                    .notifications
                    .with_label_values(&[p.route(), "none", p.kind()])
                    .inc();
                updates.push(Update {
                    key: key.clone(),
                    status: Status::Parked,
                    reason: Some(p.to_string()),
                    attempts: 0,
                    first_failure_at: None,
                    delivered_at: None,
                    sla_outcome: None,
                    sent_hash: None,
                    attempt: None,
                });
            }
            Err(e) => {
                error!(event_id = %event.id, error = %e, "cannot park a routing problem; the event stays on the queue");
                done = false;
            }
        }
    }
    let pending: Vec<Pending> = pending.into_iter().filter(|p| !settled(&p.key)).collect();
    // The notifications of routes that escalate, in the order they are delivered: those left
    // undelivered get their escalations, written with them.
    let watched: Vec<Option<Watched>> = if escalate::any(&ctx.core) {
        pending
            .iter()
            .map(|p| {
                escalate::escalates(&ctx.core, &p.route).then(|| Watched {
                    key: p.key.clone(),
                    route: p.route.clone(),
                    recipient: p.recipient.clone(),
                    channel: p.channel(),
                    sla: p.sla.clone(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    // Each notification carries what it needs: the document is freed now rather than held
    // until the slowest recipient answers, unless an escalation may need it.
    let event = watched.iter().any(Option::is_some).then_some(event);
    let mut undelivered = Vec::new();
    // Whether the route made the recipient an email too, for a webhook that may go down
    // (its recipient names a contact): the email that would carry it.
    let directory = &ctx.core.engine.directory;
    let siblings: Vec<Sibling> = pending
        .iter()
        .map(|p| {
            let made = p.channel() == Channel::Webhook
                && directory
                    .get(&p.recipient)
                    .is_some_and(|r| r.contact.is_some())
                && pending.iter().any(|q| {
                    q.channel() == Channel::Email
                        && q.route == p.route
                        && q.recipient == p.recipient
                });
            if made { Sibling::Made } else { Sibling::Ask }
        })
        .collect();
    let mut by_email = Vec::new();
    let attempts = pending
        .into_iter()
        .zip(siblings)
        .map(|(p, sibling)| attempt(ctx, p, sibling));
    let mut watched = watched.into_iter();
    for (outcome, update) in join_all(attempts).await {
        done &= outcome != Outcome::Retry;
        if let (Outcome::ByEmail, Some(u)) = (outcome, &update) {
            by_email.push(u.key.clone());
        }
        updates.extend(update);
        if let Some(Some(w)) = watched.next()
            && !matches!(
                outcome,
                Outcome::Delivered | Outcome::Skipped | Outcome::ByEmail
            )
        {
            undelivered.push(w);
        }
    }
    let escalations = match &event {
        Some(event) if !undelivered.is_empty() => {
            escalate::records(&ctx.core, event, &authority, &undelivered)
        }
        _ => Vec::new(),
    };
    drop(event);
    // An event seen before: only what was handled again is written.
    let records = if first_time {
        records
    } else {
        records.into_iter().filter(|r| !settled(&r.key)).collect()
    };
    let message_id = record.message_id.clone();
    if !recorded(
        ctx.ledger
            .handled_escalating(record, records, updates, change.clone(), escalations)
            .await,
    ) {
        return false;
    }
    if let Some(c) = &change {
        applied(ctx, &message_id, c, &seen, &before);
    }
    for key in &by_email {
        went_by_email(ctx, key).await;
    }
    done
}

/// A webhook notification that went by email: its ledger row's channel says so, once its
/// outcome is committed.
async fn went_by_email(ctx: &Ctx, key: &str) {
    if let Err(e) = ctx
        .ledger
        .store()
        .record_channel(key, Channel::Email.as_str())
        .await
    {
        warn!(key, error = %e, "cannot record in the ledger that a webhook notification went by email; its reason says so");
    }
}

/// Counts and says what a register event did to the register (its row is committed).
fn applied(ctx: &Scope<'_>, message_id: &str, change: &Change, seen: &Seen, before: &[Change]) {
    let seeded = ctx
        .core
        .engine
        .directory
        .seeded(&change.person, &change.representative);
    let result = if *seen != Seen::New {
        ChangeResult::Duplicate
    } else if change.ends_something(before, seeded) {
        ChangeResult::Applied
    } else {
        ChangeResult::WithdrawsNothing
    };
    ctx.metrics
        .authority_changes
        .with_label_values(&[change.kind.as_str(), result.as_str()])
        .inc();
    ctx.register_changed();
    let (representative, kind) = (&change.representative, change.kind.as_str());
    match result {
        ChangeResult::WithdrawsNothing => {
            warn!(event_id = message_id, representative = %representative, change = kind, result = result.as_str(), "authority withdrawn where the register holds no grant for this person; kept, so a grant that arrives later stays ended")
        }
        ChangeResult::Duplicate => {
            debug!(event_id = message_id, representative = %representative, change = kind, result = result.as_str(), "authority change already in the register")
        }
        _ => {
            info!(event_id = message_id, representative = %representative, change = kind, result = result.as_str(), effective_from = %change.kind.from(), "authority register changed")
        }
    }
}

/// The `change` label of a register event type.
fn change_label(event_type: &str) -> &'static str {
    if event_type == crate::event::REPRESENTATION_WITHDRAWN {
        "withdrawal"
    } else {
        "grant"
    }
}

/// A copy of an event already routed: counted, recorded, and acknowledged.
async fn duplicate(ctx: &Scope<'_>, event: &Event, received_at: DateTime<Utc>) -> bool {
    ctx.metrics
        .events_duplicate
        .with_label_values(&[event.event_type.as_str()])
        .inc();
    info!(event_id = %event.id, event_type = %event.event_type, "event already handled; not routed again");
    if let Ok(Some(change)) = Change::of(event) {
        // The register holds it already: its row is keyed by the event.
        ctx.metrics
            .authority_changes
            .with_label_values(&[change.kind.as_str(), ChangeResult::Duplicate.as_str()])
            .inc();
    }
    let record = rows::event_record(event, EventOutcome::Duplicate, received_at);
    recorded(ctx.ledger.event(record, Vec::new()).await)
}

/// Whether a ledger write went through (a refusal is logged; the event comes back).
fn recorded<T>(result: Result<T, crate::ledger::LedgerError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            error!(error = %e, "cannot record in the ledger; the message goes back to its queue");
            false
        }
    }
}

/// A SHA-256 of what a notification sends, when `[ledger] keep_sent_hash` asks for one.
fn sent_hash(ctx: &Scope<'_>, p: &Pending) -> Option<String> {
    use sha2::Digest;
    if !ctx.settings.keep_sent_hash {
        return None;
    }
    let mut h = sha2::Sha256::new();
    match &p.content {
        Content::Webhook { body, .. } => h.update(body.as_bytes()),
        Content::Email {
            subject,
            text,
            html,
            ..
        } => {
            for part in [subject, text, html] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
        }
    }
    Some(hex::encode(h.finalize()))
}

/// A due retry from the deliveries queue: one more attempt, then acknowledged unless it could
/// neither be delivered, rescheduled nor parked.
pub async fn handle_retry(ctx: &Ctx, delivery: Delivery) {
    let scope = Scope::of(ctx);
    let ctx = &scope;
    let done = match serde_json::from_slice::<Pending>(&delivery.data) {
        Ok(pending) => {
            let span = event_span(
                &pending.event_id,
                &pending.event_type,
                ctx.core
                    .publishers
                    .label(pending.publisher.as_deref().unwrap_or_default()),
            );
            // A copy of this retry that another instance is trying now (the broker
            // redelivered it after a lost connection) is waited for, then judged below.
            let key = pending.key.clone();
            if instances::exclusive(ctx, RETRY_CLAIMS, &key, copy_wait(ctx)).await
                == Held::Elsewhere
            {
                false
            } else {
                // A retry message the broker delivers again after its notification was
                // delivered (Herald stopped between the two) is not sent twice.
                // Nor one that went by email meanwhile, or was skipped.
                let delivered = !pending.replay
                    && matches!(
                        ctx.ledger.store().status(&pending.key).await,
                        Ok(Some(Status::Delivered | Status::Skipped))
                    );
                let done = if delivered {
                    let _entered = span.enter();
                    info!(key = %pending.key, "retry of a notification already delivered or settled; not sent again");
                    true
                } else {
                    match attempt(ctx, pending, Sibling::Ask).instrument(span).await {
                        (Outcome::Retry, _) => false,
                        (Outcome::ByEmail, Some(update)) => {
                            let key = update.key.clone();
                            let done = recorded(ctx.ledger.update(update).await);
                            if done {
                                went_by_email(ctx, &key).await;
                            }
                            done
                        }
                        (_, Some(update)) => recorded(ctx.ledger.update(update).await),
                        (_, None) => true,
                    }
                };
                instances::release(ctx, RETRY_CLAIMS, &key).await;
                done
            }
        }
        Err(e) => {
            error!(error = %e, "a retry message cannot be read; parking it");
            park::unreadable(
                &ctx.publisher(),
                &ctx.settings.failed_queue,
                &delivery.data,
                &e.to_string(),
            )
            .await
            .is_ok()
        }
    };
    settle(&delivery, done).await;
}

/// The span every line about one event is written in.
fn event_span(message_id: &str, event_type: &str, publisher: &str) -> Span {
    info_span!("event", message_id, event_type, publisher)
}

/// One delivery attempt, in a span of its own inside the event's: which recipient, by which
/// channel, which attempt. How it ended, and the ledger's update saying so, for the caller to
/// write (with its event's rows, or on its own for a retry).
async fn attempt(ctx: &Scope<'_>, p: Pending, sibling: Sibling) -> (Outcome, Option<Update>) {
    let span = info_span!(
        "delivery",
        recipient = %p.recipient,
        channel = p.channel().as_str(),
        attempt = p.attempts + 1
    );
    attempt_once(ctx, p, sibling).instrument(span).await
}

/// A notification to a legal representative tried again (a retry, a replay) goes only if the
/// representative is still authorised for the person now; if not, it is skipped and the
/// ledger says why. `None`: it may go.
async fn no_longer_entitled(ctx: &Scope<'_>, p: &Pending) -> Option<(Outcome, Option<Update>)> {
    if p.persons.is_empty() || (p.attempts == 0 && !p.replay) {
        return None;
    }
    // A recipient gone from the directory fails its delivery as any other would.
    let recipient = ctx.core.engine.directory.get(&p.recipient)?;
    let changes = match ctx.ledger.store().authority_for(&p.persons).await {
        Ok(changes) => changes,
        Err(e) => {
            error!(event_id = %p.event_id, error = %e, "cannot read the authority register; the notification stays on its queue");
            return Some((Outcome::Retry, None));
        }
    };
    let identifiers = p.persons.iter().filter_map(|id| id.split_once(':'));
    let why = Authority::new(Utc::now(), changes)
        .may_hear_of(recipient, identifiers)
        .err()?;
    let skip = Skip::NotAuthorised {
        route: p.route.clone(),
        recipient: p.recipient.clone(),
        why,
    };
    let update = Update {
        key: p.key.clone(),
        status: Status::Skipped,
        reason: Some(skip.to_string()),
        attempts: i64::from(p.attempts),
        first_failure_at: p.first_failure,
        delivered_at: None,
        sla_outcome: None,
        sent_hash: None,
        attempt: None,
    };
    let channel = p.channel().as_str();
    ctx.metrics
        .notifications
        .with_label_values(&[&p.route, channel, skip.kind()])
        .inc();
    ctx.metrics.waiting.end(&p.key);
    info!(event_id = %p.event_id, event_type = %p.event_type, route = %p.route, recipient = %p.recipient, channel, key = %p.key, outcome = skip.kind(), detail = %skip, "notification not sent: the recipient is no longer entitled to it");
    Some((Outcome::Skipped, Some(update)))
}

/// A transient failure is scheduled for a later attempt (or parked when the schedule is
/// spent); a permanent one is parked.
async fn attempt_once(
    ctx: &Scope<'_>,
    mut p: Pending,
    sibling: Sibling,
) -> (Outcome, Option<Update>) {
    if let Some(ended) = no_longer_entitled(ctx, &p).await {
        return ended;
    }
    let channel = p.channel().as_str();
    let (at, started) = (Utc::now(), Instant::now());
    let (result, state) = ctx.deliverer.deliver(p.outgoing(), p.replay).await;
    let replay = std::mem::take(&mut p.replay);
    let took = started.elapsed();
    let gauge = ctx
        .metrics
        .endpoint_state
        .with_label_values(&[p.recipient.as_str(), channel]);
    // A circuit that was open and is shut again without an answer (an attempt that failed
    // without reopening it) is not a recovery: the ledger keeps it open.
    let unanswered = state == State::Closed && gauge.get() == State::Open as i64 && result.is_err();
    // Answered while the ledger says it is down (this instance restarted since, say).
    let answered =
        result.is_ok() && p.channel() == Channel::Webhook && ctx.standings.answered(&p.recipient);
    if (gauge.get() != state as i64 && !unanswered) || answered {
        let reason = match state {
            State::Disabled => {
                error!(recipient = %p.recipient, channel, "endpoint disabled after HTTP 410 Gone; its notifications are parked until a replay");
                Some("HTTP 410 Gone")
            }
            State::Open => {
                warn!(recipient = %p.recipient, channel, "endpoint keeps failing; circuit open, its notifications wait in the delay queues");
                Some("kept failing")
            }
            State::Closed => {
                info!(recipient = %p.recipient, channel, "endpoint accepting again");
                None
            }
        };
        let endpoint = EndpointRecord {
            recipient: p.recipient.clone(),
            channel: channel.to_owned(),
            state: state.as_str(),
            since: Utc::now(),
            reason: reason.map(str::to_owned),
        };
        if let Err(e) = ctx.ledger.endpoint(endpoint).await {
            error!(recipient = %p.recipient, channel, error = %e, "cannot record the endpoint's state in the ledger");
        }
    }
    // An unanswered close leaves the gauge as the ledger has it, open: the next answer is
    // then a change, and recorded.
    if !unanswered {
        gauge.set(state as i64);
    }
    ctx.metrics
        .delivery_duration
        .with_label_values(&[channel])
        .observe(took.as_secs_f64());
    p.attempts += 1;
    let failure = match result {
        Ok(()) => {
            let now = Utc::now();
            let sla = p.sla_outcome(now);
            let update = Update {
                key: p.key.clone(),
                status: Status::Delivered,
                reason: None,
                attempts: i64::from(p.attempts),
                first_failure_at: p.first_failure,
                delivered_at: Some(now),
                sla_outcome: Some(sla),
                sent_hash: sent_hash(ctx, &p),
                attempt: Some(AttemptRecord {
                    at,
                    duration: took,
                    outcome: DeliveryOutcome::Delivered.as_str(),
                    code: None,
                    breaker: state.as_str(),
                }),
            };
            delivered(ctx, &p, now);
            return (Outcome::Delivered, Some(update));
        }
        Err(f) => f,
    };
    let attempt = AttemptRecord {
        at,
        duration: took,
        outcome: failure.kind.as_str(),
        code: failure.code,
        breaker: state.as_str(),
    };
    let now = Utc::now();
    p.first_failure.get_or_insert(now);
    p.last_error = Some(failure.detail.clone());
    p.last_failure = Some(failure.kind);
    ctx.metrics
        .delivery_failures
        .with_label_values(&[channel, failure.kind.as_str()])
        .inc();
    if let Some(fallback) = contact::fallback(ctx, &ctx.core, &p, &failure, replay, sibling).await {
        return by_email(ctx, &p, &failure, fallback, attempt);
    }
    let parked = if failure.is_transient() {
        match retry::next_wait(&ctx.settings, &p, failure.retry_after, now) {
            Some(wait) => return schedule(ctx, p, &failure, attempt, wait, now).await,
            None => ParkReason::RetriesExhausted,
        }
    } else {
        ParkReason::DeliveryFailed
    };
    match park::failed_notification(
        &ctx.publisher(),
        &ctx.settings.failed_queue,
        &p,
        parked,
        &failure,
    )
    .await
    {
        Ok(()) => {
            let outcome = DeliveryOutcome::Failed;
            let update = failed_update(&p, Status::of(outcome, Some(parked)), &failure, attempt);
            ctx.metrics
                .notifications
                .with_label_values(&[&p.route, channel, outcome.as_str()])
                .inc();
            ctx.metrics.waiting.end(&p.key);
            warn!(
                event_id = %p.event_id, event_type = %p.event_type, route = %p.route, recipient = %p.recipient,
                channel, key = %p.key, attempts = p.attempts, outcome = outcome.as_str(),
                reason = parked.as_str(), failure = failure.kind.as_str(), detail = %failure.chain(),
                deadline = p.due().map(|d| d.to_rfc3339()).unwrap_or_default(),
                "delivery failed; parked"
            );
            (Outcome::Parked, Some(update))
        }
        Err(e) => {
            error!(event_id = %p.event_id, error = %e, "cannot park a failed notification; the message stays on its queue");
            (Outcome::Retry, None)
        }
    }
}

/// A webhook notification whose endpoint is down, settled by the route's email to the same
/// recipient: skipped (its webhook is never sent, now or later), its ledger row's channel
/// `email` (written after the commit) and its attempt `by-email`.
fn by_email(
    ctx: &Ctx,
    p: &Pending,
    failure: &Failure,
    fallback: Fallback,
    mut attempt: AttemptRecord,
) -> (Outcome, Option<Update>) {
    let why = match (fallback.standing, failure.kind) {
        (_, crate::deliver::FailureKind::HttpGone) => "it answered HTTP 410 Gone",
        (crate::notification::Standing::Disabled, _) => "it is disabled",
        _ => "it is unreachable",
    };
    attempt.outcome = "by-email";
    let update = Update {
        key: p.key.clone(),
        status: Status::Skipped,
        reason: Some(format!(
            "sent by email instead: the recipient's webhook is down ({why}); the route's email to the recipient is notification {}",
            fallback.email_key
        )),
        attempts: i64::from(p.attempts),
        first_failure_at: p.first_failure,
        delivered_at: None,
        sla_outcome: None,
        sent_hash: None,
        attempt: Some(attempt),
    };
    ctx.metrics
        .fallbacks
        .with_label_values(&[p.route.as_str()])
        .inc();
    ctx.metrics
        .notifications
        .with_label_values(&[&p.route, Channel::Webhook.as_str(), "by-email"])
        .inc();
    ctx.metrics.waiting.end(&p.key);
    info!(
        event_id = %p.event_id, event_type = %p.event_type, route = %p.route, recipient = %p.recipient,
        channel = Channel::Webhook.as_str(), key = %p.key, attempts = p.attempts, outcome = "by-email",
        standing = fallback.standing.as_str(), failure = failure.kind.as_str(), email_key = %fallback.email_key,
        "webhook down; the notification goes by the route's email instead"
    );
    (Outcome::ByEmail, Some(update))
}

/// Schedules the next attempt of a notification that failed transiently.
async fn schedule(
    ctx: &Scope<'_>,
    p: Pending,
    failure: &Failure,
    attempt: AttemptRecord,
    wait: Duration,
    now: chrono::DateTime<Utc>,
) -> (Outcome, Option<Update>) {
    let channel = p.channel().as_str();
    match retry::schedule(&ctx.publisher(), &ctx.settings, &p, wait).await {
        Ok(()) => {
            let outcome = DeliveryOutcome::Retrying;
            let update = failed_update(&p, Status::of(outcome, None), failure, attempt);
            ctx.metrics
                .notifications
                .with_label_values(&[&p.route, channel, outcome.as_str()])
                .inc();
            ctx.metrics
                .waiting
                .start(&p.key, &p.route, p.first_failure.unwrap_or(now), p.due());
            warn!(
                event_id = %p.event_id, event_type = %p.event_type, route = %p.route, recipient = %p.recipient,
                channel, key = %p.key, attempts = p.attempts, outcome = outcome.as_str(),
                failure = failure.kind.as_str(), detail = %failure.chain(),
                retry_in_secs = wait.as_secs(),
                deadline = p.due().map(|d| d.to_rfc3339()).unwrap_or_default(),
                "delivery failed; retry scheduled"
            );
            (Outcome::Scheduled, Some(update))
        }
        Err(e) => {
            error!(event_id = %p.event_id, error = %e, "cannot schedule a retry; the message stays on its queue");
            (Outcome::Retry, None)
        }
    }
}

/// The ledger's update for a notification that failed this time.
fn failed_update(p: &Pending, status: Status, failure: &Failure, attempt: AttemptRecord) -> Update {
    Update {
        key: p.key.clone(),
        status,
        reason: Some(failure.detail.clone()),
        attempts: i64::from(p.attempts),
        first_failure_at: p.first_failure,
        delivered_at: None,
        sla_outcome: None,
        sent_hash: None,
        attempt: Some(attempt),
    }
}

fn delivered(ctx: &Scope<'_>, p: &Pending, now: DateTime<Utc>) {
    let route = p.route.as_str();
    let channel = p.channel().as_str();
    ctx.metrics
        .notifications
        .with_label_values(&[route, channel, DeliveryOutcome::Delivered.as_str()])
        .inc();
    let latency = (now - p.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
    ctx.metrics
        .notification_latency
        .with_label_values(&[route])
        .observe(latency);
    // Only a notification that has failed before can be waiting for a retry.
    if p.first_failure.is_some() {
        ctx.metrics.waiting.end(&p.key);
    }
    let (outcome, due) = (p.sla_outcome(now), p.due());
    ctx.metrics
        .sla_outcomes
        .with_label_values(&[route, outcome])
        .inc();
    info!(
        event_id = %p.event_id,
        event_type = %p.event_type,
        route,
        recipient = %p.recipient,
        channel,
        key = %p.key,
        attempts = p.attempts,
        outcome = DeliveryOutcome::Delivered.as_str(),
        sla = outcome,
        deadline = due.map(|d| d.to_rfc3339()).unwrap_or_default(),
        "notification delivered"
    );
}

/// Acknowledges a handled event, or returns it to the queue after a pause so a failing
/// recipient is not hammered.
async fn settle(delivery: &Delivery, done: bool) {
    let result = if done {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
    };
    if let Err(e) = result {
        // The broker returns an unacknowledged message to the queue when the channel closes.
        warn!(error = %e, "cannot settle a delivery; the broker will redeliver it");
    }
}

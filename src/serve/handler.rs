//! One event from the queue: check who sent it, validate, route, deliver every notification
//! concurrently, park what cannot be delivered, and only then acknowledge.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{error, info, warn};

use super::{Ctx, park};
use crate::deliver::Failure;
use crate::event::{Event, EventId};
use crate::intake::{Reason, Rejection};
use crate::notification::{Notification, Sla};

/// Attempts within one handling before the event goes back to the queue.
const ATTEMPTS: u32 = 3;

/// How one notification ended in this handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Permanently failed and parked.
    Parked,
    /// Still failing transiently, or could not be parked: the event must come back.
    Retry,
}

pub async fn handle(ctx: &Ctx, delivery: Delivery) {
    let label = ctx
        .core
        .intake
        .schemas()
        .event_type(delivery.routing_key.as_str())
        .map_or("unknown", |t| t.as_str())
        .to_owned();
    match check(ctx, &delivery) {
        Err(rejection) => {
            ctx.metrics
                .events_received
                .with_label_values(&[&label])
                .inc();
            ctx.metrics
                .events_rejected
                .with_label_values(&[rejection.reason.as_str()])
                .inc();
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string());
            warn!(
                message_id = message_id.as_deref().unwrap_or(""),
                routing_key = %delivery.routing_key,
                reason = rejection.reason.as_str(),
                detail = %rejection.detail,
                "event rejected"
            );
            match park::reject(
                &ctx.publisher,
                &ctx.settings.rejected_queue,
                &delivery,
                &rejection,
            )
            .await
            {
                Ok(()) => settle(&delivery, true).await,
                Err(e) => {
                    error!(error = %e, "cannot park a rejected event; it stays on the queue");
                    settle(&delivery, false).await;
                }
            }
        }
        Ok(event) => {
            ctx.metrics
                .events_received
                .with_label_values(&[event.event_type.as_str()])
                .inc();
            let done = route_and_deliver(ctx, &event).await;
            settle(&delivery, done).await;
        }
    }
}

/// The message's own checks: an id, a publisher the broker vouched for and who may send this
/// type, and a valid event.
fn check(ctx: &Ctx, delivery: &Delivery) -> Result<Event, Rejection> {
    let props = &delivery.properties;
    let Some(id) = props.message_id() else {
        return Err(Rejection::new(
            Reason::MissingMessageId,
            "the message has no message_id property; give every event a unique id so a redelivery is recognised",
        ));
    };
    let Some(user) = props.user_id() else {
        return Err(Rejection::new(
            Reason::UnauthorisedPublisher,
            "the message has no user_id property, so the broker has not vouched for its publisher",
        ));
    };
    let event = ctx
        .core
        .intake
        .accept(&delivery.data, EventId::new(id.as_str()))?;
    if !ctx
        .core
        .publishers
        .allows(user.as_str(), event.event_type.as_str())
    {
        return Err(Rejection::new(
            Reason::UnauthorisedPublisher,
            format!("user {user} may not publish {}", event.event_type),
        ));
    }
    Ok(event)
}

/// Routes and delivers; true when everything is delivered or parked.
async fn route_and_deliver(ctx: &Ctx, event: &Event) -> bool {
    let routing = ctx.core.engine.route(event);
    info!(
        event_id = %event.id,
        event_type = %event.event_type,
        routes = routing.matched_routes.len(),
        notifications = routing.notifications.len(),
        problems = routing.problems.len(),
        "event routed"
    );
    let mut done = true;
    for p in &routing.problems {
        ctx.metrics
            .notifications
            .with_label_values(&[p.route(), "none", p.kind()])
            .inc();
        warn!(event_id = %event.id, event_type = %event.event_type, route = p.route(), outcome = p.kind(), detail = %p, "notification not made");
        if let Err(e) = park::problem(&ctx.publisher, &ctx.settings.failed_queue, event, p).await {
            error!(event_id = %event.id, error = %e, "cannot park a routing problem; the event stays on the queue");
            done = false;
        }
    }
    let outcomes = join_all(routing.notifications.iter().map(|n| deliver(ctx, n, event))).await;
    done && outcomes.iter().all(|o| *o != Outcome::Retry)
}

async fn deliver(ctx: &Ctx, n: &Notification, event: &Event) -> Outcome {
    let channel = n.channel.as_str();
    let mut attempt = 0;
    let failure = loop {
        attempt += 1;
        let started = Instant::now();
        let result = ctx.deliverer.deliver(n).await;
        ctx.metrics
            .delivery_duration
            .with_label_values(&[channel])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                delivered(ctx, n, event);
                return Outcome::Delivered;
            }
            Err(f @ Failure::Transient { .. }) if attempt < ATTEMPTS => {
                let wait = match &f {
                    Failure::Transient {
                        retry_after: Some(after),
                        ..
                    } => (*after).min(Duration::from_secs(30)),
                    _ => Duration::from_secs(1 << (attempt - 1)),
                };
                warn!(event_id = %event.id, route = %n.route, recipient = %n.recipient.id, channel, attempt, reason = f.reason(), "delivery failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(f) => break f,
        }
    };
    if failure.is_transient() {
        ctx.metrics
            .notifications
            .with_label_values(&[&n.route, channel, "retrying"])
            .inc();
        warn!(event_id = %event.id, route = %n.route, recipient = %n.recipient.id, channel, attempts = attempt, reason = failure.reason(), "delivery failing; the event goes back to the queue");
        return Outcome::Retry;
    }
    ctx.metrics
        .notifications
        .with_label_values(&[&n.route, channel, "failed"])
        .inc();
    warn!(event_id = %event.id, route = %n.route, recipient = %n.recipient.id, channel, reason = failure.reason(), "delivery failed permanently; parked");
    match park::failed_notification(
        &ctx.publisher,
        &ctx.settings.failed_queue,
        n,
        "delivery-failed",
        failure.reason(),
        attempt,
    )
    .await
    {
        Ok(()) => Outcome::Parked,
        Err(e) => {
            error!(event_id = %event.id, error = %e, "cannot park a failed notification; the event stays on the queue");
            Outcome::Retry
        }
    }
}

fn delivered(ctx: &Ctx, n: &Notification, event: &Event) {
    let now = Utc::now();
    let route = &*n.route;
    ctx.metrics
        .notifications
        .with_label_values(&[route, n.channel.as_str(), "delivered"])
        .inc();
    let latency = (now - event.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
    ctx.metrics
        .notification_latency
        .with_label_values(&[route])
        .observe(latency);
    let (outcome, due) = match &n.sla {
        Sla::Due { deadline, .. } if deadline.short_notice => ("short_notice", Some(deadline.due)),
        Sla::Due { deadline, .. } if now <= deadline.due => ("met", Some(deadline.due)),
        Sla::Due { deadline, .. } => ("breached", Some(deadline.due)),
        Sla::Untracked | Sla::Unknown { .. } => ("untracked", None),
    };
    ctx.metrics
        .sla_outcomes
        .with_label_values(&[route, outcome])
        .inc();
    info!(
        event_id = %event.id,
        event_type = %event.event_type,
        route,
        recipient = %n.recipient.id,
        channel = n.channel.as_str(),
        key = %n.key,
        outcome = "delivered",
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

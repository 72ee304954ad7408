//! Durable retries. A notification that fails transiently is published, with its attempt count
//! and first-failure time, to a delay queue: one queue per distinct wait in the schedule, each
//! with a fixed message TTL that dead-letters into the deliveries queue Herald consumes. Each
//! retry is a new message (never the same one cycling through dead-lettering, which the broker
//! would drop). The event it came from is acknowledged once the retry is confirmed, so one
//! failing recipient delays no one else.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};

use super::Settings;
use super::confirm::{PublishError, publish};
use super::topology::{dead_letter_to, declare_or_keep, quorum};
use crate::deliver::Outgoing;
use crate::event::Event;
use crate::notification::{Channel as Medium, Content, Priority, Sla};
use crate::render::Notification;
use crate::route::{Directory, RecipientClass};
use crate::sla::format_span;

/// A notification on its way: everything a later attempt needs, carried by the retry message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub key: String,
    pub event_id: String,
    pub event_type: String,
    /// The login that published the event, for the log's event span.
    #[serde(default)]
    pub publisher: Option<String>,
    pub route: String,
    pub recipient: String,
    pub occurred_at: DateTime<Utc>,
    /// When the publisher says it published the event: a deadline already past then is the
    /// publisher's lateness, not Herald's.
    #[serde(default)]
    pub published_at: Option<DateTime<Utc>>,
    pub sla: Sla,
    /// Urgent notifications have their own lane to each endpoint.
    #[serde(default)]
    pub priority: Priority,
    pub content: Content,
    /// Attempts made so far.
    pub attempts: u32,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The kind of the last failure, for the parked record and the ledger.
    #[serde(default)]
    pub last_failure: Option<crate::deliver::FailureKind>,
    /// Sent again by an operator (`herald dlq replay`): the endpoint is given another chance
    /// even if it was disabled or its circuit is open.
    #[serde(default)]
    pub replay: bool,
    /// The person's identifiers (`NOMS:A1234BC`), kept for a legal representative only: its
    /// authority is checked again before every later attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persons: Vec<String>,
}

/// Why a parked notification cannot be sent again to its recipient as configured now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unaddressable {
    #[error(
        "{0} is no longer in the directory; put it back in routes.toml, or purge this notification"
    )]
    Gone(String),
    #[error("{0} no longer has a webhook in routes.toml")]
    NoWebhook(String),
    #[error("{0} no longer has an email address in routes.toml")]
    NoEmail(String),
}

impl Pending {
    /// Takes the notification's parts rather than copying them: its content (a rendered
    /// body) is the largest thing Herald handles per event.
    pub fn new(n: Notification, event: &Event) -> Pending {
        Pending {
            key: n.key.into_string(),
            event_id: event.id.to_string(),
            event_type: event.event_type.to_string(),
            publisher: event.id.publisher().map(str::to_owned),
            route: n.route.to_string(),
            recipient: n.recipient.id.to_string(),
            occurred_at: event.occurred_at,
            published_at: Some(event.published_at),
            sla: n.sla,
            priority: n.priority,
            content: n.content,
            attempts: 0,
            first_failure: None,
            last_error: None,
            last_failure: None,
            replay: false,
            persons: if n.recipient.class == RecipientClass::LegalRep {
                event
                    .identifiers()
                    .map(|(t, v)| format!("{t}:{v}"))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Points the notification at its recipient's addresses in `directory` (the current
    /// configuration), keeping everything else, its key first: a replay after an operator
    /// corrected a URL or an email address goes to the corrected one. Whether an address
    /// changed, or why the notification cannot go at all.
    pub fn readdress(&mut self, directory: &Directory) -> Result<bool, Unaddressable> {
        let recipient = directory
            .get(&self.recipient)
            .ok_or_else(|| Unaddressable::Gone(self.recipient.clone()))?;
        match &mut self.content {
            Content::Webhook { url, .. } => {
                let current = recipient
                    .webhook
                    .as_ref()
                    .map(|w| &w.url)
                    .ok_or_else(|| Unaddressable::NoWebhook(self.recipient.clone()))?;
                let changed = url != current;
                url.clone_from(current);
                Ok(changed)
            }
            Content::Email { to, .. } => {
                if recipient.email.is_empty() {
                    return Err(Unaddressable::NoEmail(self.recipient.clone()));
                }
                let changed = *to != recipient.email;
                to.clone_from(&recipient.email);
                Ok(changed)
            }
        }
    }

    pub fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            key: &self.key,
            recipient: &self.recipient,
            content: &self.content,
            urgent: self.priority == Priority::Urgent,
        }
    }

    pub fn channel(&self) -> Medium {
        self.content.channel()
    }

    /// The deadline, when the notification has one.
    pub fn due(&self) -> Option<DateTime<Utc>> {
        match &self.sla {
            Sla::Due { deadline, .. } => Some(deadline.due),
            Sla::Untracked | Sla::Unknown { .. } => None,
        }
    }

    /// How a delivery at `now` stands against the deadline. Short notice is the brief's own
    /// outcome; a deadline that had already passed when the publisher published the event is
    /// the publisher's lateness (`late_on_arrival`), not a breach of Herald's.
    pub fn sla_outcome(&self, now: DateTime<Utc>) -> &'static str {
        match &self.sla {
            Sla::Due { deadline, .. } if deadline.short_notice => "short_notice",
            Sla::Due { deadline, .. } if now <= deadline.due => "met",
            Sla::Due { deadline, .. } if self.published_at.is_some_and(|at| at > deadline.due) => {
                "late_on_arrival"
            }
            Sla::Due { .. } => "breached",
            Sla::Untracked | Sla::Unknown { .. } => "untracked",
        }
    }
}

/// The deliveries queue: where due retries arrive.
pub fn deliveries_queue(s: &Settings) -> String {
    format!("{}.deliveries", s.queue)
}

/// The delay queue for one wait.
pub fn delay_queue(s: &Settings, wait: Duration) -> String {
    format!("{}.retry.{}", s.queue, format_span(wait))
}

/// Every queue name the retries use, for tests and operators.
pub fn queues(s: &Settings) -> Vec<String> {
    let mut names = vec![deliveries_queue(s)];
    for wait in &s.retry_schedule {
        let name = delay_queue(s, *wait);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Declares the deliveries queue and one delay queue per distinct wait. Dead-lettering is
/// at-least-once (quorum queues, `reject-publish` overflow), so a due retry is never dropped.
/// A due retry that keeps coming back
/// (Herald could neither deliver, reschedule nor park it) is dead-lettered to the failed queue
/// after `amqp.delivery_limit` deliveries, where an operator sees it, rather than dropped by
/// the broker's own default limit (RabbitMQ 4: 20).
pub async fn declare(connection: &Connection, s: &Settings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let deliveries = deliveries_queue(s);
    let mut args = vec![(
        "x-delivery-limit",
        AMQPValue::LongInt(i32::from(s.delivery_limit)),
    )];
    args.extend(dead_letter_to(&s.failed_queue));
    let channel = connection.create_channel().await?;
    let channel =
        declare_or_keep(connection, channel, &deliveries, quorum(s.replicas, &args)).await?;
    for wait in &s.retry_schedule {
        let ttl = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let mut args = vec![("x-message-ttl", AMQPValue::LongLongInt(ttl))];
        args.extend(dead_letter_to(&deliveries));
        let args = quorum(s.replicas, &args);
        channel
            .queue_declare(delay_queue(s, *wait).as_str().into(), durable, args)
            .await?;
    }
    let _ = channel.close(200, "retry queues declared".into()).await;
    Ok(())
}

/// The wait before the next attempt, or `None` when the schedule or the maximum age is spent.
/// A receiver's `Retry-After` moves the retry to the first wait at least that long.
pub fn next_wait(
    s: &Settings,
    p: &Pending,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let index = usize::try_from(p.attempts).ok()?.checked_sub(1)?;
    let mut wait = *s.retry_schedule.get(index)?;
    if let Some(after) = retry_after {
        wait = s.retry_schedule[index..]
            .iter()
            .copied()
            .find(|w| *w >= after)
            .unwrap_or_else(|| s.retry_schedule.iter().copied().max().unwrap_or(wait));
    }
    let first = p.first_failure.unwrap_or(now);
    let age = (now - first).to_std().unwrap_or_default();
    (age + wait <= s.retry_max_age).then_some(wait)
}

/// The share of a wait that jitter may take off it.
const JITTER: f64 = 0.2;

/// The wait shortened by up to a fifth, by an amount drawn from the notification's key and
/// attempt count: notifications that failed together (an endpoint that went down) come back
/// spread over the last fifth of the wait, not all at once, and the same attempt of the same
/// notification always gets the same wait.
pub fn jittered(wait: Duration, key: &str, attempts: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, attempts).hash(&mut h);
    // The top 53 bits make a uniform fraction in [0, 1).
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    wait.mul_f64(1.0 - JITTER * fraction)
}

/// Publishes the pending notification to the delay queue for `wait` and waits for the confirm.
/// The message's own expiration is the jittered wait; the queue's TTL (the whole wait) bounds
/// it, so a message behind a later-expiring one still leaves by the end of the wait.
pub async fn schedule(
    channel: &Channel,
    s: &Settings,
    p: &Pending,
    wait: Duration,
) -> Result<(), PublishError> {
    let expiration = jittered(wait, &p.key, p.attempts).as_millis().to_string();
    enqueue_with(channel, &delay_queue(s, wait), p, Some(expiration)).await
}

/// Publishes a pending notification to a queue (a delay queue, or the deliveries queue for an
/// attempt now) and waits for the confirm.
pub async fn enqueue(channel: &Channel, queue: &str, p: &Pending) -> Result<(), PublishError> {
    enqueue_with(channel, queue, p, None).await
}

async fn enqueue_with(
    channel: &Channel,
    queue: &str,
    p: &Pending,
    expiration: Option<String>,
) -> Result<(), PublishError> {
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-herald-attempts".into(),
        AMQPValue::LongLongInt(i64::from(p.attempts)),
    );
    if let Some(first) = p.first_failure {
        headers.insert(
            "x-herald-first-failure".into(),
            AMQPValue::LongString(LongString::from(first.to_rfc3339())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Ok(id) = ShortString::try_new(p.key.clone()) {
        properties = properties.with_message_id(id);
    }
    if let Some(expiration) = expiration.and_then(|e| ShortString::try_new(e).ok()) {
        properties = properties.with_expiration(expiration);
    }
    publish(channel, queue, &body, properties).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(schedule: &[u64], max_age: u64) -> Settings {
        let config = crate::config::Config::parse("").unwrap();
        let mut s = Settings::new(&config, |_| None);
        s.retry_schedule = schedule.iter().map(|n| Duration::from_secs(*n)).collect();
        s.retry_max_age = Duration::from_secs(max_age);
        s
    }

    fn pending(attempts: u32, failed_secs_ago: i64, now: DateTime<Utc>) -> Pending {
        Pending {
            key: "msg_1".into(),
            event_id: "e".into(),
            event_type: "t".into(),
            publisher: None,
            route: "r".into(),
            recipient: "police:X".into(),
            occurred_at: now,
            published_at: Some(now),
            sla: Sla::Untracked,
            priority: Priority::Routine,
            content: Content::Webhook {
                url: "https://x.example".into(),
                body: "{}".into(),
            },
            attempts,
            first_failure: Some(now - chrono::Duration::seconds(failed_secs_ago)),
            last_error: None,
            last_failure: None,
            replay: false,
            persons: Vec::new(),
        }
    }

    #[test]
    fn waits_follow_the_schedule_then_stop() {
        let s = settings(&[5, 300, 1800], 86_400);
        let now = Utc::now();
        assert_eq!(
            next_wait(&s, &pending(1, 0, now), None, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            next_wait(&s, &pending(3, 400, now), None, now),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            next_wait(&s, &pending(4, 2500, now), None, now),
            None,
            "schedule spent"
        );
    }

    #[test]
    fn retry_after_and_maximum_age_are_honoured() {
        let s = settings(&[5, 300, 1800], 86_400);
        let now = Utc::now();
        let after = |secs| Some(Duration::from_secs(secs));
        assert_eq!(
            next_wait(&s, &pending(1, 0, now), after(120), now),
            after(300)
        );
        assert_eq!(
            next_wait(&s, &pending(1, 0, now), after(7200), now),
            after(1800),
            "the longest wait there is"
        );
        let s = settings(&[5, 300, 1800], 1000);
        assert_eq!(
            next_wait(&s, &pending(2, 800, now), None, now),
            None,
            "800 s + 300 s is past the maximum age"
        );
        assert_eq!(next_wait(&s, &pending(2, 600, now), None, now), after(300));
    }

    #[test]
    fn each_delivery_ends_as_exactly_one_outcome() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let due_in = |offset: chrono::Duration, short_notice: bool, published: DateTime<Utc>| {
            let mut p = pending(0, 0, now);
            p.published_at = Some(published);
            p.sla = Sla::Due {
                rule: "within 24h".into(),
                deadline: crate::sla::Deadline {
                    due: now + offset,
                    short_notice,
                },
            };
            p.sla_outcome(now)
        };
        assert_eq!(due_in(hour, false, now - hour), "met");
        assert_eq!(due_in(-hour, false, now - hour * 2), "breached");
        assert_eq!(due_in(-hour * 2, false, now - hour), "late_on_arrival");
        assert_eq!(due_in(-hour, true, now - hour * 2), "short_notice");
        assert_eq!(pending(0, 0, now).sla_outcome(now), "untracked");
    }

    #[test]
    fn jitter_takes_at_most_a_fifth_and_spreads_notifications() {
        let wait = Duration::from_secs(300);
        let waits: Vec<Duration> = (0..200)
            .map(|i| jittered(wait, &format!("msg_{i:032x}"), 1))
            .collect();
        assert!(waits.iter().all(|w| *w <= wait && *w >= wait.mul_f64(0.8)));
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(50), "{min:?}..{max:?}");
        // The same attempt of the same notification always waits the same.
        assert_eq!(jittered(wait, "msg_a", 2), jittered(wait, "msg_a", 2));
    }

    #[test]
    fn one_delay_queue_per_distinct_wait() {
        let s = settings(&[5, 300, 36_000, 36_000], 86_400);
        assert_eq!(
            queues(&s),
            [
                "herald.events.deliveries",
                "herald.events.retry.5s",
                "herald.events.retry.5m",
                "herald.events.retry.10h"
            ]
        );
    }
}

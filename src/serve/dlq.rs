//! The parking queues as an operator works them, from `herald dlq` and the console alike:
//! what is parked and why, a message in full, sending it again once the cause is fixed, and
//! deleting it.
//!
//! Replaying a failed notification puts it on the deliveries queue with a fresh attempt budget
//! and the same idempotency key. Replaying a rejected event, or a notification the engine could
//! not make, runs the event through the current configuration again (with the publisher
//! Herald recorded) and queues the notifications it gives; what still fails stays parked.
//!
//! Every kind of message in the two queues is read into one [`Record`] with the same fields:
//! events Herald refused, notifications it could not deliver, notifications the engine could
//! not make, retries it could not read, and what the broker dead-lettered on its own (an event
//! past the events queue's delivery limit, which carries only the broker's `x-death`).

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::{Value, json};

use super::park::{ParkedRecord, header_json, header_text, value_text};
use super::retry::{self, Pending};
use super::rows;
use super::{AMQP_PASSWORD_IN, Settings, broker};
use crate::core::Core;
use crate::event::{Event, EventId};
use crate::intake::{Message, Rejection};
use crate::ledger::read::ParkedFilter;
use crate::ledger::{EventOutcome, Ledger, LedgerError, Status, Store};
use crate::notification::Problem;
use crate::route::authority::Change;

/// Which parking queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Rejected,
    Failed,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Rejected => "rejected",
            Which::Failed => "failed",
        }
    }
}
fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

/// Takes up to `limit` messages without acknowledging them.
async fn fetch(ch: &Channel, queue: &str, limit: usize) -> Result<Vec<Delivery>, String> {
    let mut out = Vec::new();
    while out.len() < limit {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| format!("{queue}: {e}"))?
        {
            Some(m) => out.push(m.delivery),
            None => break,
        }
    }
    Ok(out)
}

/// Puts messages back, untouched.
async fn release(messages: &[Delivery]) {
    for m in messages {
        let _ = m.nack(requeue()).await;
    }
}

/// How many messages are ready on a queue, by a passive declare on a channel of its own (a
/// passive declare of a missing queue closes its channel).
// String error: one line for the operator, printed before exit status 1.
async fn depth(connection: &Connection, queue: &str) -> Result<u32, String> {
    let ch = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(|e| format!("{queue}: {e} (herald serve declares it when it starts)"))?;
    let _ = ch.close(200, "counted".into()).await;
    Ok(declared.message_count())
}

/// One parked message as an operator reads it, whatever wrote it. The names are stable:
/// `herald dlq list --json` prints one of these per line.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Its identity, the same however often it is looked at or wherever it moves in the
    /// queue (looking puts a message back at the end): `show`, `replay` and `purge` take it.
    pub id: String,
    /// `rejected` (an event Herald refused), `notification` (one it could not deliver),
    /// `problem` (one the engine could not make), `unreadable` (a retry it could not read),
    /// `delivery-limit` (an event the broker dead-lettered), or `unexplained`.
    pub kind: &'static str,
    /// RFC 3339, to the second.
    pub parked_at: Option<String>,
    pub reason: String,
    pub route: Option<String>,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    pub attempts: Option<u64>,
    /// The event's id (its AMQP message_id as published).
    pub event_id: Option<String>,
    /// The parked message's own message_id (for a notification, its idempotency key).
    pub message_id: Option<String>,
    pub event_type: Option<String>,
    /// The login that published the event, as the broker vouched for it.
    pub publisher: Option<String>,
    pub detail: Option<String>,
}

impl Record {
    /// Reads a message from either queue. Nothing in it is trusted to be well formed: the
    /// queues hold whatever was put there. Herald's JSON records are looked for only in the
    /// failed queue: the body of a refused event is whatever its publisher sent.
    pub fn read(
        which: Which,
        settings: &Settings,
        properties: &BasicProperties,
        data: &[u8],
    ) -> Record {
        let headers = properties.headers();
        let h = |name: &str| header_text(headers, name).filter(|s| !s.is_empty());
        let body: Value = serde_json::from_slice(data).unwrap_or_default();
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let herald_reason = h("x-herald-reason");
        let mut r = Record {
            id: parked_id(which, properties, data),
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            // Herald's header names the publisher of what Herald parked (it drops any header
            // of that name a publisher set); otherwise only the broker's word counts.
            publisher: if herald_reason.is_some() {
                h("x-herald-original-user-id")
            } else {
                properties.user_id().as_ref().map(|u| u.to_string())
            },
            ..Record::default()
        };
        let record = match which {
            Which::Failed if herald_reason.is_some() => ParkedRecord::read(data),
            _ => None,
        };
        match record {
            Some(ParkedRecord::Notification(parked)) => {
                let n = &parked.notification;
                r.kind = "notification";
                r.reason = parked.reason.as_str().to_owned();
                r.detail = Some(parked.detail.clone()).filter(|d| !d.is_empty());
                r.parked_at = Some(parked.parked_at.to_rfc3339());
                r.attempts = Some(u64::from(parked.attempts));
                r.channel = Some(parked.channel.as_str().to_owned());
                r.route = Some(n.route.clone());
                r.recipient = Some(n.recipient.clone());
                r.event_id = Some(n.event_id.clone());
                r.event_type = Some(n.event_type.clone());
            }
            Some(ParkedRecord::Problem(parked)) => {
                r.kind = "problem";
                r.reason = parked.reason.clone();
                r.detail = Some(parked.detail.clone()).filter(|d| !d.is_empty());
                r.parked_at = Some(parked.parked_at.to_rfc3339());
                // What the route named: a recipient, or the pattern or class that found none.
                let (route, named, channel) = match &parked.problem {
                    Problem::UnknownRecipient { route, pattern, .. } => (route, pattern, None),
                    Problem::NoRecipients { route, selector } => (route, selector, None),
                    Problem::NoChannel { route, recipient } => (route, recipient, None),
                    Problem::RenderFailed {
                        route,
                        recipient,
                        channel,
                        ..
                    } => (route, recipient, Some(channel.as_str().to_owned())),
                };
                r.route = Some(route.clone());
                r.recipient = Some(named.clone());
                r.channel = channel;
                r.event_id = Some(parked.event_id.clone());
                r.event_type = Some(parked.event_type.clone());
                if parked.publisher.is_some() {
                    r.publisher = parked.publisher.clone();
                }
            }
            _ => match herald_reason {
                Some(reason) => {
                    r.kind = match (which, reason.as_str()) {
                        (Which::Rejected, _) => "rejected",
                        (Which::Failed, "unreadable") => "unreadable",
                        (Which::Failed, _) => "notification",
                    };
                    r.reason = reason;
                    r.detail = h("x-herald-detail");
                    r.parked_at = h("x-herald-rejected-at").or_else(|| h("x-herald-parked-at"));
                    r.route = h("x-herald-route").or_else(|| text(&body["route"]));
                    r.recipient = h("x-herald-recipient").or_else(|| text(&body["recipient"]));
                    r.channel = h("x-herald-channel");
                    r.attempts = header_u64(headers, "x-herald-attempts")
                        .or_else(|| body["attempts"].as_u64());
                    r.event_type =
                        h("x-herald-original-routing-key").or_else(|| text(&body["eventType"]));
                    if r.kind == "rejected" {
                        // A refused event keeps the id it was published with.
                        r.event_id = r.message_id.clone();
                    } else {
                        // A retry Herald could not read may still say what it was.
                        r.event_id = text(&body["eventId"]);
                        r.message_id = text(&body["key"]).or(r.message_id);
                    }
                }
                None => r.explain_broker(settings, headers, &body),
            },
        }
        r.parked_at = r.parked_at.map(|at| instant(&at));
        if r.event_type.is_none() {
            r.event_type = text(&body["eventType"]);
        }
        r
    }

    /// A message Herald did not park: what the broker's `x-death` says, or else which
    /// headers it has.
    fn explain_broker(&mut self, settings: &Settings, headers: &Option<FieldTable>, body: &Value) {
        let deaths = headers
            .as_ref()
            .and_then(|h| h.inner().get("x-death"))
            .map(header_json)
            .unwrap_or_default();
        let deaths = deaths.as_array().cloned().unwrap_or_default();
        let field = |d: &Value, k: &str| d[k].as_str().map(str::to_owned);
        self.event_id = self.message_id.clone();
        let limit = deaths.iter().find(|d| d["reason"] == "delivery_limit");
        if let Some(death) = limit {
            let queue = field(death, "queue").unwrap_or_else(|| "its queue".into());
            // A quorum queue dead-letters an event returned more often than its limit.
            let deliveries = if queue == settings.queue {
                format!("{} deliveries", u32::from(settings.delivery_limit) + 1)
            } else {
                "more deliveries than its delivery limit".into()
            };
            let id = self
                .event_id
                .as_deref()
                .map_or_else(|| "its event id".into(), |id| format!("event id {id}"));
            let mut detail = format!(
                "the broker dead-lettered it from {queue} after {deliveries}: Herald never \
                 finished handling it (see Herald's log for {id})"
            );
            if let Some(n) = death["count"].as_u64().filter(|n| *n > 1) {
                detail.push_str(&format!("; dead-lettered {n} times"));
            }
            self.kind = "delivery-limit";
            self.reason = "delivery-limit".into();
            self.parked_at = field(death, "time");
            self.detail = Some(detail);
            return;
        }
        let names: Vec<String> = headers
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        let mut detail = "Herald did not park it (it has no x-herald-reason)".to_owned();
        if let Some(death) = deaths.first() {
            detail.push_str(&format!(
                "; the broker dead-lettered it from {} ({})",
                field(death, "queue").unwrap_or_else(|| "-".into()),
                field(death, "reason").unwrap_or_else(|| "-".into())
            ));
            self.parked_at = field(death, "time");
        }
        if names.is_empty() {
            detail.push_str("; it has no headers");
        } else {
            detail.push_str(&format!("; headers: {}", names.join(", ")));
        }
        if !body.is_object() {
            detail.push_str("; the body is not a JSON object");
        }
        self.kind = "unexplained";
        self.reason = "unexplained".into();
        self.detail = Some(detail);
    }

    /// Whether `name` names this record: its id, its message_id or its event's id.
    pub fn is(&self, name: &str) -> bool {
        self.id == name
            || self.message_id.as_deref() == Some(name)
            || self.event_id.as_deref() == Some(name)
    }

    /// What it is, in a few words, for a dry run.
    pub fn summary(&self) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        match self.kind {
            "rejected" | "delivery-limit" | "unexplained" => format!(
                "{} event {} ({})",
                self.kind,
                or_dash(&self.event_id),
                or_dash(&self.event_type)
            ),
            _ => format!(
                "{} {} -> {} by {} ({}), event {}",
                self.kind,
                or_dash(&self.route),
                or_dash(&self.recipient),
                or_dash(&self.channel),
                self.reason,
                or_dash(&self.event_id)
            ),
        }
    }

    /// The columns of `list`, in order, with `-` for what is missing.
    pub fn cells(&self) -> [String; 11] {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        [
            self.id.clone(),
            or_dash(&self.parked_at),
            self.reason.clone(),
            or_dash(&self.route),
            or_dash(&self.recipient),
            or_dash(&self.channel),
            self.attempts.map_or_else(|| "-".into(), |n| n.to_string()),
            or_dash(&self.event_id.clone().or_else(|| self.message_id.clone())),
            or_dash(&self.event_type),
            or_dash(&self.publisher),
            or_dash(&self.detail),
        ]
    }
}

/// The names of [`Record::cells`], in order.
pub const COLUMNS: [&str; 11] = [
    "ID",
    "PARKED AT",
    "REASON",
    "ROUTE",
    "RECIPIENT",
    "CHANNEL",
    "ATTEMPTS",
    "EVENT ID",
    "EVENT TYPE",
    "PUBLISHER",
    "DETAIL",
];

/// A parked message's identity: `p-` and 16 hex digits of a digest of the queue, its
/// message_id and its body. The same at every look; different for two parked messages unless
/// they are copies of one (the same id and bytes), which are replayed or purged together.
fn parked_id(which: Which, properties: &BasicProperties, data: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let id = properties.message_id().as_ref().map_or("", |m| m.as_str());
    for part in [format!("{which:?}").as_bytes(), id.as_bytes(), data] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!("p-{}", hex::encode(&h.finalize()[..8]))
}

/// An instant as RFC 3339 to the second, in UTC; text that is not one is kept as it is.
fn instant(text: &str) -> String {
    DateTime::parse_from_rfc3339(text).map_or_else(
        |_| text.to_owned(),
        |at| {
            at.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        },
    )
}

fn header_u64(headers: &Option<FieldTable>, name: &str) -> Option<u64> {
    headers
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .map(header_json)
        .and_then(|v| v.as_u64())
}

/// The properties an operator may want, by their AMQP names.
pub fn property_list(p: &BasicProperties) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let mut add = |name, value: Option<Value>| {
        if let Some(v) = value {
            out.push((name, v));
        }
    };
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|v| json!(v.as_str()));
    add("message_id", s(p.message_id()));
    add("user_id", s(p.user_id()));
    add("content_type", s(p.content_type()));
    add("content_encoding", s(p.content_encoding()));
    add("correlation_id", s(p.correlation_id()));
    add("type", s(p.kind()));
    add("app_id", s(p.app_id()));
    add(
        "timestamp",
        p.timestamp().map(|t| header_json(&AMQPValue::Timestamp(t))),
    );
    add("delivery_mode", p.delivery_mode().map(|m| json!(m)));
    out
}

/// The headers, sorted by name, as JSON values.
pub fn header_list(p: &BasicProperties) -> Vec<(String, Value)> {
    p.headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a replay did with a parked message (which then leaves the queue).
enum Replayed {
    /// Its notifications were queued (how many), with what the operator should know (sent
    /// to a new address) and a warning if the ledger missed it.
    Queued(usize, Vec<String>, Option<String>),
    /// Nothing was sent: the ledger shows it done (why).
    Stale(String),
}

/// The ledger, where each replay is recorded, and who is replaying (`cli:` and a login, or
/// `console:` and the console's user).
pub struct Books {
    pub store: Store,
    ledger: Ledger,
    pub actor: String,
}

impl Books {
    pub fn new(store: Store, actor: String, metrics: crate::metrics::Metrics) -> Books {
        Books {
            ledger: Ledger::start(store.clone(), metrics),
            store,
            actor,
        }
    }

    /// The same ledger, another actor.
    pub fn acting(&self, actor: String) -> Books {
        Books {
            store: self.store.clone(),
            ledger: self.ledger.clone(),
            actor,
        }
    }
}

/// The parked messages the ledger picked by time, route and recipient.
pub struct Picked {
    /// Notifications, by idempotency key.
    keys: HashSet<String>,
    /// Notifications that could not be made, by their event's id and route.
    unmade: HashSet<(String, String)>,
    /// Rejected events, by publisher and message_id.
    events: HashSet<(String, String)>,
    /// How many the ledger found.
    pub count: usize,
}

/// Which parked messages to act on.
pub enum Pick {
    /// Those whose id (as [`Record::id`]), message_id or event id is one of these.
    Ids(Vec<String>),
    /// Those whose own id ([`Record::id`]) is one of these, and no other: a message_id or an
    /// event id is the publisher's to choose, and could name a message the operator did not
    /// pick (the console's choice).
    Exact(Vec<String>),
    /// Every one.
    All,
    /// Those the ledger picked.
    Ledger(Picked),
}

impl Pick {
    fn has(&self, r: &Record) -> bool {
        match self {
            Pick::Ids(ids) => ids.iter().any(|id| r.is(id)),
            Pick::Exact(ids) => ids.contains(&r.id),
            Pick::All => true,
            Pick::Ledger(p) => p.has(r),
        }
    }

    /// The ids named that `records` do not hold.
    fn missing<'r>(&self, records: impl Iterator<Item = &'r Record> + Clone) -> Vec<String> {
        let named = match self {
            Pick::Ids(ids) | Pick::Exact(ids) => ids,
            Pick::All | Pick::Ledger(_) => return Vec::new(),
        };
        named
            .iter()
            .filter(|id| {
                !records.clone().any(|r| match self {
                    Pick::Exact(_) => &r.id == *id,
                    _ => r.is(id),
                })
            })
            .cloned()
            .collect()
    }
}

/// What became of one parked message a replay picked.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Step {
    /// A dry run: this would be replayed (what it is).
    WouldReplay { summary: String },
    /// Sent again: its notifications queued, what the operator should know, and a warning
    /// when the ledger did not record it.
    Replayed {
        notifications: usize,
        notes: Vec<String>,
        warning: Option<String>,
    },
    /// Not sent: the ledger shows it done; the parked copy is removed.
    Removed { why: String },
    /// Not sent, and still parked.
    Kept { why: String },
    /// Replayed, but the broker did not take the acknowledgement: still parked, and may be
    /// replayed again.
    StillParked { why: String },
}

/// One parked message a replay picked, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Done {
    /// The message's id, as [`Record::id`].
    pub id: String,
    pub step: Step,
}

/// What a replay did, message by message.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Replay {
    /// The queue.
    pub queue: String,
    /// What the ledger picked, when it picked.
    pub picked: Option<usize>,
    /// Each message picked, and what became of it.
    pub steps: Vec<Done>,
    /// Ids named that are not in the queue.
    pub missing: Vec<String>,
    pub dry_run: bool,
}

impl Replay {
    /// Messages sent again.
    pub fn replayed(&self) -> usize {
        self.count(|s| matches!(s, Step::Replayed { .. } | Step::StillParked { .. }))
    }

    /// Messages that failed in some way: kept, replayed with a warning, or still parked.
    pub fn failures(&self) -> usize {
        self.count(|s| {
            matches!(
                s,
                Step::Kept { .. }
                    | Step::StillParked { .. }
                    | Step::Replayed {
                        warning: Some(_),
                        ..
                    }
            )
        })
    }

    /// How many of those the ledger picked are no longer in the queue.
    pub fn gone(&self) -> usize {
        self.picked
            .map_or(0, |p| p.saturating_sub(self.steps.len()))
    }

    fn count(&self, f: impl Fn(&Step) -> bool) -> usize {
        self.steps.iter().filter(|d| f(&d.step)).count()
    }

    /// Whether it did all it was asked: every message named found and, but for a dry run,
    /// each replayed without failure (and at least one, unless every one or the ledger's
    /// pick was asked for).
    pub fn passed(&self, every: bool) -> bool {
        if self.dry_run {
            return self.missing.is_empty();
        }
        self.failures() == 0
            && self.missing.is_empty()
            && (self.replayed() > 0 || every || self.picked.is_some())
    }
}

/// A property's or header's value (as [`Shown`] holds them) as plain text: a string as it is,
/// anything else as JSON.
pub fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parked message in full: its record, properties, headers and body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Shown {
    pub record: Record,
    /// `[name, value]` pairs: the AMQP properties it has.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub properties: Vec<(&'static str, Value)>,
    /// `[name, value]` pairs: its headers.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub headers: Vec<(String, Value)>,
    /// The body, when it is JSON.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// The body as text, when it is not JSON.
    pub body_text: Option<String>,
}

/// A connection to the broker for working the parking queues.
pub struct Parking {
    connection: Connection,
    ch: Channel,
    settings: Settings,
}

impl Parking {
    /// Connects to the first of the broker's nodes that answers.
    // String error: one line for the operator.
    pub async fn open(settings: &Settings) -> Result<Parking, String> {
        let connection = broker::connect(
            &settings.amqp_urls,
            ConnectionProperties::default,
            AMQP_PASSWORD_IN,
        )
        .await
        .map_err(|e| e.to_string())?
        .connection;
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Parking {
            connection,
            ch,
            settings: settings.clone(),
        })
    }

    /// The queue's name.
    pub fn queue(&self, which: Which) -> &str {
        match which {
            Which::Rejected => &self.settings.rejected_queue,
            Which::Failed => &self.settings.failed_queue,
        }
    }

    /// Up to `limit` records, in queue order, and how many are ready in all. Each message is
    /// put back untouched.
    pub async fn list(&self, which: Which, limit: usize) -> Result<(Vec<Record>, u32), String> {
        // Counted before any is taken: the count is of messages ready on the queue.
        let total = depth(&self.connection, self.queue(which)).await?;
        let got = fetch(&self.ch, self.queue(which), limit).await?;
        let records = got.iter().map(|m| self.record(which, m)).collect();
        release(&got).await;
        Ok((records, total))
    }

    /// Every message that `id` names (its id, message_id or event id), in full.
    pub async fn show(&self, which: Which, id: &str) -> Result<Vec<Shown>, String> {
        let got = fetch(&self.ch, self.queue(which), usize::MAX).await?;
        let shown = got
            .iter()
            .filter_map(|m| {
                let record = self.record(which, m);
                record.is(id).then(|| {
                    let body = serde_json::from_slice::<Value>(&m.data).ok();
                    Shown {
                        record,
                        properties: property_list(&m.properties),
                        headers: header_list(&m.properties),
                        body_text: body
                            .is_none()
                            .then(|| String::from_utf8_lossy(&m.data).into_owned()),
                        body,
                    }
                })
            })
            .collect();
        release(&got).await;
        Ok(shown)
    }

    /// Sends the picked messages again (or, in a dry run, says which it would), each recorded
    /// in the ledger with `books`' actor.
    pub async fn replay(
        &self,
        core: &Core,
        books: &Books,
        which: Which,
        pick: &Pick,
        dry_run: bool,
    ) -> Result<Replay, String> {
        let got = fetch(&self.ch, self.queue(which), usize::MAX).await?;
        let mut out = Replay {
            queue: self.queue(which).to_owned(),
            picked: match pick {
                Pick::Ledger(p) => Some(p.count),
                _ => None,
            },
            dry_run,
            ..Replay::default()
        };
        for m in &got {
            let record = self.record(which, m);
            if !pick.has(&record) {
                let _ = m.nack(requeue()).await;
                continue;
            }
            if dry_run {
                let _ = m.nack(requeue()).await;
                out.steps.push(Done {
                    id: record.id.clone(),
                    step: Step::WouldReplay {
                        summary: record.summary(),
                    },
                });
                continue;
            }
            let step = match replay(core, &self.settings, &self.ch, which, m, books).await {
                Ok(done) => {
                    let step = match done {
                        Replayed::Queued(notifications, notes, warning) => Step::Replayed {
                            notifications,
                            notes,
                            warning,
                        },
                        Replayed::Stale(why) => Step::Removed { why },
                    };
                    match m.ack(BasicAckOptions::default()).await {
                        Ok(_) => step,
                        Err(e) => Step::StillParked {
                            why: format!(
                                "the broker did not take the acknowledgement ({e}); it may be \
                                 replayed again"
                            ),
                        },
                    }
                }
                Err(why) => {
                    let _ = m.nack(requeue()).await;
                    Step::Kept { why }
                }
            };
            out.steps.push(Done {
                id: record.id.clone(),
                step,
            });
        }
        let records: Vec<Record> = got.iter().map(|m| self.record(which, m)).collect();
        out.missing = pick.missing(records.iter());
        Ok(out)
    }

    /// Deletes the picked messages, each recorded in the ledger's audit trail (with `books`'
    /// actor) before it goes; one the ledger cannot record is kept. The ids of those deleted,
    /// and of those named that are not in the queue.
    pub async fn purge(
        &self,
        which: Which,
        pick: &Pick,
        books: &Books,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let got = fetch(&self.ch, self.queue(which), usize::MAX).await?;
        let queue = self.queue(which).to_owned();
        let mut purged = Vec::new();
        let mut kept: Option<String> = None;
        for m in &got {
            let record = self.record(which, m);
            if !pick.has(&record) || kept.is_some() {
                let _ = m.nack(requeue()).await;
                continue;
            }
            let audited = books
                .store
                .audit(Utc::now(), &books.actor, "purge", &record.id, Some(&queue))
                .await;
            if let Err(e) = audited {
                let _ = m.nack(requeue()).await;
                kept = Some(format!(
                    "the ledger cannot record the purge ({e}): {} and the rest kept",
                    record.id
                ));
                continue;
            }
            match m.ack(BasicAckOptions::default()).await {
                Ok(_) => purged.push(record.id),
                Err(e) => {
                    kept = Some(format!(
                        "the broker did not take the deletion of {} ({e}); it and the rest kept",
                        record.id
                    ))
                }
            }
        }
        if let Some(why) = kept {
            return Err(format!(
                "{why}; purged before that: {}",
                if purged.is_empty() {
                    "none".to_owned()
                } else {
                    purged.join(", ")
                }
            ));
        }
        let records: Vec<Record> = got.iter().map(|m| self.record(which, m)).collect();
        Ok((purged, pick.missing(records.iter())))
    }

    /// How many messages are ready on the queue.
    pub async fn depth(&self, which: Which) -> Result<u32, String> {
        depth(&self.connection, self.queue(which)).await
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }

    fn record(&self, which: Which, m: &Delivery) -> Record {
        Record::read(which, &self.settings, &m.properties, &m.data)
    }
}

impl Picked {
    /// The parked notifications the ledger finds by `filter`.
    pub async fn parked(store: &Store, filter: &ParkedFilter) -> Result<Picked, LedgerError> {
        let found = store.parked(filter).await?;
        let mut p = Picked {
            keys: HashSet::new(),
            unmade: HashSet::new(),
            events: HashSet::new(),
            count: found.len(),
        };
        for f in found {
            if f.key.starts_with(rows::UNMADE) {
                p.unmade.insert((f.message_id, f.route));
            } else {
                p.keys.insert(f.key);
            }
        }
        Ok(p)
    }

    /// The rejected events the ledger finds received between `since` and `until`.
    pub async fn rejected(
        store: &Store,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Picked, LedgerError> {
        let events: HashSet<(String, String)> =
            store.rejected(since, until).await?.into_iter().collect();
        Ok(Picked {
            keys: HashSet::new(),
            unmade: HashSet::new(),
            count: events.len(),
            events,
        })
    }

    fn has(&self, r: &Record) -> bool {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        match r.kind {
            "notification" => self.keys.contains(&text(&r.message_id)),
            "problem" => self.unmade.contains(&(text(&r.event_id), text(&r.route))),
            "rejected" => self
                .events
                .contains(&(text(&r.publisher), text(&r.message_id))),
            _ => false,
        }
    }
}

/// Sends one parked message again; the number of notifications queued, or why it stays.
/// The ledger hears of it first: a notification replayed is pending again (the service may
/// deliver it before this returns), an event replayed is recorded as routed with its
/// notifications, and an audit entry names who replayed what.
// String error: one line for the operator, printed before exit status 1.
async fn replay(
    core: &Core,
    settings: &Settings,
    ch: &Channel,
    which: Which,
    m: &Delivery,
    books: &Books,
) -> Result<Replayed, String> {
    let deliveries = retry::deliveries_queue(settings);
    let now = Utc::now();
    let mut notes = Vec::new();
    let (event, unmade) = match which {
        Which::Rejected => (
            readmit(core, m).map_err(|r| format!("still rejected: {r}"))?,
            None,
        ),
        Which::Failed => match ParkedRecord::read(&m.data).ok_or("not a parked record")? {
            ParkedRecord::Notification(parked) => {
                let mut p = parked.notification;
                if p.readdress(&core.engine.directory)
                    .map_err(|e| e.to_string())?
                {
                    notes.push(format!(
                        "{}: sent to the address routes.toml now gives",
                        p.recipient
                    ));
                }
                p.attempts = 0;
                p.first_failure = None;
                p.last_error = None;
                p.last_failure = None;
                p.replay = true;
                // A parked copy of a notification the ledger shows delivered (or in the
                // service's hands) is not sent again.
                match books
                    .store
                    .status(&p.key)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(Status::Delivered) => {
                        let why = "the ledger shows it delivered; this parked copy is removed";
                        books
                            .store
                            .audit(now, &books.actor, "remove", &p.key, Some(why))
                            .await
                            .map_err(|e| {
                                format!("not removed: the ledger cannot record it: {e}")
                            })?;
                        return Ok(Replayed::Stale(why.into()));
                    }
                    Some(s @ (Status::Pending | Status::Retrying | Status::Skipped)) => {
                        return Err(format!(
                            "the ledger shows it {}: not sent again while it is",
                            s.as_str()
                        ));
                    }
                    Some(Status::Parked | Status::Expired) | None => {}
                }
                retry::enqueue(ch, &deliveries, &p)
                    .await
                    .map_err(|e| e.to_string())?;
                let warning = books
                    .store
                    .replayed(&p.key, now, &books.actor)
                    .await
                    .err()
                    .map(|e| format!("replayed, but the ledger did not record the replay: {e}"));
                return Ok(Replayed::Queued(1, notes, warning));
            }
            ParkedRecord::Problem(parked) => {
                let body = serde_json::to_vec(&parked.event).unwrap_or_default();
                let id = parked.event_id.as_str();
                let event = match parked.publisher.as_deref() {
                    // The event passed admission once; it passes the same gate again.
                    Some(publisher) => core.admit(&Message {
                        body: &body,
                        routing_key: &parked.event_type,
                        message_id: Some(id),
                        user_id: Some(publisher),
                        content_type: Some("application/json"),
                        header_bytes: 0,
                    }),
                    // Parked by an older Herald, which did not record the publisher.
                    None => core.intake.accept(&body, EventId::new(id)),
                }
                .map_err(|r| format!("still rejected: {r}"))?;
                (event, Some(parked.problem))
            }
        },
    };
    let only_route = unmade.as_ref().map(|p| p.route().to_owned());
    let authority = rows::authority(core, &books.store, &event)
        .await
        .map_err(|e| format!("not replayed: the authority register cannot be read: {e}"))?;
    // A register event refused before (its representative was not in the directory) makes
    // its change now; one applied before is not applied twice.
    let change = Change::of(&event).ok().flatten();
    let routing = core.route(&event, &authority);
    let wanted = |route: &str| only_route.as_deref().is_none_or(|r| r == route);
    if let Some(p) = routing.problems.iter().find(|p| wanted(p.route())) {
        return Err(format!("still fails: {p}"));
    }
    let pending: Vec<Pending> = routing
        .notifications
        .into_iter()
        .filter(|n| wanted(&n.route))
        .map(|n| Pending::new(n, &event))
        .collect();
    let skipped: Vec<_> = routing
        .skipped
        .into_iter()
        .filter(|s| wanted(s.route()))
        .collect();
    let (records, _) = rows::of_routing(&event, &pending, &skipped, &[]);
    let record = rows::event_record(&event, EventOutcome::Routed, now);
    let seen = books
        .ledger
        .event_changing(record, records, change)
        .await
        .map_err(|e| format!("not replayed: the ledger cannot record it: {e}"))?;
    // Notifications already delivered, scheduled or parked since are not sent again.
    let settled = |key: &str| seen.settled(key);
    let mut queued = 0;
    for p in pending.iter().filter(|p| !settled(&p.key)) {
        retry::enqueue(ch, &deliveries, p)
            .await
            .map_err(|e| e.to_string())?;
        queued += 1;
    }
    let subject = event.id.as_str();
    let detail = format!("{queued} notification(s) queued");
    // Queued: from here a ledger failure is reported, and the parked message is still removed
    // (keeping it would send its notifications again at the next replay).
    let recorded = match &unmade {
        // The notification that could not be made is made now: its row is settled.
        Some(problem) => {
            let key = rows::unmade_key(&event, problem.route(), &problem.to_string());
            books
                .store
                .unmade_replayed(&key, now, &books.actor, &detail)
                .await
        }
        None => {
            books
                .store
                .audit(now, &books.actor, "replay", subject, Some(&detail))
                .await
        }
    };
    let warning = recorded
        .err()
        .map(|e| format!("replayed, but the ledger did not record the replay: {e}"));
    Ok(Replayed::Queued(queued, notes, warning))
}

/// A refused event as it first arrived, put through admission again. Herald's headers say how
/// it arrived when Herald parked it (it drops any a publisher set); an event the broker
/// dead-lettered itself has only the broker's word: its verified `user_id` and the routing key
/// `x-death` recorded.
fn readmit(core: &Core, m: &Delivery) -> Result<Event, Rejection> {
    let headers = m.properties.headers();
    let parked_by_herald = header_text(headers, "x-herald-reason").is_some();
    let (user, routing_key) = if parked_by_herald {
        (
            header_text(headers, "x-herald-original-user-id"),
            header_text(headers, "x-herald-original-routing-key"),
        )
    } else {
        (
            m.properties.user_id().as_ref().map(|u| u.to_string()),
            dead_lettered_routing_key(headers),
        )
    };
    let event_type = serde_json::from_slice::<Value>(&m.data)
        .ok()
        .and_then(|v| v["eventType"].as_str().map(str::to_owned));
    core.admit(&Message {
        body: &m.data,
        routing_key: routing_key.or(event_type).as_deref().unwrap_or_default(),
        message_id: m.properties.message_id().as_ref().map(|i| i.as_str()),
        user_id: user.as_deref(),
        content_type: m.properties.content_type().as_ref().map(|c| c.as_str()),
        // Headers were judged when the event arrived; what is parked is bounded.
        header_bytes: 0,
    })
}

/// The routing key an event was first published with to an exchange, from the broker's
/// `x-death` header (one put straight on a queue has the queue's name as its key: none).
fn dead_lettered_routing_key(headers: &Option<FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    if death
        .inner()
        .get("exchange")
        .is_none_or(|e| value_text(e).is_empty())
    {
        return None;
    }
    let AMQPValue::FieldArray(keys) = death.inner().get("routing-keys")? else {
        return None;
    };
    keys.as_slice().first().map(value_text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn settings() -> Settings {
        Settings::new(&crate::config::Config::parse("").unwrap(), |_| None)
    }

    pub(crate) fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    pub(crate) fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    /// A parked message as the default configuration reads it.
    pub(crate) fn read(which: Which, p: BasicProperties, body: &[u8]) -> Record {
        Record::read(which, &settings(), &p, body)
    }

    #[test]
    fn a_refused_event_lists_with_its_publisher_and_reason() {
        let p = BasicProperties::default()
            .with_message_id("evt-1".into())
            .with_headers(headers(&[
                ("x-herald-reason", text("unauthorised-publisher")),
                (
                    "x-herald-detail",
                    text("user prison may not publish court.bail.decided"),
                ),
                (
                    "x-herald-rejected-at",
                    text("2026-11-20T15:43:10.123456+00:00"),
                ),
                ("x-herald-original-routing-key", text("court.bail.decided")),
                ("x-herald-original-user-id", text("prison")),
            ]));
        let r = read(
            Which::Rejected,
            p,
            br#"{"kind": "problem", "problem": {"route": "forged"}}"#,
        );
        assert_eq!(r.kind, "rejected");
        assert_eq!(r.reason, "unauthorised-publisher");
        assert_eq!(r.parked_at.as_deref(), Some("2026-11-20T15:43:10Z"));
        assert_eq!(r.event_id.as_deref(), Some("evt-1"));
        assert_eq!(r.event_type.as_deref(), Some("court.bail.decided"));
        assert_eq!(r.publisher.as_deref(), Some("prison"));
        assert_eq!(
            r.route, None,
            "a publisher's body is not read as Herald's record"
        );
    }

    #[test]
    fn a_parked_notification_and_an_engine_problem_list_every_field_they_have() {
        let p = || {
            BasicProperties::default()
                .with_message_id("msg_0123".into())
                .with_headers(headers(&[("x-herald-reason", text("delivery-failed"))]))
        };
        let notification = json!({
            "kind": "notification", "reason": "delivery-failed", "detail": "HTTP 410 Gone",
            "attempts": 3, "channel": "webhook", "parkedAt": "2026-11-20T16:00:00+00:00",
            "notification": { "key": "msg_0123", "eventId": "evt-2", "eventType": "court.warrant.issued",
                              "route": "ppo-fta-warrant", "recipient": "police:WYP-LEEDS",
                              "occurredAt": "2026-11-20T15:42:00Z", "sla": {"kind": "untracked"},
                              "content": {"channel": "webhook", "url": "http://127.0.0.1:9900/x", "body": "{}"},
                              "attempts": 3, "firstFailure": null, "lastError": "HTTP 410 Gone" }
        });
        let r = read(Which::Failed, p(), notification.to_string().as_bytes());
        assert!(r.id.starts_with("p-") && r.id.len() == 18, "{}", r.id);
        assert_eq!(
            r.id,
            read(Which::Failed, p(), notification.to_string().as_bytes()).id,
            "the same message has the same id"
        );
        assert_ne!(
            r.id,
            read(Which::Rejected, p(), notification.to_string().as_bytes()).id,
            "the id depends on the queue"
        );
        assert_eq!(
            r.cells(),
            [
                r.id.as_str(),
                "2026-11-20T16:00:00Z",
                "delivery-failed",
                "ppo-fta-warrant",
                "police:WYP-LEEDS",
                "webhook",
                "3",
                "evt-2",
                "court.warrant.issued",
                "-",
                "HTTP 410 Gone"
            ]
        );
        assert_eq!(r.message_id.as_deref(), Some("msg_0123"));

        let problem = json!({
            "kind": "problem", "reason": "unknown-recipient", "detail": "police:XX is not in the directory",
            "parkedAt": "2026-11-20T16:00:00+00:00",
            "problem": { "outcome": "unknown-recipient", "route": "ppo-released",
                         "pattern": "police:{offender.homeBcu}", "reason": "police:XX is not in the directory" },
            "eventId": "evt-3", "eventType": "prison.prisoner.released", "event": {}
        });
        let r = read(Which::Failed, p(), problem.to_string().as_bytes());
        assert_eq!(r.kind, "problem");
        assert_eq!(r.route.as_deref(), Some("ppo-released"));
        assert_eq!(r.recipient.as_deref(), Some("police:{offender.homeBcu}"));
        assert_eq!(r.attempts, None);
        assert_eq!(r.event_id.as_deref(), Some("evt-3"));
        let cells = r.cells();
        assert!(
            cells
                .iter()
                .all(|c| !c.contains("null") && !c.contains("()")),
            "{cells:?}"
        );
    }

    #[test]
    fn an_unreadable_retry_says_what_it_can() {
        let p = BasicProperties::default()
            .with_message_id("unreadable".into())
            .with_headers(headers(&[
                ("x-herald-reason", text("unreadable")),
                ("x-herald-detail", text("missing field `content`")),
                ("x-herald-parked-at", text("2026-11-20T16:00:00+00:00")),
            ]));
        let r = read(
            Which::Failed,
            p.clone(),
            br#"{"key": "msg_9", "eventId": "evt-9", "route": "r", "attempts": 2}"#,
        );
        assert_eq!(r.kind, "unreadable");
        assert_eq!(
            (r.event_id.as_deref(), r.message_id.as_deref()),
            (Some("evt-9"), Some("msg_9"))
        );
        assert_eq!((r.route.as_deref(), r.attempts), (Some("r"), Some(2)));
        let r = read(Which::Failed, p, b"\x00\xff not json");
        assert_eq!(r.cells()[3..7], ["-", "-", "-", "-"]);
        assert_eq!(r.parked_at.as_deref(), Some("2026-11-20T16:00:00Z"));
    }

    #[test]
    fn an_event_past_the_delivery_limit_is_explained_from_x_death() {
        let death = headers(&[
            ("count", AMQPValue::LongLongInt(1)),
            ("reason", text("delivery_limit")),
            ("queue", text("herald.events")),
            ("time", AMQPValue::Timestamp(1_795_000_000)),
            ("exchange", text("herald.events")),
            (
                "routing-keys",
                AMQPValue::FieldArray(FieldArray::from(vec![text("court.warrant.issued")])),
            ),
        ]);
        let p = BasicProperties::default()
            .with_message_id("evt-4".into())
            .with_user_id("court".into())
            .with_headers(headers(&[
                (
                    "x-death",
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
                ),
                ("x-first-death-reason", text("delivery_limit")),
            ]));
        let r = read(
            Which::Rejected,
            p,
            br#"{"eventType": "court.warrant.issued"}"#,
        );
        assert_eq!(r.kind, "delivery-limit");
        assert_eq!(r.reason, "delivery-limit");
        assert_eq!(r.parked_at.as_deref(), Some("2026-11-18T11:06:40Z"));
        assert_eq!(r.publisher.as_deref(), Some("court"));
        assert_eq!(r.event_id.as_deref(), Some("evt-4"));
        assert_eq!(r.event_type.as_deref(), Some("court.warrant.issued"));
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "the broker dead-lettered it from herald.events after 11 deliveries: Herald never \
                 finished handling it (see Herald's log for event id evt-4)"
            )
        );
    }

    #[test]
    fn anything_else_is_unexplained_with_the_headers_it_has() {
        let p = BasicProperties::default()
            .with_headers(headers(&[("x-mine", AMQPValue::Boolean(true))]));
        let r = read(Which::Rejected, p, b"hello");
        assert_eq!(r.reason, "unexplained");
        let detail = r.detail.unwrap_or_default();
        assert!(
            detail.contains("no x-herald-reason") && detail.contains("headers: x-mine"),
            "{detail}"
        );
        let r = read(Which::Failed, BasicProperties::default(), b"");
        assert_eq!(r.reason, "unexplained");
        assert!(r.detail.unwrap_or_default().contains("it has no headers"));
    }

    #[test]
    fn an_exact_pick_takes_only_the_ids_listed() {
        let listed = Record {
            id: "p-0123456789abcdef".into(),
            ..Record::default()
        };
        // A publisher's message whose message_id is the id of another parked message.
        let lookalike = Record {
            id: "p-fedcba9876543210".into(),
            message_id: Some("p-0123456789abcdef".into()),
            ..Record::default()
        };
        let exact = Pick::Exact(vec!["p-0123456789abcdef".into(), "p-gone".into()]);
        assert!(exact.has(&listed));
        assert!(!exact.has(&lookalike));
        assert_eq!(exact.missing([&listed, &lookalike].into_iter()), ["p-gone"]);
        let loose = Pick::Ids(vec!["p-0123456789abcdef".into()]);
        assert!(
            loose.has(&lookalike),
            "the command line's ids also match message_ids"
        );
    }

    #[test]
    fn headers_show_as_plain_values() {
        use crate::serve::park::value_text;
        assert_eq!(value_text(&AMQPValue::LongLongInt(7)), "7");
        assert_eq!(value_text(&AMQPValue::Boolean(false)), "false");
        assert_eq!(value_text(&text("delivery-failed")), "delivery-failed");
        assert_eq!(
            value_text(&AMQPValue::Timestamp(0)),
            "1970-01-01T00:00:00+00:00"
        );
        let table = headers(&[("count", AMQPValue::ShortInt(2)), ("queue", text("q"))]);
        assert_eq!(
            value_text(&AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(table)
            ]))),
            r#"[{"count":2,"queue":"q"}]"#
        );
    }
}

//! Parking: what cannot be routed or delivered goes to a queue an operator can inspect, with
//! its reason, before the event is acknowledged. Publishing waits for the broker's confirm.

use chrono::DateTime;
use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::confirm::{PublishError, publish};
use super::retry::Pending;
use crate::deliver::{Failure, FailureKind};
use crate::intake::{Rejection, excerpt};
use crate::notification::{ParkReason, Problem};

fn text(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// Parks a refused event in the rejected queue: the original body and properties, with
/// `x-herald-reason` and `x-herald-detail`. The publisher's `user_id` moves to a header
/// (the broker only lets Herald publish as itself).
///
/// The original headers are copied only when they are within `max_header_bytes`, so the copy
/// always fits in one frame; larger ones are summarised in `x-herald-original-headers`. Headers
/// named `x-herald-…` are never copied: a publisher could otherwise forge the reason, or the
/// publisher a replay acts as.
pub async fn reject(
    channel: &Channel,
    queue: &str,
    delivery: &lapin::message::Delivery,
    rejection: &Rejection,
    max_header_bytes: usize,
) -> Result<(), PublishError> {
    let original = &delivery.properties;
    let mut headers = FieldTable::default();
    if let Some(table) = original.headers() {
        let size = header_bytes(table);
        if size <= max_header_bytes {
            for (k, v) in table.inner() {
                if !is_herald_header(k.as_str()) {
                    headers.insert(k.clone(), v.clone());
                }
            }
        } else {
            headers.insert(
                "x-herald-original-headers".into(),
                text(headers_summary(table, size)),
            );
        }
    }
    headers.insert("x-herald-reason".into(), text(rejection.reason.as_str()));
    headers.insert("x-herald-detail".into(), text(rejection.detail.clone()));
    headers.insert("x-herald-rejected-at".into(), text(Utc::now().to_rfc3339()));
    headers.insert(
        "x-herald-original-exchange".into(),
        text(excerpt(delivery.exchange.as_str())),
    );
    headers.insert(
        "x-herald-original-routing-key".into(),
        text(excerpt(delivery.routing_key.as_str())),
    );
    if let Some(user) = original.user_id() {
        // The broker verified it, so it is one of its logins; a login is never more than an
        // excerpt long in practice, but the header is bounded all the same.
        headers.insert(
            "x-herald-original-user-id".into(),
            text(excerpt(user.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    publish(channel, queue, &delivery.data, properties).await
}

/// Parks a notification that cannot be delivered, with everything needed to send it again.
pub async fn failed_notification(
    channel: &Channel,
    queue: &str,
    p: &Pending,
    reason: ParkReason,
    failure: &Failure,
) -> Result<(), PublishError> {
    let record = ParkedRecord::Notification(ParkedNotification {
        v: RECORD_VERSION,
        reason,
        failure: Some(failure.kind),
        detail: failure.detail.clone(),
        attempts: p.attempts,
        channel: p.channel(),
        parked_at: Utc::now(),
        notification: p.clone(),
    });
    let properties = properties(&p.key, reason.as_str(), &failure.detail, Some(p));
    publish(channel, queue, &record.to_json(), properties).await
}

/// Parks a message Herald cannot read back (a retry written by an incompatible version).
pub async fn unreadable(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    detail: &str,
) -> Result<(), PublishError> {
    let properties = properties("unreadable", "unreadable", detail, None);
    publish(channel, queue, body, properties).await
}

/// Parks a notification the engine could not make (an unknown recipient, a template that
/// failed), with the event it came from so it can be routed again once the cause is fixed.
pub async fn problem(
    channel: &Channel,
    queue: &str,
    event: &crate::event::Event,
    problem: &Problem,
) -> Result<(), PublishError> {
    let record = ParkedRecord::Problem(ParkedProblem {
        v: RECORD_VERSION,
        reason: problem.kind().to_owned(),
        detail: problem.to_string(),
        parked_at: Utc::now(),
        problem: problem.clone(),
        event_id: event.id.to_string(),
        publisher: event.id.publisher().map(str::to_owned),
        event_type: event.event_type.to_string(),
        event: event.body.clone(),
    });
    let id = format!("{}/{}", event.id, problem.route());
    let properties = properties(&id, problem.kind(), &problem.to_string(), None);
    publish(channel, queue, &record.to_json(), properties).await
}

/// The properties of a record in the failed queue. `x-herald-parked-at` says when, for every
/// kind (an unreadable message has no record of Herald's to carry it).
fn properties(id: &str, reason: &str, detail: &str, p: Option<&Pending>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-herald-reason".into(), text(reason));
    headers.insert("x-herald-detail".into(), text(detail));
    headers.insert("x-herald-parked-at".into(), text(Utc::now().to_rfc3339()));
    if let Some(p) = p {
        headers.insert("x-herald-route".into(), text(p.route.as_str()));
        headers.insert("x-herald-recipient".into(), text(p.recipient.as_str()));
        headers.insert("x-herald-channel".into(), text(p.channel().as_str()));
        headers.insert(
            "x-herald-attempts".into(),
            AMQPValue::LongLongInt(i64::from(p.attempts)),
        );
    }
    let mut p = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Ok(id) = ShortString::try_new(id) {
        p = p.with_message_id(id);
    }
    p
}

/// The version of [`ParkedRecord`] Herald writes. A record without `v` was written before
/// records were versioned, and reads as version 1.
pub const RECORD_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

/// What Herald writes to the failed queue, and `herald dlq` reads back: one type for both
/// sides, tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ParkedRecord {
    /// A notification that could not be delivered.
    Notification(ParkedNotification),
    /// A notification the engine could not make (an unknown recipient, a template failure).
    Problem(ParkedProblem),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedNotification {
    #[serde(default = "version_one")]
    pub v: u32,
    pub reason: ParkReason,
    /// The kind of the last failure (absent in records from before it was kept).
    #[serde(default)]
    pub failure: Option<FailureKind>,
    pub detail: String,
    pub attempts: u32,
    pub channel: crate::notification::Channel,
    pub parked_at: DateTime<Utc>,
    /// Everything needed to send it again.
    pub notification: Pending,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedProblem {
    #[serde(default = "version_one")]
    pub v: u32,
    /// The problem's kind (`unknown-recipient`, `render-failed`...).
    pub reason: String,
    pub detail: String,
    pub parked_at: DateTime<Utc>,
    pub problem: Problem,
    pub event_id: String,
    /// The login that published the event (absent in records from before it was kept).
    #[serde(default)]
    pub publisher: Option<String>,
    pub event_type: String,
    /// The event as it was accepted, to route again once the cause is fixed.
    pub event: Value,
}

impl ParkedRecord {
    /// The record as the failed queue holds it.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A record read back, if the bytes are one.
    pub fn read(bytes: &[u8]) -> Option<ParkedRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Herald's own headers on parked messages; never taken from a publisher.
fn is_herald_header(name: &str) -> bool {
    name.get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-herald-"))
}

/// The encoded size of an AMQP headers table, in bytes, as it goes on the wire.
pub(crate) fn header_bytes(table: &FieldTable) -> usize {
    fn value(v: &AMQPValue) -> usize {
        1 + match v {
            AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
            AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
            AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
            AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
            AMQPValue::DecimalValue(_) => 5,
            AMQPValue::ShortString(s) => 1 + s.as_str().len(),
            AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
            AMQPValue::ByteArray(b) => 4 + b.len(),
            AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value).sum::<usize>(),
            AMQPValue::FieldTable(t) => header_bytes(t),
            AMQPValue::Void => 0,
        }
    }
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + value(v))
        .sum::<usize>()
}

/// What a rejected copy says of headers too large to copy: how many, their size, and the
/// first few names (as excerpts).
fn headers_summary(table: &FieldTable, size: usize) -> String {
    const NAMES: usize = 10;
    let names: Vec<String> = table
        .inner()
        .keys()
        .take(NAMES)
        .map(|k| excerpt(k.as_str()))
        .collect();
    let more = table.inner().len().saturating_sub(NAMES);
    let mut summary = format!(
        "{} header(s), {size} bytes, not copied: {}",
        table.inner().len(),
        names.join(", ")
    );
    if more > 0 {
        summary.push_str(&format!(" and {more} more"));
    }
    summary
}

/// A parked record's header as plain text, for tools that read the queues: strings as they
/// are, numbers and booleans as written, timestamps in RFC 3339, tables and arrays as JSON.
pub fn header_text(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    headers.as_ref()?.inner().get(name).map(value_text)
}

/// One header value as plain text (see [`header_text`]).
pub fn value_text(value: &AMQPValue) -> String {
    match header_json(value) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A header value as JSON: what the broker and publishers put in headers (numbers of every
/// width, timestamps, nested tables such as `x-death`) as a script would want to read it.
/// Bytes that are not UTF-8 are shown lossily, never as a debug dump.
pub fn header_json(value: &AMQPValue) -> Value {
    let text = |bytes: &[u8]| Value::String(String::from_utf8_lossy(bytes).into_owned());
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => text(s.as_bytes()),
        AMQPValue::ByteArray(b) => text(b.as_slice()),
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(header_json).collect(),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_json(v)))
                .collect(),
        ),
        AMQPValue::Timestamp(t) => i64::try_from(*t)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(|| json!(t), |at| json!(at.to_rfc3339())),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked notification exactly as Herald wrote it before records carried a version.
    const OLDER: &str = r#"{"kind":"notification","reason":"delivery-failed","detail":"HTTP 410 Gone: the endpoint asked not to be sent to again","attempts":1,"channel":"webhook","parkedAt":"2026-11-20T16:00:00+00:00","notification":{"key":"msg_0123","eventId":"evt-1","eventType":"court.warrant.issued","route":"ppo-fta-warrant","recipient":"police:WYP-LEEDS","occurredAt":"2026-11-20T15:42:00Z","publishedAt":"2026-11-20T15:43:10Z","sla":{"kind":"untracked"},"priority":"urgent","content":{"channel":"webhook","url":"http://127.0.0.1:9900/police/WYP-LEEDS","body":"{}"},"attempts":1,"firstFailure":"2026-11-20T16:00:00Z","lastError":"HTTP 410 Gone"}}"#;

    #[test]
    fn a_record_written_before_versions_reads_as_version_one() {
        let Some(ParkedRecord::Notification(n)) = ParkedRecord::read(OLDER.as_bytes()) else {
            panic!("the older record is not read");
        };
        assert_eq!(n.v, 1);
        assert_eq!(n.reason, ParkReason::DeliveryFailed);
        assert_eq!(n.failure, None);
        assert_eq!(n.notification.key, "msg_0123");
        assert_eq!(n.notification.last_failure, None);
    }

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let Some(ParkedRecord::Notification(mut n)) = ParkedRecord::read(OLDER.as_bytes()) else {
            panic!("the older record is not read");
        };
        n.v = RECORD_VERSION;
        n.failure = Some(FailureKind::HttpGone);
        n.notification.last_failure = Some(FailureKind::HttpGone);
        let written = ParkedRecord::Notification(n).to_json();
        let text = String::from_utf8(written.clone()).unwrap();
        assert!(
            text.contains(r#""v":1"#) && text.contains(r#""failure":"http-gone""#),
            "{text}"
        );
        let Some(ParkedRecord::Notification(back)) = ParkedRecord::read(&written) else {
            panic!("{text}");
        };
        assert_eq!(back.failure, Some(FailureKind::HttpGone));
        assert_eq!(back.notification.last_failure, Some(FailureKind::HttpGone));

        let problem = ParkedRecord::Problem(ParkedProblem {
            v: RECORD_VERSION,
            reason: "unknown-recipient".into(),
            detail:
                "route r: recipient police:{offender.homeBcu}: police:X is not in the directory"
                    .into(),
            parked_at: Utc::now(),
            problem: Problem::UnknownRecipient {
                route: "r".into(),
                pattern: "police:{offender.homeBcu}".into(),
                reason: "police:X is not in the directory".into(),
            },
            event_id: "evt-2".into(),
            publisher: Some("court".into()),
            event_type: "court.warrant.issued".into(),
            event: serde_json::json!({"eventType": "court.warrant.issued"}),
        });
        let Some(ParkedRecord::Problem(back)) = ParkedRecord::read(&problem.to_json()) else {
            panic!("the problem record is not read back");
        };
        assert_eq!(back.publisher.as_deref(), Some("court"));
        assert_eq!(back.problem.kind(), "unknown-recipient");
    }
}

//! Parking: what cannot be routed or delivered goes to a queue an operator can inspect, with
//! its reason, before the event is acknowledged. Publishing waits for the broker's confirm.

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};

use super::confirm::{PublishError, publish};
use super::retry::Pending;
use crate::intake::{Rejection, excerpt};
use crate::notification::Problem;

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
    reason: &str,
    detail: &str,
) -> Result<(), PublishError> {
    let record = json!({
        "kind": "notification",
        "reason": reason,
        "detail": detail,
        "attempts": p.attempts,
        "channel": p.channel(),
        "parkedAt": Utc::now().to_rfc3339(),
        "notification": p,
    });
    let properties = properties(&p.key, reason, detail, Some(p));
    publish(channel, queue, record.to_string().as_bytes(), properties).await
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
    let record = json!({
        "kind": "problem",
        "reason": problem.kind(),
        "detail": problem.to_string(),
        "parkedAt": Utc::now().to_rfc3339(),
        "problem": problem,
        "eventId": event.id,
        "publisher": event.id.publisher(),
        "eventType": event.event_type,
        "event": event.body,
    });
    let id = format!("{}/{}", event.id, problem.route());
    let properties = properties(&id, problem.kind(), &problem.to_string(), None);
    publish(channel, queue, record.to_string().as_bytes(), properties).await
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

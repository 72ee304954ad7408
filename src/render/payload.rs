//! The webhook body: built from the (redacted) event and the route, never hand-written in a
//! template. Shaped as Standard Webhooks suggests: `type`, `timestamp`, `data`.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::Event;
use crate::notification::{IdempotencyKey, Priority, Sla};

#[derive(Serialize)]
struct Payload<'a> {
    /// The event type, so a receiver can dispatch before reading `data`.
    #[serde(rename = "type")]
    kind: &'a str,
    /// When the fact happened (`occurredAt`).
    timestamp: &'a Value,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    notification: NotificationPart<'a>,
    /// The same for every recipient who sees the same data: written once, see [`event_json`].
    event: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationPart<'a> {
    /// Same as the `webhook-id` header: the key to drop duplicates by.
    id: &'a IdempotencyKey,
    route: &'a str,
    recipient: &'a str,
    priority: Priority,
    marks: &'a [String],
    sla: &'a RawValue,
    /// Fields of the event this recipient may not see, removed before sending.
    withheld: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventPart<'a> {
    id: &'a str,
    event_type: &'a str,
    version: u64,
    occurred_at: &'a Value,
    published_at: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a Value>,
    person_reference: &'a Value,
    additional_information: &'a Value,
}

/// What goes into one webhook body.
pub struct WebhookView<'a> {
    pub key: &'a IdempotencyKey,
    pub route: &'a str,
    pub recipient: &'a str,
    pub priority: Priority,
    pub marks: &'a [String],
    /// The route's [`Sla`] as JSON, from [`sla_json`]: the same for each of its recipients.
    pub sla: &'a RawValue,
    pub withheld: &'a [String],
    /// The event as this recipient may see it, from [`event_json`].
    pub event: &'a RawValue,
}

/// The `event` part of a webhook body, with `additionalInformation` as redacted for the
/// recipients who get it (`info`) and the envelope's `description` if they may see it: the
/// same for each of them, so written once.
pub fn event_json(event: &Event, info: &Value, description: Option<&Value>) -> Box<RawValue> {
    let body = &event.body;
    let part = EventPart {
        id: event.id.as_str(),
        event_type: event.event_type.as_str(),
        version: event.version,
        occurred_at: &body["occurredAt"],
        published_at: &body["publishedAt"],
        description,
        person_reference: &body["personReference"],
        additional_information: info,
    };
    // Serialising plain JSON values and strings cannot fail.
    serde_json::value::to_raw_value(&part).unwrap_or_default()
}

/// A route's deadline as the webhook body gives it.
pub fn sla_json(sla: &Sla) -> Box<RawValue> {
    // Serialising strings and a date cannot fail.
    serde_json::value::to_raw_value(sla).unwrap_or_default()
}

/// The JSON body for one webhook notification.
pub fn webhook_body(event: &Event, view: &WebhookView<'_>) -> String {
    let payload = Payload {
        kind: event.event_type.as_str(),
        timestamp: &event.body["occurredAt"],
        data: Data {
            notification: NotificationPart {
                id: view.key,
                route: view.route,
                recipient: view.recipient,
                priority: view.priority,
                marks: view.marks,
                sla: view.sla,
                withheld: view.withheld,
            },
            event: view.event,
        },
    };
    // Sized for the whole body so it is not copied as it grows. Serialising plain JSON values
    // and strings cannot fail, and serde_json writes only UTF-8.
    let mut out = Vec::with_capacity(view.event.get().len() + 512);
    let _ = serde_json::to_writer(&mut out, &payload);
    String::from_utf8(out).unwrap_or_default()
}

/// The `type` of an escalation's webhook body.
pub const ESCALATION_TYPE: &str = "herald.escalation";

/// The JSON body of an escalation by webhook, from the escalation's data (the event already
/// redacted for the recipient's class, and the why): `type` `herald.escalation`, `timestamp`
/// when it is sent, and `data` with the escalation, why it is sent, and the event as the
/// recipient may see it.
pub fn escalation_body(key: &str, data: &Value, sent_at: &str) -> String {
    let field = |name: &str| data.get(name).unwrap_or(&Value::Null);
    let mut event = serde_json::Map::new();
    event.insert("id".into(), field("eventId").clone());
    event.insert("eventType".into(), field("eventType").clone());
    event.insert("occurredAt".into(), field("occurredAt").clone());
    event.insert("publishedAt".into(), field("publishedAt").clone());
    if let Some(d) = data.get("description") {
        event.insert("description".into(), d.clone());
    }
    event.insert("personReference".into(), field("personReference").clone());
    event.insert("additionalInformation".into(), field("info").clone());
    let mut escalation = field("escalation").clone();
    if let Some(map) = escalation.as_object_mut() {
        map.insert("id".into(), Value::String(key.to_owned()));
        map.insert("route".into(), field("route").clone());
        map.insert("recipient".into(), field("recipient").clone());
        map.insert("sla".into(), field("sla").clone());
        map.insert("marks".into(), field("marks").clone());
        map.insert("withheld".into(), field("withheld").clone());
    }
    let body = serde_json::json!({
        "type": ESCALATION_TYPE,
        "timestamp": sent_at,
        "data": {
            "escalation": escalation,
            "why": field("why"),
            "event": event,
        },
    });
    body.to_string()
}

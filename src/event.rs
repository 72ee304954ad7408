//! A validated event: what an agency told Herald, after it passed the intake checks.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// An event's identity: the publisher's id for it (the AMQP `message_id`) and, for an event
/// taken from the broker, the login that published it (the broker-verified `user_id`).
/// Redeliveries share it; two publishers choosing the same `message_id` do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    publisher: Option<Arc<str>>,
    message_id: Arc<str>,
}

impl EventId {
    /// An id with no publisher: an event read from a file, or in a test.
    pub fn new(id: impl Into<Arc<str>>) -> EventId {
        EventId {
            publisher: None,
            message_id: id.into(),
        }
    }

    /// The id of an event the broker delivered: `message_id` as published by `publisher`.
    pub fn published(publisher: impl Into<Arc<str>>, message_id: impl Into<Arc<str>>) -> EventId {
        EventId {
            publisher: Some(publisher.into()),
            message_id: message_id.into(),
        }
    }

    /// An id for an event read from a file, derived from its bytes so repeated runs agree.
    pub fn from_content(body: &[u8]) -> EventId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(body);
        EventId::new(format!("sha256-{}", hex(&digest[..12])))
    }

    /// The publisher's id for the event (`message_id`).
    pub fn as_str(&self) -> &str {
        &self.message_id
    }

    /// The login that published the event, when it came from the broker.
    pub fn publisher(&self) -> Option<&str> {
        self.publisher.as_deref()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message_id)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.message_id)
    }
}

/// Lower-case hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// An event type Herald has a schema for, e.g. `court.warrant.issued`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct EventType(Arc<str>);

impl EventType {
    pub(crate) fn new(name: &str) -> EventType {
        EventType(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The authority register's event types: a representative is authorised for a person, or no
/// longer is.
pub const REPRESENTATION_GRANTED: &str = "ppud.representation.granted";
pub const REPRESENTATION_WITHDRAWN: &str = "ppud.representation.withdrawn";

/// An event that is well-formed, known and valid against its schema.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub event_type: EventType,
    pub version: u64,
    /// When the fact happened in the world: SLA clocks start here.
    pub occurred_at: DateTime<Utc>,
    /// When the agency published it: tells a late publisher from a late delivery.
    pub published_at: DateTime<Utc>,
    /// The whole validated document.
    pub body: Value,
}

impl Event {
    pub fn info(&self) -> &Value {
        &self.body["additionalInformation"]
    }

    /// The envelope's free-text `description`, if the publisher gave one.
    pub fn description(&self) -> Option<&Value> {
        self.body.get("description")
    }

    /// The person's identifiers as `(type, value)` pairs.
    pub fn identifiers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.body["personReference"]["identifiers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| Some((id["type"].as_str()?, id["value"].as_str()?)))
    }
}

//! The edge where bytes become a trusted [`Event`], or a [`Rejection`] with a reason.
//!
//! Checks run cheapest first: size, UTF-8, nesting depth, JSON syntax, event type and
//! version, then the schema. Nothing here panics on any input.

pub mod asyncapi;
mod message;
mod publishers;
mod schema;

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub(crate) use message::admit;
pub use message::{EXCERPT_CHARS, Message, excerpt};
pub use publishers::Publishers;
pub use schema::{SchemaError, SchemaFile, SchemaSet, Source, Violation};

use crate::config::Limits;
use crate::event::{Event, EventId, REPRESENTATION_GRANTED, REPRESENTATION_WITHDRAWN};

/// Why an event was refused: a short, bounded category fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    TooLarge,
    NotUtf8,
    TooDeep,
    MalformedJson,
    UnknownEventType,
    UnsupportedVersion,
    SchemaViolation,
    /// The person has two identifiers of one type: which one a recipient's authority and a
    /// notification refer to would be a guess.
    DuplicateIdentifier,
    /// No AMQP `message_id`, or an empty one: redelivery could not be recognised.
    MissingMessageId,
    /// No AMQP `user_id`, or a login not allowed to publish this event type.
    UnauthorisedPublisher,
    /// The AMQP `content_type` is not `application/json`.
    WrongContentType,
    /// The routing key is not the body's `eventType`: bindings and the body disagree.
    RoutingKeyMismatch,
    /// The message's headers are larger than `limits.max_header_bytes`.
    HeadersTooLarge,
    /// An authority register event names a representative the directory does not have.
    UnknownRepresentative,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too-large",
            Reason::NotUtf8 => "not-utf8",
            Reason::TooDeep => "too-deep",
            Reason::MalformedJson => "malformed-json",
            Reason::UnknownEventType => "unknown-event-type",
            Reason::UnsupportedVersion => "unsupported-version",
            Reason::SchemaViolation => "schema-violation",
            Reason::DuplicateIdentifier => "duplicate-identifier",
            Reason::MissingMessageId => "missing-message-id",
            Reason::UnauthorisedPublisher => "unauthorised-publisher",
            Reason::WrongContentType => "wrong-content-type",
            Reason::RoutingKeyMismatch => "routing-key-mismatch",
            Reason::HeadersTooLarge => "headers-too-large",
            Reason::UnknownRepresentative => "unknown-representative",
        }
    }

    /// Every reason, for metrics that start each series at zero and for documentation tests.
    pub const ALL: [Reason; 14] = [
        Reason::TooLarge,
        Reason::NotUtf8,
        Reason::TooDeep,
        Reason::MalformedJson,
        Reason::UnknownEventType,
        Reason::UnsupportedVersion,
        Reason::SchemaViolation,
        Reason::DuplicateIdentifier,
        Reason::MissingMessageId,
        Reason::UnauthorisedPublisher,
        Reason::WrongContentType,
        Reason::RoutingKeyMismatch,
        Reason::HeadersTooLarge,
        Reason::UnknownRepresentative,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event Herald will not route, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub reason: Reason,
    /// One line for a person; never quotes personal data from the event.
    pub detail: String,
    /// Each schema problem with its JSON pointer (may be empty for non-schema reasons).
    pub violations: Vec<Violation>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
            violations: Vec::new(),
        }
    }

    fn at(reason: Reason, pointer: &str, message: String) -> Rejection {
        Rejection {
            reason,
            detail: message.clone(),
            violations: vec![Violation {
                pointer: pointer.into(),
                message,
            }],
        }
    }

    fn schema(mut violations: Vec<Violation>) -> Rejection {
        const SHOWN: usize = 5;
        if violations.is_empty() {
            // Only reached when the envelope passes but the event could still not be read.
            violations.push(Violation {
                pointer: String::new(),
                message: "the event cannot be read as the envelope describes".into(),
            });
        }
        let mut detail = format!("{} schema violation(s): ", violations.len());
        let shown: Vec<String> = violations
            .iter()
            .take(SHOWN)
            .map(ToString::to_string)
            .collect();
        detail.push_str(&shown.join("; "));
        if violations.len() > SHOWN {
            detail.push_str("; ...");
        }
        Rejection {
            reason: Reason::SchemaViolation,
            detail,
            violations,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Turns bodies into events.
#[derive(Debug)]
pub struct Intake {
    schemas: SchemaSet,
    max_bytes: usize,
    max_depth: usize,
    /// The directory's legal representatives: the only ones a register event may name.
    representatives: HashSet<String>,
}

impl Intake {
    pub fn new(schemas: SchemaSet, limits: &Limits) -> Intake {
        Intake {
            schemas,
            max_bytes: usize::try_from(limits.max_event_bytes.as_u64()).unwrap_or(usize::MAX),
            max_depth: limits.max_depth,
            representatives: HashSet::new(),
        }
    }

    /// The legal representatives authority register events may name.
    pub fn with_representatives(mut self, ids: impl IntoIterator<Item = String>) -> Intake {
        self.representatives = ids.into_iter().collect();
        self
    }

    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// Checks a body and returns the event it carries.
    pub fn accept(&self, body: &[u8], id: EventId) -> Result<Event, Rejection> {
        if body.len() > self.max_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "event is {} bytes; the limit is {} bytes",
                    body.len(),
                    self.max_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            Rejection::new(
                Reason::NotUtf8,
                format!(
                    "body is not UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        if let Some(offset) = too_deep(text.as_bytes(), self.max_depth) {
            return Err(Rejection::new(
                Reason::TooDeep,
                format!(
                    "JSON nests deeper than {} levels (at byte offset {offset})",
                    self.max_depth
                ),
            ));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                Reason::MalformedJson,
                format!(
                    "not valid JSON: {} at line {} column {}",
                    describe_json_error(&e),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        self.check(doc, id)
    }

    fn check(&self, doc: Value, id: EventId) -> Result<Event, Rejection> {
        let envelope_failure = |doc: &Value| Rejection::schema(self.schemas.check_envelope(doc));
        let Some(name) = doc.get("eventType").and_then(Value::as_str) else {
            return Err(envelope_failure(&doc));
        };
        let Some(event_type) = self.schemas.event_type(name) else {
            // Echo the value only when it looks like an event type: it could be anything.
            let looks_like_a_type = name.len() <= 80
                && name.split('.').count() >= 2
                && name.split('.').all(|p| {
                    p.starts_with(|c: char| c.is_ascii_lowercase())
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                });
            let message = if looks_like_a_type {
                format!("unknown event type \"{name}\"")
            } else {
                "eventType is not an event type Herald knows".to_owned()
            };
            return Err(Rejection::at(
                Reason::UnknownEventType,
                "/eventType",
                message,
            ));
        };
        let Some(version) = doc.get("version").and_then(whole_number) else {
            return Err(envelope_failure(&doc));
        };
        let Some(violations) = self.schemas.check_event(event_type, version, &doc) else {
            let supported: Vec<String> = self
                .schemas
                .versions(event_type)
                .iter()
                .map(u64::to_string)
                .collect();
            return Err(Rejection::at(
                Reason::UnsupportedVersion,
                "/version",
                format!(
                    "version {version} of {event_type} is not supported (supported: {})",
                    supported.join(", ")
                ),
            ));
        };
        if !violations.is_empty() {
            return Err(Rejection::schema(violations));
        }
        duplicate_identifier(&doc)?;
        if matches!(
            event_type.as_str(),
            REPRESENTATION_GRANTED | REPRESENTATION_WITHDRAWN
        ) {
            self.representation(&doc)?;
        }
        let occurred_at = timestamp(&doc, "occurredAt")?;
        let published_at = timestamp(&doc, "publishedAt")?;
        Ok(Event {
            id,
            event_type: event_type.clone(),
            version,
            occurred_at,
            published_at,
            body: doc,
        })
    }
}

impl Intake {
    /// What the schema cannot say of an authority register event: the representative is in
    /// the directory, and a grant does not end before it begins.
    fn representation(&self, doc: &Value) -> Result<(), Rejection> {
        let info = &doc["additionalInformation"];
        let representative = info["representative"].as_str().unwrap_or_default();
        if !self.representatives.contains(representative) {
            return Err(Rejection::at(
                Reason::UnknownRepresentative,
                "/additionalInformation/representative",
                "no legal representative with this id in the directory (routes.toml); once it \
                 is added, replay the event from herald.rejected"
                    .into(),
            ));
        }
        // Both are dates by the schema: YYYY-MM-DD compares as text.
        if let (Some(from), Some(until)) =
            (info["effectiveFrom"].as_str(), info["validUntil"].as_str())
            && until < from
        {
            return Err(Rejection::at(
                Reason::SchemaViolation,
                "/additionalInformation/validUntil",
                "validUntil is before effectiveFrom: the authority would end before it begins"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A person has at most one identifier of each type: with two NOMS numbers, which person a
/// recipient's authority and the notification's text refer to would be a guess.
fn duplicate_identifier(doc: &Value) -> Result<(), Rejection> {
    let identifiers = doc["personReference"]["identifiers"].as_array();
    let mut seen: Vec<&str> = Vec::new();
    for (i, id) in identifiers.into_iter().flatten().enumerate() {
        // The schema allows only NOMS, PNC and CRN here, so the type is safe to repeat.
        let kind = id["type"].as_str().unwrap_or_default();
        if seen.contains(&kind) {
            return Err(Rejection::at(
                Reason::DuplicateIdentifier,
                &format!("/personReference/identifiers/{i}"),
                format!(
                    "a second {kind} identifier: a person has at most one identifier of each type"
                ),
            ));
        }
        seen.push(kind);
    }
    Ok(())
}

/// A JSON number that is a whole number (`1`, or `1.0` as JSON Schema counts it), as u64.
fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        (f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f)).then_some(f as u64)
    })
}

fn timestamp(doc: &Value, field: &str) -> Result<DateTime<Utc>, Rejection> {
    doc.get(field)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            Rejection::schema(vec![Violation {
                pointer: format!("/{field}"),
                message: schema::DATE_TIME_MESSAGE.into(),
            }])
        })
}

/// The category of a JSON syntax error, without the text around it.
fn describe_json_error(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unsupported data",
        serde_json::error::Category::Io => "read error",
    }
}

/// The byte offset where arrays and objects nest deeper than `max`, if they do.
/// Brackets inside strings do not count.
fn too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = 0;
    // Outside strings: the next quote or bracket. Inside: skip to the closing quote, past
    // escaped characters. Most of an event is inside strings, so most bytes are skipped by
    // memchr rather than looked at one by one.
    while let Some(i) = bytes[at..]
        .iter()
        .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))
    {
        let offset = at + i;
        at = offset + 1;
        match bytes[offset] {
            b'"' => loop {
                let found = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
                if bytes[found] == b'\\' {
                    at = found + 2;
                    if at > bytes.len() {
                        return None;
                    }
                } else {
                    at = found + 1;
                    break;
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(offset);
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::too_deep;
    use proptest::prelude::*;

    /// Byte by byte: what `too_deep` must agree with.
    fn too_deep_slowly(bytes: &[u8], max: usize) -> Option<usize> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for (offset, &b) in bytes.iter().enumerate() {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return Some(offset);
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        None
    }

    proptest! {
        #[test]
        fn skipping_strings_finds_what_reading_every_byte_finds(
            parts in prop::collection::vec(prop_oneof![
                Just(&b"{"[..]), Just(&b"}"[..]), Just(&b"["[..]), Just(&b"]"[..]),
                Just(&b"\""[..]), Just(&b"\\"[..]), Just(&b"a"[..]), Just(&b","[..]),
            ], 0..60),
            max in 0usize..6,
        ) {
            let bytes = parts.concat();
            prop_assert_eq!(too_deep(&bytes, max), too_deep_slowly(&bytes, max));
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(too_deep(br#"{"a":[{"b":1}]}"#, 3), None);
        assert_eq!(too_deep(br#"{"a":[{"b":[1]}]}"#, 3), Some(11));
        assert_eq!(too_deep(br#"{"a":"[[[[[[\"[[["}"#, 1), None);
        assert_eq!(too_deep(br#"{"a":"\\", "b":[[1]]}"#, 2), Some(16));
        assert_eq!(too_deep(br#"{"a":"unterminated \"#, 1), None);
        assert_eq!(too_deep(br#"{"a":"\\\"[[["}"#, 1), None);
    }
}

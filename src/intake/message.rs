//! Admission: whether a message from the broker may be routed at all. The same gate for an
//! event taken from the events queue and for one an operator replays, so a replayed event
//! passes exactly the checks a fresh one does.
//!
//! The message's own properties are checked first (headers, id, publisher, content type),
//! then the body, then whether the body agrees with the routing key and the publisher may
//! send its type.

use super::{Intake, Publishers, Reason, Rejection};
use crate::event::{Event, EventId};

/// What admission looks at in an AMQP message, read off it at the edge.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub body: &'a [u8],
    pub routing_key: &'a str,
    pub message_id: Option<&'a str>,
    /// The broker-verified login of the publisher.
    pub user_id: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// The encoded size of the message's headers table.
    pub header_bytes: usize,
}

/// Longest excerpt of publisher-chosen text (a routing key, a login) put in a rejection.
pub const EXCERPT_CHARS: usize = 64;

/// Publisher-chosen text as a rejection may repeat it: at most [`EXCERPT_CHARS`] characters,
/// with control characters (line breaks, escapes) shown as `?`, so a reason or a header can
/// neither grow without bound nor forge a line in a log or a terminal.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Whether a `content_type` is JSON (`application/json`, parameters such as a charset allowed).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn admit(
    intake: &Intake,
    publishers: &Publishers,
    max_header_bytes: usize,
    m: &Message<'_>,
) -> Result<Event, Rejection> {
    if m.header_bytes > max_header_bytes {
        return Err(Rejection::new(
            Reason::HeadersTooLarge,
            format!(
                "the message's headers take {} bytes; the limit is {max_header_bytes} bytes",
                m.header_bytes
            ),
        ));
    }
    let Some(id) = m.message_id.filter(|id| !id.trim().is_empty()) else {
        return Err(Rejection::new(
            Reason::MissingMessageId,
            "the message has no message_id property, or an empty one; give every event a unique id so a redelivery is recognised",
        ));
    };
    let Some(user) = m.user_id.filter(|u| !u.is_empty()) else {
        return Err(Rejection::new(
            Reason::UnauthorisedPublisher,
            "the message has no user_id property, so the broker has not vouched for its publisher",
        ));
    };
    match m.content_type {
        Some(t) if is_json(t) => {}
        Some(t) => {
            return Err(Rejection::new(
                Reason::WrongContentType,
                format!(
                    "content_type is \"{}\"; events are application/json",
                    excerpt(t)
                ),
            ));
        }
        None => {
            return Err(Rejection::new(
                Reason::WrongContentType,
                "the message has no content_type; events are application/json",
            ));
        }
    }
    let event = intake.accept(m.body, EventId::published(user, id))?;
    if m.routing_key != event.event_type.as_str() {
        return Err(Rejection::new(
            Reason::RoutingKeyMismatch,
            format!(
                "the routing key \"{}\" is not the event's eventType {}; publish with routing key = eventType",
                excerpt(m.routing_key),
                event.event_type
            ),
        ));
    }
    if !publishers.allows(user, event.event_type.as_str()) {
        return Err(Rejection::new(
            Reason::UnauthorisedPublisher,
            format!(
                "user {} may not publish {}",
                excerpt(user),
                event.event_type
            ),
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_free_of_control_characters() {
        assert_eq!(excerpt("court"), "court");
        assert_eq!(excerpt("a\nb\x1b[31m"), "a?b?[31m");
        let long = "x".repeat(1000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(
            excerpt(&"é".repeat(EXCERPT_CHARS)),
            "é".repeat(EXCERPT_CHARS)
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json(""));
    }
}

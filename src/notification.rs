//! The words of a notification, shared by every stage: how it travels, its priority, its
//! idempotency key, its deadline, its rendered content, and every reason one could not be
//! made or may not be.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::event::EventId;
use crate::sla::Deadline;

/// How a notification travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        match text {
            "email" => Some(Channel::Email),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which notifications go first when Herald is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Routine,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Routine => "routine",
            Priority::Urgent => "urgent",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "routine" => Some(Priority::Routine),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
}

/// The same on every attempt of one notification: a recipient uses it to drop duplicates
/// (`webhook-id`, the email `Message-ID`). Derived from the event's publisher and id, the route,
/// the recipient and the channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn derive(
        event: &EventId,
        route: &str,
        recipient: &str,
        channel: Channel,
    ) -> IdempotencyKey {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        // The publisher comes first when there is one, so two publishers' events with the same
        // message_id never share a key. Length-prefixed parts: no two different lists of parts
        // (of whatever number) hash the same input, and an event with no publisher (read from
        // a file) keeps the key it always had.
        for part in event.publisher().into_iter().chain([
            event.as_str(),
            route,
            recipient,
            channel.as_str(),
        ]) {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let mut key = *b"msg_00000000000000000000000000000000";
        // 16 bytes make 32 hex digits, exactly the room after the prefix.
        let _ = hex::encode_to_slice(&h.finalize()[..16], &mut key[4..]);
        IdempotencyKey(String::from_utf8_lossy(&key).into_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The deadline of a notification, or the lack of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sla {
    /// The route promises nothing: delivery is counted as untracked.
    Untracked,
    /// The route's rule, and the deadline it gives for this event.
    Due {
        rule: String,
        #[serde(flatten)]
        deadline: Deadline,
    },
    /// The route has a rule but this event does not allow computing it (the reason says why);
    /// the notification is still delivered.
    Unknown { rule: String, reason: String },
}

impl Sla {
    pub fn deadline(&self) -> Option<&Deadline> {
        match self {
            Sla::Due { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    pub fn short_notice(&self) -> bool {
        self.deadline().is_some_and(|d| d.short_notice)
    }
}

/// Rendered content for one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Content {
    Email {
        /// Parsed once, when the directory was built.
        to: Vec<lettre::Address>,
        subject: String,
        text: String,
        html: String,
    },
    Webhook {
        url: String,
        /// The exact JSON bytes to send (and sign).
        body: String,
    },
}

impl Content {
    pub fn channel(&self) -> Channel {
        match self {
            Content::Email { .. } => Channel::Email,
            Content::Webhook { .. } => Channel::Webhook,
        }
    }
}

/// A notification that a matching route wanted but could not make. Each is reported; none is
/// silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Problem {
    /// A recipient pattern gave an id that is not in the directory, or could not be filled.
    UnknownRecipient {
        route: String,
        pattern: String,
        reason: String,
    },
    /// A `<class>:*` selector found nobody: the directory has no recipient of that class.
    NoRecipients { route: String, selector: String },
    /// The recipient has none of the route's channels.
    NoChannel { route: String, recipient: String },
    /// The template failed for this event; the reason names the template and field.
    RenderFailed {
        route: String,
        recipient: String,
        channel: Channel,
        reason: String,
    },
}

impl Problem {
    /// A short category for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::UnknownRecipient { .. } => "unknown-recipient",
            Problem::NoRecipients { .. } => "no-recipients",
            Problem::NoChannel { .. } => "no-channel",
            Problem::RenderFailed { .. } => "render-failed",
        }
    }

    pub fn route(&self) -> &str {
        match self {
            Problem::UnknownRecipient { route, .. }
            | Problem::NoRecipients { route, .. }
            | Problem::NoChannel { route, .. }
            | Problem::RenderFailed { route, .. } => route,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownRecipient {
                route,
                pattern,
                reason,
            } => {
                write!(f, "route {route}: recipient {pattern}: {reason}")
            }
            Problem::NoRecipients { route, selector } => {
                write!(f, "route {route}: {selector} selected no recipient")
            }
            Problem::NoChannel { route, recipient } => {
                write!(
                    f,
                    "route {route}: {recipient} has none of the route's channels"
                )
            }
            Problem::RenderFailed {
                route,
                recipient,
                channel,
                reason,
            } => {
                write!(f, "route {route}: {channel} to {recipient}: {reason}")
            }
        }
    }
}

/// Why a legal representative may not be told about a person now: what the authority register
/// (or routes.toml's `acts_for`) holds for the pair. `event` is the `message_id` of the
/// register event that said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "standing", rename_all = "kebab-case")]
pub enum Unauthorised {
    /// No authority for this person was ever recorded.
    NeverShown,
    /// A grant is recorded that takes effect only from `from`.
    NotYet { from: NaiveDate, event: String },
    /// The authority was withdrawn from `from`.
    Withdrawn { from: NaiveDate, event: String },
    /// The authority held until the end of `last_day`.
    Expired { last_day: NaiveDate, event: String },
}

impl fmt::Display for Unauthorised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unauthorised::NeverShown => {
                f.write_str("has not shown authority to act for this person")
            }
            Unauthorised::NotYet { from, event } => write!(
                f,
                "is authorised for this person only from {from} (register event {event})"
            ),
            Unauthorised::Withdrawn { from, event } => write!(
                f,
                "had its authority for this person withdrawn from {from} (register event {event})"
            ),
            Unauthorised::Expired { last_day, event } => write!(
                f,
                "had authority for this person until {last_day} only (register event {event})"
            ),
        }
    }
}

/// A notification a route did not make because the recipient may not hear about this person:
/// the authority rule at work, not a failure. Counted, never parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Skip {
    /// A legal representative the route names is not authorised for this person now.
    NotAuthorised {
        route: String,
        recipient: String,
        why: Unauthorised,
    },
    /// `legal-rep:*`: no representative in the directory acts for this person.
    NoAuthorisedRecipient { route: String, selector: String },
}

impl Skip {
    /// A short category for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Skip::NotAuthorised { .. } => "not-authorised",
            Skip::NoAuthorisedRecipient { .. } => "no-authorised-recipient",
        }
    }

    pub fn route(&self) -> &str {
        match self {
            Skip::NotAuthorised { route, .. } | Skip::NoAuthorisedRecipient { route, .. } => route,
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotAuthorised {
                route,
                recipient,
                why,
            } => write!(f, "route {route}: {recipient} {why}; not told"),
            Skip::NoAuthorisedRecipient { route, selector } => write!(
                f,
                "route {route}: {selector}: no one in the directory acts for this person; no one told"
            ),
        }
    }
}

/// How a notification's delivery stood at the end of one handling: the value of
/// `herald_notifications_total`'s `outcome` label and of the log line's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryOutcome {
    /// The recipient has it.
    Delivered,
    /// It failed transiently; a retry is durably scheduled.
    Retrying,
    /// It failed for good and is parked.
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

/// Why a notification was parked in the failed queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParkReason {
    /// A permanent refusal (410 Gone, another 4xx, SMTP 5xx, no secret...).
    DeliveryFailed,
    /// Transient failures until the retry schedule or `retry.max_age` ran out.
    RetriesExhausted,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::DeliveryFailed => "delivery-failed",
            ParkReason::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// How an escalation before a deadline ended: the `outcome` label of
/// `herald_escalations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationOutcome {
    /// The escalation recipient has it.
    Sent,
    /// Refused for good, or still failing when the deadline came.
    Failed,
    /// The notification was delivered before the escalation was due.
    NotNeeded,
}

impl EscalationOutcome {
    pub const ALL: [EscalationOutcome; 3] = [
        EscalationOutcome::Sent,
        EscalationOutcome::Failed,
        EscalationOutcome::NotNeeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EscalationOutcome::Sent => "sent",
            EscalationOutcome::Failed => "failed",
            EscalationOutcome::NotNeeded => "not_needed",
        }
    }
}

/// A webhook endpoint's standing as its recipient's contact hears of it (docs/ledger.md,
/// `endpoint_changes`). Each change is recorded once, whatever the number of instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// It answered HTTP 410 Gone, or an operator disabled it: nothing is sent to it.
    Disabled,
    /// Its circuit has been open, with no answer between, for longer than
    /// `[webhook] contact_after`.
    Unreachable,
    /// It works (again): it answered, or an operator enabled it.
    Working,
}

impl Standing {
    pub const ALL: [Standing; 3] = [Standing::Disabled, Standing::Unreachable, Standing::Working];

    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Disabled => "disabled",
            Standing::Unreachable => "unreachable",
            Standing::Working => "working",
        }
    }

    pub fn parse(text: &str) -> Option<Standing> {
        Standing::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Disabled or unreachable: its notifications go by email where their route allows it.
    pub fn is_down(self) -> bool {
        self != Standing::Working
    }
}

/// Why an endpoint's standing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StandingCause {
    /// It answered HTTP 410 Gone.
    Gone,
    /// An operator disabled it (console or API).
    OperatorDisabled,
    /// Its circuit stayed open for longer than `[webhook] contact_after`.
    Breaker,
    /// It answered a request again.
    Answered,
    /// An operator enabled it again.
    OperatorEnabled,
}

impl StandingCause {
    pub const ALL: [StandingCause; 5] = [
        StandingCause::Gone,
        StandingCause::OperatorDisabled,
        StandingCause::Breaker,
        StandingCause::Answered,
        StandingCause::OperatorEnabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StandingCause::Gone => "http-410",
            StandingCause::OperatorDisabled => "operator-disabled",
            StandingCause::Breaker => "breaker-open",
            StandingCause::Answered => "answered",
            StandingCause::OperatorEnabled => "operator-enabled",
        }
    }

    pub fn parse(text: &str) -> Option<StandingCause> {
        StandingCause::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

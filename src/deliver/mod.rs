//! Delivery: one folder per channel. Each turns a rendered notification into a message on
//! the wire and says whether a failure is worth retrying.

pub mod email;
pub mod guard;
pub mod webhook;

use std::fmt;
use std::time::Duration;

use crate::notification::Content;
use crate::render::Notification;

/// Why a delivery attempt did not succeed. The reason names a status or an error kind, never a
/// person or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying: the recipient or the network may recover.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying would fail the same way: park it for an operator.
    Permanent { reason: String },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient { .. })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transient { reason, .. } => write!(f, "transient: {reason}"),
            Failure::Permanent { reason } => write!(f, "permanent: {reason}"),
        }
    }
}

/// What a channel needs to send one notification: the same on the first attempt and on every
/// retry.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The idempotency key (`webhook-id`, the email `Message-ID`).
    pub key: &'a str,
    /// The recipient's directory id (its webhook secret is looked up by it).
    pub recipient: &'a str,
    pub content: &'a Content,
    /// Urgent notifications (short notice, a PPO's failure-to-appear warrant) take the
    /// endpoint's fast lane, so routine traffic queued for the endpoint cannot hold them up.
    pub urgent: bool,
}

impl<'a> From<&'a Notification> for Outgoing<'a> {
    fn from(n: &'a Notification) -> Self {
        Outgoing {
            key: n.key.as_str(),
            recipient: n.recipient.id.as_str(),
            urgent: n.priority == crate::notification::Priority::Urgent,
            content: &n.content,
        }
    }
}

/// Both channels, behind the per-endpoint guard.
pub struct Deliverer {
    pub email: email::EmailSender,
    pub webhook: webhook::WebhookSender,
    pub guard: guard::Guard,
}

impl Deliverer {
    /// One attempt; the state is that of the endpoint (recipient and channel) afterwards.
    /// `fresh` first clears the endpoint's circuit and 410 stop (an operator's replay).
    pub async fn deliver(
        &self,
        out: Outgoing<'_>,
        fresh: bool,
    ) -> (Result<(), Failure>, guard::State) {
        let endpoint = format!("{}/{}", out.recipient, out.content.channel());
        if fresh {
            self.guard.reset(&endpoint);
        }
        let result = match self.guard.enter(&endpoint, out.urgent).await {
            Err(refused) => return (Err(refused), self.guard.state(&endpoint)),
            Ok(_pass) => match out.content {
                Content::Email { .. } => self.email.send(out).await,
                Content::Webhook { .. } => self.webhook.send(out).await,
            },
        };
        let state = self.guard.record(&endpoint, &result);
        (result, state)
    }
}

//! Delivery: one folder per channel. Each turns a rendered notification into a message on
//! the wire and says whether a failure is worth retrying.

pub mod email;
pub mod guard;
pub mod rate;
pub mod webhook;

use std::fmt;
use std::time::Duration;

use crate::notification::Content;
use crate::render::Notification;

/// What stopped one delivery attempt: one word per cause, from the transport to the circuit
/// breaker, the retry policy, the parked record, the log line and the metric label (whose
/// values come only from [`FailureKind::as_str`], so a label is never free text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The request did not finish within `webhook.timeout`.
    HttpTimeout,
    /// No connection could be opened (DNS, TCP, TLS).
    HttpConnect,
    /// The connection broke before an answer came.
    HttpRequest,
    /// 408, 429 or 5xx: the recipient may recover.
    HttpRetryable,
    /// 410 Gone: the endpoint asked not to be sent to again.
    HttpGone,
    /// Any other status that is not 2xx (3xx is not followed; 4xx is the request's fault).
    HttpRefused,
    /// No signing secret for the endpoint.
    NoSecret,
    /// The webhook URL cannot be used.
    BadUrl,
    /// The request or email cannot be built from what was rendered.
    BadMessage,
    /// An email address of the recipient cannot be parsed.
    BadAddress,
    /// SMTP 4xx: the relay may accept it later.
    SmtpTransient,
    /// SMTP 5xx: the relay refuses it.
    SmtpPermanent,
    /// No SMTP connection, or it broke or timed out.
    SmtpConnect,
    /// The `.eml` could not be written to the outbox folder.
    Outbox,
    /// Herald stopped sending to the endpoint after a 410 Gone.
    EndpointDisabled,
    /// The endpoint kept failing: its circuit is open for a while.
    CircuitOpen,
    /// The endpoint is at its limit of requests in flight.
    EndpointBusy,
    /// More is waiting for the endpoint (or the email relay) than its rate limit lets through
    /// in the time a notification may wait.
    RateLimited,
    /// The notification is for the other channel (a record written by hand).
    WrongChannel,
}

impl FailureKind {
    pub const ALL: [FailureKind; 19] = [
        FailureKind::HttpTimeout,
        FailureKind::HttpConnect,
        FailureKind::HttpRequest,
        FailureKind::HttpRetryable,
        FailureKind::HttpGone,
        FailureKind::HttpRefused,
        FailureKind::NoSecret,
        FailureKind::BadUrl,
        FailureKind::BadMessage,
        FailureKind::BadAddress,
        FailureKind::SmtpTransient,
        FailureKind::SmtpPermanent,
        FailureKind::SmtpConnect,
        FailureKind::Outbox,
        FailureKind::EndpointDisabled,
        FailureKind::CircuitOpen,
        FailureKind::EndpointBusy,
        FailureKind::RateLimited,
        FailureKind::WrongChannel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::HttpTimeout => "http-timeout",
            FailureKind::HttpConnect => "http-connect",
            FailureKind::HttpRequest => "http-request",
            FailureKind::HttpRetryable => "http-retryable",
            FailureKind::HttpGone => "http-gone",
            FailureKind::HttpRefused => "http-refused",
            FailureKind::NoSecret => "no-secret",
            FailureKind::BadUrl => "bad-url",
            FailureKind::BadMessage => "bad-message",
            FailureKind::BadAddress => "bad-address",
            FailureKind::SmtpTransient => "smtp-transient",
            FailureKind::SmtpPermanent => "smtp-permanent",
            FailureKind::SmtpConnect => "smtp-connect",
            FailureKind::Outbox => "outbox",
            FailureKind::EndpointDisabled => "endpoint-disabled",
            FailureKind::CircuitOpen => "circuit-open",
            FailureKind::EndpointBusy => "endpoint-busy",
            FailureKind::RateLimited => "rate-limited",
            FailureKind::WrongChannel => "wrong-channel",
        }
    }

    /// Whether trying again later may succeed: the retry policy's one question.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::HttpTimeout
                | FailureKind::HttpConnect
                | FailureKind::HttpRequest
                | FailureKind::HttpRetryable
                | FailureKind::SmtpTransient
                | FailureKind::SmtpConnect
                | FailureKind::Outbox
                | FailureKind::CircuitOpen
                | FailureKind::EndpointBusy
                | FailureKind::RateLimited
        )
    }

    /// Whether it counts against the endpoint's circuit: a failure of the endpoint, not of
    /// Herald's own limits or of the message.
    pub fn counts_against_endpoint(self) -> bool {
        self.is_transient()
            && !matches!(
                self,
                FailureKind::CircuitOpen | FailureKind::EndpointBusy | FailureKind::RateLimited
            )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery attempt did not succeed: its kind, the status or reply code where there is
/// one, a short detail, and the transport's own error for the log. Neither the detail nor the
/// source names a person or an address.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    pub kind: FailureKind,
    /// The HTTP status or SMTP reply code.
    pub code: Option<u16>,
    /// What an operator reads: "HTTP 503", "no signing secret: set HERALD_WEBHOOK_SECRET_X".
    pub detail: String,
    /// When the recipient asked to be tried again (`Retry-After`).
    pub retry_after: Option<Duration>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            code: None,
            detail: detail.into(),
            retry_after: None,
            source: None,
        }
    }

    pub fn with_code(mut self, code: u16) -> Failure {
        self.code = Some(code);
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Failure {
        self.retry_after = after;
        self
    }

    pub fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        self.source = Some(Box::new(source));
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The detail with the causes the transport gave, for a log line.
    pub fn chain(&self) -> String {
        let mut text = self.detail.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            text.push_str(": ");
            text.push_str(&e.to_string());
            next = e.source();
        }
        text
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

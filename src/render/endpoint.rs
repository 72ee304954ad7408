//! The email a recipient's `contact` gets when its webhook endpoint changes standing
//! (disabled, unreachable, working again), from the `endpoint-state` template folder so an
//! agency can word it. Its data is plain and impersonal: which endpoint (the recipient's id
//! and name, the URL's host only), the new standing, since when, why, and what happens to the
//! notifications meanwhile. Never a person, an event or a notification's content. Pure: the
//! time is given.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{EmailParts, Renderer};
use crate::notification::{Channel, Standing, StandingCause};
use crate::route::{Recipient, Route};

/// The template folder the contact's email is rendered from.
pub const TEMPLATE: &str = "endpoint-state";

/// One change of an endpoint's standing, as its contact is told of it.
#[derive(Debug, Clone, Copy)]
pub struct EndpointNotice<'a> {
    pub recipient: &'a Recipient,
    pub standing: Standing,
    pub cause: StandingCause,
    pub since: DateTime<Utc>,
    /// `[webhook] contact_after`, in whole minutes (at least 1): how long the circuit had
    /// been open when the contact is told the endpoint is unreachable.
    pub open_minutes: u64,
}

impl EndpointNotice<'_> {
    /// What the template sees (docs/configuration.md lists it): no personal data.
    pub fn data(&self, routes: &[Route]) -> Value {
        let r = self.recipient;
        let host = r
            .webhook
            .as_ref()
            .and_then(|w| url::Url::parse(&w.url).ok())
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        // The routes that can reach this recipient by webhook: those that also allow email go
        // by email meanwhile (when the recipient has an address); the others wait.
        let mut by_email = Vec::new();
        let mut waiting = Vec::new();
        for route in routes.iter().filter(|route| {
            route.channels.contains(&Channel::Webhook)
                && route.to.iter().any(|s| s.class() == r.class)
        }) {
            if route.channels.contains(&Channel::Email) && !r.email.is_empty() {
                by_email.push(route.name.to_string());
            } else {
                waiting.push(route.name.to_string());
            }
        }
        let cause = self.cause;
        json!({
            "recipient": {"id": r.id.as_str(), "name": r.name, "class": r.class.as_str()},
            "endpoint": {"host": host, "channel": Channel::Webhook.as_str()},
            "state": self.standing.as_str(),
            "disabled": self.standing == Standing::Disabled,
            "unreachable": self.standing == Standing::Unreachable,
            "working": self.standing == Standing::Working,
            "since": self.since.to_rfc3339_opts(SecondsFormat::Secs, true),
            "cause": cause.as_str(),
            "gone": cause == StandingCause::Gone,
            "byOperator": matches!(cause, StandingCause::OperatorDisabled | StandingCause::OperatorEnabled),
            "breaker": cause == StandingCause::Breaker,
            "answered": cause == StandingCause::Answered,
            "minutes": self.open_minutes.max(1),
            "byEmail": by_email,
            "waiting": waiting,
        })
    }
}

impl Renderer {
    /// The contact's email for one change of an endpoint's standing.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn endpoint_notice(
        &self,
        notice: &EndpointNotice<'_>,
        routes: &[Route],
    ) -> Result<EmailParts, String> {
        self.email_of(TEMPLATE, &notice.data(routes), &[])
    }
}

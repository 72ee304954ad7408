//! The routing engine: for a validated event, which routes match, who they name, what each
//! recipient may see, the deadline, and the rendered notification for each channel.
//!
//! Routes are tried in order; the first that matches wins unless it says `continue = true`.

mod matcher;
mod recipient;
mod redact;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

pub use matcher::Matcher;
pub use recipient::{
    Directory, Recipient, RecipientClass, RecipientId, Selected, Selector, Webhook,
};
pub use redact::Redaction;

use crate::config::RouteConfig;
use crate::event::{Event, EventType};
use crate::intake::SchemaSet;
use crate::notification::{
    Channel, Content, IdempotencyKey, Notification, Priority, Problem, Routing, Sla,
};
use crate::render::payload::{WebhookView, webhook_body};
use crate::render::{Data, Renderer};
use crate::sla::{Calendar, SlaRule};

/// The marking added to short-notice notifications.
pub const SHORT_NOTICE: &str = "SHORT NOTICE";

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub events: HashSet<EventType>,
    pub matchers: Vec<Matcher>,
    pub to: Vec<Selector>,
    pub channels: Vec<Channel>,
    pub template: String,
    pub sla: Option<SlaRule>,
    pub priority: Priority,
    pub mark: Option<String>,
    pub continue_matching: bool,
}

impl Route {
    /// Compiles one route; errors are plain messages the caller prefixes with the route name.
    pub fn compile(
        config: &RouteConfig,
        schemas: &SchemaSet,
        directory: &Directory,
        renderer: Option<&Renderer>,
    ) -> Result<Route, Vec<String>> {
        let mut errors = Vec::new();
        let mut events = HashSet::new();
        for name in &config.events {
            match schemas.event_type(name) {
                Some(t) => {
                    events.insert(t.clone());
                }
                None => errors.push(format!("events: \"{name}\" is not a known event type")),
            }
        }
        if config.events.is_empty() {
            errors.push("events: lists no event type".into());
        }
        let matchers = collect(&config.matchers, Matcher::parse, &mut errors);
        let to = collect(&config.to, |t| Selector::parse(t, directory), &mut errors);
        if config.to.is_empty() {
            errors.push("to: names no recipient".into());
        }
        let channels = collect(
            &config.channels,
            |c| {
                Channel::parse(c)
                    .ok_or_else(|| format!("channels: \"{c}\" is not email or webhook"))
            },
            &mut errors,
        );
        if config.channels.is_empty() {
            errors.push("channels: lists no channel".into());
        }
        if renderer.is_some_and(|r| !r.has(&config.template)) {
            errors.push(format!(
                "template: \"{}\" has no folder under templates/ (subject.hbs, text.hbs, html.hbs)",
                config.template
            ));
        }
        let sla = match config.sla.as_deref().map(SlaRule::parse).transpose() {
            Ok(sla) => sla,
            Err(e) => {
                errors.push(format!("sla: {e}"));
                None
            }
        };
        let priority = match config.priority.as_deref() {
            None => Priority::Routine,
            Some(p) => Priority::parse(p).unwrap_or_else(|| {
                errors.push(format!("priority: \"{p}\" is not routine or urgent"));
                Priority::Routine
            }),
        };
        if config
            .mark
            .as_ref()
            .is_some_and(|mark| mark.trim().is_empty() || mark.contains(['\r', '\n', '[', ']']))
        {
            errors.push("mark: one line of text without brackets".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Route {
            name: config.name.as_str().into(),
            events,
            matchers,
            to,
            channels,
            template: config.template.clone(),
            sla,
            priority,
            mark: config.mark.clone(),
            continue_matching: config.continue_matching,
        })
    }

    /// Whether the route applies to this event.
    pub fn matches(&self, event: &Event) -> bool {
        self.events.contains(&event.event_type)
            && self.matchers.iter().all(|m| m.matches(event.info()))
    }
}

fn collect<T>(
    items: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    errors: &mut Vec<String>,
) -> Vec<T> {
    items
        .iter()
        .filter_map(|i| parse(i).map_err(|e| errors.push(e)).ok())
        .collect()
}

/// Everything needed to turn an event into notifications.
#[derive(Debug)]
pub struct Engine {
    pub routes: Vec<Route>,
    pub directory: Directory,
    pub redaction: Redaction,
    pub calendar: Calendar,
    pub renderer: Renderer,
}

/// The event's data as one class of recipient may see it.
struct View<'e> {
    class: RecipientClass,
    info: Cow<'e, Value>,
    withheld: Vec<String>,
}

impl Engine {
    /// Decides and renders every notification for an event. Pure: no I/O, no clock.
    pub fn route(&self, event: &Event) -> Routing {
        let mut routing = Routing::default();
        let mut views: Vec<View> = Vec::new();
        for route in &self.routes {
            if !route.matches(event) {
                continue;
            }
            routing.matched_routes.push(Arc::clone(&route.name));
            self.apply(route, event, &mut views, &mut routing);
            if !route.continue_matching {
                break;
            }
        }
        routing
    }

    /// The deadline, markings and priority a route gives an event.
    fn facts(&self, route: &Route, event: &Event) -> (Sla, Vec<String>, Priority) {
        let sla = match &route.sla {
            None => Sla::Untracked,
            Some(rule) => match rule.deadline(event.occurred_at, event.info(), &self.calendar) {
                Ok(deadline) => Sla::Due {
                    rule: rule.to_string(),
                    deadline,
                },
                Err(e) => Sla::Unknown {
                    rule: rule.to_string(),
                    reason: e.to_string(),
                },
            },
        };
        let mut marks: Vec<String> = route.mark.iter().cloned().collect();
        let mut priority = route.priority;
        if sla.short_notice() {
            marks.push(SHORT_NOTICE.into());
            priority = Priority::Urgent;
        }
        (sla, marks, priority)
    }

    /// Renders a route's email for an event as a recipient would get it, whoever the event
    /// names: `herald check` uses this to try every template on every example.
    pub fn preview_email(
        &self,
        route: &Route,
        event: &Event,
        recipient: &Recipient,
    ) -> Result<crate::render::EmailParts, String> {
        let (sla, marks, priority) = self.facts(route, event);
        let (info, _) = self.redaction.apply(recipient.class, event.info());
        let facts = template_facts(event, route, &sla, &marks, priority);
        self.email(route, &facts, recipient, &info, &marks)
    }

    /// Renders a route's email for one recipient from the route's facts and the event data
    /// redacted for the recipient.
    fn email(
        &self,
        route: &Route,
        facts: &serde_json::Map<String, Value>,
        recipient: &Recipient,
        info: &Value,
        marks: &[String],
    ) -> Result<crate::render::EmailParts, String> {
        let data = Data {
            facts,
            recipient: &recipient_data(recipient),
            info,
        };
        self.renderer.email(&route.template, &data, marks)
    }

    fn apply<'e>(
        &self,
        route: &Route,
        event: &'e Event,
        views: &mut Vec<View<'e>>,
        routing: &mut Routing,
    ) {
        let name = route.name.to_string();
        let (sla, marks, priority) = self.facts(route, event);
        // Built at the first email of the route: the same for each of its recipients.
        let mut facts = None;

        let mut seen = HashSet::new();
        for selector in &route.to {
            let recipients = match selector.select(event.info(), event, &self.directory) {
                Selected::Recipients(r) if r.is_empty() => {
                    routing.problems.push(Problem::NoRecipients {
                        route: name.clone(),
                        selector: selector.text(),
                    });
                    continue;
                }
                Selected::Recipients(r) => r,
                Selected::Unknown { reason } => {
                    routing.problems.push(Problem::UnknownRecipient {
                        route: name.clone(),
                        pattern: selector.text(),
                        reason,
                    });
                    continue;
                }
            };
            for recipient in recipients {
                if !seen.insert(recipient.id.clone()) {
                    continue;
                }
                if !recipient.may_hear_about(event) {
                    routing.problems.push(Problem::NotAuthorised {
                        route: name.clone(),
                        recipient: recipient.id.to_string(),
                    });
                    continue;
                }
                let channels: Vec<Channel> = route
                    .channels
                    .iter()
                    .copied()
                    .filter(|c| recipient.has_channel(*c))
                    .collect();
                if channels.is_empty() {
                    routing.problems.push(Problem::NoChannel {
                        route: name.clone(),
                        recipient: recipient.id.to_string(),
                    });
                    continue;
                }
                let view = match views.iter().position(|v| v.class == recipient.class) {
                    Some(i) => &views[i],
                    None => {
                        let (info, withheld) = self.redaction.apply(recipient.class, event.info());
                        views.push(View {
                            class: recipient.class,
                            info,
                            withheld,
                        });
                        &views[views.len() - 1]
                    }
                };
                for channel in channels {
                    let key =
                        IdempotencyKey::derive(&event.id, &name, recipient.id.as_str(), channel);
                    let content = match channel {
                        Channel::Email => {
                            let facts = facts.get_or_insert_with(|| {
                                template_facts(event, route, &sla, &marks, priority)
                            });
                            self.email(route, facts, recipient, &view.info, &marks)
                                .map(|parts| Content::Email {
                                    to: recipient.email.clone(),
                                    subject: parts.subject,
                                    text: parts.text,
                                    html: parts.html,
                                })
                        }
                        Channel::Webhook => {
                            let url = recipient
                                .webhook
                                .as_ref()
                                .map(|w| w.url.clone())
                                .unwrap_or_default();
                            let body = webhook_body(
                                event,
                                &WebhookView {
                                    key: &key,
                                    route: &name,
                                    recipient: recipient.id.as_str(),
                                    priority,
                                    marks: &marks,
                                    sla: &sla,
                                    withheld: &view.withheld,
                                    info: &view.info,
                                },
                            );
                            Ok(Content::Webhook { url, body })
                        }
                    };
                    match content {
                        Ok(content) => routing.notifications.push(Notification {
                            key,
                            event_id: event.id.clone(),
                            event_type: event.event_type.clone(),
                            route: Arc::clone(&route.name),
                            recipient: Arc::clone(recipient),
                            channel,
                            priority,
                            marks: marks.clone(),
                            sla: sla.clone(),
                            withheld: view.withheld.clone(),
                            content,
                        }),
                        Err(reason) => routing.problems.push(Problem::RenderFailed {
                            route: name.clone(),
                            recipient: recipient.id.to_string(),
                            channel,
                            reason,
                        }),
                    }
                }
            }
        }
    }
}

/// What a template sees besides the event data (`info`, from the recipient's view) and the
/// recipient (`recipient.id`, `.name`, `.class`): the person's identifiers as `person.NOMS`
/// etc. (and all of them on one line as `identifiers`), and the notification's own facts. The
/// same for every recipient of a route.
fn template_facts(
    event: &Event,
    route: &Route,
    sla: &Sla,
    marks: &[String],
    priority: Priority,
) -> serde_json::Map<String, Value> {
    let body = &event.body;
    let person: serde_json::Map<String, Value> = event
        .identifiers()
        .map(|(t, v)| (t.to_owned(), Value::String(v.to_owned())))
        .collect();
    let text = |s: &str| Value::String(s.to_owned());
    let mut facts = serde_json::Map::new();
    facts.insert("eventId".into(), text(event.id.as_str()));
    facts.insert("eventType".into(), text(event.event_type.as_str()));
    facts.insert("occurredAt".into(), body["occurredAt"].clone());
    facts.insert("publishedAt".into(), body["publishedAt"].clone());
    let identifiers: Vec<String> = person
        .iter()
        .map(|(t, v)| format!("{t} {}", v.as_str().unwrap_or_default()))
        .collect();
    facts.insert("identifiers".into(), Value::String(identifiers.join(", ")));
    facts.insert("person".into(), Value::Object(person));
    facts.insert("route".into(), text(&route.name));
    facts.insert("priority".into(), text(priority.as_str()));
    facts.insert(
        "marks".into(),
        Value::Array(marks.iter().map(|m| text(m)).collect()),
    );
    facts.insert("urgent".into(), Value::Bool(priority == Priority::Urgent));
    facts.insert("shortNotice".into(), Value::Bool(sla.short_notice()));
    if let Some(d) = sla.deadline() {
        let rule = match sla {
            Sla::Due { rule, .. } => rule.as_str(),
            _ => "",
        };
        facts.insert(
            "sla".into(),
            json!({"rule": rule, "due": d.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "shortNotice": d.short_notice}),
        );
    }
    if let Some(description) = body.get("description") {
        facts.insert("description".into(), description.clone());
    }
    facts
}

fn recipient_data(recipient: &Recipient) -> Value {
    json!({"id": recipient.id.as_str(), "name": recipient.name, "class": recipient.class.as_str()})
}

//! From the engine's [`Plan`] to notifications ready to deliver: each email drafted once per
//! route for the recipients who see the same view of the event and filled in per recipient,
//! each webhook body built from its view (the view's `event` part written once).

use std::cell::OnceCell;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::payload::{self, WebhookView, event_json, webhook_body};
use super::{Data, EmailDraft, EmailParts, Facts, RECIPIENT_FIELDS, Renderer};
use crate::event::{Event, EventId, EventType};
use crate::notification::{Channel, Content, IdempotencyKey, Priority, Problem, Skip, Sla};
use crate::route::{Plan, Recipient, Route, RouteFacts, View};

/// One message to one recipient on one channel.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub key: IdempotencyKey,
    pub event_id: EventId,
    pub event_type: EventType,
    pub route: Arc<str>,
    #[serde(serialize_with = "recipient_id")]
    pub recipient: Arc<Recipient>,
    pub channel: Channel,
    pub priority: Priority,
    /// Markings shown to the recipient, e.g. `CAT A`, `SHORT NOTICE`.
    pub marks: Vec<String>,
    pub sla: Sla,
    /// Fields removed before rendering because this recipient's class may not see them.
    pub withheld: Vec<String>,
    pub content: Content,
}

fn recipient_id<S: serde::Serializer>(r: &Arc<Recipient>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.id.as_str())
}

/// Everything the engine decided for one event.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Routes whose event types and matchers matched, in order.
    pub matched_routes: Vec<Arc<str>>,
    pub notifications: Vec<Notification>,
    /// Notifications that could not be made: each is a failure, parked for an operator.
    pub problems: Vec<Problem>,
    /// Notifications not made because the recipient is not entitled to them: counted only.
    pub skipped: Vec<Skip>,
}

impl Routing {
    /// No route matched: the event concerns nobody Herald serves (counted, not an error).
    pub fn unrouted(&self) -> bool {
        self.matched_routes.is_empty()
    }
}

impl Renderer {
    /// Renders every notification the plan calls for; a template that fails for a recipient
    /// is a problem, not a notification. Pure: no I/O, no clock.
    pub fn render(&self, event: &Event, plan: Plan<'_, '_>) -> Routing {
        let Plan {
            matched_routes,
            routes,
            views,
            mut problems,
            skipped,
        } = plan;
        let mut notifications = Vec::new();
        // Each view's webhook `event` part, written at its first webhook.
        let event_parts: Vec<OnceCell<Box<RawValue>>> =
            views.iter().map(|_| OnceCell::new()).collect();
        for plan in &routes {
            let route = plan.route;
            let name: &str = &route.name;
            let RouteFacts {
                sla,
                marks,
                priority,
            } = &plan.facts;
            let priority = *priority;
            // Built at the first email of the route: the same for each of its recipients.
            let mut facts = None;
            // The deadline as webhook bodies give it, written at the route's first webhook.
            let sla_json = OnceCell::new();
            // Each view's email, drafted at its first recipient for all who share the view.
            // String error: Handlebars' own words (see the note at the top of render/mod.rs).
            let mut drafts: Vec<(usize, Option<Result<EmailDraft, String>>)> = Vec::new();
            for pick in &plan.picks {
                let (recipient, view) = (pick.recipient, &views[pick.view]);
                for &channel in &pick.channels {
                    let key =
                        IdempotencyKey::derive(&event.id, name, recipient.id.as_str(), channel);
                    let content = match channel {
                        Channel::Email => {
                            let facts = ViewFacts {
                                facts: facts.get_or_insert_with(|| {
                                    TemplateFacts::new(event, route, sla, marks, priority)
                                }),
                                description: view.description,
                            };
                            let draft = match drafts.iter().position(|(v, _)| *v == pick.view) {
                                Some(i) => &drafts[i].1,
                                None => {
                                    let data = Data {
                                        facts: &facts,
                                        recipient: &Value::Null,
                                        info: &view.info,
                                    };
                                    let draft = self.email_draft(&route.template, &data, marks);
                                    drafts.push((pick.view, draft));
                                    &drafts[drafts.len() - 1].1
                                }
                            };
                            match draft {
                                Some(Ok(draft)) => draft.fill(|f| recipient_field(recipient, f)),
                                Some(Err(e)) => Err(e.clone()),
                                None => self.email_for(route, &facts, recipient, &view.info, marks),
                            }
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
                                    route: name,
                                    recipient: recipient.id.as_str(),
                                    priority,
                                    marks,
                                    sla: sla_json.get_or_init(|| payload::sla_json(sla)),
                                    withheld: &view.withheld,
                                    event: event_parts[pick.view].get_or_init(|| {
                                        event_json(event, &view.info, view.description)
                                    }),
                                },
                            );
                            Ok(Content::Webhook { url, body })
                        }
                    };
                    match content {
                        Ok(content) => notifications.push(Notification {
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
                        Err(reason) => problems.push(Problem::RenderFailed {
                            route: name.to_owned(),
                            recipient: recipient.id.to_string(),
                            channel,
                            reason,
                        }),
                    }
                }
            }
        }
        Routing {
            matched_routes,
            notifications,
            problems,
            skipped,
        }
    }

    /// Renders a route's email for an event as `recipient` would get it, from the route's
    /// facts and the view of the event its class may see, whoever the event names: `herald
    /// check` uses this to try every template on every example.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn preview_email(
        &self,
        route: &Route,
        facts: &RouteFacts,
        event: &Event,
        view: &View<'_>,
        recipient: &Recipient,
    ) -> Result<EmailParts, String> {
        let template = TemplateFacts::new(event, route, &facts.sla, &facts.marks, facts.priority);
        let facts_view = ViewFacts {
            facts: &template,
            description: view.description,
        };
        self.email_for(route, &facts_view, recipient, &view.info, &facts.marks)
    }

    /// Renders a route's email for one recipient from the route's facts and the event data
    /// redacted for the recipient.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    fn email_for(
        &self,
        route: &Route,
        facts: &dyn Facts,
        recipient: &Recipient,
        info: &Value,
        marks: &[String],
    ) -> Result<EmailParts, String> {
        let data = Data {
            facts,
            recipient: &recipient_data(recipient),
            info,
        };
        self.email(&route.template, &data, marks)
    }
}

/// What a template sees besides the event data (`info`, from the recipient's view) and the
/// recipient (`recipient.id`, `.name`, `.class`): the person's identifiers as `person.NOMS`
/// etc. (and all of them on one line as `identifiers`), and the notification's own facts. The
/// same for every recipient of a route.
struct TemplateFacts<'e> {
    event_id: Value,
    event_type: Value,
    occurred_at: &'e Value,
    published_at: &'e Value,
    identifiers: Value,
    person: Value,
    route: Value,
    priority: Value,
    marks: Value,
    urgent: Value,
    short_notice: Value,
    sla: Option<Value>,
}

impl<'e> TemplateFacts<'e> {
    /// The names, in the order [`Facts::to_map`] gives them.
    const NAMES: [&'static str; 13] = [
        "eventId",
        "eventType",
        "occurredAt",
        "publishedAt",
        "description",
        "identifiers",
        "person",
        "route",
        "priority",
        "marks",
        "urgent",
        "shortNotice",
        "sla",
    ];

    fn new(
        event: &'e Event,
        route: &Route,
        sla: &Sla,
        marks: &[String],
        priority: Priority,
    ) -> TemplateFacts<'e> {
        let text = |s: &str| Value::String(s.to_owned());
        let person: serde_json::Map<String, Value> = event
            .identifiers()
            .map(|(kind, value)| (kind.to_owned(), text(value)))
            .collect();
        let mut identifiers = String::new();
        for (kind, value) in &person {
            if !identifiers.is_empty() {
                identifiers.push_str(", ");
            }
            identifiers.push_str(kind);
            identifiers.push(' ');
            identifiers.push_str(value.as_str().unwrap_or_default());
        }
        let short_notice = Value::Bool(sla.short_notice());
        let sla = sla.deadline().map(|d| {
            let rule = match sla {
                Sla::Due { rule, .. } => rule.as_str(),
                _ => "",
            };
            json!({"rule": rule, "due": d.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "shortNotice": d.short_notice})
        });
        TemplateFacts {
            event_id: text(event.id.as_str()),
            event_type: text(event.event_type.as_str()),
            occurred_at: &event.body["occurredAt"],
            published_at: &event.body["publishedAt"],
            identifiers: Value::String(identifiers),
            person: Value::Object(person),
            route: text(&route.name),
            priority: text(priority.as_str()),
            marks: Value::Array(marks.iter().map(|m| text(m)).collect()),
            urgent: Value::Bool(priority == Priority::Urgent),
            short_notice,
            sla,
        }
    }
}

impl Facts for TemplateFacts<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        Some(match name {
            "eventId" => &self.event_id,
            "eventType" => &self.event_type,
            "occurredAt" => self.occurred_at,
            "publishedAt" => self.published_at,
            "description" => return None,
            "identifiers" => &self.identifiers,
            "person" => &self.person,
            "route" => &self.route,
            "priority" => &self.priority,
            "marks" => &self.marks,
            "urgent" => &self.urgent,
            "shortNotice" => &self.short_notice,
            "sla" => return self.sla.as_ref(),
            _ => return None,
        })
    }

    fn to_map(&self) -> serde_json::Map<String, Value> {
        Self::NAMES
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), self.get(name)?.clone())))
            .collect()
    }
}

/// A route's facts with the envelope's `description` as one view of the event may see it.
struct ViewFacts<'a> {
    facts: &'a TemplateFacts<'a>,
    description: Option<&'a Value>,
}

impl Facts for ViewFacts<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        match name {
            "description" => self.description,
            _ => self.facts.get(name),
        }
    }

    fn to_map(&self) -> serde_json::Map<String, Value> {
        let mut map = self.facts.to_map();
        if let Some(d) = self.description {
            map.insert("description".into(), d.clone());
        }
        map
    }
}

/// What a template sees as `recipient`: `id`, `name` and `class`.
fn recipient_field<'r>(recipient: &'r Recipient, field: &str) -> Option<&'r str> {
    match field {
        "id" => Some(recipient.id.as_str()),
        "name" => Some(&recipient.name),
        "class" => Some(recipient.class.as_str()),
        _ => None,
    }
}

/// The recipient as one JSON object, for a template that is not drafted.
fn recipient_data(recipient: &Recipient) -> Value {
    RECIPIENT_FIELDS
        .iter()
        .filter_map(|f| Some(((*f).to_owned(), recipient_field(recipient, f)?.into())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

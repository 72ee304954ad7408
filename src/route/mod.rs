//! The routing engine: for a validated event, which routes match, who they name, what each
//! recipient may see, the deadline, and the rendered notification for each channel.
//!
//! Routes are tried in order; the first that matches wins unless it says `continue = true`.

mod matcher;
mod recipient;
mod redact;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};

pub use matcher::Matcher;
pub use recipient::{
    Directory, Recipient, RecipientClass, RecipientId, Selected, Selector, Webhook,
};
pub use redact::Redaction;

use crate::config::RouteConfig;
use crate::event::{Event, EventType};
use crate::field::FieldPath;
use crate::intake::SchemaSet;
use crate::notification::{
    Channel, Content, IdempotencyKey, Notification, Priority, Problem, Routing, Skip, Sla,
};
use crate::render::payload::{self, WebhookView, event_json, webhook_body};
use crate::render::{Data, EmailDraft, Facts, RECIPIENT_FIELDS, Renderer};
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
        // Every field the route reads must be one the schemas of its events have: a misspelt
        // path would otherwise never match, never name a recipient, never give a deadline.
        let mut paths: Vec<(String, &FieldPath)> = Vec::new();
        for m in &matchers {
            paths.push((format!("matchers: '{}'", m.text()), m.path()));
        }
        for selector in &to {
            for f in selector.fields() {
                paths.push((format!("to: \"{}\"", selector.text()), f));
            }
        }
        if let Some(f) = sla.as_ref().and_then(SlaRule::field) {
            paths.push(("sla".to_owned(), f));
        }
        let mut types: Vec<&EventType> = events.iter().collect();
        types.sort();
        for (what, path) in paths {
            let missing: Vec<&str> = types
                .iter()
                .filter(|t| !schemas.has_field(t, path))
                .map(|t| t.as_str())
                .collect();
            if let Some(first) = missing.first() {
                let hint = types
                    .iter()
                    .find(|t| t.as_str() == *first)
                    .and_then(|t| schemas.suggest(t, path))
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                errors.push(format!(
                    "{what}: {path} is not a field of {}{hint}",
                    missing.join(", ")
                ));
            }
        }
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

/// The event's data as some classes of recipient may see it: classes from which the same
/// fields are withheld share one view, and so one webhook `event` part.
struct View<'e> {
    classes: Vec<RecipientClass>,
    info: Cow<'e, Value>,
    withheld: Vec<String>,
    /// The envelope's `description`, when these classes may see it.
    description: Option<&'e Value>,
    /// The webhook body's `event` part, written at the view's first webhook.
    event_json: OnceCell<Box<RawValue>>,
}

impl<'e> View<'e> {
    /// The index of the view for a class: one already made for it or for a class that
    /// sees the same, or a new one.
    fn find(
        views: &mut Vec<View<'e>>,
        class: RecipientClass,
        redaction: &Redaction,
        event: &'e Event,
    ) -> usize {
        match views.iter().position(|v| v.classes.contains(&class)) {
            Some(i) => i,
            None => {
                let description = event.description();
                let (info, withheld) = redaction.apply(class, event.info(), description);
                let description = description.filter(|_| redaction.shows_description(class));
                match views.iter().position(|v| v.withheld == withheld) {
                    Some(i) => {
                        views[i].classes.push(class);
                        i
                    }
                    None => {
                        views.push(View {
                            classes: vec![class],
                            info,
                            withheld,
                            description,
                            event_json: OnceCell::new(),
                        });
                        views.len() - 1
                    }
                }
            }
        }
    }
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
        let description = event.description();
        let (info, _) = self
            .redaction
            .apply(recipient.class, event.info(), description);
        let facts = TemplateFacts::new(event, route, &sla, &marks, priority);
        let facts = ViewFacts {
            facts: &facts,
            description: description.filter(|_| self.redaction.shows_description(recipient.class)),
        };
        self.email(route, &facts, recipient, &info, &marks)
    }

    /// Renders a route's email for one recipient from the route's facts and the event data
    /// redacted for the recipient.
    fn email(
        &self,
        route: &Route,
        facts: &dyn Facts,
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
        let name: &str = &route.name;
        let (sla, marks, priority) = self.facts(route, event);
        // Built at the first email of the route: the same for each of its recipients.
        let mut facts = None;
        // The deadline as webhook bodies give it, written at the route's first webhook.
        let sla_json = OnceCell::new();
        // Each view's email, drafted at its first recipient for all who share the view.
        let mut drafts: Vec<(usize, Option<Result<EmailDraft, String>>)> = Vec::new();

        // A route names a handful of recipients: a list is cheaper than a set.
        let mut seen: Vec<&RecipientId> = Vec::new();
        for selector in &route.to {
            let recipients = match selector.select(event.info(), event, &self.directory) {
                Selected::Recipients(r) if r.is_empty() => {
                    // Only authority filters a class: if the directory has members of it,
                    // none of them acts for this person, and no one should be told.
                    let filtered = self.directory.of_class(selector.class()).next().is_some();
                    if filtered {
                        routing.skipped.push(Skip::NoAuthorisedRecipient {
                            route: name.to_owned(),
                            selector: selector.text(),
                        });
                    } else {
                        routing.problems.push(Problem::NoRecipients {
                            route: name.to_owned(),
                            selector: selector.text(),
                        });
                    }
                    continue;
                }
                Selected::Recipients(r) => r,
                Selected::Unknown { reason } => {
                    routing.problems.push(Problem::UnknownRecipient {
                        route: name.to_owned(),
                        pattern: selector.text(),
                        reason,
                    });
                    continue;
                }
            };
            for recipient in recipients {
                if seen.contains(&&recipient.id) {
                    continue;
                }
                seen.push(&recipient.id);
                if !recipient.may_hear_about(event) {
                    routing.skipped.push(Skip::NotAuthorised {
                        route: name.to_owned(),
                        recipient: recipient.id.to_string(),
                    });
                    continue;
                }
                let channels = route
                    .channels
                    .iter()
                    .copied()
                    .filter(|c| recipient.has_channel(*c));
                if channels.clone().next().is_none() {
                    routing.problems.push(Problem::NoChannel {
                        route: name.to_owned(),
                        recipient: recipient.id.to_string(),
                    });
                    continue;
                }
                let view_index = View::find(views, recipient.class, &self.redaction, event);
                let view = &views[view_index];
                for channel in channels {
                    let key =
                        IdempotencyKey::derive(&event.id, name, recipient.id.as_str(), channel);
                    let content = match channel {
                        Channel::Email => {
                            let facts = ViewFacts {
                                facts: facts.get_or_insert_with(|| {
                                    TemplateFacts::new(event, route, &sla, &marks, priority)
                                }),
                                description: view.description,
                            };
                            let facts = &facts;
                            let draft = match drafts.iter().position(|(v, _)| *v == view_index) {
                                Some(i) => &drafts[i].1,
                                None => {
                                    let data = Data {
                                        facts,
                                        recipient: &Value::Null,
                                        info: &view.info,
                                    };
                                    let draft =
                                        self.renderer.email_draft(&route.template, &data, &marks);
                                    drafts.push((view_index, draft));
                                    &drafts[drafts.len() - 1].1
                                }
                            };
                            match draft {
                                Some(Ok(draft)) => draft.fill(|f| recipient_field(recipient, f)),
                                Some(Err(e)) => Err(e.clone()),
                                None => self.email(route, facts, recipient, &view.info, &marks),
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
                                    marks: &marks,
                                    sla: sla_json.get_or_init(|| payload::sla_json(&sla)),
                                    withheld: &view.withheld,
                                    event: view.event_json.get_or_init(|| {
                                        event_json(event, &view.info, view.description)
                                    }),
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
                            route: name.to_owned(),
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

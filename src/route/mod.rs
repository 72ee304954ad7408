//! The routing engine: for a validated event, which routes match, who they name, what each
//! recipient may see, and the deadline: a [`Plan`] that rendering (`crate::render`) turns into
//! notifications.
//!
//! Routes are tried in order; the first that matches wins unless it says `continue = true`.

pub mod authority;
pub mod custody;
pub mod digest;
pub mod escalate;
mod matcher;
mod redact;
mod selector;
pub mod subscription;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

pub use crate::directory::{Directory, Recipient, RecipientClass, RecipientId, Webhook};
pub use authority::Authority;
pub use matcher::Matcher;
pub use redact::{ENVELOPE_DESCRIPTION, Redaction};
pub use selector::{Selected, Selector};

use crate::config::RouteConfig;
use crate::event::{Event, EventType};
use crate::field::FieldPath;
use crate::intake::SchemaSet;
use crate::notification::{Channel, Priority, Problem, Skip, Sla};
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
    /// Who is told when a notification is still undelivered as the deadline nears.
    pub escalate: Option<escalate::Escalation>,
}

impl Route {
    /// Compiles one route; errors are plain messages the caller prefixes with the route name.
    pub fn compile(
        config: &RouteConfig,
        schemas: &SchemaSet,
        directory: &Directory,
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
        let sla = match config.sla.as_deref().map(SlaRule::parse).transpose() {
            Ok(sla) => sla,
            Err(e) => {
                errors.push(format!("sla: {e}"));
                None
            }
        };
        let escalation = config.escalate.as_ref().and_then(|e| {
            escalate::Escalation::compile(e, config.sla.is_some(), directory)
                .map_err(|es| errors.extend(es))
                .ok()
        });
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
        for selector in escalation.iter().flat_map(|e| &e.to) {
            for f in selector.fields() {
                paths.push((format!("escalate.to: \"{}\"", selector.text()), f));
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
            escalate: escalation,
        })
    }

    /// Whether the route applies to this event.
    pub fn matches(&self, event: &Event) -> bool {
        self.events.contains(&event.event_type)
            && self.matchers.iter().all(|m| m.matches(event.info()))
    }
}

// String error: the parser's words for `herald check` (see `Matcher::parse`, `Selector::parse`).
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

/// Everything needed to decide who is told what: the routes, the directory, the redaction
/// rules and the calendar deadlines are counted in.
#[derive(Debug)]
pub struct Engine {
    pub routes: Vec<Route>,
    pub directory: Directory,
    pub redaction: Redaction,
    pub calendar: Calendar,
}

/// The event's data as some classes of recipient may see it: classes from which the same
/// fields are withheld share one view, and so one rendering of it.
#[derive(Debug)]
pub struct View<'e> {
    pub classes: Vec<RecipientClass>,
    pub info: Cow<'e, Value>,
    pub withheld: Vec<String>,
    /// The envelope's `description`, when these classes may see it.
    pub description: Option<&'e Value>,
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
                        });
                        views.len() - 1
                    }
                }
            }
        }
    }
}

/// The deadline, markings and priority a route gives an event.
#[derive(Debug, Clone)]
pub struct RouteFacts {
    pub sla: Sla,
    pub marks: Vec<String>,
    pub priority: Priority,
}

/// One recipient a route reaches, the view of the event it may see, and the channels it
/// is sent by.
#[derive(Debug)]
pub struct Pick<'a> {
    pub recipient: &'a Arc<Recipient>,
    pub view: usize,
    pub channels: Vec<Channel>,
}

/// What one matching route decided.
#[derive(Debug)]
pub struct RoutePlan<'a> {
    pub route: &'a Route,
    pub facts: RouteFacts,
    pub picks: Vec<Pick<'a>>,
}

/// Everything the engine decided for one event, before anything is rendered: the routes
/// that matched, who each reaches and on which channels, the views of the event they may
/// see, and every notification that could not be made or may not be.
#[derive(Debug, Default)]
pub struct Plan<'a, 'e> {
    pub matched_routes: Vec<Arc<str>>,
    pub routes: Vec<RoutePlan<'a>>,
    pub views: Vec<View<'e>>,
    pub problems: Vec<Problem>,
    pub skipped: Vec<Skip>,
}

impl Engine {
    /// Decides who is told about an event, by which channels, seeing what, with the
    /// authority register as it bears on the event. Pure: no I/O, no clock.
    pub fn plan<'a, 'e>(&'a self, event: &'e Event, authority: &Authority) -> Plan<'a, 'e> {
        let mut plan = Plan::default();
        for route in &self.routes {
            if !route.matches(event) {
                continue;
            }
            plan.matched_routes.push(Arc::clone(&route.name));
            let picks = self.picks(route, event, authority, &mut plan);
            plan.routes.push(RoutePlan {
                route,
                facts: self.facts(route, event),
                picks,
            });
            if !route.continue_matching {
                break;
            }
        }
        plan
    }

    /// The deadline, markings and priority a route gives an event.
    pub fn facts(&self, route: &Route, event: &Event) -> RouteFacts {
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
        RouteFacts {
            sla,
            marks,
            priority,
        }
    }

    /// The recipients a route reaches for an event, each with its view and channels; what
    /// stops one is recorded in the plan.
    fn picks<'a, 'e>(
        &'a self,
        route: &'a Route,
        event: &'e Event,
        authority: &Authority,
        plan: &mut Plan<'a, 'e>,
    ) -> Vec<Pick<'a>> {
        let name: &str = &route.name;
        let mut picks: Vec<Pick<'a>> = Vec::new();
        for selector in &route.to {
            let recipients = match selector.select(event.info(), event, &self.directory, authority)
            {
                Selected::Recipients(r) if r.is_empty() => {
                    // Only authority filters a class: if the directory has members of it,
                    // none of them acts for this person or has ever been recorded as acting
                    // for them, and no one should be told.
                    let filtered = self.directory.of_class(selector.class()).next().is_some();
                    if filtered {
                        plan.skipped.push(Skip::NoAuthorisedRecipient {
                            route: name.to_owned(),
                            selector: selector.text(),
                        });
                    } else {
                        plan.problems.push(Problem::NoRecipients {
                            route: name.to_owned(),
                            selector: selector.text(),
                        });
                    }
                    continue;
                }
                Selected::Recipients(r) => r,
                Selected::Unknown { reason } => {
                    plan.problems.push(Problem::UnknownRecipient {
                        route: name.to_owned(),
                        pattern: selector.text(),
                        reason,
                    });
                    continue;
                }
            };
            for recipient in recipients {
                // A route names a handful of recipients: a list is cheaper than a set.
                if picks.iter().any(|p| p.recipient.id == recipient.id) {
                    continue;
                }
                if let Err(why) = authority.may_hear(recipient, event) {
                    plan.skipped.push(Skip::NotAuthorised {
                        route: name.to_owned(),
                        recipient: recipient.id.to_string(),
                        why,
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
                    plan.problems.push(Problem::NoChannel {
                        route: name.to_owned(),
                        recipient: recipient.id.to_string(),
                    });
                    continue;
                }
                let view = View::find(&mut plan.views, recipient.class, &self.redaction, event);
                picks.push(Pick {
                    recipient,
                    view,
                    channels,
                });
            }
        }
        picks
    }
}

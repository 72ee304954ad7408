//! The whole offline core, built from routes.toml: intake (schemas and limits) and the
//! routing engine (directory, routes, redaction, calendar, templates). Loading reports every
//! problem at once, each naming its file and, where it has one, its route or recipient.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use std::time::Duration;

use crate::config::{Config, Rate};
use crate::event::{Event, EventId, REPRESENTATION_GRANTED, REPRESENTATION_WITHDRAWN};
use crate::intake::{Intake, Message, Publishers, Rejection, SchemaSet};
use crate::notification::{Channel, Priority};
use crate::render::Renderer;
use crate::render::Routing;
use crate::route::custody::{Entry, Recorded, fold};
use crate::route::digest::Line;
use crate::route::subscription::Subscription;
use crate::route::{
    Authority, Directory, Engine, Recipient, RecipientClass, RecipientId, Redaction, Route,
    Selector, View,
};
use crate::sla::{Calendar, SlaRule};

/// Intake and engine, ready to process events.
#[derive(Debug)]
pub struct Core {
    pub config: Config,
    pub config_path: PathBuf,
    pub intake: Intake,
    pub publishers: Publishers,
    pub engine: Engine,
    /// The templates, and how a plan becomes notifications.
    pub renderer: Renderer,
    /// The weekly digests.
    pub subscriptions: Vec<Subscription>,
}

impl Core {
    /// Loads routes.toml and everything it points to. Every problem is reported at once: a
    /// key routes.toml gets wrong does not stop the rest of it being checked.
    pub fn load(path: &Path) -> Result<Core, Vec<String>> {
        let (config, mut errors) = Config::load_all(path).map_err(|e| e.lines())?;
        let Some(config) = config else {
            return Err(errors);
        };
        match Core::from_config(config, path) {
            Ok(core) if errors.is_empty() => Ok(core),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    /// Builds the core from a parsed configuration; `path` names the file in messages.
    pub fn from_config(config: Config, path: &Path) -> Result<Core, Vec<String>> {
        let file = path.display().to_string();
        let mut errors = Vec::new();

        let schemas = SchemaSet::load(&config.paths.schemas)
            .map_err(|es| errors.extend(es.into_iter().map(|e| e.to_string())))
            .ok();
        let renderer = Renderer::load(&config.paths.templates)
            .map_err(|es| errors.extend(es.into_iter().map(|e| e.to_string())))
            .ok();
        let calendar = match &config.calendar.bank_holidays {
            None => Some(Calendar::england_and_wales()),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|text| Calendar::parse(&text).map_err(|e| e.to_string()))
                .map_err(|e| errors.push(format!("{file}: [calendar]: {e}")))
                .ok(),
        };
        let (directory, dir_errors) = Directory::build(&config.recipients);
        errors.extend(dir_errors.into_iter().map(|e| format!("{file}: {e}")));
        if renderer
            .as_ref()
            .is_some_and(|r| !r.has(crate::render::endpoint::TEMPLATE))
        {
            for r in directory.all().filter(|r| r.contact.is_some()) {
                errors.push(format!(
                    "{file}: recipient {}: contact is set, but templates/ has no {} folder (subject.hbs, text.hbs, html.hbs) for the contact's email",
                    r.id,
                    crate::render::endpoint::TEMPLATE
                ));
            }
        }
        let (redaction, red_errors) = Redaction::build(&config.sensitive, &config.free_text);
        errors.extend(red_errors.into_iter().map(|e| format!("{file}: {e}")));

        let (publishers, pub_errors) = Publishers::build(&config.publishers);
        errors.extend(pub_errors.into_iter().map(|e| format!("{file}: {e}")));

        if let Some(schemas) = &schemas {
            for path in redaction.paths() {
                if !schemas.event_types().any(|t| schemas.has_field(t, path)) {
                    let hint = schemas
                        .event_types()
                        .find_map(|t| schemas.suggest(t, path))
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    errors.push(format!(
                        "{file}: [[sensitive]] field \"{path}\" is not a field of any event's additionalInformation (see the schemas), so it would withhold nothing{hint}"
                    ));
                }
            }
        }

        let mut routes = Vec::new();
        if let Some(schemas) = &schemas {
            let mut names = HashSet::new();
            for rc in &config.routes {
                if !names.insert(rc.name.as_str()) {
                    errors.push(format!("{file}: route {}: the name is used twice", rc.name));
                }
                if renderer.as_ref().is_some_and(|r| !r.has(&rc.template)) {
                    errors.push(format!(
                        "{file}: route {}: template: \"{}\" has no folder under templates/ (subject.hbs, text.hbs, html.hbs)",
                        rc.name, rc.template
                    ));
                }
                if let Some(e) = &rc.escalate
                    && renderer.as_ref().is_some_and(|r| !r.has(&e.template))
                {
                    errors.push(format!(
                        "{file}: route {}: escalate.template: \"{}\" has no folder under templates/ (subject.hbs, text.hbs, html.hbs)",
                        rc.name, e.template
                    ));
                }
                match Route::compile(rc, schemas, &directory) {
                    Ok(r) => routes.push(r),
                    Err(es) => errors.extend(
                        es.into_iter()
                            .map(|e| format!("{file}: route {}: {e}", rc.name)),
                    ),
                }
            }
        }

        let mut subscriptions = Vec::new();
        let mut names = HashSet::new();
        for sc in &config.subscriptions {
            if !names.insert(sc.name.as_str()) {
                errors.push(format!(
                    "{file}: subscription {}: the name is used twice",
                    sc.name
                ));
            }
            if renderer.as_ref().is_some_and(|r| !r.has(&sc.template)) {
                errors.push(format!(
                    "{file}: subscription {}: template: \"{}\" has no folder under templates/ (subject.hbs, text.hbs, html.hbs)",
                    sc.name, sc.template
                ));
            }
            match Subscription::compile(sc, &directory, &redaction) {
                Ok(s) => subscriptions.push(s),
                Err(es) => errors.extend(
                    es.into_iter()
                        .map(|e| format!("{file}: subscription {}: {e}", sc.name)),
                ),
            }
        }

        match (schemas, renderer, calendar) {
            (Some(schemas), Some(renderer), Some(calendar)) if errors.is_empty() => Ok(Core {
                intake: Intake::new(schemas, &config.limits).with_representatives(
                    directory
                        .of_class(RecipientClass::LegalRep)
                        .map(|r| r.id.to_string()),
                ),
                publishers,
                engine: Engine {
                    routes,
                    directory,
                    redaction,
                    calendar,
                },
                renderer,
                subscriptions,
                config,
                config_path: path.to_owned(),
            }),
            _ => Err(errors),
        }
    }

    /// Whether a message from the broker may be routed: its properties, its body, and its
    /// publisher's right to send its type. A replayed message passes the same gate.
    pub fn admit(&self, message: &Message<'_>) -> Result<Event, Rejection> {
        crate::intake::admit(
            &self.intake,
            &self.publishers,
            self.max_header_bytes(),
            message,
        )
    }

    /// `limits.max_header_bytes`: the largest headers table admitted, and copied when parked.
    pub fn max_header_bytes(&self) -> usize {
        usize::try_from(self.config.limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX)
    }

    /// Checks a body and routes the event, with routes.toml's `acts_for` as the only
    /// authority (the offline tools have no register).
    pub fn process(&self, body: &[u8], id: EventId) -> Result<(Event, Routing), Rejection> {
        let event = self.intake.accept(body, id)?;
        let routing = self.route(&event, &Authority::seed());
        Ok((event, routing))
    }

    /// Every notification for an event: the engine's plan, rendered, with the authority
    /// register as it bears on the event now. Pure: no I/O, no clock.
    pub fn route(&self, event: &Event, authority: &Authority) -> Routing {
        self.renderer
            .render(event, self.engine.plan(event, authority))
    }

    /// Whether routing the event could need the authority register: a route it matches
    /// names a legal representative.
    pub fn needs_authority(&self, event: &Event) -> bool {
        self.engine
            .routes
            .iter()
            .any(|r| r.to.iter().any(|s| s.class() == RecipientClass::LegalRep) && r.matches(event))
    }

    /// Renders a route's email for an event as `recipient` would get it, whoever the event
    /// names, with what its class may see: `herald check` tries every template this way.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn preview_email(
        &self,
        route: &Route,
        event: &Event,
        recipient: &Recipient,
    ) -> Result<crate::render::EmailParts, String> {
        let description = event.description();
        let (info, withheld) =
            self.engine
                .redaction
                .apply(recipient.class, event.info(), description);
        let view = View {
            classes: vec![recipient.class],
            info,
            withheld,
            description: description
                .filter(|_| self.engine.redaction.shows_description(recipient.class)),
        };
        let facts = self.engine.facts(route, event);
        self.renderer
            .preview_email(route, &facts, event, &view, recipient)
    }

    /// The deeper checks of `herald check`: every example validates, and every route's
    /// template renders for every example it matches and every class of recipient it can
    /// reach. Returns errors and warnings.
    pub fn check(&self) -> CheckReport {
        let mut report = CheckReport::default();
        let dir = &self.config.paths.examples;
        let mut examples = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect();
                paths.sort();
                for path in paths {
                    let body = match std::fs::read(&path) {
                        Ok(b) => b,
                        Err(e) => {
                            report.errors.push(format!("{}: {e}", path.display()));
                            continue;
                        }
                    };
                    match self.intake.accept(&body, EventId::from_content(&body)) {
                        Ok(event) => examples.push((path, event)),
                        Err(r) => report.errors.push(format!(
                            "{}: example does not validate: {r}",
                            path.display()
                        )),
                    }
                }
            }
            Err(e) => report.errors.push(format!("{}: {e}", dir.display())),
        }

        let file = self.config_path.display();
        // Each example as the service would route it: a problem here would be parked for
        // every event like it.
        for (path, event) in &examples {
            for problem in self.route(event, &Authority::seed()).problems {
                report.errors.push(format!(
                    "{file}: example {}: {problem} ({})",
                    path.display(),
                    problem.kind()
                ));
            }
        }
        for route in &self.engine.routes {
            let mut exercised = false;
            for (path, event) in examples.iter().filter(|(_, e)| route.matches(e)) {
                exercised = true;
                for recipient in self.sample_recipients(route) {
                    if let Err(e) = self.preview_email(route, event, &recipient) {
                        report.errors.push(format!(
                            "{file}: route {}: template {} for a {} recipient, example {}: {e}",
                            route.name,
                            route.template,
                            recipient.class,
                            path.display()
                        ));
                    }
                }
                if let Some(escalation) = &route.escalate {
                    let told = self.sample_recipients(route);
                    for recipient in self.sample_escalation_recipients(escalation) {
                        let Some(not_told) = told.first() else { break };
                        if let Err(e) = self.preview_escalation(route, event, &recipient, not_told)
                        {
                            report.errors.push(format!(
                                "{file}: route {}: escalate.template {} for a {} recipient, example {}: {e}",
                                route.name,
                                escalation.template,
                                recipient.class,
                                path.display()
                            ));
                        }
                    }
                }
                if let Some(Err(e)) = route
                    .sla
                    .as_ref()
                    .map(|r| r.deadline(event.occurred_at, event.info(), &self.engine.calendar))
                {
                    report.errors.push(format!(
                        "{file}: route {}: example {}: no deadline: {e}",
                        route.name,
                        path.display()
                    ));
                }
            }
            if !exercised {
                report.warnings.push(format!(
                    "{file}: route {}: no example in {} matches it, so its template is not tried",
                    route.name,
                    dir.display()
                ));
            }
        }
        // Each subscription's template, for each recipient, with no one and with every one of
        // the examples' people (with last week's details too), on time and late.
        let entries: Vec<Recorded> = examples
            .iter()
            .filter_map(|(_, e)| {
                Some(Recorded {
                    occurred_at: e.occurred_at,
                    event: e.id.as_str().to_owned(),
                    row: 0,
                    entry: Entry::of(e)?,
                })
            })
            .collect();
        let latest = entries.iter().map(|r| r.occurred_at).max();
        for sub in &self.subscriptions {
            let due = sub
                .schedule
                .next_due(latest.unwrap_or(DateTime::<Utc>::UNIX_EPOCH));
            let people = fold(&entries, due);
            let lines: Vec<Line> = people
                .iter()
                .map(|person| Line {
                    person,
                    before: Some(person.details()),
                })
                .collect();
            for recipient in &sub.to {
                let failed = [(&lines[..], false), (&lines[..], true), (&[][..], false)]
                    .into_iter()
                    .find_map(|(lines, late)| {
                        let data = sub.data(due, lines, recipient, &self.engine.redaction, late);
                        self.renderer.email_of(&sub.template, &data, &[]).err()
                    });
                if let Some(e) = failed {
                    report.errors.push(format!(
                        "{file}: subscription {}: template {} for {}: {e}",
                        sub.name, sub.template, recipient.id
                    ));
                }
            }
        }
        self.check_contacts(&mut report);
        let routed: HashSet<_> = self
            .engine
            .routes
            .iter()
            .flat_map(|r| r.events.iter())
            .collect();
        for t in self
            .intake
            .schemas()
            .event_types()
            .filter(|t| !routed.contains(t))
            // Handled by the authority register; a route for them is optional.
            .filter(|t| ![REPRESENTATION_GRANTED, REPRESENTATION_WITHDRAWN].contains(&t.as_str()))
        {
            report
                .warnings
                .push(format!("{file}: no route handles event type {t}"));
        }
        report.warnings.extend(self.rate_warnings());
        let (_, last) = self.engine.calendar.years();
        report
            .notes
            .push(format!("bank holiday calendar covers up to {last}"));
        report.notes.push(format!(
            "{} event types{}, {} routes, {} subscriptions, {} recipients, {} examples",
            self.intake.schemas().event_types().count(),
            several_versions(self.intake.schemas()),
            self.engine.routes.len(),
            self.subscriptions.len(),
            self.engine.directory.all().count(),
            examples.len()
        ));
        report
    }

    /// The rate limits that cannot keep up with the `volume` routed to them, or cannot send
    /// a route's volume within its SLA (docs/configuration.md, "Rate limits", states the
    /// rule). A route without a `volume`, or whose SLA depends on the event (`on the day of`,
    /// `before`), is not judged.
    pub fn rate_warnings(&self) -> Vec<String> {
        let file = self.config_path.display();
        let directory = &self.engine.directory;
        // Each limit: its name in messages, its rate, and how many notifications one event of
        // a route makes for it (at most).
        type PerEvent<'a> = Box<dyn Fn(&Route) -> u64 + 'a>;
        let mut limits: Vec<(String, Rate, PerEvent<'_>)> = Vec::new();
        for r in &self.config.recipients {
            let (Some(rate), Some(recipient)) = (
                r.webhook.as_ref().and_then(|w| w.rate),
                directory.get(&r.id),
            ) else {
                continue;
            };
            let recipient = Arc::clone(recipient);
            limits.push((
                format!("the webhook of {}", r.id),
                rate,
                Box::new(move |route: &Route| {
                    let reaches = route.to.iter().any(|s| match s {
                        Selector::Id(x) => x.id == recipient.id,
                        Selector::Pattern { class, .. } | Selector::Class(class) => {
                            *class == recipient.class
                        }
                    });
                    u64::from(route.channels.contains(&Channel::Webhook) && reaches)
                }),
            ));
        }
        if let Some(rate) = self.config.email.rate {
            let emailed = |class: RecipientClass| {
                directory
                    .of_class(class)
                    .filter(|r| r.has_channel(Channel::Email))
                    .count() as u64
            };
            limits.push((
                "the email relay".into(),
                rate,
                Box::new(move |route: &Route| {
                    if !route.channels.contains(&Channel::Email) {
                        return 0;
                    }
                    route
                        .to
                        .iter()
                        .map(|s| match s {
                            Selector::Id(x) => u64::from(x.has_channel(Channel::Email)),
                            // A field that is a list can name several of the class.
                            Selector::Pattern { text, class, .. } if text.contains("[]") => {
                                emailed(*class)
                            }
                            Selector::Pattern { class, .. } => emailed(*class).min(1),
                            Selector::Class(class) => emailed(*class),
                        })
                        .sum()
                }),
            ));
        }
        let volume = |route: &Route| {
            self.config
                .routes
                .iter()
                .find(|c| *c.name == *route.name)
                .and_then(|c| c.volume)
        };
        let mut warnings = Vec::new();
        for (limit, rate, per_event) in &limits {
            // The routes that send to this limit with a volume, and how many notifications
            // each can bring at once.
            let loads: Vec<(&Route, Rate, u64)> = self
                .engine
                .routes
                .iter()
                .filter_map(|route| {
                    let volume = volume(route)?;
                    let n = per_event(route) * u64::from(volume.count);
                    (n > 0).then_some((route, volume, n))
                })
                .collect();
            if loads.is_empty() {
                continue;
            }
            let sustained: f64 = loads
                .iter()
                .map(|(_, v, n)| *n as f64 / f64::from(v.per.seconds()))
                .sum();
            if sustained > rate.per_second() {
                let names: Vec<&str> = loads.iter().map(|(r, _, _)| &*r.name).collect();
                warnings.push(format!(
                    "{file}: {limit}: its rate limit ({rate}) is less than the volume routes {} send it (about {:.0}/h): what waits for it grows without end",
                    names.join(", "),
                    sustained * 3600.0
                ));
            }
            for (route, volume, own) in &loads {
                let Some(sla) = route.sla.as_ref().and_then(shortest_time) else {
                    continue;
                };
                // The urgent lane goes first: an urgent route waits only behind urgent ones.
                let urgent = route.priority == Priority::Urgent;
                let ahead: u64 = loads
                    .iter()
                    .filter(|(r, _, _)| !urgent || r.priority == Priority::Urgent)
                    .map(|(_, _, n)| n)
                    .sum();
                let waiting = ahead.saturating_sub(u64::from(rate.burst()));
                let takes = waiting as f64 / rate.per_second();
                if takes > sla.as_secs_f64() {
                    let others = if ahead > *own {
                        " and the routes sending with it"
                    } else {
                        ""
                    };
                    warnings.push(format!(
                        "{file}: route {}: at the rate limit of {limit} ({rate}), the {ahead} notifications its volume ({volume}){others} can bring at once take {} to send, longer than its SLA ({})",
                        route.name,
                        crate::sla::format_span(Duration::from_secs(takes.ceil() as u64)),
                        route.sla.as_ref().map(ToString::to_string).unwrap_or_default()
                    ));
                }
            }
        }
        warnings
    }

    /// Renders a route's escalation email for an event as `recipient` would get it about a
    /// notification to `not_told`, with what its class may see and a sample of why (retrying
    /// after an HTTP 503, an hour left): `herald check` tries every escalation template this
    /// way.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn preview_escalation(
        &self,
        route: &Route,
        event: &Event,
        recipient: &Recipient,
        not_told: &Recipient,
    ) -> Result<crate::render::EmailParts, String> {
        let Some(escalation) = &route.escalate else {
            return Err(format!("route {} has no escalate", route.name));
        };
        let facts = self.engine.facts(route, event);
        let deadline = facts.sla.deadline().map_or(event.occurred_at, |d| d.due);
        let due_at = escalation.at.instant(event.occurred_at, deadline);
        let channel = route
            .channels
            .first()
            .copied()
            .unwrap_or(crate::notification::Channel::Email);
        let data = crate::route::escalate::data(
            event,
            route,
            &facts,
            escalation,
            due_at,
            &self.engine.redaction,
            recipient,
            crate::route::escalate::NotTold {
                key: "msg_sample",
                recipient: not_told,
                channel,
            },
        );
        let why = crate::route::escalate::Why {
            status: "retrying".into(),
            attempts: 3,
            failure: Some("http-retryable".into()),
            reason: Some("HTTP 503".into()),
            deadline,
            now: deadline - chrono::Duration::hours(1),
        };
        let data = crate::route::escalate::with_why(data, &why);
        self.renderer
            .email_of(&escalation.template, &data, &facts.marks)
    }

    /// Each recipient's `contact`: the email it would get for every change of its webhook's
    /// standing renders; a contact without a webhook is told nothing; recipients with a
    /// webhook and no contact are named once, as a note.
    fn check_contacts(&self, report: &mut CheckReport) {
        use crate::notification::{Standing, StandingCause};
        use crate::render::endpoint::{EndpointNotice, TEMPLATE};
        let file = self.config_path.display();
        let changes = [
            (Standing::Disabled, StandingCause::Gone),
            (Standing::Disabled, StandingCause::OperatorDisabled),
            (Standing::Unreachable, StandingCause::Breaker),
            (Standing::Working, StandingCause::Answered),
            (Standing::Working, StandingCause::OperatorEnabled),
        ];
        let minutes = self.config.webhook.contact_after.as_secs().div_ceil(60);
        let mut uncontacted = Vec::new();
        for r in self.engine.directory.all() {
            match (&r.webhook, &r.contact) {
                (Some(_), None) => uncontacted.push(r.id.as_str()),
                (None, Some(_)) => report.warnings.push(format!(
                    "{file}: recipient {}: contact is set but the recipient has no webhook, so there is nothing to tell it about",
                    r.id
                )),
                (None, None) => {}
                (Some(_), Some(_)) => {
                    let failed = changes.iter().find_map(|&(standing, cause)| {
                        let notice = EndpointNotice {
                            recipient: r,
                            standing,
                            cause,
                            since: DateTime::<Utc>::UNIX_EPOCH,
                            open_minutes: minutes,
                        };
                        self.renderer
                            .endpoint_notice(&notice, &self.engine.routes)
                            .err()
                            .map(|e| format!("{} ({}): {e}", standing.as_str(), cause.as_str()))
                    });
                    if let Some(e) = failed {
                        report.errors.push(format!(
                            "{file}: recipient {}: template {TEMPLATE} for its contact, {e}",
                            r.id
                        ));
                    }
                }
            }
        }
        if !uncontacted.is_empty() {
            report.notes.push(format!(
                "{} recipient(s) with a webhook name no contact to tell when it stops working: {}",
                uncontacted.len(),
                uncontacted.join(", ")
            ));
        }
    }

    /// One recipient per class a route can reach, to render its template as each would see it
    /// (`herald check`, and tests that render every route for every class).
    pub fn sample_recipients(&self, route: &Route) -> Vec<Arc<Recipient>> {
        self.samples(route.to.iter())
    }

    /// One recipient per class an escalation can reach, for the same.
    pub fn sample_escalation_recipients(
        &self,
        escalation: &crate::route::escalate::Escalation,
    ) -> Vec<Arc<Recipient>> {
        self.samples(escalation.to.iter())
    }

    fn samples<'s>(&self, to: impl Iterator<Item = &'s Selector>) -> Vec<Arc<Recipient>> {
        let mut classes: Vec<RecipientClass> = to.map(Selector::class).collect();
        classes.sort();
        classes.dedup();
        classes
            .into_iter()
            .map(|class| {
                self.engine
                    .directory
                    .of_class(class)
                    .next()
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Recipient {
                            id: RecipientId::sample(class),
                            class,
                            name: format!("a {class} recipient"),
                            email: vec![],
                            webhook: None,
                            contact: None,
                            acts_for: vec![],
                        })
                    })
            })
            .collect()
    }
}

/// The configuration in force. A reload replaces it whole; whoever took it keeps the one it
/// took, so an event is handled to its end under the configuration it started with.
#[derive(Debug, Clone)]
pub struct Live(Arc<RwLock<Arc<Core>>>);

impl Live {
    pub fn new(core: Arc<Core>) -> Live {
        Live(Arc::new(RwLock::new(core)))
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Core> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `core` in force; returns the one it replaces.
    pub fn replace(&self, core: Arc<Core>) -> Arc<Core> {
        std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|e| e.into_inner()),
            core,
        )
    }
}

/// The least time an SLA ever gives, whatever the event: `within 24h` gives 24 h, `within 2
/// working days` at least 2 days; `on the day of` and `before` depend on the event.
fn shortest_time(rule: &SlaRule) -> Option<Duration> {
    match rule {
        SlaRule::Within(d) => Some(*d),
        SlaRule::WithinWorkingDays(n) => Some(Duration::from_secs(u64::from(*n) * 86_400)),
        SlaRule::OnTheDayOf(_) | SlaRule::NoticeBefore { .. } => None,
    }
}

/// What `herald check` found beyond loading.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// For the summary of `herald check`: each event type Herald accepts in more than one
/// version, with its versions (` (court.hearing.concluded in versions 1 and 2)`), or nothing.
fn several_versions(schemas: &SchemaSet) -> String {
    let types: Vec<String> = schemas
        .event_types()
        .filter_map(|t| {
            let mut versions = schemas.versions(t).to_vec();
            versions.sort_unstable();
            let (last, rest) = versions.split_last()?;
            if rest.is_empty() {
                return None;
            }
            let rest: Vec<String> = rest.iter().map(u64::to_string).collect();
            Some(format!("{t} in versions {} and {last}", rest.join(", ")))
        })
        .collect();
    if types.is_empty() {
        String::new()
    } else {
        format!(" ({})", types.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped routes.toml, changed by `change`, loaded.
    fn shipped(change: impl FnOnce(&mut Config)) -> Core {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
        let mut config = Config::load_with(&path, |_| None).unwrap();
        change(&mut config);
        Core::from_config(config, &path).unwrap()
    }

    fn set(config: &mut Config, route: &str, volume: &str) {
        let r = config.routes.iter_mut().find(|r| r.name == route).unwrap();
        r.volume = Some(Rate::parse(volume).unwrap());
    }

    #[test]
    fn a_rate_limit_that_cannot_send_a_routes_volume_within_its_sla_is_a_warning() {
        let rate = |text: &str| Some(Rate::parse(text).unwrap());
        let leeds = |config: &mut Config| {
            let r = config
                .recipients
                .iter_mut()
                .find(|r| r.id == "police:WYP-LEEDS")
                .unwrap();
            r.webhook.as_mut().unwrap().rate = rate("1/min");
        };
        // No volume: nothing to judge.
        assert_eq!(shipped(leeds).rate_warnings(), Vec::<String>::new());
        // 100 a day into custody, all at once: 99 minutes at 1/min after the first, against
        // "within 1h". The urgent warrants (50) go first and take 49 minutes, within their
        // working day; the routine custody route waits behind them as well.
        let core = shipped(|c| {
            leeds(c);
            set(c, "ppo-received-into-custody", "100/day");
            set(c, "ppo-warrant", "50/day");
        });
        let warnings = core.rate_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].ends_with(
                "route ppo-received-into-custody: at the rate limit of the webhook of police:WYP-LEEDS (1/min), the 150 notifications its volume (100/day) and the routes sending with it can bring at once take 149m to send, longer than its SLA (within 1h)"
            ),
            "{warnings:#?}"
        );
        // More a day than the limit sends in a day: the backlog grows.
        let core = shipped(|c| {
            leeds(c);
            set(c, "ppo-bail-decision", "2000/day");
        });
        let warnings = core.rate_warnings();
        assert!(
            warnings.iter().any(|w| w.contains(
                "the webhook of police:WYP-LEEDS: its rate limit (1/min) is less than the volume routes ppo-bail-decision send it (about 83/h)"
            )),
            "{warnings:#?}"
        );
        // A limit with room: no warning. The relay: every legal representative is emailed
        // about each document.
        let core = shipped(|c| {
            c.email.rate = rate("3000/min");
            set(c, "dossier-document-legal-reps", "2000/day");
        });
        assert_eq!(core.rate_warnings(), Vec::<String>::new());
        let reps = core
            .engine
            .directory
            .of_class(RecipientClass::LegalRep)
            .count();
        let core = shipped(|c| {
            c.email.rate = rate("10/min");
            set(c, "dossier-document-legal-reps", "2000/day");
        });
        let warnings = core.rate_warnings();
        assert!(
            warnings.iter().any(|w| w.contains(&format!(
                "route dossier-document-legal-reps: at the rate limit of the email relay (10/min), the {} notifications its volume (2000/day) can bring at once",
                2000 * reps
            ))),
            "{warnings:#?}"
        );
    }

    #[test]
    fn the_check_summary_names_the_versions_of_a_type_that_has_several() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        std::fs::create_dir(dir.path().join("events")).unwrap();
        for name in ["common.schema.json", "envelope.schema.json"] {
            std::fs::copy(shipped.join(name), dir.path().join(name)).unwrap();
        }
        let copy = |name: &str, version: u64| {
            let from = shipped
                .join("events")
                .join(format!("{name}.v1.schema.json"));
            let mut doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(from).unwrap()).unwrap();
            let file = format!("{name}.v{version}.schema.json");
            doc["$id"] = format!("https://schemas.herald.example/v1/events/{file}").into();
            doc["properties"]["version"]["const"] = version.into();
            let to = dir.path().join("events").join(file);
            std::fs::write(to, serde_json::to_vec(&doc).unwrap()).unwrap();
        };
        copy("court.warrant.issued", 1);
        let load = || SchemaSet::load(dir.path()).unwrap();
        assert_eq!(several_versions(&load()), "");
        for version in [10, 2] {
            copy("court.warrant.issued", version);
        }
        copy("court.bail.decided", 1);
        copy("court.bail.decided", 2);
        assert_eq!(
            several_versions(&load()),
            " (court.bail.decided in versions 1 and 2; court.warrant.issued in versions 1, 2 and 10)"
        );
    }
}

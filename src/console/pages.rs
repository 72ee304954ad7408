//! The console's HTML pages: server-rendered (askama templates in `src/console/templates/`),
//! working without any script. Every form that changes something posts its CSRF token and
//! needs the operator right; see [`super::App::may_act`].

use std::sync::Arc;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::api::{self, EndpointInfo, PurgeRequest, ReplayRequest, Search};
use super::auth::{Right, User};
use super::views::{self, ClassViews, Step};
use super::{App, Failure};
use crate::ledger::Status;
use crate::ledger::read::{Found, instant_at};
use crate::serve::dlq::{self, Record, Replay, Which, plain};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/static/console.css", get(css))
        .route("/console/search", get(search))
        .route("/console/event", get(event))
        .route("/console/event/views", post(event_views))
        .route("/console/dead-letters/{queue}", get(dead_letters))
        .route("/console/dead-letters/{queue}/act", post(act))
        .route("/console/dead-letters/{queue}/{id}", get(dead_letter))
        .route("/console/endpoints", get(endpoints))
        .route("/console/endpoints/{recipient}/{channel}", get(endpoint))
        .route(
            "/console/endpoints/{recipient}/{channel}/{action}",
            post(endpoint_action),
        )
        .route("/console/report", get(report))
        .route("/console/report.html", get(report_html))
        .route("/console/report.csv", get(report_csv))
        .route("/console/audit", get(audit))
}

const CSS: &str = include_str!("console.css");

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

/// What every page's frame shows.
pub(super) struct Frame {
    pub(super) title: String,
    pub(super) nav: &'static str,
    pub(super) user: String,
    pub(super) right: &'static str,
    pub(super) csrf: String,
}

impl Frame {
    pub(super) fn new(
        app: &App,
        user: &User,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Frame {
        Frame {
            title: title.into(),
            nav,
            user: user.name.clone(),
            right: match user.right {
                Right::Read => "reader",
                Right::Operate => "operator",
            },
            csrf: app.access.csrf(user),
        }
    }
}

/// A rendered page, or the error page.
pub(super) fn page(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered\n",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    frame: Frame,
    message: String,
}

/// A failure as a page, with its status.
pub(super) fn failed(app: &App, user: &User, f: Failure) -> Response {
    let status = f.status;
    let mut r = page(ErrorPage {
        frame: Frame::new(app, user, "Not done", ""),
        message: f.message,
    });
    *r.status_mut() = status;
    r
}

/// A notification as a table row shows it.
struct Row {
    created_at: String,
    message_id: String,
    href: String,
    event_type: String,
    route: String,
    recipient: String,
    channel: String,
    status: &'static str,
    deadline: String,
    delivered_at: String,
    sla: String,
    attempts: i64,
    reason: String,
    /// `late` once the deadline has passed.
    class: &'static str,
}

/// An event's page. The id goes in the query, not the path: a publisher's message_id may be
/// anything, `..` included, which a path would not keep.
fn event_href(message_id: &str) -> String {
    format!("/console/event?id={}", encode(message_id))
}

/// What [`encode`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Text as one segment of a URL's path, or a value of its query: every byte but RFC 3986's
/// unreserved characters percent-encoded.
pub(super) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

impl Row {
    fn of(f: &Found, now: DateTime<Utc>) -> Row {
        Row {
            created_at: views::instant(f.created_at),
            href: event_href(&f.message_id),
            message_id: f.message_id.clone(),
            event_type: f.event_type.clone(),
            route: f.route.clone(),
            recipient: f.recipient.clone(),
            channel: f.channel.clone(),
            status: f.status.as_str(),
            deadline: views::maybe(f.deadline),
            delivered_at: views::maybe(f.delivered_at),
            sla: f.sla_outcome.clone().unwrap_or_default(),
            attempts: f.attempts,
            reason: f.reason.clone().unwrap_or_default(),
            class: if f.deadline.is_some_and(|d| d < now) {
                "late"
            } else {
                "soon"
            },
        }
    }
}

struct EndpointView {
    recipient: String,
    channel: String,
    name: String,
    class: String,
    state: String,
    since: String,
    reason: String,
    href: String,
    action_href: String,
}

impl EndpointView {
    fn of(e: &EndpointInfo) -> EndpointView {
        let base = format!(
            "/console/endpoints/{}/{}",
            encode(&e.recipient),
            encode(&e.channel)
        );
        EndpointView {
            recipient: e.recipient.clone(),
            channel: e.channel.clone(),
            name: e.name.clone(),
            class: e.class.clone(),
            state: e.state.clone(),
            since: views::maybe(e.since),
            reason: e.reason.clone().unwrap_or_default(),
            action_href: format!(
                "{base}/{}",
                if e.state == "disabled" {
                    "enable"
                } else {
                    "disable"
                }
            ),
            href: base,
        }
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    frame: Frame,
    o: api::Overview,
    chart: String,
    at_risk: Vec<Row>,
    troubled: Vec<EndpointView>,
}

async fn overview(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Response {
    let now = Utc::now();
    match api::overview_of(&app, now).await {
        Ok(o) => page(OverviewPage {
            frame: Frame::new(&app, &user, "Overview", "overview"),
            chart: views::chart(&o.minutes),
            at_risk: o.at_risk.iter().map(|f| Row::of(f, now)).collect(),
            troubled: o
                .endpoints
                .iter()
                .filter(|e| e.state != "closed")
                .map(EndpointView::of)
                .collect(),
            o,
        }),
        Err(f) => failed(&app, &user, f),
    }
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    frame: Frame,
    id: String,
    q: Search,
    statuses: Vec<&'static str>,
    problem: Option<String>,
    searched: bool,
    found: Vec<Row>,
    limit: i64,
}

#[derive(Debug, Default, Deserialize)]
struct SearchForm {
    id: Option<String>,
    #[serde(flatten)]
    search: Search,
}

async fn search(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(form): Query<SearchForm>,
) -> Response {
    let id = form.id.as_deref().map(str::trim).unwrap_or_default();
    if !id.is_empty() {
        return Redirect::to(&event_href(id)).into_response();
    }
    let now = Utc::now();
    let mut p = SearchPage {
        frame: Frame::new(&app, &user, "Search", "search"),
        id: String::new(),
        q: form.search.clone(),
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        problem: None,
        searched: false,
        found: Vec::new(),
        limit: 0,
    };
    if !form.search.is_empty() {
        match form.search.filter(now) {
            Ok(filter) => match app.store.search(&filter).await {
                Ok(found) => {
                    p.searched = true;
                    p.limit = filter.limit;
                    p.found = found.iter().map(|f| Row::of(f, now)).collect();
                }
                Err(e) => p.problem = Some(Failure::from(e).message),
            },
            Err(f) => p.problem = Some(f.message),
        }
    }
    page(p)
}

struct EventShown {
    publisher: String,
    message_id: String,
    event_type: String,
    version: Option<i64>,
    occurred_at: String,
    received_at: String,
    outcome: String,
    reason: Option<String>,
    persons: String,
    notifications: Vec<NotificationShown>,
}

struct NotificationShown {
    key: String,
    route: String,
    recipient: String,
    channel: String,
    status: &'static str,
    reason: Option<String>,
    summary: String,
    steps: Vec<Step>,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    frame: Frame,
    events: Vec<EventShown>,
    views: ClassViews,
    views_action: String,
}

async fn event_page(
    app: &App,
    user: &User,
    id: &str,
    body: Option<&serde_json::Value>,
) -> Result<EventPage, Failure> {
    let found = app.store.find(id).await?;
    if found.is_empty() {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!(
                "the ledger has no event with message_id {id:?}, nor a notification with that \
                 key"
            ),
        ));
    }
    let core = app.live.current();
    let redaction = &core.engine.redaction;
    let events = found
        .iter()
        .map(|e| EventShown {
            publisher: e.publisher.clone(),
            message_id: e.message_id.clone(),
            event_type: e.event_type.clone(),
            version: e.version,
            occurred_at: views::maybe(e.occurred_at),
            received_at: views::instant(e.received_at),
            outcome: e.outcome.clone(),
            reason: e.reason.clone(),
            persons: e.persons.join(", "),
            notifications: e
                .notifications
                .iter()
                .map(|n| NotificationShown {
                    key: n.key.clone(),
                    route: n.route.clone(),
                    recipient: n.recipient.clone(),
                    channel: n.channel.clone(),
                    status: n.status.as_str(),
                    reason: n.reason.clone(),
                    summary: match (&n.sla_outcome, n.deadline) {
                        (Some(o), Some(d)) => {
                            format!("{o}; deadline {}", views::instant(d))
                        }
                        (None, Some(d)) => format!("deadline {}", views::instant(d)),
                        (Some(o), None) => o.clone(),
                        (None, None) => "no deadline".into(),
                    },
                    steps: views::timeline(n, e.received_at),
                })
                .collect(),
        })
        .collect();
    Ok(EventPage {
        frame: Frame::new(app, user, format!("Event {id}"), "search"),
        events,
        views: match body {
            Some(b) => views::class_values(redaction, b),
            None => views::class_rules(redaction),
        },
        views_action: format!("/console/event/views?id={}", encode(id)),
    })
}

#[derive(Debug, Deserialize)]
struct EventId {
    id: String,
}

async fn event(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(EventId { id }): Query<EventId>,
) -> Response {
    match event_page(&app, &user, &id, None).await {
        Ok(p) => page(p),
        Err(f) => failed(&app, &user, f),
    }
}

/// The fields of a form body, in order (a name may repeat).
fn fields(body: &Bytes) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn event_views(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(EventId { id }): Query<EventId>,
    body: Bytes,
) -> Response {
    let form = fields(&body);
    // Reading only, but by POST (so the event stays out of URLs and logs): the token still
    // shows the form is the console's own.
    if !app.access.csrf_ok(&user, field(&form, "csrf")) {
        return failed(
            &app,
            &user,
            Failure::forbidden("refused: the form's CSRF token is missing or not yours"),
        );
    }
    let event: serde_json::Value = match serde_json::from_str(field(&form, "event").unwrap_or("")) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            return failed(
                &app,
                &user,
                Failure::bad_request("the event must be a JSON object: the envelope as published"),
            );
        }
        Err(e) => {
            return failed(
                &app,
                &user,
                Failure::bad_request(format!("the event is not JSON: {e}")),
            );
        }
    };
    match event_page(&app, &user, &id, Some(&event)).await {
        Ok(p) => page(p),
        Err(f) => failed(&app, &user, f),
    }
}

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct DeadLettersPage {
    frame: Frame,
    which: &'static str,
    queue: String,
    total: u32,
    records: Vec<Record>,
    operator: bool,
}

async fn dead_letters(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(queue): Path<String>,
) -> Response {
    let which = match api::which(&queue) {
        Ok(w) => w,
        Err(f) => return failed(&app, &user, f),
    };
    let listed = api::list(&app, which, 200).await;
    let name = app.settings_queue(which);
    match listed {
        Ok((records, total)) => page(DeadLettersPage {
            frame: Frame::new(&app, &user, format!("Parked in {name}"), which.as_str()),
            which: which.as_str(),
            queue: name,
            total,
            records,
            operator: user.right == Right::Operate,
        }),
        Err(f) => failed(&app, &user, f),
    }
}

struct ShownView {
    record: Record,
    properties: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: String,
    views: Option<ClassViews>,
}

#[derive(Template)]
#[template(path = "dead_letter.html")]
struct DeadLetterPage {
    frame: Frame,
    which: &'static str,
    shown: Vec<ShownView>,
    operator: bool,
}

async fn dead_letter(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path((queue, id)): Path<(String, String)>,
) -> Response {
    let which = match api::which(&queue) {
        Ok(w) => w,
        Err(f) => return failed(&app, &user, f),
    };
    let shown = match api::shown(&app, which, &id).await {
        Ok(s) if s.is_empty() => {
            return failed(
                &app,
                &user,
                Failure::new(
                    StatusCode::NOT_FOUND,
                    format!("no message in {queue} has that id (replayed or purged since?)"),
                ),
            );
        }
        Ok(s) => s,
        Err(f) => return failed(&app, &user, f),
    };
    let core = app.live.current();
    let redaction = &core.engine.redaction;
    let shown = shown
        .into_iter()
        .map(|s| ShownView {
            properties: s
                .properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), plain(v)))
                .collect(),
            headers: s
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
            body: match (&s.body, &s.body_text) {
                (Some(b), _) => serde_json::to_string_pretty(b).unwrap_or_default(),
                (None, t) => t.clone().unwrap_or_default(),
            },
            // A refused event's body is the envelope as published.
            views: s
                .body
                .as_ref()
                .filter(|b| which == Which::Rejected && b.get("additionalInformation").is_some())
                .map(|b| views::class_values(redaction, b)),
            record: s.record,
        })
        .collect();
    page(DeadLetterPage {
        frame: Frame::new(&app, &user, format!("Parked message {id}"), which.as_str()),
        which: which.as_str(),
        shown,
        operator: user.right == Right::Operate,
    })
}

#[derive(Template)]
#[template(path = "replayed.html")]
struct ReplayedPage {
    frame: Frame,
    which: &'static str,
    done: Replay,
    /// Each step: id, class, words.
    steps: Vec<(String, &'static str, String)>,
    /// The form fields that pick the same messages again, for the replay after a dry run.
    again: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "purge.html")]
struct PurgePage {
    frame: Frame,
    which: &'static str,
    queue: String,
    ids: Vec<String>,
    purged: Option<Vec<String>>,
}

fn step_words(step: &dlq::Step) -> (&'static str, String) {
    match step {
        dlq::Step::WouldReplay { summary } => ("would", format!("would replay: {summary}")),
        dlq::Step::Replayed {
            notifications,
            notes,
            warning,
        } => {
            let mut text = format!("replayed: {notifications} notification(s) queued");
            for n in notes {
                text.push_str(&format!("; {n}"));
            }
            if let Some(w) = warning {
                text.push_str(&format!("; {w}"));
            }
            (if warning.is_some() { "kept" } else { "done" }, text)
        }
        dlq::Step::Removed { why } => ("done", format!("removed: {why}")),
        dlq::Step::Kept { why } => ("kept", format!("kept: {why}")),
        dlq::Step::StillParked { why } => ("kept", format!("still parked: {why}")),
    }
}

/// A form on the dead-letter pages: dry run, replay, or purge, of the messages picked by id
/// or by the ledger's record.
async fn act(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: Bytes,
) -> Response {
    let form = fields(&body);
    if let Err(f) = app.may_act(&user, &headers, field(&form, "csrf")) {
        return failed(&app, &user, f);
    }
    let which = match api::which(&queue) {
        Ok(w) => w,
        Err(f) => return failed(&app, &user, f),
    };
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "ids" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    let text = |name: &str| {
        field(&form, name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let name = app.settings_queue(which);
    match field(&form, "do").unwrap_or_default() {
        "purge" => {
            if ids.is_empty() {
                return failed(
                    &app,
                    &user,
                    Failure::bad_request("pick the messages to purge"),
                );
            }
            if field(&form, "confirm") != Some("yes") {
                return page(PurgePage {
                    frame: Frame::new(&app, &user, "Purge?", which.as_str()),
                    which: which.as_str(),
                    queue: name,
                    ids,
                    purged: None,
                });
            }
            let request = PurgeRequest {
                ids,
                all: false,
                confirm: true,
            };
            match api::purge_as(&app, &user, which, &request).await {
                Ok(p) => page(PurgePage {
                    frame: Frame::new(&app, &user, "Purged", which.as_str()),
                    which: which.as_str(),
                    queue: p.queue,
                    ids: Vec::new(),
                    purged: Some(p.purged),
                }),
                Err(f) => failed(&app, &user, f),
            }
        }
        action @ ("replay" | "dry-run") => {
            let request = ReplayRequest {
                ids,
                all: false,
                since: text("since"),
                until: text("until"),
                route: text("route"),
                recipient: text("recipient"),
                dry_run: action == "dry-run",
            };
            // After a dry run, the replay picks exactly the messages the dry run showed.
            let done = match api::replay_as(&app, &user, which, &request).await {
                Ok(d) => d,
                Err(f) => return failed(&app, &user, f),
            };
            let again = done
                .steps
                .iter()
                .map(|d| ("ids".to_owned(), d.id.clone()))
                .collect();
            let steps = done
                .steps
                .iter()
                .map(|d| {
                    let (class, words) = step_words(&d.step);
                    (d.id.clone(), class, words)
                })
                .collect();
            let title = if done.dry_run {
                "Dry run of a replay"
            } else {
                "Replayed"
            };
            page(ReplayedPage {
                frame: Frame::new(&app, &user, title, which.as_str()),
                which: which.as_str(),
                done,
                steps,
                again,
            })
        }
        other => failed(
            &app,
            &user,
            Failure::bad_request(format!(
                "{other:?} is not an action: dry-run, replay or purge"
            )),
        ),
    }
}

#[derive(Template)]
#[template(path = "endpoints.html")]
struct EndpointsPage {
    frame: Frame,
    endpoints: Vec<EndpointView>,
    operator: bool,
}

async fn endpoints(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Response {
    match api::endpoints_of(&app).await {
        Ok(list) => page(EndpointsPage {
            frame: Frame::new(&app, &user, "Endpoints", "endpoints"),
            endpoints: list.iter().map(EndpointView::of).collect(),
            operator: user.right == Right::Operate,
        }),
        Err(f) => failed(&app, &user, f),
    }
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage {
    frame: Frame,
    e: EndpointView,
    failures: Vec<Row>,
}

async fn endpoint(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path((recipient, channel)): Path<(String, String)>,
) -> Response {
    let now = Utc::now();
    let list = match api::endpoints_of(&app).await {
        Ok(l) => l,
        Err(f) => return failed(&app, &user, f),
    };
    let Some(e) = list
        .iter()
        .find(|e| e.recipient == recipient && e.channel == channel)
    else {
        return failed(
            &app,
            &user,
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("the directory has no endpoint {recipient}/{channel}"),
            ),
        );
    };
    match app
        .store
        .failures_of(&recipient, &channel, now - Duration::days(7), 100)
        .await
    {
        Ok(failures) => page(EndpointPage {
            frame: Frame::new(&app, &user, format!("{recipient}/{channel}"), "endpoints"),
            e: EndpointView::of(e),
            failures: failures.iter().map(|f| Row::of(f, now)).collect(),
        }),
        Err(e) => failed(&app, &user, e.into()),
    }
}

async fn endpoint_action(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Path((recipient, channel, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let form = fields(&body);
    if let Err(f) = app.may_act(&user, &headers, field(&form, "csrf")) {
        return failed(&app, &user, f);
    }
    match api::set_endpoint_as(&app, &user, &recipient, &channel, &action).await {
        Ok(_) => Redirect::to("/console/endpoints").into_response(),
        Err(f) => failed(&app, &user, f),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Period {
    from: Option<String>,
    to: Option<String>,
}

impl Period {
    fn range(&self, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>), Failure> {
        let from = match self
            .from
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(t) => instant_at(t, now).map_err(Failure::bad_request)?,
            None => now - Duration::days(30),
        };
        let to = match self.to.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => instant_at(t, now).map_err(Failure::bad_request)?,
            None => now,
        };
        if to <= from {
            return Err(Failure::bad_request(
                "the period is empty: to is not after from",
            ));
        }
        Ok((from, to))
    }
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    frame: Frame,
    from: String,
    to: String,
    query: String,
    problem: Option<String>,
    /// Per route, then the total.
    report: Option<Vec<ReportRow>>,
}

struct ReportRow {
    name: String,
    notifications: u64,
    delivered: u64,
    met: u64,
    breached: u64,
    open: u64,
    within: String,
}

async fn report(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(period): Query<Period>,
) -> Response {
    let now = Utc::now();
    let mut p = ReportPage {
        frame: Frame::new(&app, &user, "The inspectors' report", "report"),
        from: String::new(),
        to: String::new(),
        query: String::new(),
        problem: None,
        report: None,
    };
    // Counted only when a period is asked for: a month of a million notifications takes
    // seconds (docs/ledger.md), which no page should take unasked.
    if period.from.is_none() && period.to.is_none() {
        return page(p);
    }
    match period.range(now) {
        Ok((from, to)) => {
            p.from = views::instant(from);
            p.to = views::instant(to);
            p.query = format!("from={}&to={}", encode(&p.from), encode(&p.to));
            match app.store.report(from, to, now).await {
                Ok(r) => {
                    let line = |l: &crate::ledger::report::Line| ReportRow {
                        name: l.name.clone(),
                        notifications: l.notifications,
                        delivered: l.delivered,
                        met: l.met,
                        breached: l.breached,
                        open: l.open,
                        within: l
                            .within_deadline_pct
                            .map_or_else(|| "-".into(), |p| format!("{p:.1} %")),
                    };
                    let mut lines: Vec<_> = r.routes.iter().map(line).collect();
                    let mut total = line(&r.total);
                    total.name = "all routes".into();
                    lines.push(total);
                    p.report = Some(lines);
                }
                Err(e) => p.problem = Some(Failure::from(e).message),
            }
        }
        Err(f) => p.problem = Some(f.message),
    }
    page(p)
}

/// The report as a download; its HTML carries its own inline style, so it gets a policy of
/// its own that allows that and nothing else.
async fn report_file(app: &App, user: &User, period: &Period, csv: bool) -> Response {
    let now = Utc::now();
    let built = match period.range(now) {
        Ok((from, to)) => app.store.report(from, to, now).await.map_err(Failure::from),
        Err(f) => Err(f),
    };
    let report = match built {
        Ok(r) => r,
        Err(f) => return failed(app, user, f),
    };
    let mut buffer = Vec::new();
    let written = if csv {
        report.write_csv(&mut buffer)
    } else {
        report.write_html(&mut buffer)
    };
    if let Err(e) = written {
        return failed(
            app,
            user,
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        );
    }
    let name = format!(
        "herald-report-{}-{}.{}",
        report.from.format("%Y%m%d"),
        report.to.format("%Y%m%d"),
        if csv { "csv" } else { "html" }
    );
    let mut r = buffer.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if csv {
            "text/csv; charset=utf-8"
        } else {
            "text/html; charset=utf-8"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; \
             form-action 'none'; base-uri 'none'; sandbox",
        ),
    );
    r
}

async fn report_html(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(period): Query<Period>,
) -> Response {
    report_file(&app, &user, &period, false).await
}

async fn report_csv(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(period): Query<Period>,
) -> Response {
    report_file(&app, &user, &period, true).await
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<(String, String, String, String, String)>,
}

async fn audit(State(app): State<Arc<App>>, Extension(user): Extension<User>) -> Response {
    match app.store.audit_trail(200).await {
        Ok(list) => page(AuditPage {
            frame: Frame::new(&app, &user, "Audit trail", "audit"),
            entries: list
                .into_iter()
                .map(|a| {
                    (
                        views::instant(a.at),
                        a.actor,
                        a.action,
                        a.subject,
                        a.detail.unwrap_or_default(),
                    )
                })
                .collect(),
        }),
        Err(e) => failed(&app, &user, e.into()),
    }
}

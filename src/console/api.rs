//! The JSON API under `/api/v1`, and the operations the pages share with it: what the
//! overview counts, a search, the endpoints with their states, a replay, a purge, an endpoint
//! disabled or enabled. `openapi.rs` generates the OpenAPI document from the handlers here.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Right, User};
use super::{App, Failure};
use crate::ledger::Status;
use crate::ledger::overview::{AuditEntry, EndpointRow, Minute, Totals};
use crate::ledger::read::{EventView, Filter, Found, ParkedFilter, instant_at};
use crate::serve::dlq::{Pick, Picked, Record, Replay, Shown, Which};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/session", get(session))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events/{id}", get(event))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v1/dead-letters/{queue}", get(dead_letters))
        .route("/api/v1/dead-letters/{queue}/replay", post(replay))
        .route("/api/v1/dead-letters/{queue}/purge", post(purge))
        .route("/api/v1/dead-letters/{queue}/{id}", get(dead_letter))
        .route("/api/v1/endpoints", get(endpoints))
        .route(
            "/api/v1/endpoints/{recipient}/{channel}/{action}",
            post(endpoint_action),
        )
        .route("/api/v1/audit", get(audit))
}

/// An error, as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

type Answer<T> = Result<Json<T>, Failure>;

/// Who the request is, what they may do, and the CSRF token their POSTs carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub user: String,
    pub right: Right,
    pub csrf: String,
}

#[utoipa::path(get, path = "/api/v1/session", responses((status = 200, description = "who the request is", body = Session)))]
pub(super) async fn session(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
) -> Json<Session> {
    Json(Session {
        csrf: app.access.csrf(&user),
        user: user.name,
        right: user.right,
    })
}

/// What the overview shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Events in and notifications delivered per minute, the last hour, oldest first.
    pub minutes: Vec<Minute>,
    pub totals: Totals,
    /// Undelivered notifications whose deadline is past or within the next two hours.
    pub at_risk: Vec<Found>,
    /// Messages in each of Herald's queues, as this instance last read them (`events`,
    /// `deliveries`, `retrying`, `rejected`, `failed`).
    pub queues: Vec<(String, i64)>,
    pub endpoints: Vec<EndpointInfo>,
}

/// How far ahead a deadline puts a notification at risk.
pub const AT_RISK_WITHIN: Duration = Duration::hours(2);

pub(super) async fn overview_of(app: &App, now: DateTime<Utc>) -> Result<Overview, Failure> {
    let store = &app.store;
    let minutes = store.per_minute(now - Duration::hours(1), now).await?;
    let totals = store.totals(now).await?;
    let at_risk = store.at_risk(now, AT_RISK_WITHIN, 50).await?;
    let queues = ["events", "deliveries", "retrying", "rejected", "failed"]
        .into_iter()
        .map(|q| {
            (
                q.to_owned(),
                app.metrics.queue_messages.with_label_values(&[q]).get(),
            )
        })
        .collect();
    Ok(Overview {
        minutes,
        totals,
        at_risk,
        queues,
        endpoints: endpoints_of(app).await?,
    })
}

#[utoipa::path(get, path = "/api/v1/overview", responses((status = 200, description = "the overview", body = Overview)))]
pub(super) async fn overview(State(app): State<Arc<App>>) -> Answer<Overview> {
    Ok(Json(overview_of(&app, Utc::now()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    params(("id" = String, Path, description = "the event's message_id, or a notification's key")),
    responses((status = 200, description = "every event with that message_id, or that made the notification with that key, with all the ledger holds about it", body = Vec<EventView>), (status = 404, description = "not found", body = ApiError))
)]
pub(super) async fn event(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Answer<Vec<EventView>> {
    let found = app.store.find(&id).await?;
    if found.is_empty() {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "the ledger has no event with that message_id, nor a notification with that key",
        ));
    }
    Ok(Json(found))
}

/// A search of the notifications; every part given must hold.
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// A person identifier (`NOMS:A1234BC`), or the value alone for any type.
    pub person: Option<String>,
    /// `police:WYP-LEEDS`.
    pub recipient: Option<String>,
    pub route: Option<String>,
    /// `pending`, `delivered`, `retrying`, `parked`, `expired` or `skipped`.
    pub status: Option<String>,
    /// Made at or after: RFC 3339, a date (midnight, London time) or a span back (`2h`).
    pub since: Option<String>,
    /// Made before (the same forms).
    pub until: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

impl Search {
    pub fn is_empty(&self) -> bool {
        [
            &self.person,
            &self.recipient,
            &self.route,
            &self.status,
            &self.since,
            &self.until,
        ]
        .iter()
        .all(|v| v.as_deref().is_none_or(|v| v.trim().is_empty()))
    }

    /// The ledger's filter, or what is wrong with the search.
    pub fn filter(&self, now: DateTime<Utc>) -> Result<Filter, Failure> {
        fn text(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let when = |v: &Option<String>| {
            text(v)
                .map(|t| instant_at(t, now).map_err(Failure::bad_request))
                .transpose()
        };
        let status = text(&self.status)
            .map(|s| {
                s.parse::<Status>().map_err(|_| {
                    Failure::bad_request(format!(
                        "{s:?} is not a status: give pending, delivered, retrying, parked, \
                         expired or skipped"
                    ))
                })
            })
            .transpose()?;
        Ok(Filter {
            person: text(&self.person).map(str::to_owned),
            recipient: text(&self.recipient).map(str::to_owned),
            route: text(&self.route).map(str::to_owned),
            status,
            since: when(&self.since)?,
            until: when(&self.until)?,
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    params(Search),
    responses((status = 200, description = "the notifications found, the most recently made first", body = Vec<Found>), (status = 400, description = "the request is not one the console can act on", body = ApiError))
)]
pub(super) async fn notifications(
    State(app): State<Arc<App>>,
    Query(search): Query<Search>,
) -> Answer<Vec<Found>> {
    let filter = search.filter(Utc::now())?;
    Ok(Json(app.store.search(&filter).await?))
}

/// What is parked in one queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub queue: String,
    /// Messages ready in the queue.
    pub total: u32,
    /// The first of them, in queue order.
    pub records: Vec<Record>,
}

pub(super) fn which(queue: &str) -> Result<Which, Failure> {
    match queue {
        "rejected" => Ok(Which::Rejected),
        "failed" => Ok(Which::Failed),
        other => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("{other:?} is not a parking queue: rejected or failed"),
        )),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/{queue}",
    params(("queue" = String, Path, description = "rejected or failed"), Limit),
    responses((status = 200, description = "what is parked", body = DeadLetters), (status = 502, description = "the broker cannot be reached", body = ApiError))
)]
pub(super) async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(queue): Path<String>,
    Query(limit): Query<Limit>,
) -> Answer<DeadLetters> {
    let which = which(&queue)?;
    let (records, total) = list(&app, which, limit.limit.unwrap_or(100)).await?;
    let queue = app.settings_queue(which);
    Ok(Json(DeadLetters {
        queue,
        total,
        records,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/{queue}/{id}",
    params(
        ("queue" = String, Path, description = "rejected or failed"),
        ("id" = String, Path, description = "the parked message's id, message_id or event id")
    ),
    responses((status = 200, description = "each parked message that id names, in full", body = Vec<Shown>), (status = 404, description = "not found", body = ApiError))
)]
pub(super) async fn dead_letter(
    State(app): State<Arc<App>>,
    Path((queue, id)): Path<(String, String)>,
) -> Answer<Vec<Shown>> {
    let shown = shown(&app, which(&queue)?, &id).await?;
    if shown.is_empty() {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no message in {queue} has that id, message_id or event id"),
        ));
    }
    Ok(Json(shown))
}

/// Up to `limit` (at most 1,000) parked messages of a queue, and how many it holds.
pub(super) async fn list(
    app: &App,
    which: Which,
    limit: usize,
) -> Result<(Vec<Record>, u32), Failure> {
    let limit = limit.clamp(1, 1000);
    app.with_parking(which, move |parking| async move {
        parking.list(which, limit).await
    })
    .await?
    .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e))
}

/// The parked messages `id` names exactly (their id as listed).
pub(super) async fn shown(app: &App, which: Which, id: &str) -> Result<Vec<Shown>, Failure> {
    let id = id.to_owned();
    let shown = app
        .with_parking(which, move |parking| async move {
            parking.show(which, &id).await
        })
        .await?
        .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e))?;
    Ok(shown)
}

/// Which parked messages to send again: `ids`, `all`, or those the ledger picks by the
/// rest (`route` and `recipient` only in `failed`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, ToSchema)]
pub struct ReplayRequest {
    /// The messages' ids, as listed (`p-…`), and no others.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    /// Parked at or after (failed: when the ledger recorded it parked; rejected: when
    /// received): RFC 3339, a date, or a span back (`2h`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub route: Option<String>,
    pub recipient: Option<String>,
    /// Say what would be replayed, and replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl ReplayRequest {
    fn filtered(&self) -> bool {
        [&self.since, &self.until, &self.route, &self.recipient]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
    }
}

pub(super) async fn replay_as(
    app: &App,
    user: &User,
    which: Which,
    request: &ReplayRequest,
) -> Result<Replay, Failure> {
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let pick = if request.filtered() {
        if which == Which::Rejected
            && (text(&request.route).is_some() || text(&request.recipient).is_some())
        {
            return Err(Failure::bad_request(
                "route and recipient pick notifications, in failed; a rejected event has neither",
            ));
        }
        let now = Utc::now();
        let when = |v: &Option<String>| {
            text(v)
                .map(|t| instant_at(&t, now).map_err(Failure::bad_request))
                .transpose()
        };
        let (since, until) = (when(&request.since)?, when(&request.until)?);
        let picked = match which {
            Which::Failed => {
                Picked::parked(
                    &app.store,
                    &ParkedFilter {
                        route: text(&request.route),
                        recipient: text(&request.recipient),
                        since,
                        until,
                    },
                )
                .await?
            }
            Which::Rejected => Picked::rejected(&app.store, since, until).await?,
        };
        Pick::Ledger(picked)
    } else if request.all {
        Pick::All
    } else if !request.ids.is_empty() {
        Pick::Exact(request.ids.clone())
    } else {
        return Err(Failure::bad_request(
            "name the messages to replay, ask for all, or pick them by time, route or recipient",
        ));
    };
    let books = app.books.acting(user.actor());
    let core = app.live.current();
    let dry_run = request.dry_run;
    let done = app
        .with_parking(which, move |parking| async move {
            parking.replay(&core, &books, which, &pick, dry_run).await
        })
        .await?
        .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e))?;
    tracing::info!(
        actor = %user.actor(),
        queue = %done.queue,
        picked = done.steps.len(),
        replayed = done.replayed(),
        failures = done.failures(),
        dry_run = request.dry_run,
        "replay from the console"
    );
    Ok(done)
}

#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{queue}/replay",
    params(("queue" = String, Path, description = "rejected or failed")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "what became of each message picked", body = Replay),
        (status = 400, description = "the request is not one the console can act on", body = ApiError),
        (status = 403, description = "no operator right, no CSRF token, or another site asking", body = ApiError)
    )
)]
pub(super) async fn replay(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Json(request): Json<ReplayRequest>,
) -> Answer<Replay> {
    app.may_act(&user, &headers, None)?;
    Ok(Json(
        replay_as(&app, &user, which(&queue)?, &request).await?,
    ))
}

/// Which parked messages to delete; `confirm` must be true.
#[derive(Debug, Default, Clone, Deserialize, Serialize, ToSchema)]
pub struct PurgeRequest {
    /// The messages' ids, as listed (`p-…`); or `all` for every one.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub confirm: bool,
}

/// What a purge deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    pub queue: String,
    /// The ids of the messages deleted, each in the audit trail.
    pub purged: Vec<String>,
    /// The ids named that are not in the queue.
    pub missing: Vec<String>,
}

pub(super) async fn purge_as(
    app: &App,
    user: &User,
    which: Which,
    request: &PurgeRequest,
) -> Result<Purged, Failure> {
    if !request.confirm {
        return Err(Failure::bad_request(
            "purging deletes parked messages for good: confirm it",
        ));
    }
    if request.ids.is_empty() && !request.all {
        return Err(Failure::bad_request(
            "name the messages to purge, or ask for all",
        ));
    }
    let pick = if request.all {
        Pick::All
    } else {
        Pick::Exact(request.ids.clone())
    };
    let books = app.books.acting(user.actor());
    let queue = app.settings_queue(which);
    let done = app
        .with_parking(which, move |parking| async move {
            parking.purge(which, &pick, &books).await
        })
        .await?;
    let (purged, missing) = done.map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e))?;
    tracing::info!(actor = %user.actor(), queue = %queue, purged = purged.len(), "purge from the console");
    Ok(Purged {
        queue,
        purged,
        missing,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{queue}/purge",
    params(("queue" = String, Path, description = "rejected or failed")),
    request_body = PurgeRequest,
    responses(
        (status = 200, description = "what was deleted", body = Purged),
        (status = 400, description = "the request is not one the console can act on", body = ApiError),
        (status = 403, description = "no operator right, no CSRF token, or another site asking", body = ApiError)
    )
)]
pub(super) async fn purge(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Json(request): Json<PurgeRequest>,
) -> Answer<Purged> {
    app.may_act(&user, &headers, None)?;
    Ok(Json(purge_as(&app, &user, which(&queue)?, &request).await?))
}

/// An endpoint of the directory: a recipient's channel, with its state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointInfo {
    pub recipient: String,
    pub name: String,
    pub class: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// `closed` (taking notifications), `open` (its breaker is open after failures) or
    /// `disabled` (HTTP 410, or an operator).
    pub state: String,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

pub(super) async fn endpoints_of(app: &App) -> Result<Vec<EndpointInfo>, Failure> {
    let rows: Vec<EndpointRow> = app.store.endpoints().await?;
    let mut out = Vec::new();
    let core = app.live.current();
    for r in core.engine.directory.all() {
        for channel in crate::notification::Channel::ALL {
            if !r.has_channel(channel) {
                continue;
            }
            let row = rows
                .iter()
                .find(|e| e.recipient == r.id.as_str() && e.channel == channel.as_str());
            out.push(EndpointInfo {
                recipient: r.id.as_str().to_owned(),
                name: r.name.clone(),
                class: r.class.as_str().to_owned(),
                channel: channel.as_str().to_owned(),
                state: row.map_or_else(|| "closed".to_owned(), |e| e.state.clone()),
                since: row.map(|e| e.since),
                reason: row.and_then(|e| e.reason.clone()),
            });
        }
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/endpoints", responses((status = 200, description = "every endpoint of the directory, with its state", body = Vec<EndpointInfo>)))]
pub(super) async fn endpoints(State(app): State<Arc<App>>) -> Answer<Vec<EndpointInfo>> {
    Ok(Json(endpoints_of(&app).await?))
}

/// What an action changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Changed {
    pub endpoint: String,
    pub state: String,
}

pub(super) async fn set_endpoint_as(
    app: &App,
    user: &User,
    recipient: &str,
    channel: &str,
    action: &str,
) -> Result<Changed, Failure> {
    let state = match action {
        "disable" => "disabled",
        "enable" => "closed",
        other => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not an action on an endpoint: disable or enable"),
            ));
        }
    };
    let core = app.live.current();
    let known = core.engine.directory.get(recipient).is_some_and(|r| {
        crate::notification::Channel::ALL
            .iter()
            .any(|c| c.as_str() == channel && r.has_channel(*c))
    });
    if !known {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("the directory has no endpoint {recipient}/{channel}"),
        ));
    }
    app.store
        .set_endpoint(recipient, channel, state, Utc::now(), &user.actor())
        .await?;
    tracing::info!(actor = %user.actor(), recipient, channel, state, "endpoint state set from the console; every instance takes it up within 2 s");
    Ok(Changed {
        endpoint: format!("{recipient}/{channel}"),
        state: state.to_owned(),
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{recipient}/{channel}/{action}",
    params(
        ("recipient" = String, Path, description = "police:WYP-LEEDS"),
        ("channel" = String, Path, description = "email or webhook"),
        ("action" = String, Path, description = "disable or enable")
    ),
    responses(
        (status = 200, description = "the endpoint's new state", body = Changed),
        (status = 403, description = "no operator right, no CSRF token, or another site asking", body = ApiError),
        (status = 404, description = "not found", body = ApiError)
    )
)]
pub(super) async fn endpoint_action(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    Path((recipient, channel, action)): Path<(String, String, String)>,
) -> Answer<Changed> {
    app.may_act(&user, &headers, None)?;
    Ok(Json(
        set_endpoint_as(&app, &user, &recipient, &channel, &action).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/audit", responses((status = 200, description = "the latest audit entries, the most recent first", body = Vec<AuditEntry>)))]
pub(super) async fn audit(State(app): State<Arc<App>>) -> Answer<Vec<AuditEntry>> {
    Ok(Json(app.store.audit_trail(200).await?))
}

//! The registers the events keep, as operators look at them: the authority register by
//! person or by representative (what `herald authority list` prints), who is in custody now by
//! home BCU or PDU (the custody register folded as the digests fold it), and each weekly
//! subscription's digest as its recipients would get it now (what `herald digest preview`
//! prints).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::User;
use super::pages::{Frame, encode, failed, page};
use super::{App, Failure};
use crate::directory::RecipientClass;
use crate::ledger::Pair;
use crate::ledger::read::instant_at;
use crate::route::authority::ChangeKind;
use crate::route::custody::fold;
use crate::route::subscription::title;
use crate::serve::digest::{registers, render};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/console/registers", get(authority_page))
        .route("/console/registers/digests/{name}", get(digest_page))
        .route("/console/registers/custody", get(custody_page))
        .route("/api/v1/registers/authority", get(authority))
        .route("/api/v1/registers/custody", get(custody))
}

/// Whose standing to show, and as of when.
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Asked {
    /// A person, by NOMS number: `NOMS:A1234BC`.
    pub person: Option<String>,
    /// A legal representative: `legal-rep:SMITH-AND-CO`.
    pub representative: Option<String>,
    /// The register as it stood then (RFC 3339, a date, or a span back); default now.
    pub at: Option<String>,
}

/// One pair's standing and the history that decided it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Standing {
    pub person: String,
    pub representative: String,
    /// `authorised`, `authorised (acts_for)`, `not yet`, `withdrawn`, `expired` or
    /// `not authorised`.
    pub standing: String,
    pub from: String,
    pub until: String,
    /// The register event that decided it.
    pub event: String,
    pub history: Vec<Change>,
}

/// One register event, in the order it applies.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    pub occurred_at: String,
    /// `grant` or `withdrawal`.
    pub change: String,
    pub effective_from: String,
    pub valid_until: String,
    pub event: String,
    pub received_at: String,
}

fn stamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn standing(p: &Pair, at: chrono::DateTime<Utc>) -> Standing {
    let [word, from, until, event] = p.standing(at).described();
    Standing {
        person: p.person.clone(),
        representative: p.representative.clone(),
        standing: word,
        from,
        until,
        event,
        history: p
            .rows
            .iter()
            .map(|r| Change {
                occurred_at: stamp(r.change.occurred_at),
                change: r.change.kind.as_str().to_owned(),
                effective_from: r.change.kind.from().to_string(),
                valid_until: match r.change.kind {
                    ChangeKind::Grant { until, .. } => {
                        until.map_or_else(|| "-".into(), |u| u.to_string())
                    }
                    ChangeKind::Withdrawal { .. } => "-".into(),
                },
                event: r.change.event.clone(),
                received_at: stamp(r.received_at),
            })
            .collect(),
    }
}

async fn standings(app: &App, asked: &Asked) -> Result<Vec<Standing>, Failure> {
    fn text(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let (person, representative) = (text(&asked.person), text(&asked.representative));
    if person.is_none() && representative.is_none() {
        return Ok(Vec::new());
    }
    if person.is_some_and(|p| !p.starts_with("NOMS:")) {
        return Err(Failure::bad_request(
            "give the person as NOMS:A1234BC: the register is kept by NOMS number",
        ));
    }
    let core = app.live.current();
    if let Some(r) = representative
        && core
            .engine
            .directory
            .get(r)
            .is_none_or(|r| r.class != RecipientClass::LegalRep)
    {
        return Err(Failure::bad_request(format!(
            "{r} is not a legal representative in the directory (routes.toml)"
        )));
    }
    let now = Utc::now();
    let at = match text(&asked.at) {
        Some(t) => instant_at(t, now).map_err(Failure::bad_request)?,
        None => now,
    };
    let pairs = app
        .store
        .register(&core.engine.directory, person, representative, at)
        .await?;
    Ok(pairs.iter().map(|p| standing(p, at)).collect())
}

#[utoipa::path(
    get,
    path = "/api/v1/registers/authority",
    params(Asked),
    responses(
        (status = 200, description = "each pair's standing and its history", body = Vec<Standing>),
        (status = 400, description = "the request is not one the console can act on", body = super::api::ApiError)
    )
)]
pub(super) async fn authority(
    State(app): State<Arc<App>>,
    Query(asked): Query<Asked>,
) -> Result<Json<Vec<Standing>>, Failure> {
    Ok(Json(standings(&app, &asked).await?))
}

struct Digest {
    name: String,
    title: &'static str,
    schedule: String,
    href: String,
}

#[derive(Template)]
#[template(path = "registers.html")]
struct RegistersPage {
    frame: Frame,
    asked: Asked,
    problem: Option<String>,
    standings: Vec<Standing>,
    digests: Vec<Digest>,
}

async fn authority_page(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(asked): Query<Asked>,
) -> Response {
    let (standings, problem) = match standings(&app, &asked).await {
        Ok(s) => (s, None),
        Err(f) => (Vec::new(), Some(f.message)),
    };
    page(RegistersPage {
        frame: Frame::new(&app, &user, "Registers", "registers"),
        asked,
        problem,
        standings,
        digests: app
            .live
            .current()
            .subscriptions
            .iter()
            .map(|s| Digest {
                name: s.name.to_string(),
                title: title(s.report),
                schedule: s.schedule_written.clone(),
                href: format!("/console/registers/digests/{}", encode(&s.name)),
            })
            .collect(),
    })
}

struct Preview {
    to: String,
    subject: String,
    text: String,
}

#[derive(Template)]
#[template(path = "digest.html")]
struct DigestPage {
    frame: Frame,
    due: String,
    people: usize,
    previews: Vec<Preview>,
}

async fn digest_page(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> Response {
    let core = app.live.current();
    let Some(sub) = core.subscriptions.iter().find(|s| *s.name == *name) else {
        return failed(
            &app,
            &user,
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("routes.toml has no subscription named {name}"),
            ),
        );
    };
    // As `herald digest preview` shows it: the latest scheduled time, from the register as
    // it stood then.
    let due = sub.schedule.last_due(Utc::now());
    let (now, week_ago) = match registers(&app.store, sub, due).await {
        Ok(r) => r,
        Err(e) => return failed(&app, &user, e.into()),
    };
    let lines = sub.lines(&now, &week_ago);
    let mut previews = Vec::new();
    for r in &sub.to {
        match render(&core, sub, due, &lines, r, false) {
            Ok(parts) => previews.push(Preview {
                to: format!(
                    "{} ({})",
                    r.id,
                    r.email
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                subject: parts.subject,
                text: parts.text,
            }),
            Err(e) => {
                return failed(
                    &app,
                    &user,
                    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e),
                );
            }
        }
    }
    page(DigestPage {
        frame: Frame::new(
            &app,
            &user,
            format!("Digest {}: {}", sub.name, title(sub.report)),
            "registers",
        ),
        due: stamp(due),
        people: lines.len(),
        previews,
    })
}

/// Whose custody to show: an area, by home BCU or probation delivery unit.
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Area {
    /// A home BCU (`WYP-LEEDS`) or a PDU (`PDU-LEEDS`), as the events give them.
    pub area: Option<String>,
}

/// A person in custody, as the custody register holds them now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InCustody {
    /// The NOMS number when known, else the first identifier.
    pub reference: String,
    /// The console's search for the person's notifications.
    #[serde(skip)]
    pub search: String,
    pub identifiers: Vec<String>,
    pub name: String,
    pub ppo: bool,
    pub home_bcu: String,
    pub pdu: String,
    /// The establishment's code and name.
    pub establishment: String,
    pub hdc_eligibility: String,
    pub release_date: String,
}

/// Everyone the custody register holds in custody now whose home BCU or PDU is the area,
/// by name.
async fn in_custody(app: &App, area: &Area) -> Result<Vec<InCustody>, Failure> {
    let Some(area) = area
        .area
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    else {
        return Ok(Vec::new());
    };
    let now = Utc::now();
    let entries = app.store.custody_entries(Some(now)).await?;
    let day = |d: Option<chrono::NaiveDate>| d.map_or_else(|| "-".into(), |d| d.to_string());
    let mut people: Vec<InCustody> = fold(&entries, now)
        .into_iter()
        .filter(|p| {
            p.in_custody
                && (p.offender.home_bcu.eq_ignore_ascii_case(area)
                    || p.offender.pdu.eq_ignore_ascii_case(area))
        })
        .map(|p| InCustody {
            reference: p.reference().to_owned(),
            search: format!("/console/search?person={}", encode(p.reference())),
            establishment: p
                .establishment
                .as_ref()
                .map_or_else(|| "-".into(), |e| format!("{} ({})", e.name, e.code)),
            hdc_eligibility: day(p.hdc_eligibility),
            release_date: day(p.release_date),
            name: p.offender.name.clone(),
            ppo: p.offender.ppo,
            home_bcu: p.offender.home_bcu.clone(),
            pdu: p.offender.pdu.clone(),
            identifiers: p.identifiers,
        })
        .collect();
    people.sort_by(|a, b| (&a.name, &a.reference).cmp(&(&b.name, &b.reference)));
    Ok(people)
}

#[utoipa::path(
    get,
    path = "/api/v1/registers/custody",
    params(Area),
    responses((status = 200, description = "everyone in custody now from the area, by name", body = Vec<InCustody>))
)]
pub(super) async fn custody(
    State(app): State<Arc<App>>,
    Query(area): Query<Area>,
) -> Result<Json<Vec<InCustody>>, Failure> {
    Ok(Json(in_custody(&app, &area).await?))
}

#[derive(Template)]
#[template(path = "custody.html")]
struct CustodyPage {
    frame: Frame,
    area: String,
    problem: Option<String>,
    people: Vec<InCustody>,
}

async fn custody_page(
    State(app): State<Arc<App>>,
    Extension(user): Extension<User>,
    Query(area): Query<Area>,
) -> Response {
    let (people, problem) = match in_custody(&app, &area).await {
        Ok(p) => (p, None),
        Err(f) => (Vec::new(), Some(f.message)),
    };
    page(CustodyPage {
        frame: Frame::new(&app, &user, "In custody, by area", "registers"),
        area: area.area.unwrap_or_default(),
        problem,
        people,
    })
}

//! The OpenAPI document of the console's JSON API, generated from its handlers (`api.rs`,
//! `registers.rs`): what `herald openapi` prints, `/api/v1/openapi.json` serves and
//! docs/openapi.json holds.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;

use super::{App, api, registers};

/// The OpenAPI document of the console's API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald operator's API",
        description = "What Herald's delivery ledger and parking queues hold, and the \
                       operator's actions on them (README, \"The operator's console\"). \
                       Authenticate with `Authorization: Bearer` (HERALD_CONSOLE_OPERATOR_TOKEN \
                       or HERALD_CONSOLE_READER_TOKEN) or HTTP Basic; a POST authenticated by \
                       Basic also needs the X-CSRF-Token header from /api/v1/session."
    ),
    paths(
        api::session,
        api::overview,
        api::event,
        api::notifications,
        api::dead_letters,
        api::dead_letter,
        api::replay,
        api::purge,
        api::endpoints,
        api::endpoint_action,
        api::audit,
        registers::authority,
        registers::custody
    ),
    components(schemas(
        api::Session,
        api::Overview,
        api::EndpointInfo,
        api::DeadLetters,
        api::ReplayRequest,
        api::PurgeRequest,
        api::Purged,
        api::Changed,
        api::ApiError
    )),
    security(("bearer" = []), ("basic" = [])),
    modifiers(&Security)
)]
pub struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The document as `herald openapi` prints it and `/api/v1/openapi.json` serves it.
pub fn document() -> String {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/openapi.json", get(openapi))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}

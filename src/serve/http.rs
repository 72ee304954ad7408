//! `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz` (connected
//! to the broker and consuming, and the ledger takes writes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ledger::Health;
use crate::metrics::Metrics;

/// What `/readyz` answers from.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Connected to the broker and consuming.
    pub consuming: AtomicBool,
    /// Whether the ledger takes writes.
    pub ledger: Health,
}

impl Readiness {
    /// Why Herald is not ready, if it is not.
    pub fn why_not(&self) -> Option<String> {
        if let Some(reason) = self.ledger.down() {
            return Some(format!(
                "the ledger takes no writes, so no event is taken ({reason})"
            ));
        }
        (!self.consuming.load(Ordering::Relaxed))
            .then(|| "not consuming from the broker".to_owned())
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    ready: Arc<Readiness>,
    reloads: super::reload::Requests,
}

/// Binds the address and serves until `shutdown`; returns the bound address.
pub async fn start(
    addr: &str,
    metrics: Metrics,
    ready: Arc<Readiness>,
    reloads: super::reload::Requests,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .with_state(Shared {
            metrics,
            ready,
            reloads,
        });
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(s.ready.why_not().is_none()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.ready.why_not() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `POST /-/reload`, from this machine only (as Prometheus's is meant to be used): the
/// configuration is loaded anew and put in force if it passes; 200 with what changed, or 422
/// with why it was refused (the configuration in force keeps running).
async fn reload(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    let loopback = match peer.ip() {
        std::net::IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .map_or(ip.is_loopback(), |v4| v4.is_loopback()),
        ip => ip.is_loopback(),
    };
    if !loopback {
        return (
            StatusCode::FORBIDDEN,
            "a reload is taken from this machine only (a loopback address); run `herald reload` there, or send the process SIGHUP\n".to_owned(),
        );
    }
    let done = super::ask_reload(&s.reloads).await;
    let status = if done.passed() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, done.text())
}

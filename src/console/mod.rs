//! The operator's console: HTML pages under `/console` and the same data as JSON under
//! `/api/v1` (described by the OpenAPI document at `/api/v1/openapi.json`, generated from
//! this code by `herald openapi`). Served by `herald serve` on an address of its own
//! (`[service] console_addr`, loopback by default), beside the broker and the ledger the
//! service uses. Pages and API read the ledger with the same queries as `herald ledger`, and
//! work the parking queues with the same code as `herald dlq`.
//!
//! `auth.rs` decides who may look and who may act; `api.rs` the JSON API; `openapi.rs` its
//! OpenAPI document; `pages.rs` the HTML (askama templates in `src/console/templates/`); `registers.rs` the
//! authority register and the weekly digests' previews; `views.rs`
//! what the pages show, worked out from records without I/O.

pub mod api;
pub mod auth;
pub mod openapi;
mod pages;
mod registers;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::Live;
use crate::ledger::{LedgerError, Store};
use crate::metrics::Metrics;
use crate::serve::Settings;
use crate::serve::dlq::{Books, Parking, Which};
use auth::{Access, AuthError, User, Via};

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("console: {0}")]
    Auth(#[from] AuthError),
    #[error("console: cannot read the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("console: cannot draw a key for its CSRF tokens: {0}")]
    Random(std::io::Error),
}

/// What every handler works with.
pub(crate) struct App {
    /// The configuration in force, as reloads change it.
    pub live: Live,
    pub settings: Settings,
    pub store: Store,
    pub books: Books,
    pub access: Access,
    pub metrics: Metrics,
    /// Whether the console listens on loopback (then it answers loopback names only).
    pub loopback: bool,
    /// One at a time on each parking queue (rejected, failed): a look takes the messages
    /// off the queue until it puts them back, and an action meanwhile would not see them.
    pub parking: [Arc<tokio::sync::Mutex<()>>; 2],
}

impl App {
    /// Runs `work` on a connection of its own to the broker, alone on the queue `which`, to
    /// its end even if the request that asked for it goes away (an operator closing the page
    /// must not cut a replay between sending and recording it).
    pub async fn with_parking<T, F, Fut>(&self, which: Which, work: F) -> Result<T, Failure>
    where
        F: FnOnce(Arc<Parking>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let lock = Arc::clone(&self.parking[usize::from(which == Which::Failed)]);
        let settings = self.settings.clone();
        tokio::spawn(async move {
            let _alone = lock.lock().await;
            let parking = Parking::open(&settings)
                .await
                .map(Arc::new)
                .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, format!("the broker: {e}")))?;
            let out = work(Arc::clone(&parking)).await;
            if let Ok(p) = Arc::try_unwrap(parking) {
                p.close().await;
            }
            Ok(out)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the work on the parking queue ended early: {e}"),
            ))
        })
    }

    /// The parking queue's name.
    pub fn settings_queue(&self, which: Which) -> String {
        match which {
            Which::Rejected => self.settings.rejected_queue.clone(),
            Which::Failed => self.settings.failed_queue.clone(),
        }
    }
}

/// Something a request could not do, as the user reads it.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("the ledger: {e}"))
    }
}

/// The console, listening.
pub struct Started {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// The console's address, bound, with who may use it: what is checked before the service
/// takes any event, so that a console that may not be served stops `herald serve` at once.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    access: Access,
}

/// Binds the console's address and reads its credentials. Refuses an address that is not
/// loopback unless credentials are set (see [`auth`]).
pub async fn bind(addr: &str, env: impl Fn(&str) -> Option<String>) -> Result<Bound, ConsoleError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Listen {
            addr: addr.to_owned(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen {
            addr: addr.to_owned(),
            source,
        })?;
    let access = Access::from_env(env, addr, bound.ip().is_loopback(), csrf_key()?)?;
    Ok(Bound {
        listener,
        addr: bound,
        access,
    })
}

impl Bound {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the console until `shutdown`.
    pub async fn serve(
        self,
        live: Live,
        settings: Settings,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Started, ConsoleError> {
        let store = Store::open_current(&settings.ledger_url).await?;
        // The console's replays are written by a writer of its own, whose metrics are its own:
        // the service's `herald_ledger_*` describe the service's writer only.
        let books = Books::new(store.clone(), String::new(), Metrics::new());
        let open = self.access.is_open();
        let app = Arc::new(App {
            live,
            settings,
            store,
            books,
            access: self.access,
            metrics,
            loopback: self.addr.ip().is_loopback(),
            parking: Default::default(),
        });
        let router = router(app);
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the console stopped");
            }
        });
        info!(
            console = %format!("http://{}/console", self.addr),
            authentication = if open { "none (loopback only)" } else { "required" },
            "the operator's console is listening"
        );
        Ok(Started {
            addr: self.addr,
            task,
        })
    }
}

/// Every route of the console and its API, behind the authentication and the security headers.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .merge(registers::routes())
        .merge(openapi::routes())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            authenticate,
        ))
        .layer(middleware::from_fn(secure))
        .with_state(app)
}

/// 32 bytes from the kernel's random source.
fn csrf_key() -> Result<[u8; 32], ConsoleError> {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(ConsoleError::Random)?;
    Ok(key)
}

/// The content security policy of every page: nothing from anywhere but the console itself,
/// no script, no frames, forms only to itself.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers on every response: never cached (the pages name people), no sniffing, no referrer
/// (a URL may hold an identifier the operator typed), no framing, and the CSP (unless the
/// handler set a stricter one of its own).
async fn secure(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    response
}

/// Finds the user behind a request, or answers 401; an open console answers only requests
/// addressed to a loopback name. Requests that change something are checked further by their
/// handlers ([`App::may_act`]).
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
    };
    // Another site's page may link here (a navigation), but not load or post anything.
    if matches!(header("sec-fetch-site"), "cross-site" | "same-site")
        && header("sec-fetch-mode") != "navigate"
    {
        return (
            StatusCode::FORBIDDEN,
            "refused: another site's page asked for this\n",
        )
            .into_response();
    }
    // On loopback, only requests addressed to loopback: a page of another site that rebinds
    // its own name to 127.0.0.1 is not answered.
    if app.loopback && !auth::loopback_host(header("host")) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this console listens on loopback, and answers only requests to 127.0.0.1, ::1 \
             or localhost\n",
        )
            .into_response();
    }
    // Open, it is for this machine's users only: not for what a proxy here passes on.
    if app.access.is_open()
        && ["forwarded", "x-forwarded-for", "x-real-ip", "via"]
            .iter()
            .any(|h| headers.contains_key(*h))
    {
        return (
            StatusCode::FORBIDDEN,
            "refused: this console has no credentials set and is for this machine's users \
             only, not for requests a proxy passes on\n",
        )
            .into_response();
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match app.access.check(authorization) {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"Herald console\", charset=\"UTF-8\"",
            )],
            "sign in: HTTP Basic with a console user, or a bearer token\n",
        )
            .into_response(),
    }
}

impl App {
    /// Whether `user` may do something that changes what Herald holds: the operator right,
    /// and, unless the request came with a bearer token (which a browser never sends by
    /// itself), the user's CSRF token and no sign of another site.
    pub fn may_act(
        &self,
        user: &User,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<(), Failure> {
        if user.right != auth::Right::Operate {
            return Err(Failure::forbidden(format!(
                "{} may look but not act: replaying, purging and disabling need the operator \
                 right",
                user.name
            )));
        }
        if user.via == Via::Bearer {
            return Ok(());
        }
        let site = headers
            .get("sec-fetch-site")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("same-origin");
        if !matches!(site, "same-origin" | "none") {
            return Err(Failure::forbidden(
                "refused: the request came from another site",
            ));
        }
        let csrf = csrf.or_else(|| headers.get("x-csrf-token").and_then(|h| h.to_str().ok()));
        if !self.access.csrf_ok(user, csrf) {
            return Err(Failure::forbidden(
                "refused: the form's CSRF token is missing or not this user's (reload the page \
                 and try again)",
            ));
        }
        Ok(())
    }
}

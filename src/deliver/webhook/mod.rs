//! The webhook channel: HTTPS POST (plain HTTP only to loopback) of the JSON body, signed with
//! the Standard Webhooks headers, over a keep-alive connection pool.
//!
//! Requests go straight through hyper's pooled client: each endpoint's URL is parsed once, and
//! nothing is done per request that a webhook does not need (no redirects, no cookies, no URL
//! re-parsing). Connections go direct: `HTTPS_PROXY` and the like are not used.

pub mod signature;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use signature::Secret;

use super::{Failure, FailureKind, Outgoing};
use crate::notification::Content;
use crate::route::Directory;

const AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Sends the webhook notifications.
pub struct WebhookSender {
    client: Client<Connector, Full<Bytes>>,
    /// The whole exchange (connect, send, answer) must finish within this.
    timeout: Duration,
    /// The endpoints' secrets and URLs, replaced whole when the configuration is reloaded.
    keys: RwLock<Arc<Keys>>,
}

/// What the sender knows of the directory's endpoints.
#[derive(Default)]
struct Keys {
    /// Recipient id -> current secret and, during a rotation, the previous one.
    secrets: HashMap<String, Vec<Secret>>,
    /// Recipient id -> the variable to set, for endpoints with no usable secret.
    missing: HashMap<String, String>,
    /// Each directory URL, as routes.toml spells it, parsed once.
    uris: HashMap<String, Uri>,
}

impl Keys {
    /// Reads each endpoint's signing secret from the environment variable routes.toml names;
    /// a warning per endpoint that cannot be signed for.
    fn of(directory: &Directory, env: &dyn Fn(&str) -> Option<String>) -> (Keys, Vec<String>) {
        let mut keys = Keys::default();
        let mut warnings = Vec::new();
        for r in directory.all() {
            let Some(w) = &r.webhook else { continue };
            if let Some(uri) = parse_uri(&w.url) {
                keys.uris.insert(w.url.clone(), uri);
            }
            let mut found = Vec::new();
            for name in std::iter::once(&w.secret_env).chain(&w.previous_secret_env) {
                match env(name).map(|v| Secret::parse(&v)) {
                    Some(Ok(s)) => found.push(s),
                    Some(Err(e)) => warnings.push(format!("{}: {name}: {e}", r.id)),
                    None if name == &w.secret_env => warnings.push(format!(
                        "{}: {name} is not set; its webhooks cannot be signed and will be parked",
                        r.id
                    )),
                    None => {}
                }
            }
            if found.is_empty() {
                keys.missing.insert(r.id.to_string(), w.secret_env.clone());
            } else {
                keys.secrets.insert(r.id.to_string(), found);
            }
        }
        (keys, warnings)
    }
}

impl WebhookSender {
    /// Reads each endpoint's signing secret from the environment variable routes.toml names.
    /// Returns the sender and a warning per endpoint that cannot be signed for (its
    /// notifications fail and are parked until the secret is set).
    pub fn new(
        directory: &Directory,
        timeout: Duration,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(WebhookSender, Vec<String>), String> {
        // One process-wide TLS provider (SMTP uses it too); a second install is refused, which
        // is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = HttpConnector::new();
        // TLS is the wrapper's business; routes.toml allows plain HTTP only to loopback.
        http.enforce_http(false);
        http.set_nodelay(true);
        // A pooled connection a middlebox has silently dropped is found out in about a
        // minute, not at the next request's timeout.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        #[cfg(target_os = "linux")]
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("cannot load the certificate verifier: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let connector = Connector {
            inner: https,
            timeout: timeout.min(Duration::from_secs(10)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let (keys, warnings) = Keys::of(directory, &env);
        Ok((
            WebhookSender {
                client,
                // A timeout beyond a day is a day (and cannot overflow the clock).
                timeout: timeout.min(Duration::from_secs(86_400)),
                keys: RwLock::new(Arc::new(keys)),
            },
            warnings,
        ))
    }

    /// Takes up a reloaded directory's endpoints: their secrets are read from the environment
    /// again. The endpoints only `previous` had keep theirs, for the events still being
    /// handled under the configuration it came from. Returns a warning per endpoint of
    /// `directory` that cannot be signed for.
    pub fn rekey(
        &self,
        directory: &Directory,
        previous: &Directory,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let (mut keys, warnings) = Keys::of(directory, env);
        let old = self.keys();
        for r in previous.all() {
            let id = r.id.as_str();
            if directory.get(id).is_some() {
                continue;
            }
            if let Some(s) = old.secrets.get(id) {
                keys.secrets.insert(id.to_owned(), s.clone());
            }
            if let Some(w) = &r.webhook
                && let Some(uri) = old.uris.get(&w.url)
            {
                keys.uris
                    .entry(w.url.clone())
                    .or_insert_with(|| uri.clone());
            }
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        warnings
    }

    fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub async fn send(&self, out: Outgoing<'_>) -> Result<(), Failure> {
        let Content::Webhook { url, body } = out.content else {
            return Err(Failure::new(
                FailureKind::WrongChannel,
                "not a webhook notification",
            ));
        };
        let keys = self.keys();
        let Some(secrets) = keys.secrets.get(out.recipient) else {
            let var = keys
                .missing
                .get(out.recipient)
                .map_or("its secret variable", String::as_str);
            return Err(Failure::new(
                FailureKind::NoSecret,
                format!("no signing secret: set {var}"),
            ));
        };
        // A URL not in the directory (a retry made before a configuration change) is parsed
        // here.
        let Some(uri) = keys
            .uris
            .get(url.as_str())
            .cloned()
            .or_else(|| parse_uri(url))
        else {
            return Err(Failure::new(
                FailureKind::BadUrl,
                "the webhook URL is not a valid URL",
            ));
        };
        let timestamp = chrono::Utc::now().timestamp();
        let id = out.key;
        let signature = match secrets.as_slice() {
            [one] => one.sign(id, timestamp, body.as_bytes()),
            several => several
                .iter()
                .map(|s| s.sign(id, timestamp, body.as_bytes()))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let invalid = |e: http::header::InvalidHeaderValue| {
            Failure::new(
                FailureKind::BadMessage,
                "the webhook request cannot be built",
            )
            .with_source(e)
        };
        // Room for these and the two hyper adds (host, content-length), allocated once.
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        headers.insert(WEBHOOK_ID, HeaderValue::from_str(id).map_err(invalid)?);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        headers.insert(
            WEBHOOK_SIGNATURE,
            HeaderValue::try_from(signature).map_err(invalid)?,
        );
        let mut request = Request::new(Full::new(Bytes::from(body.clone())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => Err(Failure::new(FailureKind::HttpTimeout, "HTTP timeout")),
            Ok(Err(e)) if e.is_connect() => {
                Err(Failure::new(FailureKind::HttpConnect, "HTTP connection failed").with_source(e))
            }
            Ok(Err(e)) => {
                Err(Failure::new(FailureKind::HttpRequest, "HTTP request failed").with_source(e))
            }
            Ok(Ok(response)) => Ok(response),
        }?;
        let outcome = classify(response.status(), response.headers());
        // Reads what is left of the answer (up to 64 KiB, within the same deadline; its body
        // means nothing to Herald), so the keep-alive connection can carry the next request
        // instead of being closed.
        let mut answer = response.into_body();
        let mut read = 0;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, answer.frame()).await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > 64 * 1024 {
                break;
            }
        }
        outcome
    }
}

/// Opens connections (DNS, TCP, TLS) within a time limit, including those the pool opens in
/// the background.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;
type Connection = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connecting = self.inner.call(uri);
        let limit = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| BoxError::from("connecting timed out"))?
        })
    }
}

/// A URL as the HTTP client takes it: parsed by the same rules the routes.toml check uses,
/// then in its ASCII form (international host names as punycode).
fn parse_uri(url: &str) -> Option<Uri> {
    url::Url::parse(url).ok()?.as_str().parse().ok()
}

/// 2xx is success; 408, 429 and 5xx are worth retrying (after `Retry-After` if given); 410 means
/// the endpoint is gone; everything else is permanent.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    let failure = match code {
        408 | 429 | 500..=599 => Failure::new(FailureKind::HttpRetryable, format!("HTTP {code}"))
            .with_retry_after(retry_after(headers, chrono::Utc::now())),
        410 => Failure::new(
            FailureKind::HttpGone,
            "HTTP 410 Gone: the endpoint asked not to be sent to again",
        ),
        _ => Failure::new(FailureKind::HttpRefused, format!("HTTP {code}")),
    };
    Err(failure.with_code(code))
}

/// `Retry-After` in either form RFC 9110 (10.2.3) gives it: a number of seconds, or an
/// HTTP-date (a date in the past means now). The retry schedule caps what it asks for.
fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_standard_says() {
        let none = HeaderMap::new();
        assert!(classify(StatusCode::NO_CONTENT, &none).is_ok());
        let mut retry = HeaderMap::new();
        retry.insert(RETRY_AFTER, "120".parse().unwrap());
        let throttled = classify(StatusCode::TOO_MANY_REQUESTS, &retry).unwrap_err();
        assert_eq!(
            (throttled.kind, throttled.code, throttled.detail.as_str()),
            (FailureKind::HttpRetryable, Some(429), "HTTP 429")
        );
        assert_eq!(throttled.retry_after, Some(Duration::from_secs(120)));
        let gone = classify(StatusCode::GONE, &none).unwrap_err();
        assert_eq!((gone.kind, gone.code), (FailureKind::HttpGone, Some(410)));
        assert!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &none)
                .unwrap_err()
                .is_transient()
        );
        assert!(
            classify(StatusCode::REQUEST_TIMEOUT, &none)
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !classify(StatusCode::GONE, &none)
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !classify(StatusCode::BAD_REQUEST, &none)
                .unwrap_err()
                .is_transient()
        );
        assert!(
            !classify(StatusCode::MOVED_PERMANENTLY, &none)
                .unwrap_err()
                .is_transient()
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-20T15:42:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            h
        };
        assert_eq!(
            retry_after(&header("30"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&header("Fri, 20 Nov 2026 15:47:00 GMT"), now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after(&header("Fri, 20 Nov 2026 15:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date already past means now"
        );
        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}

//! The webhook channel: HTTPS POST (plain HTTP only to loopback) of the JSON body, signed with
//! the Standard Webhooks headers, over a keep-alive connection pool.

pub mod signature;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

pub use signature::Secret;

use super::{Failure, Outgoing};
use crate::notification::Content;
use crate::route::Directory;

/// Sends the webhook notifications.
pub struct WebhookSender {
    client: reqwest::Client,
    /// Recipient id -> current secret and, during a rotation, the previous one.
    secrets: HashMap<String, Vec<Secret>>,
    /// Recipient id -> the variable to set, for endpoints with no usable secret.
    missing: HashMap<String, String>,
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
        // One process-wide TLS provider; a second install is refused, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut secrets = HashMap::new();
        let mut missing = HashMap::new();
        let mut warnings = Vec::new();
        for r in directory.all() {
            let Some(w) = &r.webhook else { continue };
            let mut keys = Vec::new();
            for name in std::iter::once(&w.secret_env).chain(&w.previous_secret_env) {
                match env(name).map(|v| Secret::parse(&v)) {
                    Some(Ok(s)) => keys.push(s),
                    Some(Err(e)) => warnings.push(format!("{}: {name}: {e}", r.id)),
                    None if name == &w.secret_env => warnings.push(format!(
                        "{}: {name} is not set; its webhooks cannot be signed and will be parked",
                        r.id
                    )),
                    None => {}
                }
            }
            if keys.is_empty() {
                missing.insert(r.id.to_string(), w.secret_env.clone());
            } else {
                secrets.insert(r.id.to_string(), keys);
            }
        }
        Ok((
            WebhookSender {
                client,
                secrets,
                missing,
            },
            warnings,
        ))
    }

    pub async fn send(&self, out: Outgoing<'_>) -> Result<(), Failure> {
        let Content::Webhook { url, body } = out.content else {
            return Err(Failure::Permanent {
                reason: "not a webhook notification".into(),
            });
        };
        let Some(secrets) = self.secrets.get(out.recipient) else {
            let var = self
                .missing
                .get(out.recipient)
                .map_or("its secret variable", String::as_str);
            return Err(Failure::Permanent {
                reason: format!("no signing secret: set {var}"),
            });
        };
        let timestamp = chrono::Utc::now().timestamp();
        let id = out.key;
        let signatures: Vec<String> = secrets
            .iter()
            .map(|s| s.sign(id, timestamp, body.as_bytes()))
            .collect();
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(body.clone())
            .send()
            .await
            .map_err(|e| Failure::Transient {
                reason: if e.is_timeout() {
                    "HTTP timeout".into()
                } else if e.is_connect() {
                    "HTTP connection failed".into()
                } else {
                    "HTTP request failed".into()
                },
                retry_after: None,
            })?;
        let outcome = classify(response.status(), response.headers());
        drain(response).await;
        outcome
    }
}

/// Reads what is left of a response (up to 64 KiB; an answer's body means nothing to Herald),
/// so its keep-alive connection can carry the next request instead of being closed.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > 64 * 1024 {
            break;
        }
    }
}

/// 2xx is success; 408, 429 and 5xx are worth retrying (after `Retry-After` if given); 410 means
/// the endpoint is gone; everything else is permanent.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("HTTP {}", status.as_u16());
    match status.as_u16() {
        408 | 429 | 500..=599 => Err(Failure::Transient {
            reason,
            retry_after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }),
        410 => Err(Failure::Permanent {
            reason: "HTTP 410 Gone: the endpoint asked not to be sent to again".into(),
        }),
        _ => Err(Failure::Permanent { reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_standard_says() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::NO_CONTENT, &none), Ok(()));
        let mut retry = HeaderMap::new();
        retry.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &retry),
            Err(Failure::Transient {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(120))
            })
        );
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
}

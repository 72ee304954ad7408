//! `herald receive`: a loopback webhook receiver that verifies Standard Webhooks signatures
//! and prints each delivery (with `--verbose`, its headers and body), so a recipient's
//! developers see exactly what Herald sends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;

use crate::deliver::webhook::Secret;
use crate::deliver::webhook::signature::verify;

/// Why `--addr` is not an address `receive` listens on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("--addr {0}: not a port (19901) nor a loopback address and port (127.0.0.1:19901)")]
    NotAnAddress(String),
    #[error(
        "--addr {0}: herald receive listens on loopback only (it is a local try-out tool); give a port (19901) or 127.0.0.1:PORT"
    )]
    NotLoopback(String),
}

/// `--addr` as given: a bare port means that port on 127.0.0.1, `localhost:PORT` too; any
/// other address must be a loopback one, since the receiver is for trying Herald out on one
/// machine and answers anyone who can reach it.
pub fn listen_addr(text: &str) -> Result<SocketAddr, AddrError> {
    let local = |port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let addr = if let Ok(port) = text.parse::<u16>() {
        local(port)
    } else if let Some(port) = text.strip_prefix("localhost:") {
        local(
            port.parse()
                .map_err(|_| AddrError::NotAnAddress(text.to_owned()))?,
        )
    } else {
        text.parse::<SocketAddr>()
            .map_err(|_| AddrError::NotAnAddress(text.to_owned()))?
    };
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(AddrError::NotLoopback(text.to_owned()))
    }
}

/// What each request is checked with and how much of it is printed.
struct Receiver {
    secret: Secret,
    /// Print each request's headers and body after its line.
    verbose: bool,
}

pub async fn run(addr: &str, secret_env: &str, verbose: bool) -> ExitCode {
    let addr = match listen_addr(addr) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let secret = match std::env::var(secret_env).map(|v| Secret::parse(&v)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("error: {secret_env}: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("error: set {secret_env} to the endpoint's whsec_ signing secret");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    println!("listening on http://{addr}/ (any path); verifying with {secret_env}");
    let app = Router::new()
        .fallback(receive)
        .with_state(Arc::new(Receiver { secret, verbose }));
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header("webhook-id");
    let verdict = verify(
        &receiver.secret,
        id,
        header("webhook-timestamp"),
        &body,
        header("webhook-signature"),
        chrono::Utc::now().timestamp(),
    );
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let notification = &payload["data"]["notification"];
    let field = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let (status, shown) = match &verdict {
        Ok(()) => (StatusCode::NO_CONTENT, "verified".to_string()),
        Err(e) => (StatusCode::UNAUTHORIZED, format!("NOT VERIFIED ({e})")),
    };
    let mut out = format!(
        "{shown}  id {id}  {}  to {}  route {}  {}",
        field(&payload["type"]),
        field(&notification["recipient"]),
        field(&notification["route"]),
        uri.path()
    );
    if receiver.verbose {
        out.push_str(&details(&method, &uri, &headers, &body));
    }
    // One write per request, so the lines of requests arriving together do not interleave.
    println!("{out}");
    status
}

/// The request as it came, under its line: method and path, each header, then the body
/// exactly as received (the bytes the signature covers), indented; control characters a
/// sender put in are shown as `?`, so they cannot drive the terminal.
fn details(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let mut out = format!("\n    {method} {uri}");
    for (name, value) in headers {
        out.push_str(&format!(
            "\n    {name}: {}",
            printable(&String::from_utf8_lossy(value.as_bytes()))
        ));
    }
    out.push('\n');
    for line in String::from_utf8_lossy(body).lines() {
        out.push_str(&format!("\n    {}", printable(line)));
    }
    out.push('\n');
    out
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_means_loopback_and_other_hosts_are_refused() {
        let ok = |text: &str| listen_addr(text).map(|a| a.to_string());
        assert_eq!(ok("19901").as_deref(), Ok("127.0.0.1:19901"));
        assert_eq!(ok("localhost:19901").as_deref(), Ok("127.0.0.1:19901"));
        assert_eq!(ok("127.0.0.2:80").as_deref(), Ok("127.0.0.2:80"));
        assert_eq!(ok("[::1]:19901").as_deref(), Ok("[::1]:19901"));
        for far in ["0.0.0.0:9900", "192.0.2.7:9900", "[::]:9900"] {
            assert_eq!(
                listen_addr(far),
                Err(AddrError::NotLoopback(far.into())),
                "{far}"
            );
        }
        for bad in ["", "99999", "localhost", "host.example:9900", "localhost:x"] {
            assert_eq!(
                listen_addr(bad),
                Err(AddrError::NotAnAddress(bad.into())),
                "{bad}"
            );
        }
    }
}

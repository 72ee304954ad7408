//! `herald receive`: a loopback webhook receiver that verifies Standard Webhooks signatures
//! and prints each delivery, so a recipient's developers see exactly what Herald sends.

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;

use crate::deliver::webhook::Secret;
use crate::deliver::webhook::signature::verify;

pub async fn run(addr: &str, secret_env: &str) -> ExitCode {
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
    println!("listening on http://{addr}/ (any path); verifying with {secret_env}");
    let app = Router::new().fallback(receive).with_state(Arc::new(secret));
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn receive(
    State(secret): State<Arc<Secret>>,
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
        &secret,
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
    println!(
        "{shown}  id {id}  {}  to {}  route {}  {}",
        field(&payload["type"]),
        field(&notification["recipient"]),
        field(&notification["route"]),
        uri.path()
    );
    status
}

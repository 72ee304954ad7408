//! `herald reload`: asks the `herald serve` on this machine to load routes.toml, the schemas
//! and the templates again, through `POST /-/reload` on its metrics address, and prints its
//! answer: reloaded (with any warning), unchanged, or refused with every error (the
//! configuration in force keeps running).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long the service may take to load and check the configuration (every template is
/// rendered against every example).
const ANSWER_WAIT: Duration = Duration::from_secs(120);

pub async fn run(metrics_addr: &str) -> ExitCode {
    let addr = local(metrics_addr);
    match ask(&addr).await {
        Ok((status, text)) => {
            if status == StatusCode::OK {
                print!("{text}");
                ExitCode::SUCCESS
            } else {
                eprint!("{text}");
                ExitCode::FAILURE
            }
        }
        Err(why) => {
            eprintln!(
                "error: no herald serve answered at http://{addr}/-/reload ({why}); is it running on this machine with this configuration's [service] metrics_addr (or HERALD_METRICS_ADDR)?"
            );
            ExitCode::from(2)
        }
    }
}

/// The metrics address as this machine reaches it: a wildcard address means the service
/// listens on loopback too, and the service takes a reload from loopback only.
fn local(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("0.0.0.0" | "", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => addr.to_owned(),
    }
}

// String error: the words for the one line `run` prints.
async fn ask(addr: &str) -> Result<(StatusCode, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/-/reload")
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(ANSWER_WAIT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", ANSWER_WAIT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_reached_on_loopback() {
        assert_eq!(local("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(local("[::]:9464"), "[::1]:9464");
        assert_eq!(local(":9464"), "127.0.0.1:9464");
        assert_eq!(local("127.0.0.1:19464"), "127.0.0.1:19464");
    }
}

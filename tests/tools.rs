//! `herald publish` and `herald receive`, run as a user runs them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::service::{self, Names};
use hmac::{Hmac, Mac};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sha2::Sha256;

#[tokio::test(flavor = "multi_thread")]
async fn publish_sets_the_properties_agencies_must_set() {
    let names = Names::new("publish");
    let (_conn, ch) = service::channel().await;
    ch.exchange_declare(
        names.exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        names.queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        names.queue.as_str().into(),
        names.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!("[amqp]\nexchange = \"{}\"\n", names.exchange),
    )
    .unwrap();
    let file = common::example_path("valid", "court.warrant.issued.json");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["publish", "--config"])
        .arg(&config)
        .arg(&file)
        .env("HERALD_AMQP_URL", service::AMQP_URL)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("as court.warrant.issued"));

    let got = service::drain(&ch, &names.queue).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.routing_key.as_str(), "court.warrant.issued");
    assert_eq!(m.data, std::fs::read(&file).unwrap());
    let p = &m.properties;
    assert_eq!(p.user_id().as_ref().map(|u| u.as_str()), Some("guest"));
    assert!(
        p.message_id()
            .as_ref()
            .is_some_and(|id| !id.as_str().is_empty())
    );
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2));

    // An exchange with no queue bound: the publish is returned, and said so.
    std::fs::write(&config, "[amqp]\nexchange = \"amq.topic\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["publish", "--config"])
        .arg(&config)
        .arg(&file)
        .env("HERALD_AMQP_URL", service::AMQP_URL)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not routed"));
    service::cleanup(&ch, &names).await;
}

fn sign(id: &str, ts: i64, body: &str) -> String {
    let key = STANDARD
        .decode(service::SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_verifies_signatures_and_prints_each_delivery() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["receive", "--addr", &format!("127.0.0.1:{port}")])
        .env("HERALD_WEBHOOK_SECRET", service::SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("listening on"));

    let body = r#"{"type":"court.warrant.issued","data":{"notification":{"recipient":"police:WYP-LEEDS","route":"ppo-fta-warrant"}}}"#;
    let ts = chrono::Utc::now().timestamp();
    service::install_tls();
    let client = reqwest::Client::new();
    let post = |sig: String| {
        client
            .post(format!("http://127.0.0.1:{port}/police/WYP-LEEDS"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .timeout(Duration::from_secs(5))
            .send()
    };
    assert_eq!(post(sign("msg_1", ts, body)).await.unwrap().status(), 204);
    assert_eq!(post(sign("msg_2", ts, body)).await.unwrap().status(), 401);
    let good = lines.next().unwrap().unwrap();
    assert!(
        good.starts_with("verified")
            && good.contains("msg_1")
            && good.contains("police:WYP-LEEDS")
            && good.contains("ppo-fta-warrant"),
        "{good}"
    );
    let bad = lines.next().unwrap().unwrap();
    assert!(bad.starts_with("NOT VERIFIED"), "{bad}");
    let _ = child.kill();
    let _ = child.wait();
}

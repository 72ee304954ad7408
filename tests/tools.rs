//! `herald publish` and `herald receive`, run as a user runs them.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::service::{self, Names};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

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
        .env("HERALD_AMQP_URL", service::amqp_url())
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
        .env("HERALD_AMQP_URL", service::amqp_url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not routed"));
    service::cleanup(&ch, &names).await;
}

/// `herald receive` running with these arguments, stopped when dropped.
struct Receive {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Receive {
    /// Starts it and reads its first line, which says where it listens.
    fn start(args: &[&str]) -> (Receive, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("receive")
            .args(args)
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        (Receive { child, lines }, first)
    }

    fn line(&mut self) -> String {
        self.lines.next().unwrap().unwrap()
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A warrant's webhook as Herald would send it, signed with `id`.
const HOOK: &str = r#"{"type":"court.warrant.issued","data":{"notification":{"recipient":"police:WYP-LEEDS","route":"ppo-fta-warrant"}}}"#;

/// Posts [`HOOK`] to `/police/WYP-LEEDS` on `port` with these Standard Webhooks headers;
/// the status the receiver answered.
async fn post_hook(port: u16, id: &str, signed_as: &str) -> u16 {
    let ts = chrono::Utc::now().timestamp();
    service::install_tls();
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/police/WYP-LEEDS"))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            service::sign(signed_as, &ts.to_string(), HOOK.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(HOOK)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_verifies_signatures_and_prints_each_delivery() {
    let port = service::free_port();
    let (mut receive, first) = Receive::start(&["--addr", &format!("127.0.0.1:{port}")]);
    assert!(first.starts_with("listening on"), "{first}");
    assert_eq!(post_hook(port, "msg_1", "msg_1").await, 204);
    assert_eq!(post_hook(port, "msg_1", "msg_2").await, 401);
    let good = receive.line();
    assert!(
        good.starts_with("verified")
            && good.contains("msg_1")
            && good.contains("police:WYP-LEEDS")
            && good.contains("ppo-fta-warrant"),
        "{good}"
    );
    let bad = receive.line();
    assert!(bad.starts_with("NOT VERIFIED"), "{bad}");
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_verbose_prints_each_requests_headers_and_body_after_its_line() {
    let port = service::free_port();
    let (mut receive, _) = Receive::start(&["--addr", &port.to_string(), "--verbose"]);
    assert_eq!(post_hook(port, "msg_v1", "msg_v1").await, 204);
    let summary = receive.line();
    assert!(
        summary.starts_with("verified  id msg_v1  court.warrant.issued"),
        "{summary}"
    );
    let mut block = Vec::new();
    loop {
        let line = receive.line();
        if line.is_empty() && block.last().is_some_and(|l: &String| l.contains('{')) {
            break;
        }
        block.push(line);
    }
    assert_eq!(block[0], "    POST /police/WYP-LEEDS", "{block:#?}");
    let headers: Vec<&str> = block[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(String::as_str)
        .collect();
    for want in [
        "    webhook-id: msg_v1",
        "    content-type: application/json",
        &format!("    content-length: {}", HOOK.len()),
    ] {
        assert!(headers.contains(&want), "no {want:?}: {block:#?}");
    }
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("    webhook-timestamp: ")),
        "{block:#?}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("    webhook-signature: v1,")),
        "{block:#?}"
    );
    assert_eq!(
        block.last().map(String::as_str),
        Some(format!("    {HOOK}").as_str()),
        "the body exactly as sent: {block:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_takes_a_bare_port_as_loopback_and_refuses_any_other_address() {
    let port = service::free_port();
    let (mut receive, first) = Receive::start(&["--addr", &port.to_string()]);
    assert!(
        first.starts_with(&format!("listening on http://127.0.0.1:{port}/")),
        "{first}"
    );
    assert_eq!(post_hook(port, "msg_1", "msg_1").await, 204);
    assert!(receive.line().starts_with("verified"));

    for far in [
        format!("0.0.0.0:{}", service::free_port()),
        "192.0.2.7:9900".into(),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["receive", "--addr", &far])
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{far}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: --addr {far}: "))
                && stderr.contains("loopback only"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "it never listened");
    }
}

/// The sample directory's webhooks go where HERALD_RECEIVER_URL says: Herald, started as a
/// user starts it with routes.toml's webhook urls left as shipped, delivers a warrant to a
/// receiver on a port of the test's own.
#[tokio::test(flavor = "multi_thread")]
async fn serve_sends_the_sample_webhooks_to_the_receiver_url() {
    let (receiver, names) = (service::Receiver::start().await, Names::new("receiverurl"));
    let dir = tempfile::tempdir().unwrap();
    let text = service::config_text(&names, "\"court.*\"", "");
    assert!(text.contains("url = \"${HERALD_RECEIVER_URL}/police/WYP-LEEDS\""));
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, text).unwrap();
    let mut herald = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("HERALD_AMQP_URL", service::amqp_url())
        .env("HERALD_RECEIVER_URL", receiver.url())
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        .env("HERALD_WEBHOOK_SECRET", service::SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &std::fs::read(common::example_path("valid", "court.warrant.issued.json")).unwrap(),
        service::agency("receiver-url-1"),
    )
    .await;
    service::wait_until("the warrant's webhook", Duration::from_secs(30), || async {
        receiver
            .hooks()
            .iter()
            .any(|h| h.path == "/police/WYP-LEEDS" && h.verified)
    })
    .await;
    let _ = herald.kill();
    let _ = herald.wait();
    service::cleanup(&ch, &names).await;
}

/// Runs the binary from the repository's folder (so the shipped routes.toml) with `env`; its
/// exit code and stderr.
fn herald_stderr(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(common::root())
        .env_remove("HERALD_CONFIG")
        .env_remove("RUST_LOG")
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        .env("HERALD_WEBHOOK_SECRET", service::SECRET)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_before_serve_ever_ran_says_the_exchange_does_not_exist_yet() {
    let (receiver, names) = (service::Receiver::start().await, Names::new("noexchange"));
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.*\"");
    let file = common::example_path("valid", "court.warrant.issued.json");
    let (code, stderr) = herald_stderr(
        &[
            "publish",
            "--config",
            config.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        &[("HERALD_AMQP_URL", &service::amqp_url())],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: the exchange {} does not exist yet: start `herald serve` once (it declares the topology)",
            names.exchange
        )
    );
    // Nothing was declared on the way.
    let (_conn, ch) = service::channel().await;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    assert!(
        ch.exchange_declare(
            names.exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_err()
    );
}

/// A wrong password (guest's, so nothing is created on the broker) and a virtual host that
/// does not exist: serve, dlq and publish each say so in one line, with the login and where
/// the password comes from, never the password, and none of the broker client's JSON lines.
#[test]
fn a_refused_login_or_a_missing_vhost_is_one_line_that_says_which() {
    let password = "wr0ng-pa55word";
    let wrong = service::amqp_url_as("guest", password);
    let warrant = common::example_path("valid", "court.warrant.issued.json");
    let warrant = warrant.to_str().unwrap();
    let commands: [&[&str]; 3] = [
        &["serve"],
        &["dlq", "list", "failed"],
        &["publish", warrant],
    ];
    let one_line = |args: &[&str], stderr: &str| -> String {
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(
            lines[0].starts_with("error: RabbitMQ at "),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains(password), "{args:?}: {stderr}");
        lines[0].to_owned()
    };
    for args in commands {
        let (code, stderr) = herald_stderr(args, &[("HERALD_AMQP_URL", &wrong)]);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let line = one_line(args, &stderr);
        assert!(
            line.contains("refused the login for user guest: check the password (HERALD_AMQP_URL"),
            "{args:?}: {line}"
        );
        assert!(
            !line.contains("start it") && !line.contains("Start it"),
            "{line}"
        );
    }
    // publish --user: the password is the one --password-env names.
    let (code, stderr) = herald_stderr(
        &["publish", "--user", "guest", warrant],
        &[
            ("HERALD_AMQP_URL", &service::amqp_url()),
            ("HERALD_PUBLISH_PASSWORD", password),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&["publish", "--user"], &stderr);
    assert!(
        line.ends_with(
            "refused the login for user guest: check the password (HERALD_PUBLISH_PASSWORD)"
        ),
        "{line}"
    );

    let mut url = url::Url::parse(&service::amqp_url()).unwrap();
    let vhost = format!("herald-test-no-such-vhost-{}", std::process::id());
    url.set_path(&format!("/{vhost}"));
    for args in commands {
        let (code, stderr) = herald_stderr(args, &[("HERALD_AMQP_URL", url.as_str())]);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let line = one_line(args, &stderr);
        assert!(
            line.contains(&format!("has no virtual host \"{vhost}\"")),
            "{args:?}: {line}"
        );
    }
}

//! `herald publish` and `herald receive`, run as a user runs them.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::service::{self, Names};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// An exchange and a queue of the test's own, the queue bound to every key, and a routes.toml
/// naming the exchange: what `herald publish` sends waits in the queue to be read.
struct Bound {
    names: Names,
    _conn: lapin::Connection,
    ch: lapin::Channel,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Bound {
    async fn new(test: &str) -> Bound {
        let names = Names::new(test);
        let (conn, ch) = service::channel().await;
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
        Bound {
            names,
            _conn: conn,
            ch,
            _dir: dir,
            config,
        }
    }

    /// `herald publish ARGS` to the test's exchange.
    fn publish(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["publish", "--config"])
            .arg(&self.config)
            .args(args)
            .env("HERALD_AMQP_URL", service::amqp_url())
            .output()
            .unwrap()
    }

    /// What has arrived in the test's queue, taken from it.
    async fn received(&self) -> Vec<lapin::message::Delivery> {
        service::drain(&self.ch, &self.names.queue).await
    }

    async fn cleanup(self) {
        service::cleanup(&self.ch, &self.names).await;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_sets_the_properties_agencies_must_set() {
    let bound = Bound::new("publish").await;
    let file = common::example_path("valid", "court.warrant.issued.json");
    let out = bound.publish(&[file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("as court.warrant.issued"));

    let got = bound.received().await;
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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, "[amqp]\nexchange = \"amq.topic\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["publish", "--config"])
        .arg(&config)
        .arg(&file)
        .env("HERALD_AMQP_URL", service::amqp_url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not routed"));
    bound.cleanup().await;
}

fn instant(value: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn day(value: &serde_json::Value) -> chrono::NaiveDate {
    chrono::NaiveDate::parse_from_str(value.as_str().unwrap(), "%Y-%m-%d")
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// The Europe/London date of an instant, as Herald reads dates.
fn london_day(at: chrono::DateTime<chrono::FixedOffset>) -> chrono::NaiveDate {
    at.with_timezone(&chrono_tz::Europe::London).date_naive()
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_now_stamps_the_event_with_the_current_time_and_keeps_its_dates_apart() {
    let bound = Bound::new("publish-now").await;
    let bail = common::example_path("valid", "court.bail.decided.json");
    let leave = common::example_path("valid", "prison.temporary-release.granted.json");
    let before = (
        std::fs::read(&bail).unwrap(),
        std::fs::read(&leave).unwrap(),
    );
    let out = bound.publish(&["--now", bail.to_str().unwrap(), leave.to_str().unwrap()]);
    let published = chrono::Utc::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(", occurredAt "), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("note: ")
                && l.contains("(with --now they change every second)")
                && l.contains("give --message-id")),
        "{stdout}"
    );
    // The files themselves are as they were.
    assert_eq!(
        before,
        (
            std::fs::read(&bail).unwrap(),
            std::fs::read(&leave).unwrap()
        )
    );

    let got = bound.received().await;
    assert_eq!(got.len(), 2, "{stdout}");
    let event = |m: &lapin::message::Delivery| -> serde_json::Value {
        serde_json::from_slice(&m.data).unwrap()
    };
    let original = |name: &str| common::example(name);
    let (bail_now, leave_now) = (event(&got[0]), event(&got[1]));
    for doc in [&bail_now, &leave_now] {
        let occurred = instant(&doc["occurredAt"]);
        let age = published.signed_duration_since(occurred);
        assert!(
            age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1),
            "occurredAt {occurred} is not now ({published})"
        );
        assert_eq!(doc["publishedAt"], doc["occurredAt"]);
    }
    // A date keeps its distance in days: the next hearing was 21 days after the bail hearing.
    let was = original("court.bail.decided.json");
    let info = &bail_now["additionalInformation"];
    let today = london_day(instant(&bail_now["occurredAt"]));
    assert_eq!(
        day(&info["nextHearing"]["date"]) - today,
        day(&was["additionalInformation"]["nextHearing"]["date"])
            - london_day(instant(&was["occurredAt"]))
    );
    assert_eq!(day(&info["hearingDate"]), today);
    // A date-time keeps its distance exactly, and the offset it was written with.
    let was = original("prison.temporary-release.granted.json");
    let info = &leave_now["additionalInformation"];
    for field in ["leavesAt", "returnsBy"] {
        assert_eq!(
            instant(&info[field]) - instant(&leave_now["occurredAt"]),
            instant(&was["additionalInformation"][field]) - instant(&was["occurredAt"]),
            "{field}"
        );
        assert!(info[field].as_str().unwrap().ends_with('Z'), "{info}");
    }
    // Everything else is as the file has it.
    assert_eq!(info["purpose"], was["additionalInformation"]["purpose"]);
    assert_eq!(
        leave_now["personReference"],
        original("prison.temporary-release.granted.json")["personReference"]
    );
    // The id is derived from the bytes published, as the note says.
    for m in &got {
        assert_eq!(
            m.properties.message_id().as_ref().map(|id| id.to_string()),
            Some(herald::event::EventId::from_content(&m.data).to_string())
        );
    }
    bound.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_says_once_that_the_id_is_derived_and_message_id_sets_it() {
    let bound = Bound::new("publish-id").await;
    let warrant = common::example_path("valid", "court.warrant.issued.json");
    let warrant = warrant.to_str().unwrap();

    let out = bound.publish(&[warrant]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let notes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(
        notes,
        [
            "note: message_id was derived from the bytes published: the same bytes published \
             again within service.dedup_window (10m) are dropped by herald serve as a \
             duplicate; give --message-id, or --now to re-stamp the event"
        ],
        "{stdout}"
    );

    let out = bound.publish(&["--message-id", "LEEDSMC-W-2026-004512-1", warrant]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("(message_id LEEDSMC-W-2026-004512-1, user_id guest)"),
        "{stdout}"
    );
    assert!(!stdout.contains("note:"), "{stdout}");

    let got = bound.received().await;
    assert_eq!(got.len(), 2);
    let ids: Vec<String> = got
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            herald::event::EventId::from_content(&got[0].data).to_string(),
            "LEEDSMC-W-2026-004512-1".to_owned()
        ]
    );

    // One id is for one message: with two files, or empty, nothing is published.
    let bail = common::example_path("valid", "court.bail.decided.json");
    for args in [
        &["--message-id", "x-1", warrant, bail.to_str().unwrap()][..],
        &["--message-id", "", warrant],
    ] {
        let out = bound.publish(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: --message-id "), "{stderr}");
    }
    assert!(bound.received().await.is_empty());
    bound.cleanup().await;
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
        .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
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
        .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
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

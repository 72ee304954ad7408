//! Fault injection against the real broker and real receivers: Herald killed with SIGKILL
//! while events flow, its broker connection closed mid-stream, a flaky and hanging receiver,
//! an SMTP server that is down for a while. Each prints one line: events, expected
//! notifications, delivered, duplicates, lost. Lost must be zero.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::service::{
    self, Names, Receiver, Smtp, every_webhook_delivered, publish_warrants, total, wait_until,
};
use serde_json::Value;

/// Prints the summary line and checks nothing was lost.
fn summary(test: &str, events: usize, expected: usize, ids: &[String]) {
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let lost = expected.saturating_sub(distinct.len());
    println!(
        "{test}: events {events}, expected notifications {expected}, delivered {}, duplicates {}, lost {lost}",
        distinct.len(),
        ids.len() - distinct.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(distinct.len(), expected, "nothing unexpected was delivered");
}

/// A running `herald serve`, killed when the test ends, however it ends.
struct Herald(Child);

impl std::ops::Deref for Herald {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Herald {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &std::path::Path) -> Herald {
    spawn_logging(
        config,
        std::env::var_os("HERALD_TEST_LOG").map(Into::into),
        "warn",
    )
}

/// Starts Herald with `RUST_LOG` at `level` (or `HERALD_TEST_RUST_LOG`) and its log in `log`.
fn spawn_logging(config: &std::path::Path, log: Option<std::path::PathBuf>, level: &str) -> Herald {
    Herald(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("HERALD_AMQP_URL", service::amqp_url())
            .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
            .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .env("HERALD_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("HERALD_TEST_RUST_LOG").unwrap_or_else(|_| level.into()),
            )
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap(),
    )
}

/// Writes a configuration for `herald serve` as a child process (guest may publish court
/// events; retries after 1 s, 1 s and 2 s), starts it and waits until it has declared its
/// queue, so publishing can begin.
async fn start_child(
    dir: &std::path::Path,
    names: &Names,
    receiver: &Receiver,
) -> (std::path::PathBuf, Herald) {
    let config = service::config_file_with(
        dir,
        names,
        receiver,
        "\"court.*\"",
        "[retry]\nschedule = [\"1s\", \"1s\", \"2s\"]\n",
    );
    let herald = spawn(&config);
    service::wait_for_queue(&names.queue).await;
    (config, herald)
}

/// Sends SIGTERM and waits (up to a minute) for Herald to exit.
async fn terminate(herald: &mut Herald) -> std::process::ExitStatus {
    let term = Command::new("kill")
        .args(["-TERM", &herald.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = Instant::now();
    loop {
        if let Some(status) = herald.try_wait().unwrap() {
            return status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "Herald did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_2000_events_flow_loses_nothing() {
    const EVENTS: usize = 2000;
    let (receiver, names) = (Receiver::start().await, Names::new("sigkill"));
    let dir = tempfile::tempdir().unwrap();
    let (config, mut herald) = start_child(dir.path(), &names, &receiver).await;
    let (_conn, ch) = service::channel().await;
    let publisher = {
        let exchange = names.exchange.clone();
        tokio::spawn(async move {
            let (_conn, ch) = service::channel().await;
            publish_warrants(&ch, &exchange, "evt-kill", 0..EVENTS).await;
        })
    };
    let started = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        herald.kill().unwrap(); // SIGKILL
        herald.wait().unwrap();
        herald = spawn(&config);
    }
    publisher.await.unwrap();
    every_webhook_delivered(&receiver, EVENTS, Duration::from_secs(180)).await;
    herald.kill().unwrap();
    herald.wait().unwrap();
    let hooks = receiver.hooks();
    assert!(hooks.iter().all(|h| h.verified));
    // A repeat carries the same key as the first: at most one distinct key per event.
    let ids: Vec<String> = hooks.iter().map(|h| h.id.clone()).collect();
    let per_event: BTreeSet<String> = hooks
        .iter()
        .map(|h| h.body["data"]["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(per_event.len(), EVENTS);
    println!("sigkill: 4 kills in {:?}", started.elapsed());
    summary("sigkill", EVENTS, EVENTS, &ids);
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_cleanly_and_nothing_is_lost() {
    const EVENTS: usize = 300;
    let (receiver, names) = (Receiver::start().await, Names::new("sigterm"));
    let dir = tempfile::tempdir().unwrap();
    let (config, mut herald) = start_child(dir.path(), &names, &receiver).await;
    let (_conn, ch) = service::channel().await;
    publish_warrants(&ch, &names.exchange, "evt-term", 0..EVENTS).await;
    let status = terminate(&mut herald).await;
    assert!(status.success(), "a drained shutdown exits 0: {status:?}");
    // What was not finished is still on the queue; a new Herald finishes it.
    let mut herald = spawn(&config);
    every_webhook_delivered(&receiver, EVENTS, Duration::from_secs(120)).await;
    herald.kill().unwrap();
    herald.wait().unwrap();
    let ids: Vec<String> = receiver.hooks().iter().map(|h| h.id.clone()).collect();
    summary("sigterm", EVENTS, EVENTS, &ids);
    service::cleanup(&ch, &names).await;
}

/// Messages on `queue` delivered to a consumer and not yet acknowledged, as the broker counts.
fn unacknowledged(queue: &str) -> Option<usize> {
    let out = service::list_queues(&["name", "messages_unacknowledged"]).ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        (fields.next()? == queue).then(|| fields.next()?.parse().ok())?
    })
}

/// Herald acknowledges finished events in batches; an event still being delivered is never
/// among them. A bail decision whose probation webhook hangs is followed by warrants that
/// finish at once: the broker sees every warrant acknowledged and the bail decision not. Herald
/// is killed while it still hangs and started again: the bail decision is delivered then, and
/// no warrant twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_still_in_flight_is_never_acknowledged_with_later_ones() {
    const WARRANTS: usize = 50;
    let (receiver, names) = (Receiver::start().await, Names::new("ackorder"));
    receiver.slow("/probation/PDU-LEEDS", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file_with(
        dir.path(),
        &names,
        &receiver,
        "\"court.*\"",
        "[webhook]\ntimeout = \"120s\"\n",
    );
    let mut herald = spawn(&config);
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-hangs", 1).await;
    publish_warrants(&ch, &names.exchange, "evt-quick", 0..WARRANTS).await;
    let warrants_delivered = || {
        receiver
            .hooks()
            .iter()
            .filter(|h| {
                h.body["data"]["event"]["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("evt-quick-"))
            })
            .count()
    };
    wait_until(
        "every warrant delivered",
        Duration::from_secs(30),
        || async { warrants_delivered() >= WARRANTS },
    )
    .await;
    let queue = names.queue.clone();
    wait_until(
        "every warrant acknowledged, the bail decision not",
        Duration::from_secs(30),
        || {
            let queue = queue.clone();
            async move { unacknowledged(&queue) == Some(1) }
        },
    )
    .await;
    let to_probation = |r: &Receiver| {
        r.hooks()
            .iter()
            .filter(|h| h.path == "/probation/PDU-LEEDS")
            .count()
    };
    assert_eq!(
        to_probation(&receiver),
        0,
        "the probation webhook still hangs"
    );
    herald.kill().unwrap(); // SIGKILL
    herald.wait().unwrap();
    receiver.slow("/probation/PDU-LEEDS", Duration::ZERO);
    let mut herald = spawn(&config);
    wait_until(
        "the bail decision delivered after the restart",
        Duration::from_secs(30),
        || async { to_probation(&receiver) >= 1 },
    )
    .await;
    herald.kill().unwrap();
    herald.wait().unwrap();
    assert_eq!(
        warrants_delivered(),
        WARRANTS,
        "no warrant was delivered twice"
    );
    println!(
        "acknowledgement order: {WARRANTS} warrants acknowledged around a hanging event, which came back after a restart"
    );
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_broker_connection_mid_stream_loses_nothing() {
    const EVENTS: usize = 300;
    let (receiver, names) = (Receiver::start().await, Names::new("closeconn"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    // A third published, the connection cut; another third, cut again; then the rest.
    let (first, second) = (EVENTS / 3 + 1, 2 * EVENTS / 3 + 1);
    for part in [0..first, first..second] {
        publish_warrants(&ch, &names.exchange, "evt-close", part).await;
        // Wait for Herald to be connected (again), then cut it off.
        let queue = names.queue.clone();
        wait_until("Herald connected", Duration::from_secs(30), || {
            let queue = queue.clone();
            async move { service::close_connection(&queue) >= 1 }
        })
        .await;
    }
    publish_warrants(&ch, &names.exchange, "evt-close", second..EVENTS).await;
    every_webhook_delivered(&receiver, EVENTS, Duration::from_secs(120)).await;
    let ids: Vec<String> = receiver.hooks().iter().map(|h| h.id.clone()).collect();
    summary("connection closed", EVENTS, EVENTS, &ids);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_hanging_receiver_gets_everything_and_slows_no_one_else() {
    const EVENTS: usize = 40;
    let (receiver, names) = (Receiver::start().await, Names::new("flaky"));
    receiver.flaky("/police/WYP-LEEDS");
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.webhook_timeout = Duration::from_millis(500);
        // Four requests in ten succeed, so a notification may need many tries; thirty make
        // running out of them (0.6^31) practically impossible, as the test means to prove
        // delivery, not the length of the schedule.
        s.retry_schedule = vec![Duration::from_secs(1); 30];
        s.circuit_failures = 1000;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let published = Instant::now();
    service::bail_decisions(&ch, &names.exchange, "evt-flaky", EVENTS).await;
    wait_until(
        "probation told of every decision",
        Duration::from_secs(60),
        || async {
            receiver
                .hooks()
                .iter()
                .filter(|h| h.path == "/probation/PDU-LEEDS")
                .count()
                >= EVENTS
        },
    )
    .await;
    let probation_done = published.elapsed();
    wait_until(
        "police told of every decision",
        Duration::from_secs(120),
        || async {
            receiver
                .hooks()
                .iter()
                .filter(|h| h.path == "/police/WYP-LEEDS" && h.status == 204)
                .map(|h| h.id.clone())
                .collect::<BTreeSet<_>>()
                .len()
                >= EVENTS
        },
    )
    .await;
    let police_done = published.elapsed();
    assert!(
        probation_done < police_done,
        "the flaky recipient's retries did not hold up the other one"
    );
    let hooks = receiver.hooks();
    let ok_ids: Vec<String> = hooks
        .iter()
        .filter(|h| h.path == "/police/WYP-LEEDS" && h.status == 204)
        .map(|h| h.id.clone())
        .collect();
    println!("flaky: probation all told after {probation_done:?}, police after {police_done:?}");
    summary("flaky receiver (police)", EVENTS, EVENTS, &ok_ids);
    let metrics = service::scrape(&herald).await;
    assert!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"retrying\""]
        ) > 0.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"failed\""]
        ),
        0.0
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn emails_wait_for_an_smtp_server_that_is_down_then_all_arrive() {
    const EVENTS: usize = 10;
    let (receiver, names) = (Receiver::start().await, Names::new("smtpdown"));
    let (port, maildir) = Smtp::reserve();
    let mut config = service::config(&receiver);
    config.email.url = None;
    let herald = service::start_with(config, &names, None, |s| {
        s.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        s.retry_schedule = vec![Duration::from_secs(1); 10];
        s.circuit_failures = 1000;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    publish_warrants(&ch, &names.exchange, "evt-smtp", 0..EVENTS).await;
    wait_until(
        "the emails failing and scheduled for retry",
        WAIT_LONG,
        || async {
            total(
                &service::scrape(&herald).await,
                "herald_notifications_total",
                &["channel=\"email\"", "outcome=\"retrying\""],
            ) >= EVENTS as f64
        },
    )
    .await;
    let smtp = Smtp::start_on(port, maildir);
    wait_until("every email delivered", WAIT_LONG, || async {
        smtp.messages().len() >= EVENTS
    })
    .await;
    let ids: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m.message_id.clone())
        .collect();
    summary("smtp down then up", EVENTS, EVENTS, &ids);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

const WAIT_LONG: Duration = Duration::from_secs(60);

/// The audit trail: every delivery is in the log exactly once, with its key and the attempt
/// that delivered it.
#[tokio::test(flavor = "multi_thread")]
async fn every_delivery_is_logged_once_with_its_key_and_attempts() {
    const EVENTS: usize = 20;
    let (receiver, names) = (Receiver::start().await, Names::new("audit"));
    receiver.flaky("/police/WYP-LEEDS");
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file_with(
        dir.path(),
        &names,
        &receiver,
        "\"court.*\"",
        &format!("[retry]\nschedule = [{}]\n", vec!["\"1s\""; 30].join(", ")),
    );
    let log = dir.path().join("herald.log");
    let mut herald = spawn_logging(&config, Some(log.clone()), "info");
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-audit", EVENTS).await;
    let delivered = || {
        receiver
            .hooks()
            .iter()
            .filter(|h| (200..300).contains(&h.status))
            .map(|h| h.id.clone())
            .collect::<BTreeSet<_>>()
    };
    wait_until(
        "every webhook delivered",
        Duration::from_secs(90),
        || async { delivered().len() >= 2 * EVENTS },
    )
    .await;
    // SIGTERM, so the log is written out before Herald exits.
    terminate(&mut herald).await;

    let (mut logged, mut retried) = (Vec::new(), 0);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if entry["message"] == "notification delivered" && entry["channel"] == "webhook" {
            logged.push(entry["key"].as_str().unwrap().to_owned());
            assert!(
                entry["sla"].is_string() && entry["deadline"].is_string(),
                "{line}"
            );
            assert!(
                !line.contains("Kershaw"),
                "no personal data in the log: {line}"
            );
            // The line is written in the event's span and the attempt's: a search for the
            // message_id finds every line about the event, down to each delivery.
            let spans = entry["spans"]
                .as_array()
                .unwrap_or_else(|| panic!("{line}"));
            assert_eq!(spans.len(), 2, "{line}");
            let (event, delivery) = (&spans[0], &spans[1]);
            assert_eq!(event["name"], "event", "{line}");
            assert_eq!(event["message_id"], entry["event_id"], "{line}");
            assert!(
                event["message_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("evt-audit-")),
                "{line}"
            );
            assert_eq!(event["event_type"], "court.bail.decided", "{line}");
            assert_eq!(event["publisher"], "guest", "{line}");
            assert_eq!(delivery["name"], "delivery", "{line}");
            assert_eq!(delivery["recipient"], entry["recipient"], "{line}");
            assert_eq!(delivery["channel"], "webhook", "{line}");
            assert_eq!(delivery["attempt"], entry["attempts"], "{line}");
            if entry["attempts"].as_u64().unwrap() > 1 {
                retried += 1;
            }
        }
    }
    logged.sort();
    let expected: Vec<String> = delivered().into_iter().collect();
    assert_eq!(logged, expected, "each delivery logged exactly once");
    assert!(
        retried > 0,
        "the flaky endpoint made some deliveries take retries"
    );
    service::cleanup(&ch, &names).await;
}

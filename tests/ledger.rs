//! The delivery ledger against both backends (a SQLite file, and a database of its own on the
//! machine's PostgreSQL), with the real broker and webhook receiver: what it records, and the
//! dedup and endpoint state that survive a restart through it.

mod common;

use std::time::Duration;

use common::body;
use common::ledger::{BOTH, count, fresh};
use common::service::{self, Names, Receiver, agency, total, wait_until};
use herald::ledger::{
    AttemptRecord, Backend, EventOutcome, EventRecord, Health, Ledger, NotificationRecord, Seen,
    Status, Store, Sync, Update,
};

const WAIT: Duration = Duration::from_secs(30);

async fn records_and_dedups_across_a_restart(backend: Backend) {
    let (receiver, names) = (
        Receiver::start().await,
        Names::new(&format!("ledger-{}", backend.as_str())),
    );
    let url = fresh(backend).await;
    let start = || {
        let url = url.clone();
        service::start_with(service::config(&receiver), &names, None, move |s| {
            s.ledger_url = url;
        })
    };
    let herald = start().await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-ledger-1"),
    )
    .await;
    wait_until("the warrant delivered", WAIT, || async {
        !receiver.hooks().is_empty()
    })
    .await;
    let sent = receiver.hooks().len();
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    // The webhook the receiver took (the email may be recorded before or after it).
    wait_until("the webhook recorded as delivered", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'delivered' AND channel = 'webhook'",
        )
        .await
            > 0
    })
    .await;
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'evt-ledger-1' AND outcome = 'routed'"
        )
        .await,
        1
    );
    assert!(
        count(
            &store,
            "SELECT COUNT(*) FROM persons WHERE identifier = 'NOMS:A1234BC'"
        )
        .await
            >= 1,
        "the person's identifiers are kept for search"
    );
    assert!(
        count(
            &store,
            "SELECT COUNT(*) FROM attempts a JOIN notifications n ON n.key = a.notification_key \
             WHERE a.outcome = 'delivered' AND n.channel = 'webhook'"
        )
        .await
            >= 1,
        "each delivery attempt is kept"
    );
    let key = receiver.hooks()[0].id.clone();
    assert_eq!(
        store.status(&key).await.unwrap(),
        Some(Status::Delivered),
        "the webhook-id is the ledger's key"
    );
    // A restart forgets the process's own memory; the ledger still knows the event.
    herald.stop().await.unwrap();
    let herald = start().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-ledger-1"),
    )
    .await;
    wait_until("the copy recognised after the restart", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_events_duplicate_total",
            &[],
        ) == 1.0
    })
    .await;
    assert_eq!(receiver.hooks().len(), sent, "nothing is sent twice");
    // Counted as it is recognised, recorded in the ledger's next commit.
    wait_until("the copy recorded as a duplicate", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'evt-ledger-1' AND outcome = 'duplicate'",
        )
        .await
            == 1
    })
    .await;
    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_records_and_dedups_across_a_restart() {
    for backend in BOTH {
        records_and_dedups_across_a_restart(backend).await;
    }
}

async fn a_gone_endpoint_stays_disabled_after_a_restart(backend: Backend) {
    let (receiver, names) = (
        Receiver::start().await,
        Names::new(&format!("ledger-gone-{}", backend.as_str())),
    );
    let url = fresh(backend).await;
    let start = || {
        let url = url.clone();
        service::start_with(service::config(&receiver), &names, None, move |s| {
            s.ledger_url = url;
        })
    };
    let herald = start().await;
    let (_conn, ch) = service::channel().await;
    receiver.answer("/police/WYP-LEEDS", 410);
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-gone-1"),
    )
    .await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    wait_until("the endpoint recorded as disabled", WAIT, || async {
        store.disabled_endpoints().await.unwrap().len() == 1
    })
    .await;
    herald.stop().await.unwrap();
    let herald = start().await;
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(&metrics, "herald_endpoint_state", &["channel=\"webhook\""]),
        2.0,
        "disabled again at start-up: {metrics:?}"
    );
    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_endpoint_stays_disabled_after_a_restart_on_both_backends() {
    for backend in BOTH {
        a_gone_endpoint_stays_disabled_after_a_restart(backend).await;
    }
}

/// Runs `herald ARGS` with the ledger at `url`: whether it succeeded, its stdout and stderr.
fn herald(args: &[&str], url: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_LEDGER_URL", url)
        .env("HERALD_AMQP_URL", service::amqp_url())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

async fn commands_show_search_and_replay(backend: Backend) {
    let (receiver, names) = (
        Receiver::start().await,
        Names::new(&format!("ledger-cmd-{}", backend.as_str())),
    );
    let url = fresh(backend).await;
    let herald_url = url.clone();
    let running = service::start_with(service::config(&receiver), &names, None, move |s| {
        s.ledger_url = herald_url;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    // The force refuses it for good: the warrant's notification is parked.
    receiver.answer("/police/WYP-LEEDS", 400);
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-cmd-1"),
    )
    .await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    wait_until("the refused warrant parked in the ledger", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'parked'",
        )
        .await
            == 1
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "");
    let config = config.to_str().unwrap();

    // The event's story, by its message_id.
    let (ok, out, err) = herald(&["ledger", "show", "evt-cmd-1", "--config", config], &url);
    assert!(ok, "{out}{err}");
    for part in [
        "event evt-cmd-1 from guest: court.warrant.issued",
        "received",
        "persons   ",
        "NOMS:A1234BC",
        "ppo-fta-warrant -> police:WYP-LEEDS by webhook; deadline",
        "(within 1 working day)",
        "status parked",
        "made",
        "attempt 1: http-refused 400 in",
        "deadline",
    ] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
    let (ok, out, err) = herald(
        &["ledger", "show", "evt-cmd-1", "--json", "--config", config],
        &url,
    );
    assert!(ok, "{err}");
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = events[0]["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["recipient"] == "police:WYP-LEEDS" && n["channel"] == "webhook")
        .unwrap_or_else(|| panic!("{events:#}"));
    assert_eq!(n["status"], "parked", "{events:#}");
    assert_eq!(n["attempts"][0]["code"], 400, "{events:#}");
    let key = n["key"].as_str().unwrap().to_owned();
    // The same story by the notification's key; nothing for an id the ledger does not have.
    let (ok, out, _) = herald(&["ledger", "show", &key, "--config", config], &url);
    assert!(ok && out.contains("event evt-cmd-1"), "{out}");
    let (ok, _, err) = herald(&["ledger", "show", "evt-unknown", "--config", config], &url);
    assert!(
        !ok && err.contains("no event with message_id evt-unknown"),
        "{err}"
    );

    // Found by person and recipient (by email and by webhook), by the identifier's value
    // alone, by route, and by status.
    for (args, expected) in [
        (
            &[
                "--person",
                "NOMS:A1234BC",
                "--recipient",
                "police:WYP-LEEDS",
            ][..],
            2,
        ),
        (&["--person", "A1234BC", "--route", "ppo-fta-warrant"], 2),
        (&["--status", "parked", "--since", "1h"], 1),
    ] {
        let mut all = vec!["ledger", "search", "--json", "--config", config];
        all.extend_from_slice(args);
        let (ok, out, err) = herald(&all, &url);
        assert!(ok, "{err}");
        let found = json_lines(&out);
        assert_eq!(found.len(), expected, "{args:?}: {out}");
        assert!(
            found.iter().all(|f| f["message_id"] == "evt-cmd-1"),
            "{out}"
        );
        assert!(found.iter().any(|f| f["key"] == key.as_str()), "{out}");
    }
    let (ok, out, _) = herald(
        &["ledger", "search", "--status", "parked", "--config", config],
        &url,
    );
    assert!(ok, "{out}");
    assert!(
        out.starts_with("MADE") && out.contains("parked") && out.contains(&key),
        "{out}"
    );
    for args in [
        &["--person", "NOMS:Z9999ZZ"][..],
        &["--status", "retrying"],
        &["--until", "2020-01-01"],
    ] {
        let mut all = vec!["ledger", "search", "--config", config];
        all.extend_from_slice(args);
        let (ok, out, _) = herald(&all, &url);
        assert!(ok && out.contains("no notification"), "{args:?}: {out}");
    }
    let (ok, _, err) = herald(
        &["ledger", "search", "--status", "sent", "--config", config],
        &url,
    );
    assert!(!ok && err.contains("delivered"), "{err}");

    // A replay picked by the ledger: a dry run first sends nothing.
    let (ok, out, err) = herald(
        &[
            "dlq",
            "replay",
            "failed",
            "--recipient",
            "police:WYP-LEEDS",
            "--dry-run",
            "--config",
            config,
        ],
        &url,
    );
    assert!(
        ok && out.contains("would replay: notification ppo-fta-warrant -> police:WYP-LEEDS"),
        "{out}{err}"
    );
    assert!(out.contains("1 message(s) would be replayed"), "{out}");
    assert_eq!(store.status(&key).await.unwrap(), Some(Status::Parked));
    let (ok, out, err) = herald(
        &[
            "dlq",
            "replay",
            "failed",
            "--route",
            "no-such-route",
            "--config",
            config,
        ],
        &url,
    );
    assert!(ok && out.contains("the ledger has 0 parked"), "{out}{err}");
    let (ok, _, err) = herald(
        &[
            "dlq", "replay", "rejected", "--route", "x", "--config", config,
        ],
        &url,
    );
    assert!(!ok && err.contains("a rejected event has neither"), "{err}");

    receiver.answer("/police/WYP-LEEDS", 204);
    let (ok, out, err) = herald(
        &[
            "dlq",
            "replay",
            "failed",
            "--recipient",
            "police:WYP-LEEDS",
            "--since",
            "1h",
            "--config",
            config,
        ],
        &url,
    );
    assert!(ok && out.contains("replayed: 1"), "{out}{err}");
    wait_until(
        "the replayed warrant delivered and recorded",
        WAIT,
        || async { store.status(&key).await.unwrap() == Some(Status::Delivered) },
    )
    .await;
    let delivered: Vec<_> = receiver
        .hooks()
        .into_iter()
        .filter(|h| h.status == 204)
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].id, key,
        "the same webhook-id as the parked one"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit WHERE action = 'replay' AND actor LIKE 'cli:%'"
        )
        .await,
        1,
        "the replay is recorded with who did it"
    );
    let (ok, out, _) = herald(&["ledger", "show", &key, "--config", config], &url);
    assert!(
        ok && out.contains("replayed by an operator") && out.contains("status delivered"),
        "{out}"
    );
    running.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_commands_show_search_and_replay_on_both_backends() {
    for backend in BOTH {
        commands_show_search_and_replay(backend).await;
    }
}

/// One notification of the report's period: made at `made`, delivered `took` later (if it
/// was), with its deadline and SLA outcome as the service records them.
struct Made {
    key: &'static str,
    route: &'static str,
    recipient: &'static str,
    took: Option<i64>,
    deadline: i64,
    sla: Option<&'static str>,
    status: Status,
    failure: Option<(&'static str, u16)>,
}

async fn report_counts_what_the_ledger_holds(backend: Backend) {
    use chrono::{TimeZone, Utc};
    use herald::ledger::{
        AttemptRecord, EventOutcome, EventRecord, Ledger, NotificationRecord, Update,
    };
    let url = fresh(backend).await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    let ledger = Ledger::start(store.clone(), herald::metrics::Metrics::new());
    let made = Utc.with_ymd_and_hms(2026, 11, 10, 9, 0, 0).unwrap();
    let at = |ms: i64| made + chrono::Duration::milliseconds(ms);
    let hour = 3_600_000;
    let rows = [
        (
            "n-a1",
            "r-a",
            "police:A",
            Some(1_000),
            hour,
            Some("met"),
            Status::Delivered,
            None,
        ),
        (
            "n-a2",
            "r-a",
            "police:A",
            Some(2_000),
            hour,
            Some("met"),
            Status::Delivered,
            None,
        ),
        (
            "n-a3",
            "r-a",
            "police:A",
            Some(3_000),
            hour,
            Some("met"),
            Status::Delivered,
            None,
        ),
        (
            "n-a4",
            "r-a",
            "police:B",
            Some(3 * hour),
            hour,
            Some("breached"),
            Status::Delivered,
            Some(("http-retryable", 503)),
        ),
        (
            "n-b1",
            "r-b",
            "police:B",
            None,
            hour,
            None,
            Status::Parked,
            Some(("http-refused", 400)),
        ),
        (
            "n-b2",
            "r-b",
            "police:B",
            None,
            hour,
            None,
            Status::Skipped,
            None,
        ),
    ]
    .map(
        |(key, route, recipient, took, deadline, sla, status, failure)| Made {
            key,
            route,
            recipient,
            took,
            deadline,
            sla,
            status,
            failure,
        },
    );
    for (i, when) in [
        (0, made),
        (1, Utc.with_ymd_and_hms(2026, 12, 5, 9, 0, 0).unwrap()),
    ] {
        let event = EventRecord {
            publisher: "court-store".into(),
            message_id: format!("evt-report-{i}"),
            event_type: "court.warrant.issued".into(),
            version: Some(1),
            occurred_at: Some(when),
            received_at: when,
            persons: vec!["NOMS:A1234BC".into()],
            outcome: EventOutcome::Routed,
            reason: None,
            custody: None,
        };
        // The second event falls outside the period; its one notification is not counted.
        let notifications: Vec<NotificationRecord> = if i == 0 {
            rows.iter()
                .map(|r| NotificationRecord {
                    key: r.key.into(),
                    route: r.route.into(),
                    recipient: r.recipient.into(),
                    channel: "webhook".into(),
                    sla_rule: Some("within 1 hour".into()),
                    deadline: Some(at(r.deadline)),
                    // Skipped from the start, as routing records it; the rest made pending.
                    status: if r.status == Status::Skipped {
                        Status::Skipped
                    } else {
                        Status::Pending
                    },
                    reason: None,
                })
                .collect()
        } else {
            vec![NotificationRecord {
                key: "n-later".into(),
                route: "r-a".into(),
                recipient: "police:A".into(),
                channel: "webhook".into(),
                sla_rule: None,
                deadline: None,
                status: Status::Pending,
                reason: None,
            }]
        };
        ledger.event(event, notifications).await.unwrap();
    }
    for r in &rows {
        if let Some((outcome, code)) = r.failure {
            ledger
                .update(Update {
                    key: r.key.into(),
                    status: if r.took.is_some() {
                        Status::Retrying
                    } else {
                        r.status
                    },
                    reason: r.took.is_none().then(|| "refused by the recipient".into()),
                    attempts: 1,
                    first_failure_at: Some(at(10)),
                    delivered_at: None,
                    sla_outcome: None,
                    sent_hash: None,
                    attempt: Some(AttemptRecord {
                        at: at(10),
                        duration: Duration::from_millis(5),
                        outcome,
                        code: Some(code),
                        breaker: "closed",
                    }),
                })
                .await
                .unwrap();
        }
        if let Some(took) = r.took {
            ledger
                .update(Update {
                    key: r.key.into(),
                    status: Status::Delivered,
                    reason: None,
                    attempts: 1 + i64::from(r.failure.is_some()),
                    first_failure_at: None,
                    delivered_at: Some(at(took)),
                    sla_outcome: r.sla,
                    sent_hash: None,
                    attempt: Some(AttemptRecord {
                        at: at(took),
                        duration: Duration::from_millis(5),
                        outcome: "delivered",
                        code: Some(204),
                        breaker: "closed",
                    }),
                })
                .await
                .unwrap();
        }
    }
    let period = ["--from", "2026-11-01", "--to", "2026-12-01"];
    let report = |format: &str| {
        let mut args = vec!["ledger", "report", "--format", format];
        args.extend_from_slice(&period);
        let (ok, out, err) = herald(&args, &url);
        assert!(ok, "{err}");
        out
    };
    let json: serde_json::Value = serde_json::from_str(&report("json")).unwrap();
    let line = |section: &str, name: &str| {
        json[section]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {json:#}"))
            .clone()
    };
    let a = line("routes", "r-a");
    assert_eq!(a["notifications"], 4, "{a:#}");
    assert_eq!(
        (a["met"].as_u64(), a["breached"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(a["within_deadline_pct"], 75.0);
    assert_eq!(a["median_seconds"], 2.0);
    assert_eq!(a["p95_seconds"], 10_800.0);
    let b = line("routes", "r-b");
    // The skipped one is not a notification; the parked one is past its deadline: a breach.
    assert_eq!(
        (b["notifications"].as_u64(), b["breached"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(b["within_deadline_pct"], 0.0);
    assert_eq!(line("recipients", "police:B")["notifications"], 2);
    assert_eq!(json["total"]["notifications"], 5);
    let breaches = json["breaches"].as_array().unwrap();
    assert_eq!(breaches.len(), 2, "{json:#}");
    let why = |key: &str| {
        breaches.iter().find(|b| b["key"] == key).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        why("n-a4"),
        "delivered 2 h 0 min after the deadline; after 2 attempts; last failure http-retryable (503)"
    );
    assert!(
        why("n-b1").starts_with("not delivered (parked), ")
            && why("n-b1").ends_with("last failure http-refused (400); refused by the recipient"),
        "{}",
        why("n-b1")
    );

    let csv = report("csv");
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let header = rows.headers().unwrap().clone();
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let route_a = records
        .iter()
        .find(|r| &r[0] == "route" && &r[col("route")] == "r-a")
        .unwrap();
    assert_eq!(&route_a[col("within_deadline_pct")], "75.0");
    assert_eq!(&route_a[col("median_seconds")], "2.000");
    assert_eq!(records.iter().filter(|r| &r[0] == "breach").count(), 2);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    let mut args = vec![
        "ledger",
        "report",
        "--format",
        "html",
        "--output",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(&period);
    let (ok, out, err) = herald(&args, &url);
    assert!(ok && out.is_empty(), "{out}{err}");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        html.contains("<svg") && !html.contains("<script"),
        "inline SVG, no script"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );
    assert!(
        html.contains("<td>r-a</td>") && html.contains("75.0 %"),
        "{html}"
    );
    assert!(html.contains("Breaches (2)"), "{html}");
    // An empty period is refused with the reason.
    let (ok, _, err) = herald(
        &[
            "ledger",
            "report",
            "--from",
            "2026-12-01",
            "--to",
            "2026-11-01",
        ],
        &url,
    );
    assert!(!ok && err.contains("the period is empty"), "{err}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_counts_what_the_ledger_holds_on_both_backends() {
    for backend in BOTH {
        report_counts_what_the_ledger_holds(backend).await;
    }
}

/// An event as the service records it: `n` notifications, to recipients `r0`, `r1`, ...
fn handled_event(message_id: &str, n: usize) -> (EventRecord, Vec<NotificationRecord>) {
    let now = chrono::Utc::now();
    let event = EventRecord {
        publisher: "court".into(),
        message_id: message_id.into(),
        event_type: "court.warrant.issued".into(),
        version: Some(1),
        occurred_at: Some(now),
        received_at: now,
        persons: vec!["NOMS:A1234BC".into(), "PNC:2004/0123456X".into()],
        outcome: EventOutcome::Routed,
        reason: None,
        custody: None,
    };
    let notifications = (0..n)
        .map(|i| NotificationRecord {
            key: format!("msg_{message_id}_{i}"),
            route: "ppo-fta-warrant".into(),
            recipient: format!("police:R{i}"),
            channel: "webhook".into(),
            sla_rule: Some("within 1 working day".into()),
            deadline: Some(now + chrono::Duration::days(1)),
            status: Status::Pending,
            reason: None,
        })
        .collect();
    (event, notifications)
}

/// How a handling of `key` ended at its `attempts`-th attempt.
fn outcome(key: &str, status: Status, attempts: i64) -> Update {
    let now = chrono::Utc::now();
    Update {
        key: key.into(),
        status,
        reason: (status != Status::Delivered).then(|| "HTTP 503".into()),
        attempts,
        first_failure_at: (attempts > 1 || status != Status::Delivered).then_some(now),
        delivered_at: (status == Status::Delivered).then_some(now),
        sla_outcome: (status == Status::Delivered).then_some("met"),
        sent_hash: None,
        attempt: Some(AttemptRecord {
            at: now,
            duration: Duration::from_millis(3),
            outcome: if status == Status::Delivered {
                "delivered"
            } else {
                "http-retryable"
            },
            code: Some(if status == Status::Delivered {
                204
            } else {
                503
            }),
            breaker: "closed",
        }),
    }
}

/// The writer itself, on each backend: what is asked before delivery, one commit per handled
/// event, a retry's outcome after it, an older outcome that arrives late, and one commit of
/// more rows than SQLite takes parameters in a statement.
async fn the_writer_records_handled_events(backend: Backend) {
    let url = fresh(backend).await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    let ledger = Ledger::start(store.clone(), herald::metrics::Metrics::new());
    let (event, made) = handled_event("evt-writer-1", 2);
    assert_eq!(
        ledger.seen("court", "evt-writer-1").await.unwrap(),
        Seen::New
    );
    let (delivered, retrying) = (made[0].key.clone(), made[1].key.clone());
    ledger
        .handled(
            event.clone(),
            made.clone(),
            vec![
                outcome(&delivered, Status::Delivered, 1),
                outcome(&retrying, Status::Retrying, 1),
            ],
            None,
        )
        .await
        .unwrap();
    let Seen::Before(before) = ledger.seen("court", "evt-writer-1").await.unwrap() else {
        panic!("the handled event is in the ledger");
    };
    assert_eq!(before.get(&delivered), Some(&Status::Delivered));
    assert_eq!(before.get(&retrying), Some(&Status::Retrying));
    assert_eq!(
        ledger.seen("court", "evt-writer-1").await.unwrap(),
        Seen::Before(before.clone()),
        "asking again changes nothing"
    );
    assert_eq!(
        ledger.seen("prison", "evt-writer-1").await.unwrap(),
        Seen::New,
        "another publisher's event with the same id is another event"
    );
    let status = |key: String| {
        let store = store.clone();
        async move { store.status(&key).await.unwrap() }
    };
    // The retry delivers it; then an outcome of its first attempt arrives late.
    ledger
        .update(outcome(&retrying, Status::Delivered, 2))
        .await
        .unwrap();
    ledger
        .update(outcome(&retrying, Status::Retrying, 1))
        .await
        .unwrap();
    assert_eq!(status(retrying.clone()).await, Some(Status::Delivered));
    // The same event handled again (redelivered) changes nothing it settled.
    ledger
        .handled(
            event,
            made,
            vec![outcome(&delivered, Status::Retrying, 1)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(status(delivered.clone()).await, Some(Status::Delivered));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'evt-writer-1'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM persons p JOIN events e ON e.id = p.event_id \
             WHERE e.message_id = 'evt-writer-1'"
        )
        .await,
        2,
        "an event handled again keeps the identifiers it had"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM attempts WHERE notification_key LIKE 'msg_evt-writer-1_%'"
        )
        .await,
        5,
        "every attempt is kept"
    );

    // 300 events of 12 notifications each, at once: large group commits, 3,600 notifications
    // (61,200 values), more than one PostgreSQL parameter or SQLite statement would take.
    let handled = (0..300).map(|i| {
        let ledger = ledger.clone();
        async move {
            let (event, made) = handled_event(&format!("evt-writer-many-{i}"), 12);
            let updates = made
                .iter()
                .map(|n| outcome(&n.key, Status::Delivered, 1))
                .collect();
            ledger.handled(event, made, updates, None).await
        }
    });
    for result in futures_util::future::join_all(handled).await {
        result.unwrap();
    }
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM notifications WHERE key LIKE 'msg_evt-writer-many-%' \
             AND status = 'delivered'"
        )
        .await,
        3600
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM attempts WHERE notification_key LIKE 'msg_evt-writer-many-%'"
        )
        .await,
        3600
    );
    drop(ledger);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_writer_records_handled_events_on_both_backends() {
    for backend in BOTH {
        the_writer_records_handled_events(backend).await;
    }
}

//! `herald serve` against the real RabbitMQ, a real SMTP server and a real HTTP receiver.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::body;
use common::service::{self, Names, Receiver, Smtp, agency, dlq, ready, total, wait_until};
use lapin::BasicProperties;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn count<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn day_one_events_reach_exactly_the_right_recipients() {
    let (smtp, receiver, names) = (Smtp::start(), Receiver::start().await, Names::new("dayone"));
    let herald = service::start(service::config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    for (i, name) in [
        "prison.prisoner.received.json",
        "prison.hdc.decided.json",
        "court.bail.decided.json",
        "court.warrant.issued.json",
    ]
    .iter()
    .enumerate()
    {
        let event_type = name.trim_end_matches(".json");
        service::publish(
            &ch,
            &names.exchange,
            event_type,
            &body(name),
            agency(&format!("evt-dayone-{i}")),
        )
        .await;
    }
    wait_until("11 notifications delivered", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &["outcome=\"delivered\""],
        ) == 11.0
    })
    .await;

    let hooks = receiver.hooks();
    assert!(
        hooks.iter().all(|h| h.verified),
        "every webhook is signed: {hooks:?}"
    );
    assert!(
        hooks
            .iter()
            .all(|h| h.id == h.body["data"]["notification"]["id"]),
        "webhook-id is the notification's key"
    );
    let webhooks = count(
        hooks
            .iter()
            .map(|h| (h.body["type"].as_str().unwrap().to_owned(), h.path.clone())),
    );
    let expected: BTreeMap<(String, String), usize> = [
        (("prison.prisoner.received", "/police/WYP-LEEDS"), 1),
        (("prison.hdc.decided", "/police/WYP-BRADFORD"), 1),
        (("court.bail.decided", "/police/WYP-LEEDS"), 1),
        (("court.bail.decided", "/probation/PDU-LEEDS"), 1),
        (("court.warrant.issued", "/police/WYP-LEEDS"), 1),
    ]
    .into_iter()
    .map(|((t, p), n)| ((t.to_owned(), p.to_owned()), n))
    .collect();
    assert_eq!(webhooks, expected);

    let mails = smtp.messages();
    let to = count(mails.iter().flat_map(|m| m.to.clone()));
    let expected: BTreeMap<String, usize> = [
        ("ppo.leeds@westyorkshire.police.example.uk", 3),
        ("ppo.bradford@westyorkshire.police.example.uk", 1),
        ("bradford.pdu@probation.example.gov.uk", 1),
        ("leeds.pdu@probation.example.gov.uk", 1),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_owned(), n))
    .collect();
    assert_eq!(to, expected);
    for m in &mails {
        assert!(
            m.message_id.starts_with("<msg_") && m.message_id.ends_with("@notify.example.gov.uk>"),
            "{}",
            m.message_id
        );
        assert!(
            !m.text.is_empty() && m.html.contains("<table>"),
            "multipart text and HTML"
        );
    }
    let warrant = mails
        .iter()
        .find(|m| m.subject.contains("Warrant"))
        .unwrap();
    assert!(
        warrant.subject.starts_with("[CAT A] "),
        "{}",
        warrant.subject
    );
    // The curfew address reaches police and probation with the HDC approval.
    let hdc = mails
        .iter()
        .filter(|m| m.subject.contains("HDC"))
        .collect::<Vec<_>>();
    assert_eq!(hdc.len(), 2);
    assert!(
        hdc.iter()
            .all(|m| m.text.contains("Curfew address") && !m.text.contains("withheld"))
    );

    let metrics = service::scrape(&herald).await;
    assert_eq!(total(&metrics, "herald_events_received_total", &[]), 4.0);
    assert_eq!(
        total(
            &metrics,
            "herald_events_received_total",
            &["event_type=\"court.bail.decided\""]
        ),
        1.0
    );
    assert_eq!(total(&metrics, "herald_events_rejected_total", &[]), 0.0);
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["route=\"ppo-bail-decision\"", "channel=\"webhook\""]
        ),
        2.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_delivery_duration_seconds_count",
            &["channel=\"email\""]
        ),
        6.0
    );
    assert_eq!(
        total(&metrics, "herald_notification_latency_seconds_count", &[]),
        11.0
    );
    assert_eq!(total(&metrics, "herald_sla_outcomes_total", &[]), 11.0);
    for line in metrics.keys() {
        assert!(
            !line.contains('@') && !line.contains("Kershaw"),
            "no address or person in a label: {line}"
        );
    }
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_judiciary_never_sees_ppo_status() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("judiciary"),
    );
    let herald = service::start(service::config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "ppud.document.uploaded",
        &body("ppud.document.uploaded.json"),
        agency("evt-ppud-1"),
    )
    .await;
    wait_until("3 notifications delivered", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &["outcome=\"delivered\""],
        ) == 3.0
    })
    .await;
    let hooks = receiver.hooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].path, "/judiciary/PAROLE-BOARD");
    let offender = &hooks[0].body["data"]["event"]["additionalInformation"]["offender"];
    assert!(
        offender.is_object() && offender.get("ppo").is_none(),
        "{offender}"
    );
    assert_eq!(
        hooks[0].body["data"]["notification"]["withheld"],
        json!(["offender.ppo", "envelope.description"])
    );
    assert!(hooks[0].body["data"]["event"].get("description").is_none());
    let mails = smtp.messages();
    let panel = mails
        .iter()
        .find(|m| m.to.iter().any(|a| a.contains("paroleboard")))
        .expect("panel email");
    assert!(
        !panel.text.contains("PPO")
            && !panel.html.contains("PPO")
            && !panel.subject.contains("PPO")
    );
    assert!(
        mails
            .iter()
            .any(|m| m.to.iter().any(|a| a.contains("smithandco"))),
        "the authorised legal representative is told"
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_invalid_and_spoofed_events_are_parked_with_their_reason() {
    let (receiver, names) = (Receiver::start().await, Names::new("rejects"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    let mut unsigned = common::example("court.bail.decided.json");
    unsigned["description"] = json!("published without a user_id");
    let mut invalid = common::example("prison.hdc.decided.json");
    invalid["additionalInformation"]
        .as_object_mut()
        .unwrap()
        .remove("releaseDate");
    let cases: Vec<(&str, Vec<u8>, BasicProperties, &str)> = vec![
        (
            "court.warrant.issued",
            b"{\"eventType\": \"court.warr".to_vec(),
            agency("bad-1"),
            "malformed-json",
        ),
        (
            "prison.hdc.decided",
            serde_json::to_vec(&invalid).unwrap(),
            agency("bad-2"),
            "schema-violation",
        ),
        (
            "prison.escaped",
            serde_json::to_vec(&json!({"eventType": "prison.escaped", "version": 1})).unwrap(),
            agency("bad-3"),
            "unknown-event-type",
        ),
        (
            "court.bail.decided",
            body("court.bail.decided.json"),
            BasicProperties::default().with_user_id("guest".into()),
            "missing-message-id",
        ),
        (
            "court.bail.decided",
            serde_json::to_vec(&unsigned).unwrap(),
            BasicProperties::default().with_message_id("bad-5".into()),
            "unauthorised-publisher",
        ),
        (
            "court.hearing.concluded",
            body("court.hearing.concluded.json"),
            agency("bad-6"),
            "unauthorised-publisher",
        ),
    ];
    for (key, payload, props, _) in &cases {
        service::publish(&ch, &names.exchange, key, payload, props.clone()).await;
    }
    wait_until("6 rejections", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_events_rejected_total",
            &[],
        ) == 6.0
    })
    .await;
    let parked = service::drain(&ch, &names.rejected).await;
    assert_eq!(parked.len(), 6);
    for (_, payload, _, reason) in &cases {
        let m = parked
            .iter()
            .find(|m| &m.data == payload)
            .expect("the original body is parked");
        let headers = m.properties.headers();
        assert_eq!(
            herald::serve::park::header_text(headers, "x-herald-reason").as_deref(),
            Some(*reason)
        );
        assert!(
            herald::serve::park::header_text(headers, "x-herald-detail")
                .is_some_and(|d| !d.is_empty())
        );
    }
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_events_rejected_total",
            &["reason=\"unauthorised-publisher\""]
        ),
        2.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_events_rejected_total",
            &["reason=\"malformed-json\""]
        ),
        1.0
    );
    assert_eq!(
        total(&metrics, "herald_notifications_total", &[]),
        0.0,
        "nothing was sent"
    );
    assert!(receiver.hooks().is_empty());
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_endpoint_is_parked_not_lost_and_others_still_delivered() {
    let (receiver, names) = (Receiver::start().await, Names::new("gone"));
    receiver.answer("/police/WYP-LEEDS", 410);
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.bail.decided",
        &body("court.bail.decided.json"),
        agency("evt-gone-1"),
    )
    .await;
    wait_until("one failure parked", WAIT, || async {
        let m = service::scrape(&herald).await;
        total(&m, "herald_notifications_total", &["outcome=\"failed\""]) == 1.0
            && total(&m, "herald_notifications_total", &["outcome=\"delivered\""]) == 3.0
    })
    .await;
    // The endpoint is now disabled: the next notification for it is parked without a request.
    let mut second = common::example("court.bail.decided.json");
    second["description"] = json!("a second bail decision");
    service::publish(
        &ch,
        &names.exchange,
        "court.bail.decided",
        &serde_json::to_vec(&second).unwrap(),
        agency("evt-gone-2"),
    )
    .await;
    wait_until("the second one parked", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &["outcome=\"failed\""],
        ) == 2.0
    })
    .await;
    assert_eq!(
        receiver
            .hooks()
            .iter()
            .filter(|h| h.path == "/police/WYP-LEEDS")
            .count(),
        1,
        "never sent to again"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_endpoint_state",
            &["recipient=\"police:WYP-LEEDS\"", "channel=\"webhook\""]
        ),
        2.0
    );
    let parked = service::drain(&ch, &names.failed).await;
    assert_eq!(parked.len(), 2);
    // Each event makes two webhooks: police (the gone endpoint: parked) and probation.
    let probation = || {
        receiver
            .hooks()
            .iter()
            .filter(|h| h.path == "/probation/PDU-LEEDS")
            .count()
    };
    wait_until("probation told of both", WAIT, || async {
        probation() == 2
    })
    .await;
    println!(
        "gone endpoint: events 2, expected webhooks 4, delivered {}, parked {}, requests to the gone endpoint 1, lost {}",
        probation(),
        parked.len(),
        4 - probation() - parked.len()
    );
    let record: serde_json::Value = serde_json::from_slice(&parked[0].data).unwrap();
    assert_eq!(record["notification"]["recipient"], "police:WYP-LEEDS");
    assert_eq!(record["channel"], "webhook");
    assert!(record["detail"].as_str().unwrap().contains("410"));
    assert!(
        receiver
            .hooks()
            .iter()
            .any(|h| h.path == "/probation/PDU-LEEDS")
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_is_retried_durably_and_delays_no_one_else() {
    let (receiver, names) = (Receiver::start().await, Names::new("retry"));
    receiver.fail("/police/WYP-LEEDS", 503, 2);
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.bail.decided",
        &body("court.bail.decided.json"),
        agency("evt-retry-1"),
    )
    .await;
    wait_until(
        "the police webhook delivered on its third attempt",
        WAIT,
        || async {
            total(
                &service::scrape(&herald).await,
                "herald_notifications_total",
                &["outcome=\"delivered\""],
            ) == 4.0
        },
    )
    .await;
    let hooks = receiver.hooks();
    let police: Vec<_> = hooks
        .iter()
        .filter(|h| h.path == "/police/WYP-LEEDS")
        .collect();
    assert_eq!(
        police.iter().map(|h| h.status).collect::<Vec<_>>(),
        [503, 503, 204]
    );
    assert!(
        police.iter().all(|h| h.id == police[0].id && h.verified),
        "every attempt carries the same webhook-id"
    );
    for pair in police.windows(2) {
        assert!(
            // A 1 s wait, less at most a fifth of jitter.
            pair[1].at - pair[0].at >= Duration::from_millis(750),
            "retries wait their turn in the delay queue"
        );
    }
    let probation = hooks
        .iter()
        .find(|h| h.path == "/probation/PDU-LEEDS")
        .expect("probation told");
    assert!(
        probation.at < police[1].at,
        "the other recipient is not held up by the retries"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"retrying\""]
        ),
        2.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"failed\""]
        ),
        0.0
    );
    assert!(service::drain(&ch, &names.failed).await.is_empty());
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_that_run_out_are_parked_with_their_attempts() {
    let (receiver, names) = (Receiver::start().await, Names::new("exhausted"));
    receiver.answer("/police/WYP-LEEDS", 503);
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-exhausted-1"),
    )
    .await;
    wait_until("the webhook parked", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &["outcome=\"failed\""],
        ) == 1.0
    })
    .await;
    assert_eq!(receiver.hooks().len(), 1 + service::RETRY_SCHEDULE.len());
    let parked = service::drain(&ch, &names.failed).await;
    assert_eq!(parked.len(), 1);
    let record: serde_json::Value = serde_json::from_slice(&parked[0].data).unwrap();
    assert_eq!(record["reason"], "retries-exhausted");
    assert_eq!(record["attempts"], 3);
    assert_eq!(record["detail"], "HTTP 503");
    assert_eq!(
        herald::serve::park::header_text(parked[0].properties.headers(), "x-herald-reason")
            .as_deref(),
        Some("retries-exhausted")
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_twice_is_routed_once() {
    let (receiver, names) = (Receiver::start().await, Names::new("dedup"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    for _ in 0..2 {
        service::publish(
            &ch,
            &names.exchange,
            "court.warrant.issued",
            &body("court.warrant.issued.json"),
            agency("evt-twice"),
        )
        .await;
    }
    wait_until("the copy recognised", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_events_duplicate_total",
            &[],
        ) == 1.0
    })
    .await;
    assert_eq!(receiver.hooks().len(), 1, "the police webhook is sent once");
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_keeps_coming_back_is_parked_by_the_broker() {
    let (receiver, names) = (Receiver::start().await, Names::new("poison"));
    // Herald declares the topology, then stops; the test plays a consumer that never finishes.
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.delivery_limit = 2
    })
    .await;
    herald.stop().await.unwrap();
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-poison"),
    )
    .await;
    for _ in 0..3 {
        let got = ch
            .basic_get(
                names.queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
            .expect("the event is still on the queue");
        got.delivery
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let parked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    wait_until(
        "the event dead-lettered to the rejected queue",
        WAIT,
        || {
            let (ch, queue, parked) = (ch.clone(), names.rejected.clone(), parked.clone());
            async move {
                let got = service::drain(&ch, &queue).await;
                let mut parked = parked.lock().unwrap();
                parked.extend(got);
                !parked.is_empty()
            }
        },
    )
    .await;
    let headers = parked.lock().unwrap()[0]
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    use lapin::types::AMQPValue;
    let reason = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
            Some(AMQPValue::FieldTable(death)) => match death.inner().get("reason") {
                Some(AMQPValue::LongString(r)) => {
                    String::from_utf8_lossy(r.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    };
    assert_eq!(reason, "delivery_limit");
    assert!(service::drain(&ch, &names.queue).await.is_empty());
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_reconnects_after_losing_the_broker_and_carries_on() {
    let (receiver, names) = (Receiver::start().await, Names::new("reconnect"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    service::install_tls();
    let readyz = format!("http://{}/readyz", herald.metrics_addr);
    let status = || async {
        reqwest::get(&readyz)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(status().await, 200);
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-before"),
    )
    .await;
    wait_until("the first event delivered", WAIT, || async {
        receiver.hooks().len() == 1
    })
    .await;

    assert!(
        service::close_connection(&names.queue) >= 1,
        "Herald's connection was found by its name"
    );
    wait_until("not ready while disconnected", WAIT, || async {
        status().await == 503
    })
    .await;
    wait_until("ready again after reconnecting", WAIT, || async {
        status().await == 200
    })
    .await;

    let mut later = common::example("court.warrant.issued.json");
    later["additionalInformation"]["warrantId"] = json!("LEEDSMC-W-2026-009999");
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&later).unwrap(),
        agency("evt-after"),
    )
    .await;
    wait_until(
        "the event published after the reconnection delivered",
        WAIT,
        || async { receiver.hooks().len() == 2 },
    )
    .await;
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_recipient_is_left_alone_while_the_others_are_served() {
    let (receiver, names) = (Receiver::start().await, Names::new("circuit"));
    receiver.answer("/police/WYP-LEEDS", 503);
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.retry_schedule = vec![Duration::from_secs(30)];
    })
    .await;
    let (_conn, ch) = service::channel().await;
    for i in 0..5 {
        let mut doc = common::example("court.bail.decided.json");
        doc["description"] = json!(format!("bail decision {i}"));
        service::publish(
            &ch,
            &names.exchange,
            "court.bail.decided",
            &serde_json::to_vec(&doc).unwrap(),
            agency(&format!("evt-circuit-{i}")),
        )
        .await;
        wait_until("the event handled", WAIT, || async {
            total(
                &service::scrape(&herald).await,
                "herald_notifications_total",
                &["outcome=\"retrying\""],
            ) == f64::from(i + 1)
        })
        .await;
    }
    let hooks = receiver.hooks();
    assert_eq!(
        hooks
            .iter()
            .filter(|h| h.path == "/probation/PDU-LEEDS")
            .count(),
        5,
        "the other recipient is served"
    );
    assert_eq!(
        hooks
            .iter()
            .filter(|h| h.path == "/police/WYP-LEEDS")
            .count(),
        3,
        "after three failures in a row the circuit opens and no more requests go to the dead endpoint"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_endpoint_state",
            &["recipient=\"police:WYP-LEEDS\"", "channel=\"webhook\""]
        ),
        1.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_endpoint_state",
            &["recipient=\"probation:PDU-LEEDS\"", "channel=\"webhook\""]
        ),
        0.0
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_are_served() {
    let (receiver, names) = (Receiver::start().await, Names::new("health"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let base = format!("http://{}", herald.metrics_addr);
    service::install_tls();
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    herald.stop().await.unwrap();
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the endpoint stops with the service"
    );
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

#[test]
fn an_unreachable_broker_is_one_clear_line_and_a_failure_exit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .current_dir(common::root())
        .env(
            "HERALD_AMQP_URL",
            "amqp://guest:secret-password@127.0.0.1:1/%2f",
        )
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
        .env("HERALD_LOG_FORMAT", "json")
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("127.0.0.1:1") && line.contains("rabbitmq-server -detached"),
        "{line}"
    );
    assert!(
        !stderr.contains("secret-password"),
        "the password is not shown"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_messages_are_listed_replayed_once_fixed_and_purged() {
    let (receiver, names) = (Receiver::start().await, Names::new("dlq"));
    receiver.answer("/police/WYP-LEEDS", 410);
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-dlq-1"),
    )
    .await;
    // guest may not publish hearing outcomes in this configuration: rejected.
    service::publish(
        &ch,
        &names.exchange,
        "court.hearing.concluded",
        &body("court.hearing.concluded.json"),
        agency("evt-dlq-2"),
    )
    .await;
    wait_until("one parked failure and one rejection", WAIT, || async {
        let m = service::scrape(&herald).await;
        total(&m, "herald_notifications_total", &["outcome=\"failed\""]) == 1.0
            && total(&m, "herald_events_rejected_total", &[]) == 1.0
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let strict = service::config_file(dir.path(), &names, &receiver, "\"court.warrant.issued\"");

    let (ok, out) = dlq(&strict, &["list", "failed"]);
    assert!(
        ok && out.contains("delivery-failed")
            && out.contains("police:WYP-LEEDS")
            && out.contains("410"),
        "{out}"
    );
    let (ok, out) = dlq(&strict, &["list", "rejected"]);
    assert!(
        ok && out.contains("unauthorised-publisher") && out.contains("court.hearing.concluded"),
        "{out}"
    );
    // Addressed by the event's id, which `list` shows.
    let (ok, out) = dlq(&strict, &["show", "failed", "evt-dlq-1"]);
    assert!(
        ok && out.contains("x-herald-reason: delivery-failed") && out.contains("\"notification\""),
        "{out}"
    );

    // The endpoint is back: the parked webhook goes again, with the same webhook-id.
    receiver.answer("/police/WYP-LEEDS", 204);
    let (ok, out) = dlq(&strict, &["replay", "failed"]);
    assert!(
        !ok && out.contains("--all"),
        "a replay names what it replays: {out}"
    );
    let (ok, out) = dlq(&strict, &["replay", "failed", "--all"]);
    assert!(
        ok && out.contains("replayed: 1") && out.contains("p-"),
        "{out}"
    );
    wait_until("the replayed webhook delivered", WAIT, || async {
        receiver
            .hooks()
            .iter()
            .filter(|h| h.path == "/police/WYP-LEEDS")
            .count()
            == 2
    })
    .await;
    let police: Vec<_> = receiver
        .hooks()
        .into_iter()
        .filter(|h| h.path == "/police/WYP-LEEDS")
        .collect();
    assert_eq!(police[0].id, police[1].id);
    assert_eq!(police[1].status, 204);

    // Still not allowed: the rejected event stays parked.
    let (ok, out) = dlq(&strict, &["replay", "rejected", "--all"]);
    assert!(
        !ok && out.contains("kept") && out.contains("may not publish"),
        "{out}"
    );
    // Allowed now: replaying routes it and the police hear about the hearing.
    let relaxed = service::config_file(dir.path(), &names, &receiver, "\"court.*\"");
    let (ok, out) = dlq(&relaxed, &["replay", "rejected", "evt-dlq-2"]);
    assert!(ok && out.contains("replayed: 2"), "{out}");
    wait_until("the hearing outcome delivered", WAIT, || async {
        receiver
            .hooks()
            .iter()
            .any(|h| h.body["type"] == "court.hearing.concluded")
    })
    .await;
    // The replay is in the ledger: the event routed now, its notifications, and who replayed it.
    let url = common::ledger::of_queue(&names.queue).unwrap();
    let store = herald::ledger::Store::open(
        &url,
        herald::ledger::Sync::Normal,
        herald::ledger::Health::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        common::ledger::count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'evt-dlq-2' AND outcome = 'routed'"
        )
        .await,
        1
    );
    assert_eq!(
        common::ledger::count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE e.message_id = 'evt-dlq-2' AND e.outcome = 'routed'"
        )
        .await,
        2
    );
    assert_eq!(
        common::ledger::count(
            &store,
            "SELECT COUNT(*) FROM audit WHERE subject = 'evt-dlq-2' AND action = 'replay'"
        )
        .await,
        1
    );
    store.close().await;

    let (ok, out) = dlq(&relaxed, &["purge", "failed"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = dlq(&relaxed, &["purge", "rejected", "--yes"]);
    assert!(ok && out.contains("purged 0"), "{out}");
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

/// A failure-to-appear warrant for a PPO (route `ppo-fta-warrant`: police, email and webhook,
/// within one working day) with its own id and the given times.
fn warrant_at(id: &str, occurred: &str, published: &str) -> Vec<u8> {
    let mut doc = common::example("court.warrant.issued.json");
    doc["occurredAt"] = json!(occurred);
    doc["publishedAt"] = json!(published);
    doc["additionalInformation"]["warrantId"] = json!(id);
    serde_json::to_vec(&doc).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_publisher_is_told_apart_from_a_late_delivery_and_a_wait_shows_its_deadline() {
    const ROUTE: &str = "route=\"ppo-fta-warrant\"";
    let (receiver, names) = (Receiver::start().await, Names::new("sla"));
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.queue_poll = Duration::from_millis(200);
        s.retry_schedule = vec![Duration::from_secs(3)];
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let outcome = |m: &BTreeMap<String, f64>, o: &str| {
        total(
            m,
            "herald_sla_outcomes_total",
            &[ROUTE, &format!("outcome=\"{o}\"")],
        )
    };
    let metrics = service::scrape(&herald).await;
    assert_eq!(total(&metrics, "herald_ready", &[]), 1.0);
    for o in ["met", "breached", "late_on_arrival", "short_notice"] {
        assert!(
            metrics
                .keys()
                .any(|k| k.starts_with("herald_sla_outcomes_total{")
                    && k.contains(ROUTE)
                    && k.contains(&format!("outcome=\"{o}\""))),
            "{o} is exported at zero before anything happens"
        );
    }

    // Due Tuesday 6 January 2026, 10:00. Published two days after that: the publisher's delay.
    let late = warrant_at("W-LATE-1", "2026-01-05T10:00:00Z", "2026-01-08T10:00:00Z");
    // Published a minute after the warrant: delivered now, so Herald's breach.
    let breach = warrant_at("W-LATE-2", "2026-01-05T10:00:00Z", "2026-01-05T10:01:00Z");
    for (id, body) in [("evt-sla-late", &late), ("evt-sla-breach", &breach)] {
        service::publish(
            &ch,
            &names.exchange,
            "court.warrant.issued",
            body,
            agency(id),
        )
        .await;
    }
    wait_until("both warrants delivered", WAIT, || async {
        let m = service::scrape(&herald).await;
        outcome(&m, "late_on_arrival") == 2.0 && outcome(&m, "breached") == 2.0
    })
    .await;

    // A warrant on time whose police webhook fails once: it waits for its retry, and the
    // gauges show it and how long is left before its deadline.
    receiver.fail("/police/WYP-LEEDS", 503, 1);
    let now = chrono::Utc::now();
    let on_time = warrant_at(
        "W-ON-TIME",
        &(now - chrono::Duration::minutes(5)).to_rfc3339(),
        &now.to_rfc3339(),
    );
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &on_time,
        agency("evt-sla-on-time"),
    )
    .await;
    wait_until("the webhook waiting for its retry", WAIT, || async {
        let m = service::scrape(&herald).await;
        total(&m, "herald_waiting_notifications", &[ROUTE]) == 1.0
            && total(&m, "herald_queue_messages", &["queue=\"retrying\""]) == 1.0
    })
    .await;
    let m = service::scrape(&herald).await;
    let left = total(&m, "herald_waiting_deadline_remaining_seconds", &[ROUTE]);
    // One working day less the five minutes since the warrant, at least (a weekend or a bank
    // holiday makes it longer).
    assert!(left > 86_400.0 - 400.0, "time left {left}");
    assert!(total(&m, "herald_waiting_oldest_age_seconds", &[ROUTE]) < 60.0);
    wait_until("the retry delivered", WAIT, || async {
        let m = service::scrape(&herald).await;
        outcome(&m, "met") == 2.0
    })
    .await;
    let m = service::scrape(&herald).await;
    assert!(
        !m.keys()
            .any(|k| k.starts_with("herald_waiting_notifications{")),
        "nothing waits any more"
    );
    assert_eq!(outcome(&m, "late_on_arrival"), 2.0);
    assert_eq!(outcome(&m, "breached"), 2.0);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_urgent_warrant_overtakes_routine_notifications_queued_for_the_same_force() {
    const ROUTINE: usize = 12;
    let (receiver, names) = (Receiver::start().await, Names::new("priority"));
    // One request at a time to the force, each taking 300 ms: routine bail decisions queue up.
    receiver.slow("/police/WYP-LEEDS", Duration::from_millis(300));
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.concurrency_per_endpoint = 1;
        s.webhook_timeout = Duration::from_secs(20);
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-routine", ROUTINE).await;
    // A PPO's failure-to-appear warrant (Cat A, urgent) for the same force.
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-urgent"),
    )
    .await;
    let police = || receiver.hooks_at("/police/WYP-LEEDS");
    wait_until("the force told of everything", WAIT, || async {
        police().len() == ROUTINE + 1
    })
    .await;
    let order: Vec<String> = police()
        .iter()
        .map(|h| {
            h.body["data"]["event"]["id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let position = order.iter().position(|id| id == "evt-urgent").unwrap();
    println!(
        "priority: the urgent warrant arrived {} of {}",
        position + 1,
        order.len()
    );
    assert!(
        position <= 2,
        "the warrant went ahead of the routine queue: {order:?}"
    );
    assert_eq!(
        police()[position].body["data"]["notification"]["priority"],
        "urgent",
        "and says so in its payload"
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

/// The JSON lines of `herald dlq list --json`.
fn dlq_json(config: &std::path::Path, which: &str) -> Vec<serde_json::Value> {
    let (ok, out) = dlq(config, &["list", which, "--json"]);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The fields every record of `herald dlq list --json` has, whatever its kind.
const RECORD_FIELDS: [&str; 13] = [
    "id",
    "kind",
    "parkedAt",
    "reason",
    "route",
    "recipient",
    "channel",
    "attempts",
    "eventId",
    "messageId",
    "eventType",
    "publisher",
    "detail",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_parked_record_lists_in_readable_columns() {
    let (receiver, names) = (Receiver::start().await, Names::new("dlq-kinds"));
    receiver.answer("/police/WYP-LEEDS", 410);
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    // A webhook the endpoint refuses: a parked notification.
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-kinds-1"),
    )
    .await;
    // A home BCU the directory lacks: a notification the engine could not make.
    let mut nowhere = common::example("court.warrant.issued.json");
    nowhere["additionalInformation"]["offender"]["homeBcu"] = json!("XYZ-NOWHERE");
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&nowhere).unwrap(),
        agency("evt-kinds-2"),
    )
    .await;
    // guest may not publish hearing outcomes: a refused event.
    service::publish(
        &ch,
        &names.exchange,
        "court.hearing.concluded",
        &body("court.hearing.concluded.json"),
        agency("evt-kinds-3"),
    )
    .await;
    // A retry Herald cannot read.
    let deliveries = names.deliveries();
    service::publish(
        &ch,
        "",
        &deliveries,
        br#"{"key": "msg_unreadable", "eventId": "evt-kinds-4", "route": "ppo-fta-warrant"}"#,
        BasicProperties::default(),
    )
    .await;
    wait_until("three records parked and one refusal", WAIT, || async {
        ready(&names.failed).await == 3 && ready(&names.rejected).await == 1
    })
    .await;
    herald.stop().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.warrant.issued\"");

    let (ok, out) = dlq(&config, &["list", "failed"]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header row and three records: {out}");
    for column in [
        "PARKED AT",
        "REASON",
        "ROUTE",
        "RECIPIENT",
        "CHANNEL",
        "ATTEMPTS",
        "EVENT ID",
        "PUBLISHER",
        "DETAIL",
    ] {
        assert!(lines[0].contains(column), "{column}: {out}");
    }
    let line = |word: &str| {
        *lines
            .iter()
            .find(|l| l.contains(word))
            .unwrap_or_else(|| panic!("no line with {word}: {out}"))
    };
    let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let delivery = cells(line("evt-kinds-1"));
    assert_eq!(
        delivery[2..9],
        [
            "delivery-failed",
            "ppo-fta-warrant",
            "police:WYP-LEEDS",
            "webhook",
            "1",
            "evt-kinds-1",
            "court.warrant.issued"
        ],
        "{out}"
    );
    let problem = cells(line("evt-kinds-2"));
    assert_eq!(
        problem[2..9],
        [
            "unknown-recipient",
            "ppo-fta-warrant",
            "police:{offender.homeBcu}",
            "-",
            "-",
            "evt-kinds-2",
            "court.warrant.issued"
        ],
        "{out}"
    );
    let unreadable = cells(line("evt-kinds-4"));
    assert_eq!(unreadable[2..4], ["unreadable", "ppo-fta-warrant"], "{out}");
    for l in &lines[1..] {
        // Every record has the time it was parked.
        assert!(cells(l)[1].ends_with('Z'), "{l}");
    }
    assert!(
        !out.contains("null") && !out.contains("()") && !out.contains("LongLongInt"),
        "{out}"
    );

    let records = dlq_json(&config, "failed");
    assert_eq!(records.len(), 3);
    for r in &records {
        let keys: std::collections::BTreeSet<&str> =
            r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, RECORD_FIELDS.into_iter().collect(), "{r}");
    }
    let notification = records
        .iter()
        .find(|r| r["eventId"] == "evt-kinds-1")
        .unwrap();
    assert_eq!(notification["kind"], "notification", "{notification}");
    assert_eq!(notification["attempts"], 1, "{notification}");
    assert!(
        notification["messageId"]
            .as_str()
            .unwrap()
            .starts_with("msg_"),
        "{notification}"
    );
    let problem = records
        .iter()
        .find(|r| r["eventId"] == "evt-kinds-2")
        .unwrap();
    assert_eq!(
        (&problem["kind"], &problem["attempts"]),
        (&json!("problem"), &json!(null))
    );
    let unreadable = records
        .iter()
        .find(|r| r["eventId"] == "evt-kinds-4")
        .unwrap();
    assert_eq!(
        (&unreadable["kind"], &unreadable["messageId"]),
        (&json!("unreadable"), &json!("msg_unreadable"))
    );

    // A look puts messages back at the end of the queue: the id from one listing still names
    // the same message after it.
    let id = dlq_json(&config, "failed")
        .iter()
        .find(|r| r["eventId"] == "evt-kinds-1")
        .and_then(|r| r["id"].as_str().map(str::to_owned))
        .unwrap();
    for _ in 0..3 {
        let (ok, _) = dlq(&config, &["list", "failed", "--limit", "1"]);
        assert!(ok);
    }
    let (ok, out) = dlq(&config, &["show", "failed", &id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("x-herald-attempts: 1\n") && out.contains("reason      delivery-failed"),
        "{out}"
    );
    assert!(
        !out.contains("LongLongInt") && !out.contains("LongString"),
        "{out}"
    );
    let (ok, out) = dlq(&config, &["show", "failed", &id, "--json"]);
    assert!(ok, "{out}");
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["headers"]["x-herald-attempts"], 1, "{shown}");
    assert_eq!(shown["reason"], "delivery-failed", "{shown}");
    assert_eq!(shown["body"]["kind"], "notification", "{shown}");

    let (ok, out) = dlq(&config, &["list", "failed", "--limit", "2"]);
    assert!(
        ok && out.lines().count() == 4 && out.contains("2 of 3 in"),
        "{out}"
    );

    let (ok, out) = dlq(&config, &["list", "rejected"]);
    assert!(ok, "{out}");
    let refused = cells(out.lines().nth(1).unwrap_or_default());
    assert_eq!(refused[2], "unauthorised-publisher", "{out}");
    assert_eq!(&refused[3..7], ["-", "-", "-", "-"], "{out}");
    assert_eq!(
        &refused[7..10],
        ["evt-kinds-3", "court.hearing.concluded", "guest"],
        "{out}"
    );
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_past_the_delivery_limit_is_explained_and_replayed_with_its_publisher() {
    use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let (receiver, names) = (Receiver::start().await, Names::new("delivery-limit"));
    let (_conn, ch) = service::channel().await;
    // The events queue as Herald declares it, with a delivery limit of 1, dead-lettering to
    // the test's rejected queue; and the deliveries queue a replay sends to.
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let quorum = |extra: &[(&str, AMQPValue)]| {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        for (k, v) in extra {
            args.insert((*k).into(), v.clone());
        }
        args
    };
    let deliveries = names.deliveries();
    for queue in [&names.rejected, &deliveries] {
        ch.queue_declare(queue.as_str().into(), durable, quorum(&[]))
            .await
            .unwrap();
    }
    let text = |s: &str| AMQPValue::LongString(s.into());
    ch.queue_declare(
        names.queue.as_str().into(),
        durable,
        quorum(&[
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&names.rejected)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await
    .unwrap();
    service::publish(
        &ch,
        "",
        &names.queue,
        &body("court.warrant.issued.json"),
        agency("evt-delivery-limit"),
    )
    .await;
    // A consumer that never finishes: each delivery goes back, until the broker gives up.
    let mut returned = 0;
    while let Some(got) = ch
        .basic_get(
            names.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
    {
        got.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        returned += 1;
        assert!(returned <= 5, "the broker never dead-lettered the event");
    }
    assert_eq!(returned, 2, "delivered twice, the limit being 1");
    wait_until("the event dead-lettered", WAIT, || async {
        ready(&names.rejected).await == 1
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.warrant.issued\"");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("prefetch = 100", "prefetch = 100\ndelivery_limit = 1", 1),
    )
    .unwrap();
    // No Herald ran on these queues: the ledger the replay records in is one of the test's own,
    // brought up to date as `herald serve` would.
    let url = common::ledger::fresh(common::ledger::default_backend()).await;
    herald::ledger::Store::open(
        &url,
        herald::ledger::Sync::Normal,
        herald::ledger::Health::default(),
    )
    .await
    .unwrap()
    .close()
    .await;
    common::ledger::remember(&names.queue, &url);
    let explanation = format!(
        "the broker dead-lettered it from {} after 2 deliveries: Herald never finished handling \
         it (see Herald's log for event id evt-delivery-limit)",
        names.queue
    );

    let (ok, out) = dlq(&config, &["list", "rejected"]);
    assert!(ok, "{out}");
    let row = out.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "delivery-limit", "{out}");
    assert_eq!(
        &cells[7..10],
        ["evt-delivery-limit", "court.warrant.issued", "guest"],
        "{out}"
    );
    assert!(row.ends_with(&explanation), "{out}");

    let records = dlq_json(&config, "rejected");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (&r["kind"], &r["reason"]),
        (&json!("delivery-limit"), &json!("delivery-limit")),
        "{r}"
    );
    assert_eq!(r["publisher"], "guest", "{r}");
    assert_eq!(r["detail"], explanation.as_str(), "{r}");
    assert!(
        r["parkedAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{r}"
    );

    let (ok, out) = dlq(&config, &["show", "rejected", "evt-delivery-limit"]);
    assert!(
        ok && out.contains("reason      delivery-limit") && out.contains(&explanation),
        "{out}"
    );
    assert!(
        out.contains("x-death: [{") && out.contains("\"reason\":\"delivery_limit\""),
        "{out}"
    );
    assert!(out.contains("user_id: guest"), "{out}");
    assert!(
        !out.contains("LongString") && !out.contains("FieldTable"),
        "{out}"
    );

    // Replayed with the publisher the broker kept: routed again, its notifications queued.
    let (ok, out) = dlq(&config, &["replay", "rejected", "--all"]);
    assert!(ok && out.contains("replayed: 2"), "{out}");
    let queued = service::drain(&ch, &deliveries).await;
    assert_eq!(queued.len(), 2);
    for m in &queued {
        let p: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(p["eventId"], "evt-delivery-limit", "{p}");
    }
    assert_eq!(ready(&names.rejected).await, 0);
    service::cleanup(&ch, &names).await;
}

/// Urgent notifications (a PPO's failure-to-appear warrant is Cat A) carry the flags mail
/// clients show; routine ones (a bail decision) carry neither.
#[tokio::test(flavor = "multi_thread")]
async fn urgent_email_carries_importance_high_and_routine_email_does_not() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("importance"),
    );
    let herald = service::start(service::config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    for (id, name) in [
        ("evt-importance-1", "court.warrant.issued.json"),
        ("evt-importance-2", "court.bail.decided.json"),
    ] {
        let event_type = name.trim_end_matches(".json");
        service::publish(&ch, &names.exchange, event_type, &body(name), agency(id)).await;
    }
    wait_until("three emails", WAIT, || async {
        smtp.messages().len() == 3
    })
    .await;
    let mails = smtp.messages();
    let (urgent, routine): (Vec<_>, Vec<_>) = mails
        .iter()
        .partition(|m| m.subject.starts_with("[CAT A] "));
    assert_eq!(
        (urgent.len(), routine.len()),
        (1, 2),
        "{:?}",
        count(mails.iter().map(|m| m.subject.clone()))
    );
    let warrant = urgent[0];
    assert_eq!(
        warrant.header("Importance"),
        Some("high"),
        "{:?}",
        warrant.headers
    );
    assert_eq!(
        warrant.header("X-Priority"),
        Some("1"),
        "{:?}",
        warrant.headers
    );
    for bail in routine {
        assert!(bail.subject.contains("ail"), "{}", bail.subject);
        assert_eq!(bail.header("Importance"), None, "{:?}", bail.headers);
        assert_eq!(bail.header("X-Priority"), None, "{:?}", bail.headers);
    }
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

/// The idempotency key of each notification `herald route-test` says the service would give
/// this event from guest, by (recipient, channel).
fn keys_for(file: &str, message_id: &str) -> BTreeMap<(String, String), String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "route-test",
            "--json",
            "--publisher",
            "guest",
            "--message-id",
            message_id,
        ])
        .arg(common::example_path("valid", file))
        .current_dir(common::root())
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap().to_owned();
            ((s("recipient"), s("channel")), s("key"))
        })
        .collect()
}

/// With no SMTP server, each email is an `.eml` file in the outbox named by the key its
/// recipient can drop a repeat by, and nothing else is left there.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_smtp_url_each_email_is_an_eml_file_named_by_its_idempotency_key() {
    let (receiver, names) = (Receiver::start().await, Names::new("outbox"));
    let outbox = tempfile::tempdir().unwrap();
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.outbox = outbox.path().to_owned();
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.bail.decided",
        &body("court.bail.decided.json"),
        agency("evt-outbox-1"),
    )
    .await;
    let keys = keys_for("court.bail.decided.json", "evt-outbox-1");
    let mut want: Vec<String> = keys
        .iter()
        .filter(|((_, channel), _)| channel == "email")
        .map(|(_, key)| format!("{key}.eml"))
        .collect();
    want.sort();
    assert_eq!(want.len(), 2, "police and probation: {keys:?}");
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(outbox.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    wait_until("two outbox files", WAIT, || async { files().len() >= 2 }).await;
    herald.stop().await.unwrap();
    assert_eq!(files(), want, "named by key, no temporary file left");
    for name in &want {
        let text = std::fs::read_to_string(outbox.path().join(name)).unwrap();
        let key = name.trim_end_matches(".eml");
        assert!(
            text.contains(&format!("Message-ID: <{key}@notify.example.gov.uk>")),
            "{text}"
        );
    }
    service::cleanup(&ch, &names).await;
}

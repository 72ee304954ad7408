//! Herald as a hostile publisher or a careless operator would try it, against the real
//! RabbitMQ, SMTP server and webhook receiver: nothing leaks, nothing is silently dropped, and
//! every refusal says why.

mod common;

use std::time::Duration;

use common::body;
use common::broker::rabbitmqctl;
use common::service::{self, Names, Receiver, Smtp, agency, ready, total, wait_until};
use herald::serve::park::header_text;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn reason(m: &lapin::message::Delivery) -> Option<String> {
    header_text(m.properties.headers(), "x-herald-reason")
}

/// A broker login of the test's own, deleted when dropped.
struct Login {
    name: String,
    password: String,
}

impl Login {
    fn create(tag: &str) -> Login {
        let name = format!("herald-test-{tag}-{}", std::process::id());
        let password = format!("pw-{}", std::process::id());
        let ctl = |args: &[&str]| {
            let status = rabbitmqctl()
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("rabbitmqctl");
            assert!(status.success(), "rabbitmqctl {args:?}");
        };
        let _ = rabbitmqctl()
            .args(["delete_user", &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        ctl(&["add_user", &name, &password]);
        ctl(&[
            "set_permissions",
            "-p",
            &service::vhost(),
            &name,
            ".*",
            ".*",
            ".*",
        ]);
        Login { name, password }
    }

    fn url(&self) -> String {
        service::amqp_url_as(&self.name, &self.password)
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let _ = rabbitmqctl()
            .args(["delete_user", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_publishers_with_one_message_id_are_two_events_and_an_empty_id_is_refused() {
    let (receiver, names) = (Receiver::start().await, Names::new("publisher-ids"));
    let login = Login::create("pubids");
    let mut config = service::config(&receiver);
    config
        .publishers
        .insert(login.name.clone(), vec!["court.*".into()]);
    let herald = service::start(config, &names, None).await;
    let (_conn, ch) = service::channel().await;

    // guest and the test's login both publish a warrant with message_id "evt-1".
    let mut other = common::example("court.warrant.issued.json");
    other["additionalInformation"]["warrantId"] = json!("LEEDSMC-W-2026-000777");
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-1"),
    )
    .await;
    let conn2 = lapin::Connection::connect(&login.url(), Default::default())
        .await
        .unwrap();
    let ch2 = conn2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    service::publish(
        &ch2,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&other).unwrap(),
        agency("evt-1").with_user_id(login.name.as_str().into()),
    )
    .await;
    // Empty and absent ids.
    for props in [
        agency(""),
        agency("   "),
        BasicProperties::default()
            .with_user_id("guest".into())
            .with_content_type("application/json".into()),
    ] {
        service::publish(
            &ch,
            &names.exchange,
            "court.warrant.issued",
            &body("court.warrant.issued.json"),
            props,
        )
        .await;
    }
    wait_until("both warrants delivered, three refused", WAIT, || async {
        let m = service::scrape(&herald).await;
        receiver.hooks().len() == 2 && total(&m, "herald_events_rejected_total", &[]) == 3.0
    })
    .await;
    let hooks = receiver.hooks();
    let warrants: Vec<&str> = hooks
        .iter()
        .filter_map(|h| h.body["data"]["event"]["additionalInformation"]["warrantId"].as_str())
        .collect();
    assert!(warrants.contains(&"LEEDSMC-W-2026-000777"), "{warrants:?}");
    assert_ne!(
        hooks[0].id, hooks[1].id,
        "two events, two idempotency keys: a recipient dropping repeats keeps both"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(total(&metrics, "herald_events_duplicate_total", &[]), 0.0);
    let parked = service::drain(&ch, &names.rejected).await;
    assert_eq!(parked.len(), 3);
    assert!(
        parked
            .iter()
            .all(|m| reason(m).as_deref() == Some("missing-message-id"))
    );
    herald.stop().await.unwrap();
    let _ = conn2.close(200, "done".into()).await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_identifiers_of_one_type_are_refused_and_no_representative_is_told() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("dup-identifiers"),
    );
    let herald = service::start(service::config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    // Smith & Co act for A1234BC, given first; the second NOMS number is someone else's.
    let mut doc = common::example("ppud.document.uploaded.json");
    doc["personReference"]["identifiers"] = json!([
        {"type": "NOMS", "value": "A1234BC"},
        {"type": "NOMS", "value": "K7310PX"},
    ]);
    service::publish(
        &ch,
        &names.exchange,
        "ppud.document.uploaded",
        &serde_json::to_vec(&doc).unwrap(),
        agency("evt-two-noms"),
    )
    .await;
    // A control event after it: once it is delivered, the first has been handled.
    service::publish(
        &ch,
        &names.exchange,
        "ppud.document.uploaded",
        &body("ppud.document.uploaded.json"),
        agency("evt-control"),
    )
    .await;
    wait_until("the control event's three notifications", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &["outcome=\"delivered\""],
        ) == 3.0
    })
    .await;
    let parked = service::drain(&ch, &names.rejected).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(reason(&parked[0]).as_deref(), Some("duplicate-identifier"));
    let lawyer_mails: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| m.to.iter().any(|a| a.contains("smithandco")))
        .collect();
    assert_eq!(lawyer_mails.len(), 1, "only the control event's email");
    assert!(
        !lawyer_mails[0].text.contains("K7310PX"),
        "{}",
        lawyer_mails[0].text
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn array_fields_and_free_text_are_withheld_from_the_receiver_that_may_not_see_them() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("array-redaction"),
    );
    let mut config = service::config(&receiver);
    config.sensitive.push(herald::config::SensitiveRule {
        fields: vec!["offender.aliases[]".into()],
        only: None,
        never: Some(vec!["judiciary".into()]),
        why: Some("a test of array redaction".into()),
    });
    let herald = service::start(config, &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    let mut doc = common::example("ppud.document.uploaded.json");
    doc["description"] = json!("PPO dossier update");
    service::publish(
        &ch,
        &names.exchange,
        "ppud.document.uploaded",
        &serde_json::to_vec(&doc).unwrap(),
        agency("evt-aliases"),
    )
    .await;
    wait_until("the panel's webhook", WAIT, || async {
        receiver.hooks().len() == 1
    })
    .await;
    let hook = &receiver.hooks()[0];
    assert_eq!(hook.path, "/judiciary/PAROLE-BOARD");
    let text = hook.body.to_string();
    for secret in ["Danny Kershaw", "Kirk", "PPO dossier update"] {
        assert!(!text.contains(secret), "{secret} reached the panel: {text}");
    }
    assert_eq!(
        hook.body["data"]["event"]["additionalInformation"]["offender"]["aliases"],
        json!([])
    );
    assert_eq!(
        hook.body["data"]["notification"]["withheld"],
        json!(["offender.ppo", "offender.aliases[]", "envelope.description"])
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_with_huge_headers_is_refused_and_the_next_event_goes_straight_through() {
    let (receiver, names) = (Receiver::start().await, Names::new("huge-headers"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    // About 120 KB of headers: within the broker's frame, but a copy with Herald's headers
    // added would not be.
    let mut headers = FieldTable::default();
    for i in 0..120 {
        headers.insert(
            format!("x-padding-{i}").into(),
            AMQPValue::LongString(LongString::from("p".repeat(1000))),
        );
    }
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-poison-headers").with_headers(headers),
    )
    .await;
    let mut valid = common::example("court.warrant.issued.json");
    valid["additionalInformation"]["warrantId"] = json!("LEEDSMC-W-2026-000555");
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&valid).unwrap(),
        agency("evt-after-poison"),
    )
    .await;
    wait_until(
        "the valid event delivered",
        Duration::from_secs(10),
        || async { receiver.hooks().len() == 1 },
    )
    .await;
    let parked = service::drain(&ch, &names.rejected).await;
    assert_eq!(parked.len(), 1, "rejected once, not redelivered");
    assert_eq!(reason(&parked[0]).as_deref(), Some("headers-too-large"));
    assert_eq!(
        parked[0].data,
        body("court.warrant.issued.json"),
        "the body is kept"
    );
    let summary = header_text(parked[0].properties.headers(), "x-herald-original-headers")
        .expect("a summary of what was dropped");
    assert!(summary.starts_with("120 header(s)"), "{summary}");
    assert!(
        header_text(parked[0].properties.headers(), "x-padding-0").is_none(),
        "the large headers are not copied"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(&metrics, "herald_ready", &[]),
        1.0,
        "the connection survived"
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_in_flight_when_the_connection_drops_is_delivered_once_and_never_dead_lettered() {
    let (receiver, names) = (Receiver::start().await, Names::new("inflight"));
    // Police take 15 s to answer: longer than the ten redeliveries the events queue allows
    // would take if the redelivered copy went back to the queue each time.
    receiver.slow("/police/WYP-LEEDS", Duration::from_secs(15));
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.webhook_timeout = Duration::from_secs(30);
        s.drain = Duration::from_secs(30);
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.bail.decided",
        &body("court.bail.decided.json"),
        agency("evt-inflight"),
    )
    .await;
    wait_until("police's request held by the receiver", WAIT, || async {
        receiver.arrived("/police/WYP-LEEDS") == 1
    })
    .await;
    assert!(service::close_connection(&names.queue) >= 1);
    wait_until(
        "both notifications delivered",
        Duration::from_secs(60),
        || async { receiver.hooks().iter().filter(|h| h.status == 204).count() == 2 },
    )
    .await;
    // The copy the broker redelivered after the cut waited for the first handling, then was
    // recognised as handled.
    wait_until("the redelivered copy recognised", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_events_duplicate_total",
            &[],
        ) == 1.0
    })
    .await;
    assert_eq!(
        receiver.arrived("/police/WYP-LEEDS"),
        1,
        "police were sent the notification once"
    );
    assert_eq!(ready(&names.rejected).await, 0, "nothing dead-lettered");
    assert_eq!(ready(&names.queue).await, 0);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loose_messages_are_refused_each_with_its_own_reason_and_never_echoed_whole() {
    let (receiver, names) = (Receiver::start().await, Names::new("loose"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    let warrant = body("court.warrant.issued.json");
    let long_key = format!("court.warrant.issued.{}\u{1b}[31mred", "x".repeat(200));
    let forged = {
        let mut h = FieldTable::default();
        h.insert(
            "x-herald-original-user-id".into(),
            AMQPValue::LongString("prison".into()),
        );
        h.insert(
            "X-Herald-Reason".into(),
            AMQPValue::LongString("nothing-to-see".into()),
        );
        h
    };
    let cases: Vec<(String, BasicProperties, &str)> = vec![
        (
            "court.warrant.issued".into(),
            agency("loose-1").with_content_type("text/plain".into()),
            "wrong-content-type",
        ),
        (
            "court.warrant.issued".into(),
            BasicProperties::default()
                .with_message_id("loose-2".into())
                .with_user_id("guest".into()),
            "wrong-content-type",
        ),
        (
            "court.bail.decided".into(),
            agency("loose-3"),
            "routing-key-mismatch",
        ),
        (long_key.clone(), agency("loose-4"), "routing-key-mismatch"),
        (
            "court.warrant.issued".into(),
            BasicProperties::default()
                .with_message_id("loose-5".into())
                .with_headers(forged),
            "unauthorised-publisher",
        ),
    ];
    for (key, props, _) in &cases {
        service::publish(&ch, &names.exchange, key, &warrant, props.clone()).await;
    }
    // Accepted, but counted: published without persistence.
    let mut transient = common::example("court.warrant.issued.json");
    transient["additionalInformation"]["warrantId"] = json!("LEEDSMC-W-2026-000888");
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&transient).unwrap(),
        agency("loose-6").with_delivery_mode(1),
    )
    .await;
    wait_until("five refusals and one delivery", WAIT, || async {
        let m = service::scrape(&herald).await;
        total(&m, "herald_events_rejected_total", &[]) == 5.0 && receiver.hooks().len() == 1
    })
    .await;
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_events_non_persistent_total",
            &["publisher=\"guest\""]
        ),
        1.0
    );
    let parked = service::drain(&ch, &names.rejected).await;
    assert_eq!(parked.len(), 5);
    for (i, (_, _, expected)) in cases.iter().enumerate() {
        let id = format!("loose-{}", i + 1);
        let m = parked
            .iter()
            .find(|m| m.properties.message_id().as_ref().map(|s| s.as_str()) == Some(&id))
            .unwrap_or_else(|| panic!("{id} parked"));
        assert_eq!(reason(m).as_deref(), Some(*expected), "{id}");
        let headers = m.properties.headers().clone().unwrap_or_default();
        for (k, v) in headers.inner() {
            let text = header_text(m.properties.headers(), k.as_str()).unwrap_or_default();
            assert!(
                text.chars().count() <= 300 && !text.contains('\u{1b}'),
                "{id}: header {k} = {v:?}"
            );
        }
    }
    let forged = parked
        .iter()
        .find(|m| m.properties.message_id().as_ref().map(|s| s.as_str()) == Some("loose-5"))
        .unwrap();
    assert_eq!(
        header_text(forged.properties.headers(), "x-herald-original-user-id"),
        None,
        "a publisher cannot name who published it"
    );
    assert!(
        header_text(forged.properties.headers(), "X-Herald-Reason").is_none(),
        "a publisher cannot set Herald's reason"
    );
    let long = parked
        .iter()
        .find(|m| m.properties.message_id().as_ref().map(|s| s.as_str()) == Some("loose-4"))
        .unwrap();
    let key = header_text(long.properties.headers(), "x-herald-original-routing-key").unwrap();
    assert!(key.chars().count() <= 65 && key.ends_with('…'), "{key}");
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_cannot_be_made_to_act_as_a_publisher_named_in_a_header() {
    let (receiver, names) = (Receiver::start().await, Names::new("forged-replay"));
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.*\"");
    let herald = service::start(herald::config::Config::load(&config).unwrap(), &names, None).await;
    let (_conn, ch) = service::channel().await;
    // No user_id, so the broker vouches for no one; the headers claim the prison sent it.
    let mut forged = FieldTable::default();
    forged.insert(
        "x-herald-original-user-id".into(),
        AMQPValue::LongString("prison".into()),
    );
    forged.insert(
        "x-herald-reason".into(),
        AMQPValue::LongString("schema-violation".into()),
    );
    service::publish(
        &ch,
        &names.exchange,
        "prison.prisoner.received",
        &body("prison.prisoner.received.json"),
        BasicProperties::default()
            .with_message_id("evt-forged".into())
            .with_content_type("application/json".into())
            .with_headers(forged),
    )
    .await;
    wait_until("the event refused", WAIT, || async {
        ready(&names.rejected).await == 1
    })
    .await;
    herald.stop().await.unwrap();
    let (ok, out) = service::dlq(&config, &["replay", "rejected", "evt-forged"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("still rejected") && out.contains("user_id"),
        "{out}"
    );
    // The command puts back what it looked at as it ends; the broker counts a returned message
    // as ready a moment later.
    wait_until("it stays parked", WAIT, || async {
        ready(&names.rejected).await == 1
    })
    .await;
    assert_eq!(ready(&names.deliveries()).await, 0);
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_for_someone_no_representative_acts_for_is_counted_not_parked() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("no-authority"),
    );
    let herald = service::start(service::config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    // K7310PX: no one in the directory acts for them; a recall review, so no panel either.
    service::publish(
        &ch,
        &names.exchange,
        "ppud.document.uploaded",
        &body("ppud.document.uploaded--recall.json"),
        agency("evt-no-authority"),
    )
    .await;
    wait_until("the skip counted", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_notifications_total",
            &[
                "route=\"dossier-document-legal-reps\"",
                "outcome=\"no-authorised-recipient\"",
            ],
        ) == 1.0
    })
    .await;
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"failed\""]
        ),
        0.0
    );
    assert!(
        service::drain(&ch, &names.failed).await.is_empty(),
        "nothing parked"
    );
    assert!(smtp.messages().is_empty() && receiver.hooks().is_empty());
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

/// One generated message for the broker: a body, properties and headers of any shape the
/// broker itself accepts from the guest login.
#[derive(Debug, Clone)]
struct Raw {
    routing_key: String,
    body: Vec<u8>,
    props: BasicProperties,
}

fn raw_messages() -> impl proptest::strategy::Strategy<Value = Raw> {
    use proptest::prelude::*;
    let examples: Vec<Vec<u8>> = std::fs::read_dir(common::root().join("schemas/examples/valid"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let count = examples.len();
    let body = prop_oneof![
        (0..count).prop_map({
            let e = examples.clone();
            move |i| e[i].clone()
        }),
        (0..count, any::<prop::sample::Index>(), any::<u8>()).prop_map({
            let e = examples.clone();
            move |(i, at, byte)| {
                let mut b = e[i].clone();
                let at = at.index(b.len());
                b[at] = byte;
                b
            }
        }),
        prop::collection::vec(any::<u8>(), 0..300),
    ];
    let header_value = prop_oneof![
        any::<String>().prop_map(|s| AMQPValue::LongString(LongString::from(s))),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<bool>().prop_map(AMQPValue::Boolean),
        (0usize..40_000).prop_map(|n| AMQPValue::LongString(LongString::from("h".repeat(n)))),
        Just(AMQPValue::LongString("prison".into())),
    ];
    let headers = prop::collection::vec(
        (
            prop_oneof![
                "[a-z-]{1,20}",
                Just("x-herald-original-user-id".to_owned()),
                Just("x-herald-reason".to_owned()),
                Just("x-death".to_owned()),
            ],
            header_value,
        ),
        0..4,
    );
    (
        body,
        prop::option::weighted(0.1, "[a-z.]{1,40}"),
        prop::option::weighted(
            0.95,
            prop_oneof![1 => "[ -~]{0,30}", 9 => "fuzz-[0-9]{1,6}"],
        ),
        prop::bool::weighted(0.95),
        prop::option::weighted(
            0.95,
            prop_oneof![9 => Just("application/json".to_owned()), 1 => "[ -~]{0,30}"],
        ),
        prop::option::of(1u8..=2),
        prop_oneof![3 => Just(Vec::new()), 1 => headers],
    )
        .prop_map(|(body, key, id, signed, content_type, mode, headers)| {
            let event_type = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["eventType"].as_str().map(str::to_owned))
                .filter(|t| !t.is_empty() && t.len() < 200)
                .unwrap_or_else(|| "court.warrant.issued".to_owned());
            let mut props = BasicProperties::default();
            if let Some(id) = id {
                props = props.with_message_id(id.as_str().into());
            }
            if signed {
                props = props.with_user_id("guest".into());
            }
            if let Some(t) = content_type {
                props = props.with_content_type(t.as_str().into());
            }
            if let Some(m) = mode {
                props = props.with_delivery_mode(m);
            }
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(k.as_str().into(), v);
            }
            Raw {
                routing_key: key.unwrap_or(event_type),
                body,
                props: props.with_headers(table),
            }
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn any_message_the_broker_takes_is_routed_or_parked_never_lost() {
    use proptest::strategy::{Strategy, ValueTree};
    const MESSAGES: usize = 150;
    let (receiver, names) = (Receiver::start().await, Names::new("fuzz"));
    let herald = service::start(service::config(&receiver), &names, None).await;
    let (_conn, ch) = service::channel().await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = raw_messages();
    for _ in 0..MESSAGES {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        service::publish(&ch, &names.exchange, &m.routing_key, &m.body, m.props).await;
    }
    wait_until(
        "every message taken and settled",
        Duration::from_secs(60),
        || async {
            let m = service::scrape(&herald).await;
            total(&m, "herald_events_received_total", &[]) == MESSAGES as f64
                && ready(&names.queue).await == 0
        },
    )
    .await;
    let metrics = service::scrape(&herald).await;
    let rejected = total(&metrics, "herald_events_rejected_total", &[]) as u32;
    assert_eq!(
        ready(&names.rejected).await,
        rejected,
        "every refused message is parked"
    );
    let accepted = MESSAGES as u32 - rejected;
    assert!(
        accepted > 0 && rejected > 0,
        "{accepted} accepted, {rejected} refused"
    );
    for m in service::drain(&ch, &names.rejected).await {
        let why = reason(&m).unwrap_or_default();
        assert!(
            herald::intake::Reason::ALL
                .iter()
                .any(|r| r.as_str() == why),
            "a parked message without Herald's reason: {why:?}"
        );
    }
    assert_eq!(total(&metrics, "herald_ready", &[]), 1.0);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_looks_at_a_parked_notification_do_not_lose_it() {
    let (receiver, names) = (Receiver::start().await, Names::new("thirty-looks"));
    receiver.answer("/police/WYP-LEEDS", 410);
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.*\"");
    let herald = service::start(herald::config::Config::load(&config).unwrap(), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-looked-at"),
    )
    .await;
    wait_until("the notification parked", WAIT, || async {
        ready(&names.failed).await == 1
    })
    .await;
    for i in 0..30 {
        let args: &[&str] = if i % 2 == 0 {
            &["list", "failed"]
        } else {
            &["show", "failed", "evt-looked-at"]
        };
        let (ok, out) = service::dlq(&config, args);
        assert!(ok && out.contains("police:WYP-LEEDS"), "look {i}: {out}");
    }
    assert_eq!(ready(&names.failed).await, 1, "still parked after 30 looks");
    receiver.answer("/police/WYP-LEEDS", 204);
    let (ok, out) = service::dlq(&config, &["replay", "failed", "--all"]);
    assert!(ok, "{out}");
    wait_until("the replayed notification delivered", WAIT, || async {
        receiver.hooks().iter().any(|h| h.status == 204)
    })
    .await;
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parking_queues_an_older_herald_declared_are_kept_and_used() {
    let (receiver, names) = (Receiver::start().await, Names::new("older-queues"));
    let (_conn, ch) = service::channel().await;
    // As an older Herald declared them: quorum queues without a delivery limit.
    for queue in [&names.rejected, &names.failed] {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    }
    let herald = service::start(service::config(&receiver), &names, None).await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        b"{\"eventType\": \"court.warr",
        agency("evt-malformed"),
    )
    .await;
    wait_until(
        "the refused event parked in the older queue",
        WAIT,
        || async { ready(&names.rejected).await == 1 },
    )
    .await;
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_goes_to_the_address_routes_toml_gives_now() {
    let (receiver, names) = (Receiver::start().await, Names::new("readdress"));
    receiver.answer("/police/WYP-LEEDS", 410);
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &names, &receiver, "\"court.*\"");
    let herald = service::start(herald::config::Config::load(&config).unwrap(), &names, None).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &body("court.warrant.issued.json"),
        agency("evt-moved"),
    )
    .await;
    wait_until("the webhook parked after 410 Gone", WAIT, || async {
        ready(&names.failed).await == 1
    })
    .await;
    herald.stop().await.unwrap();
    let first = receiver.hooks()[0].id.clone();
    let text = std::fs::read_to_string(&config).unwrap();

    // The recipient is gone from the directory: the replay refuses and the message stays.
    let start = text
        .find("[[recipient]]\nid = \"police:WYP-LEEDS\"")
        .unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let gone = dir.path().join("gone.toml");
    std::fs::write(&gone, format!("{}{}", &text[..start], &text[end + 2..])).unwrap();
    let (ok, out) = service::dlq(&gone, &["replay", "failed", "evt-moved"]);
    assert!(!ok && out.contains("no longer in the directory"), "{out}");
    assert_eq!(ready(&names.failed).await, 1);

    // The endpoint moved and routes.toml says so: the replay goes to the new URL, same key.
    let moved = dir.path().join("moved.toml");
    std::fs::write(
        &moved,
        text.replace("/police/WYP-LEEDS\"", "/police/WYP-LEEDS/v2\""),
    )
    .unwrap();
    let (ok, out) = service::dlq(&moved, &["replay", "failed", "evt-moved"]);
    assert!(
        ok && out.contains("the address routes.toml now gives"),
        "{out}"
    );
    let herald = service::start(herald::config::Config::load(&moved).unwrap(), &names, None).await;
    wait_until("the replay delivered at the new URL", WAIT, || async {
        receiver
            .hooks()
            .iter()
            .any(|h| h.path == "/police/WYP-LEEDS/v2" && h.status == 204)
    })
    .await;
    let moved_hook = receiver
        .hooks()
        .into_iter()
        .find(|h| h.path == "/police/WYP-LEEDS/v2")
        .unwrap();
    assert_eq!(moved_hook.id, first, "the same webhook-id");
    assert_eq!(
        receiver
            .hooks()
            .iter()
            .filter(|h| h.path == "/police/WYP-LEEDS")
            .count(),
        1,
        "nothing more to the old URL"
    );
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

//! Escalation before a deadline is missed, against the real broker, a real SMTP server, the
//! webhook receiver and both ledgers: a notification still undelivered at half its allowed
//! time is escalated once, by email, to a recipient whose class may not see everything, with
//! why; one delivered first is not; two instances on one ledger still escalate once. And the
//! checks `herald check` makes of an `escalate`.

mod common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::ledger::{count, fresh};
use common::service::{self, Mail, Names, Receiver, Smtp, total, wait_until};
use herald::config::{Config, EscalateConfig};
use herald::core::Core;
use herald::ledger::{Backend, Health, Store, Sync};
use herald::serve::Running;
use serde_json::{Value, json};

const ROUTE: &str = "ppo-bail-decision";
const PAROLE_BOARD: &str = "panels@paroleboard.example.gov.uk";

/// The shipped configuration with the bail route due within 20 seconds and escalated at half that time to the Parole Board (judiciary: PPO status and the free
/// text are withheld from it) by email.
fn escalating(receiver: &Receiver) -> Config {
    let mut config = service::config(receiver);
    let route = config.routes.iter_mut().find(|r| r.name == ROUTE).unwrap();
    route.sla = Some("within 20s".into());
    route.escalate = Some(EscalateConfig {
        at: "50%".into(),
        to: vec!["judiciary:PAROLE-BOARD".into()],
        channels: vec!["email".into()],
        template: "escalation".into(),
    });
    config
}

async fn start(receiver: &Receiver, names: &Names, smtp: &Smtp, url: &str, me: &str) -> Running {
    let (url, me) = (url.to_owned(), me.to_owned());
    service::start_with(escalating(receiver), names, Some(smtp), move |s| {
        s.ledger_url = url;
        s.instance = me;
        s.escalation_tick = Duration::from_millis(500);
        // Three quick attempts, then a wait past the deadline: the notification is still
        // retrying when its escalation is due, its last failure the recipient's own 503.
        s.retry_schedule = vec![
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(25),
        ];
        s.circuit_failures = 10;
    })
    .await
}

/// A bail decision about a PPO of `bcu`, happening now.
fn bail(bcu: &str) -> (Value, DateTime<Utc>) {
    let now = Utc::now();
    let at = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut doc = common::example("court.bail.decided.json");
    doc["occurredAt"] = json!(at);
    doc["publishedAt"] = json!(at);
    doc["additionalInformation"]["offender"]["homeBcu"] = json!(bcu);
    (doc, now)
}

fn escalations(smtp: &Smtp) -> Vec<Mail> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.to.iter().any(|a| a.contains(PAROLE_BOARD)))
        .collect()
}

/// What the Parole Board's escalation says, and what it must not.
fn check_escalation(mail: &Mail) {
    assert!(
        mail.subject
            .starts_with("Not yet delivered: court.bail.decided to West Yorkshire Police, Leeds"),
        "{}",
        mail.subject
    );
    assert!(mail.message_id.contains("esc_"), "{}", mail.message_id);
    let text = &mail.text;
    for said in [
        "Dear Parole Board panel office,",
        "has not been delivered",
        "failed and is being retried (retrying)",
        "Last failure:           http-retryable: HTTP 503",
        "Not yet told:           West Yorkshire Police, Leeds district PPO team (police:WYP-LEEDS)",
        "Channel tried:          webhook",
        "within 20s",
        "Daniel Kershaw",
    ] {
        assert!(
            text.contains(said),
            "the escalation should say {said:?}:\n{text}"
        );
    }
    // Withheld from the judiciary: PPO status, and the publisher's free text.
    for withheld in ["PPO:", "Conditional bail granted"] {
        assert!(
            !text.contains(withheld) && !mail.html.contains(withheld),
            "the escalation shows {withheld:?} to the judiciary:\n{text}"
        );
    }
    assert!(mail.html.contains("HTTP 503"), "{}", mail.html);
}

async fn open(url: &str) -> Store {
    Store::open(url, Sync::Normal, Health::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_notification_is_escalated_once_and_a_delivered_one_is_not() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("escalate-once"),
    );
    let url = fresh(common::ledger::default_backend()).await;
    receiver.answer("/police/WYP-LEEDS", 503);
    // Bradford's first attempt fails, its retry a second later succeeds.
    receiver.fail("/police/WYP-BRADFORD", 503, 1);
    let herald = start(&receiver, &names, &smtp, &url, "escalate-a").await;
    let (_conn, ch) = service::channel().await;
    let store = open(&url).await;

    let (leeds, occurred) = bail("WYP-LEEDS");
    service::publish_recorded(&ch, &names.exchange, &store, &leeds, "esc-leeds").await;
    let (bradford, _) = bail("WYP-BRADFORD");
    service::publish_recorded(&ch, &names.exchange, &store, &bradford, "esc-bradford").await;
    // Both escalations are recorded with their events (Leeds failed; Bradford failed once).
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM escalations WHERE data IS NOT NULL"
        )
        .await,
        2
    );

    wait_until("the escalation email", Duration::from_secs(40), || async {
        !escalations(&smtp).is_empty()
    })
    .await;
    let seen = Utc::now();
    let due = occurred + chrono::Duration::seconds(10);
    assert!(
        seen >= due,
        "escalated at {seen}, before it was due at {due}"
    );
    assert!(
        seen <= due + chrono::Duration::seconds(5),
        "escalated at {seen}, long after it was due at {due}"
    );
    let mails = escalations(&smtp);
    assert_eq!(mails.len(), 1);
    check_escalation(&mails[0]);

    // Bradford's notification was delivered before its escalation was due.
    wait_until(
        "Bradford's escalation not needed",
        Duration::from_secs(20),
        || async {
            count(
                &store,
                "SELECT COUNT(*) FROM escalations WHERE state = 'not_needed' AND data IS NULL",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM escalations WHERE state = 'sent' AND data IS NULL \
             AND recipient = 'judiciary:PAROLE-BOARD' AND channel = 'email' AND attempts = 1",
        )
        .await,
        1
    );
    // The escalation is a notification of its event, with its attempt: in the event's story.
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             JOIN attempts a ON a.notification_key = n.key \
             WHERE n.key LIKE 'esc_%' AND n.status = 'delivered' AND e.message_id = 'esc-leeds' \
             AND n.recipient = 'judiciary:PAROLE-BOARD' AND a.outcome = 'delivered'",
        )
        .await,
        1
    );

    // Past the deadline, with Leeds still failing: still told once.
    let after = occurred + chrono::Duration::seconds(24);
    wait_until("the deadline to pass", Duration::from_secs(30), || async {
        Utc::now() >= after
    })
    .await;
    assert_eq!(
        escalations(&smtp).len(),
        1,
        "the escalation went more than once"
    );
    let metrics = service::scrape(&herald).await;
    let route = format!("route=\"{ROUTE}\"");
    assert_eq!(
        total(
            &metrics,
            "herald_escalations_total",
            &[&route, "outcome=\"sent\""]
        ),
        1.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_escalations_total",
            &[&route, "outcome=\"not_needed\""]
        ),
        1.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_escalations_total",
            &[&route, "outcome=\"failed\""]
        ),
        0.0
    );

    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_ledger_escalate_once() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("escalate-two"),
    );
    // Several instances share a ledger on PostgreSQL.
    let url = fresh(Backend::Postgres).await;
    receiver.answer("/police/WYP-LEEDS", 503);
    let one = start(&receiver, &names, &smtp, &url, "escalate-one").await;
    let two = start(&receiver, &names, &smtp, &url, "escalate-two").await;
    let (_conn, ch) = service::channel().await;
    let store = open(&url).await;

    let (leeds, occurred) = bail("WYP-LEEDS");
    service::publish_recorded(&ch, &names.exchange, &store, &leeds, "esc-two-leeds").await;
    wait_until("the escalation email", Duration::from_secs(40), || async {
        !escalations(&smtp).is_empty()
    })
    .await;
    // Every tick of both instances until past the deadline.
    let after = occurred + chrono::Duration::seconds(22);
    wait_until("the deadline to pass", Duration::from_secs(30), || async {
        Utc::now() >= after
    })
    .await;
    let mails = escalations(&smtp);
    assert_eq!(
        mails.len(),
        1,
        "two instances sent the escalation more than once"
    );
    check_escalation(&mails[0]);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM escalations WHERE state = 'sent'"
        )
        .await,
        1
    );
    let route = format!("route=\"{ROUTE}\"");
    let mut sent = 0.0;
    for herald in [&one, &two] {
        let metrics = service::scrape(herald).await;
        sent += total(
            &metrics,
            "herald_escalations_total",
            &[&route, "outcome=\"sent\""],
        );
    }
    assert_eq!(sent, 1.0);

    one.stop().await.unwrap();
    two.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

/// A change made to the escalating route.
type Change = fn(&mut herald::config::RouteConfig);

/// `herald check`'s words for a configuration, or nothing.
fn problems(config: Config) -> Vec<String> {
    match Core::from_config(config, &common::root().join("routes.toml")) {
        Ok(core) => core.check().errors,
        Err(errors) => errors,
    }
}

#[tokio::test]
async fn check_renders_every_escalation_and_names_what_is_wrong() {
    let receiver = Receiver::start().await;
    assert_eq!(problems(escalating(&receiver)), Vec::<String>::new());

    let cases: [(&str, Change, &str); 7] = [
        (
            "no sla",
            |r| r.sla = None,
            "route ppo-bail-decision: escalate: the route has no sla",
        ),
        (
            "a share out of range",
            |r| r.escalate.as_mut().unwrap().at = "100%".into(),
            "escalate.at: \"100%\" is not a share from 1% to 99%",
        ),
        (
            "a recipient not in the directory",
            |r| r.escalate.as_mut().unwrap().to = vec!["police:WYP-CONTROL-ROOM".into()],
            "escalate.to: recipient \"police:WYP-CONTROL-ROOM\" is not in the directory",
        ),
        (
            "a channel the recipient lacks",
            |r| {
                let e = r.escalate.as_mut().unwrap();
                e.to = vec!["court-listing:LEEDSMC".into()];
                e.channels = vec!["webhook".into()];
            },
            "escalate.to: \"court-listing:LEEDSMC\" has none of escalate.channels (webhook)",
        ),
        (
            "a field no event of the route has",
            |r| r.escalate.as_mut().unwrap().to = vec!["police:{offender.homeBCU}".into()],
            "escalate.to: \"police:{offender.homeBCU}\": offender.homeBCU is not a field",
        ),
        (
            "a legal representative",
            |r| r.escalate.as_mut().unwrap().to = vec!["legal-rep:SMITH-AND-CO".into()],
            "escalate.to: \"legal-rep:SMITH-AND-CO\" is a legal representative",
        ),
        (
            "a template folder that does not exist",
            |r| r.escalate.as_mut().unwrap().template = "escalation-missing".into(),
            "escalate.template: \"escalation-missing\" has no folder under templates/",
        ),
    ];
    for (what, change, want) in cases {
        let mut config = escalating(&receiver);
        change(config.routes.iter_mut().find(|r| r.name == ROUTE).unwrap());
        let found = problems(config);
        assert!(
            found.iter().any(|p| p.contains(want)),
            "{what}: expected {want:?} in {found:#?}"
        );
    }

    // Read from routes.toml as an operator writes it.
    let text = "[[route]]\nname = \"r\"\nevents = [\"court.bail.decided\"]\nto = [\"police:WYP-LEEDS\"]\n\
                template = \"bail-decided\"\nsla = \"within 24h\"\n\
                escalate = { at = \"2h before\", to = [\"judiciary:PAROLE-BOARD\"] }\n";
    let config = Config::parse(text).unwrap();
    let escalate = config.routes[0].escalate.as_ref().unwrap();
    assert_eq!(escalate.channels, ["email"]);
    assert_eq!(escalate.template, "escalation");
    let wrong = Config::parse(&text.replace("at = ", "when = ")).unwrap_err();
    assert!(
        wrong.to_string().contains("unknown field `when`"),
        "{wrong}"
    );
}

/// An event with two notifications, one delivered and one retrying, each with an escalation
/// due now, as the handler writes them: in one commit.
async fn escalations_written(ledger: &herald::ledger::Ledger, message_id: &str) -> [String; 2] {
    use herald::ledger::{
        AttemptRecord, EscalationRecord, EventOutcome, EventRecord, NotificationRecord, Status,
        Update,
    };
    let now = Utc::now();
    let event = EventRecord {
        publisher: "court".into(),
        message_id: message_id.into(),
        event_type: "court.bail.decided".into(),
        version: Some(1),
        occurred_at: Some(now),
        received_at: now,
        persons: vec!["NOMS:A1234BC".into()],
        outcome: EventOutcome::Routed,
        reason: None,
        custody: None,
    };
    let keys = [format!("msg_{message_id}_0"), format!("msg_{message_id}_1")];
    let made = keys
        .iter()
        .map(|key| NotificationRecord {
            key: key.clone(),
            route: ROUTE.into(),
            recipient: "police:WYP-LEEDS".into(),
            channel: "webhook".into(),
            sla_rule: Some("within 20s".into()),
            deadline: Some(now + chrono::Duration::seconds(20)),
            status: Status::Pending,
            reason: None,
        })
        .collect();
    let ended = |key: &str, status: Status| Update {
        key: key.into(),
        status,
        reason: (status != Status::Delivered).then(|| "HTTP 503".into()),
        attempts: 1,
        first_failure_at: (status != Status::Delivered).then_some(now),
        delivered_at: (status == Status::Delivered).then_some(now),
        sla_outcome: None,
        sent_hash: None,
        attempt: Some(AttemptRecord {
            at: now,
            duration: Duration::from_millis(2),
            outcome: if status == Status::Delivered {
                "delivered"
            } else {
                "http-retryable"
            },
            code: Some(503),
            breaker: "closed",
        }),
    };
    let escalations = keys
        .iter()
        .map(|key| EscalationRecord {
            key: format!("esc_{key}"),
            notification_key: key.clone(),
            route: ROUTE.into(),
            recipient: "judiciary:PAROLE-BOARD".into(),
            recipient_class: "judiciary".into(),
            channel: "email".into(),
            rule: "50%".into(),
            template: "escalation".into(),
            due_at: now,
            data: "{\"info\":{}}".into(),
        })
        .collect();
    ledger
        .handled_escalating(
            event,
            made,
            vec![
                ended(&keys[0], Status::Delivered),
                ended(&keys[1], Status::Retrying),
            ],
            None,
            escalations,
        )
        .await
        .unwrap();
    keys.map(|k| format!("esc_{k}"))
}

/// The ledger's side on each backend: escalations written with their event, one whose
/// notification was delivered marked not needed, a claim exactly one of two instances wins,
/// one held by an instance that is gone taken back, and an outcome recorded as a notification
/// of the event with its data cleared.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_claims_each_escalation_once_and_takes_back_what_a_gone_instance_held() {
    use herald::ledger::{AttemptRecord, EscalationEnd, EscalationState, Status};
    for backend in common::ledger::BOTH {
        let url = fresh(backend).await;
        let store = open(&url).await;
        let ledger = herald::ledger::Ledger::start(store.clone(), herald::metrics::Metrics::new());
        let [not_needed, due] = escalations_written(&ledger, "esc-store-1").await;
        // Written once: the same event handled again adds nothing.
        escalations_written(&ledger, "esc-store-1").await;
        assert_eq!(count(&store, "SELECT COUNT(*) FROM escalations").await, 2);

        let now = Utc::now();
        assert_eq!(
            store.escalations_not_needed(now).await.unwrap(),
            [ROUTE],
            "{backend:?}"
        );
        let state = |key: &str| {
            format!("SELECT COUNT(*) FROM escalations WHERE key = '{key}' AND state = ")
        };
        assert_eq!(
            count(
                &store,
                &format!("{}'not_needed' AND data IS NULL", state(&not_needed))
            )
            .await,
            1
        );
        assert_eq!(
            store.escalations_due(now, 10).await.unwrap(),
            [due.as_str()]
        );

        // Two instances claim it at once: one wins.
        let (a, b) = tokio::join!(
            store.claim_escalation(&due, "instance-a", now),
            store.claim_escalation(&due, "instance-b", now)
        );
        let won = [a.unwrap(), b.unwrap()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "{backend:?}: {won:?}"
        );
        assert!(store.escalations_due(now, 10).await.unwrap().is_empty());

        // Its instance never said it was alive (it is gone): taken back, its data kept.
        let later = Utc::now();
        assert_eq!(
            store
                .escalations_taken_back(
                    later - chrono::Duration::seconds(10),
                    later - chrono::Duration::minutes(10),
                    later
                )
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            count(
                &store,
                &format!("{}'waiting' AND data IS NOT NULL", state(&due))
            )
            .await,
            1
        );

        // Claimed again, read with why, sent.
        assert!(
            store
                .claim_escalation(&due, "instance-c", later)
                .await
                .unwrap()
        );
        let row = store.escalation(&due).await.unwrap().unwrap();
        assert_eq!(row.status, Some(Status::Retrying));
        assert_eq!(row.reason.as_deref(), Some("HTTP 503"));
        assert_eq!(row.last_outcome.as_deref(), Some("http-retryable"));
        assert_eq!(row.notification_attempts, 1);
        assert!(row.deadline.is_some() && row.data.is_some());
        let end = EscalationEnd {
            key: due.clone(),
            instance: "instance-c".into(),
            state: EscalationState::Sent,
            next: None,
            attempts: Some(1),
            reason: None,
            now: later,
            sent: Some((
                Status::Delivered,
                AttemptRecord {
                    at: later,
                    duration: Duration::from_millis(5),
                    outcome: "delivered",
                    code: None,
                    breaker: "closed",
                },
            )),
        };
        // Another instance's outcome is not taken: the claim is instance-c's.
        let stranger = EscalationEnd {
            instance: "instance-d".into(),
            sent: None,
            ..end.clone()
        };
        assert!(!store.escalation_ended(&stranger).await.unwrap());
        assert!(store.escalation_ended(&end).await.unwrap());
        assert_eq!(
            count(
                &store,
                &format!("{}'sent' AND data IS NULL AND attempts = 1", state(&due))
            )
            .await,
            1
        );
        assert_eq!(
            count(
                &store,
                &format!(
                    "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
                     JOIN attempts a ON a.notification_key = n.key WHERE n.key = '{due}' \
                     AND n.status = 'delivered' AND e.message_id = 'esc-store-1'"
                )
            )
            .await,
            1,
            "{backend:?}"
        );
    }
}

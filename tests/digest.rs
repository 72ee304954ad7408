//! The weekly digests against the real broker, a real SMTP server and the ledger, with a clock
//! the test moves: a week of custody events makes the three JTrack digests with exactly the
//! right people; two instances on one ledger send each digest once; a digest whose time
//! passed while Herald was stopped goes out late when it is back.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::ledger::{count, fresh};
use common::service::{self, Mail, Names, Receiver, Smtp, total, wait_until};
use herald::ledger::{Backend, Health, Store, Sync};
use herald::serve::Running;
use herald::serve::digest::Clock;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const LEEDS: &str = "ppo.leeds@westyorkshire.police.example.uk";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A clock the test sets.
#[derive(Clone)]
struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    fn new(s: &str) -> TestClock {
        TestClock(Arc::new(Mutex::new(at(s))))
    }

    fn set(&self, s: &str) {
        *self.0.lock().unwrap() = at(s);
    }

    fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Clock::new(move || *now.lock().unwrap())
    }
}

async fn start(
    receiver: &Receiver,
    names: &Names,
    smtp: &Smtp,
    url: &str,
    clock: &TestClock,
) -> Running {
    let (url, clock) = (url.to_owned(), clock.clock());
    // The test publishes the court's hearings too.
    let mut config = service::config_with_digests(receiver);
    config
        .publishers
        .get_mut("guest")
        .unwrap()
        .push("court.hearing.concluded".into());
    service::start_with(config, names, Some(smtp), move |s| {
        s.ledger_url = url;
        s.clock = clock;
        s.digest_tick = Duration::from_millis(200);
    })
    .await
}

/// A custody event about one person (known by NOMS number only), happened at `occurred`.
fn custody(name: &str, noms: &str, occurred: &str, bcu: &str, ppo: bool) -> Value {
    let mut doc = common::example(name);
    doc["occurredAt"] = json!(occurred);
    doc["publishedAt"] = json!(occurred);
    doc["personReference"]["identifiers"] = json!([{"type": "NOMS", "value": noms}]);
    doc["additionalInformation"]["offender"]["ppo"] = json!(ppo);
    doc["additionalInformation"]["offender"]["homeBcu"] = json!(bcu);
    doc
}

/// The emails to Leeds police whose subject starts with `title`.
fn to_leeds(smtp: &Smtp, title: &str) -> Vec<Mail> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.to.iter().any(|a| a.contains(LEEDS)) && m.subject.contains(title))
        .collect()
}

/// The NOMS numbers an email names.
fn named(mail: &Mail) -> BTreeSet<String> {
    let re = regex::Regex::new(r"NOMS:[A-Z][0-9]{4}[A-Z]{2}").unwrap();
    re.find_iter(&mail.text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const IN_PRISON: &str = "PPOs in prison, WYP-LEEDS";
const CHANGED: &str = "PPOs whose prison details changed this week, WYP-LEEDS";
const UNFINALISED: &str = "PPOs in custody with offences not finalised, WYP-LEEDS";

#[tokio::test(flavor = "multi_thread")]
async fn a_week_of_events_makes_the_three_digests_with_exactly_the_right_people() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("digest-week"),
    );
    let url = fresh(Backend::Sqlite).await;
    // Monday 23 November, just after 07:00: the week's digests go at once, and the register
    // holds no one yet.
    let clock = TestClock::new("2026-11-23T07:00:30Z");
    let herald = start(&receiver, &names, &smtp, &url, &clock).await;
    let (_conn, ch) = service::channel().await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    wait_until("the first week's three digests", WAIT, || async {
        to_leeds(&smtp, "WYP-LEEDS").len() == 3
    })
    .await;
    for title in [IN_PRISON, CHANGED, UNFINALISED] {
        let mails = to_leeds(&smtp, title);
        assert_eq!(mails.len(), 1, "{title}");
        assert!(
            mails[0].subject.ends_with(": none this week"),
            "{}",
            mails[0].subject
        );
        assert!(
            mails[0].text.contains("None this week."),
            "{}",
            mails[0].text
        );
    }

    let received = "prison.prisoner.received.json";
    let events = [
        // In prison since before the week, nothing changed.
        custody(
            received,
            "A1111AA",
            "2026-11-02T10:00:00Z",
            "WYP-LEEDS",
            true,
        ),
        // In prison; release scheduled this week.
        custody(
            received,
            "B2222BB",
            "2026-11-02T10:00:00Z",
            "WYP-LEEDS",
            true,
        ),
        custody(
            "prison.release.scheduled.json",
            "B2222BB",
            "2026-11-25T10:00:00Z",
            "WYP-LEEDS",
            true,
        ),
        // Released this week.
        custody(
            received,
            "C3333CC",
            "2026-11-02T10:00:00Z",
            "WYP-LEEDS",
            true,
        ),
        {
            let mut d = custody(
                "prison.prisoner.released.json",
                "C3333CC",
                "2026-11-26T10:00:00Z",
                "WYP-LEEDS",
                true,
            );
            d["additionalInformation"]["releasedAt"] = json!("2026-11-26T09:30:00Z");
            d
        },
        // Received this week, and a hearing left an offence open.
        custody(
            received,
            "D4444DD",
            "2026-11-24T10:00:00Z",
            "WYP-LEEDS",
            true,
        ),
        {
            let mut d = custody(
                "court.hearing.concluded--v2.json",
                "D4444DD",
                "2026-11-27T15:00:00Z",
                "WYP-LEEDS",
                true,
            );
            let outcomes = d["additionalInformation"]["outcomes"]
                .as_array_mut()
                .unwrap();
            outcomes[0]["finalised"] = json!(false);
            d
        },
        // Not a PPO; and a PPO of another area.
        custody(
            received,
            "E5555EE",
            "2026-11-24T10:00:00Z",
            "WYP-LEEDS",
            false,
        ),
        custody(
            received,
            "F6666FF",
            "2026-11-24T10:00:00Z",
            "WYP-BRADFORD",
            true,
        ),
        // Happens after the digest's time: not in it.
        custody(
            received,
            "G7777GG",
            "2026-11-30T08:00:00Z",
            "WYP-LEEDS",
            true,
        ),
    ];
    for (i, doc) in events.iter().enumerate() {
        service::publish_recorded(
            &ch,
            &names.exchange,
            &store,
            doc,
            &format!("digest-week-{i}"),
        )
        .await;
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM custody").await,
        events.len() as i64,
        "every event accepted and in the register"
    );

    // Monday 30 November, 07:00:30: the digests of the week.
    clock.set("2026-11-30T07:00:30Z");
    wait_until("the second week's three digests", WAIT, || async {
        to_leeds(&smtp, "WYP-LEEDS").len() == 6
    })
    .await;
    let latest = |title: &str| {
        let mails = to_leeds(&smtp, title);
        assert_eq!(mails.len(), 2, "{title}: one a week");
        mails
            .into_iter()
            .find(|m| !m.subject.ends_with("none this week"))
            .unwrap_or_else(|| panic!("{title}: the second week names people"))
    };
    let in_prison = latest(IN_PRISON);
    assert_eq!(in_prison.subject, format!("{IN_PRISON}: 3"));
    assert_eq!(
        named(&in_prison),
        set(&["NOMS:A1111AA", "NOMS:B2222BB", "NOMS:D4444DD"])
    );
    let changed = latest(CHANGED);
    assert_eq!(
        named(&changed),
        set(&["NOMS:B2222BB", "NOMS:C3333CC", "NOMS:D4444DD"])
    );
    assert!(changed.text.contains("A week before:"), "{}", changed.text);
    let unfinalised = latest(UNFINALISED);
    assert_eq!(named(&unfinalised), set(&["NOMS:D4444DD"]));
    // On time: not marked late, and the ledger says the deadline was met.
    assert!(!in_prison.subject.contains("LATE"));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE e.message_id = 'digest:jtrack-leeds-in-prison@2026-11-30T07:00:00Z' \
             AND n.status = 'delivered' AND n.sla_outcome = 'met'"
        )
        .await,
        1
    );

    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_send_each_digest_once() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("digest-twice"),
    );
    let url = fresh(Backend::Postgres).await;
    let clock = TestClock::new("2026-11-30T07:00:30Z");
    let one = start(&receiver, &names, &smtp, &url, &clock).await;
    let two = start(&receiver, &names, &smtp, &url, &clock).await;
    let subscriptions = 9.0;
    // Each instance has looked at every subscription's digest (once: it does not ask again).
    for herald in [&one, &two] {
        wait_until("both instances looked", WAIT, || async {
            total(
                &service::scrape(herald).await,
                "herald_digest_claims_total",
                &[],
            ) == subscriptions
        })
        .await;
    }
    let claimed = |m: &std::collections::BTreeMap<String, f64>| {
        total(m, "herald_digest_claims_total", &["result=\"claimed\""])
    };
    let (m1, m2) = (service::scrape(&one).await, service::scrape(&two).await);
    assert_eq!(claimed(&m1) + claimed(&m2), subscriptions);
    wait_until("every digest delivered", WAIT, || async {
        smtp.messages().len() >= 9
    })
    .await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    wait_until("every digest recorded delivered", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'delivered'",
        )
        .await
            == 9
    })
    .await;
    assert_eq!(smtp.messages().len(), 9, "each digest once");
    assert_eq!(to_leeds(&smtp, "WYP-LEEDS").len(), 3);
    one.stop().await.unwrap();
    two.stop().await.unwrap();
    store.close().await;
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_missed_while_stopped_goes_late_on_restart() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("digest-late"),
    );
    let url = fresh(Backend::Sqlite).await;
    let clock = TestClock::new("2026-11-23T07:10:00Z");
    let herald = start(&receiver, &names, &smtp, &url, &clock).await;
    wait_until("the week's digests, on time", WAIT, || async {
        to_leeds(&smtp, "WYP-LEEDS").len() == 3
    })
    .await;
    herald.stop().await.unwrap();
    assert!(
        to_leeds(&smtp, "WYP-LEEDS")
            .iter()
            .all(|m| !m.subject.contains("LATE"))
    );

    // Stopped over Monday 30 November 07:00; back at 09:30.
    clock.set("2026-11-30T09:30:00Z");
    let herald = start(&receiver, &names, &smtp, &url, &clock).await;
    wait_until("the missed digests", WAIT, || async {
        to_leeds(&smtp, "WYP-LEEDS").len() == 6
    })
    .await;
    let late: Vec<Mail> = to_leeds(&smtp, "[LATE]");
    assert_eq!(late.len(), 3, "the three missed digests, marked late");
    assert!(late[0].text.contains("is sent late"), "{}", late[0].text);
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    wait_until("the late digests recorded", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE e.message_id LIKE 'digest:jtrack-leeds-%@2026-11-30T07:00:00Z' \
             AND n.status = 'delivered' AND n.sla_outcome = 'breached'",
        )
        .await
            == 3
    })
    .await;
    // The first week's are not sent again.
    assert_eq!(to_leeds(&smtp, "WYP-LEEDS").len(), 6);
    herald.stop().await.unwrap();
    store.close().await;
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

/// `herald digest preview` and `send` on a ledger that holds one PPO received into HMP Leeds.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_previews_a_digest_and_sends_one_now() {
    use herald::ledger::{EventOutcome, Ledger};
    use herald::metrics::Metrics;
    let smtp = Smtp::start();
    let url = fresh(Backend::Sqlite).await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    let ledger = Ledger::start(store.clone(), Metrics::new());
    let doc = custody(
        "prison.prisoner.received.json",
        "H8888HH",
        "2026-11-24T10:00:00Z",
        "WYP-LEEDS",
        true,
    );
    let event = common::accept(&doc);
    let record = herald::serve::rows::event_record(&event, EventOutcome::Routed, Utc::now());
    ledger
        .handled(record, Vec::new(), Vec::new(), None)
        .await
        .unwrap();
    drop(ledger);
    let herald = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(common::root())
            .env("HERALD_LEDGER_URL", &url)
            .env("HERALD_SMTP_URL", smtp.url())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The digest due on Monday 30 November, as it stood then.
    let (code, out, err) = herald(&[
        "digest",
        "preview",
        "jtrack-leeds-in-prison",
        "--as-of",
        "2026-12-01",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    for part in [
        "digest jtrack-leeds-in-prison: PPOs in prison (in-prison), due 2026-11-30T07:00:00Z; 1 person",
        "--- to police:WYP-LEEDS (ppo.leeds@westyorkshire.police.example.uk) ---",
        "Subject: PPOs in prison, WYP-LEEDS: 1",
        "NOMS:H8888HH",
        "HMP Leeds (LEI)",
    ] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
    assert!(smtp.messages().is_empty(), "a preview sends nothing");
    // A week earlier, no one.
    let (_, out, _) = herald(&[
        "digest",
        "preview",
        "jtrack-leeds-in-prison",
        "--as-of",
        "2026-11-24",
    ]);
    assert!(out.contains("; 0 people"), "{out}");
    assert!(out.contains("None this week."), "{out}");
    // A name routes.toml does not have.
    let (code, _, err) = herald(&["digest", "preview", "jtrack-leeds"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no subscription named jtrack-leeds"), "{err}");
    assert!(err.contains("jtrack-leeds-in-prison"), "{err}");

    // Sent now: one email, recorded delivered.
    let (code, out, err) = herald(&["digest", "send", "jtrack-leeds-in-prison"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("delivered to 1 of 1 recipient(s)"), "{out}");
    wait_until("the digest email", WAIT, || async {
        smtp.messages().len() == 1
    })
    .await;
    let mail = &smtp.messages()[0];
    assert_eq!(mail.subject, "PPOs in prison, WYP-LEEDS: 1");
    assert_eq!(named(mail), set(&["NOMS:H8888HH"]));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE e.message_id LIKE 'digest:jtrack-leeds-in-prison@%' AND n.status = 'delivered'"
        )
        .await,
        1
    );

    // With no SMTP server to take it: not delivered, said so, and left retrying in the ledger
    // for the service.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["digest", "send", "jtrack-leeds-in-prison"])
        .current_dir(common::root())
        .env("HERALD_LEDGER_URL", &url)
        .env(
            "HERALD_SMTP_URL",
            format!("smtp://127.0.0.1:{}", service::free_port()),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("delivered to 0 of 1 recipient(s)"), "{said}");
    assert!(
        said.contains("tried again by a running `herald serve`"),
        "{said}"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE e.message_id LIKE 'digest:jtrack-leeds-in-prison@%' AND n.status = 'retrying'"
        )
        .await,
        1
    );
    store.close().await;
}

/// A digest the SMTP server could not take is tried again on the retry schedule, and goes
/// once the server is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_that_fails_is_tried_again_until_it_goes() {
    let receiver = Receiver::start().await;
    let names = Names::new("digest-retry");
    let (port, maildir) = Smtp::reserve();
    let url = fresh(Backend::Sqlite).await;
    let herald_url = url.clone();
    let clock = TestClock::new("2026-11-30T07:00:30Z").clock();
    let mut config = service::config_with_digests(&receiver);
    config.email.url = None;
    let herald = service::start_with(config, &names, None, move |s| {
        s.ledger_url = herald_url;
        s.clock = clock;
        s.digest_tick = Duration::from_millis(200);
        s.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        s.retry_schedule = vec![Duration::from_secs(1); 30];
        s.circuit_failures = 1000;
    })
    .await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    let with_status = |status: &'static str| {
        let store = &store;
        async move {
            count(
                store,
                &format!("SELECT COUNT(*) FROM notifications WHERE status = '{status}'"),
            )
            .await
        }
    };
    wait_until(
        "every digest failing and waiting for a retry",
        WAIT,
        || async { with_status("retrying").await == 9 },
    )
    .await;
    let smtp = Smtp::start_on(port, maildir);
    wait_until("every digest delivered", WAIT, || async {
        with_status("delivered").await == 9
    })
    .await;
    assert_eq!(smtp.messages().len(), 9, "each digest once");
    assert!(
        count(
            &store,
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'smtp-connect'"
        )
        .await
            >= 9
    );
    herald.stop().await.unwrap();
    store.close().await;
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

/// A subscription new to the ledger does not send, late, the digest due before it was set up:
/// its first is the next one, on time.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_subscription_starts_with_the_next_digest() {
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("digest-new"),
    );
    let url = fresh(Backend::Sqlite).await;
    // Monday 30 November at 09:30: that morning's digests were due at 07:00.
    let clock = TestClock::new("2026-11-30T09:30:00Z");
    let herald = start(&receiver, &names, &smtp, &url, &clock).await;
    wait_until("every subscription passed over", WAIT, || async {
        total(
            &service::scrape(&herald).await,
            "herald_digest_claims_total",
            &["result=\"passed-over\""],
        ) == 9.0
    })
    .await;
    assert!(smtp.messages().is_empty(), "nothing sent late");
    clock.set("2026-12-07T07:00:30Z");
    wait_until("the next week's digests, on time", WAIT, || async {
        smtp.messages().len() == 9
    })
    .await;
    assert!(smtp.messages().iter().all(|m| !m.subject.contains("LATE")));
    herald.stop().await.unwrap();
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

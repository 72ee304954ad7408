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
use common::service::{self, Mail, Names, Receiver, Smtp, agency, total, wait_until};
use herald::ledger::{Backend, Health, Store, Sync};
use herald::serve::Running;
use herald::serve::digest::Clock;
use lapin::Channel;
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
    service::start_with(service::config(receiver), names, Some(smtp), move |s| {
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

async fn publish(ch: &Channel, names: &Names, store: &Store, doc: &Value, id: &str) {
    service::publish(
        ch,
        &names.exchange,
        doc["eventType"].as_str().unwrap(),
        &serde_json::to_vec(doc).unwrap(),
        agency(id),
    )
    .await;
    let sql = format!("SELECT COUNT(*) FROM events WHERE message_id = '{id}'");
    wait_until(&format!("{id} in the ledger"), WAIT, || async {
        count(store, &sql).await >= 1
    })
    .await;
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
        publish(&ch, &names, &store, doc, &format!("digest-week-{i}")).await;
    }

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
    // Each instance has looked at every subscription at least twice.
    for herald in [&one, &two] {
        wait_until("both instances looked twice", WAIT, || async {
            total(
                &service::scrape(herald).await,
                "herald_digest_claims_total",
                &[],
            ) >= 2.0 * subscriptions
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

//! A recipient's `contact` hears of its dead webhook endpoint, against the real broker, SMTP
//! server, HTTP receiver and ledger: one email when it is disabled (410 Gone) or unreachable
//! (its circuit open longer than `contact_after`), one when it works again, however many
//! instances share the ledger; meanwhile its notifications go by the route's email, once.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::service::{self, Names, Receiver, Smtp, agency, total, wait_until};
use herald::config::Config;
use herald::ledger::{Backend, Health, Notice, Store, Sync};
use herald::notification::Standing;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const POLICE: &str = "police:WYP-LEEDS";
const HOOK: &str = "/police/WYP-LEEDS";
const CONTACT: &str = "webhooks@westyorkshire.police.example.uk";
const PPO_TEAM: &str = "ppo.leeds@westyorkshire.police.example.uk";

/// The shipped configuration with a contact for the Leeds police webhook.
fn config(receiver: &Receiver) -> Config {
    let mut config = service::config(receiver);
    let police = config
        .recipients
        .iter_mut()
        .find(|r| r.id == POLICE)
        .expect("the shipped directory has Leeds police");
    police.contact = Some(CONTACT.into());
    config
}

/// A bail decision with its own text (one email and one webhook to Leeds police, the same to
/// Leeds probation).
fn bail(i: usize) -> Vec<u8> {
    let mut doc = common::example("court.bail.decided.json");
    doc["description"] = json!(format!("bail decision {i}"));
    serde_json::to_vec(&doc).unwrap()
}

async fn publish_bail(ch: &lapin::Channel, names: &Names, prefix: &str, i: usize) {
    service::publish(
        ch,
        &names.exchange,
        "court.bail.decided",
        &bail(i),
        agency(&format!("{prefix}-{i}")),
    )
    .await;
}

/// The emails to `address`, by subject.
fn mail_to(smtp: &Smtp, address: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.to.iter().any(|a| a.contains(address)))
        .map(|m| m.subject)
        .collect()
}

fn contact_mail(smtp: &Smtp) -> Vec<String> {
    mail_to(smtp, CONTACT)
}

async fn count(store: &Store, sql: &str) -> i64 {
    common::ledger::count(store, sql).await
}

/// The police webhook notifications the ledger shows gone by email.
async fn by_email(store: &Store) -> i64 {
    count(
        store,
        "SELECT COUNT(*) FROM notifications n JOIN attempts a ON a.notification_key = n.key \
         WHERE n.recipient = 'police:WYP-LEEDS' AND n.channel = 'email' AND n.status = 'skipped' \
         AND a.outcome = 'by-email'",
    )
    .await
}

/// Waits until `herald` has taken up an operator's enabling of the police webhook (at its
/// next heartbeat).
async fn sending_again(herald: &herald::serve::Running) {
    wait_until("the endpoint enabled in this instance", WAIT, || async {
        total(
            &service::scrape(herald).await,
            "herald_endpoint_state",
            &["recipient=\"police:WYP-LEEDS\"", "channel=\"webhook\""],
        ) == 0.0
    })
    .await;
}

async fn open_store(url: &str) -> Store {
    Store::open(url, Sync::Normal, Health::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_webhook_tells_its_contact_once_and_its_notifications_go_by_email() {
    let (receiver, smtp, names) = (
        Receiver::start().await,
        Smtp::start(),
        Names::new("contact-gone"),
    );
    receiver.answer(HOOK, 410);
    let herald = service::start(config(&receiver), &names, Some(&smtp)).await;
    let (_conn, ch) = service::channel().await;
    let url = common::ledger::of_queue(&names.queue).unwrap();
    let store = open_store(&url).await;

    publish_bail(&ch, &names, "gone", 1).await;
    wait_until("the contact told the webhook is disabled", WAIT, || async {
        !contact_mail(&smtp).is_empty()
    })
    .await;
    let told = contact_mail(&smtp);
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].contains("disabled") && told[0].contains(POLICE),
        "{}",
        told[0]
    );
    let mail = smtp
        .messages()
        .into_iter()
        .find(|m| m.to.iter().any(|a| a.contains(CONTACT)))
        .unwrap();
    assert!(mail.text.contains("HTTP 410"), "{}", mail.text);
    assert!(
        mail.text.contains("127.0.0.1"),
        "the URL's host: {}",
        mail.text
    );
    assert!(
        !mail.text.contains("/police/WYP-LEEDS"),
        "only the URL's host, not its path: {}",
        mail.text
    );
    let meanwhile = mail
        .text
        .lines()
        .find(|l| l.contains("go by email"))
        .unwrap_or_default();
    assert!(meanwhile.contains("ppo-bail-decision"), "{}", mail.text);
    for personal in ["Bloggs", "A1234BC", "bail decision 1"] {
        assert!(
            !mail.text.contains(personal) && !mail.html.contains(personal),
            "no personal data nor event content: {personal}"
        );
    }

    // The 410 itself and the next event's webhook: each goes by the route's email instead.
    publish_bail(&ch, &names, "gone", 2).await;
    wait_until("both webhook notifications gone by email", WAIT, || async {
        by_email(&store).await == 2
    })
    .await;
    wait_until("both events' emails to the PPO team", WAIT, || async {
        mail_to(&smtp, PPO_TEAM).len() == 2
    })
    .await;
    assert_eq!(
        receiver.hooks().iter().filter(|h| h.path == HOOK).count(),
        1,
        "the gone webhook was asked once"
    );
    let metrics = service::scrape(&herald).await;
    assert_eq!(
        total(
            &metrics,
            "herald_fallbacks_total",
            &["route=\"ppo-bail-decision\""]
        ),
        2.0
    );
    assert_eq!(
        total(
            &metrics,
            "herald_notifications_total",
            &["outcome=\"failed\""]
        ),
        0.0,
        "nothing parked"
    );
    wait_until("the notice recorded as sent", WAIT, || async {
        let changes = store.standings_of(POLICE, "webhook").await.unwrap();
        changes.len() == 1 && changes[0].notice == Notice::Sent
    })
    .await;

    // A restart on the same ledger tells no one again, and the webhook stays down.
    herald.stop().await.unwrap();
    let herald = service::start_with(config(&receiver), &names, Some(&smtp), |s| {
        s.ledger_url = url.clone();
    })
    .await;
    publish_bail(&ch, &names, "gone", 3).await;
    wait_until(
        "the next webhook notification gone by email",
        WAIT,
        || async { by_email(&store).await == 3 },
    )
    .await;
    assert_eq!(
        contact_mail(&smtp).len(),
        1,
        "not told again after a restart"
    );
    assert_eq!(
        store.standings_of(POLICE, "webhook").await.unwrap().len(),
        1
    );

    // An operator enables it again: the contact hears once that it works.
    receiver.answer(HOOK, 204);
    store
        .set_endpoint(POLICE, "webhook", "closed", Utc::now(), "test-operator")
        .await
        .unwrap();
    wait_until("the contact told it works again", WAIT, || async {
        contact_mail(&smtp).len() == 2
    })
    .await;
    assert!(
        contact_mail(&smtp)
            .iter()
            .any(|m| m.contains("working again"))
    );
    sending_again(&herald).await;
    publish_bail(&ch, &names, "gone", 4).await;
    wait_until("the webhook used again", WAIT, || async {
        receiver
            .hooks()
            .iter()
            .any(|h| h.path == HOOK && h.status == 204)
    })
    .await;
    let changes = store.standings_of(POLICE, "webhook").await.unwrap();
    let standings: Vec<Standing> = changes.iter().map(|c| c.standing).collect();
    assert_eq!(standings, [Standing::Disabled, Standing::Working]);
    assert_eq!(contact_mail(&smtp).len(), 2, "one email per change");
    assert!(service::drain(&ch, &names.failed).await.is_empty());
    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_webhook_tells_its_contact_then_that_it_works_again() {
    let (receiver, smtp, names) = (
        Receiver::start().await,
        Smtp::start(),
        Names::new("contact-down"),
    );
    receiver.answer(HOOK, 503);
    let herald = service::start_with(config(&receiver), &names, Some(&smtp), |s| {
        s.circuit_open_for = Duration::from_millis(500);
        s.contact_after = Duration::from_secs(2);
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let url = common::ledger::of_queue(&names.queue).unwrap();
    let store = open_store(&url).await;
    for i in 0..3 {
        publish_bail(&ch, &names, "down", i).await;
    }
    wait_until(
        "the contact told the webhook is unreachable",
        WAIT,
        || async { !contact_mail(&smtp).is_empty() },
    )
    .await;
    let told = contact_mail(&smtp);
    assert!(told[0].contains("unreachable"), "{told:?}");

    // While it is unreachable a new event's webhook goes by the route's email.
    publish_bail(&ch, &names, "down", 3).await;
    wait_until("a webhook notification gone by email", WAIT, || async {
        by_email(&store).await >= 1
    })
    .await;

    // It answers again: the next attempt let through is delivered, and the contact told.
    receiver.answer(HOOK, 204);
    // A new event about every second, until one is let through to the webhook.
    let mut looks = 0;
    wait_until("the contact told it works again", WAIT, || {
        looks += 1;
        let (ch, names, smtp) = (&ch, &names, &smtp);
        let n = looks;
        async move {
            if contact_mail(smtp).len() >= 2 {
                return true;
            }
            if n % 20 == 1 {
                publish_bail(ch, names, "down", 4 + n).await;
            }
            false
        }
    })
    .await;
    let told = contact_mail(&smtp);
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told.iter().any(|m| m.contains("working again")), "{told:?}");
    let changes = store.standings_of(POLICE, "webhook").await.unwrap();
    let standings: Vec<Standing> = changes.iter().map(|c| c.standing).collect();
    assert_eq!(standings, [Standing::Unreachable, Standing::Working]);
    assert!(changes.iter().all(|c| c.notice == Notice::Sent));
    // Each notification reached the recipient once: by webhook, or by email only.
    let twice = count(
        &store,
        "SELECT COUNT(*) FROM notifications n WHERE n.recipient = 'police:WYP-LEEDS' \
         AND n.channel = 'email' AND n.status = 'skipped' AND EXISTS (SELECT 1 FROM attempts a \
         WHERE a.notification_key = n.key AND a.outcome = 'delivered')",
    )
    .await;
    assert_eq!(twice, 0);
    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_ledger_tell_the_contact_once_per_change() {
    let (receiver, smtp, names) = (
        Receiver::start().await,
        Smtp::start(),
        Names::new("contact-two"),
    );
    receiver.answer(HOOK, 410);
    let url = common::ledger::fresh(Backend::Postgres).await;
    let start = |instance: &'static str| {
        let url = url.clone();
        service::start_with(config(&receiver), &names, Some(&smtp), move |s| {
            s.ledger_url = url;
            s.instance = instance.into();
        })
    };
    let (one, two) = (start("contact-one").await, start("contact-two").await);
    let (_conn, ch) = service::channel().await;
    let store = open_store(&url).await;
    for i in 0..6 {
        publish_bail(&ch, &names, "two", i).await;
    }
    wait_until(
        "every police webhook notification gone by email",
        WAIT,
        || async { by_email(&store).await == 6 },
    )
    .await;
    wait_until("the notice recorded as sent", WAIT, || async {
        let changes = store.standings_of(POLICE, "webhook").await.unwrap();
        changes.len() == 1 && changes[0].notice == Notice::Sent
    })
    .await;
    store
        .set_endpoint(POLICE, "webhook", "closed", Utc::now(), "test-operator")
        .await
        .unwrap();
    wait_until("the working-again notice sent", WAIT, || async {
        let changes = store.standings_of(POLICE, "webhook").await.unwrap();
        changes.len() == 2 && changes[1].notice == Notice::Sent
    })
    .await;
    // The webhook is used again; both instances look at the ledger meanwhile.
    receiver.answer(HOOK, 204);
    sending_again(&one).await;
    sending_again(&two).await;
    publish_bail(&ch, &names, "two", 6).await;
    wait_until("the webhook used again", WAIT, || async {
        receiver
            .hooks()
            .iter()
            .any(|h| h.path == HOOK && h.status == 204)
    })
    .await;
    let told = contact_mail(&smtp);
    assert_eq!(told.len(), 2, "one email per change: {told:?}");
    assert!(told.iter().any(|m| m.contains("disabled")));
    assert!(told.iter().any(|m| m.contains("working again")));
    assert_eq!(
        store.standings_of(POLICE, "webhook").await.unwrap().len(),
        2
    );
    let mut sent = 0.0;
    for herald in [&one, &two] {
        sent += total(
            &service::scrape(herald).await,
            "herald_endpoint_notices_total",
            &["outcome=\"sent\""],
        );
    }
    assert_eq!(sent, 2.0, "one instance sent each notice");
    wait_until("each event's email to the PPO team", WAIT, || async {
        mail_to(&smtp, PPO_TEAM).len() == 7
    })
    .await;
    one.stop().await.unwrap();
    two.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_recorded_and_its_notice_taken_once_however_many_try_at_once() {
    use futures_util::future::join_all;
    use herald::notification::StandingCause;
    for backend in common::ledger::BOTH {
        let store = open_store(&common::ledger::fresh(backend).await).await;
        let now = Utc::now();
        let record = |standing, cause| {
            store.record_standing(POLICE, "webhook", standing, cause, now, Notice::Due, now)
        };
        let tries = (0..8).map(|_| record(Standing::Disabled, StandingCause::Gone));
        let results: Vec<_> = join_all(tries)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_some()).count(),
            1,
            "{backend:?}: {results:?}"
        );
        assert_eq!(
            record(Standing::Disabled, StandingCause::Gone)
                .await
                .unwrap(),
            None,
            "the same standing again is no change"
        );
        assert_eq!(
            record(Standing::Working, StandingCause::Answered)
                .await
                .unwrap(),
            Some(2)
        );
        let due = store
            .due_notices(now + chrono::TimeDelta::seconds(1))
            .await
            .unwrap();
        assert_eq!(due.len(), 2, "{backend:?}");
        let lease = now + chrono::TimeDelta::minutes(5);
        let takes = (0..8).map(|_| store.take_notice(&due[0], lease));
        let taken = join_all(takes).await.into_iter().map(Result::unwrap);
        assert_eq!(taken.filter(|t| *t).count(), 1, "{backend:?}");
        store
            .settle_notice(&due[0], Notice::Sent, now)
            .await
            .unwrap();
        let (before, later) = store.around(&due[1]).await.unwrap();
        assert_eq!((before, later), (Some(Notice::Sent), false));
        store.close().await;
    }
}

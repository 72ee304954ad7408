//! The custody register, kept from the prison and court events, against the real broker and
//! both ledger backends: what each event says of a person's custody is recorded with the
//! event, once, and the register as it stood at an instant follows the events' `occurredAt`
//! whatever order they arrived in.

mod common;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use common::ledger::{BOTH, count, fresh};
use common::service::{self, Names, Receiver, wait_until};
use herald::ledger::{Backend, Health, Store, Sync};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> Option<NaiveDate> {
    Some(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
}

/// An example event, happened at `occurred`.
fn example(name: &str, occurred: &str) -> Value {
    let mut doc = common::example(name);
    doc["occurredAt"] = json!(occurred);
    doc["publishedAt"] = json!(occurred);
    doc
}

async fn the_register_follows_custody_events(backend: Backend) {
    let receiver = Receiver::start().await;
    let names = Names::new(&format!("custody-{}", backend.as_str()));
    let url = fresh(backend).await;
    let herald_url = url.clone();
    let herald = service::start_with(service::config(&receiver), &names, None, |s| {
        s.ledger_url = herald_url;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .unwrap();
    let publish = |doc: Value, id: &'static str| {
        let (ch, names, store) = (&ch, &names, &store);
        async move { service::publish_recorded(ch, &names.exchange, store, &doc, id).await }
    };

    // The release arrives before the reception and the scheduling it follows.
    let mut released = example("prison.prisoner.released.json", "2026-11-20T09:05:00Z");
    released["additionalInformation"]["releasedAt"] = json!("2026-11-20T09:00:00Z");
    publish(released, "custody-released").await;
    publish(
        example("prison.prisoner.received.json", "2026-10-05T14:20:00+01:00"),
        "custody-received",
    )
    .await;
    publish(
        example("prison.release.scheduled.json", "2026-10-30T10:15:00Z"),
        "custody-scheduled",
    )
    .await;
    publish(
        example("prison.hdc.decided.json", "2026-11-02T11:30:00Z"),
        "custody-hdc",
    )
    .await;
    // Not a custody event: no entry.
    publish(
        example("court.bail.decided.json", "2026-11-03T11:30:00Z"),
        "custody-bail",
    )
    .await;
    // The same event again: recorded once.
    publish(
        example("prison.prisoner.received.json", "2026-10-05T14:20:00+01:00"),
        "custody-received",
    )
    .await;
    wait_until("the repeated event handled", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'custody-received'",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM custody").await, 4);

    // Early November: Kershaw in HMP Leeds with a release date; Holroyd's HDC approved.
    let then = store.custody_at(at("2026-11-10T12:00:00Z")).await.unwrap();
    let refs: Vec<&str> = then.iter().map(|p| p.reference()).collect();
    assert_eq!(refs, ["NOMS:A1234BC", "NOMS:G4821KT"]);
    let kershaw = &then[0];
    assert!(kershaw.in_custody);
    assert_eq!(kershaw.establishment.as_ref().unwrap().code, "LEI");
    assert_eq!(kershaw.release_date, day("2026-12-18"));
    assert!(kershaw.offender.ppo);
    assert_eq!(kershaw.offender.home_bcu, "WYP-LEEDS");
    assert_eq!(
        kershaw.identifiers,
        ["CRN:X123456", "NOMS:A1234BC", "PNC:2004/0123456X"]
    );
    let holroyd = &then[1];
    assert!(holroyd.in_custody);
    assert_eq!(holroyd.hdc_eligibility, day("2026-11-30"));
    assert_eq!(holroyd.release_date, day("2026-12-07"));
    assert_eq!(holroyd.offender.home_bcu, "WYP-BRADFORD");

    // After the release: out of custody, released that day, though the release arrived first.
    let now = store.custody_at(at("2026-11-25T12:00:00Z")).await.unwrap();
    assert!(!now[0].in_custody);
    assert_eq!(now[0].release_date, day("2026-11-20"));
    // Before anything happened, the register held no one.
    assert!(
        store
            .custody_at(at("2026-10-01T00:00:00Z"))
            .await
            .unwrap()
            .is_empty()
    );

    herald.stop().await.unwrap();
    store.close().await;
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_register_follows_custody_events_on_both_backends() {
    for backend in BOTH {
        the_register_follows_custody_events(backend).await;
    }
}

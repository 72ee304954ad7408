//! The delivery ledger against both backends (a SQLite file, and a database of its own on the
//! machine's PostgreSQL), with the real broker and webhook receiver: what it records, and the
//! dedup and endpoint state that survive a restart through it.

mod common;

use std::time::Duration;

use common::body;
use common::ledger::{BOTH, fresh};
use common::service::{self, Names, Receiver, agency, total, wait_until};
use herald::ledger::{Backend, Health, Status, Store, Sync};
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(30);

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

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
    wait_until("the notifications recorded as delivered", WAIT, || async {
        count(
            &store,
            "SELECT COUNT(*) FROM notifications WHERE status = 'delivered'",
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
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'evt-ledger-1' AND outcome = 'duplicate'"
        )
        .await,
        1,
        "the copy is recorded as a duplicate"
    );
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

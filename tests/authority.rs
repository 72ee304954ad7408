//! The authority register, kept by `ppud.representation.*` events, against the real broker, a
//! real SMTP server and both ledger backends: who a dossier document is emailed to follows
//! the register as it stands when the email is sent, whatever order the register's events
//! arrive in, and `herald authority list` shows the register and its history.

mod common;

use std::time::Duration;

use common::ledger::{BOTH, count, fresh};
use common::service::{self, Names, Receiver, Smtp, total, wait_until};
use herald::ledger::{Backend, Health, Store, Sync};
use lapin::Channel;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const FIRM: &str = "legal-rep:SMITH-AND-CO";

/// A register event for `noms` and the firm.
fn representation(kind: &str, noms: &str, occurred: &str, info: Value) -> Value {
    let mut doc = common::example(&format!("ppud.representation.{kind}.json"));
    doc["occurredAt"] = json!(occurred);
    doc["publishedAt"] = json!(occurred);
    doc["personReference"]["identifiers"] = json!([{"type": "NOMS", "value": noms}]);
    doc["additionalInformation"] = info;
    doc
}

fn grant(noms: &str, occurred: &str, from: &str) -> Value {
    let info = json!({"representative": FIRM, "effectiveFrom": from});
    representation("granted", noms, occurred, info)
}

fn withdrawal(noms: &str, occurred: &str, from: &str) -> Value {
    let info = json!({"representative": FIRM, "effectiveFrom": from});
    representation("withdrawn", noms, occurred, info)
}

/// A new parole dossier document about `noms` (the legal representatives' route).
fn document(noms: &str) -> Value {
    let mut doc = common::example("ppud.document.uploaded.json");
    doc["personReference"]["identifiers"] = json!([{"type": "NOMS", "value": noms}]);
    doc
}

struct Run {
    ch: Channel,
    names: Names,
    store: Store,
    url: String,
}

impl Run {
    async fn new(ch: Channel, names: Names, url: String) -> Run {
        let store = Store::open(&url, Sync::Normal, Health::default())
            .await
            .unwrap();
        Run {
            ch,
            names,
            store,
            url,
        }
    }

    /// Publishes `doc` as `message_id` and waits until the ledger holds its handling (the
    /// handling's one commit comes after its deliveries).
    async fn handled(&self, doc: &Value, message_id: &str) {
        service::publish_recorded(&self.ch, &self.names.exchange, &self.store, doc, message_id)
            .await;
    }

    /// The notification row for an event and a recipient (or selector): its status and
    /// reason.
    async fn row(&self, message_id: &str, recipient: &str) -> (String, Option<String>) {
        use sqlx::Row;
        let row = sqlx::query(&format!(
            "SELECT n.status, n.reason FROM notifications n JOIN events e ON n.event_id = e.id \
             WHERE e.message_id = '{message_id}' AND n.recipient = '{recipient}'"
        ))
        .fetch_one(self.store.pool())
        .await
        .unwrap_or_else(|e| panic!("the row for {message_id} and {recipient}: {e}"));
        (row.get(0), row.get(1))
    }

    /// `herald authority ARGS` on this run's ledger: its stdout, which it must print
    /// successfully.
    fn authority(&self, config: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("authority")
            .args(args)
            .arg("--config")
            .arg(config)
            .env("HERALD_LEDGER_URL", &self.url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "herald authority {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn emails_to_the_firm(smtp: &Smtp) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| m.to.iter().any(|a| a.contains("smithandco")))
        .count()
}

async fn the_register_decides_who_is_told(backend: Backend) {
    let (smtp, receiver) = (Smtp::start(), Receiver::start().await);
    let names = Names::new(&format!("authority-{}", backend.as_str()));
    let url = fresh(backend).await;
    let herald_url = url.clone();
    let herald = service::start_with(service::config(&receiver), &names, Some(&smtp), |s| {
        s.ledger_url = herald_url;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let run = Run::new(ch, names, url).await;
    let changes = |change: &'static str, result: &'static str| {
        let herald = &herald;
        async move {
            total(
                &service::scrape(herald).await,
                "herald_authority_changes_total",
                &[
                    &format!("change=\"{change}\""),
                    &format!("result=\"{result}\""),
                ],
            )
        }
    };

    // Nothing in the register and nothing in acts_for: no representative is told.
    run.handled(&document("B1111AA"), "auth-doc-0").await;
    assert_eq!(emails_to_the_firm(&smtp), 0);
    let (status, reason) = run.row("auth-doc-0", "legal-rep:*").await;
    assert_eq!(status, "skipped");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("no one in the directory acts for this person")),
        "{reason:?}"
    );

    // Granted, then a document: the firm is emailed.
    let granted = grant("B1111AA", "2026-11-02T09:00:00Z", "2026-11-02");
    run.handled(&granted, "auth-grant-1").await;
    run.handled(&document("B1111AA"), "auth-doc-1").await;
    assert_eq!(emails_to_the_firm(&smtp), 1);
    assert_eq!(run.row("auth-doc-1", FIRM).await.0, "delivered");

    // The same grant again (a redelivery, a replay) changes nothing.
    run.handled(&granted, "auth-grant-1").await;
    wait_until("the repeated grant counted", WAIT, || async {
        changes("grant", "duplicate").await == 1.0
    })
    .await;

    // Withdrawn (from routes.toml's acts_for), then a document: not emailed, and the ledger
    // says why, to the day and the event.
    let withdrawn = withdrawal("A1234BC", "2026-11-20T09:00:00Z", "2026-11-20");
    run.handled(&withdrawn, "auth-withdraw-1").await;
    run.handled(&document("A1234BC"), "auth-doc-2").await;
    assert_eq!(emails_to_the_firm(&smtp), 1);
    let (status, reason) = run.row("auth-doc-2", FIRM).await;
    assert_eq!(status, "skipped");
    assert!(
        reason.as_deref().is_some_and(|r| r.contains(
            "had its authority for this person withdrawn from 2026-11-20 (register event auth-withdraw-1)"
        )),
        "{reason:?}"
    );

    // Out of order: the withdrawal arrives first, the grant it ends (which happened earlier)
    // after it. The firm stays unauthorised.
    let later = withdrawal("C3333CC", "2026-11-25T09:00:00Z", "2026-11-25");
    let earlier = grant("C3333CC", "2026-11-01T09:00:00Z", "2026-11-01");
    run.handled(&later, "auth-withdraw-2").await;
    run.handled(&earlier, "auth-grant-2").await;
    run.handled(&document("C3333CC"), "auth-doc-3").await;
    assert_eq!(emails_to_the_firm(&smtp), 1);
    let reason = run.row("auth-doc-3", FIRM).await.1;
    assert!(
        reason.as_deref().is_some_and(
            |r| r.contains("withdrawn from 2026-11-25 (register event auth-withdraw-2)")
        ),
        "{reason:?}"
    );

    // A representative the directory does not have is refused at the intake.
    let mut stranger = grant("D4444DD", "2026-11-03T09:00:00Z", "2026-11-03");
    stranger["additionalInformation"]["representative"] = json!("legal-rep:NOBODY-AND-CO");
    run.handled(&stranger, "auth-unknown-1").await;
    assert_eq!(
        count(
            &run.store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'auth-unknown-1' \
             AND outcome = 'rejected' AND reason = 'unknown-representative'"
        )
        .await,
        1
    );

    // What each register event did, counted.
    let metrics = service::scrape(&herald).await;
    let counted = |change: &str, result: &str| {
        total(
            &metrics,
            "herald_authority_changes_total",
            &[
                &format!("change=\"{change}\""),
                &format!("result=\"{result}\""),
            ],
        )
    };
    assert_eq!(counted("grant", "applied"), 2.0);
    assert_eq!(counted("grant", "duplicate"), 1.0);
    assert_eq!(counted("withdrawal", "applied"), 1.0);
    assert_eq!(counted("withdrawal", "withdraws-nothing"), 1.0);
    assert_eq!(counted("grant", "unknown-representative"), 1.0);
    // One row per register event applied: the repeated grant is not a second one.
    assert_eq!(count(&run.store, "SELECT COUNT(*) FROM authority").await, 4);

    // The register, read by an operator: now, as it stood, and by representative.
    let dir = tempfile::tempdir().unwrap();
    let config = service::config_file(dir.path(), &run.names, &receiver, "");
    let now = run.authority(&config, &["list", "--person", "NOMS:A1234BC"]);
    assert!(now.contains("withdrawn"), "{now}");
    assert!(now.contains("auth-withdraw-1"), "{now}");
    let then = run.authority(
        &config,
        &["list", "--person", "NOMS:A1234BC", "--at", "2026-11-19"],
    );
    assert!(then.contains("authorised (acts_for)"), "{then}");
    assert!(!then.contains("auth-withdraw-1"), "{then}");
    let firm = run.authority(&config, &["list", "--representative", FIRM, "--json"]);
    let standing: Vec<(String, String)> = firm
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            (
                v["person"].as_str().unwrap().to_owned(),
                v["standing"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        standing,
        [
            ("NOMS:A1234BC".to_owned(), "withdrawn".to_owned()),
            ("NOMS:B1111AA".to_owned(), "authorised".to_owned()),
            ("NOMS:C3333CC".to_owned(), "withdrawn".to_owned()),
            (
                "NOMS:G4821KT".to_owned(),
                "authorised (acts_for)".to_owned()
            ),
        ]
    );

    herald.stop().await.unwrap();
    run.store.close().await;
    service::cleanup(&run.ch, &run.names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_register_decides_who_is_told_on_both_backends() {
    for backend in BOTH {
        the_register_decides_who_is_told(backend).await;
    }
}

/// A notification waiting for a retry goes only if its representative is still authorised
/// when the retry comes: authority withdrawn in the meantime, it is not sent, and the ledger
/// says why.
#[tokio::test(flavor = "multi_thread")]
async fn authority_withdrawn_while_an_email_waits_for_a_retry_stops_it() {
    let receiver = Receiver::start().await;
    let names = Names::new("authority-retry");
    let (port, maildir) = Smtp::reserve();
    let mut config = service::config(&receiver);
    config.email.url = None;
    let url = fresh(common::ledger::default_backend()).await;
    let herald_url = url.clone();
    let herald = service::start_with(config, &names, None, |s| {
        s.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        s.retry_schedule = vec![Duration::from_secs(1); 30];
        s.circuit_failures = 1000;
        s.ledger_url = herald_url;
    })
    .await;
    let (_conn, ch) = service::channel().await;
    let run = Run::new(ch, names, url).await;

    // The SMTP server is down: the firm's email (acts_for authorises it) waits for a retry.
    run.handled(&document("A1234BC"), "auth-retry-doc").await;
    assert_eq!(run.row("auth-retry-doc", FIRM).await.0, "retrying");
    // Meanwhile the authority is withdrawn.
    let withdrawn = withdrawal("A1234BC", "2026-12-01T09:00:00Z", "2026-12-01");
    run.handled(&withdrawn, "auth-retry-withdraw").await;

    let smtp = Smtp::start_on(port, maildir);
    wait_until("the firm's email settled", WAIT, || async {
        run.row("auth-retry-doc", FIRM).await.0 != "retrying"
    })
    .await;
    let (status, reason) = run.row("auth-retry-doc", FIRM).await;
    assert_eq!(status, "skipped", "{reason:?}");
    assert!(
        reason.as_deref().is_some_and(
            |r| r.contains("withdrawn from 2026-12-01 (register event auth-retry-withdraw)")
        ),
        "{reason:?}"
    );
    // The panel office's email, waiting beside it, went once the server was back.
    wait_until("the panel office's email delivered", WAIT, || async {
        smtp.messages()
            .iter()
            .any(|m| m.to.iter().any(|a| a.contains("paroleboard")))
    })
    .await;
    assert_eq!(emails_to_the_firm(&smtp), 0);

    herald.stop().await.unwrap();
    run.store.close().await;
    service::cleanup(&run.ch, &run.names).await;
}

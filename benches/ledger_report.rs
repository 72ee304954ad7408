//! `herald ledger report` over a month of one million notifications, on SQLite and on
//! PostgreSQL (the machine's, 127.0.0.1:5432, when it answers).
//!
//! Each backend gets a fresh ledger, migrated by Herald, filled by the store itself (SQL that
//! generates the rows, `support/ledger.rs`: 500,000 events of two notifications each over
//! November 2026, twenty routes and fifty recipients; 0.2 % delivered late and 0.1 % parked,
//! each with a failed attempt), so the filling is quick and the same on both. Then the release
//! binary runs `herald ledger report --from 2026-11-01 --to 2026-12-01` in each format,
//! `REPORT_RUNS` times (default 3), and the median, the spread and the peak RSS are printed.
//! The target is under 5 s.
//!
//! `cargo bench --locked --bench ledger_report` (`REPORT_NOTIFICATIONS` to change the count).

use std::process::Command;
use std::time::{Duration, Instant};

use herald::ledger::{Backend, Health, Store, Sync};
use sqlx::Executor;

/// 2026-11-01T00:00:00Z, in milliseconds.
const T0: i64 = 1_793_491_200_000;
mod support;

use support::env;
use support::ledger::{Addressed, Fill, Kind, Outcome};

/// November 2026's ledger: 500,000 events (per million notifications) of two notifications
/// each, twenty routes and fifty recipients, 0.2 % delivered late and 0.1 % parked.
fn fill(notifications: i64) -> Fill {
    // Notification n of the pattern (which repeats every 100) goes by route n % 20 to
    // recipient n % 50.
    let to = |n: usize| {
        Addressed::new(
            &format!("route-{}", n % 20),
            &format!("police:BCU-{}", n % 50),
            "webhook",
            ("within 1 working day", 86_400_000),
        )
    };
    Fill {
        start: T0,
        span: 30 * 86_400_000,
        notifications,
        kinds: (0..50)
            .map(|k| Kind {
                publisher: "court-store".into(),
                event_type: "court.bail.decided".into(),
                notifications: [to(2 * k), to(2 * k + 1)],
            })
            .collect(),
        // Every 1,000th is parked (not delivered), every 500th (offset by one) delivered an
        // hour late, the rest delivered within ten minutes.
        outcomes: vec![
            ("i % 1000 = 0".into(), Outcome::Parked),
            ("i % 500 = 1".into(), Outcome::Late),
        ],
        every_attempt: false,
        persons: None,
        refused: 0,
    }
}

/// A fresh ledger's URL, and the database to drop afterwards (PostgreSQL).
async fn fresh(backend: Backend, dir: &std::path::Path) -> Option<(String, Option<String>)> {
    match backend {
        Backend::Sqlite => Some((
            herald::ledger::sqlite_url(&dir.join("report-bench.sqlite")),
            None,
        )),
        Backend::Postgres => support::create_database("report")
            .await
            .map(|(url, name)| (url, Some(name)))
            .map_err(|e| eprintln!("PostgreSQL skipped: {e}"))
            .ok(),
    }
}

/// Runs the report once: how long it took, the child's peak RSS in KiB, the output's size.
fn report(url: &str, format: &str, out: &std::path::Path) -> (Duration, u64, u64) {
    let started = Instant::now();
    // GNU time's %M: the child's maximum resident set size, in KiB.
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(out.with_extension("rss"))
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args([
            "ledger",
            "report",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--format",
            format,
            "--output",
        ])
        .arg(out)
        .env("HERALD_LEDGER_URL", url)
        .status()
        .expect("run herald (and /usr/bin/time)");
    let took = started.elapsed();
    assert!(status.success(), "herald ledger report failed");
    let rss = std::fs::read_to_string(out.with_extension("rss"))
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    (took, rss, size)
}

#[tokio::main]
async fn main() {
    let notifications: i64 = env("REPORT_NOTIFICATIONS", 1_000_000);
    let runs: usize = env("REPORT_RUNS", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "herald ledger report over {notifications} notifications (November 2026), {runs} runs each"
    );
    println!("backend   format  median   min      max      peak RSS  output");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((url, database)) = fresh(backend, dir.path()).await else {
            continue;
        };
        let store = Store::open(&url, Sync::Normal, Health::default())
            .await
            .expect("open the ledger");
        let started = Instant::now();
        for sql in fill(notifications).sql(backend) {
            store.pool().execute(sql.as_str()).await.expect("fill");
        }
        if backend == Backend::Postgres {
            store.pool().execute("ANALYZE").await.expect("analyze");
        }
        eprintln!(
            "{}: filled in {:.1} s",
            backend.as_str(),
            started.elapsed().as_secs_f64()
        );
        store.close().await;
        for format in ["html", "csv", "json"] {
            let out = dir.path().join(format!("report.{format}"));
            let mut times = Vec::new();
            let mut peak = 0;
            let mut size = 0;
            for _ in 0..runs {
                let (took, rss, bytes) = report(&url, format, &out);
                times.push(took);
                peak = peak.max(rss);
                size = bytes;
            }
            times.sort();
            println!(
                "{:<9} {format:<7} {:>5.2} s  {:>5.2} s  {:>5.2} s  {:>5} MiB  {} KiB",
                backend.as_str(),
                times[times.len() / 2].as_secs_f64(),
                times[0].as_secs_f64(),
                times[times.len() - 1].as_secs_f64(),
                peak / 1024,
                size / 1024
            );
        }
        if let Some(name) = database {
            support::drop_database(&name).await;
        }
    }
}

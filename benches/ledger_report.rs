//! `herald ledger report` over a month of one million notifications, on SQLite and on
//! PostgreSQL (the machine's, 127.0.0.1:5432, when it answers).
//!
//! Each backend gets a fresh ledger, migrated by Herald, filled by the store itself (SQL that
//! generates the rows: 500,000 events of two notifications each over November 2026, twenty
//! routes and fifty recipients; 0.2 % delivered late and 0.1 % parked, each with a failed
//! attempt), so the filling is quick and the same on both. Then the release binary runs
//! `herald ledger report --from 2026-11-01 --to 2026-12-01` in each format, `REPORT_RUNS`
//! times (default 3), and the median, the spread and the peak RSS are printed. The target is
//! under 5 s.
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

fn fill_sql(backend: Backend, notifications: i64) -> Vec<String> {
    let events = notifications / 2;
    // One event every `gap` ms spreads them over the 30 days of November.
    let gap = 30 * 86_400_000 / events.max(1);
    let series = |n: i64| match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {}) \
             SELECT i FROM s",
            n - 1
        ),
        Backend::Postgres => format!(
            "SELECT i FROM generate_series(0::bigint, {}) AS s(i)",
            n - 1
        ),
    };
    let made = format!("({T0} + (i / 2) * {gap})");
    let deadline = format!("({made} + 86400000)");
    // Every 1,000th is parked (not delivered), every 500th (offset by one) delivered an hour
    // late, the rest delivered within ten minutes.
    let parked = "i % 1000 = 0";
    let late = "i % 500 = 1";
    vec![
        format!(
            "INSERT INTO events (id, publisher, message_id, event_type, version, occurred_at, \
             received_at, outcome) \
             SELECT i + 1, 'court-store', 'evt-' || i, 'court.bail.decided', 1, \
             {T0} + i * {gap}, {T0} + i * {gap}, 'routed' FROM ({}) AS e",
            series(events)
        ),
        format!(
            "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
             channel, sla_rule, deadline, created_at, status, reason, attempts, \
             first_failure_at, delivered_at, sla_outcome, updated_at) \
             SELECT 'msg_' || i, i / 2 + 1, 'route-' || (i % 20), 'police:BCU-' || (i % 50), \
             'police', 'webhook', 'within 1 working day', {deadline}, {made}, \
             CASE WHEN {parked} THEN 'parked' ELSE 'delivered' END, \
             CASE WHEN {parked} THEN 'refused by the recipient' END, \
             CASE WHEN {parked} OR {late} THEN 2 ELSE 1 END, \
             CASE WHEN {parked} OR {late} THEN {made} + 1000 END, \
             CASE WHEN {parked} THEN NULL WHEN {late} THEN {deadline} + 3600000 \
                  ELSE {made} + (i * 7919) % 600000 END, \
             CASE WHEN {parked} THEN NULL WHEN {late} THEN 'breached' ELSE 'met' END, \
             {made} FROM ({}) AS n",
            series(notifications)
        ),
        format!(
            "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
             SELECT 'msg_' || i, {made} + 1000, 30, \
             CASE WHEN {parked} THEN 'http-refused' ELSE 'http-retryable' END, \
             CASE WHEN {parked} THEN 400 ELSE 503 END, 'closed' \
             FROM ({}) AS n WHERE {parked} OR {late}",
            series(notifications)
        ),
    ]
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
        for sql in fill_sql(backend, notifications) {
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

//! The ledger's write path on its own, on SQLite and on PostgreSQL (the machine's, on
//! 127.0.0.1:5432, when it answers): what one handled event costs the ledger, without the
//! broker, the receivers or the rest of Herald sharing the machine.
//!
//! `LEDGER_EVENTS` events (default 20,000) are handled by `LEDGER_CONCURRENCY` tasks at once
//! (default 100, Herald's prefetch), each as the service does it: ask the ledger what it holds
//! of the event, then record the event, its two identifiers and its two notifications,
//! delivered, with their attempts, in one operation, and wait for the commit. Idempotency keys
//! are spread like real ones (hashes), so index pages are written where real keys would put
//! them. Each backend starts from a fresh ledger (a new file; a database created for the run
//! and dropped after it).
//!
//! Printed per backend: events per second, CPU of this process per event (Herald's side of the
//! ledger: building rows, the SQLite library itself, the writer's thread and sqlx's), the CPU of every other
//! process on the machine per event meanwhile (on PostgreSQL, mostly its server), and the
//! group commits made, and this process's peak resident set so far (SQLite runs first). No
//! figure is a target: this finds where the ledger's time and memory go.
//!
//! `cargo bench --locked --bench ledger_write`

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use herald::ledger::{
    AttemptRecord, Backend, EventOutcome, EventRecord, Health, Ledger, NotificationRecord, Seen,
    Status, Store, Sync, Update,
};
use herald::metrics::Metrics;

mod support;

use support::{POSTGRES, env};

/// Clock ticks (utime + stime) from a `stat` file of /proc.
fn ticks(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// This process's CPU and the whole machine's, in clock ticks.
fn cpu() -> (u64, u64) {
    let own = std::fs::read_to_string("/proc/self/stat").map_or(0, |s| ticks(&s));
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user, nice, system, irq, softirq, steal
            Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?)
        })
        .unwrap_or(0);
    (own, machine)
}

const TICK_US: f64 = 10_000.0;

/// This process's peak resident set so far (VmHWM), in MiB: the SQLite run's, then the
/// larger of both.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// An event of two notifications, both delivered at the first attempt.
fn handled(
    run: &str,
    i: usize,
    hasher: &RandomState,
) -> (EventRecord, Vec<NotificationRecord>, Vec<Update>) {
    let now = Utc::now();
    let event = EventRecord {
        publisher: "court".into(),
        message_id: format!("bench-{run}-{i}"),
        event_type: "court.bail.decided".into(),
        version: Some(1),
        occurred_at: Some(now),
        received_at: now,
        persons: vec!["NOMS:A1234BC".into(), "PNC:2004/0123456X".into()],
        outcome: EventOutcome::Routed,
        reason: None,
        custody: None,
    };
    let mut made = Vec::new();
    let mut outcomes = Vec::new();
    for recipient in ["police:WYP-LEEDS", "probation:PDU-LEEDS"] {
        let key = format!(
            "msg_{:016x}{:016x}",
            hasher.hash_one((run, i, recipient)),
            hasher.hash_one((recipient, i, run))
        );
        made.push(NotificationRecord {
            key: key.clone(),
            route: "bail-two-recipients".into(),
            recipient: recipient.into(),
            channel: "webhook".into(),
            sla_rule: Some("within 24h".into()),
            deadline: Some(now + chrono::Duration::hours(24)),
            status: Status::Pending,
            reason: None,
        });
        outcomes.push(Update {
            key,
            status: Status::Delivered,
            reason: None,
            attempts: 1,
            first_failure_at: None,
            delivered_at: Some(now),
            sla_outcome: Some("met"),
            sent_hash: None,
            attempt: Some(AttemptRecord {
                at: now,
                duration: Duration::from_millis(2),
                outcome: "delivered",
                code: Some(204),
                breaker: "closed",
            }),
        });
    }
    (event, made, outcomes)
}

struct Figures {
    events_per_second: f64,
    own_us: f64,
    others_us: f64,
    commits: u64,
}

async fn measure(url: &str, events: usize, concurrency: usize) -> Result<Figures, String> {
    let store = Store::open(url, Sync::Full, Health::default())
        .await
        .map_err(|e| e.to_string())?;
    let metrics = Metrics::new();
    let ledger = Ledger::start(store.clone(), metrics.clone());
    let run = format!("{}", std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let hasher = Arc::new(RandomState::new());
    let (cpu0, started) = (cpu(), Instant::now());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ledger, next, run, hasher) =
                (ledger.clone(), next.clone(), run.clone(), hasher.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return Ok(());
                    }
                    let (event, made, outcomes) = handled(&run, i, &hasher);
                    match ledger.seen(&event.publisher, &event.message_id).await {
                        Ok(Seen::New) => {}
                        Ok(seen) => return Err(format!("a new event was seen before: {seen:?}")),
                        Err(e) => return Err(e.to_string()),
                    }
                    ledger
                        .handled(event, made, outcomes, None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let (elapsed, cpu1) = (started.elapsed(), cpu());
    let commits = metrics
        .ledger_commit_seconds
        .with_label_values::<&str>(&[])
        .get_sample_count();
    drop(ledger);
    store.close().await;
    let own = (cpu1.0 - cpu0.0) as f64 * TICK_US;
    let machine = (cpu1.1 - cpu0.1) as f64 * TICK_US;
    Ok(Figures {
        events_per_second: events as f64 / elapsed.as_secs_f64(),
        own_us: own / events as f64,
        others_us: (machine - own).max(0.0) / events as f64,
        commits,
    })
}

fn main() {
    let events = env("LEDGER_EVENTS", 20_000);
    let concurrency = env("LEDGER_CONCURRENCY", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        println!(
            "ledger write path: {events} events of 2 notifications, {concurrency} at once; \
             CPU in microseconds per event"
        );
        println!(
            "| backend | events/s | this process | other processes | commits | peak RSS MiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let sqlite = herald::ledger::sqlite_url(&dir.path().join("ledger.sqlite"));
        let mut backends = vec![(Backend::Sqlite, sqlite, None)];
        match support::create_database("write").await {
            Ok((url, name)) => backends.push((Backend::Postgres, url, Some(name))),
            Err(e) => eprintln!("PostgreSQL on {POSTGRES}: {e}; measured on SQLite only"),
        }
        for (backend, url, database) in backends {
            match measure(&url, events, concurrency).await {
                Ok(f) => println!(
                    "| {} | {:.0} | {:.0} | {:.0} | {} | {:.1} |",
                    backend.as_str(),
                    f.events_per_second,
                    f.own_us,
                    f.others_us,
                    f.commits,
                    peak_rss_mib()
                ),
                Err(e) => println!("| {} | failed: {e} | | | |", backend.as_str()),
            }
            if let Some(name) = database {
                support::drop_database(&name).await;
            }
        }
    });
}

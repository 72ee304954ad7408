//! The registers: applying register events through the ledger's writer, and building the
//! weekly digests from the custody register.
//!
//! 1. `REGISTER_EVENTS` events (default 100,000) are handled by 100 tasks at once, as the
//!    service does (ask the ledger about the event, then record it in one operation), on
//!    SQLite and, when it answers on 127.0.0.1:5432, PostgreSQL: three in four are prison
//!    events with their custody register entry, one in four a grant of authority with its
//!    register change. The baseline, run first on a fresh ledger of its own, is the same
//!    events recorded without their register rows: the ratio is what keeping the registers
//!    costs the write path.
//! 2. A digest over `DIGEST_PEOPLE` tracked people (default 10,000, three entries each, in
//!    four BCUs): the register folded as it stands and as it stood a week before, and the
//!    three reports selected for one BCU; the median of 11 runs. The baseline is sorting the
//!    same entries into `occurredAt` order, which any build of the register must do.
//!
//! `cargo bench --locked --bench registers`

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use herald::ledger::{Backend, EventOutcome, EventRecord, Health, Ledger, Seen, Store, Sync};
use herald::metrics::Metrics;
use herald::route::authority::{Change, ChangeKind};
use herald::route::custody::{Entry, Establishment, Fact, Offender, Recorded, fold};
use herald::route::digest::{Report, Scope, select};
use support::{POSTGRES, env};

const BCUS: [&str; 4] = [
    "WYP-LEEDS",
    "WYP-BRADFORD",
    "GMP-MANCHESTER",
    "WYP-CALDERDALE",
];

fn noms(i: usize) -> String {
    let letter = |n: usize| char::from(b'A' + (n % 26) as u8);
    format!(
        "{}{:04}{}{}",
        letter(i / 10_000),
        i % 10_000,
        letter(i / 7),
        letter(i / 3)
    )
}

fn day(base: NaiveDate, days: usize) -> NaiveDate {
    base + chrono::Duration::days(days as i64)
}

/// The `k`th entry (0: received, 1: release scheduled, 2: HDC or a hearing) of person `p`.
fn entry(p: usize, k: usize) -> Recorded {
    let start = Utc.with_ymd_and_hms(2026, 9, 1, 9, 0, 0).unwrap();
    // Spread over the 97 days to the digest, the last week included.
    let occurred = start + chrono::Duration::minutes((p * 13 + k * 2_000) as i64 % 139_000);
    let prison = Establishment {
        code: ["LEI", "WDI", "MRI"][p % 3].into(),
        name: "HMP".into(),
    };
    let base = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let fact = match k {
        0 => Fact::Received { prison },
        1 => Fact::ReleaseScheduled {
            prison,
            release_date: day(base, p % 90),
        },
        _ if (p / 4).is_multiple_of(2) => Fact::Hdc {
            prison,
            eligibility: day(base, p % 60),
            release_date: None,
        },
        _ => Fact::Hearing {
            unfinalised: Some(p.is_multiple_of(3)),
        },
    };
    Recorded {
        occurred_at: occurred,
        event: format!("evt-{p}-{k}"),
        row: 0,
        entry: Entry {
            identifiers: vec![format!("NOMS:{}", noms(p)), format!("PNC:2004/{p:07}X")],
            offender: Offender {
                name: format!("Person {p}"),
                ppo: !p.is_multiple_of(5),
                home_bcu: BCUS[p % BCUS.len()].into(),
                pdu: "PDU-LEEDS".into(),
            },
            fact,
        },
    }
}

/// Event `i` of the run, with or without its register row.
fn event(run: &str, i: usize, registers: bool) -> (EventRecord, Option<Change>) {
    let now = Utc::now();
    let grant = i % 4 == 3;
    let person = format!("NOMS:{}", noms(i));
    let mut record = EventRecord {
        publisher: if grant { "ppud" } else { "prison" }.into(),
        message_id: format!("reg-{run}-{i}"),
        event_type: if grant {
            "ppud.representation.granted"
        } else {
            "prison.release.scheduled"
        }
        .into(),
        version: Some(1),
        occurred_at: Some(now),
        received_at: now,
        persons: vec![person.clone()],
        outcome: EventOutcome::Routed,
        reason: None,
        custody: None,
    };
    if !registers {
        return (record, None);
    }
    if grant {
        let change = Change {
            person,
            representative: "legal-rep:SMITH-AND-CO".into(),
            kind: ChangeKind::Grant {
                from: now.date_naive(),
                until: None,
            },
            occurred_at: now,
            event: record.message_id.clone(),
        };
        (record, Some(change))
    } else {
        record.custody = serde_json::to_string(&entry(i, i % 3).entry).ok();
        (record, None)
    }
}

async fn apply(url: &str, events: usize, registers: bool) -> Result<f64, String> {
    let store = Store::open(url, Sync::Full, Health::default())
        .await
        .map_err(|e| e.to_string())?;
    let ledger = Ledger::start(store.clone(), Metrics::new());
    let run = format!("{}-{registers}", std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (ledger, next, run) = (ledger.clone(), next.clone(), run.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return Ok::<(), String>(());
                    }
                    let (record, change) = event(&run, i, registers);
                    match ledger.seen(&record.publisher, &record.message_id).await {
                        Ok(Seen::New) => {}
                        Ok(seen) => return Err(format!("a new event was seen before: {seen:?}")),
                        Err(e) => return Err(e.to_string()),
                    }
                    ledger
                        .handled(record, Vec::new(), Vec::new(), change)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(ledger);
    store.close().await;
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn digest(people: usize) {
    let entries: Vec<Recorded> = (0..people)
        .flat_map(|p| (0..3).map(move |k| entry(p, k)))
        .collect();
    let now: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 12, 7, 7, 0, 0).unwrap();
    let week_ago = now - chrono::Duration::days(7);
    let scope = Scope {
        bcus: vec!["WYP-LEEDS".into()],
        pdus: Vec::new(),
    };
    let (mut built, mut sorted, mut named) = (Vec::new(), Vec::new(), [0; 3]);
    for _ in 0..11 {
        let t = Instant::now();
        let mut order: Vec<&Recorded> = entries.iter().collect();
        order.sort_by(|a, b| (a.occurred_at, &a.event).cmp(&(b.occurred_at, &b.event)));
        std::hint::black_box(&order);
        sorted.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let (this_week, last_week) = (fold(&entries, now), fold(&entries, week_ago));
        for (n, report) in named.iter_mut().zip(Report::ALL) {
            *n = select(report, &scope, &this_week, &last_week).len();
        }
        built.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (built, sorted) = (median(built), median(sorted));
    println!(
        "digest over {people} tracked people ({} entries): the three reports for one BCU in \
         {built:.1} ms (the register folded twice, now and a week before); sorting the entries \
         alone {sorted:.1} ms; ratio {:.1}; people named: in prison {}, details changed {}, \
         un-finalised {}",
        entries.len(),
        built / sorted,
        named[0],
        named[1],
        named[2]
    );
}

fn main() {
    let events = env("REGISTER_EVENTS", 100_000);
    let people = env("DIGEST_PEOPLE", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        println!(
            "applying {events} register events, 100 at once (3 in 4 custody, 1 in 4 authority)"
        );
        println!("| backend | without register rows, events/s | with them, events/s | ratio |");
        println!("|---|---:|---:|---:|");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let sqlite = |name: &str| herald::ledger::sqlite_url(&dir.path().join(name));
        let mut runs = vec![(
            Backend::Sqlite,
            sqlite("baseline.sqlite"),
            sqlite("registers.sqlite"),
        )];
        let mut databases = Vec::new();
        for tag in ["registers_base", "registers"] {
            match support::create_database(tag).await {
                Ok(db) => databases.push(db),
                Err(e) => eprintln!("PostgreSQL on {POSTGRES}: {e}"),
            }
        }
        match databases.as_slice() {
            [(base, _), (reg, _)] => runs.push((Backend::Postgres, base.clone(), reg.clone())),
            _ => eprintln!("measured on SQLite only"),
        }
        for (backend, base_url, reg_url) in runs {
            let base = apply(&base_url, events, false).await;
            let with = apply(&reg_url, events, true).await;
            match (base, with) {
                (Ok(b), Ok(w)) => {
                    println!("| {} | {b:.0} | {w:.0} | {:.2} |", backend.as_str(), w / b)
                }
                (b, w) => println!("| {} | {b:?} | {w:?} | |", backend.as_str()),
            }
        }
        for (_, name) in databases {
            support::drop_database(&name).await;
        }
    });
    digest(people);
}

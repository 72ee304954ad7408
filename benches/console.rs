//! The operator's console over a delivery ledger of one million notifications: how long each
//! page and API call takes, from the request sent to the last byte of the answer read.
//!
//! A SQLite ledger is filled through the store itself (`support/ledger.rs`): 500,000 events of
//! two notifications each over the 30 days up to now, in eleven kinds taken from routes.toml's
//! routes and recipients (a third of the notifications to police:WYP-LEEDS), three person
//! identifiers per event over 40,000 people (every 997th event about the same one, NOMS
//! A1000AC: about 1,000 notifications), an attempt row per attempt, 5,000 events refused at
//! the intake, the endpoints' states and 3,000 audit entries. The notifications to
//! police:WYP-LEEDS by email never fail (the endpoint page that reads the most to find
//! nothing); of the others, 2.5 % are delivered after a failure, 2 % delivered late, 0.6 %
//! parked, 0.2 % expired, 0.3 % skipped, and 1.5 % of the last day's retrying; the last two
//! minutes' are pending. The ledger is kept in target/tmp and used again for an hour (its times
//! are relative to when it was filled); `CONSOLE_FRESH=1` fills it anew.
//!
//! Two consoles are started in this process as `herald serve` starts its own (routes.toml,
//! loopback, no credentials), one over that ledger and one over an empty one, the baseline.
//! No broker is needed: the dead-letter pages, which read RabbitMQ, are not timed. Each page is
//! fetched once from each to warm, then `CONSOLE_RUNS` times (default 20) from each in turn.
//! Printed: the median and the slowest over the million and over the empty ledger, and the
//! ratio of the medians (the machine is shared, so the ratio says more than the times). The
//! target is under 200 ms for every page over a million notifications. The inspectors' report
//! for a period asked for (`/console/report?from=30d`: every notification) is timed apart,
//! over at most five runs; its page before a period is asked (the form) is one of the pages.
//!
//! `cargo bench --locked --bench console` (`CONSOLE_NOTIFICATIONS` to change the count).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald::core::Core;
use herald::ledger::{Backend, Health, Store, Sync};
use herald::metrics::Metrics;
use herald::serve::Settings;
use sqlx::Executor;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)] // Of the shared module this benchmark needs the sizes and the ledger's fill.
mod support;

use support::env;
use support::ledger::{Addressed, Fill, Kind, Outcome, Persons};

/// Changed whenever the fill below or the migrations change, so that a kept ledger filled
/// otherwise is not used.
const FILL_VERSION: u32 = 3;
/// How long a filled ledger is used again.
const KEEP_FOR: Duration = Duration::from_secs(3600);
const DAY: i64 = 86_400_000;
const TARGET: Duration = Duration::from_millis(200);

/// The person most notifications are about, and the recipient most go to.
const PERSON: i64 = 0;
const RECIPIENT: &str = "police:WYP-LEEDS";

fn kinds() -> Vec<Kind> {
    let hour = ("within 1h", 3_600_000);
    let day = ("within 24h", DAY);
    let working_day = ("within 1 working day", DAY);
    let notice = ("28d notice before releaseDate", 10 * DAY);
    let on_the_day = ("on the day of releasedAt", 12 * 3_600_000);
    let before = ("before leavesAt", 6 * 3_600_000);
    let to = Addressed::new;
    let kind = |publisher: &str, event_type: &str, first, second| Kind {
        publisher: publisher.into(),
        event_type: event_type.into(),
        notifications: [first, second],
    };
    let route = "ppo-received-into-custody";
    let received = kind(
        "prison",
        "prison.prisoner.received",
        to(route, RECIPIENT, "email", hour),
        to(route, RECIPIENT, "webhook", hour),
    );
    let route = "ppo-release-determined";
    let scheduled = kind(
        "prison",
        "prison.release.scheduled",
        to(route, RECIPIENT, "webhook", notice),
        to(route, "probation:PDU-LEEDS", "webhook", notice),
    );
    let route = "ppo-released";
    let released = kind(
        "prison",
        "prison.prisoner.released",
        to(route, "police:WYP-BRADFORD", "webhook", on_the_day),
        to(route, "probation:PDU-BRADFORD", "email", on_the_day),
    );
    let route = "ppo-temporary-release";
    let temporary = kind(
        "prison",
        "prison.temporary-release.granted",
        to(route, "police:WYP-BRADFORD", "webhook", before),
        to(route, "police:WYP-BRADFORD", "email", before),
    );
    let route = "ppo-bail-decision";
    let bail_leeds = kind(
        "court",
        "court.bail.decided",
        to(route, RECIPIENT, "webhook", day),
        to(route, "probation:PDU-LEEDS", "webhook", day),
    );
    let bail_manchester = kind(
        "court",
        "court.bail.decided",
        to(route, "police:GMP-MANCHESTER", "email", day),
        to(route, "probation:PDU-MANCHESTER-NORTH", "email", day),
    );
    let route = "ppo-fta-warrant";
    let warrant = kind(
        "court",
        "court.warrant.issued",
        to(route, RECIPIENT, "webhook", working_day),
        to(route, RECIPIENT, "email", working_day),
    );
    let hearing = |police: &str, channel, court: &str| {
        kind(
            "court",
            "court.hearing.concluded",
            to("ppo-court-outcome", police, channel, working_day),
            to("ppo-next-hearing-listing", court, "email", working_day),
        )
    };
    let document = kind(
        "ppud",
        "ppud.document.uploaded",
        to(
            "dossier-document-legal-reps",
            "legal-rep:SMITH-AND-CO",
            "email",
            hour,
        ),
        to(
            "dossier-document-parole-board",
            "judiciary:PAROLE-BOARD",
            "webhook",
            working_day,
        ),
    );
    let route = "ppo-hdc-approved";
    let hdc = kind(
        "probation",
        "prison.hdc.decided",
        to(route, "police:GMP-MANCHESTER", "email", notice),
        to(route, "probation:PDU-MANCHESTER-NORTH", "email", notice),
    );
    vec![
        received,
        scheduled,
        released,
        temporary,
        bail_leeds,
        bail_manchester,
        warrant,
        hearing("police:WYP-BRADFORD", "webhook", "court-listing:BRADFORDCC"),
        hearing(RECIPIENT, "email", "court-listing:LEEDSMC"),
        document,
        hdc,
    ]
}

/// Which notifications a share applies to: `(i * 7919) % 10000` is spread evenly over the
/// notifications, whatever their kind.
fn share(from: u32, to: u32) -> String {
    format!("(i * 7919) % 10000 BETWEEN {from} AND {}", to - 1)
}

/// The notification whose share of failures includes `i`, for the event page: a late one.
const LATE: (u32, u32) = (260, 460);

/// The places in the fill's cycle of the notifications to `RECIPIENT` by email: an endpoint
/// that never fails, the one whose page reads the most to find nothing.
fn healthy() -> (usize, Vec<usize>) {
    let kinds = kinds();
    let places = (0..2 * kinds.len())
        .filter(|n| {
            let a = &kinds[n / 2].notifications[n % 2];
            a.recipient == RECIPIENT && a.channel == "email"
        })
        .collect();
    (2 * kinds.len(), places)
}

fn fill(notifications: i64, now: i64) -> Fill {
    let span = 30 * DAY;
    let (cycle, healthy) = healthy();
    let healthy: Vec<String> = healthy.iter().map(usize::to_string).collect();
    // The last day's notifications, and the last two minutes'.
    let last_day = notifications - notifications / 30;
    let last_minutes = notifications - (notifications * 2 / (30 * 24 * 60)).max(2);
    Fill {
        start: now - span,
        span,
        notifications,
        kinds: kinds(),
        outcomes: vec![
            (format!("i >= {last_minutes}"), Outcome::Pending),
            (
                format!("i % {cycle} IN ({})", healthy.join(", ")),
                Outcome::Delivered,
            ),
            (
                format!("i >= {last_day} AND {}", share(0, 150)),
                Outcome::Retrying,
            ),
            (share(150, 180), Outcome::Skipped),
            (share(180, 240), Outcome::Parked),
            (share(240, 260), Outcome::Expired),
            (share(LATE.0, LATE.1), Outcome::Late),
            (share(460, 710), Outcome::Recovered),
        ],
        every_attempt: true,
        persons: Some(Persons {
            people: 40_000,
            first_every: 997,
        }),
        refused: notifications / 200,
    }
}

/// The rows besides the fill: the endpoints' states and the audit trail.
fn extras(now: i64) -> Vec<String> {
    vec![
        format!(
            "INSERT INTO endpoints (recipient, channel, state, since, reason) VALUES \
             ('police:WYP-BRADFORD', 'webhook', 'open', {}, '5 transient failures in a row'), \
             ('judiciary:PAROLE-BOARD', 'webhook', 'disabled', {}, 'HTTP 410 Gone'), \
             ('police:WYP-LEEDS', 'webhook', 'closed', {}, 'enabled by console:olive'), \
             ('police:WYP-LEEDS', 'email', 'closed', {}, NULL)",
            now - 10 * 60_000,
            now - 3 * DAY,
            now - 2 * DAY,
            now - 20 * DAY,
        ),
        // Replays of parked notifications, and now and then a purge or an endpoint disabled.
        format!(
            "INSERT INTO audit (at, actor, action, subject, detail) \
             SELECT {} + i * {}, CASE WHEN i % 3 = 0 THEN 'console:olive' ELSE 'cli:jsmith' END, \
             CASE WHEN i % 50 = 0 THEN 'purge' WHEN i % 97 = 0 THEN 'disable' ELSE 'replay' END, \
             CASE WHEN i % 97 = 0 THEN 'police:WYP-BRADFORD/webhook' \
                  ELSE 'msg_' || (i * 331) END, \
             CASE WHEN i % 97 = 0 THEN NULL ELSE 'herald.failed' END FROM ({}) AS a",
            now - 30 * DAY,
            30 * DAY / 3000,
            support::ledger::series(Backend::Sqlite, 3000)
        ),
    ]
}

/// The ledger of `notifications`, filled now or kept from a run less than [`KEEP_FOR`] ago:
/// its URL, and when it was filled.
async fn million(notifications: i64) -> (String, chrono::DateTime<Utc>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).expect("target/tmp");
    let file = dir.join(format!(
        "console-ledger-v{FILL_VERSION}-{notifications}.sqlite"
    ));
    let marker = file.with_extension("filled");
    let url = herald::ledger::sqlite_url(&file);
    let filled = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis);
    let fresh = std::env::var("CONSOLE_FRESH").is_ok_and(|v| v == "1");
    if let Some(at) =
        filled.filter(|at| !fresh && (Utc::now() - *at).to_std().is_ok_and(|age| age < KEEP_FOR))
    {
        println!(
            "ledger: {} (filled {} min ago, used again)",
            file.display(),
            (Utc::now() - at).num_minutes()
        );
        return (url, at);
    }
    let _ = std::fs::remove_file(&marker);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", file.display())));
    }
    let now = Utc::now();
    let store = Store::open(&url, Sync::Normal, Health::default())
        .await
        .expect("open the ledger");
    let started = Instant::now();
    let fill = fill(notifications, now.timestamp_millis());
    for sql in fill
        .sql(Backend::Sqlite)
        .into_iter()
        .chain(extras(now.timestamp_millis()))
    {
        store.pool().execute(sql.as_str()).await.expect("fill");
    }
    store.close().await;
    std::fs::write(&marker, now.timestamp_millis().to_string()).expect("marker");
    println!(
        "ledger: {} (filled in {:.0} s)",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    (url, now)
}

/// A console as `herald serve` starts it, over the ledger at `url`: its base URL.
async fn console(core: &Arc<Core>, url: &str, shutdown: &CancellationToken) -> String {
    let mut settings = Settings::new(&core.config, |_| None);
    settings.ledger_url = url.to_owned();
    let bound = herald::console::bind("127.0.0.1:0", |_| None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = bound
        .serve(
            herald::core::Live::new(Arc::clone(core)),
            settings,
            Metrics::new(),
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    format!("http://{}", started.addr)
}

/// One fetch: how long, the status, and the body.
async fn fetch(client: &reqwest::Client, url: &str) -> (Duration, u16, String) {
    let started = Instant::now();
    let response = client.get(url).send().await.expect("the console answers");
    let status = response.status().as_u16();
    let body = response.text().await.expect("the whole body");
    (started.elapsed(), status, body)
}

/// Rows in an answer: items of a JSON array, or rows of an HTML page's tables.
fn rows(body: &str) -> usize {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => items.len(),
        Ok(_) => 1,
        Err(_) => body
            .matches("<tr")
            .count()
            .saturating_sub(body.matches("<thead").count()),
    }
}

struct Timed {
    median: Duration,
    max: Duration,
    status: u16,
    rows: usize,
    bytes: usize,
}

fn summary(mut times: Vec<Duration>, status: u16, body: &str) -> Timed {
    times.sort();
    Timed {
        median: times[times.len() / 2],
        max: times[times.len() - 1],
        status,
        rows: rows(body),
        bytes: body.len(),
    }
}

/// `path` fetched from each console once, then `runs` times from each in turn.
async fn time(client: &reqwest::Client, bases: [&str; 2], path: &str, runs: usize) -> [Timed; 2] {
    let mut last = [(0, String::new()), (0, String::new())];
    let mut times = [Vec::new(), Vec::new()];
    for base in bases {
        fetch(client, &format!("{base}{path}")).await;
    }
    for run in 0..runs {
        // Each run starts with the other ledger, so neither always follows the other.
        for k in 0..2 {
            let n = (run + k) % 2;
            let (took, status, body) = fetch(client, &format!("{}{path}", bases[n])).await;
            times[n].push(took);
            last[n] = (status, body);
        }
    }
    let [big, empty] = times;
    let [(s0, b0), (s1, b1)] = last;
    [summary(big, s0, &b0), summary(empty, s1, &b1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(path: &str, [big, empty]: &[Timed; 2]) {
    let ratio = big.median.as_secs_f64() / empty.median.as_secs_f64().max(1e-9);
    let verdict = if big.median < TARGET && big.max < TARGET {
        "met"
    } else if big.median < TARGET {
        "median only"
    } else {
        "MISSED"
    };
    println!(
        "{path:<50} {:>9} {:>7} {:>10} {:>7} {:>7.1} {:>4} {:>5} {:>6} {:>10}  {verdict}",
        ms(big.median),
        ms(big.max),
        ms(empty.median),
        ms(empty.max),
        ratio,
        big.status,
        big.rows,
        big.bytes,
        empty.status,
    );
}

/// Where the report's time goes: the store's three reads it is made of, each timed once over
/// the full ledger.
async fn parts(url: &str) {
    let store = Store::open_current(url).await.expect("the ledger");
    let now = Utc::now();
    let from = now - chrono::Duration::days(30);
    let started = Instant::now();
    let mut counted = 0u64;
    store
        .counted(from, now, now, |_| counted += 1)
        .await
        .expect("counted");
    let counting = started.elapsed();
    let started = Instant::now();
    let breaches = store.breaches(from, now, now).await.expect("breaches");
    let reading = started.elapsed();
    let keys: Vec<String> = breaches.iter().map(|b| b.key.clone()).collect();
    let started = Instant::now();
    let last = store.last_failures(&keys).await.expect("last failures");
    let failures = started.elapsed();
    println!(
        "  its reads over the full ledger, once each: counted {counted} rows in {} ms; breaches, \
         {} rows in {} ms; their last failures, {} in {} ms",
        ms(counting),
        breaches.len(),
        ms(reading),
        last.len(),
        ms(failures)
    );
    store.close().await;
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let notifications: i64 = env("CONSOLE_NOTIFICATIONS", 1_000_000);
    let runs: usize = env("CONSOLE_RUNS", 20).max(1);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let core = Arc::new(Core::load(&root.join("routes.toml")).expect("routes.toml loads"));

    let (url, filled) = million(notifications).await;
    let empty_dir = tempfile::tempdir().expect("temp dir");
    let empty_url = herald::ledger::sqlite_url(&empty_dir.path().join("empty.sqlite"));
    Store::open(&empty_url, Sync::Normal, Health::default())
        .await
        .expect("the empty ledger")
        .close()
        .await;

    let shutdown = CancellationToken::new();
    let big = console(&core, &url, &shutdown).await;
    let empty = console(&core, &empty_url, &shutdown).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // An event with a notification delivered late (two attempts) and one other.
    let fill = fill(notifications, filled.timestamp_millis());
    let (cycle, healthy) = healthy();
    let late = (fill.notifications / 2..fill.notifications)
        .find(|i| {
            (LATE.0..LATE.1).contains(&(((i * 7919) % 10000) as u32))
                && !healthy.contains(&((i % cycle as i64) as usize))
        })
        .unwrap_or(0);
    let event = format!("evt-{}", late / 2);
    let person = Persons::noms(PERSON);
    let pages = [
        "/console".to_owned(),
        format!("/console/search?person={person}"),
        format!("/console/search?recipient={RECIPIENT}"),
        "/console/search?status=parked".to_owned(),
        format!("/console/event?id={event}"),
        "/console/endpoints".to_owned(),
        format!("/console/endpoints/{RECIPIENT}/webhook"),
        format!("/console/endpoints/{RECIPIENT}/email"),
        "/console/audit".to_owned(),
        // The report's page before a period is asked for: the form, nothing counted.
        "/console/report".to_owned(),
        "/api/v1/overview".to_owned(),
        format!("/api/v1/notifications?person={person}"),
        format!("/api/v1/events/{event}"),
    ];
    println!(
        "the operator's console over {notifications} notifications (full) and over an empty \
         ledger, {runs} runs each; times in ms; load average {}",
        load()
    );
    println!(
        "{:<50} {:>9} {:>7} {:>10} {:>7} {:>7} {:>4} {:>5} {:>6} {:>10}",
        "page",
        "full: med",
        "max",
        "empty: med",
        "max",
        "ratio",
        "http",
        "rows",
        "bytes",
        "empty http"
    );
    for path in &pages {
        row(path, &time(&client, [&big, &empty], path, runs).await);
    }
    println!(
        "the inspectors' report, a period asked for (the last 30 days: every notification), \
         {} runs:",
        runs.min(5)
    );
    let report = "/console/report?from=30d";
    row(
        report,
        &time(&client, [&big, &empty], report, runs.min(5)).await,
    );
    parts(&url).await;
    println!("load average {}", load());
    shutdown.cancel();
}

//! Scaling of `herald serve` from one instance to two on this machine, and what limits one.
//!
//! Three configurations, each on queue names and a ledger of its own every time it runs:
//!
//! * `a`: one instance on a SQLite ledger (the default today);
//! * `b`: one instance on a PostgreSQL ledger (a fresh database on 127.0.0.1:5432);
//! * `c`: two instances (two `herald::serve::start` in this process, each with its own
//!   `Settings::instance`) on one PostgreSQL ledger, competing consumers of one queue.
//!
//! For each, Herald's topology is declared (an instance started and stopped), `EVENTS` bail
//! decisions are published with confirms while no instance runs, then the instance(s) start
//! and the time is taken until the webhook receiver (axum, in this process, on a thread and a
//! runtime of its own) has counted every expected notification (2 per event, distinct by
//! `webhook-id`): consumption throughput of a backlog, start-up included, publishing not. The
//! configurations run `RUNS` rounds, interleaved (a, b, c, a, b, c, ...) so the machine's
//! noise falls on all alike; the summary gives each one's median and spread (min–max) in
//! events/s and the ratios b/a and c/b.
//!
//! Where the machine's cores go during each measured drain, from /proc: this process's CPU
//! (utime + stime) less the receiver's thread (Herald), the receiver's thread, every
//! `postgres` process (the server's children that ended are in the postmaster's cutime), every
//! process of the user running RabbitMQ's `beam.smp`, and the rest of the machine's busy time
//! (other). Per event in ms of CPU, and in cores busy on average.
//!
//! PostgreSQL's side, for the PostgreSQL ledgers: the transactions committed in the run's
//! database (`pg_stat_database`) and the WAL flushes and bytes of the whole server
//! (`pg_stat_wal`), read with the database's connections ended before and after. Herald's
//! ledger writer(s): group commits, and the share of the drain they spent committing.
//!
//! Before each measured drain the benchmark waits up to `QUIET_SECS` (default 10) for a
//! second in which the machine is nearly idle, and says so when it never is; the CPU of
//! other processes during the drain is reported as `other` either way.
//!
//! Warnings and errors Herald logs go to stderr (RUST_LOG, default `warn`) and are counted per
//! run. Queues (Herald's retry queues too), exchanges, databases and files are removed at the
//! end of each run, and queues an earlier run left (its process gone) at the start. Needs
//! RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on 127.0.0.1:5432 (user postgres,
//! no password, allowed to create databases).
//!
//! `cargo bench --locked --bench scaling` (EVENTS=n events per run, default 5000; RUNS=n
//! rounds, default 3; QUIET_SECS=n).

mod support;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use herald::config::Config;
use herald::core::Core;
use herald::serve::{self, Running, Settings};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SECRET: &str = "whsec_dGhyb3VnaHB1dC1iZW5jaG1hcmstc2VjcmV0LWtleQ==";
/// A run fails when no new notification arrives for this long.
const STALL: Duration = Duration::from_secs(30);

fn secret(k: &str) -> Option<String> {
    (k == "HERALD_WEBHOOK_SECRET").then(|| SECRET.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The configurations.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Sqlite,
    Postgres,
    TwoPostgres,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Sqlite, Variant::Postgres, Variant::TwoPostgres];

    fn key(self) -> char {
        match self {
            Variant::Sqlite => 'a',
            Variant::Postgres => 'b',
            Variant::TwoPostgres => 'c',
        }
    }

    fn title(self) -> &'static str {
        match self {
            Variant::Sqlite => "1 instance, SQLite",
            Variant::Postgres => "1 instance, PostgreSQL",
            Variant::TwoPostgres => "2 instances, PostgreSQL",
        }
    }

    fn instances(self) -> usize {
        match self {
            Variant::TwoPostgres => 2,
            _ => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver, on a thread of its own so its CPU can be told from Herald's.

#[derive(Default)]
struct Tally {
    requests: usize,
    ids: HashSet<String>,
    target: usize,
    first: Option<Instant>,
    done: Option<Instant>,
}

struct Receiver {
    port: u16,
    /// The receiver thread's id, for /proc/self/task/<tid>/stat.
    tid: Option<u32>,
    tally: Mutex<Tally>,
}

impl Receiver {
    /// Starts the receiver on a current-thread runtime on a thread named `receiver`.
    fn start() -> Arc<Receiver> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse().ok());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    let port = listener.local_addr().expect("addr").port();
                    let receiver = Arc::new(Receiver {
                        port,
                        tid,
                        tally: Mutex::new(Tally::default()),
                    });
                    tx.send(Arc::clone(&receiver)).expect("main waits");
                    let app = Router::new().fallback(move |headers: HeaderMap, _body: Bytes| {
                        let receiver = Arc::clone(&receiver);
                        async move {
                            let now = Instant::now();
                            let id = headers
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let mut t = receiver.tally.lock().expect("tally");
                            t.requests += 1;
                            t.first.get_or_insert(now);
                            if t.ids.insert(id) && t.ids.len() == t.target {
                                t.done = Some(now);
                            }
                            StatusCode::NO_CONTENT
                        }
                    });
                    let _ = axum::serve(listener, app).await;
                });
            })
            .expect("receiver thread");
        rx.recv().expect("receiver started")
    }

    /// Forgets the last run's notifications; `target` distinct ones make the next run done.
    fn reset(&self, target: usize) {
        *self.tally.lock().expect("tally") = Tally {
            target,
            ..Tally::default()
        };
    }

    /// Distinct notifications so far, and when the last expected one came.
    fn progress(&self) -> (usize, Option<Instant>) {
        let t = self.tally.lock().expect("tally");
        (t.ids.len(), t.done)
    }
}

// ---------------------------------------------------------------------------------------------
// CPU from /proc.

/// Clock ticks per second of /proc's times.
fn hz() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime, and with `children` also cutime + cstime, in ticks, from a `stat` file.
fn stat_ticks(path: &Path, children: bool) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Option<u64> { Some(f.get(i)?.parse::<i64>().ok()?.max(0) as u64) };
    let mut ticks = field(11)? + field(12)?;
    if children {
        ticks += field(13)? + field(14)?;
    }
    Some(ticks)
}

/// The uid RabbitMQ's `beam.smp` runs as, found once.
fn broker_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "beam.smp")
            })
            .and_then(|e| e.metadata().ok())
            .map(|m| m.uid())
    })
}

/// Cumulative ticks at one moment.
#[derive(Clone, Copy, Default)]
struct Cpu {
    process: u64,
    receiver: u64,
    postgres: u64,
    broker: u64,
    machine_busy: u64,
}

impl Cpu {
    fn sample(receiver_tid: Option<u32>) -> Cpu {
        let mut cpu = Cpu {
            process: stat_ticks(Path::new("/proc/self/stat"), false).unwrap_or(0),
            receiver: receiver_tid
                .and_then(|t| stat_ticks(Path::new(&format!("/proc/self/task/{t}/stat")), false))
                .unwrap_or(0),
            ..Cpu::default()
        };
        let me = std::process::id();
        let my_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        let broker_uid = broker_uid().filter(|u| Some(*u) != my_uid);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                let comm = comm.trim();
                let broker = match broker_uid {
                    Some(uid) => e.metadata().is_ok_and(|m| m.uid() == uid),
                    None => comm == "beam.smp",
                };
                if comm == "postgres" {
                    // A backend that ended is in the postmaster's cutime + cstime.
                    cpu.postgres += stat_ticks(&e.path().join("stat"), true).unwrap_or(0);
                } else if broker {
                    cpu.broker += stat_ticks(&e.path().join("stat"), true).unwrap_or(0);
                }
            }
        }
        cpu.machine_busy = machine_busy();
        cpu
    }
}

/// Busy ticks of the whole machine, all cores (user nice system irq softirq steal).
fn machine_busy() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle)
}

/// Waits, up to `max`, for a second in which the machine is nearly idle (under 0.3 cores
/// busy: a build or a test elsewhere would distort the figures); says so when it is not.
async fn wait_quiet(max: Duration, key: &str) {
    let deadline = Instant::now() + max;
    loop {
        let before = Cpu::sample(None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = Used::between(before, Cpu::sample(None));
        if used.busy < 0.3 {
            return;
        }
        if Instant::now() >= deadline {
            println!(
                "[{key}] the machine is not quiet after {} s: {:.2} cores busy in the last second \
                 (PostgreSQL {:.2}, RabbitMQ {:.2}, this process {:.2}, other {:.2}); measuring anyway",
                max.as_secs(),
                used.busy,
                used.postgres,
                used.broker,
                used.herald,
                used.other,
            );
            return;
        }
    }
}

/// Cores of the machine, as /proc/stat lists them.
fn cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

/// CPU seconds used between two samples.
#[derive(Clone, Copy, Default)]
struct Used {
    herald: f64,
    receiver: f64,
    postgres: f64,
    broker: f64,
    other: f64,
    busy: f64,
}

impl Used {
    fn between(a: Cpu, b: Cpu) -> Used {
        let s = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz();
        let process = s(a.process, b.process);
        let receiver = s(a.receiver, b.receiver);
        let postgres = s(a.postgres, b.postgres);
        let broker = s(a.broker, b.broker);
        let busy = s(a.machine_busy, b.machine_busy);
        Used {
            herald: (process - receiver).max(0.0),
            receiver,
            postgres,
            broker,
            other: (busy - process - postgres - broker).max(0.0),
            busy,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Herald's warnings, counted.

static WARNINGS: AtomicUsize = AtomicUsize::new(0);

struct CountWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level == tracing::Level::WARN || level == tracing::Level::ERROR {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run.

struct Bench {
    root: PathBuf,
    config: Config,
    receiver: Arc<Receiver>,
    channel: Channel,
    connection: Connection,
    body: Vec<u8>,
    events: usize,
    quiet: Duration,
}

struct Names {
    exchange: String,
    queue: String,
    rejected: String,
    failed: String,
}

struct Outcome {
    secs: f64,
    first_after: f64,
    delivered: usize,
    requests: usize,
    preloaded: u32,
    used: Used,
    /// Events each instance received, from its metrics.
    handled: Vec<f64>,
    commits: f64,
    /// Seconds the ledger writers spent writing and committing groups, all instances.
    commit_secs: f64,
    /// What PostgreSQL committed and flushed during the run (PostgreSQL ledgers).
    pg: Option<PgCounters>,
    held_elsewhere: f64,
    duplicates: f64,
    failures: f64,
    warnings: usize,
}

impl Outcome {
    fn events_per_sec(&self, events: usize) -> f64 {
        events as f64 / self.secs
    }
}

/// The sum of every sample of metric `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// PostgreSQL's counters for database `name`: transactions committed in it, and the
/// server's WAL flushes (fsyncs) and bytes, all databases. Its connections are ended first,
/// so that what they did is counted (a backend reports at its exit, or when idle for a while).
async fn pg_counters(name: &str) -> Option<PgCounters> {
    use sqlx::{Connection as _, Row as _};
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", support::POSTGRES))
        .await
        .ok()?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await
    .ok()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = sqlx::query(
        "SELECT d.xact_commit, w.wal_sync, w.wal_bytes::bigint, w.wal_sync_time \
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .ok()?;
    let _ = admin.close().await;
    Some(PgCounters {
        commits: row.try_get(0).ok()?,
        wal_syncs: row.try_get(1).ok()?,
        wal_bytes: row.try_get(2).ok()?,
        wal_sync_ms: row.try_get(3).ok()?,
    })
}

/// Has PostgreSQL time the WAL fsyncs of database `name`'s sessions (`track_wal_io_timing`
/// for that database alone, which is dropped at the end of the run).
async fn time_wal_syncs(name: &str) {
    use sqlx::{Connection as _, Executor as _};
    if let Ok(mut admin) =
        sqlx::PgConnection::connect(&format!("{}/postgres", support::POSTGRES)).await
    {
        if let Err(e) = admin
            .execute(format!("ALTER DATABASE {name} SET track_wal_io_timing = on").as_str())
            .await
        {
            eprintln!("WAL fsyncs not timed: {e}");
        }
        let _ = admin.close().await;
    }
}

#[derive(Clone, Copy)]
struct PgCounters {
    commits: i64,
    wal_syncs: i64,
    wal_bytes: i64,
    /// Time spent in WAL fsyncs by the sessions that time them (the run's database's).
    wal_sync_ms: f64,
}

impl PgCounters {
    fn since(self, before: PgCounters) -> PgCounters {
        PgCounters {
            commits: self.commits - before.commits,
            wal_syncs: self.wal_syncs - before.wal_syncs,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_sync_ms: self.wal_sync_ms - before.wal_sync_ms,
        }
    }
}

impl Bench {
    /// An instance's core and settings, on `names` and `ledger`, called `instance`.
    fn settings(
        &self,
        names: &Names,
        ledger: &str,
        scratch: &Path,
        instance: &str,
    ) -> Result<(Core, Settings), String> {
        let core = Core::from_config(self.config.clone(), &self.root.join("routes.toml"))
            .map_err(|e| e.join("; "))?;
        let mut s = Settings::new(&core.config, |_| None);
        s.amqp_urls = vec![AMQP.into()];
        s.exchange = names.exchange.clone();
        s.queue = names.queue.clone();
        s.rejected_queue = names.rejected.clone();
        s.failed_queue = names.failed.clone();
        s.metrics_addr = "127.0.0.1:0".into();
        s.outbox = scratch.join("outbox");
        s.connection_name = instance.to_owned();
        s.instance = instance.to_owned();
        s.ledger_url = ledger.to_owned();
        Ok((core, s))
    }

    /// Configuration `v`'s round `round`: its own queues and ledger, removed at the end.
    async fn run(&self, v: Variant, round: usize) -> Result<Outcome, String> {
        let key = format!("{}{round}", v.key());
        let tag = format!("herald.scaling.{}.{key}", std::process::id());
        let names = Names {
            exchange: format!("{tag}.events"),
            queue: format!("{tag}.queue"),
            rejected: format!("{tag}.rejected"),
            failed: format!("{tag}.failed"),
        };
        let scratch = tempfile::Builder::new()
            .prefix("herald-scaling-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?;
        let (ledger, database) = match v {
            Variant::Sqlite => (
                herald::ledger::sqlite_url(&scratch.path().join("ledger.sqlite")),
                None,
            ),
            Variant::Postgres | Variant::TwoPostgres => {
                let (url, name) = support::create_database(&format!("scaling_{key}"))
                    .await
                    .map_err(|e| format!("PostgreSQL at {}: {e}", support::POSTGRES))?;
                time_wal_syncs(&name).await;
                (url, Some(name))
            }
        };
        let outcome = self
            .measure(
                v,
                &key,
                &names,
                &ledger,
                database.as_deref(),
                scratch.path(),
            )
            .await;
        self.delete(&names).await;
        if let Some(name) = database {
            support::drop_database(&name).await;
        }
        outcome
    }

    async fn measure(
        &self,
        v: Variant,
        key: &str,
        names: &Names,
        ledger: &str,
        database: Option<&str>,
        scratch: &Path,
    ) -> Result<Outcome, String> {
        // Herald declares its own topology (and makes the ledger's tables): started and stopped.
        let (core, s) = self.settings(names, ledger, scratch, &format!("scaling-{key}-declare"))?;
        serve::start(Arc::new(core), s, secret)
            .await
            .map_err(|e| format!("herald does not start: {e}"))?
            .stop()
            .await
            .map_err(|e| format!("herald does not stop: {e}"))?;

        self.publish(&names.exchange, key).await?;
        let preloaded = self.depth(&names.queue).await.unwrap_or(0);

        let prepared = (0..v.instances())
            .map(|k| self.settings(names, ledger, scratch, &format!("scaling-{key}-{k}")))
            .collect::<Result<Vec<_>, _>>()?;
        let expected = self.events * 2;
        wait_quiet(self.quiet, key).await;
        let pg_before = match database {
            Some(name) => pg_counters(name).await,
            None => None,
        };
        self.receiver.reset(expected);
        let warnings = WARNINGS.load(Ordering::Relaxed);
        let before = Cpu::sample(self.receiver.tid);
        let t0 = Instant::now();
        let started = futures_util::future::join_all(
            prepared
                .into_iter()
                .map(|(core, s)| serve::start(Arc::new(core), s, secret)),
        )
        .await;
        let mut running: Vec<Running> = Vec::new();
        let mut failed = None;
        for r in started {
            match r {
                Ok(r) => running.push(r),
                Err(e) => failed = Some(format!("herald does not start: {e}")),
            }
        }

        let mut stalled = None;
        let mut done = None;
        if failed.is_none() {
            let (mut seen, mut moved) = (0, Instant::now());
            loop {
                let (n, end) = self.receiver.progress();
                if end.is_some() {
                    done = end;
                    break;
                }
                if n != seen {
                    (seen, moved) = (n, Instant::now());
                } else if moved.elapsed() > STALL {
                    stalled = Some(format!(
                        "stalled: {n} of {expected} notifications, none for {} s",
                        STALL.as_secs()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let after = Cpu::sample(self.receiver.tid);
        let texts: Vec<String> = running.iter().map(|r| r.metrics.render()).collect();
        for stopped in futures_util::future::join_all(running.into_iter().map(Running::stop)).await
        {
            if let Err(e) = stopped {
                eprintln!("[{key}] herald did not stop cleanly: {e}");
            }
        }
        if let Some(e) = failed.or(stalled) {
            return Err(e);
        }
        let pg = match (database, pg_before) {
            (Some(name), Some(before)) => pg_counters(name).await.map(|after| after.since(before)),
            _ => None,
        };
        let done = done.expect("done when not stalled");
        let tally = self.receiver.tally.lock().expect("tally");
        let sum = |name: &str| texts.iter().map(|t| metric(t, name)).sum::<f64>();
        Ok(Outcome {
            secs: (done - t0).as_secs_f64(),
            first_after: tally.first.map_or(0.0, |f| (f - t0).as_secs_f64()),
            delivered: tally.ids.len(),
            requests: tally.requests,
            preloaded,
            used: Used::between(before, after),
            handled: texts
                .iter()
                .map(|t| metric(t, "herald_events_received_total"))
                .collect(),
            commits: sum("herald_ledger_commit_seconds_count"),
            commit_secs: sum("herald_ledger_commit_seconds_sum"),
            pg,
            held_elsewhere: sum("herald_events_held_elsewhere_total"),
            duplicates: sum("herald_events_duplicate_total"),
            failures: sum("herald_delivery_failures_total"),
            warnings: WARNINGS.load(Ordering::Relaxed) - warnings,
        })
    }

    /// `events` bail decisions, persistent, published with confirms in batches of 500.
    async fn publish(&self, exchange: &str, key: &str) -> Result<(), String> {
        let ids: Vec<usize> = (0..self.events).collect();
        for chunk in ids.chunks(500) {
            for i in chunk {
                let props = BasicProperties::default()
                    .with_message_id(format!("scaling-{key}-{i}").into())
                    .with_user_id("guest".into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                self.channel
                    .basic_publish(
                        exchange.into(),
                        "court.bail.decided".into(),
                        BasicPublishOptions::default(),
                        &self.body,
                        props,
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
            }
            self.channel
                .wait_for_confirms()
                .await
                .map_err(|e| format!("confirms: {e}"))?;
        }
        Ok(())
    }

    /// Messages ready in `queue`.
    async fn depth(&self, queue: &str) -> Option<u32> {
        let ch = self.connection.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = ch.close(200, "done".into()).await;
        q.map(|q| q.message_count())
    }

    /// Deletes the run's queues (the events queue, the parking queues, and the deliveries and
    /// delay queues of the retries) and its exchange.
    async fn delete(&self, names: &Names) {
        let mut s = Settings::new(&self.config, |_| None);
        s.queue = names.queue.clone();
        s.rejected_queue = names.rejected.clone();
        s.failed_queue = names.failed.clone();
        let mut queues = vec![
            names.queue.clone(),
            names.rejected.clone(),
            names.failed.clone(),
        ];
        queues.extend(herald::serve::retry::queues(&s));
        for q in &queues {
            if let Err(e) = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                eprintln!("cannot delete queue {q}: {e}");
            }
        }
        if let Err(e) = self
            .channel
            .exchange_delete(
                names.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
        {
            eprintln!("cannot delete exchange {}: {e}", names.exchange);
        }
    }
}

/// Names of the broker's queues or exchanges (`what`: `list_queues`, `list_exchanges`) that
/// start with `herald.scaling.`, from rabbitmqctl when it is at hand.
fn rabbitmqctl_names(what: &str) -> Vec<String> {
    Command::new("rabbitmqctl")
        .args([what, "name", "-q"])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| l.starts_with("herald.scaling."))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the queues and exchanges an earlier run of this benchmark left (one that did not
/// finish, say): `herald.scaling.<pid>.*` of a process that is gone.
async fn delete_stale(channel: &Channel) {
    let me = std::process::id().to_string();
    let gone = |name: &str| {
        let pid = name.split('.').nth(2).unwrap_or_default();
        !pid.is_empty() && pid != me && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let queues: Vec<String> = rabbitmqctl_names("list_queues")
        .into_iter()
        .filter(|n| gone(n))
        .collect();
    let exchanges: Vec<String> = rabbitmqctl_names("list_exchanges")
        .into_iter()
        .filter(|n| gone(n))
        .collect();
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    println!(
        "removing {} queues and {} exchanges left by earlier runs of this benchmark (their process is gone)",
        queues.len(),
        exchanges.len()
    );
    for q in &queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in &exchanges {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn per_run_line(v: Variant, round: usize, runs: usize, events: usize, o: &Outcome) -> String {
    let u = &o.used;
    let ms = |s: f64| s / events as f64 * 1000.0;
    let split = if o.handled.len() > 1 {
        format!(
            "; events per instance {}",
            o.handled
                .iter()
                .map(|h| format!("{h:.0}"))
                .collect::<Vec<_>>()
                .join("/")
        )
    } else {
        String::new()
    };
    let pg = o.pg.map_or(String::new(), |p| {
        format!(
            "; PostgreSQL: {} transactions committed in the ledger's database ({:.2} per event), \
             {} WAL flushes ({:.2} per event), {:.1} MB of WAL (server-wide); the run's sessions \
             in WAL fsyncs {:.2} s ({:.0} % of the drain, {:.2} ms per fsync timed)",
            p.commits,
            p.commits as f64 / events as f64,
            p.wal_syncs,
            p.wal_syncs as f64 / events as f64,
            p.wal_bytes as f64 / 1e6,
            p.wal_sync_ms / 1000.0,
            p.wal_sync_ms / 1000.0 / o.secs * 100.0,
            p.wal_sync_ms / p.wal_syncs.max(1) as f64,
        )
    });
    format!(
        "[{k}{round} {title}, round {round}/{runs}] {events} events ({pre} waiting) in {secs:.2} s = \
         {eps:.0} events/s, first webhook after {first:.2} s; {del} notifications ({req} requests); \
         CPU ms/event: Herald {h:.3}, receiver {r:.3}, PostgreSQL {p:.3}, RabbitMQ {b:.3}, other {o2:.3}; \
         cores busy {busy:.2}; ledger: {c:.0} group commits, writer(s) committing {lb:.0} % of the time; \
         held elsewhere {he:.0}; duplicates {d:.0}; delivery failures {f:.0}; warnings logged {w}{split}{pg}",
        k = v.key(),
        title = v.title(),
        pre = o.preloaded,
        secs = o.secs,
        eps = o.events_per_sec(events),
        first = o.first_after,
        del = o.delivered,
        req = o.requests,
        h = ms(u.herald),
        r = ms(u.receiver),
        p = ms(u.postgres),
        b = ms(u.broker),
        o2 = ms(u.other),
        busy = u.busy / o.secs,
        c = o.commits,
        lb = o.commit_secs / (o.secs * o.handled.len().max(1) as f64) * 100.0,
        he = o.held_elsewhere,
        d = o.duplicates,
        f = o.failures,
        w = o.warnings,
    )
}

#[tokio::main]
async fn main() {
    let events: usize = support::env("EVENTS", 5000usize).max(1);
    let runs: usize = support::env("RUNS", 3usize).max(1);
    let quiet = Duration::from_secs(support::env("QUIET_SECS", 10u64));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(CountWarnings)
        .init();
    let began = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();

    let receiver = Receiver::start();
    let config = support::bail_to_two_webhooks(&root, receiver.port);
    let body = std::fs::read(root.join("schemas/examples/valid/court.bail.decided.json"))
        .expect("example");
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let bench = Bench {
        root: root.clone(),
        config,
        receiver,
        channel,
        connection,
        body,
        events,
        quiet,
    };

    let commit = git(&root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let args: Vec<String> = std::env::args().collect();
    println!(
        "herald scaling benchmark: commit {commit}{}",
        if dirty {
            " (with uncommitted changes in the working tree)"
        } else {
            ""
        }
    );
    println!("command: EVENTS={events} RUNS={runs} cargo bench --locked --bench scaling");
    println!("binary:  {}", args.join(" "));
    println!(
        "machine: {} cores, {} clock ticks/s; RUST_LOG={}",
        cores(),
        hz(),
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn (default)".into())
    );
    println!(
        "each run: {events} events waiting in a fresh queue, 2 webhooks each; rounds interleaved a, b, c\n"
    );

    delete_stale(&bench.channel).await;
    let mut results: Vec<Vec<Option<Outcome>>> = Variant::ALL.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            match bench.run(v, round).await {
                Ok(o) => {
                    println!("{}", per_run_line(v, round, runs, events, &o));
                    results[i].push(Some(o));
                }
                Err(e) => {
                    println!(
                        "[{}{round} {}, round {round}/{runs}] FAILED: {e}",
                        v.key(),
                        v.title()
                    );
                    results[i].push(None);
                }
            }
        }
    }

    // The summary.
    let n_cores = cores() as f64;
    let eps = |i: usize| -> Vec<f64> {
        results[i]
            .iter()
            .flatten()
            .map(|o| o.events_per_sec(events))
            .collect()
    };
    let med = |i: usize, f: &dyn Fn(&Outcome) -> f64| -> f64 {
        median(results[i].iter().flatten().map(f).collect())
    };
    println!(
        "\nsummary ({events} events per run, {runs} rounds, median of the runs that finished)\n"
    );
    println!(
        "{:<28} {:>5} {:>9} {:>17} | {:>29} | {:>7}",
        "configuration", "runs", "events/s", "min–max", "CPU ms/event (Herald/PG/RMQ/recv)", "warn"
    );
    for (i, v) in Variant::ALL.into_iter().enumerate() {
        let e = eps(i);
        let (min, max) = spread(&e);
        let ms = |f: fn(&Used) -> f64| med(i, &|o: &Outcome| f(&o.used) / events as f64 * 1000.0);
        let warnings: usize = results[i].iter().flatten().map(|o| o.warnings).sum();
        println!(
            "{:<28} {:>5} {:>9.0} {:>17} | {:>6.3} {:>6.3} {:>6.3} {:>6.3}        | {:>7}",
            format!("{} {}", v.key(), v.title()),
            format!("{}/{}", e.len(), results[i].len()),
            median(e.clone()),
            format!("{min:.0}–{max:.0}"),
            ms(|u| u.herald),
            ms(|u| u.postgres),
            ms(|u| u.broker),
            ms(|u| u.receiver),
            warnings,
        );
    }
    println!(
        "\n{:<28} {:>7} {:>10} {:>8} {:>8} {:>6} {:>6}   (cores busy on average during the drain, of {n_cores})",
        "where the cores go", "Herald", "PostgreSQL", "RabbitMQ", "receiver", "other", "idle"
    );
    for (i, v) in Variant::ALL.into_iter().enumerate() {
        let cores_of = |f: fn(&Used) -> f64| med(i, &|o: &Outcome| f(&o.used) / o.secs);
        let busy = cores_of(|u| u.busy);
        println!(
            "{:<28} {:>7.2} {:>10.2} {:>8.2} {:>8.2} {:>6.2} {:>6.2}",
            format!("{} {}", v.key(), v.title()),
            cores_of(|u| u.herald),
            cores_of(|u| u.postgres),
            cores_of(|u| u.broker),
            cores_of(|u| u.receiver),
            cores_of(|u| u.other),
            (n_cores - busy).max(0.0),
        );
    }
    println!(
        "\n{:<28} {:>14} {:>11} {:>16} {:>17} {:>14}",
        "ledger",
        "group commits",
        "writer busy",
        "PG commits/event",
        "WAL flushes/event",
        "WAL fsync busy"
    );
    for (i, v) in Variant::ALL.into_iter().enumerate() {
        let pg = |f: &dyn Fn(&PgCounters, &Outcome) -> f64, unit: &str| -> String {
            let m = med(i, &|o: &Outcome| {
                o.pg.as_ref().map_or(f64::NAN, |p| f(p, o))
            });
            if m.is_nan() {
                "-".into()
            } else if unit == "%" {
                format!("{m:.0}%")
            } else {
                format!("{m:.2}")
            }
        };
        let per_event = events as f64;
        println!(
            "{:<28} {:>14.0} {:>10.0}% {:>16} {:>17} {:>14}",
            format!("{} {}", v.key(), v.title()),
            med(i, &|o: &Outcome| o.commits),
            med(i, &|o: &Outcome| o.commit_secs
                / (o.secs * o.handled.len().max(1) as f64)
                * 100.0),
            pg(&|p, _| p.commits as f64 / per_event, ""),
            pg(&|p, _| p.wal_syncs as f64 / per_event, ""),
            pg(&|p, o| p.wal_sync_ms / 1000.0 / o.secs * 100.0, "%"),
        );
    }
    let (a, b, c) = (median(eps(0)), median(eps(1)), median(eps(2)));
    let by_round = |x: usize, y: usize| -> String {
        (0..runs)
            .map(|r| match (&results[x][r], &results[y][r]) {
                (Some(p), Some(q)) => {
                    format!("{:.2}", q.events_per_sec(events) / p.events_per_sec(events))
                }
                _ => "-".into(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nratios of the medians: b/a = {:.2} (PostgreSQL ledger vs SQLite, one instance); \
         c/b = {:.2} (two instances vs one, PostgreSQL)",
        b / a,
        c / b
    );
    println!(
        "round by round: b/a {}; c/b {}",
        by_round(0, 1),
        by_round(1, 2)
    );
    let failed: usize = results.iter().flatten().filter(|o| o.is_none()).count();
    if failed > 0 {
        println!("runs failed: {failed} (see above)");
    }
    let _ = bench.channel.close(200, "done".into()).await;
    let _ = bench.connection.close(200, "done".into()).await;
    println!(
        "\ncommit {commit}; command: EVENTS={events} RUNS={runs} cargo bench --locked --bench scaling; took {:.0} s",
        began.elapsed().as_secs_f64()
    );
}

//! End-to-end benchmark of `herald serve` against a raw baseline, on this machine's RabbitMQ.
//!
//! Herald runs as its release binary, a child process with a configuration of its own (queue
//! and exchange names unique to the run, deleted at the end). Events are published with
//! publisher confirms from a thread of their own; a webhook receiver (axum, in this process)
//! answers 204 and records when each notification arrives, and for the scenarios with email an
//! SMTP server, a child process, reports each message's Message-ID as it takes it. Latency is
//! arrival minus publish, per notification.
//!
//! The SMTP server is this binary started again with `--smtp-sink` (`support/smtp_sink.rs`: a
//! tokio server on one thread that speaks what lettre uses and takes every message), or with
//! `E2E_SMTP=python` Python's aiosmtpd (one process), the server before the sink, which holds
//! `mixed` to about 310 events/s. Either way its CPU is read from /proc apart, and it reports
//! each connection it takes, so the SMTP connections each consumer opened, and the most open
//! at once, are printed too.
//!
//! The baseline is this binary started again with `--baseline-consumer`: a bare lapin consumer
//! with Herald's prefetch, on a quorum queue of its own, that sends the raw event body to the
//! same endpoints (as many requests and emails per event as Herald makes notifications, with
//! Herald's per-endpoint concurrency) and then acknowledges. No validation, routing, rendering,
//! signing, logging or metrics. CPU (utime + stime) and peak RSS (VmHWM) are read from /proc
//! for both child processes the same way.
//!
//! Scenarios (run all, or name some: `cargo bench --locked --bench e2e -- throughput latency`):
//!
//! * `throughput`: as fast as possible, bail decisions to two recipients by webhook
//!   (`E2E_EVENTS`, default 20,000). Two more rows follow Herald's and the baseline's (not with
//!   `E2E_VARIANTS`; `E2E_PEERS=0` leaves them out):
//!   - the peer, Prometheus Alertmanager, when `prometheus-alertmanager` is on PATH (Debian's
//!     package; otherwise one line says it was skipped): a child process with a configuration
//!     in the run's temp folder (clustering off), one receiver with two `webhook_configs` to the
//!     same receiver paths as Herald's two recipients, `group_by: ['...']` (no grouping: each
//!     alert is a notification of its own), `group_wait: 0s`, long group and repeat intervals.
//!     It gets the same number of events as alerts, posted to `/api/v2/alerts` in batches of
//!     100 as fast as it takes them from a thread of the bench (alertname `bail-decided`, the
//!     event id as label `event_id`, the event's description as an annotation); the receiver
//!     finds the `event_id` label in its webhook body. Measured as Herald: notifications/s from
//!     the first post to the last arrival, its process's CPU per notification;
//!   - the broker ceiling: the baseline consumer with `BASELINE_ACK_ONLY`, on a quorum queue of
//!     its own, with Herald's prefetch, acknowledging each event and doing nothing else (no
//!     HTTP); the same events published the same way. It prints its count of acknowledgements
//!     at most every 10 ms; events/s from the first publish to the last acknowledgement, and
//!     its CPU per event. The table gives Herald's events/s as a ratio of it;
//! * `mixed`: the same route with channels email and webhook: 2 emails + 2 webhooks per event
//!   (`E2E_MIXED_EVENTS`, default 3,000), to the sink;
//! * `email`: the same route with channel email only: 2 emails per event (`E2E_EMAIL_EVENTS`,
//!   default 4,000), over the consumer's pooled SMTP connections (Herald's `[email]
//!   connections`, the baseline's pool as large), measured twice: against the sink as any
//!   server answers (its kernel delays ACKs), then against the sink acknowledging at once
//!   (`TCP_QUICKACK` after every read), which removes the 40 ms lettre 0.11.23 waits for per
//!   message as `TCP_NODELAY` on lettre's side would (`E2E_EMAIL_QUICKACK=0` leaves that row
//!   out). Besides the table's columns: emails/s, the SMTP server's CPU per email, RabbitMQ's
//!   CPU per notification, and the SMTP connections opened;
//! * `latency`: a fixed rate (`E2E_RATE`, default 1,000 events/s) for `E2E_RATE_SECS` (15);
//! * `backlog`: `E2E_BACKLOG` events (default 200,000) published while the consumer is not
//!   running, then drained; `E2E_BACKLOG_BASELINE=0` skips the baseline's run, as does a run
//!   that has already taken `E2E_BUDGET_SECS` (default 300) when it would start.
//!
//! Herald's tuning: `E2E_PREFETCH` (default: routes.toml's `amqp.prefetch`),
//! `E2E_CONCURRENCY` (webhook `concurrency_per_endpoint`, default Herald's own; the baseline
//! takes the same, and the same SMTP pool size, `email.connections`), `E2E_HERALD_LOG`
//! (its `RUST_LOG`, default `info`, as in production). `E2E_STALL_SECS` (default 30): a
//! scenario fails when no notification arrives for that long. Each measurement first waits up
//! to `E2E_QUIET_SECS` (default 10) for the machine to be idle, and the CPU used by other
//! processes meanwhile is reported.
//!
//! `E2E_HERALD_TOML` adds tables to Herald's configuration (`[service]\ndedup_window = "0s"`,
//! say; a literal `\n` is a line break). `E2E_BASELINE=0` runs Herald alone (to try a setting
//! quickly); `E2E_HERALD_BIN=path` runs another build of Herald instead of this one's, to
//! compare two builds against the same baseline. `E2E_PERF_DIR=dir` records a `perf` profile
//! of each consumer's measured run there.
//!
//! Variants, to measure what the delivery ledger costs: `E2E_VARIANTS=noledger,sqlite,postgres`
//! runs each named consumer in turn instead of Herald and the baseline, `E2E_ROUNDS` times
//! (default 3) in the live scenarios, alternated (each round starts one further along the list),
//! and once each in `backlog`; the table then gives each variant's median and spread and its
//! ratio to the first variant of the list, round by round. `noledger` is another build started
//! with no `[ledger]` table (`E2E_NOLEDGER_BIN=path`: the last build before the ledger);
//! `sqlite` is this build with its SQLite ledger in a fresh folder each run; `postgres` is this
//! build with a fresh database each run, created and dropped by the benchmark on
//! `E2E_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`, a login that may create
//! databases); `herald` and `baseline` may be listed too. `E2E_LEDGER_TOML` adds lines to the
//! `[ledger]` table of the ledger variants (`synchronous = "normal"`, say). For the ledger
//! variants the rows written per second come from Herald's `herald_ledger_rows_total`, the
//! group commits made and their total time (`commits`, `commit ms`) from
//! `herald_ledger_commit_seconds`, and the CPU of PostgreSQL's processes is reported apart.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); Python 3 with aiosmtpd only with
//! `E2E_SMTP=python`.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use herald::event::EventId;
use herald::notification::{Channel as Medium, IdempotencyKey};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;

#[path = "support/smtp_sink.rs"]
mod smtp_sink;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SECRET: &str = "whsec_ZTJlLWJlbmNobWFyay1zaWduaW5nLXNlY3JldC1rZXk=";
const EVENT_TYPE: &str = "court.bail.decided";
const ROUTE: &str = "bail-two-recipients";
/// Herald's `[email] from` domain, the right-hand side of its Message-IDs.
const MAIL_DOMAIN: &str = "notify.example.gov.uk";
/// The two recipients: directory id, webhook path, email address (as in routes.toml).
const RECIPIENTS: [(&str, &str, &str); 2] = [
    (
        "police:WYP-LEEDS",
        "/police/WYP-LEEDS",
        "ppo.leeds@westyorkshire.police.example.uk",
    ),
    (
        "probation:PDU-LEEDS",
        "/probation/PDU-LEEDS",
        "leeds.pdu@probation.example.gov.uk",
    ),
];
/// Unconfirmed publishes in flight at once when publishing as fast as possible.
const WINDOW: usize = 1000;
/// Events published and delivered before each measured run, so connections are warm: a tenth
/// of the run, at most this many.
const WARMUP: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--baseline-consumer") => return baseline::main(),
        Some("--smtp-sink") => return smtp_sink::main(),
        _ => {}
    }
    // For reqwest, which reads Herald's /metrics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // cargo bench passes `--bench`; anything else not starting with `-` names a scenario.
    let wanted: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("receiver")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run(wanted));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !ok {
        std::process::exit(1);
    }
}

/// What one run of the benchmark is asked to do.
#[derive(Clone)]
struct Opts {
    events: usize,
    mixed_events: usize,
    email_events: usize,
    /// `E2E_SMTP`: the SMTP server the email scenarios send to.
    smtp_server: SmtpServer,
    /// `E2E_EMAIL_QUICKACK`: `email` measures against the sink acknowledging at once too.
    email_quickack: bool,
    rate: f64,
    rate_secs: f64,
    backlog: usize,
    backlog_baseline: bool,
    prefetch: u16,
    concurrency: usize,
    smtp_connections: u32,
    herald_log: String,
    stall: Duration,
    quiet: Duration,
    budget_secs: u64,
    baseline: bool,
    /// `E2E_PEERS`: in `throughput`, Alertmanager (when installed) and the broker ceiling too.
    peers: bool,
    /// `E2E_VARIANTS`: the consumers to measure in turn; empty: Herald, then the baseline.
    variants: Vec<System>,
    rounds: usize,
    noledger_bin: Option<PathBuf>,
    postgres_url: String,
    ledger_toml: Option<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

impl Opts {
    fn from_env() -> Opts {
        let config = herald::config::Config::load(&root().join("routes.toml"))
            .unwrap_or_else(|e| panic!("routes.toml: {e:#?}"));
        Opts {
            events: env_or("E2E_EVENTS", 20_000),
            mixed_events: env_or("E2E_MIXED_EVENTS", 3_000),
            email_events: env_or("E2E_EMAIL_EVENTS", 4_000),
            smtp_server: match std::env::var("E2E_SMTP").as_deref() {
                Err(_) | Ok("" | "sink") => SmtpServer::Sink,
                Ok("python") => SmtpServer::Python,
                Ok(other) => panic!("E2E_SMTP={other}: choose sink (the default) or python"),
            },
            email_quickack: env_or("E2E_EMAIL_QUICKACK", 1u8) != 0,
            rate: env_or("E2E_RATE", 1000.0),
            rate_secs: env_or("E2E_RATE_SECS", 15.0),
            backlog: env_or("E2E_BACKLOG", 200_000),
            backlog_baseline: env_or("E2E_BACKLOG_BASELINE", 1u8) != 0,
            prefetch: env_or("E2E_PREFETCH", config.amqp.prefetch),
            concurrency: env_or("E2E_CONCURRENCY", config.webhook.concurrency_per_endpoint),
            // The baseline's SMTP pool is as large as Herald's.
            smtp_connections: config.email.connections,
            herald_log: std::env::var("E2E_HERALD_LOG").unwrap_or_else(|_| "info".into()),
            stall: Duration::from_secs(env_or("E2E_STALL_SECS", 30)),
            quiet: Duration::from_secs(env_or("E2E_QUIET_SECS", 10)),
            budget_secs: env_or("E2E_BUDGET_SECS", 300),
            baseline: env_or("E2E_BASELINE", 1u8) != 0,
            peers: env_or("E2E_PEERS", 1u8) != 0,
            variants: std::env::var("E2E_VARIANTS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    System::parse(v).unwrap_or_else(|| {
                        panic!(
                            "E2E_VARIANTS: unknown variant {v}: choose from noledger, sqlite, postgres, herald, baseline"
                        )
                    })
                })
                .collect(),
            rounds: env_or("E2E_ROUNDS", 3usize).max(1),
            noledger_bin: std::env::var_os("E2E_NOLEDGER_BIN").map(PathBuf::from),
            postgres_url: std::env::var("E2E_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
                .trim_end_matches('/')
                .to_owned(),
            ledger_toml: std::env::var("E2E_LEDGER_TOML").ok(),
        }
    }

    /// The consumers each scenario measures, in order.
    fn systems(&self) -> Vec<System> {
        if !self.variants.is_empty() {
            self.variants.clone()
        } else if self.baseline {
            vec![System::Herald, System::Baseline]
        } else {
            vec![System::Herald]
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// What the receivers saw.

/// One notification as it arrived: the event's index, which of the four notifications
/// (0, 1: webhooks; 2, 3: emails), and when (ns since the run's base instant).
#[derive(Clone, Copy)]
struct Arrival {
    event: u32,
    slot: u8,
    at: u64,
}

/// The notifications of one measured (or warm-up) publication.
struct Phase {
    id: u32,
    /// Bit per slot, per event: which notifications have arrived at least once.
    seen: Vec<AtomicU8>,
    unique: AtomicUsize,
    total: AtomicUsize,
    arrivals: Mutex<Vec<Arrival>>,
    /// Herald's email Message-IDs -> (event, slot); the baseline's carry the event id.
    email_keys: HashMap<String, (u32, u8)>,
}

impl Phase {
    fn new(id: u32, events: usize, herald_emails: bool) -> Phase {
        let mut email_keys = HashMap::new();
        if herald_emails {
            for i in 0..events {
                // Herald derives the key from the publisher (the broker-verified user_id) too.
                let event = EventId::published("guest", event_id(id, i));
                for (slot, (recipient, _, _)) in RECIPIENTS.iter().enumerate() {
                    let key = IdempotencyKey::derive(&event, ROUTE, recipient, Medium::Email);
                    email_keys.insert(format!("<{key}@{MAIL_DOMAIN}>"), (i as u32, 2 + slot as u8));
                }
            }
        }
        Phase {
            id,
            seen: (0..events).map(|_| AtomicU8::new(0)).collect(),
            unique: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::with_capacity(events * 2)),
            email_keys,
        }
    }

    fn record(&self, event: u32, slot: u8, at: u64) {
        let Some(seen) = self.seen.get(event as usize) else {
            return;
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        if seen.fetch_or(1 << slot, Ordering::Relaxed) & (1 << slot) == 0 {
            self.unique.fetch_add(1, Ordering::Relaxed);
        }
        self.arrivals
            .lock()
            .unwrap()
            .push(Arrival { event, slot, at });
    }
}

/// Shared by the webhook receiver and the SMTP reader.
struct Sink {
    base: Instant,
    phase: RwLock<Option<Arc<Phase>>>,
    /// SMTP connections the server has taken so far.
    smtp_opened: AtomicUsize,
    /// SMTP connections open now, and the most open at once since [`Sink::smtp_mark`].
    smtp_open: AtomicUsize,
    smtp_peak: AtomicUsize,
}

/// SMTP connections in one measured run.
#[derive(Clone, Copy)]
struct SmtpConnections {
    opened: usize,
    peak: usize,
}

impl Sink {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn current(&self) -> Option<Arc<Phase>> {
        self.phase.read().unwrap().clone()
    }

    fn begin(&self, phase: Phase) -> Arc<Phase> {
        let phase = Arc::new(phase);
        *self.phase.write().unwrap() = Some(Arc::clone(&phase));
        phase
    }

    fn webhook(&self, at: u64, path: &str, id: &str) {
        let Some(phase) = self.current() else { return };
        let Some(slot) = RECIPIENTS.iter().position(|(_, p, _)| *p == path) else {
            return;
        };
        if let Some((p, i)) = parse_event_id(id)
            && p == phase.id
        {
            phase.record(i, slot as u8, at);
        }
    }

    fn smtp_connected(&self) {
        self.smtp_opened.fetch_add(1, Ordering::Relaxed);
        let open = self.smtp_open.fetch_add(1, Ordering::Relaxed) + 1;
        self.smtp_peak.fetch_max(open, Ordering::Relaxed);
    }

    fn smtp_closed(&self) {
        let _ = self
            .smtp_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Starts counting the connections of a run: the count so far (for
    /// [`Sink::smtp_since`]), and the most open at once starts again from those open now.
    fn smtp_mark(&self) -> usize {
        self.smtp_peak
            .store(self.smtp_open.load(Ordering::Relaxed), Ordering::Relaxed);
        self.smtp_opened.load(Ordering::Relaxed)
    }

    fn smtp_since(&self, mark: usize) -> SmtpConnections {
        SmtpConnections {
            opened: self.smtp_opened.load(Ordering::Relaxed) - mark,
            peak: self.smtp_peak.load(Ordering::Relaxed),
        }
    }

    fn email(&self, at: u64, message_id: &str) {
        let Some(phase) = self.current() else { return };
        // The baseline's: <e2e-PHASE-INDEX.SLOT@bench.invalid>
        let found = match message_id
            .strip_prefix('<')
            .and_then(|m| m.split_once('@'))
            .and_then(|(local, _)| local.rsplit_once('.'))
        {
            Some((id, slot)) if id.starts_with("e2e-") => parse_event_id(id)
                .filter(|(p, _)| *p == phase.id)
                .and_then(|(_, i)| Some((i, slot.parse::<u8>().ok()?))),
            _ => phase.email_keys.get(message_id).copied(),
        };
        if let Some((i, slot)) = found {
            phase.record(i, slot, at);
        }
    }
}

fn event_id(phase: u32, i: usize) -> String {
    format!("e2e-{phase}-{i}")
}

fn parse_event_id(id: &str) -> Option<(u32, u32)> {
    let (phase, i) = id.strip_prefix("e2e-")?.split_once('-')?;
    Some((phase.parse().ok()?, i.parse().ok()?))
}

/// The part of Herald's webhook body that names the event.
#[derive(Deserialize)]
struct HookBody {
    data: Option<HookData>,
}

#[derive(Deserialize)]
struct HookData {
    event: HookEvent,
}

#[derive(Deserialize)]
struct HookEvent {
    id: String,
}

/// Herald's `data.event.id`: found by a plain search (Herald writes `data.notification`, then
/// `data.event` with `id` first), or by parsing the body if its layout changes. Cheap either
/// way, so the receiver costs both consumers about the same.
fn herald_event_id(body: &[u8]) -> Option<String> {
    const MARK: &str = "\"event\":{\"id\":\"";
    let text = std::str::from_utf8(body).ok()?;
    if let Some(at) = text.find(MARK) {
        let rest = &text[at + MARK.len()..];
        return Some(rest[..rest.find('"')?].to_owned());
    }
    serde_json::from_slice::<HookBody>(body)
        .ok()?
        .data
        .map(|d| d.event.id)
}

/// The `event_id` label of Alertmanager's webhook body (one alert per notification).
fn alert_event_id(body: &[u8]) -> Option<String> {
    const MARK: &str = "\"event_id\":\"";
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find(MARK)? + MARK.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// Answers 204 to every POST and records it: the event id is Herald's `data.event.id`, the
/// baseline's `x-event-id` header (its body is the raw event) or Alertmanager's alert's
/// `event_id` label.
async fn receive(
    State(sink): State<Arc<Sink>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = sink.now();
    let id = match headers.get("x-event-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_owned(),
        None => herald_event_id(&body)
            .or_else(|| alert_event_id(&body))
            .unwrap_or_default(),
    };
    sink.webhook(at, uri.path(), &id);
    StatusCode::NO_CONTENT
}

async fn start_receiver(sink: Arc<Sink>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let app = Router::new().fallback(receive).with_state(sink);
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

// ---------------------------------------------------------------------------------------------
// The SMTP server.

/// Which SMTP server takes the emails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SmtpServer {
    /// This binary started again with `--smtp-sink` (`support/smtp_sink.rs`).
    Sink,
    /// Python's aiosmtpd, one process: the server before the sink, kept for comparison.
    Python,
}

impl SmtpServer {
    fn name(self) -> &'static str {
        match self {
            SmtpServer::Sink => "sink",
            SmtpServer::Python => "aiosmtpd",
        }
    }
}

/// aiosmtpd with a handler that prints each message's Message-ID, flushed, as it is taken, and
/// `connect` and `close` for each connection, as the sink does.
const SMTP_SERVER: &str = r#"
import asyncio, re, sys
from aiosmtpd.smtp import SMTP

MID = re.compile(rb"^message-id:[ \t]*(\S+)", re.I | re.M)

def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

class Handler:
    async def handle_DATA(self, server, session, envelope):
        head = envelope.content.split(b"\r\n\r\n", 1)[0]
        m = MID.search(head)
        say(m.group(1).decode() if m else "-")
        return "250 OK"

class Server(SMTP):
    def connection_made(self, transport):
        say("connect")
        super().connection_made(transport)

    def connection_lost(self, exc):
        say("close")
        super().connection_lost(exc)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(Handler(), hostname="localhost"), "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

/// The SMTP server of one scenario, and the thread that reads what it reports.
struct Smtp {
    server: SmtpServer,
    port: u16,
    child: Managed,
}

impl Smtp {
    /// `quickack`: the sink asks its kernel for an ACK at once after every read.
    fn start(sink: Arc<Sink>, server: SmtpServer, quickack: bool) -> Result<Smtp, String> {
        let (mut child, port) = match server {
            SmtpServer::Sink => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut cmd = Command::new(exe);
                cmd.arg("--smtp-sink")
                    .env_remove("SINK_QUICKACK")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit());
                if quickack {
                    cmd.env("SINK_QUICKACK", "1");
                }
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start the SMTP sink: {e}"))?;
                // It says which port it took.
                (child, None)
            }
            SmtpServer::Python => {
                if quickack {
                    return Err("only the sink (E2E_SMTP=sink) acknowledges at once".into());
                }
                let has = Command::new("python3")
                    .args(["-c", "import aiosmtpd"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !has {
                    // As the service tests do: install it the first time it is missing.
                    let _ = Command::new("python3")
                        .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
                        .status();
                }
                let port = free_port()?;
                let child = Command::new("python3")
                    .args(["-c", SMTP_SERVER, &port.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start python3: {e}"))?;
                (child, Some(port))
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let child = Managed::new("smtp", child);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("smtp-reader".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if let Some(Ok(first)) = lines.next() {
                    // `ready` (aiosmtpd, on the port it was given) or `ready PORT` (the sink).
                    let ready = match first.split_once(' ') {
                        Some(("ready", p)) => p.parse().ok(),
                        None if first == "ready" => port,
                        _ => None,
                    };
                    let _ = ready_tx.send(ready);
                }
                for line in lines.map_while(Result::ok) {
                    match line.trim() {
                        "connect" => sink.smtp_connected(),
                        "close" => sink.smtp_closed(),
                        id => sink.email(sink.now(), id),
                    }
                }
            })
            .expect("smtp reader thread");
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => Ok(Smtp {
                server,
                port,
                child,
            }),
            _ => Err(match server {
                SmtpServer::Sink => "the SMTP sink (e2e --smtp-sink) did not start".into(),
                SmtpServer::Python => "the SMTP server (python3 with aiosmtpd) did not start; install it with `python3 -m pip install aiosmtpd`".into(),
            }),
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

/// A port nothing listens on now, for a child process to take.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Child processes and /proc.

/// A child process killed (SIGKILL) when dropped, whatever happened.
struct Managed {
    name: &'static str,
    child: Child,
}

impl Managed {
    fn new(name: &'static str, child: Child) -> Managed {
        Managed { name, child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// None while it runs; what it exited with otherwise.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    /// SIGTERM, then up to `wait` for it to exit (SIGKILL after that).
    fn stop(self, wait: Duration) -> Result<(), String> {
        self.signal("-TERM", wait)
    }

    /// Sends `signal`, then waits up to `wait` for it to exit (SIGKILL after that).
    fn signal(mut self, signal: &str, wait: Duration) -> Result<(), String> {
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                // The baseline has no signal handler: SIGTERM ends it, as asked.
                Ok(Some(status)) if status.success() || matches!(status.signal(), Some(2 | 15)) => {
                    return Ok(());
                }
                Ok(Some(status)) => return Err(format!("{} exited with {status}", self.name)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    return Err(format!(
                        "{} did not stop within {wait:?} of SIGTERM; killed",
                        self.name
                    ));
                }
            }
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime in clock ticks, from a `stat` file of /proc.
fn stat_ticks(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn process_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0)
}

/// CPU ticks of a process's threads, by thread name.
fn thread_ticks(pid: u32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        if let Some(t) = stat_ticks(&task.path().join("stat")) {
            *out.entry(name).or_default() += t;
        }
    }
    out
}

/// Peak resident set size (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size now (VmRSS) in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The RabbitMQ server's process (beam.smp), if it runs on this machine.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
}

/// CPU ticks of every process named `comm` (PostgreSQL's server and its backends), by pid.
fn ticks_named(comm: &str) -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(|pid| (pid, process_ticks(pid)))
        .collect()
}

/// Busy and total ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits, up to `max`, for a second in which the machine is nearly idle (under 0.3 cores
/// busy), so a build or test run elsewhere does not distort the measurement.
async fn wait_quiet(max: Duration) {
    let deadline = Instant::now() + max;
    let mut said = false;
    loop {
        let before = machine_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = machine_ticks().0.saturating_sub(before.0) as f64 / clock_ticks();
        if busy < 0.3 {
            return;
        }
        if Instant::now() > deadline {
            println!(
                "  the machine is still busy ({busy:.2} cores used by others); measuring anyway"
            );
            return;
        }
        if !said {
            println!("  waiting for the machine to be quiet ({busy:.2} cores busy)...");
            said = true;
        }
    }
}

/// With `E2E_PERF_DIR` set, `perf record` (software clock, DWARF call graphs) on the consumer
/// for the measured part of each scenario, into `<dir>/<scenario>-<consumer>.data`. For finding
/// where the time goes, not for the figures: perf's own cost disturbs them.
fn start_profile(pid: u32, name: &str) -> Option<Managed> {
    let dir = PathBuf::from(std::env::var_os("E2E_PERF_DIR")?);
    let _ = std::fs::create_dir_all(&dir);
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(dir.join(format!("{name}.data")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("  cannot start perf: {e}"))
        .ok()?;
    Some(Managed::new("perf", child))
}

fn stop_profile(perf: Option<Managed>) {
    if let Some(perf) = perf
        && let Err(e) = perf.signal("-INT", Duration::from_secs(60))
    {
        eprintln!("  {e}");
    }
}

/// Where the machine's CPU went between two instants.
struct CpuProbe {
    consumer: u32,
    smtp: Option<u32>,
    broker: Option<u32>,
    at: Instant,
    machine: (u64, u64),
    consumer_ticks: u64,
    consumer_threads: HashMap<String, u64>,
    bench_threads: HashMap<String, u64>,
    bench_ticks: u64,
    smtp_ticks: u64,
    broker_ticks: u64,
    /// PostgreSQL's processes (those started meanwhile count from zero).
    store_ticks: HashMap<u32, u64>,
}

/// CPU used between two probes: seconds per process, and cores (seconds per second).
struct CpuUse {
    wall: f64,
    consumer_secs: f64,
    consumer_threads: Vec<(String, f64)>,
    /// The bench's threads; threads that ended meanwhile (the publisher's) as one entry.
    bench_threads: Vec<(String, f64)>,
    bench_secs: f64,
    smtp_secs: f64,
    broker_secs: f64,
    store_secs: f64,
    machine_busy_secs: f64,
    machine_cores: f64,
}

impl CpuProbe {
    fn start(consumer: u32, smtp: Option<u32>) -> CpuProbe {
        let broker = broker_pid();
        CpuProbe {
            consumer,
            smtp,
            broker,
            at: Instant::now(),
            machine: machine_ticks(),
            consumer_ticks: process_ticks(consumer),
            consumer_threads: thread_ticks(consumer),
            bench_threads: thread_ticks(std::process::id()),
            bench_ticks: process_ticks(std::process::id()),
            smtp_ticks: smtp.map_or(0, process_ticks),
            broker_ticks: broker.map_or(0, process_ticks),
            store_ticks: ticks_named("postgres"),
        }
    }

    fn finish(&self) -> CpuUse {
        let hz = clock_ticks();
        let secs = |after: u64, before: u64| after.saturating_sub(before) as f64 / hz;
        let split = |after: HashMap<String, u64>, before: &HashMap<String, u64>| {
            let mut v: Vec<(String, f64)> = after
                .into_iter()
                .map(|(name, t)| {
                    let b = before.get(&name).copied().unwrap_or(0);
                    (name, secs(t, b))
                })
                .filter(|(_, s)| *s > 0.0)
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        };
        let machine = machine_ticks();
        let total = machine.1.saturating_sub(self.machine.1) as f64;
        let wall = self.at.elapsed().as_secs_f64();
        // A process's times include its threads that have ended; the publisher's have.
        let bench_secs = secs(process_ticks(std::process::id()), self.bench_ticks);
        let mut bench_threads = split(thread_ticks(std::process::id()), &self.bench_threads);
        let ended = bench_secs - bench_threads.iter().map(|(_, s)| s).sum::<f64>();
        if ended > 0.0 {
            bench_threads.push(("publisher (ended)".into(), ended));
            bench_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        CpuUse {
            wall,
            consumer_secs: secs(process_ticks(self.consumer), self.consumer_ticks),
            consumer_threads: split(thread_ticks(self.consumer), &self.consumer_threads),
            bench_threads,
            bench_secs,
            smtp_secs: self
                .smtp
                .map_or(0.0, |p| secs(process_ticks(p), self.smtp_ticks)),
            broker_secs: self
                .broker
                .map_or(0.0, |p| secs(process_ticks(p), self.broker_ticks)),
            store_secs: ticks_named("postgres")
                .into_iter()
                .map(|(pid, t)| secs(t, self.store_ticks.get(&pid).copied().unwrap_or(0)))
                .sum(),
            machine_busy_secs: secs(machine.0, self.machine.0),
            machine_cores: if wall > 0.0 { total / hz / wall } else { 0.0 },
        }
    }
}

impl CpuUse {
    /// Cores used by processes that are not part of the benchmark (a build, say).
    fn other_cores(&self) -> f64 {
        let known = self.consumer_secs
            + self.bench_secs
            + self.smtp_secs
            + self.broker_secs
            + self.store_secs;
        (self.machine_busy_secs - known).max(0.0) / self.wall.max(1e-9)
    }

    /// One line: each party's share in cores (CPU seconds per second).
    fn describe(&self, consumer: &str) -> String {
        let c = |s: f64| s / self.wall.max(1e-9);
        let threads = |v: &[(String, f64)]| {
            v.iter()
                .take(4)
                .map(|(n, s)| format!("{n} {:.2}", c(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let bench = self.bench_secs;
        let mut line = format!(
            "cores used: {consumer} {:.2} ({}), beam.smp {:.2}, bench {:.2} ({})",
            c(self.consumer_secs),
            threads(&self.consumer_threads),
            c(self.broker_secs),
            c(bench),
            threads(&self.bench_threads),
        );
        if self.smtp_secs > 0.0 {
            let _ = write!(line, ", smtp {:.2}", c(self.smtp_secs));
        }
        if self.store_secs > 0.0 {
            let _ = write!(line, ", postgres {:.2}", c(self.store_secs));
        }
        let _ = write!(
            line,
            ", other {:.2}; machine busy {:.2} of {:.0}",
            self.other_cores(),
            c(self.machine_busy_secs),
            self.machine_cores
        );
        line
    }
}

// ---------------------------------------------------------------------------------------------
// The broker.

/// Exchange and queue names of one run of one consumer.
#[derive(Clone)]
struct Names {
    exchange: String,
    queue: String,
    rejected: String,
    failed: String,
}

/// Every name of this run starts with this.
fn run_prefix() -> String {
    format!("herald.e2e.{}.", std::process::id())
}

impl Names {
    fn new(scenario: &str, system: &str) -> Names {
        let tag = format!("{}{scenario}.{system}", run_prefix());
        Names {
            exchange: format!("{tag}.events"),
            queue: format!("{tag}.queue"),
            rejected: format!("{tag}.rejected"),
            failed: format!("{tag}.failed"),
        }
    }

    /// Every queue of this run shares this prefix (retry tiers and the deliveries queue too).
    fn prefix(&self) -> &str {
        self.queue.trim_end_matches("queue")
    }
}

fn rabbitmqctl_names(what: &str) -> Vec<String> {
    Command::new("rabbitmqctl")
        .args([what, "name", "-q"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| l.starts_with("herald.e2e."))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the queues (and the exchange) whose names start with `prefix`.
async fn delete_named(conn: &Connection, prefix: &str) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in rabbitmqctl_names("list_queues") {
        if q.starts_with(prefix) {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for x in rabbitmqctl_names("list_exchanges") {
        if x.starts_with(prefix) {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = ch.close(200, "done".into()).await;
}

/// Queues and exchanges left by an earlier run that did not finish (its process is gone).
async fn delete_stale(conn: &Connection) {
    let mut stale: Vec<String> = Vec::new();
    for name in rabbitmqctl_names("list_queues")
        .into_iter()
        .chain(rabbitmqctl_names("list_exchanges"))
    {
        let pid = name.split('.').nth(2).unwrap_or_default();
        let prefix = format!("herald.e2e.{pid}.");
        if pid != std::process::id().to_string()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && !stale.contains(&prefix)
        {
            stale.push(prefix);
        }
    }
    for prefix in stale {
        println!("removing queues left by an earlier run: {prefix}*");
        delete_named(conn, &prefix).await;
    }
}

/// Ready messages and consumers of a queue, or None if it does not exist (yet).
async fn queue_state(conn: &Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.ok()?;
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
    // A failed passive declare has closed the channel already.
    let _ = ch.close(200, "done".into()).await;
    q.map(|q| (q.message_count(), q.consumer_count()))
}

/// The depths of the consumer's queues, for an error message.
async fn depths(conn: &Connection, names: &Names) -> String {
    let mut out = Vec::new();
    for q in [&names.queue, &names.rejected, &names.failed] {
        let what = match queue_state(conn, q).await {
            Some((m, c)) => format!("{m} ready, {c} consumers"),
            None => "absent".into(),
        };
        out.push(format!("{}: {what}", q.trim_start_matches(names.prefix())));
    }
    out.join("; ")
}

/// Waits until `queue` exists and has a consumer.
async fn wait_consuming(
    conn: &Connection,
    queue: &str,
    child: &mut Managed,
    log: Option<&Path>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.exited() {
            return Err(format!("{exit}{}", log_tail(log)));
        }
        if queue_state(conn, queue).await.is_some_and(|(_, c)| c >= 1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} is not consuming {queue} after 30 s{}",
                child.name,
                log_tail(log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of Herald's log, for an error message.
fn log_tail(log: Option<&Path>) -> String {
    let Some(text) = log.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    format!("\n  last lines of its log:\n  {tail}")
}

/// The events exchange and queue the baseline consumes, shaped like Herald's (a durable topic
/// exchange, a durable quorum queue with a delivery limit, bound to every key).
async fn declare_baseline(conn: &Connection, names: &Names) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.exchange_declare(
        names.exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(10),
    );
    ch.queue_declare(
        names.queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(|e| e.to_string())?;
    ch.queue_bind(
        names.queue.as_str().into(),
        names.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = ch.close(200, "done".into()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The publisher.

struct PublishJob {
    exchange: String,
    phase: u32,
    events: usize,
    /// Events per second; None: as fast as the broker confirms.
    rate: Option<f64>,
    window: usize,
    body: Arc<Vec<u8>>,
    base: Instant,
}

struct Published {
    /// When each event was published (ns since the base instant).
    sent: Vec<u64>,
    /// When the last confirm arrived.
    confirmed: u64,
}

/// The publisher's thread while it runs, then what it did.
#[derive(Default)]
struct Publisher {
    running: Option<std::thread::JoinHandle<Result<Published, String>>>,
    done: Option<Published>,
}

impl Publisher {
    fn start(job: PublishJob) -> Publisher {
        Publisher {
            running: Some(spawn_publisher(job)),
            done: None,
        }
    }
}

/// Publishes on a thread of its own (with its own single-threaded runtime), so its CPU can be
/// told apart from the receiver's.
fn spawn_publisher(job: PublishJob) -> std::thread::JoinHandle<Result<Published, String>> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(publish(job))
        })
        .expect("publisher thread")
}

async fn publish(job: PublishJob) -> Result<Published, String> {
    let conn = Connection::connect(
        AMQP,
        ConnectionProperties::default().with_connection_name("herald-e2e-publisher".into()),
    )
    .await
    .map_err(|e| format!("publisher cannot connect: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let check = |c: lapin::Result<Confirmation>| match c {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => {
            Err("a publish was unroutable (is the queue bound?)".to_owned())
        }
        Ok(other) => Err(format!("the broker did not accept a publish: {other:?}")),
        Err(e) => Err(format!("publish confirm: {e}")),
    };
    let mut sent = Vec::with_capacity(job.events);
    let mut pending = VecDeque::with_capacity(job.window);
    let start = tokio::time::Instant::now();
    for i in 0..job.events {
        if let Some(rate) = job.rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let props = BasicProperties::default()
            .with_message_id(event_id(job.phase, i).into())
            .with_user_id("guest".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        sent.push(job.base.elapsed().as_nanos() as u64);
        let confirm = ch
            .basic_publish(
                job.exchange.as_str().into(),
                EVENT_TYPE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &job.body,
                props,
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        pending.push_back(confirm);
        while pending.len() >= job.window {
            check(pending.pop_front().expect("pending").await)?;
        }
    }
    while let Some(c) = pending.pop_front() {
        check(c.await)?;
    }
    let confirmed = job.base.elapsed().as_nanos() as u64;
    let _ = conn.close(200, "published".into()).await;
    Ok(Published { sent, confirmed })
}

/// Alerts per POST to Alertmanager's `/api/v2/alerts`.
const ALERT_BATCH: usize = 100;

/// Posts `events` alerts to Alertmanager at `url`, a batch at a time, each as soon as the last
/// was taken, on a thread of its own (as the publisher): alertname `bail-decided`, the event's
/// id as label `event_id`, the event body's `description` as an annotation.
fn spawn_alert_poster(
    url: String,
    phase: u32,
    events: usize,
    description: String,
    base: Instant,
) -> std::thread::JoinHandle<Result<Published, String>> {
    std::thread::Builder::new()
        .name("alert-poster".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(async move {
                    let client = reqwest::Client::new();
                    let mut sent = Vec::with_capacity(events);
                    let mut i = 0;
                    while i < events {
                        let n = ALERT_BATCH.min(events - i);
                        let alerts: Vec<serde_json::Value> = (i..i + n)
                            .map(|k| {
                                serde_json::json!({
                                    "labels": {
                                        "alertname": "bail-decided",
                                        "event_type": EVENT_TYPE,
                                        "event_id": event_id(phase, k),
                                    },
                                    "annotations": { "description": description },
                                })
                            })
                            .collect();
                        let body = serde_json::to_vec(&alerts).map_err(|e| e.to_string())?;
                        let at = base.elapsed().as_nanos() as u64;
                        sent.extend(std::iter::repeat_n(at, n));
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .map_err(|e| format!("posting alerts: {e}"))?;
                        if !r.status().is_success() {
                            return Err(format!("Alertmanager answered {}", r.status()));
                        }
                        i += n;
                    }
                    let confirmed = base.elapsed().as_nanos() as u64;
                    Ok(Published { sent, confirmed })
                })
        })
        .expect("alert poster thread")
}

// ---------------------------------------------------------------------------------------------
// Consumers: Herald and the baseline.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    /// This build (or `E2E_HERALD_BIN`), configured as the benchmark always has.
    Herald,
    /// `E2E_NOLEDGER_BIN`, the build before the ledger: no `[ledger]` table.
    NoLedger,
    /// This build, its SQLite ledger in the run's own fresh folder.
    Sqlite,
    /// This build, its ledger in a PostgreSQL database made for the run.
    Postgres,
    Baseline,
    /// The peer: Prometheus Alertmanager, fed the same events as alerts over its HTTP API.
    Alertmanager,
    /// The baseline consumer acknowledging each event and doing nothing else.
    Ceiling,
}

impl System {
    const ALL: [System; 5] = [
        System::Herald,
        System::NoLedger,
        System::Sqlite,
        System::Postgres,
        System::Baseline,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Herald => "herald",
            System::NoLedger => "noledger",
            System::Sqlite => "sqlite",
            System::Postgres => "postgres",
            System::Baseline => "baseline",
            System::Alertmanager => "alertmanager",
            System::Ceiling => "ceiling",
        }
    }

    fn parse(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Herald, of whichever build and ledger.
    fn is_herald(self) -> bool {
        matches!(
            self,
            System::Herald | System::NoLedger | System::Sqlite | System::Postgres
        )
    }

    fn has_ledger(self) -> bool {
        matches!(self, System::Sqlite | System::Postgres)
    }
}

/// A PostgreSQL database made for one run, dropped (with any connection left) when the run
/// ends, however it ends.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(base: &str, name: String) -> Result<Database, String> {
        let db = Database {
            admin: format!("{base}/postgres"),
            url: format!("{base}/{name}"),
            name,
        };
        db.psql(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    /// Drops the databases left by earlier runs that did not finish (their process is gone).
    fn drop_stale(base: &str) {
        let admin = format!("{base}/postgres");
        let Ok(names) = psql(
            &admin,
            "SELECT datname FROM pg_database WHERE datname LIKE 'herald\\_e2e\\_%'",
        ) else {
            return;
        };
        for name in names.lines().map(str::trim) {
            let pid = name.split('_').nth(2).unwrap_or_default();
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                println!("removing a database left by an earlier run: {name}");
                drop(Database {
                    admin: admin.clone(),
                    url: format!("{base}/{name}"),
                    name: name.to_owned(),
                });
            }
        }
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        psql(&self.admin, sql)
    }
}

/// Runs one statement with psql; what it printed (unaligned, tuples only).
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(e) = self.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("  {e}");
        }
    }
}

/// How a consumer is started, for the scenario at hand.
struct Setup {
    opts: Opts,
    names: Names,
    receiver_port: u16,
    channels: Channels,
    smtp: Option<String>,
    dir: PathBuf,
    /// Herald's /metrics port.
    metrics_port: u16,
    /// The `postgres` variant's database.
    database: Option<Database>,
}

impl Setup {
    fn log(&self) -> PathBuf {
        self.dir.join("herald.log")
    }

    /// routes.toml's head (everything before the first route) with this run's names, the
    /// receiver's port and guest allowed to publish court events, then the benchmark's route.
    fn herald_config(&self, system: System) -> Result<PathBuf, String> {
        let text =
            std::fs::read_to_string(root().join("routes.toml")).map_err(|e| e.to_string())?;
        let mut head = text[..text.find("[[route]]").ok_or("routes.toml has no route")?].to_owned();
        let r = root().display();
        let n = &self.names;
        let out = self.dir.join("outbox");
        let swaps = [
            (
                "exchange = \"herald.events\"".to_owned(),
                format!("exchange = \"{}\"", n.exchange),
            ),
            (
                "queue = \"herald.events\"".to_owned(),
                format!(
                    "queue = \"{}\"\nrejected_queue = \"{}\"\nfailed_queue = \"{}\"",
                    n.queue, n.rejected, n.failed
                ),
            ),
            (
                "schemas = \"schemas\"".to_owned(),
                format!("schemas = \"{r}/schemas\""),
            ),
            (
                "templates = \"templates\"".to_owned(),
                format!("templates = \"{r}/templates\""),
            ),
            (
                "examples = \"schemas/examples/valid\"".to_owned(),
                format!("examples = \"{r}/schemas/examples/valid\""),
            ),
            (
                "bank_holidays = \"data/bank-holidays.json\"".to_owned(),
                format!("bank_holidays = \"{r}/data/bank-holidays.json\""),
            ),
            (
                "outbox = \"outbox\"".to_owned(),
                format!("outbox = \"{}\"", out.display()),
            ),
            (
                "[publishers]\n".to_owned(),
                "[publishers]\nguest = [\"court.*\"]\n".to_owned(),
            ),
        ];
        for (from, to) in swaps {
            if !head.contains(&from) {
                return Err(format!(
                    "routes.toml no longer contains `{}`; update benches/e2e.rs",
                    from.trim()
                ));
            }
            head = head.replacen(&from, &to, 1);
        }
        head = head.replace(
            herald::config::RECEIVER_URL,
            &format!("http://127.0.0.1:{}", self.receiver_port),
        );
        let prefetch = set_prefetch(&head, self.opts.prefetch)?;
        let channels = self.channels.toml();
        let mut webhook = if prefetch.contains("\n[webhook]") {
            String::new()
        } else {
            format!(
                "[webhook]\nconcurrency_per_endpoint = {}\n\n",
                self.opts.concurrency
            )
        };
        if let Ok(extra) = std::env::var("E2E_HERALD_TOML") {
            webhook.push_str(&extra.replace("\\n", "\n"));
            webhook.push_str("\n\n");
        }
        // The build before the ledger refuses a [ledger] table.
        if let Some(extra) = self
            .opts
            .ledger_toml
            .as_ref()
            .filter(|_| system.has_ledger())
        {
            let _ = write!(webhook, "[ledger]\n{}\n\n", extra.replace("\\n", "\n"));
        }
        let config = format!(
            "{prefetch}\n{webhook}[[route]]\nname = \"{ROUTE}\"\nevents = [\"{EVENT_TYPE}\"]\nto = [\"{}\", \"{}\"]\nchannels = {channels}\ntemplate = \"bail-decided\"\nsla = \"within 24h\"\n",
            RECIPIENTS[0].0, RECIPIENTS[1].0
        );
        let path = self.dir.join("routes.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        Ok(path)
    }

    fn spawn(&self, system: System) -> Result<Managed, String> {
        match system {
            System::Herald | System::NoLedger | System::Sqlite | System::Postgres => {
                let config = self.herald_config(system)?;
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log())
                    .map_err(|e| e.to_string())?;
                // Another build of Herald may be measured against the same baseline.
                let exe = match (system, &self.opts.noledger_bin) {
                    (System::NoLedger, Some(bin)) => bin.clone(),
                    (System::NoLedger, None) => {
                        return Err("the noledger variant needs E2E_NOLEDGER_BIN=path".into());
                    }
                    _ => std::env::var_os("E2E_HERALD_BIN").map_or_else(
                        || PathBuf::from(env!("CARGO_BIN_EXE_herald")),
                        PathBuf::from,
                    ),
                };
                let mut cmd = Command::new(exe);
                cmd.args(["serve", "--config"])
                    .arg(config)
                    .env("HERALD_AMQP_URL", AMQP)
                    .env(
                        "HERALD_METRICS_ADDR",
                        format!("127.0.0.1:{}", self.metrics_port),
                    )
                    .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
                    .env("HERALD_WEBHOOK_SECRET", SECRET)
                    .env("HERALD_LOG_FORMAT", "json")
                    .env("RUST_LOG", &self.opts.herald_log)
                    .env_remove("HERALD_SMTP_URL")
                    .env_remove("HERALD_LEDGER_URL")
                    .stdout(Stdio::null())
                    .stderr(log);
                if let Some(url) = self.smtp.as_ref().filter(|_| self.channels.emails()) {
                    cmd.env("HERALD_SMTP_URL", url);
                }
                if let Some(db) = &self.database {
                    cmd.env("HERALD_LEDGER_URL", &db.url);
                }
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start herald: {e}"))?;
                Ok(Managed::new("herald", child))
            }
            System::Alertmanager => Err("Alertmanager is started by Bench::alertmanager".into()),
            System::Baseline | System::Ceiling => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let urls: Vec<String> = RECIPIENTS
                    .iter()
                    .filter(|_| self.channels.webhooks())
                    .map(|(_, p, _)| format!("http://127.0.0.1:{}{p}", self.receiver_port))
                    .collect();
                let mut cmd = Command::new(exe);
                cmd.arg("--baseline-consumer")
                    .env("BASELINE_QUEUE", &self.names.queue)
                    .env("BASELINE_PREFETCH", self.opts.prefetch.to_string())
                    .env("BASELINE_CONCURRENCY", self.opts.concurrency.to_string())
                    .env(
                        "BASELINE_SMTP_CONNECTIONS",
                        self.opts.smtp_connections.to_string(),
                    )
                    .env("BASELINE_URLS", urls.join(","))
                    .env_remove("BASELINE_SMTP")
                    .env_remove("BASELINE_ACK_ONLY")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit());
                if system == System::Ceiling {
                    // It prints how many it has acknowledged, as that changes.
                    cmd.env("BASELINE_ACK_ONLY", "1").stdout(Stdio::piped());
                }
                if let Some(url) = self.smtp.as_ref().filter(|_| self.channels.emails()) {
                    let to: Vec<&str> = RECIPIENTS.iter().map(|(_, _, a)| *a).collect();
                    cmd.env("BASELINE_SMTP", url)
                        .env("BASELINE_EMAILS", to.join(","));
                }
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start the baseline consumer: {e}"))?;
                Ok(Managed::new(system.name(), child))
            }
        }
    }
}

/// routes.toml's `prefetch = N` line set to `prefetch`.
fn set_prefetch(head: &str, prefetch: u16) -> Result<String, String> {
    let mut found = false;
    let out: Vec<String> = head
        .lines()
        .map(|l| {
            if !found && l.trim_start().starts_with("prefetch") && l.contains('=') {
                found = true;
                format!("prefetch = {prefetch}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if found {
        Ok(out.join("\n") + "\n")
    } else {
        Err("routes.toml has no `prefetch =` line in [amqp]; update benches/e2e.rs".into())
    }
}

// ---------------------------------------------------------------------------------------------
// One measured run.

/// What one consumer achieved in one scenario.
#[derive(Clone, Default)]
struct Figures {
    events: usize,
    notifications: usize,
    secs: f64,
    events_per_sec: f64,
    notifications_per_sec: f64,
    /// p50, p95, p99 in ms (None when latency means nothing, as in the backlog).
    latency: Option<[f64; 3]>,
    /// p99 of webhooks and of emails apart, in ms (the mixed scenario).
    p99_by_channel: Option<[f64; 2]>,
    cpu_per_1000: f64,
    peak_rss_mib: f64,
    /// Publishing rate achieved (events/s).
    published_per_sec: f64,
    /// Cores other processes used meanwhile.
    other_cores: f64,
    /// PostgreSQL's CPU (all its processes) per 1,000 notifications.
    store_cpu_per_1000: f64,
    /// Rows the ledger wrote in the measured run, by table (`herald_ledger_rows_total`).
    ledger_rows: Option<Vec<(String, u64)>>,
    /// RabbitMQ's CPU (beam.smp) per 1,000 notifications.
    broker_cpu_per_1000: f64,
    /// The SMTP server's side, in the scenarios with email.
    smtp: Option<SmtpFigures>,
}

/// The SMTP server's CPU and connections in one measured run.
#[derive(Clone, Copy)]
struct SmtpFigures {
    server: SmtpServer,
    quickack: bool,
    /// Its CPU per 1,000 emails.
    cpu_per_1000: f64,
    connections: SmtpConnections,
}

impl Figures {
    fn ledger_rows_per_sec(&self) -> Option<f64> {
        let rows = self.ledger_rows.as_ref()?;
        Some(
            rows.iter()
                .filter(|(t, _)| ![COMMITS, COMMIT_MS].contains(&t.as_str()))
                .map(|(_, n)| *n)
                .sum::<u64>() as f64
                / self.secs,
        )
    }
}

/// The names under which [`ledger_rows`] gives the number of group commits and the
/// milliseconds they took in all (not rows: left out of the rows per second).
const COMMITS: &str = "commits";
const COMMIT_MS: &str = "commit ms";

/// `herald_ledger_rows_total` by table, from Herald's /metrics; None without a ledger.
async fn ledger_rows(port: u16) -> Option<Vec<(String, u64)>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let rows: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            // The group commits and the time they took, beside the rows.
            if let Some(n) = l.strip_prefix("herald_ledger_commit_seconds_count ") {
                return Some((COMMITS.to_owned(), n.trim().parse::<f64>().ok()? as u64));
            }
            if let Some(s) = l.strip_prefix("herald_ledger_commit_seconds_sum ") {
                let ms = s.trim().parse::<f64>().ok()? * 1000.0;
                return Some((COMMIT_MS.to_owned(), ms as u64));
            }
            let rest = l.strip_prefix("herald_ledger_rows_total{table=\"")?;
            let (table, value) = rest.split_once("\"}")?;
            Some((table.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    (!rows.is_empty()).then_some(rows)
}

/// What the ledger wrote between two readings of its counters.
fn rows_between(
    before: Option<Vec<(String, u64)>>,
    after: Option<Vec<(String, u64)>>,
) -> Option<Vec<(String, u64)>> {
    let before = before.unwrap_or_default();
    let mut rows = after?;
    for (table, n) in &mut rows {
        let b = before
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, b)| *b);
        *n = n.saturating_sub(b);
    }
    Some(rows)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

struct Bench {
    opts: Opts,
    sink: Arc<Sink>,
    receiver_port: u16,
    conn: Connection,
    body: Arc<Vec<u8>>,
    next_phase: u32,
    /// Runs set up so far: each has a folder of its own.
    runs: u32,
    tmp: tempfile::TempDir,
}

struct Scenario {
    key: &'static str,
    events: usize,
    rate: Option<f64>,
    channels: Channels,
    /// The SMTP sink acknowledges at once (`SINK_QUICKACK`).
    quickack: bool,
}

/// The benchmark route's channels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Channels {
    /// A webhook to each recipient.
    Webhook,
    /// A webhook and an email to each.
    Mixed,
    /// An email to each.
    Email,
}

impl Channels {
    fn toml(self) -> &'static str {
        match self {
            Channels::Webhook => r#"["webhook"]"#,
            Channels::Mixed => r#"["email", "webhook"]"#,
            Channels::Email => r#"["email"]"#,
        }
    }

    fn webhooks(self) -> bool {
        self != Channels::Email
    }

    fn emails(self) -> bool {
        self != Channels::Webhook
    }

    /// Notifications per event: one per recipient and channel.
    fn per_event(self) -> usize {
        RECIPIENTS.len() * (usize::from(self.webhooks()) + usize::from(self.emails()))
    }
}

impl Bench {
    fn phase(&mut self, events: usize, herald_emails: bool) -> Arc<Phase> {
        self.next_phase += 1;
        self.sink
            .begin(Phase::new(self.next_phase, events, herald_emails))
    }

    /// A run's own folder (and so its own SQLite ledger), names and, for `postgres`, database.
    fn setup(
        &mut self,
        key: &str,
        channels: Channels,
        system: System,
        smtp: Option<&Smtp>,
    ) -> Result<Setup, String> {
        self.runs += 1;
        let dir = self
            .tmp
            .path()
            .join(format!("{key}-{}-{}", system.name(), self.runs));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let database = match system {
            System::Postgres => Some(Database::create(
                &self.opts.postgres_url,
                format!("herald_e2e_{}_{}", std::process::id(), self.runs),
            )?),
            _ => None,
        };
        Ok(Setup {
            opts: self.opts.clone(),
            names: Names::new(key, system.name()),
            receiver_port: self.receiver_port,
            channels,
            smtp: smtp.map(Smtp::url),
            dir,
            metrics_port: free_port()?,
            database,
        })
    }

    /// The ledger's row counters of a ledger variant's Herald.
    async fn ledger_rows(&self, system: System, setup: &Setup) -> Option<Vec<(String, u64)>> {
        if system.has_ledger() {
            ledger_rows(setup.metrics_port).await
        } else {
            None
        }
    }

    /// Waits until `expected` distinct notifications of `phase` have arrived. Fails when none
    /// arrives for the stall time, the consumer exits, the publisher fails or `limit` passes.
    async fn await_phase(
        &self,
        phase: &Phase,
        expected: usize,
        child: &mut Managed,
        publisher: &mut Publisher,
        setup: &Setup,
        limit: Duration,
    ) -> Result<Vec<(usize, u64)>, String> {
        let started = Instant::now();
        let mut last = (0usize, Instant::now());
        let log = (child.name == "herald").then(|| setup.log());
        // (notifications delivered, the consumer's resident set in KiB), twice a second.
        let mut rss = Vec::new();
        let mut sampled = Instant::now();
        loop {
            if let Some(handle) = publisher.running.take_if(|h| h.is_finished()) {
                publisher.done = Some(
                    handle
                        .join()
                        .map_err(|_| "the publisher panicked".to_owned())??,
                );
            }
            let got = phase.unique.load(Ordering::Relaxed);
            if got >= expected && publisher.running.is_none() {
                return Ok(rss);
            }
            if sampled.elapsed() >= Duration::from_millis(500) {
                sampled = Instant::now();
                if let Some(kib) = resident_kib(child.pid()) {
                    rss.push((got, kib));
                }
            }
            if let Some(exit) = child.exited() {
                return Err(format!(
                    "{exit} with {got} of {expected} notifications delivered{}",
                    log_tail(log.as_deref())
                ));
            }
            if got > last.0 {
                last = (got, Instant::now());
            }
            let stalled = last.1.elapsed() > self.opts.stall;
            if stalled || started.elapsed() > limit {
                let why = if stalled {
                    format!("no notification arrived for {:?}", self.opts.stall)
                } else {
                    format!("not done within {limit:?}")
                };
                return Err(format!(
                    "deliveries stopped: {why}; {got} of {expected} notifications delivered; queues: {}{}",
                    depths(&self.conn, &setup.names).await,
                    log_tail(log.as_deref())
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publish-and-deliver while the consumer runs: a warm-up, then the measured publication.
    async fn live(
        &mut self,
        sc: &Scenario,
        system: System,
        smtp: Option<&Smtp>,
    ) -> Result<Figures, String> {
        let setup = self.setup(sc.key, sc.channels, system, smtp)?;
        let per_event = sc.channels.per_event();
        if system == System::Baseline {
            declare_baseline(&self.conn, &setup.names).await?;
        }
        let mut child = setup.spawn(system)?;
        let log = system.is_herald().then(|| setup.log());
        wait_consuming(&self.conn, &setup.names.queue, &mut child, log.as_deref()).await?;
        let herald_emails = sc.channels.emails() && system.is_herald();

        let warmup = (sc.events / 10).clamp(1, WARMUP);
        let warm = self.phase(warmup, herald_emails);
        let mut publisher = Publisher::start(PublishJob {
            exchange: setup.names.exchange.clone(),
            phase: warm.id,
            events: warmup,
            rate: sc.rate,
            window: WINDOW,
            body: Arc::clone(&self.body),
            base: self.sink.base,
        });
        self.await_phase(
            &warm,
            warmup * per_event,
            &mut child,
            &mut publisher,
            &setup,
            Duration::from_secs(120),
        )
        .await
        .map_err(|e| format!("warm-up: {e}"))?;

        wait_quiet(self.opts.quiet).await;
        let rows_before = self.ledger_rows(system, &setup).await;
        let phase = self.phase(sc.events, herald_emails);
        let probe = CpuProbe::start(child.pid(), smtp.map(|s| s.child.pid()));
        let connections = self.sink.smtp_mark();
        let perf = start_profile(child.pid(), &format!("{}-{}", sc.key, system.name()));
        let mut publisher = Publisher::start(PublishJob {
            exchange: setup.names.exchange.clone(),
            phase: phase.id,
            events: sc.events,
            rate: sc.rate,
            window: WINDOW,
            body: Arc::clone(&self.body),
            base: self.sink.base,
        });
        let expected = sc.events * per_event;
        self.await_phase(
            &phase,
            expected,
            &mut child,
            &mut publisher,
            &setup,
            Duration::from_secs(240),
        )
        .await?;
        let cpu = probe.finish();
        let connections = smtp.map(|_| self.sink.smtp_since(connections));
        stop_profile(perf);
        let rows = rows_between(rows_before, self.ledger_rows(system, &setup).await);
        let rss = peak_rss_kib(child.pid()).unwrap_or(0);
        let stopped = child.stop(Duration::from_secs(40));
        delete_named(&self.conn, setup.names.prefix()).await;
        stopped?;
        let published = publisher.done.ok_or("no publisher result")?;
        let mut f = live_figures(sc, expected, &phase, &published, &cpu, rss, rows);
        if let Some(smtp) = smtp {
            let emails = sc.events * RECIPIENTS.len();
            f.smtp = Some(SmtpFigures {
                server: smtp.server,
                quickack: sc.quickack,
                cpu_per_1000: cpu.smtp_secs / emails as f64 * 1000.0,
                connections: connections.unwrap_or(SmtpConnections { opened: 0, peak: 0 }),
            });
        }
        report(
            sc.key,
            system,
            &f,
            &cpu,
            phase.total.load(Ordering::Relaxed),
        );
        Ok(f)
    }

    /// The peer: Alertmanager with one receiver of two webhooks (Herald's two recipients), no
    /// grouping (`group_by: ['...']`, so each alert is a notification of its own), no wait;
    /// the same number of events posted as alerts. Measured as Herald's live run.
    async fn alertmanager(&mut self, sc: &Scenario) -> Result<Figures, String> {
        let system = System::Alertmanager;
        let setup = self.setup(sc.key, sc.channels, system, None)?;
        let port = free_port()?;
        let hooks: String = RECIPIENTS
            .iter()
            .map(|(_, path, _)| {
                format!(
                    "      - url: http://127.0.0.1:{}{path}\n        send_resolved: false\n",
                    self.receiver_port
                )
            })
            .collect();
        let config = format!(
            "route:\n  receiver: bench\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 24h\n  repeat_interval: 24h\nreceivers:\n  - name: bench\n    webhook_configs:\n{hooks}"
        );
        let config_path = setup.dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log_path = setup.dir.join("alertmanager.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                setup.dir.join("alertmanager-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start prometheus-alertmanager: {e}"))?;
        let mut child = Managed::new(system.name(), child);
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = child.exited() {
                return Err(format!("{exit}{}", log_tail(Some(&log_path))));
            }
            let ready = client.get(format!("{base}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                return Err("Alertmanager is not ready after 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let description = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("description")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let url = format!("{base}/api/v2/alerts");
        let sink_base = self.sink.base;
        let post = |phase: &Phase, events: usize| Publisher {
            running: Some(spawn_alert_poster(
                url.clone(),
                phase.id,
                events,
                description.clone(),
                sink_base,
            )),
            done: None,
        };

        let warmup = (sc.events / 10).clamp(1, WARMUP);
        let warm = self.phase(warmup, false);
        let mut publisher = post(&warm, warmup);
        self.await_phase(
            &warm,
            warmup * 2,
            &mut child,
            &mut publisher,
            &setup,
            Duration::from_secs(120),
        )
        .await
        .map_err(|e| format!("warm-up: {e}"))?;

        wait_quiet(self.opts.quiet).await;
        let phase = self.phase(sc.events, false);
        let probe = CpuProbe::start(child.pid(), None);
        let perf = start_profile(child.pid(), &format!("{}-{}", sc.key, system.name()));
        let mut publisher = post(&phase, sc.events);
        let expected = sc.events * 2;
        self.await_phase(
            &phase,
            expected,
            &mut child,
            &mut publisher,
            &setup,
            Duration::from_secs(240),
        )
        .await
        .map_err(|e| format!("{e}{}", log_tail(Some(&log_path))))?;
        let cpu = probe.finish();
        stop_profile(perf);
        let rss = peak_rss_kib(child.pid()).unwrap_or(0);
        child.stop(Duration::from_secs(40))?;
        let published = publisher.done.ok_or("no poster result")?;
        let f = live_figures(sc, expected, &phase, &published, &cpu, rss, None);
        report(
            sc.key,
            system,
            &f,
            &cpu,
            phase.total.load(Ordering::Relaxed),
        );
        Ok(f)
    }

    /// The broker ceiling: the same events published the same way to a quorum queue shaped
    /// like Herald's, consumed with Herald's prefetch and acknowledged, nothing else. Events/s
    /// from the first publish to the last acknowledgement; the consumer's CPU per event.
    async fn ceiling(&mut self, sc: &Scenario) -> Result<Figures, String> {
        let system = System::Ceiling;
        let setup = self.setup(sc.key, sc.channels, system, None)?;
        declare_baseline(&self.conn, &setup.names).await?;
        let mut child = setup.spawn(system)?;
        // (acknowledged so far, when the consumer said so).
        let acked = Arc::new(Mutex::new((0usize, 0u64)));
        let stdout = child.child.stdout.take().ok_or("no stdout")?;
        {
            let acked = Arc::clone(&acked);
            let sink = Arc::clone(&self.sink);
            std::thread::Builder::new()
                .name("ceiling-reader".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if let Ok(n) = line.trim().parse::<usize>() {
                            *acked.lock().unwrap() = (n, sink.now());
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        wait_consuming(&self.conn, &setup.names.queue, &mut child, None).await?;
        let stall = self.opts.stall;
        let job = |phase: u32, events: usize| PublishJob {
            exchange: setup.names.exchange.clone(),
            phase,
            events,
            rate: None,
            window: WINDOW,
            body: Arc::clone(&self.body),
            base: self.sink.base,
        };
        let warmup = (sc.events / 10).clamp(1, WARMUP);
        let (warm_id, phase_id) = (self.next_phase + 1, self.next_phase + 2);
        self.next_phase += 2;
        let result = async {
            await_acked(
                &acked,
                warmup,
                Publisher::start(job(warm_id, warmup)),
                &mut child,
                stall,
            )
            .await
            .map_err(|e| format!("warm-up: {e}"))?;
            wait_quiet(self.opts.quiet).await;
            let probe = CpuProbe::start(child.pid(), None);
            let (end, published) = await_acked(
                &acked,
                warmup + sc.events,
                Publisher::start(job(phase_id, sc.events)),
                &mut child,
                stall,
            )
            .await?;
            Ok::<_, String>((probe.finish(), end, published.ok_or("no publisher result")?))
        }
        .await;
        let rss = peak_rss_kib(child.pid()).unwrap_or(0);
        let stopped = child.stop(Duration::from_secs(40));
        delete_named(&self.conn, setup.names.prefix()).await;
        let (cpu, end, published) = result?;
        stopped?;
        let first = published.sent.first().copied().unwrap_or(0);
        let secs = end.saturating_sub(first) as f64 / 1e9;
        let pub_secs = (published.confirmed - first) as f64 / 1e9;
        let f = Figures {
            events: sc.events,
            notifications: sc.events,
            secs,
            events_per_sec: sc.events as f64 / secs,
            notifications_per_sec: sc.events as f64 / secs,
            latency: None,
            p99_by_channel: None,
            cpu_per_1000: cpu.consumer_secs / sc.events as f64 * 1000.0,
            peak_rss_mib: rss as f64 / 1024.0,
            published_per_sec: sc.events as f64 / pub_secs,
            other_cores: cpu.other_cores(),
            store_cpu_per_1000: 0.0,
            ledger_rows: None,
            broker_cpu_per_1000: cpu.broker_secs / sc.events as f64 * 1000.0,
            smtp: None,
        };
        report(sc.key, system, &f, &cpu, sc.events);
        Ok(f)
    }

    /// The backlog: publish while no consumer runs, then start it and time the drain.
    async fn backlog(&mut self, events: usize, system: System) -> Result<Figures, String> {
        let key = "backlog";
        let setup = self.setup(key, Channels::Webhook, system, None)?;
        match system {
            System::Herald | System::NoLedger | System::Sqlite | System::Postgres => {
                // Herald declares its own topology: start it once, then stop it.
                let mut child = setup.spawn(system)?;
                wait_consuming(
                    &self.conn,
                    &setup.names.queue,
                    &mut child,
                    Some(&setup.log()),
                )
                .await?;
                child.stop(Duration::from_secs(40))?;
            }
            System::Baseline => declare_baseline(&self.conn, &setup.names).await?,
            System::Alertmanager | System::Ceiling => {
                return Err(format!("{} has no backlog run", system.name()));
            }
        }
        let phase = self.phase(events, false);
        println!(
            "[{key}] {}: publishing {events} events with no consumer running...",
            system.name()
        );
        let published = spawn_publisher(PublishJob {
            exchange: setup.names.exchange.clone(),
            phase: phase.id,
            events,
            rate: None,
            window: WINDOW * 4,
            body: Arc::clone(&self.body),
            base: self.sink.base,
        })
        .join()
        .map_err(|_| "the publisher panicked".to_owned())??;
        let first = published.sent.first().copied().unwrap_or(0);
        let pub_rate = events as f64 / ((published.confirmed - first) as f64 / 1e9);
        let ready = queue_state(&self.conn, &setup.names.queue)
            .await
            .map_or(0, |(m, _)| m);
        println!(
            "[{key}] {}: {ready} events waiting ({pub_rate:.0} events/s published with confirms); starting the consumer",
            system.name()
        );

        wait_quiet(self.opts.quiet).await;
        let start = self.sink.now();
        let mut child = setup.spawn(system)?;
        let probe = CpuProbe::start(child.pid(), None);
        let perf = start_profile(child.pid(), &format!("{key}-{}", system.name()));
        let expected = events * 2;
        let samples = self
            .await_phase(
                &phase,
                expected,
                &mut child,
                &mut Publisher::default(),
                &setup,
                Duration::from_secs(360),
            )
            .await?;
        let cpu = probe.finish();
        stop_profile(perf);
        let rows = self.ledger_rows(system, &setup).await;
        let rss = peak_rss_kib(child.pid()).unwrap_or(0);
        let stopped = child.stop(Duration::from_secs(40));
        delete_named(&self.conn, setup.names.prefix()).await;
        stopped?;
        let end = phase
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.at)
            .max()
            .unwrap_or(start);
        let secs = (end - start) as f64 / 1e9;
        let f = Figures {
            events,
            notifications: expected,
            secs,
            events_per_sec: events as f64 / secs,
            notifications_per_sec: expected as f64 / secs,
            latency: None,
            p99_by_channel: None,
            cpu_per_1000: cpu.consumer_secs / expected as f64 * 1000.0,
            peak_rss_mib: rss as f64 / 1024.0,
            published_per_sec: pub_rate,
            other_cores: cpu.other_cores(),
            store_cpu_per_1000: cpu.store_secs / expected as f64 * 1000.0,
            ledger_rows: rows,
            broker_cpu_per_1000: cpu.broker_secs / expected as f64 * 1000.0,
            smtp: None,
        };
        report(key, system, &f, &cpu, phase.total.load(Ordering::Relaxed));
        // The resident set as the drain goes on: flat when memory is bounded by the prefetch.
        let mut curve = Vec::new();
        for quarter in 1..=4 {
            let done = expected * quarter / 4;
            if let Some((_, kib)) = samples.iter().rev().find(|(got, _)| *got <= done) {
                curve.push(format!(
                    "{:.1} MiB at {}%",
                    *kib as f64 / 1024.0,
                    quarter * 25
                ));
            }
        }
        println!(
            "[{key}] {}: resident set while draining: {}",
            system.name(),
            curve.join(", ")
        );
        Ok(f)
    }
}

/// Waits until the ceiling's consumer has acknowledged `target` events in all and `publisher`
/// is done: when it said so, and what the publisher did.
async fn await_acked(
    acked: &Mutex<(usize, u64)>,
    target: usize,
    mut publisher: Publisher,
    child: &mut Managed,
    stall: Duration,
) -> Result<(u64, Option<Published>), String> {
    let mut last = (0usize, Instant::now());
    loop {
        if let Some(handle) = publisher.running.take_if(|h| h.is_finished()) {
            publisher.done = Some(
                handle
                    .join()
                    .map_err(|_| "the publisher panicked".to_owned())??,
            );
        }
        let (n, at) = *acked.lock().unwrap();
        if n >= target && publisher.running.is_none() {
            return Ok((at, publisher.done));
        }
        if let Some(exit) = child.exited() {
            return Err(format!("{exit} with {n} of {target} acknowledged"));
        }
        if n > last.0 {
            last = (n, Instant::now());
        }
        if last.1.elapsed() > stall {
            return Err(format!(
                "nothing acknowledged for {stall:?}; {n} of {target} acknowledged"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A live run's figures: rates from the first publish to the last arrival, latency per
/// notification, the consumer's CPU per notification.
fn live_figures(
    sc: &Scenario,
    expected: usize,
    phase: &Phase,
    published: &Published,
    cpu: &CpuUse,
    rss: u64,
    rows: Option<Vec<(String, u64)>>,
) -> Figures {
    let arrivals = phase.arrivals.lock().unwrap().clone();
    let mut latencies: Vec<u64> = arrivals
        .iter()
        .map(|a| a.at.saturating_sub(published.sent[a.event as usize]))
        .collect();
    latencies.sort_unstable();
    let p99_of = |email: bool| {
        let mut v: Vec<u64> = arrivals
            .iter()
            .filter(|a| (a.slot >= 2) == email)
            .map(|a| a.at.saturating_sub(published.sent[a.event as usize]))
            .collect();
        v.sort_unstable();
        percentile(&v, 0.99)
    };
    let p99_by_channel = (sc.channels == Channels::Mixed).then(|| [p99_of(false), p99_of(true)]);
    let first = published.sent.first().copied().unwrap_or(0);
    let end = arrivals.iter().map(|a| a.at).max().unwrap_or(first);
    let secs = (end - first) as f64 / 1e9;
    let pub_secs = (published.confirmed - first) as f64 / 1e9;
    Figures {
        events: sc.events,
        notifications: expected,
        secs,
        events_per_sec: sc.events as f64 / secs,
        notifications_per_sec: expected as f64 / secs,
        latency: Some([
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
        ]),
        p99_by_channel,
        cpu_per_1000: cpu.consumer_secs / expected as f64 * 1000.0,
        peak_rss_mib: rss as f64 / 1024.0,
        published_per_sec: sc.events as f64 / pub_secs,
        other_cores: cpu.other_cores(),
        store_cpu_per_1000: cpu.store_secs / expected as f64 * 1000.0,
        ledger_rows: rows,
        broker_cpu_per_1000: cpu.broker_secs / expected as f64 * 1000.0,
        smtp: None,
    }
}

fn report(key: &str, system: System, f: &Figures, cpu: &CpuUse, total: usize) {
    let mut line = format!(
        "[{key}] {}: {} events, {} notifications in {:.2} s: {:.0} events/s, {:.0} notifications/s",
        system.name(),
        f.events,
        f.notifications,
        f.secs,
        f.events_per_sec,
        f.notifications_per_sec
    );
    if let Some([p50, p95, p99]) = f.latency {
        let _ = write!(
            line,
            "; latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms"
        );
    }
    if let Some([web, mail]) = f.p99_by_channel {
        let _ = write!(line, " (p99 webhooks {web:.1} ms, emails {mail:.1} ms)");
    }
    let _ = write!(
        line,
        "; CPU {:.3} s per 1,000 notifications; peak RSS {:.1} MiB",
        f.cpu_per_1000, f.peak_rss_mib
    );
    if total > f.notifications {
        let _ = write!(line, "; {} repeated", total - f.notifications);
    }
    if let (Some(rows), Some(per_sec)) = (&f.ledger_rows, f.ledger_rows_per_sec()) {
        let tables: Vec<String> = rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let _ = write!(line, "; ledger {per_sec:.0} rows/s ({})", tables.join(", "));
    }
    if system == System::Postgres {
        let _ = write!(
            line,
            "; PostgreSQL CPU {:.3} s per 1,000 notifications",
            f.store_cpu_per_1000
        );
    }
    if let Some(m) = &f.smtp {
        let _ = write!(
            line,
            "; SMTP server ({}{}) CPU {:.3} s per 1,000 emails, {} connections opened, at most {} open at once",
            m.server.name(),
            if m.quickack { ", ACKs at once" } else { "" },
            m.cpu_per_1000,
            m.connections.opened,
            m.connections.peak
        );
    }
    let _ = write!(line, "; published at {:.0} events/s", f.published_per_sec);
    println!("{line}");
    println!("[{key}] {}: {}", system.name(), cpu.describe(system.name()));
}

// ---------------------------------------------------------------------------------------------
// The run and the results table.

/// One scenario's results: each consumer's, one per round.
struct Row {
    key: &'static str,
    title: String,
    results: Vec<(System, Vec<Result<Figures, String>>)>,
}

impl Row {
    fn new(key: &'static str, title: String, systems: &[System]) -> Row {
        Row {
            key,
            title,
            results: systems.iter().map(|s| (*s, Vec::new())).collect(),
        }
    }

    fn push(&mut self, system: System, result: Result<Figures, String>) {
        if let Err(e) = &result {
            eprintln!("[{}] {}: error: {e}", self.key, system.name());
        }
        if let Some((_, v)) = self.results.iter_mut().find(|(s, _)| *s == system) {
            v.push(result);
        }
    }

    /// The first run of `system`.
    fn first(&self, system: System) -> Option<&Result<Figures, String>> {
        self.results
            .iter()
            .find(|(s, _)| *s == system)
            .and_then(|(_, v)| v.first())
    }

    fn ok(&self) -> bool {
        self.results
            .iter()
            .all(|(_, v)| v.iter().all(Result::is_ok))
    }
}

/// `systems` in the order of round `round`: each round starts one further along, so no
/// consumer always runs first or after the same one.
fn in_turn(systems: &[System], round: usize) -> Vec<System> {
    let mut v = systems.to_vec();
    v.rotate_left(round % systems.len().max(1));
    v
}

async fn run(wanted: Vec<String>) -> bool {
    let opts = Opts::from_env();
    let all = ["throughput", "mixed", "email", "latency", "backlog"];
    for w in &wanted {
        if !all.contains(&w.as_str()) {
            eprintln!("unknown scenario {w}: choose from {}", all.join(", "));
            return false;
        }
    }
    let selected = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    let conn = match Connection::connect(AMQP, ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: cannot reach RabbitMQ at 127.0.0.1:5672 ({e}); start it with `rabbitmq-server -detached`"
            );
            return false;
        }
    };
    delete_stale(&conn).await;
    if opts.variants.contains(&System::Postgres) {
        Database::drop_stale(&opts.postgres_url);
    }
    let sink = Arc::new(Sink {
        base: Instant::now(),
        phase: RwLock::new(None),
        smtp_opened: AtomicUsize::new(0),
        smtp_open: AtomicUsize::new(0),
        smtp_peak: AtomicUsize::new(0),
    });
    let receiver_port = start_receiver(Arc::clone(&sink)).await;
    let body = std::fs::read(root().join("schemas/examples/valid/court.bail.decided.json"))
        .expect("the court.bail.decided example");
    let mut bench = Bench {
        opts,
        sink: Arc::clone(&sink),
        receiver_port,
        conn,
        body: Arc::new(body),
        next_phase: 0,
        runs: 0,
        tmp: tempfile::tempdir().expect("temp dir"),
    };
    print_machine(&bench.opts);
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();

    let live = [
        (
            "throughput",
            Scenario {
                key: "throughput",
                events: bench.opts.events,
                rate: None,
                channels: Channels::Webhook,
                quickack: false,
            },
            "max throughput, 2 webhooks/event",
        ),
        (
            "mixed",
            Scenario {
                key: "mixed",
                events: bench.opts.mixed_events,
                rate: None,
                channels: Channels::Mixed,
                quickack: false,
            },
            "mixed, 2 emails + 2 webhooks/event",
        ),
        (
            "email",
            Scenario {
                key: "email",
                events: bench.opts.email_events,
                rate: None,
                channels: Channels::Email,
                quickack: false,
            },
            "email, 2 emails/event",
        ),
        (
            "email",
            Scenario {
                key: "email-quickack",
                events: bench.opts.email_events,
                rate: None,
                channels: Channels::Email,
                quickack: true,
            },
            "email, 2 emails/event, the sink ACKs at once",
        ),
        (
            "latency",
            Scenario {
                key: "latency",
                events: (bench.opts.rate * bench.opts.rate_secs).round() as usize,
                rate: Some(bench.opts.rate),
                channels: Channels::Webhook,
                quickack: false,
            },
            "fixed rate, 2 webhooks/event",
        ),
    ];
    let systems = bench.opts.systems();
    let rounds = if bench.opts.variants.is_empty() {
        1
    } else {
        bench.opts.rounds
    };
    for (name, sc, title) in &live {
        if !selected(name) {
            continue;
        }
        if sc.quickack && (!bench.opts.email_quickack || bench.opts.smtp_server != SmtpServer::Sink)
        {
            println!(
                "\n[{}] skipped: only the sink (E2E_SMTP=sink) acknowledges at once; E2E_EMAIL_QUICKACK=0 leaves it out",
                sc.key
            );
            continue;
        }
        let title = match sc.rate {
            Some(r) => format!("{title} at {r:.0} events/s"),
            None => title.to_string(),
        };
        let mut row = Row::new(sc.key, title, &systems);
        let smtp = if sc.channels.emails() {
            match Smtp::start(Arc::clone(&sink), bench.opts.smtp_server, sc.quickack) {
                Ok(s) => Some(s),
                Err(e) => {
                    row.push(systems[0], Err(e));
                    rows.push(row);
                    continue;
                }
            }
        } else {
            None
        };
        println!("\n[{}] {}: {} events", sc.key, row.title, sc.events);
        if let Some(smtp) = &smtp {
            println!(
                "[{}] SMTP server: {}{}",
                sc.key,
                smtp.server.name(),
                if sc.quickack { ", ACKs at once" } else { "" }
            );
        }
        for round in 0..rounds {
            if rounds > 1 {
                println!("[{}] round {} of {rounds}", sc.key, round + 1);
            }
            for system in in_turn(&systems, round) {
                let f = bench.live(sc, system, smtp.as_ref()).await;
                row.push(system, f);
            }
        }
        if sc.key == "throughput" && bench.opts.variants.is_empty() && bench.opts.peers {
            if on_path("prometheus-alertmanager") {
                row.results.push((System::Alertmanager, Vec::new()));
                let f = bench.alertmanager(sc).await;
                row.push(System::Alertmanager, f);
            } else {
                println!(
                    "[throughput] peer skipped: prometheus-alertmanager is not on PATH (Debian: apt-get install prometheus-alertmanager)"
                );
            }
            row.results.push((System::Ceiling, Vec::new()));
            let f = bench.ceiling(sc).await;
            row.push(System::Ceiling, f);
        }
        rows.push(row);
    }
    if selected("backlog") {
        let n = bench.opts.backlog;
        let title = format!("backlog of {n} published with Herald stopped, then drained");
        println!("\n[backlog] {title}");
        let mut row = Row::new("backlog", title, &systems);
        for system in systems.iter().copied() {
            let over = started.elapsed() > Duration::from_secs(bench.opts.budget_secs);
            if system == System::Baseline && (over || !bench.opts.backlog_baseline) {
                if over && bench.opts.backlog_baseline {
                    println!(
                        "[backlog] baseline skipped: the run has taken more than E2E_BUDGET_SECS ({} s)",
                        bench.opts.budget_secs
                    );
                }
                continue;
            }
            let f = bench.backlog(n, system).await;
            row.push(system, f);
        }
        rows.push(row);
    }
    delete_named(&bench.conn, &run_prefix()).await;
    let _ = bench.conn.close(200, "done".into()).await;
    println!(
        "\nfinished in {:.0} s\n\n{}",
        started.elapsed().as_secs_f64(),
        table(&rows, &bench.opts)
    );
    rows.iter().all(Row::ok)
}

/// Whether an executable of this name is in a folder of PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn print_machine(opts: &Opts) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        c if c.is_empty() => "an unknown commit".to_owned(),
        c => c,
    };
    let changed = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    println!(
        "machine: {model}, {cores} cores; Herald at {commit}{}; prefetch {}, webhook concurrency per endpoint {}, RUST_LOG={}",
        if changed.is_empty() {
            ""
        } else {
            " with uncommitted changes"
        },
        opts.prefetch,
        opts.concurrency,
        opts.herald_log
    );
}

fn table(rows: &[Row], opts: &Opts) -> String {
    if !opts.variants.is_empty() {
        return variants_table(rows);
    }
    // Herald's run and the baseline's, per scenario.
    type Run = Result<Figures, String>;
    let peers: Vec<(&str, Option<&Run>, Option<&Run>)> = rows
        .iter()
        .map(|r| {
            (
                r.title.as_str(),
                r.first(System::Alertmanager),
                r.first(System::Ceiling),
            )
        })
        .collect();
    let rows: Vec<(&str, &str, &Run, Option<&Run>)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r.key,
                r.title.as_str(),
                r.first(System::Herald)?,
                r.first(System::Baseline),
            ))
        })
        .collect();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | consumer | events | events/s | notifications/s | p50 ms | p95 ms | p99 ms | CPU s / 1,000 notifications | peak RSS MiB |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let lat = |f: &Figures, i: usize| f.latency.map_or("-".into(), |l| format!("{:.1}", l[i]));
    let line = |t: &mut String, title: &str, who: &str, f: &Result<Figures, String>| match f {
        Ok(f) => {
            let _ = writeln!(
                t,
                "| {title} | {who} | {} | {:.0} | {:.0} | {} | {} | {} | {:.3} | {:.1} |",
                f.events,
                f.events_per_sec,
                f.notifications_per_sec,
                lat(f, 0),
                lat(f, 1),
                lat(f, 2),
                f.cpu_per_1000,
                f.peak_rss_mib
            );
        }
        Err(e) => {
            let short: String = e
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect();
            let _ = writeln!(t, "| {title} | {who} | failed: {short} | | | | | | | |");
        }
    };
    for &(_, title, herald, baseline) in &rows {
        line(&mut t, title, "Herald", herald);
        if let Some(b) = baseline {
            line(&mut t, title, "baseline", b);
            if let (Ok(h), Ok(b)) = (herald, b) {
                // The baseline's targets: throughput and p99.
                ratio_line(&mut t, title, "baseline", h, b, &[0, 4]);
            }
        }
        let Some(&(_, am, ceiling)) = peers.iter().find(|(t, _, _)| *t == title) else {
            continue;
        };
        if let Some(a) = am {
            line(&mut t, title, "Alertmanager", a);
            if let (Ok(h), Ok(a)) = (herald, a) {
                // Against the peer: throughput and CPU per notification.
                ratio_line(&mut t, title, "Alertmanager", h, a, &[0, 5]);
            }
        }
        if let Some(c) = ceiling {
            // Per event: it makes no notification.
            line(
                &mut t,
                title,
                "broker ceiling (ack only; CPU per 1,000 events)",
                c,
            );
            if let (Ok(h), Ok(c)) = (herald, c) {
                let _ = writeln!(
                    t,
                    "| {title} | **Herald ÷ broker ceiling** | | **{:.2}** | | | | | {:.2} per event | |",
                    h.events_per_sec / c.events_per_sec,
                    h.cpu_per_1000 * 2.0 / c.cpu_per_1000,
                );
            }
        }
    }
    let mut targets = String::new();
    for &(key, _, herald, baseline) in &rows {
        let (Ok(h), Some(Ok(b))) = (herald, baseline) else {
            continue;
        };
        if key == "throughput" || key == "mixed" {
            let ratio = h.events_per_sec / b.events_per_sec;
            let _ = writeln!(
                targets,
                "- {key}: throughput {ratio:.2} of the baseline (target ≥ 0.85): {}",
                if ratio >= 0.85 { "met" } else { "not met" }
            );
        }
    }
    for &(key, _, herald, _) in &rows {
        let Ok(h) = herald else { continue };
        if key == "latency"
            && let Some(l) = h.latency
        {
            let _ = writeln!(
                targets,
                "- latency: Herald p99 {:.1} ms at {:.0} events/s (target ≤ 25 ms): {}",
                l[2],
                opts.rate,
                if l[2] <= 25.0 { "met" } else { "not met" }
            );
        }
        if key == "backlog" {
            let _ = writeln!(
                targets,
                "- backlog: Herald peak RSS {:.1} MiB draining {} events (target ≤ 64 MiB): {}",
                h.peak_rss_mib,
                h.events,
                if h.peak_rss_mib <= 64.0 {
                    "met"
                } else {
                    "not met"
                }
            );
        }
    }
    for &(_, title, herald, baseline) in &rows {
        for (who, f) in [("Herald", Some(herald)), ("baseline", baseline)] {
            if let Some(Ok(f)) = f
                && let Some(m) = &f.smtp
            {
                let _ = writeln!(
                    targets,
                    "- {title}, {who}: {:.0} emails/s; SMTP server ({}) CPU {:.3} s per 1,000 emails, RabbitMQ {:.3} s per 1,000 notifications; {} SMTP connections opened, at most {} open at once",
                    f.events_per_sec * RECIPIENTS.len() as f64,
                    m.server.name(),
                    m.cpu_per_1000,
                    f.broker_cpu_per_1000,
                    m.connections.opened,
                    m.connections.peak
                );
            }
        }
    }
    for &(_, title, herald, baseline) in &rows {
        for (who, f) in [("Herald", Some(herald)), ("baseline", baseline)] {
            if let Some(Ok(f)) = f
                && f.other_cores > 0.2
            {
                let _ = writeln!(
                    targets,
                    "- note: {title}, {who}: other processes used {:.2} cores meanwhile",
                    f.other_cores
                );
            }
        }
    }
    if !targets.is_empty() {
        let _ = write!(t, "\n{targets}");
    }
    t
}

/// The median of `v` (not empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median (min–max)`, or the one value, with `digits` decimals; `-` for none.
fn spread(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 {
        format!("{:.digits$}", v[0])
    } else {
        format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
    }
}

/// With `E2E_VARIANTS`: per scenario and variant, the median and spread of its runs, and its
/// throughput against the first variant's in the same round.
fn variants_table(rows: &[Row]) -> String {
    let mut t = String::new();
    let mut notes = String::new();
    for row in rows {
        let Some((reference, reference_runs)) = row.results.first() else {
            continue;
        };
        let runs = match reference_runs.len() {
            1 => "one run of each".to_owned(),
            n => format!("{n} runs of each, alternated"),
        };
        let _ = writeln!(t, "{} ({runs}):\n", row.title);
        let _ = writeln!(
            t,
            "| variant | runs | events/s | notifications/s | events/s ÷ {} | CPU s / 1,000 notifications | PostgreSQL CPU s / 1,000 notifications | peak RSS MiB | ledger rows/s |",
            reference.name()
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (system, runs) in &row.results {
            let ok: Vec<&Figures> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
            let of = |f: fn(&Figures) -> f64| ok.iter().map(|x| f(x)).collect::<Vec<f64>>();
            // Round by round: this variant's throughput over the reference's.
            let ratios: Vec<f64> = runs
                .iter()
                .zip(reference_runs)
                .filter_map(|(a, b)| {
                    Some(a.as_ref().ok()?.events_per_sec / b.as_ref().ok()?.events_per_sec)
                })
                .collect();
            let rows_per_sec: Vec<f64> =
                ok.iter().filter_map(|f| f.ledger_rows_per_sec()).collect();
            let store = if *system == System::Postgres {
                spread(&of(|f| f.store_cpu_per_1000), 3)
            } else {
                "-".into()
            };
            let failed = runs.len() - ok.len();
            let _ = writeln!(
                t,
                "| {} | {}{} | {} | {} | {} | {} | {store} | {} | {} |",
                system.name(),
                ok.len(),
                if failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                },
                spread(&of(|f| f.events_per_sec), 0),
                spread(&of(|f| f.notifications_per_sec), 0),
                if system == reference {
                    "1".into()
                } else {
                    spread(&ratios, 2)
                },
                spread(&of(|f| f.cpu_per_1000), 3),
                spread(&of(|f| f.peak_rss_mib), 1),
                spread(&rows_per_sec, 0),
            );
            let target = match system {
                System::Sqlite => Some(0.9),
                System::Postgres => Some(0.8),
                _ => None,
            };
            if let Some(target) =
                target.filter(|_| *reference == System::NoLedger && !ratios.is_empty())
            {
                let m = median(&ratios);
                let _ = writeln!(
                    notes,
                    "- {}, {}: throughput {m:.2} of noledger, median of {} rounds (target ≥ {target}): {}",
                    row.key,
                    system.name(),
                    ratios.len(),
                    if m >= target { "met" } else { "not met" }
                );
            }
            for f in &ok {
                if f.other_cores > 0.2 {
                    let _ = writeln!(
                        notes,
                        "- note: {}, {}: other processes used {:.2} cores in one run",
                        row.key,
                        system.name(),
                        f.other_cores
                    );
                }
            }
        }
        t.push('\n');
    }
    t.push_str(&notes);
    t
}

// ---------------------------------------------------------------------------------------------
// The baseline consumer, run as a child process of the benchmark.

mod baseline {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::StreamExt;
    use futures_util::future::join_all;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};
    use lettre::message::Mailbox;
    use lettre::message::header::ContentType;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    use tokio::sync::Semaphore;

    struct Target {
        client: reqwest::Client,
        /// URL and its slots (as Herald's per-endpoint concurrency).
        urls: Vec<(String, Semaphore)>,
        smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
        emails: Vec<(Mailbox, Semaphore)>,
        from: Mailbox,
    }

    fn var(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    #[tokio::main]
    pub async fn main() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let queue = var("BASELINE_QUEUE");
        let prefetch: u16 = var("BASELINE_PREFETCH").parse().expect("prefetch");
        let concurrency: usize = var("BASELINE_CONCURRENCY").parse().expect("concurrency");
        let slots = || Semaphore::new(concurrency.max(1));
        let connections: u32 = var("BASELINE_SMTP_CONNECTIONS")
            .parse()
            .expect("connections");
        let smtp = std::env::var("BASELINE_SMTP").ok().map(|url| {
            AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
                .expect("SMTP URL")
                .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(connections))
                .build()
        });
        let emails = std::env::var("BASELINE_EMAILS")
            .map(|v| {
                v.split(',')
                    .map(|a| (a.parse().expect("address"), slots()))
                    .collect()
            })
            .unwrap_or_default();
        let target = Arc::new(Target {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .expect("HTTP client"),
            // None in the email scenario.
            urls: var("BASELINE_URLS")
                .split(',')
                .filter(|u| !u.is_empty())
                .map(|u| (u.to_owned(), slots()))
                .collect(),
            smtp,
            emails,
            from: "Baseline <baseline@bench.invalid>".parse().expect("from"),
        });
        let conn = Connection::connect(
            super::AMQP,
            ConnectionProperties::default().with_connection_name("herald-e2e-baseline".into()),
        )
        .await
        .expect("RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "baseline".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        if std::env::var_os("BASELINE_ACK_ONLY").is_some() {
            // The broker ceiling: acknowledge each event, nothing else. The count goes to
            // stdout at most every 10 ms, for the benchmark to time the last one.
            let acked = Arc::new(AtomicUsize::new(0));
            let count = Arc::clone(&acked);
            tokio::spawn(async move {
                let mut said = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let n = count.load(Ordering::Relaxed);
                    if n != said {
                        println!("{n}");
                        said = n;
                    }
                }
            });
            while let Some(delivery) = consumer.next().await {
                let Ok(delivery) = delivery else { break };
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let ok = target.send(&id, &delivery.data).await;
                let _ = if ok {
                    delivery.ack(BasicAckOptions::default()).await
                } else {
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                };
            });
        }
    }

    impl Target {
        /// The raw body to every URL and every address, concurrently; true if all took it.
        async fn send(&self, id: &str, body: &[u8]) -> bool {
            let posts = self.urls.iter().map(|(url, slots)| async move {
                let _slot = slots.acquire().await.ok()?;
                let r = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-event-id", id)
                    .body(body.to_vec())
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            });
            let mails = self.emails.iter().enumerate().map(|(n, (to, slots))| {
                let smtp = self.smtp.as_ref();
                async move {
                    let _slot = slots.acquire().await.ok()?;
                    let message = Message::builder()
                        .from(self.from.clone())
                        .to(to.clone())
                        .subject("court.bail.decided")
                        .message_id(Some(format!("<{id}.{}@bench.invalid>", n + 2)))
                        .header(ContentType::TEXT_PLAIN)
                        .body(String::from_utf8_lossy(body).into_owned())
                        .ok()?;
                    smtp?.send(message).await.ok().map(drop)
                }
            });
            let (a, b) = futures_util::join!(join_all(posts), join_all(mails));
            a.iter().chain(&b).all(Option::is_some)
        }
    }
}

/// A table row of Herald's figures as ratios of `other`'s (events/s, notifications/s, p50,
/// p95, p99, CPU per notification, peak RSS), the columns numbered in `bold` in bold.
fn ratio_line(
    t: &mut String,
    title: &str,
    who: &str,
    h: &Figures,
    other: &Figures,
    bold: &[usize],
) {
    let r = |x: f64, y: f64| format!("{:.2}", x / y);
    let latency = |i: usize| match (h.latency, other.latency) {
        (Some(x), Some(y)) => r(x[i], y[i]),
        _ => "-".into(),
    };
    let cells = [
        r(h.events_per_sec, other.events_per_sec),
        r(h.notifications_per_sec, other.notifications_per_sec),
        latency(0),
        latency(1),
        latency(2),
        r(h.cpu_per_1000, other.cpu_per_1000),
        r(h.peak_rss_mib, other.peak_rss_mib),
    ];
    let cells: Vec<String> = cells
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if bold.contains(&i) {
                format!("**{c}**")
            } else {
                c
            }
        })
        .collect();
    let _ = writeln!(
        t,
        "| {title} | **Herald ÷ {who}** | | {} |",
        cells.join(" | ")
    );
}

//! Real parts for the service tests: an SMTP server (Python's aiosmtpd) and an HTTP receiver
//! that checks Standard Webhooks signatures itself, both on loopback; RabbitMQ (the one
//! [`super::broker`] decides on) with names of the test's own; and Herald started as the binary
//! starts it.
//!
//! aiosmtpd is taken from `python3` when it has it; otherwise it is installed once into a
//! virtual environment of the tests' own, `target/tmp/herald-aiosmtpd/`, and run from there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::Config;
use herald::core::Core;
use herald::serve::{self, Running, Settings};
use hmac::{Hmac, Mac};
use lapin::options::{
    BasicGetOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use sha2::Sha256;

/// The broker the tests use (see [`super::broker`]): `HERALD_TEST_AMQP_URL`, so the suite can
/// run on a virtual host (or a port) of its own; or guest on the local broker's default vhost,
/// or on the tests' private node when no broker answers. The tests publish as guest (`user_id`
/// guest, `guest` in `[publishers]`), so the login must be guest.
pub fn amqp_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let url = super::broker::broker().url.clone();
        let parsed = url::Url::parse(&url)
            .unwrap_or_else(|e| panic!("HERALD_TEST_AMQP_URL is not a URL: {e}"));
        assert_eq!(
            parsed.username(),
            "guest",
            "HERALD_TEST_AMQP_URL must log in as guest: the tests publish as guest"
        );
        url
    })
    .clone()
}

/// The virtual host of [`amqp_url`], for rabbitmqctl's `-p`.
pub fn vhost() -> String {
    let url = url::Url::parse(&amqp_url()).unwrap();
    let path = url.path().trim_start_matches('/');
    let name = url::form_urlencoded::parse(format!("v={path}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if name.is_empty() { "/".into() } else { name }
}

/// [`amqp_url`] logged in as another user.
pub fn amqp_url_as(user: &str, password: &str) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

/// `rabbitmqctl list_queues` on the tests' broker and virtual host, with these columns.
pub fn list_queues(columns: &[&str]) -> std::io::Result<std::process::Output> {
    super::broker::rabbitmqctl()
        .args(["list_queues", "-p", &vhost(), "-q"])
        .args(columns)
        .output()
}

/// The signing secret every test webhook endpoint shares.
pub const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLWhlcmFsZC10ZXN0cw==";

/// Waits for a condition, checking every 50 ms, failing the test at the deadline.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; Herald's queues on the broker:\n{}",
                queue_depths()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the broker's queues that start with `prefix`.
fn queues_named(prefix: &str) -> Vec<String> {
    list_queues(&["name"])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|name| name.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Every `herald.` queue on the broker with its ready and unacknowledged counts, for the
/// message of a test that timed out.
fn queue_depths() -> String {
    list_queues(&["name", "messages_ready", "messages_unacknowledged"])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("herald."))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| format!("rabbitmqctl failed: {e}"))
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc: the
/// listening socket's inode among the process's open files).
fn listens(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// An SMTP server on loopback that stores every message in a maildir.
pub struct Smtp {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// One received email.
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: String,
    /// Every header of the message, in order.
    pub headers: Vec<(String, String)>,
    /// When the server stored it (the file's modification time).
    pub received: std::time::SystemTime,
}

impl Mail {
    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn has_aiosmtpd(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that has aiosmtpd: `python3`, or the tests' own virtual environment, made (under a
/// lock, as several test binaries may want it) the first time it is needed.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let system = PathBuf::from("python3");
        if has_aiosmtpd(&system) {
            return Ok(system);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("herald-aiosmtpd");
        let python = venv.join("bin/python");
        let _lock = super::DirLock::acquire(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("herald-aiosmtpd.lock"),
            Duration::from_secs(300),
        )?;
        if has_aiosmtpd(&python) {
            return Ok(python);
        }
        let run = |cmd: &mut Command, what: &str| match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("no message")
            )),
            Err(e) => Err(format!("{what} failed: {e}")),
        };
        let _ = std::fs::remove_dir_all(&venv);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )
        .and_then(|()| {
            run(
                Command::new(&python).args(["-m", "pip", "install", "--quiet", "aiosmtpd"]),
                "pip install aiosmtpd",
            )
        })
        .map_err(|e| {
            format!(
                "the SMTP test server needs Python 3 with aiosmtpd, and installing it into {} \
                 did not work ({e}): python3 -m pip install aiosmtpd",
                venv.display()
            )
        })?;
        Ok(python)
    });
    match found {
        Ok(python) => python,
        Err(line) => panic!("{line}"),
    }
}

impl Smtp {
    pub fn start() -> Smtp {
        // A port found free can be taken by another test before the server binds it: the
        // server then exits, and a connection would reach that other test's listener. Tried
        // again on another port until the listener is this server's own.
        for _ in 0..10 {
            if let Some(smtp) = Smtp::try_start(free_port(), tempfile::tempdir().unwrap()) {
                return smtp;
            }
        }
        panic!("aiosmtpd could not take a free port in ten tries");
    }

    /// A port for a server started later (to play an SMTP server that is down for a while).
    pub fn reserve() -> (u16, tempfile::TempDir) {
        (free_port(), tempfile::tempdir().unwrap())
    }

    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Smtp {
        Smtp::try_start(port, dir)
            .unwrap_or_else(|| panic!("aiosmtpd could not listen on port {port}: taken"))
    }

    /// The server on `port`, once the process listening there is this one; None if it exits
    /// (the port was taken).
    fn try_start(port: u16, dir: tempfile::TempDir) -> Option<Smtp> {
        let mut child = Command::new(python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(dir.path().join("maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start aiosmtpd: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !listens(child.id(), port) {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Smtp { port, dir, child })
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// How many messages have arrived, without reading them.
    pub fn count(&self) -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.dir.path().join("maildir").join(sub)).ok())
            .map(|entries| entries.count())
            .sum()
    }

    pub fn messages(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.path().join("maildir").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let raw = std::fs::read(entry.path()).unwrap();
                let received = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                let parsed = mailparse::parse_mail(&raw).unwrap();
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.get_key().eq_ignore_ascii_case(name))
                        .map(|h| h.get_value())
                        .unwrap_or_default()
                };
                let part = |mime: &str| {
                    parsed
                        .subparts
                        .iter()
                        .find(|p| p.ctype.mimetype == mime)
                        .map(|p| p.get_body().unwrap())
                        .unwrap_or_default()
                };
                out.push(Mail {
                    to: header("To")
                        .split(',')
                        .map(|a| a.trim().to_owned())
                        .filter(|a| !a.is_empty())
                        .collect(),
                    subject: header("Subject"),
                    message_id: header("Message-ID"),
                    text: part("text/plain"),
                    html: part("text/html"),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| (h.get_key(), h.get_value()))
                        .collect(),
                    received,
                });
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub id: String,
    pub verified: bool,
    pub body: Value,
    pub at: Instant,
    /// The status the receiver answered.
    pub status: u16,
}

/// An HTTP receiver on loopback; answers 204, or the status set for a path.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    hooks: Arc<Mutex<Vec<Hook>>>,
    statuses: Arc<Mutex<BTreeMap<String, u16>>>,
    /// Path -> (status, how many more requests get it before 204).
    failures: Arc<Mutex<BTreeMap<String, (u16, usize)>>>,
    /// Flaky paths -> requests seen.
    flaky: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Slow paths -> how long each request takes.
    slow: Arc<Mutex<BTreeMap<String, Duration>>>,
    /// Path -> requests that have arrived, answered or not.
    arrived: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            port: listener.local_addr().unwrap().port(),
            hooks: Arc::default(),
            statuses: Arc::default(),
            failures: Arc::default(),
            flaky: Arc::default(),
            slow: Arc::default(),
            arrived: Arc::default(),
        };
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// What `${HERALD_RECEIVER_URL}` stands for to send the sample webhooks here.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn answer(&self, path: &str, status: u16) {
        self.statuses
            .lock()
            .unwrap()
            .insert(path.to_owned(), status);
    }

    /// Makes `path` flaky: every other request answers 503, and every fifth hangs for two
    /// seconds before answering 204 (past a short client timeout).
    pub fn flaky(&self, path: &str) {
        self.flaky.lock().unwrap().insert(path.to_owned(), 0);
    }

    /// Makes every request for `path` take `time` before it is answered.
    pub fn slow(&self, path: &str, time: Duration) {
        self.slow.lock().unwrap().insert(path.to_owned(), time);
    }

    /// Answers `status` to the next `times` requests for `path`, then 204.
    pub fn fail(&self, path: &str, status: u16, times: usize) {
        self.failures
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, times));
    }

    /// Requests for `path` that have arrived so far, including those not yet answered.
    pub fn arrived(&self, path: &str) -> usize {
        self.arrived.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// The webhooks that arrived at `path`, in the order they arrived.
    pub fn hooks_at(&self, path: &str) -> Vec<Hook> {
        let mut hooks: Vec<Hook> = self
            .hooks()
            .into_iter()
            .filter(|h| h.path == path)
            .collect();
        hooks.sort_by_key(|h| h.at);
        hooks
    }
}

/// The Standard Webhooks signature of a body sent with this id and timestamp, signed with
/// [`SECRET`]: `v1,` and the base64 of its HMAC-SHA256.
pub fn sign(id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks the signature the way a recipient following Standard Webhooks would.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let expected = sign(&h("webhook-id"), &h("webhook-timestamp"), body);
    let fresh = h("webhook-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    fresh && h("webhook-signature").split(' ').any(|s| s == expected)
}

async fn receive(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    *r.arrived.lock().unwrap().entry(path.clone()).or_default() += 1;
    let slow = r.slow.lock().unwrap().get(&path).copied();
    if let Some(time) = slow {
        tokio::time::sleep(time).await;
    }
    let flaky = r.flaky.lock().unwrap().get_mut(&path).map(|n| {
        *n += 1;
        *n
    });
    match flaky {
        Some(n) if n % 5 == 0 => tokio::time::sleep(Duration::from_secs(2)).await,
        Some(n) if n % 2 == 0 => return record(&r, path, &headers, &body, 503),
        _ => {}
    }
    let failing = r
        .failures
        .lock()
        .unwrap()
        .get_mut(&path)
        .filter(|(_, n)| *n > 0)
        .map(|(status, n)| {
            *n -= 1;
            *status
        });
    let status = failing
        .or_else(|| r.statuses.lock().unwrap().get(&path).copied())
        .unwrap_or(204);
    record(&r, path, &headers, &body, status)
}

/// Keeps a request as a `Hook` and answers it with `status`.
fn record(r: &Receiver, path: String, headers: &HeaderMap, body: &[u8], status: u16) -> StatusCode {
    r.hooks.lock().unwrap().push(Hook {
        path,
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        verified: signature_ok(headers, body),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        at: Instant::now(),
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

/// Publishes `n` bail decisions (police and probation are told of each), made distinct by
/// their description, with message ids `{prefix}-{i}`.
pub async fn bail_decisions(ch: &Channel, exchange: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let mut doc = super::example("court.bail.decided.json");
        doc["description"] = serde_json::json!(format!("bail decision {i}"));
        publish(
            ch,
            exchange,
            "court.bail.decided",
            &serde_json::to_vec(&doc).unwrap(),
            agency(&format!("{prefix}-{i}")),
        )
        .await;
    }
}

/// Waits until a queue exists on the broker (a process being started declares it).
pub async fn wait_for_queue(queue: &str) {
    wait_until("the topology declared", Duration::from_secs(30), || async {
        // A failed passive declare closes its channel, so each check has its own.
        let (_conn, ch) = channel().await;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .is_ok()
    })
    .await;
}

/// Messages ready on a queue, by a passive declare on a channel of its own (a failed one
/// closes its channel); the queue must exist.
pub async fn ready(queue: &str) -> u32 {
    let (_conn, ch) = channel().await;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
    .message_count()
}

/// Exchange and queue names of one test.
#[derive(Clone, Debug)]
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub rejected: String,
    pub failed: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let tag = format!(
            "{test}.{}.{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        Names {
            exchange: format!("herald.test.{tag}.events"),
            queue: format!("herald.test.{tag}.queue"),
            rejected: format!("herald.test.{tag}.rejected"),
            failed: format!("herald.test.{tag}.failed"),
        }
    }
}

impl Names {
    /// The queue due retries arrive on, as Herald names it after the events queue.
    pub fn deliveries(&self) -> String {
        format!("{}.deliveries", self.queue)
    }
}

/// A channel in confirm mode, logged in as guest.
pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the tests' RabbitMQ at {}: {e}",
                herald::mask::url(&amqp_url())
            )
        });
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// Publishes and waits for the broker's confirm.
pub async fn publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    // Mandatory, so a message published before Herald has bound its queue comes back instead
    // of vanishing; it is sent again until the binding exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        match confirm {
            lapin::Confirmation::Ack(None) => return,
            lapin::Confirmation::Ack(Some(_)) => {
                assert!(
                    Instant::now() < deadline,
                    "{routing_key} is still unroutable on {exchange} after 30s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the broker did not accept the message: {other:?}"),
        }
    }
}

/// The properties an agency sets: id, publisher (the login), JSON, persistent.
pub fn agency(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_user_id("guest".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Takes every message now in a queue.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery);
    }
    out
}

/// Closes Herald's broker connection from the broker's side, as a broker restart or a network
/// cut would. Returns how many connections were closed.
pub fn close_connection(name: &str) -> usize {
    let out = super::broker::rabbitmqctl()
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(&format!("{{\"connection_name\",\"{name}\"}}")))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for pid in &pids {
        let status = super::broker::rabbitmqctl()
            .args(["close_connection", pid, "closed by a test"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    pids.len()
}

/// The retry waits the tests use: two quick retries.
pub const RETRY_SCHEDULE: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(1)];

pub async fn cleanup(ch: &Channel, names: &Names) {
    // Every queue of the test shares the prefix of its events queue: the retry tiers and the
    // deliveries queue Herald declares, and the rejected and failed queues.
    let prefix = names.queue.trim_end_matches("queue");
    for q in queues_named(prefix) {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(
            names.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}

/// The shipped configuration, with webhooks pointed at the test receiver, and guest allowed
/// to publish everything but `court.hearing.concluded` (for the spoofing test). Without the
/// weekly subscriptions, whose digests would go by the machine's clock: the digest tests put
/// them back ([`config_with_digests`]).
pub fn config(receiver: &Receiver) -> Config {
    let mut config = config_with_digests(receiver);
    config.subscriptions.clear();
    config
}

/// [`config`] with the shipped weekly subscriptions.
pub fn config_with_digests(receiver: &Receiver) -> Config {
    let root = super::root();
    let mut config = Config::load_with(&root.join("routes.toml"), |name| {
        (name == herald::config::RECEIVER_URL_VAR).then(|| receiver.url())
    })
    .unwrap();
    config.publishers.insert(
        "guest".into(),
        vec![
            "prison.*".into(),
            "court.bail.decided".into(),
            "court.warrant.issued".into(),
            "ppud.*".into(),
        ],
    );
    config
}

/// Starts Herald in this process, as `herald serve` does.
pub async fn start(config: Config, names: &Names, smtp: Option<&Smtp>) -> Running {
    start_with(config, names, smtp, |_| {}).await
}

/// Starts Herald with settings adjusted by `adjust`.
pub async fn start_with(
    config: Config,
    names: &Names,
    smtp: Option<&Smtp>,
    adjust: impl FnOnce(&mut Settings),
) -> Running {
    let (core, settings) = prepare(config, names, smtp, adjust).await;
    serve::start(Arc::new(core), settings, secrets)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What [`start_with`] starts Herald with: the core and the settings (this test's queues, a
/// fresh ledger, quick retries), adjusted by `adjust`, for a test that starts it itself.
pub async fn prepare(
    config: Config,
    names: &Names,
    smtp: Option<&Smtp>,
    adjust: impl FnOnce(&mut Settings),
) -> (Core, Settings) {
    let core = Core::from_config(config, &super::root().join("routes.toml"))
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let mut settings = Settings::new(&core.config, |_| None);
    settings.amqp_urls = vec![amqp_url()];
    settings.exchange = names.exchange.clone();
    settings.queue = names.queue.clone();
    settings.rejected_queue = names.rejected.clone();
    settings.failed_queue = names.failed.clone();
    settings.prefetch = 20;
    settings.metrics_addr = "127.0.0.1:0".into();
    settings.smtp_url = smtp.map(Smtp::url);
    settings.outbox = outbox();
    settings.webhook_timeout = Duration::from_secs(5);
    settings.drain = Duration::from_secs(5);
    settings.retry_schedule = RETRY_SCHEDULE.to_vec();
    settings.retry_max_age = Duration::from_secs(60);
    settings.circuit_failures = 3;
    settings.circuit_open_for = Duration::from_secs(60);
    settings.ledger_url = super::ledger::fresh(super::ledger::default_backend()).await;
    adjust(&mut settings);
    super::ledger::remember(&settings.queue, &settings.ledger_url);
    settings.connection_name = names.queue.clone();
    (core, settings)
}

/// The environment the tests' Herald reads its signing secret from.
pub fn secrets(name: &str) -> Option<String> {
    (name == "HERALD_WEBHOOK_SECRET").then(|| SECRET.to_owned())
}

fn outbox() -> PathBuf {
    std::env::temp_dir().join(format!("herald-test-outbox-{}", std::process::id()))
}

/// The HTTP client's TLS provider, as Herald installs it.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `/metrics` as `name{labels}` -> value.
pub async fn scrape(running: &Running) -> BTreeMap<String, f64> {
    scrape_at(&running.metrics_addr.to_string()).await
}

/// `/metrics` of the Herald whose metrics endpoint is at `addr`, as [`scrape`] reads it.
pub async fn scrape_at(addr: &str) -> BTreeMap<String, f64> {
    install_tls();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of a metric's series whose labels include all of `labels` (`key="value"`).
pub fn total(metrics: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) || *k == name)
        .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// A routes.toml for the `herald` binary naming this test's queues and receiver.
pub fn config_file(
    dir: &std::path::Path,
    names: &Names,
    receiver: &Receiver,
    guest_may: &str,
) -> std::path::PathBuf {
    config_file_with(dir, names, receiver, guest_may, "")
}

/// The same, with `extra` TOML appended (a `[retry]` table, say).
pub fn config_file_with(
    dir: &std::path::Path,
    names: &Names,
    receiver: &Receiver,
    guest_may: &str,
    extra: &str,
) -> std::path::PathBuf {
    // Written into the file, so every Herald the test starts sends to its receiver whatever
    // the environment holds.
    let text =
        config_text(names, guest_may, extra).replace(herald::config::RECEIVER_URL, &receiver.url());
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The shipped routes.toml naming this test's queues, with `extra` TOML appended; webhook
/// urls still start with `${HERALD_RECEIVER_URL}`.
pub fn config_text(names: &Names, guest_may: &str, extra: &str) -> String {
    let root = super::root().display().to_string();
    let mut text = std::fs::read_to_string(super::root().join("routes.toml")).unwrap();
    // Without the weekly subscriptions (the last tables of the file), as in `config`.
    if let Some(at) = text.find("\n[[subscription]]") {
        text.truncate(at + 1);
    }
    let text = text
        .replace(
            "exchange = \"herald.events\"",
            &format!("exchange = \"{}\"", names.exchange),
        )
        .replace(
            "queue = \"herald.events\"",
            &format!(
                "queue = \"{}\"\nrejected_queue = \"{}\"\nfailed_queue = \"{}\"",
                names.queue, names.rejected, names.failed
            ),
        )
        .replace(
            "schemas = \"schemas\"",
            &format!("schemas = \"{root}/schemas\""),
        )
        .replace(
            "templates = \"templates\"",
            &format!("templates = \"{root}/templates\""),
        )
        .replace(
            "examples = \"schemas/examples/valid\"",
            &format!("examples = \"{root}/schemas/examples/valid\""),
        )
        .replace(
            "bank_holidays = \"data/bank-holidays.json\"",
            &format!("bank_holidays = \"{root}/data/bank-holidays.json\""),
        )
        .replace(
            "[publishers]\n",
            &format!("[publishers]\nguest = [{guest_may}]\n"),
        );
    format!("{text}\n{extra}\n")
}

/// Runs `herald dlq ARGS` with `config` against the test broker: whether it succeeded, and
/// what it printed.
pub fn dlq(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("dlq")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("HERALD_AMQP_URL", amqp_url());
    // The ledger of the Herald this test started on the file's queues, which a file written
    // before that Herald started does not name.
    let queue = herald::config::Config::load(config).map(|c| c.amqp.queue);
    if let Some(url) = queue.ok().and_then(|q| super::ledger::of_queue(&q)) {
        command.env("HERALD_LEDGER_URL", url);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A warrant with a distinct id and body: one police webhook and one email.
pub fn warrant(i: usize) -> Vec<u8> {
    let mut doc = super::example("court.warrant.issued.json");
    doc["additionalInformation"]["warrantId"] = serde_json::json!(format!("LEEDSMC-W-2026-{i:06}"));
    serde_json::to_vec(&doc).unwrap()
}

/// Publishes the warrants numbered `range`, with message ids `{prefix}-{i}`.
pub async fn publish_warrants(
    ch: &Channel,
    exchange: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        publish(
            ch,
            exchange,
            "court.warrant.issued",
            &warrant(i),
            agency(&format!("{prefix}-{i}")),
        )
        .await;
    }
}

/// Publishes `doc` as the agency would (routing key its `eventType`, `message_id` as given)
/// and waits until the ledger at `store` holds the event: its handling has ended, with
/// everything it delivered, and is committed.
pub async fn publish_recorded(
    ch: &Channel,
    exchange: &str,
    store: &herald::ledger::Store,
    doc: &Value,
    message_id: &str,
) {
    let event_type = doc["eventType"].as_str().unwrap_or_default();
    publish(
        ch,
        exchange,
        event_type,
        &serde_json::to_vec(doc).unwrap(),
        agency(message_id),
    )
    .await;
    let sql = format!("SELECT COUNT(*) FROM events WHERE message_id = '{message_id}'");
    wait_until(
        &format!("{message_id} in the ledger"),
        WAIT_LEDGER,
        || async { super::ledger::count(store, &sql).await >= 1 },
    )
    .await;
}

const WAIT_LEDGER: Duration = Duration::from_secs(30);

/// Waits until the receiver has seen `expected` distinct webhook ids.
pub async fn every_webhook_delivered(receiver: &Receiver, expected: usize, timeout: Duration) {
    wait_until("every webhook delivered", timeout, || async {
        receiver
            .hooks()
            .iter()
            .map(|h| h.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= expected
    })
    .await;
}

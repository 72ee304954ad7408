//! The ledger unavailable, against the real broker and receiver, with Herald run as `herald
//! serve` in a child process (its `/readyz`, `/metrics` and log read as an operator would): a
//! private PostgreSQL stopped and started again, a SQLite folder read-only at start-up or
//! while Herald runs, a SQLite disk that fills up; Herald killed with SIGKILL twice during
//! 2,000 events on its ledger; and the gauges the ledger rebuilds at start-up.
//!
//! While the store takes no writes, Herald must acknowledge nothing, answer 503 on `/readyz`
//! with the reason, show `herald_ledger_up 0` and say so in one log line; once the store is
//! back it resumes by itself with one more line, and nothing is lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::service::{
    self, Names, Receiver, every_webhook_delivered, publish_warrants, total, wait_until,
};
use herald::ledger::{Health, Store, Sync};
use serde_json::Value;
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(30);

/// What Herald logs when the store stops taking writes, and when it takes them again.
const DOWN: &str = "the ledger takes no writes; no event is acknowledged until it does";
const BACK: &str = "the ledger takes writes again; events are taken again";
/// The same at start-up, while the ledger cannot be opened.
const CANNOT_OPEN: &str = "cannot open the ledger; no event is taken until it opens";
const OPEN: &str = "the ledger is open";

/// A running `herald serve`, killed when the test ends, however it ends.
struct Herald(Child);

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `herald serve` with its metrics on `port`, its log (JSON, info) appended to `log`,
/// and `env` added to its environment.
fn spawn(config: &Path, log: &Path, port: u16, env: &[(&str, &str)]) -> Herald {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Herald(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("HERALD_LEDGER_URL")
            .env("HERALD_AMQP_URL", service::amqp_url())
            .env("HERALD_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

/// Sends SIGTERM and waits (up to a minute) for Herald to exit, so its log is complete.
async fn terminate(herald: &mut Herald) {
    let term = Command::new("kill")
        .args(["-TERM", &herald.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = Instant::now();
    while herald.0.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "Herald did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL, and the exit reaped.
fn kill(herald: &mut Herald) {
    herald.0.kill().unwrap();
    herald.0.wait().unwrap();
}

/// `GET http://127.0.0.1:{port}{path}`: the status and the body, or None while nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    service::install_tls();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// `/metrics` as `name{labels}` -> value (empty while nothing answers).
async fn metrics(port: u16) -> BTreeMap<String, f64> {
    let Some((200, text)) = get(port, "/metrics").await else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn ledger_up(port: u16) -> Option<f64> {
    metrics(port).await.get("herald_ledger_up").copied()
}

/// Waits until `/readyz` answers 200 and `herald_ledger_up` is 1.
async fn wait_ready(port: u16, timeout: Duration) {
    wait_until("/readyz 200 and herald_ledger_up 1", timeout, || async {
        matches!(get(port, "/readyz").await, Some((200, _))) && ledger_up(port).await == Some(1.0)
    })
    .await;
}

/// Waits until `/readyz` answers 503 naming the ledger and `herald_ledger_up` is 0; the body.
async fn wait_down(port: u16, timeout: Duration) -> String {
    let body = std::sync::Mutex::new(String::new());
    wait_until(
        "/readyz 503 naming the ledger, herald_ledger_up 0",
        timeout,
        || async {
            match get(port, "/readyz").await {
                Some((503, text)) if text.contains("ledger") => {
                    *body.lock().unwrap() = text;
                    ledger_up(port).await == Some(0.0)
                }
                _ => false,
            }
        },
    )
    .await;
    body.into_inner().unwrap()
}

/// Messages on `queue` ready and delivered-but-unacknowledged, as the broker counts them.
fn on_queue(queue: &str) -> Option<(usize, usize)> {
    let out = service::list_queues(&["name", "messages_ready", "messages_unacknowledged"]).ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        if fields.next()? != queue {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// Waits until the events queue holds `n` messages, ready or unacknowledged; how many of each.
async fn wait_held(queue: &str, n: usize) -> (usize, usize) {
    let seen = std::sync::Mutex::new((0, 0));
    wait_until(&format!("{n} events held on the queue"), WAIT, || async {
        match on_queue(queue) {
            Some((ready, unacked)) if ready + unacked == n => {
                *seen.lock().unwrap() = (ready, unacked);
                true
            }
            _ => false,
        }
    })
    .await;
    seen.into_inner().unwrap()
}

/// Checks `check` every 100 ms for `time`: what must stay true while a fault lasts.
async fn holds<F, Fut>(what: &str, time: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + time;
    while Instant::now() < until {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The distinct webhook ids the receiver has seen, and the event ids they were about.
fn delivered(receiver: &Receiver) -> (BTreeSet<String>, BTreeSet<String>) {
    let hooks = receiver.hooks();
    let ids = hooks.iter().map(|h| h.id.clone()).collect();
    let events = hooks
        .iter()
        .filter_map(|h| h.body["data"]["event"]["id"].as_str().map(str::to_owned))
        .collect();
    (ids, events)
}

/// How many of the log's JSON lines have this message.
fn logged(log: &Path, message: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|entry| entry["message"] == message)
        .count()
}

/// Routed events in the ledger at `url` whose message id starts with `prefix`.
async fn routed(url: &str, prefix: &str) -> i64 {
    let store = Store::open(url, Sync::Normal, Health::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let n =
        sqlx::query("SELECT COUNT(*) FROM events WHERE outcome = 'routed' AND message_id LIKE $1")
            .bind(format!("{prefix}-%"))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
    store.close().await;
    n
}

/// A routes.toml for the test's queues and receiver, with `extra` appended.
fn config(dir: &Path, names: &Names, receiver: &Receiver, extra: &str) -> PathBuf {
    service::config_file_with(dir, names, receiver, "\"court.*\"", extra)
}

/// A PostgreSQL of the test's own: a cluster in a temporary folder, on a free port, with its
/// socket in that folder. Stopped (immediately) and removed when dropped, however the test
/// ends. We run as root and initdb refuses root, so the cluster belongs to `postgres`.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    /// The newest server's binaries, `/usr/lib/postgresql/N/bin`.
    fn bin() -> Option<PathBuf> {
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let version: u32 = name.parse().ok()?;
                let bin = Path::new("/usr/lib/postgresql").join(&name).join("bin");
                bin.join("pg_ctl").exists().then_some((version, bin))
            })
            .max()
            .map(|(_, bin)| bin)
    }

    fn init() -> Postgres {
        let bin = Postgres::bin()
            .expect("no PostgreSQL server under /usr/lib/postgresql/*/bin (Debian: postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .unwrap();
        let owned = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(owned.success(), "chown postgres {}", dir.path().display());
        let pg = Postgres {
            dir,
            bin,
            port: service::free_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of the server's programs as `postgres`; panics with its output if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Starts the server (on the same port and data each time) and waits until it accepts.
    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash or a cut cable would for its clients.
    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Already stopped, most likely; the folder goes with the TempDir.
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_postgres_outage() {
    const BEFORE: usize = 20;
    const DURING: usize = 30;
    let started = Instant::now();
    let pg = Postgres::init();
    pg.start();
    let (receiver, names) = (Receiver::start().await, Names::new("pgdown"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &names, &receiver, "");
    let (log, port) = (dir.path().join("herald.log"), service::free_port());
    let url = pg.url();
    let mut herald = spawn(&config, &log, port, &[("HERALD_LEDGER_URL", &url)]);
    service::wait_for_queue(&names.queue).await;
    wait_ready(port, WAIT).await;
    let (_conn, ch) = service::channel().await;
    publish_warrants(&ch, &names.exchange, "evt-pg", 0..BEFORE).await;
    every_webhook_delivered(&receiver, BEFORE, WAIT).await;
    // Every one acknowledged, so each of their rows is committed before the store goes.
    wait_held(&names.queue, 0).await;

    pg.stop();
    let down_at = Instant::now();
    publish_warrants(&ch, &names.exchange, "evt-pg", BEFORE..BEFORE + DURING).await;
    let reason = wait_down(port, WAIT).await;
    let (ready, unacked) = wait_held(&names.queue, DURING).await;
    holds(
        "no event acknowledged, no new webhook sent",
        Duration::from_secs(3),
        || async {
            on_queue(&names.queue).is_some_and(|(r, u)| r + u == DURING)
                && delivered(&receiver).0.len() == BEFORE
        },
    )
    .await;
    let (_, events) = delivered(&receiver);
    assert!(
        (BEFORE..BEFORE + DURING).all(|i| !events.contains(&format!("evt-pg-{i}"))),
        "nothing published while the ledger was down was delivered"
    );
    assert_eq!(logged(&log, DOWN), 1, "one line says the ledger is down");

    pg.start();
    let down_for = down_at.elapsed();
    wait_ready(port, WAIT).await;
    let back_in = down_at.elapsed() - down_for;
    every_webhook_delivered(&receiver, BEFORE + DURING, WAIT).await;
    wait_held(&names.queue, 0).await;
    terminate(&mut herald).await;
    let hooks = receiver.hooks();
    let (ids, events) = delivered(&receiver);
    let lost = (0..BEFORE + DURING)
        .filter(|i| !events.contains(&format!("evt-pg-{i}")))
        .count();
    let duplicates = hooks.len() - ids.len();
    let rows = routed(&url, "evt-pg").await;
    println!(
        "postgres outage: events {}, published while down {DURING} (held: {ready} ready, {unacked} unacknowledged), \
         readyz said {:?}; down {down_for:?}, ready again {back_in:?} after the restart; delivered {}, \
         duplicates {duplicates}, lost {lost}, ledger rows {rows}; log lines down {}, back {}; took {:?}",
        BEFORE + DURING,
        reason.trim(),
        ids.len(),
        logged(&log, DOWN),
        logged(&log, BACK),
        started.elapsed()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0, "nothing sent twice");
    assert!(hooks.iter().all(|h| h.verified));
    assert_eq!(
        rows,
        (BEFORE + DURING) as i64,
        "a ledger row for every event"
    );
    assert_eq!(logged(&log, DOWN), 1, "one line when the ledger went down");
    assert_eq!(logged(&log, BACK), 1, "one line when it came back");
    service::cleanup(&ch, &names).await;
}

/// Files and folders made immutable (`chattr +i`: even root cannot write them), made mutable
/// again when dropped, however the test ends.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Makes `paths` immutable and checks that a file can no longer be created in `folder`;
    /// the reason when this filesystem cannot do that.
    fn set(folder: &Path, paths: &[PathBuf]) -> Result<Immutable, String> {
        let set = Immutable(paths.to_vec());
        for p in paths {
            let out = Command::new("chattr")
                .arg("+i")
                .arg(p)
                .output()
                .map_err(|e| format!("chattr: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "chattr +i {}: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let probe = folder.join("probe");
        match std::fs::write(&probe, b"x") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                drop(set);
                Err(format!(
                    "{} stays writable after chattr +i",
                    folder.display()
                ))
            }
            Err(_) => Ok(set),
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

/// The ledger's folder is read-only when Herald starts: it consumes nothing and says why until
/// the folder is writable, then opens the ledger by itself and delivers everything.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_folder_read_only_at_start_up() {
    const EVENTS: usize = 20;
    let started = Instant::now();
    let (receiver, names) = (Receiver::start().await, Names::new("sqlitero"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &names, &receiver, "");
    let (log, port) = (dir.path().join("herald.log"), service::free_port());
    // A first run on another ledger declares the queues, so events can be published while
    // the second waits for its ledger (Herald declares them only once its ledger is open).
    let scratch = format!("sqlite://{}/scratch/ledger.sqlite", dir.path().display());
    let mut first = spawn(
        &config,
        &dir.path().join("first.log"),
        port,
        &[("HERALD_LEDGER_URL", &scratch)],
    );
    // Consuming, so its topology is complete (the queue bound), before it stops.
    wait_ready(port, WAIT).await;
    terminate(&mut first).await;

    let folder = dir.path().join("ledger");
    std::fs::create_dir(&folder).unwrap();
    let immutable = match Immutable::set(&folder, std::slice::from_ref(&folder)) {
        Ok(set) => set,
        Err(reason) => {
            println!(
                "sqlite read-only at start-up: SKIPPED, the folder cannot be made read-only here ({reason})"
            );
            return;
        }
    };
    let url = format!("sqlite://{}/ledger.sqlite", folder.display());
    let mut herald = spawn(&config, &log, port, &[("HERALD_LEDGER_URL", &url)]);
    let reason = wait_down(port, WAIT).await;
    let (_conn, ch) = service::channel().await;
    publish_warrants(&ch, &names.exchange, "evt-ro", 0..EVENTS).await;
    let held = wait_held(&names.queue, EVENTS).await;
    // Herald tries to open the ledger every 2 s: nothing changes over a few tries.
    holds(
        "nothing consumed, nothing delivered",
        Duration::from_secs(5),
        || async {
            on_queue(&names.queue) == Some((EVENTS, 0))
                && receiver.hooks().is_empty()
                && matches!(get(port, "/readyz").await, Some((503, _)))
        },
    )
    .await;
    assert_eq!(
        logged(&log, CANNOT_OPEN),
        1,
        "one line while it cannot open"
    );

    let healed = Instant::now();
    drop(immutable);
    wait_ready(port, WAIT).await;
    let ready_in = healed.elapsed();
    every_webhook_delivered(&receiver, EVENTS, WAIT).await;
    wait_held(&names.queue, 0).await;
    terminate(&mut herald).await;
    let (ids, _) = delivered(&receiver);
    let rows = routed(&url, "evt-ro").await;
    println!(
        "sqlite read-only at start-up: events {EVENTS}, held {held:?} (ready, unacknowledged), readyz said {:?}; \
         ready {ready_in:?} after the folder became writable; delivered {}, duplicates {}, lost {}, ledger rows {rows}; \
         log lines cannot open {}, open {}; took {:?}",
        reason.trim(),
        ids.len(),
        receiver.hooks().len() - ids.len(),
        EVENTS - ids.len(),
        logged(&log, CANNOT_OPEN),
        logged(&log, OPEN),
        started.elapsed()
    );
    assert_eq!(ids.len(), EVENTS, "lost 0");
    assert_eq!(receiver.hooks().len(), EVENTS, "nothing sent twice");
    assert_eq!(rows, EVENTS as i64);
    assert_eq!(logged(&log, CANNOT_OPEN), 1);
    assert_eq!(logged(&log, OPEN), 1);
    service::cleanup(&ch, &names).await;
}

/// How the store stops taking writes while Herald runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The folder and the ledger's files made immutable.
    ReadOnly,
    /// The ledger on a small tmpfs, filled up.
    DiskFull,
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.into()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `path` with one file, until it takes no more.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

/// The store stops taking writes while Herald runs, then takes them again.
async fn store_fails_while_running(fault: Fault) {
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    let started = Instant::now();
    let test = match fault {
        Fault::ReadOnly => "sqlite read-only while running",
        Fault::DiskFull => "sqlite disk full while running",
    };
    let (receiver, names) = (Receiver::start().await, Names::new("sqlitefault"));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ledger");
    let _tmpfs = match fault {
        Fault::ReadOnly => {
            std::fs::create_dir(&folder).unwrap();
            None
        }
        Fault::DiskFull => match Tmpfs::mount(&folder, "8m") {
            Ok(m) => Some(m),
            Err(reason) => {
                println!("{test}: SKIPPED, cannot mount a tmpfs here ({reason})");
                return;
            }
        },
    };
    let config = config(dir.path(), &names, &receiver, "");
    let (log, port) = (dir.path().join("herald.log"), service::free_port());
    let url = format!("sqlite://{}/ledger.sqlite", folder.display());
    let mut herald = spawn(&config, &log, port, &[("HERALD_LEDGER_URL", &url)]);
    service::wait_for_queue(&names.queue).await;
    wait_ready(port, WAIT).await;
    let (_conn, ch) = service::channel().await;
    publish_warrants(&ch, &names.exchange, "evt-fault", 0..BEFORE).await;
    every_webhook_delivered(&receiver, BEFORE, WAIT).await;
    wait_held(&names.queue, 0).await;

    let filler = folder.join("filler");
    let mut immutable = None;
    let how = match fault {
        Fault::ReadOnly => {
            // Not the `-shm` file: SQLite maps it into memory, and a write to a mapped page
            // of an immutable file is a SIGBUS, which would end Herald rather than test it.
            let mut paths = vec![folder.clone()];
            for suffix in ["", "-wal"] {
                let file = folder.join(format!("ledger.sqlite{suffix}"));
                if file.exists() {
                    paths.push(file);
                }
            }
            match Immutable::set(&folder, &paths) {
                Ok(set) => immutable = Some(set),
                Err(reason) => {
                    println!(
                        "{test}: SKIPPED, the folder cannot be made read-only here ({reason})"
                    );
                    return;
                }
            }
            format!("{} paths immutable", paths.len())
        }
        Fault::DiskFull => format!("filled with {} bytes", fill(&filler)),
    };
    let down_at = Instant::now();
    publish_warrants(&ch, &names.exchange, "evt-fault", BEFORE..BEFORE + DURING).await;
    let reason = wait_down(port, WAIT).await;
    let held = wait_held(&names.queue, DURING).await;
    // Events taken before the failed commit told Herald the ledger was down may have been
    // delivered (their rows wait to be written); once it knows, nothing more is sent, and
    // nothing is acknowledged until the rows are on disk.
    let sent_before_down = delivered(&receiver).0.len();
    holds(
        "no event acknowledged, no new webhook sent",
        Duration::from_secs(3),
        || async {
            on_queue(&names.queue).is_some_and(|(r, u)| r + u == DURING)
                && delivered(&receiver).0.len() == sent_before_down
        },
    )
    .await;
    assert_eq!(logged(&log, DOWN), 1, "one line says the ledger is down");

    let healed = Instant::now();
    let down_for = down_at.elapsed();
    match fault {
        Fault::ReadOnly => drop(immutable.take()),
        Fault::DiskFull => std::fs::remove_file(&filler).unwrap(),
    }
    wait_ready(port, WAIT).await;
    let ready_in = healed.elapsed();
    every_webhook_delivered(&receiver, BEFORE + DURING, WAIT).await;
    wait_held(&names.queue, 0).await;
    terminate(&mut herald).await;
    let hooks = receiver.hooks();
    let (ids, events) = delivered(&receiver);
    let lost = (0..BEFORE + DURING)
        .filter(|i| !events.contains(&format!("evt-fault-{i}")))
        .count();
    let rows = routed(&url, "evt-fault").await;
    println!(
        "{test}: {how}; events {}, published during the fault {DURING} (held {held:?} ready, unacknowledged; \
         {} delivered before Herald knew), readyz said {:?}; down {down_for:?}, ready {ready_in:?} after the fault ended; delivered {}, \
         duplicates {}, lost {lost}, ledger rows {rows}; log lines down {}, back {}; took {:?}",
        BEFORE + DURING,
        sent_before_down - BEFORE,
        reason.trim(),
        ids.len(),
        hooks.len() - ids.len(),
        logged(&log, DOWN),
        logged(&log, BACK),
        started.elapsed()
    );
    assert_eq!(lost, 0);
    assert_eq!(hooks.len(), ids.len(), "nothing sent twice");
    assert_eq!(rows, (BEFORE + DURING) as i64);
    assert_eq!(logged(&log, DOWN), 1);
    assert_eq!(logged(&log, BACK), 1);
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_read_only_while_running() {
    store_fails_while_running(Fault::ReadOnly).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_disk_full_while_running() {
    store_fails_while_running(Fault::DiskFull).await;
}

/// SIGKILL twice while 2,000 events flow, Herald started again each time on the same ledger
/// file: the ledger's dedup keeps the repeats to the notifications a recipient took in the
/// moments before a kill whose rows were not committed yet.
#[tokio::test(flavor = "multi_thread")]
async fn ledger_kill_9_twice_during_2000_events() {
    const EVENTS: usize = 2000;
    let started = Instant::now();
    let (receiver, names) = (Receiver::start().await, Names::new("ledgerkill"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &names, &receiver, "");
    let (log, port) = (dir.path().join("herald.log"), service::free_port());
    let mut herald = spawn(&config, &log, port, &[]);
    service::wait_for_queue(&names.queue).await;
    let publisher = {
        let exchange = names.exchange.clone();
        tokio::spawn(async move {
            let (_conn, ch) = service::channel().await;
            publish_warrants(&ch, &exchange, "evt-lk", 0..EVENTS).await;
        })
    };
    // Each kill: deliveries so far, when, and the process's commits slower than 250 ms.
    let mut kills = Vec::new();
    for at in [EVENTS / 4, EVENTS * 3 / 5] {
        wait_until("deliveries under way", Duration::from_secs(60), || async {
            delivered(&receiver).0.len() >= at
        })
        .await;
        let m = metrics(port).await;
        let slow = total(&m, "herald_ledger_commit_seconds_count", &[])
            - total(&m, "herald_ledger_commit_seconds_bucket", &["le=\"0.25\""]);
        kill(&mut herald);
        kills.push((delivered(&receiver).0.len(), Instant::now(), slow));
        herald = spawn(&config, &log, port, &[]);
    }
    publisher.await.unwrap();
    every_webhook_delivered(&receiver, EVENTS, Duration::from_secs(120)).await;
    wait_held(&names.queue, 0).await;
    terminate(&mut herald).await;
    let hooks = receiver.hooks();
    assert!(hooks.iter().all(|h| h.verified));
    let (ids, events) = delivered(&receiver);
    let lost = (0..EVENTS)
        .filter(|i| !events.contains(&format!("evt-lk-{i}")))
        .count();
    let duplicates = hooks.len() - ids.len();
    // For each kill, the duplicates first sent before it, and the longest a first copy
    // arrived before the kill.
    let mut first: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut repeated = BTreeSet::new();
    for h in &hooks {
        if first.contains_key(h.id.as_str()) {
            repeated.insert(h.id.as_str());
        } else {
            first.insert(&h.id, h.at);
        }
    }
    let mut previous = started;
    let per_kill: Vec<String> = kills
        .iter()
        .map(|(n, at, slow)| {
            let before: Vec<Duration> = repeated
                .iter()
                .filter_map(|id| {
                    let t = first[id];
                    (t > previous && t < *at).then(|| *at - t)
                })
                .collect();
            previous = *at;
            format!(
                "after {n} deliveries: {} duplicates, first copies at most {:?} before the kill, {slow} commits over 250 ms",
                before.len(),
                before.iter().max().copied().unwrap_or_default()
            )
        })
        .collect();
    let share = 100.0 * duplicates as f64 / EVENTS as f64;
    println!(
        "ledger kill -9: events {EVENTS}, expected {EVENTS}, delivered {}, duplicates {duplicates} ({share:.2} %), \
         lost {lost}; kills: {}; took {:?}",
        ids.len(),
        per_kill.join("; "),
        started.elapsed()
    );
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
    assert_eq!(lost, 0);
    assert_eq!(ids.len(), EVENTS, "nothing unexpected was delivered");
    // Only what a recipient took in the moments before a kill, whose rows were not committed
    // yet, comes again: bounded here by what two such windows hold on a loaded machine running
    // the debug build. The product's target (1 %) and the figures measured against it are in
    // docs/ledger.md; the line above prints this run's.
    assert!(
        duplicates * 100 <= EVENTS * 5,
        "duplicates {duplicates} are more than 5 % of {EVENTS}: more than the moments before \
         the kills can explain"
    );
}

/// The gauges that matter after a restart come back from the ledger: a notification waiting
/// for a retry, one parked, and an endpoint disabled after 410 Gone.
#[tokio::test(flavor = "multi_thread")]
async fn gauges_are_rebuilt_from_the_ledger_after_a_restart() {
    const ROUTE: &str = "route=\"ppo-bail-decision\"";
    let started = Instant::now();
    let (receiver, names) = (Receiver::start().await, Names::new("ledgergauges"));
    // Police answer 503 (a retry in ten minutes), probation 410 (parked, endpoint disabled).
    receiver.answer("/police/WYP-LEEDS", 503);
    receiver.answer("/probation/PDU-LEEDS", 410);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &names,
        &receiver,
        "[retry]\nschedule = [\"10m\"]\nmax_age = \"1h\"\n",
    );
    let (log, port) = (dir.path().join("herald.log"), service::free_port());
    let mut herald = spawn(&config, &log, port, &[]);
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-gauge", 1).await;
    let gauges = |m: &BTreeMap<String, f64>| {
        (
            total(m, "herald_waiting_notifications", &[ROUTE]),
            total(m, "herald_notifications_parked", &[ROUTE]),
            total(
                m,
                "herald_endpoint_state",
                &["recipient=\"probation:PDU-LEEDS\"", "channel=\"webhook\""],
            ),
        )
    };
    // The parked gauge is read from the ledger every 5 s.
    wait_until(
        "one waiting, one parked, probation disabled",
        WAIT,
        || async { gauges(&metrics(port).await) == (1.0, 1.0, 2.0) },
    )
    .await;
    let before = gauges(&metrics(port).await);
    wait_held(&names.queue, 0).await;
    terminate(&mut herald).await;

    let mut herald = spawn(&config, &log, port, &[]);
    wait_ready(port, WAIT).await;
    // Read at once: nothing has been delivered or retried since the start.
    let after = gauges(&metrics(port).await);
    let sent = receiver.hooks().len();
    terminate(&mut herald).await;
    println!(
        "gauges after a restart: (waiting, parked, probation endpoint state) before {before:?}, after {after:?}; \
         {sent} webhook attempts in all; took {:?}",
        started.elapsed()
    );
    assert_eq!(after, before, "the gauges are rebuilt from the ledger");
    assert_eq!(sent, 2, "no attempt was made after the restart");
    service::cleanup(&ch, &names).await;
}

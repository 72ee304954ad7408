//! The RabbitMQ the service tests use, and `rabbitmqctl` pointed at it.
//!
//! In this order:
//! - `HERALD_TEST_AMQP_URL`, when set: that broker, as it is (nothing is started).
//! - RabbitMQ on 127.0.0.1:5672, when something answers there.
//! - Otherwise a private node the tests start with the installed `rabbitmq-server`:
//!   `herald-test-PORT@localhost`, AMQP on a free loopback port, its own data, logs, config
//!   (so /etc/rabbitmq's listener on 5672 is not read), no plugins and an Erlang cookie of its
//!   own (so its `rabbitmqctl` cannot reach the machine's node, nor the other way round).
//!   `HERALD_TEST_BROKER=private` goes straight to this, even when 5672 answers.
//!
//! The private node lives in `target/tmp/herald-rabbitmq/`. Every test binary shares it: the
//! first to need it starts it (under a lock, so concurrent runs start one), the others find it
//! in the `node` file there. It takes seconds to boot, so it is kept for later runs rather than
//! started by each of the test binaries; each test process marks it used every 30 seconds, and
//! a small watchdog started with it stops it once it has gone unused for five minutes. To stop
//! it at once: `kill $(cat target/tmp/herald-rabbitmq/rabbitmq.pid)`; do so before `cargo clean`,
//! which takes its files (and the watchdog's) from under it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use super::{DirLock, process_alive};

/// The broker the tests use when `HERALD_TEST_AMQP_URL` is unset and 5672 answers.
const MACHINE_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a private node may take to boot (seconds on an idle machine, far more on a busy one).
const BOOT: Duration = Duration::from_secs(180);

/// How long the private node is kept once no test process uses it.
const IDLE_MINUTES: u32 = 5;

/// How often a test process marks the private node used.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// The broker of this test process.
pub struct Broker {
    pub url: String,
    /// Set when the broker is a private node: how to reach it with `rabbitmqctl`.
    private: Option<Private>,
}

struct Private {
    ctl: PathBuf,
    home: PathBuf,
    node: String,
}

/// The broker, decided once per test process; a broker that cannot be had fails every test
/// that needs one with the same line.
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();
    match BROKER.get_or_init(decide) {
        Ok(broker) => broker,
        Err(line) => panic!("{line}"),
    }
}

/// `rabbitmqctl` for the tests' broker: the one on the PATH for the machine's broker, the
/// private node's own (its name, its cookie) otherwise.
pub fn rabbitmqctl() -> Command {
    match &broker().private {
        None => Command::new("rabbitmqctl"),
        Some(p) => {
            let mut cmd = Command::new(&p.ctl);
            cmd.env("HOME", &p.home).args(["-n", &p.node]);
            cmd
        }
    }
}

fn decide() -> Result<Broker, String> {
    let forced = match std::env::var("HERALD_TEST_BROKER").as_deref() {
        Err(_) | Ok("") => false,
        Ok("private") => true,
        Ok(other) => {
            return Err(format!(
                "HERALD_TEST_BROKER={other:?} is not understood: set it to \"private\" or unset it"
            ));
        }
    };
    if let Ok(url) = std::env::var("HERALD_TEST_AMQP_URL") {
        if forced {
            return Err(
                "HERALD_TEST_BROKER=private and HERALD_TEST_AMQP_URL are both set: unset one"
                    .into(),
            );
        }
        return Ok(Broker { url, private: None });
    }
    if !forced && answers(5672) {
        return Ok(Broker {
            url: MACHINE_URL.into(),
            private: None,
        });
    }
    private_node(if forced {
        "HERALD_TEST_BROKER=private"
    } else {
        "no RabbitMQ answers on 127.0.0.1:5672"
    })
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Where the private node's files are.
fn state_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("herald-rabbitmq")
}

/// The directory of the RabbitMQ scripts that start a node as the calling user. Debian's
/// /usr/sbin ones switch to the rabbitmq user and its home (and so its cookie) when run as root,
/// so the scripts they wrap are preferred.
fn scripts() -> Option<PathBuf> {
    let debian = Path::new("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").exists() {
        return Some(debian.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/opt/homebrew/sbin"].map(PathBuf::from))
        .find(|dir| dir.join("rabbitmq-server").is_file())
}

/// The private node: the running one if there is one, else a new one.
/// `why` says why one is wanted, for the line that says it cannot be had.
fn private_node(why: &str) -> Result<Broker, String> {
    let Some(scripts) = scripts() else {
        return Err(format!(
            "{why} and rabbitmq-server is not installed: install RabbitMQ (the tests then start \
             a node of their own), start a broker on 127.0.0.1:5672, or set HERALD_TEST_AMQP_URL"
        ));
    };
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = DirLock::acquire(&dir.join("lock"), BOOT + Duration::from_secs(30))?;
    let node = match Running::read(&dir).filter(Running::alive) {
        Some(node) => node,
        None => start(&scripts, &dir)?,
    };
    mark_used(&dir);
    drop(lock);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(HEARTBEAT);
            mark_used(&dir);
        }
    });
    Ok(Broker {
        url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port),
        private: Some(Private {
            ctl: scripts.join("rabbitmqctl"),
            home: node.dir.join("home"),
            node: node.name,
        }),
    })
}

/// A private node as the `node` file records it: `NAME PORT DIR`.
struct Running {
    name: String,
    port: u16,
    dir: PathBuf,
}

impl Running {
    fn read(dir: &Path) -> Option<Running> {
        let text = std::fs::read_to_string(dir.join("node")).ok()?;
        let mut fields = text.trim().splitn(3, ' ');
        Some(Running {
            name: fields.next()?.into(),
            port: fields.next()?.parse().ok()?,
            dir: fields.next()?.into(),
        })
    }

    /// Its process is there and its AMQP port answers.
    fn alive(&self) -> bool {
        let pid = std::fs::read_to_string(state_dir().join("rabbitmq.pid")).unwrap_or_default();
        process_alive(pid.trim()) && answers(self.port)
    }
}

fn mark_used(dir: &Path) {
    let used = dir.join("used");
    let _ = std::fs::File::create(&used).and_then(|f| f.set_modified(SystemTime::now()));
}

/// Two distinct free loopback ports: AMQP and Erlang distribution.
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Starts a new private node, waits until it serves, and records it.
fn start(scripts: &Path, dir: &Path) -> Result<Running, String> {
    let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // A node recorded here no longer serves: stopped by name with its own cookie (so nothing
    // else can be stopped by mistake), and its files go with it.
    if let Some(old) = Running::read(dir) {
        let _ = Command::new(scripts.join("rabbitmqctl"))
            .env("HOME", old.dir.join("home"))
            .args(["-n", &old.name, "-q", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_file(dir.join("node"));
    for entry in std::fs::read_dir(dir).map_err(|e| fail("cannot read the state directory", e))? {
        let path = entry
            .map_err(|e| fail("cannot read the state directory", e))?
            .path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
        {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    let (port, dist_port) = two_free_ports();
    let name = format!("herald-test-{port}@localhost");
    let node_dir = dir.join(format!("node-{port}"));
    let home = node_dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| fail("cannot create the node's home", e))?;
    let cookie = home.join(".erlang.cookie");
    cookie_text()
        .and_then(|text| std::fs::write(&cookie, text))
        .map_err(|e| fail("cannot write the cookie", e))?;
    set_owner_only(&cookie);
    let config = node_dir.join("rabbitmq.conf");
    std::fs::write(&config, format!("listeners.tcp.1 = 127.0.0.1:{port}\n"))
        .and_then(|()| std::fs::write(node_dir.join("enabled_plugins"), "[].\n"))
        .and_then(|()| std::fs::write(node_dir.join("rabbitmq-env.conf"), ""))
        .map_err(|e| fail("cannot write the node's configuration", e))?;
    let log = node_dir.join("log");

    let mut server = Command::new(scripts.join("rabbitmq-server"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RABBITMQ_") {
            server.env_remove(key);
        }
    }
    server
        .arg("-detached")
        .current_dir(&node_dir)
        .env("HOME", &home)
        .env("RABBITMQ_NODENAME", &name)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", node_dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", &log)
        .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
        .env("RABBITMQ_CONFIG_FILE", &config)
        .env(
            "RABBITMQ_ADVANCED_CONFIG_FILE",
            node_dir.join("advanced.config"),
        )
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            node_dir.join("enabled_plugins"),
        )
        .env("RABBITMQ_CONF_ENV_FILE", node_dir.join("rabbitmq-env.conf"))
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        )
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = server
        .status()
        .map_err(|e| fail("cannot run rabbitmq-server", e))?;
    let log_file = log.join(format!("{name}.log"));
    if !status.success() {
        return Err(format!(
            "rabbitmq-server -detached failed ({status}) for the tests' private node {name}; its log: {}",
            log_file.display()
        ));
    }

    let deadline = Instant::now() + BOOT;
    while !answers(port) {
        if Instant::now() >= deadline {
            return Err(format!(
                "the tests' private RabbitMQ node {name} did not open port {port} within {BOOT:?}; its log: {}",
                log_file.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ctl = scripts.join("rabbitmqctl");
    let ready = Command::new(&ctl)
        .env("HOME", &home)
        .args(["-n", &name, "-q", "await_startup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        return Err(format!(
            "rabbitmqctl cannot reach the tests' private RabbitMQ node {name}; its log: {}",
            log_file.display()
        ));
    }
    std::fs::write(
        dir.join("node"),
        format!("{name} {port} {}\n", node_dir.display()),
    )
    .map_err(|e| fail("cannot record the node", e))?;
    watch(dir, &ctl, &home, &name);
    Ok(Running {
        name,
        port,
        dir: node_dir,
    })
}

/// Starts the watchdog that stops the node once it has gone unused for [`IDLE_MINUTES`], or
/// leaves when the `node` file names another node. It takes the lock before stopping, so a
/// test process taking the node at that moment either marks it used first or finds it gone.
/// In a process group of its own, so Ctrl-C on the test run does not end it.
fn watch(dir: &Path, ctl: &Path, home: &Path, name: &str) {
    const SCRIPT: &str = r#"
dir=$1 ctl=$2 home=$3 node=$4 idle=$5
while sleep 15; do
  grep -q "^$node " "$dir/node" 2>/dev/null || exit 0
  [ -n "$(find "$dir/used" -mmin -"$idle" 2>/dev/null)" ] && continue
  mkdir "$dir/lock" 2>/dev/null || continue
  echo $$ > "$dir/lock/owner"
  if [ -z "$(find "$dir/used" -mmin -"$idle" 2>/dev/null)" ]; then
    rm -f "$dir/node"
    HOME=$home "$ctl" -n "$node" -q stop >/dev/null 2>&1
    rm -rf "$dir/lock"
    exit 0
  fi
  rm -rf "$dir/lock"
done
"#;
    use std::os::unix::process::CommandExt;
    let _ = Command::new("sh")
        .args(["-c", SCRIPT, "herald-test-rabbitmq-watchdog"])
        .arg(dir)
        .arg(ctl)
        .arg(home)
        .arg(name)
        .arg(IDLE_MINUTES.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// A cookie no other node shares: random, from the system.
fn cookie_text() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode_upper(bytes))
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400));
}

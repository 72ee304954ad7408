//! Several machines, on one: a RabbitMQ cluster of three nodes started by
//! `deploy/cluster/cluster.sh` on ports of the test's own, three `herald serve` processes on one
//! PostgreSQL ledger, the real webhook receiver and SMTP server. During a run of 5,000 events
//! the broker node that leads the events queue is killed with SIGKILL, then one Herald
//! instance, and both are started again. Every notification must arrive (lost = 0), at most 1 %
//! more than once, the weekly digest that falls due exactly once, and every instance ready
//! again at the end. The figures are printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::service::{self, Names, Receiver, Smtp, wait_until};
use futures_util::future::join_all;
use herald::ledger::{Backend, Health, Store, Sync};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use sqlx::Row;

/// Events published in the run.
const EVENTS: usize = 5_000;

/// How long the run may take to deliver everything after the faults.
const DRAIN: Duration = Duration::from_secs(240);

/// The figures, written past the test harness's capture so that a passing run shows them.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "cluster: {line}");
}

/// The three-node cluster of this test, stopped (and its files removed) when the test ends.
struct Cluster {
    dir: PathBuf,
    port: u16,
    urls: Vec<String>,
}

impl Cluster {
    fn command(dir: &Path, port: u16, args: &[&str]) -> std::process::Output {
        Command::new(common::root().join("deploy/cluster/cluster.sh"))
            .args(args)
            .env("HERALD_CLUSTER_DIR", dir)
            .env("HERALD_CLUSTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("deploy/cluster/cluster.sh runs")
    }

    /// Three nodes on free ports: AMQP on PORT..PORT+2, distribution on PORT+10000... (never
    /// the machine node's 25672 nor the CLI's 35672-35682). A port taken between the look and
    /// the start (the script exits 3) is another try on other ports.
    fn start() -> Cluster {
        for _ in 0..5 {
            let port = (0..50)
                .map(|_| 20_000 + 10 * fastrand::u16(0..900))
                .filter(|p| !(25_600..25_700).contains(p))
                .find(|p| (0..3).all(|i| free(p + i) && free(p + i + 10_000)))
                .expect("three free ports and their distribution ports");
            let dir = std::env::temp_dir().join(format!("herald-cluster-{port}"));
            let out = Self::command(&dir, port, &["start"]);
            let mut cluster = Cluster {
                dir,
                port,
                urls: Vec::new(),
            };
            if out.status.code() == Some(3) {
                continue;
            }
            assert!(
                out.status.success(),
                "cluster.sh start failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let urls = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>();
            assert_eq!(urls.len(), 3, "three AMQP URLs: {urls:?}");
            cluster.urls = urls;
            return cluster;
        }
        panic!("cluster.sh found its ports taken five times");
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Self::command(&self.dir, self.port, args);
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The node (1, 2 or 3) leading quorum queue `queue`.
    fn leader(&self, queue: &str) -> usize {
        let said = self.run(&["leader", queue]);
        said.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("cluster.sh leader {queue} said {said:?}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::command(&self.dir, self.port, &["stop"]);
    }
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// One `herald serve` process, killed when the test ends however it ends.
struct Instance {
    name: String,
    metrics: u16,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every instance is started with.
struct Setup {
    config: PathBuf,
    ledger: String,
    smtp: String,
    urls: Vec<String>,
    logs: PathBuf,
}

impl Setup {
    /// Instance `name`, trying the nodes from node `first` on (so the three instances connect
    /// to different nodes), its JSON log in the test's folder.
    fn spawn(&self, name: &str, first: usize) -> Instance {
        let mut urls = self.urls.clone();
        let n = urls.len();
        urls.rotate_left(first % n);
        let metrics = service::free_port();
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("HERALD_AMQP_URL")
            .env("HERALD_AMQP_URLS", urls.join(","))
            .env("HERALD_LEDGER_URL", &self.ledger)
            .env("HERALD_SMTP_URL", &self.smtp)
            .env("HERALD_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
            .env("HERALD_INSTANCE", name)
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Instance {
            name: name.to_owned(),
            metrics,
            child,
        }
    }
}

/// Whether the instance answers 200 on `/readyz`.
async fn ready(instance: &Instance) -> bool {
    let url = format!("http://127.0.0.1:{}/readyz", instance.metrics);
    matches!(reqwest::get(url).await, Ok(r) if r.status() == 200)
}

/// Every webhook's id and every email's Message-ID, each with how many times it arrived.
fn arrivals(
    receiver: &Receiver,
    smtp: &Smtp,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut hooks = BTreeMap::new();
    for h in receiver.hooks() {
        *hooks.entry(h.id).or_insert(0) += 1;
    }
    let mut mails = BTreeMap::new();
    for m in smtp.messages() {
        *mails.entry(m.message_id).or_insert(0) += 1;
    }
    (hooks, mails)
}

/// Publishes every body with publisher confirms, pipelined, to the node at `url`.
async fn publish_all(url: &str, exchange: &str, bodies: &[(String, Vec<u8>)]) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the publisher connects");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for chunk in bodies.chunks(500) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for (id, body) in chunk {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    "court.warrant.issued".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    service::agency(id),
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for c in join_all(confirms).await {
            assert!(
                matches!(c, Ok(lapin::Confirmation::Ack(None))),
                "the cluster confirms every event: {c:?}"
            );
        }
    }
    let _ = conn.close(200, "published".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_three_instances_lose_nothing_when_a_node_and_an_instance_are_killed() {
    service::install_tls();
    let began = Instant::now();
    let cluster = Cluster::start();
    say(&format!(
        "three RabbitMQ nodes started and joined in {:.1} s",
        began.elapsed().as_secs_f64()
    ));
    let (receiver, smtp, names) = (
        Receiver::start().await,
        Smtp::start(),
        Names::new("cluster"),
    );
    let ledger = common::ledger::fresh(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    // Each queue with three members; and a weekly digest whose latest is due now (a digest is
    // due for a week after its time), which the three instances all try to claim at start.
    let text = service::config_text(
        &names,
        "\"court.*\"",
        "[[subscription]]\nname = \"cluster-in-prison\"\nreport = \"in-prison\"\n\
         scope = [\"police:WYP-LEEDS\"]\nto = [\"police:WYP-LEEDS\"]\n\
         schedule = \"Monday 07:00\"\ntemplate = \"digest\"\ndue_within = \"7d\"\n",
    )
    .replace(herald::config::RECEIVER_URL, &receiver.url())
    .replacen("[amqp]\n", "[amqp]\nreplicas = 3\n", 1)
    // What one instance killed with SIGKILL sends again is what it held: events whose webhook
    // was out while the (slower) email was not, up to the prefetch (README, "Several
    // instances"). 30 each keeps that under 1 % of this run.
    .replace("prefetch = 100", "prefetch = 30");
    assert!(
        text.contains("replicas = 3"),
        "routes.toml has an [amqp] table"
    );
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, text).unwrap();
    let setup = Setup {
        config,
        ledger: ledger.clone(),
        smtp: smtp.url(),
        urls: cluster.urls.clone(),
        logs: common::root().join("target/tmp/cluster-logs"),
    };
    std::fs::create_dir_all(&setup.logs).unwrap();
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| setup.spawn(&format!("herald-{}", i + 1), i))
        .collect();
    wait_until("three instances ready", Duration::from_secs(60), || async {
        join_all(instances.iter().map(ready))
            .await
            .iter()
            .all(|r| *r)
    })
    .await;

    // One warrant first: what one event makes (one webhook and one email, as shipped).
    let warmup = vec![("cluster-0".to_owned(), service::warrant(0))];
    publish_all(&cluster.urls[0], &names.exchange, &warmup).await;
    wait_until(
        "the first warrant's notifications",
        Duration::from_secs(60),
        || async { !receiver.hooks().is_empty() && smtp.count() >= 2 },
    )
    .await;
    let store = Store::open(&ledger, Sync::Normal, Health::default())
        .await
        .unwrap();
    let digests = common::ledger::count(
        &store,
        "SELECT COUNT(*) FROM notifications WHERE route = 'cluster-in-prison'",
    )
    .await;
    assert!(digests >= 1, "the digest due now was claimed");
    let digest_count = usize::try_from(digests).unwrap();
    let per_event_hooks = receiver.hooks().len();
    let per_event_mails = smtp.count() - digest_count;
    assert_eq!(
        (per_event_hooks, per_event_mails),
        (1, 1),
        "a warrant makes one webhook and one email"
    );

    let bodies: Vec<(String, Vec<u8>)> = (1..=EVENTS)
        .map(|i| (format!("cluster-{i}"), service::warrant(i)))
        .collect();
    let published = Instant::now();
    // Published to the node after the one that leads the queue, which is killed below.
    let leader = cluster.leader(&names.queue);
    publish_all(&cluster.urls[leader % 3], &names.exchange, &bodies).await;
    say(&format!(
        "{EVENTS} events published with confirms in {:.1} s; node {leader} leads {}",
        published.elapsed().as_secs_f64(),
        names.queue
    ));
    let expected_hooks = 1 + EVENTS;
    let expected_mails = 1 + EVENTS;

    // A fifth of the way in, the leader's node is killed; at two fifths, an instance.
    wait_until("a fifth delivered", DRAIN, || async {
        receiver.hooks().len() >= EVENTS / 5
    })
    .await;
    cluster.run(&["kill", &leader.to_string()]);
    let node_killed = Instant::now();
    say(&format!(
        "node {leader} killed (SIGKILL) after {} webhooks",
        receiver.hooks().len()
    ));
    wait_until("two fifths delivered", DRAIN, || async {
        receiver.hooks().len() >= 2 * EVENTS / 5
    })
    .await;
    let victim = instances.remove(1);
    let victim_name = victim.name.clone();
    drop(victim);
    say(&format!(
        "instance {victim_name} killed (SIGKILL) after {} webhooks, {:.1} s after the node",
        receiver.hooks().len(),
        node_killed.elapsed().as_secs_f64()
    ));
    let new_leader = cluster.leader(&names.queue);
    assert_ne!(new_leader, leader, "another node leads the queue");
    cluster.run(&["restart", &leader.to_string()]);
    instances.push(setup.spawn(&format!("{victim_name}-again"), 1));
    say(&format!(
        "node {leader} (now led by node {new_leader}) and the instance started again"
    ));

    wait_until("every notification delivered", DRAIN, || async {
        let (hooks, _) = arrivals(&receiver, &smtp);
        hooks.len() >= expected_hooks && smtp.count() >= expected_mails + digest_count
    })
    .await;
    wait_until(
        "every instance ready again",
        Duration::from_secs(90),
        || async {
            join_all(instances.iter().map(ready))
                .await
                .iter()
                .all(|r| *r)
        },
    )
    .await;
    let took = published.elapsed();
    // Anything late would show here: a last look once the queues are quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (hooks, mails) = arrivals(&receiver, &smtp);
    let digest_keys: BTreeSet<String> =
        sqlx::query("SELECT n.key FROM notifications n WHERE n.route = 'cluster-in-prison'")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    let digest_mails: usize = mails
        .iter()
        .filter(|(id, _)| digest_keys.iter().any(|k| id.contains(k.as_str())))
        .map(|(_, n)| *n)
        .sum();
    let event_mails: BTreeMap<&String, &usize> = mails
        .iter()
        .filter(|(id, _)| !digest_keys.iter().any(|k| id.contains(k.as_str())))
        .collect();
    let lost = expected_hooks.saturating_sub(hooks.len())
        + expected_mails.saturating_sub(event_mails.len());
    let extra_hooks: usize = hooks.values().map(|n| n - 1).sum();
    let extra_mails: usize = event_mails.values().map(|n| **n - 1).sum();
    let duplicates = extra_hooks + extra_mails;
    let share = 100.0 * duplicates as f64 / (expected_hooks + expected_mails) as f64;
    let delivered = common::ledger::count(
        &store,
        "SELECT COUNT(*) FROM notifications WHERE status = 'delivered'",
    )
    .await;
    let instances_seen = common::ledger::count(&store, "SELECT COUNT(*) FROM instances").await;
    say(&format!(
        "{} notifications expected ({expected_hooks} webhooks, {expected_mails} emails): lost {lost}, \
         arrived twice or more {duplicates} ({share:.2} %: {extra_hooks} webhooks, {extra_mails} emails); \
         {delivered} delivered in the ledger; {:.1} s from publishing to the last arrival ({:.0} events/s through the faults)",
        expected_hooks + expected_mails,
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64()
    ));
    say(&format!(
        "digest cluster-in-prison: {} recipient(s), {digest_mails} email(s); {} instances ready at the end; {instances_seen} in the ledger's table",
        digest_keys.len(),
        instances.len()
    ));
    let unexpected: Vec<&String> = hooks.keys().filter(|id| id.is_empty()).collect();
    assert!(unexpected.is_empty(), "every webhook carries its id");
    assert_eq!(lost, 0, "no notification lost");
    assert!(share <= 1.0, "at most 1 % duplicates, got {share:.2} %");
    assert_eq!(
        digest_mails,
        digest_keys.len(),
        "the digest sent once to each of its recipients, by one instance of three"
    );
    assert_eq!(
        delivered,
        i64::try_from(expected_hooks + expected_mails + digest_keys.len()).unwrap(),
        "the ledger says each notification delivered, once"
    );
    drop(instances);
    drop(cluster);
}

/// Nodes are tried in order: with the first down, Herald consumes from the second. An
/// instance that would declare the queues with other arguments than the running one stops at
/// once, with an error that names the argument and both values, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_node_is_tried_and_a_topology_mismatch_is_named() {
    let (receiver, names) = (Receiver::start().await, Names::new("failover"));
    let (core, mut first) =
        service::prepare(service::config(&receiver), &names, None, |_| {}).await;
    let closed = format!("amqp://guest:guest@127.0.0.1:{}/%2f", service::free_port());
    first.amqp_urls = vec![closed, service::amqp_url()];
    let running = herald::serve::start(std::sync::Arc::new(core), first, service::secrets)
        .await
        .expect("the second node answers");
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &service::warrant(1),
        service::agency("failover-1"),
    )
    .await;
    service::every_webhook_delivered(&receiver, 1, Duration::from_secs(30)).await;

    let (core, mut other) =
        service::prepare(service::config(&receiver), &names, None, |_| {}).await;
    other.delivery_limit += 1;
    let refused = herald::serve::start(std::sync::Arc::new(core), other, service::secrets).await;
    let Err(e) = refused else {
        panic!("an instance declaring another delivery limit started");
    };
    let e = e.to_string();
    assert!(
        e.contains("has Herald's topology declared with other arguments than this Herald declares")
            && e.contains("inequivalent arg 'x-delivery-limit'")
            && e.contains(&format!("for queue '{}'", names.queue))
            && !e.contains("guest:guest"),
        "{e}"
    );
    running.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

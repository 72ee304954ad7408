//! Reloading the configuration of a running `herald serve` (a child process, as operators run
//! it): a good change takes effect for the next event, a broken one is refused while traffic
//! carries on under the configuration in force, and reloads while events flow lose and
//! duplicate nothing. Against the real broker, the HTTP receiver on loopback and the ledger.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::service::{self, Names, Receiver, total, wait_until};

/// A route for bail decisions that also tells the Parole Board panel office, put before the
/// shipped bail route (routes are tried in order; `continue` lets the shipped one match too).
const PAROLE_BOARD_ROUTE: &str = r#"
[[route]]
name = "bail-to-parole-board"
events = ["court.bail.decided"]
matchers = ["offender.ppo = true"]
to = ["judiciary:PAROLE-BOARD"]
template = "bail-decided"
sla = "within 24h"
continue = true

"#;

/// The shipped bail route's comment, before which the new route goes.
const BAIL_ROUTE: &str = "# A bail decision on a PPO";

const BOARD: &str = "/judiciary/PAROLE-BOARD";

/// A running `herald serve`, killed when the test ends, however it ends.
struct Herald {
    child: Child,
    /// Where its `/metrics` and `/-/reload` are.
    metrics: String,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Herald {
    fn spawn(config: &Path) -> Herald {
        let metrics = format!("127.0.0.1:{}", service::free_port());
        Herald::spawn_on(config, metrics)
    }

    /// With its metrics endpoint at `metrics`.
    fn spawn_on(config: &Path, metrics: String) -> Herald {
        service::install_tls();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("HERALD_AMQP_URL", service::amqp_url())
            .env("HERALD_METRICS_ADDR", &metrics)
            .env("HERALD_CONSOLE_ADDR", "127.0.0.1:0")
            .env("HERALD_WEBHOOK_SECRET", service::SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Herald { child, metrics }
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        service::scrape_at(&self.metrics).await
    }

    /// The hash of the configuration in force, from `herald_config_info`.
    async fn hash(&self) -> String {
        let metrics = self.metrics().await;
        let hashes: Vec<&String> = metrics
            .keys()
            .filter(|k| k.starts_with("herald_config_info{"))
            .collect();
        assert_eq!(hashes.len(), 1, "one configuration in force: {hashes:?}");
        hashes[0]
            .split('"')
            .nth(1)
            .expect("herald_config_info{hash=\"...\"}")
            .to_owned()
    }

    /// `herald reload` against this Herald: whether it exited 0, and what it printed.
    fn reload_command(&self, config: &Path) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["reload", "--config"])
            .arg(config)
            .env("HERALD_METRICS_ADDR", &self.metrics)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// `POST /-/reload` from `from`'s address: the status and the answer.
    async fn post_reload(&self, to: &str) -> (u16, String) {
        service::install_tls();
        let response = reqwest::Client::new()
            .post(format!("http://{to}/-/reload"))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn sighup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

/// The shipped configuration on this test's queues and receiver (guest may publish court
/// events), written to `dir`; the text is returned to be changed and written again.
fn configure(dir: &Path, names: &Names, receiver: &Receiver) -> (PathBuf, String) {
    let path = service::config_file(dir, names, receiver, "\"court.*\"");
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

/// `text` with the Parole Board route before the shipped bail route.
fn with_board(text: &str) -> String {
    assert!(text.contains(BAIL_ROUTE));
    text.replacen(BAIL_ROUTE, &format!("{PAROLE_BOARD_ROUTE}{BAIL_ROUTE}"), 1)
}

/// Writes `text` as the configuration in a way a reload never reads half of: a new file
/// renamed over the old.
fn write(path: &Path, text: &str) {
    let fresh = path.with_extension("toml.new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// Publishes bail decisions `range` with message ids `{prefix}-{i}`.
async fn bail(ch: &lapin::Channel, exchange: &str, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        let mut doc = common::example("court.bail.decided.json");
        doc["description"] = serde_json::json!(format!("bail decision {i}"));
        service::publish(
            ch,
            exchange,
            "court.bail.decided",
            &serde_json::to_vec(&doc).unwrap(),
            service::agency(&format!("{prefix}-{i}")),
        )
        .await;
    }
}

/// The webhooks that arrived at `path`, as distinct notification ids, and how many arrived in
/// all (a duplicate is a second arrival of one id).
fn arrivals(receiver: &Receiver, path: Option<&str>) -> (usize, usize) {
    let hooks: Vec<String> = receiver
        .hooks()
        .into_iter()
        .filter(|h| path.is_none_or(|p| h.path == p))
        .map(|h| h.id)
        .collect();
    let distinct: std::collections::BTreeSet<&String> = hooks.iter().collect();
    (distinct.len(), hooks.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_change_takes_effect_for_the_next_event_and_a_broken_one_is_refused() {
    let (receiver, names) = (Receiver::start().await, Names::new("reload-good"));
    let dir = tempfile::tempdir().unwrap();
    let (config, text) = configure(dir.path(), &names, &receiver);
    let mut herald = Herald::spawn(&config);
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    wait_until("the metrics endpoint", Duration::from_secs(30), || async {
        reqwest::get(format!("http://{}/metrics", herald.metrics))
            .await
            .is_ok()
    })
    .await;
    let first = herald.hash().await;
    let m = herald.metrics().await;
    assert_eq!(total(&m, "herald_config_last_reload_successful", &[]), 1.0);
    assert!(
        total(
            &m,
            "herald_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );

    // Under the shipped routes, a bail decision tells police and probation, not the board.
    bail(&ch, &names.exchange, "before", 0..1).await;
    service::every_webhook_delivered(&receiver, 2, Duration::from_secs(30)).await;
    assert_eq!(arrivals(&receiver, Some(BOARD)).0, 0);

    // The same files again: nothing to do.
    let (code, said) = herald.reload_command(&config);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("unchanged: configuration"), "{said}");

    // A new route, put in force by `herald reload`.
    write(&config, &with_board(&text));
    let (code, said) = herald.reload_command(&config);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("reloaded: configuration"), "{said}");
    let second = herald.hash().await;
    assert_ne!(second, first);
    assert!(
        said.contains(&second[..12]),
        "the answer names the hash: {said}"
    );
    bail(&ch, &names.exchange, "after", 0..1).await;
    service::every_webhook_delivered(&receiver, 5, Duration::from_secs(30)).await;
    assert_eq!(
        arrivals(&receiver, Some(BOARD)),
        (1, 1),
        "the next event after the reload goes by the new route, once"
    );

    // A broken change, by SIGHUP: a route naming a template that does not exist. Refused;
    // Herald keeps running on the configuration in force.
    let broken = with_board(&text).replacen(
        "template = \"bail-decided\"\nsla = \"within 24h\"\ncontinue = true",
        "template = \"no-such-template\"\nsla = \"within 24h\"\ncontinue = true",
        1,
    );
    assert_ne!(broken, with_board(&text));
    write(&config, &broken);
    herald.sighup().await;
    wait_until(
        "the broken reload refused",
        Duration::from_secs(60),
        || async {
            total(
                &herald.metrics().await,
                "herald_config_last_reload_successful",
                &[],
            ) == 0.0
        },
    )
    .await;
    assert!(herald.alive(), "SIGHUP does not end Herald");
    let m = herald.metrics().await;
    assert_eq!(
        total(&m, "herald_config_reloads_total", &["result=\"refused\""]),
        1.0
    );
    assert_eq!(
        herald.hash().await,
        second,
        "the configuration in force stays"
    );
    // The same refusal, by `POST /-/reload`, says why.
    let (status, answer) = herald.post_reload(&herald.metrics).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.starts_with("refused:"), "{answer}");
    assert!(answer.contains("no-such-template"), "{answer}");
    let (code, said) = herald.reload_command(&config);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no-such-template"), "{said}");

    // Traffic carries on under the configuration in force: police, probation and the board.
    bail(&ch, &names.exchange, "refused", 0..1).await;
    service::every_webhook_delivered(&receiver, 8, Duration::from_secs(30)).await;
    assert_eq!(arrivals(&receiver, Some(BOARD)), (2, 2));
    let (distinct, all) = arrivals(&receiver, None);
    assert_eq!((distinct, all), (8, 8), "nothing twice");

    // Fixed, reloaded: in force again.
    write(&config, &text);
    let (status, answer) = herald.post_reload(&herald.metrics).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        herald.hash().await,
        first,
        "back to the first configuration"
    );
    let m = herald.metrics().await;
    assert_eq!(total(&m, "herald_config_last_reload_successful", &[]), 1.0);
    assert_eq!(
        total(&m, "herald_config_reloads_total", &["result=\"applied\""]),
        2.0
    );
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_taken_from_this_machine_only() {
    let (receiver, names) = (Receiver::start().await, Names::new("reload-remote"));
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = configure(dir.path(), &names, &receiver);
    let port = service::free_port();
    let herald = Herald::spawn_on(&config, format!("0.0.0.0:{port}"));
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    // This machine's address on its network: the request comes from it, not from loopback.
    let out = Command::new("hostname").arg("-I").output().unwrap();
    let addresses = String::from_utf8_lossy(&out.stdout).into_owned();
    let outside = addresses
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .expect("this machine has an address beyond loopback");
    wait_until("the metrics endpoint", Duration::from_secs(30), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .is_ok()
    })
    .await;
    let (status, answer) = herald.post_reload(&format!("{outside}:{port}")).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("loopback"), "{answer}");
    let m = service::scrape_at(&format!("127.0.0.1:{port}")).await;
    assert_eq!(total(&m, "herald_config_reloads_total", &[]), 0.0);
    // From loopback (`herald reload` reaches a wildcard address there) it is taken.
    let (code, said) = herald.reload_command(&config);
    assert_eq!(code, Some(0), "{said}");
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_while_events_flow_lose_and_duplicate_nothing() {
    const EVENTS: usize = 400;
    const RELOADS: usize = 12;
    let (receiver, names) = (Receiver::start().await, Names::new("reload-load"));
    let dir = tempfile::tempdir().unwrap();
    let (config, text) = configure(dir.path(), &names, &receiver);
    let herald = Herald::spawn(&config);
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    let publishing = {
        let (ch, exchange) = (ch.clone(), names.exchange.clone());
        tokio::spawn(async move {
            for chunk in 0..EVENTS / 10 {
                bail(&ch, &exchange, "load", chunk * 10..(chunk + 1) * 10).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Both configurations tell police and probation of every bail decision; one also tells
    // the board. Each reload changes which is in force while events are being handled.
    for i in 0..RELOADS {
        let next = if i % 2 == 0 {
            with_board(&text)
        } else {
            text.clone()
        };
        write(&config, &next);
        let (status, answer) = herald.post_reload(&herald.metrics).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.starts_with("reloaded:"), "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publishing.await.unwrap();
    // Police and probation for every event; the board for those routed while it was in force.
    let base = EVENTS * 2;
    service::every_webhook_delivered(&receiver, base, Duration::from_secs(120)).await;
    // Whatever is still being handled finishes, then nothing more arrives.
    wait_until(
        "the events queue empty",
        Duration::from_secs(60),
        || async { service::ready(&names.queue).await == 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (distinct, all) = arrivals(&receiver, None);
    let (board, board_all) = arrivals(&receiver, Some(BOARD));
    println!(
        "reloads under load: {EVENTS} events, {RELOADS} reloads, {distinct} notifications ({board} to the board), {} duplicates",
        all - distinct
    );
    assert_eq!(all, distinct, "no notification twice");
    assert_eq!(board, board_all);
    assert_eq!(
        distinct - board,
        base,
        "police and probation told of every event, once"
    );
    assert!(
        0 < board && board < EVENTS,
        "the reloads landed while events were being handled: {board} of {EVENTS} went by the board's route"
    );
    let m = herald.metrics().await;
    assert_eq!(
        total(&m, "herald_config_reloads_total", &["result=\"applied\""]),
        RELOADS as f64
    );
    assert_eq!(
        total(&m, "herald_notifications_total", &["outcome=\"failed\""]),
        0.0,
        "nothing parked"
    );
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_puts_a_new_rate_limit_in_force() {
    const EVENTS: usize = 8;
    const LEEDS: &str = "/police/WYP-LEEDS";
    let (receiver, names) = (Receiver::start().await, Names::new("reload-rate"));
    let dir = tempfile::tempdir().unwrap();
    let (config, text) = configure(dir.path(), &names, &receiver);
    let herald = Herald::spawn(&config);
    service::wait_for_queue(&names.queue).await;
    let (_conn, ch) = service::channel().await;
    // Leeds police's webhook held to 2 a second (a burst of 2) from the reload on.
    let limited: String = text
        .lines()
        .map(|line| {
            if line.starts_with("webhook = ") && line.contains(LEEDS) {
                line.replacen(" }", ", rate = \"2/s\" }", 1)
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(limited.contains("rate = \"2/s\""));
    write(&config, &limited);
    let (status, answer) = herald.post_reload(&herald.metrics).await;
    assert_eq!(status, 200, "{answer}");
    bail(&ch, &names.exchange, "limited", 0..EVENTS).await;
    wait_until("every event at Leeds", Duration::from_secs(60), || async {
        arrivals(&receiver, Some(LEEDS)).0 == EVENTS
    })
    .await;
    let at: Vec<std::time::Instant> = receiver.hooks_at(LEEDS).iter().map(|h| h.at).collect();
    // Two at once, then one every half second: six more take three seconds.
    let spread = at[EVENTS - 1] - at[0];
    assert!(
        spread >= Duration::from_millis(2500),
        "{EVENTS} webhooks at 2/s took {spread:?}"
    );
    for window in at.windows(5) {
        assert!(
            window[4] - window[0] >= Duration::from_millis(900),
            "no more than the burst and the rate in any second: {at:?}"
        );
    }
    let m = herald.metrics().await;
    assert!(
        m.keys()
            .any(|k| k.starts_with("herald_notifications_held{") && k.contains("WYP-LEEDS")),
        "the new limit reports what it holds"
    );
    assert_eq!(arrivals(&receiver, None).0, arrivals(&receiver, None).1);
    service::cleanup(&ch, &names).await;
}

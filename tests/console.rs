//! The operator's console against a running Herald with the real broker, ledger and receivers:
//! every authorisation rule over HTTP (each refusal changes nothing), and an operator's visit
//! in a real browser (headless Chromium driven over WebDriver): find a person's notifications,
//! open the event, replay a parked one, see it delivered.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::service::{self, Names, Receiver, wait_until};
use herald::console;
use herald::serve::{self, Running};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const LEEDS: &str = "/police/WYP-LEEDS";

const OPERATOR_TOKEN: &str = "operator-token-0123456789abcdef";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const OLIVE: &str = "olive:olive-operator-password";
const RITA: &str = "rita:rita-reader-password-1";

/// Herald running with its console on a port of its own; the console's credentials from
/// `env` (none: open, on loopback).
async fn herald_with_console(
    names: &Names,
    config: herald::config::Config,
    env: &'static [(&'static str, &'static str)],
) -> (Running, String) {
    let (core, settings) = service::prepare(config, names, None, |_| {}).await;
    let core = Arc::new(core);
    let bound = console::bind("127.0.0.1:0", |k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let running = serve::start(Arc::clone(&core), settings.clone(), service::secrets)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = bound
        .serve(
            running.live(),
            settings,
            running.metrics.clone(),
            running.shutdown_token(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (running, format!("http://{}", started.addr))
}

/// A warrant to police:WYP-LEEDS (webhook and email) whose webhook the receiver refuses for
/// good, so it is parked in the failed queue.
async fn park_a_warrant(names: &Names, receiver: &Receiver, id: &str) {
    receiver.answer(LEEDS, 400);
    let (_conn, ch) = service::channel().await;
    // Issued now, so its deadline is ahead, as a live one's would be.
    let mut warrant: Value = serde_json::from_slice(&service::warrant(1)).unwrap();
    warrant["occurredAt"] = json!(chrono::Utc::now().to_rfc3339());
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &serde_json::to_vec(&warrant).unwrap(),
        service::agency(id),
    )
    .await;
    wait_until("the webhook parked", WAIT, || async {
        service::ready(&names.failed).await == 1
    })
    .await;
}

async fn body_json(r: reqwest::Response) -> Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn basic(user_password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: &str) -> Http {
        service::install_tls();
        Http {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
        }
    }

    async fn get(&self, path: &str, auth: Option<&str>) -> reqwest::Response {
        let mut r = self.client.get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    async fn form(
        &self,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    async fn json(&self, path: &str, auth: &str) -> Value {
        let r = self.get(path, Some(auth)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        body_json(r).await
    }

    async fn csrf(&self, auth: &str) -> String {
        self.json("/api/v1/session", auth).await["csrf"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_authorisation_rule_holds_and_a_refusal_changes_nothing() {
    let (receiver, names) = (Receiver::start().await, Names::new("console-auth"));
    let (herald, base) = herald_with_console(
        &names,
        service::config(&receiver),
        &[
            ("HERALD_CONSOLE_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("HERALD_CONSOLE_READER_TOKEN", READER_TOKEN),
            ("HERALD_CONSOLE_OPERATOR_BASIC", OLIVE),
            ("HERALD_CONSOLE_READER_BASIC", RITA),
        ],
    )
    .await;
    park_a_warrant(&names, &receiver, "evt-console-auth-1").await;
    let http = Http::new(&base);
    let operator = format!("Bearer {OPERATOR_TOKEN}");
    let reader = format!("Bearer {READER_TOKEN}");
    let (olive, rita) = (basic(OLIVE), basic(RITA));

    // Looking needs a credential; every answer, refusals too, is never cached and locked down.
    for path in [
        "/console",
        "/console/dead-letters/failed",
        "/api/v1/overview",
    ] {
        for auth in [
            None,
            Some("Bearer not-the-token-0123456789"),
            Some(basic("olive:not-her-password-at-all").as_str()),
        ] {
            let r = http.get(path, auth).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        for auth in [&operator, &reader, &olive, &rita] {
            let r = http.get(path, Some(auth)).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
            let csp = r.headers()["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
                "{csp}"
            );
        }
    }
    let r = http.get("/console", None).await;
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );

    // Acting: every way of asking without the right, or without the form's token, is refused.
    let replay = json!({"all": true});
    let olive_csrf = http.csrf(&olive).await;
    let rita_csrf = http.csrf(&rita).await;
    // Who asks, with what credential, with which headers, and the refusal they get.
    type Asking<'a> = (
        &'a str,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        StatusCode,
    );
    let refused: Vec<Asking> = vec![
        ("no credential", None, vec![], StatusCode::UNAUTHORIZED),
        (
            "a wrong token",
            Some("Bearer wrong-token-0123456789abcd"),
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a reader's token",
            Some(&reader),
            vec![],
            StatusCode::FORBIDDEN,
        ),
        (
            "a reader with her own CSRF token",
            Some(&rita),
            vec![("x-csrf-token", &rita_csrf)],
            StatusCode::FORBIDDEN,
        ),
        (
            "an operator by Basic without a CSRF token",
            Some(&olive),
            vec![],
            StatusCode::FORBIDDEN,
        ),
        (
            "an operator by Basic with another user's CSRF token",
            Some(&olive),
            vec![("x-csrf-token", &rita_csrf)],
            StatusCode::FORBIDDEN,
        ),
        (
            "an operator by Basic from another site",
            Some(&olive),
            vec![
                ("x-csrf-token", &olive_csrf),
                ("sec-fetch-site", "cross-site"),
            ],
            StatusCode::FORBIDDEN,
        ),
    ];
    for (who, auth, headers, status) in &refused {
        for (path, body) in [
            ("/api/v1/dead-letters/failed/replay", &replay),
            (
                "/api/v1/dead-letters/failed/purge",
                &json!({"all": true, "confirm": true}),
            ),
            (
                "/api/v1/endpoints/police:WYP-LEEDS/webhook/disable",
                &json!({}),
            ),
        ] {
            let r = http.post(path, *auth, headers, body).await;
            assert_eq!(r.status(), *status, "{who}: {path}");
        }
        // The HTML forms too, the token in the form.
        let mut fields = vec![("do", "replay"), ("ids", "p-0")];
        fields.extend(
            headers
                .iter()
                .filter(|(k, _)| *k == "x-csrf-token")
                .map(|(_, v)| ("csrf", *v)),
        );
        let others: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| *k != "x-csrf-token")
            .copied()
            .collect();
        let r = http
            .form("/console/dead-letters/failed/act", *auth, &others, &fields)
            .await;
        assert_eq!(r.status(), *status, "{who}: the replay form");
    }
    // Nothing changed: still parked, never delivered, no endpoint disabled, no audit entry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parked = http.json("/api/v1/dead-letters/failed", &reader).await;
    assert_eq!(parked["total"], 1, "{parked}");
    assert_eq!(receiver.arrived(LEEDS), 1, "only the first attempt");
    let endpoints = http.json("/api/v1/endpoints", &reader).await;
    assert!(
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "closed"),
        "{endpoints}"
    );
    assert_eq!(http.json("/api/v1/audit", &reader).await, json!([]));

    // The operator's dry run sends nothing; the replay delivers, and is audited by name.
    receiver.answer(LEEDS, 204);
    let dry = http
        .post(
            "/api/v1/dead-letters/failed/replay",
            Some(&operator),
            &[],
            &json!({"all": true, "dry_run": true}),
        )
        .await;
    assert_eq!(dry.status(), StatusCode::OK);
    let dry = body_json(dry).await;
    assert_eq!(dry["steps"][0]["step"]["result"], "would-replay", "{dry}");
    assert_eq!(service::ready(&names.failed).await, 1);
    let done = http
        .post(
            "/api/v1/dead-letters/failed/replay",
            Some(&olive),
            &[("x-csrf-token", &olive_csrf)],
            &json!({"all": true}),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    wait_until("the replayed webhook delivered", WAIT, || async {
        receiver.arrived(LEEDS) == 2
    })
    .await;
    let audit = http.json("/api/v1/audit", &reader).await;
    assert_eq!(audit[0]["actor"], "console:olive", "{audit}");
    assert_eq!(audit[0]["action"], "replay", "{audit}");

    // Disabling an endpoint is recorded with who did it, and every instance stops sending.
    let r = http
        .post(
            "/api/v1/endpoints/police:WYP-LEEDS/webhook/disable",
            Some(&operator),
            &[],
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let endpoints = http.json("/api/v1/endpoints", &reader).await;
    let leeds = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["recipient"] == "police:WYP-LEEDS" && e["channel"] == "webhook")
        .unwrap()
        .clone();
    assert_eq!(leeds["state"], "disabled");
    assert_eq!(leeds["reason"], "disabled by console:operator-token");
    let audit = http.json("/api/v1/audit", &reader).await;
    assert_eq!(audit[0]["action"], "disable", "{audit}");
    // Taken up by the service within its heartbeat: the next warrant's webhook is parked
    // without being sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.warrant.issued",
        &service::warrant(2),
        service::agency("evt-console-auth-2"),
    )
    .await;
    wait_until("the second warrant parked", WAIT, || async {
        service::ready(&names.failed).await == 1
    })
    .await;
    assert_eq!(
        receiver.arrived(LEEDS),
        2,
        "nothing sent to a disabled endpoint"
    );

    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_console_is_loopback_only_and_answers_only_loopback_names() {
    let refused = console::bind("0.0.0.0:0", |_| None).await.err().unwrap();
    let text = refused.to_string();
    assert!(
        text.contains("not loopback") && text.contains("HERALD_CONSOLE_OPERATOR_TOKEN"),
        "{text}"
    );
    let short = console::bind("0.0.0.0:0", |k| {
        (k == "HERALD_CONSOLE_OPERATOR_TOKEN").then(|| "short".to_owned())
    })
    .await
    .err()
    .unwrap();
    assert!(short.to_string().contains("at least 16"), "{short}");

    let (receiver, names) = (Receiver::start().await, Names::new("console-open"));
    let (herald, base) =
        herald_with_console(&names, service::config_with_digests(&receiver), &[]).await;
    let http = Http::new(&base);
    assert_eq!(http.get("/console", None).await.status(), StatusCode::OK);
    // The registers: a grant from PPUD, then the authority register and a digest's preview.
    let (_conn, ch) = service::channel().await;
    let grant = common::example("ppud.representation.granted.json");
    service::publish(
        &ch,
        &names.exchange,
        "ppud.representation.granted",
        &serde_json::to_vec(&grant).unwrap(),
        service::agency("evt-console-grant"),
    )
    .await;
    let person = "NOMS:A1234BC";
    let mut standings = Value::Null;
    for _ in 0..100 {
        let r = http
            .get(
                &format!("/api/v1/registers/authority?person={person}"),
                None,
            )
            .await;
        standings = body_json(r).await;
        if standings[0]["history"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(standings[0]["history"][0]["change"], "grant", "{standings}");
    assert_eq!(standings[0]["history"][0]["event"], "evt-console-grant");
    let page = http
        .get(&format!("/console/registers?person={person}"), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("evt-console-grant"), "{page}");
    let r = http
        .get("/console/registers", None)
        .await
        .text()
        .await
        .unwrap();
    let digest = r
        .split("href=\"/console/registers/digests/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a digest listed: {r}"))
        .to_owned();
    let preview = http
        .get(&format!("/console/registers/digests/{digest}"), None)
        .await;
    assert_eq!(preview.status(), StatusCode::OK);
    assert!(preview.text().await.unwrap().contains("Subject:"));
    // A page of another site that rebinds its own name to 127.0.0.1 is not answered.
    let r = http
        .client
        .get(format!("{base}/api/v1/overview"))
        .header("host", "attacker.example:9465")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    // The report counts only once a period is asked for; then it is a page and two downloads.
    let form = http
        .get("/console/report", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("Give a period") && !form.contains("all routes"),
        "{form}"
    );
    let counted = http.get("/console/report?from=1d", None).await;
    assert_eq!(counted.status(), StatusCode::OK);
    let counted = counted.text().await.unwrap();
    assert!(counted.contains("all routes"), "{counted}");
    let csv = http.get("/console/report.csv?from=1d", None).await;
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    let html = http.get("/console/report.html?from=1d", None).await;
    assert!(
        html.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );

    // Open, it is for this machine's users, not for what a proxy passes on.
    let r = http
        .client
        .get(format!("{base}/console"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Open is not unguarded: a form still needs the page's CSRF token.
    let r = http
        .form(
            "/console/endpoints/police:WYP-LEEDS/webhook/disable",
            None,
            &[],
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_current_and_served() {
    let file = common::root().join("docs/openapi.json");
    let generated = console::openapi::document();
    if std::env::var_os("HERALD_WRITE_OPENAPI").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is not what `herald openapi` prints: run \
         `cargo run -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/overview",
        "/api/v1/events/{id}",
        "/api/v1/notifications",
        "/api/v1/dead-letters/{queue}",
        "/api/v1/dead-letters/{queue}/replay",
        "/api/v1/endpoints",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    let (receiver, names) = (Receiver::start().await, Names::new("console-openapi"));
    let (herald, base) = herald_with_console(&names, service::config(&receiver), &[]).await;
    let served = body_json(Http::new(&base).get("/api/v1/openapi.json", None).await).await;
    assert_eq!(served, doc);
    herald.stop().await.unwrap();
    let (_conn, ch) = service::channel().await;
    service::cleanup(&ch, &names).await;
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let exe = std::env::var("HERALD_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = service::free_port();
    let child = Command::new(&exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {exe} ({e}): the browser tests need Chromium and its driver \
                 (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
            )
        });
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    service::install_tls();
    let status = format!("{}/status", driver.url);
    wait_until("chromedriver answers", WAIT, || async {
        reqwest::get(&status).await.is_ok()
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let profile = tempfile::tempdir().unwrap().keep();
    let binary =
        std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    fantoccini::ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot start headless Chromium through chromedriver: {e}"))
}

/// Where the browser test puts its screenshots; with `HERALD_CONSOLE_SCREENSHOTS` set, into
/// docs/console/ (the README links them).
fn screenshot_dir() -> std::path::PathBuf {
    let dir = if std::env::var_os("HERALD_CONSOLE_SCREENSHOTS").is_some() {
        common::root().join("docs/console")
    } else {
        common::root().join("target/tmp/console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(b: &fantoccini::Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(b: &fantoccini::Client, css: &str) -> String {
    b.wait()
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The text of `css` once it contains `wanted` (the page it is on may still be the last one).
async fn text_once(b: &fantoccini::Client, css: &str, wanted: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = match b.find(fantoccini::Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(wanted) || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_finds_a_person_and_replays_a_parked_notification_in_a_browser() {
    use fantoccini::Locator::Css;
    let driver = chromedriver().await;
    let (receiver, names) = (Receiver::start().await, Names::new("console-browser"));
    let (herald, base) = herald_with_console(&names, service::config(&receiver), &[]).await;
    // A refused event, and a parked notification.
    let (_conn, ch) = service::channel().await;
    service::publish(
        &ch,
        &names.exchange,
        "court.hearing.concluded",
        &serde_json::to_vec(&common::example("court.hearing.concluded.json")).unwrap(),
        service::agency("evt-not-allowed"),
    )
    .await;
    park_a_warrant(&names, &receiver, "evt-console-warrant").await;
    let b = browser(&driver).await;

    b.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(text_of(&b, "#parked-count").await, "1");
    snap(&b, "overview").await;

    // Find the person's notifications by NOMS number, then open the warrant.
    b.goto(&format!("{base}/console/search")).await.unwrap();
    let form = b.wait().for_element(Css("form.search")).await.unwrap();
    form.find(Css("input[name=person]"))
        .await
        .unwrap()
        .send_keys("NOMS:A1234BC")
        .await
        .unwrap();
    form.find(Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let results = text_of(&b, "#results").await;
    assert!(results.contains("evt-console-warrant"), "{results}");
    assert!(results.contains("parked"), "{results}");
    snap(&b, "search").await;
    b.find(Css(
        "#results a[href='/console/event?id=evt-console-warrant']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let story = text_of(&b, "section.event").await;
    assert!(
        story.contains("ppo-fta-warrant → police:WYP-LEEDS by webhook"),
        "{story}"
    );
    assert!(story.contains("attempt 1: http-refused 400"), "{story}");
    let classes = text_of(&b, "#classes").await;
    assert!(classes.contains("judiciary"), "{classes}");
    snap(&b, "event").await;

    // The receiver is fixed; the operator replays the parked webhook, a dry run first.
    receiver.answer(LEEDS, 204);
    b.goto(&format!("{base}/console/dead-letters/failed"))
        .await
        .unwrap();
    let parked = text_of(&b, "#parked").await;
    assert!(parked.contains("police:WYP-LEEDS"), "{parked}");
    snap(&b, "failed").await;
    b.find(Css("#parked input[name=ids]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.find(Css("#picked button[value=dry-run]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let summary = text_of(&b, "#summary").await;
    assert!(
        summary.contains("1 message(s) would be replayed"),
        "{summary}"
    );
    assert_eq!(receiver.arrived(LEEDS), 1, "a dry run sends nothing");
    b.find(Css("button[value=replay]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The replay's page has a #summary too: wait for the new one.
    let summary = text_once(&b, "#summary", "replayed,").await;
    assert!(summary.contains("1 replayed"), "{summary}");
    wait_until("the replayed webhook delivered", WAIT, || async {
        receiver.arrived(LEEDS) == 2
    })
    .await;

    // The event's page now tells the whole story: parked, replayed, delivered.
    let mut story = String::new();
    for _ in 0..50 {
        b.goto(&format!("{base}/console/event?id=evt-console-warrant"))
            .await
            .unwrap();
        story = text_of(&b, "section.event").await;
        if story.contains("replayed by an operator") && story.contains("attempt 2: delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        story.contains("replayed by an operator") && story.contains("attempt 2: delivered"),
        "{story}"
    );
    snap(&b, "event-replayed").await;
    b.goto(&format!("{base}/console/endpoints")).await.unwrap();
    text_of(&b, "#endpoints").await;
    snap(&b, "endpoints").await;
    b.close().await.unwrap();
    herald.stop().await.unwrap();
    service::cleanup(&ch, &names).await;
}

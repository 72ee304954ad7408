//! The `herald` binary as an operator or a publisher runs it: `check`, `config show`,
//! `validate` and `route-test`, their output and their exit codes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use common::root;
use serde_json::Value;
use tempfile::TempDir;

const WARRANT: &str = "schemas/examples/valid/court.warrant.issued.json";
const HDC_NO_DATE: &str = "schemas/examples/invalid/hdc-approved-without-release-date.json";
/// The variable the shipped directory's webhooks name for their signing secret.
const SECRET_ENV: &str = "HERALD_WEBHOOK_SECRET";
/// A valid signing secret (Standard Webhooks' own example), and its first webhook line.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const FIRST_WEBHOOK: &str = r#"webhook = { url = "${HERALD_RECEIVER_URL}/police/WYP-LEEDS", secret_env = "HERALD_WEBHOOK_SECRET" }"#;

/// What one run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn herald(args: &[&str]) -> Run {
    herald_with(args, &[])
}

/// Runs the binary with these environment variables set (and the signing secret's variable
/// unset unless it is one of them).
fn herald_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_RECEIVER_URL")
        .env_remove(SECRET_ENV)
        .envs(env.iter().copied())
        .output()
        .expect("the herald binary runs");
    let run = Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status)),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    };
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    run
}

fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no examples in {dir}");
    names
}

// ---------------------------------------------------------------------------------------
// A copy of the configuration to break.

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// routes.toml with the schemas, templates and data it names, in a temporary folder.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["schemas", "templates", "data"] {
            copy_dir(&root().join(sub), &dir.path().join(sub));
        }
        std::fs::copy(root().join("routes.toml"), dir.path().join("routes.toml")).unwrap();
        Sandbox { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("routes.toml")
    }

    fn config_arg(&self) -> String {
        self.config().to_str().unwrap().to_owned()
    }

    /// Sets one field of the named route in the copied routes.toml.
    fn set_route(&self, route: &str, field: &str, value: toml::Value) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let mut doc: toml::Table = text.parse().unwrap();
        let routes = doc["route"].as_array_mut().unwrap();
        let entry = routes
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .find(|r| r["name"].as_str() == Some(route))
            .unwrap_or_else(|| panic!("routes.toml has no route {route}"));
        entry.insert(field.to_owned(), value);
        std::fs::write(self.config(), toml::to_string(&doc).unwrap()).unwrap();
    }

    /// Rewrites one copied template file.
    fn edit_template(&self, file: &str, edit: impl FnOnce(String) -> String) {
        let path = self.dir.path().join("templates").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = edit(text.clone());
        assert_ne!(changed, text, "the edit of {file} changed nothing");
        std::fs::write(path, changed).unwrap();
    }

    /// Rewrites the copied routes.toml.
    fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let changed = edit(text.clone());
        assert_ne!(changed, text, "the edit of routes.toml changed nothing");
        std::fs::write(self.config(), changed).unwrap();
    }

    /// Replaces the first recipient's webhook line.
    fn set_first_webhook(&self, line: &str) {
        self.edit_config(|t| t.replacen(FIRST_WEBHOOK, line, 1));
    }

    fn check(&self) -> Run {
        herald(&["check", "--config", &self.config_arg()])
    }

    fn check_with(&self, env: &[(&str, &str)]) -> Run {
        herald_with(&["check", "--config", &self.config_arg()], env)
    }
}

/// The number of the line of routes.toml that holds `text`.
fn line_of(sandbox: &Sandbox, text: &str) -> usize {
    std::fs::read_to_string(sandbox.config())
        .unwrap()
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("routes.toml has no line with {text:?}"))
        + 1
}

/// Fails the test if any part of the secret appears in what the command printed.
fn assert_not_shown(run: &Run, secret: &str) {
    let body = secret.trim_start_matches("whsec_");
    let both = run.both();
    assert!(
        !both.contains(secret) && !both.contains(body),
        "the secret was printed: {run:?}"
    );
}

/// The one `error:` line that contains `words`.
fn error_line<'r>(run: &'r Run, words: &[&str]) -> &'r str {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:") && words.iter().all(|w| l.contains(w)))
        .collect();
    assert_eq!(lines.len(), 1, "one error line with {words:?}: {run:?}");
    lines[0]
}

fn strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(
        items
            .iter()
            .map(|s| toml::Value::String((*s).to_owned()))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// The command line itself

#[test]
fn every_command_lists_the_environment_it_reads_with_its_defaults() {
    let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["serve", "--help"],
            &[
                "HERALD_CONFIG",
                "[default: routes.toml]",
                "HERALD_AMQP_URL",
                "overrides [amqp] url",
                amqp,
                "HERALD_SMTP_URL",
                "overrides [email] url",
                "HERALD_METRICS_ADDR",
                "overrides\n",
                "127.0.0.1:9464",
                "HERALD_RECEIVER_URL",
                "http://127.0.0.1:9900",
                SECRET_ENV,
                "RUST_LOG",
                "HERALD_LOG_FORMAT",
            ],
        ),
        (
            &["publish", "--help"],
            &[
                "HERALD_CONFIG",
                "HERALD_AMQP_URL",
                amqp,
                "HERALD_PUBLISH_PASSWORD",
            ],
        ),
        (
            &["dlq", "--help"],
            &["HERALD_CONFIG", "HERALD_AMQP_URL", amqp],
        ),
        (
            &["receive", "--help"],
            &[SECRET_ENV, "[default: 127.0.0.1:9900]"],
        ),
        (
            &["check", "--help"],
            &["HERALD_CONFIG", "HERALD_RECEIVER_URL", SECRET_ENV],
        ),
        (
            &["config", "show", "--help"],
            &[
                "HERALD_CONFIG",
                "HERALD_AMQP_URL",
                "HERALD_SMTP_URL",
                "HERALD_METRICS_ADDR",
                "HERALD_RECEIVER_URL",
                SECRET_ENV,
            ],
        ),
        (&["validate", "--help"], &["HERALD_CONFIG"]),
        (
            &["route-test", "--help"],
            &["HERALD_CONFIG", "HERALD_RECEIVER_URL"],
        ),
        (
            &["--help"],
            &[
                "HERALD_CONFIG",
                "HERALD_AMQP_URL",
                "HERALD_SMTP_URL",
                "HERALD_METRICS_ADDR",
                "HERALD_PUBLISH_PASSWORD",
                SECRET_ENV,
                "RUST_LOG",
            ],
        ),
    ];
    // A value set in the environment is never shown: the broker URL carries a password.
    let env = [(
        "HERALD_AMQP_URL",
        "amqp://guest:h3lp-pa55@127.0.0.1:5672/%2f",
    )];
    for (args, words) in cases {
        let run = herald_with(args, &env);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        for word in words {
            assert!(
                run.stdout.contains(word),
                "{args:?} does not name {word:?}: {run:?}"
            );
        }
        assert!(!run.both().contains("h3lp-pa55"), "{args:?}: {run:?}");
    }
}

#[test]
fn the_config_option_works_before_the_command_as_after_it() {
    let sandbox = Sandbox::new();
    let file = sandbox.config_arg();
    for args in [
        &["--config", &file, "check"][..],
        &["check", "--config", &file],
    ] {
        let run = herald_with(args, &[(SECRET_ENV, SECRET)]);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(
            run.stdout.lines().any(|l| l == format!("{file}: ok")),
            "{args:?} did not check {file}: {run:?}"
        );
    }
    let run = herald(&["--config", "no-such-routes.toml", "route-test", WARRANT]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no-such-routes.toml"), "{run:?}");
}

#[test]
fn the_receiver_url_setting_moves_every_sample_webhook_and_is_checked_as_a_url_is() {
    let moved = "http://127.0.0.1:19901";
    let doc = herald_with(
        &["route-test", WARRANT, "--json"],
        &[("HERALD_RECEIVER_URL", moved)],
    )
    .json();
    let webhook = notifications(&doc)
        .iter()
        .find(|n| n["channel"] == "webhook")
        .unwrap_or_else(|| panic!("no webhook: {doc:#}"));
    assert_eq!(
        webhook["content"]["url"],
        format!("{moved}/police/WYP-LEEDS"),
        "{webhook:#}"
    );

    // Every webhook of the directory follows it, and the URL it makes is checked.
    let webhooks = [
        "police:WYP-LEEDS",
        "police:WYP-BRADFORD",
        "probation:PDU-LEEDS",
        "judiciary:PAROLE-BOARD",
    ];
    let run = herald_with(
        &["check"],
        &[
            ("HERALD_RECEIVER_URL", "http://192.0.2.7:9900"),
            (SECRET_ENV, SECRET),
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    for recipient in webhooks {
        error_line(
            &run,
            &[
                &format!("recipient {recipient}: webhook url http://192.0.2.7:9900/"),
                "plain HTTP is allowed only to loopback",
            ],
        );
    }
    let run = herald_with(
        &["check"],
        &[
            (
                "HERALD_RECEIVER_URL",
                "http://herald:r3c3iver-pw@127.0.0.1:9900",
            ),
            (SECRET_ENV, SECRET),
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("user name or password"), "{run:?}");
    assert!(!run.both().contains("r3c3iver-pw"), "{run:?}");
    let run = herald_with(
        &["check"],
        &[("HERALD_RECEIVER_URL", moved), (SECRET_ENV, SECRET)],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

// ---------------------------------------------------------------------------------------
// herald check

#[test]
fn check_passes_the_shipped_configuration() {
    let run = herald(&["check"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l == "routes.toml: ok"),
        "{run:?}"
    );
    assert!(!run.both().contains("error:"), "{run:?}");
    // The summary counts types, and names the versions of a type accepted in more than one.
    assert!(
        run.stdout.lines().any(|l| l
            .starts_with("note: 11 event types (court.hearing.concluded in versions 1 and 2), ")),
        "{run:?}"
    );
}

#[test]
fn check_knows_a_recipients_contact() {
    let with_contact = |contact: &str| format!("{FIRST_WEBHOOK}\ncontact = \"{contact}\"");
    let sandbox = Sandbox::new();
    sandbox.set_first_webhook(&with_contact("webhooks-at-wyp"));
    // Refused when the configuration loads.
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    let line = error_line(&run, &["recipient police:WYP-LEEDS", "contact"]);
    assert!(
        line.contains("\"webhooks-at-wyp\" is not an email address"),
        "{line}"
    );

    let sandbox = Sandbox::new();
    sandbox.set_first_webhook(&with_contact("webhooks@westyorkshire.police.example.uk"));
    // Without an SMTP server its emails would only be written to the outbox.
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with("warning:")
            && l.contains("1 recipient(s) name a contact, but no SMTP server is set")),
        "{run:?}"
    );
    // The other webhooks are named once, as a note, and this one is not among them.
    let note = run
        .stdout
        .lines()
        .find(|l| l.starts_with("note:") && l.contains("name no contact"))
        .unwrap_or_else(|| panic!("{run:?}"));
    assert!(
        note.contains("police:WYP-BRADFORD") && !note.contains("police:WYP-LEEDS"),
        "{note}"
    );
    let run = sandbox.check_with(&[
        (SECRET_ENV, SECRET),
        ("HERALD_SMTP_URL", "smtp://127.0.0.1:2525"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("warning:"), "{run:?}");

    // The contact's email is a template of its own, which must be there.
    std::fs::remove_dir_all(sandbox.dir.path().join("templates/endpoint-state")).unwrap();
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    error_line(
        &run,
        &["recipient police:WYP-LEEDS", "no endpoint-state folder"],
    );

    // A contact with no webhook to tell it about.
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| {
        t.replacen(
            "email = [\"iom.manchester@gmp.police.example.uk\"]",
            "email = [\"iom.manchester@gmp.police.example.uk\"]\ncontact = \"ops@gmp.police.example.uk\"",
            1,
        )
    });
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with("warning:")
            && l.contains(
                "recipient police:GMP-MANCHESTER: contact is set but the recipient has no webhook"
            )),
        "{run:?}"
    );
}

/// A copy of the shipped configuration whose bail route asks for a court no example names:
/// sound, but `check` warns that the route's template is never tried.
fn sandbox_with_one_warning() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.set_route(
        "ppo-bail-decision",
        "matchers",
        strings(&["offender.ppo = true", "court.code = \"NO-SUCH-COURT\""]),
    );
    sandbox
}

#[test]
fn check_strict_fails_on_a_warning_that_check_alone_passes() {
    let sandbox = sandbox_with_one_warning();
    let file = sandbox.config_arg();
    let warning = "route ppo-bail-decision: no example in";

    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{run:?}");
    assert!(warnings[0].contains(warning), "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l == format!("{file}: ok")),
        "{run:?}"
    );

    let run = herald_with(
        &["check", "--strict", "--config", &file],
        &[(SECRET_ENV, SECRET)],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(warning), "{run:?}");
    assert!(!run.both().contains("error:"), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("{file}: 1 warning(s), which fail under --strict")),
        "{run:?}"
    );

    // An unset signing secret is a warning too.
    let run = herald(&["check", "--strict"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("warning: routes.toml: {SECRET_ENV}")),
        "{run:?}"
    );
    // The shipped configuration, its secret set, has no warning.
    let run = herald_with(&["check", "--strict"], &[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l == "routes.toml: ok"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("warning:"), "{run:?}");
}

#[test]
fn check_names_every_problem_of_a_broken_configuration_on_its_own_line() {
    let sandbox = Sandbox::new();
    sandbox.set_route(
        "ppo-received-into-custody",
        "events",
        strings(&["prison.prisoner.teleported"]),
    );
    sandbox.set_route(
        "ppo-release-determined",
        "template",
        toml::Value::String("no-such-template".into()),
    );
    sandbox.set_route(
        "ppo-released",
        "sla",
        toml::Value::String("whenever".into()),
    );
    sandbox.set_route(
        "dossier-document-parole-board",
        "to",
        strings(&["judiciary:NO-SUCH-PANEL"]),
    );
    sandbox.set_route(
        "ppo-hdc-approved",
        "matchers",
        strings(&["offender.ppo = true", "decision ~ approved"]),
    );

    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!run.stdout.contains(": ok"), "{run:?}");
    let file = sandbox.config().display().to_string();
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    let expected = [
        (
            "ppo-received-into-custody",
            &["events", "prison.prisoner.teleported"][..],
        ),
        ("ppo-release-determined", &["template", "no-such-template"]),
        ("ppo-released", &["sla", "whenever"]),
        (
            "dossier-document-parole-board",
            &["judiciary:NO-SUCH-PANEL"],
        ),
        ("ppo-hdc-approved", &["matcher", "decision ~ approved"]),
    ];
    for (route, words) in expected {
        let lines: Vec<&&str> = errors
            .iter()
            .filter(|l| l.contains(&format!("route {route}:")))
            .collect();
        assert_eq!(lines.len(), 1, "one line for route {route}: {run:?}");
        let line = lines[0];
        assert!(line.contains(&file), "{line:?} does not name {file}");
        for word in words {
            assert!(line.contains(word), "{line:?} does not mention {word:?}");
        }
    }
    assert_eq!(errors.len(), expected.len(), "{run:?}");
    assert!(run.stderr.contains("5 problem(s)"), "{run:?}");
}

#[test]
fn check_fails_on_a_field_no_event_of_the_route_has_and_suggests_the_one_meant() {
    let sandbox = Sandbox::new();
    sandbox.set_route(
        "ppo-received-into-custody",
        "to",
        strings(&["police:{offender.homeBCU}"]),
    );
    sandbox.set_route(
        "ppo-hdc-approved",
        "matchers",
        strings(&["offender.ppo = true", "desicion = approved"]),
    );
    sandbox.set_route(
        "ppo-release-determined",
        "sla",
        toml::Value::String("28d notice before releaseDay".into()),
    );
    sandbox.set_route(
        "ppo-bail-decision",
        "matchers",
        strings(&["offender.ppo == true"]),
    );
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    for (route, words) in [
        (
            "ppo-received-into-custody",
            &[
                "offender.homeBCU",
                "prison.prisoner.received",
                "did you mean offender.homeBcu?",
            ][..],
        ),
        ("ppo-hdc-approved", &["desicion", "did you mean decision?"]),
        (
            "ppo-release-determined",
            &["releaseDay", "did you mean releaseDate?"],
        ),
        (
            "ppo-bail-decision",
            &["unknown operator \"==\"", "did you mean \"=\"?"],
        ),
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("route {route}:")))
            .unwrap_or_else(|| panic!("no error for {route}: {run:?}"));
        for word in words {
            assert!(line.contains(word), "{line:?} does not mention {word:?}");
        }
    }
}

#[test]
fn check_routes_every_example_and_fails_on_what_the_service_would_park() {
    let sandbox = Sandbox::new();
    // Without Bradford's listing office, the adjourned hearing's next hearing reaches no one.
    let text = std::fs::read_to_string(sandbox.config()).unwrap();
    let start = text
        .find("[[recipient]]\nid = \"court-listing:BRADFORDCC\"")
        .unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(
        sandbox.config(),
        format!("{}{}", &text[..start], &text[end + 2..]),
    )
    .unwrap();
    let run = sandbox.check();
    assert_eq!(run.code, 1, "{run:?}");
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("court.hearing.concluded--adjourned.json"))
        .unwrap_or_else(|| panic!("{run:?}"));
    assert!(
        line.contains("court-listing:BRADFORDCC") && line.contains("unknown-recipient"),
        "{line}"
    );
}

#[test]
fn route_test_exits_non_zero_when_the_service_would_park_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(root().join(WARRANT)).unwrap()).unwrap();
    doc["additionalInformation"]["offender"]["homeBcu"] = "XYZ-NOWHERE".into();
    let file = dir.path().join("warrant.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let run = herald(&["route-test", file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("unknown-recipient"), "{run:?}");
    assert!(run.stdout.contains("police:XYZ-NOWHERE"), "{run:?}");
}

#[test]
fn check_reports_every_wrong_key_at_once_with_the_word_meant() {
    let sandbox = Sandbox::new();
    let text = std::fs::read_to_string(sandbox.config()).unwrap();
    let text = text
        .replacen("prefetch = 100", "prefetch = 100\nprefetsh = 5", 1)
        .replacen("max_depth = 32", "max_depth = \"deep\"", 1)
        .replacen(
            "template = \"prisoner-received\"",
            "template = \"prisoner-received\"\nchanels = [\"email\"]",
            1,
        );
    std::fs::write(sandbox.config(), text).unwrap();
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    for words in [
        &["amqp.prefetsh", "did you mean `prefetch`?"][..],
        &["limits.max_depth", "expected usize"],
        &[
            "ppo-received-into-custody",
            "chanels",
            "did you mean `channels`?",
        ],
    ] {
        assert!(
            errors.iter().any(|l| words.iter().all(|w| l.contains(w))),
            "no error with {words:?}: {run:?}"
        );
    }
    assert_eq!(errors.len(), 3, "{run:?}");
    assert!(
        !run.stderr.contains("\"deep\""),
        "values are not quoted: {run:?}"
    );
}

#[test]
fn check_goes_on_past_a_wrong_key_to_the_routes() {
    let sandbox = Sandbox::new();
    let text = std::fs::read_to_string(sandbox.config()).unwrap();
    std::fs::write(
        sandbox.config(),
        text.replacen("prefetch = 100", "prefetch = 100\nprefetsh = 5", 1),
    )
    .unwrap();
    sandbox.set_route(
        "ppo-bail-decision",
        "sla",
        toml::Value::String("within 1 workday".into()),
    );
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("did you mean `prefetch`?"), "{run:?}");
    let sla = run
        .stderr
        .lines()
        .find(|l| l.contains("route ppo-bail-decision"))
        .unwrap_or_else(|| panic!("the route was checked too: {run:?}"));
    assert!(sla.contains("did you mean \"working day\"?"), "{sla}");
}

#[test]
fn check_explains_handlebars_syntax_errors_in_plain_words_with_file_line_and_column() {
    let sandbox = Sandbox::new();
    sandbox.edit_template("bail-decided/text.hbs", |t| {
        format!("{{{{info.court.}}}}\n{t}")
    });
    sandbox.edit_template("hdc-decided/text.hbs", |t| {
        format!("{{{{#if info.decision}}}}x{{{{/unless}}}}\n{t}")
    });
    sandbox.edit_template("warrant-issued/text.hbs", |t| {
        format!("{{{{#if info.kind}}}}\n{t}")
    });
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    for (file, words) in [
        (
            "bail-decided/text.hbs",
            "line 1, column 14: a field name is missing",
        ),
        (
            "hdc-decided/text.hbs",
            "close each block with its own name, {{/if}}",
        ),
        ("warrant-issued/text.hbs", "is not closed by its {{/...}}"),
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("nothing about {file}: {run:?}"));
        assert!(line.contains(words), "{line}");
        assert!(!line.contains("path_id") && !line.contains("-->"), "{line}");
    }
}

#[test]
fn check_reports_a_bad_regex_matcher_on_one_line() {
    let sandbox = Sandbox::new();
    sandbox.set_route(
        "ppo-hdc-approved",
        "matchers",
        strings(&["offender.ppo = true", r#"decision =~ "(""#]),
    );
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    let file = sandbox.config().display().to_string();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one problem line and the summary: {run:?}");
    assert!(lines[0].starts_with(&format!("error: {file}: route ppo-hdc-approved: matcher")));
    assert!(lines[1].contains("1 problem(s)"), "{run:?}");
}

#[test]
fn check_fails_when_a_template_uses_a_field_the_events_lack() {
    let sandbox = Sandbox::new();
    sandbox.edit_template("warrant-issued/text.hbs", |t| {
        t + "Cell:                   {{info.noSuchField}}\n"
    });
    let run = sandbox.check();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains(": ok"), "{run:?}");
    let both = run.both();
    let line = both
        .lines()
        .find(|l| l.starts_with("error:") && l.contains("route ppo-fta-warrant:"))
        .unwrap_or_else(|| panic!("no error for route ppo-fta-warrant: {run:?}"));
    assert!(line.contains("warrant-issued"), "{line}");
    assert!(line.contains("noSuchField"), "{line}");
    assert!(line.contains("court.warrant.issued.json"), "{line}");
}

#[test]
fn check_refuses_html_templates_that_do_not_escape() {
    for unescaped in ["{{{recipient.name}}}", "{{& recipient.name}}"] {
        let sandbox = Sandbox::new();
        sandbox.edit_template("warrant-issued/html.hbs", |t| {
            t.replacen("{{recipient.name}}", unescaped, 1)
        });
        let run = sandbox.check();
        assert_eq!(run.code, 2, "{unescaped}: {run:?}");
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error:") && l.contains("html.hbs"))
            .unwrap_or_else(|| panic!("{unescaped}: no error names html.hbs: {run:?}"));
        assert!(line.contains("warrant-issued"), "{line}");
        assert!(line.contains("escape"), "{line}");
    }
}

// ---------------------------------------------------------------------------------------
// herald check and secrets: none is ever printed

#[test]
fn check_refuses_a_signing_secret_put_in_secret_env_without_printing_it() {
    let sandbox = Sandbox::new();
    sandbox.set_first_webhook(
        &FIRST_WEBHOOK.replace("\"HERALD_WEBHOOK_SECRET\"", &format!("\"{SECRET}\"")),
    );
    let line = line_of(&sandbox, SECRET);
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    let error = error_line(
        &run,
        &[
            &sandbox.config_arg(),
            &format!("line {line}, "),
            "[[recipient]] police:WYP-LEEDS, key webhook.secret_env",
            "not the name of an environment variable",
        ],
    );
    assert!(error.contains("(the value is not shown)"), "{error}");
    assert_not_shown(&run, SECRET);
}

#[test]
fn check_refuses_a_secret_written_into_a_webhook_table_without_printing_it() {
    let secret = "whsec_c2lnbmluZy1zZWNyZXQtd3JpdHRlbi1pbmxpbmU=";
    for (key, value) in [
        ("secret", secret),
        ("token", "t0ken-t0ken-t0ken"),
        ("api_key", "k3y-k3y-k3y"),
    ] {
        let sandbox = Sandbox::new();
        sandbox
            .set_first_webhook(&FIRST_WEBHOOK.replace(" }", &format!(", {key} = \"{value}\" }}")));
        let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
        assert_eq!(run.code, 2, "{key}: {run:?}");
        let error = error_line(
            &run,
            &[
                &format!("line {}, ", line_of(&sandbox, value)),
                &format!("[[recipient]] police:WYP-LEEDS, key webhook.{key}"),
                "cannot be written in routes.toml",
                "environment variable",
                "secret_env",
            ],
        );
        assert!(error.contains("(the value is not shown)"), "{error}");
        assert_not_shown(&run, value);
    }

    // A signing secret anywhere else in the file is refused the same way.
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| t.replacen("from = \"Herald <", &format!("from = \"{secret} <"), 1));
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    error_line(&run, &["key email.from", "this is a signing secret"]);
    assert_not_shown(&run, secret);
}

#[test]
fn check_reports_broken_toml_by_line_and_key_without_quoting_the_secret_beside_it() {
    let secret = "whsec_YnJva2VuLWxpbmUtbmV4dC10by1hLXNlY3JldA==";
    // The `=` is missing: toml's own message would quote this whole line.
    let sandbox = Sandbox::new();
    sandbox.set_first_webhook(&FIRST_WEBHOOK.replace(" }", &format!(", secret \"{secret}\" }}")));
    let line = line_of(&sandbox, secret);
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    let syntax = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error:") && l.contains(&format!("line {line}, column ")))
        .unwrap_or_else(|| panic!("no error names line {line}: {run:?}"));
    assert!(syntax.contains(&sandbox.config_arg()), "{syntax}");
    assert_not_shown(&run, secret);
    assert!(
        !run.stderr.contains(" | "),
        "no source line is quoted: {run:?}"
    );

    // A value of the wrong type is named by its key, its text masked.
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| t.replacen("prefetch = 100", "prefetch = \"p4ssw0rd-p4ssw0rd\"", 1));
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    error_line(
        &run,
        &[
            &format!("line {}, ", line_of(&sandbox, "p4ssw0rd")),
            "key amqp.prefetch",
            "invalid type",
        ],
    );
    assert_not_shown(&run, "p4ssw0rd-p4ssw0rd");
}

#[test]
fn check_reads_each_signing_secret_as_serve_does_and_says_what_is_wrong_without_it() {
    use base64::Engine;
    let sandbox = Sandbox::new();
    let of = |n: usize| {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(vec![b'k'; n])
        )
    };
    for (bytes, why) in [(16, "this one is 16 bytes"), (65, "this one is 65 bytes")] {
        let secret = of(bytes);
        let run = sandbox.check_with(&[(SECRET_ENV, &secret)]);
        assert_eq!(run.code, 1, "{bytes} bytes: {run:?}");
        let error = error_line(
            &run,
            &[SECRET_ENV, "police:WYP-LEEDS", "24 to 64 bytes", why],
        );
        assert!(error.contains("cannot be used"), "{error}");
        assert_not_shown(&run, &secret);
    }
    for (bad, why) in [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with whsec_"),
        ("whsec_not*base64*at*all*but*long*enough", "not base64"),
    ] {
        let run = sandbox.check_with(&[(SECRET_ENV, bad)]);
        assert_eq!(run.code, 1, "{bad}: {run:?}");
        error_line(&run, &[SECRET_ENV, why]);
        assert_not_shown(&run, bad);
    }
    // Unset: serve still runs and parks those webhooks, so it is a warning.
    let run = sandbox.check_with(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains(SECRET_ENV))
        .unwrap_or_else(|| panic!("no warning for the unset secret: {run:?}"));
    assert!(
        warning.contains("is not set") && warning.contains("parks"),
        "{warning}"
    );
    // Set and valid: nothing to say about it.
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.both().contains(SECRET_ENV), "{run:?}");
    assert_not_shown(&run, SECRET);
}

#[test]
fn check_refuses_a_webhook_url_with_a_credential_in_its_query_without_printing_it() {
    for (param, value) in [
        ("token", "t0k3n-value"),
        ("API_KEY", "k3y-value"),
        ("sig", "s1g-value"),
    ] {
        let sandbox = Sandbox::new();
        sandbox.set_first_webhook(&FIRST_WEBHOOK.replace(
            "/police/WYP-LEEDS\"",
            &format!("/police/WYP-LEEDS?region=north&{param}={value}\""),
        ));
        let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
        assert_eq!(run.code, 2, "{param}: {run:?}");
        let error = error_line(
            &run,
            &[
                "recipient police:WYP-LEEDS",
                "credential in its query",
                param,
            ],
        );
        assert!(error.contains("signature"), "{error}");
        assert_not_shown(&run, value);
    }
}

#[test]
fn no_command_prints_the_broker_password_whatever_form_the_url_takes() {
    let password = "br0ker-pa55word";
    for url in [
        format!("amqp://guest:{password}@127.0.0.1:1/%2f"),
        // No host part: lapin's own message quotes the whole URL.
        format!("amqp:guest:{password}@127.0.0.1"),
        format!("amqp://guest:{password}@[::1:1/"),
    ] {
        let env = [
            ("HERALD_AMQP_URL", url.as_str()),
            ("HERALD_METRICS_ADDR", "127.0.0.1:0"),
            ("HERALD_CONSOLE_ADDR", "127.0.0.1:0"),
        ];
        for args in [
            &["dlq", "list", "failed"][..],
            &["publish", WARRANT],
            &["serve"],
        ] {
            let run = herald_with(args, &env);
            assert_eq!(run.code, 1, "{url} {args:?}: {run:?}");
            assert!(run.stderr.contains("error:"), "{url} {args:?}: {run:?}");
            assert!(!run.both().contains(password), "{url} {args:?}: {run:?}");
        }
        let run = herald_with(&["config", "show"], &env);
        assert_eq!(run.code, 0, "{url}: {run:?}");
        assert!(!run.both().contains(password), "{url}: {run:?}");
    }
}

// ---------------------------------------------------------------------------------------
// herald config show

#[test]
fn config_show_prints_the_effective_configuration_with_every_secret_masked() {
    let broker_password = "c0urt-pa55";
    let broker = format!("amqp://court:{broker_password}@broker.example.gov.uk:5671/%2f");
    let run = herald_with(
        &["config", "show"],
        &[(SECRET_ENV, SECRET), ("HERALD_AMQP_URL", &broker)],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_not_shown(&run, SECRET);
    assert!(!run.both().contains(broker_password), "{run:?}");
    let shown = &run.stdout;
    assert!(
        shown.contains(&format!(
            "secret_env = \"{SECRET_ENV}\"  # {SECRET_ENV} is set: ***"
        )),
        "{run:?}"
    );
    assert!(
        shown.contains("overrides applied: HERALD_AMQP_URL (amqp.url)"),
        "{run:?}"
    );

    // It is TOML: the settings as Herald reads them.
    let doc: toml::Table = shown.parse().unwrap_or_else(|e| panic!("{e}: {run:?}"));
    assert_eq!(
        doc["amqp"]["url"].as_str(),
        Some("amqp://court:***@broker.example.gov.uk:5671/%2f")
    );
    // A default the file does not set.
    let file = std::fs::read_to_string(root().join("routes.toml")).unwrap();
    assert!(!file.contains("dedup_window"), "routes.toml sets it now");
    assert_eq!(doc["service"]["dedup_window"].as_str(), Some("10m"));
    // ${HERALD_RECEIVER_URL} as Herald fills it in.
    assert!(
        !shown
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("${")),
        "{run:?}"
    );
    let leeds = doc["recipient"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_str() == Some("police:WYP-LEEDS"))
        .unwrap();
    assert_eq!(
        leeds["webhook"]["url"].as_str(),
        Some("http://127.0.0.1:9900/police/WYP-LEEDS")
    );

    // Without the variable, the line says so.
    let run = herald(&["config", "show"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "# {SECRET_ENV} is not set: serve parks this endpoint's webhooks until it is"
        )),
        "{run:?}"
    );
}

#[test]
fn config_show_of_a_file_that_does_not_load_lists_its_problems() {
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| t.replacen("prefetch = 100", "prefetch = \"many\"", 1));
    let run = herald(&["config", "show", "--config", &sandbox.config_arg()]);
    assert_eq!(run.code, 2, "{run:?}");
    error_line(&run, &["prefetch"]);
    assert!(run.stdout.is_empty(), "{run:?}");
}

// ---------------------------------------------------------------------------------------
// herald validate

#[test]
fn validate_passes_every_valid_example_with_one_ok_line_each() {
    let files: Vec<String> = names_in("schemas/examples/valid")
        .iter()
        .map(|n| format!("schemas/examples/valid/{n}"))
        .collect();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let run = herald(&args);
    assert_eq!(run.code, 0, "{run:?}");
    let ok: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("ok")).collect();
    assert_eq!(ok.len(), files.len(), "{run:?}");
    for file in &files {
        assert!(
            ok.iter().any(|l| l.contains(file.as_str())),
            "no ok line for {file}: {run:?}"
        );
    }
    assert!(!run.stdout.contains("FAIL"), "{run:?}");
}

#[test]
fn validate_explains_an_invalid_example_with_its_reason_and_pointer() {
    let run = herald(&["validate", HDC_NO_DATE]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("FAIL"), "{run:?}");
    assert!(run.stdout.contains("schema-violation"), "{run:?}");
    assert!(
        run.stdout.contains("/additionalInformation/releaseDate"),
        "{run:?}"
    );
}

#[test]
fn validate_fails_if_any_file_fails() {
    let run = herald(&["validate", WARRANT, HDC_NO_DATE]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("ok")).count(),
        1,
        "{run:?}"
    );
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{run:?}"
    );
}

#[test]
fn validate_json_gives_reason_and_pointers() {
    let run = herald(&["validate", "--json", HDC_NO_DATE]);
    assert_eq!(run.code, 1, "{run:?}");
    let results = run.json();
    let results = results.as_array().expect("a JSON array");
    assert_eq!(results.len(), 1, "{run:?}");
    let r = &results[0];
    assert_eq!(r["valid"], false, "{r}");
    assert_eq!(r["reason"], "schema-violation", "{r}");
    let pointers: Vec<&str> = r["violations"]
        .as_array()
        .expect("violations is an array")
        .iter()
        .map(|v| v["pointer"].as_str().expect("each violation has a pointer"))
        .collect();
    assert_eq!(pointers, ["/additionalInformation/releaseDate"], "{r}");
}

#[derive(serde::Deserialize)]
struct Expected {
    reason: String,
    pointer: String,
}

#[test]
fn validate_json_rejects_every_invalid_example_for_its_documented_rule() {
    let text =
        std::fs::read_to_string(root().join("schemas/examples/invalid/expected.toml")).unwrap();
    let expected: BTreeMap<String, Expected> = toml::from_str(&text).unwrap();
    let names = names_in("schemas/examples/invalid");
    let files: Vec<String> = names
        .iter()
        .map(|n| format!("schemas/examples/invalid/{n}"))
        .collect();
    let mut args = vec!["validate", "--json"];
    args.extend(files.iter().map(String::as_str));
    let run = herald(&args);
    assert_eq!(run.code, 1, "{run:?}");
    let results = run.json();
    let results = results.as_array().expect("a JSON array");
    assert_eq!(results.len(), files.len());
    for (name, r) in names.iter().zip(results) {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in expected.toml"));
        assert!(r["file"].as_str().unwrap().ends_with(name.as_str()), "{r}");
        assert_eq!(r["valid"], false, "{name}: {r}");
        assert_eq!(r["reason"], want.reason.as_str(), "{name}: {r}");
        if want.reason != "malformed-json" {
            let pointers: Vec<&str> = r["violations"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["pointer"].as_str())
                .collect();
            assert!(
                pointers.contains(&want.pointer.as_str()),
                "{name}: expected {}: {r}",
                want.pointer
            );
        }
    }
}

#[test]
fn validate_reports_a_missing_file_instead_of_crashing() {
    let run = herald(&["validate", "schemas/examples/valid/no-such-event.json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("no-such-event.json"), "{run:?}");
    assert!(run.stdout.contains("unreadable"), "{run:?}");

    let run = herald(&[
        "validate",
        "--json",
        WARRANT,
        "schemas/examples/valid/no-such-event.json",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let results = run.json();
    assert_eq!(results[0]["valid"], true, "{run:?}");
    assert_eq!(results[1]["valid"], false, "{run:?}");
    assert_eq!(results[1]["reason"], "unreadable", "{run:?}");
}

// ---------------------------------------------------------------------------------------
// herald route-test

fn route_test_json(extra: &[&str]) -> Value {
    let mut args = vec!["route-test", WARRANT, "--json"];
    args.extend_from_slice(extra);
    let run = herald(&args);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()
}

fn notifications(doc: &Value) -> &Vec<Value> {
    doc["notifications"]
        .as_array()
        .expect("notifications is an array")
}

/// Idempotency key by (recipient, channel).
fn keys(doc: &Value) -> BTreeMap<(String, String), String> {
    notifications(doc)
        .iter()
        .map(|n| {
            (
                (
                    n["recipient"].as_str().unwrap().to_owned(),
                    n["channel"].as_str().unwrap().to_owned(),
                ),
                n["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

#[test]
fn route_test_json_shows_who_is_told_how_and_by_when() {
    let doc = route_test_json(&[]);
    assert_eq!(doc["matchedRoutes"], serde_json::json!(["ppo-fta-warrant"]));
    assert_eq!(doc["problems"], serde_json::json!([]), "{doc:#}");
    let targets: BTreeSet<(String, String)> = keys(&doc).into_keys().collect();
    let want: BTreeSet<(String, String)> = [
        ("police:WYP-LEEDS".to_owned(), "email".to_owned()),
        ("police:WYP-LEEDS".to_owned(), "webhook".to_owned()),
    ]
    .into();
    assert_eq!(targets, want, "{doc:#}");

    // Friday 20 November 2026 15:42Z, within 1 working day: Monday at the same time.
    let due = instant("2026-11-23T15:42:00+00:00");
    for n in notifications(&doc) {
        assert_eq!(n["sla"]["kind"], "due", "{n:#}");
        assert_eq!(instant(n["sla"]["due"].as_str().unwrap()), due, "{n:#}");
        assert_eq!(n["sla"]["shortNotice"], false, "{n:#}");
        assert_eq!(n["priority"], "urgent", "{n:#}");
        assert!(
            n["marks"].as_array().unwrap().contains(&"CAT A".into()),
            "{n:#}"
        );
        assert!(n["key"].as_str().unwrap().starts_with("msg_"), "{n:#}");
        let content = n["content"].as_object().unwrap();
        assert!(
            !content.contains_key("subject") && !content.contains_key("body"),
            "content is shown only with --render: {n:#}"
        );
    }
}

#[test]
fn route_test_render_shows_the_marked_subject_and_the_webhook_body() {
    let doc = route_test_json(&["--render"]);
    let list = notifications(&doc);
    let email = list
        .iter()
        .find(|n| n["channel"] == "email")
        .expect("an email");
    let subject = email["content"]["subject"].as_str().expect("a subject");
    assert!(subject.starts_with("[CAT A] "), "{subject:?}");
    assert!(!subject.contains('\n'), "{subject:?}");
    assert!(
        email["content"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{email:#}"
    );
    assert!(
        email["content"]["html"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{email:#}"
    );

    let webhook = list
        .iter()
        .find(|n| n["channel"] == "webhook")
        .expect("a webhook");
    let body = &webhook["content"]["body"];
    assert_eq!(body["type"], "court.warrant.issued", "{webhook:#}");
    assert_eq!(
        body["data"]["notification"]["id"], webhook["key"],
        "the payload carries the idempotency key: {webhook:#}"
    );
}

#[test]
fn route_test_human_output_names_route_recipient_and_deadline() {
    let run = herald(&["route-test", WARRANT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("route ppo-fta-warrant"), "{run:?}");
    assert!(run.stdout.contains("police:WYP-LEEDS"), "{run:?}");
    let deadline = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("deadline"))
        .unwrap_or_else(|| panic!("no deadline line: {run:?}"));
    assert!(
        deadline.contains("Monday 23 November 2026, 15:42"),
        "{deadline}"
    );
    assert!(deadline.contains("within 1 working day"), "{deadline}");
    assert!(run.stdout.contains("CAT A"), "{run:?}");
    assert!(
        !run.stdout.contains("Subject:"),
        "nothing rendered without --render: {run:?}"
    );
}

#[test]
fn route_test_message_id_sets_every_idempotency_key() {
    let default = keys(&route_test_json(&[]));
    let x = route_test_json(&["--message-id", "X"]);
    assert_eq!(x["event"]["id"], "X");
    let x = keys(&x);
    let x_again = keys(&route_test_json(&["--message-id", "X"]));
    let y = keys(&route_test_json(&["--message-id", "Y"]));

    assert_eq!(x.len(), 2);
    assert_eq!(x, x_again, "the same message id gives the same keys");
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        default.keys().collect::<Vec<_>>()
    );
    for (target, key) in &x {
        assert_ne!(
            key, &default[target],
            "{target:?}: key unchanged by --message-id"
        );
        assert_ne!(key, &y[target], "{target:?}: X and Y give the same key");
    }
    // Without --message-id the id comes from the file's bytes, so it is stable too.
    assert_eq!(default, keys(&route_test_json(&[])));
}

#[test]
fn route_test_says_rejected_with_the_reason_for_an_invalid_event() {
    let run = herald(&["route-test", HDC_NO_DATE]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("REJECTED"), "{run:?}");
    assert!(run.stdout.contains("schema-violation"), "{run:?}");
    assert!(
        run.stdout.contains("/additionalInformation/releaseDate"),
        "{run:?}"
    );

    let run = herald(&["route-test", HDC_NO_DATE, "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["rejected"]["reason"], "schema-violation", "{doc:#}");
    assert_eq!(
        doc["rejected"]["violations"][0]["pointer"], "/additionalInformation/releaseDate",
        "{doc:#}"
    );
}

#[test]
fn route_test_reports_a_missing_file_instead_of_crashing() {
    let run = herald(&["route-test", "schemas/examples/valid/no-such-event.json"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no-such-event.json"), "{run:?}");
}

#[test]
fn authority_list_refuses_what_is_not_a_person_or_a_representative() {
    let ledger = TempDir::new().unwrap();
    let url = format!("sqlite://{}", ledger.path().join("none.sqlite").display());
    let env = [("HERALD_LEDGER_URL", url.as_str())];
    for (args, says) in [
        (
            &["authority", "list", "--person", "A1234BC"][..],
            "--person takes a NOMS number as NOMS:A1234BC",
        ),
        (
            &["authority", "list", "--representative", "police:WYP-LEEDS"][..],
            "police:WYP-LEEDS is not a legal representative in the directory",
        ),
        (
            &[
                "authority",
                "list",
                "--person",
                "NOMS:A1234BC",
                "--at",
                "last week",
            ][..],
            "--at",
        ),
        (&["authority", "list"][..], "--person"),
    ] {
        let run = herald_with(args, &env);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?}: {run:?}");
    }
    // A ledger that does not exist is not made by a reader.
    let run = herald_with(&["authority", "list", "--person", "NOMS:A1234BC"], &env);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!ledger.path().join("none.sqlite").exists());
}

#[test]
fn a_subscription_routes_toml_gets_wrong_is_refused_with_every_reason() {
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| {
        t + r#"
[[subscription]]
name = "broken"
report = "in-jail"
scope = ["court-listing:LEEDSMC", "police:NOWHERE"]
to = ["judiciary:PAROLE-BOARD", "legal-rep:SMITH-AND-CO"]
channel = "webhook"
schedule = "Mondays at 7"
template = "no-such-template"
due_within = "30d"
"#
    });
    let run = sandbox.check();
    assert_eq!(run.code, 2, "{run:?}");
    for says in [
        "subscription broken: report: \"in-jail\" is not a report",
        "subscription broken: scope: court-listing:LEEDSMC is neither a police BCU nor a probation PDU",
        "subscription broken: scope: police:NOWHERE is not in the directory",
        "subscription broken: channel: \"webhook\": digests go by email only",
        "subscription broken: to: judiciary:PAROLE-BOARD: its class may not see offender.ppo",
        "subscription broken: to: legal-rep:SMITH-AND-CO: digests go to police and probation recipients only",
        "subscription broken: due_within: at most a week (7d)",
        "subscription broken: schedule \"Mondays at 7\" is not a day and a time",
        "subscription broken: template: \"no-such-template\" has no folder",
    ] {
        assert!(run.stderr.contains(says), "{says:?} missing: {run:?}");
    }
}

#[test]
fn check_renders_each_subscription_template() {
    let sandbox = Sandbox::new();
    sandbox.edit_template("digest/text.hbs", |t| {
        t.replace("{{reference}}", "{{referance}}")
    });
    let run = sandbox.check();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.both()
            .contains("subscription jtrack-leeds-in-prison: template digest for police:WYP-LEEDS"),
        "{run:?}"
    );
}

#[test]
fn check_names_a_bad_rate_and_warns_when_a_limit_cannot_send_a_routes_volume_in_time() {
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| {
        t.replacen(
            "connections = 16",
            "connections = 16\nrate = \"10/fortnight\"",
            1,
        )
    });
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 2, "{run:?}");
    error_line(
        &run,
        &["key email.rate", "`fortnight` is not a unit of a rate"],
    );

    // A sound limit, and a route expected to bring it more than it sends within the route's
    // deadline: sound, with a warning.
    let sandbox = Sandbox::new();
    sandbox
        .edit_config(|t| t.replacen("connections = 16", "connections = 16\nrate = \"1/min\"", 1));
    sandbox.set_route(
        "ppo-received-into-custody",
        "volume",
        toml::Value::String("100/day".into()),
    );
    let run = sandbox.check_with(&[(SECRET_ENV, SECRET)]);
    assert_eq!(run.code, 0, "{run:?}");
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains("rate limit"))
        .unwrap_or_else(|| panic!("a warning about the rate limit: {run:?}"));
    assert!(
        warning.contains(
            "route ppo-received-into-custody: at the rate limit of the email relay (1/min), the 100 notifications its volume (100/day) can bring at once take 99m to send, longer than its SLA (within 1h)"
        ),
        "{warning}"
    );
}

#[test]
fn asyncapi_prints_the_checked_in_document_from_the_configuration_it_is_given() {
    let run = herald(&["asyncapi"]);
    assert_eq!(run.code, 0, "{run:?}");
    let checked_in = std::fs::read_to_string(root().join("docs/asyncapi.json")).unwrap();
    assert!(
        run.stdout == checked_in,
        "herald asyncapi does not print docs/asyncapi.json: run `cargo run -- asyncapi > docs/asyncapi.json`"
    );

    // The exchange is routes.toml's.
    let sandbox = Sandbox::new();
    sandbox.edit_config(|t| {
        t.replacen(
            "exchange = \"herald.events\"",
            "exchange = \"agency.events\"",
            1,
        )
    });
    let run = herald(&["asyncapi", "--config", &sandbox.config_arg()]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(
        doc["channels"]["court.warrant.issued"]["bindings"]["amqp"]["exchange"]["name"],
        "agency.events"
    );

    // A schema draft-07 cannot say is refused by name, not published to mean something else.
    let sandbox = Sandbox::new();
    let file = sandbox
        .dir
        .path()
        .join("schemas/events/court.warrant.issued.v1.schema.json");
    let mut schema: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    schema["unevaluatedProperties"] = false.into();
    std::fs::write(&file, serde_json::to_vec_pretty(&schema).unwrap()).unwrap();
    let run = herald(&["asyncapi", "--config", &sandbox.config_arg()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "error: events/court.warrant.issued.v1.schema.json: `unevaluatedProperties` has no \
         equivalent in JSON Schema draft-07, which AsyncAPI tools read",
        "{run:?}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

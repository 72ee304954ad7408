//! `herald config show`: the configuration as Herald reads it, in TOML. Every default is
//! filled in, `${HERALD_RECEIVER_URL}` is replaced in webhook urls, paths are resolved against
//! the file's folder and `HERALD_AMQP_URLS`, `HERALD_AMQP_URL`, `HERALD_SMTP_URL` and `HERALD_METRICS_ADDR`
//! override their settings, as `serve` applies them. Nothing secret is printed: every URL (the
//! broker's, the SMTP server's, each webhook's) goes through [`crate::mask::url`], which shows
//! a password and the values of query parameters named like secrets as `***`, and each
//! webhook's signing-secret variable is said to be set (`***`) or not, never its value.
//! routes.toml itself cannot hold a signing secret or a secret-named webhook key: loading it
//! refuses them.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::deliver::webhook::Secret;
use crate::mask::MASK;

/// The variables that override a setting of routes.toml, as `Settings::new` applies them.
const OVERRIDES: [(&str, &str); 5] = [
    ("HERALD_AMQP_URLS", "amqp.urls"),
    ("HERALD_AMQP_URL", "amqp.url"),
    ("HERALD_SMTP_URL", "email.url"),
    ("HERALD_METRICS_ADDR", "service.metrics_addr"),
    ("HERALD_CONSOLE_ADDR", "service.console_addr"),
];

pub fn run(path: &Path, config: Config, env: impl Fn(&str) -> Option<String>) -> ExitCode {
    match show(path, config, &env) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The text `config show` prints for `config`, read from `path`, with the environment read
/// through `env`.
// String error: one line for the operator, printed before exit status 1.
pub fn show(
    path: &Path,
    mut config: Config,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut applied = Vec::new();
    for (variable, setting) in OVERRIDES {
        let Some(value) = env(variable) else { continue };
        match setting {
            "amqp.urls" => config.amqp.urls = config.amqp.node_urls(env),
            // The list, when set, wins over the single URL.
            "amqp.url" if env("HERALD_AMQP_URLS").is_some() => continue,
            "amqp.url" => {
                config.amqp.url = value;
                config.amqp.urls.clear();
            }
            "email.url" => config.email.url = Some(value),
            "service.console_addr" => config.service.console_addr = value,
            _ => config.service.metrics_addr = value,
        }
        applied.push(format!("{variable} ({setting})"));
    }
    mask(&mut config);
    let body = toml::to_string(&config)
        .map_err(|e| format!("the configuration cannot be written as TOML: {e}"))?;

    let overridden = match applied.is_empty() {
        true => "none set".to_owned(),
        false => applied.join(", "),
    };
    let mut out = format!(
        "# The configuration Herald reads from {}: every default filled in (an optional \
         setting\n\
         # that is unset is left out), ${{HERALD_RECEIVER_URL}} replaced in webhook urls, \
         paths\n\
         # resolved against the file's folder, and the environment's overrides applied: \
         {overridden}.\n\
         # Secrets are shown as {MASK}; each signing secret's variable is said to be set or \
         not.\n\n",
        path.display()
    );
    for line in body.lines() {
        out.push_str(line);
        if let Some(note) = secret_note(line, env) {
            out.push_str("  # ");
            out.push_str(&note);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Every URL shown as [`crate::mask::url`] shows it: the only settings that may carry a
/// secret (a password, a token in the query).
fn mask(config: &mut Config) {
    config.amqp.url = crate::mask::url(&config.amqp.url);
    for url in &mut config.amqp.urls {
        *url = crate::mask::url(url);
    }
    if let Some(url) = &mut config.email.url {
        *url = crate::mask::url(url);
    }
    for webhook in config
        .recipients
        .iter_mut()
        .filter_map(|r| r.webhook.as_mut())
    {
        webhook.url = crate::mask::url(&webhook.url);
    }
}

/// For a webhook's `secret_env = "NAME"` or `previous_secret_env = "NAME"` line: whether the
/// variable is set, and a valid secret, as `serve` reads it. Never the value.
fn secret_note(line: &str, env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let (key, _) = line.split_once(" = ")?;
    let current = match key {
        "secret_env" => true,
        "previous_secret_env" => false,
        _ => return None,
    };
    let parsed: toml::Table = toml::from_str(line).ok()?;
    let name = parsed.get(key)?.as_str()?;
    Some(match env(name) {
        Some(value) => match Secret::parse(&value) {
            Ok(_) => format!("{name} is set: {MASK}"),
            Err(_) => format!(
                "{name} is set: {MASK}, but not a valid signing secret (herald check says why)"
            ),
        },
        None if current => {
            format!("{name} is not set: serve parks this endpoint's webhooks until it is")
        }
        None => format!("{name} is not set: only the current secret signs"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn shown(text: &str, env: &[(&str, &str)]) -> String {
        let config = Config::parse(text).unwrap();
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        show(Path::new("routes.toml"), config, &lookup).unwrap()
    }

    #[test]
    fn the_shown_configuration_reads_back_as_the_same_settings() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::config::DEFAULT_CONFIG),
        )
        .unwrap();
        let out = shown(&text, &[("HERALD_WEBHOOK_SECRET", SECRET)]);
        let again = Config::parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let first = Config::parse(&text).unwrap();
        assert_eq!(again.routes.len(), first.routes.len());
        assert_eq!(again.recipients.len(), first.recipients.len());
        assert_eq!(again.retry.schedule, first.retry.schedule);
        assert_eq!(again.retry.max_age, first.retry.max_age);
        assert_eq!(again.service.dedup_window, first.service.dedup_window);
        assert_eq!(again.limits.max_event_bytes, first.limits.max_event_bytes);
        assert_eq!(again.webhook.timeout, first.webhook.timeout);
        assert_eq!(
            again.routes.iter().filter(|r| r.continue_matching).count(),
            first.routes.iter().filter(|r| r.continue_matching).count()
        );
        // guest's password in the default URL is masked.
        assert_eq!(again.amqp.url, "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!out.contains(SECRET), "{out}");
    }

    #[test]
    fn overrides_and_signing_secrets_are_shown_without_their_secrets() {
        let text = r#"
[[recipient]]
id = "police:WYP-LEEDS"
class = "police"
name = "Leeds"
webhook = { url = "https://hooks.example.gov.uk/leeds", secret_env = "HOOK_NOW", previous_secret_env = "HOOK_OLD" }
"#;
        let out = shown(
            text,
            &[
                ("HOOK_NOW", SECRET),
                (
                    "HERALD_SMTP_URL",
                    "smtps://relay:s3cret@mail.example.gov.uk:465",
                ),
                ("HERALD_METRICS_ADDR", "127.0.0.1:19464"),
            ],
        );
        assert!(
            out.contains("secret_env = \"HOOK_NOW\"  # HOOK_NOW is set: ***"),
            "{out}"
        );
        assert!(
            out.contains("# HOOK_OLD is not set: only the current secret signs"),
            "{out}"
        );
        assert!(
            out.contains("url = \"smtps://relay:***@mail.example.gov.uk:465\""),
            "{out}"
        );
        assert!(out.contains("metrics_addr = \"127.0.0.1:19464\""), "{out}");
        assert!(
            out.contains("HERALD_SMTP_URL (email.url), HERALD_METRICS_ADDR"),
            "{out}"
        );
        assert!(!out.contains("s3cret") && !out.contains(SECRET), "{out}");
    }
}

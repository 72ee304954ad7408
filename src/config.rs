//! routes.toml: the one file an operator reads to know who is told what.
//!
//! This module only parses the file into plain types; turning them into a working
//! engine (compiling matchers, resolving templates, checking names) happens in
//! [`crate::core::Core::load`], which reports every problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default location of the configuration, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "routes.toml";

/// The whole of routes.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where schemas and templates live, relative to the config file.
    #[serde(default)]
    pub paths: Paths,
    /// Broker connection and topology.
    #[serde(default)]
    pub amqp: Amqp,
    /// Sender details and transport for the email channel.
    #[serde(default)]
    pub email: Email,
    /// Webhook channel settings.
    #[serde(default)]
    pub webhook: WebhookSettings,
    /// The service's own endpoints and shutdown.
    #[serde(default)]
    pub service: ServiceSettings,
    /// When failed deliveries are tried again.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Limits applied to incoming events before they are trusted.
    #[serde(default)]
    pub limits: Limits,
    /// The working-day calendar.
    #[serde(default)]
    pub calendar: CalendarConfig,
    /// RabbitMQ login -> event type patterns that login may publish (`prison.*`).
    #[serde(default)]
    pub publishers: BTreeMap<String, Vec<String>>,
    /// Fields only some classes of recipient may see.
    #[serde(default)]
    pub sensitive: Vec<SensitiveRule>,
    /// Who receives the publisher's free text that no rule can inspect.
    #[serde(default)]
    pub free_text: FreeText,
    /// The directory of recipients.
    #[serde(default, rename = "recipient")]
    pub recipients: Vec<RecipientConfig>,
    /// Routing rules, tried in order.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// Locations of the other files Herald reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Folder of JSON Schemas (`envelope.schema.json`, `common.schema.json`, `events/*.json`).
    pub schemas: PathBuf,
    /// Folder of templates, one sub-folder per template.
    pub templates: PathBuf,
    /// Folder of valid example events that `herald check` renders every template against.
    pub examples: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            schemas: "schemas".into(),
            templates: "templates".into(),
            examples: "schemas/examples/valid".into(),
        }
    }
}

/// Broker settings; `HERALD_AMQP_URL` overrides the URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    pub url: String,
    /// Topic exchange agencies publish to, routing key = eventType.
    pub exchange: String,
    /// Quorum queue Herald consumes.
    pub queue: String,
    /// Where refused events are parked, with their reason.
    pub rejected_queue: String,
    /// Where notifications that cannot be delivered are parked, with their reason.
    pub failed_queue: String,
    /// Unacknowledged events in flight at once.
    pub prefetch: u16,
    /// Deliveries of one event before the broker parks it in the rejected queue as poison.
    pub delivery_limit: u16,
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "herald.events".into(),
            queue: "herald.events".into(),
            rejected_queue: "herald.rejected".into(),
            failed_queue: "herald.failed".into(),
            prefetch: 100,
            delivery_limit: 10,
        }
    }
}

/// Email channel settings; `HERALD_SMTP_URL` overrides the URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Email {
    /// The From header, `Name <address>`.
    pub from: String,
    /// SMTP URL in lettre's form; unset means `.eml` files in `outbox`.
    pub url: Option<String>,
    /// Folder for `.eml` files when no SMTP URL is configured.
    pub outbox: PathBuf,
    /// Most SMTP connections open at once to the relay: each carries one message at a time.
    pub connections: u32,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            from: "Herald <herald@notify.example.gov.uk>".into(),
            url: None,
            outbox: "outbox".into(),
            connections: 16,
        }
    }
}

/// Webhook delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Time allowed for one request, e.g. `"15s"`.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// Requests in flight to one endpoint (a recipient on a channel) at once. Each holds its
    /// slot until the recipient answers, so this bounds both the load on a recipient and the
    /// rate one endpoint can take (docs/performance.md).
    pub concurrency_per_endpoint: usize,
    /// Consecutive transient failures after which an endpoint is left alone for `circuit_open_for`.
    pub circuit_failures: u32,
    #[serde(with = "humantime_serde")]
    pub circuit_open_for: std::time::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: std::time::Duration::from_secs(15),
            concurrency_per_endpoint: 16,
            circuit_failures: 5,
            circuit_open_for: std::time::Duration::from_secs(30),
        }
    }
}

/// The retry schedule for notifications that fail transiently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Waits before each retry, e.g. `["5s", "5m", "30m"]`; one delay queue per distinct wait.
    #[serde(deserialize_with = "durations")]
    pub schedule: Vec<std::time::Duration>,
    /// After this long since the first failure a notification is parked, whatever is left of
    /// the schedule.
    #[serde(with = "humantime_serde")]
    pub max_age: std::time::Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let h = |n: u64| std::time::Duration::from_secs(n * 3600);
        RetrySettings {
            schedule: vec![
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5 * 60),
                std::time::Duration::from_secs(30 * 60),
                h(2),
                h(5),
                h(10),
                h(10),
            ],
            max_age: h(48),
        }
    }
}

/// The service's HTTP endpoints and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`; `HERALD_METRICS_ADDR` overrides.
    pub metrics_addr: String,
    /// How long a shutdown waits for events in flight, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub drain: std::time::Duration,
    /// An event id handled within this long is not routed again by the same process.
    #[serde(with = "humantime_serde")]
    pub dedup_window: std::time::Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            metrics_addr: "127.0.0.1:9464".into(),
            drain: std::time::Duration::from_secs(30),
            dedup_window: std::time::Duration::from_secs(600),
        }
    }
}

/// Limits on incoming events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted body, e.g. `"256 KiB"`.
    pub max_event_bytes: bytesize::ByteSize,
    /// Deepest accepted nesting of JSON arrays and objects.
    pub max_depth: usize,
    /// Largest accepted AMQP headers table, e.g. `"16 KiB"`. Bounded so a refused message,
    /// copied to the rejected queue with Herald's reason added, always fits in one frame.
    pub max_header_bytes: bytesize::ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: bytesize::ByteSize::kib(256),
            max_depth: 32,
            max_header_bytes: bytesize::ByteSize::kib(16),
        }
    }
}

/// Working-day calendar settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// A bank-holiday file in the GOV.UK `bank-holidays.json` format; unset means the
    /// England and Wales list built into Herald (2020 to 2030).
    pub bank_holidays: Option<PathBuf>,
}

/// A field that only some recipient classes may receive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveRule {
    /// Dotted paths inside `additionalInformation`.
    pub fields: Vec<String>,
    /// Only these classes receive the fields (everyone else has them removed).
    pub only: Option<Vec<String>>,
    /// These classes never receive the fields.
    pub never: Option<Vec<String>>,
    /// Why, for the person reading the file and for `herald route-test`.
    pub why: Option<String>,
}

/// The envelope's free text (`description`): it can say anything, so routes.toml says which
/// classes of recipient receive it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeText {
    /// Classes that receive the envelope's `description`. Unset: every class from which no
    /// `[[sensitive]]` rule withholds a field.
    pub description: Option<Vec<String>>,
}

/// One entry of the recipient directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientConfig {
    /// `<class>:<code>`, e.g. `police:WYP-LEEDS`.
    pub id: String,
    pub class: String,
    /// Display name used in greetings and logs.
    pub name: String,
    #[serde(default)]
    pub email: Vec<String>,
    pub webhook: Option<WebhookConfig>,
    /// People this recipient has shown authority to act for, as `TYPE:value`
    /// identifiers (`NOMS:A1234BC`). Required for legal representatives.
    #[serde(default)]
    pub acts_for: Vec<String>,
}

/// A recipient's webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Name of the environment variable holding the `whsec_` signing secret.
    pub secret_env: String,
    /// During a rotation, the variable holding the previous secret; both signatures are sent.
    pub previous_secret_env: Option<String>,
}

/// One routing rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique, used in logs, metrics and idempotency keys.
    pub name: String,
    /// Event types this route applies to.
    pub events: Vec<String>,
    /// `path = "value"`, `path != "value"`, `path =~ "regex"`, `path !~ "regex"`.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Recipient ids, `<class>:{field.path}` patterns or `<class>:*`.
    pub to: Vec<String>,
    /// Channels this route may use; each recipient gets those it has.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    pub template: String,
    /// Deadline, e.g. `within 24h`, `within 1 working day`, `on the day of releasedAt`,
    /// `28d notice before releaseDate`, `before leavesAt`. Unset: untracked.
    pub sla: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    /// Marking shown in brackets at the start of the subject and in the payload, e.g. `CAT A`.
    pub mark: Option<String>,
    /// Keep trying later routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

/// A list of durations written as text (`"5m"`).
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::time::Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<std::time::Duration>> = Deserialize::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

fn default_channels() -> Vec<String> {
    vec!["email".into(), "webhook".into()]
}

/// Failure to read or parse routes.toml.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads and parses the file; paths inside it are resolved against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_in(&text, path.parent().unwrap_or(Path::new(""))).map_err(|message| {
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// Parses TOML text as if it were a file in `base`: its paths are resolved against `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, String> {
        let mut config = Config::parse(text)?;
        config.paths.schemas = base.join(&config.paths.schemas);
        config.paths.templates = base.join(&config.paths.templates);
        config.paths.examples = base.join(&config.paths.examples);
        config.email.outbox = base.join(&config.email.outbox);
        if let Some(holidays) = &config.calendar.bank_holidays {
            config.calendar.bank_holidays = Some(base.join(holidays));
        }
        Ok(config)
    }

    /// Parses TOML text; the error names the line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

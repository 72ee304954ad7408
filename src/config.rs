//! routes.toml: the one file an operator reads to know who is told what.
//!
//! This module only parses the file into plain types; turning them into a working
//! engine (compiling matchers, resolving templates, checking names) happens in
//! [`crate::core::Core::load`], which reports every problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the configuration, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "routes.toml";

/// A webhook url may start with this to follow one setting: the sample directory's endpoints
/// are all `herald receive` on this machine, and moving the receiver to another port should
/// take one variable, not an edit per recipient.
pub const RECEIVER_URL: &str = "${HERALD_RECEIVER_URL}";

/// The variable that says what [`RECEIVER_URL`] stands for.
pub const RECEIVER_URL_VAR: &str = "HERALD_RECEIVER_URL";

/// What [`RECEIVER_URL`] stands for when the variable is unset: `herald receive`'s default.
pub const DEFAULT_RECEIVER_URL: &str = "http://127.0.0.1:9900";

/// The whole of routes.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where schemas and templates live, relative to the config file.
    #[serde(default)]
    pub paths: Paths,
    /// Broker connection and topology (`[broker]` is another name for the section).
    #[serde(default, alias = "broker")]
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
    /// Where the delivery ledger is kept, and for how long.
    #[serde(default)]
    pub ledger: LedgerSettings,
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
    /// Weekly digests from the custody register.
    #[serde(
        default,
        rename = "subscription",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// Locations of the other files Herald reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// Broker settings; `HERALD_AMQP_URLS` (comma-separated) or `HERALD_AMQP_URL` override the
/// URLs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    /// The broker, when it is one node.
    pub url: String,
    /// The nodes of a cluster, tried in order at every (re)connection; when given, `url` is
    /// not used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Members of each quorum queue Herald declares (`x-quorum-initial-group-size`); unset,
    /// the broker's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u16>,
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

impl Amqp {
    /// The broker's nodes in the order they are tried: `HERALD_AMQP_URLS` (comma-separated),
    /// else `HERALD_AMQP_URL`, else `urls`, else `url`.
    pub fn node_urls(&self, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let split = |list: String| -> Vec<String> {
            list.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(list) = env("HERALD_AMQP_URLS").map(split).filter(|l| !l.is_empty()) {
            return list;
        }
        if let Some(url) = env("HERALD_AMQP_URL").filter(|u| !u.is_empty()) {
            return vec![url];
        }
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            replicas: None,
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Most emails sent through the relay, all recipients together (`"3000/min"`); unset: no
    /// limit but the connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            from: "Herald <herald@notify.example.gov.uk>".into(),
            url: None,
            outbox: "outbox".into(),
            connections: 16,
            rate: None,
        }
    }
}

/// Webhook delivery settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Time allowed for one request, e.g. `"15s"`.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub timeout: std::time::Duration,
    /// Requests in flight to one endpoint (a recipient on a channel) at once. Each holds its
    /// slot until the recipient answers, so this bounds both the load on a recipient and the
    /// rate one endpoint can take (docs/performance.md).
    pub concurrency_per_endpoint: usize,
    /// Consecutive transient failures after which an endpoint is left alone for `circuit_open_for`.
    pub circuit_failures: u32,
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub circuit_open_for: std::time::Duration,
    /// How long an endpoint's circuit stays open (it keeps failing, with no answer between)
    /// before its recipient's `contact` is told it is unreachable, and its notifications go
    /// by email where their route allows both channels.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub contact_after: std::time::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: std::time::Duration::from_secs(15),
            concurrency_per_endpoint: 16,
            circuit_failures: 5,
            circuit_open_for: std::time::Duration::from_secs(30),
            contact_after: std::time::Duration::from_secs(15 * 60),
        }
    }
}

/// The retry schedule for notifications that fail transiently.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Waits before each retry, e.g. `["5s", "5m", "30m"]`; one delay queue per distinct wait.
    #[serde(deserialize_with = "durations", serialize_with = "spans")]
    pub schedule: Vec<std::time::Duration>,
    /// After this long since the first failure a notification is parked, whatever is left of
    /// the schedule.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
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

/// The delivery ledger (docs/ledger.md); `HERALD_LEDGER_URL` overrides the store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// `postgres://user@host/db` for a PostgreSQL ledger (a password goes in
    /// `HERALD_LEDGER_URL` or PostgreSQL's own `PGPASSWORD`, never here); unset means the
    /// SQLite file at `path`.
    #[serde(deserialize_with = "ledger_url")]
    pub url: Option<String>,
    /// The SQLite file when no URL is set, relative to routes.toml.
    pub path: PathBuf,
    /// How long an event and everything about it stay in the ledger, e.g. `"400d"`.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub keep: std::time::Duration,
    /// Keep a SHA-256 of each notification as sent (never the notification itself).
    pub keep_sent_hash: bool,
    /// SQLite only: `full` makes every commit survive a power cut, `normal` (faster) a crash
    /// of Herald or of the machine's processes but not a power cut.
    pub synchronous: LedgerSync,
}

/// A ledger URL, refused when it carries a password.
fn ledger_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match url::Url::parse(&text) {
        Ok(u) if u.password().is_some() => Err(serde::de::Error::custom(
            "the ledger URL holds a password, which cannot be written in routes.toml: \
             set HERALD_LEDGER_URL (or PostgreSQL's PGPASSWORD) instead",
        )),
        Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql" | "sqlite") => {
            Err(serde::de::Error::custom(format!(
                "the ledger URL's scheme is {:?}: postgres://... (or leave url unset for the \
                 SQLite file at ledger.path)",
                u.scheme()
            )))
        }
        Ok(_) => Ok(Some(text)),
        Err(e) => Err(serde::de::Error::custom(format!(
            "the ledger URL cannot be read: {e}"
        ))),
    }
}

/// SQLite's `synchronous` setting for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerSync {
    Normal,
    Full,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            url: None,
            path: "data/ledger.sqlite".into(),
            keep: std::time::Duration::from_secs(400 * 86_400),
            keep_sent_hash: false,
            synchronous: LedgerSync::Full,
        }
    }
}

impl LedgerSettings {
    /// The store's URL: `HERALD_LEDGER_URL`, else `url`, else the SQLite file.
    pub fn store_url(&self, env: impl Fn(&str) -> Option<String>) -> String {
        env("HERALD_LEDGER_URL")
            .filter(|u| !u.is_empty())
            .or_else(|| self.url.clone())
            .unwrap_or_else(|| format!("sqlite://{}", self.path.display()))
    }
}

/// The service's HTTP endpoints and shutdown.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`; `HERALD_METRICS_ADDR` overrides.
    pub metrics_addr: String,
    /// Address of the operator's console (`/console`, `/api/v1`); `""` turns it off;
    /// `HERALD_CONSOLE_ADDR` overrides. Anywhere but loopback it needs credentials
    /// (README, "The operator's console").
    pub console_addr: String,
    /// How long a shutdown waits for events in flight, e.g. `"30s"`.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub drain: std::time::Duration,
    /// An event id handled within this long is not routed again by the same process.
    #[serde(
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub dedup_window: std::time::Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            metrics_addr: "127.0.0.1:9464".into(),
            console_addr: "127.0.0.1:9465".into(),
            drain: std::time::Duration::from_secs(30),
            dedup_window: std::time::Duration::from_secs(600),
        }
    }
}

/// Limits on incoming events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted body, e.g. `"256 KiB"`.
    #[serde(serialize_with = "size")]
    pub max_event_bytes: bytesize::ByteSize,
    /// Deepest accepted nesting of JSON arrays and objects.
    pub max_depth: usize,
    /// Largest accepted AMQP headers table, e.g. `"16 KiB"`. Bounded so a refused message,
    /// copied to the rejected queue with Herald's reason added, always fits in one frame.
    #[serde(serialize_with = "size")]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// A bank-holiday file in the GOV.UK `bank-holidays.json` format; unset means the
    /// England and Wales list built into Herald (2020 to 2030).
    pub bank_holidays: Option<PathBuf>,
}

/// A field that only some recipient classes may receive.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FreeText {
    /// Classes that receive the envelope's `description`. Unset: every class from which no
    /// `[[sensitive]]` rule withholds a field.
    pub description: Option<Vec<String>>,
}

/// One entry of the recipient directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Who runs the recipient's webhook endpoint (an operations mailbox): told once when the
    /// endpoint is disabled or unreachable, and once when it works again.
    pub contact: Option<String>,
    /// People this recipient has shown authority to act for, as `TYPE:value`
    /// identifiers (`NOMS:A1234BC`). Required for legal representatives.
    #[serde(default)]
    pub acts_for: Vec<String>,
}

/// A recipient's webhook endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Name of the environment variable holding the `whsec_` signing secret.
    pub secret_env: String,
    /// During a rotation, the variable holding the previous secret; both signatures are sent.
    pub previous_secret_env: Option<String>,
    /// Most requests to this endpoint (`"50/s"`, `"3000/min"`); unset: no limit but the
    /// concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// One routing rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// The most events this route is expected to match in a period (`"2000/day"`), all of
    /// which may come at once: what `herald check` holds the rate limits of its recipients'
    /// endpoints to against its SLA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Rate>,
    /// Who is told, and when, that a notification of this route is still undelivered as its
    /// deadline nears. Needs an `sla`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<EscalateConfig>,
}

/// A count in a period, as routes.toml writes it: `"50/s"`, `"3000/min"`, `"100000/h"`,
/// `"2000/day"`. A rate limit (`rate`) or an expected volume (`volume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many in each period; at least 1.
    pub count: u32,
    pub per: RateUnit,
}

/// The period of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    /// The word routes.toml writes.
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "s",
            RateUnit::Minute => "min",
            RateUnit::Hour => "h",
            RateUnit::Day => "day",
        }
    }

    pub fn seconds(self) -> u32 {
        match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
            RateUnit::Day => 86_400,
        }
    }
}

impl Rate {
    /// Reads `"<count>/<unit>"`, the unit `s`, `min`, `h` or `day` (or `second`, `minute`,
    /// `hour`).
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<Rate, String> {
        const FORM: &str = "a rate is written `<count>/<unit>` with the unit s, min, h or day \
                            (`50/s`, `3000/min`, `100000/h`, `2000/day`)";
        let Some((count, unit)) = text.split_once('/') else {
            return Err(format!("{FORM}, not `{text}`"));
        };
        let count: u32 = match count.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                return Err(format!("`{}` is not a whole number: {FORM}", count.trim()));
            }
        };
        if count == 0 {
            return Err(format!(
                "a rate of `{}` lets nothing through: give a count of at least 1 (or leave the rate out for no limit)",
                text.trim()
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => RateUnit::Second,
            "min" | "minute" => RateUnit::Minute,
            "h" | "hour" => RateUnit::Hour,
            "day" | "d" => RateUnit::Day,
            other => {
                return Err(format!(
                    "`{other}` is not a unit of a rate: use s, min, h or day (`50/s`, `3000/min`)"
                ));
            }
        };
        Ok(Rate { count, per })
    }

    /// How many in one second, on average.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / f64::from(self.per.seconds())
    }

    /// How many a rate limit lets through at once after a quiet spell: one second's worth,
    /// at least 1.
    pub fn burst(self) -> u32 {
        (self.count / self.per.seconds()).max(1)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A route's escalation: `escalate = { at = "75%", to = ["police:WYP-CONTROL-ROOM"],
/// channels = ["email"] }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateConfig {
    /// When, if the notification is still undelivered: a share of the time the deadline
    /// allows (`"75%"`, from 1% to 99%), or a span before the deadline (`"2h before"`).
    pub at: String,
    /// Who is told: recipient ids, `<class>:{field.path}` patterns or `<class>:*`, as a
    /// route's `to`.
    pub to: Vec<String>,
    /// How they are told; each recipient gets those it has.
    #[serde(default = "default_escalation_channels")]
    pub channels: Vec<String>,
    /// The template folder of the escalation email.
    #[serde(default = "default_escalation_template")]
    pub template: String,
}

/// The template an escalation uses unless its route names another.
pub const ESCALATION_TEMPLATE: &str = "escalation";

fn default_escalation_channels() -> Vec<String> {
    vec!["email".into()]
}

fn default_escalation_template() -> String {
    ESCALATION_TEMPLATE.into()
}

/// One weekly digest: a report over the custody register, for a scope, to recipients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique, used in logs, metrics, the ledger and `herald digest`.
    pub name: String,
    /// `in-prison`, `prison-details-changed` or `unfinalised`.
    pub report: String,
    /// Whose people: police BCU and probation PDU ids (`police:WYP-LEEDS`); several make an
    /// area.
    pub scope: Vec<String>,
    /// Recipient ids from the directory.
    pub to: Vec<String>,
    /// `email` (the only channel digests take).
    #[serde(default = "default_digest_channel")]
    pub channel: String,
    /// Weekly, London time: `Monday 07:00`.
    pub schedule: String,
    pub template: String,
    /// How long after its scheduled time a digest may arrive and still be on time.
    #[serde(
        default = "default_digest_grace",
        deserialize_with = "humantime_serde::deserialize",
        serialize_with = "span"
    )]
    pub due_within: std::time::Duration,
}

fn default_digest_channel() -> String {
    "email".into()
}

fn default_digest_grace() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

/// A list of durations written as text (`"5m"`).
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::time::Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<std::time::Duration>> = Deserialize::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

/// A duration as routes.toml writes it (`"10m"`, `"48h"`), for `herald config show`.
fn span<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::sla::format_span(*d))
}

/// A list of durations as routes.toml writes them.
fn spans<S: serde::Serializer>(list: &[std::time::Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|d| crate::sla::format_span(*d)))
}

/// A size as routes.toml writes it (`"256 KiB"`): the largest binary unit that divides it.
fn size<S: serde::Serializer>(b: &bytesize::ByteSize, s: S) -> Result<S::Ok, S::Error> {
    let n = b.as_u64();
    let unit = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .into_iter()
        .find(|(_, f)| n >= *f && n.is_multiple_of(*f));
    match unit {
        Some((name, f)) => s.serialize_str(&format!("{} {name}", n / f)),
        None => s.serialize_str(&format!("{n} B")),
    }
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
    #[error("{}", lines(path, &problems.0).join("\n"))]
    Parse { path: PathBuf, problems: ParseError },
}

impl ConfigError {
    /// One line per problem, each naming the file.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Parse { path, problems } => lines(path, &problems.0),
        }
    }
}

fn lines(path: &Path, problems: &[String]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect()
}

/// What is wrong with the text of routes.toml: one problem a line, each with its line, column
/// and key. None quotes the file, which may hold a secret by mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ParseError(pub Vec<String>);

impl Config {
    /// Reads and parses the file; paths inside it are resolved against its folder, and
    /// `${HERALD_RECEIVER_URL}` in webhook urls is what the environment says.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment read through `env`.
    pub fn load_with(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_in_with(&text, path.parent().unwrap_or(Path::new("")), env).map_err(
            |problems| ConfigError::Parse {
                path: path.to_owned(),
                problems,
            },
        )
    }

    /// Parses TOML text as if it were a file in `base`: its paths are resolved against `base`.
    /// `${HERALD_RECEIVER_URL}` is its default, whatever the environment says.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, ParseError> {
        Config::parse_in_with(text, base, |_| None)
    }

    /// [`Config::parse_in`] with `${HERALD_RECEIVER_URL}` read through `env`.
    pub fn parse_in_with(
        text: &str,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ParseError> {
        match Config::parse_in_all(text, base, env) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ParseError(problems)),
        }
    }

    /// Reads the file and every problem in it, with the configuration read from the rest of
    /// it where there is one, so `herald check` can go on to check what could be read.
    pub fn load_all(path: &Path) -> Result<(Option<Config>, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (config, problems) =
            Config::parse_in_all(&text, path.parent().unwrap_or(Path::new("")), |name| {
                std::env::var(name).ok()
            });
        Ok((config, lines(path, &problems)))
    }

    /// [`Config::parse_all_text`] with the receiver's URL filled in and paths resolved
    /// against `base`.
    fn parse_in_all(
        text: &str,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> (Option<Config>, Vec<String>) {
        let (config, problems) = Config::parse_all_text(text);
        let config = config.map(|mut c| {
            c.fill_receiver_url(env(RECEIVER_URL_VAR));
            c.resolved(base)
        });
        (config, problems)
    }

    fn resolved(mut self, base: &Path) -> Config {
        let config = &mut self;
        config.paths.schemas = base.join(&config.paths.schemas);
        config.paths.templates = base.join(&config.paths.templates);
        config.paths.examples = base.join(&config.paths.examples);
        config.email.outbox = base.join(&config.email.outbox);
        config.ledger.path = base.join(&config.ledger.path);
        if let Some(holidays) = &config.calendar.bank_holidays {
            config.calendar.bank_holidays = Some(base.join(holidays));
        }
        self
    }

    /// Parses TOML text, `${HERALD_RECEIVER_URL}` standing for its default.
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        match Config::parse_all_text(text) {
            (Some(mut config), problems) if problems.is_empty() => {
                config.fill_receiver_url(None);
                Ok(config)
            }
            (_, problems) => Err(ParseError(problems)),
        }
    }

    /// Webhook urls written `${HERALD_RECEIVER_URL}/...` with the receiver's URL (`value`, or
    /// the default when unset or empty) in its place. The result is checked as any URL is
    /// when the directory is built (https or loopback http, no credentials), so the variable
    /// cannot bring in what routes.toml may not hold.
    fn fill_receiver_url(&mut self, value: Option<String>) {
        let value = value.filter(|v| !v.is_empty());
        let base = value
            .as_deref()
            .unwrap_or(DEFAULT_RECEIVER_URL)
            .trim_end_matches('/');
        for webhook in self
            .recipients
            .iter_mut()
            .filter_map(|r| r.webhook.as_mut())
        {
            if webhook.url.contains(RECEIVER_URL) {
                webhook.url = webhook.url.replace(RECEIVER_URL, base);
            }
        }
    }

    /// Parses TOML text. Each problem names its line, column and key without quoting the
    /// text (toml's own message shows the line, which may be `secret = "whsec_…"`), and a
    /// secret written into the file is refused: secrets live in environment variables.
    /// Every problem of the text, and the configuration read from what is sound, if any.
    fn parse_all_text(text: &str) -> (Option<Config>, Vec<String>) {
        let (tree, syntax) = toml::de::DeTable::parse_recoverable(text);
        let tree = tree.into_inner();
        // A syntax error is reported with any secret in what could be read around it; the
        // errors after the first are mostly its echoes.
        let mut problems: Vec<String> = syntax
            .first()
            .map(|e| {
                let at = e.span().map_or(text.len(), |s| s.start);
                problem(text, &tree, at, &mask_message(e.message()))
            })
            .into_iter()
            .collect();
        problems.extend(inline_secrets(text, &tree));
        if !problems.is_empty() {
            return (None, problems);
        }
        Config::parse_all(text, &tree)
    }

    /// Every problem with the keys and values of syntactically sound TOML, not just the first:
    /// each key serde refuses (an unknown one, a value of the wrong type) is reported, with
    /// the nearest valid key where one is close, and blanked out of a copy of the text (so
    /// every later position stays where it was), and the copy is read again. The
    /// configuration read from what is left, if it could be read, comes with the problems.
    fn parse_all(text: &str, tree: &toml::de::DeTable<'_>) -> (Option<Config>, Vec<String>) {
        const MOST: usize = 50;
        let mut problems = Vec::new();
        let mut copy = text.to_owned();
        for _ in 0..MOST {
            let e = match toml::from_str::<Config>(&copy) {
                Ok(config) => return (Some(config), problems),
                Err(e) => e,
            };
            let at = e.span().map_or(text.len(), |s| s.start);
            let mut message = mask_message(e.message());
            if let Some(hint) = unknown_key_hint(e.message()) {
                message.push_str(&hint);
            }
            problems.push(problem(text, tree, at, &message));
            match entry_at(tree, at) {
                // For a missing key, the table that lacks it is taken away.
                Some(range) if e.span().is_some() => blank(&mut copy, range),
                // Nowhere to point: what follows cannot be read.
                _ => break,
            }
        }
        (None, problems)
    }
}

/// For serde's "unknown field `chanels`, expected one of `name`, `channels`, ...": the
/// nearest expected key, as " (did you mean `channels`?)".
fn unknown_key_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    crate::suggest::nearest(unknown, candidates).map(|k| format!(" (did you mean `{k}`?)"))
}

/// The bytes of the key-value entry whose key (or value) starts the span at `at`: from its
/// key to the end of its value.
fn entry_at(table: &toml::de::DeTable<'_>, at: usize) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    for (key, value) in table.iter() {
        let (k, v) = (key.span(), value.span());
        if covers(&k, at) || covers(&v, at) {
            found = Some(k.start..v.end.max(k.end));
        }
        let inner = match value.get_ref() {
            toml::de::DeValue::Table(t) => entry_at(t, at),
            toml::de::DeValue::Array(items) => items
                .iter()
                .filter_map(|i| i.get_ref().as_table())
                .find_map(|t| entry_at(t, at)),
            _ => None,
        };
        // The deepest entry that holds the place is the one to take away.
        if inner.is_some() {
            found = inner;
        }
    }
    found
}

/// Replaces an entry with spaces (line breaks kept, so every position after it stays), and a
/// comma that separated it in an inline table.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let bytes = text.as_bytes();
    let mut end = range.end.min(bytes.len());
    let after = bytes[end..].iter().position(|b| !b.is_ascii_whitespace());
    let mut start = range.start;
    match after.map(|i| end + i) {
        Some(i) if bytes[i] == b',' => end = i + 1,
        _ => {
            let before = bytes[..start]
                .iter()
                .rposition(|b| !b.is_ascii_whitespace());
            if let Some(i) = before.filter(|&i| bytes[i] == b',') {
                start = i;
            }
        }
    }
    let blanked: String = text[start..end]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    // Spaces for characters: the byte length can shrink, so pad to keep every offset.
    let pad = (end - start).saturating_sub(blanked.len());
    text.replace_range(start..end, &format!("{blanked}{}", " ".repeat(pad)));
}

/// The keys of webhook tables that hold names of variables or a URL, never a secret.
const WEBHOOK_KEYS: [&str; 4] = ["url", "secret_env", "previous_secret_env", "rate"];

/// Where secrets go instead of routes.toml.
const PUT_IT_IN_THE_ENVIRONMENT: &str = "put it in an environment variable and name that \
     variable in secret_env (the value is not shown)";

/// A Standard Webhooks signing secret starts with this, wherever it is pasted.
const WHSEC: &str = "whsec_";

/// Every secret written into the file: a key named like a secret in a `webhook` table, and
/// any key or string holding a `whsec_` signing secret.
fn inline_secrets(text: &str, tree: &toml::de::DeTable<'_>) -> Vec<String> {
    let mut found = Vec::new();
    let mut report = |at: usize, message: &str| found.push(problem(text, tree, at, message));
    walk_secrets(tree, false, &mut report);
    found
}

fn walk_secrets(
    table: &toml::de::DeTable<'_>,
    in_webhook: bool,
    report: &mut impl FnMut(usize, &str),
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if name.contains(WHSEC) {
            report(
                key.span().start,
                &format!(
                    "a key name holds a signing secret, which cannot be written in \
                     routes.toml: {PUT_IT_IN_THE_ENVIRONMENT}"
                ),
            );
            continue;
        }
        if in_webhook && !WEBHOOK_KEYS.contains(&name) && crate::mask::is_secret_name(name) {
            report(
                key.span().start,
                &format!(
                    "a webhook's {name} cannot be written in routes.toml: \
                     {PUT_IT_IN_THE_ENVIRONMENT}"
                ),
            );
            continue;
        }
        match value.get_ref() {
            toml::de::DeValue::String(s) if s.contains(WHSEC) => {
                let what = if name.ends_with("secret_env") {
                    format!(
                        "this is a signing secret, not the name of an environment \
                         variable: put the secret in an environment variable and name that \
                         variable in {name} (the value is not shown)"
                    )
                } else {
                    format!(
                        "this is a signing secret, which cannot be written in routes.toml: \
                         {PUT_IT_IN_THE_ENVIRONMENT}"
                    )
                };
                report(value.span().start, &what);
            }
            toml::de::DeValue::Table(t) => walk_secrets(t, name == "webhook", report),
            toml::de::DeValue::Array(items) => {
                for item in items.iter() {
                    match item.get_ref() {
                        toml::de::DeValue::String(s) if s.contains(WHSEC) => report(
                            item.span().start,
                            &format!(
                                "this is a signing secret, which cannot be written in \
                                 routes.toml: {PUT_IT_IN_THE_ENVIRONMENT}"
                            ),
                        ),
                        toml::de::DeValue::Table(t) => walk_secrets(t, false, report),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// One step of the way to a place in the file.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    /// An element of an array; for a table (`[[recipient]]`), its `id` or `name` if it has one.
    Item {
        number: usize,
        table: bool,
        label: Option<String>,
    },
}

/// "line L, column C, [[recipient]] police:X, key webhook.url: message".
fn problem(text: &str, tree: &toml::de::DeTable<'_>, at: usize, message: &str) -> String {
    let (line, column) = line_column(text, at);
    let mut steps = Vec::new();
    locate(tree, at, &mut Vec::new(), &mut steps);
    let place = match describe(&steps) {
        Some(place) => Some(place),
        // Not inside anything read (a syntax error): the last key before it.
        None => {
            let mut before = (0, Vec::new());
            last_before(tree, at, &mut Vec::new(), &mut before);
            describe(&before.1).map(|p| format!("after {p}"))
        }
    };
    match place {
        Some(place) => format!("line {line}, column {column}, {place}: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The key that starts last before the offset, as the steps to it.
fn last_before(
    table: &toml::de::DeTable<'_>,
    at: usize,
    path: &mut Vec<Step>,
    best: &mut (usize, Vec<Step>),
) {
    for (key, value) in table.iter() {
        let start = key.span().start;
        path.push(Step::Key(key.get_ref().to_string()));
        if start <= at && (start >= best.0 || best.1.is_empty()) {
            *best = (start, path.clone());
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => last_before(t, at, path, best),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(t) = item.get_ref().as_table() {
                        path.push(Step::Item {
                            number: i + 1,
                            table: true,
                            label: label(t),
                        });
                        last_before(t, at, path, best);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The deepest key whose key or value covers the offset, as the steps to it.
fn locate(table: &toml::de::DeTable<'_>, at: usize, path: &mut Vec<Step>, best: &mut Vec<Step>) {
    for (key, value) in table.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        if (covers(&key.span(), at) || covers(&value.span(), at)) && path.len() > best.len() {
            *best = path.clone();
        }
        locate_value(value, at, path, best);
        path.pop();
    }
}

fn locate_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    at: usize,
    path: &mut Vec<Step>,
    best: &mut Vec<Step>,
) {
    match value.get_ref() {
        toml::de::DeValue::Table(t) => locate(t, at, path, best),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let table = item.get_ref().as_table();
                path.push(Step::Item {
                    number: i + 1,
                    table: table.is_some(),
                    label: table.and_then(label),
                });
                if covers(&item.span(), at) && path.len() > best.len() {
                    *best = path.clone();
                }
                locate_value(item, at, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn covers(span: &std::ops::Range<usize>, at: usize) -> bool {
    span.start <= at && at < span.end.max(span.start + 1)
}

/// A table's `id` or `name`, to say which `[[recipient]]` or `[[route]]` a problem is in.
fn label(table: &toml::de::DeTable<'_>) -> Option<String> {
    ["id", "name"].iter().find_map(|k| {
        let (_, v) = table.iter().find(|(key, _)| key.get_ref() == k)?;
        let s = v.get_ref().as_str()?;
        (s.len() <= 80 && !s.contains(WHSEC) && !s.chars().any(char::is_control))
            .then(|| s.to_owned())
    })
}

/// "[[recipient]] police:X, key webhook.url", or "key amqp.prefetch".
fn describe(steps: &[Step]) -> Option<String> {
    let mut section = None;
    let mut keys: Vec<&str> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Key(k) => {
                let is_section = matches!(steps.get(i + 1), Some(Step::Item { table: true, .. }));
                if !is_section {
                    keys.push(k);
                }
            }
            Step::Item {
                number,
                table: true,
                label,
            } => {
                let name = match i.checked_sub(1).map(|j| &steps[j]) {
                    Some(Step::Key(k)) => k.as_str(),
                    _ => "",
                };
                // A key inside the element: what came before belongs to the section.
                keys.clear();
                section = Some(match label {
                    Some(l) => format!("[[{name}]] {l}"),
                    None => format!("[[{name}]] number {number}"),
                });
            }
            // An element of a list of values: the list's key says enough.
            Step::Item { .. } => {}
        }
    }
    let keys = (!keys.is_empty()).then(|| format!("key {}", keys.join(".")));
    match (section, keys) {
        (Some(s), Some(k)) => Some(format!("{s}, {k}")),
        (s, k) => s.or(k),
    }
}

/// toml's and serde's message with every quoted value masked (`invalid type: string "…"`),
/// and any signing secret, quoted or not.
fn mask_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    let mut in_backticks = false;
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                in_backticks = !in_backticks;
                out.push(c);
            }
            '"' if !in_backticks => {
                // A value as serde quotes it (with Debug escapes): up to the closing quote.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push('"');
                out.push_str(crate::mask::MASK);
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    while let Some(i) = out.find(WHSEC) {
        let end = out[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_+/=".contains(c)))
            .map_or(out.len(), |n| i + n);
        out.replace_range(i..end, crate::mask::MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text).err().map(|e| e.0).unwrap_or_default()
    }

    const RECIPIENT: &str = "[[recipient]]\nid = \"police:X\"\nclass = \"police\"\nname = \"X\"\n";

    #[test]
    fn a_problem_is_named_by_line_column_and_key_and_its_value_is_not_quoted() {
        assert_eq!(
            problems("[amqp]\nprefetch = \"hunter2\"\n"),
            ["line 2, column 12, key amqp.prefetch: invalid type: string \"***\", expected u16"]
        );
        let p = problems(&format!("{RECIPIENT}chanels = 1\n"));
        assert!(
            p[0].starts_with(
                "line 5, column 1, [[recipient]] police:X, key chanels: unknown field"
            ),
            "{p:?}"
        );
        let p =
            problems("[[route]]\nname = \"r\"\nevents = []\nto = []\ntemplate = \"t\"\nsla = 3\n");
        assert!(
            p[0].starts_with("line 6, column 7, [[route]] r, key sla: invalid type"),
            "{p:?}"
        );
        // A syntax error names the last key read before it.
        let p = problems("[amqp]\nurl = \"amqp://guest:hunter2@h\" x\n");
        assert!(
            p[0].starts_with("line 2, column 32, after key amqp.url: "),
            "{p:?}"
        );
        assert!(p.iter().all(|p| !p.contains("hunter2")), "{p:?}");
    }

    #[test]
    fn a_secret_written_into_the_file_is_refused_and_not_repeated() {
        let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";
        let cases = [
            (
                format!(
                    "{RECIPIENT}webhook = {{ url = \"https://h.example/\", secret_env = \"S\", secret = \"{secret}\" }}\n"
                ),
                "[[recipient]] police:X, key webhook.secret: a webhook's secret cannot be written",
            ),
            (
                format!(
                    "{RECIPIENT}[recipient.webhook]\nurl = \"https://h.example/\"\nsecret_env = \"S\"\nPassword = \"pw\"\n"
                ),
                "[[recipient]] police:X, key webhook.Password: a webhook's Password cannot",
            ),
            (
                format!(
                    "{RECIPIENT}webhook = {{ url = \"https://h.example/\", secret_env = \"{secret}\" }}\n"
                ),
                "key webhook.secret_env: this is a signing secret, not the name of an environment variable",
            ),
            (
                format!("[email]\nfrom = \"{secret}\"\n"),
                "key email.from: this is a signing secret, which cannot be written",
            ),
            (
                format!(
                    "[[route]]\nname = \"r\"\nevents = []\nto = [\"{secret}\"]\ntemplate = \"t\"\n"
                ),
                "[[route]] r, key to: this is a signing secret",
            ),
        ];
        for (text, want) in &cases {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert!(p[0].contains(want), "{text}: {p:?}");
            assert!(p[0].contains("environment variable"), "{p:?}");
            assert!(
                !p[0].contains("c2VjcmV0") && !p[0].contains("\"pw\""),
                "{p:?}"
            );
        }
        // The names of variables and the URL are not secrets.
        assert!(
            Config::parse(&format!(
                "{RECIPIENT}webhook = {{ url = \"https://h.example/\", secret_env = \"S\", previous_secret_env = \"T\" }}\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn webhook_urls_written_with_the_receiver_url_follow_it() {
        let text = format!(
            "{RECIPIENT}webhook = {{ url = \"${{HERALD_RECEIVER_URL}}/police/X\", secret_env = \"S\" }}\n"
        );
        let url = |value: Option<&str>| {
            let config =
                Config::parse_in_with(&text, Path::new(""), |_| value.map(str::to_owned)).unwrap();
            config.recipients[0].webhook.as_ref().unwrap().url.clone()
        };
        assert_eq!(url(None), "http://127.0.0.1:9900/police/X");
        assert_eq!(url(Some("")), "http://127.0.0.1:9900/police/X");
        assert_eq!(
            url(Some("http://127.0.0.1:19901/")),
            "http://127.0.0.1:19901/police/X"
        );
        let parsed = Config::parse(&text).unwrap();
        assert_eq!(
            parsed.recipients[0].webhook.as_ref().unwrap().url,
            "http://127.0.0.1:9900/police/X"
        );
    }

    #[test]
    fn rates_are_read_with_their_unit_and_bad_ones_are_named() {
        let rate = |text: &str| Rate::parse(text);
        assert_eq!(
            rate("3000/min"),
            Ok(Rate {
                count: 3000,
                per: RateUnit::Minute
            })
        );
        assert_eq!(rate(" 50 / s ").map(|r| r.to_string()), Ok("50/s".into()));
        assert_eq!(rate("100000/h").map(Rate::burst), Ok(27));
        assert_eq!(rate("3000/min").map(Rate::burst), Ok(50));
        assert_eq!(rate("2000/day").map(Rate::burst), Ok(1));
        assert!(rate("fast").unwrap_err().contains("not `fast`"));
        assert!(rate("0/s").unwrap_err().contains("lets nothing through"));
        assert!(
            rate("-5/s")
                .unwrap_err()
                .contains("`-5` is not a whole number")
        );
        assert!(
            rate("10/fortnight")
                .unwrap_err()
                .contains("`fortnight` is not a unit of a rate")
        );
        // In routes.toml: on a recipient's webhook, the relay and a route, and a bad one is
        // named by its key.
        let text = format!(
            "[email]\nrate = \"3000/min\"\n{RECIPIENT}webhook = {{ url = \"https://h.example/\", secret_env = \"S\", rate = \"50/s\" }}\n"
        );
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config.email.rate.map(|r| r.to_string()),
            Some("3000/min".into())
        );
        assert_eq!(
            config.recipients[0]
                .webhook
                .as_ref()
                .unwrap()
                .rate
                .map(|r| r.count),
            Some(50)
        );
        let p = problems(&format!(
            "{RECIPIENT}webhook = {{ url = \"https://h.example/\", secret_env = \"S\", rate = \"10/fortnight\" }}\n"
        ));
        assert!(
            p[0].contains("[[recipient]] police:X, key webhook.rate: `fortnight` is not a unit"),
            "{p:?}"
        );
        let p = problems(
            "[[route]]\nname = \"r\"\nevents = []\nto = []\ntemplate = \"t\"\nvolume = \"fast\"\n",
        );
        assert!(
            p[0].contains("[[route]] r, key volume: a rate is written"),
            "{p:?}"
        );
    }

    #[test]
    fn signing_secrets_are_masked_in_any_message() {
        assert_eq!(
            mask_message("unknown variant `whsec_abc+/=`, expected `a` or \"b\\\"c\""),
            "unknown variant `***`, expected `a` or \"***\""
        );
    }
}

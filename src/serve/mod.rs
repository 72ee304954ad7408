//! `herald serve`: consume events from RabbitMQ, route them with the core, deliver by email and
//! webhook, park what cannot be routed or delivered, and export metrics.
//!
//! Each event is acknowledged only after every notification it gives is delivered or parked;
//! the broker's prefetch bounds how many are in flight, and each is handled in its own task.

mod acks;
mod books;
pub mod broker;
mod confirm;
mod contact;
mod dedup;
pub mod digest;
pub mod dlq;
pub mod escalate;
mod handler;
mod http;
pub mod instances;
pub mod park;
pub mod reload;
pub mod retry;
pub mod rows;
mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{Core, Live};
use crate::deliver::Deliverer;
use crate::deliver::email::EmailSender;
use crate::deliver::guard::{Guard, Limits as GuardLimits};
use crate::deliver::rate::{Limit as RateLimit, RELAY, Rates, Watch as RateWatch};
use crate::deliver::webhook::WebhookSender;
use crate::metrics::Metrics;

/// Everything the service needs beyond the core, from routes.toml and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker's nodes, tried in order at every (re)connection.
    pub amqp_urls: Vec<String>,
    /// Members of each quorum queue Herald declares; `None`: the broker's default.
    pub replicas: Option<u16>,
    pub exchange: String,
    pub queue: String,
    pub rejected_queue: String,
    pub failed_queue: String,
    pub prefetch: u16,
    /// Deliveries of one event before the broker parks it as poison.
    pub delivery_limit: u16,
    pub metrics_addr: String,
    /// Where the operator's console listens; `None`: it is off.
    pub console_addr: Option<String>,
    pub smtp_url: Option<String>,
    pub outbox: PathBuf,
    pub from: String,
    pub smtp_connections: u32,
    pub webhook_timeout: Duration,
    /// Requests in flight to one endpoint at once.
    pub concurrency_per_endpoint: usize,
    /// The rate limits: each recipient's webhook `rate`, and the email relay's.
    pub rates: Vec<RateLimit>,
    /// Consecutive transient failures that open an endpoint's circuit, and for how long.
    pub circuit_failures: u32,
    pub circuit_open_for: Duration,
    /// How long a webhook's circuit stays open before its recipient's contact is told it is
    /// unreachable (and its notifications go by email where their route allows it).
    pub contact_after: Duration,
    pub drain: Duration,
    /// An event id handled within this window is not routed again (zero: no check).
    pub dedup_window: Duration,
    /// Waits before each retry of a transiently failing notification.
    pub retry_schedule: Vec<Duration>,
    /// Age after the first failure at which a notification is parked.
    pub retry_max_age: Duration,
    /// The AMQP connection name, to find Herald in `rabbitmqctl list_connections`.
    pub connection_name: String,
    /// This instance's name in the ledger (`HERALD_INSTANCE`, or made up at start).
    pub instance: String,
    /// How often the depth of Herald's queues is read for `herald_queue_messages`.
    pub queue_poll: Duration,
    /// The ledger's store (`sqlite://...` or `postgres://...`).
    pub ledger_url: String,
    pub ledger_sync: crate::ledger::Sync,
    /// How long the ledger keeps an event and all about it.
    pub ledger_keep: Duration,
    /// Keep a SHA-256 of what each notification sent.
    pub keep_sent_hash: bool,
    /// The clock the weekly digests go by.
    pub clock: digest::Clock,
    /// How often the digests' schedule is looked at.
    pub digest_tick: Duration,
    /// How often the escalations due are looked for.
    pub escalation_tick: Duration,
}

impl Settings {
    /// routes.toml's values, overridden by `HERALD_AMQP_URLS`, `HERALD_AMQP_URL`,
    /// `HERALD_SMTP_URL` and `HERALD_METRICS_ADDR`.
    pub fn new(config: &Config, env: impl Fn(&str) -> Option<String>) -> Settings {
        Settings {
            amqp_urls: config.amqp.node_urls(&env),
            replicas: config.amqp.replicas,
            exchange: config.amqp.exchange.clone(),
            queue: config.amqp.queue.clone(),
            rejected_queue: config.amqp.rejected_queue.clone(),
            failed_queue: config.amqp.failed_queue.clone(),
            prefetch: config.amqp.prefetch,
            delivery_limit: config.amqp.delivery_limit,
            metrics_addr: env("HERALD_METRICS_ADDR")
                .unwrap_or_else(|| config.service.metrics_addr.clone()),
            console_addr: Some(
                env("HERALD_CONSOLE_ADDR").unwrap_or_else(|| config.service.console_addr.clone()),
            )
            .filter(|a| !a.trim().is_empty()),
            smtp_url: env("HERALD_SMTP_URL").or_else(|| config.email.url.clone()),
            outbox: config.email.outbox.clone(),
            from: config.email.from.clone(),
            smtp_connections: config.email.connections,
            webhook_timeout: config.webhook.timeout,
            concurrency_per_endpoint: config.webhook.concurrency_per_endpoint,
            rates: rate_limits(config),
            circuit_failures: config.webhook.circuit_failures,
            circuit_open_for: config.webhook.circuit_open_for,
            contact_after: config.webhook.contact_after,
            drain: config.service.drain,
            dedup_window: config.service.dedup_window,
            retry_schedule: config.retry.schedule.clone(),
            retry_max_age: config.retry.max_age,
            connection_name: "herald".into(),
            instance: instances::instance_id(&env),
            queue_poll: Duration::from_secs(5),
            ledger_url: config.ledger.store_url(&env),
            ledger_sync: match config.ledger.synchronous {
                crate::config::LedgerSync::Normal => crate::ledger::Sync::Normal,
                crate::config::LedgerSync::Full => crate::ledger::Sync::Full,
            },
            ledger_keep: config.ledger.keep,
            keep_sent_hash: config.ledger.keep_sent_hash,
            clock: digest::Clock::system(),
            digest_tick: Duration::from_secs(30),
            escalation_tick: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// The email sender: SMTP at `smtp_url`, or `.eml` files in `outbox`.
    pub fn email_sender(&self) -> Result<EmailSender, crate::deliver::email::EmailSetupError> {
        EmailSender::new(
            self.smtp_url.as_deref(),
            &self.outbox,
            &self.from,
            self.smtp_connections,
        )
    }

    /// The circuit breaker, concurrency limit and rate limit of every endpoint; the rate
    /// limits report how many notifications they hold to `metrics`.
    pub fn guard(&self, metrics: &Metrics) -> Guard {
        let rates = rates(&self.rates, metrics);
        Guard::new(GuardLimits {
            concurrency: self.concurrency_per_endpoint,
            queue_wait: self.webhook_timeout,
            failures_to_open: self.circuit_failures,
            open_for: self.circuit_open_for,
        })
        .with_rates(rates)
    }
}

/// The token buckets of `limits`, each reporting how many notifications it holds to `metrics`.
pub(crate) fn rates(limits: &[RateLimit], metrics: &Metrics) -> Rates {
    Rates::new(limits, |name| rate_watch(name, metrics))
}

/// Where the limit `name` reports how many notifications it holds.
pub(crate) fn rate_watch(name: &str, metrics: &Metrics) -> RateWatch {
    RateWatch {
        held: metrics.held.with_label_values(&[name]),
        held_seconds: metrics.held_seconds.with_label_values(&[name]),
    }
}

/// routes.toml's rate limits: one per recipient webhook with a `rate`, and one for the email
/// relay (`[email] rate`) that every recipient's email takes its tokens from.
pub fn rate_limits(config: &Config) -> Vec<RateLimit> {
    use crate::notification::Channel;
    let endpoint = |id: &str, channel: Channel| format!("{id}/{}", channel.as_str());
    let mut limits: Vec<RateLimit> = config
        .recipients
        .iter()
        .filter_map(|r| {
            let rate = r.webhook.as_ref()?.rate?;
            let name = endpoint(&r.id, Channel::Webhook);
            Some(RateLimit {
                endpoints: vec![name.clone()],
                name,
                rate,
            })
        })
        .collect();
    if let Some(rate) = config.email.rate {
        limits.push(RateLimit {
            name: RELAY.into(),
            rate,
            endpoints: config
                .recipients
                .iter()
                .filter(|r| !r.email.is_empty())
                .map(|r| endpoint(&r.id, Channel::Email))
                .collect(),
        });
    }
    limits
}

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot reach RabbitMQ at {url}: {reason}. Start it (`rabbitmq-server -detached`, or `docker compose up -d rabbitmq`) or set HERALD_AMQP_URLS or HERALD_AMQP_URL"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "broker node {node} of {nodes} is not an AMQP URL ({reason}): give amqp://user:password@host:port/vhost or amqps://..., in HERALD_AMQP_URLS, HERALD_AMQP_URL or [amqp] urls or url"
    )]
    NotAnAmqpUrl {
        node: usize,
        nodes: usize,
        reason: String,
    },
    #[error(
        "RabbitMQ at {url} refused the login for user {user}: check the password ({password_in})"
    )]
    LoginRefused {
        url: String,
        user: String,
        /// Where the password came from, for the user to correct it there.
        password_in: String,
    },
    #[error(
        "RabbitMQ at {url} has no virtual host {vhost:?}: create it (`rabbitmqctl add_vhost {vhost}`, then `rabbitmqctl set_permissions -p {vhost} {user} ...`) or name another in the URL"
    )]
    NoVhost {
        url: String,
        vhost: String,
        user: String,
    },
    #[error(
        "RabbitMQ at {url} does not let user {user} use virtual host {vhost:?}: give it permissions (`rabbitmqctl set_permissions -p {vhost} {user} ...`) or log in as another user"
    )]
    VhostRefused {
        url: String,
        vhost: String,
        user: String,
    },
    #[error("RabbitMQ at {url}: {reason}")]
    Broker { url: String, reason: String },
    #[error(
        "RabbitMQ at {url} has Herald's topology declared with other arguments than this Herald declares: {said}. Every instance must declare the same ([amqp] delivery_limit and replicas, [retry] schedule, the queue names): make their routes.toml agree, or, if an older Herald made it, empty the queue and delete it so it is declared anew"
    )]
    Topology { url: String, said: String },
    #[error("the connection to RabbitMQ was lost: {0}")]
    Lost(String),
    #[error("email: {0}")]
    Email(#[from] crate::deliver::email::EmailSetupError),
    #[error("webhooks: {0}")]
    Webhook(String),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("stopped before the ledger could be opened")]
    Stopped,
}

/// Why a connection to the broker at `url` could not be opened, told apart so the one line a
/// user sees says what to do: nothing answers (start the broker), the login is refused (the
/// password, which `password_in` says where to correct), or the virtual host is missing or
/// closed to the user. The URL is shown masked, and no library text that could quote it is
/// kept unscrubbed.
pub fn connect_error(url: &str, e: &lapin::Error, password_in: &str) -> ServeError {
    let shown = redact_url(url);
    let parsed = url::Url::parse(url).ok();
    let user = parsed
        .as_ref()
        .map(|u| decode(u.username()))
        .filter(|u| !u.is_empty())
        // What lapin logs in as when the URL names no one.
        .unwrap_or_else(|| "guest".into());
    // As lapin reads it: the path after its first `/`, or the default `/` without one.
    let vhost = parsed
        .as_ref()
        .map(|u| decode(u.path().get(1..).unwrap_or("/")))
        .unwrap_or_else(|| "/".into());
    let refusal = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some((amqp.get_id(), amqp.get_message().as_str())),
        _ => None,
    };
    match refusal {
        // ACCESS_REFUSED when opening the connection: the user or its password is wrong.
        Some((403, _)) => ServeError::LoginRefused {
            url: shown,
            user,
            password_in: password_in.to_owned(),
        },
        // NOT_ALLOWED: "vhost x not found", or "access to vhost 'x' refused for user 'y'".
        Some((530, text)) if text.contains("not found") => ServeError::NoVhost {
            url: shown,
            vhost,
            user,
        },
        Some((530, _)) => ServeError::VhostRefused {
            url: shown,
            vhost,
            user,
        },
        Some(_) => ServeError::Broker {
            url: shown,
            reason: crate::mask::scrub(&e.to_string(), url),
        },
        None => ServeError::Unreachable {
            url: shown,
            reason: crate::mask::scrub(&e.to_string(), url),
        },
    }
}

/// Percent-decoding, as URLs carry user names and virtual hosts.
fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, v)| v.into_owned())
}

/// What every event handler shares.
pub(crate) struct Ctx {
    /// The configuration in force; each event takes it when its handling begins.
    live: Live,
    deliverer: Deliverer,
    metrics: Metrics,
    /// A channel in confirm mode, for parking; replaced when Herald reconnects.
    publisher: RwLock<Channel>,
    settings: Settings,
    /// Event ids handled recently.
    recent: dedup::Recent,
    /// Where every event, notification and attempt is recorded before it is acknowledged.
    ledger: crate::ledger::Ledger,
    /// Set when a register event was recorded: the register's gauges are counted again.
    register_dirty: std::sync::atomic::AtomicBool,
    /// The webhooks down now, as the ledger records them (recipients naming a contact).
    standings: contact::Standings,
}

impl Ctx {
    /// The current confirm-mode channel.
    fn publisher(&self) -> Channel {
        self.publisher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A register event was recorded: the register's gauges are out of date.
    fn register_changed(&self) {
        self.register_dirty.store(true, Ordering::Relaxed);
    }
}

/// A started service.
pub struct Running {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    live: Live,
    reloads: reload::Requests,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Asks the service to stop and waits for it to drain.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the service to end (after `shutdown` or a lost connection).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(ServeError::Lost(format!("service task ended: {e}"))))
    }

    /// Loads the configuration anew from its files and puts it in force if it passes every
    /// check `herald check` makes (what `SIGHUP` and `POST /-/reload` do).
    pub async fn reload(&self) -> reload::Reload {
        ask_reload(&self.reloads).await
    }

    /// The configuration in force, as reloads change it.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    /// Where a reload is asked for, for a task that outlives the borrow of `self`.
    pub fn reloads(&self) -> reload::Requests {
        self.reloads.clone()
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Asks the service's reload task for a reload and waits for its answer.
pub async fn ask_reload(requests: &reload::Requests) -> reload::Reload {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let stopping = || reload::Reload::Refused {
        errors: vec!["the service is stopping".into()],
    };
    if requests.send(answer).await.is_err() {
        return stopping();
    }
    answered.await.unwrap_or_else(|_| stopping())
}

/// Where serve and dlq read the broker's password from.
pub const AMQP_PASSWORD_IN: &str =
    "HERALD_AMQP_URLS or HERALD_AMQP_URL, or [amqp] urls or url in routes.toml";

/// How long the last acknowledgements may take to go out when a link is given up.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// One connection to the broker, with its channels and consumers.
struct Link {
    connection: Connection,
    /// Which of the configured nodes answered.
    node: usize,
    consuming: Channel,
    /// In confirm mode, for parking and scheduling retries.
    publisher: Channel,
    retrying: Channel,
    /// For reading queue depths (a passive declare of a missing queue closes its channel).
    watching: Channel,
    consumer: lapin::Consumer,
    retries: lapin::Consumer,
    /// Acknowledges the events consumer's deliveries, in batches.
    acks: Arc<acks::Acks>,
    acking: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Connects, declares the topology (idempotently) and starts both consumers.
    async fn open(settings: &Settings) -> Result<Link, ServeError> {
        let properties = || {
            ConnectionProperties::default()
                .with_connection_name(settings.connection_name.clone().into())
        };
        let broker::Connected { connection, node } =
            broker::connect(&settings.amqp_urls, properties, AMQP_PASSWORD_IN).await?;
        let raw = &settings.amqp_urls[node];
        let url = redact_url(raw);
        // lapin's message may quote the URL it was given, password and all.
        let reason = |e: lapin::Error| crate::mask::scrub(&e.to_string(), raw);
        let broker = |e: lapin::Error| ServeError::Broker {
            url: url.clone(),
            reason: reason(e),
        };
        let consuming = connection.create_channel().await.map_err(broker)?;
        let publisher = connection.create_channel().await.map_err(broker)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        topology::declare(&connection, settings)
            .await
            .map_err(|e| topology::mismatch(e, &url).unwrap_or_else(broker))?;
        retry::declare(&connection, settings)
            .await
            .map_err(broker)?;
        consuming
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let consumer = consuming
            .basic_consume(
                settings.queue.as_str().into(),
                settings.connection_name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        // Due retries come on their own channel, so a burst of them cannot take the prefetch
        // slots new events need, and the other way round.
        let retrying = connection.create_channel().await.map_err(broker)?;
        retrying
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let retries = retrying
            .basic_consume(
                retry::deliveries_queue(settings).as_str().into(),
                format!("{}-retries", settings.connection_name)
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let watching = connection.create_channel().await.map_err(broker)?;
        let (acks, acking) = acks::Acks::start();
        Ok(Link {
            connection,
            node,
            consuming,
            publisher,
            retrying,
            watching,
            consumer,
            retries,
            acks,
            acking,
        })
    }

    /// Hands each delivery to a task until `stop` (Ok) or the connection is lost (Err).
    async fn consume(
        &mut self,
        ctx: &Arc<Ctx>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<(), ServeError> {
        let lost = |next: Option<Result<(), lapin::Error>>| match next {
            Some(Err(e)) => ServeError::Lost(e.to_string()),
            _ => ServeError::Lost("the broker cancelled the consumer".into()),
        };
        let mut poll = tokio::time::interval(ctx.settings.queue_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = poll.tick() => {
                    if !self.watching.status().connected() {
                        match self.connection.create_channel().await {
                            Ok(ch) => self.watching = ch,
                            Err(e) => return Err(ServeError::Lost(e.to_string())),
                        }
                    }
                    let (ch, ctx) = (self.watching.clone(), Arc::clone(ctx));
                    tokio::spawn(async move {
                        watch_queues(&ch, &ctx).await;
                        books::refresh_parked(ctx.ledger.store(), &ctx.metrics).await;
                        if ctx.register_dirty.swap(false, Ordering::Relaxed) {
                            books::refresh_register(ctx.ledger.store(), &ctx.live.current(), &ctx.metrics).await;
                        }
                    });
                }
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let (ctx, acks) = (Arc::clone(ctx), Arc::clone(&self.acks));
                        acks.handling(delivery.delivery_tag);
                        tracker.spawn(async move { handler::handle(&ctx, delivery, &acks).await });
                    }
                    other => return Err(lost(other.map(|r| r.map(drop)))),
                },
                next = self.retries.next() => match next {
                    Some(Ok(delivery)) => {
                        let ctx = Arc::clone(ctx);
                        tracker.spawn(async move { handler::handle_retry(&ctx, delivery).await });
                    }
                    other => return Err(lost(other.map(|r| r.map(drop)))),
                },
            }
        }
    }

    /// Sends the acknowledgements of every event handled so far, then closes the connection.
    async fn close(mut self, reason: &str) {
        self.acks.close();
        if tokio::time::timeout(ACK_WAIT, &mut self.acking)
            .await
            .is_err()
        {
            warn!("acknowledgements not all sent in time; the broker will redeliver those events");
        }
        let _ = self.connection.close(200, reason.into()).await;
    }

    /// Stops taking new deliveries.
    async fn cancel(&self) {
        let _ = self
            .consuming
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await;
        let _ = self
            .retrying
            .basic_cancel(self.retries.tag(), BasicCancelOptions::default())
            .await;
    }
}

/// Reads the depth of each of Herald's queues into `herald_queue_messages`, labelled by role.
async fn watch_queues(channel: &Channel, ctx: &Ctx) {
    let s = &ctx.settings;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = |queue: String| async move {
        channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .map(|q| i64::from(q.message_count()))
    };
    let mut retrying = 0;
    // The first is the deliveries queue, read below; the rest are the delay queues.
    for queue in retry::queues(s).into_iter().skip(1) {
        match depth(queue).await {
            Ok(n) => retrying += n,
            Err(e) => {
                debug!(error = %e, "cannot read a delay queue's depth");
                return;
            }
        }
    }
    let roles = [
        ("events", s.queue.clone()),
        ("deliveries", retry::deliveries_queue(s)),
        ("rejected", s.rejected_queue.clone()),
        ("failed", s.failed_queue.clone()),
    ];
    for (role, queue) in roles {
        match depth(queue).await {
            Ok(n) => ctx.metrics.queue_messages.with_label_values(&[role]).set(n),
            Err(e) => {
                debug!(error = %e, queue = role, "cannot read a queue's depth");
                return;
            }
        }
    }
    ctx.metrics
        .queue_messages
        .with_label_values(&["retrying"])
        .set(retrying);
}

/// Reconnects, trying every node in order each round, with a growing jittered wait between
/// rounds ([`broker::Backoff`]), until it succeeds or `stop`.
async fn reconnect(ctx: &Ctx, stop: &CancellationToken) -> Option<Link> {
    let mut backoff = broker::Backoff::new();
    loop {
        let wait = backoff.next_wait();
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        match Link::open(&ctx.settings).await {
            Ok(link) => {
                *ctx.publisher.write().unwrap_or_else(|e| e.into_inner()) = link.publisher.clone();
                return Some(link);
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "cannot reconnect yet");
            }
        }
    }
}

/// The URL without its password or other secrets, for messages (see [`crate::mask::url`]).
pub fn redact_url(url: &str) -> String {
    crate::mask::url(url)
}

/// Connects, declares the topology and starts consuming.
pub async fn start(
    core: Arc<Core>,
    settings: Settings,
    env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Result<Running, ServeError> {
    let env: reload::Env = Arc::new(env);
    let email = settings.email_sender()?;
    let (webhook, warnings) =
        WebhookSender::new(&core.engine.directory, settings.webhook_timeout, &*env)
            .map_err(ServeError::Webhook)?;
    for w in &warnings {
        warn!("{w}");
    }
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    metrics.expect_routes(core.engine.routes.iter().map(|r| &*r.name));
    metrics.expect_escalations(
        core.engine
            .routes
            .iter()
            .filter(|r| r.escalate.is_some())
            .map(|r| &*r.name),
    );
    // The files' hash; a configuration built in memory (a test's) has the files' hash too.
    let hash = reload::fingerprint(&core.config_path, &core.config).unwrap_or_else(|e| {
        warn!(error = %e, "cannot read the configuration's files to hash them");
        String::new()
    });
    metrics.config_loaded(&hash);
    let live = Live::new(core);
    let (reloads, requests) = tokio::sync::mpsc::channel(8);
    let ready = Arc::new(http::Readiness::default());
    let (metrics_addr, http_task) = http::start(
        &settings.metrics_addr,
        metrics.clone(),
        Arc::clone(&ready),
        reloads.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| ServeError::Metrics {
        addr: settings.metrics_addr.clone(),
        source,
    })?;

    let Some(store) = books::open(&settings, &ready.ledger, &metrics, &shutdown)
        .await
        .inspect_err(|_| shutdown.cancel())?
    else {
        return Err(ServeError::Stopped);
    };
    let guard = settings.guard(&metrics);
    books::restore(&store, &guard, &metrics)
        .await
        .inspect_err(|_| shutdown.cancel())?;
    tokio::spawn(books::prune(
        store.clone(),
        live.clone(),
        settings.ledger_keep,
        metrics.clone(),
        shutdown.clone(),
    ));
    let ledger = crate::ledger::Ledger::start(store.clone(), metrics.clone());
    let joined = instances::join(&store, &settings.instance)
        .await
        .inspect_err(|_| shutdown.cancel())?;
    guard.share_among(joined);
    metrics
        .instances
        .set(i64::try_from(joined).unwrap_or(i64::MAX));

    let link = Link::open(&settings)
        .await
        .inspect_err(|_| shutdown.cancel())?;
    ready.consuming.store(true, Ordering::Relaxed);
    info!(
        amqp = %broker::shown(&settings.amqp_urls, link.node),
        nodes = settings.amqp_urls.len(),
        queue = %settings.queue,
        prefetch = settings.prefetch,
        email = email.describe(),
        ledger = store.shown(),
        metrics = %metrics_addr,
        "herald is consuming"
    );

    let ctx = Arc::new(Ctx {
        live: live.clone(),
        deliverer: Deliverer {
            email,
            webhook,
            guard,
        },
        metrics: metrics.clone(),
        publisher: RwLock::new(link.publisher.clone()),
        recent: dedup::Recent::new(settings.dedup_window),
        ledger,
        settings,
        register_dirty: std::sync::atomic::AtomicBool::new(true),
        standings: contact::Standings::default(),
    });
    // Cancelled once the events in flight are drained: this instance's claims last as long.
    let left = CancellationToken::new();
    let keeping = tokio::spawn(instances::keep(Arc::clone(&ctx), joined, left.clone()));
    tokio::spawn(digest::schedule(
        Arc::clone(&ctx),
        ctx.settings.clock.clone(),
        ctx.settings.digest_tick,
        shutdown.clone(),
    ));
    tokio::spawn(reload::serve(
        Arc::clone(&ctx),
        requests,
        env,
        hash,
        shutdown.clone(),
    ));
    tokio::spawn(escalate::scan(
        Arc::clone(&ctx),
        ctx.settings.escalation_tick,
        shutdown.clone(),
    ));
    tokio::spawn(contact::watch(Arc::clone(&ctx), shutdown.clone()));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let tracker = TaskTracker::new();
        let mut link = link;
        loop {
            let lost = link.consume(&ctx, &tracker, &stop).await;
            ready.consuming.store(false, Ordering::Relaxed);
            let Err(lost) = lost else { break };
            warn!(error = %lost, "lost the broker; reconnecting (events in flight return to the queue)");
            match reconnect(&ctx, &stop).await {
                Some(new) => {
                    // Events still being handled on the old link are acknowledged on it while
                    // it lasts (or come back from the broker); it is closed after the drain.
                    let old = std::mem::replace(&mut link, new);
                    let drain = ctx.settings.drain;
                    tokio::spawn(async move {
                        old.cancel().await;
                        tokio::time::sleep(drain).await;
                        old.close("herald reconnected").await;
                    });
                    ready.consuming.store(true, Ordering::Relaxed);
                    info!(amqp = %broker::shown(&ctx.settings.amqp_urls, link.node), "reconnected; consuming again");
                }
                None => break,
            }
        }
        link.cancel().await;
        tracker.close();
        let drain = ctx.settings.drain;
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                drain_secs = drain.as_secs(),
                "events still in flight at the end of the drain; the broker will redeliver them"
            );
        }
        link.close("herald shutting down").await;
        left.cancel();
        let _ = keeping.await;
        stop.cancel();
        let _ = http_task.await;
        Ok(())
    });
    Ok(Running {
        metrics_addr,
        metrics,
        live,
        reloads,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    use super::*;

    fn refused(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn a_connection_refusal_says_which_it_is_without_the_password() {
        let login = refused(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        let e = connect_error("amqp://court%40x:s3cret@h:5672/%2f", &login, "P").to_string();
        assert_eq!(
            e,
            "RabbitMQ at amqp://court%40x:***@h:5672/%2f refused the login for user court@x: \
             check the password (P)"
        );
        let e = connect_error("amqp://h", &login, "P").to_string();
        assert!(e.contains("for user guest:"), "{e}");

        let missing = refused(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - vhost herald-ci not found",
        );
        let e = connect_error("amqp://guest:s3cret@h/herald-ci", &missing, "P").to_string();
        assert!(e.contains("has no virtual host \"herald-ci\""), "{e}");
        assert!(e.contains("rabbitmqctl add_vhost herald-ci"), "{e}");
        let closed = refused(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - access to vhost '/' refused for user 'court'",
        );
        let e = connect_error("amqp://court:s3cret@h/%2f", &closed, "P").to_string();
        assert!(
            e.contains("does not let user court use virtual host \"/\""),
            "{e}"
        );

        let down: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        let e = connect_error("amqp://guest:s3cret@h:1/%2f", &down, "P").to_string();
        assert!(e.starts_with("cannot reach RabbitMQ at"), "{e}");
        for e in [login, missing, closed, down] {
            let shown = connect_error("amqp://guest:s3cret@h/%2f", &e, "P").to_string();
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }
}

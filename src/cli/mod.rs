//! The command line: the offline tools (`check`, `config show`, `validate`, `route-test`), the
//! service (`serve`), the documents (`openapi`, `asyncapi`), and the integration aids
//! (`publish`, `receive`).

pub mod asyncapi;
mod authority;
mod check;
mod digest;
mod dlq;
mod ledger;
mod publish;
mod receive;
mod reload;
mod restamp;
mod route_test;
mod serve;
mod show_config;
mod table;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::core::Core;

// What each command reads from the environment, for its help. Where routes.toml has the
// setting too, the variable wins, as `Settings::new` applies them.
macro_rules! env_amqp {
    () => {
        concat!(
            "  HERALD_AMQP_URLS         the broker's nodes, comma-separated, tried in order;\n",
            "                           overrides [amqp] urls and url in routes.toml\n",
            "  HERALD_AMQP_URL          the broker, when it is one node; overrides [amqp] url\n",
            "                           (default amqp://guest:guest@127.0.0.1:5672/%2f)\n",
        )
    };
}
macro_rules! env_smtp_metrics {
    () => {
        concat!(
            "  HERALD_SMTP_URL          the SMTP server; overrides [email] url (default: none,\n",
            "                           emails are written as .eml files to [email] outbox)\n",
            "  HERALD_METRICS_ADDR      /metrics, /healthz and /readyz; overrides\n",
            "                           [service] metrics_addr (default 127.0.0.1:9464)\n",
        )
    };
}
macro_rules! env_ledger {
    () => {
        concat!(
            "  HERALD_LEDGER_URL        the ledger: postgres://... or sqlite://...; overrides\n",
            "                           [ledger] url and path (default data/ledger.sqlite)\n",
        )
    };
}
macro_rules! env_receiver {
    () => {
        concat!(
            "  HERALD_RECEIVER_URL      what ${HERALD_RECEIVER_URL} at the start of a webhook url\n",
            "                           stands for (default http://127.0.0.1:9900, receive's)\n",
        )
    };
}
macro_rules! env_secrets {
    () => {
        concat!(
            "  <secret_env>             each webhook's whsec_ signing secret, in the variable\n",
            "                           its secret_env names (HERALD_WEBHOOK_SECRET in the\n",
            "                           sample routes.toml)\n",
        )
    };
}
macro_rules! env_logs {
    () => {
        concat!(
            "  RUST_LOG                 which log lines are written (default info)\n",
            "  HERALD_LOG_FORMAT        json or text (default: text on a terminal, json\n",
            "                           otherwise)\n",
        )
    };
}

const HERALD_ENV: &str = concat!(
    "Environment (--config's is HERALD_CONFIG):\n",
    env_amqp!(),
    env_ledger!(),
    env_smtp_metrics!(),
    env_receiver!(),
    env_secrets!(),
    "  HERALD_PUBLISH_PASSWORD  `publish --user`'s password (see --password-env)\n",
    "  HERALD_WEBHOOK_SECRET    the secret `receive` verifies with (see --secret-env)\n",
    env_logs!(),
);

const SERVE_ENV: &str = concat!(
    "Environment:\n",
    env_amqp!(),
    env_ledger!(),
    env_smtp_metrics!(),
    "  HERALD_CONSOLE_ADDR      the operator's console (/console, /api/v1); overrides\n",
    "                           [service] console_addr (default 127.0.0.1:9465; \"\" is off)\n",
    "  HERALD_CONSOLE_OPERATOR_TOKEN, HERALD_CONSOLE_READER_TOKEN\n",
    "                           bearer tokens of the console's operators and readers\n",
    "  HERALD_CONSOLE_OPERATOR_BASIC, HERALD_CONSOLE_READER_BASIC\n",
    "                           user:password for HTTP Basic; with none of the four set the\n",
    "                           console is open, and only on a loopback address\n",
    env_receiver!(),
    env_secrets!(),
    env_logs!(),
    "\nSignals:\n",
    "  SIGHUP                   load routes.toml, the schemas and the templates again (as\n",
    "                           `herald reload` does); a configuration that fails the checks\n",
    "                           of `herald check` is refused and the one in force keeps running\n",
    "  SIGTERM, Ctrl-C          take no new events, finish those in flight, then exit\n",
);

const PUBLISH_ENV: &str = concat!(
    "Environment:\n",
    env_amqp!(),
    "  HERALD_PUBLISH_PASSWORD  --user's password (the variable --password-env names)\n",
);

const DLQ_ENV: &str = concat!(
    "Environment:\n",
    env_amqp!(),
    env_ledger!(),
    env_receiver!()
);

const LEDGER_ENV: &str = concat!("Environment:\n", env_ledger!());

const RECEIVE_ENV: &str = concat!(
    "Environment:\n",
    "  HERALD_WEBHOOK_SECRET    the whsec_ signing secret (the variable --secret-env\n",
    "                           names)\n",
);

const CHECK_ENV: &str = concat!("Environment:\n", env_receiver!(), env_secrets!());

const RELOAD_ENV: &str = concat!(
    "Environment:\n",
    "  HERALD_METRICS_ADDR      where the service's /-/reload is; overrides [service]\n",
    "                           metrics_addr (a wildcard address is reached on loopback)\n",
);

const ROUTE_TEST_ENV: &str = concat!("Environment:\n", env_receiver!());

const CONFIG_SHOW_ENV: &str = concat!(
    "Environment:\n",
    env_amqp!(),
    env_ledger!(),
    env_smtp_metrics!(),
    env_receiver!(),
    env_secrets!(),
);

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Inter-agency notification router: validate, route, render and deliver criminal justice events",
    after_help = HERALD_ENV
)]
pub struct Cli {
    /// The configuration file, before or after the command (`receive` reads none).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "HERALD_CONFIG",
        default_value = crate::config::DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: consume events from RabbitMQ and deliver notifications.
    #[command(after_help = SERVE_ENV)]
    Serve,
    /// Publish event files to the events exchange, as an agency system would.
    #[command(after_help = PUBLISH_ENV)]
    Publish {
        /// Log in to RabbitMQ as this user (its password in --password-env); the message's
        /// user_id is the login. Default: the login in HERALD_AMQP_URL or routes.toml.
        #[arg(long)]
        user: Option<String>,
        /// The environment variable holding --user's password.
        #[arg(long, default_value = "HERALD_PUBLISH_PASSWORD")]
        password_env: String,
        /// The routing key; default: each file's eventType.
        #[arg(long)]
        routing_key: Option<String>,
        /// Publish each event as if it happened now: occurredAt and publishedAt become the
        /// current time; every other date-time moves by as much as occurredAt did, and every
        /// date (dateOfBirth too) by as many days as occurredAt's London date did, each
        /// keeping its format and offset. The file is not changed.
        #[arg(long)]
        now: bool,
        /// The AMQP message_id (one file only). Default: derived from the bytes published,
        /// so the same bytes published again within service.dedup_window are a duplicate.
        #[arg(long, value_name = "ID")]
        message_id: Option<String>,
        /// Event files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Inspect, replay or purge the parked messages (herald.rejected, herald.failed).
    #[command(after_help = DLQ_ENV)]
    Dlq {
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// Read the delivery ledger: an event's story, a search, the inspectors' report.
    #[command(after_help = LEDGER_ENV)]
    Ledger {
        #[command(subcommand)]
        action: ledger::Action,
    },
    /// Read the authority register: which legal representative may hear about whom, from
    /// when to when, and which event said so.
    #[command(after_help = LEDGER_ENV)]
    Authority {
        #[command(subcommand)]
        action: authority::Action,
    },
    /// The weekly digests of `[[subscription]]`: preview what one would send, or send one
    /// now.
    #[command(after_help = LEDGER_ENV)]
    Digest {
        #[command(subcommand)]
        action: digest::Action,
    },
    /// Receive webhooks on a loopback address, verify their signatures and print them.
    #[command(after_help = RECEIVE_ENV)]
    Receive {
        /// Address to listen on: a port (19901, meaning 127.0.0.1:19901) or a loopback
        /// address and port; any other address is refused.
        #[arg(long, default_value = "127.0.0.1:9900")]
        addr: String,
        /// The environment variable holding the whsec_ signing secret.
        #[arg(long, default_value = "HERALD_WEBHOOK_SECRET")]
        secret_env: String,
        /// Also print each request's headers and its body as received.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print the OpenAPI document of the console's JSON API (docs/openapi.json is this).
    Openapi,
    /// Ask the `herald serve` on this machine to load routes.toml, the schemas and the
    /// templates again (as SIGHUP does); a configuration that fails `herald check` is refused
    /// and the one in force keeps running. Exit 0 reloaded or unchanged, 1 refused, 2 no
    /// answer.
    #[command(after_help = RELOAD_ENV)]
    Reload,
    /// Print the event contract as an AsyncAPI 3.0 document (docs/asyncapi.json is this):
    /// the exchange, a channel per event type, a message per version with its schema.
    Asyncapi,
    /// Load schemas, routes.toml and templates; render every template against every example.
    #[command(after_help = CHECK_ENV)]
    Check {
        /// Fail (exit 1) on warnings too: a route no example matches, an event type no route
        /// handles, an unset signing secret.
        #[arg(long)]
        strict: bool,
    },
    /// Show the configuration as Herald reads it.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Validate event files offline against the schemas.
    Validate {
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Event files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show who an event would notify, when, and how. Nothing is sent.
    #[command(after_help = ROUTE_TEST_ENV)]
    RouteTest {
        /// Also show the rendered emails and webhook bodies.
        #[arg(long)]
        render: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The event id (AMQP message_id) to use in idempotency keys; by default one is
        /// derived from the file's bytes.
        #[arg(long)]
        message_id: Option<String>,
        /// The publisher's RabbitMQ login: `herald serve` includes it in idempotency keys, so
        /// give it to see the keys the service would use.
        #[arg(long)]
        publisher: Option<String>,
        /// The event file (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration as TOML: routes.toml with every default filled in,
    /// ${HERALD_RECEIVER_URL} and the environment's overrides applied, secrets as ***.
    #[command(after_help = CONFIG_SHOW_ENV)]
    Show,
}

/// The configuration file a command reads.
#[derive(Debug)]
pub struct ConfigArg {
    pub config: PathBuf,
}

impl ConfigArg {
    /// Loads the core, or prints every problem and gives the exit code for a bad configuration.
    fn load(&self) -> Result<Core, ExitCode> {
        Core::load(&self.config).map_err(|errors| {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: {} problem(s); templates and examples are tried once it loads",
                self.config.display(),
                errors.len()
            );
            ExitCode::from(2)
        })
    }

    /// Reads routes.toml alone, for the commands that need none of the schemas or templates,
    /// or prints every problem and gives the exit code for a bad configuration.
    fn load_file(&self) -> Result<crate::config::Config, ExitCode> {
        crate::config::Config::load(&self.config).map_err(|e| {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(2)
        })
    }
}

/// Runs a parsed command line; the exit code says whether everything passed.
pub fn run(cli: Cli) -> ExitCode {
    let config = ConfigArg { config: cli.config };
    let result = match cli.command {
        Command::Serve => config.load().map(|core| runtime(serve::run(core))),
        Command::Publish {
            user,
            password_env,
            routing_key,
            now,
            message_id,
            files,
        } => config.load_file().map(|c| {
            runtime(publish::run(publish::Args {
                urls: c.amqp.node_urls(|k| std::env::var(k).ok()),
                exchange: c.amqp.exchange,
                user,
                password_env,
                routing_key,
                now,
                message_id,
                dedup_window: c.service.dedup_window,
                files,
            }))
        }),
        Command::Ledger { action } => config.load_file().map(|c| {
            runtime(ledger::run(
                c.ledger.store_url(|k| std::env::var(k).ok()),
                action,
            ))
        }),
        Command::Dlq { action } => config.load().map(|core| runtime(dlq::run(core, action))),
        Command::Authority { action } => config.load().map(|core| {
            let url = core.config.ledger.store_url(|k| std::env::var(k).ok());
            runtime(authority::run(&core, url, action))
        }),
        Command::Digest { action } => config.load().map(|core| {
            let url = core.config.ledger.store_url(|k| std::env::var(k).ok());
            runtime(digest::run(&core, url, action))
        }),
        Command::Receive {
            addr,
            secret_env,
            verbose,
        } => Ok(runtime(receive::run(&addr, &secret_env, verbose))),
        Command::Check { strict } => config.load().map(|core| check::run(&core, strict)),
        Command::Reload => config.load_file().map(|c| {
            let addr = std::env::var("HERALD_METRICS_ADDR").unwrap_or(c.service.metrics_addr);
            runtime(reload::run(&addr))
        }),
        Command::Openapi => {
            print!("{}", crate::console::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Asyncapi => config.load().map(|core| asyncapi::run(&core)),
        Command::Config {
            action: ConfigAction::Show,
        } => config
            .load_file()
            .map(|c| show_config::run(&config.config, c, |name| std::env::var(name).ok())),
        Command::Validate { json, files } => {
            config.load().map(|core| validate::run(&core, &files, json))
        }
        Command::RouteTest {
            render,
            json,
            message_id,
            publisher,
            file,
        } => config
            .load()
            .map(|core| route_test::run(&core, &file, message_id, publisher, render, json)),
    };
    result.unwrap_or_else(|code| code)
}

/// Runs an async command on a multi-threaded runtime.
fn runtime(task: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(task),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the broker client's own log lines (target `lapin`) are written.
static BROKER_CLIENT_LOG: AtomicBool = AtomicBool::new(false);

/// Lets lapin's log lines through from now on: `serve` does once it is connected, when they
/// may tell what Herald's own lines do not. Until then (and in every other command) each
/// broker error a user meets is Herald's one line, which lapin would precede with several
/// of its own (the same refusal as JSON, at ERROR).
pub fn show_broker_client_log() {
    BROKER_CLIENT_LOG.store(true, Ordering::Relaxed);
}

fn is_broker_client(target: &str) -> bool {
    target == "lapin" || target.starts_with("lapin::")
}

/// Holds lapin's lines back until [`show_broker_client_log`]. Asked at every lapin line, since
/// the answer changes; every other line is let through once and for all, so the service's own
/// lines cost nothing more.
fn broker_client_gate<S: tracing::Subscriber>() -> impl tracing_subscriber::Layer<S> {
    use tracing::subscriber::Interest;
    tracing_subscriber::filter::DynFilterFn::new(|meta, _| {
        !is_broker_client(meta.target()) || BROKER_CLIENT_LOG.load(Ordering::Relaxed)
    })
    .with_callsite_filter(|meta| {
        if is_broker_client(meta.target()) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    })
}

/// Logs go to stderr: JSON when `HERALD_LOG_FORMAT=json` or stderr is not a terminal
/// (production), readable text on a terminal. `RUST_LOG` filters (default `info`); lapin's
/// lines wait for [`show_broker_client_log`] unless `RUST_LOG` names lapin.
///
/// Lines are gathered in a buffer and written out in batches (see [`crate::logging::Batched`]): a
/// busy service makes one write for many lines instead of one each. Keep the returned guard
/// until the end of `main`: dropping it writes out what is left.
pub fn init_logging() -> crate::logging::Flusher<std::io::Stderr> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if std::env::var("RUST_LOG").is_ok_and(|spec| spec.contains("lapin")) {
        show_broker_client_log();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));

    let json = match std::env::var("HERALD_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let (writer, flusher) =
        crate::logging::Batched::new(std::io::stderr(), crate::logging::FLUSH_EVERY);
    let writer = writer.for_process();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = if json {
        // Each line carries the spans it was written in, outermost first: the event's
        // (message_id, event_type, publisher) and, inside it, the delivery attempt's
        // (recipient, channel, attempt). The list holds the current span too.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .finish()
            .with(broker_client_gate())
            .try_init()
    } else {
        builder.finish().with(broker_client_gate()).try_init()
    };
    flusher
}

fn passed(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

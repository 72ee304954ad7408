//! `herald publish FILE...`: how an agency tries its integration. Publishes each file to the
//! events exchange with publisher confirms and `mandatory`, setting `message_id`, `user_id`
//! (the login, which the broker checks), `content_type` and persistence. `--now` publishes
//! the event re-stamped to the current time ([`super::restamp`]); `--message-id` chooses the
//! id, which is otherwise derived from the bytes published.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ConnectionProperties, ExchangeKind};

use super::restamp::restamp;
use crate::event::EventId;
use crate::serve::{AMQP_PASSWORD_IN, broker};

pub struct Args {
    /// The broker's nodes, tried in order.
    pub urls: Vec<String>,
    pub exchange: String,
    pub user: Option<String>,
    pub password_env: String,
    pub routing_key: Option<String>,
    /// Re-stamp each event to the current time before publishing it.
    pub now: bool,
    /// The `message_id` to publish with; `None`: derived from the bytes published.
    pub message_id: Option<String>,
    /// `service.dedup_window`, for the note on derived ids.
    pub dedup_window: Duration,
    pub files: Vec<PathBuf>,
}

/// The longest `message_id` AMQP carries (a short string).
const MESSAGE_ID_MAX: usize = 255;

pub async fn run(args: Args) -> ExitCode {
    if let Err(e) = usage(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match publish(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A `--message-id` Herald would accept, for one message: the same id on two files would make
/// the second a duplicate of the first.
// String error: one line for the operator, printed before exit status 2.
fn usage(args: &Args) -> Result<(), String> {
    let Some(id) = &args.message_id else {
        return Ok(());
    };
    if id.is_empty() {
        return Err("--message-id is empty; Herald rejects a message without one".into());
    }
    if id.len() > MESSAGE_ID_MAX {
        return Err(format!(
            "--message-id is {} bytes long; AMQP carries at most {MESSAGE_ID_MAX}",
            id.len()
        ));
    }
    if args.files.len() > 1 {
        return Err(format!(
            "--message-id gives one message its id, and {} files were given: herald serve \
             would drop every one after the first as a duplicate; publish them one at a time",
            args.files.len()
        ));
    }
    Ok(())
}

/// The one line said when ids were derived from the bytes: publishing the same bytes again
/// is, to `herald serve`, the same event again.
fn derived_id_note(now: bool, window: Duration) -> String {
    let derived = "note: message_id was derived from the bytes published";
    if window.is_zero() {
        return format!(
            "{derived}; service.dedup_window is 0s, so herald serve handles the same bytes \
             published again as a new event"
        );
    }
    let again = format!(
        "the same bytes published again within service.dedup_window ({}) are dropped by \
         herald serve as a duplicate",
        crate::sla::format_span(window)
    );
    if now {
        format!(
            "{derived} (with --now they change every second): {again}; give --message-id for an id of your own"
        )
    } else {
        format!("{derived}: {again}; give --message-id, or --now to re-stamp the event")
    }
}

// String error: one line for the operator, printed before exit status 1.
async fn publish(args: Args) -> Result<(), String> {
    // Every file is read (and re-stamped) before anything is published, so a bad one stops
    // the run before it starts. The clock is read once: files published together stay
    // together.
    let now = chrono::Utc::now();
    let mut bodies = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let body = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let body = if args.now {
            restamp(&body, now).map_err(|e| format!("{}: {e}", file.display()))?
        } else {
            body
        };
        bodies.push((file, body));
    }
    let mut urls = Vec::with_capacity(args.urls.len());
    for given in &args.urls {
        let mut url = url::Url::parse(given).map_err(|e| {
            format!("the AMQP URL (HERALD_AMQP_URLS, HERALD_AMQP_URL or [amqp]) is not a URL: {e}")
        })?;
        if let Some(user) = &args.user {
            let password = std::env::var(&args.password_env).map_err(|_| {
                format!("--user {user} needs the password in {}", args.password_env)
            })?;
            url.set_username(user)
                .map_err(|()| "cannot set the user in the URL".to_string())?;
            url.set_password(Some(&password))
                .map_err(|()| "cannot set the password in the URL".to_string())?;
        }
        urls.push(url.to_string());
    }
    let password_in = match &args.user {
        Some(_) => args.password_env.as_str(),
        None => AMQP_PASSWORD_IN,
    };
    let connected = broker::connect(&urls, ConnectionProperties::default, password_in)
        .await
        .map_err(|e| e.to_string())?;
    let connection = connected.connection;
    let login = url::Url::parse(&urls[connected.node])
        .ok()
        .map(|u| match u.username() {
            "" => "guest".to_owned(),
            u => percent_decode(u),
        })
        .unwrap_or_else(|| "guest".to_owned());
    check_exchange(&connection, &args.exchange).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut failures = 0;
    let mut published = 0;
    for (file, body) in &bodies {
        let routing_key = args.routing_key.clone().unwrap_or_else(|| {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("eventType")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into())
        });
        let id = match &args.message_id {
            Some(id) => id.clone(),
            None => EventId::from_content(body).to_string(),
        };
        let properties = BasicProperties::default()
            .with_message_id(
                ShortString::try_new(id.clone()).map_err(|e| format!("message_id: {e}"))?,
            )
            .with_user_id(ShortString::try_new(login.clone()).map_err(|e| e.to_string())?)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        let key =
            ShortString::try_new(routing_key.clone()).map_err(|e| format!("routing key: {e}"))?;
        let confirm = channel
            .basic_publish(
                args.exchange.as_str().into(),
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|e| published_error(file, &args.exchange, &e))?
            .await
            .map_err(|e| published_error(file, &args.exchange, &e))?;
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            failures += 1;
            eprintln!(
                "{}: not routed: no queue is bound to exchange {} (start herald serve once to declare it)",
                file.display(),
                args.exchange
            );
        } else if !acked {
            failures += 1;
            eprintln!("{}: the broker refused the message", file.display());
        } else {
            published += 1;
            let stamped = if args.now {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| Some(format!(", occurredAt {}", v.get("occurredAt")?.as_str()?)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            println!(
                "published {} as {routing_key} (message_id {id}, user_id {login}{stamped})",
                file.display()
            );
        }
    }
    let _ = connection.close(200, "done".into()).await;
    if published > 0 && args.message_id.is_none() {
        println!("{}", derived_id_note(args.now, args.dedup_window));
    }
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} file(s) not published"))
    }
}

/// The exchange exists, or one line saying it does not yet. Asked before any file, on a
/// channel of its own: the broker closes a channel whose passive declare fails.
// String error: one line for the operator, printed before exit status 1.
async fn check_exchange(connection: &lapin::Connection, exchange: &str) -> Result<(), String> {
    let probe = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match probe
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = probe.close(200, "checked".into()).await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(no_exchange(exchange)),
        Err(e) => Err(format!("exchange {exchange}: {e}")),
    }
}

/// The one line for an exchange that is not there: `serve` declares it at its first start.
fn no_exchange(exchange: &str) -> String {
    format!(
        "the exchange {exchange} does not exist yet: start `herald serve` once (it declares the topology)"
    )
}

/// Whether a broker error is its NOT_FOUND (404), as for a publish to a missing exchange.
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// A publish the broker refused: the exchange gone since the check (deleted meanwhile) is
/// said as before any file; anything else with the file's name.
fn published_error(file: &std::path::Path, exchange: &str, e: &lapin::Error) -> String {
    if is_not_found(e) {
        no_exchange(exchange)
    } else {
        format!("{}: {e}", file.display())
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("u={s}").as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

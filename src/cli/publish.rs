//! `herald publish FILE...`: how an agency tries its integration. Publishes each file to the
//! events exchange with publisher confirms and `mandatory`, setting `message_id`, `user_id`
//! (the login, which the broker checks), `content_type` and persistence.

use std::path::PathBuf;
use std::process::ExitCode;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use crate::event::EventId;
use crate::serve::{AMQP_PASSWORD_IN, connect_error};

pub struct Args {
    pub url: String,
    pub exchange: String,
    pub user: Option<String>,
    pub password_env: String,
    pub routing_key: Option<String>,
    pub files: Vec<PathBuf>,
}

pub async fn run(args: Args) -> ExitCode {
    match publish(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// String error: one line for the operator, printed before exit status 1.
async fn publish(args: Args) -> Result<(), String> {
    let mut url = url::Url::parse(&args.url)
        .map_err(|e| format!("the AMQP URL (HERALD_AMQP_URL or amqp.url) is not a URL: {e}"))?;
    if let Some(user) = &args.user {
        let password = std::env::var(&args.password_env)
            .map_err(|_| format!("--user {user} needs the password in {}", args.password_env))?;
        url.set_username(user)
            .map_err(|()| "cannot set the user in the URL".to_string())?;
        url.set_password(Some(&password))
            .map_err(|()| "cannot set the password in the URL".to_string())?;
    }
    let login = match url.username() {
        "" => "guest".to_owned(),
        u => percent_decode(u),
    };
    let password_in = match &args.user {
        Some(_) => args.password_env.as_str(),
        None => AMQP_PASSWORD_IN,
    };
    let connection = Connection::connect(url.as_str(), ConnectionProperties::default())
        .await
        .map_err(|e| connect_error(url.as_str(), &e, password_in).to_string())?;
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
    for file in &args.files {
        let body = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let routing_key = args.routing_key.clone().unwrap_or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("eventType")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into())
        });
        let id = EventId::from_content(&body);
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
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
                &body,
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
            println!(
                "published {} as {routing_key} (message_id {id}, user_id {login})",
                file.display()
            );
        }
    }
    let _ = connection.close(200, "done".into()).await;
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} file(s) not published"))
    }
}

/// The exchange exists, or one line saying it does not yet. Asked before any file, on a
/// channel of its own: the broker closes a channel whose passive declare fails.
// String error: one line for the operator, printed before exit status 1.
async fn check_exchange(connection: &Connection, exchange: &str) -> Result<(), String> {
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

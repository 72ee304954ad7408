//! `herald dlq list|show|replay|purge rejected|failed`: what is parked, and why; sending it
//! again once the cause is fixed.
//!
//! Replaying a failed notification puts it on the deliveries queue with a fresh attempt budget
//! and the same idempotency key. Replaying a rejected event, or a notification the engine could
//! not make, runs the event through the current configuration again (with the publisher
//! Herald recorded) and queues the notifications it gives; what still fails stays parked.

use std::process::ExitCode;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::core::Core;
use crate::event::EventId;
use crate::serve::park::header_text;
use crate::serve::retry::{self, Pending};
use crate::serve::{Settings, redact_url};

/// Which parking queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Rejected,
    Failed,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// One line per parked message.
    List {
        which: Which,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One parked message in full (numbered as `list` shows).
    Show { which: Which, number: usize },
    /// Send parked messages again (all, or the numbers given).
    Replay { which: Which, numbers: Vec<usize> },
    /// Delete every message in the queue.
    Purge {
        which: Which,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(core: Core, action: Action) -> ExitCode {
    match dlq(core, action).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dlq(core: Core, action: Action) -> Result<ExitCode, String> {
    let settings = Settings::new(&core.config, |k| std::env::var(k).ok());
    let connection = Connection::connect(&settings.amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| {
            format!(
                "cannot reach RabbitMQ at {}: {}",
                redact_url(&settings.amqp_url),
                crate::mask::scrub(&e.to_string(), &settings.amqp_url)
            )
        })?;
    let ch = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let queue = |w: Which| match w {
        Which::Rejected => settings.rejected_queue.clone(),
        Which::Failed => settings.failed_queue.clone(),
    };
    let code = match action {
        Action::List { which, limit } => {
            let got = fetch(&ch, &queue(which), limit).await?;
            if got.is_empty() {
                println!("{} is empty", queue(which));
            }
            for (i, m) in got.iter().enumerate() {
                println!("{:>4}  {}", i + 1, summary(which, m));
            }
            release(&got).await;
            ExitCode::SUCCESS
        }
        Action::Show { which, number } => {
            let got = fetch(&ch, &queue(which), number).await?;
            let shown = number.checked_sub(1).and_then(|i| got.get(i));
            let code = match shown {
                Some(m) => {
                    print!("{}", full(m));
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("error: {} has no message number {number}", queue(which));
                    ExitCode::FAILURE
                }
            };
            release(&got).await;
            code
        }
        Action::Replay { which, numbers } => {
            let got = fetch(&ch, &queue(which), usize::MAX).await?;
            let mut failures = 0;
            for (i, m) in got.iter().enumerate() {
                if !numbers.is_empty() && !numbers.contains(&(i + 1)) {
                    let _ = m.nack(requeue()).await;
                    continue;
                }
                match replay(&core, &settings, &ch, which, m).await {
                    Ok(n) => {
                        println!("{:>4}  replayed: {n} notification(s) queued", i + 1);
                        let _ = m.ack(BasicAckOptions::default()).await;
                    }
                    Err(why) => {
                        failures += 1;
                        println!("{:>4}  kept: {why}", i + 1);
                        let _ = m.nack(requeue()).await;
                    }
                }
            }
            super::passed(failures == 0)
        }
        Action::Purge { which, yes } => {
            if !yes {
                eprintln!(
                    "error: purging deletes every message in {}; add --yes",
                    queue(which)
                );
                return Ok(ExitCode::from(2));
            }
            let n = ch
                .queue_purge(queue(which).as_str().into(), QueuePurgeOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            println!("purged {n} message(s) from {}", queue(which));
            ExitCode::SUCCESS
        }
    };
    let _ = connection.close(200, "done".into()).await;
    Ok(code)
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

/// Takes up to `limit` messages without acknowledging them.
async fn fetch(ch: &Channel, queue: &str, limit: usize) -> Result<Vec<Delivery>, String> {
    let mut out = Vec::new();
    while out.len() < limit {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| format!("{queue}: {e}"))?
        {
            Some(m) => out.push(m.delivery),
            None => break,
        }
    }
    Ok(out)
}

/// Puts messages back, untouched.
async fn release(messages: &[Delivery]) {
    for m in messages {
        let _ = m.nack(requeue()).await;
    }
}

fn summary(which: Which, m: &Delivery) -> String {
    let h = |name: &str| header_text(m.properties.headers(), name).unwrap_or_default();
    match which {
        Which::Rejected => format!(
            "{}  {}  id {}  from {}: {}",
            h("x-herald-reason"),
            h("x-herald-original-routing-key"),
            m.properties
                .message_id()
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            h("x-herald-original-user-id"),
            h("x-herald-detail")
        ),
        Which::Failed => {
            let record: Value = serde_json::from_slice(&m.data).unwrap_or_default();
            format!(
                "{}  route {}  {} ({})  attempts {}  {}",
                h("x-herald-reason"),
                h("x-herald-route"),
                h("x-herald-recipient"),
                h("x-herald-channel"),
                record["attempts"],
                h("x-herald-detail")
            )
        }
    }
}

fn full(m: &Delivery) -> String {
    let mut out = String::new();
    for (k, v) in m
        .properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default()
    {
        if let Some(text) = header_text(m.properties.headers(), k.as_str()) {
            out.push_str(&format!("{k}: {text}\n"));
        } else {
            out.push_str(&format!("{k}: {v:?}\n"));
        }
    }
    if let Some(id) = m.properties.message_id() {
        out.push_str(&format!("message_id: {id}\n"));
    }
    out.push('\n');
    match serde_json::from_slice::<Value>(&m.data) {
        Ok(v) => out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => out.push_str(&String::from_utf8_lossy(&m.data)),
    }
    out.push('\n');
    out
}

/// Sends one parked message again; the number of notifications queued, or why it stays.
async fn replay(
    core: &Core,
    settings: &Settings,
    ch: &Channel,
    which: Which,
    m: &Delivery,
) -> Result<usize, String> {
    let deliveries = retry::deliveries_queue(settings);
    let (body, id, user, only_route) = match which {
        Which::Rejected => (
            m.data.clone(),
            m.properties.message_id().as_ref().map(|i| i.to_string()),
            header_text(m.properties.headers(), "x-herald-original-user-id"),
            None,
        ),
        Which::Failed => {
            let record: Value =
                serde_json::from_slice(&m.data).map_err(|_| "not a parked record".to_string())?;
            if record["kind"] == "notification" {
                let mut p: Pending = serde_json::from_value(record["notification"].clone())
                    .map_err(|e| format!("cannot read the notification: {e}"))?;
                p.attempts = 0;
                p.first_failure = None;
                p.last_error = None;
                p.replay = true;
                retry::enqueue(ch, &deliveries, &p)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(1);
            }
            let body = serde_json::to_vec(&record["event"]).unwrap_or_default();
            let route = record["problem"]["route"].as_str().map(str::to_owned);
            (
                body,
                record["eventId"].as_str().map(str::to_owned),
                None,
                route,
            )
        }
    };
    let id = id.ok_or("the message has no id")?;
    let event = core
        .intake
        .accept(&body, EventId::new(id))
        .map_err(|r| format!("still rejected: {r}"))?;
    if let Some(user) = &user {
        if !core.publishers.allows(user, event.event_type.as_str()) {
            return Err(format!(
                "still rejected: user {user} may not publish {}",
                event.event_type
            ));
        }
    } else if which == Which::Rejected {
        return Err("still rejected: the broker did not vouch for a publisher".into());
    }
    let routing = core.engine.route(&event);
    let wanted = |route: &str| only_route.as_deref().is_none_or(|r| r == route);
    if let Some(p) = routing.problems.iter().find(|p| wanted(p.route())) {
        return Err(format!("still fails: {p}"));
    }
    let mut queued = 0;
    for n in routing
        .notifications
        .into_iter()
        .filter(|n| wanted(&n.route))
    {
        retry::enqueue(ch, &deliveries, &Pending::new(n, &event))
            .await
            .map_err(|e| e.to_string())?;
        queued += 1;
    }
    Ok(queued)
}

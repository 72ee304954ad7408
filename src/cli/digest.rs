//! `herald digest preview|send`: what a weekly subscription would send, and sending one now.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::ledger::{emit, open};
use crate::core::Core;
use crate::deliver::Deliverer;
use crate::deliver::webhook::WebhookSender;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::route::subscription::{Subscription, title};
use crate::serve::Settings;
use crate::serve::digest::{Sender, registers, render};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Prints the digest as each recipient would get it: by default that of the latest
    /// scheduled time, built from the custody register as it stood then. Nothing is sent.
    Preview {
        /// The subscription's name in routes.toml.
        name: String,
        /// The digest due at the latest scheduled time at or before this instant: RFC 3339,
        /// a date (midnight, London time) or a span back from now (7d).
        #[arg(long, value_parser = super::ledger::parse_instant)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Sends the digest now, as the register stands now, to every recipient of the
    /// subscription, and records it in the ledger (the weekly one is sent all the same).
    Send {
        /// The subscription's name in routes.toml.
        name: String,
    },
}

pub async fn run(core: &Core, url: String, action: Action) -> ExitCode {
    let name = match &action {
        Action::Preview { name, .. } | Action::Send { name } => name,
    };
    let Some(sub) = core.subscriptions.iter().find(|s| &*s.name == name) else {
        let known: Vec<&str> = core.subscriptions.iter().map(|s| &*s.name).collect();
        eprintln!(
            "error: no subscription named {} in routes.toml (there are: {})",
            super::table::printable(name),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    let result = match action {
        Action::Preview { as_of, .. } => preview(core, &url, sub, as_of).await,
        Action::Send { .. } => send(core, &url, sub).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// String error: one line for the operator, printed before exit status 1.
async fn preview(
    core: &Core,
    url: &str,
    sub: &Subscription,
    as_of: Option<DateTime<Utc>>,
) -> Result<ExitCode, String> {
    let due = sub.schedule.last_due(as_of.unwrap_or_else(Utc::now));
    let store = open(url).await?;
    let (now, week_ago) = registers(&store, sub, due)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    let lines = sub.lines(&now, &week_ago);
    let count = lines.len();
    let mut out = format!(
        "digest {}: {} ({}), due {}; {count} {}\n",
        sub.name,
        title(sub.report),
        sub.report.as_str(),
        due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        if count == 1 { "person" } else { "people" }
    );
    for r in &sub.to {
        let parts = render(core, sub, due, &lines, r, false)?;
        out.push_str(&format!(
            "\n--- to {} ({}) ---\nSubject: {}\n\n{}",
            r.id,
            r.email
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            parts.subject,
            parts.text
        ));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    emit(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

// String error: one line for the operator, printed before exit status 1.
async fn send(core: &Core, url: &str, sub: &Subscription) -> Result<ExitCode, String> {
    let settings = Settings::new(&core.config, |k| std::env::var(k).ok());
    let email = settings.email_sender().map_err(|e| e.to_string())?;
    let (webhook, _) = WebhookSender::new(&core.engine.directory, settings.webhook_timeout, |k| {
        std::env::var(k).ok()
    })
    .map_err(|e| e.to_string())?;
    let metrics = Metrics::new();
    let deliverer = Deliverer {
        email,
        webhook,
        guard: settings.guard(&metrics),
    };
    let store = open(url).await?;
    let ledger = Ledger::start(store.clone(), metrics.clone());
    let now = Utc::now();
    // As the register stands now: the digest's own instant, and its own entry in the ledger.
    let due = now;
    let sender = Sender {
        core,
        ledger: &ledger,
        deliverer: &deliverer,
        metrics: &metrics,
        retry: &settings.retry_schedule,
    };
    let sent = sender
        .claim_and_send(sub, due, now)
        .await
        .map_err(|e| e.to_string())?;
    drop(ledger);
    let delivered = metrics
        .notifications
        .with_label_values(&[&sub.name, "email", "delivered"])
        .get();
    store.close().await;
    let wanted = sub.to.len() as u64;
    if !sent {
        eprintln!(
            "error: {} is recorded already: nothing sent",
            sub.message_id(due)
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "digest {} as of {}: delivered to {delivered} of {wanted} recipient(s); `herald ledger show {}` tells each one's story",
        sub.name,
        due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        sub.message_id(due)
    );
    if delivered < wanted {
        println!(
            "what failed for a while is tried again by a running `herald serve` on its retry schedule; what failed for good stays parked in the ledger"
        );
    }
    Ok(if delivered == wanted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! The service's side of the ledger: opening it (waiting while it cannot be reached), the
//! state rebuilt from it at start-up (endpoints disabled after 410 Gone, notifications waiting
//! for a retry), the parked gauge it keeps, and the background pruning by age.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Settings;
use crate::core::{Core, Live};
use crate::deliver::guard::{Guard, State};
use crate::ledger::{Health, LedgerError, Store};
use crate::metrics::Metrics;

/// Events pruned per transaction, so pruning never holds the writer up for long.
const PRUNE_BATCH: i64 = 1_000;
/// How often pruning looks for events past their time.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Opens the ledger; while the store cannot be opened (PostgreSQL down, a SQLite file in a
/// folder Herald may not write), says so once and tries again every few seconds until it can
/// or `stop`. A URL that names no store Herald knows, a SQLite folder that cannot be created,
/// or migrations that cannot apply, fail at once.
pub async fn open(
    settings: &Settings,
    health: &Health,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<Option<Store>, LedgerError> {
    let mut told = false;
    loop {
        match Store::open(&settings.ledger_url, settings.ledger_sync, health.clone()).await {
            Ok(store) => {
                if told {
                    info!(ledger = store.shown(), "the ledger is open");
                }
                health.set(None);
                metrics.ledger_up.set(1);
                return Ok(Some(store));
            }
            Err(e @ LedgerError::Open { .. }) => {
                metrics.ledger_up.set(0);
                health.set(Some(e.to_string()));
                if !told {
                    error!(error = %e, "cannot open the ledger; no event is taken until it opens");
                    told = true;
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// What the ledger remembers that the metrics and the breakers need after a restart.
pub async fn restore(store: &Store, guard: &Guard, metrics: &Metrics) -> Result<(), LedgerError> {
    let disabled = store.disabled_endpoints().await?;
    for (recipient, channel) in &disabled {
        guard.disable(&format!("{recipient}/{channel}"));
        metrics
            .endpoint_state
            .with_label_values(&[recipient.as_str(), channel.as_str()])
            .set(State::Disabled as i64);
    }
    let waiting = store.waiting().await?;
    let now = Utc::now();
    for w in &waiting {
        metrics.waiting.start(
            &w.key,
            &w.route,
            w.first_failure_at.unwrap_or(now),
            w.deadline,
        );
    }
    refresh_parked(store, metrics).await;
    if !disabled.is_empty() || !waiting.is_empty() {
        info!(
            endpoints_disabled = disabled.len(),
            waiting_for_retry = waiting.len(),
            "state restored from the ledger"
        );
    }
    Ok(())
}

/// `herald_notifications_parked` from the ledger's count, per route.
pub async fn refresh_parked(store: &Store, metrics: &Metrics) {
    match store.parked_per_route().await {
        Ok(rows) => {
            metrics.parked.reset();
            for (route, n) in rows {
                metrics.parked.with_label_values(&[&route]).set(n);
            }
        }
        Err(e) => debug!(error = %e, "cannot read the parked notifications from the ledger"),
    }
}

/// `herald_authority_register_pairs` from the register, as it stands now.
pub async fn refresh_register(store: &Store, core: &Core, metrics: &Metrics) {
    let seeded = |person: &str, rep: &str| core.engine.directory.seeded(person, rep);
    match store.authority_size(Utc::now(), &seeded).await {
        Ok((pairs, authorised)) => {
            metrics
                .authority_pairs
                .with_label_values(&["authorised"])
                .set(authorised);
            metrics
                .authority_pairs
                .with_label_values(&["not"])
                .set(pairs - authorised);
        }
        Err(e) => debug!(error = %e, "cannot count the authority register"),
    }
}

/// Removes what is older than `[ledger] keep`, a batch at a time, every ten minutes: events
/// with what was made of them, and the register's rows of pairs no longer authorised.
pub async fn prune(
    store: Store,
    live: Live,
    keep: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let Ok(keep) = chrono::Duration::from_std(keep) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let before = Utc::now() - keep;
        let core = live.current();
        let seeded = |person: &str, rep: &str| core.engine.directory.seeded(person, rep);
        let mut after = 0;
        loop {
            match store
                .prune_authority(before, Utc::now(), PRUNE_BATCH, after, &seeded)
                .await
            {
                Ok((_, None)) => break,
                Ok((n, Some(next))) => {
                    metrics
                        .authority_pruned
                        .with_label_values::<&str>(&[])
                        .inc_by(n);
                    after = next;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot prune the authority register now; trying again later");
                    break;
                }
            }
        }
        match store.prune_custody(before).await {
            Ok(0) => {}
            Ok(n) => {
                info!(
                    rows = n,
                    "custody register entries of people out of custody for longer than [ledger] keep removed"
                )
            }
            Err(e) => {
                warn!(error = %e, "cannot prune the custody register now; trying again later")
            }
        }
        loop {
            match store.prune(before, PRUNE_BATCH).await {
                Ok(0) => break,
                Ok(n) => {
                    metrics
                        .ledger_pruned
                        .with_label_values::<&str>(&[])
                        .inc_by(n);
                    // Room for the writer between batches.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot prune the ledger now; trying again later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY.saturating_sub(Duration::from_secs(60))) => {}
        }
    }
}

//! What the operator's console shows at a glance and changes: events in and notifications out
//! per minute, what is parked, retrying or refused, the notifications at risk of missing their
//! deadline, the endpoints' states (and an operator's disabling or enabling of one), and the
//! audit trail. Each query reads through an index docs/ledger.md lists.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::Row;

use super::read::{FOUND_COLUMNS, Found, found};
use super::{LedgerError, OPEN, Status, Store, insert_audit, ms, time};

/// One minute of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Minute {
    /// The minute's start.
    pub at: DateTime<Utc>,
    /// Events received.
    pub events: i64,
    /// Notifications delivered.
    pub delivered: i64,
}

/// Counts of what needs an operator's eye.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Events received in the last 24 hours.
    pub events_24h: i64,
    /// Events refused at the intake in the last 24 hours.
    pub rejected_24h: i64,
    /// Notifications refused for good or that could not be made (in the failed queue).
    pub parked: i64,
    /// Notifications whose retry schedule ran out (in the failed queue).
    pub expired: i64,
    /// Notifications waiting for a retry.
    pub retrying: i64,
    /// Notifications being delivered now.
    pub pending: i64,
}

/// An endpoint's state as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EndpointRow {
    pub recipient: String,
    pub channel: String,
    /// `closed`, `open` or `disabled`.
    pub state: String,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: Option<String>,
}

/// How far back a delivered notification is looked for, from the start of the per-minute
/// window: one delivered in the window but made longer ago than this (a retry hours later) is
/// not in the chart.
pub const MADE_BEFORE_WINDOW: Duration = Duration::hours(1);

impl Store {
    /// Events received and notifications delivered in each minute of `[since, now)`, one entry
    /// per minute, oldest first.
    pub async fn per_minute(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Minute>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let start = ms(since).div_euclid(60_000);
        let minutes = usize::try_from((ms(now).div_euclid(60_000) - start + 1).max(0))
            .unwrap_or(0)
            .min(24 * 60);
        let mut out: Vec<Minute> = (0..minutes)
            .map(|i| Minute {
                at: time((start + i as i64) * 60_000),
                events: 0,
                delivered: 0,
            })
            .collect();
        let events = sqlx::query(
            "SELECT received_at / 60000, COUNT(*) FROM events WHERE received_at >= $1 \
             AND received_at < $2 GROUP BY received_at / 60000",
        )
        .bind(start * 60_000)
        .bind(ms(now))
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        let delivered = sqlx::query(
            "SELECT delivered_at / 60000, COUNT(*) FROM notifications WHERE created_at >= $1 \
             AND delivered_at >= $2 AND delivered_at < $3 GROUP BY delivered_at / 60000",
        )
        .bind(start * 60_000 - MADE_BEFORE_WINDOW.num_milliseconds())
        .bind(start * 60_000)
        .bind(ms(now))
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        for (rows, events) in [(events, true), (delivered, false)] {
            for r in rows {
                let minute: i64 = r.try_get(0).map_err(err)?;
                let n: i64 = r.try_get(1).map_err(err)?;
                if let Some(m) = usize::try_from(minute - start)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                {
                    if events {
                        m.events = n;
                    } else {
                        m.delivered = n;
                    }
                }
            }
        }
        Ok(out)
    }

    /// What needs an operator's eye, counted at `now`.
    pub async fn totals(&self, now: DateTime<Utc>) -> Result<Totals, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let day = ms(now - Duration::hours(24));
        let events = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0) \
             FROM events WHERE received_at >= $1",
        )
        .bind(day)
        .fetch_one(self.pool())
        .await
        .map_err(err)?;
        let mut totals = Totals {
            events_24h: events.try_get(0).map_err(err)?,
            rejected_24h: events.try_get(1).map_err(err)?,
            ..Totals::default()
        };
        let open = sqlx::query(&format!(
            "SELECT status, COUNT(*) FROM notifications WHERE {OPEN} GROUP BY status"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        for r in open {
            let status: String = r.try_get(0).map_err(err)?;
            let n: i64 = r.try_get(1).map_err(err)?;
            match status.parse::<Status>() {
                Ok(Status::Parked) => totals.parked = n,
                Ok(Status::Expired) => totals.expired = n,
                Ok(Status::Retrying) => totals.retrying = n,
                Ok(Status::Pending) => totals.pending = n,
                _ => {}
            }
        }
        Ok(totals)
    }

    /// Undelivered notifications whose deadline falls before `now + within` (those already
    /// past it first), at most `limit`, soonest deadline first.
    pub async fn at_risk(
        &self,
        now: DateTime<Utc>,
        within: Duration,
        limit: i64,
    ) -> Result<Vec<Found>, LedgerError> {
        let sql = format!(
            "SELECT {FOUND_COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.{OPEN} AND n.deadline IS NOT NULL AND n.deadline < $1 \
             ORDER BY n.deadline, n.key LIMIT $2"
        );
        let query = sqlx::query(&sql).bind(ms(now + within)).bind(limit);
        self.rows(query, found).await
    }

    /// Every endpoint whose state the ledger holds (one that never changed state is closed and
    /// not here).
    pub async fn endpoints(&self) -> Result<Vec<EndpointRow>, LedgerError> {
        let query = sqlx::query(
            "SELECT recipient, channel, state, since, reason FROM endpoints \
             ORDER BY recipient, channel",
        );
        self.rows(query, |r| {
            Ok(EndpointRow {
                recipient: r.try_get(0)?,
                channel: r.try_get(1)?,
                state: r.try_get(2)?,
                since: time(r.try_get(3)?),
                reason: r.try_get(4)?,
            })
        })
        .await
    }

    /// The notifications to `recipient` by `channel` made since `since` that failed at least
    /// once, the most recent first, at most `limit`.
    pub async fn failures_of(
        &self,
        recipient: &str,
        channel: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Found>, LedgerError> {
        let sql = format!(
            "SELECT {FOUND_COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.recipient = $1 AND n.created_at >= $2 AND n.channel = $3 \
             AND n.first_failure_at IS NOT NULL ORDER BY n.created_at DESC, n.key LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(recipient)
            .bind(ms(since))
            .bind(channel)
            .bind(limit);
        self.rows(query, found).await
    }

    /// An operator sets an endpoint's state (`disabled`, or `closed` to enable it again), with
    /// an audit entry, in one transaction. Every instance takes it up at its next heartbeat.
    pub async fn set_endpoint(
        &self,
        recipient: &str,
        channel: &str,
        state: &str,
        at: DateTime<Utc>,
        actor: &str,
    ) -> Result<(), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let (action, reason) = match state {
            "disabled" => ("disable", format!("disabled by {actor}")),
            _ => ("enable", format!("enabled by {actor}")),
        };
        let mut tx = self.pool().begin().await.map_err(err)?;
        sqlx::query(
            "INSERT INTO endpoints (recipient, channel, state, since, reason) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (recipient, channel) DO UPDATE \
             SET state = excluded.state, since = excluded.since, reason = excluded.reason",
        )
        .bind(recipient)
        .bind(channel)
        .bind(state)
        .bind(ms(at))
        .bind(&reason)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        insert_audit(
            &mut tx,
            at,
            actor,
            action,
            &format!("{recipient}/{channel}"),
            None,
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// The latest audit entries, the most recent first.
    pub async fn audit_trail(&self, limit: i64) -> Result<Vec<AuditEntry>, LedgerError> {
        let query = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM audit ORDER BY at DESC, id DESC \
             LIMIT $1",
        )
        .bind(limit);
        self.rows(query, |r| {
            Ok(AuditEntry {
                at: time(r.try_get(0)?),
                actor: r.try_get(1)?,
                action: r.try_get(2)?,
                subject: r.try_get(3)?,
                detail: r.try_get(4)?,
            })
        })
        .await
    }
}

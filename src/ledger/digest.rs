//! The weekly digests' entries: each digest is an event of Herald's own (publisher `herald`,
//! `message_id` `digest:<subscription>@<scheduled time>`) with one notification per
//! recipient, like any other. Claiming a digest is inserting that event: the ledger's unique
//! index on routed events lets exactly one instance do it, however many run.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{LedgerError, NotificationRecord, OPEN, Store, ms, time};
use crate::route::subscription::DIGEST_PUBLISHER;

/// How long an instance holds a digest notification it is trying: longer than any one
/// attempt can take (an SMTP exchange times out well before).
pub const LEASE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// A digest to claim: its event and its notifications, pending.
#[derive(Debug, Clone)]
pub struct DigestClaim {
    pub message_id: String,
    /// `digest.in-prison`, ...
    pub event_type: String,
    /// The scheduled instant.
    pub due: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub notifications: Vec<NotificationRecord>,
}

/// A digest notification not delivered yet.
#[derive(Debug, Clone)]
pub struct OpenDigest {
    pub key: String,
    /// The subscription's name.
    pub route: String,
    pub recipient: String,
    /// The digest's event: `digest:<subscription>@<scheduled time>`.
    pub message_id: String,
    pub attempts: i64,
    pub first_failure_at: Option<DateTime<Utc>>,
    /// When the ledger last changed it (the store's clock).
    pub updated_at: i64,
}

impl Store {
    /// Records the digest and its notifications unless it is recorded already (by this
    /// instance or another): true when this call recorded it, and so must send it.
    pub async fn claim_digest(&self, claim: &DigestClaim) -> Result<bool, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut tx = self.pool().begin().await.map_err(err)?;
        let id: Option<i64> = sqlx::query(
            "INSERT INTO events (publisher, message_id, event_type, version, occurred_at, \
             received_at, outcome, reason) VALUES ($1, $2, $3, NULL, $4, $5, 'routed', NULL) \
             ON CONFLICT (message_id, publisher) WHERE outcome = 'routed' DO NOTHING \
             RETURNING id",
        )
        .bind(DIGEST_PUBLISHER)
        .bind(&claim.message_id)
        .bind(&claim.event_type)
        .bind(ms(claim.due))
        .bind(ms(claim.now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(err)?;
        let Some(id) = id else {
            tx.rollback().await.map_err(err)?;
            return Ok(false);
        };
        for n in &claim.notifications {
            sqlx::query(
                "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
                 channel, sla_rule, deadline, created_at, status, reason, attempts, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(&n.key)
            .bind(id)
            .bind(&n.route)
            .bind(&n.recipient)
            .bind(n.class())
            .bind(&n.channel)
            .bind(n.sla_rule.as_deref())
            .bind(n.deadline.map(ms))
            .bind(ms(claim.now))
            .bind(n.status.as_str())
            .bind(n.reason.as_deref())
            // Leased to the instance that claims it, for its first attempt.
            .bind(ms(Utc::now() + LEASE))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(true)
    }

    /// Whether any of these digests (by `message_id`) is recorded.
    pub async fn digests_recorded(&self, message_ids: &[String]) -> Result<bool, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let marks = (0..message_ids.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT COUNT(*) FROM events WHERE publisher = $1 AND outcome = 'routed' \
             AND message_id IN ({marks})"
        );
        let mut query = sqlx::query(&sql).bind(DIGEST_PUBLISHER);
        for id in message_ids {
            query = query.bind(id);
        }
        let n: i64 = query
            .fetch_one(self.pool())
            .await
            .map_err(err)?
            .try_get(0)
            .map_err(err)?;
        Ok(n > 0)
    }

    /// Digest notifications still pending or retrying that the ledger has not changed since
    /// `idle_since`: an instance that claimed them stopped before it finished, or their
    /// retry is due.
    pub async fn open_digests(
        &self,
        idle_since: DateTime<Utc>,
    ) -> Result<Vec<OpenDigest>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        // The open notifications' index, stated so SQLite uses it.
        let sql = format!(
            "SELECT n.key, n.route, n.recipient, e.message_id, n.attempts, n.first_failure_at, \
             n.updated_at FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.{OPEN} AND n.status IN ('pending', 'retrying') AND n.updated_at < $1 \
             AND e.publisher = $2 AND e.outcome = 'routed'"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(idle_since))
            .bind(DIGEST_PUBLISHER)
            .fetch_all(self.pool())
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok(OpenDigest {
                    key: r.try_get(0)?,
                    route: r.try_get(1)?,
                    recipient: r.try_get(2)?,
                    message_id: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    first_failure_at: r.try_get::<Option<i64>, _>(5)?.map(time),
                    updated_at: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    /// Takes an open digest notification for one attempt: true when no other instance took
    /// it since it was read (its `updated_at` is still `seen`). Its `updated_at` moves
    /// [`LEASE`] ahead, so no other instance takes it while this attempt runs; the attempt's
    /// outcome sets it to the time it is written.
    pub async fn take_digest(&self, key: &str, seen: i64) -> Result<bool, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let done = sqlx::query(
            "UPDATE notifications SET updated_at = $1 WHERE key = $2 AND updated_at = $3 \
             AND status IN ('pending', 'retrying')",
        )
        .bind(ms(Utc::now() + LEASE).max(seen + 1))
        .bind(key)
        .bind(seen)
        .execute(self.pool())
        .await
        .map_err(err)?;
        Ok(done.rows_affected() == 1)
    }
}

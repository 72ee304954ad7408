//! What several instances of Herald share through the ledger besides the events themselves:
//! which instances are alive, which event each is handling now, and each endpoint's state.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{LedgerError, Store, ms, time};

/// An endpoint's state as the ledger holds it, written by whichever instance saw it change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub recipient: String,
    pub channel: String,
    /// `closed`, `open` or `disabled`.
    pub state: String,
    pub since: DateTime<Utc>,
}

impl Store {
    /// Says `instance` is alive at `now`; returns the ids of the instances seen since
    /// `alive_since`, this one included, in order.
    pub async fn heartbeat(
        &self,
        instance: &str,
        started_at: DateTime<Utc>,
        now: DateTime<Utc>,
        alive_since: DateTime<Utc>,
    ) -> Result<Vec<String>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        sqlx::query(
            "INSERT INTO instances (id, started_at, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(instance)
        .bind(ms(started_at))
        .bind(ms(now))
        .execute(self.pool())
        .await
        .map_err(err)?;
        let rows = sqlx::query("SELECT id FROM instances WHERE seen_at >= $1 ORDER BY id")
            .bind(ms(alive_since))
            .fetch_all(self.pool())
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Forgets instances not seen since `before`, with what they held.
    pub async fn forget_instances(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        sqlx::query(
            "DELETE FROM claims WHERE instance IN \
             (SELECT id FROM instances WHERE seen_at < $1)",
        )
        .bind(ms(before))
        .execute(self.pool())
        .await
        .map_err(err)?;
        let gone = sqlx::query("DELETE FROM instances WHERE seen_at < $1")
            .bind(ms(before))
            .execute(self.pool())
            .await
            .map_err(err)?;
        Ok(gone.rows_affected())
    }

    /// `instance` is stopping: its row and anything it still held go.
    pub async fn leave(&self, instance: &str) -> Result<(), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        sqlx::query("DELETE FROM claims WHERE instance = $1")
            .bind(instance)
            .execute(self.pool())
            .await
            .map_err(err)?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(instance)
            .execute(self.pool())
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Takes the handling of `(publisher, message_id)` for `instance`: true when it is this
    /// instance's now (no one held it, this instance did, or its holder has not been seen
    /// since `alive_since`); false while another live instance holds it.
    pub async fn claim(
        &self,
        publisher: &str,
        message_id: &str,
        instance: &str,
        now: DateTime<Utc>,
        alive_since: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let taken = sqlx::query(
            "INSERT INTO claims (publisher, message_id, instance, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (publisher, message_id) DO UPDATE SET instance = excluded.instance, \
             at = excluded.at WHERE claims.instance = excluded.instance OR NOT EXISTS \
             (SELECT 1 FROM instances i WHERE i.id = claims.instance AND i.seen_at >= $5) \
             RETURNING instance",
        )
        .bind(publisher)
        .bind(message_id)
        .bind(instance)
        .bind(ms(now))
        .bind(ms(alive_since))
        .fetch_optional(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(taken.is_some())
    }

    /// Ends `instance`'s handling of `(publisher, message_id)`.
    pub async fn release(
        &self,
        publisher: &str,
        message_id: &str,
        instance: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "DELETE FROM claims WHERE publisher = $1 AND message_id = $2 AND instance = $3",
        )
        .bind(publisher)
        .bind(message_id)
        .bind(instance)
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(())
    }

    /// Every endpoint's state changed since `after` (milliseconds, exclusive), oldest first.
    pub async fn endpoint_states(&self, after: i64) -> Result<Vec<EndpointState>, LedgerError> {
        let rows = sqlx::query(
            "SELECT recipient, channel, state, since FROM endpoints WHERE since > $1 \
             ORDER BY since",
        )
        .bind(after)
        .fetch_all(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(rows
            .iter()
            .map(|r| EndpointState {
                recipient: r.get(0),
                channel: r.get(1),
                state: r.get(2),
                since: time(r.get(3)),
            })
            .collect())
    }
}

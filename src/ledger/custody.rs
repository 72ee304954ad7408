//! The custody register's rows: written with their event (the writer), read back for the
//! weekly digests and pruned once they no longer decide anything.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{LedgerError, Store, ms, time};
use crate::route::custody::{Entry, Person, Recorded, fold};

impl Store {
    /// Every entry of the custody register that had happened by `until` (all of them when
    /// `None`), in no particular order: [`fold`] orders them.
    pub async fn custody_entries(
        &self,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<Recorded>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let rows = sqlx::query(
            "SELECT occurred_at, message_id, entry, id FROM custody WHERE occurred_at <= $1",
        )
        .bind(until.map_or(i64::MAX, ms))
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let text: String = r.try_get(2).map_err(err)?;
            let entry: Entry =
                serde_json::from_str(&text).map_err(|e| err(sqlx::Error::Decode(Box::new(e))))?;
            entries.push(Recorded {
                occurred_at: time(r.try_get(0).map_err(err)?),
                event: r.try_get(1).map_err(err)?,
                row: r.try_get(3).map_err(err)?,
                entry,
            });
        }
        Ok(entries)
    }

    /// The custody register as it stood at `at`.
    pub async fn custody_at(&self, at: DateTime<Utc>) -> Result<Vec<Person>, LedgerError> {
        Ok(fold(&self.custody_entries(Some(at)).await?, at))
    }

    /// Deletes the entries of people out of custody whose latest entry happened before
    /// `before`: they decide nothing any more. Someone in custody keeps their history,
    /// however old. How many rows went.
    pub async fn prune_custody(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let entries = self.custody_entries(None).await?;
        let people = fold(&entries, DateTime::<Utc>::MAX_UTC);
        let mut deleted = 0;
        for p in people.iter().filter(|p| !p.in_custody && p.latest < before) {
            for chunk in p.rows.chunks(500) {
                // The store's own integers, written into the statement.
                let list = chunk
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!("DELETE FROM custody WHERE id IN ({list})");
                deleted += sqlx::query(&sql)
                    .execute(self.pool())
                    .await
                    .map_err(err)?
                    .rows_affected();
            }
        }
        Ok(deleted)
    }
}

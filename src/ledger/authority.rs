//! The authority register's rows: written with their event (the writer), read back for the
//! standing of a person's representatives at the time of sending, listed for
//! `herald authority list`, counted for the metrics and pruned after `[ledger] keep`.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, LedgerError, Store, ms, time};
use crate::route::authority::{Change, ChangeKind, standing};

/// A register row as `herald authority list` shows it.
#[derive(Debug, Clone)]
pub struct AuthorityRow {
    pub change: Change,
    /// The login that published the register event.
    pub publisher: String,
    pub received_at: DateTime<Utc>,
}

const COLUMNS: &str = "person, representative, kind, effective_from, valid_until, occurred_at, \
                       message_id, publisher, received_at";

fn date(s: &str) -> Result<NaiveDate, sqlx::Error> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn row(r: &AnyRow) -> Result<AuthorityRow, sqlx::Error> {
    let from = date(&r.try_get::<String, _>(3)?)?;
    let kind = match r.try_get::<String, _>(2)?.as_str() {
        "grant" => ChangeKind::Grant {
            from,
            until: r
                .try_get::<Option<String>, _>(4)?
                .as_deref()
                .map(date)
                .transpose()?,
        },
        _ => ChangeKind::Withdrawal { from },
    };
    Ok(AuthorityRow {
        change: Change {
            person: r.try_get(0)?,
            representative: r.try_get(1)?,
            kind,
            occurred_at: time(r.try_get(5)?),
            event: r.try_get(6)?,
        },
        publisher: r.try_get(7)?,
        received_at: time(r.try_get(8)?),
    })
}

impl Store {
    /// Lookups by a value are planned for that value on PostgreSQL: a plan prepared once,
    /// while the table was nearly empty, would scan it whole at every lookup.
    fn planned_each_time(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    /// Every change recorded for these people (`NOMS:A1234BC`; the register is kept by NOMS
    /// number, so other identifiers find nothing).
    pub async fn authority_for(&self, persons: &[String]) -> Result<Vec<Change>, LedgerError> {
        let mut changes = Vec::new();
        for person in persons.iter().filter(|p| p.starts_with("NOMS:")) {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM authority WHERE person = $1"
            ))
            .bind(person)
            .persistent(!self.planned_each_time())
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.error(&e))?;
            for r in &rows {
                changes.push(row(r).map_err(|e| self.error(&e))?.change);
            }
        }
        Ok(changes)
    }

    /// The register's rows about a person, a representative, or both, in the order they
    /// apply (when they happened).
    pub async fn authority_rows(
        &self,
        person: Option<&str>,
        representative: Option<&str>,
    ) -> Result<Vec<AuthorityRow>, LedgerError> {
        let mut sql = format!("SELECT {COLUMNS} FROM authority WHERE 1 = 1");
        let mut n = 0;
        for (column, value) in [("person", person), ("representative", representative)] {
            if value.is_some() {
                n += 1;
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        sql.push_str(" ORDER BY person, representative, occurred_at, id");
        let mut query = sqlx::query(&sql).persistent(!self.planned_each_time());
        for value in [person, representative].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.error(&e))?;
        rows.iter()
            .map(row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(&e))
    }

    /// How many pairs (person, representative) the register holds, and how many of them are
    /// authorised at `at`; `seeded` says whether routes.toml's `acts_for` names a pair.
    pub async fn authority_size(
        &self,
        at: DateTime<Utc>,
        seeded: &(dyn Fn(&str, &str) -> bool + Sync),
    ) -> Result<(i64, i64), LedgerError> {
        let rows = self.authority_rows(None, None).await?;
        let (mut pairs, mut authorised) = (0, 0);
        for pair in rows.chunk_by(|a, b| {
            a.change.person == b.change.person && a.change.representative == b.change.representative
        }) {
            let c = &pair[0].change;
            pairs += 1;
            let s = standing(
                pair.iter().map(|r| &r.change),
                seeded(&c.person, &c.representative),
                at,
            );
            authorised += i64::from(s.authorised());
        }
        Ok((pairs, authorised))
    }

    /// Deletes the rows of pairs not authorised at `now` whose newest row was received
    /// before `before`, looking at up to `batch` pairs after the cursor `after` (0 to start);
    /// how many rows went, and the cursor to go on from (`None`: no pair is left to look at).
    /// A pair still authorised keeps its history, however old.
    pub async fn prune_authority(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        batch: i64,
        after: i64,
        seeded: &(dyn Fn(&str, &str) -> bool + Sync),
    ) -> Result<(u64, Option<i64>), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let candidates = sqlx::query(
            "SELECT person, representative, MIN(id) FROM authority \
             GROUP BY person, representative \
             HAVING MAX(received_at) < $1 AND MIN(id) > $2 ORDER BY MIN(id) LIMIT $3",
        )
        .bind(ms(before))
        .bind(after)
        .bind(batch)
        .persistent(!self.planned_each_time())
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        let mut deleted = 0;
        let mut cursor = None;
        for c in &candidates {
            let (person, representative): (String, String) =
                (c.try_get(0).map_err(err)?, c.try_get(1).map_err(err)?);
            cursor = Some(c.try_get::<i64, _>(2).map_err(err)?);
            let rows = self
                .authority_rows(Some(&person), Some(&representative))
                .await?;
            let s = standing(
                rows.iter().map(|r| &r.change),
                seeded(&person, &representative),
                now,
            );
            // Gone, the rows would leave the pair to `acts_for`: only a pair whose standing
            // is the same without them goes.
            let without = standing([], seeded(&person, &representative), now);
            if s.authorised() || without.authorised() {
                continue;
            }
            let done = sqlx::query(
                "DELETE FROM authority WHERE person = $1 AND representative = $2 \
                 AND received_at < $3",
            )
            .bind(&person)
            .bind(&representative)
            .bind(ms(before))
            .execute(self.pool())
            .await
            .map_err(err)?;
            deleted += done.rows_affected();
        }
        Ok((deleted, cursor))
    }
}

/// One pair of the register: a person and a representative, whether routes.toml's `acts_for`
/// starts them authorised, and the register's rows about them that had happened by the
/// instant asked, in the order they apply.
#[derive(Debug, Clone)]
pub struct Pair {
    pub person: String,
    pub representative: String,
    pub seeded: bool,
    pub rows: Vec<AuthorityRow>,
}

impl Pair {
    /// The pair's standing at `at`.
    pub fn standing(&self, at: DateTime<Utc>) -> crate::route::authority::Standing {
        standing(self.rows.iter().map(|r| &r.change), self.seeded, at)
    }
}

impl Store {
    /// The register for a person, a representative, or both, as it stood at `at`: every pair
    /// the register or the directory's `acts_for` names, with the rows that had happened by
    /// then. What `herald authority list` prints and the console shows.
    pub async fn register(
        &self,
        directory: &crate::directory::Directory,
        person: Option<&str>,
        representative: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Pair>, LedgerError> {
        use crate::directory::RecipientClass;
        let rows = self.authority_rows(person, representative).await?;
        let mut pairs: std::collections::BTreeMap<(String, String), Pair> =
            std::collections::BTreeMap::new();
        let mut pair = |p: &str, r: &str| -> (String, String) {
            let key = (p.to_owned(), r.to_owned());
            pairs.entry(key.clone()).or_insert_with(|| Pair {
                person: p.to_owned(),
                representative: r.to_owned(),
                seeded: directory.seeded(p, r),
                rows: Vec::new(),
            });
            key
        };
        // The pairs routes.toml's acts_for starts the register with.
        for r in directory.of_class(RecipientClass::LegalRep) {
            if representative.is_some_and(|x| x != r.id.as_str()) {
                continue;
            }
            for (kind, value) in &r.acts_for {
                let p = format!("{kind}:{value}");
                if person.is_none_or(|x| x == p) {
                    pair(&p, r.id.as_str());
                }
            }
        }
        // What had happened by then: the register as it stood.
        let mut placed = Vec::new();
        for row in rows.into_iter().filter(|r| r.change.occurred_at <= at) {
            let key = pair(&row.change.person, &row.change.representative);
            placed.push((key, row));
        }
        for (key, row) in placed {
            if let Some(p) = pairs.get_mut(&key) {
                p.rows.push(row);
            }
        }
        Ok(pairs.into_values().collect())
    }
}

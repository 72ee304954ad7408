//! Webhook endpoints' standings as their recipients' contacts hear of them (`endpoint_changes`,
//! migration 0009): each change recorded once however many instances see it, and its notice
//! (the contact's email) taken, sent and marked by one instance, as a digest is claimed
//! (`digest.rs`).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{LedgerError, Store, ms, time};
use crate::notification::{Standing, StandingCause};

/// What became of a change's notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// To be sent.
    Due,
    Sent,
    /// The recipient names no contact.
    None,
    /// Working again, but its contact was not told it was down.
    Unneeded,
    /// A later change came before it was sent.
    Superseded,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Due => "due",
            Notice::Sent => "sent",
            Notice::None => "none",
            Notice::Unneeded => "unneeded",
            Notice::Superseded => "superseded",
        }
    }

    fn parse(text: &str) -> Notice {
        match text {
            "due" => Notice::Due,
            "sent" => Notice::Sent,
            "none" => Notice::None,
            "unneeded" => Notice::Unneeded,
            _ => Notice::Superseded,
        }
    }
}

/// One change of an endpoint's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingChange {
    pub recipient: String,
    pub channel: String,
    /// Its number for the endpoint, from 1.
    pub seq: i64,
    pub standing: Standing,
    pub cause: StandingCause,
    /// When the endpoint entered the standing.
    pub since: DateTime<Utc>,
    pub notice: Notice,
    /// The store's value, to take the notice with ([`Store::take_notice`]).
    pub lease_until: i64,
}

const COLUMNS: &str = "recipient, channel, seq, standing, cause, since, notice, lease_until";

fn change(r: &sqlx::any::AnyRow) -> Result<StandingChange, sqlx::Error> {
    let text = |i: usize| r.try_get::<String, _>(i);
    Ok(StandingChange {
        recipient: text(0)?,
        channel: text(1)?,
        seq: r.try_get(2)?,
        // Written only from these enums; an unknown word (a later build's) reads as working.
        standing: Standing::parse(&text(3)?).unwrap_or(Standing::Working),
        cause: StandingCause::parse(&text(4)?).unwrap_or(StandingCause::Answered),
        since: time(r.try_get(5)?),
        notice: Notice::parse(&text(6)?),
        lease_until: r.try_get(7)?,
    })
}

impl Store {
    /// The last change of each endpoint on `channel`.
    pub async fn latest_standings(
        &self,
        channel: &str,
    ) -> Result<Vec<StandingChange>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM endpoint_changes c WHERE c.channel = $1 AND c.seq = \
             (SELECT MAX(d.seq) FROM endpoint_changes d WHERE d.recipient = c.recipient \
             AND d.channel = c.channel)"
        );
        self.rows(sqlx::query(&sql).bind(channel), change).await
    }

    /// Records that the endpoint `(recipient, channel)` is now `standing` unless its last
    /// change says so already: its number when this call recorded it (exactly one instance
    /// does, however many try at once), `None` when there was nothing to record or another
    /// instance recorded it first. Its notice is `notice`, free to be taken at once.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_standing(
        &self,
        recipient: &str,
        channel: &str,
        standing: Standing,
        cause: StandingCause,
        since: DateTime<Utc>,
        notice: Notice,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let last = sqlx::query(
            "SELECT seq, standing FROM endpoint_changes WHERE recipient = $1 AND channel = $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(recipient)
        .bind(channel)
        .fetch_optional(self.pool())
        .await
        .map_err(err)?;
        let (seq, before) = match last {
            Some(r) => (
                r.try_get::<i64, _>(0).map_err(err)?,
                r.try_get::<String, _>(1).map_err(err)?,
            ),
            None => (0, Standing::Working.as_str().to_owned()),
        };
        if before == standing.as_str() {
            return Ok(None);
        }
        // Another instance that read the same last row writes the same number: one insert
        // goes through, the other changes nothing.
        let done = sqlx::query(
            "INSERT INTO endpoint_changes (recipient, channel, seq, standing, cause, since, \
             recorded_at, notice, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (recipient, channel, seq) DO NOTHING",
        )
        .bind(recipient)
        .bind(channel)
        .bind(seq + 1)
        .bind(standing.as_str())
        .bind(cause.as_str())
        .bind(ms(since))
        .bind(ms(now))
        .bind(notice.as_str())
        .bind(ms(now))
        .execute(self.pool())
        .await
        .map_err(err)?;
        Ok((done.rows_affected() == 1).then_some(seq + 1))
    }

    /// The notices due whose lease ran out by `now`, oldest first.
    pub async fn due_notices(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<StandingChange>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM endpoint_changes WHERE notice = 'due' AND lease_until < $1 \
             ORDER BY recorded_at, seq"
        );
        self.rows(sqlx::query(&sql).bind(ms(now)), change).await
    }

    /// Takes a due notice until `until`: true when no other instance took it since it was
    /// read (its lease is still the one read).
    pub async fn take_notice(
        &self,
        c: &StandingChange,
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE endpoint_changes SET lease_until = $1 WHERE recipient = $2 AND channel = $3 \
             AND seq = $4 AND notice = 'due' AND lease_until = $5",
        )
        .bind(ms(until).max(c.lease_until + 1))
        .bind(&c.recipient)
        .bind(&c.channel)
        .bind(c.seq)
        .bind(c.lease_until)
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(done.rows_affected() == 1)
    }

    /// The notice of the change before `c`, and whether a later change is recorded.
    pub async fn around(&self, c: &StandingChange) -> Result<(Option<Notice>, bool), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let rows = sqlx::query(
            "SELECT seq, notice FROM endpoint_changes WHERE recipient = $1 AND channel = $2 \
             AND seq IN ($3, $4)",
        )
        .bind(&c.recipient)
        .bind(&c.channel)
        .bind(c.seq - 1)
        .bind(c.seq + 1)
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        let mut before = None;
        let mut later = false;
        for r in rows {
            let seq: i64 = r.try_get(0).map_err(err)?;
            if seq < c.seq {
                before = Some(Notice::parse(&r.try_get::<String, _>(1).map_err(err)?));
            } else {
                later = true;
            }
        }
        Ok((before, later))
    }

    /// Ends a taken notice: `sent` (at `now`), or not to be sent.
    pub async fn settle_notice(
        &self,
        c: &StandingChange,
        notice: Notice,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE endpoint_changes SET notice = $1, told_at = $2 WHERE recipient = $3 \
             AND channel = $4 AND seq = $5 AND notice = 'due'",
        )
        .bind(notice.as_str())
        .bind((notice == Notice::Sent).then_some(ms(now)))
        .bind(&c.recipient)
        .bind(&c.channel)
        .bind(c.seq)
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(())
    }

    /// Leaves a taken notice due, to be taken again after `at`.
    pub async fn release_notice(
        &self,
        c: &StandingChange,
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE endpoint_changes SET lease_until = $1 WHERE recipient = $2 AND channel = $3 \
             AND seq = $4 AND notice = 'due'",
        )
        .bind(ms(at))
        .bind(&c.recipient)
        .bind(&c.channel)
        .bind(c.seq)
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(())
    }

    /// Every change of one endpoint, oldest first (the console, and tests).
    pub async fn standings_of(
        &self,
        recipient: &str,
        channel: &str,
    ) -> Result<Vec<StandingChange>, LedgerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM endpoint_changes WHERE recipient = $1 AND channel = $2 \
             ORDER BY seq"
        );
        self.rows(sqlx::query(&sql).bind(recipient).bind(channel), change)
            .await
    }

    /// A notification that went by email instead of its webhook: its row says so.
    pub async fn record_channel(&self, key: &str, channel: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE notifications SET channel = $1 WHERE key = $2")
            .bind(channel)
            .bind(key)
            .execute(self.pool())
            .await
            .map_err(|e| self.error(&e))?;
        Ok(())
    }
}

//! Escalations before a deadline is missed (migration 0008): written with their event's
//! notifications ([`super::Ledger::handled_escalating`]), then found due, claimed by exactly
//! one instance, and ended here. An escalation sent is also a notification row of its event,
//! so it is in the event's story, the console and the report like any other.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{AttemptRecord, LedgerError, Status, Store, ms, time};

/// One escalation to record with its event: one recipient, one channel, for one
/// notification left undelivered.
#[derive(Debug, Clone)]
pub struct EscalationRecord {
    /// Derived from the notification's key, the recipient and the channel: the same
    /// notification handled again adds no second row.
    pub key: String,
    pub notification_key: String,
    pub route: String,
    pub recipient: String,
    pub recipient_class: String,
    pub channel: String,
    /// The route's `escalate.at` (`75%`, `2h before`).
    pub rule: String,
    pub template: String,
    pub due_at: DateTime<Utc>,
    /// The template data as JSON, already redacted for the recipient's class.
    pub data: String,
}

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscalationState {
    /// Not due yet, or due and not yet taken; after a failed attempt, waiting for the next.
    Waiting,
    /// Claimed by an instance that is sending it.
    Sending,
    Sent,
    /// Refused for good, or still failing when the deadline came.
    Failed,
    /// The notification was delivered (or is no longer owed) before the escalation went.
    NotNeeded,
}

impl EscalationState {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationState::Waiting => "waiting",
            EscalationState::Sending => "sending",
            EscalationState::Sent => "sent",
            EscalationState::Failed => "failed",
            EscalationState::NotNeeded => "not_needed",
        }
    }
}

/// A claimed escalation with what the ledger holds of its notification now: the why.
#[derive(Debug, Clone)]
pub struct DueEscalation {
    pub key: String,
    pub notification_key: String,
    pub route: String,
    pub recipient: String,
    pub channel: String,
    pub template: String,
    pub due_at: DateTime<Utc>,
    /// The escalation's own attempts so far.
    pub attempts: i64,
    /// `None` once cleared (it should not be, while it is claimed).
    pub data: Option<String>,
    /// The notification's status; `None` when the ledger no longer has it.
    pub status: Option<Status>,
    pub notification_attempts: i64,
    /// The notification's last failure in words, or why it was not made.
    pub reason: Option<String>,
    /// The outcome of its last attempt (`http-retryable`), if it had one.
    pub last_outcome: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
}

/// How one try of an escalation ended, to record.
#[derive(Debug, Clone)]
pub struct EscalationEnd {
    pub key: String,
    /// The instance that claimed it: the row changes only while that claim holds.
    pub instance: String,
    /// `Waiting` (to try again at `next`), `Sent`, `Failed` or `NotNeeded`.
    pub state: EscalationState,
    pub next: Option<DateTime<Utc>>,
    /// Its attempts so far; `None` leaves them as they are.
    pub attempts: Option<i64>,
    pub reason: Option<String>,
    pub now: DateTime<Utc>,
    /// The escalation as a notification of its event: its status and this attempt (none
    /// for one not needed).
    pub sent: Option<(Status, AttemptRecord)>,
}

impl Store {
    /// Every waiting escalation whose notification was delivered (or skipped: no longer
    /// owed) is not needed: marked so, its data cleared. Returns the route of each.
    pub async fn escalations_not_needed(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let rows = sqlx::query(
            "UPDATE escalations SET state = 'not_needed', data = NULL, updated_at = $1 \
             WHERE state = 'waiting' AND EXISTS (SELECT 1 FROM notifications n \
             WHERE n.key = escalations.notification_key AND n.status IN ('delivered', 'skipped')) \
             RETURNING route",
        )
        .bind(ms(now))
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    /// Takes back the escalations being sent by an instance not seen since `alive_since`, or
    /// claimed before `stale_before` (longer ago than any attempt takes): they wait again.
    pub async fn escalations_taken_back(
        &self,
        alive_since: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "UPDATE escalations SET state = 'waiting', instance = NULL, claimed_at = NULL, \
             updated_at = $1 WHERE state = 'sending' AND (claimed_at < $2 OR NOT EXISTS \
             (SELECT 1 FROM instances i WHERE i.id = escalations.instance AND i.seen_at >= $3))",
        )
        .bind(ms(now))
        .bind(ms(stale_before))
        .bind(ms(alive_since))
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(done.rows_affected())
    }

    /// The keys of the waiting escalations due by `now`, the earliest first, at most `limit`.
    pub async fn escalations_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<String>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let rows = sqlx::query(
            "SELECT key FROM escalations WHERE state = 'waiting' AND due_at <= $1 \
             ORDER BY due_at LIMIT $2",
        )
        .bind(ms(now))
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    /// Claims a waiting escalation for `instance`: true for exactly one of the instances
    /// that try, however many share the ledger.
    pub async fn claim_escalation(
        &self,
        key: &str,
        instance: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE escalations SET state = 'sending', instance = $1, claimed_at = $2, \
             updated_at = $2 WHERE key = $3 AND state = 'waiting'",
        )
        .bind(instance)
        .bind(ms(now))
        .bind(key)
        .execute(self.pool())
        .await
        .map_err(|e| self.error(&e))?;
        Ok(done.rows_affected() == 1)
    }

    /// An escalation with its notification as the ledger holds it now.
    pub async fn escalation(&self, key: &str) -> Result<Option<DueEscalation>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let row = sqlx::query(
            "SELECT x.key, x.notification_key, x.route, x.recipient, x.channel, x.template, \
             x.due_at, x.attempts, x.data, n.status, n.attempts, n.reason, n.deadline, \
             (SELECT a.outcome FROM attempts a WHERE a.notification_key = x.notification_key \
             ORDER BY a.at DESC, a.id DESC LIMIT 1) \
             FROM escalations x LEFT JOIN notifications n ON n.key = x.notification_key \
             WHERE x.key = $1",
        )
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .map_err(err)?;
        let Some(r) = row else { return Ok(None) };
        let read = || -> Result<DueEscalation, sqlx::Error> {
            Ok(DueEscalation {
                key: r.try_get(0)?,
                notification_key: r.try_get(1)?,
                route: r.try_get(2)?,
                recipient: r.try_get(3)?,
                channel: r.try_get(4)?,
                template: r.try_get(5)?,
                due_at: time(r.try_get(6)?),
                attempts: r.try_get(7)?,
                data: r.try_get(8)?,
                status: r
                    .try_get::<Option<String>, _>(9)?
                    .map(|s| s.parse().unwrap_or(Status::Pending)),
                notification_attempts: r.try_get::<Option<i64>, _>(10)?.unwrap_or(0),
                reason: r.try_get(11)?,
                deadline: r.try_get::<Option<i64>, _>(12)?.map(time),
                last_outcome: r.try_get(13)?,
            })
        };
        read().map(Some).map_err(err)
    }

    /// Records how a try of a claimed escalation ended, in one transaction: its state (data
    /// cleared unless it waits for another try) and, for an attempt, its row as a
    /// notification of the event with the attempt. True when the claim still held; when it
    /// did not, nothing is written.
    pub async fn escalation_ended(&self, end: &EscalationEnd) -> Result<bool, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut tx = self.pool().begin().await.map_err(err)?;
        if let Some((status, attempt)) = &end.sent {
            let delivered = (*status == Status::Delivered).then_some(ms(end.now));
            let failed = (*status != Status::Delivered).then_some(ms(end.now));
            sqlx::query(
                "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
                 channel, sla_rule, deadline, created_at, status, reason, attempts, \
                 first_failure_at, delivered_at, updated_at) \
                 SELECT x.key, n.event_id, x.route, x.recipient, x.recipient_class, x.channel, \
                 NULL, NULL, $2, $3, $4, $5, $6, $7, $2 FROM escalations x \
                 JOIN notifications n ON n.key = x.notification_key WHERE x.key = $1 \
                 ON CONFLICT (key) DO UPDATE SET status = excluded.status, \
                 reason = excluded.reason, attempts = excluded.attempts, \
                 first_failure_at = COALESCE(notifications.first_failure_at, \
                 excluded.first_failure_at), delivered_at = excluded.delivered_at, \
                 updated_at = excluded.updated_at",
            )
            .bind(&end.key)
            .bind(ms(end.now))
            .bind(status.as_str())
            .bind(end.reason.as_deref())
            .bind(end.attempts.unwrap_or(0))
            .bind(failed)
            .bind(delivered)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            sqlx::query(
                "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&end.key)
            .bind(ms(attempt.at))
            .bind(i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX))
            .bind(attempt.outcome)
            .bind(attempt.code.map(i64::from))
            .bind(attempt.breaker)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        // Its data is kept only while it may still be sent.
        let data = if end.state == EscalationState::Waiting {
            "data"
        } else {
            "NULL"
        };
        let sql = format!(
            "UPDATE escalations SET state = $1, due_at = COALESCE($2, due_at), attempts = COALESCE($3, attempts), \
             reason = $4, instance = NULL, claimed_at = NULL, data = {data}, updated_at = $5 \
             WHERE key = $6 AND state = 'sending' AND instance = $7"
        );
        let done = sqlx::query(&sql)
            .bind(end.state.as_str())
            .bind(end.next.map(ms))
            .bind(end.attempts)
            .bind(end.reason.as_deref())
            .bind(ms(end.now))
            .bind(&end.key)
            .bind(&end.instance)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if done.rows_affected() != 1 {
            // The claim was taken back (this instance was thought gone): whoever holds it now
            // records its own try; this one's rows are not written.
            tx.rollback().await.map_err(err)?;
            return Ok(false);
        }
        tx.commit().await.map_err(err)?;
        Ok(true)
    }
}

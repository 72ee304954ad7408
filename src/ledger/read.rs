//! Reading the ledger back: one event with all it led to (`herald ledger show`), notifications
//! found by person, recipient, route, status and time (`herald ledger search`), and the rows a
//! report is made of. The same queries serve every reader of the ledger.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{LedgerError, Status, Store, ms, time};

/// An event as recorded, with its person identifiers and every notification made of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub publisher: String,
    pub message_id: String,
    pub event_type: String,
    pub version: Option<i64>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// `routed`, `rejected` or `duplicate`.
    pub outcome: String,
    /// The rejection's reason code.
    pub reason: Option<String>,
    pub persons: Vec<String>,
    pub notifications: Vec<NotificationView>,
}

/// A notification as recorded, with its attempts in the order they were made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub key: String,
    pub route: String,
    pub recipient: String,
    pub recipient_class: String,
    pub channel: String,
    pub sla_rule: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub status: Status,
    pub reason: Option<String>,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub sla_outcome: Option<String>,
    pub sent_hash: Option<String>,
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt, or an operator's replay.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: String,
    pub code: Option<i64>,
    pub breaker: String,
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What `herald ledger search` looks for; every part given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A person identifier, `NOMS:A1234BC`, or the value alone for any type.
    pub person: Option<String>,
    pub recipient: Option<String>,
    pub route: Option<String>,
    pub status: Option<Status>,
    /// Made at or after.
    pub since: Option<DateTime<Utc>>,
    /// Made before.
    pub until: Option<DateTime<Utc>>,
    /// At most this many, the most recent first.
    pub limit: i64,
}

/// Which parked notifications `herald dlq replay failed` picks; every part given must hold.
#[derive(Debug, Clone, Default)]
pub struct ParkedFilter {
    pub route: Option<String>,
    pub recipient: Option<String>,
    /// Parked at or after.
    pub since: Option<DateTime<Utc>>,
    /// Parked before.
    pub until: Option<DateTime<Utc>>,
}

/// A notification found by a search, with the event it came from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Found {
    pub created_at: DateTime<Utc>,
    pub key: String,
    pub route: String,
    pub recipient: String,
    pub channel: String,
    pub status: Status,
    pub reason: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub sla_outcome: Option<String>,
    pub attempts: i64,
    pub publisher: String,
    pub message_id: String,
    pub event_type: String,
}

/// One notification as a report counts it.
#[derive(Debug, Clone)]
pub struct Counted {
    pub route: String,
    pub recipient: String,
    pub kind: Kind,
    /// Milliseconds from made to delivered, once delivered.
    pub took: Option<i64>,
}

/// How a notification stands against its deadline, as a report counts it (module docs of
/// `report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Met,
    Breached,
    Open,
    ShortNotice,
    LateOnArrival,
    Untracked,
}

impl Kind {
    /// The number [`KIND_SQL`] gives.
    fn of(n: i64) -> Kind {
        match n {
            0 => Kind::Met,
            1 => Kind::Breached,
            2 => Kind::Open,
            3 => Kind::ShortNotice,
            4 => Kind::LateOnArrival,
            _ => Kind::Untracked,
        }
    }
}

/// A notification's [`Kind`], worked out by the store (a number per row is cheaper to read
/// than the strings it is made from): the SLA outcome recorded at delivery; undelivered, a
/// breach once its deadline (`$4`, the report's instant) has passed, open until then.
const KIND_SQL: &str = "CAST(CASE \
     WHEN sla_outcome = 'met' THEN 0 \
     WHEN sla_outcome = 'breached' THEN 1 \
     WHEN sla_outcome = 'short_notice' THEN 3 \
     WHEN sla_outcome = 'late_on_arrival' THEN 4 \
     WHEN sla_outcome IS NOT NULL THEN 5 \
     WHEN delivered_at IS NULL AND deadline < $4 THEN 1 \
     WHEN delivered_at IS NULL AND deadline IS NOT NULL THEN 2 \
     ELSE 5 END AS BIGINT)";

/// A notification's last failed attempt, and how many attempts it had, for the reason a
/// report gives for a breach.
#[derive(Debug, Clone)]
pub struct LastAttempt {
    pub key: String,
    pub outcome: String,
    pub code: Option<i64>,
    /// Attempts recorded, replays aside (the `attempts` column starts again at a replay).
    pub made: i64,
}

const NOTIFICATION_COLUMNS: &str = "n.key, n.route, n.recipient, n.recipient_class, n.channel, \
     n.sla_rule, n.deadline, n.created_at, n.status, n.reason, n.first_failure_at, \
     n.delivered_at, n.sla_outcome, n.sent_hash";

fn status(text: &str) -> Status {
    // The writer stores only `Status::as_str`; anything else is a row written by hand.
    text.parse().unwrap_or(Status::Pending)
}

fn opt_time(row: &AnyRow, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(i)?.map(time))
}

fn notification(row: &AnyRow) -> Result<NotificationView, sqlx::Error> {
    Ok(NotificationView {
        key: row.try_get(0)?,
        route: row.try_get(1)?,
        recipient: row.try_get(2)?,
        recipient_class: row.try_get(3)?,
        channel: row.try_get(4)?,
        sla_rule: row.try_get(5)?,
        deadline: opt_time(row, 6)?,
        created_at: time(row.try_get(7)?),
        status: status(&row.try_get::<String, _>(8)?),
        reason: row.try_get(9)?,
        first_failure_at: opt_time(row, 10)?,
        delivered_at: opt_time(row, 11)?,
        sla_outcome: row.try_get(12)?,
        sent_hash: row.try_get(13)?,
        attempts: Vec::new(),
    })
}

/// An instant as an operator gives it: RFC 3339 (`2026-11-01T09:00:00Z`), a date (midnight at
/// its start in London, where the agencies' days are), or a span back from `now` (`2h`, `7d`).
// String error: words for the operator, shown as they are.
pub fn instant_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        // Midnight is never skipped or repeated by London's clock changes (they are at 01:00
        // and 02:00), so the earliest reading is the one.
        return London
            .from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{text} has no midnight in London"));
    }
    if let Ok(back) = humantime::parse_duration(text) {
        return chrono::Duration::from_std(back)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("{text} reaches back too far"));
    }
    Err(format!(
        "{text:?} is not an instant: give 2026-11-01T09:00:00Z, a date (2026-11-01, midnight \
         London time) or a span back from now (2h, 7d)"
    ))
}

/// A query of the ledger, its binds given.
pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl Store {
    /// Every row `query` gives, each read by `read`.
    pub(super) async fn rows<T>(
        &self,
        query: Query<'_>,
        read: impl Fn(&AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        query
            .fetch_all(self.pool())
            .await
            .map_err(err)?
            .iter()
            .map(read)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    /// Every event whose message_id is `id`, or that made the notification whose key is `id`,
    /// oldest first, each with all the ledger holds about it.
    pub async fn find(&self, id: &str) -> Result<Vec<EventView>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let events = sqlx::query(
            // Each condition as its index has it (the routed events' and the others'), so
            // both are used.
            "SELECT id, publisher, message_id, event_type, version, occurred_at, received_at, \
             outcome, reason FROM events \
             WHERE (message_id = $1 AND outcome = 'routed') \
             OR (message_id = $1 AND outcome <> 'routed') \
             OR id IN (SELECT event_id FROM notifications WHERE key = $2) \
             ORDER BY received_at, id",
        )
        .bind(id)
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(err)?;
        let mut found = Vec::with_capacity(events.len());
        for row in &events {
            let event_id: i64 = row.try_get(0).map_err(err)?;
            let mut view = EventView {
                publisher: row.try_get(1).map_err(err)?,
                message_id: row.try_get(2).map_err(err)?,
                event_type: row.try_get(3).map_err(err)?,
                version: row.try_get(4).map_err(err)?,
                occurred_at: opt_time(row, 5).map_err(err)?,
                received_at: time(row.try_get(6).map_err(err)?),
                outcome: row.try_get(7).map_err(err)?,
                reason: row.try_get(8).map_err(err)?,
                persons: Vec::new(),
                notifications: Vec::new(),
            };
            view.persons = sqlx::query(
                "SELECT identifier FROM persons WHERE event_id = $1 ORDER BY identifier",
            )
            .bind(event_id)
            .fetch_all(self.pool())
            .await
            .map_err(err)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(err)?;
            let rows = sqlx::query(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications n WHERE n.event_id = $1 \
                 ORDER BY n.created_at, n.route, n.recipient, n.channel"
            ))
            .bind(event_id)
            .fetch_all(self.pool())
            .await
            .map_err(err)?;
            for row in &rows {
                let mut n = notification(row).map_err(err)?;
                n.attempts = self.attempts(&n.key).await?;
                view.notifications.push(n);
            }
            found.push(view);
        }
        Ok(found)
    }

    /// A notification's attempts, in the order they were made.
    async fn attempts(&self, key: &str) -> Result<Vec<AttemptView>, LedgerError> {
        let query = sqlx::query(
            "SELECT at, duration_ms, outcome, code, breaker FROM attempts \
             WHERE notification_key = $1 ORDER BY at, id",
        )
        .bind(key);
        self.rows(query, |r| {
            Ok(AttemptView {
                at: time(r.try_get(0)?),
                duration_ms: r.try_get(1)?,
                outcome: r.try_get(2)?,
                code: r.try_get(3)?,
                breaker: r.try_get(4)?,
            })
        })
        .await
    }

    /// The notifications `filter` finds, the most recently made first.
    pub async fn search(&self, filter: &Filter) -> Result<Vec<Found>, LedgerError> {
        let mut w = Where::default();
        if let Some(person) = &filter.person {
            // Identifiers are upper case in the contract; a value alone is any type's.
            let person = person.trim().to_uppercase();
            let wanted: Vec<String> = if person.contains(':') {
                vec![person]
            } else {
                IDENTIFIER_TYPES
                    .iter()
                    .map(|t| format!("{t}:{person}"))
                    .collect()
            };
            let list: Vec<String> = wanted
                .into_iter()
                .map(|p| w.placeholder(Bind::Text(p)))
                .collect();
            w.conditions.push(format!(
                "n.event_id IN (SELECT event_id FROM persons WHERE identifier IN ({}))",
                list.join(", ")
            ));
        }
        w.text("n.recipient = ?", &filter.recipient);
        w.text("n.route = ?", &filter.route);
        w.text(
            "n.status = ?",
            &filter.status.map(|s| s.as_str().to_owned()),
        );
        if filter
            .status
            .is_some_and(|s| !matches!(s, Status::Delivered | Status::Skipped))
        {
            // An open status: its index is used.
            w.conditions.push(format!("n.{}", super::OPEN));
        }
        w.time("n.created_at >= ?", filter.since);
        w.time("n.created_at < ?", filter.until);
        let limit = w.placeholder(Bind::Int(filter.limit));
        let sql = format!(
            "SELECT {FOUND_COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id{} \
             ORDER BY n.created_at DESC, n.key LIMIT {limit}",
            w.clause()
        );
        self.rows(w.bound(sqlx::query(&sql)), found).await
    }

    /// The parked and expired notifications `filter` picks, oldest first: what `herald dlq
    /// replay failed` sends again.
    pub async fn parked(&self, filter: &ParkedFilter) -> Result<Vec<Found>, LedgerError> {
        let mut w = Where::default();
        let parked = w.placeholder(Bind::Text(Status::Parked.as_str().into()));
        let expired = w.placeholder(Bind::Text(Status::Expired.as_str().into()));
        w.conditions.push(format!(
            "n.{} AND n.status IN ({parked}, {expired})",
            super::OPEN
        ));
        w.text("n.route = ?", &filter.route);
        w.text("n.recipient = ?", &filter.recipient);
        w.time("n.updated_at >= ?", filter.since);
        w.time("n.updated_at < ?", filter.until);
        let sql = format!(
            "SELECT {FOUND_COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id{} \
             ORDER BY n.updated_at, n.key",
            w.clause()
        );
        self.rows(w.bound(sqlx::query(&sql)), found).await
    }

    /// The (publisher, message_id) of each event refused in `[since, until)` that had a
    /// message_id: what `herald dlq replay rejected` sends again.
    pub async fn rejected(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<(String, String)>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut w = Where::default();
        w.text(
            "e.outcome = ?",
            &Some(super::EventOutcome::Rejected.as_str().to_owned()),
        );
        w.conditions.push("e.message_id <> ''".into());
        w.time("e.received_at >= ?", since);
        w.time("e.received_at < ?", until);
        let sql = format!(
            "SELECT e.publisher, e.message_id FROM events e{} ORDER BY e.received_at, e.id",
            w.clause()
        );
        w.bound(sqlx::query(&sql))
            .fetch_all(self.pool())
            .await
            .map_err(err)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    /// Every notification made in `[from, to)` that was not skipped, as a report counts it at
    /// `now`, handed to `each` as it is read (a period can hold millions).
    pub async fn counted(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
        mut each: impl FnMut(Counted),
    ) -> Result<(), LedgerError> {
        use futures_util::TryStreamExt;
        let err = |e: sqlx::Error| self.error(&e);
        let sql = format!(
            "SELECT route, recipient, {KIND_SQL}, delivered_at - created_at FROM notifications \
             WHERE created_at >= $1 AND created_at < $2 AND status <> $3"
        );
        let mut rows = sqlx::query(&sql)
            .bind(ms(from))
            .bind(ms(to))
            .bind(Status::Skipped.as_str())
            .bind(ms(now))
            .fetch(self.pool());
        while let Some(r) = rows.try_next().await.map_err(err)? {
            let read = || -> Result<Counted, sqlx::Error> {
                Ok(Counted {
                    route: r.try_get(0)?,
                    recipient: r.try_get(1)?,
                    kind: Kind::of(r.try_get(2)?),
                    took: r.try_get::<Option<i64>, _>(3)?.map(|t| t.max(0)),
                })
            };
            each(read().map_err(err)?);
        }
        Ok(())
    }

    /// The notifications of `[from, to)` that missed their deadline by `now`: delivered after
    /// it (`breached`), or not delivered and past it. Oldest first.
    pub async fn breaches(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Found>, LedgerError> {
        let sql = format!(
            "SELECT {FOUND_COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.created_at >= $1 AND n.created_at < $2 AND n.status <> $3 AND \
             (n.sla_outcome = 'breached' OR \
              (n.delivered_at IS NULL AND n.deadline IS NOT NULL AND n.deadline < $4)) \
             ORDER BY n.created_at, n.key"
        );
        let query = sqlx::query(&sql)
            .bind(ms(from))
            .bind(ms(to))
            .bind(Status::Skipped.as_str())
            .bind(ms(now));
        self.rows(query, found).await
    }

    /// For each notification in `keys` that failed at least once: how many attempts the
    /// ledger holds for it (replays aside) and its last failure.
    pub async fn last_failures(&self, keys: &[String]) -> Result<Vec<LastAttempt>, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut out: Vec<LastAttempt> = Vec::new();
        for chunk in keys.chunks(400) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT notification_key, outcome, code FROM attempts \
                 WHERE notification_key IN ({list}) AND outcome <> 'replayed' \
                 ORDER BY notification_key, at, id"
            );
            let mut query = sqlx::query(&sql);
            for k in chunk {
                query = query.bind(k);
            }
            let mut current: Option<LastAttempt> = None;
            for r in query.fetch_all(self.pool()).await.map_err(err)? {
                let key: String = r.try_get(0).map_err(err)?;
                let outcome: String = r.try_get(1).map_err(err)?;
                let code: Option<i64> = r.try_get(2).map_err(err)?;
                // Ordered by key and time: a key's rows come together, the last one last.
                if current.as_ref().is_some_and(|c| c.key != key) {
                    out.extend(current.take().filter(|c| !c.outcome.is_empty()));
                }
                let c = current.get_or_insert_with(|| LastAttempt {
                    key,
                    outcome: String::new(),
                    code: None,
                    made: 0,
                });
                c.made += 1;
                if outcome != "delivered" {
                    c.outcome = outcome;
                    c.code = code;
                }
            }
            out.extend(current.take().filter(|c| !c.outcome.is_empty()));
        }
        Ok(out)
    }
}

/// The types of person identifier the contract has (`common.schema.json`).
const IDENTIFIER_TYPES: [&str; 3] = ["NOMS", "PNC", "CRN"];

pub(super) const FOUND_COLUMNS: &str = "n.created_at, n.key, n.route, n.recipient, n.channel, n.status, \
     n.reason, n.deadline, n.delivered_at, n.sla_outcome, n.attempts, \
     e.publisher, e.message_id, e.event_type";

pub(super) fn found(r: &AnyRow) -> Result<Found, sqlx::Error> {
    Ok(Found {
        created_at: time(r.try_get(0)?),
        key: r.try_get(1)?,
        route: r.try_get(2)?,
        recipient: r.try_get(3)?,
        channel: r.try_get(4)?,
        status: status(&r.try_get::<String, _>(5)?),
        reason: r.try_get(6)?,
        deadline: opt_time(r, 7)?,
        delivered_at: opt_time(r, 8)?,
        sla_outcome: r.try_get(9)?,
        attempts: r.try_get(10)?,
        publisher: r.try_get(11)?,
        message_id: r.try_get(12)?,
        event_type: r.try_get(13)?,
    })
}

/// A statement's WHERE clause, built from the filters given, with its values bound in order.
#[derive(Default)]
struct Where {
    conditions: Vec<String>,
    binds: Vec<Bind>,
}

impl Where {
    /// Binds a value; its placeholder.
    fn placeholder(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    /// Adds `condition`, whose `?` is the value's placeholder.
    fn add(&mut self, condition: &str, b: Bind) {
        let p = self.placeholder(b);
        self.conditions.push(condition.replace('?', &p));
    }

    fn text(&mut self, condition: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.add(condition, Bind::Text(v.clone()));
        }
    }

    fn time(&mut self, condition: &str, value: Option<DateTime<Utc>>) {
        if let Some(t) = value {
            self.add(condition, Bind::Int(ms(t)));
        }
    }

    fn clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn bound<'q>(
        &self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for b in &self.binds {
            query = match b {
                Bind::Text(t) => query.bind(t.clone()),
                Bind::Int(i) => query.bind(*i),
            };
        }
        query
    }
}

/// A value bound to a search's statement.
enum Bind {
    Text(String),
    Int(i64),
}

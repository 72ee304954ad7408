//! The SQL of a commit: the statements the writer runs, one per table, and the rows they take.
//! Every statement reads its rows from one source: on PostgreSQL a JSON array bound as its one
//! parameter, on SQLite a `VALUES` list with plain `?` binds (see [`Src`]).

/// Rows in one SQLite statement at most: its parameters stay well under SQLite's bound
/// (32,766), whatever the table.
pub(super) const SQLITE_ROWS: usize = 1000;

/// A value of a row, as bound to a statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum V<'a> {
    Text(&'a str),
    Int(i64),
    /// A calendar date, kept as `YYYY-MM-DD` text.
    Date(chrono::NaiveDate),
    Null,
}

impl<'a> From<&'a str> for V<'a> {
    fn from(s: &'a str) -> V<'a> {
        V::Text(s)
    }
}

impl<'a> From<&'a String> for V<'a> {
    fn from(s: &'a String) -> V<'a> {
        V::Text(s)
    }
}

impl From<chrono::NaiveDate> for V<'_> {
    fn from(d: chrono::NaiveDate) -> Self {
        V::Date(d)
    }
}

impl From<i64> for V<'_> {
    fn from(i: i64) -> Self {
        V::Int(i)
    }
}

impl<'a, T: Into<V<'a>>> From<Option<T>> for V<'a> {
    fn from(v: Option<T>) -> V<'a> {
        v.map_or(V::Null, Into::into)
    }
}

/// As bound by SQLite's writer (`lite.rs`).
impl rusqlite::ToSql for V<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match *self {
            V::Text(t) => rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(
                t.as_bytes(),
            )),
            V::Int(i) => rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Integer(i)),
            V::Date(d) => rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Text(
                d.format("%Y-%m-%d").to_string(),
            )),
            V::Null => rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Null),
        })
    }
}

impl serde::Serialize for V<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            V::Text(t) => s.serialize_str(t),
            V::Int(i) => s.serialize_i64(*i),
            V::Date(d) => s.collect_str(&d.format("%Y-%m-%d")),
            V::Null => s.serialize_none(),
        }
    }
}

/// The rows one table takes in a commit, all of one width.
#[derive(Debug)]
pub(super) struct Rows<'a> {
    pub(super) width: usize,
    pub(super) values: Vec<V<'a>>,
}

impl<'a> Rows<'a> {
    pub(super) fn new(width: usize) -> Rows<'a> {
        Rows {
            width,
            values: Vec::new(),
        }
    }

    pub(super) fn push<const N: usize>(&mut self, row: [V<'a>; N]) {
        debug_assert_eq!(N, self.width);
        self.values.extend(row);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The rows as a JSON array of arrays, for PostgreSQL.
    pub(super) fn json(&self) -> Result<String, sqlx::Error> {
        let rows: Vec<&[V<'a>]> = self.values.chunks(self.width).collect();
        serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))
    }
}

/// Where a statement's rows come from, and how it names their columns.
///
/// PostgreSQL takes each statement on its own with one parameter, a JSON array of rows
/// (`jsonb_array_elements($1::jsonb)`, columns `j.value->>0`, ...), so every statement has one
/// text whatever the number of rows, prepared once per connection. SQLite takes a `VALUES`
/// list with plain `?` parameters (columns `v.column1`, ...): its writer (`lite.rs`) runs
/// each statement of one row (of an event's identifiers, one per event) prepared once, row
/// by row, and the reader asks about many events in one statement. Values are bound as they
/// are rather than read out of JSON by SQLite (a third of its time when they were). Numbered
/// parameters are avoided: SQLite looks each up by name, which is quadratic in a statement of
/// hundreds of them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Src {
    Json,
    Values { rows: usize, width: usize },
}

impl Src {
    fn from(self) -> String {
        match self {
            Src::Json => "jsonb_array_elements($1::jsonb) AS j(value)".to_owned(),
            Src::Values { rows, width } => {
                let row = format!("({})", vec!["?"; width].join(", "));
                format!("(VALUES {}) AS v", vec![row.as_str(); rows].join(", "))
            }
        }
    }

    /// Column `i` (from 0) as text.
    fn text(self, i: usize) -> String {
        match self {
            Src::Json => format!("j.value->>{i}"),
            Src::Values { .. } => format!("v.column{}", i + 1),
        }
    }

    /// Column `i` (from 0) as an integer.
    fn int(self, i: usize) -> String {
        match self {
            Src::Json => format!("CAST(j.value->>{i} AS BIGINT)"),
            Src::Values { .. } => format!("v.column{}", i + 1),
        }
    }

    /// The id (or another column) of the routed event a row names by its columns 0 and 1
    /// (publisher, message_id): a lookup by the unique index, whatever the planner thinks of
    /// the tables' sizes (a join here was planned on PostgreSQL as a scan of every event
    /// while the statistics were those of a new, empty ledger).
    fn event(self, column: &str) -> String {
        format!(
            "(SELECT e.{column} FROM events e WHERE e.publisher = {} \
             AND e.message_id = {} AND e.outcome = 'routed')",
            self.text(0),
            self.text(1)
        )
    }
}

/// For the routed events named by (publisher, message_id): each one's notifications with
/// their status (one row with no key for an event that made none); nothing for one the
/// ledger does not have.
pub(super) fn seen_sql(s: Src) -> String {
    format!(
        "SELECT x.publisher, x.message_id, n.key, n.status FROM \
         (SELECT {} AS publisher, {} AS message_id, {} AS id FROM {}) x \
         LEFT JOIN notifications n ON n.event_id = x.id WHERE x.id IS NOT NULL",
        s.text(0),
        s.text(1),
        s.event("id"),
        s.from()
    )
}

/// Events: (publisher, message_id, type, version, occurred, received, outcome, reason). On
/// PostgreSQL the routed ones new to the ledger come back.
fn events_sql(s: Src) -> String {
    format!(
        "INSERT INTO events (publisher, message_id, event_type, version, occurred_at, \
         received_at, outcome, reason) SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {} \
         WHERE true ON CONFLICT (publisher, message_id) WHERE outcome = 'routed' DO NOTHING{}",
        s.text(0),
        s.text(1),
        s.text(2),
        s.int(3),
        s.int(4),
        s.int(5),
        s.text(6),
        s.text(7),
        s.from(),
        match s {
            Src::Json => " RETURNING publisher, message_id",
            Src::Values { .. } => "",
        }
    )
}

/// Identifiers: (publisher, message_id, identifier), for events that have none yet (an
/// event seen before keeps those it had).
fn persons_sql(s: Src) -> String {
    format!(
        "INSERT INTO persons (event_id, identifier) SELECT x.id, x.identifier FROM \
         (SELECT {} AS id, {} AS identifier FROM {}) x WHERE x.id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM persons p WHERE p.event_id = x.id)",
        s.event("id"),
        s.text(2),
        s.from()
    )
}

/// Notifications ([`NOTIFICATION_WIDTH`] columns, see `Tables::of`), made when their event
/// was received. One recorded already is changed only by a handling that has ended, never
/// back to an earlier attempt, and never once delivered.
fn notifications_sql(s: Src) -> String {
    format!(
        "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
         channel, sla_rule, deadline, created_at, status, reason, attempts, \
         first_failure_at, delivered_at, sla_outcome, sent_hash, updated_at) \
         SELECT * FROM (SELECT {} AS key, {} AS event_id, {}, {}, {}, {}, {}, {}, {}, {}, {}, \
         {}, {}, {}, {}, {}, {} FROM {}) x WHERE x.event_id IS NOT NULL \
         ON CONFLICT (key) DO UPDATE SET status = excluded.status, \
         reason = excluded.reason, attempts = excluded.attempts, \
         first_failure_at = excluded.first_failure_at, delivered_at = excluded.delivered_at, \
         sla_outcome = excluded.sla_outcome, sent_hash = excluded.sent_hash, \
         updated_at = excluded.updated_at \
         WHERE excluded.status <> 'pending' AND notifications.status <> 'delivered' \
         AND notifications.attempts <= excluded.attempts",
        s.text(2),
        s.event("id"),
        s.text(3),
        s.text(4),
        s.text(5),
        s.text(6),
        s.text(7),
        s.int(8),
        s.event("received_at"),
        s.text(9),
        s.text(10),
        s.int(11),
        s.int(12),
        s.int(13),
        s.text(14),
        s.text(15),
        s.int(16),
        s.from()
    )
}

/// Outcomes: (key, status, reason, attempts, first failure, delivered, sla, hash, now); an
/// older attempt's never overwrites a later one's, and a delivered notification stays so.
fn updates_sql(s: Src) -> String {
    format!(
        "UPDATE notifications SET status = {}, reason = {}, attempts = {}, \
         first_failure_at = {}, delivered_at = {}, sla_outcome = {}, sent_hash = {}, \
         updated_at = {} FROM {} WHERE notifications.key = {} \
         AND notifications.status <> 'delivered' AND notifications.attempts <= {}",
        s.text(1),
        s.text(2),
        s.int(3),
        s.int(4),
        s.int(5),
        s.text(6),
        s.text(7),
        s.int(8),
        s.from(),
        s.text(0),
        s.int(3)
    )
}

/// Attempts: (key, at, duration ms, outcome, code, breaker).
fn attempts_sql(s: Src) -> String {
    format!(
        "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
         SELECT {}, {}, {}, {}, {}, {} FROM {}",
        s.text(0),
        s.int(1),
        s.int(2),
        s.text(3),
        s.int(4),
        s.text(5),
        s.from()
    )
}

/// Endpoints: (recipient, channel, state, since, reason). A state written again (by another
/// instance, or after a restart) keeps its `since`: how long an endpoint has been in its state
/// is what a contact is told about (docs/ledger.md).
fn endpoints_sql(s: Src) -> String {
    format!(
        "INSERT INTO endpoints (recipient, channel, state, since, reason) \
         SELECT {}, {}, {}, {}, {} FROM {} WHERE true \
         ON CONFLICT (recipient, channel) DO UPDATE SET state = excluded.state, \
         since = CASE WHEN endpoints.state = excluded.state THEN endpoints.since \
         ELSE excluded.since END, reason = excluded.reason",
        s.text(0),
        s.text(1),
        s.text(2),
        s.int(3),
        s.text(4),
        s.from()
    )
}

/// Authority register changes: (publisher, message_id, person, representative, kind, from,
/// until, occurred, received). A register event applied again changes nothing.
fn authority_sql(s: Src) -> String {
    format!(
        "INSERT INTO authority (person, representative, kind, effective_from, valid_until, \
         occurred_at, received_at, publisher, message_id) \
         SELECT {}, {}, {}, {}, {}, {}, {}, {}, {} FROM {} WHERE true \
         ON CONFLICT (publisher, message_id) DO NOTHING",
        s.text(2),
        s.text(3),
        s.text(4),
        s.text(5),
        s.text(6),
        s.int(7),
        s.int(8),
        s.text(0),
        s.text(1),
        s.from()
    )
}

/// Custody register entries: (publisher, message_id, occurred, received, entry). An event
/// recorded again changes nothing.
fn custody_sql(s: Src) -> String {
    format!(
        "INSERT INTO custody (occurred_at, received_at, entry, publisher, message_id) \
         SELECT {}, {}, {}, {}, {} FROM {} WHERE true \
         ON CONFLICT (publisher, message_id) DO NOTHING",
        s.int(2),
        s.int(3),
        s.text(4),
        s.text(0),
        s.text(1),
        s.from()
    )
}

/// Escalations: (key, notification key, route, recipient, class, channel, rule, template,
/// due, data, now), each written once: the same notification handled again adds none.
fn escalations_sql(s: Src) -> String {
    format!(
        "INSERT INTO escalations (key, notification_key, route, recipient, recipient_class, \
         channel, rule, template, due_at, data, created_at, updated_at, state, attempts) \
         SELECT {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 'waiting', 0 FROM {} WHERE true \
         ON CONFLICT (key) DO NOTHING",
        s.text(0),
        s.text(1),
        s.text(2),
        s.text(3),
        s.text(4),
        s.text(5),
        s.text(6),
        s.text(7),
        s.int(8),
        s.text(9),
        s.int(10),
        s.int(10),
        s.from()
    )
}

pub(super) const NOTIFICATION_WIDTH: usize = 17;

/// A commit's tables, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Seen,
    Events,
    Persons,
    Notifications,
    Updates,
    Attempts,
    Endpoints,
    Authority,
    Custody,
    Escalations,
}

impl Table {
    pub(super) const ALL: [Table; 10] = [
        Table::Seen,
        Table::Events,
        Table::Persons,
        Table::Notifications,
        Table::Updates,
        Table::Attempts,
        Table::Endpoints,
        Table::Authority,
        Table::Custody,
        Table::Escalations,
    ];

    pub(super) fn sql(self, s: Src) -> String {
        match self {
            Table::Seen => seen_sql(s),
            Table::Events => events_sql(s),
            Table::Persons => persons_sql(s),
            Table::Notifications => notifications_sql(s),
            Table::Updates => updates_sql(s),
            Table::Attempts => attempts_sql(s),
            Table::Endpoints => endpoints_sql(s),
            Table::Authority => authority_sql(s),
            Table::Custody => custody_sql(s),
            Table::Escalations => escalations_sql(s),
        }
    }

    /// The statement's text on PostgreSQL, made once.
    pub(super) fn postgres(self) -> &'static str {
        static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let all = SQL.get_or_init(|| Table::ALL.iter().map(|t| t.sql(Src::Json)).collect());
        &all[self as usize]
    }

    /// The label of `herald_ledger_rows_total` its rows count under.
    pub(super) fn counted(self) -> Option<&'static str> {
        match self {
            Table::Events => Some("events"),
            Table::Notifications => Some("notifications"),
            Table::Attempts => Some("attempts"),
            Table::Endpoints => Some("endpoints"),
            Table::Authority => Some("authority"),
            Table::Custody => Some("custody"),
            Table::Escalations => Some("escalations"),
            Table::Seen | Table::Persons | Table::Updates => None,
        }
    }
}

//! Group commit: one task writes every row the service records, committing together whatever
//! queued while the previous commit ran (on PostgreSQL, up to four commits overlap: see
//! `writers`). A caller waits for the commit that holds its rows.
//!
//! When a commit fails, the task writes one small row on its own (a probe). If that fails
//! too, the store is down (PostgreSQL unreachable, a disk full, a read-only file): the task
//! says so once (log line, `herald_ledger_up`, `/readyz`), keeps the rows and tries again,
//! every second at first and then every five, until the store takes them. If the probe
//! succeeds, the fault is in the rows: each is written alone, and the one the store refuses is
//! answered with the error (its event goes back to the queue) instead of holding up the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::AnyArguments;
use sqlx::{Any, Arguments, Connection, Row, Transaction};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{error, info, warn};

use crate::metrics::Metrics;

use super::{
    Backend, EndpointRecord, EventOutcome, EventRecord, LedgerError, NotificationRecord, Seen,
    Status, Store, Update, ms,
};

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;
/// The sizes of the multi-row statements, largest first (the largest keeps SQLite under its
/// 32,766 bound values). Any number of rows is written as statements of these sizes only, so
/// each table has a handful of distinct statements, each prepared once per connection and
/// then taken from its cache, instead of a statement of a new length at every commit.
const STATEMENT_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// `rows` cut into chunks of [`STATEMENT_SIZES`], largest first.
fn statements<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = STATEMENT_SIZES.into_iter().find(|s| *s <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

enum Op {
    Event {
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
        reply: oneshot::Sender<Result<Seen, LedgerError>>,
    },
    Update {
        update: Update,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
    Endpoint {
        endpoint: EndpointRecord,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
}

impl Op {
    fn fail(self, e: LedgerError) {
        match self {
            Op::Event { reply, .. } => drop(reply.send(Err(e))),
            Op::Update { reply, .. } | Op::Endpoint { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// What one commit found, per event operation in the batch (by index).
type Found = HashMap<usize, Seen>;

/// The writing side of the ledger, shared by the service's tasks.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    ops: mpsc::Sender<Op>,
}

impl Ledger {
    /// Starts the writer task; it ends when the last `Ledger` is dropped.
    pub fn start(store: Store, metrics: Metrics) -> Ledger {
        let (ops, rx) = mpsc::channel(4 * MAX_BATCH);
        metrics.ledger_up.set(1);
        tokio::spawn(run(store.clone(), rx, metrics));
        Ledger { store, ops }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records an event and the notifications routing made of it; what the ledger knew of it
    /// before. Returns once the rows are committed.
    pub async fn event(
        &self,
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
    ) -> Result<Seen, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Event {
            event,
            notifications,
            reply,
        })
        .await?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Records how a handling of a notification ended. Returns once committed.
    pub async fn update(&self, update: Update) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Update { update, reply }).await?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Records an endpoint's new state. Returns once committed.
    pub async fn endpoint(&self, endpoint: EndpointRecord) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Endpoint { endpoint, reply }).await?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    async fn send(&self, op: Op) -> Result<(), LedgerError> {
        self.ops.send(op).await.map_err(|_| LedgerError::Stopped)
    }
}

/// Transactions in flight at once. SQLite has one writer at a time. On PostgreSQL a commit is
/// six to ten round trips to the server, each waiting for its process to be scheduled, and the
/// writer would sit idle through them: a few transactions overlap instead, each taking what
/// queued since the last one began (every caller still waits for the commit of its own rows).
fn writers(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => 4,
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Op>, metrics: Metrics) {
    let writers = writers(store.backend());
    let slots = Arc::new(Semaphore::new(writers));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            write_batch(&store, batch, &metrics).await;
            drop(slot);
        });
    }
    // The last operations are answered before the task ends.
    let _ = slots.acquire_many(writers as u32).await;
}

/// Commits one batch, waiting while the store takes no writes; answers every operation.
async fn write_batch(store: &Store, mut batch: Vec<Op>, metrics: &Metrics) {
    let mut wait = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match commit(store, &batch, metrics).await {
            Ok(found) => {
                metrics
                    .ledger_commit_seconds
                    .with_label_values::<&str>(&[])
                    .observe(started.elapsed().as_secs_f64());
                answer(std::mem::take(&mut batch), found);
                back_up(store, metrics);
                return;
            }
            Err(e) => {
                if let Err(probe) = store.probe().await {
                    let reason = crate::mask::scrub(&probe.to_string(), store.shown());
                    metrics.ledger_up.set(0);
                    if store.health().set(Some(reason.clone())) {
                        error!(ledger = store.shown(), error = %reason, "the ledger takes no writes; no event is acknowledged until it does");
                    }
                    tokio::time::sleep(wait).await;
                    wait = Duration::from_secs(5);
                    continue;
                }
                back_up(store, metrics);
                warn!(error = %e, operations = batch.len(), "a group of ledger rows was refused; writing them one by one");
                one_by_one(store, batch, metrics).await;
                return;
            }
        }
    }
}

fn back_up(store: &Store, metrics: &Metrics) {
    if store.health().set(None) {
        metrics.ledger_up.set(1);
        info!(
            ledger = store.shown(),
            "the ledger takes writes again; events are taken again"
        );
    }
}

async fn one_by_one(store: &Store, batch: Vec<Op>, metrics: &Metrics) {
    for op in batch {
        let one = std::slice::from_ref(&op);
        match commit(store, one, metrics).await {
            Ok(found) => answer(vec![op], found),
            Err(e) => {
                metrics.ledger_refused.with_label_values::<&str>(&[]).inc();
                error!(error = %e, "the ledger refused an operation; its event goes back to the queue");
                op.fail(store.error(&e));
            }
        }
    }
}

fn answer(batch: Vec<Op>, mut found: Found) {
    for (i, op) in batch.into_iter().enumerate() {
        match op {
            Op::Event { reply, .. } => {
                let _ = reply.send(Ok(found.remove(&i).unwrap_or(Seen::New)));
            }
            Op::Update { reply, .. } | Op::Endpoint { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// A bound value.
enum V<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

/// One statement of many rows: `head` then `(...), (...)` with binds in order, then `tail`.
///
/// PostgreSQL takes `$N`. SQLite takes plain `?`: it looks each `$N` (or `?N`) up by name
/// among the statement's parameters, once when parsing and again when binding, which is
/// quadratic in the parameters of a statement of hundreds of rows (strncmp and
/// sqlite3_bind_parameter_name were 27% of Herald's CPU samples with the SQLite ledger).
struct Rows<'a> {
    sql: String,
    args: AnyArguments<'a>,
    numbered: bool,
    n: usize,
    rows: usize,
}

impl<'a> Rows<'a> {
    fn new(head: &str, backend: Backend) -> Rows<'a> {
        Rows {
            sql: head.to_owned(),
            args: AnyArguments::default(),
            numbered: backend == Backend::Postgres,
            n: 0,
            rows: 0,
        }
    }

    fn row(&mut self, values: Vec<V<'a>>) -> Result<(), sqlx::Error> {
        if self.rows > 0 {
            self.sql.push_str(", ");
        }
        self.sql.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.n += 1;
            if self.numbered {
                self.sql.push('$');
                self.sql.push_str(itoa::Buffer::new().format(self.n));
            } else {
                self.sql.push('?');
            }
            let added = match v {
                V::Text(s) => self.args.add(s),
                V::OptText(s) => self.args.add(s),
                V::Int(i) => self.args.add(i),
                V::OptInt(i) => self.args.add(i),
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        self.sql.push(')');
        self.rows += 1;
        Ok(())
    }
}

/// Writes a batch in one transaction.
async fn commit(store: &Store, batch: &[Op], metrics: &Metrics) -> Result<Found, sqlx::Error> {
    let mut conn = store.pool().acquire().await?;
    let written = async {
        let mut tx = conn.begin().await?;
        let found = write(&mut tx, store.backend(), batch, metrics).await?;
        tx.commit().await?;
        Ok(found)
    }
    .await;
    if written.is_err() {
        // Not given back to the pool: after a disk full or an I/O error, SQLite can keep the
        // connection in an error state that holds the write lock, so every other connection
        // would find the ledger locked even once the disk takes writes again.
        conn.close_on_drop();
    }
    written
}

async fn write(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    batch: &[Op],
    metrics: &Metrics,
) -> Result<Found, sqlx::Error> {
    let events: Vec<(usize, &EventRecord, &[NotificationRecord])> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Event {
                event,
                notifications,
                ..
            } => Some((i, event, notifications.as_slice())),
            _ => None,
        })
        .collect();
    // Routed events: (publisher, message_id) -> the row's id, for those inserted now.
    let mut ids: HashMap<(String, String), i64> = HashMap::new();
    for chunk in statements(&events) {
        let mut rows = Rows::new(
            "INSERT INTO events (publisher, message_id, event_type, version, occurred_at, \
             received_at, outcome, reason) VALUES ",
            backend,
        );
        for (_, e, _) in chunk {
            rows.row(vec![
                V::Text(&e.publisher),
                V::Text(&e.message_id),
                V::Text(&e.event_type),
                V::OptInt(e.version),
                V::OptInt(e.occurred_at.map(ms)),
                V::Int(ms(e.received_at)),
                V::Text(e.outcome.as_str()),
                V::OptText(e.reason.as_deref()),
            ])?;
        }
        rows.sql.push_str(
            " ON CONFLICT (publisher, message_id) WHERE outcome = 'routed' DO NOTHING \
             RETURNING id, publisher, message_id, outcome",
        );
        let returned = sqlx::query_with(&rows.sql, rows.args)
            .fetch_all(&mut **tx)
            .await?;
        metrics
            .ledger_rows
            .with_label_values(&["events"])
            .inc_by(returned.len() as u64);
        for r in returned {
            if r.try_get::<String, _>(3)? == EventOutcome::Routed.as_str() {
                ids.insert((r.try_get(1)?, r.try_get(2)?), r.try_get(0)?);
            }
        }
    }
    let mut found = Found::new();
    // (event id, when the event was received, notification) for every routed event, new or
    // seen before: a notification is made when its event is received.
    let mut made: Vec<(i64, i64, &NotificationRecord)> = Vec::new();
    let mut persons: Vec<(i64, &str)> = Vec::new();
    for (i, e, notifications) in &events {
        if e.outcome != EventOutcome::Routed {
            continue;
        }
        let id = match ids.get(&(e.publisher.clone(), e.message_id.clone())) {
            Some(id) => {
                persons.extend(e.persons.iter().map(|p| (*id, p.as_str())));
                (*id, ms(e.received_at))
            }
            None => {
                // Routed before: what became of each of its notifications.
                let rows = sqlx::query(
                    "SELECT e.id, n.key, n.status, e.received_at FROM events e \
                     LEFT JOIN notifications n ON n.event_id = e.id \
                     WHERE e.publisher = $1 AND e.message_id = $2 AND e.outcome = 'routed'",
                )
                .bind(&e.publisher)
                .bind(&e.message_id)
                .fetch_all(&mut **tx)
                .await?;
                let Some(first) = rows.first() else {
                    return Err(sqlx::Error::RowNotFound);
                };
                let id: i64 = first.try_get(0)?;
                let mut before = HashMap::new();
                for r in &rows {
                    if let (Some(key), Some(status)) = (
                        r.try_get::<Option<String>, _>(1)?,
                        r.try_get::<Option<String>, _>(2)?,
                    ) {
                        before.insert(key, status.parse().unwrap_or(Status::Pending));
                    }
                }
                found.insert(*i, Seen::Before(before));
                // A notification added to an event seen before is of that event's time.
                (id, first.try_get(3)?)
            }
        };
        let (id, received) = id;
        made.extend(notifications.iter().map(|n| (id, received, n)));
    }
    for chunk in statements(&persons) {
        let mut rows = Rows::new(
            "INSERT INTO persons (event_id, identifier) VALUES ",
            backend,
        );
        for (id, p) in chunk {
            rows.row(vec![V::Int(*id), V::Text(p)])?;
        }
        sqlx::query_with(&rows.sql, rows.args)
            .execute(&mut **tx)
            .await?;
    }
    let now = ms(chrono::Utc::now());
    for chunk in statements(&made) {
        let mut rows = Rows::new(
            "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
             channel, sla_rule, deadline, created_at, status, reason, updated_at) VALUES ",
            backend,
        );
        for (id, received, n) in chunk {
            rows.row(vec![
                V::Text(&n.key),
                V::Int(*id),
                V::Text(&n.route),
                V::Text(&n.recipient),
                V::Text(n.class()),
                V::Text(&n.channel),
                V::OptText(n.sla_rule.as_deref()),
                V::OptInt(n.deadline.map(ms)),
                V::Int(*received),
                V::Text(n.status.as_str()),
                V::OptText(n.reason.as_deref()),
                V::Int(now),
            ])?;
        }
        rows.sql.push_str(" ON CONFLICT (key) DO NOTHING");
        let done = sqlx::query_with(&rows.sql, rows.args)
            .execute(&mut **tx)
            .await?;
        metrics
            .ledger_rows
            .with_label_values(&["notifications"])
            .inc_by(done.rows_affected());
    }
    // The last update of each notification in the batch wins; every attempt is kept.
    let mut updates: HashMap<&str, &Update> = HashMap::new();
    let mut attempts = Vec::new();
    for op in batch {
        if let Op::Update { update, .. } = op {
            updates.insert(&update.key, update);
            if let Some(a) = &update.attempt {
                attempts.push((update.key.as_str(), a));
            }
        }
    }
    let updates: Vec<&Update> = updates.into_values().collect();
    for chunk in statements(&updates) {
        let mut rows = Rows::new(
            "UPDATE notifications SET status = v.column2, reason = v.column3, \
             attempts = v.column4, first_failure_at = v.column5, delivered_at = v.column6, \
             sla_outcome = v.column7, sent_hash = v.column8, updated_at = v.column9 \
             FROM (VALUES ",
            backend,
        );
        for u in chunk {
            rows.row(vec![
                V::Text(&u.key),
                V::Text(u.status.as_str()),
                V::OptText(u.reason.as_deref()),
                V::Int(u.attempts),
                V::OptInt(u.first_failure_at.map(ms)),
                V::OptInt(u.delivered_at.map(ms)),
                V::OptText(u.sla_outcome),
                V::OptText(u.sent_hash.as_deref()),
                V::Int(now),
            ])?;
        }
        rows.sql
            .push_str(") AS v WHERE notifications.key = v.column1");
        sqlx::query_with(&rows.sql, rows.args)
            .execute(&mut **tx)
            .await?;
    }
    for chunk in statements(&attempts) {
        let mut rows = Rows::new(
            "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
             VALUES ",
            backend,
        );
        for (key, a) in chunk {
            rows.row(vec![
                V::Text(key),
                V::Int(ms(a.at)),
                V::Int(i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX)),
                V::Text(a.outcome),
                V::OptInt(a.code.map(i64::from)),
                V::Text(a.breaker),
            ])?;
        }
        sqlx::query_with(&rows.sql, rows.args)
            .execute(&mut **tx)
            .await?;
        metrics
            .ledger_rows
            .with_label_values(&["attempts"])
            .inc_by(chunk.len() as u64);
    }
    for op in batch {
        if let Op::Endpoint { endpoint: e, .. } = op {
            sqlx::query(
                "INSERT INTO endpoints (recipient, channel, state, since, reason) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (recipient, channel) DO UPDATE SET \
                 state = excluded.state, since = excluded.since, reason = excluded.reason",
            )
            .bind(&e.recipient)
            .bind(&e.channel)
            .bind(e.state)
            .bind(ms(e.since))
            .bind(e.reason.as_deref())
            .execute(&mut **tx)
            .await?;
            metrics.ledger_rows.with_label_values(&["endpoints"]).inc();
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_in_statements_of_the_fixed_sizes_only() {
        let rows: Vec<usize> = (0..343).collect();
        let sizes: Vec<usize> = statements(&rows).map(<[usize]>::len).collect();
        assert_eq!(sizes, [256, 64, 16, 4, 1, 1, 1]);
        let again: Vec<usize> = statements(&rows).flatten().copied().collect();
        assert_eq!(again, rows);
        assert_eq!(statements::<usize>(&[]).count(), 0);
    }
}

//! Group commit: one task writes every row the service records, committing together whatever
//! queued while the previous commit ran. A caller waits for the commit that holds its rows. A handled event is one
//! operation: the event, its identifiers, its notifications as their handling ended and their
//! attempts. Beside it, a reader answers what the ledger holds of the events about to be
//! delivered, all the questions that queued in one query.
//!
//! When a commit fails with an error of the store itself (SQLite's I/O error, disk full,
//! read-only, busy), or fails and one small row written on its own (a probe) fails too, the
//! store is down (PostgreSQL unreachable, a disk full, a read-only file): the task
//! says so once (log line, `herald_ledger_up`, `/readyz`), keeps the rows and tries again,
//! every second at first and then every five, until the store takes them. If the probe
//! succeeds, the fault is in the rows: each is written alone, and the one the store refuses is
//! answered with the error (its event goes back to the queue) instead of holding up the rest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::{Any, Connection, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::route::authority::{Change, ChangeKind};

use super::lite::{self, Lite, Statements};
use super::sql::{NOTIFICATION_WIDTH, Rows, SQLITE_ROWS, Src, Table, V, seen_sql};
use super::{
    AttemptRecord, Backend, EndpointRecord, EscalationRecord, EventOutcome, EventRecord,
    LedgerError, NotificationRecord, Seen, Status, Store, Update, ms,
};

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

pub(super) enum Op {
    Event {
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
        /// How the handling of some of them ended, written with them.
        updates: Vec<Update>,
        /// The change a register event makes to the authority register, written with it.
        change: Option<Change>,
        /// The escalations of its notifications left undelivered, written with them.
        escalations: Vec<EscalationRecord>,
        /// Whether the caller wants to know what the ledger had of the event before.
        asks: bool,
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
    fn asks(&self) -> bool {
        matches!(self, Op::Event { asks: true, .. })
    }

    fn fail(self, e: LedgerError) {
        match self {
            Op::Event { reply, .. } => drop(reply.send(Err(e))),
            Op::Update { reply, .. } | Op::Endpoint { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// What one commit found, per event operation in the batch (by index).
type Found = HashMap<usize, Seen>;

/// A question for the reader: what the ledger holds of a routed event.
struct Ask {
    publisher: String,
    message_id: String,
    reply: oneshot::Sender<Result<Seen, LedgerError>>,
}

/// The writing side of the ledger, shared by the service's tasks.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    ops: mpsc::Sender<Op>,
    asks: mpsc::Sender<Ask>,
}

impl Ledger {
    /// Starts the writer and the reader tasks; they end when the last `Ledger` is dropped.
    pub fn start(store: Store, metrics: Metrics) -> Ledger {
        let (ops, rx) = mpsc::channel(4 * MAX_BATCH);
        let (asks, questions) = mpsc::channel(4 * MAX_BATCH);
        metrics.ledger_up.set(1);
        tokio::spawn(run(store.clone(), rx, metrics.clone()));
        tokio::spawn(read(store.clone(), questions, metrics));
        Ledger { store, ops, asks }
    }

    /// What the ledger holds of a routed event: nothing, or each of its notifications with
    /// its status. Asked before an event is delivered; many questions are answered by one
    /// query. Once a commit has found that the store takes no writes, the answers wait until
    /// it does again, so nothing more is sent that could not be recorded.
    pub async fn seen(&self, publisher: &str, message_id: &str) -> Result<Seen, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Ask {
                publisher: publisher.to_owned(),
                message_id: message_id.to_owned(),
                reply,
            })
            .await
            .map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Records a handled event in one commit: the event, the notifications routing made of it
    /// (or those handled again, for an event seen before), how each handling ended, with its
    /// attempt, and for a register event the change it makes to the authority register (a
    /// change recorded before is not recorded again). Returns once committed.
    pub async fn handled(
        &self,
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
        updates: Vec<Update>,
        change: Option<Change>,
    ) -> Result<(), LedgerError> {
        self.handled_escalating(event, notifications, updates, change, Vec::new())
            .await
    }

    /// [`Ledger::handled`] with the escalations of the notifications it left undelivered,
    /// in the same commit: an event acknowledged has its escalations recorded.
    pub async fn handled_escalating(
        &self,
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
        updates: Vec<Update>,
        change: Option<Change>,
        escalations: Vec<EscalationRecord>,
    ) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Event {
            event,
            notifications,
            updates,
            change,
            escalations,
            asks: false,
            reply,
        })
        .await?;
        answer.await.map_err(|_| LedgerError::Stopped)?.map(drop)
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
        self.event_changing(event, notifications, None).await
    }

    /// [`Ledger::event`] for a register event: the change it makes to the authority register
    /// is recorded in the same commit (a change recorded before is not recorded again).
    pub async fn event_changing(
        &self,
        event: EventRecord,
        notifications: Vec<NotificationRecord>,
        change: Option<Change>,
    ) -> Result<Seen, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Event {
            event,
            notifications,
            updates: Vec::new(),
            change,
            escalations: Vec::new(),
            asks: true,
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

/// Takes whatever queued while the last commit ran and commits it, one transaction at a time.
/// One writer, on both backends: SQLite has one writer at a time anyway, and on PostgreSQL
/// overlapping transactions split the same rows into smaller commits, each costing the server
/// its own round trips, planning and log flush (measured: four writers took twice the
/// server's CPU per event of one, for less throughput; docs/performance.md). One writer also
/// keeps the commits in the order the operations were queued, so a retry's outcome never
/// lands before the row it changes.
async fn run(store: Store, mut rx: mpsc::Receiver<Op>, metrics: Metrics) {
    let mut lite = store
        .sqlite_file()
        .map(|(path, sync)| Lite::new(path, sync));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write_batch(&store, &mut lite, std::mem::take(&mut batch), &metrics).await;
        batch.reserve(MAX_BATCH);
    }
}

/// Commits one batch, waiting while the store takes no writes; answers every operation.
async fn write_batch(
    store: &Store,
    lite: &mut Option<Lite>,
    mut batch: Vec<Op>,
    metrics: &Metrics,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let (back, result) = commit(store, lite, batch, metrics).await;
        // Without its batch (the writer's thread ended with it), every caller has seen its
        // reply dropped, as from a stopped ledger, and its event goes back to the queue.
        let Some(back) = back else { return };
        batch = back;
        match result {
            Ok(found) => {
                metrics
                    .ledger_commit_seconds
                    .with_label_values::<&str>(&[])
                    .observe(started.elapsed().as_secs_f64());
                answer(batch, found);
                back_up(store, metrics);
                return;
            }
            Err(e) => {
                // An error of the store itself (I/O, full, read-only) is never the rows' fault,
                // even when a probe gets through: refusing the rows would send their events
                // back to the queue, and what was delivered would be sent again.
                let faulty = store_fault(store, &e);
                if faulty {
                    mark_down(store, metrics, &e);
                }
                if faulty || down(store, metrics).await {
                    tokio::time::sleep(wait).await;
                    wait = Duration::from_secs(5);
                    continue;
                }
                warn!(error = %e, operations = batch.len(), "a group of ledger rows was refused; writing them one by one");
                one_by_one(store, lite, batch, metrics).await;
                return;
            }
        }
    }
}

/// Why a commit failed: an error of the pool's connection (PostgreSQL) or of SQLite's writer.
#[derive(Debug)]
enum Fault {
    Pool(sqlx::Error),
    Lite(rusqlite::Error),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Pool(e) => e.fmt(f),
            Fault::Lite(e) => e.fmt(f),
        }
    }
}

impl Fault {
    /// SQLite's result code, extended, if the error is one of SQLite's writer (the pool
    /// commits only on PostgreSQL).
    fn sqlite_code(&self) -> Option<i64> {
        match self {
            Fault::Lite(rusqlite::Error::SqliteFailure(e, _)) => Some(i64::from(e.extended_code)),
            Fault::Lite(_) | Fault::Pool(_) => None,
        }
    }
}

/// Whether an error is the store's own rather than the rows': SQLite's I/O error, disk full,
/// read-only database, cannot open, busy or locked (by their primary result codes). On
/// PostgreSQL the probe decides, as a server that takes no writes refuses the probe too.
fn store_fault(store: &Store, e: &Fault) -> bool {
    if store.backend() != Backend::Sqlite {
        return false;
    }
    let Some(code) = e.sqlite_code() else {
        return false;
    };
    // SQLITE_BUSY 5, SQLITE_LOCKED 6, SQLITE_READONLY 8, SQLITE_IOERR 10, SQLITE_FULL 13,
    // SQLITE_CANTOPEN 14; an extended code keeps its primary code in the low byte.
    matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14)
}

/// Says once per change that the store takes no writes (log line, `herald_ledger_up`,
/// `/readyz`).
fn mark_down(store: &Store, metrics: &Metrics, e: &dyn std::fmt::Display) {
    let reason = crate::mask::scrub(&e.to_string(), store.shown());
    metrics.ledger_up.set(0);
    if store.health().set(Some(reason.clone())) {
        error!(ledger = store.shown(), error = %reason, "the ledger takes no writes; no event is acknowledged until it does");
    }
}

/// Whether the store takes no writes now, found by writing one small row (a probe): said once
/// per change (log line, `herald_ledger_up`, `/readyz`).
async fn down(store: &Store, metrics: &Metrics) -> bool {
    match store.probe().await {
        Err(probe) => {
            mark_down(store, metrics, &probe);
            true
        }
        Ok(()) => {
            back_up(store, metrics);
            false
        }
    }
}

/// Answers the questions asked of the ledger before delivery, all that queued while the last
/// query ran in one query. It reads beside the writer (a SQLite reader does not wait for the
/// writer). While the store takes no writes, the answers wait.
async fn read(store: Store, mut rx: mpsc::Receiver<Ask>, metrics: Metrics) {
    let mut asks = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut asks, MAX_BATCH).await > 0 {
        let mut wait = Duration::from_secs(1);
        let answers = loop {
            if store.health().down().is_some() && down(&store, &metrics).await {
                tokio::time::sleep(wait).await;
                wait = Duration::from_secs(5);
                continue;
            }
            match look_up(&store, &asks).await {
                Ok(before) => break Ok(before),
                Err(_) if down(&store, &metrics).await => {
                    tokio::time::sleep(wait).await;
                    wait = Duration::from_secs(5);
                }
                Err(e) => break Err(e),
            }
        };
        for ask in asks.drain(..) {
            let seen = match &answers {
                Ok(before) => Ok(before
                    .get(&(ask.publisher, ask.message_id))
                    .map_or(Seen::New, |b| Seen::Before(b.clone()))),
                Err(e) => Err(store.error(e)),
            };
            let _ = ask.reply.send(seen);
        }
    }
}

/// What the ledger holds of the routed events asked about.
async fn look_up(store: &Store, asks: &[Ask]) -> Result<Before, sqlx::Error> {
    use sqlx::Arguments;
    let rows = match store.backend() {
        Backend::Postgres => {
            let mut pairs = Rows::new(2);
            for a in asks {
                pairs.push([V::Text(&a.publisher), V::Text(&a.message_id)]);
            }
            sqlx::query(Table::Seen.postgres())
                .bind(pairs.json()?)
                .fetch_all(store.pool())
                .await?
        }
        Backend::Sqlite => {
            let mut rows = Vec::new();
            for piece in asks.chunks(SQLITE_ROWS) {
                let mut args = sqlx::any::AnyArguments::default();
                for a in piece {
                    args.add(a.publisher.as_str())
                        .map_err(sqlx::Error::Encode)?;
                    args.add(a.message_id.as_str())
                        .map_err(sqlx::Error::Encode)?;
                }
                let sql = seen_sql(Src::Values {
                    rows: piece.len(),
                    width: 2,
                });
                rows.extend(
                    sqlx::query_with(&sql, args)
                        .persistent(false)
                        .fetch_all(store.pool())
                        .await?,
                );
            }
            rows
        }
    };
    let mut before = Before::new();
    for r in &rows {
        read_seen(&mut before, r)?;
    }
    Ok(before)
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

async fn one_by_one(store: &Store, lite: &mut Option<Lite>, batch: Vec<Op>, metrics: &Metrics) {
    for op in batch {
        let (back, result) = commit(store, lite, vec![op], metrics).await;
        let Some(back) = back else { continue };
        match result {
            Ok(found) => answer(back, found),
            Err(e) => {
                metrics.ledger_refused.with_label_values::<&str>(&[]).inc();
                error!(error = %e, "the ledger refused an operation; its event goes back to the queue");
                for op in back {
                    op.fail(store.error(&e));
                }
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

/// A batch's rows, table by table.
pub(super) struct Tables<'a> {
    rows: [Rows<'a>; 10],
}

impl<'a> Tables<'a> {
    pub(super) fn of(batch: &'a [Op], now: i64) -> Tables<'a> {
        let mut seen = Rows::new(2);
        let mut events = Rows::new(8);
        let mut persons = Rows::new(3);
        let mut notifications = Rows::new(NOTIFICATION_WIDTH);
        // The last update of each notification in the batch wins; every attempt is kept.
        let mut updates: HashMap<&str, &Update> = HashMap::new();
        let mut attempts = Rows::new(6);
        let mut endpoints: HashMap<(&str, &str), &EndpointRecord> = HashMap::new();
        let mut authority = Rows::new(9);
        let mut custody = Rows::new(5);
        let mut escalations = Rows::new(11);
        for op in batch {
            match op {
                Op::Event {
                    event: e,
                    notifications: made,
                    updates: outcomes,
                    change,
                    escalations: escalating,
                    ..
                } => {
                    let id: [V; 2] = [(&e.publisher).into(), (&e.message_id).into()];
                    events.push([
                        id[0],
                        id[1],
                        (&e.event_type).into(),
                        e.version.into(),
                        e.occurred_at.map(ms).into(),
                        ms(e.received_at).into(),
                        e.outcome.as_str().into(),
                        e.reason.as_ref().into(),
                    ]);
                    if e.outcome != EventOutcome::Routed {
                        continue;
                    }
                    if op.asks() {
                        seen.push(id);
                    }
                    for p in &e.persons {
                        persons.push([id[0], id[1], p.into()]);
                    }
                    if let (Some(entry), Some(occurred)) = (&e.custody, e.occurred_at) {
                        custody.push([
                            id[0],
                            id[1],
                            ms(occurred).into(),
                            ms(e.received_at).into(),
                            entry.into(),
                        ]);
                    }
                    if let Some(c) = change {
                        let until = match c.kind {
                            ChangeKind::Grant { until, .. } => until,
                            ChangeKind::Withdrawal { .. } => None,
                        };
                        authority.push([
                            id[0],
                            id[1],
                            (&c.person).into(),
                            (&c.representative).into(),
                            c.kind.as_str().into(),
                            c.kind.from().into(),
                            until.into(),
                            ms(c.occurred_at).into(),
                            ms(e.received_at).into(),
                        ]);
                    }
                    // Each notification is written as its handling ended, if it has.
                    let ended: HashMap<&str, &Update> =
                        outcomes.iter().map(|u| (u.key.as_str(), u)).collect();
                    for n in made {
                        let u = ended.get(n.key.as_str());
                        notifications.push([
                            id[0],
                            id[1],
                            (&n.key).into(),
                            (&n.route).into(),
                            (&n.recipient).into(),
                            n.class().into(),
                            (&n.channel).into(),
                            n.sla_rule.as_ref().into(),
                            n.deadline.map(ms).into(),
                            u.map_or(n.status, |u| u.status).as_str().into(),
                            u.map_or(n.reason.as_ref(), |u| u.reason.as_ref()).into(),
                            u.map_or(0, |u| u.attempts).into(),
                            u.and_then(|u| u.first_failure_at.map(ms)).into(),
                            u.and_then(|u| u.delivered_at.map(ms)).into(),
                            u.and_then(|u| u.sla_outcome).into(),
                            u.and_then(|u| u.sent_hash.as_ref()).into(),
                            now.into(),
                        ]);
                    }
                    for x in escalating {
                        escalations.push([
                            (&x.key).into(),
                            (&x.notification_key).into(),
                            (&x.route).into(),
                            (&x.recipient).into(),
                            (&x.recipient_class).into(),
                            (&x.channel).into(),
                            (&x.rule).into(),
                            (&x.template).into(),
                            ms(x.due_at).into(),
                            (&x.data).into(),
                            now.into(),
                        ]);
                    }
                    for u in outcomes {
                        if !made.iter().any(|n| n.key == u.key) {
                            updates.insert(&u.key, u);
                        }
                        if let Some(a) = &u.attempt {
                            attempts.push(attempt_row(&u.key, a));
                        }
                    }
                }
                Op::Update { update, .. } => {
                    updates.insert(&update.key, update);
                    if let Some(a) = &update.attempt {
                        attempts.push(attempt_row(&update.key, a));
                    }
                }
                Op::Endpoint { endpoint: e, .. } => {
                    endpoints.insert((&e.recipient, &e.channel), e);
                }
            }
        }
        let mut update_rows = Rows::new(9);
        for u in updates.into_values() {
            update_rows.push([
                (&u.key).into(),
                u.status.as_str().into(),
                u.reason.as_ref().into(),
                u.attempts.into(),
                u.first_failure_at.map(ms).into(),
                u.delivered_at.map(ms).into(),
                u.sla_outcome.into(),
                u.sent_hash.as_ref().into(),
                now.into(),
            ]);
        }
        let mut endpoint_rows = Rows::new(5);
        for e in endpoints.into_values() {
            endpoint_rows.push([
                (&e.recipient).into(),
                (&e.channel).into(),
                e.state.into(),
                ms(e.since).into(),
                e.reason.as_ref().into(),
            ]);
        }
        Tables {
            rows: [
                seen,
                events,
                persons,
                notifications,
                update_rows,
                attempts,
                endpoint_rows,
                authority,
                custody,
                escalations,
            ],
        }
    }

    pub(super) fn get(&self, t: Table) -> &Rows<'a> {
        &self.rows[t as usize]
    }
}

fn attempt_row<'a>(key: &'a str, a: &'a AttemptRecord) -> [V<'a>; 6] {
    [
        key.into(),
        ms(a.at).into(),
        i64::try_from(a.duration.as_millis())
            .unwrap_or(i64::MAX)
            .into(),
        a.outcome.into(),
        a.code.map(i64::from).into(),
        a.breaker.into(),
    ]
}

/// Each routed event seen before, by (publisher, message_id): its notifications' statuses.
pub(super) type Before = HashMap<(String, String), HashMap<String, Status>>;

fn read_seen(before: &mut Before, r: &sqlx::any::AnyRow) -> Result<(), sqlx::Error> {
    let entry = before.entry((r.try_get(0)?, r.try_get(1)?)).or_default();
    if let (Some(key), Some(status)) = (
        r.try_get::<Option<String>, _>(2)?,
        r.try_get::<Option<String>, _>(3)?,
    ) {
        entry.insert(key, status.parse().unwrap_or(Status::Pending));
    }
    Ok(())
}

/// Writes a batch in one transaction: on SQLite by the writer's own thread, on PostgreSQL
/// through the pool. Gives the batch back (unless the writer's thread ended with it) with what
/// the commit found of the events asked about.
async fn commit(
    store: &Store,
    lite: &mut Option<Lite>,
    batch: Vec<Op>,
    metrics: &Metrics,
) -> (Option<Vec<Op>>, Result<Found, Fault>) {
    let now = ms(chrono::Utc::now());
    let (batch, written) = match lite {
        Some(lite) => {
            let done = lite
                .run(move |session| {
                    let written =
                        session.transaction(|st| write_lite(st, &Tables::of(&batch, now)));
                    (batch, written)
                })
                .await;
            match done {
                Ok(Some((batch, written))) => (Some(batch), written.map_err(Fault::Lite)),
                // The thread ended with the batch, or could not be started: its operations'
                // callers see their replies dropped, as from a stopped ledger, and their events
                // go back to the queue.
                Ok(None) => (None, Err(Fault::Lite(lite::stopped()))),
                Err(e) => (None, Err(Fault::Lite(e))),
            }
        }
        None => {
            let written = write_postgres(store, &batch, now).await;
            (Some(batch), written.map_err(Fault::Pool))
        }
    };
    let Some(batch) = batch else {
        return (None, written.map(|_| Found::new()));
    };
    let found = written.map(|(before, written)| {
        for (table, n) in written {
            if let Some(label) = table.counted().filter(|_| n > 0) {
                metrics.ledger_rows.with_label_values(&[label]).inc_by(n);
            }
        }
        let mut found = Found::new();
        for (i, op) in batch.iter().enumerate() {
            if let Op::Event { event: e, .. } = op
                && op.asks()
                && let Some(seen) = before.get(&(e.publisher.clone(), e.message_id.clone()))
            {
                found.insert(i, Seen::Before(seen.clone()));
            }
        }
        found
    });
    (Some(batch), found)
}

/// What a commit found of the events asked about, and the rows each table's statements wrote.
pub(super) type Written = (Before, Vec<(Table, u64)>);

/// Runs every table's rows in the order of [`Table::ALL`]: first what the ledger held of the
/// events asked about, before anything of this batch is written.
/// On SQLite each row through a statement prepared once (an event's identifiers together).
fn write_lite(st: &mut Statements<'_>, tables: &Tables<'_>) -> Result<Written, rusqlite::Error> {
    use rusqlite::params_from_iter;
    let mut before = Before::new();
    let mut written = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        let rows = tables.get(table);
        if rows.is_empty() {
            continue;
        }
        let width = rows.width;
        let mut changed = 0u64;
        match table {
            Table::Seen => {
                let mut stmt = st.get(table, 1, width)?;
                for row in rows.values.chunks(width) {
                    let mut found = stmt.query(params_from_iter(row))?;
                    while let Some(r) = found.next()? {
                        let entry = before.entry((r.get(0)?, r.get(1)?)).or_default();
                        if let (Some(key), Some(status)) = (
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ) {
                            entry.insert(key, status.parse().unwrap_or(Status::Pending));
                        }
                    }
                }
                continue;
            }
            // An event's identifiers in one statement: each is written only if the event
            // has none yet, which one statement judges before it writes any of them.
            Table::Persons => {
                let each: Vec<&[V<'_>]> = rows.values.chunks(width).collect();
                for group in each.chunk_by(|a, b| a[..2] == b[..2]) {
                    let values = group.iter().flat_map(|row| row.iter());
                    changed += st
                        .get(table, group.len(), width)?
                        .execute(params_from_iter(values))? as u64;
                }
            }
            _ => {
                let mut stmt = st.get(table, 1, width)?;
                for row in rows.values.chunks(width) {
                    changed += stmt.execute(params_from_iter(row))? as u64;
                }
            }
        }
        written.push((table, changed));
    }
    Ok((before, written))
}

/// PostgreSQL: statement by statement in a transaction (its protocol takes one statement
/// with parameters at a time), the empty ones skipped.
async fn write_postgres(store: &Store, batch: &[Op], now: i64) -> Result<Written, sqlx::Error> {
    let tables = Tables::of(batch, now);
    let mut conn = store.pool().acquire().await?;
    let written = write_tables(&mut conn, &tables).await;
    if written.is_err() {
        // Not given back to the pool: a transaction that failed part-way is rolled back by
        // closing its connection, whatever state the error left it in.
        conn.close_on_drop();
    }
    written
}

async fn write_tables(
    conn: &mut sqlx::pool::PoolConnection<Any>,
    tables: &Tables<'_>,
) -> Result<Written, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut before = Before::new();
    let mut written = Vec::new();
    for table in Table::ALL {
        let rows = tables.get(table);
        if rows.is_empty() || table == Table::Seen {
            continue;
        }
        let query = sqlx::query(table.postgres()).bind(rows.json()?);
        if table == Table::Events {
            let new = query.fetch_all(&mut *tx).await?;
            written.push((table, new.len() as u64));
            // The routed events asked about that were not inserted now were routed before:
            // what became of them, asked after the insert, which waits for any other
            // transaction inserting the same event.
            let new: std::collections::HashSet<(String, String)> = new
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let mut old = Rows::new(2);
            for pair in tables.get(Table::Seen).values.chunks(2) {
                if let [V::Text(p), V::Text(m)] = pair
                    && !new.contains(&((*p).to_owned(), (*m).to_owned()))
                {
                    old.push([V::Text(p), V::Text(m)]);
                }
            }
            if !old.is_empty() {
                for r in sqlx::query(Table::Seen.postgres())
                    .bind(old.json()?)
                    .fetch_all(&mut *tx)
                    .await?
                {
                    read_seen(&mut before, &r)?;
                }
            }
        } else {
            written.push((table, query.execute(&mut *tx).await?.rows_affected()));
        }
    }
    tx.commit().await?;
    Ok((before, written))
}

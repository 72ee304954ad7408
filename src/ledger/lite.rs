//! SQLite's writer: one connection on a thread of its own, on which each commit's statements
//! are prepared once and run row by row.
//!
//! Through the pool, a commit was one script of `VALUES` lists built for its numbers of rows:
//! parsed by SQLite at every commit, its values converted twice on the way (to the `Any`
//! layer's and then to SQLite's), and handed to the pool connection's thread and its results
//! back through channels. Here the writer task hands the whole batch to this thread, which
//! runs `BEGIN IMMEDIATE`, one prepared statement per row (one per event for its identifiers),
//! and `COMMIT`, and hands the batch back with what it found: one hand-over each way per
//! commit, no SQL text built or parsed once the statements are cached.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::ffi::{SQLITE_CANTOPEN, SQLITE_MISUSE};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, params_from_iter};
use tokio::sync::oneshot;

use super::Sync;
use super::sql::{Src, Table, V};
use super::writer::{Before, Op, Tables, Written};

/// The writer's thread, and the way to it. The thread ends when this is dropped.
pub(super) struct Lite {
    path: Arc<Path>,
    sync: Sync,
    /// Started at the first commit, and again if it has ended.
    jobs: Option<mpsc::Sender<Job>>,
}

/// A batch to commit, and where its rows and the outcome go back.
struct Job {
    batch: Vec<Op>,
    now: i64,
    reply: oneshot::Sender<(Vec<Op>, Result<Written, rusqlite::Error>)>,
}

impl Lite {
    pub(super) fn new(path: Arc<Path>, sync: Sync) -> Lite {
        Lite {
            path,
            sync,
            jobs: None,
        }
    }

    fn spawn(&self) -> std::io::Result<mpsc::Sender<Job>> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut writer = Writer {
            path: self.path.clone(),
            sync: self.sync,
            conn: None,
            sql: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("herald-ledger".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let written = writer.commit(&job.batch, job.now);
                    let _ = job.reply.send((job.batch, written));
                }
            })?;
        Ok(jobs)
    }

    /// Commits `batch` in one transaction; gives the batch back with what was found and
    /// written, or the error (after which the transaction is rolled back and the connection
    /// opened again for the next).
    pub(super) async fn commit(
        &mut self,
        batch: Vec<Op>,
        now: i64,
    ) -> (Option<Vec<Op>>, Result<Written, rusqlite::Error>) {
        let jobs = match self.jobs.take() {
            Some(jobs) => jobs,
            None => match self.spawn() {
                Ok(jobs) => jobs,
                Err(e) => return (Some(batch), Err(failure(SQLITE_CANTOPEN, &e))),
            },
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = jobs.send(Job { batch, now, reply }) {
            // The thread has ended: the next commit starts another.
            return (Some(job.batch), Err(failure(SQLITE_MISUSE, &"stopped")));
        }
        match answer.await {
            Ok((batch, written)) => {
                self.jobs = Some(jobs);
                (Some(batch), written)
            }
            // The thread ended with the batch: its operations' callers see their replies
            // dropped, as from a stopped ledger. The next commit starts another thread.
            Err(_) => (None, Err(failure(SQLITE_MISUSE, &"stopped"))),
        }
    }
}

/// An error of the writer's thread itself, with SQLite's code for what it amounts to: a
/// thread that cannot be started is a store that cannot be opened.
fn failure(code: std::ffi::c_int, why: &dyn std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(format!("the ledger's writer thread: {why}")),
    )
}

struct Writer {
    path: Arc<Path>,
    sync: Sync,
    conn: Option<Connection>,
    /// Each statement's text by table and rows, made once.
    sql: HashMap<(usize, usize), Arc<str>>,
}

impl Writer {
    fn commit(&mut self, batch: &[Op], now: i64) -> Result<Written, rusqlite::Error> {
        let tables = Tables::of(batch, now);
        if self.conn.is_none() {
            self.conn = Some(open(&self.path, self.sync)?);
        }
        let conn = self.conn.as_ref().expect("opened above");
        let result = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .and_then(|_| write(conn, &mut self.sql, &tables))
            .and_then(|written| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(written)
            });
        if result.is_err() {
            // As with the pool's connections: after a disk full or an I/O error SQLite can keep
            // a connection in a state that holds the write lock, so it is closed (which rolls
            // back what the transaction wrote) and the next commit opens another.
            self.conn = None;
        }
        result
    }
}

/// Opens the writer's connection with the pool's settings (see `Store::connect`).
fn open(path: &Path, sync: Sync) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The statement writing `rows` rows of `table`, its text made once.
fn statement<'c>(
    conn: &'c Connection,
    sql: &mut HashMap<(usize, usize), Arc<str>>,
    table: Table,
    rows: usize,
    width: usize,
) -> Result<rusqlite::CachedStatement<'c>, rusqlite::Error> {
    let text = sql
        .entry((table as usize, rows))
        .or_insert_with(|| table.sql(Src::Values { rows, width }).into());
    conn.prepare_cached(text)
}

/// Runs every table's rows in the order of [`Table::ALL`]: first what the ledger held of the
/// events asked about, before anything of this batch is written.
fn write(
    conn: &Connection,
    sql: &mut HashMap<(usize, usize), Arc<str>>,
    tables: &Tables<'_>,
) -> Result<Written, rusqlite::Error> {
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
                let mut stmt = statement(conn, sql, table, 1, width)?;
                for row in rows.values.chunks(width) {
                    let mut found = stmt.query(params_from_iter(row))?;
                    while let Some(r) = found.next()? {
                        let entry = before.entry((r.get(0)?, r.get(1)?)).or_default();
                        if let (Some(key), Some(status)) = (
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ) {
                            entry.insert(key, status.parse().unwrap_or(super::Status::Pending));
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
                    changed += statement(conn, sql, table, group.len(), width)?
                        .execute(params_from_iter(values))? as u64;
                }
            }
            _ => {
                let mut stmt = statement(conn, sql, table, 1, width)?;
                for row in rows.values.chunks(width) {
                    changed += stmt.execute(params_from_iter(row))? as u64;
                }
            }
        }
        written.push((table, changed));
    }
    Ok((before, written))
}

impl rusqlite::ToSql for V<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            V::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            V::Int(i) => ToSqlOutput::Owned(Value::Integer(i)),
            V::Date(d) => ToSqlOutput::Owned(Value::Text(d.format("%Y-%m-%d").to_string())),
            V::Null => ToSqlOutput::Owned(Value::Null),
        })
    }
}

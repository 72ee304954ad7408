//! SQLite's writer: one connection on a thread of its own, on which each commit's statements
//! are prepared once and run row by row.
//!
//! Through the pool, a commit was one script of `VALUES` lists built for its numbers of rows:
//! parsed by SQLite at every commit, its values converted twice on the way (to the `Any`
//! layer's and then to SQLite's), and handed to the pool connection's thread and its results
//! back through channels. Here the writer task hands the whole batch to this thread, which
//! runs `BEGIN IMMEDIATE`, the rows through statements prepared once, and `COMMIT`, and hands
//! the batch back with what it found: one hand-over each way per commit, no SQL text built or
//! parsed once the statements are cached. What a commit writes is the writer's
//! (`writer.rs`); this holds the thread, the connection and the statements.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::ffi::{SQLITE_CANTOPEN, SQLITE_MISUSE};
use rusqlite::{CachedStatement, Connection};
use tokio::sync::oneshot;

use super::Sync;
use super::sql::{Src, Table};

/// The writer's thread, and the way to it. The thread ends when this is dropped.
pub(super) struct Lite {
    path: Arc<Path>,
    sync: Sync,
    /// Started at the first job, and again if it has ended.
    jobs: Option<mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

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
        let mut session = Session {
            path: self.path.clone(),
            sync: self.sync,
            conn: None,
            sql: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("herald-ledger".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut session);
                }
            })?;
        Ok(jobs)
    }

    /// Runs `job` on the writer's thread and returns what it returns; `None` if the thread
    /// ended with it (the next job starts another). A thread that cannot be started is a store
    /// that cannot be opened.
    pub(super) async fn run<T: Send + 'static>(
        &mut self,
        job: impl FnOnce(&mut Session) -> T + Send + 'static,
    ) -> Result<Option<T>, rusqlite::Error> {
        let jobs = match self.jobs.take() {
            Some(jobs) => jobs,
            None => self.spawn().map_err(|e| failure(SQLITE_CANTOPEN, &e))?,
        };
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |session| drop(reply.send(job(session))));
        if jobs.send(job).is_err() {
            return Ok(None);
        }
        let done = answer.await.ok();
        if done.is_some() {
            self.jobs = Some(jobs);
        }
        Ok(done)
    }
}

/// An error of the writer's thread itself, with SQLite's code for what it amounts to.
pub(super) fn failure(code: std::ffi::c_int, why: &dyn std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(format!("the ledger's writer thread: {why}")),
    )
}

/// The writer's thread ended with a batch.
pub(super) fn stopped() -> rusqlite::Error {
    failure(SQLITE_MISUSE, &"stopped")
}

/// The writer thread's connection, opened when first needed, and its statements' texts.
pub(super) struct Session {
    path: Arc<Path>,
    sync: Sync,
    conn: Option<Connection>,
    sql: HashMap<(usize, usize), Arc<str>>,
}

impl Session {
    /// Runs `work` in one transaction, from `BEGIN IMMEDIATE` to `COMMIT`. On an error the
    /// connection is closed, which rolls back what the transaction wrote, and the next
    /// transaction opens another: as with the pool's connections, after a disk full or an
    /// I/O error SQLite can keep a connection in a state that holds the write lock.
    pub(super) fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Statements<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, rusqlite::Error> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path, self.sync)?);
        }
        let Some(conn) = self.conn.as_ref() else {
            return Err(stopped());
        };
        let mut statements = Statements {
            conn,
            sql: &mut self.sql,
        };
        let result = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .and_then(|_| work(&mut statements))
            .and_then(|done| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(done)
            });
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// The statements of a transaction, each prepared once per connection.
pub(super) struct Statements<'c> {
    conn: &'c Connection,
    /// Each statement's text by table and rows, made once.
    sql: &'c mut HashMap<(usize, usize), Arc<str>>,
}

impl<'c> Statements<'c> {
    /// The statement writing (or, for [`Table::Seen`], reading) `rows` rows of `width` values
    /// of `table`.
    pub(super) fn get(
        &mut self,
        table: Table,
        rows: usize,
        width: usize,
    ) -> Result<CachedStatement<'c>, rusqlite::Error> {
        let text = self
            .sql
            .entry((table as usize, rows))
            .or_insert_with(|| table.sql(Src::Values { rows, width }).into());
        self.conn.prepare_cached(text)
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

//! A ledger of its own for each test: a SQLite file in a folder of the test's, or, with
//! `HERALD_TEST_LEDGER=postgres` (or when a test asks for it), a database of its own on the
//! machine's PostgreSQL (127.0.0.1:5432, `HERALD_TEST_POSTGRES` to name another server).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald::ledger::Backend;
use sqlx::Connection;

/// The ledger each Herald a test started in this process writes, by its events queue, so
/// `herald dlq` run on a configuration naming that queue records in the same ledger as the
/// service it acts on.
static BY_QUEUE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

pub fn remember(queue: &str, url: &str) {
    BY_QUEUE
        .lock()
        .unwrap()
        .insert(queue.to_owned(), url.to_owned());
}

/// The ledger of the Herald started on `queue`, if one was.
pub fn of_queue(queue: &str) -> Option<String> {
    BY_QUEUE.lock().unwrap().get(queue).cloned()
}

/// The server the PostgreSQL tests create their databases on.
pub fn postgres_server() -> String {
    std::env::var("HERALD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The backend the service tests use: SQLite unless `HERALD_TEST_LEDGER=postgres`.
pub fn default_backend() -> Backend {
    match std::env::var("HERALD_TEST_LEDGER").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// Both backends, for the tests that run against each.
pub const BOTH: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A fresh, empty ledger's URL for a test.
pub async fn fresh(backend: Backend) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag = format!(
        "{}_{}_{n}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    match backend {
        Backend::Sqlite => {
            let dir = super::root().join("target/tmp/ledgers");
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}/ledger-{tag}.sqlite", dir.display())
        }
        Backend::Postgres => {
            let server = postgres_server();
            let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot log in to PostgreSQL at {server} as postgres without a password \
                         ({e}): start it (`pg_ctlcluster 15 main start`), allow trust login \
                         from 127.0.0.1 in pg_hba.conf or set PGPASSWORD, or name another \
                         server in HERALD_TEST_POSTGRES"
                    )
                });
            sweep(&mut admin).await;
            let name = format!("herald_test_{tag}");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            format!("{server}/{name}")
        }
    }
}

/// Drops the databases of test processes that have ended.
async fn sweep(admin: &mut sqlx::PgConnection) {
    use sqlx::Row;
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    SWEPT.call_once(|| first = true);
    if !first {
        return;
    }
    let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'herald_test_%'")
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let pid = name
            .trim_start_matches("herald_test_")
            .split('_')
            .next()
            .unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// The one number `sql` selects from the ledger (a `COUNT(*)`, say).
pub async fn count(store: &herald::ledger::Store, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

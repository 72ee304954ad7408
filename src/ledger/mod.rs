//! The delivery ledger: the durable memory of every event, notification and delivery attempt,
//! and of each endpoint's state, in SQLite (the embedded default) or PostgreSQL.
//!
//! One query layer serves both backends (sqlx's `Any` driver, plain SQL with `$N` binds, or `?`
//! in SQLite's many-row statements, every time as milliseconds since the epoch), with one
//! migration history per backend under `migrations/`. The service writes through a [`Ledger`]:
//! one task that commits whatever has queued while the previous commit ran, so many events
//! share a transaction (group commit) and each caller waits only for the commit that holds its
//! rows. When the store does not take writes, the task keeps
//! the rows and tries again until it does; callers wait, so nothing is acknowledged that is not
//! on disk. docs/ledger.md says what is kept, why and for how long.

mod authority;
mod custody;
mod digest;
mod escalate;
mod instances;
mod lite;
pub mod overview;
pub mod read;
pub mod report;
mod sql;
mod standing;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

use crate::notification::{DeliveryOutcome, ParkReason};

pub use authority::{AuthorityRow, Pair};
pub use digest::{DigestClaim, OpenDigest};
pub use escalate::{DueEscalation, EscalationEnd, EscalationRecord, EscalationState};
pub use instances::EndpointState;
pub use standing::{Notice, StandingChange};
pub use writer::Ledger;

/// Which database holds the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why the ledger cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger URL {0} is neither sqlite: nor postgres:")]
    Scheme(String),
    #[error("cannot create the ledger's folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the ledger at {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("cannot bring the ledger at {url} up to date: {reason}")]
    Migrate { url: String, reason: String },
    #[error("the ledger at {url}: {reason}")]
    Query { url: String, reason: String },
    #[error("the ledger stopped before the rows were written")]
    Stopped,
}

/// What became of an event at the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Admitted and routed (to no one, possibly).
    Routed,
    /// Refused; the reason is the rejection's code.
    Rejected,
    /// A copy of an event already routed: not routed again.
    Duplicate,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Routed => "routed",
            EventOutcome::Rejected => "rejected",
            EventOutcome::Duplicate => "duplicate",
        }
    }
}

/// Where a notification stands: the `status` column. Each comes from the outcome the handler
/// reached ([`Status::of`]), so the row, the log line and the metric say the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Status {
    /// Made; its delivery has not ended yet.
    Pending,
    /// The recipient has it.
    Delivered,
    /// It failed transiently; a retry is durably scheduled.
    Retrying,
    /// Refused for good, or could not be made; parked in the failed queue.
    Parked,
    /// The retry schedule ran out before it could be delivered; parked in the failed queue.
    Expired,
    /// Not made: the recipient may not be told (the reason says why).
    Skipped,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Delivered,
        Status::Retrying,
        Status::Parked,
        Status::Expired,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Retrying => "retrying",
            Status::Parked => "parked",
            Status::Expired => "expired",
            Status::Skipped => "skipped",
        }
    }

    /// The status a handling's outcome gives.
    pub fn of(outcome: DeliveryOutcome, parked: Option<ParkReason>) -> Status {
        match (outcome, parked) {
            (DeliveryOutcome::Delivered, _) => Status::Delivered,
            (DeliveryOutcome::Retrying, _) => Status::Retrying,
            (DeliveryOutcome::Failed, Some(ParkReason::RetriesExhausted)) => Status::Expired,
            (DeliveryOutcome::Failed, _) => Status::Parked,
        }
    }

    /// Whether the notification's handling has ended for this event: delivered, handed to
    /// the retry schedule or the failed queue, or skipped. A redelivered event does these
    /// again only when an operator asks (`herald dlq replay`).
    pub fn settled(self) -> bool {
        self != Status::Pending
    }
}

impl FromStr for Status {
    type Err = String;

    // String error: the word a user typed, for a "did you mean" message.
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}: one of {}", all.join(", "))
            })
    }
}

/// An event as the ledger keeps it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The login that published it ("" when the broker vouched for none).
    pub publisher: String,
    /// The publisher's message id ("" when it gave none).
    pub message_id: String,
    pub event_type: String,
    pub version: Option<i64>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// The person's identifiers, `TYPE:value`, for `herald ledger search --person`.
    pub persons: Vec<String>,
    pub outcome: EventOutcome,
    /// The rejection's reason code.
    pub reason: Option<String>,
    /// For a prison or court event, its entry in the custody register (JSON): written with
    /// a routed event.
    pub custody: Option<String>,
}

/// A notification as first recorded, before its delivery is tried.
#[derive(Debug, Clone)]
pub struct NotificationRecord {
    pub key: String,
    pub route: String,
    pub recipient: String,
    /// `email`, `webhook`, or `none` for one that was skipped or could not be made.
    pub channel: String,
    /// The route's deadline rule as written (`within 2 working days`).
    pub sla_rule: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub status: Status,
    pub reason: Option<String>,
}

impl NotificationRecord {
    /// The recipient's class: the part of its id before the colon.
    pub fn class(&self) -> &str {
        self.recipient
            .split_once(':')
            .map_or(self.recipient.as_str(), |(c, _)| c)
    }
}

/// How one handling of a notification ended: its new status, and the attempt that led there.
#[derive(Debug, Clone)]
pub struct Update {
    pub key: String,
    pub status: Status,
    pub reason: Option<String>,
    /// Attempts made so far.
    pub attempts: i64,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// `met`, `breached`, `short_notice`, `late_on_arrival` or `untracked`, once delivered.
    pub sla_outcome: Option<&'static str>,
    /// SHA-256 of what was sent, when `[ledger] keep_sent_hash` is on.
    pub sent_hash: Option<String>,
    pub attempt: Option<AttemptRecord>,
}

/// One delivery attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub duration: Duration,
    /// `delivered`, a failure kind (`http-retryable`, `smtp-transient`, ...) or `replayed`.
    pub outcome: &'static str,
    /// The HTTP status or SMTP reply code.
    pub code: Option<u16>,
    /// The endpoint's circuit afterwards: `closed`, `open` or `disabled`.
    pub breaker: &'static str,
}

/// An endpoint's state, kept so a restart does not re-enable one that said 410 Gone.
#[derive(Debug, Clone)]
pub struct EndpointRecord {
    pub recipient: String,
    pub channel: String,
    pub state: &'static str,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
}

/// What the ledger already knew of an event being recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It is new.
    New,
    /// It was routed before; each notification recorded then, with its status.
    Before(HashMap<String, Status>),
}

impl Seen {
    /// Whether the notification `key` was settled before (see [`Status::settled`]): it is not
    /// handled again.
    pub fn settled(&self, key: &str) -> bool {
        match self {
            Seen::New => false,
            Seen::Before(before) => before.get(key).is_some_and(|s| s.settled()),
        }
    }
}

/// A notification waiting for a retry, for the gauges rebuilt at start-up.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub key: String,
    pub route: String,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
}

/// The condition of the index of open notifications (migration 0003), written into every
/// query that should use it: SQLite uses a partial index only for a query that states its
/// condition.
pub(crate) const OPEN: &str = "status IN ('pending', 'retrying', 'parked', 'expired')";

/// Not an escalation's row: an escalation waits for its next try in the `escalations` table,
/// not in the delay queues, and one that failed is not in the failed queue to be replayed, so
/// neither counts among the notifications waiting for a retry or parked.
pub(crate) const NOT_ESCALATION: &str = "substr(key, 1, 4) <> 'esc_'";

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// An open ledger: a pool of connections to the store, migrated.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The URL without its password, for messages.
    shown: Arc<str>,
    health: Health,
    /// SQLite's file and how it writes, for the writer's own connection.
    file: Option<(Arc<Path>, Sync)>,
}

/// Whether the ledger takes writes, and why not: shared with `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Why writes fail now, if they do.
    pub fn down(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets why writes fail (`None`: they succeed); whether that changed up or down.
    pub fn set(&self, reason: Option<String>) -> bool {
        let mut down = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = down.is_some() != reason.is_some();
        *down = reason;
        changed
    }
}

/// How the store writes: `full` makes each commit survive a power cut, not only a crash
/// (SQLite only; PostgreSQL's own `synchronous_commit` decides there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Normal,
    Full,
}

impl Store {
    /// Opens (creating and migrating if need be) the ledger at `url`: `sqlite:PATH` or
    /// `postgres://...`. What the service does; the commands that read or annotate the ledger
    /// open it with [`Store::open_current`].
    pub async fn open(url: &str, sync: Sync, health: Health) -> Result<Store, LedgerError> {
        Store::connect(url, sync, health, true).await
    }

    /// Opens the ledger at `url` as it is, without migrating it, and only if it is at the
    /// schema this build knows: a command run by an operator never changes the schema under
    /// a running service (nor needs the right to), and never reads one it does not know.
    pub async fn open_current(url: &str) -> Result<Store, LedgerError> {
        let store = Store::connect(url, Sync::Full, Health::default(), false).await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&store.pool)
            .await
            .map_err(|e| LedgerError::Migrate {
                url: store.shown.to_string(),
                reason: format!("it has no migration history ({e}): has `herald serve` run on it?"),
            })?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| store.error(&e))?;
        let known: Vec<i64> = match store.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        }
        .iter()
        .map(|m| m.version)
        .collect();
        let behind = known.iter().filter(|v| !applied.contains(v)).count();
        let ahead = applied.iter().filter(|v| !known.contains(v)).count();
        if behind > 0 || ahead > 0 {
            store.close().await;
            return Err(LedgerError::Migrate {
                url: store.shown.to_string(),
                reason: if behind > 0 {
                    format!(
                        "it lacks {behind} of this build's {} migration(s): start this build's \
                         `herald serve` on it first, which brings it up to date",
                        known.len()
                    )
                } else {
                    format!(
                        "it has {ahead} migration(s) this build does not know: a newer Herald wrote it"
                    )
                },
            });
        }
        Ok(store)
    }

    async fn connect(
        url: &str,
        sync: Sync,
        health: Health,
        migrate: bool,
    ) -> Result<Store, LedgerError> {
        install_default_drivers();
        let shown: Arc<str> = crate::mask::url(url).into();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(LedgerError::Scheme(shown.to_string()));
        };
        let reason = |e: sqlx::Error| crate::mask::scrub(&e.to_string(), url);
        let mut url = url.to_owned();
        let file =
            (backend == Backend::Sqlite).then(|| (Arc::from(Path::new(sqlite_path(&url))), sync));
        let options = match backend {
            Backend::Sqlite => {
                let path = sqlite_path(&url);
                if let Some(dir) = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|source| LedgerError::Folder {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') { "&" } else { "?" });
                    url.push_str("mode=rwc");
                }
                let synchronous = match sync {
                    Sync::Normal => "NORMAL",
                    Sync::Full => "FULL",
                };
                // One writer at a time: the writer task holds one connection, the pruning and
                // the gauges' reads the others (readers never wait for a writer in WAL mode).
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                                .await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            // A statement's journal (the pages it changed, to undo it alone)
                            // in memory rather than in a temporary file.
                            conn.execute("PRAGMA temp_store = MEMORY").await?;
                            // Pages copied back from the log into the database every 16 MiB
                            // of log rather than every 4: a page the commits keep changing
                            // (the end of each index) is copied once per checkpoint.
                            conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
                            Ok(())
                        })
                    })
            }
            // Every statement planned for its own run, from the tables as they are then: a plan
            // kept from a prepared statement's first runs, made while a new ledger was nearly
            // empty, scans whole tables once they have grown (a join from a batch's rows to
            // its notifications did, at a second of server CPU per thousand notifications).
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("SET plan_cache_mode = force_custom_plan")
                                .await?;
                            Ok(())
                        })
                    })
            }
        };
        // sqlx's own lines (each statement; each taking over a second, with its text) are not
        // Herald's: kept at debug, where RUST_LOG=sqlx=debug finds them.
        let connect = sqlx::any::AnyConnectOptions::from_str(&url)
            .map_err(|e| LedgerError::Open {
                url: shown.to_string(),
                reason: reason(e),
            })?
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let pool = options
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await
            .map_err(|e| LedgerError::Open {
                url: shown.to_string(),
                reason: reason(e),
            })?;
        if migrate {
            let migrated = match backend {
                Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await,
                Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await,
            };
            migrated.map_err(|e| LedgerError::Migrate {
                url: shown.to_string(),
                reason: crate::mask::scrub(&e.to_string(), &url),
            })?;
        }
        Ok(Store {
            pool,
            backend,
            shown,
            health,
            file,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn error(&self, e: &impl std::fmt::Display) -> LedgerError {
        LedgerError::Query {
            url: self.shown.to_string(),
            reason: e.to_string(),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// SQLite's file and how it writes; `None` on PostgreSQL.
    pub(crate) fn sqlite_file(&self) -> Option<(Arc<Path>, Sync)> {
        self.file.clone()
    }

    /// Whether the store takes a write now.
    pub(crate) async fn probe(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let written = sqlx::query("UPDATE probe SET at = $1 WHERE id = 1")
            .bind(ms(Utc::now()))
            .execute(&mut *conn)
            .await
            .map(drop);
        if written.is_err() {
            // As after a failed commit: a connection a write failed on is not reused.
            conn.close_on_drop();
        }
        written
    }

    /// A notification's status, if the ledger has it.
    pub async fn status(&self, key: &str) -> Result<Option<Status>, LedgerError> {
        let row = sqlx::query("SELECT status FROM notifications WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(&e))?;
        row.map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map(|s| s.map(|s| s.parse().unwrap_or(Status::Pending)))
            .map_err(|e| self.error(&e))
    }

    /// Notifications waiting for a retry.
    pub async fn waiting(&self) -> Result<Vec<Waiting>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT key, route, first_failure_at, deadline FROM notifications \
             WHERE {OPEN} AND status = $1 AND {NOT_ESCALATION}"
        ))
        .bind(Status::Retrying.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(&e))?;
        rows.iter()
            .map(|r| {
                Ok(Waiting {
                    key: r.try_get(0)?,
                    route: r.try_get(1)?,
                    first_failure_at: r.try_get::<Option<i64>, _>(2)?.map(time),
                    deadline: r.try_get::<Option<i64>, _>(3)?.map(time),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(&e))
    }

    /// Endpoints recorded as disabled (HTTP 410 Gone), as (recipient, channel).
    pub async fn disabled_endpoints(&self) -> Result<Vec<(String, String)>, LedgerError> {
        let rows = sqlx::query("SELECT recipient, channel FROM endpoints WHERE state = 'disabled'")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(&e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(&e))
    }

    /// Parked and expired notifications, per route.
    pub async fn parked_per_route(&self) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT route, COUNT(*) FROM notifications WHERE {OPEN} AND status IN ($1, $2) \
             AND {NOT_ESCALATION} GROUP BY route"
        ))
        .bind(Status::Parked.as_str())
        .bind(Status::Expired.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(&e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(&e))
    }

    /// Deletes up to `batch` of the oldest events received before `before`, with their
    /// notifications, attempts, escalations and identifiers; how many events went.
    pub async fn prune(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let ids: Vec<i64> =
            sqlx::query("SELECT id FROM events WHERE received_at < $1 ORDER BY id LIMIT $2")
                .bind(ms(before))
                .bind(batch)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(err)?;
        sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(ms(before))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if ids.is_empty() {
            tx.commit().await.map_err(err)?;
            return Ok(0);
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        // The ids are the store's own integers, so they are written into the statement.
        for statement in [
            format!(
                "DELETE FROM escalations WHERE notification_key IN \
                 (SELECT key FROM notifications WHERE event_id IN ({list}))"
            ),
            format!(
                "DELETE FROM attempts WHERE notification_key IN \
                 (SELECT key FROM notifications WHERE event_id IN ({list}))"
            ),
            format!("DELETE FROM notifications WHERE event_id IN ({list})"),
            format!("DELETE FROM persons WHERE event_id IN ({list})"),
            format!("DELETE FROM events WHERE id IN ({list})"),
        ] {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(ids.len() as u64)
    }

    /// Records that an operator sent a parked notification again (it is queued already): an
    /// attempt row `replayed`, an audit entry naming who did it, and, if the ledger still has
    /// it parked or expired, `pending` again. A status the service wrote meanwhile (it may
    /// deliver the replay before this runs) is left as it is.
    pub async fn replayed(
        &self,
        key: &str,
        at: DateTime<Utc>,
        actor: &str,
    ) -> Result<(), LedgerError> {
        self.replay_rows(
            key,
            Status::Pending,
            "replayed by an operator",
            at,
            actor,
            None,
        )
        .await
    }

    /// Settles the row of a notification that could not be made, now made by an operator's
    /// replay (its notifications have rows of their own): `skipped`, with why, an attempt row
    /// and an audit entry.
    pub async fn unmade_replayed(
        &self,
        key: &str,
        at: DateTime<Utc>,
        actor: &str,
        detail: &str,
    ) -> Result<(), LedgerError> {
        let reason = format!("replayed by an operator: {detail}");
        self.replay_rows(key, Status::Skipped, &reason, at, actor, Some(detail))
            .await
    }

    async fn replay_rows(
        &self,
        key: &str,
        status: Status,
        reason: &str,
        at: DateTime<Utc>,
        actor: &str,
        detail: Option<&str>,
    ) -> Result<(), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query(
            "UPDATE notifications SET status = $1, reason = $2, updated_at = $3 \
             WHERE key = $4 AND status IN ($5, $6)",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(ms(at))
        .bind(key)
        .bind(Status::Parked.as_str())
        .bind(Status::Expired.as_str())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query(
            "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
             VALUES ($1, $2, 0, 'replayed', NULL, 'closed')",
        )
        .bind(key)
        .bind(ms(at))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        insert_audit(&mut tx, at, actor, "replay", key, detail)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// Records what an operator did: `action` (`replay`, ...) on `subject` (a notification's
    /// key, an event's message_id).
    pub async fn audit(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        subject: &str,
        detail: Option<&str>,
    ) -> Result<(), LedgerError> {
        let err = |e: sqlx::Error| self.error(&e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        insert_audit(&mut tx, at, actor, action, subject, detail)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// Closes the pool, waiting for its connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(super) async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ms(at))
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// The file a `sqlite:` URL names; none for another store.
pub fn sqlite_file(url: &str) -> Option<&Path> {
    url.starts_with("sqlite:")
        .then(|| Path::new(sqlite_path(url)))
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> &str {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.split('?').next().unwrap_or_default()
}

/// The URL of a SQLite ledger file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_url_names_its_file() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/herald/ledger.sqlite"),
            "/var/lib/herald/ledger.sqlite"
        );
        assert_eq!(sqlite_path("sqlite://data/l.db?mode=rwc"), "data/l.db");
        assert_eq!(sqlite_path("sqlite:l.db"), "l.db");
    }

    #[test]
    fn every_status_reads_back() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("sent".parse::<Status>().unwrap_err().contains("delivered"));
        assert_eq!(
            Status::of(DeliveryOutcome::Failed, Some(ParkReason::RetriesExhausted)),
            Status::Expired
        );
    }
}

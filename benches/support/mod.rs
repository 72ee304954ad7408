//! What the ledger benchmarks share: sizes read from the environment, and databases of their
//! own on the machine's PostgreSQL.

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

/// The machine's PostgreSQL, as the tests and benchmarks log in to it.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// The variable `name` read as a number, or `default` when it is unset or not one.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn admin() -> Result<PgConnection, String> {
    let connect = PgConnection::connect(&format!("{POSTGRES}/postgres"));
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(admin)) => Ok(admin),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// A new, empty database for one run, `herald_bench_<tag>_<process id>`: its URL and its
/// name; why not, when PostgreSQL does not answer or refuses.
pub async fn create_database(tag: &str) -> Result<(String, String), String> {
    let mut admin = admin().await?;
    let name = format!("herald_bench_{tag}_{}", std::process::id());
    // A run of the same process id that stopped half way may have left it.
    let _ = admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .map_err(|e| e.to_string())?;
    Ok((format!("{POSTGRES}/{name}"), name))
}

/// Drops a database [`create_database`] made.
pub async fn drop_database(name: &str) {
    if let Ok(mut admin) = admin().await {
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

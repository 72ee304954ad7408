//! What the benchmarks share: sizes read from the environment, databases of their own on the
//! machine's PostgreSQL, a ledger filled with generated rows (`ledger.rs`), and the
//! configuration the service benchmarks deliver with.

pub mod ledger;

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

/// The shipped routes.toml with one route in place of its own: every `court.bail.decided` to
/// two webhook recipients, whose endpoints are moved to the receiver on `port`; `guest` may
/// publish court events.
#[allow(dead_code)] // The ledger benchmarks deliver nothing.
pub fn bail_to_two_webhooks(root: &std::path::Path, port: u16) -> herald::config::Config {
    let text = std::fs::read_to_string(root.join("routes.toml")).expect("routes.toml");
    let head = &text[..text.find("[[route]]").expect("routes")];
    let routes = r#"
[[route]]
name = "bail-two-recipients"
events = ["court.bail.decided"]
to = ["police:WYP-LEEDS", "probation:PDU-LEEDS"]
channels = ["webhook"]
template = "bail-decided"
sla = "within 24h"
"#;
    let mut config =
        herald::config::Config::parse_in(&format!("{head}{routes}"), root).expect("config");
    config
        .publishers
        .insert("guest".into(), vec!["court.*".into()]);
    for r in &mut config.recipients {
        if let Some(w) = &mut r.webhook {
            w.url = w
                .url
                .replace("127.0.0.1:9900", &format!("127.0.0.1:{port}"));
        }
    }
    config
}

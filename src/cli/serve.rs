//! `herald serve`: run the service until SIGTERM or Ctrl-C, then drain and exit 0. SIGHUP
//! reloads the configuration (as `herald reload` and `POST /-/reload` do).

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info};

use crate::console;
use crate::core::Core;
use crate::serve::{self, Settings};

pub async fn run(core: Core) -> ExitCode {
    let settings = Settings::new(&core.config, |k| std::env::var(k).ok());
    let core = Arc::new(core);
    // The console's address and credentials are checked before any event is taken.
    let console = match settings.console_addr.as_deref() {
        Some(addr) => match console::bind(addr, |k| std::env::var(k).ok()).await {
            Ok(bound) => Some(bound),
            Err(e) => {
                crate::logging::flush();
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let running = match serve::start(Arc::clone(&core), settings.clone(), |k| {
        std::env::var(k).ok()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            crate::logging::flush();
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::show_broker_client_log();
    let stop = running.shutdown_token();
    if let Some(bound) = console {
        let started = bound
            .serve(
                running.live(),
                settings,
                running.metrics.clone(),
                stop.clone(),
            )
            .await;
        if let Err(e) = started {
            // A console it may not serve stops the service before it takes more events.
            error!(error = %e, "stopping: the console cannot start");
            let _ = running.stop().await;
            crate::logging::flush();
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    drop(core);
    reload_on_hangup(running.reloads());
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: no new events; finishing those in flight");
        stop.cancel();
    });
    match running.wait().await {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "stopped");
            crate::logging::flush();
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Reloads the configuration at every SIGHUP, for as long as the service runs. The reload's
/// outcome is logged by the service; SIGHUP no longer ends the process.
fn reload_on_hangup(reloads: serve::reload::Requests) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGHUP; reload with `herald reload` instead");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                info!("SIGHUP: reloading the configuration");
                serve::ask_reload(&reloads).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloads;
}

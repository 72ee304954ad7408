//! The command line: `herald check`, `herald validate`, `herald route-test`.

mod check;
mod route_test;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::core::Core;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Inter-agency notification router: validate, route, render and deliver criminal justice events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load schemas, routes.toml and templates; render every template against every example.
    Check(ConfigArg),
    /// Validate event files offline against the schemas.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Event files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show who an event would notify, when, and how. Nothing is sent.
    RouteTest {
        #[command(flatten)]
        config: ConfigArg,
        /// Also show the rendered emails and webhook bodies.
        #[arg(long)]
        render: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The event id (AMQP message_id) to use in idempotency keys; by default one is
        /// derived from the file's bytes.
        #[arg(long)]
        message_id: Option<String>,
        /// The event file (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, env = "HERALD_CONFIG", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

impl ConfigArg {
    /// Loads the core, or prints every problem and gives the exit code for a bad configuration.
    fn load(&self) -> Result<Core, ExitCode> {
        Core::load(&self.config).map_err(|errors| {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: {} problem(s); nothing was checked further",
                self.config.display(),
                errors.len()
            );
            ExitCode::from(2)
        })
    }
}

/// Runs a parsed command line; the exit code says whether everything passed.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check(config) => config.load().map(|core| check::run(&core)),
        Command::Validate {
            config,
            json,
            files,
        } => config.load().map(|core| validate::run(&core, &files, json)),
        Command::RouteTest {
            config,
            render,
            json,
            message_id,
            file,
        } => config
            .load()
            .map(|core| route_test::run(&core, &file, message_id, render, json)),
    };
    result.unwrap_or_else(|code| code)
}

fn passed(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

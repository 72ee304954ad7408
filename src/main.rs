//! The `herald` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = herald::cli::Cli::parse();
    let _logging = herald::cli::init_logging();
    herald::cli::run(cli)
}

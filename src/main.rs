//! The `herald` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    herald::cli::run(herald::cli::Cli::parse())
}

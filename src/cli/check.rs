//! `herald check`: is the configuration sound, and does every template render?

use std::process::ExitCode;

use crate::core::Core;

pub fn run(core: &Core) -> ExitCode {
    let report = core.check();
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if report.errors.is_empty() {
        println!("{}: ok", core.config_path.display());
    } else {
        println!(
            "{}: {} error(s)",
            core.config_path.display(),
            report.errors.len()
        );
    }
    super::passed(report.errors.is_empty())
}

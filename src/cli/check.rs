//! `herald check`: is the configuration sound, and does every template render? Beyond the
//! core's checks, each webhook's signing secret is read from the environment as `serve`
//! reads it, so a secret serve would refuse fails here first. Nothing printed shows a secret.
//! Warnings (what serve runs with, but an operator should look at) fail only with `--strict`.

use std::process::ExitCode;

use crate::core::{CheckReport, Core};

pub fn run(core: &Core, strict: bool) -> ExitCode {
    let mut report = crate::serve::reload::check(core, |name| std::env::var_os(name));
    check_console(core, |name| std::env::var(name).ok(), &mut report);
    check_contacts(core, |name| std::env::var(name).ok(), &mut report);
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    let file = core.config_path.display();
    let warned = strict && !report.warnings.is_empty();
    if !report.errors.is_empty() {
        println!("{file}: {} error(s)", report.errors.len());
    } else if warned {
        println!(
            "{file}: {} warning(s), which fail under --strict",
            report.warnings.len()
        );
    } else {
        println!("{file}: ok");
    }
    super::passed(report.errors.is_empty() && !warned)
}

/// The console's address against its credentials, as `serve` judges them before it takes an
/// event: beyond loopback without credentials, or with a malformed one, it would refuse to
/// start.
fn check_console(core: &Core, env: impl Fn(&str) -> Option<String>, report: &mut CheckReport) {
    let addr =
        env("HERALD_CONSOLE_ADDR").unwrap_or_else(|| core.config.service.console_addr.clone());
    if addr.trim().is_empty() {
        report
            .notes
            .push("the operator's console is off ([service] console_addr is \"\")".into());
        return;
    }
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let loopback = crate::console::auth::loopback_host(&addr)
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match crate::console::auth::Access::from_env(&env, &addr, loopback, [0; 32]) {
        Err(e) => report.errors.push(format!("console: {e}")),
        Ok(access) if access.is_open() => report.notes.push(format!(
            "the operator's console on {addr} is open to whoever reaches that loopback address, as an operator (no HERALD_CONSOLE_* credential is set)"
        )),
        Ok(_) => {}
    }
}

/// Recipients' contacts are told by email: with no SMTP server (`HERALD_SMTP_URL`, or
/// `[email] url`) their emails, like every other, would only be written to the outbox folder.
fn check_contacts(core: &Core, env: impl Fn(&str) -> Option<String>, report: &mut CheckReport) {
    let contacts = core
        .engine
        .directory
        .all()
        .filter(|r| r.contact.is_some() && r.webhook.is_some())
        .count();
    let smtp = env("HERALD_SMTP_URL").is_some() || core.config.email.url.is_some();
    if contacts > 0 && !smtp {
        report.warnings.push(format!(
            "{contacts} recipient(s) name a contact, but no SMTP server is set (HERALD_SMTP_URL or [email] url): their emails would only be written to the outbox folder {}",
            core.config.email.outbox.display()
        ));
    }
}

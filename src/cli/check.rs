//! `herald check`: is the configuration sound, and does every template render? Beyond the
//! core's checks, each webhook's signing secret is read from the environment as `serve`
//! reads it, so a secret serve would refuse fails here first. Nothing printed shows a secret.
//! Warnings (what serve runs with, but an operator should look at) fail only with `--strict`.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::core::{CheckReport, Core};
use crate::deliver::webhook::Secret;

pub fn run(core: &Core, strict: bool) -> ExitCode {
    let mut report = core.check();
    check_secrets(core, |name| std::env::var_os(name), &mut report);
    check_replicas(core, |name| std::env::var(name).ok(), &mut report);
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

/// `[amqp] replicas` against the nodes Herald is given (`HERALD_AMQP_URLS`, or `[amqp] urls`),
/// the cluster's size as far as Herald knows it without asking the broker: a queue cannot
/// have more members than the cluster has nodes, one member is lost with its node, and an
/// even number survives no more failures than one fewer.
fn check_replicas(core: &Core, env: impl Fn(&str) -> Option<String>, report: &mut CheckReport) {
    let nodes = core.config.amqp.node_urls(env).len();
    let Some(replicas) = core.config.amqp.replicas else {
        if nodes > 1 {
            report.notes.push(format!(
                "{nodes} broker nodes listed and [amqp] replicas unset: each quorum queue gets the broker's default number of members"
            ));
        }
        return;
    };
    let listed = match nodes {
        1 => "1 broker node is listed".to_owned(),
        n => format!("{n} broker nodes are listed"),
    };
    if replicas == 0 {
        report
            .errors
            .push("[amqp] replicas = 0: a quorum queue needs at least one member".into());
    } else if usize::from(replicas) > nodes {
        report.warnings.push(format!(
            "[amqp] replicas = {replicas} but {listed} ([amqp] urls, or HERALD_AMQP_URLS): a queue has at most as many members as the cluster has nodes, and Herald fails over only to the nodes it is given; list every node"
        ));
    } else if replicas == 1 && nodes > 1 {
        report.warnings.push(format!(
            "[amqp] replicas = 1 with {listed}: each queue lives on one node and its events are out of reach while that node is down; 3 survives one node down"
        ));
    } else if replicas % 2 == 0 {
        report.warnings.push(format!(
            "[amqp] replicas = {replicas}: a quorum queue of {replicas} members survives no more nodes down than one of {}; use an odd number",
            replicas - 1
        ));
    } else {
        report.notes.push(format!(
            "each quorum queue has {replicas} members; {listed}; a queue stays available with {} of its members down",
            (replicas - 1) / 2
        ));
    }
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

/// Each webhook recipient's `secret_env` (and `previous_secret_env`) read through `env` and
/// parsed as serve parses it: a variable that is set but not a valid secret is an error; an
/// unset one is a warning, since serve runs and parks that endpoint's notifications until it
/// is set. Each variable is reported once, with the recipients that use it.
fn check_secrets(core: &Core, env: impl Fn(&str) -> Option<OsString>, report: &mut CheckReport) {
    // Variable -> (whether some recipient signs with it as its current secret, the
    // recipients), in the order the directory names them.
    let mut variables: Vec<(&str, bool, Vec<&str>)> = Vec::new();
    for r in core.engine.directory.all() {
        let Some(w) = &r.webhook else { continue };
        let names = std::iter::once((w.secret_env.as_str(), true))
            .chain(w.previous_secret_env.as_deref().map(|n| (n, false)));
        for (name, current) in names {
            match variables.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, c, users)) => {
                    *c |= current;
                    users.push(r.id.as_str());
                }
                None => variables.push((name, current, vec![r.id.as_str()])),
            }
        }
    }
    let file = core.config_path.display();
    for (name, current, users) in variables {
        let users = users.join(", ");
        match env(name) {
            None if current => report.warnings.push(format!(
                "{file}: {name} (the signing secret of {users}) is not set; serve parks \
                 those webhooks until it is"
            )),
            None => report.warnings.push(format!(
                "{file}: {name} (the previous signing secret of {users}) is not set; only \
                 the current secret will sign"
            )),
            Some(value) => {
                let why = match value.into_string() {
                    Ok(text) => Secret::parse(&text).err(),
                    Err(_) => Some("the value is not valid text".into()),
                };
                if let Some(why) = why {
                    report.errors.push(format!(
                        "{file}: {name} (the signing secret of {users}) cannot be used: \
                         {why} (the value is not shown)"
                    ));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_compared_with_the_nodes_listed() {
        let mut core =
            Core::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml"))
                .unwrap();
        let three = "amqp://h1,amqp://h2,amqp://h3".to_owned();
        let said = |core: &Core, urls: Option<&str>| {
            let mut report = CheckReport::default();
            let urls = urls.map(str::to_owned);
            check_replicas(
                core,
                |k| (k == "HERALD_AMQP_URLS").then(|| urls.clone()).flatten(),
                &mut report,
            );
            report
        };
        // One node and nothing asked of the broker: nothing to say.
        let r = said(&core, None);
        assert!(r.errors.is_empty() && r.warnings.is_empty() && r.notes.is_empty());
        core.config.amqp.replicas = Some(3);
        let r = said(&core, None);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("[amqp] replicas = 3 but 1 broker node is listed"),
            "{}",
            r.warnings[0]
        );
        let r = said(&core, Some(&three));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.notes[0].contains("stays available with 1 of its members down"));
        core.config.amqp.replicas = Some(2);
        assert!(said(&core, Some(&three)).warnings[0].contains("use an odd number"));
        core.config.amqp.replicas = Some(1);
        assert!(said(&core, Some(&three)).warnings[0].contains("lives on one node"));
        core.config.amqp.replicas = Some(0);
        assert_eq!(said(&core, Some(&three)).errors.len(), 1);
    }

    #[test]
    fn secrets_are_read_as_serve_reads_them_and_never_shown() {
        let core =
            Core::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml"))
                .unwrap();
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let mut report = CheckReport::default();
        check_secrets(&core, |_| Some(good.into()), &mut report);
        assert!(report.errors.is_empty() && report.warnings.is_empty());

        let short = "whsec_c2hvcnQtc2VjcmV0";
        let mut report = CheckReport::default();
        check_secrets(&core, |_| Some(short.into()), &mut report);
        assert_eq!(
            report.errors.len(),
            1,
            "one line per variable: {:?}",
            report.errors
        );
        assert!(report.errors[0].contains("HERALD_WEBHOOK_SECRET"));
        assert!(report.errors[0].contains("12 bytes"), "{:?}", report.errors);
        assert!(!report.errors[0].contains("c2hvcnQtc2VjcmV0"));

        let mut report = CheckReport::default();
        check_secrets(&core, |_| None, &mut report);
        assert!(report.errors.is_empty());
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("not set"));
    }
}

//! Reloading the configuration while serving (`SIGHUP`, `herald reload`, `POST /-/reload`):
//! routes.toml, the schemas and the templates are loaded anew and checked as `herald check`
//! checks them, and only a configuration that passes replaces the one in force. A refused one
//! changes nothing. Events being handled when a reload lands finish under the configuration
//! they started with ([`crate::core::Live`]); the next takes the new one.
//!
//! What the running service was built with beyond the routing (the broker, the ledger, the
//! email transport, the breakers, the retry schedule, the addresses) is read at start only: a
//! change there is named in the answer and takes effect at the next restart.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Ctx;
use crate::config::Config;
use crate::core::{CheckReport, Core};
use crate::deliver::webhook::Secret;

/// Where the service reads its environment: webhook secrets, and the overrides of routes.toml.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new configuration is in force.
    Applied {
        hash: String,
        /// What `herald check` warns of in it (it runs with them, as `serve` would).
        warnings: Vec<String>,
        /// Sections that changed but are read at start only.
        restart: Vec<&'static str>,
    },
    /// The files are as they were: nothing to do.
    Unchanged { hash: String },
    /// The configuration in force keeps running; these are the reasons.
    Refused { errors: Vec<String> },
}

impl Reload {
    /// The word for `herald_config_reloads_total{result}` and the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reload::Applied { .. } => "applied",
            Reload::Unchanged { .. } => "unchanged",
            Reload::Refused { .. } => "refused",
        }
    }

    /// Whether the configuration in force passed (applied now, or already in force).
    pub fn passed(&self) -> bool {
        !matches!(self, Reload::Refused { .. })
    }

    /// The answer in lines, as `herald reload` prints it and `/-/reload` returns it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match self {
            Reload::Applied {
                hash,
                warnings,
                restart,
            } => {
                out.push_str(&format!("reloaded: configuration {}\n", short(hash)));
                for w in warnings {
                    out.push_str(&format!("warning: {w}\n"));
                }
                for section in restart {
                    out.push_str(&format!(
                        "note: {section} changed; it is read at start, so the change takes effect at the next restart\n"
                    ));
                }
            }
            Reload::Unchanged { hash } => {
                out.push_str(&format!(
                    "unchanged: configuration {} is already in force\n",
                    short(hash)
                ));
            }
            Reload::Refused { errors } => {
                out.push_str("refused: the configuration in force keeps running\n");
                for e in errors {
                    out.push_str(&format!("error: {e}\n"));
                }
            }
        }
        out
    }
}

/// The first 12 hex digits, as the answer shows a hash (the metric has all of it).
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A reload asked for, and where its answer goes.
pub type Request = oneshot::Sender<Reload>;

/// Where reloads are asked for: the signal, the metrics endpoint and the caller of
/// [`super::Running::reload`] all send here, and one task does them one at a time.
pub type Requests = mpsc::Sender<Request>;

/// Everything `herald check` checks that does not need the broker or the console: the core's
/// own checks (every example, every template), each webhook's signing secret, and the
/// quorum queues' replicas against the broker nodes listed.
pub fn check(core: &Core, env: impl Fn(&str) -> Option<OsString>) -> CheckReport {
    let mut report = core.check();
    check_secrets(core, &env, &mut report);
    check_replicas(
        core,
        |name| env(name).and_then(|v| v.into_string().ok()),
        &mut report,
    );
    report
}

/// Does the reloads asked for on `requests`, one at a time, until `stop`.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    mut requests: mpsc::Receiver<Request>,
    env: Env,
    mut hash: String,
    stop: CancellationToken,
) {
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            next = requests.recv() => match next {
                Some(answer) => answer,
                None => return,
            },
        };
        let done = reload(&ctx, &env, &hash).await;
        ctx.metrics
            .config_reloads
            .with_label_values(&[done.as_str()])
            .inc();
        match &done {
            Reload::Applied {
                hash: new,
                warnings,
                restart,
            } => {
                ctx.metrics.config_loaded(new);
                let core = ctx.live.current();
                info!(
                    hash = %new,
                    previous = %hash,
                    routes = core.engine.routes.len(),
                    recipients = core.engine.directory.all().count(),
                    subscriptions = core.subscriptions.len(),
                    "configuration reloaded; events from now on are handled under it"
                );
                for w in warnings {
                    warn!(warning = %w, "the reloaded configuration has a warning");
                }
                for section in restart {
                    warn!(
                        section,
                        "a section read at start changed; the change takes effect at the next restart"
                    );
                }
                hash.clone_from(new);
            }
            Reload::Unchanged { hash } => {
                ctx.metrics.config_loaded(hash);
                info!(hash = %hash, "configuration reload asked for; the files are unchanged");
            }
            Reload::Refused { errors } => {
                ctx.metrics.config_refused();
                for e in errors {
                    error!(error = %e, "configuration refused");
                }
                warn!(
                    errors = errors.len(),
                    hash = %hash,
                    "configuration reload refused; the configuration in force keeps running"
                );
            }
        }
        let _ = answer.send(done);
    }
}

/// Loads and checks the configuration from the file the one in force came from, and puts it in
/// force if it passes.
async fn reload(ctx: &Ctx, env: &Env, in_force: &str) -> Reload {
    let old = ctx.live.current();
    let path = old.config_path.clone();
    let check_env = Arc::clone(env);
    let loaded = tokio::task::spawn_blocking(move || {
        let core = Core::load(&path)?;
        let report = check(&core, |name| check_env(name).map(OsString::from));
        if !report.errors.is_empty() {
            return Err(report.errors);
        }
        let hash = fingerprint(&core.config_path, &core.config).map_err(|e| vec![e])?;
        Ok((core, report.warnings, hash))
    })
    .await;
    let (core, warnings, hash) = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(errors)) => return Reload::Refused { errors },
        Err(e) => {
            return Reload::Refused {
                errors: vec![format!("loading the configuration failed: {e}")],
            };
        }
    };
    if hash == in_force {
        return Reload::Unchanged { hash };
    }
    let restart = read_at_start(&old.config, &core.config);
    // New endpoints are given their secrets before any event can be routed to them; the
    // endpoints of the configuration replaced keep theirs, for the events still being handled
    // under it.
    let key_warnings =
        ctx.deliverer
            .webhook
            .rekey(&core.engine.directory, &old.engine.directory, &**env);
    for w in &key_warnings {
        warn!("{w}");
    }
    // Rate limits as the new configuration sets them: an unchanged limit keeps its bucket
    // (what it has let through lately, and who waits on it); a new or changed one starts
    // full. A recipient added with an email address is held to the relay's limit.
    let limits = super::rate_limits(&core.config);
    if limits != super::rate_limits(&old.config) {
        ctx.deliverer
            .guard
            .renew_rates(&limits, |name| super::rate_watch(name, &ctx.metrics));
    }
    ctx.metrics
        .expect_routes(core.engine.routes.iter().map(|r| &*r.name));
    ctx.metrics.expect_escalations(
        core.engine
            .routes
            .iter()
            .filter(|r| r.escalate.is_some())
            .map(|r| &*r.name),
    );
    ctx.live.replace(Arc::new(core));
    Reload::Applied {
        hash,
        warnings,
        restart,
    }
}

/// The sections of routes.toml the service reads at start only, named where `new` differs.
fn read_at_start(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        match (serde_json::to_value(a), serde_json::to_value(b)) {
            (Ok(a), Ok(b)) => a != b,
            _ => true,
        }
    }
    let sections = [
        ("[amqp]", differs(&old.amqp, &new.amqp)),
        // The relay's `rate` is taken up by a reload; the rest of [email] is the transport.
        ("[email]", {
            let (mut old, mut new) = (old.email.clone(), new.email.clone());
            (old.rate, new.rate) = (None, None);
            differs(&old, &new)
        }),
        ("[webhook]", differs(&old.webhook, &new.webhook)),
        ("[retry]", differs(&old.retry, &new.retry)),
        ("[ledger]", differs(&old.ledger, &new.ledger)),
        ("[service]", differs(&old.service, &new.service)),
    ];
    let changed: Vec<&'static str> = sections
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
    changed
}

/// The configuration's SHA-256, in hex: routes.toml, then every file under the schemas and
/// templates folders (by path, in order) and the bank holidays file, each with its path and
/// length, so moving a file changes it too.
// String error: the file and the I/O error's words, for the reload's answer.
pub fn fingerprint(routes: &Path, config: &Config) -> Result<String, String> {
    let mut files = vec![routes.to_owned()];
    for dir in [&config.paths.schemas, &config.paths.templates] {
        let mut found = Vec::new();
        walk(dir, &mut found).map_err(|e| format!("{}: {e}", dir.display()))?;
        found.sort();
        files.extend(found);
    }
    files.extend(config.calendar.bank_holidays.clone());
    let mut hash = Sha256::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        hash.update(file.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(&bytes);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Every file under `dir`, however deep.
fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Core {
        Core::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml")).unwrap()
    }

    #[test]
    fn replicas_are_compared_with_the_nodes_listed() {
        let mut core = shipped();
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
        let core = shipped();
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

    #[test]
    fn the_fingerprint_changes_with_any_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for sub in ["schemas", "templates"] {
            copy_dir(&root.join(sub), &dir.path().join(sub));
        }
        let routes = dir.path().join("routes.toml");
        std::fs::write(&routes, "# a configuration\n").unwrap();
        let mut config = shipped().config;
        config.paths.schemas = dir.path().join("schemas");
        config.paths.templates = dir.path().join("templates");
        config.calendar.bank_holidays = None;
        let first = fingerprint(&routes, &config).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(fingerprint(&routes, &config).unwrap(), first);
        let template = dir.path().join("templates/bail-decided/subject.hbs");
        let text = std::fs::read_to_string(&template).unwrap();
        std::fs::write(&template, format!("{text} ")).unwrap();
        let changed = fingerprint(&routes, &config).unwrap();
        assert_ne!(changed, first, "a template's change changes the hash");
        std::fs::write(&template, text).unwrap();
        assert_eq!(fingerprint(&routes, &config).unwrap(), first);
        std::fs::write(&routes, "# a configuration, changed\n").unwrap();
        assert_ne!(fingerprint(&routes, &config).unwrap(), first);
        std::fs::remove_dir_all(dir.path().join("templates")).unwrap();
        let gone = fingerprint(&routes, &config).unwrap_err();
        assert!(gone.contains("templates"), "{gone}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }

    fn herald_rate(text: &str) -> crate::config::Rate {
        crate::config::Rate::parse(text).unwrap()
    }

    #[test]
    fn sections_read_at_start_are_named_when_they_change() {
        let old = shipped().config;
        let mut new = old.clone();
        assert!(read_at_start(&old, &new).is_empty());
        new.routes.clear();
        assert!(read_at_start(&old, &new).is_empty(), "routes are reloaded");
        new.email.rate = Some(herald_rate("5/s"));
        assert!(
            read_at_start(&old, &new).is_empty(),
            "the relay's rate is reloaded"
        );
        new.amqp.prefetch += 1;
        new.retry.max_age *= 2;
        assert_eq!(read_at_start(&old, &new), ["[amqp]", "[retry]"]);
    }
}

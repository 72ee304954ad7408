//! Sending the weekly digests: each subscription's digest of its latest scheduled time, built
//! from the custody register as it stood then, claimed in the ledger (exactly one instance
//! wins), rendered per recipient and delivered by email; what failed is tried again on the
//! retry schedule. A digest whose time passed while Herald was down goes when it is back,
//! marked late, and its deadline counts it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::core::Core;
use crate::deliver::{Deliverer, Outgoing};
use crate::ledger::{
    AttemptRecord, DigestClaim, Ledger, LedgerError, NotificationRecord, Status, Store, Update,
};
use crate::metrics::Metrics;
use crate::notification::{Content, DeliveryOutcome};
use crate::render::EmailParts;
use crate::route::Recipient;
use crate::route::custody::{Person, fold};
use crate::route::digest::Line;
use crate::route::subscription::Subscription;

/// The clock the digests go by: the system's, or a test's.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The custody register as it stood at a digest's time, and a week before.
pub type Registers = (Vec<Person>, Vec<Person>);

/// The register as it stood at `due` and at the scheduled time a week before (the same
/// London time, whatever the clocks did in between).
pub async fn registers(
    store: &Store,
    sub: &Subscription,
    due: DateTime<Utc>,
) -> Result<Registers, LedgerError> {
    let entries = store.custody_entries(Some(due)).await?;
    Ok((
        fold(&entries, due),
        fold(&entries, sub.schedule.weeks_before(due, 1)),
    ))
}

/// The digest due at `due`, naming `lines`, as `recipient` gets it.
// String error: Handlebars' own words (see the note at the top of render/mod.rs).
pub fn render(
    core: &Core,
    sub: &Subscription,
    due: DateTime<Utc>,
    lines: &[Line<'_>],
    recipient: &Recipient,
    late: bool,
) -> Result<EmailParts, String> {
    let data = sub.data(due, lines, recipient, &core.engine.redaction, late);
    let marks: Vec<String> = if late {
        vec!["LATE".into()]
    } else {
        Vec::new()
    };
    core.renderer.email_of(&sub.template, &data, &marks)
}

/// What sends digests: the service's parts, or the command line's.
pub struct Sender<'a> {
    pub core: &'a Core,
    pub ledger: &'a Ledger,
    pub deliverer: &'a Deliverer,
    pub metrics: &'a Metrics,
    /// Waits before each retry of a digest that failed transiently.
    pub retry: &'a [Duration],
}

impl Sender<'_> {
    /// Claims and sends the digest of `sub` due at `due` unless it is claimed already (by
    /// this instance or another); true when this call sent it (or tried to).
    pub async fn claim_and_send(
        &self,
        sub: &Subscription,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let deadline = due + sub.due_within;
        let claim = DigestClaim {
            message_id: sub.message_id(due),
            event_type: format!("digest.{}", sub.report.as_str()),
            due,
            now,
            notifications: sub
                .to
                .iter()
                .map(|r| NotificationRecord {
                    key: sub.key(due, r).as_str().to_owned(),
                    route: sub.name.to_string(),
                    recipient: r.id.to_string(),
                    channel: "email".into(),
                    sla_rule: Some(sub.sla_rule()),
                    deadline: Some(deadline),
                    status: Status::Pending,
                    reason: None,
                })
                .collect(),
        };
        let claimed = self.ledger.store().claim_digest(&claim).await?;
        self.metrics
            .digest_claims
            .with_label_values(&[
                &*sub.name,
                if claimed {
                    "claimed"
                } else {
                    "already-claimed"
                },
            ])
            .inc();
        if !claimed {
            return Ok(false);
        }
        info!(subscription = %sub.name, due = %due, late = now > deadline, "digest claimed; sending");
        let (now_people, week_ago) = registers(self.ledger.store(), sub, due).await?;
        let lines = sub.lines(&now_people, &week_ago);
        for r in &sub.to {
            self.attempt(sub, due, r, &lines, 0, None, now).await;
        }
        Ok(true)
    }

    /// One attempt at one recipient's digest; the outcome is written to the ledger.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        sub: &Subscription,
        due: DateTime<Utc>,
        recipient: &Arc<Recipient>,
        lines: &[Line<'_>],
        attempts_before: i64,
        first_failure: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        let key = sub.key(due, recipient);
        let deadline = due + sub.due_within;
        let late = now > deadline;
        let attempts = attempts_before + 1;
        let channel = "email";
        let parts = match render(self.core, sub, due, lines, recipient, late) {
            Ok(parts) => parts,
            Err(e) => {
                error!(subscription = %sub.name, recipient = %recipient.id, key = key.as_str(), error = %e, "digest not rendered; parked");
                self.record(parked(
                    key.as_str(),
                    attempts_before,
                    first_failure.or(Some(now)),
                    &format!("render-failed: {e}"),
                ))
                .await;
                self.count(sub, "render-failed");
                return;
            }
        };
        let people = lines.len();
        let content = Content::Email {
            to: recipient.email.clone(),
            subject: parts.subject,
            text: parts.text,
            html: parts.html,
        };
        let started = Instant::now();
        let (result, state) = self
            .deliverer
            .deliver(
                Outgoing {
                    key: key.as_str(),
                    recipient: recipient.id.as_str(),
                    content: &content,
                    urgent: false,
                },
                false,
            )
            .await;
        let attempt = |outcome: &'static str, code: Option<u16>| AttemptRecord {
            at: now,
            duration: started.elapsed(),
            outcome,
            code,
            breaker: state.as_str(),
        };
        let update = match result {
            Ok(()) => {
                let sla = if late { "breached" } else { "met" };
                self.metrics
                    .sla_outcomes
                    .with_label_values(&[&sub.name, sla])
                    .inc();
                info!(subscription = %sub.name, recipient = %recipient.id, channel, key = key.as_str(), attempts, people, late, sla, "digest delivered");
                self.count(sub, DeliveryOutcome::Delivered.as_str());
                Update {
                    key: key.as_str().to_owned(),
                    status: Status::Delivered,
                    reason: None,
                    attempts,
                    first_failure_at: first_failure,
                    delivered_at: Some(now),
                    sla_outcome: Some(sla),
                    sent_hash: None,
                    attempt: Some(attempt("delivered", None)),
                }
            }
            Err(failure) => {
                let spent = usize::try_from(attempts).unwrap_or(usize::MAX) > self.retry.len();
                let (status, outcome) = match (failure.is_transient(), spent) {
                    (true, false) => (Status::Retrying, DeliveryOutcome::Retrying),
                    (true, true) => (Status::Expired, DeliveryOutcome::Failed),
                    (false, _) => (Status::Parked, DeliveryOutcome::Failed),
                };
                warn!(subscription = %sub.name, recipient = %recipient.id, channel, key = key.as_str(), attempts, failure = failure.kind.as_str(), detail = %failure, status = status.as_str(), "digest not delivered");
                self.count(sub, outcome.as_str());
                Update {
                    key: key.as_str().to_owned(),
                    status,
                    reason: Some(format!("{}: {failure}", failure.kind.as_str())),
                    attempts,
                    first_failure_at: first_failure.or(Some(now)),
                    delivered_at: None,
                    sla_outcome: None,
                    sent_hash: None,
                    attempt: Some(attempt(failure.kind.as_str(), failure.code)),
                }
            }
        };
        self.record(update).await;
    }

    fn count(&self, sub: &Subscription, outcome: &str) {
        self.metrics
            .notifications
            .with_label_values(&[&sub.name, "email", outcome])
            .inc();
    }

    async fn record(&self, update: Update) {
        let key = update.key.clone();
        if let Err(e) = self.ledger.update(update).await {
            error!(key, error = %e, "cannot record a digest's outcome in the ledger; it is tried again later");
        }
    }

    /// Tries again the digest notifications that failed transiently once their wait is over,
    /// and takes over those an instance claimed but stopped before trying (its lease ran out).
    pub async fn finish_open(&self, now: DateTime<Utc>) -> Result<(), LedgerError> {
        let shortest = self.retry.iter().min().copied().unwrap_or_default();
        let wall = Utc::now();
        let open = self
            .ledger
            .store()
            .open_digests(wall - to_chrono(shortest))
            .await?;
        // The register of each digest tried again, read and folded once for its recipients.
        let mut read: HashMap<(&str, DateTime<Utc>), Registers> = HashMap::new();
        for o in open {
            // Not tried yet: its claimer's lease (in `updated_at`) has run out, so it stopped.
            let wait = match usize::try_from(o.attempts) {
                Ok(0) | Err(_) => Duration::ZERO,
                Ok(n) => self.retry.get(n - 1).copied().unwrap_or(shortest),
            };
            if crate::ledger::time(o.updated_at) > wall - to_chrono(wait) {
                continue;
            }
            let Some(sub) = self.core.subscriptions.iter().find(|s| *s.name == o.route) else {
                self.record(parked(
                    &o.key,
                    o.attempts,
                    None,
                    "the subscription is no longer in routes.toml",
                ))
                .await;
                continue;
            };
            let Some(recipient) = sub.to.iter().find(|r| r.id.as_str() == o.recipient) else {
                self.record(parked(
                    &o.key,
                    o.attempts,
                    None,
                    "the recipient is no longer in the subscription",
                ))
                .await;
                continue;
            };
            let Some(due) = o
                .message_id
                .rsplit_once('@')
                .and_then(|(_, t)| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
            else {
                continue;
            };
            if !self
                .ledger
                .store()
                .take_digest(&o.key, o.updated_at)
                .await?
            {
                continue;
            }
            let (now_people, week_ago) = match read.entry((&*sub.name, due)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(registers(self.ledger.store(), sub, due).await?),
            };
            let lines = sub.lines(now_people, week_ago);
            self.attempt(
                sub,
                due,
                recipient,
                &lines,
                o.attempts,
                o.first_failure_at,
                now,
            )
            .await;
        }
        Ok(())
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A digest notification parked without an attempt, and why.
fn parked(key: &str, attempts: i64, first_failure_at: Option<DateTime<Utc>>, why: &str) -> Update {
    Update {
        key: key.to_owned(),
        status: Status::Parked,
        reason: Some(why.to_owned()),
        attempts,
        first_failure_at,
        delivered_at: None,
        sla_outcome: None,
        sent_hash: None,
        attempt: None,
    }
}

/// How many weeks back a subscription's digests are looked for, to tell a digest missed while
/// Herald was down from a subscription new to this ledger.
const HISTORY_WEEKS: u32 = 8;

impl Sender<'_> {
    /// Whether the digest due at `due` is to be sent at `now`: on time, always; late, only if
    /// the subscription has sent one of the weeks before (it was missed while Herald was down),
    /// not when it is new here (its first digest is the next one due).
    pub async fn wanted(
        &self,
        sub: &Subscription,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        if now <= due + sub.due_within {
            return Ok(true);
        }
        let ids: Vec<String> = (0..=HISTORY_WEEKS)
            .map(|k| sub.message_id(sub.schedule.weeks_before(due, k)))
            .collect();
        self.ledger.store().digests_recorded(&ids).await
    }
}

/// The service's scheduler: at start and every `tick`, each subscription's latest digest is
/// sent if no instance has sent it (asked once per digest and instance), and open ones are
/// tried again.
pub(crate) async fn schedule(
    ctx: Arc<super::Ctx>,
    clock: Clock,
    tick: Duration,
    stop: CancellationToken,
) {
    // The digests claimed (here or elsewhere) or passed over: not asked about again.
    let mut settled = std::collections::HashSet::new();
    loop {
        let now = clock.now();
        // The subscriptions in force now: a reload may add or remove some.
        let core = ctx.live.current();
        let sender = Sender {
            core: &core,
            ledger: &ctx.ledger,
            deliverer: &ctx.deliverer,
            metrics: &ctx.metrics,
            retry: &ctx.settings.retry_schedule,
        };
        for sub in &core.subscriptions {
            let due = sub.schedule.last_due(now);
            let this = (Arc::clone(&sub.name), due);
            if settled.contains(&this) {
                continue;
            }
            let result = match sender.wanted(sub, due, now).await {
                Ok(true) => sender.claim_and_send(sub, due, now).await.map(|_| {
                    settled.insert(this);
                }),
                Ok(false) => {
                    info!(subscription = %sub.name, due = %due, next = %sub.schedule.next_due(now), "subscription new to this ledger: the digest due before it was set up is not sent; its first is the next one");
                    settled.insert(this);
                    ctx.metrics
                        .digest_claims
                        .with_label_values(&[&*sub.name, "passed-over"])
                        .inc();
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                warn!(subscription = %sub.name, error = %e, "cannot send the digest now; trying again shortly");
            }
        }
        // Also with no subscription left: a digest open when a reload removed its subscription
        // is parked by it, with why.
        if let Err(e) = sender.finish_open(now).await {
            warn!(error = %e, "cannot read the digests waiting for a retry now; trying again shortly");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

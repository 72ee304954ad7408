//! A recipient's `contact` hears of a dead webhook endpoint: one email when it is disabled
//! (HTTP 410 Gone, or an operator) or unreachable (its circuit open, with no answer between,
//! for longer than `[webhook] contact_after`), and one when it works again, if they were told
//! it was down. Meanwhile its webhook notifications whose route allows email too go by that
//! email instead ([`fallback`]).
//!
//! The ledger is where instances agree. The handler records each endpoint's state in the
//! `endpoints` table as it sees it change (and [`Standings::answered`] a recovery this instance
//! had not recorded, after a restart say); every second [`watch`] reads that table, records
//! each change of standing in `endpoint_changes` (one instance's insert goes through), keeps
//! the standings the handler's fallback reads, and sends the notices due, each taken under a
//! lease by one instance, as a digest is claimed.
//!
//! Only recipients that name a contact are followed: without one nobody would learn that the
//! webhook misses what went by email, so their notifications keep today's course (retried,
//! then parked for an operator's replay).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Ctx;
use super::retry::Pending;
use crate::core::Core;
use crate::deliver::{Failure, FailureKind, Outgoing};
use crate::event::EventId;
use crate::ledger::overview::EndpointRow;
use crate::ledger::{Notice, StandingChange, Status};
use crate::notification::{Channel, Content, IdempotencyKey, Standing, StandingCause};
use crate::render::endpoint::EndpointNotice;

/// How often the endpoints' states are read and the notices due are sent.
const TICK: Duration = Duration::from_secs(1);
/// How long an instance holds a notice it is sending: longer than an SMTP exchange takes.
const LEASE: TimeDelta = TimeDelta::minutes(5);
/// How long a notice that could not be sent waits before it is tried again.
const AGAIN_AFTER: TimeDelta = TimeDelta::minutes(1);
/// How long a "working again" notice waits while the "down" one before it is being sent.
const BEHIND_AFTER: TimeDelta = TimeDelta::seconds(5);

/// The standings of the webhook endpoints followed, as the ledger's last changes say: what
/// the handler's fallback reads on every failed webhook attempt.
#[derive(Debug, Default)]
pub(crate) struct Standings {
    /// Recipients whose webhook is down now.
    down: RwLock<HashMap<String, Standing>>,
    /// Whether `down` holds anyone: the handler's check when every endpoint works.
    any: AtomicBool,
}

impl Standings {
    /// The standing of `recipient`'s webhook when it is down.
    pub(crate) fn down(&self, recipient: &str) -> Option<Standing> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.down
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(recipient)
            .copied()
    }

    /// `recipient`'s webhook answered: true the first time while it is recorded down, for
    /// the caller to record it working (the next read of the ledger records the change).
    pub(crate) fn answered(&self, recipient: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let mut down = self.down.write().unwrap_or_else(|e| e.into_inner());
        let was = down.remove(recipient).is_some();
        self.any.store(!down.is_empty(), Ordering::Relaxed);
        was
    }

    fn set(&self, now: HashMap<String, Standing>) {
        let mut down = self.down.write().unwrap_or_else(|e| e.into_inner());
        *down = now;
        self.any.store(!down.is_empty(), Ordering::Relaxed);
    }
}

/// Follows the webhook endpoints of the recipients that name a contact until `stop`.
pub(crate) async fn watch(ctx: Arc<Ctx>, stop: CancellationToken) {
    // Notices emailed whose "sent" the ledger did not take: written before anything else.
    let mut unwritten: Vec<StandingChange> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // As the configuration in force now names them: a reload may add or remove some.
        let followed: Vec<String> = ctx
            .live
            .current()
            .engine
            .directory
            .all()
            .filter(|r| r.webhook.is_some() && r.contact.is_some())
            .map(|r| r.id.to_string())
            .collect();
        if followed.is_empty() {
            continue;
        }
        if let Err(e) = look(&ctx, &followed).await {
            debug!(error = %e, "cannot read or record the webhook endpoints' standings");
        }
        if let Err(e) = send_due(&ctx, &mut unwritten).await {
            debug!(error = %e, "cannot read the contacts' notices due from the ledger");
        }
    }
}

/// Records each followed endpoint's change of standing the `endpoints` table shows, and keeps
/// the standings the fallback reads.
async fn look(ctx: &Ctx, followed: &[String]) -> Result<(), crate::ledger::LedgerError> {
    let store = ctx.ledger.store();
    let channel = Channel::Webhook.as_str();
    let now = Utc::now();
    let states: HashMap<String, EndpointRow> = store
        .endpoints()
        .await?
        .into_iter()
        .filter(|e| e.channel == channel)
        .map(|e| (e.recipient.clone(), e))
        .collect();
    let mut latest: HashMap<String, Standing> = store
        .latest_standings(channel)
        .await?
        .into_iter()
        .map(|c| (c.recipient, c.standing))
        .collect();
    for recipient in followed {
        let last = latest.get(recipient).copied().unwrap_or(Standing::Working);
        let Some((standing, cause, since)) = observe(states.get(recipient), now, ctx) else {
            continue;
        };
        if standing == last {
            continue;
        }
        // None: another instance recorded it first, read again at the next tick.
        if let Some(seq) = store
            .record_standing(recipient, channel, standing, cause, since, Notice::Due, now)
            .await?
        {
            info!(recipient = %recipient, channel, standing = standing.as_str(), cause = cause.as_str(), seq, "webhook endpoint's standing changed; its contact is told");
            latest.insert(recipient.clone(), standing);
        }
    }
    ctx.standings.set(
        latest
            .into_iter()
            .filter(|(r, s)| s.is_down() && followed.contains(r))
            .collect(),
    );
    Ok(())
}

/// The standing an endpoint's row in the `endpoints` table shows now, if it shows one: a
/// circuit opened less than `contact_after` ago shows none yet.
fn observe(
    row: Option<&EndpointRow>,
    now: DateTime<Utc>,
    ctx: &Ctx,
) -> Option<(Standing, StandingCause, DateTime<Utc>)> {
    let row = row?;
    let by_operator = |prefix: &str| row.reason.as_deref().is_some_and(|r| r.starts_with(prefix));
    match row.state.as_str() {
        "disabled" if by_operator("disabled by") => Some((
            Standing::Disabled,
            StandingCause::OperatorDisabled,
            row.since,
        )),
        "disabled" => Some((Standing::Disabled, StandingCause::Gone, row.since)),
        "open" => {
            let after = TimeDelta::from_std(ctx.settings.contact_after).unwrap_or(TimeDelta::MAX);
            (now - row.since >= after).then_some((
                Standing::Unreachable,
                StandingCause::Breaker,
                row.since,
            ))
        }
        "closed" if by_operator("enabled by") => {
            Some((Standing::Working, StandingCause::OperatorEnabled, row.since))
        }
        "closed" => Some((Standing::Working, StandingCause::Answered, row.since)),
        _ => None,
    }
}

/// Sends every notice due that no instance holds. A notice emailed whose "sent" cannot be
/// written is kept in `unwritten` and written first at the next tick, rather than given back
/// to be emailed again when its lease ends.
async fn send_due(
    ctx: &Ctx,
    unwritten: &mut Vec<StandingChange>,
) -> Result<(), crate::ledger::LedgerError> {
    let store = ctx.ledger.store();
    let now = Utc::now();
    let mut still = Vec::new();
    for change in unwritten.drain(..) {
        if store
            .settle_notice(&change, Notice::Sent, now)
            .await
            .is_err()
        {
            still.push(change);
        }
    }
    *unwritten = still;
    for change in store.due_notices(now).await? {
        if unwritten.iter().any(|u| {
            u.recipient == change.recipient && u.channel == change.channel && u.seq == change.seq
        }) {
            continue;
        }
        if !store.take_notice(&change, now + LEASE).await? {
            continue;
        }
        let (before, later) = store.around(&change).await?;
        let settle = |notice| store.settle_notice(&change, notice, now);
        if change.standing.is_down() && later {
            // It stopped, then changed again before its contact could be told.
            settle(Notice::Superseded).await?;
            continue;
        }
        if change.standing == Standing::Working {
            match before {
                Some(Notice::Sent) => {}
                Some(Notice::Due) => {
                    store.release_notice(&change, now + BEHIND_AFTER).await?;
                    continue;
                }
                _ => {
                    settle(Notice::Unneeded).await?;
                    continue;
                }
            }
        }
        let core = ctx.live.current();
        let recipient = core.engine.directory.get(&change.recipient);
        let Some((recipient, contact)) = recipient.and_then(|r| Some((r, r.contact.clone()?)))
        else {
            settle(Notice::None).await?;
            continue;
        };
        let notice = EndpointNotice {
            recipient,
            standing: change.standing,
            cause: change.cause,
            since: change.since,
            open_minutes: ctx.settings.contact_after.as_secs().div_ceil(60),
        };
        let parts = match core.renderer.endpoint_notice(&notice, &core.engine.routes) {
            Ok(parts) => parts,
            Err(e) => {
                error!(recipient = %change.recipient, standing = change.standing.as_str(), error = %e, "cannot render the contact's email (templates/endpoint-state); it is tried again later");
                store.release_notice(&change, now + LEASE).await?;
                continue;
            }
        };
        let content = Content::Email {
            to: vec![contact],
            subject: parts.subject,
            text: parts.text,
            html: parts.html,
        };
        // The same Message-ID on every attempt, so a repeat after a crash is recognisable.
        let key = IdempotencyKey::derive(
            &EventId::published("herald:endpoint", change.recipient.as_str()),
            &change.seq.to_string(),
            &change.channel,
            Channel::Email,
        );
        let out = Outgoing {
            key: key.as_str(),
            recipient: &change.recipient,
            content: &content,
            urgent: false,
        };
        let standing = change.standing.as_str();
        match ctx.deliverer.email.send(out).await {
            Ok(()) => {
                if let Err(e) = settle(Notice::Sent).await {
                    warn!(recipient = %change.recipient, standing, error = %e, "the contact was told, but the ledger did not take it; it is written at the next tick, and the email is not sent again");
                    unwritten.push(change.clone());
                }
                ctx.metrics
                    .endpoint_notices
                    .with_label_values(&[standing, "sent"])
                    .inc();
                info!(recipient = %change.recipient, standing, seq = change.seq, "the webhook's contact told of its standing");
            }
            Err(f) => {
                ctx.metrics
                    .endpoint_notices
                    .with_label_values(&[standing, "failed"])
                    .inc();
                warn!(recipient = %change.recipient, standing, failure = f.kind.as_str(), detail = %f.chain(), "cannot email the webhook's contact; tried again in a minute");
                store.release_notice(&change, now + AGAIN_AFTER).await?;
            }
        }
    }
    Ok(())
}

/// Whether this notification's route made the recipient an email of the same event that is
/// on its way or delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sibling {
    /// Made in this same handling of the event.
    Made,
    /// Not known here (a retry): the ledger is asked.
    Ask,
}

/// Why a webhook notification goes by email instead.
#[derive(Debug, Clone)]
pub(crate) struct Fallback {
    pub standing: Standing,
    /// The route's email to the recipient for the same event, which carries it.
    pub email_key: String,
}

/// Whether a webhook notification whose attempt failed with `failure` goes by email instead:
/// its recipient names a contact and has email addresses, its route allows email too (so the
/// route's email for that recipient, rendered for its class as always, was made), that email
/// is delivered or on its way, and the webhook is disabled (this attempt said 410, or was
/// refused as disabled) or recorded unreachable. Never for an operator's replay.
pub(crate) async fn fallback(
    ctx: &Ctx,
    core: &Core,
    p: &Pending,
    failure: &Failure,
    replay: bool,
    sibling: Sibling,
) -> Option<Fallback> {
    if replay || p.channel() != Channel::Webhook {
        return None;
    }
    let standing = match failure.kind {
        FailureKind::HttpGone | FailureKind::EndpointDisabled => Standing::Disabled,
        _ if failure.is_transient() => ctx.standings.down(&p.recipient)?,
        _ => return None,
    };
    let recipient = core.engine.directory.get(&p.recipient)?;
    if recipient.contact.is_none() || recipient.email.is_empty() {
        return None;
    }
    let route = core.engine.routes.iter().find(|r| *r.name == *p.route)?;
    if !route.channels.contains(&Channel::Email) {
        return None;
    }
    let event = match &p.publisher {
        Some(publisher) => EventId::published(publisher.as_str(), p.event_id.as_str()),
        None => EventId::new(p.event_id.as_str()),
    };
    let email_key =
        IdempotencyKey::derive(&event, &p.route, &p.recipient, Channel::Email).into_string();
    if sibling == Sibling::Ask {
        match ctx.ledger.store().status(&email_key).await {
            Ok(Some(Status::Delivered | Status::Retrying | Status::Pending)) => {}
            Ok(_) => return None,
            Err(e) => {
                debug!(error = %e, "cannot read the route's email from the ledger; the webhook notification takes its usual course");
                return None;
            }
        }
    }
    Some(Fallback {
        standing,
        email_key,
    })
}

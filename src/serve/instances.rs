//! Several instances of Herald on one PostgreSQL ledger, as interchangeable consumers of the
//! same queues. The broker gives each delivery to one of them; the ledger is where they meet:
//!
//! - each instance renews its row in `instances` every two seconds ([`keep`]); the number
//!   alive divides every endpoint's concurrency limit between them, and is the
//!   `herald_instances` gauge;
//! - an instance handling an event (or a notification's retry) holds a claim on it
//!   ([`exclusive`]), so a copy the broker redelivers to another instance meanwhile (after a
//!   lost connection) waits for the first to finish and is then judged against the ledger,
//!   instead of being sent twice;
//! - an endpoint's state (a circuit opened, a 410 stop) that one instance records, the others
//!   take up at their next heartbeat.
//!
//! On a SQLite ledger there is one instance: it keeps its heartbeat (the gauge says 1) and
//! takes no claims.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Ctx;
use crate::deliver::guard::State;
use crate::ledger::Backend;

/// How often an instance says it is alive, and reads the others and the endpoints' states.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An instance not seen for this long is gone: what it held may be taken over.
pub const GONE_AFTER: TimeDelta = TimeDelta::seconds(10);
/// An instance gone for this long is removed from the table.
const FORGET_AFTER: TimeDelta = TimeDelta::minutes(10);
/// How often a copy waiting for another instance looks again.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// This instance's name in the ledger: `HERALD_INSTANCE`, or the host's name (a pod's name on
/// Kubernetes), the process id and a random suffix, so a restarted process is a new instance.
pub fn instance_id(env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(id) = env("HERALD_INSTANCE").filter(|i| !i.trim().is_empty()) {
        return id;
    }
    let host = env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// Whether instances share the ledger, and so take claims.
fn shared(ctx: &Ctx) -> bool {
    ctx.ledger.store().backend() == Backend::Postgres
}

/// Writes this instance's row before it takes any event, so that no other instance takes a
/// claim of this one for a claim of an instance gone.
pub async fn join(
    store: &crate::ledger::Store,
    me: &str,
) -> Result<usize, crate::ledger::LedgerError> {
    let now = Utc::now();
    let live = store.heartbeat(me, now, now, now - GONE_AFTER).await?;
    Ok(live.len().max(1))
}

/// Renews this instance's row every [`HEARTBEAT`] until `left` (cancelled once the events in
/// flight are drained), keeping the share of each endpoint's limit and the endpoints' states
/// in step with the other instances; then removes its row and anything it still held.
/// `joined` is the number of instances [`join`] found, which the start-up applied already.
pub(crate) async fn keep(ctx: Arc<Ctx>, joined: usize, left: CancellationToken) {
    let store = ctx.ledger.store().clone();
    let me = ctx.settings.instance.as_str();
    let started = Utc::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live_before = joined;
    // Endpoint states are read from what changed after the last one seen.
    let mut endpoints_after = i64::MIN;
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            _ = left.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Utc::now();
        match store.heartbeat(me, started, now, now - GONE_AFTER).await {
            Ok(live) => {
                let n = live.len().max(1);
                if n != live_before {
                    ctx.deliverer.guard.share_among(n);
                    info!(
                        instances = n,
                        concurrency_per_endpoint = ctx.deliverer.guard.concurrency(),
                        "instances on this ledger changed; each endpoint's limit is shared between them"
                    );
                    live_before = n;
                }
                ctx.metrics
                    .instances
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => debug!(error = %e, "cannot renew this instance's row in the ledger"),
        }
        match store.endpoint_states(endpoints_after).await {
            Ok(states) => {
                for s in states {
                    endpoints_after = endpoints_after.max(s.since.timestamp_millis());
                    adopt(&ctx, &s);
                }
            }
            Err(e) => debug!(error = %e, "cannot read the endpoints' states from the ledger"),
        }
        beats += 1;
        if beats.is_multiple_of(300)
            && let Err(e) = store.forget_instances(now - FORGET_AFTER).await
        {
            debug!(error = %e, "cannot forget instances long gone");
        }
    }
    if let Err(e) = store.leave(me).await {
        warn!(error = %e, "cannot remove this instance's row from the ledger; the others take it to be gone in 10 s");
    }
}

/// An endpoint state recorded in the ledger (by this instance or another), applied here.
fn adopt(ctx: &Ctx, s: &crate::ledger::EndpointState) {
    let state = match s.state.as_str() {
        "disabled" => State::Disabled,
        "open" => State::Open,
        _ => State::Closed,
    };
    let gauge = ctx
        .metrics
        .endpoint_state
        .with_label_values(&[s.recipient.as_str(), s.channel.as_str()]);
    let endpoint = format!("{}/{}", s.recipient, s.channel);
    let guard = &ctx.deliverer.guard;
    let before = guard.state(&endpoint);
    guard.adopt(&endpoint, state, s.since.into());
    let after = guard.state(&endpoint);
    gauge.set(after as i64);
    if after != before {
        info!(recipient = %s.recipient, channel = %s.channel, state = after.as_str(), "endpoint state recorded in the ledger (by another instance) taken up");
    }
}

/// What [`exclusive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// This instance holds it now (or the ledger is not shared): handle it, then [`release`].
    Here,
    /// Another live instance held it for the whole wait: put it back on the queue.
    Elsewhere,
}

/// Takes the handling of `(publisher, id)` for this instance, waiting up to `wait` while
/// another live instance holds it. When the ledger cannot be reached the event is handled
/// without a claim: the ledger's own handling of an outage (nothing is acknowledged until it
/// is back) takes over, and a copy elsewhere is judged against what was recorded.
pub(crate) async fn exclusive(ctx: &Ctx, publisher: &str, id: &str, wait: Duration) -> Held {
    if !shared(ctx) {
        return Held::Here;
    }
    let store = ctx.ledger.store();
    let me = ctx.settings.instance.as_str();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    loop {
        let now: DateTime<Utc> = Utc::now();
        match store.claim(publisher, id, me, now, now - GONE_AFTER).await {
            Ok(true) => {
                if waited {
                    ctx.metrics
                        .held_elsewhere
                        .with_label_values(&["waited"])
                        .inc();
                }
                return Held::Here;
            }
            Ok(false) => waited = true,
            Err(e) => {
                // The ledger is out of reach: handled as with one instance, where the ledger's
                // writer finds the outage, says so and holds every event until it is back.
                debug!(error = %e, "cannot take this event's claim in the ledger");
                return Held::Here;
            }
        }
        if tokio::time::Instant::now() + LOOK_EVERY > deadline {
            ctx.metrics
                .held_elsewhere
                .with_label_values(&["returned"])
                .inc();
            return Held::Elsewhere;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Ends this instance's handling of `(publisher, id)`. A claim that cannot be removed stays
/// until this instance stops or is gone: copies wait out their bound and come again.
pub(crate) async fn release(ctx: &Ctx, publisher: &str, id: &str) {
    if !shared(ctx) {
        return;
    }
    let me = ctx.settings.instance.as_str();
    if let Err(e) = ctx.ledger.store().release(publisher, id, me).await {
        warn!(error = %e, "cannot release this event's claim in the ledger");
    }
}

/// The publisher a notification's retry is claimed under: one of Herald's own, so a retry's
/// claim never meets an event's.
pub const RETRY_CLAIMS: &str = "herald:retry";

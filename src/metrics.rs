//! Every metric Herald exports, in one place. Labels are bounded: event types from the
//! catalogue, route names from routes.toml, channels, and fixed outcome and reason words;
//! never a person, an address or an error message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::notification::EscalationOutcome;

/// Every SLA outcome, so each route's series exist from the start (at zero) and a first breach
/// shows as a rise.
pub const SLA_OUTCOMES: [&str; 5] = [
    "met",
    "breached",
    "late_on_arrival",
    "short_notice",
    "untracked",
];

/// Buckets for the time from `occurredAt` to delivery: seconds to the 28 days of a release notice.
const LATENCY_BUCKETS: [f64; 16] = [
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86_400.0,
    2.0 * 86_400.0,
    4.0 * 86_400.0,
    7.0 * 86_400.0,
    28.0 * 86_400.0,
];

/// Buckets for one delivery attempt: milliseconds to the request timeout.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The registry and its metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Every message taken from the events queue, by event type (`unknown` when it has none).
    pub events_received: IntCounterVec,
    /// Events not routed again because this process handled the same id within the window.
    pub events_duplicate: IntCounterVec,
    /// Events refused, by reason and by the event type the routing key names (`unknown` when
    /// it names none), so a refused urgent event can page at once.
    pub events_rejected: IntCounterVec,
    /// Events published without persistent delivery (accepted, but lost if the broker restarts
    /// before Herald takes them), by publisher login: `[publishers]` logins, else `other`.
    pub events_non_persistent: IntCounterVec,
    /// Notifications by route, channel and outcome (`delivered`, `failed`, and the engine's
    /// problem kinds such as `unknown-recipient`, counted with channel `none`).
    pub notifications: IntCounterVec,
    /// One delivery attempt, by channel.
    pub delivery_duration: HistogramVec,
    /// Failed delivery attempts, by channel and kind (`FailureKind::as_str`).
    pub delivery_failures: IntCounterVec,
    /// From `occurredAt` to delivery, by route.
    pub notification_latency: HistogramVec,
    /// Each delivered notification against its deadline: `met`, `breached` (Herald was late),
    /// `late_on_arrival` (the deadline had passed when the publisher published the event),
    /// `short_notice`, `untracked`.
    pub sla_outcomes: IntCounterVec,
    /// 1 while connected to the broker and consuming.
    pub ready: IntGauge,
    /// Messages ready in Herald's queues on the broker, by role: `events`, `deliveries`,
    /// `retrying` (all delay queues), `rejected`, `failed`.
    pub queue_messages: IntGaugeVec,
    /// Notifications waiting for a retry, by route.
    pub waiting: Waiting,
    waiting_count: IntGaugeVec,
    waiting_oldest: GaugeVec,
    waiting_remaining: GaugeVec,
    /// Per endpoint (a directory recipient id and a channel): 0 sending, 1 circuit open
    /// (failing; left alone for a while), 2 disabled after 410 Gone.
    pub endpoint_state: IntGaugeVec,
    /// Notifications waiting in memory for a token of a rate limit, by limit (`endpoint`: a
    /// recipient's webhook, `police:WYP-LEEDS/webhook`, or `email-relay`).
    pub held: IntGaugeVec,
    /// Time notifications spent waiting for a token, by limit.
    pub held_seconds: CounterVec,
    /// Webhook notifications that went by their route's email to the recipient instead,
    /// while the recipient's webhook was disabled or unreachable, by route.
    pub fallbacks: IntCounterVec,
    /// Emails to recipients' contacts about their webhook's standing, by standing
    /// (`disabled`, `unreachable`, `working`) and outcome (`sent`, `failed`).
    pub endpoint_notices: IntCounterVec,
    /// Parked and expired notifications in the ledger, by route (read from the ledger).
    pub parked: IntGaugeVec,
    /// 1 while the ledger takes writes.
    pub ledger_up: IntGauge,
    /// Time to write and commit one group of ledger rows.
    pub ledger_commit_seconds: HistogramVec,
    /// Rows written to the ledger, by table.
    pub ledger_rows: IntCounterVec,
    /// Operations the ledger refused while it took others.
    pub ledger_refused: IntCounterVec,
    /// Events removed by retention.
    pub ledger_pruned: IntCounterVec,
    /// Authority register events, by change (`grant`, `withdrawal`) and result (`applied`,
    /// `duplicate`, `withdraws-nothing`, `unknown-representative`).
    pub authority_changes: IntCounterVec,
    /// The register's pairs (person, representative), by standing now (`authorised`, `not`).
    pub authority_pairs: IntGaugeVec,
    /// Register rows removed by retention.
    pub authority_pruned: IntCounterVec,
    /// Each look at a subscription's latest digest: `claimed` (this instance sends it),
    /// `already-claimed` (this one or another did) or `passed-over` (late, and the
    /// subscription is new to this ledger).
    pub digest_claims: IntCounterVec,
    /// Instances of Herald sharing this ledger that answered within the last few seconds,
    /// this one included.
    pub instances: IntGauge,
    /// Events whose handling another live instance held when a copy arrived here, by what
    /// this instance did: `waited` (until the other was done) or `returned` (put back on the
    /// queue after the wait).
    pub held_elsewhere: IntCounterVec,
    /// 1 when the last reload of the configuration put it in force (or found it unchanged),
    /// 0 when it was refused; 1 from the start.
    pub config_reload_successful: IntGauge,
    /// When the configuration in force was last loaded: at start, or by a reload that passed.
    pub config_reload_success_time: Gauge,
    /// The configuration in force: one series, `hash` its SHA-256, at 1.
    pub config_info: IntGaugeVec,
    /// Reloads asked for, by result: `applied`, `unchanged`, `refused`.
    pub config_reloads: IntCounterVec,
    /// Escalations before a deadline, by route and outcome (`sent`, `failed`, `not_needed`).
    pub escalations: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        Metrics {
            events_received: counter(
                "herald_events_received_total",
                "Events taken from the events queue.",
                &["event_type"],
            ),
            events_duplicate: counter(
                "herald_events_duplicate_total",
                "Events already handled under the same id within the window, acknowledged without routing.",
                &["event_type"],
            ),
            events_rejected: counter(
                "herald_events_rejected_total",
                "Events refused and parked in the rejected queue, by reason and event type.",
                &["reason", "event_type"],
            ),
            events_non_persistent: counter(
                "herald_events_non_persistent_total",
                "Events published without persistent delivery mode (accepted), by publisher login.",
                &["publisher"],
            ),
            notifications: counter(
                "herald_notifications_total",
                "Notifications by route, channel and outcome.",
                &["route", "channel", "outcome"],
            ),
            delivery_failures: counter(
                "herald_delivery_failures_total",
                "Failed delivery attempts, by channel and kind of failure.",
                &["channel", "kind"],
            ),
            delivery_duration: histogram(
                "herald_delivery_duration_seconds",
                "Time of one delivery attempt.",
                &["channel"],
                &DELIVERY_BUCKETS,
            ),
            notification_latency: histogram(
                "herald_notification_latency_seconds",
                "Time from the event's occurredAt to delivery.",
                &["route"],
                &LATENCY_BUCKETS,
            ),
            sla_outcomes: counter(
                "herald_sla_outcomes_total",
                "Delivered notifications against their deadline.",
                &["route", "outcome"],
            ),
            fallbacks: counter(
                "herald_fallbacks_total",
                "Webhook notifications that went by their route's email instead, while the webhook was disabled or unreachable, by route.",
                &["route"],
            ),
            endpoint_notices: counter(
                "herald_endpoint_notices_total",
                "Emails to recipients' contacts about their webhook's standing, by standing and outcome.",
                &["standing", "outcome"],
            ),
            endpoint_state: int_gauge(
                "herald_endpoint_state",
                "Per endpoint: 0 sending, 1 circuit open, 2 disabled after 410 Gone.",
                &["recipient", "channel"],
            ),
            ready: {
                let g = IntGauge::new(
                    "herald_ready",
                    "1 while Herald is connected to the broker and consuming, else 0.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            queue_messages: int_gauge(
                "herald_queue_messages",
                "Messages ready in Herald's queues on the broker, by role (events, deliveries, retrying, rejected, failed).",
                &["queue"],
            ),
            waiting: Waiting::default(),
            waiting_count: int_gauge(
                "herald_waiting_notifications",
                "Notifications waiting for a retry, by route.",
                &["route"],
            ),
            waiting_oldest: gauge(
                "herald_waiting_oldest_age_seconds",
                "Per route, how long the oldest notification waiting for a retry has been failing.",
                &["route"],
            ),
            waiting_remaining: gauge(
                "herald_waiting_deadline_remaining_seconds",
                "Per route, the least time left before the deadline of a notification waiting for a retry; negative once past.",
                &["route"],
            ),
            held: int_gauge(
                "herald_notifications_held",
                "Notifications waiting in memory for their endpoint's rate limit to let them through, by limit (a recipient's webhook, or email-relay).",
                &["endpoint"],
            ),
            held_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "herald_notifications_held_seconds_total",
                        "Time notifications spent waiting for their endpoint's rate limit, by limit.",
                    ),
                    &["endpoint"],
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            parked: int_gauge(
                "herald_notifications_parked",
                "Notifications parked or expired in the failed queue according to the ledger, by route.",
                &["route"],
            ),
            ledger_up: {
                let g = IntGauge::new(
                    "herald_ledger_up",
                    "1 while the ledger takes writes; 0 while it does not (Herald takes no new events then).",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            ledger_commit_seconds: histogram(
                "herald_ledger_commit_seconds",
                "Time to write and commit one group of ledger rows.",
                &[],
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
            ledger_rows: counter(
                "herald_ledger_rows_total",
                "Rows written to the ledger, by table.",
                &["table"],
            ),
            ledger_refused: counter(
                "herald_ledger_refused_total",
                "Ledger operations refused while the ledger took others; their events went back to the queue.",
                &[],
            ),
            ledger_pruned: counter(
                "herald_ledger_pruned_total",
                "Events removed from the ledger by retention, with their notifications and attempts.",
                &[],
            ),
            authority_changes: counter(
                "herald_authority_changes_total",
                "Authority register events, by change (grant, withdrawal) and result: applied, duplicate (already in the register), withdraws-nothing (kept, but the register held no grant for the pair), unknown-representative (refused, parked in herald.rejected).",
                &["change", "result"],
            ),
            authority_pairs: int_gauge(
                "herald_authority_register_pairs",
                "Pairs of person and legal representative the authority register holds, by standing now: authorised or not.",
                &["standing"],
            ),
            authority_pruned: counter(
                "herald_authority_pruned_total",
                "Authority register rows removed by retention (pairs no longer authorised, unchanged for longer than [ledger] keep).",
                &[],
            ),
            instances: {
                let g = IntGauge::new(
                    "herald_instances",
                    "Instances of Herald on this ledger that answered within the last 10 seconds, this one included; each takes its share of every endpoint's concurrency limit.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            held_elsewhere: counter(
                "herald_events_held_elsewhere_total",
                "Copies of an event that arrived while another live instance was handling it (the broker redelivered what a lost connection held), by what this instance did: waited (for the other to finish, then judged it against the ledger) or returned (to the queue after the wait).",
                &["result"],
            ),
            digest_claims: counter(
                "herald_digest_claims_total",
                "Looks at a subscription's latest weekly digest, by result: claimed (this instance sends it), already-claimed (sent or being sent, by this instance or another), passed-over (its time passed before the subscription was first seen by this ledger: the next one is its first).",
                &["subscription", "result"],
            ),
            config_reload_successful: {
                let g = IntGauge::new(
                    "herald_config_last_reload_successful",
                    "1 when the last reload of the configuration passed its checks (or found the files unchanged), 0 when it was refused and the configuration before it kept running.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            config_reload_success_time: {
                let g = Gauge::new(
                    "herald_config_last_reload_success_timestamp_seconds",
                    "When the configuration in force was loaded: at start, or by the last reload that passed (Unix time).",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            config_info: int_gauge(
                "herald_config_info",
                "The configuration in force: hash is the SHA-256 of routes.toml, the schemas, the templates and the bank holidays file.",
                &["hash"],
            ),
            config_reloads: counter(
                "herald_config_reloads_total",
                "Reloads of the configuration asked for (SIGHUP, herald reload, POST /-/reload), by result: applied, unchanged, refused.",
                &["result"],
            ),
            escalations: counter(
                "herald_escalations_total",
                "Escalations of notifications still undelivered as their deadline nears, by route and outcome: sent (the escalation recipient has it), failed (refused, or still failing at the deadline), not_needed (the notification was delivered first).",
                &["route", "outcome"],
            ),
            registry,
        }
    }

    /// The configuration `hash` is in force, loaded now.
    pub fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.config_reload_successful.set(1);
        #[allow(clippy::cast_precision_loss)]
        self.config_reload_success_time
            .set(Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    /// A reload was refused; the configuration in force is unchanged.
    pub fn config_refused(&self) {
        self.config_reload_successful.set(0);
    }

    /// Creates the escalation series of every route that escalates at zero.
    pub fn expect_escalations<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            for outcome in EscalationOutcome::ALL {
                self.escalations
                    .with_label_values(&[route, outcome.as_str()]);
            }
        }
    }

    /// Creates every route's SLA outcome series at zero.
    pub fn expect_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            for outcome in SLA_OUTCOMES {
                self.sla_outcomes.with_label_values(&[route, outcome]);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.waiting.export(
            Utc::now(),
            &self.waiting_count,
            &self.waiting_oldest,
            &self.waiting_remaining,
        );
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Notifications waiting for a retry, tracked from the moment a retry is scheduled until the
/// notification is delivered or parked, so the gauges can show a breach coming. A restart
/// forgets them until their retries come due again.
#[derive(Clone, Default)]
pub struct Waiting {
    inner: Arc<Mutex<HashMap<String, Wait>>>,
}

struct Wait {
    route: String,
    since: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
}

impl Waiting {
    /// A retry of the notification `key` is scheduled.
    pub fn start(&self, key: &str, route: &str, since: DateTime<Utc>, due: Option<DateTime<Utc>>) {
        // A first failure recorded later than now (another host's clock, a record written by
        // hand) would show as a negative age: a wait starts no later than now.
        let since = since.min(Utc::now());
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(
            key.to_owned(),
            Wait {
                route: route.to_owned(),
                since,
                due,
            },
        );
    }

    /// The notification `key` is delivered or parked.
    pub fn end(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Per route: how many wait, the age of the oldest, the least time left before a deadline.
    pub fn summary(&self, now: DateTime<Utc>) -> HashMap<String, (i64, f64, Option<f64>)> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<String, (i64, f64, Option<f64>)> = HashMap::new();
        for w in map.values() {
            // Never negative, whatever the clock did since the wait began.
            let age = ((now - w.since).num_milliseconds() as f64 / 1000.0).max(0.0);
            let left = w.due.map(|d| (d - now).num_milliseconds() as f64 / 1000.0);
            let entry = out.entry(w.route.clone()).or_insert((0, age, left));
            entry.0 += 1;
            entry.1 = entry.1.max(age);
            entry.2 = match (entry.2, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }

    fn export(&self, now: DateTime<Utc>, count: &IntGaugeVec, oldest: &GaugeVec, left: &GaugeVec) {
        count.reset();
        oldest.reset();
        left.reset();
        for (route, (n, age, remaining)) in self.summary(now) {
            count.with_label_values(&[&route]).set(n);
            oldest.with_label_values(&[&route]).set(age);
            if let Some(remaining) = remaining {
                left.with_label_values(&[&route]).set(remaining);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn waiting_gauges_show_the_oldest_and_the_nearest_deadline_per_route() {
        let m = Metrics::new();
        let now = at("2026-11-23T12:00:00Z");
        m.waiting.start(
            "k1",
            "release",
            at("2026-11-23T11:00:00Z"),
            Some(at("2026-11-23T13:00:00Z")),
        );
        m.waiting.start(
            "k2",
            "release",
            at("2026-11-23T11:30:00Z"),
            Some(at("2026-11-23T12:10:00Z")),
        );
        m.waiting
            .start("k3", "hearing", at("2026-11-23T11:59:00Z"), None);
        let s = m.waiting.summary(now);
        assert_eq!(s["release"], (2, 3600.0, Some(600.0)));
        assert_eq!(s["hearing"], (1, 60.0, None));
        m.waiting.end("k2");
        assert_eq!(m.waiting.summary(now)["release"], (1, 3600.0, Some(3600.0)));
        m.waiting.end("k1");
        m.waiting.end("k3");
        assert!(m.waiting.summary(now).is_empty());
        // A first failure dated in the future is no negative age.
        m.waiting.start(
            "k4",
            "release",
            Utc::now() + chrono::Duration::days(18),
            None,
        );
        assert_eq!(m.waiting.summary(Utc::now())["release"].1, 0.0);
        m.waiting.end("k4");
        // Nothing waiting: no series, so no alert can fire on a stale value.
        assert!(!m.render().contains("herald_waiting_notifications{"));
    }
}

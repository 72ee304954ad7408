//! Every metric Herald exports, in one place. Labels are bounded: event types from the
//! catalogue, route names from routes.toml, channels, and fixed outcome and reason words;
//! never a person, an address or an error message.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Events refused, by reason.
    pub events_rejected: IntCounterVec,
    /// Notifications by route, channel and outcome (`delivered`, `failed`, and the engine's
    /// problem kinds such as `unknown-recipient`, counted with channel `none`).
    pub notifications: IntCounterVec,
    /// One delivery attempt, by channel.
    pub delivery_duration: HistogramVec,
    /// From `occurredAt` to delivery, by route.
    pub notification_latency: HistogramVec,
    /// Each delivered notification against its deadline: `met`, `breached`, `short_notice`, `untracked`.
    pub sla_outcomes: IntCounterVec,
    /// Per endpoint (a directory recipient id and a channel): 0 sending, 1 circuit open
    /// (failing; left alone for a while), 2 disabled after 410 Gone.
    pub endpoint_state: IntGaugeVec,
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
                "Events refused and parked in the rejected queue.",
                &["reason"],
            ),
            notifications: counter(
                "herald_notifications_total",
                "Notifications by route, channel and outcome.",
                &["route", "channel", "outcome"],
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
            endpoint_state: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "herald_endpoint_state",
                        "Per endpoint: 0 sending, 1 circuit open, 2 disabled after 410 Gone.",
                    ),
                    &["recipient", "channel"],
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
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

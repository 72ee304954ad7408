//! Isolation per endpoint (a recipient on a channel): at most a few requests at once, a circuit
//! breaker that stops sending to an endpoint that keeps failing, and a stop after 410 Gone. A
//! dead or slow recipient then costs the others nothing: its notifications wait in the delay
//! queues instead of holding workers.
//!
//! When several instances share a ledger, each takes an equal share of every endpoint's limit
//! ([`Guard::share_among`]), and takes up the circuit and 410 stop another instance recorded
//! ([`Guard::adopt`]).
//!
//! Urgent notifications (short-notice releases, a PPO's failure-to-appear warrant) have a fast
//! lane to each endpoint: slots of their own, as many as the routine lane has, so however much
//! routine traffic is queued for an endpoint, an urgent notification goes next.
//!
//! An endpoint with a rate limit (`rate` in routes.toml) takes a token from its bucket
//! ([`super::rate`]) before it takes a slot: waiting for a token holds no connection, and the
//! two lanes share the bucket, the urgent one served first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rate::Rates;
use super::{Failure, FailureKind};

/// The limits, from routes.toml's `[webhook]` section.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests in flight to one endpoint.
    pub concurrency: usize,
    /// How long a notification waits for a free slot before it is retried later instead.
    pub queue_wait: Duration,
    /// Consecutive transient failures that open the circuit.
    pub failures_to_open: u32,
    /// How long an open circuit refuses to send before letting one attempt through.
    pub open_for: Duration,
}

/// What an endpoint is doing, for the `herald_endpoint_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    Disabled = 2,
}

impl State {
    /// The word the ledger and the log use.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::Disabled => "disabled",
        }
    }
}

struct Endpoint {
    slots: Arc<Semaphore>,
    urgent_slots: Arc<Semaphore>,
    failures: u32,
    open_until: Option<Instant>,
    disabled: bool,
}

pub struct Guard {
    limits: Limits,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Instances sharing each endpoint's limit, this one included.
    instances: std::sync::atomic::AtomicUsize,
    /// The rate limits, by endpoint; replaced whole when a reload changes them.
    rates: std::sync::RwLock<Arc<Rates>>,
}

/// Leave to send, held for the length of one attempt.
pub struct Pass {
    _permit: OwnedSemaphorePermit,
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard {
            limits,
            endpoints: Mutex::default(),
            instances: std::sync::atomic::AtomicUsize::new(1),
            rates: std::sync::RwLock::default(),
        }
    }

    /// The guard with rate limits on the endpoints they name.
    pub fn with_rates(self, rates: Rates) -> Guard {
        self.set_rates(rates);
        self
    }

    /// Puts new rate limits in force (a reload changed them): requests waiting for a token
    /// take it from the limit they waited on; the next ones from the new limits, which start
    /// with their full burst.
    pub fn set_rates(&self, rates: Rates) {
        rates.share_among(self.instances.load(std::sync::atomic::Ordering::Relaxed));
        *self.rates.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rates);
    }

    /// Puts `limits` in force as [`Rates::renew`] makes them from those in force.
    pub fn renew_rates(
        &self,
        limits: &[super::rate::Limit],
        watch: impl Fn(&str) -> super::rate::Watch,
    ) {
        let renewed = self.rates().renew(limits, watch);
        self.set_rates(renewed);
    }

    fn rates(&self) -> Arc<Rates> {
        Arc::clone(&self.rates.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Requests in flight to one endpoint that this instance allows itself: its equal share
    /// of the limit, rounded down, and at least one.
    pub fn concurrency(&self) -> usize {
        let n = self
            .instances
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        (self.limits.concurrency / n).max(1)
    }

    /// `instances` instances (this one included) now share every endpoint's limit. Requests
    /// already in flight finish under the share they started with.
    pub fn share_among(&self, instances: usize) {
        let instances = instances.max(1);
        let before = self
            .instances
            .swap(instances, std::sync::atomic::Ordering::Relaxed);
        if before == instances {
            return;
        }
        self.rates().share_among(instances);
        let slots = self.concurrency();
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for e in map.values_mut() {
            e.slots = Arc::new(Semaphore::new(slots));
            e.urgent_slots = Arc::new(Semaphore::new(slots));
        }
    }

    /// Takes up a state another instance recorded for `endpoint` at `since`: a 410 stop, an
    /// open circuit (open until `open_for` after `since`), or a closed one (it answered).
    /// An open circuit taken up behaves as one opened here: the one attempt let through when
    /// it is due fails it again at once, rather than after `failures_to_open` more failures
    /// (which would mark the endpoint closed in the ledger in between, though it never
    /// answered).
    pub fn adopt(&self, endpoint: &str, state: State, since: std::time::SystemTime) {
        let open_for = self.limits.open_for;
        let failed = self.limits.failures_to_open.saturating_sub(1);
        // How long ago `since` was, on this instance's monotonic clock.
        let ago = std::time::SystemTime::now()
            .duration_since(since)
            .unwrap_or_default();
        self.with(endpoint, |e| match state {
            State::Disabled => e.disabled = true,
            State::Open => {
                e.disabled = false;
                e.failures = e.failures.max(failed);
                let until = Instant::now()
                    .checked_sub(ago)
                    .map(|at| at + open_for)
                    .unwrap_or_else(Instant::now);
                if until > Instant::now() && e.open_until.is_none_or(|u| u < until) {
                    e.open_until = Some(until);
                }
            }
            State::Closed => {
                e.disabled = false;
                e.failures = 0;
                e.open_until = None;
            }
        });
    }

    fn with<T>(&self, endpoint: &str, f: impl FnOnce(&mut Endpoint) -> T) -> T {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by reference: the key is copied only the first time an endpoint is seen.
        if let Some(e) = map.get_mut(endpoint) {
            return f(e);
        }
        let slots = self.concurrency();
        let e = map.entry(endpoint.to_owned()).or_insert_with(|| Endpoint {
            slots: Arc::new(Semaphore::new(slots)),
            urgent_slots: Arc::new(Semaphore::new(slots)),
            failures: 0,
            open_until: None,
            disabled: false,
        });
        f(e)
    }

    /// Asks to send to `endpoint`; the failure says why not (a disabled endpoint is permanent,
    /// an open circuit, a full endpoint or one at its rate limit is transient).
    pub async fn enter(&self, endpoint: &str, urgent: bool) -> Result<Pass, Failure> {
        let now = Instant::now();
        let slots = self.with(endpoint, |e| {
            if e.disabled {
                return Err(Failure::new(
                    FailureKind::EndpointDisabled,
                    "endpoint disabled (it answered HTTP 410 Gone, or an operator disabled it)",
                ));
            }
            match e.open_until {
                Some(until) if now < until => Err(Failure::new(
                    FailureKind::CircuitOpen,
                    "circuit open: the endpoint keeps failing",
                )
                .with_retry_after(Some(until - now))),
                _ if urgent => Ok(Arc::clone(&e.urgent_slots)),
                _ => Ok(Arc::clone(&e.slots)),
            }
        })?;
        let rates = self.rates();
        if let Some(bucket) = rates.bucket(endpoint)
            && let Err(refused) = bucket.take(urgent, self.limits.queue_wait).await
        {
            return Err(Failure::new(
                FailureKind::RateLimited,
                format!(
                    "endpoint at its rate limit of {}: more is waiting than it lets through in {}",
                    bucket.rate(),
                    crate::sla::format_span(self.limits.queue_wait)
                ),
            )
            .with_retry_after(Some(refused.wait)));
        }
        match tokio::time::timeout(self.limits.queue_wait, slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Pass { _permit: permit }),
            _ => Err(Failure::new(
                FailureKind::EndpointBusy,
                "endpoint at its limit of requests in flight",
            )),
        }
    }

    /// Gives an endpoint a fresh start (an operator replayed something to it).
    pub fn reset(&self, endpoint: &str) {
        self.with(endpoint, |e| {
            e.failures = 0;
            e.open_until = None;
            e.disabled = false;
        });
    }

    /// Stops sending to an endpoint that said 410 Gone before a restart, as the ledger recorded.
    pub fn disable(&self, endpoint: &str) {
        self.with(endpoint, |e| e.disabled = true);
    }

    /// The endpoint's state now.
    pub fn state(&self, endpoint: &str) -> State {
        self.with(endpoint, |e| e.state())
    }

    /// Records how an attempt ended; returns the endpoint's state after it.
    pub fn record(&self, endpoint: &str, result: &Result<(), Failure>) -> State {
        let limits = self.limits;
        self.with(endpoint, |e| {
            match result {
                Ok(()) => {
                    e.failures = 0;
                    e.open_until = None;
                }
                Err(f) if f.kind == FailureKind::HttpGone => e.disabled = true,
                Err(f) if f.kind.counts_against_endpoint() => {
                    e.failures += 1;
                    if e.failures >= limits.failures_to_open {
                        e.open_until = Some(Instant::now() + limits.open_for);
                    }
                }
                Err(_) => {}
            }
            e.state()
        })
    }
}

impl Endpoint {
    fn state(&self) -> State {
        if self.disabled {
            State::Disabled
        } else if self.open_until.is_some_and(|u| Instant::now() < u) {
            State::Open
        } else {
            State::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Limits {
            concurrency: 1,
            queue_wait: Duration::from_millis(20),
            failures_to_open: 2,
            open_for: Duration::from_secs(60),
        })
    }

    fn transient() -> Result<(), Failure> {
        Err(Failure::new(FailureKind::HttpRetryable, "HTTP 503").with_code(503))
    }

    #[tokio::test]
    async fn repeated_failures_open_the_circuit_and_success_closes_it() {
        let g = guard();
        assert_eq!(g.record("a", &transient()), State::Closed);
        assert_eq!(g.record("a", &transient()), State::Open);
        let refused = g.enter("a", false).await.err().expect("open circuit");
        assert!(refused.is_transient() && refused.kind == FailureKind::CircuitOpen);
        assert!(
            g.enter("b", false).await.is_ok(),
            "other endpoints are not affected"
        );
        assert_eq!(g.record("a", &Ok(())), State::Closed);
        assert!(g.enter("a", false).await.is_ok());
    }

    #[tokio::test]
    async fn gone_disables_and_a_busy_endpoint_defers() {
        let g = guard();
        let gone = Err(Failure::new(FailureKind::HttpGone, "HTTP 410 Gone").with_code(410));
        assert_eq!(g.record("a", &gone), State::Disabled);
        assert!(
            !g.enter("a", false)
                .await
                .err()
                .expect("disabled")
                .is_transient()
        );
        let held = g.enter("b", false).await.expect("a free slot");
        let busy = g.enter("b", false).await.err().expect("no slot");
        assert!(busy.is_transient());
        drop(held);
        assert!(g.enter("b", false).await.is_ok());
    }

    #[tokio::test]
    async fn urgent_notifications_do_not_wait_behind_routine_ones() {
        let g = guard();
        let _routine = g.enter("a", false).await.expect("the routine slot");
        assert!(
            g.enter("a", false).await.is_err(),
            "routine traffic is at the endpoint's limit"
        );
        let urgent = g.enter("a", true).await.expect("the fast lane is free");
        assert!(
            g.enter("a", true).await.is_err(),
            "the fast lane has limits too"
        );
        drop(urgent);
        assert!(g.enter("a", true).await.is_ok());
    }

    #[tokio::test]
    async fn instances_share_an_endpoints_limit() {
        let g = Guard::new(Limits {
            concurrency: 4,
            ..guard().limits
        });
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(g.enter("a", false).await.expect("one of four slots"));
        }
        assert!(g.enter("a", false).await.is_err(), "four in flight");
        drop(held);
        // Three instances on the ledger: each may have 4 / 3 = 1 in flight.
        g.share_among(3);
        assert_eq!(g.concurrency(), 1);
        let one = g.enter("a", false).await.expect("this instance's one slot");
        assert!(g.enter("a", false).await.is_err(), "its share is one");
        drop(one);
        // More instances than the limit still leaves each one.
        g.share_among(9);
        assert_eq!(g.concurrency(), 1);
        g.share_among(1);
        assert_eq!(g.concurrency(), 4);
    }

    #[tokio::test]
    async fn an_endpoint_at_its_rate_limit_defers_with_the_wait_it_would_have_had() {
        use crate::config::Rate;
        use crate::deliver::rate::{Limit, Watch};
        let rate = Rate::parse("1/min").unwrap();
        let rates = Rates::new(
            &[Limit {
                name: "a/webhook".into(),
                rate,
                endpoints: vec!["a/webhook".into()],
            }],
            |_| Watch {
                held: prometheus::IntGauge::new("held", "held").unwrap(),
                held_seconds: prometheus::Counter::new("held_seconds", "held").unwrap(),
            },
        );
        let g = Guard::new(Limits {
            concurrency: 4,
            ..guard().limits
        })
        .with_rates(rates);
        drop(g.enter("a/webhook", false).await.expect("the one token"));
        let refused = g.enter("a/webhook", true).await.err().expect("no token");
        assert_eq!(refused.kind, FailureKind::RateLimited);
        assert!(refused.is_transient() && !refused.kind.counts_against_endpoint());
        let wait = refused.retry_after.expect("when to come back");
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        assert_eq!(g.state("a/webhook"), State::Closed);
        assert!(
            g.enter("b/webhook", false).await.is_ok(),
            "others have no limit"
        );
    }

    #[tokio::test]
    async fn a_state_another_instance_recorded_is_taken_up() {
        let g = guard();
        let now = std::time::SystemTime::now();
        g.adopt("a", State::Disabled, now);
        assert_eq!(g.state("a"), State::Disabled);
        g.adopt("a", State::Closed, now);
        assert_eq!(g.state("a"), State::Closed);
        // Opened 10 s ago for 60 s: open now, and refused with the time left.
        g.adopt("b", State::Open, now - Duration::from_secs(10));
        assert_eq!(g.state("b"), State::Open);
        let refused = g.enter("b", false).await.err().expect("open circuit");
        let left = refused.retry_after.expect("how long it stays open");
        assert!(
            left <= Duration::from_secs(50) && left > Duration::from_secs(40),
            "{left:?}"
        );
        // Opened longer ago than it stays open: closed.
        g.adopt("c", State::Open, now - Duration::from_secs(61));
        assert_eq!(g.state("c"), State::Closed);
        // The attempt then let through fails: open again at once, as where it was opened.
        assert_eq!(g.record("c", &transient()), State::Open);
    }
}

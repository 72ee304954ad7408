//! Rate limits: a token bucket per limit in routes.toml (a recipient's webhook `rate`, or the
//! email relay's `[email] rate`), which the guard asks before it takes a slot, so a
//! notification waiting for its turn holds no connection.
//!
//! The bucket holds at most one second's worth of tokens (at least one): after a quiet spell
//! that many go at once, then one every `1 / rate`. An endpoint's urgent and routine lanes
//! share its bucket; waiters are served in order of arrival within a lane, and every urgent
//! waiter before any routine one. Nothing polls: one task per bucket, only while someone
//! waits, sleeps until the next token is due and hands it over.
//!
//! A notification waits for a token in memory only as long as it may wait for a slot (the
//! guard's `queue_wait`). When more is queued ahead of it than the limit lets through in
//! that time, it is refused at once with the wait it would have had, and goes to the delay
//! queues as any transient failure does; it is never dropped.
//!
//! Several instances on one ledger each take an equal share of every rate
//! ([`Rates::share_among`]), as they do of the concurrency.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Counter, IntGauge};
use tokio::sync::oneshot;

use crate::config::Rate;

/// The label of the email relay's limit: one bucket for all email, whoever it is to.
pub const RELAY: &str = "email-relay";

/// One limit from routes.toml and the endpoints held to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Its name in the metrics: the endpoint (`police:WYP-LEEDS/webhook`), or [`RELAY`].
    pub name: String,
    /// The rate of the whole service, every instance together.
    pub rate: Rate,
    /// The guard's endpoints (`recipient/channel`) whose requests take its tokens.
    pub endpoints: Vec<String>,
}

/// Where a bucket reports how many wait and for how long.
#[derive(Clone)]
pub struct Watch {
    /// Notifications waiting for a token now.
    pub held: IntGauge,
    /// Time spent waiting for a token, all notifications together.
    pub held_seconds: Counter,
}

/// Every limit, found by endpoint.
#[derive(Default)]
pub struct Rates {
    by_endpoint: HashMap<String, Arc<Bucket>>,
    /// Each limit's bucket by the limit's name.
    by_name: HashMap<String, Arc<Bucket>>,
    buckets: Vec<Arc<Bucket>>,
}

impl Rates {
    /// Buckets for `limits`, each reporting to the `Watch` its name is given.
    pub fn new(limits: &[Limit], watch: impl Fn(&str) -> Watch) -> Rates {
        Rates::default().renew(limits, watch)
    }

    /// Buckets for `limits` (a reloaded configuration's), keeping this one's bucket of every
    /// limit whose name and rate are unchanged, with what it has let through lately and the
    /// notifications waiting on it; only the endpoints held to it may differ. A new or
    /// changed limit gets a new bucket, full.
    pub fn renew(&self, limits: &[Limit], watch: impl Fn(&str) -> Watch) -> Rates {
        let mut rates = Rates::default();
        for limit in limits {
            let bucket = match self.by_name.get(&limit.name) {
                Some(kept) if kept.rate == limit.rate => Arc::clone(kept),
                _ => Arc::new(Bucket::new(limit.rate, watch(&limit.name))),
            };
            for endpoint in &limit.endpoints {
                rates
                    .by_endpoint
                    .insert(endpoint.clone(), Arc::clone(&bucket));
            }
            rates
                .by_name
                .insert(limit.name.clone(), Arc::clone(&bucket));
            rates.buckets.push(bucket);
        }
        rates
    }

    /// The bucket `endpoint`'s requests take their tokens from, if it has a limit.
    pub fn bucket(&self, endpoint: &str) -> Option<&Arc<Bucket>> {
        self.by_endpoint.get(endpoint)
    }

    /// `instances` instances (this one included) now share every rate equally.
    pub fn share_among(&self, instances: usize) {
        let now = Instant::now();
        for b in &self.buckets {
            b.lock().share(b.rate, instances, now);
        }
    }
}

/// One limit's tokens and the notifications waiting for them.
pub struct Bucket {
    rate: Rate,
    watch: Watch,
    state: Mutex<State>,
}

/// A bucket would keep a notification waiting longer than it may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// How long it would have waited (from now), for the retry's `Retry-After`.
    pub wait: Duration,
}

impl Bucket {
    fn new(rate: Rate, watch: Watch) -> Bucket {
        Bucket {
            rate,
            watch,
            state: Mutex::new(State::new(rate, Instant::now())),
        }
    }

    /// The configured rate (the whole service's).
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token, waiting for one at most `most`. A notification that would wait longer
    /// is refused at once; one held past `most` (urgent traffic kept arriving ahead of a
    /// routine one) is refused then.
    pub async fn take(self: &Arc<Self>, urgent: bool, most: Duration) -> Result<(), Refused> {
        let granted = {
            let mut s = self.lock();
            s.refill(Instant::now());
            match s.admit(urgent, most) {
                Admit::Now => return Ok(()),
                Admit::Refused(wait) => return Err(Refused { wait }),
                Admit::Queue => {}
            }
            let (tx, rx) = oneshot::channel();
            s.lane(urgent).push_back(tx);
            if !s.pumping {
                s.pumping = true;
                tokio::spawn(Arc::clone(self).pump());
            }
            rx
        };
        let _held = Held::start(&self.watch);
        // A little past `most`, so one admitted as due just in time is not refused by a
        // timer's rounding.
        let bound = most + most / 4 + Duration::from_millis(10);
        match tokio::time::timeout(bound, granted).await {
            Ok(Ok(())) => Ok(()),
            // Timed out, or the runtime is stopping: its token goes to the next in line.
            _ => Err(Refused { wait: most }),
        }
    }

    /// Hands tokens to the waiters as they come due, until none is left waiting.
    async fn pump(self: Arc<Self>) {
        loop {
            let next = {
                let mut s = self.lock();
                let now = Instant::now();
                s.refill(now);
                match s.grant() {
                    Some(wait) => now + wait,
                    None => {
                        s.pumping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }
}

/// Counts a notification as held while it waits.
struct Held<'a> {
    watch: &'a Watch,
    since: Instant,
}

impl<'a> Held<'a> {
    fn start(watch: &'a Watch) -> Held<'a> {
        watch.held.inc();
        Held {
            watch,
            since: Instant::now(),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.watch.held.dec();
        self.watch
            .held_seconds
            .inc_by(self.since.elapsed().as_secs_f64());
    }
}

/// What a newcomer is told.
#[derive(Debug, PartialEq)]
enum Admit {
    /// A token was free and no one is ahead: go.
    Now,
    /// Wait in line.
    Queue,
    /// The line is longer than the wait allowed: this long.
    Refused(Duration),
}

/// The arithmetic of a bucket, given the time: no clock and no runtime of its own.
struct State {
    /// Tokens this instance gains a second: its share of the rate.
    per_second: f64,
    /// The most tokens it holds.
    burst: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    urgent: VecDeque<oneshot::Sender<()>>,
    routine: VecDeque<oneshot::Sender<()>>,
    /// Whether a task is handing out tokens.
    pumping: bool,
}

impl State {
    fn new(rate: Rate, now: Instant) -> State {
        let burst = f64::from(rate.burst());
        State {
            per_second: rate.per_second(),
            burst,
            tokens: burst,
            at: now,
            urgent: VecDeque::new(),
            routine: VecDeque::new(),
            pumping: false,
        }
    }

    /// This instance's share of the rate and of the burst (at least one token).
    fn share(&mut self, rate: Rate, instances: usize, now: Instant) {
        self.refill(now);
        let n = instances.max(1) as f64;
        self.per_second = rate.per_second() / n;
        self.burst = (f64::from(rate.burst()) / n).max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
    }

    fn lane(&mut self, urgent: bool) -> &mut VecDeque<oneshot::Sender<()>> {
        if urgent {
            &mut self.urgent
        } else {
            &mut self.routine
        }
    }

    /// Those ahead of a newcomer: every urgent waiter, and for a routine one every routine
    /// waiter too.
    fn ahead(&self, urgent: bool) -> usize {
        self.urgent.len() + if urgent { 0 } else { self.routine.len() }
    }

    /// How long until a token is free for one with `ahead` before it.
    fn wait_for(&self, ahead: usize) -> Duration {
        let short = (ahead as f64 + 1.0 - self.tokens).max(0.0);
        Duration::try_from_secs_f64(short / self.per_second).unwrap_or(Duration::MAX)
    }

    fn admit(&mut self, urgent: bool, most: Duration) -> Admit {
        let ahead = self.ahead(urgent);
        if ahead == 0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Now;
        }
        match self.wait_for(ahead) {
            wait if wait > most => Admit::Refused(wait),
            _ => Admit::Queue,
        }
    }

    /// Hands out the tokens there are, urgent waiters first; the wait until the next token,
    /// or `None` when no one is left waiting.
    fn grant(&mut self) -> Option<Duration> {
        while self.tokens >= 1.0 {
            let Some(waiter) = self.urgent.pop_front().or_else(|| self.routine.pop_front()) else {
                break;
            };
            // One that stopped waiting (it was refused by its bound) takes no token.
            if waiter.send(()).is_ok() {
                self.tokens -= 1.0;
            }
        }
        if self.urgent.is_empty() && self.routine.is_empty() {
            return None;
        }
        Some(self.wait_for(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateUnit;

    fn rate(count: u32, per: RateUnit) -> Rate {
        Rate { count, per }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn queue(s: &mut State, urgent: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        s.lane(urgent).push_back(tx);
        rx
    }

    #[test]
    fn a_reload_keeps_the_bucket_of_an_unchanged_limit_and_renews_the_rest() {
        let watch = |name: &str| Watch {
            held: prometheus::IntGauge::new(format!("held_{name}"), "h").unwrap(),
            held_seconds: prometheus::Counter::new(format!("held_s_{name}"), "h").unwrap(),
        };
        let limit = |name: &str, count, endpoints: &[&str]| Limit {
            name: name.into(),
            rate: rate(count, RateUnit::Second),
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        };
        let before = Rates::new(
            &[
                limit("a", 5, &["a/webhook"]),
                limit("relay", 10, &["a/email", "b/email"]),
                limit("gone", 1, &["g/webhook"]),
            ],
            watch,
        );
        let after = before.renew(
            &[
                limit("a", 5, &["a/webhook"]),
                limit("relay", 10, &["a/email", "b/email", "c/email"]),
                limit("b", 2, &["b/webhook"]),
            ],
            watch,
        );
        let same = |e: &str| Arc::ptr_eq(before.bucket(e).unwrap(), after.bucket(e).unwrap());
        assert!(same("a/webhook"), "unchanged: kept");
        assert!(
            same("a/email"),
            "the relay's rate unchanged, a recipient added: kept"
        );
        assert!(Arc::ptr_eq(
            after.bucket("c/email").unwrap(),
            after.bucket("a/email").unwrap()
        ));
        assert_eq!(
            after.bucket("b/webhook").unwrap().rate(),
            rate(2, RateUnit::Second)
        );
        assert!(
            after.bucket("g/webhook").is_none(),
            "a limit removed is gone"
        );
        let changed = before.renew(&[limit("a", 6, &["a/webhook"])], watch);
        assert!(!Arc::ptr_eq(
            before.bucket("a/webhook").unwrap(),
            changed.bucket("a/webhook").unwrap()
        ));
        assert_eq!(
            changed.bucket("a/webhook").unwrap().rate(),
            rate(6, RateUnit::Second)
        );
    }

    #[test]
    fn a_burst_of_one_seconds_worth_goes_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let mut s = State::new(rate(5, RateUnit::Second), t0);
        for _ in 0..5 {
            assert_eq!(s.admit(false, ms(1000)), Admit::Now);
        }
        // The sixth waits for the next token, 200 ms away.
        assert_eq!(s.admit(false, ms(1000)), Admit::Queue);
        assert_eq!(s.wait_for(0), ms(200));
        let mut first = queue(&mut s, false);
        assert_eq!(s.grant(), Some(ms(200)));
        assert!(first.try_recv().is_err(), "no token yet");
        s.refill(t0 + ms(200));
        assert_eq!(s.grant(), None, "the token went to the waiter");
        assert!(first.try_recv().is_ok());
        // A quiet spell fills the bucket to one second's worth, no more.
        s.refill(t0 + Duration::from_secs(60));
        assert!((s.tokens - 5.0).abs() < 1e-9, "{}", s.tokens);
    }

    #[test]
    fn urgent_waiters_get_tokens_before_routine_ones() {
        let t0 = Instant::now();
        let mut s = State::new(rate(1, RateUnit::Second), t0);
        assert_eq!(s.admit(false, ms(10_000)), Admit::Now);
        let mut routine: Vec<_> = (0..3).map(|_| queue(&mut s, false)).collect();
        let mut urgent = queue(&mut s, true);
        // An urgent newcomer has only urgent waiters ahead of it; a routine one has all.
        assert_eq!(s.ahead(true), 1);
        assert_eq!(s.ahead(false), 4);
        s.refill(t0 + ms(1000));
        assert_eq!(s.grant(), Some(ms(1000)));
        assert!(urgent.try_recv().is_ok(), "the urgent one went first");
        assert!(routine.iter_mut().all(|r| r.try_recv().is_err()));
        s.refill(t0 + ms(2000));
        s.grant();
        assert!(
            routine[0].try_recv().is_ok(),
            "then the routine ones, in order"
        );
        assert!(routine[1].try_recv().is_err());
    }

    #[test]
    fn a_line_longer_than_the_wait_allowed_is_refused_with_its_wait() {
        let t0 = Instant::now();
        let mut s = State::new(rate(2, RateUnit::Second), t0);
        s.admit(false, ms(1000));
        s.admit(false, ms(1000));
        let _held: Vec<_> = (0..2).map(|_| queue(&mut s, false)).collect();
        // Two ahead and no token: the third token is 1.5 s away.
        assert_eq!(s.admit(false, ms(1000)), Admit::Refused(ms(1500)));
        assert_eq!(s.admit(false, ms(2000)), Admit::Queue);
        // An urgent one has no one ahead of it.
        assert_eq!(s.admit(true, ms(1000)), Admit::Queue);
        assert_eq!(s.wait_for(s.ahead(true)), ms(500));
    }

    #[test]
    fn one_that_stopped_waiting_takes_no_token() {
        let t0 = Instant::now();
        let mut s = State::new(rate(1, RateUnit::Second), t0);
        s.admit(false, ms(1000));
        drop(queue(&mut s, false));
        let mut next = queue(&mut s, false);
        s.refill(t0 + ms(1000));
        assert_eq!(s.grant(), None);
        assert!(
            next.try_recv().is_ok(),
            "the token passed to the next in line"
        );
    }

    #[test]
    fn instances_share_the_rate_and_the_burst() {
        let t0 = Instant::now();
        let mut s = State::new(rate(3000, RateUnit::Minute), t0);
        s.share(rate(3000, RateUnit::Minute), 4, t0);
        assert!((s.per_second - 12.5).abs() < 1e-9);
        assert!((s.burst - 12.5).abs() < 1e-9 && (s.tokens - 12.5).abs() < 1e-9);
        // More instances than a second's worth: each still holds one token.
        s.share(rate(5, RateUnit::Second), 10, t0);
        assert!((s.burst - 1.0).abs() < 1e-9);
        assert!((s.per_second - 0.5).abs() < 1e-9);
    }

    fn watch() -> Watch {
        Watch {
            held: IntGauge::new("held", "held").unwrap(),
            held_seconds: Counter::new("held_seconds", "held").unwrap(),
        }
    }

    #[tokio::test]
    async fn waiters_are_let_through_at_the_rate_urgent_ones_first() {
        let limit = Limit {
            name: "a/webhook".into(),
            rate: rate(10, RateUnit::Second),
            endpoints: vec!["a/webhook".into()],
        };
        let w = watch();
        let rates = Rates::new(&[limit], |_| w.clone());
        let bucket = Arc::clone(rates.bucket("a/webhook").expect("a limit"));
        assert!(rates.bucket("b/webhook").is_none());
        let started = Instant::now();
        for _ in 0..10 {
            bucket.take(false, ms(1000)).await.expect("the burst");
        }
        assert!(started.elapsed() < ms(50), "the burst goes at once");
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (b, tx) = (Arc::clone(&bucket), tx.clone());
            tasks.push(tokio::spawn(async move {
                b.take(false, ms(1000))
                    .await
                    .expect("held, then let through");
                tx.send(format!("routine {i}")).unwrap();
            }));
            tokio::task::yield_now().await;
        }
        let deadline = Instant::now() + ms(1000);
        while w.held.get() < 5 {
            assert!(Instant::now() < deadline, "the routine ones are held");
            tokio::task::yield_now().await;
        }
        let b = Arc::clone(&bucket);
        tasks.push(tokio::spawn(async move {
            b.take(true, ms(1000)).await.expect("urgent");
            tx.send("urgent".into()).unwrap();
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(s) = order.try_recv() {
            seen.push(s);
        }
        assert_eq!(seen[0], "urgent", "{seen:?}");
        assert_eq!(
            &seen[1..],
            [
                "routine 0",
                "routine 1",
                "routine 2",
                "routine 3",
                "routine 4"
            ]
        );
        // Six more at 10/s: 600 ms after the burst emptied the bucket.
        assert!(started.elapsed() >= ms(590), "{:?}", started.elapsed());
        assert_eq!(w.held.get(), 0);
        assert!(w.held_seconds.get() > 0.0);
        // The bucket is empty: one that may not wait a token's interval is refused at once.
        let refused = bucket.take(false, ms(10)).await.expect_err("no token");
        assert!(refused.wait > ms(10), "{refused:?}");
    }
}

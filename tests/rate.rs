//! Rate limits against the real RabbitMQ, a real HTTP receiver and a real SMTP server: a
//! recipient's webhook `rate` and the email relay's `[email] rate` hold Herald to the rate,
//! every notification arrives once, urgent ones are let through first, and the
//! `herald_notifications_held` gauge shows those waiting.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::service::{self, Names, Receiver, Smtp, scrape, total, wait_until};
use herald::config::{Config, Rate};

const WAIT: Duration = Duration::from_secs(60);

/// routes.toml's way of writing `text`.
fn rate(text: &str) -> Option<Rate> {
    Some(Rate::parse(text).unwrap())
}

/// The shipped configuration with a `rate` on the Leeds force's webhook.
fn leeds_limited(receiver: &Receiver, limit: &str) -> Config {
    let mut config = service::config(receiver);
    let leeds = config
        .recipients
        .iter_mut()
        .find(|r| r.id == "police:WYP-LEEDS")
        .unwrap();
    leeds.webhook.as_mut().unwrap().rate = rate(limit);
    config
}

/// Panics unless the arrival times (seconds, sorted) keep to a token bucket of `per_second`
/// holding `burst`: between any two arrivals, at most `burst` + `per_second` x the time between
/// them, give or take one for the network's jitter.
fn kept_to(times: &[f64], per_second: f64, burst: f64) {
    for i in 0..times.len() {
        for j in i..times.len() {
            let seen = (j - i + 1) as f64;
            let allowed = burst + per_second * (times[j] - times[i]) + 1.0;
            assert!(
                seen <= allowed,
                "{seen} arrived within {:.3}s (at most {allowed:.1} allowed): {times:?}",
                times[j] - times[i]
            );
        }
        // The brief's own form: no one-second window holds more than rate + burst.
        let window = times[i..]
            .iter()
            .take_while(|t| **t < times[i] + 1.0)
            .count();
        assert!(
            window as f64 <= per_second + burst,
            "{window} in the second from {:.3}s: {times:?}",
            times[i]
        );
    }
}

/// Scrapes the held gauge until `done`, returning the highest value seen.
async fn highest_held(
    running: &herald::serve::Running,
    endpoint: &str,
    done: impl Fn() -> bool,
) -> f64 {
    let label = format!("endpoint=\"{endpoint}\"");
    let mut highest: f64 = 0.0;
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not everything arrived in {WAIT:?}"
        );
        let m = scrape(running).await;
        highest = highest.max(total(&m, "herald_notifications_held", &[&label]));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    highest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_rate_limit_spaces_the_requests_and_lets_urgent_ones_through_first() {
    const ROUTINE: usize = 20;
    const URGENT: usize = 3;
    let (receiver, names) = (Receiver::start().await, Names::new("rate-webhook"));
    let herald = service::start_with(leeds_limited(&receiver, "5/s"), &names, None, |s| {
        // Every event in hand at once, so the bucket, not the prefetch, decides the order;
        // and time enough to wait for a token that no notification is sent back to the queue.
        s.prefetch = 100;
        s.webhook_timeout = Duration::from_secs(10);
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-rate-routine", ROUTINE).await;
    service::publish_warrants(&ch, &names.exchange, "evt-rate-urgent", 0..URGENT).await;

    let police = || receiver.hooks_at("/police/WYP-LEEDS");
    let held = highest_held(&herald, "police:WYP-LEEDS/webhook", || {
        police().len() >= ROUTINE + URGENT
    })
    .await;
    assert!(held > 0.0, "notifications were held for their turn");

    let hooks = police();
    let ids: BTreeSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(hooks.len(), ROUTINE + URGENT, "each arrived once");
    assert_eq!(ids.len(), ROUTINE + URGENT, "each arrived once");
    assert!(hooks.iter().all(|h| h.verified && h.status == 204));
    let start = hooks[0].at;
    let times: Vec<f64> = hooks.iter().map(|h| (h.at - start).as_secs_f64()).collect();
    println!("rate: arrivals at {times:.2?}");
    kept_to(&times, 5.0, 5.0);
    // 23 at 5/s after a burst of 5: 3.6 s at least.
    assert!(
        times[times.len() - 1] >= 3.2,
        "the limit held them back: {times:?}"
    );
    // The warrants, published after every bail decision, overtook most of them.
    let urgent: Vec<usize> = hooks
        .iter()
        .enumerate()
        .filter(|(_, h)| h.body["data"]["notification"]["priority"] == "urgent")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(urgent.len(), URGENT);
    let routine_after = hooks.len() - 1 - urgent[URGENT - 1];
    assert!(
        routine_after >= 8,
        "the urgent ones went ahead of the routine queue (at {urgent:?} of {})",
        hooks.len()
    );
    // The other endpoints have no limit: probation had every bail decision at once.
    let probation = receiver
        .hooks()
        .iter()
        .filter(|h| h.path == "/probation/PDU-LEEDS")
        .count();
    assert_eq!(probation, ROUTINE);

    let label = "endpoint=\"police:WYP-LEEDS/webhook\"";
    wait_until("none held any more", WAIT, || async {
        total(
            &scrape(&herald).await,
            "herald_notifications_held",
            &[label],
        ) == 0.0
    })
    .await;
    let m = scrape(&herald).await;
    assert!(total(&m, "herald_notifications_held_seconds_total", &[label]) > 0.0);
    assert_eq!(
        total(
            &m,
            "herald_delivery_failures_total",
            &["kind=\"rate-limited\""]
        ),
        0.0,
        "every one waited in memory; none was sent back to the queue"
    );
    herald.stop().await.unwrap();
    assert_eq!(police().len(), ROUTINE + URGENT, "and none arrived twice");
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_longer_than_the_wait_goes_to_the_retry_queues_and_still_arrives_once() {
    const EVENTS: usize = 10;
    let (receiver, names) = (Receiver::start().await, Names::new("rate-backlog"));
    let herald = service::start_with(leeds_limited(&receiver, "2/s"), &names, None, |s| {
        s.prefetch = 100;
        // A notification waits for a token at most 1 s: at 2/s, three are let through or
        // held, the rest go to the delay queue and come back.
        s.webhook_timeout = Duration::from_secs(1);
        s.retry_schedule = vec![Duration::from_secs(1); 20];
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-backlog", EVENTS).await;
    let police = || receiver.hooks_at("/police/WYP-LEEDS");
    wait_until("every bail decision at the force", WAIT, || async {
        police().len() >= EVENTS
    })
    .await;
    let m = scrape(&herald).await;
    assert!(
        total(
            &m,
            "herald_delivery_failures_total",
            &["kind=\"rate-limited\""]
        ) > 0.0,
        "some waited in the delay queue"
    );
    let hooks = police();
    let start = hooks[0].at;
    let times: Vec<f64> = hooks.iter().map(|h| (h.at - start).as_secs_f64()).collect();
    kept_to(&times, 2.0, 2.0);
    herald.stop().await.unwrap();
    let hooks = police();
    let ids: BTreeSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(
        (hooks.len(), ids.len()),
        (EVENTS, EVENTS),
        "each arrived exactly once"
    );
    service::cleanup(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_email_relay_rate_limit_spaces_all_email_and_lets_urgent_email_through_first() {
    const ROUTINE: usize = 10;
    const URGENT: usize = 2;
    // Each bail decision is an email to the force and one to probation; each warrant one to
    // the force.
    const EMAILS: usize = 2 * ROUTINE + URGENT;
    let (smtp, receiver, names) = (
        Smtp::start(),
        Receiver::start().await,
        Names::new("rate-email"),
    );
    let mut config = service::config(&receiver);
    config.email.rate = rate("5/s");
    let herald = service::start_with(config, &names, Some(&smtp), |s| {
        s.prefetch = 100;
        s.webhook_timeout = Duration::from_secs(10);
    })
    .await;
    let (_conn, ch) = service::channel().await;
    service::bail_decisions(&ch, &names.exchange, "evt-rate-mail", ROUTINE).await;
    service::publish_warrants(&ch, &names.exchange, "evt-rate-mail-urgent", 0..URGENT).await;
    let held = highest_held(&herald, "email-relay", || smtp.count() >= EMAILS).await;
    assert!(held > 0.0, "emails were held for their turn");

    let mut mails = smtp.messages();
    mails.sort_by_key(|m| m.received);
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!((mails.len(), ids.len()), (EMAILS, EMAILS), "each once");
    let start = mails[0].received;
    let times: Vec<f64> = mails
        .iter()
        .map(|m| {
            m.received
                .duration_since(start)
                .unwrap_or_default()
                .as_secs_f64()
        })
        .collect();
    println!("rate: emails at {times:.2?}");
    kept_to(&times, 5.0, 5.0);
    assert!(times[times.len() - 1] >= 2.8, "{times:?}");
    let urgent: Vec<usize> = mails
        .iter()
        .enumerate()
        .filter(|(_, m)| m.subject.starts_with("[CAT A] "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(urgent.len(), URGENT);
    assert!(
        mails.len() - 1 - urgent[URGENT - 1] >= 8,
        "the urgent emails went ahead of the routine ones (at {urgent:?} of {})",
        mails.len()
    );
    wait_until("none held any more", WAIT, || async {
        total(
            &scrape(&herald).await,
            "herald_notifications_held",
            &["endpoint=\"email-relay\""],
        ) == 0.0
    })
    .await;
    herald.stop().await.unwrap();
    assert_eq!(smtp.count(), EMAILS, "and none arrived twice");
    service::cleanup(&ch, &names).await;
}

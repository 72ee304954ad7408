//! End-to-end throughput of `herald serve`: events published with confirms to the local
//! RabbitMQ, routed to two recipients each, delivered by signed webhook to a receiver on
//! loopback. Needs RabbitMQ on 127.0.0.1:5672.
//!
//! `cargo bench --bench throughput` (EVENTS=n to change the count, default 5000).

#[allow(dead_code)] // Of the shared module this benchmark needs only its configuration.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use herald::core::Core;
use herald::serve::{self, Settings};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SECRET: &str = "whsec_dGhyb3VnaHB1dC1iZW5jaG1hcmstc2VjcmV0LWtleQ==";

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    // A receiver that answers 204 and counts.
    let received = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let counter = Arc::clone(&received);
    let app = Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = support::bail_to_two_webhooks(root, port);
    let core = Core::from_config(config, &root.join("routes.toml")).expect("core");
    let tag = format!("herald.bench.{}", std::process::id());
    let mut settings = Settings::new(&core.config, |_| None);
    settings.amqp_urls = vec![AMQP.into()];
    settings.exchange = format!("{tag}.events");
    settings.queue = format!("{tag}.queue");
    settings.rejected_queue = format!("{tag}.rejected");
    settings.failed_queue = format!("{tag}.failed");
    settings.metrics_addr = "127.0.0.1:0".into();
    settings.outbox = std::env::temp_dir().join(&tag);
    settings.connection_name = tag.clone();
    let names = (
        settings.exchange.clone(),
        [
            settings.queue.clone(),
            settings.rejected_queue.clone(),
            settings.failed_queue.clone(),
        ],
    );
    let running = serve::start(Arc::new(core), settings, |k| {
        (k == "HERALD_WEBHOOK_SECRET").then(|| SECRET.to_owned())
    })
    .await
    .expect("herald starts (is RabbitMQ running?)");

    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = std::fs::read(root.join("schemas/examples/valid/court.bail.decided.json"))
        .expect("example");

    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        for i in chunk {
            let props = BasicProperties::default()
                .with_message_id(format!("bench-{i}").into())
                .with_user_id("guest".into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            ch.basic_publish(
                names.0.as_str().into(),
                "court.bail.decided".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .expect("publish");
        }
        ch.wait_for_confirms().await.expect("confirms");
    }
    let published = started.elapsed();
    let expected = events * 2;
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let delivered = received.load(Ordering::Relaxed);
    running.stop().await.expect("stops");
    for q in &names.1 {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(names.0.as_str().into(), ExchangeDeleteOptions::default())
        .await;

    let secs = elapsed.as_secs_f64();
    println!(
        "events published      {events} in {:.2} s (with confirms)",
        published.as_secs_f64()
    );
    println!("webhooks delivered    {delivered} of {expected}");
    println!(
        "throughput            {:.0} events/s, {:.0} notifications/s",
        events as f64 / secs,
        delivered as f64 / secs
    );
}

//! Validate + route + render per event, on the shipped examples and configuration.
//!
//! `cargo bench --bench core`. The target: at most 20 µs per event with two recipients
//! (`target/...`: a bail decision for police and probation).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::core::Core;
use herald::event::EventId;
use herald::route::Authority;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let core = Core::load(&root.join("routes.toml")).expect("routes.toml loads");
    let mut group = c.benchmark_group("process");
    let dir = root.join("schemas/examples/valid");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for path in names {
        let body = std::fs::read(&path).expect("example");
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = EventId::new("bench-event");
        let (_, routing) = core.process(&body, id.clone()).expect("valid example");
        let recipients = routing
            .notifications
            .iter()
            .map(|n| n.recipient.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        group.bench_function(
            format!(
                "{name} ({recipients} recipients, {} notifications)",
                routing.notifications.len()
            ),
            |b| {
                b.iter(|| {
                    core.process(black_box(&body), id.clone())
                        .map(|(_, r)| r.notifications.len())
                })
            },
        );
    }
    group.finish();

    // The target's case: two recipients, on the webhook channel only and on both channels.
    let webhook_only = {
        let text = std::fs::read_to_string(root.join("routes.toml")).expect("routes.toml");
        let head = &text[..text.find("[[route]]").expect("routes")];
        let routes = r#"
[[route]]
name = "bail-two-recipients-webhook"
events = ["court.bail.decided"]
to = ["police:{offender.homeBcu}", "probation:{offender.pdu}"]
channels = ["webhook"]
template = "bail-decided"
sla = "within 24h"
"#;
        let config =
            herald::config::Config::parse_in(&format!("{head}{routes}"), root).expect("config");
        Core::from_config(config, &root.join("routes.toml")).expect("core")
    };
    let body = std::fs::read(dir.join("court.bail.decided.json")).expect("example");
    let id = EventId::new("bench-event");
    assert_eq!(
        webhook_only
            .process(&body, id.clone())
            .map(|(_, r)| r.notifications.len())
            .ok(),
        Some(2)
    );
    c.bench_function("target/two recipients, webhook only", |b| {
        b.iter(|| {
            webhook_only
                .process(black_box(&body), id.clone())
                .map(|(_, r)| r.notifications.len())
        })
    });
    c.bench_function("target/two recipients, email and webhook", |b| {
        b.iter(|| {
            core.process(black_box(&body), id.clone())
                .map(|(_, r)| r.notifications.len())
        })
    });

    // The parts, for finding what to make faster.
    let body = std::fs::read(dir.join("court.bail.decided.json")).expect("example");
    let event = core
        .intake
        .accept(&body, EventId::new("bench-event"))
        .expect("valid");
    c.bench_function("parts/validate court.bail.decided", |b| {
        b.iter(|| {
            core.intake
                .accept(black_box(&body), EventId::new("bench-event"))
                .is_ok()
        })
    });
    let seed = Authority::seed();
    c.bench_function("parts/route+render court.bail.decided", |b| {
        b.iter(|| core.route(black_box(&event), &seed).notifications.len())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);

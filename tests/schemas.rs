//! The published contract: every valid example passes, every invalid example fails for the
//! rule it is named after, at the expected JSON pointer.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use herald::event::EventId;
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    reason: String,
    pointer: String,
}

fn files(dir: &str) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(common::root().join("schemas/examples").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
    names.sort();
    names
}

#[test]
fn every_valid_example_is_accepted_as_the_type_its_name_says() {
    let core = common::core();
    let names = files("valid");
    assert!(names.len() >= 9);
    for name in &names {
        let body = std::fs::read(common::example_path("valid", name)).unwrap();
        let event = core
            .intake
            .accept(&body, EventId::from_content(&body))
            .unwrap_or_else(|r| panic!("{name}: {r}"));
        let stem = name.trim_end_matches(".json");
        let named_type = stem.split("--").next().unwrap();
        assert_eq!(event.event_type.as_str(), named_type, "{name}");
    }
}

#[test]
fn every_event_type_has_a_valid_example() {
    let core = common::core();
    let covered: BTreeSet<String> = files("valid")
        .iter()
        .map(|n| {
            n.split("--")
                .next()
                .unwrap()
                .trim_end_matches(".json")
                .to_owned()
        })
        .collect();
    let types: Vec<&str> = core
        .intake
        .schemas()
        .event_types()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        types.len(),
        11,
        "the catalogue has eleven event types: {types:?}"
    );
    for t in types {
        assert!(covered.contains(t), "no valid example for {t}");
    }
}

#[test]
fn every_version_of_every_event_type_has_a_valid_example() {
    let core = common::core();
    let schemas = core.intake.schemas();
    let covered: BTreeSet<(String, u64)> = common::examples()
        .iter()
        .map(|(_, doc)| {
            let t = doc["eventType"].as_str().unwrap().to_owned();
            (t, doc["version"].as_u64().unwrap())
        })
        .collect();
    let mut versions = 0;
    for t in schemas.event_types() {
        for v in schemas.versions(t) {
            assert!(
                covered.contains(&(t.as_str().to_owned(), *v)),
                "no valid example of {t} version {v}"
            );
            versions += 1;
        }
    }
    // Eleven types; court.hearing.concluded in versions 1 and 2.
    assert_eq!(versions, 12);
}

#[test]
fn court_hearing_concluded_is_accepted_in_versions_1_and_2_and_v2_says_whether_each_outcome_is_final()
 {
    let core = common::core();
    let schemas = core.intake.schemas();
    let hearing = schemas.event_type("court.hearing.concluded").unwrap();
    let mut versions = schemas.versions(hearing).to_vec();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2]);

    let v1 = common::example("court.hearing.concluded.json");
    let v2 = common::example("court.hearing.concluded--v2.json");
    assert_eq!(common::accept(&v1).version, 1);
    assert_eq!(common::accept(&v2).version, 2);

    let refused = |doc: &serde_json::Value| {
        let body = serde_json::to_vec(doc).unwrap();
        let r = core
            .intake
            .accept(&body, EventId::from_content(&body))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(r.reason.as_str(), "schema-violation", "{r}");
        assert_eq!(r.violations.len(), 1, "{r}");
        (
            r.violations[0].pointer.clone(),
            r.violations[0].message.clone(),
        )
    };
    // Version 2 needs `finalised` on every outcome, and a boolean...
    let mut doc = v2.clone();
    doc["additionalInformation"]["outcomes"][0]
        .as_object_mut()
        .unwrap()
        .remove("finalised");
    assert_eq!(
        refused(&doc),
        (
            "/additionalInformation/outcomes/0/finalised".to_owned(),
            "required field is missing".to_owned()
        )
    );
    let mut doc = v2.clone();
    doc["additionalInformation"]["outcomes"][1]["finalised"] = "no".into();
    assert_eq!(
        refused(&doc),
        (
            "/additionalInformation/outcomes/1/finalised".to_owned(),
            "must be of type boolean".to_owned()
        )
    );
    // ...and version 1 does not know it.
    let mut doc = v1.clone();
    doc["additionalInformation"]["outcomes"][1]["finalised"] = true.into();
    assert_eq!(
        refused(&doc),
        (
            "/additionalInformation/outcomes/1/finalised".to_owned(),
            "unknown field (not in the schema)".to_owned()
        )
    );
    // A version beyond them names both.
    let mut doc = v2;
    doc["version"] = 3.into();
    let body = serde_json::to_vec(&doc).unwrap();
    let r = core
        .intake
        .accept(&body, EventId::from_content(&body))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(r.reason.as_str(), "unsupported-version", "{r}");
    assert!(r.detail.contains("supported: 1, 2"), "{r}");
}

#[test]
fn every_invalid_example_fails_for_its_rule_at_its_pointer() {
    let core = common::core();
    let text = std::fs::read_to_string(common::example_path("invalid", "expected.toml")).unwrap();
    let expected: BTreeMap<String, Expected> = toml::from_str(&text).unwrap();
    let names = files("invalid");
    assert!(names.len() >= 18);
    for name in &names {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no entry in expected.toml"));
        let body = std::fs::read(common::example_path("invalid", name)).unwrap();
        let rejection = match core.intake.accept(&body, EventId::from_content(&body)) {
            Ok(_) => panic!("{name} was accepted"),
            Err(r) => r,
        };
        assert_eq!(
            rejection.reason.as_str(),
            want.reason,
            "{name}: {rejection}"
        );
        if want.reason == "malformed-json" {
            assert!(rejection.violations.is_empty());
            continue;
        }
        assert!(!rejection.violations.is_empty(), "{name}: no pointer given");
        for v in &rejection.violations {
            assert_eq!(v.pointer, want.pointer, "{name}: {v}");
        }
    }
    for name in expected.keys() {
        assert!(
            names.contains(name),
            "expected.toml lists {name}, which does not exist"
        );
    }
}

#[test]
fn conditional_requirements_follow_the_decision() {
    // A refused HDC decision needs neither release date nor curfew address...
    let mut doc = common::example("prison.hdc.decided.json");
    let info = doc["additionalInformation"].as_object_mut().unwrap();
    info.remove("releaseDate");
    info.remove("curfewAddress");
    info["decision"] = "refused".into();
    common::accept(&doc);
    // ...and unconditional bail needs no conditions.
    let mut doc = common::example("court.bail.decided.json");
    let info = doc["additionalInformation"].as_object_mut().unwrap();
    info.remove("conditions");
    info["outcome"] = "unconditional-bail".into();
    common::accept(&doc);
}

/// JSON pointers of every string in `value` that reads as a date (`YYYY-MM-DD`) or, with
/// `true`, as a date-time.
fn dates(value: &serde_json::Value, at: String, out: &mut Vec<(String, bool)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                dates(v, format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                dates(v, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::String(s) => {
            let b = s.as_bytes();
            if b.len() >= 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b[..4].iter().all(u8::is_ascii_digit)
            {
                out.push((at, b.len() > 10));
            }
        }
        _ => {}
    }
}

#[test]
fn every_date_and_date_time_is_from_1900_to_2099_and_a_refusal_says_so() {
    const DATE: &str = "must be a date from 1900-01-01 to 2099-12-31 (YYYY-MM-DD)";
    const DATE_TIME: &str = "must be a date-time from 1900-01-01 to 2099-12-31 with an offset \
                             and seconds 00 to 59, e.g. 2026-11-20T15:42:00Z";
    let accepted_dates = ["1900-01-01", "2099-12-31", "2000-02-29", "2096-02-29"];
    let refused_dates = ["0000-01-01", "1899-12-31", "2100-01-01", "9999-12-31"];
    let accepted_times = [
        "1900-01-01T00:00:00+23:59",
        "2099-12-31T23:59:59-23:59",
        "2024-02-29T12:00:00.5+05:45",
        "2026-03-29T01:30:00+14:00",
    ];
    let refused_times = [
        "2026-12-31T23:59:60Z",
        "2026-06-30T23:59:60+00:00",
        "1899-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "0000-01-01T00:00:00+23:59",
    ];
    let core = common::core();
    let mut tried = 0;
    for name in files("valid") {
        let doc = common::example(&name);
        let mut found = Vec::new();
        dates(&doc, String::new(), &mut found);
        assert!(!found.is_empty(), "{name}");
        for (pointer, is_time) in found {
            let (accepted, refused, message) = if is_time {
                (&accepted_times[..], &refused_times[..], DATE_TIME)
            } else {
                (&accepted_dates[..], &refused_dates[..], DATE)
            };
            let with = |value: &str| {
                let mut doc = doc.clone();
                *doc.pointer_mut(&pointer).unwrap() = value.into();
                serde_json::to_vec(&doc).unwrap()
            };
            // A grant's two dates are also checked against each other (it does not end before
            // it begins): an accepted date is given to both, so only the range is tried.
            let both = |value: &str| {
                let mut doc = doc.clone();
                let pair = [REPRESENTATION_FROM, REPRESENTATION_UNTIL];
                let targets = if pair.contains(&pointer.as_str()) {
                    &pair[..]
                } else {
                    &[pointer.as_str()][..]
                };
                for p in targets {
                    if let Some(v) = doc.pointer_mut(p) {
                        *v = value.into();
                    }
                }
                serde_json::to_vec(&doc).unwrap()
            };
            for value in accepted {
                let body = both(value);
                if let Err(r) = core.intake.accept(&body, EventId::from_content(&body)) {
                    panic!("{name}: {pointer} = {value}: {r}");
                }
            }
            for value in refused {
                let body = with(value);
                let r = core
                    .intake
                    .accept(&body, EventId::from_content(&body))
                    .map(|_| ())
                    .expect_err(value);
                assert_eq!(r.reason.as_str(), "schema-violation", "{r}");
                assert_eq!(r.violations.len(), 1, "{name}: {pointer} = {value}: {r}");
                assert_eq!(r.violations[0].pointer, pointer, "{r}");
                assert_eq!(r.violations[0].message, message, "{r}");
                assert!(!r.detail.contains(value), "{r}");
            }
            tried += 1;
        }
    }
    assert!(tried >= 60, "{tried} fields tried");
}

const REPRESENTATION_FROM: &str = "/additionalInformation/effectiveFrom";
const REPRESENTATION_UNTIL: &str = "/additionalInformation/validUntil";

#[test]
fn every_date_in_the_event_schemas_is_one_of_the_shared_definitions() {
    fn formats(value: &serde_json::Value, file: &str) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(format) = map.get("format").and_then(|f| f.as_str()) {
                    assert!(
                        !format.starts_with("date") && format != "time",
                        "{file} has its own {format}: use common.schema.json's date or dateTime"
                    );
                }
                map.values().for_each(|v| formats(v, file));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, file)),
            _ => {}
        }
    }
    let dir = common::root().join("schemas");
    let mut paths = vec![dir.join("envelope.schema.json")];
    for entry in std::fs::read_dir(dir.join("events")).unwrap() {
        paths.push(entry.unwrap().path());
    }
    assert!(paths.len() >= 10);
    for path in paths {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        formats(&doc, &path.display().to_string());
    }
}

/// The document `herald asyncapi` prints.
fn asyncapi() -> serde_json::Value {
    let generated = herald::cli::asyncapi::document(common::core()).unwrap();
    serde_json::from_str(&generated).unwrap()
}

#[test]
fn the_asyncapi_document_is_current_and_has_every_event_type_and_version() {
    let generated = herald::cli::asyncapi::document(common::core()).unwrap();
    let file = common::root().join("docs/asyncapi.json");
    if std::env::var_os("HERALD_WRITE_ASYNCAPI").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/asyncapi.json is not what `herald asyncapi` prints: run \
         `cargo run -- asyncapi > docs/asyncapi.json` (or HERALD_WRITE_ASYNCAPI=1 cargo test \
         --locked --test schemas asyncapi)"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let core = common::core();
    let schemas = core.intake.schemas();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channels = doc["channels"].as_object().unwrap();
    assert_eq!(channels.len(), schemas.event_types().count());
    for t in schemas.event_types() {
        let channel = &channels[t.as_str()];
        // The address is the routing key, which is the event type, on routes.toml's exchange.
        assert_eq!(channel["address"], t.as_str());
        let amqp = &channel["bindings"]["amqp"];
        assert_eq!(amqp["is"], "routingKey");
        assert_eq!(amqp["exchange"]["name"], core.config.amqp.exchange.as_str());
        assert_eq!(amqp["exchange"]["type"], "topic");
        let operation = &doc["operations"][format!("receive.{t}")];
        assert_eq!(operation["action"], "receive");
        assert_eq!(operation["channel"]["$ref"], format!("#/channels/{t}"));
        for v in schemas.versions(t) {
            let name = format!("{t}.v{v}");
            assert!(
                channel["messages"].get(&name).is_some(),
                "{name} in its channel"
            );
            let message = &doc["components"]["messages"][&name];
            assert_eq!(message["contentType"], "application/json");
            assert_eq!(
                message["payload"]["$ref"],
                format!("#/components/schemas/{name}")
            );
            assert!(
                message["examples"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty()),
                "{name} has an example"
            );
        }
    }
    // What admission asks of the message, machine-readable in the messages' trait.
    let properties = &doc["components"]["messageTraits"]["amqp"]["x-amqp-properties"];
    assert_eq!(
        properties["required"],
        serde_json::json!(["message_id", "user_id", "content_type"])
    );
    let limits = &doc["components"]["messageTraits"]["amqp"]["x-herald-limits"];
    assert_eq!(
        limits["maxHeaderBytes"],
        core.config.limits.max_header_bytes.as_u64()
    );
    assert_eq!(
        limits["maxEventBytes"],
        core.config.limits.max_event_bytes.as_u64()
    );
}

/// The draft-07 schemas of the document decide every example, valid and invalid, as Herald's
/// 2020-12 schemas do: a publisher validating with the document gets Herald's answer.
#[test]
fn the_asyncapi_schemas_judge_every_example_as_herald_does() {
    let doc = asyncapi();
    let schemas = common::core().intake.schemas();
    let mut examples: Vec<(String, serde_json::Value)> = common::examples().to_vec();
    for name in files("invalid") {
        let text = std::fs::read(common::example_path("invalid", &name)).unwrap();
        if let Ok(value) = serde_json::from_slice(&text) {
            examples.push((format!("invalid/{name}"), value));
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for (name, event) in &examples {
        let (Some(t), Some(v)) = (
            event["eventType"]
                .as_str()
                .and_then(|t| schemas.event_type(t)),
            event["version"].as_u64(),
        ) else {
            continue;
        };
        let Some(herald) = schemas.check_event(t, v, event) else {
            continue;
        };
        // The whole document is the schema resource, so its `#/components/...` references
        // resolve; draft-07 ignores the siblings of the root's `$ref`.
        let mut root = doc.clone();
        root["$ref"] = format!("#/components/schemas/{t}.v{v}/schema").into();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{t}.v{v}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errors.is_empty(),
            herald.is_empty(),
            "{name}: the document says {errors:?}, Herald says {herald:?}"
        );
        if herald.is_empty() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        accepted >= 25 && refused >= 30,
        "{accepted} accepted, {refused} refused"
    );
}

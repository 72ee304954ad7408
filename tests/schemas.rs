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
        9,
        "the catalogue has nine event types: {types:?}"
    );
    for t in types {
        assert!(covered.contains(t), "no valid example for {t}");
    }
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

//! Shared by the test files: the shipped configuration and the example events, and (in
//! `service`) the real parts the service tests talk to.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use herald::core::Core;
use herald::event::{Event, EventId};
use serde_json::Value;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The core built from the shipped routes.toml, loaded once.
pub fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| {
        Core::load(&root().join("routes.toml")).unwrap_or_else(|e| panic!("routes.toml: {e:#?}"))
    })
}

pub fn example_path(dir: &str, name: &str) -> PathBuf {
    root().join("schemas/examples").join(dir).join(name)
}

/// Every valid example, by file name in name order, parsed once.
pub fn examples() -> &'static [(String, Value)] {
    static EXAMPLES: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let dir = root().join("schemas/examples/valid");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert!(!names.is_empty(), "no valid examples in {}", dir.display());
        names
            .into_iter()
            .map(|name| {
                let text = std::fs::read(dir.join(&name)).unwrap();
                let doc = serde_json::from_slice(&text)
                    .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
                (name, doc)
            })
            .collect()
    })
}

/// A valid example as JSON, to adjust for a test.
pub fn example(name: &str) -> Value {
    examples()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, doc)| doc.clone())
        .unwrap_or_else(|| panic!("no valid example {name}"))
}

/// A valid example as the bytes an agency publishes.
pub fn body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&example(name)).unwrap()
}

/// Runs a document through intake; panics with the reason if it is rejected.
pub fn accept(doc: &Value) -> Event {
    let body = serde_json::to_vec(doc).unwrap();
    core()
        .intake
        .accept(&body, EventId::new("evt-test-1"))
        .unwrap_or_else(|r| panic!("rejected: {r}"))
}

pub mod service;

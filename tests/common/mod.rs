//! Shared by the test files: the shipped configuration and the example events.

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

/// A valid example as JSON, to adjust for a test.
pub fn example(name: &str) -> Value {
    let text = std::fs::read(example_path("valid", name)).unwrap();
    serde_json::from_slice(&text).unwrap()
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

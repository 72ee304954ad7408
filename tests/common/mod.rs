//! Shared by the test files: the shipped configuration and the example events, a lock between
//! test processes, and (in `service` and `broker`) the real parts the service tests talk to.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

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

/// A lock between test processes (several test binaries, or two runs at once): a directory,
/// made atomically, holding its owner's process id. A lock whose owner has died is taken over.
pub struct DirLock(PathBuf);

impl DirLock {
    pub fn acquire(path: &Path, timeout: Duration) -> Result<DirLock, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("owner"), std::process::id().to_string());
                    return Ok(DirLock(path.into()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if DirLock::abandoned(path) {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => return Err(format!("cannot create the lock {}: {e}", path.display())),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} is still held after {timeout:?}: remove it if no test run is going on",
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its owner has died, or it never said who it is (it is made and its owner written in
    /// one step, so that is a few seconds at most).
    fn abandoned(path: &Path) -> bool {
        match std::fs::read_to_string(path.join("owner")) {
            Ok(pid) if !pid.trim().is_empty() => !process_alive(pid.trim()),
            _ => std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| {
                    SystemTime::now()
                        .duration_since(t)
                        .is_ok_and(|age| age > Duration::from_secs(10))
                }),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a process with this id is running.
pub fn process_alive(pid: &str) -> bool {
    !pid.is_empty()
        && Command::new("sh")
            .args(["-c", "kill -0 \"$1\" 2>/dev/null", "sh", pid])
            .status()
            .is_ok_and(|s| s.success())
}

pub mod broker;
pub mod ledger;
pub mod service;

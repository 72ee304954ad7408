//! The shape of the code, as docs/architecture.md describes it, checked on every build: the
//! top-level modules depend on each other one way only (the pipeline's direction: contract ->
//! route -> render -> deliver -> serve), no two modules inside a stage depend on each other
//! both ways, and the pure core names no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn files(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` (`crate::`, `super::`) in the text.
fn uses<'t>(text: &'t str, prefix: &str) -> BTreeSet<&'t str> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

/// The module a file belongs to at the top level (`route/matcher.rs` -> `route`).
fn top(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .to_owned()
}

/// A cycle in the graph, if there is one, as the modules on it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn top_level_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &all {
        let from = top(rel);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code(text);
        let to = graph.entry(from.clone()).or_default();
        for used in uses(&code, "crate::") {
            if used != from {
                to.insert(used.to_owned());
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_depend_on_each_other_one_way_only() {
    let graph = top_level_graph();
    assert!(graph.len() >= 10, "the source was read: {graph:?}");
    if let Some(c) = cycle(&graph) {
        panic!("an import cycle between modules: {}", c.join(" -> "));
    }
}

#[test]
fn each_stage_uses_only_the_stages_before_it() {
    let graph = top_level_graph();
    // Later stages may use earlier ones, never the other way round.
    let pipeline = [
        "intake", "route", "render", "deliver", "ledger", "serve", "console", "cli",
    ];
    for (i, stage) in pipeline.iter().enumerate() {
        let uses = graph.get(*stage).cloned().unwrap_or_default();
        for later in &pipeline[i + 1..] {
            assert!(
                !uses.contains(*later),
                "{stage} uses {later}, a later stage of the pipeline"
            );
        }
    }
    // The core ties intake, route and render together; it neither delivers nor serves.
    let core = &graph["core"];
    for later in ["deliver", "ledger", "serve", "console", "cli"] {
        assert!(!core.contains(later), "core uses {later}");
    }
}

#[test]
fn no_two_modules_of_a_stage_use_each_other() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &all {
        let Some((stage, file)) = rel.split_once('/') else {
            continue;
        };
        let module = file
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs");
        if module == "mod" {
            continue;
        }
        let code = code(text);
        let mut names: BTreeSet<&str> = uses(&code, "super::");
        names.extend(uses(&code, &format!("crate::{stage}::")));
        let from = format!("{stage}/{module}");
        let to = graph.entry(from.clone()).or_default();
        for used in names {
            let target = format!("{stage}/{used}");
            if target != from && all.iter().any(|(r, _)| r.starts_with(&target)) {
                to.insert(target);
            }
        }
    }
    if let Some(c) = cycle(&graph) {
        panic!("an import cycle inside a stage: {}", c.join(" -> "));
    }
}

#[test]
fn the_pure_core_names_no_io() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let pure = |rel: &str| {
        rel.starts_with("route/")
            || rel.starts_with("sla/")
            || [
                "event.rs",
                "field.rs",
                "notification.rs",
                "directory.rs",
                "intake/mod.rs",
                "intake/message.rs",
                "intake/publishers.rs",
                "intake/asyncapi.rs",
                "render/notify.rs",
                "render/compiled.rs",
                "render/payload.rs",
                "render/helpers.rs",
                "render/escaping.rs",
            ]
            .contains(&rel)
    };
    let io = [
        "tokio",
        "lapin",
        "hyper",
        // lettre's Address is a parsed value; its transports are I/O.
        "lettre::transport",
        "Transport",
        "reqwest",
        "std::fs",
        "std::io",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "to_socket_addrs",
        "std::env",
        "Utc::now",
        "Instant::now",
        "SystemTime",
    ];
    let mut checked = 0;
    for (rel, text) in all.iter().filter(|(rel, _)| pure(rel)) {
        checked += 1;
        let code = code(text);
        for word in io {
            assert!(
                !code.contains(word),
                "{rel} is part of the pure core but names {word}"
            );
        }
    }
    assert!(checked >= 15, "only {checked} files checked");
}

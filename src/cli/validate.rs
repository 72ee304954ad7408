//! `herald validate FILE...`: the publishers' offline check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::core::Core;
use crate::event::EventId;

pub fn run(core: &Core, files: &[PathBuf], as_json: bool) -> ExitCode {
    let mut all_ok = true;
    let mut results = Vec::new();
    for file in files {
        let result = validate(core, file);
        all_ok &= result["valid"] == true;
        if as_json {
            results.push(result);
        } else {
            print_human(file, &result);
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    }
    super::passed(all_ok)
}

fn validate(core: &Core, file: &Path) -> serde_json::Value {
    let name = file.display().to_string();
    match std::fs::read(file) {
        Err(e) => {
            json!({"file": name, "valid": false, "reason": "unreadable", "detail": e.to_string(), "violations": []})
        }
        Ok(body) => match core.intake.accept(&body, EventId::from_content(&body)) {
            Ok(event) => {
                json!({"file": name, "valid": true, "eventType": event.event_type, "version": event.version})
            }
            Err(r) => {
                json!({"file": name, "valid": false, "reason": r.reason, "detail": r.detail, "violations": r.violations})
            }
        },
    }
}

fn print_human(file: &Path, result: &serde_json::Value) {
    let file = file.display();
    if result["valid"] == true {
        println!(
            "ok    {file}  ({} v{})",
            result["eventType"].as_str().unwrap_or_default(),
            result["version"]
        );
        return;
    }
    println!(
        "FAIL  {file}  {}",
        result["reason"].as_str().unwrap_or_default()
    );
    let violations = result["violations"].as_array().filter(|v| !v.is_empty());
    match violations {
        Some(vs) => {
            for v in vs {
                let pointer = v["pointer"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/");
                println!(
                    "      {pointer}: {}",
                    v["message"].as_str().unwrap_or_default()
                );
            }
        }
        None => println!("      {}", result["detail"].as_str().unwrap_or_default()),
    }
}

//! `herald asyncapi`: prints the event contract as an AsyncAPI 3.0 document (docs/asyncapi.json
//! is this), from the schemas, routes.toml's exchange, publishers and limits, and the valid
//! examples, which become the messages' examples.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::core::Core;
use crate::event::EventId;
use crate::intake::asyncapi::{self, Example};

pub fn run(core: &Core) -> ExitCode {
    match document(core) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The document as `herald asyncapi` prints it: pretty JSON ending in a new line.
///
/// String error: one line for the command to print.
pub fn document(core: &Core) -> Result<String, String> {
    let examples = examples(core)?;
    let doc = asyncapi::document(core.intake.schemas(), &core.config, &examples)?;
    serde_json::to_string_pretty(&doc)
        .map(|text| text + "\n")
        .map_err(|e| e.to_string())
}

/// The valid examples, by file name; one that does not validate is an error, as in `herald
/// check`, so the document never shows an event Herald would refuse.
fn examples(core: &Core) -> Result<Vec<Example>, String> {
    let dir = &core.config.paths.examples;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut examples = Vec::new();
    for path in paths {
        let body = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        core.intake
            .accept(&body, EventId::from_content(&body))
            .map_err(|r| format!("{}: example does not validate: {r}", path.display()))?;
        let event =
            serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        examples.push(Example { name, event });
    }
    Ok(examples)
}

//! Rendering: Handlebars templates for email, and the JSON payload for webhooks.
//!
//! Each template is a folder under `templates/` with `subject.hbs`, `text.hbs` and
//! `html.hbs`; `templates/partials/*.hbs` are shared partials. Templates run in strict mode,
//! so a field the event lacks is an error, never an empty string. HTML templates escape every
//! value and may not use the unescaped forms `{{{ }}}` or `{{& }}`.

mod helpers;
pub mod payload;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde_json::Value;

pub use helpers::{uk_date, uk_datetime};

/// The three parts of an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailParts {
    /// One line, never a line break.
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A template folder or file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TemplateError {
    pub path: PathBuf,
    pub message: String,
}

/// The compiled templates.
pub struct Renderer {
    /// Escapes for HTML: used for `html.hbs`.
    html: Handlebars<'static>,
    /// No escaping: subject and plain text.
    plain: Handlebars<'static>,
    names: BTreeSet<String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("templates", &self.names)
            .finish()
    }
}

const PARTS: [&str; 3] = ["subject", "text", "html"];

impl Renderer {
    /// Loads every template folder under `dir`.
    pub fn load(dir: &Path) -> Result<Renderer, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut html = registry(true);
        let mut plain = registry(false);
        let mut names = BTreeSet::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                return Err(vec![TemplateError {
                    path: dir.to_owned(),
                    message: e.to_string(),
                }]);
            }
        };
        let mut folders: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == "partials" {
                load_partials(&folder, &mut html, &mut plain, &mut errors);
                continue;
            }
            for part in PARTS {
                let path = folder.join(format!("{part}.hbs"));
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(TemplateError {
                            path,
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                if part == "html" && (text.contains("{{{") || text.contains("{{&")) {
                    errors.push(TemplateError {
                        path: path.clone(),
                        message: "HTML templates must escape every value: use {{ }}, not {{{ }}} or {{& }}".into(),
                    });
                }
                let target = if part == "html" {
                    &mut html
                } else {
                    &mut plain
                };
                if let Err(e) = target.register_template_string(&format!("{name}/{part}"), text) {
                    errors.push(TemplateError {
                        path,
                        message: e.to_string(),
                    });
                }
            }
            names.insert(name);
        }
        if errors.is_empty() {
            Ok(Renderer { html, plain, names })
        } else {
            Err(errors)
        }
    }

    /// Whether a template of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Renders the email parts of `template` with `context`. The subject is put on one line,
    /// prefixed with the markings (`[CAT A]`).
    pub fn email(
        &self,
        template: &str,
        context: &Value,
        marks: &[String],
    ) -> Result<EmailParts, String> {
        let render = |registry: &Handlebars<'static>, part: &str| {
            registry
                .render(&format!("{template}/{part}"), context)
                .map_err(|e| e.to_string())
        };
        let subject = render(&self.plain, "subject")?;
        let mut line = String::new();
        for mark in marks {
            line.push('[');
            line.push_str(mark);
            line.push_str("] ");
        }
        line.push_str(&one_line(&subject));
        Ok(EmailParts {
            subject: line,
            text: render(&self.plain, "text")?,
            html: render(&self.html, "html")?,
        })
    }
}

fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut r = Handlebars::new();
    r.set_strict_mode(true);
    if !escape_html {
        r.register_escape_fn(handlebars::no_escape);
    }
    helpers::register(&mut r);
    r
}

fn load_partials(
    dir: &Path,
    html: &mut Handlebars<'static>,
    plain: &mut Handlebars<'static>,
    errors: &mut Vec<TemplateError>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".hbs"))
        else {
            continue;
        };
        let result = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                html.register_partial(name, &text)
                    .map_err(|e| e.to_string())?;
                plain
                    .register_partial(name, &text)
                    .map_err(|e| e.to_string())
            });
        if let Err(message) = result {
            errors.push(TemplateError {
                path: path.clone(),
                message,
            });
        }
    }
}

/// Collapses every run of whitespace (line breaks included) into one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_never_break_lines() {
        assert_eq!(
            one_line(" PPO\r\nreceived\tinto  custody \n"),
            "PPO received into custody"
        );
    }
}

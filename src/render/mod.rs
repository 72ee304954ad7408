//! Rendering: Handlebars templates for email, and the JSON payload for webhooks.
//!
//! Each template is a folder under `templates/` with `subject.hbs`, `text.hbs` and
//! `html.hbs`; `templates/partials/*.hbs` are shared partials. Templates run in strict mode,
//! so a field the event lacks is an error, never an empty string. HTML templates escape every
//! value: one that could write a value unescaped is refused at load (see [`escaping`]).
//!
//! A render error is a `String`: Handlebars' own words (the compiled path repeats them
//! exactly, as the property test checks). It ends as `Problem::RenderFailed`'s detail, for the
//! operator, and no caller branches on it.

mod compiled;
pub mod endpoint;
mod escaping;
mod helpers;
mod notify;
pub mod payload;

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;
use std::path::{Path, PathBuf};

use handlebars::{Context, Handlebars};

use compiled::Draft;
pub use compiled::{Data, Facts, RECIPIENT_FIELDS};
pub use helpers::{uk_date, uk_datetime};
pub use notify::{Notification, Routing};

use compiled::Compiled;

/// The three parts of an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailParts {
    /// One line, never a line break: the markings, then at most [`SUBJECT_CHARS`] characters.
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
    /// Subject, text and HTML of each template, compiled where they keep to the steps
    /// `compiled` covers; `None` renders through the registry.
    compiled: HashMap<String, [Option<Compiled>; 3]>,
    /// Render everything through the Handlebars registry (to compare the two).
    handlebars_only: bool,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("templates", &self.names)
            .finish()
    }
}

const PARTS: [&str; 3] = ["subject", "text", "html"];

/// The folder of shared partials inside the templates folder.
const PARTIALS: &str = "partials";

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
        let partials = load_partials(&dir.join(PARTIALS), &mut errors);
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == PARTIALS {
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
                let mut used = BTreeSet::new();
                let expanded = match include_partials(&text, &partials, 0, &mut used) {
                    Ok(t) => t,
                    Err(message) => {
                        errors.push(TemplateError { path, message });
                        continue;
                    }
                };
                let key = format!("{name}/{part}");
                let target = if part == "html" {
                    &mut html
                } else {
                    &mut plain
                };
                if let Err(e) = target.register_template_string(&key, &expanded) {
                    // Where the mistake is written: the template's own text, or a partial.
                    let own = std::iter::once((path.clone(), text.as_str()));
                    let partials_dir = dir.join(PARTIALS);
                    let included = used.iter().filter_map(|name| {
                        let text = partials.get(name)?;
                        Some((partials_dir.join(format!("{name}.hbs")), text.as_str()))
                    });
                    let found = own.chain(included).find_map(|(at, source)| {
                        let e = handlebars::template::Template::compile(source).err()?;
                        let mut message = in_plain_words(&e);
                        if at != path {
                            message.push_str(&format!(" (included by {})", path.display()));
                        }
                        Some(TemplateError { path: at, message })
                    });
                    errors.push(found.unwrap_or_else(|| TemplateError {
                        path: path.clone(),
                        message: format!("with its partials expanded, {}", in_plain_words(&e)),
                    }));
                    continue;
                }
                if part == "html"
                    && let Some(template) = html.get_template(&key)
                    && let Some(finding) = escaping::find(template, true)
                {
                    let sources = Sources {
                        path: &path,
                        text: &text,
                        expanded: expanded != text,
                        partials: &partials,
                        partials_dir: &dir.join(PARTIALS),
                        used: &used,
                    };
                    errors.push(sources.locate(finding));
                }
            }
            names.insert(name);
        }
        if errors.is_empty() {
            let compiled = names
                .iter()
                .map(|name| {
                    let parts = PARTS.map(|part| {
                        let (registry, escape) = if part == "html" {
                            (&html, true)
                        } else {
                            (&plain, false)
                        };
                        registry
                            .get_template(&format!("{name}/{part}"))
                            .and_then(|t| Compiled::new(t, escape))
                    });
                    (name.clone(), parts)
                })
                .collect();
            Ok(Renderer {
                html,
                plain,
                names,
                compiled,
                handlebars_only: false,
            })
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

    /// Renders every template through the Handlebars registry alone, or (the default) each
    /// compiled part by its compiled steps. Both give the same text; this is for comparing.
    pub fn set_handlebars_only(&mut self, on: bool) {
        self.handlebars_only = on;
    }

    /// How many template parts render by compiled steps rather than through the registry.
    pub fn compiled_parts(&self) -> usize {
        self.compiled.values().flatten().flatten().count()
    }

    /// Renders the email parts of `template` with `data`. The subject is put on one line,
    /// prefixed with the markings (`[CAT A]`) and cut to [`SUBJECT_CHARS`] after them.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn email(
        &self,
        template: &str,
        data: &Data<'_>,
        marks: &[String],
    ) -> Result<EmailParts, String> {
        let compiled = self
            .compiled
            .get(template)
            .filter(|_| !self.handlebars_only);
        let mut context: Option<Context> = None;
        let mut render = |registry: &Handlebars<'static>, index: usize| {
            let part = PARTS[index];
            if let Some(Some(steps)) = compiled.map(|c| &c[index]) {
                return steps
                    .render(data)
                    .map_err(|e| format!("{template}/{part}: {e}"));
            }
            let context = context.get_or_insert_with(|| Context::from(data.to_value()));
            registry
                .render_with_context(&format!("{template}/{part}"), context)
                .map_err(|e| e.to_string())
        };
        Ok(EmailParts {
            subject: subject_line(marks, &render(&self.plain, 0)?),
            text: render(&self.plain, 1)?,
            html: render(&self.html, 2)?,
        })
    }

    /// Renders the email parts of `template` with `data` as one JSON object, through the
    /// Handlebars registry: for the weekly digests, whose data is not an event's.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn email_of(
        &self,
        template: &str,
        data: &serde_json::Value,
        marks: &[String],
    ) -> Result<EmailParts, String> {
        let context = Context::from(data.clone());
        let render = |registry: &Handlebars<'static>, part: &str| {
            registry
                .render_with_context(&format!("{template}/{part}"), &context)
                .map_err(|e| e.to_string())
        };
        Ok(EmailParts {
            subject: subject_line(marks, &render(&self.plain, "subject")?),
            text: render(&self.plain, "text")?,
            html: render(&self.html, "html")?,
        })
    }

    /// Renders the email parts of `template` once for every recipient who sees the same
    /// `data` (its `recipient` is not read), for [`EmailDraft::fill`] to complete per
    /// recipient with the same result as [`Renderer::email`]. `None` when a part cannot be
    /// drafted (it is not compiled, or uses the recipient other than as a plain value).
    pub fn email_draft<'r>(
        &'r self,
        template: &'r str,
        data: &Data<'_>,
        marks: &[String],
    ) -> Option<Result<EmailDraft<'r>, String>> {
        let [Some(subject), Some(text), Some(html)] = self
            .compiled
            .get(template)
            .filter(|_| !self.handlebars_only)?
        else {
            return None;
        };
        if ![subject, text, html].iter().all(|c| c.is_draftable()) {
            return None;
        }
        let draft = |part: &Compiled, index: usize| match part.draft(data) {
            Some(Ok(draft)) => Ok(draft),
            Some(Err(e)) => Err(format!("{template}/{}: {e}", PARTS[index])),
            None => Err(format!("{template}/{}: cannot be drafted", PARTS[index])),
        };
        let parts = (|| Ok([draft(subject, 0)?, draft(text, 1)?, draft(html, 2)?]))();
        Some(parts.map(|parts: [Draft; 3]| {
            EmailDraft {
                template,
                marks: subject_line(marks, ""),
                subject: parts[0]
                    .complete()
                    .map(|subject| subject_line(marks, subject)),
                parts,
            }
        }))
    }
}

/// An email rendered once for the recipients of a route who see the same data.
#[derive(Debug)]
pub struct EmailDraft<'r> {
    template: &'r str,
    /// The markings that start the subject (`[CAT A] `).
    marks: String,
    /// The whole subject line, when it does not name the recipient.
    subject: Option<String>,
    parts: [Draft; 3],
}

impl EmailDraft<'_> {
    /// The email for one recipient, given the value of each of its [`RECIPIENT_FIELDS`].
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn fill<'v>(
        &self,
        recipient: impl Fn(&str) -> Option<&'v str> + Copy,
    ) -> Result<EmailParts, String> {
        let fill = |index: usize| {
            self.parts[index]
                .fill(recipient)
                .map_err(|e| format!("{}/{}: {e}", self.template, PARTS[index]))
        };
        let subject = match &self.subject {
            Some(line) => line.clone(),
            None => {
                let subject = fill(0)?;
                let mut line = String::with_capacity(self.marks.len() + subject.len());
                line.push_str(&self.marks);
                push_subject(&subject, &mut line);
                line
            }
        };
        Ok(EmailParts {
            subject,
            text: fill(1)?,
            html: fill(2)?,
        })
    }
}

/// The most characters of a subject after its markings. Event data can make a subject of
/// any length; this keeps the header line far under RFC 5322's 998 characters, and no mail
/// client shows more.
pub const SUBJECT_CHARS: usize = 200;

/// The subject as sent: the markings in brackets, then the subject on one line.
fn subject_line(marks: &[String], subject: &str) -> String {
    let mut line = String::new();
    for mark in marks {
        line.push('[');
        line.push_str(mark);
        line.push_str("] ");
    }
    push_subject(subject, &mut line);
    line
}

/// Writes `subject` on one line (see [`one_line`]) of at most [`SUBJECT_CHARS`] characters:
/// a longer one is cut at a character boundary and ends in `…`.
fn push_subject(subject: &str, out: &mut String) {
    let line = one_line(subject);
    match line.char_indices().nth(SUBJECT_CHARS) {
        None => out.push_str(&line),
        Some(_) => {
            let cut = line
                .char_indices()
                .nth(SUBJECT_CHARS - 1)
                .map_or(line.len(), |(i, _)| i);
            out.push_str(line[..cut].trim_end());
            out.push('…');
        }
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

/// Where an HTML template's text came from, to say which file an unescaped value is in.
struct Sources<'a> {
    path: &'a Path,
    /// The template's own text, before partials are expanded.
    text: &'a str,
    /// Whether expanding partials changed it.
    expanded: bool,
    partials: &'a HashMap<String, String>,
    partials_dir: &'a Path,
    /// The partials it includes.
    used: &'a BTreeSet<String>,
}

impl Sources<'_> {
    /// The error for a finding in the expanded template. Its position is in the expanded
    /// text, so an unescaped value is looked for in the template's own text and then in each
    /// partial it includes, to name the file and the line there; failing that (a value only
    /// formed where pieces join, or a partial left unexpanded) the expanded text's position is
    /// given as such.
    fn locate(&self, finding: escaping::Finding) -> TemplateError {
        if !self.expanded {
            return TemplateError {
                path: self.path.to_owned(),
                message: finding.message(),
            };
        }
        if finding.what == escaping::Unescaped::Value {
            let own = std::iter::once((self.path.to_owned(), self.text));
            let partials = self.used.iter().filter_map(|name| {
                let text = self.partials.get(name)?;
                Some((self.partials_dir.join(format!("{name}.hbs")), text.as_str()))
            });
            for (path, text) in own.chain(partials) {
                let Ok(template) = handlebars::template::Template::compile(text) else {
                    continue;
                };
                if let Some(found) = escaping::find(&template, false) {
                    let mut message = found.message();
                    if path != self.path {
                        message.push_str(&format!(" (included by {})", self.path.display()));
                    }
                    return TemplateError { path, message };
                }
            }
        }
        TemplateError {
            path: self.path.to_owned(),
            message: format!("with its partials expanded, {}", finding.message()),
        }
    }
}

/// A Handlebars syntax error as an operator reads it: where, and what is wrong, without the
/// parser's own vocabulary.
fn in_plain_words(e: &handlebars::TemplateError) -> String {
    use handlebars::TemplateErrorReason as R;
    let what = match e.reason() {
        R::MismatchingClosedHelper(open, close) | R::MismatchingClosedDecorator(open, close) => {
            format!(
                "the block {{{{#{open}}}}} is closed by {{{{/{close}}}}}: close each block with its own name, {{{{/{open}}}}}"
            )
        }
        R::InvalidSyntax(parser) if parser.contains("path_id") => {
            "a field name is missing or cut short here (a path cannot be empty or end in a dot)"
                .to_owned()
        }
        R::InvalidSyntax(parser) if parser.contains("helper_block_end") => {
            "a block opened above ({{#if}}, {{#each}}, {{#unless}}) is not closed by its {{/...}} before here"
                .to_owned()
        }
        R::InvalidSyntax(_) => {
            "this is not valid Handlebars: a {{ is not closed by }}, or a name or helper is written wrongly"
                .to_owned()
        }
        R::InvalidParam(param) => format!("\"{param}\" cannot be given to a helper here"),
        R::NestedSubexpression => "a subexpression inside another is not supported".to_owned(),
        other => other.to_string(),
    };
    match e.pos() {
        Some((line, column)) => format!("line {line}, column {column}: {what}"),
        None => what,
    }
}

/// Reads `partials/*.hbs` (a missing folder means no partials).
fn load_partials(dir: &Path, errors: &mut Vec<TemplateError>) -> HashMap<String, String> {
    let mut partials = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return partials;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".hbs"))
        else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                partials.insert(name.to_owned(), text);
            }
            Err(e) => errors.push(TemplateError {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }
    partials
}

/// Expands `{{> name}}` and `{{#> name}}...{{/name}}` (with `{{> @partial-block}}` in the
/// partial) when templates load. Handlebars would copy the whole render context at every
/// partial on every render; expanding once keeps rendering cheap with the same result.
// String error: a template mistake in words for `herald check`, which adds the file.
fn include_partials(
    text: &str,
    partials: &HashMap<String, String>,
    depth: usize,
    used: &mut BTreeSet<String>,
) -> Result<String, String> {
    const MAX_DEPTH: usize = 8;
    static INLINE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\{\{>\s*([A-Za-z0-9_-]+)\s*\}\}").expect("valid regex"));
    if !text.contains("{{>") && !text.contains("{{#>") {
        return Ok(text.to_owned());
    }
    if depth >= MAX_DEPTH {
        return Err(format!("partials nest deeper than {MAX_DEPTH} levels"));
    }
    let mut find = |name: &str| {
        used.insert(name.to_owned());
        partials
            .get(name)
            .ok_or_else(|| format!("partial \"{name}\" not found in {PARTIALS}/"))
    };

    // Blocks first: the body between {{#> name}} and {{/name}} fills {{> @partial-block}}.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut blocks = false;
    while let Some(open) = rest.find("{{#>") {
        blocks = true;
        out.push_str(&rest[..open]);
        let after = &rest[open + 4..];
        let close = after.find("}}").ok_or("unclosed {{#>")?;
        let name = after[..close].trim();
        let body = after[close + 2..]
            .strip_prefix('\n')
            .unwrap_or(&after[close + 2..]);
        let end_tag = format!("{{{{/{name}}}}}");
        let end = body
            .find(&end_tag)
            .ok_or_else(|| format!("{{{{#> {name}}}}} is not closed by {end_tag}"))?;
        out.push_str(&find(name)?.replace("{{> @partial-block}}", &body[..end]));
        rest = &body[end + end_tag.len()..];
    }
    out.push_str(rest);

    let mut error = None;
    let text = INLINE.replace_all(&out, |c: &regex::Captures<'_>| match find(&c[1]) {
        Ok(p) => p.clone(),
        Err(e) => {
            error.get_or_insert(e);
            String::new()
        }
    });
    // What is left when nothing more expands (`{{~> name}}`, `{{> name arg}}`, ...) stays as
    // it is: the HTML check refuses it, and elsewhere Handlebars reports it at render.
    let unchanged = !blocks && matches!(text, std::borrow::Cow::Borrowed(_));
    match error {
        Some(e) => Err(e),
        None if unchanged => Ok(text.into_owned()),
        None => include_partials(&text, partials, depth + 1, used),
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
    fn partials_are_expanded_once_at_load() {
        let partials: HashMap<String, String> = [
            (
                "layout".to_string(),
                "<body>{{> @partial-block}}</body>".to_string(),
            ),
            ("name".to_string(), "{{> given}} {{family}}".to_string()),
            ("given".to_string(), "{{given}}".to_string()),
            ("loop".to_string(), "{{> loop}}".to_string()),
        ]
        .into();
        let mut used = BTreeSet::new();
        let out = include_partials(
            "{{#> layout}}\nHi {{> name}}{{/layout}}",
            &partials,
            0,
            &mut used,
        )
        .unwrap();
        assert_eq!(out, "<body>Hi {{given}} {{family}}</body>");
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["given", "layout", "name"]
        );
        let expand = |text: &str| include_partials(text, &partials, 0, &mut BTreeSet::new());
        assert!(expand("{{> missing}}").unwrap_err().contains("missing"));
        assert!(expand("{{> loop}}").unwrap_err().contains("deeper"));
        assert!(expand("{{#> layout}}x{{/name}}").is_err());
        // Forms it does not expand are left as they are, not taken for endless nesting.
        assert_eq!(
            expand("{{> name x}}{{~> name}}").unwrap(),
            "{{> name x}}{{~> name}}"
        );
    }

    #[test]
    fn subjects_never_break_lines() {
        assert_eq!(
            one_line(" PPO\r\nreceived\tinto  custody \n"),
            "PPO received into custody"
        );
    }

    #[test]
    fn long_subjects_are_cut_after_the_marks_with_an_ellipsis() {
        let marks = ["CAT A".to_owned(), "SHORT NOTICE".to_owned()];
        let exact = "é".repeat(SUBJECT_CHARS);
        assert_eq!(
            subject_line(&marks, &exact),
            format!("[CAT A] [SHORT NOTICE] {exact}")
        );
        let long = format!("{exact}x");
        let line = subject_line(&marks, &long);
        assert_eq!(
            line,
            format!("[CAT A] [SHORT NOTICE] {}…", "é".repeat(SUBJECT_CHARS - 1))
        );
        // Whitespace is collapsed before counting, and no space is left before the ellipsis.
        let spaced = format!(
            "{}\n\n  b{}",
            "a".repeat(SUBJECT_CHARS - 2),
            "c".repeat(500)
        );
        assert_eq!(
            subject_line(&[], &spaced),
            format!("{}…", "a".repeat(SUBJECT_CHARS - 2))
        );
        let mut out = String::new();
        push_subject(&"🦀 ".repeat(10_000), &mut out);
        assert_eq!(out.chars().count(), SUBJECT_CHARS);
        assert!(out.ends_with("🦀…"), "{out}");
    }
}

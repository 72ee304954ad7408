//! The published JSON Schemas, compiled once: the envelope, and one schema per event
//! type and version (`schemas/events/<eventType>.v<version>.schema.json`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, Retrieve, Uri, ValidationError, Validator};
use serde_json::Value;

use crate::event::EventType;
use crate::field::{FieldPath, Segment};

/// One way an event breaks its schema: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Violation {
    /// JSON pointer to the offending field. For a missing or unknown field it names that
    /// field, e.g. `/additionalInformation/releaseDate`.
    pub pointer: String,
    /// What is wrong, without repeating the value (which may be personal data).
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// A schema file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What a date must be, said when one is refused (`$defs/date` in common.schema.json).
pub const DATE_MESSAGE: &str = "must be a date from 1900-01-01 to 2099-12-31 (YYYY-MM-DD)";

/// What a date-time must be, said when one is refused (`$defs/dateTime`).
pub const DATE_TIME_MESSAGE: &str = "must be a date-time from 1900-01-01 to 2099-12-31 with an offset \
     and seconds 00 to 59, e.g. 2026-11-20T15:42:00Z";

/// The shared definitions whose `pattern` a refusal explains in words: a pattern quoted
/// back would tell a publisher little.
const EXPLAINED: [(&str, &str); 2] = [("date", DATE_MESSAGE), ("dateTime", DATE_TIME_MESSAGE)];

/// Every schema Herald validates against.
pub struct SchemaSet {
    envelope: Validator,
    /// `(event type, version)` -> compiled schema.
    events: HashMap<(EventType, u64), Validator>,
    /// Every known event type with its supported versions, for messages and checks.
    versions: BTreeMap<EventType, Vec<u64>>,
    /// The schema documents by `$id`, and each event schema's `$id`: for finding which field
    /// paths an event type has ([`SchemaSet::has_field`]).
    documents: HashMap<String, Value>,
    event_ids: HashMap<(EventType, u64), String>,
    /// The message for a value that fails one of the [`EXPLAINED`] patterns, by pattern.
    patterns: HashMap<String, &'static str>,
    /// Every file as read, for publishing the contract (`herald asyncapi`).
    sources: Vec<Source>,
}

/// Which of the schema folder's files a document is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SchemaFile {
    /// `common.schema.json`: the shared definitions under `$defs`.
    Common,
    /// `envelope.schema.json`.
    Envelope,
    /// `events/<eventType>.v<version>.schema.json`.
    Event(EventType, u64),
}

/// One schema file as read: which it is and its JSON.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: SchemaFile,
    pub document: Value,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaSet")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

/// Serves the schemas of the folder to `$ref`s by their `$id`; nothing is fetched.
#[derive(Clone)]
struct Local(Arc<HashMap<String, Value>>);

impl Retrieve for Local {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        self.0
            .get(uri.as_str())
            .cloned()
            .ok_or_else(|| format!("{uri} is not one of Herald's schemas").into())
    }
}

impl SchemaSet {
    /// Loads `envelope.schema.json`, `common.schema.json` and `events/*.schema.json` from `dir`.
    pub fn load(dir: &Path) -> Result<SchemaSet, Vec<SchemaError>> {
        let mut errors = Vec::new();
        let mut files = vec![
            dir.join("common.schema.json"),
            dir.join("envelope.schema.json"),
        ];
        let events_dir = dir.join("events");
        match std::fs::read_dir(&events_dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(".schema.json"))
                    .collect();
                paths.sort();
                files.extend(paths);
            }
            Err(source) => errors.push(SchemaError::Read {
                path: events_dir.clone(),
                source,
            }),
        }

        let mut documents = Vec::new();
        for path in files {
            match read_json(&path) {
                Ok(doc) => documents.push((path, doc)),
                Err(e) => errors.push(e),
            }
        }
        let by_id: HashMap<String, Value> = documents
            .iter()
            .filter_map(|(_, doc)| Some((doc.get("$id")?.as_str()?.to_owned(), doc.clone())))
            .collect();
        let local = Local(Arc::new(by_id.clone()));
        let mut event_ids = HashMap::new();
        let patterns = documents
            .iter()
            .filter(|(path, _)| path.ends_with("common.schema.json"))
            .flat_map(|(_, doc)| {
                EXPLAINED.iter().filter_map(|(name, message)| {
                    let pattern = doc["$defs"][name]["pattern"].as_str()?;
                    Some((pattern.to_owned(), *message))
                })
            })
            .collect();

        let mut envelope = None;
        let mut sources = Vec::new();
        let mut events = HashMap::new();
        let mut versions: BTreeMap<EventType, Vec<u64>> = BTreeMap::new();
        for (path, doc) in &documents {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.as_deref().unwrap_or_default();
            if name == "common.schema.json" {
                sources.push(Source {
                    file: SchemaFile::Common,
                    document: doc.clone(),
                });
                continue;
            }
            let validator = match compile(doc, &local) {
                Ok(v) => v,
                Err(message) => {
                    errors.push(SchemaError::Invalid {
                        path: path.clone(),
                        message,
                    });
                    continue;
                }
            };
            if name == "envelope.schema.json" {
                envelope = Some(validator);
                sources.push(Source {
                    file: SchemaFile::Envelope,
                    document: doc.clone(),
                });
                continue;
            }
            let Some((event_type, version)) = parse_event_file_name(name) else {
                errors.push(SchemaError::Invalid {
                    path: path.clone(),
                    message: "event schemas are named <eventType>.v<version>.schema.json".into(),
                });
                continue;
            };
            if doc["properties"]["eventType"]["const"] != event_type
                || doc["properties"]["version"]["const"] != version
            {
                errors.push(SchemaError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "properties.eventType.const and properties.version.const must be \"{event_type}\" and {version}, as the file name says"
                    ),
                });
                continue;
            }
            let event_type = EventType::new(event_type);
            versions
                .entry(event_type.clone())
                .or_default()
                .push(version);
            if let Some(id) = doc.get("$id").and_then(Value::as_str) {
                event_ids.insert((event_type.clone(), version), id.to_owned());
            }
            sources.push(Source {
                file: SchemaFile::Event(event_type.clone(), version),
                document: doc.clone(),
            });
            events.insert((event_type, version), validator);
        }
        match envelope {
            Some(envelope) if errors.is_empty() => Ok(SchemaSet {
                envelope,
                events,
                versions,
                documents: by_id,
                event_ids,
                patterns,
                sources,
            }),
            _ => Err(errors),
        }
    }

    /// The known event type with this name, if any.
    pub fn event_type(&self, name: &str) -> Option<&EventType> {
        self.versions.get_key_value(name).map(|(k, _)| k)
    }

    /// The versions of an event type Herald accepts.
    pub fn versions(&self, event_type: &EventType) -> &[u64] {
        self.versions.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Every schema file as read: the shared definitions, the envelope, then the event
    /// schemas by type and version.
    pub fn sources(&self) -> Vec<&Source> {
        let mut all: Vec<&Source> = self.sources.iter().collect();
        all.sort_by(|a, b| a.file.cmp(&b.file));
        all
    }

    /// Every known event type.
    pub fn event_types(&self) -> impl Iterator<Item = &EventType> {
        self.versions.keys()
    }

    /// Checks the envelope alone (used when the event type cannot be told).
    pub fn check_envelope(&self, doc: &Value) -> Vec<Violation> {
        self.violations(&self.envelope, doc)
    }

    /// Checks a document against its event type's schema; `None` if there is no such schema.
    pub fn check_event(
        &self,
        event_type: &EventType,
        version: u64,
        doc: &Value,
    ) -> Option<Vec<Violation>> {
        let validator = self.events.get(&(event_type.clone(), version))?;
        Some(self.violations(validator, doc))
    }

    fn violations(&self, validator: &Validator, doc: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        if validator.is_valid(doc) {
            return out;
        }
        for error in validator.iter_errors(doc) {
            self.push_violations(&error, &mut out);
        }
        // A value can fail two keywords with the same words (a date's format and pattern).
        let mut seen = HashSet::new();
        out.retain(|v| seen.insert(v.clone()));
        out
    }

    fn push_violations(&self, error: &ValidationError<'_>, out: &mut Vec<Violation>) {
        let at = error.instance_path().as_str();
        match error.kind() {
            ValidationErrorKind::Required { property } => out.push(Violation {
                pointer: child(at, property.as_str().unwrap_or_default()),
                message: "required field is missing".into(),
            }),
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                // The name is the publisher's: repeated only as a bounded excerpt.
                out.extend(unexpected.iter().map(|name| Violation {
                    pointer: child(at, &super::excerpt(name)),
                    message: "unknown field (not in the schema)".into(),
                }))
            }
            ValidationErrorKind::Pattern { pattern } if self.patterns.contains_key(pattern) => out
                .push(Violation {
                    pointer: at.to_owned(),
                    message: self.patterns[pattern].to_owned(),
                }),
            kind => out.push(Violation {
                pointer: at.to_owned(),
                message: describe(kind),
            }),
        }
    }
}

impl SchemaSet {
    /// Whether some version of `event_type` has a field at `path` inside
    /// `additionalInformation`: each segment must be a property the schema declares (through
    /// `$ref`, `allOf`, `anyOf`, `oneOf`, `if`/`then`/`else`), a numeric segment or `[]` an
    /// array's items. What routes.toml names is checked with this, so a misspelt path fails
    /// `herald check` instead of never matching.
    pub fn has_field(&self, event_type: &EventType, path: &FieldPath) -> bool {
        self.versions(event_type).iter().any(|version| {
            let Some(id) = self.event_ids.get(&(event_type.clone(), *version)) else {
                return false;
            };
            let Some(doc) = self.documents.get(id) else {
                return false;
            };
            let mut nodes = Vec::new();
            if let Some(info) = doc.pointer("/properties/additionalInformation") {
                self.expand(info, id, 0, &mut nodes);
            }
            for segment in path.segments() {
                let mut next = Vec::new();
                for (node, base) in &nodes {
                    let child = match segment {
                        Segment::Key(key) => node
                            .get("properties")
                            .and_then(|p| p.get(key.as_str()))
                            .or_else(|| key.parse::<usize>().ok().and_then(|_| node.get("items"))),
                        Segment::Each => node.get("items"),
                    };
                    if let Some(child) = child {
                        self.expand(child, base, 0, &mut next);
                    }
                }
                nodes = next;
            }
            !nodes.is_empty()
        })
    }

    /// For a path `event_type` lacks, the nearest one it has: the first segment that names no
    /// field replaced by a field of the same object spelt alike (`offender.homeBCU` ->
    /// `offender.homeBcu`), if there is one.
    pub fn suggest(&self, event_type: &EventType, path: &FieldPath) -> Option<String> {
        let segments = path.segments();
        let mut text: Vec<String> = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            let Segment::Key(key) = segment else {
                text.push("[]".into());
                continue;
            };
            text.push(key.clone());
            let prefix = FieldPath::parse_each(&dotted(&text)).ok()?;
            if self.has_field(event_type, &prefix) {
                continue;
            }
            text.pop();
            let names = self.fields_at(event_type, &text)?;
            let best = crate::suggest::nearest(key, names.iter().map(String::as_str))?;
            let mut fixed = text.clone();
            fixed.push(best.to_owned());
            for rest in &segments[i + 1..] {
                match rest {
                    Segment::Key(k) => fixed.push(k.clone()),
                    Segment::Each => fixed.push("[]".into()),
                }
            }
            let candidate = dotted(&fixed);
            let parsed = FieldPath::parse_each(&candidate).ok()?;
            return self.has_field(event_type, &parsed).then_some(candidate);
        }
        None
    }

    /// The property names of the object at `prefix` (segments as text, `[]` for items).
    fn fields_at(&self, event_type: &EventType, prefix: &[String]) -> Option<Vec<String>> {
        let mut names = Vec::new();
        for version in self.versions(event_type) {
            let id = self.event_ids.get(&(event_type.clone(), *version))?;
            let doc = self.documents.get(id)?;
            let mut nodes = Vec::new();
            self.expand(
                doc.pointer("/properties/additionalInformation")?,
                id,
                0,
                &mut nodes,
            );
            for segment in prefix {
                let mut next = Vec::new();
                for (node, base) in &nodes {
                    let child = if segment == "[]" {
                        node.get("items")
                    } else {
                        node.get("properties").and_then(|p| p.get(segment.as_str()))
                    };
                    if let Some(child) = child {
                        self.expand(child, base, 0, &mut next);
                    }
                }
                nodes = next;
            }
            for (node, _) in nodes {
                if let Some(props) = node.get("properties").and_then(Value::as_object) {
                    names.extend(props.keys().cloned());
                }
            }
        }
        names.sort();
        names.dedup();
        Some(names)
    }

    /// A schema and every subschema that applies to the same value, each with the `$id` its
    /// references resolve against.
    fn expand<'s>(
        &'s self,
        node: &'s Value,
        base: &str,
        depth: usize,
        out: &mut Vec<(&'s Value, String)>,
    ) {
        // Deep enough for any schema Herald ships; a reference cycle stops here.
        const MAX_DEPTH: usize = 16;
        if depth > MAX_DEPTH || !node.is_object() {
            return;
        }
        out.push((node, base.to_owned()));
        if let Some((target, target_base)) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(base, r))
        {
            self.expand(target, &target_base, depth + 1, out);
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for sub in node
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.expand(sub, base, depth + 1, out);
            }
        }
        for key in ["then", "else"] {
            if let Some(sub) = node.get(key) {
                self.expand(sub, base, depth + 1, out);
            }
        }
    }

    /// The schema a `$ref` names, from the documents Herald loaded.
    fn resolve(&self, base: &str, reference: &str) -> Option<(&Value, String)> {
        let url = url::Url::parse(base).ok()?.join(reference).ok()?;
        let fragment = url.fragment().unwrap_or_default().to_owned();
        let mut document = url;
        document.set_fragment(None);
        let doc = self.documents.get(document.as_str())?;
        let target = if fragment.is_empty() {
            doc
        } else {
            doc.pointer(&fragment)?
        };
        Some((target, document.to_string()))
    }
}

/// Segments as a dotted path: `["offences", "[]", "description"]` -> `offences[].description`.
fn dotted(parts: &[String]) -> String {
    let mut text = String::new();
    for s in parts {
        if s != "[]" && !text.is_empty() {
            text.push('.');
        }
        text.push_str(s);
    }
    text
}

fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let text = std::fs::read(path).map_err(|source| SchemaError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| SchemaError::Json {
        path: path.to_owned(),
        source,
    })
}

// String error: words for `herald check` and start-up, which name the schema file.
fn compile(doc: &Value, local: &Local) -> Result<Validator, String> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .with_retriever(local.clone())
        .build(doc)
        .map_err(|e| e.to_string())
}

/// `court.warrant.issued.v1.schema.json` -> `("court.warrant.issued", 1)`.
fn parse_event_file_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".schema.json")?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    Some((event_type, version.parse().ok()?))
}

/// The pointer of a property under `parent`, escaped per RFC 6901.
fn child(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// A message for a failed keyword that never quotes the offending value.
fn describe(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Type { kind } => match kind {
            jsonschema::error::TypeKind::Single(t) => format!("must be of type {t}"),
            jsonschema::error::TypeKind::Multiple(_) => "has the wrong type".into(),
        },
        K::Enum { options } => {
            let options = options.as_array().map_or_else(Vec::new, |a| {
                a.iter().map(Value::to_string).collect::<Vec<_>>()
            });
            format!("must be one of {}", options.join(", "))
        }
        K::Constant { expected_value } => format!("must be {expected_value}"),
        K::Pattern { pattern } => format!("does not match the pattern {pattern}"),
        K::Format { format } => match format.as_str() {
            "date" => DATE_MESSAGE.into(),
            "date-time" => DATE_TIME_MESSAGE.into(),
            other => format!("is not a valid {other}"),
        },
        K::MinItems { limit } => format!("must have at least {limit} item(s)"),
        K::MaxItems { limit } => format!("must have at most {limit} item(s)"),
        K::MinLength { limit } => format!("must be at least {limit} character(s) long"),
        K::MaxLength { limit } => format!("must be at most {limit} character(s) long"),
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::AnyOf { .. } | K::OneOfNotValid { .. } => "matches none of the allowed forms".into(),
        // The one `contains` in the schemas: the register's events need the NOMS number.
        K::Contains => "must include an identifier of the required type (NOMS)".into(),
        other => format!("fails the schema rule `{}`", other.keyword()),
    }
}

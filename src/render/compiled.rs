//! Templates turned into a short list of steps when they load, for rendering without the
//! Handlebars interpreter.
//!
//! Handlebars parses every template. When a parsed template keeps to text, values
//! (`{{info.court.name}}`, `{{{raw}}}`), Herald's helpers (`uk_date`, `uk_datetime`, `join`)
//! with path or literal arguments, `#if`/`#unless`/`else` on a value or on `(present path)`,
//! and `#each` over `this`-relative paths, it is also compiled here into [`Compiled`], and
//! rendering walks those steps against the template data directly: no copy of the data, no
//! path parsing, no block context. Anything else (`@index`, `../`, `@root`, other
//! subexpressions, hash arguments, other helpers, decorators) leaves the template to the
//! Handlebars registry. Both give the same text in strict mode:
//! tests render every shipped template both ways on every example and on altered events.

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

use super::helpers::{HERALD_HELPERS, join, uk_date, uk_datetime};

/// The names a template sees at the top level besides `info` and `recipient`.
pub trait Facts {
    fn get(&self, name: &str) -> Option<&Value>;
    /// All of them as one JSON object, for the Handlebars registry.
    fn to_map(&self) -> Map<String, Value>;
}

impl Facts for Map<String, Value> {
    fn get(&self, name: &str) -> Option<&Value> {
        Map::get(self, name)
    }

    fn to_map(&self) -> Map<String, Value> {
        self.clone()
    }
}

/// What a template sees. `info` and `recipient` are looked up here; every other top-level
/// name in `facts`.
#[derive(Clone, Copy)]
pub struct Data<'a> {
    pub facts: &'a dyn Facts,
    pub recipient: &'a Value,
    pub info: &'a Value,
}

impl Data<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        match name {
            "info" => Some(self.info),
            "recipient" => Some(self.recipient),
            _ => self.facts.get(name),
        }
    }

    /// The same data as one JSON object, for the Handlebars registry.
    pub fn to_value(&self) -> Value {
        let mut all = self.facts.to_map();
        all.insert("info".into(), self.info.clone());
        all.insert("recipient".into(), self.recipient.clone());
        Value::Object(all)
    }
}

/// Handlebars' own helpers: written alone (`{{len}}`) such a name is a call, not a value
/// lookup, so a template using one is left to the registry (as one naming Herald's is).
const HANDLEBARS_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// A compiled template.
#[derive(Debug)]
pub struct Compiled {
    steps: Vec<Step>,
    /// Whether the template names the recipient only as `{{recipient.id}}`, `.name` or
    /// `.class` (never in a condition, a helper or a loop), so it can be drafted once for
    /// several recipients.
    draftable: bool,
    /// The longest output so far (a guess from the template at first): the output is
    /// allocated once at this size instead of growing step by step.
    size: AtomicUsize,
}

#[derive(Debug)]
enum Step {
    Text(String),
    Value {
        at: Lookup,
        escape: bool,
    },
    /// `{{recipient.id}}`, `{{recipient.name}}` or `{{recipient.class}}` outside `#each`: a
    /// gap in a [`Draft`].
    Recipient {
        at: Lookup,
        field: &'static str,
        escape: bool,
    },
    Call {
        helper: HelperName,
        args: Vec<Arg>,
        escape: bool,
    },
    If {
        at: Condition,
        /// `false` for `#unless`.
        when: bool,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    Each {
        at: Lookup,
        body: Vec<Step>,
        otherwise: Option<Vec<Step>>,
    },
}

#[derive(Debug, Clone, Copy)]
enum HelperName {
    UkDate,
    UkDateTime,
    Join,
}

impl HelperName {
    fn as_str(self) -> &'static str {
        match self {
            HelperName::UkDate => "uk_date",
            HelperName::UkDateTime => "uk_datetime",
            HelperName::Join => "join",
        }
    }
}

#[derive(Debug)]
enum Arg {
    Path(Lookup),
    Literal(Value),
}

/// What `#if` and `#unless` test.
#[derive(Debug)]
enum Condition {
    /// The value's truth, as Handlebars reads it.
    Value(Arg),
    /// `(present path)`: whether the field is there, whatever its value.
    Present(Lookup),
}

/// A path relative to the current value (the template data at the top, the item inside
/// `#each`), or one of `#each`'s own values: `@index`, `@first`, `@last`, `@key`.
#[derive(Debug)]
struct Lookup {
    segments: Vec<String>,
    local: Option<Local>,
    raw: String,
}

#[derive(Debug, Clone, Copy)]
enum Local {
    Index,
    First,
    Last,
    Key,
}

/// The item `#each` is on.
#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    value: &'a Value,
    index: usize,
    len: usize,
    key: Option<&'a str>,
}

impl Compiled {
    /// Compiles a parsed template; `None` when it uses something only Handlebars renders.
    /// `escape` is whether `{{ }}` escapes for HTML in this template's registry.
    pub fn new(template: &Template, escape: bool) -> Option<Compiled> {
        let steps = steps(template, escape, false)?;
        let draftable = !names_recipient(&steps);
        let text: usize = template
            .elements
            .iter()
            .map(|e| match e {
                TemplateElement::RawString(s) => s.len(),
                _ => 16,
            })
            .sum();
        Some(Compiled {
            steps,
            draftable,
            size: AtomicUsize::new(text + text / 4 + 64),
        })
    }

    /// Renders with `data`; an error names the field a strict render could not find.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn render(&self, data: &Data<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.size.load(Ordering::Relaxed));
        render(&self.steps, data, None, &mut out, &mut None)?;
        self.size.fetch_max(out.len(), Ordering::Relaxed);
        Ok(out)
    }

    /// Whether [`Compiled::draft`] can render this template.
    pub fn is_draftable(&self) -> bool {
        self.draftable
    }

    /// Renders with `data` leaving a gap wherever the recipient is named, for
    /// [`Draft::fill`] to complete per recipient (`data.recipient` is not read). `None` when
    /// the template uses the recipient in a way a gap cannot stand for.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn draft(&self, data: &Data<'_>) -> Option<Result<Draft, String>> {
        if !self.draftable {
            return None;
        }
        let mut text = String::with_capacity(self.size.load(Ordering::Relaxed));
        let mut gaps = Some(Vec::new());
        let rendered = render(&self.steps, data, None, &mut text, &mut gaps);
        self.size.fetch_max(text.len(), Ordering::Relaxed);
        Some(rendered.map(|()| Draft {
            text,
            gaps: gaps.unwrap_or_default(),
        }))
    }
}

/// A template rendered once for every recipient who sees the same data, with a gap at
/// each place it names the recipient.
#[derive(Debug)]
pub struct Draft {
    text: String,
    gaps: Vec<Gap>,
}

#[derive(Debug)]
struct Gap {
    /// Byte offset in the draft's text.
    at: usize,
    field: &'static str,
    escape: bool,
    /// The path as written, for the error when the recipient lacks the field.
    raw: String,
}

impl Draft {
    /// The text for one recipient, given the value of each of its [`RECIPIENT_FIELDS`]: the
    /// same as rendering with them as `recipient` in the data.
    // String error: Handlebars' own words (see the note at the top of render/mod.rs).
    pub fn fill<'v>(&self, recipient: impl Fn(&str) -> Option<&'v str>) -> Result<String, String> {
        let mut out = String::with_capacity(self.text.len() + 32 * self.gaps.len());
        let mut from = 0;
        for gap in &self.gaps {
            out.push_str(&self.text[from..gap.at]);
            match recipient(gap.field) {
                Some(v) => write(v, gap.escape, &mut out),
                None => return Err(missing(&gap.raw)),
            }
            from = gap.at;
        }
        out.push_str(&self.text[from..]);
        Ok(out)
    }

    /// The text, when it is the same for every recipient.
    pub fn complete(&self) -> Option<&str> {
        self.gaps.is_empty().then_some(self.text.as_str())
    }
}

/// The fields of `recipient` a draft leaves a gap for: the recipient's id, display name
/// and class, all text.
pub const RECIPIENT_FIELDS: [&str; 3] = ["id", "name", "class"];

/// Whether any step outside a gap looks the recipient up at the top level.
fn names_recipient(steps: &[Step]) -> bool {
    let top =
        |at: &Lookup| at.local.is_none() && at.segments.first().is_some_and(|s| s == "recipient");
    let arg = |a: &Arg| matches!(a, Arg::Path(at) if top(at));
    steps.iter().any(|step| match step {
        Step::Text(_) | Step::Recipient { .. } => false,
        Step::Value { at, .. } => top(at),
        Step::Call { args, .. } => args.iter().any(arg),
        Step::If {
            at,
            then,
            otherwise,
            ..
        } => {
            let tested = match at {
                Condition::Value(a) => arg(a),
                Condition::Present(at) => top(at),
            };
            tested || names_recipient(then) || names_recipient(otherwise)
        }
        // Inside the loop paths start from the item, so only the list itself counts; `{{else}}`
        // runs where the loop stands.
        Step::Each { at, otherwise, .. } => {
            top(at) || otherwise.as_deref().is_some_and(names_recipient)
        }
    })
}

fn steps(template: &Template, escape: bool, in_each: bool) -> Option<Vec<Step>> {
    let mut steps = Vec::with_capacity(template.elements.len());
    for element in &template.elements {
        match element {
            TemplateElement::RawString(text) => steps.push(Step::Text(text.clone())),
            TemplateElement::Comment(_) => {}
            TemplateElement::Expression(h) => steps.push(expression(h, escape, in_each)?),
            TemplateElement::HtmlExpression(h) => steps.push(expression(h, false, in_each)?),
            TemplateElement::HelperBlock(h) => steps.push(block(h, escape, in_each)?),
            _ => return None,
        }
    }
    Some(steps)
}

fn expression(h: &HelperTemplate, escape: bool, in_each: bool) -> Option<Step> {
    if !h.hash.is_empty() || h.block_param.is_some() || h.block {
        return None;
    }
    if h.params.is_empty() {
        let Parameter::Path(path) = &h.name else {
            return None;
        };
        let at = lookup(path, in_each)?;
        let alone = at.segments.len() == 1;
        let name = at.segments.first().map_or("", String::as_str);
        if alone && (HANDLEBARS_HELPERS.contains(&name) || HERALD_HELPERS.contains(&name)) {
            return None;
        }
        if let (false, None, [first, field]) = (in_each, at.local, at.segments.as_slice())
            && first == "recipient"
            && let Some(field) = RECIPIENT_FIELDS.into_iter().find(|f| f == field)
        {
            return Some(Step::Recipient { at, field, escape });
        }
        return Some(Step::Value { at, escape });
    }
    let helper = match name(&h.name)? {
        "uk_date" => HelperName::UkDate,
        "uk_datetime" => HelperName::UkDateTime,
        "join" => HelperName::Join,
        _ => return None,
    };
    let args = h
        .params
        .iter()
        .map(|p| arg(p, in_each))
        .collect::<Option<Vec<_>>>()?;
    Some(Step::Call {
        helper,
        args,
        escape,
    })
}

fn block(h: &HelperTemplate, escape: bool, in_each: bool) -> Option<Step> {
    if !h.hash.is_empty() || h.block_param.is_some() || h.params.len() != 1 {
        return None;
    }
    let inner = |t: &Option<Template>, in_each| match t {
        Some(t) => steps(t, escape, in_each),
        None => Some(Vec::new()),
    };
    match name(&h.name)? {
        name @ ("if" | "unless") => Some(Step::If {
            at: condition(&h.params[0], in_each)?,
            when: name == "if",
            then: inner(&h.template, in_each)?,
            otherwise: inner(&h.inverse, in_each)?,
        }),
        "each" => {
            let Parameter::Path(path) = &h.params[0] else {
                return None;
            };
            Some(Step::Each {
                at: lookup(path, in_each)?,
                body: inner(&h.template, true)?,
                otherwise: match &h.inverse {
                    Some(t) => Some(steps(t, escape, in_each)?),
                    None => None,
                },
            })
        }
        _ => None,
    }
}

fn name(p: &Parameter) -> Option<&str> {
    match p {
        Parameter::Name(n) => Some(n),
        Parameter::Path(Path::Relative((segments, raw))) if segments.len() == 1 => Some(raw),
        _ => None,
    }
}

fn arg(p: &Parameter, in_each: bool) -> Option<Arg> {
    match p {
        Parameter::Path(path) => lookup(path, in_each).map(Arg::Path),
        Parameter::Literal(v) => Some(Arg::Literal(v.clone())),
        _ => None,
    }
}

/// A value, or the one subexpression compiled: `(present path)`.
fn condition(p: &Parameter, in_each: bool) -> Option<Condition> {
    let Parameter::Subexpression(sub) = p else {
        return arg(p, in_each).map(Condition::Value);
    };
    let TemplateElement::Expression(h) = sub.as_element() else {
        return None;
    };
    if name(&h.name)? != "present" || !h.hash.is_empty() || h.params.len() != 1 {
        return None;
    }
    let Parameter::Path(path) = &h.params[0] else {
        return None;
    };
    lookup(path, in_each).map(Condition::Present)
}

/// Plain names (`a.b.c`, `this`, `this.a`) and, inside `#each`, its `@index`, `@first`,
/// `@last` and `@key`: `../`, `@root` and the like are left to Handlebars. `this` alone is only
/// meaningful inside `#each` here.
fn lookup(path: &Path, in_each: bool) -> Option<Lookup> {
    let (segments, raw) = match path {
        Path::Relative((segments, raw)) => (segments, raw),
        Path::Local((0, name, raw)) if in_each => {
            let local = match name.as_str() {
                "index" => Local::Index,
                "first" => Local::First,
                "last" => Local::Last,
                "key" => Local::Key,
                _ => return None,
            };
            return Some(Lookup {
                segments: Vec::new(),
                local: Some(local),
                raw: raw.clone(),
            });
        }
        Path::Local(_) => return None,
    };
    let segments = segments
        .iter()
        .map(|s| match s {
            PathSeg::Named(n) => Some(n.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    if segments.is_empty() && !in_each {
        return None;
    }
    Some(Lookup {
        segments,
        local: None,
        raw: raw.clone(),
    })
}

/// Looks a path up from the current item, or from the data at the top. `Ok(None)` is a
/// missing value; an error is a name used as an index into a list, as Handlebars reports it.
fn find<'a>(
    at: &Lookup,
    data: &'a Data<'a>,
    item: Option<Item<'a>>,
) -> Result<Option<Cow<'a, Value>>, String> {
    if let Some(local) = at.local {
        let Some(item) = item else {
            return Ok(None);
        };
        return Ok(match local {
            Local::Index => Some(Cow::Owned(Value::from(item.index))),
            Local::First => Some(Cow::Owned(Value::Bool(item.index == 0))),
            Local::Last => Some(Cow::Owned(Value::Bool(item.index + 1 == item.len))),
            Local::Key => item.key.map(|k| Cow::Owned(Value::String(k.to_owned()))),
        });
    }
    let mut segments = at.segments.iter();
    let mut value = match item {
        Some(item) => item.value,
        None => match segments.next().and_then(|first| data.get(first)) {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    for segment in segments {
        value = match value {
            Value::Object(map) => match map.get(segment) {
                Some(v) => v,
                None => return Ok(None),
            },
            Value::Array(list) => match segment.parse::<usize>() {
                Ok(i) => match list.get(i) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                Err(_) => return Err(format!("{}: \"{segment}\" is not a list index", at.raw)),
            },
            _ => return Ok(None),
        };
    }
    Ok(Some(Cow::Borrowed(value)))
}

/// Renders `steps` into `out`; with `gaps`, each recipient step is left as a gap there.
// String error: Handlebars' own words (see the note at the top of render/mod.rs).
fn render<'a>(
    steps: &'a [Step],
    data: &'a Data<'a>,
    item: Option<Item<'a>>,
    out: &mut String,
    gaps: &mut Option<Vec<Gap>>,
) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Text(text) => out.push_str(text),
            Step::Recipient { at, field, escape } if gaps.is_some() => {
                if let Some(gaps) = gaps {
                    gaps.push(Gap {
                        at: out.len(),
                        field,
                        escape: *escape,
                        raw: at.raw.clone(),
                    });
                }
            }
            // Outside a draft, a recipient step is a value like any other.
            Step::Value { at, escape } | Step::Recipient { at, escape, .. } => {
                match find(at, data, item)? {
                    Some(v) => write_value(&v, *escape, out),
                    None => return Err(missing(&at.raw)),
                }
            }
            Step::Call {
                helper,
                args,
                escape,
            } => {
                let text = call(*helper, args, data, item)?;
                write(&text, *escape, out);
            }
            Step::If {
                at,
                when,
                then,
                otherwise,
            } => {
                let truthy = match at {
                    Condition::Value(Arg::Path(at)) => {
                        find(at, data, item)?.is_some_and(|v| truthy(&v))
                    }
                    Condition::Value(Arg::Literal(v)) => truthy(v),
                    Condition::Present(at) => find(at, data, item)?.is_some(),
                };
                let branch = if truthy == *when { then } else { otherwise };
                render(branch, data, item, out, gaps)?;
            }
            Step::Each {
                at,
                body,
                otherwise,
            } => {
                let found = find(at, data, item)?;
                let each =
                    |list: &mut dyn ExactSizeIterator<Item = (Option<&'a str>, &'a Value)>,
                     out: &mut String,
                     gaps: &mut Option<Vec<Gap>>| {
                        let len = list.len();
                        for (index, (key, value)) in list.enumerate() {
                            let item = Item {
                                value,
                                index,
                                len,
                                key,
                            };
                            render(body, data, Some(item), out, gaps)?;
                        }
                        Ok::<(), String>(())
                    };
                match (found, otherwise) {
                    (Some(Cow::Borrowed(Value::Array(list))), otherwise)
                        if !list.is_empty() || otherwise.is_none() =>
                    {
                        each(&mut list.iter().map(|v| (None, v)), out, gaps)?;
                    }
                    (Some(Cow::Borrowed(Value::Object(map))), otherwise)
                        if !map.is_empty() || otherwise.is_none() =>
                    {
                        each(
                            &mut map.iter().map(|(k, v)| (Some(k.as_str()), v)),
                            out,
                            gaps,
                        )?;
                    }
                    (_, Some(otherwise)) => render(otherwise, data, item, out, gaps)?,
                    (_, None) => {
                        return Err(format!("field {} is missing or not a list", at.raw));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The error of a strict render for a value the data lacks.
fn missing(path: &str) -> String {
    format!("field {path} is missing from the event")
}

/// Herald's helpers, with the same answers and the same errors as their Handlebars forms.
// String error: Handlebars' own words (see the note at the top of render/mod.rs).
fn call<'a>(
    helper: HelperName,
    args: &'a [Arg],
    data: &'a Data<'a>,
    item: Option<Item<'a>>,
) -> Result<String, String> {
    let name = helper.as_str();
    let Some(first) = args.first() else {
        return Err(match helper {
            HelperName::Join => "join needs a list".to_owned(),
            _ => format!("{name} needs a field"),
        });
    };
    let (value, field) = match first {
        Arg::Path(at) => (find(at, data, item)?, at.raw.as_str()),
        Arg::Literal(v) => (Some(Cow::Borrowed(v)), "the field"),
    };
    let Some(value) = value else {
        return Err(format!("{name}: field {field} is missing from the event"));
    };
    match helper {
        HelperName::UkDate => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("uk_date: field {field} is not a date"))?;
            uk_date(text).ok_or_else(|| "uk_date: not a date or date-time".to_owned())
        }
        HelperName::UkDateTime => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("uk_datetime: field {field} is not a date"))?;
            uk_datetime(text).ok_or_else(|| "uk_datetime: not a date-time".to_owned())
        }
        HelperName::Join => {
            let items = value
                .as_array()
                .ok_or_else(|| format!("join: field {field} is not a list"))?;
            let separator = match args.get(1) {
                Some(Arg::Literal(v)) => v.as_str().map(str::to_owned),
                Some(Arg::Path(at)) => find(at, data, item)?
                    .as_deref()
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                None => None,
            }
            .unwrap_or_else(|| ", ".to_owned());
            Ok(join(items, &separator))
        }
    }
}

/// Handlebars' truth: `false`, `null`, `0`, `""`, `[]` and `{}` are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(f64::is_normal),
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as Handlebars prints it.
fn write_value(v: &Value, escape: bool, out: &mut String) {
    match v {
        Value::String(s) => write(s, escape, out),
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Array(_) | Value::Object(_) => {
            write(&handlebars::JsonRender::render(v), escape, out)
        }
    }
}

/// The characters Handlebars escapes for HTML, escaped the same way.
fn write(text: &str, escape: bool, out: &mut String) {
    // Handlebars' own escape, so both ways of rendering escape alike; most values have nothing
    // to escape and are copied as they are.
    const SPECIAL: &[u8] = b"<>\"&'`=";
    if escape && text.bytes().any(|b| SPECIAL.contains(&b)) {
        out.push_str(&handlebars::html_escape(text));
    } else {
        out.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handlebars::{Context, Handlebars};
    use proptest::prelude::*;
    use serde_json::json;

    /// Renders `source` both ways with `data` and asserts the same text or both an error;
    /// `None` when it does not compile.
    fn both(source: &str, data: &Value, escape: bool) -> Option<()> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        if !escape {
            registry.register_escape_fn(handlebars::no_escape);
        }
        super::super::helpers::register(&mut registry);
        registry.register_template_string("t", source).ok()?;
        let compiled = Compiled::new(registry.get_template("t")?, escape)?;
        let facts = data.as_object().cloned().unwrap_or_default();
        let data_view = Data {
            facts: &facts,
            recipient: data.get("recipient").unwrap_or(&Value::Null),
            info: data.get("info").unwrap_or(&Value::Null),
        };
        let ours = compiled.render(&data_view);
        let theirs = registry.render_with_context("t", &Context::from(data_view.to_value()));
        // A draft, filled in for the recipient, gives the same text or the same refusal.
        if let Some(draft) = compiled.draft(&Data {
            recipient: &Value::Null,
            ..data_view
        }) {
            let filled =
                draft.and_then(|d| d.fill(|f| data_view.recipient.get(f).and_then(Value::as_str)));
            assert_eq!(filled, ours, "draft of {source:?} with {data}");
        }
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "template {source:?} with {data}"),
            (Err(_), Err(_)) => {}
            _ => panic!("template {source:?} with {data}: ours {ours:?}, Handlebars {theirs:?}"),
        }
        Some(())
    }

    #[test]
    fn renders_as_handlebars_does() {
        let data = json!({
            "info": {
                "name": {"given": "Ann <\"O'Neil\"> & =`", "family": "Smith"},
                "list": ["a", "b<", 3, null],
                "empty": [],
                "zero": 0,
                "num": 2.5,
                "yes": true,
                "none": null,
                "obj": {"k": "v", "w": "x"},
                "date": "2026-12-15",
                "at": "2026-07-01T23:30:00Z"
            },
            "recipient": {"id": "police:WYP-LEEDS", "name": "Leeds <PPO> & 'unit'", "class": "police"},
            "marks": ["CAT A", "SHORT NOTICE"],
            "sla": {"rule": "within 24h", "due": "2026-11-13T12:35:00Z"}
        });
        let templates = [
            "Dear {{recipient.name}}, {{info.name.given}} {{info.name.family}}\n",
            "{{recipient.id}} <{{recipient.name}}> {{{recipient.name}}}{{recipient.class}}",
            "{{#if info.yes}}{{recipient.name}}{{/if}}{{#each marks}}{{recipient.name}}{{/each}}",
            "{{#if recipient.name}}{{recipient.name}}{{/if}} {{uk_date recipient.name}}",
            "{{recipient.missing}}",
            "{{#each info.empty}}x{{else}}{{#if recipient.name}}{{recipient.name}}{{/if}}{{/each}}",
            "{{#each info.empty}}x{{else}}<{{recipient.name}}>{{recipient}}{{/each}}",
            "{{info.missing}} {{recipient.name}}",
            "{{{info.name.given}}} {{info.num}} {{info.yes}} {{info.none}} {{info.list}} {{info.obj}}",
            "{{info.list.1}} {{info.list.9}}",
            "{{uk_date info.date}} / {{uk_date info.at}} / {{uk_datetime info.at}}",
            "{{join info.list \"; \"}}|{{join info.list}}|{{join info.empty}}",
            "{{#if info.zero}}z{{else}}no z{{/if}}{{#unless info.empty}}empty{{/unless}}",
            "{{#if info.missing}}x{{else if info.yes}}y{{else}}z{{/if}}",
            "{{#each marks}}\n*** {{this}} ***\n{{/each}}\nafter\n",
            "{{#each info.obj}}[{{this}}]{{/each}}{{#each info.empty}}x{{else}}none{{/each}}",
            "{{#each info.list}}{{@index}}:{{#if @first}}first {{/if}}{{this}}{{#unless @last}}; {{/unless}}{{/each}}",
            "{{#each info.obj}}{{@key}}={{this}} {{#if @index}}not first{{/if}}{{/each}}",
            "{{#each info.list}}{{@key}}{{/each}}",
            "{{#if sla}}\nService: {{sla.rule}}, due {{uk_datetime sla.due}}\n{{/if}}\n",
            "  {{#if info.yes}}  \n  indented\n  {{/if}}  \nend {{!-- a comment --}}",
            "{{~info.name.given~}}   {{info.name.family}}",
            "{{info.missing}}",
            "{{info.name.given.deeper}}",
            "{{info.list.x}}",
            "{{uk_date info.missing}}",
            "{{uk_date info.num}}",
            "{{uk_date info.name.given}}",
            "{{join info.obj}}",
            "{{#each info.missing}}x{{/each}}",
            "{{#each info.yes}}x{{/each}}",
            "{{#each info.missing}}x{{else}}no list{{/each}}",
        ];
        for source in templates {
            for escape in [true, false] {
                assert!(
                    both(source, &data, escape).is_some(),
                    "{source:?} should compile"
                );
            }
        }
    }

    #[test]
    fn drafts_only_where_a_gap_can_stand_for_the_recipient() {
        let compile = |source: &str| {
            let mut registry = Handlebars::new();
            registry.register_template_string("t", source).unwrap();
            Compiled::new(registry.get_template("t").unwrap(), true).unwrap()
        };
        for source in [
            "Dear {{recipient.name}} ({{recipient.id}}, {{recipient.class}})",
            "{{#each info.list}}x{{else}}Dear {{recipient.name}}{{/each}}",
            "{{#each info.list}}{{recipient.name}}{{/each}}",
            "no recipient",
        ] {
            assert!(compile(source).is_draftable(), "{source:?}");
        }
        for source in [
            "{{#each info.list}}x{{else}}{{#if recipient.name}}y{{/if}}{{/each}}",
            "{{#if recipient.name}}x{{/if}}",
            "{{uk_date recipient.id}}",
            "{{#each recipient}}x{{/each}}",
            "{{recipient.email}}",
            "{{recipient}}",
        ] {
            assert!(!compile(source).is_draftable(), "{source:?}");
        }
        let facts = Map::new();
        let info = json!({"a": "1 < 2"});
        let data = Data {
            facts: &facts,
            recipient: &Value::Null,
            info: &info,
        };
        let draft = compile("{{recipient.name}}: {{info.a}}, {{recipient.id}}")
            .draft(&data)
            .unwrap()
            .unwrap();
        let fields = |f: &str| match f {
            "id" => Some("x"),
            "name" => Some("A & B"),
            _ => None,
        };
        assert_eq!(draft.fill(fields).unwrap(), "A &amp; B: 1 &lt; 2, x");
        assert_eq!(
            draft.fill(|f| (f == "name").then_some("A")).unwrap_err(),
            "field recipient.id is missing from the event"
        );
    }

    #[test]
    fn leaves_what_it_does_not_cover_to_handlebars() {
        let data = json!({"info": {"a": [1, 2]}, "recipient": {}});
        for source in [
            "{{@index}}",
            "{{#each info.a}}{{@../index}}{{/each}}",
            "{{#each info.a}}{{../info}}{{/each}}",
            "{{@root.info}}",
            "{{lookup info.a 0}}",
            "{{#with info}}{{a}}{{/with}}",
            "{{uk_date (lookup info.a 0)}}",
            "{{#if info.a includeZero=true}}x{{/if}}",
            "{{len}}",
            "{{this}}",
        ] {
            assert!(both(source, &data, true).is_none(), "{source:?} compiled");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z<>&\"'`= 0-9-]{0,12}".prop_map(Value::String),
            Just(json!("2026-03-29T01:30:00Z")),
            Just(json!("2026-10-25")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_handlebars_on_any_data(info in json_value(), marks in json_value()) {
            let data = json!({"info": info, "marks": marks, "recipient": {"name": "R"}});
            for source in [
                "{{info}}|{{info.a}}|{{info.a.b}}|{{info.b.0}}",
                "{{#if info.a}}{{info.a}}{{else}}{{#unless info.b}}nb{{/unless}}{{/if}}",
                "{{#each marks}}<{{this}}>{{else}}none{{/each}}",
                "{{#each info.c}}{{this}}{{#unless @last}};{{/unless}}{{/each}}",
                "{{#each info.a}}{{@index}}{{@key}}{{b}}{{#if @first}}!{{/if}}{{/each}}",
                "{{uk_date info.a}}",
                "{{uk_datetime info.b}}",
                "{{join info.c \", \"}}",
            ] {
                for escape in [true, false] {
                    prop_assert!(both(source, &data, escape).is_some());
                }
            }
        }
    }
}

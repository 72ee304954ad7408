//! Rendering, whatever the template and whatever the event: an HTML template that could
//! write a value unescaped is refused when templates load, in every spelling and wherever it
//! stands; the helpers' output is escaped in HTML; and every event the schemas accept renders
//! for every route it matches and every class of recipient the route can reach.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::examples;
use herald::core::Core;
use herald::event::{Event, EventId};
use herald::intake::Rejection;
use herald::notification::{Content, Problem};
use herald::render::{Data, EmailParts, Renderer, SUBJECT_CHARS, TemplateError};
use herald::route::{Authority, SHORT_NOTICE};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// HTML templates escape every value.

/// A templates folder holding one template, `t`, and the given partials.
fn templates(html: &str, partials: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("t");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("subject.hbs"), "Subject").unwrap();
    // The plain text part may write values unescaped: the same text must load there.
    std::fs::write(folder.join("text.hbs"), html).unwrap();
    std::fs::write(folder.join("html.hbs"), html).unwrap();
    let partials_dir = dir.path().join("partials");
    std::fs::create_dir_all(&partials_dir).unwrap();
    for (name, text) in partials {
        std::fs::write(partials_dir.join(format!("{name}.hbs")), text).unwrap();
    }
    dir
}

/// What every generated template can render with: the same values at every depth, so a path
/// such as `info.a` resolves inside `#with info` and `#each info.items` too.
fn nested_info(depth: usize) -> Value {
    let mut info = json!({
        "a": "<script>alert('a')</script> & \"quoted\"",
        "b": {"c": "<b>bold</b>"},
        "d": "2026-12-15",
        "t": "2026-07-01T08:00:00Z",
        "l": ["<script>", "x & y"],
        "yes": true,
        "no": false,
    });
    if depth > 0 {
        let inner = nested_info(depth - 1);
        info["info"] = inner.clone();
        info["items"] = json!([{ "info": inner }]);
    }
    info
}

fn render(renderer: &Renderer, info: &Value) -> Result<EmailParts, String> {
    let facts = Map::new();
    let recipient = json!({"id": "police:X", "name": "<Unit>", "class": "police"});
    let data = Data {
        facts: &facts,
        recipient: &recipient,
        info,
    };
    renderer.email("t", &data, &[])
}

/// What a piece of template holds besides escaped values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holds {
    /// A value written without escaping: `{{{ }}}` or `{{& }}` in some form.
    unescaped: bool,
    /// A partial in a form not expanded at load.
    partial: bool,
}

impl Holds {
    const ESCAPED: Holds = Holds {
        unescaped: false,
        partial: false,
    };
    const UNESCAPED: Holds = Holds {
        unescaped: true,
        partial: false,
    };
    const PARTIAL: Holds = Holds {
        unescaped: false,
        partial: true,
    };

    fn and(self, other: Holds) -> Holds {
        Holds {
            unescaped: self.unescaped || other.unescaped,
            partial: self.partial || other.partial,
        }
    }
}

const PATHS: &[&str] = &["info.a", "info.b.c", "info.l"];
const CALLS: &[&str] = &[
    "uk_date info.d",
    "uk_datetime info.t",
    "join info.l",
    "join info.l \"<br>\"",
];

fn space() -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(&["", "", " ", "  ", "\n", "\t "][..])
}

fn tilde() -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(&["", "~"][..])
}

/// A value or a helper call, as written between the braces.
fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(PATHS).prop_map(str::to_owned),
        prop::sample::select(CALLS).prop_map(str::to_owned),
    ]
}

/// One expression written unescaped, in one of Handlebars' spellings.
fn unescaped() -> impl Strategy<Value = String> {
    let parts = (tilde(), space(), space(), space(), space(), tilde());
    prop_oneof![
        // {{{x}}}, {{{~ x ~}}}
        (parts.clone(), expression())
            .prop_map(|((l, s1, s2, _, _, r), e)| format!("{{{{{{{l}{s1}{e}{s2}{r}}}}}}}")),
        // {{~{x}~}}, {{ { x } }}
        (parts.clone(), expression()).prop_map(|((l, s1, s2, s3, s4, r), e)| format!(
            "{{{{{l}{s1}{{{s2}{e}{s3}}}{s4}{r}}}}}"
        )),
        // {{&x}}, {{ & x }}, {{~&x}}, {{& (join info.l)}}: `&` takes a path or a subexpression.
        (
            parts,
            prop_oneof![
                prop::sample::select(PATHS).prop_map(str::to_owned),
                prop::sample::select(CALLS).prop_map(|c| format!("({c})")),
            ]
        )
            .prop_map(|((l, s1, s2, s3, _, r), e)| format!("{{{{{l}{s1}&{s2}{e}{s3}{r}}}}}")),
    ]
}

/// One expression written so that its value is escaped, or text that only looks unescaped.
fn escaped() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (tilde(), space(), expression(), space(), tilde())
            .prop_map(|(l, s1, e, s2, r)| format!("{{{{{l}{s1}{e}{s2}{r}}}}}")),
        // A backslash makes the braces literal text, as in Handlebars.js.
        1 => unescaped().prop_map(|u| format!("\\{u}")),
        1 => unescaped().prop_map(|u| format!("{{{{{{{{raw}}}}}}}}{u}{{{{{{{{/raw}}}}}}}}")),
        1 => unescaped().prop_map(|u| format!("{{{{!-- {u} --}}}}")),
    ]
}

/// A partial Herald does not expand at load, so its output would go unchecked.
fn unexpanded_partial() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "{{~> p}}",
            "{{> p~}}",
            "{{~> p~}}",
            "{{> p info}}",
            "{{> p a=1}}",
            "{{> (lookup info \"a\")}}",
            "{{~#> p}}x{{/p}}",
            "{{> @partial-block}}",
        ][..],
    )
    .prop_map(str::to_owned)
}

/// A piece of template and what it holds, wrapped in the blocks it stands in.
fn piece() -> impl Strategy<Value = (String, Holds)> {
    let leaf = prop_oneof![
        6 => escaped().prop_map(|s| (s, Holds::ESCAPED)),
        2 => unescaped().prop_map(|s| (s, Holds::UNESCAPED)),
        1 => unexpanded_partial().prop_map(|s| (s, Holds::PARTIAL)),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        let wraps = prop::sample::select(
            &[
                "{{#if info.yes}}{}{{/if}}",
                "{{#if info.no}}no{{else}}{}{{/if}}",
                "{{#if info.no}}no{{else if info.yes}}{}{{/if}}",
                "{{#unless info.no}}{}{{/unless}}",
                "{{#unless info.yes}}no{{else}}{}{{/unless}}",
                "{{#if (present info.no)}}{}{{/if}}",
                "{{#unless (present info.none)}}{}{{/unless}}",
                "{{#each info.items}}{}{{/each}}",
                "{{#each info.items}}{}{{else}}none{{/each}}",
                "{{#each info.l}}{{this}}{{else}}{}{{/each}}",
                "{{#with info}}{}{{/with}}",
                "{{~#if info.yes~}}\n  {}\n{{~/if~}}",
            ][..],
        );
        prop_oneof![
            (wraps, inner.clone()).prop_map(|(wrap, (s, holds))| (wrap.replace("{}", &s), holds)),
            (inner.clone(), inner)
                .prop_map(|((a, ha), (b, hb))| (format!("{a}\n<p>{b}</p>"), ha.and(hb))),
        ]
    })
}

/// An HTML template made of pieces, some in partials of their own and all perhaps inside a
/// layout, with the partials it needs.
#[derive(Debug, Clone)]
struct Case {
    html: String,
    partials: Vec<(String, String)>,
    /// Where an unescaped value is (the files that could be named), or empty.
    unescaped_in: Vec<String>,
    partial_unexpanded: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let placed = (piece(), any::<bool>());
    (
        prop::collection::vec(placed, 1..4),
        any::<bool>(),
        // The layout's own `{{> @partial-block}}` is where the body goes: a piece there must
        // not be another.
        prop::option::of(piece().prop_filter("not a second partial block", |(s, _)| {
            !s.contains("@partial-block")
        })),
    )
        .prop_map(|(pieces, in_layout, in_layout_file)| {
            let mut partials = vec![("p".to_owned(), "<i>{{info.a}}</i>".to_owned())];
            let mut unescaped_in = Vec::new();
            let mut partial_unexpanded = false;
            let mut note = |holds: Holds, file: &str| {
                if holds.unescaped {
                    unescaped_in.push(file.to_owned());
                }
                partial_unexpanded |= holds.partial;
            };
            let mut body = String::from("<h1>Title</h1>\n");
            for (i, ((text, holds), own_file)) in pieces.into_iter().enumerate() {
                if own_file {
                    let name = format!("piece{i}");
                    note(holds, &format!("partials/{name}.hbs"));
                    body.push_str(&format!("{{{{> {name}}}}}\n"));
                    partials.push((name, text));
                } else {
                    note(holds, "t/html.hbs");
                    body.push_str(&text);
                    body.push('\n');
                }
            }
            let html = if in_layout {
                let mut layout = String::from("<body>{{> @partial-block}}</body>");
                if let Some((text, holds)) = in_layout_file {
                    note(holds, "partials/layout.hbs");
                    layout.push_str(&text);
                }
                partials.push(("layout".to_owned(), layout));
                format!("{{{{#> layout}}}}\n{body}{{{{/layout}}}}\n")
            } else {
                body
            };
            Case {
                html,
                partials,
                unescaped_in,
                partial_unexpanded,
            }
        })
}

fn names(errors: &[TemplateError], root: &Path) -> Vec<String> {
    errors
        .iter()
        .map(|e| {
            e.path
                .strip_prefix(root)
                .unwrap_or(&e.path)
                .display()
                .to_string()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn html_templates_that_could_write_a_value_unescaped_are_refused_at_load(case in case()) {
        let dir = templates(&case.html, &case.partials);
        let loaded = Renderer::load(dir.path());
        if case.unescaped_in.is_empty() && !case.partial_unexpanded {
            let mut renderer = match loaded {
                Ok(r) => r,
                Err(errors) => {
                    return Err(TestCaseError::fail(format!("refused: {errors:#?}")));
                }
            };
            // Accepted means escaped: no markup from the data reaches the HTML, by either way of
            // rendering.
            let info = nested_info(4);
            let fast = render(&renderer, &info).map_err(TestCaseError::fail)?;
            renderer.set_handlebars_only(true);
            let reference = render(&renderer, &info).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&fast, &reference);
            for markup in ["<script", "<b>", "<Unit>"] {
                prop_assert!(!fast.html.contains(markup), "{} in {}", markup, fast.html);
            }
            return Ok(());
        }
        let errors = match loaded {
            Ok(_) => return Err(TestCaseError::fail("loaded")),
            Err(errors) => errors,
        };
        let files = names(&errors, dir.path());
        prop_assert_eq!(errors.len(), 1, "{:#?}", errors);
        let message = &errors[0].message;
        let unescaped = message.contains("without HTML escaping");
        let unexpanded = message.contains("not expanded when templates load");
        prop_assert!(
            (unescaped && !case.unescaped_in.is_empty()) || (unexpanded && case.partial_unexpanded),
            "{:#?}", errors
        );
        if unescaped && !message.starts_with("with its partials expanded") {
            // Found in the file it is written in, with its place there.
            prop_assert!(case.unescaped_in.contains(&files[0]), "{:?}: {}", files, message);
            prop_assert!(message.starts_with("line "), "{}", message);
        } else {
            prop_assert_eq!(&files[0], "t/html.hbs");
        }
    }
}

#[test]
fn a_refusal_names_the_file_line_and_column() {
    let dir = templates("<p>\n  {{ &info.a }}</p>", &[]);
    let errors = Renderer::load(dir.path()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}: line 2, column 3: writes a value without HTML escaping ({{{{{{ }}}}}} or {{{{& }}}}); \
             HTML templates must escape every value: write {{{{ }}}}",
            dir.path().join("t/html.hbs").display()
        )
    );

    let partials = [
        (
            "layout".to_owned(),
            "<body>{{> @partial-block}}</body>".to_owned(),
        ),
        (
            "row".to_owned(),
            "<tr>\n<td>{{~{info.a}~}}</td></tr>".to_owned(),
        ),
    ];
    let dir = templates(
        "{{#> layout}}\n{{#if info.yes}}{{> row}}{{/if}}{{/layout}}",
        &partials,
    );
    let errors = Renderer::load(dir.path()).unwrap_err();
    let message = errors[0].to_string();
    assert!(
        message.starts_with(&format!(
            "{}: line 2, column 5: writes a value",
            dir.path().join("partials/row.hbs").display()
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "(included by {})",
            dir.path().join("t/html.hbs").display()
        )),
        "{message}"
    );

    let dir = templates("{{> p}}\n{{~> p}}", &[("p".to_owned(), "x".to_owned())]);
    let errors = Renderer::load(dir.path()).unwrap_err();
    assert!(
        errors[0]
            .message
            .contains("uses partial \"p\" in a form that is not expanded"),
        "{errors:#?}"
    );
}

#[test]
fn helpers_write_escaped_text_into_html_by_either_way_of_rendering() {
    let html = "{{join info.l}}|{{join info.l \"<br>\"}}|{{uk_date info.d}}|{{uk_datetime info.t}}";
    let dir = templates(html, &[]);
    let mut renderer = Renderer::load(dir.path()).unwrap();
    assert_eq!(
        renderer.compiled_parts(),
        3,
        "the fast path is the one tried"
    );
    let info = nested_info(0);
    let want = "&lt;script&gt;, x &amp; y|&lt;script&gt;&lt;br&gt;x &amp; y|\
                Tuesday 15 December 2026|Wednesday 1 July 2026, 09:00 BST";
    assert_eq!(render(&renderer, &info).unwrap().html, want);
    renderer.set_handlebars_only(true);
    assert_eq!(render(&renderer, &info).unwrap().html, want);
    // The plain text part writes them as they are.
    assert!(
        render(&renderer, &info)
            .unwrap()
            .text
            .starts_with("<script>, x & y|")
    );
}

#[test]
fn present_tells_a_false_field_from_a_missing_one_by_either_way_of_rendering() {
    let html = "{{#if (present info.no)}}[{{#if info.no}}yes{{else}}no{{/if}}]{{/if}}\
                {{#if (present info.none)}}none{{/if}}{{#unless (present info.none)}}-{{/unless}}\
                {{#each info.items}}{{#if (present info.no)}}+{{/if}}{{/each}}";
    let dir = templates(html, &[]);
    let mut renderer = Renderer::load(dir.path()).unwrap();
    assert_eq!(
        renderer.compiled_parts(),
        3,
        "the fast path is the one tried"
    );
    let info = nested_info(1);
    assert_eq!(render(&renderer, &info).unwrap().html, "[no]-+");
    renderer.set_handlebars_only(true);
    assert_eq!(render(&renderer, &info).unwrap().html, "[no]-+");
}

// ---------------------------------------------------------------------------------------
// Every event the schemas accept renders.

/// The shipped configuration rendering through the Handlebars registry alone, to compare.
fn reference() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| {
        let mut core = Core::load(&common::root().join("routes.toml")).unwrap();
        core.renderer.set_handlebars_only(true);
        core
    })
}

/// What kind of value a leaf of an example holds, so a new value can be of the same kind.
#[derive(Debug, Clone, Copy)]
enum Leaf {
    Date,
    DateTime,
    Text,
    /// Capitals, digits, `-` and `/`: a code or an identifier, which routing reads.
    Code,
    Flag,
    Number,
}

impl Leaf {
    fn of(value: &Value) -> Option<Leaf> {
        Some(match value {
            Value::String(s) => {
                let b = s.as_bytes();
                let code =
                    |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit() || b"-/".contains(c);
                match b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
                    true if b.len() == 10 => Leaf::Date,
                    true => Leaf::DateTime,
                    false if !b.is_empty() && b.iter().all(code) => Leaf::Code,
                    false => Leaf::Text,
                }
            }
            Value::Bool(_) => Leaf::Flag,
            Value::Number(_) => Leaf::Number,
            _ => return None,
        })
    }
}

/// An example's leaves (pointer and kind) and every member and item that could be dropped,
/// last first so that dropping one leaves the pointers of those still to try unchanged.
struct Plan {
    leaves: Vec<(String, Leaf)>,
    members: Vec<String>,
}

fn survey(value: &Value, at: String, out: &mut Plan) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        leaf => {
            if let Some(kind) = Leaf::of(leaf) {
                out.leaves.push((at, kind));
            }
            return;
        }
    };
    for (key, child) in children {
        let pointer = format!("{at}/{key}");
        out.members.push(pointer.clone());
        survey(child, pointer, out);
    }
}

fn plans() -> &'static [Plan] {
    static PLANS: OnceLock<Vec<Plan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        examples()
            .iter()
            .map(|(_, doc)| {
                let mut p = Plan {
                    leaves: Vec::new(),
                    members: Vec::new(),
                };
                survey(doc, String::new(), &mut p);
                p.members.reverse();
                p
            })
            .collect()
    })
}

/// A date anywhere in the contract's range, often at its edges, on a leap day or on a day the
/// clocks change.
fn date() -> impl Strategy<Value = String> {
    let first = chrono::NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
    prop_oneof![
        3 => (0u64..73_049).prop_map(move |days| (first + chrono::Days::new(days)).to_string()),
        1 => prop::sample::select(
            &[
                "1900-01-01",
                "2099-12-31",
                "1904-02-29",
                "2000-02-29",
                "2096-02-29",
                "2026-03-29",
                "2026-10-25",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// A date-time in the contract's range: any time, fractions of a second, lower-case `t` and
/// `z`, and offsets from -23:59 to +23:59 (+14:00, -12:00 and +05:45 among them).
fn date_time() -> impl Strategy<Value = String> {
    let offset = prop_oneof![
        prop::sample::select(
            &[
                "Z", "z", "+00:00", "-00:00", "+14:00", "-12:00", "+05:45", "+23:59", "-23:59",
                "+01:00",
            ][..]
        )
        .prop_map(str::to_owned),
        (any::<bool>(), 0u32..24, 0u32..60)
            .prop_map(|(east, h, m)| format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })),
    ];
    let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{1,12}"];
    prop_oneof![
        6 => (
            date(),
            prop::sample::select(&["T", "T", "t"][..]),
            (0u32..24, 0u32..60, 0u32..60),
            fraction,
            offset,
        )
            .prop_map(|(day, t, (h, m, s), fraction, offset)| {
                format!("{day}{t}{h:02}:{m:02}:{s:02}{fraction}{offset}")
            }),
        1 => prop::sample::select(
            &[
                "1900-01-01T00:00:00+23:59",
                "2099-12-31T23:59:59-23:59",
                "2026-03-29T01:30:00+00:00",
                "2026-10-25T01:30:00+01:00",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// Text without control characters: names, markup and template syntax, other scripts, and
/// now and then a few KB.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z][A-Za-z' -]{0,20}",
        3 => "\\PC{1,40}",
        1 => prop::sample::select(
            &[
                "<script>alert(1)</script>",
                "{{info}} {{{info.offender}}} {{& x}}",
                "Zoë O'Neil-Ñúñez & \"Co\" `=`",
                "\u{202e}evil\u{202c} \u{2028}two\u{2029}lines",
                "🦀🦀🦀",
                "   ",
            ][..]
        )
        .prop_map(str::to_owned),
        1 => "\\PC{200,2500}",
    ]
}

/// A new value for a leaf of this kind, or `None` to keep it. Codes and flags decide which
/// routes match and whom they reach, so they change less often: most events still reach
/// someone.
fn new_value(kind: Leaf) -> BoxedStrategy<Option<Value>> {
    let (new, odds) = match kind {
        Leaf::Date => (date().prop_map(Value::String).boxed(), 0.6),
        Leaf::DateTime => (date_time().prop_map(Value::String).boxed(), 0.6),
        Leaf::Text => (text().prop_map(Value::String).boxed(), 0.6),
        Leaf::Code => (
            prop_oneof!["[A-Z][A-Z0-9-]{0,12}", text()]
                .prop_map(Value::String)
                .boxed(),
            0.15,
        ),
        Leaf::Flag => (any::<bool>().prop_map(Value::Bool).boxed(), 0.3),
        Leaf::Number => (
            prop_oneof![0i64..5, 1i64..1_000, any::<i64>()]
                .prop_map(Value::from)
                .boxed(),
            0.6,
        ),
    };
    prop::option::weighted(odds, new).boxed()
}

/// An example, new values for some of its leaves and which of its members and items to drop.
fn variant() -> impl Strategy<Value = (usize, Vec<Option<Value>>, Vec<bool>)> {
    (0..examples().len()).prop_flat_map(|i| {
        let plan = &plans()[i];
        let leaves: Vec<_> = plan
            .leaves
            .iter()
            .map(|(_, kind)| new_value(*kind))
            .collect();
        let drops = prop::collection::vec(prop::bool::weighted(0.2), plan.members.len());
        (Just(i), leaves, drops)
    })
}

fn accepted(doc: &Value) -> Result<Event, Rejection> {
    let body = serde_json::to_vec(doc).unwrap();
    common::core()
        .intake
        .accept(&body, EventId::from_content(&body))
}

/// Applies the variant's changes one at a time, keeping each the intake accepts: the event
/// stays valid while as much as the schema allows is dropped or replaced. A date or date-time
/// in the range is never refused.
fn build(
    i: usize,
    values: &[Option<Value>],
    drops: &[bool],
) -> Result<(Value, Vec<String>), TestCaseError> {
    let (name, original) = &examples()[i];
    let plan = &plans()[i];
    let mut doc = original.clone();
    let mut changed = Vec::new();
    for (pointer, _) in plan.members.iter().zip(drops).filter(|(_, drop)| **drop) {
        let Some((parent, key)) = pointer.rsplit_once('/') else {
            continue;
        };
        let before = doc.clone();
        let removed = match doc.pointer_mut(parent) {
            Some(Value::Object(map)) => map.remove(&key.replace("~1", "/").replace("~0", "~")),
            Some(Value::Array(items)) => match key.parse::<usize>() {
                Ok(k) if k < items.len() => Some(items.remove(k)),
                _ => None,
            },
            _ => None,
        };
        if removed.is_some() && accepted(&doc).is_ok() {
            changed.push(format!("dropped {pointer}"));
        } else {
            doc = before;
        }
    }
    for ((pointer, kind), value) in plan.leaves.iter().zip(values) {
        let Some(value) = value else { continue };
        let Some(slot) = doc.pointer_mut(pointer) else {
            continue;
        };
        let old = std::mem::replace(slot, value.clone());
        match accepted(&doc) {
            Ok(_) => changed.push(format!("{pointer} = {value:.60}")),
            Err(r) => {
                // A date is refused only by the one rule between two dates: a grant of
                // authority does not end before it begins.
                let ends_before_it_begins = r.detail.contains("validUntil is before effectiveFrom");
                prop_assert!(
                    !matches!(kind, Leaf::Date | Leaf::DateTime) || ends_before_it_begins,
                    "{name}: {pointer} = {value} refused: {r}"
                );
                if let Some(slot) = doc.pointer_mut(pointer) {
                    *slot = old;
                }
            }
        }
    }
    Ok((doc, changed))
}

#[test]
fn the_generated_events_start_from_every_event_type() {
    let from: std::collections::BTreeSet<&str> = examples()
        .iter()
        .filter_map(|(_, doc)| doc["eventType"].as_str())
        .collect();
    let types: std::collections::BTreeSet<&str> = common::core()
        .intake
        .schemas()
        .event_types()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(from, types);
}

/// A subject as sent: one line, the markings and at most SUBJECT_CHARS more.
fn check_subject(subject: &str, marks: &[String]) -> Result<(), TestCaseError> {
    prop_assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    let marks_len: usize = marks.iter().map(|m| m.chars().count() + 3).sum();
    let len = subject.chars().count();
    prop_assert!(
        len <= marks_len + SUBJECT_CHARS,
        "{len} characters: {subject:?}"
    );
    prop_assert!(len <= 998);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_event_the_schemas_accept_renders_for_every_route_and_class(
        (i, values, drops) in variant()
    ) {
        let core = common::core();
        let (doc, changed) = build(i, &values, &drops)?;
        let event = accepted(&doc).map_err(|r| TestCaseError::fail(r.to_string()))?;
        let context = format!("{} with {changed:#?}", examples()[i].0);

        let routing = core.route(&event, &Authority::seed());
        for problem in &routing.problems {
            prop_assert!(
                !matches!(problem, Problem::RenderFailed { .. }),
                "{}: {}", context, problem
            );
        }
        for n in &routing.notifications {
            if let Content::Email { subject, html, .. } = &n.content {
                check_subject(subject, &n.marks)?;
                prop_assert!(!html.contains("<script"), "{}", context);
            }
        }
        prop_assert_eq!(
            serde_json::to_value(&routing).unwrap(),
            serde_json::to_value(reference().route(&event, &Authority::seed())).unwrap(),
            "{}", context
        );

        for route in core.engine.routes.iter().filter(|r| r.matches(&event)) {
            for recipient in core.sample_recipients(route) {
                let email = core.preview_email(route, &event, &recipient);
                let email = email.map_err(|e| {
                    TestCaseError::fail(format!("{context}: route {}, {}: {e}", route.name, recipient.class))
                })?;
                // The markings the route can give: its own and short notice.
                let marks: Vec<String> = route
                    .mark
                    .iter()
                    .cloned()
                    .chain([SHORT_NOTICE.to_owned()])
                    .collect();
                check_subject(&email.subject, &marks)?;
                prop_assert!(!email.html.contains("<script"), "{}", context);
                let same = reference().preview_email(route, &event, &recipient);
                prop_assert_eq!(Ok(&email), same.as_ref(), "{}", context);
            }
        }
    }
}

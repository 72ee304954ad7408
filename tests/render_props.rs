//! Rendering, whatever the template and whatever the event: an HTML template that could
//! write a value unescaped is refused when templates load, in every spelling and wherever it
//! stands; the helpers' output is escaped in HTML; and every event the schemas accept renders
//! for every route it matches and every class of recipient the route can reach.

mod common;

use std::path::Path;

use herald::render::{Data, EmailParts, Renderer, TemplateError};
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

//! The check that an HTML template escapes every value, made on the template as Handlebars
//! parsed it rather than on its text: every spelling of an unescaped value (`{{{x}}}`,
//! `{{~{x}~}}`, `{{& x}}`, `{{~&x}}`, ...) parses to the same element, wherever it stands
//! (block bodies, `{{else}}` branches, inline partials).
//!
//! This walks handlebars' own syntax tree, so Cargo.toml pins the handlebars version: a
//! release that added a kind of element would otherwise slip past unseen. An element this
//! check does not know is refused.

use handlebars::template::{Template, TemplateElement};

/// Something in an HTML template that could write a value without escaping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unescaped {
    /// `{{{ }}}` or `{{& }}` in any form.
    Value,
    /// A partial rendered at run time: the forms Herald expands at load (`{{> name}}` and
    /// `{{#> name}}...{{/name}}`) are gone by then, so this is one it did not expand, and
    /// what it renders is not checked.
    Partial(String),
    /// An element of a kind this check does not know.
    Unknown,
}

/// Where it is: line and column in the text Handlebars parsed, when the parser recorded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub what: Unescaped,
    pub at: Option<(usize, usize)>,
}

impl Finding {
    /// What is wrong and how to put it right, for a [`super::TemplateError`].
    pub fn message(&self) -> String {
        let problem = match &self.what {
            Unescaped::Value => "writes a value without HTML escaping ({{{ }}} or {{& }}); \
                                 HTML templates must escape every value: write {{ }}"
                .to_owned(),
            Unescaped::Partial(name) => format!(
                "uses partial \"{name}\" in a form that is not expanded when templates load; \
                 write {{{{> {name}}}}} or {{{{#> {name}}}}}...{{{{/{name}}}}}, without `~`, \
                 arguments or hash values, so that what it renders is checked for escaping"
            ),
            Unescaped::Unknown => "contains a Handlebars element Herald does not know, so it \
                                   cannot tell whether it escapes its values"
                .to_owned(),
        };
        match self.at {
            Some((line, column)) => format!("line {line}, column {column}: {problem}"),
            None => problem,
        }
    }
}

/// The first element of `template` that could write a value unescaped. With `partials`
/// false a partial is not a finding (the text before partials are expanded uses them), but
/// its block's body is still looked through.
pub fn find(template: &Template, partials: bool) -> Option<Finding> {
    for (i, element) in template.elements.iter().enumerate() {
        let at = template.mapping.get(i).map(|m| (m.0, m.1));
        let found = |what| Some(Finding { what, at });
        let nested = match element {
            TemplateElement::RawString(_)
            | TemplateElement::Comment(_)
            | TemplateElement::Expression(_)
            | TemplateElement::DecoratorExpression(_) => [None, None],
            TemplateElement::HtmlExpression(_) => return found(Unescaped::Value),
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d)
                if partials =>
            {
                let name = d.name.as_name().unwrap_or("(computed)").to_owned();
                return found(Unescaped::Partial(name));
            }
            TemplateElement::PartialExpression(_) => [None, None],
            // Block bodies and every `{{else}}` branch (an `else if` chain is nested inverses).
            TemplateElement::HelperBlock(h) => [h.template.as_ref(), h.inverse.as_ref()],
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                [d.template.as_ref(), None]
            }
            _ => return found(Unescaped::Unknown),
        };
        if let Some(finding) = nested.into_iter().flatten().find_map(|t| find(t, partials)) {
            return Some(finding);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str) -> Option<Finding> {
        find(&Template::compile(source).unwrap(), true)
    }

    #[test]
    fn every_spelling_of_an_unescaped_value_is_found_with_its_position() {
        for source in [
            "{{{x}}}",
            "{{~{x}~}}",
            "{{& x}}",
            "{{ &x }}",
            "{{~&x}}",
            "{{{~ x ~}}}",
            "{{{uk_date x}}}",
            "{{& (join x)}}",
        ] {
            assert_eq!(
                check(source),
                Some(Finding {
                    what: Unescaped::Value,
                    at: Some((1, 1))
                }),
                "{source}"
            );
        }
        let nested = "a\n{{#if a}}\n  {{#each b}}{{x}}{{else}}\n  {{#unless c}}{{else if d}} {{{y}}}{{/unless}}{{/each}}{{/if}}";
        assert_eq!(check(nested).unwrap().at, Some((4, 30)));
        assert_eq!(
            check("{{#*inline \"p\"}}{{&x}}{{/inline}}").unwrap().what,
            Unescaped::Value
        );
    }

    #[test]
    fn escaped_values_and_literal_text_pass() {
        for source in [
            "{{x}} {{~x~}} {{ x }} {{uk_date x}} {{#if a}}{{x}}{{else}}{{y}}{{/if}}",
            r"\{{{x}}}",
            "{{{{raw}}}}{{{x}}}{{{{/raw}}}}",
            "{{!-- {{{x}}} --}}{{! {{&x}} }}",
        ] {
            assert_eq!(check(source), None, "{source}");
        }
    }

    #[test]
    fn partials_are_findings_only_once_they_should_have_been_expanded() {
        let source = "{{> a}}{{#> b}}{{{x}}}{{/b}}";
        let template = Template::compile(source).unwrap();
        assert_eq!(
            find(&template, true).unwrap().what,
            Unescaped::Partial("a".into())
        );
        assert_eq!(
            find(&template, false),
            Some(Finding {
                what: Unescaped::Value,
                at: Some((1, 16))
            })
        );
    }
}

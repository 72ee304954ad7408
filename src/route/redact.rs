//! Redaction: fields a class of recipient may not see are removed from the event's data
//! before any template or payload is built from it, so no template can leak them.
//!
//! The envelope's `description` is the publisher's free text: it can say anything, PPO status
//! included, so it goes only to the classes `[free_text] description` names, or, when that is
//! unset, to the classes from which no `[[sensitive]]` rule withholds anything.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::config::{FreeText, SensitiveRule};
use crate::directory::RecipientClass;
use crate::field::FieldPath;

/// How `withheld` names the envelope's `description` when it is removed (every other entry is
/// a path inside `additionalInformation`).
pub const ENVELOPE_DESCRIPTION: &str = "envelope.description";

/// The fields to remove, per recipient class.
#[derive(Debug, Default)]
pub struct Redaction {
    per_class: HashMap<RecipientClass, Vec<FieldPath>>,
    /// Classes that may not see the envelope's `description`.
    no_description: Vec<RecipientClass>,
}

impl Redaction {
    /// Builds the table from routes.toml's `[[sensitive]]` rules and `[free_text]`; errors name
    /// the rule.
    pub fn build(rules: &[SensitiveRule], free_text: &FreeText) -> (Redaction, Vec<String>) {
        let mut errors = Vec::new();
        let mut per_class: HashMap<RecipientClass, Vec<FieldPath>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let name = format!("sensitive rule {} ({})", i + 1, rule.fields.join(", "));
            let classes =
                |list: &Option<Vec<String>>, errors: &mut Vec<String>| -> Vec<RecipientClass> {
                    list.iter()
                        .flatten()
                        .filter_map(|c| {
                            RecipientClass::parse(c)
                                .map_err(|e| errors.push(format!("{name}: {e}")))
                                .ok()
                        })
                        .collect()
                };
            let only = classes(&rule.only, &mut errors);
            let never = classes(&rule.never, &mut errors);
            if rule.only.is_some() == rule.never.is_some() {
                errors.push(format!("{name}: give exactly one of `only` or `never`"));
            }
            let fields: Vec<FieldPath> = rule
                .fields
                .iter()
                .filter_map(|f| {
                    FieldPath::parse_each(f)
                        .map_err(|e| errors.push(format!("{name}: {e}")))
                        .ok()
                })
                .collect();
            for class in RecipientClass::ALL {
                let hidden = if rule.only.is_some() {
                    !only.contains(&class)
                } else {
                    never.contains(&class)
                };
                if hidden {
                    per_class
                        .entry(class)
                        .or_default()
                        .extend(fields.iter().cloned());
                }
            }
        }
        let no_description = match &free_text.description {
            Some(shown) => {
                let mut shown_to = Vec::new();
                for c in shown {
                    match RecipientClass::parse(c) {
                        Ok(class) => shown_to.push(class),
                        Err(e) => errors.push(format!("[free_text] description: {e}")),
                    }
                }
                RecipientClass::ALL
                    .into_iter()
                    .filter(|c| !shown_to.contains(c))
                    .collect()
            }
            None => RecipientClass::ALL
                .into_iter()
                .filter(|c| per_class.get(c).is_some_and(|paths| !paths.is_empty()))
                .collect(),
        };
        (
            Redaction {
                per_class,
                no_description,
            },
            errors,
        )
    }

    /// Every `[[sensitive]]` path, once each, for checking them against the schemas.
    pub fn paths(&self) -> Vec<&FieldPath> {
        let mut paths: Vec<&FieldPath> = Vec::new();
        for path in self.per_class.values().flatten() {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        paths.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        paths
    }

    /// Whether `path` is withheld from this class.
    pub fn hides(&self, class: RecipientClass, path: &FieldPath) -> bool {
        self.per_class
            .get(&class)
            .is_some_and(|paths| paths.contains(path))
    }

    /// Whether this class receives the envelope's free-text `description`.
    pub fn shows_description(&self, class: RecipientClass) -> bool {
        !self.no_description.contains(&class)
    }

    /// The event data as this class may see it, and what was removed: paths inside it, and
    /// [`ENVELOPE_DESCRIPTION`] when the event has a description this class may not see.
    /// Borrows the data when the class may see all of it.
    pub fn apply<'v>(
        &self,
        class: RecipientClass,
        info: &'v Value,
        description: Option<&Value>,
    ) -> (Cow<'v, Value>, Vec<String>) {
        let mut view = Cow::Borrowed(info);
        let mut withheld = Vec::new();
        for path in self.per_class.get(&class).into_iter().flatten() {
            if path.present(&view) && path.remove(view.to_mut()) {
                withheld.push(path.to_string());
            }
        }
        if description.is_some() && !self.shows_description(class) {
            withheld.push(ENVELOPE_DESCRIPTION.to_owned());
        }
        (view, withheld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(fields: &[&str], only: Option<&[&str]>, never: Option<&[&str]>) -> SensitiveRule {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        SensitiveRule {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            only: list(only),
            never: list(never),
            why: None,
        }
    }

    #[test]
    fn only_and_never_rules_remove_fields_per_class() {
        let (r, errors) = Redaction::build(
            &[
                rule(&["curfewAddress"], Some(&["police", "probation"]), None),
                rule(&["offender.ppo"], None, Some(&["judiciary"])),
            ],
            &FreeText::default(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let info = json!({"curfewAddress": {"postcode": "LS1 1AA"}, "offender": {"ppo": true, "pdu": "X"}});
        let (police, withheld) = r.apply(RecipientClass::Police, &info, None);
        assert_eq!(*police, info);
        assert!(
            matches!(police, Cow::Borrowed(_)),
            "nothing hidden: no copy"
        );
        assert!(withheld.is_empty());
        let (judge, withheld) = r.apply(RecipientClass::Judiciary, &info, None);
        assert_eq!(*judge, json!({"offender": {"pdu": "X"}}));
        assert_eq!(withheld, ["curfewAddress", "offender.ppo"]);
        let (lawyer, _) = r.apply(RecipientClass::LegalRep, &info, None);
        assert_eq!(*lawyer, json!({"offender": {"ppo": true, "pdu": "X"}}));
    }

    #[test]
    fn array_paths_are_redacted_in_every_element() {
        let (r, errors) = Redaction::build(
            &[rule(
                &["offender.aliases[]", "offences[].description"],
                None,
                Some(&["judiciary"]),
            )],
            &FreeText::default(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        let info = json!({"offender": {"aliases": ["Jonny", {"given": "J", "family": "S"}]},
                          "offences": [{"description": "theft"}, {"description": "burglary"}]});
        let (judge, withheld) = r.apply(RecipientClass::Judiciary, &info, None);
        assert_eq!(
            *judge,
            json!({"offender": {"aliases": []}, "offences": [{}, {}]})
        );
        assert_eq!(withheld, ["offender.aliases[]", "offences[].description"]);
        let (police, withheld) = r.apply(RecipientClass::Police, &info, None);
        assert_eq!(*police, info);
        assert!(withheld.is_empty());
    }

    #[test]
    fn the_free_text_description_goes_only_where_it_may() {
        let rules = [rule(&["offender.ppo"], None, Some(&["judiciary"]))];
        let info = json!({"offender": {"ppo": true}});
        let description = json!("PPO arrested on warrant");
        // Unset: every class some rule withholds a field from loses it.
        let (r, _) = Redaction::build(&rules, &FreeText::default());
        let (_, withheld) = r.apply(RecipientClass::Judiciary, &info, Some(&description));
        assert_eq!(withheld, ["offender.ppo", ENVELOPE_DESCRIPTION]);
        let (_, withheld) = r.apply(RecipientClass::Police, &info, Some(&description));
        assert!(withheld.is_empty());
        let (_, withheld) = r.apply(RecipientClass::Judiciary, &info, None);
        assert_eq!(
            withheld,
            ["offender.ppo"],
            "no description, nothing to withhold"
        );
        // Named: exactly those classes see it.
        let (r, errors) = Redaction::build(
            &rules,
            &FreeText {
                description: Some(vec!["probation".into(), "judges".into()]),
            },
        );
        assert_eq!(errors.len(), 1, "an unknown class: {errors:?}");
        assert!(r.shows_description(RecipientClass::Probation));
        assert!(!r.shows_description(RecipientClass::Police));
        assert!(!r.shows_description(RecipientClass::Judiciary));
    }

    #[test]
    fn a_rule_needs_exactly_one_of_only_and_never() {
        let (_, errors) = Redaction::build(
            &[
                rule(&["a"], None, None),
                rule(&["b"], Some(&["police"]), Some(&["judge"])),
            ],
            &FreeText::default(),
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}

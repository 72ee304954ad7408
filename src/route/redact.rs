//! Redaction: fields a class of recipient may not see are removed from the event's data
//! before any template or payload is built from it, so no template can leak them.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::config::SensitiveRule;
use crate::field::FieldPath;
use crate::route::RecipientClass;

/// The fields to remove, per recipient class.
#[derive(Debug, Default)]
pub struct Redaction {
    per_class: HashMap<RecipientClass, Vec<FieldPath>>,
}

impl Redaction {
    /// Builds the table from routes.toml's `[[sensitive]]` rules; errors name the rule.
    pub fn build(rules: &[SensitiveRule]) -> (Redaction, Vec<String>) {
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
                    FieldPath::parse(f)
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
        (Redaction { per_class }, errors)
    }

    /// The event data as this class may see it, and the paths that were removed. Borrows the
    /// data when the class may see all of it.
    pub fn apply<'v>(
        &self,
        class: RecipientClass,
        info: &'v Value,
    ) -> (Cow<'v, Value>, Vec<String>) {
        let mut view = Cow::Borrowed(info);
        let mut withheld = Vec::new();
        for path in self.per_class.get(&class).into_iter().flatten() {
            if path.lookup(info).is_some() && path.remove(view.to_mut()) {
                withheld.push(path.to_string());
            }
        }
        (view, withheld)
    }

    /// The paths this class never sees.
    pub fn hidden_from(&self, class: RecipientClass) -> impl Iterator<Item = &FieldPath> {
        self.per_class.get(&class).into_iter().flatten()
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
        let (r, errors) = Redaction::build(&[
            rule(&["curfewAddress"], Some(&["police", "probation"]), None),
            rule(&["offender.ppo"], None, Some(&["judiciary"])),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let info = json!({"curfewAddress": {"postcode": "LS1 1AA"}, "offender": {"ppo": true, "pdu": "X"}});
        let (police, withheld) = r.apply(RecipientClass::Police, &info);
        assert_eq!(*police, info);
        assert!(
            matches!(police, Cow::Borrowed(_)),
            "nothing hidden: no copy"
        );
        assert!(withheld.is_empty());
        let (judge, withheld) = r.apply(RecipientClass::Judiciary, &info);
        assert_eq!(*judge, json!({"offender": {"pdu": "X"}}));
        assert_eq!(withheld, ["curfewAddress", "offender.ppo"]);
        let (lawyer, _) = r.apply(RecipientClass::LegalRep, &info);
        assert_eq!(*lawyer, json!({"offender": {"ppo": true, "pdu": "X"}}));
    }

    #[test]
    fn a_rule_needs_exactly_one_of_only_and_never() {
        let (_, errors) = Redaction::build(&[
            rule(&["a"], None, None),
            rule(&["b"], Some(&["police"]), Some(&["judge"])),
        ]);
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}

//! Route matchers, in Alertmanager's style: `path = "value"`, `path != "value"`,
//! `path =~ "regex"`, `path !~ "regex"`. Paths are inside `additionalInformation`; a missing
//! field compares as the empty string; regexes match the whole value.

use regex::Regex;
use serde_json::Value;

use crate::field::FieldPath;

/// The operators a matcher may use.
const OPERATORS: [&str; 4] = ["=", "!=", "=~", "!~"];

#[derive(Debug, Clone)]
pub struct Matcher {
    text: String,
    path: FieldPath,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

impl Matcher {
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let bad = |why: &str| format!("matcher '{text}': {why}");
        let is_op = |c: char| matches!(c, '=' | '!' | '~' | '<' | '>');
        let at = text
            .find(is_op)
            .ok_or_else(|| bad("no operator (=, !=, =~, !~)"))?;
        let op_len = text[at..]
            .find(|c: char| !is_op(c))
            .unwrap_or(text.len() - at);
        let op = &text[at..at + op_len];
        if !OPERATORS.contains(&op) {
            let hint = match op {
                "==" | "===" => "; did you mean \"=\"?".to_owned(),
                "!==" | "<>" | "=!" | "!" => "; did you mean \"!=\"?".to_owned(),
                "~=" | "~" | "==~" => "; did you mean \"=~\"?".to_owned(),
                "~!" | "!=~" => "; did you mean \"!~\"?".to_owned(),
                "<" | ">" | "<=" | ">=" => {
                    "; values compare as text: use =~ with a regular expression".to_owned()
                }
                _ => String::new(),
            };
            return Err(bad(&format!(
                "unknown operator \"{op}\" (the operators are =, !=, =~, !~){hint}"
            )));
        }
        let path = FieldPath::parse(&text[..at]).map_err(|e| bad(&e))?;
        let raw = text[at + op.len()..].trim();
        let value = if raw.starts_with('"') {
            serde_json::from_str::<String>(raw)
                .map_err(|_| bad("the value's quotes are not closed or it has a bad escape"))?
        } else if raw.is_empty() {
            return Err(bad("no value"));
        } else if raw.starts_with(is_op) {
            return Err(bad(
                "an unquoted value cannot start with =, !, ~, < or >; put it in quotes",
            ));
        } else {
            raw.to_owned()
        };
        let regex = |v: &str| {
            Regex::new(&format!("^(?:{v})$")).map_err(|e| {
                bad(&e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "))
            })
        };
        let op = match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "=~" => Op::Matches(regex(&value)?),
            _ => Op::NotMatches(regex(&value)?),
        };
        Ok(Matcher {
            text: text.to_owned(),
            path,
            op,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    pub fn matches(&self, info: &Value) -> bool {
        let actual = self.path.text_of(info).unwrap_or_default();
        match &self.op {
            Op::Equal(v) => actual == v.as_str(),
            Op::NotEqual(v) => actual != v.as_str(),
            Op::Matches(re) => re.is_match(&actual),
            Op::NotMatches(re) => !re.is_match(&actual),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operators_compare_text_of_fields() {
        let info = json!({"kind": "failure-to-appear", "offender": {"ppo": true, "mappaLevel": 2}});
        let m = |t: &str| Matcher::parse(t).unwrap().matches(&info);
        assert!(m(r#"kind = "failure-to-appear""#));
        assert!(m("offender.ppo = true"));
        assert!(m(r#"offender.ppo="true""#));
        assert!(m("offender.mappaLevel != 3"));
        assert!(m(r#"kind =~ "failure-.*|breach""#));
        assert!(!m(r#"kind =~ "failure""#), "regexes are anchored");
        assert!(m(r#"kind !~ "breach""#));
        assert!(m(r#"absent = """#), "a missing field is the empty string");
        assert!(m(r#"absent != "x""#));
    }

    #[test]
    fn bad_matchers_are_explained() {
        for bad in [
            "kind",
            "kind = ",
            r#"kind =~ "(""#,
            r#"= "x""#,
            r#"kind = "unclosed"#,
            "kind = =x",
        ] {
            let err = Matcher::parse(bad).unwrap_err();
            assert!(err.starts_with("matcher '"), "{err}");
        }
    }

    #[test]
    fn an_unknown_operator_is_refused_with_the_one_meant() {
        for (text, hint) in [
            ("offender.ppo == true", "did you mean \"=\"?"),
            ("offender.ppo === true", "did you mean \"=\"?"),
            ("kind <> breach", "did you mean \"!=\"?"),
            (r#"kind ~= "fail.*""#, "did you mean \"=~\"?"),
            ("offender.mappaLevel >= 2", "use =~"),
        ] {
            let err = Matcher::parse(text).unwrap_err();
            assert!(
                err.contains("unknown operator") && err.contains(hint),
                "{text}: {err}"
            );
        }
        // In quotes an operator's characters are just text.
        let info = json!({"kind": "= true"});
        assert!(Matcher::parse(r#"kind = "= true""#).unwrap().matches(&info));
    }
}

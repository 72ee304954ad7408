//! Dotted paths into an event's `additionalInformation`, as written in routes.toml
//! (`offender.homeBcu`, `nextHearing.court.code`, `outcomes.0.result`).

use std::fmt;

use serde_json::Value;

/// A parsed dotted path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a.b.c`; segments are letters, digits, `_` and `-`.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty field path".into());
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if let Some(bad) = segments.iter().find(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(format!("bad field path \"{text}\" (segment \"{bad}\")"));
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path, if present. Numeric segments index arrays.
    pub fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(root, |v, seg| match v {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// Removes the value at this path; returns whether there was one.
    pub fn remove(&self, root: &mut Value) -> bool {
        let Some((last, parents)) = self.segments.split_last() else {
            return false;
        };
        let mut v = root;
        for seg in parents {
            v = match v {
                Value::Object(map) => match map.get_mut(seg) {
                    Some(next) => next,
                    None => return false,
                },
                _ => return false,
            };
        }
        match v {
            Value::Object(map) => map.remove(last).is_some(),
            _ => false,
        }
    }

    /// The value at this path as text, as matchers and recipient patterns compare it:
    /// strings as they are, numbers and booleans as JSON writes them.
    pub fn text_of<'v>(&self, root: &'v Value) -> Option<std::borrow::Cow<'v, str>> {
        match self.lookup(root)? {
            Value::String(s) => Some(s.as_str().into()),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
            Value::Number(n) => Some(n.to_string().into()),
            _ => None,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn looks_up_and_removes_nested_fields() {
        let mut v = json!({"offender": {"ppo": true, "name": {"given": "A"}}, "outcomes": [{"result": "guilty"}]});
        let ppo = FieldPath::parse("offender.ppo").unwrap();
        assert_eq!(ppo.text_of(&v).as_deref(), Some("true"));
        assert_eq!(
            FieldPath::parse("outcomes.0.result")
                .unwrap()
                .text_of(&v)
                .as_deref(),
            Some("guilty")
        );
        assert!(ppo.remove(&mut v));
        assert!(!ppo.remove(&mut v));
        assert_eq!(ppo.lookup(&v), None);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a b").is_err());
    }
}

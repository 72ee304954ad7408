//! Dotted paths into an event's `additionalInformation`, as written in routes.toml
//! (`offender.homeBcu`, `nextHearing.court.code`, `outcomes.0.result`).
//!
//! `[[sensitive]]` paths may also name every element of an array with `[]`:
//! `offender.aliases[]` (every alias), `offences[].description` (the description of every
//! offence). A numeric segment indexes an array (`offender.aliases.0`, the first alias).

use std::fmt;

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// An object's field by name, or (when it is a whole number) an array's element by index.
    Key(String),
    /// Every element of an array (`[]`).
    Each,
}

/// A parsed dotted path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

impl FieldPath {
    /// Parses `a.b.c`; segments are letters, digits, `_` and `-`. A path that names one value
    /// (for a matcher, a recipient pattern or a deadline), so `[]` is refused.
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let path = FieldPath::parse_each(text)?;
        if path.segments.contains(&Segment::Each) {
            return Err(format!(
                "field path \"{}\": `[]` (every element) names many values; it is for [[sensitive]] fields only",
                path.text
            ));
        }
        Ok(path)
    }

    /// Parses `a.b.c`, where any segment may end in `[]` to mean every element of that array
    /// (`offences[].description`, `offender.aliases[]`).
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse_each(text: &str) -> Result<FieldPath, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty field path".into());
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            let mut name = part;
            let mut each = 0;
            while let Some(rest) = name.strip_suffix("[]") {
                name = rest;
                each += 1;
            }
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!("bad field path \"{text}\" (segment \"{part}\")"));
            }
            segments.push(Segment::Key(name.to_owned()));
            segments.extend(std::iter::repeat_n(Segment::Each, each));
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The value at this path, if present. Numeric segments index arrays; a path with `[]`
    /// names no single value.
    pub fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(root, |v, seg| match seg {
            Segment::Key(key) => child(v, key),
            Segment::Each => None,
        })
    }

    /// Whether anything is at this path (for `[]`, in any element).
    pub fn present(&self, root: &Value) -> bool {
        fn at(v: &Value, segments: &[Segment]) -> bool {
            match segments.split_first() {
                None => true,
                Some((Segment::Key(key), rest)) => child(v, key).is_some_and(|c| at(c, rest)),
                Some((Segment::Each, rest)) => match v {
                    Value::Array(items) if rest.is_empty() => !items.is_empty(),
                    Value::Array(items) => items.iter().any(|item| at(item, rest)),
                    _ => false,
                },
            }
        }
        at(root, &self.segments)
    }

    /// Removes what is at this path: a field, an array element, or (ending in `[]`) every
    /// element, leaving the array empty. Returns whether anything was removed.
    pub fn remove(&self, root: &mut Value) -> bool {
        fn at(v: &mut Value, segments: &[Segment]) -> bool {
            match (segments, v) {
                ([], _) => false,
                ([Segment::Key(key)], Value::Object(map)) => map.remove(key).is_some(),
                ([Segment::Key(key)], Value::Array(items)) => match key.parse::<usize>() {
                    Ok(i) if i < items.len() => {
                        items.remove(i);
                        true
                    }
                    _ => false,
                },
                ([Segment::Each], Value::Array(items)) => {
                    let any = !items.is_empty();
                    items.clear();
                    any
                }
                ([Segment::Key(key), rest @ ..], Value::Object(map)) => {
                    map.get_mut(key).is_some_and(|c| at(c, rest))
                }
                ([Segment::Key(key), rest @ ..], Value::Array(items)) => key
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .is_some_and(|c| at(c, rest)),
                // Every element is visited, whatever the earlier ones gave.
                ([Segment::Each, rest @ ..], Value::Array(items)) => items
                    .iter_mut()
                    .fold(false, |removed, item| at(item, rest) | removed),
                _ => false,
            }
        }
        at(root, &self.segments)
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

/// An object's field, or an array's element when the key is an index.
fn child<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        _ => None,
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
        assert!(ppo.present(&v));
        assert!(ppo.remove(&mut v));
        assert!(!ppo.remove(&mut v));
        assert!(!ppo.present(&v));
        assert_eq!(ppo.lookup(&v), None);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a b").is_err());
    }

    #[test]
    fn array_paths_reach_every_element_or_one() {
        let doc = json!({
            "offender": {"aliases": ["Jonny", {"given": "J", "family": "S"}]},
            "offences": [{"description": "theft"}, {"description": "burglary"}, {}],
        });
        let each = |p: &str| FieldPath::parse_each(p).unwrap();

        let mut v = doc.clone();
        assert!(each("offences[].description").present(&v));
        assert!(each("offences[].description").remove(&mut v));
        assert_eq!(v["offences"], json!([{}, {}, {}]));
        assert!(!each("offences[].description").present(&v));
        assert!(!each("offences[].description").remove(&mut v));

        let mut v = doc.clone();
        assert!(each("offender.aliases[]").remove(&mut v));
        assert_eq!(v["offender"]["aliases"], json!([]));
        assert!(!each("offender.aliases[]").present(&v));

        let mut v = doc.clone();
        assert!(each("offender.aliases.0").present(&v));
        assert!(each("offender.aliases.0").remove(&mut v));
        assert_eq!(v["offender"]["aliases"][0]["given"], "J");
        assert!(!each("offender.aliases.5").remove(&mut v));

        let mut v = doc.clone();
        assert!(each("offender.aliases.1.family").remove(&mut v));
        assert_eq!(v["offender"]["aliases"][1], json!({"given": "J"}));

        // `[]` on something that is not an array removes nothing.
        let mut v = doc;
        assert!(!each("offender[]").remove(&mut v));
        assert!(!each("offender[]").present(&v));
    }

    #[test]
    fn every_element_is_for_sensitive_paths_only() {
        assert!(FieldPath::parse_each("offences[].description").is_ok());
        assert!(FieldPath::parse_each("a[][]").is_ok());
        let e = FieldPath::parse("offences[].description").unwrap_err();
        assert!(e.contains("[[sensitive]]"), "{e}");
        for bad in ["[]", "a.[]", "a[", "a[0]", "a[]b"] {
            assert!(FieldPath::parse_each(bad).is_err(), "{bad}");
        }
    }
}

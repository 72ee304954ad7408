//! The selectors routes use to pick recipients from the directory: a fixed id, a pattern
//! filled from the event (`police:{offender.homeBcu}`), or a whole class (`legal-rep:*`).

use std::sync::Arc;

use serde_json::Value;

use super::Authority;
use crate::directory::{Directory, Recipient, RecipientClass};
use crate::event::Event;
use crate::field::FieldPath;

/// One entry of a route's `to`.
#[derive(Debug, Clone)]
pub enum Selector {
    /// A fixed directory entry.
    Id(Arc<Recipient>),
    /// An id filled from the event, e.g. `police:{offender.homeBcu}`.
    Pattern {
        text: String,
        class: RecipientClass,
        parts: Vec<Part>,
    },
    /// Every recipient of a class (for legal representatives: those authorised).
    Class(RecipientClass),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Field(FieldPath),
}

/// What one selector gave for one event.
pub enum Selected<'d> {
    Recipients(Vec<&'d Arc<Recipient>>),
    Unknown { reason: String },
}

impl Selector {
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str, directory: &Directory) -> Result<Selector, String> {
        let (prefix, rest) = text.split_once(':').ok_or_else(|| {
            format!("recipient \"{text}\" is not <class>:<code>, <class>:{{field}} or <class>:*")
        })?;
        let class = RecipientClass::parse(prefix)?;
        if rest == "*" {
            return Ok(Selector::Class(class));
        }
        if !rest.contains('{') {
            return directory
                .get(text)
                .map(|r| Selector::Id(Arc::clone(r)))
                .ok_or_else(|| format!("recipient \"{text}\" is not in the directory"));
        }
        let mut parts = vec![Part::Text(format!("{prefix}:"))];
        let mut rest = rest;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("recipient \"{text}\": unclosed {{"))?
                + open;
            parts.push(Part::Field(
                FieldPath::parse(&rest[open + 1..close])
                    .map_err(|e| format!("recipient \"{text}\": {e}"))?,
            ));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Selector::Pattern {
            text: text.to_owned(),
            class,
            parts,
        })
    }

    pub fn text(&self) -> String {
        match self {
            Selector::Id(r) => r.id.to_string(),
            Selector::Pattern { text, .. } => text.clone(),
            Selector::Class(class) => format!("{class}:*"),
        }
    }

    /// The event fields a pattern fills its id from (none for other selectors).
    pub fn fields(&self) -> impl Iterator<Item = &FieldPath> {
        let parts = match self {
            Selector::Pattern { parts, .. } => parts.as_slice(),
            _ => &[],
        };
        parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f),
            Part::Text(_) => None,
        })
    }

    /// The classes this selector can reach.
    pub fn class(&self) -> RecipientClass {
        match self {
            Selector::Id(r) => r.class,
            Selector::Pattern { class, .. } | Selector::Class(class) => *class,
        }
    }

    /// The recipients this selector names for an event.
    pub fn select<'d>(
        &self,
        info: &Value,
        event: &Event,
        directory: &'d Directory,
        authority: &Authority,
    ) -> Selected<'d> {
        match self {
            Selector::Id(r) => match directory.get(r.id.as_str()) {
                Some(r) => Selected::Recipients(vec![r]),
                None => Selected::Unknown {
                    reason: "not in the directory".into(),
                },
            },
            Selector::Class(class) => Selected::Recipients(
                directory
                    .of_class(*class)
                    .filter(|r| {
                        authority.may_hear(r, event).is_ok() || authority.concerns(r, event)
                    })
                    .collect(),
            ),
            Selector::Pattern { parts, .. } => {
                let mut id = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => id.push_str(t),
                        Part::Field(f) => match f.text_of(info) {
                            Some(v) => id.push_str(&v),
                            None => {
                                return Selected::Unknown {
                                    reason: format!("the event has no usable {f}"),
                                };
                            }
                        },
                    }
                }
                match directory.get(&id) {
                    Some(r) => Selected::Recipients(vec![r]),
                    None => Selected::Unknown {
                        reason: format!("{id} is not in the directory"),
                    },
                }
            }
        }
    }
}

//! Template helpers: dates in UK style, Europe/London time, and joining lists.
//! Each returns a value (so the registry escapes it for HTML) and fails loudly on a
//! missing field rather than printing nothing.

use std::sync::LazyLock;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate};
use chrono_tz::Europe::London;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

pub fn register(registry: &mut Handlebars<'static>) {
    registry.register_helper("uk_date", Box::new(UkDate));
    registry.register_helper("uk_datetime", Box::new(UkDateTime));
    registry.register_helper("join", Box::new(Join));
}

fn fail(message: String) -> RenderError {
    RenderErrorReason::Other(message).into()
}

/// The text of parameter 0, or an error naming the missing field.
fn text_param<'a>(h: &'a Helper<'_>, helper: &str) -> Result<&'a str, RenderError> {
    let param = h
        .param(0)
        .ok_or_else(|| fail(format!("{helper} needs a field")))?;
    let name = param.relative_path().map_or("the field", String::as_str);
    if param.is_value_missing() {
        return Err(fail(format!(
            "{helper}: field {name} is missing from the event"
        )));
    }
    param
        .value()
        .as_str()
        .ok_or_else(|| fail(format!("{helper}: field {name} is not a date")))
}

/// Parsed once: the formats are fixed and parsing them is most of the cost of formatting.
static DATE: LazyLock<Vec<Item<'static>>> =
    LazyLock::new(|| StrftimeItems::new("%A %-d %B %Y").collect());
static DATE_TIME: LazyLock<Vec<Item<'static>>> =
    LazyLock::new(|| StrftimeItems::new("%A %-d %B %Y, %H:%M %Z").collect());

/// `2026-12-15` -> `Tuesday 15 December 2026`; a date-time gives its London date.
pub fn uk_date(text: &str) -> Option<String> {
    let date = match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(d) => d,
        Err(_) => DateTime::parse_from_rfc3339(text)
            .ok()?
            .with_timezone(&London)
            .date_naive(),
    };
    Some(date.format_with_items(DATE.iter()).to_string())
}

/// `2026-11-20T15:42:00Z` -> `Friday 20 November 2026, 15:42 GMT`.
pub fn uk_datetime(text: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(text)
        .ok()?
        .with_timezone(&London);
    Some(t.format_with_items(DATE_TIME.iter()).to_string())
}

struct UkDate;

impl HelperDef for UkDate {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = text_param(h, "uk_date")?;
        let out = uk_date(text).ok_or_else(|| fail("uk_date: not a date or date-time".into()))?;
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}

struct UkDateTime;

impl HelperDef for UkDateTime {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let text = text_param(h, "uk_datetime")?;
        let out = uk_datetime(text).ok_or_else(|| fail("uk_datetime: not a date-time".into()))?;
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}

/// `{{join info.conditions "; "}}`: the items of a list of strings, separated.
struct Join;

impl HelperDef for Join {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let param = h.param(0).ok_or_else(|| fail("join needs a list".into()))?;
        let name = param.relative_path().map_or("the field", String::as_str);
        if param.is_value_missing() {
            return Err(fail(format!(
                "join: field {name} is missing from the event"
            )));
        }
        let items = param
            .value()
            .as_array()
            .ok_or_else(|| fail(format!("join: field {name} is not a list")))?;
        let sep = h.param(1).and_then(|p| p.value().as_str()).unwrap_or(", ");
        let parts: Vec<String> = items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        Ok(ScopedJson::Derived(Value::String(parts.join(sep))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_the_uk_way_in_london_time() {
        assert_eq!(
            uk_date("2026-12-15").as_deref(),
            Some("Tuesday 15 December 2026")
        );
        assert_eq!(
            uk_date("2026-07-01T23:30:00Z").as_deref(),
            Some("Thursday 2 July 2026")
        );
        assert_eq!(
            uk_datetime("2026-11-20T15:42:00Z").as_deref(),
            Some("Friday 20 November 2026, 15:42 GMT")
        );
        assert_eq!(
            uk_datetime("2026-07-01T08:00:00Z").as_deref(),
            Some("Wednesday 1 July 2026, 09:00 BST")
        );
        assert_eq!(uk_date("next week"), None);
    }
}

//! Template helpers: dates in UK style, Europe/London time, joining lists, and whether a
//! field is there. Each returns a value (so the registry escapes it for HTML); those that
//! write a field fail loudly on a missing one rather than printing nothing.

use std::sync::LazyLock;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use chrono_tz::Europe::London;
use chrono_tz::OffsetName;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

/// Herald's helpers, by name: the one table both ways of rendering know them by.
pub const HERALD_HELPERS: [&str; 4] = ["uk_date", "uk_datetime", "join", "present"];

pub fn register(registry: &mut Handlebars<'static>) {
    for name in HERALD_HELPERS {
        let helper: Box<dyn HelperDef + Send + Sync> = match name {
            "uk_date" => Box::new(UkDate),
            "uk_datetime" => Box::new(UkDateTime),
            "present" => Box::new(Present),
            _ => Box::new(Join),
        };
        registry.register_helper(name, helper);
    }
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

/// Parsed once: the format is fixed and parsing it is most of the cost of reading a date.
static ISO_DATE: LazyLock<Vec<Item<'static>>> =
    LazyLock::new(|| StrftimeItems::new("%Y-%m-%d").collect());

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `Tuesday 15 December 2026` (chrono's `%A %-d %B %Y`, written directly: this runs for
/// every date in every email).
fn write_date(date: NaiveDate, out: &mut String) {
    let mut digits = itoa::Buffer::new();
    out.push_str(WEEKDAYS[date.weekday().num_days_from_monday() as usize]);
    out.push(' ');
    out.push_str(digits.format(date.day()));
    out.push(' ');
    out.push_str(MONTHS[date.month0() as usize]);
    out.push(' ');
    match date.year() {
        year @ 0..=9999 => {
            let year = digits.format(year);
            out.push_str(&"000"[year.len() - 1..]);
            out.push_str(year);
        }
        year => {
            use std::fmt::Write;
            let _ = write!(out, "{year:+05}");
        }
    }
}

/// `2026-12-15` read without chrono's general parser (most dates in events are in this
/// form); anything else, or a day that does not exist, is `None`.
fn iso_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)
}

/// `2026-12-15` -> `Tuesday 15 December 2026`; a date-time gives its London date.
pub fn uk_date(text: &str) -> Option<String> {
    let date = match iso_date(text) {
        Some(d) => d,
        None => {
            let mut parsed = Parsed::new();
            match chrono::format::parse(&mut parsed, text, ISO_DATE.iter())
                .ok()
                .and_then(|()| parsed.to_naive_date().ok())
            {
                Some(d) => d,
                None => DateTime::parse_from_rfc3339(text)
                    .ok()?
                    .with_timezone(&London)
                    .date_naive(),
            }
        }
    };
    let mut out = String::with_capacity(32);
    write_date(date, &mut out);
    Some(out)
}

/// `2026-11-20T15:42:00Z` -> `Friday 20 November 2026, 15:42 GMT`.
pub fn uk_datetime(text: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(text)
        .ok()?
        .with_timezone(&London);
    let mut out = String::with_capacity(40);
    write_date(t.date_naive(), &mut out);
    let two = |n: u32, out: &mut String| {
        out.push(char::from(b'0' + (n / 10 % 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    };
    out.push_str(", ");
    two(t.hour(), &mut out);
    out.push(':');
    two(t.minute(), &mut out);
    out.push(' ');
    out.push_str(t.offset().abbreviation().unwrap_or(""));
    Some(out)
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

/// The items of a list as `join` writes them: strings as they are, anything else as JSON,
/// with `separator` between them.
pub fn join(items: &[Value], separator: &str) -> String {
    let mut text = String::new();
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            text.push_str(separator);
        }
        match v.as_str() {
            Some(s) => text.push_str(s),
            None => text.push_str(&v.to_string()),
        }
    }
    text
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
        Ok(ScopedJson::Derived(Value::String(join(items, sep))))
    }
}

/// `{{#if (present field)}}`: whether the event has the field, whatever its value. `#if`
/// alone cannot tell a field that is `false` from one that is not there (both are false), and
/// strict mode refuses to look at a missing field any other way; this can, so a template can
/// write something for `false` and nothing for an event (an earlier version) without the field.
struct Present;

impl HelperDef for Present {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let param = h
            .param(0)
            .ok_or_else(|| fail("present needs a field".into()))?;
        Ok(ScopedJson::Derived(Value::Bool(!param.is_value_missing())))
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
        // The quick reading of YYYY-MM-DD gives way to chrono's on anything else.
        assert_eq!(uk_date("2026-02-30"), None);
        assert_eq!(uk_date("2026-1a-01"), None);
    }

    #[test]
    fn dates_read_as_chrono_formats_them() {
        let mut day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let mut at = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
        while day.year() < 2029 {
            let text = day.format("%Y-%m-%d").to_string();
            assert_eq!(
                uk_date(&text).unwrap(),
                day.format("%A %-d %B %Y").to_string()
            );
            let rfc = at.to_rfc3339();
            assert_eq!(
                uk_datetime(&rfc).unwrap(),
                at.with_timezone(&London)
                    .format("%A %-d %B %Y, %H:%M %Z")
                    .to_string(),
                "{rfc}"
            );
            day = day.succ_opt().unwrap();
            at += chrono::Duration::minutes(397);
        }
        for year in [-1, 0, 99, 999, 10000] {
            let date = NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
            let mut out = String::new();
            write_date(date, &mut out);
            assert_eq!(out, date.format("%A %-d %B %Y").to_string());
        }
    }

    /// The contract's dates run from 1900 to 2099: at both ends and in between, times read in
    /// a London zone (never the local mean time of before 1847), with summer time to the end.
    #[test]
    fn dates_at_the_edges_of_the_contract_read_in_london_time() {
        for (text, date) in [
            ("1900-01-01", "Monday 1 January 1900"),
            ("2099-12-31", "Thursday 31 December 2099"),
            ("2000-02-29", "Tuesday 29 February 2000"),
            ("2096-02-29", "Wednesday 29 February 2096"),
        ] {
            assert_eq!(uk_date(text).as_deref(), Some(date));
        }
        for (text, at) in [
            (
                "1900-01-01T00:00:00+23:59",
                "Sunday 31 December 1899, 00:01 GMT",
            ),
            (
                "2099-12-31T23:59:59-23:59",
                "Friday 1 January 2100, 23:58 GMT",
            ),
            ("2099-07-01T12:00:00Z", "Wednesday 1 July 2099, 13:00 BST"),
            (
                "2026-03-29T01:30:00+05:45",
                "Saturday 28 March 2026, 19:45 GMT",
            ),
            (
                "2026-11-20t15:42:00.123456789012z",
                "Friday 20 November 2026, 15:42 GMT",
            ),
        ] {
            assert_eq!(uk_datetime(text).as_deref(), Some(at), "{text}");
        }
        let mut day = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        while day.year() < 2100 {
            for time in ["00:00:00+14:00", "12:00:00Z", "23:59:59-12:00"] {
                let text = format!("{day}T{time}");
                let at = uk_datetime(&text).unwrap();
                assert!(
                    ["GMT", "BST", "BDST"].iter().any(|z| at.ends_with(z)),
                    "{text}: {at}"
                );
            }
            day += chrono::Duration::days(5);
        }
    }
}

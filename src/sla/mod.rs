//! Deadlines: the promises agencies made each other, turned into instants.
//!
//! The forms (see the brief, "Deadlines, precisely"):
//! - `within 24h`: no later than `occurredAt` + the duration.
//! - `within 1 working day` / `within N working days`: the same Europe/London clock time N
//!   working days later, skipping weekends and bank holidays of England and Wales.
//! - `on the day of <field>`: before the end of that calendar day, Europe/London.
//! - `28d notice before <field>` (and `before <field>`, no notice): no later than the field
//!   less the notice. For a date field and whole days, that is the end of the day so many days
//!   before. If the event itself happened after that, it is short notice, not a breach.

mod calendar;

use std::fmt;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Europe::London;
use serde_json::Value;

pub use calendar::{Calendar, CalendarError};

use crate::field::FieldPath;

/// A deadline rule from routes.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlaRule {
    Within(StdDuration),
    WithinWorkingDays(u32),
    OnTheDayOf(FieldPath),
    NoticeBefore {
        notice: StdDuration,
        field: FieldPath,
    },
}

/// A computed deadline for one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadline {
    /// Delivered at or before this instant is on time.
    pub due: DateTime<Utc>,
    /// The event arrived too late for the notice promised: deliver at once and count apart.
    pub short_notice: bool,
}

/// Why a deadline could not be computed for an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlaError {
    #[error("the deadline needs field {0}, which the event does not have")]
    FieldMissing(String),
    #[error("field {0} is not a date or date-time")]
    NotADate(String),
    #[error(transparent)]
    Calendar(#[from] CalendarError),
    #[error("the deadline falls outside the representable range")]
    OutOfRange,
}

const DAY: u64 = 86_400;

impl SlaRule {
    /// Parses the text of a route's `sla`.
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<SlaRule, String> {
        SlaRule::parse_words(text).map_err(|e| {
            // Words other deadline systems use for a working day.
            let lower = text.to_lowercase();
            let meant = [
                "workday",
                "work day",
                "business day",
                "weekday",
                "working-day",
            ]
            .iter()
            .find(|w| lower.contains(*w));
            match meant {
                Some(w) => format!("{e} (\"{w}\": did you mean \"working day\"?)"),
                None => e,
            }
        })
    }

    // String error: words for `herald check`, which adds the file and key; no caller branches.
    fn parse_words(text: &str) -> Result<SlaRule, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let field = |s: &[&str]| FieldPath::parse(&s.join(" "));
        match words.as_slice() {
            ["within", n, "working", "day" | "days"] => {
                let n: u32 = n
                    .parse()
                    .map_err(|_| format!("\"{n}\" is not a whole number of working days"))?;
                if n == 0 {
                    return Err("a working-day deadline needs at least 1 working day".into());
                }
                Ok(SlaRule::WithinWorkingDays(n))
            }
            ["within", span @ ..] if !span.is_empty() => {
                Ok(SlaRule::Within(duration(&span.join(" "))?))
            }
            ["on", "the", "day", "of", rest @ ..] if !rest.is_empty() => {
                Ok(SlaRule::OnTheDayOf(field(rest)?))
            }
            ["before", rest @ ..] if !rest.is_empty() => Ok(SlaRule::NoticeBefore {
                notice: StdDuration::ZERO,
                field: field(rest)?,
            }),
            _ if words.windows(2).any(|w| w == ["notice", "before"]) => {
                let at = words
                    .windows(2)
                    .position(|w| w == ["notice", "before"])
                    .unwrap_or_default();
                let (span, rest) = (&words[..at], &words[at + 2..]);
                if span.is_empty() || rest.is_empty() {
                    return Err(format!(
                        "sla \"{text}\": write it as \"28d notice before <field>\""
                    ));
                }
                Ok(SlaRule::NoticeBefore {
                    notice: duration(&span.join(" "))?,
                    field: field(rest)?,
                })
            }
            _ => Err(format!(
                "cannot read sla \"{text}\"; the forms are \"within 24h\", \"within 1 working day\", \
                 \"on the day of <field>\", \"28d notice before <field>\", \"before <field>\""
            )),
        }
    }

    /// The field the rule reads, if any.
    pub fn field(&self) -> Option<&FieldPath> {
        match self {
            SlaRule::OnTheDayOf(f) | SlaRule::NoticeBefore { field: f, .. } => Some(f),
            _ => None,
        }
    }

    /// The deadline for an event that happened at `occurred_at` with these `info` fields.
    pub fn deadline(
        &self,
        occurred_at: DateTime<Utc>,
        info: &Value,
        calendar: &Calendar,
    ) -> Result<Deadline, SlaError> {
        let due = match self {
            SlaRule::Within(span) => occurred_at
                .checked_add_signed(Duration::from_std(*span).map_err(|_| SlaError::OutOfRange)?)
                .ok_or(SlaError::OutOfRange)?,
            SlaRule::WithinWorkingDays(n) => {
                let local = occurred_at.with_timezone(&London).naive_local();
                let date = calendar.add_working_days(local.date(), *n)?;
                london(date.and_time(local.time()))?
            }
            SlaRule::OnTheDayOf(field) => end_of_day(when(field, info)?.date())?,
            SlaRule::NoticeBefore { notice, field } => {
                let whole_days = notice.as_secs() % DAY == 0 && notice.subsec_nanos() == 0;
                let days = chrono::Days::new(notice.as_secs() / DAY);
                match when(field, info)? {
                    When::Date(date) if whole_days => {
                        end_of_day(date.checked_sub_days(days).ok_or(SlaError::OutOfRange)?)?
                    }
                    when => {
                        let rest = Duration::seconds((notice.as_secs() % DAY) as i64)
                            + Duration::nanoseconds(i64::from(notice.subsec_nanos()));
                        let local = when
                            .local()
                            .checked_sub_days(days)
                            .ok_or(SlaError::OutOfRange)?;
                        london(local)?
                            .checked_sub_signed(rest)
                            .ok_or(SlaError::OutOfRange)?
                    }
                }
            }
        };
        // Past year 9999 an instant has no RFC 3339 form for payloads and templates.
        if chrono::Datelike::year(&due) > 9999 {
            return Err(SlaError::OutOfRange);
        }
        let short_notice = matches!(self, SlaRule::NoticeBefore { .. }) && occurred_at > due;
        Ok(Deadline { due, short_notice })
    }
}

impl fmt::Display for SlaRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlaRule::Within(d) => write!(f, "within {}", Span(*d)),
            SlaRule::WithinWorkingDays(1) => f.write_str("within 1 working day"),
            SlaRule::WithinWorkingDays(n) => write!(f, "within {n} working days"),
            SlaRule::OnTheDayOf(field) => write!(f, "on the day of {field}"),
            SlaRule::NoticeBefore { notice, field } if notice.is_zero() => {
                write!(f, "before {field}")
            }
            SlaRule::NoticeBefore { notice, field } => {
                write!(f, "{} notice before {field}", Span(*notice))
            }
        }
    }
}

/// A duration as routes.toml writes it (`5m`), for names and messages.
pub fn format_span(d: StdDuration) -> String {
    Span(d).to_string()
}

/// A duration as routes.toml would write it: `28d`, `24h`, `90m` (a single day as `24h`), else
/// humantime's form.
struct Span(StdDuration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match (secs, self.0.subsec_nanos()) {
            (s, 0) if s >= 2 * DAY && s % DAY == 0 => write!(f, "{}d", s / DAY),
            (s, 0) if s > 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
            (s, 0) if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{}", humantime::format_duration(self.0)),
        }
    }
}

// String error: words for `herald check`, which adds the file and key; no caller branches.
fn duration(text: &str) -> Result<StdDuration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("\"{text}\": {e}"))?;
    if d.is_zero() && !text.starts_with('0') {
        return Err(format!("\"{text}\" is not a duration"));
    }
    Ok(d)
}

/// A date field's value: a calendar date, or an instant seen in Europe/London.
enum When {
    Date(NaiveDate),
    Instant(NaiveDateTime),
}

impl When {
    fn date(&self) -> NaiveDate {
        match self {
            When::Date(d) => *d,
            When::Instant(t) => t.date(),
        }
    }

    /// Local London time; a date is its first moment.
    fn local(&self) -> NaiveDateTime {
        match self {
            When::Date(d) => d.and_time(NaiveTime::MIN),
            When::Instant(t) => *t,
        }
    }
}

fn when(field: &FieldPath, info: &Value) -> Result<When, SlaError> {
    let value = field
        .lookup(info)
        .ok_or_else(|| SlaError::FieldMissing(field.to_string()))?;
    let text = value
        .as_str()
        .ok_or_else(|| SlaError::NotADate(field.to_string()))?;
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(When::Date(date));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| When::Instant(t.with_timezone(&London).naive_local()))
        .map_err(|_| SlaError::NotADate(field.to_string()))
}

/// The last second of a day in Europe/London.
fn end_of_day(date: NaiveDate) -> Result<DateTime<Utc>, SlaError> {
    let last_second = NaiveTime::from_hms_opt(23, 59, 59).ok_or(SlaError::OutOfRange)?;
    london(date.and_time(last_second))
}

/// A Europe/London wall-clock time as an instant. In the autumn overlap the earlier instant is
/// taken (the stricter deadline); a time in the spring gap moves an hour on, to the clock time
/// that exists.
pub fn london(local: NaiveDateTime) -> Result<DateTime<Utc>, SlaError> {
    match London.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
        LocalResult::None => match London.from_local_datetime(&(local + Duration::hours(1))) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
            LocalResult::None => Err(SlaError::OutOfRange),
        },
    }
}

#[cfg(test)]
mod tests;

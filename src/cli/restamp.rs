//! `herald publish --now`: an event file re-stamped as if it happened now, so an example whose
//! dates have passed can be published again and meet its deadlines as it did when written.
//!
//! What changes, and nothing else:
//! - the envelope's `occurredAt` and `publishedAt` become the current time, in whole seconds,
//!   written in the offset each had (`Z` stays `Z`, `+01:00` stays `+01:00`);
//! - every other string in the event that is wholly an RFC 3339 date-time moves by as much as
//!   `occurredAt` did, in the offset it had;
//! - every string that is wholly a date (`YYYY-MM-DD`) moves by as many days as `occurredAt`'s
//!   Europe/London date did, `dateOfBirth` too (the person's age at the event stays the same).
//!
//! So a hearing two days after `occurredAt` is still two days after it, and a deadline that was
//! met, short notice or not is so again. Keys, the file's layout and every other value stay as
//! written; the file itself is not changed.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, SecondsFormat, Utc};
use chrono_tz::Europe::London;

/// Why a file cannot be re-stamped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestampError {
    #[error("--now needs a JSON event; the file is not UTF-8")]
    NotUtf8,
    #[error("--now needs a JSON event; this is not JSON: {0}")]
    NotJson(String),
    #[error("--now needs the event's occurredAt, an RFC 3339 date-time with an offset")]
    NoOccurredAt,
    #[error("--now would move a date out of the calendar's range")]
    OutOfRange,
}

/// The event in `body` re-stamped to `now` (see the module's header for what changes).
pub fn restamp(body: &[u8], now: DateTime<Utc>) -> Result<Vec<u8>, RestampError> {
    let text = std::str::from_utf8(body).map_err(|_| RestampError::NotUtf8)?;
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RestampError::NotJson(e.to_string()))?;
    let occurred = doc
        .get("occurredAt")
        .and_then(serde_json::Value::as_str)
        .and_then(date_time)
        .ok_or(RestampError::NoOccurredAt)?;
    // Whole seconds, as agencies write their times.
    let now = DateTime::from_timestamp(now.timestamp(), 0).ok_or(RestampError::OutOfRange)?;
    let shift = Shift {
        now,
        by: now.signed_duration_since(occurred),
        days: Duration::days(
            (now.with_timezone(&London).date_naive()
                - occurred.with_timezone(&London).date_naive())
            .num_days(),
        ),
    };
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    // Nesting outside strings, and the last key read: a value at depth 1 is the top-level
    // object's, and its key the one just read.
    let mut depth = 0usize;
    let mut last_key = "";
    while let Some(i) = rest.find(['"', '{', '}', '[', ']']) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        match from.as_bytes()[0] {
            b'"' => {
                let end = string_end(from);
                let content = &from[1..end - 1];
                let after = &from[end..];
                if after.trim_start().starts_with(':') {
                    last_key = content;
                    out.push_str(&from[..end]);
                } else {
                    let published_at = depth == 1 && last_key == "publishedAt";
                    match shift.value(content, published_at)? {
                        Some(moved) => {
                            out.push('"');
                            out.push_str(&moved);
                            out.push('"');
                        }
                        None => out.push_str(&from[..end]),
                    }
                }
                rest = after;
                continue;
            }
            b'{' | b'[' => depth += 1,
            _ => depth = depth.saturating_sub(1),
        }
        out.push_str(&from[..1]);
        rest = &from[1..];
    }
    out.push_str(rest);
    Ok(out.into_bytes())
}

/// How far the event moves.
struct Shift {
    now: DateTime<Utc>,
    /// For date-times: from the old `occurredAt` to now.
    by: Duration,
    /// For dates: from the old `occurredAt`'s London date to today's.
    days: Duration,
}

impl Shift {
    /// The moved text of a string value, or `None` when it is neither a date nor a date-time.
    fn value(&self, text: &str, is_published_at: bool) -> Result<Option<String>, RestampError> {
        if let Some(at) = date_time(text) {
            let moved = if is_published_at {
                self.now.with_timezone(at.offset())
            } else {
                at.checked_add_signed(self.by)
                    .ok_or(RestampError::OutOfRange)?
            };
            let zulu = text.ends_with(['Z', 'z']);
            return Ok(Some(moved.to_rfc3339_opts(SecondsFormat::AutoSi, zulu)));
        }
        if let Some(day) = date(text) {
            let moved = day
                .checked_add_signed(self.days)
                .ok_or(RestampError::OutOfRange)?;
            return Ok(Some(moved.format("%Y-%m-%d").to_string()));
        }
        Ok(None)
    }
}

/// The byte just past the closing quote of the JSON string that `from` starts with (the text
/// has been parsed as JSON, so the string is closed).
fn string_end(from: &str) -> usize {
    let bytes = from.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// A string that is wholly an RFC 3339 date-time with an offset (`2026-11-20T15:42:00Z`).
fn date_time(text: &str) -> Option<DateTime<FixedOffset>> {
    let b = text.as_bytes();
    let shaped = b.len() >= 20 && b[4] == b'-' && matches!(b[10], b'T' | b't');
    shaped
        .then(|| DateTime::parse_from_rfc3339(text).ok())
        .flatten()
}

/// A string that is wholly a date, `YYYY-MM-DD`.
fn date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn restamped(doc: &str, now: &str) -> String {
        String::from_utf8(restamp(doc.as_bytes(), at(now)).unwrap()).unwrap()
    }

    #[test]
    fn the_envelope_is_now_and_every_other_date_keeps_its_distance() {
        let doc = r#"{
  "eventType": "prison.temporary-release.granted",
  "occurredAt": "2026-11-23T10:05:00Z",
  "publishedAt": "2026-11-23T10:06:30Z",
  "description": "2026-11-23",
  "additionalInformation": {
    "offender": { "dateOfBirth": "1988-03-14", "name": { "given": "A", "family": "B" } },
    "leavesAt": "2026-11-27T08:30:00+01:00",
    "returnsBy": "2026-11-27T17:00:00.250Z",
    "hearings": ["2026-11-25", { "publishedAt": "2026-11-24T09:00:00Z" }],
    "warrantId": "LEEDSMC-W-2026-004512"
  }
}"#;
        let out = restamped(doc, "2025-06-01T09:30:45.987Z");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["occurredAt"], "2025-06-01T09:30:45Z");
        assert_eq!(v["publishedAt"], "2025-06-01T09:30:45Z");
        let info = &v["additionalInformation"];
        // As long after occurredAt as before, in the offset each was written with.
        assert_eq!(info["leavesAt"], "2025-06-05T07:55:45+01:00");
        assert_eq!(info["returnsBy"], "2025-06-05T16:25:45.250Z");
        // Dates move by whole London days: 2026-11-23 to 2025-06-01 is 540 days.
        assert_eq!(info["hearings"][0], "2025-06-03");
        assert_eq!(info["offender"]["dateOfBirth"], "1986-09-21");
        // A publishedAt below the envelope is an ordinary date-time; the envelope's text is a
        // date, so it moves too; everything else stays.
        assert_eq!(info["hearings"][1]["publishedAt"], "2025-06-02T08:25:45Z");
        assert_eq!(v["description"], "2025-06-01");
        assert_eq!(info["warrantId"], "LEEDSMC-W-2026-004512");
        assert_eq!(
            info["offender"]["name"],
            json!({ "given": "A", "family": "B" })
        );
        // The layout is the file's: only digits changed.
        let shape = |s: &str| s.replace(|c: char| c.is_ascii_digit(), "");
        assert_eq!(shape(&out), shape(doc));
    }

    #[test]
    fn an_offset_is_kept_and_the_date_shift_follows_london() {
        let doc = r#"{"occurredAt":"2026-10-05T14:20:00+01:00","publishedAt":"2026-10-05T14:21:05+01:00",
            "additionalInformation":{"receivedAt":"2026-10-05T14:20:00+01:00","releaseDate":"2026-10-06"}}"#;
        // 00:30 in London on 1 June (BST) is 23:30 UTC the day before: London's date counts.
        let out = restamped(doc, "2025-05-31T23:30:00Z");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["occurredAt"], "2025-06-01T00:30:00+01:00");
        assert_eq!(v["publishedAt"], "2025-06-01T00:30:00+01:00");
        assert_eq!(
            v["additionalInformation"]["receivedAt"],
            "2025-06-01T00:30:00+01:00"
        );
        assert_eq!(v["additionalInformation"]["releaseDate"], "2025-06-02");
    }

    #[test]
    fn strings_with_escapes_and_dates_as_keys_are_left_alone() {
        let doc =
            r#"{"occurredAt":"2026-01-01T00:00:00Z","2026-01-01":"a \"2026-01-01\" b","x":"\\"}"#;
        let out = restamped(doc, "2026-01-02T00:00:00Z");
        assert_eq!(
            out,
            r#"{"occurredAt":"2026-01-02T00:00:00Z","2026-01-01":"a \"2026-01-01\" b","x":"\\"}"#
        );
    }

    #[test]
    fn what_cannot_be_re_stamped_says_why() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(restamp(b"\xff", now), Err(RestampError::NotUtf8));
        assert!(matches!(
            restamp(b"{\"occurredAt\":", now),
            Err(RestampError::NotJson(_))
        ));
        for doc in [
            "{}",
            "[]",
            r#"{"occurredAt":"2026-01-01"}"#,
            r#"{"occurredAt":"2026-01-01T00:00:00"}"#,
            r#"{"occurredAt":5}"#,
        ] {
            assert_eq!(
                restamp(doc.as_bytes(), now),
                Err(RestampError::NoOccurredAt),
                "{doc}"
            );
        }
    }
}

//! Deadlines around weekends, bank holidays, clock changes and year ends.

use super::*;
use serde_json::json;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn due(rule: &str, occurred: &str, info: Value) -> DateTime<Utc> {
    deadline(rule, occurred, info).due
}

fn deadline(rule: &str, occurred: &str, info: Value) -> Deadline {
    SlaRule::parse(rule)
        .unwrap()
        .deadline(at(occurred), &info, &Calendar::england_and_wales())
        .unwrap()
}

#[test]
fn within_a_duration_is_exact_even_across_the_spring_clock_change() {
    assert_eq!(
        due("within 24h", "2026-03-28T12:00:00Z", json!({})),
        at("2026-03-29T12:00:00Z")
    );
    assert_eq!(
        due("within 1h", "2026-11-20T15:42:00Z", json!({})),
        at("2026-11-20T16:42:00Z")
    );
}

#[test]
fn one_working_day_from_a_friday_is_the_monday() {
    assert_eq!(
        due("within 1 working day", "2026-11-20T15:42:00Z", json!({})),
        at("2026-11-23T15:42:00Z")
    );
}

#[test]
fn working_days_keep_the_london_clock_time_across_clock_changes() {
    // Friday 10:00 GMT before the last Sunday of March -> Monday 10:00 BST.
    assert_eq!(
        due("within 1 working day", "2026-03-27T10:00:00Z", json!({})),
        at("2026-03-30T09:00:00Z")
    );
    // Friday 15:42 BST before the last Sunday of October -> Monday 15:42 GMT.
    assert_eq!(
        due("within 1 working day", "2026-10-23T14:42:00Z", json!({})),
        at("2026-10-26T15:42:00Z")
    );
}

#[test]
fn easter_is_skipped() {
    // Maundy Thursday 09:00 BST -> Tuesday after Easter Monday.
    assert_eq!(
        due("within 1 working day", "2026-04-02T08:00:00Z", json!({})),
        at("2026-04-07T08:00:00Z")
    );
}

#[test]
fn christmas_and_boxing_day_substitutes_are_skipped() {
    // 2026: Christmas Friday, Boxing Day Saturday (substitute Monday 28th).
    assert_eq!(
        due("within 1 working day", "2026-12-24T16:00:00Z", json!({})),
        at("2026-12-29T16:00:00Z")
    );
    // 2027: both fall at the weekend; substitutes Monday 27th and Tuesday 28th.
    assert_eq!(
        due("within 1 working day", "2027-12-24T12:00:00Z", json!({})),
        at("2027-12-29T12:00:00Z")
    );
    // Across the year end: New Year's Day 2028 is a Saturday, substitute Monday 3rd.
    assert_eq!(
        due("within 1 working day", "2027-12-31T12:00:00Z", json!({})),
        at("2028-01-04T12:00:00Z")
    );
}

#[test]
fn several_working_days_over_a_bank_holiday_weekend() {
    // Friday before the spring bank holiday (Monday 25 May 2026): Tuesday, Wednesday.
    assert_eq!(
        due("within 2 working days", "2026-05-22T11:00:00Z", json!({})),
        at("2026-05-27T11:00:00Z")
    );
}

#[test]
fn the_calendar_day_is_london_not_utc() {
    // 23:30 UTC on Friday 5 June is 00:30 BST on Saturday: the next working day is Monday.
    assert_eq!(
        due("within 1 working day", "2026-06-05T23:30:00Z", json!({})),
        at("2026-06-07T23:30:00Z")
    );
}

#[test]
fn on_the_day_ends_at_midnight_london() {
    let rule = "on the day of releaseDate";
    assert_eq!(
        due(
            rule,
            "2026-03-01T09:00:00Z",
            json!({"releaseDate": "2026-03-29"})
        ),
        at("2026-03-29T22:59:59Z")
    );
    assert_eq!(
        due(
            rule,
            "2026-10-01T09:00:00Z",
            json!({"releaseDate": "2026-10-25"})
        ),
        at("2026-10-25T23:59:59Z")
    );
    let rule = "on the day of releasedAt";
    assert_eq!(
        due(
            rule,
            "2026-07-01T23:30:00Z",
            json!({"releasedAt": "2026-07-01T23:30:00Z"})
        ),
        at("2026-07-02T22:59:59Z")
    );
}

#[test]
fn notice_before_a_date_ends_that_many_days_before() {
    let rule = "28d notice before releaseDate";
    let info = json!({"releaseDate": "2026-12-15"});
    let early = deadline(rule, "2026-11-10T10:00:00Z", info.clone());
    assert_eq!(
        early,
        Deadline {
            due: at("2026-11-17T23:59:59Z"),
            short_notice: false
        }
    );
    let late = deadline(rule, "2026-11-20T10:00:00Z", info);
    assert_eq!(
        late,
        Deadline {
            due: at("2026-11-17T23:59:59Z"),
            short_notice: true
        }
    );
    // Into summer time: 20 April 2026 less 28 days is 23 March, still GMT.
    assert_eq!(
        due(
            rule,
            "2026-01-10T10:00:00Z",
            json!({"releaseDate": "2026-04-20"})
        ),
        at("2026-03-23T23:59:59Z")
    );
    assert_eq!(
        due(
            rule,
            "2026-01-10T10:00:00Z",
            json!({"releaseDate": "2026-11-10"})
        ),
        at("2026-10-13T22:59:59Z")
    );
}

#[test]
fn before_an_instant_and_notice_in_hours() {
    let info = json!({"leavesAt": "2026-12-01T09:00:00Z"});
    assert_eq!(
        deadline("before leavesAt", "2026-11-30T09:00:00Z", info.clone()),
        Deadline {
            due: at("2026-12-01T09:00:00Z"),
            short_notice: false
        }
    );
    assert!(deadline("before leavesAt", "2026-12-01T09:00:01Z", info.clone()).short_notice);
    assert_eq!(
        due("6h notice before leavesAt", "2026-11-20T09:00:00Z", info),
        at("2026-12-01T03:00:00Z")
    );
    // Two days before 09:00 BST on Monday 30 March is 09:00 GMT on Saturday 28 March.
    let info = json!({"leavesAt": "2026-03-30T09:00:00+01:00"});
    assert_eq!(
        due("48h notice before leavesAt", "2026-03-01T09:00:00Z", info),
        at("2026-03-28T09:00:00Z")
    );
}

#[test]
fn missing_or_wrong_fields_and_uncovered_years_are_errors() {
    let cal = Calendar::england_and_wales();
    let rule = SlaRule::parse("on the day of releaseDate").unwrap();
    assert_eq!(
        rule.deadline(at("2026-01-01T00:00:00Z"), &json!({}), &cal),
        Err(SlaError::FieldMissing("releaseDate".into()))
    );
    assert_eq!(
        rule.deadline(
            at("2026-01-01T00:00:00Z"),
            &json!({"releaseDate": "soon"}),
            &cal
        ),
        Err(SlaError::NotADate("releaseDate".into()))
    );
    let rule = SlaRule::parse("within 1 working day").unwrap();
    assert!(matches!(
        rule.deadline(at("2031-03-03T00:00:00Z"), &json!({}), &cal),
        Err(SlaError::Calendar(_))
    ));
}

#[test]
fn rules_parse_and_print_back() {
    for (text, shown) in [
        ("within 24 hours", "within 24h"),
        (
            "28 days notice before releaseDate",
            "28d notice before releaseDate",
        ),
        ("within 90min", "within 90m"),
        ("within 1h 30s", "within 1h 30s"),
    ] {
        assert_eq!(SlaRule::parse(text).unwrap().to_string(), shown);
    }
    for text in [
        "within 24h",
        "within 1 working day",
        "within 3 working days",
        "on the day of releasedAt",
        "28days notice before releaseDate",
        "before leavesAt",
    ] {
        let rule = SlaRule::parse(text).unwrap();
        assert_eq!(SlaRule::parse(&rule.to_string()).unwrap(), rule, "{text}");
    }
    for bad in [
        "",
        "soon",
        "within",
        "within 0 working days",
        "within two working days",
        "within 3 fortnights",
        "28d notice before",
        "on the day of release date!",
    ] {
        assert!(SlaRule::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn deadlines_at_the_edges_of_the_contracts_dates_are_london_times() {
    // 1900-01-01 and 2099-12-31 are the first and last dates an event may carry.
    assert_eq!(
        due(
            "on the day of releaseDate",
            "2026-11-20T15:42:00Z",
            json!({"releaseDate": "1900-01-01"})
        ),
        at("1900-01-01T23:59:59Z")
    );
    assert_eq!(
        due(
            "28d notice before releaseDate",
            "2026-11-20T15:42:00Z",
            json!({"releaseDate": "1900-01-01"})
        ),
        at("1899-12-04T23:59:59Z")
    );
    let last = deadline(
        "28d notice before releaseDate",
        "2099-12-31T23:59:59-23:59",
        json!({"releaseDate": "2099-12-31"}),
    );
    assert_eq!(last.due, at("2099-12-03T23:59:59Z"));
    assert!(last.short_notice);
    assert_eq!(
        due(
            "on the day of releasedAt",
            "2026-11-20T15:42:00Z",
            json!({"releasedAt": "2099-07-01T12:00:00Z"})
        ),
        at("2099-07-01T22:59:59Z"),
        "summer time to the end of the range"
    );
    assert_eq!(
        due("within 24h", "2099-12-31T23:59:59-23:59", json!({})),
        at("2100-01-02T23:58:59Z")
    );
    // Beyond the bank holiday calendar a working-day deadline is unknown, not wrong.
    let beyond = SlaRule::parse("within 1 working day").unwrap().deadline(
        at("2099-12-31T12:00:00Z"),
        &json!({}),
        &Calendar::england_and_wales(),
    );
    assert!(matches!(beyond, Err(SlaError::Calendar(_))), "{beyond:?}");
}

//! Working days in England and Wales: Monday to Friday, less bank holidays.

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate, Weekday};
use serde::Deserialize;

/// The England and Wales bank holidays shipped with Herald (2020 to 2030).
pub const BUILT_IN: &str = include_str!("../../data/bank-holidays.json");

/// Bank holidays and the years they are known for.
#[derive(Debug, Clone)]
pub struct Calendar {
    holidays: BTreeSet<NaiveDate>,
    first_year: i32,
    last_year: i32,
}

/// A calendar file that cannot be used, or a date it does not cover.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CalendarError {
    #[error("bank holiday file: {0}")]
    File(String),
    #[error("the bank holiday calendar covers {first} to {last}; {year} is outside it")]
    NotCovered { year: i32, first: i32, last: i32 },
}

/// The GOV.UK format: either the whole file (`{"england-and-wales": {...}, ...}`) or one division.
#[derive(Deserialize)]
#[serde(untagged)]
enum HolidayFile {
    Whole {
        #[serde(rename = "england-and-wales")]
        england_and_wales: Division,
    },
    Division(Division),
}

#[derive(Deserialize)]
struct Division {
    events: Vec<Holiday>,
}

#[derive(Deserialize)]
struct Holiday {
    date: NaiveDate,
}

impl Calendar {
    /// The built-in England and Wales calendar.
    pub fn england_and_wales() -> Calendar {
        // The built-in file is part of the source and tested; a failure here is a build defect.
        Calendar::parse(BUILT_IN).unwrap_or_else(|e| panic!("built-in bank holidays: {e}"))
    }

    /// Reads the text of a GOV.UK-format file (the caller reads the file).
    pub fn parse(text: &str) -> Result<Calendar, CalendarError> {
        let file: HolidayFile =
            serde_json::from_str(text).map_err(|e| CalendarError::File(e.to_string()))?;
        let division = match file {
            HolidayFile::Whole { england_and_wales } => england_and_wales,
            HolidayFile::Division(d) => d,
        };
        let holidays: BTreeSet<NaiveDate> = division.events.into_iter().map(|h| h.date).collect();
        let (Some(first), Some(last)) = (holidays.first(), holidays.last()) else {
            return Err(CalendarError::File("no bank holidays listed".into()));
        };
        Ok(Calendar {
            first_year: first.year(),
            last_year: last.year(),
            holidays,
        })
    }

    /// The years this calendar knows, inclusive.
    pub fn years(&self) -> (i32, i32) {
        (self.first_year, self.last_year)
    }

    pub fn is_bank_holiday(&self, date: NaiveDate) -> bool {
        self.holidays.contains(&date)
    }

    /// Whether `date` is a working day; an error if the calendar does not cover its year.
    pub fn is_working_day(&self, date: NaiveDate) -> Result<bool, CalendarError> {
        if !(self.first_year..=self.last_year).contains(&date.year()) {
            return Err(CalendarError::NotCovered {
                year: date.year(),
                first: self.first_year,
                last: self.last_year,
            });
        }
        Ok(!matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.is_bank_holiday(date))
    }

    /// The date `n` working days after `date` (`date` itself does not count).
    pub fn add_working_days(
        &self,
        mut date: NaiveDate,
        n: u32,
    ) -> Result<NaiveDate, CalendarError> {
        let mut left = n;
        while left > 0 {
            date = date.succ_opt().ok_or(CalendarError::NotCovered {
                year: date.year(),
                first: self.first_year,
                last: self.last_year,
            })?;
            if self.is_working_day(date)? {
                left -= 1;
            }
        }
        Ok(date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn built_in_calendar_covers_2020_to_2030() {
        let cal = Calendar::england_and_wales();
        assert_eq!(cal.years(), (2020, 2030));
        for holiday in [
            "2026-04-03",
            "2026-04-06",
            "2026-12-25",
            "2026-12-28",
            "2027-12-27",
            "2027-12-28",
            "2028-01-03",
        ] {
            assert!(cal.is_bank_holiday(d(holiday)), "{holiday}");
        }
        assert!(
            !cal.is_bank_holiday(d("2026-12-26")),
            "Boxing Day 2026 is a Saturday; its substitute is the 28th"
        );
    }

    #[test]
    fn working_days_skip_weekends_and_holidays() {
        let cal = Calendar::england_and_wales();
        // Friday -> Monday.
        assert_eq!(
            cal.add_working_days(d("2026-11-20"), 1),
            Ok(d("2026-11-23"))
        );
        // Thursday before Good Friday 2026 -> Tuesday after Easter Monday.
        assert_eq!(
            cal.add_working_days(d("2026-04-02"), 1),
            Ok(d("2026-04-07"))
        );
        // Christmas Eve 2026 (Thursday): 25th Friday, weekend, 28th substitute -> Tuesday 29th.
        assert_eq!(
            cal.add_working_days(d("2026-12-24"), 1),
            Ok(d("2026-12-29"))
        );
        // Year end 2027: 27th and 28th are substitutes, New Year's Eve is a Friday, 3 Jan 2028 a substitute.
        assert_eq!(
            cal.add_working_days(d("2027-12-24"), 1),
            Ok(d("2027-12-29"))
        );
        assert_eq!(
            cal.add_working_days(d("2027-12-31"), 1),
            Ok(d("2028-01-04"))
        );
        // A Saturday counts from the next working day.
        assert_eq!(
            cal.add_working_days(d("2026-11-21"), 1),
            Ok(d("2026-11-23"))
        );
    }

    #[test]
    fn dates_outside_the_calendar_are_an_error_not_a_guess() {
        let cal = Calendar::england_and_wales();
        assert_eq!(
            cal.add_working_days(d("2030-12-31"), 1),
            Err(CalendarError::NotCovered {
                year: 2031,
                first: 2020,
                last: 2030
            })
        );
    }

    #[test]
    fn accepts_one_division_or_the_whole_govuk_file() {
        let one =
            r#"{"division":"england-and-wales","events":[{"title":"x","date":"2031-01-01"}]}"#;
        assert_eq!(Calendar::parse(one).unwrap().years(), (2031, 2031));
        assert!(Calendar::parse(r#"{"events":[]}"#).is_err());
        assert!(Calendar::parse("not json").is_err());
    }
}

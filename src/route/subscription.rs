//! Weekly subscriptions (`[[subscription]]`): a report over the custody register, for a
//! scope, to recipients, on a weekly schedule in London time; and the digest one makes.
//!
//! Pure: the caller gives the instant and the register (now and a week before); this says
//! when each digest is due, who it names, and the data its template renders, with what each
//! recipient's class may not see taken out exactly as for a single notification.

use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};
use serde_json::{Value, json};

use super::Redaction;
use super::custody::{Details, Person};
use super::digest::{Line, Report, Scope, select};
use crate::config::SubscriptionConfig;
use crate::directory::{Directory, Recipient, RecipientClass};
use crate::event::EventId;
use crate::notification::{Channel, IdempotencyKey};
use crate::sla::london;

/// The login a digest's ledger entries are recorded under: Herald itself.
pub const DIGEST_PUBLISHER: &str = "herald";

/// Once a week, on a day at a time, London time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weekly {
    pub day: Weekday,
    pub at: NaiveTime,
}

impl Weekly {
    /// `Monday 07:00`.
    pub fn parse(text: &str) -> Result<Weekly, String> {
        let mut words = text.split_whitespace();
        let (Some(day), Some(at), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "schedule \"{text}\" is not a day and a time, as \"Monday 07:00\""
            ));
        };
        let day: Weekday = day.parse().map_err(|_| {
            format!("schedule: \"{day}\" is not a day of the week (Monday .. Sunday)")
        })?;
        let at = NaiveTime::parse_from_str(at, "%H:%M")
            .map_err(|_| format!("schedule: \"{at}\" is not a time as HH:MM (07:00)"))?;
        Ok(Weekly { day, at })
    }

    /// The instant it falls at on `date`, London time (a time the clocks skip is an hour
    /// later; one they pass twice, the first).
    pub fn on(&self, date: NaiveDate) -> DateTime<Utc> {
        london(date.and_time(self.at)).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The latest scheduled instant at or before `now`.
    pub fn last_due(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = now.with_timezone(&chrono_tz::Europe::London).date_naive();
        let back =
            (7 + today.weekday().num_days_from_monday() - self.day.num_days_from_monday()) % 7;
        let date = today - Duration::days(i64::from(back));
        let due = self.on(date);
        if due <= now {
            due
        } else {
            self.on(date - Duration::days(7))
        }
    }

    /// The scheduled instant `weeks` weeks before `due` (the same time, London time, whatever
    /// the clocks did in between).
    pub fn weeks_before(&self, due: DateTime<Utc>, weeks: u32) -> DateTime<Utc> {
        let date = due.with_timezone(&chrono_tz::Europe::London).date_naive();
        self.on(date - Duration::days(7 * i64::from(weeks)))
    }

    /// The first scheduled instant after `now`.
    pub fn next_due(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let last = self.last_due(now);
        let date = last.with_timezone(&chrono_tz::Europe::London).date_naive();
        self.on(date + Duration::days(7))
    }
}

/// A subscription as routes.toml gives it, checked against the directory.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: Arc<str>,
    pub report: Report,
    pub scope: Scope,
    /// As written: `police:WYP-LEEDS`.
    pub scope_ids: Vec<String>,
    pub to: Vec<Arc<Recipient>>,
    pub schedule: Weekly,
    /// The schedule as routes.toml writes it.
    pub schedule_written: String,
    pub template: String,
    /// How long after its scheduled time it may arrive and be on time.
    pub due_within: Duration,
}

impl Subscription {
    /// Checks a `[[subscription]]` against the directory and the redaction rules: every
    /// problem, each in words for the operator.
    pub fn compile(
        c: &SubscriptionConfig,
        directory: &Directory,
        redaction: &Redaction,
    ) -> Result<Subscription, Vec<String>> {
        let mut errors = Vec::new();
        let report = Report::ALL
            .into_iter()
            .find(|r| r.as_str() == c.report)
            .ok_or_else(|| {
                format!(
                    "report: \"{}\" is not a report (in-prison, prison-details-changed, unfinalised)",
                    c.report
                )
            })
            .map_err(|e| errors.push(e))
            .ok();
        let mut scope = Scope {
            bcus: Vec::new(),
            pdus: Vec::new(),
        };
        if c.scope.is_empty() {
            errors.push("scope: name at least one police BCU or probation PDU".into());
        }
        for id in &c.scope {
            match directory.get(id).map(|r| (r.class, r.id.as_str())) {
                Some((RecipientClass::Police, id)) => {
                    scope.bcus.push(id.trim_start_matches("police:").to_owned());
                }
                Some((RecipientClass::Probation, id)) => {
                    scope
                        .pdus
                        .push(id.trim_start_matches("probation:").to_owned());
                }
                Some(_) => errors.push(format!(
                    "scope: {id} is neither a police BCU nor a probation PDU"
                )),
                None => errors.push(format!("scope: {id} is not in the directory")),
            }
        }
        if c.channel != Channel::Email.as_str() {
            errors.push(format!(
                "channel: \"{}\": digests go by email only",
                c.channel
            ));
        }
        let mut to = Vec::new();
        if c.to.is_empty() {
            errors.push("to: name at least one recipient".into());
        }
        for id in &c.to {
            let Some(r) = directory.get(id) else {
                errors.push(format!("to: {id} is not in the directory"));
                continue;
            };
            // The schemes' lists go to the police and probation teams that manage the people
            // on them; a legal representative may hear only of its own clients.
            if !matches!(r.class, RecipientClass::Police | RecipientClass::Probation) {
                errors.push(format!(
                    "to: {id}: digests go to police and probation recipients only"
                ));
            }
            if !r.has_channel(Channel::Email) {
                errors.push(format!("to: {id} has no email address"));
            }
            // The digest is a list of PPOs: a class that may not know PPO status may not
            // have one.
            let (_, withheld) = redaction.apply(r.class, &json!({"offender": {"ppo": true}}), None);
            if !withheld.is_empty() {
                errors.push(format!(
                    "to: {id}: its class may not see offender.ppo, and a digest is a list of PPOs"
                ));
            }
            to.push(Arc::clone(r));
        }
        let schedule = Weekly::parse(&c.schedule).map_err(|e| errors.push(e)).ok();
        let due_within = Duration::from_std(c.due_within)
            .ok()
            .filter(|d| *d <= Duration::days(7))
            .or_else(|| {
                errors.push("due_within: at most a week (7d)".into());
                None
            });
        match (report, schedule, due_within) {
            (Some(report), Some(schedule), Some(due_within)) if errors.is_empty() => {
                Ok(Subscription {
                    name: c.name.as_str().into(),
                    report,
                    scope,
                    scope_ids: c.scope.clone(),
                    to,
                    schedule,
                    schedule_written: c.schedule.clone(),
                    template: c.template.clone(),
                    due_within,
                })
            }
            _ => Err(errors),
        }
    }

    /// The deadline's rule, in words: `within 1h of Monday 07:00 (London)`.
    pub fn sla_rule(&self) -> String {
        format!(
            "within {} of {}",
            crate::sla::format_span(self.due_within.to_std().unwrap_or_default()),
            self.schedule_text()
        )
    }

    /// The schedule as written, with its zone: `Monday 07:00 (London)`.
    pub fn schedule_text(&self) -> String {
        format!("{} (London)", self.schedule_written)
    }

    /// The ledger's `message_id` of the digest due at `due`: one per subscription and period
    /// (`digest:jtrack-leeds-in-prison@2026-12-07T07:00:00Z`).
    pub fn message_id(&self, due: DateTime<Utc>) -> String {
        // Whole seconds for a scheduled time; a digest sent by hand keeps its fraction, so two
        // sent in the same second are two.
        let at = due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        format!("digest:{}@{at}", self.name)
    }

    /// The idempotency key of the digest due at `due` to `recipient`: the same on every
    /// instance and every attempt.
    pub fn key(&self, due: DateTime<Utc>, recipient: &Recipient) -> IdempotencyKey {
        let event = EventId::published(DIGEST_PUBLISHER, self.message_id(due));
        IdempotencyKey::derive(&event, &self.name, recipient.id.as_str(), Channel::Email)
    }

    /// The people the digest due at `due` names: `now` is the register as it stood then,
    /// `week_ago` as it stood a week before.
    pub fn lines<'p>(&self, now: &'p [Person], week_ago: &[Person]) -> Vec<Line<'p>> {
        select(self.report, &self.scope, now, week_ago)
    }

    /// What the template renders for one recipient: the digest and its people, with what the
    /// recipient's class may not see taken out of each person.
    pub fn data(
        &self,
        due: DateTime<Utc>,
        lines: &[Line<'_>],
        recipient: &Recipient,
        redaction: &Redaction,
        late: bool,
    ) -> Value {
        let people: Vec<Value> = lines
            .iter()
            .map(|l| {
                let person = person(l.person, l.before.as_ref());
                redaction
                    .apply(recipient.class, &person, None)
                    .0
                    .into_owned()
            })
            .collect();
        json!({
            "eventId": self.message_id(due),
            "marks": if late { vec!["LATE"] } else { Vec::new() },
            "sla": {
                "rule": self.sla_rule(),
                "due": stamp(due + self.due_within),
            },
            "recipient": {
                "id": recipient.id.as_str(),
                "name": recipient.name,
                "class": recipient.class.as_str(),
            },
            "digest": {
                "name": &*self.name,
                "report": self.report.as_str(),
                "title": title(self.report),
                "scope": self.scope_ids.iter().map(|s| s.split_once(':').map_or(s.as_str(), |(_, c)| c)).collect::<Vec<_>>().join(", "),
                "due": stamp(due),
                "weekStarting": stamp(self.schedule.weeks_before(due, 1)),
                "late": late,
                "changes": self.report == Report::PrisonDetailsChanged,
                "count": people.len(),
                "none": people.is_empty(),
            },
            "people": people,
        })
    }
}

/// The report's title, for templates and the command line.
pub fn title(report: Report) -> &'static str {
    match report {
        Report::InPrison => "PPOs in prison",
        Report::PrisonDetailsChanged => "PPOs whose prison details changed this week",
        Report::Unfinalised => "PPOs in custody with offences not finalised",
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn details(d: &Details) -> Value {
    json!({
        "prison": d.establishment.as_ref().map(|e| json!({"code": e.code, "name": e.name})),
        "hdcEligibilityDate": d.hdc_eligibility.map(|d| d.to_string()),
        "releaseDate": d.release_date.map(|d| d.to_string()),
    })
}

/// One person as a digest's template sees them: shaped like an event's
/// `additionalInformation`, so the same `[[sensitive]]` paths apply.
fn person(p: &Person, before: Option<&Details>) -> Value {
    let mut v = details(&p.details());
    v["reference"] = json!(p.reference());
    v["identifiers"] = json!(p.identifiers);
    v["offender"] = json!({
        "name": p.offender.name,
        "ppo": p.offender.ppo,
        "homeBcu": p.offender.home_bcu,
        "pdu": p.offender.pdu,
    });
    v["inCustody"] = json!(p.in_custody);
    v["unfinalised"] = json!(p.unfinalised);
    v["before"] = before.map_or(Value::Null, details);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn monday_seven_in_london_is_due_across_the_clock_changes() {
        let monday = Weekly::parse("Monday 07:00").unwrap();
        // Winter: GMT.
        assert_eq!(
            monday.last_due(at("2026-12-09T12:00:00Z")),
            at("2026-12-07T07:00:00Z")
        );
        // Summer: BST, an hour ahead.
        assert_eq!(
            monday.last_due(at("2026-07-08T12:00:00Z")),
            at("2026-07-06T06:00:00Z")
        );
        // The week the clocks go forward (Sunday 29 March 2026): the Monday after is BST.
        assert_eq!(
            monday.last_due(at("2026-03-30T06:00:00Z")),
            at("2026-03-30T06:00:00Z")
        );
        assert_eq!(
            monday.last_due(at("2026-03-30T05:59:59Z")),
            at("2026-03-23T07:00:00Z")
        );
        // And back (Sunday 25 October 2026): GMT again.
        assert_eq!(
            monday.next_due(at("2026-10-20T00:00:00Z")),
            at("2026-10-26T07:00:00Z")
        );
        // At the instant itself, it is due.
        assert_eq!(
            monday.last_due(at("2026-12-07T07:00:00Z")),
            at("2026-12-07T07:00:00Z")
        );
    }

    #[test]
    fn a_schedule_is_a_day_and_a_time() {
        assert_eq!(
            Weekly::parse("Friday 16:30").unwrap(),
            Weekly {
                day: Weekday::Fri,
                at: NaiveTime::from_hms_opt(16, 30, 0).unwrap()
            }
        );
        for bad in [
            "Monday",
            "Funday 07:00",
            "Monday 7am",
            "Monday 07:00 weekly",
            "",
        ] {
            assert!(Weekly::parse(bad).is_err(), "{bad}");
        }
    }
}

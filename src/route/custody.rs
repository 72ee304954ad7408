//! The custody register: per person, in custody or not, where, the HDC eligibility date, the
//! release date, whether an offence is still un-finalised, and the PPO flag and home area,
//! kept from the prison and court events Herald already receives.
//!
//! Pure: each event gives one [`Entry`] (what it says of the person's custody, stored in the
//! ledger with it); the register as it stood at an instant is the [`fold`] of the entries
//! that had happened by then, in `occurredAt` order whatever order they arrived in, each
//! setting only what its event type knows. People are told apart by their identifiers: two
//! entries that share one (`NOMS:A1234BC`, `PNC:…`) are the same person, so a court event
//! that names only the PNC number finds the prisoner.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// A prison, as the events name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Establishment {
    pub code: String,
    pub name: String,
}

/// What one event says of a person's custody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fact {
    /// `prison.prisoner.received`: in custody at the prison, a new period of custody (the
    /// dates of the last one no longer hold).
    Received { prison: Establishment },
    /// `prison.prisoner.released`: out of custody, released on that day.
    Released {
        prison: Establishment,
        released_on: NaiveDate,
    },
    /// `prison.release.scheduled`: in custody, to be released on that day.
    ReleaseScheduled {
        prison: Establishment,
        release_date: NaiveDate,
    },
    /// `prison.hdc.decided`: in custody, eligible for HDC from that day; approved, released
    /// on `release_date`.
    Hdc {
        prison: Establishment,
        eligibility: NaiveDate,
        release_date: Option<NaiveDate>,
    },
    /// `prison.temporary-release.granted`: in custody at the prison (out for the day).
    TemporaryRelease { prison: Establishment },
    /// `court.hearing.concluded`: version 2 says whether an offence is still un-finalised
    /// (`None` for version 1, which cannot say).
    Hearing { unfinalised: Option<bool> },
}

/// Who the person is, as the latest event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    /// "Given Family".
    pub name: String,
    pub ppo: bool,
    pub home_bcu: String,
    pub pdu: String,
}

/// One event's entry in the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The event's identifiers, `NOMS:A1234BC`.
    pub identifiers: Vec<String>,
    pub offender: Offender,
    pub fact: Fact,
}

/// An entry with what the ledger keeps around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub occurred_at: DateTime<Utc>,
    /// The event's `message_id`.
    pub event: String,
    /// The ledger's row (0 for an entry not read from the ledger).
    pub row: i64,
    pub entry: Entry,
}

impl Entry {
    /// The entry an event makes; `None` for an event the register does not follow.
    pub fn of(event: &Event) -> Option<Entry> {
        let info = event.info();
        let prison = || {
            Some(Establishment {
                code: info["prison"]["code"].as_str()?.to_owned(),
                name: info["prison"]["name"].as_str()?.to_owned(),
            })
        };
        let fact = match event.event_type.as_str() {
            "prison.prisoner.received" => Fact::Received { prison: prison()? },
            "prison.prisoner.released" => Fact::Released {
                prison: prison()?,
                released_on: date_time(&info["releasedAt"])?,
            },
            "prison.release.scheduled" => Fact::ReleaseScheduled {
                prison: prison()?,
                release_date: date(&info["releaseDate"])?,
            },
            "prison.hdc.decided" => Fact::Hdc {
                prison: prison()?,
                eligibility: date(&info["eligibilityDate"])?,
                release_date: match info["decision"].as_str() {
                    Some("approved") => date(&info["releaseDate"]),
                    _ => None,
                },
            },
            "prison.temporary-release.granted" => Fact::TemporaryRelease { prison: prison()? },
            "court.hearing.concluded" => Fact::Hearing {
                unfinalised: (event.version >= 2).then(|| {
                    info["outcomes"].as_array().is_some_and(|outcomes| {
                        outcomes
                            .iter()
                            .any(|o| o["finalised"] == Value::Bool(false))
                    })
                }),
            },
            _ => return None,
        };
        let o = &info["offender"];
        let name = [&o["name"]["given"], &o["name"]["family"]]
            .iter()
            .filter_map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Some(Entry {
            identifiers: event
                .identifiers()
                .map(|(t, v)| format!("{t}:{v}"))
                .collect(),
            offender: Offender {
                name,
                ppo: o["ppo"].as_bool()?,
                home_bcu: o["homeBcu"].as_str()?.to_owned(),
                pdu: o["pdu"].as_str()?.to_owned(),
            },
            fact,
        })
    }
}

fn date(v: &Value) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(v.as_str()?, "%Y-%m-%d").ok()
}

/// The London date of a date-time.
fn date_time(v: &Value) -> Option<NaiveDate> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(t.with_timezone(&chrono_tz::Europe::London).date_naive())
}

/// A person as the register holds them at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// Every identifier the person's events gave, sorted (`CRN:`, `NOMS:`, `PNC:`).
    pub identifiers: Vec<String>,
    pub offender: Offender,
    /// In custody, as far as the register knows.
    pub in_custody: bool,
    pub establishment: Option<Establishment>,
    pub hdc_eligibility: Option<NaiveDate>,
    pub release_date: Option<NaiveDate>,
    /// The latest version 2 hearing left an offence un-finalised.
    pub unfinalised: bool,
    /// When the latest entry that set the prison details happened.
    pub details_at: Option<DateTime<Utc>>,
    /// When the latest entry happened.
    pub latest: DateTime<Utc>,
    /// The ledger rows of the person's entries.
    #[serde(skip)]
    pub rows: Vec<i64>,
}

impl Person {
    /// The NOMS number when known, else the first identifier: how a digest names them.
    pub fn reference(&self) -> &str {
        self.identifiers
            .iter()
            .find(|i| i.starts_with("NOMS:"))
            .or(self.identifiers.first())
            .map_or("", String::as_str)
    }

    /// The prison details a weekly digest compares: establishment, HDC eligibility date and
    /// release date.
    pub fn details(&self) -> Details {
        Details {
            establishment: self.establishment.clone(),
            hdc_eligibility: self.hdc_eligibility,
            release_date: self.release_date,
        }
    }

    fn apply(&mut self, r: &Recorded) {
        self.offender = r.entry.offender.clone();
        let prison = |p: &Establishment, this: &mut Person| {
            this.establishment = Some(p.clone());
            this.details_at = Some(r.occurred_at);
        };
        match &r.entry.fact {
            Fact::Received { prison: p } => {
                prison(p, self);
                self.in_custody = true;
                self.hdc_eligibility = None;
                self.release_date = None;
            }
            Fact::Released {
                prison: p,
                released_on,
            } => {
                prison(p, self);
                self.in_custody = false;
                self.release_date = Some(*released_on);
            }
            Fact::ReleaseScheduled {
                prison: p,
                release_date,
            } => {
                prison(p, self);
                self.in_custody = true;
                self.release_date = Some(*release_date);
            }
            Fact::Hdc {
                prison: p,
                eligibility,
                release_date,
            } => {
                prison(p, self);
                self.in_custody = true;
                self.hdc_eligibility = Some(*eligibility);
                if release_date.is_some() {
                    self.release_date = *release_date;
                }
            }
            Fact::TemporaryRelease { prison: p } => {
                prison(p, self);
                self.in_custody = true;
            }
            Fact::Hearing { unfinalised } => {
                if let Some(u) = unfinalised {
                    self.unfinalised = *u;
                }
            }
        }
    }
}

/// The prison details of a person, compared week on week.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details {
    pub establishment: Option<Establishment>,
    pub hdc_eligibility: Option<NaiveDate>,
    pub release_date: Option<NaiveDate>,
}

/// The register as it stood at `at`: every person whose entries had happened by then, built
/// from them in `occurredAt` order (then by event id, so every replay decides alike), sorted
/// by their reference.
pub fn fold(entries: &[Recorded], at: DateTime<Utc>) -> Vec<Person> {
    let mut order: Vec<&Recorded> = entries.iter().filter(|r| r.occurred_at <= at).collect();
    order.sort_by(|a, b| (a.occurred_at, &a.event).cmp(&(b.occurred_at, &b.event)));
    // One person per set of entries linked by a shared identifier.
    let mut people = People::default();
    for r in &order {
        people.link(&r.entry.identifiers);
    }
    let mut by_root: BTreeMap<usize, Person> = BTreeMap::new();
    for r in order {
        let Some(first) = r.entry.identifiers.first() else {
            continue;
        };
        let root = people.root(first);
        let person = by_root.entry(root).or_insert_with(|| Person {
            identifiers: Vec::new(),
            offender: r.entry.offender.clone(),
            in_custody: false,
            establishment: None,
            hdc_eligibility: None,
            release_date: None,
            unfinalised: false,
            details_at: None,
            latest: r.occurred_at,
            rows: Vec::new(),
        });
        person.latest = r.occurred_at;
        person.rows.push(r.row);
        for i in &r.entry.identifiers {
            if !person.identifiers.contains(i) {
                person.identifiers.push(i.clone());
            }
        }
        person.apply(r);
    }
    let mut out: Vec<Person> = by_root
        .into_values()
        .map(|mut p| {
            p.identifiers.sort();
            p
        })
        .collect();
    out.sort_by(|a, b| a.reference().cmp(b.reference()));
    out
}

/// Identifiers joined into people (union-find).
#[derive(Default)]
struct People {
    index: HashMap<String, usize>,
    parent: Vec<usize>,
}

impl People {
    fn id(&mut self, identifier: &str) -> usize {
        if let Some(i) = self.index.get(identifier) {
            return *i;
        }
        let i = self.parent.len();
        self.parent.push(i);
        self.index.insert(identifier.to_owned(), i);
        i
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn link(&mut self, identifiers: &[String]) {
        let mut ids = identifiers.iter().map(|i| self.id(i)).collect::<Vec<_>>();
        let Some(first) = ids.pop() else { return };
        let a = self.find(first);
        for i in ids {
            let b = self.find(i);
            if a != b {
                self.parent[b] = a;
            }
        }
    }

    fn root(&mut self, identifier: &str) -> usize {
        let i = self.id(identifier);
        self.find(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn leeds() -> Establishment {
        Establishment {
            code: "LEI".into(),
            name: "HMP Leeds".into(),
        }
    }

    fn recorded(ids: &[&str], occurred: &str, event: &str, fact: Fact) -> Recorded {
        Recorded {
            occurred_at: at(occurred),
            event: event.into(),
            row: 0,
            entry: Entry {
                identifiers: ids.iter().map(|s| (*s).to_owned()).collect(),
                offender: Offender {
                    name: "Daniel Kershaw".into(),
                    ppo: true,
                    home_bcu: "WYP-LEEDS".into(),
                    pdu: "PDU-LEEDS".into(),
                },
                fact,
            },
        }
    }

    #[test]
    fn entries_apply_in_occurred_order_whatever_order_they_arrive_in() {
        let received = recorded(
            &["NOMS:A1234BC"],
            "2026-11-02T09:00:00Z",
            "r",
            Fact::Received { prison: leeds() },
        );
        let released = recorded(
            &["NOMS:A1234BC"],
            "2026-11-20T09:00:00Z",
            "x",
            Fact::Released {
                prison: leeds(),
                released_on: day("2026-11-20"),
            },
        );
        for entries in [
            vec![received.clone(), released.clone()],
            vec![released.clone(), received.clone()],
        ] {
            let now = fold(&entries, at("2026-11-30T00:00:00Z"));
            assert_eq!(now.len(), 1);
            assert!(!now[0].in_custody);
            assert_eq!(now[0].release_date, Some(day("2026-11-20")));
            let then = fold(&entries, at("2026-11-10T00:00:00Z"));
            assert!(then[0].in_custody);
            assert_eq!(then[0].release_date, None);
        }
    }

    #[test]
    fn a_court_event_naming_only_the_pnc_finds_the_prisoner() {
        let entries = [
            recorded(
                &["NOMS:A1234BC", "PNC:2004/0123456X"],
                "2026-11-02T09:00:00Z",
                "r",
                Fact::Received { prison: leeds() },
            ),
            recorded(
                &["PNC:2004/0123456X"],
                "2026-11-03T09:00:00Z",
                "h",
                Fact::Hearing {
                    unfinalised: Some(true),
                },
            ),
        ];
        let people = fold(&entries, at("2026-11-30T00:00:00Z"));
        assert_eq!(people.len(), 1);
        assert!(people[0].unfinalised && people[0].in_custody);
        assert_eq!(people[0].reference(), "NOMS:A1234BC");
    }

    #[test]
    fn a_version_1_hearing_leaves_finality_as_it_was() {
        let entries = [
            recorded(
                &["NOMS:A1234BC"],
                "2026-11-02T09:00:00Z",
                "h2",
                Fact::Hearing {
                    unfinalised: Some(true),
                },
            ),
            recorded(
                &["NOMS:A1234BC"],
                "2026-11-03T09:00:00Z",
                "h1",
                Fact::Hearing { unfinalised: None },
            ),
        ];
        assert!(fold(&entries, at("2026-11-30T00:00:00Z"))[0].unfinalised);
    }
}

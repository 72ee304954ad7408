//! The three weekly PPO reports of the JTrack scheme, over the custody register: the PPOs of
//! an area in prison; those whose prison details changed since the previous week; those in
//! custody with an offence still un-finalised.
//!
//! Pure: given the register as it stands now and as it stood a week before (each a [`fold`]
//! of its entries), it says who each report names for a scope, in the register's order.
//!
//! [`fold`]: super::custody::fold

use std::collections::HashMap;

use serde::Serialize;

use super::custody::{Details, Person};

/// Which report a digest carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    /// PPOs of the area in custody now.
    InPrison,
    /// PPOs of the area whose establishment, HDC eligibility date or release date is not what
    /// it was a week before (someone new to the register counts: from nothing to something).
    PrisonDetailsChanged,
    /// PPOs of the area in custody whose latest hearing left an offence un-finalised.
    Unfinalised,
}

impl Report {
    pub const ALL: [Report; 3] = [
        Report::InPrison,
        Report::PrisonDetailsChanged,
        Report::Unfinalised,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Report::InPrison => "in-prison",
            Report::PrisonDetailsChanged => "prison-details-changed",
            Report::Unfinalised => "unfinalised",
        }
    }
}

/// Who a digest is about: the people whose home BCU or PDU is one of these codes (one for a
/// BCU or a PDU, several for an area made of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub bcus: Vec<String>,
    pub pdus: Vec<String>,
}

impl Scope {
    pub fn covers(&self, p: &Person) -> bool {
        self.bcus.contains(&p.offender.home_bcu) || self.pdus.contains(&p.offender.pdu)
    }
}

/// One person in a digest: as the register holds them now, and for a change, their details
/// a week before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line<'p> {
    pub person: &'p Person,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Details>,
}

/// The people a report names for a scope: `now` is the register at the digest's instant,
/// `week_ago` as it stood seven days before.
pub fn select<'p>(
    report: Report,
    scope: &Scope,
    now: &'p [Person],
    week_ago: &[Person],
) -> Vec<Line<'p>> {
    let tracked = now.iter().filter(|p| p.offender.ppo && scope.covers(p));
    match report {
        Report::InPrison => tracked
            .filter(|p| p.in_custody)
            .map(|person| Line {
                person,
                before: None,
            })
            .collect(),
        Report::Unfinalised => tracked
            .filter(|p| p.in_custody && p.unfinalised)
            .map(|person| Line {
                person,
                before: None,
            })
            .collect(),
        Report::PrisonDetailsChanged => {
            let before: HashMap<&str, &Person> =
                week_ago.iter().map(|p| (p.reference(), p)).collect();
            tracked
                .filter_map(|person| {
                    let was = before.get(person.reference()).map(|p| p.details());
                    let empty = Details {
                        establishment: None,
                        hdc_eligibility: None,
                        release_date: None,
                    };
                    let was = was.unwrap_or(empty);
                    (was != person.details()).then_some(Line {
                        person,
                        before: Some(was),
                    })
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate, Utc};

    use super::*;
    use crate::route::custody::{Entry, Establishment, Fact, Offender, Recorded, fold};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn prison(code: &str) -> Establishment {
        Establishment {
            code: code.into(),
            name: format!("HMP {code}"),
        }
    }

    fn entry(noms: &str, bcu: &str, ppo: bool, occurred: &str, fact: Fact) -> Recorded {
        Recorded {
            occurred_at: at(occurred),
            event: format!("{noms}-{occurred}"),
            row: 0,
            entry: Entry {
                identifiers: vec![format!("NOMS:{noms}")],
                offender: Offender {
                    name: format!("Person {noms}"),
                    ppo,
                    home_bcu: bcu.into(),
                    pdu: format!("PDU-{bcu}"),
                },
                fact,
            },
        }
    }

    fn leeds() -> Scope {
        Scope {
            bcus: vec!["WYP-LEEDS".into()],
            pdus: Vec::new(),
        }
    }

    fn names(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.person.reference().into()).collect()
    }

    #[test]
    fn each_report_names_exactly_its_people() {
        let received = |p: &str| Fact::Received { prison: prison(p) };
        let entries = [
            // In prison all along, details unchanged this week.
            entry(
                "A0000AA",
                "WYP-LEEDS",
                true,
                "2026-10-01T09:00:00Z",
                received("LEI"),
            ),
            // Moved prison this week, with an un-finalised offence.
            entry(
                "B0000BB",
                "WYP-LEEDS",
                true,
                "2026-10-01T09:00:00Z",
                received("LEI"),
            ),
            entry(
                "B0000BB",
                "WYP-LEEDS",
                true,
                "2026-11-24T09:00:00Z",
                received("WDI"),
            ),
            entry(
                "B0000BB",
                "WYP-LEEDS",
                true,
                "2026-11-25T09:00:00Z",
                Fact::Hearing {
                    unfinalised: Some(true),
                },
            ),
            // Released this week: out of prison, release date changed.
            entry(
                "C0000CC",
                "WYP-LEEDS",
                true,
                "2026-10-01T09:00:00Z",
                received("LEI"),
            ),
            entry(
                "C0000CC",
                "WYP-LEEDS",
                true,
                "2026-11-26T09:00:00Z",
                Fact::Released {
                    prison: prison("LEI"),
                    released_on: NaiveDate::from_ymd_opt(2026, 11, 26).unwrap(),
                },
            ),
            // Not a PPO, and another area: in no Leeds digest.
            entry(
                "D0000DD",
                "WYP-LEEDS",
                false,
                "2026-11-24T09:00:00Z",
                received("LEI"),
            ),
            entry(
                "E0000EE",
                "WYP-BRADFORD",
                true,
                "2026-11-24T09:00:00Z",
                received("LEI"),
            ),
        ];
        let now = fold(&entries, at("2026-11-30T07:00:00Z"));
        let week_ago = fold(&entries, at("2026-11-23T07:00:00Z"));
        let digest = |r| names(&select(r, &leeds(), &now, &week_ago));
        assert_eq!(digest(Report::InPrison), ["NOMS:A0000AA", "NOMS:B0000BB"]);
        assert_eq!(
            digest(Report::PrisonDetailsChanged),
            ["NOMS:B0000BB", "NOMS:C0000CC"]
        );
        assert_eq!(digest(Report::Unfinalised), ["NOMS:B0000BB"]);
        let changed = select(Report::PrisonDetailsChanged, &leeds(), &now, &week_ago);
        assert_eq!(
            changed[0].before.as_ref().unwrap().establishment,
            Some(prison("LEI"))
        );
        // An area made of two BCUs covers both.
        let area = Scope {
            bcus: vec!["WYP-LEEDS".into(), "WYP-BRADFORD".into()],
            pdus: Vec::new(),
        };
        assert_eq!(select(Report::InPrison, &area, &now, &week_ago).len(), 3);
    }
}

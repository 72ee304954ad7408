//! The authority rule: a legal representative hears only about the people it is authorised to
//! act for at the time of sending. The authority register (kept by `ppud.representation.*`
//! events, stored in the ledger) says who is authorised for whom, from when to when; a
//! recipient's `acts_for` in routes.toml is the register's starting state, for small
//! installations and tests.
//!
//! Pure: the caller gives the changes recorded for the event's person and the instant of
//! sending. The standing of a pair (person, representative) at an instant is decided by the
//! register's changes in `occurredAt` order, whatever order they arrived in: the latest change
//! that has happened and taken effect by then says whether the pair is authorised. A grant
//! received after the withdrawal that ended it therefore changes nothing.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use crate::directory::{Recipient, RecipientClass};
use crate::event::{
    Event, REPRESENTATION_GRANTED as GRANTED, REPRESENTATION_WITHDRAWN as WITHDRAWN,
};
use crate::notification::Unauthorised;
use crate::sla::london;

/// What a register event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Authorised from `from` (the start of that day, London time) to the end of `until`,
    /// or with no end.
    Grant {
        from: NaiveDate,
        until: Option<NaiveDate>,
    },
    /// Not authorised from `from`.
    Withdrawal { from: NaiveDate },
}

impl ChangeKind {
    /// `grant` or `withdrawal`: the ledger's `change` column and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Grant { .. } => "grant",
            ChangeKind::Withdrawal { .. } => "withdrawal",
        }
    }

    /// The day it takes effect.
    pub fn from(self) -> NaiveDate {
        match self {
            ChangeKind::Grant { from, .. } | ChangeKind::Withdrawal { from } => from,
        }
    }
}

/// What a register event did to the register: the `result` label of
/// `herald_authority_changes_total` and the log line's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeResult {
    /// Recorded: it grants, or ends a grant (or an `acts_for` of routes.toml).
    Applied,
    /// Already in the register (the same event again): nothing changed.
    Duplicate,
    /// A withdrawal where the register held no grant for the pair: kept, so a grant that
    /// arrives later but happened earlier stays ended.
    WithdrawsNothing,
    /// Refused at the intake: the representative is not in the directory.
    UnknownRepresentative,
}

impl ChangeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeResult::Applied => "applied",
            ChangeResult::Duplicate => "duplicate",
            ChangeResult::WithdrawsNothing => "withdraws-nothing",
            ChangeResult::UnknownRepresentative => "unknown-representative",
        }
    }
}

/// One change to the register, as a register event states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `NOMS:A1234BC`.
    pub person: String,
    /// `legal-rep:SMITH-AND-CO`.
    pub representative: String,
    pub kind: ChangeKind,
    /// When PPUD recorded it: the order changes are applied in.
    pub occurred_at: DateTime<Utc>,
    /// The register event's `message_id`: which event said so.
    pub event: String,
}

/// Why a register event cannot be applied (the rejection's detail says which field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("personReference has no NOMS identifier: the register is kept by NOMS number")]
    NoNoms,
    #[error("additionalInformation.{0} is missing or not a valid value")]
    Field(&'static str),
    #[error("additionalInformation.validUntil is before effectiveFrom")]
    EndsBeforeStart,
}

impl Change {
    /// The change a register event states; `Ok(None)` for an event of another type.
    pub fn of(event: &Event) -> Result<Option<Change>, ChangeError> {
        let granted = match event.event_type.as_str() {
            GRANTED => true,
            WITHDRAWN => false,
            _ => return Ok(None),
        };
        let info = event.info();
        let person = event
            .identifiers()
            .find(|(t, _)| *t == "NOMS")
            .map(|(t, v)| format!("{t}:{v}"))
            .ok_or(ChangeError::NoNoms)?;
        let representative = info["representative"]
            .as_str()
            .filter(|r| r.starts_with("legal-rep:"))
            .ok_or(ChangeError::Field("representative"))?
            .to_owned();
        let date = |name: &'static str| {
            info[name]
                .as_str()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .ok_or(ChangeError::Field(name))
        };
        let from = date("effectiveFrom")?;
        let kind = if granted {
            let until = match info.get("validUntil") {
                None => None,
                Some(_) => Some(date("validUntil")?),
            };
            if until.is_some_and(|u| u < from) {
                return Err(ChangeError::EndsBeforeStart);
            }
            ChangeKind::Grant { from, until }
        } else {
            ChangeKind::Withdrawal { from }
        };
        Ok(Some(Change {
            person,
            representative,
            kind,
            occurred_at: event.occurred_at,
            event: event.id.as_str().to_owned(),
        }))
    }

    /// Whether a withdrawal ends anything: the register holds a grant for the pair, or
    /// routes.toml's `acts_for` names it. One that ends nothing is kept all the same (the
    /// grant it ends may arrive after it) and counted. A grant always counts.
    pub fn ends_something(&self, recorded: &[Change], seeded: bool) -> bool {
        matches!(self.kind, ChangeKind::Grant { .. })
            || seeded
            || recorded.iter().any(|c| {
                c.representative == self.representative
                    && c.person == self.person
                    && matches!(c.kind, ChangeKind::Grant { .. })
            })
    }

    /// The instant it takes effect: the start of its day, London time.
    pub fn takes_effect(&self) -> DateTime<Utc> {
        start_of(self.kind.from())
    }

    /// The order changes are applied in: when they happened; at the same instant a
    /// withdrawal after a grant (the cautious reading), then by event id so every instance
    /// and every replay decides alike.
    fn order(&self) -> (DateTime<Utc>, u8, &str) {
        let rank = match self.kind {
            ChangeKind::Grant { .. } => 0,
            ChangeKind::Withdrawal { .. } => 1,
        };
        (self.occurred_at, rank, &self.event)
    }
}

/// Midnight at the start of a day, London time.
pub fn start_of(day: NaiveDate) -> DateTime<Utc> {
    london(day.and_time(NaiveTime::MIN)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a pair stands at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Authorised by the register event `event`.
    Authorised {
        from: NaiveDate,
        until: Option<NaiveDate>,
        event: String,
    },
    /// Authorised by routes.toml's `acts_for`, with nothing in the register about the pair.
    Seeded,
    Not(Unauthorised),
}

impl Standing {
    pub fn authorised(&self) -> bool {
        matches!(self, Standing::Authorised { .. } | Standing::Seeded)
    }
}

impl Standing {
    /// The standing's word, from, until and event.
    pub fn described(&self) -> [String; 4] {
        let dash = || "-".to_owned();
        match self {
            Standing::Authorised { from, until, event } => [
                "authorised".into(),
                from.to_string(),
                until.map_or_else(dash, |u| u.to_string()),
                event.clone(),
            ],
            Standing::Seeded => ["authorised (acts_for)".into(), dash(), dash(), dash()],
            Standing::Not(Unauthorised::NeverShown) => {
                ["not authorised".into(), dash(), dash(), dash()]
            }
            Standing::Not(Unauthorised::NotYet { from, event }) => {
                ["not yet".into(), from.to_string(), dash(), event.clone()]
            }
            Standing::Not(Unauthorised::Withdrawn { from, event }) => {
                ["withdrawn".into(), from.to_string(), dash(), event.clone()]
            }
            Standing::Not(Unauthorised::Expired { last_day, event }) => [
                "expired".into(),
                dash(),
                last_day.to_string(),
                event.clone(),
            ],
        }
    }
}

/// The standing of one pair at `at`, from the register's changes for that pair (in any
/// order) and whether routes.toml's `acts_for` names it.
pub fn standing<'c>(
    changes: impl IntoIterator<Item = &'c Change>,
    seeded: bool,
    at: DateTime<Utc>,
) -> Standing {
    let mut latest: Option<&Change> = None;
    let mut later_grant: Option<&Change> = None;
    for c in changes {
        if c.occurred_at > at {
            continue;
        }
        if c.takes_effect() > at {
            if matches!(c.kind, ChangeKind::Grant { .. })
                && later_grant.is_none_or(|g| c.takes_effect() < g.takes_effect())
            {
                later_grant = Some(c);
            }
            continue;
        }
        if latest.is_none_or(|l| c.order() > l.order()) {
            latest = Some(c);
        }
    }
    match latest.map(|c| (c, c.kind)) {
        Some((c, ChangeKind::Grant { from, until })) => match until {
            Some(last_day) if at >= start_of(last_day.succ_opt().unwrap_or(last_day)) => {
                Standing::Not(Unauthorised::Expired {
                    last_day,
                    event: c.event.clone(),
                })
            }
            _ => Standing::Authorised {
                from,
                until,
                event: c.event.clone(),
            },
        },
        Some((c, ChangeKind::Withdrawal { from })) => Standing::Not(Unauthorised::Withdrawn {
            from,
            event: c.event.clone(),
        }),
        None if seeded => Standing::Seeded,
        None => Standing::Not(match later_grant {
            Some(g) => Unauthorised::NotYet {
                from: g.kind.from(),
                event: g.event.clone(),
            },
            None => Unauthorised::NeverShown,
        }),
    }
}

/// The register as it bears on one event: the changes recorded for the event's person and
/// the instant the notifications are sent. Offline tools (`herald check`, `route-test`) use
/// [`Authority::seed`], routes.toml's `acts_for` alone.
#[derive(Debug, Clone, Default)]
pub struct Authority {
    at: Option<DateTime<Utc>>,
    changes: Vec<Change>,
}

impl Authority {
    /// No register: `acts_for` decides.
    pub fn seed() -> Authority {
        Authority::default()
    }

    /// The register's `changes` for the event's person, as they stand at `at`.
    pub fn new(at: DateTime<Utc>, changes: Vec<Change>) -> Authority {
        Authority {
            at: Some(at),
            changes,
        }
    }

    /// Whether `recipient` may be told about the event's person. Only legal representatives
    /// are limited; one is authorised if any of the event's identifiers authorises it.
    pub fn may_hear(&self, recipient: &Recipient, event: &Event) -> Result<(), Unauthorised> {
        self.may_hear_of(recipient, event.identifiers())
    }

    /// As [`Authority::may_hear`], for a person known by these `(type, value)` identifiers
    /// (a notification waiting for a retry keeps its event's).
    pub fn may_hear_of<'i>(
        &self,
        recipient: &Recipient,
        identifiers: impl IntoIterator<Item = (&'i str, &'i str)>,
    ) -> Result<(), Unauthorised> {
        if recipient.class != RecipientClass::LegalRep {
            return Ok(());
        }
        let ids: Vec<(&str, &str)> = identifiers.into_iter().collect();
        let recorded = |kind: &str, value: &str| self.pair(recipient, kind, value).next().is_some();
        // Once the register holds anything about the person and the representative (by NOMS
        // number), it decides: an `acts_for` on another of the person's identifiers no longer
        // does.
        let registered = ids.iter().any(|(k, v)| recorded(k, v));
        let at = self.at.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut why = Unauthorised::NeverShown;
        for (kind, value) in ids {
            let seeded =
                recipient.acts_for_id(kind, value) && (!registered || recorded(kind, value));
            match standing(self.pair(recipient, kind, value), seeded, at) {
                s if s.authorised() => return Ok(()),
                Standing::Not(w) if w != Unauthorised::NeverShown => why = w,
                _ => {}
            }
        }
        Err(why)
    }

    /// Whether the register holds anything about `recipient` and the event's person, or
    /// `acts_for` names the person: `legal-rep:*` considers these representatives and says
    /// why each one not authorised is not told.
    pub fn concerns(&self, recipient: &Recipient, event: &Event) -> bool {
        event.identifiers().any(|(kind, value)| {
            recipient.acts_for_id(kind, value) || self.pair(recipient, kind, value).next().is_some()
        })
    }

    /// The register's changes for `recipient` and the person known by this identifier.
    fn pair<'a>(
        &'a self,
        recipient: &'a Recipient,
        kind: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = &'a Change> {
        self.changes.iter().filter(move |c| {
            c.representative == recipient.id.as_str()
                && c.person.split_once(':') == Some((kind, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::RecipientId;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn change(event: &str, occurred: &str, kind: ChangeKind) -> Change {
        Change {
            person: "NOMS:A1234BC".into(),
            representative: "legal-rep:SMITH-AND-CO".into(),
            kind,
            occurred_at: at(occurred),
            event: event.into(),
        }
    }

    fn grant(event: &str, occurred: &str, from: &str, until: Option<&str>) -> Change {
        let kind = ChangeKind::Grant {
            from: day(from),
            until: until.map(day),
        };
        change(event, occurred, kind)
    }

    fn withdrawal(event: &str, occurred: &str, from: &str) -> Change {
        change(event, occurred, ChangeKind::Withdrawal { from: day(from) })
    }

    /// Every order of `changes` gives the same standing: the arrival order does not count.
    fn in_every_order(changes: &[Change], seeded: bool, when: &str) -> Standing {
        let first = standing(changes, seeded, at(when));
        let mut order: Vec<usize> = (0..changes.len()).collect();
        permute(&mut order, 0, &mut |o| {
            let shuffled: Vec<&Change> = o.iter().map(|i| &changes[*i]).collect();
            assert_eq!(standing(shuffled, seeded, at(when)), first, "order {o:?}");
        });
        first
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == v.len() {
            return f(v);
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn a_withdrawal_received_before_the_grant_it_ends_leaves_the_pair_unauthorised() {
        let changes = [
            grant("g", "2026-11-01T09:00:00Z", "2026-11-01", None),
            withdrawal("w", "2026-11-20T09:00:00Z", "2026-11-20"),
        ];
        assert_eq!(
            in_every_order(&changes, false, "2026-11-25T12:00:00Z"),
            Standing::Not(Unauthorised::Withdrawn {
                from: day("2026-11-20"),
                event: "w".into()
            })
        );
        // Between the two, the grant held.
        assert!(in_every_order(&changes, false, "2026-11-10T12:00:00Z").authorised());
    }

    #[test]
    fn a_later_grant_restores_authority_and_a_future_one_waits_for_its_day() {
        let changes = [
            grant("g1", "2026-11-01T09:00:00Z", "2026-11-01", None),
            withdrawal("w", "2026-11-20T09:00:00Z", "2026-11-20"),
            grant(
                "g2",
                "2026-11-24T09:00:00Z",
                "2026-12-01",
                Some("2026-12-31"),
            ),
        ];
        assert!(matches!(
            in_every_order(&changes, false, "2026-11-25T12:00:00Z"),
            Standing::Not(Unauthorised::Withdrawn { .. })
        ));
        assert_eq!(
            in_every_order(&changes, false, "2026-12-01T00:00:00Z"),
            Standing::Authorised {
                from: day("2026-12-01"),
                until: Some(day("2026-12-31")),
                event: "g2".into()
            }
        );
        // The last day holds to its end, London time (GMT in winter).
        assert!(in_every_order(&changes, false, "2026-12-31T23:59:59Z").authorised());
        assert_eq!(
            in_every_order(&changes, false, "2027-01-01T00:00:00Z"),
            Standing::Not(Unauthorised::Expired {
                last_day: day("2026-12-31"),
                event: "g2".into()
            })
        );
    }

    #[test]
    fn days_begin_at_midnight_in_london_in_summer_too() {
        let changes = [grant("g", "2026-06-01T09:00:00Z", "2026-07-01", None)];
        // 00:00 BST on 1 July is 23:00 UTC on 30 June.
        assert!(in_every_order(&changes, false, "2026-06-30T23:00:00Z").authorised());
        assert_eq!(
            in_every_order(&changes, false, "2026-06-30T22:59:59Z"),
            Standing::Not(Unauthorised::NotYet {
                from: day("2026-07-01"),
                event: "g".into()
            })
        );
    }

    #[test]
    fn the_seed_holds_until_the_register_says_otherwise() {
        assert_eq!(
            in_every_order(&[], true, "2026-11-25T12:00:00Z"),
            Standing::Seeded
        );
        let changes = [withdrawal("w", "2026-11-20T09:00:00Z", "2026-11-20")];
        assert!(in_every_order(&changes, true, "2026-11-19T12:00:00Z").authorised());
        assert!(!in_every_order(&changes, true, "2026-11-21T12:00:00Z").authorised());
        assert_eq!(
            in_every_order(&[], false, "2026-11-25T12:00:00Z"),
            Standing::Not(Unauthorised::NeverShown)
        );
    }

    #[test]
    fn the_register_as_it_stood_ignores_what_happened_later() {
        // Recorded on 20 November, backdated to 10 November: on 15 November the register
        // did not know yet.
        let changes = [
            grant("g", "2026-11-01T09:00:00Z", "2026-11-01", None),
            withdrawal("w", "2026-11-20T09:00:00Z", "2026-11-10"),
        ];
        assert!(in_every_order(&changes, false, "2026-11-15T12:00:00Z").authorised());
        assert!(!in_every_order(&changes, false, "2026-11-21T12:00:00Z").authorised());
    }

    #[test]
    fn a_withdrawal_by_noms_ends_an_acts_for_written_by_pnc() {
        let firm = Recipient {
            id: RecipientId::sample(RecipientClass::LegalRep),
            class: RecipientClass::LegalRep,
            name: "a firm".into(),
            email: Vec::new(),
            webhook: None,
            contact: None,
            acts_for: vec![("PNC".into(), "2004/0123456X".into())],
        };
        let person = [("NOMS", "A1234BC"), ("PNC", "2004/0123456X")];
        assert_eq!(Authority::seed().may_hear_of(&firm, person), Ok(()));
        let mut withdrawn = withdrawal("w", "2026-11-20T09:00:00Z", "2026-11-20");
        withdrawn.representative = firm.id.to_string();
        let register = Authority::new(at("2026-11-25T12:00:00Z"), vec![withdrawn]);
        assert!(matches!(
            register.may_hear_of(&firm, person),
            Err(Unauthorised::Withdrawn { .. })
        ));
        // Someone else the firm acts for by PNC is not affected.
        assert_eq!(
            register.may_hear_of(&firm, [("PNC", "2004/0123456X")]),
            Ok(())
        );
    }

    #[test]
    fn a_grant_and_a_withdrawal_at_the_same_instant_leave_the_pair_unauthorised() {
        let changes = [
            grant("z", "2026-11-01T09:00:00Z", "2026-11-01", None),
            withdrawal("a", "2026-11-01T09:00:00Z", "2026-11-01"),
        ];
        assert!(!in_every_order(&changes, false, "2026-11-02T12:00:00Z").authorised());
    }
}

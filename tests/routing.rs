//! Every obligation in the brief, through the shipped routes.toml: the right recipients on
//! the right channels, the right deadline, nothing a recipient may not see.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use herald::config::Config;
use herald::core::Core;
use herald::event::{Event, EventId};
use herald::notification::{Content, Priority, Problem, Skip, Sla, Unauthorised};
use herald::render::{Notification, Routing};
use herald::route::Authority;
use serde_json::{Value, json};

fn route(doc: &Value) -> Routing {
    common::core().route(&common::accept(doc), &Authority::seed())
}

fn targets(routing: &Routing) -> BTreeSet<(String, String)> {
    routing
        .notifications
        .iter()
        .map(|n| (n.recipient.id.to_string(), n.channel.to_string()))
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

fn due(n: &Notification) -> DateTime<Utc> {
    match &n.sla {
        Sla::Due { deadline, .. } => deadline.due,
        other => panic!("no deadline: {other:?}"),
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn payload(n: &Notification) -> Value {
    match &n.content {
        Content::Webhook { body, .. } => serde_json::from_str(body).unwrap(),
        Content::Email { .. } => panic!("not a webhook"),
    }
}

fn email(n: &Notification) -> (&str, &str, &str) {
    match &n.content {
        Content::Email {
            subject,
            text,
            html,
            ..
        } => (subject, text, html),
        Content::Webhook { .. } => panic!("not an email"),
    }
}

#[test]
fn ppo_received_into_custody_tells_the_home_bcu_within_the_hour() {
    let r = route(&common::example("prison.prisoner.received.json"));
    assert_eq!(
        r.matched_routes,
        ["ppo-received-into-custody".into()] as [std::sync::Arc<str>; 1]
    );
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook")
        ])
    );
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // occurredAt 2026-10-05T14:20:00+01:00
    assert!(
        r.notifications
            .iter()
            .all(|n| due(n) == at("2026-10-05T14:20:00Z"))
    );
}

#[test]
fn events_about_people_who_are_not_ppos_notify_nobody() {
    for name in [
        "prison.prisoner.received--not-ppo.json",
        "court.warrant.issued--breach-not-ppo.json",
        "court.bail.decided--unconditional.json",
    ] {
        let r = route(&common::example(name));
        assert!(r.unrouted(), "{name}: {:?}", r.matched_routes);
        assert!(
            r.notifications.is_empty() && r.problems.is_empty(),
            "{name}"
        );
    }
}

#[test]
fn release_determined_gives_28_days_notice_to_police_and_probation() {
    let r = route(&common::example("prison.release.scheduled.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook"),
            ("probation:PDU-LEEDS", "email"),
            ("probation:PDU-LEEDS", "webhook")
        ])
    );
    for n in &r.notifications {
        // Release 18 December 2026, less 28 days: by the end of 20 November.
        assert_eq!(due(n), at("2026-11-20T23:59:59Z"));
        assert!(!n.sla.short_notice());
        assert_eq!(n.priority, Priority::Routine);
        assert!(n.marks.is_empty());
    }
}

#[test]
fn a_release_determined_too_late_is_short_notice_marked_and_urgent() {
    let r = route(&common::example(
        "prison.release.scheduled--short-notice.json",
    ));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-BRADFORD", "email"),
            ("police:WYP-BRADFORD", "webhook"),
            ("probation:PDU-BRADFORD", "email")
        ])
    );
    for n in &r.notifications {
        assert_eq!(due(n), at("2026-11-13T23:59:59Z"));
        assert!(n.sla.short_notice());
        assert_eq!(n.priority, Priority::Urgent);
        assert_eq!(n.marks, ["SHORT NOTICE"]);
        match n.channel.as_str() {
            "email" => assert!(email(n).0.starts_with("[SHORT NOTICE] "), "{}", email(n).0),
            _ => {
                let p = payload(n);
                assert_eq!(p["data"]["notification"]["marks"], json!(["SHORT NOTICE"]));
                assert_eq!(p["data"]["notification"]["sla"]["shortNotice"], json!(true));
            }
        }
    }
}

#[test]
fn hdc_approval_reaches_the_home_area_with_the_curfew_address() {
    let r = route(&common::example("prison.hdc.decided.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-BRADFORD", "email"),
            ("police:WYP-BRADFORD", "webhook"),
            ("probation:PDU-BRADFORD", "email")
        ])
    );
    for n in &r.notifications {
        assert!(n.withheld.is_empty(), "police and probation see addresses");
    }
    let webhook = r
        .notifications
        .iter()
        .find(|n| n.channel.as_str() == "webhook")
        .unwrap();
    assert!(
        payload(webhook)["data"]["event"]["additionalInformation"]["curfewAddress"]["postcode"]
            .is_string()
    );
    assert!(route(&common::example("prison.hdc.decided--refused.json")).unrouted());
}

#[test]
fn release_on_the_day_is_due_by_midnight_london() {
    let r = route(&common::example("prison.prisoner.released--hdc.json"));
    assert!(targets(&r).contains(&("police:WYP-BRADFORD".into(), "email".into())));
    assert!(
        r.notifications
            .iter()
            .all(|n| due(n) == at("2026-12-07T23:59:59Z"))
    );
}

#[test]
fn temporary_release_is_due_before_the_person_leaves() {
    let r = route(&common::example("prison.temporary-release.granted.json"));
    assert_eq!(targets(&r), set(&[("police:GMP-MANCHESTER", "email")]));
    assert_eq!(due(&r.notifications[0]), at("2026-11-27T08:30:00Z"));
}

#[test]
fn bail_decision_reaches_police_and_the_ppo_team_within_24_hours() {
    let r = route(&common::example("court.bail.decided.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook"),
            ("probation:PDU-LEEDS", "email"),
            ("probation:PDU-LEEDS", "webhook")
        ])
    );
    assert!(
        r.notifications
            .iter()
            .all(|n| due(n) == at("2026-11-13T12:35:00Z"))
    );
}

#[test]
fn fta_warrant_for_a_ppo_is_cat_a_within_one_working_day() {
    let r = route(&common::example("court.warrant.issued.json"));
    assert_eq!(r.matched_routes.len(), 1, "the first matching route wins");
    assert_eq!(&*r.matched_routes[0], "ppo-fta-warrant");
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook")
        ])
    );
    for n in &r.notifications {
        assert_eq!(
            due(n),
            at("2026-11-23T15:42:00Z"),
            "Friday 15:42 -> Monday 15:42"
        );
        assert_eq!(n.priority, Priority::Urgent);
        assert_eq!(n.marks, ["CAT A"]);
    }
    let mail = r
        .notifications
        .iter()
        .find(|n| n.channel.as_str() == "email")
        .unwrap();
    assert!(email(mail).0.starts_with("[CAT A] "));
    assert!(email(mail).1.contains("*** CAT A ***"));
}

#[test]
fn a_warrant_on_christmas_eve_is_due_after_the_bank_holidays() {
    let mut doc = common::example("court.warrant.issued.json");
    doc["occurredAt"] = json!("2026-12-24T16:00:00Z");
    doc["publishedAt"] = json!("2026-12-24T16:01:00Z");
    let r = route(&doc);
    assert!(
        r.notifications
            .iter()
            .all(|n| due(n) == at("2026-12-29T16:00:00Z"))
    );
}

#[test]
fn other_ppo_warrants_fall_through_to_the_next_route() {
    let mut doc = common::example("court.warrant.issued.json");
    doc["additionalInformation"]["kind"] = json!("breach");
    let r = route(&doc);
    assert_eq!(
        r.matched_routes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        ["ppo-warrant"]
    );
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook")
        ])
    );
}

#[test]
fn court_outcome_continues_to_the_next_hearing_listing_office() {
    let r = route(&common::example("court.hearing.concluded.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook")
        ]),
        "no next hearing: police only"
    );
    let mut doc = common::example("court.hearing.concluded.json");
    doc["additionalInformation"]["nextHearing"] = json!({"date": "2027-01-11", "court": {"code": "LEEDSMC", "name": "Leeds Magistrates' Court"}});
    let r = route(&doc);
    assert_eq!(r.matched_routes.len(), 2);
    assert!(targets(&r).contains(&("court-listing:LEEDSMC".into(), "email".into())));
    let listing = r
        .notifications
        .iter()
        .find(|n| n.recipient.id.as_str() == "court-listing:LEEDSMC")
        .unwrap();
    assert!(
        email(listing).1.contains("prolific and priority offender"),
        "court staff are told PPO status"
    );
}

/// A version 2 hearing as version 1 would carry it: no `finalised`, version 1.
fn as_version_1(v2: &Value) -> Value {
    let mut v1 = v2.clone();
    v1["version"] = json!(1);
    for outcome in v1["additionalInformation"]["outcomes"]
        .as_array_mut()
        .unwrap()
    {
        assert!(
            outcome
                .as_object_mut()
                .unwrap()
                .remove("finalised")
                .is_some()
        );
    }
    v1
}

#[test]
fn a_hearing_in_version_2_goes_where_the_same_hearing_in_version_1_goes() {
    for name in [
        "court.hearing.concluded--v2.json",
        "court.hearing.concluded--v2-all-finalised.json",
    ] {
        let v2 = common::example(name);
        let (r2, r1) = (route(&v2), route(&as_version_1(&v2)));
        assert!(r2.problems.is_empty() && r1.problems.is_empty(), "{name}");
        assert_eq!(r2.matched_routes, r1.matched_routes, "{name}");
        assert_eq!(targets(&r2), targets(&r1), "{name}");
        let facts = |r: &Routing| {
            r.notifications
                .iter()
                .map(|n| {
                    let (key, sla) = (n.key.clone(), n.sla.clone());
                    (key, n.route.clone(), n.priority, sla, n.marks.clone())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(facts(&r2), facts(&r1), "{name}");
        // The emails differ only by the finality written after each result.
        for (a, b) in r2.notifications.iter().zip(&r1.notifications) {
            if a.channel.as_str() != "email" {
                continue;
            }
            let ((s2, t2, h2), (s1, t1, h1)) = (email(a), email(b));
            let plain = |s: &str| s.replace(" (final)", "").replace(" (not final)", "");
            assert_eq!(
                (s2, plain(t2), plain(h2)),
                (s1, t1.to_owned(), h1.to_owned())
            );
            assert!(!t1.contains("final)") && !h1.contains("final)"), "{name}");
        }
    }
    let r = route(&common::example("court.hearing.concluded--v2.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook"),
            ("court-listing:LEEDSMC", "email")
        ])
    );
    let police = r
        .notifications
        .iter()
        .find(|n| n.recipient.id.as_str() == "police:WYP-LEEDS" && n.channel.as_str() == "email")
        .unwrap();
    let (_, text, html) = email(police);
    for body in [text, html] {
        assert!(body.contains("Guilty plea (final) (12 months"), "{body}");
        assert!(
            body.contains("Not guilty plea: adjourned for trial (not final)"),
            "{body}"
        );
    }
    let r = route(&common::example(
        "court.hearing.concluded--v2-all-finalised.json",
    ));
    assert_eq!(
        targets(&r),
        set(&[
            ("police:WYP-LEEDS", "email"),
            ("police:WYP-LEEDS", "webhook")
        ]),
        "no next hearing: police only"
    );
}

#[test]
fn an_unknown_bcu_is_reported_with_its_reason_not_dropped() {
    let mut doc = common::example("court.warrant.issued.json");
    doc["additionalInformation"]["offender"]["homeBcu"] = json!("XYZ-NOWHERE");
    let r = route(&doc);
    assert!(r.notifications.is_empty());
    assert_eq!(
        r.problems,
        [Problem::UnknownRecipient {
            route: "ppo-fta-warrant".into(),
            pattern: "police:{offender.homeBcu}".into(),
            reason: "police:XYZ-NOWHERE is not in the directory".into(),
        }]
    );
    // The listing office of an unknown court is reported the same way, while police are still told.
    let mut doc = common::example("court.hearing.concluded--adjourned.json");
    doc["additionalInformation"]["offender"]["homeBcu"] = json!("WYP-LEEDS");
    doc["additionalInformation"]["nextHearing"]["court"]["code"] = json!("NOWHERECC");
    let r = route(&doc);
    assert!(targets(&r).contains(&("police:WYP-LEEDS".into(), "email".into())));
    assert!(
        matches!(&r.problems[..], [Problem::UnknownRecipient { reason, .. }] if reason.contains("court-listing:NOWHERECC"))
    );
}

#[test]
fn the_judiciary_never_receives_ppo_status() {
    let r = route(&common::example("ppud.document.uploaded.json"));
    assert_eq!(
        targets(&r),
        set(&[
            ("legal-rep:SMITH-AND-CO", "email"),
            ("judiciary:PAROLE-BOARD", "email"),
            ("judiciary:PAROLE-BOARD", "webhook")
        ])
    );
    for n in r
        .notifications
        .iter()
        .filter(|n| n.recipient.id.as_str() == "judiciary:PAROLE-BOARD")
    {
        // The envelope's free-text description goes only to police, probation and prisons.
        assert_eq!(n.withheld, ["offender.ppo", "envelope.description"]);
        match &n.content {
            Content::Webhook { body, .. } => {
                let p: Value = serde_json::from_str(body).unwrap();
                let offender = &p["data"]["event"]["additionalInformation"]["offender"];
                assert!(
                    offender.is_object() && offender.get("ppo").is_none(),
                    "{offender}"
                );
                assert!(!body.contains("\"ppo\""));
            }
            Content::Email {
                subject,
                text,
                html,
                ..
            } => {
                for part in [subject, text, html] {
                    assert!(!part.contains("PPO"), "{part}");
                }
            }
        }
    }
    let lawyer = r
        .notifications
        .iter()
        .find(|n| n.recipient.id.as_str() == "legal-rep:SMITH-AND-CO")
        .unwrap();
    assert_eq!(
        lawyer.withheld,
        ["envelope.description"],
        "of this event only the free-text description is kept from legal representatives"
    );
}

#[test]
fn legal_representatives_hear_only_about_people_they_act_for() {
    // K7310PX is not among Smith & Co's clients: no one is told, and that is not a failure.
    let r = route(&common::example("ppud.document.uploaded--recall.json"));
    assert!(r.notifications.is_empty());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(
        r.skipped,
        [Skip::NoAuthorisedRecipient {
            route: "dossier-document-legal-reps".into(),
            selector: "legal-rep:*".into()
        }]
    );
}

/// The shipped configuration with its routes replaced by `routes`.
fn core_with_routes(routes: &str) -> Core {
    core_with("", routes).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The shipped configuration with `extra` (rules, say) added and its routes replaced.
fn core_with(extra: &str, routes: &str) -> Result<Core, Vec<String>> {
    let text = std::fs::read_to_string(common::root().join("routes.toml")).unwrap();
    let head = &text[..text.find("[[route]]").unwrap()];
    let config = Config::parse_in(&format!("{head}\n{extra}\n{routes}"), common::root()).unwrap();
    Core::from_config(config, &common::root().join("routes.toml"))
}

/// Everything a notification shows its recipient.
fn shown(n: &Notification) -> String {
    match &n.content {
        Content::Email {
            subject,
            text,
            html,
            ..
        } => format!("{subject}\n{text}\n{html}"),
        Content::Webhook { body, .. } => body.clone(),
    }
}

const EVERY_CLASS: &str = r#"
[[route]]
name = "everyone"
events = ["ppud.document.uploaded"]
to = ["police:WYP-LEEDS", "probation:PDU-LEEDS", "court-listing:LEEDSMC", "judiciary:PAROLE-BOARD", "legal-rep:SMITH-AND-CO"]
template = "document-uploaded"

[[route]]
name = "everyone-warrants"
events = ["court.warrant.issued"]
to = ["police:WYP-LEEDS", "probation:PDU-LEEDS", "court-listing:LEEDSMC", "judiciary:PAROLE-BOARD", "legal-rep:SMITH-AND-CO"]
template = "warrant-issued"
"#;

#[test]
fn a_person_has_at_most_one_identifier_of_each_type() {
    // Smith & Co act for A1234BC; a second NOMS number would leave it to chance which person
    // the dossier email is about.
    let mut doc = common::example("ppud.document.uploaded.json");
    doc["personReference"]["identifiers"] = serde_json::json!([
        {"type": "NOMS", "value": "A1234BC"},
        {"type": "NOMS", "value": "K7310PX"},
    ]);
    let body = serde_json::to_vec(&doc).unwrap();
    let rejection = common::core()
        .intake
        .accept(&body, EventId::new("evt-dup"))
        .unwrap_err();
    assert_eq!(rejection.reason.as_str(), "duplicate-identifier");
    assert_eq!(
        rejection.violations[0].pointer,
        "/personReference/identifiers/1"
    );
    assert!(
        !rejection.detail.contains("K7310PX"),
        "{}",
        rejection.detail
    );
    // One of each type is as before.
    doc["personReference"]["identifiers"][1] =
        serde_json::json!({"type": "PNC", "value": "2004/0123456X"});
    common::accept(&doc);
}

#[test]
fn array_paths_in_sensitive_rules_redact_every_element() {
    let core = core_with(
        r#"
[[sensitive]]
fields = ["offender.aliases[]", "offences[].description"]
never = ["judiciary"]
why = "aliases and offence wording are not for the panel in this test"
"#,
        EVERY_CLASS,
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let event = common::accept(&common::example("ppud.document.uploaded.json"));
    let r = core.route(&event, &Authority::seed());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let judge: Vec<&Notification> = r
        .notifications
        .iter()
        .filter(|n| n.recipient.class.as_str() == "judiciary")
        .collect();
    assert_eq!(judge.len(), 2, "email and webhook");
    for n in &judge {
        assert!(
            n.withheld.contains(&"offender.aliases[]".to_string()),
            "{:?}",
            n.withheld
        );
        let text = shown(n);
        assert!(
            !text.contains("Danny Kershaw") && !text.contains("Kirk"),
            "{text}"
        );
    }
    let police = r
        .notifications
        .iter()
        .find(|n| n.recipient.class.as_str() == "police" && n.channel.as_str() == "webhook")
        .unwrap();
    assert!(shown(police).contains("Danny Kershaw"));

    let mut warrant = common::example("court.warrant.issued.json");
    warrant["additionalInformation"]["offences"] = serde_json::json!([{"description": "Theft from a shop"}, {"description": "Assault by beating"}]);
    let r = core.route(&common::accept(&warrant), &Authority::seed());
    for n in r
        .notifications
        .iter()
        .filter(|n| n.recipient.class.as_str() == "judiciary")
    {
        let text = shown(n);
        assert!(
            !text.contains("Theft from a shop") && !text.contains("Assault by beating"),
            "{text}"
        );
        assert!(n.withheld.contains(&"offences[].description".to_string()));
    }
}

#[test]
fn a_sensitive_path_that_names_no_field_is_a_configuration_error() {
    for (path, ok) in [
        ("offender.alias", false),
        ("offender.aliases.0", true),
        ("offender.aliases[]", true),
        ("offender.aliases[].given", true),
        ("offences[].description", true),
        ("offences[].descripton", false),
        ("curfewAddress.postcode", true),
        ("offender.ppo.value", false),
    ] {
        let rule = format!("[[sensitive]]\nfields = [\"{path}\"]\nnever = [\"judiciary\"]\n");
        let result = core_with(&rule, EVERY_CLASS);
        match (result, ok) {
            (Ok(_), true) => {}
            (Err(errors), false) => assert!(
                errors
                    .iter()
                    .any(|e| e.contains(path) && e.contains("not a field")),
                "{path}: {errors:#?}"
            ),
            (Ok(_), false) => panic!("{path} was accepted"),
            (Err(errors), true) => panic!("{path}: {errors:#?}"),
        }
    }
}

#[test]
fn the_envelope_description_goes_only_to_the_classes_routes_toml_names() {
    let core = core_with_routes(EVERY_CLASS);
    let mut doc = common::example("ppud.document.uploaded.json");
    doc["description"] = serde_json::json!("Prolific and priority offender: dossier updated");
    let r = core.route(&common::accept(&doc), &Authority::seed());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    for n in &r.notifications {
        let class = n.recipient.class.as_str();
        let sees = ["police", "probation"].contains(&class);
        // Templates do not show it; webhook bodies carry it where it may go.
        let shows = shown(n).contains("Prolific and priority");
        if n.channel.as_str() == "webhook" {
            assert_eq!(shows, sees, "{class}: {}", shown(n));
        } else {
            assert!(!shows || sees, "{class}: {}", shown(n));
        }
        assert_eq!(
            n.withheld.contains(&"envelope.description".to_string()),
            !sees,
            "{class}: {:?}",
            n.withheld
        );
    }
}

#[test]
fn a_class_with_no_one_in_the_directory_is_still_a_failure() {
    let core = core_with_routes(
        r#"
[[route]]
name = "prisons"
events = ["prison.prisoner.received"]
to = ["prison:*"]
template = "prisoner-received"
"#,
    );
    let r = core.route(
        &common::accept(&common::example("prison.prisoner.received.json")),
        &Authority::seed(),
    );
    assert!(r.skipped.is_empty());
    assert_eq!(
        r.problems,
        [Problem::NoRecipients {
            route: "prisons".into(),
            selector: "prison:*".into()
        }]
    );
}

#[test]
fn addresses_go_only_to_police_and_probation() {
    let core = core_with_routes(
        r#"
[[route]]
name = "everyone"
events = ["prison.prisoner.released"]
to = ["police:WYP-LEEDS", "probation:PDU-LEEDS", "court-listing:LEEDSMC", "judiciary:PAROLE-BOARD", "legal-rep:SMITH-AND-CO"]
template = "prisoner-released"
"#,
    );
    let event = common::accept(&common::example("prison.prisoner.released.json"));
    let r = core.route(&event, &Authority::seed());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    for n in &r.notifications {
        let sees = !n.withheld.contains(&"releaseAddress".to_string());
        let class = n.recipient.class.as_str();
        assert_eq!(sees, class == "police" || class == "probation", "{class}");
        let text = match &n.content {
            Content::Email { text, html, .. } => format!("{text}{html}"),
            Content::Webhook { body, .. } => body.clone(),
        };
        assert_eq!(text.contains("LS8 4HU"), sees, "{class}: {text}");
    }
    assert_eq!(
        r.notifications
            .iter()
            .filter(|n| n.recipient.class.as_str() == "judiciary")
            .count(),
        2
    );
}

#[test]
fn a_named_legal_representative_without_authority_is_withheld_and_counted_not_failed() {
    let core = core_with_routes(
        r#"
[[route]]
name = "lawyer"
events = ["ppud.document.uploaded"]
to = ["legal-rep:SMITH-AND-CO"]
template = "document-uploaded"
"#,
    );
    let event = common::accept(&common::example("ppud.document.uploaded--recall.json"));
    let r = core.route(&event, &Authority::seed());
    assert!(r.notifications.is_empty());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(
        r.skipped,
        [Skip::NotAuthorised {
            route: "lawyer".into(),
            recipient: "legal-rep:SMITH-AND-CO".into(),
            why: Unauthorised::NeverShown
        }]
    );
    assert_eq!(
        r.notifications
            .iter()
            .filter(|n| matches!(n.sla, Sla::Untracked))
            .count(),
        0
    );
}

#[test]
fn idempotency_keys_are_stable_per_event_route_recipient_and_channel() {
    let body = serde_json::to_vec(&common::example("court.bail.decided.json")).unwrap();
    let keys = |id: &str| -> Vec<String> {
        let event: Event = common::core()
            .intake
            .accept(&body, EventId::new(id))
            .unwrap();
        common::core()
            .route(&event, &Authority::seed())
            .notifications
            .iter()
            .map(|n| n.key.to_string())
            .collect()
    };
    let first = keys("evt-1");
    assert_eq!(first.len(), 4);
    assert_eq!(first, keys("evt-1"), "same event id, same keys");
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>().len(),
        4,
        "one key per recipient and channel"
    );
    assert!(keys("evt-2").iter().all(|k| !first.contains(k)));
    // The derivation itself never changes between versions: a redelivery after an upgrade
    // must carry the key its first attempt had (SHA-256 over length-prefixed parts).
    assert_eq!(
        herald::notification::IdempotencyKey::derive(
            &EventId::new("evt-1"),
            "bail-decided",
            "police:WYP-LEEDS",
            herald::notification::Channel::Email
        )
        .as_str(),
        "msg_49852b477f79bc2ff5f71bdf1c3d14f4"
    );
}

#[test]
fn values_are_escaped_in_html_and_subjects_stay_on_one_line() {
    let mut doc = common::example("court.warrant.issued.json");
    doc["additionalInformation"]["offender"]["name"]["family"] =
        json!("<script>alert(1)</script>\r\nBcc: x@example.com");
    let r = route(&doc);
    let mail = r
        .notifications
        .iter()
        .find(|n| n.channel.as_str() == "email")
        .unwrap();
    let (subject, _, html) = email(mail);
    assert!(
        !subject.contains('\n') && !subject.contains('\r'),
        "{subject:?}"
    );
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;"));
}

/// Each copy of `info` with one field taken away or set to null, as far as `depth` levels
/// down: events that still pass the schema exercise each template's `#if`s and, for routes
/// of other event types, its missing-field errors.
fn altered(info: &Value, depth: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let Some(map) = info.as_object() else {
        return out;
    };
    for (key, value) in map {
        let mut without = info.clone();
        without.as_object_mut().unwrap().remove(key);
        out.push(without);
        let mut null = info.clone();
        null[key] = Value::Null;
        out.push(null);
        if depth > 0 {
            for inner in altered(value, depth - 1) {
                let mut changed = info.clone();
                changed[key] = inner;
                out.push(changed);
            }
        }
    }
    out
}

#[test]
fn compiled_templates_render_exactly_what_handlebars_renders() {
    let fast = common::core();
    let renderer = &fast.renderer;
    assert_eq!(
        renderer.compiled_parts(),
        3 * renderer.names().count(),
        "every part of every shipped template renders by compiled steps"
    );
    let mut reference = Core::load(&common::root().join("routes.toml")).unwrap();
    reference.renderer.set_handlebars_only(true);

    let (mut same_text, mut same_error, mut same_routing) = (0, 0, 0);
    let mut names: Vec<_> = std::fs::read_dir(common::root().join("schemas/examples/valid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let doc = common::example(&name);
        let mut docs = vec![doc.clone()];
        for info in altered(&doc["additionalInformation"], 2) {
            let mut changed = doc.clone();
            changed["additionalInformation"] = info;
            docs.push(changed);
        }
        for (i, doc) in docs.iter().enumerate() {
            let body = serde_json::to_vec(doc).unwrap();
            let Ok(event) = fast.intake.accept(&body, EventId::new("evt-compare")) else {
                continue;
            };
            // The engine drafts each email once for the recipients who see the same data.
            let routed = serde_json::to_value(fast.route(&event, &Authority::seed())).unwrap();
            assert_eq!(
                routed,
                serde_json::to_value(reference.route(&event, &Authority::seed())).unwrap(),
                "{name} (variant {i}): routed"
            );
            same_routing += routed["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["channel"] == "email")
                .count();
            for route in &fast.engine.routes {
                // The example as shipped goes through every route; altered ones through theirs.
                if i > 0 && !route.matches(&event) {
                    continue;
                }
                for recipient in fast.engine.directory.all() {
                    let ours = fast.preview_email(route, &event, recipient);
                    let theirs = reference.preview_email(route, &event, recipient);
                    match (&ours, &theirs) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a, b, "{name} (variant {i}), route {}", route.name);
                            same_text += 1;
                        }
                        (Err(_), Err(_)) => same_error += 1,
                        _ => panic!(
                            "{name} (variant {i}), route {}, {}: compiled {ours:?}, Handlebars {theirs:?}",
                            route.name, recipient.id
                        ),
                    }
                }
            }
        }
    }
    eprintln!(
        "{same_text} emails rendered alike, {same_error} refused alike, {same_routing} emails routed alike"
    );
    assert!(
        same_text >= 400 && same_error >= 1_000 && same_routing >= 40,
        "{same_text} {same_error} {same_routing}"
    );
}

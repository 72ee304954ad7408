//! Hostile and broken input at the intake: every rejection reason with a specific detail,
//! no personal data in any rejection, and no input of any shape that makes Herald panic.

mod common;

use std::collections::HashSet;

use common::{core, example, examples};
use herald::event::{Event, EventId};
use herald::intake::{Message, Reason, Rejection};
use herald::notification::Problem;
use herald::render::Routing;
use herald::route::Authority;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};

/// The size limit routes.toml sets (`max_event_bytes = "256 KiB"`).
const LIMIT: usize = 256 * 1024;

fn process(body: &[u8]) -> Result<(Event, Routing), Rejection> {
    core().process(body, EventId::new("test"))
}

fn reject(body: &[u8]) -> Rejection {
    match process(body) {
        Ok((event, _)) => panic!("accepted as {} v{}", event.event_type, event.version),
        Err(r) => r,
    }
}

fn reject_doc(doc: &Value) -> Rejection {
    reject(&serde_json::to_vec(doc).unwrap())
}

fn warrant() -> Value {
    example("court.warrant.issued.json")
}

fn pointers(r: &Rejection) -> Vec<&str> {
    r.violations.iter().map(|v| v.pointer.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// One test per rejection reason.

#[test]
fn a_body_over_the_size_limit_is_too_large_and_says_both_sizes() {
    let mut doc = warrant();
    doc["description"] = Value::String("x".repeat(LIMIT + 1024));
    let body = serde_json::to_vec(&doc).unwrap();
    assert!(body.len() > LIMIT);

    let r = reject(&body);
    assert_eq!(r.reason, Reason::TooLarge, "{r}");
    assert!(
        r.detail.contains(&format!("{} bytes", body.len())),
        "the detail gives the body's size: {}",
        r.detail
    );
    assert!(
        r.detail.contains(&LIMIT.to_string()),
        "the detail gives the limit: {}",
        r.detail
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn the_size_limit_is_inclusive() {
    let mut doc = warrant();
    doc["description"] = Value::String(String::new());
    let base = serde_json::to_vec(&doc).unwrap().len();

    doc["description"] = Value::String("x".repeat(LIMIT - base));
    let body = serde_json::to_vec(&doc).unwrap();
    assert_eq!(body.len(), LIMIT);
    if let Err(r) = process(&body) {
        panic!("an event of exactly the limit is refused: {r}");
    }

    doc["description"] = Value::String("x".repeat(LIMIT - base + 1));
    let body = serde_json::to_vec(&doc).unwrap();
    assert_eq!(body.len(), LIMIT + 1);
    assert_eq!(reject(&body).reason, Reason::TooLarge);
}

#[test]
fn invalid_utf8_is_not_utf8_and_gives_the_offset() {
    let mut body = serde_json::to_vec(&warrant()).unwrap();
    let at = body
        .windows(b"Kershaw".len())
        .position(|w| w == b"Kershaw")
        .unwrap();
    body[at] = 0xFF;

    let r = reject(&body);
    assert_eq!(r.reason, Reason::NotUtf8, "{r}");
    assert!(
        r.detail.contains(&format!("offset {at}")),
        "the detail gives the offset of the bad byte ({at}): {}",
        r.detail
    );
    assert!(!r.detail.contains("ershaw"), "{}", r.detail);

    // A lone continuation byte and a truncated sequence at the very start.
    for body in [&b"\x80{}"[..], &b"\xE2\x82"[..]] {
        let r = reject(body);
        assert_eq!(r.reason, Reason::NotUtf8, "{body:?}: {r}");
        assert!(r.detail.contains("offset 0"), "{}", r.detail);
    }
}

#[test]
fn ten_thousand_nested_brackets_are_too_deep_without_overflowing_the_stack() {
    let unclosed = "[".repeat(10_000);
    let closed = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    for body in [unclosed, closed, objects] {
        let r = reject(body.as_bytes());
        assert_eq!(r.reason, Reason::TooDeep, "{r}");
        assert!(
            r.detail.contains("32 levels"),
            "the detail gives the limit: {}",
            r.detail
        );
        assert!(
            r.detail.contains("offset"),
            "the detail says where: {}",
            r.detail
        );
    }
    let r = reject("[".repeat(10_000).as_bytes());
    assert!(
        r.detail.contains("byte offset 32"),
        "the 33rd bracket is the first too deep: {}",
        r.detail
    );
}

#[test]
fn depth_is_checked_before_the_schema() {
    let mut doc = warrant();
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    doc["additionalInformation"]["deep"] = deep;
    assert_eq!(reject_doc(&doc).reason, Reason::TooDeep);
}

#[test]
fn brackets_inside_strings_do_not_count_as_depth() {
    let mut doc = warrant();
    doc["description"] = Value::String(format!("\\\"{}{}", "[{".repeat(100), "\""));
    let body = serde_json::to_vec(&doc).unwrap();
    if let Err(r) = process(&body) {
        panic!("brackets in a string counted as nesting: {r}");
    }
}

#[test]
fn truncated_json_is_malformed_and_says_where_without_quoting_it() {
    let body = serde_json::to_vec_pretty(&warrant()).unwrap();
    let text = String::from_utf8(body.clone()).unwrap();
    let cut = text.find("Kershaw").unwrap() + "Kershaw".len();

    let r = reject(&body[..cut]);
    assert_eq!(r.reason, Reason::MalformedJson, "{r}");
    assert!(r.detail.contains("unexpected end of input"), "{}", r.detail);
    let line = text[..cut].lines().count();
    assert!(
        r.detail.contains(&format!("line {line}")),
        "the detail gives the line ({line}): {}",
        r.detail
    );
    assert!(!r.detail.contains("Kershaw"), "{}", r.detail);
    assert!(r.violations.is_empty(), "{:?}", r.violations);

    let r = reject(br#"{"eventType": "court.warrant.issued", "version": 1,}"#);
    assert_eq!(r.reason, Reason::MalformedJson, "{r}");
    assert!(r.detail.contains("syntax error"), "{}", r.detail);
    assert!(r.detail.contains("column"), "{}", r.detail);
}

#[test]
fn a_document_that_is_not_an_object_is_a_schema_violation_at_the_root() {
    let wrapped = serde_json::to_string(&json!([warrant()])).unwrap();
    for body in [
        "[]",
        "[1, 2, 3]",
        wrapped.as_str(),
        r#""court.warrant.issued""#,
        "42",
        "null",
        "true",
    ] {
        let r = reject(body.as_bytes());
        assert_eq!(r.reason, Reason::SchemaViolation, "{body:.40}: {r}");
        assert_eq!(pointers(&r), [""], "{body:.40}: {r}");
        assert!(
            r.violations[0].message.contains("object"),
            "{body:.40}: {}",
            r.violations[0].message
        );
        assert!(
            r.detail.starts_with("1 schema violation(s)"),
            "{}",
            r.detail
        );
    }
}

#[test]
fn an_unknown_event_type_is_reported_at_event_type() {
    let mut doc = warrant();
    doc["eventType"] = json!("court.warrant.cancelled");
    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::UnknownEventType, "{r}");
    assert_eq!(pointers(&r), ["/eventType"]);
    assert!(
        r.detail.contains("court.warrant.cancelled"),
        "the detail names the type: {}",
        r.detail
    );
}

#[test]
fn an_unsupported_version_is_reported_at_version_with_the_supported_ones() {
    let mut doc = warrant();
    doc["version"] = json!(7);
    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::UnsupportedVersion, "{r}");
    assert_eq!(pointers(&r), ["/version"]);
    assert!(r.detail.contains("version 7"), "{}", r.detail);
    assert!(r.detail.contains("court.warrant.issued"), "{}", r.detail);
    assert!(r.detail.contains("supported: 1"), "{}", r.detail);
}

#[test]
fn schema_violations_name_each_offending_pointer() {
    // A value outside an enum.
    let mut doc = warrant();
    doc["additionalInformation"]["kind"] = json!("arrest-on-sight");
    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::SchemaViolation, "{r}");
    assert_eq!(pointers(&r), ["/additionalInformation/kind"]);
    assert!(
        r.detail.contains("/additionalInformation/kind"),
        "{}",
        r.detail
    );
    assert!(
        r.violations[0].message.contains("failure-to-appear"),
        "the message lists the allowed values: {}",
        r.violations[0].message
    );

    // A required field missing, and an unknown one, at once.
    let mut doc = warrant();
    let info = doc["additionalInformation"].as_object_mut().unwrap();
    info.remove("warrantId");
    info.insert("cellLocation".into(), json!("B-2-14"));
    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::SchemaViolation, "{r}");
    let got: HashSet<&str> = pointers(&r).into_iter().collect();
    let want: HashSet<&str> = [
        "/additionalInformation/warrantId",
        "/additionalInformation/cellLocation",
    ]
    .into();
    assert_eq!(got, want, "{r}");
    assert!(
        r.detail.starts_with("2 schema violation(s)"),
        "{}",
        r.detail
    );

    // A wrong type deep inside.
    let mut doc = warrant();
    doc["additionalInformation"]["offender"]["ppo"] = json!("yes");
    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::SchemaViolation, "{r}");
    assert_eq!(pointers(&r), ["/additionalInformation/offender/ppo"]);
    assert!(
        r.violations[0].message.contains("boolean"),
        "{}",
        r.violations[0].message
    );
}

#[test]
fn a_whole_number_written_as_a_float_version_is_accepted_or_refused_at_version() {
    let mut doc = warrant();
    doc["version"] = json!(1.0);
    let body = serde_json::to_string(&doc).unwrap();
    assert!(body.contains(r#""version":1.0"#), "{body}");
    if let Err(r) = process(body.as_bytes()) {
        assert!(
            pointers(&r).contains(&"/version"),
            "refused without saying where: {r}"
        );
    }
}

#[test]
fn an_accepted_event_with_a_far_off_deadline_still_gets_its_emails() {
    let mut doc = example("court.bail.decided.json");
    // The latest instant the contract allows: 2099-12-31 in the last offset of the day.
    doc["occurredAt"] = json!("2099-12-31T23:59:59-23:59");
    let (_, routing) =
        process(&serde_json::to_vec(&doc).unwrap()).unwrap_or_else(|r| panic!("refused: {r}"));
    assert_eq!(
        routing.matched_routes.len(),
        1,
        "{:?}",
        routing.matched_routes
    );
    let failed: Vec<String> = routing
        .problems
        .iter()
        .filter(|p| matches!(p, Problem::RenderFailed { .. }))
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

// ---------------------------------------------------------------------------------------
// Personal data never appears in a rejection.

#[test]
fn rejections_never_quote_names_or_dates_of_birth() {
    let given = "Daniel";
    let family = "Kershaw";
    let dob = "14/03/1988";
    let mut doc = warrant();
    assert_eq!(
        doc["additionalInformation"]["offender"]["name"],
        json!({"given": given, "family": family})
    );
    let offender = &mut doc["additionalInformation"]["offender"];
    offender["dateOfBirth"] = json!(dob);
    offender["maidenName"] = json!(family);
    doc["additionalInformation"]["kind"] = json!(given);
    doc["personReference"]["identifiers"][0]["value"] = json!(family);
    doc["spokenName"] = json!(format!("{given} {family}"));

    let r = reject_doc(&doc);
    assert_eq!(r.reason, Reason::SchemaViolation, "{r}");
    let got: HashSet<&str> = pointers(&r).into_iter().collect();
    for want in [
        "/additionalInformation/offender/dateOfBirth",
        "/additionalInformation/offender/maidenName",
        "/additionalInformation/kind",
        "/personReference/identifiers/0/value",
        "/spokenName",
    ] {
        assert!(got.contains(want), "no violation at {want}: {r}");
    }
    let texts =
        std::iter::once(r.detail.as_str()).chain(r.violations.iter().map(|v| v.message.as_str()));
    for text in texts {
        for secret in [given, family, dob] {
            assert!(!text.contains(secret), "{secret:?} leaks into {text:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties: nothing panics, and accepted events route.

/// Strings that reach deeper code when they land in the right field: dates for deadlines,
/// directory codes for recipient patterns, template syntax for rendering.
const INTERESTING: &[&str] = &[
    "",
    "true",
    "false",
    "2026-11-20",
    "2026-11-20T15:42:00Z",
    "2026-03-29T01:30:00+00:00",
    "2026-10-25",
    "2026-10-25T01:30:00+01:00",
    "2031-01-01",
    "0001-01-01",
    "9999-12-31",
    "9999-12-31T23:59:59-23:59",
    "0000-01-01T00:00:00+23:59",
    "1900-01-01",
    "2099-12-31",
    "1900-01-01T00:00:00+23:59",
    "2099-12-31T23:59:59-23:59",
    "2026-12-31T23:59:60Z",
    "WYP-LEEDS",
    "PDU-LEEDS",
    "LEEDSMC",
    "approved",
    "refused",
    "parole",
    "failure-to-appear",
    "A1234BC",
    "{{info}}",
    "{{{info.offender}}}",
    "<script>alert(1)</script>",
    "line\r\nbreak",
    "\u{0}",
    "🦀",
];

const KEYS: &[&str] = &[
    "eventType",
    "version",
    "occurredAt",
    "publishedAt",
    "description",
    "personReference",
    "identifiers",
    "type",
    "value",
    "additionalInformation",
    "offender",
    "ppo",
    "homeBcu",
    "pdu",
    "name",
    "given",
    "family",
    "releaseDate",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..5).prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        any::<String>().prop_map(Value::String),
        prop::sample::select(INTERESTING).prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "[a-zA-Z~/]{0,8}",
        any::<String>(),
    ]
}

/// Any JSON value, at most four containers deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Any JSON value, or an envelope of a known type around arbitrary parts, so the schemas and
/// not only the envelope check see the arbitrary data.
fn json_document() -> impl Strategy<Value = Value> {
    let types: Vec<String> = core()
        .intake
        .schemas()
        .event_types()
        .map(|t| t.as_str().to_owned())
        .collect();
    prop_oneof![
        json_value(),
        (
            prop::sample::select(types),
            0u64..3,
            json_value(),
            json_value(),
            json_value()
        )
            .prop_map(|(t, version, when, person, info)| {
                json!({
                    "eventType": t,
                    "version": version,
                    "occurredAt": when,
                    "publishedAt": "2026-11-20T15:43:10Z",
                    "personReference": person,
                    "additionalInformation": info,
                })
            }),
    ]
}

/// Random bytes, or a valid example cut short or with one byte changed.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    let count = examples().len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (0..count, any::<Index>(), any::<u8>()).prop_map(|(i, at, byte)| {
            let mut body = serde_json::to_vec(&examples()[i].1).unwrap();
            let at = at.index(body.len());
            body[at] = byte;
            body
        }),
        (0..count, any::<Index>()).prop_map(|(i, at)| {
            let body = serde_json::to_vec(&examples()[i].1).unwrap();
            let at = at.index(body.len());
            body[..at].to_vec()
        }),
    ]
}

/// JSON pointers (RFC 6901) of every leaf: scalars and empty containers.
fn leaves(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                leaves(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// A new value for a leaf: any JSON value, or (half the time) one of the leaf's own kind, so
/// that enough of the changed events pass the schema to reach routing and rendering.
#[derive(Debug, Clone)]
struct Replacement {
    any: Value,
    same_kind: bool,
    text: String,
    flag: bool,
    number: i64,
}

impl Replacement {
    fn for_leaf(self, original: &Value) -> Value {
        match original {
            _ if !self.same_kind => self.any,
            Value::String(_) => Value::String(self.text),
            Value::Bool(_) => Value::Bool(self.flag),
            Value::Number(_) => Value::from(self.number),
            _ => self.any,
        }
    }
}

fn replacement() -> impl Strategy<Value = Replacement> {
    let text = prop_oneof![
        prop::sample::select(INTERESTING).prop_map(str::to_owned),
        any::<String>(),
        "[A-Za-z][A-Za-z '-]{0,20}",
    ];
    let number = prop_oneof![-2i64..10, any::<i64>()];
    (json_value(), any::<bool>(), text, any::<bool>(), number).prop_map(
        |(any, same_kind, text, flag, number)| Replacement {
            any,
            same_kind,
            text,
            flag,
            number,
        },
    )
}

/// What must hold of any routing of an accepted event.
fn check_routing(event: &Event, routing: &Routing) -> Result<(), TestCaseError> {
    let again = core().route(event, &Authority::seed());
    prop_assert_eq!(
        serde_json::to_value(routing).unwrap(),
        serde_json::to_value(&again).unwrap(),
        "routing the same event twice gave different results"
    );
    let mut keys = HashSet::new();
    for n in &routing.notifications {
        prop_assert!(
            n.key.as_str().starts_with("msg_"),
            "idempotency key {:?} does not start with msg_",
            n.key.as_str()
        );
        prop_assert!(
            keys.insert(n.key.clone()),
            "two notifications share the key {}",
            n.key
        );
    }
    Ok(())
}

/// What the service reads off an AMQP message besides its body: a routing key (the body's
/// type or anything), an id, a publisher login, a content type, the size of its headers.
#[derive(Debug, Clone)]
struct Props {
    routing_key: Option<String>,
    message_id: Option<String>,
    user_id: Option<String>,
    content_type: Option<String>,
    header_bytes: usize,
}

fn props() -> impl Strategy<Value = Props> {
    let text = || {
        prop_oneof![
            any::<String>(),
            prop::sample::select(INTERESTING).prop_map(str::to_owned),
            Just(String::new()),
        ]
    };
    (
        prop::option::of(text()),
        prop::option::of(prop_oneof![text(), "evt-[a-z0-9]{1,12}"]),
        prop::option::of(prop_oneof![
            Just("court".to_owned()),
            Just("prison".to_owned()),
            Just("ppud".to_owned()),
            text()
        ]),
        prop::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("application/json; charset=utf-8".to_owned()),
            text()
        ]),
        prop_oneof![0usize..20_000, Just(16 * 1024), Just(16 * 1024 + 1)],
    )
        .prop_map(
            |(routing_key, message_id, user_id, content_type, header_bytes)| Props {
                routing_key,
                message_id,
                user_id,
                content_type,
                header_bytes,
            },
        )
}

/// Admission of any body with any properties: no panic; an admitted event agrees with its
/// routing key, has an id and a publisher who may send it; a refusal is one bounded line.
fn check_admission(body: &[u8], p: &Props) -> Result<(), TestCaseError> {
    let event_type = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["eventType"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let routing_key = p.routing_key.clone().unwrap_or(event_type);
    let message = Message {
        body,
        routing_key: &routing_key,
        message_id: p.message_id.as_deref(),
        user_id: p.user_id.as_deref(),
        content_type: p.content_type.as_deref(),
        header_bytes: p.header_bytes,
    };
    match core().admit(&message) {
        Ok(event) => {
            prop_assert_eq!(event.event_type.as_str(), routing_key.as_str());
            prop_assert!(!event.id.as_str().trim().is_empty());
            let user = event.id.publisher().unwrap_or_default();
            prop_assert!(core().publishers.allows(user, event.event_type.as_str()));
            prop_assert!(p.header_bytes <= 16 * 1024);
            check_routing(&event, &core().route(&event, &Authority::seed()))?;
        }
        Err(r) => {
            prop_assert!(
                !r.detail.chars().any(char::is_control),
                "control characters in {:?}",
                r.detail
            );
            prop_assert!(
                r.detail.chars().count() <= 4000,
                "{} characters",
                r.detail.len()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(body in body_bytes()) {
        if let Ok((event, routing)) = process(&body) {
            check_routing(&event, &routing)?;
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_accepted_json_routes(doc in json_document()) {
        let body = serde_json::to_vec(&doc).unwrap();
        match process(&body) {
            Ok((event, routing)) => check_routing(&event, &routing)?,
            Err(r) => prop_assert!(
                !matches!(r.reason, Reason::TooLarge | Reason::NotUtf8 | Reason::MalformedJson),
                "serialised JSON refused as {}", r
            ),
        }
    }

    #[test]
    fn a_valid_example_with_one_leaf_replaced_never_panics(
        which in any::<Index>(),
        leaf in any::<Index>(),
        replacement in replacement(),
    ) {
        let (name, original) = &examples()[which.index(examples().len())];
        let mut all = Vec::new();
        leaves(original, String::new(), &mut all);
        let pointer = &all[leaf.index(all.len())];
        let mut doc = original.clone();
        let slot = doc.pointer_mut(pointer).unwrap();
        *slot = replacement.for_leaf(slot);
        let body = serde_json::to_vec(&doc).unwrap();
        match process(&body) {
            Ok((event, routing)) => check_routing(&event, &routing)?,
            Err(r) => prop_assert!(
                matches!(
                    r.reason,
                    Reason::SchemaViolation
                        | Reason::UnknownEventType
                        | Reason::UnsupportedVersion
                        | Reason::DuplicateIdentifier
                ),
                "{} with {} replaced: refused as {}", name, pointer, r
            ),
        }
    }

    #[test]
    fn any_message_is_admitted_consistently_or_refused_in_one_bounded_line(
        body in prop_oneof![
            body_bytes(),
            json_document().prop_map(|d| serde_json::to_vec(&d).unwrap()),
            (0..examples().len()).prop_map(|i| serde_json::to_vec(&examples()[i].1).unwrap()),
        ],
        p in props(),
    ) {
        check_admission(&body, &p)?;
    }
}

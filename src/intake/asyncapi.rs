//! The event contract as one AsyncAPI 3.0 document (`herald asyncapi`; docs/asyncapi.json is
//! it): the events exchange as routes.toml names it, a channel per event type whose address
//! is the routing key (the eventType), a message per version whose payload is that version's
//! schema, and what admission (`message.rs`) asks of the AMQP message around the body. Made
//! from the schemas as loaded, routes.toml and the valid examples the caller read: nothing
//! here reads a file.
//!
//! Herald's schemas are JSON Schema 2020-12, in several files joined by `$id` and `$ref`.
//! AsyncAPI tools must read JSON Schema draft-07, so the document carries each file, and each
//! shared definition of common.schema.json, as a draft-07 schema of its own in
//! `components.schemas`, every `$ref` rewritten to the component it names. Where the drafts
//! differ for these schemas: 2020-12 applies the keywords beside a `$ref` as well, draft-07
//! ignores them, so a `$ref` with siblings becomes the first member of an `allOf`; `$id` and
//! `$schema` go (a component is found by its place, not its `$id`). A keyword draft-07 lacks
//! is refused rather than carried over to be ignored.

use serde_json::{Map, Value, json};
use url::Url;

use super::{Publishers, SchemaFile, SchemaSet};
use crate::config::Config;

/// The AsyncAPI version the document follows.
pub const ASYNCAPI: &str = "3.0.0";

/// The schema format of every schema in the document.
const DRAFT_07: &str = "application/schema+json;version=draft-07";

/// The version of the AMQP bindings used.
const AMQP_BINDING: &str = "0.3.0";

/// Keywords of JSON Schema 2019-09 and 2020-12 that draft-07 lacks: a schema that uses one
/// would accept more as draft-07 than Herald does.
const NOT_IN_DRAFT_07: [&str; 11] = [
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "dependentRequired",
    "dependentSchemas",
    "minContains",
    "maxContains",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
];

/// A valid example event for the document's messages, named by its file's stem.
#[derive(Debug, Clone)]
pub struct Example {
    pub name: String,
    pub event: Value,
}

/// The document. Keys come out sorted (serde_json's map), so the same schemas and
/// configuration always give the same text.
///
/// String error: the words `herald asyncapi` prints, naming the schema file and what in it
/// cannot be published.
pub fn document(
    schemas: &SchemaSet,
    config: &Config,
    examples: &[Example],
) -> Result<Value, String> {
    let bundle = Bundle::new(schemas)?;
    let (publishers, _) = Publishers::build(&config.publishers);
    let amqp = &config.amqp;
    // The virtual host of routes.toml's first node (the environment's URLs are not read:
    // they hold passwords, and the document describes the configuration).
    let vhost = vhost(amqp.node_urls(|_| None).first().map_or("", String::as_str));

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for event_type in schemas.event_types() {
        let name = event_type.as_str();
        let versions = schemas.versions(event_type);
        let agency = name.split('.').next().unwrap_or(name);
        let logins: Vec<&str> = config
            .publishers
            .keys()
            .map(String::as_str)
            .filter(|login| publishers.allows(login, name))
            .collect();
        let who = if logins.is_empty() {
            "No login in routes.toml's `[publishers]` may publish it.".to_owned()
        } else {
            format!(
                "Published by the RabbitMQ login(s) {} (routes.toml's `[publishers]`).",
                quoted(&logins)
            )
        };
        let mut channel_messages = Map::new();
        let mut operation_messages = Vec::new();
        for version in versions {
            let id = message_name(name, *version);
            let source = bundle
                .event(name, *version)
                .ok_or_else(|| format!("{id}: no schema"))?;
            let mut message = json!({
                "name": id,
                "title": source.get("title").cloned().unwrap_or_else(|| json!(id)),
                "summary": format!("{name}, version {version}"),
                "contentType": "application/json",
                "payload": { "$ref": format!("#/components/schemas/{id}") },
                "traits": [ { "$ref": "#/components/messageTraits/amqp" } ],
            });
            if let Some(d) = source.get("description") {
                message["description"] = d.clone();
            }
            let shown: Vec<Value> = examples
                .iter()
                .filter(|e| e.event["eventType"] == *name && e.event["version"] == json!(*version))
                .map(|e| json!({ "name": e.name, "payload": e.event }))
                .collect();
            if !shown.is_empty() {
                message["examples"] = Value::Array(shown);
            }
            messages.insert(id.clone(), message);
            channel_messages.insert(
                id.clone(),
                json!({ "$ref": format!("#/components/messages/{id}") }),
            );
            operation_messages.push(json!({ "$ref": format!("#/channels/{name}/messages/{id}") }));
        }
        let listed: Vec<String> = versions.iter().map(u64::to_string).collect();
        channels.insert(
            name.to_owned(),
            json!({
                "address": name,
                "title": name,
                "description": format!(
                    "Routing key `{name}` on the `{exchange}` exchange. Version(s) {}: the \
                     envelope's `version` says which schema the body follows. {who}",
                    listed.join(", "),
                    exchange = amqp.exchange,
                ),
                "messages": channel_messages,
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": amqp.exchange,
                        "type": "topic",
                        "durable": true,
                        "autoDelete": false,
                        "vhost": vhost,
                    },
                    "bindingVersion": AMQP_BINDING,
                } },
            }),
        );
        operations.insert(
            format!("receive.{name}"),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{name}") },
                "title": format!("Herald receives {name}"),
                "description": format!(
                    "Herald takes every message on `{exchange}` from its queue `{queue}` (bound \
                     with `#`), admits it (the message's properties, then the body against the \
                     schema of its `eventType` and `version`, then whether the routing key is \
                     the `eventType` and the login may publish it), routes it and delivers the \
                     notifications. A message it refuses is parked in `{rejected}` with the \
                     reason (docs/contract.md lists them). Publish with publisher confirms, \
                     `mandatory` and persistent delivery.",
                    exchange = amqp.exchange,
                    queue = amqp.queue,
                    rejected = amqp.rejected_queue,
                ),
                "tags": [ { "name": agency } ],
                "messages": operation_messages,
                "bindings": { "amqp": {
                    "deliveryMode": 2,
                    "mandatory": true,
                    "ack": true,
                    "bindingVersion": AMQP_BINDING,
                } },
            }),
        );
    }

    Ok(json!({
        "asyncapi": ASYNCAPI,
        "info": {
            "title": "Herald event contract",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description(config),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "title": "Herald's RabbitMQ",
                "description": "The broker Herald consumes from. Its address, and your login, \
                    come from Herald's operators; with TLS the protocol is `amqps`.",
                "variables": { "host": {
                    "description": "host:port of a node of the broker (5672 for AMQP, 5671 \
                        for AMQP over TLS); with a cluster, any node.",
                } },
                "security": [ { "$ref": "#/components/securitySchemes/login" } ],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": bundle.components,
            "messages": messages,
            "messageTraits": { "amqp": trait_amqp(config) },
            "securitySchemes": { "login": {
                "type": "userPassword",
                "description": "Your system's own RabbitMQ login and password, made by Herald's \
                    operators. The login needs only write permission on the exchange, and is \
                    the `user_id` of every message you publish.",
            } },
        },
    }))
}

/// The document's introduction: the message in a few lines, with routes.toml's names.
fn description(config: &Config) -> String {
    let amqp = &config.amqp;
    let limits = &config.limits;
    format!(
        "Every event an agency system publishes to Herald, and the AMQP message around it. \
         Start here to publish; docs/contract.md says the same in words, with the reasons \
         Herald gives when it refuses an event.\n\n\
         Publish each event as one AMQP 0-9-1 message to the `{exchange}` exchange (a durable \
         topic exchange Herald declares when it starts) with the event's `eventType` as the \
         routing key: each channel below is one event type, its address the routing key.\n\n\
         The message (the `amqp` message trait; `x-amqp-properties` is it as a JSON Schema):\n\n\
         - `message_id`: required, unique and never empty; the same on every re-send of the \
         event.\n\
         - `user_id`: required, your RabbitMQ login (the broker checks it).\n\
         - `content_type`: `application/json` (parameters such as a charset are fine).\n\
         - `delivery_mode`: 2 (persistent).\n\
         - headers: optional and yours, at most {header_bytes} bytes encoded \
         (`limits.max_header_bytes`), none named `x-herald-...`.\n\
         - body: one JSON event, UTF-8, at most {event_bytes} bytes \
         (`limits.max_event_bytes`), nested at most {depth} deep (`limits.max_depth`), valid \
         against the schema of its `eventType` and `version`.\n\n\
         The schemas are Herald's JSON Schema 2020-12 files (`schemas/`), given here as \
         draft-07 with the same meaning. Herald checks `format` (`date`, `date-time`, `uri`) \
         as a rule, not a hint: turn format checking on in your validator to get Herald's \
         answer.\n\n\
         Made by `herald asyncapi` from the schemas, routes.toml and the valid examples.",
        exchange = amqp.exchange,
        header_bytes = limits.max_header_bytes.as_u64(),
        event_bytes = limits.max_event_bytes.as_u64(),
        depth = limits.max_depth,
    )
}

/// What every message shares: the content type, the headers, the AMQP properties admission
/// reads, and the limits.
fn trait_amqp(config: &Config) -> Value {
    let limits = &config.limits;
    json!({
        "contentType": "application/json",
        "headers": {
            "schemaFormat": DRAFT_07,
            "schema": {
                "title": "AMQP headers",
                "description": format!(
                    "Your own headers, optional; Herald does not read them. Their encoded size \
                     (the AMQP field table as it goes on the wire) is at most {} bytes \
                     (`limits.max_header_bytes`): more is `headers-too-large`. Names starting \
                     `x-herald-` (any case) are Herald's: they are never copied onto a parked \
                     copy of your message.",
                    limits.max_header_bytes.as_u64()
                ),
                "type": "object",
                "propertyNames": { "not": { "pattern": "^[Xx]-[Hh][Ee][Rr][Aa][Ll][Dd]-" } },
            },
        },
        "bindings": { "amqp": { "bindingVersion": AMQP_BINDING } },
        "x-amqp-properties": {
            "title": "AMQP properties",
            "description": "The message's AMQP basic properties that Herald's admission reads. \
                Others (correlation_id, timestamp, type, app_id) are not read; they are kept on \
                a parked copy, where they may help you find it.",
            "type": "object",
            "required": ["message_id", "user_id", "content_type"],
            "properties": {
                "message_id": {
                    "description": "The event's id, unique and the same on every re-send of \
                        the event: with your login it identifies the event, and the \
                        idempotency key of each notification is derived from it. Missing, \
                        empty or only spaces: `missing-message-id`.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "\\S",
                },
                "user_id": {
                    "description": "Your RabbitMQ login. The broker refuses a publish whose \
                        user_id is not the connection's login, so it proves who published. \
                        Missing, or a login routes.toml's `[publishers]` does not allow to \
                        publish the event's type: `unauthorised-publisher`.",
                    "type": "string",
                    "minLength": 1,
                },
                "content_type": {
                    "description": "`application/json`, in any case, with or without \
                        parameters. Anything else, or none: `wrong-content-type`.",
                    "type": "string",
                    "pattern": "^\\s*[Aa][Pp][Pp][Ll][Ii][Cc][Aa][Tt][Ii][Oo][Nn]/[Jj][Ss][Oo][Nn]\\s*(;.*)?$",
                },
                "delivery_mode": {
                    "description": "2, persistent. A message without it is taken, but counted \
                        (herald_events_non_persistent_total) and logged for the operator.",
                    "const": 2,
                },
                "content_encoding": {
                    "description": "Not read: send the JSON itself, not a compressed form.",
                },
            },
        },
        "x-herald-limits": {
            "maxEventBytes": limits.max_event_bytes.as_u64(),
            "maxDepth": limits.max_depth,
            "maxHeaderBytes": limits.max_header_bytes.as_u64(),
        },
    })
}

/// The vhost of an AMQP URL (`/` when the URL names none or cannot be read).
fn vhost(url: &str) -> String {
    let path = Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
    if decoded.is_empty() {
        "/".to_owned()
    } else {
        decoded.into_owned()
    }
}

fn message_name(event_type: &str, version: u64) -> String {
    format!("{event_type}.v{version}")
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema files as components: each file's URL (its `$id`) and the name of its component
/// (common.schema.json's definitions each have their own).
struct Bundle {
    files: Vec<(Url, SchemaFile, String)>,
    components: Map<String, Value>,
}

impl Bundle {
    fn new(schemas: &SchemaSet) -> Result<Bundle, String> {
        let sources = schemas.sources();
        let mut files = Vec::new();
        for source in &sources {
            let path = match &source.file {
                SchemaFile::Common => "common.schema.json".to_owned(),
                SchemaFile::Envelope => "envelope.schema.json".to_owned(),
                SchemaFile::Event(t, v) => format!("events/{t}.v{v}.schema.json"),
            };
            // Without an `$id`, a file's references resolve as the files lie in the folder.
            let url = match source.document.get("$id").and_then(Value::as_str) {
                Some(id) => Url::parse(id).map_err(|e| format!("{path}: $id {id}: {e}"))?,
                None => Url::parse("file:///schemas/")
                    .and_then(|base| base.join(&path))
                    .map_err(|e| format!("{path}: {e}"))?,
            };
            files.push((url, source.file.clone(), path));
        }
        let mut bundle = Bundle {
            files,
            components: Map::new(),
        };
        let mut components = Map::new();
        for (source, (url, _, path)) in sources.iter().zip(&bundle.files) {
            let doc = &source.document;
            let mut add = |name: String, schema: &Value, at: &str| -> Result<(), String> {
                if !component_name(&name) {
                    return Err(format!(
                        "{at}: \"{name}\" cannot name an AsyncAPI component (letters, digits, \
                         `.`, `-` and `_` only)"
                    ));
                }
                let schema = bundle.schema(schema, url, at)?;
                let component = json!({ "schemaFormat": DRAFT_07, "schema": schema });
                if components.insert(name.clone(), component).is_some() {
                    return Err(format!("{at}: a second schema named \"{name}\""));
                }
                Ok(())
            };
            match &source.file {
                SchemaFile::Common => {
                    let defs = doc
                        .get("$defs")
                        .and_then(Value::as_object)
                        .ok_or_else(|| format!("{path}: no $defs"))?;
                    for (name, def) in defs {
                        add(name.clone(), def, &format!("{path}#/$defs/{name}"))?;
                    }
                }
                SchemaFile::Envelope => add("envelope".into(), doc, path)?,
                SchemaFile::Event(t, v) => add(message_name(t.as_str(), *v), doc, path)?,
            }
        }
        bundle.components = components;
        Ok(bundle)
    }

    /// An event schema's own document (for its title and description).
    fn event<'s>(&'s self, event_type: &str, version: u64) -> Option<&'s Value> {
        self.components
            .get(&message_name(event_type, version))
            .map(|c| &c["schema"])
    }

    /// A schema as draft-07, its references rewritten to components; `base` is the URL its
    /// references resolve against, `at` where it is, for errors.
    fn schema(&self, node: &Value, base: &Url, at: &str) -> Result<Value, String> {
        let Some(object) = node.as_object() else {
            return Ok(node.clone());
        };
        let base = match object.get("$id").and_then(Value::as_str) {
            Some(id) => base.join(id).map_err(|e| format!("{at}: $id {id}: {e}"))?,
            None => base.clone(),
        };
        let each = |map: &Value, key: &str| -> Result<Value, String> {
            let Some(map) = map.as_object() else {
                return Ok(map.clone());
            };
            let mut out = Map::new();
            for (name, sub) in map {
                let at = format!("{at}/{key}/{name}");
                // `dependencies` may list property names instead of giving a schema.
                let sub = if sub.is_array() {
                    sub.clone()
                } else {
                    self.schema(sub, &base, &at)?
                };
                out.insert(name.clone(), sub);
            }
            Ok(Value::Object(out))
        };
        let list = |items: &Value, key: &str| -> Result<Value, String> {
            match items.as_array() {
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, sub)| self.schema(sub, &base, &format!("{at}/{key}/{i}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                None => self.schema(items, &base, &format!("{at}/{key}")),
            }
        };
        let mut out = Map::new();
        let mut reference = None;
        for (key, value) in object {
            let converted = match key.as_str() {
                "$schema" | "$id" => continue,
                "$ref" => {
                    let target = value
                        .as_str()
                        .ok_or_else(|| format!("{at}: $ref is not a string"))?;
                    reference = Some(self.target(&base, target, at)?);
                    continue;
                }
                k if NOT_IN_DRAFT_07.contains(&k) => {
                    return Err(format!(
                        "{at}: `{k}` has no equivalent in JSON Schema draft-07, which AsyncAPI \
                         tools read"
                    ));
                }
                "properties" | "patternProperties" | "$defs" | "definitions" | "dependencies" => {
                    each(value, key)?
                }
                "items" | "allOf" | "anyOf" | "oneOf" => list(value, key)?,
                "additionalProperties"
                | "additionalItems"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else"
                | "not" => self.schema(value, &base, &format!("{at}/{key}"))?,
                _ => value.clone(),
            };
            out.insert(key.clone(), converted);
        }
        if let Some(target) = reference {
            let reference = json!({ "$ref": target });
            if out.is_empty() {
                return Ok(reference);
            }
            // Draft-07 ignores a `$ref`'s siblings; 2020-12 applies both, as `allOf` does.
            let mut all = vec![reference];
            if let Some(Value::Array(more)) = out.remove("allOf") {
                all.extend(more);
            }
            out.insert("allOf".into(), Value::Array(all));
        }
        Ok(Value::Object(out))
    }

    /// The component a `$ref` names, as a reference from the document's root.
    fn target(&self, base: &Url, reference: &str, at: &str) -> Result<String, String> {
        let url = base
            .join(reference)
            .map_err(|e| format!("{at}: $ref {reference}: {e}"))?;
        let fragment = percent_encoding::percent_decode_str(url.fragment().unwrap_or_default())
            .decode_utf8_lossy()
            .into_owned();
        let mut document = url;
        document.set_fragment(None);
        let Some((_, file, path)) = self.files.iter().find(|(u, _, _)| *u == document) else {
            return Err(format!(
                "{at}: $ref {reference} is not one of Herald's schema files"
            ));
        };
        if !fragment.is_empty() && !fragment.starts_with('/') {
            return Err(format!(
                "{at}: $ref {reference}: only JSON pointers are supported after #"
            ));
        }
        match file {
            SchemaFile::Common => {
                let Some(rest) = fragment.strip_prefix("/$defs/") else {
                    return Err(format!(
                        "{at}: $ref {reference}: refer to one of {path}'s $defs"
                    ));
                };
                let (name, inner) = match rest.split_once('/') {
                    Some((name, inner)) => (name, format!("/{inner}")),
                    None => (rest, String::new()),
                };
                Ok(format!("#/components/schemas/{name}/schema{inner}"))
            }
            SchemaFile::Envelope => Ok(format!("#/components/schemas/envelope/schema{fragment}")),
            SchemaFile::Event(t, v) => Ok(format!(
                "#/components/schemas/{}/schema{fragment}",
                message_name(t.as_str(), *v)
            )),
        }
    }
}

/// Whether `name` may name a component (AsyncAPI 3.0: `^[\w\d.\-_]+$`).
fn component_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_of_an_amqp_url() {
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost("amqp://127.0.0.1:5672"), "/");
        assert_eq!(vhost("amqp://h/herald"), "herald");
        assert_eq!(vhost("not a url"), "/");
    }

    #[test]
    fn component_names() {
        assert!(component_name("court.hearing.concluded.v2"));
        assert!(component_name("dateTime"));
        assert!(!component_name(""));
        assert!(!component_name("a/b"));
    }
}

//! The recipient directory: who Herald can tell, by which channels, and (for legal
//! representatives) about whom. Built from routes.toml's `[[recipient]]` entries, with the
//! URL policy every endpoint is held to.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use lettre::Address;
use regex::Regex;
use serde::Serialize;

use crate::config::RecipientConfig;
use crate::notification::Channel;

/// Kinds of recipient; redaction and authority rules are per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientClass {
    Police,
    Probation,
    Prison,
    CourtListing,
    Judiciary,
    LegalRep,
}

impl RecipientClass {
    pub const ALL: [RecipientClass; 6] = [
        RecipientClass::Police,
        RecipientClass::Probation,
        RecipientClass::Prison,
        RecipientClass::CourtListing,
        RecipientClass::Judiciary,
        RecipientClass::LegalRep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientClass::Police => "police",
            RecipientClass::Probation => "probation",
            RecipientClass::Prison => "prison",
            RecipientClass::CourtListing => "court-listing",
            RecipientClass::Judiciary => "judiciary",
            RecipientClass::LegalRep => "legal-rep",
        }
    }

    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<RecipientClass, String> {
        RecipientClass::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| {
                let all: Vec<&str> = RecipientClass::ALL.iter().map(|c| c.as_str()).collect();
                format!(
                    "unknown recipient class \"{text}\" (classes: {})",
                    all.join(", ")
                )
            })
    }
}

impl fmt::Display for RecipientClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<class>:<code>`, e.g. `police:WYP-LEEDS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RecipientId(String);

impl RecipientId {
    /// A stand-in id for a class, used when previewing templates.
    pub fn sample(class: RecipientClass) -> RecipientId {
        RecipientId(format!("{class}:SAMPLE"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A webhook endpoint; the secrets themselves stay in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    pub url: String,
    pub secret_env: String,
    pub previous_secret_env: Option<String>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub id: RecipientId,
    pub class: RecipientClass,
    pub name: String,
    pub email: Vec<Address>,
    pub webhook: Option<Webhook>,
    /// Who runs the webhook endpoint: told when it stops working and when it works again.
    pub contact: Option<Address>,
    /// `(identifier type, value)` of each person this recipient may hear about
    /// (legal representatives only).
    pub acts_for: Vec<(String, String)>,
}

impl Recipient {
    /// Whether routes.toml's `acts_for` names this identifier (`NOMS`, `A1234BC`).
    pub fn acts_for_id(&self, kind: &str, value: &str) -> bool {
        self.acts_for.iter().any(|(t, v)| t == kind && v == value)
    }

    pub fn has_channel(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => !self.email.is_empty(),
            Channel::Webhook => self.webhook.is_some(),
        }
    }
}

/// Identifier patterns, as in the schemas; used to check `acts_for` when loading.
fn identifier_ok(kind: &str, value: &str) -> bool {
    // Compiled once, at the first recipient that needs them.
    static NOMS: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[A-Z][0-9]{4}[A-Z]{2}$"));
    static PNC: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[0-9]{2,4}/[0-9]{1,7}[A-Z]$"));
    static CRN: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[A-Z][0-9]{6}$"));
    match kind {
        "NOMS" => NOMS.is_match(value),
        "PNC" => PNC.is_match(value),
        "CRN" => CRN.is_match(value),
        _ => false,
    }
}

fn pattern(text: &str) -> Regex {
    Regex::new(text).expect("the identifier patterns are valid regular expressions")
}

/// Every recipient, by id.
#[derive(Debug, Default)]
pub struct Directory {
    entries: Vec<Arc<Recipient>>,
    by_id: HashMap<String, Arc<Recipient>>,
}

impl Directory {
    /// Builds the directory; returns every problem found, each naming the recipient.
    pub fn build(configs: &[RecipientConfig]) -> (Directory, Vec<String>) {
        let mut dir = Directory::default();
        let mut errors = Vec::new();
        for c in configs {
            let mut err = |m: String| errors.push(format!("recipient {}: {m}", c.id));
            let class = match RecipientClass::parse(&c.class) {
                Ok(class) => class,
                Err(e) => {
                    err(e);
                    continue;
                }
            };
            match c.id.split_once(':') {
                Some((prefix, code))
                    if prefix == class.as_str() && !code.is_empty() && code != "*" => {}
                _ => err(format!("ids are \"{class}:<code>\" for class {class}")),
            }
            if dir.by_id.contains_key(&c.id) {
                err("listed twice".into());
            }
            if c.email.is_empty() && c.webhook.is_none() {
                err("has neither email nor webhook".into());
            }
            let mut email = Vec::new();
            for address in &c.email {
                match parse_email(address) {
                    Some(a) => email.push(a),
                    None => err(format!("\"{address}\" is not an email address")),
                }
            }
            let contact = c.contact.as_deref().and_then(|address| {
                let parsed = parse_email(address);
                if parsed.is_none() {
                    err(format!(
                        "contact \"{address}\" is not an email address (one address, such as \"ops@force.example.uk\")"
                    ));
                }
                parsed
            });
            if let Some(w) = &c.webhook {
                if let Err(e) = check_webhook_url(&w.url) {
                    err(e);
                }
                let names = [
                    ("secret_env", Some(&w.secret_env)),
                    ("previous_secret_env", w.previous_secret_env.as_ref()),
                ];
                for (field, name) in names {
                    if name.is_some_and(|n| !is_variable_name(n)) {
                        // Not echoed: an operator may have pasted the secret itself here.
                        err(format!(
                            "webhook {field} must be the name of an environment variable \
                             (A-Z, 0-9, _), never the secret; its value is not shown"
                        ));
                    }
                }
            }
            let mut acts_for = Vec::new();
            for entry in &c.acts_for {
                match entry.split_once(':') {
                    Some((kind, value)) if identifier_ok(kind, value) => {
                        acts_for.push((kind.to_owned(), value.to_owned()))
                    }
                    _ => err(format!(
                        "acts_for \"{entry}\" is not TYPE:value with a valid NOMS, PNC or CRN"
                    )),
                }
            }
            if class != RecipientClass::LegalRep && !acts_for.is_empty() {
                err("acts_for applies to legal representatives only".into());
            }
            let recipient = Arc::new(Recipient {
                id: RecipientId(c.id.clone()),
                class,
                name: c.name.clone(),
                email,
                webhook: c.webhook.as_ref().map(|w| Webhook {
                    url: w.url.clone(),
                    secret_env: w.secret_env.clone(),
                    previous_secret_env: w.previous_secret_env.clone(),
                }),
                contact,
                acts_for,
            });
            dir.by_id.insert(c.id.clone(), Arc::clone(&recipient));
            dir.entries.push(recipient);
        }
        (dir, errors)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Recipient>> {
        self.by_id.get(id)
    }

    /// Whether routes.toml's `acts_for` authorises `representative` for `person`
    /// (`NOMS:A1234BC`): the authority register's starting state.
    pub fn seeded(&self, person: &str, representative: &str) -> bool {
        let Some((kind, value)) = person.split_once(':') else {
            return false;
        };
        self.get(representative)
            .is_some_and(|r| r.acts_for_id(kind, value))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Recipient>> {
        self.entries.iter()
    }

    pub fn of_class(&self, class: RecipientClass) -> impl Iterator<Item = &Arc<Recipient>> {
        self.entries.iter().filter(move |r| r.class == class)
    }
}

/// An environment variable's name as routes.toml writes one: A-Z, 0-9 and `_`.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
}

/// HTTPS anywhere; plain HTTP only to a loopback address; no credentials in the URL, as
/// user name, password or a query parameter named like a secret. Messages show the URL
/// masked (see [`crate::mask::url`]), never a credential.
// String error: words for `herald check`, which adds the file and key; no caller branches.
fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.contains("${") {
        return Err(format!(
            "webhook url {} has a ${{...}} that is not filled in: only {} is, at the start \
             of the url",
            crate::mask::url(url),
            crate::config::RECEIVER_URL
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("webhook url is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "webhook url carries a user name or password; routes.toml holds no \
             secrets, and receivers authenticate Herald by the webhook signature"
                .into(),
        );
    }
    let shown = crate::mask::url(url);
    let secrets = crate::mask::secret_query_names(&parsed);
    if !secrets.is_empty() {
        return Err(format!(
            "webhook url {shown} carries a credential in its query ({}; the value is not \
             shown); routes.toml holds no secrets, and receivers authenticate Herald by the \
             webhook signature",
            secrets.join(", ")
        ));
    }
    let host = parsed
        .host()
        .ok_or_else(|| format!("webhook url {shown} has no host"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        "http" => Err(format!(
            "webhook url {shown}: plain HTTP is allowed only to loopback; use https"
        )),
        other => Err(format!("webhook url {shown}: scheme {other} is not https")),
    }
}

/// An address as lettre will send to it, with a domain that has a dot (no `user@localhost`
/// slips into the directory), parsed once when the directory is built.
fn parse_email(address: &str) -> Option<Address> {
    let parsed: Address = address.parse().ok()?;
    parsed.domain().contains('.').then_some(parsed)
}

/// Whether a URL host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`): the only
/// place plain-text SMTP and HTTP may go.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        // Hosts of schemes the URL standard does not know (smtp) stay text, even when numeric.
        url::Host::Domain(d) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_webhook_url, identifier_ok};

    #[test]
    fn webhook_urls_are_https_or_loopback_http_and_carry_no_credentials() {
        assert!(check_webhook_url("https://hooks.example.gov.uk/herald").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_webhook_url("http://hooks.example.gov.uk/herald").is_err());
        let e = check_webhook_url("https://${HOOKS_HOST}/herald").unwrap_err();
        assert!(e.contains("only ${HERALD_RECEIVER_URL}"), "{e}");
        assert!(check_webhook_url("ftp://hooks.example.gov.uk/herald").is_err());
        let e = check_webhook_url("https://herald:s3cret@hooks.example.gov.uk/").unwrap_err();
        assert!(
            e.contains("user name or password") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(check_webhook_url("https://herald@hooks.example.gov.uk/").is_err());
        for query in [
            "token=t0p",
            "api_key=t0p",
            "Signature=t0p",
            "x=1&access_token=t0p",
        ] {
            let e =
                check_webhook_url(&format!("https://hooks.example.gov.uk/h?{query}")).unwrap_err();
            assert!(e.contains("credential") && !e.contains("t0p"), "{e}");
        }
        assert!(check_webhook_url("https://hooks.example.gov.uk/h?region=north").is_ok());
        let e = check_webhook_url("http://hooks.example.gov.uk/h#t0p").unwrap_err();
        assert!(e.contains("plain HTTP") && !e.contains("t0p"), "{e}");
    }

    #[test]
    fn a_secret_env_that_is_not_a_variable_name_is_refused_without_being_shown() {
        let config: crate::config::Config = crate::config::Config::parse(
            r#"
[[recipient]]
id = "police:X"
class = "police"
name = "X"
webhook = { url = "https://hooks.example.gov.uk/", secret_env = "s3cr3t-value", previous_secret_env = "OLD" }
"#,
        )
        .unwrap();
        let (_, errors) = super::Directory::build(&config.recipients);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("secret_env must be the name of an environment variable")
                && !errors[0].contains("s3cr3t"),
            "{errors:?}"
        );
    }

    #[test]
    fn identifiers_follow_the_schema_patterns() {
        assert!(identifier_ok("NOMS", "A1234BC"));
        assert!(!identifier_ok("NOMS", "A1234B"));
        assert!(identifier_ok("CRN", "X123456"));
        assert!(identifier_ok("PNC", "2004/0123456X"));
        assert!(identifier_ok("PNC", "04/1X"));
        assert!(!identifier_ok("PNC", "2004/X"));
        assert!(!identifier_ok("PNC", "12345/1X"));
        assert!(!identifier_ok("NINO", "AB123456C"));
    }
}

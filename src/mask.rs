//! Keeping secrets out of what Herald prints. Error messages and log lines show where a
//! problem is (a file, a line, a key, a host), never a password, a token or a signing secret:
//! an operator pastes them into terminals, tickets and chat.

/// Words a parameter or key carrying a secret is named with, matched against each part of
/// the name (`api_key`, `X-Auth-Token` and `sig` all match).
const SECRET_WORDS: [&str; 11] = [
    "token",
    "key",
    "secret",
    "sig",
    "signature",
    "password",
    "passwd",
    "pwd",
    "apikey",
    "credential",
    "credentials",
];

/// Longer words that name a secret wherever they appear in a name (`accesstoken`,
/// `clientsecret`).
const SECRET_STEMS: [&str; 5] = ["token", "secret", "password", "signature", "apikey"];

/// What Herald prints instead of a secret.
pub const MASK: &str = "***";

/// Whether a name (a URL query parameter, a TOML key) is one a secret goes by. Case is
/// ignored.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| SECRET_WORDS.contains(&word))
        || SECRET_STEMS.iter().any(|stem| lower.contains(stem))
}

/// The names of a URL's query parameters that look like they carry a secret, each once.
pub fn secret_query_names(url: &url::Url) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in url.query_pairs() {
        if is_secret_name(&name) && !names.iter().any(|n| *n == name) {
            names.push(name.into_owned());
        }
    }
    names
}

/// A URL as it may be printed: its password, the values of query parameters named like
/// secrets, and any fragment become `***`. A URL that does not parse, or has no host part
/// (so its text could hold anything), is not shown at all.
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(text) else {
        return "(a URL that cannot be parsed, not shown)".into();
    };
    if parsed.cannot_be_a_base() {
        return "(a URL without a host, not shown)".into();
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_name(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some(MASK));
    }
    // The mask itself is percent-encoded by the setters above; show it as written.
    parsed.to_string().replace("%2A%2A%2A", MASK)
}

/// `text` with every secret part of `url` (the whole URL as given, its password and the
/// values of query parameters named like secrets, raw and decoded) replaced by `***`: for
/// error messages of libraries that may quote the URL they were given.
pub fn scrub(text: &str, url: &str) -> String {
    let mut secrets: Vec<String> = vec![url.to_owned()];
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password() {
            secrets.push(password.to_owned());
            secrets.push(decode(password));
        }
        for (name, value) in parsed.query_pairs() {
            if is_secret_name(&name) {
                secrets.push(value.into_owned());
            }
        }
        if let Some(query) = parsed.query() {
            for pair in query.split('&') {
                if let Some((name, value)) = pair.split_once('=')
                    && is_secret_name(&decode(name))
                {
                    secrets.push(value.to_owned());
                }
            }
        }
        if let Some(fragment) = parsed.fragment() {
            secrets.push(fragment.to_owned());
        }
    }
    // Longest first, so a password inside the whole URL does not leave the rest behind.
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in &secrets {
        out = out.replace(secret.as_str(), MASK);
    }
    out
}

/// Percent-decoding, as URLs carry passwords and query values.
fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_told_by_their_words() {
        for name in [
            "token",
            "TOKEN",
            "key",
            "api_key",
            "apiKey",
            "access_token",
            "accessToken",
            "sig",
            "signature",
            "password",
            "X-Auth-Token",
            "client_secret",
            "signing-key",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "tls",
            "heartbeat",
            "monkey",
            "region",
            "format",
            "design",
            "id",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn a_url_is_shown_without_its_secrets() {
        assert_eq!(
            url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        let shown = url("https://hooks.example.gov.uk/h?token=abc123&region=north#frag");
        assert!(
            !shown.contains("abc123") && !shown.contains("frag"),
            "{shown}"
        );
        assert!(
            shown.contains("token=***") && shown.contains("region=north"),
            "{shown}"
        );
        assert!(!url("amqp:guest:s3cret@host").contains("s3cret"));
        assert!(!url("not a url s3cret").contains("s3cret"));
        assert_eq!(url("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }

    #[test]
    fn scrubbing_takes_every_form_of_the_secret_out_of_a_message() {
        let given = "amqp://court:p%40ss@broker.example/%2f?auth_token=t0k";
        let message = format!("Invalid URL: '{given}' (p@ss, p%40ss, t0k)");
        let clean = scrub(&message, given);
        for secret in ["p@ss", "p%40ss", "t0k", given] {
            assert!(!clean.contains(secret), "{clean}");
        }
        assert_eq!(scrub("connection refused", given), "connection refused");
    }
}

//! Who may publish what. The AMQP `user_id` property is checked by RabbitMQ against the
//! publisher's login, so it proves who published; routes.toml names the event types each
//! login may send.

use std::collections::BTreeMap;

/// Logins and the event types (or `prefix.*` families) each may publish.
#[derive(Debug, Clone, Default)]
pub struct Publishers {
    allowed: BTreeMap<String, Vec<String>>,
}

impl Publishers {
    /// Builds the table; errors name the login and the bad entry.
    pub fn build(config: &BTreeMap<String, Vec<String>>) -> (Publishers, Vec<String>) {
        let mut errors = Vec::new();
        for (login, patterns) in config {
            for p in patterns {
                let body = p.strip_suffix(".*").unwrap_or(p);
                let valid = !body.is_empty()
                    && body.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    });
                if !valid {
                    errors.push(format!(
                        "[publishers] {login}: \"{p}\" is not an event type or a family ending in .*"
                    ));
                }
            }
        }
        (
            Publishers {
                allowed: config.clone(),
            },
            errors,
        )
    }

    /// The login as a metric label: a login routes.toml names, else `other` (any broker user
    /// can publish, so the label set stays bounded).
    pub fn label<'a>(&'a self, login: &str) -> &'a str {
        self.allowed
            .get_key_value(login)
            .map_or("other", |(k, _)| k.as_str())
    }

    /// Whether `login` may publish `event_type`.
    pub fn allows(&self, login: &str, event_type: &str) -> bool {
        self.allowed.get(login).is_some_and(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => p == event_type,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_exact_types() {
        let config = BTreeMap::from([
            ("prison".to_string(), vec!["prison.*".to_string()]),
            (
                "probation".to_string(),
                vec!["prison.hdc.decided".to_string()],
            ),
        ]);
        let (p, errors) = Publishers::build(&config);
        assert!(errors.is_empty());
        assert!(p.allows("prison", "prison.prisoner.received"));
        assert!(!p.allows("prison", "court.bail.decided"));
        assert!(!p.allows("prison", "prisoner.x"), "a family needs its dot");
        assert!(p.allows("probation", "prison.hdc.decided"));
        assert!(!p.allows("probation", "prison.release.scheduled"));
        assert!(!p.allows("court", "court.bail.decided"), "unknown login");
        let (_, errors) = Publishers::build(&BTreeMap::from([(
            "x".to_string(),
            vec!["Court/*".to_string()],
        )]));
        assert_eq!(errors.len(), 1);
    }
}

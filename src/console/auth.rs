//! Who may use the console, and what they may do.
//!
//! Credentials come from the environment only, never routes.toml:
//! `HERALD_CONSOLE_OPERATOR_TOKEN` and `HERALD_CONSOLE_READER_TOKEN` (an `Authorization: Bearer`
//! token each), `HERALD_CONSOLE_OPERATOR_BASIC` and `HERALD_CONSOLE_READER_BASIC` (`user:password`
//! for HTTP Basic, which a browser asks for). Readers may look; operators may also replay,
//! purge, and disable or enable an endpoint. Presented credentials are compared in constant
//! time, as SHA-256 digests, so neither their content nor their length leaks through timing.
//!
//! With none set, the console is open to whoever reaches its address, as an operator, and
//! refuses to start on an address that is not loopback. An open console answers only requests
//! whose `Host` is a loopback name or address, so a web page cannot reach it by rebinding a
//! name of its own to 127.0.0.1.
//!
//! Every form that changes something carries a CSRF token: an HMAC of the user's name under a
//! key drawn when the process starts. A request authenticated by a bearer token (which a
//! browser never sends by itself) needs none.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a user may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Look at everything the console shows.
    Read,
    /// Also replay, purge, disable and enable.
    Operate,
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Nothing: the console is open on loopback.
    Open,
    /// HTTP Basic, which a browser sends by itself once given.
    Basic,
    /// A bearer token, which a browser never sends by itself.
    Bearer,
}

/// The user behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// As the audit trail names them: the Basic user name, `operator-token` or
    /// `reader-token`, or `loopback` on an open console.
    pub name: String,
    pub right: Right,
    pub via: Via,
}

impl User {
    /// The audit trail's actor: `console:` and the name.
    pub fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

struct Credential {
    /// SHA-256 of what the request must present (the token, or `user:password`).
    digest: [u8; 32],
    user: String,
    right: Right,
    basic: bool,
}

/// Why the console cannot start with the credentials given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the console would listen on {addr}, which is not loopback, and no credentials are set: \
         set HERALD_CONSOLE_OPERATOR_TOKEN or HERALD_CONSOLE_OPERATOR_BASIC (and the READER \
         ones for read-only users), or set [service] console_addr to 127.0.0.1 or to \"\" \
         to turn the console off"
    )]
    OpenBeyondLoopback { addr: String },
    #[error("{var} is too short: a token or password needs at least 16 characters")]
    TooShort { var: &'static str },
    #[error("{var} must be user:password")]
    NotUserPassword { var: &'static str },
}

/// The console's credentials and CSRF key.
pub struct Access {
    credentials: Vec<Credential>,
    csrf_key: [u8; 32],
}

/// The variables credentials are read from, with the right and the kind of each.
pub const VARIABLES: [(&str, Right, bool); 4] = [
    ("HERALD_CONSOLE_OPERATOR_TOKEN", Right::Operate, false),
    ("HERALD_CONSOLE_READER_TOKEN", Right::Read, false),
    ("HERALD_CONSOLE_OPERATOR_BASIC", Right::Operate, true),
    ("HERALD_CONSOLE_READER_BASIC", Right::Read, true),
];

const MIN_SECRET: usize = 16;

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

impl Access {
    /// Reads the credentials from `env`; `loopback` says whether the console's address is.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        addr: &str,
        loopback: bool,
        csrf_key: [u8; 32],
    ) -> Result<Access, AuthError> {
        let mut credentials = Vec::new();
        for (var, right, basic) in VARIABLES {
            let Some(value) = env(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let user = if basic {
                let Some((user, password)) = value.split_once(':').filter(|(u, _)| !u.is_empty())
                else {
                    return Err(AuthError::NotUserPassword { var });
                };
                if password.chars().count() < MIN_SECRET {
                    return Err(AuthError::TooShort { var });
                }
                user.to_owned()
            } else {
                if value.chars().count() < MIN_SECRET {
                    return Err(AuthError::TooShort { var });
                }
                match right {
                    Right::Operate => "operator-token".to_owned(),
                    Right::Read => "reader-token".to_owned(),
                }
            };
            credentials.push(Credential {
                digest: digest(value.as_bytes()),
                user,
                right,
                basic,
            });
        }
        if credentials.is_empty() && !loopback {
            return Err(AuthError::OpenBeyondLoopback {
                addr: addr.to_owned(),
            });
        }
        Ok(Access {
            credentials,
            csrf_key,
        })
    }

    /// Whether anyone who reaches the address may use the console.
    pub fn is_open(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The user an `Authorization` header value proves, if any. Every credential is compared,
    /// whichever matches, so the time taken does not say which kind was close.
    pub fn check(&self, authorization: Option<&str>) -> Option<User> {
        if self.is_open() {
            return Some(User {
                name: "loopback".into(),
                right: Right::Operate,
                via: Via::Open,
            });
        }
        let header = authorization?.trim();
        let (scheme, rest) = header.split_once(' ')?;
        let (presented, basic) = if scheme.eq_ignore_ascii_case("bearer") {
            (rest.trim().as_bytes().to_vec(), false)
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            (decoded, true)
        } else {
            return None;
        };
        let presented = digest(&presented);
        let mut found: Option<&Credential> = None;
        for c in &self.credentials {
            let same = c.digest.ct_eq(&presented).unwrap_u8() == 1 && c.basic == basic;
            if same && found.is_none() {
                found = Some(c);
            }
        }
        found.map(|c| User {
            name: c.user.clone(),
            right: c.right,
            via: if c.basic { Via::Basic } else { Via::Bearer },
        })
    }

    /// The CSRF token of a user's forms.
    pub fn csrf(&self, user: &User) -> String {
        hex::encode(self.mac(user).finalize().into_bytes())
    }

    /// Whether `token` is this user's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, user: &User, token: Option<&str>) -> bool {
        let Some(token) = token.and_then(|t| hex::decode(t.trim()).ok()) else {
            return false;
        };
        self.mac(user).verify_slice(&token).is_ok()
    }

    fn mac(&self, user: &User) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.csrf_key).expect("HMAC takes any key");
        mac.update(user.name.as_bytes());
        mac.update(&[user.right as u8]);
        mac
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with or without a port).
pub fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn access(vars: &[(&str, &str)]) -> Result<Access, AuthError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Access::from_env(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            "0.0.0.0:9465",
            false,
            [7; 32],
        )
    }

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[test]
    fn beyond_loopback_it_needs_credentials() {
        assert!(matches!(
            access(&[]),
            Err(AuthError::OpenBeyondLoopback { .. })
        ));
        assert_eq!(
            access(&[("HERALD_CONSOLE_OPERATOR_TOKEN", "short")]).err(),
            Some(AuthError::TooShort {
                var: "HERALD_CONSOLE_OPERATOR_TOKEN"
            })
        );
        assert_eq!(
            access(&[("HERALD_CONSOLE_READER_BASIC", "no-colon-here-at-all")]).err(),
            Some(AuthError::NotUserPassword {
                var: "HERALD_CONSOLE_READER_BASIC"
            })
        );
    }

    #[test]
    fn each_credential_gives_its_right_and_nothing_else_gets_in() {
        let a = access(&[
            ("HERALD_CONSOLE_OPERATOR_TOKEN", "op-token-0123456789"),
            ("HERALD_CONSOLE_READER_BASIC", "ann:reader-password-123"),
        ])
        .unwrap();
        let op = a.check(Some("Bearer op-token-0123456789")).unwrap();
        assert_eq!((op.right, op.via), (Right::Operate, Via::Bearer));
        let ann = a.check(Some(&basic("ann:reader-password-123"))).unwrap();
        assert_eq!((ann.name.as_str(), ann.right), ("ann", Right::Read));
        assert_eq!(a.check(None), None);
        assert_eq!(a.check(Some("Bearer op-token-012345678")), None);
        assert_eq!(a.check(Some(&basic("ann:reader-password-124"))), None);
        // A token is not a password, nor the other way round.
        assert_eq!(a.check(Some("Basic op-token-0123456789")), None);
        assert_eq!(a.check(Some("Bearer ann:reader-password-123")), None);
    }

    #[test]
    fn csrf_tokens_are_per_user_and_right() {
        let a = access(&[("HERALD_CONSOLE_OPERATOR_BASIC", "bob:operator-password-1")]).unwrap();
        let bob = a.check(Some(&basic("bob:operator-password-1"))).unwrap();
        let token = a.csrf(&bob);
        assert!(a.csrf_ok(&bob, Some(&token)));
        assert!(!a.csrf_ok(&bob, None));
        assert!(!a.csrf_ok(&bob, Some("00")));
        let reader = User {
            right: Right::Read,
            ..bob.clone()
        };
        assert!(!a.csrf_ok(&reader, Some(&token)));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:9465",
            "127.0.0.1:80",
            "[::1]:9465",
            "127.0.0.5",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:9465",
            "10.0.0.1",
            "[2001:db8::1]:1",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}

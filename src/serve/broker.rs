//! Reaching the broker when it is several nodes: each connection tries the nodes in the order
//! configured and takes the first that answers, and a lost connection is opened again the same
//! way after a wait that doubles, with jitter so that several instances that lost the same node
//! do not all come back in the same instant.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::{ServeError, connect_error, redact_url};

/// A connection and the node (its index in the list) that answered.
pub struct Connected {
    pub connection: Connection,
    pub node: usize,
}

/// Connects to the first of `urls` that answers. When none does, the error is a refusal that
/// is the configuration's (a wrong password or virtual host, the same on every node), or else
/// one that names every node tried and why each could not be reached.
pub async fn connect(
    urls: &[String],
    properties: impl Fn() -> ConnectionProperties,
    password_in: &str,
) -> Result<Connected, ServeError> {
    // A URL that is not one is a mistake in the configuration, said before any node is tried
    // and without its text, which may hold a password.
    for (node, url) in urls.iter().enumerate() {
        let reason = match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "amqp" | "amqps") => continue,
            Ok(u) => format!("its scheme is {:?}", u.scheme()),
            Err(e) => e.to_string(),
        };
        return Err(ServeError::NotAnAmqpUrl {
            node: node + 1,
            nodes: urls.len(),
            reason,
        });
    }
    let mut unreachable = Vec::new();
    let mut refused = None;
    for (node, url) in urls.iter().enumerate() {
        match Connection::connect(url, properties()).await {
            Ok(connection) => return Ok(Connected { connection, node }),
            Err(e) => match connect_error(url, &e, password_in) {
                ServeError::Unreachable { url, reason } => unreachable.push((url, reason)),
                other => {
                    refused.get_or_insert(other);
                }
            },
        }
    }
    if let Some(refused) = refused {
        return Err(refused);
    }
    match unreachable.len() {
        0 => Err(ServeError::Unreachable {
            url: "(no broker URL configured)".into(),
            reason: "[amqp] urls is empty".into(),
        }),
        1 => {
            let (url, reason) = unreachable.remove(0);
            Err(ServeError::Unreachable { url, reason })
        }
        _ => Err(ServeError::Unreachable {
            url: format!(
                "any of {}",
                unreachable
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            reason: unreachable
                .iter()
                .map(|(u, r)| format!("{u}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// The URL of node `node`, for messages.
pub fn shown(urls: &[String], node: usize) -> String {
    urls.get(node).map(|u| redact_url(u)).unwrap_or_default()
}

/// Waits between rounds of attempts: 1 s doubling to 30 s, each drawn between half and the
/// whole of that (so instances spread out rather than retry in step).
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff {
            ceiling: Self::FIRST,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.ceiling.mul_f64(0.5 + fastrand::f64() * 0.5);
        self.ceiling = (self.ceiling * 2).min(Self::MOST);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_double_to_a_ceiling_and_are_spread_below_it() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        for (w, ceiling) in waits.iter().zip([1, 2, 4, 8, 16, 30, 30, 30]) {
            let ceiling = Duration::from_secs(ceiling);
            assert!(
                *w >= ceiling / 2 && *w <= ceiling,
                "{w:?} against {ceiling:?}"
            );
        }
        // Two instances that lost the same node do not come back in step.
        let (mut a, mut b) = (Backoff::new(), Backoff::new());
        let apart = (0..20).any(|_| a.next_wait() != b.next_wait());
        assert!(apart);
    }

    #[tokio::test]
    async fn no_node_answering_names_every_node_tried() {
        let urls = [
            "amqp://guest:s3cret@127.0.0.1:1/%2f".to_owned(),
            "amqp://guest:s3cret@127.0.0.1:2/%2f".to_owned(),
        ];
        let Err(e) = connect(&urls, ConnectionProperties::default, "P").await else {
            panic!("connected to a closed port");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("cannot reach RabbitMQ at any of amqp://guest:***@127.0.0.1:1/%2f, amqp://guest:***@127.0.0.1:2/%2f: "),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn a_node_that_is_not_an_amqp_url_is_named_by_its_place_not_its_text() {
        for (given, reason) in [
            ("notaurl:s3cret", "its scheme is \"notaurl\""),
            ("s3cret", "relative URL without a base"),
            ("http://guest:s3cret@h/", "its scheme is \"http\""),
        ] {
            let urls = [
                "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
                given.to_owned(),
            ];
            let Err(e) = connect(&urls, ConnectionProperties::default, "P").await else {
                panic!("{given} was taken for an AMQP URL");
            };
            let e = e.to_string();
            assert!(
                e.starts_with(&format!("broker node 2 of 2 is not an AMQP URL ({reason})")),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}

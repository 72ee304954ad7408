//! The email channel: lettre over SMTP with pooled connections, or `.eml` files in an outbox
//! folder when no SMTP server is configured, each named by its notification's idempotency key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Failure, FailureKind, Outgoing};
use crate::notification::Content;

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// The outbox folder. Not lettre's file transport, which names each file by a random id:
    /// a file named by the key is found from the log line, and a repeat replaces it.
    Files(PathBuf),
}

/// Sends the email notifications.
pub struct EmailSender {
    transport: Transport,
    from: Mailbox,
    /// Right-hand side of every `Message-ID`, from the sender's address.
    id_domain: String,
}

/// An SMTP URL or sender that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    #[error("email.from \"{0}\" is not a mailbox (Name <address>)")]
    From(String),
    #[error("SMTP URL: {0}")]
    Url(String),
    #[error("outbox {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
}

impl EmailSender {
    /// `url` in lettre's form; none means `.eml` files in `outbox`. `connections` is the
    /// most SMTP connections kept open at once.
    pub fn new(
        url: Option<&str>,
        outbox: &Path,
        from: &str,
        connections: u32,
    ) -> Result<EmailSender, EmailSetupError> {
        let from: Mailbox = from
            .parse()
            .map_err(|_| EmailSetupError::From(from.to_owned()))?;
        let id_domain = from.email.domain().to_owned();
        let transport = match url {
            Some(url) => {
                check_tls(url).map_err(EmailSetupError::Url)?;
                // lettre's message may quote what it was given; the URL may hold a password.
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| EmailSetupError::Url(crate::mask::scrub(&e.to_string(), url)))?
                    .pool_config(PoolConfig::new().max_size(connections.max(1)))
                    .build();
                Transport::Smtp(transport)
            }
            None => {
                std::fs::create_dir_all(outbox).map_err(|source| EmailSetupError::Outbox {
                    path: outbox.display().to_string(),
                    source,
                })?;
                Transport::Files(outbox.to_owned())
            }
        };
        Ok(EmailSender {
            transport,
            from,
            id_domain,
        })
    }

    /// Where mail goes, for the start-up log line (no credentials).
    pub fn describe(&self) -> &'static str {
        match self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::Files(_) => "outbox files",
        }
    }

    pub async fn send(&self, out: Outgoing<'_>) -> Result<(), Failure> {
        let message = self.message(out)?;
        match &self.transport {
            Transport::Smtp(t) => t.send(message).await.map(drop).map_err(|e| {
                let code = e.status().map(|c| c.to_string());
                let failure = match &code {
                    Some(code) if e.is_permanent() => {
                        Failure::new(FailureKind::SmtpPermanent, format!("SMTP reply {code}"))
                    }
                    Some(code) => {
                        Failure::new(FailureKind::SmtpTransient, format!("SMTP reply {code}"))
                    }
                    None if e.is_timeout() => {
                        Failure::new(FailureKind::SmtpConnect, "SMTP timeout")
                    }
                    None => Failure::new(FailureKind::SmtpConnect, "SMTP connection failed"),
                };
                let failure = match code.as_deref().and_then(|c| c.parse().ok()) {
                    Some(c) => failure.with_code(c),
                    None => failure,
                };
                failure.with_source(e)
            }),
            Transport::Files(dir) => {
                let name = outbox_name(out.key).ok_or_else(|| {
                    Failure::new(
                        FailureKind::BadMessage,
                        "the idempotency key cannot name an outbox file",
                    )
                })?;
                write_whole(dir, &name, &message.formatted())
                    .await
                    .map_err(|e| {
                        Failure::new(FailureKind::Outbox, "cannot write to the outbox folder")
                            .with_source(e)
                    })
            }
        }
    }

    fn message(&self, out: Outgoing<'_>) -> Result<Message, Failure> {
        let Content::Email {
            to,
            subject,
            text,
            html,
        } = out.content
        else {
            return Err(Failure::new(
                FailureKind::WrongChannel,
                "not an email notification",
            ));
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject.as_str())
            .message_id(Some(format!("<{}@{}>", out.key, self.id_domain)));
        if out.urgent {
            builder = builder.header(Importance).header(XPriority);
        }
        for address in to {
            builder = builder.to(Mailbox::new(None, address.clone()));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                text.clone(),
                html.clone(),
            ))
            .map_err(|e| {
                Failure::new(FailureKind::BadMessage, "cannot build the email").with_source(e)
            })
    }
}

/// `<key>.eml`, for a key that can only name a file in the folder (a replayed notification's
/// key is read back from the broker, so it is checked rather than trusted).
fn outbox_name(key: &str) -> Option<String> {
    let plain = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then(|| format!("{key}.eml"))
}

/// Writes `bytes` to `dir/name` whole or not at all: to a temporary name in the same folder,
/// then renamed over any earlier copy, so a reader never sees half a message and a repeat of a
/// notification replaces its own file. (Not synced to disk, as lettre's file transport was
/// not: the outbox is the channel for trying Herald out.)
async fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    // Two attempts at one notification at once each write a temporary file of their own.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = match tokio::fs::write(&temporary, bytes).await {
        Ok(()) => tokio::fs::rename(&temporary, dir.join(name)).await,
        Err(e) => Err(e),
    };
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temporary).await;
    }
    written
}

/// `Importance: high` (RFC 2156), the flag most mail clients show for an urgent message: a
/// Cat A warrant or a short-notice release must stand out in a caseworker's inbox.
#[derive(Debug, Clone, Copy)]
struct Importance;

impl Header for Importance {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Importance")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match s.trim() {
            v if v.eq_ignore_ascii_case("high") => Ok(Importance),
            _ => Err("Herald sets only Importance: high".into()),
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "high".into())
    }
}

/// `X-Priority: 1`, the older form of the same flag, which other clients read instead.
#[derive(Debug, Clone, Copy)]
struct XPriority;

impl Header for XPriority {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Priority")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match s.trim() {
            // "1 (Highest)" is a common spelling of it.
            v if v == "1" || v.starts_with("1 ") => Ok(XPriority),
            _ => Err("Herald sets only X-Priority: 1".into()),
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "1".into())
    }
}

/// TLS is required unless the server is on this machine: `smtps://` (implicit TLS) or
/// `smtp://...?tls=required` (STARTTLS) anywhere; plain `smtp://` only to a loopback host.
/// A refusal names the scheme or host, never the user or password.
// String error: words for `herald check`, which adds the file and key; no caller branches.
pub fn check_tls(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let tls_required = parsed.scheme() == "smtps"
        || (parsed.scheme() == "smtp"
            && parsed
                .query_pairs()
                .any(|(k, v)| k == "tls" && v == "required"));
    if !matches!(parsed.scheme(), "smtp" | "smtps") {
        return Err(format!(
            "scheme \"{}\" is not smtp or smtps",
            parsed.scheme()
        ));
    }
    let host = parsed.host().ok_or("no host")?;
    if tls_required || crate::directory::is_loopback(&host) {
        Ok(())
    } else {
        Err(format!(
            "plain-text SMTP to {host} is refused; use smtps://{host}:465 or smtp://{host}:587?tls=required"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailparse::MailHeaderMap;

    #[test]
    fn urgent_email_is_flagged_and_routine_email_is_not() {
        let sender =
            EmailSender::new(None, &std::env::temp_dir(), "Herald <h@example.gov.uk>", 1).unwrap();
        let content = Content::Email {
            to: vec!["ppo@example.gov.uk".parse().unwrap()],
            subject: "[CAT A] Warrant".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        for urgent in [true, false] {
            let out = Outgoing {
                key: "msg_1",
                recipient: "police:X",
                content: &content,
                urgent,
            };
            let text = String::from_utf8(sender.message(out).unwrap().formatted()).unwrap();
            assert_eq!(text.contains("\r\nImportance: high\r\n"), urgent, "{text}");
            assert_eq!(text.contains("\r\nX-Priority: 1\r\n"), urgent, "{text}");
        }
    }

    #[tokio::test]
    async fn the_outbox_file_is_named_by_the_key_and_a_repeat_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let sender = EmailSender::new(None, dir.path(), "Herald <h@example.gov.uk>", 1).unwrap();
        let key = "msg_0123456789abcdef0123456789abcdef";
        for subject in ["first", "repeat"] {
            let content = Content::Email {
                to: vec!["ppo@example.gov.uk".parse().unwrap()],
                subject: subject.into(),
                text: "text".into(),
                html: "<p>html</p>".into(),
            };
            let out = Outgoing {
                key,
                recipient: "police:X",
                content: &content,
                urgent: false,
            };
            sender.send(out).await.unwrap();
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, [format!("{key}.eml")], "one file, no temporary one");
            let text = std::fs::read_to_string(dir.path().join(&names[0])).unwrap();
            assert!(text.contains(&format!("Subject: {subject}\r\n")), "{text}");
            assert!(text.contains(&format!("Message-ID: <{key}@example.gov.uk>")));
        }
        let content = Content::Email {
            to: vec!["ppo@example.gov.uk".parse().unwrap()],
            subject: "s".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        for bad in ["../escape", "msg_1/x", "", "msg .eml"] {
            let out = Outgoing {
                key: bad,
                recipient: "police:X",
                content: &content,
                urgent: false,
            };
            assert!(
                sender.send(out).await.is_err_and(|f| !f.is_transient()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_smtp_only_to_loopback() {
        assert!(check_tls("smtps://user:pass@mail.example.gov.uk:465").is_ok());
        assert!(check_tls("smtp://mail.example.gov.uk:587?tls=required").is_ok());
        assert!(check_tls("smtp://127.0.0.1:2525").is_ok());
        assert!(check_tls("smtp://localhost:25").is_ok());
        assert!(check_tls("smtp://[::1]:25").is_ok());
        assert!(
            check_tls("smtp://mail.example.gov.uk:25")
                .unwrap_err()
                .contains("refused")
        );
        assert!(check_tls("smtp://mail.example.gov.uk:587?tls=opportunistic").is_err());
        assert!(check_tls("http://mail.example.gov.uk").is_err());
    }

    #[test]
    fn a_refused_smtp_url_is_not_repeated_with_its_password() {
        for url in [
            "smtp://herald:s3cret@mail.example.gov.uk:25",
            "smtp://herald:s3cret@mail.example.gov.uk:587?tls=sometimes",
            "imap://herald:s3cret@mail.example.gov.uk",
            "smtp:herald:s3cret@mail.example.gov.uk",
            "herald:s3cret@mail.example.gov.uk",
        ] {
            let e = super::EmailSender::new(
                Some(url),
                std::path::Path::new("."),
                "Herald <h@example.gov.uk>",
                1,
            )
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(!e.to_string().contains("s3cret"), "{url}: {e}");
        }
    }

    /// The subject is the only header made from event data (the addresses come from the
    /// directory and the configuration, the Message-ID from the key): at its longest, in the
    /// characters that take most room once encoded, and with bodies of one 300 KB line each,
    /// every line of the message stays within RFC 5322's 998 characters and reads back whole.
    #[test]
    fn no_line_of_a_message_is_over_998_characters() {
        let outbox = tempfile::tempdir().unwrap();
        let sender =
            EmailSender::new(None, outbox.path(), "Herald <herald@example.gov.uk>", 1).unwrap();
        let subject = format!(
            "[CAT A] [SHORT NOTICE] {}…",
            "ß🦀".repeat(crate::render::SUBJECT_CHARS / 2)
        );
        let text = "Zoë ".repeat(75_000);
        let html = format!("<p>{}</p>", "&lt;ł&gt;".repeat(35_000));
        let content = Content::Email {
            to: vec!["ppo.leeds@example.police.uk".parse().unwrap()],
            subject: subject.clone(),
            text: text.clone(),
            html: html.clone(),
        };
        let message = sender
            .message(Outgoing {
                key: "msg_0123",
                recipient: "police:WYP-LEEDS",
                content: &content,
                urgent: false,
            })
            .unwrap()
            .formatted();
        for line in message.split(|&b| b == b'\n') {
            assert!(line.len() <= 998, "a line of {} bytes", line.len());
        }
        let parsed = mailparse::parse_mail(&message).unwrap();
        assert_eq!(
            parsed.headers.get_first_value("Subject").as_deref(),
            Some(subject.as_str())
        );
        assert_eq!(
            parsed.subparts[0].get_body().unwrap().trim_end(),
            text.trim_end()
        );
        assert_eq!(parsed.subparts[1].get_body().unwrap().trim_end(), html);
    }
}

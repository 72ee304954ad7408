//! The email channel: lettre over SMTP with pooled connections, or `.eml` files in an outbox
//! folder when no SMTP server is configured.

use std::path::Path;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Failure, FailureKind, Outgoing};
use crate::notification::Content;

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
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
                Transport::Files(AsyncFileTransport::new(outbox))
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
            Transport::Files(t) => t.send(message).await.map(drop).map_err(|e| {
                Failure::new(FailureKind::Outbox, "cannot write to the outbox folder")
                    .with_source(e)
            }),
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
        for address in to {
            let mailbox: Mailbox = address.parse().map_err(|_| {
                Failure::new(
                    FailureKind::BadAddress,
                    format!("recipient {} has an invalid email address", out.recipient),
                )
            })?;
            builder = builder.to(mailbox);
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

/// TLS is required unless the server is on this machine: `smtps://` (implicit TLS) or
/// `smtp://...?tls=required` (STARTTLS) anywhere; plain `smtp://` only to a loopback host.
/// A refusal names the scheme or host, never the user or password.
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
            to: vec!["ppo.leeds@example.police.uk".into()],
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

//! Standard Webhooks signatures: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the secret
//! decoded from base64 after its `whsec_` prefix, sent as `v1,<base64>`; several
//! space-separated during a secret rotation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signatures older or newer than this are refused by [`verify`].
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The shortest and longest signing secrets Standard Webhooks allows, in bytes.
pub const MIN_BYTES: usize = 24;
pub const MAX_BYTES: usize = 64;

/// A signing secret, held as the HMAC keyed with it (the key's padding is worked out once,
/// not at every signature).
#[derive(Clone)]
pub struct Secret(Hmac<Sha256>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` of 24 to 64 bytes, as Standard Webhooks has it. The reason
    /// for a refusal never repeats the text, which may be most of a secret.
    // String error: words for `herald check`, which adds the file and key; no caller branches.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("a signing secret starts with whsec_")?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not base64")?;
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes.len()) {
            return Err(format!(
                "a Standard Webhooks secret is whsec_ and base64 of {MIN_BYTES} to \
                 {MAX_BYTES} bytes; this one is {} bytes",
                bytes.len()
            ));
        }
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&bytes)
            .map(Secret)
            .map_err(|_| "the signing secret cannot key HMAC-SHA256".into())
    }

    /// A `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Why a received webhook is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is missing or not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is more than five minutes from now")]
    Stale,
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Checks a `webhook-signature` header against a secret, in constant time per signature.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(VerifyError::Stale);
    }
    let matches = header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| {
            STANDARD
                .decode(sig)
                .is_ok_and(|bytes| secret.mac(id, ts, body).verify_slice(&bytes).is_ok())
        });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_reference_implementation() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn verifies_any_of_several_signatures_and_refuses_the_rest() {
        let secret = Secret::parse(SECRET).unwrap();
        let header = format!("v1,bm90IGl0 {EXPECTED}");
        assert_eq!(
            verify(&secret, ID, &TS.to_string(), BODY, &header, TS + 10),
            Ok(())
        );
        assert_eq!(
            verify(&secret, ID, &TS.to_string(), b"{}", &header, TS),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, ID, &TS.to_string(), BODY, EXPECTED, TS + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&secret, ID, "soon", BODY, EXPECTED, TS),
            Err(VerifyError::BadTimestamp)
        );
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!").is_err());
    }

    #[test]
    fn a_secret_is_24_to_64_bytes_and_a_refusal_does_not_repeat_it() {
        let of = |n: usize| format!("whsec_{}", STANDARD.encode(vec![7u8; n]));
        assert!(Secret::parse(&of(24)).is_ok());
        assert!(Secret::parse(&of(64)).is_ok());
        for n in [23, 65, 200] {
            let text = of(n);
            let e = Secret::parse(&text).unwrap_err();
            assert!(e.contains(&format!("{n} bytes")), "{e}");
            assert!(!e.contains(&text["whsec_".len()..]), "{e}");
        }
    }
}

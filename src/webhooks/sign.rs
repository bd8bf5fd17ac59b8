//! Standard Webhooks 1.0 signing: the `whsec_` secret, the request body, and the
//! `webhook-signature` header.
//!
//! The signature is `v1,` + base64 (standard alphabet, padded) of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the secret
//! after `whsec_` (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>).

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The spec's prefix of a symmetric secret.
const PREFIX: &str = "whsec_";
/// Key sizes the spec allows (bytes, after base64 decoding).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Secrets are written with or without `=` padding (the reference libraries accept both).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What is wrong with a signing secret (never the secret itself).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No `whsec_` prefix.
    #[error(
        "the secret does not start with {PREFIX:?} (Standard Webhooks secrets are whsec_<base64>)"
    )]
    Prefix,
    /// The part after the prefix is not base64.
    #[error("the part after {PREFIX:?} is not base64: {0}")]
    Base64(base64::DecodeError),
    /// The key's length (bytes) is out of range.
    #[error(
        "the key is {0} bytes; Standard Webhooks keys are {min} to {max} bytes \
         (make one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\")",
        min = KEY_BYTES.start(),
        max = KEY_BYTES.end()
    )]
    Length(usize),
}

/// An endpoint's signing key. `Debug` prints `MASKED`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl SigningKey {
    /// The key of a `whsec_<base64>` secret, or what is wrong with it (never the secret itself).
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let encoded = secret.trim().strip_prefix(PREFIX).ok_or(KeyError::Prefix)?;
        let key = LENIENT.decode(encoded).map_err(KeyError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header of a message: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The request body of an event: `{"type":"presence","timestamp":…,"data":…}`, with `data` (a
/// JSON object, rendered once by the event hub) inserted verbatim.
pub fn body(at_ms: u64, data: &str) -> String {
    format!(
        "{{\"type\":\"presence\",\"timestamp\":\"{}\",\"data\":{data}}}",
        crate::base::clock::rfc3339(at_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the reference Python library's `test_sign_function`
    /// (standard-webhooks/libraries/python/tests/test_webhooks.py).
    #[test]
    fn reference_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Another id, timestamp or body gives another signature.
        assert_ne!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265331,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_checked_and_masked() {
        // Unpadded base64 of 24 bytes needs no padding; 32 bytes unpadded must be accepted too.
        let unpadded = format!("whsec_{}", STANDARD.encode([7u8; 32]).trim_end_matches('='));
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert_eq!(
            SigningKey::parse(&unpadded).unwrap(),
            SigningKey::parse(&padded).unwrap()
        );
        for (bad, why) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start"),
            ("whsec_not base64!", "not base64"),
            ("whsec_c2hvcnQ=", "5 bytes"),
        ] {
            let e = SigningKey::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains(&bad[6..]), "the secret is in the message: {e}");
        }
        let key = SigningKey::parse(&padded).unwrap();
        assert_eq!(format!("{key:?}"), "MASKED");
    }

    #[test]
    fn body_keeps_data_verbatim() {
        let b = body(
            1_764_400_510_176,
            r#"{"user":"alice@example.com","presence":"away"}"#,
        );
        assert_eq!(
            b,
            r#"{"type":"presence","timestamp":"2025-11-29T07:15:10.176Z","data":{"user":"alice@example.com","presence":"away"}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["data"]["presence"], "away");
    }
}

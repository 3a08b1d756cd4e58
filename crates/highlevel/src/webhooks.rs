//! Webhook signatures as HighLevel makes them: Ed25519 in `x-ghl-signature` (current) and
//! RSA-SHA256 PKCS#1 v1.5 in `x-wh-signature` (legacy), both base64 over the raw body.
//!
//! The sandbox signs with [`WebhookSigner`]; the engine's ingress checks with
//! [`WebhookVerifier`], which also enforces HighLevel's replay rules (timestamp window).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::pkcs1v15;
use rsa::pkcs8::LineEnding;
use rsa::signature::{SignatureEncoding, Verifier};
use sha2::Sha256;

/// Header carrying the Ed25519 signature.
pub const ED25519_HEADER: &str = "x-ghl-signature";
/// Header carrying the legacy RSA-SHA256 signature.
pub const RSA_HEADER: &str = "x-wh-signature";

/// HighLevel's published RSA public key for `x-wh-signature` (docs/oauth/WebhookAuthentication.md).
pub const HIGHLEVEL_RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
";

/// Why a key or signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The key could not be read.
    #[error("invalid {kind} key: {message}")]
    InvalidKey {
        /// `Ed25519` or `RSA`.
        kind: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// Generating a key failed (no system randomness).
    #[error("could not generate a key: {0}")]
    KeyGeneration(String),
    /// Neither signature header was present (or none that a configured key can check).
    #[error("missing signature: expected a {ED25519_HEADER} or {RSA_HEADER} header")]
    Missing,
    /// The header was not valid base64 or not a signature of the right length.
    #[error("malformed {header} header")]
    Malformed {
        /// The header that was malformed.
        header: &'static str,
    },
    /// No configured key verifies the signature over this body.
    #[error("{header} signature does not match the body")]
    Mismatch {
        /// The header that was checked.
        header: &'static str,
    },
    /// The body is not JSON with a `timestamp`, or the timestamp is outside the window.
    #[error("stale webhook: {0}")]
    Stale(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SignatureError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| SignatureError::KeyGeneration(e.to_string()))?;
    Ok(buf)
}

/// Signs webhook bodies the way HighLevel does.
#[derive(Clone)]
pub struct WebhookSigner {
    ed25519: ed25519_dalek::SigningKey,
    rsa: Option<pkcs1v15::SigningKey<Sha256>>,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("ed25519_public", &self.ed25519_public_key_base64())
            .field("rsa", &self.rsa.is_some())
            .finish()
    }
}

impl WebhookSigner {
    /// A new random Ed25519 key; no RSA key (add one with [`WebhookSigner::with_rsa`]).
    pub fn generate() -> Result<Self, SignatureError> {
        let seed = random_bytes::<32>()?;
        Ok(Self {
            ed25519: ed25519_dalek::SigningKey::from_bytes(&seed),
            rsa: None,
        })
    }

    /// An Ed25519 key from its 32-byte seed (for reproducible test fixtures).
    pub fn from_ed25519_seed(seed: [u8; 32]) -> Self {
        Self {
            ed25519: ed25519_dalek::SigningKey::from_bytes(&seed),
            rsa: None,
        }
    }

    /// An Ed25519 key from a PKCS#8 PEM private key.
    pub fn from_ed25519_pem(pem: &str) -> Result<Self, SignatureError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| {
            SignatureError::InvalidKey {
                kind: "Ed25519",
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            ed25519: key,
            rsa: None,
        })
    }

    /// Adds a freshly generated RSA key of `bits` bits, so bodies are also signed in `x-wh-signature`.
    pub fn with_rsa(mut self, bits: usize) -> Result<Self, SignatureError> {
        let mut rng = rand_core_rng::SysRng;
        let key = rsa::PrivateKey::new(&mut rng, bits)
            .map_err(|e| SignatureError::KeyGeneration(e.to_string()))?;
        self.rsa = Some(pkcs1v15::SigningKey::<Sha256>::new(key));
        Ok(self)
    }

    /// The Ed25519 private key as PKCS#8 PEM (to persist the sandbox's identity).
    pub fn ed25519_private_pem(&self) -> Result<String, SignatureError> {
        self.ed25519
            .to_pkcs8_pem(LineEnding::LF)
            .map(|s| s.to_string())
            .map_err(|e| SignatureError::InvalidKey {
                kind: "Ed25519",
                message: e.to_string(),
            })
    }

    /// The Ed25519 public key as SPKI PEM.
    pub fn ed25519_public_key_pem(&self) -> String {
        self.ed25519
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The raw 32-byte Ed25519 public key, base64.
    pub fn ed25519_public_key_base64(&self) -> String {
        B64.encode(self.ed25519.verifying_key().as_bytes())
    }

    /// The RSA public key as SPKI PEM, when RSA signing is on.
    pub fn rsa_public_key_pem(&self) -> Option<String> {
        use rsa::pkcs8::EncodePublicKey as _;
        self.rsa.as_ref().and_then(|k| {
            k.as_ref()
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .ok()
        })
    }

    /// The headers to send with `body`: always `x-ghl-signature`, and `x-wh-signature` when RSA is on.
    pub fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        use ed25519_dalek::Signer as _;
        let mut headers = vec![(
            ED25519_HEADER,
            B64.encode(self.ed25519.sign(body).to_bytes()),
        )];
        if let Some(rsa) = &self.rsa {
            let sig: pkcs1v15::Signature = rsa.sign(body);
            headers.push((RSA_HEADER, B64.encode(sig.to_bytes())));
        }
        headers
    }
}

mod rand_core_rng {
    //! The system RNG in the `rand_core` version the `rsa` crate expects.
    pub use getrandom::SysRng;
}

/// A public key a receiver trusts.
#[derive(Clone, Debug)]
pub enum PublicKey {
    /// Checks `x-ghl-signature`.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// Checks `x-wh-signature`.
    Rsa(pkcs1v15::VerifyingKey<Sha256>),
}

impl PublicKey {
    /// Reads a SPKI PEM key (`-----BEGIN PUBLIC KEY-----`), Ed25519 or RSA; or a raw
    /// base64 Ed25519 key of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(text) {
                return Ok(PublicKey::Ed25519(k));
            }
            return rsa::PublicKey::from_public_key_pem(text)
                .map(|k| PublicKey::Rsa(pkcs1v15::VerifyingKey::new(k)))
                .map_err(|e| SignatureError::InvalidKey {
                    kind: "RSA",
                    message: e.to_string(),
                });
        }
        let raw = B64.decode(text).map_err(|e| SignatureError::InvalidKey {
            kind: "Ed25519",
            message: e.to_string(),
        })?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| SignatureError::InvalidKey {
            kind: "Ed25519",
            message: "expected 32 bytes".into(),
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey::Ed25519)
            .map_err(|e| SignatureError::InvalidKey {
                kind: "Ed25519",
                message: e.to_string(),
            })
    }

    /// HighLevel's published RSA key.
    pub fn highlevel_rsa() -> Result<Self, SignatureError> {
        Self::parse(HIGHLEVEL_RSA_PUBLIC_KEY)
    }
}

/// Checks signatures (and optionally the timestamp window) of incoming webhooks.
#[derive(Clone, Debug, Default)]
pub struct WebhookVerifier {
    keys: Vec<PublicKey>,
    window: Option<Duration>,
}

/// Which scheme verified a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `x-ghl-signature`.
    Ed25519,
    /// `x-wh-signature`.
    Rsa,
}

impl WebhookVerifier {
    /// A verifier trusting `keys`; with no timestamp check until [`WebhookVerifier::with_window`].
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys, window: None }
    }

    /// Rejects bodies whose `timestamp` is further than `window` from now (HighLevel suggests 5 min).
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Verifies `body` given a header lookup. Ed25519 is tried first when both headers are present.
    pub fn verify<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        body: &[u8],
    ) -> Result<Scheme, SignatureError> {
        let scheme = self.verify_signature(&header, body)?;
        if let Some(window) = self.window {
            check_timestamp(body, window, time::OffsetDateTime::now_utc())?;
        }
        Ok(scheme)
    }

    fn verify_signature<'h>(
        &self,
        header: &impl Fn(&str) -> Option<&'h str>,
        body: &[u8],
    ) -> Result<Scheme, SignatureError> {
        let ed_keys: Vec<_> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                PublicKey::Ed25519(k) => Some(k),
                PublicKey::Rsa(_) => None,
            })
            .collect();
        let rsa_keys: Vec<_> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                PublicKey::Rsa(k) => Some(k),
                PublicKey::Ed25519(_) => None,
            })
            .collect();
        if let (Some(sig), false) = (header(ED25519_HEADER), ed_keys.is_empty()) {
            let malformed = SignatureError::Malformed {
                header: ED25519_HEADER,
            };
            let raw = B64.decode(sig.trim()).map_err(|_| malformed.clone())?;
            let sig = ed25519_dalek::Signature::from_slice(&raw).map_err(|_| malformed)?;
            return if ed_keys.iter().any(|k| k.verify_strict(body, &sig).is_ok()) {
                Ok(Scheme::Ed25519)
            } else {
                Err(SignatureError::Mismatch {
                    header: ED25519_HEADER,
                })
            };
        }
        if let (Some(sig), false) = (header(RSA_HEADER), rsa_keys.is_empty()) {
            let malformed = SignatureError::Malformed { header: RSA_HEADER };
            let raw = B64.decode(sig.trim()).map_err(|_| malformed.clone())?;
            let sig = pkcs1v15::Signature::try_from(raw.as_slice()).map_err(|_| malformed)?;
            return if rsa_keys.iter().any(|k| k.verify(body, &sig).is_ok()) {
                Ok(Scheme::Rsa)
            } else {
                Err(SignatureError::Mismatch { header: RSA_HEADER })
            };
        }
        Err(SignatureError::Missing)
    }
}

impl Clone for SignatureError {
    fn clone(&self) -> Self {
        match self {
            SignatureError::InvalidKey { kind, message } => SignatureError::InvalidKey {
                kind,
                message: message.clone(),
            },
            SignatureError::KeyGeneration(m) => SignatureError::KeyGeneration(m.clone()),
            SignatureError::Missing => SignatureError::Missing,
            SignatureError::Malformed { header } => SignatureError::Malformed { header },
            SignatureError::Mismatch { header } => SignatureError::Mismatch { header },
            SignatureError::Stale(m) => SignatureError::Stale(m.clone()),
        }
    }
}

/// Checks the body's `timestamp` (RFC 3339, or epoch milliseconds) against `now ± window`.
pub fn check_timestamp(
    body: &[u8],
    window: Duration,
    now: time::OffsetDateTime,
) -> Result<time::OffsetDateTime, SignatureError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| SignatureError::Stale(format!("body is not JSON: {e}")))?;
    let ts = match value.get("timestamp") {
        Some(serde_json::Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(
                |e| SignatureError::Stale(format!("timestamp {s:?} is not RFC 3339: {e}")),
            )?
        }
        Some(serde_json::Value::Number(n)) => {
            let ms = n
                .as_i64()
                .ok_or_else(|| SignatureError::Stale("timestamp is not an integer".into()))?;
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .map_err(|e| SignatureError::Stale(e.to_string()))?
        }
        _ => return Err(SignatureError::Stale("no timestamp in body".into())),
    };
    let skew = (now - ts).abs();
    if skew > window {
        return Err(SignatureError::Stale(format!(
            "timestamp {ts} is {}s away from now (window {}s)",
            skew.whole_seconds(),
            window.as_secs()
        )));
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(headers: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| {
            headers
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    #[test]
    fn ed25519_round_trip_and_forgery() {
        let signer = WebhookSigner::from_ed25519_seed([7; 32]);
        let body = br#"{"type":"ContactCreate","timestamp":"2025-01-28T14:35:00Z"}"#;
        let headers = signer.sign(body);
        let key = PublicKey::parse(&signer.ed25519_public_key_pem()).expect("pem");
        let verifier = WebhookVerifier::new(vec![key]);
        assert_eq!(verifier.verify(lookup(&headers), body), Ok(Scheme::Ed25519));
        let raw_key = PublicKey::parse(&signer.ed25519_public_key_base64()).expect("raw");
        assert!(
            WebhookVerifier::new(vec![raw_key])
                .verify(lookup(&headers), body)
                .is_ok()
        );
        let forged = br#"{"type":"ContactCreate","timestamp":"2025-01-28T14:35:01Z"}"#;
        assert_eq!(
            verifier.verify(lookup(&headers), forged),
            Err(SignatureError::Mismatch {
                header: ED25519_HEADER
            })
        );
        assert_eq!(
            verifier.verify(|_| None, body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verifier.verify(|_| Some("not base64!"), body),
            Err(SignatureError::Malformed {
                header: ED25519_HEADER
            })
        );
    }

    #[test]
    fn rsa_round_trip() {
        let signer = WebhookSigner::from_ed25519_seed([1; 32])
            .with_rsa(1024)
            .expect("rsa key");
        let body = br#"{"a":1}"#;
        let headers = signer.sign(body);
        assert_eq!(headers.len(), 2);
        let pem = signer.rsa_public_key_pem().expect("pem");
        let verifier = WebhookVerifier::new(vec![PublicKey::parse(&pem).expect("rsa pem")]);
        assert_eq!(verifier.verify(lookup(&headers), body), Ok(Scheme::Rsa));
        assert!(verifier.verify(lookup(&headers), b"{}").is_err());
    }

    #[test]
    fn highlevel_key_parses() {
        assert!(matches!(PublicKey::highlevel_rsa(), Ok(PublicKey::Rsa(_))));
    }

    #[test]
    fn timestamp_window() {
        let now = time::OffsetDateTime::parse(
            "2025-01-28T14:35:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time");
        let w = Duration::from_secs(300);
        assert!(check_timestamp(br#"{"timestamp":"2025-01-28T14:33:00Z"}"#, w, now).is_ok());
        assert!(check_timestamp(br#"{"timestamp":"2025-01-28T14:20:00Z"}"#, w, now).is_err());
        assert!(check_timestamp(br#"{"timestamp":1738074900000}"#, w, now).is_ok());
        assert!(check_timestamp(br#"{"nope":1}"#, w, now).is_err());
    }
}

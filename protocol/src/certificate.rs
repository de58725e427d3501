//! Server certificates: an operator key vouches for a tool server's identity key, so a
//! client can trust every server an operator runs without pinning each key.
//!
//! Implements spec section "Server certificates" (ID-010..ID-017).
//!
//! A certificate is a PASETO v4.public token signed by the operator's Ed25519 key,
//! with the implicit assertion `toolwire/1 server certificate` (so no grant or other
//! token signed by the same key can pass as a certificate), no footer, and JSON claims:
//!
//! | claim | value |
//! |---|---|
//! | `iss` | text form of the operator key (ID-006) |
//! | `sub` | text form of the certified server identity key |
//! | `iat` | optional, RFC 3339 |
//! | `nbf` | optional, RFC 3339 |
//! | `exp` | RFC 3339 |
//! | `endpoints` | optional list of endpoint URLs (at most 16); when present, the certificate is valid only for a client dialing one of them, byte for byte (HS-004) |
//!
//! The server sends it in `ServerHello.certificate`; a client that does not pin the
//! server's identity key accepts it when the certificate verifies under one of the
//! operator keys it trusts ([`verify_server_certificate`]).
//!
//! ```
//! # use toolwire_protocol::certificate::{ServerCertificateBuilder, verify_server_certificate, CertificateCheck};
//! # use toolwire_protocol::Identity;
//! # use time::macros::datetime;
//! let operator = Identity::from_seed(&[1; 32]);
//! let server = Identity::from_seed(&[2; 32]).public_key();
//! let token = ServerCertificateBuilder::new(server, datetime!(2030-01-01 0:00 UTC))
//!     .endpoints(["wss://tools.example.com/tw"])
//!     .sign(&operator)?;
//! let check = CertificateCheck {
//!     trusted_operators: &[operator.public_key()],
//!     server: server,
//!     endpoint: "wss://tools.example.com/tw",
//!     now_unix: 1_800_000_000,
//!     max_clock_skew_secs: 60,
//! };
//! assert_eq!(verify_server_certificate(&token, &check), Ok(operator.public_key()));
//! # Ok::<(), toolwire_protocol::certificate::CertificateError>(())
//! ```

use crate::grant::{format_time, key_to_text, parse_key, parse_time, GrantError};
use crate::identity::{Identity, IdentityKey};
use crate::paseto::{self, PasetoError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Implicit assertion of every server certificate (domain separation from grants and
/// any other PASETO signed by the same key).
pub const CERTIFICATE_IMPLICIT_ASSERTION: &[u8] = b"toolwire/1 server certificate";

/// Longest certificate token accepted, in bytes (ID-016).
pub const MAX_CERTIFICATE_LEN: usize = 4096;

/// Most endpoints one certificate may name (ID-016).
pub const MAX_CERTIFICATE_ENDPOINTS: usize = 16;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Why a server certificate was rejected (or could not be issued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Not a well-formed certificate; the payload names the offending part
    /// (`"token"`, `"footer"`, `"claims"` or a claim name).
    #[error("malformed server certificate: {0}")]
    Malformed(&'static str),
    /// Signed (by its own claim) by a key the client does not trust as an operator.
    #[error("server certificate issued by an untrusted operator key")]
    UntrustedOperator,
    /// The signature does not verify under the claimed operator key.
    #[error("server certificate signature verification failed")]
    BadSignature,
    /// The certificate is for another server identity key.
    #[error("server certificate is for another server identity")]
    WrongServer,
    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("server certificate not yet valid")]
    NotYetValid,
    /// `exp` has passed (beyond the allowed clock skew).
    #[error("server certificate expired")]
    Expired,
    /// The certificate names endpoints and the one the client dialed is not among them.
    #[error("server certificate is not valid for this endpoint")]
    WrongEndpoint,
}

/// The claims of a server certificate, exactly as serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCertificateClaims {
    /// Text key of the operator that signed the certificate.
    pub iss: String,
    /// Text key of the certified server identity.
    pub sub: String,
    /// Issued-at, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<String>,
    /// Not-before, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<String>,
    /// Expiry, RFC 3339.
    pub exp: String,
    /// Endpoint URLs the certificate is restricted to; absent means any endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
}

/// Issues server certificates.
#[derive(Debug, Clone)]
pub struct ServerCertificateBuilder {
    server: IdentityKey,
    expires_at: OffsetDateTime,
    not_before: Option<OffsetDateTime>,
    issued_at: Option<OffsetDateTime>,
    endpoints: Option<Vec<String>>,
}

impl ServerCertificateBuilder {
    /// A certificate for `server`, valid until `expires_at`.
    pub fn new(server: IdentityKey, expires_at: OffsetDateTime) -> Self {
        Self {
            server,
            expires_at,
            not_before: None,
            issued_at: None,
            endpoints: None,
        }
    }

    /// Not valid before `at`.
    pub fn not_before(mut self, at: OffsetDateTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Records the issue time.
    pub fn issued_at(mut self, at: OffsetDateTime) -> Self {
        self.issued_at = Some(at);
        self
    }

    /// Restricts the certificate to these endpoint URLs (byte for byte, as clients
    /// dial them).
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = Some(endpoints.into_iter().map(Into::into).collect());
        self
    }

    /// Signs the certificate with the operator identity.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`] when a time cannot be written, the endpoint
    /// list is empty or longer than [`MAX_CERTIFICATE_ENDPOINTS`], or the token would
    /// exceed [`MAX_CERTIFICATE_LEN`].
    pub fn sign(&self, operator: &Identity) -> Result<String, CertificateError> {
        if let Some(endpoints) = &self.endpoints {
            if endpoints.is_empty() || endpoints.len() > MAX_CERTIFICATE_ENDPOINTS {
                return Err(CertificateError::Malformed("endpoints"));
            }
        }
        let claims = ServerCertificateClaims {
            iss: key_to_text(operator.public_key().as_bytes()),
            sub: key_to_text(self.server.as_bytes()),
            iat: self
                .issued_at
                .map(|t| format_time(t, "iat"))
                .transpose()
                .map_err(from_grant_error)?,
            nbf: self
                .not_before
                .map(|t| format_time(t, "nbf"))
                .transpose()
                .map_err(from_grant_error)?,
            exp: format_time(self.expires_at, "exp").map_err(from_grant_error)?,
            endpoints: self.endpoints.clone(),
        };
        let message =
            serde_json::to_vec(&claims).map_err(|_| CertificateError::Malformed("claims"))?;
        let token = paseto::sign_v4_public(
            operator.signing_key(),
            &message,
            b"",
            CERTIFICATE_IMPLICIT_ASSERTION,
        );
        if token.len() > MAX_CERTIFICATE_LEN {
            return Err(CertificateError::Malformed("token"));
        }
        Ok(token)
    }
}

/// What a client knows when it checks a server certificate.
#[derive(Debug, Clone, Copy)]
pub struct CertificateCheck<'a> {
    /// Operator keys the client trusts to certify servers.
    pub trusted_operators: &'a [IdentityKey],
    /// The identity key the server authenticated with in this handshake.
    pub server: IdentityKey,
    /// The endpoint URL the client dialed (HS-004).
    pub endpoint: &'a str,
    /// Current time, Unix seconds.
    pub now_unix: i64,
    /// Tolerance for clock differences, applied to `exp` and `nbf`; negative is 0.
    pub max_clock_skew_secs: i64,
}

/// A certificate's claims, decoded and checked for form but NOT verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedCertificate {
    /// The operator key the certificate claims to be signed by.
    pub operator: IdentityKey,
    /// The certified server identity key.
    pub server: IdentityKey,
    /// `nbf` as Unix seconds, when present.
    pub not_before_unix: Option<i64>,
    /// `exp` as Unix seconds.
    pub expires_at_unix: i64,
    /// The endpoints the certificate is restricted to, when present.
    pub endpoints: Option<Vec<String>>,
    nbf_nanos: Option<i128>,
    exp_nanos: i128,
}

/// Decodes a certificate's claims without verifying its signature (for display, e.g.
/// `toolwire cert show`). Nothing returned may be trusted.
///
/// # Errors
/// [`CertificateError::Malformed`] for anything that is not a well-formed certificate.
pub fn decode_unverified(token: &str) -> Result<UnverifiedCertificate, CertificateError> {
    if token.len() > MAX_CERTIFICATE_LEN {
        return Err(CertificateError::Malformed("token"));
    }
    let (message, footer) =
        paseto::decode_unverified_v4_public(token).map_err(|error| match error {
            PasetoError::WrongPurpose => CertificateError::Malformed("purpose"),
            _ => CertificateError::Malformed("token"),
        })?;
    if !footer.is_empty() {
        return Err(CertificateError::Malformed("footer"));
    }
    // One claims syntax: a JSON object (serde would also take an array of fields).
    if message.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(CertificateError::Malformed("claims"));
    }
    let claims: ServerCertificateClaims =
        serde_json::from_slice(&message).map_err(|_| CertificateError::Malformed("claims"))?;
    let operator =
        IdentityKey::from_bytes(parse_key(&claims.iss, "iss").map_err(from_grant_error)?)
            .map_err(|_| CertificateError::Malformed("iss"))?;
    let server = IdentityKey::from_bytes(parse_key(&claims.sub, "sub").map_err(from_grant_error)?)
        .map_err(|_| CertificateError::Malformed("sub"))?;
    if let Some(iat) = &claims.iat {
        parse_time(iat, "iat").map_err(from_grant_error)?;
    }
    let not_before = claims
        .nbf
        .as_deref()
        .map(|text| parse_time(text, "nbf"))
        .transpose()
        .map_err(from_grant_error)?;
    let expires_at = parse_time(&claims.exp, "exp").map_err(from_grant_error)?;
    if let Some(endpoints) = &claims.endpoints {
        if endpoints.is_empty() || endpoints.len() > MAX_CERTIFICATE_ENDPOINTS {
            return Err(CertificateError::Malformed("endpoints"));
        }
    }
    Ok(UnverifiedCertificate {
        operator,
        server,
        not_before_unix: not_before.map(OffsetDateTime::unix_timestamp),
        expires_at_unix: expires_at.unix_timestamp(),
        endpoints: claims.endpoints,
        nbf_nanos: not_before.map(OffsetDateTime::unix_timestamp_nanos),
        exp_nanos: expires_at.unix_timestamp_nanos(),
    })
}

/// Verifies a server certificate and returns the operator key that vouches for the
/// server.
///
/// Checks, in this order, the first failure deciding the error (ID-013): form
/// ([`CertificateError::Malformed`]), operator trusted
/// ([`CertificateError::UntrustedOperator`]), signature
/// ([`CertificateError::BadSignature`]), subject equal to the authenticated server
/// identity ([`CertificateError::WrongServer`]), validity period with the allowed skew
/// ([`CertificateError::NotYetValid`], [`CertificateError::Expired`]), endpoint
/// ([`CertificateError::WrongEndpoint`]). Never panics on any input.
///
/// # Errors
/// The [`CertificateError`] of the first check that fails.
pub fn verify_server_certificate(
    token: &str,
    check: &CertificateCheck<'_>,
) -> Result<IdentityKey, CertificateError> {
    let certificate = decode_unverified(token)?;
    if !check.trusted_operators.contains(&certificate.operator) {
        return Err(CertificateError::UntrustedOperator);
    }
    let operator_key = ed25519_dalek::VerifyingKey::from_bytes(certificate.operator.as_bytes())
        .map_err(|_| CertificateError::Malformed("iss"))?;
    paseto::verify_v4_public(
        &operator_key,
        token,
        Some(b""),
        CERTIFICATE_IMPLICIT_ASSERTION,
    )
    .map_err(|error| match error {
        PasetoError::BadSignature => CertificateError::BadSignature,
        _ => CertificateError::Malformed("token"),
    })?;
    if certificate.server != check.server {
        return Err(CertificateError::WrongServer);
    }
    // In i128 nanoseconds no sum of these values can overflow.
    let skew = i128::from(check.max_clock_skew_secs.max(0)) * NANOS_PER_SEC;
    let now = i128::from(check.now_unix) * NANOS_PER_SEC;
    if let Some(nbf) = certificate.nbf_nanos {
        if nbf > now + skew {
            return Err(CertificateError::NotYetValid);
        }
    }
    if certificate.exp_nanos <= now - skew {
        return Err(CertificateError::Expired);
    }
    if let Some(endpoints) = &certificate.endpoints {
        if !endpoints.iter().any(|endpoint| endpoint == check.endpoint) {
            return Err(CertificateError::WrongEndpoint);
        }
    }
    Ok(certificate.operator)
}

fn from_grant_error(error: GrantError) -> CertificateError {
    match error {
        GrantError::Malformed(part) => CertificateError::Malformed(part),
        _ => CertificateError::Malformed("claims"),
    }
}

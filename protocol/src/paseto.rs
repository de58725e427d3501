//! PASETO **v4.public** (Ed25519 signatures) and the Pre-Authentication Encoding.
//!
//! Implements the token format of spec section "Capability grants" (GRT-001, GRT-002,
//! GRT-006..GRT-011) and PAE (section "Conventions").
//!
//! This module implements the token *format* of PASETO version 4, purpose
//! `public`, as specified by the paseto-standard `Version4.md` and `Common.md`
//! documents. The signature primitive itself is Ed25519 from `ed25519-dalek`;
//! nothing cryptographic is implemented here beyond framing.
//!
//! # Wire format
//!
//! ```text
//! token   = "v4.public." b64(message || sig) [ "." b64(footer) ]
//! sig     = Ed25519(sk, PAE(["v4.public.", message, footer, implicit_assertion]))
//! b64     = base64url, RFC 4648 §5, without "=" padding
//! ```
//!
//! The footer segment is present if and only if the footer is non-empty, and
//! the implicit assertion is never transmitted: both sides must agree on it
//! out of band (toolwire uses it for domain separation).
//!
//! # Strictness (deliberate, beyond the spec's minimum)
//!
//! * Tokens longer than [`MAX_TOKEN_LEN`] bytes are rejected as
//!   [`PasetoError::Malformed`] before any decoding, so an attacker cannot make
//!   a verifier allocate or hash unbounded input.
//! * Base64url decoding is canonical only: `=` padding is rejected, and so are
//!   non-zero trailing bits (the spec's `Common.md` requires both), so every
//!   signed payload has exactly one textual encoding.
//! * A trailing `.` with an empty footer segment is rejected: the signer never
//!   emits it, and accepting it would give one token two spellings.
//! * Verification uses [`VerifyingKey::verify_strict`], which rejects
//!   non-canonical signatures and small-order public keys, so a signature
//!   cannot be malleated into a second valid token.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey, SIGNATURE_LENGTH};

/// Largest token, in bytes of its text form, that the decoder will look at.
///
/// Tokens above this size are rejected as [`PasetoError::Malformed`] before any
/// base64 decoding or hashing. 8 KiB comfortably holds a toolwire grant with a
/// full delegation chain while bounding the work an unauthenticated peer can
/// cause. [`sign_v4_public`] does not enforce it (it cannot fail); callers that
/// mint tokens for other parties should check the length themselves.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The header that starts every v4.public token; also the first PAE piece.
const HEADER: &str = "v4.public.";

/// Base64url without padding, strict in both directions.
///
/// Decoding refuses `=` padding and non-zero trailing bits, as PASETO's
/// `Common.md` requires; shared with the grant module for key text forms so
/// that there is exactly one accepted spelling of every byte string.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Why a v4.public token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasetoError {
    /// The token is not structurally a v4.public token: too long, wrong number
    /// of segments, invalid or non-canonical base64url, or a payload too short
    /// to hold a signature.
    #[error("malformed PASETO token")]
    Malformed,
    /// The token names a version or purpose other than `v4.public` (for
    /// example a `v4.local` or `v3.public` token).
    #[error("PASETO token is not v4.public")]
    WrongPurpose,
    /// The Ed25519 signature does not verify for this key, message, footer and
    /// implicit assertion.
    #[error("PASETO signature verification failed")]
    BadSignature,
    /// The token's footer differs from the footer the caller required.
    #[error("PASETO footer does not match the expected footer")]
    FooterMismatch,
}

/// A token whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The signed message (the claims, for most uses).
    pub message: Vec<u8>,
    /// The footer, empty when the token has none. It is covered by the
    /// signature.
    pub footer: Vec<u8>,
}

/// PASETO Pre-Authentication Encoding: `LE64(count) || for each piece LE64(len) || bytes`.
///
/// `LE64` is a little-endian 64-bit integer whose most significant bit is
/// cleared, as the spec requires for interoperability with languages without
/// unsigned integers. Lengths never reach 2^63 in practice, so the masking
/// changes nothing for real inputs; it is applied so the function matches the
/// specification exactly.
#[must_use]
pub fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let capacity = pieces.iter().fold(8usize, |acc, p| {
        acc.saturating_add(8).saturating_add(p.len())
    });
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&le64(pieces.len()));
    for piece in pieces {
        out.extend_from_slice(&le64(piece.len()));
        out.extend_from_slice(piece);
    }
    out
}

/// `LE64` from the PASETO spec: little-endian, most significant bit cleared.
fn le64(n: usize) -> [u8; 8] {
    // usize is at most 64 bits on every target Rust supports; saturate rather
    // than panic if that ever changes.
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    (n & (u64::MAX >> 1)).to_le_bytes()
}

/// Signs `message` as a v4.public token.
///
/// `footer` is appended in clear (base64url) when non-empty and is covered by
/// the signature; `implicit_assertion` is covered by the signature but never
/// transmitted. Ed25519 is deterministic, so the same inputs always give the
/// same token.
#[must_use]
pub fn sign_v4_public(
    key: &SigningKey,
    message: &[u8],
    footer: &[u8],
    implicit_assertion: &[u8],
) -> String {
    let m2 = pae(&[HEADER.as_bytes(), message, footer, implicit_assertion]);
    let sig = key.sign(&m2);

    let mut body = Vec::with_capacity(message.len().saturating_add(SIGNATURE_LENGTH));
    body.extend_from_slice(message);
    body.extend_from_slice(&sig.to_bytes());

    let mut token = String::from(HEADER);
    B64.encode_string(&body, &mut token);
    // The spec omits the footer segment entirely when the footer is empty;
    // verifiers here reject an empty trailing segment, so never emit one.
    if !footer.is_empty() {
        token.push('.');
        B64.encode_string(footer, &mut token);
    }
    token
}

/// Verifies a v4.public token and returns its message and footer.
///
/// Verification uses [`VerifyingKey::verify_strict`]. `expected_footer`:
/// `Some(f)` requires the token's footer to equal `f` exactly (an empty `f`
/// means "no footer"), otherwise [`PasetoError::FooterMismatch`]; `None`
/// accepts any footer and returns it (it is still authenticated by the
/// signature). The footer comparison is not constant-time: footers are public
/// data (they travel in clear), so their timing reveals nothing secret.
///
/// Checks happen in this order: size and structure ([`PasetoError::Malformed`]),
/// header ([`PasetoError::WrongPurpose`]), footer, signature.
///
/// # Errors
///
/// The [`PasetoError`] of the first check that fails, in the order above.
pub fn verify_v4_public(
    key: &VerifyingKey,
    token: &str,
    expected_footer: Option<&[u8]>,
    implicit_assertion: &[u8],
) -> Result<VerifiedToken, PasetoError> {
    let parts = decode(token)?;
    if let Some(expected) = expected_footer {
        if parts.footer.as_slice() != expected {
            return Err(PasetoError::FooterMismatch);
        }
    }
    let m2 = pae(&[
        HEADER.as_bytes(),
        &parts.message,
        &parts.footer,
        implicit_assertion,
    ]);
    key.verify_strict(&m2, &parts.signature)
        .map_err(|_| PasetoError::BadSignature)?;
    Ok(VerifiedToken {
        message: parts.message,
        footer: parts.footer,
    })
}

/// Splits a v4.public token into `(message, footer)` **without verifying it**.
///
/// This exists so that a verifier can read unverified claims (typically
/// `iss`) to decide which key to verify with. The signature is NOT checked:
/// nothing returned here may be trusted until the same token has passed
/// [`verify_v4_public`]. The structural checks (size cap, header, canonical
/// base64, minimum length) are the same as for verification.
///
/// # Errors
///
/// [`PasetoError::Malformed`] or [`PasetoError::WrongPurpose`], exactly as
/// [`verify_v4_public`] would report them.
pub fn decode_unverified_v4_public(token: &str) -> Result<(Vec<u8>, Vec<u8>), PasetoError> {
    let parts = decode(token)?;
    Ok((parts.message, parts.footer))
}

/// The decoded segments of a structurally valid v4.public token.
struct Decoded {
    /// The signed message (payload minus the trailing 64 signature bytes).
    message: Vec<u8>,
    /// The trailing 64 payload bytes.
    signature: Signature,
    /// The decoded footer, empty when the segment is absent.
    footer: Vec<u8>,
}

/// Structural parsing shared by verification and unverified decoding.
fn decode(token: &str) -> Result<Decoded, PasetoError> {
    // Size cap first: nothing below should ever touch an oversized input.
    if token.len() > MAX_TOKEN_LEN {
        return Err(PasetoError::Malformed);
    }

    let mut segments = token.split('.');
    let (version, purpose, body) = match (segments.next(), segments.next(), segments.next()) {
        (Some(v), Some(p), Some(b)) if !v.is_empty() && !p.is_empty() => (v, p, b),
        _ => return Err(PasetoError::Malformed),
    };
    // Report a well-formed token of another version/purpose distinctly, so
    // that callers (and logs) can tell "wrong kind of token" from "garbage".
    if version != "v4" || purpose != "public" {
        return Err(PasetoError::WrongPurpose);
    }
    let footer_segment = segments.next();
    if segments.next().is_some() {
        return Err(PasetoError::Malformed);
    }

    let footer = match footer_segment {
        None => Vec::new(),
        // "v4.public.<body>." is never produced by a conforming signer.
        Some("") => return Err(PasetoError::Malformed),
        Some(f) => B64.decode(f).map_err(|_| PasetoError::Malformed)?,
    };

    let mut message = B64.decode(body).map_err(|_| PasetoError::Malformed)?;
    let split_at = message
        .len()
        .checked_sub(SIGNATURE_LENGTH)
        .ok_or(PasetoError::Malformed)?;
    let sig_bytes: [u8; SIGNATURE_LENGTH] = message
        .get(split_at..)
        .and_then(|s| s.try_into().ok())
        .ok_or(PasetoError::Malformed)?;
    message.truncate(split_at);

    Ok(Decoded {
        message,
        signature: Signature::from_bytes(&sig_bytes),
        footer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le64_clears_msb() {
        assert_eq!(le64(0), [0; 8]);
        assert_eq!(le64(1), [1, 0, 0, 0, 0, 0, 0, 0]);
        // Only meaningful where usize is 64 bits, which is every target we build for.
        if let Ok(n) = usize::try_from(u64::MAX) {
            assert_eq!(le64(n), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        }
    }

    #[test]
    fn empty_footer_segment_rejected() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let token = sign_v4_public(&key, b"m", b"", b"");
        let with_dot = format!("{token}.");
        assert_eq!(
            verify_v4_public(&key.verifying_key(), &with_dot, None, b""),
            Err(PasetoError::Malformed)
        );
    }
}

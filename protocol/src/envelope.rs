//! Signed envelopes: Ed25519 signatures over REQUEST and RESPONSE, so that either
//! party can later prove what was asked and answered (non-repudiation; the audit log
//! stores them).
//!
//! Implements spec section "Signed envelope" (ENV-001..ENV-009). The signed bytes are
//! a PASETO-style pre-authentication encoding (PAE, see [`crate::paseto::pae`]) of:
//!
//! ```text
//! request:  PAE("toolwire/1 request",  session_id, LE64(request_id), tool, args, grant_id)
//! response: PAE("toolwire/1 response", session_id, LE64(request_id), request_hash, result)
//! request_hash = SHA-256(request signing bytes)
//! ```
//!
//! `grant_id` is the empty string when the request names no grant. Signatures are
//! verified with `verify_strict`.

use crate::identity::{Identity, IdentityKey, SIGNATURE_LEN};
use crate::paseto::pae;
use sha2::{Digest as _, Sha256};

/// Domain string of request signatures.
pub const REQUEST_DOMAIN: &[u8] = b"toolwire/1 request";
/// Domain string of response signatures.
pub const RESPONSE_DOMAIN: &[u8] = b"toolwire/1 response";

/// The fields of a REQUEST that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestFields<'a> {
    /// Session id (the handshake hash).
    pub session_id: &'a [u8; 32],
    /// Request id.
    pub request_id: u64,
    /// Tool name.
    pub tool: &'a str,
    /// Argument bytes as sent.
    pub args: &'a [u8],
    /// Grant id, empty when none.
    pub grant_id: &'a str,
}

impl RequestFields<'_> {
    /// The exact bytes a request signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        pae(&[
            REQUEST_DOMAIN,
            self.session_id,
            &self.request_id.to_le_bytes(),
            self.tool.as_bytes(),
            self.args,
            self.grant_id.as_bytes(),
        ])
    }

    /// SHA-256 of the signing bytes: what a response signature binds to.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.signing_bytes()).into()
    }

    /// Signs the request with the client identity.
    pub fn sign(&self, identity: &Identity) -> [u8; SIGNATURE_LEN] {
        identity.sign(&self.signing_bytes())
    }

    /// Verifies a request signature.
    ///
    /// # Errors
    /// [`EnvelopeError::BadSignature`] when it does not verify (wrong key, altered
    /// field, non-canonical signature).
    pub fn verify(&self, client: &IdentityKey, signature: &[u8]) -> Result<(), EnvelopeError> {
        client
            .verify(&self.signing_bytes(), signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// The fields of a RESPONSE that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFields<'a> {
    /// Session id.
    pub session_id: &'a [u8; 32],
    /// Request id answered.
    pub request_id: u64,
    /// [`RequestFields::hash`] of the request answered.
    pub request_hash: &'a [u8; 32],
    /// Result bytes as sent.
    pub result: &'a [u8],
}

impl ResponseFields<'_> {
    /// The exact bytes a response signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        pae(&[
            RESPONSE_DOMAIN,
            self.session_id,
            &self.request_id.to_le_bytes(),
            self.request_hash,
            self.result,
        ])
    }

    /// Signs the response with the server identity.
    pub fn sign(&self, identity: &Identity) -> [u8; SIGNATURE_LEN] {
        identity.sign(&self.signing_bytes())
    }

    /// Verifies a response signature.
    ///
    /// # Errors
    /// [`EnvelopeError::BadSignature`] when it does not verify.
    pub fn verify(&self, server: &IdentityKey, signature: &[u8]) -> Result<(), EnvelopeError> {
        server
            .verify(&self.signing_bytes(), signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The signature is missing where required, or does not verify.
    #[error("envelope signature did not verify")]
    BadSignature,
}

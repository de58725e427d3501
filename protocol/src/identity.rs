//! Long-term Ed25519 identities of clients and servers.
//!
//! Implements spec section "Identities" (ID-001..ID-009): identity keys are Ed25519
//! public keys, written as unpadded base64url; signatures are verified with
//! `verify_strict` (no malleable or small-order forms).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The public half of an identity: an Ed25519 public key.
///
/// Its text form (`Display`/`FromStr`) is the 32 bytes in unpadded base64url
/// (43 characters), the form used in grants, config files and logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey([u8; 32]);

/// A key or signature that is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 32 bytes / 43 base64url characters.
    #[error("an identity key is 32 bytes, written as 43 base64url characters")]
    Encoding,
    /// Not a point on the curve, or a small-order (weak) point.
    #[error("not a valid Ed25519 public key")]
    InvalidPoint,
    /// The signature did not verify.
    #[error("signature did not verify")]
    BadSignature,
}

impl IdentityKey {
    /// Wraps 32 bytes after checking that they are a usable Ed25519 public key: a
    /// valid point that is not of small order (ID-002).
    ///
    /// # Errors
    /// [`KeyError::InvalidPoint`] for an invalid or weak key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPoint)?;
        if key.is_weak() {
            return Err(KeyError::InvalidPoint);
        }
        Ok(Self(bytes))
    }

    /// Like [`from_bytes`](Self::from_bytes) from a slice.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] when the slice is not 32 bytes, else as `from_bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Encoding)?;
        Self::from_bytes(array)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The raw 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, human-comparable fingerprint: the first 10 bytes of SHA-256 of the
    /// key in hex, in groups of four (`tw:1a2b-3c4d-...`).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        let hex = hex::encode(&digest[..10]);
        let groups: Vec<&str> = (0..hex.len())
            .step_by(4)
            .map(|start| &hex[start..start + 4])
            .collect();
        format!("tw:{}", groups.join("-"))
    }

    /// Verifies an Ed25519 signature over `message` with `verify_strict` (ID-004).
    ///
    /// # Errors
    /// [`KeyError::BadSignature`] when it does not verify, including non-canonical
    /// encodings of the signature.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let signature: [u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| KeyError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidPoint)?;
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
            .map_err(|_| KeyError::BadSignature)
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({self})")
    }
}

impl FromStr for IdentityKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        if text.len() != 43 {
            return Err(KeyError::Encoding);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| KeyError::Encoding)?;
        Self::from_slice(&bytes)
    }
}

/// A long-term identity: an Ed25519 signing key. Zeroized on drop; `Debug` shows only
/// the public key.
#[derive(Clone)]
pub struct Identity {
    signing_key: SigningKey,
    public_key: IdentityKey,
}

impl Identity {
    /// A fresh identity from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        Self::from_signing_key(SigningKey::generate(rng))
    }

    /// The identity whose 32-byte Ed25519 seed (the secret key) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(signing_key: SigningKey) -> Self {
        let public_key = IdentityKey(signing_key.verifying_key().to_bytes());
        Self {
            signing_key,
            public_key,
        }
    }

    /// The secret seed, for saving the identity. Zeroized when dropped.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing_key.to_bytes())
    }

    /// The public identity key.
    pub fn public_key(&self) -> IdentityKey {
        self.public_key
    }

    /// Signs `message` (Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing_key.sign(message).to_bytes()
    }

    /// The underlying Ed25519 signing key, for issuing grants
    /// ([`crate::grant::GrantBuilder::sign`]).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

/// First line of an identity file (the text form of an [`Identity`]).
pub const IDENTITY_FILE_HEADER: &str = "toolwire-identity-v1";

/// Why the text of an identity file was refused. The messages name the fault, never
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFileError {
    /// The first line is not [`IDENTITY_FILE_HEADER`].
    #[error("not a toolwire identity file (the first line must be `{IDENTITY_FILE_HEADER}`)")]
    NotAnIdentityFile,
    /// The second line is not unpadded base64url.
    #[error("the seed line is not unpadded base64url")]
    SeedEncoding,
    /// The seed does not decode to 32 bytes.
    #[error("the seed is {0} bytes, expected 32")]
    SeedLength(usize),
}

impl Identity {
    /// The text of an identity file, shared by the CLI and the Python package:
    ///
    /// ```text
    /// toolwire-identity-v1
    /// <43 characters: unpadded base64url of the 32-byte seed>
    /// ```
    ///
    /// Zeroized when dropped. Write it with owner-only permissions.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = self.to_seed();
        Zeroizing::new(format!(
            "{IDENTITY_FILE_HEADER}\n{}\n",
            URL_SAFE_NO_PAD.encode(*seed)
        ))
    }

    /// Parses the text of an identity file written by
    /// [`to_file_text`](Self::to_file_text) (surrounding whitespace on each line is
    /// ignored).
    ///
    /// # Errors
    /// [`IdentityFileError`] naming what is wrong.
    pub fn from_file_text(text: &str) -> Result<Self, IdentityFileError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(IDENTITY_FILE_HEADER) {
            return Err(IdentityFileError::NotAnIdentityFile);
        }
        let encoded = lines.next().map(str::trim).unwrap_or_default();
        let seed = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| IdentityFileError::SeedEncoding)?,
        );
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| IdentityFileError::SeedLength(seed.len()))?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_bad_input() {
        let identity = Identity::from_seed(&[7; 32]);
        let text = identity.public_key().to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<IdentityKey>(), Ok(identity.public_key()));
        assert_eq!("short".parse::<IdentityKey>(), Err(KeyError::Encoding));
        let padded = format!("{}=", &text[..42]);
        assert_eq!(padded.parse::<IdentityKey>(), Err(KeyError::Encoding));
    }

    #[test]
    fn identity_file_text_round_trips_and_names_faults() {
        let identity = Identity::from_seed(&[9; 32]);
        let text = identity.to_file_text();
        assert!(text.starts_with("toolwire-identity-v1\n"));
        assert_eq!(text.lines().nth(1).map(str::len), Some(43));
        let decoded = Identity::from_file_text(&text).expect("decodes");
        assert_eq!(decoded.public_key(), identity.public_key());
        assert_eq!(
            Identity::from_file_text("hello\n").map(|_| ()),
            Err(IdentityFileError::NotAnIdentityFile)
        );
        assert_eq!(
            Identity::from_file_text("toolwire-identity-v1\n!!!\n").map(|_| ()),
            Err(IdentityFileError::SeedEncoding)
        );
        assert_eq!(
            Identity::from_file_text("toolwire-identity-v1\nAAAA\n").map(|_| ()),
            Err(IdentityFileError::SeedLength(3))
        );
    }

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert_eq!(
            IdentityKey::from_bytes(identity_point),
            Err(KeyError::InvalidPoint)
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let identity = Identity::from_seed(&[0x42; 32]);
        let debug = format!("{identity:?}");
        assert!(!debug.contains(&hex::encode([0x42u8; 32])));
        assert!(!debug.contains("66, 66"));
        assert!(debug.contains(&identity.public_key().to_string()));
    }

    #[test]
    fn signatures_verify_only_under_the_signer_and_message() {
        let alice = Identity::from_seed(&[1; 32]);
        let bob = Identity::from_seed(&[2; 32]);
        let signature = alice.sign(b"hello");
        assert_eq!(alice.public_key().verify(b"hello", &signature), Ok(()));
        assert_eq!(
            bob.public_key().verify(b"hello", &signature),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            alice.public_key().verify(b"hellO", &signature),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            alice.public_key().verify(b"hello", &signature[..63]),
            Err(KeyError::BadSignature)
        );
    }
}

//! Signed tool manifests and per-tool digests.
//!
//! Implements spec section "Tool manifest" (MAN-001..MAN-012). The manifest lists every
//! tool the server offers with its description and JSON Schemas. The server identity
//! signs `PAE("toolwire/1 manifest", manifest_bytes)`; each tool's digest is
//! `SHA-256(PAE("toolwire/1 tool", name, description, input_schema, output_schema))`,
//! so a grant bound to a digest stops covering a tool whose definition changed.

use crate::identity::{Identity, IdentityKey};
use crate::message::SignedManifest;
use crate::paseto::pae;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

/// Domain string of manifest signatures.
pub const MANIFEST_DOMAIN: &[u8] = b"toolwire/1 manifest";
/// Domain string of tool digests.
pub const TOOL_DOMAIN: &[u8] = b"toolwire/1 tool";

/// One tool's definition as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDescriptor {
    /// Unique tool name.
    pub name: String,
    /// What the tool does, shown to the agent (and to the model driving it).
    pub description: String,
    /// JSON Schema of the arguments, as JSON text.
    pub input_schema: String,
    /// JSON Schema of the result, as JSON text; empty when unspecified.
    #[serde(default)]
    pub output_schema: String,
}

impl ToolDescriptor {
    /// The digest a grant binds to.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(pae(&[
            TOOL_DOMAIN,
            self.name.as_bytes(),
            self.description.as_bytes(),
            self.input_schema.as_bytes(),
            self.output_schema.as_bytes(),
        ]))
        .into()
    }
}

/// The list of tools a server offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The server identity that signs the manifest.
    pub server: ByteBuf,
    /// The tools.
    pub tools: Vec<ToolDescriptor>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest bytes do not decode.
    #[error("malformed manifest")]
    Malformed,
    /// The signature does not verify under the server identity, or the manifest names
    /// another server.
    #[error("manifest signature did not verify")]
    BadSignature,
}

impl Manifest {
    /// Signs the manifest with the server identity.
    pub fn sign(&self, identity: &Identity) -> SignedManifest {
        let bytes = rmp_serde::to_vec_named(self).unwrap_or_default();
        let signature = identity.sign(&pae(&[MANIFEST_DOMAIN, &bytes]));
        SignedManifest {
            manifest: ByteBuf::from(bytes),
            signature: ByteBuf::from(signature.to_vec()),
        }
    }

    /// SHA-256 of the manifest bytes as signed: what a client pins.
    pub fn hash(signed: &SignedManifest) -> [u8; 32] {
        Sha256::digest(&signed.manifest).into()
    }

    /// Verifies a signed manifest against the server identity and decodes it.
    ///
    /// # Errors
    /// [`ManifestError::BadSignature`] or [`ManifestError::Malformed`].
    pub fn verify(signed: &SignedManifest, server: &IdentityKey) -> Result<Self, ManifestError> {
        server
            .verify(
                &pae(&[MANIFEST_DOMAIN, &signed.manifest]),
                &signed.signature,
            )
            .map_err(|_| ManifestError::BadSignature)?;
        let manifest: Manifest =
            rmp_serde::from_slice(&signed.manifest).map_err(|_| ManifestError::Malformed)?;
        if manifest.server.as_ref() != server.as_bytes() {
            return Err(ManifestError::BadSignature);
        }
        Ok(manifest)
    }
}

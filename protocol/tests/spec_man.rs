//! Tool manifests (spec section 11): the signature over the manifest bytes, what a
//! client checks before trusting them, the tool digest and the manifest hash.

use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};
use toolwire_protocol::manifest::{
    Manifest, ManifestError, ToolDescriptor, MANIFEST_DOMAIN, TOOL_DOMAIN,
};
use toolwire_protocol::message::SignedManifest;
use toolwire_protocol::paseto::pae;
use toolwire_protocol::Identity;

fn server() -> Identity {
    Identity::from_seed(&[0x53; 32])
}

fn echo() -> ToolDescriptor {
    ToolDescriptor {
        name: "echo".into(),
        description: "Echoes its input".into(),
        input_schema: r#"{"type":"array"}"#.into(),
        output_schema: String::new(),
    }
}

fn manifest_of(server: &Identity) -> Manifest {
    Manifest {
        server: ByteBuf::from(server.public_key().to_bytes().to_vec()),
        tools: vec![
            echo(),
            ToolDescriptor {
                name: "search".into(),
                description: "Searches.".into(),
                input_schema: r#"{"type":"object"}"#.into(),
                output_schema: r#"{"type":"array"}"#.into(),
            },
        ],
    }
}

/// Clauses: MAN-003 — the signature is Ed25519 by the server identity over
/// `PAE("toolwire/1 manifest", manifest bytes)`, and the bytes are the msgpack named
/// map exactly as signed.
#[test]
fn the_manifest_is_signed_over_the_pae_of_its_bytes() {
    let server = server();
    let manifest = manifest_of(&server);
    let signed = manifest.sign(&server);
    assert_eq!(MANIFEST_DOMAIN, b"toolwire/1 manifest");
    assert_eq!(
        signed.manifest.as_ref(),
        rmp_serde::to_vec_named(&manifest)
            .expect("encodes")
            .as_slice()
    );
    assert_eq!(signed.signature.len(), 64);
    server
        .public_key()
        .verify(
            &pae(&[MANIFEST_DOMAIN, &signed.manifest]),
            &signed.signature,
        )
        .expect("signature over PAE(domain, bytes)");
    // Not over the bare bytes, nor under another domain.
    assert!(server
        .public_key()
        .verify(&signed.manifest, &signed.signature)
        .is_err());
    assert!(server
        .public_key()
        .verify(
            &pae(&[b"toolwire/1 tool", &signed.manifest]),
            &signed.signature
        )
        .is_err());
    assert_eq!(
        Manifest::verify(&signed, &server.public_key()),
        Ok(manifest)
    );
}

/// Clauses: MAN-004 — a client verifies the signature, strictly and under the
/// authenticated server identity, over the bytes as received and before decoding
/// them: altered bytes, another signer, a non-canonical signature and undecodable
/// bytes signed by someone else all fail as a bad signature, not as malformed.
#[test]
fn the_signature_is_verified_over_the_received_bytes_before_decoding() {
    let server = server();
    let signed = manifest_of(&server).sign(&server);

    let mut altered = signed.clone();
    let last = altered.manifest.len() - 1;
    altered.manifest[last] ^= 1;
    assert_eq!(
        Manifest::verify(&altered, &server.public_key()),
        Err(ManifestError::BadSignature)
    );

    let impostor = Identity::from_seed(&[0x66; 32]);
    let by_impostor = manifest_of(&server).sign(&impostor);
    assert_eq!(
        Manifest::verify(&by_impostor, &server.public_key()),
        Err(ManifestError::BadSignature)
    );

    // Garbage that is not a manifest at all, signed by another key: refused for the
    // signature, so the decoder never saw it.
    let garbage = b"\xc1\xc1 not msgpack".to_vec();
    let forged = SignedManifest {
        signature: ByteBuf::from(impostor.sign(&pae(&[MANIFEST_DOMAIN, &garbage])).to_vec()),
        manifest: ByteBuf::from(garbage.clone()),
    };
    assert_eq!(
        Manifest::verify(&forged, &server.public_key()),
        Err(ManifestError::BadSignature)
    );
    // The same garbage correctly signed is refused as malformed.
    let undecodable = SignedManifest {
        signature: ByteBuf::from(server.sign(&pae(&[MANIFEST_DOMAIN, &garbage])).to_vec()),
        manifest: ByteBuf::from(garbage),
    };
    assert_eq!(
        Manifest::verify(&undecodable, &server.public_key()),
        Err(ManifestError::Malformed)
    );

    // S + L: the same signature, non-canonically encoded.
    let mut malleated = signed.clone();
    let mut carry = 0u16;
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    for (byte, add) in malleated.signature[32..].iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(add) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(
        Manifest::verify(&malleated, &server.public_key()),
        Err(ManifestError::BadSignature)
    );
    // A truncated signature.
    let mut short = signed;
    short.signature.truncate(63);
    assert_eq!(
        Manifest::verify(&short, &server.public_key()),
        Err(ManifestError::BadSignature)
    );
}

/// Clauses: MAN-005 — a manifest correctly signed by the authenticated server but
/// naming another server in its `server` field is rejected.
#[test]
fn a_manifest_naming_another_server_is_rejected() {
    let server = server();
    let other = Identity::from_seed(&[0x66; 32]);
    let mut manifest = manifest_of(&server);
    manifest.server = ByteBuf::from(other.public_key().to_bytes().to_vec());
    let signed = manifest.sign(&server);
    assert!(Manifest::verify(&signed, &server.public_key()).is_err());
    manifest.server = ByteBuf::from(vec![0; 31]);
    assert!(Manifest::verify(&manifest.sign(&server), &server.public_key()).is_err());
}

/// Clauses: MAN-007 — the tool digest is SHA-256 of `PAE("toolwire/1 tool", name,
/// description, input_schema, output_schema)`: the known answer of Appendix A.7, and
/// every field (including the name) changes it.
#[test]
fn the_tool_digest_is_sha256_of_the_pae_of_the_four_strings() {
    let tool = echo();
    let expected = "b0ffa934028bd32c56ca606518ae6b090d4ef7edd976399760c2e6767952aff7";
    assert_eq!(hex::encode(tool.digest()), expected);
    let independent: [u8; 32] = Sha256::digest(pae(&[
        TOOL_DOMAIN,
        b"echo",
        b"Echoes its input",
        br#"{"type":"array"}"#,
        b"",
    ]))
    .into();
    assert_eq!(tool.digest(), independent);
    let edits: [fn(&mut ToolDescriptor); 4] = [
        |t| t.name.push('2'),
        |t| t.description.push('.'),
        |t| t.input_schema = r#"{"type":"object"}"#.into(),
        |t| t.output_schema = "{}".into(),
    ];
    for edit in edits {
        let mut changed = echo();
        edit(&mut changed);
        assert_ne!(changed.digest(), tool.digest(), "{changed:?}");
    }
    // The fields are length-prefixed: moving bytes between them changes the digest.
    let mut shifted = echo();
    shifted.name = "echoE".into();
    shifted.description = "choes its input".into();
    assert_ne!(shifted.digest(), tool.digest());
}

/// Clauses: MAN-008 — the manifest hash is SHA-256 of the manifest bytes exactly as
/// signed (not of a re-encoding).
#[test]
fn the_manifest_hash_is_sha256_of_the_signed_bytes() {
    let server = server();
    let signed = manifest_of(&server).sign(&server);
    let expected: [u8; 32] = Sha256::digest(&signed.manifest).into();
    assert_eq!(Manifest::hash(&signed), expected);
    // Bytes with the same meaning but another encoding hash differently.
    let mut reencoded = signed.clone();
    reencoded.manifest =
        ByteBuf::from(rmp_serde::to_vec(&manifest_of(&server)).expect("array encoding"));
    assert_ne!(Manifest::hash(&reencoded), Manifest::hash(&signed));
}

//! Spec section 3, "Identities" (ID): identity keys are RFC 8032 Ed25519 keys,
//! invalid and small-order keys are refused, and the text form is exactly 43
//! unpadded base64url characters with no slack in the last one.

use toolwire_protocol::identity::KeyError;
use toolwire_protocol::{Identity, IdentityKey};

/// RFC 8032 §7.1, TEST 1: secret key, public key, and the signature of the empty
/// message.
const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const RFC8032_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
/// The RFC 8032 public key above in unpadded base64url, computed independently.
const RFC8032_PUBLIC_TEXT: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn bytes32(text: &str) -> [u8; 32] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// Clauses: ID-001 — an identity is an RFC 8032 Ed25519 key pair: the RFC's test
/// secret gives its public key as the identity key and its signature of the empty
/// message, and that signature verifies under the identity key.
#[test]
fn identities_are_rfc_8032_ed25519_key_pairs() {
    let identity = Identity::from_seed(&bytes32(RFC8032_SECRET));
    assert_eq!(identity.public_key().to_bytes(), bytes32(RFC8032_PUBLIC));
    let signature = identity.sign(b"");
    assert_eq!(hex::encode(signature), RFC8032_SIGNATURE);
    assert_eq!(identity.public_key().verify(b"", &signature), Ok(()));
    let generated = Identity::generate(&mut rand_core::OsRng);
    let signature = generated.sign(b"m");
    assert_eq!(generated.public_key().verify(b"m", &signature), Ok(()));
}

/// The eight small-order points of edwards25519 (orders 1, 2, 4, 8), each a valid
/// encoding of a curve point (checked independently).
fn small_order_points() -> Vec<[u8; 32]> {
    [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ]
    .iter()
    .map(|text| bytes32(text))
    .collect()
}

/// Clauses: ID-002 — an identity key that is not 32 bytes, is not a point of the
/// curve, or is one of the eight small-order points is refused.
#[test]
fn invalid_and_small_order_identity_keys_are_refused() {
    for point in small_order_points() {
        assert_eq!(
            IdentityKey::from_bytes(point),
            Err(KeyError::InvalidPoint),
            "{}",
            hex::encode(point)
        );
    }
    // y = 2 has no x on the curve.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        IdentityKey::from_bytes(not_a_point),
        Err(KeyError::InvalidPoint)
    );
    for len in [0usize, 31, 33, 64] {
        assert_eq!(
            IdentityKey::from_slice(&vec![0x5a; len]),
            Err(KeyError::Encoding),
            "{len} bytes"
        );
    }
    assert!(IdentityKey::from_bytes(bytes32(RFC8032_PUBLIC)).is_ok());
}

/// Clauses: ID-006 — the text form of an identity key is its 32 bytes in base64url
/// without padding: exactly 43 characters of the URL-safe alphabet.
#[test]
fn the_text_form_is_43_unpadded_base64url_characters() {
    let key = IdentityKey::from_bytes(bytes32(RFC8032_PUBLIC)).expect("valid");
    assert_eq!(key.to_string(), RFC8032_PUBLIC_TEXT);
    for _ in 0..64 {
        let text = Identity::generate(&mut rand_core::OsRng)
            .public_key()
            .to_string();
        assert_eq!(text.len(), 43, "{text}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{text}"
        );
    }
}

/// Clauses: ID-007 — the parser accepts exactly the 43-character form: shorter or
/// longer text, `=` padding, characters of the standard alphabet and a last
/// character with non-zero unused low bits are refused.
#[test]
fn the_text_parser_refuses_everything_but_the_canonical_form() {
    let valid = RFC8032_PUBLIC_TEXT;
    assert_eq!(
        valid.parse::<IdentityKey>().map(|key| key.to_bytes()),
        Ok(bytes32(RFC8032_PUBLIC))
    );
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = valid.as_bytes()[42];
    let index = ALPHABET
        .iter()
        .position(|c| *c == last)
        .expect("in alphabet");
    assert_eq!(
        index & 3,
        0,
        "the canonical last character has zero low bits"
    );
    let mut refused: Vec<String> = Vec::new();
    for low_bits in 1..4 {
        let mut text = valid.as_bytes().to_vec();
        text[42] = ALPHABET[index | low_bits];
        refused.push(String::from_utf8(text).expect("ASCII"));
    }
    refused.extend([
        valid[..42].to_owned(),
        format!("{valid}A"),
        format!("{valid}="),
        format!("{}=", &valid[..42]),
        valid.replace('_', "/"),
        format!("+{}", &valid[1..]),
        format!(" {}", &valid[1..]),
        String::new(),
    ]);
    for text in refused {
        assert_ne!(text, valid);
        assert!(text.parse::<IdentityKey>().is_err(), "{text:?}");
    }
}

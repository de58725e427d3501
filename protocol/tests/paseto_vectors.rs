//! PASETO v4.public against the official test vectors, the spec's PAE known
//! answers, and strictness checks (tampering, padding, footers, assertions).

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::Value;
use toolwire_protocol::paseto::{
    decode_unverified_v4_public, pae, sign_v4_public, verify_v4_public, PasetoError, MAX_TOKEN_LEN,
};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/paseto-v4.json"
));

fn vectors() -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).expect("vector file is JSON");
    assert_eq!(doc["name"], "PASETO v4 Test Vectors");
    doc["tests"].as_array().expect("tests array").clone()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{}: missing {name}", v["name"]))
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).expect("hex").try_into().expect("32 bytes")
}

/// The key pair of the 4-S vectors; the 4-F vectors that carry no public key
/// are checked against it too (a verifier only ever has a public key).
fn vector_public_key() -> VerifyingKey {
    let s1 = vectors()
        .into_iter()
        .find(|v| v["name"] == "4-S-1")
        .expect("4-S-1 present");
    VerifyingKey::from_bytes(&hex32(field(&s1, "public-key"))).expect("valid key")
}

#[test]
fn sign_vectors_verify_and_reproduce() {
    let mut count = 0;
    for v in vectors()
        .iter()
        .filter(|v| field(v, "name").starts_with("4-S-"))
    {
        let name = field(v, "name");
        assert_eq!(v["expect-fail"], false, "{name}");
        let pk = VerifyingKey::from_bytes(&hex32(field(v, "public-key"))).expect("pk");
        // `secret-key` is the 64-byte seed || public key form; from_keypair_bytes
        // also checks that the two halves belong together.
        let sk_bytes: [u8; 64] = hex::decode(field(v, "secret-key"))
            .expect("hex")
            .try_into()
            .expect("64 bytes");
        let sk = SigningKey::from_keypair_bytes(&sk_bytes).expect("consistent keypair");
        let seed = SigningKey::from_bytes(&hex32(field(v, "secret-key-seed")));
        assert_eq!(sk.to_bytes(), seed.to_bytes(), "{name}: seed");
        assert_eq!(sk.verifying_key(), pk, "{name}: public key");

        let token = field(v, "token");
        let payload = field(v, "payload").as_bytes();
        let footer = field(v, "footer").as_bytes();
        let ia = field(v, "implicit-assertion").as_bytes();

        let verified = verify_v4_public(&pk, token, None, ia).expect(name);
        assert_eq!(verified.message, payload, "{name}: payload");
        assert_eq!(verified.footer, footer, "{name}: footer");
        let verified = verify_v4_public(&pk, token, Some(footer), ia).expect(name);
        assert_eq!(verified.message, payload, "{name}: payload");

        let (m, f) = decode_unverified_v4_public(token).expect(name);
        assert_eq!((m.as_slice(), f.as_slice()), (payload, footer), "{name}");

        // Ed25519 is deterministic, so signing must reproduce the token byte for byte.
        assert_eq!(
            sign_v4_public(&sk, payload, footer, ia),
            token,
            "{name}: re-sign"
        );
        count += 1;
    }
    assert_eq!(count, 3);
}

#[test]
fn failure_vectors_rejected() {
    let pk = vector_public_key();
    let mut count = 0;
    for v in vectors()
        .iter()
        .filter(|v| field(v, "name").starts_with("4-F-"))
    {
        let name = field(v, "name");
        assert_eq!(v["expect-fail"], true, "{name}");
        assert!(v["payload"].is_null(), "{name}");
        let key = match v["public-key"].as_str() {
            Some(hex_pk) => VerifyingKey::from_bytes(&hex32(hex_pk)).expect("pk"),
            None => pk,
        };
        let token = field(v, "token");
        let footer = field(v, "footer").as_bytes();
        let ia = field(v, "implicit-assertion").as_bytes();

        let expected = if token.starts_with("v4.public.") {
            // 4-F-2: a v4.public token "signed" with a v4.local (symmetric) key.
            PasetoError::BadSignature
        } else {
            // v4.local / v3.local tokens, including 4-F-5's padded one: the
            // header is checked before anything is decoded.
            PasetoError::WrongPurpose
        };
        for expected_footer in [None, Some(footer)] {
            assert_eq!(
                verify_v4_public(&key, token, expected_footer, ia),
                Err(expected.clone()),
                "{name}"
            );
        }
        if expected == PasetoError::WrongPurpose {
            assert_eq!(decode_unverified_v4_public(token), Err(expected), "{name}");
        }

        // 4-F-2 also carries the symmetric key: if those bytes happen to decode
        // as an Ed25519 point, using them as a public key must fail as well.
        if let Some(local_key) = v["key"].as_str() {
            if let Ok(k) = VerifyingKey::from_bytes(&hex32(local_key)) {
                assert!(verify_v4_public(&k, token, None, ia).is_err(), "{name}");
            }
        }
        count += 1;
    }
    assert_eq!(count, 5);
}

/// The 4-E vectors are v4.local (symmetric encryption), which toolwire does
/// not implement on purpose: only v4.public is used. They are skipped, except
/// to confirm the v4.public verifier refuses them as the wrong purpose.
#[test]
fn local_vectors_skipped_on_purpose() {
    let pk = vector_public_key();
    let mut count = 0;
    for v in vectors()
        .iter()
        .filter(|v| field(v, "name").starts_with("4-E-"))
    {
        let token = field(v, "token");
        assert!(token.starts_with("v4.local."));
        assert_eq!(
            verify_v4_public(&pk, token, None, b""),
            Err(PasetoError::WrongPurpose)
        );
        count += 1;
    }
    assert_eq!(count, 9);
}

#[test]
fn no_unknown_vector_kinds() {
    for v in vectors() {
        let name = field(&v, "name");
        assert!(
            ["4-S-", "4-F-", "4-E-"].iter().any(|p| name.starts_with(p)),
            "unhandled vector {name}"
        );
    }
}

#[test]
fn pae_known_answers() {
    // From the PASETO spec, Common.md "PAE Definition".
    assert_eq!(pae(&[]), b"\x00\x00\x00\x00\x00\x00\x00\x00");
    assert_eq!(
        pae(&[b""]),
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    );
    assert_eq!(
        pae(&[b"test"]),
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00test"
    );
    // Piece boundaries are unambiguous.
    assert_ne!(pae(&[b"ab", b"c"]), pae(&[b"a", b"bc"]));
}

fn test_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// Replaces the character at byte index `i` (ASCII tokens only).
fn substitute(token: &str, i: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

/// Clauses: GRT-007, GRT-008 — a wrong header or an extra segment is refused.
#[test]
fn tampering_with_any_segment_is_rejected() {
    let sk = test_key();
    let pk = sk.verifying_key();
    let token = sign_v4_public(&sk, b"{\"hello\":\"world\"}", b"kid-1", b"ia");
    assert!(verify_v4_public(&pk, &token, Some(b"kid-1"), b"ia").is_ok());

    let dots: Vec<usize> = token.match_indices('.').map(|(i, _)| i).collect();
    assert_eq!(dots.len(), 3);

    // Header.
    for bad in [
        "v3.public.",
        "v4.Public.",
        "v4.local.",
        "v4.publi.",
        "v4.public",
    ] {
        let t = format!("{bad}{}", &token["v4.public.".len()..]);
        assert!(verify_v4_public(&pk, &t, None, b"ia").is_err(), "{t}");
    }
    assert_eq!(
        verify_v4_public(
            &pk,
            &token.replacen("v4.public.", "v4.local.", 1),
            None,
            b"ia"
        ),
        Err(PasetoError::WrongPurpose)
    );

    // Message part of the payload (first character).
    let t = substitute(&token, dots[1] + 1);
    assert_eq!(
        verify_v4_public(&pk, &t, None, b"ia"),
        Err(PasetoError::BadSignature)
    );
    // Signature part of the payload (a character in the middle of the last 64 bytes).
    let t = substitute(&token, dots[2] - 20);
    assert_eq!(
        verify_v4_public(&pk, &t, None, b"ia"),
        Err(PasetoError::BadSignature)
    );
    // Footer: authenticated even when the caller accepts any footer.
    let t = substitute(&token, dots[2] + 1);
    assert_eq!(
        verify_v4_public(&pk, &t, None, b"ia"),
        Err(PasetoError::BadSignature)
    );
    assert_eq!(
        verify_v4_public(&pk, &t, Some(b"kid-1"), b"ia"),
        Err(PasetoError::FooterMismatch)
    );
    // Dropping the footer segment.
    assert_eq!(
        verify_v4_public(&pk, &token[..dots[2]], None, b"ia"),
        Err(PasetoError::BadSignature)
    );
    // Extra segment.
    assert_eq!(
        verify_v4_public(&pk, &format!("{token}.AAAA"), None, b"ia"),
        Err(PasetoError::Malformed)
    );
    // Another key.
    let other = SigningKey::from_bytes(&[0x43; 32]).verifying_key();
    assert_eq!(
        verify_v4_public(&other, &token, None, b"ia"),
        Err(PasetoError::BadSignature)
    );
}

/// Clauses: GRT-009 — padding, foreign characters and non-zero trailing bits are
/// refused.
#[test]
fn padded_or_non_canonical_base64_rejected() {
    let sk = test_key();
    let pk = sk.verifying_key();
    // 1 + 64 = 65 bytes: 65 % 3 == 2, so the payload has 87 characters, the
    // last one carrying 2 unused bits, and a padded form would need one '='.
    let token = sign_v4_public(&sk, b"x", b"", b"");
    assert!(verify_v4_public(&pk, &token, None, b"").is_ok());
    assert_eq!(token.len(), "v4.public.".len() + 87);

    assert_eq!(
        verify_v4_public(&pk, &format!("{token}="), None, b""),
        Err(PasetoError::Malformed)
    );
    assert_eq!(
        decode_unverified_v4_public(&format!("{token}=")),
        Err(PasetoError::Malformed)
    );

    // Set a trailing (unused) bit in the last character: same bytes, other spelling.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *token.as_bytes().last().expect("non-empty");
    let idx = alphabet.iter().position(|&c| c == last).expect("b64 char");
    assert_eq!(idx & 0b11, 0, "canonical encoding has zero trailing bits");
    let mut bad = token.clone();
    bad.pop();
    bad.push(char::from(alphabet[idx | 1]));
    assert_eq!(
        verify_v4_public(&pk, &bad, None, b""),
        Err(PasetoError::Malformed)
    );

    // Padded footer.
    let with_footer = sign_v4_public(&sk, b"x", b"ab", b"");
    assert!(verify_v4_public(&pk, &with_footer, Some(b"ab"), b"").is_ok());
    assert_eq!(
        verify_v4_public(&pk, &format!("{with_footer}="), None, b""),
        Err(PasetoError::Malformed)
    );
    // Standard (non-URL) alphabet characters.
    let t = token.replacen('-', "+", 1).replacen('_', "/", 1);
    if t != token {
        assert_eq!(
            verify_v4_public(&pk, &t, None, b""),
            Err(PasetoError::Malformed)
        );
    }
}

/// Clauses: GRT-002 — the implicit assertion is signed.
#[test]
fn implicit_assertion_is_bound() {
    let sk = test_key();
    let pk = sk.verifying_key();
    let token = sign_v4_public(&sk, b"msg", b"", b"context A");
    assert!(verify_v4_public(&pk, &token, None, b"context A").is_ok());
    assert_eq!(
        verify_v4_public(&pk, &token, None, b"context B"),
        Err(PasetoError::BadSignature)
    );
    assert_eq!(
        verify_v4_public(&pk, &token, None, b""),
        Err(PasetoError::BadSignature)
    );
}

#[test]
fn footer_expectation() {
    let sk = test_key();
    let pk = sk.verifying_key();
    let token = sign_v4_public(&sk, b"msg", b"f1", b"");
    assert_eq!(
        verify_v4_public(&pk, &token, Some(b"f2"), b""),
        Err(PasetoError::FooterMismatch)
    );
    assert_eq!(
        verify_v4_public(&pk, &token, Some(b""), b""),
        Err(PasetoError::FooterMismatch)
    );
    let verified = verify_v4_public(&pk, &token, None, b"").expect("any footer");
    assert_eq!(verified.footer, b"f1");

    let no_footer = sign_v4_public(&sk, b"msg", b"", b"");
    assert_eq!(no_footer.matches('.').count(), 2);
    assert!(verify_v4_public(&pk, &no_footer, Some(b""), b"").is_ok());
    assert_eq!(
        verify_v4_public(&pk, &no_footer, Some(b"f1"), b""),
        Err(PasetoError::FooterMismatch)
    );
}

/// Clauses: GRT-006, GRT-010 — over 8192 bytes, or under 64 payload bytes, is
/// malformed.
#[test]
fn size_cap_and_short_payloads() {
    let sk = test_key();
    let pk = sk.verifying_key();
    // Largest message that still fits: header 10 chars + ceil(4 * (m + 64) / 3) chars.
    let fits = vec![b'a'; 6000];
    let token = sign_v4_public(&sk, &fits, b"", b"");
    assert!(token.len() <= MAX_TOKEN_LEN);
    assert!(verify_v4_public(&pk, &token, None, b"").is_ok());

    let too_big = vec![b'a'; 6100];
    let token = sign_v4_public(&sk, &too_big, b"", b"");
    assert!(token.len() > MAX_TOKEN_LEN);
    assert_eq!(
        verify_v4_public(&pk, &token, None, b""),
        Err(PasetoError::Malformed)
    );
    assert_eq!(
        decode_unverified_v4_public(&token),
        Err(PasetoError::Malformed)
    );

    // Empty message is legal; fewer than 64 payload bytes is not.
    let empty = sign_v4_public(&sk, b"", b"", b"");
    assert_eq!(
        verify_v4_public(&pk, &empty, None, b"")
            .expect("empty")
            .message,
        b""
    );
    let short = &empty[..empty.len() - 4];
    assert_eq!(
        verify_v4_public(&pk, short, None, b""),
        Err(PasetoError::Malformed)
    );
}

#[test]
fn garbage_is_rejected_without_panicking() {
    let pk = test_key().verifying_key();
    for g in [
        "",
        ".",
        "..",
        "...",
        "v4",
        "v4.public",
        "v4.public.",
        "v4.public..",
        "v4.public.....",
        "v4.public.é",
        "v4.public.A",
        "v4.public.AAAA",
        "v4.public.AAAA.",
        "\u{0}\u{0}.\u{0}.\u{0}",
    ] {
        assert!(verify_v4_public(&pk, g, None, b"").is_err(), "{g:?}");
        assert!(decode_unverified_v4_public(g).is_err(), "{g:?}");
    }
}

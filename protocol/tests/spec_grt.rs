//! Capability grants (spec section 12): the token format as issued, the structural
//! checks of rule 1 that `grants.rs` does not single out, the order of rules 2 and 3,
//! strict signature verification, and the cap on grants verified per presentation.

use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use std::sync::Arc;
use time::macros::datetime;
use time::OffsetDateTime;
use toolwire_protocol::grant::{
    key_to_text, verify_grant, GrantBuilder, GrantError, VerifyContext, GRANT_IMPLICIT_ASSERTION,
};
use toolwire_protocol::handshake::{verify_presented_grants, MAX_PRESENTED_GRANTS};
use toolwire_protocol::paseto::{
    decode_unverified_v4_public, pae, verify_v4_public, MAX_TOKEN_LEN,
};
use toolwire_protocol::{Identity, ServerConfig};

/// 2025-01-01T00:00:00Z.
const NOW: i64 = 1_735_689_600;
const EXP: OffsetDateTime = datetime!(2025-01-01 01:00 UTC);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

const ISSUER: u8 = 1;
const CLIENT: u8 = 2;
const SERVER: u8 = 3;
const OTHER: u8 = 4;
const AGENT_A: u8 = 5;
const AGENT_B: u8 = 6;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(seed: u8) -> [u8; 32] {
    key(seed).verifying_key().to_bytes()
}

fn ctx(holder: [u8; 32], trusted: &[[u8; 32]]) -> VerifyContext<'_> {
    VerifyContext {
        trusted_issuers: trusted,
        audience: public(SERVER),
        holder,
        now_unix: NOW,
        session_id: None,
        max_clock_skew_secs: 0,
    }
}

fn root(holder: u8) -> String {
    GrantBuilder::new(public(holder), public(SERVER), "root", EXP)
        .tools(["search", "fetch"])
        .sign(&key(ISSUER))
        .expect("root signs")
}

fn link(parent: &str, holder: u8, id: &str) -> GrantBuilder {
    GrantBuilder::new(public(holder), public(SERVER), id, EXP)
        .tools(["search"])
        .delegate_from(parent)
}

/// Flips one character of the signature part of `token` (its payload's last 64
/// bytes), keeping it valid base64url.
fn tamper_signature(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

/// Clauses: GRT-001, GRT-002, GRT-003 — an issued grant is `v4.public.` plus one
/// payload segment (no footer segment), its message is the JSON claims object with
/// `iss` the signer's key text, and it verifies under exactly the implicit assertion
/// `toolwire/1 grant`.
#[test]
fn an_issued_grant_is_a_footerless_v4_public_token_over_the_json_claims() {
    let token = root(CLIENT);
    assert!(token.starts_with("v4.public."));
    assert_eq!(token.split('.').count(), 3, "no footer segment: {token}");
    let (message, footer) = decode_unverified_v4_public(&token).expect("decodes");
    assert!(footer.is_empty());
    let claims: serde_json::Value = serde_json::from_slice(&message).expect("JSON");
    let claims = claims.as_object().expect("a JSON object");
    for required in ["iss", "sub", "aud", "jti", "exp", "tools"] {
        assert!(claims.contains_key(required), "{required} missing");
    }
    assert_eq!(claims["iss"], key_to_text(&public(ISSUER)));
    assert_eq!(claims["sub"], key_to_text(&public(CLIENT)));

    let issuer = key(ISSUER).verifying_key();
    let verified =
        verify_v4_public(&issuer, &token, Some(b""), GRANT_IMPLICIT_ASSERTION).expect("verifies");
    assert_eq!(verified.message, message);
    for other in [&b""[..], b"toolwire/1 grant ", b"toolwire/1 request"] {
        assert!(verify_v4_public(&issuer, &token, Some(b""), other).is_err());
    }
    // The signature is Ed25519 over the PAE of the v4.public pieces, footer empty.
    let payload = B64
        .decode(&token["v4.public.".len()..])
        .expect("canonical base64url");
    let (signed, signature) = payload.split_at(payload.len() - 64);
    let signature = Signature::from_slice(signature).expect("64 bytes");
    issuer
        .verify_strict(
            &pae(&[b"v4.public.", signed, b"", GRANT_IMPLICIT_ASSERTION]),
            &signature,
        )
        .expect("signature over PAE(h, m, f, i)");
}

/// Clauses: GRT-004 — a delegation whose embedded chain pushes it past 8192 bytes is
/// not issued, although every token above it fits.
#[test]
fn an_issuer_refuses_a_link_that_would_exceed_the_size_cap_with_its_parents() {
    let tools: Vec<String> = (0..300).map(|i| format!("tool-{i:04}")).collect();
    let parent = GrantBuilder::new(public(CLIENT), public(SERVER), "root", EXP)
        .tools(tools.clone())
        .sign(&key(ISSUER))
        .expect("the parent fits");
    assert!(parent.len() <= MAX_TOKEN_LEN && parent.len() > MAX_TOKEN_LEN / 2);
    let child = GrantBuilder::new(public(AGENT_A), public(SERVER), "link", EXP)
        .tools(tools)
        .delegate_from(&parent)
        .sign(&key(CLIENT));
    assert_eq!(child, Err(GrantError::Malformed("token")));
}

/// Clauses: GRT-007 — anything but exactly `v4` and `public` as the first two
/// segments is malformed, whatever follows.
#[test]
fn the_first_two_segments_must_be_exactly_v4_and_public() {
    let token = root(CLIENT);
    let trusted = [public(ISSUER)];
    let context = ctx(public(CLIENT), &trusted);
    assert!(verify_grant(&token, &context).is_ok());
    let body = &token["v4.public.".len()..];
    for header in [
        "v3.public.",
        "V4.public.",
        "v4.Public.",
        "v4.local.",
        "v4.secret.",
    ] {
        assert_eq!(
            verify_grant(&format!("{header}{body}"), &context),
            Err(GrantError::Malformed("purpose")),
            "{header}"
        );
    }
    for header in [".public.", "v4..", "v4public.", ""] {
        assert!(
            matches!(
                verify_grant(&format!("{header}{body}"), &context),
                Err(GrantError::Malformed(_))
            ),
            "{header}"
        );
    }
}

/// Clauses: GRT-008, GRT-011 — fewer than three or more than four segments, or a
/// present but empty fourth segment, is malformed; so is a non-empty footer.
#[test]
fn segment_count_and_footer_segment_are_checked() {
    let token = root(CLIENT);
    let trusted = [public(ISSUER)];
    let context = ctx(public(CLIENT), &trusted);
    let body = &token["v4.public.".len()..];
    for malformed in [
        format!("v4.public{body}"),
        "v4.public".to_owned(),
        format!("{token}."),
        format!("{token}.AAAA.AAAA"),
        format!("{token}.."),
    ] {
        assert!(
            matches!(
                verify_grant(&malformed, &context),
                Err(GrantError::Malformed(_))
            ),
            "{malformed}"
        );
    }
    // A fourth segment with content: a footer, which a grant may not carry.
    assert_eq!(
        verify_grant(&format!("{token}.{}", B64.encode(b"kid")), &context),
        Err(GrantError::Malformed("footer"))
    );
}

/// Clauses: GRT-009, GRT-010 — non-canonical base64url (padding, foreign
/// characters, non-zero trailing bits) and payloads shorter than a signature are
/// malformed, checked before any signature work.
#[test]
fn payloads_must_be_canonical_base64url_and_hold_a_signature() {
    let token = root(CLIENT);
    let trusted = [public(ISSUER)];
    let context = ctx(public(CLIENT), &trusted);
    let body = &token["v4.public.".len()..];
    let payload = B64.decode(body).expect("decodes");
    let padded = base64::engine::general_purpose::URL_SAFE.encode(&payload);
    let standard = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&payload);
    let mut cases = vec![
        format!("v4.public.{body}="),
        format!("v4.public.{body} "),
        format!("v4.public.{}*{}", &body[..4], &body[5..]),
    ];
    if padded != body {
        cases.push(format!("v4.public.{padded}"));
    }
    if standard != body {
        cases.push(format!("v4.public.{standard}"));
    }
    // Same bytes, other spelling: set an unused trailing bit when there is one.
    if !payload.len().is_multiple_of(3) {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *body.as_bytes().last().expect("non-empty");
        let index = alphabet.iter().position(|&c| c == last).expect("alphabet");
        let mut spelled = body[..body.len() - 1].to_owned();
        spelled.push(char::from(alphabet[index | 1]));
        cases.push(format!("v4.public.{spelled}"));
    }
    for malformed in &cases {
        assert!(
            matches!(
                verify_grant(malformed, &context),
                Err(GrantError::Malformed(_))
            ),
            "{malformed}"
        );
    }
    // 63 payload bytes: shorter than the signature alone.
    let short = format!("v4.public.{}", B64.encode([0x7b; 63]));
    assert_eq!(
        verify_grant(&short, &context),
        Err(GrantError::Malformed("token"))
    );
    // 64 bytes: an empty message, which is then not a claims object.
    let empty = format!("v4.public.{}", B64.encode([0x7b; 64]));
    assert_eq!(
        verify_grant(&empty, &context),
        Err(GrantError::Malformed("claims"))
    );
}

/// Clauses: GRT-022 — signatures are verified strictly: a link "signed" by a
/// small-order key (whose forged signature satisfies the cofactored equation for any
/// message) is a bad signature, and so is a signature whose S is not reduced.
#[test]
fn grant_signatures_are_verified_strictly() {
    // A root granting to the identity point (encoded 01 00..00): a weak key.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let weak_root = GrantBuilder::new(identity_point, public(SERVER), "root", EXP)
        .tools(["search"])
        .sign(&key(ISSUER))
        .expect("signs");
    // The "holder" of the weak key delegates to AGENT_A with a forged signature:
    // R = identity, S = 0.
    let claims = serde_json::json!({
        "iss": key_to_text(&identity_point),
        "sub": key_to_text(&public(AGENT_A)),
        "aud": key_to_text(&public(SERVER)),
        "jti": "forged",
        "exp": "2025-01-01T01:00:00Z",
        "tools": ["search"],
        "parent": weak_root,
    })
    .to_string();
    let mut forged_signature = [0u8; 64];
    forged_signature[0] = 1;
    let mut payload = claims.clone().into_bytes();
    payload.extend_from_slice(&forged_signature);
    let forged = format!("v4.public.{}", B64.encode(&payload));
    let trusted = [public(ISSUER)];
    assert_eq!(
        verify_grant(&forged, &ctx(public(AGENT_A), &trusted)),
        Err(GrantError::BadSignature)
    );
    // The forgery is exactly what only strict verification catches.
    let weak = VerifyingKey::from_bytes(&identity_point).expect("a curve point");
    let message = pae(&[
        b"v4.public.",
        claims.as_bytes(),
        b"",
        GRANT_IMPLICIT_ASSERTION,
    ]);
    let signature = Signature::from_bytes(&forged_signature);
    assert!(weak.verify_strict(&message, &signature).is_err());
    assert!(
        ed25519_dalek::Verifier::verify(&weak, &message, &signature).is_ok(),
        "the forgery passes non-strict verification"
    );

    // S + L: the same signature in a non-canonical encoding.
    let token = root(CLIENT);
    let mut payload = B64.decode(&token["v4.public.".len()..]).expect("decodes");
    let s_start = payload.len() - 32;
    add_group_order(&mut payload[s_start..]);
    let malleated = format!("v4.public.{}", B64.encode(&payload));
    assert_eq!(
        verify_grant(&malleated, &ctx(public(CLIENT), &trusted)),
        Err(GrantError::BadSignature)
    );
}

/// Adds the Ed25519 group order L to the little-endian scalar `s` (which stays below
/// 2^256 since s < L < 2^253).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (byte, add) in s.iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(add) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
}

/// Clauses: GRT-023, GRT-020, GRT-021 — tokens are processed root first, each one's
/// issuer before its signature, and a token completely before the next: the first
/// failure in that order decides.
#[test]
fn issuers_and_signatures_are_checked_root_first_one_token_at_a_time() {
    let trusted = [public(ISSUER)];
    let good_root = root(CLIENT);

    // Root signature bad, link broken: the root's signature fails first.
    let bad_root = tamper_signature(&good_root);
    let broken_link = link(&bad_root, AGENT_A, "l1")
        .sign(&key(OTHER))
        .expect("signs");
    assert_eq!(
        verify_grant(&broken_link, &ctx(public(AGENT_A), &trusted)),
        Err(GrantError::BadSignature)
    );
    // Root untrusted and its signature bad: the issuer is checked first.
    let untrusted = [public(OTHER)];
    assert_eq!(
        verify_grant(&broken_link, &ctx(public(AGENT_A), &untrusted)),
        Err(GrantError::UntrustedIssuer)
    );
    // Root fine; the link names an issuer other than the root's holder and its
    // signature does not verify under that issuer either: broken chain first.
    let claims = serde_json::json!({
        "iss": key_to_text(&public(OTHER)),
        "sub": key_to_text(&public(AGENT_A)),
        "aud": key_to_text(&public(SERVER)),
        "jti": "l1",
        "exp": "2025-01-01T01:00:00Z",
        "tools": ["search"],
        "parent": good_root,
    })
    .to_string();
    let misattributed = toolwire_protocol::paseto::sign_v4_public(
        &key(AGENT_B),
        claims.as_bytes(),
        b"",
        GRANT_IMPLICIT_ASSERTION,
    );
    assert_eq!(
        verify_grant(&misattributed, &ctx(public(AGENT_A), &trusted)),
        Err(GrantError::BrokenChain)
    );
    // Root fine, first link's signature bad, second link broken: the first link
    // fails before the second is looked at.
    let first = tamper_signature(
        &link(&good_root, AGENT_A, "l1")
            .sign(&key(CLIENT))
            .expect("signs"),
    );
    let second = link(&first, AGENT_B, "l2")
        .sign(&key(OTHER))
        .expect("signs");
    assert_eq!(
        verify_grant(&second, &ctx(public(AGENT_B), &trusted)),
        Err(GrantError::BadSignature)
    );
    // Control: signed by the right holders, the same chain verifies.
    let first = link(&good_root, AGENT_A, "l1")
        .sign(&key(CLIENT))
        .expect("signs");
    let second = link(&first, AGENT_B, "l2")
        .sign(&key(AGENT_A))
        .expect("signs");
    let grant = verify_grant(&second, &ctx(public(AGENT_B), &trusted)).expect("valid chain");
    assert_eq!(grant.chain_ids, ["root", "l1", "l2"]);
}

/// Clauses: GRT-038 — of the grants presented at once, only the first 8 are
/// verified; the others are disregarded, valid or not.
#[test]
fn only_the_first_eight_presented_grants_are_verified() {
    let mut rng = rand_core::OsRng;
    let server = Identity::from_seed(&[SERVER; 32]);
    let issuer = Identity::from_seed(&[ISSUER; 32]);
    let client = Identity::from_seed(&[CLIENT; 32]);
    let config = Arc::new(
        ServerConfig::new(server.clone(), "wss://tools.example/toolwire", &mut rng)
            .trust_grant_issuers([issuer.public_key()]),
    );
    let session_id = [0x5e; 32];
    let valid = |id: &str| {
        GrantBuilder::new(
            client.public_key().to_bytes(),
            server.public_key().to_bytes(),
            id,
            EXP,
        )
        .tools(["search"])
        .sign(issuer.signing_key())
        .expect("signs")
    };
    assert_eq!(MAX_PRESENTED_GRANTS, 8);
    // Eight invalid grants, then a valid one: nothing verifies.
    let mut tokens: Vec<String> = (0..8).map(|i| format!("garbage-{i}")).collect();
    tokens.push(valid("ninth"));
    let (grants, rejected) =
        verify_presented_grants(&config, &tokens, client.public_key(), session_id, NOW);
    assert!(grants.is_empty());
    assert_eq!(
        rejected.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    // Ten valid grants: the first eight count.
    let tokens: Vec<String> = (0..10).map(|i| valid(&format!("g-{i}"))).collect();
    let (grants, rejected) =
        verify_presented_grants(&config, &tokens, client.public_key(), session_id, NOW);
    assert!(rejected.is_empty());
    assert_eq!(
        grants
            .iter()
            .map(|grant| grant.id.as_str())
            .collect::<Vec<_>>(),
        ["g-0", "g-1", "g-2", "g-3", "g-4", "g-5", "g-6", "g-7"]
    );
}

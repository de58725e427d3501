//! Toolwire capability grants: issuance, verification rules, delegation
//! chains, and robustness against malformed input.

use ed25519_dalek::SigningKey;
use time::macros::datetime;
use time::OffsetDateTime;
use toolwire_protocol::grant::{
    key_from_text, key_to_text, verify_grant, Grant, GrantBuilder, GrantError, VerifyContext,
    GRANT_IMPLICIT_ASSERTION, MAX_DELEGATION_DEPTH,
};
use toolwire_protocol::paseto::{decode_unverified_v4_public, sign_v4_public};

/// 2025-01-01T00:00:00Z, the "now" of every test.
const NOW: i64 = 1_735_689_600;
const EXP: OffsetDateTime = datetime!(2025-01-01 01:00 UTC);
const SESSION: [u8; 32] = [0x5e; 32];

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}
fn public(seed: u8) -> [u8; 32] {
    key(seed).verifying_key().to_bytes()
}

// Fixed identities.
const ISSUER: u8 = 1;
const CLIENT: u8 = 2;
const SERVER: u8 = 3;
const OTHER: u8 = 4;
const AGENT_A: u8 = 5;
const AGENT_B: u8 = 6;
const AGENT_C: u8 = 7;
const AGENT_D: u8 = 8;

/// A context where ISSUER is trusted, SERVER verifies, `holder` presents, and
/// no session is active.
fn ctx_for(holder: u8) -> VerifyContext<'static> {
    static TRUSTED: std::sync::OnceLock<[[u8; 32]; 1]> = std::sync::OnceLock::new();
    VerifyContext {
        trusted_issuers: TRUSTED.get_or_init(|| [public(ISSUER)]),
        audience: public(SERVER),
        holder: public(holder),
        now_unix: NOW,
        session_id: None,
        max_clock_skew_secs: 0,
    }
}

fn builder(holder: u8, id: &str) -> GrantBuilder {
    GrantBuilder::new(public(holder), public(SERVER), id, EXP)
        .tools(["search", "fetch"])
        .scope(["read", "write"])
}

fn root_for(holder: u8) -> String {
    builder(holder, "root")
        .sign(&key(ISSUER))
        .expect("sign root")
}

/// Signs arbitrary claims JSON as a grant token (for malformed-claims tests).
fn sign_raw(signer: u8, claims: &str) -> String {
    sign_v4_public(
        &key(signer),
        claims.as_bytes(),
        b"",
        GRANT_IMPLICIT_ASSERTION,
    )
}

fn claims_json(token: &str) -> serde_json::Value {
    let (m, _) = decode_unverified_v4_public(token).expect("decode");
    serde_json::from_slice(&m).expect("json")
}

#[test]
fn key_text_round_trip() {
    let k = public(ISSUER);
    let text = key_to_text(&k);
    assert_eq!(text.len(), 43);
    assert_eq!(key_from_text(&text), Ok(k));
    assert!(key_from_text(&format!("{text}=")).is_err());
    assert!(key_from_text(&text[..42]).is_err());
    assert!(key_from_text("").is_err());
    // Non-zero trailing bits: same bytes, non-canonical spelling.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = text.chars().last().expect("non-empty");
    let idx = alphabet.find(last).expect("b64");
    let mut bad = text[..42].to_owned();
    bad.push(alphabet.as_bytes()[idx ^ 1] as char);
    assert!(matches!(key_from_text(&bad), Err(GrantError::Malformed(_))));
}

/// Clauses: GRT-001, GRT-003, GRT-033 — an issued grant verifies to its effective
/// rights; iss is the signer's key text.
#[test]
fn valid_grant() {
    let token = builder(CLIENT, "g-1")
        .issued_at(datetime!(2024-12-31 23:00 UTC))
        .not_before(datetime!(2024-12-31 23:30 UTC))
        .sign(&key(ISSUER))
        .expect("sign");
    let grant = verify_grant(&token, &ctx_for(CLIENT)).expect("valid");
    assert_eq!(
        grant,
        Grant {
            id: "g-1".into(),
            root_issuer: public(ISSUER),
            holder: public(CLIENT),
            audience: public(SERVER),
            tools: vec!["search".into(), "fetch".into()],
            scope: vec!["read".into(), "write".into()],
            expires_at_unix: NOW + 3600,
            session: None,
            chain_ids: vec!["g-1".into()],
        }
    );
    assert!(grant.allows_tool("search"));
    assert!(!grant.allows_tool("delete"));
    assert!(grant.has_scope("read"));
    assert!(!grant.has_scope("admin"));

    let claims = claims_json(&token);
    assert_eq!(claims["iss"], key_to_text(&public(ISSUER)));
    assert_eq!(claims["exp"], "2025-01-01T01:00:00Z");
    assert!(claims.get("parent").is_none());
}

#[test]
fn wildcard_tool() {
    let token = builder(CLIENT, "g")
        .tools(["*"])
        .sign(&key(ISSUER))
        .expect("sign");
    let grant = verify_grant(&token, &ctx_for(CLIENT)).expect("valid");
    assert!(grant.allows_tool("anything"));
}

/// Clauses: GRT-025, GRT-026 — exp is exclusive and nbf inclusive, with the skew.
#[test]
fn expiry_and_not_before() {
    let token = builder(CLIENT, "g").sign(&key(ISSUER)).expect("sign");
    let mut ctx = ctx_for(CLIENT);
    ctx.now_unix = NOW + 3599;
    assert!(verify_grant(&token, &ctx).is_ok());
    // `exp` is exclusive.
    ctx.now_unix = NOW + 3600;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::Expired));
    ctx.max_clock_skew_secs = 1;
    assert!(verify_grant(&token, &ctx).is_ok());
    ctx.now_unix = NOW + 3601;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::Expired));
    // Negative skew counts as zero.
    ctx.now_unix = NOW + 3600;
    ctx.max_clock_skew_secs = -100;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::Expired));

    let later = builder(CLIENT, "g")
        .not_before(datetime!(2025-01-01 00:10 UTC))
        .sign(&key(ISSUER))
        .expect("sign");
    let mut ctx = ctx_for(CLIENT);
    assert_eq!(verify_grant(&later, &ctx), Err(GrantError::NotYetValid));
    ctx.max_clock_skew_secs = 600;
    assert!(verify_grant(&later, &ctx).is_ok());
    ctx.max_clock_skew_secs = 0;
    ctx.now_unix = NOW + 600;
    assert!(verify_grant(&later, &ctx).is_ok());
}

/// Clauses: GRT-025 — expiry is compared with sub-second precision.
#[test]
fn sub_second_timestamps_are_compared_precisely() {
    let exp = "2025-01-01T00:00:00.5Z";
    let claims = format!(
        r#"{{"iss":"{}","sub":"{}","aud":"{}","jti":"g","exp":"{exp}","tools":["t"]}}"#,
        key_to_text(&public(ISSUER)),
        key_to_text(&public(CLIENT)),
        key_to_text(&public(SERVER)),
    );
    let token = sign_raw(ISSUER, &claims);
    let grant = verify_grant(&token, &ctx_for(CLIENT)).expect("valid for half a second");
    assert_eq!(grant.expires_at_unix, NOW);
    let mut ctx = ctx_for(CLIENT);
    ctx.now_unix = NOW + 1;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::Expired));
}

/// Clauses: GRT-020, GRT-024, GRT-031 — wrong audience, wrong holder, untrusted issuer.
#[test]
fn wrong_audience_holder_issuer() {
    let token = root_for(CLIENT);

    let mut ctx = ctx_for(CLIENT);
    ctx.audience = public(OTHER);
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::WrongAudience));

    assert_eq!(
        verify_grant(&token, &ctx_for(OTHER)),
        Err(GrantError::WrongHolder)
    );

    let trusted = [public(OTHER)];
    let mut ctx = ctx_for(CLIENT);
    ctx.trusted_issuers = &trusted;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::UntrustedIssuer));
    ctx.trusted_issuers = &[];
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::UntrustedIssuer));

    // Self-issued by an untrusted key.
    let self_issued = builder(CLIENT, "g").sign(&key(CLIENT)).expect("sign");
    assert_eq!(
        verify_grant(&self_issued, &ctx_for(CLIENT)),
        Err(GrantError::UntrustedIssuer)
    );
}

/// Clauses: GRT-022 — a signature not by the named issuer is a bad signature.
#[test]
fn bad_signature() {
    let token = root_for(CLIENT);
    // A character in the middle of the 64-byte signature (the last 86 chars).
    let i = token.len() - 40;
    let mut bytes = token.into_bytes();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert_eq!(
        verify_grant(&tampered, &ctx_for(CLIENT)),
        Err(GrantError::BadSignature)
    );

    // Claims naming a trusted issuer but signed by someone else.
    let forged = builder(CLIENT, "g").sign(&key(OTHER)).expect("sign");
    let claims = claims_json(&forged);
    let mut claims = claims.as_object().expect("object").clone();
    claims.insert("iss".into(), key_to_text(&public(ISSUER)).into());
    let forged = sign_raw(OTHER, &serde_json::to_string(&claims).expect("json"));
    assert_eq!(
        verify_grant(&forged, &ctx_for(CLIENT)),
        Err(GrantError::BadSignature)
    );
}

/// Clauses: GRT-002, GRT-011 — only the grant implicit assertion verifies; a footer is
/// malformed.
#[test]
fn other_implicit_assertion_is_not_a_grant() {
    // A PASETO that a trusted key signed for another purpose, with perfectly
    // grant-shaped claims, must not be accepted as a grant.
    let grant = root_for(CLIENT);
    let (claims, _) = decode_unverified_v4_public(&grant).expect("decode");
    for ia in [&b""[..], b"toolwire/1 envelope", b"toolwire/2 grant"] {
        let token = sign_v4_public(&key(ISSUER), &claims, b"", ia);
        assert_eq!(
            verify_grant(&token, &ctx_for(CLIENT)),
            Err(GrantError::BadSignature)
        );
    }
    // The same claims with the grant assertion verify (control).
    let token = sign_v4_public(&key(ISSUER), &claims, b"", GRANT_IMPLICIT_ASSERTION);
    assert!(verify_grant(&token, &ctx_for(CLIENT)).is_ok());
    // A footer is not allowed on a grant.
    let token = sign_v4_public(&key(ISSUER), &claims, b"kid", GRANT_IMPLICIT_ASSERTION);
    assert_eq!(
        verify_grant(&token, &ctx_for(CLIENT)),
        Err(GrantError::Malformed("footer"))
    );
}

/// Clauses: GRT-032 — a sid must be the current session.
#[test]
fn session_binding() {
    let token = builder(CLIENT, "g")
        .session(SESSION)
        .sign(&key(ISSUER))
        .expect("sign");
    assert_eq!(claims_json(&token)["sid"], hex::encode(SESSION));

    let mut ctx = ctx_for(CLIENT);
    ctx.session_id = Some(SESSION);
    let grant = verify_grant(&token, &ctx).expect("right session");
    assert_eq!(grant.session, Some(SESSION));

    ctx.session_id = Some([0x11; 32]);
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::WrongSession));

    ctx.session_id = None;
    assert_eq!(verify_grant(&token, &ctx), Err(GrantError::WrongSession));

    // An unbound grant works in any session.
    let unbound = root_for(CLIENT);
    ctx.session_id = Some([0x11; 32]);
    assert_eq!(verify_grant(&unbound, &ctx).expect("ok").session, None);
}

/// Builds a chain ISSUER → CLIENT → A → B → C → D and returns the token held
/// by each of them, root first. Each link drops one tool and shortens expiry.
fn chain(links: usize) -> Vec<String> {
    let holders = [CLIENT, AGENT_A, AGENT_B, AGENT_C, AGENT_D];
    let tools = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let mut tokens = vec![
        GrantBuilder::new(public(CLIENT), public(SERVER), "root", EXP)
            .tools(tools)
            .scope(["read", "write"])
            .sign(&key(ISSUER))
            .expect("root"),
    ];
    for n in 1..=links {
        let parent = tokens.last().expect("parent");
        let token = GrantBuilder::new(
            public(holders[n]),
            public(SERVER),
            &format!("link-{n}"),
            EXP - time::Duration::minutes(n as i64),
        )
        .tools(tools[n..].iter().copied())
        .scope(["read"])
        .delegate_from(parent)
        .sign(&key(holders[n - 1]))
        .expect("link");
        tokens.push(token);
    }
    tokens
}

/// Clauses: GRT-031, GRT-033 — chains of 1 to 3 links verify to the leaf's rights, held
/// by the leaf's holder only.
#[test]
fn delegation_depth_one_to_three() {
    let holders = [CLIENT, AGENT_A, AGENT_B, AGENT_C];
    for depth in 1..=MAX_DELEGATION_DEPTH {
        let tokens = chain(depth);
        let leaf = tokens.last().expect("leaf");
        let grant = verify_grant(leaf, &ctx_for(holders[depth])).expect("valid chain");
        assert_eq!(grant.root_issuer, public(ISSUER));
        assert_eq!(grant.holder, public(holders[depth]));
        assert_eq!(grant.id, format!("link-{depth}"));
        let mut ids = vec!["root".to_owned()];
        ids.extend((1..=depth).map(|n| format!("link-{n}")));
        assert_eq!(grant.chain_ids, ids);
        assert_eq!(grant.scope, vec!["read".to_owned()]);
        assert_eq!(grant.expires_at_unix, NOW + 3600 - 60 * depth as i64);
        assert!(!grant.allows_tool("t1"));
        assert!(grant.allows_tool("t6"));

        // Only the leaf's holder can present it; an intermediate holder cannot.
        assert_eq!(
            verify_grant(leaf, &ctx_for(holders[depth - 1])),
            Err(GrantError::WrongHolder)
        );
    }
}

/// Clauses: GRT-019 — four links are too deep.
#[test]
fn delegation_depth_four_is_too_deep() {
    let tokens = chain(MAX_DELEGATION_DEPTH + 1);
    let leaf = tokens.last().expect("leaf");
    assert_eq!(
        verify_grant(leaf, &ctx_for(AGENT_D)),
        Err(GrantError::ChainTooDeep)
    );
}

/// Clauses: GRT-019 — the fifth token is never decoded.
#[test]
fn too_deep_is_detected_before_any_signature_work() {
    // A 4-link chain whose root and links all carry garbage signatures (every
    // token signed by an unrelated key): depth is checked first.
    let mut token = sign_raw(OTHER, "{}");
    for _ in 0..=MAX_DELEGATION_DEPTH {
        let claims = serde_json::json!({
            "iss": key_to_text(&public(OTHER)), "sub": key_to_text(&public(OTHER)),
            "aud": key_to_text(&public(SERVER)), "jti": "x",
            "exp": "2025-01-01T01:00:00Z", "tools": ["t"], "parent": token,
        });
        token = sign_raw(OTHER, &claims.to_string());
    }
    assert_eq!(
        verify_grant(&token, &ctx_for(OTHER)),
        Err(GrantError::ChainTooDeep)
    );
}

/// A link below `parent` for `holder` with rights narrower than `builder`'s.
/// The caller chooses the signer when calling `sign`.
fn link_from(parent: &str, holder: u8) -> GrantBuilder {
    GrantBuilder::new(public(holder), public(SERVER), "link", EXP)
        .tools(["search"])
        .scope(["read"])
        .delegate_from(parent)
}

/// Clauses: GRT-030, GRT-032 — a link may narrow and add a sid.
#[test]
fn narrowing_delegation_is_valid() {
    let root = root_for(CLIENT);
    let link = link_from(&root, AGENT_A).sign(&key(CLIENT)).expect("sign");
    let grant = verify_grant(&link, &ctx_for(AGENT_A)).expect("valid");
    assert_eq!(grant.tools, vec!["search".to_owned()]);
    assert_eq!(grant.chain_ids, vec!["root".to_owned(), "link".to_owned()]);

    // Identical rights (not widened) are fine too, and a link may add a sid.
    let same = builder(AGENT_A, "same")
        .session(SESSION)
        .delegate_from(&root)
        .sign(&key(CLIENT))
        .expect("sign");
    let mut ctx = ctx_for(AGENT_A);
    ctx.session_id = Some(SESSION);
    assert!(verify_grant(&same, &ctx).is_ok());
    ctx.session_id = None;
    assert_eq!(verify_grant(&same, &ctx), Err(GrantError::WrongSession));
}

/// Clauses: GRT-027, GRT-028, GRT-029, GRT-030 — a link may not widen tools, scopes,
/// expiry or session.
#[test]
fn widening_delegation_is_rejected() {
    let root = root_for(CLIENT);
    let ctx = ctx_for(AGENT_A);
    let widened = |b: GrantBuilder| {
        let token = b.sign(&key(CLIENT)).expect("sign");
        verify_grant(&token, &ctx)
    };

    // Extra tool.
    assert_eq!(
        widened(link_from(&root, AGENT_A).tools(["search", "delete"])),
        Err(GrantError::WidenedDelegation)
    );
    // Wildcard under a non-wildcard parent.
    assert_eq!(
        widened(link_from(&root, AGENT_A).tools(["*"])),
        Err(GrantError::WidenedDelegation)
    );
    // Extra scope.
    assert_eq!(
        widened(link_from(&root, AGENT_A).scope(["read", "admin"])),
        Err(GrantError::WidenedDelegation)
    );
    // Later expiry.
    let later = GrantBuilder::new(
        public(AGENT_A),
        public(SERVER),
        "link",
        EXP + time::Duration::SECOND,
    )
    .tools(["search"])
    .delegate_from(&root);
    assert_eq!(widened(later), Err(GrantError::WidenedDelegation));

    // Dropping the parent's session binding.
    let bound_root = builder(CLIENT, "root")
        .session(SESSION)
        .sign(&key(ISSUER))
        .expect("sign");
    let mut in_session = ctx_for(AGENT_A);
    in_session.session_id = Some(SESSION);
    let dropped = link_from(&bound_root, AGENT_A)
        .sign(&key(CLIENT))
        .expect("sign");
    assert_eq!(
        verify_grant(&dropped, &in_session),
        Err(GrantError::WidenedDelegation)
    );
    // Changing it.
    let changed = link_from(&bound_root, AGENT_A)
        .session([0x11; 32])
        .sign(&key(CLIENT))
        .expect("sign");
    assert_eq!(
        verify_grant(&changed, &in_session),
        Err(GrantError::WidenedDelegation)
    );
    // Keeping it (control).
    let kept = link_from(&bound_root, AGENT_A)
        .session(SESSION)
        .sign(&key(CLIENT))
        .expect("sign");
    assert!(verify_grant(&kept, &in_session).is_ok());
}

/// Clauses: GRT-028 — a parent's "*" covers any tool.
#[test]
fn wildcard_parent_covers_any_tool() {
    let root = builder(CLIENT, "root")
        .tools(["*"])
        .sign(&key(ISSUER))
        .expect("sign");
    for tools in [vec!["*"], vec!["anything", "else"]] {
        let link = link_from(&root, AGENT_A)
            .tools(tools.clone())
            .sign(&key(CLIENT))
            .expect("sign");
        let grant = verify_grant(&link, &ctx_for(AGENT_A)).expect("valid");
        assert_eq!(grant.tools, tools);
    }
}

/// Clauses: GRT-020, GRT-021, GRT-022 — only the parent's holder can sign a link.
#[test]
fn link_not_signed_by_parent_holder_is_broken() {
    let root = root_for(CLIENT);
    // OTHER tries to delegate CLIENT's grant to itself.
    let link = link_from(&root, OTHER).sign(&key(OTHER)).expect("sign");
    assert_eq!(
        verify_grant(&link, &ctx_for(OTHER)),
        Err(GrantError::BrokenChain)
    );
    // Even the root issuer cannot sign a link below a grant it gave to CLIENT.
    let link = link_from(&root, AGENT_A).sign(&key(ISSUER)).expect("sign");
    assert_eq!(
        verify_grant(&link, &ctx_for(AGENT_A)),
        Err(GrantError::BrokenChain)
    );

    // Claiming to be the parent's holder without its key: bad signature.
    let (claims, _) =
        decode_unverified_v4_public(&link_from(&root, AGENT_A).sign(&key(CLIENT)).expect("sign"))
            .expect("decode");
    let forged = sign_v4_public(&key(OTHER), &claims, b"", GRANT_IMPLICIT_ASSERTION);
    assert_eq!(
        verify_grant(&forged, &ctx_for(AGENT_A)),
        Err(GrantError::BadSignature)
    );

    // A chain whose root is untrusted fails at the root.
    let untrusted_root = builder(CLIENT, "root").sign(&key(OTHER)).expect("sign");
    let link = link_from(&untrusted_root, AGENT_A)
        .sign(&key(CLIENT))
        .expect("sign");
    assert_eq!(
        verify_grant(&link, &ctx_for(AGENT_A)),
        Err(GrantError::UntrustedIssuer)
    );
}

/// Clauses: GRT-024, GRT-025, GRT-026 — rule 4 applies to every token of the chain.
#[test]
fn every_token_in_chain_is_checked() {
    // Each case breaks only the root; the link below it is otherwise valid.
    // Root expired (the link expires at the same instant).
    let short_root = GrantBuilder::new(public(CLIENT), public(SERVER), "root", EXP)
        .tools(["search"])
        .scope(["read"])
        .sign(&key(ISSUER))
        .expect("sign");
    let link = link_from(&short_root, AGENT_A)
        .sign(&key(CLIENT))
        .expect("sign");
    let mut ctx = ctx_for(AGENT_A);
    ctx.now_unix = NOW + 3600;
    assert_eq!(verify_grant(&link, &ctx), Err(GrantError::Expired));

    // Root for another audience.
    let other_aud = GrantBuilder::new(public(CLIENT), public(OTHER), "root", EXP)
        .tools(["search"])
        .sign(&key(ISSUER))
        .expect("sign");
    let link = link_from(&other_aud, AGENT_A)
        .sign(&key(CLIENT))
        .expect("sign");
    assert_eq!(
        verify_grant(&link, &ctx_for(AGENT_A)),
        Err(GrantError::WrongAudience)
    );

    // Root not yet valid.
    let future_root = builder(CLIENT, "root")
        .not_before(datetime!(2025-01-01 00:30 UTC))
        .sign(&key(ISSUER))
        .expect("sign");
    let link = link_from(&future_root, AGENT_A)
        .sign(&key(CLIENT))
        .expect("sign");
    assert_eq!(
        verify_grant(&link, &ctx_for(AGENT_A)),
        Err(GrantError::NotYetValid)
    );
}

/// Clauses: GRT-012, GRT-013, GRT-014, GRT-015, GRT-016, GRT-017, GRT-018 — malformed
/// claims are rejected; unknown claims are ignored.
#[test]
fn malformed_claims() {
    let iss = key_to_text(&public(ISSUER));
    let sub = key_to_text(&public(CLIENT));
    let aud = key_to_text(&public(SERVER));
    let valid = serde_json::json!({
        "iss": iss, "sub": sub, "aud": aud, "jti": "g",
        "exp": "2025-01-01T01:00:00Z", "tools": ["t"],
    });
    // Control, plus unknown claims are ignored.
    let mut extra = valid.clone();
    extra["note"] = "hello".into();
    extra["scope"] = serde_json::json!([]);
    assert!(verify_grant(&sign_raw(ISSUER, &extra.to_string()), &ctx_for(CLIENT)).is_ok());

    let cases: Vec<(&str, String)> = vec![
        ("claims", "not json".into()),
        ("claims", "[]".into()),
        ("claims", "null".into()),
        (
            "claims",
            format!(
                r#"["{iss}","{sub}","{aud}","g",null,null,"2025-01-01T01:00:00Z",["t"],[],null,null]"#
            ),
        ),
        (
            "claims",
            format!(
                r#"{{"iss":"{iss}","iss":"{iss}","sub":"{sub}","aud":"{aud}","jti":"g","exp":"2025-01-01T01:00:00Z","tools":["t"]}}"#
            ),
        ),
        ("claims", r#"{"sub":"x"}"#.into()),
        ("claims", valid.to_string() + "x"),
    ];
    for (field, claims) in cases {
        assert_eq!(
            verify_grant(&sign_raw(ISSUER, &claims), &ctx_for(CLIENT)),
            Err(GrantError::Malformed(field)),
            "{claims}"
        );
    }

    let mutate = |name: &str, value: serde_json::Value| {
        let mut c = valid.clone();
        c[name] = value;
        verify_grant(&sign_raw(ISSUER, &c.to_string()), &ctx_for(CLIENT))
    };
    let m = GrantError::Malformed;
    assert_eq!(mutate("iss", "short".into()), Err(m("iss")));
    assert_eq!(mutate("iss", format!("{iss}=").into()), Err(m("iss")));
    assert_eq!(mutate("sub", "!".repeat(43).into()), Err(m("sub")));
    assert_eq!(
        mutate("aud", hex::encode(public(SERVER)).into()),
        Err(m("aud"))
    );
    assert_eq!(mutate("jti", "".into()), Err(m("jti")));
    assert_eq!(mutate("jti", "j".repeat(129).into()), Err(m("jti")));
    assert!(mutate("jti", "é".repeat(128).into()).is_ok());
    assert_eq!(mutate("exp", "2025-01-01 01:00:00".into()), Err(m("exp")));
    assert_eq!(mutate("exp", 1_735_693_200.into()), Err(m("claims")));
    assert_eq!(mutate("nbf", "yesterday".into()), Err(m("nbf")));
    assert_eq!(mutate("iat", "2025-13-01T00:00:00Z".into()), Err(m("iat")));
    assert_eq!(mutate("tools", serde_json::json!([])), Err(m("tools")));
    assert_eq!(mutate("tools", "t".into()), Err(m("claims")));
    assert_eq!(mutate("scope", serde_json::json!([1])), Err(m("claims")));
    assert_eq!(
        mutate("sid", hex::encode_upper(SESSION).into()),
        Err(m("sid"))
    );
    assert_eq!(mutate("sid", hex::encode([0u8; 31]).into()), Err(m("sid")));
    assert_eq!(mutate("sid", "zz".repeat(32).into()), Err(m("sid")));
    assert_eq!(
        mutate("parent", "v4.public.garbage".into()),
        Err(m("token"))
    );
    assert_eq!(mutate("parent", "v4.local.AAAA".into()), Err(m("purpose")));

    // `iss` that is 32 bytes but not a valid Ed25519 point.
    let not_a_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .expect("some byte pattern is not a point");
    assert_eq!(
        mutate("iss", key_to_text(&not_a_point).into()),
        Err(m("iss"))
    );
}

/// Clauses: GRT-004 — a token over 8192 bytes is not issued.
#[test]
fn builder_refuses_unverifiable_grants() {
    let b = GrantBuilder::new(public(CLIENT), public(SERVER), "g", EXP);
    assert_eq!(
        b.clone().sign(&key(ISSUER)),
        Err(GrantError::Malformed("tools"))
    );
    assert_eq!(
        GrantBuilder::new(public(CLIENT), public(SERVER), "", EXP)
            .tools(["t"])
            .sign(&key(ISSUER)),
        Err(GrantError::Malformed("jti"))
    );
    assert_eq!(
        GrantBuilder::new(
            public(CLIENT),
            public(SERVER),
            "g",
            datetime!(-0001-01-01 0:00 UTC)
        )
        .tools(["t"])
        .sign(&key(ISSUER)),
        Err(GrantError::Malformed("exp"))
    );
    // Non-UTC offsets are normalized to UTC.
    let token = GrantBuilder::new(
        public(CLIENT),
        public(SERVER),
        "g",
        datetime!(2025-01-01 03:00 +02:00),
    )
    .tools(["t"])
    .sign(&key(ISSUER))
    .expect("sign");
    assert_eq!(claims_json(&token)["exp"], "2025-01-01T01:00:00Z");
    // Too large to ever verify.
    let many: Vec<String> = (0..2000).map(|i| format!("tool-{i}")).collect();
    assert_eq!(
        b.tools(many).sign(&key(ISSUER)),
        Err(GrantError::Malformed("token"))
    );
}

/// Clauses: GRT-006 — no mutation verifies; an oversize token is malformed before
/// decoding.
#[test]
fn mutations_never_verify_and_never_panic() {
    let tokens = chain(2);
    let leaf = tokens.last().expect("leaf").clone();
    let ctx = ctx_for(AGENT_B);
    assert!(verify_grant(&leaf, &ctx).is_ok());

    let mut checked = 0;
    // Every truncation.
    for len in 0..leaf.len() {
        assert!(
            verify_grant(&leaf[..len], &ctx).is_err(),
            "truncated to {len}"
        );
        checked += 1;
    }
    // Single-character substitutions at a spread of positions, with several
    // replacement characters (including ones outside the base64url alphabet).
    let replacements = [b'A', b'z', b'0', b'-', b'_', b'.', b'=', b'+', b' '];
    let bytes = leaf.as_bytes();
    for (n, pos) in (0..bytes.len()).step_by(7).enumerate() {
        let r = replacements[n % replacements.len()];
        let r = if bytes[pos] == r {
            b'Q' ^ (bytes[pos] & 1)
        } else {
            r
        };
        let mut mutated = bytes.to_vec();
        mutated[pos] = r;
        let mutated = String::from_utf8(mutated).expect("ascii");
        assert_ne!(mutated, leaf);
        assert!(
            verify_grant(&mutated, &ctx).is_err(),
            "substitution at {pos}"
        );
        checked += 1;
    }
    // Insertions and appended junk.
    for junk in ["=", ".", "..", "A", ".e30", "é"] {
        assert!(verify_grant(&format!("{leaf}{junk}"), &ctx).is_err());
        assert!(verify_grant(&format!("{junk}{leaf}"), &ctx).is_err());
        checked += 2;
    }
    assert!(checked > 300, "only {checked} mutations");

    for g in [
        "",
        ".",
        "v4.public.",
        "v4.public..",
        "v4.local.AAAA",
        "🦀",
        "v4.public.🦀",
    ] {
        assert!(
            matches!(verify_grant(g, &ctx), Err(GrantError::Malformed(_))),
            "{g:?}"
        );
    }
    let huge = format!("v4.public.{}", "A".repeat(9000));
    assert_eq!(
        verify_grant(&huge, &ctx),
        Err(GrantError::Malformed("token"))
    );
}

//! HTTP upgrade checks (spec section 2.2) and WebSocket frame checks (section 2.3):
//! what `check_upgrade` and `check_frame`, which the server driver applies, answer
//! to each upgrade request and data message.

use toolwire_protocol::upgrade::{
    check_frame, check_upgrade, max_frame_len, FrameKind, FrameViolation, InvalidOrigin,
    UpgradePolicy, UpgradeRefusal, UpgradeRequest,
};
use toolwire_protocol::{CloseCode, ConnectionLimits, SUBPROTOCOL};

const AGENTS: &str = "https://agents.example";

fn policy() -> UpgradePolicy {
    UpgradePolicy::default()
        .allow_origin(AGENTS)
        .allow_origin("http://localhost:5173")
        .allow_origin("http://[::1]:8080")
}

fn from_origin(origin: &str) -> UpgradeRequest<'_> {
    UpgradeRequest {
        origin: Some(origin),
        subprotocols: Some(SUBPROTOCOL),
    }
}

fn verdict(policy: &UpgradePolicy, origin: &str) -> Result<&'static str, UpgradeRefusal> {
    check_upgrade(policy, &from_origin(origin))
}

/// Clauses: TRN-006, TRN-018 — a listed origin offering toolwire.v1 is accepted and exactly
/// toolwire.v1 is selected.
#[test]
fn a_listed_origin_offering_the_subprotocol_is_accepted_and_the_subprotocol_echoed() {
    for origin in [AGENTS, "http://localhost:5173", "http://[::1]:8080"] {
        assert_eq!(verdict(&policy(), origin), Ok("toolwire.v1"), "{origin}");
    }
    assert_eq!(SUBPROTOCOL, "toolwire.v1");
}

/// Clauses: TRN-007 — scheme and host compare without regard to ASCII case.
#[test]
fn scheme_and_host_compare_case_insensitively() {
    for origin in [
        "HTTPS://AGENTS.EXAMPLE",
        "https://Agents.Example",
        "hTTps://agents.EXAMPLE",
        "HTTP://LOCALHOST:5173",
    ] {
        assert_eq!(verdict(&policy(), origin), Ok(SUBPROTOCOL), "{origin}");
    }
    let upper = UpgradePolicy::default().allow_origin("HTTPS://AGENTS.EXAMPLE");
    assert_eq!(verdict(&upper, AGENTS), Ok(SUBPROTOCOL));
}

/// Clauses: TRN-006, TRN-007 — other hosts, schemes and ports are refused with 403.
#[test]
fn other_sites_schemes_and_ports_are_refused_with_403() {
    for origin in [
        "https://evil.example",
        // Suffix and prefix tricks.
        "https://agents.example.evil.example",
        "https://evilagents.example",
        "https://agents.exampl",
        "https://sub.agents.example",
        // Same host, other scheme or port.
        "http://agents.example",
        "wss://agents.example",
        "https://agents.example:8443",
        "http://localhost:5174",
        "http://localhost",
        "http://[::1]:8081",
        "http://[::2]:8080",
    ] {
        let refusal = verdict(&policy(), origin).unwrap_err();
        assert_eq!(refusal, UpgradeRefusal::OriginNotAllowed, "{origin}");
        assert_eq!(refusal.http_status(), 403);
    }
}

/// Clauses: TRN-007 — a default port written out is a different origin.
#[test]
fn default_ports_are_not_normalized() {
    // Browsers never serialize the default port; an entry must be written the same
    // way, and the two spellings are different origins.
    assert_eq!(
        verdict(&policy(), "https://agents.example:443"),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
    let with_port = UpgradePolicy::default().allow_origin("https://agents.example:443");
    assert_eq!(
        verdict(&with_port, AGENTS),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
}

/// Clauses: TRN-007 — no wildcard, prefix or suffix matching.
#[test]
fn there_are_no_wildcards() {
    let wildcards = UpgradePolicy::default()
        .allow_origin("*")
        .allow_origin("https://*.example")
        .allow_origin("https://*");
    for origin in [AGENTS, "https://a.example", "https://*.example", "null"] {
        assert_eq!(
            verdict(&wildcards, origin),
            Err(UpgradeRefusal::OriginNotAllowed),
            "{origin}"
        );
    }
}

/// Clauses: TRN-008, TRN-009 — values that are not serialized origins (including joined values)
/// match nothing.
#[test]
fn malformed_origin_values_never_match() {
    for origin in [
        "",
        " ",
        "https://agents.example/",
        "https://agents.example/toolwire",
        "https://agents.example?x=1",
        "https://user@agents.example",
        " https://agents.example",
        "https://agents.example ",
        "agents.example",
        // Two Origin headers, joined by the driver.
        "https://agents.example, https://agents.example",
        "https://agents.example,https://evil.example",
    ] {
        assert_eq!(
            verdict(&policy(), origin),
            Err(UpgradeRefusal::OriginNotAllowed),
            "{origin:?}"
        );
    }
}

/// Clauses: TRN-010 — null matches only a literal null entry.
#[test]
fn the_null_origin_is_refused_unless_listed_literally() {
    assert_eq!(
        verdict(&policy(), "null"),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
    let with_null = policy().allow_origin("null");
    assert_eq!(verdict(&with_null, "null"), Ok(SUBPROTOCOL));
    // Only the exact serialization.
    assert_eq!(
        verdict(&with_null, "NULL"),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
    // Listing "null" admits nothing else.
    assert_eq!(
        verdict(
            &UpgradePolicy::default().allow_origin("null"),
            "https://evil.example"
        ),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
}

/// Clauses: TRN-012 — by default no Origin is allowed and a request without Origin is accepted.
#[test]
fn by_default_no_browser_origin_is_allowed_but_non_browser_clients_are() {
    let default = UpgradePolicy::default();
    assert!(default.allowed_origins.is_empty());
    assert!(default.allow_missing_origin);
    assert_eq!(default, UpgradePolicy::new());
    assert_eq!(
        verdict(&default, AGENTS),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
    let agent = UpgradeRequest {
        origin: None,
        subprotocols: Some(SUBPROTOCOL),
    };
    assert_eq!(check_upgrade(&default, &agent), Ok(SUBPROTOCOL));
}

/// Clauses: TRN-013 — a policy requiring Origin refuses a request without one with 403.
#[test]
fn a_missing_origin_is_refused_with_403_when_required() {
    let strict = policy().require_origin();
    assert!(!strict.allow_missing_origin);
    let agent = UpgradeRequest {
        origin: None,
        subprotocols: Some(SUBPROTOCOL),
    };
    let refusal = check_upgrade(&strict, &agent).unwrap_err();
    assert_eq!(refusal, UpgradeRefusal::OriginMissing);
    assert_eq!(refusal.http_status(), 403);
    // An origin that is present must still be allowed.
    assert_eq!(
        check_upgrade(&strict, &from_origin(AGENTS)),
        Ok(SUBPROTOCOL)
    );
    // A present but empty header is not a missing one.
    let mut relaxed = policy();
    relaxed.allow_missing_origin = true;
    assert_eq!(
        check_upgrade(&relaxed, &from_origin("")),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
}

/// Clauses: TRN-014, TRN-018 — the offer must contain the exact token toolwire.v1 (400 otherwise),
/// and only it is selected.
#[test]
fn the_subprotocol_must_be_offered_as_an_exact_token() {
    let offered = |list: &str| {
        check_upgrade(
            &policy(),
            &UpgradeRequest {
                origin: None,
                subprotocols: Some(list),
            },
        )
    };
    for list in [
        "toolwire.v1",
        "chat, toolwire.v1",
        "toolwire.v1, chat",
        "chat,toolwire.v1",
        "  toolwire.v1\t",
        "toolwire.v2, toolwire.v1",
        ", toolwire.v1,,",
    ] {
        assert_eq!(offered(list), Ok(SUBPROTOCOL), "{list:?}");
    }
    for list in [
        "",
        "chat",
        "toolwire.v2",
        "Toolwire.v1",
        "TOOLWIRE.V1",
        "toolwire",
        "toolwire.v1x",
        "xtoolwire.v1",
        "toolwire.v1;q=1",
        "toolwire.v1 chat",
        "\"toolwire.v1\"",
    ] {
        let refusal = offered(list).unwrap_err();
        assert_eq!(refusal, UpgradeRefusal::SubprotocolMissing, "{list:?}");
        assert_eq!(refusal.http_status(), 400);
    }
    let absent = UpgradeRequest {
        origin: None,
        subprotocols: None,
    };
    assert_eq!(
        check_upgrade(&policy(), &absent),
        Err(UpgradeRefusal::SubprotocolMissing)
    );
}

/// Clauses: TRN-015 — a request failing both checks is refused as an origin failure (403).
#[test]
fn the_origin_is_checked_before_the_subprotocol() {
    let both_bad = UpgradeRequest {
        origin: Some("https://evil.example"),
        subprotocols: None,
    };
    assert_eq!(
        check_upgrade(&policy(), &both_bad),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
    let missing_both = UpgradeRequest {
        origin: None,
        subprotocols: Some("chat"),
    };
    assert_eq!(
        check_upgrade(&policy().require_origin(), &missing_both),
        Err(UpgradeRefusal::OriginMissing)
    );
}

#[test]
fn every_refusal_has_its_status() {
    assert_eq!(UpgradeRefusal::OriginNotAllowed.http_status(), 403);
    assert_eq!(UpgradeRefusal::OriginMissing.http_status(), 403);
    assert_eq!(UpgradeRefusal::SubprotocolMissing.http_status(), 400);
}

#[test]
fn validate_reports_entries_that_can_never_match() {
    assert_eq!(policy().validate(), Ok(()));
    assert_eq!(policy().allow_origin("null").validate(), Ok(()));
    let typo = policy()
        .allow_origin("https://agents.example/")
        .allow_origin("agents.example");
    let error: InvalidOrigin = typo.validate().unwrap_err();
    assert_eq!(error.index, 3);
    assert_eq!(error.origin, "https://agents.example/");
    assert!(error.to_string().contains("https://agents.example/"));
    // The broken entry indeed never matches what it was meant for.
    let only_typo = UpgradePolicy::default().allow_origin("https://agents.example/");
    assert_eq!(
        verdict(&only_typo, AGENTS),
        Err(UpgradeRefusal::OriginNotAllowed)
    );
}

/// Clauses: TRN-024, TRN-025 — a text message closes with 1003, an oversize one with 1009.
#[test]
fn frame_violations_map_to_their_close_codes() {
    assert_eq!(
        FrameViolation::TextFrame.close_code(),
        CloseCode::UNSUPPORTED_DATA
    );
    assert_eq!(FrameViolation::TextFrame.close_code().0, 1003);
    assert_eq!(
        FrameViolation::Oversize.close_code(),
        CloseCode::MESSAGE_TOO_BIG
    );
    assert_eq!(FrameViolation::Oversize.close_code().0, 1009);
}

/// Clauses: TRN-025, TRN-026, LIM-002 — binary messages up to 65552 bytes pass; longer ones close
/// with 1009, also when they are text.
#[test]
fn binary_messages_up_to_one_record_pass_and_anything_else_closes() {
    let limits = ConnectionLimits::default();
    let max = max_frame_len(&limits);
    assert_eq!(max, 16 + 64 * 1024);
    assert_eq!(check_frame(FrameKind::Binary, 0, &limits), Ok(()));
    assert_eq!(check_frame(FrameKind::Binary, max, &limits), Ok(()));
    assert_eq!(
        check_frame(FrameKind::Binary, max + 1, &limits),
        Err(FrameViolation::Oversize)
    );
    assert_eq!(
        check_frame(FrameKind::Binary, usize::MAX, &limits),
        Err(FrameViolation::Oversize)
    );
    assert_eq!(
        check_frame(FrameKind::Text, 0, &limits),
        Err(FrameViolation::TextFrame)
    );
    assert_eq!(
        check_frame(FrameKind::Text, max, &limits),
        Err(FrameViolation::TextFrame)
    );
    // Size first: an oversize text message is an oversize message.
    assert_eq!(
        check_frame(FrameKind::Text, max + 1, &limits),
        Err(FrameViolation::Oversize)
    );
}

/// Clauses: TRN-025 — the message limit is 16 + the configured record limit.
#[test]
fn the_frame_limit_follows_the_record_limit() {
    let mut limits = ConnectionLimits::default();
    limits.max_record_body = 1024;
    assert_eq!(max_frame_len(&limits), 1040);
    assert_eq!(check_frame(FrameKind::Binary, 1040, &limits), Ok(()));
    assert_eq!(
        check_frame(FrameKind::Binary, 1041, &limits),
        Err(FrameViolation::Oversize)
    );
    limits.max_record_body = usize::MAX;
    assert_eq!(max_frame_len(&limits), usize::MAX);
}

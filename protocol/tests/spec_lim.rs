//! Spec section 17, "Default limits" (LIM), for the protocol core: the defaults of
//! the configuration types, and the handshake's default clock skew applied to a
//! grant's expiry. The behaviour each limit bounds is tested at its own clause
//! (pair_limits, pair_rekey, pair_handshake_failures, and the server's spec_lim).

mod common;

use common::*;
use std::time::Duration;
use time::OffsetDateTime;
use toolwire_protocol::amo::AmoConfig;
use toolwire_protocol::authz::AuthzLimits;
use toolwire_protocol::error::AuthFailure;
use toolwire_protocol::grant::GrantBuilder;
use toolwire_protocol::message::CapRequest;
use toolwire_protocol::upgrade::max_frame_len;
use toolwire_protocol::{ConnectionLimits, Error, Identity};

/// Clauses: LIM-001, LIM-002, LIM-005, LIM-006, LIM-007, LIM-008, LIM-009 — the
/// default connection limits: 64 KiB record bodies, WebSocket messages of one
/// record (65552 bytes), a 5 s handshake deadline, a 90 s idle timeout, a 30 s
/// keepalive, a rekey every 2^20 records or 5 minutes, a 62-minute session; and a
/// server announces the defaults it applies.
#[test]
fn the_default_connection_limits_are_the_specified_ones() {
    let limits = ConnectionLimits::default();
    assert_eq!(limits.max_record_body, 65_536);
    assert_eq!(max_frame_len(&limits), 65_552);
    assert_eq!(limits.handshake_timeout, Duration::from_secs(5));
    assert_eq!(limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(limits.keepalive_interval, Duration::from_secs(30));
    assert_eq!(limits.rekey_after_records, 1 << 20);
    assert_eq!(limits.rekey_after, Duration::from_secs(300));
    assert_eq!(limits.session_lifetime, Duration::from_secs(62 * 60));
    let pair = Pair::established();
    let params = pair.client.session().expect("open").params;
    assert_eq!(params.max_record_body, 65_536);
    assert_eq!(params.idle_timeout_ms, 90_000);
    assert_eq!(params.session_lifetime_ms, 3_720_000);
}

/// Clauses: LIM-010, LIM-014, LIM-015 — the default authorization limits (64 calls
/// in flight, 30 s of clock skew for grant expiry) and at-most-once bounds (64 KiB
/// per outcome, 256 outcomes per lineage, 64 MiB in total, 1024 lineages, 16 per
/// client).
#[test]
fn the_default_authorization_and_at_most_once_bounds_are_the_specified_ones() {
    let authz = AuthzLimits::default();
    assert_eq!(authz.max_in_flight, 64);
    assert_eq!(authz.max_clock_skew_secs, 30);
    let amo = AmoConfig::default();
    assert_eq!(amo.max_result_bytes, 65_536);
    assert_eq!(amo.results_per_lineage, 256);
    assert_eq!(amo.max_total_result_bytes, 64 * 1024 * 1024);
    assert_eq!(amo.max_lineages, 1024);
    assert_eq!(amo.max_lineages_per_client, 16);
}

fn issuer() -> Identity {
    Identity::from_seed(&[0x1a; 32])
}

/// A grant for the fixed client at the fixed server that expired `ago` seconds
/// before the server's clock.
fn grant_expired(ago: i64) -> String {
    let client = Identity::from_seed(&[0x43; 32]).public_key();
    let server = Identity::from_seed(&[0x53; 32]).public_key();
    let expires = OffsetDateTime::from_unix_timestamp(UNIX_TIME - ago).expect("time");
    GrantBuilder::new(client.to_bytes(), server.to_bytes(), "g", expires)
        .tools(["search"])
        .sign(issuer().signing_key())
        .expect("signs")
}

/// Clauses: LIM-014 — without any skew configured, the handshake honours a grant
/// up to 30 s past its expiry: a client admitted only by a grant that expired 29 s
/// ago gets in, one whose grant expired 30 s ago is refused with AUTH_FAILED.
#[test]
fn the_handshake_tolerates_30_seconds_of_clock_skew_by_default() {
    for (ago, admitted) in [(10, true), (29, true), (30, false), (31, false)] {
        let options = PeerOptions {
            allowlist_client: false,
            ..PeerOptions::default()
        };
        let peers = Peers::custom(
            &options,
            |server| server.trust_grant_issuers([issuer().public_key()]),
            |client| {
                client.with_cap_request(CapRequest {
                    tools: vec!["search".into()],
                    grants: vec![grant_expired(ago)],
                })
            },
        );
        let mut pair = Pair::start(&peers);
        let result = pair.handshake();
        if admitted {
            assert!(result.is_ok(), "expired {ago} s ago: {result:?}");
            assert_eq!(pair.server.session().expect("open").grants.len(), 1);
        } else {
            let Err((Role::Server, error)) = result else {
                panic!("expired {ago} s ago: {result:?}");
            };
            assert_eq!(
                error,
                Error::AuthFailed(AuthFailure::UnknownClient),
                "{ago}"
            );
        }
    }
}

/// Clauses: LIM-013, HS-022 — at most 8 presented grants count: a handshake with 9
/// fails (spec_hs), and of the grants of one CAP_REQUEST — verified by
/// `verify_presented_grants`, which the server driver calls — only the first 8 are
/// looked at: a valid grant in ninth place is never verified, in eighth place it
/// counts.
#[test]
fn at_most_eight_presented_grants_are_verified() {
    let peers = Peers::build(
        |server| server.trust_grant_issuers([issuer().public_key()]),
        |client| client,
    );
    let valid = grant_expired(-3600);
    let holder = Identity::from_seed(&[0x43; 32]).public_key();
    for (position, counted) in [(8usize, false), (7, true)] {
        let mut tokens: Vec<String> = (0..position)
            .map(|i| format!("v4.public.junk{i}"))
            .collect();
        tokens.push(valid.clone());
        let (grants, rejected) = toolwire_protocol::handshake::verify_presented_grants(
            &peers.server_config,
            &tokens,
            holder,
            [7; 32],
            UNIX_TIME,
        );
        assert_eq!(
            grants.len(),
            usize::from(counted),
            "valid grant at {position}"
        );
        let examined: Vec<usize> = rejected.iter().map(|(index, _)| *index).collect();
        assert_eq!(examined, (0..position.min(8)).collect::<Vec<usize>>());
    }
}

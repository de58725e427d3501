//! Threat: unauthenticated use (THREATS.md §2). A client that proves possession of
//! an identity key the server does not know (not allowlisted, no grant from a
//! trusted issuer) is refused at Noise message 3 with AUTH_FAILED (4001), in a bare
//! close frame since the server holds no keys yet: it never gets a CAP_GRANT and no
//! call of it is ever evaluated. A key removed from the allowlist after the server
//! was built is refused the same way, after an authenticated CLOSE.
//!
//! Clauses: HS-028, HS-030, HS-034, CLS-001, CLS-002.

mod common;

use common::{within, RawClient, TestServer};
use toolwire_client::ConnectError;
use toolwire_server::protocol::{CloseCode, Identity, Message};

#[tokio::test]
async fn unknown_identity_is_closed_with_auth_failed_after_the_handshake() {
    let server = TestServer::start().await;
    let stranger = Identity::generate(&mut rand_core::OsRng);

    // By hand: the client side of the handshake completes (the server proved its
    // identity), then the server refuses record 3. No keys exist on the server side
    // yet, so the refusal is the WebSocket close frame alone.
    let mut raw =
        RawClient::handshake(&server.url, server.client_config(&stranger, Vec::new())).await;
    // The attacker does not wait for a CAP_GRANT and sends a call at once.
    let call = raw.request(1, "echo", &serde_json::json!({"text": "hi"}));
    let record = raw.seal(Message::Request(call));
    raw.try_send_record(record).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.frame, Some(CloseCode::AUTH_FAILED.0));
    assert_eq!(closed.record, None);
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);

    // Through the real client.
    let outcome = within("connect", server.client(&stranger).connect(&server.url)).await;
    match outcome {
        Err(ConnectError::Closed { code, .. }) => assert_eq!(code, CloseCode::AUTH_FAILED),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn identity_removed_from_the_allowlist_cannot_open_new_sessions() {
    let server = TestServer::start().await;
    server.server.remove_client(&server.agent.public_key());

    // The handshake itself completes (keys exist on both sides), so the refusal comes
    // as an authenticated CLOSE record before the close frame, and no CAP_GRANT.
    let mut raw =
        RawClient::handshake(&server.url, server.client_config(&server.agent, Vec::new())).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "hi"}));
    let record = raw.seal(Message::Request(call));
    raw.try_send_record(record).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::AUTH_FAILED));
    assert_eq!(closed.frame, Some(CloseCode::AUTH_FAILED.0));
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);

    let outcome = within("connect", server.client(&server.agent).connect(&server.url)).await;
    match outcome {
        Err(ConnectError::Closed { code, .. }) => assert_eq!(code, CloseCode::AUTH_FAILED),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);
}

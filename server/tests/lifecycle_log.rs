//! Lifecycle events (spec section 18): a connection's life reads the same in every
//! server log — `connection_opened`, `handshake_ok` (or the failure's event),
//! `authz_decision` per call, and `connection_closed` with the close code, the side
//! that closed, and the connection's counters (records and bytes in and out, calls,
//! denials) — each with the common fields `event`, `time`, `role` and, once known,
//! `session_id` and `peer_key`.
//!
//! Clauses: EVT-001, EVT-002.

mod common;
mod event_capture;

use common::{raw_socket, within, RawClient, TestServer};
use event_capture::{hex, Capture, Line};
use futures_util::SinkExt as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity};
use toolwire_server::Limits;

/// `time` is RFC 3339 in UTC with milliseconds.
fn assert_rfc3339_utc(line: &Line) {
    let time = line.field("time");
    let bytes = time.as_bytes();
    assert_eq!(bytes.len(), 24, "{time}");
    assert_eq!(
        (bytes[4], bytes[7], bytes[10], bytes[13], bytes[16], bytes[19], bytes[23]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{time}"
    );
    assert!(time.starts_with("20"), "{time}");
}

fn number(line: &Line, field: &str) -> u64 {
    line.field(field)
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {line:?}"))
}

// EVT-001, EVT-002
#[tokio::test]
async fn a_session_logs_open_handshake_decisions_and_close_with_counts() {
    let (capture, _guard) = Capture::start();
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    for text in ["one", "two"] {
        within(
            "call",
            session.call("echo", &serde_json::json!({ "text": text })),
        )
        .await
        .expect("call");
    }
    let session_id = session.session_id();
    session.close();
    let closed = capture.wait_events("server", "connection_closed", 1).await;
    let agent_key = server.agent.public_key().to_string();

    let opened = capture.events_of("server", "connection_opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(
        opened[0].field_names(),
        ["event", "message", "peer_addr", "role", "time"]
    );
    let peer: SocketAddr = opened[0].field("peer_addr").parse().expect("address");
    assert!(peer.ip().is_loopback());
    assert_rfc3339_utc(&opened[0]);

    let handshake = capture.events_of("server", "handshake_ok");
    assert_eq!(handshake.len(), 1);
    assert_eq!(
        handshake[0].field_names(),
        ["event", "message", "peer_key", "role", "session_id", "time"]
    );
    assert_eq!(handshake[0].field("session_id"), hex(&session_id));
    assert_eq!(handshake[0].field("peer_key"), agent_key);

    let decisions = capture.events_of("server", "authz_decision");
    assert_eq!(decisions.len(), 2);
    for (index, decision) in decisions.iter().enumerate() {
        assert_eq!(decision.field("decision"), "Execute");
        assert_eq!(decision.field("tool"), "echo");
        assert_eq!(decision.field("request_id"), (index + 1).to_string());
        assert_eq!(decision.field("authority"), "Some(KeyAllowlist)");
        assert_eq!(decision.field("peer_key"), agent_key);
        assert!(!decision.fields.contains_key("refused_at"));
    }

    let closed = &closed[0];
    assert_eq!(
        closed.field_names(),
        [
            "bytes_in",
            "bytes_out",
            "calls",
            "close_code",
            "denials",
            "event",
            "message",
            "peer_key",
            "records_in",
            "records_out",
            "role",
            "session_id",
            "side",
            "time"
        ]
    );
    assert_eq!(closed.field("close_code"), "1000");
    assert_eq!(closed.field("side"), "remote");
    assert_eq!(closed.field("session_id"), hex(&session_id));
    assert_eq!(number(closed, "calls"), 2);
    assert_eq!(number(closed, "denials"), 0);
    // In: handshake records 1 and 3, two REQUESTs, the CLOSE record. Out: handshake
    // record 2, CAP_GRANT, two RESPONSEs.
    assert_eq!(number(closed, "records_in"), 5);
    assert_eq!(number(closed, "records_out"), 4);
    assert!(number(closed, "bytes_in") > 5 * 16);
    assert!(number(closed, "bytes_out") > 4 * 16);
    assert_eq!(closed.level, tracing::Level::INFO);

    // The client logs the same vocabulary with role = client.
    let client_closed = capture.wait_events("client", "connection_closed", 1).await;
    let client_closed = &client_closed[0];
    assert_eq!(client_closed.field_names(), closed.field_names());
    assert_eq!(client_closed.field("close_code"), "1000");
    assert_eq!(client_closed.field("side"), "local");
    assert_eq!(number(client_closed, "calls"), 2);
    assert_eq!(number(client_closed, "records_out"), 5);
    assert_eq!(number(client_closed, "records_in"), 4);
    let client_handshake = capture.events_of("client", "handshake_ok");
    assert_eq!(client_handshake.len(), 1);
    assert_eq!(client_handshake[0].field("session_id"), hex(&session_id));
    assert_eq!(
        client_handshake[0].field("peer_key"),
        server.server_key.to_string()
    );
    let client_opened = capture.events_of("client", "connection_opened");
    assert_eq!(client_opened.len(), 1);
    assert_eq!(client_opened[0].field("peer_addr"), server.addr.to_string());
}

// EVT-001, EVT-002
#[tokio::test]
async fn denials_are_logged_with_their_event_and_counted_at_close() {
    let (capture, _guard) = Capture::start();
    let limited = Identity::generate(&mut rand_core::OsRng);
    let key = limited.public_key();
    let server =
        TestServer::start_with(move |builder| builder.allow_client_tools(key, ["echo"])).await;
    let session = server.session(&limited).await;
    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "ok"})),
    )
    .await
    .expect("echo is allowed");
    let denied = within(
        "call",
        session.call("ticker", &serde_json::json!({"count": 1})),
    )
    .await;
    assert_eq!(common::rpc_code(denied), ErrorCode::PERMISSION_DENIED);
    session.close();
    let closed = capture.wait_events("server", "connection_closed", 1).await;
    let denial = capture.events_of("server", "permission_denied");
    assert_eq!(denial.len(), 1);
    assert_eq!(
        denial[0].field_names(),
        [
            "event",
            "message",
            "peer_key",
            "request_id",
            "role",
            "session_id",
            "time",
            "tool"
        ]
    );
    assert_eq!(denial[0].field("tool"), "ticker");
    assert_eq!(denial[0].field("request_id"), "2");
    let decisions = capture.events_of("server", "authz_decision");
    assert_eq!(
        decisions[1].field("decision"),
        "Refused(PERMISSION_DENIED(7))"
    );
    assert_eq!(decisions[1].field("refused_at"), "granted");
    assert_eq!(number(&closed[0], "calls"), 2);
    assert_eq!(number(&closed[0], "denials"), 1);
    assert_eq!(server.probes.ticker.runs(), 0);
}

// EVT-001, EVT-002
#[tokio::test]
async fn a_refused_identity_logs_auth_failed_and_a_local_close() {
    let (capture, _guard) = Capture::start();
    let server = TestServer::start().await;
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut raw =
        RawClient::handshake(&server.url, server.client_config(&stranger, Vec::new())).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.frame, Some(CloseCode::AUTH_FAILED.0));
    let failed = capture.wait_events("server", "auth_failed", 1).await;
    assert_eq!(
        failed[0].field_names(),
        ["event", "message", "reason", "role", "time"]
    );
    assert_eq!(failed[0].field("reason"), "unknown_client");
    // Counted against a threshold: logged at INFO, the alert is what warns.
    assert_eq!(failed[0].level, tracing::Level::INFO);
    let closed = capture.wait_events("server", "connection_closed", 1).await;
    assert_eq!(closed[0].field("close_code"), "4001");
    assert_eq!(closed[0].field("side"), "local");
    assert_eq!(number(&closed[0], "records_in"), 2);
    assert_eq!(number(&closed[0], "calls"), 0);
    assert!(capture.events_of("server", "handshake_ok").is_empty());
}

// EVT-001
#[tokio::test]
async fn a_malformed_handshake_logs_handshake_failed() {
    let (capture, _guard) = Capture::start();
    let server = TestServer::start().await;
    let mut socket = raw_socket(&server.url).await;
    // A well-formed header of handshake record 1 with a body of the wrong length.
    let mut record = vec![1u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&[7; 5]);
    within("send", socket.send(WsMessage::binary(record)))
        .await
        .expect("sent");
    let code = common::close_frame_code(&mut socket).await;
    assert_eq!(code, Some(CloseCode::HANDSHAKE_FAILED.0));
    let failed = capture.wait_events("server", "handshake_failed", 1).await;
    assert_eq!(failed[0].field("close_code"), "4000");
}

// EVT-001
#[tokio::test]
async fn a_silent_peer_logs_a_handshake_timeout() {
    let (capture, _guard) = Capture::start();
    let mut limits = Limits::default();
    limits.connection.handshake_timeout = Duration::from_millis(200);
    let server = TestServer::start_with(move |builder| builder.limits(limits)).await;
    let mut socket = raw_socket(&server.url).await;
    let code = common::close_frame_code(&mut socket).await;
    assert_eq!(code, Some(CloseCode::TIMEOUT.0));
    let timeout = capture.wait_events("server", "timeout", 1).await;
    assert_eq!(timeout[0].field("kind"), "handshake");
    assert_eq!(timeout[0].level, tracing::Level::INFO);
}

// EVT-001, EVT-002: a key removed from the allowlist completes the handshake, so its
// `auth_failed` names it.
#[tokio::test]
async fn a_key_removed_from_the_allowlist_logs_auth_failed_with_the_key() {
    let (capture, _guard) = Capture::start();
    let server = TestServer::start().await;
    server.server.remove_client(&server.agent.public_key());
    let mut raw =
        RawClient::handshake(&server.url, server.client_config(&server.agent, Vec::new())).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::AUTH_FAILED));
    let failed = capture.wait_events("server", "auth_failed", 1).await;
    assert_eq!(failed[0].field("reason"), "unknown_client");
    assert_eq!(
        failed[0].field("peer_key"),
        server.agent.public_key().to_string()
    );
    assert_eq!(failed[0].field("session_id"), hex(&raw.session_id()));
}

//! Threat: resource exhaustion with huge frames (THREATS.md §11). A WebSocket message
//! larger than the largest record (64 KiB body + 16-byte header by default) is
//! refused by the WebSocket layer as soon as its length is known, before it is
//! buffered, and the connection is closed with MESSAGE_TOO_BIG (1009) — whatever
//! its kind, before the handshake as well as inside an authenticated session, where
//! an authenticated CLOSE precedes it. A message of exactly the limit is processed.
//!
//! Clauses: TRN-025, TRN-026, TRN-027, REC-016, HS-007, CLS-001.

mod common;

use common::{close_frame_code, raw_socket, within, TestServer};
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::record::{RecordHeader, RecordType};
use toolwire_server::protocol::upgrade::max_frame_len;
use toolwire_server::protocol::{CloseCode, ConnectionLimits};

fn oversize() -> Vec<u8> {
    vec![0x42; max_frame_len(&ConnectionLimits::default()) + 1]
}

#[tokio::test]
async fn oversize_message_before_the_handshake_closes_with_1009() {
    let server = TestServer::start().await;
    let mut socket = raw_socket(&server.url).await;
    within("send", socket.send(WsMessage::binary(oversize())))
        .await
        .expect("the attacker's frame is written");
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::MESSAGE_TOO_BIG.0)
    );
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn oversize_message_in_a_session_closes_with_1009() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    raw.send_record(oversize()).await;
    let closed = raw.expect_close().await;
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);
    assert_eq!(closed.record, Some(CloseCode::MESSAGE_TOO_BIG));
    assert_eq!(closed.frame, Some(CloseCode::MESSAGE_TOO_BIG.0));
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn oversize_text_message_closes_with_1009_not_1003() {
    let server = TestServer::start().await;
    let mut socket = raw_socket(&server.url).await;
    let text = "a".repeat(max_frame_len(&ConnectionLimits::default()) + 1);
    within("send", socket.send(WsMessage::text(text)))
        .await
        .expect("the attacker's frame is written");
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::MESSAGE_TOO_BIG.0)
    );
}

#[tokio::test]
async fn message_of_exactly_the_limit_is_judged_as_a_record() {
    let server = TestServer::start().await;
    let mut socket = raw_socket(&server.url).await;
    let limit = max_frame_len(&ConnectionLimits::default());
    // A well-formed record 1 header with the largest body allowed: it passes the
    // size checks and is refused for its content (record 1 must carry 32 bytes).
    let mut record = RecordHeader::handshake(RecordType::HANDSHAKE_1)
        .encode()
        .to_vec();
    record.resize(limit, 0x42);
    within("send", socket.send(WsMessage::binary(record)))
        .await
        .expect("written");
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::HANDSHAKE_FAILED.0)
    );
}

//! Threat: protocol confusion through the WebSocket layer (THREATS.md §12). toolwire
//! carries only binary messages, one record each; a text message (what a generic or
//! browser client would send) closes the connection with UNSUPPORTED_DATA (1003),
//! before the handshake as well as inside an authenticated session.
//!
//! Clauses: TRN-024, CLS-001, CLS-002.

mod common;

use common::{close_frame_code, raw_socket, within, TestServer};
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::CloseCode;

#[tokio::test]
async fn text_frame_before_the_handshake_closes_with_1003() {
    let server = TestServer::start().await;
    let mut socket = raw_socket(&server.url).await;
    within(
        "send",
        socket.send(WsMessage::text(r#"{"tool":"echo","args":{"text":"hi"}}"#)),
    )
    .await
    .expect("written");
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::UNSUPPORTED_DATA.0)
    );
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn text_frame_in_a_session_closes_with_1003() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    within("send", raw.socket.send(WsMessage::text("hello")))
        .await
        .expect("written");
    let closed = raw.expect_close().await;
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);
    assert_eq!(closed.record, Some(CloseCode::UNSUPPORTED_DATA));
    assert_eq!(closed.frame, Some(CloseCode::UNSUPPORTED_DATA.0));
    assert_eq!(server.probes.total_runs(), 0);
}

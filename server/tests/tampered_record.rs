//! Threat: message injection and tampering by an on-path hop (THREATS.md §5). Every
//! record after the handshake is AEAD-sealed with its header as associated data; an
//! edited or truncated sealed REQUEST fails authentication, and one failure is
//! fatal: the server closes with DECRYPT_FAILED (4003), announced in an
//! authenticated CLOSE record, and the tool never runs.
//!
//! Clauses: REC-028, REC-031, CLS-001, CLS-002.

mod common;

use common::TestServer;
use toolwire_server::protocol::record::HEADER_LEN;
use toolwire_server::protocol::{CloseCode, Message};

async fn tampered_request_closes_with_decrypt_failed(tamper: impl FnOnce(&mut Vec<u8>)) {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "pay 10"}));
    let mut record = raw.seal(Message::Request(call));
    tamper(&mut record);
    raw.send_record(record).await;
    let closed = raw.expect_close().await;
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);
    assert_eq!(closed.record, Some(CloseCode::DECRYPT_FAILED));
    assert_eq!(closed.frame, Some(CloseCode::DECRYPT_FAILED.0));
    assert_eq!(server.probes.echo.runs(), 0);
}

#[tokio::test]
async fn flipped_ciphertext_byte_closes_with_decrypt_failed() {
    tampered_request_closes_with_decrypt_failed(|record| record[HEADER_LEN] ^= 0x01).await;
}

#[tokio::test]
async fn flipped_tag_byte_closes_with_decrypt_failed() {
    tampered_request_closes_with_decrypt_failed(|record| {
        let last = record.len() - 1;
        record[last] ^= 0x80;
    })
    .await;
}

#[tokio::test]
async fn truncated_record_closes_with_decrypt_failed() {
    tampered_request_closes_with_decrypt_failed(|record| {
        record.pop();
    })
    .await;
}

#[tokio::test]
async fn untampered_record_of_the_same_session_executes() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "pay 10"}));
    raw.send(Message::Request(call)).await;
    raw.expect_response(1).await;
    assert_eq!(server.probes.echo.runs(), 1);
}

//! Threat: replay and reordering (THREATS.md §6, §7). An attacker who captured a
//! sealed REQUEST record re-sends it, immediately or after later records, or sends a
//! record ahead of its turn; the record layer's sequence numbers reject it and close
//! with REPLAY_DETECTED (4004), so the call runs exactly once. Re-sending a whole
//! call (same request id) in a fresh record is answered from the at-most-once table
//! without running the tool again.
//!
//! Clauses: REC-025, REC-026, RPL-008, AMO-012, AMO-020, ENV-005.

mod common;

use common::{RawClient, TestServer};
use toolwire_server::protocol::{CloseCode, Message};

fn args() -> serde_json::Value {
    serde_json::json!({"text": "transfer"})
}

async fn replay_closes(raw: &mut RawClient, record: Vec<u8>) {
    raw.send_record(record).await;
    let closed = raw.expect_close().await;
    assert!(closed.messages.is_empty(), "{:?}", closed.messages);
    assert_eq!(closed.record, Some(CloseCode::REPLAY_DETECTED));
    assert_eq!(closed.frame, Some(CloseCode::REPLAY_DETECTED.0));
}

#[tokio::test]
async fn record_sent_twice_executes_once_then_closes_with_replay_detected() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &args());
    let record = raw.seal(Message::Request(call));
    raw.send_record(record.clone()).await;
    raw.expect_response(1).await;
    assert_eq!(server.probes.echo.runs(), 1);

    replay_closes(&mut raw, record).await;
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn older_record_after_newer_ones_closes_with_replay_detected() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let first = raw.seal(Message::Request(raw.request(1, "echo", &args())));
    let second = raw.seal(Message::Request(raw.request(2, "echo", &args())));
    raw.send_record(first.clone()).await;
    raw.expect_response(1).await;
    raw.send_record(second).await;
    raw.expect_response(2).await;

    replay_closes(&mut raw, first).await;
    assert_eq!(server.probes.echo.runs(), 2);
}

#[tokio::test]
async fn record_from_the_future_closes_with_replay_detected() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let _skipped = raw.seal(Message::Request(raw.request(1, "echo", &args())));
    let ahead = raw.seal(Message::Request(raw.request(2, "echo", &args())));
    replay_closes(&mut raw, ahead).await;
    assert_eq!(server.probes.echo.runs(), 0);
}

#[tokio::test]
async fn whole_call_resent_in_a_fresh_record_is_answered_from_cache() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(7, "echo", &args());
    raw.send(Message::Request(call.clone())).await;
    let first = raw.expect_response(7).await;
    raw.send(Message::Request(call)).await;
    let again = raw.expect_response(7).await;
    assert_eq!(again.result, first.result);
    assert_eq!(server.probes.echo.runs(), 1);
}

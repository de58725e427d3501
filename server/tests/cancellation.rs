//! Threat: orphaned work and late answers (THREATS.md §7). A caller that gives up
//! (drops the call, hits its deadline, or sends CANCEL) must stop the tool: the
//! handler's future is dropped before it completes, the call is answered exactly
//! once (CANCELLED to the raw CANCEL; DEADLINE_EXCEEDED to the client that timed
//! out or whose deadline passed on the server) and no late RESPONSE is ever
//! delivered; the session keeps working.
//!
//! Clauses: AMO-021, AMO-023, AMO-024, AMO-025, MSG-012.

mod common;

use common::{rpc_code, within, TestServer};
use futures_util::StreamExt as _;
use std::time::Duration;
use toolwire_client::{CallError, CallOptions, StreamEvent};
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{ErrorCode, Message};

/// Long enough for a stray late answer to show up.
const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn raw_cancel_stops_the_handler_and_is_answered_once_with_cancelled() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    raw.send(Message::Request(raw.request(
        1,
        "slow",
        &serde_json::json!({}),
    )))
    .await;
    server.probes.slow.wait_runs(1).await;

    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    let error = raw.expect_error(1).await;
    assert_eq!(error.error_code(), ErrorCode::CANCELLED);
    server.probes.slow.wait_cancelled(1).await;
    assert_eq!(server.probes.slow.completed(), 0);

    // A second CANCEL of the same call has nothing left to cancel: no second answer.
    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    // The session still works, and nothing else is delivered.
    raw.send(Message::Request(raw.request(
        2,
        "echo",
        &serde_json::json!({"text": "next"}),
    )))
    .await;
    raw.expect_response(2).await;
    raw.expect_silence(QUIET).await;

    // The cancelled id is answered from the at-most-once table, never run again.
    raw.send(Message::Request(raw.request(
        1,
        "slow",
        &serde_json::json!({}),
    )))
    .await;
    let error = raw.expect_error(1).await;
    assert_eq!(error.error_code(), ErrorCode::CANCELLED);
    assert_eq!(server.probes.slow.runs(), 1);
}

#[tokio::test]
async fn deadline_passing_on_the_server_stops_the_handler_with_deadline_exceeded() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let mut call = raw.request(1, "slow", &serde_json::json!({}));
    call.deadline_ms = Some(100);
    raw.send(Message::Request(call)).await;
    let error = raw.expect_error(1).await;
    assert_eq!(error.error_code(), ErrorCode::DEADLINE_EXCEEDED);
    server.probes.slow.wait_cancelled(1).await;
    assert_eq!(server.probes.slow.completed(), 0);
    raw.expect_silence(QUIET).await;
}

#[tokio::test]
async fn call_deadline_cancels_the_handler_and_the_session_keeps_working() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    let outcome = within(
        "call with a deadline",
        session.call_with(
            "slow",
            &serde_json::json!({}),
            CallOptions::with_timeout(Duration::from_millis(100)),
        ),
    )
    .await;
    assert_eq!(outcome, Err(CallError::DeadlineExceeded));
    assert_eq!(
        outcome.unwrap_err().code(),
        Some(ErrorCode::DEADLINE_EXCEEDED)
    );
    server.probes.slow.wait_cancelled(1).await;
    assert_eq!(server.probes.slow.completed(), 0);

    let echoed = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "next"})),
    )
    .await
    .expect("session still works");
    assert_eq!(echoed, serde_json::json!({"text": "next"}));
    assert_eq!(session.close_code(), None);
}

#[tokio::test]
async fn dropping_the_call_future_cancels_the_handler() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    let args = serde_json::json!({});
    let call = session.call("slow", &args);
    let abandoned = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(abandoned.is_err(), "the slow call returned: {abandoned:?}");
    server.probes.slow.wait_cancelled(1).await;
    assert_eq!(server.probes.slow.runs(), 1);
    assert_eq!(server.probes.slow.completed(), 0);

    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "next"})),
    )
    .await
    .expect("session still works");
}

#[tokio::test]
async fn dropping_a_stream_cancels_the_streaming_handler() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    let mut stream = session
        .stream("ticker", &serde_json::json!({"count": 1000}))
        .expect("stream starts");
    for expected in 0..2 {
        let event = within("stream item", stream.next())
            .await
            .expect("an item")
            .expect("not an error");
        assert_eq!(event, StreamEvent::Item(serde_json::json!(expected)));
    }
    drop(stream);
    server.probes.ticker.wait_cancelled(1).await;
    assert_eq!(server.probes.ticker.completed(), 0);

    let outcome = within(
        "call",
        session.call("ticker", &serde_json::json!({"count": "x"})),
    )
    .await;
    assert_eq!(rpc_code(outcome), ErrorCode::INVALID_ARGUMENT);
    let done = within(
        "call",
        session.call("ticker", &serde_json::json!({"count": 2})),
    )
    .await
    .expect("session still works");
    assert_eq!(done, serde_json::json!(2));
}

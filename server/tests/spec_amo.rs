//! At-most-once calls over real sockets (spec section 14): request ids of the real
//! client, duplicates of a running call, cancellation, and calls whose outcome the
//! server never learnt.

mod common;

use common::{within, TestServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{ErrorCode, Message};
use toolwire_server::Tool;

/// Long enough for a stray answer to show up.
const QUIET: Duration = Duration::from_millis(200);

/// Clauses: AMO-006 — the real client gives every call of its lineage its own
/// request id: many concurrent calls each run once and each get their own result
/// (a reused id would be answered from the cache with another call's result).
#[tokio::test]
async fn the_client_never_reuses_a_request_id() {
    let server = TestServer::start().await;
    let session = Arc::new(server.agent_session().await);
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let session = session.clone();
            tokio::spawn(async move {
                let args = serde_json::json!({"text": format!("call {n}")});
                let result = session.call("echo", &args).await;
                (args, result)
            })
        })
        .collect();
    for call in calls {
        let (args, result) = within("call", call).await.expect("task");
        assert_eq!(result, Ok(args));
    }
    assert_eq!(server.probes.echo.runs(), 20);
}

/// Clauses: AMO-010, AMO-021 — a REQUEST whose id is executing does not run again,
/// retry or not; the call still ends with exactly one answer.
#[tokio::test]
async fn a_duplicate_of_a_running_call_does_not_run() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "slow", &serde_json::json!({}));
    raw.send(Message::Request(call.clone())).await;
    server.probes.slow.wait_runs(1).await;
    let mut retry = call.clone();
    retry.retry = true;
    raw.send(Message::Request(call)).await;
    raw.send(Message::Request(retry)).await;
    raw.expect_silence(QUIET).await;
    assert_eq!(server.probes.slow.runs(), 1);

    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    assert_eq!(raw.expect_error(1).await.error_code(), ErrorCode::CANCELLED);
    raw.expect_silence(QUIET).await;
    assert_eq!(server.probes.slow.runs(), 1);
}

/// Clauses: AMO-023, AMO-024, AMO-022 — a streaming call cancelled mid-stream is
/// answered CANCELLED (message `cancelled`) at once and its handler stopped; no
/// STREAM_ITEM or RESPONSE follows, and a retry of the id gets CANCELLED from the
/// cache without running again.
#[tokio::test]
async fn a_cancelled_stream_stops_and_is_answered_cancelled_ever_after() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(4, "ticker", &serde_json::json!({"count": 500}));
    raw.send(Message::Request(call.clone())).await;
    for index in 0..2 {
        match raw.expect_message().await {
            Message::StreamItem(item) if item.id == 4 => assert_eq!(item.index, index),
            other => panic!("expected STREAM_ITEM, got {other:?}"),
        }
    }
    raw.send(Message::Cancel(Cancel { id: 4 })).await;
    let error = loop {
        match raw.expect_message().await {
            // Items already on their way before the CANCEL arrived.
            Message::StreamItem(item) if item.id == 4 => {}
            Message::Error(error) if error.id == Some(4) => break error,
            other => panic!("expected CANCELLED, got {other:?}"),
        }
    };
    assert_eq!(error.error_code(), ErrorCode::CANCELLED);
    assert_eq!(error.message, "cancelled");
    server.probes.ticker.wait_cancelled(1).await;
    raw.expect_silence(QUIET).await;

    let mut retry = call;
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    let again = raw.expect_error(4).await;
    assert_eq!(again.error_code(), ErrorCode::CANCELLED);
    assert_eq!(again.message, "cancelled");
    raw.expect_silence(QUIET).await;
    assert_eq!(server.probes.ticker.runs(), 1);
    assert_eq!(server.probes.ticker.completed(), 0);
}

/// Clauses: AMO-025 — a CANCEL for an id that is not in flight (never sent, or
/// already answered) gets no reply at all, and the session goes on.
#[tokio::test]
async fn cancel_of_a_call_not_in_flight_is_not_answered() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    raw.send(Message::Cancel(Cancel { id: 99 })).await;
    raw.expect_silence(QUIET).await;
    raw.send(Message::Request(raw.request(
        1,
        "echo",
        &serde_json::json!({"text": "a"}),
    )))
    .await;
    raw.expect_response(1).await;
    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    raw.expect_silence(QUIET).await;
    // The answered call stays answered: its retry is its cached result.
    raw.send(Message::Request(raw.request(
        1,
        "echo",
        &serde_json::json!({"text": "a"}),
    )))
    .await;
    raw.expect_response(1).await;
    assert_eq!(server.probes.echo.runs(), 1);
}

/// Clauses: AMO-026, AMO-021 — a handler that crashes (panics) ends its call: the
/// caller gets one ERROR, nothing is cached, and a retry of the id is answered
/// RESULT_UNAVAILABLE without the tool running again.
#[tokio::test]
async fn a_crashed_handler_caches_nothing() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let crash = Tool::new(
        "crash",
        "Fails mid-way.",
        serde_json::json!({"type": "object"}),
        move |_, _| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run > 0 {
                    panic!("the tool crashed mid-way");
                }
                Ok(serde_json::Value::Null)
            }
        },
    );
    let server = TestServer::start_with(|builder| builder.tool(crash)).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "crash", &serde_json::json!({}));
    raw.send(Message::Request(call.clone())).await;
    let error = raw.expect_error(1).await;
    assert_eq!(error.error_code(), ErrorCode::INTERNAL);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let mut retry = call;
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The connection and its other calls are unaffected.
    raw.send(Message::Request(raw.request(
        2,
        "echo",
        &serde_json::json!({"text": "b"}),
    )))
    .await;
    raw.expect_response(2).await;
}

/// Clauses: AMO-019, AMO-012 — a retry of an answered id that names another call
/// (other arguments, another tool) is refused FAILED_PRECONDITION (9) instead of
/// being answered with the first call's cached result; nothing runs, and the true
/// retry still gets the cached result.
#[tokio::test]
async fn a_reused_id_naming_another_call_is_refused_not_answered_from_the_cache() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "pay alice"}));
    raw.send(Message::Request(call.clone())).await;
    let original = raw.expect_response(1).await;

    let mut other_args = raw.request(1, "echo", &serde_json::json!({"text": "pay mallory"}));
    other_args.retry = true;
    raw.send(Message::Request(other_args)).await;
    let refused = raw.expect_error(1).await;
    assert_eq!(refused.error_code(), ErrorCode::FAILED_PRECONDITION);

    let mut other_tool = raw.request(1, "ticker", &serde_json::json!({"count": 1}));
    other_tool.retry = true;
    raw.send(Message::Request(other_tool)).await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::FAILED_PRECONDITION
    );

    let mut retry = call;
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    assert_eq!(raw.expect_response(1).await.result, original.result);
    raw.expect_silence(QUIET).await;
    assert_eq!(server.probes.echo.runs(), 1);
    assert_eq!(server.probes.ticker.runs(), 0);
}

//! Error codes a server sends (spec section 15), also when a tool handler chooses
//! them.

mod common;

use common::TestServer;
use toolwire_server::protocol::{ErrorCode, Message};
use toolwire_server::{Tool, ToolError};

/// A tool that fails with the code given in its `code` argument.
fn failing_tool() -> Tool {
    Tool::new(
        "fail",
        "Fails with the requested code.",
        serde_json::json!({
            "type": "object",
            "properties": {"code": {"type": "integer", "minimum": 0}},
            "required": ["code"]
        }),
        |args, _| async move {
            let code = args["code"].as_u64().unwrap_or(0);
            Err(ToolError::new(
                ErrorCode(u32::try_from(code).unwrap_or(u32::MAX)),
                "the tool says no",
            ))
        },
    )
}

/// Clauses: ERR-001 — only codes of the spec's table go on the wire: a handler's
/// code of the table is sent as is, any other (an unassigned gRPC code, a private
/// number) as UNKNOWN, also when answered again from the cache.
#[tokio::test]
async fn handler_codes_outside_the_table_are_sent_as_unknown() {
    let server = TestServer::start_with(|builder| builder.tool(failing_tool())).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let cases = [
        (ErrorCode::NOT_FOUND.0, ErrorCode::NOT_FOUND),
        (
            ErrorCode::FAILED_PRECONDITION.0,
            ErrorCode::FAILED_PRECONDITION,
        ),
        (6, ErrorCode::UNKNOWN),
        (12, ErrorCode::UNKNOWN),
        (0, ErrorCode::UNKNOWN),
        (4242, ErrorCode::UNKNOWN),
    ];
    for (id, (code, sent)) in (1u64..).zip(cases) {
        let call = raw.request(id, "fail", &serde_json::json!({"code": code}));
        raw.send(Message::Request(call.clone())).await;
        let error = raw.expect_error(id).await;
        assert_eq!(error.error_code(), sent, "handler code {code}");
        assert_eq!(error.message, "the tool says no");
        let mut retry = call;
        retry.retry = true;
        raw.send(Message::Request(retry)).await;
        assert_eq!(raw.expect_error(id).await.error_code(), sent);
    }
}

/// Clauses: ERR-005 — every RESOURCE_EXHAUSTED carries `retry_after_ms`, also one a
/// tool handler produced (it gets the server's retry hint), first and from the cache.
#[tokio::test]
async fn every_resource_exhausted_carries_retry_after() {
    let server = TestServer::start_with(|builder| builder.tool(failing_tool())).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(
        1,
        "fail",
        &serde_json::json!({"code": ErrorCode::RESOURCE_EXHAUSTED.0}),
    );
    raw.send(Message::Request(call.clone())).await;
    let error = raw.expect_error(1).await;
    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(error.retry_after_ms, Some(100));
    let mut retry = call;
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    let again = raw.expect_error(1).await;
    assert_eq!(again.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(again.retry_after_ms, Some(100));
    // Other codes carry none.
    raw.send(Message::Request(raw.request(
        2,
        "fail",
        &serde_json::json!({"code": ErrorCode::NOT_FOUND.0}),
    )))
    .await;
    assert_eq!(raw.expect_error(2).await.retry_after_ms, None);
}

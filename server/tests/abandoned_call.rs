//! Threat: duplicate execution across reconnects (THREATS.md §7). A connection drops
//! while one of its calls is running. The call is stopped and ends with an unknown
//! outcome (abandoned): when the client resumes its lineage on a new connection and
//! retries the id, the server neither runs it again nor leaves the retry unanswered,
//! but answers RESULT_UNAVAILABLE; a call that had completed is answered from the
//! cache.
//!
//! Clauses: AMO-003, AMO-004, AMO-012, AMO-014, AMO-020, AMO-021, AMO-026.

mod common;

use common::{RawClient, TestServer};
use toolwire_server::protocol::{ErrorCode, Message};

#[tokio::test]
async fn call_running_when_the_connection_drops_is_abandoned_not_rerun() {
    let server = TestServer::start().await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let session_id = first.session_id();
    let mut lineage = [0u8; 16];
    lineage.copy_from_slice(&session_id[..16]);

    let done = first.request(1, "echo", &serde_json::json!({"text": "done"}));
    first.send(Message::Request(done.clone())).await;
    let answered = first.expect_response(1).await;
    first
        .send(Message::Request(first.request(
            2,
            "slow",
            &serde_json::json!({}),
        )))
        .await;
    server.probes.slow.wait_runs(1).await;
    drop(first);
    // The server stops the call as soon as it sees the connection go.
    server.probes.slow.wait_cancelled(1).await;

    let config = server
        .client_config(&server.agent, Vec::new())
        .with_lineage(lineage);
    let mut second = RawClient::handshake(&server.url, config).await;
    second.expect_cap_grant().await;
    let mut retry = second.request(2, "slow", &serde_json::json!({}));
    retry.retry = true;
    second.send(Message::Request(retry)).await;
    assert_eq!(
        second.expect_error(2).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    let mut again = second.request(1, "echo", &serde_json::json!({"text": "done"}));
    again.retry = true;
    second.send(Message::Request(again)).await;
    assert_eq!(second.expect_response(1).await.result, answered.result);

    assert_eq!(server.probes.slow.runs(), 1);
    assert_eq!(server.probes.slow.completed(), 0);
    assert_eq!(server.probes.echo.runs(), 1);
}

//! Threat: duplicate execution across reconnects (THREATS.md §7). A connection drops
//! while one of its calls is running. The call goes on without its connection: when
//! the client resumes its lineage on a new connection and retries the id, the server
//! does not run it again; the retry waits for the running call (AMO-011), and a
//! CANCEL sent on the new connection stops it and is answered there; a call that had
//! completed is answered from the cache.
//!
//! Clauses: AMO-003, AMO-004, AMO-011, AMO-012, AMO-020, AMO-021, AMO-023.

mod common;

use common::{RawClient, TestServer};
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{ErrorCode, Message};

#[tokio::test]
async fn call_running_when_the_connection_drops_is_not_rerun_and_can_be_cancelled_on_resume() {
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

    let config = server
        .client_config(&server.agent, Vec::new())
        .with_lineage(lineage);
    let mut second = RawClient::handshake(&server.url, config).await;
    second.expect_cap_grant().await;
    let mut retry = second.request(2, "slow", &serde_json::json!({}));
    retry.retry = true;
    second.send(Message::Request(retry.clone())).await;
    // Still running: the retry waits for it, and is not run a second time.
    second
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
    second.send(Message::Cancel(Cancel { id: 2 })).await;
    assert_eq!(
        second.expect_error(2).await.error_code(),
        ErrorCode::CANCELLED
    );
    server.probes.slow.wait_cancelled(1).await;
    second.send(Message::Request(retry)).await;
    assert_eq!(
        second.expect_error(2).await.error_code(),
        ErrorCode::CANCELLED
    );
    let mut again = second.request(1, "echo", &serde_json::json!({"text": "done"}));
    again.retry = true;
    second.send(Message::Request(again)).await;
    assert_eq!(second.expect_response(1).await.result, answered.result);

    assert_eq!(server.probes.slow.runs(), 1);
    assert_eq!(server.probes.slow.completed(), 0);
    assert_eq!(server.probes.echo.runs(), 1);
}

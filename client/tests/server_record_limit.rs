//! REC-015: the server announces a smaller `max_record_body` than the client's own
//! limit. A call too large for it is refused locally, before anything is sent, instead
//! of being sent and getting the whole connection closed with MESSAGE_TOO_BIG; the
//! session goes on.

mod common;

use common::{limits, within, Harness};
use toolwire_client::CallError;

#[tokio::test]
async fn a_request_larger_than_the_server_accepts_is_refused_locally() {
    let harness = Harness::new().await;
    let mut limits = limits();
    limits.connection.max_record_body = 2048;
    let instance = harness.start_server(limits, |builder| builder).await;
    let session = harness.connect(harness.client()).await;

    let large = serde_json::json!({"text": "x".repeat(4096)});
    let refused = within("large call", session.call("echo", &large)).await;
    match refused {
        Err(CallError::Encoding(message)) => {
            assert!(message.contains("2048"), "{message}");
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    assert_eq!(instance.tools.echo.runs(), 0);

    let small = serde_json::json!({"text": "x".repeat(512)});
    let answered = within("small call", session.call("echo", &small)).await;
    assert_eq!(answered, Ok(small));
    assert_eq!(session.close_code(), None);
    assert_eq!(harness.proxy.accepted(), 1, "the connection was never lost");
}

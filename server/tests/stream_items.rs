//! Threat: a confused or reordered result stream (THREATS.md §6). A streaming call's
//! STREAM_ITEMs are numbered from 0 in the order the tool produced them, all of them
//! precede the final RESPONSE, and nothing of the call follows it.
//!
//! Clauses: MSG-008, MSG-009.

mod common;

use common::TestServer;
use std::time::Duration;
use toolwire_server::protocol::Message;

#[tokio::test]
async fn stream_items_are_numbered_from_zero_and_precede_the_response() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    for id in [1, 2] {
        raw.send(Message::Request(raw.request(
            id,
            "ticker",
            &serde_json::json!({"count": 3}),
        )))
        .await;
        for expected in 0..3u64 {
            match raw.expect_message().await {
                Message::StreamItem(item) => {
                    assert_eq!((item.id, item.index), (id, expected));
                    let value: serde_json::Value =
                        rmp_serde::from_slice(&item.data).expect("msgpack item");
                    assert_eq!(value, serde_json::json!(expected));
                }
                other => panic!("expected STREAM_ITEM {expected} of {id}, got {other:?}"),
            }
        }
        let response = raw.expect_response(id).await;
        let value: serde_json::Value =
            rmp_serde::from_slice(&response.result).expect("msgpack result");
        assert_eq!(value, serde_json::json!(3));
    }
    raw.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(server.probes.ticker.completed(), 2);
}

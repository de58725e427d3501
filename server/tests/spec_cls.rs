//! Spec section 16, "Close codes" (CLS), through the real drivers: an endpoint
//! that closes a session sends its authenticated CLOSE record first, then a
//! WebSocket close frame with the same code and (for failures) no reason, and then
//! nothing; an endpoint that receives a CLOSE does not answer it with one.

mod spec_support;

use spec_support::*;
use std::time::Duration;
use toolwire_client::Client;
use toolwire_server::protocol::message::{KeyUpdate, Response};
use toolwire_server::protocol::{CloseCode, Identity, Message};

/// Clauses: CLS-001, CLS-002, CLS-003, CLS-004, CLS-011 — for each failure the
/// server detects in a session, the client receives the authenticated CLOSE with
/// the failure's code, then a close frame with the same code and an empty reason,
/// and nothing after.
#[tokio::test]
async fn a_server_failure_close_is_a_close_record_then_a_matching_frame() {
    let served = Served::start().await;
    type Forge = fn(&mut RawClient) -> Vec<Vec<u8>>;
    let cases: Vec<(&str, Forge, CloseCode)> = vec![
        (
            "tampered record",
            |raw| {
                let mut record = raw.seal(Message::Request(raw.request(
                    1,
                    "echo",
                    &serde_json::json!({}),
                )));
                let last = record.len() - 1;
                record[last] ^= 1;
                vec![record]
            },
            CloseCode::DECRYPT_FAILED,
        ),
        (
            "replayed record",
            |raw| {
                let record = raw.seal(Message::Request(raw.request(
                    1,
                    "slow",
                    &serde_json::json!({}),
                )));
                vec![record.clone(), record]
            },
            CloseCode::REPLAY_DETECTED,
        ),
        (
            "a KEY_UPDATE skipping epochs",
            |raw| vec![raw.seal(Message::KeyUpdate(KeyUpdate { epoch: 7 }))],
            CloseCode::PROTOCOL_VIOLATION,
        ),
        (
            "a kind only servers send",
            |raw| {
                vec![raw.seal(Message::Response(Response {
                    id: 1,
                    result: vec![0xc0].into(),
                    signature: None,
                }))]
            },
            CloseCode::PROTOCOL_VIOLATION,
        ),
    ];
    for (name, forge, code) in cases {
        let mut raw = RawClient::session(&served.url, served.agent_config()).await;
        for record in forge(&mut raw) {
            raw.send_record(record).await;
        }
        let seen = raw.until_end().await;
        assert_eq!(
            seen,
            [
                Received::CloseRecord(code),
                Received::CloseFrame(Some((code.0, String::new())))
            ],
            "{name}"
        );
    }
}

/// Clauses: CLS-006 — a server that receives the client's CLOSE answers with no
/// CLOSE record: only the close frame, with the client's code.
#[tokio::test]
async fn a_close_is_not_answered_with_a_close() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    raw.conn.close(CloseCode::NORMAL, "");
    raw.flush().await;
    assert_eq!(
        raw.until_end().await,
        [Received::CloseFrame(Some((
            CloseCode::NORMAL.0,
            String::new()
        )))]
    );
}

/// Clauses: CLS-001, CLS-002 — the real client, closing its session, sends its
/// authenticated CLOSE record (NORMAL, 1000) and then a close frame with the same
/// code, and nothing else.
#[tokio::test]
async fn the_client_closes_with_a_close_record_then_a_matching_frame() {
    let server_identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let (url, log) = fake_tool_server(
        server_identity.clone(),
        agent.public_key(),
        Duration::from_secs(3),
    )
    .await;
    let session = within(
        "connect",
        Client::builder()
            .identity(agent)
            .pin_server(server_identity.public_key())
            .connect(&url),
    )
    .await
    .expect("connects to the fake server");
    session.close();
    let log = within("fake server", log).await.expect("fake server");
    assert_eq!(
        log,
        [
            FromClient::Handshake,
            FromClient::Handshake,
            FromClient::CloseRecord(CloseCode::NORMAL),
            FromClient::CloseFrame(Some((CloseCode::NORMAL.0, String::new())))
        ]
    );
}

//! Threat: server impersonation (THREATS.md §4): a man in the middle, or a misrouted
//! connection to another tool server. The client pins the server identity key; a
//! server proving any other identity in Noise message 2 fails the handshake with
//! AUTH_FAILED (4001) before the client sends its own identity proof or any call.
//!
//! Clauses: ID-003, HS-015, HS-016, HS-017.

mod common;

use common::{within, TestServer};
use toolwire_client::ConnectError;
use toolwire_server::protocol::{CloseCode, Identity};

#[tokio::test]
async fn client_pinning_another_key_fails_the_handshake_with_auth_failed() {
    let server = TestServer::start().await;
    let impostor_key = Identity::generate(&mut rand_core::OsRng).public_key();
    let outcome = within(
        "connect",
        toolwire_client::Client::builder()
            .identity(server.agent.clone())
            .pin_server(impostor_key)
            .connect(&server.url),
    )
    .await;
    match outcome {
        Err(ConnectError::Handshake { code, .. }) => assert_eq!(code, CloseCode::AUTH_FAILED),
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);

    // Pinning the right key works, so the refusal was the pin's doing.
    let session = server.agent_session().await;
    assert_eq!(session.server_key(), Some(server.server_key));
}

//! Threat: endpoint forwarding and relays (THREATS.md §3). An attacker relays a
//! client's connection to a backend other than the one the client meant, or the
//! client dials a URL the server is not configured with. The endpoint URL is bound
//! byte for byte into the Noise prologue, so the two transcripts differ and the
//! handshake fails with HANDSHAKE_FAILED (4000) on the client — even though the very
//! same socket is reached and the server's identity key is pinned.
//!
//! Clauses: HS-003, HS-004, HS-005, HS-010.

mod common;

use common::{within, TestServer};
use toolwire_client::ConnectError;
use toolwire_server::protocol::CloseCode;

async fn handshake_fails_when_dialing(server: &TestServer, url: &str) {
    let outcome = within("connect", server.client(&server.agent).connect(url)).await;
    match outcome {
        Err(ConnectError::Handshake { code, .. }) => {
            assert_eq!(code, CloseCode::HANDSHAKE_FAILED, "{url}");
        }
        other => panic!("expected HANDSHAKE_FAILED for {url}, got {other:?}"),
    }
}

#[tokio::test]
async fn client_binding_another_url_fails_the_handshake() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    handshake_fails_when_dialing(&server, &format!("ws://127.0.0.1:{port}/other")).await;
    handshake_fails_when_dialing(&server, &format!("ws://localhost:{port}/toolwire")).await;
    handshake_fails_when_dialing(&server, &format!("ws://127.0.0.1:{port}/toolwire/")).await;
    assert_eq!(server.probes.total_runs(), 0);

    // The configured URL works on the same socket.
    let session = server.agent_session().await;
    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "ok"})),
    )
    .await
    .expect("echo");
}

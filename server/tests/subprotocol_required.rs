//! Threat: upgrade confusion (THREATS.md §2, §10). A client that does not speak
//! toolwire, or a cross-protocol attacker reusing a generic WebSocket client, is
//! refused at the HTTP upgrade unless it offers exactly the `toolwire.v1`
//! subprotocol: 400, no socket, no handshake work. A valid offer among others is
//! echoed as exactly `toolwire.v1`.
//!
//! Clauses: TRN-014, TRN-015, TRN-018.

mod common;

use common::{refused_status, try_upgrade, upgrade_request, TestServer};
use toolwire_server::protocol::SUBPROTOCOL;

#[tokio::test]
async fn upgrades_without_the_toolwire_subprotocol_are_refused_with_400() {
    let server = TestServer::start().await;
    let missing = upgrade_request(&server.url, None, None);
    assert_eq!(refused_status(missing).await, 400);
    for offered in [
        "toolwire.v2",
        "Toolwire.V1",
        "toolwire",
        "chat",
        "toolwire.v1x",
        "",
    ] {
        let request = upgrade_request(&server.url, None, Some(offered));
        assert_eq!(refused_status(request).await, 400, "offered {offered:?}");
    }
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn toolwire_v1_among_other_offers_is_echoed_alone() {
    let server = TestServer::start().await;
    let request = upgrade_request(&server.url, None, Some("chat, toolwire.v1 ,mqtt"));
    let (_socket, response) = try_upgrade(request).await.expect("upgrade accepted");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|value| value.as_bytes()),
        Some(SUBPROTOCOL.as_bytes())
    );
}

//! Threat: cross-site WebSocket hijacking (THREATS.md §1). A web page of a foreign
//! origin, running in the victim's browser, opens a socket to the tool server hoping
//! to ride whatever the browser attaches. The Origin allowlist refuses the upgrade
//! with a bare HTTP 403 before any handshake state or cryptographic work exists: no
//! WebSocket is opened, so no record can be sent, no tool runs, and the refused
//! attempts leave no pre-authentication slot behind. An allowed origin is upgraded.
//!
//! Clauses: TRN-005, TRN-006, TRN-007, TRN-008, TRN-009, TRN-010, TRN-012, TRN-013,
//! TRN-015, TRN-016, TRN-018.

mod common;

use common::{refusal, refused_status, try_upgrade, upgrade_request, within, TestServer};
use std::time::Duration;
use toolwire_client::ConnectError;
use toolwire_server::protocol::SUBPROTOCOL;
use toolwire_server::Limits;

const ALLOWED: &str = "https://app.example";

#[tokio::test]
async fn foreign_origins_are_refused_with_403_and_leave_nothing_behind() {
    let mut limits = Limits::default();
    // One pre-auth slot per IP: a slot leaked by a refused upgrade would lock out
    // the legitimate agent below.
    limits.max_unauthenticated_per_ip = 1;
    let server =
        TestServer::start_with(|builder| builder.allow_origin(ALLOWED).limits(limits)).await;

    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example/",
        "https://app.example, https://evil.example",
        "null",
        "",
    ] {
        let request = upgrade_request(&server.url, Some(origin), Some(SUBPROTOCOL));
        let refused = refusal(request).await;
        assert_eq!(refused.status().as_u16(), 403, "Origin: {origin:?}");
        // Nothing beyond the status line explains the refusal.
        assert!(
            refused.body().as_ref().is_none_or(Vec::is_empty),
            "{:?}",
            refused.body()
        );
    }
    // The origin is judged before the subprotocol: failing both is an origin failure.
    let request = upgrade_request(&server.url, Some("https://evil.example"), None);
    assert_eq!(refused_status(request).await, 403);

    // The real client, made to look like the hostile page, gets the same refusal.
    let refused = within(
        "connect",
        server
            .client(&server.agent)
            .origin("https://evil.example")
            .connect(&server.url),
    )
    .await;
    match refused {
        Err(ConnectError::WebSocket(message)) => assert!(message.contains("403"), "{message}"),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);

    // Nothing was left behind: the agent's connection finds a free pre-auth slot (the
    // server may take a moment to drop the last refused connection's slot).
    let session = within("agent connects after the refusals", async {
        loop {
            match server.client(&server.agent).connect(&server.url).await {
                Ok(session) => return session,
                // The per-IP refusal (429 or 503) while the slot is still being freed.
                Err(ConnectError::WebSocket(message))
                    if message.contains("429") || message.contains("503") =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("agent could not connect: {error}"),
            }
        }
    })
    .await;
    let echoed = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "hi"})),
    )
    .await
    .expect("echo");
    assert_eq!(echoed, serde_json::json!({"text": "hi"}));
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn allowed_origin_is_upgraded_and_authenticates() {
    let server = TestServer::start_with(|builder| builder.allow_origin(ALLOWED)).await;
    let (_socket, response) = try_upgrade(upgrade_request(
        &server.url,
        Some(ALLOWED),
        Some(SUBPROTOCOL),
    ))
    .await
    .expect("allowed origin is upgraded");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|value| value.as_bytes()),
        Some(SUBPROTOCOL.as_bytes())
    );

    // An allowed origin still has to prove an allowed identity; with one it works.
    let session = within(
        "connect",
        server
            .client(&server.agent)
            .origin(ALLOWED)
            .connect(&server.url),
    )
    .await
    .expect("browser-origin agent connects");
    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "ok"})),
    )
    .await
    .expect("echo");
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn missing_origin_is_refused_when_the_server_requires_one() {
    let server =
        TestServer::start_with(|builder| builder.allow_origin(ALLOWED).require_origin()).await;
    let request = upgrade_request(&server.url, None, Some(SUBPROTOCOL));
    assert_eq!(refused_status(request).await, 403);
    assert_eq!(server.probes.total_runs(), 0);
}

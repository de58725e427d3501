//! Threat: privilege creep (THREATS.md §8, §16). A client allowed only some tools
//! calls another one, or one that does not exist, probing for names. Every call is
//! authorized again, so the call is refused with PERMISSION_DENIED — the same answer
//! for a real tool as for a made-up one — and the tool never runs; the granted tool
//! keeps working.
//!
//! Clauses: GRT-035, AUTHZ-001, AUTHZ-008, AUTHZ-009.

mod common;

use common::{rpc_code, within, TestServer};
use toolwire_server::protocol::{ErrorCode, Identity};

#[tokio::test]
async fn calls_to_tools_outside_the_allowance_are_denied_and_never_run() {
    let restricted = Identity::generate(&mut rand_core::OsRng);
    let server = TestServer::start_with(|builder| {
        builder.allow_client_tools(restricted.public_key(), ["echo"])
    })
    .await;
    let session = server.session(&restricted).await;
    assert_eq!(session.granted_tools(), ["echo"]);

    for (tool, args) in [
        ("slow", serde_json::json!({})),
        ("ticker", serde_json::json!({"count": 1})),
        ("no_such_tool", serde_json::json!({})),
    ] {
        let outcome = within("call", session.call(tool, &args)).await;
        assert_eq!(rpc_code(outcome), ErrorCode::PERMISSION_DENIED, "{tool}");
    }
    assert_eq!(server.probes.slow.runs(), 0);
    assert_eq!(server.probes.ticker.runs(), 0);

    let echoed = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "ok"})),
    )
    .await
    .expect("granted tool works");
    assert_eq!(echoed, serde_json::json!({"text": "ok"}));
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn tools_not_requested_in_the_handshake_are_not_granted() {
    let server = TestServer::start().await;
    let session = within(
        "connect",
        server
            .client(&server.agent)
            .request_tools(["echo"])
            .connect(&server.url),
    )
    .await
    .expect("connects");
    assert_eq!(session.granted_tools(), ["echo"]);
    let outcome = within("call", session.call("slow", &serde_json::json!({}))).await;
    assert_eq!(rpc_code(outcome), ErrorCode::PERMISSION_DENIED);
    assert_eq!(server.probes.slow.runs(), 0);
}

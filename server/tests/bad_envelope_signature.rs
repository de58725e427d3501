//! Threat: repudiation and forged calls (THREATS.md §14). Every REQUEST envelope
//! must carry the client identity's Ed25519 signature over the session id, request
//! id, tool, argument bytes and grant id. A call with a signature by another key,
//! with a signature lifted from another call, with garbage or a truncated signature,
//! or with none at all is refused with UNAUTHENTICATED and never runs, even though
//! the record itself is correctly sealed. The refusal does not consume the request
//! id. A server that switched signatures off still verifies a signature that is
//! present.
//!
//! Clauses: ENV-006, ENV-008, AUTHZ-018, AUTHZ-019, ID-005, AMO-018.

mod common;

use common::{RawClient, TestServer};
use toolwire_server::protocol::message::Request;
use toolwire_server::protocol::{ErrorCode, Identity, Message};

fn args() -> serde_json::Value {
    serde_json::json!({"text": "delete everything"})
}

async fn refused_as_unauthenticated(raw: &mut RawClient, request: Request) {
    let id = request.id;
    raw.send(Message::Request(request)).await;
    let error = raw.expect_error(id).await;
    assert_eq!(error.error_code(), ErrorCode::UNAUTHENTICATED, "{error:?}");
}

#[tokio::test]
async fn requests_without_a_valid_envelope_signature_are_unauthenticated() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;

    // Signed by someone else's key, over exactly these fields.
    let mut forged = raw.request(1, "echo", &args());
    let other = Identity::generate(&mut rand_core::OsRng);
    let session_id = raw.session_id();
    let signature = toolwire_server::protocol::envelope::RequestFields {
        session_id: &session_id,
        request_id: 1,
        tool: "echo",
        args: &forged.args,
        grant_id: "",
    }
    .sign(&other);
    forged.signature = Some(signature.to_vec().into());
    refused_as_unauthenticated(&mut raw, forged).await;

    // The agent's genuine signature, lifted from a harmless call onto another one.
    let harmless = raw.request(1, "echo", &serde_json::json!({"text": "hello"}));
    let mut lifted = raw.request(1, "echo", &args());
    lifted.signature = harmless.signature;
    refused_as_unauthenticated(&mut raw, lifted).await;

    // Garbage and a truncated genuine signature.
    let mut garbage = raw.request(1, "echo", &args());
    garbage.signature = Some(vec![0x5a; 64].into());
    refused_as_unauthenticated(&mut raw, garbage).await;
    let mut truncated = raw.request(1, "echo", &args());
    if let Some(signature) = truncated.signature.as_mut() {
        signature.pop();
    }
    refused_as_unauthenticated(&mut raw, truncated).await;

    // No signature while the server requires them.
    let mut unsigned = raw.request(1, "echo", &args());
    unsigned.signature = None;
    refused_as_unauthenticated(&mut raw, unsigned).await;

    assert_eq!(server.probes.echo.runs(), 0);

    // Request id 1 was never consumed: the genuine call executes.
    raw.send(Message::Request(raw.request(1, "echo", &args())))
        .await;
    raw.expect_response(1).await;
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn server_without_signatures_still_rejects_a_bad_one() {
    let server =
        TestServer::start_with(|builder| builder.dangerous().disable_envelope_signatures().done())
            .await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let mut bad = raw.request(1, "echo", &args());
    bad.signature = Some(vec![0x5a; 64].into());
    refused_as_unauthenticated(&mut raw, bad).await;
    assert_eq!(server.probes.echo.runs(), 0);

    let mut unsigned = raw.request(2, "echo", &args());
    unsigned.signature = None;
    raw.send(Message::Request(unsigned)).await;
    let response = raw.expect_response(2).await;
    assert_eq!(response.signature, None);
    assert_eq!(server.probes.echo.runs(), 1);
}

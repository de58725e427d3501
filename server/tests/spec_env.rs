//! Signed envelopes over real sockets (spec section 10): the client signs its
//! requests, the server signs every response (afresh when it answers from the
//! at-most-once cache on a later connection), and a client that signs does not
//! accept an unsigned response.

mod common;

use common::{rpc_code, within, RawClient, TestServer};
use toolwire_client::CallError;
use toolwire_server::protocol::envelope::{RequestFields, ResponseFields};
use toolwire_server::protocol::message::{Request, Response};
use toolwire_server::protocol::{ErrorCode, Identity, IdentityKey, Message};

fn args() -> serde_json::Value {
    serde_json::json!({"text": "pay 10 EUR"})
}

/// The request hash a RESPONSE to `request` binds to, in session `session_id`.
fn request_hash(session_id: &[u8; 32], request: &Request) -> [u8; 32] {
    RequestFields {
        session_id,
        request_id: request.id,
        tool: &request.tool,
        args: &request.args,
        grant_id: request.grant_id.as_deref().unwrap_or(""),
    }
    .hash()
}

/// Whether `response` carries a valid signature by `server` answering `request` in
/// session `session_id`.
fn response_verifies(
    server: &IdentityKey,
    session_id: &[u8; 32],
    request: &Request,
    response: &Response,
) -> bool {
    let Some(signature) = response.signature.as_deref() else {
        return false;
    };
    ResponseFields {
        session_id,
        request_id: response.id,
        request_hash: &request_hash(session_id, request),
        result: &response.result,
    }
    .verify(server, signature)
    .is_ok()
}

/// Clauses: ENV-003, AUTHZ-019 — the real client signs every REQUEST, so a server
/// that requires envelope signatures runs its calls; the same client with request
/// signatures switched off is refused UNAUTHENTICATED and the tool never runs.
#[tokio::test]
async fn the_client_signs_its_requests() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    let result = within("signed call", session.call("echo", &args()))
        .await
        .expect("a signed call runs");
    assert_eq!(result, args());
    assert_eq!(server.probes.echo.runs(), 1);

    let unsigned = within(
        "client connect",
        server
            .client(&server.agent)
            .dangerous()
            .disable_request_signatures()
            .done()
            .connect(&server.url),
    )
    .await
    .expect("connects");
    let outcome = within("unsigned call", unsigned.call("echo", &args())).await;
    assert_eq!(rpc_code(outcome), ErrorCode::UNAUTHENTICATED);
    assert_eq!(server.probes.echo.runs(), 1);
}

/// Clauses: ENV-004, ENV-002 — every RESPONSE carries the server identity's
/// signature over `PAE("toolwire/1 response", session id, request id, request hash,
/// result)`, bound to this session and to the request answered.
#[tokio::test]
async fn the_server_signs_every_response_for_its_session_and_request() {
    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let session_id = raw.session_id();
    for id in [1, 2, 1 << 40] {
        let request = raw.request(id, "echo", &serde_json::json!({"text": format!("n{id}")}));
        raw.send(Message::Request(request.clone())).await;
        let response = raw.expect_response(id).await;
        assert_eq!(response.signature.as_ref().map(|s| s.len()), Some(64));
        assert!(response_verifies(
            &server.server_key,
            &session_id,
            &request,
            &response
        ));
        // Not under another session, another request, or another key.
        assert!(!response_verifies(
            &server.server_key,
            &[0; 32],
            &request,
            &response
        ));
        let mut other = request.clone();
        other.tool = "ticker".into();
        assert!(!response_verifies(
            &server.server_key,
            &session_id,
            &other,
            &response
        ));
        assert!(!response_verifies(
            &server.agent.public_key(),
            &session_id,
            &request,
            &response
        ));
    }
}

/// Clauses: ENV-005, AMO-002, AMO-004, AMO-012, AMO-001 — a call made on a session
/// without `resume` belongs to the lineage named by the first 16 bytes of its session
/// id. A later connection resuming that lineage and retrying the id gets the same
/// result bytes from the cache, without the tool running again, in a RESPONSE signed
/// afresh for the new session and the REQUEST just received. Another client naming
/// the same lineage id has a lineage of its own.
#[tokio::test]
async fn a_cached_answer_is_signed_afresh_for_the_resuming_session() {
    let other = Identity::generate(&mut rand_core::OsRng);
    let other_key = other.public_key();
    let server = TestServer::start_with(|builder| builder.allow_client(other_key)).await;

    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let first_id = first.session_id();
    let call = first.request(7, "echo", &args());
    first.send(Message::Request(call.clone())).await;
    let original = first.expect_response(7).await;
    assert_eq!(server.probes.echo.runs(), 1);
    drop(first);

    let mut lineage = [0; 16];
    lineage.copy_from_slice(&first_id[..16]);
    let config = server
        .client_config(&server.agent, Vec::new())
        .with_lineage(lineage);
    let mut second = RawClient::handshake(&server.url, config).await;
    second.expect_cap_grant().await;
    let second_id = second.session_id();
    assert_ne!(second_id, first_id);
    let mut retry = second.request(7, "echo", &args());
    retry.retry = true;
    second.send(Message::Request(retry.clone())).await;
    let again = second.expect_response(7).await;
    assert_eq!(again.result, original.result);
    assert_eq!(server.probes.echo.runs(), 1, "answered from the cache");
    assert!(response_verifies(
        &server.server_key,
        &second_id,
        &retry,
        &again
    ));
    assert!(!response_verifies(
        &server.server_key,
        &first_id,
        &call,
        &again
    ));
    assert_ne!(again.signature, original.signature);

    // The same lineage id under another client key is another lineage: its id 7 is
    // a call of its own, which runs.
    let config = server
        .client_config(&other, Vec::new())
        .with_lineage(lineage);
    let mut stranger = RawClient::handshake(&server.url, config).await;
    stranger.expect_cap_grant().await;
    let theirs = stranger.request(7, "echo", &serde_json::json!({"text": "mine"}));
    stranger.send(Message::Request(theirs)).await;
    let response = stranger.expect_response(7).await;
    assert_ne!(response.result, original.result);
    assert_eq!(server.probes.echo.runs(), 2);
}

/// Clauses: ENV-007 — a client that signs its requests fails the call, instead of
/// delivering the result, when the RESPONSE carries no signature (here from a server
/// that switched envelope signatures off); a client that does not sign either
/// accepts it (ENV-008).
#[tokio::test]
async fn a_signing_client_refuses_an_unsigned_response() {
    let server =
        TestServer::start_with(|builder| builder.dangerous().disable_envelope_signatures().done())
            .await;
    let session = server.agent_session().await;
    let outcome = within("call", session.call("echo", &args())).await;
    assert_eq!(outcome, Err(CallError::BadResponseSignature));
    assert_eq!(server.probes.echo.runs(), 1);

    let unsigned = within(
        "client connect",
        server
            .client(&server.agent)
            .dangerous()
            .disable_request_signatures()
            .done()
            .connect(&server.url),
    )
    .await
    .expect("connects");
    let result = within("unsigned call", unsigned.call("echo", &args())).await;
    assert_eq!(result, Ok(args()));
}

//! Threat: an operator wants only holders of an upgrade token (issued by its own web
//! front end, say) to reach the handshake at all, so that strangers cannot even make
//! the server do handshake work (THREATS.md §11). The admission hook (TRN-021) runs
//! on the upgrade request after the Origin and subprotocol checks and before any
//! handshake work: without the token the upgrade is refused with a bare HTTP 401 and
//! no tool runs; with it the ordinary handshake and calls work. The hook does not
//! replace the Origin check: a foreign origin is refused with 403 even with the
//! token (TRN-015 order, the hook comes after). Its acceptance grants no authority
//! (TRN-020): the admitted agent still authenticates in the handshake.
//!
//! Clauses: TRN-021, TRN-020, TRN-006, TRN-015, TRN-016.

mod common;

use common::{refused_status, try_upgrade, upgrade_request, within, RawClient, TestServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request as HttpRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use toolwire_server::protocol::{CloseCode, Message, SUBPROTOCOL};
use toolwire_server::{AdmissionRefusal, AdmissionRequest};

const ALLOWED: &str = "https://app.example";

/// Admits only requests for `/toolwire` carrying `X-Upgrade-Token: secret`.
fn token_hook(
    calls: Arc<AtomicUsize>,
) -> impl Fn(&AdmissionRequest<'_>) -> Result<(), AdmissionRefusal> + Send + Sync + 'static {
    move |request| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert_eq!(request.path(), "/toolwire");
        assert!(request.peer().ip().is_loopback());
        match request.header("x-upgrade-token") {
            Some("secret") => Ok(()),
            _ => Err(AdmissionRefusal::Unauthorized),
        }
    }
}

/// An upgrade request with `origin`, the toolwire subprotocol and, when given, the
/// upgrade token.
fn request(url: &str, origin: Option<&str>, token: Option<&str>) -> HttpRequest {
    let mut request = upgrade_request(url, origin, Some(SUBPROTOCOL));
    if let Some(token) = token {
        request.headers_mut().insert(
            "X-Upgrade-Token",
            HeaderValue::from_str(token).expect("header value"),
        );
    }
    request
}

#[tokio::test]
async fn the_admission_hook_refuses_upgrades_without_the_token_with_401() {
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = token_hook(calls.clone());
    let server =
        TestServer::start_with(|builder| builder.allow_origin(ALLOWED).admission_hook(hook)).await;

    // No token, or a wrong one: 401, before any handshake.
    assert_eq!(refused_status(request(&server.url, None, None)).await, 401);
    assert_eq!(
        refused_status(request(&server.url, None, Some("guess"))).await,
        401
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The real client sends no token: refused too.
    assert!(
        within("connect", server.client(&server.agent).connect(&server.url))
            .await
            .is_err()
    );
    assert_eq!(server.probes.total_runs(), 0);

    // The Origin check comes first: a foreign origin is 403 even with the token,
    // and the hook is not consulted.
    let calls_before = calls.load(Ordering::SeqCst);
    let foreign = request(&server.url, Some("https://evil.example"), Some("secret"));
    assert_eq!(refused_status(foreign).await, 403);
    // So does the subprotocol check: a request without it is 400, token or not.
    let mut no_subprotocol = server.url.as_str().into_client_request().expect("URL");
    no_subprotocol
        .headers_mut()
        .insert("X-Upgrade-Token", HeaderValue::from_static("secret"));
    assert_eq!(refused_status(no_subprotocol).await, 400);
    assert_eq!(calls.load(Ordering::SeqCst), calls_before);
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn with_the_token_the_ordinary_handshake_and_calls_work() {
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = token_hook(calls.clone());
    let server =
        TestServer::start_with(|builder| builder.allow_origin(ALLOWED).admission_hook(hook)).await;

    for origin in [None, Some(ALLOWED)] {
        let (socket, response) = try_upgrade(request(&server.url, origin, Some("secret")))
            .await
            .expect("upgrade with the token is accepted");
        assert_eq!(response.status().as_u16(), 101);
        let config = server.client_config(&server.agent, Vec::new());
        let mut raw = RawClient::handshake_on(socket, config).await;
        raw.expect_cap_grant().await;
        let call = raw.request(1, "echo", &serde_json::json!({"text": "admitted"}));
        raw.send(Message::Request(call)).await;
        let answer = raw.expect_response(1).await;
        let echoed: serde_json::Value = rmp_serde::from_slice(&answer.result).expect("msgpack");
        assert_eq!(echoed, serde_json::json!({"text": "admitted"}));
    }
    assert_eq!(server.probes.echo.runs(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn admission_grants_no_authority() {
    let server = TestServer::start_with(|builder| {
        builder.admission_hook(|request: &AdmissionRequest<'_>| {
            match request.header("X-Upgrade-Token") {
                Some("secret") => Ok(()),
                _ => Err(AdmissionRefusal::Forbidden),
            }
        })
    })
    .await;
    assert_eq!(refused_status(request(&server.url, None, None)).await, 403);

    // Admitted, but an identity the server does not allow: the handshake fails and
    // nothing runs (TRN-020).
    let stranger = toolwire_server::protocol::Identity::generate(&mut rand_core::OsRng);
    let (socket, _) = try_upgrade(request(&server.url, None, Some("secret")))
        .await
        .expect("admitted");
    let mut raw =
        RawClient::handshake_on(socket, server.client_config(&stranger, Vec::new())).await;
    let closed = raw.expect_close().await;
    assert!(
        !closed
            .messages
            .iter()
            .any(|message| matches!(message, Message::CapGrant(_))),
        "a stranger got a CAP_GRANT: {closed:?}"
    );
    assert_eq!(closed.frame, Some(CloseCode::AUTH_FAILED.0));
    assert_eq!(server.probes.total_runs(), 0);
}

//! Threat: a client that trusts an operator, not each server key, must still refuse
//! every server the operator did not certify — over a real socket, before it sends its
//! own identity (handshake message 3) or any call.
//!
//! The server presents its operator certificate in ServerHello (spec section 3.1); the
//! client (`trust_operator`, no pin) accepts a certified server and refuses, with
//! AUTH_FAILED (4001), an expired certificate, one from another operator, and one
//! restricted to another endpoint. The server refuses at build time to present a
//! certificate of another key.
//!
//! Clauses: ID-003, ID-010, ID-011, ID-013, ID-014, ID-015, HS-015.

mod common;

use common::{echo_tool, within, Probe};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use toolwire_client::{Client, ConnectError};
use toolwire_server::protocol::certificate::{CertificateError, ServerCertificateBuilder};
use toolwire_server::protocol::error::AuthFailure;
use toolwire_server::protocol::{CloseCode, Identity, IdentityKey};
use toolwire_server::{BuildError, Server};

struct CertifiedServer {
    url: String,
    echo: Arc<Probe>,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for CertifiedServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// A certificate builder for `server` valid for the next hour.
fn valid_for_an_hour(server: IdentityKey) -> ServerCertificateBuilder {
    ServerCertificateBuilder::new(server, OffsetDateTime::now_utc() + time::Duration::hours(1))
}

/// A server on loopback presenting the certificate `certify` builds for its identity
/// key, signed by `operator`; it allows `agent`.
async fn certified_server(
    operator: &Identity,
    agent: &Identity,
    certify: impl FnOnce(IdentityKey) -> ServerCertificateBuilder,
) -> CertifiedServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let identity = Identity::generate(&mut rand_core::OsRng);
    let certificate = certify(identity.public_key())
        .sign(operator)
        .expect("certificate");
    let echo = Arc::new(Probe::default());
    let server = Server::builder(identity, url.clone())
        .allow_client(agent.public_key())
        .certificate(certificate)
        .tool(echo_tool("Returns its arguments.", &echo))
        .build()
        .expect("server with its own certificate");
    let serving = tokio::spawn(async move {
        let _ = server.serve_listener(listener).await;
    });
    CertifiedServer { url, echo, serving }
}

async fn connect_trusting(
    operator: &Identity,
    agent: &Identity,
    url: &str,
) -> Result<toolwire_client::Session, ConnectError> {
    within(
        "connect",
        Client::builder()
            .identity(agent.clone())
            .trust_operator(operator.public_key())
            .connect(url),
    )
    .await
}

fn assert_auth_failed(outcome: Result<toolwire_client::Session, ConnectError>) {
    match outcome {
        Err(ConnectError::Handshake { error, code }) => {
            assert_eq!(code, CloseCode::AUTH_FAILED);
            assert_eq!(
                error,
                toolwire_server::protocol::Error::AuthFailed(AuthFailure::UntrustedServer)
            );
        }
        Err(other) => panic!("expected AUTH_FAILED, got {other}"),
        Ok(_) => panic!("expected AUTH_FAILED, the client accepted the server"),
    }
}

#[tokio::test]
async fn a_client_trusting_the_operator_calls_a_certified_server_without_a_pin() {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let server = certified_server(&operator, &agent, valid_for_an_hour).await;
    let session = connect_trusting(&operator, &agent, &server.url)
        .await
        .expect("certified server accepted");
    let result = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "hi"})),
    )
    .await
    .expect("call");
    assert_eq!(result, serde_json::json!({"text": "hi"}));
    assert_eq!(server.echo.runs(), 1);
}

#[tokio::test]
async fn a_certificate_from_another_operator_is_refused_before_any_call() {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let rogue_operator = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let server = certified_server(&rogue_operator, &agent, valid_for_an_hour).await;
    assert_auth_failed(connect_trusting(&operator, &agent, &server.url).await);
    assert_eq!(server.echo.runs(), 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    // Expired an hour ago: far beyond the client's 30 s clock-skew tolerance.
    let server = certified_server(&operator, &agent, |key| {
        ServerCertificateBuilder::new(key, OffsetDateTime::now_utc() - time::Duration::hours(1))
    })
    .await;
    assert_auth_failed(connect_trusting(&operator, &agent, &server.url).await);
    assert_eq!(server.echo.runs(), 0);
}

#[tokio::test]
async fn a_certificate_restricted_to_another_endpoint_is_refused() {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let server = certified_server(&operator, &agent, |key| {
        valid_for_an_hour(key).endpoints(["wss://tools.example.com/toolwire"])
    })
    .await;
    assert_auth_failed(connect_trusting(&operator, &agent, &server.url).await);
    assert_eq!(server.echo.runs(), 0);
}

#[tokio::test]
async fn a_server_refuses_to_present_a_certificate_of_another_key() {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let other = Identity::generate(&mut rand_core::OsRng).public_key();
    let certificate = valid_for_an_hour(other)
        .sign(&operator)
        .expect("certificate");
    let outcome = Server::builder(
        Identity::generate(&mut rand_core::OsRng),
        "ws://127.0.0.1:1/",
    )
    .allow_client(Identity::generate(&mut rand_core::OsRng).public_key())
    .certificate(certificate)
    .build();
    assert!(matches!(
        outcome,
        Err(BuildError::Certificate(CertificateError::WrongServer))
    ));
}

//! Spec section 4, "Handshake" (HS), through the real drivers: the endpoint a
//! server binds is its configured public URL, and a failed handshake ends with a
//! bare WebSocket close frame (code, empty reason) and nothing else, on the server
//! and on the client.

mod spec_support;

use spec_support::*;
use std::time::Duration;
use tokio::net::TcpListener;
use toolwire_client::{Client, ConnectError};
use toolwire_server::protocol::{CloseCode, Identity, Message};

/// Clauses: HS-005, HS-004 — a server behind a TLS-terminating proxy binds the
/// public URL it is configured with, not the address it listens on: a client bound
/// to the public URL completes the handshake over the loopback socket, while the
/// real client dialing the loopback URL (and binding it) fails with
/// HANDSHAKE_FAILED (4000).
#[tokio::test]
async fn the_server_binds_its_configured_public_url() {
    let public = "wss://tools.example/toolwire";
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let served = Served::start_on(listener, public.to_owned(), |builder| builder).await;
    let config = served.config_for(&served.agent, public);
    let mut raw = RawClient::handshake(&served.url, config).await;
    assert!(matches!(
        raw.next().await,
        Received::Message(Message::CapGrant(_))
    ));

    let outcome = within(
        "connect",
        Client::builder()
            .identity(served.agent.clone())
            .pin_server(served.key())
            .connect(&served.url),
    )
    .await;
    match outcome {
        Err(ConnectError::Handshake { code, .. }) => assert_eq!(code, CloseCode::HANDSHAKE_FAILED),
        other => panic!("expected HANDSHAKE_FAILED, got {other:?}"),
    }
}

/// Clauses: HS-034 — a handshake the server fails ends with a WebSocket close
/// frame carrying the code and an empty reason, and nothing else (no record): for
/// an unsupported version in record 1, and for an identity it does not admit.
#[tokio::test]
async fn a_failed_handshake_ends_with_a_bare_close_frame_from_the_server() {
    let served = Served::start().await;
    let mut raw = RawClient {
        socket: raw_socket(&served.url).await,
        conn: toolwire_server::protocol::Connection::client(
            std::sync::Arc::new(served.agent_config()),
            std::time::Instant::now(),
            &mut rand_core::OsRng,
        ),
        identity: served.agent.clone(),
    };
    let mut record_1 = raw.conn.poll_transmit().expect("record 1");
    record_1[0] = 2;
    raw.send_record(record_1).await;
    assert_eq!(
        raw.until_end().await,
        [Received::CloseFrame(Some((
            CloseCode::VERSION_UNSUPPORTED.0,
            String::new()
        )))]
    );

    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut raw =
        RawClient::handshake(&served.url, served.config_for(&stranger, &served.url)).await;
    assert_eq!(
        raw.until_end().await,
        [Received::CloseFrame(Some((
            CloseCode::AUTH_FAILED.0,
            String::new()
        )))]
    );
}

/// Clauses: HS-034, HS-017, HS-015 — a client that does not accept the server's
/// identity ends the connection with a close frame carrying AUTH_FAILED (4001) and
/// an empty reason, without sending record 3 or anything else.
#[tokio::test]
async fn a_failed_handshake_ends_with_a_bare_close_frame_from_the_client() {
    let fake = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let (url, log) = fake_tool_server(fake, agent.public_key(), Duration::from_secs(3)).await;
    let outcome = within(
        "connect",
        Client::builder()
            .identity(agent)
            .pin_server(Identity::generate(&mut rand_core::OsRng).public_key())
            .connect(&url),
    )
    .await;
    match outcome {
        Err(ConnectError::Handshake { code, .. }) => assert_eq!(code, CloseCode::AUTH_FAILED),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    let log = within("fake server", log).await.expect("fake server");
    assert_eq!(
        log,
        [
            FromClient::Handshake,
            FromClient::CloseFrame(Some((CloseCode::AUTH_FAILED.0, String::new())))
        ]
    );
}

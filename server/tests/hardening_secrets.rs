//! Key and secret hygiene (THREATS.md §15, issue 10 item 5): a full session — the
//! handshake, calls across several rekeys in both directions, a session authorized by
//! a grant, a hand-driven client whose Noise static secret the test knows, and a
//! tampered record — runs with every log level captured (TRACE, all targets), and no
//! secret appears in the log in any spelling: identity seeds (hex, upper-case hex,
//! base64, base64url, byte lists), the identity-file text, Noise static secrets,
//! session keys and grant tokens. The `Debug` output of every type that holds a
//! secret (Identity, ClientConfig, ServerConfig, Connection, Transport, Session,
//! Server) shows none either. Key-holding types zeroize on drop, checked at compile
//! time through their `ZeroizeOnDrop` implementations (no memory peeking).
//!
//! Clauses: EVT-004, ID-009.

mod common;
mod event_capture;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::{echo_tool, within, Probe, RawClient};
use event_capture::Capture;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use toolwire_client::Client;
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::message::CapRequest;
use toolwire_server::protocol::testing::{
    client_static_secret_for_testing_only, server_static_secret_for_testing_only,
    transport_from_keys_for_testing_only,
};
use toolwire_server::protocol::{ClientConfig, ConnectionLimits, Identity, Message, ServerConfig};
use toolwire_server::{Limits, Server};
use zeroize::ZeroizeOnDrop;

/// A named secret.
struct Secret {
    what: String,
    bytes: Vec<u8>,
    /// For a secret that is text (a grant token): the text itself.
    verbatim: Option<String>,
}

impl Secret {
    fn new(what: &str, bytes: &[u8]) -> Self {
        Self {
            what: what.to_owned(),
            bytes: bytes.to_vec(),
            verbatim: None,
        }
    }

    fn text(what: &str, text: &str) -> Self {
        Self {
            what: what.to_owned(),
            bytes: text.as_bytes().to_vec(),
            verbatim: Some(text.to_owned()),
        }
    }

    /// Every spelling of the secret worth searching for: hex (both cases), the four
    /// base64 alphabets/paddings, and the `Debug` byte list — each cut to a prefix
    /// long enough to be unique (12 bytes), so a partial leak is caught too.
    fn spellings(&self) -> Vec<String> {
        let prefix = &self.bytes[..self.bytes.len().min(12)];
        let hex: String = prefix.iter().map(|byte| format!("{byte:02x}")).collect();
        let list = format!("{:?}", &self.bytes[..self.bytes.len().min(8)]);
        let mut spellings = vec![
            hex.clone(),
            hex.to_uppercase(),
            list.trim_end_matches(']').to_owned(),
        ];
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            // 16 characters of the encoding of the whole secret: the first 12 bytes.
            let encoded = engine.encode(&self.bytes);
            spellings.push(encoded[..16].to_owned());
        }
        spellings.extend(self.verbatim.clone());
        spellings
    }
}

/// Fails the test when `text` (named `where_`) contains any spelling of any secret.
fn assert_no_secret(where_: &str, text: &str, secrets: &[Secret]) {
    for secret in secrets {
        for spelled in secret.spellings() {
            assert!(
                !text.contains(&spelled),
                "{} appears in {where_} as `{spelled}`:\n{text}",
                secret.what
            );
        }
    }
}

fn seed_secret(what: &str, identity: &Identity) -> Secret {
    Secret::new(what, identity.to_seed().as_slice())
}

fn grant_token(issuer: &Identity, holder: &Identity, server: &Identity) -> String {
    GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.public_key().to_bytes(),
        "hygiene-grant",
        OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .tools(["echo"])
    .sign(issuer.signing_key())
    .expect("grant signs")
}

/// Connection limits that rekey every 4 records sent.
fn rekeying_connection_limits() -> ConnectionLimits {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after_records = 4;
    limits
}

/// EVT-004, ID-009: no secret in a TRACE log of a whole session, nor in any Debug
/// output.
#[tokio::test]
async fn a_whole_session_logged_at_trace_and_every_debug_output_hold_no_secret() {
    let (capture, _guard) = Capture::start();

    let server_identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let token = grant_token(&issuer, &holder, &server_identity);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let mut limits = Limits::default();
    limits.connection = rekeying_connection_limits();
    let probe = Arc::new(Probe::default());
    let server = Server::builder(server_identity.clone(), url.clone())
        .allow_client(agent.public_key())
        .trust_grant_issuer(issuer.public_key())
        .tool(echo_tool("Returns its arguments.", &probe))
        .limits(limits)
        .build()
        .expect("server builds");
    let serving = tokio::spawn({
        let server = server.clone();
        async move {
            let _ = server.serve_listener(listener).await;
        }
    });

    // The real client, rekeying every 4 records too: 20 calls cross several epochs in
    // both directions.
    let session = within(
        "connect",
        Client::builder()
            .identity(agent.clone())
            .pin_server(server_identity.public_key())
            .limits(rekeying_connection_limits())
            .connect(&url),
    )
    .await
    .expect("agent connects");
    for index in 0..20 {
        let text = format!("call {index}");
        let answer = within(
            "call",
            session.call("echo", &serde_json::json!({"text": text})),
        )
        .await
        .expect("call succeeds");
        assert_eq!(answer["text"], text);
    }

    // A session authorized only by a grant.
    let granted = within(
        "grant connect",
        Client::builder()
            .identity(holder.clone())
            .pin_server(server_identity.public_key())
            .present_grant(token.clone())
            .connect(&url),
    )
    .await
    .expect("holder connects with its grant");
    within(
        "granted call",
        granted.call("echo", &serde_json::json!({"text": "g"})),
    )
    .await
    .expect("granted call succeeds");

    // A hand-driven client whose Noise static secret is known; it calls once, then
    // sends a tampered record (the server logs decrypt_failed and closes).
    let config = ClientConfig::new(
        agent.clone(),
        vec![server_identity.public_key()],
        url.clone(),
        &mut rand_core::OsRng,
    )
    .with_cap_request(CapRequest {
        tools: vec!["*".into()],
        grants: Vec::new(),
    });
    let client_static = client_static_secret_for_testing_only(&config);
    let mut raw = RawClient::handshake(&url, config).await;
    let _ = raw.expect_message().await;
    // Six calls: the server, rekeying every 4 records, sends KEY_UPDATE on the way.
    for id in 1..=6 {
        let request = raw.request(id, "echo", &serde_json::json!({"text": "raw"}));
        raw.send(Message::Request(request)).await;
        let _ = raw.expect_response(id).await;
    }
    let epoch = raw
        .conn
        .transport()
        .map_or(0, |transport| transport.receive_epoch());
    assert!(
        epoch >= 1,
        "the server rekeyed during the logged session: epoch {epoch}"
    );
    let mut tampered = raw.seal(Message::Request(raw.request(
        7,
        "echo",
        &serde_json::json!({"text": "x"}),
    )));
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    raw.send_record(tampered).await;
    let closed = raw.expect_close().await;
    assert!(
        closed.frame.is_some() || closed.record.is_some(),
        "{closed:?}"
    );
    capture.wait_events("server", "decrypt_failed", 1).await;

    // A server configuration built here, so its static secret is known too.
    let server_config =
        ServerConfig::new(server_identity.clone(), url.clone(), &mut rand_core::OsRng);
    let server_static = server_static_secret_for_testing_only(&server_config);

    // A transport from known session keys.
    let send_key = [0x5a_u8; 32];
    let receive_key: [u8; 32] =
        std::array::from_fn(|index| u8::try_from(index).unwrap_or(0) ^ 0xa7);
    let transport = transport_from_keys_for_testing_only(
        send_key,
        receive_key,
        [0x11; 32],
        &ConnectionLimits::default(),
    );

    let file_text = agent.to_file_text();
    let secrets = vec![
        seed_secret("the server's identity seed", &server_identity),
        seed_secret("the agent's identity seed", &agent),
        seed_secret("the grant issuer's identity seed", &issuer),
        seed_secret("the grant holder's identity seed", &holder),
        Secret::new("the client's Noise static secret", &client_static),
        Secret::new("a server Noise static secret", &server_static),
        Secret::new("a session send key", &send_key),
        Secret::new("a session receive key", &receive_key),
        // The seed line of the identity file (base64url, also among the seed's
        // spellings) and the grant token: whole, and its signature (its tail).
        Secret::text(
            "the agent's identity file seed line",
            file_text.lines().nth(1).unwrap_or(""),
        ),
        Secret::text("the grant token", &token),
        Secret::text("the grant token's signature", &token[token.len() - 40..]),
    ];

    let debug_outputs = [
        (
            "Identity",
            format!("{agent:?} {server_identity:?} {issuer:?} {holder:?}"),
        ),
        (
            "ClientConfig",
            format!("{:?}", raw_config_debug(&agent, &server_identity, &url)),
        ),
        ("ServerConfig", format!("{server_config:?}")),
        ("Connection", format!("{:?}", raw.conn)),
        ("Transport", format!("{transport:?}")),
        ("Session", format!("{session:?} {granted:?}")),
        ("Server", format!("{server:?}")),
    ];
    for (what, text) in &debug_outputs {
        eprintln!("Debug of {what}: {text}");
        assert_no_secret(&format!("the Debug output of {what}"), text, &secrets);
    }

    drop(session);
    drop(granted);
    tokio::time::sleep(Duration::from_millis(50)).await;
    serving.abort();
    let log = capture.text();
    eprintln!(
        "hygiene: {} log lines captured at TRACE ({} bytes), {} secrets x {} spellings searched",
        capture.lines().len(),
        log.len(),
        secrets.len(),
        secrets[0].spellings().len()
    );
    assert!(
        log.contains("toolwire::event"),
        "the capture saw the server's events"
    );
    assert_no_secret("the TRACE log", &log, &secrets);
    assert!(
        probe.runs() >= 27,
        "the calls ran: {} handler runs",
        probe.runs()
    );
}

/// The Debug output of a client configuration whose static secret is checked too.
fn raw_config_debug(agent: &Identity, server: &Identity, url: &str) -> String {
    let config = ClientConfig::new(
        agent.clone(),
        vec![server.public_key()],
        url,
        &mut rand_core::OsRng,
    );
    let secret = Secret::new(
        "this client's Noise static secret",
        &client_static_secret_for_testing_only(&config),
    );
    let text = format!("{config:?}");
    assert_no_secret("the Debug output of ClientConfig", &text, &[secret]);
    text
}

/// Compile-time check that `T` wipes itself when dropped.
fn assert_zeroize_on_drop<T: ZeroizeOnDrop>(_: &T) {}

/// ID-009: the types that hold key material zeroize it on drop. Each call below
/// compiles only if the type implements `ZeroizeOnDrop`.
#[test]
fn key_material_types_zeroize_on_drop() {
    let identity = Identity::generate(&mut rand_core::OsRng);
    // The Ed25519 signing key inside Identity (and so every clone of it).
    assert_zeroize_on_drop(identity.signing_key());
    // The exported seed and identity-file text.
    assert_zeroize_on_drop(&identity.to_seed());
    assert_zeroize_on_drop(&identity.to_file_text());
    // Noise keys: symmetric keys (session, chaining, rekeyed) and X25519 key pairs.
    let key: toolwire_server::protocol::noise::Key = zeroize::Zeroizing::new([7; 32]);
    assert_zeroize_on_drop(&key);
    assert_zeroize_on_drop(&toolwire_server::protocol::noise::rekey(&key));
    let pair = toolwire_server::protocol::noise::KeyPair::generate(&mut rand_core::OsRng);
    assert_zeroize_on_drop(&pair);

    // The wrappers wipe what they hold: the seed read back from its exported form
    // equals the identity's, and an explicitly zeroized copy is all zeros.
    let mut seed = identity.to_seed();
    assert_eq!(
        Identity::from_seed(&seed).public_key(),
        identity.public_key()
    );
    zeroize::Zeroize::zeroize(&mut *seed);
    assert_eq!(*seed, [0u8; 32]);
}

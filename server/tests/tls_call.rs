//! `wss://` end to end over loopback: the server terminates TLS itself
//! (`Server::serve_tls_listener`) with a certificate generated at test time by `rcgen`,
//! and the real client dials `wss://localhost:PORT/toolwire` trusting it.
//!
//! Spec section 2.1 (TRN-001..TRN-004): the client uses TLS for `wss://` and verifies
//! the server's certificate for the URL's host; plain `ws://` stays limited to
//! loopback unless explicitly allowed. TLS adds confidentiality of the upgrade; the
//! server is still authenticated by its pinned identity key (ID-003), and the URL
//! bound into the handshake is the configured public one (HS-005).
//!
//! Every wait is bounded ([`common::within`]); every socket is on 127.0.0.1.

mod common;

use common::{echo_tool, init_tracing, within, Probe, STEP};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use toolwire_client::{Client, ClientBuilder, ConnectError, Session};
use toolwire_server::protocol::{CloseCode, Identity, IdentityKey};
use toolwire_server::{Limits, Server, TlsConfig};

/// A private CA and a server certificate it issued.
struct Pki {
    /// The CA certificate, PEM (what clients trust).
    ca_pem: String,
    /// The CA certificate, DER.
    ca_der: Vec<u8>,
    /// The server's chain, PEM: leaf, then the CA.
    chain_pem: String,
    /// The server's private key, PEM (PKCS#8).
    key_pem: String,
}

/// A fresh CA named `ca_name` and a leaf for `names` (DNS names or IP literals).
fn pki(ca_name: &str, names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .expect("leaf parameters")
        .signed_by(&leaf_key, &ca)
        .expect("leaf certificate");
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// A toolwire server terminating TLS on 127.0.0.1, stopped when dropped.
struct TlsServer {
    /// `wss://{host}:{port}/toolwire`: what the server is configured with.
    url: String,
    port: u16,
    server_key: IdentityKey,
    agent: Identity,
    echo: Arc<Probe>,
    server: Server,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl TlsServer {
    /// Serves `wss://{host}:PORT/toolwire` with `pki`'s leaf and `limits`.
    async fn start(host: &str, pki: &Pki, limits: Limits) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let url = format!("wss://{host}:{port}/toolwire");
        let identity = Identity::generate(&mut rand_core::OsRng);
        let agent = Identity::generate(&mut rand_core::OsRng);
        let echo = Arc::new(Probe::default());
        let server = Server::builder(identity.clone(), url.clone())
            .allow_client(agent.public_key())
            .tool(echo_tool("Returns its arguments.", &echo))
            .limits(limits)
            .build()
            .expect("server configuration");
        let tls = TlsConfig::from_pem(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes())
            .expect("TLS configuration");
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve_tls_listener(listener, tls).await }
        });
        Self {
            url,
            port,
            server_key: identity.public_key(),
            agent,
            echo,
            server,
            serving,
        }
    }

    /// A client of the allowed agent pinning this server, trusting only `pki`'s CA.
    fn client(&self, pki: &Pki) -> ClientBuilder {
        Client::builder()
            .identity(self.agent.clone())
            .pin_server(self.server_key)
            .builtin_root_certificates(false)
            .root_certificates_pem(pki.ca_pem.as_bytes())
            .expect("CA PEM")
    }
}

async fn assert_echo_works(session: &Session) {
    let result = within(
        "echo over wss",
        session.call("echo", &serde_json::json!({"text": "over TLS"})),
    )
    .await
    .expect("echo succeeds");
    assert_eq!(result, serde_json::json!({"text": "over TLS"}));
}

/// Clauses: TRN-001, TRN-004, ID-003, HS-005 — a client dialing
/// `wss://localhost:PORT/toolwire` verifies the server certificate for `localhost`
/// against the private CA it was given (as PEM, or as DER next to the built-in
/// roots), completes the toolwire handshake with the pinned server key and calls a
/// tool; the same works for an IP-literal URL whose certificate names the IP.
#[tokio::test]
async fn wss_call_round_trip_with_a_private_ca() {
    let pki = pki("toolwire test CA", &["localhost", "127.0.0.1"]);
    let served = TlsServer::start("localhost", &pki, Limits::default()).await;

    let session = within("wss connect", served.client(&pki).connect(&served.url))
        .await
        .expect("wss client connects");
    assert_eq!(session.server_key(), Some(served.server_key));
    assert_echo_works(&session).await;
    assert_eq!(served.echo.runs(), 1);

    let with_builtin_roots = Client::builder()
        .identity(served.agent.clone())
        .pin_server(served.server_key)
        .add_root_certificate(pki.ca_der.clone());
    let session = within(
        "wss connect (DER root)",
        with_builtin_roots.connect(&served.url),
    )
    .await
    .expect("wss client with a DER root connects");
    assert_echo_works(&session).await;
    assert_eq!(served.echo.runs(), 2);

    let by_ip = TlsServer::start("127.0.0.1", &pki, Limits::default()).await;
    let session = within("wss connect by IP", by_ip.client(&pki).connect(&by_ip.url))
        .await
        .expect("wss client connects to an IP-literal URL");
    assert_echo_works(&session).await;
}

/// Clauses: ID-003, TRN-004 — TLS does not replace toolwire's authentication: over a
/// valid TLS connection, a client pinning another server key refuses the server
/// (AUTH_FAILED) and no tool runs.
#[tokio::test]
async fn server_key_pinning_still_applies_over_tls() {
    let pki = pki("toolwire test CA", &["localhost"]);
    let served = TlsServer::start("localhost", &pki, Limits::default()).await;
    let stranger = Identity::generate(&mut rand_core::OsRng).public_key();
    let outcome = within(
        "wss connect pinning another key",
        Client::builder()
            .identity(served.agent.clone())
            .pin_server(stranger)
            .builtin_root_certificates(false)
            .add_root_certificate(pki.ca_der.clone())
            .connect(&served.url),
    )
    .await;
    assert!(
        matches!(
            outcome,
            Err(ConnectError::Handshake {
                code: CloseCode::AUTH_FAILED,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(served.echo.runs(), 0);
}

/// Clauses: TRN-004 — the client verifies the certificate: with only the built-in
/// (public) roots, with another private CA, or with a certificate issued for another
/// host, the TLS handshake fails (`ConnectError::Tls`) before any upgrade, and no
/// tool runs.
#[tokio::test]
async fn untrusted_certificates_fail_the_tls_handshake() {
    let pki_for_localhost = pki("toolwire test CA", &["localhost"]);
    let served = TlsServer::start("localhost", &pki_for_localhost, Limits::default()).await;
    let base = || {
        Client::builder()
            .identity(served.agent.clone())
            .pin_server(served.server_key)
    };
    let other_ca = pki("another CA", &["localhost"]);
    let attempts = [
        ("built-in roots only", base()),
        (
            "another private CA",
            base()
                .builtin_root_certificates(false)
                .root_certificates_pem(other_ca.ca_pem.as_bytes())
                .expect("PEM"),
        ),
    ];
    for (what, client) in attempts {
        let outcome = within(what, client.connect(&served.url)).await;
        assert!(
            matches!(outcome, Err(ConnectError::Tls(_))),
            "{what}: {outcome:?}"
        );
    }

    // A certificate the client's CA issued, but for another host.
    let wrong_host = pki("toolwire test CA", &["tools.example"]);
    let misnamed = TlsServer::start("localhost", &wrong_host, Limits::default()).await;
    let outcome = within(
        "certificate for another host",
        misnamed.client(&wrong_host).connect(&misnamed.url),
    )
    .await;
    assert!(
        matches!(outcome, Err(ConnectError::Tls(_))),
        "wrong host: {outcome:?}"
    );
    assert_eq!(served.echo.runs() + misnamed.echo.runs(), 0);
}

/// Clauses: TRN-001, TRN-003 — adding TLS roots changes nothing for plain `ws://`
/// to a host that is not loopback: it is refused before any TCP connection opens.
#[tokio::test]
async fn plain_ws_off_loopback_is_still_refused_without_connecting() {
    let pki = pki("toolwire test CA", &["localhost"]);
    for url in [
        "ws://tools.example/toolwire",
        "ws://tools.example:7700/toolwire",
        "ws://localhost.example/toolwire",
    ] {
        let started = Instant::now();
        let outcome = within(
            url,
            Client::builder()
                .identity(Identity::generate(&mut rand_core::OsRng))
                .pin_server(Identity::generate(&mut rand_core::OsRng).public_key())
                .add_root_certificate(pki.ca_der.clone())
                .connect(url),
        )
        .await;
        assert!(
            matches!(outcome, Err(ConnectError::InsecureOrInvalidUrl(_))),
            "{url}: {outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{url}");
    }
}

/// Clauses: TRN-002, TRN-004 — a plain `ws://` client (allowed to loopback) against
/// the TLS port fails without running a tool, and a `wss://` client against a plain
/// server fails its TLS handshake; neither disturbs the server, which then serves a
/// proper `wss://` client.
#[tokio::test]
async fn plain_and_tls_do_not_mix() {
    let pki = pki("toolwire test CA", &["localhost"]);
    let served = TlsServer::start("localhost", &pki, Limits::default()).await;

    let plain_url = format!("ws://localhost:{}/toolwire", served.port);
    let outcome = within(
        "plain ws to the TLS port",
        Client::builder()
            .identity(served.agent.clone())
            .pin_server(served.server_key)
            .connect(&plain_url),
    )
    .await;
    assert!(
        matches!(
            outcome,
            Err(ConnectError::WebSocket(_) | ConnectError::Timeout)
        ),
        "{outcome:?}"
    );

    // A plain server on loopback, dialed with wss://.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let identity = Identity::generate(&mut rand_core::OsRng);
    let plain_server = Server::builder(identity.clone(), format!("ws://localhost:{port}/toolwire"))
        .allow_client(served.agent.public_key())
        .build()
        .expect("plain server");
    let plain_serving = tokio::spawn(async move {
        let _ = plain_server.serve_listener(listener).await;
    });
    let outcome = within(
        "wss to a plain port",
        Client::builder()
            .identity(served.agent.clone())
            .pin_server(identity.public_key())
            .builtin_root_certificates(false)
            .add_root_certificate(pki.ca_der.clone())
            .connect(&format!("wss://localhost:{port}/toolwire")),
    )
    .await;
    plain_serving.abort();
    assert!(matches!(outcome, Err(ConnectError::Tls(_))), "{outcome:?}");

    let session = within("wss connect", served.client(&pki).connect(&served.url))
        .await
        .expect("the TLS server still serves");
    assert_echo_works(&session).await;
    assert_eq!(served.echo.runs(), 1);
}

/// Clauses: TRN-004 — a client that opens TCP and stalls inside the TLS handshake
/// holds its pre-authentication slot (the per-IP cap counts it, so a second client
/// from the same address is refused at the upgrade) for at most the upgrade timeout,
/// after which the server drops it and the slot is free again.
#[tokio::test]
async fn a_stalled_tls_handshake_is_bounded_by_the_upgrade_timeout() {
    let pki = pki("toolwire test CA", &["localhost"]);
    let mut limits = Limits::default();
    limits.upgrade_timeout = Duration::from_millis(800);
    limits.max_unauthenticated_per_ip = 1;
    let served = TlsServer::start("localhost", &pki, limits).await;

    let mut stalled = TcpStream::connect(("127.0.0.1", served.port))
        .await
        .expect("TCP connect");
    let opened = Instant::now();
    // The first bytes of a TLS record header, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");

    let outcome = within("second client", served.client(&pki).connect(&served.url)).await;
    match &outcome {
        Err(ConnectError::WebSocket(message)) => assert!(
            message.contains("429") || message.contains("503"),
            "{message}"
        ),
        other => panic!("expected an HTTP refusal while the slot is held, got {other:?}"),
    }

    let mut buffer = [0u8; 64];
    let ended = within("stalled connection dropped", async {
        loop {
            match stalled.read(&mut buffer).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended >= Duration::from_millis(700),
        "dropped after {ended:?}"
    );
    assert!(ended < STEP, "dropped only after {ended:?}");

    let session = within("client after the timeout", async {
        // The server releases the slot as the stalled task ends; allow it a moment.
        loop {
            match served.client(&pki).connect(&served.url).await {
                Ok(session) => return session,
                Err(ConnectError::WebSocket(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("unexpected connect error: {other}"),
            }
        }
    })
    .await;
    assert_echo_works(&session).await;
    assert_eq!(served.echo.runs(), 1);
}

/// Clauses: CLS-010, CLS-012 — `serve_tls_listener` takes part in graceful shutdown like
/// `serve_listener`: a live `wss://` session is closed with GOING_AWAY (1001), the
/// listener returns `Ok(())`, and the port no longer accepts sessions.
#[tokio::test]
async fn serve_tls_listener_returns_after_shutdown() {
    let pki = pki("toolwire test CA", &["localhost"]);
    let mut served = TlsServer::start("localhost", &pki, Limits::default()).await;
    let session = within("wss connect", served.client(&pki).connect(&served.url))
        .await
        .expect("wss client connects");
    assert_echo_works(&session).await;

    within("shutdown", served.server.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown completes");
    let returned = within("serve_tls_listener returns", &mut served.serving)
        .await
        .expect("serving task");
    assert!(returned.is_ok(), "{returned:?}");
    within("session closed", async {
        while session.close_code().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY));
    let outcome = within(
        "connect after shutdown",
        served.client(&pki).connect(&served.url),
    )
    .await;
    assert!(outcome.is_err(), "{outcome:?}");
}

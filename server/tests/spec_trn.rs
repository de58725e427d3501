//! Spec section 2, "Transport binding" (TRN), over real loopback sockets: the
//! server's upgrade checks (Origin, subprotocol, what is never consulted), its
//! framing rules, and the client's URL and subprotocol rules against a fake server.

mod spec_support;

use futures_util::{SinkExt as _, StreamExt as _};
use spec_support::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_client::{Client, ConnectError};
use toolwire_server::protocol::record::{RecordHeader, RecordType, HEADER_LEN};
use toolwire_server::protocol::upgrade::max_frame_len;
use toolwire_server::protocol::{CloseCode, ConnectionLimits, Identity, Message, SUBPROTOCOL};
use toolwire_server::Limits;

const PROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", SUBPROTOCOL);

fn origin(value: &str) -> (&'static str, &str) {
    ("Origin", value)
}

/// Asserts the upgrade with `headers` is accepted and selects exactly `toolwire.v1`.
async fn assert_accepted(served: &Served, headers: &[(&str, &str)]) {
    let answer = raw_upgrade(served.addr, headers).await;
    assert_eq!(
        answer,
        HttpAnswer {
            status: 101,
            subprotocols: vec![SUBPROTOCOL.to_owned()],
        },
        "{headers:?}"
    );
}

/// The HTTP status the upgrade with `headers` is answered with.
async fn status(served: &Served, headers: &[(&str, &str)]) -> u16 {
    raw_upgrade(served.addr, headers).await.status
}

/// Clauses: TRN-006, TRN-007, TRN-008, TRN-010, TRN-012 — with an allowlist of
/// serialized origins, the server upgrades a request whose Origin matches one entry
/// (scheme and host compared without case, port as an exact string), and refuses
/// with 403 every other Origin: other hosts, schemes and ports, a default port
/// written out, values that are not serialized origins, and `null`; a request
/// without Origin is accepted.
#[tokio::test]
async fn origins_are_matched_as_serialized_origins() {
    let served = Served::start_with(|builder| {
        builder
            .allow_origin("https://app.example")
            .allow_origin("http://localhost:5173")
    })
    .await;
    for accepted in [
        "https://app.example",
        "HTTPS://APP.EXAMPLE",
        "https://App.Example",
        "http://localhost:5173",
        "HTTP://LOCALHOST:5173",
    ] {
        assert_accepted(&served, &[origin(accepted), PROTOCOL]).await;
    }
    for refused in [
        "https://evil.example",
        "https://app.example.evil.example",
        "https://evil-app.example",
        "http://app.example",
        "wss://app.example",
        "https://app.example:443",
        "https://app.example:8443",
        "http://localhost",
        "http://localhost:05173",
        "https://app.example/",
        "https://app.example/path",
        "https://app.example?x",
        "https://user@app.example",
        "https://app.example:",
        "https://app.example, http://localhost:5173",
        "https://app .example",
        "*",
        "https://*.example",
        "null",
        "",
    ] {
        assert_eq!(
            status(&served, &[origin(refused), PROTOCOL]).await,
            403,
            "Origin: {refused:?}"
        );
    }
    // Non-browser clients send no Origin.
    assert_accepted(&served, &[PROTOCOL]).await;
}

/// Clauses: TRN-010 — the opaque origin `null` matches only a literal `null` entry.
#[tokio::test]
async fn the_null_origin_matches_only_a_null_entry() {
    let served = Served::start_with(|builder| builder.allow_origin("null")).await;
    assert_accepted(&served, &[origin("null"), PROTOCOL]).await;
    for refused in ["NULL", "Null", "nul", "null, null", "https://null"] {
        assert_eq!(
            status(&served, &[origin(refused), PROTOCOL]).await,
            403,
            "Origin: {refused:?}"
        );
    }
}

/// Clauses: TRN-009 — an Origin header sent twice is judged as its values joined
/// by ", ", which is no serialized origin: refused with 403 even when each value
/// alone is allowed.
#[tokio::test]
async fn an_origin_header_sent_twice_is_refused() {
    let served = Served::start_with(|builder| {
        builder
            .allow_origin("https://app.example")
            .allow_origin("https://other.example")
    })
    .await;
    for (first, second) in [
        ("https://app.example", "https://app.example"),
        ("https://app.example", "https://other.example"),
        ("https://app.example", "https://evil.example"),
        ("https://evil.example", "https://app.example"),
    ] {
        assert_eq!(
            status(&served, &[origin(first), origin(second), PROTOCOL]).await,
            403,
            "{first} + {second}"
        );
    }
    assert_accepted(&served, &[origin("https://app.example"), PROTOCOL]).await;
    assert_accepted(&served, &[origin("https://other.example"), PROTOCOL]).await;
}

/// Clauses: TRN-013, TRN-015 — a server that requires Origin refuses a request
/// without one with 403; and the origin is checked before the subprotocol, so a
/// request failing both is refused with 403, not 400.
#[tokio::test]
async fn a_required_origin_and_the_order_of_the_checks() {
    let served =
        Served::start_with(|builder| builder.allow_origin("https://app.example").require_origin())
            .await;
    assert_eq!(status(&served, &[PROTOCOL]).await, 403);
    assert_eq!(status(&served, &[]).await, 403);
    assert_eq!(
        status(&served, &[origin("https://evil.example")]).await,
        403
    );
    assert_eq!(
        status(
            &served,
            &[
                origin("https://evil.example"),
                ("Sec-WebSocket-Protocol", "chat")
            ]
        )
        .await,
        403
    );
    assert_eq!(
        status(&served, &[origin("https://app.example")]).await,
        400,
        "origin fine, no subprotocol"
    );
    assert_accepted(&served, &[origin("https://app.example"), PROTOCOL]).await;
    // Without an allowlisted origin at all, the default server still checks the
    // origin first.
    let open = Served::start().await;
    assert_eq!(status(&open, &[origin("https://evil.example")]).await, 403);
}

/// Clauses: TRN-014, TRN-018 — the subprotocol values are read over all header
/// lines as one list with spaces and tabs trimmed, and must contain exactly the
/// token `toolwire.v1` (else 400); an accepted upgrade selects exactly
/// `toolwire.v1` whatever else was offered.
#[tokio::test]
async fn the_subprotocol_is_an_exact_token_and_is_echoed_alone() {
    let served = Served::start().await;
    let offers: Vec<(Vec<&str>, bool)> = vec![
        (vec!["toolwire.v1"], true),
        (vec!["chat, toolwire.v1"], true),
        (vec!["toolwire.v1,chat"], true),
        (vec!["chat,\ttoolwire.v1\t, mqtt"], true),
        (vec!["chat", "toolwire.v1"], true),
        (vec!["toolwire.v1", "chat"], true),
        (vec!["chat, mqtt", "other,  toolwire.v1"], true),
        (vec![], false),
        (vec!["Toolwire.v1"], false),
        (vec!["TOOLWIRE.V1"], false),
        (vec!["toolwire.v2"], false),
        (vec!["toolwire"], false),
        (vec!["toolwire.v1.1"], false),
        (vec!["toolwire.v1;q=1"], false),
        (vec!["toolwire v1"], false),
        (vec!["toolwire.v1x, chat"], false),
        (vec!["chat", "mqtt"], false),
        (vec![""], false),
    ];
    for (offered, accepted) in offers {
        let headers: Vec<(&str, &str)> = offered
            .iter()
            .map(|value| ("Sec-WebSocket-Protocol", *value))
            .collect();
        if accepted {
            assert_accepted(&served, &headers).await;
        } else {
            assert_eq!(status(&served, &headers).await, 400, "offered {offered:?}");
        }
    }
}

/// Clauses: TRN-005 — the upgrade checks come before any handshake: a refused
/// upgrade is answered by its HTTP status alone and the connection ends; a
/// handshake record sent after the refusal is never answered.
#[tokio::test]
async fn a_refused_upgrade_gets_no_handshake() {
    let served = Served::start_with(|builder| builder.allow_origin("https://app.example")).await;
    for (header, status) in [
        (
            "Origin: https://evil.example\r\nSec-WebSocket-Protocol: toolwire.v1\r\n",
            "403",
        ),
        ("Sec-WebSocket-Protocol: chat\r\n", "400"),
    ] {
        let mut stream = within("connect", TcpStream::connect(served.addr))
            .await
            .expect("connect");
        let request = format!(
            "GET /toolwire HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{header}\r\n",
            served.addr
        );
        stream.write_all(request.as_bytes()).await.expect("written");
        let mut head = Vec::new();
        within("response head", async {
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text:?}");
        // Record 1, in a masked binary frame, after the refusal.
        let config = Arc::new(served.agent_config());
        let mut client = toolwire_server::protocol::Connection::client(
            config,
            Instant::now(),
            &mut rand_core::OsRng,
        );
        let record_1 = client.poll_transmit().expect("record 1");
        let _ = stream.write_all(&masked_binary_frame(&record_1)).await;
        let mut rest = Vec::new();
        let _ = within(
            "the server ends the connection",
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(rest.is_empty(), "no record 2 after a refusal: {rest:02x?}");
    }
}

/// A client WebSocket frame (FIN, binary, masked with a zero mask).
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x82];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Clauses: TRN-020 — cookies and an Authorization header give a client no
/// authority: an identity the server does not know is refused with AUTH_FAILED
/// (4001) whatever it puts in the upgrade request.
#[tokio::test]
async fn upgrade_headers_grant_no_authority() {
    let served = Served::start().await;
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let request = upgrade_request(
        &served.url,
        &[
            PROTOCOL,
            ("Authorization", "Bearer admin-token"),
            ("Cookie", "session=admin; role=root"),
            ("X-Forwarded-User", "admin"),
        ],
    );
    let (socket, _) = try_upgrade(request)
        .await
        .expect("upgraded: headers decide nothing");
    let config = served.config_for(&stranger, &served.url);
    let mut raw = RawClient::handshake_over(socket, config).await;
    assert_eq!(
        raw.until_end().await,
        [Received::CloseFrame(Some((
            CloseCode::AUTH_FAILED.0,
            String::new()
        )))]
    );
}

/// Clauses: TRN-023 — a record is one binary message: the server sends each of
/// its records as one message (each opens on its own), and two records sent in one
/// message are one record to it, which fails authentication.
#[tokio::test]
async fn one_binary_message_carries_exactly_one_record() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    // Two answers, each its own message (`next` opens one record per message).
    let first = raw.request(1, "echo", &serde_json::json!({"n": 1}));
    let second = raw.request(2, "echo", &serde_json::json!({"n": 2}));
    raw.send(Message::Request(first)).await;
    raw.send(Message::Request(second)).await;
    for _ in 0..2 {
        assert!(matches!(raw.expect_message().await, Message::Response(_)));
    }
    // Two records glued into one message.
    let third = raw.seal(Message::Request(raw.request(
        3,
        "echo",
        &serde_json::json!({}),
    )));
    let fourth = raw.seal(Message::Request(raw.request(
        4,
        "echo",
        &serde_json::json!({}),
    )));
    raw.send_record([third, fourth].concat()).await;
    assert_closed_with(&raw.until_end().await, CloseCode::DECRYPT_FAILED);
}

/// Clauses: TRN-024, TRN-026 — a text message closes with UNSUPPORTED_DATA (1003),
/// before the handshake and in a session (after an authenticated CLOSE); an
/// oversize text message closes with MESSAGE_TOO_BIG (1009): size is checked first.
#[tokio::test]
async fn text_messages_close_with_1003_unless_oversize() {
    let served = Served::start().await;
    let mut socket = raw_socket(&served.url).await;
    within("send", socket.send(WsMessage::text("hello")))
        .await
        .expect("sent");
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::UNSUPPORTED_DATA.0, String::new()))
    );

    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    raw.send_ws(WsMessage::text("{\"tool\":\"echo\"}")).await;
    assert_closed_with(&raw.until_end().await, CloseCode::UNSUPPORTED_DATA);

    let oversize = "x".repeat(max_frame_len(&ConnectionLimits::default()) + 1);
    let mut socket = raw_socket(&served.url).await;
    within("send", socket.send(WsMessage::text(oversize.clone())))
        .await
        .expect("sent");
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::MESSAGE_TOO_BIG.0, String::new()))
    );
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    raw.send_ws(WsMessage::text(oversize)).await;
    assert_closed_with(&raw.until_end().await, CloseCode::MESSAGE_TOO_BIG);
}

/// Clauses: TRN-025, LIM-002, TRN-027 — a binary message longer than 16 + the
/// maximum record body (65552 bytes by default) closes with MESSAGE_TOO_BIG (1009);
/// one of exactly 65552 bytes is not refused for its size (it fails as a record);
/// with a smaller configured record limit the message limit follows it.
#[tokio::test]
async fn messages_longer_than_one_record_close_with_1009() {
    let served = Served::start().await;
    let limit = 65_552;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    raw.send_record(vec![0x01; limit + 1]).await;
    assert_closed_with(&raw.until_end().await, CloseCode::MESSAGE_TOO_BIG);

    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    let mut record = RecordHeader {
        version: 1,
        record_type: RecordType::SEALED,
        reserved: 0,
        epoch: 0,
        seq: 0,
    }
    .encode()
    .to_vec();
    record.resize(limit, 0x42);
    raw.send_record(record).await;
    assert_closed_with(&raw.until_end().await, CloseCode::DECRYPT_FAILED);

    let mut limits = Limits::default();
    limits.connection.max_record_body = 1024;
    let small = Served::start_with(|builder| builder.limits(limits)).await;
    let mut socket = raw_socket(&small.url).await;
    within(
        "send",
        socket.send(WsMessage::binary(vec![0x01; HEADER_LEN + 1025])),
    )
    .await
    .expect("sent");
    assert_eq!(
        close_frame(&mut socket).await,
        Some((CloseCode::MESSAGE_TOO_BIG.0, String::new()))
    );
}

/// The code and reason of the next close frame (skipping data messages).
async fn close_frame(socket: &mut Socket) -> Option<(u16, String)> {
    within("close frame", async {
        loop {
            match socket.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    return frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// Clauses: TRN-028, LIFE-005 — WebSocket pings and pongs have no effect on the
/// session: a client that keeps sending them but no record is closed by the idle
/// timer with TIMEOUT (4009) at the idle deadline, not later.
#[tokio::test]
async fn websocket_pings_do_not_keep_a_session_alive() {
    let idle = Duration::from_millis(600);
    let mut limits = Limits::default();
    limits.connection.idle_timeout = idle;
    let served = Served::start_with(|builder| builder.limits(limits)).await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    let started = Instant::now();
    let seen = within("idle close", async {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                received = raw.next() => {
                    let end = matches!(received, Received::CloseFrame(_) | Received::Ended);
                    if !matches!(&received, Received::Other(text) if text.starts_with("Pong")) {
                        seen.push(received);
                    }
                    if end {
                        return seen;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    let _ = raw.socket.send(WsMessage::Ping(b"alive".to_vec().into())).await;
                    let _ = raw.socket.send(WsMessage::Pong(b"unsolicited".to_vec().into())).await;
                }
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert_closed_with(&seen, CloseCode::TIMEOUT);
    assert!(
        elapsed >= idle - Duration::from_millis(100),
        "closed after {elapsed:?}"
    );
    assert!(elapsed < idle * 4, "closed only after {elapsed:?}");
}

// ---------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------

/// Clauses: TRN-001 — the client refuses a URL that is neither `wss://` nor plain
/// `ws://` to a loopback host before opening any TCP connection: a listener on the
/// URL's address sees no connection, and an unroutable address fails at once.
#[tokio::test]
async fn the_client_refuses_insecure_urls_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server_key = Identity::generate(&mut rand_core::OsRng).public_key();
    let client = || {
        Client::builder()
            .identity(Identity::generate(&mut rand_core::OsRng))
            .pin_server(server_key)
    };
    for url in [
        format!("http://{addr}/toolwire"),
        format!("https://{addr}/toolwire"),
        format!("tcp://{addr}/toolwire"),
        "ws://10.255.255.1:9/toolwire".to_owned(),
        "ws://tools.example/toolwire".to_owned(),
        "ws://localhost.example/toolwire".to_owned(),
        "ws://127.0.0.1.nip.io/toolwire".to_owned(),
    ] {
        let started = Instant::now();
        let outcome = within("refusal", client().connect(&url)).await;
        assert!(
            matches!(outcome, Err(ConnectError::InsecureOrInvalidUrl(_))),
            "{url}: {outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{url}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "no TCP connection was opened");
}

/// What a fake server saw of one upgrade and what followed it.
#[derive(Debug, Default)]
struct Seen {
    offered: Vec<String>,
    binary_messages: usize,
}

/// A fake server: answers one upgrade with `select` as `Sec-WebSocket-Protocol`
/// (or none), then counts the binary messages the client sends for a while.
async fn fake_server(select: Option<&'static str>) -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let handle = tokio::spawn(async move {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stream, _) = listener.accept().await.expect("accept");
        let record = seen.clone();
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let callback = move |request: &Request, mut response: Response| {
            record.lock().expect("lock").offered = request
                .headers()
                .get_all("Sec-WebSocket-Protocol")
                .iter()
                .map(|value| value.to_str().expect("ASCII").to_owned())
                .collect();
            if let Some(selected) = select {
                response
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(selected));
            }
            Ok(response)
        };
        if let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
            let deadline = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    message = socket.next() => match message {
                        Some(Ok(WsMessage::Binary(_))) => {
                            seen.lock().expect("lock").binary_messages += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                    () = &mut deadline => break,
                }
            }
        }
        Arc::try_unwrap(seen)
            .expect("one owner")
            .into_inner()
            .expect("lock")
    });
    (url, handle)
}

/// Clauses: TRN-017 — the client offers `toolwire.v1` in Sec-WebSocket-Protocol.
#[tokio::test]
async fn the_client_offers_the_toolwire_subprotocol() {
    let (url, seen) = fake_server(Some(SUBPROTOCOL)).await;
    let outcome = tokio::time::timeout(
        Duration::from_millis(300),
        Client::builder()
            .identity(Identity::generate(&mut rand_core::OsRng))
            .pin_server(Identity::generate(&mut rand_core::OsRng).public_key())
            .connect(&url),
    )
    .await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "the fake server grants nothing"
    );
    let seen = within("fake server", seen).await.expect("fake server");
    assert_eq!(seen.offered, [SUBPROTOCOL]);
    assert_eq!(
        seen.binary_messages, 1,
        "record 1 follows an accepted upgrade"
    );
}

/// Clauses: TRN-019 — when the upgrade response selects no subprotocol, or another
/// one, the client abandons the connection without sending any record.
#[tokio::test]
async fn the_client_abandons_an_upgrade_that_does_not_select_toolwire() {
    for select in [None, Some("chat"), Some("toolwire.v2")] {
        let (url, seen) = fake_server(select).await;
        let outcome = within(
            "connect",
            Client::builder()
                .identity(Identity::generate(&mut rand_core::OsRng))
                .pin_server(Identity::generate(&mut rand_core::OsRng).public_key())
                .connect(&url),
        )
        .await;
        assert!(
            matches!(
                outcome,
                Err(ConnectError::SubprotocolNotAccepted | ConnectError::WebSocket(_))
            ),
            "{select:?}: {outcome:?}"
        );
        let seen = within("fake server", seen).await.expect("fake server");
        assert_eq!(seen.binary_messages, 0, "{select:?}: no record sent");
    }
}

//! Security events and logs (spec section 18): whatever the server and the client
//! log about a session, at every level, holds no secret material.

mod common;
mod event_capture;

use common::{within, TestServer};
use event_capture::Capture;
use std::io::Write;
use std::sync::{Arc, Mutex};
use toolwire_server::protocol::events::{EventName, PEER_TEXT_LIMIT};
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::message::{Cancel, Request};
use toolwire_server::protocol::{ErrorCode, Identity, Message};
use toolwire_server::Tool;

/// Everything logged on this thread, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpadded base64 of `bytes` with the alphabet whose last two characters are `extra`.
fn base64(bytes: &[u8], extra: [u8; 2]) -> String {
    let mut alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".to_vec();
    alphabet.extend_from_slice(&extra);
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Fragments of `bytes` as they could appear in a log: hex, base64url, base64, and
/// Rust's `Debug` of a byte list.
fn spellings(bytes: &[u8]) -> Vec<String> {
    let head = &bytes[..bytes.len().min(12)];
    vec![
        hex(head),
        base64(head, *b"-_"),
        base64(head, *b"+/"),
        format!("{:?}", &head[..8]).trim_end_matches(']').to_owned(),
    ]
}

/// Clauses: EVT-004 — a whole session (a grant presented in the handshake, calls
/// with secret arguments and results, a schema violation, a cancellation, a
/// signature failure, a close) logged at TRACE by server and client holds no grant
/// token, no signature, no private key, and no argument or result value.
#[tokio::test]
async fn nothing_secret_is_ever_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let issuer_key = issuer.public_key();
    let secret_result = "r3sult-S3cret";
    let vault = Tool::new(
        "vault",
        "Returns a secret.",
        serde_json::json!({"type": "object", "properties": {"pin": {"type": "integer"}}}),
        move |_, _| async move { Ok(serde_json::json!({ "secret": secret_result })) },
    );
    let server =
        TestServer::start_with(|builder| builder.trust_grant_issuer(issuer_key).tool(vault)).await;
    let token = GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.server_key.to_bytes(),
        "g-logged",
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .tools(["echo", "vault", "slow"])
    .sign(issuer.signing_key())
    .expect("grant signs");

    // The real client, presenting the grant.
    let session = within(
        "connect",
        server
            .client(&holder)
            .present_grant(token.clone())
            .connect(&server.url),
    )
    .await
    .expect("connects with the grant");
    let secret_arg = "Arg-S3cret-value";
    let echoed = within(
        "echo",
        session.call("echo", &serde_json::json!({"text": secret_arg})),
    )
    .await
    .expect("echo");
    assert_eq!(echoed["text"], secret_arg);
    let result = within("vault", session.call("vault", &serde_json::json!({})))
        .await
        .expect("vault");
    assert_eq!(result["secret"], secret_result);
    let invalid = within(
        "schema violation",
        session.call("vault", &serde_json::json!({"pin": secret_arg})),
    )
    .await;
    assert!(invalid.is_err());
    drop(session);

    // A hand-driven session: a forged signature and a cancellation.
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let mut forged: Request = raw.request(1, "echo", &serde_json::json!({"text": secret_arg}));
    let forged_signature = forged.signature.clone().expect("signed");
    if let Some(signature) = forged.signature.as_mut() {
        signature[3] ^= 0x10;
    }
    raw.send(Message::Request(forged)).await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::UNAUTHENTICATED
    );
    let signed = raw.request(2, "slow", &serde_json::json!({"text": secret_arg}));
    let request_signature = signed.signature.clone().expect("signed");
    raw.send(Message::Request(signed)).await;
    server.probes.slow.wait_runs(1).await;
    raw.send(Message::Cancel(Cancel { id: 2 })).await;
    assert_eq!(raw.expect_error(2).await.error_code(), ErrorCode::CANCELLED);
    let response_call = raw.request(3, "vault", &serde_json::json!({}));
    raw.send(Message::Request(response_call)).await;
    let response = raw.expect_response(3).await;
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let log = captured.text();
    // Controls: the log is there, and public keys (which may be logged) are found
    // in it by the same spellings.
    assert!(log.contains("toolwire authorization decision"), "{log}");
    let holder_key = holder.public_key().to_bytes();
    assert_eq!(
        base64(&holder_key, *b"-_"),
        toolwire_server::protocol::grant::key_to_text(&holder_key)
    );
    assert!(log.contains(&spellings(&holder_key)[1]), "{log}");
    let payload = token.trim_start_matches("v4.public.");
    let mut forbidden: Vec<(String, String)> = vec![
        ("grant token".into(), payload[..24].to_owned()),
        (
            "grant signature".into(),
            payload[payload.len() - 24..].to_owned(),
        ),
        ("argument value".into(), secret_arg.to_owned()),
        ("result value".into(), secret_result.to_owned()),
    ];
    let signature = response.signature.as_deref().expect("signed response");
    for (what, bytes) in [
        ("request signature", &request_signature[..]),
        ("forged signature", &forged_signature[..]),
        ("response signature", signature),
        ("issuer private key", &issuer.to_seed()[..]),
        ("holder private key", &holder.to_seed()[..]),
        ("agent private key", &server.agent.to_seed()[..]),
    ] {
        for spelling in spellings(bytes) {
            forbidden.push((what.to_owned(), spelling));
        }
    }
    for (what, needle) in forbidden {
        assert!(!log.contains(&needle), "{what} logged ({needle}):\n{log}");
    }
}

/// Clauses: EVT-005 — peer-controlled text (a tool name in a REQUEST, an `Origin`
/// value) reaches the event log escaped and cut to a bounded length: an attacker
/// cannot forge log lines, inject terminal escapes or flood the log through it.
#[tokio::test]
async fn peer_controlled_text_is_escaped_and_truncated_in_events() {
    let (capture, _guard) = Capture::start();
    let server =
        TestServer::start_with(|builder| builder.allow_origin("https://app.example")).await;
    let forged = format!(
        "\u{1b}[2J\nINFO toolwire::event: event=\"handshake_ok\" {}",
        "A".repeat(5000)
    );
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, &forged, &serde_json::json!({}));
    raw.send(Message::Request(call)).await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::PERMISSION_DENIED
    );
    let long_origin = format!("https://{}.example", "o".repeat(3000));
    let status = common::refused_status(common::upgrade_request(
        &server.url,
        Some(&long_origin),
        Some(toolwire_server::protocol::SUBPROTOCOL),
    ))
    .await;
    assert_eq!(status, 403);

    let denied = capture.wait_events("server", "permission_denied", 1).await;
    let tool = denied[0].field("tool");
    assert!(tool.len() <= PEER_TEXT_LIMIT, "{} bytes", tool.len());
    assert!(tool.starts_with("\\u{1b}[2J\\nINFO toolwire::event: event=\\\"handshake_ok\\\" AAA"));
    assert!(tool.ends_with("..."));
    let decision = capture.events_of("server", "authz_decision");
    assert_eq!(decision[0].field("tool"), tool);
    let origin = capture.wait_events("server", "origin_rejected", 1).await;
    let origin = origin[0].field("origin");
    assert!(origin.len() <= PEER_TEXT_LIMIT);
    assert!(origin.starts_with("https://ooo"));
    // Nowhere in toolwire's logs, at any level, does the raw text appear (the
    // WebSocket library's own TRACE lines echo the attacker's HTTP request).
    for line in capture.lines() {
        if !line.target.starts_with("toolwire") {
            continue;
        }
        for value in line.fields.values() {
            assert!(!value.contains('\u{1b}'), "raw escape logged: {line:?}");
            assert!(!value.contains('\n'), "raw newline logged: {line:?}");
            assert!(!value.contains(&"A".repeat(200)), "{line:?}");
            assert!(!value.contains(&"o".repeat(200)), "{line:?}");
        }
    }
}

/// Clauses: EVT-001, EVT-002 — every security event line, on both sides, is named
/// from the vocabulary and carries the common fields: `event`, `time`, `role`, and
/// after the handshake `session_id` and `peer_key`.
#[tokio::test]
async fn every_event_carries_the_common_fields() {
    let (capture, _guard) = Capture::start();
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "x"})),
    )
    .await
    .expect("call");
    let session_id = session.session_id();
    session.close();
    capture.wait_events("server", "connection_closed", 1).await;
    let names: Vec<&str> = EventName::ALL.iter().map(|name| name.as_str()).collect();
    let lines: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|line| line.target == "toolwire::event" || line.target == "toolwire::decision")
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    for line in &lines {
        assert!(names.contains(&line.field("event")), "{line:?}");
        assert!(line.field("time").ends_with('Z'));
        assert!(["server", "client"].contains(&line.field("role")));
        if line.field("event") != "connection_opened" {
            assert_eq!(line.field("session_id"), event_capture::hex(&session_id));
            assert!(line.fields.contains_key("peer_key"), "{line:?}");
        }
    }
}

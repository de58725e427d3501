//! Detection (THREATS.md, "Detection is part of defence"): each anomaly class, played
//! as a real attack over loopback, reaches the alert sink the embedding application
//! installed (EVT-003), with the event name and fields of spec section 18 (EVT-001,
//! EVT-002), past the configured thresholds; and nothing secret is logged meanwhile
//! (EVT-004).
//!
//! Clauses: EVT-001, EVT-002, EVT-003, EVT-004, EVT-005.

mod common;
mod event_capture;

use common::{raw_socket, refused_status, upgrade_request, within, RawClient, TestServer, STEP};
use event_capture::{hex, Capture};
use futures_util::SinkExt as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::events::{EventName, PeerText, RecordPosition, SecurityEvent};
use toolwire_server::protocol::upgrade::max_frame_len;
use toolwire_server::protocol::{
    CloseCode, ConnectionLimits, Identity, Message, Role, SUBPROTOCOL,
};
use toolwire_server::{Alert, AlertSink, AlertThresholds, Limits};

/// The test's alert sink: collects every alert.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Collected {
    fn alert(&self, alert: &Alert) {
        self.0.lock().expect("lock").push(alert.clone());
    }
}

impl Collected {
    fn all(&self) -> Vec<Alert> {
        self.0.lock().expect("lock").clone()
    }

    fn named(&self, name: EventName) -> Vec<Alert> {
        self.all()
            .into_iter()
            .filter(|alert| alert.record.event.name() == name)
            .collect()
    }

    /// Waits (bounded) for `count` alerts named `name`.
    async fn wait(&self, name: EventName, count: usize) -> Vec<Alert> {
        within("alert", async {
            loop {
                let alerts = self.named(name);
                if alerts.len() >= count {
                    return alerts;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

async fn server_with_sink(thresholds: AlertThresholds, limits: Limits) -> (TestServer, Collected) {
    let sink = Collected::default();
    let installed = sink.clone();
    let server = TestServer::start_with(move |builder| {
        builder
            .allow_origin("https://app.example")
            .alert_sink(installed)
            .alert_thresholds(thresholds)
            .limits(limits)
    })
    .await;
    (server, sink)
}

async fn default_server_with_sink() -> (TestServer, Collected) {
    server_with_sink(AlertThresholds::default(), Limits::default()).await
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Every spelling of a secret that must never appear in a log.
fn assert_not_logged(capture: &Capture, secrets: &[(&str, &[u8])]) {
    let text = capture.text();
    assert!(text.contains("toolwire::event"), "{text}");
    for (what, bytes) in secrets {
        let spelled = hex(&bytes[..12]);
        assert!(
            !text.contains(&spelled),
            "{what} logged ({spelled}):\n{text}"
        );
        let list = format!("{:?}", &bytes[..8]);
        assert!(
            !text.contains(list.trim_end_matches(']')),
            "{what} logged as a byte list:\n{text}"
        );
    }
}

/// EVT-003, EVT-005: a page of a foreign site opens a socket: 403, and the alert
/// names the origin, escaped, with the HTTP status.
#[tokio::test]
async fn foreign_origin_upgrade_raises_origin_rejected() {
    let (capture, _guard) = Capture::start();
    let (server, sink) = default_server_with_sink().await;
    let origin = "https://evil.example/\"x\\y";
    let status = refused_status(upgrade_request(
        &server.url,
        Some(origin),
        Some(SUBPROTOCOL),
    ))
    .await;
    assert_eq!(status, 403);
    let alerts = sink.wait(EventName::OriginRejected, 1).await;
    let alert = &alerts[0];
    assert_eq!(
        alert.record.event,
        SecurityEvent::OriginRejected {
            origin: PeerText::new(origin),
            http_status: 403,
        }
    );
    assert_eq!(
        alert.record.event.fields().origin.map(PeerText::as_str),
        Some("https://evil.example/\\\"x\\\\y")
    );
    assert_eq!(alert.record.context.role, Role::Server);
    assert_eq!(alert.record.context.session_id, None);
    assert_eq!(alert.peer_addr.map(|addr| addr.ip()), Some(loopback()));
    assert_eq!(alert.occurrences, 1);
    // The allowed origin raises nothing.
    let (_socket, response) = within(
        "allowed origin",
        tokio_tungstenite::connect_async(upgrade_request(
            &server.url,
            Some("https://app.example"),
            Some(SUBPROTOCOL),
        )),
    )
    .await
    .expect("allowed origin upgrades");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(sink.named(EventName::OriginRejected).len(), 1);
    // The log line carries the spec's fields.
    let lines = capture.wait_events("server", "origin_rejected", 1).await;
    assert_eq!(
        lines[0].field_names(),
        ["event", "http_status", "message", "origin", "role", "time"]
    );
    assert_eq!(lines[0].level, tracing::Level::WARN);
    assert_eq!(lines[0].field("origin"), "https://evil.example/\\\"x\\\\y");
    assert_eq!(server.probes.total_runs(), 0);
}

/// EVT-003: handshakes with an unknown client key from one address are counted;
/// the alert comes once, when the count reaches the threshold, with the reason.
#[tokio::test]
async fn repeated_unknown_client_handshakes_raise_auth_failed_past_the_threshold() {
    let (capture, _guard) = Capture::start();
    let mut thresholds = AlertThresholds::default();
    thresholds.auth_failures_per_address = 3;
    let (server, sink) = server_with_sink(thresholds, Limits::default()).await;
    let stranger = Identity::generate(&mut rand_core::OsRng);
    for attempt in 1..=4 {
        let mut raw =
            RawClient::handshake(&server.url, server.client_config(&stranger, Vec::new())).await;
        let closed = raw.expect_close().await;
        assert_eq!(closed.frame, Some(CloseCode::AUTH_FAILED.0));
        // The event is logged before the close frame is sent.
        let failures = capture.wait_events("server", "auth_failed", attempt).await;
        assert_eq!(failures[attempt - 1].field("reason"), "unknown_client");
        let alerts = sink.named(EventName::AuthFailed);
        assert_eq!(alerts.len(), usize::from(attempt >= 3), "after {attempt}");
    }
    let alert = &sink.named(EventName::AuthFailed)[0];
    assert_eq!(
        alert.record.event,
        SecurityEvent::AuthFailed {
            reason: toolwire_server::protocol::error::AuthFailure::UnknownClient,
        }
    );
    assert_eq!(alert.occurrences, 3);
    assert_eq!(alert.peer_addr.map(|addr| addr.ip()), Some(loopback()));
    // Below the threshold, the failures were logged (at INFO) all the same.
    assert_eq!(capture.events_of("server", "auth_failed").len(), 4);
    assert_eq!(server.probes.total_runs(), 0);
    assert_not_logged(
        &capture,
        &[("stranger private key", &stranger.to_seed()[..])],
    );
}

/// EVT-003: a replayed record raises `replay_rejected` at once, with its epoch and
/// sequence number and the session's common fields.
#[tokio::test]
async fn replayed_record_raises_replay_rejected() {
    let (capture, _guard) = Capture::start();
    let (server, sink) = default_server_with_sink().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "pay 10"}));
    let record = raw.seal(Message::Request(call));
    let position = RecordPosition::peek(&record).expect("header");
    raw.send_record(record.clone()).await;
    raw.expect_response(1).await;
    raw.send_record(record).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::REPLAY_DETECTED));
    let alerts = sink.wait(EventName::ReplayRejected, 1).await;
    let alert = &alerts[0];
    assert_eq!(
        alert.record.event,
        SecurityEvent::ReplayRejected {
            position: Some(position)
        }
    );
    assert_eq!(alert.record.context.session_id, Some(raw.session_id()));
    assert_eq!(
        alert.record.context.peer_key,
        Some(server.agent.public_key())
    );
    let lines = capture.wait_events("server", "replay_rejected", 1).await;
    let line = &lines[0];
    assert_eq!(line.field("session_id"), hex(&raw.session_id()));
    assert_eq!(
        line.field("peer_key"),
        server.agent.public_key().to_string()
    );
    assert_eq!(line.field("epoch"), position.epoch.to_string());
    assert_eq!(line.field("seq"), position.seq.to_string());
    assert_eq!(server.probes.echo.runs(), 1);
    assert_not_logged(
        &capture,
        &[("agent private key", &server.agent.to_seed()[..])],
    );
}

/// EVT-003: a tampered record raises `decrypt_failed` at once.
#[tokio::test]
async fn tampered_record_raises_decrypt_failed() {
    let (capture, _guard) = Capture::start();
    let (server, sink) = default_server_with_sink().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "echo", &serde_json::json!({"text": "pay 10"}));
    let mut record = raw.seal(Message::Request(call));
    let position = RecordPosition::peek(&record).expect("header");
    let last = record.len() - 1;
    record[last] ^= 0x80;
    raw.send_record(record).await;
    let closed = raw.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::DECRYPT_FAILED));
    let alerts = sink.wait(EventName::DecryptFailed, 1).await;
    assert_eq!(
        alerts[0].record.event,
        SecurityEvent::DecryptFailed {
            position: Some(position)
        }
    );
    assert_eq!(alerts[0].record.context.session_id, Some(raw.session_id()));
    assert_eq!(server.probes.echo.runs(), 0);
    let lines = capture.wait_events("server", "decrypt_failed", 1).await;
    assert_eq!(
        lines[0].field_names(),
        [
            "epoch",
            "event",
            "message",
            "peer_key",
            "role",
            "seq",
            "session_id",
            "time"
        ]
    );
    assert_not_logged(
        &capture,
        &[("agent private key", &server.agent.to_seed()[..])],
    );
}

/// EVT-003: a frame over the limit raises `oversize_frame` with its length and the
/// limit.
#[tokio::test]
async fn oversize_frame_raises_oversize_frame() {
    let (server, sink) = default_server_with_sink().await;
    let limit = max_frame_len(&ConnectionLimits::default());
    let mut socket = raw_socket(&server.url).await;
    within(
        "send",
        socket.send(WsMessage::binary(vec![0x42; limit + 1])),
    )
    .await
    .expect("sent");
    let code = common::close_frame_code(&mut socket).await;
    assert_eq!(code, Some(CloseCode::MESSAGE_TOO_BIG.0));
    let alerts = sink.wait(EventName::OversizeFrame, 1).await;
    assert_eq!(
        alerts[0].record.event,
        SecurityEvent::OversizeFrame {
            length: Some(limit as u64 + 1),
            limit: Some(limit as u64),
        }
    );
}

/// EVT-003: rate-limit refusals of one identity are counted; the alert comes when
/// they reach the threshold, naming the tool and the retry hint.
#[tokio::test]
async fn rate_limit_hits_past_the_threshold_raise_rate_limited() {
    let mut thresholds = AlertThresholds::default();
    thresholds.rate_limited_per_identity = 3;
    let mut limits = Limits::default();
    limits.rate_per_sec = 1;
    limits.burst = 2;
    let (server, sink) = server_with_sink(thresholds, limits).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let mut refused = 0;
    for id in 1..=6 {
        let call = raw.request(id, "echo", &serde_json::json!({"text": "flood"}));
        raw.send(Message::Request(call)).await;
        match raw.expect_message().await {
            Message::Response(_) => {}
            Message::Error(error) => {
                assert_eq!(
                    error.error_code(),
                    toolwire_server::protocol::ErrorCode::RESOURCE_EXHAUSTED
                );
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 3, "only {refused} refusals");
    let alerts = sink.wait(EventName::RateLimited, 1).await;
    assert_eq!(alerts.len(), 1, "one alert per window");
    let alert = &alerts[0];
    assert_eq!(alert.occurrences, 3);
    let SecurityEvent::RateLimited {
        tool,
        retry_after_ms,
        ..
    } = &alert.record.event
    else {
        panic!("{:?}", alert.record.event);
    };
    assert_eq!(tool.as_str(), "echo");
    assert!(retry_after_ms.is_some());
    assert_eq!(
        alert.record.context.peer_key,
        Some(server.agent.public_key())
    );
}

/// EVT-003: an identity making calls at an unusual rate raises `call_rate_high`.
#[tokio::test]
async fn unusually_high_call_rate_raises_call_rate_high() {
    let mut thresholds = AlertThresholds::default();
    thresholds.calls_per_identity = 5;
    let (server, sink) = server_with_sink(thresholds, Limits::default()).await;
    let session = server.agent_session().await;
    for _ in 0..5 {
        within(
            "call",
            session.call("echo", &serde_json::json!({"text": "x"})),
        )
        .await
        .expect("call");
    }
    let alerts = sink.wait(EventName::CallRateHigh, 1).await;
    assert_eq!(
        alerts[0].record.event,
        SecurityEvent::CallRateHigh {
            calls: 5,
            window_ms: 60_000
        }
    );
    assert_eq!(
        alerts[0].record.context.peer_key,
        Some(server.agent.public_key())
    );
}

/// The default sink logs alerts at WARN on `toolwire::alert`.
#[tokio::test]
async fn default_sink_logs_alerts_at_warn() {
    let (capture, _guard) = Capture::start();
    let server =
        TestServer::start_with(|builder| builder.allow_origin("https://app.example")).await;
    let status = refused_status(upgrade_request(
        &server.url,
        Some("https://evil.example"),
        Some(SUBPROTOCOL),
    ))
    .await;
    assert_eq!(status, 403);
    within("alert line", async {
        loop {
            let found = capture.lines().into_iter().any(|line| {
                line.target == "toolwire::alert"
                    && line.level == tracing::Level::WARN
                    && line.fields.get("event").map(String::as_str) == Some("origin_rejected")
            });
            if found {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A bounded channel as the sink never blocks the server: with the queue full,
/// further alerts are dropped and upgrades are still answered at once.
#[tokio::test]
async fn a_full_channel_sink_drops_alerts_without_blocking() {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Alert>(1);
    let server = TestServer::start_with(move |builder| {
        builder
            .allow_origin("https://app.example")
            .alert_sink(sender)
    })
    .await;
    for _ in 0..3 {
        let status = tokio::time::timeout(
            STEP,
            refused_status(upgrade_request(
                &server.url,
                Some("https://evil.example"),
                Some(SUBPROTOCOL),
            )),
        )
        .await
        .expect("answered while the sink is full");
        assert_eq!(status, 403);
    }
    let first = within("first alert", receiver.recv())
        .await
        .expect("one alert queued");
    assert_eq!(first.record.event.name(), EventName::OriginRejected);
    assert!(receiver.try_recv().is_err(), "the queue held one alert");
}

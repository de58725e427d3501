//! Per-request authorization over real sockets (spec section 13): the server's
//! in-flight cap and rate budgets, JSON Schema validation of arguments, and the
//! decision record it logs for every evaluation.

mod common;

use common::{within, RawClient, TestServer};
use std::io::Write;
use std::sync::{Arc, Mutex};
use toolwire_server::protocol::message::{Cancel, ErrorMessage};
use toolwire_server::protocol::{ErrorCode, Identity, Message};
use toolwire_server::{Limits, Tool};

fn text(value: &str) -> serde_json::Value {
    serde_json::json!({ "text": value })
}

async fn refusal(
    raw: &mut RawClient,
    id: u64,
    tool: &str,
    args: &serde_json::Value,
) -> ErrorMessage {
    raw.send(Message::Request(raw.request(id, tool, args)))
        .await;
    raw.expect_error(id).await
}

/// Clauses: AUTHZ-003, ERR-005, GRT-036 — with its maximum of calls executing, the
/// connection's next REQUEST is refused RESOURCE_EXHAUSTED with `retry_after_ms` 100
/// and does not run; once a call ends, calls run again.
#[tokio::test]
async fn the_in_flight_cap_refuses_with_the_retry_hint() {
    let mut limits = Limits::default();
    limits.max_in_flight = 2;
    let server = TestServer::start_with(|builder| builder.limits(limits)).await;
    let (mut raw, grant) = server.raw_session(&server.agent, Vec::new()).await;
    assert_eq!(grant.limits.max_in_flight, 2);
    for id in [1, 2] {
        raw.send(Message::Request(raw.request(
            id,
            "slow",
            &serde_json::json!({}),
        )))
        .await;
    }
    server.probes.slow.wait_runs(2).await;
    let error = refusal(&mut raw, 3, "echo", &text("third")).await;
    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(error.retry_after_ms, Some(100));
    assert_eq!(error.message, "too many calls in flight");
    assert_eq!(server.probes.echo.runs(), 0);

    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    assert_eq!(raw.expect_error(1).await.error_code(), ErrorCode::CANCELLED);
    raw.send(Message::Request(raw.request(3, "echo", &text("now"))))
        .await;
    raw.expect_response(3).await;
}

/// Clauses: AUTHZ-004, ERR-005 — calls are charged to a budget per client identity,
/// shared by its connections: past the burst a call is refused RESOURCE_EXHAUSTED
/// with `retry_after_ms` (the wait until it fits, at most one refill period here)
/// and does not run, while another identity is unaffected.
#[tokio::test]
async fn the_identity_budget_refuses_past_its_burst_across_connections() {
    let other = Identity::generate(&mut rand_core::OsRng);
    let other_key = other.public_key();
    let mut limits = Limits::default();
    limits.rate_per_sec = 1;
    limits.burst = 3;
    let server =
        TestServer::start_with(|builder| builder.limits(limits).allow_client(other_key)).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    for id in 1..=2 {
        first
            .send(Message::Request(first.request(id, "echo", &text("ok"))))
            .await;
        first.expect_response(id).await;
    }
    let (mut second, _) = server.raw_session(&server.agent, Vec::new()).await;
    second
        .send(Message::Request(second.request(1, "echo", &text("ok"))))
        .await;
    second.expect_response(1).await;
    let error = refusal(&mut second, 2, "echo", &text("over")).await;
    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(error.message, "rate limit exceeded");
    let wait = error.retry_after_ms.expect("retry_after_ms");
    assert!((1..=1000).contains(&wait), "{wait}");
    assert_eq!(server.probes.echo.runs(), 3);

    let (mut theirs, _) = server.raw_session(&other, Vec::new()).await;
    theirs
        .send(Message::Request(theirs.request(1, "echo", &text("mine"))))
        .await;
    theirs.expect_response(1).await;
    assert_eq!(server.probes.echo.runs(), 4);
}

/// Clauses: AUTHZ-004, AUTHZ-006 — a budget per (identity, tool) throttles one tool
/// without starving the others; it exists only for tools of the manifest, so calls
/// to made-up names are never charged to it (they are refused PERMISSION_DENIED
/// however many are sent, never RESOURCE_EXHAUSTED).
#[tokio::test]
async fn the_per_tool_budget_is_kept_only_for_real_tools() {
    let mut limits = Limits::default();
    limits.per_tool_rate_per_sec = 1;
    limits.per_tool_burst = 1;
    let server = TestServer::start_with(|builder| builder.limits(limits)).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    raw.send(Message::Request(raw.request(1, "echo", &text("one"))))
        .await;
    raw.expect_response(1).await;
    let error = refusal(&mut raw, 2, "echo", &text("two")).await;
    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert!(error.retry_after_ms.is_some());
    raw.send(Message::Request(raw.request(
        3,
        "ticker",
        &serde_json::json!({"count": 0}),
    )))
    .await;
    raw.expect_response(3).await;

    for id in 10..20 {
        let name = if id % 2 == 0 {
            "made-up"
        } else {
            "other-made-up"
        };
        let error = refusal(&mut raw, id, name, &text("probe")).await;
        assert_eq!(error.error_code(), ErrorCode::PERMISSION_DENIED, "{name}");
    }
}

/// Clauses: AUTHZ-005 — a call refused at a later step still used up its budget:
/// after two unsigned (UNAUTHENTICATED) calls a burst of 2 is spent.
#[tokio::test]
async fn refused_calls_keep_their_budget_charge() {
    let mut limits = Limits::default();
    limits.rate_per_sec = 1;
    limits.burst = 2;
    let server = TestServer::start_with(|builder| builder.limits(limits)).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    for id in 1..=2 {
        let mut unsigned = raw.request(id, "echo", &text("unsigned"));
        unsigned.signature = None;
        raw.send(Message::Request(unsigned)).await;
        assert_eq!(
            raw.expect_error(id).await.error_code(),
            ErrorCode::UNAUTHENTICATED
        );
    }
    let error = refusal(&mut raw, 3, "echo", &text("signed")).await;
    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(server.probes.echo.runs(), 0);
}

/// A tool whose arguments are an object of integers.
fn integers_tool() -> Tool {
    Tool::new(
        "sum",
        "Adds the values of an object of integers.",
        serde_json::json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        |args, _| async move {
            let sum: i64 = args
                .as_object()
                .map(|object| object.values().filter_map(serde_json::Value::as_i64).sum())
                .unwrap_or(0);
            Ok(serde_json::json!(sum))
        },
    )
}

/// Clauses: AUTHZ-020, AUTHZ-022, ERR-007 — arguments are validated against the
/// tool's JSON Schema: a violation is refused INVALID_ARGUMENT with `invalid
/// arguments: ` and the validator's reason, cut to 256 bytes, which names where the
/// violation is but never the argument value; the handler does not run.
#[tokio::test]
async fn schema_violations_are_refused_with_a_bounded_reason_without_values() {
    let server = TestServer::start_with(|builder| builder.tool(integers_tool())).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let secret = "s3cr3t-Passw0rd";
    let error = refusal(
        &mut raw,
        1,
        "echo",
        &serde_json::json!({"text": 42, "note": secret}),
    )
    .await;
    assert_eq!(error.error_code(), ErrorCode::INVALID_ARGUMENT);
    assert!(
        error.message.starts_with("invalid arguments: "),
        "{}",
        error.message
    );
    assert!(error.message.contains("text"), "{}", error.message);
    assert!(!error.message.contains("42"), "{}", error.message);
    let error = refusal(
        &mut raw,
        2,
        "sum",
        &serde_json::json!({"a": 1, "b": secret}),
    )
    .await;
    assert_eq!(error.error_code(), ErrorCode::INVALID_ARGUMENT);
    assert!(!error.message.contains(secret), "{}", error.message);
    assert_eq!(server.probes.echo.runs(), 0);

    // A reason longer than 256 bytes (the location names a long key) is cut.
    let long_key = "k".repeat(1000);
    let error = refusal(&mut raw, 3, "sum", &serde_json::json!({ long_key: "x" })).await;
    assert_eq!(error.error_code(), ErrorCode::INVALID_ARGUMENT);
    let reason = error
        .message
        .strip_prefix("invalid arguments: ")
        .expect("prefixed");
    assert_eq!(reason.len(), 256, "{reason}");

    raw.send(Message::Request(raw.request(
        4,
        "sum",
        &serde_json::json!({"a": 1, "b": 2}),
    )))
    .await;
    let response = raw.expect_response(4).await;
    let sum: serde_json::Value = rmp_serde::from_slice(&response.result).expect("msgpack");
    assert_eq!(sum, serde_json::json!(3));
}

/// Collects everything logged on this thread.
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

/// Clauses: AUTHZ-024, AUTHZ-025 — every evaluation (executed, refused, answered
/// from the cache) is logged as a decision record with the session, client,
/// lineage, request id, retry flag, tool, decision, refusing step, policy version
/// and authority; the log never holds argument bytes or signatures.
#[tokio::test]
async fn every_evaluation_is_logged_as_a_decision_record() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let secret = "s3cr3t-Passw0rd";
    let call = raw.request(5, "echo", &text(secret));
    raw.send(Message::Request(call.clone())).await;
    raw.expect_response(5).await;
    let mut retry = call.clone();
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    raw.expect_response(5).await;
    let error = refusal(&mut raw, 6, "no-such-tool", &text(secret)).await;
    assert_eq!(error.error_code(), ErrorCode::PERMISSION_DENIED);
    within("log lines", async {
        while captured.text().matches("toolwire::decision").count() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;

    let log = captured.text();
    let records: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("toolwire::decision"))
        .collect();
    assert_eq!(records.len(), 3, "{log}");
    let session_id = raw.session_id();
    let session_prefix: String = session_id[..8].iter().map(|b| format!("{b:02x}")).collect();
    let lineage: String = session_id[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for (record, (id, retry, decision, step, authority)) in records.iter().zip([
        ("5", "false", "Execute", None, "KeyAllowlist"),
        ("5", "true", "AnsweredFromCache", None, "KeyAllowlist"),
        ("6", "false", "Refused", Some("granted"), "None"),
    ]) {
        assert!(
            record.contains(&format!("session={session_prefix}")),
            "{record}"
        );
        assert!(
            record.contains(&format!("client={}", server.agent.public_key())),
            "{record}"
        );
        assert!(record.contains(&format!("lineage={lineage}")), "{record}");
        assert!(record.contains(&format!("request_id={id}")), "{record}");
        assert!(record.contains(&format!("retry={retry}")), "{record}");
        assert!(record.contains("tool="), "{record}");
        assert!(record.contains(&format!("decision={decision}")), "{record}");
        if let Some(step) = step {
            assert!(
                record.contains(&format!("refused_at=\"{step}\"")),
                "{record}"
            );
        }
        assert!(record.contains("policy_version=1"), "{record}");
        assert!(
            record.contains(&format!("authority={authority}"))
                || record.contains(&format!("authority=Some({authority})")),
            "{record}"
        );
    }
    let signature: String = call
        .signature
        .as_deref()
        .expect("signed")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!log.contains(secret), "argument values logged");
    assert!(!log.contains(&signature[..16]), "signature logged");
}

//! Threat: hostile encodings aimed at a tool's handler (THREATS.md §12). Arguments
//! are validated against the tool's JSON Schema before the handler is reached: a
//! call whose arguments violate the schema, are not msgpack, or carry bytes after
//! the msgpack value (signed, but never seen by the handler) is refused with
//! INVALID_ARGUMENT, the reason quoting no argument value, and the handler never
//! runs; valid arguments go through.
//!
//! Clauses: AUTHZ-020, AUTHZ-022, AUTHZ-023, MSG-007.

mod common;

use common::{rpc_code, within, TestServer};
use toolwire_client::{CallError, CallOptions};
use toolwire_server::protocol::ErrorCode;

#[tokio::test]
async fn arguments_violating_the_schema_are_refused_before_the_handler() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    for (tool, args) in [
        ("echo", serde_json::json!({"text": 5})),
        ("echo", serde_json::json!({})),
        ("echo", serde_json::json!({"text": {"nested": ["object"]}})),
        ("echo", serde_json::json!(["text", "hi"])),
        ("echo", serde_json::json!(null)),
        ("ticker", serde_json::json!({"count": -1})),
        ("ticker", serde_json::json!({"count": 100_000})),
        ("ticker", serde_json::json!({"count": "3"})),
    ] {
        let outcome = within("call", session.call(tool, &args)).await;
        assert_eq!(
            rpc_code(outcome),
            ErrorCode::INVALID_ARGUMENT,
            "{tool} {args}"
        );
    }
    // Bytes that are not msgpack at all (0xc1 is never used by msgpack).
    let outcome = within(
        "call",
        session.call_raw("echo", vec![0xc1], CallOptions::default()),
    )
    .await;
    match outcome {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, ErrorCode::INVALID_ARGUMENT),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // Trailing bytes after a valid value.
    let mut trailing =
        rmp_serde::to_vec_named(&serde_json::json!({"text": "hi"})).expect("msgpack");
    trailing.push(0x00);
    let outcome = within(
        "call",
        session.call_raw("echo", trailing, CallOptions::default()),
    )
    .await;
    match outcome {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, ErrorCode::INVALID_ARGUMENT),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // The reason names the violation and where it is, never the value.
    let outcome = within(
        "call",
        session.call(
            "echo",
            &serde_json::json!({"text": {"password": "hunter2"}}),
        ),
    )
    .await;
    match outcome {
        Err(CallError::Rpc { code, message, .. }) => {
            assert_eq!(code, ErrorCode::INVALID_ARGUMENT);
            assert!(message.starts_with("invalid arguments: "), "{message}");
            assert!(message.contains("/text"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);

    let echoed = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "fine"})),
    )
    .await
    .expect("valid arguments");
    assert_eq!(echoed, serde_json::json!({"text": "fine"}));
    assert_eq!(server.probes.echo.runs(), 1);
}

//! A tool result that does not fit in one record (REC-014, REC-034): the server never
//! seals an inner message over the record limit; the caller is answered INTERNAL (13)
//! at once instead of waiting for its deadline, the ERROR is the call's outcome (a
//! retried copy of the id gets the same ERROR, the tool does not run again), the audit
//! log records it, and the connection stays usable.
//!
//! Clauses: REC-014, REC-034, AMO-020, AMO-021.

mod common;

use common::{within, TestServer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use toolwire_server::protocol::audit::verify_log;
use toolwire_server::protocol::{ErrorCode, Message};
use toolwire_server::Tool;

/// Returns a 70,000-byte string (over the 65,520 bytes one record can carry), counting
/// its runs.
fn big_tool(runs: Arc<AtomicU64>) -> Tool {
    Tool::new(
        "big",
        "Returns 70,000 bytes.",
        serde_json::json!({"type": "object"}),
        move |_, _| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok(serde_json::json!("x".repeat(70_000))) }
        },
    )
}

#[tokio::test]
async fn a_result_larger_than_a_record_is_answered_internal_and_cached() {
    let runs = Arc::new(AtomicU64::new(0));
    let log = std::env::temp_dir().join(format!(
        "toolwire-oversize-result-{}-{}.jsonl",
        std::process::id(),
        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
    ));
    let server = TestServer::start_with({
        let runs = runs.clone();
        let log = log.clone();
        move |builder| builder.tool(big_tool(runs)).audit_log(log)
    })
    .await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;

    raw.send(Message::Request(raw.request(
        1,
        "big",
        &serde_json::json!({}),
    )))
    .await;
    // The answer comes at once (well before any deadline), as a typed ERROR.
    let error = within(
        "the ERROR answering the oversize result",
        raw.expect_error(1),
    )
    .await;
    assert_eq!(ErrorCode(error.code), ErrorCode::INTERNAL, "{error:?}");
    assert_eq!(error.message, "result too large for one record");

    // A retried copy of the id is answered from the cache: same ERROR, no second run.
    let mut retry = raw.request(1, "big", &serde_json::json!({}));
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    let again = within("the cached ERROR", raw.expect_error(1)).await;
    assert_eq!((again.code, again.message), (error.code, error.message));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The connection still serves calls.
    raw.send(Message::Request(raw.request(
        2,
        "echo",
        &serde_json::json!({"text": "still here"}),
    )))
    .await;
    let response = within("the next call's RESPONSE", raw.expect_response(2)).await;
    let value: serde_json::Value = rmp_serde::from_slice(&response.result).expect("msgpack");
    assert_eq!(value, serde_json::json!({"text": "still here"}));
    raw.expect_silence(Duration::from_millis(100)).await;

    // The audit log records the ERROR as the call's end, and still verifies.
    server
        .server
        .shutdown(Duration::from_secs(2))
        .await
        .expect("clean shutdown");
    let text = std::fs::read_to_string(&log).expect("audit log");
    let _ = std::fs::remove_file(&log);
    verify_log(&text, &server.server_key).expect("the log verifies");
    let ended: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
        .filter(|entry| entry["request_id"] == 1 && entry["decision"] == "execute")
        .collect();
    assert_eq!(ended.len(), 1, "{text}");
    assert!(
        ended[0]["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("INTERNAL")),
        "{}",
        ended[0]
    );
    assert!(ended[0]["response"].is_null(), "{}", ended[0]);
}

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

/// Streams one small item, then a 70,000-byte one (which cannot travel in one record),
/// then would stream 20 more, 10 ms apart, and mark itself finished.
fn oversize_item_tool(finished: Arc<AtomicU64>) -> Tool {
    Tool::new(
        "oversize_item",
        "Streams a small item, then one too large for a record.",
        serde_json::json!({"type": "object"}),
        move |_, context| {
            let finished = finished.clone();
            async move {
                let _ = context.send_item(serde_json::json!("small")).await;
                let _ = context
                    .send_item(serde_json::json!("y".repeat(70_000)))
                    .await;
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = context.send_item(serde_json::json!("after")).await;
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(serde_json::json!("finished"))
            }
        },
    )
}

/// REC-014, REC-034: a STREAM_ITEM that does not fit in one record is never sealed;
/// instead of leaving the caller a silent gap in the stream, the call ends at once
/// with ERROR INTERNAL (13), the handler is stopped (no item follows the ERROR, and
/// its late result is not sent), and the connection keeps serving.
#[tokio::test]
async fn a_stream_item_larger_than_a_record_ends_the_call_internal() {
    let finished = Arc::new(AtomicU64::new(0));
    let server = TestServer::start_with({
        let finished = finished.clone();
        move |builder| builder.tool(oversize_item_tool(finished))
    })
    .await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    raw.send(Message::Request(raw.request(
        7,
        "oversize_item",
        &serde_json::json!({}),
    )))
    .await;
    let first = within("the small item", raw.expect_message()).await;
    let Message::StreamItem(item) = first else {
        panic!("expected the small STREAM_ITEM, got {first:?}");
    };
    assert_eq!((item.id, item.index), (7, 0));
    let error = within("the ERROR ending the call", raw.expect_error(7)).await;
    assert_eq!(ErrorCode(error.code), ErrorCode::INTERNAL, "{error:?}");
    assert_eq!(error.message, "stream item too large for one record");
    // Nothing of the call follows its ERROR: no item, no RESPONSE.
    raw.expect_silence(Duration::from_millis(600)).await;
    // The handler would have finished its 20 paced items by now had it not been stopped.
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the handler was stopped"
    );

    raw.send(Message::Request(raw.request(
        8,
        "echo",
        &serde_json::json!({"text": "next"}),
    )))
    .await;
    within("the next call's RESPONSE", raw.expect_response(8)).await;
}

/// REC-034 at the edge: a result whose RESPONSE is just inside the record limit is
/// answered with it; a few bytes more and it is answered INTERNAL. (The server only
/// measures results near the limit exactly; this pins that shortcut to the truth.)
#[tokio::test]
async fn results_at_the_record_limit_are_measured_exactly() {
    let server = TestServer::start_with(|builder| {
        builder.tool(Tool::new(
            "sized",
            "Returns a string of `len` bytes.",
            serde_json::json!({"type": "object"}),
            |args, _| async move {
                let len = args["len"].as_u64().unwrap_or(0) as usize;
                Ok(serde_json::json!("z".repeat(len)))
            },
        ))
    })
    .await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    // Find the largest answered length by walking down from the record limit: every
    // length above it is INTERNAL, and it is within the framing of the limit.
    let mut largest_answered = None;
    for (id, len) in (65_200..=65_520u64).rev().step_by(4).enumerate() {
        let id = id as u64 + 1;
        raw.send(Message::Request(raw.request(
            id,
            "sized",
            &serde_json::json!({ "len": len }),
        )))
        .await;
        match within("an answer", raw.expect_message()).await {
            Message::Response(response) if response.id == id => {
                let value: serde_json::Value =
                    rmp_serde::from_slice(&response.result).expect("msgpack");
                assert_eq!(value.as_str().map(str::len), Some(len as usize));
                largest_answered = Some(len);
                break;
            }
            Message::Error(error) if error.id == Some(id) => {
                assert_eq!(ErrorCode(error.code), ErrorCode::INTERNAL, "{error:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let largest = largest_answered.expect("a result near the limit is answered");
    assert!(
        largest < 65_520 && largest > 65_520 - 256,
        "largest answered result: {largest} bytes"
    );
}

//! Spec section 9, "Inner messages" (MSG), at the real server: how it numbers and
//! ends streams, what its result and item bytes are, and that it verifies
//! signatures over the argument bytes exactly as they arrived.

mod spec_support;

use serde::de::{Deserialize as _, IgnoredAny};
use spec_support::*;
use std::collections::HashMap;
use std::time::Duration;
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{ErrorCode, Message};

/// Whether `bytes` is exactly one msgpack value.
fn exactly_one_value(bytes: &[u8]) -> bool {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    IgnoredAny::deserialize(&mut deserializer).is_ok() && deserializer.get_ref().is_empty()
}

/// Clauses: MSG-008, MSG-009, MSG-007 — the STREAM_ITEMs of each call are numbered
/// from 0 by one (two interleaved streams each have their own numbering), each
/// item and result is exactly one msgpack value, and nothing of a call follows its
/// RESPONSE.
#[tokio::test]
async fn stream_items_are_numbered_per_call_and_end_with_the_response() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    for (id, count) in [(1u64, 5u64), (2, 7)] {
        let call = raw.request(
            id,
            "ticker",
            &serde_json::json!({"count": count, "interval_ms": 3}),
        );
        raw.send(Message::Request(call)).await;
    }
    let mut indexes: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut finished: HashMap<u64, serde_json::Value> = HashMap::new();
    while finished.len() < 2 {
        match raw.expect_message().await {
            Message::StreamItem(item) => {
                assert!(!finished.contains_key(&item.id), "item after the RESPONSE");
                assert!(
                    exactly_one_value(&item.data),
                    "item data: {:02x?}",
                    item.data
                );
                indexes.entry(item.id).or_default().push(item.index);
            }
            Message::Response(response) => {
                assert!(exactly_one_value(&response.result));
                let value: serde_json::Value =
                    rmp_serde::from_slice(&response.result).expect("a value");
                finished.insert(response.id, value);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(indexes[&1], (0..5).collect::<Vec<u64>>());
    assert_eq!(indexes[&2], (0..7).collect::<Vec<u64>>());
    assert_eq!(finished[&1], serde_json::json!(5));
    assert_eq!(finished[&2], serde_json::json!(7));
    raw.expect_silence(Duration::from_millis(200)).await;
}

/// Clauses: MSG-009 — once a call is answered (here CANCELLED), no STREAM_ITEM of
/// it follows, though its handler was still producing items.
#[tokio::test]
async fn no_stream_item_follows_the_final_answer() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    let call = raw.request(
        9,
        "ticker",
        &serde_json::json!({"count": 1000, "interval_ms": 5}),
    );
    raw.send(Message::Request(call)).await;
    let mut last_index = None;
    for expected in 0..3 {
        match raw.expect_message().await {
            Message::StreamItem(item) => {
                assert_eq!((item.id, item.index), (9, expected));
                last_index = Some(item.index);
            }
            other => panic!("expected an item, got {other:?}"),
        }
    }
    raw.send(Message::Cancel(Cancel { id: 9 })).await;
    loop {
        match raw.expect_message().await {
            Message::StreamItem(item) => {
                // Items sent before the CANCEL arrived, still in order.
                assert_eq!(Some(item.index), last_index.map(|index| index + 1));
                last_index = Some(item.index);
            }
            Message::Error(error) => {
                assert_eq!(
                    (error.id, error.error_code()),
                    (Some(9), ErrorCode::CANCELLED)
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    raw.expect_silence(Duration::from_millis(300)).await;
}

/// Clauses: MSG-006 — the server verifies the envelope signature over the argument
/// bytes exactly as received: arguments in a valid but non-canonical msgpack
/// encoding, signed as they are, are accepted and reach the tool.
#[tokio::test]
async fn signatures_cover_the_argument_bytes_as_sent() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    // {"n": 5, "text": "hi"} with keys out of order, 5 as uint 64, "hi" as str 8.
    let mut args = vec![0x82];
    args.extend_from_slice(&[0xa4, b't', b'e', b'x', b't', 0xd9, 0x02, b'h', b'i']);
    args.extend_from_slice(&[0xa1, b'n', 0xcf, 0, 0, 0, 0, 0, 0, 0, 5]);
    let canonical =
        rmp_serde::to_vec_named(&serde_json::json!({"n": 5, "text": "hi"})).expect("msgpack");
    assert_ne!(args, canonical);
    let call = raw.request_with_bytes(1, "echo", args);
    raw.send(Message::Request(call)).await;
    match raw.expect_message().await {
        Message::Response(response) => {
            let value: serde_json::Value =
                rmp_serde::from_slice(&response.result).expect("a value");
            assert_eq!(value, serde_json::json!({"n": 5, "text": "hi"}));
        }
        other => panic!("expected a RESPONSE, got {other:?}"),
    }
}

/// Clauses: MSG-012 — a call whose `deadline_ms` passes is stopped and answered
/// with DEADLINE_EXCEEDED (4), well before the tool would have finished.
#[tokio::test]
async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
    let served = Served::start().await;
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    let mut call = raw.request(3, "slow", &serde_json::json!({}));
    call.deadline_ms = Some(100);
    let started = std::time::Instant::now();
    raw.send(Message::Request(call)).await;
    match raw.expect_message().await {
        Message::Error(error) => assert_eq!(
            (error.id, error.error_code()),
            (Some(3), ErrorCode::DEADLINE_EXCEEDED)
        ),
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(90), "after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "after {elapsed:?}");
}

//! Spec section 17, "Default limits" (LIM), enforced by the real server with its
//! default limits: calls in flight per connection, the per-identity rate budget,
//! and connections that have not completed the handshake per IP address.

mod spec_support;

use spec_support::*;
use std::time::{Duration, Instant};
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{ErrorCode, Message, SUBPROTOCOL};
use toolwire_server::Limits;

/// Clauses: LIM-010 — by default a connection has at most 64 calls in flight: the
/// 65th concurrent call is refused with RESOURCE_EXHAUSTED and a retry hint, and
/// once a call ends (here, cancelled) a new one is admitted.
#[tokio::test]
async fn the_65th_call_in_flight_is_refused() {
    let served = Served::start().await;
    assert_eq!(Limits::default().max_in_flight, 64);
    let mut raw = RawClient::session(&served.url, served.agent_config()).await;
    for id in 1..=64 {
        let call = raw.request(id, "slow", &serde_json::json!({}));
        raw.send(Message::Request(call)).await;
    }
    let call = raw.request(65, "echo", &serde_json::json!({}));
    raw.send(Message::Request(call)).await;
    match raw.expect_message().await {
        Message::Error(error) => {
            assert_eq!(error.id, Some(65));
            assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
            assert!(error.retry_after_ms.is_some());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    raw.send(Message::Cancel(Cancel { id: 1 })).await;
    match raw.expect_message().await {
        Message::Error(error) => {
            assert_eq!(
                (error.id, error.error_code()),
                (Some(1), ErrorCode::CANCELLED)
            );
        }
        other => panic!("expected CANCELLED, got {other:?}"),
    }
    let call = raw.request(66, "echo", &serde_json::json!({"n": 66}));
    raw.send(Message::Request(call)).await;
    match raw.expect_message().await {
        Message::Response(response) => assert_eq!(response.id, 66),
        other => panic!("expected a RESPONSE, got {other:?}"),
    }
}

/// Pipelines calls of `tool` on `raw` in batches of 32 (below the in-flight cap),
/// ids from `first_id`, until one is refused for its rate or `max` calls succeeded;
/// returns the successes and the refusal's retry hint.
async fn calls_until_rate_limited(
    raw: &mut RawClient,
    tool: &str,
    args: &serde_json::Value,
    first_id: u64,
    max: usize,
) -> (usize, Option<Option<u64>>) {
    let mut succeeded = 0;
    let mut next_id = first_id;
    while succeeded < max {
        let batch = 32.min(max - succeeded);
        for _ in 0..batch {
            let mut call = raw.request_with_bytes(
                next_id,
                tool,
                rmp_serde::to_vec_named(args).expect("msgpack"),
            );
            // Unsigned (the server below does not require signatures): Ed25519 in a
            // debug build is slower than the budget's refill rate.
            call.signature = None;
            next_id += 1;
            raw.send(Message::Request(call)).await;
        }
        let mut refusal = None;
        for _ in 0..batch {
            match raw.expect_message().await {
                Message::Response(_) => succeeded += 1,
                Message::Error(error) => {
                    assert_eq!(error.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
                    assert_eq!(
                        error.message, "rate limit exceeded",
                        "not the in-flight cap"
                    );
                    refusal.get_or_insert(error.retry_after_ms);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if refusal.is_some() {
            return (succeeded, refusal);
        }
    }
    (succeeded, None)
}

/// Clauses: LIM-011 — by default a client identity has a budget of 100 calls per
/// second with a burst of 200, shared by all its connections: 150 calls on one
/// connection and the rest of the burst on a second one pass, and the second
/// connection's calls are refused with RESOURCE_EXHAUSTED long before its own 200.
#[tokio::test]
async fn the_rate_budget_is_100_per_second_with_a_burst_of_200_per_identity() {
    // Envelope signatures off: in a debug build they cost more time per call than
    // the refill rate leaves; the rate budget does not depend on them.
    let served =
        Served::start_with(|builder| builder.dangerous().disable_envelope_signatures().done())
            .await;
    let mut first = RawClient::session(&served.url, served.agent_config()).await;
    let mut second = RawClient::session(&served.url, served.agent_config()).await;
    let started = Instant::now();
    let (on_first, refused) =
        calls_until_rate_limited(&mut first, "echo", &serde_json::json!({}), 1, 150).await;
    assert_eq!((on_first, refused), (150, None), "150 of the burst of 200");
    let (on_second, refused) = calls_until_rate_limited(
        &mut second,
        "ticker",
        &serde_json::json!({"count": 0}),
        1,
        400,
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let retry_after = refused
        .expect("the second connection is refused")
        .expect("a retry hint");
    assert!(retry_after > 0);
    let total = on_first + on_second;
    // The burst is honoured, and no more than the burst plus 100/s of refill.
    assert!(total >= 200, "only {total} calls before the first refusal");
    let refill = (100.0 * elapsed).ceil() as usize + 2;
    assert!(
        total <= 200 + refill,
        "{total} calls in {elapsed:.3} s: more than 200 + 100/s"
    );
    assert!(
        on_second < 200,
        "the budget is per identity, not per connection"
    );
}

/// Clauses: TRN-022, LIM-012 — by default an IP address may hold 64 connections
/// that have not completed the handshake: the 65th upgrade from it is refused with
/// 429 before any handshake, and as soon as one of the 64 completes its handshake a
/// new connection is admitted.
#[tokio::test]
async fn an_address_may_hold_64_connections_before_their_handshake() {
    let mut limits = Limits::default();
    assert_eq!(limits.max_unauthenticated_per_ip, 64);
    limits.connection.handshake_timeout = Duration::from_secs(60);
    limits.upgrade_timeout = Duration::from_secs(60);
    let served = Served::start_with(|builder| builder.limits(limits)).await;
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(raw_socket(&served.url).await);
    }
    let refused = raw_upgrade(served.addr, &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]).await;
    assert_eq!(refused.status, 429);
    assert!(refused.subprotocols.is_empty());

    // One of them authenticates: its slot is free again.
    let socket = held.pop().expect("a held socket");
    let mut raw = RawClient::handshake_over(socket, served.agent_config()).await;
    assert!(matches!(
        raw.next().await,
        Received::Message(Message::CapGrant(_))
    ));
    let admitted = within("a free slot", async {
        loop {
            let answer = raw_upgrade(served.addr, &[("Sec-WebSocket-Protocol", SUBPROTOCOL)]).await;
            if answer.status == 101 {
                return answer;
            }
            assert_eq!(answer.status, 429);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(admitted.subprotocols, [SUBPROTOCOL]);
    drop(held);
}

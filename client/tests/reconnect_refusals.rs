//! What the client does not reconnect, and how far it tries when it does.
//!
//! - A server close whose code names a refusal (RATE_LIMITED) ends the session: it is
//!   surfaced to the callers and no new connection is opened (ERR-004: no automatic
//!   retry of what is not retryable).
//! - A reconnect refused for good (the client was removed from the allowlist:
//!   AUTH_FAILED) stops at once, without a loop.
//! - A server that is gone is tried a bounded number of times; the waiting call then
//!   fails with a typed error, and the session stays usable for later calls.
//! - With reconnection disabled, a cut fails the calls in flight at once.
//!
//! Clauses: AMO-027 (nothing is re-issued under a new id), AMO-009.

mod common;

use common::{fast_policy, limits, until, within, Harness};
use std::sync::Arc;
use toolwire_client::{CallError, ReconnectPolicy};
use toolwire_server::protocol::{CloseCode, ErrorCode};

#[tokio::test]
async fn a_rate_limited_close_is_surfaced_and_not_reconnected() {
    let harness = Harness::new().await;
    let mut limits = limits();
    limits.rate_per_sec = 1;
    limits.burst = 1;
    limits.max_consecutive_refusals = 3;
    let instance = harness.start_server(limits, |builder| builder).await;
    let session = harness.connect(harness.client()).await;

    let mut closed = None;
    for n in 0..20 {
        match within("call", session.call("echo", &serde_json::json!({"n": n}))).await {
            Ok(_) => {}
            Err(CallError::Rpc { code, .. }) => assert_eq!(code, ErrorCode::RESOURCE_EXHAUSTED),
            Err(CallError::ConnectionClosed { code }) => {
                closed = Some(code);
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(closed, Some(CloseCode::RATE_LIMITED));
    until("session closed", || session.close_code().is_some()).await;
    assert_eq!(session.close_code(), Some(CloseCode::RATE_LIMITED));
    let later = within("later call", session.call("echo", &serde_json::json!({}))).await;
    assert_eq!(
        later,
        Err(CallError::ConnectionClosed {
            code: CloseCode::RATE_LIMITED
        })
    );
    assert_eq!(harness.proxy.accepted(), 1, "no reconnect");
    assert!(instance.tools.echo.runs() >= 1);
}

#[tokio::test]
async fn a_reconnect_refused_for_good_is_not_repeated() {
    let harness = Harness::new().await;
    let instance = harness.start_server(limits(), |builder| builder).await;
    let session = Arc::new(harness.connect(harness.client()).await);
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({})).await }
    });
    instance.tools.gate.wait_runs(1).await;
    instance.server.remove_client(&harness.agent.public_key());
    harness.proxy.cut_all();

    let outcome = within("the call's answer", call).await.expect("task");
    match &outcome {
        Err(error @ CallError::ReconnectFailed { attempts, .. }) => {
            assert_eq!(*attempts, 1, "{error}");
            assert!(error.to_string().contains("4001"), "{error}");
            assert!(error.outcome_unknown());
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert_eq!(session.close_code(), Some(CloseCode::AUTH_FAILED));
    let later = within("later call", session.call("echo", &serde_json::json!({}))).await;
    assert_eq!(
        later,
        Err(CallError::ConnectionClosed {
            code: CloseCode::AUTH_FAILED
        })
    );
    assert_eq!(harness.proxy.accepted(), 2, "exactly one reconnect attempt");
    assert_eq!(instance.tools.gate.runs(), 1);
    instance.tools.gate.open();
}

#[tokio::test]
async fn reconnect_attempts_are_bounded_and_the_session_stays_usable() {
    let harness = Harness::new().await;
    let first = harness.start_server(limits(), |builder| builder).await;
    let session = Arc::new(
        harness
            .connect(
                harness
                    .client()
                    .reconnect(fast_policy().with_max_attempts(3)),
            )
            .await,
    );
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({})).await }
    });
    first.tools.gate.wait_runs(1).await;
    harness.proxy.refuse(true);
    harness.proxy.cut_all();

    let outcome = within("the call's answer", call).await.expect("task");
    match &outcome {
        Err(CallError::ReconnectFailed { code, attempts, .. }) => {
            assert_eq!(*code, CloseCode::GOING_AWAY);
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert_eq!(
        harness.proxy.accepted(),
        1 + 3,
        "three attempts, then no more"
    );
    assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY));
    assert_eq!(first.tools.gate.runs(), 1);

    // The server is back: the next call reconnects and runs; the lost call is not
    // repeated.
    harness.proxy.refuse(false);
    let next = within(
        "next call",
        session.call("echo", &serde_json::json!({"n": 2})),
    )
    .await;
    assert_eq!(next, Ok(serde_json::json!({"n": 2})));
    assert_eq!(session.close_code(), None);
    assert_eq!(first.tools.gate.runs(), 1);
    first.tools.gate.open();
}

#[tokio::test]
async fn without_reconnection_a_cut_fails_the_calls_in_flight() {
    let harness = Harness::new().await;
    let instance = harness.start_server(limits(), |builder| builder).await;
    let session = Arc::new(
        harness
            .connect(harness.client().reconnect(ReconnectPolicy::disabled()))
            .await,
    );
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({})).await }
    });
    instance.tools.gate.wait_runs(1).await;
    harness.proxy.cut_all();

    let outcome = within("the call's answer", call).await.expect("task");
    assert_eq!(
        outcome,
        Err(CallError::ConnectionClosed {
            code: CloseCode::GOING_AWAY
        })
    );
    assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY));
    assert_eq!(harness.proxy.accepted(), 1);
    instance.tools.gate.open();
}

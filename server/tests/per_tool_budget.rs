//! Threat: one expensive tool drained by a single caller (THREATS.md §11). Besides
//! the per-identity and per-connection buckets, each (identity, tool) pair has its
//! own budget: once it is exhausted, calls of that tool are refused with
//! RESOURCE_EXHAUSTED and a `retry_after_ms` that is truthful (waiting it is
//! enough), while the same client's other tools, and other clients' calls of the
//! same tool, stay callable.
//!
//! Clauses: AUTHZ-004, ERR-005, ERR-006.

mod common;

use common::{within, TestServer};
use futures_util::future::join_all;
use std::time::Duration;
use toolwire_client::CallError;
use toolwire_server::protocol::{ErrorCode, Identity};
use toolwire_server::Limits;

const BURST: usize = 3;

#[tokio::test]
async fn exhausted_tool_budget_refuses_that_tool_only() {
    let other_client = Identity::generate(&mut rand_core::OsRng);
    let mut limits = Limits::default();
    limits.per_tool_rate_per_sec = 2;
    limits.per_tool_burst = 3;
    let server = TestServer::start_with(|builder| {
        builder
            .allow_client(other_client.public_key())
            .limits(limits)
    })
    .await;
    let session = server.agent_session().await;
    let args = serde_json::json!({"text": "expensive"});

    // Two more calls than the burst, back to back: a token refills only every 500 ms.
    let outcomes = within(
        "calls",
        join_all((0..BURST + 2).map(|_| session.call("echo", &args))),
    )
    .await;
    let mut succeeded = 0;
    let mut retry_after = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(_) => succeeded += 1,
            Err(CallError::Rpc {
                code,
                retry_after_ms,
                ..
            }) => {
                assert_eq!(code, ErrorCode::RESOURCE_EXHAUSTED);
                let millis = retry_after_ms.expect("retry_after_ms is set");
                assert!(
                    (1..=500).contains(&millis),
                    "retry_after_ms {millis} for a 2/s budget"
                );
                retry_after.push(millis);
            }
            Err(other) => panic!("unexpected outcome {other}"),
        }
    }
    assert!(succeeded >= BURST, "{succeeded} calls succeeded");
    assert!(!retry_after.is_empty(), "no call was refused");
    assert_eq!(server.probes.echo.runs(), succeeded);

    // Other tools of the same client (each with its own budget of the same size), and
    // the same tool for another client.
    let zero = serde_json::json!({"count": 0});
    let ticks = within(
        "calls",
        join_all((0..BURST).map(|_| session.call("ticker", &zero))),
    )
    .await;
    for tick in ticks {
        assert_eq!(
            tick.expect("another tool stays callable"),
            serde_json::json!(0)
        );
    }
    let other = server.session(&other_client).await;
    within("call", other.call("echo", &args))
        .await
        .expect("another client's budget is its own");

    // Waiting the advertised time is enough.
    let wait = retry_after.iter().copied().max().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    within("call", session.call("echo", &args))
        .await
        .expect("budget refilled after retry_after_ms");
    assert_eq!(server.probes.echo.runs(), succeeded + 2);
}

//! The server restarts while a call is running: the new instance behind the same URL
//! has lost the at-most-once table. The client reconnects, resumes its lineage (now
//! unknown to the server, so *recovered*) and re-sends the call as a retry: the server
//! cannot know whether it ran, answers RESULT_UNAVAILABLE, and never runs it a second
//! time. The client surfaces that as a typed error and does not repeat the call under
//! a new id; the next call of the session runs normally (spec A.9 step 3).
//!
//! Clauses: AMO-005, AMO-015 (recovered lineage, retry → RESULT_UNAVAILABLE),
//! AMO-008 (without `retry = true` the new server would have run the call again),
//! AMO-027 (not repeated under a new id).

mod common;

use common::{limits, within, Harness};
use std::sync::Arc;
use toolwire_client::CallError;
use toolwire_server::protocol::ErrorCode;

#[tokio::test]
async fn a_call_running_when_the_server_restarts_is_unavailable_and_never_runs_twice() {
    let harness = Harness::new().await;
    let before = harness.start_server(limits(), |builder| builder).await;
    let session = Arc::new(harness.connect(harness.client()).await);
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({"n": 1})).await }
    });
    before.tools.gate.wait_runs(1).await;

    // The server goes away with its state; a new instance takes over the URL.
    before.stop();
    let after = harness.start_server(limits(), |builder| builder).await;
    harness.proxy.cut_all();

    let outcome = within("the call's answer", call).await.expect("task");
    match &outcome {
        Err(error @ CallError::Rpc { code, .. }) => {
            assert_eq!(*code, ErrorCode::RESULT_UNAVAILABLE, "{error}");
            assert!(error.outcome_unknown());
        }
        other => panic!("expected RESULT_UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(before.tools.gate.runs(), 1);
    assert_eq!(after.tools.gate.runs(), 0, "never executed a second time");

    // A new call of the resumed lineage runs on the new server; the lost one was not
    // repeated.
    let next = within(
        "next call",
        session.call("echo", &serde_json::json!({"n": 2})),
    )
    .await;
    assert_eq!(next, Ok(serde_json::json!({"n": 2})));
    assert_eq!(after.tools.echo.runs(), 1);
    assert_eq!(after.tools.gate.runs(), 0);
    assert_eq!(harness.proxy.accepted(), 2);
    before.tools.gate.open();
}

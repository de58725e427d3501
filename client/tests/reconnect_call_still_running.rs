//! The client loses its connection while a call is still running, and reconnects
//! before the server noticed that the old connection died (here the server's side of
//! the old connection stays open). The re-sent call finds its id in flight: the
//! server does not run it again but answers it on the new connection with the running
//! call's outcome once that completes.
//!
//! Clauses: AMO-011 (the copy on another connection is answered on completion),
//! AMO-010 (not executed twice), AMO-008 (the copy is a retry).

mod common;

use common::{audit_calls, audit_path, limits, until, within, Harness};
use std::sync::Arc;

#[tokio::test]
async fn a_retry_of_a_call_still_running_gets_its_outcome_on_the_new_connection() {
    let harness = Harness::new().await;
    let audit = audit_path("still-running");
    let instance = harness
        .start_server(limits(), |builder| builder.audit_log(&audit))
        .await;
    let session = Arc::new(harness.connect(harness.client()).await);
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({"n": 1})).await }
    });
    instance.tools.gate.wait_runs(1).await;

    harness.proxy.cut_client_side();
    // The retry reached the server while the first delivery still runs.
    until("the retry is waiting for the running call", || {
        audit_calls(&audit)
            .iter()
            .any(|(id, retry, decision)| *id == 1 && *retry && decision == "already_in_flight")
    })
    .await;
    instance.tools.gate.open();

    let result = within("the call's answer", call).await.expect("task");
    let _ = std::fs::remove_file(&audit);
    assert_eq!(result, Ok(serde_json::json!({"n": 1})));
    assert_eq!(instance.tools.gate.runs(), 1);
    assert_eq!(harness.proxy.accepted(), 2);
}

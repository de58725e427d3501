//! A connection is cut after the server answered a call but before the answer reached
//! the client. The client reconnects on its own, resumes its lineage and re-sends the
//! call under the same request id as a retry: the server answers it from its result
//! cache, so the tool ran exactly once and the caller gets the original result.
//!
//! Clauses: AMO-003 (the lineage is the first 16 bytes of the first session id and is
//! named on reconnect), AMO-008 (the re-sent id carries `retry = true`), AMO-009 (no id
//! is ever re-sent with `retry = false`), AMO-012 (answered from the cache).

mod common;

use common::{audit_calls, audit_path, limits, within, Harness};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn an_answer_lost_in_a_cut_is_delivered_after_reconnecting_without_a_second_run() {
    let harness = Harness::new().await;
    let audit = audit_path("lost-response");
    let instance = harness
        .start_server(limits(), |builder| builder.audit_log(&audit))
        .await;
    let session = Arc::new(harness.connect(harness.client()).await);
    let first_session = session.session_id();
    let lineage = session.lineage_id();
    assert_eq!(lineage[..], first_session[..16], "AMO-003");

    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("gate", &serde_json::json!({"n": 1})).await }
    });
    instance.tools.gate.wait_runs(1).await;
    // The server's RESPONSE goes nowhere; once it reached the proxy the server has
    // recorded the outcome, and the connection is cut.
    harness.proxy.swallow_newest();
    instance.tools.gate.open();
    harness.proxy.wait_swallowed(1).await;
    harness.proxy.cut_all();

    let result = within("the call's answer", call).await.expect("task");
    assert_eq!(result, Ok(serde_json::json!({"n": 1})));
    assert_eq!(instance.tools.gate.runs(), 1, "executed exactly once");
    assert_eq!(harness.proxy.accepted(), 2, "one reconnect");
    assert_ne!(session.session_id(), first_session, "a fresh handshake");
    assert_eq!(session.lineage_id(), lineage, "the same lineage");
    assert_eq!(session.close_code(), None);

    // The session goes on over the new connection.
    let next = within(
        "next call",
        session.call("echo", &serde_json::json!({"n": 2})),
    )
    .await;
    assert_eq!(next, Ok(serde_json::json!({"n": 2})));

    within("shutdown", instance.server.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown");
    let calls = audit_calls(&audit);
    let _ = std::fs::remove_file(&audit);
    let deliveries: Vec<(bool, String)> = calls
        .iter()
        .filter(|(id, _, _)| *id == 1)
        .map(|(_, retry, decision)| (*retry, decision.clone()))
        .collect();
    assert_eq!(deliveries.len(), 2, "{calls:?}");
    // AMO-008, AMO-009: the first delivery executed; the re-sent one is a retry.
    assert!(
        deliveries.contains(&(false, "execute".to_owned())),
        "{calls:?}"
    );
    assert!(
        deliveries.contains(&(true, "answered_from_cache".to_owned())),
        "{calls:?}"
    );
    assert!(calls.iter().any(|(id, retry, _)| *id == 2 && !retry));
}

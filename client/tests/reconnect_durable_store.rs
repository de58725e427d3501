//! The server crashes after it answered a call whose answer never reached the client;
//! a new server starts on the same durable at-most-once store. The client reconnects
//! on its own and re-sends the call as a retry of its lineage: the new server answers
//! it with the original result from the store, and the tool ran exactly once.
//!
//! Clauses: AMO-035 (durable table across restarts), AMO-008 (the retry), AMO-012,
//! AMO-020.

mod common;

use common::{audit_path, within, Harness, Tools};
use std::sync::Arc;
use std::time::Duration;
use toolwire_client::ReconnectPolicy;

#[tokio::test]
async fn after_a_crash_the_retry_gets_the_original_result_from_the_durable_store() {
    let harness = Harness::new().await;
    let store = audit_path("amo-store").with_extension("redb");
    let tools = Tools::default();
    let first = harness.start_isolated_server(&tools, &store).await;
    // The restarted server takes a moment to come up (it waits for the killed one to
    // release the store): dials meanwhile fail, so allow enough attempts.
    let policy = ReconnectPolicy::default()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .with_max_attempts(50);
    let session = Arc::new(harness.connect(harness.client().reconnect(policy)).await);

    // The answer is swallowed: the call ran and its outcome is stored, but the client
    // has not seen it.
    harness.proxy.swallow_newest();
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("echo", &serde_json::json!({"n": 1})).await }
    });
    tools.echo.wait_runs(1).await;
    harness.proxy.wait_swallowed(1).await;

    first.kill();
    let _second = harness.start_isolated_server(&tools, &store).await;
    harness.proxy.cut_all();

    let result = within("the call's answer", call).await.expect("task");
    assert_eq!(result, Ok(serde_json::json!({"n": 1})));
    assert_eq!(
        tools.echo.runs(),
        1,
        "executed exactly once across the crash"
    );
    assert!(harness.proxy.accepted() >= 2);
    let _ = std::fs::remove_file(&store);
}

//! Many calls are in flight when the connection is cut: some already answered by the
//! server (answers lost with the connection), the others still running. After the
//! automatic reconnect every call ends with its own result, and each ran exactly
//! once.
//!
//! Clauses: AMO-008, AMO-009 (every re-sent id is a retry, each id executed once with
//! `retry = false`), AMO-011 (retries of running calls are answered on completion),
//! AMO-012 (retries of finished calls are answered from the cache), AMO-020.

mod common;

use common::{audit_calls, audit_path, limits, within, Harness};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const RUNNING: usize = 30;
const FINISHED: usize = 10;

#[tokio::test]
async fn every_call_in_flight_across_a_cut_ends_with_its_result_and_runs_once() {
    let harness = Harness::new().await;
    let audit = audit_path("many-calls");
    let instance = harness
        .start_server(limits(), |builder| builder.audit_log(&audit))
        .await;
    let session = Arc::new(harness.connect(harness.client()).await);

    let running: Vec<_> = (0..RUNNING)
        .map(|n| {
            let session = session.clone();
            tokio::spawn(async move {
                let args = serde_json::json!({"gate": n});
                (args.clone(), session.call("gate", &args).await)
            })
        })
        .collect();
    instance.tools.gate.wait_runs(RUNNING).await;
    // Calls the server answers into the void.
    harness.proxy.swallow_newest();
    let finished: Vec<_> = (0..FINISHED)
        .map(|n| {
            let session = session.clone();
            tokio::spawn(async move {
                let args = serde_json::json!({"echo": n});
                (args.clone(), session.call("echo", &args).await)
            })
        })
        .collect();
    instance.tools.echo.wait_runs(FINISHED).await;
    harness.proxy.wait_swallowed(1).await;
    harness.proxy.cut_all();
    instance.tools.gate.open();

    for task in running.into_iter().chain(finished) {
        let (args, result) = within("a call's answer", task).await.expect("task");
        assert_eq!(result, Ok(args));
    }
    assert_eq!(instance.tools.gate.runs(), RUNNING);
    assert_eq!(instance.tools.echo.runs(), FINISHED);
    assert_eq!(harness.proxy.accepted(), 2);

    within("shutdown", instance.server.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown");
    let calls = audit_calls(&audit);
    let _ = std::fs::remove_file(&audit);
    let mut by_id: HashMap<u64, Vec<(bool, String)>> = HashMap::new();
    for (id, retry, decision) in calls {
        by_id.entry(id).or_default().push((retry, decision));
    }
    assert_eq!(by_id.len(), RUNNING + FINISHED);
    for (id, deliveries) in by_id {
        let first: Vec<_> = deliveries.iter().filter(|(retry, _)| !retry).collect();
        assert_eq!(first.len(), 1, "id {id}: {deliveries:?}");
        assert_eq!(first[0].1, "execute", "id {id}: {deliveries:?}");
        assert!(
            deliveries
                .iter()
                .filter(|(retry, _)| *retry)
                .all(|(_, decision)| decision != "execute"),
            "id {id}: {deliveries:?}"
        );
    }
}

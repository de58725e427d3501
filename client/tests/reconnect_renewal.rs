//! LIFE-004: before a connection's lifetime ends, the session opens the next one,
//! resuming its lineage, and moves new calls to it; a call still running on the old
//! connection is answered there (or re-sent as a retry if the old connection closes
//! first). Callers notice nothing: every call succeeds, nothing runs twice, and the
//! server never has to expire a session under them.
//!
//! The server announces a 2-second lifetime (LIFE-002); the client renews a quarter
//! of it before the end (the default margin of 2 minutes, capped for short
//! lifetimes). Clauses: LIFE-004, LIFE-003, AMO-003.

mod common;

use common::{limits, within, Harness};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn connections_are_renewed_before_their_lifetime_without_callers_noticing() {
    let harness = Harness::new().await;
    let mut limits = limits();
    limits.connection.session_lifetime = Duration::from_secs(2);
    let instance = harness.start_server(limits, |builder| builder).await;
    let session = Arc::new(harness.connect(harness.client()).await);
    let lineage = session.lineage_id();
    let first = session.session_id();

    // A call that spans the renewal.
    let long = tokio::spawn({
        let session = session.clone();
        async move {
            session
                .call("gate", &serde_json::json!({"long": true}))
                .await
        }
    });
    instance.tools.gate.wait_runs(1).await;

    // Calls keep succeeding through two renewals.
    let mut sessions = vec![first];
    let mut answered = 0u64;
    within("two renewals", async {
        while sessions.len() < 3 {
            let args = serde_json::json!({"n": answered});
            let result = session.call("echo", &args).await;
            assert_eq!(result, Ok(args), "call {answered}");
            answered += 1;
            let current = session.session_id();
            if sessions.last() != Some(&current) {
                sessions.push(current);
                if sessions.len() == 2 {
                    // The long call's connection has been replaced: finish it.
                    instance.tools.gate.open();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let long = within("the long call", long).await.expect("task");
    assert_eq!(long, Ok(serde_json::json!({"long": true})));
    assert_eq!(instance.tools.gate.runs(), 1);
    assert_eq!(
        instance.tools.echo.runs(),
        usize::try_from(answered).expect("small")
    );
    assert_eq!(session.lineage_id(), lineage);
    assert_eq!(session.close_code(), None, "never seen closed by callers");
    assert!(harness.proxy.accepted() >= 3);
}

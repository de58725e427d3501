//! Threat: flooding (THREATS.md §11). One authenticated client fires calls far above
//! its rate. The per-identity and per-connection token buckets refuse the excess
//! with RESOURCE_EXHAUSTED carrying `retry_after_ms`, the refused calls never run,
//! and after `max_consecutive_refusals` refusals in a row the connection is closed
//! with RATE_LIMITED (4008) (calls of the flooder still running are abandoned with
//! it). Another client's calls keep succeeding throughout.
//!
//! Clauses: AUTHZ-004, AUTHZ-007, ERR-005.

mod common;

use common::{within, TestServer};
use futures_util::future::join_all;
use toolwire_client::CallError;
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity};
use toolwire_server::Limits;

const BURST: u32 = 5;
const MAX_REFUSALS: u32 = 10;
const FLOOD: usize = 200;

#[tokio::test]
async fn flooding_client_is_refused_then_closed_while_others_keep_working() {
    let bystander = Identity::generate(&mut rand_core::OsRng);
    let mut limits = Limits::default();
    limits.rate_per_sec = 1;
    limits.burst = BURST;
    limits.max_consecutive_refusals = MAX_REFUSALS;
    let server = TestServer::start_with(|builder| {
        builder.allow_client(bystander.public_key()).limits(limits)
    })
    .await;
    let flooder = server.agent_session().await;
    let other = server.session(&bystander).await;

    let args = serde_json::json!({"text": "flood"});
    let flood = join_all((0..FLOOD).map(|_| flooder.call("echo", &args)));
    let bystander_calls = async {
        let mut results = Vec::new();
        for _ in 1..BURST {
            results.push(other.call("ticker", &serde_json::json!({"count": 0})).await);
        }
        results
    };
    let (outcomes, bystander_results) =
        within("flood", async { tokio::join!(flood, bystander_calls) }).await;

    let mut succeeded = 0;
    let mut refused = 0;
    let mut closed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => succeeded += 1,
            Err(CallError::Rpc {
                code,
                retry_after_ms,
                ..
            }) => {
                assert_eq!(code, ErrorCode::RESOURCE_EXHAUSTED);
                assert!(
                    retry_after_ms.is_some_and(|millis| millis > 0),
                    "retry_after_ms {retry_after_ms:?}"
                );
                refused += 1;
            }
            Err(CallError::ConnectionClosed { code }) => {
                assert_eq!(code, CloseCode::RATE_LIMITED);
                closed += 1;
            }
            Err(other) => panic!("unexpected outcome {other}"),
        }
    }
    // Only the burst runs (a token may refill while the flood is processed); the
    // refusals run up to the limit and the connection is closed, abandoning calls of
    // the burst still running then.
    let burst = usize::try_from(BURST).expect("small");
    let executed = server.probes.echo.runs();
    assert!(
        succeeded <= executed && executed <= burst + 2,
        "{succeeded} calls succeeded, {executed} ran"
    );
    assert!(
        refused > usize::try_from(MAX_REFUSALS).expect("small"),
        "{refused} refusals"
    );
    assert!(closed > 0, "the connection was not closed");
    assert_eq!(succeeded + refused + closed, FLOOD);
    assert_eq!(flooder.close_code(), Some(CloseCode::RATE_LIMITED));

    // The bystander was never affected: its whole burst ran.
    for result in bystander_results {
        result.expect("bystander call");
    }
    within(
        "call",
        other.call("echo", &serde_json::json!({"text": "after"})),
    )
    .await
    .expect("bystander still served after the flood");
    assert_eq!(server.probes.ticker.runs(), burst - 1);
    assert_eq!(server.probes.echo.runs(), executed + 1);
}

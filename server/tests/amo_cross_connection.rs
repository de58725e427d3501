//! A call re-sent on another connection of its lineage while it is still running
//! (spec section 14.2, rule 1): the client reconnected and resumed its lineage
//! before the server noticed that the old connection died. Two raw connections
//! resume the same lineage over real sockets; the tool blocks on a gate the test
//! opens, so that every copy provably arrives while the call runs.

mod common;

use common::{RawClient, TestServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use toolwire_server::protocol::envelope::{RequestFields, ResponseFields};
use toolwire_server::protocol::message::{Cancel, Request};
use toolwire_server::protocol::{ErrorCode, Message};
use toolwire_server::Tool;

/// Long enough for a stray answer to show up.
const QUIET: Duration = Duration::from_millis(200);

/// The `gate` tool: each run waits for one permit, then returns its run number.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    runs: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
}

impl Gate {
    fn new() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(0)),
            runs: Arc::new(AtomicUsize::new(0)),
            completed: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn tool(&self) -> Tool {
        let gate = self.clone();
        Tool::new(
            "gate",
            "Waits until the test opens the gate.",
            serde_json::json!({"type": "object"}),
            move |args: serde_json::Value, _| {
                let gate = gate.clone();
                let run = gate.runs.fetch_add(1, Ordering::SeqCst) + 1;
                let crash = args.get("crash") == Some(&serde_json::json!(true));
                async move {
                    if let Ok(permit) = gate.permits.acquire().await {
                        permit.forget();
                    }
                    assert!(!crash, "the gate tool crashed as asked");
                    gate.completed.fetch_add(1, Ordering::SeqCst);
                    Ok(serde_json::json!({"run": run}))
                }
            },
        )
    }

    fn open(&self) {
        self.permits.add_permits(1);
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    async fn wait(&self, what: &str, counter: &AtomicUsize, at_least: usize) {
        common::within(what, async {
            while counter.load(Ordering::SeqCst) < at_least {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    async fn wait_runs(&self, runs: usize) {
        self.wait("gate handler start", &self.runs, runs).await;
    }

    async fn wait_completed(&self, completed: usize) {
        self.wait("gate handler end", &self.completed, completed)
            .await;
    }
}

async fn start(gate: &Gate) -> TestServer {
    let tool = gate.tool();
    TestServer::start_with(|builder| builder.tool(tool)).await
}

fn lineage_of(raw: &RawClient) -> [u8; 16] {
    let mut lineage = [0; 16];
    lineage.copy_from_slice(&raw.session_id()[..16]);
    lineage
}

/// A new connection of the agent resuming `lineage`, up to its CAP_GRANT.
async fn resume(server: &TestServer, lineage: [u8; 16]) -> RawClient {
    let config = server
        .client_config(&server.agent, Vec::new())
        .with_lineage(lineage);
    let mut raw = RawClient::handshake(&server.url, config).await;
    raw.expect_cap_grant().await;
    raw
}

/// `id` of `gate` with `args`, as a retry (signed for `raw`'s session).
fn retry_of(raw: &RawClient, id: u64, args: &serde_json::Value) -> Request {
    let mut request = raw.request(id, "gate", args);
    request.retry = true;
    request
}

/// Clauses: AMO-010, AMO-011, AMO-004, AMO-020 — a copy of a running call arriving
/// on a second connection that resumed the lineage is not executed, and is answered
/// on that connection, when the call completes, with the call's result: a RESPONSE
/// with the same result bytes, signed by the server for the second session. The
/// first connection gets its own answer.
#[tokio::test]
async fn a_retry_on_another_connection_is_answered_when_the_running_call_completes() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let args = serde_json::json!({"n": 1});
    first
        .send(Message::Request(first.request(1, "gate", &args)))
        .await;
    gate.wait_runs(1).await;

    let mut second = resume(&server, lineage_of(&first)).await;
    let retry = retry_of(&second, 1, &args);
    second.send(Message::Request(retry.clone())).await;
    second.expect_silence(QUIET).await;
    assert_eq!(gate.runs(), 1);

    gate.open();
    let answer = second.expect_response(1).await;
    let original = first.expect_response(1).await;
    assert_eq!(answer.result, original.result);
    let request_hash = RequestFields {
        session_id: &second.session_id(),
        request_id: 1,
        tool: "gate",
        args: &retry.args,
        grant_id: "",
    }
    .hash();
    ResponseFields {
        session_id: &second.session_id(),
        request_id: 1,
        request_hash: &request_hash,
        result: &answer.result,
    }
    .verify(
        &server.server_key,
        answer
            .signature
            .as_deref()
            .map_or(&[][..], |signature| &signature[..]),
    )
    .expect("the answer is signed for the second session");
    second.expect_silence(QUIET).await;
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-011, AMO-021 — the first connection dies while its call runs and a
/// copy waits on the second connection: the call goes on without its connection and
/// its result answers the waiting copy; it ran once.
#[tokio::test]
async fn a_call_outlives_its_dead_connection_and_answers_the_copy_waiting_for_it() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let args = serde_json::json!({"n": 2});
    first
        .send(Message::Request(first.request(5, "gate", &args)))
        .await;
    gate.wait_runs(1).await;
    let mut second = resume(&server, lineage_of(&first)).await;
    second
        .send(Message::Request(retry_of(&second, 5, &args)))
        .await;
    second.expect_silence(QUIET).await;
    drop(first);
    // Still running, still waiting: no early RESULT_UNAVAILABLE.
    second.expect_silence(QUIET).await;

    gate.open();
    let answer = second.expect_response(5).await;
    let result: serde_json::Value = rmp_serde::from_slice(&answer.result).expect("msgpack");
    assert_eq!(result, serde_json::json!({"run": 1}));
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-012, AMO-004, AMO-021 — a call whose connection died completes and
/// its outcome is cached: a retry on a new connection, sent after it completed, gets
/// the same result without running it again.
#[tokio::test]
async fn a_call_completed_after_its_connection_died_is_cached_for_a_later_retry() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let lineage = lineage_of(&first);
    let args = serde_json::json!({"n": 3});
    first
        .send(Message::Request(first.request(2, "gate", &args)))
        .await;
    gate.wait_runs(1).await;
    drop(first);
    gate.open();
    gate.wait_completed(1).await;

    let mut second = resume(&server, lineage).await;
    second
        .send(Message::Request(retry_of(&second, 2, &args)))
        .await;
    let answer = second.expect_response(2).await;
    let result: serde_json::Value = rmp_serde::from_slice(&answer.result).expect("msgpack");
    assert_eq!(result, serde_json::json!({"run": 1}));
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-019, AMO-010 — a copy of a running call's id that names another call
/// (other arguments) is refused FAILED_PRECONDITION at once instead of waiting for,
/// and being answered with, another call's outcome; nothing else runs.
#[tokio::test]
async fn a_copy_of_a_running_id_with_other_arguments_is_refused() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    first
        .send(Message::Request(first.request(
            3,
            "gate",
            &serde_json::json!({"to": "alice"}),
        )))
        .await;
    gate.wait_runs(1).await;
    let mut second = resume(&server, lineage_of(&first)).await;
    second
        .send(Message::Request(retry_of(
            &second,
            3,
            &serde_json::json!({"to": "mallory"}),
        )))
        .await;
    assert_eq!(
        second.expect_error(3).await.error_code(),
        ErrorCode::FAILED_PRECONDITION
    );
    gate.open();
    first.expect_response(3).await;
    second.expect_silence(QUIET).await;
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-023, AMO-011, AMO-024 — a running call cancelled on its connection
/// answers the copy waiting on another connection with CANCELLED too, and never
/// with a late result.
#[tokio::test]
async fn a_copy_waiting_for_a_cancelled_call_is_answered_cancelled() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let args = serde_json::json!({"n": 4});
    first
        .send(Message::Request(first.request(4, "gate", &args)))
        .await;
    gate.wait_runs(1).await;
    let mut second = resume(&server, lineage_of(&first)).await;
    second
        .send(Message::Request(retry_of(&second, 4, &args)))
        .await;
    second.expect_silence(QUIET).await;

    first.send(Message::Cancel(Cancel { id: 4 })).await;
    assert_eq!(
        first.expect_error(4).await.error_code(),
        ErrorCode::CANCELLED
    );
    let waiting = second.expect_error(4).await;
    assert_eq!(waiting.error_code(), ErrorCode::CANCELLED);
    assert_eq!(waiting.message, "cancelled");
    gate.open();
    second.expect_silence(QUIET).await;
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-023, AMO-011, AMO-025 — a CANCEL sent on the second connection for
/// the call running on the first stops it: the second connection is answered
/// CANCELLED, the first connection's REQUEST is answered CANCELLED too (exactly one
/// answer each), and a CANCEL of an id in flight nowhere is not answered.
#[tokio::test]
async fn a_cancel_on_another_connection_stops_the_running_call() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let args = serde_json::json!({"n": 6});
    first
        .send(Message::Request(first.request(6, "gate", &args)))
        .await;
    gate.wait_runs(1).await;
    let mut second = resume(&server, lineage_of(&first)).await;
    second.send(Message::Cancel(Cancel { id: 99 })).await;
    second.expect_silence(QUIET).await;
    second.send(Message::Cancel(Cancel { id: 6 })).await;
    assert_eq!(
        second.expect_error(6).await.error_code(),
        ErrorCode::CANCELLED
    );
    assert_eq!(
        first.expect_error(6).await.error_code(),
        ErrorCode::CANCELLED
    );
    gate.open();
    first.expect_silence(QUIET).await;
    second.expect_silence(QUIET).await;
    assert_eq!(gate.completed.load(Ordering::SeqCst), 0);
    assert_eq!(gate.runs(), 1);
}

/// Clauses: AMO-026, AMO-011, AMO-014 — the running call's handler crashes while a
/// copy waits on another connection: the call has no known outcome, so the waiting
/// copy is answered RESULT_UNAVAILABLE (never left waiting, never run again), and so
/// is a later retry.
#[tokio::test]
async fn a_copy_waiting_for_a_crashed_call_is_answered_result_unavailable() {
    let gate = Gate::new();
    let server = start(&gate).await;
    let (mut first, _) = server.raw_session(&server.agent, Vec::new()).await;
    let args = serde_json::json!({"crash": true});
    first
        .send(Message::Request(first.request(8, "gate", &args)))
        .await;
    gate.wait_runs(1).await;
    let mut second = resume(&server, lineage_of(&first)).await;
    second
        .send(Message::Request(retry_of(&second, 8, &args)))
        .await;
    second.expect_silence(QUIET).await;

    gate.open();
    assert_eq!(
        first.expect_error(8).await.error_code(),
        ErrorCode::INTERNAL
    );
    assert_eq!(
        second.expect_error(8).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    second
        .send(Message::Request(retry_of(&second, 8, &args)))
        .await;
    assert_eq!(
        second.expect_error(8).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    assert_eq!(gate.runs(), 1);
}

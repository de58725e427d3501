//! Graceful shutdown (`Server::shutdown`), over real loopback sockets: no accepted
//! call is lost. Calls in flight finish until the deadline; those still running then
//! are stopped and answered UNAVAILABLE (their outcome unknown, nothing cached:
//! AMO-026); REQUESTs arriving during the drain are refused with UNAVAILABLE; every
//! connection then ends with an authenticated CLOSE and the WebSocket close frame,
//! both GOING_AWAY (1001, CLS-001, CLS-002, CLS-010, CLS-012); the audit log ends
//! with a signed head (AUD-007); `serve_listener` returns.
//!
//! Clauses: CLS-001, CLS-002, CLS-010, CLS-012, AMO-021, AMO-026, AUD-004, AUD-007.

mod common;

use common::{init_tracing, RawClient};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use toolwire_client::{CallError, Client, Session};
use toolwire_server::protocol::audit::verify_log;
use toolwire_server::protocol::message::CapRequest;
use toolwire_server::protocol::{ClientConfig, CloseCode, ErrorCode, Identity, Message};
use toolwire_server::{Limits, Server, Tool};

/// Upper bound of every wait in these tests (shutdown deadlines are shorter).
const BOUND: Duration = Duration::from_secs(15);

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {BOUND:?}: {what}"),
    }
}

/// Counts handler starts, completions and stops (future dropped before the end).
#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    finished: AtomicUsize,
    stopped: AtomicUsize,
}

struct Guard(Arc<Counters>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        let counter = if self.1 {
            &self.0.finished
        } else {
            &self.0.stopped
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// `work`: sleeps `ms` milliseconds, then returns `{"slept": ms}`.
fn work_tool(counters: &Arc<Counters>) -> Tool {
    let counters = counters.clone();
    Tool::new(
        "work",
        "Sleeps for `ms` milliseconds.",
        serde_json::json!({
            "type": "object",
            "properties": {"ms": {"type": "integer", "minimum": 0}},
            "required": ["ms"]
        }),
        move |args, _| {
            counters.started.fetch_add(1, Ordering::SeqCst);
            let guard = Guard(counters.clone(), false);
            async move {
                // The whole guard moves into the future (not just the field set below).
                let mut guard = guard;
                let ms = args["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                guard.1 = true;
                Ok(serde_json::json!({ "slept": ms }))
            }
        },
    )
}

struct Harness {
    url: String,
    server: Server,
    server_identity: Identity,
    agent: Identity,
    counters: Arc<Counters>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Harness {
    async fn start(audit: Option<PathBuf>) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
        let server_identity = Identity::generate(&mut rand_core::OsRng);
        let agent = Identity::generate(&mut rand_core::OsRng);
        let counters = Arc::new(Counters::default());
        let mut limits = Limits::default();
        limits.rate_per_sec = 10_000;
        limits.burst = 10_000;
        limits.per_tool_rate_per_sec = 10_000;
        limits.per_tool_burst = 10_000;
        let mut builder = Server::builder(server_identity.clone(), url.clone())
            .allow_client(agent.public_key())
            .limits(limits)
            .tool(work_tool(&counters));
        if let Some(path) = audit {
            builder = builder.audit_log(path);
        }
        let server = builder.build().expect("server builds");
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve_listener(listener).await }
        });
        Self {
            url,
            server,
            server_identity,
            agent,
            counters,
            serving,
        }
    }

    async fn session(&self) -> Session {
        bounded(
            "connect",
            Client::builder()
                .identity(self.agent.clone())
                .pin_server(self.server_identity.public_key())
                .connect(&self.url),
        )
        .await
        .expect("client connects")
    }

    async fn raw(&self) -> RawClient {
        let config = ClientConfig::new(
            self.agent.clone(),
            vec![self.server_identity.public_key()],
            self.url.clone(),
            &mut rand_core::OsRng,
        )
        .with_cap_request(CapRequest {
            tools: vec!["*".into()],
            grants: Vec::new(),
        });
        let mut raw = RawClient::handshake(&self.url, config).await;
        raw.expect_cap_grant().await;
        raw
    }

    async fn wait_started(&self, count: usize) {
        bounded("handlers start", async {
            while self.counters.started.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Waits until the listener no longer accepts: the server is draining.
    async fn wait_not_accepting(&self) {
        let address = self
            .url
            .trim_start_matches("ws://")
            .trim_end_matches("/toolwire");
        bounded("listener closes", async {
            while tokio::net::TcpStream::connect(address).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

fn scratch_file(name: &str) -> PathBuf {
    let mut random = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let suffix: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    std::env::temp_dir().join(format!("toolwire-shutdown-{name}-{suffix}.jsonl"))
}

/// The headline property: 100 calls in flight on 4 connections when shutdown begins.
/// The 50 short ones complete with their results; the 50 long ones are stopped at
/// the deadline and answered UNAVAILABLE. None is answered twice, none is left
/// without an answer (no `ConnectionClosed`), and each connection then closes with
/// GOING_AWAY. The audit log holds one entry per call and ends with a signed head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_during_100_in_flight_calls_answers_every_call() {
    let audit = scratch_file("hundred");
    let harness = Harness::start(Some(audit.clone())).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(Arc::new(harness.session().await));
    }
    let mut calls = Vec::new();
    for index in 0..100usize {
        let session = sessions[index % sessions.len()].clone();
        let ms: u64 = if index % 2 == 0 { 300 } else { 60_000 };
        calls.push(tokio::spawn(async move {
            let outcome = session.call("work", &serde_json::json!({ "ms": ms })).await;
            (ms, outcome)
        }));
    }
    harness.wait_started(100).await;

    let shutdown = tokio::spawn({
        let server = harness.server.clone();
        async move { server.shutdown(Duration::from_secs(2)).await }
    });

    let (mut completed, mut interrupted) = (0, 0);
    for call in calls {
        let (ms, outcome) = bounded("call answered", call).await.expect("call task");
        match outcome {
            Ok(result) => {
                assert_eq!(ms, 300, "a long call completed: {result}");
                assert_eq!(result, serde_json::json!({ "slept": 300 }));
                completed += 1;
            }
            Err(CallError::Rpc { code, message, .. }) => {
                assert_eq!(ms, 60_000, "a short call failed: {code} {message}");
                assert_eq!(code, ErrorCode::UNAVAILABLE, "{message}");
                interrupted += 1;
            }
            Err(other) => panic!("call {ms} ms not answered: {other:?}"),
        }
    }
    assert_eq!((completed, interrupted), (50, 50));

    let report = bounded("shutdown", shutdown)
        .await
        .expect("shutdown task")
        .expect("shutdown completes with its audit log");
    assert_eq!(report.interrupted_calls, 50);
    assert_eq!(report.refused_calls, 0);
    assert_eq!(report.connections_left, 0);
    let served = bounded("serve_listener returns", harness.serving).await;
    assert!(matches!(served, Ok(Ok(()))), "{served:?}");

    // Every connection was closed by the server with GOING_AWAY.
    for session in &sessions {
        bounded("close seen by the client", async {
            while session.close_code().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY));
    }
    // The long handlers were stopped, not left running.
    assert_eq!(harness.counters.stopped.load(Ordering::SeqCst), 50);
    assert_eq!(harness.counters.finished.load(Ordering::SeqCst), 50);

    // AUD-004, AUD-007: one entry per call, then the final head.
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let _ = std::fs::remove_file(&audit);
    let summary =
        verify_log(&text, &harness.server_identity.public_key()).expect("the log verifies");
    assert_eq!(summary.calls, 100);
    assert_eq!(summary.unsigned_tail, 0);
    assert!(text
        .lines()
        .last()
        .unwrap_or("")
        .contains(r#""kind":"head""#));
    // 100 request signatures, 50 response signatures.
    assert_eq!(summary.signatures_verified, 150);
    let stats = report.audit.expect("audit stats");
    assert_eq!((stats.calls, stats.lost), (100, 0));
    let interrupted_entries = text
        .lines()
        .filter(|line| line.contains("UNAVAILABLE (interrupted by server shutdown)"))
        .count();
    assert_eq!(interrupted_entries, 50);

    // Nothing listens any more.
    assert!(
        bounded("connect after shutdown", harness_connect(&harness.url))
            .await
            .is_err()
    );
}

async fn harness_connect(url: &str) -> std::io::Result<tokio::net::TcpStream> {
    let address = url
        .trim_start_matches("ws://")
        .trim_end_matches("/toolwire");
    tokio::net::TcpStream::connect(address).await
}

/// CLS-012: during the drain, a new REQUEST is refused with UNAVAILABLE (never run),
/// the call in flight still gets its RESPONSE, and only then does the server close:
/// CLOSE record GOING_AWAY, then close frame 1001.
#[tokio::test]
async fn draining_refuses_new_calls_and_closes_after_the_last_answer() {
    let harness = Harness::start(None).await;
    let mut raw = harness.raw().await;
    raw.send(Message::Request(raw.request(
        1,
        "work",
        &serde_json::json!({"ms": 400}),
    )))
    .await;
    harness.wait_started(1).await;

    let shutdown = tokio::spawn({
        let server = harness.server.clone();
        async move { server.shutdown(Duration::from_secs(10)).await }
    });
    harness.wait_not_accepting().await;
    // Give the connection's driver the moment it needs to see the signal too.
    tokio::time::sleep(Duration::from_millis(50)).await;

    raw.send(Message::Request(raw.request(
        2,
        "work",
        &serde_json::json!({"ms": 0}),
    )))
    .await;
    let refused = raw.expect_error(2).await;
    assert_eq!(refused.error_code(), ErrorCode::UNAVAILABLE);
    let response = raw.expect_response(1).await;
    let result: serde_json::Value = rmp_serde::from_slice(&response.result).expect("msgpack");
    assert_eq!(result, serde_json::json!({"slept": 400}));
    let closed = raw.expect_close().await;
    assert!(closed.messages.is_empty(), "{closed:?}");
    assert_eq!(closed.record, Some(CloseCode::GOING_AWAY));
    assert_eq!(closed.frame, Some(1001));

    let report = bounded("shutdown", shutdown)
        .await
        .expect("shutdown task")
        .expect("no audit log to fail");
    assert_eq!((report.interrupted_calls, report.refused_calls), (0, 1));
    assert_eq!(harness.counters.started.load(Ordering::SeqCst), 1);
    assert!(report.audit.is_none());
}

/// Connections with nothing in flight close at once, whatever the deadline: an
/// idle session (CLOSE record and frame 1001) and a socket still in the handshake
/// (frame 1001 only: no keys yet). A second `shutdown` returns the same report.
#[tokio::test]
async fn idle_connections_close_at_once_and_shutdown_does_not_wait_for_the_deadline() {
    let harness = Harness::start(None).await;
    let mut idle = harness.raw().await;
    let mut handshaking = common::raw_socket(&harness.url).await;
    // Let the server's side of the upgrade hand the socket to its driver.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = std::time::Instant::now();
    let report = bounded("shutdown", harness.server.shutdown(Duration::from_secs(60)))
        .await
        .expect("no audit log to fail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.connections_left, 0);

    let closed = idle.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::GOING_AWAY));
    assert_eq!(closed.frame, Some(1001));
    assert_eq!(common::close_frame_code(&mut handshaking).await, Some(1001));

    let again = bounded("second shutdown", harness.server.shutdown(Duration::ZERO))
        .await
        .expect("same outcome");
    assert_eq!(again, report);
    let served = bounded("serve_listener returns", harness.serving).await;
    assert!(matches!(served, Ok(Ok(()))), "{served:?}");
}

//! The durable at-most-once store (spec section 14.5, AMO-035..AMO-039) over real
//! sockets: a server is killed (its runtime dropped, so no cleanup runs: the crash
//! case) and a new one started on the same store file; a client resuming the
//! lineage retries its call and must get the original result, or RESULT_UNAVAILABLE,
//! and the tool must never run twice.

mod common;

use common::{within, RawClient};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use toolwire_server::protocol::message::CapRequest;
use toolwire_server::protocol::{ClientConfig, ErrorCode, Identity, IdentityKey, Message};
use toolwire_server::{BuildError, Server, ServerBuilder, Tool};

/// Handler runs of the test tools, shared by every server of a test.
#[derive(Default)]
struct Counters {
    count: AtomicUsize,
    block: AtomicUsize,
}

/// `count` returns how many times it ran; `block` never returns.
fn tools(builder: ServerBuilder, counters: &Arc<Counters>) -> ServerBuilder {
    let count = counters.clone();
    let block = counters.clone();
    builder
        .tool(Tool::new(
            "count",
            "Returns how many times it ran.",
            serde_json::json!({"type": "object"}),
            move |_, _| {
                let run = count.count.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok(serde_json::json!({"run": run})) }
            },
        ))
        .tool(Tool::new(
            "block",
            "Never returns.",
            serde_json::json!({"type": "object"}),
            move |_, _| {
                block.block.fetch_add(1, Ordering::SeqCst);
                async move {
                    std::future::pending::<()>().await;
                    Ok(serde_json::Value::Null)
                }
            },
        ))
}

/// One server process: its own runtime, so that dropping it kills the server the
/// way a crash does (tasks vanish mid-way, nothing is cleaned up).
struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
}

impl Running {
    /// Kills the server: every task (connections, handlers) is dropped at once.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Fixture {
    identity: Identity,
    agent: Identity,
    counters: Arc<Counters>,
}

impl Fixture {
    fn new() -> Self {
        common::init_tracing();
        Self {
            identity: Identity::generate(&mut rand_core::OsRng),
            agent: Identity::generate(&mut rand_core::OsRng),
            counters: Arc::new(Counters::default()),
        }
    }

    fn server_key(&self) -> IdentityKey {
        self.identity.public_key()
    }

    fn builder(&self, url: &str) -> ServerBuilder {
        tools(
            Server::builder(self.identity.clone(), url).allow_client(self.agent.public_key()),
            &self.counters,
        )
    }

    /// Starts a server on its own runtime, with the store at `store` if given. A
    /// store still held by a killed server whose tasks are being dropped is waited
    /// for (bounded).
    async fn start(&self, store: Option<&Path>) -> Running {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
        let server = within("store released by the killed server", async {
            loop {
                let builder = self.builder(&url);
                let builder = match store {
                    Some(path) => builder.at_most_once_store(path),
                    None => builder,
                };
                match builder.build() {
                    Ok(server) => break server,
                    Err(BuildError::AtMostOnceStore(error))
                        if error.to_string().contains("already open") =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(error) => panic!("server build failed: {error}"),
                }
            }
        })
        .await;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = server.serve_listener(listener).await;
        });
        Running {
            runtime: Some(runtime),
            url,
        }
    }

    /// A session of the agent; resuming `lineage` when given.
    async fn session(&self, server: &Running, lineage: Option<[u8; 16]>) -> RawClient {
        let mut config = ClientConfig::new(
            self.agent.clone(),
            vec![self.server_key()],
            server.url.clone(),
            &mut rand_core::OsRng,
        )
        .with_cap_request(CapRequest {
            tools: vec!["*".into()],
            grants: Vec::new(),
        });
        if let Some(lineage) = lineage {
            config = config.with_lineage(lineage);
        }
        let mut raw = RawClient::handshake(&server.url, config).await;
        raw.expect_cap_grant().await;
        raw
    }
}

fn lineage_of(raw: &RawClient) -> [u8; 16] {
    let mut lineage = [0; 16];
    lineage.copy_from_slice(&raw.session_id()[..16]);
    lineage
}

/// A store path in a fresh temporary directory (removed at the end of the test).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "toolwire-amo-{name}-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        Self(dir)
    }

    fn store(&self) -> PathBuf {
        self.0.join("amo.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Clauses: AMO-035, AMO-037, AMO-038, AMO-004, AMO-012 — a call that completed (its RESPONSE
/// received) before the server was killed is answered after the restart with the
/// same result bytes, from the store, without running again; a new id of the
/// resumed lineage runs.
#[tokio::test]
async fn a_completed_call_is_answered_with_its_original_result_after_a_restart() {
    let fixture = Fixture::new();
    let dir = TempDir::new("completed");
    let first = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&first, None).await;
    let lineage = lineage_of(&raw);
    let call = raw.request(1, "count", &serde_json::json!({}));
    raw.send(Message::Request(call)).await;
    let original = raw.expect_response(1).await;
    drop(raw);
    first.kill();

    let second = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&second, Some(lineage)).await;
    let mut retry = raw.request(1, "count", &serde_json::json!({}));
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    let again = raw.expect_response(1).await;
    assert_eq!(again.result, original.result);
    assert_eq!(fixture.counters.count.load(Ordering::SeqCst), 1);

    raw.send(Message::Request(raw.request(
        2,
        "count",
        &serde_json::json!({}),
    )))
    .await;
    let fresh = raw.expect_response(2).await;
    assert_ne!(fresh.result, original.result);
    assert_eq!(fixture.counters.count.load(Ordering::SeqCst), 2);
}

/// Clauses: AMO-035, AMO-036, AMO-038, AMO-026 — a call whose handler was running when the
/// server was killed was recorded before it ran: after the restart its retry is
/// answered RESULT_UNAVAILABLE and the tool does not run a second time.
#[tokio::test]
async fn a_call_running_at_the_crash_is_unavailable_and_never_runs_again() {
    let fixture = Fixture::new();
    let dir = TempDir::new("running");
    let first = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&first, None).await;
    let lineage = lineage_of(&raw);
    raw.send(Message::Request(raw.request(
        7,
        "block",
        &serde_json::json!({}),
    )))
    .await;
    within("handler start", async {
        while fixture.counters.block.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    first.kill();
    drop(raw);

    let second = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&second, Some(lineage)).await;
    let mut retry = raw.request(7, "block", &serde_json::json!({}));
    retry.retry = true;
    raw.send(Message::Request(retry.clone())).await;
    assert_eq!(
        raw.expect_error(7).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    // A copy without `retry` (a client breaking AMO-009) does not run it either.
    retry.retry = false;
    raw.send(Message::Request(retry)).await;
    assert_eq!(
        raw.expect_error(7).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    assert_eq!(fixture.counters.block.load(Ordering::SeqCst), 1);
}

/// Clauses: AMO-005, AMO-015 — without a store, a restarted server has lost the
/// lineage: the retry of a call that completed is answered RESULT_UNAVAILABLE (its
/// outcome is unknown to the new server), never run again.
#[tokio::test]
async fn without_a_store_a_restart_answers_result_unavailable() {
    let fixture = Fixture::new();
    let first = fixture.start(None).await;
    let mut raw = fixture.session(&first, None).await;
    let lineage = lineage_of(&raw);
    raw.send(Message::Request(raw.request(
        1,
        "count",
        &serde_json::json!({}),
    )))
    .await;
    raw.expect_response(1).await;
    drop(raw);
    first.kill();

    let second = fixture.start(None).await;
    let mut raw = fixture.session(&second, Some(lineage)).await;
    let mut retry = raw.request(1, "count", &serde_json::json!({}));
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::RESULT_UNAVAILABLE
    );
    assert_eq!(fixture.counters.count.load(Ordering::SeqCst), 1);
}

/// Clauses: AMO-035, AMO-039 — a store file that is not a database (corrupted, or something
/// else at that path), or a path that cannot be created, makes the server refuse to
/// start with a typed error; it never panics and never serves without its store.
#[tokio::test]
async fn a_corrupted_or_unreadable_store_refuses_to_start() {
    let fixture = Fixture::new();
    let dir = TempDir::new("corrupt");
    let url = "ws://127.0.0.1:1/toolwire";

    let garbage = dir.store();
    std::fs::write(&garbage, vec![0x5a; 8192]).expect("write garbage");
    let error = fixture
        .builder(url)
        .at_most_once_store(&garbage)
        .build()
        .expect_err("a corrupted store is refused");
    assert!(matches!(error, BuildError::AtMostOnceStore(_)), "{error:?}");

    let truncated = dir.0.join("truncated.redb");
    std::fs::write(&truncated, b"redb").expect("write truncated file");
    let error = fixture
        .builder(url)
        .at_most_once_store(&truncated)
        .build()
        .expect_err("a truncated store is refused");
    assert!(matches!(error, BuildError::AtMostOnceStore(_)), "{error:?}");

    let missing = dir.0.join("no-such-directory").join("amo.redb");
    let error = fixture
        .builder(url)
        .at_most_once_store(&missing)
        .build()
        .expect_err("an unreachable path is refused");
    assert!(matches!(error, BuildError::AtMostOnceStore(_)), "{error:?}");

    // A store held by a running server cannot be opened by a second one.
    let held = dir.0.join("held.redb");
    let _running = fixture
        .builder(url)
        .at_most_once_store(&held)
        .build()
        .expect("a new store is created");
    // It holds call results: readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&held)
            .expect("store file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let error = fixture
        .builder(url)
        .at_most_once_store(&held)
        .build()
        .expect_err("a store in use is refused");
    assert!(matches!(error, BuildError::AtMostOnceStore(_)), "{error:?}");
}

/// Clauses: AMO-038, AMO-019 — the store keeps each outcome's call fingerprint: after
/// a restart, a retry of a stored id with other arguments is refused
/// FAILED_PRECONDITION, not answered with the other call's result.
#[tokio::test]
async fn fingerprints_survive_a_restart() {
    let fixture = Fixture::new();
    let dir = TempDir::new("fingerprint");
    let first = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&first, None).await;
    let lineage = lineage_of(&raw);
    raw.send(Message::Request(raw.request(
        3,
        "count",
        &serde_json::json!({"a": 1}),
    )))
    .await;
    raw.expect_response(3).await;
    drop(raw);
    first.kill();

    let second = fixture.start(Some(&dir.store())).await;
    let mut raw = fixture.session(&second, Some(lineage)).await;
    let mut retry = raw.request(3, "count", &serde_json::json!({"a": 2}));
    retry.retry = true;
    raw.send(Message::Request(retry)).await;
    assert_eq!(
        raw.expect_error(3).await.error_code(),
        ErrorCode::FAILED_PRECONDITION
    );
    assert_eq!(fixture.counters.count.load(Ordering::SeqCst), 1);
}

//! Shared harness of the client's reconnect tests.
//!
//! A real `toolwire-server` sits behind [`Proxy`], a loopback TCP relay that the test
//! steers: it can cut every connection (both sides, or only the client's side while
//! the server's side stays open), swallow what the server sends on one connection
//! (a RESPONSE that never reaches the client), and point new connections at another
//! upstream (a restarted server). The server is configured with the proxy's URL,
//! which is what the client dials and binds into its handshake.
//!
//! Tools: `echo` returns its arguments; `gate` returns its arguments once the test
//! opens the [`Gate`]. Both count their executions, which is what at-most-once is
//! about. Every wait is bounded by [`within`].

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use toolwire_client::{Client, ClientBuilder, ReconnectPolicy, Session};
use toolwire_server::protocol::{Identity, IdentityKey};
use toolwire_server::{BuildError, Limits, Server, ServerBuilder, Tool};

/// Upper bound of any single wait in a test.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test when it takes longer than [`STEP`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Polls `condition` every 5 ms until it holds, bounded by [`STEP`].
pub(crate) async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Installs a test log subscriber once (`RUST_LOG` selects the level).
pub(crate) fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Counts executions of a tool and, for `gate`, holds them until opened.
#[derive(Debug)]
pub(crate) struct Gate {
    runs: AtomicUsize,
    started: Notify,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            runs: AtomicUsize::new(0),
            started: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Times the handler was invoked.
    pub(crate) fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits until the handler has been invoked at least `runs` times.
    pub(crate) async fn wait_runs(&self, runs: usize) {
        within("handler start", async {
            loop {
                let started = self.started.notified();
                if self.runs() >= runs {
                    return;
                }
                started.await;
            }
        })
        .await;
    }

    /// Lets every held and future execution finish.
    pub(crate) fn open(&self) {
        self.release.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn start(&self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.started.notify_waiters();
    }
}

/// The counters of one server's tools.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    pub(crate) echo: Arc<Gate>,
    pub(crate) gate: Arc<Gate>,
}

fn schema() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

impl Tools {
    fn register(&self, builder: ServerBuilder, echo_description: &str) -> ServerBuilder {
        let echo = self.echo.clone();
        let gate = self.gate.clone();
        builder
            .tool(Tool::new(
                "echo",
                echo_description,
                schema(),
                move |args, _| {
                    echo.start();
                    async move { Ok(args) }
                },
            ))
            .tool(Tool::new(
                "gate",
                "Returns its arguments once the test opens the gate; with `stream: true`, first streams the item \"started\".",
                schema(),
                move |args, context| {
                    let gate = gate.clone();
                    gate.start();
                    async move {
                        if args["stream"] == true
                            && context.send_item(serde_json::json!("started")).await.is_err()
                        {
                            return Ok(serde_json::Value::Null);
                        }
                        if let Ok(permit) = gate.release.acquire().await {
                            permit.forget();
                        }
                        Ok(args)
                    }
                },
            ))
    }
}

/// One running server instance behind the proxy.
pub(crate) struct Instance {
    pub(crate) server: Server,
    pub(crate) addr: SocketAddr,
    pub(crate) tools: Tools,
    serving: tokio::task::JoinHandle<()>,
}

impl Instance {
    /// Stops accepting (the in-memory state goes with the instance once dropped).
    pub(crate) fn stop(&self) {
        self.serving.abort();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// A server identity, an allowed agent, and the proxy their connections go through.
pub(crate) struct Harness {
    pub(crate) proxy: Proxy,
    /// The URL the client dials (the proxy's) and the server is configured with.
    pub(crate) url: String,
    pub(crate) server_identity: Identity,
    pub(crate) server_key: IdentityKey,
    pub(crate) agent: Identity,
}

impl Harness {
    /// A proxy on loopback; no server yet.
    pub(crate) async fn new() -> Self {
        init_tracing();
        let proxy = Proxy::start().await;
        let url = format!("ws://{}/toolwire", proxy.addr);
        let server_identity = Identity::generate(&mut rand_core::OsRng);
        Self {
            proxy,
            url,
            server_key: server_identity.public_key(),
            server_identity,
            agent: Identity::generate(&mut rand_core::OsRng),
        }
    }

    /// Starts a server instance (fresh in-memory state) with `limits` and the
    /// builder finished by `configure`, and points the proxy's new connections at it.
    pub(crate) async fn start_server(
        &self,
        limits: Limits,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Instance {
        self.start_server_described(limits, "Returns its arguments.", configure)
            .await
    }

    /// As [`start_server`](Self::start_server), with `echo` described by
    /// `echo_description` (a changed definition when it differs).
    pub(crate) async fn start_server_described(
        &self,
        limits: Limits,
        echo_description: &str,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let tools = Tools::default();
        let builder = Server::builder(self.server_identity.clone(), self.url.clone())
            .allow_client(self.agent.public_key())
            .limits(limits);
        let server = configure(tools.register(builder, echo_description))
            .build()
            .expect("server configuration");
        let serving = tokio::spawn({
            let server = server.clone();
            async move {
                let _ = server.serve_listener(listener).await;
            }
        });
        self.proxy.set_upstream(addr);
        Instance {
            server,
            addr,
            tools,
            serving,
        }
    }

    /// A client builder of the agent pinning the server, with fast backoff.
    pub(crate) fn client(&self) -> ClientBuilder {
        Client::builder()
            .identity(self.agent.clone())
            .pin_server(self.server_key)
            .reconnect(fast_policy())
    }

    /// A session of `builder`.
    pub(crate) async fn connect(&self, builder: ClientBuilder) -> Session {
        within("client connects", builder.connect(&self.url))
            .await
            .expect("client connects")
    }
}

/// The default policy with short backoff, so that tests finish fast.
pub(crate) fn fast_policy() -> ReconnectPolicy {
    ReconnectPolicy::default().with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// A fresh audit log path in the temporary directory.
pub(crate) fn audit_path(name: &str) -> PathBuf {
    let random: u64 = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    std::env::temp_dir().join(format!("toolwire-client-{name}-{random:016x}.jsonl"))
}

/// The `call` entries of an audit log: (request id, retry flag, decision).
pub(crate) fn audit_calls(path: &PathBuf) -> Vec<(u64, bool, String)> {
    let text = std::fs::read_to_string(path).expect("audit log readable");
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["kind"] == "call")
        .map(|entry| {
            (
                entry["request_id"].as_u64().expect("request_id"),
                entry["retry"].as_bool().expect("retry"),
                entry["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The loopback TCP relay the tests steer.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    control: Arc<Control>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.control
            .cut
            .send_modify(|cut| *cut = (cut.0 + 1, Cut::Both));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Both,
    ClientSideOnly,
}

struct Control {
    upstream: Mutex<Option<SocketAddr>>,
    /// Connections accepted from clients so far.
    accepted: AtomicUsize,
    /// Connection number whose server-to-client bytes are swallowed.
    swallow: Mutex<Option<usize>>,
    swallowed: AtomicUsize,
    swallowed_notify: Notify,
    /// (cut number, kind): every cut bumps it; each relay task watches it.
    cut: watch::Sender<(u64, Cut)>,
    /// Server sides of connections cut on the client side only, kept open.
    held: Mutex<Vec<(OwnedReadHalf, OwnedWriteHalf)>>,
    refuse: AtomicBool,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let control = Arc::new(Control {
            upstream: Mutex::new(None),
            accepted: AtomicUsize::new(0),
            swallow: Mutex::new(None),
            swallowed: AtomicUsize::new(0),
            swallowed_notify: Notify::new(),
            cut: watch::channel((0, Cut::Both)).0,
            held: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
        });
        let accepting = tokio::spawn({
            let control = control.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = control.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(relay(number, client, control.clone()));
                }
            }
        });
        Self {
            addr,
            control,
            accepting,
        }
    }

    /// Where new connections are relayed to.
    pub(crate) fn set_upstream(&self, addr: SocketAddr) {
        *self.control.upstream.lock().expect("lock") = Some(addr);
    }

    /// Connections accepted from clients so far (each dial is one).
    pub(crate) fn accepted(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Closes every current connection on both sides, as a network failure or a
    /// crashed server would.
    pub(crate) fn cut_all(&self) {
        self.control
            .cut
            .send_modify(|cut| *cut = (cut.0 + 1, Cut::Both));
    }

    /// Closes every current connection on the client's side only: the server's side
    /// stays open, so the server does not notice the loss.
    pub(crate) fn cut_client_side(&self) {
        self.control
            .cut
            .send_modify(|cut| *cut = (cut.0 + 1, Cut::ClientSideOnly));
    }

    /// From now on, what the server sends on the newest connection is dropped.
    pub(crate) fn swallow_newest(&self) {
        let newest = self.accepted().checked_sub(1).expect("a connection");
        *self.control.swallow.lock().expect("lock") = Some(newest);
    }

    /// Waits until at least `bytes` bytes have been swallowed since the start.
    pub(crate) async fn wait_swallowed(&self, bytes: usize) {
        within("server bytes swallowed", async {
            loop {
                let notified = self.control.swallowed_notify.notified();
                if self.control.swallowed.load(Ordering::SeqCst) >= bytes {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// New connections are closed at once, as a server that is down would be.
    pub(crate) fn refuse(&self, refuse: bool) {
        self.control.refuse.store(refuse, Ordering::SeqCst);
    }
}

async fn relay(number: usize, client: TcpStream, control: Arc<Control>) {
    let mut cut = control.cut.subscribe();
    let upstream = *control.upstream.lock().expect("lock");
    if control.refuse.load(Ordering::SeqCst) {
        return;
    }
    let Some(upstream) = upstream else {
        return;
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_write.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *control.swallow.lock().expect("lock") == Some(number) {
                        control.swallowed.fetch_add(n, Ordering::SeqCst);
                        control.swallowed_notify.notify_waiters();
                    } else if client_write.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = cut.changed() => {
                match changed.map(|()| cut.borrow_and_update().1) {
                    Ok(Cut::ClientSideOnly) => {
                        control
                            .held
                            .lock()
                            .expect("lock")
                            .push((server_read, server_write));
                        return;
                    }
                    Ok(Cut::Both) | Err(_) => return,
                }
            }
        }
    }
}

/// Default server limits.
pub(crate) fn limits() -> Limits {
    Limits::default()
}

/// A server instance on its own runtime: dropping it (or [`kill`](Self::kill)) kills
/// the server the way a crash does, every task dropped mid-way.
pub(crate) struct Isolated {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Isolated {
    /// Kills the server.
    pub(crate) fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Harness {
    /// Starts a server on its own runtime with `tools` (shared with earlier
    /// instances, so that their counts add up) and its at-most-once table in the
    /// durable store at `store`, and points the proxy's new connections at it. A
    /// store still held by a killed instance is waited for.
    pub(crate) async fn start_isolated_server(&self, tools: &Tools, store: &Path) -> Isolated {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local address");
        let server = within("store released by the killed server", async {
            loop {
                let builder = Server::builder(self.server_identity.clone(), self.url.clone())
                    .allow_client(self.agent.public_key())
                    .at_most_once_store(store);
                match tools.register(builder, "Returns its arguments.").build() {
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
            let listener = TcpListener::from_std(listener).expect("listener");
            let _ = server.serve_listener(listener).await;
        });
        self.proxy.set_upstream(addr);
        Isolated {
            runtime: Some(runtime),
        }
    }
}

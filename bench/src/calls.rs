//! Scenario 1: call throughput and latency of a trivial echo tool, toolwire against
//! a raw tokio-tungstenite echo and jsonrpsee over WebSocket.

use crate::util::{fail, median, Result, Samples};
use futures_util::{SinkExt as _, StreamExt as _};
use jsonrpsee::core::client::ClientT as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_client::{CallOptions, Client, Session};
use toolwire_protocol::{Identity, IdentityKey};
use toolwire_server::{Limits, Server, Tool};

/// Client identities of a toolwire server of this scenario, used in turn.
const CLIENT_IDENTITIES: usize = 256;

/// One system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// toolwire with envelope signatures on both ways (the default).
    ToolwireSigned,
    /// toolwire with envelope signatures off (records still sealed).
    ToolwireUnsigned,
    /// A raw tokio-tungstenite echo server and client: the transport's limit.
    RawEcho,
    /// jsonrpsee server and client over WebSocket, an `echo` method.
    Jsonrpsee,
}

impl System {
    /// Every system, in table order.
    pub const ALL: [System; 4] = [
        System::ToolwireSigned,
        System::ToolwireUnsigned,
        System::RawEcho,
        System::Jsonrpsee,
    ];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            System::ToolwireSigned => "toolwire, signatures on",
            System::ToolwireUnsigned => "toolwire, signatures off",
            System::RawEcho => "raw tokio-tungstenite echo",
            System::Jsonrpsee => "jsonrpsee (WebSocket)",
        }
    }
}

/// The bytes of an argument of about `size` bytes, as each system carries it.
fn payload_text(size: usize) -> String {
    // `{"d": "<text>"}` in msgpack costs 5 bytes of framing for short strings.
    "x".repeat(size.saturating_sub(5).max(1))
}

/// The limits of the servers of this scenario: the secure defaults, except the
/// per-identity rate buckets, which would otherwise cap one identity at 100 calls/s.
pub fn unthrottled_limits() -> Limits {
    let mut limits = Limits::default();
    limits.rate_per_sec = 100_000_000;
    limits.burst = 100_000_000;
    limits.per_tool_rate_per_sec = 100_000_000;
    limits.per_tool_burst = 100_000_000;
    limits
}

/// The echo tool every toolwire server of the benchmarks registers.
pub fn echo_tool() -> Tool {
    Tool::new(
        "echo",
        "Returns its arguments.",
        serde_json::json!({"type": "object"}),
        |args, _context| async move { Ok(args) },
    )
}

/// A toolwire server on loopback, and what a client needs to reach it.
pub struct ToolwireServer {
    /// Its URL.
    pub url: String,
    /// Its identity key.
    pub key: IdentityKey,
    /// The server, for shutdown.
    pub server: Server,
    task: JoinHandle<()>,
}

impl ToolwireServer {
    /// Starts a server allowing `clients`, with `limits`, signatures on or off.
    ///
    /// # Errors
    /// Bind or build errors.
    pub async fn start(clients: &[IdentityKey], limits: Limits, signatures: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/toolwire", listener.local_addr()?);
        let identity = Identity::generate(&mut rand_core::OsRng);
        let key = identity.public_key();
        let mut builder = Server::builder(identity, url.clone())
            .limits(limits)
            .tool(echo_tool());
        for client in clients {
            builder = builder.allow_client(*client);
        }
        if !signatures {
            builder = builder.dangerous().disable_envelope_signatures().done();
        }
        let server = builder.build()?;
        let serving = server.clone();
        let task = tokio::spawn(async move {
            let _ = serving.serve_listener(listener).await;
        });
        Ok(Self {
            url,
            key,
            server,
            task,
        })
    }

    /// Opens a session as `identity`.
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect(&self, identity: &Identity, signatures: bool) -> Result<Session> {
        let mut builder = Client::builder()
            .identity(identity.clone())
            .pin_server(self.key);
        if !signatures {
            builder = builder.dangerous().disable_request_signatures().done();
        }
        Ok(builder.connect(&self.url).await?)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// A raw tokio-tungstenite echo server.
pub struct RawEchoServer {
    /// Its URL.
    pub url: String,
    task: JoinHandle<()>,
}

impl RawEchoServer {
    /// Starts an echo server whose connections use `config`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(config: Option<WebSocketConfig>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/", listener.local_addr()?);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(mut socket) =
                        tokio_tungstenite::accept_async_with_config(stream, config).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if matches!(message, WsMessage::Close(_)) {
                            return;
                        }
                        let echo = matches!(message, WsMessage::Binary(_) | WsMessage::Text(_));
                        if echo && socket.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { url, task })
    }

    /// Stops accepting.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Connects a raw WebSocket client to `url`.
///
/// # Errors
/// The connect error.
pub async fn raw_connect(url: &str) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        let _ = stream.set_nodelay(true);
    }
    Ok(socket)
}

/// A running server of one [`System`].
pub enum Running {
    /// toolwire: the server, its allowed client identities (one per connection, as
    /// 64 agents would be: the server bounds at-most-once lineages per identity),
    /// the next one to use, and whether signatures are on.
    Toolwire(ToolwireServer, Vec<Identity>, AtomicUsize, bool),
    /// Raw echo.
    Raw(RawEchoServer),
    /// jsonrpsee.
    Jsonrpsee(String, jsonrpsee::server::ServerHandle),
}

/// One client connection of one [`System`], with the argument it sends.
pub enum Conn {
    /// A toolwire session and the msgpack arguments.
    Toolwire(Session, Vec<u8>),
    /// A raw WebSocket and the payload.
    Raw(
        Box<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        tokio_tungstenite::tungstenite::Bytes,
    ),
    /// A jsonrpsee client and the string argument.
    Jsonrpsee(Box<jsonrpsee::ws_client::WsClient>, String),
}

impl Running {
    /// Starts a server of `system`.
    ///
    /// # Errors
    /// Bind or build errors.
    pub async fn start(system: System) -> Result<Self> {
        match system {
            System::ToolwireSigned | System::ToolwireUnsigned => {
                let signatures = system == System::ToolwireSigned;
                let clients: Vec<Identity> = (0..CLIENT_IDENTITIES)
                    .map(|_| Identity::generate(&mut rand_core::OsRng))
                    .collect();
                let keys: Vec<IdentityKey> = clients.iter().map(Identity::public_key).collect();
                let server = ToolwireServer::start(&keys, unthrottled_limits(), signatures).await?;
                Ok(Running::Toolwire(
                    server,
                    clients,
                    AtomicUsize::new(0),
                    signatures,
                ))
            }
            System::RawEcho => Ok(Running::Raw(RawEchoServer::start(None).await?)),
            System::Jsonrpsee => {
                // Default configuration: up to 100 connections, 10 MB messages.
                let server = jsonrpsee::server::Server::builder()
                    .build("127.0.0.1:0")
                    .await?;
                let mut module = jsonrpsee::RpcModule::new(());
                module.register_method("echo", |params, _, _| params.one::<String>())?;
                let url = format!("ws://{}", server.local_addr()?);
                let handle = server.start(module);
                Ok(Running::Jsonrpsee(url, handle))
            }
        }
    }

    /// Opens one client connection that sends arguments of about `size` bytes.
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect(&self, size: usize) -> Result<Conn> {
        let text = payload_text(size);
        match self {
            Running::Toolwire(server, identities, next, signatures) => {
                let index = next.fetch_add(1, Ordering::Relaxed) % identities.len();
                let session = server.connect(&identities[index], *signatures).await?;
                let args = rmp_serde::to_vec_named(&serde_json::json!({ "d": text }))?;
                Ok(Conn::Toolwire(session, args))
            }
            Running::Raw(server) => {
                let socket = raw_connect(&server.url).await?;
                Ok(Conn::Raw(Box::new(socket), vec![b'x'; size].into()))
            }
            Running::Jsonrpsee(url, _) => {
                let client = jsonrpsee::ws_client::WsClientBuilder::default()
                    .build(url)
                    .await?;
                Ok(Conn::Jsonrpsee(Box::new(client), text))
            }
        }
    }

    /// Stops the server.
    pub fn stop(self) {
        match self {
            Running::Toolwire(server, ..) => server.stop(),
            Running::Raw(server) => server.stop(),
            Running::Jsonrpsee(_, handle) => {
                let _ = handle.stop();
            }
        }
    }
}

impl Conn {
    /// Makes one call and checks that the answer echoes the argument.
    ///
    /// # Errors
    /// A failed call or a wrong answer.
    pub async fn call(&mut self) -> Result<()> {
        match self {
            Conn::Toolwire(session, args) => {
                let result = session
                    .call_raw("echo", args.clone(), CallOptions::default())
                    .await?;
                if result != *args {
                    return Err(fail("toolwire echo answered other bytes"));
                }
            }
            Conn::Raw(socket, payload) => {
                socket.send(WsMessage::Binary(payload.clone())).await?;
                match socket.next().await {
                    Some(Ok(WsMessage::Binary(answer))) if answer == *payload => {}
                    other => return Err(fail(format!("raw echo answered {other:?}"))),
                }
            }
            Conn::Jsonrpsee(client, text) => {
                let answer: String = client
                    .request("echo", jsonrpsee::rpc_params![text.as_str()])
                    .await?;
                if answer != *text {
                    return Err(fail("jsonrpsee echo answered another string"));
                }
            }
        }
        Ok(())
    }
}

/// Figures of one (system, size) cell, medians over the repetitions.
#[derive(Debug, Clone, Default)]
pub struct CallFigures {
    /// Sequential calls on one connection: p50 latency, µs.
    pub p50_us: f64,
    /// Sequential calls on one connection: p99 latency, µs.
    pub p99_us: f64,
    /// Sequential calls per second on one connection.
    pub sequential_per_sec: f64,
    /// Calls per second over the concurrent connections.
    pub concurrent_per_sec: f64,
    /// Calls made in total (all repetitions, both modes), all answered correctly.
    pub calls: u64,
}

/// One repetition of sequential calls on one connection for `duration`.
///
/// # Errors
/// Any failed call.
pub async fn sequential(
    running: &Running,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(Samples, f64)> {
    let mut conn = running.connect(size).await?;
    let start = Instant::now();
    while start.elapsed() < warmup {
        conn.call().await?;
    }
    let mut samples = Samples::default();
    let start = Instant::now();
    loop {
        let before = Instant::now();
        conn.call().await?;
        samples.push(before.elapsed());
        if start.elapsed() >= duration {
            break;
        }
    }
    let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
    Ok((samples, rate))
}

/// One repetition of `connections` connections calling in closed loops (one call in
/// flight each) for `duration`, each making at least one call. Returns (calls
/// answered in total, warm-up included; calls per second while measuring).
///
/// # Errors
/// Any failed connect or call.
pub async fn concurrent(
    running: &Running,
    size: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(u64, f64)> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(running.connect(size).await?);
    }
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let measuring = measuring.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // At least one call per connection, whatever the timing.
            let (mut counted, mut answered) = (0u64, 0u64);
            loop {
                conn.call().await?;
                answered += 1;
                if measuring.load(Ordering::Relaxed) {
                    counted += 1;
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Ok::<_, crate::util::BoxError>((counted, answered))
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut total, mut answered) = (0, 0);
    for task in tasks {
        let (counted, all) = task.await??;
        total += counted;
        answered += all;
    }
    Ok((answered, total as f64 / elapsed.as_secs_f64()))
}

/// Settings of scenario 1.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Argument sizes.
    pub sizes: Vec<usize>,
    /// Concurrent connections.
    pub connections: usize,
    /// Repetitions (medians are reported).
    pub reps: usize,
    /// Warm-up before each measurement.
    pub warmup: Duration,
    /// Length of each measurement.
    pub duration: Duration,
}

/// Per-repetition figures of one (system, size): p50s, p99s, sequential rates,
/// concurrent rates, calls.
type Cell = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, u64);

/// Runs scenario 1 for every system and size, repetitions interleaved across the
/// systems so that background load spreads over all of them. Returns
/// `(system, size, figures)` rows.
///
/// # Errors
/// Any failed server start, connect or call.
pub async fn run(settings: &CallSettings) -> Result<Vec<(System, usize, CallFigures)>> {
    let mut servers = Vec::new();
    for system in System::ALL {
        servers.push((system, Running::start(system).await?));
    }
    let mut raw: Vec<Vec<Cell>> = vec![vec![Cell::default(); settings.sizes.len()]; servers.len()];
    for _ in 0..settings.reps {
        for (s, size) in settings.sizes.iter().enumerate() {
            for (i, (_, running)) in servers.iter().enumerate() {
                let (mut samples, rate) =
                    sequential(running, *size, settings.warmup, settings.duration).await?;
                let cell = &mut raw[i][s];
                cell.0.push(samples.percentile_us(50.0));
                cell.1.push(samples.percentile_us(99.0));
                cell.2.push(rate);
                cell.4 += samples.len() as u64;
                let (calls, per_sec) = concurrent(
                    running,
                    *size,
                    settings.connections,
                    settings.warmup,
                    settings.duration,
                )
                .await?;
                cell.3.push(per_sec);
                cell.4 += calls;
            }
        }
    }
    let mut rows = Vec::new();
    for (i, (system, running)) in servers.into_iter().enumerate() {
        for (s, size) in settings.sizes.iter().enumerate() {
            let cell = &raw[i][s];
            rows.push((
                system,
                *size,
                CallFigures {
                    p50_us: median(&cell.0),
                    p99_us: median(&cell.1),
                    sequential_per_sec: median(&cell.2),
                    concurrent_per_sec: median(&cell.3),
                    calls: cell.4,
                },
            ));
        }
        running.stop();
    }
    Ok(rows)
}

//! Shared harness of the attacker-side integration tests.
//!
//! [`TestServer`] runs a real server on `127.0.0.1:0` with three instrumented tools
//! whose [`Probe`]s count what their handlers did: `echo` (returns its arguments;
//! schema requires a string `text`), `slow` (sleeps until cancelled) and `ticker`
//! (streams `count` items 10 ms apart). A test asserts both what the attacker sees
//! on the wire and, through the probes, that no handler ran where none should.
//!
//! [`RawClient`] is the attacker's hand-driven client: a raw tokio-tungstenite
//! socket plus the protocol crate's sans-IO [`Connection`], so a test can run a
//! legitimate handshake and then forge, tamper with or replay sealed records.
//!
//! Every await that could hang is bounded by [`within`].

#![allow(dead_code)]

use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::{Request as HttpRequest, Response};
use tokio_tungstenite::tungstenite::http::{self, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_client::{CallError, Client, Session};
use toolwire_server::protocol::envelope::RequestFields;
use toolwire_server::protocol::message::{
    CapGrant, CapRequest, ErrorMessage, Request, Response as RpcResponse,
};
use toolwire_server::protocol::{
    ClientConfig, CloseCode, Connection, ErrorCode, Event, Identity, IdentityKey, Message,
    SUBPROTOCOL,
};
use toolwire_server::{Server, ServerBuilder, Tool};

/// Upper bound of any single wait in a test.
pub(crate) const STEP: Duration = Duration::from_secs(5);

/// Awaits `future`, failing the test when it takes longer than [`STEP`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Installs a test log subscriber once (`RUST_LOG` selects the level).
pub(crate) fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// What one tool's handler did.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    runs: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    started: Notify,
}

impl Probe {
    /// Times the handler was invoked.
    pub(crate) fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Times the handler ran to its end.
    pub(crate) fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// Times the handler was stopped (its future dropped) before its end.
    pub(crate) fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
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

    /// Waits until the handler has been stopped at least `cancelled` times.
    pub(crate) async fn wait_cancelled(&self, cancelled: usize) {
        within("handler cancellation", async {
            while self.cancelled() < cancelled {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    fn start(self: &Arc<Self>) -> RunGuard {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.started.notify_waiters();
        RunGuard {
            probe: self.clone(),
            finished: false,
        }
    }
}

/// Counts a cancellation when a handler future is dropped before it finishes.
struct RunGuard {
    probe: Arc<Probe>,
    finished: bool,
}

impl RunGuard {
    fn finish(mut self) {
        self.finished = true;
        self.probe.completed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.probe.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The probes of the test server's tools.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probes {
    pub(crate) echo: Arc<Probe>,
    pub(crate) slow: Arc<Probe>,
    pub(crate) ticker: Arc<Probe>,
}

impl Probes {
    /// Handler invocations over every tool.
    pub(crate) fn total_runs(&self) -> usize {
        self.echo.runs() + self.slow.runs() + self.ticker.runs()
    }
}

/// `echo`'s input schema: an object with a string `text`.
pub(crate) fn echo_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"]
    })
}

/// The `echo` tool, described by `description`, counting into `probe`.
pub(crate) fn echo_tool(description: &str, probe: &Arc<Probe>) -> Tool {
    let probe = probe.clone();
    Tool::new("echo", description, echo_schema(), move |args, _| {
        let run = probe.start();
        async move {
            run.finish();
            Ok(args)
        }
    })
}

fn slow_tool(probe: &Arc<Probe>) -> Tool {
    let probe = probe.clone();
    Tool::new(
        "slow",
        "Sleeps until cancelled.",
        serde_json::json!({"type": "object"}),
        move |_, _| {
            let run = probe.start();
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                run.finish();
                Ok(serde_json::json!("finished"))
            }
        },
    )
}

fn ticker_tool(probe: &Arc<Probe>) -> Tool {
    let probe = probe.clone();
    Tool::new(
        "ticker",
        "Streams 0..count, 10 ms apart, then returns count.",
        serde_json::json!({
            "type": "object",
            "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 1000}},
            "required": ["count"]
        }),
        move |args, context| {
            let run = probe.start();
            async move {
                let count = args["count"].as_u64().unwrap_or(0);
                for index in 0..count {
                    if context.send_item(serde_json::json!(index)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                run.finish();
                Ok(serde_json::json!(count))
            }
        },
    )
}

/// A server listening on loopback, stopped when dropped.
pub(crate) struct TestServer {
    /// The URL the server is configured with (and clients dial).
    pub(crate) url: String,
    /// The socket address.
    pub(crate) addr: SocketAddr,
    /// The server, for runtime changes (revocation, tool replacement).
    pub(crate) server: Server,
    /// The server's identity key (what clients pin).
    pub(crate) server_key: IdentityKey,
    /// An agent allowed to call every tool.
    pub(crate) agent: Identity,
    /// The tools' probes.
    pub(crate) probes: Probes,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl TestServer {
    /// A server with default limits.
    pub(crate) async fn start() -> Self {
        Self::start_with(|builder| builder).await
    }

    /// A server whose builder (identity, URL, the allowed agent, the three tools) is
    /// finished by `configure`.
    pub(crate) async fn start_with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let url = format!("ws://{addr}/toolwire");
        let identity = Identity::generate(&mut rand_core::OsRng);
        let agent = Identity::generate(&mut rand_core::OsRng);
        let probes = Probes::default();
        let builder = Server::builder(identity.clone(), url.clone())
            .allow_client(agent.public_key())
            .tool(echo_tool("Returns its arguments.", &probes.echo))
            .tool(slow_tool(&probes.slow))
            .tool(ticker_tool(&probes.ticker));
        let server = configure(builder).build().expect("server configuration");
        let serving = tokio::spawn({
            let server = server.clone();
            async move {
                let _ = server.serve_listener(listener).await;
            }
        });
        Self {
            url,
            addr,
            server,
            server_key: identity.public_key(),
            agent,
            probes,
            serving,
        }
    }

    /// A client builder for `identity`, pinning this server.
    pub(crate) fn client(&self, identity: &Identity) -> toolwire_client::ClientBuilder {
        Client::builder()
            .identity(identity.clone())
            .pin_server(self.server_key)
    }

    /// A session of `identity` through the real client.
    pub(crate) async fn session(&self, identity: &Identity) -> Session {
        within("client connect", self.client(identity).connect(&self.url))
            .await
            .expect("client connects")
    }

    /// A session of the allowed agent.
    pub(crate) async fn agent_session(&self) -> Session {
        self.session(&self.agent).await
    }

    /// A hand-driven session of `identity` presenting `grants`, up to its CAP_GRANT.
    pub(crate) async fn raw_session(
        &self,
        identity: &Identity,
        grants: Vec<String>,
    ) -> (RawClient, CapGrant) {
        let mut raw = RawClient::handshake(&self.url, self.client_config(identity, grants)).await;
        let grant = raw.expect_cap_grant().await;
        (raw, grant)
    }

    /// A client configuration for `identity` dialing this server, asking for every
    /// tool and presenting `grants`.
    pub(crate) fn client_config(&self, identity: &Identity, grants: Vec<String>) -> ClientConfig {
        ClientConfig::new(
            identity.clone(),
            vec![self.server_key],
            self.url.clone(),
            &mut rand_core::OsRng,
        )
        .with_cap_request(CapRequest {
            tools: vec!["*".into()],
            grants,
        })
    }
}

/// The call's RPC error code, failing the test for any other outcome.
pub(crate) fn rpc_code(outcome: Result<serde_json::Value, CallError>) -> ErrorCode {
    match outcome {
        Err(CallError::Rpc { code, .. }) => code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// The raw WebSocket the attacker holds.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An upgrade request for `url` with exactly these `Origin` and
/// `Sec-WebSocket-Protocol` headers (each omitted when `None`).
pub(crate) fn upgrade_request(
    url: &str,
    origin: Option<&str>,
    subprotocol: Option<&str>,
) -> HttpRequest {
    let mut request = url.into_client_request().expect("valid URL");
    if let Some(origin) = origin {
        request.headers_mut().insert(
            "Origin",
            HeaderValue::from_str(origin).expect("header value"),
        );
    }
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(subprotocol).expect("header value"),
        );
    }
    request
}

/// Sends `request` as a WebSocket upgrade.
pub(crate) async fn try_upgrade(request: HttpRequest) -> Result<(Socket, Response), WsError> {
    within(
        "WebSocket upgrade",
        tokio_tungstenite::connect_async(request),
    )
    .await
}

/// The HTTP status of a refused upgrade, failing the test if it was accepted.
pub(crate) async fn refused_status(request: HttpRequest) -> u16 {
    refusal(request).await.status().as_u16()
}

/// The HTTP response refusing an upgrade, failing the test if it was accepted.
pub(crate) async fn refusal(request: HttpRequest) -> http::Response<Option<Vec<u8>>> {
    match try_upgrade(request).await {
        Err(WsError::Http(response)) => *response,
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((_, response)) => panic!("upgrade was accepted: {}", response.status()),
    }
}

/// A WebSocket to `url` that offered `toolwire.v1`; nothing sent on it yet.
pub(crate) async fn raw_socket(url: &str) -> Socket {
    let (socket, response) = try_upgrade(upgrade_request(url, None, Some(SUBPROTOCOL)))
        .await
        .expect("upgrade accepted");
    assert_eq!(response.status().as_u16(), 101);
    socket
}

/// Reads until the server's close frame and returns its code, skipping data
/// messages; `None` when the connection ended without a close frame.
pub(crate) async fn close_frame_code(socket: &mut Socket) -> Option<u16> {
    within("close frame", async {
        loop {
            match socket.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    return frame.map(|frame| u16::from(frame.code));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// How a hand-driven connection ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Closed {
    /// Messages received before the close.
    pub(crate) messages: Vec<Message>,
    /// The code of the authenticated CLOSE record, when one arrived.
    pub(crate) record: Option<CloseCode>,
    /// The code of the WebSocket close frame, when one arrived.
    pub(crate) frame: Option<u16>,
}

/// The attacker's hand-driven client: a raw socket and the sans-IO connection.
pub(crate) struct RawClient {
    /// The WebSocket.
    pub(crate) socket: Socket,
    /// The protocol state machine, driven by hand.
    pub(crate) conn: Connection,
    /// The client identity (signs REQUESTs).
    pub(crate) identity: Identity,
    messages: VecDeque<Message>,
    record_close: Option<CloseCode>,
}

impl RawClient {
    /// Upgrades to `url` and runs the Noise handshake by hand: record 1 out, record 2
    /// in (the client side is then established), record 3 out. Does not wait for
    /// the server's verdict on record 3.
    pub(crate) async fn handshake(url: &str, config: ClientConfig) -> Self {
        Self::handshake_on(raw_socket(url).await, config).await
    }

    /// [`handshake`](Self::handshake) on an already upgraded `socket` (one whose
    /// upgrade request carried extra headers, say).
    pub(crate) async fn handshake_on(socket: Socket, config: ClientConfig) -> Self {
        let identity = config.identity().clone();
        let conn = Connection::client(Arc::new(config), Instant::now(), &mut rand_core::OsRng);
        let mut raw = Self {
            socket,
            conn,
            identity,
            messages: VecDeque::new(),
            record_close: None,
        };
        raw.flush().await;
        let record = raw.next_binary().await.expect("handshake record 2");
        raw.conn
            .handle_record(Instant::now(), &record)
            .expect("server's handshake record is accepted");
        assert!(raw.conn.is_established());
        raw.flush().await;
        raw
    }

    /// The session id.
    pub(crate) fn session_id(&self) -> [u8; 32] {
        self.conn.session().expect("established").session_id
    }

    /// A REQUEST signed by this client's identity, as the real client builds it.
    pub(crate) fn request(&self, id: u64, tool: &str, args: &serde_json::Value) -> Request {
        let args = rmp_serde::to_vec_named(args).expect("msgpack arguments");
        let session_id = self.session_id();
        let signature = RequestFields {
            session_id: &session_id,
            request_id: id,
            tool,
            args: &args,
            grant_id: "",
        }
        .sign(&self.identity);
        Request {
            id,
            tool: tool.into(),
            args: args.into(),
            grant_id: None,
            deadline_ms: None,
            signature: Some(signature.to_vec().into()),
            retry: false,
        }
    }

    /// Seals `message` as the next record without sending it.
    pub(crate) fn seal(&mut self, message: Message) -> Vec<u8> {
        // Any kind: these tests play misbehaving peers too (MSG-005 is the sender's duty).
        toolwire_protocol::testing::send_any_kind_for_testing_only(
            &mut self.conn,
            Instant::now(),
            message,
        )
        .expect("message seals");
        let record = self.conn.poll_transmit().expect("one sealed record");
        assert!(self.conn.poll_transmit().is_none(), "exactly one record");
        record
    }

    /// Sends raw bytes as one binary WebSocket message.
    pub(crate) async fn send_record(&mut self, record: Vec<u8>) {
        within("send", self.socket.send(WsMessage::binary(record)))
            .await
            .expect("socket accepts the record");
    }

    /// Sends raw bytes, tolerating a connection the server already closed.
    pub(crate) async fn try_send_record(&mut self, record: Vec<u8>) -> bool {
        matches!(
            tokio::time::timeout(STEP, self.socket.send(WsMessage::binary(record))).await,
            Ok(Ok(()))
        )
    }

    /// Seals and sends `message`.
    pub(crate) async fn send(&mut self, message: Message) {
        let record = self.seal(message);
        self.send_record(record).await;
    }

    /// Sends whatever the connection queued (handshake records, PONGs).
    pub(crate) async fn flush(&mut self) {
        while let Some(record) = self.conn.poll_transmit() {
            self.send_record(record).await;
        }
    }

    async fn next_binary(&mut self) -> Option<Vec<u8>> {
        within("server record", async {
            loop {
                match self.socket.next().await {
                    Some(Ok(WsMessage::Binary(bytes))) => return Some(bytes.to_vec()),
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    /// The next message from the server, or how the connection ended.
    pub(crate) async fn next(&mut self) -> Result<Message, Closed> {
        within("server message", async {
            loop {
                if let Some(message) = self.messages.pop_front() {
                    return Ok(message);
                }
                match self.socket.next().await {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        let _ = self.conn.handle_record(Instant::now(), &bytes);
                        while let Some(event) = self.conn.poll_event() {
                            match event {
                                Event::Message(message) => self.messages.push_back(message),
                                Event::Closed { code, .. } => self.record_close = Some(code),
                                _ => {}
                            }
                        }
                        // PONGs and the like.
                        while let Some(record) = self.conn.poll_transmit() {
                            let _ = self.socket.send(WsMessage::binary(record)).await;
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Err(Closed {
                            messages: Vec::new(),
                            record: self.record_close,
                            frame: frame.map(|frame| u16::from(frame.code)),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        return Err(Closed {
                            messages: Vec::new(),
                            record: self.record_close,
                            frame: None,
                        });
                    }
                }
            }
        })
        .await
    }

    /// The next message, failing the test if the connection closed.
    pub(crate) async fn expect_message(&mut self) -> Message {
        match self.next().await {
            Ok(message) => message,
            Err(closed) => panic!("expected a message, connection closed: {closed:?}"),
        }
    }

    /// The server's CAP_GRANT (its first message).
    pub(crate) async fn expect_cap_grant(&mut self) -> CapGrant {
        match self.expect_message().await {
            Message::CapGrant(grant) => grant,
            other => panic!("expected CAP_GRANT, got {other:?}"),
        }
    }

    /// The RESPONSE to `id`.
    pub(crate) async fn expect_response(&mut self, id: u64) -> RpcResponse {
        match self.expect_message().await {
            Message::Response(response) if response.id == id => response,
            other => panic!("expected RESPONSE to {id}, got {other:?}"),
        }
    }

    /// The ERROR answering `id`.
    pub(crate) async fn expect_error(&mut self, id: u64) -> ErrorMessage {
        match self.expect_message().await {
            Message::Error(error) if error.id == Some(id) => error,
            other => panic!("expected ERROR for {id}, got {other:?}"),
        }
    }

    /// Reads until the connection ends, collecting the messages before it.
    pub(crate) async fn expect_close(&mut self) -> Closed {
        let mut messages = Vec::new();
        loop {
            match self.next().await {
                Ok(message) => messages.push(message),
                Err(mut closed) => {
                    closed.messages = messages;
                    return closed;
                }
            }
        }
    }

    /// Fails the test if anything arrives within `quiet`.
    pub(crate) async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(message) = self.messages.pop_front() {
            panic!("expected silence, got {message:?}");
        }
        if let Ok(frame) = tokio::time::timeout(quiet, self.socket.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}

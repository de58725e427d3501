//! Shared harness of the server's `spec_*` conformance tests: a real server on
//! loopback with three tools, upgrade requests with arbitrary headers, and a
//! hand-driven client (a raw WebSocket plus the protocol crate's sans-IO
//! `Connection`) that reports every record and frame the server sends.
//!
//! Every await that could hang is bounded by [`within`].

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt as _, StreamExt as _};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::{Request as HttpRequest, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_server::protocol::envelope::RequestFields;
use toolwire_server::protocol::message::{CapRequest, Request};
use toolwire_server::protocol::{
    ClientConfig, CloseCode, Connection, Event, Identity, IdentityKey, Message, SUBPROTOCOL,
};
use toolwire_server::{Server, ServerBuilder, Tool};

/// Upper bound of any single wait.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test when it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// `echo`: returns its arguments (an object).
fn echo() -> Tool {
    Tool::new(
        "echo",
        "Returns its arguments.",
        serde_json::json!({"type": "object"}),
        |args, _| async move { Ok(args) },
    )
}

/// `slow`: sleeps a minute (until cancelled).
fn slow() -> Tool {
    Tool::new(
        "slow",
        "Sleeps a minute.",
        serde_json::json!({"type": "object"}),
        |_, _| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(serde_json::json!("late"))
        },
    )
}

/// `ticker`: streams `count` items `interval_ms` apart, then returns `count`.
fn ticker() -> Tool {
    Tool::new(
        "ticker",
        "Streams count items, then returns count.",
        serde_json::json!({
            "type": "object",
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "interval_ms": {"type": "integer", "minimum": 0}
            },
            "required": ["count"]
        }),
        |args, context| async move {
            let count = args["count"].as_u64().unwrap_or(0);
            let interval = args["interval_ms"].as_u64().unwrap_or(0);
            for index in 0..count {
                if context
                    .send_item(serde_json::json!({"tick": index}))
                    .await
                    .is_err()
                {
                    break;
                }
                if interval > 0 {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
            }
            Ok(serde_json::json!(count))
        },
    )
}

/// A server on `127.0.0.1:0`, stopped when dropped.
pub struct Served {
    /// The URL the server is configured with.
    pub url: String,
    /// Its socket address.
    pub addr: SocketAddr,
    /// The server.
    pub server: Server,
    /// The server identity.
    pub identity: Identity,
    /// A client identity allowed to call every tool.
    pub agent: Identity,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl Served {
    /// A server with default settings.
    pub async fn start() -> Self {
        Self::start_with(|builder| builder).await
    }

    /// A server whose builder (identity, loopback URL, allowed agent, tools) is
    /// finished by `configure`.
    pub async fn start_with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let url = format!("ws://{addr}/toolwire");
        Self::start_on(listener, url.clone(), configure).await
    }

    /// A server on `listener` that binds `endpoint` (the URL clients are told to
    /// dial) into its handshakes.
    pub async fn start_on(
        listener: TcpListener,
        endpoint: String,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        let addr = listener.local_addr().expect("address");
        let identity = Identity::generate(&mut rand_core::OsRng);
        let agent = Identity::generate(&mut rand_core::OsRng);
        let builder = Server::builder(identity.clone(), endpoint.clone())
            .allow_client(agent.public_key())
            .tool(echo())
            .tool(slow())
            .tool(ticker());
        let server = configure(builder).build().expect("server configuration");
        let serving = tokio::spawn({
            let server = server.clone();
            async move {
                let _ = server.serve_listener(listener).await;
            }
        });
        Self {
            url: format!("ws://{addr}/toolwire"),
            addr,
            server,
            identity,
            agent,
            serving,
        }
    }

    /// The server identity key.
    pub fn key(&self) -> IdentityKey {
        self.identity.public_key()
    }

    /// A client configuration of `identity` bound to `endpoint`, asking for every
    /// tool.
    pub fn config_for(&self, identity: &Identity, endpoint: &str) -> ClientConfig {
        ClientConfig::new(
            identity.clone(),
            vec![self.key()],
            endpoint,
            &mut rand_core::OsRng,
        )
        .with_cap_request(CapRequest {
            tools: vec!["*".into()],
            grants: Vec::new(),
        })
    }

    /// A client configuration of the agent for this server's URL.
    pub fn agent_config(&self) -> ClientConfig {
        self.config_for(&self.agent, &self.url)
    }

    /// A session of the agent through the real client.
    pub async fn agent_session(&self) -> toolwire_client::Session {
        within(
            "connect",
            toolwire_client::Client::builder()
                .identity(self.agent.clone())
                .pin_server(self.key())
                .connect(&self.url),
        )
        .await
        .expect("the agent connects")
    }
}

/// The raw WebSocket of a test client.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An upgrade request for `url` carrying `headers`, in order (a name given twice
/// makes two header lines).
pub fn upgrade_request(url: &str, headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = url.into_client_request().expect("valid URL");
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    request
}

/// Sends `request` as a WebSocket upgrade.
pub async fn try_upgrade(request: HttpRequest) -> Result<(Socket, Response), WsError> {
    within("upgrade", tokio_tungstenite::connect_async(request)).await
}

/// The HTTP status of a refused upgrade, failing the test if it was accepted.
pub async fn refused_status(request: HttpRequest) -> u16 {
    match try_upgrade(request).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((_, response)) => panic!("upgrade accepted: {}", response.status()),
    }
}

/// The `Sec-WebSocket-Protocol` of an accepted upgrade, failing the test if it was
/// refused.
pub async fn accepted_subprotocol(request: HttpRequest) -> Option<String> {
    let (_, response) = try_upgrade(request).await.expect("upgrade accepted");
    assert_eq!(response.status().as_u16(), 101);
    let values: Vec<String> = response
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .map(|value| value.to_str().expect("ASCII").to_owned())
        .collect();
    assert!(values.len() <= 1, "{values:?}");
    values.into_iter().next()
}

/// A WebSocket to `url` that offered `toolwire.v1`.
pub async fn raw_socket(url: &str) -> Socket {
    let (socket, _) = try_upgrade(upgrade_request(
        url,
        &[("Sec-WebSocket-Protocol", SUBPROTOCOL)],
    ))
    .await
    .expect("upgrade accepted");
    socket
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An application message (opened and decoded by the client's connection).
    Message(Message),
    /// An authenticated CLOSE record with this code.
    CloseRecord(CloseCode),
    /// A WebSocket close frame: code and reason.
    CloseFrame(Option<(u16, String)>),
    /// A WebSocket ping, pong or text message, or a binary message the client's
    /// connection refused (its error).
    Other(String),
    /// The TCP connection ended without a close frame.
    Ended,
}

/// A hand-driven client.
pub struct RawClient {
    /// The WebSocket.
    pub socket: Socket,
    /// The client's protocol state.
    pub conn: Connection,
    /// The client identity.
    pub identity: Identity,
}

impl RawClient {
    /// Upgrades to `url` and runs the handshake with `config`: record 1 out, record
    /// 2 in, record 3 out. Does not wait for the server's verdict.
    pub async fn handshake(url: &str, config: ClientConfig) -> Self {
        Self::handshake_over(raw_socket(url).await, config).await
    }

    /// Runs the handshake with `config` on an upgraded `socket`.
    pub async fn handshake_over(socket: Socket, config: ClientConfig) -> Self {
        let identity = config.identity().clone();
        let conn = Connection::client(Arc::new(config), Instant::now(), &mut rand_core::OsRng);
        let mut raw = Self {
            socket,
            conn,
            identity,
        };
        raw.flush().await;
        let record = match within("record 2", raw.socket.next()).await {
            Some(Ok(WsMessage::Binary(bytes))) => bytes.to_vec(),
            other => panic!("expected record 2, got {other:?}"),
        };
        raw.conn
            .handle_record(Instant::now(), &record)
            .expect("record 2 accepted");
        raw.flush().await;
        raw
    }

    /// A session of `config` up to (and including) its CAP_GRANT.
    pub async fn session(url: &str, config: ClientConfig) -> Self {
        let mut raw = Self::handshake(url, config).await;
        match raw.next().await {
            Received::Message(Message::CapGrant(_)) => raw,
            other => panic!("expected CAP_GRANT, got {other:?}"),
        }
    }

    /// The session id.
    pub fn session_id(&self) -> [u8; 32] {
        self.conn.session().expect("established").session_id
    }

    /// A REQUEST signed by this client, with `args` encoded as msgpack.
    pub fn request(&self, id: u64, tool: &str, args: &serde_json::Value) -> Request {
        let args = rmp_serde::to_vec_named(args).expect("msgpack");
        self.request_with_bytes(id, tool, args)
    }

    /// A REQUEST signed by this client over exactly these argument bytes.
    pub fn request_with_bytes(&self, id: u64, tool: &str, args: Vec<u8>) -> Request {
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
    pub fn seal(&mut self, message: Message) -> Vec<u8> {
        toolwire_protocol::testing::send_any_kind_for_testing_only(
            &mut self.conn,
            Instant::now(),
            message,
        )
        .expect("seals");
        let record = self.conn.poll_transmit().expect("a record");
        assert!(self.conn.poll_transmit().is_none());
        record
    }

    /// Sends one WebSocket message.
    pub async fn send_ws(&mut self, message: WsMessage) {
        within("send", self.socket.send(message))
            .await
            .expect("the socket takes the message");
    }

    /// Sends `record` as one binary message.
    pub async fn send_record(&mut self, record: Vec<u8>) {
        self.send_ws(WsMessage::binary(record)).await;
    }

    /// Seals and sends `message`.
    pub async fn send(&mut self, message: Message) {
        let record = self.seal(message);
        self.send_record(record).await;
    }

    /// Sends what the connection queued.
    pub async fn flush(&mut self) {
        while let Some(record) = self.conn.poll_transmit() {
            self.send_record(record).await;
        }
    }

    /// The next thing the server sends.
    pub async fn next(&mut self) -> Received {
        within("server traffic", self.next_unbounded()).await
    }

    async fn next_unbounded(&mut self) -> Received {
        loop {
            let frame = self.socket.next().await;
            let received = match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if let Err(error) = self.conn.handle_record(Instant::now(), &bytes) {
                        return Received::Other(format!("refused record: {error}"));
                    }
                    // Answer PINGs.
                    while let Some(record) = self.conn.poll_transmit() {
                        let _ = self.socket.send(WsMessage::binary(record)).await;
                    }
                    let mut received = None;
                    while let Some(event) = self.conn.poll_event() {
                        match event {
                            Event::Message(message) => received = Some(Received::Message(message)),
                            Event::Closed { code, .. } => {
                                received = Some(Received::CloseRecord(code));
                            }
                            _ => {}
                        }
                    }
                    match received {
                        Some(received) => received,
                        // A PING, PONG or KEY_UPDATE: internal.
                        None => continue,
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => Received::CloseFrame(
                    frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())),
                ),
                Some(Ok(other)) => Received::Other(format!("{other:?}")),
                Some(Err(_)) | None => Received::Ended,
            };
            return received;
        }
    }

    /// The next application message, failing the test on anything else.
    pub async fn expect_message(&mut self) -> Message {
        match self.next().await {
            Received::Message(message) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Everything the server sends until the connection ends.
    pub async fn until_end(&mut self) -> Vec<Received> {
        let mut seen = Vec::new();
        loop {
            let received = self.next().await;
            let end = matches!(received, Received::CloseFrame(_) | Received::Ended);
            seen.push(received);
            if end {
                return seen;
            }
        }
    }

    /// Fails the test if anything but keepalive arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(received) = tokio::time::timeout(quiet, self.next_unbounded()).await {
            panic!("expected silence, got {received:?}");
        }
    }
}

/// Asserts that `seen` is an authenticated CLOSE record with `code`, then a
/// WebSocket close frame with the same code and an empty reason, and nothing else.
#[track_caller]
pub fn assert_closed_with(seen: &[Received], code: CloseCode) {
    assert_eq!(
        seen,
        [
            Received::CloseRecord(code),
            Received::CloseFrame(Some((code.0, String::new())))
        ],
        "a CLOSE record, then the close frame with the same code and no reason"
    );
}

/// The answer to an upgrade request sent byte by byte over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The values of every `Sec-WebSocket-Protocol` line of the response.
    pub subprotocols: Vec<String>,
}

/// Sends a WebSocket upgrade request for `/toolwire` with exactly these extra
/// header lines (in order, repeated names kept) and reads the response head. No
/// WebSocket library is involved on the client side, so nothing is validated or
/// rewritten.
pub async fn raw_upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> HttpAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = format!(
        "GET /toolwire HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let mut head = Vec::new();
    within("response head", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => panic!("connection ended in the response head: {head:?}"),
            }
        }
    })
    .await;
    let text = String::from_utf8(head).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let subprotocols = lines
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .map(|(_, value)| value.trim().to_owned())
        .collect();
    HttpAnswer {
        status,
        subprotocols,
    }
}

/// What a fake tool server received from a client, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum FromClient {
    /// A handshake record (1 or 3), accepted.
    Handshake,
    /// An application message.
    Message(Message),
    /// The client's authenticated CLOSE record, with its code.
    CloseRecord(CloseCode),
    /// A record the fake server's connection refused (its error).
    Refused(String),
    /// A WebSocket close frame: code and reason.
    CloseFrame(Option<(u16, String)>),
    /// Another WebSocket message.
    Other(String),
}

/// A fake tool server for testing the real client: it runs the protocol crate's
/// server side with `identity`, admits `client`, answers the handshake with a
/// CAP_GRANT granting nothing (under a signed, empty manifest), and records what the
/// client sends until the connection ends or `listen` has passed.
pub async fn fake_tool_server(
    identity: Identity,
    client: IdentityKey,
    listen: Duration,
) -> (String, tokio::task::JoinHandle<Vec<FromClient>>) {
    use toolwire_server::protocol::manifest::Manifest;
    use toolwire_server::protocol::message::{CallLimits, CapGrant};
    use toolwire_server::protocol::ServerConfig;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let config = Arc::new(
        ServerConfig::new(identity.clone(), url.clone(), &mut rand_core::OsRng)
            .allow_clients([client]),
    );
    let handle = tokio::spawn(async move {
        let mut log = Vec::new();
        let (stream, _) = listener.accept().await.expect("accept");
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let callback = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                        mut response: tokio_tungstenite::tungstenite::handshake::server::Response| {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
            Ok(response)
        };
        let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return log;
        };
        let mut conn =
            Connection::server(config, Instant::now(), 1_767_225_600, &mut rand_core::OsRng);
        let deadline = tokio::time::sleep(listen);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                frame = socket.next() => frame,
                () = &mut deadline => break,
            };
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    let established_before = conn.is_established();
                    match conn.handle_record(Instant::now(), &bytes) {
                        Err(error) => log.push(FromClient::Refused(error.to_string())),
                        Ok(()) if !established_before => log.push(FromClient::Handshake),
                        Ok(()) => {}
                    }
                    while let Some(event) = conn.poll_event() {
                        match event {
                            Event::Established(_) => {
                                let manifest = Manifest {
                                    server: identity.public_key().to_bytes().to_vec().into(),
                                    tools: Vec::new(),
                                };
                                let grant = CapGrant {
                                    granted: Vec::new(),
                                    limits: CallLimits {
                                        rate_per_sec: 100,
                                        burst: 200,
                                        max_in_flight: 64,
                                    },
                                    expires_at_ms: None,
                                    policy_version: 1,
                                    manifest: manifest.sign(&identity),
                                };
                                conn.send(Instant::now(), Message::CapGrant(grant))
                                    .expect("CAP_GRANT");
                            }
                            Event::Message(message) => log.push(FromClient::Message(message)),
                            Event::Closed {
                                code,
                                side: toolwire_server::protocol::Side::Remote,
                                ..
                            } => {
                                log.push(FromClient::CloseRecord(code));
                            }
                            _ => {}
                        }
                    }
                    while let Some(record) = conn.poll_transmit() {
                        let _ = socket.send(WsMessage::binary(record)).await;
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    log.push(FromClient::CloseFrame(
                        frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())),
                    ));
                    break;
                }
                Some(Ok(other)) => log.push(FromClient::Other(format!("{other:?}"))),
                Some(Err(_)) | None => break,
            }
        }
        log
    });
    (url, handle)
}

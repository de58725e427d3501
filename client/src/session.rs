//! An open session: the connection task and the handle agents call tools through.

use crate::builder::UPGRADE_TIMEOUT;
use crate::error::{CallError, ConnectError};
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::client::Request as UpgradeRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{
    Cancel, CapGrant, CapUpdate, ErrorMessage, Request, SignedManifest,
};
use toolwire_protocol::record::HEADER_LEN;
use toolwire_protocol::{
    ClientConfig, CloseCode, Connection, ErrorCode, Event, IdentityKey, Message, Side, SUBPROTOCOL,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connection whose socket failed a write keeps reading for the server's
/// close code.
const CLOSE_DRAIN: Duration = Duration::from_millis(200);

/// How long one write to the socket may make no progress before the connection is
/// closed with TRY_AGAIN_LATER (1013) (LIM-004). Bounds how long a server that stops
/// reading holds the connection task and the calls queued behind it.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the close frame of a stalled connection is given before the socket is
/// dropped.
const STALLED_CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Per-call options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Give up after this long: the call fails with DEADLINE_EXCEEDED and the server
    /// is sent CANCEL. The deadline is also sent to the server. Default: none.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a deadline.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
        }
    }
}

/// One event of a streamed call.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A partial result or progress report.
    Item(serde_json::Value),
    /// The final result; the stream ends after it.
    Done(serde_json::Value),
}

enum Sink {
    Unary(oneshot::Sender<Result<Vec<u8>, CallError>>),
    Stream(mpsc::UnboundedSender<Result<StreamEvent, CallError>>),
}

impl Sink {
    fn fail(self, error: CallError) {
        match self {
            Sink::Unary(reply) => {
                let _ = reply.send(Err(error));
            }
            Sink::Stream(items) => {
                let _ = items.send(Err(error));
            }
        }
    }
}

enum Command {
    Call {
        id: u64,
        tool: String,
        args: Vec<u8>,
        deadline_ms: Option<u64>,
        sink: Sink,
    },
    Cancel(u64),
    Close,
}

/// What the session knows about its grants and the server's tools.
#[derive(Default)]
struct Shared {
    session_id: [u8; 32],
    server_key: Option<IdentityKey>,
    /// Tools as described by the manifest first received (what the agent approved).
    pinned_tools: Vec<ToolDescriptor>,
    /// Granted tool → digest it was granted under.
    granted: HashMap<String, Vec<u8>>,
    /// Tools whose definition changed since the pinned manifest.
    changed: HashSet<String>,
    closed: Option<CloseCode>,
}

/// An authenticated session with a tool server. Cheap to share behind an `Arc`; every
/// method takes `&self`, and many calls may run concurrently over the one connection.
/// Dropping the session closes the connection.
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &hex_id(&self.session_id()))
            .finish_non_exhaustive()
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Session {
    /// The session id (the handshake hash, shared by both ends).
    pub fn session_id(&self) -> [u8; 32] {
        lock(&self.shared).session_id
    }

    /// The server's authenticated identity key.
    pub fn server_key(&self) -> Option<IdentityKey> {
        lock(&self.shared).server_key
    }

    /// The tools of the signed manifest received at connect time.
    pub fn tools(&self) -> Vec<ToolDescriptor> {
        lock(&self.shared).pinned_tools.clone()
    }

    /// Names of the tools currently granted to this session.
    pub fn granted_tools(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.shared).granted.keys().cloned().collect();
        names.sort();
        names
    }

    /// The close code, once the connection has closed.
    pub fn close_code(&self) -> Option<CloseCode> {
        lock(&self.shared).closed
    }

    /// Calls `tool` with `args` (any serde value; sent as msgpack) and returns the
    /// result as JSON.
    ///
    /// # Errors
    /// [`CallError::Rpc`] with the server's code (PERMISSION_DENIED, INVALID_ARGUMENT,
    /// RESOURCE_EXHAUSTED with `retry_after_ms`, …); [`CallError::ManifestChanged`] when
    /// the tool's definition changed since connect; [`CallError::ConnectionClosed`].
    pub async fn call(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
    ) -> Result<serde_json::Value, CallError> {
        self.call_with(tool, args, CallOptions::default()).await
    }

    /// Like [`call`](Self::call) with options (deadline).
    ///
    /// # Errors
    /// As [`call`](Self::call), plus [`CallError::DeadlineExceeded`].
    pub async fn call_with(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
        options: CallOptions,
    ) -> Result<serde_json::Value, CallError> {
        let args = rmp_serde::to_vec_named(args)
            .map_err(|error| CallError::Encoding(error.to_string()))?;
        let result = self.call_raw(tool, args, options).await?;
        decode(&result)
    }

    /// Calls with argument bytes that are already msgpack, returning the result bytes
    /// exactly as the server signed them.
    ///
    /// # Errors
    /// As [`call_with`](Self::call_with).
    pub async fn call_raw(
        &self,
        tool: &str,
        args: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let (reply, answer) = oneshot::channel();
        let guard = self.submit(tool, args, &options, Sink::Unary(reply))?;
        let outcome = match options.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(CallError::DeadlineExceeded),
            },
            None => answer.await,
        };
        guard.disarm();
        outcome.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Starts a streamed call: items arrive as the tool produces them, then the final
    /// result. Dropping the stream before the end cancels the call.
    ///
    /// # Errors
    /// [`CallError::Encoding`] when the arguments do not encode,
    /// [`CallError::ManifestChanged`] or [`CallError::ConnectionClosed`] at once;
    /// later errors arrive through the stream.
    pub fn stream(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
    ) -> Result<CallStream, CallError> {
        let args = rmp_serde::to_vec_named(args)
            .map_err(|error| CallError::Encoding(error.to_string()))?;
        let (items, receiver) = mpsc::unbounded_channel();
        let guard = self.submit(tool, args, &CallOptions::default(), Sink::Stream(items))?;
        Ok(CallStream {
            receiver,
            guard: Some(guard),
            finished: false,
        })
    }

    fn submit(
        &self,
        tool: &str,
        args: Vec<u8>,
        options: &CallOptions,
        sink: Sink,
    ) -> Result<CancelGuard, CallError> {
        if lock(&self.shared).changed.contains(tool) {
            return Err(CallError::ManifestChanged {
                tool: tool.to_owned(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline_ms = options
            .timeout
            .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self.commands
            .send(Command::Call {
                id,
                tool: tool.to_owned(),
                args,
                deadline_ms,
                sink,
            })
            .map_err(|_| self.closed_error())?;
        Ok(CancelGuard {
            id,
            commands: self.commands.clone(),
            armed: true,
        })
    }

    fn closed_error(&self) -> CallError {
        CallError::ConnectionClosed {
            code: self.close_code().unwrap_or(CloseCode::GOING_AWAY),
        }
    }

    /// Closes the session with NORMAL (1000) after an authenticated CLOSE.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

fn decode(bytes: &[u8]) -> Result<serde_json::Value, CallError> {
    rmp_serde::from_slice(bytes).map_err(|error| CallError::Encoding(error.to_string()))
}

/// Sends CANCEL for a call whose caller went away before the answer.
struct CancelGuard {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    armed: bool,
}

impl CancelGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}

/// The items of a streamed call. Ends after [`StreamEvent::Done`] or an error.
pub struct CallStream {
    receiver: mpsc::UnboundedReceiver<Result<StreamEvent, CallError>>,
    guard: Option<CancelGuard>,
    finished: bool,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Stream for CallStream {
    type Item = Result<StreamEvent, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(item) = &polled {
            if !matches!(item, Some(Ok(StreamEvent::Item(_)))) {
                self.finished = true;
                if let Some(guard) = self.guard.take() {
                    guard.disarm();
                }
            }
        }
        polled
    }
}

struct Pending {
    sink: Sink,
    request_hash: [u8; 32],
}

pub(crate) async fn open(
    request: UpgradeRequest,
    config: Arc<ClientConfig>,
    sign_requests: bool,
    connector: tokio_tungstenite::Connector,
) -> Result<Session, ConnectError> {
    let tls = matches!(connector, tokio_tungstenite::Connector::Rustls(_));
    let max_record = HEADER_LEN + config.limits().max_record_body;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(max_record))
        .max_frame_size(Some(max_record))
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(connector),
    );
    let (socket, response) = tokio::time::timeout(UPGRADE_TIMEOUT, connecting)
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(|error| crate::tls::connect_error(error, tls))?;
    let echoed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|value| value.to_str().ok());
    if echoed != Some(SUBPROTOCOL) {
        return Err(ConnectError::SubprotocolNotAccepted);
    }
    let connection = Connection::client_at(
        config.clone(),
        Instant::now(),
        unix_now(),
        &mut rand_core::OsRng,
    );
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (commands, command_receiver) = mpsc::unbounded_channel();
    let (ready, ready_receiver) = oneshot::channel();
    let driver = Driver {
        socket,
        connection,
        commands: command_receiver,
        pending: HashMap::new(),
        shared: shared.clone(),
        config,
        sign_requests,
        ready: Some(ready),
        handshake_error: None,
    };
    tokio::spawn(driver.run());
    let handshake_deadline = Duration::from_secs(10);
    match tokio::time::timeout(handshake_deadline, ready_receiver).await {
        Ok(Ok(Ok(()))) => Ok(Session {
            commands,
            shared,
            next_id: AtomicU64::new(1),
        }),
        Ok(Ok(Err(error))) => Err(error),
        Ok(Err(_)) | Err(_) => Err(ConnectError::Timeout),
    }
}

/// The connection task: moves records between the socket and the protocol state
/// machine, and calls between the session handle and the wire.
struct Driver {
    socket: Socket,
    connection: Connection,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: HashMap<u64, Pending>,
    shared: Arc<Mutex<Shared>>,
    config: Arc<ClientConfig>,
    sign_requests: bool,
    ready: Option<oneshot::Sender<Result<(), ConnectError>>>,
    handshake_error: Option<toolwire_protocol::Error>,
}

impl Driver {
    async fn run(mut self) {
        let code = self.run_until_closed().await;
        lock(&self.shared).closed = Some(code);
        if let Some(ready) = self.ready.take() {
            let error = match self.handshake_error.take() {
                Some(error) => ConnectError::Handshake { error, code },
                None => ConnectError::Closed {
                    code,
                    side: Side::Remote,
                },
            };
            let _ = ready.send(Err(error));
        }
        for (_, pending) in self.pending.drain() {
            pending.sink.fail(CallError::ConnectionClosed { code });
        }
        tracing::debug!(%code, "toolwire client connection closed");
    }

    /// Runs until the connection is closed; returns the close code.
    async fn run_until_closed(&mut self) -> CloseCode {
        loop {
            // Events first: handling them may queue records.
            self.drain_events();
            match self.flush().await {
                Ok(()) => {}
                Err(CloseCode::TRY_AGAIN_LATER) => {
                    // LIM-004: the server stopped reading.
                    tracing::warn!(
                        event = "write_stalled",
                        "toolwire server stopped reading: closing the connection"
                    );
                    let code = CloseCode::TRY_AGAIN_LATER;
                    self.connection.close(code, "");
                    self.send_close_frame(code, STALLED_CLOSE_GRACE).await;
                    return code;
                }
                Err(_) => return self.close_code_after_write_failure().await,
            }
            if let Some((code, _)) = self.connection.close_code() {
                // Best effort: the peer may already be gone.
                self.send_close_frame(code, WRITE_STALL_TIMEOUT).await;
                return code;
            }
            let deadline = self.connection.poll_timeout().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                frame = self.socket.next() => {
                    if let Some(code) = self.handle_frame(frame) {
                        return code;
                    }
                }
                command = self.commands.recv() => self.handle_command(command),
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.connection.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// The socket refused a write, typically because the server closed the connection
    /// while this side was still sending. What the server sent before going away
    /// (answers, its CLOSE record, its close frame) may still be buffered: read it, for
    /// at most [`CLOSE_DRAIN`], so that callers learn the server's close code (say
    /// RATE_LIMITED) instead of GOING_AWAY.
    async fn close_code_after_write_failure(&mut self) -> CloseCode {
        let drain = async {
            loop {
                let frame = self.socket.next().await;
                let gone = self.handle_frame(frame);
                self.drain_events();
                if let Some((code, _)) = self.connection.close_code() {
                    return code;
                }
                if let Some(code) = gone {
                    return code;
                }
            }
        };
        tokio::time::timeout(CLOSE_DRAIN, drain)
            .await
            .unwrap_or(CloseCode::GOING_AWAY)
    }

    /// Sends every queued record: `Err(GOING_AWAY)` when the socket failed,
    /// `Err(TRY_AGAIN_LATER)` when a send made no progress within
    /// [`WRITE_STALL_TIMEOUT`] (LIM-004).
    async fn flush(&mut self) -> Result<(), CloseCode> {
        while let Some(record) = self.connection.poll_transmit() {
            let send = self.socket.send(WsMessage::Binary(record.into()));
            match tokio::time::timeout(WRITE_STALL_TIMEOUT, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CloseCode::GOING_AWAY),
                Err(_) => return Err(CloseCode::TRY_AGAIN_LATER),
            }
        }
        Ok(())
    }

    /// Sends a close frame with `code`, giving up after `within`.
    async fn send_close_frame(&mut self, code: CloseCode, within: Duration) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.0),
            reason: "".into(),
        };
        let close = self.socket.send(WsMessage::Close(Some(frame)));
        let _ = tokio::time::timeout(within, close).await;
    }

    /// Returns a close code when the socket is gone.
    fn handle_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Option<CloseCode> {
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => {
                if let Err(error) = self.connection.handle_record(Instant::now(), &bytes) {
                    if self.ready.is_some() {
                        self.handshake_error = Some(error);
                    }
                }
                None
            }
            Some(Ok(WsMessage::Text(_))) => {
                self.connection.close(CloseCode::UNSUPPORTED_DATA, "");
                None
            }
            Some(Ok(WsMessage::Close(frame))) => {
                Some(frame.map_or(CloseCode::GOING_AWAY, |frame| {
                    CloseCode(u16::from(frame.code))
                }))
            }
            Some(Ok(_)) => None,
            Some(Err(WsError::Capacity(_))) => {
                self.connection.close(CloseCode::MESSAGE_TOO_BIG, "");
                None
            }
            Some(Err(_)) | None => Some(CloseCode::GOING_AWAY),
        }
    }

    fn handle_command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Call {
                id,
                tool,
                args,
                deadline_ms,
                sink,
            }) => self.send_call(id, tool, args, deadline_ms, sink),
            Some(Command::Cancel(id)) => {
                if self.pending.remove(&id).is_some() {
                    let _ = self
                        .connection
                        .send(Instant::now(), Message::Cancel(Cancel { id }));
                }
            }
            Some(Command::Close) | None => self.connection.close(CloseCode::NORMAL, ""),
        }
    }

    fn send_call(
        &mut self,
        id: u64,
        tool: String,
        args: Vec<u8>,
        deadline_ms: Option<u64>,
        sink: Sink,
    ) {
        let session_id = lock(&self.shared).session_id;
        let fields = RequestFields {
            session_id: &session_id,
            request_id: id,
            tool: &tool,
            args: &args,
            grant_id: "",
        };
        let request_hash = fields.hash();
        let signature = self
            .sign_requests
            .then(|| fields.sign(self.config.identity()).to_vec().into());
        let request = Request {
            id,
            tool,
            args: args.into(),
            grant_id: None,
            deadline_ms,
            signature,
            retry: false,
        };
        match self
            .connection
            .send(Instant::now(), Message::Request(request))
        {
            Ok(()) => {
                self.pending.insert(id, Pending { sink, request_hash });
            }
            Err(toolwire_protocol::Error::Local(error)) => {
                sink.fail(CallError::Encoding(error.to_string()))
            }
            Err(error) => sink.fail(CallError::ConnectionClosed {
                code: error.close_code().unwrap_or(CloseCode::INTERNAL_ERROR),
            }),
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.connection.poll_event() {
            match event {
                Event::Established(session) => {
                    let mut shared = lock(&self.shared);
                    shared.session_id = session.session_id;
                    shared.server_key = Some(session.peer);
                }
                Event::Message(message) => self.handle_message(message),
                Event::Closed { code, side, error } => {
                    tracing::debug!(%code, %side, ?error, "toolwire connection closed");
                }
                _ => {}
            }
        }
    }

    fn handle_message(&mut self, message: Message) {
        match message {
            Message::CapGrant(grant) => self.handle_grant(grant),
            Message::CapUpdate(update) => self.handle_update(update),
            Message::Response(response) => {
                let Some(pending) = self.pending.remove(&response.id) else {
                    return;
                };
                let verified = self.verify_response(
                    response.id,
                    &pending.request_hash,
                    &response.result,
                    response.signature.as_deref(),
                );
                let outcome = if verified {
                    Ok(response.result.into_vec())
                } else {
                    Err(CallError::BadResponseSignature)
                };
                match pending.sink {
                    Sink::Unary(reply) => {
                        let _ = reply.send(outcome);
                    }
                    Sink::Stream(items) => {
                        let _ = items
                            .send(outcome.and_then(|bytes| decode(&bytes).map(StreamEvent::Done)));
                    }
                }
            }
            Message::StreamItem(item) => {
                if let Some(Pending {
                    sink: Sink::Stream(items),
                    ..
                }) = self.pending.get(&item.id)
                {
                    let _ = items.send(decode(&item.data).map(StreamEvent::Item));
                }
            }
            Message::Error(ErrorMessage {
                id: Some(id),
                code,
                message,
                retry_after_ms,
            }) => {
                if let Some(pending) = self.pending.remove(&id) {
                    pending.sink.fail(CallError::Rpc {
                        code: ErrorCode(code),
                        message,
                        retry_after_ms,
                    });
                }
            }
            Message::Error(error) => {
                tracing::warn!(code = %error.error_code(), message = %error.message, "toolwire server reported a connection error")
            }
            _ => {}
        }
    }

    fn verify_response(
        &self,
        id: u64,
        request_hash: &[u8; 32],
        result: &[u8],
        signature: Option<&Vec<u8>>,
    ) -> bool {
        let shared = lock(&self.shared);
        let (Some(server), Some(signature)) = (shared.server_key, signature) else {
            // Unsigned responses are accepted only when this client does not sign
            // either (a deployment that switched envelope signatures off).
            return !self.sign_requests;
        };
        ResponseFields {
            session_id: &shared.session_id,
            request_id: id,
            request_hash,
            result,
        }
        .verify(&server, signature)
        .is_ok()
    }

    fn verified_manifest(&self, signed: &SignedManifest) -> Option<Manifest> {
        let server = lock(&self.shared).server_key?;
        Manifest::verify(signed, &server).ok()
    }

    fn handle_grant(&mut self, grant: CapGrant) {
        let Some(manifest) = self.verified_manifest(&grant.manifest) else {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Err(ConnectError::BadManifest));
            }
            self.connection.close(CloseCode::PROTOCOL_VIOLATION, "");
            return;
        };
        {
            let mut shared = lock(&self.shared);
            shared.pinned_tools = manifest.tools;
            shared.granted = grant
                .granted
                .into_iter()
                .map(|tool| (tool.name, tool.digest.into_vec()))
                .collect();
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
        }
    }

    /// A changed or renamed tool definition is reported, never silently accepted: the
    /// tool is marked changed and calls to it fail with MANIFEST_CHANGED.
    fn handle_update(&mut self, update: CapUpdate) {
        let manifest = match &update.manifest {
            Some(signed) => match self.verified_manifest(signed) {
                Some(manifest) => Some(manifest),
                None => {
                    self.connection.close(CloseCode::PROTOCOL_VIOLATION, "");
                    return;
                }
            },
            None => None,
        };
        let mut shared = lock(&self.shared);
        if let Some(manifest) = manifest {
            let current: HashMap<&str, [u8; 32]> = manifest
                .tools
                .iter()
                .map(|tool| (tool.name.as_str(), tool.digest()))
                .collect();
            let changed: Vec<String> = shared
                .pinned_tools
                .iter()
                .filter(|pinned| current.get(pinned.name.as_str()) != Some(&pinned.digest()))
                .map(|pinned| pinned.name.clone())
                .collect();
            for name in changed {
                tracing::warn!(tool = %name, event = "manifest_changed", "toolwire tool definition changed since it was approved");
                shared.changed.insert(name);
            }
        }
        shared.granted = update
            .granted
            .into_iter()
            .map(|tool| (tool.name, tool.digest.into_vec()))
            .collect();
    }
}

/// Wall-clock seconds, for checking server certificates (ID-013); 0 (no clock, so
/// pinned keys only) if the system clock is before 1970.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

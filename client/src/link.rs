//! One connection of a session: dials, runs the handshake, and moves records between
//! the socket and the sans-IO [`Connection`]. The session's supervisor
//! ([`crate::session`]) decides which calls go on which connection and what a close
//! means; a link only reports what happened on its own connection.
//!
//! Implements on the client: REC-015 (requests larger than the server's announced
//! `max_record_body` are refused locally), CLS-008 (a close code that RFC 6455 forbids
//! in a close frame is not echoed), LIM-004 (write stalls), ENV-007 (response
//! signatures).

use crate::builder::UPGRADE_TIMEOUT;
use crate::error::{CallError, ConnectError};
use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{Cancel, ErrorMessage, Request, SignedManifest};
use toolwire_protocol::noise::TAG_LEN;
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

/// Everything needed to open one connection.
pub(crate) struct Dial {
    /// The URL dialed (and bound into the handshake).
    pub(crate) url: String,
    /// The `Origin` header to send, if any.
    pub(crate) origin: Option<HeaderValue>,
    /// Plain TCP or TLS.
    pub(crate) connector: Connector,
    /// The protocol configuration of this connection (with the lineage to resume).
    pub(crate) config: Arc<ClientConfig>,
    /// Whether REQUESTs carry envelope signatures.
    pub(crate) sign_requests: bool,
}

/// A call to put on the wire.
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) tool: String,
    pub(crate) args: Vec<u8>,
    pub(crate) deadline_ms: Option<u64>,
    /// AMO-008: the id was handed to the transport of an earlier connection.
    pub(crate) retry: bool,
}

/// What the supervisor asks of a link.
pub(crate) enum LinkCommand {
    /// Send a REQUEST.
    Request(Outgoing),
    /// Send CANCEL for a call in flight on this link.
    Cancel(u64),
    /// Close with this code (after an authenticated CLOSE).
    Close(CloseCode),
    /// Send a CAP_REQUEST (the server answers with CAP_UPDATE, GRT-039).
    CapRequest(toolwire_protocol::message::CapRequest),
}

/// What a link's handshake and capability grant established.
pub(crate) struct Ready {
    pub(crate) session_id: [u8; 32],
    pub(crate) server_key: IdentityKey,
    /// The tools of the verified signed manifest.
    pub(crate) tools: Vec<ToolDescriptor>,
    /// SHA-256 of that manifest's bytes exactly as signed (MAN-008).
    pub(crate) manifest_hash: [u8; 32],
    /// Granted tool → the digest it was granted under.
    pub(crate) granted: HashMap<String, Vec<u8>>,
    /// When the connection must be replaced: the smaller of the client's own session
    /// lifetime and the one the server announced (LIFE-003), from now.
    pub(crate) lifetime: Duration,
}

/// What happened on a link.
pub(crate) enum LinkEvent {
    /// The handshake completed and the capability grant arrived.
    Ready(Ready),
    /// The link never became ready.
    Failed(ConnectError),
    /// The server changed the granted set (CAP_UPDATE); `tools` when it sent a new
    /// verified manifest.
    Update {
        tools: Option<Vec<ToolDescriptor>>,
        /// The hash of the new manifest, with `tools` (MAN-008).
        manifest_hash: Option<[u8; 32]>,
        granted: HashMap<String, Vec<u8>>,
    },
    /// The final answer of a call in flight on this link.
    Answer {
        id: u64,
        outcome: Result<Vec<u8>, CallError>,
    },
    /// A STREAM_ITEM of a call in flight on this link.
    Item {
        id: u64,
        item: Result<serde_json::Value, CallError>,
    },
    /// A ready link closed.
    Closed { code: CloseCode },
}

/// Where links report, tagged with the link's number.
pub(crate) type LinkEvents = mpsc::UnboundedSender<(u64, LinkEvent)>;

/// Starts link number `link`; it reports to `events` until it has sent
/// [`LinkEvent::Failed`] or [`LinkEvent::Closed`].
pub(crate) fn spawn(
    link: u64,
    dial: Dial,
    events: LinkEvents,
) -> mpsc::UnboundedSender<LinkCommand> {
    let (commands, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let final_event = match connect(&dial).await {
            Ok(socket) => {
                let security = crate::events::SecurityLog::opened(&socket);
                let driver = Driver {
                    security,
                    link,
                    socket,
                    connection: Connection::client_at(
                        dial.config.clone(),
                        Instant::now(),
                        unix_now(),
                        &mut rand_core::OsRng,
                    ),
                    commands: receiver,
                    events: events.clone(),
                    request_hashes: HashMap::new(),
                    config: dial.config,
                    sign_requests: dial.sign_requests,
                    session: None,
                    ready: false,
                    handshake_error: None,
                    failed: None,
                };
                driver.run().await
            }
            Err(error) => LinkEvent::Failed(error),
        };
        let _ = events.send((link, final_event));
    });
    commands
}

/// TCP connect, TLS, WebSocket upgrade with the `toolwire.v1` subprotocol.
async fn connect(dial: &Dial) -> Result<Socket, ConnectError> {
    let tls = matches!(dial.connector, Connector::Rustls(_));
    let mut request = dial
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| ConnectError::InsecureOrInvalidUrl(error.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(origin) = &dial.origin {
        request.headers_mut().insert("Origin", origin.clone());
    }
    let max_record = HEADER_LEN + dial.config.limits().max_record_body;
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
        Some(dial.connector.clone()),
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
    Ok(socket)
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

/// CLS-008: the code to put in the WebSocket close frame. RFC 6455 §7.4 allows
/// 1000–1003, 1007–1014 and 3000–4999 there; a peer's CLOSE record may carry any
/// u16, which is then answered with PROTOCOL_VIOLATION.
pub(crate) fn close_frame_code(code: CloseCode) -> CloseCode {
    match code.0 {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => CloseCode::PROTOCOL_VIOLATION,
    }
}

/// What the handshake told this link about its session.
struct SessionState {
    session_id: [u8; 32],
    server_key: IdentityKey,
    lifetime: Duration,
    /// The `max_record_body` the server announced (REC-015).
    server_max_body: usize,
}

/// The connection task of one link.
struct Driver {
    link: u64,
    socket: Socket,
    connection: Connection,
    commands: mpsc::UnboundedReceiver<LinkCommand>,
    events: LinkEvents,
    /// Calls in flight on this link → the hash of the REQUEST as signed here (the
    /// RESPONSE signature covers it, ENV-007).
    request_hashes: HashMap<u64, [u8; 32]>,
    config: Arc<ClientConfig>,
    sign_requests: bool,
    session: Option<SessionState>,
    /// The capability grant arrived and was reported.
    ready: bool,
    handshake_error: Option<toolwire_protocol::Error>,
    /// Why the link failed before it was ready, when that is not a close code.
    failed: Option<ConnectError>,
    /// Security events and counters of this connection (`events.rs`).
    security: crate::events::SecurityLog,
}

impl Driver {
    /// Runs until the connection is closed; returns the final event.
    async fn run(mut self) -> LinkEvent {
        let code = self.run_until_closed().await;
        let side = self
            .connection
            .close_code()
            .map_or(Side::Remote, |(_, side)| side);
        self.security.closed(code, side);
        tracing::debug!(link = self.link, %code, "toolwire client connection closed");
        if self.ready {
            return LinkEvent::Closed { code };
        }
        if let Some(error) = self.failed.take() {
            return LinkEvent::Failed(error);
        }
        LinkEvent::Failed(match self.handshake_error.take() {
            Some(error) => ConnectError::Handshake { error, code },
            None => ConnectError::Closed {
                code,
                side: self
                    .connection
                    .close_code()
                    .map_or(Side::Remote, |(_, side)| side),
            },
        })
    }

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
            self.security.record_out(record.len());
            let send = self.socket.send(WsMessage::Binary(record.into()));
            match tokio::time::timeout(WRITE_STALL_TIMEOUT, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CloseCode::GOING_AWAY),
                Err(_) => return Err(CloseCode::TRY_AGAIN_LATER),
            }
        }
        Ok(())
    }

    /// Sends a close frame with `code` (CLS-008), giving up after `within`.
    async fn send_close_frame(&mut self, code: CloseCode, within: Duration) {
        let frame = CloseFrame {
            code: WsCloseCode::from(close_frame_code(code).0),
            reason: "".into(),
        };
        let close = self.socket.send(WsMessage::Close(Some(frame)));
        let _ = tokio::time::timeout(within, close).await;
    }

    /// Returns a close code when the socket is gone.
    fn handle_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Option<CloseCode> {
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => {
                self.security.record_in(&bytes);
                if let Err(error) = self.connection.handle_record(Instant::now(), &bytes) {
                    if self.session.is_none() {
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
            Some(Err(WsError::Capacity(capacity))) => {
                let length = match capacity {
                    tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                        size,
                        ..
                    } => Some(size),
                    _ => None,
                };
                let limit = HEADER_LEN + self.config.limits().max_record_body;
                self.security.oversize_frame(length, limit);
                self.connection.close(CloseCode::MESSAGE_TOO_BIG, "");
                None
            }
            Some(Err(_)) | None => Some(CloseCode::GOING_AWAY),
        }
    }

    fn handle_command(&mut self, command: Option<LinkCommand>) {
        match command {
            Some(LinkCommand::Request(outgoing)) => self.send_request(outgoing),
            Some(LinkCommand::Cancel(id)) => {
                if self.request_hashes.remove(&id).is_some() {
                    let _ = self
                        .connection
                        .send(Instant::now(), Message::Cancel(Cancel { id }));
                }
            }
            Some(LinkCommand::Close(code)) => self.connection.close(code, ""),
            Some(LinkCommand::CapRequest(request)) => {
                let _ = self
                    .connection
                    .send(Instant::now(), Message::CapRequest(request));
            }
            None => self.connection.close(CloseCode::NORMAL, ""),
        }
    }

    fn answer(&self, id: u64, outcome: Result<Vec<u8>, CallError>) {
        let _ = self
            .events
            .send((self.link, LinkEvent::Answer { id, outcome }));
    }

    fn send_request(&mut self, outgoing: Outgoing) {
        let Outgoing {
            id,
            tool,
            args,
            deadline_ms,
            retry,
        } = outgoing;
        let Some(session) = &self.session else {
            // The supervisor sends calls only to ready links.
            self.answer(
                id,
                Err(CallError::ConnectionClosed {
                    code: CloseCode::INTERNAL_ERROR,
                }),
            );
            return;
        };
        let fields = RequestFields {
            session_id: &session.session_id,
            request_id: id,
            tool: &tool,
            args: &args,
            grant_id: "",
        };
        let request_hash = fields.hash();
        let signature = self
            .sign_requests
            .then(|| fields.sign(self.config.identity()).to_vec().into());
        let message = Message::Request(Request {
            id,
            tool,
            args: args.into(),
            grant_id: None,
            deadline_ms,
            signature,
            retry,
        });
        // REC-015: never send a record body larger than the server accepts. Only
        // checked when the server announced less than this side's own limit, which
        // `Connection::send` enforces.
        if session.server_max_body < self.config.limits().max_record_body {
            let size = message.encode().len() + TAG_LEN;
            if size > session.server_max_body {
                self.answer(
                    id,
                    Err(CallError::Encoding(format!(
                        "the request's record body of {size} bytes exceeds the {} bytes the server accepts",
                        session.server_max_body
                    ))),
                );
                return;
            }
        }
        match self.connection.send(Instant::now(), message) {
            Ok(()) => {
                self.security.call_sent();
                self.request_hashes.insert(id, request_hash);
            }
            Err(toolwire_protocol::Error::Local(error)) => {
                self.answer(id, Err(CallError::Encoding(error.to_string())));
            }
            // The connection closed: the supervisor learns it from the final event
            // and decides what becomes of the call.
            Err(_) => {}
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.connection.poll_event() {
            self.security.observe(&event);
            match event {
                Event::Established(session) => {
                    let announced = Duration::from_millis(session.params.session_lifetime_ms);
                    self.session = Some(SessionState {
                        session_id: session.session_id,
                        server_key: session.peer,
                        lifetime: announced.min(self.config.limits().session_lifetime),
                        server_max_body: usize::try_from(session.params.max_record_body)
                            .unwrap_or(usize::MAX),
                    });
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
            Message::CapGrant(grant) if !self.ready => {
                let Some((session, manifest, manifest_hash)) =
                    self.verified_manifest(&grant.manifest)
                else {
                    self.failed = Some(ConnectError::BadManifest);
                    self.connection.close(CloseCode::PROTOCOL_VIOLATION, "");
                    return;
                };
                let ready = Ready {
                    session_id: session.session_id,
                    server_key: session.server_key,
                    tools: manifest.tools,
                    manifest_hash,
                    granted: granted_digests(grant.granted),
                    lifetime: session.lifetime,
                };
                self.ready = true;
                let _ = self.events.send((self.link, LinkEvent::Ready(ready)));
            }
            Message::CapGrant(_) => {}
            Message::CapUpdate(update) => {
                let (tools, manifest_hash) = match &update.manifest {
                    Some(signed) => match self.verified_manifest(signed) {
                        Some((_, manifest, hash)) => (Some(manifest.tools), Some(hash)),
                        None => {
                            self.connection.close(CloseCode::PROTOCOL_VIOLATION, "");
                            return;
                        }
                    },
                    None => (None, None),
                };
                let granted = granted_digests(update.granted);
                let _ = self.events.send((
                    self.link,
                    LinkEvent::Update {
                        tools,
                        manifest_hash,
                        granted,
                    },
                ));
            }
            Message::Response(response) => {
                let Some(request_hash) = self.request_hashes.remove(&response.id) else {
                    return;
                };
                let verified = self.verify_response(
                    response.id,
                    &request_hash,
                    &response.result,
                    response.signature.as_deref(),
                );
                let outcome = if verified {
                    Ok(response.result.into_vec())
                } else {
                    Err(CallError::BadResponseSignature)
                };
                self.answer(response.id, outcome);
            }
            Message::StreamItem(item) if self.request_hashes.contains_key(&item.id) => {
                let decoded = crate::session::decode(&item.data);
                let _ = self.events.send((
                    self.link,
                    LinkEvent::Item {
                        id: item.id,
                        item: decoded,
                    },
                ));
            }
            Message::Error(ErrorMessage {
                id: Some(id),
                code,
                message,
                retry_after_ms,
            }) if self.request_hashes.remove(&id).is_some() => {
                self.security.call_refused();
                self.answer(
                    id,
                    Err(CallError::Rpc {
                        code: ErrorCode(code),
                        message,
                        retry_after_ms,
                    }),
                );
            }
            Message::Error(ErrorMessage { id: Some(_), .. }) => {}
            Message::Error(error) => {
                // EVT-005: the message is the server's text, escaped and bounded.
                let message = toolwire_protocol::events::PeerText::new(&error.message);
                tracing::warn!(code = %error.error_code(), %message, "toolwire server reported a connection error")
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
        let (Some(session), Some(signature)) = (&self.session, signature) else {
            // Unsigned responses are accepted only when this client does not sign
            // either (a deployment that switched envelope signatures off).
            return !self.sign_requests;
        };
        ResponseFields {
            session_id: &session.session_id,
            request_id: id,
            request_hash,
            result,
        }
        .verify(&session.server_key, signature)
        .is_ok()
    }

    /// The verified manifest and its hash: SHA-256 of the bytes as received and
    /// signed, never of a re-encoding (MAN-008).
    fn verified_manifest(
        &self,
        signed: &SignedManifest,
    ) -> Option<(&SessionState, Manifest, [u8; 32])> {
        let session = self.session.as_ref()?;
        let manifest = Manifest::verify(signed, &session.server_key).ok()?;
        Some((session, manifest, Manifest::hash(signed)))
    }
}

fn granted_digests(
    granted: Vec<toolwire_protocol::message::GrantedTool>,
) -> HashMap<String, Vec<u8>> {
    granted
        .into_iter()
        .map(|tool| (tool.name, tool.digest.into_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLS-008: codes RFC 6455 forbids in a close frame become PROTOCOL_VIOLATION.
    #[test]
    fn close_frame_codes_follow_rfc_6455() {
        for allowed in [1000, 1001, 1003, 1009, 1011, 1013, 1014, 3000, 4006, 4999] {
            assert_eq!(close_frame_code(CloseCode(allowed)), CloseCode(allowed));
        }
        for forbidden in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(
                close_frame_code(CloseCode(forbidden)),
                CloseCode::PROTOCOL_VIOLATION,
                "{forbidden}"
            );
        }
    }
}

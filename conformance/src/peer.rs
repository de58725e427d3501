//! The adversarial peer: a small second implementation of the toolwire wire format,
//! written from `spec/PROTOCOL.md`, with knobs for misbehaviour.
//!
//! It shares no handshake or record code with the reference implementation: the
//! Noise XX handshake runs on `snow`, records are sealed and opened here with the
//! `chacha20poly1305` crate, and PAE, the static-key binding and the envelope signing
//! bytes are computed here. Only the msgpack structures (`Message`, the hellos) and
//! Ed25519 signing come from `toolwire-protocol`'s public types.
//!
//! Every step is exposed so a case can deviate anywhere: the upgrade headers
//! ([`upgrade`]), each handshake record ([`Handshake`]), every header field of a
//! sealed record ([`Header`], [`Session::seal_with`]), raw bytes and text frames
//! ([`Session::send_raw`], [`Session::send_text`]), envelopes ([`Session::request`]).
//! Every wait is bounded.

use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _};
use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_protocol::handshake::{ClientHello, Resume, ServerHello};
use toolwire_protocol::message::{CapRequest, Close, Request, Response};
use toolwire_protocol::{Identity, IdentityKey, Message};

/// The WebSocket subprotocol of toolwire/1.
pub const SUBPROTOCOL: &str = "toolwire.v1";
/// Record header length.
pub const HEADER_LEN: usize = 16;
/// Record type of a sealed record.
pub const SEALED: u8 = 0x10;
/// Noise protocol name of toolwire/1 (HS-001).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// The raw WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// PASETO's Pre-Authentication Encoding (spec section 1).
pub fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pieces.len() as u64).to_le_bytes());
    for piece in pieces {
        out.extend_from_slice(&(piece.len() as u64).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// The Noise prologue for `endpoint` (HS-003).
pub fn prologue(endpoint: &str) -> Vec<u8> {
    pae(&[b"toolwire/1", endpoint.as_bytes(), SUBPROTOCOL.as_bytes()])
}

/// REKEY(k) of KS-003.
pub fn rekey(key: &[u8; 32]) -> [u8; 32] {
    let cipher = ChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&[0xff; 8]);
    let out = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &[0u8; 32],
                aad: &[],
            },
        )
        .unwrap_or_default();
    let mut next = [0u8; 32];
    next.copy_from_slice(&out[..32]);
    next
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_le_bytes());
    nonce
}

/// ChaCha20-Poly1305 of a sealed record body (REC-006..REC-008).
pub fn seal_body(key: &[u8; 32], seq: u64, header: &[u8], plaintext: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            (&nonce(seq)).into(),
            Payload {
                msg: plaintext,
                aad: header,
            },
        )
        .unwrap_or_default()
}

fn open_body(key: &[u8; 32], seq: u64, header: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            (&nonce(seq)).into(),
            Payload {
                msg: body,
                aad: header,
            },
        )
        .ok()
}

/// A record header, every field settable (REC-001).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Version byte (1).
    pub version: u8,
    /// Record type.
    pub record_type: u8,
    /// Reserved field (0).
    pub reserved: u16,
    /// Epoch.
    pub epoch: u32,
    /// Sequence number.
    pub seq: u64,
}

impl Header {
    /// The header of handshake record `n`.
    pub fn handshake(n: u8) -> Self {
        Self {
            version: 1,
            record_type: n,
            reserved: 0,
            epoch: 0,
            seq: 0,
        }
    }

    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.version;
        out[1] = self.record_type;
        out[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        out[4..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Parses the first 16 bytes.
    pub fn parse(record: &[u8]) -> Option<Self> {
        let header = record.get(..HEADER_LEN)?;
        Some(Self {
            version: header[0],
            record_type: header[1],
            reserved: u16::from_le_bytes([header[2], header[3]]),
            epoch: u32::from_le_bytes(header[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(header[8..16].try_into().ok()?),
        })
    }
}

/// A record: `header ‖ body`.
pub fn record(header: Header, body: &[u8]) -> Vec<u8> {
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out
}

/// A failure of the peer itself or of the exchange it attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError(pub String);

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

fn err(message: impl Into<String>) -> PeerError {
    PeerError(message.into())
}

/// How an upgrade attempt ended.
#[derive(Debug)]
pub enum Upgrade {
    /// 101: the socket, and the subprotocol the server selected.
    Accepted {
        /// The WebSocket.
        socket: Box<Socket>,
        /// `Sec-WebSocket-Protocol` of the response.
        selected: Option<String>,
    },
    /// Refused with this HTTP status.
    Refused(u16),
    /// Anything else (connection refused, timeout, a malformed response).
    Failed(String),
}

impl Upgrade {
    /// `HTTP 101`, `HTTP 403`, or the failure.
    pub fn describe(&self) -> String {
        match self {
            Upgrade::Accepted { selected, .. } => {
                format!(
                    "HTTP 101 (subprotocol {})",
                    selected.as_deref().unwrap_or("none")
                )
            }
            Upgrade::Refused(status) => format!("HTTP {status}"),
            Upgrade::Failed(error) => format!("upgrade failed: {error}"),
        }
    }
}

/// The WebSocket limits of the peer: generous, so that the peer can send and receive
/// oversize messages on purpose.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(1 << 22))
        .max_frame_size(Some(1 << 22))
}

/// Opens a WebSocket to `url` with exactly these `Origin` and `Sec-WebSocket-Protocol`
/// headers (each omitted when `None`).
pub async fn upgrade(
    url: &str,
    origin: Option<&str>,
    subprotocol: Option<&str>,
    timeout: Duration,
) -> Upgrade {
    let mut headers = Vec::new();
    if let Some(origin) = origin {
        headers.push(("Origin", origin));
    }
    if let Some(subprotocol) = subprotocol {
        headers.push(("Sec-WebSocket-Protocol", subprotocol));
    }
    upgrade_with_headers(url, &headers, timeout).await
}

/// Opens a WebSocket to `url` adding every header line of `headers`, in order (a name
/// given twice makes two header lines).
pub async fn upgrade_with_headers(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Upgrade {
    let mut request = match url.into_client_request() {
        Ok(request) => request,
        Err(error) => return Upgrade::Failed(format!("bad URL: {error}")),
    };
    for (name, value) in headers {
        let header = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes());
        match (header, HeaderValue::from_str(value)) {
            (Ok(header), Ok(value)) => {
                request.headers_mut().append(header, value);
            }
            _ => return Upgrade::Failed(format!("bad header {name}: {value}")),
        }
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Upgrade::Failed(format!("no upgrade response within {timeout:?}")),
        Ok(Err(WsError::Http(response))) => Upgrade::Refused(response.status().as_u16()),
        Ok(Err(error)) => Upgrade::Failed(error.to_string()),
        Ok(Ok((socket, response))) => Upgrade::Accepted {
            socket: Box::new(socket),
            selected: response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
    }
}

/// A WebSocket that offered `toolwire.v1` and was accepted.
///
/// # Errors
/// When the upgrade is refused or fails.
pub async fn connect(url: &str, timeout: Duration) -> Result<Socket, PeerError> {
    match upgrade(url, None, Some(SUBPROTOCOL), timeout).await {
        Upgrade::Accepted { socket, .. } => Ok(*socket),
        other => Err(err(format!("upgrade not accepted: {}", other.describe()))),
    }
}

/// How the server ended a connection, as the peer saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    /// Messages received before the end.
    pub messages: Vec<String>,
    /// Binary messages received before the end (handshake phase: raw records).
    pub binary_messages: usize,
    /// The code and reason of an authenticated CLOSE record.
    pub record: Option<(u16, String)>,
    /// Records received after the CLOSE record.
    pub records_after_close: usize,
    /// The code and reason of the WebSocket close frame.
    pub frame: Option<(u16, String)>,
    /// The connection ended without a close frame (TCP close or error).
    pub dropped: bool,
    /// Nothing ended the connection within the wait.
    pub timed_out: bool,
}

impl Ending {
    /// The close-frame code.
    pub fn frame_code(&self) -> Option<u16> {
        self.frame.as_ref().map(|(code, _)| *code)
    }

    /// The CLOSE-record code.
    pub fn record_code(&self) -> Option<u16> {
        self.record.as_ref().map(|(code, _)| *code)
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.timed_out {
            parts.push("connection still open (no close)".to_owned());
        }
        if let Some((code, reason)) = &self.record {
            parts.push(if reason.is_empty() {
                format!("CLOSE record {code}")
            } else {
                format!("CLOSE record {code} {reason:?}")
            });
        }
        match &self.frame {
            Some((code, reason)) if reason.is_empty() => parts.push(format!("close frame {code}")),
            Some((code, reason)) => parts.push(format!("close frame {code} {reason:?}")),
            None if self.dropped => parts.push("dropped without close frame".to_owned()),
            None => {}
        }
        if !self.messages.is_empty() {
            parts.push(format!("after {}", self.messages.join(", ")));
        }
        if self.binary_messages > 0 {
            parts.push(format!("after {} binary messages", self.binary_messages));
        }
        if self.records_after_close > 0 {
            parts.push(format!("{} records after CLOSE", self.records_after_close));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Reads a raw socket until the server ends the connection (or `wait` passes),
/// without decrypting anything: for the handshake phase.
pub async fn await_raw_close(socket: &mut Socket, wait: Duration) -> Ending {
    let mut ending = Ending::default();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => {
                ending.timed_out = true;
                return ending;
            }
            Ok(Some(Ok(WsMessage::Binary(_)))) => ending.binary_messages += 1,
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                ending.frame = Some(frame.map_or((1005, String::new()), |frame| {
                    (u16::from(frame.code), frame.reason.to_string())
                }));
                return ending;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => {
                ending.dropped = true;
                return ending;
            }
        }
    }
}

/// The parameters of the peer's handshake. Every field can be made wrong on purpose.
#[derive(Clone)]
pub struct HandshakeParams {
    /// The client identity.
    pub identity: Identity,
    /// The endpoint bound into the prologue (normally the URL dialled).
    pub endpoint: String,
    /// The server identity the peer pins.
    pub server_key: IdentityKey,
    /// The capability request of ClientHello.
    pub cap_request: CapRequest,
    /// `resume.lineage`, when present (any length, on purpose).
    pub lineage: Option<Vec<u8>>,
}

impl HandshakeParams {
    /// A well-formed handshake for `identity` asking for every tool.
    pub fn new(identity: Identity, endpoint: impl Into<String>, server_key: IdentityKey) -> Self {
        Self {
            identity,
            endpoint: endpoint.into(),
            server_key,
            cap_request: CapRequest {
                tools: vec!["*".to_owned()],
                grants: Vec::new(),
            },
            lineage: None,
        }
    }
}

/// The peer's side of a Noise XX handshake (the client, initiator), one record at a
/// time.
pub struct Handshake {
    state: snow::HandshakeState,
    static_public: [u8; 32],
    params: HandshakeParams,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("endpoint", &self.params.endpoint)
            .finish_non_exhaustive()
    }
}

/// What the peer derived from a completed handshake.
#[derive(Clone)]
pub struct Keys {
    /// Session id (the final handshake hash, HS-031).
    pub session_id: [u8; 32],
    /// Client→server epoch-0 key (k1).
    pub send: [u8; 32],
    /// Server→client epoch-0 key (k2).
    pub receive: [u8; 32],
}

impl Handshake {
    /// A new initiator with a fresh Noise static key.
    ///
    /// # Errors
    /// When `snow` refuses the parameters (never for toolwire/1's).
    pub fn new(params: HandshakeParams) -> Result<Self, PeerError> {
        let noise: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|e| err(format!("noise params: {e:?}")))?;
        let builder = snow::Builder::new(noise.clone());
        let keypair = builder
            .generate_keypair()
            .map_err(|e| err(format!("keypair: {e:?}")))?;
        let prologue = prologue(&params.endpoint);
        let state = snow::Builder::new(noise)
            .prologue(&prologue)
            .local_private_key(&keypair.private)
            .build_initiator()
            .map_err(|e| err(format!("initiator: {e:?}")))?;
        let static_public = keypair
            .public
            .as_slice()
            .try_into()
            .map_err(|_| err("static key length"))?;
        Ok(Self {
            state,
            static_public,
            params,
        })
    }

    /// Record 1: the fixed header and the ephemeral key (HS-006).
    ///
    /// # Errors
    /// A `snow` failure.
    pub fn record1(&mut self) -> Result<Vec<u8>, PeerError> {
        let mut buffer = vec![0u8; 256];
        let len = self
            .state
            .write_message(&[], &mut buffer)
            .map_err(|e| err(format!("message 1: {e:?}")))?;
        Ok(record(Header::handshake(1), &buffer[..len]))
    }

    /// Reads record 2 and checks the ServerHello as a client must (HS-010..HS-015).
    ///
    /// # Errors
    /// The first check that fails, named by its clause.
    pub fn read_record2(&mut self, record2: &[u8]) -> Result<ServerHello, PeerError> {
        let header = Header::parse(record2).ok_or_else(|| err("record 2 shorter than 16 bytes"))?;
        if header != Header::handshake(2) {
            return Err(err(format!("record 2 header {header:?} (REC-003)")));
        }
        let mut payload = vec![0u8; record2.len()];
        let len = self
            .state
            .read_message(&record2[HEADER_LEN..], &mut payload)
            .map_err(|e| err(format!("message 2 does not decrypt (HS-010): {e:?}")))?;
        let hello: ServerHello = rmp_serde::from_slice(&payload[..len])
            .map_err(|e| err(format!("ServerHello malformed (HS-012): {e}")))?;
        let identity = IdentityKey::from_slice(&hello.identity)
            .map_err(|e| err(format!("ServerHello.identity invalid (HS-013): {e:?}")))?;
        let remote_static: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| err("no remote static key"))?;
        identity
            .verify(
                &pae(&[b"toolwire/1 server static", &remote_static]),
                &hello.signature,
            )
            .map_err(|_| err("ServerHello.signature does not verify (HS-014)"))?;
        if identity != self.params.server_key {
            return Err(err(format!(
                "server identity {identity} is not the pinned key {} (HS-015)",
                self.params.server_key
            )));
        }
        Ok(hello)
    }

    /// The ClientHello a conforming client sends (HS-018, HS-019).
    pub fn client_hello(&self) -> ClientHello {
        let signature = self
            .params
            .identity
            .sign(&pae(&[b"toolwire/1 client static", &self.static_public]));
        ClientHello {
            identity: self.params.identity.public_key().to_bytes().to_vec().into(),
            signature: signature.to_vec().into(),
            cap_request: self.params.cap_request.clone(),
            resume: self.params.lineage.clone().map(|lineage| Resume {
                lineage: lineage.into(),
            }),
        }
    }

    /// The Noise static public key this handshake sends in message 3.
    pub fn static_public(&self) -> [u8; 32] {
        self.static_public
    }

    /// Record 3 carrying `payload` (normally the msgpack of [`client_hello`]).
    ///
    /// [`client_hello`]: Self::client_hello
    ///
    /// # Errors
    /// A `snow` failure.
    pub fn record3(&mut self, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
        let mut buffer = vec![0u8; payload.len() + 256];
        let len = self
            .state
            .write_message(payload, &mut buffer)
            .map_err(|e| err(format!("message 3: {e:?}")))?;
        Ok(record(Header::handshake(3), &buffer[..len]))
    }

    /// The session id and transport keys after record 3 (HS-031, KS-001, KS-002).
    ///
    /// # Errors
    /// When the handshake is not finished.
    pub fn finish(mut self) -> Result<Keys, PeerError> {
        if !self.state.is_handshake_finished() {
            return Err(err("handshake not finished"));
        }
        let session_id: [u8; 32] = self
            .state
            .get_handshake_hash()
            .try_into()
            .map_err(|_| err("handshake hash length"))?;
        let (send, receive) = self.state.dangerously_get_raw_split();
        Ok(Keys {
            session_id,
            send,
            receive,
        })
    }
}

/// Sends one binary message, bounded by `timeout`. `false` when the socket refused.
pub async fn send_binary(socket: &mut Socket, bytes: Vec<u8>, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(WsMessage::binary(bytes))).await,
        Ok(Ok(()))
    )
}

/// The next binary message, skipping control frames; `None` on close, error or
/// timeout.
pub async fn next_binary(socket: &mut Socket, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(WsMessage::Binary(bytes)))) => return Some(bytes.to_vec()),
            Ok(Some(Ok(WsMessage::Close(_)) | Err(_)) | None) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// One direction's record state.
#[derive(Clone)]
struct Direction {
    key: [u8; 32],
    epoch: u32,
    next_seq: u64,
}

/// An established session of the peer: a socket and both directions' state.
pub struct Session {
    socket: Socket,
    identity: Identity,
    server_key: IdentityKey,
    /// The session id.
    pub session_id: [u8; 32],
    send: Direction,
    receive: Direction,
    inbox: VecDeque<Message>,
    /// Wait bound of every read.
    pub step: Duration,
    /// What the other end sent that a conforming peer never sends (undecryptable
    /// records, bad headers, kinds its role may not send, …), in order.
    pub violations: Vec<String>,
    /// Whether the other end is the server (the peer plays the client).
    peer_is_server: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &hex::encode(self.session_id))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Runs a complete, well-formed handshake on `socket`.
    ///
    /// # Errors
    /// When a handshake step fails (the server refused record 1, record 2 fails a
    /// client check, …).
    pub async fn establish(
        mut socket: Socket,
        params: HandshakeParams,
        step: Duration,
    ) -> Result<Self, PeerError> {
        let identity = params.identity.clone();
        let server_key = params.server_key;
        let mut handshake = Handshake::new(params)?;
        let record1 = handshake.record1()?;
        if !send_binary(&mut socket, record1, step).await {
            return Err(err("could not send record 1"));
        }
        let record2 = next_binary(&mut socket, step)
            .await
            .ok_or_else(|| err("no record 2"))?;
        handshake.read_record2(&record2)?;
        let hello = rmp_serde::to_vec_named(&handshake.client_hello())
            .map_err(|e| err(format!("ClientHello: {e}")))?;
        let record3 = handshake.record3(&hello)?;
        if !send_binary(&mut socket, record3, step).await {
            return Err(err("could not send record 3"));
        }
        let keys = handshake.finish()?;
        Ok(Self::from_keys(socket, identity, server_key, &keys, step))
    }

    /// A session over `socket` with `keys` (after a handshake driven by hand).
    pub fn from_keys(
        socket: Socket,
        identity: Identity,
        server_key: IdentityKey,
        keys: &Keys,
        step: Duration,
    ) -> Self {
        Self {
            socket,
            identity,
            server_key,
            session_id: keys.session_id,
            send: Direction {
                key: keys.send,
                epoch: 0,
                next_seq: 0,
            },
            receive: Direction {
                key: keys.receive,
                epoch: 0,
                next_seq: 0,
            },
            inbox: VecDeque::new(),
            step,
            violations: Vec::new(),
            peer_is_server: true,
        }
    }

    /// A session of the peer playing the **server**, after a handshake run by a
    /// [`Responder`]: `identity` is the server identity (it signs RESPONSEs),
    /// `client_key` the client identity the handshake authenticated.
    pub fn from_server_keys(
        socket: Socket,
        identity: Identity,
        client_key: IdentityKey,
        keys: &Keys,
        step: Duration,
    ) -> Self {
        let mut session = Self::from_keys(socket, identity, client_key, keys, step);
        session.peer_is_server = false;
        session
    }

    /// A RESPONSE to `request` with `result`, signed by this peer's identity as a
    /// conforming server signs it (ENV-002, ENV-004).
    pub fn response(&self, request: &Request, result: &[u8]) -> Response {
        let bytes = response_signing_bytes(&self.session_id, request, result);
        Response {
            id: request.id,
            result: result.to_vec().into(),
            signature: Some(self.identity.sign(&bytes).to_vec().into()),
        }
    }

    /// Verifies a REQUEST signature under the client identity (peer playing the
    /// server; ENV-001, ENV-003).
    pub fn verify_request(&self, request: &Request) -> bool {
        let bytes = request_signing_bytes(
            &self.session_id,
            request.id,
            &request.tool,
            &request.args,
            request.grant_id.as_deref().unwrap_or(""),
        );
        request
            .signature
            .as_ref()
            .is_some_and(|s| self.server_key.verify(&bytes, s).is_ok())
    }

    /// The header of the next well-formed sealed record.
    pub fn next_header(&self) -> Header {
        Header {
            version: 1,
            record_type: SEALED,
            reserved: 0,
            epoch: self.send.epoch,
            seq: self.send.next_seq,
        }
    }

    /// Seals `plaintext` under the current send key with `header` exactly as given
    /// (the nonce is the header's seq); consumes the next sequence number.
    pub fn seal_with(&mut self, header: Header, plaintext: &[u8]) -> Vec<u8> {
        let encoded = header.encode();
        let body = seal_body(&self.send.key, header.seq, &encoded, plaintext);
        self.send.next_seq += 1;
        record(header, &body)
    }

    /// Seals `plaintext` as the next well-formed record.
    pub fn seal_bytes(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(self.next_header(), plaintext)
    }

    /// Seals `message` as the next well-formed record. A KEY_UPDATE moves the send
    /// direction to the next epoch afterwards (KEY-003).
    pub fn seal(&mut self, message: &Message) -> Vec<u8> {
        let record = self.seal_bytes(&message.encode());
        if let Message::KeyUpdate(update) = message {
            self.send.epoch = update.epoch;
            self.send.key = rekey(&self.send.key);
        }
        record
    }

    /// Expects the other end's next record at sequence number `seq` in epoch
    /// `epoch` (instead of 0 and 0), under the same key: for a server with the
    /// conformance-testing start of its sending direction (spec LIM-018). Call it
    /// before reading the first record of the session.
    pub fn expect_receive_from(&mut self, seq: u64, epoch: u32) {
        self.receive.next_seq = seq;
        self.receive.epoch = epoch;
    }

    /// The sequence number the next record from the other end must carry: one more
    /// than the last record opened.
    pub fn receive_next_seq(&self) -> u64 {
        self.receive.next_seq
    }

    /// The epoch of the other end's direction (moved by each KEY_UPDATE opened).
    pub fn receive_epoch(&self) -> u32 {
        self.receive.epoch
    }

    /// Sends raw bytes as one binary message. `false` if the socket refused.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> bool {
        send_binary(&mut self.socket, bytes, self.step).await
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: String) -> bool {
        matches!(
            tokio::time::timeout(self.step, self.socket.send(WsMessage::text(text))).await,
            Ok(Ok(()))
        )
    }

    /// Sends a WebSocket close frame with `code` and an empty reason.
    pub async fn send_close_frame(&mut self, code: u16) -> bool {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        matches!(
            tokio::time::timeout(self.step, self.socket.send(WsMessage::Close(Some(frame)))).await,
            Ok(Ok(()))
        )
    }

    /// Sends a WebSocket ping frame (not a toolwire PING).
    pub async fn send_ws_ping(&mut self, payload: Vec<u8>) -> bool {
        matches!(
            tokio::time::timeout(self.step, self.socket.send(WsMessage::Ping(payload.into())))
                .await,
            Ok(Ok(()))
        )
    }

    /// Seals and sends `message`.
    pub async fn send(&mut self, message: &Message) -> bool {
        let record = self.seal(message);
        self.send_raw(record).await
    }

    /// A REQUEST signed as a conforming client signs it (ENV-001, ENV-003).
    pub fn request(&self, id: u64, tool: &str, args: &[u8]) -> Request {
        let signature =
            self.identity
                .sign(&request_signing_bytes(&self.session_id, id, tool, args, ""));
        Request {
            id,
            tool: tool.to_owned(),
            args: args.to_vec().into(),
            grant_id: None,
            deadline_ms: None,
            signature: Some(signature.to_vec().into()),
            retry: false,
        }
    }

    /// Verifies a RESPONSE signature under the server key (ENV-002, ENV-004).
    pub fn verify_response(&self, request: &Request, result: &[u8], signature: &[u8]) -> bool {
        let bytes = response_signing_bytes(&self.session_id, request, result);
        self.server_key.verify(&bytes, signature).is_ok()
    }

    /// Opens one received record, tracking the receive direction (a KEY_UPDATE
    /// moves it to the next epoch). `None` (and a recorded violation) when the
    /// server's record is not what a conforming server sends.
    fn open(&mut self, bytes: &[u8]) -> Option<Message> {
        let Some(header) = Header::parse(bytes) else {
            self.violations
                .push("record shorter than 16 bytes".to_owned());
            return None;
        };
        let expected = Header {
            version: 1,
            record_type: SEALED,
            reserved: 0,
            epoch: self.receive.epoch,
            seq: self.receive.next_seq,
        };
        if header != expected {
            self.violations
                .push(format!("record header {header:?}, expected {expected:?}"));
            return None;
        }
        let Some(plaintext) = open_body(
            &self.receive.key,
            header.seq,
            &bytes[..HEADER_LEN],
            &bytes[HEADER_LEN..],
        ) else {
            self.violations
                .push(format!("record seq {} does not decrypt", header.seq));
            return None;
        };
        self.receive.next_seq += 1;
        match Message::decode(&plaintext) {
            Ok(message) => {
                if !may_send(self.peer_is_server, &message) {
                    self.violations.push(format!(
                        "the {} sent {}, a kind its role may not send (MSG-005)",
                        if self.peer_is_server {
                            "server"
                        } else {
                            "client"
                        },
                        message.kind()
                    ));
                }
                if let Message::KeyUpdate(update) = &message {
                    self.receive.epoch = update.epoch;
                    self.receive.key = rekey(&self.receive.key);
                }
                Some(message)
            }
            Err(error) => {
                self.violations.push(format!(
                    "record seq {} is not a message: {error}",
                    header.seq
                ));
                None
            }
        }
    }

    /// The next message from the server within `wait`: `Err` with how the
    /// connection ended (or timed out). PINGs are answered with PONGs (LIFE-008) and
    /// not returned.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Message, Ending> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(message) = self.inbox.pop_front() {
                return Ok(message);
            }
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => {
                    return Err(Ending {
                        timed_out: true,
                        ..Ending::default()
                    })
                }
                Ok(Some(Ok(WsMessage::Binary(bytes)))) => match self.open(&bytes) {
                    Some(Message::Close(close)) => {
                        return Err(self.after_close(close, deadline).await);
                    }
                    Some(Message::Ping(ping)) => {
                        let pong = self.seal(&Message::Pong(ping));
                        let _ = self.send_raw(pong).await;
                    }
                    Some(message) => self.inbox.push_back(message),
                    None => {}
                },
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    return Err(Ending {
                        frame: Some(frame.map_or((1005, String::new()), |frame| {
                            (u16::from(frame.code), frame.reason.to_string())
                        })),
                        ..Ending::default()
                    })
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => {
                    return Err(Ending {
                        dropped: true,
                        ..Ending::default()
                    })
                }
            }
        }
    }

    /// After a CLOSE record: reads until the close frame.
    async fn after_close(&mut self, close: Close, deadline: tokio::time::Instant) -> Ending {
        let mut ending = Ending {
            record: Some((close.code, close.reason)),
            ..Ending::default()
        };
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => {
                    ending.timed_out = true;
                    return ending;
                }
                Ok(Some(Ok(WsMessage::Binary(_)))) => ending.records_after_close += 1,
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    ending.frame = Some(frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.to_string())
                    }));
                    return ending;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => {
                    ending.dropped = true;
                    return ending;
                }
            }
        }
    }

    /// The next message within [`step`](Self::step).
    ///
    /// # Errors
    /// How the connection ended.
    pub async fn next(&mut self) -> Result<Message, Ending> {
        self.next_within(self.step).await
    }

    /// Reads until the connection ends (or `wait` passes), collecting the kinds of
    /// the messages before the end.
    pub async fn await_close(&mut self, wait: Duration) -> Ending {
        let deadline = tokio::time::Instant::now() + wait;
        let mut kinds = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(message) => kinds.push(message.kind().to_owned()),
                Err(mut ending) => {
                    ending.messages = kinds;
                    return ending;
                }
            }
        }
    }

    /// Messages that arrive within `quiet`, or how the connection ended.
    pub async fn collect_for(&mut self, quiet: Duration) -> Result<Vec<Message>, Ending> {
        let deadline = tokio::time::Instant::now() + quiet;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(message) => messages.push(message),
                Err(ending) if ending.timed_out => return Ok(messages),
                Err(mut ending) => {
                    ending.messages = messages.iter().map(|m| m.kind().to_owned()).collect();
                    return Err(ending);
                }
            }
        }
    }

    /// Sends a PING and waits for its PONG: proves the connection is alive.
    ///
    /// # Errors
    /// What arrived instead, or how the connection ended.
    pub async fn ping(&mut self, nonce: u64) -> Result<(), String> {
        if !self
            .send(&Message::Ping(toolwire_protocol::message::Ping { nonce }))
            .await
        {
            return Err("could not send PING".to_owned());
        }
        loop {
            match self.next().await {
                Ok(Message::Pong(pong)) if pong.nonce == nonce => return Ok(()),
                Ok(Message::Pong(pong)) => {
                    return Err(format!("PONG with nonce {} instead of {nonce}", pong.nonce))
                }
                Ok(Message::CapUpdate(_) | Message::KeyUpdate(_)) => {}
                Ok(other) => return Err(format!("{} instead of PONG", other.kind())),
                Err(ending) => return Err(ending.to_string()),
            }
        }
    }
}

// =====================================================================================
// Server role: the peer plays the server against a client under test.
// =====================================================================================

/// What the client's upgrade request carried, as the peer (server role) saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeSeen {
    /// Every `Sec-WebSocket-Protocol` value offered, split at commas and trimmed.
    pub offered: Vec<String>,
    /// The `Origin` header, when present.
    pub origin: Option<String>,
    /// The request path.
    pub path: String,
}

/// Accepts one WebSocket on `listener`, answering the upgrade with
/// `Sec-WebSocket-Protocol: select` (no header when `None`).
///
/// # Errors
/// When no client connects within `timeout` or the upgrade fails.
// The callback's error type (an HTTP response) is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
pub async fn accept(
    listener: &tokio::net::TcpListener,
    select: Option<&str>,
    timeout: Duration,
) -> Result<(Socket, UpgradeSeen), PeerError> {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as HttpRequest, Response};
    let (stream, _) = tokio::time::timeout(timeout, listener.accept())
        .await
        .map_err(|_| err(format!("no connection within {timeout:?}")))?
        .map_err(|e| err(format!("accept: {e}")))?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(UpgradeSeen::default()));
    let select = select.map(str::to_owned);
    let record = seen.clone();
    let callback = move |request: &HttpRequest, mut response: Response| {
        let mut upgrade = UpgradeSeen {
            path: request.uri().path().to_owned(),
            ..UpgradeSeen::default()
        };
        for value in request.headers().get_all("Sec-WebSocket-Protocol") {
            if let Ok(value) = value.to_str() {
                upgrade
                    .offered
                    .extend(value.split(',').map(|v| v.trim().to_owned()));
            }
        }
        upgrade.origin = request
            .headers()
            .get("Origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Ok(mut slot) = record.lock() {
            *slot = upgrade;
        }
        if let Some(select) = &select {
            if let Ok(value) = HeaderValue::from_str(select) {
                response
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", value);
            }
        }
        Ok(response)
    };
    let accepting = tokio_tungstenite::accept_hdr_async_with_config(
        MaybeTlsStream::Plain(stream),
        callback,
        Some(ws_config()),
    );
    let socket = tokio::time::timeout(timeout, accepting)
        .await
        .map_err(|_| err(format!("no upgrade request within {timeout:?}")))?
        .map_err(|e| err(format!("upgrade: {e}")))?;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((socket, seen))
}

/// The ServerHello the peer sends: its own structure, so that a case can send any
/// field wrong (HS-008, HS-009).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerHelloOut {
    /// The server identity key (normally 32 bytes).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// The static-key signature (normally 64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The session parameters.
    pub params: toolwire_protocol::handshake::SessionParams,
    /// An operator's certificate for `identity` (ID-010); omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// The default session parameters of section 4.4.
pub fn default_params() -> toolwire_protocol::handshake::SessionParams {
    toolwire_protocol::handshake::SessionParams {
        max_record_body: 65536,
        session_lifetime_ms: 3_720_000,
        idle_timeout_ms: 90_000,
    }
}

/// The peer's side of a Noise XX handshake as the server (responder).
pub struct Responder {
    state: snow::HandshakeState,
    static_public: [u8; 32],
    identity: Identity,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for `endpoint` with a fresh Noise static key, proving `identity`.
    ///
    /// # Errors
    /// When `snow` refuses the parameters.
    pub fn new(identity: Identity, endpoint: &str) -> Result<Self, PeerError> {
        let noise: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|e| err(format!("noise params: {e:?}")))?;
        let keypair = snow::Builder::new(noise.clone())
            .generate_keypair()
            .map_err(|e| err(format!("keypair: {e:?}")))?;
        let prologue = prologue(endpoint);
        let state = snow::Builder::new(noise)
            .prologue(&prologue)
            .local_private_key(&keypair.private)
            .build_responder()
            .map_err(|e| err(format!("responder: {e:?}")))?;
        let static_public = keypair
            .public
            .as_slice()
            .try_into()
            .map_err(|_| err("static key length"))?;
        Ok(Self {
            state,
            static_public,
            identity,
        })
    }

    /// Reads record 1 as a conforming client sends it (REC-003, HS-006).
    ///
    /// # Errors
    /// The first deviation.
    pub fn read_record1(&mut self, record1: &[u8]) -> Result<(), PeerError> {
        let header = Header::parse(record1).ok_or_else(|| err("record 1 shorter than 16 bytes"))?;
        if header != Header::handshake(1) {
            return Err(err(format!("record 1 header {header:?} (REC-003)")));
        }
        if record1.len() != HEADER_LEN + 32 {
            return Err(err(format!(
                "record 1 body of {} bytes, not 32 (HS-006)",
                record1.len() - HEADER_LEN
            )));
        }
        let mut payload = vec![0u8; 64];
        self.state
            .read_message(&record1[HEADER_LEN..], &mut payload)
            .map_err(|e| err(format!("message 1: {e:?}")))?;
        Ok(())
    }

    /// The ServerHello a conforming server sends (HS-008, HS-009), default parameters.
    pub fn server_hello(&self) -> ServerHelloOut {
        ServerHelloOut {
            identity: self.identity.public_key().to_bytes().to_vec(),
            signature: self
                .identity
                .sign(&pae(&[b"toolwire/1 server static", &self.static_public]))
                .to_vec(),
            params: default_params(),
            certificate: None,
        }
    }

    /// The Noise static public key this handshake sends in message 2.
    pub fn static_public(&self) -> [u8; 32] {
        self.static_public
    }

    /// Record 2 carrying `payload` (normally the msgpack of a ServerHello).
    ///
    /// # Errors
    /// A `snow` failure.
    pub fn record2(&mut self, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
        let mut buffer = vec![0u8; payload.len() + 256];
        let len = self
            .state
            .write_message(payload, &mut buffer)
            .map_err(|e| err(format!("message 2: {e:?}")))?;
        Ok(record(Header::handshake(2), &buffer[..len]))
    }

    /// Reads record 3 and checks the ClientHello as a server must (HS-018, HS-019,
    /// HS-025): the client's identity key.
    ///
    /// # Errors
    /// The first check that fails, named by its clause.
    pub fn read_record3(&mut self, record3: &[u8]) -> Result<ClientHello, PeerError> {
        let header = Header::parse(record3).ok_or_else(|| err("record 3 shorter than 16 bytes"))?;
        if header != Header::handshake(3) {
            return Err(err(format!("record 3 header {header:?} (REC-003)")));
        }
        let mut payload = vec![0u8; record3.len()];
        let len = self
            .state
            .read_message(&record3[HEADER_LEN..], &mut payload)
            .map_err(|e| err(format!("message 3 does not decrypt (HS-020): {e:?}")))?;
        let hello: ClientHello = rmp_serde::from_slice(&payload[..len])
            .map_err(|e| err(format!("ClientHello malformed (HS-021): {e}")))?;
        let identity = IdentityKey::from_slice(&hello.identity)
            .map_err(|e| err(format!("ClientHello.identity invalid (HS-024): {e:?}")))?;
        let remote_static: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| err("no remote static key"))?;
        identity
            .verify(
                &pae(&[b"toolwire/1 client static", &remote_static]),
                &hello.signature,
            )
            .map_err(|_| err("ClientHello.signature does not verify (HS-019)"))?;
        Ok(hello)
    }

    /// The session id and transport keys after record 3, from the server's side:
    /// `send` is k2, `receive` is k1 (KS-002).
    ///
    /// # Errors
    /// When the handshake is not finished.
    pub fn finish(mut self) -> Result<Keys, PeerError> {
        if !self.state.is_handshake_finished() {
            return Err(err("handshake not finished"));
        }
        let session_id: [u8; 32] = self
            .state
            .get_handshake_hash()
            .try_into()
            .map_err(|_| err("handshake hash length"))?;
        let (k1, k2) = self.state.dangerously_get_raw_split();
        Ok(Keys {
            session_id,
            send: k2,
            receive: k1,
        })
    }
}

/// Whether the server (`server` true) or the client may send `message` (the "sent
/// by" column of section 9.1).
pub fn may_send(server: bool, message: &Message) -> bool {
    match message {
        Message::CapGrant(_)
        | Message::CapUpdate(_)
        | Message::Response(_)
        | Message::StreamItem(_) => server,
        Message::CapRequest(_) | Message::Request(_) | Message::Cancel(_) => !server,
        _ => true,
    }
}

/// The response signing bytes of ENV-002.
pub fn response_signing_bytes(session_id: &[u8; 32], request: &Request, result: &[u8]) -> Vec<u8> {
    let request_bytes = request_signing_bytes(
        session_id,
        request.id,
        &request.tool,
        &request.args,
        request.grant_id.as_deref().unwrap_or(""),
    );
    let request_hash = sha256(&request_bytes);
    pae(&[
        b"toolwire/1 response",
        session_id,
        &request.id.to_le_bytes(),
        &request_hash,
        result,
    ])
}

/// The request signing bytes of ENV-001.
pub fn request_signing_bytes(
    session_id: &[u8; 32],
    id: u64,
    tool: &str,
    args: &[u8],
    grant_id: &str,
) -> Vec<u8> {
    pae(&[
        b"toolwire/1 request",
        session_id,
        &id.to_le_bytes(),
        tool.as_bytes(),
        args,
        grant_id.as_bytes(),
    ])
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

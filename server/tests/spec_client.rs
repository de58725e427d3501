//! The real client against a scripted server (spec sections 10, 11, 12.5 and 15):
//! a hand-driven server built from the protocol crate sends the client manifests,
//! capability updates, responses and errors a correct server would not, and the
//! tests check what the client does with them.

use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use toolwire_client::{CallError, Client, ConnectError, Session};
use toolwire_server::protocol::envelope::{RequestFields, ResponseFields};
use toolwire_server::protocol::manifest::{Manifest, ToolDescriptor, MANIFEST_DOMAIN};
use toolwire_server::protocol::message::{
    CallLimits, CapGrant, CapUpdate, ErrorMessage, GrantedTool, Request as RpcRequest,
    Response as RpcResponse, SignedManifest,
};
use toolwire_server::protocol::paseto::pae;
use toolwire_server::protocol::{
    CloseCode, Connection, ErrorCode, Event, Identity, Message, ServerConfig, SUBPROTOCOL,
};

const STEP: Duration = Duration::from_secs(5);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn tool(name: &str, description: &str) -> ToolDescriptor {
    ToolDescriptor {
        name: name.into(),
        description: description.into(),
        input_schema: r#"{"type":"object"}"#.into(),
        output_schema: String::new(),
    }
}

/// A scripted server on loopback that accepts one agent.
struct Scripted {
    identity: Identity,
    agent: Identity,
    url: String,
    listener: TcpListener,
}

/// One accepted, established connection of the scripted server.
struct Link {
    socket: WebSocketStream<TcpStream>,
    conn: Connection,
    messages: VecDeque<Message>,
    closed: Option<CloseCode>,
}

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
        Self {
            identity: Identity::generate(&mut rand_core::OsRng),
            agent: Identity::generate(&mut rand_core::OsRng),
            url,
            listener,
        }
    }

    /// The real client's connect, running until the scripted server sends CAP_GRANT.
    fn connect(&self) -> tokio::task::JoinHandle<Result<Session, ConnectError>> {
        let builder = Client::builder()
            .identity(self.agent.clone())
            .pin_server(self.identity.public_key());
        let url = self.url.clone();
        tokio::spawn(async move { builder.connect(&url).await })
    }

    /// Accepts the client's socket and completes the handshake.
    async fn accept(&self) -> Link {
        let (stream, _) = within("accept", self.listener.accept())
            .await
            .expect("accepts");
        // The callback's error type is tungstenite's, fixed by its `Callback` trait.
        #[allow(clippy::result_large_err)]
        let callback = |_: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
            Ok(response)
        };
        let socket = within(
            "upgrade",
            tokio_tungstenite::accept_hdr_async(stream, callback),
        )
        .await
        .expect("upgrades");
        let config = ServerConfig::new(
            self.identity.clone(),
            self.url.clone(),
            &mut rand_core::OsRng,
        )
        .allow_clients([self.agent.public_key()]);
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        let conn = Connection::server(
            Arc::new(config),
            Instant::now(),
            unix_now,
            &mut rand_core::OsRng,
        );
        let mut link = Link {
            socket,
            conn,
            messages: VecDeque::new(),
            closed: None,
        };
        within("handshake", async {
            while !link.conn.is_established() {
                link.receive_one().await;
            }
        })
        .await;
        link
    }

    /// A manifest of `tools`, signed by this server over its bytes.
    fn manifest(&self, tools: Vec<ToolDescriptor>) -> SignedManifest {
        Manifest {
            server: self.identity.public_key().to_bytes().to_vec().into(),
            tools,
        }
        .sign(&self.identity)
    }

    fn cap_grant(&self, tools: Vec<ToolDescriptor>) -> CapGrant {
        CapGrant {
            granted: tools
                .iter()
                .map(|tool| GrantedTool {
                    name: tool.name.clone(),
                    digest: tool.digest().to_vec().into(),
                })
                .collect(),
            limits: CallLimits {
                rate_per_sec: 100,
                burst: 200,
                max_in_flight: 64,
            },
            expires_at_ms: None,
            policy_version: 1,
            manifest: self.manifest(tools),
        }
    }

    /// An established session of the real client, granted `echo` and `search`.
    async fn session(&self) -> (Session, Link) {
        let connecting = self.connect();
        let mut link = self.accept().await;
        link.send(Message::CapGrant(self.cap_grant(vec![
            tool("echo", "Echoes."),
            tool("search", "Searches."),
        ])))
        .await;
        let session = within("connect", connecting)
            .await
            .expect("task")
            .expect("the client connects");
        (session, link)
    }
}

impl Link {
    async fn flush(&mut self) {
        while let Some(record) = self.conn.poll_transmit() {
            let _ = self.socket.send(WsMessage::binary(record)).await;
        }
    }

    /// Reads one WebSocket message and feeds it to the connection.
    async fn receive_one(&mut self) {
        match self.socket.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => {
                let _ = self.conn.handle_record(Instant::now(), &bytes);
                while let Some(event) = self.conn.poll_event() {
                    match event {
                        Event::Message(message) => self.messages.push_back(message),
                        Event::Closed { code, .. } => self.closed = Some(code),
                        _ => {}
                    }
                }
                self.flush().await;
            }
            Some(Ok(WsMessage::Close(frame))) => {
                self.closed = self
                    .closed
                    .or(frame.map(|frame| CloseCode(u16::from(frame.code))));
                if self.closed.is_none() {
                    self.closed = Some(CloseCode::GOING_AWAY);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                self.closed.get_or_insert(CloseCode::GOING_AWAY);
            }
        }
    }

    async fn send(&mut self, message: Message) {
        self.conn
            .send(Instant::now(), message)
            .expect("the scripted server's message seals");
        self.flush().await;
    }

    /// The next REQUEST from the client.
    async fn request(&mut self) -> RpcRequest {
        within("REQUEST", async {
            loop {
                match self.messages.pop_front() {
                    Some(Message::Request(request)) => return request,
                    Some(_) => {}
                    None => {
                        assert!(self.closed.is_none(), "closed: {:?}", self.closed);
                        self.receive_one().await;
                    }
                }
            }
        })
        .await
    }

    /// The code the client closed the connection with.
    async fn close_code(&mut self) -> CloseCode {
        within("close", async {
            loop {
                if let Some(code) = self.closed {
                    return code;
                }
                self.receive_one().await;
            }
        })
        .await
    }

    /// A RESPONSE to `request` with `result`, signed by `identity` over `session_id`.
    fn response(
        identity: &Identity,
        session_id: &[u8; 32],
        request: &RpcRequest,
        result: &[u8],
    ) -> RpcResponse {
        let request_hash = RequestFields {
            session_id,
            request_id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: request.grant_id.as_deref().unwrap_or(""),
        }
        .hash();
        let signature = ResponseFields {
            session_id,
            request_id: request.id,
            request_hash: &request_hash,
            result,
        }
        .sign(identity);
        RpcResponse {
            id: request.id,
            result: result.to_vec().into(),
            signature: Some(signature.to_vec().into()),
        }
    }

    fn session_id(&self) -> [u8; 32] {
        self.conn.session().expect("established").session_id
    }
}

/// Clauses: MAN-004, MAN-005, MAN-006 — the client refuses the CAP_GRANT manifest
/// when its signature is not the authenticated server's over the bytes as received,
/// when it names another server, or when the signed bytes do not decode: the connect
/// fails and the client closes with PROTOCOL_VIOLATION (4010).
#[tokio::test]
async fn a_bad_manifest_in_cap_grant_closes_with_protocol_violation() {
    let scripted = Scripted::start().await;
    let impostor = Identity::generate(&mut rand_core::OsRng);
    let tools = vec![tool("echo", "Echoes.")];
    let by_impostor = Manifest {
        server: scripted.identity.public_key().to_bytes().to_vec().into(),
        tools: tools.clone(),
    }
    .sign(&impostor);
    let mut altered = scripted.manifest(tools.clone());
    let last = altered.manifest.len() - 1;
    altered.manifest[last] ^= 0x01;
    let naming_impostor = Manifest {
        server: impostor.public_key().to_bytes().to_vec().into(),
        tools: tools.clone(),
    }
    .sign(&scripted.identity);
    let garbage = b"\xc1 not a manifest".to_vec();
    let undecodable = SignedManifest {
        signature: scripted
            .identity
            .sign(&pae(&[MANIFEST_DOMAIN, &garbage]))
            .to_vec()
            .into(),
        manifest: garbage.into(),
    };
    for (what, manifest) in [
        ("signed by another key", by_impostor),
        ("altered after signing", altered),
        ("naming another server", naming_impostor),
        ("undecodable", undecodable),
    ] {
        let connecting = scripted.connect();
        let mut link = scripted.accept().await;
        let mut grant = scripted.cap_grant(tools.clone());
        grant.manifest = manifest;
        link.send(Message::CapGrant(grant)).await;
        let outcome = within("connect", connecting).await.expect("task");
        assert!(
            matches!(outcome, Err(ConnectError::BadManifest)),
            "{what}: {outcome:?}"
        );
        assert_eq!(
            link.close_code().await,
            CloseCode::PROTOCOL_VIOLATION,
            "{what}"
        );
    }
}

/// Clauses: MAN-006, MAN-004 — a CAP_UPDATE whose manifest does not verify closes
/// the session with PROTOCOL_VIOLATION.
#[tokio::test]
async fn a_bad_manifest_in_cap_update_closes_with_protocol_violation() {
    let scripted = Scripted::start().await;
    let (session, mut link) = scripted.session().await;
    let impostor = Identity::generate(&mut rand_core::OsRng);
    let forged = Manifest {
        server: scripted.identity.public_key().to_bytes().to_vec().into(),
        tools: vec![tool("echo", "Echoes, now for someone else.")],
    }
    .sign(&impostor);
    link.send(Message::CapUpdate(CapUpdate {
        granted: Vec::new(),
        revoked: Vec::new(),
        policy_version: 2,
        manifest: Some(forged),
    }))
    .await;
    assert_eq!(link.close_code().await, CloseCode::PROTOCOL_VIOLATION);
    within("session closes", async {
        while session.close_code().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(session.close_code(), Some(CloseCode::PROTOCOL_VIOLATION));
}

/// Clauses: GRT-041, MAN-011, MAN-010 — a CAP_UPDATE replaces the client's granted
/// set with its list; a pinned tool missing from the update's manifest is refused
/// locally with MANIFEST_CHANGED (no REQUEST is sent), while a tool whose pinned
/// definition is unchanged is still called.
#[tokio::test]
async fn cap_update_replaces_the_granted_set_and_missing_tools_are_refused() {
    let scripted = Scripted::start().await;
    let (session, mut link) = scripted.session().await;
    assert_eq!(session.granted_tools(), ["echo", "search"]);
    let search = tool("search", "Searches.");
    link.send(Message::CapUpdate(CapUpdate {
        granted: vec![GrantedTool {
            name: "search".into(),
            digest: search.digest().to_vec().into(),
        }],
        revoked: vec!["echo".into()],
        policy_version: 2,
        manifest: Some(scripted.manifest(vec![search])),
    }))
    .await;
    within("update applied", async {
        while session.granted_tools() != ["search"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let outcome = within("call", session.call("echo", &serde_json::json!({}))).await;
    assert_eq!(
        outcome,
        Err(CallError::ManifestChanged {
            tool: "echo".into()
        })
    );
    // The next REQUEST the server sees is the call to search, not the refused one.
    let call = tokio::spawn({
        let session = Arc::new(session);
        async move { session.call("search", &serde_json::json!({"q": 1})).await }
    });
    let request = link.request().await;
    assert_eq!(request.tool, "search");
    let session_id = link.session_id();
    let result = rmp_serde::to_vec(&serde_json::json!(["hit"])).expect("msgpack");
    link.send(Message::Response(Link::response(
        &scripted.identity,
        &session_id,
        &request,
        &result,
    )))
    .await;
    let outcome = within("call", call).await.expect("task");
    assert_eq!(outcome, Ok(serde_json::json!(["hit"])));
}

/// Builds a RESPONSE from (server, impostor, session id, request, result).
type Forge = fn(&Identity, &Identity, &[u8; 32], &RpcRequest, &[u8]) -> RpcResponse;

/// Clauses: ENV-007 — the client verifies every RESPONSE under the authenticated
/// server identity, over the signing bytes of the REQUEST it sent, and fails the
/// call when the signature is absent, by another key, for another session, or over
/// another result; a correct signature delivers the result.
#[tokio::test]
async fn responses_must_carry_the_servers_signature_over_this_call() {
    let scripted = Scripted::start().await;
    let (session, mut link) = scripted.session().await;
    let session = Arc::new(session);
    let session_id = link.session_id();
    let result = rmp_serde::to_vec(&serde_json::json!({"ok": true})).expect("msgpack");
    let impostor = Identity::generate(&mut rand_core::OsRng);
    let cases: [(&str, Forge); 5] = [
        ("unsigned", |server, _, session_id, request, result| {
            let mut response = Link::response(server, session_id, request, result);
            response.signature = None;
            response
        }),
        (
            "signed by another key",
            |_, impostor, session_id, request, result| {
                Link::response(impostor, session_id, request, result)
            },
        ),
        (
            "signed for another session",
            |server, _, _, request, result| Link::response(server, &[0x77; 32], request, result),
        ),
        (
            "result altered",
            |server, _, session_id, request, result| {
                let mut response = Link::response(server, session_id, request, result);
                response.result = b"\xc3".to_vec().into();
                response
            },
        ),
        (
            "truncated signature",
            |server, _, session_id, request, result| {
                let mut response = Link::response(server, session_id, request, result);
                if let Some(signature) = response.signature.as_mut() {
                    signature.truncate(63);
                }
                response
            },
        ),
    ];
    for (what, forge) in cases {
        let call = tokio::spawn({
            let session = session.clone();
            async move { session.call("echo", &serde_json::json!({})).await }
        });
        let request = link.request().await;
        let response = forge(
            &scripted.identity,
            &impostor,
            &session_id,
            &request,
            &result,
        );
        link.send(Message::Response(response)).await;
        let outcome = within("call", call).await.expect("task");
        assert_eq!(outcome, Err(CallError::BadResponseSignature), "{what}");
    }
    let call = tokio::spawn({
        let session = session.clone();
        async move { session.call("echo", &serde_json::json!({})).await }
    });
    let request = link.request().await;
    link.send(Message::Response(Link::response(
        &scripted.identity,
        &session_id,
        &request,
        &result,
    )))
    .await;
    let outcome = within("call", call).await.expect("task");
    assert_eq!(outcome, Ok(serde_json::json!({"ok": true})));
}

/// Clauses: ERR-002 — an ERROR with a code the client does not know is delivered to
/// the caller with its numeric value, is not retryable, and leaves the session open.
#[tokio::test]
async fn unknown_error_codes_reach_the_caller_unchanged() {
    let scripted = Scripted::start().await;
    let (session, mut link) = scripted.session().await;
    let session = Arc::new(session);
    for code in [6u32, 4242] {
        let call = tokio::spawn({
            let session = session.clone();
            async move { session.call("echo", &serde_json::json!({})).await }
        });
        let request = link.request().await;
        link.send(Message::Error(ErrorMessage {
            id: Some(request.id),
            code,
            message: "from a later version".into(),
            retry_after_ms: None,
        }))
        .await;
        let outcome = within("call", call).await.expect("task");
        let Err(error) = outcome else {
            panic!("expected an error, got {outcome:?}");
        };
        assert_eq!(error.code(), Some(ErrorCode(code)));
        assert!(!ErrorCode(code).is_retryable());
        assert!(
            matches!(error, CallError::Rpc { ref message, .. } if message == "from a later version")
        );
    }
    assert_eq!(session.close_code(), None);
}

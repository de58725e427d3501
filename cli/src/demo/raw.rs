//! A hand-driven agent for the attacks the real client would never make: it moves
//! records between a WebSocket and the sans-IO [`Connection`] itself (exactly as
//! `protocol/examples/in_memory_call.rs` moves them between two connections), so it
//! can hold a sealed record back, flip a bit in it, or send it twice.

use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_protocol::envelope::RequestFields;
use toolwire_protocol::message::{CapRequest, Request};
use toolwire_protocol::{
    ClientConfig, CloseCode, Connection, Event, Identity, IdentityKey, Message, SUBPROTOCOL,
};

/// A WebSocket to a tool server, upgraded with the toolwire subprotocol.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the raw agent waits for any one frame.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a WebSocket to `url`, offering `toolwire.v1` and sending `origin` as the
/// `Origin` header if given (what a browser does).
///
/// # Errors
/// tungstenite's error; an HTTP refusal is `WsError::Http` with the response.
pub(crate) async fn upgrade(url: &str, origin: Option<&str>) -> Result<Socket, WsError> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(origin) = origin {
        let value =
            HeaderValue::from_str(origin).map_err(|error| WsError::HttpFormat(error.into()))?;
        request.headers_mut().insert("Origin", value);
    }
    let (socket, _response) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Reads frames until the server closes; returns the code of its close frame. Sealed
/// records on the way (the server's authenticated CLOSE) are handed to `connection`.
/// `None` when the socket ends without a close frame or nothing arrives within
/// `patience`.
pub(crate) async fn close_code(
    socket: &mut Socket,
    mut connection: Option<&mut Connection>,
    patience: Duration,
) -> Option<CloseCode> {
    loop {
        let frame = tokio::time::timeout(patience, socket.next()).await.ok()??;
        match frame {
            Ok(WsMessage::Binary(bytes)) => {
                if let Some(connection) = connection.as_deref_mut() {
                    let _ = connection.handle_record(Instant::now(), &bytes);
                }
            }
            Ok(WsMessage::Close(frame)) => {
                return frame.map(|frame| CloseCode(u16::from(frame.code)));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// An established session driven by hand.
pub(crate) struct RawSession {
    socket: Socket,
    connection: Connection,
    config: Arc<ClientConfig>,
}

impl RawSession {
    /// Upgrades, runs the Noise XX handshake record by record, and waits for the
    /// server's CAP_GRANT.
    ///
    /// # Errors
    /// A readable reason.
    pub(crate) async fn connect(
        url: &str,
        identity: Identity,
        server: IdentityKey,
    ) -> Result<Self, String> {
        let config = Arc::new(
            ClientConfig::new(identity, vec![server], url, &mut rand_core::OsRng).with_cap_request(
                CapRequest {
                    tools: vec!["*".into()],
                    grants: Vec::new(),
                },
            ),
        );
        let socket = upgrade(url, None)
            .await
            .map_err(|error| format!("upgrade failed: {error}"))?;
        // Handshake record 1 is queued as soon as the client connection exists.
        let connection = Connection::client(config.clone(), Instant::now(), &mut rand_core::OsRng);
        let mut session = Self {
            socket,
            connection,
            config,
        };
        session.flush().await?;
        loop {
            let record = session.next_record().await?;
            session
                .connection
                .handle_record(Instant::now(), &record)
                .map_err(|error| format!("handshake failed: {error}"))?;
            // Record 3 goes out right after record 2 is read.
            session.flush().await?;
            while let Some(event) = session.connection.poll_event() {
                if let Event::Message(Message::CapGrant(_)) = event {
                    return Ok(session);
                }
            }
        }
    }

    /// Sends every record the connection has queued.
    async fn flush(&mut self) -> Result<(), String> {
        while let Some(record) = self.connection.poll_transmit() {
            self.send(record).await?;
        }
        Ok(())
    }

    /// Sends one record as one binary WebSocket message, exactly as given.
    pub(crate) async fn send(&mut self, record: Vec<u8>) -> Result<(), String> {
        self.socket
            .send(WsMessage::Binary(record.into()))
            .await
            .map_err(|error| format!("send failed: {error}"))
    }

    /// The next binary message from the server.
    async fn next_record(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, self.socket.next())
                .await
                .map_err(|_| "the server did not answer in time".to_owned())?
                .ok_or_else(|| "the server closed the socket".to_owned())?
                .map_err(|error| format!("read failed: {error}"))?;
            match frame {
                WsMessage::Binary(bytes) => return Ok(bytes.to_vec()),
                WsMessage::Close(frame) => {
                    return Err(match frame {
                        Some(frame) => format!(
                            "the server closed with {}",
                            CloseCode(u16::from(frame.code))
                        ),
                        None => "the server closed the socket".to_owned(),
                    })
                }
                _ => {}
            }
        }
    }

    /// Seals a signed REQUEST and returns the record instead of sending it.
    ///
    /// # Errors
    /// A readable reason.
    pub(crate) fn seal_request(
        &mut self,
        id: u64,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        let session_id = self
            .connection
            .session()
            .ok_or("not established")?
            .session_id;
        let args = rmp_serde::to_vec_named(args).map_err(|error| error.to_string())?;
        let signature = RequestFields {
            session_id: &session_id,
            request_id: id,
            tool,
            args: &args,
            grant_id: "",
        }
        .sign(self.config.identity());
        self.connection
            .send(
                Instant::now(),
                Message::Request(Request {
                    id,
                    tool: tool.to_owned(),
                    args: args.into(),
                    grant_id: None,
                    deadline_ms: None,
                    signature: Some(signature.to_vec().into()),
                    retry: false,
                }),
            )
            .map_err(|error| error.to_string())?;
        self.connection
            .poll_transmit()
            .ok_or_else(|| "nothing was sealed".to_owned())
    }

    /// Reads until the answer to request `id` (RESPONSE or ERROR) arrives.
    ///
    /// # Errors
    /// A readable reason, including the server closing the connection.
    pub(crate) async fn answer(&mut self, id: u64) -> Result<Message, String> {
        loop {
            let record = self.next_record().await?;
            self.connection
                .handle_record(Instant::now(), &record)
                .map_err(|error| format!("the server's record was refused: {error}"))?;
            while let Some(event) = self.connection.poll_event() {
                match event {
                    Event::Message(Message::Response(response)) if response.id == id => {
                        return Ok(Message::Response(response))
                    }
                    Event::Message(Message::Error(error)) if error.id == Some(id) => {
                        return Ok(Message::Error(error))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Waits for the server to close the connection; returns its close code.
    pub(crate) async fn close_code(&mut self) -> Option<CloseCode> {
        close_code(&mut self.socket, Some(&mut self.connection), READ_TIMEOUT).await
    }
}

//! The client's side of spec section 18: each connection (link) reports the events
//! of the vocabulary with the same names and fields as the server (EVT-001,
//! EVT-002), with `role = "client"`, through
//! [`toolwire_protocol::events::EventRecord::log`]. The client has no alert sink:
//! alert events are logged at WARN.

use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use toolwire_protocol::events::{
    ConnectionCounters, EventContext, EventRecord, PeerText, RecordPosition, SecurityEvent,
};
use toolwire_protocol::{CloseCode, Event, IdentityKey, Role, Side};

fn log(context: EventContext, event: SecurityEvent) {
    EventRecord::new(SystemTime::now(), context, event).log();
}

/// The TCP peer of a client socket, when it can be read.
fn peer_addr(socket: &WebSocketStream<MaybeTlsStream<TcpStream>>) -> Option<SocketAddr> {
    match socket.get_ref() {
        MaybeTlsStream::Plain(stream) => stream.peer_addr().ok(),
        MaybeTlsStream::Rustls(stream) => stream.get_ref().0.peer_addr().ok(),
        _ => None,
    }
}

/// One connection's event state: its common fields, counters, and the position of
/// the record being processed.
pub(crate) struct SecurityLog {
    context: EventContext,
    counters: ConnectionCounters,
    last_record: Option<RecordPosition>,
}

impl SecurityLog {
    /// Reports `connection_opened` for an upgraded socket.
    pub(crate) fn opened(socket: &WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let log_state = Self {
            context: EventContext::new(Role::Client),
            counters: ConnectionCounters::default(),
            last_record: None,
        };
        if let Some(peer_addr) = peer_addr(socket) {
            log(
                log_state.context,
                SecurityEvent::ConnectionOpened { peer_addr },
            );
        }
        log_state
    }

    /// Counts a received record and remembers its position.
    pub(crate) fn record_in(&mut self, record: &[u8]) {
        self.counters.record_in(record.len());
        self.last_record = RecordPosition::peek(record);
    }

    /// Counts a sent record.
    pub(crate) fn record_out(&mut self, len: usize) {
        self.counters.record_out(len);
    }

    /// Reports what a protocol event means: `handshake_ok`, or the event of the
    /// error that closed the connection.
    pub(crate) fn observe(&mut self, event: &Event) {
        match event {
            Event::Established(session) => {
                self.context =
                    EventContext::established(Role::Client, session.session_id, session.peer);
                log(self.context, SecurityEvent::HandshakeOk);
            }
            Event::Closed {
                error: Some(error), ..
            } => {
                if let Some(event) = SecurityEvent::from_error(error, self.last_record.take()) {
                    log(self.context, event);
                }
            }
            _ => {}
        }
    }

    /// A frame over the size limit arrived.
    pub(crate) fn oversize_frame(&self, length: Option<usize>, limit: usize) {
        log(
            self.context,
            SecurityEvent::OversizeFrame {
                length: length.map(|length| length as u64),
                limit: Some(limit as u64),
            },
        );
    }

    /// Counts a call sent on this connection.
    pub(crate) fn call_sent(&mut self) {
        self.counters.calls += 1;
    }

    /// Counts a call the server refused.
    pub(crate) fn call_refused(&mut self) {
        self.counters.denials += 1;
    }

    /// Reports `connection_closed` with the counters.
    pub(crate) fn closed(&self, close_code: CloseCode, side: Side) {
        log(
            self.context,
            SecurityEvent::ConnectionClosed {
                close_code,
                side,
                counters: self.counters,
            },
        );
    }
}

/// Reports `manifest_changed`: a tool's definition differs from the one pinned.
pub(crate) fn manifest_changed(tool: &str, session_id: [u8; 32], server_key: Option<IdentityKey>) {
    let mut context = EventContext::new(Role::Client);
    context.session_id = Some(session_id);
    context.peer_key = server_key;
    log(
        context,
        SecurityEvent::ManifestChanged {
            tool: PeerText::new(tool),
        },
    );
}

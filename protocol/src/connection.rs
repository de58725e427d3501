//! The sans-IO connection: one state machine per WebSocket, for either side.
//!
//! A driver moves bytes and time in and out; the connection makes every protocol
//! decision. Call order, after creating the connection:
//!
//! 1. feed each received binary WebSocket message to [`Connection::handle_record`];
//! 2. when the instant from [`Connection::poll_timeout`] passes, call
//!    [`Connection::handle_timeout`];
//! 3. after either, and after [`Connection::send`] or [`Connection::close`], drain
//!    [`Connection::poll_transmit`] (each item is one binary WebSocket message, in
//!    order) and [`Connection::poll_event`];
//! 4. once [`Connection::is_closed`], send the queued records, then a WebSocket close
//!    frame with [`Connection::close_code`], and drop the connection.
//!
//! Time (`now`) and randomness are injected; nothing here reads a clock or a socket.
//!
//! Implements spec sections "Lifetimes and keepalive" (LIFE-001..LIFE-010), "Rekey"
//! (KEY-001, KEY-002, KEY-006), "Inner messages" (MSG-004) and "Close codes" (CLS-001..CLS-011).

use crate::codes::CloseCode;
use crate::config::{ClientConfig, ConnectionLimits, ServerConfig};
use crate::error::{Error, LocalError, Misbehavior, Side, TimeoutKind};
use crate::handshake::{ClientHandshake, ServerAwaitingFinish, ServerHandshake, SessionInfo};
use crate::message::{Close, Message, Ping};
use crate::transport::Transport;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which role a connection plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent side, which dials and initiates the handshake.
    Client,
    /// The tool server side.
    Server,
}

/// Something the application must know about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed; the peer is authenticated.
    Established(SessionInfo),
    /// An application message arrived (CAP_*, REQUEST, RESPONSE, STREAM_ITEM, ERROR,
    /// CANCEL). Keepalive, key updates and CLOSE are handled inside.
    Message(Message),
    /// The connection closed.
    Closed {
        /// The close code.
        code: CloseCode,
        /// Who closed it.
        side: Side,
        /// The error that caused a local close, if any.
        error: Option<Error>,
    },
}

enum State {
    ClientAwaitingServerHello(ClientHandshake),
    ServerAwaitingInit(ServerHandshake),
    ServerAwaitingFinish(ServerAwaitingFinish),
    Established(Box<Transport>),
    Closed,
}

/// One toolwire connection's protocol state. See the module docs for the call order.
pub struct Connection {
    role: Role,
    state: State,
    limits: ConnectionLimits,
    started: Instant,
    unix_at_start: i64,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    closed: Option<(CloseCode, Side)>,
    session: Option<SessionInfo>,
    session_lifetime: Duration,
    established_at: Option<Instant>,
    last_received: Instant,
    last_sent: Instant,
    epoch_started: Instant,
    next_ping_nonce: u64,
    /// Where the sending direction starts after the handshake (sequence number,
    /// epoch): (0, 0) but for a server configured for conformance testing.
    first_send: (u64, u32),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("closed", &self.closed)
            .field(
                "session_id",
                &self.session.as_ref().map(|s| hex::encode(s.session_id)),
            )
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A client connection; record 1 is queued for transmission at once.
    pub fn client(
        config: Arc<ClientConfig>,
        now: Instant,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let (handshake, record) = ClientHandshake::start(config.clone(), rng);
        Self::client_from(config, handshake, record, now)
    }

    /// A client connection that knows the wall-clock time (`unix_now`, Unix seconds,
    /// at `now`), which checking an operator's server certificate needs (ID-013).
    /// Otherwise as [`client`](Self::client), which trusts pinned keys only.
    pub fn client_at(
        config: Arc<ClientConfig>,
        now: Instant,
        unix_now: i64,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let mut connection = Self::client(config, now, rng);
        connection.unix_at_start = unix_now;
        connection
    }

    fn client_from(
        config: Arc<ClientConfig>,
        handshake: ClientHandshake,
        record: Vec<u8>,
        now: Instant,
    ) -> Self {
        let mut connection = Self::new(
            Role::Client,
            State::ClientAwaitingServerHello(handshake),
            config.limits.clone(),
            now,
            0,
        );
        connection.transmits.push_back(record);
        connection
    }

    /// A server connection. `unix_now` is the wall-clock time (Unix seconds) at `now`;
    /// later wall-clock times are derived from the monotonic `now` passed in.
    pub fn server(
        config: Arc<ServerConfig>,
        now: Instant,
        unix_now: i64,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let limits = config.limits.clone();
        let first_send = config.first_send;
        let handshake = ServerHandshake::new(config, rng);
        let mut connection = Self::new(
            Role::Server,
            State::ServerAwaitingInit(handshake),
            limits,
            now,
            unix_now,
        );
        connection.first_send = first_send;
        connection
    }

    fn new(
        role: Role,
        state: State,
        limits: ConnectionLimits,
        now: Instant,
        unix_now: i64,
    ) -> Self {
        Self {
            role,
            state,
            session_lifetime: limits.session_lifetime,
            limits,
            started: now,
            unix_at_start: unix_now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            closed: None,
            session: None,
            established_at: None,
            last_received: now,
            last_sent: now,
            epoch_started: now,
            next_ping_nonce: 0,
            first_send: (0, 0),
        }
    }

    /// This connection's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What the handshake established, once it has.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Whether the handshake has completed and the connection is open.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the connection is closed (no more records are accepted or sent).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The close code and who closed, once closed. The driver sends this code in the
    /// WebSocket close frame after the queued records.
    pub fn close_code(&self) -> Option<(CloseCode, Side)> {
        self.closed
    }

    /// The transport state, once established (counters, epochs).
    pub fn transport(&self) -> Option<&Transport> {
        match &self.state {
            State::Established(transport) => Some(transport),
            _ => None,
        }
    }

    /// Wall-clock seconds at `now`, derived from the values given at creation.
    pub fn unix_time(&self, now: Instant) -> i64 {
        let elapsed = i64::try_from(now.saturating_duration_since(self.started).as_secs())
            .unwrap_or(i64::MAX);
        self.unix_at_start.saturating_add(elapsed)
    }

    /// Next record to send as one binary WebSocket message.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) must be
    /// called; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::Established(_) => {
                let mut deadline = self.last_received + self.limits.idle_timeout;
                deadline = deadline.min(self.epoch_started + self.limits.rekey_after);
                if let Some(established) = self.established_at {
                    deadline = deadline.min(established + self.session_lifetime);
                }
                if self.role == Role::Client {
                    deadline = deadline.min(self.last_sent + self.limits.keepalive_interval);
                }
                Some(deadline)
            }
            _ => Some(self.started + self.limits.handshake_timeout),
        }
    }

    /// Processes the passage of time: handshake, idle and session deadlines,
    /// time-based rekey, client keepalive.
    ///
    /// # Errors
    /// [`Error::Timeout`] when a deadline closed the connection (the close is already
    /// queued); [`Error::LimitExceeded`] if a rekey or PING found the sequence space
    /// used up.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        match &self.state {
            State::Closed => Ok(()),
            State::Established(_) => {
                if now >= self.last_received + self.limits.idle_timeout {
                    return Err(self.fail(Error::Timeout(TimeoutKind::Idle)));
                }
                if let Some(established) = self.established_at {
                    if now >= established + self.session_lifetime {
                        return Err(self.fail(Error::Timeout(TimeoutKind::SessionLifetime)));
                    }
                }
                if now >= self.epoch_started + self.limits.rekey_after {
                    self.rekey_now(now)?;
                }
                if self.role == Role::Client
                    && now >= self.last_sent + self.limits.keepalive_interval
                {
                    let nonce = self.next_ping_nonce;
                    self.next_ping_nonce = self.next_ping_nonce.wrapping_add(1);
                    self.send_unchecked(now, Message::Ping(Ping { nonce }))?;
                }
                Ok(())
            }
            _ => {
                if now >= self.started + self.limits.handshake_timeout {
                    return Err(self.fail(Error::Timeout(TimeoutKind::Handshake)));
                }
                Ok(())
            }
        }
    }

    /// Processes one received binary WebSocket message.
    ///
    /// # Errors
    /// Any error here has closed the connection (check [`close_code`](Self::close_code)),
    /// except [`Error::Closed`], returned for records arriving after the close.
    pub fn handle_record(&mut self, now: Instant, record: &[u8]) -> Result<(), Error> {
        if let Some((code, side)) = self.closed {
            return Err(Error::Closed { code, side });
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        let result = match state {
            State::ClientAwaitingServerHello(handshake) => {
                let unix_now = self.unix_time(now);
                handshake
                    .read_server_hello_at(record, unix_now)
                    .map(|finished| {
                        self.transmits.push_back(finished.record);
                        self.session_lifetime =
                            Duration::from_millis(finished.session.params.session_lifetime_ms)
                                .min(self.limits.session_lifetime);
                        self.establish(now, finished.transport, finished.session);
                    })
            }
            State::ServerAwaitingInit(handshake) => {
                handshake.read_client_init(record).map(|(next, reply)| {
                    self.transmits.push_back(reply);
                    self.state = State::ServerAwaitingFinish(next);
                })
            }
            State::ServerAwaitingFinish(handshake) => handshake
                .read_client_finish(record, self.unix_time(now))
                .map(|(transport, session)| self.establish(now, transport, session)),
            State::Established(mut transport) => {
                let opened = transport.open(record);
                self.state = State::Established(transport);
                opened.and_then(|message| self.receive_message(now, message))
            }
            State::Closed => Ok(()),
        };
        result.map_err(|error| self.fail(error))
    }

    fn establish(&mut self, now: Instant, mut transport: Transport, session: SessionInfo) {
        if self.first_send != (0, 0) {
            transport.start_send_at(self.first_send.0, self.first_send.1);
        }
        self.state = State::Established(Box::new(transport));
        self.established_at = Some(now);
        self.last_received = now;
        self.last_sent = now;
        self.epoch_started = now;
        self.session = Some(session.clone());
        self.events.push_back(Event::Established(session));
    }

    fn receive_message(&mut self, now: Instant, message: Message) -> Result<(), Error> {
        self.last_received = now;
        match message {
            Message::KeyUpdate(_) | Message::Pong(_) => Ok(()),
            Message::Ping(ping) => self.send_unchecked(now, Message::Pong(ping)),
            Message::Close(close) => {
                let code = close.close_code();
                self.closed = Some((code, Side::Remote));
                self.state = State::Closed;
                self.events.push_back(Event::Closed {
                    code,
                    side: Side::Remote,
                    error: None,
                });
                Ok(())
            }
            message => {
                if !self.may_receive(&message) {
                    return Err(Error::PeerMisbehaved(Misbehavior::UnexpectedMessage));
                }
                self.events.push_back(Event::Message(message));
                Ok(())
            }
        }
    }

    /// MSG-004: a receiver accepts exactly the kinds the peer's role may send.
    fn may_receive(&self, message: &Message) -> bool {
        let peer = match self.role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        role_may_send(peer, message)
    }

    /// Sends one application message: a kind this connection's role may send
    /// (MSG-005). Key updates, PONGs and CLOSE are the connection's own business; use
    /// [`close`](Self::close) to close.
    ///
    /// # Errors
    /// [`LocalError::NotAllowedForRole`] for a kind this role may not send (nothing is
    /// sent; the connection stays open);
    /// [`LocalError::NotEstablished`] before the handshake completes;
    /// [`LocalError::MessageTooLarge`] for a message that does not fit in a record
    /// (the connection stays open); [`Error::Closed`] after the close;
    /// [`Error::LimitExceeded`] when the sequence space is used up (the connection is
    /// closed with SEQUENCE_EXHAUSTED).
    pub fn send(&mut self, now: Instant, message: Message) -> Result<(), Error> {
        if let Some((code, side)) = self.closed {
            return Err(Error::Closed { code, side });
        }
        if !self.may_send(&message) {
            return Err(Error::Local(LocalError::NotAllowedForRole {
                kind: message.kind(),
            }));
        }
        self.send_unchecked(now, message)
    }

    fn may_send(&self, message: &Message) -> bool {
        role_may_send(self.role, message)
    }

    /// Seals any message kind; the connection's own PINGs and PONGs go through here.
    pub(crate) fn send_unchecked(&mut self, now: Instant, message: Message) -> Result<(), Error> {
        if let Some((code, side)) = self.closed {
            return Err(Error::Closed { code, side });
        }
        let State::Established(transport) = &mut self.state else {
            return Err(Error::Local(LocalError::NotEstablished));
        };
        if transport.send_exhausted() {
            return Err(self.fail(Error::LimitExceeded(crate::error::Limit::SequenceSpace)));
        }
        if transport.records_in_send_epoch() >= self.limits.rekey_after_records {
            self.rekey_now(now)?;
        }
        let State::Established(transport) = &mut self.state else {
            return Err(Error::Local(LocalError::NotEstablished));
        };
        // The KEY_UPDATE may have taken the last data sequence number; the one left is
        // reserved for the CLOSE (REC-013).
        if transport.send_exhausted() {
            return Err(self.fail(Error::LimitExceeded(crate::error::Limit::SequenceSpace)));
        }
        match transport.seal(&message) {
            Ok(record) => {
                self.transmits.push_back(record);
                self.last_sent = now;
                Ok(())
            }
            Err(error @ Error::Local(_)) => Err(error),
            Err(error) => Err(self.fail(error)),
        }
    }

    fn rekey_now(&mut self, now: Instant) -> Result<(), Error> {
        let State::Established(transport) = &mut self.state else {
            return Ok(());
        };
        // A KEY_UPDATE must not take the sequence number reserved for the CLOSE.
        if transport.send_exhausted() {
            return Err(self.fail(Error::LimitExceeded(crate::error::Limit::SequenceSpace)));
        }
        match transport.seal_key_update() {
            Ok(record) => {
                self.transmits.push_back(record);
                self.epoch_started = now;
                self.last_sent = now;
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Closes the connection with `code`: an authenticated CLOSE record is queued when
    /// keys exist (CLS-001). Closing twice does nothing.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        self.close_with(code, Side::Local, reason, None);
    }

    /// Records a local failure, closes with its code, and hands the error back.
    fn fail(&mut self, error: Error) -> Error {
        if self.closed.is_none() {
            let code = error.close_code().unwrap_or(CloseCode::INTERNAL_ERROR);
            // No detail for the peer: the code says enough, and the reason of a
            // security failure would help an attacker probe (HS-034, CLS-003).
            self.close_with(code, Side::Local, "", Some(error.clone()));
        }
        error
    }

    fn close_with(&mut self, code: CloseCode, side: Side, reason: &str, error: Option<Error>) {
        if let State::Established(transport) = &mut self.state {
            let close = Message::Close(Close {
                code: code.0,
                reason: reason.to_owned(),
            });
            if let Ok(record) = transport.seal(&close) {
                self.transmits.push_back(record);
            }
        }
        self.state = State::Closed;
        self.closed = Some((code, side));
        self.events.push_back(Event::Closed { code, side, error });
    }

    /// Closes as if `error` had been detected locally.
    #[cfg(feature = "__testing")]
    pub(crate) fn fail_for_testing(&mut self, error: Error) -> Error {
        self.fail(error)
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn transport_mut(&mut self) -> Option<&mut Transport> {
        match &mut self.state {
            State::Established(transport) => Some(transport),
            _ => None,
        }
    }

    /// A copy of an established connection (keys, counters, queues, events), so that
    /// a test can try many attacks from one state. `None` unless established.
    #[cfg(feature = "__testing")]
    pub(crate) fn clone_established(&self) -> Option<Self> {
        let State::Established(transport) = &self.state else {
            return None;
        };
        Some(Self {
            role: self.role,
            state: State::Established(transport.clone()),
            limits: self.limits.clone(),
            started: self.started,
            unix_at_start: self.unix_at_start,
            transmits: self.transmits.clone(),
            events: self.events.clone(),
            closed: self.closed,
            session: self.session.clone(),
            session_lifetime: self.session_lifetime,
            established_at: self.established_at,
            last_received: self.last_received,
            last_sent: self.last_sent,
            epoch_started: self.epoch_started,
            next_ping_nonce: self.next_ping_nonce,
            first_send: self.first_send,
        })
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn client_with_handshake(
        config: Arc<ClientConfig>,
        handshake: ClientHandshake,
        record: Vec<u8>,
        now: Instant,
    ) -> Self {
        Self::client_from(config, handshake, record, now)
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn server_with_handshake(
        config: Arc<ServerConfig>,
        handshake: ServerHandshake,
        now: Instant,
        unix_now: i64,
    ) -> Self {
        let limits = config.limits.clone();
        let mut connection = Self::new(
            Role::Server,
            State::ServerAwaitingInit(handshake),
            limits,
            now,
            unix_now,
        );
        connection.first_send = config.first_send;
        connection
    }
}

/// MSG-004/MSG-005: the kinds each role may send (the "sent by" column of the spec),
/// plus PING, which either side may send to probe the connection. KEY_UPDATE, PONG and
/// CLOSE are sent by the connection itself and are handled before this check.
fn role_may_send(role: Role, message: &Message) -> bool {
    match role {
        Role::Client => matches!(
            message,
            Message::Request(_)
                | Message::Cancel(_)
                | Message::CapRequest(_)
                | Message::Error(_)
                | Message::Ping(_)
        ),
        Role::Server => matches!(
            message,
            Message::CapGrant(_)
                | Message::CapUpdate(_)
                | Message::Response(_)
                | Message::StreamItem(_)
                | Message::Error(_)
                | Message::Ping(_)
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The conformance-testing start of the server's sending direction
    //! ([`DangerousServerConfig`](crate::config::DangerousServerConfig)): the end of
    //! the sequence space (REC-011..REC-013) and the last epoch (KEY-006) reached in
    //! a few records.

    use super::*;
    use crate::identity::Identity;
    use crate::record::{RecordHeader, LAST_SEQUENCE};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const ENDPOINT: &str = "wss://tools.example/toolwire";

    /// A client and a server whose sending direction starts at `first_send`,
    /// handshake done. The client does not insist on strict order, so that it can
    /// open records numbered from `first_send.0`.
    fn established(
        first_send: (u64, u32),
        limits: ConnectionLimits,
    ) -> (Connection, Connection, Instant) {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let server_identity = Identity::from_seed(&[1; 32]);
        let client_identity = Identity::from_seed(&[2; 32]);
        let mut server_config = ServerConfig::new(server_identity.clone(), ENDPOINT, &mut rng)
            .allow_clients([client_identity.public_key()])
            .with_limits(limits.clone());
        server_config
            .dangerous()
            .start_send_sequence_for_testing(first_send.0)
            .start_send_epoch_for_testing(first_send.1);
        let mut client_limits = limits;
        client_limits.strict_order = false;
        let client_config = ClientConfig::new(
            client_identity,
            vec![server_identity.public_key()],
            ENDPOINT,
            &mut rng,
        )
        .with_limits(client_limits);
        let now = Instant::now();
        let mut client = Connection::client(Arc::new(client_config), now, &mut rng);
        let mut server = Connection::server(Arc::new(server_config), now, 1_700_000_000, &mut rng);
        for _ in 0..2 {
            while let Some(record) = client.poll_transmit() {
                server.handle_record(now, &record).expect("server accepts");
            }
            while let Some(record) = server.poll_transmit() {
                client.handle_record(now, &record).expect("client accepts");
            }
        }
        assert!(server.is_established() && client.is_established());
        (client, server, now)
    }

    fn header(record: &[u8]) -> RecordHeader {
        RecordHeader::parse(record).expect("a sealed record").0
    }

    fn ping(nonce: u64) -> Message {
        Message::Ping(Ping { nonce })
    }

    #[test]
    fn the_server_starts_sending_at_the_configured_sequence_and_closes_at_the_last() {
        let first = LAST_SEQUENCE - 3;
        let (mut client, mut server, now) = established((first, 0), ConnectionLimits::default());
        for nonce in 0..3 {
            server.send(now, ping(nonce)).expect("room left");
            let record = server.poll_transmit().expect("one record");
            assert_eq!(header(&record).seq, first + nonce);
            client.handle_record(now, &record).expect("client opens it");
        }
        // REC-013: the next sequence number is the last; the message is refused and
        // the CLOSE takes it.
        let refused = server.send(now, ping(3));
        assert_eq!(
            refused,
            Err(Error::LimitExceeded(crate::error::Limit::SequenceSpace))
        );
        assert_eq!(
            server.close_code(),
            Some((CloseCode::SEQUENCE_EXHAUSTED, Side::Local))
        );
        let close = server.poll_transmit().expect("the CLOSE record");
        assert_eq!(header(&close).seq, LAST_SEQUENCE);
        assert!(server.poll_transmit().is_none(), "nothing after the CLOSE");
        client
            .handle_record(now, &close)
            .expect("client opens the CLOSE");
        assert_eq!(
            client.close_code(),
            Some((CloseCode::SEQUENCE_EXHAUSTED, Side::Remote))
        );
    }

    #[test]
    fn a_start_beyond_the_sequence_space_is_capped_at_the_reserved_number() {
        let (_, mut server, now) = established((u64::MAX, 0), ConnectionLimits::default());
        assert!(server.send(now, ping(0)).is_err());
        let close = server.poll_transmit().expect("the CLOSE record");
        assert_eq!(header(&close).seq, LAST_SEQUENCE);
    }

    #[test]
    fn the_server_starts_in_the_configured_epoch_and_closes_instead_of_rekeying_past_the_last() {
        let limits = ConnectionLimits {
            rekey_after_records: 2,
            ..ConnectionLimits::default()
        };
        let (_, mut server, now) = established((0, u32::MAX), limits);
        for nonce in 0..2 {
            server
                .send(now, ping(nonce))
                .expect("within the epoch's records");
            let record = server.poll_transmit().expect("one record");
            assert_eq!(
                (header(&record).epoch, header(&record).seq),
                (u32::MAX, nonce)
            );
        }
        // KEY-006: no KEY_UPDATE can follow epoch 2^32 − 1.
        assert!(server.send(now, ping(2)).is_err());
        assert_eq!(
            server.close_code(),
            Some((CloseCode::SEQUENCE_EXHAUSTED, Side::Local))
        );
        let close = server.poll_transmit().expect("the CLOSE record");
        assert_eq!((header(&close).epoch, header(&close).seq), (u32::MAX, 2));
        assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn a_time_based_rekey_in_the_last_epoch_closes_too() {
        let mut limits = ConnectionLimits::default();
        limits.idle_timeout = limits.rekey_after * 2;
        let (_, mut server, now) = established((0, u32::MAX), limits.clone());
        let later = now + limits.rekey_after;
        assert!(server.handle_timeout(later).is_err());
        assert_eq!(
            server.close_code(),
            Some((CloseCode::SEQUENCE_EXHAUSTED, Side::Local))
        );
    }

    #[test]
    fn an_ordinary_epoch_start_still_rekeys_to_the_next() {
        let limits = ConnectionLimits {
            rekey_after_records: 1,
            ..ConnectionLimits::default()
        };
        let (_, mut server, now) = established((10, 41), limits);
        server.send(now, ping(0)).expect("sends");
        server.send(now, ping(1)).expect("sends after a rekey");
        let records: Vec<RecordHeader> = std::iter::from_fn(|| server.poll_transmit())
            .map(|r| header(&r))
            .collect();
        let labels: Vec<(u32, u64)> = records.iter().map(|h| (h.epoch, h.seq)).collect();
        assert_eq!(labels, [(41, 10), (41, 11), (42, 12)]);
    }

    #[test]
    fn by_default_a_server_starts_at_zero() {
        let (_, server, _) = established((0, 0), ConnectionLimits::default());
        let transport = server.transport().expect("established");
        assert_eq!((transport.next_send_seq(), transport.send_epoch()), (0, 0));
    }
}

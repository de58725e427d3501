//! Shared harness of the `pair_*` integration tests: an in-memory client/server
//! [`Pair`] on a virtual clock.
//!
//! Time is a base `Instant` plus `Duration`s: tests advance [`Pair::now`] and call
//! `handle_timeout` explicitly; nothing sleeps and no behaviour depends on the real
//! clock (the base instant is read once, only because `Instant` has no constructor).
//!
//! Records are moved explicitly. `take_from_*` captures what one side queued
//! (so a test can tamper, replay, reorder or drop it) and `deliver_to_*` hands one
//! record to the other side; `flush_*` does both in order. Every operation drains the
//! events of the connections it touched into [`Pair::client_events`] /
//! [`Pair::server_events`].

// Each test file uses a different part of the harness.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use toolwire_protocol::config::ConnectionLimits;
use toolwire_protocol::message::{Request, Response};
use toolwire_protocol::record::{RecordHeader, HEADER_LEN};
use toolwire_protocol::testing::{self, FixedPeers, SeededRng};
use toolwire_protocol::{
    ClientConfig, CloseCode, Connection, Error, Event, Identity, IdentityKey, Message,
    ServerConfig, Side,
};

/// Endpoint both sides bind into the prologue unless a test says otherwise.
pub const ENDPOINT: &str = testing::FIXED_ENDPOINT;
/// Wall-clock time of the server at the pair's base instant.
pub const UNIX_TIME: i64 = testing::FIXED_UNIX_TIME;

/// The deterministic peers of `toolwire_protocol::testing`, built once per test binary.
pub fn fixed_peers() -> &'static FixedPeers {
    static PEERS: OnceLock<FixedPeers> = OnceLock::new();
    PEERS.get_or_init(testing::fixed_peers_for_testing_only)
}

/// The base instant of every virtual clock in a test binary.
pub fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Identities and configurations of one client/server pair.
pub struct Peers {
    /// The server identity (same seed as the fixed peers).
    pub server_identity: Identity,
    /// The client identity (same seed as the fixed peers).
    pub client_identity: Identity,
    /// The server configuration.
    pub server_config: Arc<ServerConfig>,
    /// The client configuration.
    pub client_config: Arc<ClientConfig>,
}

/// How [`Peers::custom`] sets up trust and endpoints.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Whether the server allowlists the client identity.
    pub allowlist_client: bool,
    /// The server identity keys the client pins; `None` pins the real server.
    pub client_trusts: Option<Vec<IdentityKey>>,
    /// The endpoint the client binds into the prologue.
    pub client_endpoint: String,
    /// The endpoint the server binds into the prologue.
    pub server_endpoint: String,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            allowlist_client: true,
            client_trusts: None,
            client_endpoint: ENDPOINT.into(),
            server_endpoint: ENDPOINT.into(),
        }
    }
}

impl Peers {
    /// The fixed identities; the server allowlists the client and the client pins
    /// the server, both bound to [`ENDPOINT`]. `server` and `client` adjust the
    /// configurations before they are frozen.
    pub fn build(
        server: impl FnOnce(ServerConfig) -> ServerConfig,
        client: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Self {
        Self::custom(&PeerOptions::default(), server, client)
    }

    /// Like [`Peers::build`] with trust and endpoints set by `options`.
    pub fn custom(
        options: &PeerOptions,
        server: impl FnOnce(ServerConfig) -> ServerConfig,
        client: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Self {
        use rand_core::SeedableRng as _;
        let mut rng = SeededRng::seed_from_u64(0x7061_6972);
        let server_identity = Identity::from_seed(&[0x53; 32]);
        let client_identity = Identity::from_seed(&[0x43; 32]);
        let mut server_config = ServerConfig::new(
            server_identity.clone(),
            options.server_endpoint.as_str(),
            &mut rng,
        );
        if options.allowlist_client {
            server_config = server_config.allow_clients([client_identity.public_key()]);
        }
        let server_config = Arc::new(server(server_config));
        let trusted = options
            .client_trusts
            .clone()
            .unwrap_or_else(|| vec![server_identity.public_key()]);
        let client_config = Arc::new(client(ClientConfig::new(
            client_identity.clone(),
            trusted,
            options.client_endpoint.as_str(),
            &mut rng,
        )));
        Self {
            server_identity,
            client_identity,
            server_config,
            client_config,
        }
    }

    /// Default configurations, as [`Peers::build`] with no adjustment.
    pub fn default_configs() -> Self {
        Self::build(|server| server, |client| client)
    }

    /// Both sides with these limits.
    pub fn with_limits(limits: &ConnectionLimits) -> Self {
        Self::build(
            |server| server.with_limits(limits.clone()),
            |client| client.with_limits(limits.clone()),
        )
    }
}

/// A client and a server connection on one virtual clock.
pub struct Pair {
    /// The client connection.
    pub client: Connection,
    /// The server connection.
    pub server: Connection,
    /// The instant both connections were created at.
    pub base: Instant,
    /// The current virtual time.
    pub now: Instant,
    /// Every event the client has emitted so far, in order.
    pub client_events: Vec<Event>,
    /// Every event the server has emitted so far, in order.
    pub server_events: Vec<Event>,
}

impl Pair {
    /// Wraps two connections created at `base`.
    pub fn from_connections(client: Connection, server: Connection, base: Instant) -> Self {
        let mut pair = Self {
            client,
            server,
            base,
            now: base,
            client_events: Vec::new(),
            server_events: Vec::new(),
        };
        pair.collect();
        pair
    }

    /// A fresh client and server (fixed ephemerals), nothing exchanged yet; record 1
    /// is queued at the client.
    pub fn start(peers: &Peers) -> Self {
        let base = base_instant();
        let client = testing::client_with_fixed_ephemeral_for_testing_only(
            peers.client_config.clone(),
            testing::FIXED_CLIENT_EPHEMERAL,
            base,
        );
        let server = testing::server_with_fixed_ephemeral_for_testing_only(
            peers.server_config.clone(),
            testing::FIXED_SERVER_EPHEMERAL,
            base,
            UNIX_TIME,
        );
        Self::from_connections(client, server, base)
    }

    /// The deterministic established pair of `toolwire_protocol::testing` (default
    /// limits), with the handshake events discarded.
    pub fn established() -> Self {
        let base = base_instant();
        let (client, server) = testing::established_pair_for_testing_only(fixed_peers(), base);
        Self::from_connections(client, server, base)
    }

    /// A pair of `peers` that has completed the handshake; the `Established` events
    /// stay in the event lists.
    ///
    /// # Panics
    /// If the handshake fails.
    pub fn established_with(peers: &Peers) -> Self {
        let mut pair = Self::start(peers);
        pair.handshake().expect("handshake succeeds");
        assert!(pair.client.is_established() && pair.server.is_established());
        pair
    }

    /// Runs the handshake to completion (or the first failure, with the side that
    /// failed).
    ///
    /// # Errors
    /// The first error, with the side that returned it.
    pub fn handshake(&mut self) -> Result<(), (Role, Error)> {
        for _ in 0..2 {
            self.flush_client_to_server()
                .map_err(|error| (Role::Server, error))?;
            self.flush_server_to_client()
                .map_err(|error| (Role::Client, error))?;
        }
        Ok(())
    }

    /// Drains both connections' events into the event lists.
    pub fn collect(&mut self) {
        while let Some(event) = self.client.poll_event() {
            self.client_events.push(event);
        }
        while let Some(event) = self.server.poll_event() {
            self.server_events.push(event);
        }
    }

    /// Captures the records the client has queued instead of delivering them.
    pub fn take_from_client(&mut self) -> Vec<Vec<u8>> {
        self.collect();
        std::iter::from_fn(|| self.client.poll_transmit()).collect()
    }

    /// Captures the records the server has queued instead of delivering them.
    pub fn take_from_server(&mut self) -> Vec<Vec<u8>> {
        self.collect();
        std::iter::from_fn(|| self.server.poll_transmit()).collect()
    }

    /// Captures exactly one queued client record.
    ///
    /// # Panics
    /// If the client queued no record or more than one.
    pub fn take_one_from_client(&mut self) -> Vec<u8> {
        let mut records = self.take_from_client();
        assert_eq!(records.len(), 1, "expected exactly one client record");
        records.remove(0)
    }

    /// Captures exactly one queued server record.
    ///
    /// # Panics
    /// If the server queued no record or more than one.
    pub fn take_one_from_server(&mut self) -> Vec<u8> {
        let mut records = self.take_from_server();
        assert_eq!(records.len(), 1, "expected exactly one server record");
        records.remove(0)
    }

    /// Hands one record to the server at the current time.
    ///
    /// # Errors
    /// What `handle_record` returned.
    pub fn deliver_to_server(&mut self, record: &[u8]) -> Result<(), Error> {
        let result = self.server.handle_record(self.now, record);
        self.collect();
        result
    }

    /// Hands one record to the client at the current time.
    ///
    /// # Errors
    /// What `handle_record` returned.
    pub fn deliver_to_client(&mut self, record: &[u8]) -> Result<(), Error> {
        let result = self.client.handle_record(self.now, record);
        self.collect();
        result
    }

    /// Delivers every queued client record to the server, in order; stops at the
    /// first error. Returns how many records were delivered.
    ///
    /// # Errors
    /// The server's first error.
    pub fn flush_client_to_server(&mut self) -> Result<usize, Error> {
        let mut delivered = 0;
        while let Some(record) = self.client.poll_transmit() {
            self.deliver_to_server(&record)?;
            delivered += 1;
        }
        self.collect();
        Ok(delivered)
    }

    /// Delivers every queued server record to the client, in order; stops at the
    /// first error. Returns how many records were delivered.
    ///
    /// # Errors
    /// The client's first error.
    pub fn flush_server_to_client(&mut self) -> Result<usize, Error> {
        let mut delivered = 0;
        while let Some(record) = self.server.poll_transmit() {
            self.deliver_to_client(&record)?;
            delivered += 1;
        }
        self.collect();
        Ok(delivered)
    }

    /// Moves records both ways until neither side has anything queued.
    ///
    /// # Errors
    /// The first error, with the side that returned it.
    pub fn flush(&mut self) -> Result<(), (Role, Error)> {
        loop {
            let to_server = self
                .flush_client_to_server()
                .map_err(|error| (Role::Server, error))?;
            let to_client = self
                .flush_server_to_client()
                .map_err(|error| (Role::Client, error))?;
            if to_server == 0 && to_client == 0 {
                return Ok(());
            }
        }
    }

    /// Advances the virtual clock (no timeout is processed).
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves the virtual clock to `at` (never backwards).
    pub fn advance_to(&mut self, at: Instant) {
        assert!(at >= self.now, "the virtual clock never goes back");
        self.now = at;
    }

    /// Time since the base instant.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Calls the client's `handle_timeout` at the current time.
    ///
    /// # Errors
    /// What `handle_timeout` returned.
    pub fn client_timeout(&mut self) -> Result<(), Error> {
        let result = self.client.handle_timeout(self.now);
        self.collect();
        result
    }

    /// Calls the server's `handle_timeout` at the current time.
    ///
    /// # Errors
    /// What `handle_timeout` returned.
    pub fn server_timeout(&mut self) -> Result<(), Error> {
        let result = self.server.handle_timeout(self.now);
        self.collect();
        result
    }

    /// Advances by `by`, then calls `handle_timeout` on both sides (server first).
    pub fn advance_and_timeout(&mut self, by: Duration) -> (Result<(), Error>, Result<(), Error>) {
        self.advance(by);
        let server = self.server_timeout();
        let client = self.client_timeout();
        (client, server)
    }

    /// Drives both sides like a pair of well-behaved drivers up to `until`: jump the
    /// clock to the earliest `poll_timeout` that is due, run the timeouts (server
    /// first) and move every queued record both ways. Stops at `until`, or as soon as
    /// a side fails or closes.
    ///
    /// # Errors
    /// The first error, with the side that returned it.
    pub fn run_until(&mut self, until: Instant) -> Result<(), (Role, Error)> {
        self.flush()?;
        loop {
            if self.client.is_closed() || self.server.is_closed() {
                return Ok(());
            }
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|next| *next <= until) else {
                self.advance_to(until.max(self.now));
                return Ok(());
            };
            self.advance_to(next.max(self.now));
            self.server_timeout()
                .map_err(|error| (Role::Server, error))?;
            self.client_timeout()
                .map_err(|error| (Role::Client, error))?;
            self.flush()?;
        }
    }

    /// Application messages the server has delivered so far.
    pub fn server_messages(&mut self) -> Vec<Message> {
        self.collect();
        app_messages(&self.server_events)
    }

    /// Application messages the client has delivered so far.
    pub fn client_messages(&mut self) -> Vec<Message> {
        self.collect();
        app_messages(&self.client_events)
    }

    /// Forgets the events seen so far (for example the handshake's).
    pub fn clear_events(&mut self) {
        self.collect();
        self.client_events.clear();
        self.server_events.clear();
    }

    /// The session id both sides agreed on.
    ///
    /// # Panics
    /// Before the client is established.
    pub fn session_id(&self) -> [u8; 32] {
        self.client.session().expect("established").session_id
    }

    /// The client sends `message` and the record is delivered to the server.
    ///
    /// # Panics
    /// If sending or delivering fails.
    pub fn client_sends(&mut self, message: Message) {
        self.client
            .send(self.now, message)
            .expect("client sends the message");
        self.flush_client_to_server()
            .expect("server accepts the client's records");
    }

    /// The server sends `message` and the record is delivered to the client.
    ///
    /// # Panics
    /// If sending or delivering fails.
    pub fn server_sends(&mut self, message: Message) {
        self.server
            .send(self.now, message)
            .expect("server sends the message");
        self.flush_server_to_client()
            .expect("client accepts the server's records");
    }
}

/// Which connection of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client.
    Client,
    /// The server.
    Server,
}

/// The application messages among `events`.
pub fn app_messages(events: &[Event]) -> Vec<Message> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Message(message) => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The `Closed` events among `events` as (code, side, error).
pub fn closed_events(events: &[Event]) -> Vec<(CloseCode, Side, Option<Error>)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Closed { code, side, error } => Some((*code, *side, error.clone())),
            _ => None,
        })
        .collect()
}

/// Asserts that `connection` closed with `code` by `side`, that `events` hold
/// exactly one `Closed` event saying so (as the last event), and that this event
/// carries `error` (for a local failure) or none.
pub fn assert_closed(
    connection: &Connection,
    events: &[Event],
    code: CloseCode,
    side: Side,
    error: Option<&Error>,
) {
    assert!(connection.is_closed(), "connection is closed");
    assert_eq!(connection.close_code(), Some((code, side)), "close_code()");
    assert_eq!(connection.poll_timeout(), None, "no deadline once closed");
    let closed = closed_events(events);
    assert_eq!(
        closed,
        vec![(code, side, error.cloned())],
        "exactly one Closed event"
    );
    assert!(
        matches!(events.last(), Some(Event::Closed { .. })),
        "Closed is the last event: {events:?}"
    );
}

/// Asserts `result` is the error `expected`, that it maps to `code`, and returns it.
#[track_caller]
pub fn assert_error(result: Result<(), Error>, expected: &Error, code: CloseCode) -> Error {
    let error = result.expect_err("the operation fails");
    assert_eq!(&error, expected);
    assert_eq!(error.close_code(), Some(code), "close code of {error:?}");
    error
}

/// The parsed header of a record.
///
/// # Panics
/// If the header does not parse.
pub fn header(record: &[u8]) -> RecordHeader {
    RecordHeader::parse(record).expect("header parses").0
}

/// The little-endian epoch field of a record header.
pub fn epoch_of(record: &[u8]) -> u32 {
    u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"))
}

/// The little-endian sequence field of a record header.
pub fn seq_of(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[8..HEADER_LEN].try_into().expect("8 bytes"))
}

/// A copy of `record` with its sequence field replaced.
pub fn with_seq(record: &[u8], seq: u64) -> Vec<u8> {
    let mut copy = record.to_vec();
    copy[8..HEADER_LEN].copy_from_slice(&seq.to_le_bytes());
    copy
}

/// An unsigned REQUEST (the record layer does not look at signatures).
pub fn request(id: u64, args: &[u8]) -> Message {
    Message::Request(Request {
        id,
        tool: "echo".into(),
        args: args.to_vec().into(),
        grant_id: None,
        deadline_ms: None,
        signature: None,
        retry: false,
    })
}

/// An unsigned RESPONSE.
pub fn response(id: u64, result: &[u8]) -> Message {
    Message::Response(Response {
        id,
        result: result.to_vec().into(),
        signature: None,
    })
}

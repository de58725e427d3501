//! Deterministic hooks for test vectors and tests. Behind the `__testing` feature;
//! never enable it in a production build. Every function's name says so.

use crate::config::{ClientConfig, ServerConfig};
use crate::connection::Connection;
use crate::handshake::{ClientHandshake, ServerHandshake};
use crate::noise::KeyPair;
use std::sync::Arc;
use std::time::Instant;

/// A client connection whose ephemeral X25519 secret is `ephemeral_secret`.
pub fn client_with_fixed_ephemeral_for_testing_only(
    config: Arc<ClientConfig>,
    ephemeral_secret: [u8; 32],
    now: Instant,
) -> Connection {
    let (handshake, record) = ClientHandshake::start_with_ephemeral(
        config.clone(),
        KeyPair::from_secret_bytes(ephemeral_secret),
    );
    Connection::client_with_handshake(config, handshake, record, now)
}

/// A server connection whose ephemeral X25519 secret is `ephemeral_secret`.
pub fn server_with_fixed_ephemeral_for_testing_only(
    config: Arc<ServerConfig>,
    ephemeral_secret: [u8; 32],
    now: Instant,
    unix_now: i64,
) -> Connection {
    let handshake = ServerHandshake::with_ephemeral(
        config.clone(),
        KeyPair::from_secret_bytes(ephemeral_secret),
    );
    Connection::server_with_handshake(config, handshake, now, unix_now)
}

/// Forces the next sending sequence number (to reach exhaustion without sending 2^62
/// records). Does nothing before the handshake completes.
pub fn set_next_send_seq_for_testing_only(connection: &mut Connection, seq: u64) {
    if let Some(transport) = connection.transport_mut() {
        transport.set_next_send_seq(seq);
    }
}

/// Makes `connection` fail as if it had detected `error` itself (for example an
/// error that maps to no close code), and returns the error.
pub fn fail_for_testing_only(connection: &mut Connection, error: crate::Error) -> crate::Error {
    connection.fail_for_testing(error)
}

/// Relabels the current sending and receiving epochs of an established connection
/// without changing its keys (to reach the last epoch without 2^32 rekeys). Give the
/// peer the matching labels so that it still accepts the records. Does nothing
/// before the handshake completes.
pub fn set_epochs_for_testing_only(connection: &mut Connection, send: u32, receive: u32) {
    if let Some(transport) = connection.transport_mut() {
        transport.set_epochs(send, receive);
    }
}

/// A copy of an established connection: same keys, counters, queued records and
/// events. `None` before the handshake completes and after the close. Lets a test try
/// many tampered records against one state without a handshake each. Two copies that
/// both *send* reuse AEAD nonces: only ever let one of them send.
pub fn clone_established_for_testing_only(connection: &Connection) -> Option<Connection> {
    connection.clone_established()
}

/// The Noise static secret of a client configuration.
pub fn client_static_secret_for_testing_only(config: &ClientConfig) -> [u8; 32] {
    config.static_binding.secret_bytes()
}

/// The Noise static secret of a server configuration.
pub fn server_static_secret_for_testing_only(config: &ServerConfig) -> [u8; 32] {
    config.static_binding.secret_bytes()
}

/// Fixed identities and configurations used by fuzz targets, vectors and tests.
pub struct FixedPeers {
    /// Server identity (seed `[0x53; 32]`).
    pub server_identity: crate::Identity,
    /// Client identity (seed `[0x43; 32]`).
    pub client_identity: crate::Identity,
    /// Server configuration allowing the client.
    pub server_config: Arc<ServerConfig>,
    /// Client configuration pinning the server.
    pub client_config: Arc<ClientConfig>,
}

/// Endpoint used by [`fixed_peers_for_testing_only`].
pub const FIXED_ENDPOINT: &str = "wss://tools.example/toolwire";
/// Wall-clock time (Unix seconds) used by fixed pairs: 2026-01-01T00:00:00Z.
pub const FIXED_UNIX_TIME: i64 = 1_767_225_600;

/// Deterministic peers: identities from fixed seeds, Noise statics from a seeded RNG.
pub fn fixed_peers_for_testing_only() -> FixedPeers {
    use rand_core::SeedableRng as _;
    let mut rng = SeededRng::seed_from_u64(0x746f_6f6c_7769_7265);
    let server_identity = crate::Identity::from_seed(&[0x53; 32]);
    let client_identity = crate::Identity::from_seed(&[0x43; 32]);
    let server_config = Arc::new(
        ServerConfig::new(server_identity.clone(), FIXED_ENDPOINT, &mut rng)
            .allow_clients([client_identity.public_key()]),
    );
    let client_config = Arc::new(ClientConfig::new(
        client_identity.clone(),
        vec![server_identity.public_key()],
        FIXED_ENDPOINT,
        &mut rng,
    ));
    FixedPeers {
        server_identity,
        client_identity,
        server_config,
        client_config,
    }
}

/// Client ephemeral secret used by [`established_pair_for_testing_only`].
pub const FIXED_CLIENT_EPHEMERAL: [u8; 32] = [0x65; 32];
/// Server ephemeral secret used by [`established_pair_for_testing_only`].
pub const FIXED_SERVER_EPHEMERAL: [u8; 32] = [0x45; 32];

/// Runs the three handshake records between two connections at `now`.
///
/// # Panics
/// If the handshake fails: callers use it with configurations known to work.
#[allow(clippy::expect_used)]
pub fn run_handshake_for_testing_only(
    client: &mut Connection,
    server: &mut Connection,
    now: Instant,
) {
    for _ in 0..2 {
        while let Some(record) = client.poll_transmit() {
            server
                .handle_record(now, &record)
                .expect("server accepts handshake record");
        }
        while let Some(record) = server.poll_transmit() {
            client
                .handle_record(now, &record)
                .expect("client accepts handshake record");
        }
    }
}

/// An established (client, server) pair with fixed keys, events drained.
pub fn established_pair_for_testing_only(
    peers: &FixedPeers,
    now: Instant,
) -> (Connection, Connection) {
    let mut client = client_with_fixed_ephemeral_for_testing_only(
        peers.client_config.clone(),
        FIXED_CLIENT_EPHEMERAL,
        now,
    );
    let mut server = server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        FIXED_SERVER_EPHEMERAL,
        now,
        FIXED_UNIX_TIME,
    );
    run_handshake_for_testing_only(&mut client, &mut server, now);
    while client.poll_event().is_some() {}
    while server.poll_event().is_some() {}
    (client, server)
}

/// Seals arbitrary plaintext (not necessarily a valid message) as the connection's
/// next record, for fuzzing the decoder behind the AEAD.
pub fn seal_raw_for_testing_only(connection: &mut Connection, plaintext: &[u8]) -> Option<Vec<u8>> {
    connection.transport_mut()?.seal_raw(plaintext).ok()
}

/// A seedable RNG for deterministic tests (ChaCha20; never for production keys).
pub type SeededRng = rand_chacha::ChaCha20Rng;

/// An RNG that hands out exactly the bytes it was given, then zeros. Used to make
/// [`ClientConfig::new`]/[`ServerConfig::new`] adopt a chosen Noise static secret.
struct ReplayRng {
    bytes: Vec<u8>,
}

impl rand_core::RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let take = dest.len().min(self.bytes.len());
        let (head, tail) = dest.split_at_mut(take);
        head.copy_from_slice(&self.bytes[..take]);
        tail.fill(0);
        self.bytes.drain(..take);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for ReplayRng {}

/// A client configuration whose Noise static secret is `static_secret` (test vectors
/// publish static keys, so a checker must be able to rebuild the exact peer).
///
/// # Panics
/// If the configuration did not adopt the secret (the hook no longer matches how
/// [`ClientConfig::new`] draws its static key).
pub fn client_config_with_static_secret_for_testing_only(
    identity: crate::Identity,
    trusted_servers: Vec<crate::IdentityKey>,
    endpoint: &str,
    static_secret: [u8; 32],
) -> ClientConfig {
    let mut rng = ReplayRng {
        bytes: static_secret.to_vec(),
    };
    let config = ClientConfig::new(identity, trusted_servers, endpoint, &mut rng);
    assert_eq!(config.static_binding.secret_bytes(), static_secret);
    config
}

/// A server configuration whose Noise static secret is `static_secret`.
///
/// # Panics
/// As [`client_config_with_static_secret_for_testing_only`].
pub fn server_config_with_static_secret_for_testing_only(
    identity: crate::Identity,
    endpoint: &str,
    static_secret: [u8; 32],
) -> ServerConfig {
    let mut rng = ReplayRng {
        bytes: static_secret.to_vec(),
    };
    let config = ServerConfig::new(identity, endpoint, &mut rng);
    assert_eq!(config.static_binding.secret_bytes(), static_secret);
    config
}

/// A transport (both record-layer directions at epoch 0, nothing sent or received)
/// straight from two keys, without a handshake: for record-layer test vectors.
pub fn transport_from_keys_for_testing_only(
    send_key: [u8; 32],
    receive_key: [u8; 32],
    session_id: [u8; 32],
    limits: &crate::ConnectionLimits,
) -> crate::transport::Transport {
    crate::transport::Transport::new(
        crate::noise::Key::new(send_key),
        crate::noise::Key::new(receive_key),
        session_id,
        limits,
    )
}

/// Forces the next sending sequence number of a bare [`crate::transport::Transport`].
pub fn set_transport_next_send_seq_for_testing_only(
    transport: &mut crate::transport::Transport,
    seq: u64,
) {
    transport.set_next_send_seq(seq);
}

/// Sends any message kind, including those the connection's role may not send
/// (MSG-005), to play a misbehaving peer.
///
/// # Errors
/// As [`Connection::send`], without the role check.
pub fn send_any_kind_for_testing_only(
    connection: &mut Connection,
    now: Instant,
    message: crate::Message,
) -> Result<(), crate::Error> {
    connection.send_unchecked(now, message)
}

//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`), one per parser of
//! untrusted bytes. They live here so that the stable-toolchain smoke test
//! (`tests/fuzz_smoke.rs`) runs exactly the code the fuzzers run. Each must return
//! normally for every input; a panic is a bug.

use crate::grant::{verify_grant, VerifyContext};
use crate::handshake::prologue;
use crate::noise::{HandshakeState, KeyPair, Role};
use crate::record::{RecordHeader, RecordType};
use crate::testing::{self, FixedPeers};
use std::sync::OnceLock;
use std::time::Instant;

fn peers() -> &'static FixedPeers {
    static PEERS: OnceLock<FixedPeers> = OnceLock::new();
    PEERS.get_or_init(testing::fixed_peers_for_testing_only)
}

/// A fuzz entry point: must return normally for every input.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke test and the fuzz crate.
pub const TARGETS: &[(&str, Target)] = &[
    ("record_header", record_header),
    ("sealed_record", sealed_record),
    ("sealed_message", sealed_message),
    ("handshake_message_1", handshake_message_1),
    ("handshake_message_2", handshake_message_2),
    ("handshake_message_3", handshake_message_3),
    ("client_hello_payload", client_hello_payload),
    ("inner_message", inner_message),
    ("grant", grant),
    ("manifest", manifest),
];

/// Record header parsing.
pub fn record_header(data: &[u8]) {
    if let Ok((header, body)) = RecordHeader::parse(data) {
        assert_eq!(header.encode()[..], data[..crate::record::HEADER_LEN]);
        assert_eq!(body.len(), data.len() - crate::record::HEADER_LEN);
    }
}

/// Arbitrary bytes as a record on an established server connection: the whole receive
/// path (header checks, replay check, AEAD) must refuse them without panicking.
pub fn sealed_record(data: &[u8]) {
    let now = Instant::now();
    let (_, mut server) = testing::established_pair_for_testing_only(peers(), now);
    if server.handle_record(now, data).is_err() {
        assert!(server.is_closed());
    }
}

/// Arbitrary plaintext, correctly sealed by the client: the inner message decoder and
/// the server's message dispatch.
pub fn sealed_message(data: &[u8]) {
    let now = Instant::now();
    let (mut client, mut server) = testing::established_pair_for_testing_only(peers(), now);
    if let Some(record) = testing::seal_raw_for_testing_only(&mut client, data) {
        let _ = server.handle_record(now, &record);
        while server.poll_event().is_some() {}
        while server.poll_transmit().is_some() {}
    }
}

/// Arbitrary bytes as handshake record 1 at a fresh server.
pub fn handshake_message_1(data: &[u8]) {
    let peers = peers();
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        Instant::now(),
        testing::FIXED_UNIX_TIME,
    );
    let _ = server.handle_record(Instant::now(), data);
}

/// Arbitrary bytes as handshake record 2 at a client that sent record 1.
pub fn handshake_message_2(data: &[u8]) {
    let peers = peers();
    let mut client = testing::client_with_fixed_ephemeral_for_testing_only(
        peers.client_config.clone(),
        testing::FIXED_CLIENT_EPHEMERAL,
        Instant::now(),
    );
    while client.poll_transmit().is_some() {}
    let _ = client.handle_record(Instant::now(), data);
}

/// Arbitrary bytes as handshake record 3 at a server that answered a genuine record 1.
pub fn handshake_message_3(data: &[u8]) {
    let peers = peers();
    let now = Instant::now();
    let mut client = testing::client_with_fixed_ephemeral_for_testing_only(
        peers.client_config.clone(),
        testing::FIXED_CLIENT_EPHEMERAL,
        now,
    );
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        now,
        testing::FIXED_UNIX_TIME,
    );
    if let Some(record) = client.poll_transmit() {
        let _ = server.handle_record(now, &record);
    }
    let _ = server.handle_record(now, data);
}

/// Arbitrary bytes as the (correctly encrypted) payload of handshake message 3: the
/// ClientHello decoder, identity checks and grant verification.
pub fn client_hello_payload(data: &[u8]) {
    let peers = peers();
    let now = Instant::now();
    let mut initiator = HandshakeState::new(
        Role::Initiator,
        &prologue(testing::FIXED_ENDPOINT, crate::SUBPROTOCOL),
        KeyPair::from_secret_bytes(testing::client_static_secret_for_testing_only(
            &peers.client_config,
        )),
        KeyPair::from_secret_bytes(testing::FIXED_CLIENT_EPHEMERAL),
    );
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        now,
        testing::FIXED_UNIX_TIME,
    );
    let mut message = Vec::new();
    if initiator.write_message(&[], &mut message).is_err() {
        return;
    }
    let record = crate::record::handshake_record(RecordType::HANDSHAKE_1, &message);
    if server.handle_record(now, &record).is_err() {
        return;
    }
    let Some(reply) = server.poll_transmit() else {
        return;
    };
    let mut payload = Vec::new();
    if initiator
        .read_message(&reply[crate::record::HEADER_LEN..], &mut payload)
        .is_err()
    {
        return;
    }
    let mut message = Vec::new();
    if initiator.write_message(data, &mut message).is_err() {
        return;
    }
    let record = crate::record::handshake_record(RecordType::HANDSHAKE_3, &message);
    let _ = server.handle_record(now, &record);
}

/// Inner message decoding.
pub fn inner_message(data: &[u8]) {
    if let Ok(message) = crate::Message::decode(data) {
        // Whatever decodes must re-encode to something that decodes to the same value.
        let again = crate::Message::decode(&message.encode());
        assert_eq!(again.as_ref().ok(), Some(&message));
    }
}

/// Grant parsing and verification.
pub fn grant(data: &[u8]) {
    let peers = peers();
    let token = String::from_utf8_lossy(data);
    let issuers = [peers.server_identity.public_key().to_bytes()];
    let context = VerifyContext {
        trusted_issuers: &issuers,
        audience: peers.server_identity.public_key().to_bytes(),
        holder: peers.client_identity.public_key().to_bytes(),
        now_unix: testing::FIXED_UNIX_TIME,
        session_id: None,
        max_clock_skew_secs: 0,
    };
    let _ = verify_grant(&token, &context);
}

/// Manifest decoding (after a signature check would pass).
pub fn manifest(data: &[u8]) {
    let _ = rmp_serde::from_slice::<crate::manifest::Manifest>(data);
}

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
    ("server_session", server_session),
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

/// Reads a structured op sequence out of fuzzer bytes; every read past the end
/// yields zeros, so any input is a valid program.
struct Ops<'a> {
    data: &'a [u8],
}

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        // 1 to 8 bytes, little endian: small values stay common.
        let len = usize::from(self.byte() % 8) + 1;
        (0..len).fold(0u64, |value, index| {
            value | (u64::from(self.byte()) << (8 * index))
        })
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::from(self.byte()).min(max).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken.to_vec()
    }

    fn text(&mut self) -> String {
        match self.byte() % 4 {
            0 => "echo".into(),
            1 => String::new(),
            2 => "*".into(),
            _ => String::from_utf8_lossy(&self.bytes(64)).into_owned(),
        }
    }

    fn is_done(&self) -> bool {
        self.data.is_empty()
    }
}

/// Ops per input, at most.
const MAX_SESSION_OPS: usize = 64;

/// Delivers `record` to the server: an error must leave it closed with a code.
/// Whatever the server sends back reaches the client (PONGs, KEY_UPDATEs,
/// answers), and the server's application answers every REQUEST it receives.
fn deliver(
    server: &mut crate::Connection,
    client: &mut crate::Connection,
    now: Instant,
    record: &[u8],
) {
    use crate::message::{Message, Response};
    let result = server.handle_record(now, record);
    if result.is_err() {
        assert!(server.is_closed(), "an error leaves the connection closed");
        assert!(
            server.close_code().is_some(),
            "a closed connection has a code"
        );
    }
    let mut answers = Vec::new();
    while let Some(event) = server.poll_event() {
        match event {
            crate::Event::Message(Message::Request(request)) => answers.push(request.id),
            crate::Event::Closed { .. } => {
                assert!(server.is_closed() && server.close_code().is_some());
            }
            _ => {}
        }
    }
    for id in answers {
        let _ = server.send(
            now,
            Message::Response(Response {
                id,
                result: serde_bytes::ByteBuf::from(vec![0xc0]),
                signature: None,
            }),
        );
    }
    while let Some(back) = server.poll_transmit() {
        let _ = client.handle_record(now, &back);
        while client.poll_event().is_some() {}
    }
}

/// A structured session against an established SERVER connection: the input is a
/// program of ops — genuinely sealed messages of every kind (fields from the input,
/// including kinds a client may not send), raw records, replays of earlier records,
/// bit flips and truncations of sealed records, swapped records, arbitrary sealed
/// plaintext, and time advancing past keepalive, rekey and idle deadlines (the
/// client then rekeys). After every step: no panic, and once the server reports an
/// error it is closed with a close code and stays closed.
pub fn server_session(data: &[u8]) {
    use crate::message::{
        Cancel, CapRequest, Close, ErrorMessage, Message, Ping, Request, Response, StreamItem,
    };
    thread_local! {
        /// One handshake per fuzzing thread: every input starts from copies of this
        /// established pair, at the same instant (faster, and deterministic).
        static PAIR: (crate::Connection, crate::Connection, Instant) = {
            let now = Instant::now();
            let (client, server) = testing::established_pair_for_testing_only(peers(), now);
            (client, server, now)
        };
    }
    let mut ops = Ops { data };
    let copies = PAIR.with(|(client, server, now)| {
        Some((
            testing::clone_established_for_testing_only(client)?,
            testing::clone_established_for_testing_only(server)?,
            *now,
        ))
    });
    let Some((mut client, mut server, mut now)) = copies else {
        return;
    };
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut held: Option<Vec<u8>> = None;
    for _ in 0..MAX_SESSION_OPS {
        if ops.is_done() {
            break;
        }
        let was_closed = server.is_closed();
        let op = ops.byte() % 12;
        let message = match op {
            0 => Some(Message::Request(Request {
                id: ops.u64(),
                tool: ops.text(),
                args: serde_bytes::ByteBuf::from(ops.bytes(128)),
                grant_id: (ops.byte() % 2 == 1).then(|| ops.text()),
                deadline_ms: (ops.byte() % 2 == 1).then(|| ops.u64()),
                signature: (ops.byte() % 2 == 1).then(|| serde_bytes::ByteBuf::from(ops.bytes(64))),
                retry: ops.byte() % 2 == 1,
            })),
            1 => Some(Message::Cancel(Cancel { id: ops.u64() })),
            2 => Some(Message::CapRequest(CapRequest {
                tools: vec![ops.text(), ops.text()],
                grants: vec![String::from_utf8_lossy(&ops.bytes(200)).into_owned()],
            })),
            3 => Some(Message::Ping(Ping { nonce: ops.u64() })),
            4 => Some(match ops.byte() % 5 {
                0 => Message::Response(Response {
                    id: ops.u64(),
                    result: serde_bytes::ByteBuf::from(ops.bytes(32)),
                    signature: None,
                }),
                1 => Message::StreamItem(StreamItem {
                    id: ops.u64(),
                    index: ops.u64(),
                    data: serde_bytes::ByteBuf::from(ops.bytes(32)),
                }),
                2 => Message::Error(ErrorMessage {
                    id: (ops.byte() % 2 == 1).then(|| ops.u64()),
                    code: u32::try_from(ops.u64() & 0xffff).unwrap_or(0),
                    message: ops.text(),
                    retry_after_ms: (ops.byte() % 2 == 1).then(|| ops.u64()),
                }),
                3 => Message::Pong(Ping { nonce: ops.u64() }),
                _ => Message::Close(Close {
                    code: u16::try_from(ops.u64() & 0xffff).unwrap_or(0),
                    reason: ops.text(),
                }),
            }),
            _ => None,
        };
        let mut record = None;
        if let Some(message) = message {
            if testing::send_any_kind_for_testing_only(&mut client, now, message).is_ok() {
                record = client.poll_transmit();
            }
        } else {
            match op {
                5 => record = Some(ops.bytes(255)),
                6 => {
                    if !sent.is_empty() {
                        let index = usize::from(ops.byte()) % sent.len();
                        record = Some(sent[index].clone());
                    }
                }
                7 | 8 => {
                    // A genuine PING record, then bit-flipped (7) or truncated (8).
                    let nonce = ops.u64();
                    if testing::send_any_kind_for_testing_only(
                        &mut client,
                        now,
                        Message::Ping(Ping { nonce }),
                    )
                    .is_ok()
                    {
                        if let Some(mut bytes) = client.poll_transmit() {
                            let at = usize::try_from(ops.u64()).unwrap_or(0);
                            if !bytes.is_empty() {
                                if op == 7 {
                                    let bit = at % (bytes.len() * 8);
                                    bytes[bit / 8] ^= 1 << (bit % 8);
                                } else {
                                    bytes.truncate(at % bytes.len());
                                }
                            }
                            record = Some(bytes);
                        }
                    }
                }
                9 => {
                    // Time passes: up to ~7 minutes, past keepalive (30 s), rekey (5
                    // min) and, summed over ops, idle (90 s) and lifetime deadlines.
                    now += std::time::Duration::from_millis(ops.u64() % 420_000);
                    let _ = client.handle_timeout(now);
                    if server.handle_timeout(now).is_err() {
                        assert!(server.is_closed() && server.close_code().is_some());
                    }
                    while let Some(bytes) = client.poll_transmit() {
                        sent.push(bytes.clone());
                        deliver(&mut server, &mut client, now, &bytes);
                    }
                }
                10 => {
                    let plaintext = ops.bytes(255);
                    record = testing::seal_raw_for_testing_only(&mut client, &plaintext);
                }
                _ => {
                    // Swap: hold the next genuine record and deliver it after the one
                    // following it.
                    if let Some(previous) = held.take() {
                        record = Some(previous);
                    } else if testing::send_any_kind_for_testing_only(
                        &mut client,
                        now,
                        Message::Ping(Ping { nonce: ops.u64() }),
                    )
                    .is_ok()
                    {
                        held = client.poll_transmit();
                    }
                }
            }
        }
        // Anything else the client queued (a KEY_UPDATE before the record) goes first.
        let mut queue: Vec<Vec<u8>> = Vec::new();
        while let Some(bytes) = client.poll_transmit() {
            queue.push(bytes);
        }
        if let Some(record) = record {
            queue.insert(0, record);
        }
        for bytes in queue {
            sent.push(bytes.clone());
            if sent.len() > 256 {
                sent.remove(0);
            }
            deliver(&mut server, &mut client, now, &bytes);
        }
        if was_closed {
            assert!(server.is_closed(), "a closed connection stays closed");
        }
    }
}

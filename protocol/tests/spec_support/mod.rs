//! Shared helpers of the `spec_*` conformance tests: a msgpack writer that can spell
//! every encoding (also the ones the reference never produces), a small msgpack
//! reader that exposes the wire types, hand-driven Noise peers that put arbitrary
//! payloads into handshake messages, and a wiretap that derives the transport keys
//! of a handshake from the fixed test secrets so a test can read sealed records.

// Each test crate uses a different part of these helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use toolwire_protocol::handshake::prologue;
use toolwire_protocol::noise::{self, HandshakeState, KeyPair, Role};
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN};
use toolwire_protocol::testing::{self, FixedPeers};
use toolwire_protocol::{ClientConfig, ServerConfig, SUBPROTOCOL};

// ---------------------------------------------------------------------------------
// msgpack writer
// ---------------------------------------------------------------------------------

/// msgpack encodings, byte by byte.
pub mod mp {
    /// nil.
    pub fn nil() -> Vec<u8> {
        vec![0xc0]
    }

    /// true / false.
    pub fn boolean(value: bool) -> Vec<u8> {
        vec![if value { 0xc3 } else { 0xc2 }]
    }

    /// An unsigned integer in its shortest form.
    pub fn uint(value: u64) -> Vec<u8> {
        match value {
            0..=0x7f => vec![value as u8],
            0x80..=0xff => vec![0xcc, value as u8],
            0x100..=0xffff => u16_form(value as u16),
            0x1_0000..=0xffff_ffff => u32_form(value as u32),
            _ => u64_form(value),
        }
    }

    /// uint 8.
    pub fn u8_form(value: u8) -> Vec<u8> {
        vec![0xcc, value]
    }

    /// uint 16.
    pub fn u16_form(value: u16) -> Vec<u8> {
        let mut out = vec![0xcd];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// uint 32.
    pub fn u32_form(value: u32) -> Vec<u8> {
        let mut out = vec![0xce];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// uint 64.
    pub fn u64_form(value: u64) -> Vec<u8> {
        let mut out = vec![0xcf];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// int 8.
    pub fn i8_form(value: i8) -> Vec<u8> {
        vec![0xd0, value as u8]
    }

    /// int 16.
    pub fn i16_form(value: i16) -> Vec<u8> {
        let mut out = vec![0xd1];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// int 32.
    pub fn i32_form(value: i32) -> Vec<u8> {
        let mut out = vec![0xd2];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// int 64.
    pub fn i64_form(value: i64) -> Vec<u8> {
        let mut out = vec![0xd3];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// A negative fixint (−32..=−1).
    pub fn negative_fixint(value: i8) -> Vec<u8> {
        assert!((-32..0).contains(&value));
        vec![value as u8]
    }

    /// float 64.
    pub fn f64_form(value: f64) -> Vec<u8> {
        let mut out = vec![0xcb];
        out.extend_from_slice(&value.to_be_bytes());
        out
    }

    /// A str of arbitrary bytes (need not be UTF-8), in its shortest header.
    pub fn str_bytes(bytes: &[u8]) -> Vec<u8> {
        let mut out = match bytes.len() {
            0..=31 => vec![0xa0 | bytes.len() as u8],
            32..=0xff => vec![0xd9, bytes.len() as u8],
            0x100..=0xffff => {
                let mut out = vec![0xda];
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out
            }
            _ => {
                let mut out = vec![0xdb];
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out
            }
        };
        out.extend_from_slice(bytes);
        out
    }

    /// A str.
    pub fn str(text: &str) -> Vec<u8> {
        str_bytes(text.as_bytes())
    }

    /// A bin in its shortest header.
    pub fn bin(bytes: &[u8]) -> Vec<u8> {
        let mut out = match bytes.len() {
            0..=0xff => vec![0xc4, bytes.len() as u8],
            0x100..=0xffff => {
                let mut out = vec![0xc5];
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out
            }
            _ => {
                let mut out = vec![0xc6];
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out
            }
        };
        out.extend_from_slice(bytes);
        out
    }

    /// A bin with a bin 16 header whatever its length.
    pub fn bin16(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc5];
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// A bin with a bin 32 header whatever its length.
    pub fn bin32(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc6];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// An ext value (fixext 1/2/4/8/16 when the length fits, else ext 8).
    pub fn ext(kind: i8, data: &[u8]) -> Vec<u8> {
        let mut out = match data.len() {
            1 => vec![0xd4],
            2 => vec![0xd5],
            4 => vec![0xd6],
            8 => vec![0xd7],
            16 => vec![0xd8],
            len => vec![0xc7, len as u8],
        };
        out.push(kind as u8);
        out.extend_from_slice(data);
        out
    }

    /// An array of encoded elements.
    pub fn array(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut out = if elements.len() < 16 {
            vec![0x90 | elements.len() as u8]
        } else {
            let mut out = vec![0xdc];
            out.extend_from_slice(&(elements.len() as u16).to_be_bytes());
            out
        };
        for element in elements {
            out.extend_from_slice(element);
        }
        out
    }

    /// A map of encoded keys and values, in the order given.
    pub fn map_raw(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = if entries.len() < 16 {
            vec![0x80 | entries.len() as u8]
        } else {
            let mut out = vec![0xde];
            out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
            out
        };
        for (key, value) in entries {
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        }
        out
    }

    /// A map with str keys, in the order given.
    pub fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .map(|(key, value)| (str(key), value.clone()))
            .collect();
        map_raw(&entries)
    }

    /// An inner message `{"type": kind, "body": body}`.
    pub fn message(kind: &str, body: Vec<u8>) -> Vec<u8> {
        map(&[("type", str(kind)), ("body", body)])
    }

    /// `depth` nested one-element arrays around nil: `depth` levels.
    pub fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut out = vec![0x91; depth];
        out.push(0xc0);
        out
    }
}

// ---------------------------------------------------------------------------------
// msgpack reader
// ---------------------------------------------------------------------------------

/// A decoded msgpack value that keeps the wire type.
#[derive(Debug, Clone, PartialEq)]
pub enum Mp {
    /// nil.
    Nil,
    /// bool.
    Bool(bool),
    /// A non-negative integer (any format).
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// float 32 or 64.
    Float(f64),
    /// str (the raw bytes).
    Str(Vec<u8>),
    /// bin.
    Bin(Vec<u8>),
    /// array.
    Array(Vec<Mp>),
    /// map, in wire order.
    Map(Vec<(Mp, Mp)>),
    /// ext.
    Ext(i8, Vec<u8>),
}

impl Mp {
    /// The value under str key `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Mp> {
        match self {
            Mp::Map(entries) => entries
                .iter()
                .find(|(k, _)| *k == Mp::Str(key.as_bytes().to_vec()))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// The keys of a map, as text, in wire order; panics unless every key is a str.
    pub fn str_keys(&self) -> Vec<String> {
        match self {
            Mp::Map(entries) => entries
                .iter()
                .map(|(key, _)| match key {
                    Mp::Str(bytes) => String::from_utf8(bytes.clone()).expect("UTF-8 key"),
                    other => panic!("map key is not a str: {other:?}"),
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    }
}

/// Reads one msgpack value from the front of `bytes`; returns it and its length.
pub fn read_one(bytes: &[u8]) -> Result<(Mp, usize), String> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value()?;
    Ok((value, reader.at))
}

/// Reads exactly one msgpack value spanning all of `bytes`.
pub fn read_exactly_one(bytes: &[u8]) -> Result<Mp, String> {
    let (value, used) = read_one(bytes)?;
    if used == bytes.len() {
        Ok(value)
    } else {
        Err(format!("{} trailing bytes", bytes.len() - used))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(len).ok_or("length overflow")?;
        let slice = self.bytes.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(slice)
    }

    fn be(&mut self, len: usize) -> Result<u64, String> {
        Ok(self
            .take(len)?
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)))
    }

    fn value(&mut self) -> Result<Mp, String> {
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Mp::UInt(u64::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f))?,
            0xa0..=0xbf => Mp::Str(self.take(usize::from(marker & 0x1f))?.to_vec()),
            0xc0 => Mp::Nil,
            0xc2 => Mp::Bool(false),
            0xc3 => Mp::Bool(true),
            0xc4..=0xc6 => {
                let len = self.be(1 << (marker - 0xc4))? as usize;
                Mp::Bin(self.take(len)?.to_vec())
            }
            0xc7..=0xc9 => {
                let len = self.be(1 << (marker - 0xc7))? as usize;
                let kind = self.take(1)?[0] as i8;
                Mp::Ext(kind, self.take(len)?.to_vec())
            }
            0xca => Mp::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Mp::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Mp::UInt(self.be(1 << (marker - 0xcc))?),
            0xd0..=0xd3 => {
                let width = 1usize << (marker - 0xd0);
                let raw = self.be(width)?;
                let shift = 64 - 8 * width as u32;
                let value = ((raw << shift) as i64) >> shift;
                if value >= 0 {
                    Mp::UInt(value as u64)
                } else {
                    Mp::Int(value)
                }
            }
            0xd4..=0xd8 => {
                let len = 1usize << (marker - 0xd4);
                let kind = self.take(1)?[0] as i8;
                Mp::Ext(kind, self.take(len)?.to_vec())
            }
            0xd9..=0xdb => {
                let len = self.be(1 << (marker - 0xd9))? as usize;
                Mp::Str(self.take(len)?.to_vec())
            }
            0xdc | 0xdd => {
                let len = self.be(if marker == 0xdc { 2 } else { 4 })? as usize;
                self.array(len)?
            }
            0xde | 0xdf => {
                let len = self.be(if marker == 0xde { 2 } else { 4 })? as usize;
                self.map(len)?
            }
            0xe0..=0xff => Mp::Int(i64::from(marker as i8)),
            0xc1 => return Err("reserved marker 0xc1".into()),
        })
    }

    fn array(&mut self, len: usize) -> Result<Mp, String> {
        let mut items = Vec::new();
        for _ in 0..len {
            items.push(self.value()?);
        }
        Ok(Mp::Array(items))
    }

    fn map(&mut self, len: usize) -> Result<Mp, String> {
        let mut entries = Vec::new();
        for _ in 0..len {
            let key = self.value()?;
            let value = self.value()?;
            entries.push((key, value));
        }
        Ok(Mp::Map(entries))
    }
}

// ---------------------------------------------------------------------------------
// Hand-driven handshakes
// ---------------------------------------------------------------------------------

/// A handshake record of `record_type` carrying `message`.
pub fn handshake_record(record_type: RecordType, message: &[u8]) -> Vec<u8> {
    let mut record = RecordHeader::handshake(record_type).encode().to_vec();
    record.extend_from_slice(message);
    record
}

/// Static secret of hand-driven peers.
pub const MANUAL_STATIC: [u8; 32] = [0x71; 32];
/// Ephemeral secret of hand-driven peers.
pub const MANUAL_EPHEMERAL: [u8; 32] = [0x72; 32];

/// A hand-driven Noise initiator: the test chooses every payload.
pub struct ManualInitiator {
    /// The Noise state.
    pub noise: HandshakeState,
}

impl ManualInitiator {
    /// An initiator bound to `endpoint`; returns it and record 1.
    pub fn start(endpoint: &str) -> (Self, Vec<u8>) {
        Self::start_with_prologue(&prologue(endpoint, SUBPROTOCOL))
    }

    /// An initiator with an arbitrary prologue; returns it and record 1.
    pub fn start_with_prologue(prologue: &[u8]) -> (Self, Vec<u8>) {
        let mut noise = HandshakeState::new(
            Role::Initiator,
            prologue,
            KeyPair::from_secret_bytes(MANUAL_STATIC),
            KeyPair::from_secret_bytes(MANUAL_EPHEMERAL),
        );
        let mut message = Vec::new();
        noise.write_message(&[], &mut message).expect("message 1");
        (
            Self { noise },
            handshake_record(RecordType::HANDSHAKE_1, &message),
        )
    }

    /// The static public key message 3 will carry.
    pub fn static_public(&self) -> [u8; 32] {
        self.noise.local_static_public()
    }

    /// Reads record 2 and returns its decrypted payload.
    pub fn read_record_2(&mut self, record: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        self.noise
            .read_message(&record[HEADER_LEN..], &mut payload)
            .expect("record 2 decrypts");
        payload
    }

    /// Record 3 carrying `payload` (any bytes).
    pub fn record_3(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        self.noise
            .write_message(payload, &mut message)
            .expect("message 3");
        handshake_record(RecordType::HANDSHAKE_3, &message)
    }
}

/// A hand-driven Noise responder: the test chooses the payload of message 2.
pub struct ManualResponder {
    /// The Noise state.
    pub noise: HandshakeState,
}

impl ManualResponder {
    /// A responder bound to `endpoint` that has read record 1.
    pub fn after_record_1(endpoint: &str, record_1: &[u8]) -> Self {
        let mut noise = HandshakeState::new(
            Role::Responder,
            &prologue(endpoint, SUBPROTOCOL),
            KeyPair::from_secret_bytes(MANUAL_STATIC),
            KeyPair::from_secret_bytes(MANUAL_EPHEMERAL),
        );
        noise
            .read_message(&record_1[HEADER_LEN..], &mut Vec::new())
            .expect("record 1");
        Self { noise }
    }

    /// The static public key message 2 carries.
    pub fn static_public(&self) -> [u8; 32] {
        self.noise.local_static_public()
    }

    /// Record 2 carrying `payload` (any bytes).
    pub fn record_2(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        self.noise
            .write_message(payload, &mut message)
            .expect("message 2");
        handshake_record(RecordType::HANDSHAKE_2, &message)
    }
}

// ---------------------------------------------------------------------------------
// Wiretap
// ---------------------------------------------------------------------------------

/// What a wiretap holding both sides' secrets learns from the three handshake
/// records of the fixed peers (fixed ephemerals): payloads, hash and split keys.
pub struct Tap {
    /// Decrypted payload of message 2 (the ServerHello).
    pub payload_2: Vec<u8>,
    /// Decrypted payload of message 3 (the ClientHello).
    pub payload_3: Vec<u8>,
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
    /// `k1` of Split(): client → server.
    pub client_to_server: [u8; 32],
    /// `k2` of Split(): server → client.
    pub server_to_client: [u8; 32],
    /// The server's Noise static public key, as carried in message 2.
    pub server_static: [u8; 32],
    /// The client's Noise static public key, as carried in message 3.
    pub client_static: [u8; 32],
}

/// Replays the handshake `records` of the fixed peers (with the fixed ephemerals of
/// `testing`) through bare Noise states and returns what they derive.
pub fn tap(peers: &FixedPeers, endpoint: &str, records: &[Vec<u8>; 3]) -> Tap {
    tap_configs(
        &peers.client_config,
        &peers.server_config,
        endpoint,
        records,
    )
}

/// Replays the handshake `records` of a client and a server built from these
/// configurations with the fixed ephemerals of `testing` (as `common::Pair::start`
/// does) through bare Noise states and returns what they derive.
pub fn tap_configs(
    client_config: &ClientConfig,
    server_config: &ServerConfig,
    endpoint: &str,
    records: &[Vec<u8>; 3],
) -> Tap {
    let client_static = testing::client_static_secret_for_testing_only(client_config);
    let server_static = testing::server_static_secret_for_testing_only(server_config);
    let prologue = prologue(endpoint, SUBPROTOCOL);
    let mut initiator = HandshakeState::new(
        Role::Initiator,
        &prologue,
        KeyPair::from_secret_bytes(client_static),
        KeyPair::from_secret_bytes(testing::FIXED_CLIENT_EPHEMERAL),
    );
    let mut responder = HandshakeState::new(
        Role::Responder,
        &prologue,
        KeyPair::from_secret_bytes(server_static),
        KeyPair::from_secret_bytes(testing::FIXED_SERVER_EPHEMERAL),
    );
    let mut scratch = Vec::new();
    initiator.write_message(&[], &mut scratch).expect("msg 1");
    assert_eq!(scratch, records[0][HEADER_LEN..], "record 1 reproduced");
    responder
        .read_message(&records[0][HEADER_LEN..], &mut Vec::new())
        .expect("read 1");
    let mut payload_2 = Vec::new();
    initiator
        .read_message(&records[1][HEADER_LEN..], &mut payload_2)
        .expect("read 2");
    let mut reproduced = Vec::new();
    responder
        .write_message(&payload_2, &mut reproduced)
        .expect("write 2");
    assert_eq!(reproduced, records[1][HEADER_LEN..], "record 2 reproduced");
    let mut payload_3 = Vec::new();
    responder
        .read_message(&records[2][HEADER_LEN..], &mut payload_3)
        .expect("read 3");
    initiator
        .write_message(&payload_3, &mut Vec::new())
        .expect("write 3");
    let handshake_hash = initiator.handshake_hash();
    assert_eq!(handshake_hash, responder.handshake_hash());
    let server_static = initiator.remote_static().expect("server static");
    let client_static = responder.remote_static().expect("client static");
    let (client_to_server, server_to_client) = initiator.split().expect("split");
    Tap {
        payload_2,
        payload_3,
        handshake_hash,
        client_to_server: *client_to_server,
        server_to_client: *server_to_client,
        server_static,
        client_static,
    }
}

/// The key of `epoch` of a direction whose epoch-0 key is `initial`, by the
/// definition of REKEY (ChaCha20-Poly1305 of 32 zero bytes at nonce 2^64 − 1),
/// computed with the `chacha20poly1305` crate directly.
pub fn epoch_key(initial: [u8; 32], epoch: u32) -> [u8; 32] {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let mut key = initial;
    for _ in 0..epoch {
        let cipher = chacha20poly1305::ChaCha20Poly1305::new((&key).into());
        let mut buffer = [0u8; 32];
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&u64::MAX.to_le_bytes());
        cipher
            .encrypt_in_place_detached((&nonce).into(), &[], &mut buffer)
            .expect("encrypts");
        key = buffer;
    }
    key
}

/// Opens a sealed record with the `chacha20poly1305` crate directly: nonce = four
/// zero bytes ‖ u64le(header seq), associated data = the 16 header bytes.
pub fn open_record(key: &[u8; 32], record: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let (header, body) = record.split_at(HEADER_LEN);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&header[8..16]);
    chacha20poly1305::ChaCha20Poly1305::new(key.into())
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: body,
                aad: header,
            },
        )
        .ok()
}

/// `noise::seal` under `key` at `seq` with `header` as associated data: a sealed
/// record built from the definition, for records the sender would never make.
pub fn seal_record(key: &[u8; 32], header: [u8; HEADER_LEN], plaintext: &[u8]) -> Vec<u8> {
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let mut record = header.to_vec();
    noise::seal(key, seq, &header, plaintext, &mut record);
    record
}

/// A sealed-record header.
pub fn sealed_header(epoch: u32, seq: u64) -> [u8; HEADER_LEN] {
    RecordHeader {
        version: 1,
        record_type: RecordType::SEALED,
        reserved: 0,
        epoch,
        seq,
    }
    .encode()
}

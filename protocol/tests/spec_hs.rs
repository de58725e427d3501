//! Spec sections 3 and 4, "Identities" (ID) and "Handshake" (HS), in memory: the
//! prologue and the identity proofs computed from their definitions, every check of
//! records 2 and 3 alone and in pairs (the first failing check decides the close
//! code), and what a failed handshake leaves on the wire (nothing).
//!
//! Impostor peers are hand-driven Noise states (`spec_support`) that put crafted
//! ServerHello / ClientHello payloads into genuine Noise messages.

mod common;
mod spec_support;

use common::*;
use ed25519_dalek::{Signature, VerifyingKey};
use spec_support::{mp, read_exactly_one, tap_configs, ManualInitiator, ManualResponder, Mp};
use toolwire_protocol::error::{AuthFailure, Malformed};
use toolwire_protocol::handshake::{
    static_binding_message, CLIENT_STATIC_DOMAIN, SERVER_STATIC_DOMAIN,
};
use toolwire_protocol::noise::{self, HandshakeState, KeyPair};
use toolwire_protocol::record::{DEFAULT_MAX_BODY_LEN, HEADER_LEN};
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Identity, Side};

const BAD_PAYLOAD: Error = Error::Malformed(Malformed::HandshakePayload);
const BAD_MESSAGE: Error = Error::Malformed(Malformed::HandshakeMessage);
const INVALID_KEY: Error = Error::AuthFailed(AuthFailure::InvalidIdentityKey);
const BAD_SIGNATURE: Error = Error::AuthFailed(AuthFailure::BadIdentitySignature);

/// `PAE(pieces)` written out from its definition: LE64(n) ‖ (LE64(len) ‖ piece)*.
fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = (pieces.len() as u64).to_le_bytes().to_vec();
    for piece in pieces {
        out.extend_from_slice(&(piece.len() as u64).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// The group order L of Ed25519, little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The same signature with S replaced by S + L: valid under a lax verifier, refused
/// by a strict one.
fn malleated(signature: [u8; 64]) -> [u8; 64] {
    let mut out = signature;
    let mut carry = 0u16;
    for (index, byte) in GROUP_ORDER.iter().enumerate() {
        let sum = u16::from(signature[32 + index]) + u16::from(*byte) + carry;
        out[32 + index] = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// The Ed25519 identity point (order 1).
fn identity_point() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[0] = 1;
    key
}

fn server_identity() -> Identity {
    Identity::from_seed(&[0x53; 32])
}

fn client_identity() -> Identity {
    Identity::from_seed(&[0x43; 32])
}

fn stranger() -> Identity {
    Identity::from_seed(&[0x99; 32])
}

// ---------------------------------------------------------------------------------
// Prologue and identity proofs
// ---------------------------------------------------------------------------------

/// Clauses: HS-003 — a hand-driven client whose prologue is PAE("toolwire/1",
/// endpoint, "toolwire.v1"), written out byte by byte, completes the handshake with
/// a real server; one byte different in any piece and record 2 does not decrypt.
#[test]
fn the_prologue_is_the_pae_of_label_endpoint_and_subprotocol() {
    let genuine = pae(&[b"toolwire/1", ENDPOINT.as_bytes(), b"toolwire.v1"]);
    let endpoint_v2 = ENDPOINT.replace("toolwire", "toolwirf");
    let variants: Vec<(&str, Vec<u8>, bool)> = vec![
        ("genuine", genuine.clone(), true),
        (
            "other label",
            pae(&[b"toolwire/2", ENDPOINT.as_bytes(), b"toolwire.v1"]),
            false,
        ),
        (
            "other endpoint",
            pae(&[b"toolwire/1", endpoint_v2.as_bytes(), b"toolwire.v1"]),
            false,
        ),
        (
            "other subprotocol",
            pae(&[b"toolwire/1", ENDPOINT.as_bytes(), b"toolwire.v2"]),
            false,
        ),
        (
            "pieces concatenated without PAE",
            [
                b"toolwire/1".as_slice(),
                ENDPOINT.as_bytes(),
                b"toolwire.v1",
            ]
            .concat(),
            false,
        ),
    ];
    for (name, prologue, accepted) in variants {
        let mut pair = Pair::start(&Peers::default_configs());
        pair.take_one_from_client();
        let (mut manual, record_1) = ManualInitiator::start_with_prologue(&prologue);
        pair.deliver_to_server(&record_1).expect("record 1");
        let record_2 = pair.take_one_from_server();
        let decrypted = manual
            .noise
            .read_message(&record_2[HEADER_LEN..], &mut Vec::new());
        assert_eq!(decrypted.is_ok(), accepted, "{name}");
    }
}

fn run_handshake_capturing(peers: &Peers) -> (Pair, [Vec<u8>; 3]) {
    let mut pair = Pair::start(peers);
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1).expect("record 1");
    let record_2 = pair.take_one_from_server();
    pair.deliver_to_client(&record_2).expect("record 2");
    let record_3 = pair.take_one_from_client();
    pair.deliver_to_server(&record_3).expect("record 3");
    (pair, [record_1, record_2, record_3])
}

fn bin_field(value: &Mp, key: &str) -> Vec<u8> {
    match value.get(key) {
        Some(Mp::Bin(bytes)) => bytes.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn uint_field(value: &Mp, key: &str) -> u64 {
    match value.get(key) {
        Some(Mp::UInt(n)) => *n,
        other => panic!("{key}: {other:?}"),
    }
}

/// Clauses: HS-008, HS-009, HS-018, HS-019, ID-001, LIFE-002 — read by a wiretap,
/// the ServerHello carries the server's identity key and its own limits (here
/// non-default ones), and a signature that verifies, strictly and with
/// `ed25519-dalek` directly, under that key over PAE("toolwire/1 server static", s)
/// with s the static key of message 2; the ClientHello likewise carries the client
/// identity and its signature over PAE("toolwire/1 client static", s).
#[test]
fn both_hellos_carry_the_identity_and_its_proof_over_the_noise_static_key() {
    let mut server_limits = ConnectionLimits::default();
    server_limits.max_record_body = 32 * 1024;
    server_limits.session_lifetime = std::time::Duration::from_secs(600);
    server_limits.idle_timeout = std::time::Duration::from_secs(45);
    let peers = Peers::build(|server| server.with_limits(server_limits), |client| client);
    let (pair, records) = run_handshake_capturing(&peers);
    let tap = tap_configs(
        &peers.client_config,
        &peers.server_config,
        ENDPOINT,
        &records,
    );

    let server_hello = read_exactly_one(&tap.payload_2).expect("ServerHello");
    let identity = bin_field(&server_hello, "identity");
    assert_eq!(identity, server_identity().public_key().to_bytes());
    let key = VerifyingKey::from_bytes(&identity.try_into().expect("32 bytes")).expect("a key");
    let signature = bin_field(&server_hello, "signature");
    let signature = Signature::from_slice(&signature).expect("64 bytes");
    key.verify_strict(
        &pae(&[b"toolwire/1 server static", &tap.server_static]),
        &signature,
    )
    .expect("the server's proof verifies");
    let params = server_hello.get("params").expect("params");
    assert_eq!(uint_field(params, "max_record_body"), 32 * 1024);
    assert_eq!(uint_field(params, "session_lifetime_ms"), 600_000);
    assert_eq!(uint_field(params, "idle_timeout_ms"), 45_000);
    assert_eq!(
        pair.client
            .session()
            .expect("established")
            .params
            .session_lifetime_ms,
        600_000
    );

    let client_hello = read_exactly_one(&tap.payload_3).expect("ClientHello");
    let identity = bin_field(&client_hello, "identity");
    assert_eq!(identity, client_identity().public_key().to_bytes());
    let key = VerifyingKey::from_bytes(&identity.try_into().expect("32 bytes")).expect("a key");
    let signature = bin_field(&client_hello, "signature");
    let signature = Signature::from_slice(&signature).expect("64 bytes");
    key.verify_strict(
        &pae(&[b"toolwire/1 client static", &tap.client_static]),
        &signature,
    )
    .expect("the client's proof verifies");
}

/// Clauses: HS-004 — the client binds the URL it dials byte for byte: a server
/// configured with a spelling of "the same" URL that differs in case, default port,
/// trailing slash or query fails the client at record 2 with HANDSHAKE_FAILED
/// (4000); identical unusual spellings on both sides work.
#[test]
fn the_endpoint_is_bound_byte_for_byte() {
    for (client, server, works) in [
        (
            "wss://TOOLS.example/toolwire",
            "wss://tools.example/toolwire",
            false,
        ),
        (
            "wss://tools.example:443/toolwire",
            "wss://tools.example/toolwire",
            false,
        ),
        (
            "wss://tools.example/toolwire/",
            "wss://tools.example/toolwire",
            false,
        ),
        (
            "wss://tools.example/toolwire?",
            "wss://tools.example/toolwire",
            false,
        ),
        (
            "wss://tools.example/Toolwire",
            "wss://tools.example/toolwire",
            false,
        ),
        (
            "wss://TOOLS.example:443/x/?",
            "wss://TOOLS.example:443/x/?",
            true,
        ),
    ] {
        let options = PeerOptions {
            client_endpoint: client.into(),
            server_endpoint: server.into(),
            ..PeerOptions::default()
        };
        let peers = Peers::custom(&options, |s| s, |c| c);
        let mut pair = Pair::start(&peers);
        pair.flush_client_to_server()
            .expect("record 1 carries nothing to check");
        let record_2 = pair.take_one_from_server();
        let result = pair.deliver_to_client(&record_2);
        if works {
            assert_eq!(result, Ok(()), "{client} / {server}");
            pair.flush_client_to_server().expect("record 3 accepted");
            assert!(pair.server.is_established());
        } else {
            assert_eq!(result, Err(Error::HandshakeFailed), "{client} / {server}");
            assert!(pair.take_from_client().is_empty(), "no record 3");
        }
    }
}

// ---------------------------------------------------------------------------------
// Record 2 at the client
// ---------------------------------------------------------------------------------

struct ServerHelloSpec {
    /// The identity key bytes claimed.
    identity: Vec<u8>,
    /// Who signs the binding (`None`: the signature is `signature` verbatim).
    signer: Option<Identity>,
    /// Domain signed under.
    domain: &'static [u8],
    /// Signature bytes when `signer` is `None`, or a transformation of the genuine
    /// one.
    signature: Option<Vec<u8>>,
    malleate: bool,
    params: bool,
}

impl ServerHelloSpec {
    fn honest() -> Self {
        Self {
            identity: server_identity().public_key().to_bytes().to_vec(),
            signer: Some(server_identity()),
            domain: SERVER_STATIC_DOMAIN,
            signature: None,
            malleate: false,
            params: true,
        }
    }

    fn payload(&self, static_public: &[u8; 32]) -> Vec<u8> {
        let signature = match (&self.signer, &self.signature) {
            (_, Some(bytes)) => bytes.clone(),
            (Some(signer), None) => {
                let genuine = signer.sign(&static_binding_message(self.domain, static_public));
                if self.malleate {
                    malleated(genuine).to_vec()
                } else {
                    genuine.to_vec()
                }
            }
            (None, None) => vec![0; 64],
        };
        let mut entries = vec![
            ("identity", mp::bin(&self.identity)),
            ("signature", mp::bin(&signature)),
        ];
        if self.params {
            entries.push((
                "params",
                mp::map(&[
                    ("max_record_body", mp::uint(65_536)),
                    ("session_lifetime_ms", mp::uint(3_720_000)),
                    ("idle_timeout_ms", mp::uint(90_000)),
                ]),
            ));
        }
        mp::map(&entries)
    }
}

/// The real client's verdict on a record 2 from a hand-driven server.
fn client_verdict(
    record_2: impl FnOnce(&mut ManualResponder) -> Vec<u8>,
) -> (Pair, Result<(), Error>) {
    let mut pair = Pair::start(&Peers::default_configs());
    let record_1 = pair.take_one_from_client();
    let mut manual = ManualResponder::after_record_1(ENDPOINT, &record_1);
    let record = record_2(&mut manual);
    let result = pair.deliver_to_client(&record);
    (pair, result)
}

/// Asserts that the client failed with `expected` and sent nothing (no record 3:
/// HS-017; no CLOSE: no keys exist, HS-034).
#[track_caller]
fn assert_client_refused(mut pair: Pair, result: Result<(), Error>, expected: &Error, what: &str) {
    assert_eq!(result, Err(expected.clone()), "{what}");
    pair.collect();
    assert_closed(
        &pair.client,
        &pair.client_events,
        expected.close_code().expect("closes"),
        Side::Local,
        Some(expected),
    );
    assert!(pair.client.session().is_none(), "{what}: no session");
    assert!(pair.take_from_client().is_empty(), "{what}: nothing sent");
}

fn hello_verdict(spec: &ServerHelloSpec) -> (Pair, Result<(), Error>) {
    client_verdict(|manual| {
        let payload = spec.payload(&manual.static_public());
        manual.record_2(&payload)
    })
}

/// Clauses: HS-010 — message 2 shorter than 96 bytes or longer than 65535 bytes
/// closes with HANDSHAKE_FAILED (4000) (a body of 65536 bytes is within the record
/// limit, so it is Noise that refuses it).
#[test]
fn message_2_of_a_wrong_length_closes_with_handshake_failed() {
    for len in [0usize, 32, 95] {
        let (pair, result) = client_verdict(|manual| {
            let mut record = manual.record_2(&[]);
            record.truncate(HEADER_LEN + len);
            record
        });
        assert_client_refused(pair, result, &BAD_MESSAGE, &format!("{len} bytes"));
        assert_eq!(BAD_MESSAGE.close_code(), Some(CloseCode::HANDSHAKE_FAILED));
    }
    let (pair, result) = client_verdict(|manual| {
        let mut record =
            manual.record_2(&ServerHelloSpec::honest().payload(&manual.static_public()));
        record.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN, 0);
        record
    });
    assert_client_refused(pair, result, &BAD_MESSAGE, "65536 bytes");
}

/// Builds a handshake payload for a static key.
type PayloadFn = Box<dyn Fn(&[u8; 32]) -> Vec<u8>>;

/// Clauses: HS-012 — a ServerHello that is not well-formed closes with
/// HANDSHAKE_FAILED (4000) before any identity check.
#[test]
fn a_malformed_server_hello_closes_with_handshake_failed() {
    let mut no_params = ServerHelloSpec::honest();
    no_params.params = false;
    let cases: Vec<(&str, PayloadFn)> = vec![
        ("not msgpack", Box::new(|_| vec![0xc1])),
        ("nil", Box::new(|_| mp::nil())),
        ("empty payload", Box::new(|_| Vec::new())),
        ("no params", Box::new(move |s| no_params.payload(s))),
        (
            "no identity",
            Box::new(|s| {
                let signature =
                    server_identity().sign(&static_binding_message(SERVER_STATIC_DOMAIN, s));
                mp::map(&[("signature", mp::bin(&signature)), ("params", mp::map(&[]))])
            }),
        ),
    ];
    for (name, payload) in cases {
        let (pair, result) = client_verdict(|manual| {
            let bytes = payload(&manual.static_public());
            manual.record_2(&bytes)
        });
        assert_client_refused(pair, result, &BAD_PAYLOAD, name);
    }
}

/// Clauses: HS-013, ID-002 — a ServerHello identity that is not a valid identity
/// key (not 32 bytes, not a curve point, or one of the eight small-order points)
/// closes with AUTH_FAILED (4001).
#[test]
fn an_invalid_server_identity_key_closes_with_auth_failed() {
    let mut keys: Vec<(String, Vec<u8>)> = vec![
        ("31 bytes".into(), vec![0x11; 31]),
        ("33 bytes".into(), vec![0x11; 33]),
        ("empty".into(), Vec::new()),
        ("not a point".into(), not_a_point().to_vec()),
    ];
    for (index, point) in small_order_points().into_iter().enumerate() {
        keys.push((format!("small-order point {index}"), point.to_vec()));
    }
    for (name, identity) in keys {
        let spec = ServerHelloSpec {
            identity,
            signer: None,
            signature: Some(vec![0; 64]),
            ..ServerHelloSpec::honest()
        };
        let (pair, result) = hello_verdict(&spec);
        assert_client_refused(pair, result, &INVALID_KEY, &name);
    }
}

/// The encodings of the eight points of small order of edwards25519 (orders 1, 2, 4
/// and 8), as listed by ed25519-speccheck; every one is a valid curve point.
pub(crate) fn small_order_points() -> Vec<[u8; 32]> {
    [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ]
    .iter()
    .map(|text| {
        hex::decode(text)
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    })
    .collect()
}

/// y = 2: (y² − 1) / (d·y² + 1) is not a square mod p, so no x exists.
pub(crate) fn not_a_point() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[0] = 2;
    key
}

/// Clauses: HS-014, ID-004, ID-005 — a ServerHello signature that does not verify
/// strictly closes with AUTH_FAILED (4001): made by another key, over another
/// static key, under the client's domain, malleated to S + L (which a lax verifier
/// accepts), cut to 63 bytes or padded to 65.
#[test]
fn a_server_identity_proof_that_does_not_verify_strictly_closes_with_auth_failed() {
    let cases: Vec<(&str, ServerHelloSpec)> = vec![
        (
            "signed by another identity",
            ServerHelloSpec {
                signer: Some(stranger()),
                ..ServerHelloSpec::honest()
            },
        ),
        (
            "client domain",
            ServerHelloSpec {
                domain: CLIENT_STATIC_DOMAIN,
                ..ServerHelloSpec::honest()
            },
        ),
        (
            "S + L",
            ServerHelloSpec {
                malleate: true,
                ..ServerHelloSpec::honest()
            },
        ),
    ];
    for (name, spec) in cases {
        let (pair, result) = hello_verdict(&spec);
        assert_client_refused(pair, result, &BAD_SIGNATURE, name);
    }
    // Over another static key, and of the wrong length.
    let other_static = KeyPair::from_secret_bytes([0x3c; 32]).public_key();
    let genuine_over_other = server_identity()
        .sign(&static_binding_message(SERVER_STATIC_DOMAIN, &other_static))
        .to_vec();
    for (name, adjust) in [
        ("over another static key", None),
        ("63 bytes", Some(63usize)),
        ("65 bytes", Some(65)),
    ] {
        let (pair, result) = client_verdict(|manual| {
            let mut signature = match adjust {
                None => genuine_over_other.clone(),
                Some(_) => server_identity()
                    .sign(&static_binding_message(
                        SERVER_STATIC_DOMAIN,
                        &manual.static_public(),
                    ))
                    .to_vec(),
            };
            if let Some(len) = adjust {
                signature.resize(len, 0);
            }
            let spec = ServerHelloSpec {
                signer: None,
                signature: Some(signature),
                ..ServerHelloSpec::honest()
            };
            let payload = spec.payload(&manual.static_public());
            manual.record_2(&payload)
        });
        assert_client_refused(pair, result, &BAD_SIGNATURE, name);
    }
    // Control: the honest hello passes.
    let (pair, result) = hello_verdict(&ServerHelloSpec::honest());
    assert_eq!(result, Ok(()));
    assert!(pair.client.is_established());
}

/// Clauses: HS-016, HS-017, HS-013, HS-014, HS-015 — the checks of record 2 run in
/// the order malformed hello, invalid identity key, bad signature, unpinned key: a
/// hello failing two of them closes with the error of the earlier, and no record 3
/// is ever sent.
#[test]
fn record_2_checks_run_in_order() {
    let cases: Vec<(&str, ServerHelloSpec, Error)> = vec![
        (
            "no params and an invalid key",
            ServerHelloSpec {
                identity: identity_point().to_vec(),
                params: false,
                ..ServerHelloSpec::honest()
            },
            BAD_PAYLOAD,
        ),
        (
            "invalid key and a bad signature",
            ServerHelloSpec {
                identity: identity_point().to_vec(),
                signer: Some(stranger()),
                ..ServerHelloSpec::honest()
            },
            INVALID_KEY,
        ),
        (
            "unpinned key with a bad signature",
            ServerHelloSpec {
                identity: stranger().public_key().to_bytes().to_vec(),
                signer: Some(server_identity()),
                ..ServerHelloSpec::honest()
            },
            BAD_SIGNATURE,
        ),
        (
            "unpinned key with a valid proof",
            ServerHelloSpec {
                identity: stranger().public_key().to_bytes().to_vec(),
                signer: Some(stranger()),
                ..ServerHelloSpec::honest()
            },
            Error::AuthFailed(AuthFailure::UntrustedServer),
        ),
    ];
    for (name, spec, expected) in cases {
        let (pair, result) = hello_verdict(&spec);
        assert_client_refused(pair, result, &expected, name);
    }
    // Noise failures come before the payload is even looked at.
    let (pair, result) = client_verdict(|manual| {
        let mut record = manual.record_2(&[0xc1]);
        let last = record.len() - 1;
        record[last] ^= 1;
        record
    });
    assert_client_refused(pair, result, &Error::HandshakeFailed, "tampered tag");
}

// ---------------------------------------------------------------------------------
// Record 3 at the server
// ---------------------------------------------------------------------------------

struct ClientHelloSpec {
    identity: Vec<u8>,
    signer: Identity,
    domain: &'static [u8],
    malleate: bool,
    signature_len: Option<usize>,
    grants: Vec<String>,
    lineage: Option<Vec<u8>>,
    drop_signature: bool,
}

impl ClientHelloSpec {
    fn honest() -> Self {
        Self {
            identity: client_identity().public_key().to_bytes().to_vec(),
            signer: client_identity(),
            domain: CLIENT_STATIC_DOMAIN,
            malleate: false,
            signature_len: None,
            grants: Vec::new(),
            lineage: None,
            drop_signature: false,
        }
    }

    fn payload(&self, static_public: &[u8; 32]) -> Vec<u8> {
        let genuine = self
            .signer
            .sign(&static_binding_message(self.domain, static_public));
        let mut signature = if self.malleate {
            malleated(genuine).to_vec()
        } else {
            genuine.to_vec()
        };
        if let Some(len) = self.signature_len {
            signature.resize(len, 0);
        }
        let mut entries = vec![("identity", mp::bin(&self.identity))];
        if !self.drop_signature {
            entries.push(("signature", mp::bin(&signature)));
        }
        let grants: Vec<Vec<u8>> = self.grants.iter().map(|grant| mp::str(grant)).collect();
        entries.push(("cap_request", mp::map(&[("grants", mp::array(&grants))])));
        if let Some(lineage) = &self.lineage {
            entries.push(("resume", mp::map(&[("lineage", mp::bin(lineage))])));
        }
        mp::map(&entries)
    }
}

/// The verdict of a server (allowlisting the fixed client unless `allowlist` is
/// false) on record 3 from a hand-driven client.
fn server_verdict_with(
    allowlist: bool,
    record_3: impl FnOnce(&mut ManualInitiator) -> Vec<u8>,
) -> (Pair, Result<(), Error>) {
    let options = PeerOptions {
        allowlist_client: allowlist,
        ..PeerOptions::default()
    };
    let peers = Peers::custom(&options, |s| s, |c| c);
    let mut pair = Pair::start(&peers);
    pair.take_one_from_client();
    let (mut manual, record_1) = ManualInitiator::start(ENDPOINT);
    pair.deliver_to_server(&record_1).expect("record 1");
    let record_2 = pair.take_one_from_server();
    manual.read_record_2(&record_2);
    let record = record_3(&mut manual);
    let result = pair.deliver_to_server(&record);
    (pair, result)
}

fn spec_verdict(spec: &ClientHelloSpec) -> (Pair, Result<(), Error>) {
    server_verdict_with(true, |manual| {
        let payload = spec.payload(&manual.static_public());
        manual.record_3(&payload)
    })
}

/// Asserts that the server failed with `expected`, established nothing and sent
/// nothing (no keys, no CLOSE, no detail: HS-034).
#[track_caller]
fn assert_server_refused(mut pair: Pair, result: Result<(), Error>, expected: &Error, what: &str) {
    assert_eq!(result, Err(expected.clone()), "{what}");
    pair.collect();
    assert_closed(
        &pair.server,
        &pair.server_events,
        expected.close_code().expect("closes"),
        Side::Local,
        Some(expected),
    );
    assert!(pair.server.session().is_none(), "{what}: no session");
    assert!(pair.take_from_server().is_empty(), "{what}: nothing sent");
}

/// Clauses: HS-020 — message 3 shorter than 64 bytes or longer than 65535 bytes, or
/// failing to decrypt, closes with HANDSHAKE_FAILED (4000).
#[test]
fn message_3_of_a_wrong_length_or_tampered_closes_with_handshake_failed() {
    for len in [0usize, 48, 63] {
        let (pair, result) = server_verdict_with(true, |manual| {
            let mut record = manual.record_3(&[]);
            record.truncate(HEADER_LEN + len);
            record
        });
        assert_server_refused(pair, result, &BAD_MESSAGE, &format!("{len} bytes"));
    }
    let (pair, result) = server_verdict_with(true, |manual| {
        let payload = ClientHelloSpec::honest().payload(&manual.static_public());
        let mut record = manual.record_3(&payload);
        record.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN, 0);
        record
    });
    assert_server_refused(pair, result, &BAD_MESSAGE, "65536 bytes");
    let (pair, result) = server_verdict_with(true, |manual| {
        let payload = ClientHelloSpec::honest().payload(&manual.static_public());
        let mut record = manual.record_3(&payload);
        record[HEADER_LEN + 3] ^= 0x20;
        record
    });
    assert_server_refused(
        pair,
        result,
        &Error::HandshakeFailed,
        "encrypted static key altered",
    );
}

fn junk_grants(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("not-a-grant-{index}"))
        .collect()
}

/// Clauses: HS-022, HS-027, LIM-013 — nine presented grants close with HANDSHAKE_FAILED
/// (4000) whatever they contain; eight grants that all fail verification are
/// disregarded and an allowlisted client is admitted.
#[test]
fn more_than_eight_grants_fail_the_handshake_and_bad_grants_are_disregarded() {
    let (pair, result) = spec_verdict(&ClientHelloSpec {
        grants: junk_grants(9),
        ..ClientHelloSpec::honest()
    });
    assert_server_refused(pair, result, &BAD_PAYLOAD, "nine grants");
    assert_eq!(BAD_PAYLOAD.close_code(), Some(CloseCode::HANDSHAKE_FAILED));

    let (pair, result) = spec_verdict(&ClientHelloSpec {
        grants: junk_grants(8),
        ..ClientHelloSpec::honest()
    });
    assert_eq!(result, Ok(()));
    let session = pair.server.session().expect("established");
    assert!(session.grants.is_empty());
    assert_eq!(session.rejected_grants.len(), 8);
}

/// Clauses: HS-023 — a `resume` whose lineage is not exactly 16 bytes closes with
/// HANDSHAKE_FAILED (4000); 16 bytes are accepted.
#[test]
fn a_lineage_that_is_not_16_bytes_fails_the_handshake() {
    for len in [0usize, 1, 15, 17, 32] {
        let (pair, result) = spec_verdict(&ClientHelloSpec {
            lineage: Some(vec![0x1d; len]),
            ..ClientHelloSpec::honest()
        });
        assert_server_refused(
            pair,
            result,
            &BAD_PAYLOAD,
            &format!("lineage of {len} bytes"),
        );
    }
    let (pair, result) = spec_verdict(&ClientHelloSpec {
        lineage: Some(vec![0x1d; 16]),
        ..ClientHelloSpec::honest()
    });
    assert_eq!(result, Ok(()));
    assert_eq!(
        pair.server.session().expect("established").lineage,
        Some([0x1d; 16])
    );
}

/// Clauses: HS-024, ID-002 — a ClientHello identity that is not a valid identity
/// key closes with AUTH_FAILED (4001).
#[test]
fn an_invalid_client_identity_key_closes_with_auth_failed() {
    let mut keys: Vec<(String, Vec<u8>)> = vec![
        ("31 bytes".into(), vec![0x11; 31]),
        ("64 bytes".into(), vec![0x11; 64]),
        ("not a point".into(), not_a_point().to_vec()),
    ];
    for (index, point) in small_order_points().into_iter().enumerate() {
        keys.push((format!("small-order point {index}"), point.to_vec()));
    }
    for (name, identity) in keys {
        let (pair, result) = spec_verdict(&ClientHelloSpec {
            identity,
            ..ClientHelloSpec::honest()
        });
        assert_server_refused(pair, result, &INVALID_KEY, &name);
    }
}

/// Clauses: HS-025, ID-004, ID-005 — a ClientHello signature that does not verify
/// strictly (malleated to S + L, 63 or 65 bytes, under the server's domain) closes
/// with AUTH_FAILED (4001).
#[test]
fn a_client_identity_proof_that_does_not_verify_strictly_closes_with_auth_failed() {
    let cases: Vec<(&str, ClientHelloSpec)> = vec![
        (
            "S + L",
            ClientHelloSpec {
                malleate: true,
                ..ClientHelloSpec::honest()
            },
        ),
        (
            "63 bytes",
            ClientHelloSpec {
                signature_len: Some(63),
                ..ClientHelloSpec::honest()
            },
        ),
        (
            "65 bytes",
            ClientHelloSpec {
                signature_len: Some(65),
                ..ClientHelloSpec::honest()
            },
        ),
        (
            "server domain",
            ClientHelloSpec {
                domain: SERVER_STATIC_DOMAIN,
                ..ClientHelloSpec::honest()
            },
        ),
    ];
    for (name, spec) in cases {
        let (pair, result) = spec_verdict(&spec);
        assert_server_refused(pair, result, &BAD_SIGNATURE, name);
    }
    let (pair, result) = spec_verdict(&ClientHelloSpec::honest());
    assert_eq!(result, Ok(()));
    assert!(pair.server.is_established());
}

/// Clauses: HS-030, HS-021, HS-022, HS-023, HS-024, HS-025, HS-028 — the checks of
/// record 3 run in the order malformed hello, too many grants, bad lineage, invalid
/// identity key, bad signature, not admitted: a hello failing two of them closes
/// with the error of the earlier one.
#[test]
fn record_3_checks_run_in_order() {
    let invalid_identity = identity_point().to_vec();
    let cases: Vec<(&str, bool, ClientHelloSpec, Error)> = vec![
        (
            "no signature field and nine grants",
            true,
            ClientHelloSpec {
                drop_signature: true,
                grants: junk_grants(9),
                ..ClientHelloSpec::honest()
            },
            BAD_PAYLOAD,
        ),
        (
            "nine grants and an invalid key",
            true,
            ClientHelloSpec {
                grants: junk_grants(9),
                identity: invalid_identity.clone(),
                ..ClientHelloSpec::honest()
            },
            BAD_PAYLOAD,
        ),
        (
            "lineage of 3 bytes and an invalid key",
            true,
            ClientHelloSpec {
                lineage: Some(vec![1, 2, 3]),
                identity: invalid_identity.clone(),
                ..ClientHelloSpec::honest()
            },
            BAD_PAYLOAD,
        ),
        (
            "invalid key and a bad signature",
            true,
            ClientHelloSpec {
                identity: invalid_identity,
                malleate: true,
                ..ClientHelloSpec::honest()
            },
            INVALID_KEY,
        ),
        (
            "bad signature by a client that is not admitted",
            false,
            ClientHelloSpec {
                signer: stranger(),
                ..ClientHelloSpec::honest()
            },
            BAD_SIGNATURE,
        ),
        (
            "valid proof by a client that is not admitted",
            false,
            ClientHelloSpec::honest(),
            Error::AuthFailed(AuthFailure::UnknownClient),
        ),
    ];
    for (name, allowlist, spec, expected) in cases {
        let (pair, result) = server_verdict_with(allowlist, |manual| {
            let payload = spec.payload(&manual.static_public());
            manual.record_3(&payload)
        });
        assert_server_refused(pair, result, &expected, name);
    }
}

/// Clauses: HS-006, HS-007 — the client's record 1 is exactly its 32-byte
/// ephemeral public key (the same secret gives the same bytes as X25519 computes
/// them), and a server refuses any other body length with HANDSHAKE_FAILED (4000).
#[test]
fn message_1_is_exactly_the_ephemeral_key() {
    let mut pair = Pair::start(&Peers::default_configs());
    let record_1 = pair.take_one_from_client();
    let mut reference = HandshakeState::new(
        noise::Role::Initiator,
        b"any prologue",
        KeyPair::from_secret_bytes([9; 32]),
        KeyPair::from_secret_bytes(toolwire_protocol::testing::FIXED_CLIENT_EPHEMERAL),
    );
    let mut message = Vec::new();
    reference
        .write_message(&[], &mut message)
        .expect("message 1");
    assert_eq!(record_1[HEADER_LEN..], message[..]);
    assert_eq!(message.len(), 32);
    for len in [0usize, 31, 33, 64] {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record = pair.take_one_from_client();
        record.resize(HEADER_LEN + len, 0x09);
        let result = pair.deliver_to_server(&record);
        assert_server_refused(pair, result, &BAD_MESSAGE, &format!("{len} bytes"));
    }
}

//! Generator of the language-neutral test vectors in `spec/vectors/*.json`.
//!
//! Every file is built in memory from fixed keys and seeds (no randomness, no clock)
//! by running this implementation, and compared byte for byte with the committed
//! file: the test fails when regenerating would change a byte. With
//! `TOOLWIRE_REGENERATE_VECTORS=1` (see `scripts/regen-vectors.sh`) it writes the
//! files instead.
//!
//! Each invalid case states the close code it is meant to produce; generation stops
//! if the implementation disagrees, so a regression can never be written into the
//! vectors silently. `vectors_check.rs` independently replays the committed files.

#![allow(clippy::unwrap_used)] // a panic in a test is a test failure

mod vectors_support;

use serde_bytes::ByteBuf;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Instant;
use time::macros::datetime;
use time::OffsetDateTime;
use toolwire_protocol::amo::{
    Admission, AmoConfig, AtMostOnceStore as _, AtMostOnceTable, CachedOutcome, CallFingerprint,
    LineageKey, LineageOrigin,
};
use toolwire_protocol::certificate::{
    verify_server_certificate, CertificateCheck, ServerCertificateBuilder,
    CERTIFICATE_IMPLICIT_ASSERTION,
};
use toolwire_protocol::config::{ClientConfig, ConnectionLimits, ServerConfig, SUBPROTOCOL};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::grant::{
    verify_grant, GrantBuilder, VerifyContext, GRANT_IMPLICIT_ASSERTION,
};
use toolwire_protocol::handshake::{
    self, ClientHello, Resume, ServerHello, SessionParams, CLIENT_STATIC_DOMAIN,
    SERVER_STATIC_DOMAIN,
};
use toolwire_protocol::identity::{Identity, IdentityKey, KeyError};
use toolwire_protocol::message::{
    CallLimits, Cancel, CapGrant, CapRequest, CapUpdate, Close, ErrorMessage, GrantedTool,
    KeyUpdate, Message, Ping, Request, Response, SignedManifest, StreamItem,
};
use toolwire_protocol::noise::{self, HandshakeState, KeyPair, Role as NoiseRole};
use toolwire_protocol::paseto;
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN, LAST_SEQUENCE};
use toolwire_protocol::replay::{ReplayError, ReplayWindow, SEQUENCE_LIMIT};
use toolwire_protocol::testing::{
    client_config_with_static_secret_for_testing_only, client_static_secret_for_testing_only,
    client_with_fixed_ephemeral_for_testing_only, fixed_peers_for_testing_only,
    server_config_with_static_secret_for_testing_only, server_static_secret_for_testing_only,
    server_with_fixed_ephemeral_for_testing_only, set_transport_next_send_seq_for_testing_only,
    transport_from_keys_for_testing_only, FIXED_CLIENT_EPHEMERAL, FIXED_ENDPOINT,
    FIXED_SERVER_EPHEMERAL, FIXED_UNIX_TIME,
};
use toolwire_protocol::transport::Transport;
use toolwire_protocol::{CloseCode, Connection, Error, ErrorCode, Side};
use vectors_support::{
    certificate_error_name, close_code_name, error_name, grant_error_name, hex,
    receiver_from_state, ReceiverState, FILES, VECTORS_DIR,
};

// ---------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------

#[test]
fn vectors_are_up_to_date() {
    let regenerate = std::env::var("TOOLWIRE_REGENERATE_VECTORS").is_ok_and(|v| v == "1");
    let files = generate_all();
    // Generation must be a pure function of the fixed inputs.
    assert!(
        files == generate_all(),
        "vector generation is not deterministic"
    );
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, FILES, "FILES and the generator disagree");

    let mut stale = Vec::new();
    for (name, generated) in &files {
        let path = format!("{VECTORS_DIR}{name}");
        let committed = std::fs::read_to_string(&path).ok();
        if committed.as_deref() == Some(generated.as_str()) {
            continue;
        }
        if regenerate {
            std::fs::create_dir_all(VECTORS_DIR).unwrap();
            std::fs::write(&path, generated).unwrap();
            eprintln!("wrote {path}");
            continue;
        }
        stale.push(match committed {
            None => format!("spec/vectors/{name}: missing"),
            Some(committed) => format!(
                "spec/vectors/{name}: differs; {}",
                first_difference(&committed, generated)
            ),
        });
    }
    assert!(
        stale.is_empty(),
        "committed vectors are stale (run scripts/regen-vectors.sh):\n{}",
        stale.join("\n")
    );
}

fn first_difference(committed: &str, generated: &str) -> String {
    let mut committed_lines = committed.lines();
    let mut generated_lines = generated.lines();
    let mut line = 1;
    loop {
        match (committed_lines.next(), generated_lines.next()) {
            (Some(a), Some(b)) if a == b => line += 1,
            (None, None) => return "only line endings differ".to_owned(),
            (a, b) => {
                return format!(
                    "first differing line {line}:\n  committed: {}\n  generated: {}",
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>")
                )
            }
        }
    }
}

fn generate_all() -> Vec<(&'static str, String)> {
    vec![
        ("handshake.json", handshake_file()),
        ("record.json", record_file()),
        ("replay_window.json", replay_window_file()),
        ("rekey.json", rekey_file()),
        ("envelope.json", envelope_file()),
        ("grant.json", grant_file()),
        ("messages.json", messages_file()),
        ("certificate.json", certificate_file()),
        ("at_most_once.json", at_most_once_file()),
    ]
}

/// Assembles one file: numbers the tests, counts them, checks that every flag used is
/// explained in `notes`, and pretty-prints with sorted keys.
fn finish(area: &str, header: &[&str], notes: &[(&str, &str)], mut groups: Vec<Value>) -> String {
    let mut next = 1u64;
    for group in &mut groups {
        for test in group["tests"].as_array_mut().unwrap() {
            for flag in test["flags"].as_array().unwrap() {
                let flag = flag.as_str().unwrap();
                assert!(
                    notes.iter().any(|(name, _)| *name == flag),
                    "{area}: flag {flag} has no note"
                );
            }
            test["tcId"] = json!(next);
            next += 1;
        }
    }
    let notes: serde_json::Map<String, Value> = notes
        .iter()
        .map(|(name, text)| ((*name).to_owned(), json!(text)))
        .collect();
    let document = json!({
        "algorithm": format!("toolwire/1 {area}"),
        "schema": format!("toolwire_{area}_schema_v1"),
        "generatorVersion": "1",
        "numberOfTests": next - 1,
        "header": header,
        "notes": notes,
        "testGroups": groups,
    });
    let mut text = serde_json::to_string_pretty(&document).unwrap();
    text.push('\n');
    text
}

/// 32 bytes derived from a label, for keys and ids that need no special structure.
fn label(name: &str) -> [u8; 32] {
    Sha256::digest(format!("toolwire/1 test vectors: {name}")).into()
}

fn identity_public(seed: [u8; 32]) -> [u8; 32] {
    Identity::from_seed(&seed).public_key().to_bytes()
}

fn x25519_public(secret: [u8; 32]) -> [u8; 32] {
    KeyPair::from_secret_bytes(secret).public_key()
}

fn flip(bytes: &[u8], index: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[index] ^= mask;
    out
}

fn intended(error: &Error, code: CloseCode, what: &str) {
    assert_eq!(
        error.close_code(),
        Some(code),
        "{what}: implementation gave {error:?}"
    );
}

// ---------------------------------------------------------------------------------
// handshake.json
// ---------------------------------------------------------------------------------

#[derive(Clone)]
struct ClientSpec {
    seed: [u8; 32],
    static_secret: [u8; 32],
    ephemeral: [u8; 32],
    endpoint: String,
    trusted_servers: Vec<[u8; 32]>,
    tools: Vec<String>,
    grants: Vec<String>,
    lineage: Option<[u8; 16]>,
}

impl ClientSpec {
    fn config(&self) -> Arc<ClientConfig> {
        let trusted = self
            .trusted_servers
            .iter()
            .map(|key| IdentityKey::from_bytes(*key).unwrap())
            .collect();
        let mut config = client_config_with_static_secret_for_testing_only(
            Identity::from_seed(&self.seed),
            trusted,
            &self.endpoint,
            self.static_secret,
        )
        .with_cap_request(CapRequest {
            tools: self.tools.clone(),
            grants: self.grants.clone(),
        });
        if let Some(lineage) = self.lineage {
            config = config.with_lineage(lineage);
        }
        Arc::new(config)
    }

    fn connection(&self) -> Connection {
        client_with_fixed_ephemeral_for_testing_only(self.config(), self.ephemeral, Instant::now())
    }

    fn prologue(&self) -> Vec<u8> {
        handshake::prologue(&self.endpoint, SUBPROTOCOL)
    }

    fn noise(&self) -> HandshakeState {
        HandshakeState::new(
            NoiseRole::Initiator,
            &self.prologue(),
            KeyPair::from_secret_bytes(self.static_secret),
            KeyPair::from_secret_bytes(self.ephemeral),
        )
    }

    fn json(&self) -> Value {
        json!({
            "identitySeed": hex(self.seed),
            "identityPublicKey": hex(identity_public(self.seed)),
            "staticPrivateKey": hex(self.static_secret),
            "staticPublicKey": hex(x25519_public(self.static_secret)),
            "ephemeralPrivateKey": hex(self.ephemeral),
            "ephemeralPublicKey": hex(x25519_public(self.ephemeral)),
            "endpoint": self.endpoint,
            "prologue": hex(self.prologue()),
            "trustedServers": self.trusted_servers.iter().map(hex).collect::<Vec<_>>(),
            "capRequest": { "tools": self.tools, "grants": self.grants },
            "lineage": self.lineage.map(hex),
        })
    }
}

#[derive(Clone)]
struct ServerSpec {
    seed: [u8; 32],
    static_secret: [u8; 32],
    ephemeral: [u8; 32],
    endpoint: String,
    allowed_clients: Vec<[u8; 32]>,
    grant_issuers: Vec<[u8; 32]>,
    unix_time: i64,
}

impl ServerSpec {
    fn config(&self) -> Arc<ServerConfig> {
        let keys = |keys: &[[u8; 32]]| -> Vec<IdentityKey> {
            keys.iter()
                .map(|key| IdentityKey::from_bytes(*key).unwrap())
                .collect()
        };
        Arc::new(
            server_config_with_static_secret_for_testing_only(
                Identity::from_seed(&self.seed),
                &self.endpoint,
                self.static_secret,
            )
            .allow_clients(keys(&self.allowed_clients))
            .trust_grant_issuers(keys(&self.grant_issuers)),
        )
    }

    fn connection(&self) -> Connection {
        server_with_fixed_ephemeral_for_testing_only(
            self.config(),
            self.ephemeral,
            Instant::now(),
            self.unix_time,
        )
    }

    fn prologue(&self) -> Vec<u8> {
        handshake::prologue(&self.endpoint, SUBPROTOCOL)
    }

    fn noise(&self) -> HandshakeState {
        HandshakeState::new(
            NoiseRole::Responder,
            &self.prologue(),
            KeyPair::from_secret_bytes(self.static_secret),
            KeyPair::from_secret_bytes(self.ephemeral),
        )
    }

    /// The genuine signature binding this server's static key to its identity.
    fn binding_signature(&self) -> [u8; 64] {
        Identity::from_seed(&self.seed).sign(&handshake::static_binding_message(
            SERVER_STATIC_DOMAIN,
            &x25519_public(self.static_secret),
        ))
    }

    fn json(&self) -> Value {
        json!({
            "identitySeed": hex(self.seed),
            "identityPublicKey": hex(identity_public(self.seed)),
            "staticPrivateKey": hex(self.static_secret),
            "staticPublicKey": hex(x25519_public(self.static_secret)),
            "ephemeralPrivateKey": hex(self.ephemeral),
            "ephemeralPublicKey": hex(x25519_public(self.ephemeral)),
            "endpoint": self.endpoint,
            "prologue": hex(self.prologue()),
            "allowedClients": self.allowed_clients.iter().map(hex).collect::<Vec<_>>(),
            "grantIssuers": self.grant_issuers.iter().map(hex).collect::<Vec<_>>(),
            "unixTime": self.unix_time,
            "maxClockSkewSecs": 30,
        })
    }
}

const CLIENT_A_SEED: [u8; 32] = [0x43; 32];
const SERVER_A_SEED: [u8; 32] = [0x53; 32];
const ISSUER_SEED: [u8; 32] = [0x49; 32];
const OTHER_SERVER_ENDPOINT: &str = "ws://127.0.0.1:7700/toolwire";

/// The fixed client of `testing::fixed_peers_for_testing_only`.
fn client_a() -> ClientSpec {
    let peers = fixed_peers_for_testing_only();
    ClientSpec {
        seed: CLIENT_A_SEED,
        static_secret: client_static_secret_for_testing_only(&peers.client_config),
        ephemeral: FIXED_CLIENT_EPHEMERAL,
        endpoint: FIXED_ENDPOINT.to_owned(),
        trusted_servers: vec![identity_public(SERVER_A_SEED)],
        tools: Vec::new(),
        grants: Vec::new(),
        lineage: None,
    }
}

/// The fixed server of `testing::fixed_peers_for_testing_only`.
fn server_a() -> ServerSpec {
    let peers = fixed_peers_for_testing_only();
    ServerSpec {
        seed: SERVER_A_SEED,
        static_secret: server_static_secret_for_testing_only(&peers.server_config),
        ephemeral: FIXED_SERVER_EPHEMERAL,
        endpoint: FIXED_ENDPOINT.to_owned(),
        allowed_clients: vec![identity_public(CLIENT_A_SEED)],
        grant_issuers: Vec::new(),
        unix_time: FIXED_UNIX_TIME,
    }
}

fn client_b() -> ClientSpec {
    ClientSpec {
        seed: label("client B identity seed"),
        static_secret: label("client B static"),
        ephemeral: label("client B ephemeral"),
        endpoint: OTHER_SERVER_ENDPOINT.to_owned(),
        trusted_servers: vec![identity_public(label("server B identity seed"))],
        tools: vec!["search".to_owned(), "fetch".to_owned()],
        grants: Vec::new(),
        lineage: None,
    }
}

fn server_b() -> ServerSpec {
    ServerSpec {
        seed: label("server B identity seed"),
        static_secret: label("server B static"),
        ephemeral: label("server B ephemeral"),
        endpoint: OTHER_SERVER_ENDPOINT.to_owned(),
        allowed_clients: vec![identity_public(label("client B identity seed"))],
        grant_issuers: Vec::new(),
        unix_time: FIXED_UNIX_TIME,
    }
}

/// A client that only a grant can authorize.
fn client_c(grants: Vec<String>) -> ClientSpec {
    ClientSpec {
        seed: label("client C identity seed"),
        static_secret: label("client C static"),
        ephemeral: label("client C ephemeral"),
        endpoint: FIXED_ENDPOINT.to_owned(),
        trusted_servers: vec![identity_public(SERVER_A_SEED)],
        tools: vec!["search".to_owned()],
        grants,
        lineage: None,
    }
}

fn handshake_grant(
    holder_seed: [u8; 32],
    audience_seed: [u8; 32],
    id: &str,
    exp: OffsetDateTime,
) -> String {
    GrantBuilder::new(
        identity_public(holder_seed),
        identity_public(audience_seed),
        id,
        exp,
    )
    .tools(["search"])
    .issued_at(datetime!(2025-12-01 0:00 UTC))
    .sign(Identity::from_seed(&ISSUER_SEED).signing_key())
    .unwrap()
}

fn handshake_record(record_type: u8, message: &[u8]) -> Vec<u8> {
    let mut record = RecordHeader::handshake(RecordType(record_type))
        .encode()
        .to_vec();
    record.extend_from_slice(message);
    record
}

fn body(record: &[u8]) -> &[u8] {
    &record[HEADER_LEN..]
}

fn default_params() -> SessionParams {
    let limits = ConnectionLimits::default();
    SessionParams {
        max_record_body: u32::try_from(limits.max_record_body).unwrap(),
        session_lifetime_ms: u64::try_from(limits.session_lifetime.as_millis()).unwrap(),
        idle_timeout_ms: u64::try_from(limits.idle_timeout.as_millis()).unwrap(),
    }
}

fn server_hello_json(payload: &[u8]) -> Value {
    let hello: ServerHello = rmp_serde::from_slice(payload).unwrap();
    json!({
        "identity": hex(&hello.identity),
        "signature": hex(&hello.signature),
        "params": {
            "max_record_body": hello.params.max_record_body,
            "session_lifetime_ms": hello.params.session_lifetime_ms,
            "idle_timeout_ms": hello.params.idle_timeout_ms,
        },
    })
}

fn client_hello_json(payload: &[u8]) -> Value {
    let hello: ClientHello = rmp_serde::from_slice(payload).unwrap();
    let mut value = json!({
        "identity": hex(&hello.identity),
        "signature": hex(&hello.signature),
        "cap_request": { "tools": hello.cap_request.tools, "grants": hello.cap_request.grants },
    });
    if let Some(resume) = hello.resume {
        value["resume"] = json!({ "lineage": hex(&resume.lineage) });
    }
    value
}

/// Runs a complete handshake between the two connections and, in parallel, between
/// two bare Noise states with the same keys, which yields the payloads and keys.
fn valid_transcript(comment: &str, flags: &[&str], c: &ClientSpec, s: &ServerSpec) -> Value {
    let now = Instant::now();
    let mut client = c.connection();
    let mut server = s.connection();
    let r1 = client.poll_transmit().unwrap();
    server.handle_record(now, &r1).unwrap();
    let r2 = server.poll_transmit().unwrap();
    client.handle_record(now, &r2).unwrap();
    let r3 = client.poll_transmit().unwrap();
    server.handle_record(now, &r3).unwrap();
    assert!(client.is_established() && server.is_established());
    assert!(client.poll_transmit().is_none() && server.poll_transmit().is_none());

    let mut initiator = c.noise();
    let mut responder = s.noise();
    let mut m1 = Vec::new();
    initiator.write_message(&[], &mut m1).unwrap();
    assert_eq!(r1, handshake_record(1, &m1));
    let mut p1 = Vec::new();
    responder.read_message(body(&r1), &mut p1).unwrap();
    assert!(p1.is_empty());
    let mut p2 = Vec::new();
    initiator.read_message(body(&r2), &mut p2).unwrap();
    let mut m2 = Vec::new();
    responder.write_message(&p2, &mut m2).unwrap();
    assert_eq!(body(&r2), m2.as_slice());
    let mut p3 = Vec::new();
    responder.read_message(body(&r3), &mut p3).unwrap();
    let mut m3 = Vec::new();
    initiator.write_message(&p3, &mut m3).unwrap();
    assert_eq!(body(&r3), m3.as_slice());

    let hash = initiator.handshake_hash();
    assert_eq!(hash, responder.handshake_hash());
    let client_session = client.session().unwrap();
    let server_session = server.session().unwrap();
    assert_eq!(client_session.session_id, hash);
    assert_eq!(server_session.session_id, hash);
    assert_eq!(
        client_session.peer.to_bytes(),
        identity_public(s.seed),
        "client authenticated the server"
    );
    assert_eq!(server_session.peer.to_bytes(), identity_public(c.seed));
    let (c2s, s2c) = initiator.split().unwrap();
    let (c2s_r, s2c_r) = responder.split().unwrap();
    assert_eq!(*c2s, *c2s_r);
    assert_eq!(*s2c, *s2c_r);

    // The connections really use these keys: the first sealed record each way opens
    // under them.
    client.send(now, Message::Ping(Ping { nonce: 1 })).unwrap();
    let sealed = client.poll_transmit().unwrap();
    let mut opened = Vec::new();
    noise::open(
        &c2s,
        0,
        &sealed[..HEADER_LEN],
        &sealed[HEADER_LEN..],
        &mut opened,
    )
    .unwrap();
    assert_eq!(opened, Message::Ping(Ping { nonce: 1 }).encode());

    let accepted: Vec<String> = server_session.grants.iter().map(|g| g.id.clone()).collect();
    let rejected: Vec<Value> = server_session
        .rejected_grants
        .iter()
        .map(|(index, error)| json!({ "index": index, "error": grant_error_name(error) }))
        .collect();
    json!({
        "comment": comment,
        "flags": flags,
        "client": c.json(),
        "server": s.json(),
        "record1": hex(&r1),
        "record2": hex(&r2),
        "record3": hex(&r3),
        "payload2": hex(&p2),
        "payload2Decoded": server_hello_json(&p2),
        "payload3": hex(&p3),
        "payload3Decoded": client_hello_json(&p3),
        "handshakeHash": hex(hash),
        "clientToServerKey": hex(*c2s),
        "serverToClientKey": hex(*s2c),
        "acceptedGrantIds": accepted,
        "rejectedGrants": rejected,
        "result": "valid",
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Receiver {
    Client,
    Server,
}

/// A handshake that must fail: the records the receiver gets, where it fails, and why.
struct Failure {
    receiver: Receiver,
    fails_at: u8,
    r1: Vec<u8>,
    r2: Option<Vec<u8>>,
    r3: Option<Vec<u8>>,
    p2: Option<Vec<u8>>,
    p3: Option<Vec<u8>>,
}

fn invalid_transcript(
    comment: &str,
    flags: &[&str],
    c: &ClientSpec,
    s: &ServerSpec,
    failure: Failure,
    code: CloseCode,
) -> Value {
    let now = Instant::now();
    let (mut connection, error) = match (failure.receiver, failure.fails_at) {
        (Receiver::Client, 2) => {
            let mut client = c.connection();
            assert_eq!(client.poll_transmit().unwrap(), failure.r1);
            let error = client
                .handle_record(now, failure.r2.as_ref().unwrap())
                .unwrap_err();
            (client, error)
        }
        (Receiver::Server, 1) => {
            let mut server = s.connection();
            let error = server.handle_record(now, &failure.r1).unwrap_err();
            (server, error)
        }
        (Receiver::Server, 3) => {
            let mut server = s.connection();
            server.handle_record(now, &failure.r1).unwrap();
            assert_eq!(
                &server.poll_transmit().unwrap(),
                failure.r2.as_ref().unwrap()
            );
            let error = server
                .handle_record(now, failure.r3.as_ref().unwrap())
                .unwrap_err();
            (server, error)
        }
        _ => unreachable!("no such failure point"),
    };
    intended(&error, code, comment);
    assert_eq!(connection.close_code(), Some((code, Side::Local)));
    assert!(
        connection.poll_transmit().is_none(),
        "nothing sealed before keys exist"
    );

    let mut test = json!({
        "comment": comment,
        "flags": flags,
        "client": c.json(),
        "server": s.json(),
        "record1": hex(&failure.r1),
        "receiver": if failure.receiver == Receiver::Client { "client" } else { "server" },
        "failsAtRecord": failure.fails_at,
        "result": "invalid",
        "expectedCloseCode": close_code_name(&error),
        "expectedError": error_name(&error),
    });
    if let Some(r2) = &failure.r2 {
        test["record2"] = json!(hex(r2));
    }
    if let Some(r3) = &failure.r3 {
        test["record3"] = json!(hex(r3));
    }
    if let Some(p2) = &failure.p2 {
        test["payload2"] = json!(hex(p2));
        if rmp_serde::from_slice::<ServerHello>(p2).is_ok() {
            test["payload2Decoded"] = server_hello_json(p2);
        }
    }
    if let Some(p3) = &failure.p3 {
        test["payload3"] = json!(hex(p3));
        if rmp_serde::from_slice::<ClientHello>(p3).is_ok() {
            test["payload3Decoded"] = client_hello_json(p3);
        }
    }
    test
}

/// Records 1 and 2 as the real peers produce them (the server reads record 1 with its
/// own configuration), and record 2's payload when the client's prologue matches.
fn genuine_first_two(c: &ClientSpec, s: &ServerSpec) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let now = Instant::now();
    let mut client = c.connection();
    let mut server = s.connection();
    let r1 = client.poll_transmit().unwrap();
    server.handle_record(now, &r1).unwrap();
    let r2 = server.poll_transmit().unwrap();
    let mut initiator = c.noise();
    let mut m1 = Vec::new();
    initiator.write_message(&[], &mut m1).unwrap();
    let mut p2 = Vec::new();
    let p2 = initiator.read_message(body(&r2), &mut p2).ok().map(|()| p2);
    (r1, r2, p2)
}

/// Record 3 as the real client produces it after record 2, with its payload.
fn genuine_third(c: &ClientSpec, r2: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut client = c.connection();
    let _ = client.poll_transmit().unwrap();
    client.handle_record(Instant::now(), r2).unwrap();
    let r3 = client.poll_transmit().unwrap();
    let payload = client_hello_payload(c);
    assert_eq!(craft_third(c, r2, &payload), r3, "ClientHello encoding");
    (r3, payload)
}

/// The ClientHello payload a client spec sends (encoding as in the implementation).
fn client_hello_payload(c: &ClientSpec) -> Vec<u8> {
    let signature = Identity::from_seed(&c.seed).sign(&handshake::static_binding_message(
        CLIENT_STATIC_DOMAIN,
        &x25519_public(c.static_secret),
    ));
    let hello = ClientHello {
        identity: ByteBuf::from(identity_public(c.seed).to_vec()),
        signature: ByteBuf::from(signature.to_vec()),
        cap_request: CapRequest {
            tools: c.tools.clone(),
            grants: c.grants.clone(),
        },
        resume: c.lineage.map(|lineage| Resume {
            lineage: ByteBuf::from(lineage.to_vec()),
        }),
    };
    rmp_serde::to_vec_named(&hello).unwrap()
}

/// Record 2 written by a bare Noise responder with the server's keys and `payload`.
fn craft_second(s: &ServerSpec, r1: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut responder = s.noise();
    let mut scratch = Vec::new();
    responder.read_message(body(r1), &mut scratch).unwrap();
    let mut m2 = Vec::new();
    responder.write_message(payload, &mut m2).unwrap();
    handshake_record(2, &m2)
}

/// Record 3 written by a bare Noise initiator with the client's keys and `payload`.
fn craft_third(c: &ClientSpec, r2: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut initiator = c.noise();
    let mut m1 = Vec::new();
    initiator.write_message(&[], &mut m1).unwrap();
    let mut scratch = Vec::new();
    initiator.read_message(body(r2), &mut scratch).unwrap();
    let mut m3 = Vec::new();
    initiator.write_message(payload, &mut m3).unwrap();
    handshake_record(3, &m3)
}

fn server_hello_payload(identity: &[u8], signature: &[u8]) -> Vec<u8> {
    rmp_serde::to_vec_named(&ServerHello {
        identity: ByteBuf::from(identity.to_vec()),
        signature: ByteBuf::from(signature.to_vec()),
        params: default_params(),
        certificate: None,
    })
    .unwrap()
}

fn handshake_file() -> String {
    let a = client_a();
    let sa = server_a();

    // --- valid transcripts ---
    let mut valid = vec![valid_transcript(
        "fixed peers of the reference test hooks, no capability request",
        &["Valid", "AllowedByKey"],
        &a,
        &sa,
    )];
    valid.push(valid_transcript(
        "other identities and endpoint, capability request for two tools",
        &["Valid", "AllowedByKey", "CapRequest"],
        &client_b(),
        &server_b(),
    ));
    let grant_c = handshake_grant(
        label("client C identity seed"),
        SERVER_A_SEED,
        "grant-hs-1",
        datetime!(2030-01-01 0:00 UTC),
    );
    let mut c = client_c(vec![grant_c]);
    c.lineage = Some(*b"lineage-0123456\0");
    let mut s_issuer = sa.clone();
    s_issuer.ephemeral = label("transcript 3 server ephemeral");
    s_issuer.allowed_clients = Vec::new();
    s_issuer.grant_issuers = vec![identity_public(ISSUER_SEED)];
    valid.push(valid_transcript(
        "client not allowed by key, authorized by a grant from a trusted issuer; resumes a lineage",
        &["Valid", "AllowedByGrant", "CapRequest", "Lineage"],
        &c,
        &s_issuer,
    ));
    let mut a4 = a.clone();
    a4.ephemeral = label("transcript 4 client ephemeral");
    a4.tools = vec!["*".to_owned()];
    a4.grants = vec![
        handshake_grant(
            CLIENT_A_SEED,
            SERVER_A_SEED,
            "grant-hs-2",
            datetime!(2030-01-01 0:00 UTC),
        ),
        handshake_grant(
            CLIENT_A_SEED,
            label("server B identity seed"),
            "grant-hs-3",
            datetime!(2030-01-01 0:00 UTC),
        ),
    ];
    let mut s4 = sa.clone();
    s4.ephemeral = label("transcript 4 server ephemeral");
    s4.grant_issuers = vec![identity_public(ISSUER_SEED)];
    valid.push(valid_transcript(
        "two grants presented, one for another audience: it is rejected without failing the handshake",
        &["Valid", "AllowedByKey", "CapRequest", "RejectedGrant"],
        &a4,
        &s4,
    ));

    // --- failures ---
    let mut invalid = Vec::new();

    // Record 2 under a different prologue.
    let mut s_other_endpoint = sa.clone();
    s_other_endpoint.endpoint = "wss://tools.example/other".to_owned();
    let (r1, r2, _) = genuine_first_two(&a, &s_other_endpoint);
    invalid.push(invalid_transcript(
        "server bound to another endpoint: record 2 is under a different prologue and does not decrypt",
        &["PrologueMismatch"],
        &a,
        &s_other_endpoint,
        Failure { receiver: Receiver::Client, fails_at: 2, r1, r2: Some(r2), r3: None, p2: None, p3: None },
        CloseCode::HANDSHAKE_FAILED,
    ));

    // Tampered records.
    let (r1, r2, p2) = genuine_first_two(&a, &sa);
    let last = r2.len() - 1;
    invalid.push(invalid_transcript(
        "record 2 with its last byte (payload tag) flipped",
        &["Tampered"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(flip(&r2, last, 0x01)),
            r3: None,
            p2: p2.clone(),
            p3: None,
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    invalid.push(invalid_transcript(
        "record 2 with a byte of the server's ephemeral key flipped",
        &["Tampered"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(flip(&r2, HEADER_LEN + 5, 0x40)),
            r3: None,
            p2: p2.clone(),
            p3: None,
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    let (r3, p3) = genuine_third(&a, &r2);
    let last = r3.len() - 1;
    invalid.push(invalid_transcript(
        "record 3 with its last byte (payload tag) flipped",
        &["Tampered"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1.clone(),
            r2: Some(r2.clone()),
            r3: Some(flip(&r3, last, 0x01)),
            p2: p2.clone(),
            p3: Some(p3.clone()),
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    invalid.push(invalid_transcript(
        "record 3 with the first byte of the encrypted client static key flipped",
        &["Tampered"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1.clone(),
            r2: Some(r2.clone()),
            r3: Some(flip(&r3, HEADER_LEN, 0x80)),
            p2: p2.clone(),
            p3: Some(p3.clone()),
        },
        CloseCode::HANDSHAKE_FAILED,
    ));

    // Server identity not pinned.
    let mut a_pins_b = a.clone();
    a_pins_b.trusted_servers = vec![identity_public(label("server B identity seed"))];
    invalid.push(invalid_transcript(
        "client pins another server identity: the server proves an identity the client does not trust",
        &["UntrustedServer"],
        &a_pins_b,
        &sa,
        Failure { receiver: Receiver::Client, fails_at: 2, r1: r1.clone(), r2: Some(r2.clone()), r3: None, p2: p2.clone(), p3: None },
        CloseCode::AUTH_FAILED,
    ));

    // Bad server identity signatures (record 2 written by a bare Noise responder).
    let server_identity = identity_public(sa.seed);
    let bad_signature = flip(&sa.binding_signature(), 10, 0x01);
    let payload = server_hello_payload(&server_identity, &bad_signature);
    invalid.push(invalid_transcript(
        "server identity signature over its Noise static key has a flipped bit",
        &["BadIdentitySignature"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(craft_second(&sa, &r1, &payload)),
            r3: None,
            p2: Some(payload.clone()),
            p3: None,
        },
        CloseCode::AUTH_FAILED,
    ));
    let other_static_signature =
        Identity::from_seed(&sa.seed).sign(&handshake::static_binding_message(
            SERVER_STATIC_DOMAIN,
            &x25519_public(label("server B static")),
        ));
    let payload = server_hello_payload(&server_identity, &other_static_signature);
    invalid.push(invalid_transcript(
        "server identity signature is genuine but binds another Noise static key",
        &["BadIdentitySignature"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(craft_second(&sa, &r1, &payload)),
            r3: None,
            p2: Some(payload.clone()),
            p3: None,
        },
        CloseCode::AUTH_FAILED,
    ));
    let client_domain_signature = Identity::from_seed(&sa.seed).sign(
        &handshake::static_binding_message(CLIENT_STATIC_DOMAIN, &x25519_public(sa.static_secret)),
    );
    let payload = server_hello_payload(&server_identity, &client_domain_signature);
    invalid.push(invalid_transcript(
        "server identity signature made with the client domain string",
        &["BadIdentitySignature"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(craft_second(&sa, &r1, &payload)),
            r3: None,
            p2: Some(payload.clone()),
            p3: None,
        },
        CloseCode::AUTH_FAILED,
    ));
    let mut small_order = [0u8; 32];
    small_order[0] = 1;
    let payload = server_hello_payload(&small_order, &[0u8; 64]);
    invalid.push(invalid_transcript(
        "server identity key is the small-order identity point",
        &["InvalidIdentityKey"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(craft_second(&sa, &r1, &payload)),
            r3: None,
            p2: Some(payload.clone()),
            p3: None,
        },
        CloseCode::AUTH_FAILED,
    ));
    let mut wrong_type = r2.clone();
    wrong_type[1] = 3;
    invalid.push(invalid_transcript(
        "record 2 labelled with record type 3",
        &["BadHeader"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Client,
            fails_at: 2,
            r1: r1.clone(),
            r2: Some(wrong_type),
            r3: None,
            p2: p2.clone(),
            p3: None,
        },
        CloseCode::PROTOCOL_VIOLATION,
    ));

    // Bad client identity signature (record 3 written by a bare Noise initiator).
    let genuine: ClientHello = rmp_serde::from_slice(&client_hello_payload(&a)).unwrap();
    let mut forged = genuine.clone();
    forged.signature = ByteBuf::from(flip(&genuine.signature, 40, 0x02));
    let payload = rmp_serde::to_vec_named(&forged).unwrap();
    invalid.push(invalid_transcript(
        "client identity signature over its Noise static key has a flipped bit",
        &["BadIdentitySignature"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1.clone(),
            r2: Some(r2.clone()),
            r3: Some(craft_third(&a, &r2, &payload)),
            p2: p2.clone(),
            p3: Some(payload.clone()),
        },
        CloseCode::AUTH_FAILED,
    ));
    let payload = vec![0xc0];
    invalid.push(invalid_transcript(
        "record 3 payload decrypts but is msgpack nil, not a ClientHello",
        &["BadPayload"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1.clone(),
            r2: Some(r2.clone()),
            r3: Some(craft_third(&a, &r2, &payload)),
            p2: p2.clone(),
            p3: Some(payload),
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    let mut short_lineage = genuine.clone();
    short_lineage.resume = Some(Resume {
        lineage: ByteBuf::from(vec![7u8; 15]),
    });
    let payload = rmp_serde::to_vec_named(&short_lineage).unwrap();
    invalid.push(invalid_transcript(
        "record 3 resumes a lineage of 15 bytes (must be 16)",
        &["BadPayload", "Lineage"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1.clone(),
            r2: Some(r2.clone()),
            r3: Some(craft_third(&a, &r2, &payload)),
            p2: p2.clone(),
            p3: Some(payload),
        },
        CloseCode::HANDSHAKE_FAILED,
    ));

    // Client not allowed.
    let mut s_nobody = sa.clone();
    s_nobody.allowed_clients = vec![identity_public(label("client B identity seed"))];
    let (r1n, r2n, p2n) = genuine_first_two(&a, &s_nobody);
    let (r3n, p3n) = genuine_third(&a, &r2n);
    invalid.push(invalid_transcript(
        "client identity is neither allowed by key nor presents a grant",
        &["UnknownClient"],
        &a,
        &s_nobody,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1n,
            r2: Some(r2n),
            r3: Some(r3n),
            p2: p2n,
            p3: Some(p3n),
        },
        CloseCode::AUTH_FAILED,
    ));
    let expired = handshake_grant(
        label("client C identity seed"),
        SERVER_A_SEED,
        "grant-hs-expired",
        datetime!(2025-12-31 0:00 UTC),
    );
    let c_expired = client_c(vec![expired]);
    let (r1e, r2e, p2e) = genuine_first_two(&c_expired, &s_issuer);
    let (r3e, p3e) = genuine_third(&c_expired, &r2e);
    invalid.push(invalid_transcript(
        "client authorized only by a grant that expired before the server's time",
        &["UnknownClient", "AllowedByGrant"],
        &c_expired,
        &s_issuer,
        Failure {
            receiver: Receiver::Server,
            fails_at: 3,
            r1: r1e,
            r2: Some(r2e),
            r3: Some(r3e),
            p2: p2e,
            p3: Some(p3e),
        },
        CloseCode::AUTH_FAILED,
    ));

    // Record 1 problems.
    let zero_ephemeral = handshake_record(1, &[0u8; 32]);
    invalid.push(invalid_transcript(
        "record 1 carries the all-zero (low-order) X25519 ephemeral key: ee is non-contributory",
        &["LowOrderKey"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 1,
            r1: zero_ephemeral,
            r2: None,
            r3: None,
            p2: None,
            p3: None,
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    let mut long = r1.clone();
    long.push(0);
    invalid.push(invalid_transcript(
        "record 1 body of 33 bytes (message 1 is exactly the 32-byte ephemeral key)",
        &["BadLength"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 1,
            r1: long,
            r2: None,
            r3: None,
            p2: None,
            p3: None,
        },
        CloseCode::HANDSHAKE_FAILED,
    ));
    invalid.push(invalid_transcript(
        "record 1 with protocol version 2",
        &["BadHeader"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 1,
            r1: flip(&r1, 0, 0x03),
            r2: None,
            r3: None,
            p2: None,
            p3: None,
        },
        CloseCode::VERSION_UNSUPPORTED,
    ));
    invalid.push(invalid_transcript(
        "record 1 with a non-zero sequence number (handshake headers are fixed)",
        &["BadHeader"],
        &a,
        &sa,
        Failure {
            receiver: Receiver::Server,
            fails_at: 1,
            r1: flip(&r1, 8, 0x01),
            r2: None,
            r3: None,
            p2: None,
            p3: None,
        },
        CloseCode::PROTOCOL_VIOLATION,
    ));

    finish(
        "handshake",
        &[
            "Complete toolwire handshakes (Noise_XX_25519_ChaChaPoly_SHA256 with Ed25519 identities bound to the Noise static keys) and handshakes that must fail.",
            "All byte strings are lowercase hex. Every record is the complete WebSocket binary message: the 16-byte record header (version 1, type 1/2/3, reserved 0, epoch 0, seq 0, little-endian) followed by the Noise handshake message.",
            "client / server: the inputs of each peer. identitySeed is the 32-byte Ed25519 secret seed (RFC 8032), identityPublicKey its public key. staticPrivateKey / ephemeralPrivateKey are X25519 secrets (clamped as usual by X25519), with their public keys. endpoint is the URL bound into the prologue; prologue = PAE(\"toolwire/1\", endpoint, subprotocol) with PAE = LE64(count) || for each piece LE64(len) || piece.",
            "client.trustedServers: pinned server identity keys. client.capRequest: tools and grant tokens sent in the ClientHello. client.lineage: the 16-byte at-most-once lineage to resume, or null.",
            "server.allowedClients: client identity keys allowed directly. server.grantIssuers: issuers whose grants authorize a client. server.unixTime: the server's wall clock (Unix seconds) when it checks grants, with maxClockSkewSecs of tolerance.",
            "Ephemeral keys are fixed here only to make the transcripts reproducible; a real peer draws a fresh one for every handshake.",
            "payload2 / payload3: the decrypted Noise payloads of records 2 and 3, msgpack maps with named fields (ServerHello {identity, signature, params {max_record_body, session_lifetime_ms, idle_timeout_ms}}; ClientHello {identity, signature, cap_request {tools, grants}, resume? {lineage}}). payload2Decoded / payload3Decoded show them as JSON with byte strings in hex. The signatures are Ed25519 over PAE(\"toolwire/1 server static\" or \"toolwire/1 client static\", the signer's X25519 static public key).",
            "handshakeHash is the final Noise handshake hash h, which is the session id. clientToServerKey and serverToClientKey are the two outputs of Noise Split() (the epoch-0 record keys of each direction). acceptedGrantIds / rejectedGrants are what the server concluded about the presented grants (index into capRequest.grants and the grant error name, see grant.json).",
            "Valid tests (type HandshakeTranscript): a conforming client given the client inputs produces record1, accepts record2 and produces record3; a conforming server given the server inputs accepts record1, produces record2 and accepts record3. Both end with this handshake hash and these keys.",
            "Invalid tests (type HandshakeFailure): receiver names the peer under test and failsAtRecord the record it must reject (1 or 3 for the server, 2 for the client). The receiver is built from its inputs; the records before failsAtRecord must be processed (and the receiver's own records must equal the ones listed). Records not produced by the receiver may be forged: they are written with the other peer's keys by a bare Noise state, so only the receiver's side is a real toolwire peer.",
            "expectedCloseCode is the normative outcome (close code name). expectedError is informative: the reference implementation's error (Category.Detail after toolwire_protocol::Error).",
        ],
        &[
            ("Valid", "A complete, successful handshake."),
            ("AllowedByKey", "The server allows the client's identity key directly."),
            ("AllowedByGrant", "The client is authorized (or meant to be) only by a presented grant from a trusted issuer."),
            ("CapRequest", "The ClientHello carries a non-empty capability request."),
            ("Lineage", "The ClientHello resumes an at-most-once lineage."),
            ("RejectedGrant", "A presented grant does not verify; the handshake still succeeds and the grant is listed in rejectedGrants."),
            ("PrologueMismatch", "The peers bind different endpoints into the prologue, so record 2 does not decrypt."),
            ("Tampered", "One byte of a genuine record was changed in transit."),
            ("UntrustedServer", "The server authenticates with an identity the client does not pin."),
            ("BadIdentitySignature", "The signature binding an identity key to the Noise static key does not verify."),
            ("InvalidIdentityKey", "The identity key is not an acceptable Ed25519 public key (small order)."),
            ("UnknownClient", "The client authenticates but is neither allowed by key nor holds a valid grant."),
            ("BadPayload", "A handshake payload decrypts but is not a valid hello."),
            ("LowOrderKey", "A low-order X25519 key makes a DH output all zeros (non-contributory)."),
            ("BadLength", "A handshake message of the wrong length."),
            ("BadHeader", "A handshake record header with a wrong field."),
        ],
        vec![
            json!({
                "type": "HandshakeTranscript",
                "subprotocol": SUBPROTOCOL,
                "noiseProtocol": String::from_utf8(noise::PROTOCOL_NAME.to_vec()).unwrap(),
                "tests": valid,
            }),
            json!({
                "type": "HandshakeFailure",
                "subprotocol": SUBPROTOCOL,
                "noiseProtocol": String::from_utf8(noise::PROTOCOL_NAME.to_vec()).unwrap(),
                "tests": invalid,
            }),
        ],
    )
}

// ---------------------------------------------------------------------------------
// record.json
// ---------------------------------------------------------------------------------

fn sealed_header(epoch: u32, seq: u64) -> [u8; HEADER_LEN] {
    RecordHeader {
        version: 1,
        record_type: RecordType::SEALED,
        reserved: 0,
        epoch,
        seq,
    }
    .encode()
}

/// A sealed record composed from the primitives: header || AEAD(key, seq, header, pt).
fn compose_record(key: &[u8; 32], epoch: u32, seq: u64, plaintext: &[u8]) -> Vec<u8> {
    let header = sealed_header(epoch, seq);
    let mut record = header.to_vec();
    noise::seal(key, seq, &header, plaintext, &mut record);
    record
}

fn epoch_key(initial: [u8; 32], epoch: u32) -> [u8; 32] {
    (0..epoch).fold(initial, |key, _| *noise::rekey(&key))
}

const RECORD_SESSION_ID: [u8; 32] = [0x5e; 32];

/// The same record sealed by the implementation's sender: `epoch` KEY_UPDATEs, then
/// the sequence number forced to `seq`.
fn sender_record(initial: [u8; 32], epoch: u32, seq: u64, message: &Message) -> Vec<u8> {
    let mut transport = sender(initial);
    for _ in 0..epoch {
        transport.seal_key_update().unwrap();
    }
    set_transport_next_send_seq_for_testing_only(&mut transport, seq);
    transport.seal(message).unwrap()
}

fn sender(initial: [u8; 32]) -> Transport {
    transport_from_keys_for_testing_only(
        initial,
        label("unused receive key"),
        RECORD_SESSION_ID,
        &ConnectionLimits::default(),
    )
}

fn state(epoch: u32, accepted: &[(u64, u64)], strict: bool) -> ReceiverState {
    ReceiverState {
        epoch,
        accepted: accepted.to_vec(),
        strict_order: strict,
        max_record_body: 65536,
    }
}

fn state_json(initial: [u8; 32], state: &ReceiverState) -> Value {
    json!({
        "epoch": state.epoch,
        "key": hex(epoch_key(initial, state.epoch)),
        "acceptedSeqs": state.accepted.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        "strictOrder": state.strict_order,
        "maxRecordBody": state.max_record_body,
    })
}

/// One record under test.
struct RecordCase<'a> {
    comment: &'a str,
    flags: &'a [&'a str],
    key: [u8; 32],
    epoch: u32,
    seq: u64,
    plaintext: Vec<u8>,
    tamper: fn(Vec<u8>) -> Vec<u8>,
    state: ReceiverState,
    expect: Option<CloseCode>,
}

fn record_test(initial: [u8; 32], case: RecordCase<'_>) -> Value {
    let record = compose_record(&case.key, case.epoch, case.seq, &case.plaintext);
    // Where the implementation's sender can produce the record, it must agree.
    if case.key == epoch_key(initial, case.epoch) && case.seq <= LAST_SEQUENCE {
        if let Ok(message) = Message::decode(&case.plaintext) {
            assert_eq!(
                sender_record(initial, case.epoch, case.seq, &message),
                record,
                "{}",
                case.comment
            );
        }
    }
    let received = (case.tamper)(record.clone());
    let mut receiver = receiver_from_state(initial, &case.state);
    let outcome = receiver.open(&received);
    let mut test = json!({
        "comment": case.comment,
        "flags": case.flags,
        "key": hex(case.key),
        "epoch": case.epoch,
        "seq": case.seq,
        "plaintext": hex(&case.plaintext),
        "header": hex(&record[..HEADER_LEN]),
        "record": hex(&record),
        "receivedRecord": hex(&received),
        "receiverState": state_json(initial, &case.state),
    });
    match (case.expect, outcome) {
        (None, Ok(message)) => {
            assert_eq!(message.encode(), case.plaintext, "{}", case.comment);
            test["result"] = json!("valid");
        }
        (Some(code), Err(error)) => {
            intended(&error, code, case.comment);
            test["result"] = json!("invalid");
            test["expectedCloseCode"] = json!(close_code_name(&error));
            test["expectedError"] = json!(error_name(&error));
        }
        (expect, outcome) => panic!("{}: expected {expect:?}, got {outcome:?}", case.comment),
    }
    test
}

fn keep(record: Vec<u8>) -> Vec<u8> {
    record
}

#[allow(clippy::too_many_arguments)]
fn case<'a>(
    comment: &'a str,
    flags: &'a [&'a str],
    key: [u8; 32],
    epoch: u32,
    seq: u64,
    plaintext: &[u8],
    tamper: fn(Vec<u8>) -> Vec<u8>,
    state: ReceiverState,
    expect: Option<CloseCode>,
) -> RecordCase<'a> {
    RecordCase {
        comment,
        flags,
        key,
        epoch,
        seq,
        plaintext: plaintext.to_vec(),
        tamper,
        state,
        expect,
    }
}

/// One record of a sequence fed to a single receiver.
struct Step {
    key: [u8; 32],
    epoch: u32,
    seq: u64,
    plaintext: Vec<u8>,
}

fn step(initial: [u8; 32], epoch: u32, seq: u64, message: &Message) -> Step {
    Step {
        key: epoch_key(initial, epoch),
        epoch,
        seq,
        plaintext: message.encode(),
    }
}

/// Feeds the steps to a fresh receiver; all but the last must be accepted, the last is
/// accepted when `expect` is None.
fn sequence_test(
    initial: [u8; 32],
    comment: &str,
    flags: &[&str],
    strict: bool,
    steps: &[Step],
    expect: Option<CloseCode>,
) -> Value {
    let mut receiver = receiver_from_state(initial, &state(0, &[], strict));
    let mut out = Vec::new();
    let mut final_error = None;
    for (index, s) in steps.iter().enumerate() {
        let record = compose_record(&s.key, s.epoch, s.seq, &s.plaintext);
        let mut step_json = json!({
            "key": hex(s.key),
            "epoch": s.epoch,
            "seq": s.seq,
            "plaintext": hex(&s.plaintext),
            "record": hex(&record),
        });
        let last = index + 1 == steps.len();
        match receiver.open(&record) {
            Ok(message) => {
                assert!(!last || expect.is_none(), "{comment}: last step accepted");
                assert_eq!(message.encode(), s.plaintext);
                step_json["result"] = json!("accept");
                step_json["receiverEpochAfter"] = json!(receiver.receive_epoch());
            }
            Err(error) => {
                assert!(last, "{comment}: step {index} rejected: {error:?}");
                intended(&error, expect.unwrap(), comment);
                step_json["result"] = json!("reject");
                step_json["expectedCloseCode"] = json!(close_code_name(&error));
                step_json["expectedError"] = json!(error_name(&error));
                final_error = Some(error);
            }
        }
        out.push(step_json);
    }
    let mut test = json!({
        "comment": comment,
        "flags": flags,
        "strictOrder": strict,
        "steps": out,
        "result": if final_error.is_some() { "invalid" } else { "valid" },
    });
    if let Some(error) = final_error {
        test["expectedCloseCode"] = json!(close_code_name(&error));
        test["expectedError"] = json!(error_name(&error));
    }
    test
}

fn ping(nonce: u64) -> Message {
    Message::Ping(Ping { nonce })
}

fn record_file() -> String {
    let initial = label("record layer initial key");
    let k0 = initial;
    let req = sample_request().encode();
    let ping1 = ping(1).encode();
    let strict = true;
    let fresh = || state(0, &[], true);
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    let cases_valid = vec![
        case("first record of a direction: epoch 0, seq 0", &["Valid"], k0, 0, 0, &ping1, keep, fresh(), None),
        case("REQUEST at seq 1", &["Valid"], k0, 0, 1, &req, keep, state(0, &[(0, 0)], strict), None),
        case("RESPONSE at seq 2", &["Valid"], k0, 0, 2, &sample_response().encode(), keep, state(0, &[(0, 1)], strict), None),
        case("epoch 1 (after one KEY_UPDATE at seq 0), seq 3", &["Valid", "Rekeyed"], epoch_key(k0, 1), 1, 3, &Message::Cancel(Cancel { id: 7 }).encode(), keep, state(1, &[(0, 2)], strict), None),
        case("epoch 3, seq 7, a 200-byte STREAM_ITEM", &["Valid", "Rekeyed"], epoch_key(k0, 3), 3, 7, &Message::StreamItem(StreamItem { id: 7, index: 0, data: ByteBuf::from(vec![0xa5; 200]) }).encode(), keep, state(3, &[(0, 6)], strict), None),
        case("the last usable sequence number 2^62-1 (reserved for a CLOSE), non-strict receiver with nothing seen", &["Valid", "NonStrict", "SequenceLimit"], k0, 0, LAST_SEQUENCE, &Message::Close(Close { code: CloseCode::SEQUENCE_EXHAUSTED.0, reason: String::new() }).encode(), keep, state(0, &[], false), None),
        case("non-strict receiver: an older, unseen sequence number inside the window", &["Valid", "NonStrict"], k0, 0, 5, &ping(5).encode(), keep, state(0, &[(0, 0), (10, 10)], false), None),
        case("non-strict receiver: exactly WINDOW-1 (1983) below the highest seen", &["Valid", "NonStrict", "WindowEdge"], k0, 0, 3000 - 1983, &ping(0).encode(), keep, state(0, &[(3000, 3000)], false), None),
    ];
    for c in cases_valid {
        valid.push(record_test(initial, c));
    }
    let flip_first_body: fn(Vec<u8>) -> Vec<u8> = |r| flip(&r, HEADER_LEN, 0x01);
    let flip_last: fn(Vec<u8>) -> Vec<u8> = |r| {
        let last = r.len() - 1;
        flip(&r, last, 0x80)
    };
    let cases_invalid = vec![
        case("ciphertext bit flipped", &["TamperedBody"], k0, 0, 0, &ping1, flip_first_body, fresh(), Some(CloseCode::DECRYPT_FAILED)),
        case("tag bit flipped", &["TamperedTag"], k0, 0, 0, &ping1, flip_last, fresh(), Some(CloseCode::DECRYPT_FAILED)),
        case("version byte 2", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[0] = 2; r }, fresh(), Some(CloseCode::VERSION_UNSUPPORTED)),
        case("version byte 0", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[0] = 0; r }, fresh(), Some(CloseCode::VERSION_UNSUPPORTED)),
        case("reserved field 0x0001", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[2] = 1; r }, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("reserved field 0x8000", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[3] = 0x80; r }, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("record type 1 (a handshake type) after the handshake", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[1] = 1; r }, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("record type 0x11 (unknown)", &["TamperedHeader"], k0, 0, 0, &ping1, |r| { let mut r = r; r[1] = 0x11; r }, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("epoch field changed to 1; the receiver is at epoch 0", &["TamperedHeader", "WrongEpoch"], k0, 0, 0, &ping1, |r| { let mut r = r; r[4] = 1; r }, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("genuine epoch-0 record arriving after the receiver moved to epoch 1", &["WrongEpoch", "Rekeyed"], k0, 0, 1, &ping1, keep, state(1, &[(0, 0)], strict), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("seq field changed 0 -> 1: a strict receiver expects 0, so it is a reordering before any decryption", &["TamperedHeader", "Reordered"], k0, 0, 0, &ping1, |r| { let mut r = r; r[8] = 1; r }, fresh(), Some(CloseCode::REPLAY_DETECTED)),
        case("seq field changed 5 -> 6 at a non-strict receiver: passes the window, fails the AEAD (seq is the nonce and part of the AD)", &["TamperedHeader", "NonStrict"], k0, 0, 5, &ping1, |r| { let mut r = r; r[8] = 6; r }, state(0, &[(0, 4)], false), Some(CloseCode::DECRYPT_FAILED)),
        case("replay: seq 1 again after 0..2", &["Replay"], k0, 0, 1, &req, keep, state(0, &[(0, 2)], strict), Some(CloseCode::REPLAY_DETECTED)),
        case("reordered: seq 2 while 1 is expected", &["Reordered"], k0, 0, 2, &req, keep, state(0, &[(0, 0)], strict), Some(CloseCode::REPLAY_DETECTED)),
        case("non-strict receiver: an unseen sequence number exactly WINDOW (1984) below the highest is too old", &["Replay", "NonStrict", "WindowEdge"], k0, 0, 3000 - 1984, &ping(0).encode(), keep, state(0, &[(3000, 3000)], false), Some(CloseCode::REPLAY_DETECTED)),
        case("seq 2^62 on a fresh receiver", &["SequenceLimit"], k0, 0, SEQUENCE_LIMIT, &ping1, keep, fresh(), Some(CloseCode::SEQUENCE_EXHAUSTED)),
        case("seq 2^64-1 on a fresh receiver", &["SequenceLimit"], k0, 0, u64::MAX, &ping1, keep, fresh(), Some(CloseCode::SEQUENCE_EXHAUSTED)),
        case("seq 2^62 at a strict receiver expecting 1: the limit is checked before the order", &["SequenceLimit"], k0, 0, SEQUENCE_LIMIT, &ping1, keep, state(0, &[(0, 0)], strict), Some(CloseCode::SEQUENCE_EXHAUSTED)),
        case("sealed with the epoch-1 key but labelled epoch 0", &["WrongKey"], epoch_key(k0, 1), 0, 0, &ping1, keep, fresh(), Some(CloseCode::DECRYPT_FAILED)),
        case("sealed with an unrelated key", &["WrongKey"], label("another key"), 0, 0, &ping1, keep, fresh(), Some(CloseCode::DECRYPT_FAILED)),
        case("authentic record whose plaintext (msgpack nil) is not an inner message", &["BadPlaintext"], k0, 0, 0, &[0xc0], keep, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("authentic record with an empty plaintext", &["BadPlaintext"], k0, 0, 0, &[], keep, fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("body shorter than the 16-byte tag (record cut to 31 bytes)", &["Truncated"], k0, 0, 0, &ping1, |r| r[..HEADER_LEN + 15].to_vec(), fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("header only, empty body", &["Truncated"], k0, 0, 0, &ping1, |r| r[..HEADER_LEN].to_vec(), fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("shorter than the header (10 bytes)", &["Truncated"], k0, 0, 0, &ping1, |r| r[..10].to_vec(), fresh(), Some(CloseCode::PROTOCOL_VIOLATION)),
        case("body longer than the receiver's maxRecordBody (64 in this state)", &["TooLarge"], k0, 0, 0, &req, keep, ReceiverState { max_record_body: 64, ..fresh() }, Some(CloseCode::MESSAGE_TOO_BIG)),
    ];
    for c in cases_invalid {
        invalid.push(record_test(initial, c));
    }

    let i = initial;
    let sequences = vec![
        sequence_test(
            i,
            "0, 1, 2, then 1 again",
            &["Replay"],
            true,
            &[
                step(i, 0, 0, &ping(0)),
                step(i, 0, 1, &ping(1)),
                step(i, 0, 2, &ping(2)),
                step(i, 0, 1, &ping(1)),
            ],
            Some(CloseCode::REPLAY_DETECTED),
        ),
        sequence_test(
            i,
            "the first record twice",
            &["Replay"],
            true,
            &[step(i, 0, 0, &ping(0)), step(i, 0, 0, &ping(0))],
            Some(CloseCode::REPLAY_DETECTED),
        ),
        sequence_test(
            i,
            "0, 1, then 3: a gap is a reordering for a strict receiver",
            &["Reordered"],
            true,
            &[
                step(i, 0, 0, &ping(0)),
                step(i, 0, 1, &ping(1)),
                step(i, 0, 3, &ping(3)),
            ],
            Some(CloseCode::REPLAY_DETECTED),
        ),
        sequence_test(
            i,
            "strict receiver: a record starting at seq 1",
            &["Reordered"],
            true,
            &[step(i, 0, 1, &ping(1))],
            Some(CloseCode::REPLAY_DETECTED),
        ),
        sequence_test(
            i,
            "non-strict receiver: 0, 2, 1, 3 accepted, then 2 again",
            &["Replay", "NonStrict"],
            false,
            &[
                step(i, 0, 0, &ping(0)),
                step(i, 0, 2, &ping(2)),
                step(i, 0, 1, &ping(1)),
                step(i, 0, 3, &ping(3)),
                step(i, 0, 2, &ping(2)),
            ],
            Some(CloseCode::REPLAY_DETECTED),
        ),
        sequence_test(
            i,
            "non-strict receiver: 0, 2, 1, 3 all accepted",
            &["Valid", "NonStrict"],
            false,
            &[
                step(i, 0, 0, &ping(0)),
                step(i, 0, 2, &ping(2)),
                step(i, 0, 1, &ping(1)),
                step(i, 0, 3, &ping(3)),
            ],
            None,
        ),
    ];

    finish(
        "record",
        &[
            "Sealed transport records: sealing (key, epoch, seq, plaintext -> header, record) and the receive path (receiver state + received bytes -> plaintext, or a close code).",
            "All byte strings are lowercase hex; integers are JSON numbers (sequence numbers go up to 2^64-1: parse them as unsigned 64-bit integers).",
            "Header (16 bytes): version (1 byte, 1) || type (1 byte, 0x10 for sealed records) || reserved (LE16, 0) || epoch (LE32) || seq (LE64). Record = header || ChaCha20-Poly1305(key, nonce = 4 zero bytes || LE64(seq), ad = header, plaintext) = header || ciphertext || 16-byte tag.",
            "key is the key that sealed the record; for a genuine record it is the key of the header's epoch: key(epoch 0) = initialKey of the group, key(e+1) = REKEY(key(e)) (see rekey.json).",
            "plaintext is an encoded inner message (see messages.json) except where a test says otherwise. record is the record as sealed; receivedRecord is what the receiver is given (equal to record unless the test tampers with it). header is the first 16 bytes of record.",
            "receiverState is the receiver's state before receivedRecord arrives: epoch (its current receive epoch) and key (that epoch's key), acceptedSeqs (inclusive ranges of the sequence numbers its replay window has accepted; in strict order the next expected number is the highest + 1, or 0 when none), strictOrder (reject any record that is not exactly the next expected one) and maxRecordBody (largest body, ciphertext with tag, accepted).",
            "How the reference checker reaches a state: from a fresh receiver on initialKey it feeds genuine records for each accepted sequence number in increasing order, the first `epoch` of them carrying KEY_UPDATE (announcing the next epoch) and the rest PING. A harness may set the state directly instead.",
            "Receive path order (normative): length >= 16 and version == 1 (VERSION_UNSUPPORTED) -> body length <= maxRecordBody (MESSAGE_TOO_BIG) -> type == 0x10, reserved == 0, epoch == current (PROTOCOL_VIOLATION) -> replay window and, in strict order, seq == next expected (seq >= 2^62: SEQUENCE_EXHAUSTED; seen or too old, or out of order: REPLAY_DETECTED) -> body >= 16 bytes (PROTOCOL_VIOLATION) -> AEAD open (DECRYPT_FAILED) -> window update -> decode the inner message (PROTOCOL_VIOLATION). A record shorter than the header is PROTOCOL_VIOLATION.",
            "Valid tests must open to plaintext. Invalid tests must be rejected with expectedCloseCode (normative); expectedError is the reference implementation's error name (informative).",
            "RecordSequence tests feed steps, in order, to one fresh receiver (epoch 0, nothing accepted) with the given strictOrder: every step marked accept must be accepted (receiverEpochAfter is the receive epoch afterwards), a step marked reject must be rejected with its close code, and processing stops there because the connection closes.",
        ],
        &[
            ("Valid", "The record must be accepted and yield plaintext."),
            ("Rekeyed", "The receiver has processed KEY_UPDATEs and is past epoch 0."),
            ("NonStrict", "The receiver relies on the replay window alone (strictOrder false)."),
            ("SequenceLimit", "The sequence number is at or beyond the last usable value 2^62-1."),
            ("WindowEdge", "The sequence number sits on the replay window's boundary (RecordWindow: 1984 values)."),
            ("TamperedBody", "A ciphertext byte was changed."),
            ("TamperedTag", "A tag byte was changed."),
            ("TamperedHeader", "A header byte was changed after sealing."),
            ("WrongEpoch", "The record's epoch is not the receiver's current epoch."),
            ("Replay", "The sequence number was already accepted or is older than the window."),
            ("Reordered", "A strict receiver gets a sequence number other than the next expected one."),
            ("WrongKey", "The record was sealed under a key other than its epoch's key."),
            ("BadPlaintext", "The record is authentic but its plaintext is not an inner message."),
            ("Truncated", "The record is too short to hold a header or a tag."),
            ("TooLarge", "The body exceeds the receiver's size limit."),
        ],
        vec![
            json!({ "type": "RecordSealOpen", "initialKey": hex(initial), "tests": valid }),
            json!({ "type": "RecordOpenInvalid", "initialKey": hex(initial), "tests": invalid }),
            json!({ "type": "RecordSequence", "initialKey": hex(initial), "maxRecordBody": 65536, "tests": sequences }),
        ],
    )
}

// ---------------------------------------------------------------------------------
// replay_window.json
// ---------------------------------------------------------------------------------

/// The normative acceptance rule, literally: an independent model the bitmap window
/// must agree with on every step.
struct WindowModel {
    window: u64,
    accepted: std::collections::BTreeSet<u64>,
    top: Option<u64>,
}

impl WindowModel {
    fn decide(&self, value: u64) -> Result<(), ReplayError> {
        if value >= SEQUENCE_LIMIT {
            return Err(ReplayError::LimitReached);
        }
        if let Some(top) = self.top {
            if value <= top && top - value >= self.window {
                return Err(ReplayError::TooOld);
            }
        }
        if self.accepted.contains(&value) {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }
}

fn window_steps<const BLOCKS: usize>(values: &[u64]) -> Vec<Value> {
    let mut window = ReplayWindow::<BLOCKS>::new();
    let mut model = WindowModel {
        window: ReplayWindow::<BLOCKS>::WINDOW,
        accepted: Default::default(),
        top: None,
    };
    values
        .iter()
        .map(|&value| {
            let checked = window.check(value);
            let updated = window.update(value);
            assert_eq!(checked, updated);
            assert_eq!(checked, model.decide(value), "value {value}");
            if checked.is_ok() {
                model.accepted.insert(value);
                model.top = Some(model.top.map_or(value, |top| top.max(value)));
            }
            assert_eq!(window.highest(), model.top);
            json!({
                "value": value,
                "result": if checked.is_ok() { "accept" } else { "reject" },
                "reason": checked.err().map(|e| format!("{e:?}")),
                "highestAfter": window.highest(),
            })
        })
        .collect()
}

fn window_group<const BLOCKS: usize>(name: &str) -> Value {
    let w = ReplayWindow::<BLOCKS>::WINDOW;
    let ring = BLOCKS as u64 * 64;
    let limit = SEQUENCE_LIMIT;
    let big = 5 + 3 * ring + 17;
    let far = 1_000_000;
    let cases: Vec<(&str, Vec<&str>, Vec<u64>)> = vec![
        ("0 is a valid first value, accepted exactly once", vec!["Start", "Duplicate"], vec![0, 0]),
        ("in order from 0", vec!["InOrder"], (0..10).collect()),
        ("duplicates of recent values", vec!["Duplicate"], vec![0, 1, 2, 1, 2, 0, 3]),
        ("out of order within the window", vec!["OutOfOrder", "Duplicate"], vec![10, 5, 7, 5, 0, 9, 10, 11]),
        ("boundary: with highest = WINDOW, value 1 (distance WINDOW-1) is accepted and value 0 (distance WINDOW) is too old", vec!["Boundary", "TooOld"], vec![w, 1, 0, w, 1, w + 1, 1, 2]),
        ("boundary after in-order traffic: distance WINDOW-1 accepted once, distance WINDOW too old even though never seen", vec!["Boundary", "TooOld", "Duplicate"], vec![0, 1, 2, w + 2, 3, 3, 2, 1]),
        ("a jump larger than the whole ring forgets nothing inside the new window", vec!["Jump", "TooOld"], vec![5, big, 5, big - 1, big - w + 1, big - w, big - w + 1, big + 1]),
        ("a jump of exactly the ring size: stale ring bits of the reused slot are cleared", vec!["Jump", "TooOld"], vec![64, 65, 100, ring + 64, 64, 65, ring + 65, ring + 100, ring + 100, ring + 100 - w + 1, ring + 100 - w]),
        ("values skipped by a jump stay acceptable", vec!["Jump", "OutOfOrder"], vec![0, 100, 50, 99, 1, 100, 50]),
        ("a large jump, then the new window's edges; an old seen value reports TooOld, not Duplicate", vec!["Jump", "Boundary", "TooOld"], vec![0, far, far - w + 1, far - w, far - 1, 0]),
        ("near the limit: 2^62-1 is the last acceptable value", vec!["Limit", "Duplicate", "TooOld"], vec![limit - 2, limit - 1, limit, u64::MAX, limit - 1, limit - 2, limit - 1 - w, limit - w]),
        ("the maximum as first value, then 0", vec!["Limit", "Start", "TooOld"], vec![limit - 1, 0]),
        ("values at or beyond the limit never touch the window", vec!["Limit", "Start"], vec![limit, u64::MAX, 0, limit + 1, 0]),
    ];
    let tests: Vec<Value> = cases
        .into_iter()
        .map(|(comment, flags, values)| {
            json!({
                "comment": comment,
                "flags": flags,
                "steps": window_steps::<BLOCKS>(&values),
                "result": "valid",
            })
        })
        .collect();
    json!({
        "type": "ReplayWindowSequence",
        "window": name,
        "ringBits": ring,
        "windowSize": w,
        "sequenceLimit": limit,
        "tests": tests,
    })
}

fn replay_window_file() -> String {
    finish(
        "replay_window",
        &[
            "Anti-replay windows (RFC 6479 bitmap ring with one spare 64-bit block): RecordWindow (2048-bit ring, 1984-value window) for record sequence numbers and RequestIdWindow (4096-bit ring, 4032-value window) for request ids.",
            "Acceptance rule (normative): let top be the highest value accepted so far (none at first). A value v is accepted iff v < 2^62, and (top is none or v > top or top - v < windowSize), and v was not accepted before. Otherwise the reason is the first that applies of: LimitReached (v >= 2^62), TooOld (v <= top and top - v >= windowSize, whether or not v was seen), Duplicate.",
            "Each test starts from an empty window and applies its steps in order; for each step, value is checked and, if accepted, recorded. result is accept or reject, reason the rejection reason (null when accepted), highestAfter the highest accepted value after the step (null when none).",
            "Values are JSON numbers up to 2^64-1: parse them as unsigned 64-bit integers. ringBits, windowSize and sequenceLimit describe the window of the group.",
            "Every test is valid in the sense that an implementation must reproduce every step's decision; a rejected step does not end the test (the window is a pure data structure; the connection-level consequences are in record.json).",
        ],
        &[
            ("Start", "Covers the first value of an empty window."),
            ("InOrder", "Strictly increasing values."),
            ("Duplicate", "Includes a value that was already accepted."),
            ("OutOfOrder", "Includes an unseen value below the highest, inside the window."),
            ("Boundary", "Includes values at distance windowSize-1 and windowSize from the highest."),
            ("TooOld", "Includes a value at distance >= windowSize below the highest."),
            ("Jump", "Includes a forward jump of at least a ring word."),
            ("Limit", "Includes values at or beyond 2^62."),
        ],
        vec![
            window_group::<32>("RecordWindow"),
            window_group::<64>("RequestIdWindow"),
        ],
    )
}

// ---------------------------------------------------------------------------------
// rekey.json
// ---------------------------------------------------------------------------------

fn key_update(epoch: u32) -> Message {
    Message::KeyUpdate(KeyUpdate { epoch })
}

fn rekey_file() -> String {
    let chains: Vec<(&str, [u8; 32])> = vec![
        ("all-zero initial key", [0u8; 32]),
        (
            "initial key 00 01 02 .. 1f",
            core::array::from_fn(|i| u8::try_from(i).unwrap()),
        ),
        (
            "initial key from a label (the record.json initial key)",
            label("record layer initial key"),
        ),
    ];
    let chain_tests: Vec<Value> = chains
        .iter()
        .map(|(comment, initial)| {
            let keys: Vec<String> = (0..=5).map(|e| hex(epoch_key(*initial, e))).collect();
            // REKEY is Noise's: first 32 bytes of ENCRYPT(k, 2^64-1, "", 32 zeros).
            let mut manual = Vec::new();
            noise::seal(initial, u64::MAX, &[], &[0u8; 32], &mut manual);
            assert_eq!(manual[..32], epoch_key(*initial, 1));
            json!({
                "comment": comment,
                "flags": ["Valid"],
                "initialKey": hex(initial),
                "keys": keys,
                "result": "valid",
            })
        })
        .collect();

    // A sender's stream across epochs 0..5, produced by the implementation's sender.
    let initial = label("rekey sequence initial key");
    let mut transport = sender(initial);
    let mut stream = Vec::new();
    let mut seq = 0u64;
    for epoch in 0..=5u32 {
        let data = Message::Request(Request {
            id: u64::from(epoch) + 1,
            tool: "echo".to_owned(),
            args: ByteBuf::from(vec![0x91, u8::try_from(epoch).unwrap()]),
            grant_id: None,
            deadline_ms: None,
            signature: None,
            retry: false,
        });
        let record = transport.seal(&data).unwrap();
        assert_eq!(
            record,
            compose_record(&epoch_key(initial, epoch), epoch, seq, &data.encode())
        );
        stream.push(step(initial, epoch, seq, &data));
        seq += 1;
        if epoch < 5 {
            let record = transport.seal_key_update().unwrap();
            let update = key_update(epoch + 1);
            assert_eq!(
                record,
                compose_record(&epoch_key(initial, epoch), epoch, seq, &update.encode())
            );
            stream.push(step(initial, epoch, seq, &update));
            seq += 1;
        }
    }
    let i = initial;
    let data = ping;
    let with_key = |key: [u8; 32], epoch, seq, message: &Message| Step {
        key,
        epoch,
        seq,
        plaintext: message.encode(),
    };
    let sequences = vec![
        sequence_test(i, "one direction from epoch 0 to epoch 5: a REQUEST in each epoch, each KEY_UPDATE sealed under the epoch it ends", &["Valid"], true, &stream, None),
        sequence_test(i, "KEY_UPDATE announcing epoch 2 while at epoch 0", &["BadKeyUpdate"], true, &[step(i, 0, 0, &data(0)), step(i, 0, 1, &key_update(2))], Some(CloseCode::PROTOCOL_VIOLATION)),
        sequence_test(i, "KEY_UPDATE announcing the current epoch 0", &["BadKeyUpdate"], true, &[step(i, 0, 0, &key_update(0))], Some(CloseCode::PROTOCOL_VIOLATION)),
        sequence_test(i, "after KEY_UPDATE(1), a record still labelled (and sealed for) epoch 0", &["WrongEpoch"], true, &[step(i, 0, 0, &key_update(1)), step(i, 0, 1, &data(1))], Some(CloseCode::PROTOCOL_VIOLATION)),
        sequence_test(i, "after KEY_UPDATE(1), a record labelled epoch 1 but sealed with the epoch-0 key", &["WrongKey"], true, &[step(i, 0, 0, &key_update(1)), with_key(i, 1, 1, &data(1))], Some(CloseCode::DECRYPT_FAILED)),
        sequence_test(i, "a record for epoch 1 (correct epoch-1 key) without any KEY_UPDATE", &["WrongEpoch"], true, &[step(i, 0, 0, &data(0)), step(i, 1, 1, &data(1))], Some(CloseCode::PROTOCOL_VIOLATION)),
    ];

    let messages: Vec<Value> = [1u32, 2, 5, u32::MAX]
        .iter()
        .map(|&epoch| {
            let message = key_update(epoch);
            json!({
                "comment": format!("KEY_UPDATE announcing epoch {epoch}"),
                "flags": ["Valid"],
                "epoch": epoch,
                "encoded": hex(message.encode()),
                "decoded": message_json(&message),
                "result": "valid",
            })
        })
        .collect();

    finish(
        "rekey",
        &[
            "Rekeying of one record-layer direction. Each direction has its own epoch (u32, from 0) and key; key(0) is that direction's output of the handshake's Split(), key(e+1) = REKEY(key(e)).",
            "REKEY(k) is Noise's: the first 32 bytes of ChaCha20-Poly1305 encryption under k with nonce 4 zero bytes || LE64(2^64-1), empty associated data, and 32 zero bytes of plaintext (the tag is discarded).",
            "To move to the next epoch, a sender seals KEY_UPDATE {epoch: current + 1} as an ordinary record of the current epoch, then seals every later record with the next epoch's key and that epoch in the header. Sequence numbers continue across epochs (they are never reset). A receiver that opens a KEY_UPDATE announcing anything but current + 1 closes with PROTOCOL_VIOLATION.",
            "RekeyChain tests: keys[e] is the key of epoch e for e = 0..5 (keys[0] = initialKey).",
            "RekeySequence tests use the RecordSequence format of record.json: steps fed in order to one fresh receiver whose epoch-0 key is initialKey; each step gives the sealing key, epoch, seq, plaintext and the record; accepted steps give receiverEpochAfter.",
            "KeyUpdateMessage tests: the msgpack encoding of KEY_UPDATE messages (encoded, hex) and their JSON form (decoded).",
            "expectedCloseCode is normative, expectedError informative (reference implementation's error name).",
        ],
        &[
            ("Valid", "Must be accepted / reproduced exactly."),
            ("BadKeyUpdate", "A KEY_UPDATE announcing an epoch other than current + 1."),
            ("WrongEpoch", "A record whose epoch is not the receiver's current epoch."),
            ("WrongKey", "A record sealed under a key other than its epoch's key."),
        ],
        vec![
            json!({ "type": "RekeyChain", "tests": chain_tests }),
            json!({ "type": "RekeySequence", "initialKey": hex(initial), "maxRecordBody": 65536, "tests": sequences }),
            json!({ "type": "KeyUpdateMessage", "tests": messages }),
        ],
    )
}

// ---------------------------------------------------------------------------------
// envelope.json
// ---------------------------------------------------------------------------------

/// The Ed25519 group order ℓ, little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The same signature with S replaced by S + ℓ (a non-canonical encoding).
fn add_group_order(signature: &[u8; 64]) -> [u8; 64] {
    let mut out = *signature;
    let mut carry = 0u16;
    for (byte, order) in out[32..].iter_mut().zip(GROUP_ORDER) {
        let sum = u16::from(*byte) + u16::from(order) + carry;
        *byte = u8::try_from(sum & 0xff).unwrap();
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

struct Req {
    session_id: [u8; 32],
    request_id: u64,
    tool: String,
    args: Vec<u8>,
    grant_id: String,
}

impl Req {
    fn fields(&self) -> RequestFields<'_> {
        RequestFields {
            session_id: &self.session_id,
            request_id: self.request_id,
            tool: &self.tool,
            args: &self.args,
            grant_id: &self.grant_id,
        }
    }
}

struct Resp {
    session_id: [u8; 32],
    request_id: u64,
    request_hash: [u8; 32],
    result: Vec<u8>,
}

impl Resp {
    fn fields(&self) -> ResponseFields<'_> {
        ResponseFields {
            session_id: &self.session_id,
            request_id: self.request_id,
            request_hash: &self.request_hash,
            result: &self.result,
        }
    }
}

/// Verification of an envelope signature as a peer does it: key check, then strict
/// verification.
fn verify_envelope(public_key: [u8; 32], message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    IdentityKey::from_bytes(public_key)?.verify(message, signature)
}

fn envelope_outcome(
    mut test: Value,
    public_key: [u8; 32],
    signing_bytes: &[u8],
    signature: &[u8],
    expect: Option<&str>,
) -> Value {
    let outcome = verify_envelope(public_key, signing_bytes, signature);
    match (expect, outcome) {
        (None, Ok(())) => test["result"] = json!("valid"),
        (Some(name), Err(error)) => {
            assert_eq!(format!("{error:?}"), name, "{}", test["comment"]);
            test["result"] = json!("invalid");
            test["expectedError"] = json!(name);
        }
        (expect, outcome) => panic!("{}: expected {expect:?}, got {outcome:?}", test["comment"]),
    }
    test
}

fn request_test(
    comment: &str,
    flags: &[&str],
    public_key: [u8; 32],
    req: &Req,
    signature: &[u8],
    expect: Option<&str>,
) -> Value {
    let fields = req.fields();
    let signing_bytes = fields.signing_bytes();
    if let Ok(key) = IdentityKey::from_bytes(public_key) {
        assert_eq!(fields.verify(&key, signature).is_ok(), expect.is_none());
    }
    let test = json!({
        "comment": comment,
        "flags": flags,
        "sessionId": hex(req.session_id),
        "requestId": req.request_id,
        "tool": req.tool,
        "args": hex(&req.args),
        "grantId": req.grant_id,
        "signingBytes": hex(&signing_bytes),
        "requestHash": hex(fields.hash()),
        "signature": hex(signature),
    });
    envelope_outcome(test, public_key, &signing_bytes, signature, expect)
}

fn response_test(
    comment: &str,
    flags: &[&str],
    public_key: [u8; 32],
    resp: &Resp,
    signature: &[u8],
    expect: Option<&str>,
) -> Value {
    let fields = resp.fields();
    let signing_bytes = fields.signing_bytes();
    if let Ok(key) = IdentityKey::from_bytes(public_key) {
        assert_eq!(fields.verify(&key, signature).is_ok(), expect.is_none());
    }
    let test = json!({
        "comment": comment,
        "flags": flags,
        "sessionId": hex(resp.session_id),
        "requestId": resp.request_id,
        "requestHash": hex(resp.request_hash),
        "resultBytes": hex(&resp.result),
        "signingBytes": hex(&signing_bytes),
        "signature": hex(signature),
    });
    envelope_outcome(test, public_key, &signing_bytes, signature, expect)
}

fn envelope_file() -> String {
    let client = Identity::from_seed(&CLIENT_A_SEED);
    let server = Identity::from_seed(&SERVER_A_SEED);
    let client_pk = client.public_key().to_bytes();
    let server_pk = server.public_key().to_bytes();
    let session_id = label("envelope session id");
    let base = Req {
        session_id,
        request_id: 1,
        tool: "echo".to_owned(),
        args: rmp_serde::to_vec(&("hello",)).unwrap(),
        grant_id: String::new(),
    };
    let sign_req = |r: &Req| r.fields().sign(&client);
    let base_sig = sign_req(&base);
    let altered = |f: &dyn Fn(&mut Req)| {
        let mut r = Req {
            session_id: base.session_id,
            request_id: base.request_id,
            tool: base.tool.clone(),
            args: base.args.clone(),
            grant_id: base.grant_id.clone(),
        };
        f(&mut r);
        r
    };
    let with_grant = Req {
        session_id,
        request_id: (1 << 40) + 5,
        tool: "search".to_owned(),
        args: rmp_serde::to_vec_named(&std::collections::BTreeMap::from([
            ("query", "toolwire"),
            ("lang", "en"),
        ]))
        .unwrap(),
        grant_id: "g-2026-001".to_owned(),
    };
    let empty_args = Req {
        session_id,
        request_id: 2,
        tool: "now".to_owned(),
        args: Vec::new(),
        grant_id: String::new(),
    };
    let max_id = Req {
        session_id,
        request_id: LAST_SEQUENCE,
        tool: "echo".to_owned(),
        args: vec![0x90],
        grant_id: String::new(),
    };

    let requests = vec![
        request_test("request without grant", &["Valid"], client_pk, &base, &base_sig, None),
        request_test("request naming a grant, with map arguments and a 41-bit id", &["Valid"], client_pk, &with_grant, &sign_req(&with_grant), None),
        request_test("request with empty argument bytes", &["Valid"], client_pk, &empty_args, &sign_req(&empty_args), None),
        request_test("request id 2^62-1", &["Valid"], client_pk, &max_id, &sign_req(&max_id), None),
        request_test("signed by the server's identity instead of the client's", &["WrongKey"], client_pk, &base, &base.fields().sign(&server), Some("BadSignature")),
        request_test("arguments altered after signing", &["AlteredField"], client_pk, &altered(&|r| r.args = rmp_serde::to_vec(&("hellp",)).unwrap()), &base_sig, Some("BadSignature")),
        request_test("tool name altered after signing", &["AlteredField"], client_pk, &altered(&|r| r.tool = "ecHo".to_owned()), &base_sig, Some("BadSignature")),
        request_test("session id altered (signature replayed into another session)", &["AlteredField"], client_pk, &altered(&|r| r.session_id = label("another session id")), &base_sig, Some("BadSignature")),
        request_test("request id altered", &["AlteredField"], client_pk, &altered(&|r| r.request_id = 2), &base_sig, Some("BadSignature")),
        request_test("grant id added after signing", &["AlteredField"], client_pk, &altered(&|r| r.grant_id = "g-2026-001".to_owned()), &base_sig, Some("BadSignature")),
        request_test("non-canonical signature: S replaced by S + l (must be rejected by strict verification)", &["NonCanonicalSignature"], client_pk, &base, &add_group_order(&base_sig), Some("BadSignature")),
        request_test("signature truncated to 63 bytes", &["BadSignatureLength"], client_pk, &base, &base_sig[..63], Some("BadSignature")),
        request_test("all-zero signature", &["WrongKey"], client_pk, &base, &[0u8; 64], Some("BadSignature")),
    ];
    // Small-order public keys: refused as keys, whatever the signature.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let mut trivial_signature = [0u8; 64];
    trivial_signature[0] = 1; // R = identity point, S = 0
    use ed25519_dalek::Verifier as _;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&identity_point).unwrap();
    assert!(vk.is_weak());
    assert!(
        vk.verify(
            &base.fields().signing_bytes(),
            &ed25519_dalek::Signature::from_bytes(&trivial_signature)
        )
        .is_ok(),
        "the trivial forgery passes non-strict verification"
    );
    let order_eight: [u8; 32] =
        ::hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
            .unwrap()
            .try_into()
            .unwrap();
    assert!(ed25519_dalek::VerifyingKey::from_bytes(&order_eight)
        .unwrap()
        .is_weak());
    let small_order = [
        request_test("public key is the identity point (order 1); R = identity, S = 0 satisfies the non-strict equation for every message", &["SmallOrderPublicKey"], identity_point, &base, &trivial_signature, Some("InvalidPoint")),
        request_test("public key is a point of order 8", &["SmallOrderPublicKey"], order_eight, &base, &trivial_signature, Some("InvalidPoint")),
    ];

    let request_hash = base.fields().hash();
    let resp = Resp {
        session_id,
        request_id: 1,
        request_hash,
        result: rmp_serde::to_vec(&"hello").unwrap(),
    };
    let sign_resp = |r: &Resp| r.fields().sign(&server);
    let resp_sig = sign_resp(&resp);
    let empty = Resp {
        session_id,
        request_id: 2,
        request_hash: empty_args.fields().hash(),
        result: Vec::new(),
    };
    let responses = vec![
        response_test(
            "response to the first request vector",
            &["Valid"],
            server_pk,
            &resp,
            &resp_sig,
            None,
        ),
        response_test(
            "empty result bytes, answering the empty-arguments request",
            &["Valid"],
            server_pk,
            &empty,
            &sign_resp(&empty),
            None,
        ),
        response_test(
            "result altered after signing",
            &["AlteredField"],
            server_pk,
            &Resp {
                result: rmp_serde::to_vec(&"hellp").unwrap(),
                ..resp_copy(&resp)
            },
            &resp_sig,
            Some("BadSignature"),
        ),
        response_test(
            "request hash of another request",
            &["AlteredField"],
            server_pk,
            &Resp {
                request_hash: with_grant.fields().hash(),
                ..resp_copy(&resp)
            },
            &resp_sig,
            Some("BadSignature"),
        ),
        response_test(
            "request id altered",
            &["AlteredField"],
            server_pk,
            &Resp {
                request_id: 3,
                ..resp_copy(&resp)
            },
            &resp_sig,
            Some("BadSignature"),
        ),
        response_test(
            "signed by the client's identity",
            &["WrongKey"],
            server_pk,
            &resp,
            &resp.fields().sign(&client),
            Some("BadSignature"),
        ),
        response_test(
            "non-canonical signature: S replaced by S + l",
            &["NonCanonicalSignature"],
            server_pk,
            &resp,
            &add_group_order(&resp_sig),
            Some("BadSignature"),
        ),
    ];

    finish(
        "envelope",
        &[
            "Signed envelopes: Ed25519 signatures by the client over REQUEST fields and by the server over RESPONSE fields. All byte strings are lowercase hex.",
            "PAE(pieces) = LE64(number of pieces) || for each piece: LE64(length) || bytes (LE64: little-endian u64 with the top bit cleared).",
            "Request signing bytes = PAE(\"toolwire/1 request\", sessionId (32 bytes), LE64(requestId), tool (UTF-8), args (the msgpack argument bytes exactly as sent), grantId (UTF-8, empty when the request names no grant)). requestHash = SHA-256(request signing bytes).",
            "Response signing bytes = PAE(\"toolwire/1 response\", sessionId, LE64(requestId), requestHash, resultBytes (the msgpack result bytes exactly as sent)).",
            "publicKey (group) is the key the verifier uses; privateKeySeed is the Ed25519 seed that produced the valid signatures. signingBytes is always computed from the test's fields (so for AlteredField tests it differs from what was signed).",
            "Verification is strict: the public key must be a valid point that is not of small order (otherwise InvalidPoint), and the signature is checked with RFC 8032 rules plus S < l and canonical encodings of R and A (ed25519-dalek verify_strict); anything else is BadSignature.",
            "result valid: must verify; invalid: must be rejected (expectedError: BadSignature or InvalidPoint).",
        ],
        &[
            ("Valid", "A genuine signature over these fields."),
            ("WrongKey", "The signature was not made by the group's key."),
            ("AlteredField", "A signed field was changed after signing."),
            ("NonCanonicalSignature", "S is replaced by S + l: same value mod l, non-canonical encoding."),
            ("BadSignatureLength", "The signature is not 64 bytes."),
            ("SmallOrderPublicKey", "The public key is a point of small order, which strict verification refuses."),
        ],
        vec![
            json!({ "type": "RequestSignature", "publicKey": hex(client_pk), "privateKeySeed": hex(CLIENT_A_SEED), "tests": requests }),
            json!({ "type": "RequestSignature", "publicKey": hex(identity_point), "privateKeySeed": null, "tests": small_order[..1].to_vec() }),
            json!({ "type": "RequestSignature", "publicKey": hex(order_eight), "privateKeySeed": null, "tests": small_order[1..].to_vec() }),
            json!({ "type": "ResponseSignature", "publicKey": hex(server_pk), "privateKeySeed": hex(SERVER_A_SEED), "tests": responses }),
        ],
    )
}

fn resp_copy(resp: &Resp) -> Resp {
    Resp {
        session_id: resp.session_id,
        request_id: resp.request_id,
        request_hash: resp.request_hash,
        result: resp.result.clone(),
    }
}

// ---------------------------------------------------------------------------------
// grant.json
// ---------------------------------------------------------------------------------

struct GrantKeys {
    names: Vec<(&'static str, [u8; 32])>,
}

impl GrantKeys {
    fn new() -> Self {
        Self {
            names: vec![
                ("issuer", ISSUER_SEED),
                ("untrustedIssuer", [0x55; 32]),
                ("server", SERVER_A_SEED),
                ("otherServer", [0x54; 32]),
                ("client", CLIENT_A_SEED),
                ("otherClient", [0x4f; 32]),
                ("delegate1", [0x44; 32]),
                ("delegate2", [0x45; 32]),
                ("delegate3", [0x46; 32]),
                ("delegate4", [0x47; 32]),
            ],
        }
    }

    fn seed(&self, name: &str) -> [u8; 32] {
        self.names.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn public(&self, name: &str) -> [u8; 32] {
        identity_public(self.seed(name))
    }

    fn signing(&self, name: &str) -> ed25519_dalek::SigningKey {
        Identity::from_seed(&self.seed(name)).signing_key().clone()
    }

    fn json(&self) -> Value {
        named_keys_json(&self.names)
    }
}

const GRANT_NOW: i64 = 1_767_268_800; // 2026-01-01T12:00:00Z
const GRANT_EXP_UNIX: i64 = 1_767_312_000; // 2026-01-02T00:00:00Z

struct GrantContext {
    now: i64,
    audience: [u8; 32],
    holder: [u8; 32],
    session: Option<[u8; 32]>,
    trusted: Vec<[u8; 32]>,
    skew: i64,
}

fn grant_test(
    comment: &str,
    flags: &[&str],
    token: &str,
    ctx: &GrantContext,
    expect: Option<&str>,
) -> Value {
    let context = VerifyContext {
        trusted_issuers: &ctx.trusted,
        audience: ctx.audience,
        holder: ctx.holder,
        now_unix: ctx.now,
        session_id: ctx.session,
        max_clock_skew_secs: ctx.skew,
    };
    let outcome = verify_grant(token, &context);
    let mut test = json!({
        "comment": comment,
        "flags": flags,
        "token": token,
        "now": ctx.now,
        "audience": hex(ctx.audience),
        "holder": hex(ctx.holder),
        "sessionId": ctx.session.map(hex),
        "trustedIssuers": ctx.trusted.iter().map(hex).collect::<Vec<_>>(),
        "maxClockSkewSecs": ctx.skew,
    });
    if let Ok((message, _footer)) = paseto::decode_unverified_v4_public(token) {
        if let Ok(claims) = serde_json::from_slice::<Value>(&message) {
            test["leafClaims"] = claims;
        }
    }
    match (expect, outcome) {
        (None, Ok(grant)) => {
            test["result"] = json!("valid");
            test["expectedGrant"] = json!({
                "id": grant.id,
                "rootIssuer": hex(grant.root_issuer),
                "holder": hex(grant.holder),
                "audience": hex(grant.audience),
                "tools": grant.tools,
                "scope": grant.scope,
                "expiresAtUnix": grant.expires_at_unix,
                "session": grant.session.map(hex),
                "chainIds": grant.chain_ids,
            });
        }
        (Some(name), Err(error)) => {
            assert_eq!(grant_error_name(&error), name, "{comment}");
            test["result"] = json!("invalid");
            test["expectedError"] = json!(name);
        }
        (expect, outcome) => panic!("{comment}: expected {expect:?}, got {outcome:?}"),
    }
    test
}

/// Replaces the signed message of a token, keeping its signature.
fn replace_message(token: &str, edit: impl Fn(&mut Value)) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = engine
        .decode(token.strip_prefix("v4.public.").unwrap())
        .unwrap();
    let (message, signature) = body.split_at(body.len() - 64);
    let mut claims: Value = serde_json::from_slice(message).unwrap();
    edit(&mut claims);
    let mut new_body = serde_json::to_vec(&claims).unwrap();
    new_body.extend_from_slice(signature);
    format!("v4.public.{}", engine.encode(new_body))
}

fn flip_signature_bit(token: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut body = engine
        .decode(token.strip_prefix("v4.public.").unwrap())
        .unwrap();
    let last = body.len() - 1;
    body[last] ^= 0x01;
    format!("v4.public.{}", engine.encode(body))
}

/// Re-signs a token's message with other PASETO parameters.
fn resign(token: &str, key: &ed25519_dalek::SigningKey, footer: &[u8], assertion: &[u8]) -> String {
    let (message, _) = paseto::decode_unverified_v4_public(token).unwrap();
    paseto::sign_v4_public(key, &message, footer, assertion)
}

fn grant_file() -> String {
    let k = GrantKeys::new();
    let exp = datetime!(2026-01-02 0:00 UTC);
    let later = datetime!(2026-01-02 1:00 UTC);
    let iat = datetime!(2026-01-01 0:00 UTC);
    let server = k.public("server");
    let client = k.public("client");
    let issuer = k.signing("issuer");
    let ctx = |holder: [u8; 32]| GrantContext {
        now: GRANT_NOW,
        audience: server,
        holder,
        session: None,
        trusted: vec![k.public("issuer")],
        skew: 0,
    };
    let session = label("grant session id");
    let root = |holder: &str, id: &str| {
        GrantBuilder::new(k.public(holder), server, id, exp)
            .tools(["search", "fetch"])
            .scope(["read", "write"])
            .issued_at(iat)
    };
    let link = |holder: &str, id: &str, parent: &str| {
        GrantBuilder::new(k.public(holder), server, id, exp)
            .tools(["search"])
            .scope(["read"])
            .delegate_from(parent)
    };

    let basic = root("client", "grant-1").sign(&issuer).unwrap();
    let mut tests = Vec::new();
    tests.push(grant_test(
        "root grant, two tools and two scopes",
        &["Valid"],
        &basic,
        &ctx(client),
        None,
    ));
    let with_nbf = GrantBuilder::new(client, server, "grant-nbf", exp)
        .tools(["search"])
        .issued_at(iat)
        .not_before(datetime!(2026-01-01 6:00 UTC))
        .sign(&issuer)
        .unwrap();
    tests.push(grant_test(
        "root grant with iat and nbf in the past",
        &["Valid"],
        &with_nbf,
        &ctx(client),
        None,
    ));
    let any_tool = GrantBuilder::new(client, server, "grant-any", exp)
        .tools(["*"])
        .sign(&issuer)
        .unwrap();
    tests.push(grant_test(
        "root grant for every tool (\"*\"), no scope, no iat",
        &["Valid"],
        &any_tool,
        &ctx(client),
        None,
    ));
    tests.push(grant_test(
        "expiry 10 s ago, accepted with 30 s clock skew",
        &["Valid", "ClockSkew"],
        &basic,
        &GrantContext {
            now: GRANT_EXP_UNIX + 10,
            skew: 30,
            ..ctx(client)
        },
        None,
    ));
    let nbf_soon = GrantBuilder::new(client, server, "grant-nbf-soon", exp)
        .tools(["search"])
        .not_before(datetime!(2026-01-01 12:00:20 UTC))
        .sign(&issuer)
        .unwrap();
    tests.push(grant_test(
        "nbf 20 s in the future, accepted with 30 s clock skew",
        &["Valid", "ClockSkew"],
        &nbf_soon,
        &GrantContext {
            skew: 30,
            ..ctx(client)
        },
        None,
    ));
    tests.push(grant_test(
        "nbf 20 s in the future, no skew",
        &["NotYetValid"],
        &nbf_soon,
        &ctx(client),
        Some("NotYetValid"),
    ));
    tests.push(grant_test(
        "now equals exp: exp is exclusive",
        &["Expired"],
        &basic,
        &GrantContext {
            now: GRANT_EXP_UNIX,
            ..ctx(client)
        },
        Some("Expired"),
    ));
    tests.push(grant_test(
        "one second before exp",
        &["Valid"],
        &basic,
        &GrantContext {
            now: GRANT_EXP_UNIX - 1,
            ..ctx(client)
        },
        None,
    ));
    tests.push(grant_test(
        "a day after exp",
        &["Expired"],
        &basic,
        &GrantContext {
            now: GRANT_EXP_UNIX + 86_400,
            ..ctx(client)
        },
        Some("Expired"),
    ));
    tests.push(grant_test(
        "expiry 31 s ago with 30 s clock skew",
        &["Expired", "ClockSkew"],
        &basic,
        &GrantContext {
            now: GRANT_EXP_UNIX + 31,
            skew: 30,
            ..ctx(client)
        },
        Some("Expired"),
    ));
    tests.push(grant_test(
        "presented to another tool server",
        &["WrongAudience"],
        &basic,
        &GrantContext {
            audience: k.public("otherServer"),
            ..ctx(client)
        },
        Some("WrongAudience"),
    ));
    tests.push(grant_test(
        "presented over another identity's session",
        &["WrongHolder"],
        &basic,
        &ctx(k.public("otherClient")),
        Some("WrongHolder"),
    ));
    let untrusted = root("client", "grant-untrusted")
        .sign(&k.signing("untrustedIssuer"))
        .unwrap();
    tests.push(grant_test(
        "signed by an issuer the verifier does not trust",
        &["UntrustedIssuer"],
        &untrusted,
        &ctx(client),
        Some("UntrustedIssuer"),
    ));
    tests.push(grant_test(
        "last signature byte flipped",
        &["BadSignature"],
        &flip_signature_bit(&basic),
        &ctx(client),
        Some("BadSignature"),
    ));
    tests.push(grant_test(
        "claims edited after signing (a tool added)",
        &["BadSignature"],
        &replace_message(&basic, |c| {
            c["tools"] = json!(["search", "fetch", "delete"])
        }),
        &ctx(client),
        Some("BadSignature"),
    ));
    tests.push(grant_test(
        "signed without the implicit assertion \"toolwire/1 grant\" (a PASETO for another purpose)",
        &["BadSignature"],
        &resign(&basic, &issuer, b"", b""),
        &ctx(client),
        Some("BadSignature"),
    ));
    tests.push(grant_test(
        "token with a footer",
        &["Malformed"],
        &resign(
            &basic,
            &issuer,
            b"{\"kid\":\"1\"}",
            GRANT_IMPLICIT_ASSERTION,
        ),
        &ctx(client),
        Some("Malformed.footer"),
    ));
    tests.push(grant_test(
        "v4.local header",
        &["Malformed"],
        &basic.replacen("v4.public.", "v4.local.", 1),
        &ctx(client),
        Some("Malformed.purpose"),
    ));
    let no_tools = resign(
        &replace_message(&basic, |c| c["tools"] = json!([])),
        &issuer,
        b"",
        GRANT_IMPLICIT_ASSERTION,
    );
    tests.push(grant_test(
        "validly signed claims with an empty tools list",
        &["Malformed"],
        &no_tools,
        &ctx(client),
        Some("Malformed.tools"),
    ));
    let upper_sid = resign(
        &replace_message(&basic, |c| c["sid"] = json!(hex(session).to_uppercase())),
        &issuer,
        b"",
        GRANT_IMPLICIT_ASSERTION,
    );
    tests.push(grant_test(
        "sid in uppercase hex (only lowercase is accepted)",
        &["Malformed", "SessionBound"],
        &upper_sid,
        &GrantContext {
            session: Some(session),
            ..ctx(client)
        },
        Some("Malformed.sid"),
    ));

    // Session binding.
    let bound = root("client", "grant-bound")
        .session(session)
        .sign(&issuer)
        .unwrap();
    tests.push(grant_test(
        "session-bound grant in its session",
        &["Valid", "SessionBound"],
        &bound,
        &GrantContext {
            session: Some(session),
            ..ctx(client)
        },
        None,
    ));
    tests.push(grant_test(
        "session-bound grant in another session",
        &["WrongSession", "SessionBound"],
        &bound,
        &GrantContext {
            session: Some(label("another session")),
            ..ctx(client)
        },
        Some("WrongSession"),
    ));
    tests.push(grant_test(
        "session-bound grant where the verifier has no session id",
        &["WrongSession", "SessionBound"],
        &bound,
        &ctx(client),
        Some("WrongSession"),
    ));

    // Delegation.
    let d1 = k.signing("delegate1");
    let d2 = k.signing("delegate2");
    let d3 = k.signing("delegate3");
    let d4 = k.signing("delegate4");
    let root_d1 = root("delegate1", "root-d1").sign(&issuer).unwrap();
    let depth1 = link("client", "link-1", &root_d1).sign(&d1).unwrap();
    tests.push(grant_test(
        "delegation depth 1: issuer -> delegate1 -> client, narrowed to one tool and scope",
        &["Valid", "Delegation"],
        &depth1,
        &ctx(client),
        None,
    ));
    let l1 = link("delegate2", "link-1", &root_d1).sign(&d1).unwrap();
    let depth2 = link("client", "link-2", &l1).sign(&d2).unwrap();
    tests.push(grant_test(
        "delegation depth 2",
        &["Valid", "Delegation"],
        &depth2,
        &ctx(client),
        None,
    ));
    let l2 = link("delegate3", "link-2", &l1).sign(&d2).unwrap();
    let depth3 = link("client", "link-3", &l2).sign(&d3).unwrap();
    tests.push(grant_test(
        "delegation depth 3 (the maximum)",
        &["Valid", "Delegation"],
        &depth3,
        &ctx(client),
        None,
    ));
    let l3 = link("delegate4", "link-3", &l2).sign(&d3).unwrap();
    let depth4 = link("client", "link-4", &l3).sign(&d4).unwrap();
    tests.push(grant_test(
        "delegation depth 4: one link too many",
        &["ChainTooDeep", "Delegation"],
        &depth4,
        &ctx(client),
        Some("ChainTooDeep"),
    ));
    let broken = link("client", "link-broken", &root_d1).sign(&d2).unwrap();
    tests.push(grant_test(
        "link signed by delegate2, but the parent's holder is delegate1",
        &["BrokenChain", "Delegation"],
        &broken,
        &ctx(client),
        Some("BrokenChain"),
    ));
    let wide_tools = link("client", "link-wide", &root_d1)
        .tools(["search", "delete"])
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link adds a tool its parent lacks",
        &["WidenedDelegation", "Delegation"],
        &wide_tools,
        &ctx(client),
        Some("WidenedDelegation"),
    ));
    let wide_any = link("client", "link-wide", &root_d1)
        .tools(["*"])
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link claims every tool (\"*\") under a parent with a tool list",
        &["WidenedDelegation", "Delegation"],
        &wide_any,
        &ctx(client),
        Some("WidenedDelegation"),
    ));
    let wide_scope = link("client", "link-wide", &root_d1)
        .scope(["read", "admin"])
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link adds a scope its parent lacks",
        &["WidenedDelegation", "Delegation"],
        &wide_scope,
        &ctx(client),
        Some("WidenedDelegation"),
    ));
    let wide_exp = GrantBuilder::new(client, server, "link-wide", later)
        .tools(["search"])
        .delegate_from(&root_d1)
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link expires after its parent",
        &["WidenedDelegation", "Delegation"],
        &wide_exp,
        &ctx(client),
        Some("WidenedDelegation"),
    ));
    let bound_root = root("delegate1", "root-bound")
        .session(session)
        .sign(&issuer)
        .unwrap();
    let unbound_link = link("client", "link-unbound", &bound_root)
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link drops its parent's session binding",
        &["WidenedDelegation", "Delegation", "SessionBound"],
        &unbound_link,
        &GrantContext {
            session: Some(session),
            ..ctx(client)
        },
        Some("WidenedDelegation"),
    ));
    let narrowing_sid = link("client", "link-bound", &root_d1)
        .session(session)
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link adds a session binding its parent lacks (narrowing)",
        &["Valid", "Delegation", "SessionBound"],
        &narrowing_sid,
        &GrantContext {
            session: Some(session),
            ..ctx(client)
        },
        None,
    ));
    let any_root = GrantBuilder::new(k.public("delegate1"), server, "root-any", exp)
        .tools(["*"])
        .sign(&issuer)
        .unwrap();
    let under_any = GrantBuilder::new(client, server, "link-any", exp)
        .tools(["deploy"])
        .delegate_from(&any_root)
        .sign(&d1)
        .unwrap();
    tests.push(grant_test(
        "link names a specific tool under a parent for every tool",
        &["Valid", "Delegation"],
        &under_any,
        &ctx(client),
        None,
    ));
    tests.push(grant_test(
        "delegated grant presented by the intermediate holder",
        &["WrongHolder", "Delegation"],
        &depth1,
        &ctx(k.public("delegate1")),
        Some("WrongHolder"),
    ));
    let untrusted_root = root("delegate1", "root-untrusted")
        .sign(&k.signing("untrustedIssuer"))
        .unwrap();
    let untrusted_chain = link("client", "link-1", &untrusted_root).sign(&d1).unwrap();
    tests.push(grant_test(
        "valid link under a root from an untrusted issuer",
        &["UntrustedIssuer", "Delegation"],
        &untrusted_chain,
        &ctx(client),
        Some("UntrustedIssuer"),
    ));
    // GRT-023: the order of rules 2 and 3 (root first; per token its issuer, then its
    // signature; a token completely before the next) decides between two failures.
    let bad_untrusted_root = flip_signature_bit(&untrusted_root);
    let bad_link_under_bad_root = flip_signature_bit(
        &link("client", "link-1", &bad_untrusted_root)
            .sign(&d1)
            .unwrap(),
    );
    tests.push(grant_test(
        "root from an untrusted issuer with a bad signature, under a link with a bad signature: the root's issuer is checked first",
        &["UntrustedIssuer", "BadSignature", "Delegation"],
        &bad_link_under_bad_root,
        &ctx(client),
        Some("UntrustedIssuer"),
    ));
    let broken_under_bad_root = link("client", "link-1", &flip_signature_bit(&root_d1))
        .sign(&d2)
        .unwrap();
    tests.push(grant_test(
        "trusted root with a bad signature, under a link its holder did not sign: the root's signature is checked before the link's issuer",
        &["BadSignature", "BrokenChain", "Delegation"],
        &broken_under_bad_root,
        &ctx(client),
        Some("BadSignature"),
    ));
    let broken_under_bad_l1 = link("client", "link-2", &flip_signature_bit(&l1))
        .sign(&d3)
        .unwrap();
    tests.push(grant_test(
        "first link with a bad signature, second link not signed by the first link's holder: the first link is checked completely before the second",
        &["BadSignature", "BrokenChain", "Delegation"],
        &broken_under_bad_l1,
        &ctx(client),
        Some("BadSignature"),
    ));

    finish(
        "grant",
        &[
            "Capability grants: PASETO v4.public tokens (Ed25519) with implicit assertion \"toolwire/1 grant\", an empty footer, and a JSON claims object: iss, sub, aud (identity keys as unpadded base64url of the 32 bytes), jti, iat?, nbf?, exp (RFC 3339), tools (non-empty; \"*\" = every tool), scope?, sid? (64 lowercase hex digits), parent? (the parent token, making this token a delegation link).",
            "keys (group) lists every key used: seed (Ed25519 seed), publicKey (hex) and text (the base64url form used in claims). Tokens are deterministic (Ed25519 signatures are), so a signer must reproduce them byte for byte.",
            "Each test gives the verification context: now (Unix seconds), audience (the verifier's identity key), holder (the identity the presenting peer authenticated as), sessionId (hex, or null when the verifier has no session), trustedIssuers, maxClockSkewSecs. leafClaims is the presented token's claims, for reading (unverified).",
            "Verification rules, first failure wins: 1 parse every token leaf to root (at most 3 links below the root: ChainTooDeep; bad structure: Malformed.<part>); 2 root iss trusted (UntrustedIssuer) and root signature (BadSignature); 3 each link's iss equals its parent's sub (BrokenChain) and its signature (BadSignature); 4 per token, root first: aud (WrongAudience), exp > now - skew (Expired), nbf <= now + skew (NotYetValid), links no wider than their parent in exp, tools, scope and sid (WidenedDelegation); 5 leaf sub equals holder (WrongHolder), and every sid present equals sessionId (WrongSession).",
            "Valid tests give expectedGrant, the effective rights: id (leaf jti), rootIssuer, holder, audience (hex), tools, scope, expiresAtUnix (leaf exp, seconds), session (hex or null) and chainIds (jti of every token, root first). Invalid tests give expectedError (a grant error name; Malformed.<part> names the offending part as the reference implementation reports it, which other implementations may report differently).",
        ],
        &[
            ("Valid", "Must verify and give expectedGrant."),
            ("ClockSkew", "The outcome depends on maxClockSkewSecs."),
            ("Expired", "exp <= now - skew for a token of the chain."),
            ("NotYetValid", "nbf > now + skew for a token of the chain."),
            ("WrongAudience", "A token is for another tool server."),
            ("WrongHolder", "The leaf's sub is not the presenting identity."),
            ("UntrustedIssuer", "The root is not signed by a trusted issuer."),
            ("BadSignature", "A signature does not verify (altered token, claims, or PASETO parameters)."),
            ("Malformed", "Not a well-formed grant token."),
            ("SessionBound", "A token of the chain carries a sid."),
            ("WrongSession", "A sid does not match the verifier's session."),
            ("Delegation", "A chain with at least one delegation link."),
            ("ChainTooDeep", "More than 3 links below the root."),
            ("BrokenChain", "A link not signed by its parent's holder."),
            ("WidenedDelegation", "A link claims more than its parent."),
        ],
        vec![json!({
            "type": "GrantVerification",
            "implicitAssertion": String::from_utf8(GRANT_IMPLICIT_ASSERTION.to_vec()).unwrap(),
            "keys": k.json(),
            "tests": tests,
        })],
    )
}

// ---------------------------------------------------------------------------------
// messages.json
// ---------------------------------------------------------------------------------

fn sample_request() -> Message {
    let args = rmp_serde::to_vec(&("hello",)).unwrap();
    let session_id = label("envelope session id");
    let signature = RequestFields {
        session_id: &session_id,
        request_id: 1,
        tool: "echo",
        args: &args,
        grant_id: "g-1",
    }
    .sign(&Identity::from_seed(&CLIENT_A_SEED));
    Message::Request(Request {
        id: 1,
        tool: "echo".to_owned(),
        args: ByteBuf::from(args),
        grant_id: Some("g-1".to_owned()),
        deadline_ms: Some(5000),
        signature: Some(ByteBuf::from(signature.to_vec())),
        retry: false,
    })
}

fn sample_response() -> Message {
    Message::Response(Response {
        id: 1,
        result: ByteBuf::from(rmp_serde::to_vec(&"hello").unwrap()),
        signature: Some(ByteBuf::from(vec![0x5a; 64])),
    })
}

fn signed_manifest() -> SignedManifest {
    SignedManifest {
        manifest: ByteBuf::from(vec![
            0x82, 0xa6, b's', b'e', b'r', b'v', b'e', b'r', 0xc4, 0x00, 0xa5, b't', b'o', b'o',
            b'l', b's', 0x90,
        ]),
        signature: ByteBuf::from(vec![0x11; 64]),
    }
}

fn granted(name: &str) -> GrantedTool {
    GrantedTool {
        name: name.to_owned(),
        digest: ByteBuf::from(Sha256::digest(name.as_bytes()).to_vec()),
    }
}

fn sample_messages() -> Vec<(&'static str, &'static str, Message)> {
    vec![
        (
            "CAP_GRANT with an expiry",
            "server",
            Message::CapGrant(CapGrant {
                granted: vec![granted("search"), granted("fetch")],
                limits: CallLimits {
                    rate_per_sec: 10,
                    burst: 20,
                    max_in_flight: 4,
                },
                expires_at_ms: Some(1_767_229_200_000),
                policy_version: 3,
                manifest: signed_manifest(),
            }),
        ),
        (
            "CAP_GRANT granting nothing, no expiry",
            "server",
            Message::CapGrant(CapGrant {
                granted: Vec::new(),
                limits: CallLimits {
                    rate_per_sec: 0,
                    burst: 0,
                    max_in_flight: 0,
                },
                expires_at_ms: None,
                policy_version: 0,
                manifest: signed_manifest(),
            }),
        ),
        (
            "CAP_UPDATE with a revocation and a new manifest",
            "server",
            Message::CapUpdate(CapUpdate {
                granted: vec![granted("search")],
                revoked: vec!["fetch".to_owned()],
                policy_version: 4,
                manifest: Some(signed_manifest()),
            }),
        ),
        (
            "CAP_UPDATE without manifest",
            "server",
            Message::CapUpdate(CapUpdate {
                granted: Vec::new(),
                revoked: Vec::new(),
                policy_version: 5,
                manifest: None,
            }),
        ),
        (
            "CAP_REQUEST with tools and a grant",
            "client",
            Message::CapRequest(CapRequest {
                tools: vec!["search".to_owned(), "*".to_owned()],
                grants: vec!["v4.public.eyJ...".to_owned()],
            }),
        ),
        (
            "CAP_REQUEST empty",
            "client",
            Message::CapRequest(CapRequest::default()),
        ),
        (
            "REQUEST with every optional field",
            "client",
            sample_request(),
        ),
        (
            "REQUEST with no optional field",
            "client",
            Message::Request(Request {
                id: 4_611_686_018_427_387_903,
                tool: "now".to_owned(),
                args: ByteBuf::new(),
                grant_id: None,
                deadline_ms: None,
                signature: None,
                retry: false,
            }),
        ),
        (
            "REQUEST re-sent after a reconnect (retry flag)",
            "client",
            {
                let Message::Request(mut request) = sample_request() else {
                    unreachable!()
                };
                request.retry = true;
                Message::Request(request)
            },
        ),
        ("RESPONSE with signature", "server", sample_response()),
        (
            "RESPONSE without signature",
            "server",
            Message::Response(Response {
                id: 300,
                result: ByteBuf::from(vec![0xc0]),
                signature: None,
            }),
        ),
        (
            "STREAM_ITEM",
            "server",
            Message::StreamItem(StreamItem {
                id: 1,
                index: 65_536,
                data: ByteBuf::from(b"\xa5chunk".to_vec()),
            }),
        ),
        (
            "ERROR about a call, with retry hint",
            "either",
            Message::Error(ErrorMessage {
                id: Some(1),
                code: 8,
                message: "rate limited".to_owned(),
                retry_after_ms: Some(250),
            }),
        ),
        (
            "ERROR about the connection (no id)",
            "either",
            Message::Error(ErrorMessage {
                id: None,
                code: 13,
                message: String::new(),
                retry_after_ms: None,
            }),
        ),
        ("CANCEL", "client", Message::Cancel(Cancel { id: 1 })),
        ("KEY_UPDATE", "either", key_update(1)),
        ("PING", "either", ping(0)),
        (
            "PONG with a large nonce",
            "either",
            Message::Pong(Ping { nonce: u64::MAX }),
        ),
        (
            "CLOSE with a reason",
            "either",
            Message::Close(Close {
                code: 1000,
                reason: "bye".to_owned(),
            }),
        ),
        (
            "CLOSE for a security failure (no reason)",
            "either",
            Message::Close(Close {
                code: CloseCode::DECRYPT_FAILED.0,
                reason: String::new(),
            }),
        ),
    ]
}

fn granted_json(tools: &[GrantedTool]) -> Value {
    json!(tools
        .iter()
        .map(|t| json!({ "name": t.name, "digest": hex(&t.digest) }))
        .collect::<Vec<_>>())
}

fn manifest_json(m: &SignedManifest) -> Value {
    json!({ "manifest": hex(&m.manifest), "signature": hex(&m.signature) })
}

/// The JSON form of a message: the msgpack map with byte strings as hex and optional
/// fields omitted exactly when they are omitted on the wire.
fn message_json(message: &Message) -> Value {
    let mut body = match message {
        Message::CapGrant(m) => json!({
            "granted": granted_json(&m.granted),
            "limits": { "rate_per_sec": m.limits.rate_per_sec, "burst": m.limits.burst, "max_in_flight": m.limits.max_in_flight },
            "policy_version": m.policy_version,
            "manifest": manifest_json(&m.manifest),
        }),
        Message::CapUpdate(m) => json!({
            "granted": granted_json(&m.granted),
            "revoked": m.revoked,
            "policy_version": m.policy_version,
        }),
        Message::CapRequest(m) => json!({ "tools": m.tools, "grants": m.grants }),
        Message::Request(m) => json!({ "id": m.id, "tool": m.tool, "args": hex(&m.args) }),
        Message::Response(m) => json!({ "id": m.id, "result": hex(&m.result) }),
        Message::StreamItem(m) => json!({ "id": m.id, "index": m.index, "data": hex(&m.data) }),
        Message::Error(m) => json!({ "code": m.code, "message": m.message }),
        Message::Cancel(m) => json!({ "id": m.id }),
        Message::KeyUpdate(m) => json!({ "epoch": m.epoch }),
        Message::Ping(m) | Message::Pong(m) => json!({ "nonce": m.nonce }),
        Message::Close(m) => json!({ "code": m.code, "reason": m.reason }),
        other => panic!("message kind without a JSON form: {other:?}"),
    };
    match message {
        Message::CapGrant(m) => {
            if let Some(at) = m.expires_at_ms {
                body["expires_at_ms"] = json!(at);
            }
        }
        Message::CapUpdate(m) => {
            if let Some(manifest) = &m.manifest {
                body["manifest"] = manifest_json(manifest);
            }
        }
        Message::Request(m) => {
            if let Some(grant_id) = &m.grant_id {
                body["grant_id"] = json!(grant_id);
            }
            if let Some(deadline) = m.deadline_ms {
                body["deadline_ms"] = json!(deadline);
            }
            if let Some(signature) = &m.signature {
                body["signature"] = json!(hex(signature));
            }
            if m.retry {
                body["retry"] = json!(true);
            }
        }
        Message::Response(m) => {
            if let Some(signature) = &m.signature {
                body["signature"] = json!(hex(signature));
            }
        }
        Message::Error(m) => {
            if let Some(id) = m.id {
                body["id"] = json!(id);
            }
            if let Some(retry) = m.retry_after_ms {
                body["retry_after_ms"] = json!(retry);
            }
        }
        _ => {}
    }
    json!({ "type": message.kind(), "body": body })
}

/// A minimal msgpack writer for hand-made (mostly invalid) encodings.
mod mp {
    pub(super) fn str(s: &str) -> Vec<u8> {
        let len = s.len();
        let mut out = if len < 32 {
            vec![0xa0 | u8::try_from(len).unwrap()]
        } else {
            vec![0xd9, u8::try_from(len).unwrap()]
        };
        out.extend_from_slice(s.as_bytes());
        out
    }

    pub(super) fn uint(n: u64) -> Vec<u8> {
        if n < 128 {
            vec![u8::try_from(n).unwrap()]
        } else if let Ok(n) = u32::try_from(n) {
            let mut out = vec![0xce];
            out.extend_from_slice(&n.to_be_bytes());
            out
        } else {
            let mut out = vec![0xcf];
            out.extend_from_slice(&n.to_be_bytes());
            out
        }
    }

    pub(super) fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0x80 | u8::try_from(entries.len()).unwrap()];
        for (key, value) in entries {
            out.extend(str(key));
            out.extend_from_slice(value);
        }
        out
    }

    pub(super) fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut out = vec![0x91; depth];
        out.push(0xc0);
        out
    }
}

fn message_valid(
    comment: &str,
    flags: &[&str],
    sent_by: &str,
    encoded: &[u8],
    message: &Message,
) -> Value {
    assert_eq!(Message::decode(encoded).as_ref(), Ok(message), "{comment}");
    json!({
        "comment": comment,
        "flags": flags,
        "kind": message.kind(),
        "sentBy": sent_by,
        "encoded": hex(encoded),
        "decoded": message_json(message),
        "reencoded": hex(message.encode()),
        "result": "valid",
    })
}

/// An encoding a conforming decoder may accept or reject; the reference decoder's
/// behaviour is recorded (and pinned by the checker).
fn message_acceptable(comment: &str, encoded: &[u8], as_message: &Message) -> Value {
    let decoded = Message::decode(encoded);
    let mut test = json!({
        "comment": comment,
        "flags": ["Lenient"],
        "encoded": hex(encoded),
        "result": "acceptable",
    });
    match decoded {
        Ok(message) => {
            assert_eq!(&message, as_message, "{comment}");
            test["referenceResult"] = json!("accepted");
            test["decoded"] = message_json(&message);
        }
        Err(error) => {
            test["referenceResult"] = json!("rejected");
            test["expectedCloseCode"] = json!(close_code_name(&error));
        }
    }
    test
}

fn message_invalid(comment: &str, flags: &[&str], encoded: &[u8]) -> Value {
    let error = Message::decode(encoded).unwrap_err();
    intended(&error, CloseCode::PROTOCOL_VIOLATION, comment);
    json!({
        "comment": comment,
        "flags": flags,
        "encoded": hex(encoded),
        "result": "invalid",
        "expectedCloseCode": close_code_name(&error),
        "expectedError": error_name(&error),
    })
}

fn messages_file() -> String {
    let mut valid: Vec<Value> = sample_messages()
        .iter()
        .map(|(comment, sent_by, message)| {
            message_valid(comment, &["Valid"], sent_by, &message.encode(), message)
        })
        .collect();
    let ping_with = |extra: Vec<u8>| {
        mp::map(&[
            ("type", mp::str("PING")),
            (
                "body",
                mp::map(&[("nonce", mp::uint(5)), ("future_field", extra)]),
            ),
        ])
    };
    valid.push(message_valid(
        "unknown body field is ignored (forward compatibility)",
        &["UnknownField", "NonCanonical"],
        "either",
        &ping_with(mp::str("x")),
        &ping(5),
    ));
    valid.push(message_valid(
        "unknown body field holding nested arrays (depth 5) is ignored",
        &["UnknownField", "NonCanonical"],
        "either",
        &ping_with(mp::nested_arrays(5)),
        &ping(5),
    ));
    valid.push(message_valid(
        "body fields in another order",
        &["NonCanonical"],
        "either",
        &mp::map(&[
            ("type", mp::str("ERROR")),
            (
                "body",
                mp::map(&[("message", mp::str("x")), ("code", mp::uint(2))]),
            ),
        ]),
        &Message::Error(ErrorMessage {
            id: None,
            code: 2,
            message: "x".to_owned(),
            retry_after_ms: None,
        }),
    ));
    valid.push(message_valid(
        "body before type",
        &["NonCanonical"],
        "either",
        &mp::map(&[
            ("body", mp::map(&[("nonce", mp::uint(5))])),
            ("type", mp::str("PING")),
        ]),
        &ping(5),
    ));
    valid.push(message_valid(
        "a non-minimal integer encoding (uint32 for 5)",
        &["NonCanonical"],
        "either",
        &mp::map(&[
            ("type", mp::str("PING")),
            ("body", mp::map(&[("nonce", vec![0xce, 0, 0, 0, 5])])),
        ]),
        &ping(5),
    ));

    let request = sample_request().encode();
    let ping_bytes = ping(5).encode();
    let mut invalid = vec![message_invalid(
        "unknown message type",
        &["UnknownType"],
        &mp::map(&[
            ("type", mp::str("TELEPORT")),
            ("body", mp::map(&[("nonce", mp::uint(5))])),
        ]),
    )];
    invalid.push(message_invalid(
        "message type in lowercase",
        &["UnknownType"],
        &mp::map(&[
            ("type", mp::str("ping")),
            ("body", mp::map(&[("nonce", mp::uint(5))])),
        ]),
    ));
    invalid.push(message_invalid(
        "REQUEST truncated by one byte",
        &["Truncated"],
        &request[..request.len() - 1],
    ));
    invalid.push(message_invalid(
        "REQUEST truncated to its first byte",
        &["Truncated"],
        &request[..1],
    ));
    invalid.push(message_invalid("empty input", &["Truncated"], &[]));
    let mut trailing = ping_bytes.clone();
    trailing.push(0xc0);
    invalid.push(message_invalid(
        "PING followed by one extra byte (nil)",
        &["TrailingBytes"],
        &trailing,
    ));
    let mut two = ping_bytes.clone();
    two.extend_from_slice(&ping_bytes);
    invalid.push(message_invalid(
        "two PING messages in one plaintext",
        &["TrailingBytes"],
        &two,
    ));
    invalid.push(message_invalid("msgpack nil", &["WrongType"], &[0xc0]));
    invalid.push(message_invalid(
        "missing body",
        &["MissingField"],
        &mp::map(&[("type", mp::str("PING"))]),
    ));
    invalid.push(message_invalid(
        "missing type",
        &["MissingField"],
        &mp::map(&[("body", mp::map(&[("nonce", mp::uint(5))]))]),
    ));
    invalid.push(message_invalid(
        "REQUEST without tool",
        &["MissingField"],
        &mp::map(&[
            ("type", mp::str("REQUEST")),
            (
                "body",
                mp::map(&[("id", mp::uint(1)), ("args", vec![0xc4, 0])]),
            ),
        ]),
    ));
    invalid.push(message_invalid(
        "PING nonce as a string",
        &["WrongType"],
        &mp::map(&[
            ("type", mp::str("PING")),
            ("body", mp::map(&[("nonce", mp::str("5"))])),
        ]),
    ));
    invalid.push(message_invalid(
        "PING nonce negative",
        &["WrongType"],
        &mp::map(&[
            ("type", mp::str("PING")),
            ("body", mp::map(&[("nonce", vec![0xff])])),
        ]),
    ));
    invalid.push(message_invalid(
        "KEY_UPDATE epoch 2^32 (epochs are u32)",
        &["WrongType"],
        &mp::map(&[
            ("type", mp::str("KEY_UPDATE")),
            ("body", mp::map(&[("epoch", mp::uint(1 << 32))])),
        ]),
    ));
    invalid.push(message_invalid(
        "unknown body field nested 100 deep (decoders bound nesting)",
        &["TooDeep"],
        &ping_with(mp::nested_arrays(100)),
    ));
    invalid.push(message_invalid(
        "the same body field twice",
        &["DuplicateField"],
        &mp::map(&[
            ("type", mp::str("PING")),
            (
                "body",
                mp::map(&[("nonce", mp::uint(5)), ("nonce", mp::uint(6))]),
            ),
        ]),
    ));
    invalid.push(message_invalid(
        "PING nonce as a float",
        &["WrongType"],
        &mp::map(&[
            ("type", mp::str("PING")),
            (
                "body",
                mp::map(&[("nonce", vec![0xcb, 0x40, 0x14, 0, 0, 0, 0, 0, 0])]),
            ),
        ]),
    ));

    let nonce_body = mp::map(&[("nonce", mp::uint(5))]);
    let positional = {
        let mut v = vec![0x92];
        v.extend(mp::str("PING"));
        v.extend(nonce_body.clone());
        v
    };
    let request_with = |tool: Vec<u8>, args: Vec<u8>| {
        mp::map(&[
            ("type", mp::str("REQUEST")),
            (
                "body",
                mp::map(&[("id", mp::uint(1)), ("tool", tool), ("args", args)]),
            ),
        ])
    };
    let small_request = |tool: &str, args: &[u8]| {
        Message::Request(Request {
            id: 1,
            tool: tool.to_owned(),
            args: ByteBuf::from(args.to_vec()),
            grant_id: None,
            deadline_ms: None,
            signature: None,
            retry: false,
        })
    };
    let acceptable = vec![
        message_acceptable("type given as the integer index of the kind (9 = PING in the reference's declaration order)", &mp::map(&[("type", mp::uint(9)), ("body", nonce_body.clone())]), &ping(5)),
        message_acceptable("type given as msgpack bin instead of str", &mp::map(&[("type", vec![0xc4, 4, b'P', b'I', b'N', b'G']), ("body", nonce_body.clone())]), &ping(5)),
        message_acceptable("message as a 2-element array [type, body] instead of a map", &positional, &ping(5)),
        message_acceptable("body as an array of field values in declaration order", &mp::map(&[("type", mp::str("PING")), ("body", vec![0x91, 5])]), &ping(5)),
        message_acceptable("body map keyed by field index instead of name", &mp::map(&[("type", mp::str("PING")), ("body", vec![0x81, 0x00, 0x05])]), &ping(5)),
        message_acceptable("an unknown top-level key next to type and body", &mp::map(&[("type", mp::str("PING")), ("body", nonce_body.clone()), ("x", mp::uint(1))]), &ping(5)),
        message_acceptable("args (a bin field) sent as msgpack str", &request_with(mp::str("t"), mp::str("ab")), &small_request("t", b"ab")),
        message_acceptable("tool (a str field) sent as msgpack bin", &request_with(vec![0xc4, 1, b't'], vec![0xc4, 0]), &small_request("t", b"")),
    ];

    finish(
        "messages",
        &[
            "Inner messages: the plaintext of every sealed record is one msgpack map {\"type\": NAME, \"body\": {...}} with named (string) keys. All byte strings are lowercase hex.",
            "Valid tests: encoded is an encoding that must decode to the message shown in decoded (JSON form: the same map with msgpack bin values as hex strings; optional fields are absent exactly when absent on the wire). reencoded is the reference (canonical) encoding of that message: type before body, body fields in the order listed by the spec, integers in their shortest form, optional fields omitted when absent. Tests flagged NonCanonical have encoded != reencoded.",
            "Byte fields (msgpack bin): digest, manifest.manifest, manifest.signature, args, result, data, signature. Every other string is a msgpack str. Integers are unsigned (u64, except limits fields and KEY_UPDATE epoch: u32; ERROR code: u32; CLOSE code: u16).",
            "sentBy says which role may send the kind (a peer receiving a kind its role may not receive closes with PROTOCOL_VIOLATION; that check is in the connection, not in decoding).",
            "Invalid tests: encoded must be rejected when received in a record, closing with expectedCloseCode (PROTOCOL_VIOLATION). expectedError is the reference implementation's error (informative).",
            "Acceptable tests (type MessageDecodingLenient): encodings outside the message syntax that a decoder may accept or reject (rejection closes with PROTOCOL_VIOLATION). referenceResult records what the reference decoder does and, when it accepts, decoded is what it decodes to. Encoders must never produce them.",
        ],
        &[
            ("Valid", "A canonical encoding of the message."),
            ("UnknownField", "The body carries a field this version does not know; it is ignored."),
            ("NonCanonical", "Accepted, but not the encoding a sender produces."),
            ("UnknownType", "The type names no message kind."),
            ("WrongType", "A value of the wrong msgpack type or range."),
            ("Truncated", "The encoding ends early."),
            ("TrailingBytes", "Bytes follow the message."),
            ("MissingField", "A required field is absent."),
            ("TooDeep", "Nesting beyond the decoder's depth limit (32)."),
            ("DuplicateField", "A map key appears twice."),
            ("Lenient", "Not the message syntax, but the reference decoder accepts it; a stricter decoder may reject it."),
        ],
        vec![
            json!({ "type": "MessageEncoding", "tests": valid }),
            json!({ "type": "MessageDecodingInvalid", "tests": invalid }),
            json!({ "type": "MessageDecodingLenient", "tests": acceptable }),
        ],
    )
}

// ---------------------------------------------------------------------------------
// certificate.json
// ---------------------------------------------------------------------------------

/// The `keys` object of a vector group: per name, the identity seed, its public key
/// in hex and in text form (ID-006).
fn named_keys_json(names: &[(&str, [u8; 32])]) -> Value {
    let map: serde_json::Map<String, Value> = names
        .iter()
        .map(|(name, seed)| {
            let public = identity_public(*seed);
            (
                (*name).to_owned(),
                json!({
                    "seed": hex(seed),
                    "publicKey": hex(public),
                    "text": toolwire_protocol::grant::key_to_text(&public),
                }),
            )
        })
        .collect();
    Value::Object(map)
}

const CERTIFICATE_KEYS: &[(&str, [u8; 32])] = &[
    ("operator", ISSUER_SEED),
    ("untrustedOperator", [0x55; 32]),
    ("server", SERVER_A_SEED),
    ("otherServer", [0x54; 32]),
];

fn certificate_key(name: &str) -> Identity {
    let seed = CERTIFICATE_KEYS.iter().find(|(n, _)| *n == name).unwrap().1;
    Identity::from_seed(&seed)
}

struct CertificateContext {
    now: i64,
    server: IdentityKey,
    endpoint: &'static str,
    trusted: Vec<IdentityKey>,
    skew: i64,
}

fn certificate_test(
    comment: &str,
    flags: &[&str],
    token: &str,
    ctx: &CertificateContext,
    expect: Option<&str>,
) -> Value {
    let check = CertificateCheck {
        trusted_operators: &ctx.trusted,
        server: ctx.server,
        endpoint: ctx.endpoint,
        now_unix: ctx.now,
        max_clock_skew_secs: ctx.skew,
    };
    let outcome = verify_server_certificate(token, &check);
    let mut test = json!({
        "comment": comment,
        "flags": flags,
        "token": token,
        "now": ctx.now,
        "server": hex(ctx.server.to_bytes()),
        "endpoint": ctx.endpoint,
        "trustedOperators": ctx.trusted.iter().map(|k| hex(k.to_bytes())).collect::<Vec<_>>(),
        "maxClockSkewSecs": ctx.skew,
    });
    if let Ok((message, _footer)) = paseto::decode_unverified_v4_public(token) {
        if let Ok(claims) = serde_json::from_slice::<Value>(&message) {
            test["claims"] = claims;
        }
    }
    match (expect, outcome) {
        (None, Ok(operator)) => {
            test["result"] = json!("valid");
            test["expectedOperator"] = json!(hex(operator.to_bytes()));
        }
        (Some(name), Err(error)) => {
            assert_eq!(certificate_error_name(&error), name, "{comment}");
            test["result"] = json!("invalid");
            test["expectedError"] = json!(name);
        }
        (expect, outcome) => panic!("{comment}: expected {expect:?}, got {outcome:?}"),
    }
    test
}

fn certificate_file() -> String {
    let operator = certificate_key("operator");
    let server = certificate_key("server").public_key();
    let exp = datetime!(2026-01-02 0:00 UTC);
    let ctx = || CertificateContext {
        now: GRANT_NOW,
        server,
        endpoint: FIXED_ENDPOINT,
        trusted: vec![operator.public_key()],
        skew: 0,
    };
    let basic = ServerCertificateBuilder::new(server, exp)
        .issued_at(datetime!(2026-01-01 0:00 UTC))
        .sign(&operator)
        .unwrap();
    let mut tests = vec![certificate_test(
        "certificate with iat and exp, any endpoint",
        &["Valid"],
        &basic,
        &ctx(),
        None,
    )];
    let scoped = ServerCertificateBuilder::new(server, exp)
        .not_before(datetime!(2026-01-01 6:00 UTC))
        .endpoints(["wss://tools.example.com/tw", FIXED_ENDPOINT])
        .sign(&operator)
        .unwrap();
    tests.push(certificate_test(
        "nbf in the past; the dialed endpoint is the second listed",
        &["Valid", "Endpoints"],
        &scoped,
        &ctx(),
        None,
    ));
    tests.push(certificate_test(
        "the dialed endpoint is not listed",
        &["WrongEndpoint", "Endpoints"],
        &scoped,
        &CertificateContext {
            endpoint: "wss://tools.example.com/tw/",
            ..ctx()
        },
        Some("WrongEndpoint"),
    ));
    tests.push(certificate_test(
        "now = exp: expired",
        &["Expired"],
        &basic,
        &CertificateContext {
            now: exp.unix_timestamp(),
            ..ctx()
        },
        Some("Expired"),
    ));
    tests.push(certificate_test(
        "now = exp + 10 s with 30 s of skew tolerated: valid",
        &["Valid", "ClockSkew"],
        &basic,
        &CertificateContext {
            now: exp.unix_timestamp() + 10,
            skew: 30,
            ..ctx()
        },
        None,
    ));
    tests.push(certificate_test(
        "now 1 s before nbf",
        &["NotYetValid"],
        &scoped,
        &CertificateContext {
            now: datetime!(2026-01-01 6:00 UTC).unix_timestamp() - 1,
            ..ctx()
        },
        Some("NotYetValid"),
    ));
    tests.push(certificate_test(
        "certificate of another server key",
        &["WrongServer"],
        &ServerCertificateBuilder::new(certificate_key("otherServer").public_key(), exp)
            .sign(&operator)
            .unwrap(),
        &ctx(),
        Some("WrongServer"),
    ));
    tests.push(certificate_test(
        "signed by a key the client does not trust",
        &["UntrustedOperator"],
        &ServerCertificateBuilder::new(server, exp)
            .sign(&certificate_key("untrustedOperator"))
            .unwrap(),
        &ctx(),
        Some("UntrustedOperator"),
    ));
    tests.push(certificate_test(
        "iss claims the trusted operator, signed by another key",
        &["BadSignature"],
        &replace_message(
            &ServerCertificateBuilder::new(server, exp)
                .sign(&certificate_key("untrustedOperator"))
                .unwrap(),
            |claims| claims["iss"] = json!(operator.public_key().to_string()),
        ),
        &ctx(),
        Some("BadSignature"),
    ));
    tests.push(certificate_test(
        "exp extended after signing",
        &["BadSignature"],
        &replace_message(&basic, |claims| {
            claims["exp"] = json!("2027-01-01T00:00:00Z")
        }),
        &ctx(),
        Some("BadSignature"),
    ));
    tests.push(certificate_test(
        "last signature bit flipped",
        &["BadSignature"],
        &flip_signature_bit(&basic),
        &ctx(),
        Some("BadSignature"),
    ));
    tests.push(certificate_test(
        "the same claims signed with the grant implicit assertion (a grant is not a certificate)",
        &["BadSignature", "DomainSeparation"],
        &resign(
            &basic,
            operator.signing_key(),
            b"",
            toolwire_protocol::grant::GRANT_IMPLICIT_ASSERTION,
        ),
        &ctx(),
        Some("BadSignature"),
    ));
    tests.push(certificate_test(
        "with a footer",
        &["Malformed"],
        &resign(
            &basic,
            operator.signing_key(),
            b"kid",
            CERTIFICATE_IMPLICIT_ASSERTION,
        ),
        &ctx(),
        Some("Malformed.footer"),
    ));
    tests.push(certificate_test(
        "empty endpoints list",
        &["Malformed", "Endpoints"],
        &resign(
            &replace_message(&basic, |claims| claims["endpoints"] = json!([])),
            operator.signing_key(),
            b"",
            CERTIFICATE_IMPLICIT_ASSERTION,
        ),
        &ctx(),
        Some("Malformed.endpoints"),
    ));
    tests.push(certificate_test(
        "claims without exp",
        &["Malformed"],
        &resign(
            &replace_message(&basic, |claims| {
                claims.as_object_mut().unwrap().remove("exp");
            }),
            operator.signing_key(),
            b"",
            CERTIFICATE_IMPLICIT_ASSERTION,
        ),
        &ctx(),
        Some("Malformed.claims"),
    ));
    tests.push(certificate_test(
        "longer than 4096 bytes",
        &["Malformed"],
        &format!("{basic}{}", "A".repeat(4096)),
        &ctx(),
        Some("Malformed.token"),
    ));
    tests.push(certificate_test(
        "a v4.local token",
        &["Malformed"],
        &basic.replacen("v4.public.", "v4.local.", 1),
        &ctx(),
        Some("Malformed.purpose"),
    ));
    let keys = named_keys_json(CERTIFICATE_KEYS);
    finish(
        "certificate",
        &[
            "Server certificates (spec section 3.1): PASETO v4.public tokens by which an operator key certifies a server identity key.",
            "token is verified with the implicit assertion \"toolwire/1 server certificate\" and no footer, for a client that dialed `endpoint`, trusts `trustedOperators` and authenticated `server` in ServerHello, at Unix time `now` with `maxClockSkewSecs` of tolerance.",
            "A valid certificate yields expectedOperator; an invalid one fails with expectedError, the first failing check of ID-013 (Malformed.<part> for form errors).",
            "claims shows the signed claims as JSON, where the token decodes.",
        ],
        &[
            ("Valid", "Must verify and give expectedOperator."),
            ("Endpoints", "The certificate lists endpoints."),
            ("ClockSkew", "The outcome depends on maxClockSkewSecs."),
            ("Expired", "exp <= now - skew."),
            ("NotYetValid", "nbf > now + skew."),
            ("WrongEndpoint", "The dialed endpoint is not among the listed ones."),
            ("WrongServer", "sub is not the server's identity key."),
            ("UntrustedOperator", "iss is not a trusted operator key."),
            ("BadSignature", "The signature does not verify under iss."),
            ("DomainSeparation", "Signed for another purpose (implicit assertion)."),
            ("Malformed", "Not a well-formed certificate."),
        ],
        vec![json!({
            "type": "ServerCertificateVerification",
            "implicitAssertion": "toolwire/1 server certificate",
            "keys": keys,
            "tests": tests,
        })],
    )
}

// ---------------------------------------------------------------------------------
// at_most_once.json
// ---------------------------------------------------------------------------------

/// One step of an at-most-once scenario, as the file spells it.
enum AmoStep<'a> {
    Attach(&'a str),
    Admit {
        id: u64,
        retry: bool,
        tool: &'a str,
        args: &'a [u8],
    },
    Complete(u64, CachedOutcome),
    Abandon(u64),
    Cancel(u64),
}

fn admission_name(admission: &Admission) -> &'static str {
    match admission {
        Admission::Execute => "execute",
        Admission::Duplicate(_) => "duplicate",
        Admission::InFlight => "in_flight",
        Admission::Stale => "stale",
        Admission::Unavailable => "unavailable",
        Admission::IdOutOfRange => "out_of_range",
        Admission::Overloaded => "overloaded",
        Admission::Mismatch => "mismatch",
        _ => panic!("an admission the vectors do not name"),
    }
}

fn outcome_json(outcome: &CachedOutcome) -> Value {
    match outcome {
        // Long results of one repeated byte are written by length, to keep the file small.
        CachedOutcome::Response(bytes)
            if bytes.len() > 64 && bytes.iter().all(|b| *b == bytes[0]) =>
        {
            json!({ "resultRepeated": { "byte": hex([bytes[0]]), "length": bytes.len() } })
        }
        CachedOutcome::Response(bytes) => json!({ "result": hex(bytes) }),
        CachedOutcome::Error { code, message } => json!({ "code": code.0, "message": message }),
        _ => panic!("an outcome the vectors do not name"),
    }
}

/// Runs `steps` on a fresh table with the default bounds and records each step with
/// the table's answer.
fn amo_test(comment: &str, flags: &[&str], clauses: &[&str], steps: &[AmoStep<'_>]) -> Value {
    let client = identity_public(CLIENT_A_SEED);
    let lineage: [u8; 16] = label("amo lineage")[..16].try_into().unwrap();
    let key = LineageKey::new(IdentityKey::from_bytes(client).unwrap(), lineage);
    let mut table = AtMostOnceTable::new(AmoConfig::default());
    let mut recorded = Vec::new();
    for step in steps {
        recorded.push(match step {
            AmoStep::Attach(origin) => {
                let origin = match *origin {
                    "fresh" => LineageOrigin::Fresh,
                    _ => LineageOrigin::Resumed,
                };
                table.attach(&key, origin);
                json!({ "op": "attach", "origin": if origin == LineageOrigin::Fresh { "fresh" } else { "resumed" } })
            }
            AmoStep::Admit {
                id,
                retry,
                tool,
                args,
            } => {
                let fingerprint = CallFingerprint::of(tool, args, "");
                let admission = table.admit_call(&key, *id, *retry, &fingerprint);
                let mut value = json!({
                    "op": "admit",
                    "id": id,
                    "retry": retry,
                    "tool": tool,
                    "args": hex(args),
                    "expect": admission_name(&admission),
                });
                if let Admission::Duplicate(outcome) = &admission {
                    value["expectedOutcome"] = outcome_json(outcome);
                }
                value
            }
            AmoStep::Complete(id, outcome) => {
                let sent = table.complete(&key, *id, outcome.clone());
                json!({ "op": "complete", "id": id, "outcome": outcome_json(outcome), "expectSent": sent })
            }
            AmoStep::Abandon(id) => {
                table.abandon(&key, *id);
                json!({ "op": "abandon", "id": id })
            }
            AmoStep::Cancel(id) => {
                let sent = table.cancel(&key, *id);
                json!({ "op": "cancel", "id": id, "expectSent": sent })
            }
        });
    }
    json!({
        "comment": comment,
        "flags": flags,
        "clauses": clauses,
        "client": hex(client),
        "lineage": hex(lineage),
        "steps": recorded,
        "result": "valid",
    })
}

fn at_most_once_file() -> String {
    let admit = |id: u64, retry: bool| AmoStep::Admit {
        id,
        retry,
        tool: "echo",
        args: &[0x80],
    };
    let ok = |bytes: &[u8]| CachedOutcome::Response(bytes.to_vec());
    let failed = CachedOutcome::Error {
        code: ErrorCode::INVALID_ARGUMENT,
        message: "bad input".into(),
    };
    let tests = vec![
        amo_test(
            "a fresh lineage executes a new id, answers its copies from the cache, and refuses a second completion",
            &["Execute", "Duplicate"],
            &["AMO-012", "AMO-016", "AMO-020", "AMO-021", "AMO-022"],
            &[
                AmoStep::Attach("fresh"),
                admit(1, false),
                AmoStep::Complete(1, ok(&[0xa2, 0x6f, 0x6b])),
                admit(1, true),
                admit(1, false),
                AmoStep::Complete(1, ok(&[0xc0])),
            ],
        ),
        amo_test(
            "a copy of an id in flight is not executed; after completion it gets the outcome",
            &["InFlight", "Duplicate"],
            &["AMO-010", "AMO-011", "AMO-012"],
            &[
                AmoStep::Attach("fresh"),
                admit(7, false),
                admit(7, true),
                AmoStep::Complete(7, failed.clone()),
                admit(7, true),
            ],
        ),
        amo_test(
            "an id at 2^62 is out of range and recorded nowhere; 2^62 - 1 executes",
            &["OutOfRange"],
            &["AMO-007"],
            &[
                AmoStep::Attach("fresh"),
                admit(1 << 62, false),
                admit((1 << 62) - 1, false),
            ],
        ),
        amo_test(
            "an id without a cached outcome 4032 below the highest recorded id is stale, 4031 below unavailable; a cached outcome is answered at any distance",
            &["Stale"],
            &["AMO-013", "AMO-014"],
            &[
                AmoStep::Attach("fresh"),
                admit(1, false),
                AmoStep::Complete(1, ok(&[1])),
                admit(2, false),
                AmoStep::Abandon(2),
                admit(4033, false),
                admit(1, true),
                admit(2, true),
                AmoStep::Complete(4033, ok(&[2])),
                admit(4034, false),
                admit(2, true),
            ],
        ),
        amo_test(
            "an abandoned id (handler crashed) caches nothing: its copies are unavailable",
            &["Unavailable"],
            &["AMO-014", "AMO-026"],
            &[
                AmoStep::Attach("fresh"),
                admit(3, false),
                AmoStep::Abandon(3),
                admit(3, true),
                AmoStep::Complete(3, ok(&[3])),
            ],
        ),
        amo_test(
            "a recovered lineage: an unknown id sent with retry is unavailable (and recorded); without retry it executes",
            &["Recovered", "Unavailable"],
            &["AMO-005", "AMO-015", "AMO-016"],
            &[
                AmoStep::Attach("resumed"),
                admit(5, true),
                admit(5, true),
                admit(6, false),
            ],
        ),
        amo_test(
            "a fresh lineage executes an unknown id whatever retry says",
            &["Execute"],
            &["AMO-002", "AMO-016"],
            &[AmoStep::Attach("fresh"), admit(9, true)],
        ),
        amo_test(
            "CANCEL of an id in flight completes it with CANCELLED, cached for its copies; a late result is not sent; CANCEL of an unknown id sends nothing",
            &["Cancel", "Duplicate"],
            &["AMO-023", "AMO-024", "AMO-025"],
            &[
                AmoStep::Attach("fresh"),
                admit(4, false),
                AmoStep::Cancel(4),
                AmoStep::Complete(4, ok(&[4])),
                admit(4, true),
                AmoStep::Cancel(4),
                AmoStep::Cancel(99),
            ],
        ),
        amo_test(
            "a reused id naming another call (other arguments, other tool) is a mismatch, in flight and cached",
            &["Mismatch"],
            &["AMO-019"],
            &[
                AmoStep::Attach("fresh"),
                admit(8, false),
                AmoStep::Admit {
                    id: 8,
                    retry: true,
                    tool: "echo",
                    args: &[0x81, 0xa1, 0x78, 0x01],
                },
                AmoStep::Complete(8, ok(&[8])),
                AmoStep::Admit {
                    id: 8,
                    retry: true,
                    tool: "delete",
                    args: &[0x80],
                },
                admit(8, true),
            ],
        ),
        amo_test(
            "an outcome larger than 65536 bytes is sent once and not cached: its copies are unavailable",
            &["Unavailable", "Bounds"],
            &["AMO-028"],
            &[
                AmoStep::Attach("fresh"),
                admit(10, false),
                AmoStep::Complete(10, ok(&vec![0x5a; 65_537])),
                admit(10, true),
                admit(11, false),
                AmoStep::Complete(11, ok(&vec![0x5a; 65_536])),
                admit(11, true),
            ],
        ),
    ];
    finish(
        "at_most_once",
        &[
            "At-most-once admission (spec section 14) of one lineage of one client, on a table with the default bounds (section 14.4), starting empty. Result bytes are hex (`result`), or for long runs of one byte `resultRepeated` = {byte, length}.",
            "Each test is a sequence of steps: attach (the lineage is attached by a session, fresh or resumed); admit (a REQUEST with id, retry, tool and msgpack args, grant id empty) with the verdict `expect` of section 14.2 (execute, duplicate with expectedOutcome, in_flight, stale, unavailable, out_of_range, overloaded, mismatch); complete (the call's outcome: result bytes, or an error code and message) and cancel, with expectSent = whether that answer is sent; abandon (the handler ended without an outcome).",
            "An implementation replays the steps in order on a fresh table and must give every listed verdict and answer.",
        ],
        &[
            ("Execute", "A step admits an id for execution."),
            ("Duplicate", "A copy is answered from the cache."),
            ("InFlight", "A copy of a running id waits for its outcome."),
            ("OutOfRange", "An id at or above 2^62."),
            ("Stale", "An id below the request-id window."),
            ("Unavailable", "An id whose outcome the server cannot give."),
            ("Recovered", "A lineage resumed that the server did not hold."),
            ("Cancel", "CANCEL of a call."),
            ("Mismatch", "A reused id naming another call (AMO-019)."),
            ("Bounds", "An outcome at or over the size bound."),
        ],
        vec![json!({
            "type": "AtMostOnceAdmission",
            "tests": tests,
        })],
    )
}

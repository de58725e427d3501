//! Checker of the committed test vectors in `spec/vectors/*.json`.
//!
//! Independent of the generator: it reads each JSON file and runs this
//! implementation on the inputs, asserting that every `valid` case is accepted and
//! produces the listed outputs, every `invalid` case is rejected with the listed close
//! code (and error name), and every `acceptable` case behaves as the file records for
//! the reference implementation. Together with `vectors_generate.rs` (which proves the
//! files are exactly what the implementation generates) this shows the vectors
//! describe the implementation.
//!
//! Each file has one `check_<area>_test(group, test)` function that is self-contained
//! apart from the small helpers above it, so a conformance suite can lift it out.

#![allow(clippy::unwrap_used)] // a panic in a test is a test failure

mod vectors_support;

use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use toolwire_protocol::certificate::{verify_server_certificate, CertificateCheck};
use toolwire_protocol::config::{ConnectionLimits, SUBPROTOCOL};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::grant::{key_to_text, verify_grant, VerifyContext};
use toolwire_protocol::handshake::{self, ClientHello, ServerHello};
use toolwire_protocol::identity::{Identity, IdentityKey};
use toolwire_protocol::message::{CapRequest, KeyUpdate, Message, Ping};
use toolwire_protocol::noise::{self, HandshakeState, KeyPair, Role as NoiseRole};
use toolwire_protocol::paseto;
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN, LAST_SEQUENCE};
use toolwire_protocol::replay::{RecordWindow, ReplayWindow, RequestIdWindow, SEQUENCE_LIMIT};
use toolwire_protocol::testing::{
    client_config_with_static_secret_for_testing_only,
    client_with_fixed_ephemeral_for_testing_only,
    server_config_with_static_secret_for_testing_only,
    server_with_fixed_ephemeral_for_testing_only, set_transport_next_send_seq_for_testing_only,
    transport_from_keys_for_testing_only,
};
use toolwire_protocol::{Connection, Error, Side};
use vectors_support::{
    certificate_error_name, close_code_name, error_name, grant_error_name, hex, load,
    receiver_from_state, ReceiverState, FILES,
};

// ---------------------------------------------------------------------------------
// Driver and JSON helpers
// ---------------------------------------------------------------------------------

type Check = fn(&Value, &Value) -> Result<(), String>;

/// Checks the Wycheproof envelope of a file, then every test with `check`, and
/// reports all failures at once.
fn check_file(name: &str, check: Check) {
    let doc = load(name);
    let area = name.trim_end_matches(".json");
    assert_eq!(doc["algorithm"], format!("toolwire/1 {area}"), "{name}");
    assert_eq!(
        doc["schema"],
        format!("toolwire_{area}_schema_v1"),
        "{name}"
    );
    assert_eq!(doc["generatorVersion"], "1", "{name}");
    assert!(doc["header"].as_array().is_some_and(|h| !h.is_empty()));
    let notes = doc["notes"].as_object().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let mut count = 0u64;
    for group in doc["testGroups"].as_array().unwrap() {
        assert!(group["type"].is_string(), "{name}: group without type");
        for test in group["tests"].as_array().unwrap() {
            count += 1;
            let id = test["tcId"].as_u64().unwrap();
            assert!(ids.insert(id), "{name}: duplicate tcId {id}");
            for flag in test["flags"].as_array().unwrap() {
                assert!(
                    notes.contains_key(flag.as_str().unwrap()),
                    "{name}: tcId {id}: flag {flag} has no note"
                );
            }
            let result = test["result"].as_str().unwrap();
            assert!(
                ["valid", "invalid", "acceptable"].contains(&result),
                "{name}: tcId {id}: result {result}"
            );
            if let Err(message) = check(group, test) {
                failures.push(format!("{name} tcId {id} ({}): {message}", test["comment"]));
            }
        }
    }
    assert_eq!(
        doc["numberOfTests"].as_u64(),
        Some(count),
        "{name}: numberOfTests"
    );
    assert!(count > 0, "{name}: no tests");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn field<'a>(value: &'a Value, key: &str) -> Result<&'a Value, String> {
    value
        .get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("missing field {key}"))
}

fn bytes(value: &Value, key: &str) -> Result<Vec<u8>, String> {
    let text = field(value, key)?
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))?;
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{key} is not lowercase hex"));
    }
    ::hex::decode(text).map_err(|e| format!("{key}: {e}"))
}

fn opt_bytes(value: &Value, key: &str) -> Result<Option<Vec<u8>>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => bytes(value, key).map(Some),
    }
}

fn array32(value: &Value, key: &str) -> Result<[u8; 32], String> {
    bytes(value, key)?
        .try_into()
        .map_err(|_| format!("{key} is not 32 bytes"))
}

fn opt_array32(value: &Value, key: &str) -> Result<Option<[u8; 32]>, String> {
    opt_bytes(value, key)?
        .map(|b| b.try_into().map_err(|_| format!("{key} is not 32 bytes")))
        .transpose()
}

fn keys32(value: &Value, key: &str) -> Result<Vec<[u8; 32]>, String> {
    field(value, key)?
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?
        .iter()
        .map(|v| {
            let b = ::hex::decode(v.as_str().unwrap_or("")).map_err(|e| format!("{key}: {e}"))?;
            b.try_into().map_err(|_| format!("{key}: not 32 bytes"))
        })
        .collect()
}

fn uint(value: &Value, key: &str) -> Result<u64, String> {
    field(value, key)?
        .as_u64()
        .ok_or_else(|| format!("{key} is not an unsigned integer"))
}

fn int(value: &Value, key: &str) -> Result<i64, String> {
    field(value, key)?
        .as_i64()
        .ok_or_else(|| format!("{key} is not an integer"))
}

fn text<'a>(value: &'a Value, key: &str) -> Result<&'a str, String> {
    field(value, key)?
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))
}

fn strings(value: &Value, key: &str) -> Result<Vec<String>, String> {
    field(value, key)?
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{key}: not a string"))
        })
        .collect()
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

fn ensure_eq<T: PartialEq + std::fmt::Debug>(
    actual: T,
    expected: T,
    what: &str,
) -> Result<(), String> {
    ensure(actual == expected, || {
        format!("{what}: got {actual:?}, expected {expected:?}")
    })
}

fn ensure_hex(actual: &[u8], test: &Value, key: &str) -> Result<(), String> {
    let expected = bytes(test, key)?;
    ensure(actual == expected.as_slice(), || {
        format!("{key}: got {}, expected {}", hex(actual), hex(&expected))
    })
}

fn is_valid(test: &Value) -> bool {
    test["result"] == "valid"
}

/// An expected failure: compares the close code (normative) and the error name.
fn ensure_error(error: &Error, test: &Value) -> Result<(), String> {
    ensure_eq(
        close_code_name(error).as_str(),
        text(test, "expectedCloseCode")?,
        "close code",
    )?;
    ensure_eq(
        error_name(error).as_str(),
        text(test, "expectedError")?,
        "error",
    )
}

/// The JSON form of messages.json (byte fields as hex) as a message.
fn json_to_message(value: &Value) -> Result<Message, String> {
    const BYTE_FIELDS: &[&str] = &["digest", "manifest", "signature", "args", "result", "data"];
    fn convert(value: &mut Value) -> Result<(), String> {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if let (true, Some(text)) = (BYTE_FIELDS.contains(&key.as_str()), item.as_str())
                    {
                        let raw = ::hex::decode(text).map_err(|e| format!("{key}: {e}"))?;
                        *item = Value::from(raw);
                    } else {
                        convert(item)?;
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    convert(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut value = value.clone();
    convert(&mut value)?;
    serde_json::from_value(value).map_err(|e| format!("decoded form does not parse: {e}"))
}

// ---------------------------------------------------------------------------------
// handshake.json
// ---------------------------------------------------------------------------------

struct Peer {
    seed: [u8; 32],
    static_secret: [u8; 32],
    ephemeral: [u8; 32],
    endpoint: String,
}

/// Reads the inputs common to both peers and checks the derived public values.
fn peer(value: &Value, subprotocol: &str) -> Result<Peer, String> {
    let seed = array32(value, "identitySeed")?;
    let static_secret = array32(value, "staticPrivateKey")?;
    let ephemeral = array32(value, "ephemeralPrivateKey")?;
    let endpoint = text(value, "endpoint")?.to_owned();
    ensure_hex(
        &Identity::from_seed(&seed).public_key().to_bytes(),
        value,
        "identityPublicKey",
    )?;
    ensure_hex(
        &KeyPair::from_secret_bytes(static_secret).public_key(),
        value,
        "staticPublicKey",
    )?;
    ensure_hex(
        &KeyPair::from_secret_bytes(ephemeral).public_key(),
        value,
        "ephemeralPublicKey",
    )?;
    ensure_hex(
        &handshake::prologue(&endpoint, subprotocol),
        value,
        "prologue",
    )?;
    Ok(Peer {
        seed,
        static_secret,
        ephemeral,
        endpoint,
    })
}

fn identity_keys(value: &Value, key: &str) -> Result<Vec<IdentityKey>, String> {
    keys32(value, key)?
        .into_iter()
        .map(|k| IdentityKey::from_bytes(k).map_err(|e| format!("{key}: {e:?}")))
        .collect()
}

fn client_connection(value: &Value, subprotocol: &str) -> Result<(Peer, Connection), String> {
    let peer = peer(value, subprotocol)?;
    let cap = field(value, "capRequest")?;
    let mut config = client_config_with_static_secret_for_testing_only(
        Identity::from_seed(&peer.seed),
        identity_keys(value, "trustedServers")?,
        &peer.endpoint,
        peer.static_secret,
    )
    .with_cap_request(CapRequest {
        tools: strings(cap, "tools")?,
        grants: strings(cap, "grants")?,
    });
    if let Some(lineage) = opt_bytes(value, "lineage")? {
        config = config.with_lineage(lineage.try_into().map_err(|_| "lineage is not 16 bytes")?);
    }
    let connection = client_with_fixed_ephemeral_for_testing_only(
        Arc::new(config),
        peer.ephemeral,
        Instant::now(),
    );
    Ok((peer, connection))
}

fn server_connection(value: &Value, subprotocol: &str) -> Result<(Peer, Connection), String> {
    let peer = peer(value, subprotocol)?;
    let config = server_config_with_static_secret_for_testing_only(
        Identity::from_seed(&peer.seed),
        &peer.endpoint,
        peer.static_secret,
    )
    .allow_clients(identity_keys(value, "allowedClients")?)
    .trust_grant_issuers(identity_keys(value, "grantIssuers")?)
    .with_max_clock_skew(int(value, "maxClockSkewSecs")?);
    let connection = server_with_fixed_ephemeral_for_testing_only(
        Arc::new(config),
        peer.ephemeral,
        Instant::now(),
        int(value, "unixTime")?,
    );
    Ok((peer, connection))
}

fn noise_state(peer: &Peer, role: NoiseRole, subprotocol: &str) -> HandshakeState {
    HandshakeState::new(
        role,
        &handshake::prologue(&peer.endpoint, subprotocol),
        KeyPair::from_secret_bytes(peer.static_secret),
        KeyPair::from_secret_bytes(peer.ephemeral),
    )
}

fn transmit(connection: &mut Connection, what: &str) -> Result<Vec<u8>, String> {
    connection
        .poll_transmit()
        .ok_or_else(|| format!("{what} was not produced"))
}

fn check_server_hello(payload: &[u8], decoded: &Value) -> Result<(), String> {
    let hello: ServerHello = rmp_serde::from_slice(payload)
        .map_err(|e| format!("payload2 is not a ServerHello: {e}"))?;
    ensure_hex(&hello.identity, decoded, "identity")?;
    ensure_hex(&hello.signature, decoded, "signature")?;
    let params = field(decoded, "params")?;
    ensure_eq(
        u64::from(hello.params.max_record_body),
        uint(params, "max_record_body")?,
        "max_record_body",
    )?;
    ensure_eq(
        hello.params.session_lifetime_ms,
        uint(params, "session_lifetime_ms")?,
        "session_lifetime_ms",
    )?;
    ensure_eq(
        hello.params.idle_timeout_ms,
        uint(params, "idle_timeout_ms")?,
        "idle_timeout_ms",
    )
}

fn check_client_hello(payload: &[u8], decoded: &Value) -> Result<(), String> {
    let hello: ClientHello = rmp_serde::from_slice(payload)
        .map_err(|e| format!("payload3 is not a ClientHello: {e}"))?;
    ensure_hex(&hello.identity, decoded, "identity")?;
    ensure_hex(&hello.signature, decoded, "signature")?;
    let cap = field(decoded, "cap_request")?;
    ensure_eq(
        hello.cap_request.tools,
        strings(cap, "tools")?,
        "cap_request.tools",
    )?;
    ensure_eq(
        hello.cap_request.grants,
        strings(cap, "grants")?,
        "cap_request.grants",
    )?;
    match (&hello.resume, decoded.get("resume")) {
        (None, None) => Ok(()),
        (Some(resume), Some(expected)) => ensure_hex(&resume.lineage, expected, "lineage"),
        _ => Err("resume presence differs".to_owned()),
    }
}

/// The first sealed record `connection` sends opens under `key` at seq 0.
fn check_first_record(connection: &mut Connection, key: &[u8; 32]) -> Result<(), String> {
    let message = Message::Ping(Ping { nonce: 77 });
    connection
        .send(Instant::now(), message.clone())
        .map_err(|e| format!("send: {e:?}"))?;
    let record = transmit(connection, "first sealed record")?;
    let mut plaintext = Vec::new();
    noise::open(
        key,
        0,
        &record[..HEADER_LEN],
        &record[HEADER_LEN..],
        &mut plaintext,
    )
    .map_err(|_| "first sealed record does not open under the split key".to_owned())?;
    ensure_eq(plaintext, message.encode(), "first sealed record")
}

fn check_handshake_test(group: &Value, test: &Value) -> Result<(), String> {
    let subprotocol = text(group, "subprotocol")?;
    ensure_eq(subprotocol, SUBPROTOCOL, "subprotocol")?;
    ensure_eq(
        text(group, "noiseProtocol")?.as_bytes(),
        noise::PROTOCOL_NAME,
        "noise protocol",
    )?;
    let now = Instant::now();
    let record1 = bytes(test, "record1")?;

    if !is_valid(test) {
        // Payloads, where given, are informative; their decoded forms must match.
        if let (Some(payload), Some(decoded)) =
            (opt_bytes(test, "payload2")?, test.get("payload2Decoded"))
        {
            check_server_hello(&payload, decoded)?;
        }
        if let (Some(payload), Some(decoded)) =
            (opt_bytes(test, "payload3")?, test.get("payload3Decoded"))
        {
            check_client_hello(&payload, decoded)?;
        }
        let receiver = text(test, "receiver")?;
        let fails_at = uint(test, "failsAtRecord")?;
        let (connection, error) = match (receiver, fails_at) {
            ("client", 2) => {
                let (_, mut client) = client_connection(field(test, "client")?, subprotocol)?;
                ensure_eq(transmit(&mut client, "record 1")?, record1, "record1")?;
                let outcome = client.handle_record(now, &bytes(test, "record2")?);
                (client, outcome.err().ok_or("record 2 was accepted")?)
            }
            ("server", 1) => {
                let (_, mut server) = server_connection(field(test, "server")?, subprotocol)?;
                let outcome = server.handle_record(now, &record1);
                (server, outcome.err().ok_or("record 1 was accepted")?)
            }
            ("server", 3) => {
                let (_, mut server) = server_connection(field(test, "server")?, subprotocol)?;
                server
                    .handle_record(now, &record1)
                    .map_err(|e| format!("record 1 refused: {e:?}"))?;
                ensure_eq(
                    transmit(&mut server, "record 2")?,
                    bytes(test, "record2")?,
                    "record2",
                )?;
                let outcome = server.handle_record(now, &bytes(test, "record3")?);
                (server, outcome.err().ok_or("record 3 was accepted")?)
            }
            other => return Err(format!("unknown failure point {other:?}")),
        };
        ensure_error(&error, test)?;
        return ensure_eq(
            connection
                .close_code()
                .and_then(|(code, side)| Some((code.name()?, side))),
            Some((text(test, "expectedCloseCode")?, Side::Local)),
            "connection closed",
        );
    }

    let (client_peer, mut client) = client_connection(field(test, "client")?, subprotocol)?;
    let (server_peer, mut server) = server_connection(field(test, "server")?, subprotocol)?;
    let record2 = bytes(test, "record2")?;
    let record3 = bytes(test, "record3")?;
    ensure_eq(
        transmit(&mut client, "record 1")?,
        record1.clone(),
        "record1",
    )?;
    server
        .handle_record(now, &record1)
        .map_err(|e| format!("server refused record 1: {e:?}"))?;
    ensure_eq(
        transmit(&mut server, "record 2")?,
        record2.clone(),
        "record2",
    )?;
    client
        .handle_record(now, &record2)
        .map_err(|e| format!("client refused record 2: {e:?}"))?;
    ensure_eq(
        transmit(&mut client, "record 3")?,
        record3.clone(),
        "record3",
    )?;
    server
        .handle_record(now, &record3)
        .map_err(|e| format!("server refused record 3: {e:?}"))?;
    ensure(client.is_established() && server.is_established(), || {
        "not established".to_owned()
    })?;

    let hash = array32(test, "handshakeHash")?;
    let client_session = client.session().ok_or("client has no session")?;
    let server_session = server.session().ok_or("server has no session")?;
    ensure_eq(client_session.session_id, hash, "client session id")?;
    ensure_eq(server_session.session_id, hash, "server session id")?;
    ensure_eq(
        client_session.peer,
        Identity::from_seed(&server_peer.seed).public_key(),
        "server identity seen by the client",
    )?;
    ensure_eq(
        server_session.peer,
        Identity::from_seed(&client_peer.seed).public_key(),
        "client identity seen by the server",
    )?;
    let accepted: Vec<String> = server_session.grants.iter().map(|g| g.id.clone()).collect();
    ensure_eq(
        accepted,
        strings(test, "acceptedGrantIds")?,
        "accepted grants",
    )?;
    let rejected: Vec<(u64, String)> = server_session
        .rejected_grants
        .iter()
        .map(|(index, error)| (*index as u64, grant_error_name(error)))
        .collect();
    let expected_rejected: Vec<(u64, String)> = field(test, "rejectedGrants")?
        .as_array()
        .ok_or("rejectedGrants is not an array")?
        .iter()
        .map(|r| Ok((uint(r, "index")?, text(r, "error")?.to_owned())))
        .collect::<Result<_, String>>()?;
    ensure_eq(rejected, expected_rejected, "rejected grants")?;

    // The payloads, hash and split keys, with bare Noise states on the same keys.
    let mut initiator = noise_state(&client_peer, NoiseRole::Initiator, subprotocol);
    let mut responder = noise_state(&server_peer, NoiseRole::Responder, subprotocol);
    let noise_error = |e| format!("noise: {e:?}");
    let mut scratch = Vec::new();
    initiator
        .write_message(&[], &mut scratch)
        .map_err(noise_error)?;
    responder
        .read_message(&record1[HEADER_LEN..], &mut scratch)
        .map_err(noise_error)?;
    let mut payload2 = Vec::new();
    initiator
        .read_message(&record2[HEADER_LEN..], &mut payload2)
        .map_err(noise_error)?;
    ensure_hex(&payload2, test, "payload2")?;
    check_server_hello(&payload2, field(test, "payload2Decoded")?)?;
    responder
        .write_message(&payload2, &mut Vec::new())
        .map_err(noise_error)?;
    let mut payload3 = Vec::new();
    responder
        .read_message(&record3[HEADER_LEN..], &mut payload3)
        .map_err(noise_error)?;
    ensure_hex(&payload3, test, "payload3")?;
    check_client_hello(&payload3, field(test, "payload3Decoded")?)?;
    initiator
        .write_message(&payload3, &mut Vec::new())
        .map_err(noise_error)?;
    ensure_eq(initiator.handshake_hash(), hash, "initiator handshake hash")?;
    ensure_eq(responder.handshake_hash(), hash, "responder handshake hash")?;
    let (c2s, s2c) = initiator.split().map_err(noise_error)?;
    ensure_hex(&*c2s, test, "clientToServerKey")?;
    ensure_hex(&*s2c, test, "serverToClientKey")?;
    check_first_record(&mut client, &array32(test, "clientToServerKey")?)?;
    check_first_record(&mut server, &array32(test, "serverToClientKey")?)
}

/// Clauses: HS-001, HS-003, HS-006, HS-008, HS-009, HS-018, HS-019, HS-031, KS-001, KS-002, REC-003
/// — the committed transcripts: records 1–3 byte for byte, decrypted hellos, the handshake hash as
/// session id, and each side's first sealed record opening under k1 (client) or k2 (server); every
/// committed failure closes with its code.
#[test]
fn handshake_vectors() {
    check_file("handshake.json", check_handshake_test);
}

// ---------------------------------------------------------------------------------
// record.json (and the sequence tests of rekey.json)
// ---------------------------------------------------------------------------------

fn epoch_key(initial: [u8; 32], epoch: u32) -> [u8; 32] {
    (0..epoch).fold(initial, |key, _| *noise::rekey(&key))
}

fn u32_field(value: &Value, key: &str) -> Result<u32, String> {
    u32::try_from(uint(value, key)?).map_err(|_| format!("{key} exceeds u32"))
}

/// Seals `plaintext` by composing the record layer from its definition, and checks
/// the listed header and record.
fn check_sealing(
    test: &Value,
    key: &[u8; 32],
    epoch: u32,
    seq: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, String> {
    let header = RecordHeader {
        version: 1,
        record_type: RecordType::SEALED,
        reserved: 0,
        epoch,
        seq,
    }
    .encode();
    if test.get("header").is_some() {
        ensure_hex(&header, test, "header")?;
    }
    let mut record = header.to_vec();
    noise::seal(key, seq, &header, plaintext, &mut record);
    ensure_hex(&record, test, "record")?;
    Ok(record)
}

/// The implementation's sender, brought to `epoch` by KEY_UPDATEs, seals `message`
/// at `seq`.
fn sender_seal(
    initial: [u8; 32],
    epoch: u32,
    seq: u64,
    message: &Message,
) -> Result<Vec<u8>, String> {
    let mut sender = transport_from_keys_for_testing_only(
        initial,
        [0xdd; 32],
        [0x5e; 32],
        &ConnectionLimits::default(),
    );
    for _ in 0..epoch {
        sender
            .seal_key_update()
            .map_err(|e| format!("key update: {e:?}"))?;
    }
    set_transport_next_send_seq_for_testing_only(&mut sender, seq);
    sender.seal(message).map_err(|e| format!("seal: {e:?}"))
}

fn receiver_state(value: &Value, initial: [u8; 32]) -> Result<ReceiverState, String> {
    let epoch = u32_field(value, "epoch")?;
    ensure_hex(&epoch_key(initial, epoch), value, "key")?;
    let accepted = field(value, "acceptedSeqs")?
        .as_array()
        .ok_or("acceptedSeqs is not an array")?
        .iter()
        .map(|range| match range.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((
                a.as_u64().ok_or("bad range")?,
                b.as_u64().ok_or("bad range")?,
            )),
            _ => Err("bad range".to_owned()),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ReceiverState {
        epoch,
        accepted,
        strict_order: field(value, "strictOrder")?
            .as_bool()
            .ok_or("strictOrder")?,
        max_record_body: usize::try_from(uint(value, "maxRecordBody")?)
            .map_err(|e| e.to_string())?,
    })
}

fn check_record_test(group: &Value, test: &Value) -> Result<(), String> {
    let initial = array32(group, "initialKey")?;
    let key = array32(test, "key")?;
    let epoch = u32_field(test, "epoch")?;
    let seq = uint(test, "seq")?;
    let plaintext = bytes(test, "plaintext")?;
    let record = check_sealing(test, &key, epoch, seq, &plaintext)?;
    if key == epoch_key(initial, epoch) && seq <= LAST_SEQUENCE {
        if let Ok(message) = Message::decode(&plaintext) {
            ensure_eq(
                sender_seal(initial, epoch, seq, &message)?,
                record.clone(),
                "record from the implementation's sender",
            )?;
        }
    }
    let state = receiver_state(field(test, "receiverState")?, initial)?;
    let mut receiver = receiver_from_state(initial, &state);
    match receiver.open(&bytes(test, "receivedRecord")?) {
        Ok(message) if is_valid(test) => ensure_eq(message.encode(), plaintext, "opened plaintext"),
        Err(error) if !is_valid(test) => ensure_error(&error, test),
        Ok(message) => Err(format!("accepted: {message:?}")),
        Err(error) => Err(format!("rejected: {error:?}")),
    }
}

/// RecordSequence / RekeySequence: steps fed to one fresh receiver.
fn check_sequence_test(group: &Value, test: &Value) -> Result<(), String> {
    let initial = array32(group, "initialKey")?;
    let state = ReceiverState {
        epoch: 0,
        accepted: Vec::new(),
        strict_order: field(test, "strictOrder")?.as_bool().ok_or("strictOrder")?,
        max_record_body: usize::try_from(uint(group, "maxRecordBody")?)
            .map_err(|e| e.to_string())?,
    };
    let mut receiver = receiver_from_state(initial, &state);
    let steps = field(test, "steps")?
        .as_array()
        .ok_or("steps is not an array")?;
    for (index, step) in steps.iter().enumerate() {
        let at = |e: String| format!("step {index}: {e}");
        let plaintext = bytes(step, "plaintext").map_err(at)?;
        let record = check_sealing(
            step,
            &array32(step, "key").map_err(at)?,
            u32_field(step, "epoch").map_err(at)?,
            uint(step, "seq").map_err(at)?,
            &plaintext,
        )
        .map_err(at)?;
        let last = index + 1 == steps.len();
        match (text(step, "result").map_err(at)?, receiver.open(&record)) {
            ("accept", Ok(message)) => {
                ensure_eq(message.encode(), plaintext, "plaintext").map_err(at)?;
                ensure_eq(
                    u64::from(receiver.receive_epoch()),
                    uint(step, "receiverEpochAfter")?,
                    "receive epoch",
                )
                .map_err(at)?;
            }
            ("reject", Err(error)) => {
                ensure(last, || "a rejecting step must be the last".to_owned()).map_err(at)?;
                ensure(!is_valid(test), || {
                    "valid test with a rejected step".to_owned()
                })?;
                ensure_error(&error, step).map_err(at)?;
                ensure_error(&error, test)?;
            }
            (expected, outcome) => return Err(at(format!("expected {expected}, got {outcome:?}"))),
        }
    }
    Ok(())
}

fn check_record_file_test(group: &Value, test: &Value) -> Result<(), String> {
    match text(group, "type")? {
        "RecordSealOpen" | "RecordOpenInvalid" => check_record_test(group, test),
        "RecordSequence" => check_sequence_test(group, test),
        other => Err(format!("unknown group type {other}")),
    }
}

/// Clauses: REC-001, REC-002, REC-006, REC-007, REC-008, REC-020, REC-021, REC-022, REC-023,
/// REC-024, REC-025, REC-026, REC-027, REC-028, REC-032 — the committed sealed records are
/// reproduced by the sender, and every committed tampered, replayed or malformed record is refused
/// with its code.
#[test]
fn record_vectors() {
    check_file("record.json", check_record_file_test);
}

// ---------------------------------------------------------------------------------
// replay_window.json
// ---------------------------------------------------------------------------------

fn run_window<const BLOCKS: usize>(group: &Value, test: &Value) -> Result<(), String> {
    ensure_eq(
        uint(group, "windowSize")?,
        ReplayWindow::<BLOCKS>::WINDOW,
        "windowSize",
    )?;
    ensure_eq(uint(group, "ringBits")?, BLOCKS as u64 * 64, "ringBits")?;
    ensure_eq(
        uint(group, "sequenceLimit")?,
        SEQUENCE_LIMIT,
        "sequenceLimit",
    )?;
    let mut window = ReplayWindow::<BLOCKS>::new();
    for (index, step) in field(test, "steps")?
        .as_array()
        .ok_or("steps")?
        .iter()
        .enumerate()
    {
        let value = uint(step, "value")?;
        let checked = window.check(value);
        let updated = window.update(value);
        ensure_eq(checked, updated, "check vs update")?;
        let decision = match checked {
            Ok(()) => ("accept", None),
            Err(reason) => ("reject", Some(format!("{reason:?}"))),
        };
        let expected = (
            text(step, "result")?,
            step["reason"].as_str().map(str::to_owned),
        );
        ensure_eq(decision, expected, &format!("step {index} (value {value})"))?;
        ensure_eq(
            window.highest(),
            step["highestAfter"].as_u64(),
            &format!("step {index} highest"),
        )?;
    }
    Ok(())
}

fn check_replay_window_test(group: &Value, test: &Value) -> Result<(), String> {
    match text(group, "window")? {
        "RecordWindow" => run_window::<32>(group, test).and_then(|()| {
            ensure_eq(
                RecordWindow::WINDOW,
                uint(group, "windowSize")?,
                "RecordWindow",
            )
        }),
        "RequestIdWindow" => run_window::<64>(group, test).and_then(|()| {
            ensure_eq(
                RequestIdWindow::WINDOW,
                uint(group, "windowSize")?,
                "RequestIdWindow",
            )
        }),
        other => Err(format!("unknown window {other}")),
    }
}

/// Clauses: RPL-001, RPL-002, RPL-003, RPL-004, RPL-005, RPL-006 — both windows decide every
/// committed sequence as listed.
#[test]
fn replay_window_vectors() {
    check_file("replay_window.json", check_replay_window_test);
}

// ---------------------------------------------------------------------------------
// rekey.json
// ---------------------------------------------------------------------------------

fn check_rekey_test(group: &Value, test: &Value) -> Result<(), String> {
    match text(group, "type")? {
        "RekeyChain" => {
            let mut key = array32(test, "initialKey")?;
            let keys = strings(test, "keys")?;
            ensure_eq(keys.len(), 6, "number of keys")?;
            for (epoch, expected) in keys.iter().enumerate() {
                ensure_eq(hex(key), expected.clone(), &format!("key of epoch {epoch}"))?;
                key = *noise::rekey(&key);
            }
            Ok(())
        }
        "RekeySequence" => check_sequence_test(group, test),
        "KeyUpdateMessage" => {
            let message = Message::KeyUpdate(KeyUpdate {
                epoch: u32_field(test, "epoch")?,
            });
            ensure_hex(&message.encode(), test, "encoded")?;
            let encoded = bytes(test, "encoded")?;
            ensure_eq(
                Message::decode(&encoded).ok(),
                Some(message.clone()),
                "decoded",
            )?;
            ensure_eq(
                json_to_message(field(test, "decoded")?)?,
                message,
                "JSON form",
            )
        }
        other => Err(format!("unknown group type {other}")),
    }
}

/// Clauses: KS-003, KEY-003, KEY-004, KEY-005 — the committed REKEY chains, KEY_UPDATE encodings
/// and rekey sequences (with their refusals).
#[test]
fn rekey_vectors() {
    check_file("rekey.json", check_rekey_test);
}

// ---------------------------------------------------------------------------------
// envelope.json
// ---------------------------------------------------------------------------------

fn check_envelope_test(group: &Value, test: &Value) -> Result<(), String> {
    let public_key = array32(group, "publicKey")?;
    let signer = opt_array32(group, "privateKeySeed")?.map(|seed| Identity::from_seed(&seed));
    if let Some(signer) = &signer {
        ensure_eq(signer.public_key().to_bytes(), public_key, "privateKeySeed")?;
    }
    let session_id = array32(test, "sessionId")?;
    let request_id = uint(test, "requestId")?;
    let signature = bytes(test, "signature")?;
    let request_hash;
    let args;
    let result_bytes;
    let (signing_bytes, verdict, own_signature) = match text(group, "type")? {
        "RequestSignature" => {
            args = bytes(test, "args")?;
            let fields = RequestFields {
                session_id: &session_id,
                request_id,
                tool: text(test, "tool")?,
                args: &args,
                grant_id: text(test, "grantId")?,
            };
            ensure_hex(&fields.hash(), test, "requestHash")?;
            let verdict = IdentityKey::from_bytes(public_key)
                .map_err(|e| format!("{e:?}"))
                .and_then(|key| {
                    fields
                        .verify(&key, &signature)
                        .map_err(|e| format!("{e:?}"))
                });
            (
                fields.signing_bytes(),
                verdict,
                signer.as_ref().map(|s| fields.sign(s).to_vec()),
            )
        }
        "ResponseSignature" => {
            request_hash = array32(test, "requestHash")?;
            result_bytes = bytes(test, "resultBytes")?;
            let fields = ResponseFields {
                session_id: &session_id,
                request_id,
                request_hash: &request_hash,
                result: &result_bytes,
            };
            let verdict = IdentityKey::from_bytes(public_key)
                .map_err(|e| format!("{e:?}"))
                .and_then(|key| {
                    fields
                        .verify(&key, &signature)
                        .map_err(|e| format!("{e:?}"))
                });
            (
                fields.signing_bytes(),
                verdict,
                signer.as_ref().map(|s| fields.sign(s).to_vec()),
            )
        }
        other => return Err(format!("unknown group type {other}")),
    };
    ensure_hex(&signing_bytes, test, "signingBytes")?;
    match verdict {
        Ok(()) if is_valid(test) => {
            // Ed25519 is deterministic: the group's key reproduces the signature.
            ensure_eq(
                own_signature,
                Some(signature),
                "signature reproduced from privateKeySeed",
            )
        }
        Err(error) if !is_valid(test) => {
            ensure_eq(error.as_str(), text(test, "expectedError")?, "error")
        }
        Ok(()) => Err("signature verified".to_owned()),
        Err(error) => Err(format!("signature refused: {error}")),
    }
}

/// Clauses: ENV-001, ENV-002, ENV-006 — the committed signing bytes, request hashes and
/// signatures; strict verification refuses small-order keys and S + L.
/// Clauses: ID-004, ID-005 — S + L, small-order public keys and a 63-byte signature
/// fail verification.
#[test]
fn envelope_vectors() {
    check_file("envelope.json", check_envelope_test);
}

// ---------------------------------------------------------------------------------
// grant.json
// ---------------------------------------------------------------------------------

fn check_grant_test(group: &Value, test: &Value) -> Result<(), String> {
    for (name, key) in field(group, "keys")?.as_object().ok_or("keys")? {
        let public = Identity::from_seed(&array32(key, "seed")?)
            .public_key()
            .to_bytes();
        ensure_hex(&public, key, "publicKey").map_err(|e| format!("key {name}: {e}"))?;
        ensure_eq(key_to_text(&public).as_str(), text(key, "text")?, name)?;
    }
    let token = text(test, "token")?;
    if let Some(claims) = test.get("leafClaims") {
        let (message, _) =
            paseto::decode_unverified_v4_public(token).map_err(|e| format!("{e:?}"))?;
        let decoded: Value = serde_json::from_slice(&message).map_err(|e| e.to_string())?;
        ensure_eq(&decoded, claims, "leafClaims")?;
    }
    let trusted = keys32(test, "trustedIssuers")?;
    let context = VerifyContext {
        trusted_issuers: &trusted,
        audience: array32(test, "audience")?,
        holder: array32(test, "holder")?,
        now_unix: int(test, "now")?,
        session_id: opt_array32(test, "sessionId")?,
        max_clock_skew_secs: int(test, "maxClockSkewSecs")?,
    };
    match verify_grant(token, &context) {
        Ok(grant) if is_valid(test) => {
            let expected = field(test, "expectedGrant")?;
            ensure_eq(grant.id.as_str(), text(expected, "id")?, "id")?;
            ensure_eq(
                grant.root_issuer,
                array32(expected, "rootIssuer")?,
                "rootIssuer",
            )?;
            ensure_eq(grant.holder, array32(expected, "holder")?, "holder")?;
            ensure_eq(grant.audience, array32(expected, "audience")?, "audience")?;
            ensure_eq(grant.tools, strings(expected, "tools")?, "tools")?;
            ensure_eq(grant.scope, strings(expected, "scope")?, "scope")?;
            ensure_eq(
                grant.expires_at_unix,
                int(expected, "expiresAtUnix")?,
                "expiresAtUnix",
            )?;
            ensure_eq(grant.session, opt_array32(expected, "session")?, "session")?;
            ensure_eq(grant.chain_ids, strings(expected, "chainIds")?, "chainIds")
        }
        Err(error) if !is_valid(test) => ensure_eq(
            grant_error_name(&error).as_str(),
            text(test, "expectedError")?,
            "error",
        ),
        Ok(grant) => Err(format!("accepted: {grant:?}")),
        Err(error) => Err(format!("rejected: {error:?}")),
    }
}

/// Clauses: GRT-002, GRT-011, GRT-017, GRT-018, GRT-019, GRT-020, GRT-021, GRT-024,
/// GRT-025, GRT-026, GRT-027, GRT-028, GRT-029, GRT-030, GRT-031, GRT-032, GRT-033 —
/// every committed grant case verifies to its expected rights or fails with its
/// expected error.
#[test]
fn grant_vectors() {
    check_file("grant.json", check_grant_test);
}

// ---------------------------------------------------------------------------------
// messages.json
// ---------------------------------------------------------------------------------

fn check_message_test(_group: &Value, test: &Value) -> Result<(), String> {
    let encoded = bytes(test, "encoded")?;
    let decoded = Message::decode(&encoded);
    match text(test, "result")? {
        "valid" => {
            let message = decoded.map_err(|e| format!("rejected: {e:?}"))?;
            ensure_eq(
                &message,
                &json_to_message(field(test, "decoded")?)?,
                "decoded",
            )?;
            ensure_eq(message.kind(), text(test, "kind")?, "kind")?;
            ensure_hex(&message.encode(), test, "reencoded")?;
            let canonical = !test["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "NonCanonical"));
            ensure_eq(
                canonical,
                encoded == bytes(test, "reencoded")?,
                "canonical encoding",
            )
        }
        "invalid" => match decoded {
            Err(error) => ensure_error(&error, test),
            Ok(message) => Err(format!("accepted: {message:?}")),
        },
        _ => match (text(test, "referenceResult")?, decoded) {
            ("accepted", Ok(message)) => ensure_eq(
                message,
                json_to_message(field(test, "decoded")?)?,
                "decoded",
            ),
            ("rejected", Err(error)) => ensure_eq(
                close_code_name(&error).as_str(),
                text(test, "expectedCloseCode")?,
                "close code",
            ),
            (expected, outcome) => Err(format!("reference {expected}, now {outcome:?}")),
        },
    }
}

/// Clauses: MSG-001, MSG-002, MSG-003, CNV-001, CNV-006, CNV-007, CNV-008, CNV-009, CNV-011,
/// CNV-012, CNV-013 — every committed message encodes canonically and decodes as listed; every
/// invalid one is refused with PROTOCOL_VIOLATION.
#[test]
fn messages_vectors() {
    check_file("messages.json", check_message_test);
}

// ---------------------------------------------------------------------------------
// certificate.json
// ---------------------------------------------------------------------------------

fn check_certificate_test(group: &Value, test: &Value) -> Result<(), String> {
    for (name, key) in field(group, "keys")?.as_object().ok_or("keys")? {
        let public = Identity::from_seed(&array32(key, "seed")?)
            .public_key()
            .to_bytes();
        ensure_hex(&public, key, "publicKey").map_err(|e| format!("key {name}: {e}"))?;
        ensure_eq(key_to_text(&public).as_str(), text(key, "text")?, name)?;
    }
    let token = text(test, "token")?;
    if let Some(claims) = test.get("claims") {
        let (message, _) =
            paseto::decode_unverified_v4_public(token).map_err(|e| format!("{e:?}"))?;
        let decoded: Value = serde_json::from_slice(&message).map_err(|e| e.to_string())?;
        ensure_eq(&decoded, claims, "claims")?;
    }
    let identity_key = |bytes: [u8; 32]| {
        toolwire_protocol::IdentityKey::from_bytes(bytes).map_err(|e| format!("{e:?}"))
    };
    let trusted = keys32(test, "trustedOperators")?
        .into_iter()
        .map(identity_key)
        .collect::<Result<Vec<_>, _>>()?;
    let check = CertificateCheck {
        trusted_operators: &trusted,
        server: identity_key(array32(test, "server")?)?,
        endpoint: text(test, "endpoint")?,
        now_unix: int(test, "now")?,
        max_clock_skew_secs: int(test, "maxClockSkewSecs")?,
    };
    match verify_server_certificate(token, &check) {
        Ok(operator) if is_valid(test) => ensure_eq(
            operator.to_bytes(),
            array32(test, "expectedOperator")?,
            "operator",
        ),
        Err(error) if !is_valid(test) => ensure_eq(
            certificate_error_name(&error).as_str(),
            text(test, "expectedError")?,
            "error",
        ),
        Ok(operator) => Err(format!("accepted, operator {operator}")),
        Err(error) => Err(format!("rejected: {error:?}")),
    }
}

/// Clauses: ID-012, ID-013, ID-016 — every committed certificate verifies to its operator
/// or fails with the first failing check's error.
#[test]
fn certificate_vectors() {
    check_file("certificate.json", check_certificate_test);
}

// ---------------------------------------------------------------------------------
// at_most_once.json
// ---------------------------------------------------------------------------------

/// An outcome as at_most_once.json writes it: `result` hex, `resultRepeated`
/// {byte, length}, or an error `code` and `message`.
fn amo_outcome(value: &Value) -> Result<toolwire_protocol::amo::CachedOutcome, String> {
    use toolwire_protocol::amo::CachedOutcome;
    if value.get("result").is_some() {
        return Ok(CachedOutcome::Response(bytes(value, "result")?));
    }
    if let Some(repeated) = value.get("resultRepeated") {
        let byte = bytes(repeated, "byte")?;
        let length = usize::try_from(uint(repeated, "length")?).map_err(|e| e.to_string())?;
        return Ok(CachedOutcome::Response(vec![
            *byte
                .first()
                .ok_or("empty byte")?;
            length
        ]));
    }
    let code = u32::try_from(uint(value, "code")?).map_err(|e| e.to_string())?;
    Ok(CachedOutcome::Error {
        code: toolwire_protocol::ErrorCode(code),
        message: text(value, "message")?.to_owned(),
    })
}

fn amo_admission_name(admission: &toolwire_protocol::amo::Admission) -> &'static str {
    use toolwire_protocol::amo::Admission;
    match admission {
        Admission::Execute => "execute",
        Admission::Duplicate(_) => "duplicate",
        Admission::InFlight => "in_flight",
        Admission::Stale => "stale",
        Admission::Unavailable => "unavailable",
        Admission::IdOutOfRange => "out_of_range",
        Admission::Overloaded => "overloaded",
        Admission::Mismatch => "mismatch",
        _ => "other",
    }
}

/// Replays a scenario's steps on a fresh table with the default bounds and compares
/// every verdict and answer.
fn check_at_most_once_test(_group: &Value, test: &Value) -> Result<(), String> {
    use toolwire_protocol::amo::{
        Admission, AmoConfig, AtMostOnceStore as _, AtMostOnceTable, CallFingerprint, LineageKey,
        LineageOrigin,
    };
    let client = toolwire_protocol::IdentityKey::from_bytes(array32(test, "client")?)
        .map_err(|e| format!("client: {e:?}"))?;
    let lineage: [u8; 16] = bytes(test, "lineage")?
        .try_into()
        .map_err(|_| "lineage is not 16 bytes")?;
    let key = LineageKey::new(client, lineage);
    let mut table = AtMostOnceTable::new(AmoConfig::default());
    let steps = field(test, "steps")?.as_array().ok_or("steps")?;
    for (index, step) in steps.iter().enumerate() {
        let at = |error: String| format!("step {index}: {error}");
        match text(step, "op").map_err(at)? {
            "attach" => {
                let origin = match text(step, "origin").map_err(at)? {
                    "fresh" => LineageOrigin::Fresh,
                    _ => LineageOrigin::Resumed,
                };
                table.attach(&key, origin);
            }
            "admit" => {
                let fingerprint = CallFingerprint::of(
                    text(step, "tool").map_err(at)?,
                    &bytes(step, "args").map_err(at)?,
                    "",
                );
                let id = uint(step, "id").map_err(at)?;
                let retry = field(step, "retry")
                    .map_err(at)?
                    .as_bool()
                    .ok_or_else(|| at("retry".into()))?;
                let admission = table.admit_call(&key, id, retry, &fingerprint);
                ensure_eq(
                    amo_admission_name(&admission),
                    text(step, "expect").map_err(at)?,
                    &format!("step {index}: admission of id {id}"),
                )?;
                if let Admission::Duplicate(outcome) = admission {
                    let expected =
                        amo_outcome(field(step, "expectedOutcome").map_err(at)?).map_err(at)?;
                    ensure(outcome == expected, || at("cached outcome differs".into()))?;
                }
            }
            "complete" => {
                let outcome = amo_outcome(field(step, "outcome").map_err(at)?).map_err(at)?;
                let sent = table.complete(&key, uint(step, "id").map_err(at)?, outcome);
                ensure_eq(
                    Some(sent),
                    field(step, "expectSent").map_err(at)?.as_bool(),
                    &at("sent".into()),
                )?;
            }
            "abandon" => table.abandon(&key, uint(step, "id").map_err(at)?),
            "cancel" => {
                let sent = table.cancel(&key, uint(step, "id").map_err(at)?);
                ensure_eq(
                    Some(sent),
                    field(step, "expectSent").map_err(at)?.as_bool(),
                    &at("sent".into()),
                )?;
            }
            other => return Err(at(format!("unknown op {other}"))),
        }
    }
    Ok(())
}

/// Clauses: AMO-002, AMO-005, AMO-007, AMO-010, AMO-012, AMO-013, AMO-014, AMO-015,
/// AMO-016, AMO-019, AMO-020, AMO-021, AMO-022, AMO-023, AMO-024, AMO-025, AMO-026,
/// AMO-028 — every committed at-most-once scenario gives its verdicts and answers.
#[test]
fn at_most_once_vectors() {
    check_file("at_most_once.json", check_at_most_once_test);
}

#[test]
fn every_vector_file_is_checked() {
    // One #[test] per file above; keep this list in step with vectors_support::FILES.
    let checked = [
        "handshake.json",
        "record.json",
        "replay_window.json",
        "rekey.json",
        "envelope.json",
        "grant.json",
        "messages.json",
        "certificate.json",
        "at_most_once.json",
    ];
    assert_eq!(checked.as_slice(), FILES);
}

//! The check functions of the vector files that need the protocol crate's
//! deterministic hooks (`__testing`, enabled by this crate's `vectors` feature):
//! `handshake.json`, `record.json` and `rekey.json`.
//!
//! Lifted from `protocol/tests/vectors_check.rs` and `protocol/tests/vectors_support`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::check::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use toolwire_protocol::config::{ConnectionLimits, SUBPROTOCOL};
use toolwire_protocol::handshake::{self, ClientHello, ServerHello};
use toolwire_protocol::identity::{Identity, IdentityKey};
use toolwire_protocol::message::{CapRequest, KeyUpdate, Message, Ping};
use toolwire_protocol::noise::{self, HandshakeState, KeyPair, Role as NoiseRole};
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN, LAST_SEQUENCE};
use toolwire_protocol::testing::{
    client_config_with_static_secret_for_testing_only,
    client_with_fixed_ephemeral_for_testing_only,
    server_config_with_static_secret_for_testing_only,
    server_with_fixed_ephemeral_for_testing_only, set_transport_next_send_seq_for_testing_only,
    transport_from_keys_for_testing_only,
};
use toolwire_protocol::{Connection, Side};

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

pub(super) fn check_handshake_test(group: &Value, test: &Value) -> Result<(), String> {
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
    let mut receiver = receiver_from_state(initial, &state)?;
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
    let mut receiver = receiver_from_state(initial, &state)?;
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

pub(super) fn check_record_file_test(group: &Value, test: &Value) -> Result<(), String> {
    match text(group, "type")? {
        "RecordSealOpen" | "RecordOpenInvalid" => check_record_test(group, test),
        "RecordSequence" => check_sequence_test(group, test),
        other => Err(format!("unknown group type {other}")),
    }
}

// ---------------------------------------------------------------------------------
// rekey.json
// ---------------------------------------------------------------------------------

pub(super) fn check_rekey_test(group: &Value, test: &Value) -> Result<(), String> {
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

/// A record receiver's state as record.json describes it.
pub(super) struct ReceiverState {
    /// Current receive epoch.
    pub(super) epoch: u32,
    /// Inclusive ranges of accepted sequence numbers, increasing.
    pub(super) accepted: Vec<(u64, u64)>,
    /// Whether only the next expected sequence number is accepted.
    pub(super) strict_order: bool,
    /// Largest record body accepted.
    pub(super) max_record_body: usize,
}

/// Reaches `state` the way record.json's header describes: a fresh receiver on
/// `initial_key` is fed genuine records for every accepted sequence number in
/// increasing order, the first `state.epoch` of them KEY_UPDATEs, the rest PINGs.
///
/// # Errors
/// If the state is unreachable that way or a setup record is refused.
pub(super) fn receiver_from_state(
    initial_key: [u8; 32],
    state: &ReceiverState,
) -> Result<toolwire_protocol::transport::Transport, String> {
    use toolwire_protocol::message::{KeyUpdate, Message, Ping};
    use toolwire_protocol::noise;
    use toolwire_protocol::record::{RecordHeader, RecordType};

    let mut limits = toolwire_protocol::ConnectionLimits::default();
    limits.strict_order = state.strict_order;
    limits.max_record_body = state.max_record_body;
    let mut receiver = toolwire_protocol::testing::transport_from_keys_for_testing_only(
        [0xee; 32],
        initial_key,
        [0x5e; 32],
        &limits,
    );
    let mut epoch = 0u32;
    let mut key = initial_key;
    for &(first, last) in &state.accepted {
        for seq in first..=last {
            let rekeying = epoch < state.epoch;
            let message = if rekeying {
                Message::KeyUpdate(KeyUpdate { epoch: epoch + 1 })
            } else {
                Message::Ping(Ping { nonce: seq })
            };
            let header = RecordHeader {
                version: 1,
                record_type: RecordType::SEALED,
                reserved: 0,
                epoch,
                seq,
            }
            .encode();
            let mut record = header.to_vec();
            noise::seal(&key, seq, &header, &message.encode(), &mut record);
            if let Err(error) = receiver.open(&record) {
                return Err(format!("setup record {seq} refused: {error:?}"));
            }
            if rekeying {
                epoch += 1;
                key = *noise::rekey(&key);
            }
        }
    }
    ensure_eq(epoch, state.epoch, "epoch reached by the setup records")?;
    ensure_eq(receiver.receive_epoch(), state.epoch, "receive epoch")?;
    Ok(receiver)
}

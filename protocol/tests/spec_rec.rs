//! Spec sections 5 and 6, "Key schedule" (KS) and "Records" (REC): the bytes of
//! every record a real pair exchanges, read back by a wiretap that derives the keys
//! from the handshake and opens records with the `chacha20poly1305` crate directly;
//! and the receive path's checks, each alone and in every compatible pair, so that
//! the first failing step decides the close code.

mod common;
mod spec_support;

use common::*;
use spec_support::{epoch_key, open_record, seal_record, sealed_header, tap_configs, Tap};
use std::sync::Arc;
use toolwire_protocol::error::{Incompatibility, Limit, Malformed, Misbehavior};
use toolwire_protocol::message::{Close, KeyUpdate, Ping};
use toolwire_protocol::record::{RecordType, DEFAULT_MAX_BODY_LEN, HEADER_LEN};
use toolwire_protocol::testing::{
    clone_established_for_testing_only, set_next_send_seq_for_testing_only,
    transport_from_keys_for_testing_only,
};
use toolwire_protocol::transport::Transport;
use toolwire_protocol::{CloseCode, Connection, ConnectionLimits, Error, Message, Side};

/// Runs the handshake of `peers` with the fixed ephemerals, keeping the three
/// records, and taps it.
fn established_and_tapped(peers: &Peers) -> (Pair, [Vec<u8>; 3], Tap) {
    let mut pair = Pair::start(peers);
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1).expect("record 1");
    let record_2 = pair.take_one_from_server();
    pair.deliver_to_client(&record_2).expect("record 2");
    let record_3 = pair.take_one_from_client();
    pair.deliver_to_server(&record_3).expect("record 3");
    assert!(pair.client.is_established() && pair.server.is_established());
    let records = [record_1, record_2, record_3];
    let tap = tap_configs(
        &peers.client_config,
        &peers.server_config,
        ENDPOINT,
        &records,
    );
    pair.clear_events();
    (pair, records, tap)
}

/// Checks one direction's sealed records against the definition: header fields,
/// sequence numbers from 0 by one across epochs, each record opening under the key
/// of the epoch its header names (k, REKEY(k), …) with nonce = its seq and the
/// header as associated data, and each KEY_UPDATE announcing the next epoch.
/// Returns the application messages carried.
fn check_direction(records: &[Vec<u8>], initial_key: [u8; 32]) -> Vec<Message> {
    let mut epoch = 0u32;
    let mut messages = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let header = header(record);
        assert_eq!(header.version, 1, "record {index}: version");
        assert_eq!(
            header.record_type,
            RecordType::SEALED,
            "record {index}: type"
        );
        assert_eq!(header.reserved, 0, "record {index}: reserved");
        assert_eq!(header.epoch, epoch, "record {index}: epoch");
        assert_eq!(header.seq, index as u64, "record {index}: seq");
        let plaintext = open_record(&epoch_key(initial_key, epoch), record)
            .unwrap_or_else(|| panic!("record {index} does not open under the epoch key"));
        assert_eq!(record.len(), HEADER_LEN + plaintext.len() + 16);
        let message = Message::decode(&plaintext).expect("one inner message");
        assert_eq!(
            message.encode(),
            plaintext,
            "record {index}: canonical message"
        );
        if let Message::KeyUpdate(KeyUpdate { epoch: announced }) = message {
            assert_eq!(announced, epoch + 1, "record {index}: KEY_UPDATE epoch");
            epoch += 1;
        } else {
            messages.push(message);
        }
    }
    messages
}

/// Clauses: REC-001, REC-002, REC-003, REC-006, REC-007, REC-008, REC-009,
/// REC-010, KS-001, KS-002, KS-003, KS-004, KEY-003, HS-006, HS-031 — a wiretap
/// holding both sides' secrets re-derives Split() from the three handshake records
/// (whose headers are fixed and whose record 1 is exactly the 32-byte ephemeral
/// key); every sealed record of both directions, across several rekeys, has the
/// specified header and opens with ChaCha20-Poly1305 under k1 (client→server) or k2
/// (server→client), rekeyed once per KEY_UPDATE, with nonce 0⁴ ‖ u64le(seq) and
/// the header as associated data; the session id is the handshake hash.
#[test]
fn every_record_of_a_session_is_laid_out_and_sealed_as_specified() {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after_records = 3;
    let peers = Peers::with_limits(&limits);
    let (mut pair, records, tap) = established_and_tapped(&peers);

    for (n, record) in records.iter().enumerate() {
        let mut expected = vec![1u8, n as u8 + 1];
        expected.extend_from_slice(&[0; 14]);
        assert_eq!(
            record[..HEADER_LEN],
            expected[..],
            "handshake record {}",
            n + 1
        );
    }
    assert_eq!(records[0].len(), HEADER_LEN + 32, "message 1 is e alone");
    let ephemeral = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
        toolwire_protocol::testing::FIXED_CLIENT_EPHEMERAL,
    ));
    assert_eq!(records[0][HEADER_LEN..], ephemeral.as_bytes()[..]);
    assert_eq!(pair.session_id(), tap.handshake_hash);
    assert_eq!(
        pair.server.session().expect("established").session_id,
        tap.handshake_hash
    );

    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    let mut sent_by_client = Vec::new();
    let mut sent_by_server = Vec::new();
    for id in 0..10u64 {
        let call = request(id, &[0x91, id as u8]);
        pair.client.send(pair.now, call.clone()).expect("sends");
        sent_by_client.push(call);
        let answer = response(id, &[0xa1, b'x']);
        pair.server.send(pair.now, answer.clone()).expect("sends");
        sent_by_server.push(answer);
        let from_client = pair.take_from_client();
        let from_server = pair.take_from_server();
        for record in &from_client {
            pair.deliver_to_server(record).expect("accepted");
        }
        for record in &from_server {
            pair.deliver_to_client(record).expect("accepted");
        }
        to_server.extend(from_client);
        to_client.extend(from_server);
    }
    pair.client.close(CloseCode::NORMAL, "");
    let close = pair.take_one_from_client();
    to_server.push(close);

    let mut expected_from_client = sent_by_client;
    expected_from_client.push(Message::Close(Close {
        code: 1000,
        reason: String::new(),
    }));
    assert_eq!(
        check_direction(&to_server, tap.client_to_server),
        expected_from_client
    );
    assert_eq!(
        check_direction(&to_client, tap.server_to_client),
        sent_by_server
    );
    // Several epochs were used in each direction.
    assert!(epoch_of(to_server.last().expect("records")) >= 3);
}

/// Clauses: KS-004, REC-007 — the AEAD nonce is the record's sequence number, not a
/// count of records sealed under the key: after a jump in the sequence space, the
/// record opens with its header's seq as nonce, and a non-strict receiver opens it.
#[test]
fn the_nonce_is_the_header_sequence_number() {
    let mut limits = ConnectionLimits::default();
    limits.strict_order = false;
    let peers = Peers::with_limits(&limits);
    let (mut pair, _, tap) = established_and_tapped(&peers);
    pair.client_sends(request(1, &[0x90]));
    set_next_send_seq_for_testing_only(&mut pair.client, 1_000);
    pair.client
        .send(pair.now, request(2, &[0x90]))
        .expect("sends");
    let record = pair.take_one_from_client();
    assert_eq!(seq_of(&record), 1_000);
    let plaintext = open_record(&tap.client_to_server, &record).expect("opens with nonce 1000");
    assert_eq!(plaintext, request(2, &[0x90]).encode());
    // Under the nonce a counter would give (1), it does not open.
    let mut relabelled = record.clone();
    relabelled[8..16].copy_from_slice(&1u64.to_le_bytes());
    assert!(open_record(&tap.client_to_server, &relabelled).is_none());
    pair.deliver_to_server(&record).expect("accepted");
    assert_eq!(
        pair.server_messages(),
        vec![request(1, &[0x90]), request(2, &[0x90])]
    );
}

/// Clauses: KS-005, HS-002 — every connection runs its own handshake with fresh
/// ephemeral keys: two connections of the same two configurations get different
/// session ids and keys, and a record of one fails authentication on the other.
#[test]
fn keys_of_one_connection_do_not_open_records_of_another() {
    let peers = Peers::default_configs();
    let now = base_instant();
    let mut pairs: Vec<Pair> = (0..2)
        .map(|_| {
            let client =
                Connection::client(peers.client_config.clone(), now, &mut rand_core::OsRng);
            let server = Connection::server(
                Arc::clone(&peers.server_config),
                now,
                UNIX_TIME,
                &mut rand_core::OsRng,
            );
            let mut pair = Pair::from_connections(client, server, now);
            pair.handshake().expect("handshake");
            pair.clear_events();
            pair
        })
        .collect();
    assert_ne!(pairs[0].session_id(), pairs[1].session_id());
    pairs[0]
        .client
        .send(now, request(1, &[0x90]))
        .expect("sends");
    let record = pairs[0].take_one_from_client();
    let result = pairs[1].deliver_to_server(&record);
    assert_error(result, &Error::DecryptFailed, CloseCode::DECRYPT_FAILED);
    assert!(pairs[1].server_messages().is_empty());
}

/// Clauses: REC-005 — after the handshake too, a record shorter than its 16-byte
/// header closes with PROTOCOL_VIOLATION (4010).
#[test]
fn a_record_shorter_than_its_header_closes_with_protocol_violation() {
    for len in [0usize, 1, 8, 15] {
        let mut pair = Pair::established();
        pair.client.send(pair.now, request(0, b"")).expect("sends");
        let record = pair.take_one_from_client();
        let result = pair.deliver_to_server(&record[..len]);
        let error = Error::Malformed(Malformed::Record);
        assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
        assert_closed(
            &pair.server,
            &pair.server_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Local,
            Some(&error),
        );
    }
}

/// Clauses: REC-027 — a sealed record whose body is shorter than the 16-byte tag
/// closes with PROTOCOL_VIOLATION (4010), not DECRYPT_FAILED.
#[test]
fn a_sealed_body_shorter_than_a_tag_closes_with_protocol_violation() {
    for body in [0usize, 1, 15] {
        let mut pair = Pair::established();
        pair.client.send(pair.now, request(0, b"")).expect("sends");
        let record = pair.take_one_from_client();
        let result = pair.deliver_to_server(&record[..HEADER_LEN + body]);
        let error = Error::Malformed(Malformed::Record);
        assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
        assert!(pair.server_messages().is_empty());
    }
}

/// Clauses: REC-019, REC-004, REC-005, REC-016, REC-017, REC-018 — during the
/// handshake the record checks run in the order length, version, size, type, fixed
/// header fields, before any Noise processing: a record failing two of them closes
/// with the code of the earlier one.
#[test]
fn handshake_record_checks_run_in_order() {
    type Tamper = fn(&mut Vec<u8>);
    let short: Tamper = |record| record.truncate(10);
    let version: Tamper = |record| record[0] = 2;
    let oversize: Tamper = |record| record.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN + 1, 0);
    let wrong_type: Tamper = |record| record[1] = 3;
    let nonzero_seq: Tamper = |record| record[15] = 1;
    let bad_length: Tamper = |record| record.truncate(HEADER_LEN + 31);
    let cases: Vec<(&str, Vec<Tamper>, Error)> = vec![
        (
            "short with version 2",
            vec![version, short],
            Error::Malformed(Malformed::Record),
        ),
        (
            "version 2, oversize",
            vec![version, oversize],
            Error::Incompatible(Incompatibility::Version(2)),
        ),
        (
            "oversize, wrong type",
            vec![oversize, wrong_type],
            Error::LimitExceeded(Limit::RecordSize),
        ),
        (
            "wrong type, non-zero seq",
            vec![wrong_type, nonzero_seq],
            Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
        ),
        (
            "non-zero seq, message 1 of 31 bytes",
            vec![nonzero_seq, bad_length],
            Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader),
        ),
        (
            "message 1 of 31 bytes",
            vec![bad_length],
            Error::Malformed(Malformed::HandshakeMessage),
        ),
    ];
    for (name, tampers, expected) in cases {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record_1 = pair.take_one_from_client();
        for tamper in tampers {
            tamper(&mut record_1);
        }
        let result = pair.deliver_to_server(&record_1);
        assert_eq!(result, Err(expected.clone()), "{name}");
        assert!(pair.take_from_server().is_empty(), "{name}: nothing sent");
    }
    // The same order at the client, on record 2.
    let mut pair = Pair::start(&Peers::default_configs());
    pair.flush_client_to_server().expect("record 1");
    let mut record_2 = pair.take_one_from_server();
    record_2[1] = 1;
    record_2[4] = 1;
    assert_eq!(
        pair.deliver_to_client(&record_2),
        Err(Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType))
    );
}

// ---------------------------------------------------------------------------------
// The receive path of sealed records, on a bare transport
// ---------------------------------------------------------------------------------

const KEY: [u8; 32] = [0x4b; 32];

/// A strict receiver that has accepted seq 0 (so it expects 1).
fn receiver() -> Transport {
    let mut transport = transport_from_keys_for_testing_only(
        [0x11; 32],
        KEY,
        [0x5e; 32],
        &ConnectionLimits::default(),
    );
    let first = seal_record(&KEY, sealed_header(0, 0), &ping().encode());
    transport.open(&first).expect("seq 0 accepted");
    transport
}

fn ping() -> Message {
    Message::Ping(Ping { nonce: 1 })
}

/// One failing step of the receive path: its number in the table of section 6.3,
/// the plaintext it needs, how it changes a sealed record, and its error.
#[derive(Clone, Copy)]
struct Step {
    number: u8,
    plaintext: Plaintext,
    tamper: fn(&mut Vec<u8>),
    error: fn() -> Error,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plaintext {
    Ping,
    NotAMessage,
    KeyUpdateToEpoch5,
}

impl Plaintext {
    fn bytes(self) -> Vec<u8> {
        match self {
            Plaintext::Ping => ping().encode(),
            Plaintext::NotAMessage => vec![0xc1],
            Plaintext::KeyUpdateToEpoch5 => Message::KeyUpdate(KeyUpdate { epoch: 5 }).encode(),
        }
    }
}

fn set_seq(record: &mut [u8], seq: u64) {
    record[8..16].copy_from_slice(&seq.to_le_bytes());
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            number: 1,
            plaintext: Plaintext::Ping,
            tamper: |r| r.truncate(10),
            error: || Error::Malformed(Malformed::Record),
        },
        Step {
            number: 2,
            plaintext: Plaintext::Ping,
            tamper: |r| r[0] = 2,
            error: || Error::Incompatible(Incompatibility::Version(2)),
        },
        Step {
            number: 3,
            plaintext: Plaintext::Ping,
            tamper: |r| r.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN + 1, 0),
            error: || Error::LimitExceeded(Limit::RecordSize),
        },
        Step {
            number: 4,
            plaintext: Plaintext::Ping,
            tamper: |r| r[1] = 0x11,
            error: || Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
        },
        Step {
            number: 5,
            plaintext: Plaintext::Ping,
            tamper: |r| r[3] = 0x80,
            error: || Error::PeerMisbehaved(Misbehavior::ReservedBitsSet),
        },
        Step {
            number: 6,
            plaintext: Plaintext::Ping,
            tamper: |r| r[4] = 5,
            error: || Error::PeerMisbehaved(Misbehavior::WrongEpoch),
        },
        Step {
            number: 7,
            plaintext: Plaintext::Ping,
            tamper: |r| set_seq(r, 1 << 62),
            error: || Error::LimitExceeded(Limit::SequenceSpace),
        },
        Step {
            number: 8,
            plaintext: Plaintext::Ping,
            tamper: |r| set_seq(r, 0),
            error: || Error::PeerMisbehaved(Misbehavior::Replayed),
        },
        Step {
            number: 9,
            plaintext: Plaintext::Ping,
            tamper: |r| set_seq(r, 2),
            error: || Error::PeerMisbehaved(Misbehavior::Reordered),
        },
        Step {
            number: 10,
            plaintext: Plaintext::Ping,
            tamper: |r| r.truncate(HEADER_LEN + 10),
            error: || Error::Malformed(Malformed::Record),
        },
        Step {
            number: 11,
            plaintext: Plaintext::Ping,
            tamper: |r| {
                let last = r.len() - 1;
                r[last] ^= 1;
            },
            error: || Error::DecryptFailed,
        },
        Step {
            number: 13,
            plaintext: Plaintext::NotAMessage,
            tamper: |_| {},
            error: || Error::Malformed(Malformed::Message),
        },
        Step {
            number: 14,
            plaintext: Plaintext::KeyUpdateToEpoch5,
            tamper: |_| {},
            error: || Error::PeerMisbehaved(Misbehavior::BadKeyUpdate),
        },
    ]
}

/// Whether two steps can fail in one record.
fn compatible(a: &Step, b: &Step) -> bool {
    let pair = (a.number.min(b.number), a.number.max(b.number));
    let seq_steps = [7, 8, 9];
    if a.number == 1 || b.number == 1 {
        // Only the version byte survives a cut to 10 bytes.
        return pair == (1, 2);
    }
    if seq_steps.contains(&a.number) && seq_steps.contains(&b.number) {
        return false;
    }
    let both_need_a_special_plaintext =
        a.plaintext != Plaintext::Ping && b.plaintext != Plaintext::Ping;
    !both_need_a_special_plaintext
        && !matches!(
            pair,
            (3, 10) | (10, 11) | (10, 13) | (10, 14) | (13, 14) | (3, 13) | (3, 14)
        )
}

/// The genuine record at seq 1 carrying `plaintext`, with `tampers` applied.
fn record_failing(plaintext: Plaintext, tampers: &[fn(&mut Vec<u8>)]) -> Vec<u8> {
    let mut record = seal_record(&KEY, sealed_header(0, 1), &plaintext.bytes());
    // Size changes last, so that header edits land in a full header.
    for tamper in tampers {
        tamper(&mut record);
    }
    record
}

/// Clauses: REC-033, REC-019, RPL-007, REC-020, REC-021, REC-022, REC-023,
/// REC-024, REC-025, REC-026, REC-027, REC-028, REC-032, KEY-005 — each step of the
/// receive path fails alone with its own error, and a record failing two steps
/// fails with the error of the earlier one (the window and strict order are
/// consulted before the AEAD; every header check before them).
#[test]
fn receive_path_steps_run_in_the_order_of_the_table() {
    let steps = steps();
    for step in &steps {
        let mut victim = receiver();
        let record = record_failing(step.plaintext, &[step.tamper]);
        assert_eq!(
            victim.open(&record),
            Err((step.error)()),
            "step {} alone",
            step.number
        );
    }
    let mut pairs = 0;
    for first in &steps {
        for second in &steps {
            if first.number >= second.number || !compatible(first, second) {
                continue;
            }
            let plaintext = if second.plaintext == Plaintext::Ping {
                first.plaintext
            } else {
                second.plaintext
            };
            // Apply the size-changing tamper last.
            let mut tampers = vec![first.tamper, second.tamper];
            if [1, 3, 10].contains(&first.number) {
                tampers.reverse();
            }
            let record = record_failing(plaintext, &tampers);
            let mut victim = receiver();
            assert_eq!(
                victim.open(&record),
                Err((first.error)()),
                "steps {} and {}",
                first.number,
                second.number
            );
            pairs += 1;
        }
    }
    assert!(pairs >= 50, "{pairs} combinations");
}

/// Clauses: REC-031, REC-030, RPL-007 — a record that fails any step up to the
/// AEAD leaves the receiver as it was: the genuine record with the same sequence
/// number is accepted afterwards, in the same epoch, and a forged record never
/// marks its sequence number as seen (also on a receiver without strict order).
#[test]
fn a_record_failing_before_or_at_the_aead_changes_no_state() {
    for step in steps().iter().filter(|step| step.number <= 11) {
        let mut victim = receiver();
        let forged = record_failing(step.plaintext, &[step.tamper]);
        assert!(victim.open(&forged).is_err(), "step {}", step.number);
        let genuine = record_failing(Plaintext::Ping, &[]);
        assert_eq!(
            victim.open(&genuine),
            Ok(ping()),
            "after step {}",
            step.number
        );
        assert_eq!(victim.receive_epoch(), 0);
    }
    // Without strict order: a forged seq 7 is checked against the window, fails the
    // AEAD, and the genuine seq 7 is still accepted afterwards.
    let mut limits = ConnectionLimits::default();
    limits.strict_order = false;
    let mut relaxed = transport_from_keys_for_testing_only([0x11; 32], KEY, [0x5e; 32], &limits);
    let mut forged = seal_record(&KEY, sealed_header(0, 7), &ping().encode());
    forged[HEADER_LEN] ^= 0x40;
    assert_eq!(relaxed.open(&forged), Err(Error::DecryptFailed));
    let genuine = seal_record(&KEY, sealed_header(0, 7), &ping().encode());
    assert_eq!(relaxed.open(&genuine), Ok(ping()));
    assert_eq!(
        relaxed.open(&genuine),
        Err(Error::PeerMisbehaved(Misbehavior::Replayed))
    );
}

/// Clauses: REC-029, CLS-003 — a record that fails authentication because of a
/// wrong key, an altered header field or an altered body gives the same error, and
/// the receiver's CLOSE record is byte for byte the same in all three cases: code
/// 4003 and an empty reason, nothing that tells the causes apart.
#[test]
fn authentication_failures_all_look_the_same_to_the_peer() {
    let mut limits = ConnectionLimits::default();
    limits.strict_order = false;
    let peers = Peers::with_limits(&limits);
    let (mut pair, _, tap) = established_and_tapped(&peers);
    pair.client
        .send(pair.now, request(0, &[0x90]))
        .expect("sends");
    let genuine = pair.take_one_from_client();

    let mut other = Pair::established();
    other
        .client
        .send(other.now, request(0, &[0x90]))
        .expect("sends");
    let wrong_key = other.take_one_from_client();
    let mut altered_header = genuine.clone();
    set_seq(&mut altered_header, 5);
    let mut altered_body = genuine.clone();
    altered_body[HEADER_LEN + 2] ^= 0x01;

    let mut closes = Vec::new();
    for (cause, record) in [
        ("wrong key", wrong_key),
        ("altered header", altered_header),
        ("altered body", altered_body),
    ] {
        let mut victim = clone_established_for_testing_only(&pair.server).expect("open");
        let error = victim.handle_record(pair.now, &record).expect_err(cause);
        assert_eq!(error, Error::DecryptFailed, "{cause}");
        assert_eq!(error.to_string(), "record failed authentication", "{cause}");
        let close = victim.poll_transmit().expect("a CLOSE record");
        assert!(victim.poll_transmit().is_none());
        let plaintext = open_record(&tap.server_to_client, &close).expect("opens");
        assert_eq!(
            Message::decode(&plaintext),
            Ok(Message::Close(Close {
                code: CloseCode::DECRYPT_FAILED.0,
                reason: String::new()
            })),
            "{cause}"
        );
        closes.push(close);
    }
    assert!(closes.windows(2).all(|pair| pair[0] == pair[1]));
    // The genuine record was never needed: the session was fine.
    pair.deliver_to_server(&genuine).expect("accepted");
}

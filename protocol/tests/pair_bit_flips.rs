//! Every single-bit flip of every kind of record is rejected, with the close code of
//! the header field the flipped bit lands in, and never delivers a message.
//!
//! Expected outcome by field (record layout in `toolwire_protocol::record`):
//!
//! | bytes  | field    | handshake record (1, 2, 3)          | sealed record                         |
//! |--------|----------|-------------------------------------|---------------------------------------|
//! | 0      | version  | 4002 VERSION_UNSUPPORTED            | 4002 VERSION_UNSUPPORTED              |
//! | 1      | type     | 4010 (unexpected record type)       | 4010 (unexpected record type)         |
//! | 2..4   | reserved | 4010 (bad handshake header)         | 4010 (reserved bits set)              |
//! | 4..8   | epoch    | 4010 (bad handshake header)         | 4010 (wrong epoch)                    |
//! | 8..16  | seq      | 4010 (bad handshake header)         | 4004 REPLAY_DETECTED, before the AEAD;|
//! |        |          |                                     | 4005 SEQUENCE_EXHAUSTED for bits 62/63|
//! | 16..   | body     | 4000 HANDSHAKE_FAILED (AEAD/DH)     | 4003 DECRYPT_FAILED                   |
//!
//! Handshake records carry fixed header values (epoch 0, seq 0), so any change there
//! is a header violation, not a replay. A flipped seq bit 62 or 63 makes the sequence
//! number ≥ 2^62, past the sequence space (the same rule as `pair_limits`), which
//! closes with SEQUENCE_EXHAUSTED rather than REPLAY_DETECTED. Handshake record 1 is
//! unauthenticated by design (a bare ephemeral key): a flip in its body is accepted
//! by the server and the handshake then fails at the client on record 2 (or at the
//! server, for a low-order key), always with 4000.
//!
//! No sampling: every bit of every record is flipped. Sealed records are tested
//! against copies of one established pair (`clone_established_for_testing_only`);
//! handshake records against fresh connections with fixed ephemerals.

mod common;

use common::*;
use std::sync::OnceLock;
use toolwire_protocol::error::{Incompatibility, Limit, Misbehavior};
use toolwire_protocol::message::KeyUpdate;
use toolwire_protocol::record::{HEADER_LEN, LAST_SEQUENCE};
use toolwire_protocol::testing::{self, clone_established_for_testing_only};
use toolwire_protocol::{CloseCode, Error, Event, Message, Side};

/// Deterministic peers shared by the handshake tests of this file.
fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(Peers::default_configs)
}

/// The three genuine handshake records of `peers()` with fixed ephemerals.
fn handshake_records() -> &'static [Vec<u8>; 3] {
    static RECORDS: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let mut pair = Pair::start(peers());
        let record_1 = pair.take_one_from_client();
        pair.deliver_to_server(&record_1)
            .expect("record 1 accepted");
        let record_2 = pair.take_one_from_server();
        pair.deliver_to_client(&record_2)
            .expect("record 2 accepted");
        let record_3 = pair.take_one_from_client();
        pair.deliver_to_server(&record_3)
            .expect("record 3 accepted");
        assert!(pair.server.is_established());
        [record_1, record_2, record_3]
    })
}

fn flipped(record: &[u8], bit: usize) -> Vec<u8> {
    let mut copy = record.to_vec();
    copy[bit / 8] ^= 1 << (bit % 8);
    copy
}

/// The error a receiver must return for `record` with `bit` flipped, when `record`
/// is a handshake record.
fn expected_handshake_error(record: &[u8], bit: usize) -> Error {
    let flipped = flipped(record, bit);
    match bit / 8 {
        0 => Error::Incompatible(Incompatibility::Version(flipped[0])),
        1 => Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
        2..HEADER_LEN => Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader),
        _ => Error::HandshakeFailed,
    }
}

/// The error a receiver whose next expected sequence number is `next_seq` must return
/// for the sealed `record` with `bit` flipped.
fn expected_sealed_error(record: &[u8], bit: usize, next_seq: u64) -> Error {
    let flipped = flipped(record, bit);
    match bit / 8 {
        0 => Error::Incompatible(Incompatibility::Version(flipped[0])),
        1 => Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
        2..4 => Error::PeerMisbehaved(Misbehavior::ReservedBitsSet),
        4..8 => Error::PeerMisbehaved(Misbehavior::WrongEpoch),
        8..HEADER_LEN => {
            let seq = seq_of(&flipped);
            if seq > LAST_SEQUENCE {
                Error::LimitExceeded(Limit::SequenceSpace)
            } else if seq < next_seq {
                // Already accepted: a duplicate in the window.
                Error::PeerMisbehaved(Misbehavior::Replayed)
            } else {
                // Ahead of the next expected number: a gap under strict ordering.
                Error::PeerMisbehaved(Misbehavior::Reordered)
            }
        }
        _ => Error::DecryptFailed,
    }
}

fn expected_code(error: &Error) -> CloseCode {
    match error {
        Error::Incompatible(_) => CloseCode::VERSION_UNSUPPORTED,
        Error::PeerMisbehaved(Misbehavior::Replayed | Misbehavior::Reordered) => {
            CloseCode::REPLAY_DETECTED
        }
        Error::PeerMisbehaved(_) => CloseCode::PROTOCOL_VIOLATION,
        Error::LimitExceeded(Limit::SequenceSpace) => CloseCode::SEQUENCE_EXHAUSTED,
        Error::HandshakeFailed => CloseCode::HANDSHAKE_FAILED,
        Error::DecryptFailed => CloseCode::DECRYPT_FAILED,
        other => panic!("no expectation for {other:?}"),
    }
}

/// Asserts that the `role` side of `pair`, which failed on a record, closed locally
/// with `error`, emitted nothing but the `Closed` event, and (during the handshake,
/// when no keys exist) put nothing on the wire.
fn assert_rejected_during_handshake(pair: &mut Pair, role: Role, error: &Error, bit: usize) {
    let code = expected_code(error);
    assert_eq!(error.close_code(), Some(code), "bit {bit}: {error:?}");
    pair.collect();
    let (connection, events) = match role {
        Role::Client => (&mut pair.client, &pair.client_events),
        Role::Server => (&mut pair.server, &pair.server_events),
    };
    assert_closed(connection, events, code, Side::Local, Some(error));
    assert!(app_messages(events).is_empty(), "bit {bit}: no message");
    assert!(
        connection.poll_transmit().is_none(),
        "bit {bit}: a failed handshake sends nothing (no keys, no detail)"
    );
}

/// Clauses: REC-004, REC-017, REC-018, HS-010 — every flipped bit of record 1 is refused with the
/// code of its field.
#[test]
fn every_bit_flip_of_handshake_record_1_is_rejected() {
    let [record_1, ..] = handshake_records();
    for bit in 0..record_1.len() * 8 {
        let mut pair = Pair::start(peers());
        pair.take_one_from_client();
        let tampered = flipped(record_1, bit);
        let expected = expected_handshake_error(record_1, bit);
        if bit / 8 < HEADER_LEN {
            let result = pair.deliver_to_server(&tampered);
            assert_eq!(result, Err(expected.clone()), "bit {bit}");
            assert_rejected_during_handshake(&mut pair, Role::Server, &expected, bit);
            continue;
        }
        // The body is a bare ephemeral key: unauthenticated, so a changed key is
        // either refused at once (low order) or caught by the client at record 2.
        match pair.deliver_to_server(&tampered) {
            Err(error) => {
                assert_eq!(error, Error::HandshakeFailed, "bit {bit}");
                assert_rejected_during_handshake(&mut pair, Role::Server, &error, bit);
            }
            Ok(()) => {
                let record_2 = pair.take_one_from_server();
                let error = pair
                    .deliver_to_client(&record_2)
                    .expect_err("the client refuses record 2 of a tampered transcript");
                assert_eq!(error, Error::HandshakeFailed, "bit {bit}");
                assert_rejected_during_handshake(&mut pair, Role::Client, &error, bit);
            }
        }
        assert!(!pair.server.is_established(), "bit {bit}");
    }
}

/// Clauses: REC-004, REC-017, REC-018, HS-010 — every flipped bit of record 2 is refused by the
/// client with the code of its field.
#[test]
fn every_bit_flip_of_handshake_record_2_is_rejected_by_the_client() {
    let [_, record_2, _] = handshake_records();
    for bit in 0..record_2.len() * 8 {
        let mut pair = Pair::start(peers());
        pair.take_one_from_client();
        let expected = expected_handshake_error(record_2, bit);
        let result = pair.deliver_to_client(&flipped(record_2, bit));
        assert_eq!(result, Err(expected.clone()), "bit {bit}");
        assert_rejected_during_handshake(&mut pair, Role::Client, &expected, bit);
        assert!(pair.client.session().is_none(), "bit {bit}");
    }
}

/// Clauses: REC-004, REC-017, REC-018, HS-020 — every flipped bit of record 3 is refused by the
/// server with the code of its field.
#[test]
fn every_bit_flip_of_handshake_record_3_is_rejected_by_the_server() {
    let [record_1, _, record_3] = handshake_records();
    for bit in 0..record_3.len() * 8 {
        let mut pair = Pair::start(peers());
        pair.take_one_from_client();
        pair.deliver_to_server(record_1).expect("record 1 accepted");
        pair.take_one_from_server();
        let expected = expected_handshake_error(record_3, bit);
        let result = pair.deliver_to_server(&flipped(record_3, bit));
        assert_eq!(result, Err(expected.clone()), "bit {bit}");
        assert_rejected_during_handshake(&mut pair, Role::Server, &expected, bit);
        assert!(pair.server.session().is_none(), "bit {bit}");
    }
}

/// Which way a sealed record travels.
#[derive(Clone, Copy)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// An established pair that has already exchanged `warmup` records each way (so
/// flipped sequence numbers can land both below and above the next expected one),
/// and a record carrying `message` that the receiver has not seen.
fn pair_with_pending_record(direction: Direction, message: Message) -> (Pair, Vec<u8>) {
    let mut pair = Pair::established();
    for id in 0..3 {
        pair.client_sends(request(id, &[0x90]));
        pair.server_sends(response(id, &[0x90]));
    }
    pair.clear_events();
    let (sender, record) = match direction {
        Direction::ClientToServer => {
            pair.client.send(pair.now, message).expect("sends");
            ("client", pair.take_one_from_client())
        }
        Direction::ServerToClient => {
            pair.server.send(pair.now, message).expect("sends");
            ("server", pair.take_one_from_server())
        }
    };
    assert_eq!(seq_of(&record), 3, "{sender} record is the fourth");
    (pair, record)
}

/// Flips every bit of a sealed record and checks each rejection against a fresh copy
/// of the receiver, then checks the receiver's CLOSE at a copy of the sender.
fn flip_every_bit_of_a_sealed_record(direction: Direction, message: Message) {
    let (pair, record) = pair_with_pending_record(direction, message.clone());
    let (receiver, sender) = match direction {
        Direction::ClientToServer => (&pair.server, &pair.client),
        Direction::ServerToClient => (&pair.client, &pair.server),
    };
    // The receiver has accepted seq 0..=2 in this direction.
    let next_seq = 3;
    // Control: the genuine record is accepted and delivers the message.
    let mut genuine = clone_established_for_testing_only(receiver).expect("established");
    genuine.handle_record(pair.now, &record).expect("accepted");
    assert_eq!(genuine.poll_event(), Some(Event::Message(message)));

    for bit in 0..record.len() * 8 {
        let expected = expected_sealed_error(&record, bit, next_seq);
        let code = expected_code(&expected);
        let mut victim = clone_established_for_testing_only(receiver).expect("established");
        let result = victim.handle_record(pair.now, &flipped(&record, bit));
        assert_eq!(result, Err(expected.clone()), "bit {bit}");
        assert_eq!(expected.close_code(), Some(code), "bit {bit}");
        let events: Vec<Event> = std::iter::from_fn(|| victim.poll_event()).collect();
        assert_closed(&victim, &events, code, Side::Local, Some(&expected));
        assert!(app_messages(&events).is_empty(), "bit {bit}: no message");

        // Keys exist: the victim's last word is an authenticated CLOSE with the code.
        let close: Vec<Vec<u8>> = std::iter::from_fn(|| victim.poll_transmit()).collect();
        assert_eq!(close.len(), 1, "bit {bit}: exactly one CLOSE record");
        let mut peer = clone_established_for_testing_only(sender).expect("established");
        peer.handle_record(pair.now, &close[0])
            .expect("the CLOSE is authentic");
        let events: Vec<Event> = std::iter::from_fn(|| peer.poll_event()).collect();
        assert_closed(&peer, &events, code, Side::Remote, None);
    }
}

/// Clauses: REC-021, REC-022, REC-023, REC-024, REC-025, REC-026, REC-028, REC-033, CLS-011 — every
/// flipped bit of a sealed record closes with the code of the first check it fails.
#[test]
fn every_bit_flip_of_a_small_sealed_record_is_rejected_with_the_code_of_its_field() {
    flip_every_bit_of_a_sealed_record(Direction::ClientToServer, request(3, &[0x90]));
}

/// Clauses: REC-028, REC-033, CLS-011 — the same for a larger record, server to client.
#[test]
fn every_bit_flip_of_a_larger_sealed_record_is_rejected_with_the_code_of_its_field() {
    let result: Vec<u8> = (0..=255u8).cycle().take(600).collect();
    flip_every_bit_of_a_sealed_record(Direction::ServerToClient, response(3, &result));
}

/// Clauses: REC-033, KEY-004 — a tampered KEY_UPDATE never moves the receiver to the next epoch.
#[test]
fn every_bit_flip_of_a_key_update_record_is_rejected_with_the_code_of_its_field() {
    let mut pair = Pair::established();
    pair.client_sends(request(0, &[0x90]));
    // The bytes the client's own rekey would produce (sealed by hand: on the default
    // pair the idle timeout comes before the 5-minute time-based rekey).
    let mut client = clone_established_for_testing_only(&pair.client).expect("established");
    let key_update = testing::seal_raw_for_testing_only(
        &mut client,
        &Message::KeyUpdate(KeyUpdate { epoch: 1 }).encode(),
    )
    .expect("sealed");
    let mut genuine = clone_established_for_testing_only(&pair.server).expect("established");
    genuine
        .handle_record(pair.now, &key_update)
        .expect("accepted");
    assert_eq!(genuine.transport().expect("open").receive_epoch(), 1);
    assert_eq!(genuine.poll_event(), None, "KEY_UPDATE is not an app event");

    for bit in 0..key_update.len() * 8 {
        let expected = expected_sealed_error(&key_update, bit, 1);
        let mut victim = clone_established_for_testing_only(&pair.server).expect("established");
        let result = victim.handle_record(pair.now, &flipped(&key_update, bit));
        assert_eq!(result, Err(expected.clone()), "bit {bit}");
        let events: Vec<Event> = std::iter::from_fn(|| victim.poll_event()).collect();
        assert_closed(
            &victim,
            &events,
            expected_code(&expected),
            Side::Local,
            Some(&expected),
        );
    }
}

/// Clauses: REC-028 — a tampered tag closes with DECRYPT_FAILED (4003).
#[test]
fn tampered_tag_closes_with_decrypt_failed() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(0, b"")).expect("sends");
    let mut record = pair.take_one_from_client();
    *record.last_mut().expect("non-empty") ^= 0x80;
    let result = pair.deliver_to_server(&record);
    assert_error(result, &Error::DecryptFailed, CloseCode::DECRYPT_FAILED);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::DECRYPT_FAILED,
        Side::Local,
        Some(&Error::DecryptFailed),
    );
    assert!(pair.server_messages().is_empty());
    pair.flush_server_to_client()
        .expect("the CLOSE is accepted");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::DECRYPT_FAILED,
        Side::Remote,
        None,
    );
}

/// Clauses: REC-026, RPL-007 — the sequence number is checked before the AEAD.
#[test]
fn tampered_sequence_number_closes_with_replay_detected_before_decryption() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(0, b"")).expect("sends");
    let record = pair.take_one_from_client();
    // Seq 1 instead of 0: were the AEAD run first this would be DECRYPT_FAILED.
    let result = pair.deliver_to_server(&with_seq(&record, 1));
    assert_error(
        result,
        &Error::PeerMisbehaved(Misbehavior::Reordered),
        CloseCode::REPLAY_DETECTED,
    );
    assert!(pair.server_messages().is_empty());
}

/// Clauses: REC-004 — version 2 on a sealed record closes with VERSION_UNSUPPORTED (4002).
#[test]
fn tampered_version_closes_with_version_unsupported() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(0, b"")).expect("sends");
    let mut record = pair.take_one_from_client();
    record[0] = 2;
    let result = pair.deliver_to_server(&record);
    assert_error(
        result,
        &Error::Incompatible(Incompatibility::Version(2)),
        CloseCode::VERSION_UNSUPPORTED,
    );
    assert!(pair.server_messages().is_empty());
}

/// Clauses: REC-023 — a wrong epoch closes with PROTOCOL_VIOLATION (4010).
#[test]
fn tampered_epoch_closes_with_protocol_violation() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(0, b"")).expect("sends");
    let mut record = pair.take_one_from_client();
    record[4] = 1;
    let result = pair.deliver_to_server(&record);
    assert_error(
        result,
        &Error::PeerMisbehaved(Misbehavior::WrongEpoch),
        CloseCode::PROTOCOL_VIOLATION,
    );
    assert!(pair.server_messages().is_empty());
}

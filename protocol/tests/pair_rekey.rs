//! Rekeying: after `rekey_after_records` records or `rekey_after` of time a sender
//! emits KEY_UPDATE (sealed in the old epoch) and moves to the next epoch; the
//! receiver follows and traffic keeps flowing. A KEY_UPDATE that does not announce
//! exactly the next epoch, or a record whose KEY_UPDATE was dropped, closes with
//! PROTOCOL_VIOLATION (4010).

mod common;

use common::*;
use std::time::Duration;
use toolwire_protocol::error::Misbehavior;
use toolwire_protocol::message::KeyUpdate;
use toolwire_protocol::noise::TAG_LEN;
use toolwire_protocol::record::HEADER_LEN;
use toolwire_protocol::testing::{
    clone_established_for_testing_only, seal_raw_for_testing_only,
    set_next_send_seq_for_testing_only,
};
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Message, Side};

fn peers_rekeying_after_records(records: u64) -> Peers {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after_records = records;
    Peers::with_limits(&limits)
}

fn peers_rekeying_after(period: Duration) -> Peers {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after = period;
    Peers::with_limits(&limits)
}

/// Clauses: KEY-001, KEY-003, KEY-004, REC-009, REC-010 — after its quota of records the sender
/// seals KEY_UPDATE in the old epoch and moves on; epochs label the records and sequence numbers
/// run on across epochs.
#[test]
fn count_based_rekey_emits_key_update_and_the_receiver_follows() {
    let mut pair = Pair::established_with(&peers_rekeying_after_records(4));
    pair.clear_events();

    let mut records = Vec::new();
    let mut send_epochs = Vec::new();
    for id in 0..14 {
        pair.client.send(pair.now, request(id, b"")).expect("sends");
        send_epochs.push(pair.client.transport().expect("open").send_epoch());
        records.extend(pair.take_from_client());
    }
    // Four data records per epoch, then a KEY_UPDATE sealed in the old epoch.
    assert_eq!(send_epochs, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
    let epochs: Vec<u32> = records.iter().map(|record| epoch_of(record)).collect();
    assert_eq!(epochs, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
    // One sequence space across epochs: numbers never reset.
    let seqs: Vec<u64> = records.iter().map(|record| seq_of(record)).collect();
    assert_eq!(seqs, (0..17).collect::<Vec<u64>>());

    // The receiver moves to the next epoch exactly at each KEY_UPDATE.
    let key_updates = [4usize, 9, 14];
    for (index, record) in records.iter().enumerate() {
        let before = pair.server.transport().expect("open").receive_epoch();
        let messages_before = pair.server_messages().len();
        pair.deliver_to_server(record).expect("accepted");
        let after = pair.server.transport().expect("open").receive_epoch();
        if key_updates.contains(&index) {
            assert_eq!(after, before + 1, "record {index} is a KEY_UPDATE");
            assert_eq!(
                pair.server_messages().len(),
                messages_before,
                "a KEY_UPDATE is not an application message"
            );
        } else {
            assert_eq!(after, before, "record {index} is data");
        }
    }
    let expected: Vec<Message> = (0..14).map(|id| request(id, b"")).collect();
    assert_eq!(pair.server_messages(), expected);
    assert_eq!(pair.server.transport().expect("open").receive_epoch(), 3);
    // Directions rekey independently: the server has not sent anything.
    assert_eq!(pair.server.transport().expect("open").send_epoch(), 0);
    assert_eq!(pair.client.transport().expect("open").receive_epoch(), 0);
}

/// Clauses: KEY-003, KEY-004 — both directions rekey independently, many times, without losing a
/// message.
#[test]
fn traffic_keeps_flowing_both_ways_across_many_rekeys() {
    let mut pair = Pair::established_with(&peers_rekeying_after_records(3));
    pair.clear_events();
    for id in 0..40 {
        pair.client_sends(request(id, &[0x91, 0x01]));
        pair.server_sends(response(id, &[0x92, 0x01, 0x02]));
    }
    let requests: Vec<Message> = (0..40).map(|id| request(id, &[0x91, 0x01])).collect();
    let responses: Vec<Message> = (0..40)
        .map(|id| response(id, &[0x92, 0x01, 0x02]))
        .collect();
    assert_eq!(pair.server_messages(), requests);
    assert_eq!(pair.client_messages(), responses);
    let client = pair.client.transport().expect("open");
    let server = pair.server.transport().expect("open");
    // 40 records in epochs of 3 (plus the KEY_UPDATE): epoch 13 carries the last one.
    assert_eq!(client.send_epoch(), 13);
    assert_eq!(server.receive_epoch(), 13);
    assert_eq!(server.send_epoch(), 13);
    assert_eq!(client.receive_epoch(), 13);
    assert_eq!(client.next_send_seq(), 40 + 13);
}

/// Clauses: KEY-002 — a sender rekeys when its epoch is as old as the rekey period, with nothing
/// else to send.
#[test]
fn time_based_rekey_emits_key_update_at_the_deadline() {
    let period = Duration::from_secs(10);
    let mut pair = Pair::established_with(&peers_rekeying_after(period));
    pair.clear_events();
    // The rekey deadline is the earliest on both sides (keepalive is at 30 s).
    assert_eq!(pair.client.poll_timeout(), Some(pair.base + period));
    assert_eq!(pair.server.poll_timeout(), Some(pair.base + period));

    pair.advance(period - Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert!(pair.take_from_client().is_empty(), "not yet");

    pair.advance(Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert_eq!(pair.server_timeout(), Ok(()));
    let client_update = pair.take_one_from_client();
    let server_update = pair.take_one_from_server();
    assert_eq!((epoch_of(&client_update), seq_of(&client_update)), (0, 0));
    assert_eq!((epoch_of(&server_update), seq_of(&server_update)), (0, 0));
    assert_eq!(pair.client.transport().expect("open").send_epoch(), 1);
    assert_eq!(pair.server.transport().expect("open").send_epoch(), 1);

    pair.deliver_to_server(&client_update).expect("accepted");
    pair.deliver_to_client(&server_update).expect("accepted");
    assert_eq!(pair.server.transport().expect("open").receive_epoch(), 1);
    assert_eq!(pair.client.transport().expect("open").receive_epoch(), 1);
    assert!(pair.server_messages().is_empty() && pair.client_messages().is_empty());

    // Traffic continues in epoch 1, and the next rekey is one period later.
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let record = pair.take_one_from_client();
    assert_eq!(epoch_of(&record), 1);
    pair.deliver_to_server(&record).expect("accepted");
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
    assert_eq!(pair.server.poll_timeout(), Some(pair.now + period));

    pair.advance(period);
    assert_eq!(pair.client_timeout(), Ok(()));
    assert_eq!(pair.client.transport().expect("open").send_epoch(), 2);
    pair.flush().expect("accepted");
    assert_eq!(pair.server.transport().expect("open").receive_epoch(), 2);
}

/// Clauses: KEY-002, LIM-008 — by default each direction rekeys at 5 minutes.
#[test]
fn default_time_based_rekey_happens_at_five_minutes_on_a_kept_alive_connection() {
    let mut pair = Pair::established();
    let five_minutes = pair.base + Duration::from_secs(5 * 60);
    pair.run_until(five_minutes - Duration::from_millis(1))
        .expect("keepalives keep the connection open");
    assert_eq!(pair.client.transport().expect("open").send_epoch(), 0);
    assert_eq!(pair.server.transport().expect("open").send_epoch(), 0);

    pair.run_until(five_minutes).expect("rekeys");
    for connection in [&pair.client, &pair.server] {
        let transport = connection.transport().expect("open");
        assert_eq!(transport.send_epoch(), 1);
        assert_eq!(transport.receive_epoch(), 1);
    }
    assert!(pair.server_messages().is_empty() && pair.client_messages().is_empty());
    pair.client_sends(request(1, b""));
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

/// Clauses: KEY-005 — a KEY_UPDATE announcing current + 2 closes with PROTOCOL_VIOLATION (4010).
#[test]
fn key_update_announcing_epoch_plus_two_closes_with_protocol_violation() {
    let mut pair = Pair::established();
    pair.client_sends(request(1, b""));
    let forged = seal_raw_for_testing_only(
        &mut pair.client,
        &Message::KeyUpdate(KeyUpdate { epoch: 2 }).encode(),
    )
    .expect("sealed");
    pair.client.send(pair.now, request(2, b"")).expect("sends");
    let follow_up = pair.take_one_from_client();

    let result = pair.deliver_to_server(&forged);
    let error = Error::PeerMisbehaved(Misbehavior::BadKeyUpdate);
    assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::PROTOCOL_VIOLATION,
        Side::Local,
        Some(&error),
    );
    assert_eq!(
        pair.deliver_to_server(&follow_up),
        Err(Error::Closed {
            code: CloseCode::PROTOCOL_VIOLATION,
            side: Side::Local
        })
    );
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
    pair.flush_server_to_client().expect("CLOSE accepted");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::PROTOCOL_VIOLATION,
        Side::Remote,
        None,
    );
}

/// Clauses: KEY-005 — a KEY_UPDATE announcing the current epoch (or one that wraps) closes with
/// PROTOCOL_VIOLATION (4010).
#[test]
fn key_update_that_does_not_advance_the_epoch_closes_with_protocol_violation() {
    for announced in [0u32, u32::MAX] {
        let mut pair = Pair::established();
        let forged = seal_raw_for_testing_only(
            &mut pair.server,
            &Message::KeyUpdate(KeyUpdate { epoch: announced }).encode(),
        )
        .expect("sealed");
        let result = pair.deliver_to_client(&forged);
        let error = Error::PeerMisbehaved(Misbehavior::BadKeyUpdate);
        assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Local,
            Some(&error),
        );
        assert!(pair.client_messages().is_empty());
    }
}

/// Clauses: KEY-004, REC-023 — a record of an epoch the receiver has not moved to closes with
/// PROTOCOL_VIOLATION (4010).
#[test]
fn a_dropped_key_update_closes_with_protocol_violation_at_the_next_record() {
    let mut pair = Pair::established_with(&peers_rekeying_after_records(1));
    pair.clear_events();
    pair.client_sends(request(1, b""));
    pair.client.send(pair.now, request(2, b"")).expect("sends");
    let records = pair.take_from_client();
    assert_eq!(records.len(), 2, "KEY_UPDATE, then the request");
    // The KEY_UPDATE is dropped; the next record is in an epoch the server has no
    // key for.
    let result = pair.deliver_to_server(&records[1]);
    let error = Error::PeerMisbehaved(Misbehavior::WrongEpoch);
    assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

/// Clauses: KS-003, KEY-003 — after a KEY_UPDATE the same message at the same seq encrypts
/// differently: the key changed.
#[test]
fn a_new_epoch_uses_a_new_key() {
    // ChaCha20's keystream depends only on key and nonce: the same plaintext at the
    // same sequence number encrypts to the same body under the same key. Two copies
    // of one client seal request 1 at seq 1, one after a rekey and one without.
    let period = Duration::from_secs(10);
    let pair = Pair::established_with(&peers_rekeying_after(period));
    let mut rekeyed = clone_established_for_testing_only(&pair.client).expect("open");
    let mut unchanged = clone_established_for_testing_only(&pair.client).expect("open");
    let later = pair.now + period;
    rekeyed.handle_timeout(later).expect("rekeys");
    rekeyed.send(later, request(1, b"")).expect("sends");
    let records: Vec<Vec<u8>> = std::iter::from_fn(|| rekeyed.poll_transmit()).collect();
    assert_eq!(records.len(), 2, "KEY_UPDATE, then the request");
    let after = &records[1];
    set_next_send_seq_for_testing_only(&mut unchanged, 1);
    unchanged.send(pair.now, request(1, b"")).expect("sends");
    let before = unchanged.poll_transmit().expect("a record");

    assert_eq!((seq_of(after), seq_of(&before)), (1, 1));
    assert_eq!((epoch_of(after), epoch_of(&before)), (1, 0));
    assert_eq!(after.len(), before.len());
    let body = HEADER_LEN..after.len() - TAG_LEN;
    assert_ne!(after[body.clone()], before[body], "the epoch key changed");
}

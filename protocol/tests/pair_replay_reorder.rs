//! Replayed, reordered and stale-epoch records: captured sealed records delivered
//! again or out of order close with REPLAY_DETECTED (4004), a record of an epoch the
//! receiver has left closes with PROTOCOL_VIOLATION (4010), and none of them
//! delivers a message. With strict ordering off, reordering within the replay window
//! is accepted but a duplicate still closes.

mod common;

use common::*;
use toolwire_protocol::error::{Limit, Misbehavior};
use toolwire_protocol::replay::RecordWindow;
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Message, Side};

/// Asserts the server failed on a record with `error` (mapping to `code`), delivered
/// exactly `delivered` messages before, and that the client hears the CLOSE.
#[track_caller]
fn assert_server_closed(
    pair: &mut Pair,
    result: Result<(), Error>,
    error: &Error,
    code: CloseCode,
    delivered: &[Message],
) {
    assert_error(result, error, code);
    assert_closed(
        &pair.server,
        &pair.server_events,
        code,
        Side::Local,
        Some(error),
    );
    assert_eq!(
        pair.server_messages(),
        delivered,
        "no message after the attack"
    );
    pair.flush_server_to_client()
        .expect("the client accepts the CLOSE");
    assert_closed(&pair.client, &pair.client_events, code, Side::Remote, None);
}

fn relaxed_peers() -> Peers {
    let mut limits = ConnectionLimits::default();
    limits.strict_order = false;
    Peers::build(
        |server| server.with_limits(limits.clone()),
        |client| client.with_limits(limits.clone()),
    )
}

/// Clauses: REC-025 — a record received twice closes with REPLAY_DETECTED (4004) and is not
/// delivered again.
#[test]
fn a_record_delivered_twice_closes_with_replay_detected() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let record = pair.take_one_from_client();
    pair.deliver_to_server(&record)
        .expect("first delivery accepted");
    let result = pair.deliver_to_server(&record);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Replayed),
        CloseCode::REPLAY_DETECTED,
        &[request(1, b"")],
    );
}

/// Clauses: REC-025 — an old record replayed after later ones closes with REPLAY_DETECTED (4004).
#[test]
fn an_old_record_replayed_later_closes_with_replay_detected() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let first = pair.take_one_from_client();
    pair.deliver_to_server(&first).expect("accepted");
    for id in 2..6 {
        pair.client_sends(request(id, b""));
    }
    let result = pair.deliver_to_server(&first);
    let delivered: Vec<Message> = (1..6).map(|id| request(id, b"")).collect();
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Replayed),
        CloseCode::REPLAY_DETECTED,
        &delivered,
    );
}

/// Clauses: REC-026, RPL-008 — by default strict order is enforced: a record ahead of the next
/// expected closes with REPLAY_DETECTED (4004).
#[test]
fn records_delivered_in_swapped_order_close_with_replay_detected() {
    let mut pair = Pair::established();
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    pair.client.send(pair.now, request(2, b"")).expect("sends");
    let records = pair.take_from_client();
    assert_eq!(records.len(), 2);
    let result = pair.deliver_to_server(&records[1]);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Reordered),
        CloseCode::REPLAY_DETECTED,
        &[],
    );
}

/// Clauses: REC-026, RPL-008 — by default a gap in the sequence closes with REPLAY_DETECTED (4004).
#[test]
fn a_dropped_record_closes_with_replay_detected_at_the_next_one() {
    let mut pair = Pair::established();
    pair.client_sends(request(1, b""));
    pair.client.send(pair.now, request(2, b"")).expect("sends");
    pair.client.send(pair.now, request(3, b"")).expect("sends");
    let records = pair.take_from_client();
    // Record 2 is dropped: under strict ordering the gap is an attack.
    let result = pair.deliver_to_server(&records[1]);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Reordered),
        CloseCode::REPLAY_DETECTED,
        &[request(1, b"")],
    );
}

/// Clauses: REC-025 — the client detects replays too.
#[test]
fn replays_from_server_to_client_close_with_replay_detected() {
    let mut pair = Pair::established();
    pair.server.send(pair.now, response(1, b"")).expect("sends");
    let record = pair.take_one_from_server();
    pair.deliver_to_client(&record).expect("accepted");
    let result = pair.deliver_to_client(&record);
    let error = Error::PeerMisbehaved(Misbehavior::Replayed);
    assert_error(result, &error, CloseCode::REPLAY_DETECTED);
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::REPLAY_DETECTED,
        Side::Local,
        Some(&error),
    );
    assert_eq!(pair.client_messages(), vec![response(1, b"")]);
    pair.flush_client_to_server().expect("CLOSE accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::REPLAY_DETECTED,
        Side::Remote,
        None,
    );
}

/// Clauses: REC-023 — a genuine record of an epoch the receiver left closes with PROTOCOL_VIOLATION
/// (4010).
#[test]
fn a_record_from_an_old_epoch_after_rekey_closes_with_protocol_violation() {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after_records = 2;
    let peers = Peers::with_limits(&limits);
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();

    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let old = pair.take_one_from_client();
    assert_eq!(epoch_of(&old), 0);
    pair.deliver_to_server(&old).expect("accepted");
    // Two more sends: the second rekeys (KEY_UPDATE in epoch 0, then epoch 1).
    pair.client_sends(request(2, b""));
    pair.client_sends(request(3, b""));
    assert_eq!(pair.client.transport().expect("open").send_epoch(), 1);
    assert_eq!(pair.server.transport().expect("open").receive_epoch(), 1);

    let result = pair.deliver_to_server(&old);
    let delivered: Vec<Message> = (1..4).map(|id| request(id, b"")).collect();
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::WrongEpoch),
        CloseCode::PROTOCOL_VIOLATION,
        &delivered,
    );
}

/// Clauses: REC-023, REC-033 — the epoch is checked before the sequence number.
#[test]
fn an_old_epoch_record_with_a_fresh_sequence_number_still_closes_with_protocol_violation() {
    // The epoch is checked before the sequence number: a stale-epoch header with a
    // plausible next seq is refused as a wrong epoch, not decrypted.
    let mut limits = ConnectionLimits::default();
    limits.rekey_after_records = 1;
    let mut pair = Pair::established_with(&Peers::with_limits(&limits));
    pair.clear_events();
    pair.client_sends(request(1, b""));
    pair.client.send(pair.now, request(2, b"")).expect("sends");
    let records = pair.take_from_client();
    assert_eq!(records.len(), 2, "KEY_UPDATE then the request");
    let key_update = records[0].clone();
    let next = records[1].clone();
    assert_eq!(epoch_of(&key_update), 0);
    assert_eq!(epoch_of(&next), 1);
    pair.deliver_to_server(&key_update).expect("accepted");
    let mut stale = next.clone();
    stale[4..8].copy_from_slice(&0u32.to_le_bytes());
    let result = pair.deliver_to_server(&stale);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::WrongEpoch),
        CloseCode::PROTOCOL_VIOLATION,
        &[request(1, b"")],
    );
}

/// Clauses: RPL-004 — without strict order, unseen values within the window are accepted in any
/// order.
#[test]
fn without_strict_order_reordering_within_the_window_is_accepted() {
    let mut pair = Pair::established_with(&relaxed_peers());
    pair.clear_events();
    for id in 0..5 {
        pair.client.send(pair.now, request(id, b"")).expect("sends");
    }
    let records = pair.take_from_client();
    for index in [2usize, 0, 4, 1, 3] {
        pair.deliver_to_server(&records[index])
            .expect("accepted out of order");
    }
    let delivered: Vec<Message> = [2, 0, 4, 1, 3]
        .into_iter()
        .map(|id| request(id, b""))
        .collect();
    assert_eq!(pair.server_messages(), delivered);
    assert!(!pair.server.is_closed());
}

/// Clauses: REC-025, RPL-003 — without strict order a duplicate still closes with REPLAY_DETECTED
/// (4004).
#[test]
fn without_strict_order_a_duplicate_still_closes_with_replay_detected() {
    let mut pair = Pair::established_with(&relaxed_peers());
    pair.clear_events();
    for id in 0..3 {
        pair.client.send(pair.now, request(id, b"")).expect("sends");
    }
    let records = pair.take_from_client();
    pair.deliver_to_server(&records[2]).expect("accepted");
    pair.deliver_to_server(&records[0]).expect("accepted");
    let result = pair.deliver_to_server(&records[0]);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Replayed),
        CloseCode::REPLAY_DETECTED,
        &[request(2, b""), request(0, b"")],
    );
}

/// Clauses: REC-025, RPL-002, RPL-006 — the record window is 1984 values: WINDOW − 1 behind is
/// accepted, WINDOW behind is too old.
#[test]
fn without_strict_order_a_record_older_than_the_window_closes_with_replay_detected() {
    let mut pair = Pair::established_with(&relaxed_peers());
    pair.clear_events();
    let window = RecordWindow::WINDOW;
    for id in 0..=window {
        pair.client.send(pair.now, request(id, b"")).expect("sends");
    }
    let records = pair.take_from_client();
    // Newest first: seq 0 is then exactly one past the window.
    pair.deliver_to_server(&records[records.len() - 1])
        .expect("accepted");
    // Within the window (the oldest it still remembers) is fine…
    pair.deliver_to_server(&records[1]).expect("accepted");
    // …one further back is refused as a replay, before decryption.
    let result = pair.deliver_to_server(&records[0]);
    assert_server_closed(
        &mut pair,
        result,
        &Error::PeerMisbehaved(Misbehavior::Replayed),
        CloseCode::REPLAY_DETECTED,
        &[request(window, b""), request(1, b"")],
    );
}

/// Clauses: REC-024, RPL-001 — 2^62 is refused as past the limit, with or without strict order.
#[test]
fn without_strict_order_a_sequence_number_past_the_limit_still_closes_with_sequence_exhausted() {
    let mut pair = Pair::established_with(&relaxed_peers());
    pair.clear_events();
    pair.client.send(pair.now, request(0, b"")).expect("sends");
    let record = pair.take_one_from_client();
    let result = pair.deliver_to_server(&with_seq(&record, 1 << 62));
    assert_server_closed(
        &mut pair,
        result,
        &Error::LimitExceeded(Limit::SequenceSpace),
        CloseCode::SEQUENCE_EXHAUSTED,
        &[],
    );
}

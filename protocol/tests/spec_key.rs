//! Spec section 8.1, "Rekey" (KEY): when a sender rekeys (and when it must not),
//! and what it does when the epoch space is used up.

mod common;

use common::*;
use std::time::Duration;
use toolwire_protocol::error::Limit;
use toolwire_protocol::testing::{clone_established_for_testing_only, set_epochs_for_testing_only};
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Side};

fn peers_rekeying(adjust: impl Fn(&mut ConnectionLimits)) -> Peers {
    let mut limits = ConnectionLimits::default();
    adjust(&mut limits);
    Peers::with_limits(&limits)
}

/// Clauses: KEY-001 — a sender that has sealed its epoch's quota of records rekeys
/// before the next message other than CLOSE: the next REQUEST goes out after a
/// KEY_UPDATE sealed in the old epoch, while a CLOSE at the same point is sealed in
/// the old epoch without any KEY_UPDATE.
#[test]
fn the_record_quota_triggers_a_rekey_before_any_message_but_close() {
    let mut pair = Pair::established_with(&peers_rekeying(|limits| limits.rekey_after_records = 3));
    pair.clear_events();
    for id in 0..3 {
        pair.client_sends(request(id, b""));
    }
    assert_eq!(pair.client.transport().expect("open").send_epoch(), 0);

    let mut sending = clone_established_for_testing_only(&pair.client).expect("open");
    sending.send(pair.now, request(3, b"")).expect("sends");
    let records: Vec<Vec<u8>> = std::iter::from_fn(|| sending.poll_transmit()).collect();
    assert_eq!(records.len(), 2, "KEY_UPDATE, then the REQUEST");
    assert_eq!((epoch_of(&records[0]), seq_of(&records[0])), (0, 3));
    assert_eq!((epoch_of(&records[1]), seq_of(&records[1])), (1, 4));

    pair.client.close(CloseCode::NORMAL, "");
    let close = pair.take_one_from_client();
    assert_eq!(
        (epoch_of(&close), seq_of(&close)),
        (0, 3),
        "no rekey for the CLOSE"
    );
    pair.deliver_to_server(&close).expect("accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::NORMAL,
        Side::Remote,
        None,
    );
}

const EXHAUSTED: Error = Error::LimitExceeded(Limit::SequenceSpace);

/// Clauses: KEY-006 — a sender in epoch 2^32 − 1 that is due to rekey (by time or
/// by record count) closes with SEQUENCE_EXHAUSTED (4005) instead, in an
/// authenticated CLOSE sealed in its last epoch, and sends no KEY_UPDATE.
#[test]
fn a_sender_in_the_last_epoch_closes_with_sequence_exhausted_instead_of_rekeying() {
    let period = Duration::from_secs(10);
    for by_time in [true, false] {
        let peers = peers_rekeying(|limits| {
            limits.rekey_after = period;
            limits.rekey_after_records = 2;
        });
        let mut pair = Pair::established_with(&peers);
        pair.clear_events();
        set_epochs_for_testing_only(&mut pair.client, u32::MAX, 0);
        set_epochs_for_testing_only(&mut pair.server, 0, u32::MAX);
        pair.client_sends(request(1, b""));
        let result = if by_time {
            pair.advance(period);
            pair.client_timeout()
        } else {
            pair.client_sends(request(2, b""));
            let result = pair.client.send(pair.now, request(3, b""));
            pair.collect();
            result
        };
        assert_error(result, &EXHAUSTED, CloseCode::SEQUENCE_EXHAUSTED);
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode::SEQUENCE_EXHAUSTED,
            Side::Local,
            Some(&EXHAUSTED),
        );
        let close = pair.take_one_from_client();
        assert_eq!(epoch_of(&close), u32::MAX, "sealed in the last epoch");
        pair.deliver_to_server(&close).expect("an authentic CLOSE");
        assert_closed(
            &pair.server,
            &pair.server_events,
            CloseCode::SEQUENCE_EXHAUSTED,
            Side::Remote,
            None,
        );
        let delivered = if by_time { 1 } else { 2 };
        assert_eq!(pair.server_messages().len(), delivered);
    }
}

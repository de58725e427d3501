//! Limits and deadlines of an established session: sequence exhaustion (4005),
//! session lifetime (4006), idle timeout (4009), keepalive, record size (1009) and
//! the local message-size error that leaves the connection open.

mod common;

use common::*;
use std::time::Duration;
use toolwire_protocol::error::{Limit, LocalError, TimeoutKind};
use toolwire_protocol::message::{Ping, Request};
use toolwire_protocol::noise::TAG_LEN;
use toolwire_protocol::record::{DEFAULT_MAX_BODY_LEN, HEADER_LEN, LAST_SEQUENCE};
use toolwire_protocol::testing::{seal_raw_for_testing_only, set_next_send_seq_for_testing_only};
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Message, Side};

/// Peers whose receivers accept a jump in sequence numbers (strict ordering off), so
/// a sender forced near the end of the sequence space is still heard.
fn relaxed_peers(adjust: impl Fn(&mut ConnectionLimits)) -> Peers {
    let mut limits = ConnectionLimits::default();
    limits.strict_order = false;
    adjust(&mut limits);
    Peers::with_limits(&limits)
}

const EXHAUSTED: Error = Error::LimitExceeded(Limit::SequenceSpace);

/// Clauses: REC-011, REC-012, REC-013 — the last data sequence number carries a message; the next
/// send closes with SEQUENCE_EXHAUSTED (4005) in a CLOSE at 2^62 − 1, and nothing follows.
#[test]
fn sequence_exhaustion_sends_the_last_record_then_closes_with_sequence_exhausted() {
    let mut pair = Pair::established_with(&relaxed_peers(|_| {}));
    pair.clear_events();
    set_next_send_seq_for_testing_only(&mut pair.client, LAST_SEQUENCE - 1);

    // The last data sequence number still carries a message.
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let last = pair.take_one_from_client();
    assert_eq!(seq_of(&last), LAST_SEQUENCE - 1);
    pair.deliver_to_server(&last).expect("accepted");
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);

    // The next send closes: LAST_SEQUENCE is reserved for the CLOSE.
    let result = pair.client.send(pair.now, request(2, b""));
    pair.collect();
    assert_error(result, &EXHAUSTED, CloseCode::SEQUENCE_EXHAUSTED);
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::SEQUENCE_EXHAUSTED,
        Side::Local,
        Some(&EXHAUSTED),
    );
    let close = pair.take_one_from_client();
    assert_eq!(seq_of(&close), LAST_SEQUENCE);
    pair.deliver_to_server(&close)
        .expect("the CLOSE is accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::SEQUENCE_EXHAUSTED,
        Side::Remote,
        None,
    );
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
    assert_eq!(
        pair.client.send(pair.now, request(3, b"")),
        Err(Error::Closed {
            code: CloseCode::SEQUENCE_EXHAUSTED,
            side: Side::Local
        })
    );
}

/// Clauses: REC-012, REC-013 — a count-based KEY_UPDATE never takes 2^62 − 1, which stays for the
/// CLOSE.
#[test]
fn a_rekey_never_uses_the_sequence_number_reserved_for_close() {
    // A count-based rekey due exactly when one data sequence number is left: the
    // KEY_UPDATE takes it, and the CLOSE must still get LAST_SEQUENCE.
    let mut pair = Pair::established_with(&relaxed_peers(|limits| {
        limits.rekey_after_records = 1;
    }));
    pair.clear_events();
    pair.client_sends(request(1, b""));
    set_next_send_seq_for_testing_only(&mut pair.client, LAST_SEQUENCE - 1);

    let result = pair.client.send(pair.now, request(2, b""));
    pair.collect();
    assert_error(result, &EXHAUSTED, CloseCode::SEQUENCE_EXHAUSTED);
    let records = pair.take_from_client();
    let seqs: Vec<u64> = records.iter().map(|record| seq_of(record)).collect();
    assert_eq!(
        seqs,
        [LAST_SEQUENCE - 1, LAST_SEQUENCE],
        "KEY_UPDATE, then CLOSE"
    );
    for record in &records {
        pair.deliver_to_server(record).expect("accepted");
    }
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::SEQUENCE_EXHAUSTED,
        Side::Remote,
        None,
    );
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

/// Clauses: REC-012, REC-013 — a time-based rekey with only 2^62 − 1 left closes with
/// SEQUENCE_EXHAUSTED instead.
#[test]
fn a_time_based_rekey_never_uses_the_sequence_number_reserved_for_close() {
    let period = Duration::from_secs(10);
    let mut pair = Pair::established_with(&relaxed_peers(|limits| limits.rekey_after = period));
    pair.clear_events();
    set_next_send_seq_for_testing_only(&mut pair.client, LAST_SEQUENCE);
    pair.advance(period);
    let result = pair.client_timeout();
    assert_error(result, &EXHAUSTED, CloseCode::SEQUENCE_EXHAUSTED);
    let close = pair.take_one_from_client();
    assert_eq!(seq_of(&close), LAST_SEQUENCE);
    pair.deliver_to_server(&close)
        .expect("the CLOSE is accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::SEQUENCE_EXHAUSTED,
        Side::Remote,
        None,
    );
}

/// Clauses: REC-024 — a received sequence number of 2^62 or more closes with SEQUENCE_EXHAUSTED
/// (4005).
#[test]
fn a_record_with_a_sequence_number_past_the_limit_closes_with_sequence_exhausted() {
    for seq in [1u64 << 62, (1 << 62) + 1, u64::MAX] {
        let mut pair = Pair::established();
        pair.client.send(pair.now, request(1, b"")).expect("sends");
        let record = pair.take_one_from_client();
        let result = pair.deliver_to_server(&with_seq(&record, seq));
        assert_error(result, &EXHAUSTED, CloseCode::SEQUENCE_EXHAUSTED);
        assert_closed(
            &pair.server,
            &pair.server_events,
            CloseCode::SEQUENCE_EXHAUSTED,
            Side::Local,
            Some(&EXHAUSTED),
        );
        assert!(pair.server_messages().is_empty());
        pair.flush_server_to_client().expect("CLOSE accepted");
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode::SEQUENCE_EXHAUSTED,
            Side::Remote,
            None,
        );
    }
}

/// Clauses: LIFE-001, LIM-009 — by default the server closes a kept-alive session with
/// SESSION_EXPIRED (4006) at 62 minutes, not before.
#[test]
fn session_expiry_closes_with_session_expired_and_the_client_hears_it() {
    let mut pair = Pair::established();
    let lifetime = Duration::from_secs(62 * 60);
    let expiry = pair.base + lifetime;
    // Keepalives and rekeys keep the session healthy up to its last moment.
    pair.run_until(expiry - Duration::from_millis(1))
        .expect("the session stays open");
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    assert_eq!(pair.server.poll_timeout(), Some(expiry));

    pair.advance_to(expiry);
    let result = pair.server_timeout();
    let error = Error::Timeout(TimeoutKind::SessionLifetime);
    assert_error(result, &error, CloseCode::SESSION_EXPIRED);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::SESSION_EXPIRED,
        Side::Local,
        Some(&error),
    );
    pair.flush_server_to_client()
        .expect("the client accepts the CLOSE");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::SESSION_EXPIRED,
        Side::Remote,
        None,
    );
    assert!(pair.client_messages().is_empty() && pair.server_messages().is_empty());
}

/// Clauses: LIFE-003, LIFE-002 — the client closes with SESSION_EXPIRED (4006) at the shorter
/// lifetime the server announced.
#[test]
fn the_client_honours_a_shorter_session_lifetime_announced_by_the_server() {
    let lifetime = Duration::from_secs(120);
    let mut server_limits = ConnectionLimits::default();
    server_limits.session_lifetime = lifetime;
    let peers = Peers::build(|server| server.with_limits(server_limits), |client| client);
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();
    pair.run_until(pair.base + lifetime - Duration::from_millis(1))
        .expect("open");
    pair.advance_to(pair.base + lifetime);
    // The client reaches the deadline first here and says so.
    let result = pair.client_timeout();
    let error = Error::Timeout(TimeoutKind::SessionLifetime);
    assert_error(result, &error, CloseCode::SESSION_EXPIRED);
    pair.flush_client_to_server().expect("CLOSE accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::SESSION_EXPIRED,
        Side::Remote,
        None,
    );
}

/// Clauses: LIFE-005, LIM-006 — by default 90 s without a received record close with TIMEOUT
/// (4009).
#[test]
fn idle_timeout_closes_with_timeout_and_the_peer_hears_it() {
    let mut pair = Pair::established();
    let idle = Duration::from_secs(90);
    assert_eq!(pair.server.poll_timeout(), Some(pair.base + idle));
    // The client's driver never runs its timers: no keepalive.
    pair.advance(idle - Duration::from_millis(1));
    assert_eq!(pair.server_timeout(), Ok(()));
    pair.advance(Duration::from_millis(1));
    let result = pair.server_timeout();
    let error = Error::Timeout(TimeoutKind::Idle);
    assert_error(result, &error, CloseCode::TIMEOUT);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::TIMEOUT,
        Side::Local,
        Some(&error),
    );
    pair.flush_server_to_client().expect("CLOSE accepted");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::TIMEOUT,
        Side::Remote,
        None,
    );
}

/// Clauses: LIFE-005 — the idle timeout counts from the last record received.
#[test]
fn a_received_record_restarts_the_idle_timer() {
    let mut pair = Pair::established();
    pair.advance(Duration::from_secs(60));
    pair.client_sends(request(1, b""));
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.now + Duration::from_secs(90))
    );
    pair.advance(Duration::from_secs(89));
    assert_eq!(pair.server_timeout(), Ok(()));
    assert!(!pair.server.is_closed());
}

/// Clauses: LIFE-005 — sending PINGs does not restart the idle timer: only received records do.
#[test]
fn a_client_whose_pings_go_unanswered_closes_with_timeout() {
    let mut pair = Pair::established();
    for _ in 0..2 {
        pair.advance(Duration::from_secs(30));
        assert_eq!(pair.client_timeout(), Ok(()));
        assert_eq!(pair.take_from_client().len(), 1, "a PING, lost");
    }
    pair.advance(Duration::from_secs(30));
    let result = pair.client_timeout();
    let error = Error::Timeout(TimeoutKind::Idle);
    assert_error(result, &error, CloseCode::TIMEOUT);
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::TIMEOUT,
        Side::Local,
        Some(&error),
    );
}

/// Clauses: LIFE-006, LIM-007 — by default the client sends a PING after 30 s without sending, and
/// the server answers it.
#[test]
fn client_keepalive_ping_is_answered_with_pong() {
    let mut pair = Pair::established();
    let keepalive = Duration::from_secs(30);
    assert_eq!(pair.client.poll_timeout(), Some(pair.base + keepalive));
    pair.advance(keepalive - Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert!(pair.take_from_client().is_empty(), "not silent long enough");

    pair.advance(Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    let ping = pair.take_one_from_client();
    pair.deliver_to_server(&ping).expect("PING accepted");
    let pong = pair.take_one_from_server();
    pair.deliver_to_client(&pong).expect("PONG accepted");
    // Keepalive is internal: no application event on either side.
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.now + keepalive),
        "the next PING is one interval after this one"
    );
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.now + Duration::from_secs(90)),
        "the PING restarted the server's idle timer"
    );
}

/// Clauses: LIFE-006 — keepalive PINGs and their PONGs keep both idle timers from firing.
#[test]
fn pings_keep_the_connection_open_past_the_idle_timeout() {
    let mut pair = Pair::established();
    pair.run_until(pair.base + Duration::from_secs(10 * 60))
        .expect("open");
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
    // One record every 30 s from the client: 18 PINGs, and at 5 and 10 minutes a
    // KEY_UPDATE (which counts as traffic, so no PING then).
    let client = pair.client.transport().expect("open");
    assert_eq!(client.next_send_seq(), 20);
    assert_eq!(client.send_epoch(), 2);
    pair.client_sends(request(1, b""));
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

#[test]
fn a_ping_from_the_server_is_answered_too() {
    let mut pair = Pair::established();
    let ping =
        seal_raw_for_testing_only(&mut pair.server, &Message::Ping(Ping { nonce: 9 }).encode())
            .expect("sealed");
    pair.deliver_to_client(&ping).expect("accepted");
    let pong = pair.take_one_from_client();
    pair.deliver_to_server(&pong).expect("PONG accepted");
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
}

/// A copy of a genuine sealed record whose body is padded to `body_len` bytes.
fn record_with_body_len(pair: &mut Pair, body_len: usize) -> Vec<u8> {
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let mut record = pair.take_one_from_client();
    record.resize(HEADER_LEN + body_len, 0);
    record
}

/// Clauses: REC-020, LIM-001 — by default a record body over 65536 bytes closes with
/// MESSAGE_TOO_BIG (1009).
#[test]
fn oversize_record_closes_with_message_too_big() {
    let mut pair = Pair::established();
    let record = record_with_body_len(&mut pair, DEFAULT_MAX_BODY_LEN + 1);
    let result = pair.deliver_to_server(&record);
    let error = Error::LimitExceeded(Limit::RecordSize);
    assert_error(result, &error, CloseCode::MESSAGE_TOO_BIG);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::MESSAGE_TOO_BIG,
        Side::Local,
        Some(&error),
    );
    assert!(pair.server_messages().is_empty());
    pair.flush_server_to_client().expect("CLOSE accepted");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::MESSAGE_TOO_BIG,
        Side::Remote,
        None,
    );
}

/// Clauses: REC-020, LIM-001 — a body of exactly 65536 bytes passes the size check.
#[test]
fn a_record_of_exactly_the_maximum_body_is_not_refused_for_its_size() {
    // Padded garbage at exactly the limit reaches the AEAD (and fails there).
    let mut pair = Pair::established();
    let record = record_with_body_len(&mut pair, DEFAULT_MAX_BODY_LEN);
    let result = pair.deliver_to_server(&record);
    assert_error(result, &Error::DecryptFailed, CloseCode::DECRYPT_FAILED);
}

/// Clauses: REC-016 — during the handshake too, a body over the record limit closes with
/// MESSAGE_TOO_BIG (1009).
#[test]
fn oversize_handshake_record_closes_with_message_too_big() {
    let mut pair = Pair::start(&Peers::default_configs());
    let mut record_1 = pair.take_one_from_client();
    record_1.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN + 1, 0);
    let result = pair.deliver_to_server(&record_1);
    let error = Error::LimitExceeded(Limit::RecordSize);
    assert_error(result, &error, CloseCode::MESSAGE_TOO_BIG);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::MESSAGE_TOO_BIG,
        Side::Local,
        Some(&error),
    );
    assert!(pair.take_from_server().is_empty());
}

/// A REQUEST whose encoding is exactly `len` bytes (256 ≤ arguments < 64 KiB, so
/// they always take a bin16 header).
fn request_of_encoded_len(len: usize) -> Message {
    let overhead = request(1, &[0; 300]).encode().len() - 300;
    let message = request(1, &vec![0xa5; len - overhead]);
    assert_eq!(message.encode().len(), len);
    message
}

/// Clauses: REC-014 — a message longer than the record body minus 16 bytes is never sealed; exactly
/// that length is.
#[test]
fn sending_a_too_large_message_is_a_local_error_and_the_connection_stays_open() {
    let mut pair = Pair::established();
    let limit = pair.client.transport().expect("open").max_message_len();
    assert_eq!(limit, DEFAULT_MAX_BODY_LEN - TAG_LEN);

    let too_large = request_of_encoded_len(limit + 1);
    let result = pair.client.send(pair.now, too_large);
    assert_eq!(
        result,
        Err(Error::Local(LocalError::MessageTooLarge {
            size: limit + 1,
            limit
        }))
    );
    assert_eq!(result.expect_err("fails").close_code(), None);
    assert!(!pair.client.is_closed());
    assert!(
        pair.take_from_client().is_empty(),
        "nothing sealed, no sequence number used"
    );
    assert_eq!(pair.client.transport().expect("open").next_send_seq(), 0);

    // A message of exactly the limit fills a maximum record and is accepted.
    let largest = request_of_encoded_len(limit);
    pair.client.send(pair.now, largest.clone()).expect("fits");
    let record = pair.take_one_from_client();
    assert_eq!(record.len(), HEADER_LEN + DEFAULT_MAX_BODY_LEN);
    assert_eq!(seq_of(&record), 0);
    pair.deliver_to_server(&record).expect("accepted");
    assert_eq!(pair.server_messages(), vec![largest]);
    let Message::Request(Request { args, .. }) = &pair.server_messages()[0] else {
        panic!("a request");
    };
    assert!(args.len() > 65_000);
}

//! Spec section 16, "Close codes" (CLS), in memory: what the CLOSE record of each
//! kind of close carries (read by a wiretap), that nothing follows a CLOSE in
//! either direction, unknown codes, the fallback code, and the failure → code table.

mod common;
mod spec_support;

use common::*;
use spec_support::{open_record, tap_configs, Tap};
use std::time::Duration;
use toolwire_protocol::error::{
    AuthFailure, Incompatibility, Limit, LocalError, Malformed, Misbehavior, TimeoutKind,
};
use toolwire_protocol::message::{Close, Ping};
use toolwire_protocol::record::{DEFAULT_MAX_BODY_LEN, HEADER_LEN};
use toolwire_protocol::testing::{
    clone_established_for_testing_only, fail_for_testing_only, seal_raw_for_testing_only,
};
use toolwire_protocol::{CloseCode, Connection, ConnectionLimits, Error, Event, Message, Side};

fn established_and_tapped(peers: &Peers) -> (Pair, Tap) {
    let mut pair = Pair::start(peers);
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1).expect("record 1");
    let record_2 = pair.take_one_from_server();
    pair.deliver_to_client(&record_2).expect("record 2");
    let record_3 = pair.take_one_from_client();
    pair.deliver_to_server(&record_3).expect("record 3");
    let tap = tap_configs(
        &peers.client_config,
        &peers.server_config,
        ENDPOINT,
        &[record_1, record_2, record_3],
    );
    pair.clear_events();
    (pair, tap)
}

/// The one record `connection` queued, opened with `key`: it must be its CLOSE.
fn close_record(connection: &mut Connection, key: &[u8; 32]) -> Close {
    let record = connection.poll_transmit().expect("a CLOSE record");
    assert!(
        connection.poll_transmit().is_none(),
        "nothing after the CLOSE"
    );
    match Message::decode(&open_record(key, &record).expect("authentic")).expect("a message") {
        Message::Close(close) => close,
        other => panic!("expected CLOSE, got {other:?}"),
    }
}

/// Clauses: CLS-001, CLS-002, CLS-003, CLS-011 — every failure after the handshake
/// queues one authenticated CLOSE record whose code is the connection's close code
/// (the code the driver puts in the WebSocket close frame) as the table assigns it,
/// and whose reason is empty; an application close carries the reason it gives.
#[test]
fn every_failure_close_is_an_authenticated_close_with_the_code_and_no_reason() {
    let mut limits = ConnectionLimits::default();
    limits.idle_timeout = Duration::from_secs(3 * 3600);
    let peers = Peers::with_limits(&limits);
    let (mut pair, tap) = established_and_tapped(&peers);
    let mut unexpected = clone_established_for_testing_only(&pair.client).expect("open");
    toolwire_protocol::testing::send_any_kind_for_testing_only(
        &mut unexpected,
        pair.now,
        response(0, b""),
    )
    .expect("sealed");
    let unexpected = unexpected.poll_transmit().expect("record");
    let mut garbage = clone_established_for_testing_only(&pair.client).expect("open");
    let garbage = seal_raw_for_testing_only(&mut garbage, b"\xc1").expect("sealed");
    pair.client
        .send(pair.now, request(0, &[0x90]))
        .expect("sends");
    let genuine = pair.take_one_from_client();

    let mut tampered = genuine.clone();
    *tampered.last_mut().expect("bytes") ^= 1;
    let mut wrong_epoch = genuine.clone();
    wrong_epoch[4] = 1;
    let mut exhausted = genuine.clone();
    exhausted[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let mut oversize = genuine.clone();
    oversize.resize(HEADER_LEN + DEFAULT_MAX_BODY_LEN + 1, 0);
    let mut ahead = genuine.clone();
    ahead[8] = 1;

    let records: Vec<(&str, Vec<u8>, CloseCode)> = vec![
        ("tampered tag", tampered, CloseCode::DECRYPT_FAILED),
        ("record ahead", ahead, CloseCode::REPLAY_DETECTED),
        ("wrong epoch", wrong_epoch, CloseCode::PROTOCOL_VIOLATION),
        ("seq 2^62", exhausted, CloseCode::SEQUENCE_EXHAUSTED),
        ("oversize", oversize, CloseCode::MESSAGE_TOO_BIG),
        (
            "kind of the other role",
            unexpected,
            CloseCode::PROTOCOL_VIOLATION,
        ),
        ("not a message", garbage, CloseCode::PROTOCOL_VIOLATION),
    ];
    for (name, record, code) in records {
        let mut victim = clone_established_for_testing_only(&pair.server).expect("open");
        assert!(victim.handle_record(pair.now, &record).is_err(), "{name}");
        assert_eq!(victim.close_code(), Some((code, Side::Local)), "{name}");
        let close = close_record(&mut victim, &tap.server_to_client);
        assert_eq!((close.code, close.reason.as_str()), (code.0, ""), "{name}");
    }
    // Deadlines.
    for (name, after, code) in [
        (
            "session lifetime",
            Duration::from_secs(62 * 60),
            CloseCode::SESSION_EXPIRED,
        ),
        (
            "idle timeout",
            Duration::from_secs(3 * 3600),
            CloseCode::TIMEOUT,
        ),
    ] {
        let mut victim = clone_established_for_testing_only(&pair.server).expect("open");
        let result = victim.handle_timeout(pair.now + after);
        assert!(result.is_err(), "{name}");
        assert_eq!(victim.close_code(), Some((code, Side::Local)), "{name}");
        let close = close_record(&mut victim, &tap.server_to_client);
        assert_eq!((close.code, close.reason.as_str()), (code.0, ""), "{name}");
    }
    // An application's close is not a failure: its reason travels.
    let mut closing = clone_established_for_testing_only(&pair.server).expect("open");
    closing.close(CloseCode::GOING_AWAY, "maintenance");
    let close = close_record(&mut closing, &tap.server_to_client);
    assert_eq!((close.code, close.reason.as_str()), (1001, "maintenance"));
}

/// Clauses: CLS-004, CLS-005 — after its own CLOSE, and after receiving the peer's
/// CLOSE, an endpoint sends nothing more (no answer to a PING, no keepalive, no
/// rekey, no second CLOSE) and processes no record (a REQUEST after it is not
/// delivered).
#[test]
fn nothing_is_sent_or_processed_after_a_close() {
    let mut limits = ConnectionLimits::default();
    limits.rekey_after = Duration::from_secs(10);
    let peers = Peers::with_limits(&limits);
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();
    let ping =
        seal_raw_for_testing_only(&mut pair.server, &Message::Ping(Ping { nonce: 1 }).encode())
            .expect("sealed");
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let in_flight = pair.take_one_from_client();

    pair.client.close(CloseCode::NORMAL, "");
    let close = pair.take_one_from_client();
    // The client after its own CLOSE.
    let closed = Error::Closed {
        code: CloseCode::NORMAL,
        side: Side::Local,
    };
    assert_eq!(pair.deliver_to_client(&ping), Err(closed.clone()));
    pair.advance(Duration::from_secs(3600));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert_eq!(pair.client.send(pair.now, request(2, b"")), Err(closed));
    pair.client.close(CloseCode::GOING_AWAY, "");
    assert!(
        pair.take_from_client().is_empty(),
        "nothing after the CLOSE"
    );

    // The server after the client's CLOSE.
    pair.deliver_to_server(&in_flight)
        .expect("accepted before the CLOSE");
    pair.deliver_to_server(&close).expect("the CLOSE");
    let closed = Error::Closed {
        code: CloseCode::NORMAL,
        side: Side::Remote,
    };
    assert!(clone_established_for_testing_only(&pair.client).is_none());
    assert_eq!(pair.deliver_to_server(&in_flight), Err(closed.clone()));
    assert_eq!(pair.server_timeout(), Ok(()));
    assert_eq!(pair.server.send(pair.now, response(1, b"")), Err(closed));
    assert!(
        pair.take_from_server().is_empty(),
        "no CLOSE in reply, nothing else"
    );
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

/// Clauses: CLS-007, CLS-006 — a CLOSE with a code nobody defined (or one that may
/// not even appear in a WebSocket close frame) is accepted: the receiver reports the
/// numeric code as the peer's, and does not answer with a CLOSE.
#[test]
fn unknown_close_codes_are_accepted_and_reported_by_number() {
    for code in [0u16, 1, 999, 1004, 2999, 3000, 4011, 4999, 5000, u16::MAX] {
        let mut pair = Pair::established();
        let close = Message::Close(Close {
            code,
            reason: String::new(),
        });
        let record = seal_raw_for_testing_only(&mut pair.server, &close.encode()).expect("sealed");
        pair.deliver_to_client(&record).expect("accepted");
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode(code),
            Side::Remote,
            None,
        );
        assert_eq!(pair.client.close_code().map(|(code, _)| code.0), Some(code));
        assert!(pair.take_from_client().is_empty(), "code {code}");
    }
}

/// Clauses: CLS-009 — a failure that maps to no close code of its own closes the
/// connection with INTERNAL_ERROR (1011), announced in an authenticated CLOSE.
#[test]
fn a_failure_without_a_code_of_its_own_closes_with_internal_error() {
    let peers = Peers::default_configs();
    let (mut pair, tap) = established_and_tapped(&peers);
    let error = Error::Local(LocalError::Config("inconsistent state".into()));
    assert_eq!(error.close_code(), None);
    fail_for_testing_only(&mut pair.server, error.clone());
    pair.collect();
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::INTERNAL_ERROR,
        Side::Local,
        Some(&error),
    );
    let close = close_record(&mut pair.server, &tap.server_to_client);
    assert_eq!((close.code, close.reason.as_str()), (1011, ""));
}

/// Clauses: CLS-011 — the failures of the table of section 16.2, as the reference
/// reports them, and the one close code each maps to.
#[test]
fn each_failure_of_the_table_maps_to_its_close_code() {
    use CloseCode as C;
    let table: Vec<(&str, Error, CloseCode)> = vec![
        (
            "record shorter than 16 bytes",
            Error::Malformed(Malformed::Record),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "version byte not 1",
            Error::Incompatible(Incompatibility::Version(2)),
            C::VERSION_UNSUPPORTED,
        ),
        (
            "record body too large",
            Error::LimitExceeded(Limit::RecordSize),
            C::MESSAGE_TOO_BIG,
        ),
        (
            "handshake record of the wrong type",
            Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "non-zero handshake header fields",
            Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "handshake message of a bad length",
            Error::Malformed(Malformed::HandshakeMessage),
            C::HANDSHAKE_FAILED,
        ),
        (
            "handshake decryption failure, non-contributory DH",
            Error::HandshakeFailed,
            C::HANDSHAKE_FAILED,
        ),
        (
            "malformed hello, too many grants, bad lineage",
            Error::Malformed(Malformed::HandshakePayload),
            C::HANDSHAKE_FAILED,
        ),
        (
            "invalid identity key",
            Error::AuthFailed(AuthFailure::InvalidIdentityKey),
            C::AUTH_FAILED,
        ),
        (
            "bad identity signature",
            Error::AuthFailed(AuthFailure::BadIdentitySignature),
            C::AUTH_FAILED,
        ),
        (
            "server not pinned",
            Error::AuthFailed(AuthFailure::UntrustedServer),
            C::AUTH_FAILED,
        ),
        (
            "client not admitted",
            Error::AuthFailed(AuthFailure::UnknownClient),
            C::AUTH_FAILED,
        ),
        (
            "handshake deadline",
            Error::Timeout(TimeoutKind::Handshake),
            C::TIMEOUT,
        ),
        (
            "sealed record of another type",
            Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "reserved field not zero",
            Error::PeerMisbehaved(Misbehavior::ReservedBitsSet),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "wrong epoch",
            Error::PeerMisbehaved(Misbehavior::WrongEpoch),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "sequence number ≥ 2^62 received",
            Error::LimitExceeded(Limit::SequenceSpace),
            C::SEQUENCE_EXHAUSTED,
        ),
        (
            "duplicate or too old",
            Error::PeerMisbehaved(Misbehavior::Replayed),
            C::REPLAY_DETECTED,
        ),
        (
            "out of order",
            Error::PeerMisbehaved(Misbehavior::Reordered),
            C::REPLAY_DETECTED,
        ),
        (
            "sealed body shorter than 16 bytes",
            Error::Malformed(Malformed::Record),
            C::PROTOCOL_VIOLATION,
        ),
        ("AEAD failure", Error::DecryptFailed, C::DECRYPT_FAILED),
        (
            "not one well-formed message",
            Error::Malformed(Malformed::Message),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "kind the peer's role may not send",
            Error::PeerMisbehaved(Misbehavior::UnexpectedMessage),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "bad KEY_UPDATE",
            Error::PeerMisbehaved(Misbehavior::BadKeyUpdate),
            C::PROTOCOL_VIOLATION,
        ),
        (
            "own sequence numbers or epochs used up",
            Error::LimitExceeded(Limit::SequenceSpace),
            C::SEQUENCE_EXHAUSTED,
        ),
        (
            "idle timeout",
            Error::Timeout(TimeoutKind::Idle),
            C::TIMEOUT,
        ),
        (
            "session lifetime",
            Error::Timeout(TimeoutKind::SessionLifetime),
            C::SESSION_EXPIRED,
        ),
    ];
    for (row, error, code) in table {
        assert_eq!(error.close_code(), Some(code), "{row}");
    }
    // Text frames and oversize WebSocket messages are the driver's (upgrade.rs).
    use toolwire_protocol::upgrade::FrameViolation;
    assert_eq!(FrameViolation::TextFrame.close_code(), C::UNSUPPORTED_DATA);
    assert_eq!(FrameViolation::Oversize.close_code(), C::MESSAGE_TOO_BIG);
    // A connection closed by `close` reports exactly the code it was given.
    let mut pair = Pair::established();
    pair.server.close(C::RATE_LIMITED, "");
    pair.flush_server_to_client().expect("CLOSE accepted");
    assert!(matches!(
        pair.client_events.last(),
        Some(Event::Closed {
            code: C::RATE_LIMITED,
            side: Side::Remote,
            ..
        })
    ));
}

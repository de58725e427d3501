//! Spec section 8.2, "Lifetimes and keepalive" (LIFE): the client's own session
//! lifetime, when keepalive PINGs go out, and what PINGs and PONGs carry — read by a
//! wiretap that derives the transport keys from the handshake.

mod common;
mod spec_support;

use common::*;
use spec_support::{open_record, tap_configs, Tap};
use std::time::Duration;
use toolwire_protocol::error::TimeoutKind;
use toolwire_protocol::message::Ping;
use toolwire_protocol::testing::{clone_established_for_testing_only, seal_raw_for_testing_only};
use toolwire_protocol::{CloseCode, ConnectionLimits, Error, Message, Side};

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

fn read(key: &[u8; 32], record: &[u8]) -> Message {
    Message::decode(&open_record(key, record).expect("opens")).expect("a message")
}

/// Clauses: LIFE-003 — a client whose own session lifetime (here 60 s) is shorter
/// than the one the server announces (62 min) closes with SESSION_EXPIRED (4006)
/// at its own lifetime, and the server hears the authenticated CLOSE.
#[test]
fn the_client_closes_at_its_own_shorter_lifetime() {
    let lifetime = Duration::from_secs(60);
    let mut client_limits = ConnectionLimits::default();
    client_limits.session_lifetime = lifetime;
    let peers = Peers::build(|server| server, |client| client.with_limits(client_limits));
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();
    assert_eq!(
        pair.client
            .session()
            .expect("open")
            .params
            .session_lifetime_ms,
        62 * 60 * 1000,
        "the server announced its own, longer lifetime"
    );
    pair.run_until(pair.base + lifetime - Duration::from_millis(1))
        .expect("open");
    assert!(!pair.client.is_closed());
    pair.advance_to(pair.base + lifetime);
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

/// Clauses: LIFE-006 — the client sends a PING only after a full keepalive interval
/// in which it sent no record: traffic postpones it, and the PINGs of a quiet
/// connection carry nonces 0, 1, 2, … (LIFE-007).
#[test]
fn keepalive_pings_follow_the_last_record_sent() {
    let peers = Peers::default_configs();
    let (mut pair, tap) = established_and_tapped(&peers);
    let keepalive = Duration::from_secs(30);
    pair.advance(Duration::from_secs(20));
    pair.client_sends(request(1, b""));
    pair.advance(keepalive - Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert!(
        pair.take_from_client().is_empty(),
        "29.999 s after the REQUEST"
    );
    let mut nonces = Vec::new();
    for _ in 0..3 {
        pair.advance_to(pair.client.poll_timeout().expect("a deadline"));
        assert_eq!(pair.client_timeout(), Ok(()));
        let ping = pair.take_one_from_client();
        match read(&tap.client_to_server, &ping) {
            Message::Ping(Ping { nonce }) => nonces.push(nonce),
            other => panic!("expected a PING, got {other:?}"),
        }
        pair.deliver_to_server(&ping).expect("accepted");
        pair.flush_server_to_client().expect("PONG accepted");
    }
    assert_eq!(nonces, [0, 1, 2]);
    assert_eq!(
        pair.elapsed(),
        Duration::from_secs(20) + 3 * keepalive,
        "one PING per quiet interval, counted from the REQUEST"
    );
}

/// Clauses: LIFE-008 — every PING is answered with a PONG carrying its nonce, by
/// either side, whatever the nonce.
#[test]
fn every_ping_is_answered_with_a_pong_echoing_its_nonce() {
    let peers = Peers::default_configs();
    let (mut pair, tap) = established_and_tapped(&peers);
    for nonce in [0u64, 9, 1 << 40, u64::MAX] {
        let ping = Message::Ping(Ping { nonce }).encode();
        let to_client = seal_raw_for_testing_only(&mut pair.server, &ping).expect("sealed");
        pair.deliver_to_client(&to_client).expect("accepted");
        let pong = pair.take_one_from_client();
        assert_eq!(
            read(&tap.client_to_server, &pong),
            Message::Pong(Ping { nonce })
        );
        pair.deliver_to_server(&pong).expect("accepted");

        let to_server = seal_raw_for_testing_only(&mut pair.client, &ping).expect("sealed");
        pair.deliver_to_server(&to_server).expect("accepted");
        let pong = pair.take_one_from_server();
        assert_eq!(
            read(&tap.server_to_client, &pong),
            Message::Pong(Ping { nonce })
        );
        pair.deliver_to_client(&pong).expect("accepted");
    }
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
}

/// Clauses: LIFE-009 — a PONG that answers no PING, or carries a nonce no PING had,
/// is ignored by either side: no close, no event, no answer.
#[test]
fn unsolicited_and_unmatched_pongs_are_ignored() {
    let mut pair = Pair::established();
    for nonce in [0u64, 77, u64::MAX] {
        let pong = Message::Pong(Ping { nonce }).encode();
        let record = seal_raw_for_testing_only(&mut pair.server, &pong).expect("sealed");
        pair.deliver_to_client(&record).expect("ignored");
        let record = seal_raw_for_testing_only(&mut pair.client, &pong).expect("sealed");
        pair.deliver_to_server(&record).expect("ignored");
    }
    // A keepalive PING (nonce 0) answered with the wrong nonce.
    pair.advance(Duration::from_secs(30));
    assert_eq!(pair.client_timeout(), Ok(()));
    let ping = pair.take_one_from_client();
    // The server's answer is replaced by one with another nonce, at the same seq.
    let mut answering = clone_established_for_testing_only(&pair.server).expect("open");
    pair.deliver_to_server(&ping).expect("accepted");
    pair.take_one_from_server();
    let wrong = Message::Pong(Ping { nonce: 1234 }).encode();
    let record = seal_raw_for_testing_only(&mut answering, &wrong).expect("sealed");
    pair.deliver_to_client(&record).expect("ignored");
    assert!(pair.take_from_client().is_empty() && pair.take_from_server().is_empty());
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    pair.client_sends(request(1, b""));
    assert_eq!(pair.server_messages(), vec![request(1, b"")]);
}

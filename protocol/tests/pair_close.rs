//! Closing: a local `close` sends an authenticated CLOSE that the peer reports as a
//! remote close with the same code; a CLOSE is the last record either side accepts;
//! a message kind the sender's role may not send closes with PROTOCOL_VIOLATION
//! (4010) without being delivered.

mod common;

use common::*;
use toolwire_protocol::error::Misbehavior;
use toolwire_protocol::message::{
    CallLimits, Cancel, CapGrant, CapRequest, CapUpdate, Close, ErrorMessage, SignedManifest,
    StreamItem,
};
use toolwire_protocol::testing::seal_raw_for_testing_only;
use toolwire_protocol::{CloseCode, Error, ErrorCode, Event, Message, Side};

/// Clauses: CLS-001, CLS-006 — a close with keys sends one sealed CLOSE; the peer reports a remote
/// close with its code and does not answer with a CLOSE.
#[test]
fn local_close_sends_an_authenticated_close_and_the_peer_sees_a_remote_close() {
    let mut pair = Pair::established();
    pair.client.close(CloseCode::NORMAL, "done");
    pair.collect();
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::NORMAL,
        Side::Local,
        None,
    );
    let close = pair.take_one_from_client();
    assert_eq!(header(&close).record_type.0, 0x10, "a sealed record");
    assert_eq!(seq_of(&close), 0);

    pair.deliver_to_server(&close).expect("accepted");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::NORMAL,
        Side::Remote,
        None,
    );
    assert!(pair.server_messages().is_empty());
    assert!(
        pair.take_from_server().is_empty(),
        "a CLOSE is not answered with a CLOSE"
    );
}

/// Clauses: CLS-006, CLS-007 — the client reports the server's code, including one it does not know
/// (4999), as a remote close.
#[test]
fn server_close_reaches_the_client_with_its_code() {
    for code in [
        CloseCode::GOING_AWAY,
        CloseCode::CAPABILITY_REVOKED,
        CloseCode::RATE_LIMITED,
        CloseCode::TRY_AGAIN_LATER,
        CloseCode(4999),
    ] {
        let mut pair = Pair::established();
        pair.server.close(code, "bye");
        pair.flush_server_to_client().expect("accepted");
        assert_closed(&pair.server, &pair.server_events, code, Side::Local, None);
        assert_closed(&pair.client, &pair.client_events, code, Side::Remote, None);
    }
}

/// Clauses: CLS-004, CLS-005 — after the peer's CLOSE nothing is processed and nothing is sent.
#[test]
fn a_close_is_the_last_record_accepted() {
    let mut pair = Pair::established();
    // A (hostile) client keeps sealing after its CLOSE.
    let close = seal_raw_for_testing_only(
        &mut pair.client,
        &Message::Close(Close {
            code: CloseCode::NORMAL.0,
            reason: String::new(),
        })
        .encode(),
    )
    .expect("sealed");
    pair.client.send(pair.now, request(1, b"")).expect("sends");
    let after = pair.take_one_from_client();

    pair.deliver_to_server(&close).expect("accepted");
    let closed = Error::Closed {
        code: CloseCode::NORMAL,
        side: Side::Remote,
    };
    assert_eq!(pair.deliver_to_server(&after), Err(closed.clone()));
    assert_eq!(pair.deliver_to_server(&close), Err(closed.clone()));
    assert!(pair.server_messages().is_empty(), "nothing after the CLOSE");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::NORMAL,
        Side::Remote,
        None,
    );
    // The closed side can neither send nor time out any more.
    assert_eq!(pair.server.send(pair.now, response(1, b"")), Err(closed));
    assert_eq!(pair.server_timeout(), Ok(()));
    assert!(pair.take_from_server().is_empty());
}

/// Clauses: CLS-005 — a record arriving after the local close is not processed.
#[test]
fn records_arriving_after_a_local_close_are_refused() {
    let mut pair = Pair::established();
    pair.server.send(pair.now, response(1, b"")).expect("sends");
    let in_flight = pair.take_one_from_server();
    pair.client.close(CloseCode::GOING_AWAY, "");
    let result = pair.deliver_to_client(&in_flight);
    assert_eq!(
        result,
        Err(Error::Closed {
            code: CloseCode::GOING_AWAY,
            side: Side::Local
        })
    );
    assert!(pair.client_messages().is_empty());
}

/// Clauses: CLS-004 — after its CLOSE an endpoint sends no second one.
#[test]
fn closing_twice_does_nothing() {
    let mut pair = Pair::established();
    pair.client.close(CloseCode::NORMAL, "");
    pair.client.close(CloseCode::INTERNAL_ERROR, "again");
    pair.collect();
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::NORMAL,
        Side::Local,
        None,
    );
    assert_eq!(pair.take_from_client().len(), 1, "one CLOSE record");
}

/// Clauses: CLS-001 — without transport keys there is no CLOSE record, only the code for the close
/// frame.
#[test]
fn closing_before_the_handshake_sends_no_close_record() {
    let mut pair = Pair::start(&Peers::default_configs());
    pair.server.close(CloseCode::TRY_AGAIN_LATER, "busy");
    pair.collect();
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::TRY_AGAIN_LATER,
        Side::Local,
        None,
    );
    assert!(pair.take_from_server().is_empty(), "no keys, no CLOSE");
    let record_1 = pair.take_one_from_client();
    assert_eq!(
        pair.deliver_to_server(&record_1),
        Err(Error::Closed {
            code: CloseCode::TRY_AGAIN_LATER,
            side: Side::Local
        })
    );
}

fn cap_grant() -> Message {
    Message::CapGrant(CapGrant {
        granted: Vec::new(),
        limits: CallLimits {
            rate_per_sec: 100,
            burst: 200,
            max_in_flight: 64,
        },
        expires_at_ms: None,
        policy_version: 1,
        manifest: SignedManifest {
            manifest: vec![0x90].into(),
            signature: vec![0; 64].into(),
        },
    })
}

/// Messages only a server may send.
fn server_only_messages() -> Vec<Message> {
    vec![
        cap_grant(),
        Message::CapUpdate(CapUpdate {
            granted: Vec::new(),
            revoked: vec!["search".into()],
            policy_version: 2,
            manifest: None,
        }),
        response(1, b""),
        Message::StreamItem(StreamItem {
            id: 1,
            index: 0,
            data: vec![0xc0].into(),
        }),
    ]
}

/// Messages only a client may send.
fn client_only_messages() -> Vec<Message> {
    vec![
        request(1, b""),
        Message::Cancel(Cancel { id: 1 }),
        Message::CapRequest(CapRequest::default()),
    ]
}

const VIOLATION: Error = Error::PeerMisbehaved(Misbehavior::UnexpectedMessage);

/// Clauses: MSG-004 — a kind only servers send, received by the server, closes with
/// PROTOCOL_VIOLATION (4010) undelivered.
#[test]
fn client_sending_a_server_message_closes_with_protocol_violation() {
    for message in server_only_messages() {
        let mut pair = Pair::established();
        toolwire_protocol::testing::send_any_kind_for_testing_only(
            &mut pair.client,
            pair.now,
            message.clone(),
        )
        .expect("sealed");
        let result = pair.flush_client_to_server().map(drop);
        assert_error(result, &VIOLATION, CloseCode::PROTOCOL_VIOLATION);
        assert_closed(
            &pair.server,
            &pair.server_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Local,
            Some(&VIOLATION),
        );
        assert!(
            pair.server_messages().is_empty(),
            "{} not delivered",
            message.kind()
        );
        pair.flush_server_to_client().expect("CLOSE accepted");
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Remote,
            None,
        );
    }
}

/// Clauses: MSG-004 — a kind only clients send, received by the client, closes with
/// PROTOCOL_VIOLATION (4010) undelivered.
#[test]
fn server_sending_a_client_message_closes_with_protocol_violation() {
    for message in client_only_messages() {
        let mut pair = Pair::established();
        toolwire_protocol::testing::send_any_kind_for_testing_only(
            &mut pair.server,
            pair.now,
            message.clone(),
        )
        .expect("sealed");
        let result = pair.flush_server_to_client().map(drop);
        assert_error(result, &VIOLATION, CloseCode::PROTOCOL_VIOLATION);
        assert_closed(
            &pair.client,
            &pair.client_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Local,
            Some(&VIOLATION),
        );
        assert!(
            pair.client_messages().is_empty(),
            "{} not delivered",
            message.kind()
        );
        pair.flush_client_to_server().expect("CLOSE accepted");
        assert_closed(
            &pair.server,
            &pair.server_events,
            CloseCode::PROTOCOL_VIOLATION,
            Side::Remote,
            None,
        );
    }
}

/// Clauses: MSG-010 — an ERROR is delivered in either direction and closes nothing.
#[test]
fn error_messages_are_allowed_in_both_directions() {
    let mut pair = Pair::established();
    let error = Message::Error(ErrorMessage {
        id: Some(1),
        code: ErrorCode::CANCELLED.0,
        message: String::new(),
        retry_after_ms: None,
    });
    pair.client_sends(error.clone());
    pair.server_sends(error.clone());
    assert_eq!(pair.server_messages(), vec![error.clone()]);
    assert_eq!(pair.client_messages(), vec![error]);
}

/// Clauses: REC-032 — an authentic record whose plaintext is not a message closes with
/// PROTOCOL_VIOLATION (4010).
#[test]
fn an_undecodable_sealed_message_closes_with_protocol_violation() {
    let mut pair = Pair::established();
    let record = seal_raw_for_testing_only(&mut pair.client, b"\xc1").expect("sealed");
    let result = pair.deliver_to_server(&record);
    let error = Error::Malformed(toolwire_protocol::error::Malformed::Message);
    assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
    assert!(pair.server_messages().is_empty());
    assert!(matches!(
        pair.server_events.last(),
        Some(Event::Closed {
            code: CloseCode::PROTOCOL_VIOLATION,
            side: Side::Local,
            ..
        })
    ));
}

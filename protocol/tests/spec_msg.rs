//! Spec section 9, "Inner messages" (MSG), on an established in-memory pair: what a
//! receiver closes on (unknown kind, malformed message), what it must not close on
//! (ERROR of any code), and that argument, result and item bytes travel untouched.

mod common;
mod spec_support;

use common::*;
use spec_support::mp;
use toolwire_protocol::envelope::RequestFields;
use toolwire_protocol::error::Malformed;
use toolwire_protocol::message::{ErrorMessage, Request, Response, StreamItem};
use toolwire_protocol::testing::seal_raw_for_testing_only;
use toolwire_protocol::{CloseCode, Error, ErrorCode, Message, Side};

const MALFORMED: Error = Error::Malformed(Malformed::Message);

/// Seals `plaintext` at the client, delivers it, and checks that the server closed
/// with PROTOCOL_VIOLATION (4010) without delivering anything, and that the client
/// hears the authenticated CLOSE.
#[track_caller]
fn assert_client_plaintext_closes_the_server(plaintext: &[u8], what: &str) {
    let mut pair = Pair::established();
    let record = seal_raw_for_testing_only(&mut pair.client, plaintext).expect("sealed");
    let result = pair.deliver_to_server(&record);
    assert_eq!(result, Err(MALFORMED), "{what}");
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::PROTOCOL_VIOLATION,
        Side::Local,
        Some(&MALFORMED),
    );
    assert!(
        pair.server_messages().is_empty(),
        "{what}: nothing delivered"
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

const KINDS: [&str; 12] = [
    "CAP_GRANT",
    "CAP_UPDATE",
    "CAP_REQUEST",
    "REQUEST",
    "RESPONSE",
    "STREAM_ITEM",
    "ERROR",
    "CANCEL",
    "KEY_UPDATE",
    "PING",
    "PONG",
    "CLOSE",
];

/// Clauses: MSG-002 — a `type` that is not exactly one of the twelve kind names
/// (case, spacing and spelling compared exactly) closes with PROTOCOL_VIOLATION
/// (4010) and delivers nothing.
#[test]
fn an_unknown_message_type_closes_with_protocol_violation() {
    let body = mp::map(&[("nonce", mp::uint(1))]);
    for name in [
        "TELEPORT",
        "ping",
        "Ping",
        "PING ",
        " PING",
        "PINGS",
        "KEYUPDATE",
        "",
        "PING\0",
    ] {
        assert_client_plaintext_closes_the_server(
            &mp::message(name, body.clone()),
            &format!("type {name:?}"),
        );
    }
    // Each genuine name with the same body shape is accepted as far as its type goes:
    // the twelve names are exactly the known kinds.
    for kind in KINDS {
        let valid = mp::message(kind, body.clone());
        let decoded = Message::decode(&valid);
        match kind {
            "PING" | "PONG" | "CAP_REQUEST" => assert!(decoded.is_ok(), "{kind}"),
            // Other kinds lack their required fields here, which is a different rule.
            _ => assert_eq!(decoded, Err(MALFORMED), "{kind}"),
        }
    }
}

/// Clauses: MSG-003 — a message without `body`, or whose `body` is nil, is
/// malformed for every kind and closes with PROTOCOL_VIOLATION (4010).
#[test]
fn a_missing_or_nil_body_closes_with_protocol_violation() {
    for kind in KINDS {
        let nil_body = mp::map(&[("type", mp::str(kind)), ("body", mp::nil())]);
        assert_eq!(
            Message::decode(&nil_body),
            Err(MALFORMED),
            "{kind} with nil body"
        );
        let no_body = mp::map(&[("type", mp::str(kind))]);
        assert_eq!(
            Message::decode(&no_body),
            Err(MALFORMED),
            "{kind} without body"
        );
    }
    assert_client_plaintext_closes_the_server(
        &mp::map(&[("type", mp::str("CANCEL")), ("body", mp::nil())]),
        "CANCEL with nil body",
    );
    assert_client_plaintext_closes_the_server(
        &mp::map(&[("type", mp::str("REQUEST"))]),
        "REQUEST without body",
    );
}

/// msgpack encodings of one value that are not the canonical (shortest, ordered)
/// ones a re-encoder would produce.
fn non_canonical_values() -> Vec<Vec<u8>> {
    vec![
        // 5 as uint 64.
        mp::u64_form(5),
        // {"b": 1, "a": 2}: keys out of order, 1 as int 32.
        mp::map(&[("b", mp::i32_form(1)), ("a", mp::uint(2))]),
        // "x" in a str 8 header.
        vec![0xd9, 0x01, b'x'],
        // [1.5] as float 64, then a bin 32 of two bytes.
        mp::array(&[mp::f64_form(1.5), mp::bin32(&[1, 2])]),
        // An empty map in a map 16 header.
        vec![0xde, 0x00, 0x00],
    ]
}

/// Clauses: MSG-006 — the bytes of `args`, `result` and `data` reach the
/// application exactly as they were sent, non-canonical msgpack included, and the
/// envelope signature computed over the sent argument bytes verifies over the
/// received ones.
#[test]
fn argument_result_and_item_bytes_arrive_exactly_as_sent() {
    let peers = Peers::default_configs();
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();
    let session_id = pair.session_id();
    for (index, bytes) in non_canonical_values().into_iter().enumerate() {
        let id = index as u64;
        let fields = RequestFields {
            session_id: &session_id,
            request_id: id,
            tool: "echo",
            args: &bytes,
            grant_id: "",
        };
        let signature = fields.sign(&peers.client_identity);
        pair.client_sends(Message::Request(Request {
            id,
            tool: "echo".into(),
            args: bytes.clone().into(),
            grant_id: None,
            deadline_ms: None,
            signature: Some(signature.to_vec().into()),
            retry: false,
        }));
        pair.server_sends(Message::StreamItem(StreamItem {
            id,
            index: 0,
            data: bytes.clone().into(),
        }));
        pair.server_sends(Message::Response(Response {
            id,
            result: bytes.clone().into(),
            signature: None,
        }));
        let Some(Message::Request(received)) = pair.server_messages().pop() else {
            panic!("a REQUEST");
        };
        assert_eq!(received.args.as_ref(), bytes.as_slice(), "args {index}");
        RequestFields {
            args: &received.args,
            ..fields
        }
        .verify(
            &peers.client_identity.public_key(),
            received.signature.as_deref().expect("signed"),
        )
        .expect("the signature verifies over the received bytes");
        let messages = pair.client_messages();
        let [.., Message::StreamItem(item), Message::Response(response)] = messages.as_slice()
        else {
            panic!("a STREAM_ITEM then a RESPONSE: {messages:?}");
        };
        assert_eq!(item.data.as_ref(), bytes.as_slice(), "data {index}");
        assert_eq!(response.result.as_ref(), bytes.as_slice(), "result {index}");
    }
}

fn error(id: Option<u64>, code: u32) -> Message {
    Message::Error(ErrorMessage {
        id,
        code,
        message: String::new(),
        retry_after_ms: None,
    })
}

/// Clauses: MSG-010 — an ERROR, with or without `id`, of every known code and of
/// codes nobody defined, is delivered to the application in both directions and
/// never closes the connection.
#[test]
fn no_error_closes_the_connection() {
    let mut pair = Pair::established();
    pair.clear_events();
    let mut codes: Vec<u32> = ErrorCode::ALL.iter().map(|code| code.0).collect();
    codes.extend([0, 6, 99, 4242, u32::MAX]);
    let mut sent = Vec::new();
    for code in codes {
        for id in [None, Some(u64::from(code))] {
            let message = error(id, code);
            pair.client_sends(message.clone());
            pair.server_sends(message.clone());
            sent.push(message);
        }
    }
    assert_eq!(pair.server_messages(), sent);
    assert_eq!(pair.client_messages(), sent);
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    // And the session still carries calls.
    pair.client_sends(request(1, &[0x90]));
    pair.server_sends(response(1, &[0xc0]));
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
}

/// Clauses: MSG-005 — `Connection::send` refuses every kind the sender's role may not
/// send, with a local error that sends nothing and leaves the connection open; the
/// kinds the role may send still go out.
#[test]
fn send_refuses_kinds_the_role_may_not_send() {
    use toolwire_protocol::error::LocalError;
    use toolwire_protocol::message::{Cancel, CapRequest, Close, KeyUpdate, Ping};
    let mut pair = Pair::established();
    let client_forbidden = [
        Message::Response(Response {
            id: 1,
            result: vec![0x90].into(),
            signature: None,
        }),
        Message::StreamItem(StreamItem {
            id: 1,
            index: 0,
            data: vec![0x90].into(),
        }),
        Message::KeyUpdate(KeyUpdate { epoch: 1 }),
        Message::Pong(Ping { nonce: 1 }),
        Message::Close(Close {
            code: 1000,
            reason: String::new(),
        }),
    ];
    for message in client_forbidden {
        let kind = message.kind();
        assert_eq!(
            pair.client.send(pair.now, message),
            Err(Error::Local(LocalError::NotAllowedForRole { kind })),
            "client sending {kind}"
        );
    }
    let server_forbidden = [
        Message::Request(Request {
            id: 1,
            tool: "echo".into(),
            args: vec![0x90].into(),
            grant_id: None,
            deadline_ms: None,
            signature: None,
            retry: false,
        }),
        Message::Cancel(Cancel { id: 1 }),
        Message::CapRequest(CapRequest::default()),
        Message::KeyUpdate(KeyUpdate { epoch: 1 }),
    ];
    for message in server_forbidden {
        let kind = message.kind();
        assert_eq!(
            pair.server.send(pair.now, message),
            Err(Error::Local(LocalError::NotAllowedForRole { kind })),
            "server sending {kind}"
        );
    }
    assert!(
        pair.client.poll_transmit().is_none(),
        "nothing was sealed by the client"
    );
    assert!(
        pair.server.poll_transmit().is_none(),
        "nothing was sealed by the server"
    );
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    pair.client
        .send(pair.now, Message::Cancel(Cancel { id: 7 }))
        .expect("a client may send CANCEL");
    pair.server
        .send(pair.now, error(Some(7), ErrorCode::CANCELLED.0))
        .expect("a server may send ERROR");
    pair.client
        .send(pair.now, Message::CapRequest(CapRequest::default()))
        .expect("a client may send CAP_REQUEST");
}

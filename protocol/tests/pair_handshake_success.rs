//! A successful handshake: both sides established on one session, each
//! authenticated as the other's identity, the capability request delivered, and
//! signed REQUEST/RESPONSE envelopes that verify, with traffic both ways.

mod common;

use common::*;
use rand_core::SeedableRng as _;
use std::sync::Arc;
use std::time::Duration;
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::message::{Cancel, CapRequest, Request, Response, StreamItem};
use toolwire_protocol::testing::SeededRng;
use toolwire_protocol::{Connection, Event, Message};

fn cap_request() -> CapRequest {
    CapRequest {
        tools: vec!["echo".into(), "search".into()],
        grants: Vec::new(),
    }
}

fn peers_with_cap_request() -> Peers {
    Peers::build(
        |server| server,
        |client| client.with_cap_request(cap_request()),
    )
}

/// Clauses: HS-031 — both sides take the same (non-zero) handshake hash as session id.
#[test]
fn both_sides_are_established_on_the_same_session() {
    let peers = peers_with_cap_request();
    let mut pair = Pair::established_with(&peers);

    let client_session = pair.client.session().expect("client session").clone();
    let server_session = pair.server.session().expect("server session").clone();
    assert_eq!(client_session.session_id, server_session.session_id);
    assert_ne!(client_session.session_id, [0; 32]);
    assert_eq!(
        pair.client.transport().expect("open").session_id(),
        client_session.session_id
    );
    assert_eq!(
        pair.server.transport().expect("open").session_id(),
        server_session.session_id
    );

    // Each side's Established event is its session, emitted once, and nothing else.
    pair.collect();
    assert_eq!(pair.client_events, vec![Event::Established(client_session)]);
    assert_eq!(pair.server_events, vec![Event::Established(server_session)]);
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
    assert_eq!(pair.client.close_code(), None);
}

/// Clauses: HS-008, HS-018 — each side learns the identity key the other put in its hello.
#[test]
fn each_side_authenticates_the_other_identity() {
    let peers = peers_with_cap_request();
    let pair = Pair::established_with(&peers);
    assert_eq!(
        pair.client.session().expect("established").peer,
        peers.server_identity.public_key()
    );
    assert_eq!(
        pair.server.session().expect("established").peer,
        peers.client_identity.public_key()
    );
}

/// Clauses: HS-008, LIFE-002 — the client receives the server's own parameters (record limit,
/// lifetime, idle timeout).
#[test]
fn the_capability_request_arrives_at_the_server() {
    let peers = peers_with_cap_request();
    let pair = Pair::established_with(&peers);
    let server_session = pair.server.session().expect("established");
    assert_eq!(server_session.cap_request, cap_request());
    assert!(server_session.grants.is_empty());
    assert!(server_session.rejected_grants.is_empty());
    assert_eq!(server_session.lineage, None);
    // The client records what it asked for, and the parameters the server announced.
    let client_session = pair.client.session().expect("established");
    assert_eq!(client_session.cap_request, cap_request());
    assert_eq!(client_session.params, server_session.params);
    assert_eq!(client_session.params.max_record_body, 64 * 1024);
    assert_eq!(client_session.params.idle_timeout_ms, 90_000);
    assert_eq!(client_session.params.session_lifetime_ms, 62 * 60 * 1000);
}

#[test]
fn a_resumed_lineage_arrives_at_the_server() {
    let lineage = [0x1d; 16];
    let peers = Peers::build(|server| server, |client| client.with_lineage(lineage));
    let pair = Pair::established_with(&peers);
    assert_eq!(
        pair.server.session().expect("established").lineage,
        Some(lineage)
    );
}

/// Clauses: MSG-006 — the argument bytes arrive unchanged and the signature over the sent bytes
/// verifies over the received ones.
#[test]
fn a_signed_request_and_response_round_trip_and_verify() {
    let peers = peers_with_cap_request();
    let mut pair = Pair::established_with(&peers);
    pair.clear_events();
    let session_id = pair.session_id();

    // Client: sign and send a REQUEST.
    let args = rmp_serde::to_vec(&("hello", 42)).expect("encodes");
    let request_fields = RequestFields {
        session_id: &session_id,
        request_id: 7,
        tool: "echo",
        args: &args,
        grant_id: "",
    };
    let request_signature = request_fields.sign(&peers.client_identity);
    pair.client_sends(Message::Request(Request {
        id: 7,
        tool: "echo".into(),
        args: args.clone().into(),
        grant_id: None,
        deadline_ms: Some(1_000),
        signature: Some(request_signature.to_vec().into()),
        retry: false,
    }));

    // Server: the REQUEST arrives intact; its envelope verifies against the peer the
    // handshake authenticated, on the server's own view of the session.
    let received = match pair.server_messages().as_slice() {
        [Message::Request(request)] => request.clone(),
        other => panic!("expected one REQUEST, got {other:?}"),
    };
    assert_eq!(received.args.as_ref(), args.as_slice());
    let server_session = pair.server.session().expect("established").clone();
    let server_view = RequestFields {
        session_id: &server_session.session_id,
        request_id: received.id,
        tool: &received.tool,
        args: &received.args,
        grant_id: received.grant_id.as_deref().unwrap_or(""),
    };
    server_view
        .verify(
            &server_session.peer,
            received.signature.as_deref().expect("signed"),
        )
        .expect("request signature verifies");
    // A signature over other bytes does not.
    let tampered = RequestFields {
        tool: "rm",
        ..server_view
    };
    assert!(tampered
        .verify(&server_session.peer, &request_signature)
        .is_err());

    // Server: sign and send the RESPONSE, bound to the request's hash.
    let result = rmp_serde::to_vec(&("hello", 42)).expect("encodes");
    let request_hash = server_view.hash();
    let response_fields = ResponseFields {
        session_id: &server_session.session_id,
        request_id: received.id,
        request_hash: &request_hash,
        result: &result,
    };
    let response_signature = response_fields.sign(&peers.server_identity);
    pair.server_sends(Message::Response(Response {
        id: received.id,
        result: result.clone().into(),
        signature: Some(response_signature.to_vec().into()),
    }));

    // Client: the RESPONSE verifies against the pinned server and its own request.
    let response = match pair.client_messages().as_slice() {
        [Message::Response(response)] => response.clone(),
        other => panic!("expected one RESPONSE, got {other:?}"),
    };
    let client_session = pair.client.session().expect("established").clone();
    let client_hash = request_fields.hash();
    ResponseFields {
        session_id: &client_session.session_id,
        request_id: response.id,
        request_hash: &client_hash,
        result: &response.result,
    }
    .verify(
        &client_session.peer,
        response.signature.as_deref().expect("signed"),
    )
    .expect("response signature verifies");
    assert_eq!(client_session.peer, peers.server_identity.public_key());
}

/// Clauses: REC-010 — each direction numbers its records from 0 by one.
#[test]
fn messages_flow_in_both_directions_in_order() {
    let mut pair = Pair::established();
    let to_server = vec![
        request(1, &[0x90]),
        Message::CapRequest(cap_request()),
        request(2, &[0x91, 0x01]),
        Message::Cancel(Cancel { id: 1 }),
    ];
    let to_client = vec![
        Message::StreamItem(StreamItem {
            id: 2,
            index: 0,
            data: vec![0xa1, b'x'].into(),
        }),
        response(2, &[0xc3]),
        response(1, &[0xc2]),
    ];
    for message in &to_server {
        pair.client.send(pair.now, message.clone()).expect("sends");
    }
    for message in &to_client {
        pair.server.send(pair.now, message.clone()).expect("sends");
    }
    pair.flush().expect("both sides accept everything");
    assert_eq!(pair.server_messages(), to_server);
    assert_eq!(pair.client_messages(), to_client);

    let client_transport = pair.client.transport().expect("open");
    let server_transport = pair.server.transport().expect("open");
    assert_eq!(client_transport.next_send_seq(), to_server.len() as u64);
    assert_eq!(server_transport.next_send_seq(), to_client.len() as u64);
    assert_eq!(client_transport.send_epoch(), 0);
    assert_eq!(server_transport.receive_epoch(), 0);
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
}

/// Clauses: LIM-006, LIM-007 — by default the client's next deadline is its 30 s keepalive and the
/// server's its 90 s idle timeout.
#[test]
fn after_the_handshake_the_deadlines_are_keepalive_and_idle() {
    let pair = Pair::established();
    // Client: PING after 30 s of silence; server: idle close after 90 s.
    assert_eq!(
        pair.client.poll_timeout(),
        Some(pair.base + Duration::from_secs(30))
    );
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.base + Duration::from_secs(90))
    );
}

/// Clauses: HS-002, KS-005 — every connection of the same configurations gets a fresh ephemeral
/// key, hence its own session id and keys.
#[test]
fn fresh_ephemerals_give_every_connection_its_own_session() {
    let peers = Peers::default_configs();
    let mut rng = SeededRng::seed_from_u64(1);
    let now = base_instant();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let client = Connection::client(Arc::clone(&peers.client_config), now, &mut rng);
        let server = Connection::server(Arc::clone(&peers.server_config), now, UNIX_TIME, &mut rng);
        let mut pair = Pair::from_connections(client, server, now);
        pair.handshake().expect("handshake succeeds");
        assert_eq!(
            pair.client.session().map(|s| s.session_id),
            pair.server.session().map(|s| s.session_id)
        );
        ids.push(pair.session_id());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "session ids never repeat");
}

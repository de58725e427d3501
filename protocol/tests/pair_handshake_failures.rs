//! Every way a handshake can fail ends with its exact close code, on the side that
//! detects it, with no session, no application message and nothing on the wire
//! (no keys exist yet, so there is no authenticated CLOSE and no detail).
//!
//! Impostors are built by driving `noise::HandshakeState` by hand and encrypting a
//! crafted `ClientHello`/`ServerHello`; a control test shows that the same crafting
//! with honest values completes the handshake.

mod common;

use common::*;
use serde_bytes::ByteBuf;
use std::time::Duration;
use time::OffsetDateTime;
use toolwire_protocol::error::{AuthFailure, Incompatibility, Malformed, Misbehavior, TimeoutKind};
use toolwire_protocol::grant::{GrantBuilder, GrantError};
use toolwire_protocol::handshake::{
    prologue, static_binding_message, ClientHello, ServerHello, SessionParams,
    CLIENT_STATIC_DOMAIN, SERVER_STATIC_DOMAIN,
};
use toolwire_protocol::message::CapRequest;
use toolwire_protocol::noise::{self, HandshakeState, KeyPair};
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN};
use toolwire_protocol::{CloseCode, Error, Identity, IdentityKey, Side, SUBPROTOCOL};

const IMPOSTOR_STATIC: [u8; 32] = [0x77; 32];
const IMPOSTOR_EPHEMERAL: [u8; 32] = [0x78; 32];

fn handshake_record(record_type: RecordType, message: &[u8]) -> Vec<u8> {
    let mut record = RecordHeader::handshake(record_type).encode().to_vec();
    record.extend_from_slice(message);
    record
}

fn other_identity() -> Identity {
    Identity::from_seed(&[0x99; 32])
}

/// Asserts that the `role` side of `pair` failed with `error` (mapping to `code`),
/// closed locally, emitted only the `Closed` event and put nothing on the wire.
#[track_caller]
fn assert_failed_handshake(
    pair: &mut Pair,
    role: Role,
    result: Result<(), Error>,
    error: &Error,
    code: CloseCode,
) {
    assert_error(result, error, code);
    pair.collect();
    let (connection, events) = match role {
        Role::Client => (&mut pair.client, &pair.client_events),
        Role::Server => (&mut pair.server, &pair.server_events),
    };
    assert_closed(connection, events, code, Side::Local, Some(error));
    assert!(app_messages(events).is_empty(), "no message");
    assert!(connection.session().is_none(), "no session");
    assert!(!connection.is_established());
    assert!(
        connection.poll_transmit().is_none(),
        "no record after a failed handshake"
    );
}

/// A hand-driven client: sends record 1, reads record 2, then lets the test choose
/// the identity, signature and capability request of record 3.
struct ManualClient {
    noise: HandshakeState,
}

impl ManualClient {
    fn start(endpoint: &str) -> (Self, Vec<u8>) {
        let mut noise = HandshakeState::new(
            noise::Role::Initiator,
            &prologue(endpoint, SUBPROTOCOL),
            KeyPair::from_secret_bytes(IMPOSTOR_STATIC),
            KeyPair::from_secret_bytes(IMPOSTOR_EPHEMERAL),
        );
        let mut message = Vec::new();
        noise.write_message(&[], &mut message).expect("message 1");
        (
            Self { noise },
            handshake_record(RecordType::HANDSHAKE_1, &message),
        )
    }

    fn static_public(&self) -> [u8; 32] {
        self.noise.local_static_public()
    }

    fn read_record_2(&mut self, record: &[u8]) -> ServerHello {
        let mut payload = Vec::new();
        self.noise
            .read_message(&record[HEADER_LEN..], &mut payload)
            .expect("record 2 decrypts");
        rmp_serde::from_slice(&payload).expect("server hello")
    }

    fn record_3(mut self, hello: &ClientHello) -> Vec<u8> {
        let payload = rmp_serde::to_vec_named(hello).expect("encodes");
        let mut message = Vec::new();
        self.noise
            .write_message(&payload, &mut message)
            .expect("message 3");
        handshake_record(RecordType::HANDSHAKE_3, &message)
    }
}

/// Runs a hand-driven client against a real server up to record 3, built from
/// `identity`, `signature`; returns the pair (the server is in it) and record 3.
fn impostor_client(peers: &Peers, hello: impl FnOnce([u8; 32]) -> ClientHello) -> (Pair, Vec<u8>) {
    let mut pair = Pair::start(peers);
    pair.take_one_from_client(); // the real client is not used
    let (mut manual, record_1) = ManualClient::start(ENDPOINT);
    pair.deliver_to_server(&record_1)
        .expect("record 1 accepted");
    let record_2 = pair.take_one_from_server();
    manual.read_record_2(&record_2);
    let hello = hello(manual.static_public());
    (pair, manual.record_3(&hello))
}

fn client_hello(identity: IdentityKey, signature: [u8; 64]) -> ClientHello {
    ClientHello {
        identity: ByteBuf::from(identity.to_bytes().to_vec()),
        signature: ByteBuf::from(signature.to_vec()),
        cap_request: CapRequest::default(),
        resume: None,
    }
}

#[test]
fn a_hand_built_client_with_an_honest_binding_is_accepted() {
    let peers = Peers::default_configs();
    let (mut pair, record_3) = impostor_client(&peers, |static_public| {
        client_hello(
            peers.client_identity.public_key(),
            peers.client_identity.sign(&static_binding_message(
                CLIENT_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    pair.deliver_to_server(&record_3).expect("accepted");
    assert_eq!(
        pair.server.session().expect("established").peer,
        peers.client_identity.public_key()
    );
}

/// Clauses: HS-025, ID-004 — a ClientHello signature made by another key closes with AUTH_FAILED
/// (4001) and nothing on the wire (HS-034).
#[test]
fn client_claiming_an_allowed_identity_it_cannot_sign_for_fails_auth() {
    let peers = Peers::default_configs();
    // Signs its static key with its own identity but claims the allowlisted one.
    let (mut pair, record_3) = impostor_client(&peers, |static_public| {
        client_hello(
            peers.client_identity.public_key(),
            other_identity().sign(&static_binding_message(
                CLIENT_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    let result = pair.deliver_to_server(&record_3);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::AuthFailed(AuthFailure::BadIdentitySignature),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-025 — a genuine signature over another Noise static key closes with AUTH_FAILED
/// (4001).
#[test]
fn client_binding_signed_for_another_static_key_fails_auth() {
    let peers = Peers::default_configs();
    // A genuine signature of the allowed identity, but over someone else's static key
    // (a binding lifted from another session).
    let (mut pair, record_3) = impostor_client(&peers, |_| {
        client_hello(
            peers.client_identity.public_key(),
            peers
                .client_identity
                .sign(&static_binding_message(CLIENT_STATIC_DOMAIN, &[0x42; 32])),
        )
    });
    let result = pair.deliver_to_server(&record_3);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::AuthFailed(AuthFailure::BadIdentitySignature),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-025 — a signature under the server's domain string closes with AUTH_FAILED (4001).
#[test]
fn client_binding_signed_under_the_server_domain_fails_auth() {
    let peers = Peers::default_configs();
    let (mut pair, record_3) = impostor_client(&peers, |static_public| {
        client_hello(
            peers.client_identity.public_key(),
            peers.client_identity.sign(&static_binding_message(
                SERVER_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    let result = pair.deliver_to_server(&record_3);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::AuthFailed(AuthFailure::BadIdentitySignature),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-024, ID-002 — a small-order client identity key closes with AUTH_FAILED (4001).
#[test]
fn client_with_an_invalid_identity_key_fails_auth() {
    let peers = Peers::default_configs();
    let (mut pair, record_3) = impostor_client(&peers, |_| ClientHello {
        // The identity point of Ed25519: small order, refused as a weak key.
        identity: ByteBuf::from({
            let mut key = vec![0u8; 32];
            key[0] = 1;
            key
        }),
        signature: ByteBuf::from(vec![0u8; 64]),
        cap_request: CapRequest::default(),
        resume: None,
    });
    let result = pair.deliver_to_server(&record_3);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::AuthFailed(AuthFailure::InvalidIdentityKey),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-021 — a ClientHello that does not decode closes with HANDSHAKE_FAILED (4000).
#[test]
fn client_hello_that_is_not_msgpack_fails_the_handshake() {
    let peers = Peers::default_configs();
    let mut pair = Pair::start(&peers);
    pair.take_one_from_client();
    let (mut manual, record_1) = ManualClient::start(ENDPOINT);
    pair.deliver_to_server(&record_1)
        .expect("record 1 accepted");
    manual.read_record_2(&pair.take_one_from_server());
    let mut message = Vec::new();
    manual
        .noise
        .write_message(b"\xc1 not msgpack", &mut message)
        .expect("message 3");
    let result = pair.deliver_to_server(&handshake_record(RecordType::HANDSHAKE_3, &message));
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::Malformed(Malformed::HandshakePayload),
        CloseCode::HANDSHAKE_FAILED,
    );
}

/// A hand-driven server answering the real client's record 1 with `hello`.
fn impostor_server(peers: &Peers, hello: impl FnOnce([u8; 32]) -> ServerHello) -> (Pair, Vec<u8>) {
    let mut pair = Pair::start(peers);
    let record_1 = pair.take_one_from_client();
    let mut noise = HandshakeState::new(
        noise::Role::Responder,
        &prologue(ENDPOINT, SUBPROTOCOL),
        KeyPair::from_secret_bytes(IMPOSTOR_STATIC),
        KeyPair::from_secret_bytes(IMPOSTOR_EPHEMERAL),
    );
    noise
        .read_message(&record_1[HEADER_LEN..], &mut Vec::new())
        .expect("record 1");
    let hello = hello(noise.local_static_public());
    let mut message = Vec::new();
    noise
        .write_message(
            &rmp_serde::to_vec_named(&hello).expect("encodes"),
            &mut message,
        )
        .expect("message 2");
    (pair, handshake_record(RecordType::HANDSHAKE_2, &message))
}

fn server_hello(identity: IdentityKey, signature: [u8; 64]) -> ServerHello {
    ServerHello {
        identity: ByteBuf::from(identity.to_bytes().to_vec()),
        signature: ByteBuf::from(signature.to_vec()),
        params: SessionParams {
            max_record_body: 64 * 1024,
            session_lifetime_ms: 62 * 60 * 1000,
            idle_timeout_ms: 90_000,
        },
        certificate: None,
    }
}

#[test]
fn a_hand_built_server_with_an_honest_binding_is_accepted() {
    let peers = Peers::default_configs();
    let (mut pair, record_2) = impostor_server(&peers, |static_public| {
        server_hello(
            peers.server_identity.public_key(),
            peers.server_identity.sign(&static_binding_message(
                SERVER_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    pair.deliver_to_client(&record_2).expect("accepted");
    assert!(pair.client.is_established());
}

/// Clauses: HS-014, HS-017, HS-034 — a ServerHello signature by another key closes with AUTH_FAILED
/// (4001); no record 3, nothing on the wire.
#[test]
fn server_claiming_the_pinned_identity_it_cannot_sign_for_fails_auth() {
    let peers = Peers::default_configs();
    let (mut pair, record_2) = impostor_server(&peers, |static_public| {
        server_hello(
            peers.server_identity.public_key(),
            other_identity().sign(&static_binding_message(
                SERVER_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    let result = pair.deliver_to_client(&record_2);
    assert_failed_handshake(
        &mut pair,
        Role::Client,
        result,
        &Error::AuthFailed(AuthFailure::BadIdentitySignature),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-015, ID-003, HS-017 — a valid proof of an unpinned identity closes with AUTH_FAILED
/// (4001) before record 3.
#[test]
fn server_with_a_valid_binding_for_an_unpinned_identity_fails_auth() {
    let peers = Peers::default_configs();
    let (mut pair, record_2) = impostor_server(&peers, |static_public| {
        server_hello(
            other_identity().public_key(),
            other_identity().sign(&static_binding_message(
                SERVER_STATIC_DOMAIN,
                &static_public,
            )),
        )
    });
    let result = pair.deliver_to_client(&record_2);
    assert_failed_handshake(
        &mut pair,
        Role::Client,
        result,
        &Error::AuthFailed(AuthFailure::UntrustedServer),
        CloseCode::AUTH_FAILED,
    );
}

/// Clauses: HS-015, ID-003, HS-017 — the genuine server, not pinned, is refused with AUTH_FAILED
/// (4001) and never gets record 3.
#[test]
fn unpinned_server_key_fails_auth_at_the_client() {
    let options = PeerOptions {
        client_trusts: Some(vec![other_identity().public_key()]),
        ..PeerOptions::default()
    };
    let peers = Peers::custom(&options, |server| server, |client| client);
    let mut pair = Pair::start(&peers);
    pair.flush_client_to_server().expect("record 1 accepted");
    let record_2 = pair.take_one_from_server();
    let result = pair.deliver_to_client(&record_2);
    assert_failed_handshake(
        &mut pair,
        Role::Client,
        result,
        &Error::AuthFailed(AuthFailure::UntrustedServer),
        CloseCode::AUTH_FAILED,
    );
    // The server never gets record 3 and never establishes.
    assert!(!pair.server.is_established());
    assert!(pair.server_events.is_empty());
}

/// Clauses: HS-028, HS-034 — a client neither allowlisted nor holding a grant closes with
/// AUTH_FAILED (4001), with nothing sent.
#[test]
fn unknown_client_without_a_grant_fails_auth_at_the_server() {
    let options = PeerOptions {
        allowlist_client: false,
        ..PeerOptions::default()
    };
    let peers = Peers::custom(&options, |server| server, |client| client);
    let mut pair = Pair::start(&peers);
    let result = pair.handshake();
    let Err((Role::Server, error)) = result else {
        panic!("the server refuses record 3: {result:?}");
    };
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        Err(error),
        &Error::AuthFailed(AuthFailure::UnknownClient),
        CloseCode::AUTH_FAILED,
    );
    // The client believed the handshake done (XX ends with its message 3); its first
    // use will meet the closed socket. Nothing from the server reached it.
    assert!(pair.client.is_established());
    assert!(pair.take_from_server().is_empty());
}

fn grant_issuer() -> Identity {
    Identity::from_seed(&[0x1a; 32])
}

/// A grant for the fixed client on the fixed server, signed by `issuer`.
fn grant(issuer: &Identity, id: &str, holder: IdentityKey, expires_in_secs: i64) -> String {
    let server = Identity::from_seed(&[0x53; 32]).public_key();
    let expires =
        OffsetDateTime::from_unix_timestamp(UNIX_TIME + expires_in_secs).expect("valid time");
    GrantBuilder::new(holder.to_bytes(), server.to_bytes(), id, expires)
        .tools(["search"])
        .scope(["read"])
        .sign(issuer.signing_key())
        .expect("signs")
}

fn peers_presenting(grants: Vec<String>) -> Peers {
    let options = PeerOptions {
        allowlist_client: false,
        ..PeerOptions::default()
    };
    Peers::custom(
        &options,
        |server| server.trust_grant_issuers([grant_issuer().public_key()]),
        |client| {
            client.with_cap_request(CapRequest {
                tools: vec!["search".into()],
                grants,
            })
        },
    )
}

/// Clauses: HS-028, HS-026 — a grant from a trusted issuer, for this holder and audience, admits a
/// client that is not allowlisted.
#[test]
fn unlisted_client_with_a_valid_grant_from_a_trusted_issuer_is_admitted() {
    let client = Identity::from_seed(&[0x43; 32]).public_key();
    let token = grant(&grant_issuer(), "grant-1", client, 3600);
    let peers = peers_presenting(vec![token]);
    let pair = Pair::established_with(&peers);
    let session = pair.server.session().expect("established");
    assert_eq!(session.peer, client);
    assert_eq!(session.grants.len(), 1);
    let admitted = &session.grants[0];
    assert_eq!(admitted.id, "grant-1");
    assert_eq!(admitted.holder, client.to_bytes());
    assert_eq!(admitted.root_issuer, grant_issuer().public_key().to_bytes());
    assert!(admitted.allows_tool("search") && !admitted.allows_tool("delete"));
    assert!(session.rejected_grants.is_empty());
}

/// Clauses: HS-027, HS-026 — a grant that fails verification is disregarded (reported), not fatal;
/// the good one admits.
#[test]
fn a_bad_grant_next_to_a_good_one_is_reported_and_the_good_one_admits() {
    let client = Identity::from_seed(&[0x43; 32]).public_key();
    let untrusted = grant(&other_identity(), "forged", client, 3600);
    let good = grant(&grant_issuer(), "grant-1", client, 3600);
    let peers = peers_presenting(vec![untrusted, good]);
    let pair = Pair::established_with(&peers);
    let session = pair.server.session().expect("established");
    assert_eq!(session.grants.len(), 1);
    assert_eq!(session.grants[0].id, "grant-1");
    assert_eq!(
        session.rejected_grants,
        vec![(0, GrantError::UntrustedIssuer)]
    );
}

/// Clauses: HS-026, HS-028 — grants of an untrusted issuer, expired, or for another holder admit no
/// one: AUTH_FAILED (4001).
#[test]
fn unlisted_client_with_only_invalid_grants_fails_auth() {
    let client = Identity::from_seed(&[0x43; 32]).public_key();
    let cases = [
        (
            "untrusted issuer",
            grant(&other_identity(), "g", client, 3600),
        ),
        ("expired", grant(&grant_issuer(), "g", client, -3600)),
        (
            "another holder",
            grant(&grant_issuer(), "g", other_identity().public_key(), 3600),
        ),
    ];
    for (case, token) in cases {
        let peers = peers_presenting(vec![token]);
        let mut pair = Pair::start(&peers);
        let result = pair.handshake();
        let Err((Role::Server, error)) = result else {
            panic!("{case}: the server refuses record 3: {result:?}");
        };
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            Err(error),
            &Error::AuthFailed(AuthFailure::UnknownClient),
            CloseCode::AUTH_FAILED,
        );
    }
}

/// Clauses: HS-003, HS-004, HS-010 — a client bound to another endpoint fails at record 2 with
/// HANDSHAKE_FAILED (4000).
#[test]
fn wrong_endpoint_in_the_prologue_fails_the_client_at_record_2() {
    let options = PeerOptions {
        client_endpoint: "wss://attacker.example/toolwire".into(),
        ..PeerOptions::default()
    };
    let peers = Peers::custom(&options, |server| server, |client| client);
    let mut pair = Pair::start(&peers);
    // Record 1 carries no authenticated data: the server cannot notice yet.
    pair.flush_client_to_server().expect("record 1 accepted");
    let record_2 = pair.take_one_from_server();
    let result = pair.deliver_to_client(&record_2);
    assert_failed_handshake(
        &mut pair,
        Role::Client,
        result,
        &Error::HandshakeFailed,
        CloseCode::HANDSHAKE_FAILED,
    );
}

/// Clauses: REC-004 — a handshake record whose version byte is not 1 closes with
/// VERSION_UNSUPPORTED (4002).
#[test]
fn bad_version_byte_in_record_1_closes_with_version_unsupported() {
    for version in [0u8, 2, 0x81, 0xff] {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record_1 = pair.take_one_from_client();
        record_1[0] = version;
        let result = pair.deliver_to_server(&record_1);
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            result,
            &Error::Incompatible(Incompatibility::Version(version)),
            CloseCode::VERSION_UNSUPPORTED,
        );
    }
}

/// Clauses: REC-017 — a handshake record of any type but the expected one closes with
/// PROTOCOL_VIOLATION (4010).
#[test]
fn wrong_record_type_during_the_handshake_closes_with_protocol_violation() {
    // At the server, in place of record 1.
    for record_type in [0u8, 2, 3, 0x10, 0xff] {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record_1 = pair.take_one_from_client();
        record_1[1] = record_type;
        let result = pair.deliver_to_server(&record_1);
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            result,
            &Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
            CloseCode::PROTOCOL_VIOLATION,
        );
    }
    // At the client, in place of record 2.
    for record_type in [1u8, 3, 0x10] {
        let mut pair = Pair::start(&Peers::default_configs());
        pair.flush_client_to_server().expect("record 1 accepted");
        let mut record_2 = pair.take_one_from_server();
        record_2[1] = record_type;
        let result = pair.deliver_to_client(&record_2);
        assert_failed_handshake(
            &mut pair,
            Role::Client,
            result,
            &Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
            CloseCode::PROTOCOL_VIOLATION,
        );
    }
    // At the server, record 1 again in place of record 3.
    let mut pair = Pair::start(&Peers::default_configs());
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1)
        .expect("record 1 accepted");
    pair.take_one_from_server();
    let result = pair.deliver_to_server(&record_1);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
        CloseCode::PROTOCOL_VIOLATION,
    );
}

/// Clauses: REC-018, REC-003 — a non-zero reserved, epoch or seq field in a handshake record closes
/// with PROTOCOL_VIOLATION (4010).
#[test]
fn nonzero_handshake_header_fields_close_with_protocol_violation() {
    for offset in [2usize, 3, 4, 7, 8, 15] {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record_1 = pair.take_one_from_client();
        record_1[offset] = 1;
        let result = pair.deliver_to_server(&record_1);
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            result,
            &Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader),
            CloseCode::PROTOCOL_VIOLATION,
        );
    }
}

/// Clauses: REC-021, CLS-001 — a handshake record after the handshake closes with
/// PROTOCOL_VIOLATION (4010), announced in an authenticated CLOSE.
#[test]
fn handshake_records_after_the_handshake_close_with_protocol_violation() {
    let peers = Peers::default_configs();
    let mut pair = Pair::start(&peers);
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1).expect("record 1");
    pair.flush_server_to_client().expect("record 2");
    let record_3 = pair.take_one_from_client();
    pair.deliver_to_server(&record_3).expect("record 3");
    pair.clear_events();
    // A replayed record 3 at the established server.
    let result = pair.deliver_to_server(&record_3);
    let error = Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType);
    assert_error(result, &error, CloseCode::PROTOCOL_VIOLATION);
    assert_closed(
        &pair.server,
        &pair.server_events,
        CloseCode::PROTOCOL_VIOLATION,
        Side::Local,
        Some(&error),
    );
    assert!(pair.server_messages().is_empty());
    // Keys exist now: the client hears an authenticated CLOSE.
    pair.flush_server_to_client().expect("CLOSE accepted");
    assert_closed(
        &pair.client,
        &pair.client_events,
        CloseCode::PROTOCOL_VIOLATION,
        Side::Remote,
        None,
    );
}

/// Clauses: REC-005, HS-007 — a record shorter than its header closes with 4010; a message 1 that
/// is not 32 bytes with HANDSHAKE_FAILED (4000).
#[test]
fn truncated_or_misshapen_handshake_records_are_refused() {
    // Shorter than a header: a framing violation.
    let mut pair = Pair::start(&Peers::default_configs());
    let record_1 = pair.take_one_from_client();
    let result = pair.deliver_to_server(&record_1[..HEADER_LEN - 1]);
    assert_failed_handshake(
        &mut pair,
        Role::Server,
        result,
        &Error::Malformed(Malformed::Record),
        CloseCode::PROTOCOL_VIOLATION,
    );
    // Record 1 must be exactly one 32-byte key.
    for len in [HEADER_LEN, HEADER_LEN + 31, HEADER_LEN + 33] {
        let mut pair = Pair::start(&Peers::default_configs());
        let mut record_1 = pair.take_one_from_client();
        record_1.resize(len, 0x55);
        let result = pair.deliver_to_server(&record_1);
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            result,
            &Error::Malformed(Malformed::HandshakeMessage),
            CloseCode::HANDSHAKE_FAILED,
        );
    }
}

/// X25519 points of small order (and their non-canonical encodings): every DH with
/// them is all zeros.
fn low_order_points() -> Vec<[u8; 32]> {
    let hex = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    hex.iter()
        .map(|h| {
            let bytes = hex::decode(h).expect("hex");
            bytes.try_into().expect("32 bytes")
        })
        .collect()
}

/// Clauses: HS-011 — a low-order client ephemeral key (zero DH result) closes with HANDSHAKE_FAILED
/// (4000).
#[test]
fn non_contributory_client_ephemeral_closes_with_handshake_failed() {
    for point in low_order_points() {
        let mut pair = Pair::start(&Peers::default_configs());
        pair.take_one_from_client();
        let result = pair.deliver_to_server(&handshake_record(RecordType::HANDSHAKE_1, &point));
        assert_failed_handshake(
            &mut pair,
            Role::Server,
            result,
            &Error::HandshakeFailed,
            CloseCode::HANDSHAKE_FAILED,
        );
    }
}

/// Clauses: HS-011 — a low-order server ephemeral key closes the client with HANDSHAKE_FAILED
/// (4000).
#[test]
fn non_contributory_server_ephemeral_closes_with_handshake_failed() {
    let all_zero = [0u8; 32];
    let mut pair = Pair::start(&Peers::default_configs());
    pair.flush_client_to_server().expect("record 1 accepted");
    let mut record_2 = pair.take_one_from_server();
    record_2[HEADER_LEN..HEADER_LEN + 32].copy_from_slice(&all_zero);
    let result = pair.deliver_to_client(&record_2);
    assert_failed_handshake(
        &mut pair,
        Role::Client,
        result,
        &Error::HandshakeFailed,
        CloseCode::HANDSHAKE_FAILED,
    );
}

/// Clauses: HS-033, LIM-005, HS-034 — with default limits, a handshake not done 5 s after the start
/// closes both sides with TIMEOUT (4009), nothing sent.
#[test]
fn handshake_deadline_closes_both_sides_with_timeout() {
    let mut pair = Pair::start(&Peers::default_configs());
    let deadline = pair.base + Duration::from_secs(5);
    assert_eq!(pair.client.poll_timeout(), Some(deadline));
    assert_eq!(pair.server.poll_timeout(), Some(deadline));
    // Record 1 is lost; both sides wait.
    pair.take_one_from_client();

    pair.advance(Duration::from_secs(5) - Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert_eq!(pair.server_timeout(), Ok(()));
    assert!(!pair.client.is_closed() && !pair.server.is_closed());

    pair.advance_to(deadline);
    let error = Error::Timeout(TimeoutKind::Handshake);
    let client = pair.client_timeout();
    assert_failed_handshake(&mut pair, Role::Client, client, &error, CloseCode::TIMEOUT);
    let server = pair.server_timeout();
    assert_failed_handshake(&mut pair, Role::Server, server, &error, CloseCode::TIMEOUT);
}

/// Clauses: HS-033 — the handshake deadline counts from the start, also after record 1 was
/// answered.
#[test]
fn handshake_deadline_applies_to_a_half_finished_handshake() {
    let mut pair = Pair::start(&Peers::default_configs());
    pair.flush_client_to_server().expect("record 1 accepted");
    pair.take_one_from_server(); // record 2 is lost
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.base + Duration::from_secs(5))
    );
    pair.advance(Duration::from_secs(6));
    let error = Error::Timeout(TimeoutKind::Handshake);
    let server = pair.server_timeout();
    assert_failed_handshake(&mut pair, Role::Server, server, &error, CloseCode::TIMEOUT);
    let client = pair.client_timeout();
    assert_failed_handshake(&mut pair, Role::Client, client, &error, CloseCode::TIMEOUT);
}

#[test]
fn a_handshake_finished_before_the_deadline_is_not_timed_out() {
    let mut pair = Pair::start(&Peers::default_configs());
    pair.advance(Duration::from_millis(4_999));
    pair.handshake().expect("handshake succeeds");
    pair.advance(Duration::from_millis(1));
    assert_eq!(pair.client_timeout(), Ok(()));
    assert_eq!(pair.server_timeout(), Ok(()));
    assert!(pair.client.is_established() && pair.server.is_established());
    // The deadlines now run from the end of the handshake.
    assert_eq!(
        pair.server.poll_timeout(),
        Some(pair.base + Duration::from_millis(4_999) + Duration::from_secs(90))
    );
}

/// Clauses: HS-035, CLS-005 — after a failed handshake no record is processed and nothing more is
/// sent.
#[test]
fn records_after_a_failed_handshake_are_refused_as_closed() {
    let options = PeerOptions {
        allowlist_client: false,
        ..PeerOptions::default()
    };
    let peers = Peers::custom(&options, |server| server, |client| client);
    let mut pair = Pair::start(&peers);
    let record_1 = pair.take_one_from_client();
    pair.deliver_to_server(&record_1).expect("record 1");
    pair.flush_server_to_client().expect("record 2");
    let record_3 = pair.take_one_from_client();
    assert!(pair.deliver_to_server(&record_3).is_err());
    pair.clear_events();

    let closed = Error::Closed {
        code: CloseCode::AUTH_FAILED,
        side: Side::Local,
    };
    for record in [&record_3, &record_1] {
        assert_eq!(pair.deliver_to_server(record), Err(closed.clone()));
    }
    assert_eq!(pair.server_timeout(), Ok(()));
    assert_eq!(
        pair.server.send(pair.now, request(1, b"")),
        Err(closed.clone())
    );
    // Nothing more happens: no event, no record, the close code is unchanged.
    pair.collect();
    assert!(pair.server_events.is_empty());
    assert!(pair.take_from_server().is_empty());
    assert_eq!(
        pair.server.close_code(),
        Some((CloseCode::AUTH_FAILED, Side::Local))
    );
}

#[test]
fn sending_before_the_handshake_is_a_local_error_that_does_not_close() {
    let mut pair = Pair::start(&Peers::default_configs());
    let result = pair.client.send(pair.now, request(1, b""));
    assert_eq!(
        result,
        Err(Error::Local(
            toolwire_protocol::error::LocalError::NotEstablished
        ))
    );
    assert_eq!(result.expect_err("fails").close_code(), None);
    assert!(!pair.client.is_closed());
    pair.handshake().expect("the handshake still completes");
}

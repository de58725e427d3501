//! Operator-certified server identities (spec section 3.1, ID-010..ID-017): a client
//! that trusts an operator key accepts a server whose identity key that operator
//! certified, and nothing else: a certificate that is expired, for another server,
//! for another endpoint, signed by another key, or a grant passed off as one, leaves
//! the server untrusted (AUTH_FAILED, 4001) before the client sends message 3.

mod common;

use common::*;
use rand_core::SeedableRng as _;
use std::sync::Arc;
use time::OffsetDateTime;
use toolwire_protocol::certificate::{
    verify_server_certificate, CertificateCheck, CertificateError, ServerCertificateBuilder,
    MAX_CERTIFICATE_ENDPOINTS,
};
use toolwire_protocol::error::AuthFailure;
use toolwire_protocol::grant::GrantBuilder;
use toolwire_protocol::testing::SeededRng;
use toolwire_protocol::{ClientConfig, CloseCode, Connection, Error, Identity, ServerConfig};

fn operator() -> Identity {
    Identity::from_seed(&[0x4f; 32])
}

fn server_identity() -> Identity {
    Identity::from_seed(&[0x53; 32])
}

fn client_identity() -> Identity {
    Identity::from_seed(&[0x43; 32])
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
}

/// A certificate of the default server by the operator, valid an hour around UNIX_TIME.
fn certificate() -> ServerCertificateBuilder {
    ServerCertificateBuilder::new(server_identity().public_key(), at(UNIX_TIME + 3600))
        .not_before(at(UNIX_TIME - 3600))
}

fn check(now_unix: i64) -> CertificateCheck<'static> {
    static OPERATORS: std::sync::OnceLock<Vec<toolwire_protocol::IdentityKey>> =
        std::sync::OnceLock::new();
    CertificateCheck {
        trusted_operators: OPERATORS.get_or_init(|| vec![operator().public_key()]),
        server: server_identity().public_key(),
        endpoint: ENDPOINT,
        now_unix,
        max_clock_skew_secs: 0,
    }
}

/// Runs a handshake between a client that pins nothing and trusts `operator()` (with a
/// wall clock at UNIX_TIME) and a server presenting `token`.
fn handshake_with(token: Option<String>, client_has_clock: bool) -> Result<Pair, (Role, Error)> {
    let mut rng = SeededRng::seed_from_u64(0xce27);
    let mut server_config = ServerConfig::new(server_identity(), ENDPOINT, &mut rng)
        .allow_clients([client_identity().public_key()]);
    if let Some(token) = token {
        server_config = server_config
            .with_certificate(token)
            .expect("certificate of this server");
    }
    let client_config = ClientConfig::new(client_identity(), Vec::new(), ENDPOINT, &mut rng)
        .with_trusted_operators(vec![operator().public_key()])
        .with_max_clock_skew_secs(0);
    let base = base_instant();
    let client = if client_has_clock {
        Connection::client_at(Arc::new(client_config), base, UNIX_TIME, &mut rng)
    } else {
        Connection::client(Arc::new(client_config), base, &mut rng)
    };
    let server = Connection::server(Arc::new(server_config), base, UNIX_TIME, &mut rng);
    let mut pair = Pair::from_connections(client, server, base);
    pair.handshake()?;
    Ok(pair)
}

fn assert_untrusted(result: Result<Pair, (Role, Error)>) {
    match result {
        Err((Role::Client, Error::AuthFailed(AuthFailure::UntrustedServer))) => {}
        Err(other) => panic!("expected the client to refuse the server, got {other:?}"),
        Ok(_) => panic!("expected the client to refuse the server, the handshake completed"),
    }
}

/// Clauses: ID-010, ID-011, HS-015 — no pin, a valid certificate by a trusted operator: the
/// client accepts the server and both sides are established on the same session.
#[test]
fn a_certified_server_is_accepted_without_a_pin() {
    let token = certificate().sign(&operator()).expect("sign");
    let pair = handshake_with(Some(token), true).expect("handshake");
    assert_eq!(
        pair.client.session().expect("established").peer,
        server_identity().public_key()
    );
    assert!(pair.server.is_established());
}

/// Clauses: ID-003, HS-015, HS-017 — no pin and no certificate: AUTH_FAILED before message 3.
#[test]
fn an_uncertified_unpinned_server_is_refused() {
    assert_untrusted(handshake_with(None, true));
}

/// Clauses: ID-013 — a client without a wall clock cannot check validity periods and trusts
/// pinned keys only.
#[test]
fn a_client_without_a_clock_does_not_accept_certificates() {
    let token = certificate().sign(&operator()).expect("sign");
    assert_untrusted(handshake_with(Some(token), false));
}

/// Clauses: ID-013, ID-014 — an expired certificate leaves the server untrusted, with close
/// code 4001 and nothing sent after record 2.
#[test]
fn an_expired_certificate_is_refused_with_auth_failed() {
    let token = ServerCertificateBuilder::new(server_identity().public_key(), at(UNIX_TIME - 1))
        .sign(&operator())
        .expect("sign");
    let result = handshake_with(Some(token), true);
    let Err((Role::Client, error)) = &result else {
        panic!("expected the client to refuse")
    };
    assert_eq!(error.close_code(), Some(CloseCode::AUTH_FAILED));
    assert_untrusted(result);
}

/// Clauses: ID-013 — a certificate restricted to other endpoints is refused.
#[test]
fn a_certificate_for_another_endpoint_is_refused() {
    let token = certificate()
        .endpoints(["wss://elsewhere.example/tw"])
        .sign(&operator())
        .expect("sign");
    assert_untrusted(handshake_with(Some(token), true));
}

/// Clauses: ID-013 — a certificate restricted to the dialed endpoint (byte for byte) works.
#[test]
fn a_certificate_for_this_endpoint_is_accepted() {
    let token = certificate()
        .endpoints(["wss://elsewhere.example/tw", ENDPOINT])
        .sign(&operator())
        .expect("sign");
    handshake_with(Some(token), true).expect("handshake");
}

/// Clauses: ID-013 — a certificate signed by a key the client does not trust is refused.
#[test]
fn a_certificate_from_an_untrusted_operator_is_refused() {
    let token = certificate()
        .sign(&Identity::from_seed(&[0x66; 32]))
        .expect("sign");
    assert_untrusted(handshake_with(Some(token), true));
}

/// Clauses: ID-013 — each failure has its own typed reason, checked in spec order: form,
/// operator, signature, subject, validity, endpoint.
#[test]
fn verification_reports_the_first_failing_check() {
    let good = certificate().sign(&operator()).expect("sign");
    assert_eq!(
        verify_server_certificate(&good, &check(UNIX_TIME)),
        Ok(operator().public_key())
    );
    assert_eq!(
        verify_server_certificate("v4.public.AAAA", &check(UNIX_TIME)),
        Err(CertificateError::Malformed("token"))
    );
    let foreign = certificate()
        .sign(&Identity::from_seed(&[0x66; 32]))
        .expect("sign");
    assert_eq!(
        verify_server_certificate(&foreign, &check(UNIX_TIME)),
        Err(CertificateError::UntrustedOperator)
    );
    let other_server = ServerCertificateBuilder::new(
        Identity::from_seed(&[0x77; 32]).public_key(),
        at(UNIX_TIME + 60),
    )
    .sign(&operator())
    .expect("sign");
    assert_eq!(
        verify_server_certificate(&other_server, &check(UNIX_TIME)),
        Err(CertificateError::WrongServer)
    );
    assert_eq!(
        verify_server_certificate(&good, &check(UNIX_TIME - 3601)),
        Err(CertificateError::NotYetValid)
    );
    assert_eq!(
        verify_server_certificate(&good, &check(UNIX_TIME + 3600)),
        Err(CertificateError::Expired)
    );
    let pinned_endpoint = certificate()
        .endpoints(["wss://a.example/"])
        .sign(&operator())
        .expect("sign");
    assert_eq!(
        verify_server_certificate(&pinned_endpoint, &check(UNIX_TIME)),
        Err(CertificateError::WrongEndpoint)
    );
}

/// Clauses: ID-013 — the clock skew tolerance applies to both ends of the validity period.
#[test]
fn clock_skew_extends_the_validity_period_both_ways() {
    let good = certificate().sign(&operator()).expect("sign");
    let mut lenient = check(UNIX_TIME + 3600);
    lenient.max_clock_skew_secs = 30;
    assert!(verify_server_certificate(&good, &lenient).is_ok());
    lenient.now_unix = UNIX_TIME + 3630;
    assert_eq!(
        verify_server_certificate(&good, &lenient),
        Err(CertificateError::Expired)
    );
    lenient.now_unix = UNIX_TIME - 3630;
    assert!(verify_server_certificate(&good, &lenient).is_ok());
}

/// Clauses: ID-012 — a tampered certificate (one bit of the signed claims flipped) fails
/// its signature; a grant signed by the operator key is not a certificate (other implicit
/// assertion).
#[test]
fn tampered_certificates_and_grants_do_not_verify() {
    let good = certificate().sign(&operator()).expect("sign");
    // Flip a bit in the base64 of the claims (well inside the body, away from the header).
    let mut bytes = good.into_bytes();
    let position = "v4.public.".len() + 20;
    bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert!(matches!(
        verify_server_certificate(&tampered, &check(UNIX_TIME)),
        Err(CertificateError::BadSignature | CertificateError::Malformed(_))
    ));

    let grant = GrantBuilder::new(
        server_identity().public_key().to_bytes(),
        server_identity().public_key().to_bytes(),
        "not-a-certificate",
        at(UNIX_TIME + 3600),
    )
    .tools(["*"])
    .sign(operator().signing_key())
    .expect("grant");
    // Its claims include everything a certificate needs (iss, sub = this server, exp):
    // only the implicit assertion tells them apart.
    assert_eq!(
        verify_server_certificate(&grant, &check(UNIX_TIME)),
        Err(CertificateError::BadSignature)
    );
}

/// Clauses: ID-016 — limits on the certificate itself are enforced at issue and at check.
#[test]
fn oversized_and_empty_endpoint_lists_are_refused() {
    let too_many: Vec<String> = (0..=MAX_CERTIFICATE_ENDPOINTS)
        .map(|i| format!("wss://{i}.example/"))
        .collect();
    assert_eq!(
        certificate().endpoints(too_many).sign(&operator()),
        Err(CertificateError::Malformed("endpoints"))
    );
    assert_eq!(
        certificate()
            .endpoints(Vec::<String>::new())
            .sign(&operator()),
        Err(CertificateError::Malformed("endpoints"))
    );
    let huge = "v4.public.".to_owned() + &"A".repeat(5000);
    assert_eq!(
        verify_server_certificate(&huge, &check(UNIX_TIME)),
        Err(CertificateError::Malformed("token"))
    );
}

/// Clauses: ID-015 — a server refuses at configuration time a certificate of another key.
#[test]
fn a_server_refuses_to_present_another_servers_certificate() {
    let mut rng = SeededRng::seed_from_u64(1);
    let other = ServerCertificateBuilder::new(
        Identity::from_seed(&[0x77; 32]).public_key(),
        at(UNIX_TIME + 60),
    )
    .sign(&operator())
    .expect("sign");
    let result = ServerConfig::new(server_identity(), ENDPOINT, &mut rng).with_certificate(other);
    assert!(matches!(result, Err(CertificateError::WrongServer)));
    let garbage = ServerConfig::new(server_identity(), ENDPOINT, &mut rng).with_certificate("x");
    assert!(matches!(garbage, Err(CertificateError::Malformed(_))));
}

/// Clauses: ID-011 — a pinned key needs no certificate, and a pin wins even when the
/// certificate presented alongside would not verify.
#[test]
fn a_pinned_server_is_accepted_whatever_its_certificate() {
    let expired = ServerCertificateBuilder::new(server_identity().public_key(), at(UNIX_TIME - 1))
        .sign(&operator())
        .expect("sign");
    let peers = Peers::build(
        |server| server.with_certificate(expired).expect("own certificate"),
        |client| client,
    );
    Pair::established_with(&peers);
}

//! Threat: session riding past a grant's expiry (THREATS.md §8, §9). A session
//! authorized by a grant outlives it; expiry is checked on every call against the
//! wall clock, with the server's configured clock-skew tolerance (here 0 s), so the
//! first call after the grant's `exp` is refused with GRANT_EXPIRED on the still
//! open connection — while a server tolerating the default 30 s of skew still
//! honours the same grant. A grant already expired at connect time authenticates
//! nobody.
//!
//! Clauses: AUTHZ-013, LIM-014, GRT-025, HS-028.

mod common;

use common::{rpc_code, within, TestServer};
use std::time::Duration;
use time::OffsetDateTime;
use toolwire_client::ConnectError;
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity, IdentityKey};
use toolwire_server::Limits;

fn args() -> serde_json::Value {
    serde_json::json!({"text": "hi"})
}

fn grant(
    issuer: &Identity,
    holder: &Identity,
    server: IdentityKey,
    expires: OffsetDateTime,
) -> String {
    GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.to_bytes(),
        "short-1",
        expires,
    )
    .tools(["echo"])
    .sign(issuer.signing_key())
    .expect("grant signs")
}

fn no_skew() -> Limits {
    let mut limits = Limits::default();
    limits.max_clock_skew_secs = 0;
    limits
}

#[tokio::test]
async fn call_after_the_grant_expired_is_refused_with_grant_expired() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let strict = TestServer::start_with(|builder| {
        builder
            .trust_grant_issuer(issuer.public_key())
            .limits(no_skew())
    })
    .await;
    let tolerant =
        TestServer::start_with(|builder| builder.trust_grant_issuer(issuer.public_key())).await;
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let strict_session = within(
        "connect",
        strict
            .client(&holder)
            .present_grant(grant(&issuer, &holder, strict.server_key, expires))
            .connect(&strict.url),
    )
    .await
    .expect("grant holder connects");
    let tolerant_session = within(
        "connect",
        tolerant
            .client(&holder)
            .present_grant(grant(&issuer, &holder, tolerant.server_key, expires))
            .connect(&tolerant.url),
    )
    .await
    .expect("grant holder connects");
    within("call", strict_session.call("echo", &args()))
        .await
        .expect("call before expiry");

    // Call until refused. Expiry is checked in whole seconds, rounded so that a grant
    // may end up to a second early, never late. A call is evaluated after it was sent
    // and before its answer arrived, which bounds when the server decided.
    let (last_honoured_sent, refused_answered) = within("grant expiry", async {
        loop {
            let sent = OffsetDateTime::now_utc();
            match strict_session.call("echo", &args()).await {
                Ok(_) => {
                    assert!(
                        sent < expires,
                        "honoured a call sent at {sent}, after {expires}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => {
                    assert_eq!(error.code(), Some(ErrorCode::GRANT_EXPIRED), "{error}");
                    return (sent, OffsetDateTime::now_utc());
                }
            }
        }
    })
    .await;
    assert!(
        refused_answered >= expires - time::Duration::seconds(1),
        "refused by {refused_answered}, more than a second before {expires}"
    );
    assert!(last_honoured_sent < expires + time::Duration::seconds(1));
    let executed = strict.probes.echo.runs();
    let outcome = within("call", strict_session.call("echo", &args())).await;
    assert_eq!(rpc_code(outcome), ErrorCode::GRANT_EXPIRED);
    assert_eq!(strict.probes.echo.runs(), executed);

    // The same grant on a server tolerating 30 s of clock skew is still honoured.
    within("call", tolerant_session.call("echo", &args()))
        .await
        .expect("within the skew tolerance");
}

#[tokio::test]
async fn grant_expired_before_connecting_authenticates_nobody() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let server = TestServer::start_with(|builder| {
        builder
            .trust_grant_issuer(issuer.public_key())
            .limits(no_skew())
    })
    .await;
    let expired = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let outcome = within(
        "connect",
        server
            .client(&holder)
            .present_grant(grant(&issuer, &holder, server.server_key, expired))
            .connect(&server.url),
    )
    .await;
    match outcome {
        Err(ConnectError::Closed { code, .. }) => assert_eq!(code, CloseCode::AUTH_FAILED),
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    assert_eq!(server.probes.total_runs(), 0);
}

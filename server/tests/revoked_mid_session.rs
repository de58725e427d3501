//! Threat: session riding (THREATS.md §8, §9). A socket stays open for hours;
//! permissions change in the meantime. Authorization is decided again on every
//! REQUEST, so the very next call after a client is removed from the allowlist is
//! refused with PERMISSION_DENIED, and the very next call relying on a revoked grant
//! (or on a grant delegated from it) with CAPABILITY_REVOKED — after which a session
//! left with no unrevoked grant is told so (CAP_UPDATE) and closed with
//! CAPABILITY_REVOKED (4007).
//!
//! Clauses: AUTHZ-001, AUTHZ-014, AUTHZ-016, GRT-042.

mod common;

use common::{rpc_code, within, TestServer};
use std::time::Duration;
use time::OffsetDateTime;
use toolwire_client::Session;
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity, IdentityKey, Message};

fn args() -> serde_json::Value {
    serde_json::json!({"text": "hi"})
}

fn grant(issuer: &Identity, holder: &Identity, server: IdentityKey, id: &str) -> String {
    GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.to_bytes(),
        id,
        OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .tools(["echo"])
    .sign(issuer.signing_key())
    .expect("grant signs")
}

/// Waits until the session's connection has closed, returning the close code.
async fn closed(session: &Session) -> CloseCode {
    within("session closes", async {
        loop {
            if let Some(code) = session.close_code() {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn client_removed_from_the_allowlist_is_denied_on_its_next_call() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    within("call", session.call("echo", &args()))
        .await
        .expect("first call");

    server.server.remove_client(&server.agent.public_key());
    let outcome = within("call", session.call("echo", &args())).await;
    assert_eq!(rpc_code(outcome), ErrorCode::PERMISSION_DENIED);
    assert_eq!(server.probes.echo.runs(), 1);
    assert_eq!(
        session.close_code(),
        None,
        "refused per call, not per connection"
    );
}

#[tokio::test]
async fn revoked_grant_is_refused_with_capability_revoked_on_the_next_call() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let server =
        TestServer::start_with(|builder| builder.trust_grant_issuer(issuer.public_key())).await;
    let token = grant(&issuer, &holder, server.server_key, "grant-1");
    let session = within(
        "connect",
        server
            .client(&holder)
            .present_grant(token)
            .connect(&server.url),
    )
    .await
    .expect("grant holder connects");
    assert_eq!(session.granted_tools(), ["echo"]);
    within("call", session.call("echo", &args()))
        .await
        .expect("call under the grant");

    server.server.revoke_grant("grant-1");
    let outcome = within("call", session.call("echo", &args())).await;
    assert_eq!(rpc_code(outcome), ErrorCode::CAPABILITY_REVOKED);
    assert_eq!(server.probes.echo.runs(), 1);
    // Its only grant is gone: the session is told and closed.
    assert_eq!(closed(&session).await, CloseCode::CAPABILITY_REVOKED);
    assert!(session.granted_tools().is_empty());
}

#[tokio::test]
async fn session_is_closed_only_once_every_grant_is_revoked() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let server =
        TestServer::start_with(|builder| builder.trust_grant_issuer(issuer.public_key())).await;
    let grants = vec![
        grant(&issuer, &holder, server.server_key, "grant-a"),
        grant(&issuer, &holder, server.server_key, "grant-b"),
    ];
    let (mut raw, _) = server.raw_session(&holder, grants).await;

    // One of two grants revoked: the call relies on the other one.
    server.server.revoke_grant("grant-a");
    raw.send(Message::Request(raw.request(1, "echo", &args())))
        .await;
    raw.expect_response(1).await;

    server.server.revoke_grant("grant-b");
    raw.send(Message::Request(raw.request(2, "echo", &args())))
        .await;
    assert_eq!(
        raw.expect_error(2).await.error_code(),
        ErrorCode::CAPABILITY_REVOKED
    );
    let closed = raw.expect_close().await;
    match closed.messages.as_slice() {
        [Message::CapUpdate(update)] => {
            assert!(update.granted.is_empty(), "{update:?}");
            assert_eq!(update.revoked, ["echo"]);
        }
        other => panic!("expected one CAP_UPDATE before the close, got {other:?}"),
    }
    assert_eq!(closed.record, Some(CloseCode::CAPABILITY_REVOKED));
    assert_eq!(closed.frame, Some(CloseCode::CAPABILITY_REVOKED.0));
    assert_eq!(server.probes.echo.runs(), 1);
}

#[tokio::test]
async fn revoking_a_grant_revokes_what_was_delegated_from_it() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let sub_agent = Identity::generate(&mut rand_core::OsRng);
    let server =
        TestServer::start_with(|builder| builder.trust_grant_issuer(issuer.public_key())).await;
    let root = grant(&issuer, &agent, server.server_key, "root-1");
    let delegated = GrantBuilder::new(
        sub_agent.public_key().to_bytes(),
        server.server_key.to_bytes(),
        "delegated-1",
        OffsetDateTime::now_utc() + time::Duration::minutes(30),
    )
    .tools(["echo"])
    .delegate_from(&root)
    .sign(agent.signing_key())
    .expect("delegation signs");
    let session = within(
        "connect",
        server
            .client(&sub_agent)
            .present_grant(delegated)
            .connect(&server.url),
    )
    .await
    .expect("sub-agent connects");
    within("call", session.call("echo", &args()))
        .await
        .expect("call under the delegated grant");

    server.server.revoke_grant("root-1");
    let outcome = within("call", session.call("echo", &args())).await;
    assert_eq!(rpc_code(outcome), ErrorCode::CAPABILITY_REVOKED);
    assert_eq!(server.probes.echo.runs(), 1);
    assert_eq!(closed(&session).await, CloseCode::CAPABILITY_REVOKED);
}

//! Mid-session capability requests (CAP_REQUEST, spec section 12.5), over a real
//! socket: an agent authenticated by a grant for `echo` presents, after the
//! handshake, a grant bound to its session for `gate` and may then call it; a grant
//! bound to another session is disregarded and `gate` stays refused without running;
//! a request that added an unbound grant is sent again after a reconnect, so the tool
//! stays granted on the new connection.
//!
//! Clauses: GRT-037, GRT-039, GRT-041, GRT-033.

mod common;

use common::{fast_policy, init_tracing, limits, within, Harness};
use time::OffsetDateTime;
use toolwire_client::{CallError, Client, Session};
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::{Identity, IdentityKey};

struct Setup {
    harness: Harness,
    issuer: Identity,
    holder: Identity,
}

fn grant(
    issuer: &Identity,
    holder: &Identity,
    server: IdentityKey,
    id: &str,
    tool: &str,
    session: Option<[u8; 32]>,
) -> String {
    let mut builder = GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.to_bytes(),
        id,
        OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .tools([tool]);
    if let Some(sid) = session {
        builder = builder.session(sid);
    }
    builder.sign(issuer.signing_key()).expect("grant signs")
}

async fn setup() -> (Setup, common::Instance, Session) {
    init_tracing();
    let harness = Harness::new().await;
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let instance = harness
        .start_server(limits(), |builder| {
            builder.trust_grant_issuer(issuer.public_key())
        })
        .await;
    let echo_grant = grant(&issuer, &holder, harness.server_key, "echo-1", "echo", None);
    let session = within(
        "connect",
        Client::builder()
            .identity(holder.clone())
            .pin_server(harness.server_key)
            .present_grant(echo_grant)
            .reconnect(fast_policy())
            .connect(&harness.url),
    )
    .await
    .expect("the grant holder connects");
    (
        Setup {
            harness,
            issuer,
            holder,
        },
        instance,
        session,
    )
}

#[tokio::test]
async fn a_session_bound_grant_presented_mid_session_adds_its_tool() {
    let (setup, instance, session) = setup().await;
    assert_eq!(session.granted_tools(), ["echo"]);
    let bound = grant(
        &setup.issuer,
        &setup.holder,
        setup.harness.server_key,
        "gate-sid",
        "gate",
        Some(session.session_id()),
    );
    let granted = within(
        "capability request",
        session.request_capabilities(["gate"], vec![bound]),
    )
    .await
    .expect("answered with CAP_UPDATE");
    assert_eq!(granted, ["echo", "gate"]);
    assert_eq!(session.granted_tools(), ["echo", "gate"]);
    instance.tools.gate.open();
    let result = within("call", session.call("gate", &serde_json::json!({"n": 1})))
        .await
        .expect("the newly granted tool answers");
    assert_eq!(result, serde_json::json!({"n": 1}));
    assert_eq!(instance.tools.gate.runs(), 1);
}

#[tokio::test]
async fn a_grant_bound_to_another_session_is_disregarded() {
    let (setup, instance, session) = setup().await;
    let foreign = grant(
        &setup.issuer,
        &setup.holder,
        setup.harness.server_key,
        "gate-other",
        "gate",
        Some([7; 32]),
    );
    let granted = within(
        "capability request",
        session.request_capabilities(["gate"], vec![foreign]),
    )
    .await
    .expect("answered with CAP_UPDATE");
    assert_eq!(granted, ["echo"]);
    let outcome = within("call", session.call("gate", &serde_json::json!({}))).await;
    assert!(
        matches!(
            outcome,
            Err(CallError::NotGranted { .. } | CallError::Rpc { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(instance.tools.gate.runs(), 0);
}

#[tokio::test]
async fn capabilities_requested_mid_session_survive_a_reconnect() {
    let (setup, instance, session) = setup().await;
    let unbound = grant(
        &setup.issuer,
        &setup.holder,
        setup.harness.server_key,
        "gate-unbound",
        "gate",
        None,
    );
    within(
        "capability request",
        session.request_capabilities(["gate"], vec![unbound]),
    )
    .await
    .expect("answered");
    let first_session = session.session_id();
    setup.harness.proxy.cut_all();
    // The next call reconnects; the replayed CAP_REQUEST grants `gate` again.
    within(
        "call after the cut",
        session.call("echo", &serde_json::json!({"x": 1})),
    )
    .await
    .expect("echo after reconnect");
    assert_ne!(session.session_id(), first_session, "a new connection");
    common::until("gate granted again", || {
        session.granted_tools() == ["echo", "gate"]
    })
    .await;
    instance.tools.gate.open();
    within(
        "gate call",
        session.call("gate", &serde_json::json!({"y": 2})),
    )
    .await
    .expect("gate after reconnect");
}

//! Capabilities and the manifest over real sockets (spec sections 11 and 12.5): the
//! CAP_GRANT a session starts with (granted set, limits, signed manifest), grants
//! presented mid-session with CAP_REQUEST, and what happens to the granted set when
//! a tool's definition changes.

mod common;

use common::{echo_tool, within, Probe, RawClient, TestServer};
use std::sync::Arc;
use std::time::Duration;
use toolwire_client::CallError;
use toolwire_server::protocol::grant::GrantBuilder;
use toolwire_server::protocol::manifest::{Manifest, MANIFEST_DOMAIN};
use toolwire_server::protocol::message::{CapGrant, CapRequest, CapUpdate, SignedManifest};
use toolwire_server::protocol::paseto::pae;
use toolwire_server::protocol::{ClientConfig, ErrorCode, Identity, IdentityKey, Message};
use toolwire_server::{BuildError, Limits, Server};

fn text(value: &str) -> serde_json::Value {
    serde_json::json!({ "text": value })
}

/// A grant by `issuer` for `holder` on `server`, covering `tools`, valid for an hour.
fn grant(
    issuer: &Identity,
    holder: &Identity,
    server: &IdentityKey,
    id: &str,
    tools: &[&str],
    session: Option<[u8; 32]>,
) -> String {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut builder = GrantBuilder::new(
        holder.public_key().to_bytes(),
        server.to_bytes(),
        id,
        expires,
    )
    .tools(tools.iter().copied());
    if let Some(sid) = session {
        builder = builder.session(sid);
    }
    builder.sign(issuer.signing_key()).expect("grant signs")
}

fn names(grant: &[toolwire_server::protocol::message::GrantedTool]) -> Vec<String> {
    let mut names: Vec<String> = grant.iter().map(|tool| tool.name.clone()).collect();
    names.sort();
    names
}

/// A client configuration asking for `tools` and presenting `grants`.
fn config(
    server: &TestServer,
    identity: &Identity,
    tools: &[&str],
    grants: Vec<String>,
) -> ClientConfig {
    ClientConfig::new(
        identity.clone(),
        vec![server.server_key],
        server.url.clone(),
        &mut rand_core::OsRng,
    )
    .with_cap_request(CapRequest {
        tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
        grants,
    })
}

async fn cap_grant(server: &TestServer, config: ClientConfig) -> (RawClient, CapGrant) {
    let mut raw = RawClient::handshake(&server.url, config).await;
    let grant = raw.expect_cap_grant().await;
    (raw, grant)
}

async fn expect_cap_update(raw: &mut RawClient) -> CapUpdate {
    match raw.expect_message().await {
        Message::CapUpdate(update) => update,
        other => panic!("expected CAP_UPDATE, got {other:?}"),
    }
}

/// The manifest of `signed`, checked as a client does.
fn manifest(signed: &SignedManifest, server: &IdentityKey) -> Manifest {
    Manifest::verify(signed, server).expect("the manifest verifies")
}

/// Clauses: GRT-034, MAN-001, MAN-003 — the server's first sealed message is
/// CAP_GRANT, carrying the manifest bytes as a Manifest whose `server` is the server
/// identity, signed by that identity over `PAE("toolwire/1 manifest", bytes)`.
#[tokio::test]
async fn the_first_sealed_message_is_cap_grant_with_the_signed_manifest() {
    let server = TestServer::start().await;
    // `raw_session` fails unless the very first message is CAP_GRANT.
    let (_raw, grant) = server.raw_session(&server.agent, Vec::new()).await;
    let signed = &grant.manifest;
    server
        .server_key
        .verify(
            &pae(&[MANIFEST_DOMAIN, &signed.manifest]),
            &signed.signature,
        )
        .expect("signed by the server identity over the PAE of the bytes");
    let decoded: Manifest = rmp_serde::from_slice(&signed.manifest).expect("a Manifest map");
    assert_eq!(decoded.server.as_ref(), server.server_key.as_bytes());
    let mut tools: Vec<&str> = decoded.tools.iter().map(|t| t.name.as_str()).collect();
    tools.sort_unstable();
    assert_eq!(tools, ["echo", "slow", "ticker"]);
    assert_eq!(decoded, manifest(signed, &server.server_key));
}

/// Clauses: MAN-002 — a server refuses to be built with two tools of one name, so
/// its manifest never lists a name twice; replacing a tool keeps names unique.
#[tokio::test]
async fn a_manifest_never_lists_a_tool_name_twice() {
    let identity = Identity::generate(&mut rand_core::OsRng);
    let probe = Arc::new(Probe::default());
    let built = Server::builder(identity, "ws://127.0.0.1:1/toolwire")
        .allow_client(Identity::generate(&mut rand_core::OsRng).public_key())
        .tool(echo_tool("one", &probe))
        .tool(echo_tool("two", &probe))
        .build();
    assert!(matches!(built, Err(BuildError::DuplicateTool(name)) if name == "echo"));

    let server = TestServer::start().await;
    server
        .server
        .replace_tool(echo_tool("Echoes, differently.", &probe))
        .expect("replaced");
    let (_raw, grant) = server.raw_session(&server.agent, Vec::new()).await;
    let decoded = manifest(&grant.manifest, &server.server_key);
    let mut tools: Vec<&str> = decoded.tools.iter().map(|t| t.name.as_str()).collect();
    tools.sort_unstable();
    assert_eq!(tools, ["echo", "slow", "ticker"]);
}

/// Clauses: GRT-035, MAN-009 — the granted set is the requested tools (all for
/// `"*"`) that exist and that the client's allowlist entry, or else one of its
/// verified grants, covers; each carries the digest of its entry in the manifest
/// sent with it.
#[tokio::test]
async fn the_granted_set_is_requested_and_allowed_tools_with_current_digests() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let limited = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let (issuer_key, limited_key) = (issuer.public_key(), limited.public_key());
    let server = TestServer::start_with(|builder| {
        builder
            .trust_grant_issuer(issuer_key)
            .allow_client_tools(limited_key, ["echo"])
    })
    .await;

    let (_raw, all) = cap_grant(&server, config(&server, &server.agent, &["*"], Vec::new())).await;
    assert_eq!(names(&all.granted), ["echo", "slow", "ticker"]);
    let decoded = manifest(&all.manifest, &server.server_key);
    for granted in &all.granted {
        let entry = decoded
            .tools
            .iter()
            .find(|tool| tool.name == granted.name)
            .expect("in the manifest");
        assert_eq!(granted.digest.as_ref(), entry.digest().as_slice());
    }

    let (_raw, some) = cap_grant(
        &server,
        config(
            &server,
            &server.agent,
            &["ticker", "no-such-tool"],
            Vec::new(),
        ),
    )
    .await;
    assert_eq!(names(&some.granted), ["ticker"]);

    let (_raw, allowed) = cap_grant(&server, config(&server, &limited, &["*"], Vec::new())).await;
    assert_eq!(names(&allowed.granted), ["echo"]);

    let token = grant(
        &issuer,
        &holder,
        &server.server_key,
        "g-ticker",
        &["ticker"],
        None,
    );
    let (_raw, by_grant) = cap_grant(
        &server,
        config(&server, &holder, &["*"], vec![token.clone()]),
    )
    .await;
    assert_eq!(names(&by_grant.granted), ["ticker"]);
    let (_raw, not_asked) =
        cap_grant(&server, config(&server, &holder, &["echo"], vec![token])).await;
    assert!(not_asked.granted.is_empty());
}

/// Clauses: GRT-036 — CAP_GRANT reports the rate, burst and in-flight limits the
/// server applies: the defaults (100/s, burst 200, 64) or the configured ones.
#[tokio::test]
async fn cap_grant_reports_the_call_limits_in_force() {
    let server = TestServer::start().await;
    let (_raw, grant) = server.raw_session(&server.agent, Vec::new()).await;
    assert_eq!(
        (
            grant.limits.rate_per_sec,
            grant.limits.burst,
            grant.limits.max_in_flight
        ),
        (100, 200, 64)
    );
    let mut limits = Limits::default();
    limits.rate_per_sec = 7;
    limits.burst = 9;
    limits.max_in_flight = 3;
    let server = TestServer::start_with(|builder| builder.limits(limits)).await;
    let (_raw, grant) = server.raw_session(&server.agent, Vec::new()).await;
    assert_eq!(
        (
            grant.limits.rate_per_sec,
            grant.limits.burst,
            grant.limits.max_in_flight
        ),
        (7, 9, 3)
    );
}

/// Clauses: GRT-037, GRT-039, GRT-035 — grants presented with CAP_REQUEST are
/// verified for this session and holder and added to the session's grants; every
/// CAP_REQUEST is answered with a CAP_UPDATE holding the complete new granted set,
/// and calls it covers run. A grant bound to this session is accepted, one bound to
/// another session or held by another identity is disregarded.
#[tokio::test]
async fn grants_presented_mid_session_extend_the_granted_set() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let issuer_key = issuer.public_key();
    let server = TestServer::start_with(|builder| builder.trust_grant_issuer(issuer_key)).await;
    let server_key = server.server_key;
    let ticker = grant(&issuer, &holder, &server_key, "g-ticker", &["ticker"], None);
    let (mut raw, first) = cap_grant(&server, config(&server, &holder, &["*"], vec![ticker])).await;
    assert_eq!(names(&first.granted), ["ticker"]);
    raw.send(Message::Request(raw.request(1, "echo", &text("early"))))
        .await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::PERMISSION_DENIED
    );

    // An empty CAP_REQUEST is answered too, with the unchanged set.
    raw.send(Message::CapRequest(CapRequest {
        tools: Vec::new(),
        grants: Vec::new(),
    }))
    .await;
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["ticker"]);

    // Grants that do not verify here are disregarded.
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let not_mine = grant(&issuer, &stranger, &server_key, "g-theirs", &["echo"], None);
    let other_session = grant(
        &issuer,
        &holder,
        &server_key,
        "g-old",
        &["echo"],
        Some([7; 32]),
    );
    raw.send(Message::CapRequest(CapRequest {
        tools: Vec::new(),
        grants: vec![not_mine, other_session],
    }))
    .await;
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["ticker"]);

    // A grant for echo bound to this very session.
    let bound = grant(
        &issuer,
        &holder,
        &server_key,
        "g-echo",
        &["echo"],
        Some(raw.session_id()),
    );
    raw.send(Message::CapRequest(CapRequest {
        tools: vec!["echo".into()],
        grants: vec![bound],
    }))
    .await;
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["echo", "ticker"]);
    assert!(update.revoked.is_empty());
    raw.send(Message::Request(raw.request(2, "echo", &text("now"))))
        .await;
    raw.expect_response(2).await;
    assert_eq!(server.probes.echo.runs(), 1);
}

/// Clauses: GRT-038 — of the grants of one CAP_REQUEST only the first 8 are
/// verified: a valid ninth grant is disregarded.
#[tokio::test]
async fn only_the_first_eight_grants_of_a_cap_request_count() {
    let issuer = Identity::generate(&mut rand_core::OsRng);
    let holder = Identity::generate(&mut rand_core::OsRng);
    let issuer_key = issuer.public_key();
    let server = TestServer::start_with(|builder| builder.trust_grant_issuer(issuer_key)).await;
    let server_key = server.server_key;
    let ticker = grant(&issuer, &holder, &server_key, "g-ticker", &["ticker"], None);
    let (mut raw, _) = cap_grant(&server, config(&server, &holder, &["*"], vec![ticker])).await;

    let echo = grant(&issuer, &holder, &server_key, "g-echo", &["echo"], None);
    let mut grants: Vec<String> = (0..8).map(|i| format!("v4.public.garbage{i}")).collect();
    grants.push(echo.clone());
    raw.send(Message::CapRequest(CapRequest {
        tools: Vec::new(),
        grants,
    }))
    .await;
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["ticker"]);
    raw.send(Message::Request(raw.request(1, "echo", &text("ninth"))))
        .await;
    assert_eq!(
        raw.expect_error(1).await.error_code(),
        ErrorCode::PERMISSION_DENIED
    );

    // The same grant in eighth position counts.
    let mut grants: Vec<String> = (0..7).map(|i| format!("v4.public.garbage{i}")).collect();
    grants.push(echo);
    raw.send(Message::CapRequest(CapRequest {
        tools: Vec::new(),
        grants,
    }))
    .await;
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["echo", "ticker"]);
    assert_eq!(server.probes.echo.runs(), 0);
}

/// Clauses: GRT-041, AUTHZ-008, MAN-009 — when a tool's definition changes, the
/// server sends CAP_UPDATE with the new signed manifest and a granted set without
/// the tool, and from then on checks calls against the set it last sent: a client
/// ignoring the update is refused PERMISSION_DENIED for the changed tool while the
/// others keep working.
#[tokio::test]
async fn the_server_authorizes_against_the_granted_set_it_last_sent() {
    let server = TestServer::start().await;
    let (mut raw, first) = server.raw_session(&server.agent, Vec::new()).await;
    assert_eq!(names(&first.granted), ["echo", "slow", "ticker"]);
    raw.send(Message::Request(raw.request(1, "echo", &text("before"))))
        .await;
    raw.expect_response(1).await;

    let replaced = Arc::new(Probe::default());
    server
        .server
        .replace_tool(echo_tool(
            "Echoes, and also mails it to a stranger.",
            &replaced,
        ))
        .expect("replaced");
    let update = expect_cap_update(&mut raw).await;
    assert_eq!(names(&update.granted), ["slow", "ticker"]);
    assert_eq!(update.revoked, ["echo"]);
    let signed = update.manifest.as_ref().expect("the changed manifest");
    let decoded = manifest(signed, &server.server_key);
    let new_echo = decoded
        .tools
        .iter()
        .find(|tool| tool.name == "echo")
        .expect("still offered");
    assert!(new_echo.description.contains("stranger"));
    for granted in &update.granted {
        let entry = decoded
            .tools
            .iter()
            .find(|tool| tool.name == granted.name)
            .expect("in the manifest");
        assert_eq!(granted.digest.as_ref(), entry.digest().as_slice());
    }

    raw.send(Message::Request(raw.request(2, "echo", &text("after"))))
        .await;
    assert_eq!(
        raw.expect_error(2).await.error_code(),
        ErrorCode::PERMISSION_DENIED
    );
    assert_eq!(replaced.runs(), 0);
    raw.send(Message::Request(raw.request(
        3,
        "ticker",
        &serde_json::json!({"count": 0}),
    )))
    .await;
    raw.expect_response(3).await;

    // A new session is granted the new definition.
    let (_raw, fresh) = server.raw_session(&server.agent, Vec::new()).await;
    let echo = fresh
        .granted
        .iter()
        .find(|tool| tool.name == "echo")
        .expect("granted again");
    assert_eq!(echo.digest.as_ref(), new_echo.digest().as_slice());
}

/// Clauses: MAN-010, MAN-011, GRT-041 — the real client pins the tools of the first
/// manifest; when a later manifest changes a pinned tool, the client replaces its
/// granted set with the update's and refuses calls to that tool locally with
/// MANIFEST_CHANGED — a local error, not the server's PERMISSION_DENIED, so no REQUEST
/// went out — while other tools keep working.
#[tokio::test]
async fn the_client_refuses_a_changed_tool_locally() {
    let server = TestServer::start().await;
    let session = server.agent_session().await;
    let pinned: Vec<String> = session.tools().into_iter().map(|tool| tool.name).collect();
    assert_eq!(pinned.len(), 3);
    assert_eq!(session.granted_tools(), ["echo", "slow", "ticker"]);

    let replaced = Arc::new(Probe::default());
    server
        .server
        .replace_tool(echo_tool(
            "Echoes, and also mails it to a stranger.",
            &replaced,
        ))
        .expect("replaced");
    within("CAP_UPDATE reaches the client", async {
        while session.granted_tools().contains(&"echo".to_owned()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(session.granted_tools(), ["slow", "ticker"]);
    for _ in 0..3 {
        let outcome = within("call", session.call("echo", &text("hi"))).await;
        assert_eq!(
            outcome,
            Err(CallError::ManifestChanged {
                tool: "echo".into()
            })
        );
    }
    assert_eq!(replaced.runs(), 0);
    assert_eq!(server.probes.echo.runs(), 0);
    let result = within(
        "other tool",
        session.call("ticker", &serde_json::json!({"count": 1})),
    )
    .await
    .expect("unchanged tools keep working");
    assert_eq!(result, serde_json::json!(1));
    // The pinned definitions are still the approved ones.
    let description = session
        .tools()
        .into_iter()
        .find(|tool| tool.name == "echo")
        .map(|tool| tool.description);
    assert_eq!(description.as_deref(), Some("Returns its arguments."));
}

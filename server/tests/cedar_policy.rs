//! Cedar policies as the per-call authorizer (feature `cedar`), over a real socket:
//! a Cedar `permit` lets a call through, a `forbid` on the arguments refuses it with
//! PERMISSION_DENIED without running the tool, a reloaded policy set takes effect on
//! the very next call of the same session, and anything Cedar cannot evaluate (float
//! arguments) is refused — fail closed. Deny reasons reach the audit log, not the peer.
//!
//! Clauses: AUTHZ-016, AUTHZ-017, AUTHZ-022.
#![cfg(feature = "cedar")]

mod common;

use common::{echo_tool, within, Probe};
use serde_json::json;
use std::sync::Arc;
use toolwire_client::{CallError, Client, Session};
use toolwire_server::cedar::{CedarAuthorizer, CedarError};
use toolwire_server::protocol::{ErrorCode, Identity};
use toolwire_server::Server;

fn policies(agent: &Identity) -> String {
    format!(
        r#"
        permit(principal == Toolwire::Client::"{agent}", action == Toolwire::Action::"call",
               resource == Toolwire::Tool::"echo");
        @id("no-secrets")
        forbid(principal, action, resource) when {{ context.args has text && context.args.text like "*secret*" }};
        "#,
        agent = agent.public_key()
    )
}

struct Fixture {
    session: Session,
    echo: Arc<Probe>,
    authorizer: CedarAuthorizer,
    audit: std::path::PathBuf,
    _dir: TempDir,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture() -> Fixture {
    let server_identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let dir = std::env::temp_dir().join(format!(
        "toolwire-cedar-{}-{}",
        std::process::id(),
        server_identity.public_key().fingerprint()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let audit = dir.join("audit.jsonl");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let echo = Arc::new(Probe::default());
    let authorizer = CedarAuthorizer::new(&policies(&agent)).expect("policies parse");
    let server = Server::builder(server_identity.clone(), url.clone())
        .allow_client(agent.public_key())
        .tool(echo_tool("Returns its arguments.", &echo))
        .authorizer(authorizer.clone())
        .audit_log(&audit)
        .build()
        .expect("server");
    let serving = tokio::spawn(async move {
        let _ = server.serve_listener(listener).await;
    });
    let session = within(
        "connect",
        Client::builder()
            .identity(agent)
            .pin_server(server_identity.public_key())
            .connect(&url),
    )
    .await
    .expect("connect");
    Fixture {
        session,
        echo,
        authorizer,
        audit,
        _dir: TempDir(dir),
        serving,
    }
}

fn assert_denied(outcome: Result<serde_json::Value, CallError>) {
    match outcome {
        Err(CallError::Rpc { code, message, .. }) => {
            assert_eq!(code, ErrorCode::PERMISSION_DENIED);
            assert!(
                !message.contains("Cedar"),
                "reason leaked to the peer: {message}"
            );
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test]
async fn permit_and_forbid_policies_decide_each_call() {
    let fixture = fixture().await;
    let ok = within(
        "call",
        fixture.session.call("echo", &json!({"text": "hello"})),
    )
    .await;
    assert_eq!(ok.expect("permitted"), json!({"text": "hello"}));
    assert_denied(
        within(
            "call",
            fixture.session.call("echo", &json!({"text": "my secret"})),
        )
        .await,
    );
    assert_eq!(fixture.echo.runs(), 1, "the forbidden call must not run");

    let log = audit_log_once_it_holds(&fixture.audit, "forbidden by Cedar policy no-secrets").await;
    assert!(
        log.contains("forbidden by Cedar policy no-secrets"),
        "the deny reason is in the audit log: {log}"
    );
}

/// The audit log's text once it contains `needle`, or after 5 s. The audit writer is
/// its own task: the entry of a refused call lands shortly after the refusal is sent.
async fn audit_log_once_it_holds(path: &std::path::Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) || tokio::time::Instant::now() >= deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reloaded_policy_applies_to_the_next_call_of_the_same_session() {
    let fixture = fixture().await;
    within("call", fixture.session.call("echo", &json!({"text": "a"})))
        .await
        .expect("permitted");
    // Bad text is refused and the old policies stay in force.
    assert!(matches!(
        fixture.authorizer.reload("permit(principal,", None),
        Err(CedarError::Policies(_))
    ));
    within("call", fixture.session.call("echo", &json!({"text": "b"})))
        .await
        .expect("still permitted");
    fixture
        .authorizer
        .reload("forbid(principal, action, resource);", None)
        .expect("reload");
    assert_denied(within("call", fixture.session.call("echo", &json!({"text": "c"}))).await);
    assert_eq!(fixture.echo.runs(), 2);
}

#[tokio::test]
async fn arguments_cedar_cannot_evaluate_are_refused() {
    let fixture = fixture().await;
    // Cedar has no floating-point numbers: fail closed rather than skip the forbid.
    assert_denied(
        within(
            "call",
            fixture
                .session
                .call("echo", &json!({"text": "x", "ratio": 0.5})),
        )
        .await,
    );
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({ "inner": deep });
    }
    assert_denied(
        within(
            "call",
            fixture
                .session
                .call("echo", &json!({"text": "x", "deep": deep})),
        )
        .await,
    );
    assert_eq!(fixture.echo.runs(), 0);
}

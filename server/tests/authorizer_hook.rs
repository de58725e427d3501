//! The policy hook of `ServerBuilder::authorizer`: step 4 of the authorization
//! pipeline consults it after the allowlist. A call the allowlist refuses never
//! reaches the hook; a call the hook refuses is answered PERMISSION_DENIED, without
//! the hook's reason (it goes to the decision record only).
//!
//! Clauses: AUTHZ-016, AUTHZ-017, AUTHZ-022.

use serde_json::json;
use std::sync::{Arc, Mutex};
use toolwire_client::{CallError, Client};
use toolwire_server::protocol::authz::{AuthorizationRequest, Authorizer, Decision};
use toolwire_server::protocol::{ErrorCode, Identity};
use toolwire_server::{Server, Tool};

/// Allows calls whose argument `n` is below 10, and records the tools it is asked
/// about.
struct SmallNumbersOnly {
    asked: Arc<Mutex<Vec<String>>>,
}

impl Authorizer for SmallNumbersOnly {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        self.asked
            .lock()
            .expect("not poisoned")
            .push(request.tool.to_owned());
        let args: serde_json::Value = rmp_serde::from_slice(request.args).unwrap_or_default();
        if args["n"].as_i64().unwrap_or(0) < 10 {
            Decision::Allow
        } else {
            Decision::deny("secret reason: n too large")
        }
    }
}

fn echo(name: &str) -> Tool {
    Tool::new(
        name,
        "Returns its arguments.",
        json!({"type": "object"}),
        |args, _context| async move { Ok(args) },
    )
}

#[tokio::test]
async fn hook_is_consulted_after_the_allowlist_and_its_refusals_are_permission_denied() {
    let server_identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/toolwire", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let server = Server::builder(server_identity.clone(), url.clone())
        .allow_client_tools(agent.public_key(), ["echo"])
        .tool(echo("echo"))
        .tool(echo("other"))
        .authorizer(SmallNumbersOnly {
            asked: asked.clone(),
        })
        .build()
        .unwrap();
    let serving = tokio::spawn(async move { server.serve_listener(listener).await });
    let session = Client::builder()
        .identity(agent)
        .pin_server(server_identity.public_key())
        .request_tools(["echo", "other"])
        .connect(&url)
        .await
        .unwrap();

    assert_eq!(
        session.call("echo", &json!({"n": 1})).await.unwrap(),
        json!({"n": 1})
    );
    match session.call("echo", &json!({"n": 11})).await {
        Err(CallError::Rpc { code, message, .. }) => {
            assert_eq!(code, ErrorCode::PERMISSION_DENIED);
            assert!(!message.contains("secret reason"), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    // Not in the client's allowlist: refused before the hook is asked.
    match session.call("other", &json!({"n": 1})).await {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, ErrorCode::PERMISSION_DENIED),
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    assert_eq!(*asked.lock().unwrap(), ["echo", "echo"]);
    serving.abort();
}

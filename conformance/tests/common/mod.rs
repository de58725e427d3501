//! A reference server on loopback for the suite's own tests: `echo` (returns its
//! arguments), `counter` (returns how often it ran: a re-execution changes the
//! result), `slow` (two seconds; returns how often it started), `stream` (three
//! items), `big` (a result larger than a record), `bulk` (streams up to 128 MiB)
//! and `admin` (offered, but not granted to the suite's identity).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use toolwire_conformance::server::{ServerOptions, ToolCall};
use toolwire_server::protocol::{Identity, IdentityKey};
use toolwire_server::{DangerousServerBuilder, Server, ServerBuilder, Tool};

/// A server serving on `127.0.0.1:0`, stopped when dropped.
pub struct RunningServer {
    pub url: String,
    pub server_key: IdentityKey,
    /// The identity the server allows (every tool but admin).
    pub client: Identity,
    /// A second identity the server allows.
    pub other: Identity,
    /// A grant issuer the server trusts.
    pub issuer: Identity,
    /// The server's identity (its secret must never appear in the audit log).
    pub identity: Identity,
    /// The server's audit log.
    pub audit_log: std::path::PathBuf,
    /// The server, for a graceful shutdown.
    pub server: Server,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

fn tools() -> Vec<Tool> {
    let runs = Arc::new(AtomicU64::new(0));
    let slow_runs = Arc::new(AtomicU64::new(0));
    vec![
        Tool::new(
            "echo",
            "Returns its arguments.",
            serde_json::json!({"type": "object"}),
            |args, _| async move { Ok(args) },
        ),
        Tool::new(
            "counter",
            "Returns how many times it has run.",
            serde_json::json!({"type": "object"}),
            move |_, _| {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok(serde_json::json!({ "run": run })) }
            },
        ),
        Tool::new(
            "slow",
            "Takes two seconds; returns how many times it has started (AMO-011: a second run shows).",
            serde_json::json!({"type": "object"}),
            move |_, _| {
                let run = slow_runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(serde_json::json!({ "slow": run }))
                }
            },
        ),
        Tool::new(
            "stream",
            "Streams three items, then returns.",
            serde_json::json!({"type": "object"}),
            |_, context| async move {
                for index in 0..3 {
                    if context
                        .send_item(serde_json::json!({ "item": index }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(serde_json::json!("done"))
            },
        ),
        Tool::new(
            "big",
            "Returns a 70,000-byte string: larger than one record can carry (REC-014).",
            serde_json::json!({"type": "object"}),
            |_, _| async move { Ok(serde_json::json!("x".repeat(70_000))) },
        ),
        Tool::new(
            "bulk",
            "Streams up to 128 MiB in 4 KiB items as fast as its caller reads (LIM-004).",
            serde_json::json!({"type": "object"}),
            |_, context| async move {
                let item = serde_json::json!("b".repeat(4096));
                for _ in 0..32_768 {
                    if context.send_item(item.clone()).await.is_err() {
                        break;
                    }
                }
                Ok(serde_json::json!("done"))
            },
        ),
        Tool::new(
            "admin",
            "Not granted to the conformance identity.",
            serde_json::json!({"type": "object"}),
            |_, _| async move { Ok(serde_json::json!("ran")) },
        ),
    ]
}

/// Starts a reference server; `dangerous` may inject faults.
pub async fn start(
    dangerous: impl FnOnce(DangerousServerBuilder) -> DangerousServerBuilder,
) -> RunningServer {
    start_as(Identity::generate(&mut rand_core::OsRng), dangerous).await
}

/// Starts a reference server with this identity.
pub async fn start_as(
    identity: Identity,
    dangerous: impl FnOnce(DangerousServerBuilder) -> DangerousServerBuilder,
) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("ws://{}/toolwire", listener.local_addr().expect("address"));
    let client = Identity::generate(&mut rand_core::OsRng);
    let other = Identity::generate(&mut rand_core::OsRng);
    let issuer = Identity::generate(&mut rand_core::OsRng);
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let audit_log = std::env::temp_dir().join(format!(
        "toolwire-conformance-audit-{}-{}.jsonl",
        std::process::id(),
        STARTS.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&audit_log);
    let mut builder: ServerBuilder = Server::builder(identity.clone(), url.clone())
        .allow_client_tools(
            client.public_key(),
            ["echo", "counter", "slow", "stream", "big", "bulk"],
        )
        .allow_client_tools(other.public_key(), ["echo", "counter"])
        .trust_grant_issuer(issuer.public_key())
        .allow_origin("https://app.conformance.invalid")
        .audit_log(audit_log.clone());
    for tool in tools() {
        builder = builder.tool(tool);
    }
    let server = dangerous(builder.dangerous())
        .done()
        .build()
        .expect("server configuration");
    let serving_server = server.clone();
    let serving = tokio::spawn(async move {
        let _ = serving_server.serve_listener(listener).await;
    });
    RunningServer {
        url,
        server_key: identity.public_key(),
        client,
        other,
        issuer,
        identity,
        audit_log,
        server,
        serving,
    }
}

/// The options the suite runs with against `server`.
pub fn options_for(server: &RunningServer) -> ServerOptions {
    let mut options = options();
    options.other_identity = Some(server.other.clone());
    options.issuer = Some(server.issuer.clone());
    let revoking = server.server.clone();
    options.revoke = Some(toolwire_conformance::server::Revoker(Arc::new(
        move |jti| {
            revoking.revoke_grant(jti);
        },
    )));
    let probed = server.server.clone();
    options.budget_entries = Some(toolwire_conformance::server::BudgetProbe(Arc::new(
        move || probed.rate_budget_entries().per_tool,
    )));
    options
}

/// The options the suite runs with against this server.
pub fn options() -> ServerOptions {
    let mut options = ServerOptions::default();
    options.ungranted_tool = Some("admin".to_owned());
    options.call = Some(ToolCall {
        tool: "counter".to_owned(),
        args: serde_json::json!({}),
    });
    options.allowed_origin = Some("https://app.conformance.invalid".to_owned());
    options.stream_call = Some(ToolCall {
        tool: "stream".to_owned(),
        args: serde_json::json!({}),
    });
    options.slow_call = Some(ToolCall {
        tool: "slow".to_owned(),
        args: serde_json::json!({}),
    });
    options.big_result_call = Some(ToolCall {
        tool: "big".to_owned(),
        args: serde_json::json!({}),
    });
    options.step = Duration::from_secs(5);
    options
}

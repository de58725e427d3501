//! `toolwire call` and `toolwire tools`: an agent that connects, calls or lists, and
//! leaves.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use toolwire_client::{CallError, Client, ConnectError, Session, StreamEvent};
use toolwire_protocol::{CloseCode, IdentityKey};

/// How to reach and authenticate to a tool server.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The server's URL, exactly as the server is configured (ws://127.0.0.1:7700/toolwire).
    #[arg(value_name = "URL")]
    url: String,
    /// Your identity file (from `toolwire keygen`).
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The server's identity key: the connection is refused unless the server
    /// proves it holds this key.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key, required_unless_present = "trust_operators")]
    server_key: Option<IdentityKey>,
    /// Trust any server whose key this operator key certified (`toolwire cert issue`),
    /// instead of (or besides) pinning --server-key (repeatable).
    #[arg(long = "trust-operator", value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    trust_operators: Vec<IdentityKey>,
    /// A capability grant to present (a token from `toolwire grant issue`; repeatable).
    #[arg(long = "grant", value_name = "TOKEN")]
    grants: Vec<String>,
    /// DANGEROUS: allow plain ws:// to a host that is not loopback. Records stay
    /// encrypted and authenticated, but the upgrade request travels in clear.
    #[arg(long)]
    allow_plaintext: bool,
}

/// Arguments of `toolwire call`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The result is printed to stdout as JSON; streamed items go to stderr as they arrive.\nOn failure the error code (e.g. PERMISSION_DENIED(7)) is printed to stderr and the exit status is 1 (3 if the server could not be reached or the handshake failed).\n\nExample:\n  toolwire call ws://127.0.0.1:7700/toolwire calc '{\"a\":6,\"op\":\"*\",\"b\":7}' --identity agent.key --server-key <server key>"
)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The tool to call.
    #[arg(value_name = "TOOL")]
    tool: String,
    /// The arguments, as a JSON object.
    #[arg(value_name = "ARGS_JSON", default_value = "{}")]
    args: String,
    /// Give up (and cancel the call) after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
}

/// Arguments of `toolwire tools`.
#[derive(Debug, clap::Args)]
pub(crate) struct ToolsArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print the manifest as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Connects, with a readable error and a hint for the usual mistakes.
async fn connect(args: &ConnectArgs) -> CliResult<Session> {
    let identity = identity_file::read(&args.identity)?;
    let me = identity.public_key();
    let mut builder = Client::builder().identity(identity);
    if let Some(key) = args.server_key {
        builder = builder.pin_server(key);
    }
    for key in &args.trust_operators {
        builder = builder.trust_operator(*key);
    }
    for grant in &args.grants {
        builder = builder.present_grant(grant.trim());
    }
    if args.allow_plaintext {
        builder = builder.dangerous().allow_plaintext().done();
    }
    tracing::info!(url = %args.url, identity = %me, "connecting");
    builder.connect(&args.url).await.map_err(|error| {
        CliError::connect(format!(
            "cannot connect to {}: {error}{}",
            args.url,
            connect_hint(&error, &args.url, &me)
        ))
    })
}

/// A hint for the usual mistakes behind a failed connect.
fn connect_hint(error: &ConnectError, url: &str, me: &IdentityKey) -> String {
    match error {
        // Our side refused: the server proved another identity than the pinned one.
        ConnectError::Handshake {
            code: CloseCode::AUTH_FAILED,
            ..
        } => "\nhint: --server-key must be the key the server prints at start (`toolwire pubkey SERVER.key`)".to_owned(),
        // The server refused us.
        ConnectError::Closed {
            code: CloseCode::AUTH_FAILED,
            ..
        } => format!(
            "\nhint: the server must allow your key {me} (serve --allow-client), or you must present a grant for it (--grant)"
        ),
        ConnectError::Handshake {
            code: CloseCode::HANDSHAKE_FAILED,
            ..
        } => "\nhint: the URL must be exactly the server's public URL (serve --url); it is bound into the handshake".to_owned(),
        ConnectError::InsecureOrInvalidUrl(_) if url.starts_with("ws://") => {
            "\nhint: plain ws:// is only allowed to loopback; --allow-plaintext overrides that (dangerous)".to_owned()
        }
        _ => String::new(),
    }
}

/// The close code a failed connect ended with, if it got that far.
pub(crate) fn connect_close_code(error: &ConnectError) -> Option<CloseCode> {
    match error {
        ConnectError::Handshake { code, .. } | ConnectError::Closed { code, .. } => Some(*code),
        _ => None,
    }
}

/// Closes the session and waits briefly for the authenticated CLOSE to go out.
async fn close(session: Session) {
    session.close();
    for _ in 0..30 {
        if session.close_code().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn run_call(args: CallArgs) -> CliResult {
    let call_args: Value = serde_json::from_str(&args.args)
        .map_err(|error| CliError::new(format!("ARGS_JSON is not valid JSON: {error}")))?;
    let session = connect(&args.connect).await?;
    let outcome = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        stream_call(&session, &args.tool, &call_args),
    )
    .await;
    close(session).await;
    let result = match outcome {
        Ok(result) => result,
        Err(_) => {
            return Err(CliError::new(format!(
                "{} did not answer within {} s (the call was cancelled)",
                args.tool, args.timeout
            )))
        }
    };
    match result {
        Ok(value) => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
            );
            Ok(())
        }
        Err(error) => Err(CliError::new(describe_call_error(&args.tool, &error))),
    }
}

/// Calls `tool`, printing streamed items to stderr, and returns the final result.
async fn stream_call(session: &Session, tool: &str, args: &Value) -> Result<Value, CallError> {
    let mut stream = session.stream(tool, args)?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Item(item) => errln!("item: {item}"),
            StreamEvent::Done(result) => return Ok(result),
        }
    }
    Err(CallError::ConnectionClosed {
        code: session.close_code().unwrap_or(CloseCode::GOING_AWAY),
    })
}

/// `tool refused: PERMISSION_DENIED(7): …` and friends.
pub(crate) fn describe_call_error(tool: &str, error: &CallError) -> String {
    match error {
        CallError::Rpc {
            retry_after_ms: Some(wait),
            ..
        } => format!("{tool} refused: {error} (retry after {wait} ms)"),
        CallError::Rpc { .. } => format!("{tool} refused: {error}"),
        CallError::ManifestChanged { .. } => format!("MANIFEST_CHANGED: {error}"),
        other => format!("{tool} failed: {other}"),
    }
}

pub(crate) async fn run_tools(args: ToolsArgs) -> CliResult {
    let session = connect(&args.connect).await?;
    let server = session.server_key();
    let granted = session.granted_tools();
    let tools = session.tools();
    close(session).await;
    let schema = |text: &str| -> Value {
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
    };
    if args.json {
        let entries: Vec<Value> = tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": schema(&tool.input_schema),
                    "output_schema": schema(&tool.output_schema),
                    "digest": hex::encode(tool.digest()),
                    "granted": granted.contains(&tool.name),
                })
            })
            .collect();
        let document = json!({
            "server": server.map(|key| key.to_string()),
            "tools": entries,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string())
        );
        return Ok(());
    }
    if let Some(server) = server {
        outln!(
            "tool server {} ({}): manifest signature verified",
            server.fingerprint(),
            server
        );
    }
    outln!("{} tool(s), {} granted to you", tools.len(), granted.len());
    for tool in &tools {
        let granted = if granted.contains(&tool.name) {
            "granted"
        } else {
            "not granted"
        };
        outln!();
        outln!("{}  ({granted})", tool.name);
        outln!("  {}", tool.description);
        outln!("  input   {}", schema(&tool.input_schema));
        if !tool.output_schema.is_empty() {
            outln!("  output  {}", schema(&tool.output_schema));
        }
        outln!("  digest  {}", hex::encode(tool.digest()));
    }
    Ok(())
}

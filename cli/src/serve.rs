//! `toolwire serve`: a tool server with the example tools.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use crate::tools::{self, Sandbox};
use std::path::PathBuf;
use tokio::net::TcpListener;
use toolwire_protocol::IdentityKey;
use toolwire_server::Server;

/// Arguments of `toolwire serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  toolwire keygen --out server.key\n  toolwire keygen --out agent.key\n  toolwire serve --identity server.key --listen 127.0.0.1:7700 --allow-client <agent key> --sandbox ./shared"
)]
pub(crate) struct ServeArgs {
    /// The server's identity file (from `toolwire keygen`).
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7700 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The exact URL clients dial; it is bound into the handshake. Default:
    /// ws://LISTEN_ADDRESS/toolwire. Required behind a proxy or when listening on all
    /// interfaces.
    #[arg(long, value_name = "PUBLIC_URL")]
    url: Option<String>,
    /// A client identity key allowed to call every tool (repeatable).
    #[arg(long = "allow-client", value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    allow_clients: Vec<IdentityKey>,
    /// Trust capability grants signed by this key (repeatable).
    #[arg(long = "grant-issuer", value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    grant_issuers: Vec<IdentityKey>,
    /// A browser origin allowed to connect (repeatable), written as the browser
    /// sends it: scheme://host or scheme://host:port. Default: none; requests from
    /// any browser page are refused with 403.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
    /// Folder `read_file` may read inside. Without it, `read_file` is not offered.
    #[arg(long, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    /// Keep an audit log: one hash-chained JSON line per call decision with the
    /// signed request and response, and heads signed by the server key. An existing
    /// log is continued. Check it with `toolwire audit verify PATH --server-key KEY`.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Present this operator certificate of the server's key (from `toolwire cert
    /// issue`), so agents trusting the operator need not pin the server key.
    #[arg(long, value_name = "FILE")]
    certificate: Option<PathBuf>,
    /// Keep the at-most-once table (request ids and cached results of every client's
    /// call lineage) in this database file, so that after a restart a retried call is
    /// answered with its original result, or RESULT_UNAVAILABLE if it was running,
    /// and never runs twice. Created when missing.
    #[arg(long = "amo-store", value_name = "PATH")]
    amo_store: Option<PathBuf>,
}

/// On Ctrl-C, how long calls in flight may still run before they are answered
/// UNAVAILABLE and the connections closed (GOING_AWAY).
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn run(args: ServeArgs) -> CliResult {
    let identity = identity_file::read(&args.identity)?;
    if args.allow_clients.is_empty() && args.grant_issuers.is_empty() {
        return Err(CliError::new(
            "no client could ever connect: pass --allow-client KEY and/or --grant-issuer KEY",
        ));
    }
    let sandbox = args
        .sandbox
        .as_deref()
        .map(Sandbox::new)
        .transpose()
        .map_err(CliError::new)?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|error| CliError::new(format!("cannot listen on {}: {error}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError::new(format!("cannot read the listening address: {error}")))?;
    let url = match &args.url {
        Some(url) => url.clone(),
        None if address.ip().is_unspecified() => {
            return Err(CliError::new(format!(
                "listening on all interfaces ({address}): pass --url with the URL clients dial (it is bound into the handshake)"
            )))
        }
        None => format!("ws://{address}/toolwire"),
    };
    if url.starts_with("ws://") && !address.ip().is_loopback() {
        errln!("warning: plain ws:// off loopback: put a TLS-terminating proxy in front and pass its wss:// URL with --url");
    }

    let sandbox_root = sandbox.as_ref().map(|sandbox| sandbox.root().to_path_buf());
    let tools = tools::all(sandbox);
    let tool_names: Vec<String> = tools
        .iter()
        .map(|tool| tool.descriptor().name.clone())
        .collect();
    let mut builder = Server::builder(identity, url.clone());
    for key in &args.allow_clients {
        builder = builder.allow_client(*key);
    }
    for key in &args.grant_issuers {
        builder = builder.trust_grant_issuer(*key);
    }
    for origin in &args.allow_origins {
        builder = builder.allow_origin(origin.clone());
    }
    for tool in tools {
        builder = builder.tool(tool);
    }
    if let Some(path) = &args.audit_log {
        builder = builder.audit_log(path);
    }
    if let Some(path) = &args.certificate {
        builder = builder.certificate(crate::cert::read_token(path)?);
    }
    if let Some(path) = &args.amo_store {
        builder = builder.at_most_once_store(path);
    }
    let server = builder
        .build()
        .map_err(|error| CliError::new(format!("invalid server configuration: {error}")))?;

    let key = server.public_key();
    outln!("toolwire tool server");
    outln!("  key          {key}");
    outln!("  fingerprint  {}", key.fingerprint());
    outln!("  listening    {address}");
    outln!("  url          {url}");
    outln!(
        "  clients      {} allowed key(s), {} trusted grant issuer(s)",
        args.allow_clients.len(),
        args.grant_issuers.len()
    );
    if args.allow_origins.is_empty() {
        outln!("  origins      none (browser pages are refused)");
    } else {
        outln!("  origins      {}", args.allow_origins.join(", "));
    }
    outln!("  tools        {}", tool_names.join(", "));
    if let Some(root) = sandbox_root {
        outln!("  sandbox      {}", root.display());
    }
    if let Some(path) = &args.audit_log {
        outln!("  audit log    {}", path.display());
    }
    if let Some(path) = &args.amo_store {
        outln!("  amo store    {}", path.display());
    }
    outln!("An agent calls it with:");
    outln!(
        "  toolwire call {url} echo '{{\"text\":\"hi\"}}' --identity AGENT.key --server-key {key}"
    );
    outln!("Press Ctrl-C to stop.");

    tokio::select! {
        served = server.serve_listener(listener) => {
            served.map_err(|error| CliError::new(format!("the server stopped: {error}")))
        }
        signal = tokio::signal::ctrl_c() => {
            signal.map_err(|error| CliError::new(format!("cannot wait for Ctrl-C: {error}")))?;
            errln!(
                "stopping: calls in flight may finish for up to {} s",
                SHUTDOWN_DEADLINE.as_secs()
            );
            let report = server.shutdown(SHUTDOWN_DEADLINE).await.map_err(|error| {
                CliError::new(format!("stopped, but the audit log is incomplete: {error}"))
            })?;
            if report.interrupted_calls > 0 {
                errln!("{} call(s) interrupted (answered UNAVAILABLE)", report.interrupted_calls);
            }
            if let Some(audit) = report.audit {
                errln!(
                    "audit log {}: {} entries written, ending with a signed head",
                    audit.path.display(),
                    audit.entries
                );
            }
            Ok(())
        }
    }
}

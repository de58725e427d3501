//! A tool server with two tools, `echo` and `add`, for one allowed agent.
//!
//! ```text
//! cargo run -p toolwire-server --example echo_tool_server -- \
//!     --allow-client <AGENT_KEY> [--identity server.key] [--listen 127.0.0.1:7700] \
//!     [--url <PUBLIC_URL>] [--tls-cert chain.pem --tls-key key.pem]
//! ```
//!
//! - `--allow-client KEY` (repeatable, required): an agent identity key allowed to call
//!   every tool (`toolwire pubkey agent.key`).
//! - `--identity FILE`: the server identity, an identity file as written by
//!   `toolwire keygen`. Without it a fresh identity is generated for this run only.
//! - `--listen ADDR`: where to listen, default `127.0.0.1:7700` (`127.0.0.1:0` picks a
//!   free port).
//! - `--tls-cert FILE --tls-key FILE`: terminate TLS (`wss://`) with this PEM
//!   certificate chain and key; otherwise plain `ws://`, for loopback only.
//! - `--url URL`: the public URL clients dial, bound into the handshake (behind a
//!   TLS-terminating proxy, the proxy's `wss://` URL). Default: `ws://` or `wss://`
//!   followed by the listening address and `/toolwire`.
//!
//! It prints two lines on stdout, then serves until interrupted:
//!
//! ```text
//! server key: <the identity key clients pin>
//! url: ws://127.0.0.1:7700/toolwire
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::io::Write as _;
use std::path::PathBuf;
use tokio::net::TcpListener;
use toolwire_server::protocol::{Identity, IdentityKey};
use toolwire_server::{Server, TlsConfig, Tool, ToolError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Args {
    allow: Vec<IdentityKey>,
    identity: Option<PathBuf>,
    listen: Option<String>,
    url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args::default();
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let mut value = || words.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--allow-client" => args.allow.push(value()?.trim().parse()?),
            "--identity" => args.identity = Some(value()?.into()),
            "--listen" => args.listen = Some(value()?),
            "--url" => args.url = Some(value()?),
            "--tls-cert" => args.tls_cert = Some(value()?.into()),
            "--tls-key" => args.tls_key = Some(value()?.into()),
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if args.allow.is_empty() {
        return Err("pass at least one --allow-client KEY (`toolwire pubkey agent.key`)".into());
    }
    Ok(args)
}

/// Reads an identity file of `toolwire keygen`: a header line, then the unpadded
/// base64url of the 32-byte seed.
fn read_identity(path: &PathBuf) -> Result<Identity, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("toolwire-identity-v1") {
        return Err(format!("{} is not a toolwire identity file", path.display()).into());
    }
    let seed = URL_SAFE_NO_PAD.decode(lines.next().unwrap_or_default().trim())?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| format!("{}: the seed is not 32 bytes", path.display()))?;
    Ok(Identity::from_seed(&seed))
}

fn tools() -> Vec<Tool> {
    let echo = Tool::new(
        "echo",
        "Returns its arguments.",
        serde_json::json!({
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"]
        }),
        |args, _context| async move { Ok(args) },
    );
    let add = Tool::new(
        "add",
        "Adds two numbers: {a, b} -> {sum}.",
        serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]
        }),
        |args, _context| async move {
            let (a, b) = (&args["a"], &args["b"]);
            if let Some(sum) = a
                .as_i64()
                .zip(b.as_i64())
                .and_then(|(a, b)| a.checked_add(b))
            {
                return Ok(serde_json::json!({"sum": sum}));
            }
            match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => Ok(serde_json::json!({"sum": a + b})),
                _ => Err(ToolError::invalid_argument("a and b must be numbers")),
            }
        },
    );
    vec![echo, add]
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo_tool_server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let identity = match &args.identity {
        Some(path) => read_identity(path)?,
        None => {
            eprintln!("no --identity given: using a fresh identity for this run only");
            Identity::generate(&mut rand_core::OsRng)
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let listener = TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:7700")).await?;
    let address = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let url = args
        .url
        .unwrap_or_else(|| format!("{scheme}://{address}/toolwire"));

    let mut builder = Server::builder(identity, url.clone());
    for key in args.allow {
        builder = builder.allow_client(key);
    }
    for tool in tools() {
        builder = builder.tool(tool);
    }
    let server = builder.build()?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "server key: {}", server.public_key())?;
    writeln!(stdout, "url: {url}")?;
    stdout.flush()?;
    drop(stdout);

    match tls {
        Some(tls) => server.serve_tls_listener(listener, tls).await?,
        None => server.serve_listener(listener).await?,
    }
    Ok(())
}

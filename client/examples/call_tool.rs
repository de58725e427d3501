//! An agent that connects to a tool server, calls one tool and prints the result.
//!
//! ```text
//! cargo run -p toolwire-client --example call_tool -- \
//!     <URL> <SERVER_KEY> <IDENTITY_FILE> [TOOL] [ARGS_JSON] [--ca-cert ca.pem]
//! ```
//!
//! - `URL`: the server's URL exactly as it is configured (it prints it at start);
//!   `wss://`, or plain `ws://` to loopback.
//! - `SERVER_KEY`: the server's identity key; the connection is refused unless the
//!   server proves it holds this key.
//! - `IDENTITY_FILE`: the agent's identity, a file written by `toolwire keygen`.
//! - `TOOL`, `ARGS_JSON`: what to call; default `echo` with
//!   `{"text":"hello from call_tool"}`.
//! - `--ca-cert FILE`: also trust this PEM CA certificate for `wss://` (a private CA
//!   or a self-signed server certificate).
//!
//! The result goes to stdout as one line of JSON; errors go to stderr with exit
//! status 1.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::path::Path;
use std::time::Duration;
use toolwire_client::protocol::{Identity, IdentityKey};
use toolwire_client::{CallOptions, Client};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads an identity file of `toolwire keygen`: a header line, then the unpadded
/// base64url of the 32-byte seed.
fn read_identity(path: &Path) -> Result<Identity, BoxError> {
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("call_tool: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let mut positional = Vec::new();
    let mut ca_cert = None;
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        if word == "--ca-cert" {
            ca_cert = Some(words.next().ok_or("--ca-cert needs a file")?);
        } else {
            positional.push(word);
        }
    }
    let [url, server_key, identity, rest @ ..] = positional.as_slice() else {
        return Err(
            "usage: call_tool <URL> <SERVER_KEY> <IDENTITY_FILE> [TOOL] [ARGS_JSON] [--ca-cert FILE]"
                .into(),
        );
    };
    let server_key: IdentityKey = server_key.trim().parse()?;
    let tool = rest.first().map_or("echo", String::as_str);
    let args: serde_json::Value = match rest.get(1) {
        Some(json) => serde_json::from_str(json)?,
        None => serde_json::json!({"text": "hello from call_tool"}),
    };

    let mut builder = Client::builder()
        .identity(read_identity(Path::new(identity))?)
        .pin_server(server_key);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(&path).map_err(|error| format!("cannot read {path}: {error}"))?;
        builder = builder.root_certificates_pem(&pem)?;
    }
    let session = builder.connect(url).await?;
    let result = session
        .call_with(
            tool,
            &args,
            CallOptions::with_timeout(Duration::from_secs(30)),
        )
        .await?;
    println!("{result}");
    session.close();
    Ok(())
}

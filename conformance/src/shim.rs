//! The shim contract of client mode (BoringSSL BoGo style), and the shim of our own
//! client.
//!
//! In client mode the suite plays the server and runs the client under test once per
//! case as a command, `SHIM --url=URL --server-key=KEY --identity-file=FILE
//! --case=NAME --tool=TOOL --args-hex=HEX --calls=N` (always `--flag=value`: a key
//! text may begin with `-`):
//!
//! - connect to `--url` (a `ws://127.0.0.1:PORT/toolwire` URL the suite listens on),
//!   pinning `--server-key` (text form, ID-006), as the identity in `--identity-file`
//!   (the identity file format of `toolwire keygen`);
//! - call `--tool` with the msgpack argument bytes `--args-hex`, `--calls` times in a
//!   row on the one connection (each call a new request id), stopping at the first
//!   failure; then close the session normally;
//! - print as the **last line of stdout** one JSON object, [`ShimReport`]:
//!   `{"outcome":"result","calls_completed":1,"result_hex":"81a1…"}` or
//!   `{"outcome":"error","calls_completed":0,"error":"connection_closed","close_code":4003}`;
//! - exit 0 when every call returned a result, [`EXIT_UNIMPLEMENTED`] (89) when the
//!   shim does not implement something the case needs (`--case` names it), any other
//!   status after a failure.
//!
//! `error` is one of the typed errors of [`ERRORS`]; `close_code` is the close code
//! the client reports (the one it closed with, or the peer's CLOSE code), `rpc_code`
//! the RPC error code of an ERROR answer. `--case` is informational: a shim never
//! needs it to behave correctly, only to answer 89 for features it lacks.
//!
//! Optional flags (a shim that does not implement one exits 89 when it is given):
//!
//! - `--trust-operator=KEY`: do **not** pin `--server-key` (it is still passed, for
//!   information); trust the operator key KEY instead, accepting the server only when
//!   its `ServerHello.certificate` verifies under it (ID-011, ID-013, ID-014);
//! - `--hold-ms=N` (default 0): after the calls, keep the session open and idle for up
//!   to N ms (ending sooner when the connection closes), then close it; the keepalive
//!   (LIFE-006, LIM-007) and session-lifetime (LIFE-003) cases use it.
//!
//! `--server-key` is parsed strictly as the text form of ID-006/ID-007: a shim given
//! a malformed key text makes no connection and exits non-zero (with `error`
//! `bad_key` when it prints a report).
//!
//! Optional report fields, stated by the client library itself (absent when it does
//! not provide them; the cases needing them are then UNIMPLEMENTED):
//!
//! - `retryable` (bool), with `error` `rpc`: whether the client library classifies
//!   the call's error as retryable (ERR-003);
//! - `manifest_hash` (hex): the manifest hash (MAN-008) of the server's signed
//!   manifest as the client computed it, in every report after a connect succeeded.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use toolwire_client::{CallError, CallOptions, Client, ClientBuilder, ConnectError};
use toolwire_protocol::{Identity, IdentityKey};

/// Exit status of a shim that does not implement what the case needs.
pub const EXIT_UNIMPLEMENTED: i32 = 89;

/// The typed errors a shim reports in `ShimReport::error`.
pub const ERRORS: &[&str] = &[
    "handshake_failed",  // the handshake failed (close_code: the code closed with)
    "closed",            // the connection closed during connect (close_code)
    "connection_closed", // the connection closed before a call was answered (close_code)
    "bad_manifest",      // the server's manifest did not verify (MAN-004..MAN-006)
    "subprotocol_not_accepted", // the upgrade did not select toolwire.v1 (TRN-019)
    "websocket",         // TCP or the WebSocket upgrade failed
    "timeout",           // connect timed out
    "rpc",               // the server answered the call with an ERROR (rpc_code)
    "bad_response_signature", // the RESPONSE signature is absent or wrong (ENV-007)
    "manifest_changed",  // the tool's definition changed (MAN-011)
    "not_granted",       // the tool is not granted to the session
    "deadline_exceeded", // the call's deadline passed
    "bad_key",           // --server-key (or --trust-operator) is not a valid key text (ID-007)
    "insecure_url",      // the URL was refused before any connection (TRN-001)
    "other",             // anything else
];

/// One run of the shim: what the suite asks the client under test to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimInvocation {
    /// The URL to dial.
    pub url: String,
    /// The server identity key to pin.
    pub server_key: IdentityKey,
    /// The identity file of the client.
    pub identity_file: PathBuf,
    /// The case id (informational).
    pub case: String,
    /// The tool to call.
    pub tool: String,
    /// The msgpack argument bytes.
    pub args: Vec<u8>,
    /// How many calls to make in a row (0: connect only).
    pub calls: u32,
    /// The text passed as `--server-key` instead of `server_key`'s text form (the
    /// key-parser cases pass malformed texts, ID-007).
    pub server_key_text: Option<String>,
    /// `--trust-operator`: trust this operator key instead of pinning `server_key`.
    pub trust_operator: Option<IdentityKey>,
    /// `--hold-ms`: how long to keep the session open and idle after the calls.
    pub hold_ms: u64,
}

impl ShimInvocation {
    /// The command-line flags of this invocation, each as `--flag=value` (a key
    /// text may start with `-`).
    pub fn to_args(&self) -> Vec<String> {
        let key = self
            .server_key_text
            .clone()
            .unwrap_or_else(|| self.server_key.to_string());
        let mut args = vec![
            format!("--url={}", self.url),
            format!("--server-key={key}"),
            format!("--identity-file={}", self.identity_file.display()),
            format!("--case={}", self.case),
            format!("--tool={}", self.tool),
            format!("--args-hex={}", hex::encode(&self.args)),
            format!("--calls={}", self.calls),
        ];
        if let Some(operator) = &self.trust_operator {
            args.push(format!("--trust-operator={operator}"));
        }
        if self.hold_ms > 0 {
            args.push(format!("--hold-ms={}", self.hold_ms));
        }
        args
    }

    /// Parses the flags of [`to_args`](Self::to_args) (any order).
    ///
    /// # Errors
    /// A missing, unknown or invalid flag.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut url = None;
        let mut server_key = None;
        let mut identity_file = None;
        let mut case = String::new();
        let mut tool = None;
        let mut args_hex = String::new();
        let mut calls = 1u32;
        let mut trust_operator = None;
        let mut hold_ms = 0u64;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) => (flag, value.to_owned()),
                None => (
                    arg.as_str(),
                    iter.next()
                        .ok_or_else(|| format!("{arg} needs a value"))?
                        .clone(),
                ),
            };
            match flag {
                "--url" => url = Some(value),
                "--server-key" => {
                    server_key = Some(
                        value
                            .parse::<IdentityKey>()
                            .map_err(|e| format!("--server-key: {e}"))?,
                    );
                }
                "--identity-file" => identity_file = Some(PathBuf::from(value)),
                "--case" => case = value,
                "--tool" => tool = Some(value),
                "--args-hex" => args_hex = value,
                "--calls" => calls = value.parse().map_err(|e| format!("--calls: {e}"))?,
                "--trust-operator" => {
                    trust_operator = Some(
                        value
                            .parse::<IdentityKey>()
                            .map_err(|e| format!("--trust-operator: {e}"))?,
                    );
                }
                "--hold-ms" => hold_ms = value.parse().map_err(|e| format!("--hold-ms: {e}"))?,
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(Self {
            url: url.ok_or("--url is required")?,
            server_key: server_key.ok_or("--server-key is required")?,
            identity_file: identity_file.ok_or("--identity-file is required")?,
            case,
            tool: tool.unwrap_or_else(|| "echo".to_owned()),
            args: hex::decode(&args_hex).map_err(|e| format!("--args-hex: {e}"))?,
            calls,
            server_key_text: None,
            trust_operator,
            hold_ms,
        })
    }
}

/// The machine-readable last line of a shim's stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimReport {
    /// `result`, `error` or `unimplemented`.
    pub outcome: String,
    /// Calls that returned a result before the end.
    #[serde(default)]
    pub calls_completed: u32,
    /// The result bytes of the last call, hex (outcome `result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_hex: Option<String>,
    /// The typed error (one of [`ERRORS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The close code the client reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// The RPC error code of an ERROR answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_code: Option<u32>,
    /// With `error` `rpc`: whether the client library classifies the error as
    /// retryable (ERR-003); absent when it does not classify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// The manifest hash (MAN-008) as the client computed it, hex; absent before a
    /// connect succeeded or when the client does not expose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_hash: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl ShimReport {
    fn error(error: &str, calls_completed: u32, detail: String) -> Self {
        Self {
            outcome: "error".into(),
            calls_completed,
            error: Some(error.into()),
            detail,
            ..Self::default()
        }
    }

    /// The exit status a shim ends with after this report.
    pub fn exit_code(&self) -> i32 {
        match self.outcome.as_str() {
            "result" => 0,
            "unimplemented" => EXIT_UNIMPLEMENTED,
            _ => 1,
        }
    }

    /// The report as its one JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"outcome\":\"error\"}".into())
    }

    /// One line for a case's observed result: `result (1 call)`,
    /// `error connection_closed close 4003`.
    pub fn describe(&self) -> String {
        let mut out = self.outcome.clone();
        if let Some(error) = &self.error {
            out.push(' ');
            out.push_str(error);
        }
        if let Some(code) = self.close_code {
            out.push_str(&format!(" close {code}"));
        }
        if let Some(code) = self.rpc_code {
            out.push_str(&format!(" rpc {code}"));
        }
        if let Some(retryable) = self.retryable {
            out.push_str(if retryable {
                " retryable"
            } else {
                " not retryable"
            });
        }
        out.push_str(&format!(" after {} call(s)", self.calls_completed));
        out
    }
}

fn connect_error(error: &ConnectError) -> ShimReport {
    let (name, code) = match error {
        ConnectError::Handshake { code, .. } => ("handshake_failed", Some(code.0)),
        ConnectError::Closed { code, .. } => ("closed", Some(code.0)),
        ConnectError::BadManifest => ("bad_manifest", None),
        ConnectError::SubprotocolNotAccepted => ("subprotocol_not_accepted", None),
        ConnectError::WebSocket(_) => ("websocket", None),
        ConnectError::InsecureOrInvalidUrl(_) => ("insecure_url", None),
        ConnectError::Timeout => ("timeout", None),
        _ => ("other", None),
    };
    let mut report = ShimReport::error(name, 0, error.to_string());
    report.close_code = code;
    report
}

fn call_error(error: &CallError, completed: u32) -> ShimReport {
    let (name, close, rpc) = match error {
        CallError::Rpc { code, .. } => ("rpc", None, Some(code.0)),
        CallError::ConnectionClosed { code } => ("connection_closed", Some(code.0), None),
        CallError::BadResponseSignature => ("bad_response_signature", None, None),
        CallError::ManifestChanged { .. } => ("manifest_changed", None, None),
        CallError::NotGranted { .. } => ("not_granted", None, None),
        CallError::DeadlineExceeded => ("deadline_exceeded", None, None),
        _ => ("other", None, None),
    };
    let mut report = ShimReport::error(name, completed, error.to_string());
    report.close_code = close;
    report.rpc_code = rpc;
    if rpc.is_some() {
        report.retryable = Some(error.is_retryable());
    }
    report
}

/// How long one call of the reference shim may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim of our own client (`toolwire-client`): does what `invocation` asks and
/// reports it. Used by `toolwire conformance shim` and by the in-process client mode.
pub async fn run_reference(invocation: &ShimInvocation) -> ShimReport {
    run_with_builder(invocation, Client::builder()).await
}

/// [`run_reference`] with a client configured by `builder` (identity and pinned key
/// or trusted operator are added): for tests that run the suite against a
/// deliberately weakened client.
pub async fn run_with_builder(invocation: &ShimInvocation, builder: ClientBuilder) -> ShimReport {
    // ID-007: the key text is parsed strictly before anything else; a malformed one
    // makes no connection.
    let server_key = match &invocation.server_key_text {
        None => invocation.server_key,
        Some(text) => match text.parse::<IdentityKey>() {
            Ok(key) => key,
            Err(error) => return ShimReport::error("bad_key", 0, format!("--server-key: {error}")),
        },
    };
    let text = match std::fs::read_to_string(&invocation.identity_file) {
        Ok(text) => text,
        Err(error) => {
            return ShimReport::error(
                "other",
                0,
                format!("{}: {error}", invocation.identity_file.display()),
            )
        }
    };
    let identity = match Identity::from_file_text(&text) {
        Ok(identity) => identity,
        Err(error) => return ShimReport::error("other", 0, format!("identity file: {error}")),
    };
    let builder = builder.identity(identity);
    let builder = match invocation.trust_operator {
        Some(operator) => builder.trust_operator(operator),
        None => builder.pin_server(server_key),
    };
    let session = match builder.connect(&invocation.url).await {
        Ok(session) => session,
        Err(error) => return connect_error(&error),
    };
    let manifest_hash = || session.manifest_hash().map(hex::encode);
    let mut last = Vec::new();
    for completed in 0..invocation.calls {
        match session
            .call_raw(
                &invocation.tool,
                invocation.args.clone(),
                CallOptions::with_timeout(CALL_TIMEOUT),
            )
            .await
        {
            Ok(result) => last = result,
            Err(error) => {
                let mut report = call_error(&error, completed);
                if report.close_code.is_none() {
                    report.close_code = session.close_code().map(|c| c.0);
                }
                report.manifest_hash = manifest_hash();
                return report;
            }
        }
    }
    hold(&session, Duration::from_millis(invocation.hold_ms)).await;
    let manifest_hash = manifest_hash();
    session.close();
    // Give the connection task a moment to send the CLOSE record.
    tokio::time::sleep(Duration::from_millis(50)).await;
    ShimReport {
        outcome: "result".into(),
        calls_completed: invocation.calls,
        result_hex: Some(hex::encode(last)),
        manifest_hash,
        ..ShimReport::default()
    }
}

/// `--hold-ms`: keeps the session open and idle for `hold`, ending sooner when its
/// connection closes (checked every 50 ms, so the loop is bounded by `hold`).
async fn hold(session: &toolwire_client::Session, hold: Duration) {
    let until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < until && session.close_code().is_none() {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

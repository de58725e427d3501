//! Client mode: the adversarial peer plays the **server** (listening on loopback) and
//! the client under test runs once per case, driven through the shim contract of
//! [`crate::shim`].
//!
//! ```no_run
//! # async fn example() {
//! use toolwire_conformance::client::{run, ClientOptions, ClientUnderTest};
//! let shim = ClientUnderTest::Command(vec!["toolwire".into(), "conformance".into(), "shim".into()]);
//! let report = run(shim, ClientOptions::default()).await;
//! println!("{}", report.summary());
//! # }
//! ```
//!
//! Each case binds a fresh listener on `127.0.0.1:0`, generates a fresh server and
//! client identity, starts the client when the script needs it, plays its script
//! (well-formed or adversarial), and judges both what the client did on the wire
//! (close codes, records it sent or did not send) and what it reported through the
//! shim (typed error, close code, result bytes: never a forged result).

use crate::report::{CaseReport, Report};
use crate::server::{mark_pending, CaseFuture};
use crate::shim::{ShimInvocation, ShimReport, EXIT_UNIMPLEMENTED};
use crate::spec::Spec;
use crate::{Case, CaseResult};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use toolwire_protocol::{Identity, IdentityKey};

/// An in-process client under test: runs one invocation and reports.
pub type InProcessShim =
    Arc<dyn Fn(ShimInvocation) -> Pin<Box<dyn Future<Output = ShimReport> + Send>> + Send + Sync>;

/// The client under test.
#[derive(Clone)]
pub enum ClientUnderTest {
    /// A command (program and leading arguments); the invocation's flags are appended.
    Command(Vec<String>),
    /// A function in this process (for `cargo test`).
    InProcess(InProcessShim),
}

impl std::fmt::Debug for ClientUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientUnderTest::Command(command) => write!(f, "Command({})", command.join(" ")),
            ClientUnderTest::InProcess(_) => f.write_str("InProcess"),
        }
    }
}

impl ClientUnderTest {
    /// Our own client, in process ([`crate::shim::run_reference`]).
    pub fn reference() -> Self {
        ClientUnderTest::InProcess(Arc::new(|invocation| {
            Box::pin(async move { crate::shim::run_reference(&invocation).await })
        }))
    }

    fn describe(&self) -> String {
        match self {
            ClientUnderTest::Command(command) => command.join(" "),
            ClientUnderTest::InProcess(_) => "in-process client".to_owned(),
        }
    }
}

/// Options of client mode.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Bound of each wait for the client (default 5 s).
    pub step: Duration,
    /// How long the suite listens to conclude that nothing arrives (default 300 ms).
    pub quiet: Duration,
    /// How long the handshake-stall case waits for the client's TIMEOUT (4009);
    /// `None` SKIPs it (default 7 s: the deadline is 5 s, HS-033).
    pub handshake_stall: Option<Duration>,
    /// How long one shim run may take before it is killed (default 30 s), plus its
    /// `--hold-ms`.
    pub shim_timeout: Duration,
    /// The keepalive interval the keepalive case expects by default (LIM-007): it
    /// waits that long, plus a tolerance, for the client's PING; `None` SKIPs it
    /// (default 30 s).
    pub keepalive: Option<Duration>,
    /// Run only the cases whose id starts with one of these prefixes (all when empty).
    pub only: Vec<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(5),
            quiet: Duration::from_millis(300),
            handshake_stall: Some(Duration::from_secs(7)),
            shim_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(30)),
            only: Vec::new(),
        }
    }
}

/// What a shim run ended with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimOutcome {
    /// The exit status (`None`: killed, timed out or not started).
    pub exit: Option<i32>,
    /// The parsed last line of stdout.
    pub report: Option<ShimReport>,
    /// Why there is no report, or stderr's tail.
    pub detail: String,
}

impl ShimOutcome {
    /// Whether the client delivered a result to its application (exit 0 with a
    /// `result` report).
    pub fn delivered(&self) -> bool {
        self.exit == Some(0)
            || self
                .report
                .as_ref()
                .is_some_and(|r| r.outcome == "result" || r.result_hex.is_some())
    }

    /// The shim answered 89: the case needs something it does not implement.
    pub fn unimplemented(&self) -> bool {
        self.exit == Some(EXIT_UNIMPLEMENTED)
    }

    /// One line: `exit 1: error connection_closed close 4003 after 0 call(s)`.
    pub fn describe(&self) -> String {
        let exit = self
            .exit
            .map_or_else(|| "no exit status".to_owned(), |e| format!("exit {e}"));
        match &self.report {
            Some(report) => format!("{exit}: {}", report.describe()),
            None => format!("{exit}: no report ({})", self.detail),
        }
    }
}

/// Everything a client case needs: the listener, the identities, and how to start
/// the client.
pub struct ClientRun {
    /// The URL the client dials (`ws://127.0.0.1:PORT/toolwire`).
    pub url: String,
    /// The listener the client connects to.
    pub listener: TcpListener,
    /// The server identity the client pins.
    pub server: Identity,
    /// The client's identity.
    pub client: Identity,
    /// The case id.
    pub case: &'static str,
    /// Options.
    pub options: ClientOptions,
    identity_file: PathBuf,
    under_test: ClientUnderTest,
}

impl std::fmt::Debug for ClientRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRun")
            .field("url", &self.url)
            .field("case", &self.case)
            .finish_non_exhaustive()
    }
}

/// The tool every client case offers: `echo`.
pub const TOOL: &str = "echo";

/// The arguments the client passes: msgpack of `{"text": "conformance"}`.
pub fn call_args() -> Vec<u8> {
    rmp_serde::to_vec_named(&serde_json::json!({"text": "conformance"})).unwrap_or_default()
}

impl ClientRun {
    /// The invocation for `calls` calls, pinning `server_key`.
    pub fn invocation(&self, server_key: IdentityKey, calls: u32) -> ShimInvocation {
        ShimInvocation {
            url: self.url.clone(),
            server_key,
            identity_file: self.identity_file.clone(),
            case: self.case.to_owned(),
            tool: TOOL.to_owned(),
            args: call_args(),
            calls,
            server_key_text: None,
            trust_operator: None,
            hold_ms: 0,
        }
    }

    /// Starts the client: `calls` calls of [`TOOL`], pinning the run's server key.
    pub fn start(&self, calls: u32) -> tokio::task::JoinHandle<ShimOutcome> {
        self.start_with(self.invocation(self.server.public_key(), calls))
    }

    /// Starts the client with `invocation`.
    pub fn start_with(&self, invocation: ShimInvocation) -> tokio::task::JoinHandle<ShimOutcome> {
        let timeout = self.options.shim_timeout + Duration::from_millis(invocation.hold_ms);
        self.start_within(invocation, timeout)
    }

    /// Starts the client with `invocation`, killing it after `timeout`.
    pub fn start_within(
        &self,
        invocation: ShimInvocation,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<ShimOutcome> {
        let under_test = self.under_test.clone();
        tokio::spawn(async move { run_shim(under_test, invocation, timeout).await })
    }
}

async fn run_shim(
    under_test: ClientUnderTest,
    invocation: ShimInvocation,
    timeout: Duration,
) -> ShimOutcome {
    match under_test {
        ClientUnderTest::InProcess(shim) => {
            match tokio::time::timeout(timeout, shim(invocation)).await {
                Ok(report) => ShimOutcome {
                    exit: Some(report.exit_code()),
                    report: Some(report),
                    detail: String::new(),
                },
                Err(_) => ShimOutcome {
                    detail: format!("did not finish within {timeout:?}"),
                    ..ShimOutcome::default()
                },
            }
        }
        ClientUnderTest::Command(command) => {
            let Some((program, leading)) = command.split_first() else {
                return ShimOutcome {
                    detail: "empty shim command".into(),
                    ..ShimOutcome::default()
                };
            };
            let mut child = tokio::process::Command::new(program);
            child
                .args(leading)
                .args(invocation.to_args())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let output = match child.spawn() {
                Ok(child) => tokio::time::timeout(timeout, child.wait_with_output()).await,
                Err(error) => {
                    return ShimOutcome {
                        detail: format!("could not start {program}: {error}"),
                        ..ShimOutcome::default()
                    }
                }
            };
            match output {
                Err(_) => ShimOutcome {
                    detail: format!("killed after {timeout:?}"),
                    ..ShimOutcome::default()
                },
                Ok(Err(error)) => ShimOutcome {
                    detail: format!("shim failed: {error}"),
                    ..ShimOutcome::default()
                },
                Ok(Ok(output)) => {
                    let stdout = String::from_utf8_lossy(&output.stdout);
                    let report = stdout
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .and_then(|line| serde_json::from_str::<ShimReport>(line.trim()).ok());
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    ShimOutcome {
                        exit: output.status.code(),
                        report,
                        detail: tail,
                    }
                }
            }
        }
    }
}

/// How a client case runs.
pub type ClientCaseFn = fn(Arc<ClientRun>) -> CaseFuture;

/// A client-mode case.
pub type ClientCase = Case<ClientCaseFn>;

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs every client case against `under_test`.
pub async fn run(under_test: ClientUnderTest, options: ClientOptions) -> Report {
    run_cases(under_test, options, &crate::cases::client_cases()).await
}

/// Runs `cases` against `under_test`.
pub async fn run_cases(
    under_test: ClientUnderTest,
    options: ClientOptions,
    cases: &[ClientCase],
) -> Report {
    let spec = Spec::embedded();
    let mut report = Report::new(format!("client {}", under_test.describe()));
    let dir = std::env::temp_dir().join(format!(
        "toolwire-conformance-client-{}-{}",
        std::process::id(),
        RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let bound = options.shim_timeout
        + options.step * 4
        + options
            .handshake_stall
            .unwrap_or_default()
            .max(options.keepalive.unwrap_or_default() * 2);
    for case in cases {
        if !options.only.is_empty() && !options.only.iter().any(|p| case.id.starts_with(p.as_str()))
        {
            continue;
        }
        let started = Instant::now();
        let result = match prepare(&dir, case.id, &under_test, &options).await {
            Err(error) => CaseResult::harness_error(error),
            Ok(run) => {
                let running = tokio::spawn((case.run)(Arc::new(run)));
                let abort = running.abort_handle();
                match tokio::time::timeout(bound, running).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(error)) => CaseResult::harness_error(format!("case panicked: {error}")),
                    Err(_) => {
                        abort.abort();
                        CaseResult::harness_error(format!("case did not finish within {bound:?}"))
                    }
                }
            }
        };
        let result = mark_pending(&spec, case.clauses, result);
        report
            .cases
            .push(CaseReport::new("client", case, result, started.elapsed()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    report
}

async fn prepare(
    dir: &std::path::Path,
    case: &'static str,
    under_test: &ClientUnderTest,
    options: &ClientOptions,
) -> Result<ClientRun, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind loopback: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?
        .port();
    let client = Identity::generate(&mut rand_core::OsRng);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let identity_file = dir.join(format!("{case}.key"));
    write_private(&identity_file, client.to_file_text().as_bytes())
        .map_err(|e| format!("{}: {e}", identity_file.display()))?;
    Ok(ClientRun {
        url: format!("ws://127.0.0.1:{port}/toolwire"),
        listener,
        server: Identity::generate(&mut rand_core::OsRng),
        client,
        case,
        options: options.clone(),
        identity_file,
        under_test: under_test.clone(),
    })
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

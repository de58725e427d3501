//! `toolwire conformance`: the conformance suite (`toolwire-conformance`) from the
//! command line.
//!
//! `server` plays an adversarial client against a live server and writes
//! `report.json`, `junit.xml` and `report.md`; `client` plays an adversarial server
//! against a client under test run through a shim command (`shim` is the shim of our
//! own client); `trace` lists the cases with the clauses each checks and fails when a
//! MUST clause of the specification has no case.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use crate::serve::{parse_ms, AmoArgs, LimitArgs};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_conformance::client::{ClientOptions, ClientUnderTest};
use toolwire_conformance::server::{DeclaredLimits, Restarter, ServerOptions, ToolCall};
use toolwire_conformance::shim::ShimInvocation;
use toolwire_conformance::{spec, ExpectedFailures, Report, Verdict};
use toolwire_protocol::IdentityKey;

/// Subcommands of `toolwire conformance`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConformanceCommand {
    /// Plays an adversarial client against a live server: bad headers, replayed,
    /// reordered and tampered records, forged hellos and envelopes, text and oversize
    /// frames, stalls. Exit status 1 if any case FAILs (outside the expected-failures
    /// file), the harness failed, or an expected-failures entry is stale.
    Server(Box<ServerArgs>),
    /// Plays an adversarial server on loopback and runs the client under test once
    /// per case through a shim command (BoGo style; see `toolwire conformance shim`
    /// for the contract). Exit status 1 if any case FAILs (outside the
    /// expected-failures file), the harness failed, or an entry is stale.
    Client(ClientArgs),
    /// The shim of our own client for `client --shim`: connects as told, makes the
    /// calls, prints one JSON line (outcome, typed error, close code, RPC code,
    /// result bytes) and exits 0 after a result, 1 after a failure.
    Shim(ShimArgs),
    /// Prints every case with the clause ids it checks, then how many MUST clauses
    /// of the specification the cases cover. Exit status 1 when a MUST clause
    /// (outside Appendix C) has no case and is not in the --allow-uncovered file, or
    /// when that file lists a clause that is now covered (stale).
    Trace(TraceArgs),
}

/// Arguments of `toolwire conformance client`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  toolwire conformance client --shim 'toolwire conformance shim' --out conformance-client"
)]
pub(crate) struct ClientArgs {
    /// The shim command, split at whitespace; the case's flags are appended
    /// (--url, --server-key, --identity-file, --case, --tool, --args-hex, --calls).
    #[arg(long, value_name = "CMD")]
    shim: String,
    /// Write report.json, junit.xml and report.md into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Cases known to fail, one id a line (optionally followed by a reason).
    #[arg(long, value_name = "FILE")]
    expected_failures: Option<PathBuf>,
    /// Skip the slow cases (the handshake stall waits up to 7 s, the keepalive case
    /// about 30 s).
    #[arg(long)]
    no_slow: bool,
    /// Run only the cases whose id starts with this prefix (repeatable).
    #[arg(long = "case", value_name = "PREFIX")]
    only: Vec<String>,
}

/// Arguments of `toolwire conformance shim` (the shim contract of client mode).
#[derive(Debug, clap::Args)]
pub(crate) struct ShimArgs {
    /// The URL to dial.
    #[arg(long, value_name = "URL")]
    url: String,
    /// The server identity key to pin.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    server_key: IdentityKey,
    /// The client's identity file.
    #[arg(long, value_name = "FILE")]
    identity_file: PathBuf,
    /// The case id (informational).
    #[arg(long, value_name = "NAME", default_value = "")]
    case: String,
    /// The tool to call.
    #[arg(long, value_name = "NAME", default_value = "echo")]
    tool: String,
    /// The msgpack argument bytes, hex.
    #[arg(long, value_name = "HEX", default_value = "80")]
    args_hex: String,
    /// How many calls to make in a row.
    #[arg(long, value_name = "N", default_value_t = 1)]
    calls: u32,
    /// Trust this operator key (server certificates) instead of pinning --server-key.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    trust_operator: Option<IdentityKey>,
    /// After the calls, keep the session open and idle this long (ms).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    hold_ms: u64,
}

/// Arguments of `toolwire conformance trace`.
#[derive(Debug, clap::Args)]
pub(crate) struct TraceArgs {
    /// MUST clauses known to have no case yet, one id a line (optionally followed by
    /// a reason): they do not fail the trace, but an entry whose clause is covered
    /// does (remove it: the list only shrinks).
    #[arg(long, value_name = "FILE")]
    allow_uncovered: Option<PathBuf>,
}

/// Arguments of `toolwire conformance server`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The identity must be one the server allows (on its client allowlist).\n\nThe timing cases check the server at the limits declared with the flags under \"Declared limits\" (spec 17.1, LIM-017): give the values the server runs with (for `toolwire serve`, the same flags), short enough that a case's wait stays under --max-wait-ms; a case whose wait would be longer SKIPs.\n\nExamples:\n  toolwire conformance server --url ws://127.0.0.1:7700/toolwire --server-key <key> --identity agent.key --ungranted-tool read_file --call-tool echo --call-args '{\"text\":\"hi\"}' --out conformance-report\n  toolwire serve ... --idle-timeout-ms 1500 --session-lifetime-ms 4000 --rekey-after-ms 1500 --rekey-after-records 64\n  toolwire conformance server ... --idle-timeout-ms 1500 --session-lifetime-ms 4000 --rekey-after-ms 1500 --rekey-after-records 64 --case life. --case key."
)]
pub(crate) struct ServerArgs {
    /// The server's URL, exactly as the server is configured (ws:// only in this
    /// version).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The server's identity key.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    server_key: IdentityKey,
    /// An identity file of a client the server allows.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// A tool the server offers but does not grant this identity (the
    /// ungranted-tool case is skipped without it).
    #[arg(long, value_name = "NAME")]
    ungranted_tool: Option<String>,
    /// A tool this identity may call; best one whose result changes on every call.
    /// Default: the first granted tool.
    #[arg(long, value_name = "NAME")]
    call_tool: Option<String>,
    /// Arguments for --call-tool, as a JSON object.
    #[arg(
        long,
        value_name = "JSON",
        default_value = "{}",
        requires = "call_tool"
    )]
    call_args: String,
    /// Write report.json, junit.xml and report.md into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Cases known to fail, one id a line (optionally followed by a reason).
    #[arg(long, value_name = "FILE")]
    expected_failures: Option<PathBuf>,
    /// Skip the slow cases (the handshake stall waits 6 s).
    #[arg(long)]
    no_slow: bool,
    /// Run only the cases whose id starts with this prefix (repeatable).
    #[arg(long = "case", value_name = "PREFIX")]
    only: Vec<String>,
    /// An origin on the server's allowlist (the origin-matching cases are skipped
    /// without it).
    #[arg(long, value_name = "ORIGIN")]
    allowed_origin: Option<String>,
    /// A granted tool that takes at least a second, called with `{}` (the in-flight
    /// and CANCEL cases are skipped without it).
    #[arg(long, value_name = "NAME")]
    slow_tool: Option<String>,
    /// A granted tool that streams at least one item before its result (the
    /// streaming case is skipped without it).
    #[arg(long, value_name = "NAME")]
    stream_tool: Option<String>,
    /// Arguments for --stream-tool, as a JSON object.
    #[arg(
        long,
        value_name = "JSON",
        default_value = "{}",
        requires = "stream_tool"
    )]
    stream_args: String,
    /// The identity file of a second client the server allows (the cross-client
    /// lineage case is skipped without it).
    #[arg(long, value_name = "FILE")]
    other_identity: Option<PathBuf>,
    /// The identity file of a grant issuer the server trusts: the grant cases sign
    /// grants with it (they are skipped without it).
    #[arg(long, value_name = "FILE")]
    issuer: Option<PathBuf>,
    /// The server's audit log: after the server cases, the artifact cases check it.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// The server is configured to require an Origin header (TRN-013).
    #[arg(long)]
    origin_required: bool,
    /// Skip the flood cases (rate limit, pre-authentication limit, lineage quota).
    #[arg(long)]
    no_floods: bool,
    /// The server runs with limits other than the defaults of section 17 (the
    /// default-limit checks are skipped). Implied when a declared limit or
    /// at-most-once bound differs from its default.
    #[arg(long)]
    non_default_limits: bool,
    /// Run the cases that take minutes: the record-count rekey at a declared count
    /// above 4096 records per epoch, among them the default of 2^20 (LIM-008).
    #[arg(long, conflicts_with = "no_slow")]
    slow_defaults: bool,
    /// A granted tool that streams at least 64 MiB when called with `{}` (the
    /// write-stall case is skipped without it).
    #[arg(long, value_name = "NAME")]
    bulk_tool: Option<String>,
    /// A granted tool whose result, when called with `{}`, is too large for one
    /// record (the big-result case is skipped without it).
    #[arg(long, value_name = "NAME")]
    big_result_tool: Option<String>,
    /// A granted tool that the server's policy denies for --denied-args while it
    /// allows the --call-tool call (the policy-denial case is skipped without it).
    #[arg(long, value_name = "NAME")]
    denied_tool: Option<String>,
    /// Arguments for --denied-tool, as a JSON object.
    #[arg(
        long,
        value_name = "JSON",
        default_value = "{}",
        requires = "denied_tool"
    )]
    denied_args: String,
    /// The server runs with an audit log it cannot write, e.g. on /dev/full (the
    /// INTERNAL_ERROR case is skipped otherwise).
    #[arg(long)]
    audit_failing: bool,
    /// A granted tool that returns its arguments (an object) unchanged (the
    /// outcome-bytes case calls it with `{"pad": "..."}`; skipped without it).
    #[arg(long, value_name = "NAME")]
    echo_tool: Option<String>,
    /// The server's durable at-most-once store file (`toolwire serve --amo-store`):
    /// the durable-store cases, which need --crash-command and --start-command too,
    /// are skipped without it. The damaged-store case overwrites it while the server
    /// is stopped, after copying it aside, and puts the copy back.
    #[arg(long, value_name = "PATH")]
    amo_store: Option<PathBuf>,
    /// A shell command (run with `sh -c`) that stops the server abruptly, e.g.
    /// `kill -9 $(cat server.pid)`; the suite waits for it to exit (up to 30 s),
    /// then until the server's port refuses connections (up to 5 s). For the
    /// durable-store and audit-recovery cases.
    #[arg(long, value_name = "CMD", requires = "start_command")]
    crash_command: Option<String>,
    /// A shell command (run with `sh -c`, stdin and stdout closed, stderr to a
    /// file in the temp folder, quoted when it fails) that starts the server again
    /// with the same identity, URL, store and audit log. The server counts as
    /// started when its URL's port accepts connections (within 10 s); the command
    /// failing before that means it refused to start. A server it started keeps
    /// running after the run.
    #[arg(long, value_name = "CMD", requires = "crash_command")]
    start_command: Option<String>,
    /// The longest a timing case may wait for the server, ms (default 20000): a
    /// case whose wait would be longer SKIPs and names the limit to lower.
    #[arg(long = "max-wait-ms", value_name = "MS", value_parser = parse_ms)]
    max_wait: Option<Duration>,
    /// The session limits the server runs with.
    #[command(
        flatten,
        next_help_heading = "Declared limits (the values the server runs with)"
    )]
    limits: LimitArgs,
    /// The sequence number of the first record the server seals in a session,
    /// when it runs with the dangerous testing start of its sending direction
    /// (LIM-018): the sequence-exhaustion case runs when it is within 1024 of
    /// 2^62-1. Default 0.
    #[arg(
        long,
        value_name = "SEQ",
        help_heading = "Declared limits (the values the server runs with)"
    )]
    first_send_sequence: Option<u64>,
    /// The epoch of the first record the server seals in a session, with the
    /// dangerous testing start (LIM-018): the last-epoch case runs when it is
    /// 4294967295 (2^32-1) and --rekey-after-records at most 1024. Default 0.
    #[arg(
        long,
        value_name = "EPOCH",
        help_heading = "Declared limits (the values the server runs with)"
    )]
    first_send_epoch: Option<u32>,
    /// The at-most-once bounds the server runs with: the bound cases are skipped
    /// unless one is given (they need bounds small enough to reach).
    #[command(
        flatten,
        next_help_heading = "Declared at-most-once bounds (the values the server runs with)"
    )]
    amo: AmoArgs,
}

/// Runs a subcommand; `Ok(false)` when the conformance run failed.
pub(crate) async fn run(command: ConformanceCommand) -> CliResult<bool> {
    match command {
        ConformanceCommand::Server(args) => run_server(*args).await,
        ConformanceCommand::Client(args) => run_client(args).await,
        ConformanceCommand::Shim(args) => run_shim(args).await,
        ConformanceCommand::Trace(args) => run_trace(&args),
    }
}

fn run_trace(args: &TraceArgs) -> CliResult<bool> {
    outln!("{}", spec::trace_text().trim_end());
    let allowed = match &args.allow_uncovered {
        Some(path) => spec::Allowlist::read(path)
            .map_err(|error| CliError::new(format!("{}: {error}", path.display())))?,
        None => spec::Allowlist::default(),
    };
    let gate = spec::gate(&spec::suite_coverage(), &allowed);
    outln!("{}", gate.summary());
    for clause in &gate.uncovered {
        outln!("NO CASE       {clause}");
    }
    for clause in &gate.stale {
        outln!("STALE         {clause} is covered now: remove it from the allowlist");
    }
    Ok(gate.passed())
}

async fn run_shim(args: ShimArgs) -> CliResult<bool> {
    let invocation = ShimInvocation {
        url: args.url,
        server_key: args.server_key,
        identity_file: args.identity_file,
        case: args.case,
        tool: args.tool,
        args: hex::decode(&args.args_hex)
            .map_err(|error| CliError::new(format!("--args-hex: {error}")))?,
        calls: args.calls,
        server_key_text: None,
        trust_operator: args.trust_operator,
        hold_ms: args.hold_ms,
    };
    let report = toolwire_conformance::shim::run_reference(&invocation).await;
    outln!("{}", report.to_line());
    Ok(report.exit_code() == 0)
}

async fn run_client(args: ClientArgs) -> CliResult<bool> {
    let command: Vec<String> = args.shim.split_whitespace().map(str::to_owned).collect();
    if command.is_empty() {
        return Err(CliError::new("--shim is empty"));
    }
    let mut options = ClientOptions::default();
    if args.no_slow {
        options.handshake_stall = None;
        options.keepalive = None;
    }
    options.only = args.only;
    let expected = read_expected(args.expected_failures.as_ref())?;
    let mut report =
        toolwire_conformance::client::run(ClientUnderTest::Command(command), options).await;
    report.apply_expected_failures(&expected);
    print_report(&report, args.out.as_ref())
}

fn read_expected(path: Option<&PathBuf>) -> CliResult<ExpectedFailures> {
    match path {
        Some(path) => ExpectedFailures::read(path)
            .map_err(|error| CliError::new(format!("{}: {error}", path.display()))),
        None => Ok(ExpectedFailures::default()),
    }
}

async fn run_server(args: ServerArgs) -> CliResult<bool> {
    let identity = identity_file::read(&args.identity)?;
    let options = server_options(&args)?;
    let expected = read_expected(args.expected_failures.as_ref())?;
    let client_seed = hex::encode(*identity.to_seed());

    let mut report =
        toolwire_conformance::server::run(&args.url, args.server_key, identity, options).await;
    if let Some(log) = args.audit_log {
        let mut artifacts =
            toolwire_conformance::artifact::run(&toolwire_conformance::artifact::ArtifactTarget {
                audit_log: Some(log),
                server_key: args.server_key,
                secrets: vec![client_seed],
                after_clean_shutdown: false,
                events: None,
            });
        // --case selects artifact cases too: a log made by a few cases lacks the
        // entries that the whole run's log holds.
        if !args.only.is_empty() {
            artifacts
                .cases
                .retain(|case| args.only.iter().any(|prefix| case.id.starts_with(prefix)));
        }
        report.merge(artifacts);
    }
    report.apply_expected_failures(&expected);
    print_report(&report, args.out.as_ref())
}

/// The options of a server run, from the flags; an error names the bad flag.
fn server_options(args: &ServerArgs) -> CliResult<ServerOptions> {
    if !args.url.starts_with("ws://") {
        return Err(CliError::new(format!(
            "{}: the conformance suite speaks plain ws:// only in this version",
            args.url
        )));
    }
    let mut options = ServerOptions::default();
    options.ungranted_tool = args.ungranted_tool.clone();
    if let Some(tool) = &args.call_tool {
        options.call = Some(tool_call(tool, &args.call_args, "--call-args")?);
    }
    options.handshake_stall = if args.no_slow {
        None
    } else {
        Some(Duration::from_secs(6))
    };
    options.only.clone_from(&args.only);
    options.allowed_origin = args.allowed_origin.clone();
    options.slow_call = args.slow_tool.as_deref().map(no_args);
    options.other_identity = match &args.other_identity {
        Some(path) => Some(identity_file::read(path)?),
        None => None,
    };
    if let Some(tool) = &args.stream_tool {
        options.stream_call = Some(tool_call(tool, &args.stream_args, "--stream-args")?);
    }
    options.issuer = match &args.issuer {
        Some(path) => Some(identity_file::read(path)?),
        None => None,
    };
    options.origin_required = args.origin_required;
    options.floods = !args.no_floods;

    options.limits = declared_limits(args);
    if let Some(wait) = args.max_wait {
        options.max_wait = wait;
    }
    options.slow = args.slow_defaults;
    options.bulk_call = args.bulk_tool.as_deref().map(no_args);
    options.big_result_call = args.big_result_tool.as_deref().map(no_args);
    if let Some(tool) = &args.denied_tool {
        options.denied_call = Some(tool_call(tool, &args.denied_args, "--denied-args")?);
    }
    options.audit_failing = args.audit_failing;
    options.echo_tool = args.echo_tool.clone();
    if args.amo.any() {
        options.at_most_once = Some(args.amo.config());
    }
    let at_defaults = options.limits == DeclaredLimits::default()
        && options
            .at_most_once
            .as_ref()
            .is_none_or(|bounds| *bounds == Default::default());
    options.default_limits = !args.non_default_limits && at_defaults;
    options.durable_store = args.amo_store.clone();
    options.audit_log = args.audit_log.clone();
    if let (Some(crash), Some(start)) = (&args.crash_command, &args.start_command) {
        options.restart = Some(restarter(crash, start, &args.url)?);
    }
    Ok(options)
}

/// The declared limits: the defaults of spec section 17, with the given ones set.
fn declared_limits(args: &ServerArgs) -> DeclaredLimits {
    let given = &args.limits;
    let mut limits = DeclaredLimits::default();
    if let Some(idle) = given.idle_timeout {
        limits.idle_timeout = idle;
    }
    if let Some(lifetime) = given.session_lifetime {
        limits.session_lifetime = lifetime;
    }
    if let Some(interval) = given.rekey_after {
        limits.rekey_after = interval;
    }
    if let Some(records) = given.rekey_after_records {
        limits.rekey_after_records = records;
    }
    if let Some(stall) = given.write_stall {
        limits.write_stall = stall;
    }
    if let Some(sequence) = args.first_send_sequence {
        limits.first_send_sequence = sequence;
    }
    if let Some(epoch) = args.first_send_epoch {
        limits.first_send_epoch = epoch;
    }
    limits
}

/// A call of `tool` with the JSON object `json`, given with `flag`.
fn tool_call(tool: &str, json: &str, flag: &str) -> CliResult<ToolCall> {
    let args: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| CliError::new(format!("{flag} is not JSON: {error}")))?;
    if !args.is_object() {
        return Err(CliError::new(format!(
            "{flag} must be a JSON object, like {{\"text\":\"hi\"}}"
        )));
    }
    Ok(ToolCall {
        tool: tool.to_owned(),
        args,
    })
}

/// A call of `tool` with `{}`.
fn no_args(tool: &str) -> ToolCall {
    ToolCall {
        tool: tool.to_owned(),
        args: serde_json::json!({}),
    }
}

/// How long `--crash-command` may run.
const CRASH_BOUND: Duration = Duration::from_secs(30);
/// How long after `--crash-command` the server's port may still accept.
const STOPPED_BOUND: Duration = Duration::from_secs(5);
/// How long after `--start-command` the server has to accept connections.
const START_BOUND: Duration = Duration::from_secs(10);
/// How often the server's port is tried.
const POLL: Duration = Duration::from_millis(50);

/// The operator hooks of `--crash-command` and `--start-command`, for the server
/// at `url`.
fn restarter(crash: &str, start: &str, url: &str) -> CliResult<Restarter> {
    let address = Arc::new(socket_address(url)?);
    let crash = Arc::new(crash.to_owned());
    let start = Arc::new(start.to_owned());
    let stopped = address.clone();
    Ok(Restarter::new(
        move || {
            let (command, address) = (crash.clone(), stopped.clone());
            async move { crash_server(&command, &address).await }
        },
        move || {
            let (command, address) = (start.clone(), address.clone());
            async move { start_server(&command, &address).await }
        },
    ))
}

/// `host:port` of a `ws://` URL (port 80 when it names none).
fn socket_address(url: &str) -> CliResult<String> {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(CliError::new(format!("{url}: no host in the URL")));
    }
    let has_port = match authority.strip_prefix('[') {
        Some(ipv6) => ipv6.contains("]:"),
        None => authority.contains(':'),
    };
    Ok(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
}

/// `command` run by `sh -c`, with stdin and stdout closed and stderr to `stderr`.
fn shell(command: &str, stderr: Stdio) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    shell
}

/// Where the stderr of `--start-command` goes: never to ours, which a server it
/// starts would hold open after the run (a pipe reading our output would never
/// end).
fn start_log() -> PathBuf {
    std::env::temp_dir().join(format!(
        "toolwire-conformance-start-{}.log",
        std::process::id()
    ))
}

/// `why`, with the last lines the start command wrote to `log`.
fn with_log(why: String, log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        why
    } else {
        format!("{why}; its stderr ({}): {tail}", log.display())
    }
}

/// Whether `address` accepts a TCP connection.
async fn accepts(address: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

fn status_text(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("status {code}"),
        None => "a signal".to_owned(),
    }
}

/// Runs the crash command, then waits (bounded) until the port refuses.
async fn crash_server(command: &str, address: &str) {
    match shell(command, Stdio::inherit()).kill_on_drop(true).spawn() {
        Err(error) => errln!("warning: --crash-command did not start: {error}"),
        Ok(mut child) => match tokio::time::timeout(CRASH_BOUND, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                errln!(
                    "warning: --crash-command exited with {}",
                    status_text(status)
                );
            }
            Ok(Err(error)) => errln!("warning: --crash-command: {error}"),
            Err(_) => errln!(
                "warning: --crash-command still ran after {} s: killed",
                CRASH_BOUND.as_secs()
            ),
        },
    }
    let deadline = Instant::now() + STOPPED_BOUND;
    while Instant::now() < deadline && accepts(address).await {
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the start command; `Ok` once `address` accepts connections.
async fn start_server(command: &str, address: &str) -> Result<(), String> {
    let log = start_log();
    let stderr = std::fs::File::create(&log)
        .map_err(|error| format!("cannot create {}: {error}", log.display()))?;
    let mut child = shell(command, Stdio::from(stderr))
        .spawn()
        .map_err(|error| format!("--start-command did not start: {error}"))?;
    let deadline = Instant::now() + START_BOUND;
    // A command may start the server in the background and exit 0.
    let mut exited_ok = false;
    loop {
        if accepts(address).await {
            return Ok(());
        }
        if !exited_ok {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => exited_ok = true,
                Ok(Some(status)) => {
                    let why = format!(
                        "--start-command exited with {} before {address} accepted connections",
                        status_text(status)
                    );
                    return Err(with_log(why, &log));
                }
                Ok(None) => {}
                Err(error) => return Err(format!("--start-command: {error}")),
            }
        }
        if Instant::now() >= deadline {
            if !exited_ok {
                let _ = child.start_kill();
            }
            let why = format!(
                "{address} did not accept connections within {} s of --start-command",
                START_BOUND.as_secs()
            );
            return Err(with_log(why, &log));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn print_report(report: &Report, out: Option<&PathBuf>) -> CliResult<bool> {
    for case in &report.cases {
        let verdict = if case.expected_failure {
            "XFAIL".to_owned()
        } else {
            case.verdict.to_string()
        };
        outln!("{verdict:13} {:36} [{}]", case.id, case.clauses.join(", "));
        if matches!(case.verdict, Verdict::Pass) {
            continue;
        }
        if case.expected.is_empty() && case.observed.is_empty() {
            outln!("{:13} {}", "", case.detail);
        } else {
            outln!(
                "{:13} expected {}; observed {}{}",
                "",
                case.expected,
                case.observed,
                if case.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", case.detail)
                }
            );
        }
    }
    for stale in &report.stale_expected_failures {
        outln!("STALE         {stale}");
    }
    outln!("{}", report.summary());
    outln!(
        "{} (this run; `toolwire conformance trace` gates the whole suite)",
        report.coverage().summary()
    );
    if let Some(dir) = out {
        let written = report
            .write_all(dir)
            .map_err(|error| CliError::new(format!("{}: {error}", dir.display())))?;
        for path in written {
            outln!("wrote {}", path.display());
        }
    }
    Ok(report.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn parse(extra: &[&str]) -> Result<ServerArgs, clap::Error> {
        let key = toolwire_protocol::Identity::from_seed(&[7; 32])
            .public_key()
            .to_string();
        let mut argv = vec![
            "server",
            "--url",
            "ws://127.0.0.1:7700/toolwire",
            "--server-key",
            &key,
            "--identity",
            "agent.key",
        ];
        argv.extend_from_slice(extra);
        Command::try_parse_from(argv).map(|command| command.args)
    }

    #[test]
    fn declared_limits_and_bounds_reach_the_options() {
        let args = parse(&[
            "--idle-timeout-ms",
            "1500",
            "--session-lifetime-ms",
            "4000",
            "--rekey-after-records",
            "64",
            "--first-send-epoch",
            "4294967295",
            "--max-wait-ms",
            "9000",
            "--amo-max-lineages",
            "3",
            "--denied-tool",
            "calc",
            "--denied-args",
            r#"{"a":1,"op":"/","b":0}"#,
        ])
        .expect("valid flags");
        let options = server_options(&args).expect("valid options");
        assert_eq!(options.limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(options.limits.session_lifetime, Duration::from_secs(4));
        assert_eq!(options.limits.rekey_after_records, 64);
        assert_eq!(options.limits.first_send_epoch, u32::MAX);
        assert_eq!(
            options.limits.rekey_after,
            DeclaredLimits::default().rekey_after
        );
        assert_eq!(options.max_wait, Duration::from_secs(9));
        assert_eq!(options.at_most_once.map(|amo| amo.max_lineages), Some(3));
        assert!(
            !options.default_limits,
            "declared limits are not the defaults"
        );
        assert_eq!(
            options.denied_call.map(|call| call.tool),
            Some("calc".to_owned())
        );
        let defaults = server_options(&parse(&[]).expect("valid flags")).expect("options");
        assert!(defaults.default_limits && defaults.at_most_once.is_none());
        assert!(defaults.restart.is_none());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (flag, value) in [
            ("--idle-timeout-ms", "0"),
            ("--session-lifetime-ms", "1.5"),
            ("--rekey-after-records", "0"),
            ("--amo-max-total-bytes", "0"),
            ("--max-wait-ms", "99999999999999999"),
        ] {
            let error = parse(&[flag, value]).expect_err(flag).to_string();
            assert!(error.contains(flag), "{error}");
        }
        // Each restart hook needs the other.
        assert!(parse(&["--crash-command", "true"]).is_err());
        let args = parse(&["--denied-tool", "calc", "--denied-args", "{nope"]).expect("parses");
        let error = server_options(&args).expect_err("not JSON").message;
        assert!(error.contains("--denied-args is not JSON"), "{error}");
        let args = parse(&["--denied-tool", "calc", "--denied-args", "[1]"]).expect("parses");
        let error = server_options(&args).expect_err("not an object").message;
        assert!(
            error.contains("--denied-args must be a JSON object"),
            "{error}"
        );
    }

    #[test]
    fn the_restart_hooks_dial_the_port_of_the_url() {
        assert_eq!(
            socket_address("ws://127.0.0.1:7700/toolwire").ok(),
            Some("127.0.0.1:7700".to_owned())
        );
        assert_eq!(
            socket_address("ws://[::1]:9/x").ok(),
            Some("[::1]:9".to_owned())
        );
        assert_eq!(
            socket_address("ws://localhost/toolwire").ok(),
            Some("localhost:80".to_owned())
        );
        assert!(socket_address("ws:///toolwire").is_err());
    }
}

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
use std::path::PathBuf;
use std::time::Duration;
use toolwire_conformance::client::{ClientOptions, ClientUnderTest};
use toolwire_conformance::server::{ServerOptions, ToolCall};
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
    #[arg(long, value_name = "KEY", value_parser = identity_file::parse_key)]
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
    #[arg(long, value_name = "KEY", value_parser = identity_file::parse_key)]
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
    after_help = "The identity must be one the server allows (on its client allowlist).\n\nExample:\n  toolwire conformance server --url ws://127.0.0.1:7700/toolwire --server-key <key> --identity agent.key --ungranted-tool read_file --call-tool echo --call-args '{\"text\":\"hi\"}' --out conformance-report"
)]
pub(crate) struct ServerArgs {
    /// The server's URL, exactly as the server is configured (ws:// only in this
    /// version).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The server's identity key.
    #[arg(long, value_name = "KEY", value_parser = identity_file::parse_key)]
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
    /// default-limit checks are skipped).
    #[arg(long)]
    non_default_limits: bool,
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
    if !args.url.starts_with("ws://") {
        return Err(CliError::new(format!(
            "{}: the conformance suite speaks plain ws:// only in this version",
            args.url
        )));
    }
    let identity = identity_file::read(&args.identity)?;
    let mut options = ServerOptions::default();
    options.ungranted_tool = args.ungranted_tool;
    if let Some(tool) = args.call_tool {
        let call_args: serde_json::Value = serde_json::from_str(&args.call_args)
            .map_err(|error| CliError::new(format!("--call-args is not JSON: {error}")))?;
        options.call = Some(ToolCall {
            tool,
            args: call_args,
        });
    }
    if args.no_slow {
        options.handshake_stall = None;
    } else {
        options.handshake_stall = Some(Duration::from_secs(6));
    }
    options.only = args.only;
    options.allowed_origin = args.allowed_origin;
    options.slow_call = args.slow_tool.map(|tool| ToolCall {
        tool,
        args: serde_json::json!({}),
    });
    options.other_identity = match &args.other_identity {
        Some(path) => Some(identity_file::read(path)?),
        None => None,
    };
    if let Some(tool) = args.stream_tool {
        let stream_args: serde_json::Value = serde_json::from_str(&args.stream_args)
            .map_err(|error| CliError::new(format!("--stream-args is not JSON: {error}")))?;
        options.stream_call = Some(ToolCall {
            tool,
            args: stream_args,
        });
    }
    options.issuer = match &args.issuer {
        Some(path) => Some(identity_file::read(path)?),
        None => None,
    };
    options.origin_required = args.origin_required;
    options.floods = !args.no_floods;
    options.default_limits = !args.non_default_limits;
    let expected = read_expected(args.expected_failures.as_ref())?;
    let client_seed = hex::encode(*identity.to_seed());

    let mut report =
        toolwire_conformance::server::run(&args.url, args.server_key, identity, options).await;
    if let Some(log) = args.audit_log {
        report.merge(toolwire_conformance::artifact::run(
            &toolwire_conformance::artifact::ArtifactTarget {
                audit_log: Some(log),
                server_key: args.server_key,
                secrets: vec![client_seed],
                after_clean_shutdown: false,
                events: None,
            },
        ));
    }
    report.apply_expected_failures(&expected);
    print_report(&report, args.out.as_ref())
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

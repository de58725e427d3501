//! `toolwire conformance`: the conformance suite (`toolwire-conformance`) from the
//! command line.
//!
//! `server` plays an adversarial client against a live server and writes
//! `report.json`, `junit.xml` and `report.md`; `trace` lists the cases with the
//! clauses each checks, and the coverage of the MUST clauses of the specification.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use std::path::PathBuf;
use std::time::Duration;
use toolwire_conformance::server::{ServerOptions, ToolCall};
use toolwire_conformance::{spec, ExpectedFailures, Verdict};
use toolwire_protocol::IdentityKey;

/// Subcommands of `toolwire conformance`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConformanceCommand {
    /// Plays an adversarial client against a live server: bad headers, replayed,
    /// reordered and tampered records, forged hellos and envelopes, text and oversize
    /// frames, stalls. Exit status 1 if any case FAILs (outside the expected-failures
    /// file), the harness failed, or an expected-failures entry is stale.
    Server(Box<ServerArgs>),
    /// Prints every case with the clause ids it checks, then how many MUST clauses
    /// of the specification the cases cover.
    Trace,
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
}

/// Runs a subcommand; `Ok(false)` when the conformance run failed.
pub(crate) async fn run(command: ConformanceCommand) -> CliResult<bool> {
    match command {
        ConformanceCommand::Server(args) => run_server(*args).await,
        ConformanceCommand::Trace => {
            outln!("{}", spec::trace_text().trim_end());
            Ok(true)
        }
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
    let expected = match &args.expected_failures {
        Some(path) => ExpectedFailures::read(path)
            .map_err(|error| CliError::new(format!("{}: {error}", path.display())))?,
        None => ExpectedFailures::default(),
    };

    let mut report =
        toolwire_conformance::server::run(&args.url, args.server_key, identity, options).await;
    report.apply_expected_failures(&expected);

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
        "{} (this run; full coverage of the MUST clauses is future work)",
        report.coverage().summary()
    );
    if let Some(dir) = &args.out {
        let written = report
            .write_all(dir)
            .map_err(|error| CliError::new(format!("{}: {error}", dir.display())))?;
        for path in written {
            outln!("wrote {}", path.display());
        }
    }
    Ok(report.is_success())
}

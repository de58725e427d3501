//! `toolwire`: the command-line tool of toolwire, a secure RPC protocol that lets AI
//! agents call tools on tool servers over WebSockets.
//!
//! Run `toolwire demo` first: it starts a tool server and agents in one process,
//! makes real calls, then plays a series of attacks and shows how each is refused.

#![forbid(unsafe_code)]

/// `println!` that never panics (see [`output::line`]).
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (see [`output::error_line`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::error_line(format_args!($($arg)*))
    };
}

mod audit;
mod call;
mod cert;
mod conformance;
mod demo;
mod error;
mod grant;
mod identity_file;
mod keygen;
mod output;
mod serve;
mod tools;

use clap::{ArgAction, Parser, Subcommand};
use error::CliError;
use std::process::ExitCode;

/// Exit status: 0 success; 1 the operation failed (a call was refused, a demo check
/// failed, a file could not be written); 2 invalid command line; 3 the tool server
/// could not be reached or the handshake failed.
#[derive(Debug, Parser)]
#[command(
    name = "toolwire",
    version,
    about = "Secure tool calls for AI agents over WebSockets: keys, a tool server, an agent, grants, and a demo of the defences.",
    after_help = "Start with `toolwire demo`.\n\nExit status: 0 success, 1 failure (call refused, demo check failed, audit log rejected, I/O error), 2 invalid command line, 3 could not connect or the handshake failed."
)]
struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace. RUST_LOG, when
    /// set, takes precedence.
    #[arg(short, long, action = ArgAction::Count, global = true, display_order = 100)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a new identity (an Ed25519 key) in a file only you can read.
    Keygen(keygen::KeygenArgs),
    /// Prints the public key (and fingerprint) of an identity file.
    Pubkey(keygen::PubkeyArgs),
    /// Runs a tool server with example tools: echo, calc, count, read_file.
    Serve(serve::ServeArgs),
    /// Calls one tool on a tool server and prints the result as JSON.
    Call(call::CallArgs),
    /// Lists the tools of a tool server from its signed manifest.
    Tools(call::ToolsArgs),
    /// Issues capability grants (PASETO v4.public tokens) offline.
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Runs a tool server and agents in one process, makes real calls, then plays
    /// attacks and shows how each is refused. Exit status 0 only if every call
    /// succeeded and every attack was refused with its specified code.
    Demo(demo::DemoArgs),
    /// Checks a server's audit log: the hash chain, the signed heads and the
    /// request and response signatures it holds.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Runs the conformance suite: an adversarial client against a live server
    /// (`server`), an adversarial server against a client run through a shim
    /// (`client`, `shim`), or the trace gate of cases to specification clauses
    /// (`trace`).
    #[command(subcommand)]
    Conformance(conformance::ConformanceCommand),
}

impl Command {
    /// Default log level when neither -v nor RUST_LOG says otherwise. A server shows
    /// its connection events; the demo's attacks deliberately trigger warnings, which
    /// it reports in its own table (add -v to see them as they happen).
    fn base_log_level(&self) -> u8 {
        match self {
            Command::Serve(_) => 2,
            Command::Demo(_) => 0,
            _ => 1,
        }
    }
}

fn init_logging(level: u8) {
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => tracing_subscriber::EnvFilter::new(match level {
            0 => "error",
            1 => "warn",
            2 => "info",
            3 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs `future` on a fresh runtime; tasks still running afterwards (connections of
/// an embedded server) get a moment to wind down, then are dropped.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::new(format!("cannot start the async runtime: {error}")))?;
    let output = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(output)
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    init_logging(cli.command.base_log_level().saturating_add(cli.verbose));
    let done = |()| ExitCode::SUCCESS;
    match cli.command {
        Command::Keygen(args) => keygen::run(&args).map(done),
        Command::Pubkey(args) => keygen::run_pubkey(&args).map(done),
        Command::Grant(command) => grant::run(command).map(done),
        Command::Cert(command) => cert::run(command).map(done),
        Command::Serve(args) => block_on(serve::run(args))?.map(done),
        Command::Call(args) => block_on(call::run_call(args))?.map(done),
        Command::Tools(args) => block_on(call::run_tools(args))?.map(done),
        Command::Audit(command) => audit::run(command).map(|verified| {
            if verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(error::EXIT_FAILURE)
            }
        }),
        Command::Conformance(command) => block_on(conformance::run(command))?.map(|passed| {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(error::EXIT_FAILURE)
            }
        }),
        Command::Demo(args) => block_on(demo::run(&args))?.map(|passed| {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(error::EXIT_FAILURE)
            }
        }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(_) if output::stdout_closed() => ExitCode::from(error::EXIT_FAILURE),
        Ok(code) => code,
        Err(error) => {
            errln!("error: {error}");
            ExitCode::from(error.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    /// A base64url key may start with `-`; every key option must still take it.
    #[test]
    fn key_options_accept_keys_that_start_with_a_hyphen() {
        let key = "-jGhwo6UT4MsOI0s4OP9RBOJfSHOiIxzKSjpjIGblD8";
        let url = "ws://127.0.0.1:1/toolwire";
        let command_lines: [&[&str]; 4] = [
            &[
                "toolwire",
                "call",
                url,
                "echo",
                "{}",
                "--identity",
                "a.key",
                "--server-key",
                key,
            ],
            &[
                "toolwire",
                "tools",
                url,
                "--identity",
                "a.key",
                "--server-key",
                key,
            ],
            &[
                "toolwire",
                "serve",
                "--identity",
                "s.key",
                "--listen",
                "127.0.0.1:0",
                "--allow-client",
                key,
            ],
            &[
                "toolwire",
                "audit",
                "verify",
                "audit.jsonl",
                "--server-key",
                key,
            ],
        ];
        for command_line in command_lines {
            if let Err(error) = Cli::try_parse_from(command_line) {
                panic!("{command_line:?}: {error}");
            }
        }
    }
}

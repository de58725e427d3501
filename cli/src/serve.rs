//! `toolwire serve`: a tool server with the example tools.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use crate::tools::{self, Sandbox};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use toolwire_protocol::amo::AmoConfig;
use toolwire_protocol::IdentityKey;
use toolwire_server::{Limits, Server};

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
    /// Session limits (spec section 17); each defaults to the value of the spec.
    #[command(flatten, next_help_heading = "Limits")]
    limits: LimitArgs,
    /// Bounds of the at-most-once table (spec section 14.4).
    #[command(flatten, next_help_heading = "At-most-once bounds")]
    amo: AmoArgs,
}

/// The session limits of spec section 17: what `toolwire serve` runs with, and
/// what `toolwire conformance server` is told the server under test runs with
/// (LIM-017). Each is the spec's default when not given.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct LimitArgs {
    /// Idle timeout, ms: a session in which the client sends no record for this
    /// long is closed with TIMEOUT (LIFE-005). Default 90000.
    #[arg(long = "idle-timeout-ms", value_name = "MS", value_parser = parse_ms)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Session lifetime, ms: a session this old is closed with SESSION_EXPIRED
    /// (LIFE-001). Default 3720000 (62 minutes).
    #[arg(long = "session-lifetime-ms", value_name = "MS", value_parser = parse_ms)]
    pub(crate) session_lifetime: Option<Duration>,
    /// Rekey interval, ms: the server rekeys its sending direction after this long
    /// in one epoch (KEY-002). Default 300000 (5 minutes).
    #[arg(long = "rekey-after-ms", value_name = "MS", value_parser = parse_ms)]
    pub(crate) rekey_after: Option<Duration>,
    /// Records the server seals in one epoch before it rekeys its sending
    /// direction (KEY-001). Default 1048576 (2^20).
    #[arg(long = "rekey-after-records", value_name = "N", value_parser = parse_count)]
    pub(crate) rekey_after_records: Option<u64>,
    /// Write stall, ms: a write to a client that makes no progress for this long
    /// (the client stopped reading) closes the connection with TRY_AGAIN_LATER
    /// (LIM-004). Default 10000.
    #[arg(long = "write-stall-ms", value_name = "MS", value_parser = parse_ms)]
    pub(crate) write_stall: Option<Duration>,
}

impl LimitArgs {
    /// Sets the given limits in `limits`, leaving the others as they are.
    pub(crate) fn apply(&self, limits: &mut Limits) {
        let connection = &mut limits.connection;
        if let Some(idle) = self.idle_timeout {
            connection.idle_timeout = idle;
        }
        if let Some(lifetime) = self.session_lifetime {
            connection.session_lifetime = lifetime;
        }
        if let Some(interval) = self.rekey_after {
            connection.rekey_after = interval;
        }
        if let Some(records) = self.rekey_after_records {
            connection.rekey_after_records = records;
        }
        if let Some(stall) = self.write_stall {
            limits.write_stall_timeout = stall;
        }
    }
}

/// The bounds of the at-most-once table (spec section 14.4, LIM-015): what
/// `toolwire serve` runs with, and what `toolwire conformance server` is told.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AmoArgs {
    /// Call lineages the at-most-once table holds at once. Default 1024.
    #[arg(long = "amo-max-lineages", value_name = "N", value_parser = parse_size)]
    pub(crate) max_lineages: Option<usize>,
    /// Lineages held at once for one client identity. Default 16.
    #[arg(long = "amo-max-lineages-per-client", value_name = "N", value_parser = parse_size)]
    pub(crate) max_lineages_per_client: Option<usize>,
    /// Outcomes cached per lineage; retries of older calls get
    /// RESULT_UNAVAILABLE. Default 256.
    #[arg(long = "amo-results-per-lineage", value_name = "N", value_parser = parse_size)]
    pub(crate) results_per_lineage: Option<usize>,
    /// Largest outcome cached, in bytes; a retry of a call with a larger result
    /// gets RESULT_UNAVAILABLE. Default 65536.
    #[arg(long = "amo-max-result-bytes", value_name = "BYTES", value_parser = parse_size)]
    pub(crate) max_result_bytes: Option<usize>,
    /// Cached outcome bytes in the whole table. Default 67108864 (64 MiB).
    #[arg(long = "amo-max-total-bytes", value_name = "BYTES", value_parser = parse_size)]
    pub(crate) max_total_bytes: Option<usize>,
}

impl AmoArgs {
    /// Whether any bound was given.
    pub(crate) fn any(&self) -> bool {
        self.max_lineages.is_some()
            || self.max_lineages_per_client.is_some()
            || self.results_per_lineage.is_some()
            || self.max_result_bytes.is_some()
            || self.max_total_bytes.is_some()
    }

    /// The default bounds with the given ones set.
    pub(crate) fn config(&self) -> AmoConfig {
        let mut config = AmoConfig::default();
        if let Some(lineages) = self.max_lineages {
            config.max_lineages = lineages;
        }
        if let Some(lineages) = self.max_lineages_per_client {
            config.max_lineages_per_client = lineages;
        }
        if let Some(results) = self.results_per_lineage {
            config.results_per_lineage = results;
        }
        if let Some(bytes) = self.max_result_bytes {
            config.max_result_bytes = bytes;
        }
        if let Some(bytes) = self.max_total_bytes {
            config.max_total_result_bytes = bytes;
        }
        config
    }
}

/// The longest duration a limit flag takes, in ms (a year): longer ones would
/// overflow deadline arithmetic for no use.
const MAX_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Parses a duration in whole milliseconds, from 1 to a year.
pub(crate) fn parse_ms(text: &str) -> Result<Duration, String> {
    let ms: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of milliseconds"))?;
    if ms == 0 {
        return Err("must be at least 1 ms (a zero limit would end every session at once)".into());
    }
    if ms > MAX_MS {
        return Err(format!("must be at most {MAX_MS} ms (a year)"));
    }
    Ok(Duration::from_millis(ms))
}

/// Parses a count of at least 1.
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
    let count: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if count == 0 {
        return Err("must be at least 1".into());
    }
    Ok(count)
}

/// Parses a size or count of at least 1.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let count = parse_count(text)?;
    usize::try_from(count).map_err(|_| format!("must be at most {}", usize::MAX))
}

/// The limits given on the command line, for the banner.
fn changed_limits(limits: &LimitArgs, amo: &AmoArgs) -> Vec<String> {
    let ms = |name: &str, value: Option<Duration>| {
        value.map(|value| format!("{name} {} ms", value.as_millis()))
    };
    let count = |name: &str, value: Option<usize>| value.map(|value| format!("{name} {value}"));
    [
        ms("idle timeout", limits.idle_timeout),
        ms("session lifetime", limits.session_lifetime),
        ms("rekey after", limits.rekey_after),
        limits
            .rekey_after_records
            .map(|records| format!("rekey after {records} records")),
        ms("write stall", limits.write_stall),
        count("amo lineages", amo.max_lineages),
        count("amo lineages per client", amo.max_lineages_per_client),
        count("amo results per lineage", amo.results_per_lineage),
        count("amo max result bytes", amo.max_result_bytes),
        count("amo max total bytes", amo.max_total_bytes),
    ]
    .into_iter()
    .flatten()
    .collect()
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
    let mut limits = Limits::default();
    args.limits.apply(&mut limits);
    if args.amo.any() {
        limits.at_most_once = args.amo.config();
    }
    builder = builder.limits(limits);
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
    let changed = changed_limits(&args.limits, &args.amo);
    if !changed.is_empty() {
        outln!("  limits       {}", changed.join(", "));
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

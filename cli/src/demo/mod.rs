//! `toolwire demo`: a tool server and its agents in one process, on loopback, with
//! fresh keys. First legitimate calls, then attacks, each of which must be refused
//! with the code the protocol specifies.

mod attacks;
mod audit;
mod raw;
mod report;

use crate::error::{CliError, CliResult};
use crate::tools::{self, Sandbox};
use futures_util::StreamExt as _;
use report::{AttackRecord, CallRecord, Report, ServerInfo, SkippedRecord, Table};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use toolwire_client::{Client, ConnectError, Session, StreamEvent};
use toolwire_protocol::grant::GrantBuilder;
use toolwire_protocol::{Identity, IdentityKey};
use toolwire_server::{Limits, Server};

/// Arguments of `toolwire demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Print one JSON document instead of the table:
    /// {"calls": [...], "attacks": [{"name", "expected", "observed", "refused"}, ...],
    /// "audit": {"verified", "entries", "heads", "tampered": [...], "ok", ...}, "ok": bool}.
    #[arg(long)]
    json: bool,
    /// Keep a copy of the demo server's audit log at PATH (check it with
    /// `toolwire audit verify PATH --server-key KEY`, KEY as printed by the demo).
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
}

/// The demo server's handshake deadline (default 5 s): shorter, so that the "never
/// authenticates" attack is over soon, yet long enough for a loaded machine.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The demo server's budget per connection, identity and (identity, tool): a burst
/// of this many calls, then one call per second. Every legitimate flow of the demo
/// stays within the burst; the flood does not.
pub(crate) const BURST: u32 = 12;

/// Refusals in a row after which the demo server closes with RATE_LIMITED (4008).
const MAX_CONSECUTIVE_REFUSALS: u32 = 8;

/// Longest any legitimate call may take (a normal run needs milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch folder with the sandbox, removed on drop.
pub(crate) struct Scratch {
    dir: PathBuf,
    sandbox: PathBuf,
    pub(crate) has_symlink: bool,
}

impl Scratch {
    fn create() -> CliResult<Self> {
        let mut random = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        let dir = std::env::temp_dir().join(format!("toolwire-demo-{}", hex::encode(random)));
        let sandbox = dir.join("sandbox");
        let fail = |error: std::io::Error| {
            CliError::new(format!(
                "cannot prepare the demo folder {}: {error}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(&sandbox).map_err(fail)?;
        // From here on, dropping `scratch` removes the folder.
        let mut scratch = Self {
            dir: dir.clone(),
            sandbox: sandbox.clone(),
            has_symlink: false,
        };
        std::fs::write(sandbox.join("notes.txt"), "hello from inside the sandbox").map_err(fail)?;
        std::fs::write(dir.join("outside-secret.txt"), "not for agents").map_err(fail)?;
        scratch.has_symlink = link_outside(&sandbox);
        Ok(scratch)
    }
}

#[cfg(unix)]
fn link_outside(sandbox: &Path) -> bool {
    std::os::unix::fs::symlink("../outside-secret.txt", sandbox.join("shortcut.txt")).is_ok()
}

#[cfg(not(unix))]
fn link_outside(_sandbox: &Path) -> bool {
    false
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everyone in the demo.
pub(crate) struct World {
    pub(crate) server: Server,
    pub(crate) server_key: IdentityKey,
    pub(crate) url: String,
    /// Allowed by key for every tool; also holds the operator's root grant.
    pub(crate) agent: Identity,
    /// Issues grants offline; the server trusts its key.
    pub(crate) operator: Identity,
    /// Not allowed by key: holds a grant the agent delegated to it (echo only).
    pub(crate) sub_agent: Identity,
    /// Allowed by key; fires the flood.
    pub(crate) flooder: Identity,
    /// Allowed by key until the demo removes it.
    pub(crate) revokee: Identity,
    pub(crate) root_grant_id: String,
    pub(crate) delegated_grant: String,
    pub(crate) scratch: Scratch,
    /// A connection that never authenticates, opened at start (see
    /// [`attacks::start_idle_probe`]).
    pub(crate) idle_probe: tokio::sync::Mutex<Option<tokio::task::JoinHandle<attacks::Played>>>,
    serving: tokio::task::JoinHandle<()>,
}

impl World {
    async fn start() -> CliResult<Self> {
        let mut rng = rand_core::OsRng;
        let server_identity = Identity::generate(&mut rng);
        let server_key = server_identity.public_key();
        let agent = Identity::generate(&mut rng);
        let operator = Identity::generate(&mut rng);
        let sub_agent = Identity::generate(&mut rng);
        let flooder = Identity::generate(&mut rng);
        let revokee = Identity::generate(&mut rng);
        let scratch = Scratch::create()?;

        // Offline issuance: operator → agent (echo, count), agent → sub-agent (echo).
        let now = time::OffsetDateTime::now_utc();
        let root_grant_id = format!("demo-root-{}", short_random());
        let root_grant = GrantBuilder::new(
            agent.public_key().to_bytes(),
            server_key.to_bytes(),
            &root_grant_id,
            now + time::Duration::hours(1),
        )
        .tools(["echo", "count"])
        .sign(operator.signing_key())
        .map_err(|error| CliError::new(format!("cannot issue the demo grant: {error}")))?;
        let delegated_grant = GrantBuilder::new(
            sub_agent.public_key().to_bytes(),
            server_key.to_bytes(),
            &format!("demo-sub-{}", short_random()),
            now + time::Duration::minutes(30),
        )
        .tools(["echo"])
        .delegate_from(&root_grant)
        .sign(agent.signing_key())
        .map_err(|error| CliError::new(format!("cannot delegate the demo grant: {error}")))?;

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| CliError::new(format!("cannot listen on loopback: {error}")))?;
        let address = listener
            .local_addr()
            .map_err(|error| CliError::new(format!("cannot read the address: {error}")))?;
        let url = format!("ws://{address}/toolwire");
        let sandbox = Sandbox::new(&scratch.sandbox).map_err(CliError::new)?;

        // Small budgets, so that the flood is refused within a few dozen calls. The
        // slow refill (1/s) keeps a refusal streak from being broken by a refilled
        // token even on a slow machine.
        let mut limits = Limits::default();
        limits.rate_per_sec = 1;
        limits.burst = BURST;
        limits.per_tool_rate_per_sec = 1;
        limits.per_tool_burst = BURST;
        limits.max_consecutive_refusals = MAX_CONSECUTIVE_REFUSALS;
        limits.connection.handshake_timeout = HANDSHAKE_TIMEOUT;

        let mut builder = Server::builder(server_identity, url.clone())
            .allow_client(agent.public_key())
            .allow_client(flooder.public_key())
            .allow_client(revokee.public_key())
            .trust_grant_issuer(operator.public_key())
            .allow_origin("https://agents.example")
            .limits(limits)
            .audit_log_with(scratch.dir.join(audit::AUDIT_FILE), audit::options());
        for tool in tools::all(Some(sandbox)) {
            builder = builder.tool(tool);
        }
        let server = builder
            .build()
            .map_err(|error| CliError::new(format!("cannot build the demo server: {error}")))?;
        let serving = {
            let server = server.clone();
            tokio::spawn(async move {
                if let Err(error) = server.serve_listener(listener).await {
                    tracing::error!(%error, "demo server stopped");
                }
            })
        };
        let idle_probe = attacks::start_idle_probe(url.clone());
        Ok(Self {
            idle_probe: tokio::sync::Mutex::new(Some(idle_probe)),
            server,
            server_key,
            url,
            agent,
            operator,
            sub_agent,
            flooder,
            revokee,
            root_grant_id,
            delegated_grant,
            scratch,
            serving,
        })
    }

    /// Connects `identity` to the demo server, presenting `grants`.
    pub(crate) async fn connect(
        &self,
        identity: &Identity,
        grants: &[&str],
    ) -> Result<Session, ConnectError> {
        self.connect_to(&self.url, identity, grants).await
    }

    /// Connects `identity` to `url`, pinning the demo server's key.
    pub(crate) async fn connect_to(
        &self,
        url: &str,
        identity: &Identity,
        grants: &[&str],
    ) -> Result<Session, ConnectError> {
        let mut builder = Client::builder()
            .identity(identity.clone())
            .pin_server(self.server_key);
        for grant in grants {
            builder = builder.present_grant(*grant);
        }
        builder.connect(url).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.serving.abort();
        if let Some(probe) = self.idle_probe.get_mut().take() {
            probe.abort();
        }
    }
}

fn short_random() -> String {
    let mut bytes = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// One legitimate call, streamed so that items are seen as they arrive.
async fn legitimate_call(session: &Session, name: &str, tool: &str, args: Value) -> CallRecord {
    let mut record = CallRecord {
        name: name.to_owned(),
        tool: tool.to_owned(),
        args: args.clone(),
        ok: false,
        result: None,
        items: Vec::new(),
        error: None,
    };
    let streaming = async {
        let mut stream = session.stream(tool, &args)?;
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Item(item) => record.items.push(item),
                StreamEvent::Done(result) => return Ok(Some(result)),
            }
        }
        Ok::<_, toolwire_client::CallError>(None)
    };
    match tokio::time::timeout(CALL_TIMEOUT, streaming).await {
        Ok(Ok(Some(result))) => {
            record.ok = true;
            record.result = Some(result);
        }
        Ok(Ok(None)) => record.error = Some("the stream ended without a result".into()),
        Ok(Err(error)) => record.error = Some(crate::call::describe_call_error(tool, &error)),
        Err(_) => record.error = Some(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
    record
}

/// The legitimate calls: the agent's (allowed by key) and the sub-agent's (by a
/// delegated grant).
async fn legitimate_calls(world: &World, print: bool) -> Vec<CallRecord> {
    let mut records = Vec::new();
    let mut show = |record: CallRecord| {
        if print {
            print_call(&record);
        }
        records.push(record);
    };
    match world.connect(&world.agent, &[]).await {
        Ok(session) => {
            for (name, tool, args) in [
                ("echo", "echo", json!({"text": "hello, tools"})),
                ("calc", "calc", json!({"a": 6, "op": "*", "b": 7})),
                (
                    "count (streamed)",
                    "count",
                    json!({"to": 3, "delay_ms": 50}),
                ),
                (
                    "read_file in the sandbox",
                    "read_file",
                    json!({"path": "notes.txt"}),
                ),
            ] {
                show(legitimate_call(&session, name, tool, args).await);
            }
            session.close();
        }
        Err(error) => show(failed_call("agent connects", &error)),
    }
    let name = "echo by the sub-agent (delegated grant)";
    match world
        .connect(&world.sub_agent, &[&world.delegated_grant])
        .await
    {
        Ok(session) => {
            show(
                legitimate_call(
                    &session,
                    name,
                    "echo",
                    json!({"text": "hi from a sub-agent"}),
                )
                .await,
            );
            session.close();
        }
        Err(error) => show(failed_call(name, &error)),
    }
    records
}

fn failed_call(name: &str, error: &ConnectError) -> CallRecord {
    CallRecord {
        name: name.to_owned(),
        tool: String::new(),
        args: Value::Null,
        ok: false,
        result: None,
        items: Vec::new(),
        error: Some(format!("cannot connect: {error}")),
    }
}

fn print_call(record: &CallRecord) {
    let args = report::short_json(&record.args, 34);
    let outcome = match (&record.result, &record.error) {
        (Some(result), _) if record.ok => {
            let items: Vec<String> = record.items.iter().map(Value::to_string).collect();
            let streamed = if items.is_empty() {
                String::new()
            } else {
                format!("items {} then ", items.join(", "))
            };
            format!("→ {streamed}{}", report::short_json(result, 60))
        }
        (_, Some(error)) => format!("FAILED: {error}"),
        _ => "FAILED".to_owned(),
    };
    outln!("  {:<40}  {args:<34}  {outcome}", record.name);
}

/// Runs the demo; `Ok(true)` when every call succeeded and every attack was refused
/// with its expected code.
pub(crate) async fn run(args: &DemoArgs) -> CliResult<bool> {
    let human = !args.json;
    let world = World::start().await?;
    if human {
        print_cast(&world);
        outln!();
        outln!("1. legitimate calls: Noise XX handshake, signed requests, signed responses");
    }
    let calls = legitimate_calls(&world, human).await;
    if human {
        outln!();
        outln!("2. attacks: each must be refused with the code the protocol specifies");
    }
    let (attacks, skipped) = play_attacks(&world, human).await;
    if human {
        outln!();
        outln!("3. graceful shutdown, then the audit log: hash-chained, signed heads, signed envelopes");
    }
    let audit = audit::finish(&world, human, args.audit_log.as_deref()).await;
    let ok =
        calls.iter().all(|call| call.ok) && attacks.iter().all(|attack| attack.refused) && audit.ok;
    let report = Report {
        server: ServerInfo {
            url: world.url.clone(),
            key: world.server_key.to_string(),
            fingerprint: world.server_key.fingerprint(),
        },
        calls,
        attacks,
        skipped,
        audit,
        ok,
    };
    drop(world);
    if human {
        print_summary(&report);
    } else {
        let document = serde_json::to_string_pretty(&report)
            .map_err(|error| CliError::new(format!("cannot encode the report: {error}")))?;
        outln!("{document}");
    }
    Ok(report.ok)
}

fn print_cast(world: &World) {
    outln!(
        "toolwire demo: a tool server and its agents in one process, on loopback, with fresh keys"
    );
    outln!();
    outln!(
        "  tool server  {}  {}",
        world.server_key.fingerprint(),
        world.url
    );
    outln!(
        "  agent        {}  allowed by key; holds a grant from the operator (echo, count)",
        world.agent.public_key().fingerprint()
    );
    outln!(
        "  operator     {}  issues grants offline; trusted by the server",
        world.operator.public_key().fingerprint()
    );
    outln!(
        "  sub-agent    {}  holds a grant the agent delegated to it (echo only)",
        world.sub_agent.public_key().fingerprint()
    );
    outln!("  sandbox      {}", world.scratch.sandbox.display());
}

/// Plays every attack in order, printing each row as it completes when `print`.
async fn play_attacks(world: &World, print: bool) -> (Vec<AttackRecord>, Vec<SkippedRecord>) {
    let catalogue = attacks::catalogue();
    let table = Table {
        name: catalogue
            .iter()
            .map(|attack| attack.name.chars().count())
            .max()
            .unwrap_or(0),
        code: catalogue
            .iter()
            .map(|attack| attack.expected.to_string().chars().count())
            .max()
            .unwrap_or(0),
    };
    if print {
        outln!("{}", table.header());
        outln!("{}", table.rule());
    }
    let mut played = Vec::new();
    let mut skipped = Vec::new();
    for attack in &catalogue {
        let expected = attack.expected.to_string();
        match attacks::play(attack.kind, world).await {
            attacks::Played::Observed { outcome, detail } => {
                let refused = outcome == attack.expected;
                let observed = outcome.to_string();
                if print {
                    let verdict = if refused { "refused" } else { "FAILED" };
                    outln!("{}", table.row(attack.name, &expected, &observed, verdict));
                }
                played.push(AttackRecord {
                    name: attack.name.to_owned(),
                    attempt: attack.attempt.to_owned(),
                    expected,
                    observed,
                    refused,
                    detail,
                });
            }
            attacks::Played::Unavailable(reason) => {
                if print {
                    outln!(
                        "{}",
                        table.row(attack.name, &expected, "not available", "skipped")
                    );
                }
                skipped.push(SkippedRecord {
                    name: attack.name.to_owned(),
                    reason,
                });
            }
        }
    }
    (played, skipped)
}

fn print_summary(report: &Report) {
    outln!();
    for skipped in &report.skipped {
        outln!("  skipped: {}: {}", skipped.name, skipped.reason);
    }
    let calls_ok = report.calls.iter().filter(|call| call.ok).count();
    let refused = report
        .attacks
        .iter()
        .filter(|attack| attack.refused)
        .count();
    for attack in report.attacks.iter().filter(|attack| !attack.refused) {
        outln!(
            "  FAILED: {}: expected {}, observed {}{}",
            attack.name,
            attack.expected,
            attack.observed,
            attack
                .detail
                .as_deref()
                .map(|detail| format!(" ({detail})"))
                .unwrap_or_default()
        );
    }
    let audit = &report.audit;
    if audit.ok {
        outln!(
            "audit log: {} entries, {} signed heads, all signatures verified ({}); every tampered copy rejected",
            audit.entries,
            audit.heads,
            audit.signatures_verified
        );
    } else {
        outln!(
            "  FAILED: audit log: {}",
            audit
                .error
                .as_deref()
                .unwrap_or("a check did not pass (see above)")
        );
    }
    if report.ok {
        outln!(
            "all {} calls succeeded and all {} attacks were refused with their specified codes",
            report.calls.len(),
            report.attacks.len()
        );
    } else {
        outln!(
            "FAILURE: {calls_ok} of {} calls succeeded, {refused} of {} attacks refused as specified, audit log {}",
            report.calls.len(),
            report.attacks.len(),
            if audit.ok { "verified" } else { "FAILED" }
        );
    }
    if !report.skipped.is_empty() {
        outln!("({} attack(s) skipped, see above)", report.skipped.len());
    }
    outln!("Run `toolwire demo --json` for the details, `toolwire demo -v` to watch the server's security events.");
}

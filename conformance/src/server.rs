//! Server mode: the adversarial peer plays the client against a live server.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use toolwire_conformance::server::{run, ServerOptions};
//! use toolwire_protocol::Identity;
//! let server_key = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
//! let allowed = Identity::from_seed(&[7; 32]); // a client the server allows
//! let mut options = ServerOptions::default();
//! options.ungranted_tool = Some("admin".into());
//! let report = run("ws://127.0.0.1:7700/toolwire", server_key, allowed, options).await;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```
//!
//! Each case runs on fresh connections, one case at a time, under an overall bound;
//! a case that panics or overruns is a HARNESS_ERROR, never a hang.

use crate::report::{CaseReport, Report};
use crate::spec::Spec;
use crate::{Case, CaseResult, Verdict};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_protocol::amo::AmoConfig;
use toolwire_protocol::{Identity, IdentityKey};

/// A tool call the suite may make: a tool the client identity is granted, and
/// arguments its input schema accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Tool name.
    pub tool: String,
    /// Arguments (encoded as msgpack on the wire).
    pub args: serde_json::Value,
}

/// An operator action the suite may trigger during a case: revoke the grant with
/// this `jti` (for an in-process server, its revocation API).
#[derive(Clone)]
pub struct Revoker(pub Arc<dyn Fn(&str) + Send + Sync>);

/// An operator probe the suite may read during a case: how many per-(identity, tool)
/// rate-budget entries the server under test holds (for an in-process server,
/// `Server::rate_budget_entries().per_tool`; for a live one, a metric it exports).
#[derive(Clone)]
pub struct BudgetProbe(pub Arc<dyn Fn() -> usize + Send + Sync>);

/// An operator switch the suite may flip during a case: `true` makes the writes of
/// the server's durable at-most-once store fail (a disk that fills up or goes away),
/// `false` ends that. For an in-process server, `StoreWriteFault::set_failing` of
/// `DangerousServerBuilder::at_most_once_store_write_fault_for_testing`.
#[derive(Clone)]
pub struct StoreFault(pub Arc<dyn Fn(bool) + Send + Sync>);

impl std::fmt::Debug for StoreFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreFault")
    }
}

impl std::fmt::Debug for BudgetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetProbe")
    }
}

impl std::fmt::Debug for Revoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revoker")
    }
}

/// The future of an operator action ([`Restarter`]).
pub type OperatorFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Operator actions that stop and start the server under test, for the cases of the
/// durable at-most-once store (AMO-036..AMO-039) and of the audit log's recovery
/// (AUD-008). For an in-process server: abort its tasks and build it again; for a
/// process: `kill -9` it and run it again.
#[derive(Clone)]
pub struct Restarter {
    crash: Arc<dyn Fn() -> OperatorFuture<()> + Send + Sync>,
    start: Arc<dyn Fn() -> OperatorFuture<Result<(), String>> + Send + Sync>,
}

impl Restarter {
    /// `crash` stops the server abruptly, as a crash would (no shutdown: calls in
    /// flight vanish, nothing is written but what the server already wrote), and
    /// resolves once it is stopped; `start` starts it again on the same address,
    /// with the same identity, durable store and audit log, and resolves once it
    /// accepts connections, or with `Err(why)` when the server refused to start.
    pub fn new<C, CF, S, SF>(crash: C, start: S) -> Self
    where
        C: Fn() -> CF + Send + Sync + 'static,
        CF: Future<Output = ()> + Send + 'static,
        S: Fn() -> SF + Send + Sync + 'static,
        SF: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            crash: Arc::new(move || Box::pin(crash()) as OperatorFuture<()>),
            start: Arc::new(move || Box::pin(start()) as OperatorFuture<Result<(), String>>),
        }
    }

    /// Stops the server abruptly.
    pub async fn crash(&self) {
        (self.crash)().await;
    }

    /// Starts the stopped server; `Err(why)` when it refused to start.
    ///
    /// # Errors
    /// The reason the server gave for not starting.
    pub async fn start(&self) -> Result<(), String> {
        (self.start)().await
    }

    /// [`crash`](Self::crash), then [`start`](Self::start).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart(&self) -> Result<(), String> {
        self.crash().await;
        self.start().await
    }
}

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Restarter")
    }
}

/// Options of server mode.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// A tool the server offers but does not grant the client identity: the
    /// ungranted-tool case needs it and is SKIPped without it.
    pub ungranted_tool: Option<String>,
    /// A call the client identity may make. Without it the suite calls the first
    /// granted tool with `{}` and SKIPs the cases that need execution if that is
    /// refused. Best with a tool whose result differs on every run (a counter), so
    /// that re-execution is observable.
    pub call: Option<ToolCall>,
    /// How long the handshake-stall case waits for the server's TIMEOUT (4009); the
    /// default handshake deadline is 5 s (HS-033), so the default wait is 6 s.
    /// `None` SKIPs the slow cases.
    pub handshake_stall: Option<Duration>,
    /// Bound of each wait for the server (default 5 s).
    pub step: Duration,
    /// How long the suite listens to conclude that nothing arrives (default 300 ms).
    pub quiet: Duration,
    /// An origin that the server's allowlist does not hold.
    pub foreign_origin: String,
    /// An origin that the server's allowlist holds: the origin-matching cases
    /// (TRN-007, TRN-009) SKIP without it.
    pub allowed_origin: Option<String>,
    /// A call that takes at least a second to run (a slow tool the identity is
    /// granted): the in-flight and CANCEL cases SKIP without it.
    pub slow_call: Option<ToolCall>,
    /// A call of a granted tool that sends at least one STREAM_ITEM before its
    /// RESPONSE: the streaming case SKIPs without it.
    pub stream_call: Option<ToolCall>,
    /// Another client identity the server allows: the cross-client lineage case
    /// (AMO-001) SKIPs without it.
    pub other_identity: Option<Identity>,
    /// A grant issuer the server trusts (its secret key signs the grants of the
    /// grant cases, presented by identities the server does not otherwise know):
    /// the grant cases SKIP without it.
    pub issuer: Option<Identity>,
    /// The server certificate the server is configured with (ID-010): it must arrive
    /// unchanged in every ServerHello; `None` means the server has none and must
    /// omit the field.
    pub certificate: Option<String>,
    /// Revokes a grant on the server under test (needs the issuer too): the
    /// revocation case SKIPs without it.
    pub revoke: Option<Revoker>,
    /// The server is configured to require an `Origin` header (TRN-013); the
    /// required-origin case SKIPs otherwise.
    pub origin_required: bool,
    /// Run the flood cases (rate limit, pre-authentication limit, at-most-once
    /// bounds): they exhaust the identity's rate budget for a second or two, so they
    /// run last. Default true.
    pub floods: bool,
    /// The server runs with the default limits of section 17 (the announced-limits
    /// case SKIPs otherwise). Default true.
    pub default_limits: bool,
    /// The limits the server under test is configured with (LIM-017): the timing
    /// and exhaustion cases check the behaviour at these values.
    pub limits: DeclaredLimits,
    /// The longest a timing case may wait for the server (default 20 s): a case
    /// whose wait would be longer SKIPs and names the limit to lower (and declare).
    pub max_wait: Duration,
    /// A call of a granted tool that streams at least 64 MiB (STREAM_ITEMs): the
    /// write-stall case (LIM-004) SKIPs without it.
    pub bulk_call: Option<ToolCall>,
    /// Run the cases that take minutes: the record-count rekey at a declared count
    /// above 4096 records per epoch, among them the default of 2^20 (LIM-008).
    /// Default false (they SKIP).
    pub slow: bool,
    /// Run only the cases whose id starts with one of these prefixes (all when empty).
    pub only: Vec<String>,
    /// The server's at-most-once bounds (section 14.4), declared by the operator
    /// when they are small enough to reach in a run (the defaults, 64 MiB and 1024
    /// lineages, are not): the bound cases (AMO-030, AMO-033, AMO-034) SKIP without
    /// them.
    pub at_most_once: Option<AmoConfig>,
    /// A granted tool that returns its arguments (an object) unchanged: the
    /// outcome-bytes case (AMO-030) calls it with `{"pad": "<n bytes>"}` to make
    /// outcomes of a chosen size, and SKIPs without it.
    pub echo_tool: Option<String>,
    /// Stops and starts the server: the durable-store and audit-recovery cases SKIP
    /// without it.
    pub restart: Option<Restarter>,
    /// The file of the server's durable at-most-once store (AMO-035), when it has
    /// one: the durable-store cases (AMO-036..AMO-039) SKIP without it (a server
    /// without a store loses its lineages in a restart, as section 14.4 allows). The
    /// damaged-store case (AMO-039) overwrites the file while the server is stopped,
    /// after copying it aside, and puts the copy back.
    pub durable_store: Option<PathBuf>,
    /// The server's audit log, read by the audit-recovery case (AUD-008), which also
    /// appends an incomplete line to it while the server is stopped; it SKIPs
    /// without it.
    pub audit_log: Option<PathBuf>,
    /// A granted call whose result is too large for one record (over 65,520 bytes
    /// by default): the big-result case (REC-014, REC-034) SKIPs without it.
    pub big_result_call: Option<ToolCall>,
    /// A call of a granted tool that the server's policy (its `Authorizer`) denies
    /// for these arguments, while allowing the tool with the arguments of
    /// [`call`](Self::call) (or `{}`): the policy-denial case (AUTHZ-016) SKIPs
    /// without it.
    pub denied_call: Option<ToolCall>,
    /// The server runs with an audit log it cannot write (for example on
    /// `/dev/full`): the INTERNAL_ERROR case (CLS-009) SKIPs otherwise. Default false.
    pub audit_failing: bool,
    /// Reads the server's count of per-tool budget entries: the bounded-budget case
    /// (AUTHZ-006) SKIPs without it.
    pub budget_entries: Option<BudgetProbe>,
    /// Makes the durable store's writes fail: the unrecordable-id case (AMO-036),
    /// which also needs [`Self::durable_store`] and [`Self::restart`], SKIPs without
    /// it.
    pub store_fault: Option<StoreFault>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            ungranted_tool: None,
            call: None,
            handshake_stall: Some(Duration::from_secs(6)),
            step: Duration::from_secs(5),
            quiet: Duration::from_millis(300),
            foreign_origin: "https://foreign-origin.conformance.invalid".to_owned(),
            allowed_origin: None,
            slow_call: None,
            stream_call: None,
            other_identity: None,
            issuer: None,
            certificate: None,
            revoke: None,
            origin_required: false,
            floods: true,
            default_limits: true,
            limits: DeclaredLimits::default(),
            max_wait: Duration::from_secs(20),
            bulk_call: None,
            slow: false,
            only: Vec::new(),
            at_most_once: None,
            echo_tool: None,
            restart: None,
            durable_store: None,
            audit_log: None,
            big_result_call: None,
            denied_call: None,
            audit_failing: false,
            budget_entries: None,
            store_fault: None,
        }
    }
}

/// The limits the server under test is configured with, as its operator declares
/// them to the suite (spec LIM-017), like the flags of a BoGo shim: the timing and
/// exhaustion cases check the behaviour at these values, so a server configured with
/// short limits is checked in seconds instead of an hour. Default: the defaults of
/// spec section 17, and a sending direction that starts at sequence number 0 in
/// epoch 0.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeclaredLimits {
    /// Idle timeout (LIFE-005). Default 90 s.
    pub idle_timeout: Duration,
    /// Session lifetime (LIFE-001). Default 62 min.
    pub session_lifetime: Duration,
    /// Time per epoch before the server rekeys its direction (KEY-002). Default 5 min.
    pub rekey_after: Duration,
    /// Records per epoch before the server rekeys its direction (KEY-001). Default
    /// 2^20.
    pub rekey_after_records: u64,
    /// How long a write may make no progress before the server gives up on the peer
    /// (LIM-004). Default 10 s.
    pub write_stall: Duration,
    /// The sequence number of the first record the server seals in a session: 0
    /// unless the server has the conformance-testing start of its sending direction
    /// (LIM-018). The sequence-exhaustion case SKIPs unless it is within 1024 of
    /// `2^62 − 1`.
    pub first_send_sequence: u64,
    /// The epoch of the first record the server seals in a session: 0 unless the
    /// server has the conformance-testing start of its sending direction (LIM-018).
    /// The last-epoch case (KEY-006) SKIPs unless it is `2^32 − 1`.
    pub first_send_epoch: u32,
}

impl Default for DeclaredLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            session_lifetime: Duration::from_secs(62 * 60),
            rekey_after: Duration::from_secs(5 * 60),
            rekey_after_records: 1 << 20,
            write_stall: Duration::from_secs(10),
            first_send_sequence: 0,
            first_send_epoch: 0,
        }
    }
}

/// The server under test, as every server case sees it.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// The URL to dial; also the endpoint bound into the handshake.
    pub url: String,
    /// The server's identity key (pinned).
    pub server_key: IdentityKey,
    /// A client identity the server allows.
    pub identity: Identity,
    /// Options.
    pub options: ServerOptions,
}

/// The future a server case returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// How a server case runs.
pub type ServerCaseFn = fn(Arc<ServerTarget>) -> CaseFuture;

/// A server-mode case.
pub type ServerCase = Case<ServerCaseFn>;

/// Runs every server case against the server at `url`, whose identity key is
/// `server_key`, as the client `identity` (which the server must allow).
pub async fn run(
    url: &str,
    server_key: IdentityKey,
    identity: Identity,
    options: ServerOptions,
) -> Report {
    let target = Arc::new(ServerTarget {
        url: url.to_owned(),
        server_key,
        identity,
        options,
    });
    run_cases(target, &crate::cases::server_cases()).await
}

/// How much longer a case may run when the slow cases are enabled.
const SLOW_CASE_BOUND: Duration = Duration::from_secs(30 * 60);

/// Runs `cases` against `target`.
pub async fn run_cases(target: Arc<ServerTarget>, cases: &[ServerCase]) -> Report {
    let spec = Spec::embedded();
    let mut report = Report::new(format!("server {}", target.url));
    let bound = target.options.step * 6
        + target.options.handshake_stall.unwrap_or(Duration::ZERO)
        + target.options.max_wait
        + if target.options.slow {
            SLOW_CASE_BOUND
        } else {
            Duration::ZERO
        };
    for case in cases {
        if !target.options.only.is_empty()
            && !target
                .options
                .only
                .iter()
                .any(|p| case.id.starts_with(p.as_str()))
        {
            continue;
        }
        let started = Instant::now();
        let running = tokio::spawn((case.run)(target.clone()));
        let abort = running.abort_handle();
        let result = match tokio::time::timeout(bound, running).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => CaseResult::harness_error(format!("case panicked: {error}")),
            Err(_) => {
                abort.abort();
                CaseResult::harness_error(format!("case did not finish within {bound:?}"))
            }
        };
        let result = mark_pending(&spec, case.clauses, result);
        report
            .cases
            .push(CaseReport::new("server", case, result, started.elapsed()));
    }
    report
}

/// A FAIL of a case whose every clause is listed in Appendix C is UNIMPLEMENTED.
pub(crate) fn mark_pending(spec: &Spec, clauses: &[&str], mut result: CaseResult) -> CaseResult {
    if result.verdict == Verdict::Fail
        && !clauses.is_empty()
        && clauses.iter().all(|c| spec.is_pending(c))
    {
        result.verdict = Verdict::Unimplemented;
        result = result.with_detail("every clause is listed in Appendix C");
    }
    result
}

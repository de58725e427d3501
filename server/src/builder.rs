//! Building a server: identity, trust, Origin policy, limits, tools.

use crate::tool::{Catalog, SchemaError, Tool};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use toolwire_protocol::amo::AmoConfig;
use toolwire_protocol::authz::{Authorizer, AuthzLimits};
use toolwire_protocol::upgrade::{InvalidOrigin, UpgradePolicy};
use toolwire_protocol::{ConnectionLimits, Identity, IdentityKey, ServerConfig};

/// Server limits. Each field's doc gives its default and the attack it bounds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Per-connection protocol limits (record size, handshake/idle deadlines, rekey,
    /// session lifetime).
    pub connection: ConnectionLimits,
    /// Calls in flight per connection. Default 64. Bounds work one connection can
    /// queue.
    pub max_in_flight: u32,
    /// Sustained calls per second per identity. Default 100. Bounds floods.
    pub rate_per_sec: u32,
    /// Burst of the per-identity bucket. Default 200.
    pub burst: u32,
    /// Sustained calls per second per (identity, tool). Default 100. Lets one
    /// expensive tool be throttled without starving the others.
    pub per_tool_rate_per_sec: u32,
    /// Burst of the per-(identity, tool) bucket. Default 200.
    pub per_tool_burst: u32,
    /// Unauthenticated connections (upgrade or handshake in progress) per IP.
    /// Default 64; beyond it the upgrade is answered 429. Bounds connection floods
    /// from one address.
    pub max_unauthenticated_per_ip: usize,
    /// Unauthenticated connections in total. Default 1024; beyond it 503.
    pub max_unauthenticated_total: usize,
    /// Time allowed for the HTTP upgrade, and with TLS
    /// ([`Server::serve_tls`]) for the TLS handshake and the upgrade together.
    /// Default 5 s. Bounds slow-loris handshakes and upgrades.
    pub upgrade_timeout: Duration,
    /// Consecutive RESOURCE_EXHAUSTED refusals after which the connection is closed
    /// with RATE_LIMITED (4008). Default 100.
    pub max_consecutive_refusals: u32,
    /// Tolerated clock difference with grant issuers, in seconds, applied both when
    /// grants are verified in the handshake and when their expiry is checked on every
    /// call. Default 30. Bounds how long past its `exp` a grant is still honoured.
    pub max_clock_skew_secs: i64,
    /// How long one write to the socket may make no progress before the connection
    /// is closed with TRY_AGAIN_LATER (1013) (LIM-004). Default 10 s. Bounds the
    /// memory and the connection task held for a peer that stops reading (its TCP
    /// window stays shut) while the server has answers or stream items to send.
    pub write_stall_timeout: Duration,
    /// Bytes read from the socket at a time: the read buffer (tungstenite's) that
    /// every connection keeps, idle or not. Default 2 KiB. A record larger than it
    /// takes more than one read. Bounds the memory each idle connection holds
    /// (with tungstenite's default of 128 KiB, 10,000 idle connections would hold
    /// 1.3 GB). Values below 256 are raised to 256.
    pub socket_read_buffer: usize,
    /// Bounds of the at-most-once table (spec section 14.4, LIM-015), in memory or
    /// in the durable store ([`ServerBuilder::at_most_once_store`]). Default
    /// [`AmoConfig::default`]: 65536 bytes per cached outcome, 256 outcomes per
    /// lineage, 64 MiB of outcomes in total, 1024 lineages, 16 per client identity.
    /// Bounds the memory (and store size) that clients' cached results and lineages
    /// take, and how much of it one client can occupy.
    pub at_most_once: AmoConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connection: ConnectionLimits::default(),
            max_in_flight: 64,
            rate_per_sec: 100,
            burst: 200,
            per_tool_rate_per_sec: 100,
            per_tool_burst: 200,
            max_unauthenticated_per_ip: 64,
            max_unauthenticated_total: 1024,
            upgrade_timeout: Duration::from_secs(5),
            max_consecutive_refusals: 100,
            max_clock_skew_secs: 30,
            write_stall_timeout: Duration::from_secs(10),
            socket_read_buffer: 2 * 1024,
            at_most_once: AmoConfig::default(),
        }
    }
}

/// The rate-budget buckets a server holds ([`Server::rate_budget_entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateBudgetEntries {
    /// Buckets per client identity.
    pub per_identity: usize,
    /// Buckets per (client identity, tool): only for tools of the manifest.
    pub per_tool: usize,
}

/// Why a server could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A tool's input schema is not a valid JSON Schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// An allowed origin can never match.
    #[error(transparent)]
    Origin(#[from] InvalidOrigin),
    /// Two tools share a name.
    #[error("two tools are named `{0}`")]
    DuplicateTool(String),
    /// No client could ever authenticate.
    #[error("no client can authenticate: allow a client key or trust a grant issuer")]
    NoClients,
    /// The audit log could not be opened or continued.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditLogError),
    /// The durable at-most-once store could not be opened or read
    /// ([`ServerBuilder::at_most_once_store`]).
    #[error(transparent)]
    AtMostOnceStore(#[from] crate::amo::AmoStoreError),
    /// The server certificate is malformed or certifies another identity key.
    #[error("server certificate refused: {0}")]
    Certificate(#[from] toolwire_protocol::certificate::CertificateError),
}

/// Why [`Server::replace_tool`] refused a tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplaceToolError {
    /// The new input schema is not a valid JSON Schema; the old tool stays.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// No registered tool has this name.
    #[error("no tool is named `{0}`")]
    UnknownTool(String),
}

/// Which tools an allowlisted client may call.
#[derive(Debug, Clone)]
pub(crate) enum ToolAllowance {
    All,
    Only(HashSet<String>),
}

/// The live policy: changes take effect on the very next call.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) version: u64,
    pub(crate) clients: HashMap<IdentityKey, ToolAllowance>,
    pub(crate) revoked_grants: HashSet<String>,
}

pub(crate) struct Inner {
    pub(crate) protocol: Arc<ServerConfig>,
    pub(crate) upgrade: UpgradePolicy,
    /// The current tools; connections watch it for changes.
    pub(crate) catalog: watch::Sender<Arc<Catalog>>,
    pub(crate) limits: Limits,
    pub(crate) authz_limits: AuthzLimits,
    pub(crate) policy: RwLock<Policy>,
    pub(crate) require_signatures: bool,
    pub(crate) authorizer: Option<PolicyHook>,
    pub(crate) admission: Option<crate::admission::AdmissionHook>,
    pub(crate) unauthenticated: Mutex<HashMap<std::net::IpAddr, usize>>,
    pub(crate) rates: crate::connection::RateBudgets,
    pub(crate) at_most_once: crate::amo::SharedAtMostOnce,
    pub(crate) audit: Option<crate::audit::AuditLog>,
    pub(crate) shutdown: crate::shutdown::ShutdownState,
    /// The alert sink and its threshold counters (`alerts.rs`).
    pub(crate) alerts: crate::alerts::Alerts,
    /// FAULT INJECTION (conformance tests only).
    #[cfg(feature = "__fault_injection")]
    pub(crate) faults: Vec<crate::fault::Fault>,
}

/// A configured tool server. Clone it freely; clones share state.
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("identity", &self.inner.protocol.identity().public_key())
            .field("endpoint", &self.inner.protocol.endpoint())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder for a server with `identity`, reachable at `endpoint` — the exact
    /// public URL clients dial (bound into the handshake; behind a proxy, the proxy's
    /// URL).
    pub fn builder(identity: Identity, endpoint: impl Into<String>) -> ServerBuilder {
        ServerBuilder {
            identity,
            endpoint: endpoint.into(),
            clients: HashMap::new(),
            grant_issuers: Vec::new(),
            upgrade: UpgradePolicy::default(),
            limits: Limits::default(),
            tools: Vec::new(),
            require_signatures: true,
            authorizer: None,
            admission: None,
            audit: None,
            amo_store: None,
            certificate: None,
            alert_sink: None,
            alert_thresholds: crate::alerts::AlertThresholds::default(),
            first_send: (0, 0),
            amo_store_fault: None,
            #[cfg(feature = "__fault_injection")]
            faults: Vec::new(),
        }
    }

    /// The server's identity key (what clients pin).
    pub fn public_key(&self) -> IdentityKey {
        self.inner.protocol.identity().public_key()
    }

    /// The manifest of every registered tool.
    pub fn tools(&self) -> Vec<toolwire_protocol::manifest::ToolDescriptor> {
        self.inner.catalog.borrow().registry.descriptors()
    }

    /// Replaces the registered tool of the same name (description, schemas and
    /// handler) and re-signs the manifest.
    ///
    /// Live sessions are sent CAP_UPDATE with the new signed manifest and a granted
    /// set without the tool: a grant is bound to the digest of the definition the
    /// agent approved, so a changed definition is not callable in those sessions
    /// (calls are refused with PERMISSION_DENIED, and clients report
    /// MANIFEST_CHANGED) until it is granted again, by a CAP_REQUEST or in a new
    /// session. The change takes effect on every session's very next request.
    /// Replacing a tool with an identical definition changes nothing but the
    /// handler.
    ///
    /// # Errors
    /// [`ReplaceToolError::UnknownTool`] when no tool has this name;
    /// [`ReplaceToolError::Schema`] when the new input schema is invalid. Either way
    /// nothing changes.
    pub fn replace_tool(&self, tool: Tool) -> Result<(), ReplaceToolError> {
        let identity = self.inner.protocol.identity();
        let mut outcome = Ok(());
        self.inner.catalog.send_if_modified(|catalog| {
            let name = tool.descriptor.name.clone();
            if !catalog.registry.tools.contains_key(&name) {
                outcome = Err(ReplaceToolError::UnknownTool(name));
                return false;
            }
            let mut tools = catalog.tools();
            for registered in &mut tools {
                if registered.descriptor.name == name {
                    *registered = tool.clone();
                }
            }
            match Catalog::new(tools, identity) {
                Ok(next) => {
                    tracing::warn!(tool = %name, event = "tool_replaced", "toolwire tool definition replaced");
                    *catalog = Arc::new(next);
                    true
                }
                Err(error) => {
                    outcome = Err(error.into());
                    false
                }
            }
        });
        outcome
    }

    /// Revokes a grant by id: the very next call relying on it is refused with
    /// CAPABILITY_REVOKED, and a session whose authority came only from grants, all
    /// of them now revoked, is then closed with CAPABILITY_REVOKED (4007).
    pub fn revoke_grant(&self, grant_id: &str) {
        let mut policy = write(&self.inner.policy);
        policy.revoked_grants.insert(grant_id.to_owned());
        policy.version += 1;
    }

    /// Removes a client from the allowlist: its next call is refused with
    /// PERMISSION_DENIED.
    pub fn remove_client(&self, key: &IdentityKey) {
        let mut policy = write(&self.inner.policy);
        policy.clients.remove(key);
        policy.version += 1;
    }

    /// The current policy version.
    pub fn policy_version(&self) -> u64 {
        read(&self.inner.policy).version
    }

    /// How many rate-budget buckets the server holds: one per identity that has
    /// called, one per (identity, tool) pair called, as long as their budget has not
    /// refilled (full buckets are dropped, at most every 10 s, when calls arrive).
    /// For monitoring the memory the budgets take: per-tool buckets exist only for
    /// tools of the manifest (AUTHZ-006), so calls to made-up tool names never add
    /// any.
    pub fn rate_budget_entries(&self) -> RateBudgetEntries {
        let (per_identity, per_tool) = self.inner.rates.entries();
        RateBudgetEntries {
            per_identity,
            per_tool,
        }
    }
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Configures a [`Server`].
#[derive(Debug)]
pub struct ServerBuilder {
    identity: Identity,
    endpoint: String,
    clients: HashMap<IdentityKey, ToolAllowance>,
    grant_issuers: Vec<IdentityKey>,
    upgrade: UpgradePolicy,
    limits: Limits,
    tools: Vec<Tool>,
    require_signatures: bool,
    authorizer: Option<PolicyHook>,
    admission: Option<crate::admission::AdmissionHook>,
    audit: Option<(std::path::PathBuf, crate::audit::AuditOptions)>,
    amo_store: Option<std::path::PathBuf>,
    certificate: Option<String>,
    alert_sink: Option<AlertSinkHandle>,
    alert_thresholds: crate::alerts::AlertThresholds,
    /// Where every session's sending direction starts (sequence number, epoch):
    /// see [`DangerousServerBuilder::start_send_sequence_for_testing`].
    first_send: (u64, u32),
    /// See [`DangerousServerBuilder::at_most_once_store_write_fault_for_testing`].
    amo_store_fault: Option<crate::amo::StoreWriteFault>,
    #[cfg(feature = "__fault_injection")]
    faults: Vec<crate::fault::Fault>,
}

/// The sink of [`ServerBuilder::alert_sink`].
#[derive(Clone)]
struct AlertSinkHandle(Arc<dyn crate::alerts::AlertSink>);

impl std::fmt::Debug for AlertSinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlertSink")
    }
}

/// The policy hook of [`ServerBuilder::authorizer`].
#[derive(Clone)]
pub(crate) struct PolicyHook(pub(crate) Arc<dyn Authorizer + Send + Sync>);

impl std::fmt::Debug for PolicyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyHook")
    }
}

impl ServerBuilder {
    /// Presents an operator's certificate for this server's identity key in every
    /// handshake (spec section 3.1), so clients that trust the operator
    /// ([`trust_operator`](https://docs.rs/toolwire-client) on the client builder)
    /// accept this server without pinning its key. Issue one with
    /// `toolwire cert issue` or
    /// [`ServerCertificateBuilder`](toolwire_protocol::certificate::ServerCertificateBuilder).
    /// [`build`](Self::build) refuses a certificate of another key.
    pub fn certificate(mut self, token: impl Into<String>) -> Self {
        self.certificate = Some(token.into());
        self
    }

    /// Allows a client identity to call every tool.
    pub fn allow_client(mut self, key: IdentityKey) -> Self {
        self.clients.insert(key, ToolAllowance::All);
        self
    }

    /// Allows a client identity to call only these tools.
    pub fn allow_client_tools<I, S>(mut self, key: IdentityKey, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clients.insert(
            key,
            ToolAllowance::Only(tools.into_iter().map(Into::into).collect()),
        );
        self
    }

    /// Trusts capability grants issued by `key`.
    pub fn trust_grant_issuer(mut self, key: IdentityKey) -> Self {
        self.grant_issuers.push(key);
        self
    }

    /// Allows browser pages of this origin (`https://app.example`) to connect.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.upgrade = self.upgrade.allow_origin(origin);
        self
    }

    /// Refuses upgrade requests that carry no `Origin` header.
    pub fn require_origin(mut self) -> Self {
        self.upgrade = self.upgrade.require_origin();
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds a policy hook to step 4 of the authorization pipeline: a call runs only
    /// when the allowlist (or the call's grant) and `authorizer` both allow it. The
    /// hook runs on the connection's task for every call that passed steps 1 to 3, so
    /// it must decide quickly; its denial reason goes to the decision record, never to
    /// the peer, which is answered PERMISSION_DENIED.
    pub fn authorizer(mut self, authorizer: impl Authorizer + Send + Sync + 'static) -> Self {
        self.authorizer = Some(PolicyHook(Arc::new(authorizer)));
        self
    }

    /// Adds an admission hook on the HTTP upgrade request (TRN-021), for example to
    /// check an upgrade token. It runs in the upgrade, after the pre-authentication
    /// caps and the Origin and subprotocol checks (a request failing those is refused
    /// without reaching it), and before any handshake work; a refusal answers the
    /// upgrade with HTTP 401 or 403 and is logged (`event = "admission_refused"`).
    ///
    /// Acceptance grants no authority (TRN-020): an admitted connection must still
    /// prove an allowed identity in the handshake, and every call is still authorized
    /// on its own. The hook runs on the accepting task for every upgrade request, so
    /// it must decide quickly and must not block.
    pub fn admission_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&crate::AdmissionRequest<'_>) -> Result<(), crate::AdmissionRefusal>
            + Send
            + Sync
            + 'static,
    {
        self.admission = Some(crate::admission::AdmissionHook(Arc::new(hook)));
        self
    }

    /// Registers a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Keeps an audit log at `path` with the default [`AuditOptions`]: one
    /// hash-chained JSON line per authorization decision with the signed envelopes,
    /// and heads signed by the server identity (ENV-009, AUD-001..AUD-012). An
    /// existing log is continued. See [`audit_log_with`](Self::audit_log_with).
    ///
    /// [`AuditOptions`]: crate::AuditOptions
    pub fn audit_log(self, path: impl Into<std::path::PathBuf>) -> Self {
        self.audit_log_with(path, crate::audit::AuditOptions::default())
    }

    /// Keeps an audit log at `path` with `options` (head frequency, fsync policy,
    /// queue size, inline limit). The file is created with mode 0600, or continued
    /// after its last complete line once its tail verifies under this server's key;
    /// [`build`](Self::build) fails otherwise. Use [`Server::shutdown`] to end it with
    /// a signed head.
    pub fn audit_log_with(
        mut self,
        path: impl Into<std::path::PathBuf>,
        options: crate::audit::AuditOptions,
    ) -> Self {
        self.audit = Some((path.into(), options));
        self
    }

    /// Sends alerts (EVT-003: the security events marked *alert*, past their
    /// thresholds) to `sink` instead of the default [`LogAlertSink`], which logs them
    /// at WARN. The sink is called on connection tasks and must not block; see
    /// [`AlertSink`] for what reaches it.
    ///
    /// [`LogAlertSink`]: crate::LogAlertSink
    /// [`AlertSink`]: crate::AlertSink
    pub fn alert_sink(mut self, sink: impl crate::alerts::AlertSink) -> Self {
        self.alert_sink = Some(AlertSinkHandle(Arc::new(sink)));
        self
    }

    /// Replaces the alert thresholds (default: [`AlertThresholds::default`]).
    ///
    /// [`AlertThresholds::default`]: crate::AlertThresholds
    pub fn alert_thresholds(mut self, thresholds: crate::alerts::AlertThresholds) -> Self {
        self.alert_thresholds = thresholds;
        self
    }

    /// Keeps the at-most-once table (spec section 14: lineages, recorded request ids,
    /// cached outcomes, within the same bounds, [`Limits::at_most_once`]) in an
    /// embedded database at `path`, so that it survives restarts (AMO-035): a call
    /// that completed before a restart is answered with its original result, and
    /// one that was running is answered RESULT_UNAVAILABLE, never executed twice. An id is durably recorded before its
    /// handler runs and an outcome durably stored before it is sent (fsync on every
    /// commit); once a write to the database fails, calls are refused UNAVAILABLE
    /// until the server is restarted (the database does not recover from an I/O
    /// error in place).
    /// The file is created when missing; [`build`](Self::build) fails with
    /// [`BuildError::AtMostOnceStore`] when it cannot be opened or read (another
    /// server holding it, a damaged file). Without it, the table lives in memory only.
    pub fn at_most_once_store(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.amo_store = Some(path.into());
        self
    }

    /// Options that weaken security.
    pub fn dangerous(self) -> DangerousServerBuilder {
        DangerousServerBuilder { builder: self }
    }

    /// Validates the configuration, compiles schemas and signs the manifest.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid schema or origin, duplicate tool names, a
    /// configuration no client could authenticate against, or an audit log that
    /// cannot be opened or whose tail does not verify ([`BuildError::Audit`]).
    pub fn build(self) -> Result<Server, BuildError> {
        self.upgrade.validate()?;
        let mut names = HashSet::new();
        for tool in &self.tools {
            if !names.insert(tool.descriptor.name.clone()) {
                return Err(BuildError::DuplicateTool(tool.descriptor.name.clone()));
            }
        }
        if self.clients.is_empty() && self.grant_issuers.is_empty() {
            return Err(BuildError::NoClients);
        }
        let catalog = Catalog::new(self.tools, &self.identity)?;
        let at_most_once = match &self.amo_store {
            Some(path) => crate::amo::SharedAtMostOnce::durable(
                path,
                self.limits.at_most_once.clone(),
                self.amo_store_fault.as_ref(),
            )?,
            None => crate::amo::SharedAtMostOnce::new(self.limits.at_most_once.clone()),
        };
        let audit = match &self.audit {
            Some((path, options)) => {
                Some(crate::audit::AuditLog::open(path, &self.identity, options)?)
            }
            None => None,
        };
        #[allow(unused_mut)] // changed only with `__fault_injection`
        let mut connection_limits = self.limits.connection.clone();
        #[cfg(feature = "__fault_injection")]
        if self.faults.contains(&crate::fault::Fault::SkipReplayCheck) {
            connection_limits.fault_skip_replay_check_for_conformance_testing_only = true;
        }
        let mut protocol = ServerConfig::new(self.identity, self.endpoint, &mut rand_core::OsRng)
            .allow_clients(self.clients.keys().copied())
            .trust_grant_issuers(self.grant_issuers)
            .with_limits(connection_limits)
            .with_max_clock_skew(self.limits.max_clock_skew_secs);
        if let Some(token) = self.certificate {
            protocol = protocol.with_certificate(token)?;
        }
        if self.first_send != (0, 0) {
            protocol
                .dangerous()
                .start_send_sequence_for_testing(self.first_send.0)
                .start_send_epoch_for_testing(self.first_send.1);
        }
        let mut authz_limits = AuthzLimits::default();
        authz_limits.max_in_flight = self.limits.max_in_flight;
        authz_limits.max_clock_skew_secs = self.limits.max_clock_skew_secs;
        let rates = crate::connection::RateBudgets::new(&self.limits);
        Ok(Server {
            inner: Arc::new(Inner {
                protocol: Arc::new(protocol),
                upgrade: self.upgrade,
                catalog: watch::Sender::new(Arc::new(catalog)),
                limits: self.limits,
                authz_limits,
                policy: RwLock::new(Policy {
                    version: 1,
                    clients: self.clients,
                    revoked_grants: HashSet::new(),
                }),
                require_signatures: self.require_signatures,
                authorizer: self.authorizer,
                admission: self.admission,
                unauthenticated: Mutex::new(HashMap::new()),
                rates,
                at_most_once,
                audit,
                shutdown: crate::shutdown::ShutdownState::new(),
                alerts: crate::alerts::Alerts::new(
                    self.alert_sink
                        .map_or_else(|| Arc::new(crate::alerts::LogAlertSink) as _, |sink| sink.0),
                    self.alert_thresholds,
                ),
                #[cfg(feature = "__fault_injection")]
                faults: self.faults,
            }),
        })
    }
}

/// Security-weakening options of a [`ServerBuilder`].
#[derive(Debug)]
pub struct DangerousServerBuilder {
    builder: ServerBuilder,
}

impl DangerousServerBuilder {
    /// Lets `fault` make the writes of the durable at-most-once store
    /// ([`ServerBuilder::at_most_once_store`]) fail while it is switched on, so that a
    /// conformance run can check AMO-036 from outside: while the store cannot record
    /// an id, a REQUEST is refused UNAVAILABLE (14) and its tool does not run. For
    /// testing only; it does nothing without a durable store. A production server
    /// has no reason to hold such a switch.
    pub fn at_most_once_store_write_fault_for_testing(
        mut self,
        fault: crate::amo::StoreWriteFault,
    ) -> Self {
        self.builder.amo_store_fault = Some(fault);
        self
    }

    /// Accepts REQUESTs without envelope signatures and sends RESPONSEs unsigned. The
    /// AEAD still authenticates every record, but the audit log loses proof of who
    /// asked and who answered.
    pub fn disable_envelope_signatures(mut self) -> Self {
        self.builder.require_signatures = false;
        self
    }

    /// CONFORMANCE TESTING ONLY: every session's server→client direction starts at
    /// sequence number `seq` (capped at `2^62 − 1`) instead of 0.
    ///
    /// It exists so that the conformance suite can check the end of the sequence
    /// space (REC-011..REC-013: the server closes with SEQUENCE_EXHAUSTED (4005),
    /// sealing the CLOSE with the last number) in a few records instead of `2^62`;
    /// the suite is told the same value (spec LIM-017). Nonces stay unique, but the
    /// server no longer numbers from 0 (REC-010): every conforming client closes the
    /// session on the first record. Never set it on a server real clients use.
    pub fn start_send_sequence_for_testing(mut self, seq: u64) -> Self {
        self.builder.first_send.0 = seq;
        self
    }

    /// CONFORMANCE TESTING ONLY: every session's server→client direction starts in
    /// epoch `epoch` instead of 0 (under the handshake's key).
    ///
    /// It exists so that the conformance suite can check that a server in the last
    /// epoch, `2^32 − 1`, closes with SEQUENCE_EXHAUSTED (4005) instead of rekeying
    /// (KEY-006) without `2^32` rekeys; the suite is told the same value (spec
    /// LIM-017). Every conforming client closes the session on the first record
    /// (wrong epoch). Never set it on a server real clients use.
    pub fn start_send_epoch_for_testing(mut self, epoch: u32) -> Self {
        self.builder.first_send.1 = epoch;
        self
    }

    /// FAULT INJECTION: builds a server with a deliberately broken check, so that
    /// the conformance suite's own tests can show it detects the fault. Only with
    /// the `__fault_injection` feature; never use it anywhere else.
    #[cfg(feature = "__fault_injection")]
    pub fn inject_fault_for_conformance_testing_only(mut self, fault: crate::fault::Fault) -> Self {
        self.builder.faults.push(fault);
        self
    }

    /// Back to the builder.
    pub fn done(self) -> ServerBuilder {
        self.builder
    }
}

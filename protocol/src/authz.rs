//! Per-request authorization: the checks every REQUEST passes, in a fixed order,
//! before its tool runs.
//!
//! A connection stays open for hours and carries many calls; permissions change in
//! the meantime (grants expire or are revoked, policy changes, a tool's definition
//! changes). So authorization is decided again for every call, by
//! [`RequestPipeline::evaluate`]: a pure function of the request, the session's
//! authorization state ([`SessionAuthz`]), the injected time and a few pluggable
//! components (rate budgets, revocation list, policy, argument validator,
//! at-most-once store). The server driver runs it and applies the [`Verdict`]; it
//! decides nothing itself.
//!
//! Implements spec section "Per-request authorization" (AUTHZ-001..AUTHZ-025).
//!
//! # Rules (normative)
//!
//! 1. **Every call (AUTHZ-001).** A server evaluates every REQUEST before running
//!    its tool, and keeps nothing from one evaluation to the next: a revocation, an
//!    expiry, a policy change or a manifest change takes effect on the very next
//!    request.
//! 2. **Order (AUTHZ-002).** The steps below run in this order. The first step that
//!    refuses ends the evaluation and the request is answered with an ERROR carrying
//!    the request id and that step's code; later steps are not evaluated. ([`Step`]
//!    numbers them.)
//!    1. **Budget (AUTHZ-003, AUTHZ-004, AUTHZ-006).** If the connection already has
//!       [`AuthzLimits::max_in_flight`] calls executing → RESOURCE_EXHAUSTED with
//!       `retry_after_ms` = [`AuthzLimits::in_flight_retry_after`]. Then the rate
//!       budgets are charged ([`RateBudgets::check`]: per connection, per identity,
//!       per (identity, tool)); an exhausted budget → RESOURCE_EXHAUSTED with its
//!       `retry_after_ms` (milliseconds, rounded up).
//!    2. **Granted (AUTHZ-008, AUTHZ-009).** The tool must be in the session's
//!       granted set (from CAP_GRANT and CAP_UPDATE), and the digest it was granted
//!       with must equal the digest of the tool's entry in the current manifest
//!       ([`ToolDigests`]); otherwise → PERMISSION_DENIED. A tool that does not exist
//!       gets the same answer as one that is not granted, so callers learn nothing
//!       about tools they may not use.
//!    3. **Grant (AUTHZ-010 to AUTHZ-015).** The grant the call relies on (rule 3)
//!       must be unexpired (rule 4; else GRANT_EXPIRED) and unrevoked (rule 5; else
//!       CAPABILITY_REVOKED), expiry checked first. A session authorized by key
//!       allowlist, calling without naming a grant, skips this step. (The session's
//!       own lifetime is enforced by the connection, which closes with
//!       SESSION_EXPIRED.)
//!    4. **Policy (AUTHZ-016, AUTHZ-017).** The [`Authorizer`] decides against the
//!       current policy snapshot, whose version is
//!       [`RequestPipeline::policy_version`]; a denial → PERMISSION_DENIED.
//!    5. **Signature (AUTHZ-018, AUTHZ-019).** The envelope signature must verify
//!       (rule 6); otherwise → UNAUTHENTICATED.
//!    6. **Arguments (AUTHZ-020).** The [`ArgumentValidator`] must accept the
//!       argument bytes for the tool; otherwise → INVALID_ARGUMENT.
//!    7. **At-most-once (AMO-017).** The at-most-once store admits the request id
//!       (rule 4 of [`crate::amo`]): a cached outcome is answered again
//!       ([`Verdict::AnswerFromCache`]); an id in flight is not executed
//!       ([`Verdict::AlreadyInFlight`]); STALE_REQUEST_ID, RESULT_UNAVAILABLE,
//!       INVALID_ARGUMENT (id ≥ 2^62) or UNAVAILABLE (table full) refuse.
//!    8. **Execute** ([`Verdict::Execute`]); the driver reports the outcome to the
//!       at-most-once store.
//!
//!    Cheap, stateless checks come first, so a flood of refused requests costs
//!    little; the budget comes before everything, so refused requests are still
//!    rate limited; signature verification and argument validation, the costly
//!    steps, run only for calls that are authorized; and the request id is consumed
//!    only by a request that passed everything else.
//! 3. **The grant a call relies on (AUTHZ-010, AUTHZ-011, AUTHZ-012).** If the
//!    REQUEST names a grant (`grant_id`), the session must hold a verified grant with
//!    that id that covers the tool, else PERMISSION_DENIED; steps 3 and 4 use that
//!    grant. If it names none and the session is authorized by key allowlist
//!    ([`SessionAuthz::key_allowed`]), no grant is used. Otherwise the session's
//!    grants that cover the tool are tried in the order they were presented: the
//!    first that is unexpired and unrevoked is used; if there is none →
//!    PERMISSION_DENIED, and if every covering grant fails, the first one's failure
//!    (GRANT_EXPIRED or CAPABILITY_REVOKED) is the answer.
//! 4. **Expiry (AUTHZ-013).** A grant is expired at Unix time `now` when
//!    `now - max_clock_skew_secs >= expires_at_unix` (its `exp` rounded down to the
//!    second, so it may end up to a second early, never late). The skew is
//!    [`AuthzLimits::max_clock_skew_secs`], the same tolerance the handshake used.
//! 5. **Revocation (AUTHZ-014, AUTHZ-015).** A grant is revoked when the
//!    [`RevocationList`] lists its id or the id of any token of its delegation chain
//!    (revoking a grant revokes every delegation below it). The list is consulted on
//!    every call, after the grant's expiry.
//! 6. **Signature (AUTHZ-018, AUTHZ-019).** The signature covers the request as in
//!    [`RequestFields`] (session id, request id, tool, argument bytes, grant id or
//!    empty) under the client's identity key (ENV-001, ENV-006). A signature that is
//!    present is always verified; a missing one is refused when the session requires
//!    signatures ([`SessionAuthz::signatures_required`], the default).
//! 7. **What a refusal costs (AUTHZ-005, AMO-018).** Rate budgets are charged at
//!    step 1 whatever later steps decide. A refusal at steps 1 to 6 does not reach
//!    the at-most-once store, so the request id is not consumed.
//! 8. **Decision record (AUTHZ-024, AUTHZ-025).** Every evaluation produces a
//!    [`DecisionRecord`] (session id, client key, lineage, request id, retry flag,
//!    tool, decision, refusing step, policy version, the authority used), to be
//!    logged and kept in the audit log. It holds no argument bytes, signatures or
//!    grant tokens.
//! 9. **No secrets (AUTHZ-021, AUTHZ-022, AUTHZ-023).** Refusal messages sent to the
//!    peer are fixed strings, except INVALID_ARGUMENT, which appends the validator's
//!    reason truncated to [`MAX_REASON_LEN`] bytes. The authorizer's reason goes
//!    only to the decision record. Neither the messages nor the record contain
//!    argument bytes, signatures or grant tokens (beyond what a validator's reason
//!    quotes, which is why validators must not quote argument values).

use crate::amo::{Admission, AtMostOnceStore, CachedOutcome, LineageId, LineageKey};
use crate::codes::ErrorCode;
use crate::envelope::RequestFields;
use crate::grant::Grant;
use crate::handshake::SessionInfo;
use crate::identity::IdentityKey;
use crate::manifest::Manifest;
use crate::message::{ErrorMessage, GrantedTool, Request};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// Longest validator reason, in bytes, appended to an INVALID_ARGUMENT message
/// (AUTHZ-020); longer reasons are cut at a character boundary.
pub const MAX_REASON_LEN: usize = 256;

/// How long to wait before retrying a call refused for an exhausted budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// The wait in whole milliseconds, rounded up (so a client that waits this long
    /// finds the budget refilled), as sent in `retry_after_ms`.
    pub fn as_millis_ceil(self) -> u64 {
        let millis = self.0.as_nanos().div_ceil(1_000_000);
        u64::try_from(millis).unwrap_or(u64::MAX)
    }
}

/// Rate budgets of step 1 (AUTHZ-004). The protocol crate does not implement token
/// buckets; the server plugs in its limiters (per connection, per identity, per
/// (identity, tool)) behind this trait. Closures
/// `FnMut(&IdentityKey, &str, Instant) -> Result<(), RetryAfter>` implement it.
pub trait RateBudgets {
    /// Charges one call of `tool` by `client` at `now` against every budget that
    /// applies.
    ///
    /// `tool` is the name the client sent, not yet checked against anything: an
    /// implementation that keeps per-tool state must bound it (for example keep
    /// per-tool buckets only for tools of the manifest), or a client could grow it
    /// without limit with made-up names.
    ///
    /// # Errors
    /// [`RetryAfter`] when a budget is exhausted: how long until the call would fit.
    fn check(&mut self, client: &IdentityKey, tool: &str, now: Instant) -> Result<(), RetryAfter>;
}

impl<F> RateBudgets for F
where
    F: FnMut(&IdentityKey, &str, Instant) -> Result<(), RetryAfter>,
{
    fn check(&mut self, client: &IdentityKey, tool: &str, now: Instant) -> Result<(), RetryAfter> {
        self(client, tool, now)
    }
}

/// The revocation list of step 3 (AUTHZ-014): grant ids (`jti`) that must no longer
/// be honoured. `BTreeSet<String>` and `HashSet<String>` implement it.
pub trait RevocationList {
    /// Whether the grant with id `grant_id` is revoked.
    fn is_revoked(&self, grant_id: &str) -> bool;
}

impl RevocationList for BTreeSet<String> {
    fn is_revoked(&self, grant_id: &str) -> bool {
        self.contains(grant_id)
    }
}

impl<S: BuildHasher> RevocationList for HashSet<String, S> {
    fn is_revoked(&self, grant_id: &str) -> bool {
        self.contains(grant_id)
    }
}

/// What an [`Authorizer`] is asked about one call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuthorizationRequest<'a> {
    /// The session id.
    pub session_id: &'a [u8; 32],
    /// The client's authenticated identity key.
    pub client: &'a IdentityKey,
    /// The tool called (granted, by step 2).
    pub tool: &'a str,
    /// The argument bytes (msgpack), not yet validated.
    pub args: &'a [u8],
    /// The grant the call relies on (AUTHZ-010, AUTHZ-012), `None` for a call authorized by
    /// key allowlist.
    pub grant: Option<&'a Grant>,
    /// Version of the policy snapshot the decision is made against.
    pub policy_version: u64,
}

impl<'a> AuthorizationRequest<'a> {
    /// A request relying on no grant, against policy version 0.
    pub fn new(
        session_id: &'a [u8; 32],
        client: &'a IdentityKey,
        tool: &'a str,
        args: &'a [u8],
    ) -> Self {
        Self {
            session_id,
            client,
            tool,
            args,
            grant: None,
            policy_version: 0,
        }
    }

    /// The same request, relying on `grant`.
    #[must_use]
    pub fn with_grant(mut self, grant: &'a Grant) -> Self {
        self.grant = Some(grant);
        self
    }

    /// The same request, against policy version `policy_version`.
    #[must_use]
    pub fn with_policy_version(mut self, policy_version: u64) -> Self {
        self.policy_version = policy_version;
        self
    }
}

/// An [`Authorizer`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The policy allows the call.
    Allow,
    /// The policy denies the call. `reason` goes to the decision record for
    /// operators, never to the peer (AUTHZ-022).
    Deny {
        /// Why, for the logs.
        reason: String,
    },
}

impl Decision {
    /// A denial with `reason` for the logs.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::Deny {
            reason: reason.into(),
        }
    }
}

/// The policy of step 4 (AUTHZ-016, AUTHZ-017): decides one call against the current policy
/// snapshot. Implementations are pure: the same request against the same snapshot
/// gets the same decision.
pub trait Authorizer {
    /// Decides `request`.
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision;
}

/// The built-in policy: per client key, the tools it may call and the scopes it
/// holds; per tool, the scopes a call needs. Deny by default.
///
/// A call is allowed when the client is listed, the tool is among its tools (`"*"`
/// meaning every tool), and the call holds every scope the tool requires. The scopes
/// a call holds are the client's scopes, intersected with the grant's scopes when the
/// call relies on a grant. With [`allow_grant_holders`](Self::allow_grant_holders), a
/// client that is not listed but relies on a grant covering the tool is judged by the
/// grant alone (its scopes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowlistAuthorizer {
    clients: BTreeMap<IdentityKey, ClientPermissions>,
    required_scopes: BTreeMap<String, BTreeSet<String>>,
    grant_holders: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ClientPermissions {
    tools: BTreeSet<String>,
    scopes: BTreeSet<String>,
}

impl AllowlistAuthorizer {
    /// A policy that denies everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `client` call `tools` (`"*"` for every tool) and gives it `scopes`
    /// (added to what it had).
    #[must_use]
    pub fn allow<T, S>(
        mut self,
        client: IdentityKey,
        tools: impl IntoIterator<Item = T>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self
    where
        T: Into<String>,
        S: Into<String>,
    {
        let entry = self.clients.entry(client).or_default();
        entry.tools.extend(tools.into_iter().map(Into::into));
        entry.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Requires every call of `tool` to hold `scopes` (added to what it required).
    #[must_use]
    pub fn require_scopes<S: Into<String>>(
        mut self,
        tool: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.required_scopes
            .entry(tool.into())
            .or_default()
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Judges clients that are not listed by the grant their call relies on: allowed
    /// when the grant covers the tool and holds the scopes the tool requires.
    /// Default off.
    #[must_use]
    pub fn allow_grant_holders(mut self) -> Self {
        self.grant_holders = true;
        self
    }
}

impl Authorizer for AllowlistAuthorizer {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        let held: BTreeSet<&str> = match (self.clients.get(request.client), request.grant) {
            (Some(permissions), grant) => {
                let tool_listed = permissions
                    .tools
                    .iter()
                    .any(|tool| tool == crate::grant::ANY_TOOL || tool == request.tool);
                if !tool_listed {
                    return Decision::deny("tool not in the client's allowlist");
                }
                permissions
                    .scopes
                    .iter()
                    .map(String::as_str)
                    .filter(|scope| grant.is_none_or(|grant| grant.has_scope(scope)))
                    .collect()
            }
            (None, Some(grant)) if self.grant_holders => {
                if !grant.allows_tool(request.tool) {
                    return Decision::deny("grant does not cover the tool");
                }
                grant.scope.iter().map(String::as_str).collect()
            }
            (None, _) => return Decision::deny("client not in the allowlist"),
        };
        let missing = self
            .required_scopes
            .get(request.tool)
            .and_then(|required| required.iter().find(|scope| !held.contains(scope.as_str())));
        match missing {
            Some(scope) => Decision::deny(format!("missing scope {scope:?}")),
            None => Decision::Allow,
        }
    }
}

/// Argument validation of step 6 (AUTHZ-020). The protocol crate has no JSON Schema
/// engine; the server validates the msgpack argument bytes against the tool's input
/// schema behind this trait. Closures `Fn(&str, &[u8]) -> Result<(), String>`
/// implement it.
pub trait ArgumentValidator {
    /// Checks `args` for `tool`.
    ///
    /// # Errors
    /// A reason for the client (it is sent in the INVALID_ARGUMENT message,
    /// truncated to [`MAX_REASON_LEN`] bytes, and logged in full): describe the
    /// arguments' fault (`"/0: expected integer"`) without quoting argument values,
    /// which may be sensitive, and never server internals.
    fn validate(&self, tool: &str, args: &[u8]) -> Result<(), String>;
}

impl<F> ArgumentValidator for F
where
    F: Fn(&str, &[u8]) -> Result<(), String>,
{
    fn validate(&self, tool: &str, args: &[u8]) -> Result<(), String> {
        self(tool, args)
    }
}

/// The digest of every tool in the current manifest (step 2 compares granted digests
/// with these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolDigests {
    digests: BTreeMap<String, [u8; 32]>,
}

impl ToolDigests {
    /// No tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// The digests of every tool of `manifest` ([`crate::manifest::ToolDescriptor::digest`]).
    pub fn from_manifest(manifest: &Manifest) -> Self {
        Self {
            digests: manifest
                .tools
                .iter()
                .map(|tool| (tool.name.clone(), tool.digest()))
                .collect(),
        }
    }

    /// Sets the digest of `tool`.
    pub fn insert(&mut self, tool: impl Into<String>, digest: [u8; 32]) {
        self.digests.insert(tool.into(), digest);
    }

    /// The current digest of `tool`, `None` when the manifest has no such tool.
    pub fn digest(&self, tool: &str) -> Option<&[u8; 32]> {
        self.digests.get(tool)
    }
}

/// A session's authorization state, kept by the server driver for the connection's
/// life and updated when CAP_GRANT, CAP_UPDATE or CAP_REQUEST change it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionAuthz {
    /// The session id (handshake hash).
    pub session_id: [u8; 32],
    /// The client's authenticated identity key.
    pub client: IdentityKey,
    /// The lineage the session's calls belong to (AMO-001).
    pub lineage: LineageKey,
    /// True when the session's authority does not come from grants: the client key
    /// is on the server's allowlist, or the server accepts any client and leaves
    /// authorization to the [`Authorizer`]. Calls that name no grant then skip
    /// step 3.
    pub key_allowed: bool,
    /// Whether every REQUEST must carry a valid envelope signature (AUTHZ-019).
    /// Default true; a deployment may switch signatures off for high-rate internal
    /// links.
    pub signatures_required: bool,
    /// The verified grants the client presented, in order.
    pub grants: Vec<Grant>,
    granted: BTreeMap<String, [u8; 32]>,
}

impl SessionAuthz {
    /// The state of a freshly established session: its id, peer, lineage
    /// ([`LineageKey::for_session`]) and verified grants; signatures required;
    /// nothing granted yet (see [`set_granted`](Self::set_granted)).
    pub fn new(session: &SessionInfo, key_allowed: bool) -> Self {
        let (lineage, _) = LineageKey::for_session(session);
        let mut state = Self::from_parts(session.session_id, session.peer, lineage.lineage);
        state.key_allowed = key_allowed;
        state.grants = session.grants.clone();
        state
    }

    /// A session with this id, client and lineage id; not key-allowed, signatures
    /// required, no grants, nothing granted.
    pub fn from_parts(session_id: [u8; 32], client: IdentityKey, lineage: LineageId) -> Self {
        Self {
            session_id,
            client,
            lineage: LineageKey::new(client, lineage),
            key_allowed: false,
            signatures_required: true,
            grants: Vec::new(),
            granted: BTreeMap::new(),
        }
    }

    /// Sets [`key_allowed`](Self::key_allowed).
    #[must_use]
    pub fn with_key_allowed(mut self, key_allowed: bool) -> Self {
        self.key_allowed = key_allowed;
        self
    }

    /// Sets [`signatures_required`](Self::signatures_required).
    #[must_use]
    pub fn with_signatures_required(mut self, required: bool) -> Self {
        self.signatures_required = required;
        self
    }

    /// Adds a verified grant (presented in the handshake or a CAP_REQUEST).
    #[must_use]
    pub fn with_grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Replaces the granted set with the one just sent in CAP_GRANT or CAP_UPDATE
    /// (each is the complete new set). A digest that is not 32 bytes never matches.
    pub fn set_granted(&mut self, granted: &[GrantedTool]) {
        self.granted = granted
            .iter()
            .filter_map(|tool| {
                <[u8; 32]>::try_from(tool.digest.as_ref())
                    .ok()
                    .map(|digest| (tool.name.clone(), digest))
            })
            .collect();
    }

    /// The digest `tool` was granted with, `None` when it is not granted.
    pub fn granted_digest(&self, tool: &str) -> Option<&[u8; 32]> {
        self.granted.get(tool)
    }
}

/// Limits applied by the pipeline. Each field's doc gives its default and the attack
/// it bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthzLimits {
    /// Calls executing at once on one connection. Default 64. Bounds the work one
    /// connection can have the server do concurrently.
    pub max_in_flight: u32,
    /// `retry_after_ms` hint sent with an in-flight refusal. Default 100 ms. A slot
    /// frees when any running call finishes, which the server cannot predict; the
    /// hint keeps well-behaved clients from retrying in a tight loop.
    pub in_flight_retry_after: Duration,
    /// Tolerated clock difference with grant issuers when checking expiry, in
    /// seconds. Default 30 (as `ServerConfig`'s); set it to the value the handshake
    /// uses, so that a grant accepted at the handshake is not refused at its first
    /// call. Bounds how long past its `exp` a grant is honoured.
    pub max_clock_skew_secs: i64,
}

impl Default for AuthzLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            in_flight_retry_after: Duration::from_millis(100),
            max_clock_skew_secs: 30,
        }
    }
}

/// A step of the pipeline, numbered in evaluation order (AUTHZ-002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Step {
    /// 1: in-flight cap and rate budgets.
    Budget,
    /// 2: the tool is granted, bound to its current manifest digest.
    Granted,
    /// 3: the grant relied on is unexpired and unrevoked.
    Grant,
    /// 4: the policy snapshot allows the call.
    Policy,
    /// 5: the envelope signature verifies.
    Signature,
    /// 6: the arguments are valid.
    Arguments,
    /// 7: the at-most-once store admits the request id.
    AtMostOnce,
}

impl Step {
    /// Every step, in evaluation order.
    pub const ALL: [Step; 7] = [
        Step::Budget,
        Step::Granted,
        Step::Grant,
        Step::Policy,
        Step::Signature,
        Step::Arguments,
        Step::AtMostOnce,
    ];

    /// The step's number, 1 to 7.
    pub fn number(self) -> u8 {
        match self {
            Step::Budget => 1,
            Step::Granted => 2,
            Step::Grant => 3,
            Step::Policy => 4,
            Step::Signature => 5,
            Step::Arguments => 6,
            Step::AtMostOnce => 7,
        }
    }

    /// The step's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Step::Budget => "budget",
            Step::Granted => "granted",
            Step::Grant => "grant",
            Step::Policy => "policy",
            Step::Signature => "signature",
            Step::Arguments => "arguments",
            Step::AtMostOnce => "at_most_once",
        }
    }
}

/// What the driver does with a REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Run the tool. The id is in flight in the at-most-once store; report the
    /// outcome there (`complete`, `cancel` or `abandon`) and send it only if
    /// `complete` returns true.
    Execute,
    /// Answer with an ERROR (see [`error_message`](Self::error_message)).
    Refuse {
        /// The RPC error code.
        code: ErrorCode,
        /// The message for the peer (AUTHZ-021).
        message: String,
        /// For RESOURCE_EXHAUSTED: when to retry, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// The call already completed: answer again with this outcome (a RESPONSE with
    /// these result bytes, signed for this session, or this ERROR).
    AnswerFromCache(CachedOutcome),
    /// The call is executing: do not run it. Answer this request when the running
    /// call completes, with what the at-most-once store's `admit` returns for the id
    /// then (its cached outcome, or RESULT_UNAVAILABLE if the outcome was not kept).
    AlreadyInFlight,
}

impl Verdict {
    /// The ERROR body answering request `id`: for a refusal, and for a cached error
    /// outcome; `None` otherwise.
    pub fn error_message(&self, id: u64) -> Option<ErrorMessage> {
        match self {
            Verdict::Refuse {
                code,
                message,
                retry_after_ms,
            } => Some(ErrorMessage {
                id: Some(id),
                code: code.0,
                message: message.clone(),
                retry_after_ms: *retry_after_ms,
            }),
            Verdict::AnswerFromCache(outcome) => outcome.error_message(id),
            Verdict::Execute | Verdict::AlreadyInFlight => None,
        }
    }

    /// The refusal's code, `None` unless [`Verdict::Refuse`].
    pub fn refusal_code(&self) -> Option<ErrorCode> {
        match self {
            Verdict::Refuse { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The decision, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecisionKind {
    /// The call was let through to execute.
    Execute,
    /// The call was refused with this code.
    Refused(ErrorCode),
    /// The call was answered from the at-most-once cache.
    AnsweredFromCache,
    /// The call was already executing.
    AlreadyInFlight,
}

/// What authorized a call (AUTHZ-010, AUTHZ-011, AUTHZ-012).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Authority {
    /// The client's key is allowed; no grant was used.
    KeyAllowlist,
    /// This grant (its id).
    Grant(String),
}

/// The audit record of one evaluation (AUTHZ-024, AUTHZ-025). Holds no argument bytes,
/// signatures or tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecisionRecord {
    /// The session id.
    pub session_id: [u8; 32],
    /// The client's identity key.
    pub client: IdentityKey,
    /// The call's lineage id.
    pub lineage: LineageId,
    /// The request id.
    pub request_id: u64,
    /// Whether the request was marked as a retry.
    pub retry: bool,
    /// The tool named in the request.
    pub tool: String,
    /// The decision.
    pub decision: DecisionKind,
    /// The step that refused; `None` when nothing refused.
    pub refused_at: Option<Step>,
    /// Version of the policy snapshot the call was evaluated against.
    pub policy_version: u64,
    /// What authorized the call, once step 3 passed.
    pub authority: Option<Authority>,
    /// Detail for operators (the authorizer's or validator's reason), never sent
    /// as is to the peer.
    pub detail: Option<String>,
}

/// The result of [`RequestPipeline::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Evaluation {
    /// What to do.
    pub verdict: Verdict,
    /// What to log.
    pub record: DecisionRecord,
}

/// The per-request authorization pipeline (AUTHZ-002): the components one
/// evaluation uses, borrowed from the server's state for the call.
///
/// The at-most-once store and the rate budgets are borrowed mutably; a server that
/// shares them between connections implements the traits on a handle that locks
/// inside each method, so no lock is held across the evaluation.
pub struct RequestPipeline<'a> {
    /// Limits.
    pub limits: &'a AuthzLimits,
    /// Rate budgets (step 1).
    pub rate_budgets: &'a mut dyn RateBudgets,
    /// Digests of the current manifest (step 2).
    pub tools: &'a ToolDigests,
    /// Revoked grant ids (step 3).
    pub revocations: &'a dyn RevocationList,
    /// The current policy snapshot (step 4).
    pub authorizer: &'a dyn Authorizer,
    /// Version of that snapshot, passed to the authorizer and recorded.
    pub policy_version: u64,
    /// Argument validation (step 6).
    pub validator: &'a dyn ArgumentValidator,
    /// The at-most-once store (step 7).
    pub at_most_once: &'a mut dyn AtMostOnceStore,
}

impl std::fmt::Debug for RequestPipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestPipeline")
            .field("limits", self.limits)
            .field("policy_version", &self.policy_version)
            .finish_non_exhaustive()
    }
}

/// A refusal by one step.
struct Refusal {
    step: Step,
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
    detail: Option<String>,
}

impl Refusal {
    fn new(step: Step, code: ErrorCode, message: &str) -> Self {
        Self {
            step,
            code,
            message: message.to_owned(),
            retry_after_ms: None,
            detail: None,
        }
    }
}

/// The outcome of steps 1 to 7 when no step refused.
enum Passed {
    Execute,
    Cached(CachedOutcome),
    InFlight,
}

impl RequestPipeline<'_> {
    /// Evaluates one REQUEST (AUTHZ-001, AUTHZ-002).
    ///
    /// `in_flight` is the number of calls of this connection executing now (not
    /// counting this one); `now` is the monotonic time for the rate budgets and
    /// `unix_now` the wall-clock time in seconds (for example
    /// [`crate::Connection::unix_time`]) for grant expiry.
    pub fn evaluate(
        &mut self,
        session: &SessionAuthz,
        request: &Request,
        in_flight: u32,
        now: Instant,
        unix_now: i64,
    ) -> Evaluation {
        let mut authority = None;
        let outcome = self.run_steps(session, request, in_flight, now, unix_now, &mut authority);
        let (verdict, decision, refused_at, detail) = match outcome {
            Ok(Passed::Execute) => (Verdict::Execute, DecisionKind::Execute, None, None),
            Ok(Passed::Cached(outcome)) => (
                Verdict::AnswerFromCache(outcome),
                DecisionKind::AnsweredFromCache,
                None,
                None,
            ),
            Ok(Passed::InFlight) => (
                Verdict::AlreadyInFlight,
                DecisionKind::AlreadyInFlight,
                None,
                None,
            ),
            Err(refusal) => (
                Verdict::Refuse {
                    code: refusal.code,
                    message: refusal.message,
                    retry_after_ms: refusal.retry_after_ms,
                },
                DecisionKind::Refused(refusal.code),
                Some(refusal.step),
                refusal.detail,
            ),
        };
        Evaluation {
            verdict,
            record: DecisionRecord {
                session_id: session.session_id,
                client: session.client,
                lineage: session.lineage.lineage,
                request_id: request.id,
                retry: request.retry,
                tool: request.tool.clone(),
                decision,
                refused_at,
                policy_version: self.policy_version,
                authority,
                detail,
            },
        }
    }

    fn run_steps(
        &mut self,
        session: &SessionAuthz,
        request: &Request,
        in_flight: u32,
        now: Instant,
        unix_now: i64,
        authority: &mut Option<Authority>,
    ) -> Result<Passed, Refusal> {
        self.check_budget(session, request, in_flight, now)?;
        self.check_granted(session, request)?;
        let grant = self.select_grant(session, request, unix_now)?;
        *authority = Some(match grant {
            Some(grant) => Authority::Grant(grant.id.clone()),
            None => Authority::KeyAllowlist,
        });
        self.check_policy(session, request, grant)?;
        Self::check_signature(session, request)?;
        self.check_arguments(request)?;
        self.admit(session, request)
    }

    /// Step 1.
    fn check_budget(
        &mut self,
        session: &SessionAuthz,
        request: &Request,
        in_flight: u32,
        now: Instant,
    ) -> Result<(), Refusal> {
        if in_flight >= self.limits.max_in_flight {
            let mut refusal = Refusal::new(
                Step::Budget,
                ErrorCode::RESOURCE_EXHAUSTED,
                "too many calls in flight",
            );
            refusal.retry_after_ms =
                Some(RetryAfter(self.limits.in_flight_retry_after).as_millis_ceil());
            return Err(refusal);
        }
        self.rate_budgets
            .check(&session.client, &request.tool, now)
            .map_err(|retry_after| {
                let mut refusal = Refusal::new(
                    Step::Budget,
                    ErrorCode::RESOURCE_EXHAUSTED,
                    "rate limit exceeded",
                );
                refusal.retry_after_ms = Some(retry_after.as_millis_ceil());
                refusal
            })
    }

    /// Step 2.
    fn check_granted(&self, session: &SessionAuthz, request: &Request) -> Result<(), Refusal> {
        let granted = session.granted_digest(&request.tool);
        let current = self.tools.digest(&request.tool);
        match (granted, current) {
            (Some(granted), Some(current)) if granted == current => Ok(()),
            _ => Err(Refusal::new(
                Step::Granted,
                ErrorCode::PERMISSION_DENIED,
                "tool not granted",
            )),
        }
    }

    /// Step 3 (AUTHZ-010, AUTHZ-011, AUTHZ-012): the grant the call relies on, `None` for a
    /// call authorized by key allowlist.
    fn select_grant<'s>(
        &self,
        session: &'s SessionAuthz,
        request: &Request,
        unix_now: i64,
    ) -> Result<Option<&'s Grant>, Refusal> {
        if let Some(grant_id) = &request.grant_id {
            let grant = session
                .grants
                .iter()
                .find(|grant| &grant.id == grant_id)
                .ok_or_else(|| {
                    Refusal::new(
                        Step::Grant,
                        ErrorCode::PERMISSION_DENIED,
                        "grant not held by this session",
                    )
                })?;
            if !grant.allows_tool(&request.tool) {
                return Err(Refusal::new(
                    Step::Grant,
                    ErrorCode::PERMISSION_DENIED,
                    "grant does not cover the tool",
                ));
            }
            return self.grant_status(grant, unix_now).map(|()| Some(grant));
        }
        if session.key_allowed {
            return Ok(None);
        }
        let mut first_failure = None;
        for grant in session
            .grants
            .iter()
            .filter(|grant| grant.allows_tool(&request.tool))
        {
            match self.grant_status(grant, unix_now) {
                Ok(()) => return Ok(Some(grant)),
                Err(refusal) => {
                    first_failure.get_or_insert(refusal);
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| {
            Refusal::new(
                Step::Grant,
                ErrorCode::PERMISSION_DENIED,
                "no grant covers the tool",
            )
        }))
    }

    /// AUTHZ-013 then AUTHZ-014 for one grant (AUTHZ-015).
    fn grant_status(&self, grant: &Grant, unix_now: i64) -> Result<(), Refusal> {
        let skew = self.limits.max_clock_skew_secs.max(0);
        if unix_now.saturating_sub(skew) >= grant.expires_at_unix {
            return Err(Refusal::new(
                Step::Grant,
                ErrorCode::GRANT_EXPIRED,
                "grant expired",
            ));
        }
        let revoked = self.revocations.is_revoked(&grant.id)
            || grant
                .chain_ids
                .iter()
                .any(|id| self.revocations.is_revoked(id));
        if revoked {
            return Err(Refusal::new(
                Step::Grant,
                ErrorCode::CAPABILITY_REVOKED,
                "capability revoked",
            ));
        }
        Ok(())
    }

    /// Step 4.
    fn check_policy(
        &self,
        session: &SessionAuthz,
        request: &Request,
        grant: Option<&Grant>,
    ) -> Result<(), Refusal> {
        let question = AuthorizationRequest {
            session_id: &session.session_id,
            client: &session.client,
            tool: &request.tool,
            args: &request.args,
            grant,
            policy_version: self.policy_version,
        };
        match self.authorizer.authorize(&question) {
            Decision::Allow => Ok(()),
            Decision::Deny { reason } => {
                let mut refusal = Refusal::new(
                    Step::Policy,
                    ErrorCode::PERMISSION_DENIED,
                    "denied by policy",
                );
                refusal.detail = Some(reason);
                Err(refusal)
            }
        }
    }

    /// Step 5 (AUTHZ-018, AUTHZ-019).
    fn check_signature(session: &SessionAuthz, request: &Request) -> Result<(), Refusal> {
        let fields = RequestFields {
            session_id: &session.session_id,
            request_id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: request.grant_id.as_deref().unwrap_or(""),
        };
        let verified = match &request.signature {
            Some(signature) => fields.verify(&session.client, signature).is_ok(),
            None => !session.signatures_required,
        };
        if verified {
            Ok(())
        } else {
            Err(Refusal::new(
                Step::Signature,
                ErrorCode::UNAUTHENTICATED,
                "envelope signature did not verify",
            ))
        }
    }

    /// Step 6.
    fn check_arguments(&self, request: &Request) -> Result<(), Refusal> {
        self.validator
            .validate(&request.tool, &request.args)
            .map_err(|reason| {
                let shown = truncate(&reason, MAX_REASON_LEN);
                let mut refusal = Refusal::new(
                    Step::Arguments,
                    ErrorCode::INVALID_ARGUMENT,
                    &format!("invalid arguments: {shown}"),
                );
                refusal.detail = Some(reason);
                refusal
            })
    }

    /// Step 7.
    fn admit(&mut self, session: &SessionAuthz, request: &Request) -> Result<Passed, Refusal> {
        let fingerprint = crate::amo::CallFingerprint::of_request(request);
        let admission =
            self.at_most_once
                .admit_call(&session.lineage, request.id, request.retry, &fingerprint);
        let message = match admission {
            Admission::Execute => return Ok(Passed::Execute),
            Admission::Duplicate(outcome) => return Ok(Passed::Cached(outcome)),
            Admission::InFlight => return Ok(Passed::InFlight),
            Admission::Stale => "request id older than the at-most-once window",
            Admission::Unavailable => "result unavailable: the call may have run",
            Admission::IdOutOfRange => "request id out of range",
            Admission::Overloaded => "server busy, retry later",
            Admission::Mismatch => "request id already used for a different call",
        };
        let code = admission.error_code().unwrap_or(ErrorCode::UNAVAILABLE);
        Err(Refusal::new(Step::AtMostOnce, code, message))
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_milliseconds() {
        assert_eq!(RetryAfter(Duration::ZERO).as_millis_ceil(), 0);
        assert_eq!(RetryAfter(Duration::from_nanos(1)).as_millis_ceil(), 1);
        assert_eq!(RetryAfter(Duration::from_micros(1500)).as_millis_ceil(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(7)).as_millis_ceil(), 7);
        assert_eq!(RetryAfter(Duration::MAX).as_millis_ceil(), u64::MAX);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: cutting inside it drops it whole.
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn steps_are_numbered_in_order() {
        let numbers: Vec<u8> = Step::ALL.iter().map(|step| step.number()).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6, 7]);
        let mut sorted = Step::ALL;
        sorted.sort();
        assert_eq!(sorted, Step::ALL);
    }
}

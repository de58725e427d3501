//! Per-request authorization (spec section 13): every REQUEST passes the same
//! checks in the same order, the first refusal decides the answer, and only a request
//! that passes everything executes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use serde_bytes::ByteBuf;
use time::macros::datetime;
use toolwire_protocol::amo::{
    AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome, LineageOrigin,
};
use toolwire_protocol::authz::{
    AllowlistAuthorizer, ArgumentValidator, Authority, AuthorizationRequest, Authorizer,
    AuthzLimits, Decision, DecisionKind, RateBudgets, RequestPipeline, RetryAfter, SessionAuthz,
    Step, ToolDigests, Verdict, MAX_REASON_LEN,
};
use toolwire_protocol::envelope::RequestFields;
use toolwire_protocol::grant::{Grant, GrantBuilder};
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{CapRequest, GrantedTool, Request};
use toolwire_protocol::{
    ClientConfig, Connection, ErrorCode, Event, Identity, IdentityKey, Message, ServerConfig,
};

/// 2026-01-01T00:00:00Z.
const NOW_UNIX: i64 = 1_767_225_600;
const SESSION_ID: [u8; 32] = [0x5e; 32];
const LINEAGE: [u8; 16] = [0x11; 16];
const TOOL: &str = "search";
/// `["s3cr3t"]` in msgpack: arguments that must never appear in a message or a log.
const ARGS: &[u8] = &[0x91, 0xa6, b's', b'3', b'c', b'r', b'3', b't'];

fn client_identity() -> Identity {
    Identity::from_seed(&[0x43; 32])
}

fn client_key() -> IdentityKey {
    client_identity().public_key()
}

fn descriptor(name: &str, description: &str) -> ToolDescriptor {
    ToolDescriptor {
        name: name.into(),
        description: description.into(),
        input_schema: r#"{"type":"array"}"#.into(),
        output_schema: String::new(),
    }
}

fn grant(id: &str, tools: &[&str], expires_at_unix: i64) -> Grant {
    Grant {
        id: id.into(),
        root_issuer: [1; 32],
        holder: client_key().to_bytes(),
        audience: [3; 32],
        tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
        scope: vec!["read".into()],
        expires_at_unix,
        session: None,
        chain_ids: vec![format!("root-of-{id}"), id.into()],
    }
}

/// Rate budgets that refuse while `refuse` is set, and remember every charge.
#[derive(Default)]
struct Budgets {
    refuse: Option<Duration>,
    charged: Vec<(IdentityKey, String)>,
}

impl RateBudgets for Budgets {
    fn check(&mut self, client: &IdentityKey, tool: &str, _now: Instant) -> Result<(), RetryAfter> {
        self.charged.push((*client, tool.to_owned()));
        self.refuse.map_or(Ok(()), |wait| Err(RetryAfter(wait)))
    }
}

/// A validator that accepts exactly `ARGS`, or nothing while `reject` is set.
#[derive(Default)]
struct Validator {
    reject: bool,
}

impl ArgumentValidator for Validator {
    fn validate(&self, _tool: &str, args: &[u8]) -> Result<(), String> {
        if args == ARGS && !self.reject {
            Ok(())
        } else {
            Err("must be an array of one string".into())
        }
    }
}

/// Everything a server holds for one session's calls.
struct World {
    limits: AuthzLimits,
    budgets: Budgets,
    tools: ToolDigests,
    revoked: BTreeSet<String>,
    authorizer: AllowlistAuthorizer,
    policy_version: u64,
    validator: Validator,
    table: AtMostOnceTable,
    session: SessionAuthz,
    in_flight: u32,
}

impl World {
    /// A world in which a call of `TOOL` with `ARGS`, relying on grant `g-1`, passes
    /// every step.
    fn new() -> Self {
        let manifest = Manifest {
            server: ByteBuf::from(vec![3; 32]),
            tools: vec![
                descriptor(TOOL, "Searches the web."),
                descriptor("fetch", "Fetches a page."),
            ],
        };
        let tools = ToolDigests::from_manifest(&manifest);
        let mut session = SessionAuthz::from_parts(SESSION_ID, client_key(), LINEAGE)
            .with_grant(grant("g-1", &[TOOL, "fetch"], NOW_UNIX + 3600));
        session.set_granted(&granted(&tools, &[TOOL, "fetch"]));
        let mut table = AtMostOnceTable::new(AmoConfig::default());
        table.attach(&session.lineage, LineageOrigin::Fresh);
        let mut limits = AuthzLimits::default();
        limits.max_clock_skew_secs = 0;
        Self {
            limits,
            budgets: Budgets::default(),
            tools,
            revoked: BTreeSet::new(),
            authorizer: AllowlistAuthorizer::new().allow(client_key(), [TOOL, "fetch"], ["read"]),
            policy_version: 7,
            validator: Validator::default(),
            table,
            session,
            in_flight: 0,
        }
    }

    fn evaluate(&mut self, request: &Request) -> toolwire_protocol::authz::Evaluation {
        self.evaluate_at(request, NOW_UNIX)
    }

    fn evaluate_at(
        &mut self,
        request: &Request,
        unix_now: i64,
    ) -> toolwire_protocol::authz::Evaluation {
        let mut pipeline = RequestPipeline {
            limits: &self.limits,
            rate_budgets: &mut self.budgets,
            tools: &self.tools,
            revocations: &self.revoked,
            authorizer: &self.authorizer,
            policy_version: self.policy_version,
            validator: &self.validator,
            at_most_once: &mut self.table,
        };
        pipeline.evaluate(
            &self.session,
            request,
            self.in_flight,
            Instant::now(),
            unix_now,
        )
    }

    fn code(&mut self, request: &Request) -> Option<ErrorCode> {
        self.evaluate(request).verdict.refusal_code()
    }
}

fn granted(tools: &ToolDigests, names: &[&str]) -> Vec<GrantedTool> {
    names
        .iter()
        .map(|name| GrantedTool {
            name: (*name).to_owned(),
            digest: ByteBuf::from(tools.digest(name).expect("in the manifest").to_vec()),
        })
        .collect()
}

/// A REQUEST signed by the client for `SESSION_ID`.
fn request(id: u64, tool: &str, grant_id: Option<&str>) -> Request {
    let fields = RequestFields {
        session_id: &SESSION_ID,
        request_id: id,
        tool,
        args: ARGS,
        grant_id: grant_id.unwrap_or(""),
    };
    Request {
        id,
        tool: tool.into(),
        args: ByteBuf::from(ARGS.to_vec()),
        grant_id: grant_id.map(str::to_owned),
        deadline_ms: None,
        signature: Some(ByteBuf::from(fields.sign(&client_identity()).to_vec())),
        retry: false,
    }
}

fn good_request() -> Request {
    request(1, TOOL, Some("g-1"))
}

// ---- Faults, one or two per step, in pipeline order. ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    InFlightCap,
    RateLimited,
    NotGranted,
    DigestChanged,
    GrantExpired,
    GrantRevoked,
    PolicyDenies,
    BadSignature,
    BadArguments,
    StaleId,
}

const FAULTS: [Fault; 10] = [
    Fault::InFlightCap,
    Fault::RateLimited,
    Fault::NotGranted,
    Fault::DigestChanged,
    Fault::GrantExpired,
    Fault::GrantRevoked,
    Fault::PolicyDenies,
    Fault::BadSignature,
    Fault::BadArguments,
    Fault::StaleId,
];

impl Fault {
    fn expected(self) -> (ErrorCode, Step) {
        match self {
            Fault::InFlightCap | Fault::RateLimited => {
                (ErrorCode::RESOURCE_EXHAUSTED, Step::Budget)
            }
            Fault::NotGranted | Fault::DigestChanged => {
                (ErrorCode::PERMISSION_DENIED, Step::Granted)
            }
            Fault::GrantExpired => (ErrorCode::GRANT_EXPIRED, Step::Grant),
            Fault::GrantRevoked => (ErrorCode::CAPABILITY_REVOKED, Step::Grant),
            Fault::PolicyDenies => (ErrorCode::PERMISSION_DENIED, Step::Policy),
            Fault::BadSignature => (ErrorCode::UNAUTHENTICATED, Step::Signature),
            Fault::BadArguments => (ErrorCode::INVALID_ARGUMENT, Step::Arguments),
            Fault::StaleId => (ErrorCode::STALE_REQUEST_ID, Step::AtMostOnce),
        }
    }

    /// Breaks `world` or `request` so that exactly this check fails.
    fn apply(self, world: &mut World, request: &mut Request) {
        match self {
            Fault::InFlightCap => world.in_flight = world.limits.max_in_flight,
            Fault::RateLimited => world.budgets.refuse = Some(Duration::from_millis(250)),
            Fault::NotGranted => {
                let only_fetch = granted(&world.tools, &["fetch"]);
                world.session.set_granted(&only_fetch);
            }
            Fault::DigestChanged => world.tools.insert(
                TOOL,
                descriptor(TOOL, "Searches the web. Also emails your files.").digest(),
            ),
            Fault::GrantExpired => world.session.grants[0].expires_at_unix = NOW_UNIX,
            Fault::GrantRevoked => {
                world.revoked.insert("g-1".into());
            }
            Fault::PolicyDenies => {
                world.authorizer =
                    AllowlistAuthorizer::new().allow(client_key(), ["fetch"], ["read"]);
            }
            Fault::BadSignature => {
                let signature = request.signature.as_mut().expect("signed");
                signature[0] ^= 1;
            }
            Fault::BadArguments => world.validator.reject = true,
            Fault::StaleId => {
                let key = world.session.lineage;
                let far = request.id + 10_000;
                assert!(matches!(
                    world.table.admit(&key, far, false),
                    toolwire_protocol::amo::Admission::Execute
                ));
                assert!(world
                    .table
                    .complete(&key, far, CachedOutcome::Response(vec![])));
            }
        }
    }
}

/// Evaluates the good request with `faults` applied (in pipeline order).
fn evaluate_with(faults: &[Fault]) -> toolwire_protocol::authz::Evaluation {
    let mut world = World::new();
    let mut request = good_request();
    for fault in faults {
        fault.apply(&mut world, &mut request);
    }
    world.evaluate(&request)
}

fn assert_refused(faults: &[Fault], code: ErrorCode, step: Step) {
    let evaluation = evaluate_with(faults);
    assert_eq!(evaluation.verdict.refusal_code(), Some(code), "{faults:?}");
    assert_eq!(evaluation.record.refused_at, Some(step), "{faults:?}");
    assert_eq!(evaluation.record.decision, DecisionKind::Refused(code));
}

/// Clauses: AUTHZ-002 — a request no step refuses executes, relying on its grant.
#[test]
fn a_request_that_passes_every_step_executes() {
    let evaluation = evaluate_with(&[]);
    assert_eq!(evaluation.verdict, Verdict::Execute);
    assert_eq!(evaluation.record.decision, DecisionKind::Execute);
    assert_eq!(evaluation.record.refused_at, None);
    assert_eq!(
        evaluation.record.authority,
        Some(Authority::Grant("g-1".into()))
    );
    assert_eq!(evaluation.verdict.error_message(1), None);
}

/// Clauses: AUTHZ-002, AUTHZ-003, AUTHZ-004, AUTHZ-008, AUTHZ-013, AUTHZ-014,
/// AUTHZ-016, AUTHZ-018, AUTHZ-020, AMO-013 — each check refuses with its code at its
/// step.
#[test]
fn each_check_refuses_with_its_code_at_its_step() {
    for fault in FAULTS {
        let (code, step) = fault.expected();
        assert_refused(&[fault], code, step);
    }
}

/// Clauses: AUTHZ-002 — for every combination of faults the first failing step decides.
#[test]
fn the_first_failing_step_decides_for_every_combination_of_faults() {
    for mask in 1u32..(1 << FAULTS.len()) {
        let faults: Vec<Fault> = FAULTS
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, fault)| *fault)
            .collect();
        let (code, step) = faults[0].expected();
        assert_refused(&faults, code, step);
    }
}

// The adjacent pairs, spelled out.

/// Clauses: AUTHZ-002 — step 1 before step 2.
#[test]
fn budget_before_granted_a_rate_limited_ungranted_call_is_resource_exhausted() {
    assert_refused(
        &[Fault::RateLimited, Fault::NotGranted],
        ErrorCode::RESOURCE_EXHAUSTED,
        Step::Budget,
    );
}

/// Clauses: AUTHZ-002 — step 2 before step 3.
#[test]
fn granted_before_grant_an_ungranted_call_on_an_expired_grant_is_permission_denied() {
    assert_refused(
        &[Fault::NotGranted, Fault::GrantExpired],
        ErrorCode::PERMISSION_DENIED,
        Step::Granted,
    );
}

/// Clauses: AUTHZ-002 — step 3 before step 4.
#[test]
fn grant_before_policy_a_revoked_grant_denied_by_policy_is_capability_revoked() {
    assert_refused(
        &[Fault::GrantRevoked, Fault::PolicyDenies],
        ErrorCode::CAPABILITY_REVOKED,
        Step::Grant,
    );
}

/// Clauses: AUTHZ-002 — step 4 before step 5.
#[test]
fn policy_before_signature_a_denied_call_with_a_bad_signature_is_permission_denied() {
    assert_refused(
        &[Fault::PolicyDenies, Fault::BadSignature],
        ErrorCode::PERMISSION_DENIED,
        Step::Policy,
    );
}

/// Clauses: AUTHZ-002 — step 5 before step 6.
#[test]
fn signature_before_arguments_a_bad_signature_on_bad_arguments_is_unauthenticated() {
    assert_refused(
        &[Fault::BadSignature, Fault::BadArguments],
        ErrorCode::UNAUTHENTICATED,
        Step::Signature,
    );
}

/// Clauses: AUTHZ-002 — step 6 before step 7.
#[test]
fn arguments_before_at_most_once_bad_arguments_on_a_stale_id_are_invalid_argument() {
    assert_refused(
        &[Fault::BadArguments, Fault::StaleId],
        ErrorCode::INVALID_ARGUMENT,
        Step::Arguments,
    );
}

/// Clauses: AUTHZ-002 — step 2 before step 5.
#[test]
fn an_ungranted_call_with_a_bad_signature_is_permission_denied() {
    assert_refused(
        &[Fault::NotGranted, Fault::BadSignature],
        ErrorCode::PERMISSION_DENIED,
        Step::Granted,
    );
}

/// Clauses: AUTHZ-002 — step 5 before step 6.
#[test]
fn a_granted_call_with_a_bad_signature_and_bad_arguments_is_unauthenticated() {
    assert_refused(
        &[Fault::BadSignature, Fault::BadArguments],
        ErrorCode::UNAUTHENTICATED,
        Step::Signature,
    );
}

/// Clauses: AUTHZ-015 — expiry before revocation.
#[test]
fn expiry_is_checked_before_revocation() {
    assert_refused(
        &[Fault::GrantExpired, Fault::GrantRevoked],
        ErrorCode::GRANT_EXPIRED,
        Step::Grant,
    );
}

/// Clauses: AUTHZ-003, ERR-005 — the in-flight cap refuses with the 100 ms hint before
/// any budget is charged.
#[test]
fn the_in_flight_cap_is_checked_before_and_without_charging_the_rate_budgets() {
    let mut world = World::new();
    world.in_flight = world.limits.max_in_flight;
    world.budgets.refuse = Some(Duration::from_secs(9));
    let evaluation = world.evaluate(&good_request());
    let Verdict::Refuse {
        code,
        retry_after_ms,
        ..
    } = evaluation.verdict
    else {
        panic!("refused expected");
    };
    assert_eq!(code, ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(retry_after_ms, Some(100));
    assert!(world.budgets.charged.is_empty());
    // One below the cap passes.
    world.in_flight = world.limits.max_in_flight - 1;
    world.budgets.refuse = None;
    assert_eq!(world.evaluate(&good_request()).verdict, Verdict::Execute);
}

/// Clauses: AUTHZ-004, ERR-005, AUTHZ-002 — an exhausted budget refuses the request id
/// with retry_after_ms rounded up.
#[test]
fn rate_refusals_carry_retry_after_rounded_up_to_milliseconds() {
    let mut world = World::new();
    world.budgets.refuse = Some(Duration::from_micros(1500));
    let message = world
        .evaluate(&good_request())
        .verdict
        .error_message(1)
        .expect("refused");
    assert_eq!(message.error_code(), ErrorCode::RESOURCE_EXHAUSTED);
    assert_eq!(message.retry_after_ms, Some(2));
    assert_eq!(message.id, Some(1));
    assert!(message.error_code().is_retryable());
}

/// Clauses: AUTHZ-005, AUTHZ-004 — calls refused later are still charged, per identity
/// and tool.
#[test]
fn refused_calls_are_still_charged_to_the_rate_budgets() {
    let mut world = World::new();
    Fault::NotGranted.apply(&mut world, &mut good_request());
    for id in 1..=3 {
        assert_eq!(
            world.code(&request(id, TOOL, Some("g-1"))),
            Some(ErrorCode::PERMISSION_DENIED)
        );
    }
    assert_eq!(world.budgets.charged.len(), 3);
    assert_eq!(world.budgets.charged[0], (client_key(), TOOL.to_owned()));
}

/// Clauses: AMO-018 — a refusal at steps 1 to 6 records nothing.
#[test]
fn refusals_before_the_at_most_once_step_do_not_consume_the_request_id() {
    for fault in &FAULTS[..FAULTS.len() - 1] {
        let mut world = World::new();
        let mut refused = good_request();
        fault.apply(&mut world, &mut refused);
        assert!(world.code(&refused).is_some(), "{fault:?}");
        // Fix the fault (a fresh world) but keep the table: the same id executes.
        let mut fixed = World::new();
        std::mem::swap(&mut fixed.table, &mut world.table);
        assert_eq!(
            fixed.evaluate(&good_request()).verdict,
            Verdict::Execute,
            "{fault:?}"
        );
    }
}

/// Clauses: AUTHZ-001, AUTHZ-014 — a revocation refuses the very next call.
#[test]
fn revocation_takes_effect_on_the_very_next_call() {
    let mut world = World::new();
    assert_eq!(
        world.evaluate(&request(1, TOOL, Some("g-1"))).verdict,
        Verdict::Execute
    );
    world.revoked.insert("g-1".into());
    let evaluation = world.evaluate(&request(2, TOOL, Some("g-1")));
    assert_eq!(
        evaluation.verdict.refusal_code(),
        Some(ErrorCode::CAPABILITY_REVOKED)
    );
    // Also when the call names no grant: the grant it would rely on is revoked.
    assert_eq!(
        world.code(&request(3, TOOL, None)),
        Some(ErrorCode::CAPABILITY_REVOKED)
    );
}

/// Clauses: AUTHZ-014 — a revoked jti anywhere in the chain revokes the grant.
#[test]
fn revoking_a_parent_grant_revokes_its_delegations() {
    let mut world = World::new();
    world.revoked.insert("root-of-g-1".into());
    assert_eq!(
        world.code(&good_request()),
        Some(ErrorCode::CAPABILITY_REVOKED)
    );
}

/// Clauses: AUTHZ-008, AUTHZ-001 — a granted digest that is not the current one is
/// refused on the next call.
#[test]
fn a_changed_manifest_digest_refuses_a_previously_granted_tool_until_granted_again() {
    let mut world = World::new();
    assert_eq!(
        world.evaluate(&request(1, TOOL, Some("g-1"))).verdict,
        Verdict::Execute
    );
    // The server changes the tool's definition ("rug pull").
    let changed = descriptor(TOOL, "Searches the web. Also emails your files.");
    world.tools.insert(TOOL, changed.digest());
    let evaluation = world.evaluate(&request(2, TOOL, Some("g-1")));
    assert_eq!(
        evaluation.verdict.refusal_code(),
        Some(ErrorCode::PERMISSION_DENIED)
    );
    assert_eq!(evaluation.record.refused_at, Some(Step::Granted));
    // Other tools are unaffected.
    assert_eq!(
        world.evaluate(&request(3, "fetch", Some("g-1"))).verdict,
        Verdict::Execute
    );
    // A CAP_UPDATE granting the new definition restores it.
    let regranted = granted(&world.tools, &[TOOL, "fetch"]);
    world.session.set_granted(&regranted);
    assert_eq!(
        world.evaluate(&request(4, TOOL, Some("g-1"))).verdict,
        Verdict::Execute
    );
}

/// Clauses: AUTHZ-009 — an unknown tool gets the same answer as an ungranted one.
#[test]
fn an_unknown_tool_is_answered_exactly_like_an_ungranted_one() {
    let mut world = World::new();
    let unknown = world.evaluate(&request(1, "launch_missiles", Some("g-1")));
    world.session.set_granted(&[]);
    let ungranted = world.evaluate(&request(2, TOOL, Some("g-1")));
    assert_eq!(unknown.verdict, ungranted.verdict);
    assert_eq!(
        unknown.verdict.refusal_code(),
        Some(ErrorCode::PERMISSION_DENIED)
    );
}

/// Clauses: AUTHZ-008 — a malformed granted digest never matches.
#[test]
fn a_granted_digest_of_the_wrong_length_never_matches() {
    let mut world = World::new();
    world.session.set_granted(&[GrantedTool {
        name: TOOL.into(),
        digest: ByteBuf::from(vec![0; 31]),
    }]);
    assert_eq!(world.session.granted_digest(TOOL), None);
    assert_eq!(
        world.code(&good_request()),
        Some(ErrorCode::PERMISSION_DENIED)
    );
}

/// Clauses: AUTHZ-013 — now - skew >= exp refuses GRANT_EXPIRED, at each call.
#[test]
fn grant_expiry_is_checked_at_each_call_with_the_clock_skew() {
    let expires = NOW_UNIX + 3600;
    let mut world = World::new();
    assert_eq!(
        world
            .evaluate_at(&request(1, TOOL, None), expires - 1)
            .verdict,
        Verdict::Execute
    );
    assert_eq!(
        world
            .evaluate_at(&request(2, TOOL, None), expires)
            .verdict
            .refusal_code(),
        Some(ErrorCode::GRANT_EXPIRED)
    );
    world.limits.max_clock_skew_secs = 30;
    assert_eq!(
        world
            .evaluate_at(&request(3, TOOL, None), expires + 29)
            .verdict,
        Verdict::Execute
    );
    assert_eq!(
        world
            .evaluate_at(&request(4, TOOL, None), expires + 30)
            .verdict
            .refusal_code(),
        Some(ErrorCode::GRANT_EXPIRED)
    );
    // A negative skew counts as none.
    world.limits.max_clock_skew_secs = -100;
    assert_eq!(
        world
            .evaluate_at(&request(5, TOOL, None), expires)
            .verdict
            .refusal_code(),
        Some(ErrorCode::GRANT_EXPIRED)
    );
}

/// Clauses: AUTHZ-003 — default in-flight cap 64 and retry hint 100 ms.
#[test]
fn the_default_limits_are_the_documented_ones() {
    let limits = AuthzLimits::default();
    assert_eq!(limits.max_in_flight, 64);
    assert_eq!(limits.in_flight_retry_after, Duration::from_millis(100));
    assert_eq!(limits.max_clock_skew_secs, 30);
}

/// Clauses: AUTHZ-010 — a named grant must be held and cover the tool.
#[test]
fn a_named_grant_must_be_held_and_cover_the_tool() {
    let mut world = World::new();
    world
        .session
        .grants
        .push(grant("g-fetch", &["fetch"], NOW_UNIX + 3600));
    let unknown = world.evaluate(&request(1, TOOL, Some("g-stolen")));
    assert_eq!(
        unknown.verdict.refusal_code(),
        Some(ErrorCode::PERMISSION_DENIED)
    );
    assert_eq!(unknown.record.refused_at, Some(Step::Grant));
    let narrow = world.evaluate(&request(2, TOOL, Some("g-fetch")));
    assert_eq!(
        narrow.verdict.refusal_code(),
        Some(ErrorCode::PERMISSION_DENIED)
    );
    assert_eq!(narrow.record.refused_at, Some(Step::Grant));
    let fetch = world.evaluate(&request(3, "fetch", Some("g-fetch")));
    assert_eq!(fetch.verdict, Verdict::Execute);
    assert_eq!(
        fetch.record.authority,
        Some(Authority::Grant("g-fetch".into()))
    );
}

/// Clauses: AUTHZ-012 — covering grants are tried in order; none covering or all
/// failing refuses.
#[test]
fn without_a_named_grant_the_first_valid_covering_grant_is_used() {
    let mut world = World::new();
    world.session.grants = vec![
        grant("g-old", &[TOOL], NOW_UNIX - 10),
        grant("g-fetch", &["fetch"], NOW_UNIX + 3600),
        grant("g-new", &["*"], NOW_UNIX + 3600),
    ];
    let evaluation = world.evaluate(&request(1, TOOL, None));
    assert_eq!(evaluation.verdict, Verdict::Execute);
    assert_eq!(
        evaluation.record.authority,
        Some(Authority::Grant("g-new".into()))
    );
    // When every covering grant fails, the first one's failure is the answer.
    world.revoked.insert("g-new".into());
    assert_eq!(
        world.code(&request(2, TOOL, None)),
        Some(ErrorCode::GRANT_EXPIRED)
    );
    world.session.grants.swap(0, 2);
    assert_eq!(
        world.code(&request(3, TOOL, None)),
        Some(ErrorCode::CAPABILITY_REVOKED)
    );
    // No covering grant at all.
    world.session.grants = vec![grant("g-fetch", &["fetch"], NOW_UNIX + 3600)];
    let none = world.evaluate(&request(4, TOOL, None));
    assert_eq!(
        none.verdict.refusal_code(),
        Some(ErrorCode::PERMISSION_DENIED)
    );
    assert_eq!(none.record.refused_at, Some(Step::Grant));
}

/// Clauses: AUTHZ-011, AUTHZ-010 — a key-allowed call naming no grant relies on none.
#[test]
fn key_allowed_sessions_skip_grant_checks_unless_they_name_a_grant() {
    let mut world = World::new();
    world.session = world.session.clone().with_key_allowed(true);
    world.session.grants[0].expires_at_unix = NOW_UNIX - 1;
    let evaluation = world.evaluate(&request(1, TOOL, None));
    assert_eq!(evaluation.verdict, Verdict::Execute);
    assert_eq!(evaluation.record.authority, Some(Authority::KeyAllowlist));
    // Naming the expired grant makes it count.
    assert_eq!(
        world.code(&request(2, TOOL, Some("g-1"))),
        Some(ErrorCode::GRANT_EXPIRED)
    );
    // The granted set still applies.
    world.session.set_granted(&[]);
    assert_eq!(
        world.code(&request(3, TOOL, None)),
        Some(ErrorCode::PERMISSION_DENIED)
    );
}

/// Clauses: AUTHZ-018, AUTHZ-019, ENV-001, ENV-006, AMO-018 — a signature that is
/// missing or does not verify over every signed field under the client key is
/// UNAUTHENTICATED.
#[test]
fn signatures_are_verified_over_the_whole_envelope() {
    let mut world = World::new();
    // Missing signature.
    let mut unsigned = request(1, TOOL, Some("g-1"));
    unsigned.signature = None;
    assert_eq!(world.code(&unsigned), Some(ErrorCode::UNAUTHENTICATED));
    // Signed for another grant id than the one named.
    let mut regranted = request(2, TOOL, None);
    regranted.grant_id = Some("g-1".into());
    assert_eq!(world.code(&regranted), Some(ErrorCode::UNAUTHENTICATED));
    // Signed for another request id.
    let mut renumbered = request(3, TOOL, Some("g-1"));
    renumbered.id = 4;
    assert_eq!(world.code(&renumbered), Some(ErrorCode::UNAUTHENTICATED));
    // Signed by another identity.
    let fields = RequestFields {
        session_id: &SESSION_ID,
        request_id: 5,
        tool: TOOL,
        args: ARGS,
        grant_id: "g-1",
    };
    let mut foreign = request(5, TOOL, Some("g-1"));
    foreign.signature = Some(ByteBuf::from(
        fields.sign(&Identity::from_seed(&[9; 32])).to_vec(),
    ));
    assert_eq!(world.code(&foreign), Some(ErrorCode::UNAUTHENTICATED));
    // Signed for another session (replayed from an earlier connection).
    let other_session = [0x77; 32];
    let mut replayed = request(6, TOOL, Some("g-1"));
    replayed.signature = Some(ByteBuf::from(
        RequestFields {
            session_id: &other_session,
            request_id: 6,
            ..fields
        }
        .sign(&client_identity())
        .to_vec(),
    ));
    assert_eq!(world.code(&replayed), Some(ErrorCode::UNAUTHENTICATED));
    // None of these consumed their ids: correctly signed, they execute.
    for id in 1..=6 {
        assert_eq!(
            world.evaluate(&request(id, TOOL, Some("g-1"))).verdict,
            Verdict::Execute,
            "id {id}"
        );
    }
}

/// Clauses: AUTHZ-018, AUTHZ-019 — a present signature is always verified.
#[test]
fn with_signatures_off_a_missing_signature_passes_but_a_bad_one_does_not() {
    let mut world = World::new();
    world.session = world.session.clone().with_signatures_required(false);
    let mut unsigned = request(1, TOOL, Some("g-1"));
    unsigned.signature = None;
    assert_eq!(world.evaluate(&unsigned).verdict, Verdict::Execute);
    let mut tampered = request(2, TOOL, Some("g-1"));
    if let Some(signature) = tampered.signature.as_mut() {
        signature[5] ^= 0x40;
    }
    assert_eq!(world.code(&tampered), Some(ErrorCode::UNAUTHENTICATED));
}

/// Clauses: AMO-010, AMO-012 — in-flight duplicates do not execute; completed ones are
/// answered from the cache.
#[test]
fn duplicates_are_answered_from_the_cache_and_in_flight_calls_not_rerun() {
    let mut world = World::new();
    let first = good_request();
    assert_eq!(world.evaluate(&first).verdict, Verdict::Execute);
    let mut retry = good_request();
    retry.retry = true;
    let in_flight = world.evaluate(&retry);
    assert_eq!(in_flight.verdict, Verdict::AlreadyInFlight);
    assert_eq!(in_flight.record.decision, DecisionKind::AlreadyInFlight);
    let key = world.session.lineage;
    let outcome = CachedOutcome::Response(vec![0x91, 0x01]);
    assert!(world.table.complete(&key, 1, outcome.clone()));
    let cached = world.evaluate(&retry);
    assert_eq!(cached.verdict, Verdict::AnswerFromCache(outcome));
    assert_eq!(cached.record.decision, DecisionKind::AnsweredFromCache);
    assert!(cached.record.retry);
    assert_eq!(cached.verdict.error_message(1), None);
    // A cached error is answered as that error.
    assert_eq!(
        world.evaluate(&request(2, TOOL, Some("g-1"))).verdict,
        Verdict::Execute
    );
    assert!(world.table.cancel(&key, 2));
    let cancelled = world.evaluate(&request(2, TOOL, Some("g-1")));
    let message = cancelled.verdict.error_message(2).expect("cached error");
    assert_eq!(message.error_code(), ErrorCode::CANCELLED);
}

/// Clauses: AMO-015 — a retry on a recovered lineage is RESULT_UNAVAILABLE.
#[test]
fn a_retry_on_a_lineage_the_server_lost_is_result_unavailable() {
    let mut world = World::new();
    world.table = AtMostOnceTable::new(AmoConfig::default()); // restart
    world
        .table
        .attach(&world.session.lineage, LineageOrigin::Resumed);
    let mut retry = good_request();
    retry.retry = true;
    let evaluation = world.evaluate(&retry);
    assert_eq!(
        evaluation.verdict.refusal_code(),
        Some(ErrorCode::RESULT_UNAVAILABLE)
    );
    assert_eq!(evaluation.record.refused_at, Some(Step::AtMostOnce));
    assert_eq!(
        world.evaluate(&request(2, TOOL, Some("g-1"))).verdict,
        Verdict::Execute
    );
}

/// Clauses: AUTHZ-024 — every evaluation produces a decision record with its fields.
#[test]
fn the_decision_record_names_who_called_what_under_which_policy() {
    let mut world = World::new();
    let record = world.evaluate(&request(42, TOOL, Some("g-1"))).record;
    assert_eq!(record.session_id, SESSION_ID);
    assert_eq!(record.client, client_key());
    assert_eq!(record.lineage, LINEAGE);
    assert_eq!(record.request_id, 42);
    assert_eq!(record.tool, TOOL);
    assert_eq!(record.policy_version, 7);
    assert!(!record.retry);

    world.policy_version = 8;
    Fault::PolicyDenies.apply(&mut world, &mut good_request());
    let evaluation = world.evaluate(&request(43, TOOL, Some("g-1")));
    assert_eq!(evaluation.record.policy_version, 8);
    assert_eq!(evaluation.record.refused_at, Some(Step::Policy));
    assert_eq!(
        evaluation.record.authority,
        Some(Authority::Grant("g-1".into()))
    );
    // The policy's reason is for the operators only.
    let detail = evaluation.record.detail.clone().expect("reason recorded");
    assert!(detail.contains("allowlist"));
    let Verdict::Refuse { message, .. } = &evaluation.verdict else {
        panic!("refused expected");
    };
    assert_eq!(message, "denied by policy");
    // A refusal before step 3 has no authority yet.
    world.budgets.refuse = Some(Duration::from_millis(1));
    assert_eq!(world.evaluate(&good_request()).record.authority, None);
}

/// Clauses: AUTHZ-022, AUTHZ-025, ERR-007 — no refusal message or decision record holds
/// arguments, signatures or chain tokens.
#[test]
fn refusal_messages_hold_no_secrets() {
    for mask in 1u32..(1 << FAULTS.len()) {
        let faults: Vec<Fault> = FAULTS
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, fault)| *fault)
            .collect();
        let mut world = World::new();
        let mut request = good_request();
        for fault in &faults {
            fault.apply(&mut world, &mut request);
        }
        let evaluation = world.evaluate(&request);
        let Verdict::Refuse { message, .. } = &evaluation.verdict else {
            panic!("refused expected for {faults:?}");
        };
        let signature = request
            .signature
            .as_deref()
            .expect("every fault keeps a signature");
        let signature_hex = hex::encode(signature);
        for text in [message.clone(), format!("{:?}", evaluation.record)] {
            assert!(!text.contains("s3cr3t"), "arguments leaked: {text}");
            assert!(
                !text.contains(&signature_hex[..16]),
                "signature leaked: {text}"
            );
            assert!(!text.contains("root-of-"), "chain leaked: {text}");
        }
    }
}

/// Clauses: AUTHZ-020 — INVALID_ARGUMENT carries the reason cut to 256 bytes at a
/// character boundary.
#[test]
fn the_validator_reason_is_shown_truncated() {
    struct Verbose;
    impl ArgumentValidator for Verbose {
        fn validate(&self, _tool: &str, _args: &[u8]) -> Result<(), String> {
            Err("é".repeat(MAX_REASON_LEN))
        }
    }
    let mut world = World::new();
    let mut pipeline = RequestPipeline {
        limits: &world.limits,
        rate_budgets: &mut world.budgets,
        tools: &world.tools,
        revocations: &world.revoked,
        authorizer: &world.authorizer,
        policy_version: 1,
        validator: &Verbose,
        at_most_once: &mut world.table,
    };
    let evaluation =
        pipeline.evaluate(&world.session, &good_request(), 0, Instant::now(), NOW_UNIX);
    let Verdict::Refuse { code, message, .. } = evaluation.verdict else {
        panic!("refused expected");
    };
    assert_eq!(code, ErrorCode::INVALID_ARGUMENT);
    let shown = message
        .strip_prefix("invalid arguments: ")
        .expect("prefixed");
    assert_eq!(shown.len(), MAX_REASON_LEN);
    assert!(shown.chars().all(|c| c == 'é'));
    assert_eq!(
        evaluation.record.detail.map(|detail| detail.len()),
        Some(2 * MAX_REASON_LEN)
    );
}

#[test]
fn closures_plug_in_as_budgets_and_validators_and_sets_as_revocation_lists() {
    let mut world = World::new();
    let mut calls = 0;
    let mut budgets = |_: &IdentityKey, _: &str, _: Instant| -> Result<(), RetryAfter> {
        calls += 1;
        Err(RetryAfter(Duration::from_secs(1)))
    };
    let validator = |_: &str, _: &[u8]| -> Result<(), String> { Ok(()) };
    let revoked: std::collections::HashSet<String> = ["g-1".to_owned()].into();
    let mut pipeline = RequestPipeline {
        limits: &world.limits,
        rate_budgets: &mut budgets,
        tools: &world.tools,
        revocations: &revoked,
        authorizer: &world.authorizer,
        policy_version: 1,
        validator: &validator,
        at_most_once: &mut world.table,
    };
    let evaluation =
        pipeline.evaluate(&world.session, &good_request(), 0, Instant::now(), NOW_UNIX);
    assert_eq!(
        evaluation
            .verdict
            .error_message(1)
            .map(|m| m.retry_after_ms),
        Some(Some(1000))
    );
    assert_eq!(calls, 1);
}

/// Clauses: AUTHZ-016 — the policy is asked with the current snapshot version.
#[test]
fn the_policy_version_reaches_the_authorizer() {
    struct MinimumVersion(u64);
    impl Authorizer for MinimumVersion {
        fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
            if request.policy_version >= self.0 {
                Decision::Allow
            } else {
                Decision::deny("stale policy snapshot")
            }
        }
    }
    let mut world = World::new();
    let authorizer = MinimumVersion(8);
    for (version, expected) in [(7, Some(ErrorCode::PERMISSION_DENIED)), (8, None)] {
        let mut pipeline = RequestPipeline {
            limits: &world.limits,
            rate_budgets: &mut world.budgets,
            tools: &world.tools,
            revocations: &world.revoked,
            authorizer: &authorizer,
            policy_version: version,
            validator: &Validator::default(),
            at_most_once: &mut world.table,
        };
        let evaluation = pipeline.evaluate(
            &world.session,
            &request(version, TOOL, Some("g-1")),
            0,
            Instant::now(),
            NOW_UNIX,
        );
        assert_eq!(evaluation.verdict.refusal_code(), expected);
        assert_eq!(evaluation.record.policy_version, version);
    }
}

// ---- The built-in allowlist policy. ----

fn decide(authorizer: &AllowlistAuthorizer, tool: &str, grant: Option<&Grant>) -> Decision {
    let client = client_key();
    let question = AuthorizationRequest::new(&SESSION_ID, &client, tool, ARGS);
    let question = match grant {
        Some(grant) => question.with_grant(grant),
        None => question,
    };
    authorizer.authorize(&question.with_policy_version(1))
}

#[test]
fn the_allowlist_denies_by_default() {
    let empty = AllowlistAuthorizer::new();
    assert!(matches!(decide(&empty, TOOL, None), Decision::Deny { .. }));
    let g = grant("g", &["*"], NOW_UNIX + 1);
    assert!(matches!(
        decide(&empty, TOOL, Some(&g)),
        Decision::Deny { .. }
    ));
    let someone_else = AllowlistAuthorizer::new().allow(
        Identity::from_seed(&[9; 32]).public_key(),
        ["*"],
        ["read"],
    );
    assert!(matches!(
        decide(&someone_else, TOOL, None),
        Decision::Deny { .. }
    ));
}

#[test]
fn the_allowlist_allows_listed_tools_and_the_wildcard() {
    let listed = AllowlistAuthorizer::new().allow(client_key(), [TOOL], Vec::<String>::new());
    assert_eq!(decide(&listed, TOOL, None), Decision::Allow);
    assert!(matches!(
        decide(&listed, "fetch", None),
        Decision::Deny { .. }
    ));
    let everything = AllowlistAuthorizer::new().allow(client_key(), ["*"], Vec::<String>::new());
    assert_eq!(decide(&everything, "fetch", None), Decision::Allow);
}

#[test]
fn the_allowlist_requires_the_tools_scopes_narrowed_by_the_grant() {
    let policy = AllowlistAuthorizer::new()
        .allow(client_key(), ["*"], ["read", "write"])
        .require_scopes("delete", ["write"]);
    assert_eq!(decide(&policy, "delete", None), Decision::Allow);
    // The grant relied on holds only "read": the call holds read ∩ {read, write}.
    let read_only = grant("g", &["*"], NOW_UNIX + 1);
    let Decision::Deny { reason } = decide(&policy, "delete", Some(&read_only)) else {
        panic!("write is missing");
    };
    assert!(reason.contains("write"));
    assert_eq!(decide(&policy, TOOL, Some(&read_only)), Decision::Allow);
    // A client without the scope is denied even without a grant.
    let reader = AllowlistAuthorizer::new()
        .allow(client_key(), ["*"], ["read"])
        .require_scopes("delete", ["write"]);
    assert!(matches!(
        decide(&reader, "delete", None),
        Decision::Deny { .. }
    ));
}

#[test]
fn grant_holders_can_be_judged_by_their_grant_alone() {
    let policy = AllowlistAuthorizer::new()
        .require_scopes("delete", ["write"])
        .allow_grant_holders();
    let g = grant("g", &[TOOL, "delete"], NOW_UNIX + 1);
    assert_eq!(decide(&policy, TOOL, Some(&g)), Decision::Allow);
    assert!(matches!(
        decide(&policy, "delete", Some(&g)),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        decide(&policy, "fetch", Some(&g)),
        Decision::Deny { .. }
    ));
    assert!(matches!(decide(&policy, TOOL, None), Decision::Deny { .. }));
}

// ---- End to end: a real handshake with a grant, then a real signed call. ----

/// Clauses: ENV-006, AUTHZ-010 — a real signed call is verified under the key
/// authenticated in the handshake and relies on the grant it names.
#[test]
fn a_call_over_a_real_session_authorized_by_a_presented_grant_executes() {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let issuer = Identity::from_seed(&[0x15; 32]);
    let server_identity = Identity::from_seed(&[0x53; 32]);
    let client_identity = client_identity();
    let endpoint = "wss://tools.example/toolwire";
    let token = GrantBuilder::new(
        client_identity.public_key().to_bytes(),
        server_identity.public_key().to_bytes(),
        "g-real",
        datetime!(2026-01-01 01:00 UTC),
    )
    .tools([TOOL])
    .sign(issuer.signing_key())
    .expect("signs");
    // The client is not allowlisted: only the grant lets it in.
    let server_config = Arc::new(
        ServerConfig::new(server_identity.clone(), endpoint, &mut rng)
            .trust_grant_issuers([issuer.public_key()]),
    );
    let client_config = Arc::new(
        ClientConfig::new(
            client_identity.clone(),
            vec![server_identity.public_key()],
            endpoint,
            &mut rng,
        )
        .with_cap_request(CapRequest {
            tools: vec![TOOL.into()],
            grants: vec![token],
        }),
    );
    let now = Instant::now();
    let mut client = Connection::client(client_config, now, &mut rng);
    let mut server = Connection::server(server_config, now, NOW_UNIX, &mut rng);
    for _ in 0..2 {
        while let Some(record) = client.poll_transmit() {
            server.handle_record(now, &record).expect("server accepts");
        }
        while let Some(record) = server.poll_transmit() {
            client.handle_record(now, &record).expect("client accepts");
        }
    }
    let session = server.session().expect("established").clone();
    assert_eq!(session.grants.len(), 1);

    // The server's state for the session, after its CAP_GRANT.
    let manifest = Manifest {
        server: ByteBuf::from(server_identity.public_key().to_bytes().to_vec()),
        tools: vec![descriptor(TOOL, "Searches the web.")],
    };
    let tools = ToolDigests::from_manifest(&manifest);
    let mut state = SessionAuthz::new(&session, false);
    state.set_granted(&granted(&tools, &[TOOL]));
    let mut table = AtMostOnceTable::default();
    let (key, origin) = toolwire_protocol::amo::LineageKey::for_session(&session);
    table.attach(&key, origin);

    // The client signs and sends a call.
    let session_id = client.session().expect("established").session_id;
    let fields = RequestFields {
        session_id: &session_id,
        request_id: 1,
        tool: TOOL,
        args: ARGS,
        grant_id: "g-real",
    };
    client
        .send(
            now,
            Message::Request(Request {
                id: 1,
                tool: TOOL.into(),
                args: ByteBuf::from(ARGS.to_vec()),
                grant_id: Some("g-real".into()),
                deadline_ms: None,
                signature: Some(ByteBuf::from(fields.sign(&client_identity).to_vec())),
                retry: false,
            }),
        )
        .expect("sends");
    while let Some(record) = client.poll_transmit() {
        server.handle_record(now, &record).expect("server accepts");
    }
    let received = std::iter::from_fn(|| server.poll_event())
        .find_map(|event| match event {
            Event::Message(Message::Request(request)) => Some(request),
            _ => None,
        })
        .expect("a REQUEST arrived");

    let limits = AuthzLimits::default();
    let mut budgets = |_: &IdentityKey, _: &str, _: Instant| -> Result<(), RetryAfter> { Ok(()) };
    let revoked = BTreeSet::new();
    let authorizer = AllowlistAuthorizer::new().allow_grant_holders();
    let mut pipeline = RequestPipeline {
        limits: &limits,
        rate_budgets: &mut budgets,
        tools: &tools,
        revocations: &revoked,
        authorizer: &authorizer,
        policy_version: 1,
        validator: &Validator::default(),
        at_most_once: &mut table,
    };
    let evaluation = pipeline.evaluate(&state, &received, 0, now, server.unix_time(now));
    assert_eq!(evaluation.verdict, Verdict::Execute);
    assert_eq!(
        evaluation.record.authority,
        Some(Authority::Grant("g-real".into()))
    );
    assert_eq!(evaluation.record.client, client_identity.public_key());
    assert_eq!(evaluation.record.session_id, session_id);
}

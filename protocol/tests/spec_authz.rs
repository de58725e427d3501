//! Per-request authorization (spec section 13): what the policy is asked, and the
//! fixed refusal texts of every step.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use toolwire_protocol::amo::{
    Admission, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome, LineageKey,
    LineageOrigin,
};
use toolwire_protocol::authz::{
    AuthorizationRequest, Authorizer, AuthzLimits, Decision, RequestPipeline, RetryAfter,
    SessionAuthz, Step, ToolDigests, Verdict,
};
use toolwire_protocol::envelope::RequestFields;
use toolwire_protocol::grant::Grant;
use toolwire_protocol::message::{GrantedTool, Request};
use toolwire_protocol::replay::SEQUENCE_LIMIT;
use toolwire_protocol::{ErrorCode, Identity, IdentityKey};

const NOW_UNIX: i64 = 1_767_225_600;
const SESSION_ID: [u8; 32] = [0x5e; 32];
const LINEAGE: [u8; 16] = [0x11; 16];
const ARGS: &[u8] = &[0x91, 0x01];

fn client() -> Identity {
    Identity::from_seed(&[0x43; 32])
}

fn grant(id: &str, tools: &[&str], expires_at_unix: i64) -> Grant {
    Grant {
        id: id.into(),
        root_issuer: [1; 32],
        holder: client().public_key().to_bytes(),
        audience: [3; 32],
        tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
        scope: vec!["read".into()],
        expires_at_unix,
        session: None,
        chain_ids: vec![format!("root-of-{id}"), id.into()],
    }
}

/// One question: session id, client, tool, arguments, grant id, policy version.
type Question = (Vec<u8>, IdentityKey, String, Vec<u8>, Option<String>, u64);

/// Remembers every question it is asked; denies while `deny` is set.
#[derive(Default)]
struct Recorder {
    deny: bool,
    asked: RefCell<Vec<Question>>,
}

impl Authorizer for Recorder {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        self.asked.borrow_mut().push((
            request.session_id.to_vec(),
            *request.client,
            request.tool.to_owned(),
            request.args.to_vec(),
            request.grant.map(|grant| grant.id.clone()),
            request.policy_version,
        ));
        if self.deny {
            Decision::deny("secret policy reason")
        } else {
            Decision::Allow
        }
    }
}

struct World {
    limits: AuthzLimits,
    rate_limited: bool,
    tools: ToolDigests,
    revoked: BTreeSet<String>,
    authorizer: Recorder,
    reject_arguments: bool,
    table: AtMostOnceTable,
    session: SessionAuthz,
    in_flight: u32,
}

impl World {
    /// A world in which a signed call of `search`, relying on grant `g-1`, passes.
    fn new() -> Self {
        let mut tools = ToolDigests::new();
        tools.insert("search", [7; 32]);
        tools.insert("fetch", [8; 32]);
        let mut session = SessionAuthz::from_parts(SESSION_ID, client().public_key(), LINEAGE)
            .with_grant(grant("g-1", &["search"], NOW_UNIX + 3600))
            .with_grant(grant("g-fetch", &["fetch"], NOW_UNIX + 3600));
        session.set_granted(&[
            GrantedTool {
                name: "search".into(),
                digest: ByteBuf::from(vec![7; 32]),
            },
            GrantedTool {
                name: "fetch".into(),
                digest: ByteBuf::from(vec![8; 32]),
            },
        ]);
        let mut table = AtMostOnceTable::default();
        table.attach(&session.lineage, LineageOrigin::Fresh);
        let mut limits = AuthzLimits::default();
        limits.max_clock_skew_secs = 0;
        Self {
            limits,
            rate_limited: false,
            tools,
            revoked: BTreeSet::new(),
            authorizer: Recorder::default(),
            reject_arguments: false,
            table,
            session,
            in_flight: 0,
        }
    }

    fn evaluate(&mut self, request: &Request) -> Verdict {
        let rate_limited = self.rate_limited;
        let mut budgets = move |_: &IdentityKey, _: &str, _: Instant| {
            if rate_limited {
                Err(RetryAfter(Duration::from_millis(5)))
            } else {
                Ok(())
            }
        };
        let reject = self.reject_arguments;
        let validator = move |_: &str, _: &[u8]| {
            if reject {
                Err("/0: expected string".to_owned())
            } else {
                Ok(())
            }
        };
        let mut pipeline = RequestPipeline {
            limits: &self.limits,
            rate_budgets: &mut budgets,
            tools: &self.tools,
            revocations: &self.revoked,
            authorizer: &self.authorizer,
            policy_version: 12,
            validator: &validator,
            at_most_once: &mut self.table,
        };
        pipeline
            .evaluate(
                &self.session,
                request,
                self.in_flight,
                Instant::now(),
                NOW_UNIX,
            )
            .verdict
    }
}

fn request(id: u64, tool: &str, grant_id: Option<&str>) -> Request {
    let signature = RequestFields {
        session_id: &SESSION_ID,
        request_id: id,
        tool,
        args: ARGS,
        grant_id: grant_id.unwrap_or(""),
    }
    .sign(&client());
    Request {
        id,
        tool: tool.into(),
        args: ByteBuf::from(ARGS.to_vec()),
        grant_id: grant_id.map(str::to_owned),
        deadline_ms: None,
        signature: Some(ByteBuf::from(signature.to_vec())),
        retry: false,
    }
}

/// Clauses: AUTHZ-016 — the policy is asked with the session id, the client identity
/// key, the tool, the argument bytes as received, the grant relied on and the policy
/// version; its denial is PERMISSION_DENIED at step 4.
#[test]
fn the_policy_is_asked_about_the_whole_call_and_its_denial_refuses() {
    let mut world = World::new();
    assert_eq!(
        world.evaluate(&request(1, "search", Some("g-1"))),
        Verdict::Execute
    );
    // A key-allowed session calling without a grant relies on none.
    world.session = world.session.clone().with_key_allowed(true);
    assert_eq!(world.evaluate(&request(2, "fetch", None)), Verdict::Execute);
    let asked = world.authorizer.asked.borrow().clone();
    assert_eq!(
        asked,
        [
            (
                SESSION_ID.to_vec(),
                client().public_key(),
                "search".to_owned(),
                ARGS.to_vec(),
                Some("g-1".to_owned()),
                12
            ),
            (
                SESSION_ID.to_vec(),
                client().public_key(),
                "fetch".to_owned(),
                ARGS.to_vec(),
                None,
                12
            ),
        ]
    );
    world.authorizer.deny = true;
    let Verdict::Refuse { code, message, .. } = world.evaluate(&request(3, "search", None)) else {
        panic!("the policy denies");
    };
    assert_eq!(code, ErrorCode::PERMISSION_DENIED);
    assert!(!message.contains("secret"), "{message}");
}

/// The `(code, message)` rows of the spec's table of fixed refusal messages.
fn spec_messages() -> Vec<(u32, String)> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/PROTOCOL.md"))
        .expect("the spec is readable");
    let table = spec
        .split("Fixed refusal messages of the reference implementation:")
        .nth(1)
        .expect("the table of refusal messages");
    let mut rows = Vec::new();
    for line in table.lines().skip_while(|line| line.trim().is_empty()) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(Ok(code)) = cells.get(2).map(|cell| cell.parse::<u32>()) else {
            continue;
        };
        for text in cells[3].split('·') {
            rows.push((code, text.trim().trim_matches('`').to_owned()));
        }
    }
    rows
}

/// Clauses: AUTHZ-021, AUTHZ-022, AUTHZ-002 — every refusal answers the request id
/// with its step's code and exactly the fixed text the spec lists for it (for step 6,
/// `invalid arguments: ` and the validator's reason); together the refusals produce
/// every row of the table, and none carries the policy's reason.
#[test]
fn every_refusal_carries_its_fixed_message() {
    let mut produced: Vec<(Step, u32, String)> = Vec::new();
    let mut check = |step: Step, world: &mut World, request: Request| {
        let verdict = world.evaluate(&request);
        let error = verdict
            .error_message(request.id)
            .unwrap_or_else(|| panic!("step {step:?} refused nothing: {verdict:?}"));
        assert_eq!(error.id, Some(request.id));
        produced.push((step, error.code, error.message));
    };

    let mut world = World::new();
    world.in_flight = world.limits.max_in_flight;
    check(Step::Budget, &mut world, request(1, "search", None));
    let mut world = World::new();
    world.rate_limited = true;
    check(Step::Budget, &mut world, request(1, "search", None));
    check(Step::Granted, &mut World::new(), request(1, "delete", None));
    check(
        Step::Grant,
        &mut World::new(),
        request(1, "search", Some("g-x")),
    );
    check(
        Step::Grant,
        &mut World::new(),
        request(1, "search", Some("g-fetch")),
    );
    let mut world = World::new();
    world.session.grants.retain(|grant| grant.id == "g-fetch");
    check(Step::Grant, &mut world, request(1, "search", None));
    let mut world = World::new();
    world.session.grants[0].expires_at_unix = NOW_UNIX;
    check(Step::Grant, &mut world, request(1, "search", None));
    let mut world = World::new();
    world.revoked.insert("root-of-g-1".into());
    check(Step::Grant, &mut world, request(1, "search", None));
    let mut world = World::new();
    world.authorizer.deny = true;
    check(Step::Policy, &mut world, request(1, "search", None));
    let mut unsigned = request(1, "search", None);
    unsigned.signature = None;
    check(Step::Signature, &mut World::new(), unsigned);
    let mut world = World::new();
    world.reject_arguments = true;
    check(Step::Arguments, &mut world, request(1, "search", None));
    let mut world = World::new();
    let key = world.session.lineage;
    assert_eq!(world.table.admit(&key, 10_000, false), Admission::Execute);
    assert!(world
        .table
        .complete(&key, 10_000, CachedOutcome::Response(vec![])));
    check(Step::AtMostOnce, &mut world, request(1, "search", None));
    let mut world = World::new();
    assert_eq!(world.table.admit(&key, 1, false), Admission::Execute);
    world.table.abandon(&key, 1);
    check(Step::AtMostOnce, &mut world, request(1, "search", None));
    check(
        Step::AtMostOnce,
        &mut World::new(),
        request(SEQUENCE_LIMIT, "search", None),
    );
    let mut world = World::new();
    let mut config = AmoConfig::default();
    config.max_lineages = 1;
    world.table = AtMostOnceTable::new(config);
    let other = LineageKey::new(Identity::from_seed(&[9; 32]).public_key(), [9; 16]);
    assert_eq!(world.table.admit(&other, 1, false), Admission::Execute);
    check(Step::AtMostOnce, &mut world, request(1, "search", None));

    let expected = spec_messages();
    assert_eq!(expected.len(), 16, "{expected:?}");
    for (step, code, message) in &produced {
        let listed = expected.iter().any(|(listed_code, listed)| {
            listed_code == code
                && match listed.strip_suffix("<reason>") {
                    Some(prefix) => *message == format!("{prefix}/0: expected string"),
                    None => listed == message,
                }
        });
        assert!(
            listed,
            "step {step:?}: ({code}, {message:?}) is not in the table"
        );
        assert!(!message.contains("secret policy reason"));
    }
    // Every row but CANCELLED (answered outside the pipeline) was produced.
    for (code, listed) in &expected {
        if *code == ErrorCode::CANCELLED.0 {
            assert_eq!(listed, "cancelled");
            assert_eq!(
                CachedOutcome::cancelled()
                    .error_message(1)
                    .map(|m| m.message),
                Some("cancelled".to_owned())
            );
            continue;
        }
        let prefix = listed.strip_suffix("<reason>").unwrap_or(listed);
        assert!(
            produced
                .iter()
                .any(|(_, c, message)| c == code && message.starts_with(prefix)),
            "({code}, {listed:?}) never produced"
        );
    }
}

//! The audit log (AUD-001..AUD-011): a log built from real signed envelopes verifies
//! with only the server's public key, and every kind of tampering is reported at the
//! first bad line.
//!
//! What the design guarantees, as exercised below:
//! - every line up to the last head is fixed by the server's head signature: any
//!   edit, deletion, reordering or insertion before it is detected (the property
//!   test flips every kind of byte of a log that ends with a head);
//! - request and response signatures are checked whenever the argument / result
//!   bytes are inlined (default: up to 4 KiB), so the client's own signature proves
//!   what it asked for, even against the server;
//! - with the inline limit set to 0, no argument or result bytes appear in the log
//!   at all, only their hashes and the signatures (counted as unchecked);
//! - a crash mid-write (torn last line) is reported as such, not as tampering;
//! - lines after the last head are only chained, not signed: they are reported as
//!   the unsigned tail, and an edit of the very last one goes unnoticed until the
//!   next head.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use serde_bytes::ByteBuf;
use toolwire_protocol::amo::{
    AmoConfig, AtMostOnceStore as _, AtMostOnceTable, CachedOutcome, LineageOrigin,
};
use toolwire_protocol::audit::{
    complete_len, verify_log, verify_log_from, AuditChain, AuditError, AuditErrorKind,
    AuditWriteError, ChainPosition, RequestEvidence, ResponseEvidence,
};
use toolwire_protocol::authz::{
    AllowlistAuthorizer, AuthzLimits, Evaluation, RequestPipeline, RetryAfter, SessionAuthz,
    ToolDigests, Verdict,
};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::message::{GrantedTool, Request};
use toolwire_protocol::testing::{established_pair_for_testing_only, fixed_peers_for_testing_only};
use toolwire_protocol::{Identity, IdentityKey};

/// `["s3cr3t"]` in msgpack: arguments whose clear bytes the hashes-only mode must
/// never write.
const ARGS: &[u8] = &[0x91, 0xa6, b's', b'3', b'c', b'r', b'3', b't'];
/// `[1]` in msgpack.
const RESULT: &[u8] = &[0x91, 0x01];

fn other_identity() -> Identity {
    Identity::from_seed(&[0x99; 32])
}

fn time(second: u32) -> String {
    format!("2026-01-01T00:00:{second:02}Z")
}

/// A server's authorization state for one real session, and its audit chain.
struct Server {
    identity: Identity,
    client: Identity,
    session: SessionAuthz,
    tools: ToolDigests,
    authorizer: AllowlistAuthorizer,
    table: AtMostOnceTable,
    chain: AuditChain,
    clock: u32,
}

impl Server {
    fn new(max_inline: Option<usize>) -> Self {
        let peers = fixed_peers_for_testing_only();
        let (_client, server) = established_pair_for_testing_only(&peers, Instant::now());
        let info = server.session().expect("established");
        let mut session = SessionAuthz::new(info, true);
        let mut tools = ToolDigests::new();
        for (name, digest) in [("search", [1; 32]), ("fetch", [2; 32]), ("delete", [3; 32])] {
            tools.insert(name, digest);
        }
        session.set_granted(&[
            GrantedTool {
                name: "search".into(),
                digest: ByteBuf::from(vec![1; 32]),
            },
            GrantedTool {
                name: "fetch".into(),
                digest: ByteBuf::from(vec![2; 32]),
            },
        ]);
        let mut table = AtMostOnceTable::new(AmoConfig::default());
        table.attach(&session.lineage, LineageOrigin::Fresh);
        let client_key = peers.client_identity.public_key();
        let mut chain = AuditChain::new(peers.server_identity.clone());
        if let Some(max_inline) = max_inline {
            chain = chain.with_max_inline(max_inline);
        }
        Self {
            identity: peers.server_identity,
            client: peers.client_identity,
            session,
            tools,
            authorizer: AllowlistAuthorizer::new().allow(
                client_key,
                ["search", "fetch"],
                Vec::<String>::new(),
            ),
            table,
            chain,
            clock: 0,
        }
    }

    fn fields<'a>(&'a self, id: u64, tool: &'a str, args: &'a [u8]) -> RequestFields<'a> {
        RequestFields {
            session_id: &self.session.session_id,
            request_id: id,
            tool,
            args,
            grant_id: "",
        }
    }

    /// A REQUEST signed by `signer`.
    fn request(&self, id: u64, tool: &str, args: &[u8], signer: &Identity) -> Request {
        let signature = self.fields(id, tool, args).sign(signer);
        Request {
            id,
            tool: tool.into(),
            args: ByteBuf::from(args.to_vec()),
            grant_id: None,
            deadline_ms: None,
            signature: Some(ByteBuf::from(signature.to_vec())),
            retry: false,
        }
    }

    fn evaluate(&mut self, request: &Request) -> Evaluation {
        let limits = AuthzLimits::default();
        let mut budgets =
            |_: &IdentityKey, _: &str, _: Instant| -> Result<(), RetryAfter> { Ok(()) };
        let validator = |_: &str, _: &[u8]| -> Result<(), String> { Ok(()) };
        let revoked = BTreeSet::<String>::new();
        let mut pipeline = RequestPipeline {
            limits: &limits,
            rate_budgets: &mut budgets,
            tools: &self.tools,
            revocations: &revoked,
            authorizer: &self.authorizer,
            policy_version: 7,
            validator: &validator,
            at_most_once: &mut self.table,
        };
        pipeline.evaluate(&self.session, request, 0, Instant::now(), 1_767_225_600)
    }

    /// Evaluates `request`, runs it (answering `RESULT`, signed by the server) when
    /// the verdict says so, and returns its audit line.
    fn call(&mut self, request: &Request) -> String {
        let evaluation = self.evaluate(request);
        let fields = RequestFields {
            session_id: &self.session.session_id,
            request_id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: "",
        };
        let request_hash = fields.hash();
        let result = match &evaluation.verdict {
            Verdict::Execute => {
                assert!(self.table.complete(
                    &self.session.lineage,
                    request.id,
                    CachedOutcome::Response(RESULT.to_vec()),
                ));
                Some(RESULT.to_vec())
            }
            Verdict::AnswerFromCache(CachedOutcome::Response(result)) => Some(result.clone()),
            _ => None,
        };
        let response = result.map(|result| {
            let signature = ResponseFields {
                session_id: &self.session.session_id,
                request_id: request.id,
                request_hash: &request_hash,
                result: &result,
            }
            .sign(&self.identity);
            ResponseEvidence::new(&request_hash, &result, Some(&signature))
        });
        let time = self.tick();
        self.chain
            .call_entry(
                &time,
                &evaluation.record,
                Some(RequestEvidence::from_request(request)),
                response,
            )
            .expect("valid time")
    }

    fn head(&mut self) -> String {
        let time = self.tick();
        self.chain.head_entry(&time).expect("valid time")
    }

    fn tick(&mut self) -> String {
        self.clock += 1;
        time(self.clock)
    }

    fn server_key(&self) -> IdentityKey {
        self.identity.public_key()
    }
}

/// The reference log, one element per line:
/// 1 search id 1, executed and answered (request and response signed);
/// 2 delete id 2, refused at "granted" (PERMISSION_DENIED);
/// 3 fetch id 3 signed by the wrong key, refused at "signature";
/// 4 head;
/// 5 search id 1 again (retry), answered from the cache;
/// 6 search id 4 with 5000 bytes of arguments (not inlined), executed;
/// 7 head.
fn reference(max_inline: Option<usize>) -> (Server, Vec<String>) {
    let mut server = Server::new(max_inline);
    let client = server.client.clone();
    let mut lines = Vec::new();
    let first = server.request(1, "search", ARGS, &client);
    lines.push(server.call(&first));
    let denied = server.request(2, "delete", &[0x90], &client);
    lines.push(server.call(&denied));
    let forged = server.request(3, "fetch", ARGS, &other_identity());
    lines.push(server.call(&forged));
    lines.push(server.head());
    let mut retry = first;
    retry.retry = true;
    lines.push(server.call(&retry));
    let big = vec![0x42; 5000];
    let large = server.request(4, "search", &big, &client);
    lines.push(server.call(&large));
    lines.push(server.head());
    (server, lines)
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn error(line: usize, kind: AuditErrorKind) -> Result<(), AuditError> {
    Err(AuditError { line, kind })
}

fn check(log: &str, key: &IdentityKey) -> Result<(), AuditError> {
    verify_log(log, key).map(|_| ())
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("JSON")
}

/// AUD-004, AUD-005, AUD-006, AUD-007, AUD-009: a log of real decisions with their
/// envelopes verifies with the server key alone; evidence whose bytes are not
/// inlined is counted as unchecked.
#[test]
fn a_log_of_real_calls_verifies() {
    let (server, lines) = reference(None);
    let summary = verify_log(&join(&lines), &server.server_key()).expect("valid log");
    assert_eq!(summary.entries, 7);
    assert_eq!(summary.calls, 5);
    assert_eq!(summary.heads, 2);
    assert_eq!(summary.last_signed_seq, Some(6));
    assert_eq!(summary.unsigned_tail, 0);
    // Lines 1 and 5: request and response; line 6: response (args not inlined).
    assert_eq!(summary.signatures_verified, 5);
    assert_eq!(summary.signatures_unchecked, 1);
    assert_eq!(summary.end, server.chain.position());
    assert_eq!(summary.end.next_seq, 7);
}

/// AUD-001, AUD-002, AUD-003, AUD-004, AUD-005, AUD-006, AUD-007: the exact form of
/// call and head lines, `seq` from 0, each `prev` the hash of the line before (64
/// zeros first), and request signatures kept only when the pipeline verified them.
#[test]
fn lines_have_the_documented_form() {
    let (server, lines) = reference(None);
    let genesis = format!(
        r#"{{"seq":0,"time":"2026-01-01T00:00:01Z","kind":"call","prev":"{}","session":"#,
        "0".repeat(64)
    );
    assert!(lines[0].starts_with(&genesis), "{}", lines[0]);
    // The module documentation quotes this exact line.
    assert!(
        include_str!("../src/audit.rs").contains(&format!("//! {}\n", lines[0])),
        "update the example line in src/audit.rs to:\n{}",
        lines[0]
    );
    assert!(lines.iter().all(|line| !line.contains('\n')));
    let first = json(&lines[0]);
    assert_eq!(first["client"], server.client.public_key().to_string());
    assert_eq!(first["session"], hex::encode(server.session.session_id));
    assert_eq!(
        first["lineage"],
        hex::encode(server.session.lineage.lineage)
    );
    assert_eq!(first["decision"], "execute");
    assert_eq!(first["refused_at"], serde_json::Value::Null);
    assert_eq!(first["authority"], "key");
    assert_eq!(first["policy_version"], 7);
    let fields = server.fields(1, "search", ARGS);
    assert_eq!(first["request"]["hash"], hex::encode(fields.hash()));
    assert_eq!(first["request"]["args"], hex::encode(ARGS));
    assert_eq!(
        first["request"]["sig"],
        hex::encode(fields.sign(&server.client))
    );
    assert_eq!(
        first["response"]["request_hash"],
        hex::encode(fields.hash())
    );
    assert_eq!(first["response"]["result"], hex::encode(RESULT));
    // Each prev is the hash of the line before.
    for pair in lines.windows(2) {
        let prev = json(&pair[1])["prev"].clone();
        assert_eq!(prev, hex::encode(Sha256Line::of(&pair[0])));
    }

    let denied = json(&lines[1]);
    assert_eq!(denied["decision"], "refused:PERMISSION_DENIED");
    assert_eq!(denied["refused_at"], "granted");
    assert_eq!(denied["authority"], serde_json::Value::Null);
    assert_eq!(denied["response"], serde_json::Value::Null);
    // Refused before the signature step: the signature is not kept (AUD-005).
    assert_eq!(denied["request"]["sig"], serde_json::Value::Null);

    let forged = json(&lines[2]);
    assert_eq!(forged["decision"], "refused:UNAUTHENTICATED");
    assert_eq!(forged["refused_at"], "signature");
    assert_eq!(forged["request"]["sig"], serde_json::Value::Null);

    let head = json(&lines[3]);
    assert_eq!(head["kind"], "head");
    assert_eq!(head["seq"], 3);
    assert_eq!(head["key"], server.server_key().to_string());
    assert!(
        lines[3].starts_with(r#"{"seq":3,"time":"2026-01-01T00:00:04Z","kind":"head","prev":""#)
    );

    assert_eq!(json(&lines[4])["decision"], "answered_from_cache");
    assert_eq!(json(&lines[4])["retry"], true);
    let large = json(&lines[5]);
    assert_eq!(large["request"]["args"], serde_json::Value::Null);
    assert_eq!(large["request"]["sig"].as_str().map(str::len), Some(128));
}

/// `line_hash` as the verifier computes it, kept independent here.
struct Sha256Line;

impl Sha256Line {
    fn of(line: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(line.as_bytes()).into()
    }
}

/// AUD-009, AUD-010: an edit covered by a signature is reported on its own line.
#[test]
fn an_edited_tool_name_is_caught_on_its_line() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    // Line 1: signed request, the tool is covered by the client's signature.
    let mut edited = lines.clone();
    edited[0] = edited[0].replacen(r#""tool":"search""#, r#""tool":"seArch""#, 1);
    assert_ne!(edited, lines);
    assert_eq!(
        check(&join(&edited), &key),
        error(1, AuditErrorKind::BadRequestSignature)
    );
    // Line 2: refused, unsigned, but its request hash covers the tool.
    let mut edited = lines.clone();
    edited[1] = edited[1].replacen(r#""tool":"delete""#, r#""tool":"deletE""#, 1);
    assert_eq!(
        check(&join(&edited), &key),
        error(2, AuditErrorKind::BadRequestSignature)
    );
    // A field no evidence covers (the decision): the chain catches it at the next
    // line.
    let mut edited = lines.clone();
    edited[1] = edited[1].replacen("refused:PERMISSION_DENIED", "refused:PERMISSION_DENIEd", 1);
    assert_eq!(
        check(&join(&edited), &key),
        error(3, AuditErrorKind::BrokenChain)
    );
    // The line just before a head: the head no longer matches.
    let mut edited = lines.clone();
    edited[5] = edited[5].replacen(r#""policy_version":7"#, r#""policy_version":8"#, 1);
    assert_eq!(
        check(&join(&edited), &key),
        error(7, AuditErrorKind::BrokenChain)
    );
    // The head itself.
    let mut edited = lines;
    edited[6] = edited[6].replacen("00:00:07Z", "00:00:08Z", 1);
    assert_eq!(
        check(&join(&edited), &key),
        error(7, AuditErrorKind::BadHeadSignature)
    );
}

/// AUD-003, AUD-009: a deleted line breaks the chain at the line after it.
#[test]
fn a_deleted_line_breaks_the_chain_where_it_was() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    for removed in 0..lines.len() - 1 {
        let mut shorter = lines.clone();
        shorter.remove(removed);
        assert_eq!(
            check(&join(&shorter), &key),
            error(removed + 1, AuditErrorKind::BrokenChain),
            "line {} removed",
            removed + 1
        );
    }
}

/// AUD-003, AUD-009: reordered lines break the chain at the first of them.
#[test]
fn swapped_lines_break_the_chain_at_the_first_of_them() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    for first in 0..lines.len() - 1 {
        let mut swapped = lines.clone();
        swapped.swap(first, first + 1);
        assert_eq!(
            check(&join(&swapped), &key),
            error(first + 1, AuditErrorKind::BrokenChain)
        );
    }
    let mut swapped = lines;
    swapped.swap(1, 4);
    assert_eq!(
        check(&join(&swapped), &key),
        error(2, AuditErrorKind::BrokenChain)
    );
}

/// AUD-001, AUD-009: a final line without LF is `TornLastLine`, distinct from
/// tampering, which is still reported first.
#[test]
fn a_torn_last_line_is_a_crash_not_tampering() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    let log = join(&lines);
    // Only the LF missing, then a few bytes more, then all but one byte of the line.
    let last_start = log.len() - lines[6].len() - 1;
    for cut in [1, 2, 10, lines[6].len()] {
        let torn = &log[..log.len() - cut];
        assert_eq!(
            check(torn, &key),
            error(7, AuditErrorKind::TornLastLine),
            "cut {cut}"
        );
    }
    // Cut exactly at a line boundary: a shorter, valid log whose tail is unsigned.
    let summary = verify_log(&log[..last_start], &key).expect("prefix verifies");
    assert_eq!(summary.entries, 6);
    assert_eq!(summary.last_signed_seq, Some(3));
    assert_eq!(summary.unsigned_tail, 2);
    // Tampering before the torn line is still reported first.
    let mut edited = lines;
    edited[1] = edited[1].replacen("refused:PERMISSION_DENIED", "execute", 1);
    let edited = join(&edited);
    assert_eq!(
        check(&edited[..edited.len() - 5], &key),
        error(3, AuditErrorKind::BrokenChain)
    );
}

/// AUD-008: a writer cuts a torn line (`complete_len`) and continues the chain.
#[test]
fn a_writer_recovers_from_a_torn_line() {
    let (server, lines) = reference(None);
    let log = join(&lines);
    let torn = format!("{log}{}", &lines[0][..40]);
    let kept = &torn[..complete_len(torn.as_bytes())];
    assert_eq!(kept, log);
    let last = kept.lines().last().expect("a line");
    let mut chain = AuditChain::resume(server.identity.clone(), last).expect("resumes");
    assert_eq!(chain.position(), server.chain.position());
    let recovered = format!("{kept}{}\n", chain.head_entry(&time(30)).expect("head"));
    let summary = verify_log(&recovered, &server.server_key()).expect("verifies");
    assert_eq!(summary.entries, 8);
    assert_eq!(summary.heads, 3);
}

/// AUD-005, AUD-009, AUD-010: a request signature must be the entry's client's.
#[test]
fn a_request_signature_by_another_key_is_refused() {
    let (server, lines) = reference(None);
    let fields = server.fields(1, "search", ARGS);
    let genuine = hex::encode(fields.sign(&server.client));
    let foreign = hex::encode(fields.sign(&other_identity()));
    assert!(fields
        .verify(
            &other_identity().public_key(),
            &fields.sign(&other_identity())
        )
        .is_ok());
    let mut edited = lines;
    assert!(edited[0].contains(&genuine));
    edited[0] = edited[0].replace(&genuine, &foreign);
    assert_eq!(
        check(&join(&edited), &server.server_key()),
        error(1, AuditErrorKind::BadRequestSignature)
    );
}

/// AUD-006, AUD-009, AUD-010: a response signature must be the server's.
#[test]
fn a_response_signature_by_another_key_is_refused() {
    let (server, lines) = reference(None);
    let request_hash = server.fields(1, "search", ARGS).hash();
    let response = ResponseFields {
        session_id: &server.session.session_id,
        request_id: 1,
        request_hash: &request_hash,
        result: RESULT,
    };
    let genuine = hex::encode(response.sign(&server.identity));
    let foreign = hex::encode(response.sign(&other_identity()));
    let mut edited = lines;
    assert!(edited[0].contains(&genuine));
    edited[0] = edited[0].replace(&genuine, &foreign);
    assert_eq!(
        check(&join(&edited), &server.server_key()),
        error(1, AuditErrorKind::BadResponseSignature)
    );
}

/// AUD-007, AUD-009: a head must be signed by the server key, whatever it claims.
#[test]
fn a_head_signed_by_another_key_is_refused() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    // A head at the right place, chained correctly, but by another identity.
    let mut impostor = AuditChain::resume(other_identity(), &lines[2]).expect("resumes");
    let mut edited = lines.clone();
    edited[3] = impostor.head_entry(&time(4)).expect("head");
    assert_eq!(
        check(&join(&edited), &key),
        error(4, AuditErrorKind::BadHeadSignature)
    );
    // The same, claiming the server's key.
    edited[3] = edited[3].replace(&other_identity().public_key().to_string(), &key.to_string());
    assert!(edited[3].contains(&key.to_string()));
    assert_eq!(
        check(&join(&edited), &key),
        error(4, AuditErrorKind::BadHeadSignature)
    );
}

/// AUD-009: checked against another key, the first server signature fails.
#[test]
fn a_log_checked_against_the_wrong_server_key_fails_at_its_first_server_signature() {
    let (_server, lines) = reference(None);
    let wrong = other_identity().public_key();
    // Line 1 carries the first response signature.
    assert_eq!(
        check(&join(&lines), &wrong),
        error(1, AuditErrorKind::BadResponseSignature)
    );
    // Without responses, the first head fails.
    let mut server = Server::new(None);
    let client = server.client.clone();
    let denied = server.request(1, "delete", ARGS, &client);
    let log = join(&[server.call(&denied), server.head()]);
    assert!(check(&log, &server.server_key()).is_ok());
    assert_eq!(
        check(&log, &wrong),
        error(2, AuditErrorKind::BadHeadSignature)
    );
}

/// AUD-009, AUD-010: entries after the last head are a warning (the unsigned tail),
/// and what a valid log does not prove: the tail can be rewritten unnoticed.
#[test]
fn the_unsigned_tail_is_a_warning_and_its_last_line_is_unprotected() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    let open = join(&lines[..6]);
    let summary = verify_log(&open, &key).expect("verifies");
    assert_eq!(summary.unsigned_tail, 2);
    assert_eq!(summary.last_signed_seq, Some(3));
    // The limit of a hash chain: the last unsigned line can be rewritten unnoticed
    // (here its decision). Only the next head would have caught it.
    let mut edited = lines[..6].to_vec();
    edited[5] = edited[5].replacen(r#""policy_version":7"#, r#""policy_version":9"#, 1);
    let summary = verify_log(&join(&edited), &key).expect("undetectable without a head");
    assert_eq!(summary.unsigned_tail, 2);
    // A log without any head is all tail.
    let summary = verify_log(&join(&lines[..3]), &key).expect("verifies");
    assert_eq!((summary.unsigned_tail, summary.last_signed_seq), (3, None));
}

/// AUD-002, AUD-008: a new file continues `seq` and `prev` of the previous one.
#[test]
fn rotated_files_continue_the_chain() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    let first_file = join(&lines);
    let first = verify_log(&first_file, &key).expect("first file");
    // The next file continues after the previous file's last line (a head).
    let mut chain = AuditChain::resume(server.identity.clone(), &lines[6]).expect("resumes");
    let second_file = join(&[chain.head_entry(&time(40)).expect("head")]);
    let second = verify_log_from(&second_file, &key, first.end).expect("second file");
    assert_eq!(second.last_signed_seq, Some(7));
    assert_eq!(ChainPosition::after(&lines[6]).expect("a line"), first.end);
    // Concatenated, they are one log.
    assert!(check(&format!("{first_file}{second_file}"), &key).is_ok());
    // Alone, the second file does not start at the genesis.
    assert_eq!(
        check(&second_file, &key),
        error(1, AuditErrorKind::BrokenChain)
    );
}

/// AUD-005, AUD-006, AUD-011: with the inline limit at 0, no argument or result
/// bytes are written; hashes and signatures remain.
#[test]
fn hashes_only_mode_never_writes_argument_or_result_bytes() {
    let (server, lines) = reference(Some(0));
    let log = join(&lines);
    for secret in [
        hex::encode(ARGS),
        hex::encode(&ARGS[2..]),
        "s3cr3t".to_owned(),
        hex::encode(RESULT),
        hex::encode([0x42; 16]),
    ] {
        assert!(!log.contains(&secret), "{secret} written");
    }
    for line in &lines[..3] {
        assert_eq!(json(line)["request"]["args"], serde_json::Value::Null);
    }
    // Still verifiable: chain and heads; the envelope signatures are kept, but
    // cannot be checked without the bytes.
    let summary = verify_log(&log, &server.server_key()).expect("verifies");
    assert_eq!(summary.signatures_verified, 0);
    assert_eq!(summary.signatures_unchecked, 6);
    // Whoever holds the arguments can check the kept signature.
    let first = json(&lines[0]);
    let fields = server.fields(1, "search", ARGS);
    assert_eq!(first["request"]["hash"], hex::encode(fields.hash()));
    let signature = hex::decode(first["request"]["sig"].as_str().expect("sig")).expect("hex");
    assert!(fields
        .verify(&server.client.public_key(), &signature)
        .is_ok());
}

/// AUD-005: arguments up to the default inline limit are kept in clear.
#[test]
fn by_default_small_arguments_are_kept_in_clear_to_check_their_signatures() {
    let (_server, lines) = reference(None);
    assert!(lines[0].contains(&hex::encode(ARGS)));
    assert!(!lines[5].contains(&hex::encode([0x42; 16])));
}

/// AUD-001: `time` is RFC 3339 in UTC, or nothing is written.
#[test]
fn writers_refuse_a_time_that_is_not_utc_rfc3339() {
    let mut chain = AuditChain::new(other_identity());
    for bad in ["", "2026-01-01", "2026-01-01T01:00:00+01:00", "now"] {
        assert_eq!(chain.head_entry(bad), Err(AuditWriteError::BadTime));
    }
    assert_eq!(chain.position(), ChainPosition::GENESIS);
    assert!(chain.head_entry("2026-01-01T00:00:00.5Z").is_ok());
    assert_eq!(chain.position().next_seq, 1);
    assert!(AuditChain::resume(other_identity(), "not json").is_err());
}

/// An edit of a JSON entry.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// AUD-001, AUD-009: hostile lines, each as the first line of a log: rejected as
/// `Malformed`, never a panic.
#[test]
fn garbage_lines_are_malformed() {
    let (server, lines) = reference(None);
    let key = server.server_key();
    let zeros = "0".repeat(64);
    let head = json(&lines[3]);
    let edited_call = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut value = json(&lines[0]);
        value["prev"] = zeros.clone().into();
        edit(&mut value);
        value.to_string()
    };
    let mut garbage: Vec<String> = [
        "",
        " ",
        "\r",
        "null",
        "0",
        "\"call\"",
        "[]",
        "{}",
        "{",
        r#"{"kind":"call"}"#,
        r#"{"kind":"head"}"#,
        r#"{"kind":"other","seq":0}"#,
        r#"{"kind":1}"#,
        r#"{"kind":"head","kind":"head"}"#,
        r#"{"seq":-1,"time":"2026-01-01T00:00:00Z","kind":"head","prev":"","key":"","sig":""}"#,
        r#"{"seq":18446744073709551616,"time":"x","kind":"head","prev":"","key":"","sig":""}"#,
        "\u{feff}{}",
        "\\ud800",
        r#"{"kind":"head","time":"\ud800"}"#,
    ]
    .iter()
    .map(|line| (*line).to_owned())
    .collect();
    garbage.push("[".repeat(100_000));
    garbage.push(format!("{{\"kind\":{}", "{\"a\":".repeat(10_000)));
    // Almost valid lines: one field wrong.
    let edits: Vec<Edit> = vec![
        Box::new(|v| v["extra"] = 1.into()),
        Box::new(|v| {
            v.as_object_mut().expect("object").remove("detail");
        }),
        Box::new(|v| v["session"] = "AB".repeat(32).into()),
        Box::new(|v| v["session"] = "ab".into()),
        Box::new(|v| v["lineage"] = "zz".repeat(16).into()),
        Box::new(|v| v["client"] = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        Box::new(|v| v["client"] = "not a key".into()),
        Box::new(|v| v["time"] = "2026-01-01T01:00:00+01:00".into()),
        Box::new(|v| v["request_id"] = (-1).into()),
        Box::new(|v| v["request_id"] = 1.5.into()),
        Box::new(|v| v["retry"] = "false".into()),
        Box::new(|v| v["request"]["sig"] = "00".into()),
        Box::new(|v| v["request"]["args"] = "0".into()),
        Box::new(|v| v["request"]["hash"] = serde_json::Value::Null),
        Box::new(|v| v["response"] = serde_json::json!({"hash": "00"})),
        Box::new(|v| v["response"]["result"] = serde_json::json!([1, 2])),
    ];
    for edit in &edits {
        garbage.push(edited_call(edit.as_ref()));
    }
    let mut head_variants = Vec::new();
    for (field, value) in [
        ("sig", serde_json::json!("00")),
        ("key", serde_json::json!(null)),
        ("seq", serde_json::json!("3")),
    ] {
        let mut variant = head.clone();
        variant[field] = value;
        head_variants.push(variant.to_string());
    }
    garbage.extend(head_variants);
    for line in &garbage {
        let result = verify_log(&format!("{line}\n"), &key);
        assert_eq!(
            result.map(|_| ()),
            error(1, AuditErrorKind::Malformed),
            "{}",
            line.chars().take(80).collect::<String>()
        );
        // Never a panic as a torn line either.
        assert!(verify_log(line, &key).is_err() || line.is_empty());
    }
    // A blank line in the middle of a valid log.
    let mut blank = lines;
    blank.insert(2, String::new());
    assert_eq!(
        check(&join(&blank), &key),
        error(3, AuditErrorKind::Malformed)
    );
}

/// The reference log and the server key, built once for the property tests.
fn shared_reference() -> &'static (IdentityKey, String) {
    static SHARED: OnceLock<(IdentityKey, String)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (server, lines) = reference(None);
        (server.server_key(), join(&lines))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Arbitrary text never panics the verifier.
    #[test]
    fn arbitrary_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = other_identity().public_key();
        let text = String::from_utf8_lossy(&bytes);
        let _ = verify_log(&text, &key);
    }

    /// AUD-003, AUD-010: changing any single byte of a log that ends with a head is
    /// detected.
    #[test]
    fn any_byte_change_is_detected(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (key, log) = shared_reference();
        let mut log = log.clone().into_bytes();
        let at = index.index(log.len());
        prop_assume!(log[at] != byte);
        log[at] = byte;
        let text = String::from_utf8(log);
        prop_assume!(text.is_ok());
        let text = text.unwrap_or_default();
        prop_assert!(verify_log(&text, key).is_err());
    }

    /// AUD-008, AUD-009: a log cut anywhere is either a shorter valid log (cut at a line
    /// boundary) or ends with a torn line, never reported as tampering.
    #[test]
    fn truncation_is_only_ever_a_torn_line(index in any::<prop::sample::Index>()) {
        let (key, log) = shared_reference();
        let cut = index.index(log.len());
        let text = &log[..cut];
        let complete = text.matches('\n').count();
        match verify_log(text, key) {
            Ok(summary) => {
                prop_assert!(text.is_empty() || text.ends_with('\n'));
                prop_assert_eq!(summary.entries, complete);
            }
            Err(error) => {
                prop_assert_eq!(error.kind, AuditErrorKind::TornLastLine);
                prop_assert_eq!(error.line, complete + 1);
            }
        }
    }
}

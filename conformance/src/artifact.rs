//! Artifact cases: clauses no peer can observe on the wire are checked on what the
//! implementation produced during the run, here the server's audit log (section 19).
//!
//! Run them after server mode against a server that wrote its audit log to a file
//! ([`run`]; `toolwire conformance server --audit-log FILE`). The server cases make
//! calls the log must record: executed calls (`amo.request-id-reuse`), a call to an
//! ungranted tool (`authz.ungranted-tool`) and one with a bad envelope signature
//! (`authz.bad-envelope-signature`). The log is judged with the reference verifier
//! (`toolwire_protocol::audit`), itself checked against tampered copies.

use crate::report::{CaseReport, Report};
use crate::{Case, CaseResult};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use toolwire_protocol::audit::{line_hash, verify_log, AuditErrorKind};
use toolwire_protocol::grant::GrantBuilder;
use toolwire_protocol::{Identity, IdentityKey};

/// What the artifact cases look at.
#[derive(Debug, Clone)]
pub struct ArtifactTarget {
    /// The server's audit log (the cases SKIP without it).
    pub audit_log: Option<PathBuf>,
    /// The server identity key.
    pub server_key: IdentityKey,
    /// Strings that must appear nowhere in the log (secret keys in hex, …).
    pub secrets: Vec<String>,
    /// The server was shut down cleanly before the cases run (AUD-007: the log then
    /// ends with a head).
    pub after_clean_shutdown: bool,
    /// The server's event output (logs) during the run, when captured: the event
    /// case SKIPs without it.
    pub events: Option<String>,
}

/// How an artifact case runs.
pub type ArtifactCaseFn = fn(&Inputs<'_>, &str) -> CaseResult;

/// An artifact case.
pub type ArtifactCase = Case<ArtifactCaseFn>;

/// Every artifact case.
pub fn cases() -> Vec<ArtifactCase> {
    vec![
        Case {
            id: "aud.log-verifies",
            clauses: &["AUD-001", "AUD-002", "AUD-003", "AUD-006", "ENV-009"],
            description: "The audit log written during the run verifies from genesis (well-formed lines, the hash chain, sequence numbers, request and response evidence) and holds call entries.",
            run: log_verifies,
        },
        Case {
            id: "aud.call-entries",
            clauses: &["AUD-004", "AUD-005", "AUTHZ-024"],
            description: "The log holds a call entry, fields in the order of AUD-004, for the refusals and executions the server cases caused: PERMISSION_DENIED and UNAUTHENTICATED refusals without a request signature (refused before the signature step), executed calls with response evidence.",
            run: call_entries,
        },
        Case {
            id: "aud.head-at-shutdown",
            clauses: &["AUD-007"],
            description: "After a clean shutdown the log ends with a head signed by the server identity.",
            run: head_at_shutdown,
        },
        Case {
            id: "aud.verifier-detects-tampering",
            clauses: &["AUD-009"],
            description: "The verifier names the first bad line of tampered copies of the log: an edited entry, a deleted entry, and a torn last line (TornLastLine).",
            run: verifier_detects_tampering,
        },
        Case {
            id: "aud.key-text",
            clauses: &["ID-006"],
            description: "Every identity key the log writes (`client` of call entries, `key` of heads) is 43 base64url characters without padding; the heads' `key` is the server key.",
            run: key_text,
        },
        Case {
            id: "evt.no-secrets",
            clauses: &["EVT-004", "AUTHZ-025"],
            description: "The server's events during the run (decision records included) hold no secret key, no grant token and no argument bytes the suite sent.",
            run: events_without_secrets,
        },
        Case {
            id: "aud.verifier-claims",
            clauses: &["AUD-010"],
            description: "The verifier under test, given the run's log cut after a head, presents exactly the lines up to that head as proven; given the log with correctly chained lines appended after its last head, it does not present those lines as proven (they are the unsigned tail).",
            run: verifier_claims,
        },
        Case {
            id: "grt.issuer.format",
            clauses: &["GRT-001"],
            description: "The issuer under test produces a root grant and a delegation link as PASETO v4.public tokens without a footer segment, whose message is a JSON object with the claims of 12.2 (the requested holder, audience and tools), signed with the implicit assertion of GRT-002.",
            run: issuer_format,
        },
        Case {
            id: "grt.issuer.iss",
            clauses: &["GRT-003"],
            description: "The `iss` of every token the issuer under test produces (root and delegation link) is the text form of its declared signing key.",
            run: issuer_iss,
        },
        Case {
            id: "grt.issuer.size",
            clauses: &["GRT-004"],
            description: "The issuer under test refuses to issue a grant longer than 8192 bytes: one naming many long tools, and a delegation link whose embedded parent makes it too long.",
            run: issuer_size,
        },
        Case {
            id: "aud.no-secrets",
            clauses: &["AUD-011"],
            description: "No secret key of the run and no grant token appears in the log.",
            run: no_secrets,
        },
    ]
}

/// Runs every artifact case against `target`; the issuer and verifier cases SKIP
/// (see [`run_with`]).
pub fn run(target: &ArtifactTarget) -> Report {
    run_with(target, &Producers::default())
}

/// Runs every artifact case against `target`, and the issuer and verifier cases
/// against `producers`.
pub fn run_with(target: &ArtifactTarget, producers: &Producers) -> Report {
    let mut report = Report::new("artifacts");
    let text = target
        .audit_log
        .as_ref()
        .map(|path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display())));
    let inputs = Inputs { target, producers };
    for case in cases() {
        let started = Instant::now();
        let result = match &text {
            _ if case.id.starts_with("evt.") || case.id.starts_with("grt.issuer") => {
                (case.run)(&inputs, "")
            }
            None => CaseResult::skip("needs the server's audit log (--audit-log)"),
            Some(Err(error)) => CaseResult::harness_error(error.clone()),
            Some(Ok(text)) => (case.run)(&inputs, text),
        };
        report.cases.push(CaseReport::new(
            "artifact",
            &case,
            result,
            started.elapsed(),
        ));
    }
    report
}

/// What an artifact case is given: the target, and the producers under test.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The artifacts of the run.
    pub target: &'a ArtifactTarget,
    /// The issuer and verifier under test.
    pub producers: &'a Producers,
}

impl std::ops::Deref for Inputs<'_> {
    type Target = ArtifactTarget;

    fn deref(&self) -> &ArtifactTarget {
        self.target
    }
}

/// Tools of the implementation under test that produce or judge artifacts on
/// demand: a grant issuer (GRT-001, GRT-003, GRT-004) and an audit-log verifier
/// (AUD-010). Their cases SKIP without them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Producers {
    /// The grant issuer under test.
    pub issuer: Option<Issuer>,
    /// The audit-log verifier under test.
    pub verifier: Option<LogVerifier>,
}

/// One grant the suite asks an issuer for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssueRequest {
    /// The holder (`sub`).
    pub holder: IdentityKey,
    /// The tool server the grant is for (`aud`); for a delegation, the parent's.
    pub audience: IdentityKey,
    /// The tools granted.
    pub tools: Vec<String>,
    /// The lifetime (`exp` = now + `ttl`).
    pub ttl: std::time::Duration,
    /// The parent grant, for a delegation link signed by the issuer (then the
    /// parent's holder).
    pub parent: Option<String>,
}

/// The function that issues a grant: the token, or why the issuer refused.
pub type IssueFn = dyn Fn(&IssueRequest) -> Result<String, String> + Send + Sync;

/// A grant issuer under test: its declared signing key and how to ask it for a
/// grant (in process, a closure over the issuing API; for a command-line issuer, a
/// closure that runs the command and returns its output).
#[derive(Clone)]
pub struct Issuer {
    /// The key the issuer signs with, as declared by its operator.
    pub key: IdentityKey,
    issue: Arc<IssueFn>,
}

impl Issuer {
    /// An issuer signing with `key` through `issue`.
    pub fn new(
        key: IdentityKey,
        issue: impl Fn(&IssueRequest) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            key,
            issue: Arc::new(issue),
        }
    }

    /// The reference issuer (`toolwire_protocol::grant::GrantBuilder`, as `toolwire
    /// grant issue` uses it) signing with `identity`.
    pub fn reference(identity: Identity) -> Self {
        let key = identity.public_key();
        Self::new(key, move |request| {
            let mut id = [0u8; 12];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
            let ttl = time::Duration::try_from(request.ttl).map_err(|e| e.to_string())?;
            let mut builder = GrantBuilder::new(
                request.holder.to_bytes(),
                request.audience.to_bytes(),
                &hex::encode(id),
                time::OffsetDateTime::now_utc() + ttl,
            )
            .tools(request.tools.iter().cloned());
            if let Some(parent) = &request.parent {
                builder = builder.delegate_from(parent);
            }
            builder
                .sign(identity.signing_key())
                .map_err(|e| e.to_string())
        })
    }

    /// Asks the issuer for a grant.
    ///
    /// # Errors
    /// The issuer's refusal.
    pub fn issue(&self, request: &IssueRequest) -> Result<String, String> {
        (self.issue)(request)
    }
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("key", &self.key).finish()
    }
}

/// What a verifier presents as proven about a log it accepted (AUD-010 (a)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifierClaim {
    /// How many lines, from the first, the verifier presents as written by the
    /// server key holder and unchanged since (covered by a head signature).
    pub proven_lines: usize,
    /// How many lines it reports as chained but not covered by a head (the unsigned
    /// tail).
    pub unsigned_tail: usize,
}

impl VerifierClaim {
    /// A claim of `proven_lines` lines proven and `unsigned_tail` more chained only.
    pub fn new(proven_lines: usize, unsigned_tail: usize) -> Self {
        Self {
            proven_lines,
            unsigned_tail,
        }
    }
}

/// The function that verifies a log with a server key: what it claims, or why it
/// refused the log.
pub type VerifyFn = dyn Fn(&str, &IdentityKey) -> Result<VerifierClaim, String> + Send + Sync;

/// An audit-log verifier under test.
#[derive(Clone)]
pub struct LogVerifier(Arc<VerifyFn>);

impl LogVerifier {
    /// A verifier that runs `verify`.
    pub fn new(
        verify: impl Fn(&str, &IdentityKey) -> Result<VerifierClaim, String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(verify))
    }

    /// The reference verifier (`toolwire_protocol::audit::verify_log`, as `toolwire
    /// audit verify` uses it): the entries up to the last head are proven, the
    /// unsigned tail is not.
    pub fn reference() -> Self {
        Self::new(|text, key| {
            verify_log(text, key)
                .map(|summary| {
                    VerifierClaim::new(
                        summary.entries - summary.unsigned_tail,
                        summary.unsigned_tail,
                    )
                })
                .map_err(|error| error.to_string())
        })
    }

    /// Verifies `text` with `server_key`.
    ///
    /// # Errors
    /// The verifier's refusal.
    pub fn verify(&self, text: &str, server_key: &IdentityKey) -> Result<VerifierClaim, String> {
        (self.0)(text, server_key)
    }
}

impl std::fmt::Debug for LogVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogVerifier")
    }
}

fn log_verifies(target: &Inputs<'_>, text: &str) -> CaseResult {
    let expected = "the log verifies from genesis and holds call entries";
    match verify_log(text, &target.server_key) {
        Ok(summary) => CaseResult::check(
            summary.calls > 0,
            expected,
            format!(
                "verified: {} entries, {} calls, {} heads, {} signatures verified",
                summary.entries, summary.calls, summary.heads, summary.signatures_verified
            ),
        ),
        Err(error) => CaseResult::check(false, expected, error.to_string()),
    }
}

const CALL_FIELDS: [&str; 17] = [
    "seq",
    "time",
    "kind",
    "prev",
    "session",
    "client",
    "lineage",
    "request_id",
    "retry",
    "tool",
    "decision",
    "refused_at",
    "policy_version",
    "authority",
    "detail",
    "request",
    "response",
];

/// The keys of a JSON object line in their order of appearance.
fn key_order(line: &str) -> Vec<String> {
    // serde_json's Map is sorted unless `preserve_order`: read the keys by hand from
    // the top level of the compact line.
    let mut keys = Vec::new();
    let bytes = line.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut in_string = false;
    let mut start = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_string = false;
                if let Some(s) = start.take() {
                    if bytes.get(i + 1) == Some(&b':') && depth == 1 {
                        keys.push(line[s..i].to_owned());
                    }
                }
            }
        } else {
            match b {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                b'"' => {
                    in_string = true;
                    start = Some(i + 1);
                }
                _ => {}
            }
        }
        i += 1;
    }
    keys
}

fn call_entries(_target: &Inputs<'_>, text: &str) -> CaseResult {
    let expected = "call entries with the fields of AUD-004 in order; refused:PERMISSION_DENIED and refused:UNAUTHENTICATED with request.sig null; execute with response evidence";
    let mut problems = Vec::new();
    let (mut denied, mut unauthenticated, mut executed) = (0, 0, 0);
    for (index, line) in text.lines().enumerate() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            problems.push(format!("line {} is not JSON", index + 1));
            continue;
        };
        if entry["kind"] != "call" {
            continue;
        }
        let order = key_order(line);
        if order != CALL_FIELDS {
            problems.push(format!("line {}: fields {order:?}", index + 1));
        }
        let sig_null = entry["request"].is_null() || entry["request"]["sig"].is_null();
        match entry["decision"].as_str().unwrap_or("") {
            "refused:PERMISSION_DENIED" => {
                denied += 1;
                if !sig_null {
                    problems.push(format!(
                        "line {}: a PERMISSION_DENIED refusal keeps a request signature it never verified",
                        index + 1
                    ));
                }
            }
            "refused:UNAUTHENTICATED" => {
                unauthenticated += 1;
                if !sig_null {
                    problems.push(format!(
                        "line {}: an UNAUTHENTICATED refusal keeps the signature that failed",
                        index + 1
                    ));
                }
            }
            "execute" if !entry["response"].is_null() => executed += 1,
            _ => {}
        }
    }
    if denied == 0 || unauthenticated == 0 || executed == 0 {
        problems.push(format!(
            "{denied} PERMISSION_DENIED, {unauthenticated} UNAUTHENTICATED, {executed} executed entries with a response (each must be at least 1)"
        ));
    }
    CaseResult::check(
        problems.is_empty(),
        expected,
        if problems.is_empty() {
            format!("{denied} PERMISSION_DENIED, {unauthenticated} UNAUTHENTICATED, {executed} executed entries, fields in order")
        } else {
            problems.join("; ")
        },
    )
}

fn head_at_shutdown(target: &Inputs<'_>, text: &str) -> CaseResult {
    if !target.after_clean_shutdown {
        return CaseResult::skip("the server was not shut down before the check");
    }
    let last = text.lines().last().unwrap_or("");
    let kind = serde_json::from_str::<Value>(last)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let verified = verify_log(text, &target.server_key).is_ok();
    CaseResult::check(
        kind == "head" && verified,
        "the last line is a head and the log verifies",
        format!(
            "last line of kind {kind:?}; log {}",
            if verified {
                "verifies"
            } else {
                "does NOT verify"
            }
        ),
    )
}

fn verifier_detects_tampering(target: &Inputs<'_>, text: &str) -> CaseResult {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 3 {
        return CaseResult::skip("needs a log of at least 3 lines");
    }
    let key = &target.server_key;
    let mut problems = Vec::new();
    // 1. An edited entry: change `"retry":false` (or a digit of `seq`) in line 2.
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[1] = if edited[1].contains("\"time\":\"") {
        edited[1].replacen("\"time\":\"", "\"time\":\"1", 1)
    } else {
        format!("{} ", edited[1])
    };
    let edited = format!("{}\n", edited.join("\n"));
    match verify_log(&edited, key) {
        Err(error) if error.line == 2 || error.line == 3 => {}
        other => problems.push(format!("edited line 2: {other:?}")),
    }
    // 2. A deleted entry: line 2 removed.
    let mut deleted: Vec<&str> = lines.clone();
    deleted.remove(1);
    let deleted = format!("{}\n", deleted.join("\n"));
    match verify_log(&deleted, key) {
        Err(error) if error.line == 2 => {}
        other => problems.push(format!("deleted line 2: {other:?}")),
    }
    // 3. A torn last line.
    let torn = format!(
        "{}\n{}",
        lines[..lines.len() - 1].join("\n"),
        &lines[lines.len() - 1][..10]
    );
    match verify_log(&torn, key) {
        Err(error) if error.kind == AuditErrorKind::TornLastLine && error.line == lines.len() => {}
        other => problems.push(format!("torn last line: {other:?}")),
    }
    CaseResult::check(
        problems.is_empty(),
        "edited line 2 refused at line 2 or 3; deleted line refused at line 2; torn last line reported as TornLastLine",
        if problems.is_empty() {
            "every tampered copy refused at the expected line".to_owned()
        } else {
            problems.join("; ")
        },
    )
}

fn no_secrets(target: &Inputs<'_>, text: &str) -> CaseResult {
    let mut found: Vec<&str> = target
        .secrets
        .iter()
        .filter(|s| !s.is_empty() && text.contains(s.as_str()))
        .map(|_| "a secret key of the run")
        .collect();
    if text.contains("v4.public.") {
        found.push("a grant token");
    }
    CaseResult::check(
        found.is_empty(),
        "no secret key and no grant token in the log",
        if found.is_empty() {
            format!("none of {} secrets found", target.secrets.len())
        } else {
            format!("found {}", found.join(", "))
        },
    )
}

fn key_text(target: &Inputs<'_>, text: &str) -> CaseResult {
    let canonical = |key: &str| {
        key.len() == 43
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && key
                .parse::<IdentityKey>()
                .is_ok_and(|k| k.to_string() == key)
    };
    let server = target.server_key.to_string();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (index, line) in text.lines().enumerate() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for field in ["client", "key"] {
            if let Some(key) = entry[field].as_str() {
                checked += 1;
                if !canonical(key) {
                    problems.push(format!("line {}: {field} {key:?}", index + 1));
                }
                if field == "key" && key != server {
                    problems.push(format!(
                        "line {}: head key is not the server key",
                        index + 1
                    ));
                }
            }
        }
    }
    CaseResult::check(
        problems.is_empty() && checked > 0,
        "every key as 43 base64url characters, no padding; heads name the server key",
        if problems.is_empty() {
            format!("{checked} keys in text form")
        } else {
            problems.join("; ")
        },
    )
}

/// Argument bytes the server cases send on purpose (`authz.refusal-messages`): they
/// must appear in no event.
pub const SECRET_ARGUMENT: &str = "hunter2-conformance";

fn events_without_secrets(target: &Inputs<'_>, _log: &str) -> CaseResult {
    let Some(events) = &target.events else {
        return CaseResult::skip("the server's events were not captured");
    };
    let mut found = Vec::new();
    if target
        .secrets
        .iter()
        .any(|s| !s.is_empty() && events.contains(s.as_str()))
    {
        found.push("a secret key of the run");
    }
    if events.contains("v4.public.") {
        found.push("a grant token");
    }
    if events.contains(SECRET_ARGUMENT) || events.contains(&hex::encode(SECRET_ARGUMENT)) {
        found.push("argument bytes");
    }
    let decisions = events.matches("authz_decision").count();
    CaseResult::check(
        found.is_empty() && !events.is_empty(),
        "no secret key, grant token or argument bytes in any event",
        if found.is_empty() {
            format!(
                "{} lines of events ({decisions} decision records) hold none",
                events.lines().count()
            )
        } else {
            format!("found {}", found.join(", "))
        },
    )
}

// =====================================================================================
// AUD-010: what a verifier claims
// =====================================================================================

/// `line` (a call entry) rewritten as entry `seq` after a line hashing to `prev`.
fn rechained(line: &str, seq: u64, prev: &[u8; 32]) -> Option<String> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let rest = &rest[rest.find(',')?..];
    let at = rest.find("\"prev\":\"")? + "\"prev\":\"".len();
    let end = at + 64;
    if rest.len() < end {
        return None;
    }
    Some(format!(
        "{{\"seq\":{seq}{}{}{}",
        &rest[..at],
        hex::encode(prev),
        &rest[end..]
    ))
}

fn verifier_claims(target: &Inputs<'_>, text: &str) -> CaseResult {
    let Some(verifier) = &target.producers.verifier else {
        return CaseResult::skip("needs the log verifier under test (artifact::Producers::verifier; no command-line form yet)");
    };
    let lines: Vec<&str> = text.lines().collect();
    let kind = |line: &str| {
        serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_owned))
    };
    let heads: Vec<usize> = (0..lines.len())
        .filter(|&i| kind(lines[i]).as_deref() == Some("head"))
        .map(|i| i + 1)
        .collect();
    let (Some(&first_head), Some(&last_head)) = (heads.first(), heads.last()) else {
        return CaseResult::skip("needs a log with a head (a clean shutdown writes one)");
    };
    let Some(template) = lines[..last_head]
        .iter()
        .find(|line| kind(line).as_deref() == Some("call"))
    else {
        return CaseResult::skip("needs a log with a call entry");
    };
    let key = &target.server_key;
    let mut problems = Vec::new();
    let mut seen = Vec::new();

    // 1. Cut right after the first head: everything is proven.
    let cut = format!("{}\n", lines[..first_head].join("\n"));
    match verifier.verify(&cut, key) {
        Ok(claim) if claim.proven_lines == first_head => {
            seen.push(format!("cut after head at line {first_head}: {claim:?}"));
        }
        other => problems.push(format!(
            "cut after the head at line {first_head}: {other:?} (expected {first_head} lines proven)"
        )),
    }

    // 2. Up to the last head, then 3 correctly chained lines no head covers.
    let Some(seq) = serde_json::from_str::<Value>(lines[last_head - 1])
        .ok()
        .and_then(|v| v["seq"].as_u64())
    else {
        return CaseResult::harness_error("the last head has no seq");
    };
    let mut extended: Vec<String> = lines[..last_head].iter().map(|l| (*l).to_owned()).collect();
    for n in 1..=3u64 {
        let prev = line_hash(extended.last().map_or("", String::as_str));
        let Some(line) = rechained(template, seq + n, &prev) else {
            return CaseResult::harness_error("could not rewrite a call entry");
        };
        extended.push(line);
    }
    let extended = format!("{}\n", extended.join("\n"));
    match verify_log(&extended, key) {
        Ok(summary) if summary.unsigned_tail == 3 => {}
        other => {
            return CaseResult::harness_error(format!(
                "the extended log is not a valid log with a 3-line unsigned tail: {other:?}"
            ))
        }
    }
    match verifier.verify(&extended, key) {
        Ok(claim) if claim.proven_lines <= last_head => {
            seen.push(format!("3 lines appended after the last head (line {last_head}): {claim:?}"));
        }
        Err(error) => seen.push(format!(
            "3 lines appended after the last head: refused ({error})"
        )),
        Ok(claim) => problems.push(format!(
            "3 lines appended after the last head (line {last_head}): {claim:?}: presents {} unheaded lines as proven",
            claim.proven_lines - last_head
        )),
    }
    CaseResult::check(
        problems.is_empty(),
        "cut after a head: exactly the lines up to it proven; unheaded lines appended: not presented as proven",
        if problems.is_empty() {
            seen.join("; ")
        } else {
            problems.join("; ")
        },
    )
}

// =====================================================================================
// GRT-001, GRT-003, GRT-004: what an issuer produces
// =====================================================================================

/// Strict base64url without padding (RFC 4648 §5): `None` for a character outside
/// the alphabet, padding, a length of 1 mod 4, or non-zero unused trailing bits.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    };
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        buffer = (buffer << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    (buffer == 0).then_some(out)
}

/// The claims of a token the issuer produced, after the checks of GRT-001: three
/// segments `v4`, `public`, canonical base64url of `m ‖ sig` with `m` a JSON object
/// carrying the required claims of 12.2 with their types, and a signature under
/// `key` with the implicit assertion of GRT-002. `Err` says what is wrong.
fn token_claims(token: &str, key: &IdentityKey) -> Result<serde_json::Map<String, Value>, String> {
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(format!(
            "{} dot-separated segments (a footer segment, or a malformed token)",
            segments.len()
        ));
    }
    if segments[0] != "v4" || segments[1] != "public" {
        return Err(format!("header {}.{}", segments[0], segments[1]));
    }
    let payload = base64url(segments[2]).ok_or("the payload is not canonical base64url")?;
    if payload.len() < 64 {
        return Err("the payload is shorter than a signature".to_owned());
    }
    let message = &payload[..payload.len() - 64];
    let claims = match serde_json::from_slice::<Value>(message) {
        Ok(Value::Object(claims)) => claims,
        _ => return Err("the message is not a JSON object".to_owned()),
    };
    for claim in ["iss", "sub", "aud", "jti", "exp"] {
        if !claims.get(claim).is_some_and(Value::is_string) {
            return Err(format!("claim {claim} missing or not a string"));
        }
    }
    let tools_ok = claims
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty() && tools.iter().all(Value::is_string));
    if !tools_ok {
        return Err("claim tools missing, empty or not an array of strings".to_owned());
    }
    let signed = crate::peer::pae(&[b"v4.public.", message, b"", b"toolwire/1 grant"]);
    if key.verify(&signed, &payload[payload.len() - 64..]).is_err() {
        return Err("the signature does not verify under the declared issuer key with the implicit assertion \"toolwire/1 grant\"".to_owned());
    }
    Ok(claims)
}

/// A fresh random identity key.
fn random_key() -> IdentityKey {
    Identity::generate(&mut rand_core::OsRng).public_key()
}

/// A root grant for `holder`, then (when `link`) a link below it held by a fresh
/// key: the tokens the issuer produced, with what was asked.
fn issued(issuer: &Issuer, link: bool) -> Result<Vec<(IssueRequest, String)>, CaseResult> {
    let audience = random_key();
    // For a link, the issuer holds the root itself (only the holder may delegate).
    let root = IssueRequest {
        holder: if link { issuer.key } else { random_key() },
        audience,
        tools: vec!["echo".to_owned(), "search".to_owned()],
        ttl: std::time::Duration::from_secs(3600),
        parent: None,
    };
    let token = issuer
        .issue(&root)
        .map_err(|error| CaseResult::check(false, "a root grant", format!("refused: {error}")))?;
    let mut out = vec![(root, token.clone())];
    if link {
        let request = IssueRequest {
            holder: random_key(),
            audience,
            tools: vec!["echo".to_owned()],
            ttl: std::time::Duration::from_secs(1800),
            parent: Some(token),
        };
        let token = issuer.issue(&request).map_err(|error| {
            CaseResult::check(false, "a delegation link", format!("refused: {error}"))
        })?;
        out.push((request, token));
    }
    Ok(out)
}

fn issuer_format(target: &Inputs<'_>, _: &str) -> CaseResult {
    let Some(issuer) = &target.producers.issuer else {
        return CaseResult::skip("needs the grant issuer under test (artifact::Producers::issuer; no command-line form yet)");
    };
    let tokens = match issued(issuer, true) {
        Ok(tokens) => tokens,
        Err(result) => return result,
    };
    let mut problems = Vec::new();
    for (request, token) in &tokens {
        let what = if request.parent.is_some() {
            "link"
        } else {
            "root"
        };
        match token_claims(token, &issuer.key) {
            Err(error) => problems.push(format!("{what}: {error}")),
            Ok(claims) => {
                let tools: Vec<&str> = claims["tools"]
                    .as_array()
                    .map(|tools| tools.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if claims["sub"] != request.holder.to_string()
                    || claims["aud"] != request.audience.to_string()
                    || tools != request.tools
                {
                    problems.push(format!("{what}: sub, aud or tools differ from the request"));
                }
                if claims.get("parent").and_then(Value::as_str) != request.parent.as_deref() {
                    problems.push(format!("{what}: parent differs from the request"));
                }
            }
        }
    }
    CaseResult::check(
        problems.is_empty(),
        "v4.public.<payload> without footer; message a JSON object with the claims of 12.2 as requested; signature with \"toolwire/1 grant\"",
        if problems.is_empty() {
            format!(
                "root ({} bytes) and link ({} bytes) well-formed",
                tokens[0].1.len(),
                tokens[1].1.len()
            )
        } else {
            problems.join("; ")
        },
    )
}

fn issuer_iss(target: &Inputs<'_>, _: &str) -> CaseResult {
    let Some(issuer) = &target.producers.issuer else {
        return CaseResult::skip("needs the grant issuer under test (artifact::Producers::issuer; no command-line form yet)");
    };
    let tokens = match issued(issuer, true) {
        Ok(tokens) => tokens,
        Err(result) => return result,
    };
    let expected = issuer.key.to_string();
    let mut observed = Vec::new();
    let mut ok = true;
    for (request, token) in &tokens {
        let what = if request.parent.is_some() {
            "link"
        } else {
            "root"
        };
        let payload = token
            .split('.')
            .nth(2)
            .and_then(base64url)
            .filter(|payload| payload.len() >= 64);
        let iss = payload
            .and_then(|payload| {
                serde_json::from_slice::<Value>(&payload[..payload.len() - 64]).ok()
            })
            .and_then(|claims| claims["iss"].as_str().map(str::to_owned));
        ok &= iss.as_deref() == Some(expected.as_str());
        observed.push(format!("{what}: iss {iss:?}"));
    }
    CaseResult::check(
        ok,
        format!("iss {expected:?} in root and link"),
        observed.join("; "),
    )
}

fn issuer_size(target: &Inputs<'_>, _: &str) -> CaseResult {
    let Some(issuer) = &target.producers.issuer else {
        return CaseResult::skip("needs the grant issuer under test (artifact::Producers::issuer; no command-line form yet)");
    };
    const LIMIT: usize = 8192;
    let audience = random_key();
    let long_tools = |count: usize, prefix: &str| -> Vec<String> {
        (0..count)
            .map(|i| format!("{prefix}-{i:03}-{}", "t".repeat(90)))
            .collect()
    };
    // 1. Too many long tool names for one token: ~70 × 100 bytes of claims.
    let wide = IssueRequest {
        holder: random_key(),
        audience,
        tools: long_tools(70, "wide"),
        ttl: std::time::Duration::from_secs(3600),
        parent: None,
    };
    // 2. A root that fits (~45 tools, about 6 KB as a token), held by the issuer, and
    // a link below it: the embedded parent makes the link too long.
    let parent_request = IssueRequest {
        holder: issuer.key,
        audience,
        tools: long_tools(45, "deep"),
        ttl: std::time::Duration::from_secs(3600),
        parent: None,
    };
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    match issuer.issue(&wide) {
        Err(error) => seen.push(format!("70 long tools: refused ({error})")),
        Ok(token) if token.len() > LIMIT => problems.push(format!(
            "70 long tools: issued a {}-byte token",
            token.len()
        )),
        Ok(token) => problems.push(format!(
            "70 long tools: issued a {}-byte token that cannot hold the tools asked for",
            token.len()
        )),
    }
    match issuer.issue(&parent_request) {
        Err(error) => {
            return CaseResult::harness_error(format!(
                "the issuer refused a root of about 6 KB: {error}"
            ))
        }
        Ok(parent) if parent.len() > LIMIT => problems.push(format!(
            "45 long tools: issued a {}-byte token",
            parent.len()
        )),
        Ok(parent) => {
            let parent_len = parent.len();
            let link = IssueRequest {
                holder: random_key(),
                audience,
                tools: vec![parent_request.tools[0].clone()],
                ttl: std::time::Duration::from_secs(1800),
                parent: Some(parent),
            };
            match issuer.issue(&link) {
                Err(error) => seen.push(format!(
                    "link below a {parent_len}-byte parent: refused ({error})"
                )),
                Ok(token) => problems.push(format!(
                    "link below a {parent_len}-byte parent: issued a {}-byte token",
                    token.len()
                )),
            }
        }
    }
    CaseResult::check(
        problems.is_empty(),
        "both requests refused: no token over 8192 bytes, parents counted",
        if problems.is_empty() {
            seen.join("; ")
        } else {
            problems.join("; ")
        },
    )
}

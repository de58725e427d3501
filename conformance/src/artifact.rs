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
use std::time::Instant;
use toolwire_protocol::audit::{verify_log, AuditErrorKind};
use toolwire_protocol::IdentityKey;

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
pub type ArtifactCaseFn = fn(&ArtifactTarget, &str) -> CaseResult;

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
            id: "aud.no-secrets",
            clauses: &["AUD-011"],
            description: "No secret key of the run and no grant token appears in the log.",
            run: no_secrets,
        },
    ]
}

/// Runs every artifact case against `target`.
pub fn run(target: &ArtifactTarget) -> Report {
    let mut report = Report::new("artifacts");
    let text = target
        .audit_log
        .as_ref()
        .map(|path| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display())));
    for case in cases() {
        let started = Instant::now();
        let result = match &text {
            _ if case.id.starts_with("evt.") => (case.run)(target, ""),
            None => CaseResult::skip("needs the server's audit log (--audit-log)"),
            Some(Err(error)) => CaseResult::harness_error(error.clone()),
            Some(Ok(text)) => (case.run)(target, text),
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

fn log_verifies(target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn call_entries(_target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn head_at_shutdown(target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn verifier_detects_tampering(target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn no_secrets(target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn key_text(target: &ArtifactTarget, text: &str) -> CaseResult {
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

fn events_without_secrets(target: &ArtifactTarget, _log: &str) -> CaseResult {
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

//! The demo's last act: the tool server shuts down gracefully (calls in flight
//! answered, connections closed with GOING_AWAY, a final signed head), its audit log
//! is verified with only the server's public key, and copies with one change each
//! are rejected at the right line.

use super::World;
use crate::audit::{verify_bytes, Verdict};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toolwire_server::AuditOptions;

/// The audit log's name in the demo's scratch folder.
pub(crate) const AUDIT_FILE: &str = "audit.jsonl";

/// How long calls in flight may run on once the shutdown begins.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The demo server's audit options: a head every 16 entries, so that the log shows
/// periodic heads as well as the final one.
pub(crate) fn options() -> AuditOptions {
    let mut options = AuditOptions::default();
    options.head_every = 16;
    options
}

/// What the graceful shutdown and the audit checks showed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditRecord {
    /// Where the log was kept (a copy, with `--audit-log`; otherwise removed at exit).
    pub(crate) file: String,
    /// The shutdown completed and completed the log.
    pub(crate) shutdown: bool,
    /// Calls still running at the shutdown deadline (answered UNAVAILABLE).
    pub(crate) interrupted_calls: u64,
    /// The whole log verified under the server key.
    pub(crate) verified: bool,
    pub(crate) entries: usize,
    pub(crate) calls: usize,
    pub(crate) heads: usize,
    pub(crate) unsigned_tail: usize,
    pub(crate) signatures_verified: usize,
    pub(crate) signatures_unchecked: usize,
    /// What went wrong, when something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Altered copies, each of which must be rejected at the expected line.
    pub(crate) tampered: Vec<TamperRecord>,
    /// Shut down cleanly, verified, every signature checked, no unsigned tail, and
    /// every altered copy rejected as expected.
    pub(crate) ok: bool,
}

/// One altered copy of the log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TamperRecord {
    pub(crate) name: String,
    pub(crate) expected: String,
    pub(crate) observed: String,
    pub(crate) rejected: bool,
}

/// Shuts the demo server down, verifies its log, tampers with copies; prints the
/// rows when `print`; keeps a copy of the log at `keep` when given.
pub(crate) async fn finish(world: &World, print: bool, keep: Option<&Path>) -> AuditRecord {
    let path = world.scratch.dir.join(AUDIT_FILE);
    let mut record = AuditRecord {
        file: path.display().to_string(),
        shutdown: false,
        interrupted_calls: 0,
        verified: false,
        entries: 0,
        calls: 0,
        heads: 0,
        unsigned_tail: 0,
        signatures_verified: 0,
        signatures_unchecked: 0,
        error: None,
        tampered: Vec::new(),
        ok: false,
    };
    match world.server.shutdown(SHUTDOWN_DEADLINE).await {
        Ok(report) => {
            record.shutdown = true;
            record.interrupted_calls = report.interrupted_calls;
        }
        Err(error) => record.error = Some(format!("shutdown: {error}")),
    }
    if print {
        let observed = if record.shutdown {
            "close 1001 GOING_AWAY, head signed"
        } else {
            "did not complete"
        };
        let verdict = if record.shutdown { "ok" } else { "FAILED" };
        row(
            "graceful shutdown (calls in flight answered)",
            observed,
            verdict,
        );
    }
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) => {
            record.error = Some(format!("cannot read {}: {error}", path.display()));
            return record;
        }
    };
    match verify_bytes(&path, &bytes, &world.server_key) {
        Verdict::Verified(summary) => {
            record.verified = true;
            record.entries = summary.entries;
            record.calls = summary.calls;
            record.heads = summary.heads;
            record.unsigned_tail = summary.unsigned_tail;
            record.signatures_verified = summary.signatures_verified;
            record.signatures_unchecked = summary.signatures_unchecked;
        }
        Verdict::Rejected(rejected) => {
            record.error = Some(format!(
                "the log did not verify: line {}: {}",
                rejected.error.line, rejected.error.kind
            ));
        }
    }
    if print {
        let observed = format!(
            "{} entries, {} heads, {} signatures",
            record.entries, record.heads, record.signatures_verified
        );
        let verdict = if record.verified {
            "verified"
        } else {
            "FAILED"
        };
        row(
            "audit log, checked with the server key only",
            &observed,
            verdict,
        );
    }
    if let Ok(text) = std::str::from_utf8(&bytes) {
        record.tampered = tamper(text, world, print);
    }
    if let Some(keep) = keep {
        match std::fs::copy(&path, keep) {
            Ok(_) => record.file = keep.display().to_string(),
            Err(error) => {
                record.error = Some(format!(
                    "cannot copy the log to {}: {error}",
                    keep.display()
                ))
            }
        }
    }
    record.ok = record.shutdown
        && record.verified
        && record.heads > 0
        && record.unsigned_tail == 0
        && record.signatures_unchecked == 0
        && record.error.is_none()
        && !record.tampered.is_empty()
        && record.tampered.iter().all(|tampered| tampered.rejected);
    record
}

/// Altered copies of the log: one byte of a signed request's arguments (its client
/// signature no longer matches), and one deleted line (the chain breaks).
fn tamper(text: &str, world: &World, print: bool) -> Vec<TamperRecord> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases = Vec::new();
    // The first call whose request signature the log holds, with its arguments.
    let signed = lines.iter().position(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|entry| {
            entry["request"]["sig"].is_string() && entry["request"]["args"].is_string()
        })
    });
    if let Some(index) = signed {
        let mut altered: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
        if let Some(edited) = flip_argument_byte(&altered[index]) {
            altered[index] = edited;
            cases.push((
                format!("tampered copy: 1 byte of the arguments, line {}", index + 1),
                format!("BadRequestSignature at line {}", index + 1),
                altered,
            ));
        }
    }
    // A line in the middle deleted: the line after it no longer chains.
    if lines.len() >= 3 {
        let index = lines.len() / 2;
        let mut altered: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
        altered.remove(index);
        cases.push((
            format!("tampered copy: line {} deleted", index + 1),
            format!("BrokenChain at line {}", index + 1),
            altered,
        ));
    }
    let mut records = Vec::new();
    for (name, expected, altered) in cases {
        let copy: String = altered.iter().map(|line| format!("{line}\n")).collect();
        let observed =
            match verify_bytes(&PathBuf::from("copy"), copy.as_bytes(), &world.server_key) {
                Verdict::Verified(_) => "NOT DETECTED: the copy verified".to_owned(),
                Verdict::Rejected(rejected) => {
                    format!("{} at line {}", rejected.error.kind, rejected.error.line)
                }
            };
        let rejected = observed == expected;
        if print {
            row(
                &name,
                &observed,
                if rejected { "rejected" } else { "FAILED" },
            );
        }
        records.push(TamperRecord {
            name,
            expected,
            observed,
            rejected,
        });
    }
    records
}

/// One row of the section: what, what was observed, the verdict.
fn row(name: &str, observed: &str, verdict: &str) {
    outln!("  {name:<48}  {observed:<36}  {verdict}");
}

/// The line with the second hex digit of its `args` changed.
fn flip_argument_byte(line: &str) -> Option<String> {
    let start = line.find(r#""args":""#)?.checked_add(8)?;
    let digit = line.get(start.checked_add(1)?..start.checked_add(2)?)?;
    let replacement = if digit == "0" { "1" } else { "0" };
    let mut edited = line.to_owned();
    edited.replace_range(start + 1..start + 2, replacement);
    Some(edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_argument_digit_changes() {
        let line = r#"{"request":{"sig":"ab","args":"91a6"}}"#;
        assert_eq!(
            flip_argument_byte(line).as_deref(),
            Some(r#"{"request":{"sig":"ab","args":"90a6"}}"#)
        );
        assert_eq!(flip_argument_byte(r#"{"args":null}"#), None);
    }
}

//! `toolwire audit verify`: checks a server's audit log with only the server's public
//! key (AUD-009): the hash chain, every head signature and every request and
//! response signature whose bytes the log holds. Names the first bad line.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use serde::Serialize;
use std::path::{Path, PathBuf};
use toolwire_protocol::audit::{verify_log, AuditError, AuditErrorKind, AuditSummary};
use toolwire_protocol::IdentityKey;

/// `toolwire audit …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Verifies an audit log: the hash chain, the signed heads, and the client's
    /// request and the server's response signatures it holds. Exit status 0 when the
    /// whole file verifies, 1 when a line does not (the first bad line is named).
    #[command(
        after_help = "Example:\n  toolwire audit verify server-audit.jsonl --server-key <server key>\n\nEntries after the last signed head (the unsigned tail) are reported but do not fail the check: they are chained, not signed, so whoever can write the file could still rewrite them."
    )]
    Verify(VerifyArgs),
}

/// Arguments of `toolwire audit verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The audit log (JSON Lines) a server wrote with `--audit-log`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The server's identity key: heads and responses must be signed by it. (A key
    /// may begin with `-`; it is taken as the value all the same.)
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    server_key: IdentityKey,
    /// Print one JSON document: {"file", "ok", "entries", "calls", "heads",
    /// "last_signed_seq", "unsigned_tail", "signatures_verified",
    /// "signatures_unchecked"} or {"file", "ok": false, "error": {"line", "kind",
    /// "message"}}.
    #[arg(long)]
    json: bool,
}

/// The outcome of a verification, as printed with `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Verdict {
    /// Every line verified.
    Verified(Verified),
    /// A line did not.
    Rejected(Rejected),
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Verified {
    pub(crate) file: String,
    pub(crate) ok: bool,
    pub(crate) entries: usize,
    pub(crate) calls: usize,
    pub(crate) heads: usize,
    pub(crate) last_signed_seq: Option<u64>,
    pub(crate) unsigned_tail: usize,
    pub(crate) signatures_verified: usize,
    pub(crate) signatures_unchecked: usize,
}

/// A log that did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Rejected {
    pub(crate) file: String,
    pub(crate) ok: bool,
    pub(crate) error: LineError,
}

/// The first bad line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct LineError {
    /// 1-based.
    pub(crate) line: usize,
    /// `BrokenChain`, `BadRequestSignature`, … (AUD-009).
    pub(crate) kind: String,
    pub(crate) message: String,
}

/// Runs `toolwire audit …`; `Ok(true)` when the log verified.
pub(crate) fn run(command: AuditCommand) -> CliResult<bool> {
    match command {
        AuditCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> CliResult<bool> {
    let bytes = std::fs::read(&args.file)
        .map_err(|error| CliError::new(format!("cannot read {}: {error}", args.file.display())))?;
    let verdict = verify_bytes(&args.file, &bytes, &args.server_key);
    if args.json {
        let document = serde_json::to_string_pretty(&verdict)
            .map_err(|error| CliError::new(format!("cannot encode the result: {error}")))?;
        outln!("{document}");
    } else {
        print(&verdict);
    }
    Ok(matches!(verdict, Verdict::Verified(_)))
}

/// Verifies a log's bytes (a log is UTF-8; the first line that is not counts as
/// malformed, unless an earlier line fails first).
pub(crate) fn verify_bytes(file: &Path, bytes: &[u8], server_key: &IdentityKey) -> Verdict {
    let file = file.display().to_string();
    let outcome = match std::str::from_utf8(bytes) {
        Ok(text) => verify_log(text, server_key),
        Err(error) => {
            let valid = bytes.get(..error.valid_up_to()).unwrap_or_default();
            let complete = valid
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |index| index.saturating_add(1));
            let prefix =
                std::str::from_utf8(valid.get(..complete).unwrap_or_default()).unwrap_or_default();
            verify_log(prefix, server_key).and_then(|_| {
                Err(AuditError {
                    line: prefix.lines().count().saturating_add(1),
                    kind: AuditErrorKind::Malformed,
                })
            })
        }
    };
    match outcome {
        Ok(summary) => Verdict::Verified(verified(file, &summary)),
        Err(error) => Verdict::Rejected(Rejected {
            file,
            ok: false,
            error: LineError {
                line: error.line,
                kind: format!("{:?}", error.kind),
                message: error.kind.to_string(),
            },
        }),
    }
}

fn verified(file: String, summary: &AuditSummary) -> Verified {
    Verified {
        file,
        ok: true,
        entries: summary.entries,
        calls: summary.calls,
        heads: summary.heads,
        last_signed_seq: summary.last_signed_seq,
        unsigned_tail: summary.unsigned_tail,
        signatures_verified: summary.signatures_verified,
        signatures_unchecked: summary.signatures_unchecked,
    }
}

fn print(verdict: &Verdict) {
    match verdict {
        Verdict::Verified(summary) => {
            outln!("audit log {}: verified", summary.file);
            outln!(
                "  entries        {} ({} calls, {} signed heads)",
                summary.entries,
                summary.calls,
                summary.heads
            );
            outln!(
                "  signatures     {} verified, {} unchecked (bytes not in the log)",
                summary.signatures_verified,
                summary.signatures_unchecked
            );
            if summary.unsigned_tail == 0 {
                outln!("  unsigned tail  none: the last head covers every entry");
            } else {
                outln!(
                    "  unsigned tail  {} entries after the last head: chained but not signed yet; whoever can write the file could still rewrite them",
                    summary.unsigned_tail
                );
            }
        }
        Verdict::Rejected(rejected) => {
            let error = &rejected.error;
            outln!(
                "audit log {}: REJECTED at line {}: {} ({})",
                rejected.file,
                error.line,
                error.kind,
                error.message
            );
            outln!("  {}", hint(&error.kind));
        }
    }
}

/// What a failure kind means for the reader (AUD-009).
fn hint(kind: &str) -> &'static str {
    match kind {
        "BrokenChain" => "this line, the one before it, or lines between them were changed, removed, inserted or reordered",
        "BadSequence" => "sequence numbers skip or repeat: entries were removed, inserted or renumbered",
        "BadRequestSignature" => "the request evidence does not match the client's signature: arguments, tool, id or grant id were changed",
        "BadResponseSignature" => "the response evidence does not match the server's signature: the result or what it answers was changed, or --server-key is not this server's key",
        "BadHeadSignature" => "this head is not signed by the given server key (wrong key, or a forged head)",
        "TornLastLine" => "the last line is incomplete: the writer stopped mid-write (a crash), which is not tampering",
        _ => "the line is not a well-formed audit entry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwire_protocol::audit::AuditChain;
    use toolwire_protocol::Identity;

    fn heads(count: usize) -> (String, IdentityKey) {
        let server = Identity::from_seed(&[0x53; 32]);
        let mut chain = AuditChain::new(server.clone());
        let mut log = String::new();
        for second in 0..count {
            let time = format!("2026-01-01T00:00:{second:02}Z");
            log.push_str(&chain.head_entry(&time).expect("head"));
            log.push('\n');
        }
        (log, server.public_key())
    }

    #[test]
    fn a_good_log_is_summarised() {
        let (log, key) = heads(3);
        match verify_bytes(Path::new("log"), log.as_bytes(), &key) {
            Verdict::Verified(summary) => {
                assert_eq!(
                    (summary.entries, summary.heads, summary.unsigned_tail),
                    (3, 3, 0)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_is_malformed_at_its_line() {
        let (log, key) = heads(2);
        let mut bytes = log.into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        match verify_bytes(Path::new("log"), &bytes, &key) {
            Verdict::Rejected(rejected) => {
                assert_eq!(rejected.error.line, 3);
                assert_eq!(rejected.error.kind, "Malformed");
            }
            other => panic!("{other:?}"),
        }
    }
}

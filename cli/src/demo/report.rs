//! What the demo observed, and how it is shown: an aligned table for people, one JSON
//! document for programs.

use serde::Serialize;
use serde_json::Value;
use std::fmt;
use toolwire_protocol::{CloseCode, ErrorCode};

/// How an attempt ended, as seen by the attacker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The HTTP upgrade was answered with this status.
    Http(u16),
    /// The connection was closed with this code.
    Close(CloseCode),
    /// The call was answered with this RPC error.
    Rpc(ErrorCode),
    /// Calls were answered with this RPC error, then the connection closed with this code.
    RpcThenClose(ErrorCode, CloseCode),
    /// The client refused a tool whose signed definition changed.
    ManifestChanged,
    /// The attempt was NOT refused.
    Accepted(String),
    /// Something else happened (timeout, unexpected error).
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let close = |f: &mut fmt::Formatter<'_>, code: CloseCode| match code.name() {
            Some(name) => write!(f, "close {} {name}", code.0),
            None => write!(f, "close {}", code.0),
        };
        let rpc = |f: &mut fmt::Formatter<'_>, code: ErrorCode| match code.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{code}"),
        };
        match self {
            Outcome::Http(status) => write!(f, "HTTP {status}"),
            Outcome::Close(code) => close(f, *code),
            Outcome::Rpc(code) => rpc(f, *code),
            Outcome::RpcThenClose(error, code) => {
                rpc(f, *error)?;
                write!(f, ", close {}", code.0)
            }
            Outcome::ManifestChanged => f.write_str("MANIFEST_CHANGED"),
            Outcome::Accepted(what) => write!(f, "NOT REFUSED: {what}"),
            Outcome::Other(what) => f.write_str(what),
        }
    }
}

/// One legitimate call.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallRecord {
    /// What the call shows.
    pub(crate) name: String,
    pub(crate) tool: String,
    pub(crate) args: Value,
    pub(crate) ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<Value>,
    /// Streamed items, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) items: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// One attack and how it ended.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AttackRecord {
    pub(crate) name: String,
    /// What the attacker did, in a sentence.
    pub(crate) attempt: String,
    pub(crate) expected: String,
    pub(crate) observed: String,
    /// True only when refused with exactly the expected code.
    pub(crate) refused: bool,
    /// Extra facts (counts, messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// An attack that could not be played with this build.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SkippedRecord {
    pub(crate) name: String,
    pub(crate) reason: String,
}

/// Everything the demo did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) server: ServerInfo,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) attacks: Vec<AttackRecord>,
    /// Attacks not played (not counted as failures).
    pub(crate) skipped: Vec<SkippedRecord>,
    /// The graceful shutdown and the audit log checks.
    pub(crate) audit: super::audit::AuditRecord,
    /// Every call succeeded, every played attack was refused with its code, and the
    /// audit log checks passed.
    pub(crate) ok: bool,
}

/// The embedded tool server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerInfo {
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) fingerprint: String,
}

/// Renders a JSON value on one line, cut to `max` characters.
pub(crate) fn short_json(value: &Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        text
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Column widths of the attack table.
pub(crate) struct Table {
    pub(crate) name: usize,
    pub(crate) code: usize,
}

impl Table {
    pub(crate) fn header(&self) -> String {
        self.row("attack", "expected", "observed", "verdict")
    }

    pub(crate) fn rule(&self) -> String {
        self.row(
            &"-".repeat(self.name),
            &"-".repeat(self.code),
            &"-".repeat(self.code),
            "-------",
        )
    }

    pub(crate) fn row(&self, name: &str, expected: &str, observed: &str, verdict: &str) -> String {
        format!(
            "  {name:<name_width$}  {expected:<code_width$}  {observed:<code_width$}  {verdict}",
            name_width = self.name,
            code_width = self.code
        )
        .trim_end()
        .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_print_their_codes() {
        assert_eq!(Outcome::Http(403).to_string(), "HTTP 403");
        assert_eq!(
            Outcome::Close(CloseCode::AUTH_FAILED).to_string(),
            "close 4001 AUTH_FAILED"
        );
        assert_eq!(
            Outcome::Rpc(ErrorCode::PERMISSION_DENIED).to_string(),
            "PERMISSION_DENIED"
        );
        assert_eq!(
            Outcome::RpcThenClose(ErrorCode::RESOURCE_EXHAUSTED, CloseCode::RATE_LIMITED)
                .to_string(),
            "RESOURCE_EXHAUSTED, close 4008"
        );
        assert_eq!(Outcome::Close(CloseCode(4999)).to_string(), "close 4999");
    }

    #[test]
    fn long_json_is_cut() {
        let value = serde_json::json!({"text": "x".repeat(100)});
        let short = short_json(&value, 20);
        assert_eq!(short.chars().count(), 20);
        assert!(short.ends_with('…'));
    }
}

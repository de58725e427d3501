//! The clauses of `spec/PROTOCOL.md` and the trace from MUST clauses to cases.
//!
//! A clause is a list item or paragraph beginning `**XXX-NNN** (KEYWORD): `
//! (`spec/README.md`). Clauses listed in "Appendix C. Not yet implemented" are
//! *pending*: a case checking only pending clauses reports UNIMPLEMENTED instead of
//! FAIL.

use std::collections::{BTreeMap, BTreeSet};

/// The specification this suite was built with (embedded at compile time, so the
/// `toolwire` binary can trace without a checkout).
pub const PROTOCOL_MD: &str = include_str!("../../spec/PROTOCOL.md");

/// One clause of the specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// `REC-004`.
    pub id: String,
    /// `MUST`, `MUST NOT`, `SHOULD`, `SHOULD NOT` or `MAY`.
    pub keyword: String,
    /// The clause text after the keyword.
    pub text: String,
}

impl Clause {
    /// MUST or MUST NOT: the clauses the trace gate covers.
    pub fn is_must(&self) -> bool {
        self.keyword.starts_with("MUST")
    }
}

/// The parsed specification.
#[derive(Debug, Clone)]
pub struct Spec {
    clauses: BTreeMap<String, Clause>,
    order: Vec<String>,
    pending: BTreeSet<String>,
}

impl Spec {
    /// The embedded `spec/PROTOCOL.md`.
    pub fn embedded() -> Self {
        Self::parse(PROTOCOL_MD)
    }

    /// Reads and parses a `PROTOCOL.md` from disk (for a checkout newer than the
    /// embedded copy).
    ///
    /// # Errors
    /// The I/O error.
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses the text of a `PROTOCOL.md`.
    pub fn parse(text: &str) -> Self {
        let mut clauses = BTreeMap::new();
        let mut order = Vec::new();
        let mut pending = BTreeSet::new();
        let mut in_appendix_c = false;
        for line in text.lines() {
            if line.starts_with("## ") {
                in_appendix_c = line.starts_with("## Appendix C.");
            }
            if in_appendix_c {
                pending.extend(clause_ids_in(line));
                continue;
            }
            let body = line.trim_start().trim_start_matches("- ");
            let Some(rest) = body.strip_prefix("**") else {
                continue;
            };
            let Some((id, rest)) = rest.split_once("** (") else {
                continue;
            };
            let Some((keyword, text)) = rest.split_once("):") else {
                continue;
            };
            if !is_clause_id(id) {
                continue;
            }
            order.push(id.to_owned());
            clauses.insert(
                id.to_owned(),
                Clause {
                    id: id.to_owned(),
                    keyword: keyword.to_owned(),
                    text: text.trim().to_owned(),
                },
            );
        }
        Self {
            clauses,
            order,
            pending,
        }
    }

    /// The clause with this id.
    pub fn clause(&self, id: &str) -> Option<&Clause> {
        self.clauses.get(id)
    }

    /// Every clause, in document order.
    pub fn clauses(&self) -> impl Iterator<Item = &Clause> {
        self.order.iter().filter_map(|id| self.clauses.get(id))
    }

    /// Whether Appendix C lists the clause as not yet implemented.
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains(id)
    }
}

fn is_clause_id(id: &str) -> bool {
    let Some((prefix, number)) = id.split_once('-') else {
        return false;
    };
    !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_uppercase())
        && number.len() == 3
        && number.bytes().all(|b| b.is_ascii_digit())
}

fn clause_ids_in(line: &str) -> Vec<String> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| is_clause_id(word))
        .map(str::to_owned)
        .collect()
}

/// How far the cases cover the MUST clauses of the specification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    /// MUST and MUST NOT clauses in the specification.
    pub must_total: usize,
    /// Those named by at least one case.
    pub must_covered: usize,
    /// MUST clauses no case names, in document order.
    pub uncovered: Vec<String>,
    /// Clause ids named by a case that the specification does not define:
    /// `(case id, clause id)`. Always a bug of the suite.
    pub unknown: Vec<(String, String)>,
}

impl Coverage {
    /// One line: `cases cover 45 of 281 MUST clauses`.
    pub fn summary(&self) -> String {
        format!(
            "cases cover {} of {} MUST clauses ({} uncovered)",
            self.must_covered,
            self.must_total,
            self.uncovered.len()
        )
    }
}

/// Traces the MUST clauses of `spec` to `cases` (`(case id, clause ids)`).
pub fn trace<'a>(
    spec: &Spec,
    cases: impl IntoIterator<Item = (&'a str, &'a [&'a str])>,
) -> Coverage {
    let mut named = BTreeSet::new();
    let mut unknown = Vec::new();
    for (case, clauses) in cases {
        for clause in clauses {
            if spec.clause(clause).is_none() {
                unknown.push((case.to_owned(), (*clause).to_owned()));
            }
            named.insert(*clause);
        }
    }
    let musts: Vec<&Clause> = spec.clauses().filter(|c| c.is_must()).collect();
    let uncovered: Vec<String> = musts
        .iter()
        .filter(|c| !named.contains(c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    Coverage {
        must_total: musts.len(),
        must_covered: musts.len() - uncovered.len(),
        uncovered,
        unknown,
    }
}

/// Every case of the suite as `(mode, id, clauses)`: server mode, client mode,
/// artifact checks and vectors.
pub fn suite_cases() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let mut out = Vec::new();
    out.extend(
        crate::cases::server_cases()
            .iter()
            .map(|c| ("server", c.id, c.clauses)),
    );
    out.extend(
        crate::cases::client_cases()
            .iter()
            .map(|c| ("client", c.id, c.clauses)),
    );
    out.extend(
        crate::artifact::cases()
            .iter()
            .map(|c| ("artifact", c.id, c.clauses)),
    );
    out.extend(
        crate::vectors::cases()
            .iter()
            .map(|c| ("vectors", c.id, c.clauses)),
    );
    out
}

/// The trace of every case of this suite (server mode, client mode, artifacts and
/// vectors) against the embedded specification.
pub fn suite_coverage() -> Coverage {
    let spec = Spec::embedded();
    let cases = suite_cases();
    trace(&spec, cases.iter().map(|(_, id, clauses)| (*id, *clauses)))
}

/// MUST clauses known to have no case yet (`conformance/uncovered.txt`): one clause
/// id a line, optionally followed by a reason; `#` starts a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// `(clause id, reason)` in file order.
    pub entries: Vec<(String, String)>,
}

impl Allowlist {
    /// Parses the text of an allowlist file.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|line| !line.is_empty())
            .map(|line| match line.split_once(char::is_whitespace) {
                Some((id, reason)) => (id.to_owned(), reason.trim().to_owned()),
                None => (line.to_owned(), String::new()),
            })
            .collect();
        Self { entries }
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// The I/O error.
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    fn contains(&self, id: &str) -> bool {
        self.entries.iter().any(|(entry, _)| entry == id)
    }
}

/// The verdict of the trace gate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gate {
    /// MUST clauses that no case names, that Appendix C does not list and that the
    /// allowlist does not excuse: each fails the gate.
    pub uncovered: Vec<String>,
    /// Allowlist entries whose clause a case names now, or that are not MUST clauses
    /// of the specification (or are in Appendix C): each fails the gate until removed,
    /// so the allowlist only shrinks.
    pub stale: Vec<String>,
    /// MUST clauses excused by the allowlist.
    pub allowed: Vec<String>,
    /// MUST clauses listed in Appendix C (not yet implemented) without a case.
    pub pending: Vec<String>,
    /// The coverage the gate judged.
    pub coverage: Coverage,
}

impl Gate {
    /// No uncovered clause, no stale entry, no unknown clause id.
    pub fn passed(&self) -> bool {
        self.uncovered.is_empty() && self.stale.is_empty() && self.coverage.unknown.is_empty()
    }

    /// One line.
    pub fn summary(&self) -> String {
        format!(
            "trace gate {}: {} of {} MUST clauses covered; {} pending (Appendix C), {} allowed uncovered, {} uncovered, {} stale allowlist entries",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.coverage.must_covered,
            self.coverage.must_total,
            self.pending.len(),
            self.allowed.len(),
            self.uncovered.len(),
            self.stale.len()
        )
    }
}

/// The trace gate: every MUST clause of the specification has a case, unless
/// Appendix C lists it or `allowlist` excuses it.
pub fn gate(coverage: &Coverage, allowlist: &Allowlist) -> Gate {
    let spec = Spec::embedded();
    let mut uncovered = Vec::new();
    let mut allowed = Vec::new();
    let mut pending = Vec::new();
    for id in &coverage.uncovered {
        if spec.is_pending(id) {
            pending.push(id.clone());
        } else if allowlist.contains(id) {
            allowed.push(id.clone());
        } else {
            uncovered.push(id.clone());
        }
    }
    let stale = allowlist
        .entries
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !allowed.contains(id))
        .cloned()
        .collect();
    Gate {
        uncovered,
        stale,
        allowed,
        pending,
        coverage: coverage.clone(),
    }
}

/// Human-readable trace: every case with its clauses, then the coverage and the
/// uncovered MUST clauses.
pub fn trace_text() -> String {
    use std::fmt::Write as _;
    let spec = Spec::embedded();
    let mut out = String::new();
    for (mode, id, clauses) in suite_cases() {
        let _ = writeln!(out, "{mode:8} {id:40} {}", clauses.join(", "));
    }
    let coverage = suite_coverage();
    let _ = writeln!(out, "\n{}", coverage.summary());
    for id in &coverage.uncovered {
        let pending = if spec.is_pending(id) {
            " (Appendix C)"
        } else {
            ""
        };
        let _ = writeln!(out, "  uncovered: {id}{pending}");
    }
    for (case, clause) in &coverage.unknown {
        let _ = writeln!(out, "  unknown clause {clause} named by {case}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_embedded_specification() {
        let spec = Spec::embedded();
        let rec = spec.clause("REC-004").map(|c| c.keyword.as_str());
        assert_eq!(rec, Some("MUST"));
        assert_eq!(
            spec.clause("TRN-011").map(|c| c.keyword.as_str()),
            Some("SHOULD NOT")
        );
        assert!(spec.clauses().filter(|c| c.is_must()).count() > 200);
        assert!(!spec.is_pending("REC-004"));
        let appendix = Spec::parse(
            "## 1. X\n- **XX-001** (MUST): a.\n## Appendix C. Not yet implemented\n- XX-001: later.\n",
        );
        assert!(appendix.is_pending("XX-001"));
        assert!(!appendix.is_pending("XX-002"));
    }
}

//! Reports: per-case and per-clause verdicts as JSON ([`SCHEMA`]), JUnit XML and
//! Markdown, and expected-failure files.
//!
//! An **expected-failures file** lists cases known to FAIL against a target, one a
//! line: the case id, then optionally a reason; `#` starts a comment.
//!
//! ```text
//! # our server runs with envelope signatures switched off (ENV-008)
//! authz.missing-signature   signatures disabled on purpose
//! ```
//!
//! A listed case that FAILs is reported as an expected failure and does not fail the
//! run; a listed case that does not FAIL, or that names no case of the run, is
//! **stale** and fails the run until the entry is removed.

use crate::spec::{Coverage, Spec};
use crate::{CaseResult, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `schema` of `report.json`. A consumer checks it before reading anything else;
/// fields are only ever added under the same schema.
pub const SCHEMA: &str = "toolwire-conformance-report/1";

/// The result of one case in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaseReport {
    /// Case id.
    pub id: String,
    /// `server` (adversarial peer against a live server) or `vectors`.
    pub mode: String,
    /// Clause ids checked.
    pub clauses: Vec<String>,
    /// What the case does.
    pub description: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Expected behaviour.
    pub expected: String,
    /// Observed behaviour.
    pub observed: String,
    /// Further detail.
    pub detail: String,
    /// Wall-clock time of the case, in milliseconds.
    pub duration_ms: u64,
    /// The case FAILed and the expected-failures file lists it.
    pub expected_failure: bool,
}

impl CaseReport {
    /// A case report from a case's metadata and result.
    pub fn new<R>(
        mode: &str,
        case: &crate::Case<R>,
        result: CaseResult,
        duration: std::time::Duration,
    ) -> Self {
        Self {
            id: case.id.to_owned(),
            mode: mode.to_owned(),
            clauses: case.clauses.iter().map(|c| (*c).to_owned()).collect(),
            description: case.description.to_owned(),
            verdict: result.verdict,
            expected: result.expected,
            observed: result.observed,
            detail: result.detail,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            expected_failure: false,
        }
    }

    /// A FAIL not listed as expected, or a HARNESS_ERROR: fails the run.
    pub fn fails_run(&self) -> bool {
        (self.verdict == Verdict::Fail && !self.expected_failure)
            || self.verdict == Verdict::HarnessError
    }
}

/// The combined verdict of one clause over the cases that name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClauseReport {
    /// Clause id.
    pub id: String,
    /// Its keyword (`MUST`, …), empty when the specification does not define it.
    pub keyword: String,
    /// The most severe verdict of its cases (an expected failure counts as FAIL).
    pub verdict: Verdict,
    /// The cases naming it.
    pub cases: Vec<String>,
}

/// Parsed expected-failures file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedFailures {
    /// `(case id, reason)` in file order.
    pub entries: Vec<(String, String)>,
}

impl ExpectedFailures {
    /// Parses the text of an expected-failures file.
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
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }
}

/// A conformance report: the cases run against one target.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was tested (`server ws://127.0.0.1:7700/toolwire`, `vectors spec/vectors`).
    pub target: String,
    /// Every case run, in order.
    pub cases: Vec<CaseReport>,
    /// Expected-failure entries that are stale (`id: why`).
    pub stale_expected_failures: Vec<String>,
}

impl Report {
    /// An empty report for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            cases: Vec::new(),
            stale_expected_failures: Vec::new(),
        }
    }

    /// Appends the cases (and stale entries) of `other`; targets are joined.
    pub fn merge(&mut self, other: Report) {
        if self.target.is_empty() {
            self.target = other.target;
        } else if !other.target.is_empty() {
            self.target = format!("{}; {}", self.target, other.target);
        }
        self.cases.extend(other.cases);
        self.stale_expected_failures
            .extend(other.stale_expected_failures);
    }

    /// Marks the listed cases that FAILed as expected failures and records stale
    /// entries (listed cases that did not FAIL or were not run).
    pub fn apply_expected_failures(&mut self, expected: &ExpectedFailures) {
        for (id, reason) in &expected.entries {
            match self.cases.iter_mut().find(|c| &c.id == id) {
                Some(case) if case.verdict == Verdict::Fail => {
                    case.expected_failure = true;
                    if !reason.is_empty() {
                        case.detail = if case.detail.is_empty() {
                            format!("expected failure: {reason}")
                        } else {
                            format!("{}; expected failure: {reason}", case.detail)
                        };
                    }
                }
                Some(case) => self.stale_expected_failures.push(format!(
                    "{id}: listed as an expected failure, but its verdict is {}",
                    case.verdict
                )),
                None => self.stale_expected_failures.push(format!(
                    "{id}: listed as an expected failure, but no such case ran"
                )),
            }
        }
    }

    /// Number of cases per verdict.
    pub fn counts(&self) -> BTreeMap<Verdict, usize> {
        let mut counts: BTreeMap<Verdict, usize> = Verdict::ALL.iter().map(|v| (*v, 0)).collect();
        for case in &self.cases {
            *counts.entry(case.verdict).or_default() += 1;
        }
        counts
    }

    /// Number of cases with `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.cases.iter().filter(|c| c.verdict == verdict).count()
    }

    /// The cases that fail the run: unexpected FAILs and HARNESS_ERRORs.
    pub fn failures(&self) -> Vec<&CaseReport> {
        self.cases.iter().filter(|c| c.fails_run()).collect()
    }

    /// No unexpected FAIL, no HARNESS_ERROR, no stale expected-failure entry.
    pub fn is_success(&self) -> bool {
        self.failures().is_empty() && self.stale_expected_failures.is_empty()
    }

    /// The case with this id.
    pub fn case(&self, id: &str) -> Option<&CaseReport> {
        self.cases.iter().find(|c| c.id == id)
    }

    /// Per-clause verdicts, in specification order (clauses the specification does
    /// not define last).
    pub fn clauses(&self) -> Vec<ClauseReport> {
        let spec = Spec::embedded();
        let mut by_clause: BTreeMap<&str, (Verdict, Vec<String>)> = BTreeMap::new();
        for case in &self.cases {
            for clause in &case.clauses {
                let entry = by_clause
                    .entry(clause.as_str())
                    .or_insert((Verdict::Skip, Vec::new()));
                if case.verdict.severity() > entry.0.severity() {
                    entry.0 = case.verdict;
                }
                entry.1.push(case.id.clone());
            }
        }
        let mut out: Vec<ClauseReport> = spec
            .clauses()
            .filter_map(|clause| {
                let (verdict, cases) = by_clause.remove(clause.id.as_str())?;
                Some(ClauseReport {
                    id: clause.id.clone(),
                    keyword: clause.keyword.clone(),
                    verdict,
                    cases,
                })
            })
            .collect();
        out.extend(
            by_clause
                .into_iter()
                .map(|(id, (verdict, cases))| ClauseReport {
                    id: id.to_owned(),
                    keyword: String::new(),
                    verdict,
                    cases,
                }),
        );
        out
    }

    /// Coverage of the MUST clauses by the cases of this report.
    pub fn coverage(&self) -> Coverage {
        let clauses: Vec<(String, Vec<&str>)> = self
            .cases
            .iter()
            .map(|c| (c.id.clone(), c.clauses.iter().map(String::as_str).collect()))
            .collect();
        crate::spec::trace(
            &Spec::embedded(),
            clauses.iter().map(|(id, c)| (id.as_str(), c.as_slice())),
        )
    }

    /// One line: `42 cases: 40 PASS, 2 SKIP`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| format!("{n} {v}"))
            .collect();
        let expected = self.cases.iter().filter(|c| c.expected_failure).count();
        let mut line = format!("{} cases: {}", self.cases.len(), parts.join(", "));
        if expected > 0 {
            let _ = write!(line, " ({expected} FAIL expected)");
        }
        if !self.stale_expected_failures.is_empty() {
            let _ = write!(
                line,
                "; {} stale expected-failure entries",
                self.stale_expected_failures.len()
            );
        }
        line
    }

    /// `report.json`: schema [`SCHEMA`].
    pub fn to_json(&self) -> String {
        let counts: BTreeMap<&str, usize> = self
            .counts()
            .into_iter()
            .map(|(v, n)| (v.as_str(), n))
            .collect();
        let document = serde_json::json!({
            "schema": SCHEMA,
            "generator": concat!("toolwire-conformance ", env!("CARGO_PKG_VERSION")),
            "target": self.target,
            "success": self.is_success(),
            "summary": {
                "total": self.cases.len(),
                "verdicts": counts,
                "expected_failures": self.cases.iter().filter(|c| c.expected_failure).count(),
                "failures": self.failures().len(),
            },
            "coverage": self.coverage(),
            "cases": self.cases,
            "clauses": self.clauses(),
            "stale_expected_failures": self.stale_expected_failures,
        });
        serde_json::to_string_pretty(&document).unwrap_or_default()
    }

    /// `junit.xml`: one `<testsuite>` per mode. FAIL is a `<failure>` (an expected
    /// failure is `<skipped>`), HARNESS_ERROR an `<error>`, SKIP and UNIMPLEMENTED
    /// `<skipped>`; PASS, NON_STRICT and INFO pass, with the verdict in
    /// `<system-out>`.
    pub fn to_junit(&self) -> String {
        let mut modes: Vec<&str> = Vec::new();
        for case in &self.cases {
            if !modes.contains(&case.mode.as_str()) {
                modes.push(&case.mode);
            }
        }
        let total_time: u64 = self.cases.iter().map(|c| c.duration_ms).sum();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"toolwire-conformance\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
            self.cases.len(),
            self.cases
                .iter()
                .filter(|c| c.verdict == Verdict::Fail && !c.expected_failure)
                .count(),
            self.count(Verdict::HarnessError),
            self.cases.iter().filter(|c| junit_skipped(c)).count(),
            seconds(total_time),
        );
        for mode in modes {
            let cases: Vec<&CaseReport> = self.cases.iter().filter(|c| c.mode == mode).collect();
            let _ = writeln!(
                out,
                "  <testsuite name=\"toolwire-conformance.{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
                xml(mode),
                cases.len(),
                cases
                    .iter()
                    .filter(|c| c.verdict == Verdict::Fail && !c.expected_failure)
                    .count(),
                cases
                    .iter()
                    .filter(|c| c.verdict == Verdict::HarnessError)
                    .count(),
                cases.iter().filter(|c| junit_skipped(c)).count(),
                seconds(cases.iter().map(|c| c.duration_ms).sum()),
            );
            let _ = writeln!(
                out,
                "    <properties><property name=\"target\" value=\"{}\"/></properties>",
                xml(&self.target)
            );
            for case in cases {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"toolwire.conformance.{}\" name=\"{}\" time=\"{}\">",
                    xml(mode),
                    xml(&case.id),
                    seconds(case.duration_ms)
                );
                let message = format!(
                    "{}: expected {}; observed {}",
                    case.clauses.join(", "),
                    case.expected,
                    case.observed
                );
                match case.verdict {
                    Verdict::Fail if case.expected_failure => {
                        let _ = writeln!(
                            out,
                            "      <skipped message=\"expected failure: {}\"/>",
                            xml(&message)
                        );
                    }
                    Verdict::Fail => {
                        let _ = writeln!(
                            out,
                            "      <failure type=\"FAIL\" message=\"{}\">{}</failure>",
                            xml(&message),
                            xml(&case.detail)
                        );
                    }
                    Verdict::HarnessError => {
                        let _ = writeln!(
                            out,
                            "      <error type=\"HARNESS_ERROR\" message=\"{}\">{}</error>",
                            xml(&case.detail),
                            xml(&message)
                        );
                    }
                    Verdict::Skip | Verdict::Unimplemented => {
                        let _ = writeln!(
                            out,
                            "      <skipped message=\"{}: {}\"/>",
                            case.verdict,
                            xml(&case.detail)
                        );
                    }
                    Verdict::Pass | Verdict::NonStrict | Verdict::Info => {}
                }
                let _ = writeln!(
                    out,
                    "      <system-out>{} [{}] {}; {}</system-out>",
                    case.verdict,
                    xml(&case.clauses.join(", ")),
                    xml(&message),
                    xml(&case.detail)
                );
                out.push_str("    </testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// `report.md`: summary, cases, a per-clause table and the coverage.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# toolwire conformance report\n\n");
        let _ = writeln!(out, "- target: `{}`", md(&self.target));
        let _ = writeln!(out, "- schema: `{SCHEMA}`");
        let _ = writeln!(
            out,
            "- result: **{}** — {}",
            if self.is_success() { "PASS" } else { "FAIL" },
            self.summary()
        );
        let coverage = self.coverage();
        let _ = writeln!(out, "- coverage: {}\n", coverage.summary());

        out.push_str("## Cases\n\n| case | mode | clauses | verdict | expected | observed | detail |\n|---|---|---|---|---|---|---|\n");
        for case in &self.cases {
            let verdict = if case.expected_failure {
                "FAIL (expected)".to_owned()
            } else {
                case.verdict.to_string()
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} | {} |",
                md(&case.id),
                case.mode,
                case.clauses.join(", "),
                verdict,
                md(&case.expected),
                md(&case.observed),
                md(&case.detail)
            );
        }

        out.push_str("\n## Clauses\n\n| clause | keyword | verdict | cases |\n|---|---|---|---|\n");
        for clause in self.clauses() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                clause.id,
                clause.keyword,
                clause.verdict,
                clause
                    .cases
                    .iter()
                    .map(|c| format!("`{}`", md(c)))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }

        if !self.stale_expected_failures.is_empty() {
            out.push_str("\n## Stale expected failures\n\n");
            for entry in &self.stale_expected_failures {
                let _ = writeln!(out, "- {}", md(entry));
            }
        }

        let _ = writeln!(
            out,
            "\n## Coverage\n\n{}.\n\nMUST clauses without a case: {}",
            coverage.summary(),
            if coverage.uncovered.is_empty() {
                "none".to_owned()
            } else {
                coverage.uncovered.join(", ")
            }
        );
        out
    }

    /// Writes `report.json`, `junit.xml` and `report.md` into `dir` (created if
    /// needed) and returns their paths.
    ///
    /// # Errors
    /// The I/O error.
    pub fn write_all(&self, dir: &Path) -> std::io::Result<[PathBuf; 3]> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("report.json");
        let junit = dir.join("junit.xml");
        let markdown = dir.join("report.md");
        std::fs::write(&json, self.to_json())?;
        std::fs::write(&junit, self.to_junit())?;
        std::fs::write(&markdown, self.to_markdown())?;
        Ok([json, junit, markdown])
    }
}

fn junit_skipped(case: &CaseReport) -> bool {
    matches!(case.verdict, Verdict::Skip | Verdict::Unimplemented)
        || (case.verdict == Verdict::Fail && case.expected_failure)
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 forbids.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a Markdown table cell.
fn md(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Case;

    fn report() -> Report {
        let mut report = Report::new("test <target> & \"more\"");
        let case = |id| Case {
            id,
            clauses: &["REC-025", "REC-030"],
            description: "d",
            run: (),
        };
        for (id, verdict) in [
            ("a.pass", Verdict::Pass),
            ("a.fail", Verdict::Fail),
            ("a.skip", Verdict::Skip),
        ] {
            report.cases.push(CaseReport::new(
                "server",
                &case(id),
                CaseResult::new(verdict, "close 4004", "close <1000>", "x|y"),
                std::time::Duration::from_millis(12),
            ));
        }
        report
    }

    #[test]
    fn expected_failures_mark_fails_and_flag_stale_entries() {
        let mut report = report();
        assert!(!report.is_success());
        report.apply_expected_failures(&ExpectedFailures::parse(
            "# comment\na.fail  known\na.pass\nno.such.case # gone\n",
        ));
        assert!(report.case("a.fail").is_some_and(|c| c.expected_failure));
        assert!(report.failures().is_empty());
        assert_eq!(report.stale_expected_failures.len(), 2);
        assert!(!report.is_success());
    }

    #[test]
    fn renders_every_format() {
        let report = report();
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap_or_default();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["summary"]["verdicts"]["FAIL"], 1);
        assert_eq!(json["clauses"][0]["verdict"], "FAIL");
        let junit = report.to_junit();
        assert!(junit.contains("failures=\"1\""));
        assert!(junit.contains("&lt;target&gt; &amp; &quot;more&quot;"));
        let markdown = report.to_markdown();
        assert!(markdown.contains("| REC-025 | MUST | FAIL |"));
        assert!(markdown.contains("x\\|y"));
    }
}

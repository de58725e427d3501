//! # toolwire-conformance
//!
//! The conformance suite of toolwire (DESIGN.md §6, `spec/README.md`), modelled on
//! h2spec (clause-referenced cases), Autobahn|Testsuite (graded verdicts), BoringSSL's
//! BoGo (an adversarial peer with knobs) and Project Wycheproof (JSON vectors).
//!
//! - [`vectors`]: runs every file of `spec/vectors/` against the Rust implementation,
//!   one case per file, failing with the `tcId`s that disagree.
//! - [`peer`]: the adversarial peer, a small second implementation of the wire format
//!   (its own Noise XX through `snow`, its own record layer over ChaCha20-Poly1305)
//!   with knobs for misbehaviour: any header field, replayed, reordered, tampered or
//!   truncated records, text and oversize frames, stalls, forged hellos and envelopes.
//! - [`server`]: server mode; the peer plays the client against a live server
//!   ([`server::run`]), one fresh connection per case.
//! - [`client`]: client mode; the peer plays the server on loopback and runs the
//!   client under test once per case through a shim ([`shim`], BoGo style), as a
//!   command or in process ([`client::run`]).
//! - [`artifact`]: checks of what an implementation produced during the run (the
//!   server's audit log), for clauses no peer can observe on the wire.
//! - [`report`]: [`Report`] with per-case and per-clause verdicts, rendered as JSON
//!   (schema [`report::SCHEMA`]), JUnit XML and Markdown, and expected-failure files
//!   that flag stale entries.
//! - [`spec`]: the clauses of `spec/PROTOCOL.md`, the trace of MUST clauses to
//!   cases ([`spec::trace`]) and the trace gate ([`spec::gate`]): every MUST clause
//!   outside Appendix C has a case, or is listed in `conformance/uncovered.txt`, a
//!   list that only shrinks.
//!
//! Every case names the clause ids it checks and reports what it expected and what it
//! observed (HTTP status, close code, RPC error code, bytes).

#![forbid(unsafe_code)]

pub mod artifact;
pub mod cases;
pub mod client;
pub mod peer;
pub mod report;
pub mod server;
pub mod shim;
pub mod spec;
pub mod vectors;

pub use report::{CaseReport, ExpectedFailures, Report};

use std::fmt;

/// The graded outcome of one case (Autobahn-style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// The implementation did what every checked clause requires.
    Pass,
    /// A SHOULD (or MAY) behaviour differs from the reference; not a failure.
    NonStrict,
    /// Informational: the case observed something worth reporting, nothing to judge.
    Info,
    /// A MUST or MUST NOT clause was violated.
    Fail,
    /// Not applicable to this target or configuration (for example a slow case the
    /// operator disabled, or an option the case needs was not given).
    Skip,
    /// The behaviour is listed in the spec's Appendix C (not yet implemented).
    Unimplemented,
    /// The suite itself could not run the case (network error, timeout of the
    /// harness, a bug in the suite): no judgement on the implementation.
    HarnessError,
}

impl Verdict {
    /// Every verdict, in report order.
    pub const ALL: [Verdict; 7] = [
        Verdict::Pass,
        Verdict::NonStrict,
        Verdict::Info,
        Verdict::Fail,
        Verdict::Skip,
        Verdict::Unimplemented,
        Verdict::HarnessError,
    ];

    /// The upper-case name used in every report format.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::NonStrict => "NON_STRICT",
            Verdict::Info => "INFO",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Unimplemented => "UNIMPLEMENTED",
            Verdict::HarnessError => "HARNESS_ERROR",
        }
    }

    /// Severity used to combine the verdicts of several cases into one per clause:
    /// the most severe wins.
    pub fn severity(self) -> u8 {
        match self {
            Verdict::Skip => 0,
            Verdict::Pass => 1,
            Verdict::Info => 2,
            Verdict::NonStrict => 3,
            Verdict::Unimplemented => 4,
            Verdict::HarnessError => 5,
            Verdict::Fail => 6,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one run of one case found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// What a conforming implementation does (`close 4004`, `HTTP 403`, …).
    pub expected: String,
    /// What the implementation under test did.
    pub observed: String,
    /// The judgement.
    pub verdict: Verdict,
    /// Anything else worth knowing (failing tcIds, elapsed time, the reason of a SKIP).
    pub detail: String,
}

impl CaseResult {
    /// A result with an explicit verdict.
    pub fn new(
        verdict: Verdict,
        expected: impl Into<String>,
        observed: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            expected: expected.into(),
            observed: observed.into(),
            verdict,
            detail: detail.into(),
        }
    }

    /// PASS when `ok`, FAIL otherwise.
    pub fn check(ok: bool, expected: impl Into<String>, observed: impl Into<String>) -> Self {
        let verdict = if ok { Verdict::Pass } else { Verdict::Fail };
        Self::new(verdict, expected, observed, "")
    }

    /// SKIP with its reason.
    pub fn skip(reason: impl Into<String>) -> Self {
        Self::new(Verdict::Skip, "", "", reason)
    }

    /// HARNESS_ERROR with its reason.
    pub fn harness_error(reason: impl Into<String>) -> Self {
        Self::new(Verdict::HarnessError, "", "", reason)
    }

    /// Appends to the detail.
    pub fn with_detail(mut self, detail: impl AsRef<str>) -> Self {
        let detail = detail.as_ref();
        if !detail.is_empty() {
            if !self.detail.is_empty() {
                self.detail.push_str("; ");
            }
            self.detail.push_str(detail);
        }
        self
    }
}

/// One conformance case: a stable id, the clause ids of `spec/PROTOCOL.md` it checks,
/// what it does, and how to run it (`R` depends on the mode: a function of the
/// target for server mode, a function of the vectors directory for the vectors
/// runner).
#[derive(Debug, Clone)]
pub struct Case<R> {
    /// Stable id, `area.what` (`rec.replayed`).
    pub id: &'static str,
    /// The clause ids this case checks.
    pub clauses: &'static [&'static str],
    /// One sentence: what the case sends and what it expects.
    pub description: &'static str,
    /// Runs the case.
    pub run: R,
}

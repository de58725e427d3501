//! The vectors runner: every file of `spec/vectors/` against the Rust
//! implementation (`toolwire-protocol`), one case per file.
//!
//! A file's case checks its Wycheproof envelope (`algorithm`, `schema`, `header`,
//! `notes`, unique `tcId`s, flags with notes, `numberOfTests`), then every test:
//! `valid` inputs are accepted and reproduce every listed output byte for byte,
//! `invalid` ones are refused with the listed close code (and error name),
//! `acceptable` ones behave as `referenceResult` says. The case FAILs listing every
//! `tcId` that disagrees.
//!
//! `handshake.json`, `record.json` and `rekey.json` need the protocol crate's
//! deterministic hooks (fixed ephemeral keys, forced sequence numbers): without this
//! crate's `vectors` feature their cases are SKIPped.

mod check;
#[cfg(feature = "vectors")]
mod hooked;

use crate::report::{CaseReport, Report};
use crate::{Case, CaseResult, Verdict};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Checks one test of a file: `Err` with the reason it disagrees.
pub type Check = fn(&Value, &Value) -> Result<(), String>;

/// How a vectors case runs: the file's checker, or `None` when this build lacks the
/// hooks it needs.
pub type VectorCase = Case<Option<Check>>;

/// The directory of the vector files of this checkout.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

#[cfg(feature = "vectors")]
const HANDSHAKE: Option<Check> = Some(hooked::check_handshake_test);
#[cfg(not(feature = "vectors"))]
const HANDSHAKE: Option<Check> = None;
#[cfg(feature = "vectors")]
const RECORD: Option<Check> = Some(hooked::check_record_file_test);
#[cfg(not(feature = "vectors"))]
const RECORD: Option<Check> = None;
#[cfg(feature = "vectors")]
const REKEY: Option<Check> = Some(hooked::check_rekey_test);
#[cfg(not(feature = "vectors"))]
const REKEY: Option<Check> = None;

/// One case per vector file; the id is `vectors.<file stem>`.
pub fn cases() -> Vec<VectorCase> {
    vec![
        Case {
            id: "vectors.handshake",
            clauses: &[
                "HS-001", "HS-003", "HS-006", "HS-007", "HS-008", "HS-009", "HS-010", "HS-011",
                "HS-013", "HS-014", "HS-015", "HS-018", "HS-019", "HS-024", "HS-025", "HS-026",
                "HS-027", "HS-028", "HS-031", "KS-001", "KS-002", "REC-003",
            ],
            description: "handshake.json: complete transcripts byte for byte (records, hellos, handshake hash, split keys) and every failing handshake with its close code.",
            run: HANDSHAKE,
        },
        Case {
            id: "vectors.record",
            clauses: &[
                "REC-001", "REC-002", "REC-006", "REC-007", "REC-008", "REC-009", "KS-004", "REC-020", "REC-021",
                "REC-022", "REC-023", "REC-024", "REC-025", "REC-026", "REC-027", "REC-028",
                "REC-032",
            ],
            description: "record.json: sealed records reproduced by the sender; tampered, replayed, reordered, truncated and oversize records refused with their codes.",
            run: RECORD,
        },
        Case {
            id: "vectors.replay_window",
            clauses: &["RPL-001", "RPL-002", "RPL-003", "RPL-004", "RPL-005", "RPL-006"],
            description: "replay_window.json: every decision of both window sizes.",
            run: Some(check::check_replay_window_test),
        },
        Case {
            id: "vectors.rekey",
            clauses: &["KS-003", "KEY-003", "KEY-004", "KEY-005"],
            description: "rekey.json: REKEY chains, KEY_UPDATE encodings and rekey sequences with their refusals.",
            run: REKEY,
        },
        Case {
            id: "vectors.envelope",
            clauses: &["ENV-001", "ENV-002", "ENV-006", "ID-004", "ID-005"],
            description: "envelope.json: signing bytes, request hashes and signatures; strict verification refuses small-order keys, S + L and short signatures.",
            run: Some(check::check_envelope_test),
        },
        Case {
            id: "vectors.grant",
            clauses: &[
                "GRT-002", "GRT-007", "GRT-011", "GRT-017", "GRT-018", "GRT-019", "GRT-020", "GRT-021",
                "GRT-022", "GRT-023", "GRT-024", "GRT-025", "GRT-026", "GRT-027", "GRT-028", "GRT-029",
                "GRT-030", "GRT-031", "GRT-032", "GRT-033",
            ],
            description: "grant.json: every grant and chain verifies to its effective rights or fails with its error (the first of rules 1 to 6 violated: chains failing two rules in different tokens check the root-first order of GRT-023).",
            run: Some(check::check_grant_test),
        },
        Case {
            id: "vectors.certificate",
            clauses: &["ID-012", "ID-013", "ID-016"],
            description: "certificate.json: server certificates verify to their operator or fail with the first failing check of ID-013.",
            run: Some(check::check_certificate_test),
        },
        Case {
            id: "vectors.at_most_once",
            clauses: &[
                "AMO-002", "AMO-005", "AMO-007", "AMO-010", "AMO-012", "AMO-013", "AMO-014",
                "AMO-015", "AMO-016", "AMO-019", "AMO-020", "AMO-021", "AMO-022", "AMO-023",
                "AMO-024", "AMO-025", "AMO-026", "AMO-028",
            ],
            description: "at_most_once.json: admission scenarios give the verdicts and answers of section 14.",
            run: Some(check::check_at_most_once_test),
        },
        Case {
            id: "vectors.messages",
            clauses: &[
                "MSG-001", "MSG-002", "MSG-003", "CNV-001", "CNV-002", "CNV-006", "CNV-007", "CNV-008",
                "CNV-009", "CNV-011", "CNV-012", "CNV-013",
            ],
            description: "messages.json: canonical encodings of every kind; invalid encodings refused with PROTOCOL_VIOLATION; lenient ones as the reference.",
            run: Some(check::check_message_test),
        },
    ]
}

/// Runs every vectors case on the files of `dir`.
pub fn run(dir: &Path) -> Report {
    let mut report = Report::new(format!("vectors {}", dir.display()));
    for case in cases() {
        let started = Instant::now();
        let result = run_case(dir, &case);
        report
            .cases
            .push(CaseReport::new("vectors", &case, result, started.elapsed()));
    }
    report
}

fn run_case(dir: &Path, case: &VectorCase) -> CaseResult {
    let file = format!("{}.json", case.id.trim_start_matches("vectors."));
    let Some(check) = case.run else {
        return CaseResult::skip(format!(
            "{file} needs the protocol crate's deterministic hooks: build with the `vectors` feature"
        ));
    };
    let path = dir.join(&file);
    let doc: Value = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(doc) => doc,
        Err(error) => {
            return CaseResult::harness_error(format!("cannot read {}: {error}", path.display()))
        }
    };
    match std::panic::catch_unwind(|| check_file(&file, &doc, check)) {
        Ok(Ok(count)) => CaseResult::new(
            Verdict::Pass,
            format!("all {count} tests of {file} as listed"),
            format!("{count} of {count} tests agree"),
            "",
        ),
        Ok(Err(Failures::Envelope(message))) => CaseResult::new(
            Verdict::HarnessError,
            "a well-formed vector file",
            message,
            "the vector file itself is malformed",
        ),
        Ok(Err(Failures::Tests { count, failing })) => {
            let ids: Vec<String> = failing.iter().map(|(id, _)| id.to_string()).collect();
            let detail: Vec<String> = failing
                .iter()
                .take(20)
                .map(|(id, why)| format!("tcId {id}: {why}"))
                .collect();
            CaseResult::new(
                Verdict::Fail,
                format!("all {count} tests of {file} as listed"),
                format!(
                    "{} of {count} tests disagree: tcId {}",
                    failing.len(),
                    ids.join(", ")
                ),
                detail.join("; "),
            )
        }
        Err(_) => CaseResult::harness_error(format!("the checker of {file} panicked")),
    }
}

enum Failures {
    /// The file's envelope is malformed.
    Envelope(String),
    /// Tests that disagree: `(tcId, reason)`.
    Tests {
        count: u64,
        failing: Vec<(u64, String)>,
    },
}

/// Checks the Wycheproof envelope of a file, then every test with `check`.
fn check_file(name: &str, doc: &Value, check: Check) -> Result<u64, Failures> {
    let envelope = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(Failures::Envelope(format!("{name}: {what}")))
        }
    };
    let area = name.trim_end_matches(".json");
    envelope(
        doc["algorithm"] == format!("toolwire/1 {area}"),
        "algorithm",
    )?;
    envelope(
        doc["schema"] == format!("toolwire_{area}_schema_v1"),
        "schema",
    )?;
    envelope(doc["generatorVersion"] == "1", "generatorVersion")?;
    envelope(
        doc["header"].as_array().is_some_and(|h| !h.is_empty()),
        "header",
    )?;
    let empty = serde_json::Map::new();
    let notes = doc["notes"].as_object().unwrap_or(&empty);
    envelope(!notes.is_empty(), "notes")?;
    let Some(groups) = doc["testGroups"].as_array() else {
        return Err(Failures::Envelope(format!("{name}: testGroups")));
    };
    let mut ids = BTreeSet::new();
    let mut failing = Vec::new();
    let mut count = 0u64;
    for group in groups {
        envelope(group["type"].is_string(), "group without type")?;
        let Some(tests) = group["tests"].as_array() else {
            return Err(Failures::Envelope(format!("{name}: group without tests")));
        };
        for test in tests {
            count += 1;
            let Some(id) = test["tcId"].as_u64() else {
                return Err(Failures::Envelope(format!("{name}: test without tcId")));
            };
            envelope(ids.insert(id), &format!("duplicate tcId {id}"))?;
            let flags = test["flags"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            for flag in flags {
                envelope(
                    flag.as_str().is_some_and(|f| notes.contains_key(f)),
                    &format!("tcId {id}: flag {flag} has no note"),
                )?;
            }
            envelope(
                test["result"]
                    .as_str()
                    .is_some_and(|r| ["valid", "invalid", "acceptable"].contains(&r)),
                &format!("tcId {id}: result"),
            )?;
            if let Err(message) = check(group, test) {
                failing.push((id, format!("({}) {message}", test["comment"])));
            }
        }
    }
    envelope(
        doc["numberOfTests"].as_u64() == Some(count),
        "numberOfTests",
    )?;
    envelope(count > 0, "no tests")?;
    if failing.is_empty() {
        Ok(count)
    } else {
        Err(Failures::Tests { count, failing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_file_has_a_case() {
        let mut files: Vec<String> = std::fs::read_dir(default_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut covered: Vec<String> = cases()
            .iter()
            .map(|c| format!("{}.json", c.id.trim_start_matches("vectors.")))
            .collect();
        covered.sort();
        assert_eq!(files, covered);
    }
}

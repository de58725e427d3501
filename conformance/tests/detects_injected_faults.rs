//! The suite notices broken servers: a reference server built with one deliberately
//! broken check (`toolwire-server`'s `__fault_injection` feature) makes exactly the
//! cases that check it FAIL, with expected and observed results naming the fault,
//! while every other case still passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;
use toolwire_conformance::{server, Report, Verdict};
use toolwire_server::Fault;

async fn suite_against(fault: Fault) -> Report {
    let target =
        common::start(|dangerous| dangerous.inject_fault_for_conformance_testing_only(fault)).await;
    let mut options = common::options();
    options.handshake_stall = None; // the stall case does not depend on these faults
    options.step = Duration::from_secs(2); // how long a FAIL waits for a close that never comes
    let suite = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    );
    tokio::time::timeout(Duration::from_secs(60), suite)
        .await
        .expect("the suite finishes within a minute")
}

fn failing(report: &Report) -> BTreeSet<&str> {
    report
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.id.as_str())
        .collect()
}

fn assert_fails_exactly(report: &Report, expected: &[&str]) {
    for case in report.cases.iter().filter(|c| c.verdict == Verdict::Fail) {
        println!(
            "FAIL {} [{}]: expected {}; observed {}",
            case.id,
            case.clauses.join(", "),
            case.expected,
            case.observed
        );
    }
    assert_eq!(
        failing(report),
        expected.iter().copied().collect(),
        "{}",
        report.summary()
    );
    assert_eq!(
        report.count(Verdict::HarnessError),
        0,
        "{}",
        report.summary()
    );
    assert!(!report.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_origin_check_fails_the_origin_cases() {
    let report = suite_against(Fault::SkipOriginCheck).await;
    assert_fails_exactly(
        &report,
        &[
            "trn.origin-before-subprotocol",
            "trn.origin.foreign",
            "trn.origin.null",
            "trn.origin.with-path",
        ],
    );
    let foreign = report.case("trn.origin.foreign").unwrap();
    assert_eq!(foreign.expected, "HTTP 403");
    assert!(
        foreign.observed.starts_with("HTTP 101"),
        "{}",
        foreign.observed
    );
    assert!(foreign.clauses.iter().any(|c| c == "TRN-006"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_replay_check_fails_the_replay_cases() {
    let report = suite_against(Fault::SkipReplayCheck).await;
    assert_fails_exactly(&report, &["rec.reordered", "rec.replayed", "rec.seq-limit"]);
    let replayed = report.case("rec.replayed").unwrap();
    assert!(replayed.expected.contains("4004"), "{}", replayed.expected);
    assert!(!replayed.observed.contains("4004"), "{}", replayed.observed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_text_frames_fails_the_text_frame_case() {
    let report = suite_against(Fault::AcceptTextFrames).await;
    assert_fails_exactly(&report, &["trn.text-frame"]);
    let text = report.case("trn.text-frame").unwrap();
    assert!(text.observed.contains("still open"), "{}", text.observed);
}

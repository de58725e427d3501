//! The suite notices broken servers: a reference server built with one deliberately
//! broken check (`toolwire-server`'s `__fault_injection` feature) makes exactly the
//! cases that check it FAIL, with expected and observed results naming the fault,
//! while every other case still passes. The same for a client: our client with its
//! request signatures switched off fails exactly the case that checks them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use toolwire_conformance::client::{self, ClientOptions, ClientUnderTest};
use toolwire_conformance::{server, shim, Report, Verdict};
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
            "trn.origin.allowed-case-insensitive",
            "trn.origin.foreign",
            "trn.origin.null",
            "trn.origin.repeated",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_sign_fails_the_baseline_case() {
    // ENV-003: the client under test sends REQUESTs without envelope signatures.
    let unsigned = ClientUnderTest::InProcess(Arc::new(|invocation| {
        Box::pin(async move {
            let builder = toolwire_client::Client::builder()
                .dangerous()
                .disable_request_signatures()
                .done();
            shim::run_with_builder(&invocation, builder).await
        })
    }));
    let mut options = ClientOptions::default();
    options.handshake_stall = None;
    options.keepalive = None;
    options.step = Duration::from_secs(2);
    let report = tokio::time::timeout(Duration::from_secs(120), client::run(unsigned, options))
        .await
        .expect("the client suite finishes within two minutes");
    assert_fails_exactly(&report, &["cli.baseline"]);
    let baseline = report.case("cli.baseline").unwrap();
    assert!(
        baseline.observed.contains("signature does not verify"),
        "{}",
        baseline.observed
    );
    assert!(baseline.clauses.iter().any(|c| c == "ENV-003"));
}

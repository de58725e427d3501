//! Client mode against our own client, in process: the suite plays an adversarial
//! server on loopback and runs `toolwire-client` once per case through the shim of
//! `toolwire_conformance::shim`. Every case PASSes (or is INFO), none FAILs: the
//! client closes with the exact code for every bad record (REC-004..REC-032,
//! TRN-024, TRN-025), refuses bad servers during the handshake (HS-010..HS-017,
//! ID-003), never delivers a forged, unsigned or post-CLOSE result (ENV-007,
//! CLS-005), refuses a changed tool locally (MAN-011) and closes with 4010 on a bad
//! manifest (MAN-006).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use toolwire_conformance::client::{self, ClientOptions, ClientUnderTest};
use toolwire_conformance::Verdict;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_passes_every_client_case() {
    let options = ClientOptions::default();
    let suite = client::run(ClientUnderTest::reference(), options);
    let report = tokio::time::timeout(Duration::from_secs(120), suite)
        .await
        .expect("the client suite finishes within two minutes");
    let problems: Vec<String> = report
        .cases
        .iter()
        .filter(|c| !matches!(c.verdict, Verdict::Pass | Verdict::Info))
        .map(|c| {
            format!(
                "{} {}: expected {}; observed {}; {}",
                c.id, c.verdict, c.expected, c.observed, c.detail
            )
        })
        .collect();
    for case in &report.cases {
        println!("{:6} {:36} {}", case.verdict, case.id, case.observed);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(report.is_success(), "{}", report.summary());
    assert!(report.cases.len() >= 50, "{}", report.summary());
    let forged = report.case("cli.rec.tampered").unwrap();
    assert!(forged.expected.contains("4003"), "{}", forged.expected);
    println!("{}", report.summary());
}

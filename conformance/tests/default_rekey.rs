//! LIM-008 at the real default: a server configured with nothing rekeys its sending
//! direction after exactly 2^20 records in an epoch (`lim.rekey-defaults`, a million
//! PING/PONG round trips: about 75 s in the test build, whose dependencies are
//! optimized). A test binary of its own, so that its load does not share the machine
//! with the timing cases of `limits.rs`.
//!
//! Clauses: LIM-008, KEY-001.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use toolwire_conformance::server::{self, DeclaredLimits};
use toolwire_conformance::Verdict;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_limits_the_server_rekeys_after_2_20_records() {
    let target = common::start(|dangerous| dangerous).await;
    let mut options = common::options_for(&target);
    options.limits = DeclaredLimits::default();
    options.slow = true;
    options.only = vec!["lim.rekey-defaults".to_owned()];
    let report = tokio::time::timeout(
        Duration::from_secs(900),
        server::run(
            &target.url,
            target.server_key,
            target.client.clone(),
            options,
        ),
    )
    .await
    .expect("the run ends within 15 minutes");
    let case = report.case("lim.rekey-defaults").expect("the case ran");
    println!("{}: {}; {}", case.verdict, case.observed, case.detail);
    assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
    assert_eq!(report.cases.len(), 1);
}

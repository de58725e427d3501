//! The suite against our own server (in process, on loopback) and our own vectors:
//! every case PASSes (or is SKIPped for a stated reason), none FAILs, and the three
//! report formats are well-formed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use toolwire_conformance::report::SCHEMA;
use toolwire_conformance::{artifact, server, spec, vectors, Report, Verdict};

/// The server's events, captured for the event artifact case (EVT-004).
#[derive(Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Events {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_and_vectors_pass_with_zero_fail() {
    let events = Events::default();
    let writer = events.clone();
    // Process-wide: the server's tasks run on the runtime's worker threads.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    let target = common::start(|dangerous| dangerous).await;
    let suite = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        common::options_for(&target),
    );
    let mut report = tokio::time::timeout(Duration::from_secs(240), suite)
        .await
        .expect("the server suite finishes within a minute");
    report.merge(vectors::run(&vectors::default_dir()));
    // AUD-007: a clean shutdown ends the audit log with a head; then the artifact
    // cases judge the log the run produced.
    target
        .server
        .shutdown(Duration::from_secs(2))
        .await
        .expect("clean shutdown");
    // GRT-001, GRT-003, GRT-004, AUD-010: the reference issuer and verifier.
    let mut producers = artifact::Producers::default();
    producers.issuer = Some(artifact::Issuer::reference(
        toolwire_server::protocol::Identity::generate(&mut rand_core::OsRng),
    ));
    producers.verifier = Some(artifact::LogVerifier::reference());
    report.merge(artifact::run_with(
        &artifact::ArtifactTarget {
            audit_log: Some(target.audit_log.clone()),
            server_key: target.server_key,
            secrets: vec![
                hex::encode(*target.identity.to_seed()),
                hex::encode(*target.client.to_seed()),
                hex::encode(*target.other.to_seed()),
                hex::encode(*target.issuer.to_seed()),
            ],
            after_clean_shutdown: true,
            events: Some(String::from_utf8_lossy(&events.0.lock().unwrap()).into_owned()),
        },
        &producers,
    ));
    let _ = std::fs::remove_file(&target.audit_log);

    let problems: Vec<String> = report
        .cases
        .iter()
        .filter(|c| !matches!(c.verdict, Verdict::Pass | Verdict::Info))
        // This server does not require Origin: the next test runs that case.
        .filter(|c| !(c.id == "trn.origin.required" && c.verdict == Verdict::Skip))
        // These need declared short limits or a server started near the end of its
        // sequence space or epochs: tests/limits.rs runs them.
        .filter(|c| {
            !(matches!(
                c.id.as_str(),
                "life.lifetime"
                    | "life.idle"
                    | "key.interval"
                    | "key.records"
                    | "key.last-epoch"
                    | "rec.sequence-exhausted"
                    | "lim.write-stall"
                    | "lim.rekey-defaults"
            ) && c.verdict == Verdict::Skip)
        })
        // These need declared small at-most-once bounds or restarts: tests/amo_restart.rs
        // runs them.
        .filter(|c| {
            !(["amo.bounds.", "amo.durable.", "aud.restart."]
                .iter()
                .any(|prefix| c.id.starts_with(prefix))
                && c.verdict == Verdict::Skip)
        })
        // These need their own server configuration: tests/misc_instances.rs runs them.
        .filter(|c| {
            !(matches!(c.id.as_str(), "authz.policy-denied" | "cls.internal-error")
                && c.verdict == Verdict::Skip)
        })
        .map(|c| {
            format!(
                "{} {}: expected {}; observed {}; {}",
                c.id, c.verdict, c.expected, c.observed, c.detail
            )
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(report.count(Verdict::Fail), 0);
    assert!(report.is_success(), "{}", report.summary());
    assert!(report.cases.len() >= 50, "{}", report.summary());

    let coverage = report.coverage();
    assert!(
        coverage.unknown.is_empty(),
        "unknown clause ids: {:?}",
        coverage.unknown
    );
    println!("{}\n{}", report.summary(), coverage.summary());

    check_reports(&report);
    // CI keeps the reports as artifacts when asked to.
    if let Some(dir) = std::env::var_os("TOOLWIRE_CONFORMANCE_REPORT_DIR") {
        report
            .write_all(std::path::Path::new(&dir))
            .expect("reports written");
    }
}

/// TRN-013 needs a server configured to require Origin: a second server, one case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_origin_refuses_upgrades_without_one() {
    let target = common::start(|dangerous| dangerous.done().require_origin().dangerous()).await;
    let mut options = common::options_for(&target);
    options.origin_required = true;
    options.only = vec!["trn.origin.required".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    let case = report.case("trn.origin.required").expect("the case ran");
    assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
    assert_eq!(report.cases.len(), 1);
}

/// ID-010: a server configured with a certificate sends it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_sends_it_unchanged() {
    let operator = toolwire_server::protocol::Identity::generate(&mut rand_core::OsRng);
    let identity = toolwire_server::protocol::Identity::generate(&mut rand_core::OsRng);
    let claims = serde_json::json!({
        "iss": operator.public_key().to_string(),
        "sub": identity.public_key().to_string(),
        "exp": "2099-01-01T00:00:00Z",
    });
    let token = toolwire_server::protocol::paseto::sign_v4_public(
        operator.signing_key(),
        claims.to_string().as_bytes(),
        b"",
        b"toolwire/1 server certificate",
    );
    let certified = token.clone();
    let target = common::start_as(identity, |dangerous| {
        dangerous.done().certificate(certified).dangerous()
    })
    .await;
    let mut options = common::options_for(&target);
    options.certificate = Some(token);
    options.only = vec!["id.certificate".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    let case = report.case("id.certificate").expect("the case ran");
    assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
}

fn check_reports(report: &Report) {
    let dir = std::env::temp_dir().join(format!("toolwire-conformance-{}", std::process::id()));
    let [json, junit, markdown] = report.write_all(&dir).expect("reports written");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).expect("report.json is JSON");
    assert_eq!(json["schema"], SCHEMA);
    assert_eq!(json["success"], true);
    assert_eq!(json["summary"]["verdicts"]["FAIL"], 0);
    let cases = json["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), report.cases.len());
    for case in cases {
        assert!(case["id"].is_string() && case["verdict"].is_string());
        assert!(
            !case["clauses"].as_array().expect("clauses").is_empty(),
            "{case}"
        );
    }
    assert!(json["clauses"].as_array().is_some_and(|c| !c.is_empty()));

    let junit = std::fs::read_to_string(junit).unwrap();
    assert!(junit.starts_with("<?xml"));
    assert_eq!(junit.matches("<testcase ").count(), report.cases.len());
    assert_eq!(
        junit.matches("<testcase ").count(),
        junit.matches("</testcase>").count()
    );
    assert_eq!(
        junit.matches("<testsuite ").count(),
        junit.matches("</testsuite>").count()
    );
    assert!(junit.contains("failures=\"0\" errors=\"0\""));
    assert!(!junit.contains("<failure"));

    let markdown = std::fs::read_to_string(markdown).unwrap();
    assert!(markdown.contains("## Clauses"));
    assert!(markdown.contains("| REC-025 | MUST | PASS |"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_clause_named_by_a_case_exists_and_coverage_is_reported() {
    let coverage = spec::suite_coverage();
    assert!(coverage.unknown.is_empty(), "{:?}", coverage.unknown);
    assert!(coverage.must_covered >= 100, "{}", coverage.summary());
    let trace = spec::trace_text();
    assert!(trace.contains("rec.replayed"));
    assert!(trace.contains("MUST clauses"));
}

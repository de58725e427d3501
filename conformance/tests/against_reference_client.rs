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
    // The keepalive case alone waits about 30 s for the client's PING.
    let report = tokio::time::timeout(Duration::from_secs(240), suite)
        .await
        .expect("the client suite finishes within four minutes");
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
    // The cases of the shim's optional flags and report fields ran and PASSed (not
    // SKIP or UNIMPLEMENTED): ID-007, ID-011, ID-014, LIFE-003, LIFE-006, LIM-007,
    // MAN-008, ERR-003.
    for id in [
        "cli.key-text.canonical",
        "cli.key-text.44-chars",
        "cli.key-text.42-chars",
        "cli.key-text.padding",
        "cli.key-text.unused-bits",
        "cli.key-text.bad-char",
        "cli.cert.valid",
        "cli.cert.pinned-ignores",
        "cli.cert.absent",
        "cli.cert.other-operator",
        "cli.cert.forged",
        "cli.cert.other-server",
        "cli.cert.expired",
        "cli.cert.grant-assertion",
        "cli.session-lifetime",
        "cli.keepalive",
        "cli.manifest-hash",
        "cli.retryable",
    ] {
        let case = report.case(id).unwrap_or_else(|| panic!("{id} ran"));
        assert_eq!(case.verdict, Verdict::Pass, "{id}: {}", case.observed);
    }
    let retryable = report.case("cli.retryable").unwrap();
    assert!(
        retryable.observed.contains("[4, 8, 14]"),
        "{}",
        retryable.observed
    );
    println!("{}", report.summary());
}

// ---- The cases detect real faults ------------------------------------------------

use std::collections::BTreeSet;
use std::sync::Arc;
use toolwire_conformance::report::Report;
use toolwire_conformance::shim::{self, ShimInvocation, ShimReport};
use toolwire_protocol::IdentityKey;

fn options(only: &str) -> ClientOptions {
    let mut options = ClientOptions::default();
    options.handshake_stall = None;
    options.only = vec![only.to_owned()];
    options
}

fn verdicts(report: &Report) -> (BTreeSet<&str>, BTreeSet<&str>) {
    let pass = report
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Pass)
        .map(|c| c.id.as_str())
        .collect();
    let fail = report
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.id.as_str())
        .collect();
    (pass, fail)
}

/// ID-011, ID-014: a client that trusts the operator but ALSO pins the server key
/// accepts every server proving that key, whatever its certificate: every refusal
/// case FAILs, the acceptance cases still PASS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_also_pins_the_key_fails_the_certificate_refusals() {
    let pinning = ClientUnderTest::InProcess(Arc::new(|invocation: ShimInvocation| {
        Box::pin(async move {
            let builder = toolwire_client::Client::builder()
                .pin_server(invocation.server_key)
                .reconnect(toolwire_client::ReconnectPolicy::disabled());
            shim::run_with_builder(&invocation, builder).await
        })
    }));
    let mut options = options("cli.cert.");
    options.step = Duration::from_secs(2);
    let report = client::run(pinning, options).await;
    let (pass, fail) = verdicts(&report);
    assert_eq!(
        fail,
        BTreeSet::from([
            "cli.cert.absent",
            "cli.cert.other-operator",
            "cli.cert.forged",
            "cli.cert.other-server",
            "cli.cert.expired",
            "cli.cert.grant-assertion",
        ]),
        "{}",
        report.summary()
    );
    assert_eq!(
        pass,
        BTreeSet::from(["cli.cert.valid", "cli.cert.pinned-ignores"])
    );
    let absent = report.case("cli.cert.absent").unwrap();
    // The pinning client went on with record 3 instead of closing with 4001.
    assert!(
        absent.observed.contains("1 binary messages"),
        "{}",
        absent.observed
    );
}

/// A lenient key-text parser, as a careless client writes one: strips `=` padding
/// and ignores the unused low bits of the last character.
fn lenient_key(text: &str) -> Option<IdentityKey> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let text = text.trim_end_matches('=');
    let (head, last) = text.split_at_checked(42)?;
    let index = ALPHABET.iter().position(|c| last.as_bytes() == [*c])?;
    format!("{head}{}", ALPHABET[index & !3] as char)
        .parse()
        .ok()
}

/// ID-007: a client whose key parser is lenient connects with the padded and the
/// unused-bits texts (both read leniently as the server's real key): those cases
/// FAIL; the texts it still refuses PASS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lenient_key_parser_fails_the_key_text_cases() {
    let lenient = ClientUnderTest::InProcess(Arc::new(|mut invocation: ShimInvocation| {
        Box::pin(async move {
            if let Some(text) = invocation.server_key_text.take() {
                match lenient_key(&text) {
                    Some(key) => invocation.server_key = key,
                    None => {
                        return ShimReport {
                            outcome: "error".into(),
                            error: Some("bad_key".into()),
                            ..ShimReport::default()
                        }
                    }
                }
            }
            shim::run_reference(&invocation).await
        })
    }));
    let report = client::run(lenient, options("cli.key-text.")).await;
    let (pass, fail) = verdicts(&report);
    assert_eq!(
        fail,
        BTreeSet::from(["cli.key-text.padding", "cli.key-text.unused-bits"]),
        "{}",
        report.summary()
    );
    assert_eq!(
        pass,
        BTreeSet::from([
            "cli.key-text.canonical",
            "cli.key-text.44-chars",
            "cli.key-text.42-chars",
            "cli.key-text.bad-char",
        ])
    );
}

/// LIM-007: a client whose keepalive interval is 1 s instead of the default 30 s
/// PINGs far too early: the keepalive case FAILs (at once, not after 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_keepalive_fails_the_keepalive_case() {
    let eager = ClientUnderTest::InProcess(Arc::new(|invocation: ShimInvocation| {
        Box::pin(async move {
            let mut limits = toolwire_protocol::ConnectionLimits::default();
            limits.keepalive_interval = Duration::from_secs(1);
            let builder = toolwire_client::Client::builder().limits(limits);
            shim::run_with_builder(&invocation, builder).await
        })
    }));
    let report = client::run(eager, options("cli.keepalive")).await;
    let case = report.case("cli.keepalive").unwrap();
    assert_eq!(case.verdict, Verdict::Fail, "{}", case.observed);
    assert!(
        case.observed.contains("PING (nonce 0)"),
        "{}",
        case.observed
    );
}

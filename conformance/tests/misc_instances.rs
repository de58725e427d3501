//! The cases that need a particular server configuration, each against its own
//! in-process reference server: a policy that denies a granted call for certain
//! arguments (AUTHZ-016), and an audit log that cannot be written (CLS-009). The
//! default instance runs the big-result (REC-014, REC-034) and pipelined-record
//! (HS-035) cases; they run here too, alone, so that a failure names them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use toolwire_conformance::server::{self, ServerOptions, ToolCall};
use toolwire_conformance::Verdict;
use toolwire_server::protocol::authz::{AuthorizationRequest, Authorizer, Decision};

/// Denies `counter` when its arguments hold `"deny": true`; allows everything else.
struct DenyFlagged;

impl Authorizer for DenyFlagged {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        let args: serde_json::Value =
            rmp_serde::from_slice(request.args).unwrap_or(serde_json::Value::Null);
        if request.tool == "counter" && args["deny"] == serde_json::json!(true) {
            Decision::deny("conformance: flagged arguments")
        } else {
            Decision::Allow
        }
    }
}

async fn run_one(target: &common::RunningServer, options: ServerOptions, id: &str) {
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    let case = report.case(id).expect("the case ran");
    println!(
        "{id}: {} / {} / {}",
        case.verdict, case.observed, case.detail
    );
    assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
    assert_eq!(report.cases.len(), 1, "{}", report.summary());
}

/// AUTHZ-016: a policy denial is PERMISSION_DENIED, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_denial_is_permission_denied_and_not_executed() {
    let target =
        common::start(|dangerous| dangerous.done().authorizer(DenyFlagged).dangerous()).await;
    let mut options = common::options_for(&target);
    options.denied_call = Some(ToolCall {
        tool: "counter".to_owned(),
        args: serde_json::json!({"deny": true}),
    });
    options.only = vec!["authz.policy-denied".to_owned()];
    run_one(&target, options, "authz.policy-denied").await;
}

/// AUTHZ-016, the case itself: a server whose policy allows the flagged call (it runs)
/// FAILs the case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_its_policy_fails_the_policy_case() {
    let target = common::start(|dangerous| dangerous).await;
    let mut options = common::options_for(&target);
    options.denied_call = Some(ToolCall {
        tool: "counter".to_owned(),
        args: serde_json::json!({"deny": true}),
    });
    options.only = vec!["authz.policy-denied".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    let case = report.case("authz.policy-denied").expect("the case ran");
    assert_eq!(case.verdict, Verdict::Fail, "{case:?}");
}

/// CLS-009: a server whose audit log cannot be written closes with INTERNAL_ERROR.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_audit_log_fails_closes_with_internal_error() {
    let target =
        common::start(|dangerous| dangerous.done().audit_log("/dev/full").dangerous()).await;
    let mut options = common::options_for(&target);
    options.audit_failing = true;
    options.only = vec!["cls.internal-error".to_owned()];
    run_one(&target, options, "cls.internal-error").await;
}

/// REC-014, REC-034 and HS-035 against the default instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_and_records_after_a_failed_handshake() {
    let target = common::start(|dangerous| dangerous).await;
    for id in ["rec.big-result", "hs.no-record-after-failure"] {
        let mut options = common::options_for(&target);
        options.only = vec![id.to_owned()];
        run_one(&target, options, id).await;
    }
}

/// GRT-001, GRT-003, GRT-004, AUD-010 against the reference issuer and verifier, and
/// against faulty ones: an issuer that appends a footer FAILs GRT-001, one that signs
/// with another key than it declares FAILs GRT-003, one that does not count the
/// parent it embeds FAILs GRT-004, and a verifier that presents the unsigned tail as
/// proven FAILs AUD-010.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_verifier_cases_pass_the_reference_and_catch_faults() {
    use toolwire_conformance::artifact::{self, Issuer, LogVerifier, Producers, VerifierClaim};
    use toolwire_server::protocol::Identity;

    // A log with call entries and a closing head.
    let target = common::start(|dangerous| dangerous).await;
    let mut options = common::options_for(&target);
    options.only = vec!["amo.request-id-reuse".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    assert_eq!(
        report.cases[0].verdict,
        Verdict::Pass,
        "{:?}",
        report.cases[0]
    );
    target
        .server
        .shutdown(std::time::Duration::from_secs(2))
        .await
        .expect("clean shutdown");
    let artifacts = artifact::ArtifactTarget {
        audit_log: Some(target.audit_log.clone()),
        server_key: target.server_key,
        secrets: Vec::new(),
        after_clean_shutdown: true,
        events: None,
    };
    let verdicts = |producers: &Producers| {
        let report = artifact::run_with(&artifacts, producers);
        let verdict = |id: &str| {
            let case = report.case(id).expect("the case ran");
            println!("{id}: {} / {}", case.verdict, case.observed);
            case.verdict
        };
        [
            verdict("grt.issuer.format"),
            verdict("grt.issuer.iss"),
            verdict("grt.issuer.size"),
            verdict("aud.verifier-claims"),
        ]
    };

    let identity = Identity::generate(&mut rand_core::OsRng);
    let mut producers = Producers::default();
    producers.issuer = Some(Issuer::reference(identity.clone()));
    producers.verifier = Some(LogVerifier::reference());
    assert_eq!(verdicts(&producers), [Verdict::Pass; 4]);

    // Faults.
    let reference = Issuer::reference(identity.clone());
    let footer = reference.clone();
    producers.issuer = Some(Issuer::new(identity.public_key(), move |request| {
        footer.issue(request).map(|token| format!("{token}.e30"))
    }));
    let someone_else = Issuer::reference(Identity::generate(&mut rand_core::OsRng));
    let mut wrong_key = Producers::default();
    wrong_key.issuer = Some(Issuer::new(identity.public_key(), move |request| {
        someone_else.issue(request)
    }));
    let uncounted = Issuer::new(identity.public_key(), {
        let identity = identity.clone();
        move |request| {
            let Some(parent) = &request.parent else {
                return Issuer::reference(identity.clone()).issue(request);
            };
            // Checks the size of its own claims only, as if the parent were free,
            // then signs the link whatever its length.
            let mut alone = request.clone();
            alone.parent = None;
            Issuer::reference(identity.clone()).issue(&alone)?;
            let exp = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| e.to_string())?;
            let claims = serde_json::json!({
                "iss": identity.public_key().to_string(),
                "sub": request.holder.to_string(),
                "aud": request.audience.to_string(),
                "jti": "uncounted",
                "exp": exp,
                "tools": request.tools,
                "parent": parent,
            });
            Ok(toolwire_server::protocol::paseto::sign_v4_public(
                identity.signing_key(),
                claims.to_string().as_bytes(),
                b"",
                b"toolwire/1 grant",
            ))
        }
    });
    producers.verifier = Some(LogVerifier::new(|text, key| {
        let claim = toolwire_server::protocol::audit::verify_log(text, key)
            .map_err(|error| error.to_string())?;
        Ok(VerifierClaim::new(claim.entries, 0))
    }));
    let [format, _, _, claims] = verdicts(&producers);
    assert_eq!((format, claims), (Verdict::Fail, Verdict::Fail));
    let [_, iss, _, _] = verdicts(&wrong_key);
    assert_eq!(iss, Verdict::Fail);
    let mut oversize = Producers::default();
    oversize.issuer = Some(uncounted);
    let [_, _, size, _] = verdicts(&oversize);
    assert_eq!(size, Verdict::Fail);
    let _ = std::fs::remove_file(&target.audit_log);
}

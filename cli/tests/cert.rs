//! `toolwire cert issue` / `cert show`, `serve --certificate` and
//! `call --trust-operator`, as subprocesses: an agent that trusts the operator calls a
//! certified server without pinning its key, and refuses the same server when it
//! trusts another operator (exit status 3, AUTH_FAILED).
//!
//! Clauses: ID-010, ID-011, ID-014.

mod common;

use common::{keygen, run, serve, toolwire, Scratch};
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn issue_certificate(operator: &Path, server_key: &str, extra: &[&str], out: &Path) {
    let mut command = toolwire();
    command
        .args(["cert", "issue", "--operator"])
        .arg(operator)
        .args(["--server-key", server_key, "--ttl", "1h"])
        .args(extra);
    let output = run(command, DEADLINE);
    assert!(output.status.success(), "cert issue: {}", output.stderr);
    std::fs::write(out, output.stdout.trim()).expect("write certificate");
}

#[test]
fn an_agent_trusting_the_operator_calls_a_certified_server() {
    let scratch = Scratch::new("cert");
    let operator = scratch.path("operator.key");
    let other_operator = scratch.path("other-operator.key");
    let server = scratch.path("server.key");
    let agent = scratch.path("agent.key");
    let operator_key = keygen(&operator);
    let other_operator_key = keygen(&other_operator);
    let server_key = keygen(&server);
    let agent_key = keygen(&agent);
    let certificate = scratch.path("server.cert");
    issue_certificate(&operator, &server_key, &[], &certificate);

    let mut show = toolwire();
    show.args(["cert", "show"]).arg(&certificate);
    let shown = run(show, DEADLINE);
    assert!(shown.status.success(), "{}", shown.stderr);
    assert!(shown.stdout.contains(&server_key), "{}", shown.stdout);
    assert!(shown.stdout.contains(&operator_key), "{}", shown.stdout);

    let served = serve(
        &[
            "--identity".as_ref(),
            server.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--allow-client".as_ref(),
            agent_key.as_ref(),
            "--certificate".as_ref(),
            certificate.as_os_str(),
        ],
        DEADLINE,
    );
    let call = |trusted_operator: &str| {
        let mut command = toolwire();
        command
            .args([
                "call",
                &served.url,
                "calc",
                r#"{"a": 6, "op": "*", "b": 7}"#,
            ])
            .arg("--identity")
            .arg(&agent)
            .args(["--trust-operator", trusted_operator, "--timeout", "20"]);
        run(command, DEADLINE)
    };
    let output = call(&operator_key);
    assert!(output.status.success(), "{}", output.stderr);
    let result: serde_json::Value = serde_json::from_str(&output.stdout).expect("json");
    assert_eq!(result, serde_json::json!({"result": 42}));

    let output = call(&other_operator_key);
    assert_eq!(output.status.code(), Some(3), "{}", output.stderr);
    assert!(output.stderr.contains("AUTH_FAILED"), "{}", output.stderr);
    assert!(output.stdout.is_empty());
}

#[test]
fn serve_refuses_a_certificate_of_another_key() {
    let scratch = Scratch::new("cert-wrong");
    let operator = scratch.path("operator.key");
    let server = scratch.path("server.key");
    keygen(&operator);
    keygen(&server);
    let other_key = keygen(&scratch.path("other.key"));
    let agent_key = keygen(&scratch.path("agent.key"));
    let certificate = scratch.path("other.cert");
    issue_certificate(&operator, &other_key, &[], &certificate);
    let mut command = toolwire();
    command
        .args(["serve", "--identity"])
        .arg(&server)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-client",
            &agent_key,
            "--certificate",
        ])
        .arg(&certificate);
    let output = run(command, DEADLINE);
    assert_eq!(output.status.code(), Some(1), "{}", output.stderr);
    assert!(
        output
            .stderr
            .contains("certificate is for another server identity"),
        "{}",
        output.stderr
    );
}

#[test]
fn call_needs_a_server_key_or_an_operator() {
    let scratch = Scratch::new("cert-args");
    let agent = scratch.path("agent.key");
    keygen(&agent);
    let mut command = toolwire();
    command
        .args([
            "call",
            "ws://127.0.0.1:1/toolwire",
            "echo",
            "{}",
            "--identity",
        ])
        .arg(&agent);
    let output = run(command, DEADLINE);
    assert_eq!(output.status.code(), Some(2), "{}", output.stderr);
    assert!(output.stderr.contains("--server-key"), "{}", output.stderr);
}

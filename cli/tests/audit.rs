//! `toolwire audit verify` (AUD-009) and `toolwire serve --audit-log` with a graceful
//! stop on Ctrl-C (AUD-007): a good log exits 0 with a summary; an altered one exits
//! 1 naming the first bad line and the kind of failure.

mod common;

use common::{keygen, run, toolwire, KillOnDrop, Scratch};
use std::io::{BufRead as _, Read as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use toolwire_protocol::audit::AuditChain;
use toolwire_protocol::Identity;

const DEADLINE: Duration = Duration::from_secs(30);

fn verify(file: &Path, key: &str, json: bool) -> common::Output {
    let mut command = toolwire();
    command
        .args(["audit", "verify"])
        .arg(file)
        .args(["--server-key", key]);
    if json {
        command.arg("--json");
    }
    run(command, DEADLINE)
}

/// AUD-009: the summary of a good log; the first bad line of an altered one, with
/// its kind, in text and in JSON; the exit status says which.
#[test]
fn audit_verify_summarises_a_good_log_and_names_the_first_bad_line() {
    let scratch = Scratch::new("audit-verify");
    let server = Identity::from_seed(&[0x53; 32]);
    let key = server.public_key().to_string();
    let mut chain = AuditChain::new(server);
    let lines: Vec<String> = (0..4)
        .map(|second| {
            chain
                .head_entry(&format!("2026-01-01T00:00:0{second}Z"))
                .expect("head")
        })
        .collect();
    let write = |name: &str, lines: &[String]| {
        let path = scratch.path(name);
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        std::fs::write(&path, text).expect("write");
        path
    };

    let good = write("good.jsonl", &lines);
    let output = verify(&good, &key, false);
    assert!(
        output.status.success(),
        "{}{}",
        output.stdout,
        output.stderr
    );
    assert!(output.stdout.contains("verified"), "{}", output.stdout);
    assert!(
        output.stdout.contains("4 (0 calls, 4 signed heads)"),
        "{}",
        output.stdout
    );
    let output = verify(&good, &key, true);
    assert!(output.status.success());
    let summary: serde_json::Value = serde_json::from_str(&output.stdout).expect("JSON");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["entries"], 4);
    assert_eq!(summary["unsigned_tail"], 0);

    // A head's time changed: its signature no longer verifies.
    let mut edited = lines.clone();
    edited[1] = edited[1].replacen("00:00:01", "00:00:09", 1);
    let edited = write("edited.jsonl", &edited);
    let output = verify(&edited, &key, false);
    assert_eq!(output.status.code(), Some(1), "{}", output.stdout);
    assert!(
        output
            .stdout
            .contains("REJECTED at line 2: BadHeadSignature"),
        "{}",
        output.stdout
    );

    // A line deleted: the chain breaks where it was.
    let mut deleted = lines.clone();
    deleted.remove(1);
    let deleted = write("deleted.jsonl", &deleted);
    let output = verify(&deleted, &key, true);
    assert_eq!(output.status.code(), Some(1));
    let rejected: serde_json::Value = serde_json::from_str(&output.stdout).expect("JSON");
    assert_eq!(rejected["ok"], false);
    assert_eq!(rejected["error"]["line"], 2);
    assert_eq!(rejected["error"]["kind"], "BrokenChain");

    // Checked against another server's key.
    let stranger = Identity::from_seed(&[0x54; 32]).public_key().to_string();
    let output = verify(&good, &stranger, false);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output
            .stdout
            .contains("REJECTED at line 1: BadHeadSignature"),
        "{}",
        output.stdout
    );

    // No such file, and no key: usage errors, not verdicts.
    let output = verify(&scratch.path("missing.jsonl"), &key, false);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stderr.contains("cannot read"), "{}", output.stderr);
    let mut command = toolwire();
    command.args(["audit", "verify"]).arg(&good);
    assert_eq!(run(command, DEADLINE).status.code(), Some(2));
}

/// `serve --audit-log`: calls are logged; Ctrl-C stops the server gracefully, which
/// writes the final signed head (AUD-007); the log then verifies, with no unsigned
/// tail, and one changed byte of a call's arguments is caught on its line.
#[cfg(unix)]
#[test]
fn serve_keeps_an_audit_log_that_verifies_after_ctrl_c() {
    let scratch = Scratch::new("serve-audit");
    let server_file = scratch.path("server.key");
    let agent_file = scratch.path("agent.key");
    let server_key = keygen(&server_file);
    let agent_key = keygen(&agent_file);
    let log = scratch.path("audit.jsonl");

    let mut serve = toolwire();
    serve
        .arg("serve")
        .arg("--identity")
        .arg(&server_file)
        .args(["--listen", "127.0.0.1:0", "--allow-client", &agent_key])
        .arg("--audit-log")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = KillOnDrop(serve.spawn().expect("serve starts"));
    let stdout = server.0.stdout.take().expect("stdout");
    let mut stderr = server.0.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = received
            .recv_timeout(DEADLINE)
            .expect("serve prints its URL");
        if let Some(url) = line.trim().strip_prefix("url") {
            break url.trim().to_owned();
        }
    };

    let call = |tool: &str, args: &str| {
        let mut command = toolwire();
        command
            .args(["call", &url, tool, args, "--identity"])
            .arg(&agent_file)
            .args(["--server-key", &server_key, "--timeout", "20"]);
        run(command, DEADLINE)
    };
    assert!(call("echo", r#"{"text": "logged"}"#).status.success());
    assert_eq!(call("calc", r#"{"a": 1}"#).status.code(), Some(1));

    // Ctrl-C: a graceful stop.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &server.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("status") {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = errors.join().expect("stderr reader");
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("ending with a signed head"), "{stderr}");

    let output = verify(&log, &server_key, true);
    assert!(output.status.success(), "{}", output.stdout);
    let summary: serde_json::Value = serde_json::from_str(&output.stdout).expect("JSON");
    assert_eq!(summary["calls"], 2);
    assert_eq!(summary["heads"], 1);
    assert_eq!(summary["unsigned_tail"], 0);
    // Both requests' signatures (the refusal came after step 5) and the response's.
    assert_eq!(summary["signatures_verified"], 3);

    let text = std::fs::read_to_string(&log).expect("log");
    let first = text.lines().next().expect("a first line");
    let args_at = first.find(r#""args":""#).expect("inlined arguments") + 9;
    let mut edited = first.to_owned();
    let flipped = if &first[args_at..=args_at] == "0" {
        "1"
    } else {
        "0"
    };
    edited.replace_range(args_at..=args_at, flipped);
    std::fs::write(&log, text.replacen(first, &edited, 1)).expect("write");
    let output = verify(&log, &server_key, false);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output
            .stdout
            .contains("REJECTED at line 1: BadRequestSignature"),
        "{}",
        output.stdout
    );
}

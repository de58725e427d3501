//! `toolwire demo --json`: every legitimate call succeeds, every attack is refused
//! with the code the protocol specifies, and after a graceful shutdown the server's
//! audit log verifies while altered copies are rejected (AUD-007, AUD-009).

mod common;

use common::{run, toolwire, Scratch};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn demo_calls_succeed_and_every_attack_is_refused_with_its_code() {
    let scratch = Scratch::new("demo");
    let kept = scratch.path("demo-audit.jsonl");
    let mut command = toolwire();
    command.args(["demo", "--json", "--audit-log"]).arg(&kept);
    let output = run(command, Duration::from_secs(90));
    let report: serde_json::Value = serde_json::from_str(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "demo --json did not print one JSON document ({error}):\n{}\n{}",
            output.stdout, output.stderr
        )
    });

    let calls = report["calls"].as_array().expect("calls");
    assert!(calls.len() >= 4, "{calls:?}");
    for call in calls {
        assert_eq!(call["ok"], true, "call failed: {call}");
        assert!(call["result"].is_object(), "{call}");
    }
    let tools: BTreeSet<&str> = calls
        .iter()
        .filter_map(|call| call["tool"].as_str())
        .collect();
    for tool in ["echo", "calc", "count", "read_file"] {
        assert!(tools.contains(tool), "no legitimate {tool} call");
    }
    let count = calls.iter().find(|call| call["tool"] == "count").unwrap();
    assert_eq!(count["items"], serde_json::json!([1, 2, 3]));

    let attacks = report["attacks"].as_array().expect("attacks");
    for attack in attacks {
        assert_eq!(
            attack["refused"], true,
            "attack not refused as specified: {attack}"
        );
        assert_eq!(attack["observed"], attack["expected"], "{attack}");
    }
    let expected: BTreeSet<&str> = attacks
        .iter()
        .filter_map(|attack| attack["expected"].as_str())
        .collect();
    for code in [
        "HTTP 403",
        "close 4001 AUTH_FAILED",
        "close 4003 DECRYPT_FAILED",
        "close 4004 REPLAY_DETECTED",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED, close 4008",
        "CAPABILITY_REVOKED",
        "MANIFEST_CHANGED",
    ] {
        assert!(
            expected.contains(code),
            "no attack expects {code}: {expected:?}"
        );
    }
    let skipped = report["skipped"].as_array().expect("skipped");
    #[cfg(unix)]
    assert!(skipped.is_empty(), "skipped: {skipped:?}");

    let audit = &report["audit"];
    assert_eq!(audit["shutdown"], true, "{audit}");
    assert_eq!(audit["verified"], true, "{audit}");
    assert_eq!(audit["unsigned_tail"], 0, "{audit}");
    assert_eq!(audit["signatures_unchecked"], 0, "{audit}");
    assert!(audit["heads"].as_u64().unwrap_or(0) >= 2, "{audit}");
    // One entry per decision: at least the legitimate calls and the refused ones.
    assert!(audit["calls"].as_u64().unwrap_or(0) >= 20, "{audit}");
    assert!(
        audit["signatures_verified"].as_u64().unwrap_or(0) >= 10,
        "{audit}"
    );
    let tampered = audit["tampered"].as_array().expect("tampered copies");
    let kinds: BTreeSet<&str> = tampered
        .iter()
        .map(|copy| {
            assert_eq!(copy["rejected"], true, "{copy}");
            assert_eq!(copy["observed"], copy["expected"], "{copy}");
            let observed = copy["observed"].as_str().unwrap_or("");
            observed.split(" at line").next().unwrap_or("")
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["BadRequestSignature", "BrokenChain"]),
        "{audit}"
    );
    assert_eq!(audit["ok"], true);

    // The kept copy verifies with `toolwire audit verify` and the printed server key.
    let key = report["server"]["key"].as_str().expect("server key");
    let mut command = toolwire();
    command
        .args(["audit", "verify", "--json", "--server-key", key])
        .arg(&kept);
    let verified = run(command, Duration::from_secs(30));
    assert!(verified.status.success(), "{}", verified.stdout);
    let summary: serde_json::Value = serde_json::from_str(&verified.stdout).expect("JSON");
    assert_eq!(summary["calls"], audit["calls"]);
    assert_eq!(summary["heads"], audit["heads"]);

    assert_eq!(report["ok"], true);
    assert!(output.status.success(), "exit status {}", output.status);
}

#[test]
fn demo_prints_a_table_by_default() {
    let mut command = toolwire();
    command.arg("demo");
    let output = run(command, Duration::from_secs(90));
    assert!(
        output.status.success(),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    for needle in [
        "attack",
        "expected",
        "observed",
        "verdict",
        "refused",
        "DECRYPT_FAILED",
        "graceful shutdown",
        "BadRequestSignature at line",
        "BrokenChain at line",
        "audit log: ",
        "all signatures verified",
    ] {
        assert!(
            output.stdout.contains(needle),
            "no `{needle}` in:\n{}",
            output.stdout
        );
    }
    assert!(!output.stdout.contains("FAILED:"), "{}", output.stdout);
}

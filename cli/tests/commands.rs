//! `keygen`, `grant issue`, and a `serve` + `call` round trip, as subprocesses.

mod common;

use common::{keygen, run, serve, toolwire, Scratch};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use toolwire_protocol::grant::{verify_grant, VerifyContext};
use toolwire_protocol::{Identity, IdentityKey};

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn keygen_writes_a_private_file_and_refuses_to_overwrite() {
    let scratch = Scratch::new("keygen");
    let path = scratch.path("agent.key");
    let key = keygen(&path);
    let parsed: IdentityKey = key.parse().expect("keygen prints a valid key");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("toolwire-identity-v1\n"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    // `pubkey` reads the same key back.
    let mut command = toolwire();
    command.arg("pubkey").arg(&path);
    let output = run(command, DEADLINE);
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stdout.trim(), parsed.to_string());

    // A second keygen must not destroy the identity.
    let mut command = toolwire();
    command.arg("keygen").arg("--out").arg(&path);
    let output = run(command, DEADLINE);
    assert_eq!(output.status.code(), Some(1), "{}", output.stderr);
    assert!(
        output.stderr.contains("already exists"),
        "{}",
        output.stderr
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // --force replaces it, still private.
    let mut command = toolwire();
    command.arg("keygen").arg("--out").arg(&path).arg("--force");
    let output = run(command, DEADLINE);
    assert!(output.status.success(), "{}", output.stderr);
    assert_ne!(std::fs::read_to_string(&path).unwrap(), text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.0).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");
}

fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(elapsed.as_secs()).expect("seconds fit i64")
}

fn issue(args: &[&str]) -> String {
    let mut command = toolwire();
    command.args(["grant", "issue"]).args(args);
    let output = run(command, DEADLINE);
    assert!(
        output.status.success(),
        "grant issue failed: {}",
        output.stderr
    );
    output.stdout.trim().to_owned()
}

#[test]
fn grant_issue_produces_tokens_that_verify_and_delegate() {
    let scratch = Scratch::new("grant");
    let operator_file = scratch.path("operator.key");
    let agent_file = scratch.path("agent.key");
    let operator: IdentityKey = keygen(&operator_file).parse().unwrap();
    let agent: IdentityKey = keygen(&agent_file).parse().unwrap();
    let server = Identity::from_seed(&[3; 32]).public_key();
    let sub_agent = Identity::from_seed(&[4; 32]).public_key();

    let token = issue(&[
        "--issuer",
        operator_file.to_str().unwrap(),
        "--holder",
        &agent.to_string(),
        "--audience",
        &server.to_string(),
        "--tools",
        "echo,count",
        "--scope",
        "read",
        "--ttl",
        "1h",
        "--id",
        "grant-1",
    ]);
    assert!(token.starts_with("v4.public."), "{token}");
    let context = VerifyContext {
        trusted_issuers: &[operator.to_bytes()],
        audience: server.to_bytes(),
        holder: agent.to_bytes(),
        now_unix: unix_now(),
        session_id: None,
        max_clock_skew_secs: 0,
    };
    let grant = verify_grant(&token, &context).expect("the grant verifies");
    assert_eq!(grant.id, "grant-1");
    assert_eq!(grant.tools, ["echo", "count"]);
    assert_eq!(grant.scope, ["read"]);
    let ttl = grant.expires_at_unix - unix_now();
    assert!((3590..=3600).contains(&ttl), "expires in {ttl} s");

    // Delegation: the agent narrows its grant for a sub-agent.
    let delegated = issue(&[
        "--issuer",
        agent_file.to_str().unwrap(),
        "--holder",
        &sub_agent.to_string(),
        "--tools",
        "echo",
        "--ttl",
        "10m",
        "--parent",
        &token,
    ]);
    let grant = verify_grant(
        &delegated,
        &VerifyContext {
            holder: sub_agent.to_bytes(),
            ..context
        },
    )
    .expect("the delegated grant verifies");
    assert_eq!(grant.tools, ["echo"]);
    assert_eq!(grant.chain_ids.first().map(String::as_str), Some("grant-1"));

    // Widening is refused before signing, with a readable reason.
    let mut command = toolwire();
    command
        .args(["grant", "issue", "--issuer"])
        .arg(&agent_file)
        .args(["--holder", &sub_agent.to_string(), "--tools", "read_file"])
        .args(["--ttl", "10m", "--parent", &token]);
    let output = run(command, DEADLINE);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.contains("not covered by the parent grant"),
        "{}",
        output.stderr
    );
}

#[test]
fn serve_and_call_round_trip() {
    let scratch = Scratch::new("serve");
    let server_file = scratch.path("server.key");
    let agent_file = scratch.path("agent.key");
    let stranger_file = scratch.path("stranger.key");
    let server_key = keygen(&server_file);
    let agent_key = keygen(&agent_file);
    keygen(&stranger_file);
    let sandbox = scratch.path("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    std::fs::write(sandbox.join("notes.txt"), "inside").unwrap();
    std::fs::write(scratch.path("secret.txt"), "outside").unwrap();

    let served = serve(
        &[
            "--identity".as_ref(),
            server_file.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--allow-client".as_ref(),
            agent_key.as_ref(),
            "--sandbox".as_ref(),
            sandbox.as_os_str(),
        ],
        DEADLINE,
    );
    let url = served.url.clone();
    assert_eq!(served.key, server_key);

    let call = |identity: &std::path::Path, tool: &str, args: &str| {
        let mut command = toolwire();
        command
            .args(["call", &url, tool, args, "--identity"])
            .arg(identity)
            .args(["--server-key", &server_key, "--timeout", "20"]);
        run(command, DEADLINE)
    };

    let output = call(&agent_file, "calc", r#"{"a": 6, "op": "*", "b": 7}"#);
    assert!(output.status.success(), "{}", output.stderr);
    let result: serde_json::Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(result, serde_json::json!({"result": 42}));

    let output = call(&agent_file, "read_file", r#"{"path": "notes.txt"}"#);
    assert!(output.status.success(), "{}", output.stderr);
    let result: serde_json::Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(result["text"], "inside");

    let output = call(&agent_file, "count", r#"{"to": 2, "delay_ms": 0}"#);
    assert!(output.status.success(), "{}", output.stderr);
    assert!(output.stderr.contains("item: 1") && output.stderr.contains("item: 2"));

    // Refusals: non-zero exit status and the error code on stderr.
    let output = call(&agent_file, "read_file", r#"{"path": "../secret.txt"}"#);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.contains("PERMISSION_DENIED"),
        "{}",
        output.stderr
    );
    assert!(output.stdout.is_empty());

    let output = call(&agent_file, "calc", r#"{"a": 1}"#);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.contains("INVALID_ARGUMENT"),
        "{}",
        output.stderr
    );

    let output = call(&stranger_file, "echo", r#"{"text": "hi"}"#);
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stderr.contains("AUTH_FAILED"), "{}", output.stderr);

    // `tools` lists the signed manifest.
    let mut command = toolwire();
    command
        .args(["tools", &url, "--json", "--identity"])
        .arg(&agent_file)
        .args(["--server-key", &server_key]);
    let output = run(command, DEADLINE);
    assert!(output.status.success(), "{}", output.stderr);
    let manifest: serde_json::Value = serde_json::from_str(&output.stdout).unwrap();
    let names: Vec<&str> = manifest["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert_eq!(names, ["calc", "count", "echo", "read_file"]);
    assert!(manifest["tools"][0]["input_schema"].is_object());

    drop(served);
}

//! `toolwire serve --amo-store PATH`: the durable at-most-once store (spec section
//! 14.5) from the command line. A server killed with SIGKILL (a real crash, no
//! cleanup) starts again on the same store; a store file that is not a database
//! keeps the server from starting (AMO-039).

mod common;

use common::{keygen, run, serve, toolwire, Scratch};
use std::ffi::OsStr;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn call_echo(url: &str, agent_file: &std::path::Path, server_key: &str) {
    let mut command = toolwire();
    command
        .args(["call", url, "echo", r#"{"text":"hi"}"#, "--identity"])
        .arg(agent_file)
        .args(["--server-key", server_key, "--timeout", "20"]);
    let output = run(command, DEADLINE);
    assert!(output.status.success(), "call failed: {}", output.stderr);
    assert!(output.stdout.contains("hi"), "{}", output.stdout);
}

/// Clauses: AMO-035, AMO-038 — a server with a store is killed mid-life and started
/// again on the same file: it opens the store and serves.
#[cfg(unix)]
#[test]
fn serve_restarts_on_its_store_after_a_kill() {
    let scratch = Scratch::new("amo-store");
    let server_file = scratch.path("server.key");
    let agent_file = scratch.path("agent.key");
    keygen(&server_file);
    let agent_key = keygen(&agent_file);
    let store = scratch.path("amo.redb");
    let args: Vec<&OsStr> = vec![
        OsStr::new("--identity"),
        server_file.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--allow-client"),
        OsStr::new(&agent_key),
        OsStr::new("--amo-store"),
        store.as_os_str(),
    ];
    let first = serve(&args, DEADLINE);
    call_echo(&first.url, &agent_file, &first.key);
    drop(first); // SIGKILL
    assert!(store.exists());

    let second = serve(&args, DEADLINE);
    call_echo(&second.url, &agent_file, &second.key);
}

/// Clauses: AMO-039 — a store path holding something that is not a store: `serve`
/// exits with an error naming the store, and never listens.
#[test]
fn serve_refuses_a_store_that_is_not_a_database() {
    let scratch = Scratch::new("amo-store-bad");
    let server_file = scratch.path("server.key");
    keygen(&server_file);
    let agent_key = keygen(&scratch.path("agent.key"));
    let store = scratch.path("amo.redb");
    std::fs::write(&store, vec![0xa5; 4096]).expect("write garbage");
    let mut command = toolwire();
    command
        .arg("serve")
        .arg("--identity")
        .arg(&server_file)
        .args(["--listen", "127.0.0.1:0", "--allow-client", &agent_key])
        .arg("--amo-store")
        .arg(&store);
    let output = run(command, DEADLINE);
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("at-most-once store"),
        "{}",
        output.stderr
    );
    assert!(!output.stdout.contains("listening"), "{}", output.stdout);
}

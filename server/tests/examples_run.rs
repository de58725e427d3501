//! The README's walk-through, run as a person would: the example tool server
//! (`server/examples/echo_tool_server.rs`) and the example agent
//! (`client/examples/call_tool.rs`) as separate processes talking over loopback.
//!
//! How the binaries are found: the test runs `cargo build --workspace --example
//! echo_tool_server --example call_tool` with the cargo, target directory and
//! profile that built this test (a no-op when `cargo test --workspace` already built
//! them, which it does; otherwise it builds what is missing or stale), then spawns
//! `<target>/<profile>/examples/<name>` directly. `cargo run` is avoided: it
//! would re-check the workspace on each run and mix cargo's output with the
//! example's. Every wait is bounded, both children are killed when the test ends,
//! and the server listens on `127.0.0.1:0` (the URL it prints has the real port).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use toolwire_server::protocol::Identity;

/// Upper bound of the example build (a no-op in the usual case) and of each run.
const BUILD_LIMIT: Duration = Duration::from_secs(300);
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// `<target>/<profile>` of this test binary (`…/<profile>/deps/examples_run-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// Builds both examples with the same cargo, target directory and profile as this
/// test, and returns the directory holding them.
fn build_examples() -> PathBuf {
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("profile directory name")
    {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        // `--workspace` so that features resolve exactly as for `cargo test
        // --workspace` (a narrower package set would rebuild tokio and the rest
        // with other features); `--example` so that only these two are built.
        .args(["build", "--quiet", "--workspace"])
        .args(["--example", "echo_tool_server", "--example", "call_tool"])
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let output = wait_bounded(
        "cargo build --examples",
        build.stdout(Stdio::piped()).stderr(Stdio::piped()),
        BUILD_LIMIT,
    );
    assert!(
        output.status.success(),
        "building the examples failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    profile_dir.join("examples")
}

/// Runs `command` (stdout and stderr piped) to completion, killing it after `limit`.
fn wait_bounded(what: &str, command: &mut Command, limit: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `identity` as an identity file in `toolwire keygen`'s format.
fn write_identity(path: &Path, identity: &Identity) {
    let text = format!(
        "toolwire-identity-v1\n{}\n",
        URL_SAFE_NO_PAD.encode(*identity.to_seed())
    );
    std::fs::write(path, text).expect("write identity file");
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let mut random = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        let name: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        let path = std::env::temp_dir().join(format!("toolwire-examples-{name}"));
        std::fs::create_dir_all(&path).expect("scratch directory");
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the example server and reads the two lines it prints: its key and URL.
fn start_server(examples: &Path, args: &[&str]) -> (Running, String, String) {
    let mut child = Command::new(examples.join("echo_tool_server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start echo_tool_server");
    let stdout = child.stdout.take().expect("server stdout");
    let running = Running(child);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut first_two = Vec::new();
        while first_two.len() < 2 {
            match lines.next() {
                Some(Ok(line)) => first_two.push(line),
                _ => break,
            }
        }
        let _ = sender.send(first_two);
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let lines = receiver
        .recv_timeout(RUN_LIMIT)
        .expect("the server prints its key and URL");
    let field = |prefix: &str| {
        lines
            .iter()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:?}"))
            .to_owned()
    };
    (running, field("server key: "), field("url: "))
}

/// Runs the example agent with `args` and returns (success, stdout, stderr).
fn call(examples: &Path, args: &[&str]) -> (bool, String, String) {
    let output = wait_bounded(
        "call_tool",
        Command::new(examples.join("call_tool"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        RUN_LIMIT,
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

/// Clauses: TRN-002, ID-003 — the README walk-through over loopback `ws://`: the
/// example server prints its key and URL, the example agent pinning that key calls
/// `echo` and `add` and prints the results; pinning another key fails.
#[test]
fn the_examples_run_as_the_readme_shows() {
    let examples = build_examples();
    let scratch = Scratch::new();
    let agent = Identity::generate(&mut rand_core::OsRng);
    let agent_file = scratch.0.join("agent.key");
    write_identity(&agent_file, &agent);
    let server_file = scratch.0.join("server.key");
    let server_identity = Identity::generate(&mut rand_core::OsRng);
    write_identity(&server_file, &server_identity);
    let agent_key = agent.public_key().to_string();
    let agent_file = agent_file.to_str().expect("UTF-8 path");

    let (_server, server_key, url) = start_server(
        &examples,
        &[
            "--allow-client",
            &agent_key,
            "--identity",
            server_file.to_str().expect("UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(server_key, server_identity.public_key().to_string());
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/toolwire"), "{url}");

    let (ok, stdout, stderr) = call(&examples, &[&url, &server_key, agent_file]);
    assert!(ok, "call_tool failed: {stderr}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON result"),
        serde_json::json!({"text": "hello from call_tool"})
    );

    let (ok, stdout, stderr) = call(
        &examples,
        &[&url, &server_key, agent_file, "add", r#"{"a":2,"b":40}"#],
    );
    assert!(ok, "call_tool add failed: {stderr}");
    assert_eq!(stdout, r#"{"sum":42}"#);

    let stranger = Identity::generate(&mut rand_core::OsRng)
        .public_key()
        .to_string();
    let (ok, stdout, stderr) = call(&examples, &[&url, &stranger, agent_file]);
    assert!(!ok, "pinning another key must fail: {stdout}");
    assert!(stderr.contains("4001"), "{stderr}");
}

/// Clauses: TRN-001, TRN-004 — the same walk-through over `wss://`: the example
/// server terminates TLS with a certificate generated here (`--tls-cert`,
/// `--tls-key`), and the example agent trusts its CA (`--ca-cert`).
#[test]
fn the_examples_run_over_tls() {
    let examples = build_examples();
    let scratch = Scratch::new();
    let agent = Identity::generate(&mut rand_core::OsRng);
    let agent_file = scratch.0.join("agent.key");
    write_identity(&agent_file, &agent);
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let cert_file = scratch.0.join("cert.pem");
    let key_file = scratch.0.join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
    let agent_key = agent.public_key().to_string();

    let (_server, server_key, url) = start_server(
        &examples,
        &[
            "--allow-client",
            &agent_key,
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_file.to_str().expect("UTF-8 path"),
            "--tls-key",
            key_file.to_str().expect("UTF-8 path"),
        ],
    );
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");

    let agent_file = agent_file.to_str().expect("UTF-8 path");
    let cert_file = cert_file.to_str().expect("UTF-8 path");
    let (ok, stdout, stderr) = call(
        &examples,
        &[&url, &server_key, agent_file, "--ca-cert", cert_file],
    );
    assert!(ok, "call_tool over wss failed: {stderr}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON result"),
        serde_json::json!({"text": "hello from call_tool"})
    );

    // Without the CA the TLS handshake fails.
    let (ok, _, stderr) = call(&examples, &[&url, &server_key, agent_file]);
    assert!(!ok);
    assert!(stderr.contains("TLS"), "{stderr}");
}

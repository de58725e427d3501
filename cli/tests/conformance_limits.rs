//! `toolwire conformance server` against `toolwire serve`, both given the same short
//! limits on the command line (spec 17.1, LIM-017): the timing cases pass at the
//! declared values, and a declared value the server does not run with FAILs.

mod common;

use common::{keygen, run, serve, toolwire, Output, Scratch};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Two keys and a running `toolwire serve` with `limits` (flags after `serve`).
struct Setup {
    _scratch: Scratch,
    agent_file: PathBuf,
    served: common::Served,
}

fn setup(name: &str, limits: &[&str]) -> Setup {
    let scratch = Scratch::new(name);
    let server_file = scratch.path("server.key");
    let agent_file = scratch.path("agent.key");
    keygen(&server_file);
    let agent_key = keygen(&agent_file);
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--identity"),
        server_file.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--allow-client"),
        OsStr::new(&agent_key),
    ];
    args.extend(limits.iter().map(OsStr::new));
    let served = serve(&args, DEADLINE);
    Setup {
        _scratch: scratch,
        agent_file,
        served,
    }
}

/// `toolwire conformance server` against the setup's server with `flags`.
fn conformance(setup: &Setup, flags: &[&str]) -> Output {
    let mut command = toolwire();
    command
        .args(["conformance", "server", "--url", &setup.served.url])
        .args(["--server-key", &setup.served.key, "--identity"])
        .arg(&setup.agent_file)
        .args(flags);
    let output = run(command, DEADLINE);
    println!("{}", output.stdout);
    eprintln!("{}", output.stderr);
    output
}

/// What a failed assertion shows.
fn shown(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status, output.stdout, output.stderr
    )
}

/// The verdict printed for case `id`.
fn verdict<'a>(output: &'a Output, id: &str) -> Option<&'a str> {
    output.stdout.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let verdict = words.next()?;
        (words.next()? == id).then_some(verdict)
    })
}

const LIMITS: [&str; 8] = [
    "--idle-timeout-ms",
    "1500",
    "--session-lifetime-ms",
    "4000",
    "--rekey-after-ms",
    "1500",
    "--rekey-after-records",
    "64",
];

/// LIFE-001, LIFE-005, KEY-001, KEY-002 at the limits `toolwire serve` was given,
/// declared with the same flags.
#[test]
fn the_timing_cases_pass_at_the_limits_serve_was_given() {
    let setup = setup("conformance-limits", &LIMITS);
    let mut flags = LIMITS.to_vec();
    flags.extend([
        "--case",
        "life.",
        "--case",
        "key.records",
        "--case",
        "key.interval",
    ]);
    let output = conformance(&setup, &flags);
    for id in ["life.lifetime", "life.idle", "key.records", "key.interval"] {
        assert_eq!(
            verdict(&output, id),
            Some("PASS"),
            "{id}: {}",
            shown(&output)
        );
    }
    assert!(output.status.success(), "{}", shown(&output));
}

/// LIFE-001: a server whose sessions last 2 s, declared as lasting 4 s, closes them
/// too early: the lifetime case FAILs and the run exits 1.
#[test]
fn a_declared_lifetime_longer_than_served_fails() {
    let setup = setup(
        "conformance-limits-mismatch",
        &["--session-lifetime-ms", "2000"],
    );
    let output = conformance(
        &setup,
        &["--session-lifetime-ms", "4000", "--case", "life.lifetime"],
    );
    assert_eq!(
        verdict(&output, "life.lifetime"),
        Some("FAIL"),
        "{}",
        shown(&output)
    );
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
}

/// `toolwire serve` refuses a zero limit with the flag named, and never listens.
#[test]
fn serve_refuses_a_zero_limit() {
    let scratch = Scratch::new("serve-zero-limit");
    let server_file = scratch.path("server.key");
    keygen(&server_file);
    let agent_key = keygen(&scratch.path("agent.key"));
    let mut command = toolwire();
    command
        .arg("serve")
        .arg("--identity")
        .arg(&server_file)
        .args(["--listen", "127.0.0.1:0", "--allow-client", &agent_key])
        .args(["--idle-timeout-ms", "0"]);
    let output = run(command, DEADLINE);
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("--idle-timeout-ms") && output.stderr.contains("at least 1 ms"),
        "{}",
        output.stderr
    );
    assert!(!output.stdout.contains("listening"), "{}", output.stdout);
}

/// Kills the server whose pid is in the file when dropped (the last one the
/// `--start-command` started outlives the conformance run).
#[cfg(unix)]
struct KillPid(PathBuf);

#[cfg(unix)]
impl Drop for KillPid {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }
}

/// AMO-037, AMO-038, AMO-039, AUD-008 through `--crash-command` (`kill -9` of the
/// pid a start script wrote) and `--start-command` (the same script): `toolwire
/// serve` on a durable store and an audit log comes back after each crash.
#[cfg(unix)]
#[test]
fn the_restart_cases_run_through_the_crash_and_start_commands() {
    let scratch = Scratch::new("conformance-restart");
    let server_file = scratch.path("server.key");
    let agent_file = scratch.path("agent.key");
    let server_key = keygen(&server_file);
    let agent_key = keygen(&agent_file);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let (pid, store, log) = (
        scratch.path("server.pid"),
        scratch.path("amo.redb"),
        scratch.path("audit.jsonl"),
    );
    let start = format!(
        "echo $$ > '{}'; exec '{}' serve --identity '{}' --listen 127.0.0.1:{port} --allow-client {agent_key} --amo-store '{}' --audit-log '{}'",
        pid.display(),
        env!("CARGO_BIN_EXE_toolwire"),
        server_file.display(),
        store.display(),
        log.display(),
    );
    let _server = KillPid(pid.clone());
    // The first server, started like the restarts: `sh` execs into it, so its pid
    // is the one the script wrote.
    let _first = common::KillOnDrop(
        std::process::Command::new("sh")
            .args(["-c", &start])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh runs"),
    );
    let address = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(started.elapsed() < DEADLINE, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut command = toolwire();
    command
        .args(["conformance", "server", "--url"])
        .arg(format!("ws://{address}/toolwire"))
        .args(["--server-key", &server_key, "--identity"])
        .arg(&agent_file)
        .args(["--call-tool", "echo", "--call-args", r#"{"text":"hi"}"#])
        .arg("--amo-store")
        .arg(&store)
        .arg("--audit-log")
        .arg(&log)
        .arg("--crash-command")
        .arg(format!("kill -9 $(cat '{}')", pid.display()))
        .args(["--start-command", &start])
        .args(["--case", "amo.durable.result-after-crash"])
        .args(["--case", "amo.durable.damaged-store"])
        .args(["--case", "aud.restart"]);
    let output = run(command, DEADLINE);
    println!("{}", output.stdout);
    for id in [
        "amo.durable.result-after-crash",
        "amo.durable.damaged-store",
        "aud.restart.continues-chain",
    ] {
        assert_eq!(
            verdict(&output, id),
            Some("PASS"),
            "{id}: {}",
            shown(&output)
        );
    }
    assert!(output.status.success(), "{}", shown(&output));
}

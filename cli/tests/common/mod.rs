//! Helpers shared by the CLI tests: a scratch folder and running the built binary
//! with a deadline.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `toolwire` binary under test.
pub(crate) fn toolwire() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toolwire"))
}

/// A folder removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "toolwire-cli-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished run printed.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Kills the child when dropped (a test that fails must not leave a server behind).
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to completion, killing it after `deadline`.
pub(crate) fn run(mut command: Command, deadline: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the toolwire binary starts");
    let mut child = KillOnDrop(child);
    // Drain both pipes on threads so that a chatty child never blocks on a full pipe.
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("child status") {
            break status;
        }
        assert!(
            started.elapsed() < deadline,
            "toolwire did not finish within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `toolwire keygen --out PATH`; returns the public key it printed.
pub(crate) fn keygen(path: &Path) -> String {
    let mut command = toolwire();
    command.arg("keygen").arg("--out").arg(path);
    let output = run(command, Duration::from_secs(20));
    assert!(output.status.success(), "keygen failed: {}", output.stderr);
    output
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("public key"))
        .map(|key| key.trim().to_owned())
        .expect("keygen prints the public key")
}

/// A `toolwire serve` running in the background, killed when dropped.
pub(crate) struct Served {
    /// The URL it printed.
    pub(crate) url: String,
    /// The server key it printed.
    pub(crate) key: String,
    _child: KillOnDrop,
}

/// Starts `toolwire serve` with `args` (after `serve`) and waits, up to `deadline`,
/// until it printed its key and URL.
pub(crate) fn serve(args: &[&std::ffi::OsStr], deadline: Duration) -> Served {
    let mut serve = toolwire();
    serve
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(serve.spawn().expect("serve starts"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut url = None;
    let mut key = None;
    while url.is_none() || key.is_none() {
        let line = received
            .recv_timeout(deadline)
            .expect("serve prints its key and URL");
        let line = line.trim();
        if let Some(value) = line.strip_prefix("url") {
            url = Some(value.trim().to_owned());
        }
        if let Some(value) = line.strip_prefix("key") {
            key = Some(value.trim().to_owned());
        }
    }
    Served {
        url: url.expect("url printed"),
        key: key.expect("key printed"),
        _child: child,
    }
}

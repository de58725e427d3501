//! Key hygiene of `toolwire keygen` (issue 10 item 5, THREATS.md §15) beyond
//! `commands.rs`: the identity file is owner-only whatever the caller's umask, a
//! `--force` replacement of a world-readable file is owner-only too, and neither the
//! command's output nor its errors print the secret seed.
//!
//! Clauses: ID-009.

mod common;

use common::{run, Scratch};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use toolwire_protocol::Identity;

const DEADLINE: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

/// `toolwire keygen --out PATH [--force]` run under `umask 000` (through `sh`, so the
/// test process's own umask is untouched).
fn keygen_with_open_umask(path: &Path, force: bool) -> std::process::Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 000; exec \"$0\" keygen --out \"$1\" $2")
        .arg(env!("CARGO_BIN_EXE_toolwire"))
        .arg(path)
        .arg(if force { "--force" } else { "" });
    let output = command.output().expect("sh runs");
    assert!(
        output.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The seed in the identity file at `path`, as the file spells it (base64url).
fn seed_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("identity file");
    text.lines().nth(1).expect("seed line").to_owned()
}

#[test]
fn keygen_is_owner_only_under_a_permissive_umask_and_never_prints_the_seed() {
    let scratch = Scratch::new("key-hygiene-umask");
    let path = scratch.path("agent.key");
    let output = keygen_with_open_umask(&path, false);
    assert_eq!(mode(&path), 0o600, "mode {:o} under umask 000", mode(&path));

    let seed = seed_line(&path);
    let identity =
        Identity::from_file_text(&std::fs::read_to_string(&path).expect("read")).expect("parse");
    let seed_hex: String = identity
        .to_seed()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(&seed), "keygen printed the seed: {text}");
        assert!(
            !text.contains(&seed_hex[..24]),
            "keygen printed the seed: {text}"
        );
    }

    // `pubkey` prints the public key only.
    let mut command = common::toolwire();
    command.arg("pubkey").arg(&path);
    let shown = run(command, DEADLINE);
    assert!(shown.status.success(), "{}", shown.stderr);
    assert!(!shown.stdout.contains(&seed) && !shown.stderr.contains(&seed));
}

#[test]
fn forced_replacement_of_a_world_readable_file_is_owner_only() {
    let scratch = Scratch::new("key-hygiene-force");
    let path = scratch.path("agent.key");
    std::fs::write(&path, "left here by someone\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    keygen_with_open_umask(&path, true);
    assert_eq!(mode(&path), 0o600, "mode {:o} after --force", mode(&path));
    assert!(std::fs::read_to_string(&path)
        .expect("read")
        .starts_with("toolwire-identity-v1\n"));
}

#[test]
fn a_malformed_identity_file_error_does_not_echo_its_content() {
    let scratch = Scratch::new("key-hygiene-error");
    let path = scratch.path("broken.key");
    // A real seed line under a wrong header: the error must not quote the line.
    let seed = Identity::generate(&mut rand_core::OsRng).to_file_text();
    let seed = seed.lines().nth(1).expect("seed line").to_owned();
    std::fs::write(&path, format!("not-an-identity\n{seed}\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut command = common::toolwire();
    command.arg("pubkey").arg(&path);
    let output = run(command, DEADLINE);
    assert!(!output.status.success(), "a malformed file is refused");
    assert!(
        !output.stderr.contains(&seed) && !output.stdout.contains(&seed),
        "the error echoed the secret: {}",
        output.stderr
    );
}

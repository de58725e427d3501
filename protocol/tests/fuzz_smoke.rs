//! Stable-toolchain smoke test of the fuzz targets.
//!
//! For every entry point in `toolwire_protocol::fuzzing::TARGETS` this runs the
//! entry over every file of `fuzz/corpus/<target>/` and over a deterministic set of
//! mutations of those seeds (bit flips, truncations, insertions, deletions,
//! overwrites with boundary bytes), plus a few synthetic size-limit inputs. Any panic
//! fails the test, naming the target and the input in hex.
//!
//! It also checks that every target has a `fuzz/fuzz_targets/<target>.rs`, a
//! `[[bin]]` in `fuzz/Cargo.toml` and a non-empty corpus, so a new entry point
//! without them fails here. The real fuzzing runs on nightly: `scripts/fuzz.sh`.

use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use toolwire_protocol::fuzzing::{Target, TARGETS};
use toolwire_protocol::record::{DEFAULT_MAX_BODY_LEN, HEADER_LEN};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/");
const CORPUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/");

/// Mutated inputs per target (spread over its seeds).
const MUTATIONS_PER_TARGET: usize = 320;
/// Inputs longer than this are reported by length and provenance, not in full hex.
const MAX_HEX_REPORT: usize = 16 * 1024;

/// SplitMix64: a tiny deterministic generator, so the mutations are the same on
/// every run and platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..bound` (`bound > 0`).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// FNV-1a, to derive a per-target, per-seed stream from names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xdc, 0xdf];

/// One mutation of `seed`; returns the input and a description of the mutation.
fn mutate(seed: &[u8], rng: &mut SplitMix) -> (Vec<u8>, String) {
    let mut input = seed.to_vec();
    let kind = if input.is_empty() { 2 } else { rng.below(6) };
    let description = match kind {
        0 => {
            let flips = 1 + rng.below(3);
            let mut at = Vec::new();
            for _ in 0..flips {
                let bit = rng.below(input.len() * 8);
                input[bit / 8] ^= 1 << (bit % 8);
                at.push(bit);
            }
            format!("bit flips at {at:?}")
        }
        1 => {
            let len = rng.below(input.len());
            input.truncate(len);
            format!("truncated to {len}")
        }
        2 => {
            let count = 1 + rng.below(4);
            let position = rng.below(input.len() + 1);
            let byte = if rng.below(2) == 0 {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                rng.next() as u8
            };
            input.splice(position..position, std::iter::repeat_n(byte, count));
            format!("inserted {count} x {byte:#04x} at {position}")
        }
        3 => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(8)).min(input.len());
            input.drain(start..end);
            format!("deleted {start}..{end}")
        }
        4 => {
            let position = rng.below(input.len());
            let byte = INTERESTING[rng.below(INTERESTING.len())];
            input[position] = byte;
            format!("byte {position} := {byte:#04x}")
        }
        _ => {
            // Append a copy of a slice of the input (duplicated fields, trailing data).
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(32)).min(input.len());
            let chunk = input[start..end].to_vec();
            input.extend_from_slice(&chunk);
            format!("appended copy of {start}..{end}")
        }
    };
    (input, description)
}

/// Synthetic inputs at and just past the size limits (the corpus stays small).
fn size_limit_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let record = |record_type: u8, body_len: usize| {
        let mut bytes = vec![0u8; HEADER_LEN + body_len];
        bytes[0] = 1;
        bytes[1] = record_type;
        bytes
    };
    match target {
        "record_header" | "sealed_record" => vec![
            ("max body".into(), record(0x10, DEFAULT_MAX_BODY_LEN)),
            (
                "max body + 1".into(),
                record(0x10, DEFAULT_MAX_BODY_LEN + 1),
            ),
        ],
        "handshake_message_1" | "handshake_message_2" | "handshake_message_3" => {
            let ty = target.as_bytes()[target.len() - 1] - b'0';
            vec![
                ("max body".into(), record(ty, DEFAULT_MAX_BODY_LEN)),
                ("max body + 1".into(), record(ty, DEFAULT_MAX_BODY_LEN + 1)),
            ]
        }
        "sealed_message" | "inner_message" | "client_hello_payload" | "manifest" => {
            // A msgpack bin32 of the largest plaintext that fits a record.
            let len = DEFAULT_MAX_BODY_LEN - 16 - 5;
            let mut bytes = vec![0xc6];
            bytes.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            bytes.resize(5 + len, 0x41);
            vec![("max plaintext".into(), bytes)]
        }
        "grant" => vec![
            (
                "8192 bytes".into(),
                b"v4.public.".repeat(820)[..8192].to_vec(),
            ),
            (
                "8193 bytes".into(),
                b"v4.public.".repeat(820)[..8193].to_vec(),
            ),
        ],
        _ => Vec::new(),
    }
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(CORPUS_DIR).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Runs `entry` on `input`; on a panic returns a report naming the target and input.
fn run_one(name: &str, entry: Target, input: &[u8], provenance: &str) -> Option<String> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| entry(input)));
    let payload = outcome.err()?;
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic>".into());
    let shown = if input.len() <= MAX_HEX_REPORT {
        hex(input)
    } else {
        format!("<{} bytes, see provenance>", input.len())
    };
    Some(format!(
        "target {name} panicked ({message}) on {provenance}, input ({} bytes): {shown}",
        input.len()
    ))
}

#[test]
fn every_target_has_a_fuzz_target_and_a_corpus() {
    let manifest = std::fs::read_to_string(Path::new(FUZZ_DIR).join("Cargo.toml"))
        .expect("fuzz/Cargo.toml exists");
    let mut missing = Vec::new();
    for (name, _) in TARGETS {
        let target_file = Path::new(FUZZ_DIR)
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        match std::fs::read_to_string(&target_file) {
            Ok(source) if source.contains(&format!("toolwire_protocol::fuzzing::{name}(")) => {}
            Ok(_) => missing.push(format!(
                "{} does not call fuzzing::{name}",
                target_file.display()
            )),
            Err(_) => missing.push(format!("no fuzz target file {}", target_file.display())),
        }
        if !manifest.contains(&format!("name = \"{name}\"")) {
            missing.push(format!("no [[bin]] {name} in fuzz/Cargo.toml"));
        }
        if corpus_files(name).is_empty() {
            missing.push(format!("no seeds in fuzz/corpus/{name}/"));
        }
    }
    // The other direction: no stale fuzz target without an entry point.
    let dir = Path::new(FUZZ_DIR).join("fuzz_targets");
    for entry in std::fs::read_dir(&dir)
        .expect("fuzz/fuzz_targets exists")
        .flatten()
    {
        let path = entry.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if path.extension().is_some_and(|e| e == "rs") && !TARGETS.iter().any(|(n, _)| *n == stem) {
            missing.push(format!(
                "{} has no entry in fuzzing::TARGETS",
                path.display()
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn targets_survive_corpus_and_mutations() {
    let mut failures = Vec::new();
    let mut runs = 0usize;
    for &(name, entry) in TARGETS {
        let seeds: Vec<(String, Vec<u8>)> = corpus_files(name)
            .into_iter()
            .filter_map(|path| {
                let label = path.file_name()?.to_string_lossy().into_owned();
                Some((label, std::fs::read(&path).ok()?))
            })
            .collect();
        for (label, bytes) in &seeds {
            runs += 1;
            failures.extend(run_one(name, entry, bytes, &format!("seed {label}")));
        }
        for (label, bytes) in size_limit_inputs(name) {
            runs += 1;
            failures.extend(run_one(name, entry, &bytes, &format!("synthetic {label}")));
        }
        if seeds.is_empty() {
            continue; // reported by every_target_has_a_fuzz_target_and_a_corpus
        }
        let mut rng = SplitMix(fnv1a(name.as_bytes()));
        for i in 0..MUTATIONS_PER_TARGET {
            let (label, seed) = &seeds[i % seeds.len()];
            let (input, description) = mutate(seed, &mut rng);
            runs += 1;
            failures.extend(run_one(
                name,
                entry,
                &input,
                &format!("mutation #{i} of seed {label} ({description})"),
            ));
        }
    }
    assert!(runs > 0);
    assert!(
        failures.is_empty(),
        "{} of {runs} fuzz inputs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

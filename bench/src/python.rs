//! Scenario 5: Python. `bench/python/bench.py` measures, in one run, the `toolwire`
//! Python client against a `toolwire` Python tool server, a `websockets` echo, and
//! the MCP Python SDK calling a trivial tool over its streamable HTTP transport.
//! This module prepares its virtualenv (pinned `bench/python/requirements.txt` plus
//! the package built from `bindings/`) and runs it.

use crate::util::{fail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `bench/python`.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The interpreter of the benchmark's virtualenv.
pub fn venv_python() -> PathBuf {
    python_dir().join(".venv/bin/python")
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!("{what} failed: {status}")))
    }
}

/// Creates `bench/python/.venv` when missing (with `$PYTHON` or `python3`), installs
/// the pinned requirements, and builds and installs the `toolwire` package from
/// `bindings/` (release mode, `--locked`; warm, this takes seconds).
///
/// # Errors
/// When a step fails.
pub fn prepare_venv() -> Result<PathBuf> {
    let dir = python_dir();
    let venv = dir.join(".venv");
    let python = venv_python();
    if !python.exists() {
        let interpreter = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            Command::new(interpreter).arg("-m").arg("venv").arg(&venv),
            "creating the virtualenv",
        )?;
    }
    let quiet = ["--quiet", "--disable-pip-version-check", "--no-input"];
    run(
        Command::new(&python)
            .args(["-m", "pip", "install"])
            .args(quiet)
            .arg("-r")
            .arg(dir.join("requirements.txt")),
        "pip install -r bench/python/requirements.txt",
    )?;
    let bindings = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(
        Command::new(&python)
            .args(["-m", "pip", "install"])
            .args(quiet)
            .args(["--no-build-isolation", "--force-reinstall", "--no-deps"])
            .arg(&bindings)
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", path)
            .env("MATURIN_PEP517_ARGS", "--locked"),
        "building the toolwire Python package",
    )?;
    Ok(python)
}

/// One row of the Python table.
#[derive(Debug, Clone, Default)]
pub struct PythonRow {
    /// Row label.
    pub label: String,
    /// Sequential calls per second on one connection.
    pub sequential_per_sec: f64,
    /// Sequential p50 latency, µs.
    pub sequential_p50_us: f64,
    /// Calls per second over the concurrent connections.
    pub concurrent_per_sec: f64,
    /// p50 latency under concurrency, µs.
    pub concurrent_p50_us: f64,
    /// Calls made, all answered correctly.
    pub calls: u64,
}

/// Result of scenario 5.
#[derive(Debug, Clone, Default)]
pub struct PythonFigures {
    /// `toolwire`, `websockets`, `mcp`, in that order.
    pub rows: Vec<PythonRow>,
    /// Concurrent connections.
    pub concurrency: u64,
    /// Package versions, as the script reports them.
    pub versions: String,
}

fn number(value: &serde_json::Value, key: &str) -> f64 {
    value
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN)
}

/// Runs `bench.py` with `python` and parses its JSON report.
///
/// # Errors
/// When the script fails or prints no report.
pub fn run_script(python: &Path, args: &[&str]) -> Result<PythonFigures> {
    let output = Command::new(python)
        .arg(python_dir().join("bench.py"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(fail(format!("bench.py failed: {}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| fail("bench.py printed no JSON report"))?;
    let rows = report
        .get("rows")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| fail("bench.py report has no rows"))?
        .iter()
        .map(|row| PythonRow {
            label: row
                .get("label")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            sequential_per_sec: number(row, "sequential_per_sec"),
            sequential_p50_us: number(row, "sequential_p50_us"),
            concurrent_per_sec: number(row, "concurrent_per_sec"),
            concurrent_p50_us: number(row, "concurrent_p50_us"),
            calls: row
                .get("calls")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
        .collect();
    Ok(PythonFigures {
        rows,
        concurrency: report
            .get("concurrency")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        versions: report
            .get("versions")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

//! Smoke test of the benchmarks: every scenario at a tiny size, over real loopback
//! sockets, asserting only that the results are right (every echo checked, every
//! connection counted, floods refused with the right code). No timing asserts.

use std::path::Path;
use toolwire_bench::calls::System;
use toolwire_bench::memory::IdleKind;
use toolwire_bench::{calls, flood, handshake, memory, python, report, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rust_scenario_runs_and_answers_correctly() {
    let settings = Settings::smoke();

    // 1. Calls: every system, every size; `Conn::call` checks each echo.
    let rows = calls::run(&settings.calls).await.expect("calls run");
    assert_eq!(rows.len(), System::ALL.len() * settings.calls.sizes.len());
    for (system, size, figures) in &rows {
        // At least one sequential call and one per concurrent connection, each
        // answered with its own argument.
        assert!(
            figures.calls > settings.calls.connections as u64,
            "{system:?} at {size} B: {} calls",
            figures.calls
        );
    }

    // 2. Handshakes: each one completed with the grant naming the echo tool.
    let handshakes = handshake::run(&settings.handshakes)
        .await
        .expect("handshakes run");
    assert!(handshakes.handshakes > 0);
    assert!(handshakes.bound_per_sec > 0.0);

    // 3. Idle connections, counted in the server process's descriptor table.
    let exe = Path::new(env!("CARGO_BIN_EXE_toolwire-bench"));
    let mut idle = Vec::new();
    for kind in IdleKind::ALL {
        let figures = memory::measure(exe, kind, settings.idle_counts[0], settings.idle_settle)
            .await
            .expect("idle connections open");
        assert!(
            figures.server_sockets > settings.idle_counts[0],
            "{kind:?}: the server holds {} sockets for {} connections and a listener",
            figures.server_sockets,
            settings.idle_counts[0]
        );
        assert!(figures.rss_after > 0);
        idle.push(figures);
    }

    // 4. Flood: every well-behaved call answered; the flooder was refused with
    // RESOURCE_EXHAUSTED.
    let flood = flood::run(&settings.flood).await.expect("flood runs");
    assert!(flood.good_calls > 0);
    assert!(
        flood.flood_refused > 0,
        "the flooder was never refused: {flood:?}"
    );

    let text = report::render(&report::Report {
        crypto: Some(handshakes.crypto),
        calls: Some((rows, settings.calls.connections, 1, 0.05)),
        handshakes: Some(handshakes),
        idle,
        flood: Some((
            flood,
            settings.flood.clients,
            10,
            settings.flood.flood_in_flight,
        )),
        python: None,
        python_skipped: Some("smoke test".into()),
    });
    for heading in ["## 1.", "## 2.", "## 3.", "## 4.", "## 5."] {
        assert!(text.contains(heading), "{heading} missing from\n{text}");
    }
}

#[test]
fn python_scenario_runs_when_its_virtualenv_exists() {
    let python = python::venv_python();
    let importable = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import toolwire, websockets, mcp"])
            .status()
            .is_ok_and(|status| status.success());
    if !importable {
        // Building the venv (pinned requirements plus a release build of the Python
        // extension) takes minutes: too slow for the test suite. The benchmark
        // command builds it; this test then covers it.
        eprintln!(
            "skipped: {} with toolwire, websockets and mcp is absent; `cargo run --release -p toolwire-bench -- python` creates it",
            python.display()
        );
        return;
    }
    let settings = Settings::smoke();
    let args: Vec<&str> = settings.python_args.iter().map(String::as_str).collect();
    let figures = python::run_script(&python, &args).expect("bench.py runs");
    assert_eq!(figures.rows.len(), 3, "{figures:?}");
    for row in &figures.rows {
        assert!(row.calls > 0, "{} made no call", row.label);
    }
}

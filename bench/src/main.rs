//! `toolwire-bench`: runs the benchmarks and prints the table.
//!
//! ```text
//! cargo run --release -p toolwire-bench -- all            # everything (< 10 min on 2 cores)
//! cargo run --release -p toolwire-bench -- calls|handshakes|memory|flood|python
//! cargo run --release -p toolwire-bench -- all --quick    # one short repetition each
//! cargo run --release -p toolwire-bench -- all --no-python
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};
use toolwire_bench::report::{render, Report};
use toolwire_bench::util::{fail, raise_nofile_limit, Result};
use toolwire_bench::{calls, flood, handshake, memory, python, Settings};

const USAGE: &str =
    "usage: toolwire-bench all|calls|handshakes|memory|flood|python [--quick] [--no-python]";

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}, {rustc}")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

async fn run(command: &str, quick: bool, with_python: bool) -> Result<()> {
    let mut settings = Settings::full();
    if quick {
        settings.calls.reps = 1;
        settings.calls.duration = Duration::from_millis(500);
        settings.handshakes.reps = 1;
        settings.idle_counts = vec![1_000];
        settings.flood.reps = 1;
        settings.python_args = ["--reps", "1", "--duration", "0.5", "--concurrency", "64"]
            .map(String::from)
            .to_vec();
    }
    let every = command == "all";
    let started = Instant::now();
    println!("toolwire-bench {command}: {}", machine());
    println!("load average at start (1/5/15 min): {}\n", load());
    let nofile = raise_nofile_limit();
    let mut report = Report {
        crypto: Some(handshake::measure_crypto(Duration::from_millis(300))),
        ..Report::default()
    };
    if every || command == "calls" {
        eprintln!("[1/5] calls ...");
        let rows = calls::run(&settings.calls).await?;
        report.calls = Some((
            rows,
            settings.calls.connections,
            settings.calls.reps,
            settings.calls.duration.as_secs_f64(),
        ));
    }
    if every || command == "handshakes" {
        eprintln!("[2/5] handshakes ...");
        report.handshakes = Some(handshake::run(&settings.handshakes).await?);
    }
    if every || command == "memory" {
        eprintln!("[3/5] idle memory ...");
        let exe: PathBuf = std::env::current_exe()?;
        for count in &settings.idle_counts {
            // Each side holds one descriptor per connection, plus a margin.
            if (*count as u64) + 256 > nofile {
                eprintln!("skipping {count} idle connections: open-file limit {nofile}");
                continue;
            }
            for kind in memory::IdleKind::ALL {
                report
                    .idle
                    .push(memory::measure(&exe, kind, *count, settings.idle_settle).await?);
            }
        }
    }
    if every || command == "flood" {
        eprintln!("[4/5] flood ...");
        let figures = flood::run(&settings.flood).await?;
        report.flood = Some((
            figures,
            settings.flood.clients,
            u64::try_from(settings.flood.interval.as_millis()).unwrap_or(0),
            settings.flood.flood_in_flight,
        ));
    }
    if (every && with_python) || command == "python" {
        eprintln!("[5/5] python: preparing bench/python/.venv (pinned requirements, toolwire from bindings/) ...");
        let python = tokio::task::spawn_blocking(python::prepare_venv).await??;
        eprintln!("[5/5] python: running bench.py ...");
        let args = settings.python_args.clone();
        let figures = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            python::run_script(&python, &args)
        })
        .await??;
        report.python = Some(figures);
    } else if every {
        report.python_skipped = Some("--no-python".into());
    }
    print!("{}", render(&report));
    println!(
        "load average at end (1/5/15 min): {}; run took {:.0} s",
        load(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn profile_calls(count: usize, size: usize, connections: usize) -> Result<()> {
    let running =
        std::sync::Arc::new(calls::Running::start(calls::System::ToolwireUnsigned).await?);
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let mut conn = running.connect(size).await?;
        tasks.push(tokio::spawn(async move {
            for _ in 0..count / connections.max(1) {
                conn.call().await?;
            }
            Ok::<_, toolwire_bench::util::BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().map(String::as_str) else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let outcome = match command {
        "idle-server" => {
            let kind = args.get(1).and_then(|name| memory::IdleKind::parse(name));
            let client = args.get(2).and_then(|key| key.parse().ok());
            match kind {
                Some(kind) => memory::idle_server(kind, client).await,
                None => Err(fail(USAGE)),
            }
        }
        // Hidden: N sequential 64 B calls, signatures off, for a profiler
        // (`valgrind --tool=callgrind toolwire-bench profile-calls 2000 [SIZE [CONNECTIONS]]`).
        "profile-calls" => {
            let count = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000usize);
            let size = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(64usize);
            let connections = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1usize);
            profile_calls(count, size, connections).await
        }
        "all" | "calls" | "handshakes" | "memory" | "flood" | "python" => {
            let quick = args.iter().any(|arg| arg == "--quick");
            let with_python = !args.iter().any(|arg| arg == "--no-python");
            run(command, quick, with_python).await
        }
        _ => Err(fail(USAGE)),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("toolwire-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

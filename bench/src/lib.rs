//! # toolwire-bench
//!
//! Benchmarks of toolwire side by side with its baselines, in one run, on loopback:
//!
//! 1. [`calls`]: call throughput and latency of a trivial echo tool — toolwire with
//!    envelope signatures on and off, a raw tokio-tungstenite echo (the transport's
//!    limit) and jsonrpsee over WebSocket;
//! 2. [`handshake`]: handshakes per second against the bound from this CPU's
//!    X25519 and Ed25519 rates measured in the same run;
//! 3. [`memory`]: server memory per idle authenticated connection against raw
//!    tokio-tungstenite idle connections (servers in child processes);
//! 4. [`flood`]: well-behaved clients' latency while one client floods;
//! 5. [`python`]: the Python package against `websockets` and the MCP Python SDK.
//!
//! `cargo run --release -p toolwire-bench -- all` runs everything and prints the
//! table ([`report::render`]); `tests/smoke.rs` runs each scenario at a tiny size and
//! checks only that the results are right.

#![forbid(unsafe_code)]

pub mod calls;
pub mod flood;
pub mod handshake;
pub mod memory;
pub mod python;
pub mod report;
pub mod util;

use std::time::Duration;

/// Sizes, durations and repetitions of every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scenario 1.
    pub calls: calls::CallSettings,
    /// Scenario 2.
    pub handshakes: handshake::HandshakeSettings,
    /// Scenario 3: idle connection counts.
    pub idle_counts: Vec<usize>,
    /// Scenario 3: wait before each RSS reading.
    pub idle_settle: Duration,
    /// Scenario 4.
    pub flood: flood::FloodSettings,
    /// Scenario 5: arguments of `bench.py`.
    pub python_args: Vec<String>,
}

/// Rate limits low enough that a debug build's flooder exceeds them with its first
/// batch of calls in flight, while clients making two or three calls per phase stay
/// within them.
fn smoke_flood_limits() -> toolwire_server::Limits {
    let mut limits = toolwire_server::Limits::default();
    limits.rate_per_sec = 1;
    limits.burst = 6;
    limits.per_tool_rate_per_sec = 1;
    limits.per_tool_burst = 6;
    limits
}

impl Settings {
    /// The full benchmark (about 6 minutes on 2 cores, the Python build excluded).
    pub fn full() -> Self {
        Self {
            calls: calls::CallSettings {
                sizes: vec![64, 4096],
                connections: 64,
                reps: 3,
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(1500),
            },
            handshakes: handshake::HandshakeSettings {
                parallel: 8,
                reps: 3,
                duration: Duration::from_secs(2),
                crypto_budget: Duration::from_millis(300),
            },
            idle_counts: vec![1_000, 10_000],
            idle_settle: Duration::from_millis(1500),
            flood: flood::FloodSettings {
                clients: 8,
                interval: Duration::from_millis(20),
                flood_in_flight: 64,
                duration: Duration::from_secs(3),
                reps: 3,
                limits: toolwire_server::Limits::default(),
            },
            python_args: ["--reps", "3", "--duration", "1.5", "--concurrency", "64"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// A tiny run for the smoke test: every scenario, correctness only.
    pub fn smoke() -> Self {
        Self {
            calls: calls::CallSettings {
                sizes: vec![64, 4096],
                connections: 4,
                reps: 1,
                warmup: Duration::from_millis(10),
                duration: Duration::from_millis(50),
            },
            handshakes: handshake::HandshakeSettings {
                parallel: 2,
                reps: 1,
                duration: Duration::from_millis(100),
                crypto_budget: Duration::from_millis(5),
            },
            idle_counts: vec![20],
            idle_settle: Duration::from_millis(50),
            flood: flood::FloodSettings {
                clients: 2,
                interval: Duration::from_millis(300),
                flood_in_flight: 16,
                duration: Duration::from_millis(300),
                reps: 1,
                limits: smoke_flood_limits(),
            },
            python_args: ["--reps", "1", "--duration", "0.1", "--concurrency", "4"]
                .map(String::from)
                .to_vec(),
        }
    }
}

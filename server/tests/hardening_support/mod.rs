//! Shared helpers of the `hardening_*` tests: memory figures from `/proc`, raw
//! attacker connections from chosen loopback addresses, a collecting alert sink, and
//! latency percentiles of a well-behaved client.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use toolwire_server::protocol::events::EventName;
use toolwire_server::{Alert, AlertSink};

/// Resident set size of process `pid` (`"self"` for this one), in KiB, from
/// `/proc/<pid>/status` (`VmRSS`).
pub(crate) fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The soft limit of open files of this process.
pub(crate) fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// Raises this process's soft limit of open files to `wanted` (capped by the hard
/// limit) with `prlimit(1)`, so no `unsafe` is needed; returns the limit in force.
pub(crate) fn raise_open_files_limit(wanted: u64) -> u64 {
    if open_files_limit() < wanted {
        let pid = std::process::id().to_string();
        let hard = std::fs::read_to_string("/proc/self/limits")
            .unwrap_or_default()
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(4))
            .and_then(|hard| hard.parse::<u64>().ok())
            .unwrap_or(wanted);
        let target = wanted.min(hard);
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={target}:{hard}")])
            .status();
    }
    open_files_limit()
}

/// A TCP connection to `server` from loopback address `from` (any port).
pub(crate) async fn connect_from(from: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(server).await
}

/// The bytes of a valid WebSocket upgrade request offering `toolwire.v1`.
pub(crate) fn upgrade_request_bytes(server: SocketAddr, origin: Option<&str>) -> Vec<u8> {
    let origin = origin
        .map(|origin| format!("Origin: {origin}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /toolwire HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: toolwire.v1\r\n{origin}\r\n"
    )
    .into_bytes()
}

/// Reads an HTTP response head (up to the blank line, at most 4 KiB) and returns its
/// status code; `None` when the connection ended first or within `wait` nothing came.
pub(crate) async fn read_status(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while head.len() < 4096 && !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Opens a connection from `from`, sends a complete upgrade request and returns the
/// stream and the HTTP status of the answer.
pub(crate) async fn upgrade_from(
    from: IpAddr,
    server: SocketAddr,
) -> std::io::Result<(TcpStream, Option<u16>)> {
    let mut stream = connect_from(from, server).await?;
    stream
        .write_all(&upgrade_request_bytes(server, None))
        .await?;
    let status = read_status(&mut stream, Duration::from_secs(20)).await;
    Ok((stream, status))
}

/// An alert sink collecting every alert.
#[derive(Clone, Default)]
pub(crate) struct Collected(pub(crate) Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Collected {
    fn alert(&self, alert: &Alert) {
        if let Ok(mut alerts) = self.0.lock() {
            alerts.push(alert.clone());
        }
    }
}

impl Collected {
    /// The alerts named `name` so far.
    pub(crate) fn named(&self, name: EventName) -> Vec<Alert> {
        self.0
            .lock()
            .map(|alerts| {
                alerts
                    .iter()
                    .filter(|alert| alert.record.event.name() == name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A summary `name x count` of every alert so far.
    pub(crate) fn summary(&self) -> String {
        let alerts = self
            .0
            .lock()
            .map(|alerts| alerts.clone())
            .unwrap_or_default();
        let mut counts = std::collections::BTreeMap::new();
        for alert in &alerts {
            *counts
                .entry(alert.record.event.name().as_str().to_owned())
                .or_insert(0u32) += 1;
        }
        format!("{counts:?}")
    }

    /// Waits (at most 5 s) for at least one alert named `name`.
    pub(crate) async fn wait(&self, name: EventName) -> Vec<Alert> {
        for _ in 0..500 {
            let alerts = self.named(name);
            if !alerts.is_empty() {
                return alerts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no `{}` alert; alerts: {}", name.as_str(), self.summary());
    }
}

/// Latency figures of a series of calls.
#[derive(Debug)]
pub(crate) struct Latencies {
    pub(crate) count: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Latencies {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |fraction: f64| {
            let index = ((samples.len() as f64) * fraction).ceil() as usize;
            samples
                .get(index.saturating_sub(1).min(samples.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            count: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.count,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// Runs `count` sequential `echo` calls on `session`, each bounded, failing the test
/// on any error; returns their latencies.
pub(crate) async fn good_client_calls(
    session: &toolwire_client::Session,
    count: usize,
) -> Latencies {
    good_client_calls_paced(session, count, Duration::ZERO).await
}

/// [`good_client_calls`] with `pause` between calls (to stay within a rate budget).
pub(crate) async fn good_client_calls_paced(
    session: &toolwire_client::Session,
    count: usize,
    pause: Duration,
) -> Latencies {
    let mut samples = Vec::with_capacity(count);
    for index in 0..count {
        let text = format!("good {index}");
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            session.call("echo", &serde_json::json!({"text": text})),
        )
        .await
        .unwrap_or_else(|_| panic!("good call {index} timed out"))
        .unwrap_or_else(|error| panic!("good call {index} failed: {error}"));
        samples.push(started.elapsed());
        assert_eq!(answer["text"], text);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Latencies::of(samples)
}

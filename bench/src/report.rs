//! The printed table: every figure next to its baseline, as a ratio, with the
//! issue's targets marked met or missed.

use crate::calls::{CallFigures, System};
use crate::flood::FloodFigures;
use crate::handshake::{CryptoCosts, HandshakeFigures};
use crate::memory::{IdleFigures, IdleKind};
use crate::python::PythonFigures;
use crate::util::ratio;
use std::fmt::Write as _;

/// Scenario 1's rows, with its connections, repetitions and seconds per measurement.
pub type CallsSection = (Vec<(System, usize, CallFigures)>, usize, usize, f64);

/// Everything one run measured (scenarios not run are `None`).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Primitive costs, measured first.
    pub crypto: Option<CryptoCosts>,
    /// Scenario 1 rows and its settings (connections, reps, seconds).
    pub calls: Option<CallsSection>,
    /// Scenario 2.
    pub handshakes: Option<HandshakeFigures>,
    /// Scenario 3.
    pub idle: Vec<IdleFigures>,
    /// Scenario 4 and its settings (clients, interval ms, in flight).
    pub flood: Option<(FloodFigures, usize, u64, usize)>,
    /// Scenario 5.
    pub python: Option<PythonFigures>,
    /// Why scenario 5 did not run, if it did not.
    pub python_skipped: Option<String>,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Renders the report as plain text (Markdown tables).
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(crypto) = &report.crypto {
        let _ = writeln!(
            out,
            "Primitives on one core: X25519 keygen {:.1} µs, X25519 DH {:.1} µs, Ed25519 sign {:.1} µs, Ed25519 verify_strict {:.1} µs\n",
            crypto.x25519_keygen_us, crypto.x25519_dh_us, crypto.ed25519_sign_us, crypto.ed25519_verify_us
        );
    }
    if let Some((rows, connections, reps, seconds)) = &report.calls {
        render_calls(
            &mut out,
            rows,
            *connections,
            *reps,
            *seconds,
            report.crypto,
            cores,
        );
    }
    if let Some(handshakes) = &report.handshakes {
        let share = ratio(handshakes.per_sec, handshakes.bound_per_sec);
        let _ = writeln!(out, "## 2. Handshakes (TCP + upgrade + Noise XX + identity signatures + CAP_GRANT), 8 clients in parallel loops\n");
        let _ = writeln!(out, "| | handshakes/s | ratio |\n|---|---:|---:|");
        let _ = writeln!(
            out,
            "| toolwire, measured | {:.0} | {:.2}× the bound |",
            handshakes.per_sec, share
        );
        let _ = writeln!(
            out,
            "| bound: {} cores / ({:.0} µs of X25519 + Ed25519 per handshake: 3 keygen, 6 DH, 1 sign, 3 verify) | {:.0} | 1.00 |",
            handshakes.cores,
            handshakes.crypto.handshake_us(),
            handshakes.bound_per_sec
        );
        let _ = writeln!(
            out,
            "\ntarget handshakes/s ≥ 0.60× bound: {} ({:.2}×); {} handshakes in total\n",
            verdict(share >= 0.6),
            share,
            handshakes.handshakes
        );
    }
    if !report.idle.is_empty() {
        render_idle(&mut out, &report.idle);
    }
    if let Some((flood, clients, interval_ms, in_flight)) = &report.flood {
        let growth = ratio(flood.flood_p99_us, flood.quiet_p99_us);
        let _ = writeln!(out, "## 4. Flood fairness: {clients} well-behaved clients (one call per {interval_ms} ms each), default limits; the flooder keeps {in_flight} calls in flight and reconnects when closed\n");
        let _ = writeln!(
            out,
            "| well-behaved clients | p50 µs | p99 µs |\n|---|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| without the flood | {:.0} | {:.0} |",
            flood.quiet_p50_us, flood.quiet_p99_us
        );
        let _ = writeln!(
            out,
            "| during the flood | {:.0} | {:.0} |",
            flood.flood_p50_us, flood.flood_p99_us
        );
        let _ = writeln!(
            out,
            "\nflooder: {:.0} calls/s attempted, {} refused RESOURCE_EXHAUSTED, {} served, closed and reconnected {} times; well-behaved calls: {}, all answered",
            flood.flood_attempts_per_sec, flood.flood_refused, flood.flood_served, flood.flood_reconnects, flood.good_calls
        );
        let _ = writeln!(
            out,
            "target p99 grows < 2× under flood: {} ({:.2}×)\n",
            verdict(growth < 2.0),
            growth
        );
    }
    if let Some(python) = &report.python {
        render_python(&mut out, python);
    } else if let Some(reason) = &report.python_skipped {
        let _ = writeln!(out, "## 5. Python\n\nnot run: {reason}\n");
    }
    out
}

fn render_calls(
    out: &mut String,
    rows: &[(System, usize, CallFigures)],
    connections: usize,
    reps: usize,
    seconds: f64,
    crypto: Option<CryptoCosts>,
    cores: usize,
) {
    let _ = writeln!(out, "## 1. Calls: trivial echo tool, loopback; median of {reps} repetitions of {seconds:.1} s each\n");
    let _ = writeln!(out, "| args | system | 1 conn p50 µs | 1 conn p99 µs | 1 conn calls/s | {connections} conns calls/s | ×raw | ×jsonrpsee |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    let find = |system: System, size: usize| {
        rows.iter()
            .find(|(s, z, _)| *s == system && *z == size)
            .map(|(_, _, figures)| figures.clone())
    };
    let mut sizes: Vec<usize> = rows.iter().map(|(_, size, _)| *size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut targets = Vec::new();
    for size in &sizes {
        let raw = find(System::RawEcho, *size).unwrap_or_default();
        let rpc = find(System::Jsonrpsee, *size).unwrap_or_default();
        for system in System::ALL {
            let Some(figures) = find(system, *size) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                size_label(*size),
                system.label(),
                figures.p50_us,
                figures.p99_us,
                figures.sequential_per_sec,
                figures.concurrent_per_sec,
                ratio(figures.concurrent_per_sec, raw.concurrent_per_sec),
                ratio(figures.concurrent_per_sec, rpc.concurrent_per_sec),
            );
        }
        let Some(off) = find(System::ToolwireUnsigned, *size) else {
            continue;
        };
        let (raw_floor, rpc_floor) = if *size <= 64 {
            (0.65, 1.0)
        } else {
            (0.45, 1.3)
        };
        let vs_raw = ratio(off.concurrent_per_sec, raw.concurrent_per_sec);
        let vs_rpc = ratio(off.concurrent_per_sec, rpc.concurrent_per_sec);
        targets.push(format!(
            "{}: signatures off, {connections} conns ≥ {raw_floor:.2}× raw: {} ({vs_raw:.2}×); ≥ {rpc_floor:.1}× jsonrpsee: {} ({vs_rpc:.2}×)",
            size_label(*size),
            verdict(vs_raw >= raw_floor),
            verdict(vs_rpc >= rpc_floor)
        ));
        targets.push(format!(
            "{}: signatures off, 1 conn p50 ≤ raw p50 + 10 µs: {} ({:.0} vs {:.0} µs); p99 ≤ 2× raw p99: {} ({:.0} vs {:.0} µs)",
            size_label(*size),
            verdict(off.p50_us <= raw.p50_us + 10.0),
            off.p50_us,
            raw.p50_us,
            verdict(off.p99_us <= 2.0 * raw.p99_us),
            off.p99_us,
            raw.p99_us
        ));
        if let (Some(on), Some(crypto)) = (find(System::ToolwireSigned, *size), crypto) {
            // Per call: the client signs the request and verifies the response, the
            // server verifies the request and signs the response.
            let per_call_us = 2.0 * crypto.ed25519_sign_us + 2.0 * crypto.ed25519_verify_us;
            let allowed = cores as f64 * 1e6 / per_call_us;
            let share = ratio(on.concurrent_per_sec, allowed);
            targets.push(format!(
                "{}: signatures on ≥ 0.80× the rate Ed25519 alone allows ({cores} cores / {per_call_us:.0} µs for 2 sign + 2 verify = {allowed:.0} calls/s): {} ({share:.2}×)",
                size_label(*size),
                verdict(share >= 0.8)
            ));
        }
    }
    let total: u64 = rows.iter().map(|(_, _, figures)| figures.calls).sum();
    let _ = writeln!(out);
    for target in targets {
        let _ = writeln!(out, "- target {target}");
    }
    let _ = writeln!(out, "\n{total} calls, every answer checked\n");
}

fn render_idle(out: &mut String, idle: &[IdleFigures]) {
    let _ = writeln!(out, "## 3. Server memory per idle connection (server alone in a child process; RSS growth / connections)\n");
    let _ = writeln!(
        out,
        "| server | connections | server sockets | RSS growth | per connection | ×raw 4 KiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mut targets = Vec::new();
    for figures in idle {
        let raw = idle
            .iter()
            .find(|other| {
                other.kind == IdleKind::RawSmallBuffers && other.connections == figures.connections
            })
            .map(IdleFigures::per_connection)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} MiB | {:.1} KiB | {:.2} |",
            figures.kind.label(),
            figures.connections,
            figures.server_sockets,
            figures.rss_after.saturating_sub(figures.rss_before) as f64 / 1048576.0,
            figures.per_connection() / 1024.0,
            ratio(figures.per_connection(), raw)
        );
        if figures.kind == IdleKind::Toolwire {
            targets.push(format!(
                "target ≤ 16 KiB per idle authenticated connection at {}: {} ({:.1} KiB)",
                figures.connections,
                verdict(figures.per_connection() <= 16.0 * 1024.0),
                figures.per_connection() / 1024.0
            ));
        }
    }
    let _ = writeln!(out);
    for target in targets {
        let _ = writeln!(out, "- {target}");
    }
    let _ = writeln!(out);
}

fn render_python(out: &mut String, python: &PythonFigures) {
    let _ = writeln!(
        out,
        "## 5. Python, client and server in separate processes ({})\n",
        python.versions
    );
    let _ = writeln!(out, "| system | 1 conn calls/s | 1 conn p50 µs | {} conns calls/s | {} conns p50 µs | ×MCP (1 / {}) | ×websockets (1 / {}) |", python.concurrency, python.concurrency, python.concurrency, python.concurrency);
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mcp = python.rows.iter().find(|row| row.label.contains("MCP"));
    let ws = python
        .rows
        .iter()
        .find(|row| row.label.contains("websockets"));
    for row in &python.rows {
        let (m1, mc) = mcp.map_or((f64::NAN, f64::NAN), |m| {
            (
                ratio(row.sequential_per_sec, m.sequential_per_sec),
                ratio(row.concurrent_per_sec, m.concurrent_per_sec),
            )
        });
        let (w1, wc) = ws.map_or((f64::NAN, f64::NAN), |w| {
            (
                ratio(row.sequential_per_sec, w.sequential_per_sec),
                ratio(row.concurrent_per_sec, w.concurrent_per_sec),
            )
        });
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {m1:.1} / {mc:.1} | {w1:.2} / {wc:.2} |",
            row.label,
            row.sequential_per_sec,
            row.sequential_p50_us,
            row.concurrent_per_sec,
            row.concurrent_p50_us
        );
    }
    if let (Some(tw), Some(mcp), Some(ws)) = (
        python
            .rows
            .iter()
            .find(|row| row.label.contains("toolwire")),
        mcp,
        ws,
    ) {
        let seq = ratio(tw.sequential_per_sec, mcp.sequential_per_sec);
        let conc = ratio(tw.concurrent_per_sec, mcp.concurrent_per_sec);
        let _ = writeln!(
            out,
            "\n- target ≥ 10× MCP calls/s: sequential {} ({seq:.1}×), concurrent {} ({conc:.1}×)",
            verdict(seq >= 10.0),
            verdict(conc >= 10.0)
        );
        let _ = writeln!(
            out,
            "- target p50 ≤ 150 µs (sequential): {} ({:.0} µs)",
            verdict(tw.sequential_p50_us <= 150.0),
            tw.sequential_p50_us
        );
        let share = ratio(tw.concurrent_per_sec, ws.concurrent_per_sec);
        let _ = writeln!(
            out,
            "- stretch ≥ 0.50× websockets echo calls/s (concurrent): {} ({share:.2}×; sequential {:.2}×)",
            verdict(share >= 0.5),
            ratio(tw.sequential_per_sec, ws.sequential_per_sec)
        );
    }
    let calls: u64 = python.rows.iter().map(|row| row.calls).sum();
    let _ = writeln!(out, "\n{calls} calls, every answer checked\n");
}

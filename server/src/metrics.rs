//! Server metrics behind the [`metrics`] crate facade: the embedding application
//! installs any recorder (Prometheus exporter, OpenTelemetry bridge, ...); without
//! one every update is a no-op.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `toolwire_connections_opened_total` | counter | — |
//! | `toolwire_connections_closed_total` | counter | `close_code` (number) |
//! | `toolwire_handshakes_total` | counter | `outcome`: `ok` / `failed` |
//! | `toolwire_calls_total` | counter | `tool`, `outcome`: `ok`, `cached`, or an error code name |
//! | `toolwire_denials_total` | counter | `reason`: the refusing step (AUTHZ-002) |
//! | `toolwire_call_duration_seconds` | histogram | `tool` |
//! | `toolwire_records_total` | counter | `direction`: `in` / `out` |
//! | `toolwire_bytes_total` | counter | `direction`: `in` / `out` |
//! | `toolwire_security_events_total` | counter | `event` (spec section 18 name) |
//! | `toolwire_alerts_total` | counter | `event` |
//! | `toolwire_alerts_dropped_total` | counter | — |
//!
//! Label values are bounded: `tool` is a tool of the server's manifest or `unknown`
//! (a peer cannot create series by calling made-up names), codes and steps come from
//! fixed tables.

use metrics::Counter;
use std::time::Duration;
use toolwire_protocol::events::EventName;
use toolwire_protocol::CloseCode;

/// Counts an accepted connection (after the upgrade).
pub(crate) fn connection_opened() {
    metrics::counter!("toolwire_connections_opened_total").increment(1);
}

/// Counts a closed connection by close code.
pub(crate) fn connection_closed(code: CloseCode) {
    metrics::counter!("toolwire_connections_closed_total", "close_code" => code.0.to_string())
        .increment(1);
}

/// Counts a handshake outcome.
pub(crate) fn handshake(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!("toolwire_handshakes_total", "outcome" => outcome).increment(1);
}

/// Counts a call's outcome; `tool` is a manifest tool name or `unknown`.
pub(crate) fn call(tool: &str, outcome: &'static str) {
    metrics::counter!("toolwire_calls_total", "tool" => tool.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts a refused call by refusing step.
pub(crate) fn denial(reason: &'static str) {
    metrics::counter!("toolwire_denials_total", "reason" => reason).increment(1);
}

/// Records how long an executed call took, from admission to its answer.
pub(crate) fn call_duration(tool: &str, elapsed: Duration) {
    metrics::histogram!("toolwire_call_duration_seconds", "tool" => tool.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Counts a security event (every one, alert or not).
pub(crate) fn security_event(name: EventName) {
    metrics::counter!("toolwire_security_events_total", "event" => name.as_str()).increment(1);
}

/// Counts an alert handed to the alert sink.
pub(crate) fn alert(name: EventName) {
    metrics::counter!("toolwire_alerts_total", "event" => name.as_str()).increment(1);
}

/// Counts an alert a sink dropped because its queue was full.
pub(crate) fn alert_dropped() {
    metrics::counter!("toolwire_alerts_dropped_total").increment(1);
}

/// The record and byte counters of one connection, registered once so that each
/// record costs an atomic add.
pub(crate) struct TrafficCounters {
    records_in: Counter,
    records_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl TrafficCounters {
    pub(crate) fn register() -> Self {
        Self {
            records_in: metrics::counter!("toolwire_records_total", "direction" => "in"),
            records_out: metrics::counter!("toolwire_records_total", "direction" => "out"),
            bytes_in: metrics::counter!("toolwire_bytes_total", "direction" => "in"),
            bytes_out: metrics::counter!("toolwire_bytes_total", "direction" => "out"),
        }
    }

    pub(crate) fn record_in(&self, len: usize) {
        self.records_in.increment(1);
        self.bytes_in.increment(len as u64);
    }

    pub(crate) fn record_out(&self, len: usize) {
        self.records_out.increment(1);
        self.bytes_out.increment(len as u64);
    }
}

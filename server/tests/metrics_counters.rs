//! Metrics behind the `metrics` facade: connections opened and closed by close code,
//! handshakes, calls by tool and outcome, denials by step, call latency, records and
//! bytes, security events, counted as a real session and a refused handshake happen.
//!
//! The recorder is process-global, so this file holds a single test.

mod common;

use common::{within, RawClient, TestServer};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity};

/// A test recorder: counters and histogram samples by `name{label=value,...}`.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().expect("lock").push(value);
    }
}

/// `name{a=1,b=2}` with labels sorted.
fn key_text(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().expect("lock");
        let counter = counters.entry(key_text(key)).or_default().clone();
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().expect("lock");
        let samples = histograms.entry(key_text(key)).or_default().clone();
        Histogram::from_arc(samples)
    }
}

impl TestRecorder {
    fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .expect("lock")
            .get(key)
            .map_or(0, |counter| counter.load(Ordering::SeqCst))
    }

    fn samples(&self, key: &str) -> usize {
        self.histograms
            .lock()
            .expect("lock")
            .get(key)
            .map_or(0, |samples| samples.0.lock().expect("lock").len())
    }

    /// Waits (bounded) until the counter reaches `value`.
    async fn wait_counter(&self, key: &str, value: u64) {
        for _ in 0..500 {
            if self.counter(key) >= value {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{key} is {}, expected {value}", self.counter(key));
    }
}

#[tokio::test]
async fn counters_move_with_real_sessions() {
    let recorder: &'static TestRecorder = Box::leak(Box::default());
    metrics::set_global_recorder(recorder).expect("first recorder");

    let limited = Identity::generate(&mut rand_core::OsRng);
    let key = limited.public_key();
    let server =
        TestServer::start_with(move |builder| builder.allow_client_tools(key, ["echo"])).await;

    // A session: two calls, one denial, a normal close.
    let session = server.session(&limited).await;
    for text in ["a", "b"] {
        within(
            "call",
            session.call("echo", &serde_json::json!({ "text": text })),
        )
        .await
        .expect("call");
    }
    let denied = within(
        "call",
        session.call("ticker", &serde_json::json!({"count": 1})),
    )
    .await;
    assert_eq!(common::rpc_code(denied), ErrorCode::PERMISSION_DENIED);
    session.close();
    recorder
        .wait_counter("toolwire_connections_closed_total{close_code=1000}", 1)
        .await;

    // A refused identity.
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut raw =
        RawClient::handshake(&server.url, server.client_config(&stranger, Vec::new())).await;
    assert_eq!(
        raw.expect_close().await.frame,
        Some(CloseCode::AUTH_FAILED.0)
    );
    recorder
        .wait_counter("toolwire_connections_closed_total{close_code=4001}", 1)
        .await;

    let r = recorder;
    assert_eq!(r.counter("toolwire_connections_opened_total{}"), 2);
    assert_eq!(r.counter("toolwire_handshakes_total{outcome=ok}"), 1);
    assert_eq!(r.counter("toolwire_handshakes_total{outcome=failed}"), 1);
    assert_eq!(r.counter("toolwire_calls_total{outcome=ok,tool=echo}"), 2);
    assert_eq!(
        r.counter("toolwire_calls_total{outcome=PERMISSION_DENIED,tool=ticker}"),
        1
    );
    assert_eq!(r.counter("toolwire_denials_total{reason=granted}"), 1);
    assert_eq!(r.samples("toolwire_call_duration_seconds{tool=echo}"), 2);
    // The session: in, handshake records 1 and 3, three REQUESTs and the CLOSE; out,
    // handshake record 2, CAP_GRANT, two RESPONSEs and an ERROR. The refused
    // identity: in, handshake records 1 and 3; out, handshake record 2.
    assert_eq!(r.counter("toolwire_records_total{direction=in}"), 6 + 2);
    assert_eq!(r.counter("toolwire_records_total{direction=out}"), 5 + 1);
    assert!(r.counter("toolwire_bytes_total{direction=in}") > 8 * 16);
    assert!(r.counter("toolwire_bytes_total{direction=out}") > 6 * 16);
    assert_eq!(
        r.counter("toolwire_security_events_total{event=auth_failed}"),
        1
    );
    assert_eq!(
        r.counter("toolwire_security_events_total{event=permission_denied}"),
        1
    );
    assert_eq!(r.counter("toolwire_alerts_total{event=auth_failed}"), 0);
}

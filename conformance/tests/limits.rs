//! The timing and exhaustion cases (server_limits) against our own server, each
//! configured with short limits that the suite is told (DeclaredLimits, spec
//! LIM-017), and with the conformance-testing start of its sending direction for the
//! ends of the sequence space and of the epochs (LIM-018). Then against
//! deliberately mismatched configurations, to show the cases can FAIL.
//!
//! Clauses: LIFE-001, LIFE-005, KEY-001, KEY-002, KEY-006, REC-011, REC-012, REC-013,
//! LIM-004, LIM-008 (at the defaults: `default_rekey.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use toolwire_conformance::server::{self, DeclaredLimits, ServerOptions, ToolCall};
use toolwire_conformance::{Report, Verdict};
use toolwire_server::protocol::record::LAST_SEQUENCE;
use toolwire_server::{DangerousServerBuilder, Limits};

/// Server limits, and the same limits declared to the suite.
#[derive(Clone)]
struct Configured {
    idle: Duration,
    lifetime: Duration,
    rekey_after: Duration,
    rekey_after_records: u64,
    write_stall: Duration,
    first_send_sequence: u64,
    first_send_epoch: u32,
}

impl Default for Configured {
    fn default() -> Self {
        let declared = DeclaredLimits::default();
        Self {
            idle: declared.idle_timeout,
            lifetime: declared.session_lifetime,
            rekey_after: declared.rekey_after,
            rekey_after_records: declared.rekey_after_records,
            write_stall: declared.write_stall,
            first_send_sequence: 0,
            first_send_epoch: 0,
        }
    }
}

impl Configured {
    fn server_limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.connection.idle_timeout = self.idle;
        limits.connection.session_lifetime = self.lifetime;
        limits.connection.rekey_after = self.rekey_after;
        limits.connection.rekey_after_records = self.rekey_after_records;
        limits.write_stall_timeout = self.write_stall;
        limits
    }

    fn declared(&self) -> DeclaredLimits {
        let mut declared = DeclaredLimits::default();
        declared.idle_timeout = self.idle;
        declared.session_lifetime = self.lifetime;
        declared.rekey_after = self.rekey_after;
        declared.rekey_after_records = self.rekey_after_records;
        declared.write_stall = self.write_stall;
        declared.first_send_sequence = self.first_send_sequence;
        declared.first_send_epoch = self.first_send_epoch;
        declared
    }

    fn dangerous(&self, dangerous: DangerousServerBuilder) -> DangerousServerBuilder {
        let mut dangerous = dangerous.done().limits(self.server_limits()).dangerous();
        if self.first_send_sequence != 0 {
            dangerous = dangerous.start_send_sequence_for_testing(self.first_send_sequence);
        }
        if self.first_send_epoch != 0 {
            dangerous = dangerous.start_send_epoch_for_testing(self.first_send_epoch);
        }
        dangerous
    }
}

/// Runs the cases `ids` against a server configured with `server`, declaring
/// `declared` to the suite.
async fn run(
    server: &Configured,
    declared: DeclaredLimits,
    ids: &[&str],
    adjust: impl FnOnce(&mut ServerOptions),
) -> Report {
    let target = common::start(|dangerous| server.dangerous(dangerous)).await;
    let mut options = common::options_for(&target);
    options.limits = declared;
    options.only = ids.iter().map(|id| (*id).to_owned()).collect();
    adjust(&mut options);
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    assert_eq!(report.cases.len(), ids.len(), "{}", report.summary());
    for case in &report.cases {
        println!(
            "{} {}: {}; {}",
            case.id, case.verdict, case.observed, case.detail
        );
    }
    report
}

fn assert_verdict(report: &Report, id: &str, verdict: Verdict) {
    let case = report.case(id).expect("the case ran");
    assert_eq!(case.verdict, verdict, "{case:?}");
}

/// LIFE-001, LIFE-005: lifetime 4 s, idle timeout 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lifetime_and_the_idle_timeout_close_at_the_declared_values() {
    let server = Configured {
        idle: Duration::from_millis(1500),
        lifetime: Duration::from_secs(4),
        ..Configured::default()
    };
    let ids = ["life.lifetime", "life.idle"];
    let report = run(&server, server.declared(), &ids, |_| {}).await;
    for id in ids {
        assert_verdict(&report, id, Verdict::Pass);
    }
}

/// KEY-001, KEY-002: a rekey every 1.5 s or 64 records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_rekeys_at_the_declared_interval_and_record_count() {
    let server = Configured {
        rekey_after: Duration::from_millis(1500),
        rekey_after_records: 64,
        ..Configured::default()
    };
    let ids = ["key.interval", "key.records"];
    let report = run(&server, server.declared(), &ids, |_| {}).await;
    for id in ids {
        assert_verdict(&report, id, Verdict::Pass);
    }
}

/// LIM-004: a write stall of 1 s and a client that stops reading a 128 MiB stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_declared_write_stall() {
    let server = Configured {
        write_stall: Duration::from_secs(1),
        ..Configured::default()
    };
    let report = run(
        &server,
        server.declared(),
        &["lim.write-stall"],
        |options| {
            options.bulk_call = Some(ToolCall {
                tool: "bulk".to_owned(),
                args: serde_json::json!({}),
            });
        },
    )
    .await;
    assert_verdict(&report, "lim.write-stall", Verdict::Pass);
}

/// REC-011, REC-012, REC-013: the server's direction starts at 2^62 − 5: CAP_GRANT
/// takes −5, three PONGs −4..−2, the CLOSE −1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_the_end_of_the_sequence_space_closes_with_the_last_number() {
    let server = Configured {
        first_send_sequence: LAST_SEQUENCE - 4,
        ..Configured::default()
    };
    let report = run(
        &server,
        server.declared(),
        &["rec.sequence-exhausted"],
        |_| {},
    )
    .await;
    assert_verdict(&report, "rec.sequence-exhausted", Verdict::Pass);
    let case = report.case("rec.sequence-exhausted").unwrap();
    assert!(case.observed.starts_with("3 PONGs"), "{case:?}");
}

/// KEY-006: the server's direction starts in epoch 2^32 − 1 and rekeys every 8
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_the_last_epoch_closes_instead_of_rekeying() {
    let server = Configured {
        first_send_epoch: u32::MAX,
        rekey_after_records: 8,
        ..Configured::default()
    };
    let report = run(&server, server.declared(), &["key.last-epoch"], |_| {}).await;
    assert_verdict(&report, "key.last-epoch", Verdict::Pass);
}

/// The cases can fail: a server whose lifetime is shorter than declared closes too
/// early (LIFE-001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_shorter_than_declared_fails() {
    let server = Configured {
        lifetime: Duration::from_secs(2),
        ..Configured::default()
    };
    let mut declared = server.declared();
    declared.session_lifetime = Duration::from_secs(4);
    let report = run(&server, declared, &["life.lifetime"], |_| {}).await;
    assert_verdict(&report, "life.lifetime", Verdict::Fail);
}

/// The cases can fail: a server that never rekeys by record count fails KEY-001 at
/// the declared count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_rekey_after_the_declared_records_fails() {
    let server = Configured {
        rekey_after_records: u64::MAX,
        ..Configured::default()
    };
    let mut declared = server.declared();
    declared.rekey_after_records = 64;
    let report = run(&server, declared, &["key.records"], |_| {}).await;
    assert_verdict(&report, "key.records", Verdict::Fail);
    let case = report.case("key.records").unwrap();
    assert!(case.observed.contains("no KEY_UPDATE after 64"), "{case:?}");
}

/// The cases can fail: a server that rekeys by time later than declared fails
/// KEY-002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rekeys_later_than_declared_fails() {
    let server = Configured {
        rekey_after: Duration::from_secs(4),
        ..Configured::default()
    };
    let mut declared = server.declared();
    declared.rekey_after = Duration::from_millis(500);
    let report = run(&server, declared, &["key.interval"], |options| {
        options.step = Duration::from_secs(1);
    })
    .await;
    assert_verdict(&report, "key.interval", Verdict::Fail);
}

/// The cases can fail: a server whose idle timeout is shorter than declared closes
/// too early (LIFE-005).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_shorter_than_declared_fails() {
    let server = Configured {
        idle: Duration::from_secs(1),
        ..Configured::default()
    };
    let mut declared = server.declared();
    declared.idle_timeout = Duration::from_secs(2);
    let report = run(&server, declared, &["life.idle"], |_| {}).await;
    assert_verdict(&report, "life.idle", Verdict::Fail);
}

/// The cases can fail: a server that waits far longer than the declared write stall
/// on a client that stopped reading is still streaming when the client reads again
/// (LIM-004).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stall_longer_than_declared_fails() {
    let server = Configured {
        write_stall: Duration::from_secs(30),
        ..Configured::default()
    };
    let mut declared = server.declared();
    declared.write_stall = Duration::from_secs(1);
    let report = run(&server, declared, &["lim.write-stall"], |options| {
        options.step = Duration::from_secs(2);
        options.bulk_call = Some(ToolCall {
            tool: "bulk".to_owned(),
            args: serde_json::json!({}),
        });
    })
    .await;
    assert_verdict(&report, "lim.write-stall", Verdict::Fail);
}

/// At the default limits, and without the knobs, every case of these clauses SKIPs
/// (none FAILs): they would wait for minutes or need a declared start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_limits_the_cases_skip() {
    let ids = [
        "life.lifetime",
        "life.idle",
        "key.interval",
        "key.records",
        "key.last-epoch",
        "rec.sequence-exhausted",
        "lim.write-stall",
        "lim.rekey-defaults",
    ];
    let report = run(
        &Configured::default(),
        DeclaredLimits::default(),
        &ids,
        |_| {},
    )
    .await;
    for id in ids {
        assert_verdict(&report, id, Verdict::Skip);
    }
}

//! The at-most-once cases that need an operator: small declared bounds (AMO-030,
//! AMO-033, AMO-034) and restarts (the durable store, AMO-036..AMO-039; the audit
//! log continued after a crash, AUD-008). Our server in process on loopback, the
//! suite's cases PASS; and a server restarted without its durable store FAILs the
//! case of AMO-038.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toolwire_conformance::server::{self, Restarter, ServerOptions, ToolCall};
use toolwire_conformance::{Report, Verdict};
use toolwire_server::protocol::amo::AmoConfig;
use toolwire_server::protocol::Identity;
use toolwire_server::{BuildError, Limits, Server, StoreWriteFault, Tool};

fn assert_all_pass(report: &Report, ids: &[&str]) {
    for id in ids {
        let case = report
            .case(id)
            .unwrap_or_else(|| panic!("case {id} ran: {}", report.summary()));
        println!(
            "{id}: {} — {} ({})",
            case.verdict, case.observed, case.detail
        );
        assert_eq!(case.verdict, Verdict::Pass, "{case:?}");
    }
    assert_eq!(report.cases.len(), ids.len(), "{}", report.summary());
}

/// AMO-011 on the default server: a copy of a running call waits for it, whether the
/// connection running it is still open or was cut (this server lets the call run
/// on: PASS, not INFO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_running_call_gets_its_outcome() {
    let target = common::start(|dangerous| dangerous).await;
    let mut options = common::options_for(&target);
    options.only = vec!["amo.in-flight.".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    assert_all_pass(
        &report,
        &["amo.in-flight.other-connection", "amo.in-flight.after-cut"],
    );
    let _ = std::fs::remove_file(&target.audit_log);
}

/// AMO-030, AMO-033, AMO-034 against a server configured with 2 lineages and 4096
/// bytes of cached outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bounds_are_kept_as_declared() {
    let mut bounds = AmoConfig::default();
    bounds.max_lineages = 2;
    bounds.max_total_result_bytes = 4096;
    let configured = bounds.clone();
    let target = common::start(move |dangerous| {
        let mut limits = Limits::default();
        limits.at_most_once = configured;
        dangerous.done().limits(limits).dangerous()
    })
    .await;
    let mut options = common::options_for(&target);
    options.at_most_once = Some(bounds);
    options.echo_tool = Some("echo".to_owned());
    options.only = vec!["amo.bounds.".to_owned()];
    let report = server::run(
        &target.url,
        target.server_key,
        target.client.clone(),
        options,
    )
    .await;
    assert_all_pass(
        &report,
        &[
            "amo.bounds.total-bytes",
            "amo.bounds.busy-lineage-kept",
            "amo.bounds.no-room",
        ],
    );
    let _ = std::fs::remove_file(&target.audit_log);
}

/// A server the test stops as a crash would (its runtime dropped: every task
/// vanishes mid-way) and starts again on the same address, identity, audit log and
/// (when `store`) durable store. Its tools count their runs across restarts, as an
/// effect on the world would.
struct Restartable {
    identity: Identity,
    client: Identity,
    address: std::net::SocketAddr,
    url: String,
    dir: PathBuf,
    store: Option<PathBuf>,
    audit_log: PathBuf,
    runs: Arc<AtomicU64>,
    slow_runs: Arc<AtomicU64>,
    /// Makes the durable store's writes fail while on (AMO-036); kept across restarts.
    store_fault: StoreWriteFault,
    /// The listener of the first start.
    first_listener: Mutex<Option<std::net::TcpListener>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Restartable {
    fn new(name: &str, durable: bool) -> Arc<Self> {
        let dir = std::env::temp_dir().join(format!(
            "toolwire-conformance-{name}-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("address");
        Arc::new(Self {
            identity: Identity::generate(&mut rand_core::OsRng),
            client: Identity::generate(&mut rand_core::OsRng),
            address,
            url: format!("ws://{address}/toolwire"),
            store: durable.then(|| dir.join("amo.redb")),
            audit_log: dir.join("audit.jsonl"),
            dir,
            runs: Arc::new(AtomicU64::new(0)),
            slow_runs: Arc::new(AtomicU64::new(0)),
            store_fault: StoreWriteFault::new(),
            first_listener: Mutex::new(Some(listener)),
            runtime: Mutex::new(None),
        })
    }

    fn build(&self) -> Result<Server, BuildError> {
        let runs = self.runs.clone();
        let slow_runs = self.slow_runs.clone();
        let mut builder = Server::builder(self.identity.clone(), self.url.clone())
            .allow_client_tools(self.client.public_key(), ["counter", "slow"])
            .audit_log(self.audit_log.clone())
            .tool(Tool::new(
                "counter",
                "Returns how many times it has run.",
                serde_json::json!({"type": "object"}),
                move |_, _| {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    async move { Ok(serde_json::json!({ "run": run })) }
                },
            ))
            .tool(Tool::new(
                "slow",
                "Takes two seconds; returns how many times it has started.",
                serde_json::json!({"type": "object"}),
                move |_, _| {
                    let run = slow_runs.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok(serde_json::json!({ "slow": run }))
                    }
                },
            ));
        if let Some(store) = &self.store {
            builder = builder
                .at_most_once_store(store.clone())
                .dangerous()
                .at_most_once_store_write_fault_for_testing(self.store_fault.clone())
                .done();
        }
        builder.build()
    }

    /// Starts the server; `Err` when it refuses to (its build fails).
    async fn start(&self) -> Result<(), String> {
        // The crashed server's tasks are dropped on its runtime's threads: its store
        // and its listening socket are released a moment later (bounded waits).
        let mut server = None;
        for _ in 0..500 {
            match self.build() {
                Ok(built) => {
                    server = Some(built);
                    break;
                }
                Err(BuildError::AtMostOnceStore(error))
                    if error.to_string().contains("already open") =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        let server = server.ok_or("the store stayed held by the crashed server")?;
        let first = self.first_listener.lock().unwrap().take();
        let listener = match first {
            Some(listener) => listener,
            None => {
                let mut bound = None;
                for _ in 0..500 {
                    match std::net::TcpListener::bind(self.address) {
                        Ok(listener) => {
                            bound = Some(listener);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                bound.ok_or("the address stayed in use")?
            }
        };
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = server.serve_listener(listener).await;
        });
        *self.runtime.lock().unwrap() = Some(runtime);
        Ok(())
    }

    /// Drops the server's runtime: no shutdown, calls in flight vanish. Resolves once
    /// the audit writer (a thread of its own) has stopped too: the reference writer
    /// ends the file with a head when its server is dropped, so that is awaited
    /// (bounded) before anyone reads or continues the file.
    async fn crash(&self) {
        let Some(runtime) = self.runtime.lock().unwrap().take() else {
            return;
        };
        let before = std::fs::metadata(&self.audit_log).map_or(0, |m| m.len());
        runtime.shutdown_background();
        for _ in 0..250 {
            let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
            let ended_with_head = text
                .trim_end_matches('\n')
                .rsplit('\n')
                .next()
                .is_some_and(|line| line.contains("\"kind\":\"head\""));
            if text.len() as u64 > before && text.ends_with('\n') && ended_with_head {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn restarter(self: &Arc<Self>) -> Restarter {
        let crashing = self.clone();
        let starting = self.clone();
        Restarter::new(
            move || {
                let server = crashing.clone();
                async move { server.crash().await }
            },
            move || {
                let server = starting.clone();
                async move { server.start().await }
            },
        )
    }

    fn options(self: &Arc<Self>) -> ServerOptions {
        let mut options = ServerOptions::default();
        options.call = Some(ToolCall {
            tool: "counter".to_owned(),
            args: serde_json::json!({}),
        });
        options.slow_call = Some(ToolCall {
            tool: "slow".to_owned(),
            args: serde_json::json!({}),
        });
        options.restart = Some(self.restarter());
        options.durable_store = self.store.clone();
        options.audit_log = Some(self.audit_log.clone());
        let fault = self.store_fault.clone();
        options.store_fault = Some(server::StoreFault(Arc::new(move |failing| {
            fault.set_failing(failing)
        })));
        options
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// AMO-036..AMO-039 and AUD-008: crashes and restarts on a durable store and an
/// audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_server_keeps_its_promises_across_crashes() {
    let server = Restartable::new("durable", true);
    server.start().await.expect("first start");
    let mut options = server.options();
    options.only = vec!["amo.durable.".to_owned(), "aud.restart.".to_owned()];
    let report = server::run(
        &server.url,
        server.identity.public_key(),
        server.client.clone(),
        options,
    )
    .await;
    assert_all_pass(
        &report,
        &[
            "amo.durable.result-after-crash",
            "amo.durable.running-at-crash",
            "amo.durable.unrecordable",
            "amo.durable.damaged-store",
            "aud.restart.continues-chain",
        ],
    );
    // Each tool ran once per call the cases made: nothing ran again after a crash,
    // and the call refused while the store failed never ran. counter:
    // result-after-crash 1, unrecordable 2 (before the fault, after the restart),
    // damaged-store 1, audit 2; slow: running-at-crash 1.
    assert_eq!(server.runs.load(Ordering::SeqCst), 6);
    assert_eq!(server.slow_runs.load(Ordering::SeqCst), 1);
}

/// The case can fail: a server declared to keep a durable store but restarted
/// without it has lost the lineage, and answers the retried id RESULT_UNAVAILABLE
/// instead of its result. Undeclared, the durable cases SKIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_without_its_store_fails_the_durable_case() {
    let server = Restartable::new("volatile", false);
    server.start().await.expect("first start");
    let mut options = server.options();
    options.only = vec!["amo.durable.".to_owned()];
    let report = server::run(
        &server.url,
        server.identity.public_key(),
        server.client.clone(),
        options.clone(),
    )
    .await;
    assert_eq!(report.cases.len(), 4, "{}", report.summary());
    assert!(
        report
            .cases
            .iter()
            .all(|case| case.verdict == Verdict::Skip),
        "{}",
        report.summary()
    );
    options.durable_store = Some(server.dir.join("amo.redb"));
    options.only = vec![
        "amo.durable.result-after-crash".to_owned(),
        "amo.durable.unrecordable".to_owned(),
    ];
    let report = server::run(
        &server.url,
        server.identity.public_key(),
        server.client.clone(),
        options,
    )
    .await;
    let case = report
        .case("amo.durable.result-after-crash")
        .expect("the case ran");
    assert_eq!(case.verdict, Verdict::Fail, "{case:?}");
    assert!(case.observed.contains("RESULT_UNAVAILABLE"), "{case:?}");
    // Its store fault switch reaches nothing: the call made while it is on runs.
    let case = report
        .case("amo.durable.unrecordable")
        .expect("the case ran");
    assert_eq!(case.verdict, Verdict::Fail, "{case:?}");
    assert!(
        case.observed.starts_with("store failing: RESPONSE"),
        "{case:?}"
    );
}

//! Randomized network faults (issue 10 item 4, THREATS.md §6, §7). A loopback TCP
//! proxy between the reconnecting client and the server delays, drops, duplicates
//! and cuts the byte stream at random points, from a seeded generator (the seed is
//! printed first: a failure replays with `TOOLWIRE_FAULT_SEED=<seed>`). Hundreds of
//! calls go through it from four concurrent callers. Then:
//!
//! - every call ends (bounded) with its result or a typed `CallError`;
//! - no handler ran twice for one call (runs counted per call, whose text is unique
//!   and whose request id is therefore unique too) — AMO-020, across the client's
//!   reconnects and retries (AMO-003);
//! - the server's audit log verifies afterwards (AUD-003).
//!
//! The server is also restarted twice during the run (graceful shutdown with a
//! 20 ms grace, then a new server on the same address, audit log and durable
//! at-most-once store), so retries cross restarts too (AMO-035).
//!
//! Default: 240 calls (`TOOLWIRE_FAULT_CALLS` for more).
//!
//! Clauses: AMO-003, AMO-020, AMO-035, AUD-003.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use toolwire_client::{CallError, Client, ReconnectPolicy};
use toolwire_server::protocol::audit::verify_log;
use toolwire_server::protocol::Identity;
use toolwire_server::{Server, Tool};

/// SplitMix64: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What the proxy did.
#[derive(Default)]
struct Faults {
    connections: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    cut: AtomicU64,
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections; {} chunks delayed, {} dropped, {} duplicated; {} connections cut",
            self.connections.load(Ordering::SeqCst),
            self.delayed.load(Ordering::SeqCst),
            self.dropped.load(Ordering::SeqCst),
            self.duplicated.load(Ordering::SeqCst),
            self.cut.load(Ordering::SeqCst)
        )
    }
}

/// Forwards `from` to `to` chunk by chunk, with faults drawn from `rng`, until either
/// side ends or `budget` bytes have passed (then cuts).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rng: Rng,
    budget: Option<u64>,
    faults: Arc<Faults>,
) {
    let mut passed = 0u64;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if rng.chance(20) {
            faults.delayed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(rng.next() % 10)).await;
        }
        if let Some(budget) = budget {
            if passed + read as u64 > budget {
                // Cut mid-chunk: forward a prefix, then end both directions.
                let keep = usize::try_from(budget.saturating_sub(passed)).unwrap_or(0);
                let _ = to.write_all(&chunk[..keep.min(read)]).await;
                faults.cut.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        passed += read as u64;
        if rng.next() % 1000 < 5 {
            faults.dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if to.write_all(chunk).await.is_err() {
            break;
        }
        if rng.next() % 1000 < 5 {
            faults.duplicated.fetch_add(1, Ordering::SeqCst);
            if to.write_all(chunk).await.is_err() {
                break;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The proxy: one task pair per accepted connection, each with its own stream of
/// faults; four in five connections are cut after a random number of bytes.
async fn proxy(
    listener: TcpListener,
    server: std::net::SocketAddr,
    seed: u64,
    faults: Arc<Faults>,
) {
    let mut rng = Rng(seed);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(upstream) = TcpStream::connect(server).await else {
            continue;
        };
        faults.connections.fetch_add(1, Ordering::SeqCst);
        let budget = rng.chance(80).then(|| 500 + rng.next() % 20_000);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = upstream.into_split();
        let up = Rng(rng.next());
        let down = Rng(rng.next());
        tokio::spawn(pump(client_read, server_write, up, budget, faults.clone()));
        tokio::spawn(pump(
            server_read,
            client_write,
            down,
            budget,
            faults.clone(),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_a_faulty_network_end_typed_and_run_at_most_once() {
    let seed: u64 = std::env::var("TOOLWIRE_FAULT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x746f_6f6c_7769_7265);
    let calls: usize = std::env::var("TOOLWIRE_FAULT_CALLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(240);
    eprintln!("faults: seed {seed} (replay with TOOLWIRE_FAULT_SEED={seed}), {calls} calls");

    let directory =
        std::env::temp_dir().join(format!("toolwire-faults-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let audit_path = directory.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit_path);

    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "ws://{}/toolwire",
        proxy_listener.local_addr().expect("address")
    );
    let server_addr = server_listener.local_addr().expect("address");

    let identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = runs.clone();
    let echo = Tool::new(
        "echo",
        "Returns its arguments, counting runs per text.",
        common::echo_schema(),
        move |args, _| {
            let counted = counted.clone();
            async move {
                let text = args["text"].as_str().unwrap_or("").to_owned();
                *counted.lock().expect("lock").entry(text).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(args)
            }
        },
    );
    // The server is configured with the URL the client dials (the proxy's), since
    // the endpoint is bound into the handshake (HS-003).
    let store_path = directory.join("amo.redb");
    let _ = std::fs::remove_file(&store_path);
    let start = {
        let identity = identity.clone();
        let url = url.clone();
        let agent_key = agent.public_key();
        let audit_path = audit_path.clone();
        move |listener: TcpListener| {
            let identity = identity.clone();
            let url = url.clone();
            let echo = echo.clone();
            let audit_path = audit_path.clone();
            let store_path = store_path.clone();
            async move {
                // The previous server's last references (tasks finishing after its
                // shutdown) may hold the store for a moment: retry, bounded.
                let mut built = None;
                for _ in 0..250 {
                    match Server::builder(identity.clone(), url.clone())
                        .allow_client(agent_key)
                        .tool(echo.clone())
                        .audit_log(&audit_path)
                        .at_most_once_store(&store_path)
                        .build()
                    {
                        Ok(server) => {
                            built = Some(server);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                let server = built.expect("server builds (and continues its audit log and store)");
                let serving = tokio::spawn({
                    let server = server.clone();
                    async move {
                        let _ = server.serve_listener(listener).await;
                    }
                });
                (server, serving)
            }
        }
    };
    let running = Arc::new(tokio::sync::Mutex::new(Some(start(server_listener).await)));
    let faults = Arc::new(Faults::default());
    let proxying = tokio::spawn(proxy(proxy_listener, server_addr, seed, faults.clone()));

    let server_key = identity.public_key();
    let builder = move || {
        Client::builder()
            .identity(agent.clone())
            .pin_server(server_key)
            .reconnect(
                ReconnectPolicy::default()
                    .with_max_attempts(20)
                    .with_backoff(Duration::from_millis(10), Duration::from_millis(200)),
            )
    };
    let connect = {
        let url = url.clone();
        move || {
            let url = url.clone();
            let builder = builder.clone();
            async move {
                // A connection may itself be cut: a bounded number of attempts.
                for _ in 0..150 {
                    if let Ok(Ok(connected)) =
                        tokio::time::timeout(Duration::from_secs(10), builder().connect(&url)).await
                    {
                        return Arc::new(connected);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("seed {seed}: never connected");
            }
        }
    };
    // The application's session; replaced (new lineage) when the client gives up on
    // it: after an authenticated close (a duplicated or dropped chunk makes the
    // server close with 4003/4004/4010, which the client does not retry) or failed
    // reconnects. Calls are never re-issued by the test: each runs at most once.
    let current = Arc::new(tokio::sync::Mutex::new(connect().await));
    let sessions = Arc::new(AtomicU64::new(1));

    let outcomes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let workers = 4;
    let per_worker = calls.div_ceil(workers);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let current = current.clone();
        let outcomes = outcomes.clone();
        let connect = connect.clone();
        let sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            for index in 0..per_worker {
                let session = current.lock().await.clone();
                let text = format!("call-{worker}-{index}");
                let outcome = tokio::time::timeout(
                    Duration::from_secs(60),
                    session.call("echo", &serde_json::json!({"text": text})),
                )
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: call {text} never ended"));
                let mut dead = false;
                let kind = match outcome {
                    Ok(value) => {
                        assert_eq!(value["text"], text, "seed {seed}: wrong answer");
                        "ok".to_owned()
                    }
                    Err(CallError::Rpc { code, .. }) => format!("rpc {code}"),
                    Err(CallError::ConnectionClosed { code }) => {
                        dead = true;
                        format!("closed {code}")
                    }
                    Err(CallError::ReconnectFailed { .. }) => {
                        dead = true;
                        "reconnect failed".to_owned()
                    }
                    Err(other) => format!("other: {other}"),
                };
                *outcomes.lock().expect("lock").entry(kind).or_insert(0) += 1;
                if dead {
                    let mut shared = current.lock().await;
                    if Arc::ptr_eq(&shared, &session) {
                        *shared = connect().await;
                        sessions.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // Two server restarts during the run, at a third and two thirds of the calls:
    // a shutdown with a short grace (calls still running are answered UNAVAILABLE),
    // then a new server process-state on the same address, identity, audit log and
    // durable at-most-once store (AMO-035).
    let restarter = {
        let start = start.clone();
        let running = running.clone();
        let outcomes = outcomes.clone();
        let total = per_worker * workers;
        tokio::spawn(async move {
            let mut restarts = 0u32;
            for mark in [total / 3, 2 * total / 3] {
                for _ in 0..6000 {
                    let done: u32 = outcomes.lock().expect("lock").values().sum();
                    if done as usize >= mark {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut slot = running.lock().await;
                let (server, serving) = slot.take().expect("a server runs");
                let _ = server.shutdown(Duration::from_millis(20)).await;
                let _ = serving.await;
                drop(server);
                let mut listener = None;
                for _ in 0..100 {
                    if let Ok(bound) = TcpListener::bind(server_addr).await {
                        listener = Some(bound);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                *slot = Some(start(listener.expect("the server's address is free again")).await);
                restarts += 1;
            }
            restarts
        })
    };
    for task in tasks {
        task.await.expect("caller finished");
    }
    let restarts = restarter.await.expect("restarter finished");

    let outcomes = outcomes.lock().expect("lock").clone();
    let runs = runs.lock().expect("lock").clone();
    let twice: Vec<_> = runs.iter().filter(|(_, count)| **count > 1).collect();
    let ok = outcomes.get("ok").copied().unwrap_or(0);
    eprintln!("faults: {faults}");
    eprintln!(
        "faults: outcomes {outcomes:?} over {} client sessions and {restarts} server restarts",
        sessions.load(Ordering::SeqCst)
    );
    eprintln!(
        "faults: {} distinct calls ran, {} of them more than once",
        runs.len(),
        twice.len()
    );
    assert!(
        twice.is_empty(),
        "seed {seed}: ran more than once: {twice:?}"
    );
    assert_eq!(
        outcomes.values().sum::<u32>() as usize,
        per_worker * workers,
        "seed {seed}: every call ended"
    );
    assert!(
        outcomes.keys().all(|kind| !kind.starts_with("other")),
        "seed {seed}: {outcomes:?}"
    );
    assert!(ok > 0, "seed {seed}: no call got through: {outcomes:?}");

    drop(current);
    proxying.abort();
    let (server, serving) = running.lock().await.take().expect("a server runs");
    let _ = server.shutdown(Duration::from_secs(5)).await;
    serving.abort();
    let text = std::fs::read_to_string(&audit_path).expect("audit log");
    let summary = verify_log(&text, &identity.public_key())
        .unwrap_or_else(|error| panic!("seed {seed}: the audit log does not verify: {error}"));
    eprintln!("faults: audit log verifies: {summary:?}");
    let _ = std::fs::remove_dir_all(&directory);
}

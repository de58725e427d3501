//! Scenario 4: flood fairness. Well-behaved clients (each its own identity, paced
//! well under the default rate limit) call the echo tool while one client floods the
//! same server: as many calls as its connection allows in flight, reconnecting each
//! time the server closes it with RATE_LIMITED. The server runs the secure default
//! [`Limits`]. Reported: the well-behaved clients' latency with and without the flood.

use crate::calls::ToolwireServer;
use crate::util::{fail, median, Result, Samples};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_client::{CallError, CallOptions};
use toolwire_protocol::{ErrorCode, Identity};
use toolwire_server::Limits;

/// Settings of scenario 4.
#[derive(Debug, Clone)]
pub struct FloodSettings {
    /// Well-behaved clients.
    pub clients: usize,
    /// Interval between two calls of one well-behaved client.
    pub interval: Duration,
    /// Calls the flooder keeps in flight.
    pub flood_in_flight: usize,
    /// Length of each phase.
    pub duration: Duration,
    /// Repetitions of each phase.
    pub reps: usize,
    /// The server's limits (the secure defaults in the benchmark).
    pub limits: Limits,
}

/// Result of scenario 4.
#[derive(Debug, Clone, Default)]
pub struct FloodFigures {
    /// Well-behaved p50 without the flood, µs (median over repetitions).
    pub quiet_p50_us: f64,
    /// Well-behaved p99 without the flood, µs.
    pub quiet_p99_us: f64,
    /// Well-behaved p50 during the flood, µs.
    pub flood_p50_us: f64,
    /// Well-behaved p99 during the flood, µs.
    pub flood_p99_us: f64,
    /// Well-behaved calls, all answered correctly.
    pub good_calls: u64,
    /// Calls the flooder sent per second (answered or refused).
    pub flood_attempts_per_sec: f64,
    /// Flood calls refused with RESOURCE_EXHAUSTED.
    pub flood_refused: u64,
    /// Flood calls that executed.
    pub flood_served: u64,
    /// Times the server closed the flooder's connection (it reconnected).
    pub flood_reconnects: u64,
}

#[derive(Default)]
struct FloodCounters {
    attempts: AtomicU64,
    refused: AtomicU64,
    served: AtomicU64,
    reconnects: AtomicU64,
}

async fn flooder(
    server: Arc<ToolwireServer>,
    identity: Identity,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<FloodCounters>,
) -> Result<()> {
    let args = rmp_serde::to_vec_named(&serde_json::json!({"d": "flood"}))?;
    while !stop.load(Ordering::Relaxed) {
        let session = match server.connect(&identity, true).await {
            Ok(session) => Arc::new(session),
            Err(_) => {
                // Refused while its previous connection winds down: try again.
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let (session, stop, counters, args) = (
                session.clone(),
                stop.clone(),
                counters.clone(),
                args.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    counters.attempts.fetch_add(1, Ordering::Relaxed);
                    match session
                        .call_raw("echo", args.clone(), CallOptions::default())
                        .await
                    {
                        Ok(_) => {
                            counters.served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(CallError::Rpc { code, .. })
                            if code == ErrorCode::RESOURCE_EXHAUSTED =>
                        {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        if !stop.load(Ordering::Relaxed) {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn well_behaved(
    server: &Arc<ToolwireServer>,
    identities: &[Identity],
    settings: &FloodSettings,
) -> Result<Samples> {
    let args = rmp_serde::to_vec_named(&serde_json::json!({"d": "x".repeat(59)}))?;
    let mut tasks = Vec::new();
    for identity in identities {
        let session = server.connect(identity, true).await?;
        let (args, interval, duration) = (args.clone(), settings.interval, settings.duration);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let start = Instant::now();
            while start.elapsed() < duration {
                ticks.tick().await;
                let before = Instant::now();
                let result = session
                    .call_raw("echo", args.clone(), CallOptions::default())
                    .await?;
                samples.push(before.elapsed());
                if result != args {
                    return Err(fail("echo answered other bytes"));
                }
            }
            session.close();
            Ok::<_, crate::util::BoxError>(samples)
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Runs scenario 4.
///
/// # Errors
/// Any failed server start, or a well-behaved call that fails.
pub async fn run(settings: &FloodSettings) -> Result<FloodFigures> {
    let identities: Vec<Identity> = (0..settings.clients)
        .map(|_| Identity::generate(&mut rand_core::OsRng))
        .collect();
    let flooder_identity = Identity::generate(&mut rand_core::OsRng);
    let mut keys: Vec<_> = identities.iter().map(Identity::public_key).collect();
    keys.push(flooder_identity.public_key());
    let server = Arc::new(ToolwireServer::start(&keys, settings.limits.clone(), true).await?);
    let mut figures = FloodFigures::default();
    let (mut quiet50, mut quiet99, mut flood50, mut flood99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut flood_seconds = 0.0;
    let counters = Arc::new(FloodCounters::default());
    for _ in 0..settings.reps {
        let mut quiet = well_behaved(&server, &identities, settings).await?;
        figures.good_calls += quiet.len() as u64;
        quiet50.push(quiet.percentile_us(50.0));
        quiet99.push(quiet.percentile_us(99.0));

        let stop = Arc::new(AtomicBool::new(false));
        let flood = tokio::spawn(flooder(
            server.clone(),
            flooder_identity.clone(),
            settings.flood_in_flight,
            stop.clone(),
            counters.clone(),
        ));
        let start = Instant::now();
        let flooded = well_behaved(&server, &identities, settings).await;
        stop.store(true, Ordering::Relaxed);
        flood_seconds += start.elapsed().as_secs_f64();
        flood.await??;
        let mut flooded = flooded?;
        figures.good_calls += flooded.len() as u64;
        flood50.push(flooded.percentile_us(50.0));
        flood99.push(flooded.percentile_us(99.0));
    }
    figures.quiet_p50_us = median(&quiet50);
    figures.quiet_p99_us = median(&quiet99);
    figures.flood_p50_us = median(&flood50);
    figures.flood_p99_us = median(&flood99);
    figures.flood_attempts_per_sec =
        counters.attempts.load(Ordering::Relaxed) as f64 / flood_seconds.max(1e-9);
    figures.flood_refused = counters.refused.load(Ordering::Relaxed);
    figures.flood_served = counters.served.load(Ordering::Relaxed);
    figures.flood_reconnects = counters.reconnects.load(Ordering::Relaxed);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop();
    }
    Ok(figures)
}

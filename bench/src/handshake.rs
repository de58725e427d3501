//! Scenario 2: handshakes per second (TCP connect + WebSocket upgrade + Noise XX +
//! identity signatures + CAP_GRANT) against the bound that this CPU's X25519 and
//! Ed25519 rates, measured in the same run, allow.

use crate::calls::ToolwireServer;
use crate::util::{median, Result};
use ed25519_dalek::{Signer as _, SigningKey};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_protocol::Identity;
use toolwire_server::Limits;

/// Per-operation costs of the public-key primitives, microseconds, one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptoCosts {
    /// X25519 key generation (fixed-base multiplication).
    pub x25519_keygen_us: f64,
    /// X25519 Diffie-Hellman (variable-base multiplication).
    pub x25519_dh_us: f64,
    /// Ed25519 sign of a short message.
    pub ed25519_sign_us: f64,
    /// Ed25519 `verify_strict` of a short message.
    pub ed25519_verify_us: f64,
}

/// Public-key operations of one handshake, both sides together, as the protocol is
/// used through the public client API:
/// - X25519 key generation: 2 ephemerals, plus the client's static key (a
///   [`toolwire_client::ClientBuilder::connect`] makes a fresh Noise static key pair per
///   connection); the server's static key is made once per server.
/// - X25519 DH: ee, es, se on each side.
/// - Ed25519 sign: the client's static-key binding (per connection, as above); the
///   server's binding is signed once per server.
/// - Ed25519 verify: each side verifies the other's binding, the client verifies the
///   signed manifest in CAP_GRANT.
pub const HANDSHAKE_OPS: (f64, f64, f64, f64) = (3.0, 6.0, 1.0, 3.0);

impl CryptoCosts {
    /// CPU time of one handshake's public-key operations, microseconds.
    pub fn handshake_us(&self) -> f64 {
        let (keygen, dh, sign, verify) = HANDSHAKE_OPS;
        keygen * self.x25519_keygen_us
            + dh * self.x25519_dh_us
            + sign * self.ed25519_sign_us
            + verify * self.ed25519_verify_us
    }

    /// Handshakes per second that `cores` cores could complete if they did nothing
    /// but these operations.
    pub fn bound_per_sec(&self, cores: usize) -> f64 {
        cores as f64 * 1e6 / self.handshake_us()
    }
}

fn time_op(budget: Duration, mut op: impl FnMut()) -> f64 {
    for _ in 0..16 {
        op();
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            op();
        }
        count += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / count as f64
}

/// Measures the primitives on one core for about `4 × budget`.
pub fn measure_crypto(budget: Duration) -> CryptoCosts {
    let mut rng = rand_core::OsRng;
    let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(rng));
    let x25519_keygen_us = time_op(budget, || {
        std::hint::black_box(x25519_dalek::PublicKey::from(std::hint::black_box(&secret)));
    });
    let x25519_dh_us = time_op(budget, || {
        std::hint::black_box(std::hint::black_box(&secret).diffie_hellman(&peer));
    });
    let signing = SigningKey::generate(&mut rng);
    let verifying = signing.verifying_key();
    let message = [7u8; 96];
    let signature = signing.sign(&message);
    let ed25519_sign_us = time_op(budget, || {
        std::hint::black_box(signing.sign(std::hint::black_box(&message)));
    });
    let ed25519_verify_us = time_op(budget, || {
        let _ = std::hint::black_box(verifying.verify_strict(&message, &signature));
    });
    CryptoCosts {
        x25519_keygen_us,
        x25519_dh_us,
        ed25519_sign_us,
        ed25519_verify_us,
    }
}

/// Result of scenario 2.
#[derive(Debug, Clone, Default)]
pub struct HandshakeFigures {
    /// Measured primitive costs.
    pub crypto: CryptoCosts,
    /// Handshakes per second, median over repetitions.
    pub per_sec: f64,
    /// The bound on all cores from the primitive costs.
    pub bound_per_sec: f64,
    /// Cores the bound assumes.
    pub cores: usize,
    /// Handshakes completed in total.
    pub handshakes: u64,
}

/// Settings of scenario 2.
#[derive(Debug, Clone)]
pub struct HandshakeSettings {
    /// Clients connecting in parallel loops.
    pub parallel: usize,
    /// Repetitions.
    pub reps: usize,
    /// Length of each repetition.
    pub duration: Duration,
    /// Time per primitive when measuring the crypto.
    pub crypto_budget: Duration,
}

/// Runs scenario 2.
///
/// # Errors
/// Any failed server start or handshake.
pub async fn run(settings: &HandshakeSettings) -> Result<HandshakeFigures> {
    let crypto = measure_crypto(settings.crypto_budget);
    let client = Identity::generate(&mut rand_core::OsRng);
    let server =
        Arc::new(ToolwireServer::start(&[client.public_key()], Limits::default(), true).await?);
    let mut rates = Vec::new();
    let mut handshakes = 0;
    for _ in 0..settings.reps {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..settings.parallel {
            let (server, client, stop, count) =
                (server.clone(), client.clone(), stop.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                // At least one handshake per task, whatever the timing.
                loop {
                    let session = server.connect(&client, true).await?;
                    if session.granted_tools() != ["echo"] {
                        return Err(crate::util::fail("the grant does not name the echo tool"));
                    }
                    session.close();
                    count.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Ok::<_, crate::util::BoxError>(())
            }));
        }
        let start = Instant::now();
        tokio::time::sleep(settings.duration).await;
        stop.store(true, Ordering::Relaxed);
        let done = count.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        for task in tasks {
            task.await??;
        }
        handshakes += count.load(Ordering::Relaxed);
        rates.push(done as f64 / elapsed.as_secs_f64());
    }
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Ok(HandshakeFigures {
        crypto,
        per_sec: median(&rates),
        bound_per_sec: crypto.bound_per_sec(cores),
        cores,
        handshakes,
    })
}

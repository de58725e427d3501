//! Graceful shutdown ([`Server::shutdown`], CLS-010, CLS-012).
//!
//! ```text
//!  shutdown(deadline)
//!   │ 1. stop accepting: `serve`/`serve_listener` drop their listener; `accept` and
//!   │    upgrades in progress are dropped (no call was accepted on them)
//!   │ 2. drain, on every connection:
//!   │      - connections still in the handshake close at once with GOING_AWAY (1001)
//!   │      - new REQUESTs are refused with UNAVAILABLE (14) (step 7, like a full
//!   │        at-most-once table: nothing recorded, safe to retry elsewhere or later)
//!   │      - calls in flight run on; CANCEL, deadlines and streams keep working
//!   │      - when the last call of a connection is answered: CLOSE(GOING_AWAY) record,
//!   │        then the WebSocket close frame 1001
//!   │ 3. at the deadline, calls still running are stopped and answered UNAVAILABLE
//!   │    (14) `server shutting down`, their outcome unknown (nothing cached,
//!   │    AMO-026: a retried copy gets RESULT_UNAVAILABLE, never a second run); then
//!   │    their connections close as in 2
//!   │ 4. the audit log gets its final signed head and is synced (AUD-007)
//!   ▼ 5. `shutdown` returns its report; `serve`/`serve_listener` return Ok(())
//! ```
//!
//! Why UNAVAILABLE and not CANCELLED: CANCELLED (1) means the *caller* cancelled
//! (section 15); UNAVAILABLE (14) is the server's "cannot serve the call now", and is
//! retryable (ERR-003) because a retry cannot run the call twice: the new REQUESTs
//! refused in step 2 never ran, and the interrupted ones were abandoned in the
//! at-most-once table, so a retry of the same id is answered RESULT_UNAVAILABLE.
//!
//! Every call accepted before the shutdown is therefore answered exactly once, with
//! its result or a typed error, before its connection closes.

use crate::audit::{AuditLogError, AuditStats};
use crate::builder::{Inner, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use toolwire_protocol::amo::{
    Admission, AtMostOnceStore, CachedOutcome, LineageKey, LineageOrigin,
};

/// After the drain deadline: how long connections get to send their answers and
/// close (their close handshake lingers up to 1 s) before shutdown stops waiting.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What a completed shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Calls still running at the deadline, stopped and answered UNAVAILABLE.
    pub interrupted_calls: u64,
    /// REQUESTs that arrived during the drain, refused with UNAVAILABLE.
    pub refused_calls: u64,
    /// Connections that had not closed when shutdown stopped waiting (deadline plus
    /// a short grace); 0 normally.
    pub connections_left: usize,
    /// The audit log's statistics, when the server has one.
    pub audit: Option<AuditStats>,
}

/// The shutdown state of a server, shared by its listeners and connections.
pub(crate) struct ShutdownState {
    /// `None` while serving; the drain deadline once shutdown began.
    signal: watch::Sender<Option<Instant>>,
    /// Connections in progress (from `accept` to the end of the session).
    connections: watch::Sender<usize>,
    interrupted: AtomicU64,
    refused: AtomicU64,
    /// The outcome, once shutdown completed.
    outcome: watch::Sender<Option<Result<ShutdownReport, AuditLogError>>>,
}

impl ShutdownState {
    pub(crate) fn new() -> Self {
        Self {
            signal: watch::Sender::new(None),
            connections: watch::Sender::new(0),
            interrupted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            outcome: watch::Sender::new(None),
        }
    }

    /// The drain deadline, for a connection driver: `None` until shutdown begins.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.signal.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopping(&self) {
        let mut signal = self.signal.subscribe();
        let _ = signal.wait_for(Option::is_some).await;
    }

    /// Resolves once shutdown has completed.
    pub(crate) async fn finished(&self) {
        let mut outcome = self.outcome.subscribe();
        let _ = outcome.wait_for(Option::is_some).await;
    }

    /// Runs `future` unless shutdown begins first (`None` then).
    pub(crate) async fn unless_stopping<F: std::future::Future>(
        &self,
        future: F,
    ) -> Option<F::Output> {
        tokio::select! {
            output = future => Some(output),
            () = self.stopping() => None,
        }
    }

    /// Counts a connection until the guard drops; `None` once shutdown has begun
    /// (the connection must then be dropped at once).
    pub(crate) fn track(inner: &Arc<Inner>) -> Option<Tracked> {
        inner.shutdown.connections.send_modify(|count| *count += 1);
        let tracked = Tracked(inner.clone());
        // The count is raised before the signal is read, and shutdown sets the signal
        // before it reads the count: either it waits for this connection, or this
        // connection sees the signal.
        inner.shutdown.signal.borrow().is_none().then_some(tracked)
    }

    pub(crate) fn count_interrupted(&self, calls: usize) {
        self.interrupted
            .fetch_add(u64::try_from(calls).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection counted by [`ShutdownState::track`].
pub(crate) struct Tracked(Arc<Inner>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0
            .shutdown
            .connections
            .send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// The at-most-once store of a draining connection: it admits no new call, like a
/// table that can make no room (AMO-034), so the pipeline refuses the REQUEST with
/// UNAVAILABLE (14) at step 7, records nothing, and the decision is logged as usual.
pub(crate) struct RefuseNewCalls;

impl AtMostOnceStore for RefuseNewCalls {
    fn attach(&mut self, _key: &LineageKey, _origin: LineageOrigin) {}
    fn admit(&mut self, _key: &LineageKey, _request_id: u64, _retry: bool) -> Admission {
        Admission::Overloaded
    }
    fn complete(&mut self, _key: &LineageKey, _request_id: u64, _outcome: CachedOutcome) -> bool {
        false
    }
    fn abandon(&mut self, _key: &LineageKey, _request_id: u64) {}
}

impl Server {
    /// Shuts the server down gracefully: stops accepting connections, refuses new
    /// calls with UNAVAILABLE, lets calls in flight finish for up to `deadline`,
    /// answers those still running then with UNAVAILABLE (their outcome unknown), and
    /// closes every connection with an authenticated CLOSE and GOING_AWAY (1001). Then
    /// the audit log, if any, gets its final signed head and is synced. See the
    /// module documentation of `shutdown.rs` for the exact sequence.
    ///
    /// `serve` and `serve_listener` return `Ok(())` once this completes. Calling it
    /// again (or concurrently) waits for the first shutdown and returns its result;
    /// dropping the returned future does not stop the shutdown.
    ///
    /// # Errors
    /// [`AuditLogError`] when the audit log could not be completed: the writer had
    /// failed earlier, or the final head could not be written or synced. The
    /// connections were shut down all the same.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, AuditLogError> {
        let state = &self.inner.shutdown;
        let now = Instant::now();
        // A deadline too far to represent waits for a day (calls cannot run that long
        // anyway: the session lifetime ends them).
        let until = now
            .checked_add(deadline)
            .unwrap_or_else(|| now + Duration::from_secs(86_400));
        let first = state.signal.send_if_modified(|signal| {
            if signal.is_some() {
                return false;
            }
            *signal = Some(until);
            true
        });
        if first {
            tracing::info!(
                deadline_ms = deadline.as_millis(),
                event = "shutdown",
                "toolwire server shutting down"
            );
            tokio::spawn(complete_shutdown(self.inner.clone(), until));
        }
        let mut outcome = state.outcome.subscribe();
        let done = outcome.wait_for(Option::is_some).await;
        match done.as_deref() {
            Ok(Some(outcome)) => outcome.clone(),
            // The sender lives in `Inner`, which `self` holds: unreachable.
            _ => Ok(ShutdownReport {
                interrupted_calls: 0,
                refused_calls: 0,
                connections_left: 0,
                audit: None,
            }),
        }
    }
}

/// Waits for the connections, then completes the audit log and publishes the outcome.
async fn complete_shutdown(inner: Arc<Inner>, until: Instant) {
    let state = &inner.shutdown;
    let mut connections = state.connections.subscribe();
    let drained = tokio::time::timeout_at(
        until.checked_add(CLOSE_GRACE).unwrap_or(until),
        connections.wait_for(|count| *count == 0),
    )
    .await
    .is_ok();
    let connections_left = if drained { 0 } else { *connections.borrow() };
    if connections_left > 0 {
        tracing::warn!(
            connections_left,
            "toolwire shutdown: connections still open after the deadline"
        );
    }
    let audit = match &inner.audit {
        Some(log) => Some(log.finish().await),
        None => None,
    };
    let report = |audit| ShutdownReport {
        interrupted_calls: state.interrupted.load(Ordering::Relaxed),
        refused_calls: state.refused.load(Ordering::Relaxed),
        connections_left,
        audit,
    };
    let outcome = match audit {
        Some(Err(error)) => Err(error),
        Some(Ok(stats)) => Ok(report(Some(stats))),
        None => Ok(report(None)),
    };
    match &outcome {
        Ok(report) => tracing::info!(
            interrupted = report.interrupted_calls,
            refused = report.refused_calls,
            event = "shutdown_complete",
            "toolwire server shut down"
        ),
        Err(error) => {
            tracing::error!(%error, event = "shutdown_complete", "toolwire server shut down; the audit log is incomplete")
        }
    }
    state.outcome.send_replace(Some(outcome));
}

//! Automatic reconnection and at-most-once resume (spec section 14, LIFE-004).

use crate::error::ConnectError;
use rand_core::RngCore as _;
use std::time::Duration;
use toolwire_protocol::CloseCode;

/// When and how a [`Session`](crate::Session) reconnects after its connection is
/// lost, and when it replaces a connection whose lifetime is running out.
///
/// A session keeps its at-most-once **lineage** (spec section 14) across
/// connections: after a loss it dials again, runs a fresh handshake naming the
/// lineage (`ClientHello.resume`, AMO-003), asks for the same tools and grants, and
/// re-sends every call that was in flight with its request id and `retry = true`
/// (AMO-008). The server answers such a retry from its result cache and never runs
/// an id twice; when it cannot know the outcome (its state was lost or the result
/// evicted) the call fails with RESULT_UNAVAILABLE (101) or STALE_REQUEST_ID (100),
/// and the session does not repeat it under a new id (AMO-027): the application
/// decides.
///
/// - A connection is re-opened at once when calls are waiting for it, otherwise on
///   the next call. Calls made meanwhile wait, bounded by their deadline.
/// - Losses that reconnecting can mend are reconnected: the socket failing or
///   closing without an authenticated code, GOING_AWAY (1001), TRY_AGAIN_LATER
///   (1013), SESSION_EXPIRED (4006) and TIMEOUT (4009). Any other close code (for
///   example AUTH_FAILED, CAPABILITY_REVOKED, RATE_LIMITED, PROTOCOL_VIOLATION, a
///   NORMAL close by the server) ends the session: calls fail with
///   [`CallError::ConnectionClosed`](crate::CallError::ConnectionClosed).
/// - At most [`max_attempts`](Self::with_max_attempts) connections are tried in a
///   row without one answering a call; the waiting calls then fail with
///   [`CallError::ReconnectFailed`](crate::CallError::ReconnectFailed). A dial
///   refused for a reason that will not change (a server identity that is not
///   pinned, AUTH_FAILED, an invalid certificate) stops at once.
/// - Attempts are spaced by exponential backoff with jitter: the first at once,
///   then about `initial_backoff`, doubling up to `max_backoff`, each delay drawn
///   uniformly between half and all of its nominal value.
/// - Streamed calls are not resumed (their items cannot be replayed): a stream in
///   flight when the connection is lost ends with
///   [`CallError::StreamInterrupted`](crate::CallError::StreamInterrupted).
/// - LIFE-004: `renew_before_expiry` before a connection's lifetime ends (the
///   smaller of the client's and the server's announced lifetime), a new connection
///   resuming the lineage is opened alongside; new calls go to it once it is ready,
///   and the old one is closed (NORMAL) when its last call has been answered. A call
///   still running on the old connection when it closes is re-sent on the new one
///   as above.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether to reconnect and renew at all. Default `true`.
    pub enabled: bool,
    /// Connections tried in a row without one answering a call before waiting calls
    /// fail. Default 5. Bounds how long calls wait for a server that is gone and how
    /// hard a flapping server is hit.
    pub max_attempts: u32,
    /// Nominal delay before the second attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// Largest nominal delay between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// How long before a connection's lifetime ends it is replaced (LIFE-004).
    /// Default 2 minutes (with the default 62-minute lifetime, a new connection at
    /// 60 minutes); at most a quarter of the lifetime is used, so that short
    /// lifetimes renew too.
    pub renew_before_expiry: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            renew_before_expiry: Duration::from_secs(120),
        }
    }
}

impl ReconnectPolicy {
    /// No reconnection and no renewal: the first lost connection ends the session,
    /// and every call waiting for it fails with
    /// [`CallError::ConnectionClosed`](crate::CallError::ConnectionClosed).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Sets [`max_attempts`](Self::max_attempts) (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff) and
    /// [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets [`renew_before_expiry`](Self::renew_before_expiry).
    pub fn with_renew_before_expiry(mut self, margin: Duration) -> Self {
        self.renew_before_expiry = margin;
        self
    }

    /// The delay before attempt number `failures` (0 for the first): none for the
    /// first, then exponential with jitter.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = failures.saturating_sub(1).min(20);
        let nominal = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let nominal_ms = u64::try_from(nominal.as_millis()).unwrap_or(u64::MAX);
        if nominal_ms < 2 {
            return nominal;
        }
        let half = nominal_ms / 2;
        let jitter = rand_core::OsRng.next_u64() % (nominal_ms - half + 1);
        Duration::from_millis(half + jitter)
    }

    /// When to open the replacement of a connection with `lifetime` (LIFE-004): not
    /// sooner than [`MIN_RENEWAL`], so that a server announcing a tiny lifetime cannot
    /// make the client reconnect in a tight loop.
    pub(crate) fn renew_after(&self, lifetime: Duration) -> Duration {
        lifetime
            .saturating_sub(self.renew_before_expiry.min(lifetime / 4))
            .max(MIN_RENEWAL)
    }
}

/// The shortest time a connection is used before it is renewed.
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// Whether a connection that closed with `code` is worth re-opening: the server or
/// the network went away, or the session reached its lifetime. Every other code
/// names a refusal or a fault that a new connection would meet again.
pub(crate) fn reconnectable(code: CloseCode) -> bool {
    matches!(
        code,
        CloseCode::GOING_AWAY
            | CloseCode::TRY_AGAIN_LATER
            | CloseCode::SESSION_EXPIRED
            | CloseCode::TIMEOUT
    )
}

/// Whether a failed dial is worth trying again.
pub(crate) fn dial_retryable(error: &ConnectError) -> bool {
    match error {
        ConnectError::WebSocket(_) | ConnectError::Timeout => true,
        ConnectError::Closed { code, .. } | ConnectError::Handshake { code, .. } => {
            reconnectable(*code)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_maximum() {
        let policy = ReconnectPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(policy.backoff(0), Duration::ZERO);
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn renewal_leaves_a_margin_scaled_to_short_lifetimes() {
        let policy = ReconnectPolicy::default();
        assert_eq!(
            policy.renew_after(Duration::from_secs(62 * 60)),
            Duration::from_secs(60 * 60)
        );
        assert_eq!(
            policy.renew_after(Duration::from_secs(2)),
            Duration::from_millis(1500)
        );
        assert_eq!(policy.renew_after(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn only_losses_a_new_connection_can_mend_are_reconnected() {
        for code in [
            CloseCode::GOING_AWAY,
            CloseCode::TRY_AGAIN_LATER,
            CloseCode::SESSION_EXPIRED,
            CloseCode::TIMEOUT,
        ] {
            assert!(reconnectable(code), "{code}");
        }
        for code in [
            CloseCode::NORMAL,
            CloseCode::INTERNAL_ERROR,
            CloseCode::AUTH_FAILED,
            CloseCode::HANDSHAKE_FAILED,
            CloseCode::CAPABILITY_REVOKED,
            CloseCode::RATE_LIMITED,
            CloseCode::PROTOCOL_VIOLATION,
            CloseCode::DECRYPT_FAILED,
            CloseCode(4999),
        ] {
            assert!(!reconnectable(code), "{code}");
        }
    }
}

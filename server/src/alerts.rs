//! Alerts (spec section 18, EVT-003): the security events marked *alert* go, past
//! their thresholds, to an [`AlertSink`] the embedding application subscribes to
//! with [`ServerBuilder::alert_sink`](crate::ServerBuilder::alert_sink).
//!
//! Which alerts reach the sink:
//!
//! - every `origin_rejected`, `decrypt_failed`, `replay_rejected`,
//!   `protocol_violation`, `oversize_frame`, `capability_revoked`,
//!   `unauthenticated_request` and `manifest_changed`;
//! - `auth_failed` and `handshake_failed` once the failures from one IP address reach
//!   [`AlertThresholds::auth_failures_per_address`] in a window;
//! - `preauth_limited` once refusals of one address reach
//!   [`AlertThresholds::preauth_refusals_per_address`] in a window;
//! - `rate_limited` once one identity's refusals reach
//!   [`AlertThresholds::rate_limited_per_identity`] in a window;
//! - `call_rate_high` once one identity's calls reach
//!   [`AlertThresholds::calls_per_identity`] in a window.
//!
//! A thresholded alert is raised once per window per address or identity, when the
//! count reaches the threshold, with the count in [`Alert::occurrences`].
//!
//! Every event, below a threshold or not, is also logged (`toolwire::event`) and
//! counted (`toolwire_security_events_total`). Counted kinds are logged at INFO, the
//! other alerts at WARN: a peer repeating a counted event (a flood of refused
//! calls) cannot flood the log with warnings; the alert at the threshold is what
//! warns (the default sink logs it at WARN).

use crate::metrics;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use toolwire_protocol::events::{EventName, EventRecord};
use toolwire_protocol::IdentityKey;

/// One alert: the event that raised it and how many of its kind the window held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Alert {
    /// The event (name, time, common fields, own fields).
    pub record: EventRecord,
    /// The TCP peer's address, when the event came from a connection (behind a
    /// reverse proxy, the proxy's).
    pub peer_addr: Option<SocketAddr>,
    /// Events of this kind from this address or identity in the current window; 1
    /// for alerts without a threshold.
    pub occurrences: u32,
}

/// Receives alerts. Called on the connection task that saw the event, so an
/// implementation **must not block or wait**: hand the alert to a bounded queue (the
/// implementation on [`tokio::sync::mpsc::Sender<Alert>`] does exactly that) or do
/// constant, non-blocking work.
pub trait AlertSink: Send + Sync + 'static {
    /// Takes one alert.
    fn alert(&self, alert: &Alert);
}

/// The default sink: logs each alert at WARN on target `toolwire::alert`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlertSink;

impl AlertSink for LogAlertSink {
    fn alert(&self, alert: &Alert) {
        let record = &alert.record;
        let name = record.event.name();
        tracing::warn!(
            target: "toolwire::alert",
            event = name.as_str(),
            time = record.time_rfc3339().as_str(),
            role = record.context.role_str(),
            session_id = record.session_id_hex().as_deref(),
            peer_key = record.peer_key_text().as_deref(),
            peer_addr = alert.peer_addr.map(|addr| addr.to_string()).as_deref(),
            occurrences = alert.occurrences,
            "toolwire alert: {name}"
        );
    }
}

/// A bounded queue as a sink: `try_send`, never waiting. An alert that finds the
/// queue full is dropped and counted (`toolwire_alerts_dropped_total`); the event
/// itself is still in the log.
impl AlertSink for tokio::sync::mpsc::Sender<Alert> {
    fn alert(&self, alert: &Alert) {
        if self.try_send(alert.clone()).is_err() {
            metrics::alert_dropped();
        }
    }
}

/// When counted events become alerts. Each field's doc gives its default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AlertThresholds {
    /// The counting window. Default 60 s.
    pub window: Duration,
    /// Authentication failures (`auth_failed`, `handshake_failed`) from one IP
    /// address per window that raise an alert. Default 5.
    pub auth_failures_per_address: u32,
    /// Pre-authentication refusals (`preauth_limited`) of one IP address per window
    /// that raise an alert. Default 1.
    pub preauth_refusals_per_address: u32,
    /// Rate-limit refusals (`rate_limited`) of one identity per window that raise an
    /// alert. Default 20.
    pub rate_limited_per_identity: u32,
    /// Calls of one identity per window that raise `call_rate_high`. Default 12 000
    /// (twice the default per-identity rate of 100 calls/s sustained for a minute is
    /// never reached without refusals; this flags identities running near it).
    pub calls_per_identity: u32,
    /// Addresses and identities tracked at once, over all counters. Default 4096.
    /// Bounds the memory an attacker can make the counters hold (one entry is a few
    /// dozen bytes): when full, expired entries are dropped, and if none expired,
    /// new keys share one overflow counter per kind, so a flood from many addresses
    /// still raises alerts (attributed to no single address).
    pub max_tracked: usize,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            auth_failures_per_address: 5,
            preauth_refusals_per_address: 1,
            rate_limited_per_identity: 20,
            calls_per_identity: 12_000,
            max_tracked: 4096,
        }
    }
}

/// What a counter is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Address(IpAddr),
    Identity(IdentityKey),
    /// The shared counter of keys that found the table full.
    Overflow,
}

/// Whether alerts of this kind reach the sink only past a threshold.
pub(crate) fn counted(name: EventName) -> bool {
    matches!(
        name,
        EventName::AuthFailed
            | EventName::HandshakeFailed
            | EventName::PreauthLimited
            | EventName::RateLimited
    )
}

/// The kinds of counted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Counted {
    AuthFailures,
    PreauthRefusals,
    RateLimited,
    Calls,
}

/// Fixed-window counters per (kind, subject), bounded by
/// [`AlertThresholds::max_tracked`].
struct WindowCounters {
    entries: HashMap<(Counted, Subject), (Instant, u32)>,
}

impl WindowCounters {
    /// Counts one event; returns the count in the current window.
    fn hit(
        &mut self,
        kind: Counted,
        subject: Subject,
        now: Instant,
        limits: &AlertThresholds,
    ) -> u32 {
        let window = limits.window;
        let mut key = (kind, subject);
        if !self.entries.contains_key(&key) && self.entries.len() >= limits.max_tracked {
            self.entries
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if self.entries.len() >= limits.max_tracked {
                key = (kind, Subject::Overflow);
            }
        }
        let entry = self.entries.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

/// The server's alert state: the sink and the threshold counters.
pub(crate) struct Alerts {
    sink: std::sync::Arc<dyn AlertSink>,
    thresholds: AlertThresholds,
    counters: Mutex<WindowCounters>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl Alerts {
    pub(crate) fn new(sink: std::sync::Arc<dyn AlertSink>, thresholds: AlertThresholds) -> Self {
        Self {
            sink,
            thresholds,
            counters: Mutex::new(WindowCounters {
                entries: HashMap::new(),
            }),
        }
    }

    /// Counts one event of `kind`; returns the count when it just reached
    /// `threshold` (the alert is due), `None` otherwise.
    fn count(&self, kind: Counted, subject: Subject, threshold: u32) -> Option<u32> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counters.hit(kind, subject, Instant::now(), &self.thresholds);
        (count == threshold.max(1)).then_some(count)
    }

    /// Counts a call of `identity`; returns the count when it just reached
    /// [`AlertThresholds::calls_per_identity`].
    pub(crate) fn count_call(&self, identity: IdentityKey) -> Option<u32> {
        self.count(
            Counted::Calls,
            Subject::Identity(identity),
            self.thresholds.calls_per_identity,
        )
    }

    /// The counting window.
    pub(crate) fn window(&self) -> Duration {
        self.thresholds.window
    }

    /// Decides whether an alert event goes to the sink, and sends it.
    pub(crate) fn consider(&self, record: EventRecord, peer_addr: Option<SocketAddr>) {
        let name = record.event.name();
        let address = peer_addr.map_or(Subject::Overflow, |addr| Subject::Address(addr.ip()));
        let identity = record
            .context
            .peer_key
            .map_or(Subject::Overflow, Subject::Identity);
        let t = &self.thresholds;
        let occurrences = match name {
            EventName::AuthFailed | EventName::HandshakeFailed => {
                self.count(Counted::AuthFailures, address, t.auth_failures_per_address)
            }
            EventName::PreauthLimited => self.count(
                Counted::PreauthRefusals,
                address,
                t.preauth_refusals_per_address,
            ),
            EventName::RateLimited => {
                self.count(Counted::RateLimited, identity, t.rate_limited_per_identity)
            }
            // Raised by `count_call` already crossing its threshold.
            EventName::CallRateHigh => record
                .event
                .fields()
                .calls
                .map(|calls| u32::try_from(calls).unwrap_or(u32::MAX)),
            _ if name.is_alert() => Some(1),
            _ => None,
        };
        if let Some(occurrences) = occurrences {
            metrics::alert(name);
            self.sink.alert(&Alert {
                record,
                peer_addr,
                occurrences,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_tracked: usize) -> AlertThresholds {
        AlertThresholds {
            max_tracked,
            ..AlertThresholds::default()
        }
    }

    #[test]
    fn counts_reset_after_the_window() {
        let limits = limits(16);
        let mut counters = WindowCounters {
            entries: HashMap::new(),
        };
        let subject = Subject::Address(IpAddr::from([10, 0, 0, 1]));
        let start = Instant::now();
        for expected in 1..=3 {
            assert_eq!(
                counters.hit(Counted::AuthFailures, subject, start, &limits),
                expected
            );
        }
        let later = start + limits.window;
        assert_eq!(
            counters.hit(Counted::AuthFailures, subject, later, &limits),
            1
        );
    }

    /// The table never holds more than `max_tracked` keys (plus one overflow counter
    /// per kind), and keys beyond it are still counted, together.
    #[test]
    fn a_flood_of_addresses_is_bounded_and_still_counted() {
        let limits = limits(8);
        let mut counters = WindowCounters {
            entries: HashMap::new(),
        };
        let now = Instant::now();
        let mut last = 0;
        for index in 0..1000u32 {
            let subject = Subject::Address(IpAddr::from(index.to_be_bytes()));
            last = counters.hit(Counted::AuthFailures, subject, now, &limits);
        }
        assert!(counters.entries.len() <= 9);
        assert_eq!(last, 1000 - 8);
    }
}

//! The server's side of spec section 18: reports each situation of the event table
//! (EVT-001) with its common and own fields (EVT-002), hands alerts to the alert
//! sink (EVT-003, `alerts.rs`), and keeps the per-connection counters logged with
//! `connection_closed` and the metrics of `metrics.rs`.

use crate::builder::Inner;
use crate::metrics::{self, TrafficCounters};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
use toolwire_protocol::authz::{DecisionKind, DecisionRecord};
use toolwire_protocol::events::{
    rfc3339_utc, ConnectionCounters, EventContext, EventName, EventRecord, PeerText,
    RecordPosition, SecurityEvent,
};
use toolwire_protocol::message::Request;
use toolwire_protocol::{CloseCode, Error, ErrorCode, Role, SessionInfo, Side};

/// Logs `event`, counts it, and hands it to the alert sink when it is an alert past
/// its threshold. `peer` is the TCP peer, when known.
pub(crate) fn report(
    inner: &Inner,
    context: EventContext,
    peer: Option<SocketAddr>,
    event: SecurityEvent,
) {
    let record = EventRecord::new(SystemTime::now(), context, event);
    let name = record.event.name();
    record.log_as(name.is_alert() && !crate::alerts::counted(name));
    metrics::security_event(name);
    if name.is_alert() {
        inner.alerts.consider(record, peer);
    }
}

/// Executed calls whose start is remembered at once (for the latency histogram).
const MAX_TRACKED_CALLS: usize = 4096;

/// A call being executed, for the latency histogram.
struct Started {
    at: Instant,
    tool: String,
}

/// One connection's event state: its common fields, counters, and the position of
/// the record being processed.
pub(crate) struct ConnectionEvents {
    context: EventContext,
    peer: SocketAddr,
    counters: ConnectionCounters,
    last_record: Option<RecordPosition>,
    traffic: TrafficCounters,
    started: HashMap<u64, Started>,
}

impl ConnectionEvents {
    /// Reports `connection_opened`.
    pub(crate) fn opened(inner: &Inner, peer: SocketAddr) -> Self {
        let events = Self {
            context: EventContext::new(Role::Server),
            peer,
            counters: ConnectionCounters::default(),
            last_record: None,
            traffic: TrafficCounters::register(),
            started: HashMap::new(),
        };
        metrics::connection_opened();
        events.report(inner, SecurityEvent::ConnectionOpened { peer_addr: peer });
        events
    }

    /// Reports `event` with this connection's common fields.
    pub(crate) fn report(&self, inner: &Inner, event: SecurityEvent) {
        report(inner, self.context, Some(self.peer), event);
    }

    /// Counts a received record and remembers its position.
    pub(crate) fn record_in(&mut self, record: &[u8]) {
        self.counters.record_in(record.len());
        self.traffic.record_in(record.len());
        self.last_record = RecordPosition::peek(record);
    }

    /// Counts a sent record.
    pub(crate) fn record_out(&mut self, len: usize) {
        self.counters.record_out(len);
        self.traffic.record_out(len);
    }

    /// The handshake completed: reports `handshake_ok`.
    pub(crate) fn established(&mut self, inner: &Inner, info: &SessionInfo) {
        self.context = EventContext::established(Role::Server, info.session_id, info.peer);
        metrics::handshake(true);
        self.report(inner, SecurityEvent::HandshakeOk);
    }

    /// An authenticated peer whose key is no longer allowed (the allowlist changed
    /// after the server was built): `auth_failed` with its key.
    pub(crate) fn unknown_client(&self, inner: &Inner) {
        self.report(
            inner,
            SecurityEvent::AuthFailed {
                reason: toolwire_protocol::error::AuthFailure::UnknownClient,
            },
        );
    }

    /// The protocol closed the connection: reports the error's event, if any.
    pub(crate) fn closed_by(&mut self, inner: &Inner, error: Option<&Error>) {
        let Some(error) = error else {
            return;
        };
        if self.context.session_id.is_none() && error.close_code().is_some() {
            metrics::handshake(false);
        }
        let event = SecurityEvent::from_error(error, self.last_record.take());
        if let Some(mut event) = event {
            if let SecurityEvent::OversizeFrame { limit, .. } = &mut event {
                *limit = Some(inner.protocol.limits().max_record_body as u64);
            }
            self.report(inner, event);
        }
    }

    /// A WebSocket frame over the size limit: reports `oversize_frame`.
    pub(crate) fn oversize_frame(&mut self, inner: &Inner, length: Option<usize>, limit: usize) {
        self.report(
            inner,
            SecurityEvent::OversizeFrame {
                length: length.map(|length| length as u64),
                limit: Some(limit as u64),
            },
        );
    }

    /// One authorization decision: logs `authz_decision` and reports the refusal's own
    /// event (`rate_limited`, `permission_denied`, `grant_expired`,
    /// `capability_revoked`, `unauthenticated_request`), counts the call, and checks
    /// the identity's call rate.
    pub(crate) fn decision(
        &mut self,
        inner: &Inner,
        record: &DecisionRecord,
        request: &Request,
        retry_after_ms: Option<u64>,
        known_tool: bool,
    ) {
        self.counters.calls += 1;
        let tool = if known_tool {
            record.tool.as_str()
        } else {
            "unknown"
        };
        // The decision record of AUTHZ-024 on its own target, with the common fields.
        tracing::info!(
            target: "toolwire::decision",
            event = EventName::AuthzDecision.as_str(),
            time = %rfc3339_utc(SystemTime::now()),
            role = "server",
            session_id = %to_hex(&record.session_id),
            peer_key = %record.client,
            session = %to_hex(&record.session_id[..8]),
            client = %record.client,
            lineage = %to_hex(&record.lineage),
            request_id = record.request_id,
            retry = record.retry,
            tool = %PeerText::new(&record.tool),
            decision = ?record.decision,
            refused_at = record.refused_at.map(|step| step.name()),
            policy_version = record.policy_version,
            authority = ?record.authority,
            "toolwire authorization decision"
        );
        metrics::security_event(EventName::AuthzDecision);
        match record.decision {
            DecisionKind::Execute => {
                // Bounded by the in-flight cap while every end is reported; this
                // guards against an end path that forgets to.
                if self.started.len() >= MAX_TRACKED_CALLS {
                    self.started.clear();
                }
                self.started.insert(
                    record.request_id,
                    Started {
                        at: Instant::now(),
                        tool: tool.to_owned(),
                    },
                );
            }
            DecisionKind::AnsweredFromCache => metrics::call(tool, "cached"),
            DecisionKind::Refused(code) => {
                self.counters.denials += 1;
                metrics::call(tool, code.name().unwrap_or("UNKNOWN"));
                metrics::denial(record.refused_at.map_or("unknown", |step| step.name()));
                let request_id = record.request_id;
                let grant_id = || request.grant_id.as_deref().map(PeerText::new);
                let event = match code {
                    ErrorCode::RESOURCE_EXHAUSTED => Some(SecurityEvent::RateLimited {
                        tool: PeerText::new(&record.tool),
                        retry_after_ms,
                        request_id,
                    }),
                    ErrorCode::PERMISSION_DENIED => Some(SecurityEvent::PermissionDenied {
                        tool: PeerText::new(&record.tool),
                        request_id,
                    }),
                    ErrorCode::GRANT_EXPIRED => Some(SecurityEvent::GrantExpired {
                        grant_id: grant_id(),
                        request_id,
                    }),
                    ErrorCode::CAPABILITY_REVOKED => Some(SecurityEvent::CapabilityRevoked {
                        grant_id: grant_id(),
                        request_id,
                    }),
                    ErrorCode::UNAUTHENTICATED => {
                        Some(SecurityEvent::UnauthenticatedRequest { request_id })
                    }
                    _ => None,
                };
                if let Some(event) = event {
                    self.report(inner, event);
                }
            }
            _ => {}
        }
        if let Some(calls) = inner.alerts.count_call(record.client) {
            let window_ms = u64::try_from(inner.alerts.window().as_millis()).unwrap_or(u64::MAX);
            self.report(
                inner,
                SecurityEvent::CallRateHigh {
                    calls: u64::from(calls),
                    window_ms,
                },
            );
        }
    }

    /// An executed call ended with `outcome` (`ok` or an error code's name): counts
    /// it and records its duration. Calls that end without an answer (cancelled,
    /// interrupted, connection gone) are forgotten by [`forget`](Self::forget).
    pub(crate) fn call_ended(&mut self, id: u64, outcome: Option<ErrorCode>) {
        if let Some(started) = self.started.remove(&id) {
            let outcome = match outcome {
                None => "ok",
                Some(code) => code.name().unwrap_or("UNKNOWN"),
            };
            metrics::call(&started.tool, outcome);
            metrics::call_duration(&started.tool, started.at.elapsed());
        }
    }

    /// An executed call ended without an answer.
    pub(crate) fn forget(&mut self, id: u64) {
        if let Some(started) = self.started.remove(&id) {
            metrics::call(&started.tool, "CANCELLED");
        }
    }

    /// A tool definition changed under a granted session: `manifest_changed`.
    pub(crate) fn manifest_changed(&self, inner: &Inner, tools: &[String]) {
        for tool in tools {
            self.report(
                inner,
                SecurityEvent::ManifestChanged {
                    tool: PeerText::new(tool),
                },
            );
        }
    }

    /// The connection ended: reports `connection_closed` with the counters.
    pub(crate) fn connection_closed(&mut self, inner: &Inner, code: CloseCode, side: Side) {
        metrics::connection_closed(code);
        let ids: Vec<u64> = self.started.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
        self.report(
            inner,
            SecurityEvent::ConnectionClosed {
                close_code: code,
                side,
                counters: self.counters,
            },
        );
    }
}

/// Lowercase hex.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

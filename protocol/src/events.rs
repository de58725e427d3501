//! The security event vocabulary of spec section 18 (EVT) as types, and the one
//! function that logs an event with `tracing` under the spec's field names.
//!
//! Implements EVT-001 (one name per situation: [`EventName`]), EVT-002 (the common
//! fields of [`EventContext`] and each event's own fields), EVT-004 and EVT-005.
//!
//! EVT-004 holds by construction: no [`SecurityEvent`] variant has a field that could
//! hold key material, a token, a signature, plaintext, or argument or result bytes.
//! Fields are numbers, fixed names (`&'static str` enums), socket addresses, public
//! identity keys, the session id, and [`PeerText`]: peer-controlled text that can
//! only be built escaped and truncated (EVT-005).
//!
//! The drivers decide *when* an event happens; this module decides what it is called
//! and what it carries, so that the server and the client log the same lines:
//!
//! ```
//! use toolwire_protocol::events::{EventContext, EventName, EventRecord, PeerText, SecurityEvent};
//! use toolwire_protocol::Role;
//!
//! let event = SecurityEvent::OriginRejected {
//!     origin: PeerText::new("https://evil.example\n"),
//!     http_status: 403,
//! };
//! assert_eq!(event.name(), EventName::OriginRejected);
//! assert!(event.name().is_alert());
//! assert_eq!(event.fields().origin.map(PeerText::as_str), Some("https://evil.example\\n"));
//! let record = EventRecord::new(std::time::SystemTime::UNIX_EPOCH, EventContext::new(Role::Server), event);
//! assert_eq!(record.time_rfc3339(), "1970-01-01T00:00:00.000Z");
//! record.log();
//! ```

use crate::codes::CloseCode;
use crate::error::{AuthFailure, Error, Limit, Malformed, Misbehavior, Side};
use crate::identity::IdentityKey;
use crate::record::HEADER_LEN;
use crate::Role;
use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

/// The `tracing` target of every event line.
pub const TARGET: &str = "toolwire::event";

/// The longest [`PeerText`], in bytes of its escaped form (EVT-005).
pub const PEER_TEXT_LIMIT: usize = 128;

macro_rules! event_names {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $alert:literal; )*) => {
        /// The name of every event of the vocabulary (spec section 18 table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum EventName {
            $( $(#[$doc])* $variant, )*
        }

        impl EventName {
            /// Every name, in the order of the spec's table.
            pub const ALL: &'static [EventName] = &[ $( EventName::$variant, )* ];

            /// The name as it appears in the `event` field.
            pub fn as_str(self) -> &'static str {
                match self { $( EventName::$variant => $name, )* }
            }

            /// Whether the spec marks the event *alert* (EVT-003): it goes to the
            /// alert sink as well as to the log.
            pub fn is_alert(self) -> bool {
                match self { $( EventName::$variant => $alert, )* }
            }
        }
    };
}

event_names! {
    /// A transport connection was accepted (server) or opened (client).
    ConnectionOpened = "connection_opened", false;
    /// The handshake completed; the peer is authenticated.
    HandshakeOk = "handshake_ok", false;
    /// The connection closed.
    ConnectionClosed = "connection_closed", false;
    /// An upgrade request's `Origin` is not allowed (HTTP 403).
    OriginRejected = "origin_rejected", true;
    /// An upgrade request did not offer the subprotocol.
    SubprotocolRejected = "subprotocol_rejected", false;
    /// An upgrade was refused by the pre-authentication caps (HTTP 429 / 503).
    PreauthLimited = "preauth_limited", true;
    /// The Noise handshake failed.
    HandshakeFailed = "handshake_failed", true;
    /// The handshake completed but the peer's identity is not accepted.
    AuthFailed = "auth_failed", true;
    /// A record failed authenticated decryption.
    DecryptFailed = "decrypt_failed", true;
    /// A record was replayed or reordered.
    ReplayRejected = "replay_rejected", true;
    /// The peer broke another protocol rule.
    ProtocolViolation = "protocol_violation", true;
    /// A frame or record over the size limit arrived.
    OversizeFrame = "oversize_frame", true;
    /// The handshake or idle deadline passed.
    Timeout = "timeout", false;
    /// The session reached its maximum lifetime.
    SessionExpired = "session_expired", false;
    /// A call was refused by a rate budget or the in-flight cap.
    RateLimited = "rate_limited", true;
    /// A call was refused PERMISSION_DENIED.
    PermissionDenied = "permission_denied", false;
    /// A call relied on an expired grant.
    GrantExpired = "grant_expired", false;
    /// A call relied on a revoked grant.
    CapabilityRevoked = "capability_revoked", true;
    /// A REQUEST's envelope signature did not verify.
    UnauthenticatedRequest = "unauthenticated_request", true;
    /// A tool definition changed after it was granted or pinned.
    ManifestChanged = "manifest_changed", true;
    /// One identity made an unusually high number of calls in a window.
    CallRateHigh = "call_rate_high", true;
    /// The decision record of one authorization (AUTHZ-024). Logged by the server
    /// with the record's own fields; no [`SecurityEvent`] variant carries it.
    AuthzDecision = "authz_decision", false;
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Peer-controlled text made safe to log (EVT-005): every character outside
/// printable ASCII, and `"` and `\`, is escaped, and the result is cut to at most
/// [`PEER_TEXT_LIMIT`] bytes, ending in `...` when cut. The only way to build one is
/// [`PeerText::new`], so an event cannot carry raw peer text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerText(String);

impl PeerText {
    /// Escapes and truncates `raw`. Reads at most [`PEER_TEXT_LIMIT`] characters of
    /// it, whatever its length.
    pub fn new(raw: &str) -> Self {
        const ELLIPSIS: &str = "...";
        let mut out = String::new();
        let mut escaped = String::new();
        for (index, character) in raw.chars().enumerate() {
            escaped.clear();
            match character {
                '"' | '\\' => {
                    escaped.push('\\');
                    escaped.push(character);
                }
                ' '..='~' => escaped.push(character),
                '\n' => escaped.push_str("\\n"),
                '\r' => escaped.push_str("\\r"),
                '\t' => escaped.push_str("\\t"),
                other => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(other))),
            }
            if index >= PEER_TEXT_LIMIT
                || out.len() + escaped.len() > PEER_TEXT_LIMIT - ELLIPSIS.len()
            {
                out.push_str(ELLIPSIS);
                return Self(out);
            }
            out.push_str(&escaped);
        }
        Self(out)
    }

    /// The escaped text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Display for PeerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The header position (epoch, sequence number) of a received record: all that
/// `decrypt_failed` and `replay_rejected` say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// The header's epoch.
    pub epoch: u32,
    /// The header's sequence number.
    pub seq: u64,
}

impl RecordPosition {
    /// Reads the epoch and sequence number of a record's header (spec section 6),
    /// without checking anything else; `None` for a record shorter than a header.
    pub fn peek(record: &[u8]) -> Option<Self> {
        let header = record.get(..HEADER_LEN)?;
        let epoch = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
        Some(Self { epoch, seq })
    }
}

/// Which deadline a `timeout` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadlineKind {
    /// The handshake deadline.
    Handshake,
    /// The idle deadline.
    Idle,
    /// The HTTP upgrade (with TLS: the TLS handshake and the upgrade) did not complete
    /// in time: a slow or silent client holding a pre-authentication slot.
    Upgrade,
    /// A write made no progress for the write-stall limit (LIM-004): the peer stopped
    /// reading.
    WriteStall,
}

impl DeadlineKind {
    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::Handshake => "handshake",
            DeadlineKind::Idle => "idle",
            DeadlineKind::Upgrade => "upgrade",
            DeadlineKind::WriteStall => "write_stall",
        }
    }
}

/// The `reason` field of `auth_failed`.
pub fn auth_failure_reason(failure: AuthFailure) -> &'static str {
    match failure {
        AuthFailure::InvalidIdentityKey => "invalid_identity_key",
        AuthFailure::BadIdentitySignature => "bad_identity_signature",
        AuthFailure::UntrustedServer => "untrusted_server",
        AuthFailure::UnknownClient => "unknown_client",
    }
}

/// What one connection moved and decided, logged with `connection_closed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    /// Records (binary WebSocket messages) received.
    pub records_in: u64,
    /// Records sent.
    pub records_out: u64,
    /// Bytes of records received.
    pub bytes_in: u64,
    /// Bytes of records sent.
    pub bytes_out: u64,
    /// Calls made (client) or evaluated (server).
    pub calls: u64,
    /// Calls refused.
    pub denials: u64,
}

impl ConnectionCounters {
    /// Counts one received record of `len` bytes.
    pub fn record_in(&mut self, len: usize) {
        self.records_in += 1;
        self.bytes_in += len as u64;
    }

    /// Counts one sent record of `len` bytes.
    pub fn record_out(&mut self, len: usize) {
        self.records_out += 1;
        self.bytes_out += len as u64;
    }
}

/// One event of the vocabulary with its own fields (the common ones are in
/// [`EventContext`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityEvent {
    /// `connection_opened`.
    ConnectionOpened {
        /// The peer's socket address.
        peer_addr: SocketAddr,
    },
    /// `handshake_ok` (session id and peer key are common fields).
    HandshakeOk,
    /// `connection_closed`, with the connection's counters.
    ConnectionClosed {
        /// The close code.
        close_code: CloseCode,
        /// Who closed.
        side: Side,
        /// What the connection moved and decided.
        counters: ConnectionCounters,
    },
    /// `origin_rejected`.
    OriginRejected {
        /// The refused `Origin` value(s).
        origin: PeerText,
        /// The HTTP status the upgrade was answered with.
        http_status: u16,
    },
    /// `subprotocol_rejected`.
    SubprotocolRejected {
        /// The HTTP status the upgrade was answered with.
        http_status: u16,
    },
    /// `preauth_limited`.
    PreauthLimited {
        /// The refused peer.
        peer_addr: SocketAddr,
        /// The HTTP status (429 per address, 503 in total).
        http_status: u16,
    },
    /// `handshake_failed`.
    HandshakeFailed {
        /// The close code.
        close_code: CloseCode,
    },
    /// `auth_failed` (the peer key, when known, is a common field).
    AuthFailed {
        /// Why the identity was refused.
        reason: AuthFailure,
    },
    /// `decrypt_failed`.
    DecryptFailed {
        /// The record's position, when its header could be read.
        position: Option<RecordPosition>,
    },
    /// `replay_rejected`.
    ReplayRejected {
        /// The record's position, when its header could be read.
        position: Option<RecordPosition>,
    },
    /// `protocol_violation`.
    ProtocolViolation {
        /// The close code.
        close_code: CloseCode,
    },
    /// `oversize_frame`.
    OversizeFrame {
        /// The frame's announced or actual length, when known.
        length: Option<u64>,
        /// The limit it broke, when known.
        limit: Option<u64>,
    },
    /// `timeout`.
    Timeout {
        /// Which deadline.
        kind: DeadlineKind,
    },
    /// `session_expired`.
    SessionExpired,
    /// `rate_limited`.
    RateLimited {
        /// The tool named in the refused call.
        tool: PeerText,
        /// The retry hint sent to the peer.
        retry_after_ms: Option<u64>,
        /// The request id.
        request_id: u64,
    },
    /// `permission_denied`.
    PermissionDenied {
        /// The tool named in the refused call.
        tool: PeerText,
        /// The request id.
        request_id: u64,
    },
    /// `grant_expired`.
    GrantExpired {
        /// The grant's id, when the request named one.
        grant_id: Option<PeerText>,
        /// The request id.
        request_id: u64,
    },
    /// `capability_revoked`.
    CapabilityRevoked {
        /// The grant's id, when the request named one.
        grant_id: Option<PeerText>,
        /// The request id.
        request_id: u64,
    },
    /// `unauthenticated_request`.
    UnauthenticatedRequest {
        /// The request id.
        request_id: u64,
    },
    /// `manifest_changed`.
    ManifestChanged {
        /// The changed tool.
        tool: PeerText,
    },
    /// `call_rate_high`.
    CallRateHigh {
        /// Calls counted in the window.
        calls: u64,
        /// The window's length in milliseconds.
        window_ms: u64,
    },
}

/// An event's own fields under the spec's names, flattened for logging; `None` for
/// a field the event does not have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFields<'a> {
    /// `peer_addr`.
    pub peer_addr: Option<SocketAddr>,
    /// `close_code`.
    pub close_code: Option<u16>,
    /// `side`: `local` or `remote`.
    pub side: Option<&'static str>,
    /// `origin`.
    pub origin: Option<&'a PeerText>,
    /// `http_status`.
    pub http_status: Option<u16>,
    /// `reason`.
    pub reason: Option<&'static str>,
    /// `epoch`.
    pub epoch: Option<u32>,
    /// `seq`.
    pub seq: Option<u64>,
    /// `length`.
    pub length: Option<u64>,
    /// `limit`.
    pub limit: Option<u64>,
    /// `kind`.
    pub kind: Option<&'static str>,
    /// `tool`.
    pub tool: Option<&'a PeerText>,
    /// `retry_after_ms`.
    pub retry_after_ms: Option<u64>,
    /// `request_id`.
    pub request_id: Option<u64>,
    /// `grant_id`.
    pub grant_id: Option<&'a PeerText>,
    /// `calls`.
    pub calls: Option<u64>,
    /// `window_ms`.
    pub window_ms: Option<u64>,
}

impl SecurityEvent {
    /// The event's name.
    pub fn name(&self) -> EventName {
        match self {
            SecurityEvent::ConnectionOpened { .. } => EventName::ConnectionOpened,
            SecurityEvent::HandshakeOk => EventName::HandshakeOk,
            SecurityEvent::ConnectionClosed { .. } => EventName::ConnectionClosed,
            SecurityEvent::OriginRejected { .. } => EventName::OriginRejected,
            SecurityEvent::SubprotocolRejected { .. } => EventName::SubprotocolRejected,
            SecurityEvent::PreauthLimited { .. } => EventName::PreauthLimited,
            SecurityEvent::HandshakeFailed { .. } => EventName::HandshakeFailed,
            SecurityEvent::AuthFailed { .. } => EventName::AuthFailed,
            SecurityEvent::DecryptFailed { .. } => EventName::DecryptFailed,
            SecurityEvent::ReplayRejected { .. } => EventName::ReplayRejected,
            SecurityEvent::ProtocolViolation { .. } => EventName::ProtocolViolation,
            SecurityEvent::OversizeFrame { .. } => EventName::OversizeFrame,
            SecurityEvent::Timeout { .. } => EventName::Timeout,
            SecurityEvent::SessionExpired => EventName::SessionExpired,
            SecurityEvent::RateLimited { .. } => EventName::RateLimited,
            SecurityEvent::PermissionDenied { .. } => EventName::PermissionDenied,
            SecurityEvent::GrantExpired { .. } => EventName::GrantExpired,
            SecurityEvent::CapabilityRevoked { .. } => EventName::CapabilityRevoked,
            SecurityEvent::UnauthenticatedRequest { .. } => EventName::UnauthenticatedRequest,
            SecurityEvent::ManifestChanged { .. } => EventName::ManifestChanged,
            SecurityEvent::CallRateHigh { .. } => EventName::CallRateHigh,
        }
    }

    /// Whether the event is an alert (EVT-003).
    pub fn is_alert(&self) -> bool {
        self.name().is_alert()
    }

    /// The event that reports the error which closed a connection, if it is one of
    /// the vocabulary; `last_record` is the position of the record being processed
    /// (for `decrypt_failed` and `replay_rejected`). [`Error::Closed`] and
    /// [`Error::Local`] report nothing (the close itself is `connection_closed`).
    pub fn from_error(error: &Error, last_record: Option<RecordPosition>) -> Option<Self> {
        let close_code = error.close_code()?;
        Some(match error {
            Error::DecryptFailed => SecurityEvent::DecryptFailed {
                position: last_record,
            },
            Error::PeerMisbehaved(Misbehavior::Replayed | Misbehavior::Reordered) => {
                SecurityEvent::ReplayRejected {
                    position: last_record,
                }
            }
            Error::HandshakeFailed
            | Error::Malformed(Malformed::HandshakeMessage | Malformed::HandshakePayload) => {
                SecurityEvent::HandshakeFailed { close_code }
            }
            Error::AuthFailed(reason) => SecurityEvent::AuthFailed { reason: *reason },
            Error::Malformed(_) | Error::PeerMisbehaved(_) | Error::Incompatible(_) => {
                SecurityEvent::ProtocolViolation { close_code }
            }
            Error::LimitExceeded(Limit::RecordSize) => SecurityEvent::OversizeFrame {
                length: None,
                limit: None,
            },
            Error::Timeout(crate::error::TimeoutKind::Handshake) => SecurityEvent::Timeout {
                kind: DeadlineKind::Handshake,
            },
            Error::Timeout(crate::error::TimeoutKind::Idle) => SecurityEvent::Timeout {
                kind: DeadlineKind::Idle,
            },
            Error::Timeout(crate::error::TimeoutKind::SessionLifetime) => {
                SecurityEvent::SessionExpired
            }
            _ => return None,
        })
    }

    /// The event's own fields.
    pub fn fields(&self) -> EventFields<'_> {
        let mut fields = EventFields::default();
        match self {
            SecurityEvent::ConnectionOpened { peer_addr } => fields.peer_addr = Some(*peer_addr),
            SecurityEvent::HandshakeOk | SecurityEvent::SessionExpired => {}
            SecurityEvent::ConnectionClosed {
                close_code, side, ..
            } => {
                fields.close_code = Some(close_code.0);
                fields.side = Some(match side {
                    Side::Local => "local",
                    Side::Remote => "remote",
                });
            }
            SecurityEvent::OriginRejected {
                origin,
                http_status,
            } => {
                fields.origin = Some(origin);
                fields.http_status = Some(*http_status);
            }
            SecurityEvent::SubprotocolRejected { http_status } => {
                fields.http_status = Some(*http_status);
            }
            SecurityEvent::PreauthLimited {
                peer_addr,
                http_status,
            } => {
                fields.peer_addr = Some(*peer_addr);
                fields.http_status = Some(*http_status);
            }
            SecurityEvent::HandshakeFailed { close_code }
            | SecurityEvent::ProtocolViolation { close_code } => {
                fields.close_code = Some(close_code.0);
            }
            SecurityEvent::AuthFailed { reason } => {
                fields.reason = Some(auth_failure_reason(*reason));
            }
            SecurityEvent::DecryptFailed { position }
            | SecurityEvent::ReplayRejected { position } => {
                fields.epoch = position.map(|position| position.epoch);
                fields.seq = position.map(|position| position.seq);
            }
            SecurityEvent::OversizeFrame { length, limit } => {
                fields.length = *length;
                fields.limit = *limit;
            }
            SecurityEvent::Timeout { kind } => fields.kind = Some(kind.as_str()),
            SecurityEvent::RateLimited {
                tool,
                retry_after_ms,
                request_id,
            } => {
                fields.tool = Some(tool);
                fields.retry_after_ms = *retry_after_ms;
                fields.request_id = Some(*request_id);
            }
            SecurityEvent::PermissionDenied { tool, request_id } => {
                fields.tool = Some(tool);
                fields.request_id = Some(*request_id);
            }
            SecurityEvent::GrantExpired {
                grant_id,
                request_id,
            }
            | SecurityEvent::CapabilityRevoked {
                grant_id,
                request_id,
            } => {
                fields.grant_id = grant_id.as_ref();
                fields.request_id = Some(*request_id);
            }
            SecurityEvent::UnauthenticatedRequest { request_id } => {
                fields.request_id = Some(*request_id);
            }
            SecurityEvent::ManifestChanged { tool } => fields.tool = Some(tool),
            SecurityEvent::CallRateHigh { calls, window_ms } => {
                fields.calls = Some(*calls);
                fields.window_ms = Some(*window_ms);
            }
        }
        fields
    }
}

/// The common fields that do not change within a connection (EVT-002): the role,
/// and once known the session id and the peer's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventContext {
    /// Which side logs.
    pub role: Role,
    /// The session id, once the handshake completed.
    pub session_id: Option<[u8; 32]>,
    /// The peer's identity key, once known.
    pub peer_key: Option<IdentityKey>,
}

impl EventContext {
    /// A context with nothing known yet but the role.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            session_id: None,
            peer_key: None,
        }
    }

    /// The context of an established session.
    pub fn established(role: Role, session_id: [u8; 32], peer_key: IdentityKey) -> Self {
        Self {
            role,
            session_id: Some(session_id),
            peer_key: Some(peer_key),
        }
    }

    /// The `role` field's value.
    pub fn role_str(&self) -> &'static str {
        match self.role {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// One event with its time and context: what is logged, and what an alert sink
/// receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// When it happened.
    pub time: SystemTime,
    /// The common fields.
    pub context: EventContext,
    /// The event.
    pub event: SecurityEvent,
}

impl EventRecord {
    /// An event that happened at `time`.
    pub fn new(time: SystemTime, context: EventContext, event: SecurityEvent) -> Self {
        Self {
            time,
            context,
            event,
        }
    }

    /// The `time` field: RFC 3339, UTC, milliseconds (`2026-11-25T17:02:36.123Z`).
    pub fn time_rfc3339(&self) -> String {
        rfc3339_utc(self.time)
    }

    /// The `session_id` field: lowercase hex.
    pub fn session_id_hex(&self) -> Option<String> {
        self.context.session_id.map(hex::encode)
    }

    /// The `peer_key` field: the key's text form (ID-006).
    pub fn peer_key_text(&self) -> Option<String> {
        self.context.peer_key.map(|key| key.to_string())
    }

    /// Logs the event with `tracing` on target [`TARGET`], with the spec's field
    /// names: WARN for alert events, INFO for the others.
    pub fn log(&self) {
        self.log_as(self.event.is_alert());
    }

    /// [`log`](Self::log) at WARN when `warn`, else at INFO (a driver that counts an
    /// event kind against a threshold warns only when the threshold is reached, so
    /// that a peer cannot flood the log with warnings).
    pub fn log_as(&self, warn: bool) {
        let name = self.event.name();
        let time = self.time_rfc3339();
        let role = self.context.role_str();
        let session_id = self.session_id_hex();
        let peer_key = self.peer_key_text();
        let fields = self.event.fields();
        let peer_addr = fields.peer_addr.map(|addr| addr.to_string());
        macro_rules! emit {
            ($level:expr, $($extra:tt)*) => {
                tracing::event!(
                    target: TARGET,
                    $level,
                    event = name.as_str(),
                    time = time.as_str(),
                    role,
                    session_id = session_id.as_deref(),
                    peer_key = peer_key.as_deref(),
                    $($extra)*
                )
            };
        }
        match (&self.event, warn) {
            (
                SecurityEvent::ConnectionClosed {
                    close_code,
                    side,
                    counters,
                },
                _,
            ) => emit!(
                tracing::Level::INFO,
                close_code = close_code.0,
                side = %side,
                records_in = counters.records_in,
                records_out = counters.records_out,
                bytes_in = counters.bytes_in,
                bytes_out = counters.bytes_out,
                calls = counters.calls,
                denials = counters.denials,
                "toolwire {name}"
            ),
            (_, alert) => {
                macro_rules! emit_fields {
                    ($level2:expr) => {
                        emit!(
                            $level2,
                            peer_addr = peer_addr.as_deref(),
                            close_code = fields.close_code,
                            side = fields.side,
                            origin = fields.origin.map(PeerText::as_str),
                            http_status = fields.http_status,
                            reason = fields.reason,
                            epoch = fields.epoch,
                            seq = fields.seq,
                            length = fields.length,
                            limit = fields.limit,
                            kind = fields.kind,
                            tool = fields.tool.map(PeerText::as_str),
                            retry_after_ms = fields.retry_after_ms,
                            request_id = fields.request_id,
                            grant_id = fields.grant_id.map(PeerText::as_str),
                            calls = fields.calls,
                            window_ms = fields.window_ms,
                            "toolwire {name}"
                        )
                    };
                }
                if alert {
                    emit_fields!(tracing::Level::WARN)
                } else {
                    emit_fields!(tracing::Level::INFO)
                }
            }
        }
    }
}

/// Formats `time` as RFC 3339 in UTC with milliseconds; times before 1970 print
/// as the epoch.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Incompatibility;
    use std::time::Duration;

    #[test]
    fn every_name_is_distinct_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for name in EventName::ALL {
            assert!(seen.insert(name.as_str()), "{name} twice");
            assert!(name
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(seen.len(), 22);
    }

    #[test]
    fn alert_marks_follow_the_spec_table() {
        let alerts: Vec<&str> = EventName::ALL
            .iter()
            .filter(|name| name.is_alert())
            .map(|name| name.as_str())
            .collect();
        assert_eq!(
            alerts,
            [
                "origin_rejected",
                "preauth_limited",
                "handshake_failed",
                "auth_failed",
                "decrypt_failed",
                "replay_rejected",
                "protocol_violation",
                "oversize_frame",
                "rate_limited",
                "capability_revoked",
                "unauthenticated_request",
                "manifest_changed",
                "call_rate_high",
            ]
        );
    }

    /// EVT-005: control characters and quotes are escaped, and the text is bounded
    /// however long the input.
    #[test]
    fn peer_text_is_escaped_and_bounded() {
        assert_eq!(
            PeerText::new("https://a.example").as_str(),
            "https://a.example"
        );
        assert_eq!(
            PeerText::new("a\"b\\c\nd\u{1b}[31m\u{202e}").as_str(),
            "a\\\"b\\\\c\\nd\\u{1b}[31m\\u{202e}"
        );
        let long = "x".repeat(100_000);
        let text = PeerText::new(&long);
        assert_eq!(text.as_str().len(), PEER_TEXT_LIMIT);
        assert!(text.as_str().ends_with("..."));
        let escapes = "\u{0}".repeat(1_000);
        assert!(PeerText::new(&escapes).as_str().len() <= PEER_TEXT_LIMIT);
        let exact = "y".repeat(PEER_TEXT_LIMIT - 3);
        assert_eq!(PeerText::new(&exact).as_str(), exact);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_971_756_123);
        assert_eq!(rfc3339_utc(time), "2026-11-29T17:02:36.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_utc(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn record_positions_are_read_from_the_header() {
        let mut record = vec![1, 0x10, 0, 0];
        record.extend_from_slice(&3u32.to_le_bytes());
        record.extend_from_slice(&77u64.to_le_bytes());
        assert_eq!(
            RecordPosition::peek(&record),
            Some(RecordPosition { epoch: 3, seq: 77 })
        );
        assert_eq!(RecordPosition::peek(&record[..15]), None);
    }

    #[test]
    fn errors_map_to_their_events() {
        let position = Some(RecordPosition { epoch: 0, seq: 5 });
        let cases = [
            (Error::DecryptFailed, Some(EventName::DecryptFailed)),
            (
                Error::PeerMisbehaved(Misbehavior::Replayed),
                Some(EventName::ReplayRejected),
            ),
            (Error::HandshakeFailed, Some(EventName::HandshakeFailed)),
            (
                Error::AuthFailed(AuthFailure::UnknownClient),
                Some(EventName::AuthFailed),
            ),
            (
                Error::Incompatible(Incompatibility::Version(9)),
                Some(EventName::ProtocolViolation),
            ),
            (
                Error::Timeout(crate::error::TimeoutKind::SessionLifetime),
                Some(EventName::SessionExpired),
            ),
            (
                Error::Closed {
                    code: CloseCode::NORMAL,
                    side: Side::Remote,
                },
                None,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(
                SecurityEvent::from_error(&error, position).map(|event| event.name()),
                expected,
                "{error:?}"
            );
        }
        let Some(event) = SecurityEvent::from_error(&Error::DecryptFailed, position) else {
            panic!("decrypt_failed");
        };
        assert_eq!(
            (event.fields().epoch, event.fields().seq),
            (Some(0), Some(5))
        );
    }
}

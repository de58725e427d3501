//! Errors of the client: connecting, and calling.

use toolwire_protocol::{CloseCode, ErrorCode, Side};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL, or uses plain `ws://` to a host that
    /// is not loopback without `dangerous().allow_plaintext()`.
    #[error("refusing to connect: {0}")]
    InsecureOrInvalidUrl(String),
    /// The configuration is incomplete (no identity, no pinned server).
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// TCP connect or the WebSocket upgrade failed (includes HTTP refusals such as
    /// 403 for a foreign Origin).
    #[error("WebSocket connection failed: {0}")]
    WebSocket(String),
    /// The TLS configuration is unusable (an invalid root certificate or PEM data),
    /// or the TLS handshake of a `wss://` connection failed: the server's certificate
    /// is not valid for the URL's host or not issued by a trusted root, or the server
    /// does not speak TLS. No upgrade request was sent.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server did not echo the `toolwire.v1` subprotocol.
    #[error("server did not accept the toolwire.v1 subprotocol")]
    SubprotocolNotAccepted,
    /// The handshake or the initial grant failed; the code is what the connection was
    /// closed with (AUTH_FAILED when the server's identity is not pinned, …).
    #[error("handshake failed: {error} (close {code})")]
    Handshake {
        /// The protocol error.
        error: toolwire_protocol::Error,
        /// The close code.
        code: CloseCode,
    },
    /// The server closed the connection before granting capabilities.
    #[error("connection closed by {side} side with {code} during connect")]
    Closed {
        /// The close code.
        code: CloseCode,
        /// Who closed.
        side: Side,
    },
    /// The handshake or the capability grant did not arrive in time.
    #[error("connect timed out")]
    Timeout,
    /// The server's signed tool manifest did not verify.
    #[error("the server's tool manifest did not verify")]
    BadManifest,
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with an RPC error.
    #[error("{code}: {message}")]
    Rpc {
        /// The RPC error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// For RESOURCE_EXHAUSTED: when a retry may succeed.
        retry_after_ms: Option<u64>,
    },
    /// The connection closed before the call was answered, and the session does not
    /// reconnect: the close code names a refusal or fault that a new connection would
    /// meet again (see [`ReconnectPolicy`](crate::ReconnectPolicy)), reconnection is
    /// disabled, or the session was closed. A call that had been sent may or may not
    /// have run.
    #[error("connection closed with {code} before the call was answered")]
    ConnectionClosed {
        /// The close code.
        code: CloseCode,
    },
    /// The connection was lost and reconnecting failed: `attempts` connections in a
    /// row were tried (or a dial was refused for good). A call that had been sent may
    /// or may not have run; it is not re-sent. The session stays usable: the next call
    /// tries to connect again.
    #[error("connection lost ({code}); reconnecting failed after {attempts} attempt(s): {reason}")]
    ReconnectFailed {
        /// How the lost connection closed.
        code: CloseCode,
        /// Connections tried.
        attempts: u32,
        /// Why the last attempt failed.
        reason: String,
    },
    /// The connection was lost while this streamed call was running. Streams are not
    /// resumed on a new connection (their items cannot be replayed), so the tool may
    /// or may not have run to its end.
    #[error("connection lost ({code}) while the stream was running; streams are not resumed")]
    StreamInterrupted {
        /// How the connection closed.
        code: CloseCode,
    },
    /// The call's deadline passed: on the client side (the server was sent CANCEL),
    /// or on the server, which answered DEADLINE_EXCEEDED (4) to the deadline the
    /// call carried.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The tool's definition changed since this session's grant; it is not callable
    /// until granted again.
    #[error("the definition of tool `{tool}` changed (manifest no longer matches the grant)")]
    ManifestChanged {
        /// The tool.
        tool: String,
    },
    /// The tool is not granted to this session.
    #[error("tool `{tool}` is not granted to this session")]
    NotGranted {
        /// The tool.
        tool: String,
    },
    /// The arguments could not be encoded or the result decoded.
    #[error("encoding: {0}")]
    Encoding(String),
    /// The response's envelope signature did not verify under the pinned server key.
    #[error("response signature did not verify")]
    BadResponseSignature,
}

impl CallError {
    /// The RPC error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Rpc { code, .. } => Some(*code),
            CallError::DeadlineExceeded => Some(ErrorCode::DEADLINE_EXCEEDED),
            _ => None,
        }
    }

    /// Whether retrying the same call later can succeed without any change by the
    /// caller (ERR-003): true exactly for the codes RESOURCE_EXHAUSTED, UNAVAILABLE
    /// and DEADLINE_EXCEEDED (an ERROR answer with one of them, or the call's own
    /// deadline passing). Every other error, including an RPC code this client does
    /// not know (ERR-002), is not retryable.
    pub fn is_retryable(&self) -> bool {
        self.code().is_some_and(ErrorCode::is_retryable)
    }

    /// Whether the call may have run although no result reached the caller: the
    /// server said so (RESULT_UNAVAILABLE, STALE_REQUEST_ID) or the connection was
    /// lost after the call was sent. The session never repeats such a call under a
    /// new request id (AMO-027); the application decides.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            CallError::Rpc { code, .. } => {
                matches!(
                    *code,
                    ErrorCode::RESULT_UNAVAILABLE | ErrorCode::STALE_REQUEST_ID
                )
            }
            CallError::ConnectionClosed { .. }
            | CallError::ReconnectFailed { .. }
            | CallError::StreamInterrupted { .. }
            | CallError::DeadlineExceeded => true,
            _ => false,
        }
    }
}

//! The crate's one error type, split by who is to blame, and its single mapping to
//! close codes ([`Error::close_code`]).
//!
//! Implements spec section "Close codes" (CLS-009..CLS-011): every
//! failure that ends a connection maps to exactly one close code, and failures of
//! decryption or authentication carry no detail (REC-029, HS-034).

use crate::codes::CloseCode;
use std::fmt;

/// Which end of a connection did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This endpoint.
    Local,
    /// The peer.
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// Everything that can go wrong in the protocol core.
///
/// Variants are grouped by blame. All but [`Error::Local`] end the connection; the
/// close code sent to the peer is [`Error::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes from the peer do not parse. The peer is broken or hostile; the
    /// connection closes with PROTOCOL_VIOLATION (4010), or HANDSHAKE_FAILED (4000)
    /// during the handshake. Nothing to retry.
    #[error("malformed {0}")]
    Malformed(Malformed),
    /// The peer sent well-formed bytes that break a protocol rule (wrong record type,
    /// wrong epoch, replay, out-of-order record). Report it as an attack or a bug in
    /// the peer; reconnecting to a correct peer will work.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(Misbehavior),
    /// The peer speaks something this endpoint does not support. Upgrade one side.
    #[error("peer incompatible: {0}")]
    Incompatible(Incompatibility),
    /// A record failed authenticated decryption. Deliberately opaque: the cause (wrong
    /// key, tampered header, tampered body) is not revealed to the peer or the logs.
    #[error("record failed authentication")]
    DecryptFailed,
    /// The Noise handshake failed (a message did not decrypt, wrong prologue or
    /// endpoint, non-contributory key). Opaque for the same reason as `DecryptFailed`.
    #[error("handshake failed")]
    HandshakeFailed,
    /// The peer completed the Noise handshake but its identity is not accepted.
    #[error("authentication failed: {0}")]
    AuthFailed(AuthFailure),
    /// A size or counter limit was reached.
    #[error("limit exceeded: {0}")]
    LimitExceeded(Limit),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(TimeoutKind),
    /// The connection is closed; `side` says who closed it.
    #[error("connection closed by {side} side with {code}")]
    Closed {
        /// The close code.
        code: CloseCode,
        /// Who closed.
        side: Side,
    },
    /// The caller used the API wrongly or configured it inconsistently. The connection
    /// is not affected; fix the call.
    #[error("local error: {0}")]
    Local(LocalError),
}

/// What did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A record shorter than its header, or a sealed record shorter than its tag.
    #[error("record")]
    Record,
    /// A handshake message of the wrong length.
    #[error("handshake message")]
    HandshakeMessage,
    /// A decrypted handshake payload that is not the expected msgpack structure, or
    /// holds a key or signature of the wrong length.
    #[error("handshake payload")]
    HandshakePayload,
    /// A decrypted inner message that is not a known msgpack message.
    #[error("inner message")]
    Message,
}

/// A protocol rule the peer broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misbehavior {
    /// A record type not allowed in the current state.
    #[error("unexpected record type")]
    UnexpectedRecordType,
    /// The reserved header field was not zero.
    #[error("reserved header bits set")]
    ReservedBitsSet,
    /// A record's epoch is not the receiver's current epoch.
    #[error("wrong epoch")]
    WrongEpoch,
    /// A KEY_UPDATE that does not announce exactly the next epoch.
    #[error("bad key update")]
    BadKeyUpdate,
    /// A handshake record with header fields other than the fixed values.
    #[error("bad handshake record header")]
    BadHandshakeHeader,
    /// A record whose sequence number was already accepted or fell out of the window.
    #[error("replayed record")]
    Replayed,
    /// A record that arrived ahead of or behind the next expected sequence number
    /// while strict ordering is in force.
    #[error("reordered record")]
    Reordered,
    /// A message kind the peer's role may not send (for example a client sending
    /// CAP_GRANT).
    #[error("unexpected message")]
    UnexpectedMessage,
}

/// Why the peer's identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The identity key is not a valid Ed25519 public key (or is a weak key).
    #[error("invalid identity key")]
    InvalidIdentityKey,
    /// The signature binding the identity key to the Noise static key did not verify.
    #[error("identity signature did not verify")]
    BadIdentitySignature,
    /// The server's identity key is not pinned or certified by a trusted operator.
    #[error("server identity not trusted")]
    UntrustedServer,
    /// The client's identity key is not allowed and it presented no valid grant.
    #[error("client identity not allowed")]
    UnknownClient,
}

/// What the peer speaks that this endpoint does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatibility {
    /// The record header's version byte.
    #[error("protocol version {0} unsupported")]
    Version(u8),
}

/// A limit that was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// A record larger than the maximum record length arrived.
    #[error("record too large")]
    RecordSize,
    /// A direction's sequence numbers (or epochs) are used up.
    #[error("sequence space exhausted")]
    SequenceSpace,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The handshake did not complete in time.
    #[error("handshake")]
    Handshake,
    /// Nothing was received for the idle timeout.
    #[error("idle")]
    Idle,
    /// The session reached its maximum lifetime.
    #[error("session lifetime")]
    SessionLifetime,
}

/// A mistake of the caller, not of the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// Application messages can only be sent once the handshake is complete.
    #[error("the connection is not established")]
    NotEstablished,
    /// The encoded message does not fit in one record; stream it in chunks.
    #[error("message of {size} bytes exceeds the record limit of {limit} bytes")]
    MessageTooLarge {
        /// Encoded size.
        size: usize,
        /// Maximum plaintext per record.
        limit: usize,
    },
    /// The message kind may not be sent by this connection's role (MSG-005): a client
    /// never sends CAP_GRANT, a server never sends REQUEST, and KEY_UPDATE, PONG and
    /// CLOSE are sent by the connection itself.
    #[error("a {kind} message may not be sent by this side")]
    NotAllowedForRole {
        /// The message kind.
        kind: &'static str,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The close code this error ends the connection with: the one place where
    /// errors become wire codes. `None` for [`Error::Local`], which does not close.
    pub fn close_code(&self) -> Option<CloseCode> {
        Some(match self {
            Error::Malformed(Malformed::HandshakeMessage | Malformed::HandshakePayload) => {
                CloseCode::HANDSHAKE_FAILED
            }
            Error::Malformed(_) => CloseCode::PROTOCOL_VIOLATION,
            Error::PeerMisbehaved(Misbehavior::Replayed | Misbehavior::Reordered) => {
                CloseCode::REPLAY_DETECTED
            }
            Error::PeerMisbehaved(_) => CloseCode::PROTOCOL_VIOLATION,
            Error::Incompatible(Incompatibility::Version(_)) => CloseCode::VERSION_UNSUPPORTED,
            Error::DecryptFailed => CloseCode::DECRYPT_FAILED,
            Error::HandshakeFailed => CloseCode::HANDSHAKE_FAILED,
            Error::AuthFailed(_) => CloseCode::AUTH_FAILED,
            Error::LimitExceeded(Limit::RecordSize) => CloseCode::MESSAGE_TOO_BIG,
            Error::LimitExceeded(Limit::SequenceSpace) => CloseCode::SEQUENCE_EXHAUSTED,
            Error::Timeout(TimeoutKind::Handshake | TimeoutKind::Idle) => CloseCode::TIMEOUT,
            Error::Timeout(TimeoutKind::SessionLifetime) => CloseCode::SESSION_EXPIRED,
            Error::Closed { code, .. } => *code,
            Error::Local(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, so that a new one cannot be added without a mapping decision.
    fn every_error() -> Vec<(Error, Option<CloseCode>)> {
        use CloseCode as C;
        vec![
            (
                Error::Malformed(Malformed::Record),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::Malformed(Malformed::Message),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::Malformed(Malformed::HandshakeMessage),
                Some(C::HANDSHAKE_FAILED),
            ),
            (
                Error::Malformed(Malformed::HandshakePayload),
                Some(C::HANDSHAKE_FAILED),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::ReservedBitsSet),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::WrongEpoch),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::BadKeyUpdate),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::UnexpectedMessage),
                Some(C::PROTOCOL_VIOLATION),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::Replayed),
                Some(C::REPLAY_DETECTED),
            ),
            (
                Error::PeerMisbehaved(Misbehavior::Reordered),
                Some(C::REPLAY_DETECTED),
            ),
            (
                Error::Incompatible(Incompatibility::Version(9)),
                Some(C::VERSION_UNSUPPORTED),
            ),
            (Error::DecryptFailed, Some(C::DECRYPT_FAILED)),
            (Error::HandshakeFailed, Some(C::HANDSHAKE_FAILED)),
            (
                Error::AuthFailed(AuthFailure::InvalidIdentityKey),
                Some(C::AUTH_FAILED),
            ),
            (
                Error::AuthFailed(AuthFailure::BadIdentitySignature),
                Some(C::AUTH_FAILED),
            ),
            (
                Error::AuthFailed(AuthFailure::UntrustedServer),
                Some(C::AUTH_FAILED),
            ),
            (
                Error::AuthFailed(AuthFailure::UnknownClient),
                Some(C::AUTH_FAILED),
            ),
            (
                Error::LimitExceeded(Limit::RecordSize),
                Some(C::MESSAGE_TOO_BIG),
            ),
            (
                Error::LimitExceeded(Limit::SequenceSpace),
                Some(C::SEQUENCE_EXHAUSTED),
            ),
            (Error::Timeout(TimeoutKind::Handshake), Some(C::TIMEOUT)),
            (Error::Timeout(TimeoutKind::Idle), Some(C::TIMEOUT)),
            (
                Error::Timeout(TimeoutKind::SessionLifetime),
                Some(C::SESSION_EXPIRED),
            ),
            (
                Error::Closed {
                    code: C::NORMAL,
                    side: Side::Remote,
                },
                Some(C::NORMAL),
            ),
            (Error::Local(LocalError::NotEstablished), None),
            (
                Error::Local(LocalError::NotAllowedForRole { kind: "CAP_GRANT" }),
                None,
            ),
            (
                Error::Local(LocalError::MessageTooLarge { size: 2, limit: 1 }),
                None,
            ),
            (Error::Local(LocalError::Config("x".into())), None),
        ]
    }

    #[test]
    fn every_error_maps_to_its_specified_close_code() {
        for (error, expected) in every_error() {
            assert_eq!(error.close_code(), expected, "{error:?}");
        }
    }

    #[test]
    fn opaque_errors_print_no_detail() {
        assert_eq!(
            Error::DecryptFailed.to_string(),
            "record failed authentication"
        );
        assert_eq!(Error::HandshakeFailed.to_string(), "handshake failed");
    }
}

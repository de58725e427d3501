//! Wire codes: RPC error codes carried in ERROR messages and close codes carried in
//! CLOSE records and WebSocket close frames.
//!
//! Both are open newtypes: a peer may send a code this version does not know, and it
//! round-trips unchanged (`ErrorCode(4242)` prints as `UNKNOWN_ERROR_CODE(4242)`).
//! Every known code is defined once, in the tables below, which also generate the
//! list of names used by the spec and the conformance suite.
//!
//! Implements the code tables of spec sections "Error codes" (ERR-001, ERR-002,
//! ERR-003) and "Close codes" (CLS-007).

use std::fmt;

macro_rules! wire_code_table {
    (
        $(#[$type_doc:meta])*
        $name:ident($repr:ty), unknown = $unknown:literal;
        $( $(#[$doc:meta])* $constant:ident = $value:literal ),* $(,)?
    ) => {
        $(#[$type_doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $( $(#[$doc])* pub const $constant: Self = Self($value); )*

            /// Every code this version defines, in numeric order.
            pub const ALL: &'static [Self] = &[ $( Self::$constant ),* ];

            /// The code's name, or `None` for a code this version does not define.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($constant)), )*
                    _ => None,
                }
            }

            /// Looks a code up by its name (as printed by [`name`](Self::name)).
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( stringify!($constant) => Some(Self::$constant), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{name}({})", self.0),
                    None => write!(f, concat!($unknown, "({})"), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

wire_code_table! {
    /// An RPC error code carried in an ERROR message. Values 1–16 reuse the gRPC
    /// status names; 100 and up are toolwire's own.
    ErrorCode(u32), unknown = "UNKNOWN_ERROR_CODE";
    /// The call was cancelled by the caller (CANCEL) before it produced a result.
    CANCELLED = 1,
    /// The handler failed in a way it did not classify.
    UNKNOWN = 2,
    /// The arguments are not valid for the tool (for example they violate its schema).
    INVALID_ARGUMENT = 3,
    /// The call's deadline passed before it finished.
    DEADLINE_EXCEEDED = 4,
    /// No tool of that name exists.
    NOT_FOUND = 5,
    /// The caller is not allowed to call this tool (not granted, or policy refuses).
    PERMISSION_DENIED = 7,
    /// A rate or concurrency budget is exhausted; `retry_after_ms` says when to retry.
    RESOURCE_EXHAUSTED = 8,
    /// The system is not in a state the call needs.
    FAILED_PRECONDITION = 9,
    /// The server failed internally.
    INTERNAL = 13,
    /// The server cannot serve the call now; retrying later may succeed.
    UNAVAILABLE = 14,
    /// The request's envelope signature did not verify.
    UNAUTHENTICATED = 16,
    /// The request id is older than the at-most-once window: it may have run; it will not run again.
    STALE_REQUEST_ID = 100,
    /// The request id was seen before but its result is no longer held: outcome unknown.
    RESULT_UNAVAILABLE = 101,
    /// The grant authorizing the call has expired.
    GRANT_EXPIRED = 102,
    /// The capability authorizing the call was revoked.
    CAPABILITY_REVOKED = 103,
}

impl ErrorCode {
    /// Whether retrying the same call later can succeed without any change by the caller.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RESOURCE_EXHAUSTED | Self::UNAVAILABLE | Self::DEADLINE_EXCEEDED
        )
    }
}

wire_code_table! {
    /// A connection close code, carried in the CLOSE record and in the WebSocket close
    /// frame. 1000–1013 are RFC 6455 codes; 4000–4010 are toolwire's own.
    CloseCode(u16), unknown = "UNKNOWN_CLOSE_CODE";
    /// Normal closure.
    NORMAL = 1000,
    /// The endpoint is going away (shutdown).
    GOING_AWAY = 1001,
    /// A text frame (or other unsupported data) was received.
    UNSUPPORTED_DATA = 1003,
    /// A frame or record exceeded the size limit.
    MESSAGE_TOO_BIG = 1009,
    /// The endpoint hit an internal error.
    INTERNAL_ERROR = 1011,
    /// The endpoint is overloaded; try again later.
    TRY_AGAIN_LATER = 1013,
    /// The Noise handshake failed (bad message, failed decryption, wrong prologue, non-contributory key).
    HANDSHAKE_FAILED = 4000,
    /// The peer's identity did not authenticate or is not trusted.
    AUTH_FAILED = 4001,
    /// The peer speaks a protocol version this endpoint does not support.
    VERSION_UNSUPPORTED = 4002,
    /// A record failed AEAD authentication.
    DECRYPT_FAILED = 4003,
    /// A record was replayed or arrived out of order.
    REPLAY_DETECTED = 4004,
    /// The sequence number space of a direction is used up.
    SEQUENCE_EXHAUSTED = 4005,
    /// The session outlived its maximum lifetime; reconnect.
    SESSION_EXPIRED = 4006,
    /// Every capability of the session was revoked.
    CAPABILITY_REVOKED = 4007,
    /// The peer exceeded its rate limit persistently.
    RATE_LIMITED = 4008,
    /// A deadline passed: handshake, idle or upgrade.
    TIMEOUT = 4009,
    /// The peer broke a protocol rule (bad header field, unexpected message, bad encoding).
    PROTOCOL_VIOLATION = 4010,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_code() {
        for code in ErrorCode::ALL {
            let name = code.name().expect("defined codes have names");
            assert_eq!(ErrorCode::from_name(name), Some(*code));
        }
        for code in CloseCode::ALL {
            let name = code.name().expect("defined codes have names");
            assert_eq!(CloseCode::from_name(name), Some(*code));
        }
    }

    #[test]
    fn unknown_codes_survive_and_print_their_value() {
        assert_eq!(ErrorCode(4242).name(), None);
        assert_eq!(ErrorCode(4242).to_string(), "UNKNOWN_ERROR_CODE(4242)");
        assert_eq!(CloseCode(4999).to_string(), "UNKNOWN_CLOSE_CODE(4999)");
        assert_eq!(
            CloseCode::REPLAY_DETECTED.to_string(),
            "REPLAY_DETECTED(4004)"
        );
    }
}

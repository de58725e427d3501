//! Inner messages: the plaintext of every sealed record, encoded as msgpack.
//!
//! Implements spec sections "Inner messages" (MSG-001..MSG-012) and "Conventions"
//! (CNV-001..CNV-014). A message is a
//! msgpack map `{"type": NAME, "body": {...}}` with named fields; unknown fields are
//! ignored so that later versions can add optional fields. Byte fields (arguments,
//! results, signatures, digests) are msgpack `bin` and are never re-serialized, so
//! signatures cover exactly the bytes that travelled.

use crate::codes::{CloseCode, ErrorCode};
use crate::error::{Error, Malformed};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Maximum nesting depth accepted when decoding a message (bounds recursion on
/// hostile input).
pub const MAX_DECODE_DEPTH: usize = 32;

/// One inner message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Message {
    /// Server → client: the tools granted to this session (the first message a server
    /// sends after the handshake).
    CapGrant(CapGrant),
    /// Server → client: grants changed mid-session (policy change, revocation, reply
    /// to CAP_REQUEST).
    CapUpdate(CapUpdate),
    /// Client → server: ask for more tools or present more grants mid-session.
    CapRequest(CapRequest),
    /// Client → server: call a tool.
    Request(Request),
    /// Server → client: the final result of a call.
    Response(Response),
    /// Server → client: a partial result or progress of a call.
    StreamItem(StreamItem),
    /// Either direction: a call (or the connection, when `id` is absent) failed.
    Error(ErrorMessage),
    /// Client → server: abandon a call.
    Cancel(Cancel),
    /// Either direction: the sender's next records use the next epoch's key.
    KeyUpdate(KeyUpdate),
    /// Either direction: keepalive probe.
    Ping(Ping),
    /// Either direction: keepalive answer, echoing the PING's nonce.
    Pong(Ping),
    /// Either direction: the sender closes the connection with this code.
    Close(Close),
}

impl Message {
    /// Encodes as msgpack with named fields.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types into a Vec cannot fail: every map key is
        // a string and no Serialize impl here returns an error.
        // Sized for the byte fields up front, so that large arguments or results are
        // not copied again as the buffer grows.
        let mut out = Vec::with_capacity(128 + self.payload_len());
        match rmp_serde::encode::write_named(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Length of the message's largest byte field (arguments, result, item data).
    fn payload_len(&self) -> usize {
        match self {
            Message::Request(request) => request.args.len(),
            Message::Response(response) => response.result.len(),
            Message::StreamItem(item) => item.data.len(),
            _ => 0,
        }
    }

    /// Decodes one message; the whole input must be consumed.
    ///
    /// # Errors
    /// [`Error::Malformed`]`(`[`Malformed::Message`]`)` for anything that is not
    /// exactly one known message.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut deserializer = rmp_serde::Deserializer::new(bytes);
        deserializer.set_max_depth(MAX_DECODE_DEPTH);
        let message = Message::deserialize(&mut deserializer)
            .map_err(|_| Error::Malformed(Malformed::Message))?;
        if deserializer.get_ref().is_empty() {
            Ok(message)
        } else {
            Err(Error::Malformed(Malformed::Message))
        }
    }

    /// The message's wire name (`"REQUEST"`, ...), for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::CapGrant(_) => "CAP_GRANT",
            Message::CapUpdate(_) => "CAP_UPDATE",
            Message::CapRequest(_) => "CAP_REQUEST",
            Message::Request(_) => "REQUEST",
            Message::Response(_) => "RESPONSE",
            Message::StreamItem(_) => "STREAM_ITEM",
            Message::Error(_) => "ERROR",
            Message::Cancel(_) => "CANCEL",
            Message::KeyUpdate(_) => "KEY_UPDATE",
            Message::Ping(_) => "PING",
            Message::Pong(_) => "PONG",
            Message::Close(_) => "CLOSE",
        }
    }
}

/// A tool granted to the session, bound to the digest of its manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedTool {
    /// Tool name.
    pub name: String,
    /// SHA-256 digest of the tool's manifest entry (see `manifest`); a changed
    /// definition has a different digest and is not covered by this grant.
    pub digest: ByteBuf,
}

/// Rate and concurrency limits that apply to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLimits {
    /// Sustained calls per second.
    pub rate_per_sec: u32,
    /// Burst size of the rate bucket.
    pub burst: u32,
    /// Maximum calls in flight at once.
    pub max_in_flight: u32,
}

/// A manifest together with the server identity's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The msgpack encoding of the manifest, exactly as signed.
    pub manifest: ByteBuf,
    /// Ed25519 signature by the server identity.
    pub signature: ByteBuf,
}

/// CAP_GRANT body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapGrant {
    /// Granted tools: requested ∩ policy ∩ presented grants.
    pub granted: Vec<GrantedTool>,
    /// Limits in force.
    pub limits: CallLimits,
    /// When the session's authority ends (Unix milliseconds), if earlier than the
    /// session lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Version of the policy snapshot the grant was computed from.
    pub policy_version: u64,
    /// The signed tool manifest.
    pub manifest: SignedManifest,
}

/// CAP_UPDATE body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapUpdate {
    /// The complete new set of granted tools (replaces the previous set).
    pub granted: Vec<GrantedTool>,
    /// Tools that were revoked since the last grant, for the client's information.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Version of the policy snapshot.
    pub policy_version: u64,
    /// The signed manifest, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<SignedManifest>,
}

/// CAP_REQUEST body; also carried in handshake message 3.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CapRequest {
    /// Tools the client wants (`"*"` for all it may have).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Capability grants (PASETO v4.public tokens) the client presents.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// REQUEST body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Request id, unique within the client's lineage.
    pub id: u64,
    /// Tool name.
    pub tool: String,
    /// Tool arguments: msgpack bytes, signed as they are.
    pub args: ByteBuf,
    /// Id of the grant the call relies on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Relative deadline in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Envelope signature by the client identity (absent when signatures are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ByteBuf>,
    /// True when the client re-sends an id it already sent on an earlier connection
    /// of the same lineage (a retry after a reconnect); false for an id's first
    /// transmission. Absent on the wire means false, and false is never written.
    ///
    /// The server uses it only to decide how to answer an id its at-most-once table
    /// has no record of (see [`crate::amo`], AMO-008 and AMO-015): a retry on a
    /// lineage whose history the server lost is answered RESULT_UNAVAILABLE instead
    /// of executed.
    /// It grants nothing, so the envelope signature does not cover it; the AEAD
    /// record protects it in transit like every other field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// RESPONSE body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request id answered.
    pub id: u64,
    /// The result: msgpack bytes, signed as they are.
    pub result: ByteBuf,
    /// Envelope signature by the server identity (absent when signatures are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ByteBuf>,
}

/// STREAM_ITEM body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamItem {
    /// The request id.
    pub id: u64,
    /// Position of this item in the call's stream, from 0.
    pub index: u64,
    /// The item: msgpack bytes.
    pub data: ByteBuf,
}

/// ERROR body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// The request id, or absent for an error about the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The RPC error code.
    pub code: u32,
    /// A human-readable message (never secret material).
    #[serde(default)]
    pub message: String,
    /// For RESOURCE_EXHAUSTED: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorMessage {
    /// The code as a typed value (unknown codes survive).
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode(self.code)
    }
}

/// CANCEL body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request id to abandon.
    pub id: u64,
}

/// KEY_UPDATE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUpdate {
    /// The epoch the sender's next record uses; must be current + 1.
    pub epoch: u32,
}

/// PING and PONG body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the PONG.
    pub nonce: u64,
}

/// CLOSE body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// The close code.
    pub code: u16,
    /// Optional human-readable reason; empty for security failures.
    #[serde(default)]
    pub reason: String,
}

impl Close {
    /// The code as a typed value.
    pub fn close_code(&self) -> CloseCode {
        CloseCode(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Message {
        Message::Request(Request {
            id: 7,
            tool: "echo".into(),
            args: ByteBuf::from(vec![0x91, 0x01]),
            grant_id: None,
            deadline_ms: Some(500),
            signature: Some(ByteBuf::from(vec![9; 64])),
            retry: false,
        })
    }

    #[test]
    fn every_kind_round_trips() {
        let messages = vec![
            request(),
            Message::Response(Response {
                id: 7,
                result: ByteBuf::from(vec![1]),
                signature: None,
            }),
            Message::Error(ErrorMessage {
                id: Some(1),
                code: 7,
                message: "no".into(),
                retry_after_ms: Some(5),
            }),
            Message::Cancel(Cancel { id: 3 }),
            Message::KeyUpdate(KeyUpdate { epoch: 1 }),
            Message::Ping(Ping { nonce: 1 }),
            Message::Pong(Ping { nonce: 1 }),
            Message::Close(Close {
                code: 1000,
                reason: String::new(),
            }),
            Message::CapRequest(CapRequest {
                tools: vec!["a".into()],
                grants: vec![],
            }),
            Message::StreamItem(StreamItem {
                id: 1,
                index: 0,
                data: ByteBuf::from(vec![]),
            }),
        ];
        for message in messages {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn retry_flag_is_optional_on_the_wire_and_round_trips() {
        let first = request();
        let bytes = first.encode();
        // `retry: false` is not written, so a first transmission is byte-identical
        // to what a peer that predates the field sends, and decodes as false.
        assert!(!bytes.windows(5).any(|window| window == b"retry"));
        assert_eq!(Message::decode(&bytes), Ok(first.clone()));

        let Message::Request(mut retried) = first else {
            unreachable!("request() builds a REQUEST")
        };
        retried.retry = true;
        let retried = Message::Request(retried);
        let bytes = retried.encode();
        assert!(bytes.windows(5).any(|window| window == b"retry"));
        assert_eq!(Message::decode(&bytes), Ok(retried));
    }

    #[test]
    fn arguments_travel_as_msgpack_bin() {
        let bytes = request().encode();
        // bin8 marker 0xc4, length 2, then the argument bytes verbatim.
        let needle = [0xc4, 0x02, 0x91, 0x01];
        assert!(bytes.windows(4).any(|window| window == needle));
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_rejected() {
        #[derive(Serialize)]
        struct PingWithExtra {
            nonce: u64,
            future_field: &'static str,
        }
        #[derive(Serialize)]
        struct Envelope<T> {
            r#type: &'static str,
            body: T,
        }
        let extended = rmp_serde::to_vec_named(&Envelope {
            r#type: "PING",
            body: PingWithExtra {
                nonce: 5,
                future_field: "x",
            },
        })
        .expect("encodes");
        assert_eq!(
            Message::decode(&extended),
            Ok(Message::Ping(Ping { nonce: 5 }))
        );

        let unknown = rmp_serde::to_vec_named(&Envelope {
            r#type: "TELEPORT",
            body: Ping { nonce: 5 },
        })
        .expect("encodes");
        assert_eq!(
            Message::decode(&unknown),
            Err(Error::Malformed(Malformed::Message))
        );
    }

    #[test]
    fn trailing_bytes_and_truncation_are_rejected() {
        let mut bytes = request().encode();
        bytes.push(0xc0);
        assert!(Message::decode(&bytes).is_err());
        let bytes = request().encode();
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        // {"type": "PING", "body": [[[[...]]]]} nested far beyond the limit.
        let mut bytes = vec![
            0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'P', b'I', b'N', b'G', 0xa4, b'b', b'o',
            b'd', b'y',
        ];
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        assert!(Message::decode(&bytes).is_err());
    }
}

//! The audit log: an append-only, hash-chained JSON Lines file of every call decision,
//! with the signed envelopes as evidence and periodic heads signed by the server
//! identity, so that anyone holding only the server's public key can check it
//! (`toolwire audit verify FILE`).
//!
//! Sans-IO like the rest of the crate: [`AuditChain`] turns a [`DecisionRecord`] and
//! the call's envelopes into the next line and [`verify_log`] checks a log's text; the
//! server owns the file, the clock and the fsync policy.
//!
//! Implements spec section "Audit log" (AUD-001..AUD-012).
//!
//! # Line format
//!
//! Every line is one JSON object. The first line of the log built by the tests
//! (`tests/audit_log.rs`: fixed identities, a real session) is exactly:
//!
//! ```text
//! {"seq":0,"time":"2026-01-01T00:00:01Z","kind":"call","prev":"0000000000000000000000000000000000000000000000000000000000000000","session":"d81c484d38dcdbc63803441a6f20f752a7105ea9c1750495b5e9b341d61a9ebb","client":"Ivwpd5Lwtv_Av8_bftsMCqFOAlo2XsDjQuhuOCnLdLY","lineage":"d81c484d38dcdbc63803441a6f20f752","request_id":1,"retry":false,"tool":"search","decision":"execute","refused_at":null,"policy_version":7,"authority":"key","detail":null,"request":{"hash":"c56a7934e9233e95099f1e8abd0e09637d69fcfdda8cde1cf2c30c2d4b744ff1","grant_id":"","sig":"d8aaf36ea0e23652128b49444aa1fc912036fcda716df3d9a5cf5f43a6e1a00c81512c9d82a0abad47a3faf8249e78768e6728877c5a55598951a7e0e1a66002","args":"91a6733363723374"},"response":{"request_hash":"c56a7934e9233e95099f1e8abd0e09637d69fcfdda8cde1cf2c30c2d4b744ff1","hash":"cdca8b98b1dc607bbdc15ba076869dc8b8d9f26d207114ce1983bf74717f6401","sig":"6cc8ab4ad1b2ea1a62a942cb4f65ed0d901a956dc411166fb8892a90bd911936e7ba807e87731995aa8418e4261a0b702aec80536f54e56a5b9e07a6290b5506","result":"9101"}}
//! ```
//!
//! The same shape, wrapped and abridged for reading:
//!
//! ```text
//! {"seq":0,"time":"2026-01-01T00:00:01Z","kind":"call","prev":"000…0 (genesis)",
//!  "session":"d81c…9ebb","client":"Ivwpd5Lwtv_Av8_bftsMCqFOAlo2XsDjQuhuOCnLdLY",
//!  "lineage":"d81c…0f752","request_id":1,"retry":false,"tool":"search",
//!  "decision":"execute","refused_at":null,"policy_version":7,"authority":"key",
//!  "detail":null,
//!  "request":{"hash":"c56a…4ff1","grant_id":"","sig":"d8aa…6002 (client)",
//!             "args":"91a6733363723374"},
//!  "response":{"request_hash":"c56a…4ff1","hash":"cdca…6401 (SHA-256 of result)",
//!              "sig":"6cc8…5506 (server)","result":"9101"}}
//! ```
//!
//! A refused call has no response and, refused before its signature was verified,
//! no request signature:
//!
//! ```text
//! {"seq":1,"time":"2026-01-01T00:00:02Z","kind":"call","prev":"e899…9a70",
//!  "session":"d81c…9ebb","client":"Ivwpd5Lwtv_Av8_bftsMCqFOAlo2XsDjQuhuOCnLdLY",
//!  "lineage":"d81c…0f752","request_id":2,"retry":false,"tool":"delete",
//!  "decision":"refused:PERMISSION_DENIED","refused_at":"granted","policy_version":7,
//!  "authority":null,"detail":null,
//!  "request":{"hash":"9be5…5ce5","grant_id":"","sig":null,"args":"90"},
//!  "response":null}
//! ```
//!
//! A head (here after a third call, not shown):
//!
//! ```text
//! {"seq":3,"time":"2026-01-01T00:00:04Z","kind":"head","prev":"b158…6f40",
//!  "key":"-AzM3OSuHAeuIIoq35mjEK5CB-Awb6AjYRCwaCe7uNA","sig":"1c7a…c108"}
//! ```
//!
//! # Rules (normative)
//!
//! 1. **AUD-001 Lines (MUST).** The log is UTF-8 text. Each entry is one JSON object
//!    on one line, terminated by a single LF (0x0A). A writer serializes entries
//!    compactly (no insignificant whitespace) with the fields in the order of AUD-004
//!    and AUD-007, byte strings in lowercase hex, and appends line and LF in one
//!    write. A verifier accepts an entry only if it has exactly the fields of its
//!    `kind` (`"call"` or `"head"`), each with its type: a missing, extra, duplicate
//!    or mistyped field, an unknown kind, hex that is not lowercase or not of the
//!    stated length, an identity key that is not valid (ID-001), or a `time` that is
//!    not RFC 3339 in UTC, makes the line malformed.
//! 2. **AUD-002 Sequence (MUST).** `seq` is 0 in the first entry of a chain and
//!    increases by exactly one per entry, across rotated files (AUD-008). The value
//!    2^64 − 1 is never used.
//! 3. **AUD-003 Chain (MUST).** `prev` is the lowercase hex SHA-256 of the exact
//!    bytes of the previous line, without its LF. The first entry of a chain has the
//!    genesis value: 64 zeros (there is no genesis line). Each line therefore commits
//!    to every line before it.
//! 4. **AUD-004 Call entries (MUST).** The server writes one call entry for every
//!    evaluated REQUEST (every [`DecisionRecord`], AUTHZ-008), refused or not, at the
//!    latest when the call's answer is sent. Fields, in order: `seq`, `time`,
//!    `kind` = `"call"`, `prev`, `session` (session id, 64 hex), `client` (identity
//!    key text), `lineage` (32 hex), `request_id`, `retry`, `tool`, `decision`
//!    (`"execute"`, `"answered_from_cache"`, `"already_in_flight"` or
//!    `"refused:<CODE>"`, `<CODE>` the error code's name, or its number when it has
//!    none), `refused_at` (the refusing step's name, AUTHZ-002, or null),
//!    `policy_version`, `authority` (`"key"`, `"grant:<grant id>"` or null), `detail`
//!    (the operator detail of the record, or null), `request` (AUD-005, or null) and
//!    `response` (AUD-006, or null).
//! 5. **AUD-005 Request evidence (MUST).** `{"hash","grant_id","sig","args"}`:
//!    `hash` is the request hash (ENV: SHA-256 of the request signing bytes, computed
//!    from the entry's `session`, `request_id` and `tool` and the `args` and
//!    `grant_id` below); `grant_id` is the grant id the REQUEST named, `""` for none
//!    (it can differ from `authority`); `sig` is the client's envelope signature
//!    (128 hex) **only if the authorization pipeline verified it**, that is when
//!    `refused_at` is null or a step after `"signature"`, and null otherwise (a
//!    request refused earlier may carry any bytes as its signature); `args` is the
//!    argument bytes when they are at most the writer's inline limit
//!    ([`DEFAULT_MAX_INLINE`] by default), else null.
//! 6. **AUD-006 Response evidence (MUST).** `{"request_hash","hash","sig","result"}`
//!    for a call answered with a RESPONSE: `request_hash` is the request hash the
//!    RESPONSE envelope binds (equal to `request.hash` when both are present); `hash`
//!    is SHA-256 of the result bytes; `sig` is the server's envelope signature, or
//!    null when the RESPONSE was not signed; `result` is the result bytes when at
//!    most the inline limit, else null.
//! 7. **AUD-007 Heads (MUST).** Fields, in order: `seq`, `time`, `kind` = `"head"`,
//!    `prev`, `key` (the server identity key text), `sig`: the Ed25519 signature by
//!    the server identity over
//!    `PAE(["toolwire/1 audit head", LE64(seq), prev, time, key])`, with `prev` and
//!    `key` as their raw 32 bytes and `time` as its UTF-8 bytes
//!    ([`head_signing_bytes`]). Through `prev`, a head commits to every line before
//!    it. A writer writes a head as the last line of a file before rotating it and
//!    at clean shutdown, and periodically (AUD-012).
//! 8. **AUD-008 Rotation and recovery (MUST).** A new file continues the chain: its
//!    first entry has the next `seq` and, as `prev`, the hash of the previous file's
//!    last line ([`AuditChain::resume`]); files verify one after the other
//!    ([`verify_log_from`] with [`AuditSummary::end`]) or concatenated. A writer that
//!    finds a final line without LF (a crash mid-write) cuts the file after its last
//!    LF ([`complete_len`]) before appending: a chain never continues after an
//!    incomplete line. A server whose identity key changes starts a new chain
//!    (genesis) in a new file.
//! 9. **AUD-009 Verification (MUST).** A verifier, given the server identity key,
//!    checks the lines in order, each in this order: well-formed (AUD-001, else
//!    `Malformed`); `prev` equals the hash of the previous line, or the starting
//!    value for the first (else `BrokenChain`); `seq` is the next number (else
//!    `BadSequence`); the request evidence: when `args` is present, the recomputed
//!    request hash equals `hash` and `sig`, when present, verifies under the entry's
//!    `client` key with `verify_strict` (else `BadRequestSignature`); the response
//!    evidence: `request_hash` equals `request.hash` when both are present, and when
//!    `result` is present its SHA-256 equals `hash` and `sig`, when present,
//!    verifies under the server key over the response signing bytes of (`session`,
//!    `request_id`, `request_hash`, `result`) (else `BadResponseSignature`); for a
//!    head, `key` equals the server key and `sig` verifies (else
//!    `BadHeadSignature`). It stops at the first failure and names that line
//!    (1-based); for `BrokenChain` that is the line whose `prev` fails, so the
//!    alteration is in it, in the line before it, or between them. After the last complete line, a non-empty remainder without LF is
//!    reported as `TornLastLine` (a crash mid-write, distinct from tampering).
//!    Entries after the last head are reported as the unsigned tail: a warning, not
//!    an error. A signature whose bytes were not inlined is counted as unchecked.
//! 10. **AUD-010 What a valid log proves (MUST NOT).** A verifier does not present a
//!     valid log as proving more than this. Assuming SHA-256 and Ed25519 hold:
//!     (a) every line up to the last head was written, in this order,
//!     by the holder of the server key no later than that head, and none was added,
//!     removed, reordered or changed since; (b) each verified request signature
//!     proves the client key holder asked for exactly that call (session, id, tool,
//!     arguments, grant id), which holds even against a dishonest server; (c) each
//!     verified response signature proves the server answered exactly that result to
//!     that request. It does **not** prove: anything about the unsigned tail (hashes
//!     need no key: whoever can write the file can rewrite the tail and recompute its
//!     `prev` values; only a later head, or a copy of one kept elsewhere, covers it);
//!     that lines after the last head were not deleted (compare with a head kept
//!     elsewhere); that the server logged every call it received; that `time` is
//!     true; or the decisions themselves, which are the server's statement (signed
//!     through the heads). Evidence whose bytes were not inlined proves only the
//!     binding of the hash to the signature once someone produces the bytes.
//! 11. **AUD-011 Confidentiality (MUST NOT).** An entry never contains key material,
//!     session keys or grant tokens. It contains argument and result bytes in clear
//!     up to the writer's inline limit; a deployment whose arguments or results are
//!     confidential sets the limit to 0 ([`AuditChain::with_max_inline`]), keeping
//!     only hashes and signatures, and in any case protects the file like the data
//!     it describes.
//! 12. **AUD-012 Periodic heads (SHOULD).** A writer also writes a head periodically
//!     (for example every 1000 entries or every minute) to bound the unsigned tail.
//!
//! # Example
//!
//! ```
//! use toolwire_protocol::audit::{verify_log, AuditChain};
//! use toolwire_protocol::Identity;
//!
//! let server = Identity::from_seed(&[0x53; 32]);
//! let mut chain = AuditChain::new(server.clone());
//! let mut log = String::new();
//! for time in ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"] {
//!     log.push_str(&chain.head_entry(time)?);
//!     log.push('\n');
//! }
//! let summary = verify_log(&log, &server.public_key())?;
//! assert_eq!((summary.entries, summary.heads, summary.unsigned_tail), (2, 2, 0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::authz::{Authority, DecisionKind, DecisionRecord, Step};
use crate::envelope::{RequestFields, ResponseFields};
use crate::identity::{Identity, IdentityKey, SIGNATURE_LEN};
use crate::message::Request;
use crate::paseto::pae;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Domain string of head signatures (AUD-007).
pub const HEAD_DOMAIN: &[u8] = b"toolwire/1 audit head";

/// `prev` of the first entry of a chain (AUD-003): 32 zero bytes.
pub const GENESIS_PREV: [u8; 32] = [0; 32];

/// Default inline limit (AUD-005, AUD-006): argument and result byte strings up to
/// this many bytes are stored in the entry, so that their signatures can be checked.
pub const DEFAULT_MAX_INLINE: usize = 4096;

const KIND_CALL: &str = "call";
const KIND_HEAD: &str = "head";

/// SHA-256 of a line's exact bytes (without its LF): the next line's `prev`
/// (AUD-003).
pub fn line_hash(line: &str) -> [u8; 32] {
    Sha256::digest(line.as_bytes()).into()
}

/// The bytes a head signature covers (AUD-007):
/// `PAE(["toolwire/1 audit head", LE64(seq), prev, time, key])`.
pub fn head_signing_bytes(seq: u64, prev: &[u8; 32], time: &str, key: &IdentityKey) -> Vec<u8> {
    pae(&[
        HEAD_DOMAIN,
        &seq.to_le_bytes(),
        prev,
        time.as_bytes(),
        key.as_bytes(),
    ])
}

/// Length of the complete part of a log: up to and including its last LF (0 when
/// it has none). A writer that finds a longer file cuts it to this length before
/// resuming (AUD-008).
pub fn complete_len(log: &[u8]) -> usize {
    log.iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |index| index.saturating_add(1))
}

/// A position in a chain: the `seq` and `prev` the next entry must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainPosition {
    /// The next entry's `seq`.
    pub next_seq: u64,
    /// The next entry's `prev`: the hash of the last line, or [`GENESIS_PREV`].
    pub prev: [u8; 32],
}

impl ChainPosition {
    /// The start of a chain: `seq` 0, `prev` 64 zeros.
    pub const GENESIS: Self = Self {
        next_seq: 0,
        prev: GENESIS_PREV,
    };

    /// The position after `line`, an entry of a chain (one trailing LF is ignored).
    /// The line is checked for form only (AUD-001), not for signatures: the caller
    /// trusts it (it is the last line of its own file, or of a verified one).
    ///
    /// # Errors
    /// [`AuditErrorKind::Malformed`] when the line is not a well-formed entry;
    /// [`AuditErrorKind::BadSequence`] when its `seq` is 2^64 − 1 (AUD-002).
    pub fn after(line: &str) -> Result<Self, AuditErrorKind> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let entry = parse_entry(line)?;
        Ok(Self {
            next_seq: next_seq(entry.seq)?,
            prev: line_hash(line),
        })
    }
}

/// The `seq` after `seq`; 2^64 − 1 is never used (AUD-002), so a line carrying it
/// is out of sequence.
fn next_seq(seq: u64) -> Result<u64, AuditErrorKind> {
    match seq.checked_add(1) {
        Some(next) => Ok(next),
        None => Err(AuditErrorKind::BadSequence),
    }
}

/// The request half of a call's evidence (AUD-005): what the REQUEST's envelope
/// signature covers beyond the fields of the [`DecisionRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEvidence {
    args: Vec<u8>,
    grant_id: String,
    signature: Option<[u8; SIGNATURE_LEN]>,
}

impl RequestEvidence {
    /// Evidence of a REQUEST with these argument bytes, this grant id (`""` when it
    /// named none) and this envelope signature. A signature that is not 64 bytes
    /// cannot verify and is dropped.
    pub fn new(args: &[u8], grant_id: &str, signature: Option<&[u8]>) -> Self {
        Self {
            args: args.to_vec(),
            grant_id: grant_id.to_owned(),
            signature: signature.and_then(|bytes| bytes.try_into().ok()),
        }
    }

    /// Evidence of `request`, as received.
    pub fn from_request(request: &Request) -> Self {
        Self::new(
            &request.args,
            request.grant_id.as_deref().unwrap_or(""),
            request.signature.as_deref().map(|bytes| bytes.as_ref()),
        )
    }
}

/// The response half of a call's evidence (AUD-006).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseEvidence {
    request_hash: [u8; 32],
    result: Vec<u8>,
    signature: Option<[u8; SIGNATURE_LEN]>,
}

impl ResponseEvidence {
    /// Evidence of a RESPONSE answering the request whose hash is `request_hash`
    /// ([`RequestFields::hash`]) with these result bytes and this envelope signature
    /// (`None` when unsigned; a signature that is not 64 bytes is dropped).
    pub fn new(request_hash: &[u8; 32], result: &[u8], signature: Option<&[u8]>) -> Self {
        Self {
            request_hash: *request_hash,
            result: result.to_vec(),
            signature: signature.and_then(|bytes| bytes.try_into().ok()),
        }
    }
}

/// Why a writer could not produce an entry. The chain does not advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditWriteError {
    /// `time` is not an RFC 3339 date-time in UTC (AUD-001).
    #[error("audit time must be an RFC 3339 date-time in UTC")]
    BadTime,
    /// The chain reached the largest sequence number (AUD-002).
    #[error("audit chain sequence numbers exhausted")]
    SequenceExhausted,
    /// The entry could not be serialized.
    #[error("audit entry could not be encoded")]
    Encoding,
}

/// The writing end of an audit chain: holds the server identity (to sign heads) and
/// the chain position, and turns decisions into lines.
///
/// Each method returns the line to append **without** its LF; the caller appends
/// line and LF in one write (AUD-001), in the order the lines were produced.
#[derive(Debug, Clone)]
pub struct AuditChain {
    identity: Identity,
    position: ChainPosition,
    max_inline: usize,
}

impl AuditChain {
    /// A new chain (a new, empty file), signed by `server_identity`.
    pub fn new(server_identity: Identity) -> Self {
        Self::at(server_identity, ChainPosition::GENESIS)
    }

    /// A chain continuing after `last_line`, the last complete line of an existing
    /// log (or of the previous file, on rotation); one trailing LF is ignored. Cut a
    /// torn final line first ([`complete_len`], AUD-008); for an empty file use
    /// [`new`](Self::new).
    ///
    /// (Unlike the bare `resume(last_line)`, it takes the identity: a chain that
    /// cannot sign heads is of no use.)
    ///
    /// # Errors
    /// As [`ChainPosition::after`].
    pub fn resume(server_identity: Identity, last_line: &str) -> Result<Self, AuditErrorKind> {
        Ok(Self::at(server_identity, ChainPosition::after(last_line)?))
    }

    /// A chain at `position`.
    pub fn at(server_identity: Identity, position: ChainPosition) -> Self {
        Self {
            identity: server_identity,
            position,
            max_inline: DEFAULT_MAX_INLINE,
        }
    }

    /// The same chain with inline limit `max_inline` bytes for argument and result
    /// bytes (AUD-005, AUD-006, AUD-011); 0 keeps only hashes and signatures.
    #[must_use]
    pub fn with_max_inline(mut self, max_inline: usize) -> Self {
        self.max_inline = max_inline;
        self
    }

    /// Where the next entry goes.
    pub fn position(&self) -> ChainPosition {
        self.position
    }

    /// The call entry for `record` (AUD-004) with its evidence, and advances the
    /// chain.
    ///
    /// `request` must be the evidence of the REQUEST the record decided, and
    /// `response` that of the RESPONSE answering it, if any: evidence of another call
    /// would not verify. The request signature is kept only when the record shows
    /// that the pipeline verified it (AUD-005).
    ///
    /// # Errors
    /// [`AuditWriteError::BadTime`] when `time` is not RFC 3339 UTC;
    /// [`AuditWriteError::SequenceExhausted`] at the end of the sequence space;
    /// [`AuditWriteError::Encoding`] if serialization fails.
    pub fn call_entry(
        &mut self,
        time: &str,
        record: &DecisionRecord,
        request: Option<RequestEvidence>,
        response: Option<ResponseEvidence>,
    ) -> Result<String, AuditWriteError> {
        check_write_time(time)?;
        let signature_verified = record.refused_at.is_none_or(|step| step > Step::Signature);
        let request = request.map(|evidence| {
            let fields = RequestFields {
                session_id: &record.session_id,
                request_id: record.request_id,
                tool: &record.tool,
                args: &evidence.args,
                grant_id: &evidence.grant_id,
            };
            RequestLine {
                hash: hex::encode(fields.hash()),
                sig: evidence
                    .signature
                    .filter(|_| signature_verified)
                    .map(hex::encode),
                args: self.inline(&evidence.args),
                grant_id: evidence.grant_id,
            }
        });
        let response = response.map(|evidence| ResponseLine {
            request_hash: hex::encode(evidence.request_hash),
            hash: hex::encode(Sha256::digest(&evidence.result)),
            sig: evidence.signature.map(hex::encode),
            result: self.inline(&evidence.result),
        });
        let line = CallLine {
            seq: self.position.next_seq,
            time: time.to_owned(),
            kind: KIND_CALL.to_owned(),
            prev: hex::encode(self.position.prev),
            session: hex::encode(record.session_id),
            client: record.client.to_string(),
            lineage: hex::encode(record.lineage),
            request_id: record.request_id,
            retry: record.retry,
            tool: record.tool.clone(),
            decision: decision_text(record.decision),
            refused_at: record.refused_at.map(|step| step.name().to_owned()),
            policy_version: record.policy_version,
            authority: record.authority.as_ref().map(authority_text),
            detail: record.detail.clone(),
            request,
            response,
        };
        self.append(&line)
    }

    /// A head (AUD-007) signed by the server identity, committing to every line so
    /// far, and advances the chain.
    ///
    /// # Errors
    /// As [`call_entry`](Self::call_entry).
    pub fn head_entry(&mut self, time: &str) -> Result<String, AuditWriteError> {
        check_write_time(time)?;
        let key = self.identity.public_key();
        let seq = self.position.next_seq;
        let signature =
            self.identity
                .sign(&head_signing_bytes(seq, &self.position.prev, time, &key));
        let line = HeadLine {
            seq,
            time: time.to_owned(),
            kind: KIND_HEAD.to_owned(),
            prev: hex::encode(self.position.prev),
            key: key.to_string(),
            sig: hex::encode(signature),
        };
        self.append(&line)
    }

    fn inline(&self, bytes: &[u8]) -> Option<String> {
        (bytes.len() <= self.max_inline).then(|| hex::encode(bytes))
    }

    fn append(&mut self, line: &impl Serialize) -> Result<String, AuditWriteError> {
        let seq = self.position.next_seq;
        if seq == u64::MAX {
            return Err(AuditWriteError::SequenceExhausted);
        }
        let next = seq.saturating_add(1);
        let text = serde_json::to_string(line).map_err(|_| AuditWriteError::Encoding)?;
        self.position = ChainPosition {
            next_seq: next,
            prev: line_hash(&text),
        };
        Ok(text)
    }
}

fn check_write_time(time: &str) -> Result<(), AuditWriteError> {
    if is_utc_rfc3339(time) {
        Ok(())
    } else {
        Err(AuditWriteError::BadTime)
    }
}

fn is_utc_rfc3339(time: &str) -> bool {
    OffsetDateTime::parse(time, &Rfc3339).is_ok_and(|parsed| parsed.offset().is_utc())
}

fn decision_text(decision: DecisionKind) -> String {
    match decision {
        DecisionKind::Execute => "execute".to_owned(),
        DecisionKind::AnsweredFromCache => "answered_from_cache".to_owned(),
        DecisionKind::AlreadyInFlight => "already_in_flight".to_owned(),
        DecisionKind::Refused(code) => match code.name() {
            Some(name) => format!("refused:{name}"),
            None => format!("refused:{}", code.0),
        },
    }
}

fn authority_text(authority: &Authority) -> String {
    match authority {
        Authority::KeyAllowlist => "key".to_owned(),
        Authority::Grant(id) => format!("grant:{id}"),
    }
}

/// What is wrong with a log, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit log line {line}: {kind}")]
pub struct AuditError {
    /// The first bad line, 1-based.
    pub line: usize,
    /// What is wrong with it.
    pub kind: AuditErrorKind,
}

/// The kinds of [`AuditError`] (AUD-009).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum AuditErrorKind {
    /// Not a well-formed entry (AUD-001): not JSON, a missing, extra or mistyped
    /// field, bad hex, an invalid key or time.
    #[error("malformed entry")]
    Malformed,
    /// `prev` is not the hash of the previous line: this line, the one before it, or
    /// lines between them were altered, removed or reordered.
    #[error("hash chain broken: prev does not match the previous line")]
    BrokenChain,
    /// `seq` is not the next sequence number.
    #[error("sequence number out of order")]
    BadSequence,
    /// The request evidence does not verify: the signature under the entry's client
    /// key, or the request hash against the inlined arguments.
    #[error("request evidence does not verify")]
    BadRequestSignature,
    /// The response evidence does not verify: the signature under the server key,
    /// the result hash, or the request hash it binds.
    #[error("response evidence does not verify")]
    BadResponseSignature,
    /// A head is not signed by the server key.
    #[error("head signature does not verify under the server key")]
    BadHeadSignature,
    /// The final line has no LF: the writer stopped mid-write (a crash), distinct
    /// from tampering. Every line before it verified.
    #[error("torn last line (incomplete write)")]
    TornLastLine,
}

/// What a verified log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditSummary {
    /// Entries (lines) verified.
    pub entries: usize,
    /// Call entries among them.
    pub calls: usize,
    /// Heads among them.
    pub heads: usize,
    /// `seq` of the last head, `None` when there is none.
    pub last_signed_seq: Option<u64>,
    /// Entries after the last head (all of them when there is none): they chain, but
    /// no signature covers them yet (AUD-010). A warning, not an error.
    pub unsigned_tail: usize,
    /// Envelope signatures verified (request and response).
    pub signatures_verified: usize,
    /// Envelope signatures present but not checkable because the bytes they cover
    /// were not inlined (AUD-005, AUD-006).
    pub signatures_unchecked: usize,
    /// The position after the last line: where the next file of the chain starts
    /// ([`verify_log_from`]).
    pub end: ChainPosition,
}

/// Verifies a whole log from its genesis (AUD-009) with the server's identity key.
///
/// # Errors
/// [`AuditError`] naming the first bad line (1-based) and what is wrong with it.
pub fn verify_log(text: &str, server_key: &IdentityKey) -> Result<AuditSummary, AuditError> {
    verify_log_from(text, server_key, ChainPosition::GENESIS)
}

/// Verifies a log whose first entry continues the chain at `start` (a rotated file:
/// `start` is the previous file's [`AuditSummary::end`], or
/// [`ChainPosition::after`] its last line).
///
/// # Errors
/// As [`verify_log`].
pub fn verify_log_from(
    text: &str,
    server_key: &IdentityKey,
    start: ChainPosition,
) -> Result<AuditSummary, AuditError> {
    let split = text.rfind('\n').map_or(0, |index| index.saturating_add(1));
    let (complete, torn) = text.split_at_checked(split).unwrap_or(("", text));
    let mut summary = AuditSummary {
        entries: 0,
        calls: 0,
        heads: 0,
        last_signed_seq: None,
        unsigned_tail: 0,
        signatures_verified: 0,
        signatures_unchecked: 0,
        end: start,
    };
    let mut line_number = 0usize;
    for line in complete.split_terminator('\n') {
        line_number = line_number.saturating_add(1);
        check_line(line, server_key, &mut summary).map_err(|kind| AuditError {
            line: line_number,
            kind,
        })?;
    }
    if !torn.is_empty() {
        return Err(AuditError {
            line: line_number.saturating_add(1),
            kind: AuditErrorKind::TornLastLine,
        });
    }
    Ok(summary)
}

fn check_line(
    line: &str,
    server_key: &IdentityKey,
    summary: &mut AuditSummary,
) -> Result<(), AuditErrorKind> {
    let entry = parse_entry(line)?;
    if entry.prev != summary.end.prev {
        return Err(AuditErrorKind::BrokenChain);
    }
    if entry.seq != summary.end.next_seq {
        return Err(AuditErrorKind::BadSequence);
    }
    let next = next_seq(entry.seq)?;
    match &entry.body {
        Body::Call(call) => {
            let (verified, unchecked) = check_call(call, server_key)?;
            summary.calls = summary.calls.saturating_add(1);
            summary.unsigned_tail = summary.unsigned_tail.saturating_add(1);
            summary.signatures_verified = summary.signatures_verified.saturating_add(verified);
            summary.signatures_unchecked = summary.signatures_unchecked.saturating_add(unchecked);
        }
        Body::Head(head) => {
            check_head(head, entry.seq, &entry.prev, server_key)?;
            summary.heads = summary.heads.saturating_add(1);
            summary.last_signed_seq = Some(entry.seq);
            summary.unsigned_tail = 0;
        }
    }
    summary.entries = summary.entries.saturating_add(1);
    summary.end = ChainPosition {
        next_seq: next,
        prev: line_hash(line),
    };
    Ok(())
}

/// Checks a call's evidence; returns (signatures verified, signatures unchecked).
fn check_call(call: &Call, server_key: &IdentityKey) -> Result<(usize, usize), AuditErrorKind> {
    let mut verified = 0;
    let mut unchecked = 0;
    if let Some(request) = &call.request {
        match &request.args {
            Some(args) => {
                let fields = RequestFields {
                    session_id: &call.session,
                    request_id: call.request_id,
                    tool: &call.tool,
                    args,
                    grant_id: &request.grant_id,
                };
                if fields.hash() != request.hash {
                    return Err(AuditErrorKind::BadRequestSignature);
                }
                if let Some(signature) = &request.sig {
                    fields
                        .verify(&call.client, signature)
                        .map_err(|_| AuditErrorKind::BadRequestSignature)?;
                    verified += 1;
                }
            }
            None => unchecked += usize::from(request.sig.is_some()),
        }
    }
    if let Some(response) = &call.response {
        if call
            .request
            .as_ref()
            .is_some_and(|request| request.hash != response.request_hash)
        {
            return Err(AuditErrorKind::BadResponseSignature);
        }
        match &response.result {
            Some(result) => {
                if <[u8; 32]>::from(Sha256::digest(result)) != response.hash {
                    return Err(AuditErrorKind::BadResponseSignature);
                }
                if let Some(signature) = &response.sig {
                    let fields = ResponseFields {
                        session_id: &call.session,
                        request_id: call.request_id,
                        request_hash: &response.request_hash,
                        result,
                    };
                    fields
                        .verify(server_key, signature)
                        .map_err(|_| AuditErrorKind::BadResponseSignature)?;
                    verified += 1;
                }
            }
            None => unchecked += usize::from(response.sig.is_some()),
        }
    }
    Ok((verified, unchecked))
}

fn check_head(
    head: &Head,
    seq: u64,
    prev: &[u8; 32],
    server_key: &IdentityKey,
) -> Result<(), AuditErrorKind> {
    if head.key != *server_key {
        return Err(AuditErrorKind::BadHeadSignature);
    }
    server_key
        .verify(
            &head_signing_bytes(seq, prev, &head.time, server_key),
            &head.sig,
        )
        .map_err(|_| AuditErrorKind::BadHeadSignature)
}

// ---------------------------------------------------------------------------------
// Line (de)serialization. The structs give the field order of AUD-004 and AUD-007.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallLine {
    seq: u64,
    time: String,
    kind: String,
    prev: String,
    session: String,
    client: String,
    lineage: String,
    request_id: u64,
    retry: bool,
    tool: String,
    decision: String,
    #[serde(deserialize_with = "nullable")]
    refused_at: Option<String>,
    policy_version: u64,
    #[serde(deserialize_with = "nullable")]
    authority: Option<String>,
    #[serde(deserialize_with = "nullable")]
    detail: Option<String>,
    #[serde(deserialize_with = "nullable")]
    request: Option<RequestLine>,
    #[serde(deserialize_with = "nullable")]
    response: Option<ResponseLine>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    hash: String,
    grant_id: String,
    #[serde(deserialize_with = "nullable")]
    sig: Option<String>,
    #[serde(deserialize_with = "nullable")]
    args: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseLine {
    request_hash: String,
    hash: String,
    #[serde(deserialize_with = "nullable")]
    sig: Option<String>,
    #[serde(deserialize_with = "nullable")]
    result: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadLine {
    seq: u64,
    time: String,
    kind: String,
    prev: String,
    key: String,
    sig: String,
}

/// Only the kind, to choose the struct (other fields ignored here).
#[derive(Deserialize)]
struct KindProbe {
    kind: String,
}

/// An `Option` field that must be present (as a value or `null`): with
/// `deserialize_with`, serde reports a missing field instead of defaulting to `None`.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

/// A line, parsed and checked for form (AUD-001).
struct Entry {
    seq: u64,
    prev: [u8; 32],
    body: Body,
}

enum Body {
    Call(Box<Call>),
    Head(Head),
}

struct Call {
    session: [u8; 32],
    client: IdentityKey,
    request_id: u64,
    tool: String,
    request: Option<RequestProof>,
    response: Option<ResponseProof>,
}

struct RequestProof {
    hash: [u8; 32],
    grant_id: String,
    sig: Option<[u8; SIGNATURE_LEN]>,
    args: Option<Vec<u8>>,
}

struct ResponseProof {
    request_hash: [u8; 32],
    hash: [u8; 32],
    sig: Option<[u8; SIGNATURE_LEN]>,
    result: Option<Vec<u8>>,
}

struct Head {
    time: String,
    key: IdentityKey,
    sig: [u8; SIGNATURE_LEN],
}

fn parse_entry(line: &str) -> Result<Entry, AuditErrorKind> {
    let malformed = |_| AuditErrorKind::Malformed;
    let probe: KindProbe = serde_json::from_str(line).map_err(malformed)?;
    match probe.kind.as_str() {
        KIND_CALL => {
            let call: CallLine = serde_json::from_str(line).map_err(malformed)?;
            parse_call(call)
        }
        KIND_HEAD => {
            let head: HeadLine = serde_json::from_str(line).map_err(malformed)?;
            parse_head(head)
        }
        _ => Err(AuditErrorKind::Malformed),
    }
}

fn parse_call(line: CallLine) -> Result<Entry, AuditErrorKind> {
    check_time(&line.time)?;
    let _lineage: [u8; 16] = hex_array(&line.lineage)?;
    let request = line
        .request
        .map(|request| -> Result<RequestProof, AuditErrorKind> {
            Ok(RequestProof {
                hash: hex_array(&request.hash)?,
                grant_id: request.grant_id,
                sig: request.sig.as_deref().map(hex_array).transpose()?,
                args: request.args.as_deref().map(hex_bytes).transpose()?,
            })
        })
        .transpose()?;
    let response = line
        .response
        .map(|response| -> Result<ResponseProof, AuditErrorKind> {
            Ok(ResponseProof {
                request_hash: hex_array(&response.request_hash)?,
                hash: hex_array(&response.hash)?,
                sig: response.sig.as_deref().map(hex_array).transpose()?,
                result: response.result.as_deref().map(hex_bytes).transpose()?,
            })
        })
        .transpose()?;
    Ok(Entry {
        seq: line.seq,
        prev: hex_array(&line.prev)?,
        body: Body::Call(Box::new(Call {
            session: hex_array(&line.session)?,
            client: line.client.parse().map_err(|_| AuditErrorKind::Malformed)?,
            request_id: line.request_id,
            tool: line.tool,
            request,
            response,
        })),
    })
}

fn parse_head(line: HeadLine) -> Result<Entry, AuditErrorKind> {
    check_time(&line.time)?;
    Ok(Entry {
        seq: line.seq,
        prev: hex_array(&line.prev)?,
        body: Body::Head(Head {
            key: line.key.parse().map_err(|_| AuditErrorKind::Malformed)?,
            sig: hex_array(&line.sig)?,
            time: line.time,
        }),
    })
}

fn check_time(time: &str) -> Result<(), AuditErrorKind> {
    if is_utc_rfc3339(time) {
        Ok(())
    } else {
        Err(AuditErrorKind::Malformed)
    }
}

/// Lowercase hex only (AUD-001), any even length.
fn hex_bytes(text: &str) -> Result<Vec<u8>, AuditErrorKind> {
    if !text
        .bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(AuditErrorKind::Malformed);
    }
    hex::decode(text).map_err(|_| AuditErrorKind::Malformed)
}

/// Lowercase hex of exactly `N` bytes.
fn hex_array<const N: usize>(text: &str) -> Result<[u8; N], AuditErrorKind> {
    if text.len() != N.saturating_mul(2) {
        return Err(AuditErrorKind::Malformed);
    }
    hex_bytes(text)?
        .try_into()
        .map_err(|_| AuditErrorKind::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_must_be_present() {
        let line = r#"{"hash":"00","grant_id":"","sig":null}"#;
        assert!(serde_json::from_str::<RequestLine>(line).is_err());
        let line = r#"{"hash":"00","grant_id":"","sig":null,"args":null}"#;
        assert!(serde_json::from_str::<RequestLine>(line).is_ok());
    }

    #[test]
    fn hex_is_lowercase_and_sized() {
        assert_eq!(hex_array::<2>("abcd"), Ok([0xab, 0xcd]));
        assert_eq!(hex_array::<2>("ABCD"), Err(AuditErrorKind::Malformed));
        assert_eq!(hex_array::<2>("abc"), Err(AuditErrorKind::Malformed));
        assert_eq!(hex_bytes("abc"), Err(AuditErrorKind::Malformed));
        assert_eq!(hex_bytes(""), Ok(Vec::new()));
    }

    #[test]
    fn complete_len_stops_after_the_last_lf() {
        assert_eq!(complete_len(b""), 0);
        assert_eq!(complete_len(b"abc"), 0);
        assert_eq!(complete_len(b"a\nb"), 2);
        assert_eq!(complete_len(b"a\nb\n"), 4);
    }

    #[test]
    fn times_must_be_utc() {
        assert!(is_utc_rfc3339("2026-01-01T00:00:00Z"));
        assert!(is_utc_rfc3339("2026-01-01T00:00:00.123Z"));
        assert!(!is_utc_rfc3339("2026-01-01T01:00:00+01:00"));
        assert!(!is_utc_rfc3339("yesterday"));
    }
}

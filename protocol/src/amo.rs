//! The at-most-once table: which request ids a server may still execute, and the
//! cached outcomes it answers retries with, per lineage.
//!
//! A tool call can act on the world, and a client that lost its connection cannot
//! tell whether its call ran. It re-sends the call with the same request id on a new
//! connection; the server must answer it without running it a second time. This
//! module makes that decision, sans-IO: the server driver asks
//! [`AtMostOnceStore::admit`] before executing and reports the outcome with
//! [`AtMostOnceStore::complete`]. [`AtMostOnceTable`] is the bounded in-memory store;
//! a durable store implements the same trait.
//!
//! Implements spec section "At-most-once calls" (AMO-001..AMO-035).
//!
//! # Rules (normative)
//!
//! 1. **Lineage (AMO-001, AMO-002).** Calls belong to a lineage, identified by the
//!    pair ([`LineageKey`]) of the client's authenticated identity key and a 16-byte
//!    lineage id. The same lineage id under another client key is another lineage,
//!    so one client can neither read nor block another's calls. A session that does
//!    not resume a lineage starts a *fresh* one whose id is the first 16 bytes of its
//!    session id ([`session_lineage`]); since the session id is new, the server
//!    knows that no call of a fresh lineage reached it before.
//! 2. **Resume (AMO-003, AMO-004, AMO-005).** A client continues a lineage on a new
//!    connection by naming it in the handshake (`ClientHello.resume`). When a
//!    session is established, the server attaches it to its lineage
//!    ([`AtMostOnceStore::attach`]). A resumed lineage the server holds keeps its
//!    state. One it does not hold (never seen, dropped under rule 8, or lost in a
//!    restart without a durable store) is created *recovered*: the server does not
//!    know which of its ids it already received.
//! 3. **Request ids (AMO-006, AMO-007, AMO-008, AMO-009).** Request ids are unique
//!    within a lineage and below 2^62 ([`SEQUENCE_LIMIT`]). An id at or above 2^62 is
//!    refused with INVALID_ARGUMENT ([`Admission::IdOutOfRange`]) and not recorded.
//!    A client sets `REQUEST.retry` to true exactly when it re-sends an id it sent
//!    (or may have sent: it was handed to the transport) on an earlier connection,
//!    and never re-sends an id with `retry` false.
//! 4. **Admission (AMO-017).** [`AtMostOnceStore::admit`] answers a request id on a
//!    lineage with the first rule that applies, after the id range (rule 3) and the
//!    room for the lineage (rule 8, AMO-034):
//!    1. the id is executing → [`Admission::InFlight`] (AMO-010, AMO-011): it is not
//!       executed again, and this request is answered once the running call
//!       completes;
//!    2. the id's outcome is cached → [`Admission::Duplicate`] (AMO-012): it is
//!       answered again with the same result bytes, or the same error code and
//!       message, as the first time (a RESPONSE is re-signed for the current
//!       session, ENV-005);
//!    3. the id is older than the lineage's window (`top - id >=`
//!       [`RequestIdWindow::WINDOW`], `top` being the highest id recorded) →
//!       [`Admission::Stale`] (AMO-013), answered STALE_REQUEST_ID: it may have run
//!       and will not run;
//!    4. the id is inside the window and recorded → [`Admission::Unavailable`]
//!       (AMO-014), answered RESULT_UNAVAILABLE: it ran (or was abandoned) and its
//!       outcome is no longer held;
//!    5. the id is not recorded, the lineage is recovered and `retry` is true →
//!       [`Admission::Unavailable`] (AMO-015): the call may have reached the server
//!       before it lost the lineage. The id is recorded, so every later copy gets
//!       the same answer;
//!    6. otherwise → [`Admission::Execute`] (AMO-016): the id is recorded and marked
//!       in flight. On a fresh lineage, and on a recovered one for an id first sent
//!       after the loss, an unrecorded id provably never ran, whatever `retry` says.
//! 5. **Never twice (AMO-020).** While the server holds a lineage, it admits each id
//!    for execution at most once. Across a loss of the lineage's state, the guarantee
//!    rests on the client following rule 3 (AMO-008, AMO-009): every id first sent
//!    before the loss comes back with `retry` true and is answered by rule 4.5.
//! 6. **One outcome (AMO-021, AMO-022, AMO-023, AMO-024, AMO-025, AMO-026).** Every
//!    executed id ends with exactly one outcome, reported by
//!    [`AtMostOnceStore::complete`]; the first completion wins, and a later one
//!    returns false and must not be sent. A call cancelled by CANCEL is completed at
//!    once with CANCELLED ([`AtMostOnceStore::cancel`]) and answered with it; its
//!    late result is dropped, and a retry gets CANCELLED from the cache. A CANCEL of
//!    an id not in flight changes nothing and is not answered.
//!    [`AtMostOnceStore::abandon`] ends an id whose outcome is unknown (the handler
//!    crashed mid-way): nothing is cached and retries get RESULT_UNAVAILABLE.
//! 7. **Result cache (AMO-028, AMO-029, AMO-030).** An outcome is cached only when
//!    its size ([`CachedOutcome::size`]) is at most [`AmoConfig::max_result_bytes`].
//!    Each lineage keeps the [`AmoConfig::results_per_lineage`] most recently
//!    completed outcomes. When the cached bytes of the whole table exceed
//!    [`AmoConfig::max_total_result_bytes`], the oldest outcomes of the least
//!    recently used lineages are dropped first. A dropped outcome's id is answered by
//!    rule 4.3 or 4.4.
//! 8. **Lineage bounds (AMO-031, AMO-032, AMO-033, AMO-034).** The table holds at
//!    most [`AmoConfig::max_lineages`] lineages, and at most
//!    [`AmoConfig::max_lineages_per_client`] per client key. To make room it drops
//!    the least recently used lineage with no call in flight (the same client's, when
//!    that client is over its quota). A lineage with a call in flight is never
//!    dropped; when nothing can be dropped, the request is refused with UNAVAILABLE
//!    ([`Admission::Overloaded`]) and nothing is recorded. A dropped lineage is
//!    unknown again (rule 2).
//! 9. **Another call under the same id (AMO-019).** With
//!    [`AtMostOnceStore::admit_call`], the table keeps the [`CallFingerprint`] (tool,
//!    argument bytes, grant id) of each id in flight and of each cached outcome; a
//!    copy whose fingerprint differs is [`Admission::Mismatch`], answered
//!    FAILED_PRECONDITION, instead of rules 4.1 and 4.2.
//! 10. **Refusals do not consume ids (AMO-018).** A request refused by an earlier
//!     authorization step ([`crate::authz`]) never reaches the table, so its id is not
//!     recorded and the client may send it again (with `retry` false if it never
//!     reached the server on an earlier connection).
//!
//! # Persistence (AMO-035..AMO-039)
//!
//! The table does no I/O. A durable store turns journaling on
//! ([`AtMostOnceTable::with_journal`]), writes the [`AmoChange`]s of each operation
//! ([`AtMostOnceTable::take_changes`]) before acting on its result (an
//! [`Admission::Execute`] only once its `IdRecorded` is durable, an outcome only once
//! its `OutcomeCached` is), and rebuilds the table after a restart with
//! [`AtMostOnceTable::restore`]: ids that were in flight come back recorded without
//! outcome, so their retries are answered RESULT_UNAVAILABLE and never executed.
//!
//! # Driver pattern
//!
//! ```
//! use toolwire_protocol::amo::{
//!     Admission, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome, LineageKey,
//!     LineageOrigin,
//! };
//! use toolwire_protocol::Identity;
//!
//! let client = Identity::from_seed(&[7; 32]).public_key();
//! let key = LineageKey::new(client, [1; 16]);
//! let mut table = AtMostOnceTable::new(AmoConfig::default());
//! table.attach(&key, LineageOrigin::Fresh);
//!
//! assert_eq!(table.admit(&key, 1, false), Admission::Execute);
//! // ... run the tool ...
//! let outcome = CachedOutcome::Response(vec![0x91, 0x01]);
//! assert!(table.complete(&key, 1, outcome.clone())); // true: send the RESPONSE
//!
//! // The client reconnects and retries: answered from the cache, not executed.
//! assert_eq!(table.admit(&key, 1, true), Admission::Duplicate(outcome));
//! ```

use crate::codes::ErrorCode;
use crate::handshake::{SessionInfo, LINEAGE_LEN};
use crate::identity::IdentityKey;
use crate::message::{ErrorMessage, Request};
use crate::replay::{ReplayError, RequestIdWindow, SEQUENCE_LIMIT};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, VecDeque};

/// Domain string of a [`CallFingerprint`].
const FINGERPRINT_DOMAIN: &[u8] = b"toolwire/1 amo call fingerprint";

/// What identifies the call behind a request id (AMO-019): SHA-256 over the
/// pre-authentication encoding of a domain string, the tool name, the argument bytes
/// and the grant id (empty when none). The session id is left out, so a retry on a
/// new connection has the same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallFingerprint(pub [u8; 32]);

impl CallFingerprint {
    /// The fingerprint of a call of `tool` with `args` under `grant_id`.
    pub fn of(tool: &str, args: &[u8], grant_id: &str) -> Self {
        let encoded = crate::paseto::pae(&[
            FINGERPRINT_DOMAIN,
            tool.as_bytes(),
            args,
            grant_id.as_bytes(),
        ]);
        Self(Sha256::digest(encoded).into())
    }

    /// The fingerprint of `request`'s call.
    pub fn of_request(request: &Request) -> Self {
        Self::of(
            &request.tool,
            &request.args,
            request.grant_id.as_deref().unwrap_or(""),
        )
    }
}

/// A lineage id: 16 bytes chosen by the client (or derived from the session id).
pub type LineageId = [u8; LINEAGE_LEN];

/// Identifies one lineage: the client's authenticated identity key and its lineage
/// id (AMO-001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineageKey {
    /// The identity key the client authenticated as in the handshake.
    pub client: IdentityKey,
    /// The lineage id.
    pub lineage: LineageId,
}

impl LineageKey {
    /// The lineage `lineage` of `client`.
    pub fn new(client: IdentityKey, lineage: LineageId) -> Self {
        Self { client, lineage }
    }

    /// The lineage a session continues or starts, with its origin
    /// ([`session_lineage`]), keyed by the session's peer.
    pub fn for_session(session: &SessionInfo) -> (Self, LineageOrigin) {
        let (lineage, origin) = session_lineage(session);
        (Self::new(session.peer, lineage), origin)
    }
}

/// How a session came to a lineage (AMO-002, AMO-003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LineageOrigin {
    /// Started by this session: its id derives from the new session id, so no call
    /// of it can have reached the server before.
    Fresh,
    /// Named by the client in the handshake: calls of it may have reached the
    /// server on earlier connections.
    Resumed,
}

/// The lineage of a session (AMO-002, AMO-003): the one the client resumed, or else
/// the fresh lineage whose id is the first 16 bytes of the session id. Both sides
/// compute the same value: a client that did not resume learns its new lineage id
/// from its own session id, and presents it to resume later.
pub fn session_lineage(session: &SessionInfo) -> (LineageId, LineageOrigin) {
    match session.lineage {
        Some(lineage) => (lineage, LineageOrigin::Resumed),
        None => {
            let mut lineage = [0; LINEAGE_LEN];
            lineage.copy_from_slice(&session.session_id[..LINEAGE_LEN]);
            (lineage, LineageOrigin::Fresh)
        }
    }
}

/// The outcome of an executed call, kept to answer retries of its id with the same
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CachedOutcome {
    /// The call returned: the RESPONSE `result` bytes exactly as first sent. A
    /// repeated RESPONSE carries these bytes with a signature for the current
    /// session (the envelope binds the session id).
    Response(Vec<u8>),
    /// The call failed (including CANCELLED and DEADLINE_EXCEEDED): the ERROR code
    /// and message as first sent.
    Error {
        /// The RPC error code.
        code: ErrorCode,
        /// The message (never secret material).
        message: String,
    },
}

impl CachedOutcome {
    /// The outcome of a call cancelled by the client's CANCEL (AMO-023).
    pub fn cancelled() -> Self {
        Self::Error {
            code: ErrorCode::CANCELLED,
            message: "cancelled".to_owned(),
        }
    }

    /// Bytes the outcome occupies in the cache, for the limits of AMO-028 and
    /// AMO-030: the result length, or the message length for an error.
    pub fn size(&self) -> usize {
        match self {
            Self::Response(result) => result.len(),
            Self::Error { message, .. } => message.len(),
        }
    }

    /// The ERROR body answering request `id`, for an error outcome; `None` for a
    /// response.
    pub fn error_message(&self, id: u64) -> Option<ErrorMessage> {
        match self {
            Self::Response(_) => None,
            Self::Error { code, message } => Some(ErrorMessage {
                id: Some(id),
                code: code.0,
                message: message.clone(),
                retry_after_ms: None,
            }),
        }
    }
}

/// What to do with a request id (AMO-017).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Execute the call; the id is now in flight. Report its outcome with
    /// [`AtMostOnceStore::complete`] (or [`AtMostOnceStore::abandon`]).
    Execute,
    /// The id already completed: answer with this outcome again, do not execute.
    Duplicate(CachedOutcome),
    /// The id is executing: do not execute. Answer this request when the running
    /// call completes (admitting it again after completion returns its outcome).
    InFlight,
    /// The id is older than the window: answer STALE_REQUEST_ID.
    Stale,
    /// The id was seen but its outcome is not held, or may have been seen before the
    /// server lost the lineage: answer RESULT_UNAVAILABLE.
    Unavailable,
    /// The id is at or above 2^62: answer INVALID_ARGUMENT. Nothing was recorded.
    IdOutOfRange,
    /// The table is full of lineages with calls in flight (or a durable store cannot
    /// reach its backend): answer UNAVAILABLE. Nothing was recorded; the client may
    /// retry later.
    Overloaded,
    /// The id is in flight or has a cached outcome, but the call that used it had
    /// another tool, other arguments or another grant id (AMO-019): answer
    /// FAILED_PRECONDITION, never the other call's outcome.
    Mismatch,
}

impl Admission {
    /// The error code to answer with, for the admissions that refuse; `None` for
    /// [`Execute`](Self::Execute), [`InFlight`](Self::InFlight) and
    /// [`Duplicate`](Self::Duplicate) (whose cached outcome may itself be an error).
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Execute | Self::Duplicate(_) | Self::InFlight => None,
            Self::Stale => Some(ErrorCode::STALE_REQUEST_ID),
            Self::Unavailable => Some(ErrorCode::RESULT_UNAVAILABLE),
            Self::IdOutOfRange => Some(ErrorCode::INVALID_ARGUMENT),
            Self::Overloaded => Some(ErrorCode::UNAVAILABLE),
            Self::Mismatch => Some(ErrorCode::FAILED_PRECONDITION),
        }
    }
}

/// Storage of the at-most-once state, so that a durable (or shared) store can
/// replace the in-memory [`AtMostOnceTable`]. An implementation must follow
/// section 14 of the spec exactly; a store that cannot reach its backend answers
/// [`Admission::Overloaded`] rather than guessing.
pub trait AtMostOnceStore {
    /// Attaches a session to its lineage when the session is established
    /// (AMO-004, AMO-005): creates the lineage if unknown, fresh or recovered
    /// according to `origin`. Best effort: when the table has no room, the lineage is
    /// created (recovered) by the first [`admit`](Self::admit) instead.
    fn attach(&mut self, key: &LineageKey, origin: LineageOrigin);

    /// Decides whether request `request_id` of lineage `key` may execute
    /// (AMO-017). `retry` is the REQUEST's `retry` flag. An [`Admission::Execute`]
    /// marks the id in flight.
    fn admit(&mut self, key: &LineageKey, request_id: u64, retry: bool) -> Admission;

    /// [`admit`](Self::admit) for a call with this `fingerprint` (AMO-019): a store
    /// that keeps fingerprints answers [`Admission::Mismatch`] when the id is in
    /// flight or cached for a call with another fingerprint, and keeps this one with
    /// an id it lets execute. The default ignores the fingerprint.
    fn admit_call(
        &mut self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: &CallFingerprint,
    ) -> Admission {
        let _ = fingerprint;
        self.admit(key, request_id, retry)
    }

    /// Records the outcome of an id that [`admit`](Self::admit) let execute, and
    /// caches it within the limits (AMO-028, AMO-029, AMO-030). Returns true when this
    /// is the call's answer, to be sent; false when the id is not in flight (already
    /// completed, cancelled or abandoned, or never admitted), in which case nothing is
    /// sent (AMO-021, AMO-022).
    fn complete(&mut self, key: &LineageKey, request_id: u64, outcome: CachedOutcome) -> bool;

    /// Ends an in-flight id whose outcome is unknown (AMO-026): nothing is cached,
    /// and later copies of the id are answered RESULT_UNAVAILABLE or STALE_REQUEST_ID.
    fn abandon(&mut self, key: &LineageKey, request_id: u64);

    /// Handles the client's CANCEL of `request_id`: completes it with CANCELLED.
    /// Returns true when the call was in flight (send the CANCELLED error now and
    /// stop the handler); false when there was nothing to cancel.
    fn cancel(&mut self, key: &LineageKey, request_id: u64) -> bool {
        self.complete(key, request_id, CachedOutcome::cancelled())
    }
}

/// Bounds of an [`AtMostOnceTable`]. Each field's doc gives its default and the
/// attack it bounds. Memory is at most about `max_lineages` × (window of 512 bytes +
/// `results_per_lineage` small entries) plus `max_total_result_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmoConfig {
    /// Lineages held at once. Default 1024. Bounds memory against clients that open
    /// lineage after lineage (every session without resume starts one). Values below
    /// 1 count as 1.
    pub max_lineages: usize,
    /// Lineages held at once for one client key. Default 16. Bounds how much of the
    /// table one identity can occupy, so that it cannot push other clients' lineages
    /// out (dropping their cached results) by reconnecting in a loop. Values below 1
    /// count as 1.
    pub max_lineages_per_client: usize,
    /// Outcomes cached per lineage (the most recently completed are kept). Default
    /// 256. Bounds per-lineage memory; a client with more unanswered calls than this
    /// across a reconnect gets RESULT_UNAVAILABLE for the oldest.
    pub results_per_lineage: usize,
    /// Largest outcome cached, in bytes. Default 64 KiB (one record). Bounds memory
    /// per entry; a larger result is sent once and its retries get
    /// RESULT_UNAVAILABLE.
    pub max_result_bytes: usize,
    /// Cached outcome bytes in the whole table. Default 64 MiB. Bounds total memory
    /// against many lineages each holding large results.
    pub max_total_result_bytes: usize,
}

impl Default for AmoConfig {
    fn default() -> Self {
        Self {
            max_lineages: 1024,
            max_lineages_per_client: 16,
            results_per_lineage: 256,
            max_result_bytes: 64 * 1024,
            max_total_result_bytes: 64 * 1024 * 1024,
        }
    }
}

/// State of one lineage.
#[derive(Debug)]
struct LineageState {
    /// Every id recorded (executed, or answered as possibly executed), within the
    /// window.
    window: RequestIdWindow,
    /// Created without knowledge of the lineage's past (AMO-005).
    recovered: bool,
    /// Ids executing now, with the fingerprint of their call when known.
    in_flight: BTreeMap<u64, Option<CallFingerprint>>,
    /// Cached outcomes by id, with the fingerprint of their call when known.
    results: BTreeMap<u64, (CachedOutcome, Option<CallFingerprint>)>,
    /// Ids of `results` in completion order, oldest first.
    completion_order: VecDeque<u64>,
    /// Recency stamp (key of `AtMostOnceTable::recency`).
    last_used: u64,
}

impl LineageState {
    /// Drops the oldest cached outcome; returns its id and size, or `None` when
    /// empty.
    fn drop_oldest_result(&mut self) -> Option<(u64, usize)> {
        while let Some(id) = self.completion_order.pop_front() {
            if let Some((outcome, _)) = self.results.remove(&id) {
                return Some((id, outcome.size()));
            }
        }
        None
    }

    fn cached_bytes(&self) -> usize {
        self.results
            .values()
            .map(|(outcome, _)| outcome.size())
            .sum()
    }
}

/// The bounded in-memory at-most-once table (spec section 14). Deterministic: no
/// clock, no randomness; recency is the order of calls.
///
/// A server that restarts loses it; the lineages its clients resume are then
/// recovered (AMO-005) and retried ids answer RESULT_UNAVAILABLE instead of running
/// twice.
#[derive(Debug)]
pub struct AtMostOnceTable {
    config: AmoConfig,
    lineages: BTreeMap<LineageKey, LineageState>,
    /// Lineages by recency stamp, least recently used first.
    recency: BTreeMap<u64, LineageKey>,
    /// Lineages held per client key.
    per_client: BTreeMap<IdentityKey, usize>,
    next_stamp: u64,
    cached_bytes: usize,
    /// Changes not yet taken by a persisting store, when journaling is on
    /// ([`AtMostOnceTable::with_journal`]).
    journal: Option<Vec<AmoChange>>,
}

/// A change of an [`AtMostOnceTable`]'s state, for a store that persists the table
/// ([`AtMostOnceTable::with_journal`], [`AtMostOnceTable::take_changes`]). Applied in
/// order to a copy of the state, the changes keep it equal to the table's (apart
/// from ids in flight, which a restored table treats as recorded without outcome,
/// and recency, which the store approximates).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmoChange {
    /// A lineage was created, empty.
    LineageAdded {
        /// The lineage.
        key: LineageKey,
        /// Created without knowledge of its past (AMO-005).
        recovered: bool,
    },
    /// A lineage was dropped with its recorded ids and cached outcomes (AMO-032).
    LineageDropped {
        /// The lineage.
        key: LineageKey,
    },
    /// An id was recorded (executing, or answered RESULT_UNAVAILABLE by rule 5).
    /// Ids at or below `highest - RequestIdWindow::WINDOW` are no longer needed.
    IdRecorded {
        /// The lineage.
        key: LineageKey,
        /// The id.
        id: u64,
        /// The highest id recorded in the lineage, after this one.
        highest: u64,
    },
    /// An outcome was cached for an id.
    OutcomeCached {
        /// The lineage.
        key: LineageKey,
        /// The id.
        id: u64,
        /// The outcome.
        outcome: CachedOutcome,
        /// The fingerprint of the call, when known (AMO-019).
        fingerprint: Option<CallFingerprint>,
    },
    /// A cached outcome was dropped (AMO-029, AMO-030).
    OutcomeDropped {
        /// The lineage.
        key: LineageKey,
        /// The id.
        id: u64,
    },
}

/// The persisted state of one lineage, to rebuild a table after a restart
/// ([`AtMostOnceTable::restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoredLineage {
    /// The lineage.
    pub key: LineageKey,
    /// Created without knowledge of its past (AMO-005).
    pub recovered: bool,
    /// Every id recorded (in any order; ids outside the window are ignored). Ids
    /// that were in flight when the state was saved are among them, without outcome.
    pub recorded: Vec<u64>,
    /// Cached outcomes, oldest completion first, with their call's fingerprint.
    pub outcomes: Vec<(u64, CachedOutcome, Option<CallFingerprint>)>,
}

impl RestoredLineage {
    /// An empty lineage `key`.
    pub fn new(key: LineageKey, recovered: bool) -> Self {
        Self {
            key,
            recovered,
            recorded: Vec::new(),
            outcomes: Vec::new(),
        }
    }
}

impl Default for AtMostOnceTable {
    fn default() -> Self {
        Self::new(AmoConfig::default())
    }
}

impl AtMostOnceTable {
    /// An empty table with these bounds.
    pub fn new(config: AmoConfig) -> Self {
        Self {
            config,
            lineages: BTreeMap::new(),
            recency: BTreeMap::new(),
            per_client: BTreeMap::new(),
            next_stamp: 0,
            cached_bytes: 0,
            journal: None,
        }
    }

    /// Turns journaling on: from now on every change of state is also kept as an
    /// [`AmoChange`] until [`take_changes`](Self::take_changes), so that a durable
    /// store can write it (sans-IO: the table does no I/O itself).
    #[must_use]
    pub fn with_journal(mut self) -> Self {
        self.journal.get_or_insert_with(Vec::new);
        self
    }

    /// The changes since the last call, oldest first (empty without journaling).
    pub fn take_changes(&mut self) -> Vec<AmoChange> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn log(&mut self, change: AmoChange) {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(change);
        }
    }

    /// A journaling table rebuilt from persisted lineages, given least recently used
    /// first, within `config`'s bounds. Ids that were in flight are recorded without
    /// outcome, so their retries are answered RESULT_UNAVAILABLE, never executed.
    /// The journal then holds only the drops the bounds required (lineages or
    /// outcomes beyond them), for the store to apply.
    pub fn restore(config: AmoConfig, lineages: impl IntoIterator<Item = RestoredLineage>) -> Self {
        let mut table = Self::new(config).with_journal();
        for restored in lineages {
            let key = restored.key;
            if table.lineages.contains_key(&key) || !table.ensure(&key, restored.recovered) {
                continue;
            }
            let mut recorded = restored.recorded;
            recorded.sort_unstable();
            let max_result_bytes = table.config.max_result_bytes;
            let results_per_lineage = table.config.results_per_lineage;
            let mut added = 0;
            let mut dropped = Vec::new();
            if let Some(state) = table.lineages.get_mut(&key) {
                for id in recorded {
                    let _ = state.window.update(id);
                }
                for (id, outcome, fingerprint) in restored.outcomes {
                    let known = state.window.check(id) == Err(ReplayError::Duplicate);
                    if !known || outcome.size() > max_result_bytes || results_per_lineage == 0 {
                        dropped.push(id);
                        continue;
                    }
                    added += outcome.size();
                    if let Some((old, _)) = state.results.insert(id, (outcome, fingerprint)) {
                        added -= old.size();
                    }
                    state.completion_order.retain(|queued| *queued != id);
                    state.completion_order.push_back(id);
                    while state.results.len() > results_per_lineage {
                        match state.drop_oldest_result() {
                            Some((id, size)) => {
                                added -= size;
                                dropped.push(id);
                            }
                            None => break,
                        }
                    }
                }
            }
            table.cached_bytes = table.cached_bytes.saturating_add(added);
            for id in dropped {
                table.log(AmoChange::OutcomeDropped { key, id });
            }
        }
        table.enforce_total_bytes();
        if let Some(journal) = table.journal.as_mut() {
            journal.retain(|change| !matches!(change, AmoChange::LineageAdded { .. }));
        }
        table
    }

    /// Whether `request_id` of lineage `key` is executing now.
    pub fn is_in_flight(&self, key: &LineageKey, request_id: u64) -> bool {
        self.lineages
            .get(key)
            .is_some_and(|state| state.in_flight.contains_key(&request_id))
    }

    /// The bounds in force.
    pub fn config(&self) -> &AmoConfig {
        &self.config
    }

    /// Number of lineages held.
    pub fn len(&self) -> usize {
        self.lineages.len()
    }

    /// Whether no lineage is held.
    pub fn is_empty(&self) -> bool {
        self.lineages.is_empty()
    }

    /// Bytes of cached outcomes held in the whole table (at most
    /// [`AmoConfig::max_total_result_bytes`]).
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Whether the table holds lineage `key`.
    pub fn contains(&self, key: &LineageKey) -> bool {
        self.lineages.contains_key(key)
    }

    fn stamp(&mut self) -> u64 {
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        stamp
    }

    /// Marks `key` as most recently used, if held.
    fn touch(&mut self, key: &LineageKey) {
        let stamp = self.stamp();
        if let Some(state) = self.lineages.get_mut(key) {
            self.recency.remove(&state.last_used);
            state.last_used = stamp;
            self.recency.insert(stamp, *key);
        }
    }

    /// Drops lineage `key` with its cached outcomes.
    fn drop_lineage(&mut self, key: &LineageKey) {
        if let Some(state) = self.lineages.remove(key) {
            self.log(AmoChange::LineageDropped { key: *key });
            self.recency.remove(&state.last_used);
            self.cached_bytes = self.cached_bytes.saturating_sub(state.cached_bytes());
            if let Some(count) = self.per_client.get_mut(&key.client) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_client.remove(&key.client);
                }
            }
        }
    }

    /// The least recently used lineage with no call in flight, among those of
    /// `client` if given (AMO-032).
    fn idle_victim(&self, client: Option<&IdentityKey>) -> Option<LineageKey> {
        self.recency.values().copied().find(|key| {
            client.is_none_or(|client| key.client == *client)
                && self
                    .lineages
                    .get(key)
                    .is_some_and(|state| state.in_flight.is_empty())
        })
    }

    /// Makes sure `key` is held, creating it (recovered or not) when there is room.
    /// Returns false when it is not held and nothing could be dropped.
    fn ensure(&mut self, key: &LineageKey, recovered: bool) -> bool {
        if self.lineages.contains_key(key) {
            self.touch(key);
            return true;
        }
        let client_count = self.per_client.get(&key.client).copied().unwrap_or(0);
        if client_count >= self.config.max_lineages_per_client.max(1) {
            match self.idle_victim(Some(&key.client)) {
                Some(victim) => self.drop_lineage(&victim),
                None => return false,
            }
        }
        if self.lineages.len() >= self.config.max_lineages.max(1) {
            match self.idle_victim(None) {
                Some(victim) => self.drop_lineage(&victim),
                None => return false,
            }
        }
        let stamp = self.stamp();
        self.lineages.insert(
            *key,
            LineageState {
                window: RequestIdWindow::new(),
                recovered,
                in_flight: BTreeMap::new(),
                results: BTreeMap::new(),
                completion_order: VecDeque::new(),
                last_used: stamp,
            },
        );
        self.recency.insert(stamp, *key);
        *self.per_client.entry(key.client).or_insert(0) += 1;
        self.log(AmoChange::LineageAdded {
            key: *key,
            recovered,
        });
        true
    }

    /// Drops the oldest outcomes of the least recently used lineages until the table
    /// is within [`AmoConfig::max_total_result_bytes`] (AMO-030).
    fn enforce_total_bytes(&mut self) {
        let limit = self.config.max_total_result_bytes;
        let mut dropped = Vec::new();
        for key in self.recency.values() {
            if self.cached_bytes <= limit {
                break;
            }
            let Some(state) = self.lineages.get_mut(key) else {
                continue;
            };
            while self.cached_bytes > limit {
                match state.drop_oldest_result() {
                    Some((id, size)) => {
                        self.cached_bytes = self.cached_bytes.saturating_sub(size);
                        dropped.push(AmoChange::OutcomeDropped { key: *key, id });
                    }
                    None => break,
                }
            }
        }
        for change in dropped {
            self.log(change);
        }
    }
}

impl AtMostOnceStore for AtMostOnceTable {
    fn attach(&mut self, key: &LineageKey, origin: LineageOrigin) {
        // A lineage already held keeps its state whatever the origin: its history
        // since creation is complete.
        self.ensure(key, origin != LineageOrigin::Fresh);
    }

    fn admit(&mut self, key: &LineageKey, request_id: u64, retry: bool) -> Admission {
        self.admit_with(key, request_id, retry, None)
    }

    fn admit_call(
        &mut self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: &CallFingerprint,
    ) -> Admission {
        self.admit_with(key, request_id, retry, Some(fingerprint))
    }

    fn complete(&mut self, key: &LineageKey, request_id: u64, outcome: CachedOutcome) -> bool {
        let Some(state) = self.lineages.get_mut(key) else {
            return false;
        };
        let Some(fingerprint) = state.in_flight.remove(&request_id) else {
            return false;
        };
        let size = outcome.size();
        let cacheable = self.config.results_per_lineage > 0
            && size <= self.config.max_result_bytes
            && size <= self.config.max_total_result_bytes;
        let mut changes = Vec::new();
        if cacheable {
            if self.journal.is_some() {
                changes.push(AmoChange::OutcomeCached {
                    key: *key,
                    id: request_id,
                    outcome: outcome.clone(),
                    fingerprint,
                });
            }
            state.results.insert(request_id, (outcome, fingerprint));
            state.completion_order.push_back(request_id);
            self.cached_bytes = self.cached_bytes.saturating_add(size);
            while state.results.len() > self.config.results_per_lineage {
                match state.drop_oldest_result() {
                    Some((id, dropped)) => {
                        self.cached_bytes = self.cached_bytes.saturating_sub(dropped);
                        changes.push(AmoChange::OutcomeDropped { key: *key, id });
                    }
                    None => break,
                }
            }
        }
        for change in changes {
            self.log(change);
        }
        self.touch(key);
        self.enforce_total_bytes();
        true
    }

    fn abandon(&mut self, key: &LineageKey, request_id: u64) {
        if let Some(state) = self.lineages.get_mut(key) {
            state.in_flight.remove(&request_id);
        }
    }
}

impl AtMostOnceTable {
    /// [`AtMostOnceStore::admit`], with the call's fingerprint when known.
    fn admit_with(
        &mut self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: Option<&CallFingerprint>,
    ) -> Admission {
        if request_id >= SEQUENCE_LIMIT {
            return Admission::IdOutOfRange;
        }
        // Unknown here means never attached or dropped: its past is unknown.
        if !self.ensure(key, true) {
            return Admission::Overloaded;
        }
        let Some(state) = self.lineages.get_mut(key) else {
            return Admission::Overloaded;
        };
        let differs = |recorded: &Option<CallFingerprint>| matches!((recorded, fingerprint), (Some(recorded), Some(given)) if recorded != given);
        if let Some(recorded) = state.in_flight.get(&request_id) {
            return if differs(recorded) {
                Admission::Mismatch
            } else {
                Admission::InFlight
            };
        }
        if let Some((outcome, recorded)) = state.results.get(&request_id) {
            return if differs(recorded) {
                Admission::Mismatch
            } else {
                Admission::Duplicate(outcome.clone())
            };
        }
        let admission = match state.window.update(request_id) {
            Err(ReplayError::TooOld) => return Admission::Stale,
            Err(ReplayError::Duplicate) => return Admission::Unavailable,
            Err(ReplayError::LimitReached) => return Admission::IdOutOfRange,
            Ok(()) if retry && state.recovered => Admission::Unavailable,
            Ok(()) => {
                state.in_flight.insert(request_id, fingerprint.copied());
                Admission::Execute
            }
        };
        let highest = state.window.highest().unwrap_or(request_id);
        self.log(AmoChange::IdRecorded {
            key: *key,
            id: request_id,
            highest,
        });
        admission
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn key(seed: u8, lineage: u8) -> LineageKey {
        LineageKey::new(Identity::from_seed(&[seed; 32]).public_key(), [lineage; 16])
    }

    #[test]
    fn cached_bytes_track_insertions_and_every_kind_of_drop() {
        let mut table = AtMostOnceTable::new(AmoConfig {
            max_lineages: 2,
            results_per_lineage: 2,
            max_total_result_bytes: 25,
            ..AmoConfig::default()
        });
        let a = key(1, 1);
        let b = key(1, 2);
        let c = key(1, 3);
        for (lineage, id, len) in [(&a, 1, 10), (&a, 2, 10), (&a, 3, 10), (&b, 1, 10)] {
            assert_eq!(table.admit(lineage, id, false), Admission::Execute);
            assert!(table.complete(lineage, id, CachedOutcome::Response(vec![0; len])));
            let held: usize = table
                .lineages
                .values()
                .map(LineageState::cached_bytes)
                .sum();
            assert_eq!(table.cached_bytes(), held);
            assert!(table.cached_bytes() <= 25);
        }
        // Dropping a whole lineage releases its bytes.
        assert_eq!(table.admit(&c, 1, false), Admission::Execute);
        let held: usize = table
            .lineages
            .values()
            .map(LineageState::cached_bytes)
            .sum();
        assert_eq!(table.cached_bytes(), held);
        assert_eq!(table.recency.len(), table.lineages.len());
    }
}

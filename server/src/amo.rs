//! The server's at-most-once table (spec section 14): the protocol crate's sans-IO
//! [`AtMostOnceTable`] behind a lock shared by every connection, the requests that
//! wait for a call running on another connection (AMO-011), and the optional durable
//! store that keeps the table across restarts (AMO-035).
//!
//! # Waiting for a running call (AMO-010, AMO-011)
//!
//! A client that reconnects before the server noticed its old connection died
//! re-sends a call that is still running. The table answers *in flight*: the call is
//! not executed again. The new connection registers as a waiter of the id
//! ([`SharedAtMostOnce::wait_for`]); when the running call completes, is cancelled or
//! abandoned, the outcome is handed to every waiter, which answers its own copy of
//! the request (a RESPONSE signed for its own session, or the ERROR). An abandoned
//! call (its handler crashed, or it was stopped) has no known outcome: waiters are
//! answered RESULT_UNAVAILABLE.
//!
//! A call whose peer went away runs on without its connection (`connection.rs`,
//! `finish_detached`), at most `Limits::max_in_flight` per client identity
//! ([`SharedAtMostOnce::try_detach`]), so that its outcome reaches the waiters and
//! the cache. The task running each call is registered here
//! ([`SharedAtMostOnce::started`]), so that a CANCEL arriving on any connection of the
//! lineage stops it ([`SharedAtMostOnce::cancel_elsewhere`], AMO-023).
//!
//! # Durable store (AMO-035)
//!
//! [`ServerBuilder::at_most_once_store`](crate::ServerBuilder::at_most_once_store)
//! keeps the table in a [redb](https://docs.rs/redb) database file as well. The table
//! journals every change ([`AmoChange`]); after each operation the changes are
//! written in one write transaction committed with `Durability::Immediate` (redb
//! fsyncs the file before `commit` returns), while the table's lock is held:
//!
//! - **write-ahead of execution:** an id admitted for execution is durably recorded
//!   before the handler starts; if the write fails, the call is refused UNAVAILABLE
//!   (14) and not executed;
//! - **write-ahead of the answer:** an outcome is durably stored before its RESPONSE
//!   or ERROR is queued for sending.
//!
//! So after a crash or restart: a call whose outcome was stored is answered with it
//! again (one execution); a call that was recorded but had no stored outcome (it was
//! running) is answered RESULT_UNAVAILABLE and never executed a second time.
//!
//! When a write fails, the changes stay pending and are written with the next
//! operation; meanwhile every REQUEST that would execute is refused UNAVAILABLE (14)
//! (the store cannot record it). An outcome whose write failed is still sent: the
//! call ran and the answer is true, and it stays cached in memory. Beyond
//! `MAX_PENDING_CHANGES` (4096) pending changes the store gives up until the server is
//! restarted, and keeps answering UNAVAILABLE.
//!
//! The store holds exactly what the in-memory table holds, so its size has the same
//! bounds (section 14.4): at most `max_lineages` lineages, each with at most
//! `RequestIdWindow::WINDOW` recorded ids and `results_per_lineage` outcomes, the
//! outcome bytes within `max_total_result_bytes`. Recency after a restart is the
//! order of the lineages' last writes.
//!
//! Each commit is a synchronous fsync on the connection task's thread, under the
//! table's lock: a durable store trades call latency (one fsync per executed call and
//! one per outcome) for the guarantee.

use crate::connection::Outcome;
use redb::{Database, ReadableTable as _, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use toolwire_protocol::amo::{
    Admission, AmoChange, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome,
    CallFingerprint, LineageKey, LineageOrigin, RestoredLineage,
};
use toolwire_protocol::replay::RequestIdWindow;
use toolwire_protocol::{ErrorCode, IdentityKey};

/// Pending changes a failing durable store keeps for a later write before it gives up
/// until restart. Bounds memory while the backend is unreachable.
const MAX_PENDING_CHANGES: usize = 4096;

/// Lineages: key (client key ‖ lineage id) → recovered (1 byte) ‖ last write (u64 BE).
const LINEAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("amo_lineages");
/// Recorded ids: key (client key ‖ lineage id ‖ id u64 BE) → nothing.
const IDS: TableDefinition<&[u8], ()> = TableDefinition::new("amo_ids");
/// Cached outcomes: key as [`IDS`] → completion order (u64 BE) ‖ fingerprint flag
/// (1 byte) ‖ fingerprint (32 bytes, when flagged) ‖ kind (0 result, 1 error) ‖ for a
/// result its bytes, for an error its code (u32 BE) and message.
const OUTCOMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("amo_outcomes");
/// Format version and the next write stamp.
const META: TableDefinition<&str, u64> = TableDefinition::new("amo_meta");
const FORMAT_VERSION: u64 = 1;
const LINEAGE_KEY_LEN: usize = 48;

/// Why the durable at-most-once store could not be opened or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmoStoreError {
    /// The database could not be opened or read (missing directory, permissions, a
    /// file that is not a redb database, a storage error, another process holding
    /// it).
    #[error("at-most-once store {path} cannot be used: {reason}")]
    Database {
        /// The store's path.
        path: PathBuf,
        /// What the database engine reported.
        reason: String,
    },
    /// The database holds data this server cannot read (another format version, or
    /// damaged records).
    #[error("at-most-once store {path} is corrupt: {reason}")]
    Corrupt {
        /// The store's path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// A request waiting for the outcome of a call running on another connection.
struct Waiter {
    request_hash: [u8; 32],
    answer: mpsc::UnboundedSender<Outcome>,
}

/// A call executing now: how to stop it, and the connection (or detached task,
/// `connection.rs`) that runs it.
struct RunningCall {
    abort: AbortHandle,
    runner: mpsc::UnboundedSender<Outcome>,
}

struct State {
    table: AtMostOnceTable,
    durable: Option<DurableStore>,
    waiters: HashMap<(LineageKey, u64), Vec<Waiter>>,
    running: HashMap<(LineageKey, u64), RunningCall>,
    /// Calls running on after their connection closed, per client identity.
    detached: HashMap<IdentityKey, usize>,
}

/// The at-most-once table of a server, shared by its connections behind a lock taken
/// per call, never across an await.
pub(crate) struct SharedAtMostOnce(Mutex<State>);

impl SharedAtMostOnce {
    /// The in-memory table with these bounds.
    pub(crate) fn new(config: AmoConfig) -> Self {
        Self::with_state(AtMostOnceTable::new(config), None)
    }

    /// The table kept in the durable store at `path` (created when missing), restored
    /// from it within `config`'s bounds.
    /// With `fault`, the store's writes fail while the fault is on
    /// ([`StoreWriteFault`], testing only).
    pub(crate) fn durable(
        path: &Path,
        config: AmoConfig,
        fault: Option<&StoreWriteFault>,
    ) -> Result<Self, AmoStoreError> {
        let database = |source: redb::Error| AmoStoreError::Database {
            path: path.to_owned(),
            reason: source.to_string(),
        };
        create_private(path).map_err(|error| database(error.into()))?;
        let db = match fault {
            None => Database::create(path).map_err(|error| database(error.into()))?,
            Some(fault) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|error| database(error.into()))?;
                let backend = redb::backends::FileBackend::new(file)
                    .map_err(|error| database(error.into()))?;
                Database::builder()
                    .create_with_backend(FaultyBackend {
                        inner: backend,
                        fault: fault.clone(),
                    })
                    .map_err(|error| database(error.into()))?
            }
        };
        Self::on_database(path, db, config)
    }

    /// The table kept in `db` (whose file is `path`), restored from it.
    fn on_database(path: &Path, db: Database, config: AmoConfig) -> Result<Self, AmoStoreError> {
        let (store, lineages) = DurableStore::open(path, db)?;
        let mut table = AtMostOnceTable::restore(config, lineages);
        let mut store = store;
        let drops = table.take_changes();
        store.pending = drops;
        store
            .flush()
            .map_err(|source| store.database_error(source))?;
        tracing::info!(
            path = %path.display(),
            lineages = table.len(),
            "toolwire at-most-once store opened"
        );
        Ok(Self::with_state(table, Some(store)))
    }

    fn with_state(table: AtMostOnceTable, durable: Option<DurableStore>) -> Self {
        Self(Mutex::new(State {
            table,
            durable,
            waiters: HashMap::new(),
            running: HashMap::new(),
            detached: HashMap::new(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a REQUEST that the table answered *in flight* (AMO-011): its answer
    /// (the running call's outcome, or RESULT_UNAVAILABLE when the call ends without
    /// one) will arrive on `answer` as [`Outcome::Awaited`]. When the call has ended
    /// meanwhile, returns the admission of the id now instead, to answer at once.
    /// A connection waits at most once per id.
    pub(crate) fn wait_for(
        &self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: &CallFingerprint,
        request_hash: [u8; 32],
        answer: &mpsc::UnboundedSender<Outcome>,
    ) -> Option<Admission> {
        let mut state = self.state();
        if !state.table.is_in_flight(key, request_id) {
            let admission = state.admit_call(key, request_id, retry, Some(fingerprint));
            if admission == Admission::Execute {
                // Cannot happen (an id that was in flight is recorded); never run it.
                state.abandon(key, request_id);
                return Some(Admission::Unavailable);
            }
            return Some(admission);
        }
        let waiters = state.waiters.entry((*key, request_id)).or_default();
        if !waiters
            .iter()
            .any(|waiter| waiter.answer.same_channel(answer))
        {
            waiters.push(Waiter {
                request_hash,
                answer: answer.clone(),
            });
        }
        None
    }
}

impl SharedAtMostOnce {
    /// Registers the task executing `request_id` (admitted *execute*), run by the
    /// connection whose outcomes arrive on `runner`, so that a CANCEL from another
    /// connection of the lineage can stop it ([`cancel_elsewhere`](Self::cancel_elsewhere)).
    pub(crate) fn started(
        &self,
        key: &LineageKey,
        request_id: u64,
        abort: AbortHandle,
        runner: &mpsc::UnboundedSender<Outcome>,
    ) {
        let mut state = self.state();
        if state.table.is_in_flight(key, request_id) {
            state.running.insert(
                (*key, request_id),
                RunningCall {
                    abort,
                    runner: runner.clone(),
                },
            );
        }
    }

    /// A CANCEL for `request_id`, received on a connection that does not run it
    /// (AMO-023): when the id is in flight in the lineage, its handler is stopped, the
    /// call completed with CANCELLED (cached, and handed to every request waiting for
    /// it and to the connection running it), and true is returned: the cancelling
    /// connection answers CANCELLED itself. False when nothing was in flight
    /// (AMO-025: no answer).
    pub(crate) fn cancel_elsewhere(
        &self,
        key: &LineageKey,
        request_id: u64,
        canceller: &mpsc::UnboundedSender<Outcome>,
    ) -> bool {
        let mut state = self.state();
        if !state.table.is_in_flight(key, request_id) {
            return false;
        }
        let Some(call) = state.running.remove(&(*key, request_id)) else {
            return false;
        };
        call.abort.abort();
        if let Some(waiters) = state.waiters.get_mut(&(*key, request_id)) {
            waiters.retain(|waiter| !waiter.answer.same_channel(canceller));
        }
        let cancelled = CachedOutcome::cancelled();
        if state.complete(key, request_id, cancelled.clone())
            && !call.runner.same_channel(canceller)
        {
            let _ = call.runner.send(Outcome::Awaited {
                id: request_id,
                request_hash: [0; 32],
                outcome: Some(cancelled),
            });
        }
        true
    }
}

impl SharedAtMostOnce {
    /// Lets `count` calls of `client` run on after their connection closed, unless
    /// that would make more than `limit` of its calls run so at once: a client cannot
    /// multiply its running calls beyond the in-flight cap by disconnecting.
    pub(crate) fn try_detach(&self, client: IdentityKey, count: usize, limit: usize) -> bool {
        let mut state = self.state();
        let detached = state.detached.entry(client).or_insert(0);
        if detached.saturating_add(count) > limit {
            return false;
        }
        *detached += count;
        true
    }

    /// `count` detached calls of `client` have ended.
    pub(crate) fn detach_ended(&self, client: &IdentityKey, count: usize) {
        let mut state = self.state();
        if let Some(detached) = state.detached.get_mut(client) {
            *detached = detached.saturating_sub(count);
            if *detached == 0 {
                state.detached.remove(client);
            }
        }
    }
}

impl State {
    /// Writes the table's pending changes to the durable store, if any. Returns false
    /// when the store could not write them.
    fn persist(&mut self) -> bool {
        let changes = self.table.take_changes();
        let Some(store) = self.durable.as_mut() else {
            return true;
        };
        store.record(changes)
    }

    fn admit_call(
        &mut self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: Option<&CallFingerprint>,
    ) -> Admission {
        // A store with changes it could not write tries them again first; while it
        // cannot, nothing can be recorded, so nothing is admitted (AMO-035, AMO-036).
        if !self.durable.as_mut().is_none_or(DurableStore::ready) {
            return Admission::Overloaded;
        }
        let admission = match fingerprint {
            Some(fingerprint) => self.table.admit_call(key, request_id, retry, fingerprint),
            None => self.table.admit(key, request_id, retry),
        };
        if self.persist() {
            return admission;
        }
        // The id could not be recorded durably: it must not execute (write-ahead).
        if admission == Admission::Execute {
            self.table.abandon(key, request_id);
        }
        Admission::Overloaded
    }

    fn complete(&mut self, key: &LineageKey, request_id: u64, outcome: CachedOutcome) -> bool {
        self.running.remove(&(*key, request_id));
        let answer = self.table.complete(key, request_id, outcome.clone());
        // The outcome is stored (or the failure logged) before it is sent.
        self.persist();
        if answer {
            self.notify(key, request_id, Some(&outcome));
        }
        answer
    }

    fn abandon(&mut self, key: &LineageKey, request_id: u64) {
        self.running.remove(&(*key, request_id));
        self.table.abandon(key, request_id);
        self.persist();
        self.notify(key, request_id, None);
    }

    /// Hands the call's outcome (`None`: unknown) to the requests waiting for it.
    fn notify(&mut self, key: &LineageKey, request_id: u64, outcome: Option<&CachedOutcome>) {
        for waiter in self.waiters.remove(&(*key, request_id)).unwrap_or_default() {
            let _ = waiter.answer.send(Outcome::Awaited {
                id: request_id,
                request_hash: waiter.request_hash,
                outcome: outcome.cloned(),
            });
        }
    }
}

impl AtMostOnceStore for &SharedAtMostOnce {
    fn attach(&mut self, key: &LineageKey, origin: LineageOrigin) {
        let mut state = self.state();
        state.table.attach(key, origin);
        state.persist();
    }

    fn admit(&mut self, key: &LineageKey, request_id: u64, retry: bool) -> Admission {
        self.state().admit_call(key, request_id, retry, None)
    }

    fn admit_call(
        &mut self,
        key: &LineageKey,
        request_id: u64,
        retry: bool,
        fingerprint: &CallFingerprint,
    ) -> Admission {
        self.state()
            .admit_call(key, request_id, retry, Some(fingerprint))
    }

    fn complete(&mut self, key: &LineageKey, request_id: u64, outcome: CachedOutcome) -> bool {
        self.state().complete(key, request_id, outcome)
    }

    fn abandon(&mut self, key: &LineageKey, request_id: u64) {
        self.state().abandon(key, request_id);
    }
}

/// The redb database mirroring the table.
struct DurableStore {
    path: PathBuf,
    db: Database,
    /// The next write stamp (recency of lineages, completion order of outcomes).
    next_stamp: u64,
    /// Changes not yet written (the last write failed).
    pending: Vec<AmoChange>,
    /// Too many changes are pending: the store is given up until restart.
    gave_up: bool,
}

/// Marks lineage `key` as written at `stamp` (and advances it), creating its record
/// with `recovered` when given; a lineage without record (dropped in the same batch)
/// is left alone.
#[allow(clippy::result_large_err)] // a cold path; redb's own error type
fn touch(
    lineages: &mut redb::Table<&[u8], &[u8]>,
    key: &[u8; LINEAGE_KEY_LEN],
    recovered: Option<bool>,
    stamp: &mut u64,
) -> Result<(), redb::Error> {
    let recovered = match recovered {
        Some(recovered) => recovered,
        None => match lineages.get(key.as_slice())? {
            Some(value) => value.value().first() == Some(&1),
            None => return Ok(()),
        },
    };
    let mut value = [0; 9];
    value[0] = u8::from(recovered);
    value[1..].copy_from_slice(&stamp.to_be_bytes());
    lineages.insert(key.as_slice(), value.as_slice())?;
    *stamp += 1;
    Ok(())
}

fn lineage_bytes(key: &LineageKey) -> [u8; LINEAGE_KEY_LEN] {
    let mut bytes = [0; LINEAGE_KEY_LEN];
    bytes[..32].copy_from_slice(key.client.as_bytes());
    bytes[32..].copy_from_slice(&key.lineage);
    bytes
}

fn id_bytes(key: &[u8; LINEAGE_KEY_LEN], id: u64) -> [u8; LINEAGE_KEY_LEN + 8] {
    let mut bytes = [0; LINEAGE_KEY_LEN + 8];
    bytes[..LINEAGE_KEY_LEN].copy_from_slice(key);
    bytes[LINEAGE_KEY_LEN..].copy_from_slice(&id.to_be_bytes());
    bytes
}

fn encode_outcome(
    stamp: u64,
    fingerprint: Option<&CallFingerprint>,
    outcome: &CachedOutcome,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(48 + outcome.size());
    bytes.extend_from_slice(&stamp.to_be_bytes());
    match fingerprint {
        Some(fingerprint) => {
            bytes.push(1);
            bytes.extend_from_slice(&fingerprint.0);
        }
        None => bytes.push(0),
    }
    match outcome {
        CachedOutcome::Response(result) => {
            bytes.push(0);
            bytes.extend_from_slice(result);
        }
        CachedOutcome::Error { code, message } => {
            bytes.push(1);
            bytes.extend_from_slice(&code.0.to_be_bytes());
            bytes.extend_from_slice(message.as_bytes());
        }
        // `CachedOutcome` is non-exhaustive: an outcome this store cannot encode is
        // kept as unknown (its retries get RESULT_UNAVAILABLE after a restart).
        _ => bytes.push(2),
    }
    bytes
}

/// A stored outcome: (completion stamp, fingerprint, outcome); `None` when damaged.
type StoredOutcome = (u64, Option<CallFingerprint>, Option<CachedOutcome>);

fn decode_outcome(bytes: &[u8]) -> Option<StoredOutcome> {
    let (stamp, rest) = bytes.split_first_chunk::<8>()?;
    let (flag, rest) = rest.split_first()?;
    let (fingerprint, rest) = match flag {
        0 => (None, rest),
        1 => {
            let (fingerprint, rest) = rest.split_first_chunk::<32>()?;
            (Some(CallFingerprint(*fingerprint)), rest)
        }
        _ => return None,
    };
    let (kind, rest) = rest.split_first()?;
    let outcome = match kind {
        0 => Some(CachedOutcome::Response(rest.to_vec())),
        1 => {
            let (code, message) = rest.split_first_chunk::<4>()?;
            Some(CachedOutcome::Error {
                code: ErrorCode(u32::from_be_bytes(*code)),
                message: String::from_utf8(message.to_vec()).ok()?,
            })
        }
        2 => None,
        _ => return None,
    };
    Some((u64::from_be_bytes(*stamp), fingerprint, outcome))
}

fn decode_lineage_key(bytes: &[u8]) -> Option<LineageKey> {
    let (client, lineage) = bytes.split_first_chunk::<32>()?;
    let lineage: [u8; 16] = lineage.try_into().ok()?;
    let client = IdentityKey::from_bytes(*client).ok()?;
    Some(LineageKey::new(client, lineage))
}

/// Creates the store file, readable and writable by its owner only (it holds call
/// results), when missing; an existing file is left as it is.
/// A switch that makes the writes of a server's durable at-most-once store fail
/// while it is on: a disk that fills up or goes away under a running server, for
/// checking AMO-036 from outside (a REQUEST whose id cannot be recorded is refused
/// UNAVAILABLE and not executed). Given to
/// [`DangerousServerBuilder::at_most_once_store_write_fault_for_testing`](crate::DangerousServerBuilder::at_most_once_store_write_fault_for_testing);
/// clones share the switch.
///
/// Switching it off does not revive a running server's store: after a failed
/// write the database refuses every later transaction, so the server answers
/// UNAVAILABLE until it is restarted (fail closed).
#[derive(Clone, Debug, Default)]
pub struct StoreWriteFault(Arc<AtomicBool>);

impl StoreWriteFault {
    /// A switch, off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns the fault on (every write and sync of the store fails) or off.
    pub fn set_failing(&self, failing: bool) {
        self.0.store(failing, Ordering::SeqCst);
    }

    /// Whether the store's writes fail now.
    pub fn is_failing(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self) -> std::io::Result<()> {
        if self.is_failing() {
            return Err(std::io::Error::other(
                "store write fault switched on (testing)",
            ));
        }
        Ok(())
    }
}

/// A redb backend whose writes, resizes and syncs fail while its fault is on; reads
/// go through.
#[derive(Debug)]
struct FaultyBackend<B> {
    inner: B,
    fault: StoreWriteFault,
}

impl<B: redb::StorageBackend> redb::StorageBackend for FaultyBackend<B> {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.fault.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        self.fault.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.fault.check()?;
        self.inner.write(offset, data)
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

impl DurableStore {
    /// Opens (or creates) the database at `path` and reads every lineage, least
    /// recently written first.
    fn open(path: &Path, db: Database) -> Result<(Self, Vec<RestoredLineage>), AmoStoreError> {
        let database = |source: redb::Error| AmoStoreError::Database {
            path: path.to_owned(),
            reason: source.to_string(),
        };
        let corrupt = |reason: &str| AmoStoreError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let write = db.begin_write().map_err(|error| database(error.into()))?;
        let (next_stamp, lineages) = {
            let mut meta = write
                .open_table(META)
                .map_err(|error| database(error.into()))?;
            let lineage_table = write
                .open_table(LINEAGES)
                .map_err(|error| database(error.into()))?;
            let ids = write
                .open_table(IDS)
                .map_err(|error| database(error.into()))?;
            let outcomes = write
                .open_table(OUTCOMES)
                .map_err(|error| database(error.into()))?;
            let format = meta
                .get("format")
                .map_err(|error| database(error.into()))?
                .map(|value| value.value());
            match format {
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|error| database(error.into()))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => return Err(corrupt(&format!("unknown format version {other}"))),
            }
            let mut next_stamp = meta
                .get("stamp")
                .map_err(|error| database(error.into()))?
                .map_or(0, |value| value.value());
            let mut lineages = Vec::new();
            for entry in lineage_table
                .iter()
                .map_err(|error| database(error.into()))?
            {
                let (key, value) = entry.map_err(|error| database(error.into()))?;
                let key_bytes: [u8; LINEAGE_KEY_LEN] = key
                    .value()
                    .try_into()
                    .map_err(|_| corrupt("bad lineage key"))?;
                let lineage =
                    decode_lineage_key(&key_bytes).ok_or_else(|| corrupt("bad lineage key"))?;
                let (recovered, stamp) = value
                    .value()
                    .split_first()
                    .and_then(|(recovered, stamp)| {
                        Some((*recovered == 1, u64::from_be_bytes(stamp.try_into().ok()?)))
                    })
                    .ok_or_else(|| corrupt("bad lineage record"))?;
                let mut restored = RestoredLineage::new(lineage, recovered);
                let range = id_bytes(&key_bytes, 0)..=id_bytes(&key_bytes, u64::MAX);
                for entry in ids
                    .range::<&[u8]>(range.start().as_slice()..=range.end().as_slice())
                    .map_err(|error| database(error.into()))?
                {
                    let (id, _) = entry.map_err(|error| database(error.into()))?;
                    let id = id.value();
                    let id = id
                        .get(LINEAGE_KEY_LEN..)
                        .and_then(|id| id.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("bad id key"))?;
                    restored.recorded.push(id);
                }
                let mut cached = Vec::new();
                for entry in outcomes
                    .range::<&[u8]>(range.start().as_slice()..=range.end().as_slice())
                    .map_err(|error| database(error.into()))?
                {
                    let (id, value) = entry.map_err(|error| database(error.into()))?;
                    let id = id
                        .value()
                        .get(LINEAGE_KEY_LEN..)
                        .and_then(|id| id.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("bad outcome key"))?;
                    let (stamp, fingerprint, outcome) = decode_outcome(value.value())
                        .ok_or_else(|| corrupt("bad outcome record"))?;
                    next_stamp = next_stamp.max(stamp.saturating_add(1));
                    if let Some(outcome) = outcome {
                        cached.push((stamp, id, outcome, fingerprint));
                    }
                }
                cached.sort_by_key(|(stamp, ..)| *stamp);
                restored.outcomes = cached
                    .into_iter()
                    .map(|(_, id, outcome, fingerprint)| (id, outcome, fingerprint))
                    .collect();
                next_stamp = next_stamp.max(stamp.saturating_add(1));
                lineages.push((stamp, restored));
            }
            lineages.sort_by_key(|(stamp, _)| *stamp);
            (
                next_stamp,
                lineages.into_iter().map(|(_, lineage)| lineage).collect(),
            )
        };
        write.commit().map_err(|error| database(error.into()))?;
        Ok((
            Self {
                path: path.to_owned(),
                db,
                next_stamp,
                pending: Vec::new(),
                gave_up: false,
            },
            lineages,
        ))
    }

    fn database_error(&self, source: redb::Error) -> AmoStoreError {
        AmoStoreError::Database {
            path: self.path.clone(),
            reason: source.to_string(),
        }
    }

    /// Whether new ids can be recorded: nothing is pending, or the pending changes
    /// could be written now.
    fn ready(&mut self) -> bool {
        !self.gave_up && (self.pending.is_empty() || self.record(Vec::new()))
    }

    /// Queues `changes` and writes everything pending. Returns false when the write
    /// failed (the changes stay pending) or the store gave up.
    fn record(&mut self, changes: Vec<AmoChange>) -> bool {
        if self.gave_up {
            return false;
        }
        if changes.is_empty() && self.pending.is_empty() {
            return true;
        }
        self.pending.extend(changes);
        match self.flush() {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(
                    path = %self.path.display(),
                    %error,
                    pending = self.pending.len(),
                    event = "amo_store_failed",
                    "toolwire at-most-once store write failed: refusing new calls UNAVAILABLE"
                );
                if self.pending.len() > MAX_PENDING_CHANGES {
                    self.gave_up = true;
                    self.pending = Vec::new();
                }
                false
            }
        }
    }

    /// Writes the pending changes in one transaction, durable when `commit` returns.
    #[allow(clippy::result_large_err)] // a cold path; redb's own error type
    fn flush(&mut self) -> Result<(), redb::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut stamp = self.next_stamp;
        let mut write = self.db.begin_write()?;
        write.set_durability(redb::Durability::Immediate);
        {
            let mut lineages = write.open_table(LINEAGES)?;
            let mut ids = write.open_table(IDS)?;
            let mut outcomes = write.open_table(OUTCOMES)?;
            let mut meta = write.open_table(META)?;
            for change in &self.pending {
                match change {
                    AmoChange::LineageAdded { key, recovered } => {
                        let key = lineage_bytes(key);
                        touch(&mut lineages, &key, Some(*recovered), &mut stamp)?;
                    }
                    AmoChange::LineageDropped { key } => {
                        let key = lineage_bytes(key);
                        lineages.remove(key.as_slice())?;
                        let (start, end) = (id_bytes(&key, 0), id_bytes(&key, u64::MAX));
                        ids.retain_in::<&[u8], _>(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        outcomes
                            .retain_in::<&[u8], _>(start.as_slice()..=end.as_slice(), |_, _| {
                                false
                            })?;
                    }
                    AmoChange::IdRecorded { key, id, highest } => {
                        let key = lineage_bytes(key);
                        ids.insert(id_bytes(&key, *id).as_slice(), ())?;
                        if let Some(oldest_kept) = highest.checked_sub(RequestIdWindow::WINDOW - 1)
                        {
                            let (start, end) = (id_bytes(&key, 0), id_bytes(&key, oldest_kept));
                            ids.retain_in::<&[u8], _>(start.as_slice()..end.as_slice(), |_, _| {
                                false
                            })?;
                        }
                        touch(&mut lineages, &key, None, &mut stamp)?;
                    }
                    AmoChange::OutcomeCached {
                        key,
                        id,
                        outcome,
                        fingerprint,
                    } => {
                        let key = lineage_bytes(key);
                        let value = encode_outcome(stamp, fingerprint.as_ref(), outcome);
                        outcomes.insert(id_bytes(&key, *id).as_slice(), value.as_slice())?;
                        touch(&mut lineages, &key, None, &mut stamp)?;
                    }
                    AmoChange::OutcomeDropped { key, id } => {
                        let key = lineage_bytes(key);
                        outcomes.remove(id_bytes(&key, *id).as_slice())?;
                    }
                    _ => {}
                }
            }
            meta.insert("stamp", stamp)?;
        }
        write.commit()?;
        self.next_stamp = stamp;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwire_protocol::Identity;

    /// AMO-035, AMO-036, AMO-037: when the store cannot write, no new id is admitted
    /// for execution (UNAVAILABLE, nothing runs), and an outcome is still answered.
    #[test]
    fn a_store_that_cannot_write_admits_nothing_but_still_answers() {
        let failing = StoreWriteFault::new();
        let backend = FaultyBackend {
            inner: redb::backends::InMemoryBackend::new(),
            fault: failing.clone(),
        };
        let db = Database::builder()
            .create_with_backend(backend)
            .expect("in-memory database");
        let shared = SharedAtMostOnce::on_database(Path::new("memory"), db, AmoConfig::default())
            .expect("store opens");
        let key = LineageKey::new(Identity::from_seed(&[3; 32]).public_key(), [1; 16]);
        let mut store = &shared;
        store.attach(&key, LineageOrigin::Fresh);
        assert_eq!(store.admit(&key, 1, false), Admission::Execute);

        failing.set_failing(true);
        assert_eq!(store.admit(&key, 2, false), Admission::Overloaded);
        assert!(!shared.state().table.is_in_flight(&key, 2));
        assert_eq!(store.admit(&key, 3, false), Admission::Overloaded);
        // The running call's outcome is still the answer to send.
        assert!(store.complete(&key, 1, CachedOutcome::Response(vec![1])));
        assert_eq!(store.admit(&key, 4, false), Admission::Overloaded);
    }

    #[test]
    fn outcomes_round_trip_through_their_encoding() {
        let fingerprint = CallFingerprint::of("echo", b"args", "grant");
        for (fingerprint, outcome) in [
            (None, CachedOutcome::Response(vec![0x91, 0x01])),
            (Some(fingerprint), CachedOutcome::Response(Vec::new())),
            (
                Some(fingerprint),
                CachedOutcome::Error {
                    code: ErrorCode::CANCELLED,
                    message: "cancelled".into(),
                },
            ),
        ] {
            let bytes = encode_outcome(7, fingerprint.as_ref(), &outcome);
            assert_eq!(
                decode_outcome(&bytes),
                Some((7, fingerprint, Some(outcome)))
            );
        }
        assert_eq!(decode_outcome(&[0; 3]), None);
        assert_eq!(decode_outcome(&[0, 0, 0, 0, 0, 0, 0, 1, 9]), None);
    }
}

#[cfg(test)]
mod detach_tests {
    use super::*;
    use toolwire_protocol::Identity;

    /// A client's calls running on after their connection closed are capped, per
    /// client, and the cap frees up as they end.
    #[test]
    fn detached_calls_are_capped_per_client() {
        let shared = SharedAtMostOnce::new(AmoConfig::default());
        let alice = Identity::from_seed(&[1; 32]).public_key();
        let bob = Identity::from_seed(&[2; 32]).public_key();
        assert!(shared.try_detach(alice, 3, 4));
        assert!(!shared.try_detach(alice, 2, 4));
        assert!(shared.try_detach(bob, 4, 4));
        shared.detach_ended(&alice, 3);
        assert!(shared.try_detach(alice, 4, 4));
        assert!(!shared.try_detach(alice, 1, 4));
    }
}

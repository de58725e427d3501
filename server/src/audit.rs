//! The audit log of a server (ENV-009, AUTHZ-024; format and rules: AUD-001..AUD-012,
//! `toolwire_protocol::audit`): one hash-chained JSON line per decision record, with
//! the signed envelopes as evidence, and heads signed by the server identity.
//!
//! # Who writes what, and when
//!
//! A **writer thread** owns the file (opened in append mode, created with mode 0600)
//! and the [`AuditChain`]. Connection drivers hand it entries through one bounded
//! channel; it stamps each with the wall-clock time, chains it, appends it (line and
//! LF in one write, AUD-001), writes a signed head every
//! [`AuditOptions::head_every`] entries, after [`AuditOptions::head_interval`] of
//! unsigned entries and at shutdown (AUD-007), and syncs the file as
//! [`AuditOptions::fsync`] says.
//!
//! **One `call` entry per decision record** (AUD-004), written when the call's answer
//! is decided, so that the entry holds the whole story:
//!
//! | decision | entry written | `response` |
//! |---|---|---|
//! | refused (any step), already in flight | at once, as the ERROR is sent (or not, for in flight) | null |
//! | answered from the cache | at once, as the RESPONSE (or ERROR) is sent | the RESPONSE sent |
//! | execute | when the call ends: RESPONSE or ERROR sent, CANCEL, handler crash, shutdown, connection lost | the RESPONSE sent, else null |
//!
//! For an executed call that did not end with a RESPONSE, the entry's `detail` says
//! how it ended (the server's statement, covered by the next head):
//! `outcome: ERROR <CODE>` (the handler's error, including DEADLINE_EXCEEDED),
//! `outcome: CANCELLED by the client`, `outcome: INTERNAL (handler panicked)`,
//! `outcome: UNAVAILABLE (interrupted by server shutdown)`,
//! `outcome: unknown (connection closed while running)` or
//! `outcome: not sent (connection closed)`. A detail the authorization pipeline set
//! comes first, separated by `"; "`. Entries therefore appear in the order calls
//! *ended*, not the order they arrived; `request_id` and `session` tie them to the
//! wire.
//!
//! # Backpressure: nothing is dropped, nothing blocks a driver
//!
//! An audit log that silently drops entries proves little, and a driver that waits on
//! the disk stalls every call of its connection (including CANCELs and deadlines).
//! So a driver never waits for the writer: it puts an entry on the channel when there
//! is room, and otherwise keeps it in a small per-connection backlog and **stops
//! reading from its peer** until the backlog has moved to the channel. Handlers, call
//! completions, deadlines and shutdown keep running meanwhile; only new input waits,
//! and TCP flow control pushes back on the client. The backlog is bounded: one entry
//! per frame read before reading stops, plus one per call in flight
//! ([`crate::Limits::max_in_flight`]). The channel holds [`AuditOptions::queue`]
//! entries (each with its argument and result bytes: at most about
//! `queue × 2 × 64 KiB`, typically a few hundred bytes each).
//!
//! **Fail closed.** If the file cannot be written (disk full, I/O error), the writer
//! logs an `audit_failed` error event and stops; every connection is then closed with
//! INTERNAL_ERROR (1011) and new connections are closed at once: the server serves
//! no call it cannot log. Entries that could no longer be handed over are counted in
//! [`AuditStats::lost`]. Restarting the server continues the file after its last
//! complete line.
//!
//! # Startup
//!
//! An existing file is continued (AUD-008): a torn final line (a crash mid-write) is
//! cut ([`complete_len`]); then the tail from the last head on (at most the last
//! 16 MiB) is verified with the server key, which also catches a file
//! written under another identity (a key change starts a new file); then the chain
//! resumes after the last line. A tail that does not verify stops the build: an
//! operator must look at it before anything is appended.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use toolwire_protocol::audit::{
    complete_len, verify_log_from, AuditChain, AuditErrorKind, ChainPosition, RequestEvidence,
    ResponseEvidence, DEFAULT_MAX_INLINE,
};
use toolwire_protocol::authz::DecisionRecord;
use toolwire_protocol::Identity;

/// How much of an existing log is read and verified at startup: the tail from its
/// last head, within this many final bytes.
pub(crate) const TAIL_WINDOW: u64 = 16 * 1024 * 1024;

/// Entries written in one `write` at most (when many arrive together).
const MAX_BATCH: usize = 256;

/// When the writer syncs the file to disk (`fdatasync`). Writes reach the operating
/// system at once whatever the policy, so a crash of the *process* loses nothing;
/// the policy decides what a power loss or kernel crash can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsyncPolicy {
    /// After every write (entries that arrived together are written in one write).
    /// Safest, slowest.
    EveryEntry,
    /// After every `n` entries (0 counts as 1), and after every head.
    EveryN(u64),
    /// After every head (periodic and final). The durable part of the log then always
    /// ends with a signed head; a power loss can take at most the unsigned tail.
    OnHead,
}

/// Options of the audit log ([`crate::ServerBuilder::audit_log_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditOptions {
    /// When to sync the file. Default [`FsyncPolicy::OnHead`].
    pub fsync: FsyncPolicy,
    /// Write a signed head after this many entries since the last one (AUD-007).
    /// Default 1000; 0 writes heads only by time and at shutdown. Bounds the unsigned
    /// tail, which anyone who can write the file could rewrite undetected (AUD-010).
    pub head_every: u64,
    /// Write a signed head when the oldest unsigned entry is this old. Default 60 s;
    /// `None` writes heads only by count and at shutdown.
    pub head_interval: Option<Duration>,
    /// Entries the channel to the writer holds. Default 1024. Bounds the memory of
    /// entries waiting for the disk; beyond it, connections stop reading (see the
    /// module documentation).
    pub queue: usize,
    /// Argument and result byte strings up to this length are stored in clear, so
    /// that their signatures can be checked (AUD-005, AUD-006). Default 4096
    /// ([`DEFAULT_MAX_INLINE`]); 0 keeps only hashes and signatures (AUD-011).
    pub max_inline: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::OnHead,
            head_every: 1000,
            head_interval: Some(Duration::from_secs(60)),
            queue: 1024,
            max_inline: DEFAULT_MAX_INLINE,
        }
    }
}

/// What the audit writer did, reported by [`crate::Server::shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// The log file.
    pub path: PathBuf,
    /// `seq` of the first entry this server wrote (0 for a new chain).
    pub first_seq: u64,
    /// Entries written by this server (calls and heads).
    pub entries: u64,
    /// Call entries among them.
    pub calls: u64,
    /// Heads among them (the last one written at shutdown).
    pub heads: u64,
    /// Bytes of a torn final line cut when the file was opened (AUD-008).
    pub torn_bytes_cut: u64,
    /// Call entries that could not be handed to the writer because it had stopped
    /// (see the module documentation, "fail closed"). 0 unless the log failed.
    pub lost: u64,
}

/// Why the audit log could not be opened, continued or completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditLogError {
    /// Opening, reading, writing or syncing the file failed.
    #[error("audit log {}: {message}", .path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
        /// What failed.
        message: String,
    },
    /// The existing file's tail does not verify under the server key: it was altered,
    /// or written under another identity (which must start a new file, AUD-008).
    /// Nothing was appended.
    #[error("audit log {} cannot be continued: the entry at byte {offset} fails verification: {kind}", .path.display())]
    Tail {
        /// The log file.
        path: PathBuf,
        /// Byte offset of the first bad line.
        offset: u64,
        /// What is wrong with it.
        kind: AuditErrorKind,
    },
    /// The writer stopped after a failure (logged as `audit_failed` when it
    /// happened); entries after it were not written.
    #[error("audit log {} stopped: {message}", .path.display())]
    Stopped {
        /// The log file.
        path: PathBuf,
        /// The failure.
        message: String,
    },
}

impl AuditLogError {
    fn io(path: &Path, what: &str, error: &std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            kind: error.kind(),
            message: format!("{what}: {error}"),
        }
    }
}

/// One call entry on its way to the writer (AUD-004..AUD-006).
#[derive(Debug)]
pub(crate) struct CallEntry {
    record: DecisionRecord,
    request: RequestEvidence,
    response: Option<ResponseEvidence>,
}

impl CallEntry {
    pub(crate) fn new(record: DecisionRecord, request: RequestEvidence) -> Box<Self> {
        Box::new(Self {
            record,
            request,
            response: None,
        })
    }

    /// Adds the evidence of the RESPONSE that answered the call (`None`: it could
    /// not be sent, the connection was closing).
    pub(crate) fn answered(mut self: Box<Self>, response: Option<ResponseEvidence>) -> Box<Self> {
        match response {
            Some(response) => {
                self.response = Some(response);
                self
            }
            None => self.ended("RESPONSE not sent (connection closing)"),
        }
    }

    /// Notes how an executed call ended without a RESPONSE (module documentation).
    pub(crate) fn ended(mut self: Box<Self>, outcome: &str) -> Box<Self> {
        let outcome = format!("outcome: {outcome}");
        self.record.detail = Some(match self.record.detail.take() {
            Some(detail) => format!("{detail}; {outcome}"),
            None => outcome,
        });
        self
    }
}

enum Command {
    Call(Box<CallEntry>),
    /// Write the final head, sync, report and stop.
    Finish(oneshot::Sender<Result<AuditStats, AuditLogError>>),
}

/// State shared by the server, its connections and the writer thread.
struct Shared {
    path: PathBuf,
    /// Entries lost because the writer had stopped.
    lost: Mutex<u64>,
    /// Why the writer stopped, if it failed.
    failure: Mutex<Option<String>>,
    /// The result of the final head, once written.
    finished: Mutex<Option<Result<AuditStats, AuditLogError>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn stopped(&self) -> AuditLogError {
        AuditLogError::Stopped {
            path: self.path.clone(),
            message: lock(&self.failure)
                .clone()
                .unwrap_or_else(|| "the writer has stopped".to_owned()),
        }
    }
}

/// The server's handle on its audit log.
pub(crate) struct AuditLog {
    sender: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path` for `identity`, checks and continues its
    /// tail, and starts the writer thread.
    pub(crate) fn open(
        path: &Path,
        identity: &Identity,
        options: &AuditOptions,
    ) -> Result<Self, AuditLogError> {
        let (file, position, torn_bytes_cut) = open_file(path, identity)?;
        let chain = AuditChain::at(identity.clone(), position).with_max_inline(options.max_inline);
        let (sender, receiver) = mpsc::channel(options.queue.max(1));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            lost: Mutex::new(0),
            failure: Mutex::new(None),
            finished: Mutex::new(None),
        });
        let writer = Writer {
            file,
            chain,
            options: options.clone(),
            shared: shared.clone(),
            stats: AuditStats {
                path: path.to_path_buf(),
                first_seq: position.next_seq,
                entries: 0,
                calls: 0,
                heads: 0,
                torn_bytes_cut,
                lost: 0,
            },
            unsigned: 0,
            oldest_unsigned: None,
            unsynced: 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|error| AuditLogError::io(path, "cannot start the writer", &error))?;
        std::thread::Builder::new()
            .name("toolwire-audit".into())
            .spawn(move || runtime.block_on(writer.run(receiver)))
            .map_err(|error| AuditLogError::io(path, "cannot start the writer", &error))?;
        tracing::info!(
            path = %path.display(),
            next_seq = position.next_seq,
            event = "audit_opened",
            "toolwire audit log open"
        );
        Ok(Self { sender, shared })
    }

    /// A connection's way in.
    pub(crate) fn sink(&self) -> AuditSink {
        AuditSink {
            sender: self.sender.clone(),
            shared: self.shared.clone(),
            backlog: VecDeque::new(),
        }
    }

    /// Writes the final head, syncs the file and stops the writer (AUD-007). Entries
    /// handed over before are written first. Later calls return the same result.
    pub(crate) async fn finish(&self) -> Result<AuditStats, AuditLogError> {
        if let Some(done) = lock(&self.shared.finished).clone() {
            return done;
        }
        let (reply, answer) = oneshot::channel();
        let outcome = match self.sender.send(Command::Finish(reply)).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(self.shared.stopped())),
            Err(_) => Err(self.shared.stopped()),
        };
        let lost = *lock(&self.shared.lost);
        let outcome = outcome.map(|mut stats| {
            stats.lost = lost;
            stats
        });
        lock(&self.shared.finished).get_or_insert(outcome).clone()
    }
}

/// A connection's side of the channel, with its backlog (module documentation).
pub(crate) struct AuditSink {
    sender: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    backlog: VecDeque<Command>,
}

impl AuditSink {
    /// Hands `entry` to the writer, or keeps it in the backlog when the channel is
    /// full. Never waits.
    pub(crate) fn write(&mut self, entry: Box<CallEntry>) {
        let command = Command::Call(entry);
        if !self.backlog.is_empty() {
            self.backlog.push_back(command);
            return;
        }
        match self.sender.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => self.backlog.push_back(command),
            Err(mpsc::error::TrySendError::Closed(_)) => self.lose(1),
        }
    }

    /// Whether entries wait for room: the driver then stops reading from its peer.
    pub(crate) fn backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Whether the writer has stopped: the driver then closes its connection.
    pub(crate) fn stopped(&self) -> bool {
        self.sender.is_closed()
    }

    /// Resolves when the writer has stopped.
    pub(crate) async fn stopped_signal(&self) {
        self.sender.closed().await;
    }

    /// Waits for room in the channel (cancel safe: it only reserves a slot).
    pub(crate) fn room(&self) -> impl std::future::Future<Output = Option<Room>> + 'static {
        let sender = self.sender.clone();
        async move { sender.reserve_owned().await.ok().map(Room) }
    }

    /// Moves the backlog into the channel: the first entry into `room`, then as many
    /// as fit.
    pub(crate) fn drain(&mut self, room: Room) {
        if let Some(command) = self.backlog.pop_front() {
            room.0.send(command);
        }
        while let Some(command) = self.backlog.pop_front() {
            match self.sender.try_send(command) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(command)) => {
                    self.backlog.push_front(command);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    let lost = self.backlog.len().saturating_add(1);
                    self.backlog.clear();
                    self.lose(lost);
                    return;
                }
            }
        }
    }

    /// At the end of a connection: hands over the whole backlog, waiting for room.
    pub(crate) async fn flush(&mut self) {
        while let Some(command) = self.backlog.pop_front() {
            if self.sender.send(command).await.is_err() {
                let lost = self.backlog.len().saturating_add(1);
                self.backlog.clear();
                self.lose(lost);
                return;
            }
        }
    }

    fn lose(&self, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        let mut lost = lock(&self.shared.lost);
        *lost = lost.saturating_add(count);
        tracing::error!(
            path = %self.shared.path.display(),
            lost = count,
            event = "audit_failed",
            "toolwire audit entries lost: the audit writer has stopped"
        );
    }
}

impl Drop for AuditSink {
    fn drop(&mut self) {
        if !self.backlog.is_empty() {
            let lost = self.backlog.len();
            self.backlog.clear();
            self.lose(lost);
        }
    }
}

/// A reserved slot in the writer's channel.
pub(crate) struct Room(mpsc::OwnedPermit<Command>);

/// Opens `path` for appending (mode 0600 when created), cutting a torn final line
/// and verifying the tail. Returns the file, where the chain continues, and the bytes
/// cut.
fn open_file(
    path: &Path,
    identity: &Identity,
) -> Result<(File, ChainPosition, u64), AuditLogError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|error| AuditLogError::io(path, "cannot open", &error))?;
    #[cfg(unix)]
    warn_if_readable_by_others(path, &file);
    let len = file
        .metadata()
        .map_err(|error| AuditLogError::io(path, "cannot read metadata", &error))?
        .len();
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| {
            (&mut file)
                .take(len.saturating_sub(start))
                .read_to_end(&mut tail)
        })
        .map_err(|error| AuditLogError::io(path, "cannot read", &error))?;
    let complete = complete_len(&tail);
    let cut = u64::try_from(tail.len().saturating_sub(complete)).unwrap_or(u64::MAX);
    if cut > 0 {
        if complete == 0 && start > 0 {
            // No line end in the whole window: not a log this writer produced.
            return Err(AuditLogError::Tail {
                path: path.to_path_buf(),
                offset: start,
                kind: AuditErrorKind::Malformed,
            });
        }
        let keep = start.saturating_add(u64::try_from(complete).unwrap_or(u64::MAX));
        file.set_len(keep)
            .and_then(|()| file.sync_data())
            .map_err(|error| AuditLogError::io(path, "cannot cut the torn last line", &error))?;
        tracing::warn!(
            path = %path.display(),
            bytes = cut,
            event = "audit_torn_line_cut",
            "toolwire audit log ended with an incomplete line (a crash mid-write): cut it"
        );
        tail.truncate(complete);
    }
    let text = std::str::from_utf8(&tail).map_err(|_| AuditLogError::Tail {
        path: path.to_path_buf(),
        offset: start,
        kind: AuditErrorKind::Malformed,
    })?;
    let position =
        verify_tail(text, start, identity).map_err(|(offset, kind)| AuditLogError::Tail {
            path: path.to_path_buf(),
            offset,
            kind,
        })?;
    Ok((file, position, cut))
}

/// Verifies the tail of a log from its last head on (or, without a head in the
/// window, from its first complete line) and returns where the chain continues.
/// `text` holds only complete lines and starts at byte `start` of the file; when
/// `start` is not 0 its first line may be partial and is skipped. Errors carry the
/// byte offset of the bad line.
fn verify_tail(
    text: &str,
    start: u64,
    identity: &Identity,
) -> Result<ChainPosition, (u64, AuditErrorKind)> {
    if text.is_empty() {
        return Ok(ChainPosition::GENESIS);
    }
    // (offset in `text`, line) of every complete line in the window.
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0usize;
    for line in text.split_terminator('\n') {
        lines.push((offset, line));
        offset = offset.saturating_add(line.len()).saturating_add(1);
    }
    if start > 0 {
        lines.remove(0);
    }
    let absolute = |index: usize| start.saturating_add(u64::try_from(index).unwrap_or(u64::MAX));
    // Verification starts at the last head in the window (so its signature is
    // checked), else at the window's first line.
    let first = lines
        .iter()
        .rposition(|(_, line)| line.contains(r#","kind":"head","#))
        .unwrap_or(0);
    let position = match first.checked_sub(1).and_then(|index| lines.get(index)) {
        Some(&(at, before)) => ChainPosition::after(before).map_err(|kind| (absolute(at), kind))?,
        None if start == 0 => ChainPosition::GENESIS,
        // The window's first line: the position it claims (its own `seq` and `prev`).
        None => match lines.first() {
            Some(&(at, line)) => {
                claimed_position(line).ok_or((absolute(at), AuditErrorKind::Malformed))?
            }
            None => return Err((start, AuditErrorKind::Malformed)),
        },
    };
    let Some(&(from, _)) = lines.get(first) else {
        return Ok(position);
    };
    let checked = text.get(from..).unwrap_or("");
    match verify_log_from(checked, &identity.public_key(), position) {
        Ok(summary) => Ok(summary.end),
        Err(error) => {
            let index = first.saturating_add(error.line).saturating_sub(1);
            let at = lines.get(index).map_or(from, |&(at, _)| at);
            Err((absolute(at), error.kind))
        }
    }
}

/// The position a line claims for itself: its `seq` and `prev`.
fn claimed_position(line: &str) -> Option<ChainPosition> {
    #[derive(serde::Deserialize)]
    struct Claim {
        seq: u64,
        prev: String,
    }
    let claim: Claim = serde_json::from_str(line).ok()?;
    let bytes = claim.prev.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    };
    let mut prev = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        prev[index] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(ChainPosition {
        next_seq: claim.seq,
        prev,
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, file: &File) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = file.metadata() {
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "toolwire audit log is accessible to other users; it holds call arguments and results (AUD-011)"
            );
        }
    }
}

/// The writer thread's state.
struct Writer {
    file: File,
    chain: AuditChain,
    options: AuditOptions,
    shared: Arc<Shared>,
    stats: AuditStats,
    /// Entries since the last head.
    unsigned: u64,
    /// When the oldest of them was written.
    oldest_unsigned: Option<Instant>,
    /// Entries since the last sync.
    unsynced: u64,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        loop {
            let next = match self.head_due_in() {
                Some(wait) => match tokio::time::timeout(wait, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if self.write_batch(Vec::new(), true).is_err() {
                            return;
                        }
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            let mut batch = Vec::new();
            let mut finish = None;
            match next {
                Some(Command::Call(entry)) => batch.push(*entry),
                Some(Command::Finish(reply)) => finish = Some(reply),
                // Every sender is gone (the server was dropped without a shutdown):
                // end cleanly all the same.
                None => {
                    let _ = self.write_batch(Vec::new(), true);
                    return;
                }
            }
            while finish.is_none() && batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(Command::Call(entry)) => batch.push(*entry),
                    Ok(Command::Finish(reply)) => finish = Some(reply),
                    Err(_) => break,
                }
            }
            let written = self.write_batch(batch, finish.is_some());
            if let Some(reply) = finish {
                let _ = reply.send(written.map(|()| self.stats.clone()));
                return;
            }
            if written.is_err() {
                return;
            }
        }
    }

    /// How long until a head is due by time, when entries are unsigned.
    fn head_due_in(&self) -> Option<Duration> {
        let interval = self.options.head_interval?;
        let oldest = self.oldest_unsigned?;
        Some(interval.saturating_sub(oldest.elapsed()))
    }

    /// Appends `entries` (with the heads they make due) and, if `head`, a final head,
    /// in one write; then syncs as the policy says. On failure the writer stops
    /// (fail closed) and the error is recorded for the server.
    fn write_batch(&mut self, entries: Vec<CallEntry>, head: bool) -> Result<(), AuditLogError> {
        let outcome = self.try_write_batch(entries, head);
        if let Err(error) = &outcome {
            tracing::error!(%error, event = "audit_failed", "toolwire audit log write failed: no further calls are served");
            *lock(&self.shared.failure) = Some(error.to_string());
        }
        outcome
    }

    fn try_write_batch(
        &mut self,
        entries: Vec<CallEntry>,
        head: bool,
    ) -> Result<(), AuditLogError> {
        let mut text = String::new();
        let mut lines = 0u64;
        let mut heads = 0u64;
        for entry in entries {
            let CallEntry {
                record,
                request,
                response,
            } = entry;
            let line = self
                .chain
                .call_entry(&now_rfc3339(), &record, Some(request), response)
                .map_err(|error| self.failure(&error.to_string()))?;
            text.push_str(&line);
            text.push('\n');
            lines += 1;
            self.stats.calls += 1;
            self.unsigned += 1;
            self.oldest_unsigned.get_or_insert_with(Instant::now);
            if self.options.head_every > 0 && self.unsigned >= self.options.head_every {
                self.push_head(&mut text)?;
                heads += 1;
            }
        }
        if head {
            self.push_head(&mut text)?;
            heads += 1;
        }
        if text.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|error| AuditLogError::io(&self.stats.path, "cannot write", &error))?;
        self.stats.entries += lines + heads;
        self.stats.heads += heads;
        self.unsynced += lines + heads;
        let sync = match self.options.fsync {
            FsyncPolicy::EveryEntry => true,
            FsyncPolicy::EveryN(n) => heads > 0 || self.unsynced >= n.max(1),
            FsyncPolicy::OnHead => heads > 0,
        };
        if sync {
            self.file
                .sync_data()
                .map_err(|error| AuditLogError::io(&self.stats.path, "cannot sync", &error))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    fn push_head(&mut self, text: &mut String) -> Result<(), AuditLogError> {
        let line = self
            .chain
            .head_entry(&now_rfc3339())
            .map_err(|error| self.failure(&error.to_string()))?;
        text.push_str(&line);
        text.push('\n');
        self.unsigned = 0;
        self.oldest_unsigned = None;
        Ok(())
    }

    fn failure(&self, message: &str) -> AuditLogError {
        AuditLogError::Stopped {
            path: self.stats.path.clone(),
            message: message.to_owned(),
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds (AUD-001), e.g.
/// `2026-01-01T00:00:01.250Z`.
fn now_rfc3339() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since_epoch.as_secs(), since_epoch.subsec_millis())
}

/// Formats Unix seconds and milliseconds as RFC 3339 UTC (civil-from-days, proleptic
/// Gregorian calendar).
fn format_utc(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_767_225_601, 250), "2026-01-01T00:00:01.250Z");
        // Cross-check a spread of instants against the `time` crate.
        for secs in (0..4_102_444_800u64).step_by(86_400 * 37 + 3_671) {
            let expected = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .expect("in range")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("formats");
            let expected = expected.replace('Z', ".000Z");
            assert_eq!(format_utc(secs, 0), expected, "{secs}");
        }
    }

    #[test]
    fn a_head_line_is_found_by_its_kind_field_only() {
        let identity = Identity::from_seed(&[5; 32]);
        let mut chain = AuditChain::new(identity.clone());
        let head = chain.head_entry("2026-01-01T00:00:00Z").expect("head");
        assert!(head.contains(r#","kind":"head","#));
        let text = format!("{head}\n");
        let position = verify_tail(&text, 0, &identity).expect("verifies");
        assert_eq!(position.next_seq, 1);
        // Under another key the head does not verify: a key change is refused.
        let other = Identity::from_seed(&[6; 32]);
        assert_eq!(
            verify_tail(&text, 0, &other),
            Err((0, AuditErrorKind::BadHeadSignature))
        );
    }
}

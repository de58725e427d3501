//! An open session: the handle agents call tools through, and the supervisor task
//! that keeps the session's at-most-once lineage across connections.
//!
//! ```text
//!  Session (handle) ──commands──▶ supervisor ──LinkCommand──▶ link (one connection)
//!        ▲                          │  ▲                         │ socket ⇄ Connection
//!        └──── results, errors ─────┘  └──────── LinkEvent ──────┘
//! ```
//!
//! The supervisor owns every call until it is answered: which connection it is in
//! flight on, and whether its request id was ever handed to a transport (AMO-008).
//! When a connection is lost it dials again, resuming the lineage (AMO-003), and
//! re-sends the calls in flight with their ids and `retry = true`; it never re-sends
//! an id with `retry = false` (AMO-009) and never re-issues a call under a new id
//! (AMO-027). Before a connection's lifetime ends it opens the next one alongside
//! (LIFE-004). See [`ReconnectPolicy`].

use crate::error::{CallError, ConnectError};
use crate::link::{self, Dial, LinkCommand, LinkEvent, Outgoing, Ready};
use crate::reconnect::{self, ReconnectPolicy};
use futures_util::Stream;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::Connector;
use toolwire_protocol::manifest::ToolDescriptor;
use toolwire_protocol::message::CapRequest;
use toolwire_protocol::{
    ClientConfig, CloseCode, ConnectionLimits, ErrorCode, Identity, IdentityKey,
};

/// Per-call options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Give up after this long: the call fails with DEADLINE_EXCEEDED and the server
    /// is sent CANCEL. The deadline is also sent to the server (what is left of it
    /// when the call is re-sent after a reconnect), and bounds how long the call waits
    /// for a reconnection. Default: none.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a deadline.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
        }
    }
}

/// One event of a streamed call.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A partial result or progress report.
    Item(serde_json::Value),
    /// The final result; the stream ends after it.
    Done(serde_json::Value),
}

enum Sink {
    Unary(oneshot::Sender<Result<Vec<u8>, CallError>>),
    Stream(mpsc::UnboundedSender<Result<StreamEvent, CallError>>),
}

impl Sink {
    fn fail(self, error: CallError) {
        match self {
            Sink::Unary(reply) => {
                let _ = reply.send(Err(error));
            }
            Sink::Stream(items) => {
                let _ = items.send(Err(error));
            }
        }
    }

    fn finish(self, outcome: Result<Vec<u8>, CallError>) {
        match self {
            Sink::Unary(reply) => {
                let _ = reply.send(outcome);
            }
            Sink::Stream(items) => {
                let _ = items.send(outcome.and_then(|bytes| decode(&bytes).map(StreamEvent::Done)));
            }
        }
    }
}

type CapabilityReply = oneshot::Sender<Result<Vec<String>, CallError>>;

enum Command {
    Call {
        id: u64,
        tool: String,
        args: Vec<u8>,
        deadline: Option<Instant>,
        sink: Sink,
    },
    Cancel(u64),
    Close,
    RequestCapabilities {
        request: CapRequest,
        reply: CapabilityReply,
    },
}

/// What the session knows about its grants and the server's tools.
#[derive(Default)]
struct Shared {
    session_id: [u8; 32],
    lineage: Option<[u8; 16]>,
    server_key: Option<IdentityKey>,
    /// Tools as described by the manifest first received (what the agent approved),
    /// kept across the connections of the session (MAN-012).
    pinned_tools: Vec<ToolDescriptor>,
    /// Granted tool → digest it was granted under.
    granted: HashMap<String, Vec<u8>>,
    /// Tools whose definition changed since the pinned manifest.
    changed: HashSet<String>,
    /// SHA-256 of the bytes of the manifest last received on the active connection.
    manifest_hash: Option<[u8; 32]>,
    /// The close code of the last connection while no connection is open or opening.
    closed: Option<CloseCode>,
}

impl Shared {
    /// MAN-011, MAN-012: a tool whose definition in `tools` differs from the pinned
    /// one, or that is missing, is marked changed; the first manifest is pinned.
    fn compare_manifest(&mut self, tools: &[ToolDescriptor]) {
        if self.pinned_tools.is_empty() {
            self.pinned_tools = tools.to_vec();
            return;
        }
        let current: HashMap<&str, [u8; 32]> = tools
            .iter()
            .map(|tool| (tool.name.as_str(), tool.digest()))
            .collect();
        let changed: Vec<String> = self
            .pinned_tools
            .iter()
            .filter(|pinned| current.get(pinned.name.as_str()) != Some(&pinned.digest()))
            .map(|pinned| pinned.name.clone())
            .collect();
        for name in changed {
            if self.changed.insert(name.clone()) {
                crate::events::manifest_changed(&name, self.session_id, self.server_key);
            }
        }
    }
}

/// An authenticated session with a tool server. Cheap to share behind an `Arc`; every
/// method takes `&self`, and many calls may run concurrently over the one connection.
///
/// The session outlives its connections: when one is lost it reconnects and resumes
/// its at-most-once lineage, re-sending calls in flight so that each runs at most
/// once (see [`ReconnectPolicy`]). Dropping the session closes the connection.
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &hex_id(&self.session_id()))
            .finish_non_exhaustive()
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Session {
    /// The session id of the current connection (the handshake hash, shared by both
    /// ends). It changes when the session reconnects.
    pub fn session_id(&self) -> [u8; 32] {
        lock(&self.shared).session_id
    }

    /// The at-most-once lineage id (AMO-003): the first 16 bytes of the first
    /// connection's session id, named in the handshake of every later connection.
    pub fn lineage_id(&self) -> [u8; 16] {
        lock(&self.shared).lineage.unwrap_or_default()
    }

    /// The server's authenticated identity key.
    pub fn server_key(&self) -> Option<IdentityKey> {
        lock(&self.shared).server_key
    }

    /// The tools of the signed manifest received at connect time.
    pub fn tools(&self) -> Vec<ToolDescriptor> {
        lock(&self.shared).pinned_tools.clone()
    }

    /// The manifest hash (MAN-008) of the server's signed manifest last received on
    /// the current connection (in CAP_GRANT, or a later CAP_UPDATE): SHA-256 of the
    /// `manifest` bytes exactly as the server signed and sent them, never of a
    /// re-encoding. `None` before the first CAP_GRANT.
    pub fn manifest_hash(&self) -> Option<[u8; 32]> {
        lock(&self.shared).manifest_hash
    }

    /// Names of the tools currently granted to this session.
    pub fn granted_tools(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.shared).granted.keys().cloned().collect();
        names.sort();
        names
    }

    /// Asks the server, mid-session, for more tools and presents more grants
    /// (CAP_REQUEST, spec section 12.5) — for example a grant bound to this session
    /// (`sid` = [`session_id`](Self::session_id)), which cannot be presented in the
    /// handshake. Returns the complete granted set the server answered with
    /// (CAP_UPDATE). Grants that do not verify are disregarded by the server: check
    /// the returned set. The request is sent again on every connection the session
    /// opens later, so what it added survives a reconnect (a session-bound grant does
    /// not: it names the old session).
    ///
    /// # Errors
    /// [`CallError::ConnectionClosed`] when the session has no open connection (ended,
    /// or between connections) or the connection closed before the answer.
    pub async fn request_capabilities<I, S>(
        &self,
        tools: I,
        grants: Vec<String>,
    ) -> Result<Vec<String>, CallError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (reply, answer) = oneshot::channel();
        let request = CapRequest {
            tools: tools.into_iter().map(Into::into).collect(),
            grants,
        };
        self.commands
            .send(Command::RequestCapabilities { request, reply })
            .map_err(|_| self.closed_error())?;
        answer.await.map_err(|_| self.closed_error())?
    }

    /// The close code of the last connection, while the session has no connection
    /// open or opening: closed for good, or disconnected after a loss with no call
    /// waiting (the next call reconnects). `None` while connected or reconnecting.
    pub fn close_code(&self) -> Option<CloseCode> {
        lock(&self.shared).closed
    }

    /// Calls `tool` with `args` (any serde value; sent as msgpack) and returns the
    /// result as JSON.
    ///
    /// A call in flight when the connection is lost is re-sent on the next
    /// connection under the same request id; the server runs it at most once.
    ///
    /// # Errors
    /// [`CallError::Rpc`] with the server's code (PERMISSION_DENIED, INVALID_ARGUMENT,
    /// RESOURCE_EXHAUSTED with `retry_after_ms`, …; RESULT_UNAVAILABLE or
    /// STALE_REQUEST_ID when the call was re-sent after a reconnect and the server
    /// cannot tell its outcome: it may have run, see [`CallError::outcome_unknown`]);
    /// [`CallError::ManifestChanged`] when the tool's definition changed since
    /// connect; [`CallError::ConnectionClosed`] when the session ended;
    /// [`CallError::ReconnectFailed`] when reconnecting gave up.
    pub async fn call(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
    ) -> Result<serde_json::Value, CallError> {
        self.call_with(tool, args, CallOptions::default()).await
    }

    /// Like [`call`](Self::call) with options (deadline).
    ///
    /// # Errors
    /// As [`call`](Self::call), plus [`CallError::DeadlineExceeded`].
    pub async fn call_with(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
        options: CallOptions,
    ) -> Result<serde_json::Value, CallError> {
        let args = rmp_serde::to_vec_named(args)
            .map_err(|error| CallError::Encoding(error.to_string()))?;
        let result = self.call_raw(tool, args, options).await?;
        decode(&result)
    }

    /// Calls with argument bytes that are already msgpack, returning the result bytes
    /// exactly as the server signed them.
    ///
    /// # Errors
    /// As [`call_with`](Self::call_with).
    pub async fn call_raw(
        &self,
        tool: &str,
        args: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let (reply, answer) = oneshot::channel();
        let started = tokio::time::Instant::now();
        let guard = self.submit(tool, args, &options, Sink::Unary(reply))?;
        let outcome = match options.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(CallError::DeadlineExceeded),
            },
            None => answer.await,
        };
        guard.disarm();
        match outcome.unwrap_or_else(|_| Err(self.closed_error())) {
            // The server enforces the deadline the call carried (MSG-012); on a busy
            // client its answer can be read before the local timer fires: the same
            // event, the same error, whichever side noticed first. (A tool's own
            // DEADLINE_EXCEEDED, answered before the call's deadline, stays an Rpc.)
            Err(CallError::Rpc { code, .. })
                if code == ErrorCode::DEADLINE_EXCEEDED
                    && options
                        .timeout
                        .is_some_and(|timeout| started.elapsed() >= timeout) =>
            {
                Err(CallError::DeadlineExceeded)
            }
            outcome => outcome,
        }
    }

    /// Starts a streamed call: items arrive as the tool produces them, then the final
    /// result. Dropping the stream before the end cancels the call.
    ///
    /// Streams are not resumed across connections: a stream still running when its
    /// connection is lost ends with [`CallError::StreamInterrupted`].
    ///
    /// # Errors
    /// [`CallError::Encoding`] when the arguments do not encode,
    /// [`CallError::ManifestChanged`] or [`CallError::ConnectionClosed`] at once;
    /// later errors arrive through the stream.
    pub fn stream(
        &self,
        tool: &str,
        args: &impl serde::Serialize,
    ) -> Result<CallStream, CallError> {
        let args = rmp_serde::to_vec_named(args)
            .map_err(|error| CallError::Encoding(error.to_string()))?;
        let (items, receiver) = mpsc::unbounded_channel();
        let guard = self.submit(tool, args, &CallOptions::default(), Sink::Stream(items))?;
        Ok(CallStream {
            receiver,
            guard: Some(guard),
            finished: false,
        })
    }

    fn submit(
        &self,
        tool: &str,
        args: Vec<u8>,
        options: &CallOptions,
        sink: Sink,
    ) -> Result<CancelGuard, CallError> {
        if lock(&self.shared).changed.contains(tool) {
            return Err(CallError::ManifestChanged {
                tool: tool.to_owned(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = options
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        self.commands
            .send(Command::Call {
                id,
                tool: tool.to_owned(),
                args,
                deadline,
                sink,
            })
            .map_err(|_| self.closed_error())?;
        Ok(CancelGuard {
            id,
            commands: self.commands.clone(),
            armed: true,
        })
    }

    fn closed_error(&self) -> CallError {
        CallError::ConnectionClosed {
            code: self.close_code().unwrap_or(CloseCode::GOING_AWAY),
        }
    }

    /// Closes the session with NORMAL (1000) after an authenticated CLOSE; calls
    /// still waiting fail with [`CallError::ConnectionClosed`].
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<serde_json::Value, CallError> {
    rmp_serde::from_slice(bytes).map_err(|error| CallError::Encoding(error.to_string()))
}

/// Sends CANCEL for a call whose caller went away before the answer.
struct CancelGuard {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    armed: bool,
}

impl CancelGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}

/// The items of a streamed call. Ends after [`StreamEvent::Done`] or an error.
pub struct CallStream {
    receiver: mpsc::UnboundedReceiver<Result<StreamEvent, CallError>>,
    guard: Option<CancelGuard>,
    finished: bool,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Stream for CallStream {
    type Item = Result<StreamEvent, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(item) = &polled {
            if !matches!(item, Some(Ok(StreamEvent::Item(_)))) {
                self.finished = true;
                if let Some(guard) = self.guard.take() {
                    guard.disarm();
                }
            }
        }
        polled
    }
}

/// Upper bound of the first connection's handshake and capability grant, after the
/// upgrade.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// `after` from now; a duration too large for the clock (a configuration of
/// `Duration::MAX`) means a year.
fn later(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// What every connection of a session is dialed with.
pub(crate) struct DialTemplate {
    pub(crate) identity: Identity,
    pub(crate) trusted_servers: Vec<IdentityKey>,
    pub(crate) trusted_operators: Vec<IdentityKey>,
    pub(crate) url: String,
    pub(crate) origin: Option<HeaderValue>,
    pub(crate) connector: Connector,
    pub(crate) cap_request: CapRequest,
    pub(crate) limits: ConnectionLimits,
    pub(crate) sign_requests: bool,
}

impl DialTemplate {
    /// A connection asking for the same tools and grants, resuming `lineage` when
    /// there is one (AMO-003).
    fn dial(&self, lineage: Option<[u8; 16]>) -> Dial {
        let mut config = ClientConfig::new(
            self.identity.clone(),
            self.trusted_servers.clone(),
            self.url.clone(),
            &mut rand_core::OsRng,
        )
        .with_trusted_operators(self.trusted_operators.clone())
        .with_cap_request(self.cap_request.clone())
        .with_limits(self.limits.clone());
        if let Some(lineage) = lineage {
            config = config.with_lineage(lineage);
        }
        Dial {
            url: self.url.clone(),
            origin: self.origin.clone(),
            connector: self.connector.clone(),
            config: Arc::new(config),
            sign_requests: self.sign_requests,
        }
    }
}

/// Opens the first connection and returns the session once its capability grant
/// arrived. A failure of this first connection is returned, never retried.
pub(crate) async fn open(
    template: DialTemplate,
    policy: ReconnectPolicy,
) -> Result<Session, ConnectError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (commands, command_receiver) = mpsc::unbounded_channel();
    let (events_sender, events) = mpsc::unbounded_channel();
    let (connected, connected_receiver) = oneshot::channel();
    let supervisor = Supervisor {
        template,
        policy,
        shared: shared.clone(),
        commands: command_receiver,
        commands_open: true,
        events,
        events_sender,
        calls: BTreeMap::new(),
        links: HashMap::new(),
        active: None,
        dialing: None,
        next_link: 0,
        attempts: 0,
        flaps: 0,
        lost_with: CloseCode::GOING_AWAY,
        retry_at: None,
        renew_at: None,
        capability_requests: std::collections::VecDeque::new(),
        extra_requests: Vec::new(),
        replayed_updates: HashMap::new(),
        connected: Some(connected),
        ended: None,
    };
    tokio::spawn(supervisor.run());
    let deadline = crate::builder::UPGRADE_TIMEOUT + HANDSHAKE_DEADLINE;
    match tokio::time::timeout(deadline, connected_receiver).await {
        Ok(Ok(Ok(()))) => Ok(Session {
            commands,
            shared,
            next_id: AtomicU64::new(1),
        }),
        Ok(Ok(Err(error))) => Err(error),
        Ok(Err(_)) | Err(_) => Err(ConnectError::Timeout),
    }
}

/// One call, from submission to its answer.
struct Call {
    tool: String,
    args: Vec<u8>,
    deadline: Option<Instant>,
    sink: Sink,
    /// The link it is in flight on; `None` while it waits for a connection.
    link: Option<u64>,
    /// Its request id was handed to a transport: every later send is a retry
    /// (AMO-008, AMO-009).
    sent: bool,
}

/// The supervisor's view of one link.
struct LinkState {
    commands: mpsc::UnboundedSender<LinkCommand>,
    /// It answered a call: the connection worked end to end.
    answered: bool,
    /// Replaced by a newer connection (LIFE-004): takes no new calls and is closed
    /// once its last call is answered.
    draining: bool,
}

/// The session task: owns the calls, the lineage and the links.
struct Supervisor {
    template: DialTemplate,
    policy: ReconnectPolicy,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    events: mpsc::UnboundedReceiver<(u64, LinkEvent)>,
    events_sender: link::LinkEvents,
    /// Calls not yet answered, by request id (resent in id order).
    calls: BTreeMap<u64, Call>,
    links: HashMap<u64, LinkState>,
    /// The ready link new calls go to.
    active: Option<u64>,
    /// The link being dialed, if any.
    dialing: Option<u64>,
    next_link: u64,
    /// Dials of the current outage that failed.
    attempts: u32,
    /// Connections in a row lost without answering any call (a flapping server).
    flaps: u32,
    /// How the last lost connection closed.
    lost_with: CloseCode,
    /// When to dial again after a loss.
    retry_at: Option<Instant>,
    /// When to open the replacement of the active connection (LIFE-004).
    renew_at: Option<Instant>,
    /// Callers of [`Session::request_capabilities`] waiting for the CAP_UPDATE that
    /// answers their CAP_REQUEST, with the link it was sent on, in order.
    capability_requests: std::collections::VecDeque<(u64, CapabilityReply)>,
    /// CAP_REQUESTs of this session, sent again on every new connection so that the
    /// capabilities they added survive a reconnect.
    extra_requests: Vec<CapRequest>,
    /// Per link, how many CAP_UPDATEs answer those replayed requests (no caller waits).
    replayed_updates: HashMap<u64, usize>,
    /// The caller of [`open`], until the first connection is ready or failed.
    connected: Option<oneshot::Sender<Result<(), ConnectError>>>,
    /// The session is over, with this code; the task ends once its links are gone.
    ended: Option<CloseCode>,
}

impl Supervisor {
    async fn run(mut self) {
        self.dial();
        while self.ended.is_none() || !self.links.is_empty() {
            let wake = self.retry_at.into_iter().chain(self.renew_at).min();
            let sleep_until = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                command = self.commands.recv(), if self.commands_open => self.on_command(command),
                Some((link, event)) = self.events.recv() => self.on_link_event(link, event),
                () = tokio::time::sleep_until(sleep_until), if wake.is_some() => self.on_timer(),
            }
        }
        let code = self.ended.unwrap_or(CloseCode::NORMAL);
        lock(&self.shared).closed = Some(code);
        for (_, call) in std::mem::take(&mut self.calls) {
            call.sink.fail(CallError::ConnectionClosed { code });
        }
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Call {
                id,
                tool,
                args,
                deadline,
                sink,
            }) => {
                if let Some(code) = self.ended {
                    sink.fail(CallError::ConnectionClosed { code });
                    return;
                }
                self.calls.insert(
                    id,
                    Call {
                        tool,
                        args,
                        deadline,
                        sink,
                        link: None,
                        sent: false,
                    },
                );
                self.dispatch_waiting();
            }
            Some(Command::Cancel(id)) => {
                if let Some(Call {
                    link: Some(link), ..
                }) = self.calls.remove(&id)
                {
                    self.send_to(link, LinkCommand::Cancel(id));
                    self.close_if_drained(link);
                }
            }
            Some(Command::Close) => self.close_session(CloseCode::NORMAL),
            Some(Command::RequestCapabilities { request, reply }) => {
                self.request_capabilities(request, reply);
            }
            None => {
                self.commands_open = false;
                self.close_session(CloseCode::NORMAL);
            }
        }
    }

    fn on_link_event(&mut self, link: u64, event: LinkEvent) {
        match event {
            LinkEvent::Ready(ready) => self.on_ready(link, ready),
            LinkEvent::Failed(error) => self.on_failed(link, error),
            LinkEvent::Update {
                tools,
                manifest_hash,
                granted,
            } => {
                if self.active == Some(link) {
                    let mut shared = lock(&self.shared);
                    if let Some(tools) = tools {
                        shared.compare_manifest(&tools);
                    }
                    if manifest_hash.is_some() {
                        shared.manifest_hash = manifest_hash;
                    }
                    shared.granted = granted;
                }
                self.answer_capability_request(link);
            }
            LinkEvent::Answer { id, outcome } => {
                if self
                    .calls
                    .get(&id)
                    .is_some_and(|call| call.link == Some(link))
                {
                    if let Some(call) = self.calls.remove(&id) {
                        call.sink.finish(outcome);
                    }
                    if let Some(state) = self.links.get_mut(&link) {
                        state.answered = true;
                    }
                    self.flaps = 0;
                    self.close_if_drained(link);
                }
            }
            LinkEvent::Item { id, item } => {
                if let Some(Call {
                    sink: Sink::Stream(items),
                    link: Some(on),
                    ..
                }) = self.calls.get(&id)
                {
                    if *on == link {
                        let _ = items.send(item.map(StreamEvent::Item));
                    }
                }
            }
            LinkEvent::Closed { code } => self.on_closed(link, code),
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            if self.dialing.is_none() && self.active.is_none() {
                self.dial();
            }
        }
        if self.renew_at.is_some_and(|at| at <= now) {
            self.renew_at = None;
            if self.dialing.is_none() {
                tracing::debug!("toolwire session renews its connection before its lifetime ends");
                self.dial();
            }
        }
    }

    /// Opens a new connection, resuming the lineage once there is one.
    fn dial(&mut self) {
        let link = self.next_link;
        self.next_link += 1;
        let lineage = {
            let mut shared = lock(&self.shared);
            if self.active.is_none() {
                shared.closed = None;
            }
            shared.lineage
        };
        let commands = link::spawn(
            link,
            self.template.dial(lineage),
            self.events_sender.clone(),
        );
        self.links.insert(
            link,
            LinkState {
                commands,
                answered: false,
                draining: false,
            },
        );
        self.dialing = Some(link);
    }

    fn on_ready(&mut self, link: u64, ready: Ready) {
        if self.dialing == Some(link) {
            self.dialing = None;
        }
        if !self.links.contains_key(&link) {
            return;
        }
        if self.ended.is_some() {
            self.send_to(link, LinkCommand::Close(CloseCode::NORMAL));
            return;
        }
        {
            let mut shared = lock(&self.shared);
            shared.session_id = ready.session_id;
            shared.server_key = Some(ready.server_key);
            if shared.lineage.is_none() {
                // AMO-003: the lineage of a session started without `resume`.
                let mut lineage = [0; 16];
                lineage.copy_from_slice(&ready.session_id[..16]);
                shared.lineage = Some(lineage);
            }
            shared.granted = ready.granted;
            shared.compare_manifest(&ready.tools);
            shared.manifest_hash = Some(ready.manifest_hash);
            shared.closed = None;
        }
        if let Some(previous) = self.active.replace(link) {
            if let Some(state) = self.links.get_mut(&previous) {
                state.draining = true;
            }
            self.close_if_drained(previous);
        }
        self.retry_at = None;
        self.attempts = 0;
        self.renew_at = self
            .policy
            .enabled
            .then(|| later(self.policy.renew_after(ready.lifetime)));
        if let Some(connected) = self.connected.take() {
            let _ = connected.send(Ok(()));
        }
        if !self.extra_requests.is_empty() {
            self.replayed_updates
                .insert(link, self.extra_requests.len());
            for request in self.extra_requests.clone() {
                self.send_to(link, LinkCommand::CapRequest(request));
            }
        }
        self.dispatch_waiting();
    }

    /// Sends a CAP_REQUEST on the active connection; the reply waits for the
    /// CAP_UPDATE that answers it.
    fn request_capabilities(&mut self, request: CapRequest, reply: CapabilityReply) {
        let link = match (self.ended, self.active) {
            (Some(code), _) => {
                let _ = reply.send(Err(CallError::ConnectionClosed { code }));
                return;
            }
            (None, None) => {
                let _ = reply.send(Err(CallError::ConnectionClosed {
                    code: self.lost_with,
                }));
                return;
            }
            (None, Some(link)) => link,
        };
        self.extra_requests.push(request.clone());
        self.send_to(link, LinkCommand::CapRequest(request));
        self.capability_requests.push_back((link, reply));
    }

    /// A CAP_UPDATE arrived on `link`: it answers the oldest CAP_REQUEST sent there
    /// (GRT-039), unless it answers one replayed after a reconnect.
    fn answer_capability_request(&mut self, link: u64) {
        if let Some(replayed) = self.replayed_updates.get_mut(&link) {
            *replayed -= 1;
            if *replayed == 0 {
                self.replayed_updates.remove(&link);
            }
            return;
        }
        let Some(position) = self
            .capability_requests
            .iter()
            .position(|(on, _)| *on == link)
        else {
            return;
        };
        if let Some((_, reply)) = self.capability_requests.remove(position) {
            let mut granted: Vec<String> = lock(&self.shared).granted.keys().cloned().collect();
            granted.sort();
            let _ = reply.send(Ok(granted));
        }
    }

    fn on_failed(&mut self, link: u64, error: ConnectError) {
        self.links.remove(&link);
        if self.dialing == Some(link) {
            self.dialing = None;
        }
        let refused_with = match &error {
            ConnectError::Handshake { code, .. } | ConnectError::Closed { code, .. } => Some(*code),
            _ => None,
        };
        if let Some(connected) = self.connected.take() {
            // The first connection: its failure is `connect`'s error.
            self.ended = Some(refused_with.unwrap_or(CloseCode::GOING_AWAY));
            let _ = connected.send(Err(error));
            return;
        }
        if self.ended.is_some() {
            return;
        }
        tracing::debug!(%error, "toolwire client could not reconnect");
        if self.active.is_some() {
            // A renewal failed; the current connection serves until its end.
            if reconnect::dial_retryable(&error) {
                self.renew_at = Some(later(self.policy.max_backoff));
            }
            return;
        }
        self.attempts += 1;
        if !reconnect::dial_retryable(&error) {
            // A refusal every later attempt would meet again: the session ends.
            self.give_up(&error.to_string());
            self.end(refused_with.unwrap_or(self.lost_with));
        } else if self.attempts >= self.policy.max_attempts {
            self.give_up(&error.to_string());
        } else {
            self.schedule_reconnect();
        }
    }

    fn on_closed(&mut self, link: u64, code: CloseCode) {
        let Some(state) = self.links.remove(&link) else {
            return;
        };
        self.replayed_updates.remove(&link);
        let (lost, waiting) = std::mem::take(&mut self.capability_requests)
            .into_iter()
            .partition(|(on, _)| *on == link);
        self.capability_requests = waiting;
        for (_, reply) in lost {
            let _ = reply.send(Err(CallError::ConnectionClosed { code }));
        }
        let was_active = self.active == Some(link);
        if was_active {
            self.active = None;
            self.renew_at = None;
        }
        let on_link: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.link == Some(link))
            .map(|(id, _)| *id)
            .collect();
        let reconnect =
            self.ended.is_none() && self.policy.enabled && reconnect::reconnectable(code);
        if !reconnect {
            if was_active && self.ended.is_none() {
                // The callers failed below may ask `close_code()` at once.
                lock(&self.shared).closed = Some(code);
            }
            for id in &on_link {
                if let Some(call) = self.calls.remove(id) {
                    call.sink.fail(CallError::ConnectionClosed { code });
                }
            }
            if was_active && self.ended.is_none() {
                // A refusal or fault a new connection would meet again.
                self.end(code);
            }
            return;
        }
        tracing::debug!(%code, calls = on_link.len(), "toolwire connection lost; resuming the lineage");
        for id in on_link {
            let interrupted_stream = self
                .calls
                .get(&id)
                .is_some_and(|call| matches!(call.sink, Sink::Stream(_)));
            if interrupted_stream {
                if let Some(call) = self.calls.remove(&id) {
                    call.sink.fail(CallError::StreamInterrupted { code });
                }
            } else if let Some(call) = self.calls.get_mut(&id) {
                call.link = None;
            }
        }
        if was_active {
            self.lost_with = code;
            if state.answered {
                self.flaps = 0;
            } else {
                self.flaps += 1;
            }
            if self.flaps > self.policy.max_attempts {
                self.give_up("connections keep closing before answering");
                return;
            }
        }
        self.dispatch_waiting();
    }

    /// Sends the calls waiting for a connection to the active one, or arranges for
    /// a connection when there is none. Calls to a tool whose definition changed
    /// fail instead (MAN-011, MAN-012).
    fn dispatch_waiting(&mut self) {
        let waiting: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.link.is_none())
            .map(|(id, _)| *id)
            .collect();
        if waiting.is_empty() {
            if self.active.is_none() && self.dialing.is_none() && self.ended.is_none() {
                // Nothing waits: reconnect on the next call.
                self.retry_at = None;
                lock(&self.shared).closed = Some(self.lost_with);
            }
            return;
        }
        let Some(active) = self.active else {
            self.schedule_reconnect();
            return;
        };
        let changed = lock(&self.shared).changed.clone();
        for id in waiting {
            if self
                .calls
                .get(&id)
                .is_some_and(|call| changed.contains(&call.tool))
            {
                if let Some(call) = self.calls.remove(&id) {
                    call.sink
                        .fail(CallError::ManifestChanged { tool: call.tool });
                }
                continue;
            }
            self.send_call(id, active);
        }
    }

    /// Dials again after the backoff of the failures so far, unless a dial is
    /// already under way or the session cannot reconnect.
    fn schedule_reconnect(&mut self) {
        if self.ended.is_some() || self.dialing.is_some() || self.retry_at.is_some() {
            return;
        }
        if !self.policy.enabled {
            self.end(self.lost_with);
            return;
        }
        lock(&self.shared).closed = None;
        let failures = self.attempts.max(self.flaps);
        self.retry_at = Some(later(self.policy.backoff(failures)));
    }

    fn send_call(&mut self, id: u64, link: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let deadline_ms = call.deadline.map(|deadline| {
            u64::try_from(deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        let outgoing = Outgoing {
            id,
            tool: call.tool.clone(),
            args: call.args.clone(),
            deadline_ms,
            // AMO-008, AMO-009: an id once handed to a transport is only ever
            // re-sent as a retry.
            retry: call.sent,
        };
        call.sent = true;
        call.link = Some(link);
        self.send_to(link, LinkCommand::Request(outgoing));
    }

    fn send_to(&self, link: u64, command: LinkCommand) {
        if let Some(state) = self.links.get(&link) {
            // A link that is gone reports its close, which decides the call's fate.
            let _ = state.commands.send(command);
        }
    }

    /// Closes a replaced link once no call is in flight on it.
    fn close_if_drained(&self, link: u64) {
        let draining = self.links.get(&link).is_some_and(|state| state.draining);
        if draining && !self.calls.values().any(|call| call.link == Some(link)) {
            self.send_to(link, LinkCommand::Close(CloseCode::NORMAL));
        }
    }

    /// Reconnecting gave up: the calls waiting for a connection fail; the session
    /// stays usable and the next call tries again.
    fn give_up(&mut self, reason: &str) {
        let attempts = self.attempts;
        let code = self.lost_with;
        let waiting: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.link.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(call) = self.calls.remove(&id) {
                call.sink.fail(CallError::ReconnectFailed {
                    code,
                    attempts,
                    reason: reason.to_owned(),
                });
            }
        }
        tracing::warn!(%code, attempts, reason, "toolwire client gave up reconnecting");
        self.attempts = 0;
        self.flaps = 0;
        self.retry_at = None;
        if self.active.is_none() && self.dialing.is_none() {
            lock(&self.shared).closed = Some(code);
        }
    }

    /// The session is over: every call fails and every link closes.
    fn end(&mut self, code: CloseCode) {
        self.ended = Some(code);
        // Before any caller learns of the end, so that `close_code()` already says it.
        lock(&self.shared).closed = Some(code);
        self.retry_at = None;
        self.renew_at = None;
        for (_, call) in std::mem::take(&mut self.calls) {
            call.sink.fail(CallError::ConnectionClosed { code });
        }
        for link in self.links.keys() {
            self.send_to(*link, LinkCommand::Close(CloseCode::NORMAL));
        }
    }

    /// The application closes the session: calls waiting for a connection fail now,
    /// calls in flight when their connection has closed.
    fn close_session(&mut self, code: CloseCode) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(code);
        self.retry_at = None;
        self.renew_at = None;
        let waiting: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.link.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(call) = self.calls.remove(&id) {
                call.sink.fail(CallError::ConnectionClosed { code });
            }
        }
        for link in self.links.keys() {
            self.send_to(*link, LinkCommand::Close(code));
        }
    }
}

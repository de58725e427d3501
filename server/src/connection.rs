//! The per-connection driver: moves records between the WebSocket and the protocol
//! state machine, runs the authorization pipeline of the protocol crate on every
//! REQUEST, and runs tool handlers. It makes no protocol decision of its own.

use crate::audit::{AuditSink, CallEntry};
use crate::builder::{read, Inner, Limits, Policy, PolicyHook, ToolAllowance};
use crate::serve::UnauthenticatedSlot;
use crate::tool::{decode_args, CallContext, Catalog, Registry, ToolError, ToolResult};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use toolwire_protocol::amo::{
    Admission, AtMostOnceStore, CachedOutcome, CallFingerprint, LineageKey,
};
use toolwire_protocol::audit::{RequestEvidence, ResponseEvidence};
use toolwire_protocol::authz::{
    AllowlistAuthorizer, AuthorizationRequest, Authorizer, Decision,
    RateBudgets as RateBudgetCheck, RequestPipeline, RetryAfter, SessionAuthz, Step, ToolDigests,
    Verdict,
};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::error::{Error, LocalError};
use toolwire_protocol::events::{DeadlineKind, SecurityEvent};
use toolwire_protocol::grant::Grant;
use toolwire_protocol::handshake::verify_presented_grants;
use toolwire_protocol::message::{
    CallLimits, CapGrant, CapRequest, CapUpdate, ErrorMessage, GrantedTool, Request, Response,
    StreamItem,
};
use toolwire_protocol::upgrade::{check_frame, FrameKind};
use toolwire_protocol::{
    CloseCode, Connection, ErrorCode, Event, IdentityKey, Message, SessionInfo,
};

/// How long a closed connection keeps reading, so that the peer receives the close
/// (see `Driver::linger`). Bounds how long a peer that never answers the close keeps
/// the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long the close frame of a connection whose peer stopped reading is given
/// before the socket is dropped (LIM-004, `Driver::close_stalled`).
const STALLED_CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Why queued records could not be sent.
enum WriteFailed {
    /// The socket failed (the peer is gone).
    Socket,
    /// A send made no progress within [`Limits::write_stall_timeout`] (LIM-004).
    Stalled,
}

fn per_second(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Rate budgets shared by every connection of a server: per identity and per
/// (identity, tool), token buckets from `governor`.
///
/// A bucket whose budget has refilled says nothing a fresh bucket would not, so full
/// buckets are dropped, at most once per [`RateBudgets::SWEEP_INTERVAL`]: without
/// that, every identity that ever called (every grant holder of a long-lived
/// server) would keep its buckets for the server's life.
pub(crate) struct RateBudgets {
    per_identity: DefaultKeyedRateLimiter<IdentityKey>,
    per_tool: DefaultKeyedRateLimiter<(IdentityKey, String)>,
    created: Instant,
    sweep_interval: Duration,
    /// When the last sweep ran, in ms since `created`.
    last_sweep_ms: AtomicU64,
}

impl RateBudgets {
    /// How often, at most, full buckets are dropped.
    pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn new(limits: &Limits) -> Self {
        Self::with_sweep_interval(limits, Self::SWEEP_INTERVAL)
    }

    fn with_sweep_interval(limits: &Limits, sweep_interval: Duration) -> Self {
        Self {
            per_identity: RateLimiter::keyed(per_second(limits.rate_per_sec, limits.burst)),
            per_tool: RateLimiter::keyed(per_second(
                limits.per_tool_rate_per_sec,
                limits.per_tool_burst,
            )),
            created: Instant::now(),
            sweep_interval,
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Buckets held: (per identity, per (identity, tool)).
    pub(crate) fn entries(&self) -> (usize, usize) {
        (self.per_identity.len(), self.per_tool.len())
    }

    /// Drops the buckets that have refilled when the last sweep is older than the
    /// sweep interval. Cheap when it is not due (one atomic load); when it is, one
    /// caller wins the race and walks the buckets.
    fn sweep_if_due(&self) {
        let now_ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let interval_ms = u64::try_from(self.sweep_interval.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < interval_ms
            || self
                .last_sweep_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.per_identity.retain_recent();
        self.per_identity.shrink_to_fit();
        self.per_tool.retain_recent();
        self.per_tool.shrink_to_fit();
    }
}

/// One connection's view of the budgets: its own bucket plus the shared ones.
struct ConnectionBudgets<'a> {
    connection: &'a DefaultDirectRateLimiter,
    shared: &'a RateBudgets,
    /// The tools of the current manifest: per-tool buckets exist only for them, so a
    /// client cannot grow the keyed limiter without bound by calling made-up names.
    tools: &'a ToolDigests,
}

impl RateBudgetCheck for ConnectionBudgets<'_> {
    fn check(&mut self, client: &IdentityKey, tool: &str, _now: Instant) -> Result<(), RetryAfter> {
        let clock = DefaultClock::default();
        // At least 1 ms: the clock is read again after the bucket refused the call,
        // and on a busy machine that reading can already be past the refill time,
        // which would tell the client to retry after 0 ms (AUTHZ-004 asks for the
        // wait rounded up; the call did not fit when it was judged).
        let wait = |not_until: governor::NotUntil<_>| {
            RetryAfter(
                not_until
                    .wait_time_from(clock.now())
                    .max(Duration::from_millis(1)),
            )
        };
        self.connection.check().map_err(wait)?;
        self.shared.sweep_if_due();
        self.shared.per_identity.check_key(client).map_err(wait)?;
        if self.tools.digest(tool).is_none() {
            return Ok(());
        }
        self.shared
            .per_tool
            .check_key(&(*client, tool.to_owned()))
            .map_err(wait)
    }
}

/// Decodes msgpack arguments and validates them against the tool's schema.
impl toolwire_protocol::authz::ArgumentValidator for Registry {
    fn validate(&self, tool: &str, args: &[u8]) -> Result<(), String> {
        let entry = self
            .tools
            .get(tool)
            .ok_or_else(|| "no such tool".to_owned())?;
        entry.validate(&decode_args(args)?)
    }
}

impl Policy {
    /// The authorizer of the current snapshot, for calls of `client`: only its own
    /// allowlist entry (others could not change the decision), so that a call costs
    /// the same whatever the number of allowed clients.
    pub(crate) fn authorizer_for(&self, client: &IdentityKey) -> AllowlistAuthorizer {
        let authorizer = AllowlistAuthorizer::new().allow_grant_holders();
        match self.clients.get(client) {
            Some(ToolAllowance::All) => authorizer.allow(*client, ["*"], Vec::<String>::new()),
            Some(ToolAllowance::Only(tools)) => {
                authorizer.allow(*client, tools.iter().cloned(), Vec::<String>::new())
            }
            None => authorizer,
        }
    }
}

/// Step 4 with the policy hook of [`crate::ServerBuilder::authorizer`]: the allowlist
/// decides first, and a call it allows is then put to the hook.
struct WithHook<'a> {
    allowlist: &'a AllowlistAuthorizer,
    hook: Option<&'a PolicyHook>,
}

impl Authorizer for WithHook<'_> {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        match self.allowlist.authorize(request) {
            Decision::Allow => self
                .hook
                .map_or(Decision::Allow, |hook| hook.0.authorize(request)),
            denied => denied,
        }
    }
}

/// A running tool call.
struct Running {
    abort: AbortHandle,
    request_hash: [u8; 32],
    /// Index of the next STREAM_ITEM of this call.
    next_item: u64,
    /// The call's audit entry, written when the call ends (`audit.rs`).
    audit: Option<Box<CallEntry>>,
}

pub(crate) enum Outcome {
    Finished(u64, ToolResult),
    /// A STREAM_ITEM, with the permit that bounds the items queued towards the
    /// connection task (released once the item is handled).
    Item(u64, serde_json::Value, tokio::sync::OwnedSemaphorePermit),
    /// The handler panicked: the call's outcome is unknown (AMO-026).
    Crashed(u64),
    /// A call this connection's REQUEST `id` waited for, running on another
    /// connection of the lineage, ended (AMO-011, `amo.rs`): answer the REQUEST with
    /// its outcome, or RESULT_UNAVAILABLE when it has none (abandoned).
    Awaited {
        id: u64,
        request_hash: [u8; 32],
        outcome: Option<CachedOutcome>,
    },
}

struct Driver<S> {
    inner: Arc<Inner>,
    socket: WebSocketStream<S>,
    connection: Connection,
    peer: SocketAddr,
    slot: UnauthenticatedSlot,
    session: Option<SessionAuthz>,
    /// The granted set last sent to the client (CAP_GRANT or CAP_UPDATE).
    granted: Vec<GrantedTool>,
    /// The tools the client asked for (handshake and CAP_REQUESTs).
    requested: Vec<String>,
    running: HashMap<u64, Running>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    connection_budget: DefaultDirectRateLimiter,
    consecutive_refusals: u32,
    /// The tools this connection works with, and the server's current ones.
    catalog: Arc<Catalog>,
    catalog_updates: watch::Receiver<Arc<Catalog>>,
    /// The audit log's entrance, when the server keeps one.
    audit: Option<AuditSink>,
    /// The server's shutdown signal, and the drain deadline once it came
    /// (`shutdown.rs`).
    shutdown: watch::Receiver<Option<tokio::time::Instant>>,
    draining: Option<tokio::time::Instant>,
    /// Security events, counters and metrics of this connection (`events.rs`).
    events: crate::events::ConnectionEvents,
    /// Permits for STREAM_ITEMs on their way to this task ([`STREAM_ITEMS_IN_FLIGHT`]).
    stream_budget: Arc<tokio::sync::Semaphore>,
}

/// STREAM_ITEMs of all calls of a connection that may wait for its task at once.
const STREAM_ITEMS_IN_FLIGHT: usize = 64;

/// Wall-clock time in Unix seconds, rounded down (grant expiry is checked against it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

pub(crate) async fn run<S>(
    inner: Arc<Inner>,
    socket: WebSocketStream<S>,
    peer: SocketAddr,
    slot: UnauthenticatedSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connection = Connection::server(
        inner.protocol.clone(),
        Instant::now(),
        unix_now(),
        &mut rand_core::OsRng,
    );
    let (outcomes, outcome_receiver) = mpsc::unbounded_channel();
    let mut catalog_updates = inner.catalog.subscribe();
    let catalog = catalog_updates.borrow_and_update().clone();
    let connection_budget =
        RateLimiter::direct(per_second(inner.limits.rate_per_sec, inner.limits.burst));
    let events = crate::events::ConnectionEvents::opened(&inner, peer);
    let audit = inner.audit.as_ref().map(crate::audit::AuditLog::sink);
    let mut shutdown = inner.shutdown.subscribe();
    let draining = *shutdown.borrow_and_update();
    let driver = Driver {
        inner,
        socket,
        connection,
        peer,
        slot,
        session: None,
        granted: Vec::new(),
        requested: Vec::new(),
        running: HashMap::new(),
        outcomes,
        connection_budget,
        consecutive_refusals: 0,
        catalog,
        catalog_updates,
        audit,
        shutdown,
        draining,
        events,
        stream_budget: Arc::new(tokio::sync::Semaphore::new(STREAM_ITEMS_IN_FLIGHT)),
    };
    driver.run(outcome_receiver).await;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    async fn run(mut self, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        let code = loop {
            // Events first: handling them queues records (CAP_GRANT, answers).
            self.drain_events();
            self.close_if_stopping();
            match self.flush().await {
                Ok(()) => {}
                Err(WriteFailed::Stalled) => break self.close_stalled().await,
                Err(WriteFailed::Socket) => break CloseCode::GOING_AWAY,
            }
            if let Some((code, side)) = self.connection.close_code() {
                if let Err(WriteFailed::Stalled) = self.flush().await {
                    break self.close_stalled().await;
                }
                let frame = CloseFrame {
                    code: WsCloseCode::from(code.0),
                    reason: "".into(),
                };
                let close = self.socket.send(WsMessage::Close(Some(frame)));
                let _ = tokio::time::timeout(self.inner.limits.write_stall_timeout, close).await;
                tracing::debug!(peer = %self.peer, %code, %side, "toolwire connection closed");
                self.linger().await;
                break code;
            }
            let deadline = self.connection.poll_timeout().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            // Audit backpressure: entries waiting for room stop reading (`audit.rs`).
            let room = self
                .audit
                .as_ref()
                .filter(|audit| audit.backlogged())
                .map(AuditSink::room);
            let reading = room.is_none();
            let drain_deadline = self.draining.filter(|_| !self.running.is_empty());
            tokio::select! {
                frame = self.socket.next(), if reading => {
                    if let Some(code) = self.handle_frame(frame) {
                        break code;
                    }
                }
                Some(outcome) = outcomes.recv() => self.handle_outcome(outcome),
                Ok(()) = self.catalog_updates.changed() => self.sync_catalog(),
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.connection.handle_timeout(Instant::now());
                }
                Ok(()) = self.shutdown.changed(), if self.draining.is_none() => {
                    self.draining = *self.shutdown.borrow_and_update();
                }
                () = sleep_until_some(drain_deadline) => self.interrupt_running(&mut outcomes),
                Some(room) = some_or_pending(room) => {
                    if let Some(audit) = self.audit.as_mut() {
                        audit.drain(room);
                    }
                }
                () = audit_stopped(self.audit.as_ref()) => {}
            }
        };
        self.end_running_calls(&mut outcomes);
        let side = self
            .connection
            .close_code()
            .map_or(toolwire_protocol::Side::Remote, |(_, side)| side);
        self.events.connection_closed(&self.inner, code, side);
        if let Some(audit) = self.audit.as_mut() {
            audit.flush().await;
        }
        tracing::debug!(peer = %self.peer, %code, "toolwire connection task ends");
    }

    /// After our close frame: reads and discards what the peer still sends until it
    /// answers the close, for at most [`CLOSE_LINGER`]. Dropping a socket with unread
    /// input makes the kernel reset the connection, and a peer still writing (a
    /// flooding client, a large frame) would then lose our CLOSE record and close
    /// frame and never learn why it was closed.
    async fn linger(&mut self) {
        let drain = async { while let Some(Ok(_)) = self.socket.next().await {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }

    /// The connection is gone: results that already arrived are recorded in the
    /// at-most-once table (a retry on a resumed lineage gets them). When the peer
    /// went away (the server did not close the connection for a failure), calls
    /// still running go on without it ([`finish_detached`]), at most
    /// `Limits::max_in_flight` per client identity at once: their outcome, when they
    /// complete within [`DETACHED_CALL_LIMIT`], is cached for a retry on a new
    /// connection and answers the copies already waiting there (AMO-011). Otherwise,
    /// and past the limit, they are stopped and abandoned (outcome unknown, AMO-026),
    /// so a retry is answered RESULT_UNAVAILABLE instead of waiting forever. A peer
    /// the server closed (protocol violation, revocation, a stalled reader, LIM-004)
    /// keeps nothing running.
    fn end_running_calls(&mut self, outcomes: &mut mpsc::UnboundedReceiver<Outcome>) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let lineage = session.lineage;
        let client = session.client;
        while let Ok(outcome) = outcomes.try_recv() {
            match outcome {
                Outcome::Finished(id, result) => {
                    if let Some(running) = self.running.remove(&id) {
                        (&self.inner.at_most_once).complete(&lineage, id, cached_outcome(&result));
                        self.audit_write(running.audit, |entry| {
                            entry.ended("not sent (connection closed)")
                        });
                    }
                }
                Outcome::Crashed(id) => {
                    if let Some(running) = self.running.remove(&id) {
                        (&self.inner.at_most_once).abandon(&lineage, id);
                        self.audit_write(running.audit, |entry| {
                            entry.ended("INTERNAL (handler panicked)")
                        });
                    }
                }
                _ => {}
            }
        }
        if self.running.is_empty() {
            return;
        }
        let closed_by_server = matches!(
            self.connection.close_code(),
            Some((_, toolwire_protocol::Side::Local))
        );
        let limit = usize::try_from(self.inner.limits.max_in_flight).unwrap_or(usize::MAX);
        if closed_by_server
            || !self
                .inner
                .at_most_once
                .try_detach(client, self.running.len(), limit)
        {
            for (id, running) in std::mem::take(&mut self.running) {
                running.abort.abort();
                (&self.inner.at_most_once).abandon(&lineage, id);
                self.audit_write(running.audit, |entry| {
                    entry.ended("unknown (connection closed while running)")
                });
            }
            return;
        }
        let running = std::mem::take(&mut self.running);
        let (_, closed) = mpsc::unbounded_channel();
        let outcomes = std::mem::replace(outcomes, closed);
        let audit = self.inner.audit.as_ref().map(crate::audit::AuditLog::sink);
        tokio::spawn(finish_detached(
            self.inner.clone(),
            lineage,
            outcomes,
            running,
            audit,
        ));
    }

    /// Adopts the server's current tools if they changed. A granted tool whose
    /// definition (digest) changed, or that is gone, leaves the granted set (the
    /// digest binding of step 2 of the pipeline, applied to what the client is told),
    /// and the client is sent CAP_UPDATE with the new signed manifest.
    fn sync_catalog(&mut self) {
        let current = self.catalog_updates.borrow_and_update().clone();
        if Arc::ptr_eq(&current, &self.catalog) {
            return;
        }
        let manifest_changed = current.manifest != self.catalog.manifest;
        self.catalog = current;
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if !manifest_changed {
            return;
        }
        let catalog = &self.catalog;
        let (kept, dropped): (Vec<GrantedTool>, Vec<GrantedTool>) =
            std::mem::take(&mut self.granted)
                .into_iter()
                .partition(|tool| {
                    catalog
                        .digests
                        .digest(&tool.name)
                        .is_some_and(|digest| digest.as_slice() == tool.digest.as_slice())
                });
        let revoked: Vec<String> = dropped.into_iter().map(|tool| tool.name).collect();
        session.set_granted(&kept);
        self.granted = kept.clone();
        self.events.manifest_changed(&self.inner, &revoked);
        let update = CapUpdate {
            granted: kept,
            revoked,
            policy_version: read(&self.inner.policy).version,
            manifest: Some(self.catalog.manifest.clone()),
        };
        let _ = self
            .connection
            .send(Instant::now(), Message::CapUpdate(update));
    }

    /// Sends every queued record. Each send may make no progress for at most
    /// [`Limits::write_stall_timeout`] (LIM-004): a peer that stops reading cannot
    /// hold the connection task, and what it keeps queued, forever.
    async fn flush(&mut self) -> Result<(), WriteFailed> {
        let stall = self.inner.limits.write_stall_timeout;
        while let Some(record) = self.connection.poll_transmit() {
            self.events.record_out(record.len());
            let send = self.socket.send(WsMessage::Binary(record.into()));
            match tokio::time::timeout(stall, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteFailed::Socket),
                Err(_) => return Err(WriteFailed::Stalled),
            }
        }
        Ok(())
    }

    /// The peer stopped reading (LIM-004): closes with TRY_AGAIN_LATER (1013). Best
    /// effort: the close frame is given one more short chance through the stalled
    /// socket, then the socket is dropped without lingering.
    async fn close_stalled(&mut self) -> CloseCode {
        let code = CloseCode::TRY_AGAIN_LATER;
        tracing::warn!(peer = %self.peer, "toolwire peer stopped reading: closing the connection");
        self.events.report(
            &self.inner,
            SecurityEvent::Timeout {
                kind: DeadlineKind::WriteStall,
            },
        );
        self.connection.close(code, "");
        let frame = CloseFrame {
            code: WsCloseCode::from(code.0),
            reason: "".into(),
        };
        let close = self.socket.send(WsMessage::Close(Some(frame)));
        let _ = tokio::time::timeout(STALLED_CLOSE_GRACE, close).await;
        code
    }

    fn handle_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Option<CloseCode> {
        let now = Instant::now();
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => {
                self.events.record_in(&bytes);
                if let Err(error) = self.connection.handle_record(now, &bytes) {
                    tracing::warn!(peer = %self.peer, %error, code = ?error.close_code(), "toolwire connection failed");
                }
                None
            }
            Some(Ok(WsMessage::Text(text))) => {
                if crate::fault::injected(&self.inner, crate::fault::Fault::AcceptTextFrames) {
                    return None;
                }
                if let Err(violation) =
                    check_frame(FrameKind::Text, text.len(), self.inner.protocol.limits())
                {
                    self.connection.close(violation.close_code(), "");
                }
                None
            }
            Some(Ok(WsMessage::Close(frame))) => {
                Some(frame.map_or(CloseCode::GOING_AWAY, |frame| {
                    CloseCode(u16::from(frame.code))
                }))
            }
            Some(Ok(_)) => None,
            Some(Err(WsError::Capacity(capacity))) => {
                let length = match capacity {
                    tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                        size,
                        ..
                    } => Some(size),
                    _ => None,
                };
                let limit =
                    toolwire_protocol::upgrade::max_frame_len(&self.inner.limits.connection);
                self.events.oversize_frame(&self.inner, length, limit);
                self.connection.close(CloseCode::MESSAGE_TOO_BIG, "");
                None
            }
            Some(Err(_)) | None => Some(CloseCode::GOING_AWAY),
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.connection.poll_event() {
            match event {
                Event::Established(info) => {
                    self.events.established(&self.inner, &info);
                    self.establish(&info);
                }
                Event::Message(Message::Request(request)) => self.handle_request(request),
                Event::Message(Message::Cancel(cancel)) => self.handle_cancel(cancel.id),
                Event::Message(Message::CapRequest(request)) => self.handle_cap_request(request),
                Event::Message(other) => {
                    tracing::debug!(kind = other.kind(), "toolwire message ignored")
                }
                Event::Closed { code, side, error } => {
                    tracing::debug!(%code, %side, ?error, "toolwire connection closed");
                    self.events.closed_by(&self.inner, error.as_ref());
                }
                _ => {}
            }
        }
    }

    /// Computes the granted set (requested ∩ registry ∩ (allowlist ∪ grants)) and
    /// sends CAP_GRANT with the signed manifest.
    fn establish(&mut self, info: &SessionInfo) {
        self.slot.release();
        self.sync_catalog();
        let policy = read(&self.inner.policy);
        let allowance = policy.clients.get(&info.peer).cloned();
        self.requested = info.cap_request.tools.clone();
        let granted = granted_set(
            &self.catalog,
            &self.requested,
            allowance.as_ref(),
            &info.grants,
        );
        let policy_version = policy.version;
        drop(policy);
        if allowance.is_none() && info.grants.is_empty() {
            // The allowlist changed since the server was built: this key is no longer
            // trusted.
            self.events.unknown_client(&self.inner);
            self.connection.close(CloseCode::AUTH_FAILED, "");
            return;
        }
        let mut session = SessionAuthz::new(info, allowance.is_some())
            .with_signatures_required(self.inner.require_signatures);
        session.set_granted(&granted);
        let (lineage, origin) = LineageKey::for_session(info);
        (&self.inner.at_most_once).attach(&lineage, origin);
        tracing::info!(
            peer = %self.peer,
            client = %info.peer,
            session = %hex(&info.session_id[..8]),
            granted = granted.len(),
            event = "grant_issued",
            "toolwire session established"
        );
        let grant = CapGrant {
            granted,
            limits: CallLimits {
                rate_per_sec: self.inner.limits.rate_per_sec,
                burst: self.inner.limits.burst,
                max_in_flight: self.inner.limits.max_in_flight,
            },
            expires_at_ms: None,
            policy_version,
            manifest: self.catalog.manifest.clone(),
        };
        self.granted = grant.granted.clone();
        self.session = Some(session);
        let _ = self
            .connection
            .send(Instant::now(), Message::CapGrant(grant));
    }

    /// CAP_REQUEST (GRT-037, GRT-038, GRT-039): verifies the presented grants (only
    /// the first 8) for this session and holder, adds those that verify to the
    /// session's grants, and answers with CAP_UPDATE carrying the complete new
    /// granted set for every tool asked for so far.
    fn handle_cap_request(&mut self, request: CapRequest) {
        self.sync_catalog();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let (grants, rejected) = verify_presented_grants(
            &self.inner.protocol,
            &request.grants,
            session.client,
            session.session_id,
            unix_now(),
        );
        for (position, error) in &rejected {
            tracing::info!(peer = %self.peer, position, %error, "toolwire presented grant disregarded");
        }
        session.grants.extend(grants);
        for tool in request.tools {
            if !self.requested.contains(&tool) {
                self.requested.push(tool);
            }
        }
        let policy = read(&self.inner.policy);
        let allowance = policy.clients.get(&session.client).cloned();
        let policy_version = policy.version;
        drop(policy);
        let granted = granted_set(
            &self.catalog,
            &self.requested,
            allowance.as_ref(),
            &session.grants,
        );
        let revoked = self
            .granted
            .iter()
            .filter(|old| !granted.iter().any(|new| new.name == old.name))
            .map(|old| old.name.clone())
            .collect();
        session.set_granted(&granted);
        self.granted = granted.clone();
        let update = CapUpdate {
            granted,
            revoked,
            policy_version,
            manifest: None,
        };
        let _ = self
            .connection
            .send(Instant::now(), Message::CapUpdate(update));
    }

    fn handle_request(&mut self, request: Request) {
        // A tool change takes effect on the very next request (AUTHZ-001).
        self.sync_catalog();
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let now = Instant::now();
        let policy = read(&self.inner.policy);
        let allowlist = policy.authorizer_for(&session.client);
        let authorizer = WithHook {
            allowlist: &allowlist,
            hook: self.inner.authorizer.as_ref(),
        };
        let mut budgets = ConnectionBudgets {
            connection: &self.connection_budget,
            shared: &self.inner.rates,
            tools: &self.catalog.digests,
        };
        let mut at_most_once = &self.inner.at_most_once;
        let mut refuse_new_calls = crate::shutdown::RefuseNewCalls;
        let store: &mut dyn AtMostOnceStore = if self.draining.is_some() {
            &mut refuse_new_calls
        } else {
            &mut at_most_once
        };
        let mut pipeline = RequestPipeline {
            limits: &self.inner.authz_limits,
            rate_budgets: &mut budgets,
            tools: &self.catalog.digests,
            revocations: &policy.revoked_grants,
            authorizer: &authorizer,
            policy_version: policy.version,
            validator: &self.catalog.registry,
            at_most_once: store,
        };
        let in_flight = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        let mut evaluation = pipeline.evaluate(session, &request, in_flight, now, unix_now());
        drop(policy);
        if self.draining.is_some() && evaluation.record.refused_at == Some(Step::AtMostOnce) {
            self.inner.shutdown.count_refused();
            evaluation.record.detail = Some("server shutting down".into());
        }
        let entry = self.audit.is_some().then(|| {
            CallEntry::new(
                evaluation.record.clone(),
                RequestEvidence::from_request(&request),
            )
        });
        let record = &evaluation.record;
        let retry_after_ms = match &evaluation.verdict {
            Verdict::Refuse { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        };
        let known_tool = self.catalog.registry.tools.contains_key(&record.tool);
        self.events
            .decision(&self.inner, record, &request, retry_after_ms, known_tool);
        let session_id = session.session_id;
        let client = session.client;
        let fields = RequestFields {
            session_id: &session_id,
            request_id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: request.grant_id.as_deref().unwrap_or(""),
        };
        let request_hash = fields.hash();
        match evaluation.verdict {
            Verdict::Execute => {
                self.consecutive_refusals = 0;
                self.execute(request, client, session_id, request_hash, entry);
            }
            Verdict::AnswerFromCache(CachedOutcome::Response(result)) => {
                let response = self.send_response(request.id, request_hash, result);
                self.audit_write(entry, |entry| entry.answered(response));
            }
            Verdict::AlreadyInFlight => {
                self.audit_write(entry, |entry| entry);
                self.await_running_call(&request, request_hash);
            }
            verdict => {
                self.audit_write(entry, |entry| entry);
                if verdict.refusal_code() == Some(ErrorCode::RESOURCE_EXHAUSTED) {
                    self.consecutive_refusals += 1;
                } else {
                    self.consecutive_refusals = 0;
                }
                if let Some(error) = verdict.error_message(request.id) {
                    let error = with_retry_hint(error, &self.inner);
                    let _ = self.connection.send(now, Message::Error(error));
                }
                if verdict.refusal_code() == Some(ErrorCode::CAPABILITY_REVOKED) {
                    self.close_if_every_grant_revoked();
                }
                if self.consecutive_refusals > self.inner.limits.max_consecutive_refusals {
                    self.connection.close(CloseCode::RATE_LIMITED, "");
                }
            }
        }
    }

    /// GRT-042: a session whose authority comes only from grants, all of them now
    /// revoked, can never make another call. It is told so (CAP_UPDATE with an empty
    /// granted set) and closed with CAPABILITY_REVOKED (4007). Checked when a call was
    /// just refused for a revocation, so that call still gets its own answer first.
    fn close_if_every_grant_revoked(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.key_allowed || session.grants.is_empty() {
            return;
        }
        let policy = read(&self.inner.policy);
        let revoked = |id: &String| policy.revoked_grants.contains(id);
        let every_grant_revoked = session
            .grants
            .iter()
            .all(|grant| revoked(&grant.id) || grant.chain_ids.iter().any(revoked));
        let policy_version = policy.version;
        drop(policy);
        if !every_grant_revoked {
            return;
        }
        session.set_granted(&[]);
        let revoked_tools = std::mem::take(&mut self.granted)
            .into_iter()
            .map(|tool| tool.name)
            .collect();
        tracing::warn!(peer = %self.peer, client = %session.client, "toolwire session lost every grant: closing");
        let update = CapUpdate {
            granted: Vec::new(),
            revoked: revoked_tools,
            policy_version,
            manifest: None,
        };
        let _ = self
            .connection
            .send(Instant::now(), Message::CapUpdate(update));
        self.connection.close(CloseCode::CAPABILITY_REVOKED, "");
    }

    fn execute(
        &mut self,
        request: Request,
        client: IdentityKey,
        session_id: [u8; 32],
        request_hash: [u8; 32],
        audit: Option<Box<CallEntry>>,
    ) {
        let Some(entry) = self.catalog.registry.tools.get(&request.tool) else {
            self.audit_write(audit, |entry| entry.ended("not run (tool missing)"));
            return;
        };
        // The validator already decoded these bytes once; they are valid msgpack.
        let args = decode_args(&request.args).unwrap_or(serde_json::Value::Null);
        let (items, mut item_receiver) = mpsc::channel(crate::tool::STREAM_QUEUE_PER_CALL);
        let context = CallContext {
            client,
            session_id,
            request_id: request.id,
            stream: items,
        };
        let handler = entry.tool.handler.clone();
        let outcomes = self.outcomes.clone();
        let stream_budget = self.stream_budget.clone();
        let id = request.id;
        let deadline = request.deadline_ms.map(Duration::from_millis);
        let task = tokio::spawn(async move {
            let forward = outcomes.clone();
            let forwarder = tokio::spawn(async move {
                // A permit per item waiting for the connection task: when that task is
                // stuck writing to a peer that does not read, the permits run out, this
                // loop waits, the call's queue fills and `send_item` waits (backpressure
                // from the socket to the handler).
                while let Some((id, item)) = item_receiver.recv().await {
                    let Ok(permit) = stream_budget.clone().acquire_owned().await else {
                        break;
                    };
                    let _ = forward.send(Outcome::Item(id, item, permit));
                }
            });
            // A panicking handler is caught, so that its call ends (AMO-026).
            let call = std::panic::AssertUnwindSafe(async move { handler(args, context).await })
                .catch_unwind();
            let finished = match deadline {
                Some(deadline) => tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| {
                        Ok(Err(crate::ToolError::new(
                            ErrorCode::DEADLINE_EXCEEDED,
                            "deadline exceeded",
                        )))
                    }),
                None => call.await,
            };
            // Items sent before the result go out first.
            let _ = forwarder.await;
            let _ = outcomes.send(match finished {
                Ok(result) => Outcome::Finished(id, result),
                Err(_) => Outcome::Crashed(id),
            });
        });
        if let Some(session) = self.session.as_ref() {
            self.inner.at_most_once.started(
                &session.lineage,
                id,
                task.abort_handle(),
                &self.outcomes,
            );
        }
        self.running.insert(
            id,
            Running {
                abort: task.abort_handle(),
                request_hash,
                next_item: 0,
                audit,
            },
        );
    }

    fn handle_outcome(&mut self, outcome: Outcome) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let lineage = session.lineage;
        match outcome {
            Outcome::Item(id, item, _permit) => {
                let Some(running) = self.running.get_mut(&id) else {
                    return;
                };
                let data = rmp_serde::to_vec_named(&item).unwrap_or_default();
                let index = running.next_item;
                let sent = self.connection.send(
                    Instant::now(),
                    Message::StreamItem(StreamItem {
                        id,
                        index,
                        data: data.into(),
                    }),
                );
                if let Err(Error::Local(LocalError::MessageTooLarge { size, limit })) = sent {
                    // REC-034: an item that cannot travel in one record ends the call
                    // with INTERNAL; skipping it would leave the caller a silent gap.
                    tracing::warn!(
                        peer = %self.peer,
                        request_id = id,
                        size,
                        limit,
                        "toolwire stream item does not fit in one record: call ended INTERNAL"
                    );
                    running.abort.abort();
                    self.handle_outcome(Outcome::Finished(
                        id,
                        Err(ToolError::internal(ITEM_TOO_LARGE)),
                    ));
                } else {
                    running.next_item += 1;
                }
            }
            Outcome::Finished(id, result) => {
                // A call cancelled meanwhile was already answered CANCELLED: its late
                // result is dropped (exactly one answer per call).
                let Some(running) = self.running.remove(&id) else {
                    return;
                };
                let cached = self.fitting_outcome(id, cached_outcome(&result));
                let code = match (&result, &cached) {
                    (Ok(_), CachedOutcome::Error { code, .. }) => Some(*code),
                    _ => result.as_ref().err().map(|error| error.code),
                };
                self.events.call_ended(id, code);
                if !(&self.inner.at_most_once).complete(&lineage, id, cached.clone()) {
                    self.audit_write(running.audit, |entry| {
                        entry.ended("not sent (outcome already decided)")
                    });
                    return;
                }
                match cached {
                    CachedOutcome::Response(bytes) => {
                        let response = self.send_response(id, running.request_hash, bytes);
                        self.audit_write(running.audit, |entry| entry.answered(response));
                    }
                    other => {
                        if let Some(error) = other.error_message(id) {
                            let error = with_retry_hint(error, &self.inner);
                            let _ = self.connection.send(Instant::now(), Message::Error(error));
                        }
                        let ended = match &other {
                            CachedOutcome::Error { code, .. } => {
                                format!("ERROR {}", code_text(*code))
                            }
                            _ => "ERROR".to_owned(),
                        };
                        self.audit_write(running.audit, |entry| entry.ended(&ended));
                    }
                }
            }
            Outcome::Awaited {
                id,
                request_hash,
                outcome,
            } => {
                // This connection runs the call that a CANCEL on another connection
                // of the lineage stopped: it answers its own REQUEST.
                let request_hash = match self.running.remove(&id) {
                    Some(running) => {
                        self.events.forget(id);
                        self.audit_write(running.audit, |entry| {
                            entry.ended("CANCELLED by the client (on another connection)")
                        });
                        running.request_hash
                    }
                    None => request_hash,
                };
                self.answer_awaited(id, request_hash, outcome, None);
            }
            Outcome::Crashed(id) => {
                let Some(running) = self.running.remove(&id) else {
                    return;
                };
                self.events.call_ended(id, Some(ErrorCode::INTERNAL));
                self.audit_write(running.audit, |entry| {
                    entry.ended("INTERNAL (handler panicked)")
                });
                // Nothing is cached: a retry is answered RESULT_UNAVAILABLE (AMO-026).
                (&self.inner.at_most_once).abandon(&lineage, id);
                tracing::warn!(peer = %self.peer, request_id = id, "toolwire tool handler panicked");
                let error = ErrorMessage {
                    id: Some(id),
                    code: ErrorCode::INTERNAL.0,
                    message: "the tool failed".into(),
                    retry_after_ms: None,
                };
                let _ = self.connection.send(Instant::now(), Message::Error(error));
            }
        }
    }

    /// A REQUEST whose id is executing (AMO-010) is answered with the running call's
    /// outcome when it completes (AMO-011). A call running on this connection answers
    /// it with its own answer; one running on another connection of the lineage (the
    /// client reconnected before this server noticed the old connection died) hands
    /// its outcome over through the at-most-once table (`amo.rs`).
    fn await_running_call(&mut self, request: &Request, request_hash: [u8; 32]) {
        if self.running.contains_key(&request.id) {
            return;
        }
        let Some(lineage) = self.session.as_ref().map(|session| session.lineage) else {
            return;
        };
        let fingerprint = CallFingerprint::of_request(request);
        let Some(admission) = self.inner.at_most_once.wait_for(
            &lineage,
            request.id,
            request.retry,
            &fingerprint,
            request_hash,
            &self.outcomes,
        ) else {
            return;
        };
        // The call ended meanwhile: answer now.
        let error = admission.error_code();
        let outcome = match admission {
            Admission::Duplicate(outcome) => Some(outcome),
            _ => None,
        };
        self.answer_awaited(request.id, request_hash, outcome, error);
    }

    /// Answers a REQUEST that waited for a running call (AMO-011): with its outcome,
    /// else with `error` (RESULT_UNAVAILABLE when none is given).
    fn answer_awaited(
        &mut self,
        id: u64,
        request_hash: [u8; 32],
        outcome: Option<CachedOutcome>,
        error: Option<ErrorCode>,
    ) {
        match outcome {
            Some(CachedOutcome::Response(result)) => {
                self.send_response(id, request_hash, result);
            }
            Some(outcome) => {
                if let Some(error) = outcome.error_message(id) {
                    let error = with_retry_hint(error, &self.inner);
                    let _ = self.connection.send(Instant::now(), Message::Error(error));
                }
            }
            None => {
                let code = error.unwrap_or(ErrorCode::RESULT_UNAVAILABLE);
                let message = match code {
                    ErrorCode::RESULT_UNAVAILABLE => "result unavailable: the call may have run",
                    ErrorCode::STALE_REQUEST_ID => "request id older than the at-most-once window",
                    ErrorCode::FAILED_PRECONDITION => {
                        "request id already used for a different call"
                    }
                    _ => "server busy, retry later",
                };
                let error = ErrorMessage {
                    id: Some(id),
                    code: code.0,
                    message: message.into(),
                    retry_after_ms: None,
                };
                let _ = self.connection.send(Instant::now(), Message::Error(error));
            }
        }
    }

    fn handle_cancel(&mut self, id: u64) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let lineage = session.lineage;
        if let Some(running) = self.running.remove(&id) {
            self.events.forget(id);
            running.abort.abort();
            self.audit_write(running.audit, |entry| {
                entry.ended("CANCELLED by the client")
            });
            if (&self.inner.at_most_once).cancel(&lineage, id) {
                let error = ErrorMessage {
                    id: Some(id),
                    code: ErrorCode::CANCELLED.0,
                    message: "cancelled".into(),
                    retry_after_ms: None,
                };
                let _ = self.connection.send(Instant::now(), Message::Error(error));
            }
        } else if self
            .inner
            .at_most_once
            .cancel_elsewhere(&lineage, id, &self.outcomes)
        {
            // The id runs on another connection of the lineage (or on after its
            // connection died): stopped there, answered here (AMO-023).
            let error = ErrorMessage {
                id: Some(id),
                code: ErrorCode::CANCELLED.0,
                message: "cancelled".into(),
                retry_after_ms: None,
            };
            let _ = self.connection.send(Instant::now(), Message::Error(error));
        }
    }

    /// Signs and sends a RESPONSE; returns its evidence for the audit log when the
    /// server keeps one and the RESPONSE was sent.
    /// The outcome a finished call keeps and is answered with: its result, unless the
    /// RESPONSE carrying it would not fit in one record (REC-014, REC-034); then the
    /// ERROR INTERNAL (13) `result too large for one record`, which the at-most-once
    /// table caches and the audit log records like any other error outcome, so that
    /// the caller is answered at once and a retried copy gets the same answer.
    fn fitting_outcome(&self, id: u64, outcome: CachedOutcome) -> CachedOutcome {
        let CachedOutcome::Response(result) = &outcome else {
            return outcome;
        };
        let limit = self
            .inner
            .protocol
            .limits()
            .max_record_body
            .saturating_sub(16);
        // A RESPONSE adds at most a few dozen bytes of framing (id, field names, a
        // 64-byte signature) to its result: only results near the limit are probed.
        if result.len() + RESPONSE_FRAMING_BOUND <= limit {
            return outcome;
        }
        // The largest RESPONSE of this result: with a signature when signing is on.
        let probe = Message::Response(Response {
            id,
            result: result.clone().into(),
            signature: self.inner.require_signatures.then(|| vec![0u8; 64].into()),
        });
        let size = probe.encode().len();
        if size <= limit {
            return outcome;
        }
        tracing::warn!(
            peer = %self.peer,
            request_id = id,
            size,
            limit,
            "toolwire tool result does not fit in one record: answered INTERNAL"
        );
        CachedOutcome::Error {
            code: ErrorCode::INTERNAL,
            message: RESULT_TOO_LARGE.to_owned(),
        }
    }

    fn send_response(
        &mut self,
        id: u64,
        request_hash: [u8; 32],
        result: Vec<u8>,
    ) -> Option<ResponseEvidence> {
        let session = self.session.as_ref()?;
        let signature = self.inner.require_signatures.then(|| {
            ResponseFields {
                session_id: &session.session_id,
                request_id: id,
                request_hash: &request_hash,
                result: &result,
            }
            .sign(self.inner.protocol.identity())
            .to_vec()
        });
        let evidence = self
            .audit
            .is_some()
            .then(|| ResponseEvidence::new(&request_hash, &result, signature.as_deref()));
        let response = Response {
            id,
            result: result.into(),
            signature: signature.map(Into::into),
        };
        if let Err(error) = self
            .connection
            .send(Instant::now(), Message::Response(response))
        {
            tracing::warn!(%error, request_id = id, "toolwire response could not be sent");
            return None;
        }
        evidence
    }

    /// Hands a call's audit entry, finished by `finish`, to the audit log.
    fn audit_write(
        &mut self,
        entry: Option<Box<CallEntry>>,
        finish: impl FnOnce(Box<CallEntry>) -> Box<CallEntry>,
    ) {
        if let (Some(audit), Some(entry)) = (self.audit.as_mut(), entry) {
            audit.write(finish(entry));
        }
    }

    /// Ends the connection when the server shuts down or its audit log stopped: a
    /// draining connection closes with GOING_AWAY (1001) once its last call is
    /// answered, at once if it has none (or no session yet); a connection whose
    /// audit writer stopped closes with INTERNAL_ERROR (1011): no call is served that
    /// cannot be logged (`audit.rs`, "fail closed").
    fn close_if_stopping(&mut self) {
        if self.connection.close_code().is_some() {
            return;
        }
        if self.audit.as_ref().is_some_and(AuditSink::stopped) {
            tracing::error!(peer = %self.peer, event = "audit_failed", "toolwire audit log stopped: closing the connection");
            self.connection.close(CloseCode::INTERNAL_ERROR, "");
        } else if self.draining.is_some() && self.running.is_empty() {
            self.connection.close(CloseCode::GOING_AWAY, "");
        }
    }

    /// The drain deadline passed (`shutdown.rs`): results that already arrived are
    /// sent; calls still running are stopped and answered UNAVAILABLE (14), their
    /// outcome unknown, so nothing is cached (AMO-026) and a retried copy of the id
    /// is answered RESULT_UNAVAILABLE, never run again.
    fn interrupt_running(&mut self, outcomes: &mut mpsc::UnboundedReceiver<Outcome>) {
        while let Ok(outcome) = outcomes.try_recv() {
            self.handle_outcome(outcome);
        }
        let Some(lineage) = self.session.as_ref().map(|session| session.lineage) else {
            return;
        };
        let interrupted = self.running.len();
        for (id, running) in std::mem::take(&mut self.running) {
            self.events.forget(id);
            running.abort.abort();
            (&self.inner.at_most_once).abandon(&lineage, id);
            let error = ErrorMessage {
                id: Some(id),
                code: ErrorCode::UNAVAILABLE.0,
                message: "server shutting down".into(),
                retry_after_ms: None,
            };
            let _ = self.connection.send(Instant::now(), Message::Error(error));
            self.audit_write(running.audit, |entry| {
                entry.ended("UNAVAILABLE (interrupted by server shutdown)")
            });
        }
        self.inner.shutdown.count_interrupted(interrupted);
        tracing::info!(peer = %self.peer, interrupted, event = "calls_interrupted", "toolwire shutdown deadline: running calls answered UNAVAILABLE");
    }
}

/// How long a call whose connection died may go on running, so that its outcome
/// reaches the at-most-once table and the retries of it on a new connection
/// (AMO-011). Bounds how long a handler outlives its connection, and so how long it
/// keeps its lineage from being dropped (AMO-033).
const DETACHED_CALL_LIMIT: Duration = Duration::from_secs(60);

/// Runs the calls of a connection that is gone to their end (`end_running_calls`):
/// each outcome is completed in the at-most-once table (cached, and handed to the
/// requests waiting for it on other connections), a crashed call is abandoned, and
/// calls still running after [`DETACHED_CALL_LIMIT`], or at the drain deadline of a
/// server shutdown, are stopped and abandoned.
async fn finish_detached(
    inner: Arc<Inner>,
    lineage: LineageKey,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    mut running: HashMap<u64, Running>,
    mut audit: Option<AuditSink>,
) {
    let detached = running.len();
    let mut write = |entry: Option<Box<CallEntry>>, ended: &str| {
        if let (Some(audit), Some(entry)) = (audit.as_mut(), entry) {
            audit.write(entry.ended(ended));
        }
    };
    let mut shutdown = inner.shutdown.subscribe();
    let limit = tokio::time::Instant::now() + DETACHED_CALL_LIMIT;
    while !running.is_empty() {
        let drain = *shutdown.borrow_and_update();
        let deadline = drain.map_or(limit, |drain| drain.min(limit));
        tokio::select! {
            outcome = outcomes.recv() => match outcome {
                Some(Outcome::Finished(id, result)) => {
                    if let Some(call) = running.remove(&id) {
                        (&inner.at_most_once).complete(&lineage, id, cached_outcome(&result));
                        write(call.audit, "not sent (connection closed)");
                    }
                }
                Some(Outcome::Crashed(id)) => {
                    if let Some(call) = running.remove(&id) {
                        (&inner.at_most_once).abandon(&lineage, id);
                        write(call.audit, "INTERNAL (handler panicked)");
                    }
                }
                // Cancelled from another connection of the lineage.
                Some(Outcome::Awaited { id, .. }) => {
                    if let Some(call) = running.remove(&id) {
                        write(call.audit, "CANCELLED by the client (on another connection)");
                    }
                }
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
            Ok(()) = shutdown.changed() => {}
        }
    }
    for (id, call) in running {
        call.abort.abort();
        (&inner.at_most_once).abandon(&lineage, id);
        write(call.audit, "unknown (connection closed while running)");
    }
    inner.at_most_once.detach_ended(&lineage.client, detached);
    if let Some(audit) = audit.as_mut() {
        audit.flush().await;
    }
}

/// What the at-most-once table keeps of a handler's result.
/// The ERROR message of a result that does not fit in one record (REC-034).
const RESULT_TOO_LARGE: &str = "result too large for one record";

/// The ERROR message of a call ended because one of its STREAM_ITEMs did not fit.
const ITEM_TOO_LARGE: &str = "stream item too large for one record";

/// More than the bytes a RESPONSE's encoding adds to its result (map header, field
/// names, id, bin headers, a 64-byte signature).
const RESPONSE_FRAMING_BOUND: usize = 256;

fn cached_outcome(result: &ToolResult) -> CachedOutcome {
    match result {
        Ok(value) => CachedOutcome::Response(rmp_serde::to_vec_named(value).unwrap_or_default()),
        Err(error) => CachedOutcome::Error {
            // Only codes of the spec's table go on the wire (ERR-001).
            code: if error.code.name().is_some() {
                error.code
            } else {
                ErrorCode::UNKNOWN
            },
            message: error.message.clone(),
        },
    }
}

/// Every RESOURCE_EXHAUSTED carries `retry_after_ms` (ERR-005); one a handler chose
/// gets the in-flight retry hint.
fn with_retry_hint(mut error: ErrorMessage, inner: &Inner) -> ErrorMessage {
    if error.code == ErrorCode::RESOURCE_EXHAUSTED.0 && error.retry_after_ms.is_none() {
        error.retry_after_ms =
            Some(RetryAfter(inner.authz_limits.in_flight_retry_after).as_millis_ceil());
    }
    error
}

/// The granted set (GRT-035): the tools of `catalog` that the client asked for (all
/// for `"*"`) and that its allowlist entry or one of its verified grants covers, each
/// with the digest of its current manifest entry (MAN-009).
fn granted_set(
    catalog: &Catalog,
    requested: &[String],
    allowance: Option<&ToolAllowance>,
    grants: &[Grant],
) -> Vec<GrantedTool> {
    let wants_all = requested.iter().any(|tool| tool == "*");
    catalog
        .registry
        .tools
        .iter()
        .filter(|(name, _)| wants_all || requested.iter().any(|tool| tool == *name))
        .filter(|(name, _)| {
            let by_key = match allowance {
                Some(ToolAllowance::All) => true,
                Some(ToolAllowance::Only(tools)) => tools.contains(*name),
                None => false,
            };
            by_key || grants.iter().any(|grant| grant.allows_tool(name))
        })
        .map(|(name, entry)| GrantedTool {
            name: name.clone(),
            digest: entry.digest.to_vec().into(),
        })
        .collect()
}

/// A code's name, or its number when it has none.
fn code_text(code: ErrorCode) -> String {
    code.name()
        .map_or_else(|| code.0.to_string(), str::to_owned)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Awaits `future`, or forever without one.
async fn some_or_pending<F: std::future::Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Resolves when the audit writer has stopped; never without an audit log.
async fn audit_stopped(audit: Option<&AuditSink>) {
    match audit {
        Some(audit) => audit.stopped_signal().await,
        None => std::future::pending().await,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUTHZ-006: made-up tool names must not grow the per-tool limiter.
    #[test]
    fn per_tool_buckets_exist_only_for_tools_of_the_manifest() {
        let rates = RateBudgets::new(&Limits::default());
        let connection = RateLimiter::direct(per_second(10_000, 10_000));
        let mut tools = ToolDigests::new();
        tools.insert("echo", [0; 32]);
        let mut budgets = ConnectionBudgets {
            connection: &connection,
            shared: &rates,
            tools: &tools,
        };
        let client = toolwire_protocol::Identity::from_seed(&[7; 32]).public_key();
        for index in 0..100 {
            assert!(budgets
                .check(&client, &format!("made-up-{index}"), Instant::now())
                .is_ok());
        }
        assert_eq!(rates.per_tool.len(), 0);
        assert!(budgets.check(&client, "echo", Instant::now()).is_ok());
        assert_eq!(rates.per_tool.len(), 1);
    }

    fn limits(rate_per_sec: u32, burst: u32) -> Limits {
        Limits {
            rate_per_sec,
            burst,
            per_tool_rate_per_sec: rate_per_sec,
            per_tool_burst: burst,
            ..Limits::default()
        }
    }

    fn echo_digests() -> ToolDigests {
        let mut tools = ToolDigests::new();
        tools.insert("echo", [0; 32]);
        tools
    }

    /// Buckets of identities whose budget has refilled are dropped by the next sweep:
    /// the budgets do not keep one bucket per identity that ever called.
    #[test]
    fn refilled_buckets_are_dropped_by_the_sweep() {
        // 1000 calls/s, burst 1: a bucket is full again 1 ms after its call.
        let rates = RateBudgets::with_sweep_interval(&limits(1000, 1), Duration::from_millis(200));
        let connection = RateLimiter::direct(per_second(10_000, 10_000));
        let tools = echo_digests();
        let mut budgets = ConnectionBudgets {
            connection: &connection,
            shared: &rates,
            tools: &tools,
        };
        for seed in 0..100u8 {
            let client = toolwire_protocol::Identity::from_seed(&[seed; 32]).public_key();
            assert!(budgets.check(&client, "echo", Instant::now()).is_ok());
        }
        assert_eq!(rates.entries(), (100, 100));
        std::thread::sleep(Duration::from_millis(250));
        let last = toolwire_protocol::Identity::from_seed(&[200; 32]).public_key();
        assert!(budgets.check(&last, "echo", Instant::now()).is_ok());
        assert_eq!(
            rates.entries(),
            (1, 1),
            "only the caller of the sweeping call is left"
        );
    }

    /// The sweep keeps a bucket that has not refilled: an identity that spent its
    /// budget is still refused after a sweep (dropping its bucket would reset it).
    #[test]
    fn the_sweep_keeps_spent_budgets() {
        // 1 call/s, burst 1: spent for a second after one call.
        let rates = RateBudgets::with_sweep_interval(&limits(1, 1), Duration::ZERO);
        let connection = RateLimiter::direct(per_second(10_000, 10_000));
        let tools = echo_digests();
        let mut budgets = ConnectionBudgets {
            connection: &connection,
            shared: &rates,
            tools: &tools,
        };
        let client = toolwire_protocol::Identity::from_seed(&[9; 32]).public_key();
        assert!(budgets.check(&client, "echo", Instant::now()).is_ok());
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(2));
            assert!(
                budgets.check(&client, "echo", Instant::now()).is_err(),
                "a spent budget survives the sweep"
            );
        }
        assert_eq!(rates.entries(), (1, 1));
    }
}

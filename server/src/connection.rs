//! The per-connection driver: moves records between the WebSocket and the protocol
//! state machine, runs the authorization pipeline of the protocol crate on every
//! REQUEST, and runs tool handlers. It makes no protocol decision of its own.

use crate::builder::{read, Inner, Limits, Policy, ToolAllowance};
use crate::serve::UnauthenticatedSlot;
use crate::tool::{CallContext, Registry, ToolResult};
use futures_util::{SinkExt as _, StreamExt as _};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use toolwire_protocol::amo::{
    Admission, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome, LineageKey,
    LineageOrigin,
};
use toolwire_protocol::authz::{
    AllowlistAuthorizer, AuthzLimits, RateBudgets as RateBudgetCheck, RequestPipeline, RetryAfter,
    SessionAuthz, ToolDigests, Verdict,
};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::message::{
    CallLimits, CapGrant, ErrorMessage, GrantedTool, Request, Response, StreamItem,
};
use toolwire_protocol::upgrade::{check_frame, FrameKind};
use toolwire_protocol::{
    CloseCode, Connection, ErrorCode, Event, IdentityKey, Message, SessionInfo,
};

fn per_second(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Rate budgets shared by every connection of a server: per identity and per
/// (identity, tool), token buckets from `governor`.
pub(crate) struct RateBudgets {
    per_identity: DefaultKeyedRateLimiter<IdentityKey>,
    per_tool: DefaultKeyedRateLimiter<(IdentityKey, String)>,
}

impl RateBudgets {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            per_identity: RateLimiter::keyed(per_second(limits.rate_per_sec, limits.burst)),
            per_tool: RateLimiter::keyed(per_second(
                limits.per_tool_rate_per_sec,
                limits.per_tool_burst,
            )),
        }
    }
}

/// One connection's view of the budgets: its own bucket plus the shared ones.
struct ConnectionBudgets<'a> {
    connection: &'a DefaultDirectRateLimiter,
    shared: &'a RateBudgets,
}

impl RateBudgetCheck for ConnectionBudgets<'_> {
    fn check(&mut self, client: &IdentityKey, tool: &str, _now: Instant) -> Result<(), RetryAfter> {
        let clock = DefaultClock::default();
        let wait =
            |not_until: governor::NotUntil<_>| RetryAfter(not_until.wait_time_from(clock.now()));
        self.connection.check().map_err(wait)?;
        self.shared.per_identity.check_key(client).map_err(wait)?;
        self.shared
            .per_tool
            .check_key(&(*client, tool.to_owned()))
            .map_err(wait)
    }
}

/// The at-most-once table behind a lock taken per call, never across an await.
pub(crate) struct SharedAtMostOnce(pub(crate) Mutex<AtMostOnceTable>);

impl SharedAtMostOnce {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(AtMostOnceTable::new(AmoConfig::default())))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, AtMostOnceTable> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AtMostOnceStore for &SharedAtMostOnce {
    fn attach(&mut self, key: &LineageKey, origin: LineageOrigin) {
        self.table().attach(key, origin);
    }
    fn admit(&mut self, key: &LineageKey, request_id: u64, retry: bool) -> Admission {
        self.table().admit(key, request_id, retry)
    }
    fn complete(&mut self, key: &LineageKey, request_id: u64, outcome: CachedOutcome) -> bool {
        self.table().complete(key, request_id, outcome)
    }
    fn abandon(&mut self, key: &LineageKey, request_id: u64) {
        self.table().abandon(key, request_id);
    }
}

/// Decodes msgpack arguments and validates them against the tool's schema.
impl toolwire_protocol::authz::ArgumentValidator for Registry {
    fn validate(&self, tool: &str, args: &[u8]) -> Result<(), String> {
        let entry = self
            .tools
            .get(tool)
            .ok_or_else(|| "no such tool".to_owned())?;
        let value: serde_json::Value = rmp_serde::from_slice(args)
            .map_err(|_| "arguments are not valid msgpack".to_owned())?;
        entry.validate(&value)
    }
}

impl Policy {
    /// The authorizer of the current snapshot.
    pub(crate) fn authorizer(&self) -> AllowlistAuthorizer {
        self.clients.iter().fold(
            AllowlistAuthorizer::new().allow_grant_holders(),
            |authorizer, (key, allowance)| match allowance {
                ToolAllowance::All => authorizer.allow(*key, ["*"], Vec::<String>::new()),
                ToolAllowance::Only(tools) => {
                    authorizer.allow(*key, tools.iter().cloned(), Vec::<String>::new())
                }
            },
        )
    }
}

/// A running tool call.
struct Running {
    abort: AbortHandle,
    request_hash: [u8; 32],
}

enum Outcome {
    Finished(u64, ToolResult),
    Item(u64, serde_json::Value),
}

struct Driver<S> {
    inner: Arc<Inner>,
    socket: WebSocketStream<S>,
    connection: Connection,
    peer: SocketAddr,
    slot: UnauthenticatedSlot,
    session: Option<SessionAuthz>,
    running: HashMap<u64, Running>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    connection_budget: DefaultDirectRateLimiter,
    consecutive_refusals: u32,
    tool_digests: ToolDigests,
}

pub(crate) async fn run<S>(
    inner: Arc<Inner>,
    socket: WebSocketStream<S>,
    peer: SocketAddr,
    slot: UnauthenticatedSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        });
    let connection = Connection::server(
        inner.protocol.clone(),
        Instant::now(),
        unix_now,
        &mut rand_core::OsRng,
    );
    let (outcomes, outcome_receiver) = mpsc::unbounded_channel();
    let mut tool_digests = ToolDigests::new();
    for (name, entry) in &inner.registry.tools {
        tool_digests.insert(name.clone(), entry.digest);
    }
    let connection_budget =
        RateLimiter::direct(per_second(inner.limits.rate_per_sec, inner.limits.burst));
    tracing::debug!(%peer, event = "connection_open", "toolwire connection open");
    let driver = Driver {
        inner,
        socket,
        connection,
        peer,
        slot,
        session: None,
        running: HashMap::new(),
        outcomes,
        connection_budget,
        consecutive_refusals: 0,
        tool_digests,
    };
    driver.run(outcome_receiver).await;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    async fn run(mut self, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        let code = loop {
            // Events first: handling them queues records (CAP_GRANT, answers).
            self.drain_events();
            if self.flush().await.is_err() {
                break CloseCode::GOING_AWAY;
            }
            if let Some((code, side)) = self.connection.close_code() {
                let _ = self.flush().await;
                let frame = CloseFrame {
                    code: WsCloseCode::from(code.0),
                    reason: "".into(),
                };
                let _ = self.socket.send(WsMessage::Close(Some(frame))).await;
                tracing::info!(peer = %self.peer, %code, %side, event = "connection_closed", "toolwire connection closed");
                break code;
            }
            let deadline = self.connection.poll_timeout().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                frame = self.socket.next() => {
                    if let Some(code) = self.handle_frame(frame) {
                        break code;
                    }
                }
                Some(outcome) = outcomes.recv() => self.handle_outcome(outcome),
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.connection.handle_timeout(Instant::now());
                }
            }
        };
        for (_, running) in self.running.drain() {
            running.abort.abort();
        }
        tracing::debug!(peer = %self.peer, %code, "toolwire connection task ends");
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        while let Some(record) = self.connection.poll_transmit() {
            self.socket.send(WsMessage::Binary(record.into())).await?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Option<CloseCode> {
        let now = Instant::now();
        match frame {
            Some(Ok(WsMessage::Binary(bytes))) => {
                if let Err(error) = self.connection.handle_record(now, &bytes) {
                    tracing::warn!(peer = %self.peer, %error, code = ?error.close_code(), "toolwire connection failed");
                }
                None
            }
            Some(Ok(WsMessage::Text(text))) => {
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
            Some(Err(WsError::Capacity(_))) => {
                tracing::warn!(peer = %self.peer, event = "oversize_frame", "toolwire frame over the size limit");
                self.connection.close(CloseCode::MESSAGE_TOO_BIG, "");
                None
            }
            Some(Err(_)) | None => Some(CloseCode::GOING_AWAY),
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.connection.poll_event() {
            match event {
                Event::Established(info) => self.establish(&info),
                Event::Message(Message::Request(request)) => self.handle_request(request),
                Event::Message(Message::Cancel(cancel)) => self.handle_cancel(cancel.id),
                Event::Message(other) => {
                    tracing::debug!(kind = other.kind(), "toolwire message ignored")
                }
                Event::Closed { code, side, error } => {
                    tracing::debug!(%code, %side, ?error, "toolwire connection closed");
                }
                _ => {}
            }
        }
    }

    /// Computes the granted set (requested ∩ registry ∩ (allowlist ∪ grants)) and
    /// sends CAP_GRANT with the signed manifest.
    fn establish(&mut self, info: &SessionInfo) {
        self.slot.release();
        let policy = read(&self.inner.policy);
        let allowance = policy.clients.get(&info.peer).cloned();
        let wants_all = info.cap_request.tools.iter().any(|tool| tool == "*");
        let granted: Vec<GrantedTool> = self
            .inner
            .registry
            .tools
            .iter()
            .filter(|(name, _)| {
                wants_all || info.cap_request.tools.iter().any(|tool| tool == *name)
            })
            .filter(|(name, _)| {
                let by_key = match &allowance {
                    Some(ToolAllowance::All) => true,
                    Some(ToolAllowance::Only(tools)) => tools.contains(*name),
                    None => false,
                };
                by_key || info.grants.iter().any(|grant| grant.allows_tool(name))
            })
            .map(|(name, entry)| GrantedTool {
                name: name.clone(),
                digest: entry.digest.to_vec().into(),
            })
            .collect();
        let policy_version = policy.version;
        drop(policy);
        if allowance.is_none() && info.grants.is_empty() {
            // The allowlist changed since the server was built: this key is no longer
            // trusted.
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
            manifest: self.inner.manifest.clone(),
        };
        self.session = Some(session);
        let _ = self
            .connection
            .send(Instant::now(), Message::CapGrant(grant));
    }

    fn handle_request(&mut self, request: Request) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let now = Instant::now();
        let unix_now = self.connection.unix_time(now);
        let policy = read(&self.inner.policy);
        let authorizer = policy.authorizer();
        let mut limits = AuthzLimits::default();
        limits.max_in_flight = self.inner.limits.max_in_flight;
        let mut budgets = ConnectionBudgets {
            connection: &self.connection_budget,
            shared: &self.inner.rates,
        };
        let mut at_most_once = &self.inner.at_most_once;
        let mut pipeline = RequestPipeline {
            limits: &limits,
            rate_budgets: &mut budgets,
            tools: &self.tool_digests,
            revocations: &policy.revoked_grants,
            authorizer: &authorizer,
            policy_version: policy.version,
            validator: &self.inner.registry,
            at_most_once: &mut at_most_once,
        };
        let in_flight = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        let evaluation = pipeline.evaluate(session, &request, in_flight, now, unix_now);
        drop(policy);
        let record = &evaluation.record;
        tracing::info!(
            target: "toolwire::decision",
            session = %hex(&record.session_id[..8]),
            client = %record.client,
            request_id = record.request_id,
            tool = %record.tool,
            decision = ?record.decision,
            refused_at = record.refused_at.map(|step| step.name()),
            policy_version = record.policy_version,
            "toolwire authorization decision"
        );
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
                self.execute(request, client, session_id, request_hash);
            }
            Verdict::AnswerFromCache(CachedOutcome::Response(result)) => {
                self.send_response(request.id, request_hash, result)
            }
            Verdict::AlreadyInFlight => {}
            verdict => {
                if verdict.refusal_code() == Some(ErrorCode::RESOURCE_EXHAUSTED) {
                    self.consecutive_refusals += 1;
                    tracing::warn!(client = %client, event = "rate_limited", "toolwire call refused by rate budget");
                } else {
                    self.consecutive_refusals = 0;
                }
                if let Some(error) = verdict.error_message(request.id) {
                    let _ = self.connection.send(now, Message::Error(error));
                }
                if self.consecutive_refusals > self.inner.limits.max_consecutive_refusals {
                    self.connection.close(CloseCode::RATE_LIMITED, "");
                }
            }
        }
    }

    fn execute(
        &mut self,
        request: Request,
        client: IdentityKey,
        session_id: [u8; 32],
        request_hash: [u8; 32],
    ) {
        let Some(entry) = self.inner.registry.tools.get(&request.tool) else {
            return;
        };
        // The validator already decoded these bytes once; they are valid msgpack.
        let args: serde_json::Value =
            rmp_serde::from_slice(&request.args).unwrap_or(serde_json::Value::Null);
        let (items, mut item_receiver) = mpsc::unbounded_channel();
        let context = CallContext {
            client,
            session_id,
            request_id: request.id,
            stream: items,
        };
        let handler = entry.tool.handler.clone();
        let outcomes = self.outcomes.clone();
        let id = request.id;
        let deadline = request.deadline_ms.map(Duration::from_millis);
        let task = tokio::spawn(async move {
            let forward = outcomes.clone();
            let forwarder = tokio::spawn(async move {
                while let Some((id, item)) = item_receiver.recv().await {
                    let _ = forward.send(Outcome::Item(id, item));
                }
            });
            let call = handler(args, context);
            let result = match deadline {
                Some(deadline) => tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::ToolError::new(
                            ErrorCode::DEADLINE_EXCEEDED,
                            "deadline exceeded",
                        ))
                    }),
                None => call.await,
            };
            // Items sent before the result go out first.
            let _ = forwarder.await;
            let _ = outcomes.send(Outcome::Finished(id, result));
        });
        self.running.insert(
            id,
            Running {
                abort: task.abort_handle(),
                request_hash,
            },
        );
    }

    fn handle_outcome(&mut self, outcome: Outcome) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let lineage = session.lineage;
        match outcome {
            Outcome::Item(id, item) => {
                if self.running.contains_key(&id) {
                    let data = rmp_serde::to_vec_named(&item).unwrap_or_default();
                    let index = 0;
                    let _ = self.connection.send(
                        Instant::now(),
                        Message::StreamItem(StreamItem {
                            id,
                            index,
                            data: data.into(),
                        }),
                    );
                }
            }
            Outcome::Finished(id, result) => {
                // A call cancelled meanwhile was already answered CANCELLED: its late
                // result is dropped (exactly one answer per call).
                let Some(running) = self.running.remove(&id) else {
                    return;
                };
                let cached = match &result {
                    Ok(value) => {
                        CachedOutcome::Response(rmp_serde::to_vec_named(value).unwrap_or_default())
                    }
                    Err(error) => CachedOutcome::Error {
                        code: error.code,
                        message: error.message.clone(),
                    },
                };
                if !(&self.inner.at_most_once).complete(&lineage, id, cached.clone()) {
                    return;
                }
                match cached {
                    CachedOutcome::Response(bytes) => {
                        self.send_response(id, running.request_hash, bytes)
                    }
                    other => {
                        if let Some(error) = other.error_message(id) {
                            let _ = self.connection.send(Instant::now(), Message::Error(error));
                        }
                    }
                }
            }
        }
    }

    fn handle_cancel(&mut self, id: u64) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let lineage = session.lineage;
        if let Some(running) = self.running.remove(&id) {
            running.abort.abort();
            if (&self.inner.at_most_once).cancel(&lineage, id) {
                let error = ErrorMessage {
                    id: Some(id),
                    code: ErrorCode::CANCELLED.0,
                    message: "cancelled".into(),
                    retry_after_ms: None,
                };
                let _ = self.connection.send(Instant::now(), Message::Error(error));
            }
        }
    }

    fn send_response(&mut self, id: u64, request_hash: [u8; 32], result: Vec<u8>) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let signature = self.inner.require_signatures.then(|| {
            ResponseFields {
                session_id: &session.session_id,
                request_id: id,
                request_hash: &request_hash,
                result: &result,
            }
            .sign(self.inner.protocol.identity())
            .to_vec()
            .into()
        });
        let response = Response {
            id,
            result: result.into(),
            signature,
        };
        if let Err(error) = self
            .connection
            .send(Instant::now(), Message::Response(response))
        {
            tracing::warn!(%error, request_id = id, "toolwire response could not be sent");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

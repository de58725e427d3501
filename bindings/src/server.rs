//! The tool-server side: a `toolwire_server::Server` whose tool handlers and
//! authorization hook are Python callables.
//!
//! Every tool of a Python server has the same Rust handler: it calls the Python
//! dispatcher `dispatch(tool, arguments_json, context)`, which returns a coroutine,
//! and runs that coroutine on the loop that started the server with
//! `asyncio.run_coroutine_threadsafe`. The resulting `concurrent.futures.Future`
//! can be cancelled from any thread: when the Rust handler future is dropped (the
//! client sent CANCEL, the deadline passed, the connection closed), the asyncio task
//! is cancelled and the handler sees `asyncio.CancelledError`.

use crate::client::duration;
use crate::errors::NativeError;
use crate::keys::{parse_key, Identity, PublicKey};
use crate::runtime::{awaitable, runtime, with_python};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyCFunction, PyDict};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use toolwire_protocol::authz::{AuthorizationRequest, Authorizer, Decision};
use toolwire_protocol::events::PeerText;
use toolwire_protocol::{ErrorCode, IdentityKey};
use toolwire_server::{
    Alert, CallContext as RustCallContext, Limits, Server, Tool, ToolError, ToolResult,
    TrySendItemError,
};

/// One tool as the Python registry describes it: name, description, input schema
/// (JSON text) and output schema (JSON text, or `None`).
type ToolSpec = (String, String, String, Option<String>);

/// The Python side of a server: the dispatcher and the loop its coroutines run on.
struct PythonSide {
    dispatch: Py<PyAny>,
    event_loop: Py<PyAny>,
}

/// What became of a handler coroutine.
enum Outcome {
    /// `(code, payload)`: code 0 and the result as JSON text, or an error code and
    /// its message.
    Returned(u32, String),
    /// The task was cancelled on the Python side (the server is closing).
    Cancelled,
    /// The dispatcher raised, or returned something else than `(int, str)`.
    Failed,
}

/// Cancels the handler's asyncio task if dropped before it finished.
struct CancelOnDrop(Option<Py<PyAny>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(future) = self.0.take() {
            with_python(|py| {
                let _ = future.bind(py).call_method0("cancel");
            });
        }
    }
}

impl PythonSide {
    /// Schedules `dispatch(tool, arguments, context)` on the loop; the receiver gets
    /// its outcome.
    fn schedule(
        &self,
        py: Python<'_>,
        tool: String,
        arguments: String,
        context: CallContext,
    ) -> PyResult<(Py<PyAny>, oneshot::Receiver<Outcome>)> {
        static RUN_THREADSAFE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let coroutine = self
            .dispatch
            .bind(py)
            .call1((tool, arguments, Py::new(py, context)?))?;
        let run_threadsafe = RUN_THREADSAFE.import(py, "asyncio", "run_coroutine_threadsafe")?;
        let future = match run_threadsafe.call1((&coroutine, self.event_loop.bind(py))) {
            Ok(future) => future,
            Err(error) => {
                // Never awaited: close it, or Python warns about it.
                let _ = coroutine.call_method0("close");
                return Err(error);
            }
        };
        let (sender, receiver) = oneshot::channel();
        let sender = Mutex::new(Some(sender));
        let on_done =
            PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
                let future = args.get_item(0)?;
                let outcome = if future.call_method0("cancelled")?.is_truthy()? {
                    Outcome::Cancelled
                } else {
                    future
                        .call_method0("result")
                        .and_then(|result| result.extract::<(u32, String)>())
                        .map_or(Outcome::Failed, |(code, payload)| {
                            Outcome::Returned(code, payload)
                        })
                };
                let sender = lock(&sender).take();
                if let Some(sender) = sender {
                    let _ = sender.send(outcome);
                }
                Ok(())
            })?;
        future.call_method1("add_done_callback", (on_done,))?;
        Ok((future.unbind(), receiver))
    }

    async fn call(
        &self,
        tool: String,
        arguments: serde_json::Value,
        context: RustCallContext,
    ) -> ToolResult {
        // The server sends the result only once every sender of the call's items is
        // gone; Python may keep the context alive (a traceback, a stored reference),
        // so the context's sender is dropped when the call ends, whatever happens.
        let (client, session_id, request_id) =
            (context.client, context.session_id, context.request_id);
        let live = Arc::new(Mutex::new(Some(context)));
        let _end = EndOnDrop(live.clone());
        let context = CallContext {
            client,
            session_id,
            request_id,
            live,
        };
        let arguments = arguments.to_string();
        let scheduled = with_python(|py| self.schedule(py, tool, arguments, context));
        let (future, outcome) = match scheduled {
            Some(Ok(scheduled)) => scheduled,
            Some(Err(error)) => {
                tracing::warn!(target: "toolwire::server", %error, "toolwire could not start a Python tool handler");
                return Err(ToolError::new(
                    ErrorCode::UNAVAILABLE,
                    "the server is not running",
                ));
            }
            None => {
                return Err(ToolError::new(
                    ErrorCode::UNAVAILABLE,
                    "the server is shutting down",
                ))
            }
        };
        let mut guard = CancelOnDrop(Some(future));
        let outcome = outcome.await;
        guard.0 = None;
        match outcome {
            Ok(Outcome::Returned(0, result)) => {
                serde_json::from_str(&result).map_err(|_| ToolError::internal("the tool failed"))
            }
            Ok(Outcome::Returned(code, message)) => Err(ToolError::new(ErrorCode(code), message)),
            Ok(Outcome::Cancelled) => Err(ToolError::new(
                ErrorCode::UNAVAILABLE,
                "the server is shutting down",
            )),
            Ok(Outcome::Failed) | Err(_) => Err(ToolError::internal("the tool failed")),
        }
    }
}

/// Drops the call's item sender when the call ends.
struct EndOnDrop(Arc<Mutex<Option<RustCallContext>>>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        drop(lock(&self.0).take());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a Python handler knows about the call it serves.
#[pyclass(frozen, module = "toolwire._native")]
pub(crate) struct CallContext {
    client: IdentityKey,
    session_id: [u8; 32],
    request_id: u64,
    /// The call's context while the call runs; `None` once it ended.
    live: Arc<Mutex<Option<RustCallContext>>>,
}

#[pymethods]
impl CallContext {
    /// The caller's authenticated key.
    #[getter]
    fn client(&self) -> PublicKey {
        PublicKey { key: self.client }
    }

    /// The session id.
    #[getter]
    fn session_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.session_id)
    }

    /// The request id.
    #[getter]
    fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Sends a streamed item (JSON text) to the caller. Thread-safe. Items emitted
    /// after the call ended are dropped. While the caller reads more slowly than the
    /// tool emits (the call's queue of `STREAM_QUEUE_PER_CALL` items is full), this
    /// blocks the calling thread, without the GIL, until there is room: backpressure
    /// instead of unbounded memory.
    fn emit(&self, py: Python<'_>, item: &str) -> PyResult<()> {
        let item: serde_json::Value = serde_json::from_str(item)
            .map_err(|error| PyValueError::new_err(format!("item is not valid JSON: {error}")))?;
        let Some(context) = lock(&self.live).clone() else {
            return Ok(());
        };
        match context.try_send_item(item) {
            Ok(()) | Err(TrySendItemError::Ended) => Ok(()),
            Err(TrySendItemError::Full(item)) => {
                if tokio::runtime::Handle::try_current().is_ok() {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "the stream's queue is full and this thread cannot wait for room",
                    ));
                }
                // Not a runtime thread: waiting here is allowed; the GIL is released so
                // the connection tasks (which log through Python) keep running.
                py.detach(|| {
                    let _ = runtime().block_on(context.send_item(item));
                });
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}

/// The authorization hook: `hook(client, tool, arguments_json, session_id,
/// grant_id, policy_version)` returns `None` to allow or a reason (for the decision
/// record) to deny.
struct PythonAuthorizer {
    hook: Py<PyAny>,
}

impl Authorizer for PythonAuthorizer {
    fn authorize(&self, request: &AuthorizationRequest<'_>) -> Decision {
        // Arguments that are not msgpack are refused at step 6 (INVALID_ARGUMENT).
        let Ok(arguments) = rmp_serde::from_slice::<serde_json::Value>(request.args) else {
            return Decision::Allow;
        };
        let arguments = arguments.to_string();
        let verdict = with_python(|py| -> PyResult<Option<String>> {
            self.hook
                .bind(py)
                .call1((
                    PublicKey {
                        key: *request.client,
                    },
                    request.tool,
                    arguments,
                    PyBytes::new(py, request.session_id),
                    request.grant.map(|grant| grant.id.clone()),
                    request.policy_version,
                ))?
                .extract()
        });
        match verdict {
            Some(Ok(None)) => Decision::Allow,
            Some(Ok(Some(reason))) => Decision::deny(reason),
            Some(Err(error)) => Decision::deny(format!("authorization hook failed: {error}")),
            None => Decision::deny("the server is shutting down"),
        }
    }
}

/// Alerts queued for Python at most; beyond, the server drops them (EVT-003: the
/// sink never blocks a connection task) and the events stay in the log.
const ALERT_QUEUE: usize = 256;

/// The alert sink of a Python server: a bounded queue, drained by a task that hands
/// each alert, as a dict, to `callback` on the server's event loop
/// (`call_soon_threadsafe`).
fn alerts_to_python(callback: Py<PyAny>, event_loop: Py<PyAny>) -> mpsc::Sender<Alert> {
    let (sender, mut receiver) = mpsc::channel::<Alert>(ALERT_QUEUE);
    runtime().spawn(async move {
        while let Some(alert) = receiver.recv().await {
            let delivered = with_python(|py| -> PyResult<()> {
                let alert = alert_dict(py, &alert)?;
                event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (callback.bind(py), alert))?;
                Ok(())
            });
            match delivered {
                Some(Ok(())) => {}
                // The loop is closed or the interpreter exits: nobody listens.
                Some(Err(_)) | None => break,
            }
        }
    });
    sender
}

/// An alert as the Python callback receives it: the spec's field names (section 18)
/// as keys, fields that do not apply left out.
fn alert_dict<'py>(py: Python<'py>, alert: &Alert) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let record = &alert.record;
    dict.set_item("event", record.event.name().as_str())?;
    dict.set_item("time", record.time_rfc3339())?;
    dict.set_item("role", record.context.role_str())?;
    dict.set_item("occurrences", alert.occurrences)?;
    if let Some(session_id) = record.session_id_hex() {
        dict.set_item("session_id", session_id)?;
    }
    if let Some(peer_key) = record.peer_key_text() {
        dict.set_item("peer_key", peer_key)?;
    }
    if let Some(peer_addr) = alert.peer_addr {
        dict.set_item("peer_addr", peer_addr.to_string())?;
    }
    let fields = record.event.fields();
    let numbers = [
        ("close_code", fields.close_code.map(u64::from)),
        ("http_status", fields.http_status.map(u64::from)),
        ("epoch", fields.epoch.map(u64::from)),
        ("seq", fields.seq),
        ("length", fields.length),
        ("limit", fields.limit),
        ("retry_after_ms", fields.retry_after_ms),
        ("request_id", fields.request_id),
        ("calls", fields.calls),
        ("window_ms", fields.window_ms),
    ];
    for (name, value) in numbers {
        if let Some(value) = value {
            dict.set_item(name, value)?;
        }
    }
    let texts = [
        ("side", fields.side),
        ("origin", fields.origin.map(PeerText::as_str)),
        ("reason", fields.reason),
        ("kind", fields.kind),
        ("tool", fields.tool.map(PeerText::as_str)),
        ("grant_id", fields.grant_id.map(PeerText::as_str)),
    ];
    for (name, value) in texts {
        if let Some(value) = value {
            dict.set_item(name, value)?;
        }
    }
    if let Some(peer_addr) = fields.peer_addr {
        dict.set_item("peer_addr", peer_addr.to_string())?;
    }
    Ok(dict)
}

/// Applies `(name, value)` pairs to the default limits.
fn limits(overrides: Vec<(String, f64)>) -> PyResult<Limits> {
    let mut limits = Limits::default();
    for (name, value) in overrides {
        let whole = || -> PyResult<u32> {
            if value.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&value) {
                return Err(PyValueError::new_err(format!(
                    "limit {name} must be a whole number, not {value}"
                )));
            }
            Ok(value as u32)
        };
        match name.as_str() {
            "max_in_flight" => limits.max_in_flight = whole()?,
            "rate_per_sec" => limits.rate_per_sec = whole()?,
            "burst" => limits.burst = whole()?,
            "per_tool_rate_per_sec" => limits.per_tool_rate_per_sec = whole()?,
            "per_tool_burst" => limits.per_tool_burst = whole()?,
            "max_consecutive_refusals" => limits.max_consecutive_refusals = whole()?,
            "max_unauthenticated_per_ip" => limits.max_unauthenticated_per_ip = whole()? as usize,
            "max_unauthenticated_total" => limits.max_unauthenticated_total = whole()? as usize,
            "max_clock_skew" => limits.max_clock_skew_secs = i64::from(whole()?),
            "upgrade_timeout" => limits.upgrade_timeout = duration(value)?,
            "handshake_timeout" => limits.connection.handshake_timeout = duration(value)?,
            "idle_timeout" => limits.connection.idle_timeout = duration(value)?,
            "session_lifetime" => limits.connection.session_lifetime = duration(value)?,
            _ => return Err(PyValueError::new_err(format!("unknown limit {name}"))),
        }
    }
    Ok(limits)
}

fn tool(spec: ToolSpec, python: &Arc<PythonSide>) -> PyResult<Tool> {
    let (name, description, input_schema, output_schema) = spec;
    let input_schema: serde_json::Value = serde_json::from_str(&input_schema)
        .map_err(|error| PyValueError::new_err(format!("tool {name}: input schema: {error}")))?;
    let python = python.clone();
    let tool_name = name.clone();
    let mut tool = Tool::new(
        name.clone(),
        description,
        input_schema,
        move |arguments, context| {
            let python = python.clone();
            let tool_name = tool_name.clone();
            async move { python.call(tool_name, arguments, context).await }
        },
    );
    if let Some(output_schema) = output_schema {
        let output_schema: serde_json::Value =
            serde_json::from_str(&output_schema).map_err(|error| {
                PyValueError::new_err(format!("tool {name}: output schema: {error}"))
            })?;
        tool = tool.output_schema(&output_schema);
    }
    Ok(tool)
}

/// Binds `host:port`, builds the server and starts accepting; an awaitable of the
/// running [`ServerHandle`]. Must be called on the loop the handlers run on.
#[pyfunction]
#[pyo3(signature = (
    identity, *, host, port, path, url, allowed_clients, client_tools, grant_issuers,
    allowed_origins, limits, tools, dispatch, authorize, on_alert=None, certificate=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_server<'py>(
    py: Python<'py>,
    identity: &Bound<'py, Identity>,
    host: String,
    port: u16,
    path: String,
    url: Option<String>,
    allowed_clients: Vec<String>,
    client_tools: Vec<(String, Vec<String>)>,
    grant_issuers: Vec<String>,
    allowed_origins: Vec<String>,
    limits: Vec<(String, f64)>,
    tools: Vec<ToolSpec>,
    dispatch: Py<PyAny>,
    authorize: Option<Py<PyAny>>,
    on_alert: Option<Py<PyAny>>,
    certificate: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = crate::runtime::running_loop(py)?.unbind();
    let alert_sink = on_alert.map(|callback| alerts_to_python(callback, event_loop.clone_ref(py)));
    let python = Arc::new(PythonSide {
        dispatch,
        event_loop,
    });
    let identity = identity.get().inner.clone();
    let limits = self::limits(limits)?;
    let allowed_clients = allowed_clients
        .iter()
        .map(|key| parse_key(key))
        .collect::<PyResult<Vec<_>>>()?;
    let client_tools = client_tools
        .into_iter()
        .map(|(key, tools)| Ok((parse_key(&key)?, tools)))
        .collect::<PyResult<Vec<_>>>()?;
    let grant_issuers = grant_issuers
        .iter()
        .map(|key| parse_key(key))
        .collect::<PyResult<Vec<_>>>()?;
    let tools = tools
        .into_iter()
        .map(|spec| tool(spec, &python))
        .collect::<PyResult<Vec<_>>>()?;
    let authorizer = authorize.map(|hook| PythonAuthorizer { hook });
    awaitable(py, async move {
        let listener = TcpListener::bind((host.as_str(), port))
            .await
            .map_err(NativeError::Io)?;
        let address = listener.local_addr().map_err(NativeError::Io)?;
        let url = match url {
            Some(url) => url,
            None if address.ip().is_unspecified() => {
                return Err(NativeError::Value(format!(
                    "listening on all interfaces ({address}): pass url= with the URL clients dial (it is bound into the handshake)"
                )))
            }
            None => {
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                format!("ws://{host}:{}{path}", address.port())
            }
        };
        let mut builder = Server::builder(identity, url.clone()).limits(limits);
        for key in allowed_clients {
            builder = builder.allow_client(key);
        }
        for (key, tools) in client_tools {
            builder = builder.allow_client_tools(key, tools);
        }
        for key in grant_issuers {
            builder = builder.trust_grant_issuer(key);
        }
        for origin in allowed_origins {
            builder = builder.allow_origin(origin);
        }
        for tool in tools {
            builder = builder.tool(tool);
        }
        if let Some(authorizer) = authorizer {
            builder = builder.authorizer(authorizer);
        }
        if let Some(sink) = alert_sink {
            builder = builder.alert_sink(sink);
        }
        if let Some(certificate) = certificate {
            builder = builder.certificate(certificate.trim());
        }
        let server = builder.build().map_err(|error| {
            NativeError::Value(format!("invalid server configuration: {error}"))
        })?;
        let serving = runtime().spawn({
            let server = server.clone();
            async move { server.serve_listener(listener).await }
        });
        Ok(ServerHandle {
            server,
            url,
            address,
            python,
            serving: Mutex::new(Some(serving)),
        })
    })
}

/// A running server.
#[pyclass(frozen, module = "toolwire._native")]
pub(crate) struct ServerHandle {
    server: Server,
    url: String,
    address: SocketAddr,
    python: Arc<PythonSide>,
    serving: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

#[pymethods]
impl ServerHandle {
    /// The URL clients dial (bound into the handshake).
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// The address listened on: `(host, port)`.
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.address.ip().to_string(), self.address.port())
    }

    /// The server's key (what clients pin).
    #[getter]
    fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.server.public_key(),
        }
    }

    /// Replaces the definition of a registered tool (description and schemas) and
    /// re-signs the manifest: live sessions are told (CAP_UPDATE) and their clients
    /// report MANIFEST_CHANGED for it.
    fn replace_tool(&self, py: Python<'_>, spec: ToolSpec) -> PyResult<()> {
        let tool = tool(spec, &self.python)?;
        py.detach(|| self.server.replace_tool(tool))
            .map_err(|error| PyValueError::new_err(error.to_string()))
    }

    /// Removes a client key from the allowlist; its next call is refused.
    fn remove_client(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        let key = parse_key(key)?;
        py.detach(|| self.server.remove_client(&key));
        Ok(())
    }

    /// Revokes a capability grant by id.
    fn revoke_grant(&self, py: Python<'_>, grant_id: &str) {
        py.detach(|| self.server.revoke_grant(grant_id));
    }

    /// Shuts down gracefully: stops accepting, refuses new calls (UNAVAILABLE), lets
    /// calls in flight finish for up to `grace` seconds, answers those still running
    /// then with UNAVAILABLE, and closes every connection (GOING_AWAY). An awaitable
    /// that completes when the listening socket is closed.
    fn close<'py>(&self, py: Python<'py>, grace: f64) -> PyResult<Bound<'py, PyAny>> {
        let grace = duration(grace)?;
        let server = self.server.clone();
        let serving = lock(&self.serving).take();
        awaitable(py, async move {
            if let Err(error) = server.shutdown(grace).await {
                tracing::error!(target: "toolwire::server", %error, "toolwire server shut down; the audit log is incomplete");
            }
            if let Some(serving) = serving {
                let _ = serving.await;
            }
            Ok(())
        })
    }
}

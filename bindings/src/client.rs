//! The agent side: `connect`, sessions and streamed calls.
//!
//! Every method that reads the session's shared state releases the GIL first: the
//! connection task logs (which attaches to Python) while holding that state's lock,
//! so waiting for the lock while attached could deadlock.
//!
//! Values cross the boundary as JSON text; the Python wrappers (`toolwire/client.py`)
//! encode and decode them. The session itself is the Rust client's connection
//! actor, shared behind an `Arc`.

use crate::errors::{to_py_err, NativeError};
use crate::keys::{parse_key, Identity, PublicKey};
use crate::runtime::{awaitable, runtime};
use futures_util::StreamExt as _;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use toolwire_client::{CallOptions, Client, StreamEvent};

/// Parses JSON text from Python.
fn parse_json(text: &str) -> Result<serde_json::Value, NativeError> {
    serde_json::from_str(text)
        .map_err(|error| NativeError::Value(format!("arguments are not valid JSON: {error}")))
}

/// A timeout in seconds from Python.
pub(crate) fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "a timeout is a non-negative number of seconds, not {seconds}"
        ))
    })
}

/// Dials `url`, runs the handshake and waits for the capability grant; returns an
/// awaitable of a [`Session`].
#[pyfunction]
#[pyo3(signature = (url, identity, server_keys, *, tools = None, grants = Vec::new(), origin = None, trust_operators = Vec::new()))]
#[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
pub(crate) fn connect<'py>(
    py: Python<'py>,
    url: String,
    identity: &Bound<'py, Identity>,
    server_keys: Vec<String>,
    tools: Option<Vec<String>>,
    grants: Vec<String>,
    origin: Option<String>,
    trust_operators: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut builder = Client::builder().identity(identity.get().inner.clone());
    for key in &server_keys {
        builder = builder.pin_server(parse_key(key)?);
    }
    for key in &trust_operators {
        builder = builder.trust_operator(parse_key(key)?);
    }
    if let Some(tools) = tools {
        builder = builder.request_tools(tools);
    }
    for grant in grants {
        builder = builder.present_grant(grant.trim());
    }
    if let Some(origin) = origin {
        builder = builder.origin(origin);
    }
    awaitable(py, async move {
        let session = builder.connect(&url).await?;
        Ok(Session {
            inner: Arc::new(session),
        })
    })
}

/// An authenticated session. Dropping it closes the connection.
#[pyclass(frozen, module = "toolwire._native")]
pub(crate) struct Session {
    inner: Arc<toolwire_client::Session>,
}

#[pymethods]
impl Session {
    /// Asks, mid-session, for more tools and presents more grants (CAP_REQUEST); an
    /// awaitable of the complete granted set the server answered with.
    fn request_capabilities<'py>(
        &self,
        py: Python<'py>,
        tools: Vec<String>,
        grants: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        awaitable(py, async move {
            Ok(session
                .request_capabilities(
                    tools,
                    grants.into_iter().map(|g| g.trim().to_owned()).collect(),
                )
                .await?)
        })
    }

    /// Calls `tool` with the JSON text `arguments`; an awaitable of the result as JSON
    /// text. `timeout` (seconds) is sent to the server as the call's deadline and
    /// enforced locally. Cancelling the awaitable sends CANCEL.
    #[pyo3(signature = (tool, arguments, timeout = None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        tool: String,
        arguments: String,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = match timeout {
            Some(seconds) => CallOptions::with_timeout(duration(seconds)?),
            None => CallOptions::default(),
        };
        let session = self.inner.clone();
        awaitable(py, async move {
            let arguments = parse_json(&arguments)?;
            let result = session.call_with(&tool, &arguments, options).await?;
            Ok(result.to_string())
        })
    }

    /// Starts a streamed call of `tool` with the JSON text `arguments`.
    fn stream(&self, py: Python<'_>, tool: &str, arguments: &str) -> PyResult<CallStream> {
        let arguments = parse_json(arguments).map_err(|error| to_py_err(py, error))?;
        let stream = py
            .detach(|| self.inner.stream(tool, &arguments))
            .map_err(|error| to_py_err(py, error.into()))?;
        Ok(CallStream {
            state: Arc::new(StreamState {
                stream: tokio::sync::Mutex::new(Some(stream)),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        })
    }

    /// The signed manifest received at connect time: `(name, description,
    /// input_schema, output_schema, digest)` per tool, schemas as JSON text (empty
    /// when absent) and the digest in hex.
    fn tools(&self, py: Python<'_>) -> Vec<(String, String, String, String, String)> {
        py.detach(|| self.inner.tools())
            .into_iter()
            .map(|tool| {
                let digest: String = tool
                    .digest()
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                (
                    tool.name,
                    tool.description,
                    tool.input_schema,
                    tool.output_schema,
                    digest,
                )
            })
            .collect()
    }

    /// Names of the tools currently granted to this session.
    fn granted_tools(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.inner.granted_tools())
    }

    /// The server's authenticated key.
    #[getter]
    fn server_key(&self, py: Python<'_>) -> Option<PublicKey> {
        py.detach(|| self.inner.server_key())
            .map(|key| PublicKey { key })
    }

    /// The session id (the handshake hash, the same at both ends).
    #[getter]
    fn session_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &py.detach(|| self.inner.session_id()))
    }

    /// The close code, once the connection has closed.
    #[getter]
    fn close_code(&self, py: Python<'_>) -> Option<u16> {
        py.detach(|| self.inner.close_code()).map(|code| code.0)
    }

    /// Starts closing with NORMAL (1000).
    fn close(&self) {
        self.inner.close();
    }

    /// An awaitable that completes when the connection has closed.
    fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.inner.clone();
        awaitable(py, async move {
            while session.close_code().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })
    }
}

struct StreamState {
    stream: tokio::sync::Mutex<Option<toolwire_client::CallStream>>,
    closed: AtomicBool,
    notify: Notify,
}

/// The events of a streamed call.
#[pyclass(frozen, module = "toolwire._native")]
pub(crate) struct CallStream {
    state: Arc<StreamState>,
}

#[pymethods]
impl CallStream {
    /// An awaitable of the next event: `(False, item)` for a streamed item,
    /// `(True, result)` for the final result (JSON text), `None` once the stream
    /// ended or was closed.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        awaitable(py, async move {
            let closed = state.notify.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if state.closed.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let mut guard = tokio::select! {
                guard = state.stream.lock() => guard,
                () = closed.as_mut() => return Ok(None),
            };
            let Some(stream) = guard.as_mut() else {
                return Ok(None);
            };
            let event = tokio::select! {
                event = stream.next() => event,
                () = closed => return Ok(None),
            };
            match event {
                Some(Ok(StreamEvent::Item(item))) => Ok(Some((false, item.to_string()))),
                Some(Ok(StreamEvent::Done(result))) => {
                    *guard = None;
                    Ok(Some((true, result.to_string())))
                }
                Some(Err(error)) => {
                    *guard = None;
                    Err(error.into())
                }
                None => {
                    *guard = None;
                    Ok(None)
                }
            }
        })
    }

    /// Ends the stream; a call that has not finished is cancelled (CANCEL).
    fn close(&self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.state.notify.notify_waiters();
        match self.state.stream.try_lock() {
            Ok(mut guard) => drop(guard.take()),
            Err(_) => {
                let state = self.state.clone();
                runtime().spawn(async move { drop(state.stream.lock().await.take()) });
            }
        }
    }
}

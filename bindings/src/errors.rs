//! The one conversion from Rust errors to the Python exception hierarchy of
//! `toolwire.errors` (defined in Python, so that the classes have normal
//! constructors, attributes, docstrings and pickling).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use toolwire_client::{CallError, ConnectError};
use toolwire_protocol::{CloseCode, ErrorCode};

/// Everything that can go wrong below the Python API.
#[derive(Debug)]
pub(crate) enum NativeError {
    /// A call failed.
    Call(CallError),
    /// A session could not be opened.
    Connect(ConnectError),
    /// The configuration from Python is invalid (`ConfigurationError`, a
    /// `ValueError`).
    Value(String),
    /// A socket or file operation failed.
    Io(std::io::Error),
}

impl From<CallError> for NativeError {
    fn from(error: CallError) -> Self {
        Self::Call(error)
    }
}

impl From<ConnectError> for NativeError {
    fn from(error: ConnectError) -> Self {
        Self::Connect(error)
    }
}

/// The Python class of an RPC error code; codes this version does not know map to
/// the base class `RpcError`.
pub(crate) fn class_for_error_code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::CANCELLED => "Cancelled",
        ErrorCode::UNKNOWN => "UnknownError",
        ErrorCode::INVALID_ARGUMENT => "InvalidArgument",
        ErrorCode::DEADLINE_EXCEEDED => "DeadlineExceeded",
        ErrorCode::NOT_FOUND => "NotFound",
        ErrorCode::PERMISSION_DENIED => "PermissionDenied",
        ErrorCode::RESOURCE_EXHAUSTED => "RateLimited",
        ErrorCode::FAILED_PRECONDITION => "FailedPrecondition",
        ErrorCode::INTERNAL => "InternalError",
        ErrorCode::UNAVAILABLE => "Unavailable",
        ErrorCode::UNAUTHENTICATED => "Unauthenticated",
        ErrorCode::STALE_REQUEST_ID => "StaleRequestId",
        ErrorCode::RESULT_UNAVAILABLE => "ResultUnavailable",
        ErrorCode::GRANT_EXPIRED => "GrantExpired",
        ErrorCode::CAPABILITY_REVOKED => "CapabilityRevoked",
        _ => "RpcError",
    }
}

/// Whether reconnecting after a close with `code` can succeed without any change by
/// the caller.
pub(crate) fn close_is_retryable(code: CloseCode) -> bool {
    matches!(
        code,
        CloseCode::GOING_AWAY
            | CloseCode::TRY_AGAIN_LATER
            | CloseCode::SESSION_EXPIRED
            | CloseCode::RATE_LIMITED
            | CloseCode::TIMEOUT
    )
}

/// The Python class and the keyword arguments that describe `error`.
struct Description {
    class: &'static str,
    message: String,
    code: Option<u32>,
    retryable: bool,
    retry_after: Option<f64>,
    tool: Option<String>,
}

impl Description {
    fn new(class: &'static str, message: String) -> Self {
        Self {
            class,
            message,
            code: None,
            retryable: false,
            retry_after: None,
            tool: None,
        }
    }

    fn code(mut self, code: u32, retryable: bool) -> Self {
        self.code = Some(code);
        self.retryable = retryable;
        self
    }
}

fn describe_call(error: CallError) -> Description {
    let message = error.to_string();
    match error {
        CallError::Rpc {
            code,
            retry_after_ms,
            ..
        } => {
            let mut description = Description::new(class_for_error_code(code), message)
                .code(code.0, code.is_retryable());
            description.retry_after = retry_after_ms.map(|ms| ms as f64 / 1000.0);
            description
        }
        CallError::DeadlineExceeded => Description::new("DeadlineExceeded", message).code(
            ErrorCode::DEADLINE_EXCEEDED.0,
            ErrorCode::DEADLINE_EXCEEDED.is_retryable(),
        ),
        CallError::ConnectionClosed { code }
        | CallError::ReconnectFailed { code, .. }
        | CallError::StreamInterrupted { code } => Description::new("ConnectionClosed", message)
            .code(u32::from(code.0), close_is_retryable(code)),
        CallError::ManifestChanged { tool } => {
            let mut description = Description::new("ManifestChanged", message);
            description.tool = Some(tool);
            description
        }
        CallError::NotGranted { tool } => {
            let mut description = Description::new("PermissionDenied", message)
                .code(ErrorCode::PERMISSION_DENIED.0, false);
            description.tool = Some(tool);
            description
        }
        CallError::Encoding(_) => Description::new("EncodingError", message),
        CallError::BadResponseSignature => Description::new("BadSignature", message),
        _ => Description::new("ToolwireError", message),
    }
}

fn describe_connect(error: ConnectError) -> Description {
    let message = error.to_string();
    match error {
        ConnectError::InsecureOrInvalidUrl(_) | ConnectError::Config(_) => {
            Description::new("ConfigurationError", message)
        }
        ConnectError::Handshake { code, .. } | ConnectError::Closed { code, .. } => {
            let class = if code == CloseCode::AUTH_FAILED {
                "AuthFailed"
            } else {
                "HandshakeFailed"
            };
            Description::new(class, message).code(u32::from(code.0), close_is_retryable(code))
        }
        ConnectError::BadManifest => Description::new("HandshakeFailed", message)
            .code(u32::from(CloseCode::PROTOCOL_VIOLATION.0), false),
        ConnectError::WebSocket(_) | ConnectError::Timeout => {
            let mut description = Description::new("ConnectError", message);
            description.retryable = true;
            description
        }
        _ => Description::new("ConnectError", message),
    }
}

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || py.import("toolwire.errors").map(Bound::unbind))
        .map(|module| module.bind(py))
}

fn instantiate(py: Python<'_>, description: Description) -> PyResult<PyErr> {
    let class = errors_module(py)?.getattr(description.class)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("code", description.code)?;
    kwargs.set_item("retryable", description.retryable)?;
    if let Some(retry_after) = description.retry_after {
        kwargs.set_item("retry_after", retry_after)?;
    }
    if let Some(tool) = description.tool {
        kwargs.set_item("tool", tool)?;
    }
    let exception = class.call((description.message,), Some(&kwargs))?;
    Ok(PyErr::from_value(exception))
}

/// Converts `error` to the Python exception a caller sees.
pub(crate) fn to_py_err(py: Python<'_>, error: NativeError) -> PyErr {
    let description = match error {
        NativeError::Call(error) => describe_call(error),
        NativeError::Connect(error) => describe_connect(error),
        NativeError::Value(message) => Description::new("ConfigurationError", message),
        NativeError::Io(error) => return PyErr::from(error),
    };
    let message = description.message.clone();
    instantiate(py, description).unwrap_or_else(|failure| {
        PyRuntimeError::new_err(format!(
            "{message} (and toolwire.errors could not describe it: {failure})"
        ))
    })
}

/// Every RPC error code of the protocol: `(code, name, class name, retryable)`.
#[pyfunction]
pub(crate) fn error_codes() -> Vec<(u32, &'static str, &'static str, bool)> {
    ErrorCode::ALL
        .iter()
        .map(|code| {
            (
                code.0,
                code.name().unwrap_or("UNKNOWN_ERROR_CODE"),
                class_for_error_code(*code),
                code.is_retryable(),
            )
        })
        .collect()
}

/// Every close code of the protocol: `(code, name, retryable)`.
#[pyfunction]
pub(crate) fn close_codes() -> Vec<(u16, &'static str, bool)> {
    CloseCode::ALL
        .iter()
        .map(|code| {
            (
                code.0,
                code.name().unwrap_or("UNKNOWN_CLOSE_CODE"),
                close_is_retryable(*code),
            )
        })
        .collect()
}

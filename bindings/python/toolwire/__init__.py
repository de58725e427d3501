"""toolwire: secure tool calls for AI agents over WebSockets.

A tool server::

    server = toolwire.ToolServer(identity=toolwire.Identity.load("server.key"),
                                 allowed_clients=[agent_key])

    @server.tool
    async def add(a: int, b: int) -> int:
        \"\"\"Adds two integers.\"\"\"
        return a + b

    server.run("127.0.0.1", 7700)

An agent::

    async with toolwire.connect(url, identity=me, server_key=server_key) as session:
        print(await session.call("add", {"a": 2, "b": 3}))

Rust ``tracing`` events reach Python's ``logging`` under the ``toolwire`` logger;
call :func:`reset_log_cache` after reconfiguring logging.
"""

from toolwire._native import Identity, PublicKey, __version__, reset_log_cache
from toolwire.client import CallStream, Connect, Session, ToolInfo, connect
from toolwire.errors import (
    AuthFailed,
    BadSignature,
    Cancelled,
    CapabilityRevoked,
    CloseCode,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    DeadlineExceeded,
    EncodingError,
    ErrorCode,
    FailedPrecondition,
    GrantExpired,
    HandshakeFailed,
    InternalError,
    InvalidArgument,
    ManifestChanged,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    ResultUnavailable,
    RpcError,
    StaleRequestId,
    ToolError,
    ToolwireError,
    Unauthenticated,
    Unavailable,
    UnknownError,
    error_for_code,
)
from toolwire.server import AuthorizationRequest, Context, Limits, RunningServer, ToolServer

__all__ = [
    "AuthFailed",
    "AuthorizationRequest",
    "BadSignature",
    "CallStream",
    "Cancelled",
    "CapabilityRevoked",
    "CloseCode",
    "ConfigurationError",
    "Connect",
    "ConnectError",
    "ConnectionClosed",
    "Context",
    "DeadlineExceeded",
    "EncodingError",
    "ErrorCode",
    "FailedPrecondition",
    "GrantExpired",
    "HandshakeFailed",
    "Identity",
    "InternalError",
    "InvalidArgument",
    "Limits",
    "ManifestChanged",
    "NotFound",
    "PermissionDenied",
    "PublicKey",
    "RateLimited",
    "ResourceExhausted",
    "ResultUnavailable",
    "RpcError",
    "RunningServer",
    "Session",
    "StaleRequestId",
    "ToolError",
    "ToolInfo",
    "ToolServer",
    "ToolwireError",
    "Unauthenticated",
    "Unavailable",
    "UnknownError",
    "__version__",
    "connect",
    "error_for_code",
    "reset_log_cache",
]

"""The exceptions of toolwire.

Every exception raised by toolwire derives from :class:`ToolwireError`, which
carries ``code`` (the protocol's RPC error code or close code, ``None`` when the
failure has none) and ``retryable`` (whether trying again later, unchanged, can
succeed). Rust errors are converted to these classes in one place in the native
module (``bindings/src/errors.rs``).

::

    ToolwireError
    ├── ConfigurationError (also ValueError)   bad URL, missing pin, invalid settings
    ├── ConnectError                           TCP/WebSocket failure, connect timeout
    │   └── HandshakeFailed                    the handshake failed (code: close code)
    │       └── AuthFailed                     4001: a key was not trusted
    ├── ConnectionClosed                       the session closed (code: close code)
    ├── ManifestChanged                        a tool's definition changed since connect
    ├── BadSignature                           a response signature did not verify
    ├── EncodingError (also ValueError)        a value could not be encoded or decoded
    └── RpcError                               the server answered ERROR (code: RPC code)
        ├── Cancelled                 1
        ├── UnknownError              2
        ├── InvalidArgument           3  (also ValueError)
        ├── DeadlineExceeded          4  (also TimeoutError)
        ├── NotFound                  5  (also LookupError)
        ├── PermissionDenied          7
        ├── RateLimited               8  RESOURCE_EXHAUSTED, with retry_after
        ├── FailedPrecondition        9
        ├── InternalError            13
        ├── Unavailable              14
        ├── Unauthenticated          16
        ├── StaleRequestId          100
        ├── ResultUnavailable       101
        ├── GrantExpired            102
        └── CapabilityRevoked       103

A tool handler raises :class:`ToolError` (or any :class:`RpcError` subclass) to
answer with a specific code.

This module does not import the native extension.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "AuthFailed",
    "BadSignature",
    "Cancelled",
    "CapabilityRevoked",
    "CloseCode",
    "ConfigurationError",
    "ConnectError",
    "ConnectionClosed",
    "DeadlineExceeded",
    "EncodingError",
    "ErrorCode",
    "FailedPrecondition",
    "GrantExpired",
    "HandshakeFailed",
    "InternalError",
    "InvalidArgument",
    "ManifestChanged",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ResourceExhausted",
    "ResultUnavailable",
    "RpcError",
    "StaleRequestId",
    "ToolError",
    "ToolwireError",
    "Unauthenticated",
    "Unavailable",
    "UnknownError",
    "error_for_code",
]


class ErrorCode(enum.IntEnum):
    """RPC error codes carried in ERROR messages (1-16 reuse the gRPC names)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16
    STALE_REQUEST_ID = 100
    RESULT_UNAVAILABLE = 101
    GRANT_EXPIRED = 102
    CAPABILITY_REVOKED = 103


class CloseCode(enum.IntEnum):
    """Connection close codes (1000-1013 from RFC 6455, 4000-4010 toolwire's)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    HANDSHAKE_FAILED = 4000
    AUTH_FAILED = 4001
    VERSION_UNSUPPORTED = 4002
    DECRYPT_FAILED = 4003
    REPLAY_DETECTED = 4004
    SEQUENCE_EXHAUSTED = 4005
    SESSION_EXPIRED = 4006
    CAPABILITY_REVOKED = 4007
    RATE_LIMITED = 4008
    TIMEOUT = 4009
    PROTOCOL_VIOLATION = 4010


def _rebuild(cls: type[ToolwireError], message: str, state: dict[str, Any]) -> ToolwireError:
    error = cls.__new__(cls, message)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ToolwireError(Exception):
    """Root of every toolwire exception.

    ``code`` is the protocol code (an RPC error code for :class:`RpcError`, a close
    code for :class:`ConnectionClosed` and :class:`HandshakeFailed`), ``None`` when
    there is none; ``retryable`` tells whether the same operation may succeed later
    without any change.
    """

    code: int | None = None
    retryable: bool = False
    #: Seconds to wait before retrying, when the server said (RESOURCE_EXHAUSTED).
    retry_after: float | None = None
    #: The tool concerned, when the failure is about one tool.
    tool: str | None = None

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        tool: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        if retry_after is not None:
            self.retry_after = retry_after
        if tool is not None:
            self.tool = tool

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


class ConfigurationError(ToolwireError, ValueError):
    """The request cannot work as configured: an invalid or insecure URL, no pinned
    server key, an invalid key or limit."""


class ConnectError(ToolwireError):
    """A session could not be opened: TCP connect or the WebSocket upgrade failed
    (an HTTP refusal such as 403 for a foreign Origin included), or it timed out."""


class HandshakeFailed(ConnectError):
    """The toolwire handshake failed; ``code`` is the close code (4000 when the URL
    does not match the server's configured URL, for instance)."""


class AuthFailed(HandshakeFailed):
    """4001 AUTH_FAILED: the server's key is not the pinned one, or the server does
    not trust this client's key."""

    code = CloseCode.AUTH_FAILED


class ConnectionClosed(ToolwireError):
    """The session closed before the operation finished; ``code`` is the close
    code."""

    @property
    def close_code(self) -> int | None:
        """The close code (same as ``code``)."""
        return self.code


class ManifestChanged(ToolwireError):
    """The definition of ``tool`` changed since this session approved the server's
    manifest: it is not callable in this session (open a new one to approve the new
    definition)."""


class BadSignature(ToolwireError):
    """A response's envelope signature did not verify under the pinned server key."""


class EncodingError(ToolwireError, ValueError):
    """A value could not be encoded (arguments) or decoded (a result)."""


class RpcError(ToolwireError):
    """The server answered the call with an ERROR; ``code`` is its RPC error code."""

    @property
    def name(self) -> str | None:
        """The code's protocol name (``"PERMISSION_DENIED"``), ``None`` if unknown."""
        try:
            return ErrorCode(self.code).name if self.code is not None else None
        except ValueError:
            return None


class Cancelled(RpcError):
    """1 CANCELLED: the call was cancelled before it produced a result."""

    code = ErrorCode.CANCELLED


class UnknownError(RpcError):
    """2 UNKNOWN: the tool failed in a way it did not classify."""

    code = ErrorCode.UNKNOWN


class InvalidArgument(RpcError, ValueError):
    """3 INVALID_ARGUMENT: the arguments are not valid for the tool (its schema)."""

    code = ErrorCode.INVALID_ARGUMENT


class DeadlineExceeded(RpcError, TimeoutError):
    """4 DEADLINE_EXCEEDED: the call's deadline (``timeout=``) passed."""

    code = ErrorCode.DEADLINE_EXCEEDED
    retryable = True


class NotFound(RpcError, LookupError):
    """5 NOT_FOUND: the tool, or what the call names, does not exist."""

    code = ErrorCode.NOT_FOUND


class PermissionDenied(RpcError):
    """7 PERMISSION_DENIED: this caller may not call this tool (not granted, or the
    server's policy refuses)."""

    code = ErrorCode.PERMISSION_DENIED


class RateLimited(RpcError):
    """8 RESOURCE_EXHAUSTED: a rate or concurrency budget is exhausted; retry after
    ``retry_after`` seconds."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    retryable = True


#: The protocol's name for :class:`RateLimited`.
ResourceExhausted = RateLimited


class FailedPrecondition(RpcError):
    """9 FAILED_PRECONDITION: the system is not in a state the call needs."""

    code = ErrorCode.FAILED_PRECONDITION


class InternalError(RpcError):
    """13 INTERNAL: the server or the tool failed internally."""

    code = ErrorCode.INTERNAL


class Unavailable(RpcError):
    """14 UNAVAILABLE: the server cannot serve the call now; retry later."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class Unauthenticated(RpcError):
    """16 UNAUTHENTICATED: the request's envelope signature did not verify."""

    code = ErrorCode.UNAUTHENTICATED


class StaleRequestId(RpcError):
    """100 STALE_REQUEST_ID: the request id is older than the at-most-once window;
    the call may have run and will not run again."""

    code = ErrorCode.STALE_REQUEST_ID


class ResultUnavailable(RpcError):
    """101 RESULT_UNAVAILABLE: the call was seen before but its result is no longer
    held: its outcome is unknown and it will not run again."""

    code = ErrorCode.RESULT_UNAVAILABLE


class GrantExpired(RpcError):
    """102 GRANT_EXPIRED: the grant authorizing the call has expired."""

    code = ErrorCode.GRANT_EXPIRED


class CapabilityRevoked(RpcError):
    """103 CAPABILITY_REVOKED: the capability authorizing the call was revoked."""

    code = ErrorCode.CAPABILITY_REVOKED


_BY_CODE: dict[int, type[RpcError]] = {
    int(cls.code): cls
    for cls in RpcError.__subclasses__()
    if isinstance(cls.code, int)
}


def error_for_code(code: int) -> type[RpcError]:
    """The exception class of an RPC error code (:class:`RpcError` for a code this
    version does not know)."""
    return _BY_CODE.get(code, RpcError)


class ToolError(Exception):
    """Raised by a tool handler to answer the call with ERROR(``code``, ``message``).

    The message travels to the caller: never put secrets in it. Any other exception
    a handler raises is answered INTERNAL with a generic message (and logged on the
    server).
    """

    def __init__(self, message: str, *, code: int = ErrorCode.UNKNOWN) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)

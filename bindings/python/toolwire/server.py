"""The tool-server side: ``ToolServer``, tools from plain Python functions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, overload

from toolwire import _native, _schema
from toolwire._native import Identity, PublicKey
from toolwire.errors import ConfigurationError, ErrorCode, PermissionDenied, RpcError, ToolError

__all__ = [
    "AuthorizationRequest",
    "Context",
    "Limits",
    "RunningServer",
    "ToolServer",
]

logger = logging.getLogger("toolwire.server")

F = TypeVar("F", bound=Callable[..., Any])

_Kind = Literal["async", "sync", "async_generator", "sync_generator"]


class Context:
    """What a handler knows about the call it serves. A handler receives it by
    declaring a parameter annotated ``toolwire.Context`` (any name); that parameter
    is not part of the tool's schema."""

    def __init__(self, native: _native.CallContext, tool: str) -> None:
        self._native = native
        #: The tool called.
        self.tool = tool

    @property
    def client(self) -> PublicKey:
        """The caller's authenticated key."""
        return self._native.client

    @property
    def session_id(self) -> bytes:
        """The caller's session id."""
        return self._native.session_id

    @property
    def request_id(self) -> int:
        """The request id (unique within the session)."""
        return self._native.request_id

    def emit(self, item: Any) -> None:
        """Streams ``item`` (JSON data) to the caller before the result, as progress
        or partial results. Thread-safe."""
        self._native.emit(json.dumps(_schema.to_json(item), allow_nan=False))

    def __repr__(self) -> str:
        return f"<toolwire.Context tool={self.tool!r} request_id={self.request_id} client={self.client}>"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Server limits; ``None`` keeps the server's default (given in brackets)."""

    #: Calls in flight per connection [64].
    max_in_flight: int | None = None
    #: Sustained calls per second per client key [100].
    rate_per_sec: int | None = None
    #: Burst of the per-client bucket [200].
    burst: int | None = None
    #: Sustained calls per second per (client, tool) [100].
    per_tool_rate_per_sec: int | None = None
    #: Burst of the per-(client, tool) bucket [200].
    per_tool_burst: int | None = None
    #: Consecutive RESOURCE_EXHAUSTED refusals before the connection is closed
    #: with RATE_LIMITED (4008) [100].
    max_consecutive_refusals: int | None = None
    #: Unauthenticated connections per IP address [64].
    max_unauthenticated_per_ip: int | None = None
    #: Unauthenticated connections in total [1024].
    max_unauthenticated_total: int | None = None
    #: Tolerated clock difference with grant issuers, seconds [30].
    max_clock_skew: int | None = None
    #: Seconds allowed for the HTTP upgrade [5].
    upgrade_timeout: float | None = None
    #: Seconds allowed for the handshake [5].
    handshake_timeout: float | None = None
    #: Seconds without any record from the client before closing [90].
    idle_timeout: float | None = None
    #: Maximum age of a session in seconds [3720].
    session_lifetime: float | None = None

    def _pairs(self) -> list[tuple[str, float]]:
        return [
            (field.name, float(value))
            for field in dataclasses.fields(self)
            if (value := getattr(self, field.name)) is not None
        ]


@dataclasses.dataclass(frozen=True)
class AuthorizationRequest:
    """One call, as the authorization hook sees it."""

    #: The caller's authenticated key.
    client: PublicKey
    #: The tool called (already known to be granted to the session).
    tool: str
    #: The arguments (decoded JSON), not yet validated against the tool's schema.
    arguments: Any
    #: The caller's session id.
    session_id: bytes
    #: The id of the capability grant the call relies on, if any.
    grant_id: str | None
    #: Version of the server's policy the call is judged against.
    policy_version: int


AuthorizeHook = Callable[[AuthorizationRequest], bool]

AlertHandler = Callable[[dict[str, Any]], None]
"""Receives one alert (spec section 18): a dict with the keys ``event`` (the event
name, e.g. ``"origin_rejected"``), ``time`` (RFC 3339, UTC), ``role``,
``occurrences`` (events of the kind counted in the window, 1 when there is no
threshold), ``peer_addr``, ``session_id`` and ``peer_key`` when known, and the
event's own fields (``origin``, ``http_status``, ``reason``, ``epoch``, ``seq``,
``tool``, ``request_id``, ...). Peer-controlled text is escaped and at most 128
bytes long. Never holds keys, tokens, signatures, arguments or results."""


@dataclasses.dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    kind: _Kind
    signature: _schema.Signature

    def spec(self) -> tuple[str, str, str, str | None]:
        output = self.signature.output_schema
        return (
            self.name,
            self.description,
            json.dumps(self.signature.input_schema),
            None if output is None else json.dumps(output),
        )


def _kind(fn: Callable[..., Any]) -> _Kind:
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.isgeneratorfunction(fn):
        return "sync_generator"
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "sync"


class RunningServer:
    """A server accepting connections (from :meth:`ToolServer.listen` or
    :meth:`ToolServer.start`)."""

    def __init__(self, server: ToolServer, native: _native.ServerHandle) -> None:
        self._server = server
        self._native = native
        self._closed = False

    @property
    def url(self) -> str:
        """The URL clients dial (bound into the handshake)."""
        return self._native.url

    @property
    def host(self) -> str:
        """The address listened on."""
        return self._native.address[0]

    @property
    def port(self) -> int:
        """The port listened on (useful with ``port=0``)."""
        return self._native.address[1]

    @property
    def public_key(self) -> PublicKey:
        """The server's key (what clients pin)."""
        return self._native.public_key

    def remove_client(self, key: PublicKey | str) -> None:
        """Removes a client key from the allowlist: its next call is refused."""
        self._native.remove_client(str(key))

    def revoke_grant(self, grant_id: str) -> None:
        """Revokes a capability grant: the next call relying on it is refused."""
        self._native.revoke_grant(grant_id)

    async def aclose(self, grace: float = 5.0) -> None:
        """Shuts down gracefully: stops accepting, refuses new calls with
        UNAVAILABLE, lets calls in flight finish for up to ``grace`` seconds, answers
        those still running then with UNAVAILABLE (their handlers are cancelled),
        and closes every connection (GOING_AWAY, 1001)."""
        if self._closed:
            return
        self._closed = True
        await self._native.close(grace)
        await self._server._stopped(self)

    def __repr__(self) -> str:
        return f"<toolwire.RunningServer url={self.url!r} public_key={self.public_key}>"


class ToolServer:
    """A tool server: register tools with :meth:`tool`, then :meth:`serve` (or
    :meth:`run`, :meth:`listen`).

    ``allowed_clients`` are the client keys that may call every tool;
    ``client_tools`` maps further client keys to the only tools they may call;
    ``grant_issuers`` are keys whose capability grants are trusted. At least one of
    them must be given. ``allowed_origins`` are the browser origins allowed to
    connect (``https://app.example``; default: none). ``authorize`` is a per-call
    policy hook (see :meth:`authorizer`). ``on_alert`` receives the server's alerts
    (a foreign ``Origin``, repeated authentication failures from one address, replayed
    or tampered records, oversize frames, rate-limit refusals past a threshold, ...)
    as dicts (see :data:`AlertHandler`), called on the event loop; without it alerts
    are logged at WARNING on ``toolwire.alert``. Alerts that arrive faster than the
    loop takes them (more than 256 queued) are dropped, never slowing the server. Synchronous handlers run in
    ``sync_executor`` (default: the event loop's default executor). ``certificate``
    is an operator's certificate of this server's key (``toolwire cert issue``),
    presented in every handshake so that clients trusting the operator
    (``connect(trust_operators=...)``) need not pin the key; a certificate of
    another key is refused when the server starts.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        allowed_clients: Iterable[PublicKey | str] = (),
        client_tools: Mapping[PublicKey | str, Iterable[str]] | None = None,
        grant_issuers: Iterable[PublicKey | str] = (),
        allowed_origins: Iterable[str] = (),
        limits: Limits | None = None,
        authorize: AuthorizeHook | None = None,
        on_alert: AlertHandler | None = None,
        certificate: str | None = None,
        path: str = "/toolwire",
        sync_executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.identity = identity
        self._allowed_clients = [_key_text(key) for key in allowed_clients]
        self._client_tools = [
            (_key_text(key), list(tools)) for key, tools in (client_tools or {}).items()
        ]
        self._grant_issuers = [_key_text(key) for key in grant_issuers]
        self._allowed_origins = list(allowed_origins)
        self._limits = limits or Limits()
        self._authorize = authorize
        self._on_alert = on_alert
        self._certificate = certificate
        if not path.startswith("/"):
            raise ConfigurationError(f"path must start with '/', not {path!r}")
        self._path = path
        self._executor = sync_executor
        self._tools: dict[str, _Tool] = {}
        self._running: RunningServer | None = None
        self._active: set[asyncio.Task[Any]] = set()

    @property
    def public_key(self) -> PublicKey:
        """The server's key (what clients pin)."""
        return self.identity.public_key

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """The registered tools, by name."""
        return {name: tool.fn for name, tool in self._tools.items()}

    def schema(self, name: str) -> dict[str, Any]:
        """The input JSON Schema of the tool ``name``."""
        return self._tools[name].signature.input_schema

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self, fn: None = None, /, *, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> F | Callable[[F], F]:
        """Registers a function as a tool; use as ``@server.tool`` or
        ``@server.tool(name=..., description=...)``.

        The name defaults to the function's name and the description to its
        docstring; the input schema is derived from the type hints. ``async def``
        handlers run on the server's event loop, plain ``def`` handlers in a worker
        thread; generators (``async`` or not) stream each item they yield, and the
        final result is ``None``.
        """

        def register(function: F) -> F:
            if self._running is not None:
                raise RuntimeError("tools cannot be added while the server runs (use replace_tool)")
            tool = self._describe(function, name, description)
            if tool.name in self._tools:
                raise ValueError(f"a tool named {tool.name!r} is already registered")
            self._tools[tool.name] = tool
            return function

        if fn is not None:
            return register(fn)
        return register

    def replace_tool(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        """Replaces the registered tool of the same name. On a running server the
        manifest is re-signed and live sessions are told: their clients raise
        :class:`~toolwire.ManifestChanged` for the tool until they reconnect."""
        tool = self._describe(fn, name, description)
        if tool.name not in self._tools:
            raise KeyError(f"no tool named {tool.name!r}")
        if self._running is not None:
            self._running._native.replace_tool(tool.spec())
        self._tools[tool.name] = tool

    def authorizer(self, hook: AuthorizeHook) -> AuthorizeHook:
        """Sets the per-call authorization hook (decorator form of ``authorize=``).

        The hook receives an :class:`AuthorizationRequest` for every call that
        passed the allowlist, grant and rate checks, and returns ``True`` to allow
        it. Returning ``False`` or raising (``toolwire.PermissionDenied("why")``
        gives the reason for the server's log) refuses the call with
        PERMISSION_DENIED; the reason never reaches the caller. The hook is called
        synchronously on a Rust worker thread, not on the event loop: keep it fast
        and thread-safe.
        """
        if self._running is not None:
            raise RuntimeError("the authorization hook cannot change while the server runs")
        self._authorize = hook
        return hook

    def _describe(self, fn: Callable[..., Any], name: str | None, description: str | None) -> _Tool:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        tool_name = name or getattr(fn, "__name__", None)
        if not tool_name:
            raise ValueError("the tool needs a name")
        return _Tool(
            name=tool_name,
            description=description if description is not None else (inspect.getdoc(fn) or ""),
            fn=fn,
            kind=_kind(fn),
            signature=_schema.describe(fn, Context),
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, url: str | None = None) -> RunningServer:
        """Starts accepting on ``host:port`` (``port=0`` picks a free port) and
        returns at once. ``url`` is the URL clients dial when it is not
        ``ws://host:port/toolwire`` (behind a proxy; required when listening on all
        interfaces). Handlers run on the calling event loop."""
        if self._running is not None:
            raise RuntimeError("the server is already running")
        native = await _native.start_server(
            self.identity,
            host=host,
            port=port,
            path=self._path,
            url=url,
            allowed_clients=self._allowed_clients,
            client_tools=self._client_tools,
            grant_issuers=self._grant_issuers,
            allowed_origins=self._allowed_origins,
            limits=self._limits._pairs(),
            tools=[tool.spec() for tool in self._tools.values()],
            dispatch=self._dispatch,
            authorize=None if self._authorize is None else self._check_authorization,
            on_alert=self._on_alert,
            certificate=self._certificate,
        )
        self._running = RunningServer(self, native)
        logger.info("toolwire server listening on %s (key %s)", native.url, native.public_key)
        return self._running

    async def _stopped(self, running: RunningServer) -> None:
        if self._running is running:
            self._running = None
        active = [task for task in self._active if not task.done()]
        for task in active:
            task.cancel()
        if active:
            await asyncio.gather(*active, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def listen(
        self, host: str = "127.0.0.1", port: int = 0, *, url: str | None = None
    ) -> AsyncIterator[RunningServer]:
        """``async with server.listen(port=0) as running:`` serves while the block
        runs (``running.url``, ``running.public_key``), then closes."""
        running = await self.start(host, port, url=url)
        try:
            yield running
        finally:
            await running.aclose()

    async def serve(self, host: str = "127.0.0.1", port: int = 7700, *, url: str | None = None) -> None:
        """Serves until cancelled."""
        async with self.listen(host, port, url=url):
            await asyncio.Event().wait()

    def run(self, host: str = "127.0.0.1", port: int = 7700, *, url: str | None = None) -> None:
        """Serves until interrupted (Ctrl-C), printing the URL and key clients
        need."""

        async def main() -> None:
            async with self.listen(host, port, url=url) as running:
                print(f"toolwire server listening on {running.url}", flush=True)
                print(f"  key          {running.public_key}", flush=True)
                print(f"  fingerprint  {running.public_key.fingerprint}", flush=True)
                await asyncio.Event().wait()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    # ------------------------------------------------------------------ dispatch

    def _check_authorization(
        self,
        client: PublicKey,
        tool: str,
        arguments: str,
        session_id: bytes,
        grant_id: str | None,
        policy_version: int,
    ) -> str | None:
        """Called by the native server, on a worker thread: ``None`` allows, a
        reason denies."""
        hook = self._authorize
        if hook is None:
            return None
        try:
            request = AuthorizationRequest(
                client, tool, json.loads(arguments), session_id, grant_id, policy_version
            )
            allowed: object = hook(request)
        except PermissionDenied as error:
            return str(error) or "refused by the authorization hook"
        except Exception as error:
            logger.exception("toolwire authorization hook failed for %s", tool)
            return f"the authorization hook raised {type(error).__name__}"
        if inspect.isawaitable(allowed):
            if inspect.iscoroutine(allowed):
                allowed.close()
            logger.error("toolwire authorization hook must be synchronous; call to %s refused", tool)
            return "the authorization hook is not synchronous"
        return None if allowed is True else "refused by the authorization hook"

    async def _dispatch(self, name: str, arguments: str, native: _native.CallContext) -> tuple[int, str]:
        """Runs one call on the server's loop: ``(0, result JSON)`` or ``(code,
        message)``. Cancelled when the call is (CANCEL, deadline, disconnect)."""
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            tool = self._tools.get(name)
            if tool is None:
                return ErrorCode.NOT_FOUND, f"no tool named {name}"
            context = Context(native, name)
            try:
                kwargs = self._bind(tool, json.loads(arguments), context)
                result = await self._invoke(tool, kwargs, context)
                return 0, json.dumps(_schema.to_json(result), allow_nan=False)
            except ToolError as error:
                return error.code, error.message
            except RpcError as error:
                return int(error.code or ErrorCode.UNKNOWN), error.message
            except _schema.CONVERSION_ERRORS as error:
                return ErrorCode.INVALID_ARGUMENT, f"invalid arguments: {error}"
            except Exception:
                logger.exception("toolwire tool %s failed", name)
                return ErrorCode.INTERNAL, "the tool failed"
        finally:
            if task is not None:
                self._active.discard(task)

    @staticmethod
    def _bind(tool: _Tool, arguments: Any, context: Context) -> dict[str, Any]:
        if not isinstance(arguments, dict):
            raise _schema.ArgumentError("arguments must be an object")
        parameters = tool.signature.parameters
        kwargs = {
            key: _schema.convert(parameters[key], value)
            for key, value in arguments.items()
            if key in parameters
        }
        if tool.signature.context_parameter is not None:
            kwargs[tool.signature.context_parameter] = context
        return kwargs

    async def _invoke(self, tool: _Tool, kwargs: dict[str, Any], context: Context) -> Any:
        loop = asyncio.get_running_loop()
        if tool.kind == "async":
            return await tool.fn(**kwargs)
        if tool.kind == "sync":
            call = functools.partial(contextvars.copy_context().run, tool.fn, **kwargs)
            return await loop.run_in_executor(self._executor, call)
        if tool.kind == "async_generator":
            generator = tool.fn(**kwargs)
            try:
                async for item in generator:
                    context.emit(item)
            finally:
                await generator.aclose()
            return None
        cancelled = threading.Event()
        iterate = functools.partial(
            contextvars.copy_context().run, _drain, tool.fn, kwargs, context, cancelled
        )
        try:
            await loop.run_in_executor(self._executor, iterate)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None


def _drain(
    fn: Callable[..., Iterable[Any]],
    kwargs: dict[str, Any],
    context: Context,
    cancelled: threading.Event,
) -> None:
    """Runs a synchronous generator in a worker thread, streaming its items until it
    ends or the call is cancelled."""
    generator = fn(**kwargs)
    try:
        for item in generator:
            if cancelled.is_set():
                break
            context.emit(item)
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()


def _key_text(key: PublicKey | str) -> str:
    try:
        return str(PublicKey(str(key)))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None

"""The agent side: ``connect()``, sessions, calls and streamed calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, NamedTuple

from toolwire import _native
from toolwire._native import Identity, PublicKey
from toolwire._schema import to_json
from toolwire.errors import ConfigurationError, EncodingError

__all__ = ["CallStream", "Connect", "Session", "ToolInfo", "connect"]

#: How long ``Session.aclose()`` waits for the authenticated CLOSE to go out.
_CLOSE_WAIT = 1.0


def _encode(arguments: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(to_json(dict(arguments or {})), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EncodingError(f"arguments are not JSON: {error}") from None


class ToolInfo(NamedTuple):
    """One tool of the server's signed manifest."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    #: SHA-256 digest of the tool's definition, hex (what a grant is bound to).
    digest: str
    #: Whether the tool is granted to this session now.
    granted: bool


class Session:
    """An authenticated session with a tool server.

    Many calls may run concurrently over the one connection. Use it as an async
    context manager (``async with toolwire.connect(...) as session``) or close it
    with :meth:`aclose`.
    """

    def __init__(self, native: _native.Session) -> None:
        self._native = native

    @property
    def tools(self) -> list[ToolInfo]:
        """The tools of the signed manifest received (and verified) at connect time:
        the definitions this session approved."""
        granted = set(self._native.granted_tools())
        return [
            ToolInfo(
                name,
                description,
                json.loads(input_schema) if input_schema else {},
                json.loads(output_schema) if output_schema else None,
                digest,
                name in granted,
            )
            for name, description, input_schema, output_schema, digest in self._native.tools()
        ]

    @property
    def granted_tools(self) -> frozenset[str]:
        """Names of the tools this session may call now."""
        return frozenset(self._native.granted_tools())

    async def request_capabilities(
        self, tools: Iterable[str] = (), grants: Iterable[str] = ()
    ) -> frozenset[str]:
        """Asks the server, mid-session, for more ``tools`` and presents more
        ``grants`` (for example a grant bound to this session's id, which cannot be
        presented when connecting). Returns the complete granted set the server
        answered with; grants that do not verify are disregarded, so check it."""
        granted = await self._native.request_capabilities(list(tools), [str(g) for g in grants])
        return frozenset(granted)

    @property
    def server_key(self) -> PublicKey:
        """The server's authenticated key."""
        key = self._native.server_key
        assert key is not None, "an open session knows its server"
        return key

    @property
    def session_id(self) -> bytes:
        """The session id (the handshake hash, the same at both ends)."""
        return self._native.session_id

    @property
    def close_code(self) -> int | None:
        """The close code once the connection has closed, else ``None``."""
        return self._native.close_code

    @property
    def closed(self) -> bool:
        """Whether the connection has closed."""
        return self._native.close_code is not None

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Calls ``tool`` and returns its result (decoded JSON).

        ``timeout`` (seconds) is sent to the server as the call's deadline and
        enforced here: past it the call fails with :class:`~toolwire.DeadlineExceeded`
        and the server is sent CANCEL. Cancelling the awaiting task (``task.cancel()``,
        ``asyncio.timeout()``) also sends CANCEL.

        Raises :class:`~toolwire.RpcError` subclasses for the server's error codes,
        :class:`~toolwire.ManifestChanged`, :class:`~toolwire.ConnectionClosed`.
        """
        result = await self._native.call(tool, _encode(arguments), timeout)
        return json.loads(result)

    def stream(self, tool: str, arguments: Mapping[str, Any] | None = None) -> CallStream:
        """Starts a streamed call: iterate it (``async for item in ...``) for the items
        the tool streams; the final result is then in :attr:`CallStream.result`.
        Leaving an ``async with`` block, or :meth:`CallStream.aclose`, before the end
        sends CANCEL."""
        return CallStream(self._native.stream(tool, _encode(arguments)))

    async def aclose(self) -> None:
        """Closes the session (NORMAL, 1000) and waits briefly for the close to go
        out."""
        self._native.close()
        try:
            await asyncio.wait_for(self._native.wait_closed(), _CLOSE_WAIT)
        except asyncio.TimeoutError:
            pass

    async def wait_closed(self) -> None:
        """Waits until the connection has closed (by either side)."""
        await self._native.wait_closed()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<toolwire.Session server_key={self._native.server_key} close_code={self.close_code}>"


class CallStream(AsyncIterator[Any]):
    """The items of a streamed call, in order; then :attr:`result` holds the final
    result."""

    def __init__(self, native: _native.CallStream) -> None:
        self._native = native
        self._done = False
        #: The final result, once iteration has ended normally.
        self.result: Any = None

    def __aiter__(self) -> CallStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._native.next()
        except Exception:
            self._done = True
            raise
        # A cancelled __anext__ (asyncio.CancelledError) loses nothing: iteration
        # may go on.
        if event is None:
            self._done = True
            raise StopAsyncIteration
        final, payload = event
        value = json.loads(payload)
        if final:
            self._done = True
            self.result = value
            raise StopAsyncIteration
        return value

    async def aclose(self) -> None:
        """Ends the stream; a call still running is cancelled (CANCEL)."""
        self._done = True
        self._native.close()

    async def __aenter__(self) -> CallStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class Connect:
    """What :func:`connect` returns: await it for a :class:`Session`, or use it as an
    async context manager that closes the session on exit."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        server_keys: list[str],
        tools: list[str] | None,
        grants: list[str],
        origin: str | None,
        trust_operators: list[str] | None = None,
    ) -> None:
        self._url = url
        self._identity = identity
        self._server_keys = server_keys
        self._tools = tools
        self._grants = grants
        self._origin = origin
        self._trust_operators = trust_operators or []
        self._session: Session | None = None

    async def _open(self) -> Session:
        native = await _native.connect(
            self._url,
            self._identity,
            self._server_keys,
            tools=self._tools,
            grants=self._grants,
            origin=self._origin,
            trust_operators=self._trust_operators,
        )
        return Session(native)

    def __await__(self) -> Generator[Any, None, Session]:
        return self._open().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._open()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.aclose()


def connect(
    url: str,
    *,
    identity: Identity,
    server_key: PublicKey | str | Iterable[PublicKey | str],
    tools: Iterable[str] | None = None,
    grants: Iterable[str] = (),
    origin: str | None = None,
    trust_operators: Iterable[PublicKey | str] = (),
) -> Connect:
    """Opens a session with the tool server at ``url``.

    ``url`` must be exactly the URL the server is configured with (it is bound
    into the handshake). ``server_key`` pins the server's identity (one key, or
    several accepted keys): a server proving any other key is refused with
    :class:`~toolwire.AuthFailed`. ``tools`` narrows the tools asked for (default:
    every tool the server allows); ``grants`` are capability grant tokens to
    present; ``origin`` sends an ``Origin`` header. ``trust_operators`` are operator
    keys: a server presenting a valid certificate by one of them is accepted without
    being pinned (then ``server_key`` may be empty).

    ``await connect(...)`` returns a :class:`Session`; ``async with connect(...) as
    session`` also closes it. Raises :class:`~toolwire.ConnectError` (and its
    subclasses :class:`~toolwire.HandshakeFailed`, :class:`~toolwire.AuthFailed`) or
    :class:`~toolwire.ConfigurationError`.
    """
    pins = [server_key] if isinstance(server_key, (PublicKey, str)) else list(server_key)
    try:
        keys = [str(PublicKey(str(key))) for key in pins]
        operators = [str(PublicKey(str(key))) for key in trust_operators]
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return Connect(
        url,
        identity,
        keys,
        None if tools is None else list(tools),
        [str(grant) for grant in grants],
        origin,
        operators,
    )

"""Interoperability with the Rust implementation, through the ``toolwire`` CLI:
Python client ↔ Rust server (``toolwire serve``) and Rust client (``toolwire
call``/``tools``) ↔ Python server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import toolwire
from conftest import PythonServer, RustServer, run

# ------------------------------------------------------------ Python client → Rust server


async def test_python_client_calls_the_rust_server(rust_server: RustServer, client_identity: toolwire.Identity) -> None:
    async with toolwire.connect(rust_server.url, identity=client_identity, server_key=rust_server.key) as session:
        assert str(session.server_key) == rust_server.key
        assert {tool.name for tool in session.tools} >= {"echo", "calc", "count"}
        assert await session.call("echo", {"text": "hi"}) == {"text": "hi"}
        assert await session.call("calc", {"a": 6, "op": "*", "b": 7}) == {"result": 42}
        calc = next(tool for tool in session.tools if tool.name == "calc")
        assert calc.input_schema["required"] == ["a", "op", "b"]
        assert calc.output_schema is not None


async def test_python_client_streams_from_the_rust_server(
    rust_server: RustServer, client_identity: toolwire.Identity
) -> None:
    async with toolwire.connect(rust_server.url, identity=client_identity, server_key=rust_server.key) as session:
        stream = session.stream("count", {"to": 4, "delay_ms": 1})
        assert [item async for item in stream] == [1, 2, 3, 4]
        assert stream.result == {"count": 4}


async def test_rust_server_errors_map_to_python_exceptions(
    rust_server: RustServer, client_identity: toolwire.Identity
) -> None:
    async with toolwire.connect(rust_server.url, identity=client_identity, server_key=rust_server.key) as session:
        with pytest.raises(toolwire.InvalidArgument, match="division by zero"):
            await session.call("calc", {"a": 1, "op": "/", "b": 0})
        with pytest.raises(toolwire.InvalidArgument):
            await session.call("echo", {"text": 42})
        with pytest.raises(toolwire.RpcError) as caught:
            await session.call("read_file", {"path": "x"})  # not offered without --sandbox
        assert caught.value.code in (toolwire.ErrorCode.NOT_FOUND, toolwire.ErrorCode.PERMISSION_DENIED)


async def test_rust_server_rate_limits_python_client(rust_server: RustServer, client_identity: toolwire.Identity) -> None:
    # The CLI server allows 100 calls/s with a burst of 200 per client, and closes a
    # connection after 100 consecutive refusals with RATE_LIMITED (4008).
    async with toolwire.connect(rust_server.url, identity=client_identity, server_key=rust_server.key) as session:
        outcomes = await asyncio.gather(
            *(session.call("echo", {"text": str(i)}) for i in range(400)), return_exceptions=True
        )
    limited = [outcome for outcome in outcomes if isinstance(outcome, toolwire.RateLimited)]
    assert limited, "expected some calls to be refused with RESOURCE_EXHAUSTED"
    assert all(error.retryable and error.retry_after and error.retry_after > 0 for error in limited)
    closed = [outcome for outcome in outcomes if isinstance(outcome, toolwire.ConnectionClosed)]
    assert all(error.code == toolwire.CloseCode.RATE_LIMITED for error in closed)
    assert len(limited) + len(closed) + sum(isinstance(outcome, dict) for outcome in outcomes) == 400


async def test_cancelling_a_call_to_the_rust_server(rust_server: RustServer, client_identity: toolwire.Identity) -> None:
    async with toolwire.connect(rust_server.url, identity=client_identity, server_key=rust_server.key) as session:
        call = asyncio.create_task(session.call("count", {"to": 50, "delay_ms": 200}))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(toolwire.DeadlineExceeded):
            await session.call("count", {"to": 50, "delay_ms": 200}, timeout=0.2)
        assert await session.call("echo", {"text": "still open"}) == {"text": "still open"}


async def test_rust_server_refuses_an_unknown_python_client(rust_server: RustServer) -> None:
    with pytest.raises(toolwire.AuthFailed):
        await toolwire.connect(rust_server.url, identity=toolwire.Identity.generate(), server_key=rust_server.key)


# ------------------------------------------------------------ Rust client → Python server


@pytest.fixture
async def py_server(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> AsyncIterator[PythonServer]:
    server = toolwire.ToolServer(
        server_identity,
        allowed_clients=[],
        client_tools={client_identity.public_key: ["add", "letters", "fail", "slow"]},
    )
    server.cancelled = asyncio.Event()  # type: ignore[attr-defined]

    @server.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool
    def letters(word: str) -> Iterator[str]:
        """Streams the letters of a word."""
        yield from word

    @server.tool
    async def fail(code: int) -> None:
        """Answers ERROR(code)."""
        raise toolwire.ToolError("refused on purpose", code=code)

    @server.tool
    async def slow() -> None:
        """Sleeps until cancelled."""
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            server.cancelled.set()  # type: ignore[attr-defined]
            raise

    @server.tool
    async def secret() -> str:
        """Not allowed to the client."""
        return "secret"

    async with server.listen() as running:
        yield PythonServer(server, running, client_identity)


@pytest.fixture
def agent_key_file(tmp_path: Path, client_identity: toolwire.Identity) -> Path:
    path = tmp_path / "agent.key"
    client_identity.save(path)
    return path


async def cli_call(cli: Path, server: PythonServer, key_file: Path, tool: str, args: object, *extra: str) -> tuple[int, str, str]:
    completed = await run(
        cli, "call", server.url, tool, json.dumps(args),
        "--identity", key_file, "--server-key", str(server.running.public_key), *extra,
    )
    return completed.returncode, completed.stdout, completed.stderr


async def test_rust_client_calls_the_python_server(cli: Path, py_server: PythonServer, agent_key_file: Path) -> None:
    code, stdout, stderr = await cli_call(cli, py_server, agent_key_file, "add", {"a": 2, "b": 3})
    assert code == 0, stderr
    assert json.loads(stdout) == 5


async def test_rust_client_streams_from_the_python_server(
    cli: Path, py_server: PythonServer, agent_key_file: Path
) -> None:
    code, stdout, stderr = await cli_call(cli, py_server, agent_key_file, "letters", {"word": "abc"})
    assert code == 0, stderr
    assert json.loads(stdout) is None
    assert [line for line in stderr.splitlines() if line.startswith("item: ")] == [
        'item: "a"', 'item: "b"', 'item: "c"'
    ]


async def test_rust_client_sees_python_error_codes(cli: Path, py_server: PythonServer, agent_key_file: Path) -> None:
    code, _, stderr = await cli_call(cli, py_server, agent_key_file, "fail", {"code": 9})
    assert code == 1
    assert "FAILED_PRECONDITION(9): refused on purpose" in stderr
    code, _, stderr = await cli_call(cli, py_server, agent_key_file, "secret", {})
    assert code == 1
    assert "PERMISSION_DENIED(7)" in stderr
    code, _, stderr = await cli_call(cli, py_server, agent_key_file, "add", {"a": "two", "b": 3})
    assert code == 1
    assert "INVALID_ARGUMENT(3)" in stderr


async def test_rust_client_timeout_cancels_the_python_handler(
    cli: Path, py_server: PythonServer, agent_key_file: Path
) -> None:
    code, _, stderr = await cli_call(cli, py_server, agent_key_file, "slow", {}, "--timeout", "1")
    assert code == 1
    assert "did not answer within 1 s" in stderr
    await asyncio.wait_for(py_server.server.cancelled.wait(), 5)  # type: ignore[attr-defined]


async def test_rust_client_lists_the_python_servers_signed_manifest(
    cli: Path, py_server: PythonServer, agent_key_file: Path
) -> None:
    completed = await run(
        cli, "tools", py_server.url, "--json",
        "--identity", agent_key_file, "--server-key", str(py_server.running.public_key),
    )
    assert completed.returncode == 0, completed.stderr
    manifest = json.loads(completed.stdout)
    assert manifest["server"] == str(py_server.running.public_key)
    tools = {tool["name"]: tool for tool in manifest["tools"]}
    assert tools["add"]["description"] == "Adds two integers."
    assert tools["add"]["input_schema"] == py_server.server.schema("add")
    assert tools["add"]["output_schema"] == {"type": "integer"}
    assert tools["add"]["granted"] and not tools["secret"]["granted"]
    # The Python client computes the same digests from the same signed manifest.
    async with py_server.connect() as session:
        assert {tool.name: tool.digest for tool in session.tools} == {
            name: tool["digest"] for name, tool in tools.items()
        }


async def test_rust_client_with_a_wrong_server_key_fails_to_connect(
    cli: Path, py_server: PythonServer, agent_key_file: Path
) -> None:
    completed = await run(
        cli, "call", py_server.url, "add", '{"a": 1, "b": 2}',
        "--identity", agent_key_file, "--server-key", str(toolwire.Identity.generate().public_key),
    )
    assert completed.returncode == 3
    assert "AUTH_FAILED" in completed.stderr


# ------------------------------------------------------------ capability grants (issued by the CLI)


async def issue_grant(cli: Path, tmp_path: Path, holder: toolwire.PublicKey, audience: toolwire.PublicKey,
                      tools: str, ttl: str, grant_id: str) -> tuple[toolwire.PublicKey, str]:
    issuer = toolwire.Identity.generate()
    issuer_file = tmp_path / f"issuer-{grant_id}.key"
    issuer.save(issuer_file)
    issued = await run(
        cli, "grant", "issue", "--issuer", issuer_file, "--holder", str(holder),
        "--audience", str(audience), "--tools", tools, "--ttl", ttl, "--id", grant_id,
    )
    assert issued.returncode == 0, issued.stderr
    return issuer.public_key, issued.stdout.strip()


async def test_grants_from_a_trusted_issuer_and_their_revocation(
    cli: Path, tmp_path: Path, server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> None:
    issuer, token = await issue_grant(
        cli, tmp_path, client_identity.public_key, server_identity.public_key, "add", "1h", "grant-1"
    )
    server = toolwire.ToolServer(server_identity, grant_issuers=[issuer])

    @server.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool
    async def other() -> None:
        """Not covered by the grant."""

    async with server.listen() as running:
        with pytest.raises(toolwire.AuthFailed):
            await toolwire.connect(running.url, identity=client_identity, server_key=running.public_key)
        async with toolwire.connect(
            running.url, identity=client_identity, server_key=running.public_key, grants=[token]
        ) as session:
            assert session.granted_tools == {"add"}
            assert await session.call("add", {"a": 1, "b": 2}) == 3
            with pytest.raises(toolwire.PermissionDenied):
                await session.call("other")
            running.revoke_grant("grant-1")
            with pytest.raises(toolwire.CapabilityRevoked) as caught:
                await session.call("add", {"a": 1, "b": 2})
            assert caught.value.code == toolwire.ErrorCode.CAPABILITY_REVOKED
            # Its only grant revoked, the session is closed (GRT-042).
            await asyncio.wait_for(session.wait_closed(), 5)
            assert session.close_code == toolwire.CloseCode.CAPABILITY_REVOKED


async def test_an_expired_grant_is_refused(
    cli: Path, tmp_path: Path, server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> None:
    issuer, token = await issue_grant(
        cli, tmp_path, client_identity.public_key, server_identity.public_key, "*", "2s", "short"
    )
    server = toolwire.ToolServer(
        server_identity, grant_issuers=[issuer], limits=toolwire.Limits(max_clock_skew=0)
    )

    @server.tool
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    async with server.listen() as running:
        async with toolwire.connect(
            running.url, identity=client_identity, server_key=running.public_key, grants=[token]
        ) as session:
            assert await session.call("add", {"a": 1, "b": 2}) == 3
            await asyncio.sleep(3)
            with pytest.raises(toolwire.GrantExpired) as caught:
                await session.call("add", {"a": 1, "b": 2})
            assert caught.value.code == toolwire.ErrorCode.GRANT_EXPIRED

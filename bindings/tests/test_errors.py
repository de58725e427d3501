"""The exception hierarchy: every RPC error code over the wire, connect failures,
and the properties of the classes themselves."""

from __future__ import annotations

import pickle
import socket
from collections.abc import AsyncIterator

import pytest

import toolwire
from toolwire import _native
from conftest import PythonServer


@pytest.fixture
async def failing_server(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> AsyncIterator[PythonServer]:
    server = toolwire.ToolServer(server_identity, allowed_clients=[client_identity.public_key])

    @server.tool
    async def fail(code: int) -> None:
        """Answers with ERROR(code)."""
        raise toolwire.ToolError(f"failed with {code}", code=code)

    @server.tool
    async def raise_rpc_error(code: int) -> None:
        """Raises the exception class of the code (as a proxy would re-raise it)."""
        raise toolwire.error_for_code(code)(f"re-raised {code}")

    async with server.listen() as running:
        yield PythonServer(server, running, client_identity)


def test_python_and_rust_code_tables_agree() -> None:
    native = _native.error_codes()
    assert {code: name for code, name, _, _ in native} == {code.value: code.name for code in toolwire.ErrorCode}
    for code, _name, class_name, retryable in native:
        cls = toolwire.error_for_code(code)
        assert cls.__name__ == class_name
        assert cls.code == code
        assert cls.retryable is retryable
        assert issubclass(cls, toolwire.RpcError) and issubclass(cls, toolwire.ToolwireError)
    assert {code: name for code, name, _ in _native.close_codes()} == {
        code.value: code.name for code in toolwire.CloseCode
    }
    assert toolwire.error_for_code(4242) is toolwire.RpcError


async def test_every_error_code_maps_to_its_exception(failing_server: PythonServer) -> None:
    async with failing_server.connect() as session:
        for code in toolwire.ErrorCode:
            for tool in ("fail", "raise_rpc_error"):
                with pytest.raises(toolwire.RpcError) as caught:
                    await session.call(tool, {"code": int(code)})
                error = caught.value
                assert type(error) is toolwire.error_for_code(code), (tool, code)
                assert error.code == code
                assert error.name == code.name
                assert error.retryable is (
                    code in (toolwire.ErrorCode.RESOURCE_EXHAUSTED, toolwire.ErrorCode.UNAVAILABLE,
                             toolwire.ErrorCode.DEADLINE_EXCEEDED)
                )
                assert "failed with" in str(error) or "re-raised" in str(error)
                if code == toolwire.ErrorCode.RESOURCE_EXHAUSTED:
                    assert error.retry_after is not None and error.retry_after > 0


async def test_codes_outside_the_table_become_unknown(failing_server: PythonServer) -> None:
    async with failing_server.connect() as session:
        with pytest.raises(toolwire.UnknownError):
            await session.call("fail", {"code": 4242})


def test_exceptions_pickle_and_mix_in_the_standard_classes() -> None:
    error = toolwire.RateLimited("slow down", code=8, retryable=True, retry_after=1.5)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is toolwire.RateLimited
    assert (str(copy), copy.code, copy.retryable, copy.retry_after) == ("slow down", 8, True, 1.5)
    deadline = pickle.loads(pickle.dumps(toolwire.DeadlineExceeded("late", code=4)))
    assert isinstance(deadline, TimeoutError) and str(deadline) == "late" and deadline.errno is None
    assert issubclass(toolwire.InvalidArgument, ValueError)
    assert issubclass(toolwire.NotFound, LookupError)
    assert issubclass(toolwire.ConfigurationError, ValueError)
    assert issubclass(toolwire.AuthFailed, toolwire.HandshakeFailed)
    assert issubclass(toolwire.HandshakeFailed, toolwire.ConnectError)
    assert not issubclass(toolwire.PermissionDenied, OSError)
    closed = pickle.loads(pickle.dumps(toolwire.ConnectionClosed("gone", code=1001, retryable=True)))
    assert closed.close_code == 1001 and closed.retryable


async def test_wrong_pinned_server_key_is_auth_failed(failing_server: PythonServer) -> None:
    impostor = toolwire.Identity.generate().public_key
    with pytest.raises(toolwire.AuthFailed) as caught:
        await toolwire.connect(failing_server.url, identity=failing_server.client, server_key=impostor)
    assert caught.value.code == toolwire.CloseCode.AUTH_FAILED
    assert not caught.value.retryable


async def test_unknown_client_is_auth_failed(failing_server: PythonServer) -> None:
    stranger = toolwire.Identity.generate()
    with pytest.raises(toolwire.AuthFailed) as caught:
        await toolwire.connect(failing_server.url, identity=stranger, server_key=failing_server.running.public_key)
    assert caught.value.code == toolwire.CloseCode.AUTH_FAILED


async def test_url_other_than_the_configured_one_fails_the_handshake(failing_server: PythonServer) -> None:
    other_url = failing_server.url.replace("127.0.0.1", "localhost")
    with pytest.raises(toolwire.HandshakeFailed) as caught:
        await toolwire.connect(other_url, identity=failing_server.client, server_key=failing_server.running.public_key)
    assert not isinstance(caught.value, toolwire.AuthFailed)
    assert caught.value.code == toolwire.CloseCode.HANDSHAKE_FAILED


async def test_nothing_listening_is_a_retryable_connect_error(client_identity: toolwire.Identity) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(toolwire.ConnectError) as caught:
        await toolwire.connect(
            f"ws://127.0.0.1:{port}/toolwire", identity=client_identity, server_key=client_identity.public_key
        )
    assert type(caught.value) is toolwire.ConnectError
    assert caught.value.retryable and caught.value.code is None


async def test_configuration_errors(client_identity: toolwire.Identity) -> None:
    key = client_identity.public_key
    with pytest.raises(toolwire.ConfigurationError, match="loopback"):
        await toolwire.connect("ws://tools.example/toolwire", identity=client_identity, server_key=key)
    with pytest.raises(toolwire.ConfigurationError):
        await toolwire.connect("http://127.0.0.1:1/", identity=client_identity, server_key=key)
    with pytest.raises(toolwire.ConfigurationError, match="not a public key"):
        toolwire.connect("ws://127.0.0.1:1/toolwire", identity=client_identity, server_key="nope")
    with pytest.raises(toolwire.ConfigurationError, match="pin at least one"):
        await toolwire.connect("ws://127.0.0.1:1/toolwire", identity=client_identity, server_key=[])


async def test_unencodable_arguments(failing_server: PythonServer) -> None:
    async with failing_server.connect() as session:
        with pytest.raises(toolwire.EncodingError):
            await session.call("fail", {"code": object()})
        with pytest.raises(toolwire.EncodingError):
            await session.call("fail", {"code": float("nan")})

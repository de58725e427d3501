"""Trust by operator certificate and mid-session capability requests, Python client
against the Rust server (``toolwire serve --certificate``): a client that pins no
server key but trusts the operator connects and calls; one trusting another operator
is refused with AuthFailed; ``request_capabilities`` widens the granted set.

Clauses: ID-011, ID-014, GRT-039."""

from __future__ import annotations

from pathlib import Path

import pytest

import toolwire
from conftest import RustServer, run, serve_rust


async def _certified_server_args(cli: Path, tmp_path: Path, operator: toolwire.Identity, server: toolwire.Identity) -> list[str]:
    operator_file = tmp_path / "operator.key"
    operator.save(operator_file)
    issued = await run(
        cli, "cert", "issue", "--operator", operator_file,
        "--server-key", str(server.public_key), "--ttl", "1h",
    )
    assert issued.returncode == 0, issued.stderr
    certificate = tmp_path / "server.cert"
    certificate.write_text(issued.stdout.strip())
    return ["--certificate", str(certificate)]


async def test_a_client_trusting_the_operator_needs_no_pin(
    cli: Path, tmp_path: Path, client_identity: toolwire.Identity
) -> None:
    operator = toolwire.Identity.generate()
    server = toolwire.Identity.generate()
    args = await _certified_server_args(cli, tmp_path, operator, server)
    async with serve_rust(cli, tmp_path, server, "--allow-client", str(client_identity.public_key), *args) as rust:
        async with toolwire.connect(
            rust.url, identity=client_identity, server_key=[], trust_operators=[operator.public_key]
        ) as session:
            assert str(session.server_key) == rust.key
            assert await session.call("echo", {"text": "certified"}) == {"text": "certified"}
        with pytest.raises(toolwire.AuthFailed):
            await toolwire.connect(
                rust.url,
                identity=client_identity,
                server_key=[],
                trust_operators=[toolwire.Identity.generate().public_key],
            )


async def test_request_capabilities_widens_the_granted_set(
    rust_server: RustServer, client_identity: toolwire.Identity
) -> None:
    async with toolwire.connect(
        rust_server.url, identity=client_identity, server_key=rust_server.key, tools=["count"]
    ) as session:
        assert session.granted_tools == {"count"}
        granted = await session.request_capabilities(["echo"])
        assert granted == {"count", "echo"}
        assert session.granted_tools == {"count", "echo"}
        assert await session.call("echo", {"text": "now granted"}) == {"text": "now granted"}


async def test_a_python_server_presents_its_certificate(
    cli: Path, tmp_path: Path, client_identity: toolwire.Identity
) -> None:
    operator = toolwire.Identity.generate()
    identity = toolwire.Identity.generate()
    args = await _certified_server_args(cli, tmp_path, operator, identity)
    certificate = Path(args[1]).read_text()
    server = toolwire.ToolServer(identity, allowed_clients=[client_identity.public_key], certificate=certificate)

    @server.tool()
    async def shout(text: str) -> str:
        return text.upper()

    running = await server.start()
    try:
        async with toolwire.connect(
            running.url, identity=client_identity, server_key=[], trust_operators=[operator.public_key]
        ) as session:
            assert await session.call("shout", {"text": "hi"}) == "HI"
    finally:
        await running.aclose()
    other = toolwire.ToolServer(
        toolwire.Identity.generate(), allowed_clients=[client_identity.public_key], certificate=certificate
    )
    with pytest.raises(toolwire.ConfigurationError, match="another server identity"):
        await other.start()

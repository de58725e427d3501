"""Rust ``tracing`` events reach Python ``logging`` under the ``toolwire`` logger."""

from __future__ import annotations

import logging

import pytest

import toolwire


async def test_rust_events_are_logging_records_under_toolwire(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="toolwire")
    toolwire.reset_log_cache()
    server = toolwire.ToolServer(server_identity, allowed_clients=[client_identity.public_key])

    @server.tool
    async def ping() -> str:
        """Answers pong."""
        return "pong"

    async with server.listen() as running:
        async with toolwire.connect(running.url, identity=client_identity, server_key=running.public_key) as session:
            assert await session.call("ping") == "pong"
    names = {record.name for record in caplog.records}
    assert "toolwire.decision" in names
    assert "toolwire.server.connection" in names
    assert all(name.startswith("toolwire") for name in names)
    decision = next(record for record in caplog.records if record.name == "toolwire.decision")
    assert decision.levelno == logging.INFO
    assert "tool=ping" in decision.getMessage() and "Execute" in decision.getMessage()


async def test_levels_follow_logging_after_reset(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="toolwire")
    toolwire.reset_log_cache()
    server = toolwire.ToolServer(server_identity, allowed_clients=[client_identity.public_key])

    @server.tool
    async def ping() -> str:
        """Answers pong."""
        return "pong"

    async with server.listen() as running:
        async with toolwire.connect(running.url, identity=client_identity, server_key=running.public_key) as session:
            assert await session.call("ping") == "pong"
        # A refused connection logs a warning on the server.
        with pytest.raises(toolwire.AuthFailed):
            await toolwire.connect(
                running.url, identity=toolwire.Identity.generate(), server_key=running.public_key
            )
    assert not [record for record in caplog.records if record.name == "toolwire.decision"]
    assert all(record.levelno >= logging.WARNING for record in caplog.records if record.name.startswith("toolwire"))

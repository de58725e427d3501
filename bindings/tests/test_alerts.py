"""Alerts of a Python tool server (spec section 18, EVT-003): a real attack over
loopback reaches the ``on_alert`` callback, on the event loop, with the spec's
event name and fields."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import toolwire


async def upgrade_status(host: str, port: int, path: str, origin: str) -> int:
    """Sends a WebSocket upgrade with ``origin`` by hand; returns the HTTP status."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Protocol: toolwire.v1\r\nOrigin: {origin}\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_foreign_origin_reaches_on_alert(
    server_identity: toolwire.Identity, client_identity: toolwire.Identity
) -> None:
    alerts: list[dict[str, Any]] = []
    threads: list[threading.Thread] = []

    def on_alert(alert: dict[str, Any]) -> None:
        threads.append(threading.current_thread())
        alerts.append(alert)

    server = toolwire.ToolServer(
        server_identity,
        allowed_clients=[client_identity.public_key],
        allowed_origins=["https://app.example"],
        on_alert=on_alert,
    )

    @server.tool
    async def ping() -> str:
        """Answers pong."""
        return "pong"

    running = await server.start()
    try:
        status = await upgrade_status(running.host, running.port, "/toolwire", 'https://evil.example/"x')
        assert status == 403
        for _ in range(500):
            if alerts:
                break
            await asyncio.sleep(0.01)
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert["event"] == "origin_rejected"
        assert alert["origin"] == 'https://evil.example/\\"x'
        assert alert["http_status"] == 403
        assert alert["role"] == "server"
        assert alert["occurrences"] == 1
        assert alert["peer_addr"].startswith("127.0.0.1:")
        assert alert["time"].endswith("Z")
        assert "session_id" not in alert
        # Called on the event loop's thread.
        assert threads == [threading.main_thread()]
        # The allowed origin raises nothing and the server still serves.
        async with toolwire.connect(running.url, identity=client_identity, server_key=server.public_key) as session:
            assert await session.call("ping", {}) == "pong"
        assert len(alerts) == 1
    finally:
        await running.aclose(grace=0)

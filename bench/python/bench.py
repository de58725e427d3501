"""Python benchmark of toolwire, side by side with its baselines, in one run.

Each system's server runs in a child process (this script with ``--serve KIND``) and
the clients in this process (one asyncio loop), on loopback:

- toolwire: the ``toolwire`` package's client calling an ``echo`` tool of a
  ``toolwire.ToolServer`` (signed envelopes, sealed records; each connection with its
  own identity, as separate agents would be);
- websockets: a ``websockets`` echo server and client (compression off): the
  transport's limit in Python;
- MCP: the MCP Python SDK (``FastMCP`` server, ``ClientSession`` client) calling an
  ``echo`` tool over its streamable HTTP transport.

For each: sequential calls on one connection (calls/s and p50 latency), then
``--concurrency`` connections calling in closed loops (calls/s and p50), medians over
``--reps`` repetitions. Every answer is checked. The last line of stdout is a JSON
report that ``toolwire-bench`` renders; the rest goes to stderr.

Run by ``cargo run --release -p toolwire-bench -- python`` (or ``all``), which
prepares the virtualenv; by hand: ``bench/python/.venv/bin/python bench/python/bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any

PAYLOAD = 64
TEXT = "x" * (PAYLOAD - 5)
UNLIMITED = 100_000_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- servers (children)


async def serve_toolwire(keys_file: str) -> None:
    import toolwire

    keys = open(keys_file).read().split()
    limits = toolwire.Limits(
        rate_per_sec=UNLIMITED,
        burst=UNLIMITED,
        per_tool_rate_per_sec=UNLIMITED,
        per_tool_burst=UNLIMITED,
    )
    server = toolwire.ToolServer(toolwire.Identity.generate(), allowed_clients=keys, limits=limits)

    @server.tool
    async def echo(d: str) -> str:
        """Returns its argument."""
        return d

    running = await server.start("127.0.0.1", 0)
    print(f"READY {running.url} {running.public_key}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await running.aclose(grace=1.0)


async def serve_websockets() -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY ws://127.0.0.1:{port}/ -", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def serve_mcp() -> None:
    from mcp.server.fastmcp import FastMCP

    port = free_port()
    mcp = FastMCP("bench", host="127.0.0.1", port=port, log_level="WARNING")
    # Each client that closes its session makes the SDK log a ClosedResourceError
    # traceback; they are not failures (every answer is checked on the client side).
    logging.getLogger("mcp.server.streamable_http").setLevel(logging.CRITICAL)

    @mcp.tool()
    def echo(d: str) -> str:
        """Returns its argument."""
        return d

    print(f"READY http://127.0.0.1:{port}/mcp -", flush=True)
    mcp.run(transport="streamable-http")


# ---------------------------------------------------------------- clients

Caller = Callable[[], Awaitable[None]]


class Toolwire:
    label = "toolwire (Python client → Python server)"
    kind = "toolwire"

    def __init__(self, url: str, key: str, identities: list[Any]) -> None:
        self.url, self.key, self.identities, self.next = url, key, identities, 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Caller]:
        import toolwire

        identity = self.identities[self.next % len(self.identities)]
        self.next += 1
        async with toolwire.connect(self.url, identity=identity, server_key=self.key) as session:

            async def call() -> None:
                result = await session.call("echo", {"d": TEXT})
                if result != TEXT:
                    raise RuntimeError(f"toolwire echo answered {result!r}")

            yield call


class Websockets:
    label = "websockets echo (Python)"
    kind = "websockets"

    def __init__(self, url: str) -> None:
        self.url = url

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Caller]:
        from websockets.asyncio.client import connect

        payload = b"x" * PAYLOAD
        async with connect(self.url, compression=None) as ws:

            async def call() -> None:
                await ws.send(payload)
                if await ws.recv() != payload:
                    raise RuntimeError("websockets echo answered other bytes")

            yield call


class Mcp:
    label = "MCP Python SDK (streamable HTTP)"
    kind = "mcp"

    def __init__(self, url: str) -> None:
        self.url = url

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Caller]:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async with streamable_http_client(self.url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()

            async def call() -> None:
                result = await session.call_tool("echo", {"d": TEXT})
                text = getattr(result.content[0], "text", None) if result.content else None
                if result.isError or text != TEXT:
                    raise RuntimeError(f"MCP echo answered {result!r}")

            yield call


# ---------------------------------------------------------------- measurement


def p50_us(latencies: list[float]) -> float:
    return statistics.median(latencies) * 1e6 if latencies else float("nan")


async def sequential(system: Any, warmup: float, duration: float) -> tuple[float, float, int]:
    async with system.connection() as call:
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            await call()
        latencies: list[float] = []
        start = time.perf_counter()
        end = start + duration
        while True:
            before = time.perf_counter()
            await call()
            now = time.perf_counter()
            latencies.append(now - before)
            if now >= end:
                break
        return len(latencies) / (now - start), p50_us(latencies), len(latencies)


async def concurrent(system: Any, connections: int, warmup: float, duration: float) -> tuple[float, float, int]:
    latencies: list[float] = []
    state = {"measuring": False, "stop": False}
    ready = asyncio.Barrier(connections + 1)

    async def loop() -> None:
        async with system.connection() as call:
            await ready.wait()
            while not state["stop"]:
                before = time.perf_counter()
                await call()
                if state["measuring"]:
                    latencies.append(time.perf_counter() - before)

    tasks = [asyncio.create_task(loop()) for _ in range(connections)]
    waiting = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:  # a connection failed before the barrier
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
    await asyncio.sleep(warmup)
    state["measuring"] = True
    start = time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - start
    state["stop"] = True
    await asyncio.gather(*tasks)
    return len(latencies) / elapsed, p50_us(latencies), len(latencies)


@contextlib.contextmanager
def child(kind: str, *extra: str) -> Any:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if len(line) != 3 or line[0] != "READY":
            raise RuntimeError(f"{kind} server did not start: {line}")
        yield line[1], line[2]
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for_http(url: str) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not start listening")


async def measure(system: Any, args: argparse.Namespace) -> dict[str, Any]:
    seq_rates, seq_p50s, conc_rates, conc_p50s, calls = [], [], [], [], 0
    for rep in range(args.reps):
        rate, p50, count = await sequential(system, args.warmup, args.duration)
        seq_rates.append(rate)
        seq_p50s.append(p50)
        calls += count
        rate, p50, count = await concurrent(system, args.concurrency, args.warmup, args.duration)
        conc_rates.append(rate)
        conc_p50s.append(p50)
        calls += count
        log(f"  {system.label}: rep {rep + 1}: {seq_rates[-1]:.0f} calls/s sequential, {rate:.0f} calls/s x{args.concurrency}")
    return {
        "label": system.label,
        "sequential_per_sec": statistics.median(seq_rates),
        "sequential_p50_us": statistics.median(seq_p50s),
        "concurrent_per_sec": statistics.median(conc_rates),
        "concurrent_p50_us": statistics.median(conc_p50s),
        "calls": calls,
    }


async def main(args: argparse.Namespace) -> None:
    import toolwire

    identities = [toolwire.Identity.generate() for _ in range(args.concurrency + 1)]
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False) as keys:
        keys.write("\n".join(str(identity.public_key) for identity in identities))
    try:
        with child("toolwire", keys.name) as (url, key):
            rows.append(await measure(Toolwire(url, key, identities), args))
    finally:
        os.unlink(keys.name)
    with child("websockets") as (url, _):
        rows.append(await measure(Websockets(url), args))
    with child("mcp") as (url, _):
        await wait_for_http(url)
        rows.append(await measure(Mcp(url), args))
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("toolwire", "websockets", "mcp")
    )
    versions += f", Python {sys.version.split()[0]}"
    print(json.dumps({"rows": rows, "concurrency": args.concurrency, "versions": versions}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=["toolwire", "websockets", "mcp"], help=argparse.SUPPRESS)
    parser.add_argument("keys", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.2, help="seconds before each measurement")
    parser.add_argument("--concurrency", type=int, default=64)
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if parsed.serve == "toolwire":
        asyncio.run(serve_toolwire(parsed.keys))
    elif parsed.serve == "websockets":
        asyncio.run(serve_websockets())
    elif parsed.serve == "mcp":
        serve_mcp()
    else:
        asyncio.run(main(parsed))

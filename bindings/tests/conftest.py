"""Shared fixtures: fresh identities, Python servers on loopback, and the Rust CLI
(``toolwire``) as a subprocess, the Rust server and client of the interop tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import toolwire

REPO = Path(__file__).resolve().parents[2]


def cli_path() -> Path:
    """The ``toolwire`` binary: ``$TOOLWIRE_CLI``, else the workspace's debug build."""
    explicit = os.environ.get("TOOLWIRE_CLI")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "toolwire"


@pytest.fixture
def cli() -> Path:
    path = cli_path()
    if not path.exists():
        if os.environ.get("TOOLWIRE_CLI"):
            pytest.fail(f"TOOLWIRE_CLI={path} does not exist")
        pytest.skip(f"{path} is not built (cargo build -p toolwire-cli)")
    return path


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run(*args: str | Path, timeout: float = 30) -> Completed:
    """Runs a command without blocking the event loop (the Python server under test
    runs on the same loop)."""
    process = await asyncio.create_subprocess_exec(
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def server_identity() -> toolwire.Identity:
    return toolwire.Identity.generate()


@pytest.fixture
def client_identity() -> toolwire.Identity:
    return toolwire.Identity.generate()


@dataclass
class RustServer:
    url: str
    key: str
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def serve_rust(
    cli: Path, tmp_path: Path, server_identity: toolwire.Identity, *args: str
) -> AsyncIterator[RustServer]:
    """``toolwire serve`` with ``server_identity`` (its identity file written by
    Python, which also checks the file format) on a free loopback port, with the
    extra command-line ``args``; stopped with SIGINT on exit."""
    key_file = tmp_path / f"server-{id(server_identity):x}.key"
    server_identity.save(key_file)
    # The server's log goes to a file: a pipe nobody reads while the test runs would
    # fill and stall the server.
    with open(tmp_path / "server.log", "ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(cli), "serve", "--identity", str(key_file), "--listen", "127.0.0.1:0", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    stdout = process.stdout
    fields: dict[str, str] = {}

    async def read_banner() -> None:
        while "url" not in fields or "key" not in fields:
            line = (await stdout.readline()).decode()
            if not line:
                raise RuntimeError("toolwire serve exited before printing its URL")
            name, _, value = line.strip().partition(" ")
            fields.setdefault(name, value.strip())

    try:
        await asyncio.wait_for(read_banner(), 20)
        assert fields["key"] == str(server_identity.public_key)
        yield RustServer(fields["url"], fields["key"], process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.communicate(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.communicate()


@pytest.fixture
async def rust_server(
    cli: Path, tmp_path: Path, client_identity: toolwire.Identity
) -> AsyncIterator[RustServer]:
    """``toolwire serve`` on a free loopback port, allowing ``client_identity``."""
    async with serve_rust(
        cli, tmp_path, toolwire.Identity.generate(), "--allow-client", str(client_identity.public_key)
    ) as server:
        yield server


@dataclass
class PythonServer:
    server: toolwire.ToolServer
    running: toolwire.RunningServer
    client: toolwire.Identity

    @property
    def url(self) -> str:
        return self.running.url

    def connect(self, **kwargs: object) -> toolwire.Connect:
        return toolwire.connect(
            self.url, identity=self.client, server_key=self.running.public_key, **kwargs  # type: ignore[arg-type]
        )

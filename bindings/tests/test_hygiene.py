"""Key and secret hygiene of the Python package (issue 10 item 5, THREATS.md §15).

Identity files are owner-only (0600) whatever the process umask, also when an
existing world-readable file is replaced and when written by ``python -m toolwire
keygen``; and a whole session logged at DEBUG through Python ``logging`` (the
``toolwire`` logger) shows no secret seed in any spelling, nor does ``repr``.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import toolwire


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Runs the test under ``umask 000`` (restored afterwards)."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seed_of(path: Path) -> bytes:
    encoded = path.read_text().splitlines()[1]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def spellings(seed: bytes) -> list[str]:
    """Ways a seed could leak into text: hex, base64 in both alphabets, a byte list."""
    return [
        seed[:12].hex(),
        seed[:12].hex().upper(),
        base64.b64encode(seed).decode()[:16],
        base64.urlsafe_b64encode(seed).decode()[:16],
        str(list(seed[:8]))[:-1],
        repr(seed[:12])[2:-1],
    ]


def test_save_is_owner_only_under_a_permissive_umask(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "agent.key"
    toolwire.Identity.generate().save(path)
    assert mode(path) == 0o600, oct(mode(path))


def test_overwriting_a_world_readable_file_is_owner_only(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "agent.key"
    path.write_text("left here by someone\n")
    path.chmod(0o644)
    toolwire.Identity.generate().save(path, overwrite=True)
    assert mode(path) == 0o600, oct(mode(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]


def test_python_m_toolwire_keygen_is_owner_only_and_prints_no_seed(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "id.key"
    made = subprocess.run(
        [sys.executable, "-m", "toolwire", "keygen", str(path)], capture_output=True, text=True, check=True
    )
    assert mode(path) == 0o600, oct(mode(path))
    seed = seed_of(path)
    for spelled in [*spellings(seed), path.read_text().splitlines()[1]]:
        assert spelled not in made.stdout and spelled not in made.stderr


async def test_a_session_logged_at_debug_shows_no_seed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_path, client_path = tmp_path / "server.key", tmp_path / "client.key"
    toolwire.Identity.generate().save(server_path)
    toolwire.Identity.generate().save(client_path)
    server_identity = toolwire.Identity.load(server_path)
    client_identity = toolwire.Identity.load(client_path)
    secrets = [seed_of(server_path), seed_of(client_path)]

    caplog.set_level(logging.DEBUG, logger="toolwire")
    toolwire.reset_log_cache()
    server = toolwire.ToolServer(server_identity, allowed_clients=[client_identity.public_key])

    @server.tool
    async def echo(text: str) -> str:
        """Returns its argument."""
        return text

    async with server.listen() as running:
        async with toolwire.connect(running.url, identity=client_identity, server_key=running.public_key) as session:
            for index in range(5):
                assert await session.call("echo", {"text": f"call {index}"}) == f"call {index}"

    logged = "\n".join(f"{record.name} {record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "toolwire" in logged
    shown = [repr(server_identity), repr(client_identity), str(client_identity.public_key), logged]
    for seed in secrets:
        for spelled in spellings(seed):
            for text in shown:
                assert spelled not in text, f"seed spelled {spelled!r} appears"

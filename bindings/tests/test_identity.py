"""Identities and public keys, and identity files shared with the ``toolwire`` CLI."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import toolwire
from conftest import run


def test_generate_save_load_round_trip(tmp_path: Path) -> None:
    identity = toolwire.Identity.generate()
    path = tmp_path / "agent.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0] == "toolwire-identity-v1" and len(lines[1]) == 43
    assert toolwire.Identity.load(path).public_key == identity.public_key
    assert toolwire.Identity.load(str(path)).public_key == identity.public_key


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = toolwire.Identity.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        toolwire.Identity.generate().save(path)
    assert toolwire.Identity.load(path).public_key == first.public_key
    second = toolwire.Identity.generate()
    second.save(path, overwrite=True)
    assert toolwire.Identity.load(path).public_key == second.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]


def test_load_refuses_other_files_and_warns_about_shared_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="not a toolwire identity file"):
        toolwire.Identity.load(bad)
    with pytest.raises(FileNotFoundError):
        toolwire.Identity.load(tmp_path / "missing.key")
    shared = tmp_path / "shared.key"
    toolwire.Identity.generate().save(shared)
    os.chmod(shared, 0o644)
    with caplog.at_level(logging.WARNING, logger="toolwire"):
        toolwire.Identity.load(shared)
    assert any("accessible to other users" in record.getMessage() for record in caplog.records)


def test_from_seed_is_deterministic_and_repr_hides_the_secret() -> None:
    seed = bytes(range(32))
    identity = toolwire.Identity.from_seed(seed)
    assert identity.public_key == toolwire.Identity.from_seed(seed).public_key
    assert str(identity.public_key) in repr(identity)
    assert seed.hex() not in repr(identity)
    with pytest.raises(ValueError):
        toolwire.Identity.from_seed(b"short")


def test_public_key_forms() -> None:
    key = toolwire.Identity.generate().public_key
    text = str(key)
    assert len(text) == 43
    assert toolwire.PublicKey(text) == key
    assert toolwire.PublicKey(f"  {text}\n") == key
    assert toolwire.PublicKey.from_bytes(key.to_bytes()) == key
    assert len(key.to_bytes()) == 32
    assert hash(toolwire.PublicKey(text)) == hash(key)
    assert {key, toolwire.PublicKey(text)} == {key}
    assert repr(key) == f"PublicKey('{text}')"
    assert key.fingerprint.startswith("tw:") and len(key.fingerprint) == 27
    with pytest.raises(ValueError):
        toolwire.PublicKey("not a key")
    with pytest.raises(ValueError):
        toolwire.PublicKey.from_bytes(bytes(32))  # small-order point


async def test_cli_reads_python_files_and_python_reads_cli_files(cli: Path, tmp_path: Path) -> None:
    python_file = tmp_path / "python.key"
    identity = toolwire.Identity.generate()
    identity.save(python_file)
    printed = await run(cli, "pubkey", python_file)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == str(identity.public_key)
    assert f"fingerprint {identity.public_key.fingerprint}" in printed.stderr

    cli_file = tmp_path / "cli.key"
    made = await run(cli, "keygen", "--out", cli_file)
    assert made.returncode == 0, made.stderr
    loaded = toolwire.Identity.load(cli_file)
    assert f"public key   {loaded.public_key}" in made.stdout
    assert f"fingerprint  {loaded.public_key.fingerprint}" in made.stdout


def test_python_m_toolwire_keygen_and_pubkey(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    made = subprocess.run(
        [sys.executable, "-m", "toolwire", "keygen", str(path)], capture_output=True, text=True, check=True
    )
    key = toolwire.Identity.load(path).public_key
    assert made.stdout.strip() == str(key)
    shown = subprocess.run(
        [sys.executable, "-m", "toolwire", "pubkey", str(path)], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == str(key)
    again = subprocess.run([sys.executable, "-m", "toolwire", "keygen", str(path)], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr

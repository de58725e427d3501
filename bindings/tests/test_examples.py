"""The README's examples run as shown: keys from ``python -m toolwire keygen``,
``examples/server.py`` in the background, ``examples/agent.py`` prints 5."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_server_and_agent_examples(tmp_path: Path) -> None:
    for name in ("server.py", "agent.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    env = {**os.environ, "PORT": str(free_port())}
    for who in ("server", "agent"):
        with open(tmp_path / f"{who}.pub", "w") as public:
            subprocess.run(
                [sys.executable, "-m", "toolwire", "keygen", f"{who}.key"],
                cwd=tmp_path, stdout=public, stderr=subprocess.DEVNULL, check=True,
            )
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert banner.startswith("toolwire server listening on ws://127.0.0.1:"), banner
        agent = subprocess.run(
            [sys.executable, "agent.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert agent.returncode == 0, agent.stderr
        assert agent.stdout == "5\n"
    finally:
        server.terminate()
        server.communicate(timeout=10)

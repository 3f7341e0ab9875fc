"""`edge-agent serve` says where it listens only once it does, with the real port, and
refuses bad or taken ports with one clear error (a real process, real sockets)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.test_cli import agent

BIN = Path(sys.executable).parent / "edge-agent"


def test_port_zero_prints_the_real_port_once_listening(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--model", str(tiny_model_dir), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EDGE_AGENT__STORE__DIR": str(tmp_path)},
    )
    assert proc.stderr is not None
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving model" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"serve ended without saying where it listens: {proc.communicate()}"
        found = re.search(r"at (http://127\.0\.0\.1:(\d+))/v1", line)
        assert found, line
        assert int(found.group(2)) != 0
        # Printed once listening: the very next request is answered.
        reply = httpx.get(found.group(1) + "/v1/models", timeout=10)
        assert reply.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    assert "serving model" not in rest  # said once
    assert proc.returncode == 0


def test_a_port_out_of_range_gets_the_configs_error(tiny_model_dir: Path) -> None:
    result = agent("serve", "--model", str(tiny_model_dir), "--port", "80000")
    assert result.returncode == 2
    assert "--port: Input should be less than or equal to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_one_clear_error_before_anything_is_promised(
    tiny_model_dir: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = agent("serve", "--model", str(tiny_model_dir), "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"edge-agent: error: port {port} on 127.0.0.1 is already in use by another program: "
        f"stop it (`ss -ltnp 'sport = :{port}'` names it) or choose another port with --port "
        "(0 picks a free one)"
    ]

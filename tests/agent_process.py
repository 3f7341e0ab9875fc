"""Run `edge-agent serve` as a real process on a free loopback port and ask it something."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.ports import free_port


@dataclass
class Served:
    models: Any  # GET /v1/models, decoded; None when the server never answered
    stderr: str
    returncode: int | None


def serve_and_list_models(
    binary: Path, args: list[str], env: Mapping[str, str], *, timeout: float = 60
) -> Served:
    """Start `binary serve ARGS --port P`, wait for /v1/models to answer, stop it with
    SIGINT (its normal stop), and return the answer and everything it said on stderr."""
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    models = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                if reply.status_code == 200:
                    models = reply.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    return Served(models, err, proc.returncode)


def model_ids(served: Served) -> list[str]:
    assert served.models is not None, f"serve never answered; it said:\n{served.stderr}"
    return [entry["id"] for entry in served.models["data"]]

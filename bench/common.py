"""Helpers the benchmarks share: figures and units, machine readers, `edge-agent serve`.

Imported by the scripts in this folder, which run as plain scripts (their folder is then
first on sys.path). Nothing here imports the agent's modules at import time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The agent's command-line entry point, installed next to this interpreter.
EDGE_AGENT = Path(sys.executable).parent / "edge-agent"
READY_TIMEOUT_S = 180.0


# --- figures and units -------------------------------------------------------------------


def figure(
    value: float | None, target: str | None = None, met: bool | None = None
) -> dict[str, Any]:
    return {"value": None if value is None else round(value, 4), "target": target, "met": met}


def median(values: list[float]) -> float:
    return statistics.median(values)


def mib(kib: int) -> float:
    return kib / 1024


def mb(size: float) -> float:
    return size / 1e6


def report(result: dict[str, Any]) -> None:
    """The figures that have a target, each with its verdict, then the result as one JSON line."""
    print("targets:")
    for name, item in result["figures"].items():
        if item["target"] is not None:
            verdict = "met" if item["met"] else "MISSED"
            print(f"  {name}: {item['value']} (target {item['target']}): {verdict}")
    print(json.dumps(result), flush=True)


# --- the machine -------------------------------------------------------------------------


def proc_status_kib(pid: int | str, key: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores together."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- `edge-agent serve` ------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    spawned: float

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def agent_server(
    model: str | Path, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """`edge-agent serve --model <model>` on a free loopback port, logging to workdir.

    `model` is a model folder or a name in the device store; `env`, when given, is the
    server's whole environment. Stopped with SIGTERM (then SIGKILL) on leaving.
    """
    port = free_port()
    command = [
        str(EDGE_AGENT),
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        spawned = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env)
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path, spawned)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def wait_ready(server: Server, poll_s: float = 0.01) -> tuple[float, dict[str, Any]]:
    """Seconds from spawn until /readyz answers 200, and its body.

    The default poll is short enough for a fine reading, long enough not to steal the
    cores the model loads on.
    """
    import httpx

    deadline = server.spawned + READY_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"edge-agent serve exited with {server.process.returncode}:\n"
                    f"{server.log_tail()}"
                )
            try:
                response = client.get("/readyz")
            except httpx.TransportError:
                response = None  # not listening yet
            if response is not None and response.status_code == 200:
                return time.perf_counter() - server.spawned, dict(response.json())
            time.sleep(poll_s)
    raise RuntimeError(
        f"edge-agent serve not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}"
    )


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far; 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (e.g. a server's per-connection backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found

"""Real launcher processes over real agent processes, in slots made for the test: a good
slot runs this checkout's edge-agent, a broken one crashes or hangs like a bad build."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge_agent.installed import launcher as launcher_module
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / ".venv" / "bin" / "edge-agent"
GOOD = f'#!/bin/sh\nexec {AGENT} "$@"\n'
CRASHES = '#!/bin/sh\necho "ImportError: a broken build" >&2\nexit 3\n'
HANGS = "#!/bin/sh\nexec sleep 600\n"
SLOW_THEN_GOOD = f'#!/bin/sh\nsleep 4\nexec {AGENT} "$@"\n'


def make_slot(root: Path, slot: str, script: str, version: str) -> None:
    bin_dir = root / slot / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "edge-agent").write_text(script)
    (bin_dir / "edge-agent").chmod(0o755)
    (root / slot / ".edge-agent-version").write_text(version + "\n")


def state(root: Path) -> dict[str, object]:
    return json.loads((root / "slots.json").read_text())  # type: ignore[no-any-return]


@dataclass
class Notifications:
    """A fake systemd: the NOTIFY_SOCKET the launcher reports to."""

    path: str
    messages: list[str] = field(default_factory=list)

    @classmethod
    def open(cls) -> Notifications:
        folder = tempfile.mkdtemp(prefix="notify-")
        made = cls(os.path.join(folder, "sock"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(made.path)
        sock.settimeout(0.2)
        made._sock = sock  # type: ignore[attr-defined]
        made._stop = threading.Event()  # type: ignore[attr-defined]
        threading.Thread(target=made._run, daemon=True).start()
        return made

    def _run(self) -> None:
        while not self._stop.is_set():  # type: ignore[attr-defined]
            try:
                self.messages.append(self._sock.recv(4096).decode())  # type: ignore[attr-defined]
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()  # type: ignore[attr-defined]
        self._sock.close()  # type: ignore[attr-defined]

    def count(self, line: str) -> int:
        return sum(line in m.split("\n") for m in list(self.messages))


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ready():
                return time.monotonic() - start
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"nothing served within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def serving_slot(self) -> str:
        """The slot of the agent process the launcher runs now (from its environment)."""
        for pid in children_of(self.proc.pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"EDGE_AGENT_SLOT="):
                    return item.split(b"=", 1)[1].decode()
        return ""

    def agent_pid(self) -> int:
        [pid] = list(children_of(self.proc.pid))
        return pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(root: Path, model: Path, data: Path, notify: Notifications | None,
           *, port: int | None = None, deadline: float = 30, hold_socket: bool = False,
           extra_env: dict[str, str] | None = None) -> Launched:  # fmt: skip
    """`hold_socket`: the launcher holds the API socket (--listen) and hands it down."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["EDGE_AGENT__STORE__DIR"] = str(data)
    env["EDGE_AGENT__TELEMETRY__POLICY"] = "off"
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    env.update(extra_env or {})
    held = ["--listen", f"127.0.0.1:{port}"] if hold_socket else []
    log = root / f"launcher-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", launcher_module.__file__, "--root", str(root), "--deadline",
             str(deadline), *held, "--", "serve", "--model", str(model), "--name", "tiny", "--port",
             str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    return Launched(proc, port, root, log)


def wait_for(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if callable(predicate) and predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def children_of(pid: int) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                yield int(entry.name)

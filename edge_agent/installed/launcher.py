"""The A/B launcher: starts the agent from the committed slot, or once from a trial slot
that must prove itself healthy within a deadline (then it is committed), else falls back.

    <root>/a, <root>/b     two complete installs (virtual environments) of the agent
    <root>/slots.json      which slot is committed, which one is on trial, the last result
    <root>/launcher.py     this file, copied by the installer

Mender's and RAUC's scheme: a new release is booted once on trial, and only a health check
commits it. Here the check is the agent's own READY=1 (model loaded, its API answers), sent
over a notify socket that the launcher hands it and relays to systemd. A boot counter makes
a trial that crashes the machine or the launcher count as failed on the next start, so a
bad release cannot loop. Every state change is one atomic rename, so a kill -9 or a power
cut at any step leaves a committed slot to start.

Standard library only, one file: it runs with the system's Python and must keep working
whatever a slot holds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATE_FILE = "slots.json"
SLOTS = ("a", "b")
RESTART_EXIT = 75  # the agent drained its API and asks to be started again (a switch)
MAX_TRIAL_BOOTS = 1  # a trial that did not commit by its next start has failed
DEFAULT_DEADLINE_SECONDS = 120.0
SLOT_ENV = "EDGE_AGENT_SLOT"
ROOT_ENV = "EDGE_AGENT_INSTALL_ROOT"
STOP_SECONDS = 30.0


class LauncherError(Exception):
    pass


@dataclass
class SlotState:
    committed: str | None = None
    trial: str | None = None
    trial_version: str | None = None
    trial_boots: int = 0
    last_result: dict[str, Any] | None = None  # slot, version, ok, reason, at
    failed_versions: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION


def state_path(root: Path) -> Path:
    return root / STATE_FILE


def load_state(root: Path) -> SlotState:
    path = state_path(root)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return SlotState()
    except (OSError, ValueError) as exc:
        raise LauncherError(
            f"{path} is unreadable ({exc}); point it at a working slot with "
            f'`echo \'{{"committed": "a"}}\' > {path}` after checking {root}/a/bin/edge-agent'
        ) from exc
    known = {name: raw[name] for name in SlotState.__dataclass_fields__ if name in raw}
    state = SlotState(**known)
    for slot in (state.committed, state.trial):
        if slot is not None and slot not in SLOTS:
            raise LauncherError(f"{path} names slot {slot!r}; slots are {', '.join(SLOTS)}")
    return state


def save_state(root: Path, state: SlotState) -> None:
    """One fsynced rename, then the folder synced: a power cut keeps the old or the new."""
    path = state_path(root)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as out:
        json.dump(asdict(state), out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def other_slot(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


def request_trial(root: Path, slot: str, version: str) -> None:
    """Mark `slot` (freshly installed) for one trial start; the agent then exits with
    RESTART_EXIT and the launcher starts it."""
    state = load_state(root)
    if slot == state.committed:
        raise LauncherError(f"slot {slot} is the committed one; install into the other slot")
    state.trial, state.trial_version, state.trial_boots = slot, version, 0
    save_state(root, state)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finish_trial(root: Path, state: SlotState, *, ok: bool, reason: str) -> SlotState:
    slot, version = state.trial, state.trial_version
    state.last_result = {"slot": slot, "version": version, "ok": ok, "reason": reason, "at": _now()}
    if ok:
        state.committed = slot
    elif version and version not in state.failed_versions:
        state.failed_versions.append(version)
    state.trial, state.trial_version, state.trial_boots = None, None, 0
    save_state(root, state)
    _say(
        f"slot {slot} ({version}): "
        + ("committed" if ok else f"FAILED, back to slot {state.committed}")
        + f": {reason}"
    )
    return state


def _say(message: str) -> None:
    print(f"edge-agent-launcher: {message}", file=sys.stderr, flush=True)


class _Relay:
    """A private notify socket for the child; READY/WATCHDOG go on to our own manager."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="edge-agent-notify-"))
        self.path = str(self._dir / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self.ready = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"READY=1" in data.split(b"\n"):
                self.ready.set()
            notify_manager(data.decode(errors="replace"))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
        with contextlib.suppress(OSError):
            Path(self.path).unlink()
            self._dir.rmdir()


def notify_manager(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def _die_with_parent() -> None:
    """The child gets SIGKILL when the launcher dies (kill -9 included), as systemd's
    control-group kill would do; no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Launcher:
    def __init__(self, root: Path, agent_args: list[str], deadline: float) -> None:
        self.root = root
        self.agent_args = agent_args
        self.deadline = deadline
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _spawn(self, slot: str, relay: _Relay) -> subprocess.Popen[bytes]:
        binary = self.root / slot / "bin" / "edge-agent"
        env = dict(os.environ)
        env.update({"NOTIFY_SOCKET": relay.path, SLOT_ENV: slot, ROOT_ENV: str(self.root)})
        env.pop("WATCHDOG_PID", None)  # the child's pings come to us, then go on
        relay.ready.clear()
        _say(f"starting slot {slot}: {binary} {' '.join(self.agent_args)}")
        return subprocess.Popen(
            [str(binary), *self.agent_args], env=env, preexec_fn=_die_with_parent
        )

    def _stop_child(self, sig: int = signal.SIGTERM) -> int:
        child = self.child
        if child is None:
            return 0
        if child.poll() is None:
            child.send_signal(sig)
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return child.returncode

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _wait_ready(self, relay: _Relay) -> str | None:
        """None once the child said READY=1; else why it failed."""
        assert self.child is not None
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            if relay.ready.wait(0.2):
                return None
            code = self.child.poll()
            if code is not None:
                return f"the agent exited with status {code} before it served"
            if self.stopping:
                return "stopped before it served"
            notify_manager("WATCHDOG=1")  # the launcher is alive while it waits
        return f"the agent did not serve within {self.deadline:g} s"

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        relay = _Relay()
        try:
            return self._loop(relay)
        finally:
            self._stop_child()
            relay.close()

    def _loop(self, relay: _Relay) -> int:
        while True:
            state = load_state(self.root)
            if state.trial is not None:
                state.trial_boots += 1
                save_state(self.root, state)  # counted before the start: a crash counts
                if state.trial_boots > MAX_TRIAL_BOOTS:
                    _finish_trial(
                        self.root, state, ok=False,
                        reason="the agent, the launcher or the machine stopped during its "
                        "trial start",
                    )  # fmt: skip
                    continue
                self.child = self._spawn(state.trial, relay)
                failure = self._wait_ready(relay)
                if failure is None:
                    _finish_trial(self.root, state, ok=True, reason="served its model")
                else:
                    self._stop_child()
                    _finish_trial(self.root, state, ok=False, reason=failure)
                    if self.stopping:
                        return 0
                    continue
            else:
                if state.committed is None:
                    raise LauncherError(
                        f"no slot is committed in {state_path(self.root)}: install the agent "
                        "with the installer's `install` script first"
                    )
                self.child = self._spawn(state.committed, relay)
            code = self.child.wait()
            while code is None:  # pragma: no cover - wait() returns the code
                code = self.child.poll()
            if self.stopping:
                return code
            if load_state(self.root).trial is not None:
                continue  # a switch was asked for (RESTART_EXIT) or crashed after the ask
            return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent-launcher",
        description="Start the agent from its committed slot; try a new slot once, commit "
        "it when it serves, or fall back.",
    )
    parser.add_argument("--root", type=Path, default=Path("/opt/edge-agent"))
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_SECONDS,
                        help="seconds a trial slot has to serve its model")  # fmt: skip
    parser.add_argument("agent_args", nargs=argparse.REMAINDER,
                        help="arguments for edge-agent (default: serve)")  # fmt: skip
    options = parser.parse_args(argv)
    args = [a for a in options.agent_args if a != "--"] or ["serve"]
    try:
        return Launcher(options.root, args, options.deadline).run()
    except LauncherError as exc:
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

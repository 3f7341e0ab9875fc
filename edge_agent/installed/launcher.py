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

With `--listen HOST:PORT` the launcher holds the API's socket and hands it to each agent:
a switch then starts the new slot beside the serving one, which drains only once the new
one is ready, so no connection is refused and no request fails (tests/installed/
test_handover.py). Without it the old agent drains first and exits RESTART_EXIT.

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
# The API's listening socket, held by the launcher and handed to every agent generation:
# between two of them connections wait in its backlog instead of being refused.
LISTEN_FD_ENV = "EDGE_AGENT_LISTEN_FD"
LISTEN_BACKLOG = 2048
POLL_SECONDS = 0.5


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
    # The agent that asked for the trial was online: the new one must reach the hub too.
    trial_needs_hub: bool = False


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


def request_trial(root: Path, slot: str, version: str, *, needs_hub: bool = False) -> None:
    """Mark `slot` (freshly installed) for one trial start; the launcher starts it.
    `needs_hub`: its health check includes reaching the hub (the asking agent was online)."""
    state = load_state(root)
    if slot == state.committed:
        raise LauncherError(f"slot {slot} is the committed one; install into the other slot")
    state.trial, state.trial_version, state.trial_boots = slot, version, 0
    state.trial_needs_hub = needs_hub
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
    state.trial_needs_hub = False
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
        self.status = ""  # the child's last STATUS=, said when it fails its deadline
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
            lines = data.split(b"\n")
            if b"READY=1" in lines:
                self.ready.set()
            for line in lines:
                if line.startswith(b"STATUS="):
                    self.status = line[7:].decode(errors="replace")
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


def bind_listener(address: str) -> socket.socket:
    """`HOST:PORT` bound and listening, inheritable by the agents the launcher starts."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LauncherError(f"--listen {address!r}: write HOST:PORT, e.g. 127.0.0.1:8080")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        sock.close()
        raise LauncherError(
            f"cannot listen on {address}: {exc.strerror}; stop what holds the port "
            f"(`ss -ltnp 'sport = :{port}'`) or change --listen and [api] port together"
        ) from exc
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """The child gets SIGKILL when the launcher dies (kill -9 included), as systemd's
    control-group kill would do; no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Launcher:
    def __init__(
        self,
        root: Path,
        agent_args: list[str],
        deadline: float,
        listener: socket.socket | None = None,
    ) -> None:
        self.root = root
        self.agent_args = agent_args
        self.deadline = deadline
        self.listener = listener  # held: a switch overlaps the old and the new agent
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _spawn(self, slot: str, relay: _Relay) -> subprocess.Popen[bytes]:
        binary = self.root / slot / "bin" / "edge-agent"
        env = dict(os.environ)
        env.update({"NOTIFY_SOCKET": relay.path, SLOT_ENV: slot, ROOT_ENV: str(self.root)})
        env.pop("WATCHDOG_PID", None)  # the child's pings come to us, then go on
        fds: tuple[int, ...] = ()
        if self.listener is not None:
            fds = (self.listener.fileno(),)
            env[LISTEN_FD_ENV] = str(fds[0])
        relay.ready.clear()
        _say(f"starting slot {slot}: {binary} {' '.join(self.agent_args)}")
        return subprocess.Popen(
            [str(binary), *self.agent_args], env=env, pass_fds=fds, preexec_fn=_die_with_parent
        )

    def _stop_child(
        self, sig: int = signal.SIGTERM, child: subprocess.Popen[bytes] | None = None
    ) -> int:
        child = child or self.child
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

    def _wait_ready(
        self, relay: _Relay, child: subprocess.Popen[bytes] | None = None
    ) -> str | None:
        """None once the child said READY=1; else why it failed."""
        child = child or self.child
        assert child is not None
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            if relay.ready.wait(0.2):
                return None
            code = child.poll()
            if code is not None:
                return f"the agent exited with status {code} before it served"
            if self.stopping:
                return "stopped before it served"
            notify_manager("WATCHDOG=1")  # the launcher is alive while it waits
        last = f" (its last status: {relay.status})" if relay.status else ""
        return f"the agent did not pass its health check within {self.deadline:g} s{last}"

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.relay = _Relay()
        try:
            return self._loop()
        finally:
            self._stop_child()
            self.relay.close()
            if self.listener is not None:
                self.listener.close()

    def _supervise(self) -> int:
        """Wait for the child to exit; with the socket held, hand over to a trial slot
        while the child still serves."""
        assert self.child is not None
        while True:
            code = self.child.poll()
            if code is not None or self.listener is None:
                return self.child.wait()
            if not self.stopping:
                try:
                    state = load_state(self.root)
                except LauncherError as exc:
                    _say(f"{exc}; the running agent keeps serving")
                    state = SlotState()
                if state.trial is not None:
                    self._hand_over(state)
            time.sleep(POLL_SECONDS)

    def _hand_over(self, state: SlotState) -> None:
        """Start the trial slot beside the serving agent on the same socket. The new one
        accepts only once its model is loaded (edge_agent.installed.handoff); at its READY=1
        it is committed and the old one drains (SIGTERM: in-flight requests finish). A trial
        that fails never took a request: it is stopped and the old agent serves on."""
        state.trial_boots += 1
        save_state(self.root, state)  # counted before the start: a crash counts
        if state.trial_boots > MAX_TRIAL_BOOTS:
            why = "the launcher or the machine stopped during its trial start"
            _finish_trial(self.root, state, ok=False, reason=why)
            return
        assert state.trial is not None
        relay = _Relay()
        new = self._spawn(state.trial, relay)
        failure = self._wait_ready(relay, new)
        if failure is not None:
            self._stop_child(child=new)
            relay.close()
            _finish_trial(self.root, state, ok=False, reason=failure)
            return
        old, old_relay = self.child, self.relay
        self.child, self.relay = new, relay
        _finish_trial(self.root, state, ok=True, reason="served its model")
        self._stop_child(child=old)  # drains: uvicorn finishes what it accepted
        old_relay.close()

    def _loop(self) -> int:
        while True:
            relay = self.relay  # a hand-over replaces it
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
            code = self._supervise()
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
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="hold the API's socket (the agent's [api] host and port) and "
                        "hand it to each agent: a switch refuses no connection")  # fmt: skip
    parser.add_argument("agent_args", nargs=argparse.REMAINDER,
                        help="arguments for edge-agent (default: serve)")  # fmt: skip
    options = parser.parse_args(argv)
    args = [a for a in options.agent_args if a != "--"] or ["serve"]
    try:
        listener = bind_listener(options.listen) if options.listen else None
        return Launcher(options.root, args, options.deadline, listener).run()
    except LauncherError as exc:
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`edge-hub demo`: the hub with a demo fleet, on its defaults (SQLite, a managed
Mosquitto; where Mosquitto is missing the demo stops at once with the install command).

Everything lives in one folder with its own hub config, so a demo never touches a real
hub's data, and a second run reuses what the first made (the repository, the releases,
the enrolled devices):

    hub.toml            the demo hub's config: every path below, the ports of this run
    hub/                repository, keys, device CA, broker data, tokens, hub.sqlite3
    devices/demo-N/     agent.toml, the device's store, identity and outbox
    logs/               hub.log and one log per device
    demo.json           which test model the releases were made from

The steps are the operator's: `edge-hub serve`, `edge-hub device enroll`, `edge-agent
enroll|update|serve`, `edge-hub rollout create` (the second release, waiting for approval in
the console, whose URL and admin login the summary prints), each as a child process. Every
child runs in its own process group, so Ctrl-C reaches only this process, which stops the
agents, then the hub, then whatever is left in their groups (the hub's broker).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import httpx
from rich.console import Console
from rich.markup import escape

from edge_agent import logs
from hub.config import CONFIG_ENV, ENV_PREFIX

if TYPE_CHECKING:  # loaded when used: the registry pulls in python-tuf and onnxruntime
    from sqlalchemy import Engine

    from hub.registry.repository import ReleaseRepository

DEFAULT_DIR = Path("~/.local/share/edge-hub-demo")
MODEL = "demo"
GROUP = "demo"
FIRST = "1.0.0"
SECOND = "1.0.1"  # the first with another sampling default: one changed file to update
SECOND_SEARCH = {"top_k": 40}
DEMO_OPERATOR = "demo"  # creates the rollout; the admin approves it (a second operator)
FINAL_STATES = ("completed", "aborted", "rolled_back")
ONE_TIME_PASSWORD = re.compile(r"first console user: admin, one-time password (\S+)")
HUB_PORT = 8070
AGENT_PORT = 8080
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 600.0
BIN = Path(sys.executable).parent


class DemoError(RuntimeError):
    """A step failed; the message says what the operator can do next."""


class Stopped(Exception):
    """SIGTERM or SIGHUP: stop the fleet as Ctrl-C does."""


@dataclass(frozen=True)
class DemoOptions:
    folder: Path = DEFAULT_DIR
    shape: str = "small"
    devices: int = 2
    hub_port: int | None = None  # None: 8070 unless taken; 0: any free port
    broker_port: int | None = None  # None or 0: any free port
    agent_port: int | None = None  # first device's; None: 8080, 8081, ... unless taken


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def hub_config(self) -> Path:
        return self.root / "hub.toml"

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def repository(self) -> Path:
        return self.hub / "repository"

    @property
    def keys(self) -> Path:
        return self.hub / "keys"

    @property
    def database(self) -> Path:
        return self.hub / "hub.sqlite3"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def device(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def agent_config(self, device_id: str) -> Path:
        return self.device(device_id) / "agent.toml"

    def store(self, device_id: str) -> Path:
        return self.device(device_id) / "store"


def device_ids(count: int) -> list[str]:
    return [f"demo-{n}" for n in range(1, count + 1)]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and mosquitto
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_mosquitto() -> None:
    """DemoError, with the install command for each system, where the demo hub (on its
    defaults) would find no Mosquitto to run: said before any slow step."""
    from hub.broker import BrokerMissing, find_mosquitto

    try:
        find_mosquitto()
    except BrokerMissing as missing:
        raise DemoError(f"the demo hub runs Mosquitto as its broker: {missing}") from None


def leftovers(folder: Path) -> list[int]:
    """The demo's long-running processes in `folder` other than this one: the hub, its
    Mosquitto and the agents, known by a config file inside the folder (`--config` or
    `-c`), not by a mere mention (a shell or `timeout` that started the demo). Linux."""
    inside = str(folder.expanduser().absolute()).encode() + b"/"
    programs = (b"mosquitto", b"edge-hub", b"edge-agent")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        configs = [b for a, b in itertools.pairwise(argv) if a in (b"-c", b"--config")]
        ours = any(c.startswith(inside) for c in configs)
        if ours and any(p in arg for arg in argv[:2] for p in programs):
            found.append(int(entry.name))
    return found


def _toml(sections: dict[str, dict[str, str | int | float]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            # A JSON string is a valid TOML basic string (paths with quotes or backslashes).
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _clean_env() -> dict[str, str]:
    """The environment without the hub's and agent's overrides: the demo's config files
    say everything, so an operator's EDGE_HUB__* or EDGE_AGENT__* cannot redirect it."""
    own = ("EDGE_AGENT__", "EDGE_AGENT_CONFIG", ENV_PREFIX, CONFIG_ENV)
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Child:
    """A long-running child (the hub or an agent) in its own process group."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.argv,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def check(self) -> None:
        """DemoError, with the end of its log, once the child has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"{self.name} exited with status {self.process.returncode}; the end of its "
                f"log {self.log}:\n{_tail(self.log)}"
            )

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def finish(self) -> None:
        """Wait for the child after terminate(), then end whatever is left in its group."""
        if self.process is None:
            return
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        _end_group(self.process.pid)
        self.process = None


def _end_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, to a process group's remaining members (the hub's broker
    if the hub could not stop it)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


class Step:
    """One progress line: a spinner while it runs, a check mark and what happened after."""

    def __init__(self, update: Callable[[str], None], text: str) -> None:
        self._update = update
        self.text = text
        self.result = text

    def detail(self, line: str) -> None:
        self._update(f"{self.text}: {line.strip()[:80]}")


class Demo:
    def __init__(self, options: DemoOptions, console: Console, out: Console) -> None:
        if options.shape not in ("tiny", "small"):
            raise DemoError(f"unknown model '{options.shape}': pass --model small or tiny")
        if not 1 <= options.devices <= 20:
            raise DemoError("pass --devices between 1 and 20")
        self.options = options
        self.layout = Layout(options.folder.expanduser().absolute())
        self.console = console  # progress, on stderr
        self.out = out  # the summary, on stdout
        self.devices = device_ids(options.devices)
        self.hub: Child | None = None
        self.agents: dict[str, Child] = {}
        self.ports: dict[str, int] = {}
        self._taken: set[int] = set()
        self.rollout: int | None = None
        self._hub_log_from = 0
        self.admin_password: str | None = None  # the hub prints it once, on its first start

    # --- the whole run -------------------------------------------------------------------

    def run(self) -> None:
        """Set up, print the summary, keep running until a signal; always stop cleanly."""
        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        with self._locked(), _signals_stop():
            try:
                self._set_up()
                self._summary()
                while True:
                    self._check_children()
                    time.sleep(0.5)
            except (KeyboardInterrupt, Stopped):
                self.console.print("stopping the demo fleet")
            finally:
                # A second Ctrl-C must not leave the broker or an agent behind half-way.
                with _signals_ignored():
                    self._stop_children()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        path = self.layout.root / "demo.lock"
        with path.open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DemoError(
                    f"a demo already runs in {self.layout.root}: stop it (Ctrl-C in its "
                    "terminal), or pass another --dir"
                ) from None
            yield

    def _set_up(self) -> None:
        require_mosquitto()
        self._check_chosen_ports()  # before minutes of building and signing releases
        self._stop_leftovers()
        self._releases()
        self._choose_ports()  # after the slow imports, so the ports are still free to bind
        self._write_hub_config()
        self._start_hub()
        self._join_devices()
        self._roll_out()
        self._admin_password()

    # --- steps ---------------------------------------------------------------------------

    @contextmanager
    def _step(self, text: str) -> Iterator[Step]:
        with self.console.status(text) as status:
            step = Step(status.update, text)
            yield step
        self.console.print(f"[green]✓[/] {escape(step.result)}")

    def _stop_leftovers(self) -> None:
        """A demo killed outright (SIGKILL) left its children; the lock says none runs now."""
        found = leftovers(self.layout.root)
        if not found:
            return
        with self._step(f"stopping {len(found)} processes left by an earlier demo") as step:
            for pid in found:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while leftovers(self.layout.root) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in leftovers(self.layout.root):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            step.result = f"stopped {len(found)} processes left by an earlier demo"

    def _choose_ports(self) -> None:
        o = self.options
        self.ports["hub"] = self._port(o.hub_port, HUB_PORT, "--hub-port")
        self.ports["broker"] = self._port(o.broker_port, None, "--broker-port")
        for n, device in enumerate(self.devices):
            asked = o.agent_port + n if o.agent_port else o.agent_port
            self.ports[device] = self._port(asked, AGENT_PORT + n, "--agent-port")

    def _check_chosen_ports(self) -> None:
        """Ports the operator chose are refused at once when taken; they are bound only
        later, once the releases exist."""
        o = self.options
        chosen = [(o.hub_port, "--hub-port"), (o.broker_port, "--broker-port")]
        if o.agent_port:
            chosen += [(o.agent_port + n, "--agent-port") for n in range(len(self.devices))]
        for port, option in chosen:
            if port and not port_free(port):
                raise DemoError(
                    f"port {port} on 127.0.0.1 is taken: pass another {option}, or "
                    f"{option} 0 for any free port"
                )

    def _port(self, asked: int | None, preferred: int | None, option: str) -> int:
        if asked:  # the operator chose it: refuse rather than pick another
            if asked in self._taken or not port_free(asked):
                raise DemoError(
                    f"port {asked} on 127.0.0.1 is taken: pass another {option}, or "
                    f"{option} 0 for any free port"
                )
            port = asked
        elif asked is None and preferred and preferred not in self._taken and port_free(preferred):
            port = preferred
        else:
            port = any_free_port()
            while port in self._taken:
                port = any_free_port()
        self._taken.add(port)
        return port

    @property
    def hub_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['hub']}"

    def agent_url(self, device: str) -> str:
        return f"http://127.0.0.1:{self.ports[device]}"

    def _write_hub_config(self) -> None:
        layout = self.layout
        layout.hub.mkdir(exist_ok=True)
        layout.logs.mkdir(exist_ok=True)
        text = _toml(
            {
                "repository": {"dir": str(layout.repository), "keys_dir": str(layout.keys)},
                "artifacts": {
                    "port": self.ports["hub"],
                    "tokens_file": str(layout.hub / "device-tokens.json"),
                },
                "broker": {
                    "port": self.ports["broker"],
                    "data_dir": str(layout.hub / "broker"),
                    "identity_dir": str(layout.hub / "identity"),
                },
                "database": {"url": f"sqlite:///{layout.database}"},
                # k = 2, the least allowed: the demo fleet is smaller than the default 5.
                "telemetry": {"k_anonymity": 2},
            }
        )
        layout.hub_config.write_text("# written by `edge-hub demo` on every run\n" + text)

    def _releases(self) -> None:
        from hub.registry.errors import RegistryError
        from hub.registry.repository import ReleaseRepository

        layout = self.layout
        with self._step("release repository") as step:
            try:
                if (layout.repository / "repository.json").exists():
                    repo = ReleaseRepository.open(layout.repository, layout.keys)
                    step.result = f"release repository {layout.repository} (reused)"
                else:
                    shutil.rmtree(layout.repository, ignore_errors=True)  # an unfinished one
                    repo = ReleaseRepository.create(layout.repository, layout.keys)
                    step.result = f"created the release repository {layout.repository}"
            except RegistryError as exc:
                raise DemoError(f"{exc}; to start the demo over, remove {layout.root}") from None
        self._check_shape()
        published = repo.index().versions(MODEL)
        if FIRST in published and SECOND in published:
            self.console.print(f"[green]✓[/] releases {MODEL} {FIRST} and {SECOND} (reused)")
            return
        model_dir = self._test_model()
        if FIRST not in published:
            self._import(repo, model_dir, FIRST)
        if SECOND not in published:
            with tempfile.TemporaryDirectory(dir=layout.root, prefix=".variant-") as tmp:
                self._import(repo, _variant(model_dir, Path(tmp) / MODEL), SECOND)

    def _check_shape(self) -> None:
        """The releases of a folder come from one test model; say so rather than mix."""
        record = self.layout.root / "demo.json"
        if record.exists():
            made_with = json.loads(record.read_text()).get("model")
            if made_with != self.options.shape:
                raise DemoError(
                    f"the demo in {self.layout.root} was made with --model {made_with}: pass "
                    f"--model {made_with}, or another --dir for a {self.options.shape} demo"
                )
        else:
            record.write_text(json.dumps({"model": self.options.shape}) + "\n")

    def _test_model(self) -> Path:
        from hub.registry import synthetic
        from hub.registry.convert import ConversionError

        recipe = synthetic.RECIPES[self.options.shape]
        cached = synthetic.model_dir_for(recipe)
        if (cached / "genai_config.json").is_file():
            self.console.print(f"[green]✓[/] test model '{recipe.name}' {cached} (cached)")
            return cached
        text = f"building the '{recipe.name}' test model (once; minutes for 'small')"
        with self._step(text) as step:
            try:
                path = synthetic.build(recipe, on_step=step.detail, on_line=step.detail)
            except ConversionError as exc:
                raise DemoError(f"building the test model failed: {exc}") from None
            step.result = f"built the '{recipe.name}' test model in {path}"
        return path

    def _import(self, repo: ReleaseRepository, model_dir: Path, version: str) -> None:
        from hub.registry.errors import RegistryError
        from hub.registry.importer import import_release

        with self._step(f"release {MODEL} {version}") as step:
            try:
                manifest = import_release(repo, model_dir, MODEL, version, on_stage=step.detail)
            except RegistryError as exc:
                raise DemoError(f"importing {MODEL} {version} failed: {exc}") from None
            step.result = (
                f"published {MODEL} {version}: {len(manifest.files)} files, "
                f"{manifest.total_bytes / 1e6:.1f} MB, signed"
            )

    def _start_hub(self) -> None:
        self.hub = Child(
            "the hub (edge-hub serve)",
            [str(BIN / "edge-hub"), "--config", str(self.layout.hub_config), "serve"],
            self.layout.logs / "hub.log",
        )
        log = self.layout.logs / "hub.log"
        self._hub_log_from = log.stat().st_size if log.exists() else 0
        with self._step(f"starting the hub at {self.hub_url}") as step:
            self.hub.start()
            self._wait("the hub to answer", self._hub_up, START_TIMEOUT_S)
            step.result = (
                f"hub at {self.hub_url}, broker at mqtts://127.0.0.1:{self.ports['broker']}"
            )

    def _hub_up(self) -> bool:
        # The hub serves HTTPS from its own CA, made on its first start: trust that alone.
        ca = self.layout.hub / "identity" / "ca.crt"
        if not ca.exists():
            return False
        try:
            reply = httpx.get(
                f"{self.hub_url}/healthz", timeout=1, verify=ssl.create_default_context(cafile=ca)
            )
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    def _join_devices(self) -> None:
        from hub.fleet import registry

        with self._database() as engine:
            if GROUP not in {g.name for g in registry.list_groups(engine)}:
                registry.create_group(engine, GROUP)
        for device in self.devices:
            self._write_agent_config(device)
            self._enroll(device)
            self._install_first(device)
        since = datetime.now(UTC)  # a rerun's database already holds the last run's reports
        for device in self.devices:
            agent = Child(
                f"{device} (edge-agent serve)",
                [*self._agent(device), "serve", "--model", MODEL],
                self.layout.logs / f"{device}.log",
            )
            self.agents[device] = agent
            agent.start()
        for device in self.devices:
            with self._step(f"{device}: starting its API at {self.agent_url(device)}/v1") as step:
                self._wait(f"{device} to load its model", partial(self._ready, device))
                self._wait(f"{device} to report to the hub", partial(self._seen, device, since))
                step.result = (
                    f"{device}: serving {MODEL} {self._active(device)} at "
                    f"{self.agent_url(device)}/v1, reported to the hub"
                )

    def _write_agent_config(self, device: str) -> None:
        store = self.layout.store(device)
        store.mkdir(parents=True, exist_ok=True)
        text = _toml(
            {
                "api": {"port": self.ports[device]},
                # The demo devices share this machine's cores.
                "runtime": {"intra_op_threads": max(1, (os.cpu_count() or 1) // len(self.devices))},
                "store": {"dir": str(store)},
                # This run's ports win over those the device learnt at enrollment.
                "updates": {"source": self.hub_url, "watch_interval_seconds": 0.5},
                "sync": {
                    "broker_url": f"mqtts://127.0.0.1:{self.ports['broker']}",
                    "reconnect_min_seconds": 0.5,
                    "reconnect_max_seconds": 5.0,
                },
                # The shortest windows, so telemetry reaches the hub minutes into a demo.
                "telemetry": {"window_seconds": 300, "publish_interval_seconds": 30.0},
            }
        )
        self.layout.agent_config(device).write_text(
            "# written by `edge-hub demo` on every run\n" + text
        )

    def _agent(self, device: str) -> list[str]:
        return [str(BIN / "edge-agent"), "--config", str(self.layout.agent_config(device))]

    def _hub_cli(self) -> list[str]:
        return [str(BIN / "edge-hub"), "--config", str(self.layout.hub_config)]

    def _enroll(self, device: str) -> None:
        from edge_agent.sync.identity import Identity

        if Identity(self.layout.store(device) / "identity").enrollment() is not None:
            self.console.print(f"[green]✓[/] {device}: enrolled (reused)")
            return
        with self._step(f"{device}: enrolling in group {GROUP}") as step:
            token = self._cli(
                f"making {device}'s enrollment token",
                [*self._hub_cli(), "device", "enroll", device, "--group", GROUP],
            ).strip()
            self._cli(
                f"enrolling {device}",
                [*self._agent(device), "enroll", self.hub_url, "--device-id", device],
                secret=["--token", token],
            )
            step.result = f"{device}: enrolled in group {GROUP} (key, certificate, TUF root)"

    def _install_first(self, device: str) -> None:
        from edge_agent.store import ModelStore

        active = ModelStore(self.layout.store(device)).active(MODEL)
        if active is not None:
            self.console.print(f"[green]✓[/] {device}: {MODEL} {active.version} installed")
            return
        with self._step(f"{device}: installing {MODEL} {FIRST} from the hub") as step:
            self._cli(
                f"installing {MODEL} {FIRST} on {device}",
                [*self._agent(device), "update", MODEL, "--version", FIRST],
            )
            step.result = f"{device}: {MODEL} {FIRST} installed (verified against the TUF root)"

    def _roll_out(self) -> None:
        """A rollout of the second release, created and waiting for a second operator's
        approval in the console (each of its two waves); a rerun reuses an unfinished one."""
        from hub.rollouts import store

        with self._database() as engine:
            waiting = [
                r for r in store.list_rollouts(engine)
                if r.model == MODEL and r.version == SECOND and r.state not in FINAL_STATES
            ]  # fmt: skip
        if waiting:
            self.rollout = waiting[-1].id
            self.console.print(f"[green]✓[/] rollout {self.rollout} of {MODEL} {SECOND} (reused)")
            return
        command = [
            "rollout", "create", "--model", MODEL, "--version", SECOND, "--group", GROUP,
            "--waves", "50,100", "--soak", "15", "--approval", "--operator", DEMO_OPERATOR,
        ]  # fmt: skip
        with self._step(f"creating a rollout of {MODEL} {SECOND} to group {GROUP}") as step:
            said = self._cli(
                f"creating the rollout of {MODEL} {SECOND}", [*self._hub_cli(), *command]
            )
            found = re.search(r"created rollout (\d+)", said)
            if found is None:
                raise DemoError(f"`edge-hub {' '.join(command)}` said no rollout id: {said}")
            self.rollout = int(found[1])
            step.result = (
                f"rollout {self.rollout} of {MODEL} {SECOND}: waiting for approval in the console"
            )

    def _admin_password(self) -> None:
        """The first admin's one-time password, from the banner of the hub's first start."""
        with (self.layout.logs / "hub.log").open("rb") as log:
            log.seek(self._hub_log_from)  # this run's lines: the log grows run after run
            found = ONE_TIME_PASSWORD.search(log.read().decode(errors="replace"))
        self.admin_password = found[1] if found else None

    # --- helpers -------------------------------------------------------------------------

    def _cli(self, what: str, argv: list[str], secret: list[str] | None = None) -> str:
        """Run a short command; its stdout, or DemoError with its stderr."""
        try:
            done = subprocess.run(
                argv + (secret or []),
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"{what} took over {CLI_TIMEOUT_S:.0f} s: `{' '.join(argv)}`") from None
        if done.returncode != 0:
            raise DemoError(f"{what} failed: `{' '.join(argv)}` said:\n{done.stderr.strip()}")
        return done.stdout

    @contextmanager
    def _database(self) -> Iterator[Engine]:
        from hub import db

        engine = db.make_engine(f"sqlite:///{self.layout.database}")
        try:
            yield engine
        finally:
            engine.dispose()

    def _active(self, device: str) -> str | None:
        """The version of the demo model the hub last heard active on `device`."""
        from hub.fleet import registry

        with self._database() as engine:
            try:
                details = registry.show_device(engine, device)
            except registry.RegistryError:
                return None
        return next((m.active for m in details.models if m.model == MODEL), None)

    def _seen(self, device: str, since: datetime) -> bool:
        """Whether the hub heard from `device` since then, with its demo model active."""
        from hub.fleet import registry

        with self._database() as engine:
            try:
                details = registry.show_device(engine, device)
            except registry.RegistryError:
                return False
        seen = details.device.last_seen
        if seen is None or not any(m.model == MODEL and m.active for m in details.models):
            return False
        return (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) >= since

    def _ready(self, device: str) -> bool:
        try:
            url = f"{self.agent_url(device)}/readyz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _children(self) -> list[Child]:
        return [*self.agents.values(), *([self.hub] if self.hub else [])]

    def _check_children(self) -> None:
        for child in self._children():
            child.check()

    def _wait(
        self, what: str, check: Callable[[], object], timeout: float = START_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_children()
            if check():
                return
            time.sleep(0.2)
        raise DemoError(
            f"timed out after {timeout:.0f} s waiting for {what}; see the logs in "
            f"{self.layout.logs}"
        )

    def _stop_children(self) -> None:
        """The agents first (they would only retry a vanished broker), then the hub."""
        for group in (list(self.agents.values()), [self.hub] if self.hub else []):
            for child in group:
                child.terminate()
            for child in group:
                child.finish()
        self.agents.clear()
        self.hub = None

    # --- summary -------------------------------------------------------------------------

    def _summary(self) -> None:
        config = self.layout.hub_config
        first = self.devices[0]
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]})
        lines = [
            f"[bold]edge-hub demo: ready[/] - the hub and {len(self.devices)} devices "
            f"(folder {self.layout.root})",
            "",
            f"  hub      {self.hub_url}  (releases, enrollment; broker "
            f"mqtts://127.0.0.1:{self.ports['broker']})",
            f"  console  {self.hub_url}/console/  (the browser warns once: the hub's own CA "
            f"{self.layout.hub / 'identity' / 'ca.crt'} signs it)",
            "  login    "
            + (
                f"admin / {self.admin_password}  (one-time: choose your own at the first login)"
                if self.admin_password
                else "admin, with the password you chose (a new one-time one: "
                "`edge-hub user passwd admin`)"
            ),
        ]
        for device in self.devices:
            lines.append(
                f"  {device:<8} {self.agent_url(device)}/v1  ({MODEL} {self._active(device)}, "
                "OpenAI-compatible)"
            )
        lines += [
            "",
            f"Roll out {MODEL} {SECOND}: open rollout {self.rollout} in the console "
            f"({self.hub_url}/console/rollouts/{self.rollout}) and approve each wave",
            "",
            "Ask a device:",
            f"  curl {self.agent_url(first)}/v1/chat/completions "
            f"-H 'Content-Type: application/json' -d '{body}'",
            "",
            "Look at the fleet from another terminal:",
            f"  source {self._write_env_file()}   # PATH and EDGE_HUB_CONFIG={config}",
            "  edge-hub device list",
            f"  edge-hub device show {first}",
            f"  edge-hub telemetry report --model {MODEL}   # once a 5-minute window closed",
            f"  edge-agent --config {self.layout.agent_config(first)} status   # {first}'s view",
            "",
            f"Logs in {self.layout.logs}. Ctrl-C stops the fleet; running the demo again "
            "resumes it.",
        ]
        for line in lines:
            self.out.print(line, soft_wrap=True, highlight=False)

    def _write_env_file(self) -> Path:
        """What a new terminal needs for the printed commands: the tools of this Python
        environment on PATH and the demo hub's config."""
        path = self.layout.root / "demo.env"
        path.write_text(
            "# source this file in a new terminal to use the demo's hub and devices\n"
            f'export PATH={shlex.quote(str(BIN))}:"$PATH"\n'
            f"export {CONFIG_ENV}={shlex.quote(str(self.layout.hub_config))}\n"
        )
        return path


def _variant(model_dir: Path, folder: Path) -> Path:
    """The model with other sampling defaults: a release that differs in one small file.
    The big files are hard links (copies across file systems)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(model_dir, folder, copy_function=link)
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    config["search"].update(SECOND_SEARCH)
    path.unlink()  # a hard link: write a new file, never into the cached model
    path.write_text(json.dumps(config, indent=4))
    return folder


@contextmanager
def _signals_stop() -> Iterator[None]:
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(options: DemoOptions, stdout: IO[str] | None = None) -> None:
    """`edge-hub demo`: returns after Ctrl-C or SIGTERM, DemoError when a step fails."""
    quiet = [logging.getLogger(name) for name in ("hub", "edge_agent")]
    levels = [logger.level for logger in quiet]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # the progress lines say it
        for logger in quiet:
            logger.setLevel(logging.WARNING)
    console = logs.console()  # the log handler's console: log lines print above a spinner
    out = Console(file=stdout or sys.stdout, highlight=False)
    try:
        Demo(options, console, out).run()
    finally:  # a caller in the same process (a test, a script) keeps its own log levels
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)

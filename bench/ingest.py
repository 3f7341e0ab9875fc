"""Ingest benchmark: the hub's MQTT ingest into SQLite and PostgreSQL against the broker alone.

One run, with a private Mosquitto (a fresh one per phase) and a private PostgreSQL, sends
the same N realistic device messages (reported states with one or two models, heartbeats,
install events from a few hundred devices, encoded as the agent encodes them) through:

1. **Reference**: a plain paho subscriber (MQTT 5, QoS 1, the hub's shared-subscription
   filters and CONNECT properties, acking each message as it arrives) that only counts.
2. **SQLite**: one `python -m hub.ingest` worker into a SQLite file (target >= 0.8 of the
   reference's rate), at the hub's synchronous=FULL (a commit is on the disk before the
   worker acks it). Beside it the same worker at synchronous=NORMAL (durable only at
   checkpoints; the hub used it before): what the durability costs, in rate and CPU.
3. **PostgreSQL**: one worker into PostgreSQL (target >= 0.8 of the reference's rate).
4. **PostgreSQL, two workers**: two worker processes on the shared subscription (target
   >= 1.5 times one worker's rate). Beside it the run prints the most a second worker can
   add on this machine: usable cores over the cores the one-worker phase kept busy.

Every consumer runs in a process of its own and is pre-loaded: it connects and subscribes,
is frozen with SIGSTOP, the N messages are published at QoS 1 (every PUBACK awaited), and
the clock runs from SIGCONT until the last message has arrived (reference) or is committed
(hub: rows in received_messages and telemetry_reports). So the publisher's speed and the
workers' start-up are not measured. After each hub phase the database must hold exactly
the N message ids, and the install events and reported states they imply (target: 0 lost).

Human-readable lines go out as the run goes; the last line is one JSON object with every
figure. Missed targets do not fail the run (it is a measurement); errors do.

    .venv/bin/python bench/ingest.py [--messages 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import child_pids, cpu_busy_seconds, figure, median, process_cpu_seconds, report

# Run as a plain script from anywhere: the hub and the tests' private servers import.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paho.mqtt.client import Client, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.protocol.messages import (
    Envelope,
    Heartbeat,
    InstallEvent,
    ModelReport,
    ReportedState,
    UpdateEvent,
    UpdatePhase,
    UpdateResult,
    encode,
    topic_for,
)
from hub.ingest.consumer import IngestSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
POLL_S = 0.02  # how often the database is counted while a hub phase runs
# The private broker logs every packet by default ("log_type all"): that would measure
# Mosquitto's log file. `none` resets the mask; the rest is what a production broker logs.
BROKER_LOG = ["log_type none", "log_type error", "log_type warning", "log_type notice"]
MODELS = ("chat", "vision", "asr", "embed")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- the messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    wire: list[tuple[str, bytes]]  # (topic, payload) in publishing order
    ids: frozenset[str]
    events: int  # install events among them
    telemetry: int  # telemetry reports among them
    reported_pairs: int  # distinct (device, model) pairs with a reported state
    kinds: dict[str, int]
    mean_bytes: float


def workload(count: int, devices: int, seed: int) -> Workload:
    """`count` messages from `devices` devices, in a mix a fleet sends: mostly heartbeats
    and reported states, hourly telemetry reports, some install events; each device's
    clock moves forward."""
    from tests.hub_telemetry.helpers import busy

    rng = random.Random(seed)
    names = [f"dev-{i:05d}" for i in range(devices)]
    models = {name: list(MODELS[: rng.choice((1, 1, 2))]) for name in names}
    clock = dict.fromkeys(names, 0)
    wire: list[tuple[str, bytes]] = []
    ids: set[str] = set()
    kinds: dict[str, int] = {}
    pairs: set[tuple[str, str]] = set()
    events = telemetry = 0
    for _ in range(count):
        device = rng.choice(names)
        clock[device] += rng.randint(1, 60)
        sent_at = T0 + timedelta(seconds=clock[device], microseconds=rng.randint(0, 999_999))
        roll = rng.random()
        if roll < 0.2:
            # Anonymous: the telemetry test helpers' busy hour (requests, histograms, errors).
            envelope = busy(rng.randrange(devices), hour=rng.randrange(140))
            wire.append((topic_for(envelope), encode(envelope)))
            ids.add(envelope.message_id)
            kinds["telemetry"] = kinds.get("telemetry", 0) + 1
            telemetry += 1
            continue
        payload: ReportedState | Heartbeat | InstallEvent
        if roll < 0.6:
            payload = Heartbeat(uptime_seconds=clock[device], outbox_depth=rng.choice((0, 0, 0, 3)))
        elif roll < 0.9:
            reports = {
                model: ModelReport(
                    active=f"1.{rng.randint(0, 9)}.0",
                    previous="1.0.0",
                    floor="1.0.0",
                    phase=UpdatePhase.IDLE,
                    last_result=UpdateResult.SUCCEEDED,
                )
                for model in models[device]
            }
            payload = ReportedState(agent_version="0.1.0", models=reports, desired_sequence=3)
            pairs.update((device, model) for model in reports)
        else:
            failed = rng.random() < 0.1
            payload = InstallEvent(
                model=rng.choice(models[device]),
                version=f"1.{rng.randint(1, 9)}.0",
                event=UpdateEvent.FAILED if failed else UpdateEvent.INSTALLED,
                from_version="1.0.0",
                error="health check failed: generation timed out" if failed else None,
            )
            events += 1
        envelope = Envelope.of(payload, device_id=device, sent_at=sent_at)
        wire.append((topic_for(envelope), encode(envelope)))
        ids.add(envelope.message_id)
        kinds[str(envelope.kind)] = kinds.get(str(envelope.kind), 0) + 1
    mean_bytes = sum(len(data) for _, data in wire) / len(wire)
    return Workload(wire, frozenset(ids), events, telemetry, len(pairs), kinds, mean_bytes)


# --- broker, clients, processes ----------------------------------------------------------


def connect_properties(settings: IngestSettings) -> Properties:
    """What the hub's worker sends in CONNECT; the reference sends the same."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = settings.session_expiry_s
    properties.ReceiveMaximum = settings.receive_maximum
    return properties


def publish_all(port: int, wire: Sequence[tuple[str, bytes]]) -> float:
    """Publish every message at QoS 1 and wait for every PUBACK; seconds taken."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-publisher",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(1000)  # paho's default of 20 makes publishing slow
    started = time.perf_counter()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    try:
        infos: list[MQTTMessageInfo] = [client.publish(t, p, qos=1) for t, p in wire]
        for info in infos:
            info.wait_for_publish(60.0)
            if not info.is_published():
                raise RuntimeError(f"message {info.mid} not acknowledged by the broker")
    finally:
        client.disconnect()
        client.loop_stop()
    return time.perf_counter() - started


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def read_line(self, timeout_s: float) -> str:
        """The next line of the child's stdout; RuntimeError on timeout or exit."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(
                f"{self.name}: no output within {timeout_s:.0f} s "
                f"(exit {self.process.poll()}):\n{self.log_tail()}"
            )
        return line.strip()

    def expect(self, prefix: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.0))
            if line.startswith(prefix):
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a frozen process cannot end
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


@contextmanager
def children(
    commands: Sequence[tuple[str, list[str]]], workdir: Path, env: dict[str, str] | None = None
) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        for name, command in commands:
            log_path = workdir / f"{name}.log"
            with log_path.open("w") as log:
                process = subprocess.Popen(
                    command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env
                )
            started.append(Child(name, process, log_path))
        yield started
    finally:
        for child in started:
            child.stop()


# --- one phase ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    delivered: int  # distinct messages that arrived (reference) or were stored (hub)
    lost: int
    cpu_cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        """The consumer processes' CPU per message: what the rate would show on idle cores."""
        used = self.cpu_cores.get("consumer", 0.0) * self.seconds
        return used / self.delivered * 1e6 if self.delivered else 0.0

    def sample(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 4),
            "msg_per_s": round(self.rate, 1),
            "consumer_cpu_us_per_msg": round(self.cpu_us_per_message, 1),
            "delivered": self.delivered,
            "lost": self.lost,
            "cpu_cores": {k: round(v, 3) for k, v in self.cpu_cores.items()},
            "notes": self.notes,
        }


class CpuMeter:
    """Cores used over a window: by each group of processes, by the whole machine. A group's
    processes are listed at both ends: one that starts meanwhile counts from zero."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start = self._read()

    def _read(self) -> tuple[float, float, dict[str, dict[int, float]]]:
        used = {
            name: {pid: process_cpu_seconds(pid) for pid in pids()}
            for name, pids in self.groups.items()
        }
        return time.monotonic(), cpu_busy_seconds(), used

    def cores(self) -> dict[str, float]:
        (t0, busy0, used0), (t1, busy1, used1) = self._start, self._read()
        wall = max(t1 - t0, 1e-9)
        cores = {
            name: sum(cpu - used0[name].get(pid, 0.0) for pid, cpu in used1[name].items()) / wall
            for name in self.groups
        }
        cores["machine"] = (busy1 - busy0) / wall
        cores["others"] = max(cores["machine"] - sum(cores[name] for name in self.groups), 0.0)
        return cores


def broker_pid(config_path: Path) -> list[int]:
    """The Mosquitto started with `config_path` (found by its command line)."""
    wanted = str(config_path)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted.encode() in argv:
                return [int(entry.name)]
    return []


def reference_phase(workload: Workload, workdir: Path, settings: IngestSettings) -> Phase:
    from tests.mqtt_broker import MosquittoBroker

    with MosquittoBroker(workdir / "broker", extra_config=BROKER_LOG) as broker:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--subscriber",
            "--port",
            str(broker.port),
            "--messages",
            str(len(workload.wire)),
        ]
        with children([("reference", command)], workdir) as (child,):
            child.expect("ready")
            os.kill(child.process.pid, signal.SIGSTOP)
            publish_all(broker.port, workload.wire)
            pid, broker_pids = child.process.pid, broker_pid(broker.config_path)
            meter = CpuMeter({"consumer": lambda: [pid], "broker": lambda: broker_pids})
            started = time.monotonic()
            os.kill(child.process.pid, signal.SIGCONT)
            timeout = 30.0 + len(workload.wire) / 500
            line = child.expect("done", timeout)
            cores = meter.cores()
            finished = float(line.split()[1])
            _, total, distinct = child.expect("received").split()
    lost = len(workload.wire) - int(distinct)
    notes = [f"received {total} messages, {distinct} distinct"]
    return Phase("reference", finished - started, int(distinct), lost, cores, notes)


def received_ids(url: str) -> set[str]:
    from sqlalchemy import select

    from hub import db
    from hub.fleet.models import ReceivedMessage
    from hub.telemetry.models import TELEMETRY

    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            # Device messages are listed in received_messages, telemetry only in its table.
            column = ReceivedMessage.__table__.c.message_id  # type: ignore[attr-defined]
            ids = {str(row[0]) for row in connection.execute(select(column))}
            ids |= {str(row[0]) for row in connection.execute(select(TELEMETRY.c.message_id))}
            return ids
    finally:
        engine.dispose()


def table_counts(url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from hub import db
    from hub.fleet.models import InstallEventRecord, ReportedModelState
    from hub.telemetry.models import TELEMETRY

    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            tables: dict[str, Any] = {
                "install_events": InstallEventRecord,
                "reported_state": ReportedModelState,
                "telemetry": TELEMETRY,
            }
            return {
                name: int(connection.execute(select(func.count()).select_from(t)).scalar_one())
                for name, t in tables.items()
            }
    finally:
        engine.dispose()


def synchronous_env(workdir: Path, level: str) -> dict[str, str] | None:
    """An environment whose Python processes open the hub's SQLite at `level`: a
    sitecustomize sets it at start-up, so the worker's spawned writer process has it too.
    None for the hub's own level."""
    from hub import db

    if level == db.SQLITE_SYNCHRONOUS:
        return None
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import hub.db\nhub.db.SQLITE_SYNCHRONOUS = {level!r}\n"
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def hub_phase(
    name: str,
    workload: Workload,
    workdir: Path,
    url: str,
    workers: int,
    db_pids: Callable[[], list[int]] | None = None,
    synchronous: str = "FULL",
) -> Phase:
    from sqlalchemy import text

    from hub import db
    from tests.mqtt_broker import MosquittoBroker

    db.migrate(url)  # here, once: two workers migrating at once would race
    expected = len(workload.wire)
    # The hub's telemetry token seed: the workload's reports carry the tokens it issues.
    from tests.hub_telemetry.helpers import TOKEN_SEED

    seed_file = workdir / "telemetry-token.seed"
    seed_file.write_bytes(TOKEN_SEED)
    with MosquittoBroker(workdir / "broker", extra_config=BROKER_LOG) as broker:
        commands = [
            (
                f"{name}-worker-{i}",
                [
                    sys.executable,
                    "-m",
                    "hub.ingest",
                    "--database-url",
                    url,
                    "--port",
                    str(broker.port),
                    "--client-id",
                    f"bench-ingest-{i}",
                    "--no-migrate",
                    "--token-seed-file",
                    str(seed_file),
                ],
            )
            for i in range(workers)
        ]
        engine = db.make_engine(url)
        counting = text(
            "SELECT (SELECT count(*) FROM received_messages)"
            " + (SELECT count(*) FROM telemetry_reports)"
        )
        try:
            env = synchronous_env(workdir, synchronous)
            with children(commands, workdir, env) as workers_, engine.connect() as connection:
                for child in workers_:
                    child.expect("ingest: ready")
                pids = [child.process.pid for child in workers_]
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                publish_all(broker.port, workload.wire)
                broker_pids = broker_pid(broker.config_path)
                # A worker's writer process (hub.ingest's default) counts as the worker.
                family = pids + [c for pid in pids for c in child_pids(pid)]
                groups = {"consumer": lambda: family, "broker": lambda: broker_pids}
                if db_pids is not None:
                    groups["database"] = db_pids
                meter = CpuMeter(groups)
                started = time.monotonic()
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                deadline = started + 30.0 + expected / 200
                stored = 0
                while stored < expected and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    stored = int(connection.execute(counting).scalar_one())
                    connection.rollback()  # a fresh snapshot for the next count
                finished = time.monotonic()
                cores = meter.cores()
                time.sleep(0.2)  # anything delivered twice or late shows in the checks below
                for child in workers_:
                    child.stop()
                notes = [
                    line.split("ingest: stopped; ", 1)[1]
                    for child in workers_
                    for line in child.log_tail(20_000).splitlines()
                    if "ingest: stopped; " in line
                ]
        finally:
            engine.dispose()
    ids = received_ids(url)
    lost = len(workload.ids - ids)
    extra = len(ids - workload.ids)
    counts = table_counts(url)
    if extra:
        notes.append(f"{extra} unexpected message ids stored")
    if counts["install_events"] != workload.events:
        notes.append(f"install_events: {counts['install_events']}, sent {workload.events}")
    if counts["telemetry"] != workload.telemetry:
        notes.append(f"telemetry: {counts['telemetry']}, sent {workload.telemetry}")
    if counts["reported_state"] != workload.reported_pairs:
        notes.append(f"reported_state: {counts['reported_state']}, sent {workload.reported_pairs}")
    if stored < expected:
        notes.append(f"timed out with {stored} of {expected} stored")
    return Phase(name, finished - started, len(ids & workload.ids), lost + extra, cores, notes)


# --- the reference subscriber (a child process of this script) ---------------------------


def subscriber(port: int, expected: int) -> None:
    """Count messages on the hub's filters; say when all `expected` have arrived."""
    settings = IngestSettings(host="127.0.0.1", port=port, client_id="bench-reference")
    payloads: list[bytes | bytearray] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(_client: Client, _userdata: Any, message: MQTTMessage) -> None:
        payloads.append(message.payload)
        if len(payloads) == expected:
            print(f"done {time.monotonic()}", flush=True)
            done.set()

    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=False,
        properties=connect_properties(settings),
    )
    client.loop_start()
    client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in settings.filters])
    if not subscribed.wait(10):
        raise TimeoutError("reference subscriber: no SUBACK")
    print("ready", flush=True)
    done.wait()
    time.sleep(0.2)  # duplicates would arrive now
    print(f"received {len(payloads)} {len(set(map(bytes, payloads)))}", flush=True)
    client.disconnect()
    client.loop_stop()


# --- the run -----------------------------------------------------------------------------


def cores_text(phase: Phase) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in phase.cpu_cores.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per phase")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="of every phase, interleaved")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subscriber:
        subscriber(args.port, args.messages)
        return 0

    from hub import db
    from tests.hub_ingest.conftest import PrivatePostgres

    load = workload(args.messages, args.devices, args.seed)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(load.kinds.items()))
    print(
        f"workload: {len(load.wire)} messages from {args.devices} devices ({kinds}), "
        f"{load.mean_bytes:.0f} bytes on average",
        flush=True,
    )
    settings = IngestSettings(host="127.0.0.1", port=0)
    phases: dict[str, list[Phase]] = {}
    postgres = PrivatePostgres()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        postgres.start()
        try:
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])

            def backends() -> list[int]:
                return child_pids(postmaster)

            for round_ in range(args.rounds):
                runs: list[tuple[str, Any]] = [
                    ("reference", lambda w: reference_phase(load, w, settings)),
                    (
                        "sqlite",
                        lambda w: hub_phase("sqlite", load, w, db.sqlite_url(w / "hub.sqlite3"), 1),
                    ),
                    (
                        "sqlite_normal",
                        lambda w: hub_phase(
                            "sqlite_normal",
                            load,
                            w,
                            db.sqlite_url(w / "hub.sqlite3"),
                            1,
                            synchronous="NORMAL",
                        ),
                    ),
                    (
                        "postgres",
                        lambda w: hub_phase(
                            "postgres", load, w, postgres.new_database(), 1, backends
                        ),
                    ),
                    (
                        "postgres_2_workers",
                        lambda w: hub_phase(
                            "postgres_2_workers",
                            load,
                            w,
                            postgres.new_database(),
                            2,
                            backends,
                        ),
                    ),
                ]
                for name, run in runs:
                    workdir = tmp / f"{name}-{round_}"
                    workdir.mkdir()
                    phase: Phase = run(workdir)
                    phases.setdefault(name, []).append(phase)
                    print(
                        f"round {round_ + 1} {name}: {phase.rate:,.0f} msg/s "
                        f"({phase.delivered} in {phase.seconds:.2f} s, lost {phase.lost}, "
                        f"{phase.cpu_us_per_message:.0f} us of consumer CPU each); "
                        f"cores: {cores_text(phase)}"
                        + "".join(f"\n    {note}" for note in phase.notes),
                        flush=True,
                    )
        finally:
            postgres.stop()

    rate = {name: median([p.rate for p in runs_]) for name, runs_ in phases.items()}
    cpu = {name: median([p.cpu_us_per_message for p in r]) for name, r in phases.items()}
    others = median([p.cpu_cores["others"] for r in phases.values() for p in r])
    lost = sum(p.lost for runs_ in phases.values() for p in runs_)
    sqlite_ratio = rate["sqlite"] / rate["reference"]
    pg_ratio = rate["postgres"] / rate["reference"]
    speedup = rate["postgres_2_workers"] / rate["postgres"]
    # What a second worker could add at most here: the cores the one-worker phase left
    # idle. Its whole pipeline (worker, database, broker) already keeps `machine` cores busy,
    # and a second worker needs as much CPU per message again.
    usable = len(os.sched_getaffinity(0))
    machine = median([p.cpu_cores["machine"] for p in phases["postgres"]])
    ceiling = usable / machine
    result = {
        "figures": {
            "reference_msg_per_s": figure(rate["reference"]),
            "sqlite_msg_per_s": figure(rate["sqlite"]),
            "sqlite_vs_reference": figure(sqlite_ratio, ">= 0.8", sqlite_ratio >= 0.8),
            # The durability's cost: the same worker at synchronous=NORMAL, same run.
            "sqlite_normal_msg_per_s": figure(rate["sqlite_normal"]),
            "sqlite_full_vs_normal": figure(rate["sqlite"] / rate["sqlite_normal"]),
            "sqlite_full_vs_normal_cpu": figure(cpu["sqlite"] / cpu["sqlite_normal"]),
            "postgres_msg_per_s": figure(rate["postgres"]),
            "postgres_vs_reference": figure(pg_ratio, ">= 0.8", pg_ratio >= 0.8),
            "postgres_2_workers_msg_per_s": figure(rate["postgres_2_workers"]),
            "postgres_2_workers_speedup": figure(speedup, ">= 1.5", speedup >= 1.5),
            "postgres_2_workers_ceiling_here": figure(ceiling),
            "lost_messages": figure(lost, "== 0", lost == 0),
            # CPU per message of the consumer processes: steadier than rates on a shared
            # machine, and the reference's over the hub's is the ratio idle cores would show.
            **{f"{name}_cpu_us_per_msg": figure(cpu[name]) for name in cpu},
            "sqlite_cpu_ratio": figure(cpu["reference"] / cpu["sqlite"]),
            "postgres_cpu_ratio": figure(cpu["reference"] / cpu["postgres"]),
            "other_load_cores": figure(others),
        },
        "reference": "a plain paho subscriber counting the same messages from the same broker",
        "settings": {
            "messages": args.messages,
            "devices": args.devices,
            "rounds": args.rounds,
            "seed": args.seed,
            "mean_bytes": round(load.mean_bytes, 1),
            "kinds": load.kinds,
            "usable_cores": usable,
        },
        "samples": [p.sample() for runs_ in phases.values() for p in runs_],
    }
    print(
        f"other processes used {others:.2f} cores meanwhile (median of the phases)"
        + ("; above 0.1, compare CPU per message rather than rates" if others > 0.1 else ""),
        flush=True,
    )
    print(
        f"one PostgreSQL worker kept {machine:.2f} of {usable} cores busy: on this machine two "
        f"workers can reach at most {ceiling:.2f}x one worker's rate",
        flush=True,
    )
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Simulated devices spread over worker processes, for fleets one loop thread cannot keep up
with (the rollout benchmark's 10,000 devices: verification and paho's decoding take the
loop thread's whole core, and the GIL keeps a second thread from helping).

Each worker is a spawned process running its own `SimulatedFleet` (its own selector loop,
real TLS, real certificates, `verify_desired`, the agent's reports) over its share of the
devices. The parent talks to them over pipes and gets back plain values: per-device
sequences and `time.monotonic()` timestamps (the same clock in every process on Linux), the
loop threads' CPU seconds, refusal counts.

    with FleetProcesses(address, director_keys, processes=2) as fleet:
        fleet.add(enrolled, active={"chat": "1.0.0"})
        fleet.connect()
        ... the hub publishes ...
        fleet.wait_sequence(dict.fromkeys(ids, 2))
        fleet.snapshot()   # device id -> DeviceSnapshot(last_sequence, verified_at, ...)

Tests keep the one-process `SimulatedFleet`, whose devices they read directly.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.mqtt import BrokerAddress
from hub.simulate.enroll import Enrolled
from hub.simulate.fleet import FleetTimeout, SimulatedFleet

START_TIMEOUT_S = 120.0
POLL_S = 0.01


@dataclass(frozen=True)
class DeviceSnapshot:
    last_sequence: int
    verified_at: float | None  # time.monotonic(), comparable across processes
    received_at: float | None
    refusals: int


class FleetProcesses:
    def __init__(
        self,
        broker: BrokerAddress,
        director_keys: Mapping[str, Ed25519PublicKey],
        *,
        processes: int = 2,
        seed: int = 0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        # Keys do not pickle: the workers get their raw bytes.
        raw = {k: v.public_bytes(Encoding.Raw, PublicFormat.Raw) for k, v in director_keys.items()}
        context = multiprocessing.get_context("spawn")  # the parent has threads: no fork
        self._connections: list[Connection] = []
        self._workers: list[Any] = []
        self._owner: dict[str, int] = {}
        for index in range(processes):
            parent, child = context.Pipe()
            worker = context.Process(
                target=_worker_main,
                args=(child, broker, raw, seed + index),
                name=f"simulated-devices-{index}",
                daemon=True,
            )
            worker.start()
            self._connections.append(parent)
            self._workers.append(worker)
        for index in range(processes):
            self._receive(index, START_TIMEOUT_S)

    # --- talking to the workers ----------------------------------------------------------

    def _receive(self, index: int, timeout_s: float) -> Any:
        connection = self._connections[index]
        if not connection.poll(timeout_s):
            raise FleetTimeout(f"simulated-device worker {index} did not answer in {timeout_s} s")
        status, value = connection.recv()
        if status == "error":
            raise RuntimeError(f"simulated-device worker {index}: {value}")
        return value

    def _call_all(self, command: str, per_worker: Sequence[Any], timeout_s: float) -> list[Any]:
        """Send each worker its command at once, then collect the answers (they run in
        parallel)."""
        for connection, args in zip(self._connections, per_worker, strict=True):
            connection.send((command, args))
        # Every answer is read before one is raised: one left in a pipe would answer the
        # next call.
        answers: list[Any] = []
        failures: list[Exception] = []
        for index in range(len(self._connections)):
            try:
                answers.append(self._receive(index, timeout_s + 30))
            except RuntimeError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        return answers

    def _split(self, device_ids: Iterable[str]) -> list[list[str]]:
        shares: list[list[str]] = [[] for _ in self._connections]
        for device_id in device_ids:
            shares[self._owner[device_id]].append(device_id)
        return shares

    # --- the fleet -----------------------------------------------------------------------

    @property
    def device_ids(self) -> list[str]:
        return list(self._owner)

    def add(self, enrolled: Sequence[Enrolled], *, active: Mapping[str, str]) -> None:
        """Devices for these identities, dealt round-robin over the workers."""
        shares: list[list[Enrolled]] = [[] for _ in self._connections]
        for position, identity in enumerate(enrolled):
            index = position % len(shares)
            shares[index].append(identity)
            self._owner[identity.device_id] = index
        self._call_all("add", [(share, dict(active)) for share in shares], START_TIMEOUT_S)

    def connect(self, *, timeout_s: float = 120) -> None:
        self._call_all("connect", [(timeout_s,)] * len(self._connections), timeout_s)

    def wait_sequence(self, sequence_of: Mapping[str, int], timeout_s: float = 60) -> None:
        shares = self._split(sequence_of)
        args = [({d: sequence_of[d] for d in share}, timeout_s) for share in shares]
        self._call_all("wait_sequence", args, timeout_s)

    def wait_received_after(self, instant: float, timeout_s: float = 60) -> None:
        """Until every device received a desired message at or after `instant` (monotonic)."""
        self._call_all(
            "wait_received_after", [(instant, timeout_s)] * len(self._workers), timeout_s
        )

    def snapshot(self) -> dict[str, DeviceSnapshot]:
        merged: dict[str, DeviceSnapshot] = {}
        for part in self._call_all("snapshot", [()] * len(self._workers), 60):
            merged.update(part)
        return merged

    def loop_cpu_seconds(self) -> list[float]:
        """CPU seconds used so far by each worker's device-loop thread."""
        return list(self._call_all("loop_cpu", [()] * len(self._workers), 30))

    def stop(self) -> None:
        for index, connection in enumerate(self._connections):
            try:
                connection.send(("stop", ()))
                self._receive(index, 30)
            except (OSError, EOFError, FleetTimeout, RuntimeError):
                pass  # the worker is gone already: nothing to stop
        for worker in self._workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()

    def __enter__(self) -> FleetProcesses:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --- in the worker -------------------------------------------------------------------------


def _thread_cpu_seconds(native_id: int) -> float:
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_pending(pending: list[Any], done: Any, timeout_s: float, what: str) -> None:
    """Poll only the devices not done yet, so the check costs the loop thread less and less
    of the GIL as the wave goes through."""
    deadline = time.monotonic() + timeout_s
    while pending:
        pending = [d for d in pending if not done(d)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise FleetTimeout(f"{what}: {len(pending)} devices not within {timeout_s} s")
        time.sleep(POLL_S)


class _Worker:
    def __init__(self, broker: BrokerAddress, raw_keys: dict[str, bytes], seed: int) -> None:
        keys = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in raw_keys.items()}
        self.fleet = SimulatedFleet(broker, keys, seed=seed)

    def add(self, enrolled: list[Enrolled], active: dict[str, str]) -> None:
        self.fleet.add(enrolled, active=active)

    def connect(self, timeout_s: float) -> None:
        self.fleet.connect(timeout_s=timeout_s)

    def wait_sequence(self, sequence_of: dict[str, int], timeout_s: float) -> None:
        devices = [self.fleet.devices[d] for d in sequence_of]
        _wait_pending(
            devices,
            lambda d: d.last_sequence >= sequence_of[d.device_id],
            timeout_s,
            "simulated devices verified their desired state",
        )

    def wait_received_after(self, instant: float, timeout_s: float) -> None:
        _wait_pending(
            list(self.fleet.devices.values()),
            lambda d: (d.received_at or 0.0) >= instant,
            timeout_s,
            "simulated devices received a desired message",
        )

    def snapshot(self) -> dict[str, DeviceSnapshot]:
        return {
            d.device_id: DeviceSnapshot(
                d.last_sequence, d.verified_at, d.received_at, len(d.refusals)
            )
            for d in self.fleet.devices.values()
        }

    def loop_cpu(self) -> float:
        thread = self.fleet.loop._thread
        assert thread is not None and thread.native_id is not None
        return _thread_cpu_seconds(thread.native_id)


def _worker_main(
    connection: Connection, broker: BrokerAddress, raw_keys: dict[str, bytes], seed: int
) -> None:
    worker = _Worker(broker, raw_keys, seed)
    connection.send(("ok", threading.get_ident()))
    while True:
        command, args = connection.recv()
        if command == "stop":
            worker.fleet.stop()
            connection.send(("ok", None))
            return
        try:
            connection.send(("ok", getattr(worker, command)(*args)))
        except Exception as exc:  # the parent raises it with the worker's message
            connection.send(("error", f"{type(exc).__name__}: {exc}"))

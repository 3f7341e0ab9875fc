"""A fleet of simulated devices in one process, on one ClientLoop thread.

The test or benchmark thread calls the methods here; each hands the work to the loop's
thread (`_in_loop`) and, where it says so, waits for it. Device attributes may be read from
any thread (they are plain values written by the loop's thread only).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.mqtt import BrokerAddress
from edge_agent.protocol import DesiredState
from hub.simulate.device import SimulatedDevice
from hub.simulate.enroll import Enrolled
from hub.simulate.loop import ClientLoop, raise_fd_limit
from hub.simulate.runtime import DeviceProfile, StubRuntime
from hub.simulate.telemetry import DeviceTelemetry, IssueToken, last_closed_window

T = TypeVar("T")

DEFAULT_AGENT_VERSION = "1.0.0"


class FleetTimeout(TimeoutError):
    pass


class SimulatedFleet:
    def __init__(
        self,
        broker: BrokerAddress,
        director_keys: Mapping[str, Ed25519PublicKey],
        *,
        issue_token: IssueToken | None = None,
        agent_version: str = DEFAULT_AGENT_VERSION,
        keepalive_s: int = 60,
        seed: int = 0,
    ) -> None:
        raise_fd_limit()
        self.broker = broker
        self.director_keys = dict(director_keys)
        self.issue_token = issue_token
        self.agent_version = agent_version
        self.keepalive_s = keepalive_s
        self.devices: dict[str, SimulatedDevice] = {}
        self._telemetry: dict[str, DeviceTelemetry] = {}
        self._seed = random.Random(seed)
        self._verified_hooks: list[Callable[[SimulatedDevice, DesiredState], None]] = []
        self.loop = ClientLoop()
        self.loop.start()

    # --- building ------------------------------------------------------------------------

    def add(
        self,
        enrolled: Iterable[Enrolled],
        *,
        profile: DeviceProfile | None = None,
        active: Mapping[str, str] | None = None,
    ) -> list[SimulatedDevice]:
        """Simulated devices for these enrolled identities (not yet connected), each running
        `active` (model -> version) with `profile`'s behaviour."""
        added = []
        for identity in enrolled:
            runtime = StubRuntime(profile or DeviceProfile(), random.Random(self._seed.random()))
            runtime.active.update(active or {})
            runtime.floor.update(active or {})  # what runs was healthy: the floor
            device = SimulatedDevice(
                identity,
                runtime,
                self.loop,
                broker=self.broker,
                director_keys=self.director_keys,
                agent_version=self.agent_version,
                keepalive_s=self.keepalive_s,
                on_verified=self._verified,
            )
            self.devices[device.device_id] = device
            self._telemetry[device.device_id] = DeviceTelemetry(device.device_id, self.issue_token)
            added.append(device)
        return added

    def on_verified(self, hook: Callable[[SimulatedDevice, DesiredState], None]) -> None:
        """Call `hook(device, state)` in the loop's thread for every accepted desired state."""
        self._verified_hooks.append(hook)

    def _verified(self, device: SimulatedDevice, state: DesiredState) -> None:
        for hook in self._verified_hooks:
            hook(device, state)

    def _select(self, device_ids: Iterable[str] | None) -> list[SimulatedDevice]:
        if device_ids is None:
            return list(self.devices.values())
        return [self.devices[d] for d in device_ids]

    # --- running in the loop -------------------------------------------------------------

    def _in_loop(self, work: Callable[[], T], timeout_s: float = 600.0) -> T:
        """Run `work` in the loop's thread and return its result."""
        done = threading.Event()
        box: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                box.append(work())
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        self.loop.call_soon(run)
        if not done.wait(timeout_s):
            raise FleetTimeout(f"the simulated devices' loop did not answer in {timeout_s} s")
        if failure:
            raise failure[0]
        return box[0]

    def wait_until(
        self, condition: Callable[[], bool], timeout_s: float, what: str = "condition"
    ) -> None:
        """Poll `condition` until it holds; FleetTimeout saying `what` did not happen."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise FleetTimeout(f"{what}: not reached within {timeout_s} s")
            time.sleep(0.01)

    # --- connecting ----------------------------------------------------------------------

    def connect(self, device_ids: Iterable[str] | None = None, *, timeout_s: float = 120) -> None:
        """Bring devices online and wait until each is subscribed to its desired topic
        (so a retained desired state is on its way)."""
        devices = self._select(device_ids)

        def connect_all() -> None:
            for device in devices:
                device.connect()

        self._in_loop(connect_all)
        self.wait_until(
            lambda: all(d.subscribed for d in devices),
            timeout_s,
            f"{len(devices)} simulated devices connected and subscribed",
        )

    def disconnect(self, device_ids: Iterable[str] | None = None) -> None:
        """Take devices offline (their reports wait until they connect again)."""
        devices = self._select(device_ids)

        def disconnect_all() -> None:
            for device in devices:
                device.disconnect()

        self._in_loop(disconnect_all)
        self.wait_until(lambda: not any(d.connected for d in devices), 30, "devices offline")

    def hold_reports(self, device_ids: Iterable[str], hold: bool = True) -> None:
        """Hold (or release, and send) the reports of these devices: a device reporting late."""
        devices = self._select(device_ids)

        def set_hold() -> None:
            for device in devices:
                if hold:
                    device.hold_reports = True
                else:
                    device.release_reports()

        self._in_loop(set_hold)

    def stop(self) -> None:
        def close_all() -> None:
            for device in self.devices.values():
                device.close()

        try:
            self._in_loop(close_all, timeout_s=30)
            time.sleep(0.05)  # let the DISCONNECTs go out
        finally:
            self.loop.stop()

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- what happened -------------------------------------------------------------------

    def wait_sequence(self, sequence_of: Mapping[str, int], timeout_s: float = 60) -> None:
        """Wait until each device has accepted a desired state with at least its sequence."""
        self.wait_until(
            lambda: all(self.devices[d].last_sequence >= s for d, s in sequence_of.items()),
            timeout_s,
            f"{len(sequence_of)} devices verified their desired state",
        )

    def active_versions(
        self, model: str, device_ids: Sequence[str] | None = None
    ) -> dict[str, str | None]:
        return {d.device_id: d.runtime.active.get(model) for d in self._select(device_ids)}

    # --- telemetry -----------------------------------------------------------------------

    def send_telemetry(
        self,
        device_ids: Iterable[str] | None = None,
        *,
        requests: int = 20,
        window_seconds: int = 3600,
        now: datetime | None = None,
    ) -> int:
        """Each device sends the reports of its last closed window, in which it served
        `requests` requests per active model; how many reports went (or wait offline)."""
        devices = self._select(device_ids)
        window_start = last_closed_window(now or datetime.now(UTC), window_seconds)
        batches = {
            device.device_id: self._telemetry[device.device_id].reports(
                device.runtime,
                window_start=window_start,
                window_seconds=window_seconds,
                requests=requests,
                agent_version=self.agent_version,
            )
            for device in devices
        }

        def send_all() -> int:
            count = 0
            for device in devices:
                for envelope in batches[device.device_id]:
                    device.send(envelope)
                    count += 1
            return count

        return self._in_loop(send_all)

"""The issue's scenarios with the real hub parts (SQLite, managed Mosquitto over TLS, the
desired-state publisher, the ingest worker) and 50 simulated devices that verify their
signed desired state and report through the broker (hub.simulate). The rollout driver runs
as the serving hub runs it: a step, then the publisher's round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from hub.broker import BrokerMissing
from hub.db import make_engine, session
from hub.fleet import registry
from hub.rollouts import actions, audit, store
from hub.rollouts.driver import Driver
from hub.rollouts.health import telemetry_query
from hub.rollouts.machine import State
from hub.rollouts.models import RolloutDevice
from hub.rollouts.plan import draw
from hub.rollouts.spec import RolloutSpec
from hub.rollouts.status import describe
from hub.simulate import Behaviour, DeviceProfile, SimulatedFleet
from hub.simulate.enroll import Enrolled
from hub.simulate.harness import SimulationHub
from hub.telemetry.models import TELEMETRY
from tests.hub_rollouts.conftest import releases

pytestmark = pytest.mark.slow
DEVICES = 50
SEED = 11


@dataclass
class ShiftedClock:
    """Real time plus an offset the test moves (soak and device timeouts pass at once)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Scene:
    hub: SimulationHub
    fleet: SimulatedFleet
    enrolled: list[Enrolled]
    clock: ShiftedClock
    driver: Driver

    @property
    def ids(self) -> list[str]:
        return [e.device_id for e in self.enrolled]

    def create(self, actor: str = "alice", **overrides: Any) -> int:
        data: dict[str, Any] = {
            "model": "chat", "version": "2.0.0", "target": {"group": "lab"},
            "wave_percent": [2, 10, 50, 100], "soak_seconds": 0, "device_timeout_seconds": 60,
            "seed": SEED, **overrides,
        }  # fmt: skip
        rollout = store.create(self.hub.engine, RolloutSpec.model_validate(data), actor, releases)
        assert rollout.id is not None
        return rollout.id

    def tick(self, rollout_id: int) -> State:
        state = self.driver.step(rollout_id)
        self.hub.publish_pending()
        return state

    def run_until(
        self, rollout_id: int, done: Callable[[State], bool], timeout_s: float = 60
    ) -> State:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.tick(rollout_id)
            if done(state):
                return state
            time.sleep(0.1)
        raise AssertionError(
            f"rollout {rollout_id} stayed {state}: {describe_short(self, rollout_id)}"
        )

    def wave(self, rollout_id: int, number: int) -> list[str]:
        with session(self.hub.engine) as db:
            query = select(RolloutDevice.device_id).where(
                col(RolloutDevice.rollout_id) == rollout_id, col(RolloutDevice.wave) == number
            )
            return list(db.exec(query).all())

    def active(self) -> dict[str, str | None]:
        return self.fleet.active_versions("chat")


def _installed(scene: Scene, devices: set[str]) -> bool:
    return devices <= {d for d, v in scene.active().items() if v == "2.0.0"}


def describe_short(scene: Scene, rollout_id: int) -> str:
    shown = describe(scene.hub.engine, rollout_id)
    return f"{shown['state']} wave {shown['wave']}: {shown['waiting_for']} {shown['waves']}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SimulationHub]:
    try:
        simulation = SimulationHub(tmp_path / "hub")
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with simulation:
        yield simulation


@contextmanager
def _scene(
    hub: SimulationHub, profiles: Callable[[list[str]], dict[str, DeviceProfile]] | None = None
) -> Iterator[Scene]:
    enrolled = hub.enroll(DEVICES, group="lab")
    ids = [e.device_id for e in enrolled]
    chosen = profiles(draw(ids, SEED)) if profiles else {}
    clock = ShiftedClock()
    driver = Driver(
        hub.engine, lambda: hub.director_key, releases, telemetry_query(hub.engine, 5), clock
    )
    with hub.fleet() as fleet:
        for identity in enrolled:
            fleet.add([identity], profile=chosen.get(identity.device_id), active={"chat": "1.0.0"})
        fleet.connect()
        hub.assign(ids, "chat", "1.0.0")  # what they run now: the release a rollback returns to
        hub.publish_pending()
        fleet.wait_sequence(dict.fromkeys(ids, 1))
        yield Scene(hub, fleet, enrolled, clock, driver)


@pytest.fixture
def scene(hub: SimulationHub) -> Iterator[Scene]:
    with _scene(hub) as made:
        yield made


def test_a_healthy_rollout_completes_wave_by_wave(scene: Scene) -> None:
    rollout = scene.create()
    opened: list[set[str]] = []
    for number in range(4):
        scene.run_until(rollout, lambda s: s is State.WAITING_GATE or s is State.COMPLETED)
        wave = set(scene.wave(rollout, number))
        # Only this wave and the ones before it got the release.
        on_new = {d for d, v in scene.active().items() if v == "2.0.0"}
        scene.fleet.wait_until(partial(_installed, scene, wave), 30, f"wave {number} installed")
        assert on_new <= wave.union(*opened)
        opened.append(wave)
        scene.run_until(rollout, lambda s: s is not State.WAITING_GATE)
    assert [len(w) for w in opened] == [1, 4, 20, 25]
    assert store.get(scene.hub.engine, rollout).state == State.COMPLETED
    assert set(scene.active().values()) == {"2.0.0"}


def test_twenty_percent_install_failures_pause_at_the_first_wave(hub: SimulationHub) -> None:
    # Every fifth device in the recorded draw fails to install: 20% of each wave.
    def failing(order: list[str]) -> dict[str, DeviceProfile]:
        broken = DeviceProfile().with_version("2.0.0", install_failure_rate=1.0)
        return {d: broken for d in order[::5]}

    with _scene(hub, failing) as scene:
        rollout = scene.create(wave_counts=[10, 40], wave_percent=None)
        state = scene.run_until(rollout, lambda s: s is State.PAUSED)
        assert state is State.PAUSED and store.get(hub.engine, rollout).wave == 0
        reason = audit.entries(hub.engine, store.object_name(rollout))[-1].reason or ""
        assert "failure_ratio 0.2 against 0.1" in reason
        later = scene.wave(rollout, 1)
        assert all(scene.active()[d] == "1.0.0" for d in later)
        assert all(scene.fleet.devices[d].last_sequence == 1 for d in later)  # never notified


def test_a_doubled_error_rate_trips_the_health_gate_and_rolls_back(hub: SimulationHub) -> None:
    def doubled(order: list[str]) -> dict[str, DeviceProfile]:
        profile = DeviceProfile(Behaviour(error_rate=0.1)).with_version("2.0.0", error_rate=0.2)
        return dict.fromkeys(order, profile)

    with _scene(hub, doubled) as scene:
        # The wave opened an hour ago: its devices' reports of the last closed hour count.
        scene.clock.offset = timedelta(hours=-1)
        rollout = scene.create(
            wave_counts=[25, 25], wave_percent=None, on_failure="rollback",
            health={"max_error_rate_increase": 0.05}, soak_seconds=7200,
        )  # fmt: skip
        wave = scene.wave(rollout, 0)
        scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
        scene.fleet.wait_until(
            lambda: all(scene.active()[d] == "2.0.0" for d in wave), 30, "wave 1 installed"
        )
        _send_telemetry(scene)
        state = scene.run_until(rollout, lambda s: s is State.ROLLED_BACK)
        assert state is State.ROLLED_BACK
        entry = audit.entries(hub.engine, store.object_name(rollout))[-1]
        assert entry.action == "auto_rollback" and "error_rate_increase" in (entry.reason or "")
        scene.fleet.wait_until(
            lambda: all(scene.active()[d] == "1.0.0" for d in wave), 30, "wave 1 rolled back"
        )


def _send_telemetry(scene: Scene) -> None:
    """Every device reports its last closed hour; once the hub stored them all, the soak
    (which held the gate meanwhile) is over."""
    sent = scene.fleet.send_telemetry(requests=40)

    def stored() -> int:
        with scene.hub.engine.connect() as connection:
            return len(connection.execute(TELEMETRY.select()).all())

    scene.fleet.wait_until(lambda: stored() == sent, 30, f"{sent} telemetry reports stored")
    scene.clock.offset = timedelta(hours=2)


def test_too_few_devices_in_telemetry_is_inconclusive_and_pauses(hub: SimulationHub) -> None:
    with _scene(hub) as scene:
        scene.clock.offset = timedelta(hours=-1)
        rollout = scene.create(
            wave_counts=[3, 47], wave_percent=None, health={"max_error_rate_increase": 0.05},
            soak_seconds=7200,
        )  # fmt: skip
        scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
        wave = scene.wave(rollout, 0)
        scene.fleet.wait_until(
            lambda: all(scene.active()[d] == "2.0.0" for d in wave), 30, "wave 1 installed"
        )
        _send_telemetry(scene)  # 3 devices on 2.0.0: fewer than k = 5
        state = scene.run_until(rollout, lambda s: s is not State.WAITING_GATE)
        assert state is State.PAUSED
        shown = describe(hub.engine, rollout)
        assert "inconclusive" in shown["waiting_for"]
        assert {g["verdict"] for g in shown["waves"][0]["gates"]} >= {"inconclusive"}
        assert all(scene.active()[d] == "1.0.0" for d in scene.wave(rollout, 1))


def test_a_hub_restart_mid_rollout_resumes_the_same_wave(scene: Scene) -> None:
    """The driver and its database connections start afresh mid-wave (paced), as after
    `edge-hub serve` restarts: the wave goes on with the recorded draw, nobody twice."""
    rollout = scene.create(wave_counts=[10, 40], wave_percent=None, pacing={"per_minute": 15})
    scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
    scene.fleet.wait_until(lambda: _results(scene, rollout, 0) == 10, 30, "wave 1 reported")
    scene.run_until(rollout, lambda s: s is State.RUNNING and _notified(scene, rollout) > 10)
    before = _notified(scene, rollout)
    assert before == 10 + 15  # the first minute of wave 2, paced
    scene.hub.engine.dispose()
    scene.hub.engine = make_engine(str(scene.hub.engine.url))
    restarted = Driver(
        scene.hub.engine, lambda: scene.hub.director_key, releases,
        telemetry_query(scene.hub.engine, 5), scene.clock,
    )  # fmt: skip
    scene.driver = restarted
    assert scene.tick(rollout) is State.RUNNING and _notified(scene, rollout) == before
    scene.clock.offset += timedelta(minutes=3)
    scene.run_until(rollout, lambda s: s is State.COMPLETED)
    assert store.get(scene.hub.engine, rollout).wave == 1
    opened = [e for e in audit.entries(scene.hub.engine, store.object_name(rollout))]
    assert [e.details["wave"] for e in opened if e.action == "open_wave"] == [0, 1]
    scene.fleet.wait_until(lambda: set(scene.active().values()) == {"2.0.0"}, 30, "all on 2.0.0")
    assert all(d.last_sequence == 2 for d in scene.fleet.devices.values())  # once each


def _notified(scene: Scene, rollout: int) -> int:
    with session(scene.hub.engine) as db:
        query = select(RolloutDevice).where(
            col(RolloutDevice.rollout_id) == rollout, col(RolloutDevice.notified_at).is_not(None)
        )
        return len(db.exec(query).all())


def _results(scene: Scene, rollout: int, wave: int) -> int:
    shown = describe(scene.hub.engine, rollout)["waves"][wave]
    return int(shown["succeeded"] + shown["failed"])


def test_offline_devices_catch_up_time_out_and_late_reports_count(scene: Scene) -> None:
    rollout = scene.create(
        wave_counts=[10, 40], wave_percent=None, device_timeout_seconds=60,
        install={"min_success_ratio": 0.7, "max_timed_out_ratio": 0.3},
    )  # fmt: skip
    wave = scene.wave(rollout, 0)
    away, late = wave[:2], wave[2]
    scene.fleet.disconnect(away)
    scene.fleet.hold_reports([late])
    scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
    scene.fleet.wait_until(lambda: _results(scene, rollout, 0) == 7, 30, "7 results")
    assert scene.tick(rollout) is State.WAITING_GATE  # 3 within their timeout: it waits
    scene.clock.offset = timedelta(seconds=61)
    assert scene.tick(rollout) is State.RUNNING  # timed out, listed, never blocking
    gate = next(
        e for e in audit.entries(scene.hub.engine, store.object_name(rollout))
        if e.action == "gate_passed"
    )  # fmt: skip
    assert sorted(gate.details["timed_out"]) == sorted([*away, late])
    scene.fleet.connect(away)  # back online: the retained desired state waits for them
    scene.fleet.hold_reports([late], hold=False)
    scene.fleet.wait_until(lambda: _results(scene, rollout, 0) == 10, 30, "late reports")
    first = describe(scene.hub.engine, rollout)["waves"][0]
    assert (first["succeeded"], first["timed_out"]) == (10, 0)


def test_approval_required_opens_nothing_until_a_second_operator_approves(scene: Scene) -> None:
    rollout = scene.create(approval_required=True)
    for _ in range(5):
        assert scene.tick(rollout) is State.WAITING_APPROVAL
    time.sleep(0.5)
    assert all(d.last_sequence == 1 for d in scene.fleet.devices.values())
    with pytest.raises(actions.ActionRefused):
        actions.approve(scene.hub.engine, rollout, "alice")
    actions.approve(scene.hub.engine, rollout, "bob")
    scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
    first = scene.wave(rollout, 0)
    scene.fleet.wait_sequence(dict.fromkeys(first, 2))
    # The next wave needs its own approval.
    scene.run_until(rollout, lambda s: s is State.WAITING_APPROVAL)
    for _ in range(3):
        assert scene.tick(rollout) is State.WAITING_APPROVAL
    assert sum(d.last_sequence == 2 for d in scene.fleet.devices.values()) == 1


def test_a_maintenance_window_holds_activation_on_the_device(scene: Scene) -> None:
    hour = (datetime.now(UTC).hour + 3) % 24
    rollout = scene.create(
        wave_counts=[5, 45], wave_percent=None,
        window={"cron": f"0 {hour} * * *", "duration_minutes": 30},
    )  # fmt: skip
    scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
    wave = scene.wave(rollout, 0)
    scene.fleet.wait_until(
        lambda: all(scene.fleet.devices[d].waiting_for_window for d in wave), 30, "downloaded"
    )
    assert all(scene.active()[d] == "1.0.0" for d in wave)  # not activated outside it
    assert scene.tick(rollout) is State.WAITING_GATE
    shown = describe(scene.hub.engine, rollout)
    assert shown["window"]["next_open"].startswith(datetime.now(UTC).date().isoformat()[:4])
    assert "no install result yet" in shown["waiting_for"]


def _join(scene: Scene, count: int, *, start: int, group: str | None = "lab") -> list[str]:
    """New simulated devices, running 1.0.0, enrolled (into `group`) and online."""
    enrolled = scene.hub.enroll(count, group=group, start=start)
    ids = [e.device_id for e in enrolled]
    scene.fleet.add(enrolled, active={"chat": "1.0.0"})
    scene.fleet.connect(ids)
    return ids


def test_devices_that_join_during_a_rollout_go_into_the_next_wave(scene: Scene) -> None:
    rollout = scene.create(wave_counts=[5, 20, 25], wave_percent=None)
    scene.run_until(rollout, lambda s: s is State.WAITING_GATE)
    joined = _join(scene, 2, start=DEVICES)
    scene.tick(rollout)
    assert set(joined) <= set(scene.wave(rollout, 1))
    assert all(scene.active()[d] == "1.0.0" for d in joined)  # not before their wave opens
    scene.run_until(rollout, lambda s: s is State.COMPLETED)
    scene.fleet.wait_until(
        lambda: all(scene.active()[d] == "2.0.0" for d in joined), 30, "joiners installed"
    )


def test_devices_that_join_after_completion_get_the_release_it_made_current(
    scene: Scene,
) -> None:
    rollout = scene.create(wave_percent=[100])
    scene.run_until(rollout, lambda s: s is State.COMPLETED)
    enrolled = _join(scene, 1, start=DEVICES)  # enrolled into the group later
    moved = _join(scene, 1, start=DEVICES + 1, group=None)  # put into it later
    registry.add_to_group(scene.hub.engine, "lab", moved[0])
    outside = _join(scene, 1, start=DEVICES + 2, group=None)  # never in the target
    scene.driver.step_all()
    scene.hub.publish_pending()
    late = enrolled + moved
    scene.fleet.wait_until(
        lambda: all(scene.active()[d] == "2.0.0" for d in late), 30, "latecomers installed"
    )
    assert scene.active()[outside[0]] == "1.0.0"
    entry = audit.entries(scene.hub.engine, store.object_name(rollout))[-1]
    assert entry.action == "devices_joined" and sorted(entry.details["devices"]) == sorted(late)
    # Idempotent: the next steps find nobody new and sign nothing.
    sequences = {d: scene.fleet.devices[d].last_sequence for d in late}
    for _ in range(3):
        scene.driver.step_all()
    assert scene.hub.publish_pending() == 0
    assert {d: scene.fleet.devices[d].last_sequence for d in late} == sequences

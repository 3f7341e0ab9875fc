"""Rollout fan-out: from "wave opened" to "every online device of the wave has verified its
signed desired state", with simulated devices on the real hub parts.

The hub runs in its own process (hub.simulate.harness.SimulationHub: SQLite database,
managed Mosquitto over TLS with client certificates, desired-state publisher, ingest worker),
so its CPU seconds and memory are its own. The devices run in this process
(hub.simulate: one selector thread, real TLS, each verifying its state with verify_desired).

1. Idle memory: the hub's and the broker's resident memory before and after every device
   connected, per device (target: hub < 2 KB per idle device).
2. The wave: one wave of every device, opened through the rollout engine (hub.rollouts:
   create, then driver steps until it has notified every device) when it is there, else
   through `assign` (what the engine calls); the hub's publisher puts each signed state
   on the broker. Figure: seconds until the last device verified (target at 10,000 < 10 s),
   and the hub's CPU seconds over the wave, per device.
3. Reference, same run, same broker, same subscribers: the very same retained messages
   published again straight to the broker by one pipelining paho client (no database, no
   signing, no per-message wait), timed to the last device's delivery. The ratio wave /
   reference shows what the hub adds to the broker's own fan-out.
4. Rollout state checks: driver steps of the active rollout at steady state (every device
   notified, waiting for its gates) timed over a few seconds; CPU share of one core at the
   hub's step interval (target < 5%).

    .venv/bin/python bench/rollout.py [--devices 1000] [--devices 10000] [--broker-autosave ...]

`--broker-autosave every-change` runs Mosquitto with its persistence saved after every
change (the hub's setting before 2026-11-28): NOT the shipped configuration, a reference.
Every retained message then rewrites the whole persistence file, so fan-out slows with the
fleet's size (about 90 messages/s at 1,000 devices). Shipped: saved every few seconds and
on stop (hub.broker.mosquitto says why that loses nothing the hub cannot re-publish).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import figure, proc_status_kib, report

MODEL, OLD, NEW = "bench-model", "1.0.0", "1.1.0"
GROUP = "bench"
STEP_INTERVAL_S = 2.0  # how often the serving hub runs rollout steps (hub.service)
WAVE_TIMEOUT_S = 600.0


# --- the hub, in its own process ---------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_seconds(native_id: int) -> float:
    """CPU seconds of one thread of this process."""
    stat = Path(f"/proc/{os.getpid()}/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hub_pids(broker: int) -> list[int]:
    """This process and its child processes (whichever thread started them), but the broker."""
    tasks = Path(f"/proc/{os.getpid()}/task").glob("*/children")
    children = {int(pid) for task in tasks for pid in task.read_text().split()}
    return [os.getpid(), *sorted(children - {broker})]


class _HubSide:
    """The commands the benchmark sends to the hub process."""

    def __init__(self, folder: Path, autosave: str = "shipped") -> None:
        from hub.simulate.harness import SimulationHub

        if autosave == "every-change":
            _autosave_on_every_change()

        self.hub = SimulationHub(folder)
        self.hub.start()
        # The serving hub loads the rollout engine at start-up: importing it inside the wave
        # (it pulls in the registry, the runtime, numpy) cost the first step 0.4 s or more.
        with contextlib.suppress(ImportError):  # no engine: open_wave falls back to assign
            import hub.rollouts.driver
            import hub.rollouts.health
            import hub.rollouts.spec
            import hub.rollouts.store  # noqa: F401
        self.driver: Any = None
        self.rollout_id: int | None = None
        self.engine_note = ""

    def broker_pid(self) -> int:
        # The benchmark reads the broker's /proc; ChildBroker keeps its Popen private.
        popen = self.hub.broker._process._process
        assert popen is not None, "the broker is not running"
        return popen.pid

    def stats(self) -> dict[str, float]:
        broker = self.broker_pid()
        return {
            # With its children but the broker: the ingest's writer process is the hub's work.
            "hub_cpu_s": sum(_cpu_seconds(pid) for pid in _hub_pids(broker)),
            "hub_rss_kib": proc_status_kib(os.getpid(), "VmRSS"),
            "broker_cpu_s": _cpu_seconds(broker),
            "broker_rss_kib": proc_status_kib(broker, "VmRSS"),
        }

    def enroll(self, count: int) -> list[Any]:
        return self.hub.enroll(count, group=GROUP)

    def assign_old(self, ids: list[str]) -> int:
        """Every device starts on the old release (signed, published, verified once)."""
        self.hub.assign(ids, MODEL, OLD)
        return self.hub.publish_pending()

    def open_wave(self, ids: list[str]) -> dict[str, Any]:
        """Open the wave with the hub's desired-state rounds running as `edge-hub serve`
        runs them (hub.fleet.publish_loop): the driver wakes them after each chunk of
        hub.rollouts.driver.NOTIFY_CHUNK states it commits, so signing and publishing
        overlap; after signing, one more round that sees every state."""
        from hub.fleet.publish_loop import PublishLoop

        published: list[int] = []
        rounds = PublishLoop(lambda: published.append(self.hub.publish_pending()), 2.0)
        started = time.monotonic()
        rounds.start()
        try:
            try:
                notified = self._open_with_engine(len(ids), rounds.wake)
                how = "rollout engine (hub.rollouts): create, driver steps"
            except Exception as exc:  # the engine is not there (or not ready): what it calls
                self.engine_note = f"rollout engine not used ({type(exc).__name__}: {exc})"
                self.hub.assign(ids, MODEL, NEW)
                notified = len(ids)
                how = "hub.fleet.desired.assign (the rollout engine was not usable)"
            signed = time.monotonic()
            if not rounds.flush(120):
                raise RuntimeError("the desired-state rounds did not publish within 120 s")
        finally:
            rounds.stop()
        return {
            "started": started,
            "signed": signed,
            "published_at": time.monotonic(),
            "published": sum(published),
            "notified": notified,
            "how": how + "; the hub's desired-state rounds, woken by the driver",
        }

    def _open_with_engine(self, count: int, on_signed: Callable[[], None]) -> int:
        from hub.rollouts import store
        from hub.rollouts.driver import Driver
        from hub.rollouts.health import telemetry_query
        from hub.rollouts.spec import Pacing, RolloutSpec, Target

        spec = RolloutSpec(
            model=MODEL,
            version=NEW,
            target=Target(group=GROUP),
            wave_percent=[100],
            soak_seconds=3600,  # stays waiting for its gates: the steady state measured later
            pacing=Pacing(per_minute=1_000_000),
            seed=1,
        )
        key = self.hub.director_key
        self.driver = Driver(
            self.hub.engine,
            lambda: key,
            lambda _m, _v: None,
            telemetry_query(self.hub.engine, 5),
            on_signed=on_signed,
        )
        rollout = store.create(self.hub.engine, spec, "bench", lambda _m, _v: None)
        self.rollout_id = rollout.id
        with self.hub.engine.connect() as connection:
            from sqlalchemy import text

            def notified() -> int:  # published or not: the publisher runs alongside
                query = (
                    "SELECT count(*) FROM rollout_devices"
                    " WHERE rollout_id = :id AND notified_at IS NOT NULL"
                )
                return int(connection.execute(text(query), {"id": rollout.id}).scalar_one())

            for _ in range(50):  # steps until every device of the wave has its state
                self.driver.step_all()
                connection.rollback()
                if notified() >= count:
                    return count
        raise RuntimeError("the driver did not notify the wave's devices within 50 steps")

    def state_checks(self, seconds: float) -> dict[str, Any]:
        """Driver steps at steady state: CPU seconds per step."""
        if self.driver is None:
            return {"steps": 0, "note": self.engine_note or "no rollout engine"}
        steps, cpu0, wall0 = 0, time.process_time(), time.monotonic()
        while time.monotonic() - wall0 < seconds:
            self.driver.step_all()
            steps += 1
        return {"steps": steps, "cpu_per_step_s": (time.process_time() - cpu0) / steps}

    def fanout(self, ids: list[str]) -> dict[str, float]:
        """The same retained messages again, straight to the broker, pipelined."""
        from paho.mqtt.client import Client
        from sqlmodel import Session, col, select

        from edge_agent.mqtt import connect_persistent, new_client, stop_client
        from edge_agent.protocol import HUB_USERNAME, Envelope, SignedDesired, encode, topic_for
        from hub.fleet.models import DesiredRecord

        with Session(self.hub.engine) as db:
            rows = db.exec(select(DesiredRecord).where(col(DesiredRecord.device_id).in_(ids)))
            envelopes = [
                Envelope.of(SignedDesired.model_validate_json(r.signed), device_id=r.device_id)
                for r in rows
            ]
        messages = [(topic_for(e), encode(e)) for e in envelopes]
        client: Client = new_client(
            HUB_USERNAME, tls=self.hub.ca.hub_client_files(HUB_USERNAME).client()
        )
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        connect_persistent(client, self.hub.address, keepalive_s=30, session_expiry_s=0)
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages]
        for info in infos:
            info.wait_for_publish(60)
        acked = time.monotonic()
        stop_client(client)
        return {"started": started, "acked": acked, "messages": len(messages)}

    def stop(self) -> None:
        self.hub.stop()


def _autosave_on_every_change() -> None:
    """The reference: Mosquitto saves its persistence after every change."""
    import hub.broker.mosquitto as mosquitto

    shipped = mosquitto.render_config

    def every_change(**options: Any) -> str:
        text = shipped(**options)
        changed = text.replace("autosave_on_changes false", "autosave_on_changes true")
        changed = changed.replace(
            f"autosave_interval {mosquitto.AUTOSAVE_SECONDS}\n", "autosave_interval 1\n"
        )
        if changed.count("autosave") != text.count("autosave") or changed == text:
            raise RuntimeError("the broker config has no autosave lines to change")
        return changed

    mosquitto.render_config = every_change


def _hub_process(folder: Path, autosave: str, connection: Connection) -> None:
    side = _HubSide(folder, autosave)
    connection.send(("ready", side.stats()))
    while True:
        command, args = connection.recv()
        if command == "stop":
            side.stop()
            connection.send(("stopped", None))
            return
        try:
            connection.send(("ok", getattr(side, command)(*args)))
        except Exception as exc:
            connection.send(("error", f"{command}: {type(exc).__name__}: {exc}"))


class HubProcess:
    def __init__(self, folder: Path, autosave: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        # Not a daemon: the hub starts its ingest writer process, as `edge-hub serve` does.
        self.process = context.Process(target=_hub_process, args=(folder, autosave, child))
        self.process.start()
        if not self.connection.poll(120):
            self.process.kill()
            raise RuntimeError("the hub process did not start within 120 s (see its output)")
        _, self.started_stats = self.connection.recv()

    def call(self, command: str, *args: Any) -> Any:
        self.connection.send((command, args))
        status, value = self.connection.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def stop(self) -> None:
        self.connection.send(("stop", ()))
        self.connection.recv()
        self.process.join(30)


# --- one size --------------------------------------------------------------------------


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.005)


def _verified_count(fleet: Any, count: int, sequence: int) -> threading.Event:
    """Set once `count` devices accepted a state with at least `sequence`. Counted by the
    devices' own hook: polling 10,000 devices from this thread every few ms took the GIL
    from the devices' loop thread throughout the wave."""
    done, verified = threading.Event(), set()

    def counted(device: Any, state: Any) -> None:  # in the loop's thread
        if state.sequence >= sequence:
            verified.add(device.device_id)
            if len(verified) >= count:
                done.set()

    fleet.on_verified(counted)
    return done


def run_size(count: int, workdir: Path, autosave: str) -> dict[str, Any]:
    from hub.simulate import SimulatedFleet, director_public_keys
    from hub.simulate.harness import SimulationHub

    hub = HubProcess(workdir / "hub", autosave)
    try:
        began = time.monotonic()
        enrolled = hub.call("enroll", count)
        ids = [e.device_id for e in enrolled]
        print(f"  {count} devices enrolled in {time.monotonic() - began:.1f} s", flush=True)
        address, key = _hub_address_and_key(workdir / "hub")
        fleet = SimulatedFleet(address, director_public_keys(key))
        try:
            fleet.add(enrolled, active={MODEL: OLD})
            before = hub.call("stats")
            began = time.monotonic()
            fleet.connect(timeout_s=WAVE_TIMEOUT_S)
            print(f"  connected in {time.monotonic() - began:.1f} s", flush=True)
            time.sleep(3)  # idle: keepalives only
            idle = hub.call("stats")
            hub.call("assign_old", ids)
            fleet.wait_sequence(dict.fromkeys(ids, 1), timeout_s=WAVE_TIMEOUT_S)
            time.sleep(2)  # the old release's reports ingested

            # A real device's process holds one device's objects; this one holds every
            # device's (1.6 million objects at 10,000) and what each keeps of the wave
            # (`sent`, paho's state). The collector's passes over all of them took 2.9 s in
            # this process from opening a wave to the reference (two full passes 2.0 s;
            # 10,000 devices, 2026-11-28), where the devices' loop thread makes nearly every
            # object: the simulation's cost, not the protocol's. So the objects from before
            # the wave are frozen out of collections, and none runs until the reference is
            # done (what the devices make is freed by reference counting; any cycles are
            # collected after).
            gc.freeze()
            gc.disable()
            wave0 = hub.call("stats")
            loop_thread = fleet.loop._thread
            assert loop_thread is not None and loop_thread.native_id is not None
            all_verified = _verified_count(fleet, count, sequence=2)
            loop0 = _thread_cpu_seconds(loop_thread.native_id)
            wave = hub.call("open_wave", ids)
            devices = list(fleet.devices.values())
            if not all_verified.wait(WAVE_TIMEOUT_S):
                raise TimeoutError(f"the wave: not within {WAVE_TIMEOUT_S} s")
            assert all(d.last_sequence >= 2 for d in devices)
            last_verified = max(d.verified_at or 0.0 for d in devices)
            wave_s = last_verified - wave["started"]
            loop_cpu = _thread_cpu_seconds(loop_thread.native_id) - loop0
            wave1 = hub.call("stats")
            print(f"  wave ({wave['how']}): {wave_s:.2f} s to the last verification", flush=True)

            time.sleep(3)  # installs reported and ingested; then the reference
            ref = hub.call("fanout", ids)
            _wait(
                lambda: all((d.received_at or 0.0) >= ref["started"] for d in devices),
                WAVE_TIMEOUT_S,
                "the reference fan-out",
            )
            ref_s = max(d.received_at or 0.0 for d in devices) - ref["started"]
            print(f"  broker's own fan-out of the same messages: {ref_s:.2f} s", flush=True)
            checks = hub.call("state_checks", 5.0)
            refused = sum(len(d.refusals) for d in devices)
        finally:
            gc.enable()
            gc.unfreeze()
            fleet.stop()
    finally:
        hub.stop()
    del SimulationHub
    hub_idle_b = (idle["hub_rss_kib"] - before["hub_rss_kib"]) * 1024 / count
    broker_idle_b = (idle["broker_rss_kib"] - before["broker_rss_kib"]) * 1024 / count
    cpu_wave = wave1["hub_cpu_s"] - wave0["hub_cpu_s"]
    check_share = checks["cpu_per_step_s"] / STEP_INTERVAL_S if checks.get("steps") else None
    return {
        "devices": count,
        "wave_s": wave_s,
        "sign_s": wave["signed"] - wave["started"],
        "publish_s": wave["published_at"] - wave["signed"],
        "reference_fanout_s": ref_s,
        "reference_msgs_per_s": count / ref_s,
        "wave_vs_reference": wave_s / ref_s,
        "hub_cpu_s_wave": cpu_wave,
        # The devices' one loop thread (verification, protocol): near wave_s, it is the limit.
        "device_loop_cpu_s_wave": loop_cpu,
        "hub_cpu_ms_per_device": cpu_wave * 1000 / count,
        "broker_cpu_s_wave": wave1["broker_cpu_s"] - wave0["broker_cpu_s"],
        "hub_idle_bytes_per_device": hub_idle_b,
        "broker_idle_bytes_per_device": broker_idle_b,
        "hub_rss_mib": idle["hub_rss_kib"] / 1024,
        "state_check_share_of_core": check_share,
        "state_checks": checks,
        "how": wave["how"],
        "refusals": refused,
    }


def _hub_address_and_key(folder: Path) -> tuple[Any, Any]:
    """What the devices need from the hub's folder: the broker's address, the director key."""
    from edge_agent.mqtt import BrokerAddress
    from hub.fleet.director import DirectorKey

    conf = (folder / "broker" / "mosquitto.conf").read_text()
    port = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("listener")))
    return BrokerAddress("127.0.0.1", port, tls=True), DirectorKey(folder / "keys").private_key()


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[int, dict[str, Any]] = {}
    print(
        "broker persistence: "
        + (
            "as shipped (saved every few seconds and on stop)"
            if args.broker_autosave == "shipped"
            else "REFERENCE, not shipped: saved after every change"
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        for count in args.devices:
            print(f"{count} simulated devices:", flush=True)
            runs[count] = run_size(count, Path(tmp) / str(count), args.broker_autosave)
    figures: dict[str, Any] = {}
    for count, run in runs.items():
        p = f"n{count}_"
        figures[p + "wave_s"] = figure(
            run["wave_s"], "< 10" if count >= 10_000 else None,
            run["wave_s"] < 10 if count >= 10_000 else None,
        )  # fmt: skip
        figures[p + "reference_fanout_s"] = figure(run["reference_fanout_s"])
        figures[p + "wave_vs_reference"] = figure(run["wave_vs_reference"])
        figures[p + "sign_s"] = figure(run["sign_s"])
        figures[p + "publish_s"] = figure(run["publish_s"])
        figures[p + "hub_cpu_ms_per_device"] = figure(run["hub_cpu_ms_per_device"])
        figures[p + "broker_cpu_s_wave"] = figure(run["broker_cpu_s_wave"])
        figures[p + "device_loop_cpu_s_wave"] = figure(run["device_loop_cpu_s_wave"])
        hub_b = run["hub_idle_bytes_per_device"]
        figures[p + "hub_idle_bytes_per_device"] = figure(hub_b, "< 2048", hub_b < 2048)
        figures[p + "broker_idle_bytes_per_device"] = figure(run["broker_idle_bytes_per_device"])
        share = run["state_check_share_of_core"]
        big = count >= 10_000
        figures[p + "state_check_share_of_core"] = figure(
            share,
            "< 0.05" if big else None,
            (share < 0.05 if share is not None else False) if big else None,
        )
        print(
            f"{count}: wave {run['wave_s']:.2f} s (sign {run['sign_s']:.2f} s, publish "
            f"{run['publish_s']:.2f} s) vs the broker's own fan-out {run['reference_fanout_s']:.2f}"
            f" s: {run['wave_vs_reference']:.1f}x; hub {run['hub_cpu_ms_per_device']:.2f} ms CPU"
            f" per device; idle memory per device: hub {hub_b:.0f} B, broker "
            f"{run['broker_idle_bytes_per_device']:.0f} B; state checks "
            f"{'n/a' if share is None else f'{share:.2%}'} of a core",
            flush=True,
        )
    return {
        "benchmark": "rollout",
        "reference": "the broker's own fan-out of the same retained messages, same run",
        "figures": figures,
        "settings": {
            "devices": args.devices,
            "step_interval_s": STEP_INTERVAL_S,
            "broker_autosave": args.broker_autosave,
        },
        "runs": {str(k): v for k, v in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, action="append")
    parser.add_argument(
        "--broker-autosave",
        choices=("shipped", "every-change"),
        default="shipped",
        help="every-change: a reference, Mosquitto persistence saved after every change",
    )
    args = parser.parse_args(argv)
    args.devices = args.devices or [1000]
    report(benchmark(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

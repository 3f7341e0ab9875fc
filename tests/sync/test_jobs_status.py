"""The periodic jobs, the [sync] config section and `edge-agent status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.config import load_config
from edge_agent.protocol import decode, key_id
from edge_agent.sync import Outbox
from edge_agent.sync.jobs import JobIntervals, build_scheduler, heartbeat_job
from edge_agent.sync.state import (
    LinkStatus,
    SequenceFile,
    load_director_keys,
    load_status,
    save_status,
)

BIN = Path(sys.executable).parent


def test_scheduler_runs_every_job(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    calls = {"flush": 0, "update": 0, "housekeeping": 0}
    ran = threading.Event()

    def count(name: str) -> None:
        calls[name] += 1
        if all(calls.values()):
            ran.set()

    scheduler = build_scheduler(
        JobIntervals(0.05, 0.05, 0.05, 0.05),
        heartbeat=heartbeat_job(outbox, "dev-1"),
        flush=lambda: count("flush"),
        update_check=lambda: count("update"),
        housekeeping=lambda: count("housekeeping"),
    )
    assert {job.id for job in scheduler.get_jobs()} == {
        "heartbeat",
        "outbox-flush",
        "update-check",
        "housekeeping",
    }
    scheduler.start()
    try:
        assert ran.wait(5)
        deadline = time.monotonic() + 5
        while outbox.depth() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.shutdown()
    item = outbox.pending(1)[0]
    envelope = decode(item.topic, item.payload)
    assert envelope.kind == "heartbeat" and envelope.device_id == "dev-1"


def test_scheduler_refuses_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        build_scheduler(
            JobIntervals(heartbeat_seconds=0), heartbeat=lambda: None, flush=lambda: None
        )


def test_sync_config_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[sync]\nbroker_url = "mqtts://hub:8883"\ndevice_id = "dev-1"\n'
        "heartbeat_interval_seconds = 60\nreconnect_min_seconds = 0.5\n"
    )
    sync = load_config(path, environ={}).sync
    assert sync.configured and sync.heartbeat_interval_seconds == 60
    (tmp_path / "empty.toml").write_text("")
    assert not load_config(tmp_path / "empty.toml", environ={}).sync.configured


def test_director_keys_and_sequence_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([pem]))
    assert list(load_director_keys(keys_file)) == [key_id(key)]
    keys_file.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="JSON list"):
        load_director_keys(keys_file)

    sequences = SequenceFile(tmp_path / "seq.json")
    assert sequences.load() == 0
    sequences.save(7)
    assert sequences.load() == 7
    sequences.path.write_text("{broken")
    with pytest.raises(ValueError, match="damaged"):
        sequences.load()


def agent_status(config: Path) -> str:
    result = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_command(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[store]\ndir = "{tmp_path / "data"}"\n')
    out = agent_status(config)
    assert "sync: not configured" in out and "update: idle" in out

    config.write_text(
        f'[store]\ndir = "{tmp_path / "data"}"\n'
        '[sync]\nbroker_url = "mqtt://127.0.0.1:1883"\ndevice_id = "dev-1"\n'
    )
    assert "link: has not run yet" in agent_status(config)

    now = datetime.now(UTC)
    save_status(
        tmp_path / "data" / "sync" / "status.json",
        LinkStatus(
            device_id="dev-1",
            broker="mqtt://127.0.0.1:1883",
            connected=True,
            since=now - timedelta(hours=2),
            last_sync_at=now - timedelta(minutes=3),
            outbox_depth=12,
            dropped_telemetry=4,
            updated_at=now,
            pid=os.getpid(),
        ),
    )
    assert load_status(tmp_path / "data" / "sync" / "status.json") is not None
    out = agent_status(config)
    assert "link: connected since" in out
    assert "(3m ago)" in out
    assert "outbox depth: 12" in out and "dropped telemetry: 4" in out


def test_desired_applier_reports_results_through_the_outbox(tmp_path: Path) -> None:
    from edge_agent.protocol import DesiredRelease, DesiredState, manifest_target
    from edge_agent.sync.orchestrate import DesiredApplier

    outbox = Outbox(tmp_path / "outbox.db")
    active = {"good": "1.0.0", "bad": "1.0.0", "same": "2.0.0"}

    def install(model: str, version: str) -> str:
        if model == "bad":
            raise RuntimeError("health check failed: no tokens")
        active[model] = version
        return version

    applier = DesiredApplier(outbox, "dev-1", "0.1.0", active_version=active.get, install=install)
    now = datetime.now(UTC)
    applier(
        DesiredState(
            device_id="dev-1",
            sequence=3,
            issued_at=now,
            expires=now + timedelta(hours=1),
            models={
                m: DesiredRelease(version=v, manifest=manifest_target(m, v))
                for m, v in {"good": "1.1.0", "bad": "1.1.0", "same": "2.0.0"}.items()
            },
        )
    )
    sent = [decode(i.topic, i.payload).payload for i in outbox.pending(100)]
    events = [(p.model, p.event) for p in sent if p.__class__.__name__ == "InstallEvent"]  # type: ignore[union-attr]
    assert events == [
        ("bad", "start"),
        ("bad", "failed"),
        ("good", "start"),
        ("good", "healthy"),
    ]
    state = sent[-1]
    assert state.__class__.__name__ == "ReportedState"
    assert state.desired_sequence == 3  # type: ignore[union-attr]
    assert state.models["good"].active == "1.1.0"  # type: ignore[union-attr]
    assert state.models["bad"].last_error == "health check failed: no tokens"  # type: ignore[union-attr]

"""edge-agent trust / update / models / rollback, run as an operator runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.updates.conftest import Fleet

BIN = Path(sys.executable).parent / "edge-agent"


def agent(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_AGENT__STORE__DIR": str(fleet.device)}
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)


def test_trust_update_models_rollback(fleet: Fleet, tmp_path: Path) -> None:
    fresh = Fleet(fleet.repo, tmp_path / "new-device", fleet.model_dir, tmp_path)
    untrusted = agent(fresh, "update", "tiny", "--from", str(fleet.repo.root))
    assert untrusted.returncode == 1
    assert "edge-agent trust PATH" in untrusted.stderr

    assert agent(fresh, "trust", str(fleet.repo.trusted_root_path())).returncode == 0
    again = agent(fresh, "trust", str(fleet.repo.trusted_root_path()))
    assert again.returncode == 2 and "--replace" in again.stderr

    first = agent(fresh, "update", "tiny", "--from", str(fleet.repo.root))
    assert first.returncode == 0, first.stderr
    assert "tiny: 1.0.0 installed and active" in first.stdout
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    second = agent(fresh, "update", "tiny", "--from", str(fleet.repo.root))
    assert "tiny: 1.1.0 installed and active" in second.stdout
    listing = agent(fresh, "models").stdout
    assert "active 1.1.0" in listing and "previous 1.0.0" in listing
    # 1.1.0 changed one small file; the weights are shared with 1.0.0, not copied
    assert re.search(r"  1\.1\.0\t0\.\d MB\tadds \d+(\.\d)? (B|KB) on disk", listing), listing
    ran = agent(fresh, "run", "tiny", "hello", "--max-tokens", "3")
    assert ran.returncode == 0, ran.stderr

    back = agent(fresh, "rollback", "tiny")
    assert back.returncode == 0 and "1.0.0 is active again" in back.stdout
    none_left = agent(fresh, "rollback", "tiny")
    assert none_left.returncode == 1 and "no previous version" in none_left.stderr
    unknown = agent(fresh, "rollback", "nosuch")
    assert unknown.returncode == 1 and "nosuch is not installed (installed: tiny)" in unknown.stderr


def test_not_a_root_file(fleet: Fleet, tmp_path: Path) -> None:
    bogus = tmp_path / "root.json"
    bogus.write_text("{}")
    fresh = Fleet(fleet.repo, tmp_path / "d", fleet.model_dir, tmp_path)
    result = agent(fresh, "trust", str(bogus))
    assert result.returncode == 2
    assert "is not TUF root metadata" in result.stderr


def test_update_needs_a_source_and_a_model(fleet: Fleet) -> None:
    assert "no update source" in agent(fleet, "update", "tiny").stderr
    assert "no model named" in agent(fleet, "update", "--from", "x").stderr


def test_the_update_names_each_phase(fleet: Fleet) -> None:
    phases: list[str] = []
    fleet.manager().update(fleet.source(), "tiny", on_phase=phases.append)
    entered = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert entered == ["downloading", "installing", "activating", "health_check", "idle"]


def test_ctrl_c_during_an_update_says_how_to_resume(fleet: Fleet, tmp_path: Path) -> None:
    fresh = Fleet(fleet.repo, tmp_path / "slow-device", fleet.model_dir, tmp_path)
    assert agent(fresh, "trust", str(fleet.repo.trusted_root_path())).returncode == 0
    env = {
        **os.environ,
        "EDGE_AGENT__STORE__DIR": str(fresh.device),
        # About 18 s for the tiny model: when its first chunk lands, seconds of download are
        # left, so the interrupt comes mid-download even on a busy machine.
        "EDGE_AGENT__UPDATES__BANDWIDTH_BYTES_PER_SECOND": "20000",
    }
    update = [str(BIN), "update", "tiny", "--from", str(fleet.repo.root)]
    proc = subprocess.Popen(
        update, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    chunks = fresh.device / "chunks"
    deadline = time.monotonic() + 60
    while not any(p.is_file() for p in chunks.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the download has begun once a chunk is on disk
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "update interrupted" in err and "run the same `edge-agent update` again" in err
    assert "Traceback" not in err
    env.pop("EDGE_AGENT__UPDATES__BANDWIDTH_BYTES_PER_SECOND")
    again = subprocess.run(update, env=env, capture_output=True, text=True, timeout=120)
    assert "tiny: 1.0.0 installed and active" in again.stdout, again.stderr
    fetched = int(re.search(r"fetched (\d+) bytes", again.stdout)[1])  # type: ignore[index]
    active = fresh.store.active("tiny")
    assert active is not None
    assert fetched < sum(active.manifest.unique_chunks().values())  # the rest was kept

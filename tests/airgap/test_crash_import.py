"""kill -9 at many points of `edge-agent import` (while staging the stick, storing chunks,
installing, activating, health-checking): afterwards the old or the new version is active
and generates, and importing the same stick again finishes the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from edge_agent.updates.health import check_model
from tests.airgap.conftest import DEVICE, Site

BIN = Path(sys.executable).parent / "edge-agent"


def run_import(
    device: Path, stick: Path, fault: str, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGE_AGENT__STORE__DIR": str(device),
        "EDGE_AGENT__SYNC__DEVICE_ID": DEVICE,
        "EDGE_AGENT_FAULT": fault,
        "EDGE_AGENT_FAULT_LOG": str(log or ""),
    }
    return subprocess.run(
        [str(BIN), "import", str(stick)], env=env, capture_output=True, text=True, timeout=120
    )


def test_kill_anywhere_in_an_import_leaves_old_or_new(site: Site) -> None:
    site.export(site.tmp / "first")
    site.import_(site.tmp / "first")
    model = site.tmp / "v2"
    shutil.copytree(site.model_dir, model)
    config = json.loads((model / "genai_config.json").read_text())
    config["search"]["max_length"] = 66
    (model / "genai_config.json").write_text(json.dumps(config))
    site.repo.publish(model, "tiny", "2.0.0")
    stick = site.tmp / "stick"
    site.export(stick, versions=("2.0.0",))
    pristine = site.tmp / "pristine-device"
    shutil.copytree(site.device, pristine, symlinks=True)

    counted = site.tmp / "count-device"
    shutil.copytree(pristine, counted, symlinks=True)
    log = site.tmp / "counts.json"
    result = run_import(counted, stick, "count", log)
    assert result.returncode == 0, result.stderr
    counts = json.loads(log.read_text())
    assert {"staged-file", "chunk-stored", "installed", "activated", "healthy"} <= set(counts)
    points = [
        (name, n)
        for name, total in sorted(counts.items())
        for n in sorted({1, total})  # first and last pass of each point
    ]
    for name, nth in points:
        device = site.tmp / f"device-{name}-{nth}"
        shutil.copytree(pristine, device, symlinks=True)
        killed = run_import(device, stick, f"{name}:{nth}")
        assert killed.returncode == -signal.SIGKILL, (name, nth, killed.stderr)
        site.device = device
        assert site.active() in {"1.0.0", "2.0.0"}, (name, nth)
        active = site.store.active("tiny")
        assert active is not None
        check_model(active.path)
        again = run_import(device, stick, "")
        assert again.returncode == 0, (name, nth, again.stderr)
        assert site.active() == "2.0.0", (name, nth)
        assert not (device / "import-staging").exists()
        shutil.rmtree(device)

"""edge-agent trust / update / models / rollback, run as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert "  1.1.0\t" in listing and "\tadds 0.0 MB on disk" in listing, listing
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

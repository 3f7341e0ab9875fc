"""The offline installer, built in this run: signed as a release and verified chunk by
chunk on the way to the device, installed with no network at all (a network namespace
with nothing in it), the agent generates from it, and uninstall leaves nothing behind.
The unit passes `systemd-analyze verify`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.installed.release import fetch_installer
from edge_agent.installed.unit import UnitSettings, install_service
from edge_agent.updates.errors import RepositoryError
from edge_agent.updates.fetchers import fetcher_for
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.registry.agent_release import publish_installer
from hub.registry.repository import ReleaseRepository
from tests.needs import need

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need(False, "systemd-analyze is missing: apt-get install systemd (scripts/setup does)")
    root = tmp_path / "opt"
    root.mkdir()
    (root / "launcher.py").write_text("")
    unit = install_service(UnitSettings(python=Path(sys.executable), root=root), tmp_path)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "edge-agent.service" not in done.stderr, done.stderr  # no warning about the unit
    scored = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True)  # fmt: skip
    score = scored.stdout.strip().splitlines()[-1]
    print(score)  # e.g. "Overall exposure level for edge-agent.service: 1.8 OK"
    assert " OK " in score or "SAFE" in score, score


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image") / "installer"
    build = [sys.executable, str(ROOT / "firmware-images" / "build"), "--out", str(out)]
    done = subprocess.run(build, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_offline_generate_and_uninstall_leaves_nothing(
    installer: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    wheels = [w.name.split("-")[0].lower() for w in (installer / "wheels").iterdir()]
    assert "edge_fleet" in wheels and "onnxruntime_genai" in wheels
    assert not {"torch", "transformers", "fastcdc", "alembic"} & set(wheels)
    device = tmp_path / "device"
    device.mkdir()
    paths = ["--root", str(device / "opt"), "--state-dir", str(device / "var"),
             "--config-dir", str(device / "etc"), "--no-system"]  # fmt: skip
    # unshare -n: a new network namespace with no interface up, so no byte can be fetched.
    for _ in range(2):  # the second run finds everything in place and changes nothing
        done = subprocess.run(["unshare", "-n", "bash", str(installer / "install"), *paths],
                              env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (device / "opt").iterdir()) == ["a", "launcher.py", "slots.json"]
    agent = device / "opt" / "a" / "bin" / "edge-agent"
    env = {**_env(), "EDGE_AGENT_CONFIG": str(device / "etc" / "agent.toml")}
    ran = subprocess.run(["unshare", "-n", str(agent), "run", str(tiny_model_dir),
                          "def main():", "--max-tokens", "4"],
                         env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()
    doctor = subprocess.run([str(agent), "doctor", "--root", str(device / "opt")],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "install: slot a (" in doctor.stdout, doctor.stdout
    gone = subprocess.run(["bash", str(installer / "uninstall"), *paths, "--purge"],
                          env=_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert _listing(device) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_installer_travels_as_a_signed_release_and_a_tampered_chunk_is_refused(
    installer: Path, tmp_path: Path
) -> None:
    repo = ReleaseRepository.create(tmp_path / "usb", tmp_path / "keys")
    manifest = publish_installer(repo, installer)
    assert manifest.model_extra == {"kind": "agent"}
    trust = tmp_path / "trust"
    pin_root(trust, repo.trusted_root_path())

    def fetch(into: Path) -> None:
        base, fetcher = fetcher_for(str(repo.root), None, 0)
        with ReleaseSource(base, trust, fetcher) as source:
            fetch_installer(source, manifest.version, into)

    fetch(tmp_path / "fetched")
    assert _listing(tmp_path / "fetched") == _listing(installer)
    for entry in manifest.files:
        data = (tmp_path / "fetched" / entry.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256

    # A stick or a peer flips one byte of the install script's chunk.
    [script] = [e for e in manifest.files if e.path == "install"]
    chunk = repo.root / "chunks" / script.chunks[0].sha256[:2] / script.chunks[0].sha256
    data = bytearray(chunk.read_bytes())
    data[10] ^= 1
    chunk.chmod(0o644)
    chunk.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match="does not match the signed manifest"):
        fetch(tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()  # nothing of it stays to be run

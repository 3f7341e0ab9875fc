"""The field install works alone: a wheel built in this run, installed WITHOUT extras into a
fresh virtual environment (as a field device installs it), serves, runs, updates from a
USB-style repository folder, enrolls (up to the hub's refusal) and shows its telemetry.

The suite itself runs with the hub and dev extras installed, which hides a missing core
dependency; tests/test_layering.py catches most of that fast, this proves it for real.
pip reuses its cache and the machine's wheel folder; the registry is asked for the rest.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.registry.repository import ReleaseRepository
from tests.agent_process import model_ids, serve_and_list_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
# Packages of the hub extra (and the conversion stack): none may come with the agent.
# (tokenizers is the agent's own: it reads the embedding encoders' WordPiece tokenizers.)
HUB_ONLY = ["torch", "transformers", "onnx", "onnx_ir", "fastcdc", "alembic", "psycopg",
            "argon2", "jinja2", "playwright", "pytest", "peft"]  # fmt: skip


@dataclass
class FieldInstall:
    venv: Path
    data: Path

    @property
    def agent(self) -> Path:
        return self.venv / "bin" / "edge-agent"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment without the suite's venv, plus the device's store."""
        env = _clean_env()
        env["PATH"] = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        env["EDGE_AGENT__STORE__DIR"] = str(self.data)
        return {**env, **extra}

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.agent), *args], env=self.env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _clean_env() -> dict[str, str]:
    """No trace of the suite's environment: with PYTHONPATH pointing at a checkout, pip
    would take its egg-info for an installed edge-fleet and skip the install."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(*command: str | Path) -> None:
    done = subprocess.run(
        [str(c) for c in command], env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> FieldInstall:
    base = tmp_path_factory.mktemp("field")
    wheels = base / "wheel"
    # --no-build-isolation: the build backend (setuptools) of this environment, no download.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", wheels, ROOT)  # fmt: skip
    [wheel] = wheels.glob("edge_fleet-*.whl")
    venv = base / "venv"
    _run("python3", "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "-q", wheel)  # no extras: the field install
    return FieldInstall(venv, base / "device")


def test_the_field_install_has_no_hub_packages(field: FieldInstall) -> None:
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n)]))"
    )
    done = subprocess.run(
        [str(field.venv / "bin" / "python"), "-c", probe, *HUB_ONLY],
        env=field.env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == []
    assert field.run("--version").stdout.startswith("edge-agent ")


def test_run_generates_from_a_model_folder(field: FieldInstall, tiny_model_dir: Path) -> None:
    done = field.run("run", str(tiny_model_dir), "def main():", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_update_from_a_folder_then_serve_the_installed_model(
    field: FieldInstall, tiny_model_dir: Path, tmp_path: Path
) -> None:
    repo = ReleaseRepository.create(tmp_path / "usb", tmp_path / "keys")
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    trusted = field.run("trust", str(repo.trusted_root_path()))
    assert trusted.returncode == 0, trusted.stderr
    updated = field.run("update", "tiny", "--from", str(repo.root))
    assert updated.returncode == 0, updated.stderr
    assert "tiny: 1.0.0 installed and active" in updated.stdout

    # The default config: telemetry on (kept locally: this device is in no fleet).
    served = serve_and_list_models(field.agent, ["--model", "tiny"], field.env())
    assert model_ids(served) == ["tiny"]
    assert served.returncode == 0, served.stderr
    assert "ModuleNotFoundError" not in served.stderr


class _RefusingHub(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for a hub that refuses every enrollment."""

    def do_POST(self) -> None:
        body = json.dumps({"detail": "unknown enrollment token"}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_enroll_runs_up_to_the_hubs_answer(field: FieldInstall, refusing_hub: str) -> None:
    token = "secret@sha256:" + "0" * 64
    done = field.run("enroll", refusing_hub, "--device-id", "field-1", "--token", token)
    assert done.returncode == 1
    assert "edge-agent: error:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr


def test_telemetry_show(field: FieldInstall) -> None:
    done = field.run("telemetry", "show")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policy: ")

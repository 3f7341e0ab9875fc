"""`edge-hub demo` as `scripts/run` runs it: a hub with a managed Mosquitto and two agents,
a rollout to 1.0.1 waiting in the console (whose printed login works) and approved for both
waves, an OpenAI request to a device, then SIGTERM and nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
from openai import OpenAI

from hub.demo import leftovers
from tests.fleet.processes import BIN, active_on_hub, wait_for

READY = "edge-hub demo: ready"


def test_demo_fleet_rolls_out_serves_and_stops_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    argv = [str(BIN / "edge-hub"), "demo", "--model", "tiny", "--devices", "2", "--dir"]
    ports = ["--hub-port", "0", "--broker-port", "0", "--agent-port", "0"]  # any free ones
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen([*argv, str(folder), *ports], stdout=stdout, stderr=stderr)
    try:
        try:
            wait_for(lambda: READY in out.read_text() or demo.poll() is not None, "the summary")
        except AssertionError as exc:  # what the demo was waiting for, and its logs' folder
            raise AssertionError(f"{exc}; the demo said:\n{err.read_text()}") from None
        assert demo.poll() is None, err.read_text()
        summary = out.read_text()

        database = f"sqlite:///{folder / 'hub' / 'hub.sqlite3'}"
        for device in ("demo-1", "demo-2"):
            assert active_on_hub(database, device, "demo") == "1.0.0", err.read_text()
        _console_login(summary, folder)
        _approve_both_waves(summary, folder)
        for device in ("demo-1", "demo-2"):
            wait_for(
                lambda d=device: active_on_hub(database, d, "demo") == "1.0.1",  # type: ignore[misc]
                f"{device} on 1.0.1",
                120,
            )
        assert f"EDGE_HUB_CONFIG={folder / 'hub.toml'}" in summary
        assert "edge-hub device show demo-1" in summary
        _pasted_into_a_new_terminal(summary)

        found = re.search(r"demo-1\s+(http://127\.0\.0\.1:\d+/v1)", summary)
        assert found is not None, summary
        with OpenAI(base_url=found[1], api_key="unused", max_retries=0, timeout=30) as client:
            reply = client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
            )
        assert reply.usage is not None and reply.usage.completion_tokens > 0

        assert len(leftovers(folder)) == 4  # the hub, its Mosquitto, two agents: seen here
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0, err.read_text()
        assert leftovers(folder) == [], "a child of the demo outlived it"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in leftovers(folder):  # never leave a broker or an agent to the next test
            os.kill(pid, signal.SIGKILL)


def _console_login(summary: str, folder: Path) -> None:
    """The printed console answers over HTTPS (the hub's CA) and takes the printed login."""
    url = re.search(r"console\s+(https://127\.0\.0\.1:\d+/console/)", summary)
    login = re.search(r"login\s+admin / (\S+)", summary)
    assert url is not None and login is not None, summary
    trusted = ssl.create_default_context(cafile=folder / "hub" / "identity" / "ca.crt")
    with httpx.Client(verify=trusted, timeout=30) as client:
        done = client.post(url[1] + "login", data={"name": "admin", "password": login[1]})
        assert done.status_code == 303, done.text
        assert client.get(url[1]).headers["location"] == "/console/password"  # one-time


def _approve_both_waves(summary: str, folder: Path) -> None:
    """The rollout waits for a second operator (the admin) before each of its two waves."""
    found = re.search(r"open rollout (\d+) in the console", summary)
    assert found is not None, summary
    env = {**os.environ, "EDGE_HUB_CONFIG": str(folder / "hub.toml")}
    hub = [str(BIN / "edge-hub"), "rollout"]

    def state() -> str:
        shown = subprocess.run(
            [*hub, "status", found[1], "--json"], env=env, capture_output=True, text=True
        )
        return str(json.loads(shown.stdout)["state"])

    for wave in (1, 2):
        wait_for(lambda: state() == "waiting_approval", f"wave {wave} waiting for approval", 120)
        approved = subprocess.run(
            [*hub, "approve", found[1], "--operator", "admin"], env=env, capture_output=True,
            text=True,
        )  # fmt: skip
        assert approved.returncode == 0, approved.stderr


def _pasted_into_a_new_terminal(summary: str) -> None:
    """The printed commands work in a login shell that knows nothing of this venv."""
    lines = summary.splitlines()
    start = lines.index("Look at the fleet from another terminal:") + 1
    commands = []
    for line in lines[start:]:
        if not line.strip():
            break
        command = line.split("   #")[0].strip()
        if "telemetry report" not in command:  # it needs a closed 5-minute window
            commands.append(command)
    assert commands[0].startswith("source ") and any("status" in c for c in commands)
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    shell = subprocess.run(
        ["bash", "-c", "set -e\n" + "\n".join(commands)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    assert "demo-1" in shell.stdout and "command not found" not in shell.stderr
    assert "sync: device demo-1" in shell.stdout  # edge-agent status, with the device's config


def test_a_taken_agent_port_is_refused_before_any_release_is_built(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [str(BIN / "edge-hub"), "demo", "--model", "tiny", "--dir", str(tmp_path / "d")]
        result = subprocess.run(
            [*argv, "--agent-port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is taken: pass another --agent-port" in result.stderr
    assert "release" not in result.stderr.lower()  # nothing was built or signed
    assert not (tmp_path / "d" / "hub" / "repository").exists()

"""`edge-hub demo` as `scripts/run` runs it: a hub with a managed Mosquitto and two agents,
a rollout to 1.0.1, an OpenAI request to a device, then SIGTERM and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

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
            assert active_on_hub(database, device, "demo") == "1.0.1", err.read_text()
        assert f"EDGE_HUB_CONFIG={folder / 'hub.toml'}" in summary
        assert "edge-hub device show demo-1" in summary

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

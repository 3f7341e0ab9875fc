"""`edge-agent serve` with no --model serves every installed model, encoders included, and
`edge-agent ps` reads what it loaded (real processes, loopback)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from hub.registry import synthetic_encoder
from tests.test_cli import agent

BIN = Path(sys.executable).parent / "edge-agent"


def test_serve_every_installed_model_and_ps(tiny_model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for name in ("triage", "contracts"):
        shutil.copytree(tiny_model_dir, store / "models" / name)
    shutil.copytree(synthetic_encoder.build(), store / "models" / "minilm")
    env = {**os.environ, "EDGE_AGENT__STORE__DIR": str(store)}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--model", "triage", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving model" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"serve ended: {proc.communicate()}"
        assert "serving model 'triage' (and 1 more installed, loaded on demand)" in line
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert found, line
        url = found.group(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["contracts", "minilm", "triage"]
        for name in ("triage", "contracts"):
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert reply.usage is not None and reply.usage.completion_tokens == 4
        vectors = client.embeddings.create(model="minilm", input=["a", "b"])
        assert len(vectors.data) == 2
        ps = agent("ps", "--url", url, env={"EDGE_AGENT__STORE__DIR": str(store)})
        assert ps.returncode == 0, ps.stderr
        rows = {line.split()[0]: line for line in ps.stdout.splitlines()[1:-1]}
        assert set(rows) == {"triage", "contracts"}
        assert "pinned" in rows["triage"] and "pinned" not in rows["contracts"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
